"""Render a study folder into Markdown and self-contained HTML.

``study.json`` (written by :func:`pyvlmx.study.run_study`) holds::

    {"title": str,
     "headline": [{"metric": str, "value": float|None, "fmt": str, "note": str,
                   "ci": [lo|None, hi|None] | None, "ci_method": str}, ...],   # a null end: unbounded
     "headline_note": str,          # how the intervals were computed
     "sections": [{"title": str, "text": str,
                   "tables": [{"columns": [...], "rows": [[...], ...], "caption": str,
                               "formats": [str|None, ...]}],   # optional, per column
                   "figures": [{"file": "x.png", "caption": str}]}, ...],
     "settings": {...}, "environment": {...}}

Every figure is embedded in the HTML as a data URI, so the file can be
mailed or opened anywhere; the Markdown links the PNG files instead.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

from pyvlmx.io import dumps


def _fmt(value, fmt: str = "{:.3f}") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return fmt.format(value)
    return str(value)


def _cell(value, fmt: str | None) -> str:
    if isinstance(value, (list, tuple)) and len(value) == 2:   # an interval [lo, hi]
        return _interval(value, fmt or "{:.3f}")
    return _fmt(value) if fmt is None else _fmt(value, fmt)


def _cells(tab: dict, row: list) -> list[str]:
    """A table row as text: each cell in its column's format (``formats``), else the default;
    a two-element list is an interval, ``[lo, hi]``."""
    formats = tab.get("formats") or [None] * len(row)
    return [_cell(c, f) for c, f in zip(row, formats)]


def _interval(ci, fmt: str) -> str:
    """``[lo, hi]`` in the figure's own format; empty where an entry has no interval.

    A null end is unbounded (JSON has no infinity): ``-inf`` below, ``inf``
    above, e.g. the PSNR of unchanged images.
    """
    if ci is None:
        return ""
    lo, hi = (-math.inf if ci[0] is None else ci[0]), (math.inf if ci[1] is None else ci[1])
    return f"[{_fmt(lo, fmt)}, {_fmt(hi, fmt)}]"


HEADLINE_COLUMNS = ("metric", "value", "95% interval", "note")


def _headline_rows(study: dict) -> list[list[str]]:
    rows = []
    for h in study.get("headline", []):
        fmt = h.get("fmt", "{:.3f}")
        rows.append([h["metric"], _fmt(h.get("value"), fmt), _interval(h.get("ci"), fmt), h.get("note", "")])
    return rows


def render_markdown(study: dict) -> str:
    """The study as Markdown; figures are links to the PNG files beside it."""
    out = [f"# {study.get('title', 'pyvlmx study')}", ""]
    out += ["## Headline", "", "| " + " | ".join(HEADLINE_COLUMNS) + " |", "|---|---|---|---|"]
    out += ["| " + " | ".join(row) + " |" for row in _headline_rows(study)]
    out.append("")
    if study.get("headline_note"):
        out += [study["headline_note"], ""]
    for sec in study.get("sections", []):
        out += [f"## {sec['title']}", ""]
        if sec.get("text"):
            out += [sec["text"], ""]
        for tab in sec.get("tables", []):
            if tab.get("caption"):
                out += [f"*{tab['caption']}*", ""]
            out.append("| " + " | ".join(str(c) for c in tab["columns"]) + " |")
            out.append("|" + "---|" * len(tab["columns"]))
            out += ["| " + " | ".join(_cells(tab, row)) + " |" for row in tab["rows"]]
            out.append("")
        for fig in sec.get("figures", []):
            out += [f"![{fig.get('caption', '')}]({fig['file']})", "", f"*{fig.get('caption', '')}*", ""]
    out += ["## Settings", "", "```json", dumps(study.get("settings", {}), indent=2), "```", ""]
    out += ["## Environment", "", "```json", dumps(study.get("environment", {}), indent=2), "```", ""]
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1d1d1f;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0 1.2em}th,td{border:1px solid #ccc;padding:.3em .7em;text-align:left}
th{background:#f2f2f5}#headline td:nth-child(2){font-weight:600;text-align:right}
#headline td:nth-child(3){text-align:right;white-space:nowrap;color:#444}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}figcaption{color:#555;font-size:.92em}
pre{background:#f6f6f8;padding:.8em;overflow:auto;font-size:.85em}
"""

# Records, once the page has loaded, how many images decoded; a headless
# browser reads it back (tests/test_report_browser.py).
_CHECK_JS = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (im) { return im.complete && im.naturalWidth > 0; }).length;
  var el = document.getElementById('image-check');
  el.setAttribute('data-total', imgs.length);
  el.setAttribute('data-loaded', ok);
});
"""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(study: dict, folder: str | Path) -> str:
    """The study as one self-contained HTML page (figures embedded as data URIs).

    Raises:
        FileNotFoundError: a figure named in ``study`` is missing from ``folder``.
    """
    folder = Path(folder)
    e = html.escape
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             f"<title>{e(study.get('title', 'pyvlmx study'))}</title><style>{_CSS}</style>",
             f"<script>{_CHECK_JS}</script></head><body>",
             f"<h1>{e(study.get('title', 'pyvlmx study'))}</h1>",
             "<div id='image-check' data-total='-1' data-loaded='-1'></div>",
             "<h2>Headline</h2><table id='headline'><tr>" + "".join(f"<th>{e(c)}</th>" for c in HEADLINE_COLUMNS)
             + "</tr>"]
    parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in _headline_rows(study)]
    parts.append("</table>")
    if study.get("headline_note"):
        parts.append(f"<p id='headline-note'>{e(study['headline_note'])}</p>")
    for sec in study.get("sections", []):
        parts.append(f"<h2>{e(sec['title'])}</h2>")
        if sec.get("text"):
            parts += [f"<p>{e(p)}</p>" for p in sec["text"].split("\n\n")]
        for tab in sec.get("tables", []):
            parts.append("<table>")
            if tab.get("caption"):
                parts.append(f"<caption>{e(tab['caption'])}</caption>")
            parts.append("<tr>" + "".join(f"<th>{e(str(c))}</th>" for c in tab["columns"]) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in _cells(tab, row)) + "</tr>"
                      for row in tab["rows"]]
            parts.append("</table>")
        for fig in sec.get("figures", []):
            path = folder / fig["file"]
            if not path.is_file():
                raise FileNotFoundError(f"report figure {fig['file']!r} not found in {folder}")
            parts.append(f"<figure><img src='{_data_uri(path)}' alt='{e(fig.get('caption', ''))}'>"
                         f"<figcaption>{e(fig.get('caption', ''))}</figcaption></figure>")
    parts.append("<h2>Settings</h2><pre>" + e(dumps(study.get("settings", {}), indent=2)) + "</pre>")
    parts.append("<h2>Environment</h2><pre>" + e(dumps(study.get("environment", {}), indent=2)) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def build_report(folder: str | Path) -> tuple[Path, Path]:
    """(Re)build ``report.md`` and ``report.html`` from ``folder/study.json``.

    Returns:
        the paths of the Markdown and HTML reports.
    """
    folder = Path(folder)
    src = folder / "study.json"
    if not src.is_file():
        raise FileNotFoundError(f"no study.json in {folder}; run `pyvlmx study --out {folder}` first")
    study = json.loads(src.read_text())
    md = folder / "report.md"
    page = folder / "report.html"
    md.write_text(render_markdown(study))
    page.write_text(render_html(study, folder))
    return md, page
