"""Where a live run's state is written: checkpoints, the heartbeat, and the final write.

``RunStore`` is the interface the owning task (chat.runs.live) talks to; ``DatabaseRunStore``
writes to the database. Checkpoints and heartbeats of every run of this process are written
together: ``keep_checkpointing`` enrols a run with its loop's ``CheckpointBatcher``, which every
tick takes a snapshot of the runs that are due (on the loop, so a worker thread never reads a
state the loop is changing) and writes them all in one transaction in a run-path database
thread (chat.runs.dbthread). A member whose text did not change since its last write is not
written again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Field
from django.utils import timezone

from chat import spend, usage
from chat.fusion.loops import PerLoop
from chat.fusion.types import RunCompleted
from chat.dbthread import in_db_thread
from chat.models import Conversation, MemberResponse, Run
from chat.runs.state import RunState, priced_tool_usage

log = logging.getLogger(__name__)


@dataclass
class Checkpoint:
    """What one run's checkpoint writes, copied from its state on the event loop."""

    run_id: str
    members: dict[int, dict[str, Any]]  # slot → the columns of a member that changed
    run: dict[str, Any]  # the run's columns (the answer so far, the analysis …)


class RunStore(Protocol):
    """Synchronous writes of runs' states (called from a worker thread)."""

    def write(self, checkpoints: list[Checkpoint], heartbeats: list[str]) -> None:
        """Partial texts and statuses of some runs, and the heartbeat of these and of quiet ones:
        other processes mark runs whose heartbeat stopped as interrupted."""

    def finalize(self, state: RunState, *, conversation_id: int, wall_ms: int) -> None:
        """The final state in one transaction; clients hear of it only afterwards."""


_MEMBER_COLUMNS = ("content", "reasoning", "status", "tool_calls", "sources", "notes")
_RUN_COLUMNS = ("answer", "analysis", "label_map", "writer_model")


class DatabaseRunStore:
    def write(self, checkpoints: list[Checkpoint], heartbeats: list[str]) -> None:
        """One transaction for the whole batch, with prepared statements run many times."""
        member_rows, run_rows = [], []
        m_fields = [cast(Field, MemberResponse._meta.get_field(c)) for c in _MEMBER_COLUMNS]
        r_fields = [cast(Field, Run._meta.get_field(c)) for c in _RUN_COLUMNS]
        pk = Run._meta.pk
        assert pk is not None
        for c in checkpoints:
            run_id = pk.get_db_prep_value(c.run_id, connection)
            for slot, cols in c.members.items():
                values = [f.get_db_prep_save(cols[f.name], connection) for f in m_fields]
                member_rows.append([*values, run_id, slot])
            run_rows.append([*(f.get_db_prep_save(c.run[f.name], connection) for f in r_fields), run_id])
        ids = [pk.get_db_prep_value(i, connection) for i in heartbeats]
        beat = cast(Field, Run._meta.get_field("heartbeat_at")).get_db_prep_save(timezone.now(), connection)
        member_sql = (
            f"UPDATE {MemberResponse._meta.db_table} SET {', '.join(f'{c} = %s' for c in _MEMBER_COLUMNS)}"
            " WHERE run_id = %s AND slot = %s"
        )
        run_sql = (
            f"UPDATE {Run._meta.db_table} SET {', '.join(f'{c} = %s' for c in _RUN_COLUMNS)}"
            " WHERE id = %s AND status = 'running'"
        )
        with transaction.atomic(), connection.cursor() as cursor:
            if member_rows:
                cursor.executemany(member_sql, member_rows)
            if run_rows:
                cursor.executemany(run_sql, run_rows)
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                cursor.execute(
                    f"UPDATE {Run._meta.db_table} SET heartbeat_at = %s"
                    f" WHERE status = 'running' AND id IN ({', '.join(['%s'] * len(chunk))})",
                    [beat, *chunk],
                )

    def finalize(self, state: RunState, *, conversation_id: int, wall_ms: int) -> None:
        # Every call counts, however it ended; what a provider did not report is estimated.
        calls = spend.priced_calls(state.call_records())
        state.settle(calls)  # the terminal frame's totals too
        r = state.result
        with transaction.atomic():
            for m in state.members:
                err = m.error or {}
                MemberResponse.objects.filter(run_id=state.run_id, slot=m.slot).update(
                    content=m.stream.text,
                    reasoning=m.stream.reasoning,
                    status=m.status.value,
                    attempt=m.attempt,
                    error_kind=err.get("kind", ""),
                    error_message=err.get("message", ""),
                    ttft_ms=m.metrics["ttft_ms"],
                    duration_ms=m.metrics["duration_ms"],
                    usage=m.metrics["usage"],
                    tool_calls=m.tool_calls,
                    sources=m.sources,
                    notes=m.notes,
                )
            now = timezone.now()
            fields: dict[str, Any] = {
                "status": state.status.value,
                "answer": state.final.text,
                "analysis": state.analysis,
                "label_map": state.label_map,
                "analysis_error": state.analysis_error,
                "analyst_model": state.analyst or "",
                "writer_model": state.writer or "",
                "finished_at": now,
                "heartbeat_at": now,
                # The reservation ends with the run; what counts from now on is what its calls cost.
                "reserved_usd": 0,
                "cost_usd": spend.cost_of(r.usage if r is not None else None),
                "sources": state.sources,
                "tool_usage": state.tool_usage
                or priced_tool_usage({}, notice=state.research_notice, search_price_usd=state.search_price_usd),
            }
            if r is not None:
                fields["usage"] = r.usage.to_dict()
                fields["failed_models"] = r.failed_models
                fields["calls"] = [c for c in calls if c["role"] != "panel"] or state.analysis_calls
            if isinstance(r, RunCompleted):
                fields["timings"] = {**r.timings, "total": r.timings.get("total", wall_ms)}
            else:
                fields["timings"] = {"total": wall_ms}
            if state.error:
                fields["error_kind"], fields["error_message"] = state.error["kind"], state.error["message"]
            if state.tool_usage.get("search_cost_usd"):  # paid searches count toward the spend limit
                fields["cost_usd"] = (fields["cost_usd"] or 0) + spend.to_decimal(state.tool_usage["search_cost_usd"])
            Run.objects.filter(pk=state.run_id).update(**fields)
            Conversation.objects.filter(pk=conversation_id).update(updated_at=now)
            # The ledger, in the transaction that releases the reservation: even when the
            # conversation was deleted while the run streamed, its calls were billed.
            if state.user_id is not None:
                spend.spend_record(
                    user_id=state.user_id,
                    run_id=state.run_id,
                    conversation_id=conversation_id,
                    turn_id=state.turn.get("id"),
                    turn_index=state.turn.get("index"),
                    uses_server_key=state.uses_server_key,
                    calls=calls,
                    search_cost_usd=state.tool_usage.get("search_cost_usd"),
                    searches=int(state.tool_usage.get("searches") or 0),
                )
        # What the turn's footer and receipt show now, this run included (sent with the terminal frame).
        state.receipt = usage.turn_receipt(turn_id=state.turn["id"], shown_run_id=state.run_id)


_STORE = DatabaseRunStore()


def default_store() -> RunStore:
    return _STORE


# A finished Markdown block is written within about BLOCK_CHECKPOINT_DELAY_S, but a run never
# writes more often than every MIN_CHECKPOINT_GAP_S: a crash then loses at most the block being
# streamed, not the second of text since the last interval's checkpoint.
BLOCK_CHECKPOINT_DELAY_S = 0.1
MIN_CHECKPOINT_GAP_S = 0.25


@dataclass(eq=False)
class _Enrolled:
    state: RunState
    store: RunStore
    min_gap: float
    block_delay: float
    last_write: float = field(default_factory=time.monotonic)
    written: dict[int, tuple] = field(default_factory=dict)  # slot → what its last write held
    in_flight: asyncio.Event | None = None  # set when the batch holding this run is written


def _member_signature(m: Any) -> tuple:
    s = m.stream
    calls = tuple((c.get("status"), c.get("summary")) for c in m.tool_calls)
    # The texts themselves (compared by identity first, so this is cheap): an id could be reused.
    return (s.text, s.reasoning, m.status, calls, len(m.sources), len(m.notes))


def _checkpoint(entry: _Enrolled) -> Checkpoint:
    state = entry.state
    members: dict[int, dict[str, Any]] = {}
    for m in state.members:
        signature = _member_signature(m)
        if entry.written.get(m.slot) == signature:
            continue
        entry.written[m.slot] = signature
        members[m.slot] = {
            "content": m.stream.text,
            "reasoning": m.stream.reasoning,
            "status": m.status.value,
            "tool_calls": [dict(c) for c in m.tool_calls],
            "sources": list(m.sources),
            "notes": list(m.notes),
        }
    run = {
        "answer": state.final.text,
        "analysis": state.analysis,
        "label_map": dict(state.label_map or {}),
        "writer_model": state.writer or "",
    }
    return Checkpoint(run_id=state.run_id, members=members, run=run)


class CheckpointBatcher:
    """Every run of one event loop that checkpoints, written together once per tick."""

    def __init__(self) -> None:
        self.entries: dict[str, _Enrolled] = {}
        self.task: asyncio.Task[None] | None = None

    def enrol(self, entry: _Enrolled) -> None:
        self.entries[entry.state.run_id] = entry
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run(), name="checkpoints")

    async def leave(self, entry: _Enrolled) -> None:
        """Stop checkpointing this run, after the write in flight that holds it (so a final write
        that follows is never overwritten by an older checkpoint)."""
        if self.entries.get(entry.state.run_id) is entry:
            del self.entries[entry.state.run_id]
        if entry.in_flight is not None:
            await entry.in_flight.wait()

    async def _run(self) -> None:
        while self.entries:
            tick = min(min(e.block_delay for e in self.entries.values()), settings.FUSION_CHECKPOINT_INTERVAL_S)
            await asyncio.sleep(tick)
            await self._tick()

    async def _tick(self) -> None:
        interval = settings.FUSION_CHECKPOINT_INTERVAL_S
        now = time.monotonic()
        batches: dict[int, tuple[RunStore, list[Checkpoint], list[str], list[_Enrolled]]] = {}
        for entry in list(self.entries.values()):
            state = entry.state
            since = now - entry.last_write
            urgent = state.dirty and state.block_finished and since >= entry.min_gap
            if not urgent and since < interval:
                continue
            entry.last_write = now
            store, checkpoints, beats, held = batches.setdefault(id(entry.store), (entry.store, [], [], []))
            if state.dirty:
                state.dirty = state.block_finished = False
                checkpoints.append(_checkpoint(entry))
            beats.append(state.run_id)
            held.append(entry)
        for store, checkpoints, beats, held in batches.values():
            done = asyncio.Event()
            for entry in held:
                entry.in_flight = done
            try:
                await in_db_thread(store.write, checkpoints, beats)
            except Exception:  # a failed checkpoint must not kill the runs; the final write retries
                log.exception("checkpoint of %d run(s) failed", len(held))
                for entry in held:
                    entry.written.clear()
                    entry.state.dirty = True
            finally:
                done.set()
                for entry in held:
                    if entry.in_flight is done:
                        entry.in_flight = None


_batchers: PerLoop[CheckpointBatcher] = PerLoop(CheckpointBatcher)


def _batcher() -> CheckpointBatcher:
    return _batchers.get()


async def keep_checkpointing(
    state: RunState,
    store: RunStore,
    *,
    block_delay: float = BLOCK_CHECKPOINT_DELAY_S,
    min_gap: float = MIN_CHECKPOINT_GAP_S,
) -> None:
    """Checkpoint *state* when it changed, else beat the heartbeat, every FUSION_CHECKPOINT_INTERVAL_S;
    and sooner when a Markdown block finished (``state.block_finished``), at most every *min_gap*.

    Runs until cancelled; it then returns only once no write of this run is in flight.
    """
    entry = _Enrolled(state=state, store=store, min_gap=min_gap, block_delay=block_delay)
    batcher = _batcher()
    batcher.enrol(entry)
    try:
        await asyncio.Event().wait()
    finally:
        await asyncio.shield(batcher.leave(entry))
