"""Daphne with an event-loop probe (used by ``bench/ws_fanout.py --loop-probe``; not the default).

Same command line as ``python -m daphne``. Adds, inside the Daphne process:

* a heartbeat on the reactor's loop every 10 ms; a gap longer than 40 ms is a *stall*
  (nothing on the loop ran: no websocket frame could be sent meanwhile);
* ``gc.callbacks`` timing of every garbage collection longer than 5 ms;
* a thread that samples the main thread's stack every 5 ms: while a stall is going on it keeps
  the stack; always, it counts where the main thread is (idle in ``select``, or busy: the
  innermost frame of this project, else the innermost library) — a poor man's profile.

On shutdown (SIGTERM) it writes ``{"gaps": [[unix time, ms]], "gcs": [[unix time, generation,
ms]], "samples": [[unix time, [frames]]], "profile": [[unix time, where]]}`` to the file named
by ``BENCH_LOOP_PROBE_OUT``. The probe costs ~300 wake-ups per second (a few % of a core).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
import traceback
from typing import Any

from daphne.server import Server  # noqa: F401  (installs the asyncio reactor first)
from twisted.internet import reactor

OUT = os.environ.get("BENCH_LOOP_PROBE_OUT", "daphne_probe.json")
STALL_S = 0.04
_main = threading.get_ident()
_gaps: list[list[float]] = []
_gcs: list[list[Any]] = []
_samples: list[list[Any]] = []
_profile: list[list[Any]] = []
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_last = [time.monotonic()]
_gc_started = [0.0]


def _beat() -> None:
    now = time.monotonic()
    if now - _last[0] > STALL_S:
        _gaps.append([time.time(), (now - _last[0]) * 1000])
    _last[0] = now
    reactor.callLater(0.01, _beat)


def _gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _gc_started[0] = time.perf_counter()
        return
    ms = (time.perf_counter() - _gc_started[0]) * 1000
    if ms > 5:
        _gcs.append([time.time(), info.get("generation"), ms])


def _where(frame: Any) -> str:
    """Where the main thread is: "idle", a project function, or a library."""
    code = frame.f_code
    if code.co_name == "select" and code.co_filename.endswith("selectors.py"):
        return "idle"
    lib = None
    f = frame
    while f is not None:
        name = f.f_code.co_filename
        if name.startswith(_ROOT) and "site-packages" not in name and "/bench/" not in name:
            return f"{os.path.relpath(name, _ROOT)}:{f.f_code.co_name}"
        if lib is None:
            part = name.split("site-packages/")[-1] if "site-packages/" in name else os.path.basename(name)
            lib = part.split("/")[0]
        f = f.f_back
    return f"[{lib}]"


def _sampler() -> None:
    while True:
        time.sleep(0.005)
        frame = sys._current_frames().get(_main)
        if frame is None:
            continue
        _profile.append([time.time(), _where(frame)])
        if time.monotonic() - _last[0] > STALL_S:
            stack = traceback.extract_stack(frame)[-12:]
            _samples.append(
                [time.time(), [f"{f.filename.split('site-packages/')[-1]}:{f.lineno} {f.name}" for f in stack]]
            )


def _dump() -> None:
    with open(OUT, "w", encoding="utf-8") as fh:
        json.dump({"gaps": _gaps, "gcs": _gcs, "samples": _samples, "profile": _profile}, fh)


if __name__ == "__main__":
    sys.argv = ["daphne", *sys.argv[1:]]
    gc.callbacks.append(_gc)
    reactor.callWhenRunning(_beat)
    reactor.addSystemEventTrigger("before", "shutdown", _dump)
    threading.Thread(target=_sampler, name="loop-probe", daemon=True).start()
    from daphne.cli import CommandLineInterface

    CommandLineInterface.entrypoint()
