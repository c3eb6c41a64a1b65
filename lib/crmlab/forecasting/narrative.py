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
from crmlab.forecasting.series import FREQ_RULES, MISSING_GROUP, TOTAL

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
# ... and in a few words (KPI cards, chart legends)
MODEL_SHORT: dict[str, str] = {
    "naive": "naive", "seasonal_naive": "seasonal naive", "moving_average": "moving average",
    "holt_winters": "Holt-Winters", "ets": "ETS", "theta": "Theta", "sarimax": "holiday regression",
    "gradient_boosting": "gradient boosting", "ensemble": "ensemble",
    "bottom_up": "sum of groups",
}
# holiday regressors as a reader names them
EVENT_LABELS: dict[str, str] = {
    "chinese_new_year": "Chinese New Year", "womens_day_38": "Women's Day (8 March)",
    "shopping_618": "the 618 shopping festival", "national_day": "National Day week",
    "singles_day": "Singles' Day (11.11)", "double_12": "Double 12 (12.12)",
    "new_year": "New Year's Day", "valentines_day": "Valentine's Day", "easter": "Easter",
    "thanksgiving": "Thanksgiving", "black_friday": "Black Friday", "cyber_monday": "Cyber Monday",
    "christmas": "Christmas", "discount_share": "promotions (discount share)",
}
# p-value below which an effect is called clear on the page
CLEAR_P = 0.05


def _known(x) -> bool:
    """A figure that can be printed: not None, not NaN or infinite."""
    return x is not None and bool(np.isfinite(x))


def _num(x, spec: str = "{:.2f}") -> str:
    """A score in ``spec``, or ``n/a`` when it could not be measured."""
    return spec.format(x) if _known(x) else "n/a"


def _fmt(x: float) -> str:
    if not _known(x):
        return "n/a"
    a = abs(x)
    if a >= 1e9:
        return f"{x / 1e9:.2f} billion"
    if a >= 1e6:
        return f"{x / 1e6:.2f} million"
    if a >= 1e4:
        return f"{x:,.0f}"
    return f"{x:,.1f}" if a < 100 else f"{x:,.0f}"


def model_label(name: str, *, short: bool = False) -> str:
    """A model's name as a stakeholder reads it (``short``: in a few words).

    Examples
    --------
    >>> model_label("ensemble(theta+sarimax)", short=True)
    'ensemble of Theta + SARIMAX'
    """
    names = MODEL_SHORT if short else MODEL_LABELS
    if name.startswith("top_down("):
        return model_label(name[len("top_down("):-1], short=short)
    if name.startswith("ensemble("):
        members = name[len("ensemble("):-1].split("+")
        return "ensemble of " + (" + " if short else ", ").join(names.get(m, m) for m in members)
    return names.get(name, name)


def plain_model(name: str) -> str:
    """A model as a sentence names it: an ensemble is "an average of the N
    best models", a single model its plain label."""
    if name.startswith("ensemble("):
        return f"an average of the {len(name[len('ensemble('):-1].split('+'))} best models"
    if name == "bottom_up":
        return "the sum of the group forecasts"
    return model_label(name)


def kpi_model(name: str) -> tuple[str, str]:
    """(value, label) of the chosen-model KPI card: a word or two as the
    value, the members of an ensemble in the label."""
    if name.startswith("ensemble("):
        members = [MODEL_SHORT.get(m, m) for m in name[len("ensemble("):-1].split("+")]
        return "Ensemble", "Chosen model (by backtest): average of " + ", ".join(members[:-1]) \
            + " and " + members[-1]
    return model_label(name, short=True).capitalize(), "Chosen model (by backtest)"


def event_label(regressor: str) -> str:
    """``hol_singles_day`` -> ``Singles' Day (11.11)``."""
    key = regressor.removeprefix("hol_")
    return EVENT_LABELS.get(key, key.replace("_", " "))


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
    if out["seasonal_naive_mase"]:
        out["improvement_vs_seasonal_naive"] = 1 - out["backtest_mase"] / out["seasonal_naive_mase"]
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
    the same periods a year earlier (NaN when there is no such comparison,
    see :func:`_last_year`; ``change_pct`` is then NaN too); ``lo80``/``hi80``
    the range of that sum (``ForecastResult.totals``).
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
                     "change_pct": 100 * (tot / ly - 1) if ly > 0 else np.nan,
                     "model": _label(res, g), "backtest_mase": float(_chosen_row(res, g)["mase"])})
    t = pd.DataFrame(rows)
    if t.empty:
        return t
    return (t.sort_values("train_value", ascending=False).drop(columns="train_value")
            .head(n).reset_index(drop=True))


def _last_year(res, i: int) -> float:
    """Value of the same ``horizon`` periods one year before the forecast's
    future part (the periods after the data); NaN without that comparison:
    the horizon reaches past one year (the same periods last year are partly
    in the forecast), the history is shorter, or the group had not started
    selling when that window began (a part-year would pass for growth)."""
    lag = {"D": 364, "W": 52, "M": 12}[res.freq]
    T = len(res.periods)
    idx = np.arange(T, T + res.horizon) - lag
    if idx.min() < 0 or idx.max() >= T:
        return np.nan
    sold = np.flatnonzero(res.Y[i] > 0)
    if not len(sold) or sold[0] > idx.min():
        return np.nan
    return float(res.Y[i, idx].sum())


def scenario_table(price: dict) -> pd.DataFrame:
    """The price-change ladder of :func:`crmlab.forecasting.page.price_analysis`
    for the page: ``price change``, ``units``, ``revenue`` (relative changes),
    ``revenue impact`` and its 95% range (from the elasticity's interval),
    the change asked for marked."""
    t = price.get("table")
    if t is None or t.empty:
        return pd.DataFrame()
    return pd.DataFrame({
        "price change": t["price change"], "units": t["units"], "revenue": t["revenue"],
        "revenue impact": t["revenue impact"],
        "95% range": [f"{_signed(a)} to {_signed(b)}" for a, b in zip(t["impact low"], t["impact high"])],
        "": np.where(t["asked"], "◀ asked", ""),
    })


def price_metrics(price: dict | None) -> dict:
    """``elasticity``, ``elasticity_ci_low``/``_high`` and the asked
    scenario's ``price_scenario_impact`` (None when not available)."""
    out = {"elasticity": None, "elasticity_ci_low": None, "elasticity_ci_high": None,
           "price_scenario_impact": None}
    if price and price.get("available"):
        el = price["elasticity"]
        out.update(elasticity=el.estimate, elasticity_ci_low=el.ci_low, elasticity_ci_high=el.ci_high)
        if price.get("scenario"):
            out["price_scenario_impact"] = price["scenario"]["impact"]
    return out


def metric_cards(res, metrics: dict | None = None, *, price: dict | None = None) -> list[dict]:
    """The ``Report.metric`` calls of the page, KPI cards first.

    Returns
    -------
    list of dict
        Keyword arguments for ``rep.metric(**card)``: the four KPI cards
        (forecast total with its 80% range in the label, the chosen model in
        a few words, the accuracy gain over seasonal naive, the 80% interval
        coverage), then every other figure of :func:`forecast_metrics`.
    """
    m = dict(metrics or forecast_metrics(res))
    m.update(price_metrics(price))
    unit = FREQ_RULES[res.freq]["label"]
    cards = [
        {"key": "forecast_total", "value": m["forecast_total"], "kpi": True, "better": "higher",
         "label": (f"{res.value.capitalize()} forecast, next {res.horizon} {unit}s (80% range "
                   f"{_fmt(m['forecast_total_lo80'])} to {_fmt(m['forecast_total_hi80'])})")},
        {"key": "model_name", "value": kpi_model(m["model"])[0], "kpi": True, "fmt": "{}",
         "label": kpi_model(m["model"])[1]},
    ]
    if m.get("improvement_vs_seasonal_naive") is not None:
        cards.append({"key": "improvement_vs_seasonal_naive", "value": m["improvement_vs_seasonal_naive"],
                      "kpi": True, "fmt": "{:.0%}", "better": "higher",
                      "label": (f"Error below seasonal naive (backtest MASE {_num(m['backtest_mase'])} "
                                f"vs {_num(m['seasonal_naive_mase'])})")})
    cards.append({"key": "coverage_80", "value": m["coverage_80"], "kpi": True, "fmt": "{:.0%}",
                  "label": "Backtest actuals inside the 80% range"})
    formats = {"backtest_mase": ("{:.3f}", "lower"), "backtest_smape": ("{:.1f}", "lower"),
               "seasonal_naive_mase": ("{:.3f}", None), "holdout_mase": ("{:.3f}", "lower"),
               "holdout_smape": ("{:.1f}", "lower"), "coverage_95": ("{:.0%}", None),
               "holdout_coverage_80": ("{:.0%}", None), "reconciled_mase": ("{:.3f}", "lower"),
               "elasticity": ("{:.2f}", None), "elasticity_ci_low": ("{:.2f}", None),
               "elasticity_ci_high": ("{:.2f}", None)}
    shown = {c["key"] for c in cards}
    for key, value in m.items():
        if key in shown:
            continue
        fmt, better = formats.get(key, ("{}" if isinstance(value, (str, dict)) else "{:,.0f}", None))
        cards.append({"key": key, "value": value, "fmt": fmt, "better": better})
    return cards


def score_board(res, group: str = TOTAL) -> pd.DataFrame:
    """Every model's backtest scores for one series, best first.

    Returns
    -------
    DataFrame
        ``model`` (plain name), ``MASE``, ``sMAPE %``, ``80% coverage``,
        ``95% coverage``, ``error vs seasonal naive`` (share lower, negative
        when worse), ``chosen`` ("◀ chosen" on the model in use), and for
        the chart ``is_chosen`` (bool) and ``short`` (the name in a word or two).
    """
    t = res.score_table(group)
    sn = t.loc[t["model"] == "seasonal_naive", "mase"]
    base = float(sn.iloc[0]) if len(sn) else np.nan
    out = pd.DataFrame({
        "model": [model_label(f"ensemble({'+'.join(res.ensembles[group])})")
                  if k == "ensemble" and group in res.ensembles else model_label(k)
                  for k in t["model"]],
        "MASE": t["mase"].to_numpy(float),
        "sMAPE %": t["smape"].to_numpy(float),
        "80% coverage": t["coverage_80"].to_numpy(float),
        "95% coverage": t["coverage_95"].to_numpy(float),
        "error vs seasonal naive": (1 - t["mase"] / base).to_numpy(float) if np.isfinite(base) else np.nan,
        "is_chosen": t["chosen"].to_numpy(bool),
        "short": [model_label(f"ensemble({'+'.join(res.ensembles[group])})", short=True)
                  if k == "ensemble" and group in res.ensembles else model_label(k, short=True)
                  for k in t["model"]],
    })
    out["chosen"] = np.where(out["is_chosen"], "◀ chosen", "")
    return out


def effects_table(res, *, min_share: float = 0.5) -> pd.DataFrame:
    """Holiday and promotion effects on the total, as the SARIMAX fit found them.

    Returns
    -------
    DataFrame
        ``event``, ``effect`` (value units in the period the event covers
        most, compared with an ordinary period; for promotions: per 10
        points of discount share), ``p-value`` and ``reading`` ("clear" when
        p < ``CLEAR_P``, else "not clear"), largest clear effects first.
        Holidays whose window never covers ``min_share`` of any period are
        left out at daily/weekly frequency only when their effect is unclear.
    """
    e = res.effects
    if e is None or e.empty:
        return pd.DataFrame(columns=["event", "effect", "p-value", "reading"])
    e = e.copy()
    promo = e["regressor"] == "discount_share"
    e["shown_effect"] = np.where(promo, e["effect"] * 0.1, e["event_period_effect"])
    e["clear"] = e["p_value"] < CLEAR_P
    e = e[e["regressor"].str.startswith("hol_") | promo]
    e = e.assign(order=~e["clear"], size=-e["shown_effect"].abs()).sort_values(["order", "size"])
    return pd.DataFrame({"event": [event_label(r) for r in e["regressor"]],
                         "effect": e["shown_effect"].to_numpy(float),
                         "p-value": e["p_value"].to_numpy(float),
                         "reading": np.where(e["clear"], "clear", "not clear")}).reset_index(drop=True)


def p_text(p: float) -> str:
    """A p-value as the page prints it: ``<0.001`` or three decimals."""
    return "–" if p is None or not np.isfinite(p) else "<0.001" if p < 0.001 else f"{p:.3f}"


def effects_display(res) -> pd.DataFrame:
    """:func:`effects_table` for the page: the p-value as text (``<0.001``)."""
    e = effects_table(res)
    return e.assign(**{"p-value": [p_text(p) for p in e["p-value"]]})


def groups_display(res, n: int | None = None, *, min_customers: int = MIN_GROUP_SIZE) -> pd.DataFrame:
    """:func:`group_table` for the page: plain column names, the 80% range as
    one column, model names in a few words. All groups unless ``n``."""
    t = group_table(res, n=n or len(res.groups), min_customers=min_customers)
    unit = FREQ_RULES[res.freq]["label"]
    if t.empty:
        return t
    return pd.DataFrame({
        "group": t["group"], "customers": t["customers"],
        f"same {unit}s last year": t["last_year"].astype(float).round(0),
        "forecast": t["forecast"].round(0).astype("Int64"),
        "80% range": [f"{_fmt(a)} to {_fmt(b)}" for a, b in zip(t["lo80"], t["hi80"])],
        "change on last year": t["change_pct"].astype(float) / 100,
        "model": [model_label(m, short=True) for m in t["model"]],
        "backtest MASE": t["backtest_mase"],
    })


def groups_formats(res) -> dict[str, str]:
    """The number formats of :func:`groups_display`'s columns for
    ``Report.section(table_options=dict(formats=...))``; a comparison that
    is not available (NaN) shows as the page's blank mark."""
    unit = FREQ_RULES[res.freq]["label"]
    return {f"same {unit}s last year": "{:,.0f}", "forecast": "{:,.0f}",
            "change on last year": "{:+.1%}", "backtest MASE": "{:.2f}"}


def holdout_table(res, n: int = 8, *, min_customers: int = MIN_GROUP_SIZE) -> pd.DataFrame:
    """The chosen forecast's scores on the withheld periods: the total, then
    the largest groups (groups under ``min_customers`` customers left out).

    Returns
    -------
    DataFrame
        ``series, model, MASE, sMAPE %, 80% coverage, 95% coverage``.
    """
    h = res.holdout_scores
    if h.empty:
        return pd.DataFrame(columns=["series", "model", "MASE", "sMAPE %", "80% coverage", "95% coverage"])
    order = [TOTAL] + [g for g in group_table(res, n=n, min_customers=min_customers)["group"]]
    h = h.set_index("group").reindex([g for g in order if g in set(h["group"])]).reset_index()
    return pd.DataFrame({"series": h["group"], "model": [model_label(m, short=True) for m in h["model"]],
                         "MASE": h["mase"], "sMAPE %": h["smape"], "80% coverage": h["coverage_80"],
                         "95% coverage": h["coverage_95"]})


def findings(res, *, price: dict | None = None, elasticity=None, scenario: dict | None = None,
             min_customers: int = MIN_GROUP_SIZE) -> list[str]:
    """Three to five plain sentences with numbers, for "What changed".

    The forecast total with its range and the change on last year; how much
    better the chosen model did than repeating last year, and how often its
    80% ranges held; the holdout score (when periods were withheld); the
    groups that move most (when grouped); the price scenario (when the
    elasticity is usable) or else the clearest holiday effect. Groups under
    ``min_customers`` customers are never named.

    Parameters
    ----------
    price : dict, optional
        :func:`crmlab.forecasting.page.price_analysis` output (or give
        ``elasticity`` and ``scenario``).

    Examples
    --------
    >>> findings(res)  # doctest: +SKIP
    ['Revenue over the next 13 weeks is forecast at 1.52 million (80% range ...), ...', ...]
    """
    if price is not None and price.get("available"):
        elasticity, scenario = price["elasticity"], price.get("scenario")
        if scenario is None and price.get("table") is not None and len(price["table"]):
            t = price["table"]
            row = t.iloc[(t["price change"] + 0.10).abs().argmin()]
            scenario = {"price_change": row["price change"], "impact_pct": 100 * row["revenue"],
                        "impact": row["revenue impact"], "impact_low": row["impact low"],
                        "impact_high": row["impact high"]}
    unit = FREQ_RULES[res.freq]["label"]
    what = res.value
    out = []
    m = forecast_metrics(res)
    ly = _last_year(res, 0)
    tot = res.totals[TOTAL]
    s = (f"{what.capitalize()} over the next {res.horizon} {unit}s is forecast at "
         f"{_fmt(m['forecast_total'])} (80% range {_fmt(tot['lo80'])} to {_fmt(tot['hi80'])})")
    if np.isfinite(ly) and ly > 0:
        ch = 100 * (m["forecast_total"] / ly - 1)
        s += f", {abs(ch):.1f}% {'above' if ch >= 0 else 'below'} the same {unit}s last year"
    out.append(s + ".")
    sn = m["seasonal_naive_mase"]
    if _known(sn) and sn > 0 and _known(m["backtest_mase"]):
        gain = 100 * (1 - m["backtest_mase"] / sn)
        s = (f"The chosen forecast ({plain_model(m['model'])}) was {abs(gain):.0f}% "
             f"{'more' if gain >= 0 else 'less'} accurate than repeating last year's figures when "
             f"tested on {len(res.origins)} past dates (MASE {m['backtest_mase']:.2f} vs {sn:.2f})")
        if _known(m["coverage_80"]):
            s += f"; its 80% ranges held {100 * m['coverage_80']:.0f}% of the actual {unit}s"
        out.append(s + ".")
    if _known(m["holdout_mase"]):
        verdict = ("worse than" if _known(m["backtest_mase"]) and m["holdout_mase"] > m["backtest_mase"] * 1.5
                   else "in line with what")
        out.append(f"On the {res.holdout} most recent {unit}s, withheld from all fitting, the "
                   f"forecast scored MASE {m['holdout_mase']:.2f} (sMAPE "
                   f"{_num(m['holdout_smape'], '{:.1f}%')}): {verdict} the backtest promised.")
    gt = group_table(res, n=len(res.groups), min_customers=min_customers)
    gt = gt[gt["group"] != MISSING_GROUP].dropna(subset=["change_pct"]) if len(gt) else gt
    if len(gt) >= 2:
        up, down = gt.loc[gt["change_pct"].idxmax()], gt.loc[gt["change_pct"].idxmin()]
        out.append(f"Across {len(gt)} groups, {up['group']} is forecast to grow most "
                   f"({up['change_pct']:+.1f}% on the same {unit}s last year) and {down['group']} "
                   f"least ({down['change_pct']:+.1f}%).")
    if scenario is not None and elasticity is not None and elasticity.ci_high < 0:
        out.append(
            f"Demand answers price: units fall about {abs(elasticity.estimate):.1f}% for each 1% "
            f"price rise (95% CI {elasticity.ci_low:.2f} to {elasticity.ci_high:.2f}), so a "
            f"{abs(100 * scenario['price_change']):.0f}% price "
            f"{'cut' if scenario['price_change'] < 0 else 'rise'} would change forecast {what} by "
            f"{scenario['impact_pct']:+.1f}% ({_signed(scenario['impact'])}; 95% range "
            f"{_signed(scenario['impact_low'])} to {_signed(scenario['impact_high'])}).")
    else:
        e = effects_table(res)
        clear = e[(e["reading"] == "clear") & e["event"].ne(EVENT_LABELS["discount_share"])]
        if len(clear):
            top = clear.iloc[0]
            out.append(f"The clearest calendar effect is {top['event']}: about "
                       f"{_signed(top['effect'])} {what} in the {unit} it falls in, compared with an "
                       f"ordinary {unit} (p {'<' if top['p-value'] < 0.001 else '='} "
                       f"{max(top['p-value'], 0.001):.3f}).")
    return out[:5]


def _signed(x: float) -> str:
    if not _known(x):
        return "n/a"
    return ("+" if x >= 0 else "-") + _fmt(abs(x))


def explain(res, section: str, *, price: dict | None = None, elasticity=None,
            scenario: dict | None = None) -> str:
    """One paragraph for a section of the page: what it means and what to do.

    ``section`` is one of ``"forecast"``, ``"models"``, ``"backtest"``,
    ``"effects"``, ``"groups"``, ``"holdout"``, ``"scenario"`` (the last
    takes ``price``, :func:`crmlab.forecasting.page.price_analysis`, or
    ``elasticity`` and ``scenario``).
    """
    unit = FREQ_RULES[res.freq]["label"]
    m = forecast_metrics(res)
    if section == "models":
        t = res.score_table()
        best_simple = t[t["model"].isin(["naive", "seasonal_naive", "moving_average"])]["mase"].min()
        txt = (f"Every model was refitted at {len(res.origins)} past dates using only the data "
               f"before each, and scored on the {res.horizon} {unit}s that followed. MASE is the "
               f"average error divided by the error of repeating last year's figures: below 1 beats "
               f"that rule, 0.2 means a fifth of its error. The winner, "
               f"{plain_model(m['model'])}, scored {_num(m['backtest_mase'])}")
        if np.isfinite(best_simple):
            txt += f" against {best_simple:.2f} for the best simple rule"
        txt += "."
        if res.chosen[TOTAL] == "ensemble":
            txt += " Averaging the best three models beat each of them alone, so the page uses the average."
        if res.chosen[TOTAL] == "bottom_up":
            txt += (" Adding up the separate group forecasts predicted the total better than any model "
                    "of the total itself, so the total is that sum.")
        return txt + (" Use this forecast for planning; if a simple rule ever wins, the series has "
                      "little pattern to learn and plans should carry wide buffers.")
    if section == "forecast":
        src = {"model": "the model's own prediction intervals",
               "conformal": "the spread of the forecast's own past errors at each step ahead"}[
            res.interval_source[TOTAL]]
        c80, c95 = m["coverage_80"], m["coverage_95"]
        head = (f"The line is the forecast; the dark band is the range the actual {unit} should fall "
                f"in four times out of five (80%), the light band nineteen times out of twenty (95%), "
                f"from {src}. ")
        tail = "Plan stock and staff on the line and keep the top of the 80% band as the busy case."
        if not (_known(c80) and _known(c95)):
            return head + ("The past dates tested could not show how often the bands held, so treat "
                           "them as a rough guide. ") + tail
        cal = ("about right" if 0.72 <= c80 <= 0.88 else
               "too narrow: treat them as optimistic" if c80 < 0.72 else
               "wider than needed: treat them as cautious")
        return head + (f"Tested on past dates, the 80% band held {100 * c80:.0f}% of actual {unit}s "
                       f"and the 95% band {100 * c95:.0f}%, so the bands are {cal}. ") + tail
    if section == "backtest":
        return (f"How the forecast would have done in the past: at each of {len(res.origins)} dates "
                f"(grey lines) the chosen model was fitted on the data up to that date only and "
                f"forecast the next {res.horizon} {unit}s (blue); the dashed orange line repeats the "
                f"same {unit}s of the year before. Where blue hugs the actual line and orange does "
                f"not, the model has learned more than the calendar. This test chose the model and "
                f"measured the bands above.")
    if section == "effects":
        e = effects_table(res)
        if e.empty:
            return "No holiday or promotion effects were estimated."
        clear = e[e["reading"] == "clear"]
        parts = [f"{r['event']} {'adds' if r['effect'] >= 0 else 'takes away'} about "
                 f"{_fmt(abs(r['effect']))} {res.value}"
                 + (" per 10 points of discount share" if r["event"] == EVENT_LABELS["discount_share"]
                    else f" in the {unit} it falls in")
                 for _, r in clear.head(4).iterrows()]
        txt = ("A regression of the total on the calendar (with the season, the trend and "
               "week-to-week carry-over) separates what each holiday and promotions add. ")
        txt += ("; ".join(parts) + ". " if parts else "No holiday effect is clear in this data. ")
        return txt + (f"An effect is called clear when chance alone would give one that large less than "
                      f"{CLEAR_P:.0%} of the time (p < {CLEAR_P}); plan extra stock and staff for "
                      f"the clear ones.")
    if section == "groups":
        if len(res.groups) <= 1:
            return "No grouping was requested; set group_by (e.g. region or category) to forecast each group."
        if res.reconcile == "bottom_up":
            how = (f"the total is the sum of the group forecasts, which forecast the total better in "
                   f"the backtest (MASE {_num(res.reconciled_mase)}) than the best model of the total "
                   f"alone")
        elif res.reconcile == "top_down":
            own = res.scores[(res.scores["group"] == TOTAL) & res.scores["chosen"]]["mase"]
            how = ("the group forecasts are scaled so they add up to the total's own forecast, which "
                   "was more accurate in the backtest"
                   + (f" (MASE {float(own.iloc[0]):.2f} against {res.reconciled_mase:.2f} for the "
                      f"sum of the groups)" if _known(res.reconciled_mase) and len(own)
                      and _known(own.iloc[0]) else ""))
        else:
            how = "the group forecasts are not forced to add up to the total"
        return (f"Each of the {len(res.groups) - 1} groups got its own model, chosen by the same "
                f"backtest; {how}, so the figures on this page agree. The charts show the largest "
                f"groups; the table and the export list all of them (groups with fewer than "
                f"{MIN_GROUP_SIZE} customers are left off the page). Look first at large groups "
                f"with a falling forecast.")
    if section == "holdout":
        if not res.holdout:
            return ("No periods were withheld. Run with holdout set to, say, the horizon to see how "
                    "this forecast would have done on the latest data it never saw.")
        return (f"The last {res.holdout} {unit}s were hidden from every step, then compared with the "
                f"forecast: MASE {_num(m['holdout_mase'])}, sMAPE {_num(m['holdout_smape'], '{:.1f}%')}. "
                f"A holdout score far above the backtest's {_num(m['backtest_mase'])} means recent sales broke "
                f"from their past pattern; check for a new campaign, price change or data gap before "
                f"relying on the forecast.")
    if section == "scenario":
        if price is not None:
            if not price.get("available"):
                return price.get("reason") or "Not available."
            elasticity, scenario = price["elasticity"], price.get("scenario")
        if elasticity is None:
            return ("Not available: price scenarios need order lines with quantity and unit_price "
                    "that vary over time.")
        if not all(_known(x) for x in (elasticity.estimate, elasticity.ci_low, elasticity.ci_high)):
            return ("The data cannot tell how demand answers price: the price elasticity could not be "
                    "estimated from this history, so no price scenario is drawn. Test a price change "
                    "on part of the range to measure the response directly.")
        if elasticity.ci_low > 0:
            return (f"The data show demand rising with price (elasticity {elasticity.estimate:.2f}, "
                    f"95% CI {elasticity.ci_low:.2f} to {elasticity.ci_high:.2f}). Real demand "
                    f"does not work that way: the price changes in this history move together "
                    f"with something else (promotion traffic, product mix, stock-outs), so no "
                    f"price scenario is drawn from it. Test a price change on part of the range "
                    f"to measure the response directly.")
        if elasticity.ci_high >= 0:
            return (f"The data cannot tell how demand answers price: the estimated elasticity is "
                    f"{elasticity.estimate:.2f} but its 95% interval ({elasticity.ci_low:.2f} to "
                    f"{elasticity.ci_high:.2f}) includes zero, so no price scenario is drawn. Test a "
                    f"price change on part of the range to measure the response directly.")
        share = price.get("sold_share") if price else None
        per = FREQ_RULES[(price or {}).get("freq", "W")]["label"]
        txt = (f"Across {elasticity.n_units} products and {elasticity.n_periods} {per}s, units sold "
               f"changed by about {elasticity.estimate:.2f}% for each 1% change in a product's price "
               f"(the price elasticity; 95% CI {elasticity.ci_low:.2f} to {elasticity.ci_high:.2f}). "
               f"It compares each product with itself at different prices, in the same {per}s as "
               f"every other product, so seasons, holidays and growth do not count as price effects, "
               f"and order discounts are held apart. ")
        if elasticity.estimate < -1:
            txt += ("Below -1 demand is elastic: a price cut sells enough extra units to raise revenue, "
                    "a rise loses revenue. ")
        else:
            txt += ("Between -1 and 0 demand is inelastic: a price rise raises revenue, a cut lowers it. ")
        if scenario is not None:
            txt += (f"The {100 * scenario['price_change']:+.0f}% change asked for would move units by "
                    f"{scenario['quantity_change_pct']:+.1f}% and {res.value} over the next "
                    f"{res.horizon} {unit}s by {scenario['impact_pct']:+.1f}% "
                    f"({_signed(scenario['impact'])}). ")
        if share is not None:
            txt += (f"Estimated by Poisson regression on {per}-by-{per} "
                    f"product sales ({100 * share:.0f}% of product-{per}s had a sale). ")
        return txt + ("The scenario assumes every price moves by the same share and nothing else "
                      "changes; test a change on part of the range before rolling it out everywhere.")
    raise ValueError(f"unknown section {section!r}")
