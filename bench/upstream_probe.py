"""The project's scripted upstream (``chat.testing.scripted``), plus a log of when it wrote each chunk.

Same command line as ``python -m chat.testing.scripted`` (it calls that module's ``main()``); the
only addition is a record, taken just before each SSE content chunk is written to the socket, of
``(model, generation id, offset, length, unix time)``, and one ``end`` record when a stream's body
ends. ``bench/ws_fanout.py`` compares these send times with the times its websockets receive the
same characters (both processes run on this machine and read the same wall clock).

    GET /_bench/sends  → {"sends": [[kind, model, gen_id, offset, length, time], ...]}
                         kind "c" = content chunk, "e" = end of the SSE body (offset = total chars)

Nothing in ``chat/`` is changed: two methods are wrapped at import time. If the scripted module no
longer has them, the upstream runs unwrapped and ``/_bench/sends`` answers 404 — the benchmark
then falls back to the scripted schedule (request time + ttft + offset / pace).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chat.testing import scripted  # noqa: E402

SENDS: list[list[Any]] = []


def _install() -> bool:
    writer_cls = getattr(scripted, "SSEWriter", None)
    server_cls = getattr(scripted, "ScriptedUpstream", None)
    if writer_cls is None or server_cls is None or not hasattr(writer_cls, "data") or not hasattr(server_cls, "_route"):
        print("upstream_probe: scripted upstream internals changed; running without send log", file=sys.stderr)
        return False
    orig_data, orig_end, orig_route = writer_cls.data, getattr(writer_cls, "end", None), server_cls._route

    async def data(self: Any, payload: Any) -> None:
        text = None
        if isinstance(payload, dict):
            choices = payload.get("choices") or []
            if choices and isinstance(choices[0], dict):
                text = (choices[0].get("delta") or {}).get("content")
        if text:
            offset = getattr(self, "_bench_offset", 0)
            self._bench_offset = offset + len(text)
            self._bench_id = (payload.get("model"), payload.get("id"))
            SENDS.append(["c", payload.get("model"), payload.get("id"), offset, len(text), time.time()])
        await orig_data(self, payload)

    async def end(self: Any) -> None:
        ident = getattr(self, "_bench_id", None)
        if ident is not None:
            SENDS.append(["e", ident[0], ident[1], getattr(self, "_bench_offset", 0), 0, time.time()])
        await orig_end(self)

    async def route(self: Any, conn: Any, request: Any) -> bool:
        if request.method == "GET" and request.path.rstrip("/") == "/_bench/sends":
            await conn.send_json(200, {"sends": SENDS})
            return True
        if request.method == "POST" and request.path.rstrip("/") == "/_bench/reset":
            SENDS.clear()
            await conn.send_json(200, {"ok": True})
            return True
        return await orig_route(self, conn, request)

    writer_cls.data = data
    if orig_end is not None:
        writer_cls.end = end
    server_cls._route = route
    return True


if __name__ == "__main__":
    _install()
    scripted.main()
