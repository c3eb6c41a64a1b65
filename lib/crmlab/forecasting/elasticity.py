"""Price elasticity from the data, and price-change scenarios on the forecast.

The elasticity is the slope of the constant-elasticity (log-log) demand
model of quantity on price within products (product fixed effects), with
period fixed effects (or season, trend and holiday controls) and the
promotion share as controls, estimated by Poisson pseudo-maximum likelihood
(or log-OLS) with standard errors clustered by product (robust HC1 when
there are too few products to cluster). The product x period aggregation
runs in the engine.
"""

from __future__ import annotations

import dataclasses

import ibis
import ibis.expr.types as ir
import numpy as np
import pandas as pd
from scipy import stats

from crmlab.engine import as_of_literal, parse_as_of, purchases
from crmlab.exceptions import DataContractError, NoDataError, ParameterError
from crmlab.forecasting.models import independent_columns
from crmlab.forecasting.series import calendar_features, check_freq, fourier_terms

MIN_CLUSTERS = 20  # fewer products than this: HC1 instead of clustered errors
CONTROLS = ("period", "product_trend", "season", "trend", "holidays", "promotion")
DEFAULT_CONTROLS = ("period", "promotion")
METHODS = ("ppml", "ols")


@dataclasses.dataclass
class Elasticity:
    """An estimated price elasticity of demand.

    ``estimate`` is d log(quantity) / d log(price); ``ci_low``/``ci_high``
    its confidence interval at ``level``; ``n_obs`` product-periods from
    ``n_units`` products over ``n_periods`` periods; ``cov_type`` the
    standard-error method; ``method`` ``"ppml"`` or ``"ols"``.
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
    method: str = "ppml"
    n_periods: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def price_panel(order_lines: ir.Table, orders: ir.Table, *, freq: str = "W", unit_col: str = "product_id",
                as_of=None, order_id_col: str = "order_id",
                date_col: str = "order_date", amount_col: str = "amount",
                discount_col: str = "discount", status_col: str = "status",
                quantity_col: str = "quantity", unit_price_col: str = "unit_price",
                fill_gaps: bool = True) -> pd.DataFrame:
    """Order lines to one row per product per period with its quantity and price.

    Transforms order lines (``order_id, product_id, quantity, unit_price``)
    joined to their orders (``order_date``; ``amount`` and ``discount``
    when present) into::

        unit, period, quantity, price, paid_price, discount_share

    Only the lines of purchases count (:func:`crmlab.engine.purchases`: not
    refunded or cancelled; a missing or unknown status is a purchase).

    ``price`` is the average listed (shelf) price per unit, ``sum(quantity *
    unit_price) / sum(quantity)``; ``paid_price`` the average price paid,
    each line's value times its order's paid share ``amount / (amount +
    discount)`` (an order-level discount lowers the price of every line);
    ``discount_share`` the period's discount over gross value for that
    product, ``1 - paid_price / price``. The elasticity uses ``price`` with
    ``discount_share`` as a separate control: a shelf-price change and an
    order discount are different levers, and folding the discount into the
    price (a log of one minus the share, against a control linear in it)
    blurs the price and shrinks the estimate.

    ``fill_gaps``: a period without a sale between two periods at the same
    shelf price gets a row with quantity 0 at that price (its price is
    known; leaving the zero out would drop the periods when demand was
    lowest and bias the elasticity towards zero). Periods whose price cannot
    be known (the neighbours' prices differ) stay out.
    """
    check_freq(freq)
    for c in (order_id_col, quantity_col, unit_price_col, unit_col):
        if c not in order_lines.columns:
            raise DataContractError("column needed for the price elasticity is missing",
                                    table="order_lines", column=c)
    o = purchases(orders, status_col=status_col)
    cutoff = as_of_literal(parse_as_of(as_of))
    if cutoff is not None:
        o = o.filter(o[date_col] <= cutoff)
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
    agg["price"] = agg["_gross"] / agg["quantity"]
    agg["paid_price"] = agg["_paid_value"] / agg["quantity"]
    agg["discount_share"] = 1 - agg["_paid_value"] / agg["_gross"]
    agg["period"] = pd.to_datetime(agg["_period"]).dt.tz_localize(None).astype("datetime64[ns]")
    out = agg.rename(columns={"_unit": "unit"})[["unit", "period", "quantity", "price", "paid_price",
                                                 "discount_share"]]
    out = out.sort_values(["unit", "period"], ignore_index=True)
    return _fill_gaps(out, freq) if fill_gaps else out


def _fill_gaps(panel: pd.DataFrame, freq: str) -> pd.DataFrame:
    """Zero-sale rows for the periods between two sales at the same price."""
    step = {"D": "D", "W": "W-MON", "M": "MS"}[freq]
    frames = []
    for unit, g in panel.groupby("unit", sort=False):
        full = pd.date_range(g["period"].iloc[0], g["period"].iloc[-1], freq=step)
        if len(full) == len(g):
            frames.append(g)
            continue
        h = g.set_index("period").reindex(full)
        before, after = h["price"].ffill(), h["price"].bfill()
        gap = h["quantity"].isna() & np.isclose(before, after, rtol=1e-9, atol=0)
        h.loc[gap, ["quantity", "discount_share"]] = 0.0
        h.loc[gap, "price"] = before[gap]
        h.loc[gap, "paid_price"] = before[gap]
        h["unit"] = unit
        frames.append(h[h["quantity"].notna()].rename_axis("period").reset_index())
    out = pd.concat(frames, ignore_index=True)[list(panel.columns)]
    return out.astype({"quantity": float})


def _demean(v: np.ndarray, effects: list[np.ndarray], weights: np.ndarray, sizes: list[int],
            tol: float = 1e-11, max_iter: int = 1000, trend: np.ndarray | None = None) -> np.ndarray:
    """Weighted residuals of ``v`` on one or more sets of fixed effects, by
    alternating projections (the method of Guimaraes & Portugal 2010, *Stata
    Journal* 10(4)): subtract each set's weighted group means in turn until
    no mean is left. ``v`` is (n,) or (n, k). With ``trend`` (a time index,
    (n,)) the first set of effects gets a slope in it too: each of its
    groups is projected on ``[1, trend]``, not on a mean alone."""
    out = np.array(v, dtype=float, copy=True)
    two_d = out.ndim == 2
    if not two_d:
        out = out[:, None]
    totals = [np.bincount(g, weights, n) for g, n in zip(effects, sizes)]
    if trend is not None:
        g0, n0 = effects[0], sizes[0]
        t = np.asarray(trend, float)
        sw_t = np.bincount(g0, weights * t, n0)
        sw_tt = np.bincount(g0, weights * t * t, n0)
        det = totals[0] * sw_tt - sw_t ** 2
        ok = det > 1e-12 * np.maximum(totals[0] * sw_tt, 1e-300)
    scale = max(float(np.abs(out).max()), 1.0)
    for _ in range(max_iter if len(effects) > 1 else 1):
        biggest = 0.0
        for e, (g, n, tot) in enumerate(zip(effects, sizes, totals)):
            sums = np.column_stack([np.bincount(g, weights * out[:, j], n) for j in range(out.shape[1])])
            if e == 0 and trend is not None:
                tsums = np.column_stack([np.bincount(g, weights * t * out[:, j], n)
                                         for j in range(out.shape[1])])
                safe = np.where(ok, det, 1.0)[:, None]
                slope = np.where(ok[:, None], (tot[:, None] * tsums - sw_t[:, None] * sums) / safe, 0.0)
                icpt = (sums - slope * sw_t[:, None]) / np.where(tot > 0, tot, 1.0)[:, None]
                fitted = icpt[g] + slope[g] * t[:, None]
                out -= fitted
                biggest = max(biggest, float(np.abs(fitted).max()))
                continue
            means = sums / np.where(tot > 0, tot, 1.0)[:, None]
            out -= means[g]
            biggest = max(biggest, float(np.abs(means).max()))
        if biggest < tol * scale:
            break
    return out if two_d else out[:, 0]


def price_elasticity(panel: pd.DataFrame, *, freq: str = "W", calendar: str = "cn",
                     controls: tuple[str, ...] = DEFAULT_CONTROLS, method: str = "ppml",
                     level: float = 0.95, min_periods: int = 4, max_iter: int = 100,
                     tol: float = 1e-9) -> Elasticity:
    """Estimate the price elasticity of demand from a product x period panel.

    The constant-elasticity (log-log) demand model

    ``E[q_it] = exp(e * log p_it + a_i + d_t + g' z_it)``

    for product ``i`` and period ``t``: ``a_i`` product fixed effects,
    ``d_t`` period fixed effects (``"period"``: everything that moves all
    products at once -- season, trend, holidays, promotions days, growth),
    ``z_it`` the product's discount share (``"promotion"``: demand moved by
    an order-level discount beyond its price). Without ``"period"`` the
    common movements are modelled instead by Fourier terms of the yearly
    season (``"season"``), a linear trend (``"trend"``) and the holiday
    shares of ``calendar`` (``"holidays"``).

    ``method="ppml"`` (default) estimates it by Poisson pseudo-maximum
    likelihood (Santos Silva & Tenreyro 2006, "The log of gravity", *Review of
    Economics and Statistics* 88(4), eq. 11-12): consistent for ``e`` whatever
    the distribution of ``q`` given its mean, and free of the bias that taking
    logs of small, noisy quantities gives OLS (section III of the paper; on the
    synthetic world's product-weeks log-OLS attenuates a planted -1.5 to about
    -1.4). It weights each product-period by its expected volume, so ``e`` is
    the elasticity of the average unit sold -- what a revenue scenario needs.
    Fitted by iteratively reweighted least squares with the fixed effects
    partialled out by alternating projections at every step (Correia,
    Guimaraes & Zylkin 2020, "Fast Poisson estimation with high-dimensional
    fixed effects", *Stata Journal* 20(1), section 2), which gives the same
    estimate as a Poisson GLM with one dummy per product and period (tested).
    ``method="ols"`` is the classic within regression of ``log q`` on ``log
    p``. Standard errors are clustered by product (Cameron & Miller 2015, *J.
    Human Resources* 50(2)); robust (HC1) when there are fewer than
    ``MIN_CLUSTERS`` products. Products seen in fewer than ``min_periods``
    periods, or with a constant price, are dropped.

    Parameters
    ----------
    panel : DataFrame
        ``unit, period, quantity, price`` (and ``discount_share``), one row per
        product and period with sales, as made by :func:`price_panel`.
    freq : {"D", "W", "M"}
    calendar : {"cn", "western", "both", "none"}
        Holidays for the ``"holidays"`` control (unused with ``"period"``).
    controls : tuple of str
        Any of ``"period", "season", "trend", "holidays", "promotion"``.
    method : {"ppml", "ols"}
    level : float
        Confidence level of the interval.

    Returns
    -------
    Elasticity

    Examples
    --------
    >>> el = price_elasticity(price_panel(data.table("order_lines"), data.table("orders")))  # doctest: +SKIP
    >>> round(el.estimate, 2), el.method                                                   # doctest: +SKIP
    (-1.49, 'ppml')
    """
    unknown = set(controls) - set(CONTROLS)
    if unknown:
        raise ParameterError(f"unknown elasticity controls {sorted(unknown)}; known: {list(CONTROLS)}")
    if method not in METHODS:
        raise ParameterError(f"elasticity method must be one of {METHODS}, not {method!r}")
    # Poisson takes the zero-sale periods of a known price; the log model cannot
    d = panel[(panel["quantity"] >= (0 if method == "ppml" else 1e-300)) & (panel["price"] > 0)].copy()
    d["lp"] = np.log(d["price"])
    sold = d[d["quantity"] > 0]
    counts = sold.groupby("unit")["lp"].agg(["size", "std"])
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
    if "period" not in controls:
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
    X = np.column_stack(Z)
    y = d["quantity"].to_numpy(float)
    unit_codes = pd.factorize(d["unit"])[0]
    G = int(unit_codes.max()) + 1
    effects, sizes = [unit_codes], [G]
    if "period" in controls:
        effects.append(pd.factorize(d["period"])[0])
        sizes.append(int(effects[1].max()) + 1)
    n_fe = sum(sizes) - (len(sizes) - 1)
    slope = t.astype(float) if "product_trend" in controls else None
    if slope is not None:
        n_fe += G

    ones = np.ones(len(y))
    Xd = _demean(X, effects, ones, sizes, trend=slope)
    cols = independent_columns(Xd)
    if not cols[0]:
        raise NoDataError("prices do not vary within products beyond the controls")
    X, Xd = X[:, cols], Xd[:, cols]
    n, k = X.shape
    if n - k - n_fe <= 0:
        raise NoDataError("too few product-periods for the elasticity regression")

    if method == "ols":
        w = ones
        yd = _demean(np.log(y), effects, w, sizes, trend=slope)
        beta = np.linalg.lstsq(Xd, yd, rcond=None)[0]
        resid = yd - Xd @ beta
    else:
        mu = (y + y.mean()) / 2
        eta = np.log(mu)
        beta = np.zeros(k)
        for _ in range(max_iter):
            z = eta + (y - mu) / mu                      # IRLS working response
            zd = _demean(z, effects, mu, sizes, trend=slope)
            Xd = _demean(X, effects, mu, sizes, trend=slope)
            wx = Xd * mu[:, None]
            new = np.linalg.solve(Xd.T @ wx, wx.T @ zd)
            eta = z - (zd - Xd @ new)                    # fitted linear predictor, FE included
            mu = np.exp(np.clip(eta, -50, 50))
            done = np.abs(new - beta).max() < tol
            beta = new
            if done:
                break
        w = mu
        resid = y - mu
        Xd = _demean(X, effects, w, sizes, trend=slope)
    H = Xd.T @ (Xd * w[:, None])
    Hinv = np.linalg.inv(H)
    # score contributions: OLS x~ e, PPML x~ (y - mu)
    score = Xd * resid[:, None]
    if G >= MIN_CLUSTERS:
        S = np.column_stack([np.bincount(unit_codes, score[:, j], G) for j in range(k)])
        V = Hinv @ (S.T @ S) @ Hinv * G / (G - 1)
        cov_type, dof = "cluster(product)", G - 1
    else:
        V = Hinv @ (score.T @ score) @ Hinv * n / (n - k - n_fe)
        cov_type, dof = "HC1", n - k - n_fe
    est, se = float(beta[0]), float(np.sqrt(V[0, 0]))
    crit = stats.t.ppf(0.5 + level / 2, dof)
    return Elasticity(estimate=est, std_error=se, ci_low=est - crit * se, ci_high=est + crit * se,
                      level=level, n_obs=n, n_units=G, cov_type=cov_type, controls=tuple(controls),
                      method=method, n_periods=len(periods))


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
