"""One object per running event loop (a process has one; each test has its own)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerLoop(Generic[T]):
    """``get()`` is the running loop's object, made by *factory* on first use; objects of loops
    that have closed are dropped then."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self.factory = factory
        self._objects: dict[asyncio.AbstractEventLoop, T] = {}

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        found = self._objects.get(loop)
        if found is None:
            for old in [lp for lp in self._objects if lp.is_closed()]:
                del self._objects[old]
            found = self._objects[loop] = self.factory()
        return found

    def pop(self, loop: asyncio.AbstractEventLoop, default: T | None = None) -> T | None:
        """Forget *loop*'s object (and return it)."""
        return self._objects.pop(loop, default)
