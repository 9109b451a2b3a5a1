"""What the form modules share."""

from __future__ import annotations

from typing import Any


class PlainLabels:
    """Labels without Django's trailing colon, to match the rest of the app (mix in before the form)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)
