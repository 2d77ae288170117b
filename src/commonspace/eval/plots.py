"""Retrieval curves as PNG files: precision-recall, precision@N, or any labelled lines.

Uses matplotlib's object API with the Agg canvas (no pyplot, no display, no global figure state), and
writes each file atomically (temp file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from commonspace.data.dataset import DataError
from commonspace.data.io import atomic_write

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["line_figure", "plot_lines", "plot_pr_curves", "plot_precision_at_n"]

Curve = tuple[Sequence[float] | np.ndarray, Sequence[float] | np.ndarray]


def line_figure(
    curves: Mapping[str, Curve],
    *,
    xlabel: str = "",
    ylabel: str = "",
    title: str | None = None,
    xlim: tuple[float, float] | None = None,
    ylim: tuple[float, float] | None = None,
    logx: bool = False,
    markers: bool = True,
    figsize: tuple[float, float] = (5.0, 4.0),
    dpi: int = 120,
    xticks: Sequence[float] | None = None,
) -> Figure:
    """The figure :func:`plot_lines` saves: one line per ``label -> (x, y)``, legend, grid, a title that fits."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not curves:
        raise DataError("nothing to plot: curves is empty")
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, (x, y) in curves.items():
        x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
        if x.shape != y.shape:
            raise DataError(f"curve {label!r}: x has {x.size} points but y has {y.size}")
        ax.plot(x, y, marker="o" if markers and x.size <= 40 else None, markersize=3, label=str(label))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log")
    if xticks is not None:
        ax.set_xticks(list(xticks))
    if xlim:
        ax.set_xlim(*xlim)
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    if title:
        _fit_title(fig, ax, title)
    return fig


def _fit_title(fig: Figure, ax: Axes, title: str) -> None:
    """Wrap ``title`` at fewer characters until its rendered box lies inside the figure.

    A character count alone cannot promise that: glyph widths vary (a line of "W" is twice a line of "i")
    and the title is centred on the axes, which sit right of centre beside the y label, so a line as wide
    as the figure still runs off its right edge ("... 3 see" in the hashing report).
    """
    renderer = fig.canvas.get_renderer()
    inside = fig.bbox.padded(-2.0)  # a couple of pixels of margin against anti-aliasing at the edge
    width = max(20, int(fig.get_figwidth() * 11))
    while True:
        text = ax.set_title("\n".join(textwrap.wrap(title, width)), fontsize="medium")
        fig.tight_layout()  # a wrapped title is taller: make room for it above the axes
        box = text.get_window_extent(renderer)
        if (box.x0 >= inside.x0 and box.x1 <= inside.x1 and box.y1 <= inside.y1) or width <= 8:
            return
        width = max(8, int(width * min(0.9, inside.width / max(box.width, 1.0))))


def plot_lines(curves: Mapping[str, Curve], path: str | os.PathLike, **kw) -> Path:
    """One line per ``label -> (x, y)``, legend, grid; saved as PNG at ``path`` (atomic).

    Keywords as :func:`line_figure` (``xlabel``, ``ylabel``, ``title``, ``xlim``, ``ylim``, ``logx``,
    ``markers``, ``figsize``, ``dpi``, ``xticks``); a long title is wrapped until it fits inside the figure.
    """
    path = Path(path).expanduser()
    if path.suffix.lower() != ".png":
        raise DataError(f"{path}: plots are written as PNG; give the path a .png suffix")
    fig = line_figure(curves, **kw)
    return atomic_write(path, lambda fh: fig.savefig(fh, format="png"))


def plot_pr_curves(curves: Mapping[str, Curve], path: str | os.PathLike, *, title: str | None = None,
                   **kw) -> Path:
    """Precision-recall curves, ``label -> (precision, recall)`` (e.g. from ``hamming.pr_curve``)."""
    swapped = {k: (r, p) for k, (p, r) in curves.items()}  # recall on x, precision on y
    return plot_lines(swapped, path, xlabel="recall", ylabel="precision", title=title,
                      xlim=(0.0, 1.0), ylim=(0.0, 1.05), **kw)


def plot_precision_at_n(curves: Mapping[str, Curve], path: str | os.PathLike, *, title: str | None = None,
                        **kw) -> Path:
    """Precision of the top N, ``label -> (n, precision)`` (e.g. from ``hamming.precision_at_n``)."""
    return plot_lines(curves, path, xlabel="number of top returned items N", ylabel="precision",
                      title=title, ylim=(0.0, 1.05), **kw)
