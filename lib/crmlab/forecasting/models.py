"""Forecasting models with one interface, for one series or a panel of many.

Every model is an estimator in scikit-learn's style (keyword-only
``__init__`` without logic, ``fit`` returns ``self``, learned attributes end
in ``_``) working on a panel: ``Y`` of shape (n, T), one row per series
(a single series is a panel of one row)::

    model.fit(Y, periods, freq="W", exog=None)         # periods: DatetimeIndex (T,)
    out = model.forecast(h, exog_future=None, levels=(80, 95))
    out["mean"]            # (n, h)
    out.get(80)            # (lo, hi), each (n, h), when the model has intervals

``exog`` is an optional (n, T, k) array of known regressors (the promotion
share per period); ``exog_future`` its (n, h, k) continuation. Holiday
regressors are made from the periods and the ``calendar`` parameter.

Two families:

* vectorised numpy models (``naive``, ``seasonal_naive``,
  ``moving_average``, ``holt_winters``) and one global
  ``gradient_boosting`` model fitted across all series: fast enough for
  thousands of groups;
* statsmodels models fitted series by series (``ets``, ``theta``,
  ``sarimax``): for the total and the largest groups. Their prediction
  intervals come from the model (``interval_source = "model"``); the others
  get conformal intervals from backtest errors (see ``backtest``).
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd

from crmlab.forecasting.series import calendar_features, check_freq, fourier_terms, future_periods

LEVELS = (80, 95)


class PanelForecaster:
    """Base class: shared set-up and the ``forecast``/``predict`` contract."""

    name = "model"
    interval_source = "conformal"
    family = "fast"

    def _setup(self, Y, periods, freq):
        rules = check_freq(freq)
        Y = np.asarray(Y, dtype=float)
        if Y.ndim == 1:
            Y = Y[None, :]
        self.freq_ = freq
        self.m_ = int(getattr(self, "season_length", None) or rules["season_length"])
        self.periods_ = (pd.DatetimeIndex(periods) if periods is not None
                         else pd.date_range("2000-01-03", periods=Y.shape[1],
                                            freq={"D": "D", "W": "W-MON", "M": "MS"}[freq]))
        self.n_obs_ = Y.shape[1]
        return Y

    def fit(self, Y, periods=None, *, freq: str = "W", exog=None):
        raise NotImplementedError

    def forecast(self, horizon: int, *, exog_future=None, levels=LEVELS) -> dict:
        raise NotImplementedError

    def predict(self, horizon: int, *, exog_future=None) -> np.ndarray:
        """The point forecast, shape (n, horizon)."""
        return self.forecast(horizon, exog_future=exog_future, levels=())["mean"]

    def __repr__(self):
        params = {k: v for k, v in vars(self).items() if not k.endswith("_")}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in params.items())})"


class NaiveForecaster(PanelForecaster):
    """Every future period equals the last observed one.

    Examples
    --------
    >>> NaiveForecaster().fit([[1.0, 2.0, 3.0]]).predict(2).tolist()
    [[3.0, 3.0]]
    """

    name = "naive"

    def fit(self, Y, periods=None, *, freq="W", exog=None):
        Y = self._setup(Y, periods, freq)
        self.last_ = Y[:, -1:]
        return self

    def forecast(self, horizon, *, exog_future=None, levels=LEVELS):
        return {"mean": np.repeat(self.last_, horizon, axis=1)}


class SeasonalNaiveForecaster(PanelForecaster):
    """Every future period equals the same period one season earlier
    (the naive forecast when the series is shorter than a season).

    Examples
    --------
    >>> SeasonalNaiveForecaster(season_length=2).fit([[1.0, 2.0, 3.0, 4.0]]).predict(3).tolist()
    [[3.0, 4.0, 3.0]]
    """

    name = "seasonal_naive"

    def __init__(self, *, season_length: int | None = None):
        self.season_length = season_length

    def fit(self, Y, periods=None, *, freq="W", exog=None):
        Y = self._setup(Y, periods, freq)
        m = self.m_ if Y.shape[1] >= self.m_ else 1
        self.last_season_ = Y[:, -m:]
        return self

    def forecast(self, horizon, *, exog_future=None, levels=LEVELS):
        m = self.last_season_.shape[1]
        return {"mean": self.last_season_[:, np.arange(horizon) % m]}


class MovingAverageForecaster(PanelForecaster):
    """Every future period equals the mean of the last ``window`` periods.

    Examples
    --------
    >>> MovingAverageForecaster(window=2).fit([[1.0, 2.0, 4.0]]).predict(1).tolist()
    [[3.0]]
    """

    name = "moving_average"

    def __init__(self, *, window: int | None = None):
        self.window = window

    def fit(self, Y, periods=None, *, freq="W", exog=None):
        Y = self._setup(Y, periods, freq)
        w = min(self.window or check_freq(freq)["window"], Y.shape[1])
        self.level_ = Y[:, -w:].mean(axis=1, keepdims=True)
        return self

    def forecast(self, horizon, *, exog_future=None, levels=LEVELS):
        return {"mean": np.repeat(self.level_, horizon, axis=1)}


# the coarse grid of the vectorised Holt-Winters model
HW_GRID: dict[str, tuple[float, ...]] = {
    "alpha": (0.05, 0.1, 0.2, 0.35, 0.5, 0.7),
    "beta": (0.0, 0.02, 0.1),
    "gamma": (0.0, 0.05, 0.15, 0.3),
    "phi": (0.9, 0.98),
}


class HoltWintersForecaster(PanelForecaster):
    """Additive damped-trend Holt-Winters, vectorised over series and a grid.

    The recursions are those of statsmodels' ``ExponentialSmoothing``
    (Hyndman & Athanasopoulos, *Forecasting: Principles and Practice*, 3rd
    ed., section 8.3, damped additive trend with additive season)::

        l_t = alpha (y_t - s_{t-m}) + (1 - alpha)(l_{t-1} + phi b_{t-1})
        b_t = beta (l_t - l_{t-1}) + (1 - beta) phi b_{t-1}
        s_t = gamma (y_t - l_{t-1} - phi b_{t-1}) + (1 - gamma) s_{t-m}

    started from statsmodels' heuristic initial states (see
    :meth:`initial_states`; ``initialization_method="simple"`` is the other
    choice). Instead of optimising
    each series, every combination of ``grid`` is run for all series at
    once and each series keeps the combination with the smallest in-sample
    one-step squared error. Forecasts follow the textbook formula
    ``l_T + (phi + ... + phi^h) b_T + s_{T+h-m(k+1)}``; they equal
    statsmodels' at every step except m, 2m, ..., where statsmodels reuses
    the seasonal state from before the last observation (tested). Series shorter than two seasons get the damped
    trend without a season (gamma = 0, zero seasonal states).

    Parameters
    ----------
    season_length : int, optional
        Default from the frequency (52 weekly, 7 daily, 12 monthly).
    grid : dict, optional
        Values of ``alpha, beta, gamma, phi``; default ``HW_GRID``.
    initialization_method : {"heuristic", "simple"}
    chunk_size : int
        Series per block (memory: grid size x chunk x season floats).

    Attributes
    ----------
    params_ : ndarray of shape (n, 4)
        The chosen alpha, beta, gamma, phi of each series.
    level_, trend_ : ndarray (n,)
    season_ : ndarray (n, m)
        Seasonal states indexed by time step modulo m.
    """

    name = "holt_winters"

    def __init__(self, *, season_length: int | None = None, grid: dict | None = None,
                 initialization_method: str = "heuristic", chunk_size: int = 256):
        self.season_length = season_length
        self.grid = grid
        self.initialization_method = initialization_method
        self.chunk_size = chunk_size

    @staticmethod
    def initial_states(Y: np.ndarray, m: int, seasonal: bool, method: str = "heuristic"):
        """Initial level, trend and seasonal states of each row, computed as
        statsmodels' ``_initialization_heuristic`` / ``_initialization_simple``
        do for one series, for all rows at once.

        ``"heuristic"`` (Hyndman et al. 2008, section 2.6.1): a centred
        2 x m moving average over the first (up to five) seasons gives the
        trend-cycle; the seasonal states are the mean detrended value at each
        season position (centred to sum to zero); level and trend are the
        intercept and slope of a line through the first ten moving-average
        values. ``"simple"``: the first season's mean, mean seasonal
        difference of the second season over m, first season minus level.
        Non-seasonal rows use the first ten values (heuristic) or the first
        two (simple).
        """
        n, T = Y.shape
        if method == "simple":
            if seasonal:
                level = Y[:, :m].mean(axis=1)
                trend = ((Y[:, m:2 * m] - Y[:, :m]) / m).mean(axis=1)
                season = Y[:, :m] - level[:, None]
            else:
                level = Y[:, 0].copy()
                trend = Y[:, 1] - Y[:, 0] if T > 1 else np.zeros(n)
                season = np.zeros((n, m))
            return level, trend, season
        season = np.zeros((n, m))
        base = Y
        if seasonal:
            min_obs = 10 + 2 * (m // 2)
            k = max(min(5, T // m), int(np.ceil(min_obs / m)))
            block = pd.DataFrame(Y[:, :m * k].T)
            ma = block.rolling(m, center=True).mean()
            if m % 2 == 0:
                ma = ma.shift(-1).rolling(2).mean()
            detr = (block - ma).to_numpy()
            tmp = np.full((m * k, n), np.nan)
            tmp[:len(detr)] = detr
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                season = np.nanmean(tmp.reshape(k, m, n), axis=0).T
            season = season - season.mean(axis=1, keepdims=True)
            ma = ma.to_numpy()
            base = ma[~np.isnan(ma).any(axis=1)].T
        design = np.c_[np.ones(10), np.arange(10) + 1]
        first = base[:, :10]
        if first.shape[1] < 10:  # too short for the heuristic: a line through what there is
            design = np.c_[np.ones(first.shape[1]), np.arange(first.shape[1]) + 1]
        beta = np.linalg.pinv(design) @ first.T
        return beta[0], (beta[1] if beta.shape[0] > 1 else np.zeros(n)), season

    def fit(self, Y, periods=None, *, freq="W", exog=None):
        Y = self._setup(Y, periods, freq)
        n, T = Y.shape
        m = self.m_
        seasonal = T >= max(2 * m, 10 + 2 * (m // 2))
        if T < 10 and self.initialization_method == "heuristic":
            seasonal = False
        grid = dict(HW_GRID, **(self.grid or {}))
        gammas = grid["gamma"] if seasonal else (0.0,)
        combos = np.array(list(itertools.product(grid["alpha"], grid["beta"], gammas, grid["phi"])))
        self.seasonal_ = seasonal
        self.params_ = np.empty((n, 4))
        self.level_, self.trend_ = np.empty(n), np.empty(n)
        self.season_ = np.empty((n, m))
        self.sse_ = np.empty(n)
        for a in range(0, n, self.chunk_size):
            rows = slice(a, min(n, a + self.chunk_size))
            self._fit_chunk(Y[rows], combos, m, seasonal, rows)
        return self

    def _fit_chunk(self, Y, combos, m, seasonal, rows):
        l0, b0, s0 = self.initial_states(Y, m, seasonal, self.initialization_method)
        alpha, beta, gamma, phi = (combos[:, i][:, None] for i in range(4))
        C = len(combos)
        lvl = np.broadcast_to(l0, (C, len(Y))).copy()
        b = np.broadcast_to(b0, (C, len(Y))).copy()
        s = np.broadcast_to(s0, (C,) + s0.shape).copy()
        sse = np.zeros((C, len(Y)))
        for t in range(Y.shape[1]):
            y = Y[:, t]
            k = t % m
            sp = s[:, :, k]
            damped = lvl + phi * b
            e = y - damped - sp
            sse += e * e
            new_lvl = alpha * (y - sp) + (1 - alpha) * damped
            b = beta * (new_lvl - lvl) + (1 - beta) * phi * b
            s[:, :, k] = gamma * (y - damped) + (1 - gamma) * sp
            lvl = new_lvl
        best = np.argmin(sse, axis=0)
        idx = np.arange(len(Y))
        self.params_[rows] = combos[best]
        self.level_[rows] = lvl[best, idx]
        self.trend_[rows] = b[best, idx]
        self.season_[rows] = s[best, idx]
        self.sse_[rows] = sse[best, idx]

    def forecast(self, horizon, *, exog_future=None, levels=LEVELS):
        phi = self.params_[:, 3:4]
        steps = np.arange(1, horizon + 1)
        damp = np.cumsum(phi ** steps[None, :], axis=1)
        slot = (self.n_obs_ + steps - 1) % self.m_
        mean = self.level_[:, None] + damp * self.trend_[:, None] + self.season_[:, slot]
        return {"mean": mean}


def _row_scale(y: np.ndarray) -> float:
    s = float(np.mean(np.abs(y)))
    return s if s > 0 else 1.0


class _PerSeries(PanelForecaster):
    """A statsmodels model fitted series by series; rows it cannot fit (too
    short, constant, failed to converge) fall back to the seasonal naive
    forecast and are listed in ``fallback_rows_``."""

    family = "statsmodels"
    interval_source = "model"

    def fit(self, Y, periods=None, *, freq="W", exog=None):
        Y = self._setup(Y, periods, freq)
        self.fits_, self.fallback_rows_ = [], []
        self.exog_ = None if exog is None else np.asarray(exog, float)
        self._fallback = SeasonalNaiveForecaster(season_length=self.m_).fit(Y, self.periods_, freq=freq)
        for i, y in enumerate(Y):
            fitted = None
            if np.ptp(y) > 0:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        fitted = self._fit_one(y / _row_scale(y), i)
                    except (ValueError, np.linalg.LinAlgError, IndexError, ZeroDivisionError):
                        fitted = None
            if fitted is None:
                self.fallback_rows_.append(i)
            self.fits_.append((fitted, _row_scale(y)))
        return self

    def forecast(self, horizon, *, exog_future=None, levels=LEVELS):
        base = self._fallback.forecast(horizon)["mean"]
        n = len(self.fits_)
        out = {"mean": base.copy()}
        for lv in levels:
            out[lv] = (np.full((n, horizon), np.nan), np.full((n, horizon), np.nan))
        for i, (fitted, scale) in enumerate(self.fits_):
            if fitted is None:  # seasonal naive mean; no model interval (NaN)
                continue
            xf = None if exog_future is None else np.asarray(exog_future, float)[i]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mean, ints = self._forecast_one(fitted, i, horizon, xf, levels)
            out["mean"][i] = mean * scale
            for lv in levels:
                out[lv][0][i], out[lv][1][i] = ints[lv][0] * scale, ints[lv][1] * scale
        return out


def _aicc(llf: float, k: int, n: int) -> float:
    return -2 * llf + 2 * k + (2 * k * (k + 1) / (n - k - 1) if n - k - 1 > 0 else np.inf)


class ETSForecaster(_PerSeries):
    """Exponential smoothing (ETS) with the trend and season chosen by AICc.

    statsmodels ``ETSModel`` with additive errors; candidates: no trend or a
    damped additive trend (which covers a straight trend as phi nears 1),
    each with and without an additive season (the season only with at least two full seasons of data). The
    candidate with the smallest AICc wins (Hyndman, Koehler, Snyder & Grose
    2002, *IJF* 18(3), section 4; Hyndman et al. 2008, *Forecasting with
    Exponential Smoothing*, eq. 7.2). Initial states come from statsmodels'
    heuristic (section 2.6.1 of the book) and are counted as parameters in
    the AICc, as if estimated, so a 52-state season must earn its keep.
    Intervals: the model's analytic prediction intervals.

    Attributes
    ----------
    forms_ : dict of int to str
        The chosen form per fitted series (row), e.g. ``"A,Ad,A"`` (error, trend, season).
    """

    name = "ets"
    CANDIDATES = ((None, False, None), ("add", True, None), (None, False, "add"),
                  ("add", True, "add"))

    def __init__(self, *, season_length: int | None = None, candidates=None):
        self.season_length = season_length
        self.candidates = candidates

    def fit(self, Y, periods=None, *, freq="W", exog=None):
        self.forms_ = {}
        super().fit(Y, periods, freq=freq, exog=exog)
        return self

    def _fit_one(self, y, i):
        from statsmodels.tsa.exponential_smoothing.ets import ETSModel

        best, best_ic, best_form = None, np.inf, "-"
        for trend, damped, seasonal in (self.candidates or self.CANDIDATES):
            if seasonal and len(y) < 2 * self.m_ + 2:
                continue
            if len(y) < 10:
                continue
            model = ETSModel(pd.Series(y), error="add", trend=trend, damped_trend=damped,
                             seasonal=seasonal, seasonal_periods=self.m_ if seasonal else None,
                             initialization_method="heuristic")
            res = model.fit(disp=False, maxiter=200)
            k = model._k_smoothing_params + model._k_initial_states + 1
            ic = _aicc(res.llf, k, len(y))
            if np.isfinite(ic) and ic < best_ic:
                best, best_ic = res, ic
                best_form = "A,{},{}".format({None: "N", "add": "A"}[trend] + ("d" if damped else ""),
                                             {None: "N", "add": "A"}[seasonal])
        self.forms_[i] = best_form
        return best

    def _forecast_one(self, res, i, horizon, xf, levels):
        n = int(res.nobs)
        pred = res.get_prediction(start=n, end=n + horizon - 1)
        mean = np.asarray(pred.predicted_mean, float)
        ints = {}
        for lv in levels:
            f = pred.summary_frame(alpha=1 - lv / 100)
            ints[lv] = (f["pi_lower"].to_numpy(float), f["pi_upper"].to_numpy(float))
        return mean, ints


class ThetaForecaster(_PerSeries):
    """The Theta method (Assimakopoulos & Nikolopoulos 2000, *IJF* 16(4)),
    as statsmodels' ``ThetaModel`` implements it (Hyndman & Billah 2003,
    *IJF* 19(2): simple exponential smoothing with drift equal to half the
    slope of a linear trend, theta = 2), on data deseasonalised by classical
    decomposition when two full seasons exist.
    Intervals: conformal, from backtest errors -- statsmodels' Theta
    intervals refit an ARIMA(0,1,1) for every call (0.5 s a series) and
    ignore the seasonal factors.
    """

    name = "theta"
    interval_source = "conformal"

    def __init__(self, *, season_length: int | None = None):
        self.season_length = season_length

    def _fit_one(self, y, i):
        from statsmodels.tsa.forecasting.theta import ThetaModel

        seasonal = len(y) >= 2 * self.m_
        # statsmodels' ACF seasonality test misses yearly seasons on trending
        # weekly series, so with two full seasons the data are always
        # deseasonalised; the backtest decides whether that pays
        model = ThetaModel(y, period=self.m_ if seasonal else 1, deseasonalize=seasonal,
                           use_test=False, method="auto")
        return model.fit()

    def _forecast_one(self, res, i, horizon, xf, levels):
        nan = np.full(horizon, np.nan)
        return np.asarray(res.forecast(horizon), float), {lv: (nan, nan) for lv in levels}


def regressors(periods, freq: str, calendar: str, *, start: int = 0) -> tuple[np.ndarray, list[str]]:
    """Deterministic regressors of the SARIMAX and boosting models.

    Returns an array (len(periods), k): a linear trend in years, the
    frequency's Fourier terms and the calendar's holiday shares, with names.
    """
    rules = check_freq(freq)
    t = np.arange(start, start + len(periods))
    hol = calendar_features(periods, freq, calendar)
    four = fourier_terms(t, freq)
    names = (["trend"] + [f"fourier_{j}" for j in range(four.shape[1])] + list(hol.columns))
    X = np.column_stack([t / rules["periods_per_year"], four, hol.to_numpy(float)])
    return X, names


class SarimaxForecaster(_PerSeries):
    """Regression with ARMA errors: trend, Fourier seasonality, holidays and
    promotions as regressors, the ARMA order chosen by AICc.

    ``y_t = c + beta' x_t + eta_t`` with ``eta_t`` ARMA(p, q) -- dynamic
    harmonic regression (Hyndman & Athanasopoulos, *Forecasting: Principles
    and Practice*, 3rd ed., sections 10.1 and 10.5), fitted by statsmodels'
    ``ARIMA`` (the SARIMAX state-space model with regression errors). The
    default candidates are AR(1) and AR(2) errors estimated by Burg's method
    with feasible GLS for the regression (``method="burg"``): on 15-20
    regressors that takes 0.02-0.2 s where the default state-space optimiser
    takes 5-20 s or fails to converge, at the same likelihood; orders with
    MA terms use innovations MLE. Forecasts and intervals come from the
    state-space form at the estimated parameters. ``x_t``: a linear trend, the
    frequency's Fourier pairs (yearly season), one share-of-days column per
    holiday of ``calendar`` and the exogenous columns passed to ``fit`` (the
    promotion share). Regressors that do not vary in the training window
    are dropped, and so are regressors that repeat others (holidays that
    always fall in the same week). Intervals: the model's. ``cov_type``:
    how the p-values of the chosen order's coefficients are computed
    (statsmodels' ``"opg"`` by default; ``"none"`` skips them, as the
    backtest fits do -- they cost about a second a fit).

    Attributes
    ----------
    coef_ : dict of int to dict
        Per fitted row, regressor name -> coefficient on the scaled series
        (:meth:`fit_coefficients` gives them in the series' units, e.g.
        ``hol_singles_day``: revenue added by a period fully inside the
        Singles' Day window).
    pvalues_ : dict of int to dict
        The coefficients' p-values.
    orders_ : dict of int to tuple
    """

    name = "sarimax"
    ORDERS = ((1, 0, 0), (2, 0, 0))

    def __init__(self, *, calendar: str = "cn", exog_names: tuple[str, ...] = ("promo",),
                 orders=None, method: str = "burg", season_length: int | None = None,
                 cov_type: str = "opg"):
        self.calendar = calendar
        self.exog_names = exog_names
        self.orders = orders
        self.method = method
        self.season_length = season_length
        self.cov_type = cov_type

    def fit(self, Y, periods=None, *, freq="W", exog=None):
        Y = self._setup(Y, periods, freq)
        self.X_, self.x_names_ = regressors(self.periods_, freq, self.calendar)
        self.coef_, self.pvalues_, self.orders_, self.keep_ = {}, {}, {}, {}
        return super().fit(Y, self.periods_, freq=freq, exog=exog)

    def _design(self, i, X_det, exog_rows):
        cols = [X_det]
        names = list(self.x_names_)
        if exog_rows is not None:
            cols.append(exog_rows)
            k = exog_rows.shape[1]
            names += [self.exog_names[j] if j < len(self.exog_names) else f"exog_{j}" for j in range(k)]
        return np.column_stack(cols), names

    def _fit_one(self, y, i):
        from scipy import stats
        from statsmodels.tsa.arima.model import ARIMA

        X, names = self._design(i, self.X_, None if self.exog_ is None else self.exog_[i])
        # regressors that do not vary, or repeat others (holidays that always
        # share a week), are dropped: the regression must have full rank
        keep = np.ptp(X, axis=0) > 1e-12
        keep[keep] = independent_columns(X[:, keep] - X[:, keep].mean(axis=0))
        X, names = X[:, keep], [n for n, k in zip(names, keep) if k]
        self.keep_[i] = keep
        best, best_ic, best_order = None, np.inf, None
        for order in (self.orders or self.ORDERS):
            # Burg's AR estimator with feasible GLS for the regression takes
            # ~0.02-0.2 s; MA terms need innovations MLE. The parameters'
            # covariance (numerical scores, ~1 s) only when asked for
            method = self.method if order[2] == 0 else "innovations_mle"
            try:
                res = ARIMA(y, exog=X, order=order, trend="c").fit(method=method, cov_type="none")
            except ValueError:
                res = ARIMA(y, exog=X, order=order, trend="c").fit(method="innovations_mle",
                                                                   cov_type="none")
            ic = _aicc(res.llf, len(res.params), len(y))
            if np.isfinite(ic) and ic < best_ic:
                best, best_ic, best_order = res, ic, order
        self.orders_[i] = best_order
        coef, pval = {}, {}
        if best is not None:
            params = dict(zip(best.model.param_names, np.asarray(best.params, float)))
            pvals = {}
            if self.cov_type != "none":   # for the chosen order only
                cov = getattr(best, f"cov_params_{self.cov_type}")
                se = np.sqrt(np.clip(np.diag(np.asarray(cov, float)), 0, None))
                with np.errstate(divide="ignore", invalid="ignore"):
                    z = np.asarray(best.params, float) / se
                pvals = dict(zip(best.model.param_names, 2 * stats.norm.sf(np.abs(z))))
            coef = {name: params.get(f"x{j + 1}", np.nan) for j, name in enumerate(names)}
            pval = {name: pvals.get(f"x{j + 1}", np.nan) for j, name in enumerate(names)}
        self.coef_[i], self.pvalues_[i] = coef, pval
        return best

    def fit_coefficients(self) -> list[dict]:
        """``coef_`` in the series' own units (the fits run on scaled data)."""
        return [{k: v * scale for k, v in self.coef_.get(i, {}).items()}
                for i, (_, scale) in enumerate(self.fits_)]

    def _forecast_one(self, res, i, horizon, xf, levels):
        fut = future_periods(self.periods_[-1], horizon, self.freq_)
        X_det, _ = regressors(fut, self.freq_, self.calendar, start=self.n_obs_)
        if self.exog_ is not None:
            if xf is None:  # unknown future promotions: their historical mean
                xf = np.repeat(self.exog_[i].mean(axis=0, keepdims=True), horizon, axis=0)
            X_det = np.column_stack([X_det, xf])
        X = X_det[:, self.keep_[i]]
        pred = res.get_forecast(horizon, exog=X)
        mean = np.asarray(pred.predicted_mean, float)
        ints = {}
        for lv in levels:
            ci = np.asarray(pred.conf_int(alpha=1 - lv / 100), float)
            ints[lv] = (ci[:, 0], ci[:, 1])
        return mean, ints


def independent_columns(X: np.ndarray, rtol: float = 1e-7) -> np.ndarray:
    """Which columns of ``X`` to keep, left to right, so that none is (nearly)
    a linear combination of those before it: a boolean mask.

    Columns are scaled to unit length; a column whose QR diagonal (its part
    orthogonal to the earlier columns) is below ``rtol`` is dropped.

    Examples
    --------
    >>> independent_columns(np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 1.0], [1.0, 2.0, 1.0]])).tolist()
    [True, False, True]
    """
    X = np.asarray(X, dtype=float)
    norms = np.linalg.norm(X, axis=0)
    keep = norms > 1e-12 * max(float(norms.max(initial=0.0)), 1.0)
    if not keep.any():
        return keep
    idx = np.flatnonzero(keep)
    r = np.abs(np.diag(np.linalg.qr(X[:, idx] / norms[idx], mode="r")))
    keep[idx[r < rtol]] = False
    return keep


def _threads(n: int | None):
    """Limit OpenMP/BLAS threads. On this 2-core, shared machine scikit-learn's
    OpenMP threads cost 5-10x in wall time when other processes compete for
    the cores (measured: 150 boosting iterations on 50,000 rows, 2.5 s with
    one thread, 35 s with two under load), so one thread is the default."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(n)


class GradientBoostingForecaster(PanelForecaster):
    """One gradient-boosting model across all series, on lag and calendar
    features, forecasting recursively.

    Each training row is one series at one period ``t``; the target is
    ``y_t / s_t`` with ``s_t`` the mean of the series over the preceding
    season (so series of every size share one model), the features are the
    lags ``y_{t-L} / s_t`` (``FREQ_RULES[freq]["lags"]``; missing early lags
    are NaN, which scikit-learn's ``HistGradientBoostingRegressor`` handles
    natively), the period of the year, the holiday shares of ``calendar``
    and the exogenous columns (promotion share). Forecasts are made one
    step at a time, each prediction feeding the lags of the next (the
    recursive strategy), for all series at once. A series may be NaN before
    its first sale (a group that did not exist yet): those periods give no
    training rows and their lags are missing, not zero.

    Parameters
    ----------
    calendar : {"cn", "western", "both", "none"}
    max_iter, learning_rate, max_leaf_nodes, min_samples_leaf
        Passed to ``HistGradientBoostingRegressor``.
    max_rows : int
        Training rows kept (a seeded random subset) to bound the fit time.
    n_threads : int or None
        OpenMP threads (None: all cores; see ``_threads``).
    random_state : int
    """

    name = "gradient_boosting"

    def __init__(self, *, calendar: str = "cn", max_iter: int = 150, learning_rate: float = 0.06,
                 max_leaf_nodes: int = 31, min_samples_leaf: int = 20, max_rows: int = 100_000,
                 season_length: int | None = None, n_threads: int | None = 1,
                 random_state: int | None = 0):
        self.calendar = calendar
        self.n_threads = n_threads
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.max_leaf_nodes = max_leaf_nodes
        self.min_samples_leaf = min_samples_leaf
        self.max_rows = max_rows
        self.season_length = season_length
        self.random_state = random_state

    def _calendar(self, periods):
        p = pd.DatetimeIndex(periods)
        pos = {"D": p.day_of_year, "W": p.isocalendar().week.to_numpy(), "M": p.month}[self.freq_]
        cols = [np.asarray(pos, float)]
        if self.freq_ == "D":
            cols.append(np.asarray(p.dayofweek, float))
        hol = calendar_features(p, self.freq_, self.calendar).to_numpy(float)
        return np.column_stack(cols + ([hol] if hol.size else []))

    def _features(self, Z, t, cal_t, exog_t):
        """Features of all rows at time ``t`` from values ``Z[:, :t]``."""
        n = Z.shape[0]
        lo = max(0, t - self.m_)
        # NaN before a series' first sale: its season's mean is over its life
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            s = np.nanmean(Z[:, lo:t], axis=1) if t > lo else np.zeros(n)
        lag_cols = []
        for L in self.lags_:
            lag_cols.append(Z[:, t - L] / np.where(s > 0, s, 1) if t - L >= 0 else np.full(n, np.nan))
        parts = [np.column_stack(lag_cols), np.repeat(cal_t[None, :], n, axis=0)]
        if exog_t is not None:
            parts.append(exog_t)
        return np.column_stack(parts), s

    def fit(self, Y, periods=None, *, freq="W", exog=None):
        from sklearn.ensemble import HistGradientBoostingRegressor

        Y = self._setup(Y, periods, freq)
        n, T = Y.shape
        self.lags_ = tuple(L for L in check_freq(freq)["lags"] if L < T)
        self.Y_ = Y
        self.exog_ = None if exog is None else np.asarray(exog, float)
        cal = self._calendar(self.periods_)
        start = max(4, min(self.m_, T // 3))
        rows, targets = [], []
        for t in range(start, T):
            X_t, s = self._features(Y, t, cal[t], None if self.exog_ is None else self.exog_[:, t])
            ok = s > 0
            rows.append(X_t[ok])
            targets.append(Y[ok, t] / s[ok])
        X, y = np.vstack(rows), np.concatenate(targets)
        if len(y) > self.max_rows:
            keep = np.random.default_rng(self.random_state).choice(len(y), self.max_rows, replace=False)
            X, y = X[np.sort(keep)], y[np.sort(keep)]
        self.n_train_rows_ = len(y)
        if not len(y):
            # no series sold anything in a season before a period: nothing
            # to learn; the forecast is the recent mean (see forecast)
            self.model_ = None
            return self
        self.model_ = HistGradientBoostingRegressor(
            max_iter=self.max_iter, learning_rate=self.learning_rate,
            max_leaf_nodes=self.max_leaf_nodes, min_samples_leaf=self.min_samples_leaf,
            early_stopping=False, random_state=self.random_state)
        with _threads(self.n_threads):
            self.model_.fit(X, y)
        return self

    def forecast(self, horizon, *, exog_future=None, levels=LEVELS):
        n, T = self.Y_.shape
        fut = future_periods(self.periods_[-1], horizon, self.freq_)
        cal = self._calendar(fut)
        if self.exog_ is not None and exog_future is None:
            exog_future = np.repeat(self.exog_.mean(axis=1, keepdims=True), horizon, axis=1)
        Z = np.concatenate([self.Y_, np.zeros((n, horizon))], axis=1)
        for j in range(horizon):
            t = T + j
            X_t, s = self._features(Z, t, cal[j], None if exog_future is None else exog_future[:, j])
            if self.model_ is None:   # nothing was learnt: the mean of the last season
                Z[:, t] = s
                continue
            with _threads(self.n_threads):
                Z[:, t] = np.where(s > 0, self.model_.predict(X_t) * s, 0.0)
        return {"mean": Z[:, T:]}


# name -> constructor: the model set the pipeline knows
MODELS: dict[str, type[PanelForecaster]] = {
    cls.name: cls for cls in (NaiveForecaster, SeasonalNaiveForecaster, MovingAverageForecaster,
                              HoltWintersForecaster, ETSForecaster, ThetaForecaster,
                              SarimaxForecaster, GradientBoostingForecaster)
}
FAST_MODELS = ("naive", "seasonal_naive", "moving_average", "holt_winters", "gradient_boosting")
DETAILED_MODELS = ("ets", "theta", "sarimax")
