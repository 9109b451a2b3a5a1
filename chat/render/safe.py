"""Safe HTML from untrusted Markdown, one conversion at a time: Python-Markdown with raw HTML off
and images as click-to-load links, then nh3 with an allowlist; Pygments' stylesheet.

Owns the allowlists and the per-thread Markdown instance. Framework-free: no Django, and nothing
of the rest of ``chat``. Long texts and streaming are ``chat.render.blocks``' job.
"""

from __future__ import annotations

import html
import logging
import re
import threading
from urllib.parse import urlsplit
from xml.etree import ElementTree as etree

import markdown
import nh3
from markdown.extensions import Extension
from markdown.inlinepatterns import SimpleTagInlineProcessor
from markdown.treeprocessors import Treeprocessor
from pygments.formatters import HtmlFormatter
from pygments.token import STANDARD_TYPES

from chat.render.bounds import bound_nesting

log = logging.getLogger("chat.render")

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


# Built once: building the sanitizer from the allowlists costs more than cleaning a block.
_CLEANER = nh3.Cleaner(
    tags=set(ALLOWED_TAGS),
    attributes={k: set(v) for k, v in ALLOWED_ATTRIBUTES.items()},
    tag_attribute_values={
        tag: {attr: set(values) for attr, values in attrs.items()} for tag, attrs in ALLOWED_ATTRIBUTE_VALUES.items()
    },
    allowed_classes={k: set(v) for k, v in ALLOWED_CLASSES.items()},
    url_schemes=set(URL_SCHEMES),
    url_relative="deny",
    link_rel=LINK_REL,
    strip_comments=True,
)


def _sanitize(fragment: str) -> str:
    return _CLEANER.clean(fragment)


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


def render_plain_escaped(text: str) -> str:
    """Escape text for inclusion in HTML (e.g. the unfinished tail in history views)."""
    return html.escape(text, quote=True)


def render_escaped(text: str) -> str:
    return f"<pre>{render_plain_escaped(text)}</pre>"


_FENCE_RE = re.compile(r"\A[ ]{0,3}(`{3,}|~{3,})[^\n]*\n(.*?)\n?[ ]{0,3}\1[`~]*[ \t]*\n*\Z", re.DOTALL)


def render_big_block(block: str) -> str:
    """A single block over one conversion's limits: a fenced code block keeps its code box
    (without highlighting, which is what costs), anything else is escaped text."""
    fence = _FENCE_RE.match(block)
    if fence is None:
        return render_escaped(block)
    return f'<div class="{CSS_CLASS}"><pre><code>{render_plain_escaped(fence.group(2))}\n</code></pre></div>'


def render_unit(text: str) -> str:
    """One conversion of at most MAX_BLOCK_CHARS / MAX_BLOCK_LINES."""
    md = _markdown()
    try:
        raw = md.reset().convert(bound_nesting(text))
    except Exception as exc:  # pathological input the bounds did not foresee
        log.warning(
            "markdown rendering failed (%s); falling back to escaped text",
            type(exc).__name__,
        )
        _local.md = None  # the instance may be left in a broken state
        return render_escaped(text)
    return _sanitize(raw)


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
