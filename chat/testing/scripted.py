"""A scripted OpenAI-compatible upstream: the project's own fake OpenRouter.

Tests, ``make demo`` and ``bench/`` point the engine at it instead of a paid provider. It speaks
real HTTP/1.1 on 127.0.0.1 (plain asyncio streams, no dependencies), streams real SSE, and can
misbehave on purpose, so every failure path of the client can be exercised end to end. Like a
provider it keeps a connection alive after an answer that ended cleanly (``connections`` counts
the ones it accepted); an answer with a fault closes its connection (``Connection: close``).

Endpoints (base URL ``http://127.0.0.1:PORT/v1``)
-------------------------------------------------

``POST /v1/chat/completions``   ``stream: true`` → SSE chunks then ``data: [DONE]``;
                                ``stream: false`` → one ``chat.completion`` JSON object.
``GET  /v1/models``             ``{"data": [{"id", "name", "context_length", "pricing"}]}``.
``GET  /_scripted/requests``    ``{"requests": [...]}``: every chat request as
                                ``{time, model, messages, params, headers}`` (auth redacted; its
                                SHA-256 prefix under ``authorization-sha256``).
``GET  /_scripted/disconnects`` ``{"disconnects": [model ids]}``: clients that hung up before
                                the response was finished.
``GET  /_scripted/scripts``     the current scripts.
``POST /_scripted/scripts``     replace the scripts (body: the scripts object); resets counters.
``POST /_scripted/reset``       forget recorded requests, disconnects and fault counters.

Scripts
-------

A JSON object keyed by model id; ``"*"`` is the default for any other id (without it, unknown
ids get OpenRouter's ``404 "… is not a valid model ID"``). Every key is optional::

    {
      "sim/atlas": {
        "content": "text to stream",  # default: generated, see below
        "reasoning": "thinking…",     # streamed first, as delta.reasoning + reasoning_details
        "tool_calls": [{"name": "web_search", "arguments": {"query": "x"}}],
                                      # streamed as split delta.tool_calls, finish "tool_calls"
        "finish_reason": "stop",      # default "stop" ("tool_calls" with tool_calls)
        "ttft_ms": 400,               # delay before the first token
        "tokens_per_s": 60,           # pace (a token is ~4 chars); 0/absent = no delay
        "chunk_chars": 16,            # characters per content chunk
        "keepalive_ms": 250,          # ": OPENROUTER PROCESSING" comments while waiting
        "pricing": {"prompt": "0.000001", "completion": "0.000004"},  # USD per token
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "cost": 0.001},
                                      # overrides; defaults come from lengths and pricing
        "style": "structured",        # generated answers: structured | narrative | concise
        "name": "Sim Atlas", "context_length": 128000,  # for /v1/models
        "fence_json": false,          # wrap generated analysis JSON in a ```json fence
        "sse_crlf": false,            # end SSE lines with CRLF
        "sse_multiline": false,       # spread each JSON chunk over several data: lines
        "sse_no_space": false,        # "data:{...}" without the space after the colon
        "ignore_stream": false,       # answer stream=true with one JSON body, like some servers
        "content_chars": 5000000,     # the content (given, pathological or generated) repeated
                                      # or cut to exactly this many characters: huge output, fast
                                      # with a big chunk_chars (e.g. 65536)
        "pathological": {"kind": "nested_list", "depth": 800},
                                      # Markdown that is slow to render, as the content. Kinds:
                                      # nested_list (one level deeper per line), nested_quote
                                      # ("> > > …"), nested_markers ("- - - …" on one line),
                                      # brackets ("[[[[…", depth = count)
        "faults": [...]               # see below
      }
    }

Generated content (when ``content`` is absent) depends on what is asked:

* **analyst** — a message contains ``FUSION_ANALYSIS_JSON`` (or ``response_format`` is set and
  there are ``<response label=…>`` blocks): valid FusionAnalysisResult JSON
  (consensus, contradictions, partial_coverage, unique_insights, blind_spots) built from the
  ``<response label="Response A">…</response>`` blocks, naming responses by their labels;
* **writer** — labelled ``<response …>`` or ``<answer model="…">`` blocks but no marker: a short
  fused Markdown answer with one sentence from each answer;
* **panel** — otherwise: deterministic multi-paragraph Markdown from the model id and the last
  user message, different for every model.

Faults
------

``faults`` is a list applied in order by request count per model id: each fault takes the next
``times`` requests (default 1; ``-1`` = every request from then on), after which the model
behaves normally. ``{"type": "http", "status": 429, "retry_after": 1}`` then normal service is
the classic rate-limit case. Types:

``http``              status (400/401/402/403/404/429/500/502/503…) with OpenRouter's error JSON;
                      ``retry_after`` (s) adds a Retry-After header; ``message`` overrides the
                      text (``{model}`` and ``{api_key}`` are substituted — the latter to simulate
                      a provider that echoes credentials).
``error_mid_stream``  after ``after_chars`` content characters (default: half), a chunk with
                      ``{"error": {"code": 502, "message": …}}`` (``code``/``message`` settable),
                      then the body ends. Non-streaming: HTTP ``code`` error.
``eof``               the body ends after ``after_chars`` without finish_reason or ``[DONE]``;
                      ``abrupt: true`` drops the TCP connection instead of ending the body.
``hang``              stops after ``after_chars`` and keeps the connection open (keep-alive
                      comments continue if ``keepalive_ms``) until the client leaves.
``keepalive_only``    only ``: OPENROUTER PROCESSING`` comments, until the client leaves.
``malformed_chunk``   one chunk of invalid JSON after ``after_chars``; the rest is normal.
``empty``             finishes normally with no content.
``invalid_json``      content is prose instead of JSON (for analyst tests).

Tool use (web research)
-----------------------

Four more script keys drive the engine's tool loop end to end:

``steps``             a list of partial scripts, one per step of a tool loop. A request's step
                      is the number of assistant tool-call turns already in its messages (0 on
                      the first call, 1 after one round of tool results, …; past the end, the
                      last step). Each step overrides the script's own keys, e.g.::

                        "steps": [
                          {"tool_calls": [{"name": "web_search", "arguments": {"query": "q"}}]},
                          {"tool_calls": [{"name": "web_fetch", "arguments": {"url": "{url0}"}},
                                          {"name": "web_fetch", "arguments": {"url": "{url1}"}}]},
                          {"cite": true}
                        ]

                      In tool-call arguments and ``content``, ``{url0}``, ``{url1}``, … are the
                      distinct http(s) URLs found in the request's ``tool`` messages, in order
                      (e.g. the search results), and ``{sources}`` is a Markdown list of links to
                      the pages it read. ``cite: true`` appends that list as a "Sources" section
                      (to ``content``, or to the generated answer). The pages "read" are the
                      ``web_fetch`` URLs whose tool result is not an error; without any, every URL
                      seen. A step with ``tool_calls`` in a request that offers no tools (no
                      ``tools``, or ``tool_choice: "none"``) answers instead, like a real model.
``loop_tools``        ``true`` (or a tool call ``{"name", "arguments"}``): every request that offers
                      tools gets another tool call (default ``web_search`` with a numbered
                      query); a request without ``tools`` (or with ``tool_choice: "none"``) gets
                      the answer. For budget tests.
``no_tools_support``  ``true``: a request with ``tools`` gets OpenRouter's ``404 "No endpoints found
                      that support tool use…"``; ``400``: a ``400 "… does not support tools"``.
                      Without ``tools`` the model answers normally.
``server_tools``      ``true`` or ``{"citations": [{"url", "title"}], "web_search_requests": 2}``:
                      when the request's ``tools`` contain OpenRouter server tools
                      (``openrouter:web_search`` …), the answer (with its citations as Markdown
                      links) is followed by ``delta.annotations`` of ``url_citation`` items and the
                      usage chunk carries ``server_tool_use``. Citations on hosts in the request's
                      ``excluded_domains`` are left out.

``time_scale`` multiplies every delay (ttft, pacing, keep-alive interval, Retry-After), so tests
run the same scripts at a hundredth of the speed.

Python: ``async with ScriptedUpstream(scripts, time_scale=0.01) as up: ... up.base_url``, or
``up = ScriptedUpstream(scripts).start_in_thread(); ...; up.stop()``. ``scripts=None`` serves
``DEMO_SCRIPTS``. ``up.requests``, ``up.requests_for(model)``, ``up.disconnects`` and
``await up.wait_for_disconnect(model)`` (hang-ups are noticed asynchronously) serve assertions.
CLI: ``python -m chat.testing.scripted --port 8787 [--scripts file.json] [--time-scale 1]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from chat.fusion.prompts import ANALYSIS_MARKER  # the pipeline puts it in every analyst prompt
from chat.testing.scripted_judge import is_judge_request, judge_reply

SCRIPT_KEYS = frozenset(
    {
        "content", "reasoning", "tool_calls", "finish_reason", "ttft_ms", "tokens_per_s",
        "chunk_chars", "keepalive_ms", "pricing", "usage", "style", "name", "context_length",
        "fence_json", "sse_crlf", "sse_multiline", "sse_no_space", "ignore_stream", "faults",
        "steps", "loop_tools", "no_tools_support", "server_tools", "cite", "content_chars", "pathological",
        "verdicts", "judge_first_reply",
    }
)  # fmt: skip
STEP_KEYS = SCRIPT_KEYS - {"steps", "faults", "name", "context_length", "pricing"}
NO_TOOL_ENDPOINTS = (
    "No endpoints found that support tool use. To learn more about provider routing, "
    "visit: https://openrouter.ai/docs/provider-routing"
)
DEFAULT_CITATIONS = [
    {"url": "https://example.com/guide", "title": "A guide"},
    {"url": "https://example.org/reference", "title": "The reference"},
]
FAULT_TYPES = frozenset(
    {"http", "error_mid_stream", "eof", "hang", "keepalive_only", "malformed_chunk", "empty", "invalid_json"}
)
STYLES = ("structured", "narrative", "concise")
PATHOLOGICAL_KINDS = ("nested_list", "nested_quote", "nested_markers", "brackets")

DEMO_SCRIPTS: dict[str, dict[str, Any]] = {
    "sim/atlas": {
        "name": "Sim Atlas (fast, structured)",
        "ttft_ms": 300,
        "tokens_per_s": 80,
        "style": "structured",
        "pricing": {"prompt": "0.0000005", "completion": "0.0000015"},
    },
    "sim/borealis": {
        "name": "Sim Borealis (thinks first)",
        "ttft_ms": 600,
        "tokens_per_s": 50,
        "style": "narrative",
        "keepalive_ms": 200,
        "reasoning": (
            "The user wants a practical answer. I should weigh the main trade-off first, "
            "then give a recommendation with one concrete example."
        ),
        "pricing": {"prompt": "0.000003", "completion": "0.000015"},
    },
    "sim/cirrus": {
        "name": "Sim Cirrus (slow, concise)",
        "ttft_ms": 900,
        "tokens_per_s": 30,
        "style": "concise",
        "pricing": {"prompt": "0.0000002", "completion": "0.0000006"},
    },
    "sim/analyst": {"name": "Sim Analyst", "ttft_ms": 400, "tokens_per_s": 150},
    "sim/writer": {"name": "Sim Writer", "ttft_ms": 300, "tokens_per_s": 70},
    # A rubric judge (chat.evals.judge): verdicts from the words of each requirement in the answer.
    "sim/judge": {"name": "Sim Judge", "ttft_ms": 100, "tokens_per_s": 0},
    # An outer model for the API's openrouter:fusion server tool: offered tools, it calls fusion
    # first, then answers from the result (offered none, it just answers).
    "sim/agent": {
        "name": "Sim Agent",
        "ttft_ms": 300,
        "tokens_per_s": 70,
        "steps": [{"tool_calls": [{"name": "fusion", "arguments": {}}]}, {}],
    },
    "*": {"ttft_ms": 200, "tokens_per_s": 60},
}

_HTTP_REASONS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
    404: "Not Found", 408: "Request Timeout", 413: "Payload Too Large", 429: "Too Many Requests",
    500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout",
}  # fmt: skip
_DEFAULT_ERRORS = {
    400: "Invalid request parameters",
    401: "No cookie auth credentials found",
    402: "Insufficient credits. Add more using https://openrouter.ai/settings/credits",
    403: "Your input was flagged by the moderation of {model}",
    404: "No endpoints found for {model}.",
    408: "Request timed out",
    429: "Rate limit exceeded: {model} is temporarily rate-limited upstream",
    500: "Internal Server Error",
    502: "Provider returned error",
    503: "No instances available for {model}",
}
_MAX_BODY = 16 * 1024 * 1024
LISTEN_BACKLOG = 1024


def validate_scripts(scripts: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Check a scripts object; raise ValueError naming the first mistake (typos included)."""
    if not isinstance(scripts, dict):
        raise ValueError("Scripts must be a JSON object keyed by model id.")
    for model, script in scripts.items():
        if not isinstance(script, dict):
            raise ValueError(f"Script for {model!r} must be an object.")
        unknown = set(script) - SCRIPT_KEYS
        if unknown:
            raise ValueError(f"Unknown key(s) {sorted(unknown)} in the script for {model!r}.")
        if script.get("style") not in (None, *STYLES):
            raise ValueError(f"Script for {model!r}: style must be one of {STYLES}.")
        steps = script.get("steps", [])
        if not isinstance(steps, list) or not all(isinstance(step, dict) for step in steps):
            raise ValueError(f"Script for {model!r}: steps must be a list of objects.")
        for step in steps:
            unknown = set(step) - STEP_KEYS
            if unknown:
                raise ValueError(f"Unknown key(s) {sorted(unknown)} in a step of the script for {model!r}.")
        bomb = script.get("pathological")
        if bomb is not None and not (isinstance(bomb, dict) and bomb.get("kind") in PATHOLOGICAL_KINDS):
            raise ValueError(f"Script for {model!r}: pathological needs a kind among {PATHOLOGICAL_KINDS}.")
        if script.get("no_tools_support") not in (None, False, True, 400, 404):
            raise ValueError(f"Script for {model!r}: no_tools_support must be true, 400 or 404.")
        faults = script.get("faults", [])
        if not isinstance(faults, list):
            raise ValueError(f"Script for {model!r}: faults must be a list.")
        for fault in faults:
            if not isinstance(fault, dict) or fault.get("type") not in FAULT_TYPES:
                raise ValueError(f"Script for {model!r}: each fault needs a type among {sorted(FAULT_TYPES)}.")
            if fault["type"] == "http" and not 400 <= int(fault.get("status", 0)) <= 599:
                raise ValueError(f"Script for {model!r}: an http fault needs a 4xx/5xx status.")
    return {str(k): dict(v) for k, v in scripts.items()}


def fault_for(script: dict[str, Any], request_number: int) -> dict[str, Any] | None:
    """The fault that applies to the *request_number*-th (1-based) request of a model."""
    seen = 0
    for fault in script.get("faults", []):
        times = int(fault.get("times", 1))
        if times < 0 or request_number <= seen + times:
            return fault
        seen += times
    return None


# =========================================================================== content


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # OpenAI content parts
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return message_text(message)
    return ""


_RESPONSE_BLOCK = re.compile(r'<response label="([^"]+)">\s*(.*?)\s*</response>', re.DOTALL)
_ANSWER_BLOCK = re.compile(r'<answer model="([^"]+)">\s*(.*?)\s*</answer>', re.DOTALL)
_QUESTION_BLOCK = re.compile(r"<question>\s*(.*?)\s*</question>", re.DOTALL)


def labelled_blocks(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """``(label, text)`` of the answer blocks in the last message that has any."""
    for message in reversed(messages):
        text = message_text(message)
        blocks = _RESPONSE_BLOCK.findall(text) or _ANSWER_BLOCK.findall(text)
        if blocks:
            return blocks
    return []


def question_of(messages: list[dict[str, Any]]) -> str:
    """The user's question: a ``<question>`` block if the pipeline restated it, else the last user text."""
    for message in reversed(messages):
        found = _QUESTION_BLOCK.search(message_text(message))
        if found:
            return found.group(1)
    text = last_user_text(messages)
    return _ANSWER_BLOCK.sub("", _RESPONSE_BLOCK.sub("", text)).strip()


def _topic(question: str) -> str:
    text = " ".join(question.split()).rstrip("?!. ")
    if len(text) > 70:
        text = text[:70].rsplit(" ", 1)[0] + "…"
    return text or "this question"


_POINTS = [
    (
        "Scope",
        "Start by pinning down what success means here; most disagreements about “{topic}” are really about goals.",
    ),
    (
        "Trade-off",
        "The central trade-off is speed against reliability, and the right balance depends on how costly a mistake is.",
    ),
    ("Evidence", "Measure before deciding: a small, honest baseline beats intuition, which is often wrong on this."),
    ("Risk", "Edge cases deserve more attention than the happy path, because that is where failures become expensive."),
    ("Pilot", "Try it on a small pilot first, then widen the rollout once the numbers hold up."),
    ("Cost", "Total cost is usually dominated by maintenance over time, not by the initial setup."),
    ("People", "Involve the people who will live with the result early; adoption fails more often than technology."),
    (
        "Simplicity",
        "Prefer the simplest option that meets the requirements, and revisit it when the requirements change.",
    ),
    ("Sources", "Check primary sources where you can, since summaries of “{topic}” often repeat the same mistake."),
    ("Timing", "Timing matters: the same decision can be right this quarter and wrong next year."),
    ("Reversibility", "Favour reversible steps, so a wrong call costs days rather than months."),
    (
        "Documentation",
        "Write down the reasoning behind the decision; the next person will need it more than the conclusion.",
    ),
]
_SHARED_POINT = "There is no single right answer to “{topic}”: the context and constraints decide."


def generate_answer(model: str, question: str, style: str | None = None) -> str:
    """Deterministic, plausible Markdown; different models get different points and layouts."""
    seed = int.from_bytes(hashlib.sha256(f"{model}\0{question}".encode()).digest()[:8], "big")
    rng = random.Random(seed)
    style = style or STYLES[seed % len(STYLES)]
    topic = _topic(question)
    picked = [(title, text.format(topic=topic)) for title, text in rng.sample(_POINTS, 4)]
    shared = _SHARED_POINT.format(topic=topic)
    if style == "structured":
        bullets = "\n".join(f"- **{title}.** {text}" for title, text in picked)
        return (
            f"## Short answer\n\n{shared} Here is a structured way to approach it.\n\n"
            f"### Key points\n\n{bullets}\n\n"
            f"### Recommendation\n\nBegin with the first point and reassess after a week. ({model})"
        )
    if style == "narrative":
        first, second, third, fourth = (text for _, text in picked)
        return (
            f"When people ask about “{topic}”, the honest answer starts with context. {shared}\n\n"
            f"{first} {second}\n\n"
            f"In practice, {third[0].lower()}{third[1:]} {fourth}\n\n"
            f"*Answer drafted by {model}.*"
        )
    numbered = "\n".join(f"{i}. {text}" for i, (_, text) in enumerate(picked[:3], start=1))
    return f"**In brief**\n\n{shared}\n\n{numbered}\n\n_{model}_"


_STOPWORDS = frozenset(
    "about after again against before being because between could doesn't during every first "
    "further having other should their there these those through under until where which while "
    "would answer response question really rather often right single context constraints decide "
    "drafted approach points recommendation structured".split()
)


def _plain(text: str) -> str:
    text = re.sub(r"^\s*(#+|[-*]|\d+\.)\s*", "", text, flags=re.MULTILINE)
    return re.sub(r"[*_`]+", "", text)


def _sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+|\n+", _plain(text))
    return [p.strip() for p in parts if len(p.strip()) >= 25]


def _keywords(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z][a-z'-]{5,}", _plain(text).lower()) if w not in _STOPWORDS}


def _norm(sentence: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", sentence.lower()))


def generate_analysis(blocks: list[tuple[str, str]], question: str) -> dict[str, Any]:
    """FusionAnalysisResult JSON built from labelled answers, referring to them by label.

    Sentences said by every answer are consensus, by some of them partial coverage, by one of
    them a unique insight; each answer's first substantial sentence not all share is its stance.
    """
    if not blocks:
        return {"consensus": [], "contradictions": [], "partial_coverage": [], "unique_insights": [],
                "blind_spots": ["No responses were provided to compare."]}  # fmt: skip
    labels = [label for label, _ in blocks]
    count = len(blocks)
    sentences = {label: _sentences(text) or [_plain(text).strip()[:200]] for label, text in blocks}
    owners: dict[str, list[str]] = {}  # normalised sentence → labels of the answers saying it
    wording: dict[str, str] = {}
    for label in labels:
        for sentence in sentences[label]:
            key = _norm(sentence)
            wording.setdefault(key, sentence)
            if label not in owners.setdefault(key, []):
                owners[key].append(label)

    def is_stance(sentence: str) -> bool:  # says something, and not what everyone says
        return len(owners[_norm(sentence)]) < count and len(_keywords(sentence)) >= 2

    consensus = [f"All {count} responses address “{_topic(question)}” directly."]
    if count > 1:
        consensus += [wording[k] for k, o in owners.items() if len(o) == count][:2]
        common = set.intersection(*(_keywords(text) for _, text in blocks))
        if common:
            consensus.append("They all discuss " + ", ".join(sorted(common)[:3]) + ".")

    contradictions = []
    if count > 1:
        stances = [
            {"model": label, "stance": next((s for s in sentences[label] if is_stance(s)), sentences[label][0])[:240]}
            for label in labels
        ]
        contradictions.append({"topic": "What to emphasise first", "stances": stances})

    partial_coverage = [{"models": o, "point": wording[k]} for k, o in owners.items() if 1 < len(o) < count][:3]

    unique_insights = []
    for label in labels:
        own = [s for s in sentences[label][1:] or sentences[label] if owners[_norm(s)] == [label]]
        if own:
            best = max(own, key=lambda s: len(_keywords(s)))  # the most substantial one
            unique_insights.append({"model": label, "insight": best[:240]})

    return {
        "consensus": consensus,
        "contradictions": contradictions,
        "partial_coverage": partial_coverage,
        "unique_insights": unique_insights,
        "blind_spots": [
            "No response says what evidence would change its recommendation."
            if any("http" in text for _, text in blocks)
            else "None of the responses cites sources or says how to verify its claims."
        ],
    }


def generate_fused(blocks: list[tuple[str, str]], question: str) -> str:
    """A short fused Markdown answer taking one sentence from each answer."""
    used: set[str] = set()
    bullets = []
    for _, text in blocks:
        sentences = _sentences(text) or [_plain(text).strip()]
        # A substantial sentence the fused answer does not have yet, else the first one.
        pick = next((s for s in sentences if len(_keywords(s)) >= 3 and _norm(s) not in used), sentences[0])
        used.add(_norm(pick))
        bullets.append(f"- {pick}")
    body = "\n".join(bullets) or "- The panel gave no usable answers."
    return (
        f"## Answer\n\nTaking the answers together, “{_topic(question)}” comes down to a few points:\n\n"
        f"{body}\n\nWhere they differ, it is mostly a matter of emphasis rather than substance."
    )


def pathological_markdown(kind: str, depth: int = 800) -> str:
    """Markdown that costs a naive renderer time, memory or its recursion limit (see PATHOLOGICAL_KINDS)."""
    if kind == "nested_list":
        return "".join(" " * (4 * i) + f"- level {i}\n" for i in range(depth))
    if kind == "nested_quote":
        return "".join("> " * (i + 1) + f"level {i}\n" for i in range(depth))
    if kind == "nested_markers":
        return "- " * depth + "deep\n"
    if kind == "brackets":
        return "[" * depth + "x\n"
    raise ValueError(f"unknown pathological kind {kind!r}")


def repeat_to(text: str, chars: int) -> str:
    """*text* repeated (or cut) to exactly *chars* characters; filler prose when *text* is empty."""
    text = text or "All work and no play makes a very long answer. "
    return (text * (chars // len(text) + 1))[:chars]


_NOT_JSON = (
    "Sure! Here is my comparison of the responses. They mostly agree, although Response A goes "
    "into more detail. Overall a solid set of answers."
)


# =========================================================================== plan


@dataclass
class Plan:
    """What one chat request will produce."""

    model: str
    content: str
    reasoning: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str = "stop"
    usage: dict[str, Any] = field(default_factory=dict)
    annotations: list[dict[str, Any]] = field(default_factory=list)  # url_citation items


def default_pricing(model: str) -> dict[str, str]:
    # Deterministic per model: $0.10–$3 per million prompt tokens, completion 4× that.
    per_million = 0.1 + (int(hashlib.sha256(model.encode()).hexdigest()[:6], 16) % 290) / 100
    return {"prompt": f"{per_million / 1e6:.10f}", "completion": f"{4 * per_million / 1e6:.10f}"}


def _tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


_URL = re.compile(r"https?://[^\s<>\"'`)\]]+")


def tool_step(messages: list[dict[str, Any]]) -> int:
    """How many assistant tool-call turns the conversation already has (the step of a tool loop)."""
    return sum(1 for m in messages if m.get("role") == "assistant" and m.get("tool_calls"))


def tools_offered(body: dict[str, Any]) -> bool:
    return bool(body.get("tools")) and body.get("tool_choice") != "none"


def server_tools_requested(body: dict[str, Any]) -> bool:
    return any(
        isinstance(t, dict) and str(t.get("type", "")).startswith("openrouter:") for t in body.get("tools") or []
    )


def tool_result_urls(messages: list[dict[str, Any]]) -> list[str]:
    """Distinct http(s) URLs in the ``tool`` messages, in order of appearance."""
    seen: list[str] = []
    for message in messages:
        if message.get("role") != "tool":
            continue
        for url in _URL.findall(message_text(message)):
            url = url.rstrip(".,;:!?")
            if url not in seen:
                seen.append(url)
    return seen


def pages_read(messages: list[dict[str, Any]]) -> list[str]:
    """URLs the conversation fetched successfully (``web_fetch`` calls whose result is no error)."""
    results = {m.get("tool_call_id"): message_text(m) for m in messages if m.get("role") == "tool"}
    pages: list[str] = []
    for message in messages:
        for call in message.get("tool_calls") or [] if message.get("role") == "assistant" else []:
            function = call.get("function") or {}
            if function.get("name") != "web_fetch":
                continue
            try:
                url = json.loads(function.get("arguments") or "{}").get("url")
            except (ValueError, AttributeError):
                continue
            result = results.get(call.get("id"), "").lstrip().lower()
            if (
                isinstance(url, str)
                and url
                and not result.startswith(("error", "blocked", "not run"))
                and url not in pages
            ):
                pages.append(url)
    return pages


def _link_text(url: str) -> str:
    text = re.sub(r"^https?://", "", url).rstrip("/")
    return text.replace("[", "(").replace("]", ")")


def sources_markdown(urls: list[str]) -> str:
    return "\n".join(f"- [{_link_text(u)}]({u})" for u in urls)


def _fill(text: str, urls: list[str], sources: str) -> str:
    def url(match: re.Match[str]) -> str:
        index = int(match.group(1))
        return urls[index] if index < len(urls) else f"https://example.invalid/missing-url-{index}"

    return re.sub(r"\{url(\d+)\}", url, text).replace("{sources}", sources)


def effective_script(script: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """The script for this request: its step of ``steps`` and ``loop_tools`` applied."""
    if not (script.get("steps") or script.get("loop_tools")):
        return script
    messages = body.get("messages") or []
    step = tool_step(messages)
    effective = {k: v for k, v in script.items() if k != "steps"}
    steps = script.get("steps") or []
    if steps:
        effective.update(steps[min(step, len(steps) - 1)])
        if effective.get("tool_calls") and not tools_offered(body):
            # Tools were withdrawn (budget spent): answer, from the last step without tool calls.
            answer: dict[str, Any] = next((s for s in reversed(steps) if not s.get("tool_calls")), {})
            effective = {**{k: v for k, v in script.items() if k != "steps"}, **answer}
            effective.pop("tool_calls", None)
    loop = effective.get("loop_tools")
    if loop:
        if tools_offered(body):
            call = loop if isinstance(loop, dict) else {
                "name": "web_search", "arguments": {"query": f"{last_user_text(messages)[:60]} (search {step + 1})"},
            }  # fmt: skip
            effective["tool_calls"] = [call]
            effective.pop("content", None)
        else:
            effective.pop("tool_calls", None)
    return effective


def make_plan(model: str, script: dict[str, Any], body: dict[str, Any], fault: dict[str, Any] | None) -> Plan:
    messages = body.get("messages") or []
    fault_type = fault["type"] if fault else None
    script = effective_script(script, body)
    urls = tool_result_urls(messages)
    read = pages_read(messages) or urls
    step = tool_step(messages)
    tool_calls = [
        {
            "id": f"call_{i}_{hashlib.sha1(f'{model}{i}'.encode()).hexdigest()[:8]}"
            if not step
            else f"call_{step}_{i}_{hashlib.sha1(f'{model}{step}{i}'.encode()).hexdigest()[:8]}",
            "name": str(tc.get("name", "tool")),
            "arguments": _fill(
                tc["arguments"] if isinstance(tc.get("arguments"), str) else json.dumps(tc.get("arguments", {})),
                urls,
                "",
            ),
        }
        for i, tc in enumerate(script.get("tool_calls") or [])
    ]
    if fault_type == "empty":
        content = ""
    elif fault_type == "invalid_json":
        content = _NOT_JSON
    elif "pathological" in script:
        content = pathological_markdown(script["pathological"]["kind"], int(script["pathological"].get("depth", 800)))
    elif "content" in script:
        content = _fill(str(script["content"]), urls, sources_markdown(read))
    elif tool_calls:
        content = ""
    else:
        content = _generated_content(model, script, body)
    if script.get("content_chars") and fault_type != "empty" and not tool_calls:
        content = repeat_to(content, int(script["content_chars"]))
    annotations: list[dict[str, Any]] = []
    if (
        script.get("cite")
        and not tool_calls
        and fault_type is None
        and read
        and "{sources}" not in str(script.get("content", ""))
    ):
        content = f"{content}\n\n**Sources**\n\n{sources_markdown(read)}".strip()
    if script.get("server_tools") and server_tools_requested(body) and not tool_calls and fault_type is None:
        citations = _server_citations(script["server_tools"], body)
        if citations and "content" not in script:
            links = "\n".join(f"- [{c['title'] or _link_text(c['url'])}]({c['url']})" for c in citations)
            content = f"{content}\n\n**Sources**\n\n{links}"
        for c in citations:
            start = max(0, content.find(c["url"]))
            annotations.append({
                "type": "url_citation",
                "url_citation": {"url": c["url"], "title": c["title"], "content": c.get("content", ""),
                                 "start_index": start, "end_index": start + len(c["url"])},
            })  # fmt: skip
    finish = script.get("finish_reason") or ("tool_calls" if tool_calls else "stop")

    # Honour max_tokens like a real model: cut the answer and report "length".
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int) and max_tokens > 0 and _tokens(content) > max_tokens:
        content, finish = content[: max_tokens * 4], "length"

    reasoning = str(script.get("reasoning") or "")
    plan = Plan(model=model, content=content, reasoning=reasoning, tool_calls=tool_calls, finish_reason=finish)
    plan.usage = _usage(plan, script, messages)
    if script.get("server_tools") and server_tools_requested(body) and fault_type is None:
        config = script["server_tools"] if isinstance(script["server_tools"], dict) else {}
        searches = int(config.get("web_search_requests", 1))
        plan.usage["server_tool_use"] = {
            "web_search_requests": searches,
            "tool_calls_requested": searches,
            "tool_calls_executed": searches,
        }
        plan.annotations = annotations
    return plan


def _server_citations(config: Any, body: dict[str, Any]) -> list[dict[str, str]]:
    citations = (config.get("citations") if isinstance(config, dict) else None) or DEFAULT_CITATIONS
    excluded: list[str] = []
    for tool in body.get("tools") or []:
        if isinstance(tool, dict) and tool.get("type") == "openrouter:web_search":
            excluded = [str(d).lower() for d in (tool.get("parameters") or {}).get("excluded_domains") or []]
    kept = []
    for c in citations:
        host = re.sub(r"^https?://", "", str(c.get("url", ""))).split("/")[0].split(":")[0].lower()
        if not any(host == d or host.endswith("." + d) for d in excluded):
            kept.append(
                {"url": str(c.get("url", "")), "title": str(c.get("title", "")), "content": str(c.get("content", ""))}
            )
    return kept


def _generated_content(model: str, script: dict[str, Any], body: dict[str, Any]) -> str:
    messages = body.get("messages") or []
    blocks = labelled_blocks(messages)
    question = question_of(messages)
    if is_judge_request(messages):
        return judge_reply(script, messages)
    asks_json = bool(body.get("response_format")) and any(_RESPONSE_BLOCK.search(message_text(m)) for m in messages)
    if asks_json or any(ANALYSIS_MARKER in message_text(m) for m in messages):
        text = json.dumps(generate_analysis(blocks, question), ensure_ascii=False, indent=2)
        return f"```json\n{text}\n```" if script.get("fence_json") else text
    if blocks:
        return generate_fused(blocks, question)
    return generate_answer(model, last_user_text(messages), script.get("style"))


def _usage(plan: Plan, script: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
    pricing = script.get("pricing") or default_pricing(plan.model)
    prompt = max(1, _tokens("".join(message_text(m) for m in messages)))
    reasoning = _tokens(plan.reasoning)
    completion = _tokens(plan.content) + reasoning + sum(_tokens(tc["arguments"]) for tc in plan.tool_calls)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "completion_tokens_details": {"reasoning_tokens": reasoning},
        "cost": round(prompt * float(pricing["prompt"]) + completion * float(pricing["completion"]), 10),
    }
    overrides = script.get("usage") or {}
    usage.update(overrides)
    if "total_tokens" not in overrides:
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return usage


def _pieces(text: str, size: int) -> list[str]:
    size = max(1, size)
    return [text[i : i + size] for i in range(0, len(text), size)]


# =========================================================================== HTTP plumbing


class ClientGone(Exception):
    """The client closed the connection."""


@dataclass
class HTTPRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    version: str = "HTTP/1.1"

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        return connection != "close" and (self.version == "HTTP/1.1" or connection == "keep-alive")


class Connection:
    """One client socket: reads requests, writes responses, notices when the client leaves."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.gone = asyncio.Event()
        self._watch: asyncio.Task[bytes] | None = None

    async def read_request(self) -> HTTPRequest | None:
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, path, version = (lines[0].split(" ") + ["", "", ""])[:3]
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        if length > _MAX_BODY:
            raise ValueError("request body too large")
        body = await self.reader.readexactly(length) if length else b""
        return HTTPRequest(method.upper(), path.split("?", 1)[0], headers, body, version)

    def watch_for_hangup(self) -> None:
        """While a response streams the client sends nothing, so any read result means it left."""
        self._watch = asyncio.ensure_future(self.reader.read(1))
        self._watch.add_done_callback(self._hung_up)

    def _hung_up(self, task: asyncio.Task[bytes]) -> None:
        if not task.cancelled():
            task.exception()  # a reset is just another way to hang up; mark it retrieved
        self.gone.set()

    def stop_watching(self) -> None:
        if self._watch and not self._watch.done():
            self._watch.cancel()

    async def response_ended(self) -> bool:
        """After a whole response: stop watching for a hang-up; whether the connection can take
        the client's next request (False if the client left or sent something meanwhile)."""
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.remove_done_callback(self._hung_up)
            watch.cancel()
            await asyncio.wait([watch])  # the reader is free again once the cancel has landed
            if not watch.cancelled():  # it read a byte (or the end): the client left or sent early
                watch.exception()
                self.gone.set()
        return not self.gone.is_set()

    async def write(self, data: bytes) -> None:
        if self.gone.is_set():
            raise ClientGone
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            self.gone.set()
            raise ClientGone from exc

    async def sleep(self, seconds: float) -> None:
        """Sleep, but wake up (raising ClientGone) as soon as the client hangs up."""
        if self.gone.is_set():
            raise ClientGone
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        try:
            await asyncio.wait_for(self.gone.wait(), seconds)
        except TimeoutError:
            return
        raise ClientGone

    async def send_json(
        self, status: int, payload: Any, *, headers: dict[str, str] | None = None, close: bool = False
    ) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode()
        head = {"Content-Type": "application/json", "Content-Length": str(len(body)), **(headers or {})}
        if close:
            head["Connection"] = "close"
        await self.write(_status_line(status, head) + body)


def _status_line(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_HTTP_REASONS.get(status, 'Status')}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def error_payload(status: int, message: str) -> dict[str, Any]:
    return {"error": {"code": status, "message": message, "metadata": {}}}


class SSEWriter:
    """Chunked ``text/event-stream`` body with the script's line-ending and data-line options."""

    def __init__(self, conn: Connection, script: dict[str, Any], *, keep_alive: bool = True) -> None:
        self.conn = conn
        self.keep_alive = keep_alive
        self.newline = "\r\n" if script.get("sse_crlf") else "\n"
        self.prefix = "data:" if script.get("sse_no_space") else "data: "
        self.multiline = bool(script.get("sse_multiline"))

    async def open(self) -> None:
        headers = {
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "Transfer-Encoding": "chunked",
        }
        if not self.keep_alive:  # a fault's response: the connection is not reused after it
            headers["Connection"] = "close"
        await self.conn.write(_status_line(200, headers))

    async def raw(self, text: str) -> None:
        data = text.encode()
        await self.conn.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    async def data(self, payload: Any) -> None:
        if isinstance(payload, str):
            lines = [payload]
        elif self.multiline:
            lines = json.dumps(payload, indent=1).split("\n")
        else:
            lines = [json.dumps(payload, ensure_ascii=False)]
        await self.raw("".join(self.prefix + line + self.newline for line in lines) + self.newline)

    async def comment(self, text: str = "OPENROUTER PROCESSING") -> None:
        await self.raw(f": {text}{self.newline}{self.newline}")

    async def end(self) -> None:
        # The response is complete from here on: a client closing now has not cut it short.
        with contextlib.suppress(ClientGone):
            await self.conn.write(b"0\r\n\r\n")


# =========================================================================== the server


class ScriptedUpstream:
    """The scripted OpenAI-compatible server. See the module docstring for the script format."""

    def __init__(
        self,
        scripts: dict[str, Any] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        time_scale: float = 1.0,
    ) -> None:
        self.host = host
        self.port = port
        self.time_scale = time_scale
        self.scripts = validate_scripts(DEMO_SCRIPTS if scripts is None else scripts)
        self.requests: list[dict[str, Any]] = []
        self.disconnects: list[str] = []
        self.connections = 0  # TCP connections accepted
        self._counts: dict[str, int] = {}
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    # ----------------------------------------------------------------------- lifecycle

    async def start(self) -> ScriptedUpstream:
        self._loop = asyncio.get_running_loop()
        # A burst of hundreds of calls connects at once (the bench: 150 runs × 3 members): with
        # asyncio's default backlog of 100 the kernel drops the SYNs past it, and those calls
        # connect only on the client's retransmit, a second later.
        self._server = await asyncio.start_server(self._serve, self.host, self.port, backlog=LISTEN_BACKLOG)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def aclose(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> ScriptedUpstream:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def start_in_thread(self) -> ScriptedUpstream:
        """Run on its own event loop in a daemon thread, for synchronous callers."""
        ready = threading.Event()
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.start())
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="scripted-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("The scripted upstream did not start.")
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self.aclose(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
        self._thread = None

    # ----------------------------------------------------------------------- control

    def set_scripts(self, scripts: dict[str, Any]) -> None:
        self.scripts = validate_scripts(scripts)
        self._counts.clear()

    def reset(self) -> None:
        self.requests.clear()
        self.disconnects.clear()
        self._counts.clear()

    def requests_for(self, model: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["model"] == model]

    async def wait_for_disconnect(self, model: str, timeout: float = 2.0) -> bool:
        """True once a hang-up from *model*'s client was recorded (it is noticed asynchronously)."""
        deadline = time.monotonic() + timeout
        while model not in self.disconnects:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    # ----------------------------------------------------------------------- connections

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        conn = Connection(reader, writer)
        try:
            while True:
                try:
                    request = await conn.read_request()
                except ValueError:
                    await conn.send_json(413, error_payload(413, "Request body too large"), close=True)
                    break
                if request is None or not await self._route(conn, request) or not request.keep_alive:
                    break
        except (ClientGone, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            conn.stop_watching()
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _route(self, conn: Connection, request: HTTPRequest) -> bool:
        """Answer one request; False when the connection must close afterwards."""
        route = (request.method, request.path.rstrip("/"))
        if route == ("POST", "/v1/chat/completions"):
            return await self._chat(conn, request)
        if route == ("GET", "/v1/models"):
            await conn.send_json(200, {"data": self._model_list()})
        elif route == ("GET", "/_scripted/requests"):
            await conn.send_json(200, {"requests": self.requests})
        elif route == ("GET", "/_scripted/disconnects"):
            await conn.send_json(200, {"disconnects": self.disconnects})
        elif route == ("GET", "/_scripted/scripts"):
            await conn.send_json(200, self.scripts)
        elif route == ("POST", "/_scripted/scripts"):
            try:
                self.set_scripts(json.loads(request.body or b"null"))
            except ValueError as exc:  # JSONDecodeError is a ValueError too
                await conn.send_json(400, error_payload(400, str(exc)))
            else:
                await conn.send_json(200, {"ok": True, "models": sorted(self.scripts)})
        elif route == ("POST", "/_scripted/reset"):
            self.reset()
            await conn.send_json(200, {"ok": True})
        else:
            await conn.send_json(404, error_payload(404, f"No route for {request.method} {request.path}"))
        return True

    def _model_list(self) -> list[dict[str, Any]]:
        return [
            {
                "id": model,
                "name": script.get("name") or model.split("/")[-1].replace("-", " ").title(),
                "context_length": int(script.get("context_length", 128000)),
                "pricing": script.get("pricing") or default_pricing(model),
            }
            for model, script in self.scripts.items()
            if model != "*"
        ]

    # ----------------------------------------------------------------------- chat completions

    async def _chat(self, conn: Connection, request: HTTPRequest) -> bool:
        try:
            body = json.loads(request.body)
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            await conn.send_json(400, error_payload(400, "Request body is not a JSON object"))
            return True
        model = str(body.get("model") or "")
        self._record(model, body, request.headers)
        script = self.scripts.get(model, self.scripts.get("*"))
        if script is None:
            await conn.send_json(404, error_payload(404, f"{model} is not a valid model ID"))
            return True
        self._counts[model] = self._counts.get(model, 0) + 1
        no_tools = script.get("no_tools_support")
        if no_tools and body.get("tools"):
            status = 400 if no_tools == 400 else 404
            message = f"{model} does not support tools" if status == 400 else NO_TOOL_ENDPOINTS
            await conn.send_json(status, error_payload(status, message))
            return True
        fault = fault_for(script, self._counts[model])
        if fault and fault["type"] == "http":
            await self._http_fault(conn, fault, model, request.headers)
            return True
        plan = make_plan(model, script, body, fault)
        conn.watch_for_hangup()
        try:
            if body.get("stream") and not script.get("ignore_stream"):
                await self._stream(conn, plan, script, fault)
            else:
                await self._complete(conn, plan, script, fault)
        except ClientGone:
            self.disconnects.append(model)
            return False
        # Like a provider, a connection whose answer ended cleanly takes the next request.
        return await conn.response_ended() and fault is None

    def _record(self, model: str, body: dict[str, Any], headers: dict[str, str]) -> None:
        safe_headers = dict(headers)
        if "authorization" in safe_headers:
            # Never the key itself; a short digest lets tests tell which key was sent.
            key = safe_headers["authorization"].removeprefix("Bearer ").strip()
            safe_headers["authorization"] = "Bearer [redacted]"
            safe_headers["authorization-sha256"] = hashlib.sha256(key.encode()).hexdigest()[:16]
        params = {k: v for k, v in body.items() if k not in ("model", "messages")}
        self.requests.append(
            {
                "time": time.time(),
                "model": model,
                "messages": body.get("messages"),
                "params": params,
                "headers": safe_headers,
            }
        )

    async def _http_fault(self, conn: Connection, fault: dict[str, Any], model: str, headers: dict[str, str]) -> None:
        status = int(fault["status"])
        api_key = headers.get("authorization", "").removeprefix("Bearer ").strip()
        template = str(fault.get("message") or _DEFAULT_ERRORS.get(status, "Upstream error"))
        message = template.replace("{model}", model).replace("{api_key}", api_key)
        extra = {}
        if fault.get("retry_after") is not None:
            extra["Retry-After"] = _seconds(float(fault["retry_after"]) * self.time_scale)
        await conn.send_json(status, error_payload(status, message), headers=extra)

    def _delay(self, ms: Any) -> float:
        return float(ms or 0) / 1000 * self.time_scale

    def _chunk_delay(self, script: dict[str, Any], piece: str) -> float:
        rate = float(script.get("tokens_per_s") or 0)
        return (len(piece) / 4) / rate * self.time_scale if rate > 0 else 0.0

    async def _wait(self, conn: Connection, sse: SSEWriter | None, seconds: float, keepalive: float) -> None:
        """Wait *seconds* (math.inf: until the client leaves), with keep-alive comments if asked."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if sse is None or keepalive <= 0:
                await conn.sleep(min(left, 3600))
                continue
            await conn.sleep(min(left, keepalive))
            if deadline - time.monotonic() > 0:
                await sse.comment()

    async def _stream(self, conn: Connection, plan: Plan, script: dict[str, Any], fault: dict[str, Any] | None) -> None:
        sse = SSEWriter(conn, script, keep_alive=fault is None)
        await sse.open()
        keepalive = self._delay(script.get("keepalive_ms"))
        if fault and fault["type"] == "keepalive_only":
            await self._wait(conn, sse, math.inf, keepalive or self._delay(1000))
        await self._wait(conn, sse, self._delay(script.get("ttft_ms")), keepalive)

        chunk = _ChunkFactory(plan.model)
        size = int(script.get("chunk_chars") or 16)
        await sse.data(chunk.delta({"role": "assistant", "content": ""}))
        for piece in _pieces(plan.reasoning, size):
            details = [{"type": "reasoning.text", "text": piece, "format": "unknown", "index": 0}]
            await sse.data(chunk.delta({"content": "", "reasoning": piece, "reasoning_details": details}))
            await conn.sleep(self._chunk_delay(script, piece))

        cut = int(fault.get("after_chars", len(plan.content) // 2)) if fault else len(plan.content)
        await self._stream_content(conn, sse, chunk, script, plan.content[:cut], size)
        if fault and not await self._stream_fault(conn, sse, chunk, fault, keepalive):
            return
        await self._stream_content(conn, sse, chunk, script, plan.content[cut:], size)

        for index, call in enumerate(plan.tool_calls):
            head = {
                "index": index,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": ""},
            }
            await sse.data(chunk.delta({"tool_calls": [head]}))
            for piece in _pieces(call["arguments"], size):
                await sse.data(chunk.delta({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
                await conn.sleep(self._chunk_delay(script, piece))

        if plan.annotations:
            await sse.data(chunk.delta({"content": "", "annotations": plan.annotations}))
        await sse.data(chunk.delta({}, finish=plan.finish_reason))
        # OpenRouter sends usage in a last chunk whose choices list is empty.
        await sse.data({**chunk.base(), "choices": [], "usage": plan.usage})
        await sse.data("[DONE]")
        await sse.end()

    async def _stream_content(
        self, conn: Connection, sse: SSEWriter, chunk: _ChunkFactory, script: dict[str, Any], text: str, size: int
    ) -> None:
        for piece in _pieces(text, size):
            await sse.data(chunk.delta({"content": piece}))
            await conn.sleep(self._chunk_delay(script, piece))

    async def _stream_fault(
        self, conn: Connection, sse: SSEWriter, chunk: _ChunkFactory, fault: dict[str, Any], keepalive: float
    ) -> bool:
        """Misbehave at the fault's point in the content; False when that ends the response."""
        kind = fault["type"]
        if kind == "error_mid_stream":
            error = {
                "code": int(fault.get("code", 502)),
                "message": str(fault.get("message", "Provider returned error")),
            }
            await sse.data({**chunk.delta({"content": ""}, finish="error"), "error": error})
            await sse.end()
            return False
        if kind == "eof":
            if fault.get("abrupt"):
                conn.writer.transport.abort()
            else:
                await sse.end()
            return False
        if kind == "hang":
            await self._wait(conn, sse, math.inf, keepalive)
        if kind == "malformed_chunk":
            await sse.data('{"id": "gen-broken", "choices": [{"index": 0, "delta": {"content": "')
        return True

    async def _complete(
        self, conn: Connection, plan: Plan, script: dict[str, Any], fault: dict[str, Any] | None
    ) -> None:
        fault_type = fault["type"] if fault else None
        if fault_type in ("hang", "keepalive_only"):
            await self._wait(conn, None, math.inf, 0)
        if fault_type == "eof":
            conn.writer.transport.abort()
            return
        generation = self._chunk_delay(script, plan.content + plan.reasoning)
        await self._wait(conn, None, self._delay(script.get("ttft_ms")) + generation, 0)
        if fault is not None and fault_type == "error_mid_stream":
            status = int(fault.get("code", 502))
            await conn.send_json(
                status, error_payload(status, str(fault.get("message", "Provider returned error"))), close=True
            )
            return
        message: dict[str, Any] = {"role": "assistant", "content": plan.content}
        if plan.reasoning:
            message["reasoning"] = plan.reasoning
        if plan.annotations:
            message["annotations"] = plan.annotations
        if plan.tool_calls:
            message["tool_calls"] = [
                {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                for c in plan.tool_calls
            ]
        completion = {
            **_ChunkFactory(plan.model).base(),
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": plan.finish_reason}],
            "usage": plan.usage,
        }
        await conn.send_json(200, completion, close=fault is not None)


class _ChunkFactory:
    def __init__(self, model: str) -> None:
        self.model = model
        self.id = f"gen-{hashlib.sha1(f'{model}{time.time_ns()}'.encode()).hexdigest()[:16]}"
        self.created = int(time.time())

    def base(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "provider": "Scripted",
        }

    def delta(self, delta: dict[str, Any], *, finish: str | None = None) -> dict[str, Any]:
        return {**self.base(), "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _seconds(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.3f}".rstrip("0")


# =========================================================================== CLI


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Scripted OpenAI-compatible upstream for tests and demos.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--scripts", help="JSON file of scripts (default: the built-in demo panel)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="multiply every delay (0.1 = 10× faster)")
    args = parser.parse_args(argv)
    scripts = DEMO_SCRIPTS
    if args.scripts:
        try:
            with open(args.scripts, encoding="utf-8") as handle:
                scripts = validate_scripts(json.load(handle))
        except (OSError, ValueError) as exc:
            parser.error(f"--scripts {args.scripts}: {exc}")

    async def serve() -> None:
        async with ScriptedUpstream(scripts, host=args.host, port=args.port, time_scale=args.time_scale) as up:
            print(up.base_url, flush=True)
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
