"""Forecast accuracy: MASE, sMAPE, interval coverage and conformal quantiles.

Every function works on one series (1-d arrays) or on a panel (2-d arrays,
one row per series) alike: the last axis is time.
"""

from __future__ import annotations

import numpy as np


def insample_scale(y_train, season_length: int) -> np.ndarray:
    """The in-sample mean absolute error of the seasonal naive forecast.

    This is the denominator of MASE (Hyndman & Koehler 2006, section 3):
    ``(1 / (n - m)) * sum_{t=m+1..n} |y_t - y_{t-m}|``, with ``m = 1`` (the
    naive forecast) when the series is shorter than ``m + 1``. A series whose
    seasonal differences are all zero falls back to the naive scale, then to
    its mean absolute value, then to 1, so a scale is never zero.

    Parameters
    ----------
    y_train : array of shape (T,) or (n, T)
    season_length : int

    Returns
    -------
    numpy.ndarray
        Shape () for one series, (n,) for a panel.

    Examples
    --------
    >>> float(insample_scale([1, 3, 2, 4, 3, 5], 2))
    1.0
    """
    y = np.asarray(y_train, dtype=float)
    m = season_length if y.shape[-1] > season_length else 1
    scale = np.mean(np.abs(y[..., m:] - y[..., :-m]), axis=-1) if y.shape[-1] > m else np.zeros(y.shape[:-1])
    scale = np.asarray(scale, dtype=float)
    if y.shape[-1] > 1:
        naive = np.mean(np.abs(np.diff(y, axis=-1)), axis=-1)
        scale = np.where(scale > 0, scale, naive)
    level = np.mean(np.abs(y), axis=-1)
    scale = np.where(scale > 0, scale, level)
    return np.where(scale > 0, scale, 1.0)


def mase(y_true, y_pred, y_train, season_length: int) -> np.ndarray:
    """Mean absolute scaled error (Hyndman & Koehler 2006).

    Hyndman, R. J. & Koehler, A. B. (2006). Another look at measures of
    forecast accuracy. *International Journal of Forecasting* 22(4),
    679-688, section 3: the scaled error ``q_t = e_t / s`` with ``s`` the
    in-sample MAE of the one-step (here: seasonal, as in Hyndman &
    Athanasopoulos, *Forecasting: Principles and Practice*, section 5.8)
    naive forecast; ``MASE = mean(|q_t|)``. Below 1 means better than the
    in-sample seasonal naive forecast.

    Parameters
    ----------
    y_true, y_pred : array of shape (h,) or (n, h)
    y_train : array of shape (T,) or (n, T)
        The data the forecast was made from (the scale uses it alone).
    season_length : int

    Returns
    -------
    numpy.ndarray
        Shape () or (n,).

    Examples
    --------
    >>> float(mase([6, 4], [5, 6], [1, 3, 2, 4, 3, 5], 2))
    1.5
    """
    err = np.abs(np.asarray(y_true, float) - np.asarray(y_pred, float))
    return np.mean(err, axis=-1) / insample_scale(y_train, season_length)


def smape(y_true, y_pred) -> np.ndarray:
    """Symmetric mean absolute percentage error, in percent (0 to 200).

    ``200 / h * sum |y - yhat| / (|y| + |yhat|)``, the M4 competition's
    definition (Makridakis, Spiliotis & Assimakopoulos 2020, *IJF* 36(1),
    eq. 1); a step where both are zero counts as a perfect forecast.

    Examples
    --------
    >>> round(float(smape([100, 0], [50, 0])), 4)
    33.3333
    """
    y, f = np.asarray(y_true, float), np.asarray(y_pred, float)
    den = np.abs(y) + np.abs(f)
    ratio = np.divide(np.abs(y - f), den, out=np.zeros(np.broadcast(y, f).shape), where=den > 0)
    return 200.0 * np.mean(ratio, axis=-1)


def coverage(y_true, lo, hi) -> float:
    """Share of actuals inside their interval (NaN intervals ignored)."""
    y, lo, hi = (np.asarray(a, float) for a in (y_true, lo, hi))
    ok = ~(np.isnan(lo) | np.isnan(hi) | np.isnan(y))
    if not ok.any():
        return float("nan")
    return float(np.mean((y[ok] >= lo[ok]) & (y[ok] <= hi[ok])))


def conformal_quantiles(abs_scaled_resid: np.ndarray, level: float, *, smooth: int | None = None) -> np.ndarray:
    """Per-horizon-step quantiles of absolute scaled backtest errors.

    Split-conformal style (Vovk et al. 2005; Stankeviciute et al. 2021 for
    multi-step forecasts): the interval half-width at step ``h`` is the
    ``ceil((k + 1) * level) / k`` empirical quantile of the ``k`` absolute
    errors observed at steps ``h - smooth .. h + smooth`` of the backtest
    (neighbouring steps pooled, so a handful of origins still gives a usable
    quantile; by default 2 steps each side below 30 errors per step, 1
    below 100 and none above; the widths are then made non-decreasing in
    ``h`` by isotonic regression).

    Parameters
    ----------
    abs_scaled_resid : array of shape (k, h)
        Absolute errors divided by each series' scale; NaN entries ignored.
    level : float
        0.8 for an 80% interval.

    Returns
    -------
    numpy.ndarray of shape (h,)
    """
    r = np.asarray(abs_scaled_resid, float)
    h = r.shape[-1]
    if smooth is None:
        per_step = int(np.min(np.sum(~np.isnan(r), axis=0))) if r.size else 0
        smooth = 0 if per_step >= 100 else 1 if per_step >= 30 else 2
    out = np.full(h, np.nan)
    for j in range(h):
        pool = r[:, max(0, j - smooth):j + smooth + 1].ravel()
        pool = np.sort(pool[~np.isnan(pool)])
        if len(pool) == 0:
            continue
        rank = min(len(pool), int(np.ceil((len(pool) + 1) * level)))
        out[j] = pool[rank - 1]
    out = np.nan_to_num(out, nan=np.nanmax(out) if np.isfinite(out).any() else 0.0)
    if h > 1:  # non-decreasing in h by isotonic regression (pool-adjacent-violators), not a
        # running maximum, which would only ever widen and so over-cover
        from sklearn.isotonic import IsotonicRegression

        out = IsotonicRegression(increasing=True).fit_transform(np.arange(h), out)
    return out
