"""The run layer: runs of the pipeline between the websocket (or another door) and the engine.

Owns starting, steering, streaming, storing and recovering runs. Modules, one job each:

* ``services``: ``run_start``, ``run_stop``, … — what callers use; validate, write rows, launch.
* ``reruns``: new versions of a turn (member retry, rewrite, retry stopped, resend, fuse).
* ``checks``: what must hold before a paid call (limits, models, keys, spend), and ``RunError``.
* ``live``: this process's ``RunManager`` and the task that owns each run (``ActiveRun``).
* ``state``: ``RunState``, the pure state of a run and its one serialiser (snapshot, frames, export).
* ``frames``: streamed text with offsets, coalescing into frames, the flush.
* ``store``: checkpoints and the final write, behind ``RunStore``.
* ``recovery``: runs of dead processes become ``interrupted``.

Imports the engine (chat.fusion) and the Django app's models and services; never the consumers
or views, which import it.
"""

from __future__ import annotations

from chat.runs.checks import RunError, SessionEnded
from chat.runs.live import ActiveRun, RunManager, control_group, group_name, join_control_group, manager
from chat.runs.recovery import PROCESS_ID, mark_interrupted, recover_interrupted_runs, stale_after
from chat.runs.reruns import run_regenerate, run_rerun, run_retry_member
from chat.runs.services import (
    build_request,
    history_messages,
    run_fuse_now,
    run_request_live_snapshot,
    run_snapshot,
    run_start,
    run_state,
    run_stop,
    run_stop_member,
    running_runs_for_conversation,
    title_from_prompt,
)
from chat.runs.state import RunState

__all__ = [
    "SessionEnded",
    "PROCESS_ID",
    "ActiveRun",
    "RunError",
    "RunManager",
    "RunState",
    "build_request",
    "control_group",
    "group_name",
    "history_messages",
    "join_control_group",
    "manager",
    "mark_interrupted",
    "recover_interrupted_runs",
    "run_fuse_now",
    "run_regenerate",
    "run_request_live_snapshot",
    "run_rerun",
    "run_retry_member",
    "run_snapshot",
    "run_start",
    "run_state",
    "run_stop",
    "run_stop_member",
    "running_runs_for_conversation",
    "stale_after",
    "title_from_prompt",
]
