"""Charts for the HTML reports: matplotlib figures drawn to inline SVG, with no display and no pyplot state.

Every candidate keeps one colour and one marker on every chart of a page (``series_style``, by leaderboard row).
The SVG names what a reader, or a test, looks for: ``{chart}-title``, ``{chart}-legend``, ``{chart}-x-axis``,
``{chart}-y-axis``, ``{chart}-series-{n}`` (row ``n``'s points or line) and ``{chart}-label-{n}`` (its number
beside a point), as group ids.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from inferforge.report.html_page import escaped

STATUS_COLOURS = {"passed": "#2e7d32", "rejected": "#e65100", "failed": "#c62828", "skipped": "#757575"}
REASON_CHARS = 90  # a reason beside a chart is cut here; the table keeps it whole
# matplotlib's tab10; 11 markers against 10 colours: any two of the first ten rows differ in both, and no two of
# the first 110 share the pair. The diamond is left out: the latency chart draws the mean with it.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
MARKERS = ("o", "s", "^", "v", "P", "X", "<", ">", "p", "h", "*")
LABEL_FONT_PT = 8


@dataclass(frozen=True)
class SeriesStyle:
    """How one candidate (or one scenario) is drawn on every chart of its page."""

    colour: str
    marker: str


def series_style(row: int) -> SeriesStyle:
    """The colour and marker of leaderboard row ``row`` (1-based)."""
    return SeriesStyle(PALETTE[(row - 1) % len(PALETTE)], MARKERS[(row - 1) % len(MARKERS)])


def finish(ax: Any, chart_id: str, title: str, *, legend: bool = True, handles: Sequence[Any] | None = None,
           legend_outside: bool = True, legend_loc: str = "upper left") -> None:
    """Title, legend and the group ids of a chart's axes. ``handles``: the legend's entries where they are not
    the labelled artists; ``legend_outside``: the legend sits right of the plot, where it covers nothing."""
    ax.set_title(plain(title), fontsize=11, loc="left").set_gid(f"{chart_id}-title")
    ax.xaxis.set_gid(f"{chart_id}-x-axis")
    ax.yaxis.set_gid(f"{chart_id}-y-axis")
    if legend:
        entries = len(handles if handles is not None else ax.get_legend_handles_labels()[0])
        placement: dict[str, Any] = ({"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "borderaxespad": 0.0,
                                      "ncol": 1 + entries // 28} if legend_outside else {"loc": legend_loc})
        if handles is not None:
            placement["handles"] = handles
        ax.legend(fontsize=LABEL_FONT_PT, **placement).set_gid(f"{chart_id}-legend")


def plain(text: str) -> str:
    """Text for matplotlib: a ``$`` in a candidate key or reason would otherwise start mathtext."""
    return text.replace("$", r"\$")


def shortened(reason: str) -> str:
    """A reason cut to fit beside a chart."""
    return reason if len(reason) <= REASON_CHARS else reason[: REASON_CHARS - 1] + "…"


def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure that needs no display and no pyplot state (so nothing leaks between reports)."""
    import matplotlib

    matplotlib.use("Agg")  # the only backend a server or CI box is sure to have
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # a canvas that can measure text, for place_labels
    return fig


def _svg(fig: Any, chart_id: str) -> str:
    """The figure as an ``<svg>`` element; ids are salted per chart so two inline SVGs never share one."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": chart_id}):
        fig.savefig(buf, format="svg")
    text = buf.getvalue()
    return text[text.index("<svg"):]


def figure(chart_id: str, fig: Any, caption: str, after: str = "") -> str:
    """The chart as a ``<figure>`` with its caption; ``after``: HTML placed under it (already escaped)."""
    return (f'<figure class="chart" id="{escaped(chart_id)}">{_svg(fig, chart_id)}'
            f"<figcaption>{escaped(caption)}</figcaption>{after}</figure>")


def no_data(ax: Any, what: str) -> None:
    """An empty chart that says why, rather than a missing one (the page's chart count stays fixed)."""
    ax.text(0.5, 0.5, plain(what), ha="center", va="center", transform=ax.transAxes, color="#777")
    ax.set_xticks([])
    ax.set_yticks([])


def log_if_wide(ax: Any, values: Iterable[float], axis: str = "x", ratio: float = 20.0) -> None:
    """A log axis when values span more than ``ratio``: one slow candidate must not flatten the rest."""
    positive = [v for v in values if v and v > 0]
    if positive and max(positive) / min(positive) > ratio:
        from matplotlib.ticker import NullFormatter, StrMethodFormatter

        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        target = ax.xaxis if axis == "x" else ax.yaxis
        target.set_major_formatter(StrMethodFormatter("{x:g}"))  # 0.05, not 5×10⁻²
        target.set_minor_formatter(NullFormatter())


def place_labels(ax: Any, chart_id: str, points: Sequence[tuple[int, float, float, str]],
                 marker_pt: float = 7.0) -> None:
    """Write each ``(row, x, y, text)`` beside its point where no other label, no marker and no axes edge is in
    the way, trying nearer places first; a label that had to move away gets a thin line back to its point.

    Places are found in display space, so the figure's layout is fixed first (the layout engine is switched off
    after one draw): what is measured here is what the SVG holds, at any dpi. ``marker_pt``: a marker's width.
    """
    from matplotlib.transforms import Bbox

    fig = ax.figure
    fig.canvas.draw()
    fig.set_layout_engine("none")
    renderer = fig.canvas.get_renderer()
    px = fig.dpi / 72.0  # display pixels per point
    frame = ax.get_window_extent(renderer)
    centres = [tuple(ax.transData.transform((x, y))) for _, x, y, _ in points]
    half = marker_pt * px / 2 + 1
    taken = [Bbox.from_extents(cx - half, cy - half, cx + half, cy + half) for cx, cy in centres]
    probe = ax.text(0, 0, "", fontsize=LABEL_FONT_PT)
    order = sorted(range(len(points)), key=lambda k: (centres[k][0], -centres[k][1]))
    for k in order:
        row, x, y, text = points[k]
        probe.set_text(text)
        box = probe.get_window_extent(renderer)
        w, h, pad = box.width, box.height, 1.5 * px
        cx, cy = centres[k]
        spot = None
        for radius in (4, 10, 18, 28, 40, 55, 75, 100):
            for dx, dy in ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1)):
                r = radius * px
                left = cx + dx * r - (w if dx < 0 else w / 2 if dx == 0 else 0)
                bottom = cy + dy * r - (h if dy < 0 else h / 2 if dy == 0 else 0)
                cand = Bbox.from_extents(left - pad, bottom - pad, left + w + pad, bottom + h + pad)
                if (cand.x0 >= frame.x0 and cand.x1 <= frame.x1 and cand.y0 >= frame.y0 and cand.y1 <= frame.y1
                        and not any(cand.overlaps(t) for t in taken)):
                    spot = (left, bottom, radius)
                    break
            if spot:
                break
        if spot is None:  # nowhere free: the label stays beside its point; the legend still names it
            spot = (cx + 4 * px, cy + 4 * px, 4)
        left, bottom, radius = spot
        taken.append(Bbox.from_extents(left - pad, bottom - pad, left + w + pad, bottom + h + pad))
        ax.annotate(plain(text), (x, y), xytext=((left - cx) / px, (bottom - cy) / px), textcoords="offset points",
                    ha="left", va="bottom", fontsize=LABEL_FONT_PT, annotation_clip=False,
                    arrowprops={"arrowstyle": "-", "color": "#888", "linewidth": 0.6, "shrinkA": 0, "shrinkB": 3}
                    if radius > 10 else None).set_gid(f"{chart_id}-label-{row}")
    probe.remove()
