"""Price elasticity from the data, and price-change scenarios on the forecast.

The elasticity is the slope of a log-log regression of quantity on price
within products (product fixed effects), with controls for the season, the
trend, holidays and promotions, estimated in statsmodels with standard
errors clustered by product (or heteroscedasticity-robust HC1 when there are
too few products to cluster). The product x period aggregation runs in the
engine.
"""

from __future__ import annotations

import dataclasses

import ibis
import ibis.expr.types as ir
import numpy as np
import pandas as pd
from scipy import stats

from crmlab.engine import as_of_literal
from crmlab.exceptions import DataContractError, NoDataError, ParameterError
from crmlab.forecasting.series import calendar_features, check_freq, fourier_terms

MIN_CLUSTERS = 20  # fewer products than this: HC1 instead of clustered errors


@dataclasses.dataclass
class Elasticity:
    """An estimated price elasticity of demand.

    ``estimate`` is d log(quantity) / d log(price); ``ci_low``/``ci_high``
    its confidence interval at ``level``; ``n_obs`` product-periods from
    ``n_units`` products; ``cov_type`` the standard-error method.
    """

    estimate: float
    std_error: float
    ci_low: float
    ci_high: float
    level: float
    n_obs: int
    n_units: int
    cov_type: str
    controls: tuple

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def price_panel(order_lines: ir.Table, orders: ir.Table, *, freq: str = "W", unit_col: str = "product_id",
                as_of=None, statuses=("paid",), order_id_col: str = "order_id",
                date_col: str = "order_date", amount_col: str = "amount",
                discount_col: str = "discount", status_col: str = "status",
                quantity_col: str = "quantity", unit_price_col: str = "unit_price") -> pd.DataFrame:
    """Order lines to one row per product per period with its quantity and paid price.

    Transforms order lines (``order_id, product_id, quantity, unit_price``)
    joined to their orders (``order_date``; ``amount`` and ``discount``
    when present) into::

        unit, period, quantity, price, discount_share

    ``price`` is the average price paid per unit: line value ``quantity *
    unit_price`` times the order's paid share ``amount / (amount +
    discount)`` (so an order-level discount lowers the price of every line),
    divided by the quantity. ``discount_share`` is the period's discount
    over gross value for that product.
    """
    check_freq(freq)
    for c in (order_id_col, quantity_col, unit_price_col, unit_col):
        if c not in order_lines.columns:
            raise DataContractError("column needed for the price elasticity is missing",
                                    table="order_lines", column=c)
    o = orders
    cutoff = as_of_literal(as_of)
    if cutoff is not None:
        o = o.filter(o[date_col] <= cutoff)
    if statuses is not None and status_col in o.columns:
        o = o.filter(o[status_col].isin(list(statuses)))
    if discount_col in o.columns and amount_col in o.columns:
        gross = o[amount_col] + o[discount_col].fill_null(0)
        paid = (gross > 0).ifelse(o[amount_col] / gross, 1.0)
    else:
        paid = ibis.literal(1.0)
    o = o.select(_order=o[order_id_col], _date=o[date_col], _paid=paid.cast("float64"))
    li = order_lines.select(_order=order_lines[order_id_col], _unit=order_lines[unit_col].cast("string"),
                            _q=order_lines[quantity_col].cast("float64"),
                            _p=order_lines[unit_price_col].cast("float64"))
    li = li.filter((li._q > 0) & (li._p > 0))
    j = li.join(o, "_order")
    j = j.mutate(_period=j._date.truncate(freq), _gross=j._q * j._p)
    agg = j.group_by(["_unit", "_period"]).aggregate(
        quantity=j._q.sum(), _paid_value=(j._gross * j._paid).sum(), _gross=j._gross.sum()).to_pandas()
    if agg.empty:
        raise NoDataError("no order lines with a positive quantity and price")
    agg["price"] = agg["_paid_value"] / agg["quantity"]
    agg["discount_share"] = 1 - agg["_paid_value"] / agg["_gross"]
    agg["period"] = pd.to_datetime(agg["_period"]).dt.tz_localize(None).astype("datetime64[ns]")
    out = agg.rename(columns={"_unit": "unit"})[["unit", "period", "quantity", "price", "discount_share"]]
    return out.sort_values(["unit", "period"], ignore_index=True)


def price_elasticity(panel: pd.DataFrame, *, freq: str = "W", calendar: str = "cn",
                     controls: tuple[str, ...] = ("season", "trend", "holidays", "promotion"),
                     level: float = 0.95, min_periods: int = 4) -> Elasticity:
    """Estimate the price elasticity of demand by a fixed-effects log-log regression.

    ``log q_it = e * log p_it + a_i + g' z_t + u_it`` for product ``i`` and
    period ``t``: ``a_i`` product fixed effects (removed by demeaning within
    product, the "within" estimator), ``z_t`` the controls (Fourier terms of
    the yearly season, a linear trend, the holiday shares of ``calendar``)
    and the product's discount share (``"promotion"``: demand moved by the
    promotion itself beyond its price). OLS in statsmodels with standard
    errors clustered by product (Cameron & Miller 2015, *J. Human Resources*
    50(2)), with the small-sample degrees of freedom for the absorbed fixed
    effects; HC1 when fewer than ``MIN_CLUSTERS`` products. Products seen in
    fewer than ``min_periods`` periods, or with a constant price, are dropped.

    Parameters
    ----------
    panel : DataFrame
        ``unit, period, quantity, price`` (and ``discount_share``), as made by
        :func:`price_panel`.
    freq : {"D", "W", "M"}
    calendar : {"cn", "western", "both", "none"}
    controls : tuple of str
        Any of ``"season", "trend", "holidays", "promotion"``.
    level : float
        Confidence level of the interval.

    Returns
    -------
    Elasticity
    """
    import statsmodels.api as sm

    unknown = set(controls) - {"season", "trend", "holidays", "promotion"}
    if unknown:
        raise ParameterError(f"unknown elasticity controls {sorted(unknown)}")
    d = panel[(panel["quantity"] > 0) & (panel["price"] > 0)].copy()
    d["lq"], d["lp"] = np.log(d["quantity"]), np.log(d["price"])
    counts = d.groupby("unit")["lp"].agg(["size", "std"])
    keep = counts.index[(counts["size"] >= min_periods) & (counts["std"].fillna(0) > 1e-9)]
    d = d[d["unit"].isin(keep)].reset_index(drop=True)
    if d.empty:
        raise NoDataError("no product has enough periods with varying prices for an elasticity")
    rules = check_freq(freq)
    periods = pd.DatetimeIndex(sorted(d["period"].unique()))
    step = {"D": 1.0, "W": 7.0, "M": 365.25 / 12}[freq]
    t_index = pd.Series(np.round((periods - periods[0]).days / step).astype(int), index=periods)
    t = t_index.reindex(d["period"]).to_numpy()
    Z, names = [d["lp"].to_numpy()], ["log_price"]
    if "season" in controls:
        four = fourier_terms(t, freq)
        Z += list(four.T)
        names += [f"fourier_{k}" for k in range(four.shape[1])]
    if "trend" in controls:
        Z.append(t / rules["periods_per_year"])
        names.append("trend")
    if "holidays" in controls and calendar != "none":
        hol = calendar_features(periods, freq, calendar).reindex(d["period"]).to_numpy(float)
        Z += list(hol.T)
        names += [f"hol_{k}" for k in range(hol.shape[1])]
    if "promotion" in controls and "discount_share" in d.columns:
        Z.append(d["discount_share"].to_numpy(float))
        names.append("discount_share")
    Z = np.column_stack(Z)
    y = d["lq"].to_numpy()
    # within transformation: demean by product
    codes = pd.factorize(d["unit"])[0]
    G = codes.max() + 1
    cnt = np.bincount(codes)

    def demean(a):
        if a.ndim == 1:
            return a - (np.bincount(codes, a) / cnt)[codes]
        return a - np.column_stack([np.bincount(codes, a[:, j]) / cnt for j in range(a.shape[1])])[codes]

    Zd, yd = demean(Z), demean(y)
    keep_cols = np.ptp(Zd, axis=0) > 1e-12
    keep_cols[0] = True
    Zd = Zd[:, keep_cols]
    n, k = Zd.shape
    if n - k - G <= 0:
        raise NoDataError("too few product-periods for the elasticity regression")
    if G >= MIN_CLUSTERS:
        res = sm.OLS(yd, Zd).fit(cov_type="cluster", cov_kwds={"groups": codes})
        cov_type = "cluster(product)"
        se = float(res.bse[0])
        dof = G - 1
    else:
        res = sm.OLS(yd, Zd).fit(cov_type="HC1")
        # HC1 on demeaned data: correct the degrees of freedom for the G absorbed effects
        se = float(res.bse[0]) * np.sqrt((n - k) / (n - k - G))
        cov_type = "HC1"
        dof = n - k - G
    est = float(res.params[0])
    crit = stats.t.ppf(0.5 + level / 2, dof)
    return Elasticity(estimate=est, std_error=se, ci_low=est - crit * se, ci_high=est + crit * se,
                      level=level, n_obs=n, n_units=int(G), cov_type=cov_type,
                      controls=tuple(controls))


def price_scenario(forecast, elasticity: Elasticity, price_change: float, *,
                   group: str | None = "total") -> dict:
    """The revenue impact of changing prices by ``price_change`` over the forecast.

    With constant elasticity ``e``, quantity scales by ``(1 + c) ** e`` and
    revenue by ``(1 + c) ** (1 + e)`` for a price change ``c`` (e.g. -0.10).
    The impact's range maps the elasticity's confidence interval through the
    same formula (monotone in ``e``); the forecast's own 80% interval is
    carried through as well, so both uncertainties are visible.

    Parameters
    ----------
    forecast : ForecastResult or DataFrame
        A result (its forecast after the last observed period is used: a
        holdout's periods are history, not future) or a frame with ``group,
        period, yhat, lo80, hi80``.
    elasticity : Elasticity
    price_change : float
        Relative change, > -1.
    group : str, optional
        The group whose forecast to use; None sums every row.

    Returns
    -------
    dict
        ``price_change, elasticity, baseline, scenario, impact, impact_low,
        impact_high`` (the impact at the elasticity's CI ends), ``impact_pct,
        quantity_change_pct``, ``baseline_lo80, baseline_hi80`` (the sums of
        the per-period 80% bounds: a conservative range for the baseline)
        and ``by_period`` (a frame: period, baseline, scenario).
    """
    if not price_change > -1:
        raise ParameterError("price_change must be greater than -1 (e.g. -0.10 for a 10% cut)")
    if hasattr(forecast, "forecast_frame"):
        frame = forecast.forecast_frame
        frame = frame[frame["period"] > forecast.periods[-1]]
    else:
        frame = forecast
    f = frame if group is None else frame[frame["group"] == group]
    if f.empty:
        raise ParameterError(f"no forecast rows for group {group!r}")
    by = f.groupby("period")[["yhat", "lo80", "hi80"]].sum()
    mult = lambda e: (1 + price_change) ** (1 + e)  # noqa: E731
    base = float(by["yhat"].sum())
    scen = base * mult(elasticity.estimate)
    ends = sorted(base * mult(e) - base for e in (elasticity.ci_low, elasticity.ci_high))
    return {
        "price_change": price_change, "elasticity": elasticity.estimate,
        "baseline": base, "scenario": scen, "impact": scen - base,
        "impact_low": ends[0], "impact_high": ends[1],
        "impact_pct": 100 * (mult(elasticity.estimate) - 1),
        "quantity_change_pct": 100 * ((1 + price_change) ** elasticity.estimate - 1),
        "baseline_lo80": float(by["lo80"].sum()), "baseline_hi80": float(by["hi80"].sum()),
        "by_period": pd.DataFrame({"period": by.index, "baseline": by["yhat"].to_numpy(),
                                   "scenario": by["yhat"].to_numpy() * mult(elasticity.estimate)}),
    }
