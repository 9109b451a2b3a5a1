"""Rendering by blocks: :func:`render_markdown` for a whole text (cut into bounded units) and
:class:`IncrementalRenderer` for a stream (each finished block rendered once, the tail left as
text). Framework-free: no Django.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from markdown.extensions.attr_list import get_attrs_and_remainder

from chat.render.bounds import (
    ETX,
    FENCE_OPEN_RE,
    MAX_BLOCK_CHARS,
    MAX_BLOCK_LINES,
    MAX_RENDER_CHARS,
    RENDER_BUDGET_S,
    STX,
    is_blank,
)
from chat.render.safe import render_big_block, render_escaped, render_unit


def render_markdown(text: str) -> str:
    """Render untrusted Markdown to sanitized HTML, in bounded time and memory (see Bounds)."""
    if not text or not text.strip():
        return ""
    if len(text) <= MAX_BLOCK_CHARS and text.count("\n") < MAX_BLOCK_LINES:
        return render_unit(text)
    return _render_long(text)


def _render_long(text: str) -> str:
    """A text over one unit's limits: its blocks grouped into units, within the budget."""
    deadline = time.monotonic() + RENDER_BUDGET_S
    splitter = _BlockSplitter()
    splitter.feed(text[:MAX_RENDER_CHARS])
    if len(text) <= MAX_RENDER_CHARS:
        splitter.finish()
    parts: list[str] = []
    unit: list[str] = []
    unit_chars = unit_lines = 0

    def flush() -> None:
        nonlocal unit, unit_chars, unit_lines
        if unit:
            source = "".join(unit)
            # Out of time: the rest is shown as escaped text, which costs next to nothing. The first
            # unit is always rendered (one unit is bounded), so a busy machine still shows Markdown.
            in_time = not parts or time.monotonic() < deadline
            rendered = render_unit(source) if in_time else render_escaped(source)
            parts.append(rendered.strip())
        unit, unit_chars, unit_lines = [], 0, 0

    for block in splitter.sources:
        lines = block.count("\n")
        if unit and (unit_chars + len(block) > MAX_BLOCK_CHARS or unit_lines + lines >= MAX_BLOCK_LINES):
            flush()
        if len(block) > MAX_BLOCK_CHARS or lines >= MAX_BLOCK_LINES:
            parts.append(render_big_block(block))
            continue
        unit.append(block)
        unit_chars += len(block)
        unit_lines += lines
    flush()
    rest = text[splitter.consumed :]
    if rest.strip():
        parts.append(render_escaped(rest))
    return "\n".join(p for p in parts if p)


# ---------------------------------------------------------------------------
# Incremental rendering
# ---------------------------------------------------------------------------


@dataclass
class RenderUpdate:
    """What one :meth:`IncrementalRenderer.feed` (or ``finish``) produced.

    ``blocks``: sanitized HTML of the blocks finished by this call, in order (each block
    is rendered and reported exactly once).  ``tail``: the raw, unfinished source text
    after the last finished block; show it as escaped text only (``textContent``, or
    :func:`render_plain_escaped` server-side).  ``consumed``: number of source characters
    covered by all finished blocks so far (``tail == source[consumed:]``).
    """

    blocks: list[str] = field(default_factory=list)
    tail: str = ""
    consumed: int = 0
    done: bool = False


# A finished block's source, and whether it is past MAX_RENDER_CHARS (shown escaped).
BlockSource = tuple[str, bool]


@dataclass
class PendingBlocks:
    """What :meth:`IncrementalRenderer.split` cut off: the sources still to render, and the
    tail and ``consumed`` the ``RenderUpdate`` will carry."""

    sources: list[BlockSource]
    tail: str = ""
    consumed: int = 0
    done: bool = False


def render_sources(sources: list[BlockSource]) -> list[str]:
    """Each source's sanitised HTML, as :func:`render_markdown` (or, past the limit,
    ``render_escaped``) gives it. Pure, and its input and output are plain strings:
    ``chat.render.pool`` runs it in worker processes."""
    return [render_escaped(s) if escaped else render_markdown(s) for s, escaped in sources]


# Exactly Python-Markdown's fenced_code opening line (FENCED_BLOCK_RE), for one line.
_LIST_ITEM_RE = re.compile(r"^[ \t]*(?:[*+-]|\d+[.)])(?:[ \t]|$)")
_QUOTE_RE = re.compile(r"^[ \t]*>")
# A line prefix that may still turn into a list marker once more text arrives.
_MAYBE_LIST_PREFIX_RE = re.compile(r"^(?:[*+-]|\d+[.)]?)$")

_SPLIT, _JOIN, _UNKNOWN = "split", "join", "unknown"


class IncrementalRenderer:
    """Render a streamed Markdown answer block by block.

    Block rule (a block is the source text between two boundaries):

    * Only complete lines are scanned, each exactly once; ``` / ~~~ fences are tracked
      the way Python-Markdown's fenced_code sees them (fence at column 0, closed by the
      identical fence string).  Nothing inside an open fence is ever a boundary, and an
      unclosed fence keeps everything after it in the tail until :meth:`finish`.
    * A boundary is placed just before the first non-blank line that follows one or more
      blank lines outside a fence, **unless** that line may continue the previous block:
        - it is indented (space or tab) - list-item continuation or indented code;
        - it looks like a list item (``-``/``*``/``+``/``1.``/``1)``) and the previous
          paragraph (text since the last blank line) contained a list item line or
          continued one (a loose list stays one ``<ul>``/``<ol>``);
        - it starts with ``>`` and the previous paragraph contained a ``>`` line
          (consecutive quotes stay one ``<blockquote>``).
      The decision is taken as soon as the first characters of that line settle it, so a
      finished paragraph is rendered when the next block starts, not when it ends.
    * :meth:`finish` renders whatever is left as the last block.

    Joining is always safe (a longer block renders exactly like that slice of the whole
    text); the rule only splits where Python-Markdown starts an independent top-level
    element, so ``"\\n".join(all blocks)`` equals ``render_markdown(whole text)`` for
    ordinary input.  Known difference: reference-style links whose definition lives in a
    *different* block stay unresolved (shown as text) in the live view.

    Cost: each ``feed`` scans only the new text (plus the current partial line once it
    completes) and renders only newly finished blocks, so the Markdown converter runs
    once per block, not once per delta.  ``tail`` is a string copy of the unfinished part.
    """

    def __init__(self) -> None:
        self._pending = ""  # source text after the last boundary (== tail)
        self._line_start = 0  # offset in _pending of the first not yet scanned line
        self._search_from = 0  # where to resume looking for "\n" in the partial line
        self.consumed = 0  # source chars in finished blocks
        self.blocks: list[str] = []  # every finished block so far
        self._done = False
        # scanner state
        self._fence: str | None = None  # open fence string, or None
        self._after_blank = False  # saw blank line(s) outside a fence since last text
        self._has_text = False  # current block has a non-blank line
        self._seg_list = False  # current paragraph has/continues a list item
        self._seg_quote = False  # current paragraph has/continues a blockquote

    # -- public API ---------------------------------------------------------

    @property
    def tail(self) -> str:
        return self._pending

    @property
    def done(self) -> bool:
        return self._done

    def snapshot(self) -> RenderUpdate:
        """All finished blocks so far plus the tail (for a reconnecting client)."""
        return RenderUpdate(list(self.blocks), self._pending, self.consumed, self._done)

    def feed(self, delta: str) -> RenderUpdate:
        return self.complete(self.split(delta))

    def finish(self) -> RenderUpdate:
        return self.complete(self.split_finish())

    def split(self, delta: str) -> PendingBlocks:
        """The scan of :meth:`feed` without the rendering: the blocks *delta* finishes, as sources
        to render (anywhere: :func:`render_sources` is a pure function), then :meth:`complete`."""
        if self._done:
            raise RuntimeError("IncrementalRenderer.feed() after finish()")
        sources: list[BlockSource] = []
        if delta:
            self._pending += delta
            self._scan(sources)
        return PendingBlocks(sources, self._pending, self.consumed)

    def split_finish(self) -> PendingBlocks:
        """:meth:`finish` without the rendering (see :meth:`split`)."""
        if self._done:
            return PendingBlocks([], "", self.consumed, True)
        sources: list[BlockSource] = []
        self._emit(len(self._pending), sources)
        self._done = True
        return PendingBlocks(sources, "", self.consumed, True)

    def complete(self, pending: PendingBlocks, rendered: list[str] | None = None) -> RenderUpdate:
        """Take the HTML of *pending*'s sources (rendered here when not given) as finished blocks."""
        html = render_sources(pending.sources) if rendered is None else rendered
        if len(html) != len(pending.sources):
            raise ValueError("one rendered block per source")
        blocks = [b for b in (h.strip() for h in html) if b]  # a block may render to nothing
        self.blocks.extend(blocks)
        return RenderUpdate(blocks, pending.tail, pending.consumed, pending.done)

    # -- internals ----------------------------------------------------------

    def _emit(self, end: int, out: list[BlockSource]) -> None:
        """Cut ``_pending[:end]`` off as one finished block, to be rendered."""
        source, self._pending = self._pending[:end], self._pending[end:]
        self.consumed += end
        self._line_start -= end
        self._search_from = max(0, self._search_from - end)
        # Past the overall limit a block is shown as escaped text, as render_markdown does.
        out.append((source, self.consumed > MAX_RENDER_CHARS))

    def _scan(self, out: list[BlockSource]) -> None:
        pending = self._pending
        while True:
            nl = pending.find("\n", self._search_from)
            if nl < 0:
                self._search_from = len(pending)
                break
            start = self._line_start
            self._line_start = self._search_from = nl + 1
            line = pending[start:nl]
            split_at = self._process_line(line, start)
            if split_at is not None:
                self._emit(split_at, out)
                pending = self._pending
        # Early decision on a partial line that follows blank lines.
        if self._after_blank and self._fence is None and self._has_text:
            # A short prefix settles it; never re-copy a long partial line.
            partial = pending[self._line_start : self._line_start + 64]
            decision = self._decide(_normalize_prefix(partial), partial_line=True)
            if decision == _SPLIT:
                self._after_blank = False
                self._has_text = False
                self._emit(self._line_start, out)
                self._start_segment(indented=False)
            elif decision == _JOIN:
                self._after_blank = False
                self._start_segment(indented=partial[:1] in (" ", "\t"))

    def _start_segment(self, indented: bool) -> None:
        if not indented:
            self._seg_list = self._seg_quote = False

    def _decide(self, line: str | None, partial_line: bool) -> str:
        """Should a boundary go before ``line`` (first non-blank line after blanks)?"""
        if line is None:
            return _UNKNOWN
        if line[:1] in (" ", "\t"):
            if partial_line and is_blank(line):
                return _UNKNOWN
            return _JOIN
        if not line:
            return _UNKNOWN
        if self._seg_list:
            if _LIST_ITEM_RE.match(line):
                return _JOIN
            if partial_line and _MAYBE_LIST_PREFIX_RE.match(line):
                return _UNKNOWN
        if self._seg_quote and line.startswith(">"):
            return _JOIN
        return _SPLIT

    def _process_line(self, raw: str, start: int) -> int | None:
        """Feed one complete source line (without "\\n"); maybe return a split offset."""
        content = raw.replace(STX, "").replace(ETX, "")
        if content.endswith("\r"):
            content = content[:-1]
        split_at: int | None = None
        # A lone "\r" is a line break for Python-Markdown too.
        for i, sub in enumerate(content.split("\r")):
            sub = sub.expandtabs(4)
            if self._fence is not None:
                if sub.rstrip(" ") == self._fence:
                    self._fence = None
                self._note_text(sub)
                continue
            if is_blank(sub):
                if self._has_text:
                    self._after_blank = True
                continue
            if self._after_blank:
                self._after_blank = False
                # Only split at the start of a raw line.
                decision = self._decide(sub, partial_line=False) if i == 0 else _JOIN
                if decision == _SPLIT:
                    split_at = start
                    self._has_text = False
                self._start_segment(indented=sub[:1] == " ")
            m = FENCE_OPEN_RE.match(sub)
            if m and not (m.group("attrs") and get_attrs_and_remainder(m.group("attrs"))[1]):
                self._fence = m.group("fence")
            self._note_text(sub)
        return split_at

    def _note_text(self, sub: str) -> None:
        if is_blank(sub):
            return
        self._has_text = True
        if _LIST_ITEM_RE.match(sub):
            self._seg_list = True
        if _QUOTE_RE.match(sub):
            self._seg_quote = True


def _normalize_prefix(partial: str) -> str | None:
    """Normalise the start of an incomplete line like Python-Markdown would, or None if
    a carriage return makes its first line ambiguous so far."""
    p = partial.replace(STX, "").replace(ETX, "")
    stripped = p.lstrip(" \t")
    if "\r" in p[: len(p) - len(stripped) + 1]:
        return None
    return p.expandtabs(4)


class _BlockSplitter(IncrementalRenderer):
    """IncrementalRenderer's block rule without rendering: ``sources`` are the blocks' texts."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def complete(self, pending: PendingBlocks, rendered: list[str] | None = None) -> RenderUpdate:
        self.sources.extend(source for source, _ in pending.sources)
        return RenderUpdate([], pending.tail, pending.consumed, pending.done)
