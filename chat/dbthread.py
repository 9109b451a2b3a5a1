"""The run path's own database threads: session checks, starts, checkpoints and final writes.

``channels.db.database_sync_to_async`` runs every call in the one thread-sensitive thread that
pages and sockets share, and opens and closes a connection around each call (``CONN_MAX_AGE``
is 0 under ASGI). Under load that thread is a queue: a start waits behind a hundred
checkpoints, and a third of its time goes to connecting. The calls here go to a small pool of
threads of their own (``FUSION_DB_THREADS``; one for SQLite, which has one writer anyway), each
keeping its connection open between calls. A connection that failed is closed and made anew by
the next call.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from django.conf import settings
from django.db import connection, connections

P = ParamSpec("P")
T = TypeVar("T")

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=db_threads(), thread_name_prefix="fusion-db")
        return _executor


def db_threads() -> int:
    configured = int(getattr(settings, "FUSION_DB_THREADS", 0) or 0)
    if configured > 0:
        return configured
    return 1 if connection.vendor == "sqlite" else 4


def _call(fn: Callable[..., T], args: tuple, kwargs: dict) -> T:
    try:
        return fn(*args, **kwargs)
    except Exception:
        # The connection may be what failed (a restarted server, a broken socket): start over.
        if connection.in_atomic_block:
            connection.needs_rollback = False
        try:
            connection.close()
        except Exception:
            pass
        raise


async def in_db_thread(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run *fn* in one of the run path's database threads and wait for it."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_pool(), functools.partial(_call, fn, args, kwargs))


def shutdown() -> None:
    """Close the threads' connections and stop them (tests that delete their database)."""
    global _executor
    with _lock:
        pool, _executor = _executor, None
    if pool is None:
        return
    for _ in range(pool._max_workers):
        pool.submit(connections.close_all)
    pool.shutdown(wait=True)
