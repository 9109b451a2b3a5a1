"""Dollar amounts in templates: ``{{ amount|usd }}`` → $0.42, or $0.0031 below a cent."""

from __future__ import annotations

from typing import Any

from django import template

from chat.spend import usd as _usd

register = template.Library()


@register.filter
def usd(amount: Any) -> str:
    return "–" if amount is None or amount == "" else _usd(amount)
