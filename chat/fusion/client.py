"""The one place that talks to LLM providers: OpenAI-compatible chat completions over httpx.

``ChatClient.stream()`` is an async generator of typed events (``types.ClientEvent``). It never
raises for provider or network trouble: it ends with exactly one terminal event, ``Finish`` or
``StreamError``, and a ``UsageReport`` just before it when the provider reported usage.

Limits (``types.Limits``) are enforced separately, with asyncio deadlines around every read
rather than httpx's read timeout, because keep-alive comments (``: OPENROUTER PROCESSING``)
arrive as bytes and would otherwise count as progress:

* ``connect`` — TCP/TLS connect (httpx);
* ``first_token`` — request sent → first content, reasoning or tool-call token;
* ``idle`` — gap between two such tokens; comments and usage-only chunks do not reset it;
* ``total`` — the whole call, retries and back-off included.

Retries happen only while nothing has reached the caller: 429 (honouring Retry-After up to
``max_retry_after``; a longer wait is reported rather than slept), 502/503/504, an error chunk
with those codes, and dropped connections. Never 400/401/402/403/404.

Consume ``stream()`` inside ``contextlib.aclosing`` (or call ``aclose()``): closing the generator
closes the HTTP connection at once, so the provider stops generating, and billing.

Output is capped at ``limits.max_output_chars`` characters per call (content plus tool-call
arguments): the delta that passes the cap is cut so exactly the cap is yielded, the HTTP stream is
closed at once, and the call ends with ``Finish("truncated", truncated_at=cap)``. Reasoning is
capped at the same number of characters; reasoning past it is dropped, the call goes on.

Error text that may reach a user is scrubbed of every key of the registry, of the
``extra_secrets`` the client was given (the process's other keys), and of bearer tokens.

Owns every HTTP request to an LLM provider (``sse`` parses the stream). Imports httpx and the
engine's ``types``, ``providers`` and ``sse``: no Django, no pipeline module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from chat.fusion.providers import ProviderRegistry, UnknownProvider
from chat.fusion.scrub import Scrubber, scrubber_for
from chat.fusion.sse import KeepAlive, SSEDecoder
from chat.fusion.transport import new_http_client
from chat.fusion.wire import (
    RETRYABLE_STATUS,
    _int,
    error_kind,
    parse_citations,
    parse_retry_after,
    parse_server_tool_use,
    parse_usage,
)
from chat.fusion.types import (
    ERROR_MESSAGES,
    TRUNCATED,
    ClientEvent,
    Completion,
    ContentDelta,
    Finish,
    Limits,
    Message,
    ModelSpec,
    Provider,
    ProviderError,
    ReasoningDelta,
    SourcesReport,
    StreamError,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageReport,
    merge_tool_call,
    ms,
)

__all__ = [
    "ChatClient",
    "Completion",
    "error_kind",
    "parse_citations",
    "parse_retry_after",
    "parse_server_tool_use",
    "parse_usage",
]

# Every call this client makes carries it: a server that is itself a fusion API (this one, or a
# provider configured to point back at it) refuses to start a fusion for such a request.
DEPTH_HEADER = "X-Fusion-Depth"

_MAX_ERROR_BODY = 64 * 1024
# After a stream's [DONE], what is left of its body (the chunked encoding's last chunk, at most
# this much, within this long) is read in the background; then the connection is reused.
_REST_BYTES = 64 * 1024
_REST_S = 10.0
_finishing: set[asyncio.Task[None]] = set()
_MAX_DETAIL = 300


def _error(
    kind: str, detail: str = "", *, scrub: Scrubber, status: int | None = None, retry_after: float | None = None
) -> ProviderError:
    detail = scrub(" ".join(detail.split()))
    if len(detail) > _MAX_DETAIL:
        detail = detail[: _MAX_DETAIL - 1] + "…"
    message = f"{ERROR_MESSAGES[kind]} {detail}".strip()
    return ProviderError(kind=kind, message=message, status_code=status, retry_after=retry_after)


# =========================================================================== call state


@dataclass
class _Call:
    """Everything one stream() call accumulates, across its attempts."""

    started: float
    total_deadline: float
    cap: int | None = None  # Limits.max_output_chars (None: no cap)
    sent: float = 0.0  # when the current attempt's request went out
    text: list[str] = field(default_factory=list)
    first_token_at: float | None = None
    last_token_at: float | None = None
    tool_calls: dict[int, ToolCall] = field(default_factory=dict)
    usage: Usage | None = None
    server_tool_use: dict[str, int] | None = None  # OpenRouter's usage.server_tool_use
    malformed: int = 0
    output_chars: int = 0  # content + tool-call arguments yielded, counted against the cap
    reasoning_chars: int = 0
    truncated_at: int | None = None  # set once the output passed the cap: the stream must close
    # Per attempt:
    finish_reason: str | None = None
    done: bool = False
    error: ProviderError | None = None
    body_handed_off: bool = False  # the response's rest is read (and it is closed) by _finish_body

    @property
    def progressed(self) -> bool:
        return self.first_token_at is not None

    def new_attempt(self, now: float) -> None:
        self.sent = now
        self.finish_reason = None
        self.done = False
        self.error = None
        self.body_handed_off = False

    def next_deadline(self, limits: Limits) -> float:
        """``read_deadline``'s instant alone (no message built)."""
        start = self.sent + limits.first_token if self.last_token_at is None else self.last_token_at + limits.idle
        return min(start, self.total_deadline)

    def read_deadline(self, limits: Limits) -> tuple[float, str]:
        """The instant the next read must complete by, and what it means if it does not."""
        if self.last_token_at is None:
            deadline, why = self.sent + limits.first_token, f"No first token within {limits.first_token:g} s."
        else:
            deadline, why = self.last_token_at + limits.idle, f"No new output for {limits.idle:g} s."
        if self.total_deadline <= deadline:
            return self.total_deadline, f"The call hit its total limit of {limits.total:g} s."
        return deadline, why

    def take_delta(self, delta: dict[str, Any], now: float) -> list[ClientEvent]:
        events: list[ClientEvent] = []
        reasoning = _reasoning_text(delta)
        progressed = bool(reasoning)  # reasoning past its cap is dropped, but it is still progress
        if reasoning and self.cap:
            reasoning = reasoning[: max(0, self.cap - self.reasoning_chars)]
        if reasoning:
            self.reasoning_chars += len(reasoning)
            events.append(ReasoningDelta(reasoning))
        content = delta.get("content")
        if isinstance(content, str) and content:
            progressed = True
            content = self._fit(content)
            if content:
                self.text.append(content)
                events.append(ContentDelta(content))
        for raw in delta.get("tool_calls") or []:
            if isinstance(raw, dict) and self.truncated_at is None:
                progressed = True
                events.append(self._take_tool_fragment(raw))
        if progressed:
            self.first_token_at = self.first_token_at or now
            self.last_token_at = now
        citations = parse_citations(delta.get("annotations"))
        if citations:  # server-side web tools cite their pages; not progress by itself
            events.append(SourcesReport(citations=citations))
        return events

    def _fit(self, text: str) -> str:
        """*text*, cut so the call's output does not pass the cap (which then marks it truncated)."""
        if not self.cap:
            return text
        room = max(0, self.cap - self.output_chars)
        if len(text) > room:
            text, self.truncated_at = text[:room], self.cap
        self.output_chars += len(text)
        return text

    def _take_tool_fragment(self, raw: dict[str, Any]) -> ToolCallDelta:
        function = raw.get("function") or {}
        event = ToolCallDelta(
            index=_int(raw.get("index")),
            id=raw.get("id"),
            name=function.get("name"),
            arguments=self._fit(function.get("arguments") or ""),
        )
        merge_tool_call(self.tool_calls, event)
        return event

    def terminal_events(self) -> list[ClientEvent]:
        events: list[ClientEvent] = (
            [SourcesReport(server_tool_use=self.server_tool_use)] if self.server_tool_use else []
        )
        events += [UsageReport(self.usage)] if self.usage else []
        if self.truncated_at is not None:  # the text up to the cap is the answer
            events.append(Finish(TRUNCATED, malformed_chunks=self.malformed, truncated_at=self.truncated_at))
            return events
        error = self.error
        if error is None and not self.text and not self.tool_calls:
            kind = "moderation" if self.finish_reason == "content_filter" else "empty"
            error = ProviderError(kind=kind, message=ERROR_MESSAGES[kind])
        if error is not None:
            events.append(StreamError(error, partial_text="".join(self.text), malformed_chunks=self.malformed))
        else:
            events.append(Finish(self.finish_reason or "stop", malformed_chunks=self.malformed))
        return events


def _reasoning_text(delta: dict[str, Any]) -> str:
    # OpenRouter sends the same text in both fields; take reasoning_details only when alone.
    for key in ("reasoning", "reasoning_content"):
        value = delta.get(key)
        if isinstance(value, str) and value:
            return value
    parts = []
    for detail in delta.get("reasoning_details") or []:
        if not isinstance(detail, dict):
            continue
        if detail.get("type") == "reasoning.text" and isinstance(detail.get("text"), str):
            parts.append(detail["text"])
        elif detail.get("type") == "reasoning.summary" and isinstance(detail.get("summary"), str):
            parts.append(detail["summary"])
    return "".join(parts)


# =========================================================================== the client


class _ReadWatch:
    """The deadline of a stream's reads (first token, idle, total: ``_Call.read_deadline``).

    One timer per call instead of a timeout context per read: a read of a few bytes happens
    hundreds of times a second per process, and ``asyncio.timeout`` costs a task lookup, a
    timer and a context per read. The timer re-arms itself at the current deadline (which moves
    with every token) and cancels the task only while it waits in ``read``; that read then raises
    ``TimeoutError`` with the reason.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, call: _Call, limits: Limits) -> None:
        self.loop, self.call, self.limits = loop, call, limits
        self.task = asyncio.current_task()
        self.reading = False
        self.expired: str | None = None
        self.armed_at = call.next_deadline(limits)
        self.timer: asyncio.TimerHandle | None = loop.call_at(self.armed_at, self._check)

    def _arm(self, deadline: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.armed_at = deadline
        self.timer = self.loop.call_at(deadline, self._check)

    def _check(self) -> None:
        self.timer = None
        deadline, why = self.call.read_deadline(self.limits)
        if self.loop.time() < deadline:
            self._arm(deadline)
        elif not self.reading:  # past it, but between reads: the next read times out at once
            self.expired = why
        elif self.task is not None:
            self.expired = why
            self.task.cancel()

    async def read(self, chunks: Any) -> bytes:
        if self.expired is None and self.timer is not None:
            deadline = self.call.next_deadline(self.limits)
            if deadline < self.armed_at:  # the first token came: the idle limit is sooner
                self._arm(deadline)
        if self.expired is not None:
            raise TimeoutError(self.expired)
        self.reading = True
        try:
            return await anext(chunks)
        except asyncio.CancelledError:
            if self.expired is not None and self.task is not None and self.task.uncancel() == 0:
                raise TimeoutError(self.expired) from None
            raise
        finally:
            self.reading = False

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.task = None  # a cancelled task's traceback holds the reading frame, and so this watch


class ChatClient:
    def __init__(
        self,
        registry: ProviderRegistry,
        *,
        limits: Limits = Limits(),
        http: httpx.AsyncClient | None = None,
        extra_secrets: Iterable[str] = (),
    ) -> None:
        """``extra_secrets``: keys the process knows besides the registry's (server keys, other
        providers' keys, search API keys); provider error text is scrubbed of them too."""
        self.registry = registry
        self.limits = limits
        self._extra_secrets = tuple(s for s in extra_secrets if s)
        self._http = http or new_http_client()
        self._owns_http = http is None

    def __repr__(self) -> str:
        return f"ChatClient(registry={self.registry!r}, limits={self.limits!r})"

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ----------------------------------------------------------------------- public API

    async def stream(
        self,
        spec: ModelSpec,
        messages: list[Message],
        *,
        response_format: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        limits: Limits | None = None,
    ) -> AsyncGenerator[ClientEvent, None]:
        limits = limits or self.limits
        scrub = scrubber_for(tuple(sorted({*self.registry.secrets(), *self._extra_secrets})))
        try:
            provider, model_id = self.registry.resolve(spec.model)
        except UnknownProvider as exc:
            yield StreamError(_error("model_not_found", str(exc), scrub=scrub))
            return
        try:
            request = self._build_request(
                provider, model_id, spec, messages, response_format, tools, tool_choice, limits
            )
        except httpx.InvalidURL:
            yield StreamError(_error("network", f"The base URL of provider {provider.name!r} is invalid.", scrub=scrub))
            return
        loop = asyncio.get_running_loop()
        call = _Call(
            started=loop.time(), total_deadline=loop.time() + limits.total, cap=limits.max_output_chars or None
        )
        attempt = 0
        while True:
            call.new_attempt(loop.time())
            # aclosing: if our caller closes us mid-attempt, the response is closed right away.
            async with contextlib.aclosing(self._attempt(request, call, limits, scrub)) as events:
                async for event in events:
                    yield event
            delay = self._retry_delay(call, attempt, limits, loop.time())
            if delay is None:
                break
            await asyncio.sleep(delay)
            attempt += 1
        for event in call.terminal_events():
            yield event

    async def complete(
        self,
        spec: ModelSpec,
        messages: list[Message],
        *,
        response_format: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        limits: Limits | None = None,
    ) -> Completion:
        """The whole answer at once, built on stream() (same limits, retries and errors)."""
        started = time.monotonic()
        result = Completion()
        text: list[str] = []
        reasoning: list[str] = []
        tool_calls: dict[int, ToolCall] = {}
        events = self.stream(
            spec, messages, response_format=response_format, tools=tools, tool_choice=tool_choice, limits=limits
        )
        async with contextlib.aclosing(events):
            async for event in events:
                if isinstance(event, (ContentDelta, ReasoningDelta, ToolCallDelta)) and result.ttft_ms is None:
                    result.ttft_ms = ms(time.monotonic() - started)
                if isinstance(event, ContentDelta):
                    text.append(event.text)
                elif isinstance(event, ReasoningDelta):
                    reasoning.append(event.text)
                elif isinstance(event, ToolCallDelta):
                    merge_tool_call(tool_calls, event)
                elif isinstance(event, UsageReport):
                    result.usage = event.usage
                elif isinstance(event, Finish):
                    result.finish_reason = event.reason
                    result.malformed_chunks = event.malformed_chunks
                    result.truncated_at = event.truncated_at
                elif isinstance(event, StreamError):
                    result.error = event.error
                    result.malformed_chunks = event.malformed_chunks
        result.text = "".join(text)
        result.reasoning = "".join(reasoning)
        result.tool_calls = [tool_calls[i] for i in sorted(tool_calls)]
        result.duration_ms = ms(time.monotonic() - started)
        return result

    # ----------------------------------------------------------------------- request

    def _build_request(
        self,
        provider: Provider,
        model_id: str,
        spec: ModelSpec,
        messages: list[Message],
        response_format: dict[str, Any] | None,
        tools: list[dict[str, Any]] | None,
        tool_choice: str | dict[str, Any] | None,
        limits: Limits,
    ) -> httpx.Request:
        is_openrouter = provider.is_openrouter
        if spec.system_prompt:
            messages = [{"role": "system", "content": spec.system_prompt}, *messages]
        body: dict[str, Any] = {
            "model": model_id,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if is_openrouter:
            body["usage"] = {"include": True}
        if spec.temperature is not None:
            body["temperature"] = spec.temperature
        if spec.max_tokens is not None:
            body["max_tokens"] = spec.max_tokens
        if spec.reasoning_effort:
            # OpenAI proper rejects unknown parameters; it spells this reasoning_effort.
            if is_openrouter:
                body["reasoning"] = {"effort": spec.reasoning_effort}
            else:
                body["reasoning_effort"] = spec.reasoning_effort
        if response_format is not None and provider.supports_response_format:
            body["response_format"] = response_format
        if tools:
            body["tools"] = tools
        if tool_choice is not None:
            body["tool_choice"] = tool_choice
        headers = {"Accept": "text/event-stream", DEPTH_HEADER: "1", **provider.extra_headers}
        if provider.api_key:
            headers["Authorization"] = f"Bearer {provider.api_key}"
        return self._http.build_request(
            "POST",
            provider.base_url.rstrip("/") + "/chat/completions",
            json=body,
            headers=headers,
            # Reads are bounded by our own deadlines; httpx only guards connect/write/pool.
            timeout=httpx.Timeout(connect=limits.connect, read=None, write=limits.connect, pool=limits.connect),
        )

    # ----------------------------------------------------------------------- one attempt

    async def _attempt(
        self, request: httpx.Request, call: _Call, limits: Limits, scrub: Scrubber
    ) -> AsyncGenerator[ClientEvent, None]:
        """Send once and yield deltas; the outcome is left in ``call`` (error / finish / done)."""
        deadline, why = call.read_deadline(limits)
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._http.send(request, stream=True)
        except TimeoutError:
            call.error = _error("timeout", why, scrub=scrub)
            return
        except httpx.ConnectTimeout:
            call.error = _error("timeout", f"Could not connect within {limits.connect:g} s.", scrub=scrub)
            return
        except httpx.TimeoutException as exc:  # write or connection-pool timeout
            call.error = _error("timeout", f"{type(exc).__name__}.", scrub=scrub)
            return
        except httpx.TransportError as exc:
            call.error = _error("network", f"{type(exc).__name__}: {exc}", scrub=scrub)
            return
        try:
            if not 200 <= response.status_code < 300:
                call.error = await self._status_error(response, call, limits, scrub)
            elif response.headers.get("content-type", "").startswith("application/json"):
                # Some OpenAI-compatible servers ignore stream=true and answer in one piece.
                for event in await self._read_json_body(response, call, limits, scrub):
                    yield event
            else:
                async with contextlib.aclosing(self._read_stream(response, call, limits, scrub)) as events:
                    async for event in events:
                        yield event
        finally:
            if not call.body_handed_off:
                await response.aclose()

    async def _read_stream(
        self, response: httpx.Response, call: _Call, limits: Limits, scrub: Scrubber
    ) -> AsyncGenerator[ClientEvent, None]:
        loop = asyncio.get_running_loop()
        decoder = SSEDecoder()
        chunks = response.aiter_bytes()
        watch = _ReadWatch(loop, call, limits)
        try:
            while True:
                ended = False
                try:
                    items = decoder.feed(await watch.read(chunks))
                except StopAsyncIteration:
                    items, ended = decoder.close(), True
                except TimeoutError as exc:
                    call.error = _error("timeout", str(exc), scrub=scrub)
                    return
                except httpx.TransportError as exc:
                    if call.finish_reason is None:
                        call.error = _error("incomplete", f"The connection broke: {type(exc).__name__}.", scrub=scrub)
                    return
                for item in items:
                    if isinstance(item, KeepAlive):
                        continue  # proves the connection is alive, but it is not progress
                    for event in self._take_payload(item.data, call, loop.time(), scrub):
                        yield event
                    if call.error or call.truncated_at is not None:
                        return  # past the cap: _attempt closes the response, the provider stops
                    if call.done:
                        call.body_handed_off = True
                        return
                if ended:
                    if call.finish_reason is None:
                        call.error = _error("incomplete", "No finish reason and no [DONE].", scrub=scrub)
                    return
        finally:
            watch.close()
            if call.body_handed_off:
                _finish_body(response, chunks)
            else:
                await _close_chunks(chunks)

    def _take_payload(self, data: str, call: _Call, now: float, scrub: Scrubber) -> list[ClientEvent]:
        if data.strip() == "[DONE]":
            call.done = True
            return []
        try:
            chunk = json.loads(data)
        except ValueError:
            chunk = None
        if not isinstance(chunk, dict):
            call.malformed += 1  # one bad chunk should not cost the whole answer
            return []
        if chunk.get("error"):
            call.error = self._chunk_error(chunk["error"], scrub)
            return []
        if isinstance(chunk.get("usage"), dict):
            call.usage = parse_usage(chunk["usage"])
            call.server_tool_use = parse_server_tool_use(chunk["usage"]) or call.server_tool_use
        events: list[ClientEvent] = []
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or _int(choice.get("index")) != 0:
                continue
            events += call.take_delta(choice.get("delta") or {}, now)
            if choice.get("finish_reason"):
                call.finish_reason = str(choice["finish_reason"])
        if call.finish_reason == "error":
            call.error = _error("upstream_error", "The stream reported finish reason 'error'.", scrub=scrub)
        return events

    def _chunk_error(self, raw: Any, scrub: Scrubber) -> ProviderError:
        if not isinstance(raw, dict):
            raw = {"message": str(raw)}
        code = raw.get("code")
        if isinstance(code, str) and code.isdigit():
            code = int(code)
        status = code if isinstance(code, int) and not isinstance(code, bool) else None
        message = str(raw.get("message") or "")
        kind = error_kind(status, message)
        if status is not None and status < 400:
            kind = "upstream_error"
        return _error(kind, f"Provider said: {message}" if message else "", scrub=scrub, status=status)

    async def _status_error(
        self, response: httpx.Response, call: _Call, limits: Limits, scrub: Scrubber
    ) -> ProviderError:
        status = response.status_code
        body = b""
        with contextlib.suppress(TimeoutError, httpx.HTTPError):
            async with asyncio.timeout_at(call.read_deadline(limits)[0]):
                async for part in response.aiter_bytes():
                    body += part
                    if len(body) > _MAX_ERROR_BODY:
                        break
        # An HTML error page (a proxy's 502) says nothing a user can act on.
        message = "" if "html" in response.headers.get("content-type", "") else _error_message(body)
        return _error(
            error_kind(status, message),
            f"Provider said (HTTP {status}): {message}" if message else f"HTTP {status}.",
            scrub=scrub,
            status=status,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )

    async def _read_json_body(
        self, response: httpx.Response, call: _Call, limits: Limits, scrub: Scrubber
    ) -> list[ClientEvent]:
        loop = asyncio.get_running_loop()
        deadline, why = call.read_deadline(limits)
        try:
            async with asyncio.timeout_at(deadline):
                payload = json.loads(await response.aread())
        except TimeoutError:
            call.error = _error("timeout", why, scrub=scrub)
            return []
        except (ValueError, httpx.HTTPError):
            call.error = _error("upstream_error", "The provider sent an unreadable JSON body.", scrub=scrub)
            return []
        if not isinstance(payload, dict):
            call.error = _error("upstream_error", "The provider sent an unexpected JSON body.", scrub=scrub)
            return []
        if payload.get("error"):
            call.error = self._chunk_error(payload["error"], scrub)
            return []
        if isinstance(payload.get("usage"), dict):
            call.usage = parse_usage(payload["usage"])
            call.server_tool_use = parse_server_tool_use(payload["usage"]) or call.server_tool_use
        choice = (payload.get("choices") or [{}])[0]
        message = dict(choice.get("message") or {})
        # A whole message's tool calls carry no index; number them as a stream would.
        message["tool_calls"] = [{"index": i, **tc} for i, tc in enumerate(message.get("tool_calls") or [])]
        events = call.take_delta(message, loop.time())
        call.finish_reason = str(choice.get("finish_reason") or "stop")
        call.done = True
        return events

    # ----------------------------------------------------------------------- retries

    def _retry_delay(self, call: _Call, attempt: int, limits: Limits, now: float) -> float | None:
        """Seconds to wait before the next attempt, or None to stop here."""
        error = call.error
        if error is None or call.progressed or attempt >= limits.max_retries:
            return None
        if not (error.kind in ("network", "incomplete") or error.status_code in RETRYABLE_STATUS):
            return None
        delay: float = limits.backoff_base * 2**attempt
        if error.retry_after is not None:
            if error.retry_after > limits.max_retry_after:
                return None  # asked to wait longer than we are willing to: report it now
            delay = error.retry_after
        if now + delay >= call.total_deadline:
            return None
        return delay


def _error_message(body: bytes) -> str:
    """The provider's own words from an error body (OpenAI/OpenRouter JSON, or plain text)."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        payload = json.loads(text)
    except ValueError:
        return text[:_MAX_DETAIL]
    if isinstance(payload, dict):
        error = payload.get("error", payload)
        if isinstance(error, dict):
            return str(error.get("message") or error.get("detail") or "")
        return str(error)
    return text[:_MAX_DETAIL]


async def _close_chunks(chunks: Any) -> None:
    # Closed here, not by the garbage collector: asyncio's finalizer of an unclosed async
    # generator wakes the loop through its self-pipe, once per call.
    aclose = getattr(chunks, "aclose", None)  # typed as an iterator; it is a generator
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


def _finish_body(response: httpx.Response, chunks: Any) -> None:
    """Read the rest of a finished stream's body in the background, then close it.

    ``[DONE]`` is the last event, but the body's end (the chunked encoding's empty last chunk)
    comes after it. A response closed before its end is read closes its connection too, so
    every call would open a new one (a TCP connect per member per run, and a connection's
    objects left for the garbage collector); read to the end, the connection goes back to the
    pool. The call's outcome does not wait for this.
    """
    task = asyncio.get_running_loop().create_task(_read_rest(response, chunks))
    _finishing.add(task)
    task.add_done_callback(_finishing.discard)


async def _read_rest(response: httpx.Response, chunks: Any) -> None:
    try:
        async with asyncio.timeout(_REST_S):
            seen = 0
            async for data in chunks:
                seen += len(data)
                if seen > _REST_BYTES:
                    break
    except (TimeoutError, httpx.HTTPError, OSError):
        pass  # the connection is not reused: closing the response closes it
    finally:
        await _close_chunks(chunks)
        with contextlib.suppress(Exception):
            await response.aclose()
