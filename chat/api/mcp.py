"""The MCP server: one ``fusion`` tool, over streamable HTTP at ``/mcp`` and over stdio.

Over HTTP a request acts for the user of its API token (``Authorization: Bearer fsn_…``, the
HTTP API's check and rate limit); over stdio (``manage.py mcp --user NAME``) for the named user.
The tool starts a run through the run service like every other door (limits, spend, keys and
storage are the same, and the run opens in the chatroom afterwards), reports each stage as an
MCP progress notification, and cancels the run, closing its upstream streams, when the request
is cancelled.

HTTP is served statelessly: a 2026-07-28 client sends each request as a POST of its own, any
process can answer it, and cancelling is closing that POST's response stream. Clients of the
earlier, handshake-era revisions are served statelessly too (``stateless_http``), so a
deployment of several Daphne processes needs no sticky sessions; their progress arrives on the
POST's SSE response, but a ``notifications/cancelled`` they POST separately reaches no one: only
closing the stream cancels a run there.
"""

from __future__ import annotations

import asyncio
import contextvars
import io
import logging
import weakref
from dataclasses import dataclass, field
from typing import Annotated, Any

from asgiref.typing import ASGIReceiveCallable, ASGISendCallable, Scope
from django.contrib.auth.models import User
from django.core.exceptions import DisallowedHost
from django.core.handlers.asgi import ASGIRequest
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.responses import JSONResponse

from chat.api import shapes
from chat.api.auth import api_authenticate, refuse_inner_calls
from chat.api.choose import FUSION, Chosen, choose
from chat.api.errors import ApiError
from chat.api.runs import ApiRun, api_run_start
from chat.dbthread import in_db_thread
from chat.fusion import types as ev
from chat.fusion.types import MAX_PANEL_MEMBERS
from chat.models import ConversationSource
from chat.panels import MAX_TOOL_CALLS_LIMIT
from chat.runs import manager
from chat.views.api import MAX_BODY_BYTES
from chat.ws_security import origin_allowed

log = logging.getLogger(__name__)

PATH = "/mcp"

# Who the current MCP request acts for: set by the HTTP app per request, by serve_stdio once.
current_user: contextvars.ContextVar[User | None] = contextvars.ContextVar("mcp_user", default=None)

server: MCPServer[Any] = MCPServer(
    "fusion",
    title="Fusion chatroom",
    instructions=(
        "The fusion tool asks a panel of language models the same question, has an analyst compare "
        "their answers (consensus, contradictions, unique insights, blind spots), and returns a writer "
        "model's fused answer. It costs about one model call per member plus two, and takes two to "
        "three times as long as one call: use it for questions where a second opinion pays off."
    ),
)

DESCRIPTION = f"""\
Ask a panel of language models one question and get one fused answer.

The panel members answer concurrently, an analyst compares their answers, and a writer fuses them \
into the answer returned as text. The structured result also has the analysis (consensus, \
contradictions, partial_coverage, unique_insights, blind_spots), each member's response, the \
members that failed, the sources the members used, the usage (cost in USD), and the run's \
conversation_url in the chatroom. Progress is reported per stage.

Choosing the panel (all optional; without any, the user's default preset or the server's default):
- preset: a built-in preset key (such as "quality" or "fast") or the slug of one of the user's \
presets; "fusion/<preset>" works too.
- analysis_models: the panel's model ids (1 to {MAX_PANEL_MEMBERS}), e.g. ["openai/gpt-5.1", \
"anthropic/claude-opus-4.5"]; replaces the preset's members.
- analyst, writer: the model ids that compare and that write; each replaces the preset's.
Research (over the preset's settings): web_tools lets members search and fetch web pages, \
max_tool_calls caps each member's tool calls (1 to {MAX_TOOL_CALLS_LIMIT}), excluded_domains \
keeps domains out of search results.
"""


class FusionResult(BaseModel):
    """The ``structuredContent`` of a fusion call: OpenRouter's fusion item, and what it cost."""

    answer: str = Field(description="The fused answer (also the text content).")
    status: str = Field(description="completed or failed")
    analysis: dict[str, Any] | None = Field(
        default=None,
        description="consensus, contradictions, partial_coverage, unique_insights, blind_spots; "
        "null when the analysis failed (analysis_error says why) or the run failed",
    )
    analysis_error: str | None = None
    responses: list[dict[str, Any]] = Field(description="Each member's answer: {model, content}.")
    failed_models: list[dict[str, Any]] = Field(description="Members that failed: {model, error, status_code}.")
    sources: list[dict[str, Any]] = Field(description="Pages the members searched, fetched or cited: {url, title}.")
    failure_reason: str | None = Field(default=None, description="Why the run failed, e.g. all_panels_failed.")
    usage: dict[str, Any] = Field(description="Tokens and cost (USD) of every call of the run.")
    run_id: str
    conversation_url: str = Field(description="Where the run opens in the chatroom (a path on this server).")


@dataclass
class PanelChoice:
    """The tool's panel arguments: a preset, then the inline fields over it."""

    preset: str | None = None
    analysis_models: list[str] | None = None
    analyst: str | None = None
    writer: str | None = None
    research: dict[str, Any] = field(default_factory=dict)


def chosen_for(user: User, panel: PanelChoice) -> Chosen:
    """The panel config this call runs (validated by the run start, as the HTTP API's is)."""
    preset = (panel.preset or "").strip().removeprefix(FUSION + "/")
    chosen = choose(user=user, model=f"{FUSION}/{preset}" if preset else FUSION)
    config = chosen.config
    if panel.analysis_models is not None:
        config["members"] = [{"model": m} for m in panel.analysis_models]
    if panel.analyst:
        config["analyst"] = {"model": panel.analyst}
    if panel.writer:
        config["writer"] = {"model": panel.writer}
    if panel.research:
        config["research"] = {**(config.get("research") or {}), **panel.research}
    return chosen


class Progress:
    """A run's stages as MCP progress notifications: a step per member that answered or failed,
    then the analysis started and done, the writing started, and done."""

    def __init__(self, ctx: Context[Any, Any], run: ApiRun) -> None:
        self.ctx = ctx
        self.step = 0
        self.total = len(run.panel) + 4
        self.answered = 0

    async def report(self, message: str, *, advance: bool = True) -> None:
        if advance:
            self.step += 1
            self.total = max(self.total, self.step)
        await self.ctx.report_progress(self.step, self.total, message)

    async def on(self, event: ev.PipelineEvent) -> None:
        if isinstance(event, ev.PanelCompleted):
            self.answered += 1
            await self.report(f"{event.model} answered")
        elif isinstance(event, ev.PanelFailed):
            await self.report(f"{event.model} failed: {event.error.message}")
        elif isinstance(event, ev.AnalysisStarted):
            answers = "1 answer" if self.answered == 1 else f"{self.answered} answers"
            await self.report(f"{event.analyst_model} is comparing {answers}")
        elif isinstance(event, ev.AnalysisCompleted):
            await self.report("Analysis done")
        elif isinstance(event, ev.AnalysisDegraded):
            await self.report(f"No analysis: {event.reason}")
        elif isinstance(event, ev.FinalStarted):
            await self.report(f"{event.writer_model} is writing the fused answer")
        elif isinstance(event, ev.RunCompleted):
            await self.report("Done")


def _error(message: str, structured: dict[str, Any] | None = None) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=message)], structured_content=structured, is_error=True
    )


async def _result(run: ApiRun) -> dict[str, Any]:
    outcome = run.outcome
    item = shapes.fusion_item(run, outcome)
    bill = await run.bill()
    return FusionResult(
        answer=outcome.answer if outcome.run_failed is None else "",
        status=item["status"],
        analysis=outcome.analysis,
        analysis_error=outcome.analysis_error,
        responses=item["responses"],
        failed_models=item.get("failed_models", []),
        sources=item.get("sources", []),
        failure_reason=outcome.failure_reason,
        usage=bill.usage(),
        run_id=str(run.run_id),
        conversation_url=f"/c/{run.conversation_id}/",
    ).model_dump(mode="json")


@server.tool(
    name="fusion",
    title="Fusion: ask a panel of models",
    description=DESCRIPTION,
    annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=True),
)
async def fusion(
    question: Annotated[str, Field(min_length=1, description="The question the panel answers.")],
    ctx: Context[Any, Any],
    preset: Annotated[
        str | None, Field(description="A built-in preset key or the slug of one of your presets.")
    ] = None,
    analysis_models: Annotated[
        list[str] | None,
        Field(min_length=1, max_length=MAX_PANEL_MEMBERS, description="The panel's model ids."),
    ] = None,
    analyst: Annotated[str | None, Field(description="The model id that compares the answers.")] = None,
    writer: Annotated[str | None, Field(description="The model id that writes the fused answer.")] = None,
    web_tools: Annotated[bool | None, Field(description="Let the members search and fetch web pages.")] = None,
    max_tool_calls: Annotated[
        int | None, Field(ge=1, le=MAX_TOOL_CALLS_LIMIT, description="Tool calls per member, at most.")
    ] = None,
    excluded_domains: Annotated[
        list[str] | None, Field(description="Domains kept out of web search results, e.g. example.com.")
    ] = None,
) -> Annotated[CallToolResult, FusionResult]:
    user = current_user.get()
    if user is None:
        raise RuntimeError("An MCP request reached the fusion tool without a user.")
    research = {"web_tools": web_tools, "max_tool_calls": max_tool_calls, "excluded_domains": excluded_domains}
    panel = PanelChoice(
        preset=preset,
        analysis_models=analysis_models,
        analyst=analyst,
        writer=writer,
        research={k: v for k, v in research.items() if v is not None},
    )
    try:
        chosen = await in_db_thread(chosen_for, user, panel)
        run = await api_run_start(
            user=user,
            chosen=chosen,
            messages=[{"role": "user", "content": question}],
            source=ConversationSource.MCP,
        )
    except ApiError as exc:  # refused before anything was paid
        return _error(exc.message)
    try:
        progress = Progress(ctx, run)
        await progress.report(f"Asking {', '.join(run.panel)}", advance=False)
        async for event in run.events():
            await progress.on(event)
    finally:
        run.cancel()  # the request was cancelled (or its stream broke): stop the run and its upstreams
    result = await _result(run)
    if run.outcome.run_failed is not None:  # its message names each failed member and why
        return _error(run.outcome.run_failed.message, result)
    return CallToolResult(content=[TextContent(type="text", text=run.outcome.answer)], structured_content=result)


# --------------------------------------------------------------------------- stdio


async def serve_stdio(*, user: User) -> None:
    """The server over this process's stdin and stdout, acting for *user* (``manage.py mcp``)."""
    current_user.set(user)
    manager.ensure_sweeper()
    try:
        await server.run_stdio_async()
    finally:
        await manager.shutdown()  # stdin closed mid-run: stop the runs and let their final writes finish


# --------------------------------------------------------------------------- streamable HTTP


def claims(path: str) -> bool:
    """Whether fusionsite.asgi routes *path* here."""
    return path == PATH or path.startswith(PATH + "/")


@dataclass
class _Running:
    """The SDK's app on one event loop, and the task that keeps its session manager running (held
    here: the loop itself keeps only a weak reference to a task)."""

    app: Starlette
    ready: asyncio.Event
    task: asyncio.Task[None] | None = None


# Daphne has no ASGI lifespan: the session manager starts with the first request of each event
# loop (a test starts fresh loops), in a task of its own that runs until the loop ends.
_running: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Running] = weakref.WeakKeyDictionary()


async def _keep_running(session_manager: StreamableHTTPSessionManager, ready: asyncio.Event) -> None:
    try:
        async with session_manager.run():
            ready.set()
            await asyncio.Event().wait()
    finally:
        ready.set()  # a manager that failed to start fails its requests rather than hanging them


async def _sdk_app() -> Starlette:
    loop = asyncio.get_running_loop()
    running = _running.get(loop)
    if running is None:
        app = server.streamable_http_app(
            streamable_http_path=PATH,
            stateless_http=True,
            max_request_body_size=MAX_BODY_BYTES,
            # Host and Origin are checked in http_app by the site's own rules (Django's
            # ALLOWED_HOSTS, wildcards included, and the websockets' Origin rule), which the SDK's
            # exact-match lists cannot express; by default it would allow only 127.0.0.1 and localhost.
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        running = _running[loop] = _Running(app=app, ready=asyncio.Event())
        # A context of its own: the manager's task must not carry the first request's user.
        running.task = loop.create_task(
            _keep_running(server.session_manager, running.ready),
            name="mcp-session-manager",
            context=contextvars.Context(),
        )
    await running.ready.wait()
    return running.app


async def http_app(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    """``/mcp``: the allowed hosts and origins, the API token, then the SDK's streamable HTTP."""
    request = ASGIRequest(scope, io.BytesIO())  # the headers only: the SDK reads the body
    try:
        try:
            request.get_host()
        except DisallowedHost:
            raise ApiError(400, "bad_host", "This host name is not one this server answers to.") from None
        if request.headers.get("Origin") and not origin_allowed(dict(scope)):
            raise ApiError(403, "bad_origin", "Requests from this web page's origin are not accepted.")
        refuse_inner_calls(request)
        token = await api_authenticate(request)
    except ApiError as exc:
        headers = {**exc.headers(), **({"WWW-Authenticate": "Bearer"} if exc.status == 401 else {})}
        await JSONResponse(exc.body(), status_code=exc.status, headers=headers)(scope, receive, send)  # type: ignore[arg-type]
        return
    app = await _sdk_app()
    reset = current_user.set(token.user)
    try:
        await app(scope, receive, send)  # type: ignore[arg-type]
    finally:
        current_user.reset(reset)
