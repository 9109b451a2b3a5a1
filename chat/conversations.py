"""Conversations: selectors and services (HackSoft style), plus their exports.

Every lookup goes through the owner: another user's conversation is "not found", exactly like a
missing one, so ids reveal nothing.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db import connection, transaction
from django.db.models import Q, QuerySet
from django.db.models.expressions import RawSQL
from django.utils import timezone
from django.utils.text import slugify

from chat import usage
from chat.errors import NotFound
from chat.models import AnswerFeedback, Conversation, FollowUpMode, Run, RunStatus, Turn
from chat.panels import default_panel

# The one serialiser of a run: page state and exports.
from chat.runs.state import RunState, feedback_summary, turn_summary

DEFAULT_TITLE = "New conversation"
EXPORT_FORMAT_VERSION = 1

# --------------------------------------------------------------------------- selectors


def conversation_list_for_user(*, user: User, q: str = "") -> QuerySet[Conversation]:
    """The user's conversations, newest activity first.

    With *q*: those whose title contains it, or whose prompts or fused answers (of finished runs)
    hold every word of it, each as a word or the start of one ("tide" finds "tides").
    """
    qs = Conversation.objects.filter(user=user)
    q = (q or "").strip()
    if q:
        matches = Q(title__icontains=q)
        words = search_words(q)
        if words:
            matches |= _text_matches(words)
        qs = qs.filter(matches)
    return qs.order_by("-updated_at", "-id")


SEARCH_MAX_WORDS = 12


def search_words(q: str) -> list[str]:
    """The words of a search, letters and digits only: quotes, ``*``, ``-``, parentheses and the
    like never reach the query language, and ``NEAR`` or ``OR`` are plain words."""
    return re.findall(r"[^\W_]+", q)[:SEARCH_MAX_WORDS]


def _text_matches(words: list[str]) -> Q:
    """Conversations with a turn whose prompt, or a finished run's fused answer, has every word.

    Not filtered by owner: the caller's queryset is. SQLite: the FTS5 table of migration 0008
    (a turn's prompt and answers together); PostgreSQL: full text search on the expressions its
    GIN indexes cover.
    """
    if connection.vendor == "sqlite":
        # Each word a quoted prefix term: FTS5 syntax in the input is only ever text.
        match = " ".join(f'"{w}"*' for w in words)
        sql = (
            "SELECT t.conversation_id FROM chat_turn_search s JOIN chat_turn t ON t.id = s.rowid "
            "WHERE chat_turn_search MATCH %s"
        )
        return Q(pk__in=RawSQL(sql, (match,)))
    if connection.vendor == "postgresql":
        from django.contrib.postgres.search import SearchQuery, SearchVector

        query = SearchQuery(" & ".join(f"'{w}':*" for w in words), config="simple", search_type="raw")
        turns = Turn.objects.annotate(text=SearchVector("prompt", config="simple")).filter(text=query)
        runs = (
            Run.objects.exclude(status=RunStatus.RUNNING)
            .annotate(text=SearchVector("answer", config="simple"))
            .filter(text=query)
        )
        return Q(pk__in=turns.values("conversation_id")) | Q(pk__in=runs.values("conversation_id"))
    return Q(pk__in=[])  # another database: titles only


def conversation_get_for_user(*, user: User, pk: int) -> Conversation:
    """The user's conversation ``pk``; NotFound for a missing id and for someone else's."""
    try:
        return Conversation.objects.get(pk=pk, user=user)
    except Conversation.DoesNotExist:
        raise NotFound("No such conversation.") from None


def conversation_panel(*, conversation: Conversation | None) -> dict[str, Any]:
    """The panel the composer starts from: the conversation's own, else the server defaults."""
    if conversation is not None and conversation.panel and conversation.panel.get("members"):
        return conversation.panel
    return default_panel()


def conversation_turns(*, conversation: Conversation) -> list[tuple[Turn, Run | None]]:
    """Each turn with its latest run (a retry or a regenerate adds runs to the same turn)."""
    turns = list(conversation.turns.order_by("index").prefetch_related("runs__members"))
    result: list[tuple[Turn, Run | None]] = []
    for turn in turns:
        runs = turn_runs(turn)
        result.append((turn, runs[-1] if runs else None))
    return result


def turn_runs(turn: Turn) -> list[Run]:
    """Every run (version) of a turn, oldest first: the original, retries, rewrites."""
    return sorted(turn.runs.all(), key=lambda r: (r.created_at, str(r.pk)))


VERSION_KINDS = {
    "retry_member": "member retried",
    "rewrite": "rewritten",
    "retry_stopped": "stopped members retried",
    "resend": "prompt resent",
    "fuse": "re-fused",
}


def version_title(run: Run, number: int, count: int) -> str:
    """ "Version 2 of 3 — rewritten with sim/writer · 2026-06-01 12:00" (the Markdown export)."""
    version = (run.config or {}).get("version") or {}
    what = VERSION_KINDS.get(version.get("kind", ""), "original")
    if version.get("kind") == "rewrite":
        what += f" with {run.writer_model}"
    elif version.get("kind") == "retry_member" and isinstance(version.get("slot"), int):
        member = next((m for m in run.members.all() if m.slot == version["slot"]), None)
        what += f": {member.model}" if member else ""
    return f"Version {number} of {count} — {what} · {run.created_at:%Y-%m-%d %H:%M} UTC"


def conversation_turns_state(*, conversation: Conversation) -> list[dict[str, Any]]:
    """The page's initial state: one run state per turn, in the snapshot shape of the protocol."""
    states: list[dict[str, Any]] = []
    verdicts = {f.run_id: f for f in AnswerFeedback.objects.filter(run__conversation=conversation)}
    for turn, run in conversation_turns(conversation=conversation):
        if run is None:
            # A turn whose run never got going: show the prompt, nothing else.
            states.append(
                {
                    "run": None,
                    "client_run_id": None,
                    "status": "error",
                    "phase": "done",
                    "turn": turn_summary(turn),
                    "members": [],
                    "analysis": None,
                    "final": {"content": "", "blocks_html": "", "consumed": 0},
                    "error": {"kind": "missing", "message": "This turn has no run."},
                }
            )
            continue
        # Every run of the turn is a version the page can show (‹ 1/3 ›); the newest by default.
        versions = []
        for version in turn_runs(turn):
            state = RunState.from_rows(version)
            # Every call of the turn, from the ledger: the footer's totals and the receipt.
            state.receipt = usage.turn_receipt(turn_id=turn.pk, shown_run_id=version.pk)
            state.feedback = feedback_summary(verdicts.get(version.pk))  # the user's accept or reject
            versions.append(state.snapshot())
        states.append({**versions[-1], "versions": versions})
    return states


def run_started(*, user: User, client_run_id: str) -> bool:
    """Whether a run with this client-generated id exists (a start was received)."""
    return Run.objects.filter(user=user, client_run_id=client_run_id).exists()


def conversation_sidebar_groups(
    conversations: QuerySet[Conversation] | list[Conversation], *, now: datetime | None = None
) -> list[tuple[str, list[Conversation]]]:
    """Split a newest-first list into Today / Yesterday / Previous 7 days / Older."""
    now = timezone.localtime(now or timezone.now())
    today = now.date()
    groups: dict[str, list[Conversation]] = {}
    for conversation in conversations:
        day = timezone.localtime(conversation.updated_at).date()
        if day >= today:
            name = "Today"
        elif day == today - timedelta(days=1):
            name = "Yesterday"
        elif day > today - timedelta(days=7):
            name = "Previous 7 days"
        else:
            name = "Older"
        groups.setdefault(name, []).append(conversation)
    return list(groups.items())


# --------------------------------------------------------------------------- services


def conversation_create(
    *,
    user: User,
    panel: dict[str, Any] | None = None,
    follow_up_mode: str | None = None,
) -> Conversation:
    """A conversation to write in.

    Reuses the user's newest conversation that has no turn yet, so pressing "New conversation"
    twice does not leave a trail of empty ones in the sidebar.
    """
    with transaction.atomic():
        conversation = (
            Conversation.objects.filter(user=user, turns__isnull=True, title=DEFAULT_TITLE)
            .order_by("-updated_at", "-id")
            .first()
        )
        if conversation is None:
            conversation = Conversation(user=user, title=DEFAULT_TITLE)
        if panel is not None:
            conversation.panel = panel
        if follow_up_mode is not None:
            conversation.follow_up_mode = follow_up_mode
        conversation.updated_at = timezone.now()
        conversation.save()
    return conversation


def conversation_rename(*, conversation: Conversation, title: str) -> Conversation:
    """Rename without touching ``updated_at``: renaming is not activity, the order stays."""
    conversation.title = title.strip()[:200] or DEFAULT_TITLE
    conversation.save(update_fields=["title"])
    return conversation


def conversation_delete(*, conversation: Conversation) -> None:
    """Delete a conversation with its turns, runs and answers.

    A run still streaming in it is stopped first, so its upstream streams close (and stop
    billing); its last writes then match no rows.
    """
    from chat.runs import manager

    manager.cancel_conversation(conversation.pk)
    conversation.delete()


def conversation_update_settings(
    *, conversation: Conversation, panel: dict[str, Any], follow_up_mode: str
) -> Conversation:
    """Store the panel (already validated by chat.panels.parse_panel) and the follow-up mode.

    A panel written by hand is no longer a preset's: the preset references are cleared.
    """
    if follow_up_mode not in FollowUpMode.values:
        raise ValueError(f"unknown follow-up mode {follow_up_mode!r}")
    conversation.panel = panel
    conversation.follow_up_mode = follow_up_mode
    conversation.preset, conversation.builtin_preset = None, ""
    conversation.save(update_fields=["panel", "follow_up_mode", "preset", "builtin_preset"])
    return conversation


# --------------------------------------------------------------------------- exports


def conversation_export_json(*, conversation: Conversation) -> dict[str, Any]:
    """Everything stored about a conversation. ``runs`` lists every run of a turn, oldest first;
    the last one is the one the page shows."""
    turns = []
    for turn in conversation.turns.order_by("index"):
        runs = turn.runs.order_by("created_at", "pk").prefetch_related("members")
        turns.append(
            {
                "index": turn.index,
                "prompt": turn.prompt,
                "context": turn.context or [],
                "created_at": turn.created_at.isoformat(),
                "runs": [RunState.from_rows(r).export() for r in runs],
            }
        )
    return {
        "format": "fusion-chatroom.conversation",
        "version": EXPORT_FORMAT_VERSION,
        "exported_at": timezone.now().isoformat(),
        "conversation": {
            "id": conversation.pk,
            "title": conversation.title,
            "follow_up_mode": conversation.follow_up_mode,
            "panel": conversation.panel,
            "created_at": conversation.created_at.isoformat(),
            "updated_at": conversation.updated_at.isoformat(),
        },
        "turns": turns,
    }


def _fmt_ms(ms: Any) -> str:
    if ms is None:
        return "–"
    ms = int(ms)
    return f"{ms} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


def _fmt_usage(usage: dict[str, Any] | None) -> str:
    usage = usage or {}
    parts = []
    if usage.get("total_tokens") or usage.get("completion_tokens"):
        parts.append(
            f"{usage.get('total_tokens', 0)} tokens "
            f"({usage.get('prompt_tokens', 0)} in, {usage.get('completion_tokens', 0)} out)"
        )
    if usage.get("cost") is not None:
        parts.append(f"cost {float(usage['cost']):.6f}")
    return ", ".join(parts) or "–"


def _analysis_markdown(analysis: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if analysis.get("consensus"):
        out += ["", "**Consensus**", ""] + [f"- [x] {c}" for c in analysis["consensus"]]
    if analysis.get("contradictions"):
        out += ["", "**Contradictions**", ""]
        for c in analysis["contradictions"]:
            out.append(f"- {c.get('topic', '')}")
            for s in c.get("stances", []):
                out.append(f"  - {s.get('model', '')}: {s.get('stance', '')}")
    if analysis.get("partial_coverage"):
        out += ["", "**Partial coverage**", ""]
        for p in analysis["partial_coverage"]:
            out.append(f"- {p.get('point', '')} ({', '.join(p.get('models', []))})")
    if analysis.get("unique_insights"):
        out += ["", "**Unique insights**", ""]
        for u in analysis["unique_insights"]:
            out.append(f"- {u.get('model', '')}: {u.get('insight', '')}")
    if analysis.get("blind_spots"):
        out += ["", "**Blind spots**", ""] + [f"- {b}" for b in analysis["blind_spots"]]
    return out


def _md_link(source: dict[str, Any]) -> str:
    """A source as a Markdown link; brackets in the title and spaces/parentheses in the URL escaped."""
    url = str(source.get("url") or "")
    title = " ".join(str(source.get("title") or "").split()) or url
    title = title.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")
    url = url.replace(" ", "%20").replace("(", "%28").replace(")", "%29")
    return f"[{title}]({url})"


def _tool_call_line(call: dict[str, Any]) -> str:
    args = call.get("arguments") or {}
    what = args.get("query") or args.get("url") or call.get("name") or "tool"
    outcome = call.get("summary") or call.get("status") or ""
    mark = "✗" if call.get("ok") is False else "✓"
    return f"- {mark} {call.get('name') or 'tool'}: {what} — {outcome}".rstrip(" —")


def conversation_export_markdown(*, conversation: Conversation) -> str:
    """A readable transcript: every turn with every version of it (its runs), oldest first."""
    lines = [f"# {conversation.title}", ""]
    lines.append(f"Exported {timezone.now():%Y-%m-%d %H:%M} UTC from Fusion chatroom.")
    for turn, _ in conversation_turns(conversation=conversation):
        lines += ["", "---", "", f"## Turn {turn.index + 1}", ""]
        if turn.context:
            lines += ["### Sent before the prompt (API)", ""]
            lines += [f"**{m.get('role', '')}:** {m.get('content') or ''}" for m in turn.context] + [""]
        lines += ["### Prompt", "", turn.prompt]
        runs = turn_runs(turn)
        for number, run in enumerate(runs, start=1):
            if len(runs) > 1:
                lines += ["", f"### {version_title(run, number, len(runs))}"]
            lines += ["", "### Panel"]
            for m in run.members.order_by("slot"):
                lines += ["", f"#### {m.model} — {m.status}", ""]
                for note in m.notes or []:
                    lines += [f"> {note}", ""]
                if m.tool_calls:
                    lines += ["Web research:", ""] + [_tool_call_line(c) for c in m.tool_calls] + [""]
                if m.content:
                    lines.append(m.content)
                if m.sources:
                    lines += ["", "Sources:", ""] + [f"- {_md_link(src)}" for src in m.sources]
                if m.error_message:
                    lines += ["", f"> Error ({m.error_kind or 'error'}): {m.error_message}"]
                lines += [
                    "",
                    f"*TTFT {_fmt_ms(m.ttft_ms)} · duration {_fmt_ms(m.duration_ms)} · {_fmt_usage(m.usage)}*",
                ]
            lines += ["", "### Analysis"]
            if run.analysis:
                lines += ["", f"Analyst: {run.analyst_model or '–'}"]
                lines += _analysis_markdown(run.analysis)
                if run.label_map:
                    lines += ["", "Labels: " + ", ".join(f"{k} = {v}" for k, v in run.label_map.items())]
            else:
                lines += ["", f"No analysis. {run.analysis_error}".strip()]
            lines += ["", f"### Fused answer ({run.writer_model or 'writer'})", ""]
            lines.append(run.answer or "*No fused answer.*")
            if run.sources:
                lines += ["", "### Sources", ""]
                for src in run.sources:
                    used_by = ", ".join(src.get("members") or [])
                    lines.append(f"- {_md_link(src)}" + (f" ({used_by})" if used_by else ""))
            if run.error_message:
                lines += ["", f"> Run {run.status}: {run.error_message}"]
            lines += [
                "",
                f"*Run {run.status} · wall time {_fmt_ms(run.wall_ms())} · {_fmt_usage(run.usage)}"
                + (f" · failed: {', '.join(run.failed_models)}" if run.failed_models else "")
                + "*",
            ]
    return "\n".join(lines).rstrip() + "\n"


def conversation_export_filename(*, conversation: Conversation, ext: str) -> str:
    slug = slugify(conversation.title)[:60] or "conversation"
    return f"fusion-{conversation.pk}-{slug}.{ext}"
