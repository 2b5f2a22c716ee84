"""Study reports: ``report.md`` and a self-contained ``report.html``.

The report is built from what a study folder holds (``study.json`` and the
PNG figures next to it), so ``pyvlmx report DIR`` can rebuild it at any time.
"""

from pyvlmx.report.render import build_report, render_html, render_markdown

__all__ = ["build_report", "render_html", "render_markdown"]
