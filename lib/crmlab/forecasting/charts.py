"""The forecasting page's charts, drawn with the shared theme of :mod:`crmlab.charts`.

Each function takes a :class:`~crmlab.forecasting.pipeline.ForecastResult`
and returns a matplotlib figure for ``Report.section(figure=...)``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from crmlab import charts
from crmlab.forecasting.narrative import model_label
from crmlab.forecasting.series import FREQ_RULES, TOTAL

# how much history the charts show before the forecast, in years
HISTORY_YEARS = 2.0
GROUP_HISTORY_YEARS = 1.0


def _short(x, _pos=None) -> str:
    a = abs(x)
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{x / div:,.1f}{suffix}".replace(".0" + suffix, suffix)
    return f"{x:,.0f}"


def _axis_numbers(ax, *, dates: bool = True, max_ticks: int = 7) -> None:
    """Short numbers on the value axis (1.2M, 350k); concise, uncrowded dates
    on the time axis."""
    import matplotlib.dates as mdates
    from matplotlib.ticker import FuncFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(_short))
    if dates:
        locator = mdates.AutoDateLocator(minticks=3, maxticks=max_ticks)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def _recent(frame: pd.DataFrame, res, years: float) -> pd.DataFrame:
    keep = int(np.ceil(years * FREQ_RULES[res.freq]["periods_per_year"]))
    first_future = frame.index[frame["part"] == "forecast"]
    stop = first_future[0] if len(first_future) else len(frame)
    return frame.iloc[max(0, stop - keep):]


def forecast_chart(res, group: str = TOTAL, *, years: float = HISTORY_YEARS, title: str | None = None):
    """History, forecast, and its 80% and 95% bands for one series.

    Shows the last ``years`` of history (grey), withheld holdout periods
    (black dots, when ``holdout`` > 0), the forecast (blue) with the 95% band
    (light) and the 80% band (darker), and a dotted line where the forecast
    starts.

    Returns
    -------
    matplotlib.figure.Figure
    """
    h = res.history(group)
    h = _recent(h, res, years)
    hist = h[h["part"] == "train"].set_index("period")["actual"]
    fut = h[h["part"] != "train"].set_index("period")
    fig = charts.line_with_band(hist, fut["yhat"], lower=fut["lo95"], upper=fut["hi95"], level=0.95,
                                title=title or f"{res.value.capitalize()} per {FREQ_RULES[res.freq]['label']}",
                                ylabel=res.value)
    ax = fig.axes[0]
    ax.fill_between(fut.index, fut["lo80"].to_numpy(float), fut["hi80"].to_numpy(float),
                    color=charts.COLORS["band"], alpha=0.25, lw=0, label="80% prediction interval")
    hold = fut[fut["part"] == "holdout"]
    if len(hold):
        ax.plot(hold.index, hold["actual"], "o", ms=3.5, color="#111827",
                label="withheld actuals (holdout)")
    if len(fut):
        ax.axvline(fut.index[0], color=charts.COLORS["neutral"], lw=1, ls=":")
    _axis_numbers(ax)
    ax.legend(loc="upper left", fontsize=9)
    return fig


def backtest_chart(res, group: str = TOTAL):
    """Actual values over the backtest windows against what the chosen model
    and seasonal naive forecast from each origin.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, ax = _axes()
    bt = res.backtest_frame[res.backtest_frame["group"] == group]
    chosen = res.chosen[group]
    i = res.groups.index(group)
    start = max(0, res.origins[0] - int(FREQ_RULES[res.freq]["season_length"] // 2))
    span = slice(start, res.train_len)
    ax.plot(res.periods[span], res.Y[i, span], color=charts.COLORS["neutral"], lw=1.5, label="actual")
    for name, color, style, label in ((chosen, charts.COLORS["main"], "-", "chosen model"),
                                      ("seasonal_naive", charts.COLORS["accent"], "--",
                                       "seasonal naive (same period last year)")):
        part = bt[bt["model"] == name]
        for k, o in enumerate(res.origins):
            win = part[part["period"].isin(res.periods[o:o + res.horizon])].sort_values("period")
            ax.plot(win["period"], win["yhat"], style, color=color, lw=2 if style == "-" else 1.4,
                    label=label if k == 0 else None)
    for o in res.origins:
        ax.axvline(res.periods[o], color=charts.COLORS["neutral"], lw=1, ls=":")
    ax.set_title(f"Backtest: forecasts made at {len(res.origins)} past dates")
    ax.set_ylabel(res.value)
    _axis_numbers(ax)
    ax.legend(loc="upper left", fontsize=9)
    return fig


def groups_chart(res, groups: list[str], *, years: float = GROUP_HISTORY_YEARS, ncols: int = 4):
    """Small multiples: the last ``years`` of each group and its forecast.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per group of ``groups`` (largest first), history in blue and
        the forecast with its 80% band in orange.
    """
    frames = []
    for g in groups:
        h = _recent(res.history(g), res, years)
        frames.append(h.assign(group=g, y=h["actual"].where(h["part"] == "train", h["yhat"])))
    long = pd.concat(frames, ignore_index=True)
    hist = long[long["part"] == "train"]
    fig = charts.small_multiples(hist, facet="group", x="period", y="y", ncols=ncols, sharey=False,
                                 max_panels=len(groups),
                                 title=f"{res.value.capitalize()} per {FREQ_RULES[res.freq]['label']}, "
                                       f"largest groups")
    for ax in fig.axes:
        g = next((t for t in (ax.get_title(loc=loc) for loc in ("left", "center", "right")) if t), "")
        fut = long[(long["group"] == g) & (long["part"] != "train")]
        ax.plot(fut["period"], fut["yhat"], color=charts.COLORS["accent"], lw=1.8)
        ax.fill_between(fut["period"], fut["lo80"].to_numpy(float), fut["hi80"].to_numpy(float),
                        color=charts.COLORS["accent"], alpha=0.2, lw=0)
        _axis_numbers(ax, max_ticks=4)
        ax.tick_params(axis="both", labelsize=8)
    fig.tight_layout()
    return fig


def scoreboard_chart(table: pd.DataFrame):
    """Backtest MASE per model as horizontal bars (lower is better), the
    chosen model in blue, the others grey.

    Parameters
    ----------
    table : DataFrame
        :func:`~crmlab.forecasting.narrative.score_board`: ``short`` (or
        ``model``) names, ``MASE``, ``is_chosen``, best first.
    """
    fig, ax = _axes(figsize=(8, max(2.5, 0.38 * len(table) + 1)))
    t = table.iloc[::-1]
    colors = [charts.COLORS["main"] if c else "#cbd5e1" for c in t["is_chosen"]]
    names = t["short"] if "short" in t else t["model"]
    bars = ax.barh(names, t["MASE"], color=colors)
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in t["MASE"]], padding=2, fontsize=9)
    ax.axvline(1.0, color=charts.COLORS["neutral"], lw=1, ls=":")
    ax.set_xlabel("backtest MASE (lower is better; 1 = as good as seasonal naive in training)")
    ax.grid(axis="y", visible=False)
    ax.set_title("Forecast error of every model in the backtest")
    return fig


def _axes(figsize=None):
    import matplotlib.pyplot as plt

    charts.use_theme()
    fig, ax = plt.subplots(figsize=figsize)
    return fig, ax


__all__ = ["forecast_chart", "backtest_chart", "groups_chart", "scoreboard_chart", "model_label"]
