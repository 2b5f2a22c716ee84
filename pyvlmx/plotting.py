"""Matplotlib, headless: every plot in pyvlmx draws through :func:`pyplot`.

Each plotting function saves its PNG with :func:`save_figure` and returns the
:class:`matplotlib.figure.Figure`, closed (no longer held by pyplot) but with
every artist in place, so a caller or a test can read what was drawn
(``fig.axes[0].get_lines()``, labels, scales) instead of looking at pixels.
"""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 120):
    """Lay out, save to ``path`` (PNG) and close ``fig``; returns ``fig``.

    Example:
        >>> import os, tempfile
        >>> fig, ax = pyplot().subplots()
        >>> _ = ax.plot([0, 1], [1, 2], label="a")
        >>> p = os.path.join(tempfile.mkdtemp(), "f.png")
        >>> save_figure(fig, p) is fig, os.path.isfile(p), len(fig.axes[0].get_lines())
        (True, True, 1)
    """
    fig.tight_layout()
    fig.savefig(Path(path), dpi=dpi)
    pyplot().close(fig)
    return fig
