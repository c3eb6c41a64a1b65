"""Rolling-origin backtest, model selection, intervals, reconciliation and holdout.

One function, :func:`forecast`, takes the long series frame of
:func:`~crmlab.forecasting.series.build_series` and does every step of the
report's forecasting sections for the total and for every group at once:

1. ``holdout``: the last N periods are cut off first; nothing below sees them
   until the chosen forecast is scored on them.
2. Backtest: at ``n_origins`` rolling origins (``step`` periods apart, the
   last one ``horizon`` periods before the end of the training data) every
   model is fitted on the data up to the origin only and forecasts
   ``horizon`` periods; errors are scored by MASE (scaled by the in-sample
   seasonal naive MAE at that origin) and sMAPE. Each series starts at its
   first sale (:func:`first_sales`): the periods before a group existed are
   neither fitted nor part of its MASE scale, and a group is scored only at
   origins with ``max(10, horizon)`` periods of its life behind them (a
   younger group gets the seasonal naive forecast of what it has).
3. Selection: per series, the model with the lowest mean MASE; a simple
   ensemble (the mean of the ``ensemble_size`` best models) replaces it when
   its backtest MASE is lower.
4. Final forecast: the chosen models refitted on all training data,
   ``holdout + horizon`` periods ahead, with 80% and 95% intervals: the
   model's own where it has them (ETS, SARIMAX) and the backtest shows
   them calibrated (coverage within ``CALIBRATION`` of nominal), else
   conformal intervals from the backtest's absolute errors per horizon
   step (scaled by each series' mean error and pooled over like series:
   the total and the regular groups together, intermittent groups -- more
   than ``INTERMITTENT_SHARE`` of periods without sales -- apart; outside
   intermittent groups the width follows each step's forecast level,
   :func:`level_factor`, so a December peak gets a wider range than a
   quiet January).
   ``ForecastResult.interval_source`` says which, per group. Coverage
   of both kinds is measured in the backtest (conformal ones
   leave-one-origin-out, so an origin's errors never calibrate its own
   interval).
5. Groups: the fast models run on every group, the statsmodels models on
   the total and the ``n_detailed`` largest groups; groups are reconciled
   with the total. The sum of the groups' chosen forecasts is scored in the
   backtest like a model of the total (``"bottom_up"``); ``reconcile="auto"``
   (default) publishes it as the total when it beat the total's own model,
   else scales the groups to the total's own forecast (top-down), so the
   published total is always the better of the two and the groups add up.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from crmlab.exceptions import NoDataError, ParameterError
from crmlab.forecasting import metrics as M
from crmlab.forecasting.models import DETAILED_MODELS, FAST_MODELS, LEVELS, MODELS
from crmlab.forecasting.series import TOTAL, check_freq, future_periods, to_panel

RECONCILE = ("auto", "bottom_up", "top_down", "none")
# fitted across all series at once, on each series' life (NaN before it)
GLOBAL_MODELS = ("gradient_boosting",)
# the models a group with less life than a forecast needs may still get
SHORT_LIFE_MODELS = ("naive", "seasonal_naive", "moving_average")
BOTTOM_UP = "bottom_up"   # the total's pseudo-model: the sum of the groups' chosen forecasts
# a model's own intervals are kept when their backtest coverage is within
# this of the nominal 80% (scaled to each level's tail: +-0.10 at 80%,
# +-0.0375 at 95%); otherwise the conformal intervals replace them
CALIBRATION = 0.10
# a series with more than this share of periods without sales is
# intermittent: its errors calibrate intervals apart from the regular series'
INTERMITTENT_SHARE = 0.10
# conformal widths follow the forecast's level (see level_factor); a step
# forecast far below its window's mean keeps at least this share of the width
LEVEL_FLOOR = 0.25


@dataclasses.dataclass
class ForecastResult:
    """Everything the forecasting sections show and export.

    Attributes
    ----------
    groups : list of str
        Row labels; ``"total"`` first.
    periods : DatetimeIndex
        History periods (training then holdout).
    Y : ndarray (n, T)
        History values.
    scores : DataFrame
        One row per group and model: ``group, model, mase, smape,
        coverage_80, coverage_95, interval_source, chosen``.
    chosen : dict
        Group -> chosen model (``"ensemble"`` members in ``ensembles``).
    forecast_frame : DataFrame
        ``group, period, model, yhat, lo80, hi80, lo95, hi95``.
    backtest_frame : DataFrame
        ``group, period, actual, yhat, model`` (holdout rows: ``model ==
        "holdout"``).
    holdout_scores : DataFrame
        ``group, mase, smape, model, coverage_80, coverage_95`` of the chosen
        forecast on the holdout (the coverage there is free of the selection
        bias of backtest coverage, where the chosen model's errors helped
        choose it).
    effects : DataFrame
        ``regressor, effect, p_value, event_period_effect``: holiday and
        promotion effects on the total from the SARIMAX fit on all training
        data (value units per period fully inside the event window / per unit
        of discount share; ``event_period_effect``: in the period the event
        covers most).
    reconciled_mase : float or None
        Backtest MASE of the sum of the groups' chosen forecasts on the total.
    totals : dict
        Group -> ``{"yhat", "lo80", "hi80", "lo95", "hi95"}``: the forecast
        summed over the ``horizon`` periods after the data, with a range from
        the backtest errors of whole-window sums (conformal, pooled over the
        rows of the chosen model).
    """

    value: str
    freq: str
    horizon: int
    holdout: int
    levels: tuple
    groups: list
    periods: pd.DatetimeIndex
    Y: np.ndarray
    train_len: int
    origins: list
    scores: pd.DataFrame
    chosen: dict
    ensembles: dict
    interval_source: dict
    coverage: dict
    forecast_frame: pd.DataFrame
    backtest_frame: pd.DataFrame
    holdout_scores: pd.DataFrame
    reconcile: str
    reconciled_mase: float | None
    effects: pd.DataFrame
    group_customers: dict
    notes: list
    totals: dict = dataclasses.field(default_factory=dict)

    def score_table(self, group: str = TOTAL) -> pd.DataFrame:
        """Every model's backtest scores for one group, best first, with the
        improvement over seasonal naive in percent."""
        t = self.scores[self.scores["group"] == group].drop(columns="group")
        base = t.loc[t["model"] == "seasonal_naive", "mase"]
        if len(base) and base.iloc[0] > 0:
            t = t.assign(vs_seasonal_naive_pct=100 * (1 - t["mase"] / base.iloc[0]))
        return t.sort_values("mase", ignore_index=True)

    def history(self, group: str = TOTAL) -> pd.DataFrame:
        """History and forecast of one group in one frame for a chart:
        ``period, actual, yhat, lo80, hi80, lo95, hi95, part`` with ``part``
        one of train / holdout / forecast."""
        i = self.groups.index(group)
        hist = pd.DataFrame({"period": self.periods, "actual": self.Y[i]})
        hist["part"] = np.where(np.arange(len(self.periods)) < self.train_len, "train", "holdout")
        fc = self.forecast_frame[self.forecast_frame["group"] == group].drop(columns=["group", "model"])
        out = hist.merge(fc, on="period", how="outer")
        out.loc[out["part"].isna(), "part"] = "forecast"
        return out.sort_values("period", ignore_index=True)


def rolling_origins(n_train: int, horizon: int, n_origins: int, step: int, min_train: int) -> list[int]:
    """Origins (training lengths) of a rolling-origin backtest.

    The last origin leaves exactly ``horizon`` periods to score; earlier
    ones are ``step`` periods apart; origins with less than ``min_train``
    training periods are dropped.

    Examples
    --------
    >>> rolling_origins(100, 12, 4, 12, 40)
    [52, 64, 76, 88]
    """
    last = n_train - horizon
    return [o for o in (last - k * step for k in reversed(range(n_origins))) if o >= min_train]


def level_factor(pred: np.ndarray, h: int) -> np.ndarray:
    """Each step's forecast over the mean forecast of the first ``h`` steps:
    the shape of a conformal interval's width along the window.

    Errors of sales forecasts grow with the level forecast (a December five
    times January misses by five times as much), so the conformal score is
    the absolute error divided by this factor (a normalised nonconformity
    score: Papadopoulos, Vovk & Gammerman 2011, *JAIR* 40; the coverage
    guarantee holds for any such scale fixed by the forecast alone) and the
    width is multiplied by it. A flat forecast gives 1 at every step.
    Forecasts are taken as at least zero; the factor is at least
    ``LEVEL_FLOOR``.

    Parameters
    ----------
    pred : array (..., steps)
    h : int
        Steps whose mean is the reference level (the backtest horizon).

    Examples
    --------
    >>> level_factor(np.array([[1.0, 3.0], [0.0, 0.0]]), 2).tolist()
    [[0.5, 1.5], [1.0, 1.0]]
    """
    p = np.clip(np.nan_to_num(np.asarray(pred, float)), 0, None)
    ref = p[..., :h].mean(axis=-1, keepdims=True)
    f = np.divide(p, ref, out=np.ones_like(p), where=ref > 0)
    return np.maximum(f, LEVEL_FLOOR)


def periods_needed(horizon: int, holdout: int = 0) -> int:
    """The fewest periods of history a forecast can be made from: the
    ``holdout``, then one backtest window of ``horizon`` periods after at
    least ``max(10, horizon)`` periods to fit on (seasonal models need two
    years and fall back to non-seasonal forms below that).

    Examples
    --------
    >>> periods_needed(13), periods_needed(6, holdout=4)
    (26, 20)
    """
    return holdout + horizon + max(10, horizon)


def _make(name: str, *, calendar: str, random_state, exog_names, final: bool = True):
    cls = MODELS[name]
    kw = {}
    if name in ("sarimax", "gradient_boosting"):
        kw["calendar"] = calendar
    if name == "sarimax":
        kw["exog_names"] = tuple(exog_names)
        # p-values (numerical scores, ~1 s a fit) only for the final fit,
        # whose effects the page reports
        kw["cov_type"] = "opg" if final else "none"
    if name == "gradient_boosting":
        kw["random_state"] = random_state
    return cls(**kw)


def first_sales(Y: np.ndarray) -> np.ndarray:
    """The index of each row's first period with sales (0 for a row without
    any): a group's series starts there, the periods before it existed are
    not history.

    Examples
    --------
    >>> first_sales(np.array([[0.0, 0.0, 3.0, 0.0], [1.0, 0.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]])).tolist()
    [2, 0, 0]
    """
    sold = np.asarray(Y) != 0
    return np.where(sold.any(axis=1), sold.argmax(axis=1), 0)


def life_scale(Y: np.ndarray, start: np.ndarray, o: int, m: int) -> np.ndarray:
    """The MASE scale (:func:`metrics.insample_scale`) of each row on its own
    life, from its first sale (``start``) to before ``o``: (n,)."""
    out = np.ones(len(Y))
    for s in np.unique(start):
        rows = np.flatnonzero(start == s)
        out[rows] = M.insample_scale(Y[rows, s:max(o, s + 1)], m)
    return out


def _run(name, rows, Y, X, periods, freq, o, steps, exog_future, levels, mk, start, min_life,
         short_ok=False):
    """Fit one model on each row's life before ``o`` (from its first sale,
    ``start``); forecast ``steps``.

    Rows of one start are fitted together; the global model
    (``GLOBAL_MODELS``) is fitted on all rows at once with the periods before
    each row's start missing (NaN). Rows with less than ``min_life`` periods
    of life get NaN -- or, with ``short_ok``, the simple models
    (``SHORT_LIFE_MODELS``) only. Returns the fitted models (the first holds
    ``rows[0]`` as its first row) and ``{"mean": (len(rows), steps), level:
    (lo, hi)}``.
    """
    rows = np.asarray(rows, int)
    life = o - start[rows]
    fit = (life >= min_life) | (short_ok & (name in SHORT_LIFE_MODELS) & (life >= 1))
    out = {"mean": np.full((len(rows), steps), np.nan)}
    for lv in levels:
        out[lv] = (np.full((len(rows), steps), np.nan), np.full((len(rows), steps), np.nan))
    xf_all = None if exog_future is None else exog_future[rows]
    if name in GLOBAL_MODELS:
        cohorts = [np.arange(len(rows))]
        Yo = Y[rows, :o].copy()
        Yo[np.arange(o)[None, :] < start[rows][:, None]] = np.nan
        first = {0: 0}
    else:
        firsts = dict.fromkeys(start[rows][fit])   # in row order: rows[0]'s cohort first
        cohorts = [np.flatnonzero((start[rows] == s0) & fit) for s0 in firsts]
        first = {k: int(start[rows][c[0]]) for k, c in enumerate(cohorts)}
    models = []
    for k, c in enumerate(cohorts):
        if not len(c):
            continue
        a = first[k]
        model = mk(name)
        y = Yo[c] if name in GLOBAL_MODELS else Y[rows[c], a:o]
        Xo = None if X is None else X[rows[c], a:o]
        model.fit(y, periods[a:o], freq=freq, exog=Xo)
        res = model.forecast(steps, exog_future=None if xf_all is None else xf_all[c], levels=levels)
        keep = fit[c]
        out["mean"][c[keep]] = res["mean"][keep]
        for lv in levels:
            if lv in res:
                out[lv][0][c[keep]], out[lv][1][c[keep]] = res[lv][0][keep], res[lv][1][keep]
        models.append(model)
    return models, out


def _one_blas_thread(func):
    """Run ``func`` with one BLAS thread: the models solve many small
    systems (a few hundred rows), where a second thread only adds
    synchronisation -- and on a shared 2-core machine under load it costs
    3-4x in wall time (measured: a daily year's forecast, 25 s with two
    OpenBLAS threads, 7 s with one)."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with threadpool_limits(limits=1, user_api="blas"):
            return func(*args, **kwargs)
    return wrapper


@_one_blas_thread
def forecast(series: pd.DataFrame, *, value: str = "revenue", freq: str = "W",
             horizon: int | None = None, holdout: int = 0, n_origins: int = 4,
             step: int | None = None, fast_models=FAST_MODELS, detailed_models=DETAILED_MODELS,
             n_detailed: int = 3, calendar: str = "cn", exog: tuple[str, ...] = ("discount_share",),
             future_exog: pd.DataFrame | None = None, ensemble_size: int = 3,
             reconcile: str = "auto", levels: tuple[int, ...] = LEVELS,
             nonnegative: bool = True, random_state: int | None = 0) -> ForecastResult:
    """Backtest, choose, forecast and reconcile the series of a sales frame.

    Takes the long frame of :func:`build_series` (``group, period, <value>``
    and the exogenous columns) and returns a :class:`ForecastResult` with
    the score table, the chosen model per group, the forecast and backtest
    exports, the holdout scores and the interval coverage.

    Parameters
    ----------
    series : DataFrame
        One row per group per period. With several groups the total (their
        sum) is added as group ``"total"``.
    value : str
        The column to forecast (``"revenue"`` or ``"orders"``).
    freq : {"D", "W", "M"}
    horizon : int, optional
        Periods ahead; None or 0: the frequency's default
        (``FREQ_RULES[freq]["horizon"]``: 28 days, 13 weeks, 12 months).
    holdout : int
        The last N periods withheld from selection and fitting and scored at
        the end. The forecast then runs ``holdout + horizon`` periods from the
        end of the training data.
    n_origins, step : int
        Backtest origins and their spacing (default ``step = horizon``:
        windows that do not overlap, so each backtest period is scored once).
    fast_models, detailed_models : sequence of str
        Names in ``models.MODELS``; the detailed (statsmodels) ones run on the
        total and the ``n_detailed`` largest groups only.
    calendar : {"cn", "western", "both", "none"}
        Holiday regressors for SARIMAX and gradient boosting.
    exog : tuple of str
        Columns of ``series`` used as known regressors (promotion share).
    future_exog : DataFrame, optional
        Planned values of ``exog`` for the forecast periods (index: period).
        When given, the backtest uses the actual values of ``exog`` at each
        origin (plans are known ahead); otherwise future values are their
        historical mean in the backtest and in the forecast alike.
    ensemble_size : int
        Models averaged in the ensemble (0 disables it).
    reconcile : {"auto", "bottom_up", "top_down", "none"}
        ``bottom_up``: the total is the sum of the groups' forecasts, with
        conformal intervals from the backtest errors of that sum.
        ``top_down``: the groups are scaled so they add up to the total's
        own forecast (forecast proportions, Athanasopoulos, Ahmed & Hyndman
        2009, *IJF* 25(1)). ``auto``: bottom-up when the sum of the groups
        beat the total's own chosen model in the backtest (MASE), else
        top-down. ``ForecastResult.reconcile`` records the one used.
    levels : tuple of int
        Interval levels in percent.
    nonnegative : bool
        Clip forecasts and lower bounds at zero (sales cannot be negative).
    random_state : int

    Returns
    -------
    ForecastResult

    Examples
    --------
    >>> res = forecast(series, freq="W", horizon=12, holdout=8)  # doctest: +SKIP
    >>> res.score_table()                                        # doctest: +SKIP
    """
    rules = check_freq(freq)
    if reconcile not in RECONCILE:
        raise ParameterError(f"reconcile must be one of {RECONCILE}, not {reconcile!r}")
    unknown = [m for m in (*fast_models, *detailed_models) if m not in MODELS]
    if unknown:
        raise ParameterError(f"unknown models {unknown}; known: {sorted(MODELS)}")
    horizon = int(horizon or rules["horizon"])
    step = int(step or horizon)
    m = rules["season_length"]
    if holdout < 0 or horizon < 1:
        raise ParameterError("horizon must be >= 1 and holdout >= 0")

    panel = to_panel(series, value, exog=tuple(exog))
    groups, periods, Y, X = panel["groups"], panel["periods"], panel["Y"], panel["X"]
    exog_names = panel["exog_names"]
    sizes = (series.drop_duplicates("group").set_index("group")["group_customers"].to_dict()
             if "group_customers" in series.columns else {})
    if len(groups) == 1:
        groups = [TOTAL]          # one series is the total, whatever its label
        sizes = {TOTAL: v for v in sizes.values()}
    else:
        tot = Y.sum(axis=0, keepdims=True)
        Xt = None
        if X is not None:
            w = np.where(tot[0] > 0, tot[0], 1.0)
            Xt = (X * Y[:, :, None]).sum(axis=0, keepdims=True) / w[None, :, None]
            X = np.concatenate([Xt, X])
        Y = np.concatenate([tot, Y])
        groups = [TOTAL] + [g if g != TOTAL else f"{g} (group)" for g in groups]
    n, T = Y.shape
    n_train = T - holdout
    notes = []
    min_seasonal = max(2 * m + 2, 10 + 2 * (m // 2))
    origins = rolling_origins(n_train, horizon, n_origins, step, min_seasonal)
    if not origins:
        origins = rolling_origins(n_train, horizon, n_origins, step, max(10, horizon))
        if origins:
            notes.append(f"less than two years of {rules['label']}s before the backtest: "
                         "seasonal models fall back to non-seasonal forms")
    if not origins:
        unit = rules["label"]
        raise NoDataError(
            f"{T} complete {unit}s of sales are too few: a {horizon}-{unit} forecast"
            + (f" with {holdout} {unit}s withheld" if holdout else "")
            + f" needs at least {periods_needed(horizon, holdout)} (lower horizon or holdout, or "
            "choose a shorter period with freq)")

    order = np.argsort(-Y[1:, :n_train].sum(axis=1)) + 1 if n > 1 else np.array([], int)
    detailed_rows = [0] + [int(i) for i in order[:n_detailed]]
    rows_of = {name: list(range(n)) for name in fast_models}
    rows_of.update({name: detailed_rows for name in detailed_models})
    names = list(dict.fromkeys([*fast_models, *detailed_models]))
    mk = lambda name: _make(name, calendar=calendar, random_state=random_state,  # noqa: E731
                            exog_names=exog_names, final=False)
    mk_final = lambda name: _make(name, calendar=calendar, random_state=random_state,  # noqa: E731
                                  exog_names=exog_names, final=True)

    def future_x(o, steps):
        if X is None:
            return None
        if future_exog is not None and o + steps <= n_train:
            return X[:, o:o + steps]
        if future_exog is not None and o == n_train:
            plan = future_exog.reindex(future_periods(periods[n_train - 1], steps, freq))
            fill = X[:, :o].mean(axis=1)  # (n, k)
            vals = np.stack([plan[c].to_numpy(float) if c in plan else np.full(steps, np.nan)
                             for c in exog_names], axis=-1)
            return np.where(np.isnan(vals)[None], fill[:, None, :], vals[None])
        return np.repeat(X[:, :o].mean(axis=1, keepdims=True), steps, axis=1)

    # -- backtest -------------------------------------------------------
    O, h = len(origins), horizon
    actual = np.stack([Y[:, o:o + h] for o in origins])                       # (O, n, h)
    # every row's series starts at its first sale in the training data: the
    # periods before a group existed are neither fitted nor scored, and a row
    # is backtested at an origin only with min_life periods of life before it
    start = first_sales(Y[:, :n_train])
    min_life = max(10, horizon)
    scale = np.stack([life_scale(Y, start, o, m) for o in origins])           # (O, n)
    final_scale = life_scale(Y, start, n_train, m)
    young_rows = [i for i in range(1, n) if n_train - start[i] < min_life]
    if young_rows:
        notes.append(f"{len(young_rows)} group(s) sold for fewer than {min_life} {rules['label']}s "
                     "before the forecast: too young for the backtest, they get the seasonal naive "
                     "forecast of the history they have")
    bt = {k: np.full((O, n, h), np.nan) for k in names}
    bt_int = {k: {lv: (np.full((O, n, h), np.nan), np.full((O, n, h), np.nan)) for lv in levels}
              for k in names}
    # a group too young to be scored still adds its seasonal naive forecast
    # (on what life it has; zero before it existed) to the sum of the groups
    young = np.zeros((O, n, h))
    for oi, o in enumerate(origins):
        xf = future_x(o, h)
        if n > 1:
            _, out = _run("seasonal_naive", range(n), Y, X, periods, freq, o, h, xf, (), mk,
                          start, min_life, short_ok=True)
            young[oi] = np.nan_to_num(out["mean"])
        for name in names:
            rows = rows_of[name]
            _, out = _run(name, rows, Y, X, periods, freq, o, h, xf, levels, mk, start, min_life)
            bt[name][oi, rows] = out["mean"]
            for lv in levels:
                if lv in out:
                    bt_int[name][lv][0][oi, rows], bt_int[name][lv][1][oi, rows] = out[lv]
    if nonnegative:
        for name in names:
            np.clip(bt[name], 0, None, out=bt[name])

    def mase_of(pred):   # (O, n, h) -> (n,) mean over the origins that scored a row
        if not np.isfinite(pred).any():
            return np.full(n, np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(np.nanmean(np.abs(actual - pred), axis=2) / scale, axis=0)

    def smape_of(pred):  # (O, n, h) -> (n,); an origin that did not score a row is left out
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            per = np.where(np.isfinite(pred).all(axis=2), M.smape(actual, pred), np.nan)
            return np.nanmean(per, axis=0)

    with np.errstate(all="ignore"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mase_tab = {k: mase_of(bt[k]) for k in names}
            smape_tab = {k: smape_of(bt[k]) for k in names}
    for k in names:  # rows a model did not run on
        missing = np.ones(n, bool)
        missing[rows_of[k]] = False
        mase_tab[k][missing] = np.nan
        smape_tab[k][missing] = np.nan

    # -- ensembles and choice --------------------------------------------
    chosen, ensembles = {}, {}
    ens_bt = np.full((O, n, h), np.nan)
    for i in range(n):
        ranked = sorted((mase_tab[k][i], k) for k in names if np.isfinite(mase_tab[k][i]))
        if not ranked:
            chosen[groups[i]] = "seasonal_naive"
            continue
        best = ranked[0][1]
        members = [k for _, k in ranked[:ensemble_size]] if ensemble_size > 1 else []
        if len(members) >= 2:
            ens_bt[:, i] = np.mean([bt[k][:, i] for k in members], axis=0)
            ensembles[groups[i]] = members
        chosen[groups[i]] = best
    names_all = names + (["ensemble"] if ensembles else [])
    if ensembles:
        bt["ensemble"] = ens_bt
        mase_tab["ensemble"] = mase_of(ens_bt)
        with np.errstate(all="ignore"):
            smape_tab["ensemble"] = smape_of(ens_bt)
        bt_int["ensemble"] = {lv: (np.full((O, n, h), np.nan),) * 2 for lv in levels}
        rows_of["ensemble"] = [i for i in range(n) if groups[i] in ensembles]
        for i in rows_of["ensemble"]:
            if mase_tab["ensemble"][i] < mase_tab[chosen[groups[i]]][i]:
                chosen[groups[i]] = "ensemble"

    # -- the sum of the groups, scored like a model of the total ----------
    reconciled_mase = None
    if n > 1 and reconcile != "none":
        bu = np.zeros((O, n, h))
        bu[:] = np.nan
        own = [np.where(np.isfinite(bt[chosen[g]][:, i]), bt[chosen[g]][:, i], young[:, i])
               for i, g in enumerate(groups) if i]
        bu[:, 0] = np.sum(np.stack(own, axis=1), axis=1)
        bt[BOTTOM_UP] = bu
        rows_of[BOTTOM_UP] = [0]
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mase_tab[BOTTOM_UP] = mase_of(bu)
            smape_tab[BOTTOM_UP] = smape_of(bu)
        bt_int[BOTTOM_UP] = {lv: (np.full((O, n, h), np.nan),) * 2 for lv in levels}
        names_all.append(BOTTOM_UP)
        reconciled_mase = float(mase_tab[BOTTOM_UP][0])
        if reconcile == "bottom_up" or (reconcile == "auto"
                                        and reconciled_mase < mase_tab[chosen[TOTAL]][0]):
            chosen[TOTAL] = BOTTOM_UP
    if n > 1 and reconcile != "none":
        reconcile = "bottom_up" if chosen[TOTAL] == BOTTOM_UP else "top_down"

    # -- conformal quantiles (per model, pooled over like series) ---------
    # errors are divided by each row's own mean backtest error of that model,
    # so series of any size pool into one shape per horizon step. Series
    # with many periods without sales (intermittent) have errors of another
    # shape -- mostly zero, now and then large -- so they pool apart from the
    # total and the regular groups
    alive = np.arange(n_train)[None, :] >= start[:, None]
    intermittent = ((Y[:, :n_train] <= 0) & alive).sum(axis=1) / alive.sum(axis=1) > INTERMITTENT_SHARE
    intermittent[0] = False
    # widths follow each step's forecast level (level_factor), except in
    # intermittent series, whose forecasts near zero say little of their errors
    lf = {k: np.where(intermittent[None, :, None], 1.0, level_factor(bt[k], h)) for k in names_all}
    abs_err = {k: np.abs(actual - bt[k]) / lf[k] for k in names_all}         # (O, n, h)

    def pools(rows):
        rows = list(rows)
        parts = [[r for r in rows if not intermittent[r]], [r for r in rows if intermittent[r]]]
        return [part for part in parts if part]

    def conformal(k, rows, drop_origin=None):
        """({level: (n, h) half-width multiples}, (n,) row scales)."""
        keep = [oi for oi in range(O) if oi != drop_origin]
        e = abs_err[k][keep]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            s = np.nanmean(e, axis=(0, 2))                                    # (n,)
        s = np.where(np.isfinite(s) & (s > 0), s, final_scale)
        Q = {lv: np.full((n, h), np.nan) for lv in levels}
        for pool in pools(rows):
            r = (e[:, pool] / s[pool][None, :, None]).reshape(-1, h)
            for lv in levels:
                Q[lv][pool] = M.conformal_quantiles(r, lv / 100)
        return Q, s

    q = {k: conformal(k, rows_of[k]) for k in names_all}

    def has_model_int(k, i):
        return np.isfinite(bt_int[k][levels[0]][0][:, i]).all()

    # coverage in backtest, per model and row, of both interval kinds; a
    # model's own intervals are used only where the backtest shows them
    # calibrated (CALIBRATION), else the conformal ones
    cov = {k: {lv: np.full(n, np.nan) for lv in levels} for k in names_all}
    source = {k: {} for k in names_all}
    for k in names_all:
        rows = rows_of[k]
        loo = [conformal(k, rows, drop_origin=oi) for oi in range(O)] if O > 1 else None
        for i in rows:
            c_model, c_conf = {}, {}
            for lv in levels:
                if has_model_int(k, i):
                    lo = bt_int[k][lv][0][:, i]
                    c_model[lv] = M.coverage(actual[:, i], np.clip(lo, 0, None) if nonnegative else lo,
                                             bt_int[k][lv][1][:, i])
                if loo is not None:
                    half = np.stack([loo[oi][0][lv][i] * loo[oi][1][i] * lf[k][oi, i]
                                     for oi in range(O)])
                    lo, hi = bt[k][:, i] - half, bt[k][:, i] + half
                    c_conf[lv] = M.coverage(actual[:, i], np.clip(lo, 0, None) if nonnegative else lo, hi)
            calibrated = bool(c_model) and all(
                abs(c_model[lv] - lv / 100) <= CALIBRATION * (1 - lv / 100) / 0.2 for lv in levels)
            source[k][i] = "model" if calibrated or (c_model and not c_conf) else "conformal"
            chosen_cov = c_model if source[k][i] == "model" else c_conf
            for lv in levels:
                cov[k][lv][i] = chosen_cov.get(lv, np.nan)

    # -- final fit and forecast --------------------------------------------
    steps = holdout + horizon
    fut = future_periods(periods[n_train - 1], steps, freq)
    xf = future_x(n_train, steps)
    final, final_int, fitted_models = {}, {}, {}
    need = set()
    for g in groups:
        need.update(ensembles.get(g, []) if chosen[g] == "ensemble" else [chosen[g]])
    need.discard(BOTTOM_UP)
    for name in names:
        if name not in need and name != "seasonal_naive" and name != "sarimax":
            continue
        rows = rows_of[name]
        models, out = _run(name, rows, Y, X, periods, freq, n_train, steps, xf, levels, mk_final,
                           start, min_life, short_ok=True)
        fitted_models[name] = (models, rows)
        final[name] = np.full((n, steps), np.nan)
        final[name][rows] = out["mean"]
        final_int[name] = {lv: (np.full((n, steps), np.nan), np.full((n, steps), np.nan))
                           for lv in levels}
        for lv in levels:
            if lv in out:
                final_int[name][lv][0][rows], final_int[name][lv][1][rows] = out[lv]

    def q_steps(k, lv, i):  # conformal half-width per step, extended past the backtest horizon
        qq = q[k][0][lv][i]
        if steps <= h:
            return qq[:steps]
        # beyond the backtested horizon widths grow like sqrt(step)
        ext = qq[-1] * np.sqrt(np.arange(h + 1, steps + 1) / h)
        return np.concatenate([qq, ext])

    mean = np.zeros((n, steps))
    bounds = {lv: (np.zeros((n, steps)), np.zeros((n, steps))) for lv in levels}
    interval_source = {}
    # groups first: a bottom-up total is their sum
    for i in list(range(1, n)) + [0]:
        g = groups[i]
        k = chosen[g]
        if k == "ensemble":
            mean[i] = np.mean([final[j][i] for j in ensembles[g]], axis=0)
        elif k == BOTTOM_UP:
            mean[i] = (np.clip(mean[1:], 0, None) if nonnegative else mean[1:]).sum(axis=0)
        else:
            mean[i] = final[k][i]
        own = (k not in ("ensemble", BOTTOM_UP) and source[k].get(i) == "model"
               and np.isfinite(final_int[k][levels[0]][0][i]).all())
        interval_source[g] = "model" if own else "conformal"
        for lv in levels:
            if own:
                bounds[lv][0][i], bounds[lv][1][i] = final_int[k][lv][0][i], final_int[k][lv][1][i]
            else:
                shape = 1.0 if intermittent[i] else level_factor(mean[i], h)
                half = q_steps(k, lv, i) * q[k][1][i] * shape
                bounds[lv][0][i], bounds[lv][1][i] = mean[i] - half, mean[i] + half
    if nonnegative:
        mean = np.clip(mean, 0, None)

    # -- reconciliation ----------------------------------------------------
    labels = {g: (f"ensemble({'+'.join(ensembles[g])})" if chosen[g] == "ensemble" else chosen[g])
              for g in groups}
    if reconcile == "top_down":
        bu = np.clip(mean[1:], 0, None).sum(axis=0) if nonnegative else mean[1:].sum(axis=0)
        ratio = np.divide(mean[0], bu, out=np.ones_like(bu), where=bu > 0)
        mean[1:] *= ratio
        for lv in levels:
            bounds[lv][0][1:] *= ratio
            bounds[lv][1][1:] *= ratio
        for g in groups[1:]:
            labels[g] = f"top_down({labels[g]})"
    for lv in levels:
        if nonnegative:
            np.clip(bounds[lv][0], 0, None, out=bounds[lv][0])
        bounds[lv] = (np.minimum(bounds[lv][0], mean), np.maximum(bounds[lv][1], mean))

    # -- tables ------------------------------------------------------------
    rows_tab = []
    for k in names_all:
        for i in rows_of[k]:
            rec = {"group": groups[i], "model": k, "mase": mase_tab[k][i], "smape": smape_tab[k][i]}
            for lv in levels:
                rec[f"coverage_{lv}"] = cov[k][lv][i]
            rec["interval_source"] = source[k].get(i, "conformal")
            rec["chosen"] = chosen[groups[i]] == k
            rows_tab.append(rec)
    scores = pd.DataFrame(rows_tab)

    fc = {"group": np.repeat(groups, steps), "period": np.tile(fut, n),
          "model": np.repeat([labels[g] for g in groups], steps), "yhat": mean.ravel()}
    for lv in levels:
        fc[f"lo{lv}"], fc[f"hi{lv}"] = bounds[lv][0].ravel(), bounds[lv][1].ravel()
    forecast_frame = pd.DataFrame(fc)

    parts = []
    for k in names_all:
        rows = rows_of[k]
        for oi, o in enumerate(origins):
            parts.append(pd.DataFrame({
                "group": np.repeat([groups[i] for i in rows], h),
                "period": np.tile(periods[o:o + h], len(rows)),
                "actual": actual[oi][rows].ravel(), "yhat": bt[k][oi][rows].ravel(), "model": k}))
    hold_rows = []
    if holdout:
        act_h, pred_h = Y[:, n_train:], mean[:, :holdout]
        parts.append(pd.DataFrame({"group": np.repeat(groups, holdout),
                                   "period": np.tile(periods[n_train:], n),
                                   "actual": act_h.ravel(), "yhat": pred_h.ravel(),
                                   "model": "holdout"}))
        hm = np.mean(np.abs(act_h - pred_h), axis=1) / final_scale
        hs = M.smape(act_h, pred_h)
        hold_rows = [{"group": g, "mase": float(hm[i]), "smape": float(hs[i]), "model": labels[g],
                      **{f"coverage_{lv}": M.coverage(act_h[i], bounds[lv][0][i, :holdout],
                                                      bounds[lv][1][i, :holdout]) for lv in levels}}
                     for i, g in enumerate(groups)]
    backtest_frame = pd.concat(parts, ignore_index=True)
    backtest_frame = backtest_frame[backtest_frame["yhat"].notna()].reset_index(drop=True)
    holdout_scores = pd.DataFrame(hold_rows, columns=["group", "mase", "smape", "model"]
                                  + [f"coverage_{lv}" for lv in levels])

    coverage = {}
    for g_i, g in enumerate(groups):
        k = chosen[g]
        coverage[g] = {lv: float(cov[k][lv][g_i]) for lv in levels}

    # -- the horizon's total with a range ----------------------------------
    # summing per-period bounds overstates the range of a sum and adding
    # variances understates it (errors are correlated across steps), so the
    # range comes from the backtest itself: the absolute error of each
    # window's sum, over the row's mean error x h, pooled over the like
    # series of the chosen model, at the conformal rank
    totals = {}
    future = slice(holdout, holdout + horizon)
    for i, g in enumerate(groups):
        k = chosen[g]
        rows = next(pool for pool in pools(rows_of[k]) if i in pool)
        sc = q[k][1]
        d = np.abs(np.sum(actual - bt[k], axis=2))[:, rows] / (sc[rows] * h)[None, :]
        d = np.sort(d[np.isfinite(d)])
        yh = float(mean[i, future].sum())
        rec = {"yhat": yh}
        for lv in levels:
            if len(d):
                rank = min(len(d), int(np.ceil((len(d) + 1) * lv / 100)))
                half = d[rank - 1] * sc[i] * horizon
            else:
                half = np.nan
            lo = yh - half
            rec[f"lo{lv}"], rec[f"hi{lv}"] = (max(lo, 0.0) if nonnegative else lo), yh + half
        totals[g] = rec

    effects = pd.DataFrame(columns=["regressor", "effect", "p_value", "event_period_effect"])
    if (fitted_models.get("sarimax", ([], None))[0] and fitted_models["sarimax"][1][0] == 0
            and n_train - start[0] >= min_life):
        # the total's fit: row 0 leads the first cohort (see _run)
        model = fitted_models["sarimax"][0][0]
        coefs = model.fit_coefficients()
        if coefs and coefs[0]:
            pv = model.pvalues_.get(0, {})
            eff = [k for k in coefs[0] if not k.startswith(("fourier_", "trend"))]
            peak = dict(zip(model.x_names_, model.X_.max(axis=0)))
            effects = pd.DataFrame({"regressor": eff, "effect": [coefs[0][k] for k in eff],
                                    "p_value": [pv.get(k, np.nan) for k in eff]})
            # the effect in the period the event covers most (holidays only)
            effects["event_period_effect"] = [coefs[0][k] * peak[k] if k in peak else np.nan
                                              for k in eff]
        for name in ("sarimax", "ets", "theta"):
            failed = sum(len(mdl.fallback_rows_) for mdl in fitted_models.get(name, ([], None))[0])
            if failed:
                notes.append(f"{name}: {failed} series could "
                             "not be fitted and used the seasonal naive forecast")

    return ForecastResult(
        value=value, freq=freq, horizon=horizon, holdout=holdout, levels=tuple(levels),
        groups=groups, periods=periods, Y=Y, train_len=n_train, origins=origins, scores=scores,
        chosen=chosen, ensembles=ensembles, interval_source=interval_source, coverage=coverage,
        forecast_frame=forecast_frame, backtest_frame=backtest_frame,
        holdout_scores=holdout_scores, reconcile=reconcile if n > 1 else "none",
        reconciled_mase=reconciled_mase, effects=effects, totals=totals,
        group_customers={str(k): int(v) for k, v in sizes.items()}, notes=notes)
