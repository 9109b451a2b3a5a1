"""Running an evaluation: every configuration answers every task, then the judge's passes.

Item by item in the database, so it resumes: an item already answered keeps its answer (an answer
whose run finished while this process died is harvested from the stored run, not asked again),
and a pass already judged is not judged again. Answers are ordinary runs through the run service
(``chat.api.runs.api_run_start``: a conversation marked Eval each); the judge's calls are ledger
rows of role ``judge`` on the item's run. It stops cleanly, status ``stopped`` with the reason, at
the evaluation's ``max_cost_usd``, at the user's daily spend limit, or when asked to; running it
again continues.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from chat.api.choose import Chosen
from chat.api.errors import ApiError
from chat.api.runs import api_run_start
from chat.dbthread import in_db_thread
from chat.engine import build_limits, build_registry, known_secrets
from chat.evals import scoring
from chat.evals.judge import judge_answer
from chat.evals.tasks import Task
from chat.fusion.client import ChatClient
from chat.fusion.transport import shared_http
from chat.fusion.types import ModelSpec
from chat.models import (
    ConversationSource,
    EvalItem,
    EvalItemStatus,
    EvalJudgement,
    Evaluation,
    EvaluationStatus,
    MemberResponse,
    Run,
    RunStatus,
    SpendEntry,
    SpendRole,
)
from chat.runs.recovery import mark_interrupted, stale_after
from chat import keys
from chat.spend import daily_limit, priced_calls, server_daily_limit, server_spent_today, spend_record, spent_today

log = logging.getLogger(__name__)

START_RETRY_S = 0.5
# A short answer that opens like this is a refusal, reported as such (not judged, not hidden).
REFUSAL_RE = re.compile(
    r"^\W*(i'?m sorry|i am sorry|sorry, but|i can(?:no|'|’)t (?:help|assist|provide|answer)|i cannot (?:help|assist|provide|answer)"
    r"|i(?:'m| am) (?:unable|not able) to (?:help|assist|provide|answer)|i won'?t (?:help|assist|provide|answer))",
    re.IGNORECASE,
)
REFUSAL_MAX_CHARS = 600
REFUSAL_KINDS = {"moderation", "content_filter", "refused"}
Progress = Callable[[dict[str, Any]], None]


class EvaluationStopped(Exception):
    """A limit was reached or a stop was asked: the evaluation stops cleanly, resumable."""


class EvaluationBusy(Exception):
    """The evaluation's runs are going on in another process: this one leaves it alone."""


@dataclass
class _Budget:
    """``max_cost_usd`` of the evaluation: what it spent so far, from the ledger, plus what its
    calls in flight may still cost (their estimate, held until they are recorded)."""

    limit: Decimal | None
    spent: Decimal
    held: Decimal = Decimal(0)

    def check(self, estimate: Decimal) -> None:
        if self.limit is not None and self.spent + self.held + estimate > self.limit:
            raise EvaluationStopped(
                f"The evaluation's cost limit of ${self.limit:.2f} is reached "
                f"(${self.spent:.4f} spent). Raise it and run the evaluation again to continue."
            )


# --------------------------------------------------------------------------- database steps


def ensure_items(evaluation: Evaluation) -> None:
    """One row per configuration × task (idempotent)."""
    rows = [
        EvalItem(evaluation=evaluation, config_key=c["key"], task_id=t["id"])
        for c in evaluation.configs
        for t in evaluation.tasks
    ]
    EvalItem.objects.bulk_create(rows, ignore_conflicts=True)


def evaluation_spent(evaluation_id: int) -> Decimal:
    """What the evaluation has cost: its answers' and its judging's ledger rows."""
    run_ids = EvalItem.objects.filter(evaluation_id=evaluation_id, run_id__isnull=False).values("run_id")
    total = SpendEntry.objects.filter(run_id__in=run_ids).aggregate(s=Sum("cost_usd"))["s"]
    return total or Decimal(0)


def _answer_cost(run_id: Any) -> Decimal:
    total = SpendEntry.objects.filter(run_id=run_id).exclude(role=SpendRole.JUDGE).aggregate(s=Sum("cost_usd"))["s"]
    return total or Decimal(0)


def _host_of(url: str) -> str:
    try:
        return (urlsplit(url if "//" in url else f"//{url}").hostname or "").lower()
    except ValueError:
        return ""


def _guarded(host: str, guard: list[str]) -> str | None:
    return next((g for g in guard if host == g or host.endswith("." + g)), None)


def guard_flags(run: Run, members: list[MemberResponse], guard: list[str]) -> list[dict[str, str]]:
    """Every tool call or source of the run that touched a guarded host."""
    flags: list[dict[str, str]] = []

    def check(url: Any, where: str) -> None:
        if not isinstance(url, str) or not url:
            return
        host = _guarded(_host_of(url), guard)
        if host and not any(f["url"] == url and f["where"] == where for f in flags):
            flags.append({"host": host, "url": url[:500], "where": where})

    for member in members:
        name = member.label or member.model
        for call in member.tool_calls or []:
            args = call.get("arguments") if isinstance(call, dict) else None
            if isinstance(args, dict):
                blocked = " (blocked)" if not call.get("ok", True) else ""
                check(args.get("url"), f"{name}: {call.get('name', 'tool')}{blocked}")
                query = str(args.get("query") or "")
                for word in query.split():
                    if "." in word and _guarded(_host_of(word), guard):
                        check(word, f"{name}: {call.get('name', 'tool')} query")
            for source in call.get("sources") or [] if isinstance(call, dict) else []:
                check(source.get("url") if isinstance(source, dict) else None, f"{name}: source")
        for source in member.sources or []:
            check(source.get("url") if isinstance(source, dict) else None, f"{name}: source")
    for source in run.sources or []:
        check(source.get("url") if isinstance(source, dict) else None, "run source")
    return flags


def looks_like_refusal(answer: str) -> bool:
    return len(answer.strip()) <= REFUSAL_MAX_CHARS and bool(REFUSAL_RE.match(answer.strip()))


def harvest(item: EvalItem, *, solo: bool, guard: list[str]) -> bool:
    """Fill *item* from its finished run. False when the run is not finished (still running)."""
    run = Run.objects.filter(pk=item.run_id).first() if item.run_id is not None else None
    if run is None:  # its conversation was deleted: ask again
        item.status, item.run_id, item.conversation_id = EvalItemStatus.PENDING, None, None
        item.save()
        return True
    if run.status == RunStatus.RUNNING:
        return False
    members = list(run.members.all())
    answer, kind, message = run.answer, run.error_kind, run.error_message
    if solo:
        member = members[0] if members else None
        answer = member.content if member is not None and member.status == "complete" else ""
        if member is not None and member.error_kind:
            kind, message = member.error_kind, member.error_message
    item.cost_usd = _answer_cost(run.pk)
    item.latency_ms = run.wall_ms()
    item.guard_flags = guard_flags(run, members, guard)
    if run.status == RunStatus.COMPLETE and answer.strip() and looks_like_refusal(answer):
        item.status, item.answer = EvalItemStatus.REFUSED, answer
        item.error = "The model declined to answer."
    elif run.status == RunStatus.COMPLETE and answer.strip():
        item.status, item.answer, item.error = EvalItemStatus.ANSWERED, answer, ""
    elif kind in REFUSAL_KINDS:
        item.status, item.error = EvalItemStatus.REFUSED, message or "The model refused to answer."
    elif run.status in (RunStatus.CANCELLED, RunStatus.INTERRUPTED):
        # Not an answer: asked again on the next run of the evaluation (what it cost stays spent).
        item.status, item.run_id, item.conversation_id = EvalItemStatus.PENDING, None, None
    else:
        item.status = EvalItemStatus.FAILED
        item.error = message or (run.analysis_error if not answer else "") or "The run ended without an answer."
    item.updated_at = timezone.now()
    item.save()
    return True


def _prepare(evaluation_id: int) -> tuple[Evaluation, list[EvalItem]]:
    """Mark the evaluation running and settle items a dead process left behind."""
    with transaction.atomic():
        evaluation = Evaluation.objects.select_for_update().get(pk=evaluation_id)
        evaluation.status, evaluation.stopped_reason = EvaluationStatus.RUNNING, ""
        evaluation.updated_at = timezone.now()
        evaluation.save(update_fields=["status", "stopped_reason", "updated_at"])
    ensure_items(evaluation)
    kinds = {c["key"]: c["kind"] for c in evaluation.configs}
    for item in EvalItem.objects.filter(evaluation=evaluation, status=EvalItemStatus.RUNNING):
        if item.run_id is None:
            item.status = EvalItemStatus.PENDING
            item.save(update_fields=["status"])
            continue
        stale = timezone.now() - stale_after()
        run = Run.objects.filter(pk=item.run_id).first()
        if run is not None and run.status == RunStatus.RUNNING and (run.heartbeat_at < stale or _dead(run.process_id)):
            mark_interrupted(Run.objects.filter(pk=run.pk))
        if not harvest(item, solo=kinds.get(item.config_key) == "solo", guard=evaluation.guard_hosts):
            raise EvaluationStopped("This evaluation is running in another process; wait for it or stop it there.")
    items = list(EvalItem.objects.filter(evaluation=evaluation).prefetch_related("judgements"))
    return evaluation, items


def _dead(process_id: str) -> bool:
    """A run's process on this host that no longer exists (a killed command)."""
    host, _, rest = (process_id or "").partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _finish(evaluation_id: int, reason: str | None) -> Evaluation:
    evaluation = Evaluation.objects.get(pk=evaluation_id)
    left = EvalItem.objects.filter(
        evaluation=evaluation, status__in=[EvalItemStatus.PENDING, EvalItemStatus.RUNNING]
    ).exists()
    judged = all(
        item.judgements.count() >= evaluation.passes
        for item in EvalItem.objects.filter(evaluation=evaluation, status=EvalItemStatus.ANSWERED)
    )
    if reason is None and not left and judged:
        evaluation.status, evaluation.stopped_reason = EvaluationStatus.COMPLETE, ""
    else:
        evaluation.status = EvaluationStatus.STOPPED
        evaluation.stopped_reason = reason or "Stopped before every task was answered and judged."
    evaluation.updated_at = timezone.now()
    evaluation.save(update_fields=["status", "stopped_reason", "updated_at"])
    return evaluation


def _started(item_id: int, run_id: Any, conversation_id: int) -> None:
    EvalItem.objects.filter(pk=item_id).update(
        status=EvalItemStatus.RUNNING, run_id=run_id, conversation_id=conversation_id, updated_at=timezone.now()
    )


def _record_judgement(
    *, item: EvalItem, user_id: int, pass_index: int, task: Task, judgement: Any, server_key: bool
) -> EvalJudgement | None:
    """The pass and its calls' ledger rows, in one transaction: paid calls are always counted."""
    calls = priced_calls([r.to_dict() for r in judgement.records])
    with transaction.atomic():
        rows = spend_record(
            user_id=user_id,
            run_id=item.run_id,
            conversation_id=item.conversation_id,
            turn_id=None,
            turn_index=None,
            uses_server_key=server_key,
            calls=calls,
        )
        cost = sum((r.cost_usd for r in rows), Decimal(0))
        if not judgement.verdicts:
            return None
        row, _ = EvalJudgement.objects.update_or_create(
            item=item,
            pass_index=pass_index,
            defaults={
                "verdicts": judgement.verdicts,
                "failures": judgement.failures,
                "score": scoring.task_score(task, judgement.verdicts),
                "section_scores": scoring.section_scores(task, judgement.verdicts),
                "cost_usd": cost,
            },
        )
        return row


def _spend_room(user: User, *, server_key: bool) -> Decimal | None:
    """What the user may still spend today; with the server's key, the server's cap counts too."""
    rooms = []
    limit = daily_limit(user=user)
    if limit is not None:
        rooms.append(limit - spent_today(user=user))
    cap = server_daily_limit() if server_key else None
    if cap is not None:
        rooms.append(cap - server_spent_today())
    return min(rooms) if rooms else None


def _judge_uses_server_key(user: User, model: str) -> bool:
    """Whether the judge's calls are paid with the server's key (the user has none of their own)."""
    try:
        provider, _ = build_registry().resolve(model)
    except ValueError:
        return False
    return not isinstance(keys.user_keys_decrypted(user=user).get(provider.name), str)


# --------------------------------------------------------------------------- the runner


class EvaluationRunner:
    """One run of an evaluation in this process. ``stop()`` ends it cleanly."""

    def __init__(self, evaluation_id: int, *, progress: Progress | None = None, judge_client: Any = None) -> None:
        self.evaluation_id = evaluation_id
        self.progress = progress
        self._judge_client = judge_client
        self._stop_reason: str | None = None
        self._stopping = asyncio.Event()  # stop now: runs in flight are cancelled
        self._draining = asyncio.Event()  # a limit: nothing new starts, what is in flight ends
        self.counts: dict[str, dict[str, int]] = {}

    def stop(self, reason: str = "Stopped by you. Run the evaluation again to continue.") -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
        self._stopping.set()
        self._draining.set()

    def drain(self, reason: str) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
        self._draining.set()

    @property
    def halted(self) -> bool:
        return self._draining.is_set()

    def _tick(self, key: str, what: str) -> None:
        self.counts.setdefault(key, {}).setdefault(what, 0)
        self.counts[key][what] += 1
        if self.progress is not None:
            self.progress({"config": key, "event": what, "counts": self.counts})

    async def run(self) -> Evaluation:
        try:
            evaluation, items = await in_db_thread(_prepare, self.evaluation_id)
        except EvaluationStopped as exc:
            raise EvaluationBusy(str(exc)) from None  # the other process owns its status
        self.evaluation = evaluation
        self.user: User = await in_db_thread(lambda: evaluation.user)
        self.tasks = {t["id"]: Task.from_dict(t) for t in evaluation.tasks}
        self.configs = {c["key"]: c for c in evaluation.configs}
        self.budget = _Budget(evaluation.max_cost_usd, await in_db_thread(evaluation_spent, evaluation.pk))
        client = self._judge_client or ChatClient(
            await in_db_thread(build_registry, user=self.user),
            limits=build_limits(),
            extra_secrets=known_secrets(),
            http=shared_http(),
        )
        self.judge = client
        self.judge_server_key = await in_db_thread(_judge_uses_server_key, self.user, evaluation.judge_model)
        queue: asyncio.Queue[EvalItem] = asyncio.Queue()
        for item in items:
            if item.task_id in self.tasks and item.config_key in self.configs:
                queue.put_nowait(item)
        workers = [asyncio.ensure_future(self._worker(queue)) for _ in range(max(1, evaluation.concurrency))]
        try:
            await asyncio.gather(*workers)
        except EvaluationStopped as exc:
            self.drain(str(exc))
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        return await in_db_thread(_finish, self.evaluation_id, self._stop_reason)

    async def _worker(self, queue: asyncio.Queue[EvalItem]) -> None:
        while not self.halted:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                await self._item(item)
            except EvaluationStopped as exc:
                self.drain(str(exc))
                return

    async def _item(self, item: EvalItem) -> None:
        task, config = self.tasks[item.task_id], self.configs[item.config_key]
        if item.status == EvalItemStatus.PENDING:
            await self._answer(item, task, config)
        if item.status == EvalItemStatus.ANSWERED:
            done = {j.pass_index for j in item.judgements.all()} if item.pk else set()
            for pass_index in range(self.evaluation.passes):
                if pass_index not in done and not self.halted:
                    await self._judge(item, task, pass_index)
        if not self.halted:
            self._tick(item.config_key, "done")

    async def _answer(self, item: EvalItem, task: Task, config: dict[str, Any]) -> None:
        from chat.evals.estimate import answer_range

        _, high = await in_db_thread(answer_range, config, task)  # a solo model: its member alone
        estimate = Decimal(str(high))
        self.budget.check(estimate)
        self.budget.held += estimate
        solo = config["kind"] == "solo"
        try:
            try:
                api_run = await self._start(task, config, solo=solo)
            except ApiError as exc:
                if exc.reason == "spend_limit":
                    raise EvaluationStopped(f"{exc.message} Run the evaluation again to continue.") from None
                item.status, item.error = EvalItemStatus.FAILED, exc.message
                await in_db_thread(item.save)
                self._tick(item.config_key, "failed")
                return
            item.run_id, item.conversation_id = api_run.run_id, api_run.conversation_id
            await in_db_thread(_started, item.pk, api_run.run_id, api_run.conversation_id)
            try:
                await self._until_done(api_run)
            except asyncio.CancelledError:
                api_run.cancel()
                raise
            await in_db_thread(harvest, item, solo=solo, guard=self.evaluation.guard_hosts)
            self.budget.spent += item.cost_usd
            self._tick(item.config_key, str(item.status))
        finally:
            self.budget.held -= estimate

    async def _start(self, task: Task, config: dict[str, Any], *, solo: bool) -> Any:
        """The item's run; while the user's concurrent runs are all taken (their own chats
        included), it waits for one to end."""
        while True:
            try:
                return await api_run_start(
                    user=self.user,
                    chosen=Chosen(model=f"eval/{config['key']}", config=config["config"]),
                    messages=[{"role": "user", "content": task.problem}],
                    source=ConversationSource.EVAL,
                    panel_only=solo,
                )
            except ApiError as exc:
                if exc.reason != "limit" or self._stopping.is_set():
                    raise
            await asyncio.sleep(START_RETRY_S)

    async def _until_done(self, api_run: Any) -> None:
        waiting = asyncio.ensure_future(api_run.wait())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not waiting.done():
                api_run.cancel()  # stop: the run ends as cancelled, what it spent is recorded
                await waiting
        finally:
            stopping.cancel()

    async def _judge(self, item: EvalItem, task: Task, pass_index: int) -> None:
        estimate = await in_db_thread(_judge_estimate, self.evaluation.judge_model, task, item.answer)
        self.budget.check(estimate)
        room = await in_db_thread(_spend_room, self.user, server_key=self.judge_server_key)
        if room is not None and room < estimate:
            raise EvaluationStopped(
                "Your daily spend limit is reached. Run the evaluation again tomorrow, or raise the limit."
            )
        self.budget.held += estimate
        try:
            judgement = await judge_answer(
                self.judge,
                ModelSpec(model=self.evaluation.judge_model),
                problem=task.problem,
                answer=item.answer,
                criteria=task.criteria,
            )
            row = await in_db_thread(
                _record_judgement,
                item=item,
                user_id=self.user.pk,
                pass_index=pass_index,
                task=task,
                judgement=judgement,
                server_key=self.judge_server_key,
            )
            if row is not None:
                self.budget.spent += row.cost_usd
            self._tick(item.config_key, "judged")
        finally:
            self.budget.held -= estimate


def _judge_estimate(model: str, task: Task, answer: str) -> Decimal:
    from chat.evals.estimate import judge_pass_cost

    return Decimal(str(judge_pass_cost(model, task, answer_chars=len(answer))))


async def evaluation_run(
    evaluation_id: int,
    *,
    progress: Progress | None = None,
    judge_client: Any = None,
    runner: EvaluationRunner | None = None,
) -> Evaluation:
    """Run (or resume) the evaluation to its end or to a limit."""
    started = time.monotonic()
    runner = runner or EvaluationRunner(evaluation_id, progress=progress, judge_client=judge_client)
    _RUNNING[evaluation_id] = runner
    try:
        return await runner.run()
    finally:
        _RUNNING.pop(evaluation_id, None)
        log.info("evaluation %s ran for %.1f s", evaluation_id, time.monotonic() - started)


# --------------------------------------------------------------------------- in the server process

_RUNNING: dict[int, EvaluationRunner] = {}
_TASKS: set[asyncio.Task[Any]] = set()


def evaluation_is_running_here(evaluation_id: int) -> bool:
    return evaluation_id in _RUNNING


def evaluation_start_in_background(*, evaluation: Evaluation) -> bool:
    """Start (or resume) *evaluation* in this process's event loop; False if it already runs here.
    Call from async code (the page's view)."""
    if evaluation.pk in _RUNNING:
        return False
    runner = _RUNNING[evaluation.pk] = EvaluationRunner(evaluation.pk)
    task = asyncio.get_running_loop().create_task(_in_background(evaluation.pk, runner))
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)
    return True


async def _in_background(evaluation_id: int, runner: EvaluationRunner) -> None:
    try:
        await evaluation_run(evaluation_id, runner=runner)
    except EvaluationBusy as exc:
        log.warning("evaluation %s not started here: %s", evaluation_id, exc)
    except Exception:
        log.exception("evaluation %s crashed; starting it again resumes it", evaluation_id)


def evaluation_stop(*, evaluation: Evaluation) -> bool:
    runner = _RUNNING.get(evaluation.pk)
    if runner is None:
        return False
    runner.stop()
    return True
