"""The report's charts, drawn on the server as SVG: score against cost, and score per domain.

Both read the report dict (chat.evals.report.evaluation_report) and return an SVG document as
text. matplotlib's object API (``Figure`` + ``FigureCanvasSVG``) is used, never pyplot: no global
figure state, so two requests can draw at once. Text stays text in the SVG (``svg.fonttype`` =
``none``), so it is sharp at any size and takes the reader's fonts. No Django here.

Names in a report are user text (a preset's name): matplotlib escapes them for XML, and every ``$``
is escaped so that a name is never read as mathtext.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from typing import Any

import matplotlib
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.lines import Line2D
from matplotlib.ticker import Formatter, NullFormatter

from chat.evals import stats

# Read when a figure is saved: set once here (this process draws no other SVG). The salt makes
# the ids inside the SVG the same for the same chart.
matplotlib.rcParams["svg.fonttype"] = "none"
matplotlib.rcParams["svg.hashsalt"] = "fusion-evals"

# Okabe–Ito, told apart with colour blindness too; each configuration also has its own marker.
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#6B6B6B", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
TEXT = "#1f2329"
MUTED = "#5c6370"
GRID = "#d9dde3"
# matplotlib lays text out with the fonts it ships (DejaVu Sans); the SVG names the reader's own.
_FONT_FAMILY = re.compile(r"font-family: [^;\"]*")
SVG_FONT = "font-family: system-ui, -apple-system, 'Segoe UI', Roboto, 'Liberation Sans', Arial, sans-serif"
NAME_CHARS = 44
WIDTH_IN = 6.4
EMPTY_TEXT = "No scores yet"


def score_cost_svg(report: dict[str, Any]) -> str:
    """Every scored task's score (0–100) against what it cost, a colour and marker per
    configuration, and each configuration's Pareto frontier as a step line."""
    configs = report.get("configurations") or []
    series = []
    for config in configs:
        points = [
            (float(t.get("cost_usd") or 0.0), float(t["score"]))
            for t in config.get("tasks") or []
            if t.get("score") is not None
        ]
        series.append((_name(config), points))
    if not any(points for _, points in series):
        return _empty("Score against cost per task")

    fig = _figure(4.9)
    ax = fig.add_subplot()
    handles = []
    for i, (name, points) in enumerate(series):
        colour, marker = COLOURS[i % len(COLOURS)], MARKERS[i % len(MARKERS)]
        handles.append(
            Line2D([], [], color=colour, marker=marker, markersize=7, linewidth=1.8, label=_label(name, points))
        )
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        ax.scatter(xs, ys, s=38, color=colour, marker=marker, alpha=0.78, edgecolors="white", linewidths=0.7, zorder=3)
        frontier = [points[j] for j in stats.pareto_frontier(points)]
        fx, fy = zip(*frontier, strict=True)
        ax.step(fx, fy, where="post", color=colour, linewidth=1.8, alpha=0.95, zorder=2, solid_joinstyle="miter")

    costs = [x for _, points in series for x, _ in points]
    positive = [c for c in costs if c > 0]
    if positive and min(costs) > 0 and max(positive) / min(positive) >= 100:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_xlim(left=0, right=max(costs) * 1.08 if max(costs) > 0 else 0.01)
    ax.xaxis.set_major_formatter(_Dollars(log=ax.get_xscale() == "log"))
    ax.set_ylim(-4, 104)
    ax.set_yticks([0, 20, 40, 60, 80, 100])
    threshold = (report.get("evaluation") or {}).get("threshold")
    if isinstance(threshold, int | float) and 0 < threshold < 100:
        ax.axhline(threshold, color=MUTED, linewidth=0.9, linestyle=(0, (4, 3)), zorder=1)
        ax.annotate(
            _escape(f"accepted at {threshold:g}"),
            xy=(1, threshold),
            xycoords=("axes fraction", "data"),
            xytext=(-4, 3),
            textcoords="offset points",
            ha="right",
            va="bottom",
            fontsize=8.5,
            color=MUTED,
        )
    _style(ax, xlabel="Cost per task, answering and judging (USD)", ylabel="Score (0–100)")
    ax.set_title("Score against cost per task", loc="left", fontsize=12, color=TEXT, fontweight="bold", pad=18)
    ax.text(
        0,
        1.015,
        "A point per scored task; the line is each configuration's Pareto frontier",
        transform=ax.transAxes,
        fontsize=8.5,
        color=MUTED,
        va="bottom",
    )
    _legend(fig, handles, handlelength=2.6)
    return _svg(fig)


def domain_bars_svg(report: dict[str, Any]) -> str:
    """Grouped horizontal bars: each domain's score per configuration, with its 95 % interval."""
    configs = report.get("configurations") or []
    domains: list[str] = []
    for config in configs:
        for row in config.get("domains") or []:
            if row.get("n") and row["domain"] not in domains:
                domains.append(row["domain"])
    scored = {
        (i, row["domain"]): row
        for i, config in enumerate(configs)
        for row in config.get("domains") or []
        if row.get("score") is not None
    }
    if not scored:
        return _empty("Score per domain")

    n = max(1, len(configs))
    group = 0.8
    bar = group / n
    height = 1.5 + len(domains) * (0.24 * n + 0.3) + 0.26 * math.ceil(n / 2)
    fig = _figure(max(3.0, height))
    ax = fig.add_subplot()
    handles = []
    for i, config in enumerate(configs):
        colour = COLOURS[i % len(COLOURS)]
        handles.append(Line2D([], [], color=colour, marker="s", markersize=9, linewidth=0, label=_label(_name(config))))
        for d, domain in enumerate(domains):
            y = d - group / 2 + bar * (i + 0.5)
            row = scored.get((i, domain))
            if row is None:
                ax.text(1.5, y, "no score", va="center", fontsize=8, color=MUTED, fontstyle="italic")
                continue
            score = float(row["score"])
            low, high = row.get("ci") or (score, score)
            ax.barh(
                y,
                score,
                height=bar * 0.86,
                color=colour,
                alpha=0.88,
                zorder=2,
                xerr=[[max(0.0, score - low)], [max(0.0, high - score)]],
                error_kw={"ecolor": TEXT, "elinewidth": 1.1, "capsize": 3, "capthick": 1.1, "zorder": 3},
            )
            ax.text(
                min(max(high, score) + 1.5, 101.5),
                y,
                f"{score:.0f}",
                va="center",
                fontsize=8,
                color=TEXT,
            )
    ax.set_yticks(range(len(domains)), [_escape(_short(d, 28)) for d in domains])
    ax.set_ylim(len(domains) - 0.5, -0.5)  # the first domain on top
    ax.set_xlim(0, 108)
    ax.set_xticks([0, 20, 40, 60, 80, 100])
    _style(ax, xlabel="Score (0–100), with its 95 % interval", ylabel="")
    ax.grid(axis="y", visible=False)
    ax.tick_params(axis="y", length=0)
    ax.set_title("Score per domain", loc="left", fontsize=12, color=TEXT, fontweight="bold")
    _legend(fig, handles, handlelength=1.2)
    return _svg(fig)


# --------------------------------------------------------------------------- helpers


def _figure(height: float) -> Figure:
    # Padding in inches around the edges.
    fig = Figure(figsize=(WIDTH_IN, height), layout=ConstrainedLayoutEngine(w_pad=0.12, h_pad=0.12), facecolor="white")
    FigureCanvasSVG(fig)
    return fig


def _style(ax: Any, *, xlabel: str, ylabel: str) -> None:
    ax.set_facecolor("white")
    ax.grid(True, color=GRID, linewidth=0.7, zorder=0)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color("#9aa1ad")
    ax.tick_params(colors=MUTED, labelsize=9, labelcolor=TEXT)
    ax.set_xlabel(xlabel, fontsize=9.5, color=MUTED)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=9.5, color=MUTED)


def _empty(title: str) -> str:
    fig = _figure(2.6)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title, loc="left", fontsize=12, color=TEXT, fontweight="bold")
    ax.text(0.5, 0.5, EMPTY_TEXT, ha="center", va="center", fontsize=15, color=MUTED, transform=ax.transAxes)
    ax.text(
        0.5,
        0.3,
        "The chart fills in as the judge scores answers.",
        ha="center",
        va="center",
        fontsize=9.5,
        color=MUTED,
        transform=ax.transAxes,
    )
    return _svg(fig)


def _svg(fig: Figure) -> str:
    out = io.StringIO()
    fig.savefig(out, format="svg", metadata={"Date": None, "Creator": None})
    return _FONT_FAMILY.sub(SVG_FONT, out.getvalue())


def _name(config: dict[str, Any]) -> str:
    return str(config.get("name") or config.get("key") or "?")


def _label(name: str, points: Sequence[tuple[float, float]] | None = None) -> str:
    return _escape(_short(name) + (" (no scores)" if points is not None and not points else ""))


def _short(text: str, limit: int = NAME_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _escape(text: str) -> str:
    """Plain text for matplotlib: a ``$`` would start mathtext."""
    return text.replace("$", r"\$")


class _Dollars(Formatter):
    """Dollar tick labels with as many places as the spacing of the ticks needs ($0.002, $0.25)."""

    def __init__(self, *, log: bool) -> None:
        self.log = log  # on a log scale each tick has its own magnitude

    def format_ticks(self, values: Any) -> list[str]:
        ticks = [float(v) for v in values]
        steps = [abs(b - a) for a, b in zip(ticks, ticks[1:], strict=False) if b != a]
        return [self._text(x, abs(x) if self.log or not steps else min(steps)) for x in ticks]

    def __call__(self, x: float, pos: int | None = None) -> str:
        return self._text(x, abs(x))

    @staticmethod
    def _text(x: float, step: float) -> str:
        if x == 0:
            return r"\$0"
        places = 2 if step >= 1 or step == 0 else min(8, max(2, -math.floor(math.log10(step))))
        # A step of 0.0025 needs four places, not three: as many as the step itself has.
        while places < 8 and abs(round(step, places) - step) > step * 1e-6:
            places += 1
        return rf"\${x:,.{places}f}"


def _legend(fig: Figure, handles: list[Any], *, handlelength: float) -> None:
    """The configurations' legend under the plot, two per row."""
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncols=min(2, len(handles)),
        frameon=False,
        fontsize=9,
        labelcolor=TEXT,
        handlelength=handlelength,
    )
