"""Time and peak memory of chat.render.render_markdown on pathological Markdown.

    .venv/bin/python bench/render_pathological.py                    # the tree's chat/render/ package
    .venv/bin/python bench/render_pathological.py --module /tmp/render_before.py
    .venv/bin/python bench/render_pathological.py --cases list800,brackets10k --timeout 60

Each case runs in its own subprocess (a render that never ends, or eats gigabytes, cannot take
the benchmark down with it): first timed alone, then again under tracemalloc for the peak of
Python allocations. A case that passes --timeout is reported as such and killed. ``--module``
renders with another copy of render.py (e.g. ``git show HEAD~1:chat/render.py > /tmp/r.py``),
to get "before" numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def case_text(name: str) -> str:
    if name == "list800":  # one level deeper per line
        return "".join(" " * (4 * i) + f"- item {i}\n" for i in range(800))
    if name == "list9mb":  # a sawtooth of nested lists, 0 to 199 levels deep, up to 9 MB
        unit = "".join(" " * (4 * i) + f"- item {i}\n" for i in range(200))
        return (unit * (9_000_000 // len(unit) + 1))[:9_000_000]
    if name == "brackets10k":
        return "[" * 10_000
    if name == "code126k":
        body = "".join(f"def f{i}(x):\n    return x * {i} + 'abc'  # comment\n" for i in range(3000))
        return "```python\n" + body[:126_000] + "\n```\n"
    if name == "prose200k":
        paragraph = (
            "Lorem ipsum dolor sit amet, *consectetur* adipiscing elit, sed do **eiusmod** tempor "
            "`incididunt` ut labore et [dolore](https://example.com) magna aliqua. "
        ) * 8 + "\n\n"
        return (paragraph * (200_000 // len(paragraph) + 1))[:200_000]
    raise ValueError(name)


CASES = ["list800", "list9mb", "brackets10k", "code126k", "prose200k"]


def _load(module: str | None):  # noqa: ANN202 (a module)
    sys.path.insert(0, ROOT)
    if not module:
        from chat import render

        return render
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_under_test", module)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _child(name: str, module: str | None) -> None:
    import logging
    import resource
    import tracemalloc

    logging.disable(logging.WARNING)  # the old renderer logs its RecursionError fallback
    render = _load(module)
    text = case_text(name)
    render.render_markdown("warm *up*")
    started = time.perf_counter()
    html = render.render_markdown(text)
    seconds = time.perf_counter() - started
    tracemalloc.start()
    render.render_markdown(text)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_mb": peak / 1e6,
                "rss_mb": rss_kb / 1e3,
                "input_chars": len(text),
                "html_chars": len(html),
                "escaped": html.startswith("<pre>"),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--module", help="path of a render.py to measure instead of the chat/render package (an old single-file copy)"
    )
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, among {CASES}")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per case (both runs)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.module)
        return
    print(f"renderer: {args.module or 'chat/render/'}")
    print(f"{'case':<12} {'input':>10} {'time':>9} {'peak alloc':>11} {'max RSS':>9} {'html':>10}  note")
    for name in args.cases.split(","):
        command = [sys.executable, __file__, "--child", name] + (["--module", args.module] if args.module else [])
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
        except subprocess.TimeoutExpired:
            print(f"{name:<12} {'':>10} {'> %gs' % args.timeout:>9}  (killed: did not finish)")
            continue
        if done.returncode != 0:
            print(f"{name:<12} failed: {done.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        note = "shown as escaped text" if r["escaped"] else ""
        print(
            f"{name:<12} {r['input_chars']:>10,} {r['seconds']:>8.3f}s {r['peak_mb']:>9.1f}MB {r['rss_mb']:>7.0f}MB "
            f"{r['html_chars']:>10,}  {note}"
        )


if __name__ == "__main__":
    main()
