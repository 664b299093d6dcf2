"""Reports of an optimize run and a bench run, one module per rendering.

``leaderboard`` lays out the rows once; ``terminal`` (rich), ``markdown`` and ``document`` (JSON) render a search;
``html_optimize`` and ``html_bench`` draw the HTML pages from the JSON documents, with ``html_page`` (the
self-contained frame) and ``charts`` (inline SVG). The HTML modules are imported by their full name, where a page
is written, so that reading a leaderboard never imports matplotlib.
"""

from inferforge.report.document import report_json
from inferforge.report.leaderboard import (
    CONFIRMED,
    DATA_SHAPES_P50,
    SPEC_SHAPE_P50,
    accuracy_cell,
    build_cell,
    columns,
    leaderboard_rows,
)
from inferforge.report.markdown import markdown_leaderboard, report_markdown
from inferforge.report.terminal import pick_lines, rich_leaderboard

__all__ = ["CONFIRMED", "DATA_SHAPES_P50", "SPEC_SHAPE_P50", "accuracy_cell", "build_cell", "columns",
           "leaderboard_rows", "markdown_leaderboard", "pick_lines", "report_json", "report_markdown",
           "rich_leaderboard"]
