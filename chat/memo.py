"""Reads done once per unit of work: inside ``reads_once()``, ``memoized(key, read)`` reads once.

The start of a run checks the panel's models against the catalogue, estimates its cost, builds
the user's registry and asks where each key comes from: the same catalogue rows and the same
stored keys, read (and decrypted) four times. A start wraps its work in ``reads_once()``; outside
one, ``memoized`` simply reads.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")

_memo: ContextVar[dict[Hashable, Any] | None] = ContextVar("fusion_reads_once", default=None)


@contextmanager
def reads_once() -> Iterator[None]:
    token = _memo.set({})
    try:
        yield
    finally:
        _memo.reset(token)


def memoized(key: Hashable, read: Callable[[], T]) -> T:
    memo = _memo.get()
    if memo is None:
        return read()
    if key not in memo:
        memo[key] = read()
    return memo[key]


def memo_get(name: str) -> dict[Any, Any]:
    """The entries remembered under *name* so far (empty outside ``reads_once``)."""
    memo = _memo.get()
    return dict(memo.get(("many", name), {})) if memo is not None else {}


def memo_update(name: str, entries: dict[Any, Any]) -> None:
    """Remember *entries* under *name*, replacing older ones with the same keys."""
    memo = _memo.get()
    if memo is not None:
        memo.setdefault(("many", name), {}).update(entries)


MISSING: Any = object()


def memo_entry(name: str, key: Hashable, default: Any = MISSING) -> Any:
    """One entry remembered under *name*, or *default* (``MISSING``) when there is none."""
    memo = _memo.get()
    if memo is None:
        return default
    return memo.get(("many", name), {}).get(key, default)
