"""API runs: the API and MCP start a run through the run service like the chatroom does, then
hear its engine events in this process and read what it cost from the ledger.

Each request is a new conversation (marked API or MCP in the sidebar), so every API run can be
opened in the chatroom afterwards. The client's earlier messages (system prompts, earlier turns)
are stored on the turn as its context; the last user message is the prompt.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction

from chat.api.choose import Chosen
from chat.api.errors import ApiError, from_run_error, invalid
from chat.dbthread import in_db_thread
from chat.fusion import types as ev
from chat.fusion.types import Message, OuterRequest
from chat.models import Conversation, ConversationSource, Run, SpendEntry
from chat.runs import services
from chat.runs.checks import RunError
from chat.runs.live import ActiveRun
from chat.spend import daily_limit, spent_today


def split_messages(messages: list[Message], *, outer: bool = False) -> tuple[list[Message], str]:
    """(context, prompt): the prompt is the last message, which must be the user's (with an outer
    model, the last user message: the client's tool round trips may follow it)."""
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    last = users[-1] if users else -1
    if last < 0 or (not outer and last != len(messages) - 1):
        raise invalid("The last message must be the user's: it is the question the panel answers.", field="messages")
    prompt = str(messages[last].get("content") or "")
    if not prompt.strip():
        raise invalid("The last user message is empty.", field=f"messages.{last}.content")
    return [dict(m) for m in messages[:last]], prompt


def _start_sync(
    *, user: User, chosen: Chosen, prompt: str, context: list[Message], source: str, client_run_id: str
) -> tuple[Run, Any, dict[str, Any]]:
    """A new conversation and its first run, in one transaction: a refused start leaves nothing."""
    with transaction.atomic():
        conversation = Conversation.objects.create(
            user=user, source=source, preset=chosen.preset, builtin_preset=chosen.builtin_key
        )
        return services._start_and_read(
            user=user,
            conversation_id=conversation.pk,
            client_run_id=client_run_id,
            prompt=prompt,
            panel_data=chosen.config,
            follow_up_mode=None,
            context=context,
        )


@dataclass
class Outcome:
    """What the run's events said, gathered for the final response."""

    responses: dict[int, dict[str, Any]] = field(default_factory=dict)  # slot → {model, content}
    failed: dict[int, dict[str, Any]] = field(default_factory=dict)  # slot → {model, error, status_code}
    analysis: dict[str, Any] | None = None
    analysis_error: str | None = None
    answer: str = ""
    completed: ev.RunCompleted | None = None
    run_failed: ev.RunFailed | None = None
    fused: bool = False  # the panel was asked (an outer model may answer without it)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # the client's tools, to run

    def take(self, event: ev.PipelineEvent) -> None:
        if isinstance(event, ev.PanelAdded):
            self.fused = True
        elif isinstance(event, ev.FinalStarted):
            self.answer = ""  # a fallback writer, or the outer model's next call, starts over
        elif isinstance(event, ev.OuterToolCalls):
            self.tool_calls = event.calls
        elif isinstance(event, ev.PanelCompleted):
            self.responses[event.slot] = {"model": event.model, "content": event.content}
            self.failed.pop(event.slot, None)
        elif isinstance(event, ev.PanelFailed):
            failure: dict[str, Any] = {"model": event.model, "error": event.error.message}
            if event.error.status_code is not None:
                failure["status_code"] = event.error.status_code
            self.failed[event.slot] = failure
        elif isinstance(event, ev.AnalysisCompleted):
            self.analysis = event.analysis
        elif isinstance(event, ev.AnalysisDegraded):
            self.analysis_error = event.reason
        elif isinstance(event, ev.FinalDelta):
            self.answer += event.delta
        elif isinstance(event, ev.RunCompleted):
            self.completed, self.answer = event, event.answer
        elif isinstance(event, ev.RunFailed):
            self.run_failed = event

    @property
    def failure_reason(self) -> str | None:
        return self.run_failed.kind if self.run_failed is not None else None


@dataclass
class Bill:
    """What a run cost, from the ledger: every call that reached a provider."""

    calls: list[dict[str, Any]]
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cost_usd: Decimal
    estimated: bool

    def usage(self) -> dict[str, Any]:
        """OpenRouter's ChatUsage: ``cost`` is the sum of every inner call."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "cost": float(self.cost_usd),
            "is_byok": False,
            "cost_estimated": self.estimated,
        }


def run_bill(*, run_id: uuid.UUID) -> Bill:
    entries = list(SpendEntry.objects.filter(run_id=run_id).order_by("created_at", "pk"))
    calls = [
        {
            "role": e.role,
            "model": e.model,
            **({"slot": e.slot} if e.slot is not None else {}),
            "status": e.status,
            "prompt_tokens": e.prompt_tokens,
            "completion_tokens": e.completion_tokens,
            "reasoning_tokens": e.reasoning_tokens,
            "cost": float(e.cost_usd),
            "estimated": e.estimated,
            "ttft_ms": e.ttft_ms,
            "duration_ms": e.duration_ms,
        }
        for e in entries
    ]
    return Bill(
        calls=calls,
        prompt_tokens=sum(e.prompt_tokens for e in entries),
        completion_tokens=sum(e.completion_tokens for e in entries),
        reasoning_tokens=sum(e.reasoning_tokens for e in entries),
        cost_usd=sum((e.cost_usd for e in entries), Decimal(0)),
        estimated=any(e.estimated for e in entries),
    )


class ApiRun:
    """One API request's run: its events as they come (``events``), then its bill."""

    def __init__(self, *, run: Run, chosen: Chosen, outer: bool = False) -> None:
        self.run_id: uuid.UUID = run.pk
        self.outer = outer
        self.conversation_id = run.conversation_id
        self.created = int(run.created_at.timestamp())
        self.chosen = chosen
        self.panel = [m["model"] for m in (run.config or {}).get("members", [])]
        self.analyst = (run.config or {}).get("analyst", {}).get("model", "")
        self.writer = run.writer_model
        self.queue: asyncio.Queue[ev.PipelineEvent | None] = asyncio.Queue()
        self.outcome = Outcome()
        self.active: ActiveRun | None = None
        self.finished = False

    def hear(self, event: ev.PipelineEvent | None) -> None:
        self.queue.put_nowait(event)

    async def events(self, *, keepalive_s: float | None = None) -> Any:
        """Engine events until the run's final write is done; ``None`` every *keepalive_s* of
        silence (a keep-alive for proxies)."""
        while True:
            try:
                event = await asyncio.wait_for(self.queue.get(), keepalive_s) if keepalive_s else await self.queue.get()
            except TimeoutError:
                yield None
                continue
            if event is None:
                self.finished = True
                return
            self.outcome.take(event)
            yield event

    def cancel(self) -> None:
        """The client went away: stop the run, which closes every upstream stream."""
        if self.active is not None and not self.finished:
            self.active.fusion.cancel()

    async def wait(self) -> None:
        async for _ in self.events():
            pass

    async def bill(self) -> Bill:
        return await in_db_thread(run_bill, run_id=self.run_id)


async def api_run_start(
    *,
    user: User,
    chosen: Chosen,
    messages: list[Message],
    source: str = ConversationSource.API,
    outer: OuterRequest | None = None,
    panel_only: bool = False,
) -> ApiRun:
    """Start the fusion *chosen* names for *messages*; ApiError when it is refused (nothing is
    paid or stored then). With *outer*, the writer is an outer model that calls fusion if it
    wants to (the ``openrouter:fusion`` server tool, chat.fusion.outer). *panel_only*: the panel
    answers and nothing follows (an evaluation's solo model)."""
    context, prompt = split_messages(messages, outer=outer is not None)
    starting = asyncio.ensure_future(_start(user, chosen, prompt, context, source, outer, panel_only))
    try:
        # Shielded: a client that leaves while the run's rows are being written must not leave a
        # written run that nobody drives (it would hold its reservation until the sweep).
        return await asyncio.shield(starting)
    except asyncio.CancelledError:
        starting.add_done_callback(_cancel_started)
        raise


def _cancel_started(task: asyncio.Future[ApiRun]) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().cancel()


async def _start(
    user: User,
    chosen: Chosen,
    prompt: str,
    context: list[Message],
    source: str,
    outer: OuterRequest | None,
    panel_only: bool,
) -> ApiRun:
    try:
        run, request, inputs = await in_db_thread(
            _start_sync,
            user=user,
            chosen=chosen,
            prompt=prompt,
            context=context,
            source=source,
            client_run_id=f"api-{uuid.uuid4()}",
        )
    except RunError as exc:
        raise await _refusal(user, exc) from None
    api_run = ApiRun(run=run, chosen=chosen, outer=outer is not None)
    if outer is not None:
        request = dataclasses.replace(request, outer=outer)
    frame = services._run_started_frame(run, request)
    extra = {"panel_only": True} if panel_only else {}  # a solo answer: the member, nothing after it
    api_run.active = await services._start_active(run, request, frame, listener=api_run.hear, **inputs, **extra)
    return api_run


async def _refusal(user: User, exc: RunError) -> ApiError:
    if exc.code == "spend_limit":
        limit, spent = await in_db_thread(lambda: (daily_limit(user=user), spent_today(user=user)))
        left = None if limit is None else max(Decimal(0), limit - spent)
        return from_run_error(exc, left_usd=None if left is None else float(left))
    return from_run_error(exc)
