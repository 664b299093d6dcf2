"""The frame every HTML report shares: one self-contained page, safe to mail and open offline.

A report is read where it was made and where it was mailed to, often on machines with no network, so each page
is one file: styles are inline and a Content-Security-Policy forbids fetching anything. The one script only
records that the page loaded, how many charts it drew and any error, so a headless browser can prove the page
renders. Every string taken from a report is escaped here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path
from typing import Any

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12.5px;margin:8px 0}th,td{border:1px solid #ddd;padding:3px 7px;text-align:left}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.passed td:nth-child(3){color:#2e7d32}tr.rejected td:nth-child(3){color:#e65100}
tr.failed td:nth-child(3){color:#c62828}tr.skipped{color:#777}tr.picked{background:#eef7ee;font-weight:600}
figure.chart{margin:20px 0}figure.chart svg{max-width:100%;height:auto}figcaption{color:#555;font-size:13px}
dl.facts{display:grid;grid-template-columns:max-content auto;gap:2px 14px}dt{font-weight:600}dd{margin:0}
"""

# window.onerror is set before anything else can fail; data-* attributes are what a headless browser reads back.
_SCRIPT = """
(function () {
  var errors = [];
  window.onerror = function (message, source, line) {
    errors.push(message + " (" + source + ":" + line + ")");
    if (document.body) { document.body.dataset.errors = errors.join("\\n"); }
    return false;
  };
  window.addEventListener("load", function () {
    if (errors.length) { document.body.dataset.errors = errors.join("\\n"); }
    document.body.dataset.charts = String(document.querySelectorAll("figure.chart > svg").length);
    document.body.dataset.ready = "1";
  });
})();
"""

_CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"


def escaped(value: object) -> str:
    """Any value as HTML text or attribute, quotes included: reports carry user strings (keys, reasons, paths)."""
    return escape(str(value), quote=True)


def number(value: float | None, digits: int = 2) -> str:
    """A table cell: blank for a figure nobody measured."""
    return "" if value is None else f"{value:.{digits}f}"


def table(headers: Sequence[str], rows: Iterable[tuple[Sequence[str], str]], numeric: Iterable[int] = ()) -> str:
    """Rows are (cells, css class); cells are escaped here."""
    numeric_cols = set(numeric)
    head = "".join(f"<th>{escaped(h)}</th>" for h in headers)
    body = "".join(
        f'<tr class="{escaped(cls)}">' + "".join(
            f'<td class="num">{escaped(c)}</td>' if i in numeric_cols else f"<td>{escaped(c)}</td>" for i, c in enumerate(cells))
        + "</tr>" for cells, cls in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def facts(pairs: Iterable[tuple[str, object]]) -> str:
    """A definition list of (name, value), escaped."""
    return '<dl class="facts">' + "".join(f"<dt>{escaped(k)}</dt><dd>{escaped(v)}</dd>" for k, v in pairs) + "</dl>"


def environment_section(env: dict[str, Any]) -> str:
    """The machine a report was made on, from ``environment.fingerprint()``; empty facts are left out."""
    libs = ", ".join(f"{k} {v}" for k, v in (env.get("libraries") or {}).items() if v)
    pairs: list[tuple[str, object]] = [
        ("machine", env.get("machine", "")), ("system", env.get("system", "")), ("python", env.get("python", "")),
        ("cpu", env.get("cpu", "")), ("cores", env.get("cores", "")),
        ("cpu flags", ", ".join(env.get("cpu_flags") or [])), ("libraries", libs)]
    if env.get("gpu"):
        capability = f" (compute capability {env['cuda_capability']})" if env.get("cuda_capability") else ""
        pairs.append(("gpu", f"{env['gpu']}{capability}"))
    shown = facts((k, v) for k, v in pairs if v not in ("", None))
    return '<section id="environment"><h2>Environment</h2>' + shown + "</section>"


def page(title: str, sections: Iterable[str]) -> str:
    """The whole document: the CSP that forbids fetching, the inline style and the load-check script."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{escaped(title)}</title><style>{_STYLE}</style><script>{_SCRIPT}</script></head>"
            f"<body><h1>{escaped(title)}</h1>{''.join(sections)}</body></html>\n")


def write_html(html: str, path: Path) -> Path:
    """Write ``html`` to ``path`` atomically: a reader (or a crash) never sees half a page.

    The temporary file sits in the same folder, so ``os.replace`` is a rename on one file system.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(html, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
