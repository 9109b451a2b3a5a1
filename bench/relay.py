"""A bare relay of the fusion streams: the lower bound of what the stack costs (issue 11).

    python -m daphne -b 127.0.0.1 -p PORT bench.relay:application    # from the repository root

The same stack as the app — Daphne in, httpx out, frames coalesced every
``FUSION_FRAME_INTERVAL_MS`` (default 40) — and nothing else: no Django, no database, no channel
layer, no Markdown rendering, no authentication (any path, any cookie, any Origin). It speaks the
part of the conversation websocket protocol (docs/protocol.md) that ``bench/ws_fanout.py`` uses,
so the benchmark's client and all of its metrics run unchanged against it:

* on connect: ``{"type": "snapshot", "runs": []}``;
* ``start`` (``run_id``, ``prompt``, ``panel`` with ``members``/``analyst``/``writer`` model ids):
  ``run.started`` at once, then one streaming ``POST {OPENROUTER_BASE_URL}/chat/completions`` per
  member, concurrently, over one ``httpx.AsyncClient`` shared by the process. Each stream's first
  delta is flushed at once; after that every tick sends one frame per socket with all streams' new
  text (``panel.delta`` with ``offset``; several events in one tick go as a ``batch``).
  ``panel.completed`` when a member's stream ends (``html`` empty: nothing is rendered);
* when every member is done: ``analysis.in_progress``, the analyst's request (the app's own prompt
  builder, ``chat.fusion.prompts``, so the upstream sees the same bodies), its JSON parsed with
  ``chat.fusion.analysis`` → ``analysis.completed`` (or ``analysis.degraded``); then
  ``final.started``, the writer's request streamed the same way as ``final.delta``, then
  ``completed`` (``timings``: ``total``, ``final_ttft``, ``panel``, ``analysis``, ms from the start
  frame). A failed member becomes ``panel.failed``; no answer at all, or a failed writer, ``failed``;
* ``ping`` → ``pong``; anything else → ``error`` ``invalid``.

Frames are JSON text, encoded once (``json.dumps`` with compact separators, like the app's
consumer). Only loopback upstreams are accepted: the relay refuses to start a run against any other
host. Not part of the app; only the benchmark starts it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# httpcore imports these on its first request (~40 ms): here, at start-up, not on the event loop.
import anyio._backends._asyncio  # noqa: F401
import anyio.streams.tls  # noqa: F401
import anyio.to_thread  # noqa: F401
import h11  # noqa: F401
import httpcore._backends.anyio  # noqa: F401
import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Pure helpers of the engine (no Django, no httpx): the same request bodies as the app's.
from chat.fusion.analysis import AnalysisError, assign_labels, label_map_of, parse_analysis  # noqa: E402
from chat.fusion.prompts import analyst_messages, writer_messages  # noqa: E402
from chat.fusion.sse import SSEDecoder, SSEEvent  # noqa: E402

Frame = dict[str, Any]
Send = Callable[[dict[str, Any]], Awaitable[None]]

BASE_URL = os.environ.get("OPENROUTER_BASE_URL", "").strip().rstrip("/")
API_KEY = os.environ.get("OPENROUTER_API_KEY", "").strip()
INTERVAL_S = int(os.environ.get("FUSION_FRAME_INTERVAL_MS") or 40) / 1000
COALESCED = frozenset({"panel.delta", "final.delta"})
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})

# The process's clients, made at import — before Daphne serves — so their TLS contexts (httpx
# builds one even for plain http) are not built on the event loop during the first run. No pool
# limit. Several, taken in turn by the calls, as the app's (chat.fusion.transport): httpcore's
# pool walks all of its connections for each request it assigns, so one pool holding the
# hundreds of kept-alive connections of 150 runs costs seconds of CPU per burst of starts.
SHARDS = 32
_clients = [
    httpx.AsyncClient(
        timeout=httpx.Timeout(10.0, read=None),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=16, keepalive_expiry=30),
    )
    for _ in range(SHARDS)
]
_next_client = itertools.count()


def http() -> httpx.AsyncClient:
    return _clients[next(_next_client) % SHARDS]


def dumps(frame: Frame) -> str:
    return json.dumps(frame, separators=(",", ":"))


class UpstreamError(RuntimeError):
    pass


async def chat_stream(
    model: str, messages: list[dict[str, Any]], on_delta: Callable[[str], None] | None, **params: Any
) -> str:
    """One streaming chat completion; *on_delta* gets each content delta; returns the whole text."""
    if not BASE_URL or (urlsplit(BASE_URL).hostname or "") not in LOOPBACK:
        raise UpstreamError(f"OPENROUTER_BASE_URL must be a loopback URL for the relay, not {BASE_URL!r}")
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "usage": {"include": True},
        **params,
    }
    headers = {"Accept": "text/event-stream", "Authorization": f"Bearer {API_KEY}"}
    parts: list[str] = []

    def take(items: list[Any]) -> None:
        for item in items:
            if not isinstance(item, SSEEvent) or item.done:
                continue
            try:
                data = json.loads(item.data)
            except ValueError:
                continue
            if not isinstance(data, dict):
                continue
            if data.get("error"):
                raise UpstreamError(f"{model}: error in stream: {data['error']}")
            choices = data.get("choices") or []
            if choices and isinstance(choices[0], dict):
                text = (choices[0].get("delta") or {}).get("content")
                if text:
                    parts.append(text)
                    if on_delta is not None:
                        on_delta(text)

    async with http().stream("POST", BASE_URL + "/chat/completions", json=body, headers=headers) as response:
        if response.status_code != 200:
            detail = (await response.aread())[:300].decode("utf-8", "replace")
            raise UpstreamError(f"{model}: HTTP {response.status_code}: {detail}")
        decoder = SSEDecoder()
        async for chunk in response.aiter_bytes():
            take(decoder.feed(chunk))
        take(decoder.close())
    return "".join(parts)


class RelayRun:
    """One run on one socket: its upstream calls, and the frames they make, coalesced per tick."""

    def __init__(self, conn: Connection, client_run_id: str, prompt: str, panel: dict[str, Any]) -> None:
        self.conn = conn
        self.run_id = str(uuid.uuid4())
        self.client_run_id = client_run_id
        self.prompt = prompt
        self.members: list[str] = [str(m["model"]) for m in panel["members"]]
        self.analyst = str(panel["analyst"]["model"])
        self.writer = str(panel["writer"]["model"])
        self.pending: list[Frame] = []
        self.open: dict[tuple[str, int], Frame] = {}  # stream → its delta waiting for the tick
        self.lengths: dict[tuple[str, int], int] = {}  # stream → characters so far (the next offset)
        self.wake = asyncio.Event()
        self.closing = False
        self.t0 = time.monotonic()

    # ----------------------------------------------------------------- frames

    def emit(self, frame: Frame, *, now: bool = False) -> None:
        frame["run"] = self.run_id
        kind = frame["type"]
        if kind in COALESCED:
            key = (kind, frame.get("slot", -1))
            waiting = self.open.get(key)
            if waiting is not None:
                waiting["delta"] += frame["delta"]
                return
            self.open[key] = frame
        else:
            self.open.clear()  # a barrier: later deltas must not merge into earlier ones
        self.pending.append(frame)
        if now:
            self.wake.set()

    def delta(self, kind: str, slot: int | None, text: str) -> None:
        key = (kind, -1 if slot is None else slot)
        offset = self.lengths.get(key)
        first = offset is None
        self.lengths[key] = (offset or 0) + len(text)
        frame: Frame = {"type": kind, "offset": offset or 0, "delta": text, "blocks": [], "consumed": 0}
        if slot is not None:
            frame["slot"] = slot
        self.emit(frame, now=first)  # each stream's first delta goes out at once

    async def flush(self) -> None:
        frames, self.pending = self.pending, []
        self.open.clear()
        if frames:
            await self.conn.send_text(dumps(frames[0] if len(frames) == 1 else {"type": "batch", "events": frames}))

    async def flusher(self) -> None:
        while True:
            try:
                async with asyncio.timeout(INTERVAL_S):
                    await self.wake.wait()
            except TimeoutError:
                pass
            self.wake.clear()
            closing = self.closing
            await self.flush()
            if closing:
                return

    # ----------------------------------------------------------------- the run

    def ms(self) -> int:
        return int((time.monotonic() - self.t0) * 1000)

    async def member(self, slot: int, model: str) -> tuple[str, str] | None:
        t = time.monotonic()
        try:
            text = await chat_stream(
                model, [{"role": "user", "content": self.prompt}], lambda d: self.delta("panel.delta", slot, d)
            )
        except (UpstreamError, httpx.HTTPError) as exc:
            self.emit(
                {
                    "type": "panel.failed",
                    "slot": slot,
                    "model": model,
                    "status": "failed",
                    "error": {"kind": "upstream_error", "message": str(exc)},
                    "metrics": {},
                    "sources": [],
                },
                now=True,
            )
            return None
        metrics = {"duration_ms": int((time.monotonic() - t) * 1000), "usage": {}}
        self.emit(
            {"type": "panel.completed", "slot": slot, "model": model, "html": "", "metrics": metrics, "sources": []}
        )
        return model, text

    async def drive(self) -> None:
        await self.conn.send_text(
            dumps(
                {
                    "type": "run.started",
                    "run": self.run_id,
                    "client_run_id": self.client_run_id,
                    "turn": {"id": 0, "index": 0, "prompt": self.prompt},
                    "members": [{"slot": i, "model": m, "label": ""} for i, m in enumerate(self.members)],
                    "analyst": self.analyst,
                    "writer": self.writer,
                    "replaces": None,
                    "version": None,
                    "research_notice": None,
                }
            )
        )
        flusher = asyncio.create_task(self.flusher())
        try:
            await self._phases()
        except (UpstreamError, httpx.HTTPError) as exc:
            self.emit({"type": "failed", "status": "error", "kind": "upstream_error", "message": str(exc)})
        finally:
            self.closing = True
            self.wake.set()
            await flusher

    async def _phases(self) -> None:
        done = await asyncio.gather(*(self.member(slot, model) for slot, model in enumerate(self.members)))
        answers = [a for a in done if a is not None]
        failed = [m for m, a in zip(self.members, done) if a is None]
        if not answers:
            self.emit({"type": "failed", "status": "error", "kind": "upstream_error", "message": "No member answered."})
            return
        t_panel = self.ms()

        self.emit({"type": "analysis.in_progress", "analyst_model": self.analyst}, now=True)
        labelled = assign_labels(answers, random.Random())
        label_map = label_map_of(labelled)
        messages = analyst_messages(system_extra=None, previous_turns=[], answers=labelled, question=self.prompt)
        analysis: dict[str, Any] | None = None
        reason: str | None = None
        try:
            raw = await chat_stream(
                self.analyst, messages, None, temperature=0.0, response_format={"type": "json_object"}
            )
            analysis = parse_analysis(raw, label_map).analysis
        except (UpstreamError, httpx.HTTPError, AnalysisError) as exc:
            reason = f"the analyst failed ({exc})"
        if analysis is not None:
            models = {m: i for i, m in enumerate(self.members)}
            self.emit({"type": "analysis.completed", "analysis": analysis, "label_map": label_map, "models": models})
        else:
            self.emit({"type": "analysis.degraded", "reason": reason})
        t_analysis = self.ms()

        self.emit({"type": "final.started", "writer_model": self.writer}, now=True)
        first: list[int] = []

        def on_final(text: str) -> None:
            if not first:
                first.append(self.ms())
            self.delta("final.delta", None, text)

        messages = writer_messages(
            system_extra=None,
            previous_turns=[],
            question=self.prompt,
            answers=answers,
            analysis=analysis,
            degraded_reason=reason,
        )
        await chat_stream(self.writer, messages, on_final)
        timings = {
            "total": self.ms(),
            "panel": t_panel,
            "analysis": t_analysis - t_panel,
            "final_ttft": first[0] if first else None,
        }
        self.emit(
            {
                "type": "completed",
                "status": "complete",
                "html": "",
                "usage": {},
                "timings": timings,
                "failed_models": failed,
                "sources": [],
                "tool_usage": {},
            }
        )


class Connection:
    """One websocket: accept anything, answer start/ping, run each run as a task of its own."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.tasks: set[asyncio.Task[None]] = set()

    async def send_text(self, text: str) -> None:
        await self._send({"type": "websocket.send", "text": text})

    async def serve(self, receive: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        try:
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.connect":
                    await self._send({"type": "websocket.accept"})
                    await self.send_text(dumps({"type": "snapshot", "runs": []}))
                elif kind == "websocket.receive":
                    if message.get("text") is not None:
                        await self.on_frame(message["text"])
                elif kind == "websocket.disconnect":
                    return
        finally:
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

    async def on_frame(self, text: str) -> None:
        try:
            frame = json.loads(text)
            kind = frame.get("type")
        except (ValueError, AttributeError):
            frame, kind = {}, None
        if kind == "ping":
            await self.send_text(dumps({"type": "pong"}))
            return
        if kind == "start":
            try:
                run = RelayRun(self, str(frame["run_id"]), str(frame["prompt"]), frame["panel"])
            except (KeyError, TypeError) as exc:
                await self._error(f"start needs run_id, prompt and a panel with model ids ({exc!r}).", frame)
                return
            task = asyncio.create_task(run.drive(), name=f"relay-run-{run.run_id}")
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            return
        await self._error("The relay understands start and ping only.", frame)

    async def _error(self, message: str, frame: Any) -> None:
        run_id = frame.get("run_id") if isinstance(frame, dict) else None
        await self.send_text(dumps({"type": "error", "code": "invalid", "message": message, "run_id": run_id}))


async def _http_endpoint(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]], send: Send) -> None:
    while True:  # drain the request body
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            break
    ok = scope.get("path", "").rstrip("/") in ("/healthz", "")
    body = b'{"ok":true,"relay":true}' if ok else b'{"error":"not found"}'
    await send(
        {
            "type": "http.response.start",
            "status": 200 if ok else 404,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def application(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]], send: Send) -> None:
    kind = scope["type"]
    if kind == "websocket":
        await Connection(send).serve(receive)
    elif kind == "http":
        await _http_endpoint(scope, receive, send)
    elif kind == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for client in _clients:
                    await client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return
