"""Tests of crmlab.forecasting: series, metrics, models, backtest, elasticity, narrative."""

from __future__ import annotations

import ibis
import numpy as np
import pandas as pd
import pytest

from crmlab import forecasting as fc
from crmlab.exceptions import NoDataError, ParameterError
from crmlab.forecasting import models as fm
from crmlab.forecasting.series import calendar_features


# -- fixtures -------------------------------------------------------------

@pytest.fixture(scope="module")
def con():
    return ibis.duckdb.connect()


@pytest.fixture(scope="module")
def shop(con):
    """Five orders over three weeks: 2024-01-01 is a Monday."""
    orders = pd.DataFrame({
        "order_id": [1, 2, 3, 4, 5],
        "customer_id": [1, 1, 2, 3, 2],
        "order_date": pd.to_datetime(["2024-01-01 10:00", "2024-01-02 09:00", "2024-01-16 12:00",
                                      "2024-01-20 08:00", "2024-01-21 23:00"]),
        "amount": [10.0, 20.0, 30.0, 40.0, 50.0],
        "discount": [0.0, 5.0, 0.0, 10.0, 0.0],
        "status": ["paid", "paid", "paid", "refunded", "paid"],
        "channel": ["web", "app", "web", "web", "app"],
    })
    lines = pd.DataFrame({"order_id": [1, 1, 2, 3, 5], "product_id": [1, 2, 1, 2, 2],
                          "category": ["a", "b", "a", "b", "b"], "quantity": [1, 3, 2, 1, 1],
                          "unit_price": [4.0, 2.0, 5.0, 30.0, 50.0]})
    customers = pd.DataFrame({"customer_id": [1, 2, 3], "region": ["East", "West", None]})
    return {"orders": con.create_table("f_orders", orders, overwrite=True),
            "order_lines": con.create_table("f_lines", lines, overwrite=True),
            "customers": con.create_table("f_customers", customers, overwrite=True)}


def weekly_panel(n_groups=4, T=170, seed=0, noise=0.05, sizes=None):
    """Seasonal, trending weekly series as the long frame build_series returns."""
    rng = np.random.default_rng(seed)
    t = np.arange(T)
    periods = pd.date_range("2021-01-04", periods=T, freq="W-MON")
    frames = []
    for g in range(n_groups):
        level = rng.uniform(500, 3000)
        y = level * (1 + 0.003 * t) * (1 + 0.25 * np.sin(2 * np.pi * t / 52.18 + g)) \
            + rng.normal(0, noise * level, T)
        frames.append(pd.DataFrame({
            "group": f"g{g}", "period": periods, "revenue": np.clip(y, 0, None),
            "discount_share": rng.uniform(0, 0.1, T),
            "group_customers": (sizes or {}).get(g, 100)}))
    return pd.concat(frames, ignore_index=True)


class Spy(fm.PanelForecaster):
    """Records the data each fit sees; forecasts the last value."""

    name = "spy"
    seen: list = []

    def fit(self, Y, periods=None, *, freq="W", exog=None):
        Y = self._setup(Y, periods, freq)
        Spy.seen.append((Y.copy(), pd.DatetimeIndex(self.periods_)))
        self.last_ = Y[:, -1:]
        return self

    def forecast(self, horizon, *, exog_future=None, levels=fm.LEVELS):
        return {"mean": np.repeat(self.last_, horizon, axis=1)}


@pytest.fixture
def spy(monkeypatch):
    Spy.seen = []
    monkeypatch.setitem(fm.MODELS, "spy", Spy)
    return Spy


# -- series ----------------------------------------------------------------

def test_series_fills_missing_weeks_and_filters_status(shop):
    s = fc.build_series(shop["orders"], freq="W")
    # week of Jan 8 has no orders -> zero; the refunded order is left out
    assert s["period"].dt.strftime("%m-%d").tolist() == ["01-01", "01-08", "01-15"]
    assert s["revenue"].tolist() == [30.0, 0.0, 80.0]
    assert s["orders"].tolist() == [2, 0, 2]
    # discount share = discount / (amount + discount)
    assert s["discount_share"].iloc[0] == pytest.approx(5 / 35)


def test_series_drops_partial_periods(shop):
    # as_of on a Wednesday: the last week is incomplete and is dropped
    s = fc.build_series(shop["orders"], freq="W", as_of="2024-01-17")
    assert s["period"].max() == pd.Timestamp("2024-01-08")
    s_all = fc.build_series(shop["orders"], freq="W", as_of="2024-01-17", complete_periods=False)
    assert s_all["period"].max() == pd.Timestamp("2024-01-15")
    assert s_all["revenue"].iloc[-1] == 30.0


def _stamped(con, name, dates):
    orders = pd.DataFrame({"order_id": range(1, len(dates) + 1), "customer_id": 1,
                           "order_date": pd.to_datetime(dates), "amount": 10.0})
    return con.create_table(name, orders, overwrite=True)


def test_period_stamped_exports_keep_their_last_period(con):
    """Monthly totals stamped with the month's first day: the newest stamp's
    month is a whole month of sales, not a month seen for one day."""
    monthly = _stamped(con, "stamp_m", pd.date_range("2023-01-01", "2023-06-01", freq="MS").repeat(2))
    assert fc.build_series(monthly, freq="M")["period"].max() == pd.Timestamp("2023-06-01")
    # an as_of inside the last stamp's month keeps it; a later one adds unseen months, not kept
    assert fc.build_series(monthly, freq="M", as_of="2023-06-15")["period"].max() == pd.Timestamp("2023-06-01")
    assert fc.build_series(monthly, freq="M", as_of="2023-07-15")["period"].max() == pd.Timestamp("2023-06-01")
    # weekly totals stamped on Mondays; the same monthly stamps read by week are not stamped
    weekly = _stamped(con, "stamp_w", pd.date_range("2024-01-01", "2024-03-25", freq="W-MON"))
    assert fc.build_series(weekly, freq="W")["period"].max() == pd.Timestamp("2024-03-25")
    assert fc.build_series(monthly, freq="W")["period"].max() == pd.Timestamp("2023-05-22")


def test_daily_transactions_still_drop_an_incomplete_last_period(con):
    """Orders on many days whose newest happens to fall on the 1st (or a
    Monday, or at midnight of the 1st with the others at other hours): the
    last month (week) was seen for one day and is dropped as before."""
    days = list(pd.date_range("2023-01-03", "2023-05-28", freq="5D")) + [pd.Timestamp("2023-06-01")]
    daily = _stamped(con, "daily_m", days)
    assert fc.build_series(daily, freq="M")["period"].max() == pd.Timestamp("2023-05-01")
    assert fc.build_series(daily, freq="W")["period"].max() < pd.Timestamp("2023-05-29")
    hours = pd.date_range("2023-01-01", "2023-06-01", freq="MS") + pd.Timedelta(hours=9)
    timed = _stamped(con, "timed_m", list(hours[:-1]) + [pd.Timestamp("2023-06-01")])
    assert fc.build_series(timed, freq="M")["period"].max() == pd.Timestamp("2023-05-01")


def test_series_groups_by_order_customer_segment_and_line_columns(shop):
    by_channel = fc.build_series(shop["orders"], freq="W", group_by="channel")
    assert by_channel.groupby("group")["revenue"].sum().to_dict() == {"app": 70.0, "web": 40.0}

    by_region = fc.build_series(shop["orders"], customers=shop["customers"], freq="W",
                                group_by="region")
    assert by_region.groupby("group")["revenue"].sum().to_dict() == {"East": 30.0, "West": 80.0}
    assert by_region.drop_duplicates("group").set_index("group")["group_customers"].to_dict() \
        == {"East": 1, "West": 1}

    seg = pd.DataFrame({"customer_id": [1, 2], "segment": ["vip", "new"]})
    by_seg = fc.build_series(shop["orders"], segments=seg, freq="W", group_by="segment")
    assert by_seg.groupby("group")["revenue"].sum().to_dict() == {"new": 80.0, "vip": 30.0}

    by_cat = fc.build_series(shop["orders"], order_lines=shop["order_lines"], freq="W",
                             group_by="category")
    # order 1 (10.0) splits 4:6 between a and b; order 2 -> a; orders 3, 5 -> b
    assert by_cat.groupby("group")["revenue"].sum().to_dict() == pytest.approx(
        {"a": 4.0 + 20.0, "b": 6.0 + 30.0 + 50.0})
    # the groups add up to the total of orders that have lines
    assert by_cat["revenue"].sum() == pytest.approx(110.0)


def test_series_merges_labels_that_differ_in_case_or_spaces(con):
    orders = pd.DataFrame({"order_id": range(1, 6), "customer_id": [1, 2, 3, 4, 5],
                           "order_date": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03",
                                                         "2024-01-04", "2024-01-05"]),
                           "amount": [10.0, 20.0, 1.0, 2.0, 4.0],
                           "channel": ["Web", "Web", " web", "WEB ", "  "]})
    t = con.create_table("case_orders", orders, overwrite=True)
    s = fc.build_series(t, freq="W", group_by="channel", complete_periods=False)
    sizes = s.drop_duplicates("group").set_index("group")["group_customers"].to_dict()
    assert s.groupby("group")["revenue"].sum().to_dict() == {"Web": 33.0, "(not recorded)": 4.0}
    assert sizes == {"Web": 4, "(not recorded)": 1}


def test_series_errors_name_the_problem(shop):
    with pytest.raises(ParameterError, match="nope"):
        fc.build_series(shop["orders"], group_by="nope")
    with pytest.raises(NoDataError):
        fc.build_series(shop["orders"], as_of="2023-01-01")
    with pytest.raises(ParameterError):
        fc.build_series(shop["orders"], freq="Q")


def test_calendar_features_share_of_days():
    f = calendar_features(pd.date_range("2024-11-04", periods=2, freq="W-MON"), "W", "cn")
    # Singles' Day window is Nov 10-11: one day in each week
    assert f["hol_singles_day"].tolist() == pytest.approx([1 / 7, 1 / 7])
    d = calendar_features(pd.date_range("2024-12-24", periods=3, freq="D"), "D", "western")
    assert d["hol_christmas"].tolist() == [1.0, 1.0, 1.0]


# -- metrics ---------------------------------------------------------------

def test_mase_hand_computed():
    # seasonal differences of the training data (m=2): |2-1|, |4-3|, |3-2|, |5-4| -> scale 1
    train = [1, 3, 2, 4, 3, 5]
    assert fc.mase([6, 4], [5, 6], train, 2) == pytest.approx((1 + 2) / 2)
    # m=1: naive differences 2,1,2,1,2 -> scale 8/5; errors 1,2 -> MASE 1.5 / 1.6
    assert fc.mase([6, 4], [5, 6], train, 1) == pytest.approx(1.5 / 1.6)
    # panel: one MASE per row
    out = fc.mase(np.array([[6, 4], [6, 4]]), np.array([[5, 6], [6, 4]]), np.array([train, train]), 2)
    assert out.tolist() == pytest.approx([1.5, 0.0])


def test_mase_scale_never_zero():
    assert fc.insample_scale([5, 5, 5, 5], 2) == pytest.approx(5.0)   # falls back to the level
    assert fc.insample_scale([0, 0, 0], 1) == 1.0


def test_smape_hand_computed():
    # 200/2 * (|100-50| / 150 + 0) = 33.33...; 0/0 counts as a perfect forecast
    assert fc.smape([100, 0], [50, 0]) == pytest.approx(100 / 3)
    assert fc.smape([10], [0]) == pytest.approx(200.0)


def test_conformal_quantile_rank():
    r = np.arange(1, 10, dtype=float)[:, None]           # 9 errors at one step
    # ceil((9 + 1) * 0.8) = 8th smallest
    assert fc.conformal_quantiles(r, 0.8, smooth=0).tolist() == [8.0]


# -- models ----------------------------------------------------------------

def test_naive_and_seasonal_naive_are_exact():
    y = np.array([[1.0, 5.0, 2.0, 6.0, 3.0, 7.0, 4.0]])
    assert fc.NaiveForecaster().fit(y).predict(3).tolist() == [[4.0, 4.0, 4.0]]
    sn = fc.SeasonalNaiveForecaster(season_length=3).fit(y).predict(5)
    assert sn.tolist() == [[3.0, 7.0, 4.0, 3.0, 7.0]]
    # shorter than a season: the naive forecast
    assert fc.SeasonalNaiveForecaster(season_length=12).fit(y).predict(2).tolist() == [[4.0, 4.0]]
    assert fc.MovingAverageForecaster(window=2).fit(y).predict(1).tolist() == [[5.5]]


def _seasonal_monthly(T=96, seed=0, amp=30.0, noise=3.0):
    rng = np.random.default_rng(seed)
    t = np.arange(T)
    return 200 + 0.5 * t + amp * np.sin(2 * np.pi * t / 12) + rng.normal(0, noise, T)


def test_ets_chooses_season_only_when_there_is_one():
    rng = np.random.default_rng(3)
    Y = np.stack([_seasonal_monthly(seed=1), 200 + rng.normal(0, 10, 96)])
    ets = fc.ETSForecaster().fit(Y, freq="M")
    assert ets.forms_[0].endswith(",A")     # seasonal
    assert ets.forms_[1] == "A,N,N"         # white noise: no trend, no season
    out = ets.forecast(6)
    assert np.all(out[80][0] < out["mean"]) and np.all(out["mean"] < out[80][1])
    assert np.all(out[95][1] - out[95][0] > out[80][1] - out[80][0])


@pytest.mark.parametrize("init", ["heuristic", "simple"])
def test_fast_holt_winters_matches_statsmodels(init):
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    Y = np.stack([_seasonal_monthly(seed=s) for s in range(3)])
    a, b, g, phi = 0.35, 0.02, 0.15, 0.98
    grid = {"alpha": (a,), "beta": (b,), "gamma": (g,), "phi": (phi,)}
    ours = fc.HoltWintersForecaster(grid=grid, initialization_method=init).fit(Y, freq="M")
    mine = ours.predict(24)
    for i, y in enumerate(Y):
        start = {"initialization_method": init}
        if init == "simple":   # statsmodels 0.15 keeps the simple rule as a helper only
            from statsmodels.tsa.exponential_smoothing.initialization import _initialization_simple
            lv, tr, se = _initialization_simple(y, trend="add", seasonal="add", seasonal_periods=12)
            start = {"initialization_method": "known", "initial_level": lv, "initial_trend": tr,
                     "initial_seasonal": se}
        ref = ExponentialSmoothing(y, trend="add", damped_trend=True, seasonal="add",
                                   seasonal_periods=12, **start).fit(
            smoothing_level=a, smoothing_trend=b, smoothing_seasonal=g, damping_trend=phi,
            optimized=False)
        assert ours.sse_[i] == pytest.approx(ref.sse, rel=1e-8)
        # statsmodels' forecast at steps m, 2m, ... reuses the seasonal state from
        # before the last observation; ours uses the updated one, as the textbook
        # formula s_{T+h-m(k+1)} does. Every other step agrees exactly.
        other = np.arange(24) % 12 != 11
        np.testing.assert_allclose(mine[i, other], np.asarray(ref.forecast(24))[other], rtol=1e-8)
        damp = np.cumsum(phi ** np.arange(1, 13))[-1]
        expect = ref.level[-1] + damp * ref.trend[-1] + ref.season[-1]
        assert mine[i, 11] == pytest.approx(expect, rel=1e-8)


def test_fast_holt_winters_grid_close_to_statsmodels_optimum():
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    y = _seasonal_monthly(T=120, seed=7)
    train, test = y[:108], y[108:]
    ours = fc.HoltWintersForecaster().fit(train[None], freq="M")
    ref = ExponentialSmoothing(train, trend="add", damped_trend=True, seasonal="add",
                               seasonal_periods=12, initialization_method="heuristic").fit()
    # the coarse grid's in-sample fit is within 10% of the optimiser's
    assert ours.sse_[0] <= 1.10 * ref.sse
    m_ours = fc.mase(test, ours.predict(12)[0], train, 12)
    m_ref = fc.mase(test, ref.forecast(12), train, 12)
    assert m_ours <= m_ref + 0.15


def test_sarimax_recovers_planted_holiday_effect():
    rng = np.random.default_rng(11)
    T = 208
    periods = pd.date_range("2021-01-04", periods=T, freq="W-MON")
    hol = calendar_features(periods, "W", "cn")
    t = np.arange(T)
    y = (1000 + 2 * t + 80 * np.sin(2 * np.pi * t / 52.18) + 600 * hol["hol_singles_day"].to_numpy()
         + rng.normal(0, 15, T))
    model = fc.SarimaxForecaster(calendar="cn", orders=((1, 0, 0),)).fit(y[None], periods, freq="W")
    coef = model.fit_coefficients()[0]
    assert coef["hol_singles_day"] == pytest.approx(600, rel=0.15)
    assert model.pvalues_[0]["hol_singles_day"] < 0.01
    # a holiday that was not planted is not found
    assert abs(coef["hol_double_12"]) < 150


def test_gradient_boosting_is_seeded_and_learns_the_season():
    panel = fc.to_panel(weekly_panel(n_groups=6, T=160, seed=2))
    Y, periods = panel["Y"], panel["periods"]
    a = fc.GradientBoostingForecaster(random_state=1, max_iter=60).fit(Y[:, :148], periods[:148], freq="W")
    b = fc.GradientBoostingForecaster(random_state=1, max_iter=60).fit(Y[:, :148], periods[:148], freq="W")
    pa = a.predict(12)
    np.testing.assert_array_equal(pa, b.predict(12))
    gb = fc.mase(Y[:, 148:], pa, Y[:, :148], 52).mean()
    naive = fc.mase(Y[:, 148:], np.repeat(Y[:, 147:148], 12, 1), Y[:, :148], 52).mean()
    assert gb < naive


# -- backtest, selection, holdout, reconciliation -----------------------------

FAST = ("naive", "seasonal_naive", "moving_average", "holt_winters")


def test_rolling_origins():
    assert fc.rolling_origins(100, 12, 4, 12, 40) == [52, 64, 76, 88]
    assert fc.rolling_origins(100, 12, 4, 12, 60) == [64, 76, 88]


def test_backtest_never_uses_data_after_its_origin(spy):
    s = weekly_panel(n_groups=2, T=160)
    fc.forecast(s, freq="W", horizon=8, n_origins=3, fast_models=("spy",), detailed_models=())
    res_origins = fc.rolling_origins(160, 8, 3, 8, 2 * 52 + 2)
    seen_lengths = [Y.shape[1] for Y, _ in spy.seen]
    assert seen_lengths == res_origins + [160]       # three origins, then the final fit
    for Y, per in spy.seen:
        assert per[-1] == pd.Timestamp("2021-01-04") + pd.Timedelta(weeks=Y.shape[1] - 1)


def test_backtest_forecasts_do_not_change_when_the_future_does():
    """Replace everything after the first origin's window with junk: the first
    origin's backtest forecasts of every model (including the global boosting
    model) must not move. (The ensemble and the bottom-up sum are combinations
    chosen on all origins' scores, so they are switched off here.)"""
    s = weekly_panel(n_groups=3, T=150, seed=4)
    h, origins = 6, fc.rolling_origins(150, 6, 3, 6, 106)
    cut = s["period"].sort_values().unique()[origins[0]]
    junk = s.copy()
    late = junk["period"] >= cut
    junk.loc[late, "revenue"] = 1e6 * np.random.default_rng(0).random(late.sum())
    kw = dict(freq="W", horizon=h, n_origins=3, fast_models=FAST + ("gradient_boosting",),
              detailed_models=(), ensemble_size=0, reconcile="none")
    a, b = fc.forecast(s, **kw), fc.forecast(junk, **kw)
    first = lambda r: r.backtest_frame[r.backtest_frame["period"].between(  # noqa: E731
        cut, cut + pd.Timedelta(weeks=h - 1))].sort_values(["model", "group", "period"])
    np.testing.assert_allclose(first(a)["yhat"].to_numpy(), first(b)["yhat"].to_numpy())


def test_holdout_never_reaches_the_fitting(spy):
    s = weekly_panel(n_groups=2, T=160)
    last8 = s["period"] >= s["period"].sort_values().unique()[152]
    s.loc[last8, "revenue"] = 7.777e7      # a marker no model may see
    res = fc.forecast(s, freq="W", horizon=8, holdout=8, n_origins=3,
                      fast_models=("spy", "seasonal_naive"), detailed_models=())
    assert spy.seen and all(Y.shape[1] <= 152 for Y, _ in spy.seen)
    assert all(not np.isclose(Y, 7.777e7).any() for Y, _ in spy.seen)
    hold = res.backtest_frame[res.backtest_frame["model"] == "holdout"]
    assert len(hold) == 8 * 3 and (hold["actual"] > 7e7).all()      # total + 2 groups
    assert set(res.holdout_scores["group"]) == {"total", "g0", "g1"}
    # the forecast starts after the training data and runs holdout + horizon periods
    f = res.forecast_frame[res.forecast_frame["group"] == "total"]
    assert len(f) == 16 and f["period"].min() == s["period"].sort_values().unique()[152]


def test_bottom_up_and_top_down_add_up():
    s = weekly_panel(n_groups=5, T=150)
    kw = dict(freq="W", horizon=6, n_origins=2, fast_models=FAST, detailed_models=())
    for how in ("bottom_up", "top_down"):
        res = fc.forecast(s, reconcile=how, **kw)
        f = res.forecast_frame.pivot(index="period", columns="group", values="yhat")
        groups = [g for g in f.columns if g != "total"]
        np.testing.assert_allclose(f[groups].sum(axis=1), f["total"], rtol=1e-12)
    assert (res.forecast_frame[["lo80", "lo95"]].to_numpy() <= res.forecast_frame[["yhat"]].to_numpy()).all()


def test_selection_scores_exports_and_metrics():
    s = weekly_panel(n_groups=3, T=170, seed=5)
    res = fc.forecast(s, freq="W", horizon=8, holdout=4, n_origins=3,
                      fast_models=FAST, detailed_models=())
    table = res.score_table()
    assert set(table["model"]) >= set(FAST)
    assert table["mase"].is_monotonic_increasing
    chosen = table[table["chosen"]]
    assert len(chosen) == 1 and chosen["mase"].iloc[0] == table["mase"].min()
    # on clean seasonal data Holt-Winters beats every naive rule
    assert table.iloc[0]["model"] in ("holt_winters", "ensemble")
    ex = fc.exports(res)
    assert list(ex["forecast"].columns) == ["group", "period", "model", "yhat", "lo80", "hi80",
                                            "lo95", "hi95"]
    assert list(ex["backtest"].columns) == ["group", "period", "actual", "yhat", "model"]
    assert set(ex["forecast"]["group"]) == {"total", "g0", "g1", "g2"}
    m = fc.forecast_metrics(res)
    for key in ("model", "backtest_mase", "backtest_smape", "seasonal_naive_mase",
                "holdout_mase", "holdout_smape", "coverage_80", "coverage_95"):
        assert key in m
    assert set(m["model_by_group"]) == {"g0", "g1", "g2"}
    assert m["backtest_mase"] < m["seasonal_naive_mase"]
    hist = res.history("g1")
    assert set(hist["part"]) == {"train", "holdout", "forecast"}
    # the horizon's total: the future part only (after the holdout), inside its range
    tot = res.totals["total"]
    future = res.forecast_frame[(res.forecast_frame["group"] == "total")
                                & (res.forecast_frame["period"] > s["period"].max())]
    assert tot["yhat"] == pytest.approx(future["yhat"].sum())
    assert tot["lo95"] <= tot["lo80"] <= tot["yhat"] <= tot["hi80"] <= tot["hi95"]
    assert m["forecast_total"] == pytest.approx(tot["yhat"])


def test_ensemble_kept_only_when_it_wins():
    s = weekly_panel(n_groups=3, T=170, seed=6, noise=0.15)
    res = fc.forecast(s, freq="W", horizon=8, n_origins=3, fast_models=FAST, detailed_models=())
    for g, model in res.chosen.items():
        row = res.scores[res.scores["group"] == g].set_index("model")["mase"]
        if model == "ensemble":
            assert row["ensemble"] < row.drop("ensemble").min()
        else:
            assert row[model] == row.drop("ensemble", errors="ignore").min()


def test_conformal_interval_coverage_near_nominal_on_gaussian_ar():
    """60 Gaussian AR(1) series: the leave-one-origin-out coverage of the
    conformal intervals is near the nominal level."""
    rng = np.random.default_rng(8)
    n, T = 60, 120
    e = rng.normal(0, 10, (n, T))
    y = np.zeros((n, T))
    for t in range(1, T):
        y[:, t] = 0.6 * y[:, t - 1] + e[:, t]
    periods = pd.date_range("2010-01-01", periods=T, freq="MS")
    s = pd.DataFrame({"group": np.repeat([f"s{i:02d}" for i in range(n)], T),
                      "period": np.tile(periods, n), "revenue": (500 + y).ravel()})
    res = fc.forecast(s, freq="M", horizon=6, n_origins=6, fast_models=("moving_average",),
                      detailed_models=(), ensemble_size=0, reconcile="none")
    sc = res.scores[(res.scores["group"] != "total")]
    assert sc["coverage_80"].mean() == pytest.approx(0.80, abs=0.05)
    assert sc["coverage_95"].mean() == pytest.approx(0.95, abs=0.035)


@pytest.mark.slow
def test_model_interval_coverage_near_nominal_on_gaussian_ar():
    """The regression-with-AR-errors model's own intervals on AR(1) data."""
    rng = np.random.default_rng(9)
    n, T, h = 24, 100, 4
    hits80, hits95 = [], []
    periods = pd.date_range("2010-01-01", periods=T, freq="MS")
    Y = np.zeros((n, T))
    for t in range(1, T):
        Y[:, t] = 0.5 * Y[:, t - 1] + rng.normal(0, 5, n)
    Y += 100
    model = fc.SarimaxForecaster(calendar="none", orders=((1, 0, 0),), exog_names=())
    model.fit(Y[:, :T - h], periods[:T - h], freq="M")
    out = model.forecast(h)
    hits80 = (Y[:, T - h:] >= out[80][0]) & (Y[:, T - h:] <= out[80][1])
    hits95 = (Y[:, T - h:] >= out[95][0]) & (Y[:, T - h:] <= out[95][1])
    assert hits80.mean() == pytest.approx(0.80, abs=0.12)
    assert hits95.mean() == pytest.approx(0.95, abs=0.07)


@pytest.mark.slow
def test_full_model_set_beats_seasonal_naive_with_calibrated_intervals():
    """Every model on one seasonal series with planted holidays and promotions."""
    rng = np.random.default_rng(12)
    T = 190
    periods = pd.date_range("2022-01-03", periods=T, freq="W-MON")
    hol = calendar_features(periods, "W", "cn")
    t = np.arange(T)
    promo = rng.uniform(0, 0.2, T)
    y = ((5000 + 15 * t) * (1 + 0.2 * np.sin(2 * np.pi * t / 52.18))
         + 3000 * hol["hol_singles_day"].to_numpy() + 4000 * promo + rng.normal(0, 150, T))
    s = pd.DataFrame({"group": "total", "period": periods, "revenue": y, "discount_share": promo,
                      "group_customers": 1000})
    res = fc.forecast(s, freq="W", horizon=12, holdout=6, n_origins=4)
    m = fc.forecast_metrics(res)
    assert set(res.score_table()["model"]) >= set(fc.FAST_MODELS) | set(fc.DETAILED_MODELS)
    assert m["backtest_mase"] <= 0.8 * m["seasonal_naive_mase"]
    assert m["holdout_mase"] < 1.0
    assert 0.6 <= m["coverage_80"] <= 1.0
    eff = res.effects.set_index("regressor")
    assert eff.loc["hol_singles_day", "effect"] == pytest.approx(3000, rel=0.35)
    sentences = fc.findings(res)
    assert 3 <= len(sentences) <= 5


def test_too_short_series_is_a_clear_error():
    s = weekly_panel(n_groups=1, T=14)
    with pytest.raises(NoDataError, match="too few"):
        fc.forecast(s, freq="W", horizon=12, fast_models=FAST, detailed_models=())
    with pytest.raises(ParameterError):
        fc.forecast(s, fast_models=("crystal_ball",), detailed_models=())


# -- elasticity and scenarios -------------------------------------------------

@pytest.fixture(scope="module")
def price_world(con):
    """40 products x 104 weeks: list prices drift, order discounts vary, and
    demand has a planted elasticity of -1.5 and a yearly season."""
    rng = np.random.default_rng(21)
    n_prod, T = 40, 104
    weeks = pd.date_range("2023-01-02", periods=T, freq="W-MON")
    base_price = rng.uniform(10, 200, n_prod)
    appeal = rng.uniform(3.5, 5.0, n_prod)
    rows = []
    for i in range(n_prod):
        lp = np.log(base_price[i]) + np.cumsum(rng.normal(0, 0.04, T))
        d = rng.choice([0.0, 0.1, 0.2], T)
        price = np.exp(lp) * (1 - d)
        mu = appeal[i] - 1.5 * (np.log(price) - np.log(base_price[i])) \
            + 0.3 * np.sin(2 * np.pi * np.arange(T) / 52) + rng.normal(0, 0.15, T)
        q = np.maximum(1, np.round(np.exp(mu)))
        rows.append(pd.DataFrame({"product_id": i, "week": weeks, "q": q, "list": np.exp(lp), "d": d}))
    d = pd.concat(rows, ignore_index=True)
    d["order_id"] = np.arange(len(d))
    orders = pd.DataFrame({"order_id": d["order_id"], "customer_id": d["order_id"] % 97,
                           "order_date": d["week"] + pd.Timedelta(days=2),
                           "amount": d["q"] * d["list"] * (1 - d["d"]),
                           "discount": d["q"] * d["list"] * d["d"]})
    lines = pd.DataFrame({"order_id": d["order_id"], "product_id": d["product_id"],
                          "quantity": d["q"].astype(int), "unit_price": d["list"]})
    return (con.create_table("e_orders", orders, overwrite=True),
            con.create_table("e_lines", lines, overwrite=True))


def test_price_panel_uses_the_paid_price(price_world):
    orders, lines = price_world
    panel = fc.price_panel(lines, orders, freq="W")
    assert len(panel) == 40 * 104
    # paid price = list x (1 - discount rate), so discount_share is the rate
    np.testing.assert_allclose(np.sort(panel["discount_share"].round(9).unique()), [0.0, 0.1, 0.2],
                               atol=1e-9)
    assert (panel["price"] > 0).all() and (panel["quantity"] >= 1).all()


def test_elasticity_recovers_planted_value(price_world):
    orders, lines = price_world
    el = fc.price_elasticity(fc.price_panel(lines, orders, freq="W"), freq="W", calendar="none")
    assert el.ci_low < -1.5 < el.ci_high
    assert el.ci_high - el.ci_low < 0.6
    assert el.n_units == 40 and el.cov_type == "cluster(product)"


def test_price_scenario_arithmetic():
    f = pd.DataFrame({"group": "total", "period": pd.date_range("2025-01-06", periods=2, freq="W-MON"),
                      "yhat": [100.0, 100.0], "lo80": [90.0, 90.0], "hi80": [110.0, 110.0]})
    el = fc.Elasticity(estimate=-1.5, std_error=0.1, ci_low=-1.7, ci_high=-1.3, level=0.95,
                       n_obs=100, n_units=10, cov_type="HC1", controls=())
    sc = fc.price_scenario(f, el, -0.10)
    # revenue scales by 0.9 ** (1 - 1.5) = 1.0541
    assert sc["impact"] == pytest.approx(200 * (0.9 ** -0.5 - 1))
    assert sc["impact_low"] <= sc["impact"] <= sc["impact_high"]
    assert sc["quantity_change_pct"] == pytest.approx(100 * (0.9 ** -1.5 - 1))
    with pytest.raises(ParameterError):
        fc.price_scenario(f, el, -1.0)


def test_scenario_text_refuses_a_positive_elasticity():
    s = weekly_panel(n_groups=1, T=150)
    res = fc.forecast(s, freq="W", horizon=6, n_origins=2, fast_models=FAST, detailed_models=())
    el = fc.Elasticity(estimate=0.5, std_error=0.05, ci_low=0.4, ci_high=0.6, level=0.95,
                       n_obs=100, n_units=10, cov_type="HC1", controls=())
    sc = fc.price_scenario(res, el, -0.10)
    assert "rising with price" in fc.explain(res, "scenario", elasticity=el, scenario=sc)
    assert not any("price" in x for x in fc.findings(res, elasticity=el, scenario=sc))


# -- narrative -------------------------------------------------------------

def test_findings_name_numbers_and_hide_small_groups():
    s = weekly_panel(n_groups=4, T=170, seed=9, sizes={3: 4})
    # the tiny group grows fastest; it must not be named
    late = (s["group"] == "g3") & (s["period"] >= s["period"].sort_values().unique()[120])
    s.loc[late, "revenue"] *= 3
    res = fc.forecast(s, freq="W", horizon=8, holdout=4, n_origins=3, fast_models=FAST,
                      detailed_models=())
    out = fc.findings(res)
    assert 3 <= len(out) <= 5
    assert all(any(ch.isdigit() for ch in sentence) for sentence in out)
    assert not any("g3" in sentence for sentence in out)
    assert "g3" not in set(fc.group_table(res)["group"])
    for section in ("models", "forecast", "groups", "holdout", "scenario"):
        assert len(fc.explain(res, section)) > 40


# -- Poisson elasticity ----------------------------------------------------

def _count_panel(seed=0, n=12, T=30, base=20.0, elasticity=-1.5, drop_zero=True):
    """Products x months with Poisson units: product appeal, a season, a
    promotion share and a planted constant elasticity."""
    rng = np.random.default_rng(seed)
    periods = pd.date_range("2022-01-01", periods=T, freq="MS")
    lp = rng.normal(0, 0.2, (n, T))
    disc = rng.uniform(0, 0.2, (n, T))
    mu = np.exp(np.log(base * rng.uniform(0.5, 2, n))[:, None] + 0.3 * np.sin(np.arange(T) / 2)[None]
                + elasticity * lp + 0.8 * disc)
    d = pd.DataFrame({"unit": np.repeat([f"p{i}" for i in range(n)], T), "period": np.tile(periods, n),
                      "quantity": rng.poisson(mu).ravel().astype(float), "price": np.exp(lp).ravel() * 10,
                      "discount_share": disc.ravel()})
    return d[d["quantity"] > 0].reset_index(drop=True) if drop_zero else d


def test_ppml_equals_a_poisson_glm_with_product_and_month_dummies():
    """The fixed effects partialled out by alternating projections give the
    Poisson MLE with one dummy per product and month (Correia, Guimaraes &
    Zylkin 2020), point estimate and robust standard error alike."""
    import statsmodels.api as sm

    d = _count_panel(seed=3, n=8, T=14, base=4.0)
    el = fc.price_elasticity(d, freq="M", controls=("period", "promotion"))
    X = pd.concat([pd.DataFrame({"lp": np.log(d["price"]), "disc": d["discount_share"]}),
                   pd.get_dummies(d["unit"], drop_first=True, dtype=float),
                   pd.get_dummies(d["period"].astype(str), drop_first=True, dtype=float)], axis=1)
    glm = sm.GLM(d["quantity"], sm.add_constant(X), family=sm.families.Poisson()).fit(
        cov_type="HC0", tol=1e-12)
    assert el.method == "ppml" and el.cov_type == "HC1"              # 8 products: too few to cluster
    assert el.estimate == pytest.approx(glm.params["lp"], abs=1e-6)
    # HC1 = HC0 x n / (n - parameters, the dummies included)
    n, k = len(d), glm.df_model + 1
    assert el.std_error == pytest.approx(glm.bse["lp"] * np.sqrt(n / (n - k)), rel=1e-4)
    assert el.n_units == 8 and el.n_periods == 14 and el.n_obs == len(d)


def test_ppml_recovers_the_planted_elasticity_with_clustered_errors():
    d = _count_panel(seed=1, n=40, T=36)
    el = fc.price_elasticity(d, freq="M")
    assert el.cov_type == "cluster(product)" and el.controls == ("period", "promotion")
    assert el.ci_low < -1.5 < el.ci_high and el.ci_high - el.ci_low < 0.2
    # the promotion share is a control, not part of the price effect: without
    # it the estimate is the same here (prices and discounts drawn apart)
    assert fc.price_elasticity(d, freq="M", controls=("period",)).estimate == pytest.approx(
        el.estimate, abs=0.05)


def test_elasticity_refuses_what_it_cannot_estimate():
    d = _count_panel(seed=2, n=5, T=10)
    with pytest.raises(ParameterError, match="known"):
        fc.price_elasticity(d, freq="M", controls=("weather",))
    with pytest.raises(ParameterError):
        fc.price_elasticity(d, freq="M", method="magic")
    flat = d.assign(price=10.0)                                       # no product's price moves
    with pytest.raises(NoDataError):
        fc.price_elasticity(flat, freq="M")


def test_independent_columns_drops_repeats():
    a = np.arange(10.0)
    X = np.column_stack([a, 2 * a, np.ones(10), a ** 2, a + np.ones(10)])
    assert fm.independent_columns(X).tolist() == [True, False, True, True, False]


# -- reconciliation --------------------------------------------------------

def test_auto_reconciliation_publishes_the_better_total():
    """The sum of the groups is scored like a model of the total; "auto"
    publishes it when it beat the total's own choice, else scales the groups
    to the total's forecast. Either way the groups add up."""
    kw = dict(freq="W", horizon=6, n_origins=3, fast_models=FAST, detailed_models=())
    seen = set()
    for seed in range(4):
        s = weekly_panel(n_groups=4, T=150, seed=seed, noise=0.02 + 0.06 * seed)
        res = fc.forecast(s, **kw)
        tot = res.scores[res.scores["group"] == "total"].set_index("model")["mase"]
        own = tot.drop("bottom_up").min()
        assert res.reconciled_mase == pytest.approx(tot["bottom_up"])
        expected = "bottom_up" if tot["bottom_up"] < own else "top_down"
        assert res.reconcile == expected and (res.chosen["total"] == "bottom_up") == (expected == "bottom_up")
        f = res.forecast_frame.pivot(index="period", columns="group", values="yhat")
        np.testing.assert_allclose(f.drop(columns="total").sum(axis=1), f["total"], rtol=1e-9)
        m = fc.forecast_metrics(res)
        assert m["backtest_mase"] == pytest.approx(min(own, tot["bottom_up"]))
        seen.add(res.reconcile)
    assert seen == {"bottom_up", "top_down"}      # both branches are exercised


def test_bottom_up_total_gets_intervals_from_its_own_errors():
    s = weekly_panel(n_groups=3, T=150, seed=2)
    res = fc.forecast(s, freq="W", horizon=6, n_origins=3, fast_models=FAST, detailed_models=(),
                      reconcile="bottom_up")
    assert res.chosen["total"] == "bottom_up" and res.interval_source["total"] == "conformal"
    row = res.scores[(res.scores["group"] == "total") & (res.scores["model"] == "bottom_up")].iloc[0]
    assert row["chosen"] and 0 < row["coverage_80"] <= row["coverage_95"] <= 1
    bt = res.backtest_frame[res.backtest_frame["model"] == "bottom_up"]
    assert set(bt["group"]) == {"total"} and len(bt) == 3 * 6


# -- the page's inputs -------------------------------------------------------

@pytest.fixture
def tiny_data(tiny_world):
    from crmlab.sources import open_source

    return open_source(str(tiny_world))


PARAMS = dict(freq="W", value="revenue", group_by="", horizon=13, holdout=0, n_origins=4, calendar="cn",
              price_change=0.0, max_groups_shown=8)


def test_check_parameters_names_every_problem(tiny_data):
    fc.check_parameters(tiny_data, **PARAMS)
    fc.check_parameters(tiny_data, **{**PARAMS, "group_by": "region"})   # in the contract, not here
    with pytest.raises(ParameterError) as err:
        fc.check_parameters(tiny_data, **{**PARAMS, "freq": "Q", "value": "profit", "group_by": "email",
                                         "calendar": "mars", "price_change": -2.0, "n_origins": 0})
    msg = str(err.value)
    for word in ("freq", "value", "group_by 'email'", "calendar", "price_change", "n_origins"):
        assert word in msg
    known = msg.split("known:")[1]
    assert "region" in known and "channel" in known and "category" in known and "segment" in known
    assert "email" not in known and "phone" not in known and "customer_id" not in known


def test_grouping_says_what_a_source_lacks(tiny_data, tmp_path):
    assert fc.grouping(tiny_data, "")["by"] is None
    assert fc.grouping(tiny_data, "channel") == {"by": "channel", "segments": None, "note": "",
                                                 "needs": None}
    assert fc.grouping(tiny_data, "region")["needs"] == "customers.region"
    g = fc.grouping(tiny_data, "segment", reports_dir=tmp_path)
    assert g["by"] == "segment" and "No segmentation run was found" in g["note"]
    assert set(g["segments"].columns) == {"customer_id", "segment"} and g["segments"]["segment"].notna().all()


def test_grouping_by_segment_uses_the_latest_segmentation_run(tiny_data, tmp_path):
    run = tmp_path / "segmentation" / "20260101T000000Z-abcd"
    (run / "exports").mkdir(parents=True)
    (run / "run.json").write_text('{"status": "success", "run_id": "20260101T000000Z-abcd", '
                                  '"started_at": "2026-01-01T00:00:00"}')
    pd.DataFrame({"customer_id": [1, 2, 3], "segment": ["core", "lost", "core"],
                  "tier": ["VIP", "low", "low"]}).to_csv(run / "exports" / "segments.csv", index=False)
    g = fc.grouping(tiny_data, "tier", reports_dir=tmp_path)
    assert "20260101T000000Z-abcd" in g["note"] and list(g["segments"]["tier"]) == ["VIP", "low", "low"]


def test_price_analysis_says_why_it_is_not_available(tiny_data, tmp_path):
    from crmlab.sources import open_source

    lacking = tmp_path / "orders-only"
    lacking.mkdir()
    pd.DataFrame({"customer_id": [1, 2], "order_date": pd.to_datetime(["2024-01-01", "2024-01-02"]),
                  "amount": [1.0, 2.0]}).to_parquet(lacking / "orders.parquet")
    out = fc.price_analysis(open_source(str(lacking)))
    assert not out["available"] and out["needs"] == ["order_lines.product_id", "order_lines.quantity",
                                                     "order_lines.unit_price"]
    assert "revenue" in fc.price_analysis(tiny_data, value="orders")["reason"]
    few = fc.price_analysis(tiny_data)       # two products with one price each
    assert not few["available"] and few["reason"].startswith("The data cannot support")


def test_price_analysis_ladder_and_the_change_asked_for():
    res = fc.forecast(weekly_panel(n_groups=1, T=150), freq="W", horizon=6, n_origins=2,
                      fast_models=FAST, detailed_models=())

    el = fc.price_elasticity(_count_panel(seed=1, n=40, T=36), freq="M")
    price = {"available": True, "elasticity": el, "usable": True, "sold_share": 0.9}
    for c in (-0.2, -0.1, -0.05, 0.05, 0.1):
        sc = fc.price_scenario(res, el, c)
        assert np.sign(sc["impact"]) == -np.sign(c)        # elastic: a cut raises revenue
    t = fc.scenario_table({**price, "table": pd.DataFrame(
        [{"price change": -0.1, "units": 0.17, "revenue": 0.05, "revenue impact": 10.0, "impact low": 9.0,
          "impact high": 11.0, "asked": True}])})
    assert list(t.columns) == ["price change", "units", "revenue", "revenue impact", "95% range", ""]
    assert t[""].tolist() == ["◀ asked"] and t["95% range"].tolist() == ["+9.0 to +11.0"]
    assert "elastic" in fc.explain(res, "scenario", price=price)


# -- page tables, cards and charts -------------------------------------------

@pytest.fixture(scope="module")
def grouped_res():
    s = weekly_panel(n_groups=4, T=170, seed=9, sizes={3: 4})
    return fc.forecast(s, freq="W", horizon=8, holdout=4, n_origins=3, fast_models=FAST,
                       detailed_models=("sarimax",), calendar="cn")


def test_metric_cards_put_the_four_kpis_first(grouped_res):
    cards = fc.metric_cards(grouped_res)
    kpis = [c for c in cards if c.get("kpi")]
    assert [c["key"] for c in kpis] == ["forecast_total", "model_name", "improvement_vs_seasonal_naive",
                                        "coverage_80"]
    m = fc.forecast_metrics(grouped_res)
    assert kpis[2]["value"] == pytest.approx(1 - m["backtest_mase"] / m["seasonal_naive_mase"])
    assert "80% range" in kpis[0]["label"] and "to" in kpis[0]["label"]
    keys = [c["key"] for c in cards]
    assert len(keys) == len(set(keys)) and {"model", "model_by_group", "holdout_mase", "coverage_95",
                                            "elasticity"} <= set(keys)


def test_score_board_marks_the_chosen_model(grouped_res):
    board = fc.score_board(grouped_res)
    assert board["MASE"].is_monotonic_increasing and board["is_chosen"].sum() == 1
    assert board.loc[board["is_chosen"], "chosen"].item() == "◀ chosen"
    assert board.loc[board["is_chosen"], "MASE"].item() == pytest.approx(
        fc.forecast_metrics(grouped_res)["backtest_mase"])
    sn = board[board["short"] == "seasonal naive"]
    assert sn["error vs seasonal naive"].item() == pytest.approx(0.0)


def test_groups_display_hides_small_groups_and_holdout_table_follows(grouped_res):
    shown = fc.groups_display(grouped_res)
    assert "g3" not in set(shown["group"]) and len(shown) == 3       # g3 has 4 customers
    assert shown["forecast"].dtype == "Int64" and shown["80% range"].str.contains(" to ").all()
    h = fc.holdout_table(grouped_res)
    assert h["series"].tolist()[0] == "total" and "g3" not in set(h["series"])


def test_forecast_chart_shows_history_forecast_and_both_bands(grouped_res):
    fig = fc.forecast_chart(grouped_res)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"observed", "forecast", "80% prediction interval", "95% prediction interval",
            "withheld actuals (holdout)"} <= set(labels)
    observed = next(line for line in ax.lines if line.get_label() == "observed")
    forecast = next(line for line in ax.lines if line.get_label() == "forecast")
    assert forecast.get_xdata()[0] > observed.get_xdata()[-1]


def test_groups_chart_draws_each_groups_forecast_after_its_history(grouped_res):
    import matplotlib.dates as mdates

    fig = fc.groups_chart(grouped_res, ["g0", "g1"])
    assert len(fig.axes) == 2
    end = mdates.date2num(grouped_res.periods[grouped_res.train_len - 1])
    for ax in fig.axes:
        xs = [mdates.date2num(pd.Timestamp(x)) if not isinstance(x, (float, np.floating)) else x
              for line in ax.lines[1:] for x in line.get_xdata()]
        assert xs and min(xs) > end                     # the forecast line sits after the history


def test_effects_in_plain_words(grouped_res):
    e = fc.effects_display(grouped_res)
    assert list(e.columns) == ["event", "effect", "p-value", "reading"]
    assert set(e["reading"]) <= {"clear", "not clear"} and not e["event"].str.startswith("hol_").any()
    assert fc.p_text(0.0001) == "<0.001" and fc.p_text(0.0456) == "0.046"
    assert fc.event_label("hol_singles_day") == "Singles' Day (11.11)"


def test_intermittent_groups_do_not_narrow_the_totals_intervals():
    """Many small groups that mostly sell nothing have scaled errors of
    another shape (mostly zero); pooled with the total they would shrink its
    conformal intervals. They calibrate apart, so the total's coverage stays
    near nominal."""
    rng = np.random.default_rng(7)
    s = weekly_panel(n_groups=3, T=170, seed=7, noise=0.08)
    periods = s["period"].drop_duplicates().sort_values()
    sparse = [pd.DataFrame({"group": f"tiny{j}", "period": periods,
                            "revenue": np.where(rng.random(len(periods)) < 0.03, 50.0, 0.0),
                            "discount_share": 0.0, "group_customers": 12}) for j in range(40)]
    res = fc.forecast(pd.concat([s, *sparse], ignore_index=True), freq="W", horizon=8, n_origins=4,
                      fast_models=FAST, detailed_models=(), ensemble_size=0, reconcile="none")
    alone = fc.forecast(s, freq="W", horizon=8, n_origins=4, fast_models=FAST, detailed_models=(),
                        ensemble_size=0, reconcile="none")
    k = res.chosen["total"]
    assert k == alone.chosen["total"]          # the sparse groups barely move the total
    with_sparse = res.forecast_frame[res.forecast_frame["group"] == "total"]
    without = alone.forecast_frame[alone.forecast_frame["group"] == "total"]
    width = lambda f: (f["hi80"] - f["lo80"]).mean()  # noqa: E731
    assert width(with_sparse) == pytest.approx(width(without), rel=0.15)
    assert res.coverage["total"][80] >= 0.7   # pooled with the sparse groups: about half as wide, 0.53


def staggered_monthly_panel(T=78, seed=3):
    """Monthly category series that start and stop at different dates: "b"
    starts late, "c" stops early, "d" sold only in the last 10 months."""
    rng = np.random.default_rng(seed)
    periods = pd.date_range("2018-01-01", periods=T, freq="MS")
    live = {"a": (0, T), "b": (38, T), "c": (0, 30), "d": (T - 10, T)}
    frames = []
    for g, (a, b) in live.items():
        y = np.zeros(T)
        y[a:b] = rng.gamma(20, 50, b - a)
        frames.append(pd.DataFrame({"group": g, "period": periods, "revenue": y,
                                    "group_customers": 50}))
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("horizon", [6, 13])
def test_group_table_without_a_same_period_last_year_shows_blank(horizon):
    from crmlab.report import table_html

    res = fc.forecast(staggered_monthly_panel(), freq="M", horizon=horizon, n_origins=2,
                      fast_models=FAST, detailed_models=(), calendar="none")
    t = fc.group_table(res)
    shown = fc.groups_display(res)
    last = "same months last year"
    assert len(shown) == 4 and last in shown.columns
    # "d" sold nothing a year ago: no change on last year (never a division by zero)
    d = shown.set_index("group").loc["d"]
    assert pd.isna(d["change on last year"])
    if horizon > 12:     # the horizon reaches past one year: no "same months last year" at all
        assert t["last_year"].isna().all() and shown[last].isna().all()
    else:
        assert shown.set_index("group").loc["a", last] > 0
    html = table_html(shown, formats=fc.groups_formats(res))
    assert "nan" not in html.lower() and "<NA>" not in html and "None" not in html
    assert fc.findings(res) and all(s for s in fc.findings(res))
    assert fc.explain(res, "groups")


def test_sentences_never_print_a_missing_figure():
    """Flat series (all zero sales) leave figures the backtest cannot
    measure (interval coverage); a result whose scores are missing
    altogether must still read: "n/a" or a sentence without the figure,
    never nan, None, a crash, or a made-up 0%."""
    import dataclasses

    periods = pd.date_range("2021-01-04", periods=120, freq="W-MON")
    s = pd.concat([pd.DataFrame({"group": g, "period": periods, "revenue": 0.0, "group_customers": 20})
                   for g in ("a", "b")], ignore_index=True)
    res = fc.forecast(s, freq="W", horizon=8, holdout=4, n_origins=2, fast_models=FAST,
                      detailed_models=(), calendar="none")
    blank = res.scores.assign(mase=np.nan, smape=np.nan, coverage_80=np.nan, coverage_95=np.nan)
    gone = dataclasses.replace(
        res, scores=blank, reconciled_mase=np.nan, reconcile="bottom_up",
        coverage={g: {80: np.nan, 95: np.nan} for g in res.groups},
        holdout_scores=res.holdout_scores.assign(mase=np.nan, smape=np.nan))
    for r in (res, gone):
        texts = fc.findings(r) + [fc.explain(r, sec) for sec in
                                  ("models", "forecast", "backtest", "effects", "groups", "holdout")]
        texts += [c.get("label") or "" for c in fc.metric_cards(r)]
        for t in texts:
            assert "nan" not in t and "None" not in t, t
        assert not any("held 0%" in t for t in texts)
        fc.score_board(r), fc.groups_display(r), fc.holdout_table(r)


def test_series_and_price_panel_count_purchases_as_every_report_does(con):
    """paid, a missing status and a word the contract does not know
    ("shipped") are purchases; refunded is not -- engine.purchases, the one
    meaning, so the series adds up to engine.purchase_totals."""
    from crmlab import engine

    orders = pd.DataFrame({
        "order_id": [1, 2, 3, 4, 5, 6],
        "customer_id": [1, 2, 3, 4, 1, 2],
        "order_date": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04",
                                      "2024-01-05", "2024-01-07"]),
        "amount": [10.0, 20.0, 40.0, 80.0, 160.0, 320.0],
        "status": ["paid", None, "shipped", "refunded", " Paid ", "CANCELLED"]})
    lines = pd.DataFrame({"order_id": [1, 2, 3, 4, 5, 6], "product_id": 1, "quantity": 1,
                          "unit_price": [10.0, 20.0, 40.0, 80.0, 160.0, 320.0]})
    o = con.create_table("purchase_orders", orders, overwrite=True)
    li = con.create_table("purchase_lines", lines, overwrite=True)
    s = fc.build_series(o, freq="D", complete_periods=False)
    expected = engine.purchase_totals(o)["purchase_revenue"]
    assert s["revenue"].sum() == pytest.approx(expected) == 10 + 20 + 40 + 160
    assert s["orders"].sum() == 4
    panel = fc.price_panel(li, o, freq="D", fill_gaps=False)
    assert panel["quantity"].sum() == 4


def test_gradient_boosting_with_nothing_to_learn_from():
    """Series without a sale in any season before a period give no
    training row: the model forecasts the recent mean (zero) instead of
    handing scikit-learn an empty table."""
    periods = pd.date_range("2022-01-03", periods=60, freq="W-MON")
    Y = np.zeros((2, 60))
    m = fm.GradientBoostingForecaster(calendar="none").fit(Y, periods, freq="W")
    assert m.n_train_rows_ == 0
    np.testing.assert_array_equal(m.forecast(4)["mean"], 0.0)
    Y[1, -1] = 52.0           # one sale, in the last period only
    m = fm.GradientBoostingForecaster(calendar="none").fit(Y, periods, freq="W")
    out = m.forecast(3)["mean"]
    assert np.isfinite(out).all() and out[1, 0] == pytest.approx(1.0)   # the season's mean, 52 / 52


def test_a_group_starts_at_its_first_sale():
    """Two categories with the same seasonal monthly sales, "new" starting
    two years after "old", and "recent" only in the last 10 months: the
    months before a category existed are not history. Before, "new" had a
    backtest MASE of 287 (scaled by an in-sample error made of zeros) and
    gradient boosting forecast "recent" at 1.8 times its level."""
    rng = np.random.default_rng(5)
    T = 62          # backtest origins at months 26, 38 and 50
    periods = pd.date_range("2017-01-01", periods=T, freq="MS")
    season = 1 + 0.3 * np.sin(2 * np.pi * np.arange(T) / 12)
    live = {"old": 0, "new": 24, "recent": T - 10}
    frames = []
    for g, a in live.items():
        y = np.zeros(T)
        y[a:] = 1000 * season[a:] * rng.normal(1, 0.05, T - a)
        frames.append(pd.DataFrame({"group": g, "period": periods, "revenue": y,
                                    "group_customers": 50}))
    res = fc.forecast(pd.concat(frames, ignore_index=True), freq="M", horizon=12, n_origins=4,
                      calendar="none", detailed_models=(), n_detailed=0)
    chosen = res.scores[res.scores["chosen"]].set_index("group")
    assert chosen.loc["new", "mase"] < 2 * chosen.loc["old", "mase"] < 3
    # no model is scored on "new" before it had a year of life, nor on "recent" at all
    bt = res.backtest_frame
    first = bt[bt["group"] == "new"]["period"].min()
    assert first >= periods[24 + 12]
    assert not (bt["group"] == "recent").any()
    fut = res.forecast_frame.set_index("group")
    for g in live:
        level = res.Y[res.groups.index(g), -10:].mean()
        ratio = fut.loc[g, "yhat"].mean() / level
        assert 0.75 < ratio < 1.25, (g, ratio)
        assert (fut.loc[g, "lo80"] < fut.loc[g, "yhat"]).all()


def test_the_default_horizon_follows_the_frequency(tiny_data):
    """horizon=0 (the notebook's default) is the frequency's own: 28 days,
    13 weeks, 12 months -- so monthly forecasts always have the same months
    last year to compare with (13 months never did)."""
    from crmlab.runner import known_parameters

    assert known_parameters("forecasting")["horizon"]["default"] == 0
    assert {f: fc.FREQ_RULES[f]["horizon"] for f in "DWM"} == {"D": 28, "W": 13, "M": 12}
    fc.check_parameters(tiny_data, **{**PARAMS, "horizon": 0})
    with pytest.raises(ParameterError, match="horizon"):
        fc.check_parameters(tiny_data, **{**PARAMS, "horizon": -1})
    res = fc.forecast(staggered_monthly_panel(), freq="M", horizon=0, n_origins=2,
                      fast_models=FAST, detailed_models=(), calendar="none")
    assert res.horizon == 12
    assert fc.group_table(res).set_index("group").loc["a", "last_year"] > 0
