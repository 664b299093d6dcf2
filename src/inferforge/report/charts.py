"""Charts for the HTML reports: matplotlib figures drawn to inline SVG, with no display and no pyplot state."""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any

from inferforge.report.html_page import escaped

STATUS_COLOURS = {"passed": "#2e7d32", "rejected": "#e65100", "failed": "#c62828", "skipped": "#757575"}
REASON_CHARS = 90  # a reason beside a chart is cut here; the table keeps it whole


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
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


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
