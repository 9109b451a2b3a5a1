"""Where a live run's state is written: checkpoints, the heartbeat, and the final write.

``RunStore`` is the interface the owning task (chat.runs.live) talks to; ``DatabaseRunStore``
writes each run's rows on its own. A store that batches the writes of many runs replaces it in
one place, ``default_store``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from chat import spend
from chat.fusion.types import RunCompleted
from chat.models import Conversation, MemberResponse, Run, RunStatus
from chat.runs.state import RunState, priced_tool_usage

log = logging.getLogger(__name__)


class RunStore(Protocol):
    """Synchronous writes of one run's state (called from a worker thread)."""

    def checkpoint(self, state: RunState) -> None:
        """Partial text and statuses, about once a second; also a heartbeat."""

    def heartbeat(self, state: RunState) -> None:
        """A quiet run is still alive: other processes mark runs whose heartbeat stopped as interrupted."""

    def finalize(self, state: RunState, *, conversation_id: int, wall_ms: int) -> None:
        """The final state in one transaction; clients hear of it only afterwards."""


class DatabaseRunStore:
    def heartbeat(self, state: RunState) -> None:
        Run.objects.filter(pk=state.run_id, status=RunStatus.RUNNING).update(heartbeat_at=timezone.now())

    def checkpoint(self, state: RunState) -> None:
        for m in state.members:
            MemberResponse.objects.filter(run_id=state.run_id, slot=m.slot).update(
                content=m.stream.text,
                reasoning=m.stream.reasoning,
                status=m.status.value,
                tool_calls=m.tool_calls,
                sources=m.sources,
                notes=m.notes,
            )
        Run.objects.filter(pk=state.run_id, status=RunStatus.RUNNING).update(
            answer=state.final.text,
            heartbeat_at=timezone.now(),
            analysis=state.analysis,
            label_map=state.label_map,
            writer_model=state.writer,
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
        state.receipt = spend.turn_receipt(turn_id=state.turn["id"], shown_run_id=state.run_id)


def default_store() -> RunStore:
    return DatabaseRunStore()


# A finished Markdown block is written within about BLOCK_CHECKPOINT_DELAY_S, but a run never
# writes more often than every MIN_CHECKPOINT_GAP_S: a crash then loses at most the block being
# streamed, not the second of text since the last interval's checkpoint.
BLOCK_CHECKPOINT_DELAY_S = 0.1
MIN_CHECKPOINT_GAP_S = 0.25


async def keep_checkpointing(
    state: RunState,
    store: RunStore,
    *,
    block_delay: float = BLOCK_CHECKPOINT_DELAY_S,
    min_gap: float = MIN_CHECKPOINT_GAP_S,
) -> None:
    """Checkpoint *state* when it changed, else beat the heartbeat, every FUSION_CHECKPOINT_INTERVAL_S;
    and sooner when a Markdown block finished (``state.block_finished``), at most every *min_gap*."""
    interval = settings.FUSION_CHECKPOINT_INTERVAL_S
    tick = min(block_delay, interval)
    last_write = time.monotonic()
    while True:
        await asyncio.sleep(tick)
        since = time.monotonic() - last_write
        urgent = state.dirty and state.block_finished and since >= min_gap
        if not urgent and since < interval:
            continue
        last_write = time.monotonic()
        try:
            if state.dirty:
                state.dirty = state.block_finished = False
                await database_sync_to_async(store.checkpoint)(state)
            else:
                await database_sync_to_async(store.heartbeat)(state)
        except Exception:  # a failed checkpoint must not kill the run; the final write retries
            log.exception("checkpoint of run %s failed", state.run_id)
