"""Key figures, tables and plain-language sentences for the forecasting page.

Everything here reads a :class:`~crmlab.forecasting.pipeline.ForecastResult`
(and optionally an elasticity and a price scenario) and writes what a
sales planner reads: ``metrics.json`` figures, the exports, the largest
groups, 3-5 findings and one paragraph per section. Sentences are made from
the numbers; group labels are category/region/segment names, never a
person's data, and groups under ``config.MIN_GROUP_SIZE`` customers are
never named.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from crmlab.config import MIN_GROUP_SIZE
from crmlab.forecasting.series import FREQ_RULES, TOTAL

FORECAST_COLUMNS = ["group", "period", "model", "yhat", "lo80", "hi80", "lo95", "hi95"]
BACKTEST_COLUMNS = ["group", "period", "actual", "yhat", "model"]

# how a model is named on the page
MODEL_LABELS: dict[str, str] = {
    "naive": "naive (last value)", "seasonal_naive": "seasonal naive (same period last year)",
    "moving_average": "moving average", "holt_winters": "Holt-Winters exponential smoothing",
    "ets": "exponential smoothing (ETS)", "theta": "Theta method",
    "sarimax": "regression with ARIMA errors (holidays, promotions)",
    "gradient_boosting": "gradient boosting on lags and calendar", "ensemble": "ensemble",
    "bottom_up": "sum of the group forecasts",
}


def _fmt(x: float) -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    a = abs(x)
    if a >= 1e9:
        return f"{x / 1e9:.2f} billion"
    if a >= 1e6:
        return f"{x / 1e6:.2f} million"
    if a >= 1e4:
        return f"{x:,.0f}"
    return f"{x:,.1f}" if a < 100 else f"{x:,.0f}"


def model_label(name: str) -> str:
    """A model's name as a stakeholder reads it."""
    if name.startswith("ensemble("):
        members = name[len("ensemble("):-1].split("+")
        return "ensemble of " + ", ".join(MODEL_LABELS.get(m, m) for m in members)
    return MODEL_LABELS.get(name, name)


def _chosen_row(res, group=TOTAL) -> pd.Series:
    t = res.scores
    k = res.chosen[group]
    return t[(t["group"] == group) & (t["model"] == k)].iloc[0]


def _label(res, group=TOTAL) -> str:
    k = res.chosen[group]
    return f"ensemble({'+'.join(res.ensembles[group])})" if k == "ensemble" else k


def forecast_metrics(res) -> dict:
    """The figures of ``metrics.json`` (names fixed by the report's issue).

    ``model``, ``backtest_mase``, ``backtest_smape``, ``seasonal_naive_mase``,
    ``holdout_mase``, ``holdout_smape``, ``holdout_coverage_80`` (None
    without a holdout),
    ``coverage_80``, ``coverage_95`` -- all for the total -- plus
    ``model_by_group`` (group -> model) when grouped, ``reconciliation``,
    ``horizon``, ``freq`` and ``forecast_total`` (the sum of the forecast over
    the horizon after any holdout periods).
    """
    row = _chosen_row(res)
    sn = res.scores[(res.scores["group"] == TOTAL) & (res.scores["model"] == "seasonal_naive")]
    hold = res.holdout_scores[res.holdout_scores["group"] == TOTAL]
    fut = res.forecast_frame[res.forecast_frame["group"] == TOTAL].iloc[res.holdout:]
    out = {
        "model": _label(res),
        "backtest_mase": float(row["mase"]),
        "backtest_smape": float(row["smape"]),
        "seasonal_naive_mase": float(sn["mase"].iloc[0]) if len(sn) else None,
        "holdout_mase": float(hold["mase"].iloc[0]) if len(hold) else None,
        "holdout_smape": float(hold["smape"].iloc[0]) if len(hold) else None,
        "holdout_coverage_80": float(hold["coverage_80"].iloc[0]) if len(hold) and "coverage_80" in hold else None,
        "coverage_80": res.coverage[TOTAL].get(80),
        "coverage_95": res.coverage[TOTAL].get(95),
        "freq": res.freq, "horizon": res.horizon, "value": res.value,
        "forecast_total": float(fut["yhat"].sum()),
        "forecast_total_lo80": res.totals[TOTAL]["lo80"],
        "forecast_total_hi80": res.totals[TOTAL]["hi80"],
        "reconciliation": res.reconcile,
    }
    if len(res.groups) > 1:
        out["model_by_group"] = {g: _label(res, g) for g in res.groups[1:]}
        out["reconciled_mase"] = res.reconciled_mase
    # JSON has no NaN: an unavailable figure is null
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in out.items()}


def exports(res) -> dict[str, pd.DataFrame]:
    """``{"forecast": ..., "backtest": ...}`` with the issue's columns, every group."""
    fc = res.forecast_frame[FORECAST_COLUMNS].copy()
    bt = res.backtest_frame[BACKTEST_COLUMNS].copy()
    for f in (fc, bt):
        f["period"] = pd.to_datetime(f["period"]).dt.strftime("%Y-%m-%d")
    return {"forecast": fc, "backtest": bt}


def group_table(res, n: int = 10, *, min_customers: int = MIN_GROUP_SIZE) -> pd.DataFrame:
    """The largest groups' forecasts, for the page (all groups are in the export).

    One row per group (largest by training-period value first, groups with
    fewer than ``min_customers`` customers left out)::

        group, customers, last_year, forecast, lo80, hi80, change_pct, model, backtest_mase

    ``forecast`` sums the ``horizon`` periods after the data; ``last_year``
    the same periods a year earlier; ``lo80``/``hi80`` the range of that sum
    (``ForecastResult.totals``).
    """
    if len(res.groups) <= 1:
        return pd.DataFrame(columns=["group", "customers", "last_year", "forecast", "lo80", "hi80",
                                     "change_pct", "model", "backtest_mase"])
    fc = res.forecast_frame
    rows = []
    for i, g in enumerate(res.groups[1:], start=1):
        size = res.group_customers.get(g)
        if size is not None and size < min_customers:
            continue
        f = fc[fc["group"] == g].iloc[res.holdout:]
        ly = _last_year(res, i)
        tot = float(f["yhat"].sum())
        rows.append({"group": g, "customers": size, "train_value": float(res.Y[i, :res.train_len].sum()),
                     "last_year": ly, "forecast": tot, "lo80": res.totals[g]["lo80"],
                     "hi80": res.totals[g]["hi80"],
                     "change_pct": 100 * (tot / ly - 1) if ly else np.nan,
                     "model": _label(res, g), "backtest_mase": float(_chosen_row(res, g)["mase"])})
    t = pd.DataFrame(rows)
    if t.empty:
        return t
    return (t.sort_values("train_value", ascending=False).drop(columns="train_value")
            .head(n).reset_index(drop=True))


def _last_year(res, i: int) -> float | None:
    """Value of the same ``horizon`` periods one year before the forecast's
    future part (the periods after the data), or None without that history."""
    lag = {"D": 364, "W": 52, "M": 12}[res.freq]
    T = len(res.periods)
    idx = np.arange(T, T + res.horizon) - lag
    if idx.min() < 0 or idx.max() >= T:
        return None
    return float(res.Y[i, idx].sum())


def findings(res, *, elasticity=None, scenario: dict | None = None,
             min_customers: int = MIN_GROUP_SIZE) -> list[str]:
    """Three to five plain sentences with numbers, for "What changed".

    Examples
    --------
    >>> findings(res)  # doctest: +SKIP
    ['Revenue over the next 12 weeks is forecast at 1.52 million (80% range ...), ...', ...]
    """
    unit = FREQ_RULES[res.freq]["label"]
    what = res.value
    out = []
    m = forecast_metrics(res)
    ly = _last_year(res, 0)
    tot = res.totals[TOTAL]
    s = (f"{what.capitalize()} over the next {res.horizon} {unit}s is forecast at "
         f"{_fmt(m['forecast_total'])} (80% range {_fmt(tot['lo80'])} to {_fmt(tot['hi80'])})")
    if ly:
        ch = 100 * (m["forecast_total"] / ly - 1)
        s += f", {abs(ch):.1f}% {'above' if ch >= 0 else 'below'} the same {unit}s last year"
    out.append(s + ".")
    sn = m["seasonal_naive_mase"]
    if sn:
        gain = 100 * (1 - m["backtest_mase"] / sn)
        out.append(
            f"The chosen model, {model_label(m['model'])}, was {abs(gain):.0f}% "
            f"{'more' if gain >= 0 else 'less'} accurate than repeating last year's figures in a "
            f"backtest over {len(res.origins)} forecast origins (MASE {m['backtest_mase']:.2f} vs "
            f"{sn:.2f}); its 80% intervals held {100 * (m['coverage_80'] or 0):.0f}% of the actual "
            f"{unit}s.")
    if m["holdout_mase"] is not None:
        verdict = ("in line with what" if m["holdout_mase"] <= m["backtest_mase"] * 1.5
                   else "worse than")
        out.append(f"On the {res.holdout} most recent {unit}s, withheld from all fitting, the "
                   f"forecast scored MASE {m['holdout_mase']:.2f} (sMAPE {m['holdout_smape']:.1f}%): "
                   f"{verdict} the backtest promised.")
    gt = group_table(res, n=len(res.groups), min_customers=min_customers)
    gt = gt.dropna(subset=["change_pct"]) if len(gt) else gt
    if len(gt) >= 2:
        up, down = gt.loc[gt["change_pct"].idxmax()], gt.loc[gt["change_pct"].idxmin()]
        out.append(f"Across {len(res.groups) - 1} groups, {up['group']} is forecast to change most "
                   f"({up['change_pct']:+.1f}% on last year) and {down['group']} least "
                   f"({down['change_pct']:+.1f}%).")
    if scenario is not None and elasticity is not None and elasticity.ci_low <= 0:
        out.append(
            f"A {abs(100 * scenario['price_change']):.0f}% price "
            f"{'cut' if scenario['price_change'] < 0 else 'rise'} would change forecast "
            f"{what} by {scenario['impact_pct']:+.1f}% ({_fmt(scenario['impact'])}; 95% range "
            f"{_fmt(scenario['impact_low'])} to {_fmt(scenario['impact_high'])}), given an "
            f"estimated price elasticity of {elasticity.estimate:.2f} "
            f"(95% CI {elasticity.ci_low:.2f} to {elasticity.ci_high:.2f}).")
    else:
        hol = res.effects[res.effects["regressor"].str.startswith("hol_")
                          & (res.effects["p_value"] < 0.05)]
        if len(hol):
            e = hol.loc[hol["event_period_effect"].abs().idxmax()]
            name = e["regressor"].removeprefix("hol_").replace("_", " ")
            out.append(f"The clearest calendar effect is {name}: about "
                       f"{_fmt(e['event_period_effect'])} {what} in the {unit} it falls in, "
                       f"compared with an ordinary {unit} (p = {e['p_value']:.3f}).")
    return out[:5]


def explain(res, section: str, *, elasticity=None, scenario: dict | None = None) -> str:
    """One paragraph for a section of the page: what it means and what to do.

    ``section`` is one of ``"models"``, ``"forecast"``, ``"groups"``,
    ``"holdout"``, ``"scenario"``.
    """
    unit = FREQ_RULES[res.freq]["label"]
    m = forecast_metrics(res)
    if section == "models":
        t = res.score_table()
        best_simple = t[t["model"].isin(["naive", "seasonal_naive", "moving_average"])]["mase"].min()
        txt = (f"Every model was refitted at {len(res.origins)} origins and scored on the "
               f"{res.horizon} {unit}s after each. MASE below 1 beats the seasonal naive forecast "
               f"measured on the training data; the table ranks all models. The winner, "
               f"{model_label(m['model'])}, has MASE {m['backtest_mase']:.2f}")
        if np.isfinite(best_simple):
            txt += f" against {best_simple:.2f} for the best simple rule"
        if res.chosen[TOTAL] == "ensemble":
            txt += "; averaging the best models beat each of them alone, so the page uses the average"
        return txt + (". Use its forecast for planning; if a simple rule ever wins, the series "
                      "has little pattern to learn and plans should carry wide buffers.")
    if section == "forecast":
        src = {"model": "the model's own prediction intervals",
               "conformal": "the spread of the model's backtest errors at each step ahead"}[
            res.interval_source[TOTAL]]
        c80 = m["coverage_80"]
        cal = ("about right" if c80 is not None and 0.72 <= c80 <= 0.88 else
               "too narrow: treat them as optimistic" if c80 is not None and c80 < 0.72 else
               "wider than needed: treat them as cautious")
        return (f"The shaded bands are 80% and 95% ranges from {src}. In the backtest the 80% "
                f"band held {100 * (c80 or 0):.0f}% of actual {unit}s and the 95% band "
                f"{100 * (m['coverage_95'] or 0):.0f}%, so the bands are {cal}. Plan stock and "
                f"staffing on the central line and keep the upper 80% bound as the busy case.")
    if section == "groups":
        if len(res.groups) <= 1:
            return "No grouping was requested; the forecast covers the total only."
        how = {"bottom_up": "the total is the sum of the group forecasts",
               "top_down": "the group forecasts are scaled to add up to the total's own forecast",
               "none": "the group forecasts are not forced to add up to the total"}[res.reconcile]
        rec = ""
        if res.reconciled_mase is not None:
            own = m["backtest_mase"]
            rec = (f" In the backtest the sum of the groups forecast the total with MASE "
                   f"{res.reconciled_mase:.2f} against {own:.2f} for the total's own model.")
        return (f"Each of the {len(res.groups) - 1} groups got its own model, chosen by the same "
                f"backtest; {how}, so the numbers on this page agree.{rec} The table shows the "
                f"largest groups; the export lists all of them. Look first at large groups with a "
                f"falling forecast.")
    if section == "holdout":
        if not res.holdout:
            return ("No periods were withheld. Run with holdout set to, say, the horizon to see "
                    "how this forecast would have done on the latest data it never saw.")
        return (f"The last {res.holdout} {unit}s were hidden from every step, then compared with "
                f"the forecast: MASE {m['holdout_mase']:.2f}, sMAPE {m['holdout_smape']:.1f}%. "
                f"A holdout score far above the backtest's {m['backtest_mase']:.2f} means recent "
                f"sales broke from their past pattern; check for a new campaign, price change or "
                f"data gap before relying on the forecast.")
    if section == "scenario":
        if elasticity is None or scenario is None:
            return ("Not available: price scenarios need order lines with quantity and unit_price "
                    "that vary over time.")
        sig = elasticity.ci_high < 0 or elasticity.ci_low > 0
        if elasticity.ci_low > 0:
            return (f"The data show demand rising with price (elasticity {elasticity.estimate:.2f}, "
                    f"95% CI {elasticity.ci_low:.2f} to {elasticity.ci_high:.2f}). Real demand "
                    f"does not work that way: the price changes in this history move together "
                    f"with something else (promotion traffic, product mix, stock-outs), so no "
                    f"price scenario is drawn from it. Test a price change on part of the range "
                    f"to measure the response directly.")
        return (f"Demand was estimated to change by {elasticity.estimate:.2f}% for each 1% price "
                f"change (95% CI {elasticity.ci_low:.2f} to {elasticity.ci_high:.2f}, from "
                f"{elasticity.n_obs:,} product-{unit}s of {elasticity.n_units} products, controlling "
                f"for season, trend, holidays and promotions). A "
                f"{100 * scenario['price_change']:+.0f}% price change would move quantity by "
                f"{scenario['quantity_change_pct']:+.1f}% and {res.value} by "
                f"{scenario['impact_pct']:+.1f}%. "
                + ("The estimate is clearly away from zero, so the direction is reliable; "
                   if sig else "The interval includes zero, so the data cannot tell the effect; ")
                + "test a price change on part of the range before rolling it out everywhere.")
    raise ValueError(f"unknown section {section!r}")
