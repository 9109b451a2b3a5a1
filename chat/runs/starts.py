"""Starts that arrive together are written together.

A start is a dozen reads and writes. One at a time in the run-path database thread, a burst of
fifty simultaneous starts (a team pressing Enter after a meeting, or the bench) is fifty
transactions in a queue, each with its own thread hop, catalogue read and commit. Here the
starts waiting when the thread becomes free are taken as one batch:

* the reads every start makes (the idempotency check, the conversation, the user's running
  runs, stored keys and the server-key flag, the catalogue) are done once for the batch, one
  query each, and handed to each start through ``chat.memo``;
* each start then runs the usual ``_start_sync`` in a savepoint of one transaction for the
  batch, so one failing start (busy, over the limit, a bad preset) leaves the others alone;
* the batch commits once.

An idle server sees batches of one: nothing waits for a batch to fill.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Count

from chat import keys, model_catalogue, spend
from chat.dbthread import in_db_thread
from chat.fusion.loops import PerLoop
from chat.fusion.types import FusionRequest
from chat.memo import memo_update, reads_once
from chat.models import Conversation, ProviderKey, Run, RunStatus, Turn, UserLimits
from chat.runs.checks import SessionEnded
from chat.ws_security import sessions_valid

log = logging.getLogger(__name__)

Started = tuple[Run, FusionRequest | None, dict[str, Any]]

# Starts in one batch at most: the first of a burst launch while the rest are written.
MAX_BATCH = 1000


@dataclass
class StartItem:
    user: User
    start: dict[str, Any]  # _start_sync's keyword arguments but the user
    future: asyncio.Future[Started] = field(repr=False)
    session: tuple[str, int] | None = None  # (session key, user id) to check first


def _prefetch(items: list[StartItem]) -> None:
    """The batch's common reads, one query each, into the memo the starts read through."""
    users = {i.user.pk: i.user for i in items}
    client_ids = [i.start["client_run_id"] for i in items]
    memo_update(
        "existing_runs",
        {
            (r.user_id, r.client_run_id): r
            for r in Run.objects.filter(user_id__in=users, client_run_id__in=client_ids).select_related("turn")
        },
    )
    memo_update("existing_runs_known", {(i.user.pk, i.start["client_run_id"]): True for i in items})
    conversations = Conversation.objects.filter(user_id__in=users, pk__in=[i.start["conversation_id"] for i in items])
    memo_update("conversations", {(c.user_id, c.pk): c for c in conversations})
    running = Counter(Run.objects.filter(user_id__in=users, status=RunStatus.RUNNING).values_list("user_id", flat=True))
    memo_update("running_runs", {pk: running.get(pk, 0) for pk in users})
    stored: dict[int, list[tuple[str, str]]] = {pk: [] for pk in users}
    for user_id, provider, token in ProviderKey.objects.filter(user_id__in=users).values_list(
        "user_id", "provider", "encrypted_key"
    ):
        stored[user_id].append((provider, token))
    flags = dict(UserLimits.objects.filter(user_id__in=users).values_list("user_id", "allow_server_key"))
    for pk in users:
        keys.remember_user_keys(user_id=pk, stored=stored[pk], allow_server_key=flags.get(pk))
    conversation_ids = [c.pk for c in conversations]
    counts = dict(
        Turn.objects.filter(conversation_id__in=conversation_ids)
        .order_by()
        .values("conversation_id")
        .annotate(n=Count("id"))
        .values_list("conversation_id", "n")
    )
    memo_update("turn_counts", {pk: counts.get(pk, 0) for pk in conversation_ids})
    from chat.runs.services import history_turns_of

    memo_update("history_turns", history_turns_of(conversation_ids))
    spend.lock_for_starts(users)


def start_many(items: list[StartItem]) -> list[Started | BaseException]:
    """Run ``_start_sync`` (and read the engine's inputs) for each item, as one batch."""
    from chat.runs.services import _start_sync, engine_inputs

    pairs = [i.session for i in items if i.session is not None]
    valid = sessions_valid(pairs) if pairs else {}
    ended = [i.session is not None and not valid.get(i.session, False) for i in items]
    if all(ended):
        return [SessionEnded() for _ in items]
    live = [i for i, gone in zip(items, ended, strict=True) if not gone]
    started = iter(_start_batch(live, _start_sync, engine_inputs))
    return [SessionEnded() if gone else next(started) for gone in ended]


def _start_batch(items: list[StartItem], start_sync: Any, engine_inputs: Any) -> list[Started | BaseException]:
    results: list[Started | BaseException] = []
    with reads_once():
        # A provider whose catalogue was never fetched is fetched now, outside the transaction
        # (the fetch goes to the network; the batch's transaction holds the write lock).
        model_catalogue.prefetch_for_panels([i.start.get("panel_data") for i in items])
        try:
            with transaction.atomic():
                _prefetch(items)
                for item in items:
                    try:  # _start_sync writes in a savepoint of its own: a failed start leaves nothing
                        run, request = start_sync(user=item.user, **item.start)
                        inputs = engine_inputs(user=item.user, request=request) if request is not None else {}
                        results.append((run, request, inputs))
                    except Exception as exc:
                        results.append(exc)
        except Exception as exc:  # the commit itself failed: none of the batch started
            log.exception("a batch of %d starts failed", len(items))
            return [exc for _ in items]
    return results


class StartBatcher:
    """The starts of one event loop: each waits for the next batch the database thread takes."""

    def __init__(self) -> None:
        self.waiting: list[StartItem] = []
        self.busy = False

    async def start(self, *, user: User, session: tuple[str, int] | None = None, **start: Any) -> Started:
        """Start a run in the next batch; with *session*, only if it still signs *user* in
        (else ``SessionEnded``): the check is one query for the whole batch."""
        future: asyncio.Future[Started] = asyncio.get_running_loop().create_future()
        self.waiting.append(StartItem(user=user, start=start, future=future, session=session))
        if not self.busy:
            self.busy = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            # Let the starts that arrived in the same burst (frames already read, their
            # consumers a step behind) join the first batch: a few loop turns, no timer.
            for _ in range(3):
                await asyncio.sleep(0)
            while self.waiting:
                batch, self.waiting = self.waiting[:MAX_BATCH], self.waiting[MAX_BATCH:]
                try:
                    results: list[Started | BaseException] = await in_db_thread(start_many, batch)
                except Exception as exc:
                    results = [exc for _ in batch]
                for item, result in zip(batch, results, strict=True):
                    if item.future.done():
                        continue
                    if isinstance(result, BaseException):
                        item.future.set_exception(result)
                    else:
                        item.future.set_result(result)
        finally:
            self.busy = False


_batchers: PerLoop[StartBatcher] = PerLoop(StartBatcher)


def batcher() -> StartBatcher:
    return _batchers.get()
