"""Bounds on what one Markdown conversion may cost, applied to the text before Python-Markdown
sees it. Pure text transforms: no Markdown, no HTML, no Django.
"""

from __future__ import annotations

import re

from markdown.extensions.attr_list import get_attrs_and_remainder

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


# Block syntax both the bounds and the block splitter read.
STX, ETX = "\x02", "\x03"  # stripped by Python-Markdown before parsing
FENCE_OPEN_RE = re.compile(
    r"""^(?P<fence>~{3,}|`{3,})[ ]*
        ((\{(?P<attrs>[^\n]*)\})|
        (\.?(?P<lang>[\w#.+-]*)[ ]*)?
        (hl_lines=(?P<quot>"|')(?P<hl_lines>.*?)(?P=quot)[ ]*)?)$""",
    re.VERBOSE,
)


def is_blank(line: str) -> bool:
    return not line.strip(" \t")


def bound_nesting(text: str) -> str:
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
    sub = line.replace(STX, "").replace(ETX, "").expandtabs(4)
    m = FENCE_OPEN_RE.match(sub)
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
            if line.replace(STX, "").replace(ETX, "").expandtabs(4).rstrip(" ") == fence:
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
        if is_blank(line):
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
