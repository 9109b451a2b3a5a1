"""Markdown rendering off the event loop: a worker process for the live runs' finished blocks.

Python-Markdown and nh3 cost about a fifth of the event loop's time when a process streams a
hundred answers at once (issue 11's probe: ``_sanitize`` was the first cause of loop stalls),
and pure-Python work in a thread would still hold the loop's GIL. So a process that streams
sends what it has to render (plain strings, :func:`chat.render.blocks.render_sources`) to
``processes`` worker processes and awaits the HTML.

Jobs submitted while a batch is in flight wait and go together as the next one: under load a
round trip carries the blocks of many runs, so its cost does not grow with the number of runs.
When rendering in a worker fails for any reason but the input (the worker died, the pool could
not start), the job is rendered here instead, with the same functions; the pool is started
again for later jobs. With ``processes=0`` (``FUSION_RENDER_PROCESSES=0``, the default on a
one-core machine) every job is rendered in this process: small ones inline, big ones in a
thread (:data:`INLINE_RENDER_CHARS`), as before the pool.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures.process import BrokenProcessPool

from chat.fusion.loops import PerLoop
from chat.render.blocks import BlockSource, render_sources

log = logging.getLogger(__name__)

# Without a pool, a job converting more characters than this goes to a thread (asyncio.to_thread).
INLINE_RENDER_CHARS = 4000

PARENT_CHECK_S = 1.0  # how often a worker looks whether the Daphne that started it is still there

Job = list[BlockSource]


def render_batch(jobs: list[Job]) -> list[list[str]]:
    """In a worker: each job's HTML, in order."""
    return [render_sources(job) for job in jobs]


def warm_up() -> None:
    """Import and build what the first render needs (the Markdown instance, its extensions,
    Pygments' lexers and style), so no run pays for it."""
    render_sources([("*warm* `up`\n\n```python\nx = 1\n```\n", False)])


def _worker_init(parent: int) -> None:
    """In each worker, first: leave with the parent (*parent* is its pid, given by the parent:
    if it died while this worker was starting, ``getppid`` would already be someone else's),
    and build the Markdown instance and Pygments' lexers before the first real job."""
    if os.getppid() != parent:
        os._exit(0)
    threading.Thread(target=_exit_with, args=(parent,), name="parent-watch", daemon=True).start()
    warm_up()


def _exit_with(parent: int) -> None:
    # A worker holds both ends of its job queue, so it never sees EOF when Daphne is killed
    # (SIGKILL, a crash): without this it would wait for jobs forever, an orphan.
    while True:
        time.sleep(PARENT_CHECK_S)
        if os.getppid() != parent:
            os._exit(0)


class _Executor:
    """The process-wide worker pool, started on first use and again after it broke."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def get(self) -> concurrent.futures.ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                # spawn, not fork: the parent has threads (database, channel layer) and sockets.
                self._pool = concurrent.futures.ProcessPoolExecutor(
                    max_workers=self.processes,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_worker_init,
                    initargs=(os.getpid(),),
                )
            return self._pool

    def discard(self, pool: concurrent.futures.ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)


class RenderPool:
    """Renders jobs for one event loop, in batches, through a shared :class:`_Executor`."""

    def __init__(self, executor: _Executor | None) -> None:
        self.executor = executor
        self._waiting: list[tuple[Job, asyncio.Future[list[str]]]] = []
        self._in_flight = 0
        self.batches = 0  # round trips made (for tests and the bench)
        self.fallbacks = 0  # jobs rendered here because the worker could not

    async def render(self, job: Job) -> list[str]:
        """*job*'s HTML, one string per source (see :func:`render_sources`)."""
        if not job:
            return []
        if self.executor is None:
            chars = sum(len(source) for source, _ in job)
            return render_sources(job) if chars <= INLINE_RENDER_CHARS else await asyncio.to_thread(render_sources, job)
        future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._waiting.append((job, future))
        if self._in_flight < self.executor.processes:
            self._send()
        return await future

    def _send(self) -> None:
        batch, self._waiting = self._waiting, []
        self._in_flight += 1
        self.batches += 1
        asyncio.get_running_loop().create_task(self._round_trip(batch))

    async def _round_trip(self, batch: list[tuple[Job, asyncio.Future[list[str]]]]) -> None:
        assert self.executor is not None
        jobs = [job for job, _ in batch]
        pool: concurrent.futures.ProcessPoolExecutor | None = None
        try:
            try:
                pool = self.executor.get()
                results: list[list[str] | BaseException] = list(
                    await asyncio.wrap_future(pool.submit(render_batch, jobs))
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, BrokenProcessPool) and pool is not None:
                    self.executor.discard(pool)
                log.warning("rendering %d job(s) in-process: the render worker failed (%r)", len(jobs), exc)
                results = await self._here(jobs)
            for (_, future), html in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(html, BaseException):
                    future.set_exception(html)
                else:
                    future.set_result(html)
        except BaseException as exc:  # the loop is stopping: nobody is left to render for
            for _, future in batch:
                if not future.done():
                    future.cancel()
            raise exc
        finally:
            self._in_flight -= 1
            if self._waiting and self._in_flight < self.executor.processes:
                self._send()

    async def _here(self, jobs: list[Job]) -> list[list[str] | BaseException]:
        """Each job rendered in a thread of this process; a job that raises fails alone."""
        self.fallbacks += len(jobs)

        def one_by_one() -> list[list[str] | BaseException]:
            out: list[list[str] | BaseException] = []
            for job in jobs:
                try:
                    out.append(render_sources(job))
                except Exception as exc:
                    out.append(exc)
            return out

        return await asyncio.to_thread(one_by_one)


_executors: dict[int, _Executor] = {}
_executors_lock = threading.Lock()
_pools: PerLoop[RenderPool] | None = None
_pools_processes = -1


def _executor_for(processes: int) -> _Executor:
    with _executors_lock:
        return _executors.setdefault(processes, _Executor(processes))


def for_loop(processes: int) -> RenderPool:
    """The running loop's :class:`RenderPool` with *processes* workers (0: render in-process)."""
    global _pools, _pools_processes
    if _pools is None or _pools_processes != processes:
        executor = _executor_for(processes) if processes > 0 else None
        _pools, _pools_processes = PerLoop(lambda: RenderPool(executor)), processes
    return _pools.get()


def start(processes: int) -> None:
    """Start the worker processes now (fusionsite.asgi, at startup), not on the first render."""
    if processes > 0:
        _executor_for(processes).get().submit(render_batch, [])
