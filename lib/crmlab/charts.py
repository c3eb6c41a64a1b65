"""One chart theme and the few chart helpers every report shares.

Call :func:`use_theme` once (``Report`` does it); the helpers then return
matplotlib figures that ``Report.section(figure=...)`` inlines into the page.
Fonts fall back to Noto Sans CJK (Debian ``fonts-noto-cjk``) for glyphs the
Latin font lacks, so Chinese city and segment names render. When matplotlib's
font cache was built before the CJK fonts were installed, the theme finds
their files (fontconfig, else the usual font directories) and registers them.

Examples
--------
>>> import pandas as pd
>>> fig = bar(pd.Series({"core": 120, "at risk": 40}), title="Customers per segment")
>>> len(fig.axes[0].patches)
2
"""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import math
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from crmlab.privacy import escape

# Okabe-Ito: distinguishable for the common forms of colour blindness
PALETTE: list[str] = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7",
                      "#F0E442", "#000000"]
COLORS: dict[str, str] = {
    "main": PALETTE[0], "accent": PALETTE[1], "good": "#1a7f37", "bad": "#c62828",
    "neutral": "#6b7280", "band": "#0072B2", "grid": "#e5e7eb",
}
# first font that has a glyph wins (matplotlib >= 3.6 falls back per glyph)
CJK_FONTS: list[str] = ["Noto Sans CJK SC", "Noto Sans CJK JP", "Source Han Sans SC",
                        "Source Han Sans CN", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
                        "Microsoft YaHei", "PingFang SC", "Arial Unicode MS"]
FONTS: list[str] = ["DejaVu Sans", *CJK_FONTS, "sans-serif"]
# where CJK font files are looked for when fontconfig's fc-list is missing
FONT_DIRS: list[str] = ["/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts",
                        "~/.fonts", "/Library/Fonts", "/System/Library/Fonts"]
CJK_FONT_FILES: list[str] = ["NotoSansCJK*", "NotoSerifCJK*", "SourceHanSans*", "SourceHanSerif*",
                             "wqy-*", "PingFang*"]
FONT_SUFFIXES = (".ttf", ".otf", ".ttc", ".otc")
THEME_RC: dict[str, object] = {
    "figure.figsize": (8.0, 4.0),
    "figure.dpi": 110,
    "savefig.dpi": 110,
    "savefig.bbox": "tight",
    "axes.titlesize": 13,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.labelsize": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": COLORS["grid"],
    "legend.frameon": False,
    "font.size": 11,
    "svg.fonttype": "path",  # text as outlines: the page needs no font
    "axes.facecolor": "white",
    "axes.edgecolor": "#cbd5e1",
    "axes.axisbelow": True,
    "grid.linewidth": 0.8,
    "xtick.bottom": False,
    "ytick.left": False,
    "xtick.color": "#374151",
    "ytick.color": "#374151",
    "text.color": "#1f2937",
    "axes.labelcolor": "#1f2937",
    "lines.linewidth": 1.8,
    "image.cmap": "Blues",
}


def chinese_font_files() -> list[str]:
    """Installed font files that cover Chinese, sans-serif files first.

    What fontconfig lists for ``:lang=zh``; without ``fc-list`` (or when it
    lists none), the files named like Noto/Source Han/WenQuanYi CJK fonts
    under :data:`FONT_DIRS`.
    """
    paths: set[str] = set()
    fc_list = shutil.which("fc-list")
    if fc_list:
        # a missing or hanging fontconfig only means: look in the directories
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([fc_list, ":lang=zh", "file"], capture_output=True, text=True,
                                 timeout=20).stdout
            paths = {line.strip().rstrip(":") for line in out.splitlines() if line.strip()}
    if not paths:
        for root in FONT_DIRS:
            for pattern in CJK_FONT_FILES:
                paths.update(str(p) for p in Path(root).expanduser().rglob(pattern))
    files = [p for p in paths if p.lower().endswith(FONT_SUFFIXES) and Path(p).is_file()]
    return sorted(files, key=lambda p: ("Sans" not in Path(p).name, p))


def _register_cjk_fonts(font_manager) -> list[str]:
    """Add the Chinese font files to matplotlib's font manager; returns the
    families they bring, sans-serif before serif and monospace."""
    manager = font_manager.fontManager
    before = len(manager.ttflist)
    for path in chinese_font_files():
        # an unreadable font file is skipped, as matplotlib's own cache build does
        with contextlib.suppress(OSError, RuntimeError, ValueError):
            manager.addfont(path)
    names = {f.name for f in manager.ttflist[before:]}
    return sorted(names, key=lambda n: ("Serif" in n or "Mono" in n, n))


@functools.lru_cache(maxsize=1)
def _installed_fonts() -> list[str]:
    """The theme's font families that matplotlib can use: the Latin font
    first, then a CJK font for the glyphs it lacks.

    matplotlib's font cache is written once; when ``fonts-noto-cjk`` (or
    another CJK font) was installed after it, the cache knows no CJK
    family and Chinese labels would be drawn as boxes. Then the installed
    CJK files are registered for this process."""
    from matplotlib import font_manager

    have = {f.name for f in font_manager.fontManager.ttflist}
    extra: list[str] = []
    if not have & set(CJK_FONTS):
        added = _register_cjk_fonts(font_manager)
        have.update(added)
        if not set(added) & set(CJK_FONTS):  # a CJK family the list does not name
            extra = added
    return [f for f in [*FONTS, *extra] if f in have] or ["sans-serif"]


def use_theme() -> None:
    """Apply the crmlab chart theme (palette, fonts, sizes) to matplotlib.

    Plain rcParams (seaborn's "whitegrid" look without importing seaborn,
    which costs a second at every kernel start)."""
    import matplotlib as mpl

    mpl.rcParams.update(THEME_RC)
    # a list of installed families (not the generic "sans-serif") is what lets
    # matplotlib fall back glyph by glyph
    mpl.rcParams["font.family"] = _installed_fonts()
    mpl.rcParams["axes.prop_cycle"] = mpl.cycler(color=PALETTE)


def _fig_ax(ax=None, figsize=None):
    import matplotlib.pyplot as plt

    use_theme()
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize)
    return fig, ax


def _fmt(fmt: str, value) -> str:
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def bar(data, *, x: str | None = None, y: str | None = None, horizontal: bool = False,
        fmt: str = "{:,.0f}", title: str | None = None, xlabel: str | None = None,
        ylabel: str | None = None, color: str | None = None, ax=None):
    """Bars with their values written on them.

    Parameters
    ----------
    data : pandas.Series or pandas.DataFrame
        A Series (index = labels, values = heights), or a frame with the
        label column ``x`` and the value column ``y``.
    horizontal : bool
        Horizontal bars (long labels such as segment names).
    fmt : str
        Format of the value labels.

    Returns
    -------
    matplotlib.figure.Figure
        One bar per row of ``data``.
    """
    if isinstance(data, pd.DataFrame):
        series = data.set_index(x)[y]
    else:
        series = pd.Series(data)
    labels = [str(v) for v in series.index]
    fig, ax = _fig_ax(ax, figsize=(8, max(2.5, 0.4 * len(series) + 1)) if horizontal else None)
    color = color or COLORS["main"]
    if horizontal:
        bars = ax.barh(labels[::-1], series.to_numpy()[::-1], color=color)
        ax.grid(axis="y", visible=False)
    else:
        bars = ax.bar(labels, series.to_numpy(), color=color)
        ax.grid(axis="x", visible=False)
        if max((len(s) for s in labels), default=0) > 8:
            ax.tick_params(axis="x", labelrotation=30)
    ax.bar_label(bars, labels=[_fmt(fmt, v) for v in (series.to_numpy()[::-1] if horizontal
                                                       else series.to_numpy())], padding=2)
    ax.set_title(title or "")
    ax.set_xlabel(xlabel if xlabel is not None else ("" if horizontal else (x or "")))
    ax.set_ylabel(ylabel if ylabel is not None else ("" if not horizontal else (x or "")))
    return fig


def line_with_band(history: pd.Series, forecast: pd.Series | None = None, *,
                   lower: pd.Series | None = None, upper: pd.Series | None = None,
                   level: float | None = None, title: str | None = None, ylabel: str = "",
                   ax=None):
    """Observed values, a forecast and its prediction interval as a band.

    Parameters
    ----------
    history : pandas.Series
        Observed values indexed by time.
    forecast, lower, upper : pandas.Series, optional
        Point forecast and interval bounds, indexed by future time.
    level : float, optional
        The interval's coverage (0.8, 0.95) for the legend.

    Returns
    -------
    matplotlib.figure.Figure
        Lines: history, then forecast (if given); one filled band.
    """
    fig, ax = _fig_ax(ax)
    ax.plot(history.index, history.to_numpy(), color=COLORS["neutral"], lw=1.5, label="observed")
    if forecast is not None:
        ax.plot(forecast.index, forecast.to_numpy(), color=COLORS["main"], lw=2, label="forecast")
    if lower is not None and upper is not None:
        label = f"{level:.0%} prediction interval" if level else "prediction interval"
        ax.fill_between(lower.index, lower.to_numpy(), upper.to_numpy(), color=COLORS["band"],
                        alpha=0.18, lw=0, label=label)
    ax.set_title(title or "")
    ax.set_ylabel(ylabel)
    ax.legend(loc="upper left")
    return fig


def heatmap(df: pd.DataFrame, *, fmt: str = ".0f", title: str | None = None, cmap: str = "Blues",
            annot: bool = True, center: float | None = None, ax=None):
    """A labelled matrix (cohort retention, segment x region).

    Parameters
    ----------
    df : pandas.DataFrame
        Rows and columns as they should appear; values numeric.
    fmt : str
        Format of the cell annotations (seaborn style, ``".0%"``).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import seaborn as sns

    fig, ax = _fig_ax(ax, figsize=(min(2 + 0.7 * df.shape[1], 14), min(1.5 + 0.4 * df.shape[0], 12)))
    sns.heatmap(df.astype(float), annot=annot and df.size <= 400, fmt=fmt, cmap=cmap, center=center,
                linewidths=0.5, linecolor="white", cbar=True, ax=ax)
    ax.set_title(title or "")
    ax.grid(False)
    return fig


def small_multiples(df: pd.DataFrame, *, facet: str, x: str, y: str, ncols: int = 3,
                    kind: str = "line", sharey: bool = True, title: str | None = None,
                    max_panels: int = 12):
    """One small panel per group, on shared axes.

    Parameters
    ----------
    df : pandas.DataFrame
        Long form: ``facet, x, y`` columns (one row per group and x).
    kind : {"line", "bar"}

    Returns
    -------
    matplotlib.figure.Figure
        One axes per group (at most ``max_panels``, largest groups by total
        ``y`` first); unused grid cells are removed.
    """
    import matplotlib.pyplot as plt

    use_theme()
    totals = df.groupby(facet, sort=False)[y].sum().sort_values(ascending=False)
    groups = list(totals.index[:max_panels])
    ncols = max(1, min(ncols, len(groups)))
    nrows = max(1, math.ceil(len(groups) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.4 * nrows), sharey=sharey,
                             squeeze=False)
    for axis, group in zip(axes.flat, groups):
        part = df[df[facet] == group]
        if kind == "bar":
            axis.bar(part[x].astype(str), part[y], color=COLORS["main"])
        else:
            axis.plot(part[x], part[y], color=COLORS["main"], lw=1.5)
        axis.set_title(str(group), fontsize=11)
        axis.tick_params(labelsize=8)
    for axis in list(axes.flat)[len(groups):]:
        fig.delaxes(axis)
    if title:
        fig.suptitle(title, x=0.01, ha="left", fontweight="bold")
    fig.tight_layout()
    return fig


def figure_html(fig, *, fmt: str = "png", alt: str = "", close: bool = True) -> str:
    """A matplotlib figure (or an Axes, or a seaborn grid) as self-contained
    HTML (inline PNG or SVG).

    The figure is closed afterwards (so the notebook's inline backend does
    not show it a second time) unless ``close=False``.

    Returns
    -------
    str
        ``<img src="data:image/png;base64,...">`` or an ``<svg>`` element.
    """
    from matplotlib.figure import Figure

    if not isinstance(fig, Figure):  # an Axes, or a seaborn FacetGrid / JointGrid
        fig = getattr(fig, "figure", None) or getattr(fig, "fig", None)
        if not isinstance(fig, Figure):
            raise TypeError("figure_html takes a matplotlib Figure, an Axes or a seaborn grid")
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt)
    if close:
        import matplotlib.pyplot as plt
        plt.close(fig)
    if fmt == "svg":
        svg = buf.getvalue().decode("utf-8")
        return svg[svg.index("<svg"):]
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return (f'<img class="crm-figure" src="data:image/{fmt};base64,{data}" '
            f'alt="{escape(alt or "chart")}">')


def sparkline(values: Sequence[float], *, width: int = 120, height: int = 28,
              color: str | None = None, label: str = "trend") -> str:
    """A tiny trend line as an inline SVG string, for KPI cards.

    Missing values are skipped; fewer than two values give an empty SVG of
    the same size (the card keeps its layout). The last point is marked.

    Examples
    --------
    >>> svg = sparkline([3, 4, 2, 5])
    >>> svg.startswith("<svg") and svg.count(",") == 4
    True
    """
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    head = (f'<svg class="crm-spark" xmlns="http://www.w3.org/2000/svg" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}">')
    if len(vals) < 2:
        return head + "</svg>"
    pad = 3
    arr = np.asarray(vals)
    lo, hi = float(arr.min()), float(arr.max())
    span = hi - lo or 1.0
    xs = np.linspace(pad, width - pad, len(arr))
    ys = height - pad - (arr - lo) / span * (height - 2 * pad)
    if hi == lo:
        ys = np.full_like(xs, height / 2)
    points = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(xs, ys))
    color = color or COLORS["main"]
    return (head + f'<polyline fill="none" stroke="{color}" stroke-width="1.6" '
            f'stroke-linejoin="round" stroke-linecap="round" points="{points}"/>'
            f'<circle cx="{xs[-1]:.1f}" cy="{ys[-1]:.1f}" r="2.2" fill="{color}"/></svg>')
