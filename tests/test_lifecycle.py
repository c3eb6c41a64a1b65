"""crmlab.lifecycle: stages, cohorts, survival, churn model, profitability.

Tiny hand-checked tables for the rules and aggregations; a simulated
population (a BG/NBD-like buying process with planted dropout) for the
churn model.
"""

from __future__ import annotations

import datetime as dt

import ibis
import numpy as np
import pandas as pd
import pytest

from crmlab import clv, lifecycle as lc
from crmlab.exceptions import ParameterError

AS_OF = "2025-06-30"


def _orders() -> pd.DataFrame:
    """Eight customers with histories chosen so each stage rule fires (see
    the expected values in the tests)."""
    rows = [
        (1, "2024-01-01", 10.0), (1, "2024-03-01", 10.0), (1, "2024-03-01", 5.0),  # same day
        (1, "2024-05-01", 10.0), (1, "2025-06-01", 10.0),
        (2, "2025-06-10", 10.0),
        (3, "2023-01-01", 10.0), (3, "2023-02-01", 10.0),
        (4, "2024-10-01", 10.0), (4, "2025-06-20", 10.0),
        (7, "2025-02-01", 10.0),
        (8, "2024-03-15", 10.0),
    ]
    rows += [(5, f"2024-{m:02d}-01", 10.0) for m in range(1, 13)]          # monthly, stopped
    rows += [(6, d.strftime("%Y-%m-%d"), 10.0)                              # monthly, then a pause
             for d in pd.date_range("2024-06-01", "2025-03-01", freq="MS")]
    df = pd.DataFrame(rows, columns=["customer_id", "order_date", "amount"])
    df["order_date"] = pd.to_datetime(df["order_date"]) + pd.Timedelta(hours=12)
    return df


@pytest.fixture(scope="module")
def orders_table():
    """The minimal contract: orders with customer_id, order_date, amount only, in DuckDB."""
    return ibis.duckdb.connect().create_table("orders", _orders())


@pytest.fixture(scope="module")
def activity(orders_table):
    return lc.customer_activity(orders_table, as_of=AS_OF)


# ------------------------------------------------------------------ activity, stages

def test_activity_features_are_computed_as_documented(activity):
    a = activity.set_index("customer_id")
    c1 = a.loc[1]
    assert (c1["n_days"], c1["n_orders"], c1["revenue"]) == (4, 5, 45.0)
    assert (c1["tenure_days"], c1["recency_days"]) == (546, 29)
    assert c1["ipt_days"] == pytest.approx(517 / 3)
    assert c1["n_recent"] == 1
    # recent rate (1 + 0.5)/180 against earlier (2 repeats + 0.5)/(546 - 180)
    assert c1["trend"] == pytest.approx((1.5 / 180) / (2.5 / 366))
    assert np.isnan(a.loc[2, "trend"])  # too young for a trend
    # single purchase: the median of the repeat buyers' gaps (30.33, 30.45, 31, 172.3, 262) is 31
    assert a.loc[7, "ipt_days"] == 31.0 and a.loc[7, "overdue"] == pytest.approx(149 / 31)
    assert a.loc[6, "overdue"] == pytest.approx(121 / (273 / 9))


def test_stages_follow_the_rules(activity):
    stages = dict(zip(activity["customer_id"], lc.assign_stages(activity).astype(str)))
    assert stages == {1: "mature", 2: "new", 3: "churned", 4: "growing", 5: "churned",
                      6: "declining", 7: "declining", 8: "churned"}


def test_stage_rules_are_data(activity):
    rules = lc.load_rules()
    # lower the churn threshold to 100 silent days: customers 6 (121 days, 4 usual gaps)
    # and 7 (149 days, 4.8 gaps) are now churned; customer 1 (29 days) stays mature
    rules["rules"][1]["when"]["recency_days"]["min"] = 100
    stages = dict(zip(activity["customer_id"], lc.assign_stages(activity, rules=rules).astype(str)))
    assert (stages[6], stages[7], stages[1]) == ("churned", "churned", "mature")
    assert lc.load_rules()["rules"][1]["when"]["recency_days"]["min"] == 180  # defaults untouched
    rules["rules"].insert(0, {"stage": "vip", "when": {"unknown_feature": {"min": 1}}})
    with pytest.raises(ParameterError, match="unknown_feature"):
        lc.assign_stages(activity, rules=rules)


def test_missing_values_never_match_a_condition():
    frame = pd.DataFrame({"trend": [np.nan, 0.4, 2.0]})
    rules = {"stage_order": ["slow", "other"], "rules": [
        {"stage": "slow", "when": {"trend": {"max": 0.5}}}, {"stage": "other", "when": {}}]}
    assert lc.assign_stages(frame, rules=rules).astype(str).tolist() == ["other", "slow", "other"]


def test_stage_summary_lists_every_stage(activity):
    summary = lc.stage_summary(lc.assign_stages(activity))
    assert summary["stage"].tolist() == ["new", "growing", "mature", "declining", "churned"]
    assert summary["customers"].tolist() == [1, 1, 1, 2, 3]
    assert summary["share"].sum() == pytest.approx(1.0)
    assert summary["description"].str.len().min() > 10


def test_stage_flows_count_movements_since_the_previous_run():
    previous = pd.DataFrame({"customer_id": [1, 3, 9, 10], "stage": ["mature", "declining", "new", "mature"]})
    current = pd.DataFrame({"customer_id": [1, 3, 2, 10], "stage": ["declining", "churned", "new", "mature"]})
    flows = lc.stage_flows(current, previous)
    got = {(r.from_stage, r.to_stage): r.customers for r in flows.itertuples()}
    assert got == {("mature", "declining"): 1, ("declining", "churned"): 1, (lc.NOT_YET, "new"): 1,
                   ("new", lc.GONE): 1, ("mature", "mature"): 1}
    assert lc.stage_flows(current, None).empty
    text = lc.describe_stages(lc.stage_summary(pd.Series(current["stage"].astype("category"))), flows)
    assert "1 customers slipped into decline or churn" in text


# ------------------------------------------------------------------ cohorts, survival

def test_cohort_matrices_by_month(orders_table):
    co = lc.cohort_matrices(orders_table, as_of=AS_OF, period="M", max_periods=24, min_size=1)
    ret, rev = co.retention, co.revenue
    assert co.sizes["2024-01"] == 2  # customers 1 and 5
    jan = ret.loc["2024-01"]
    assert (jan[0], jan[1], jan[2], jan[4], jan[12], jan[17]) == (1.0, 0.5, 1.0, 1.0, 0.0, 0.5)
    assert np.isnan(jan[18])  # July 2025 is after as_of: not observed, not zero
    assert rev.loc["2024-01", 2] == 25.0  # customer 1's two same-day orders (15) + customer 5 (10)
    assert co.revenue_per_customer.loc["2024-01", 2] == 12.5
    assert co.sizes.sum() == 8
    assert ret[0].dropna().eq(1.0).all()
    weekly = lc.cohort_matrices(orders_table, as_of=AS_OF, period="W", max_periods=10, min_size=1)
    assert weekly.sizes.sum() == 8 and weekly.retention.shape[1] == 11
    # by default cohorts under the minimum group size show no spending or retention
    masked = lc.cohort_matrices(orders_table, as_of=AS_OF)
    assert masked.sizes["2024-01"] == 2 and masked.retention.isna().all().all()
    assert masked.revenue.isna().all().all()
    assert "customers buy again" in lc.describe_cohorts(co, at=1)


def test_kaplan_meier_on_a_hand_checked_table(activity):
    sv = lc.churn_survival(activity, churn_window=180)
    # acquired by 2025-01-01: customers 1, 3, 4, 5, 6, 8. Events (last purchase by
    # 2025-01-01): 8 at 0 days, 3 at 31, 5 at 335; censored: 4 at 92, 6 at 214, 1 at 366
    assert (sv.customers, sv.churned) == (6, 3)
    assert lc.survival_at(sv, 0) == pytest.approx(5 / 6)
    assert lc.survival_at(sv, 100) == pytest.approx(5 / 6 * 4 / 5)
    assert lc.survival_at(sv, 335) == pytest.approx(5 / 6 * 4 / 5 * 1 / 2)
    assert sv.median_days == 335
    assert sv.one_time_share == pytest.approx(1 / 6)
    assert (sv.curve["lower"] <= sv.curve["survival"] + 1e-12).all()
    assert (sv.curve["upper"] >= sv.curve["survival"] - 1e-12).all()
    assert "180 days without a purchase" in lc.describe_survival(sv)


# ------------------------------------------------------------------ churn model

def _simulate_orders(n, *, r=0.9, alpha=40.0, a=0.8, b=4.0, days=1095, start="2023-01-01", seed=0):
    """Orders from a buying process with planted dropout: rate lambda ~
    Gamma(r, alpha) per day from a uniform acquisition day, dropout with
    probability p ~ Beta(a, b) after each repeat purchase. Returns the
    orders and, per customer id, whether they dropped out within the window."""
    rng = np.random.default_rng(seed)
    lam, p = rng.gamma(r, 1.0 / alpha, n), rng.beta(a, b, n)
    t = rng.uniform(0, days - 30, n)
    spend = rng.gamma(3.0, 20.0, n)
    cust, times = [np.arange(n)], [t.copy()]
    alive = np.ones(n, dtype=bool)
    dropped = np.zeros(n, dtype=bool)
    while alive.any():
        t = t + rng.exponential(1.0, n) / lam
        alive &= t < days
        cust.append(np.flatnonzero(alive))
        times.append(t[alive])
        drop = alive & (rng.random(n) < p)
        dropped |= drop
        alive &= ~drop
    c, tt = np.concatenate(cust), np.concatenate(times)
    orders = pd.DataFrame({
        "customer_id": c + 1,
        "order_date": pd.Timestamp(start) + pd.to_timedelta(np.floor(tt * 86400), unit="s"),
        "amount": np.round(rng.gamma(4.0, spend[c] / 4.0), 2),
    })
    return orders, pd.Series(dropped, index=np.arange(n) + 1, name="dropped")


@pytest.fixture(scope="module")
def population():
    orders, dropped = _simulate_orders(3000, seed=5)
    as_of = "2025-12-31"
    dates = lc.snapshot_dates(as_of, churn_window=180, start=orders["order_date"].min())
    snaps = lc.churn_snapshots(orders, dates["train"] + [dates["test"], dates["score"]],
                               churn_window=180, observation_end=as_of)
    return orders, as_of, dates, snaps, dropped


def test_snapshot_dates_leave_a_full_label_window_before_the_test_date():
    d = lc.snapshot_dates("2025-12-31", churn_window=90, n_train=3, step_days=30, start="2024-01-01")
    assert d["test"] == dt.date(2025, 10, 2) and d["score"] == dt.date(2025, 12, 31)
    assert d["train"] == [dt.date(2025, 5, 5), dt.date(2025, 6, 4), dt.date(2025, 7, 4)]
    assert all(s + dt.timedelta(days=90) <= d["test"] for s in d["train"])


def test_training_snapshots_do_not_depend_on_data_after_the_test_date(population):
    orders, as_of, dates, snaps, _ = population
    cut = pd.Timestamp(dates["test"]) + pd.Timedelta(days=1)
    early = lc.churn_snapshots(orders[orders["order_date"] < cut], dates["train"], churn_window=180,
                               observation_end=dates["test"])
    full = snaps[snaps["snapshot"].isin(pd.to_datetime(dates["train"]))].reset_index(drop=True)
    pd.testing.assert_frame_equal(early.reset_index(drop=True), full, check_dtype=False)
    assert snaps.loc[snaps["snapshot"] == pd.Timestamp(as_of), "churned"].isna().all()


@pytest.mark.slow
def test_churn_model_finds_the_planted_churn(population):
    orders, as_of, dates, snaps, dropped = population
    model = lc.ChurnModel(churn_window=180, random_state=0).fit(snaps)
    split = model.split_
    assert split["test_snapshot"] == dates["test"]
    assert split["train_label_end"] <= split["test_snapshot"]
    assert all(s + dt.timedelta(days=180) <= split["test_snapshot"] for s in split["train_snapshots"])
    assert model.auc_ > 0.75
    assert model.top_decile_precision_ > model.base_rate_
    assert model.calibration_["observed"].iloc[-1] > model.calibration_["observed"].iloc[0]
    top = model.importance_.iloc[0]
    assert top["feature"] in {"recency_days", "overdue"} and top["direction"] == 1
    now = snaps[snaps["snapshot"] == pd.Timestamp(as_of)]
    scores = lc.churn_scores(model, snaps, as_of=as_of)
    assert len(scores) == len(now) == 3000 and scores["churn_probability"].between(0, 1).all()
    prob = scores["churn_probability"].to_numpy()
    # those who stopped long ago are riskier than those who just bought
    assert prob[now["recency_days"].to_numpy() > 365].mean() > prob[now["recency_days"].to_numpy() < 30].mean()
    assert set(scores["risk_level"].dropna()) <= {"low", "medium", "high"}
    # against the planted dropout itself (not the model's own label)
    from sklearn.metrics import roc_auc_score
    truth = dropped.reindex(scores["customer_id"]).to_numpy()
    assert roc_auc_score(truth, prob) > 0.75
    text = lc.describe_churn(model)
    assert "ROC AUC" in text and "days since the last purchase" in text


def test_interaction_and_ticket_features_per_snapshot():
    orders = pd.DataFrame({"customer_id": [1, 2], "order_date": pd.to_datetime(["2024-01-10", "2024-02-01"]),
                           "amount": [5.0, 6.0]})
    inter = pd.DataFrame({"customer_id": [1, 1, 1, 2], "type": ["web_visit"] * 4,
                          "ts": pd.to_datetime(["2024-01-15", "2024-03-01", "2024-05-01", "2024-01-20"])})
    tickets = pd.DataFrame({"customer_id": [1, 1], "opened_at": pd.to_datetime(["2024-02-01", "2024-04-01"]),
                            "satisfaction": [2, 4], "nps": [3, 9]})
    f = lc.churn_snapshots(orders, ["2024-03-31", "2024-06-30"], churn_window=30, recent_days=90,
                           interactions=inter, tickets=tickets, observation_end="2024-07-31")
    g = f.set_index(["snapshot", "customer_id"])
    march, june = pd.Timestamp("2024-03-31"), pd.Timestamp("2024-06-30")
    assert g.loc[(march, 1), "interactions_recent"] == 2 and g.loc[(june, 1), "interactions_recent"] == 1
    assert g.loc[(march, 1), "interaction_recency_days"] == 30
    assert g.loc[(march, 1), "satisfaction_mean"] == 2 and g.loc[(june, 1), "satisfaction_mean"] == 3
    assert g.loc[(june, 1), "nps_mean"] == 6 and g.loc[(june, 1), "tickets_recent"] == 2
    assert g.loc[(march, 2), "tickets_recent"] == 0 and np.isnan(g.loc[(march, 2), "satisfaction_mean"])
    assert g.loc[(march, 1), "churned"] == 1.0  # no purchase in April


def test_risk_levels_use_the_thresholds():
    p = [0.0, 0.2999, 0.3, 0.59, 0.6, 1.0, np.nan]
    assert lc.risk_levels(p).astype(object).tolist() == ["low", "low", "medium", "medium", "high",
                                                         "high", np.nan]
    custom = lc.risk_levels(p, thresholds={"low": 0.0, "high": 0.9})
    assert custom.astype(object).tolist()[:6] == ["low"] * 5 + ["high"]
    with pytest.raises(ParameterError):
        lc.risk_levels(p, thresholds={"low": 0.5, "high": 0.5})


# ------------------------------------------------------------------ profitability

def test_profitability_hand_checked():
    act = pd.DataFrame({"customer_id": ["a", "b", "c"], "revenue": [100.0, 40.0, 12.0],
                        "n_orders": [2, 1, 2]})
    res = lc.profitability(act, acquisition_cost=30, service_cost=5, margin=0.5)
    # a: 50 - 10 - 30 = 10 (profitable); b: 20 - 5 - 30 = -15; c: 6 - 10 - 30 = -34
    assert res["per_customer"]["profit"].tolist() == [10.0, -15.0, -34.0]
    assert (res["profitable"], res["below"]) == (1, 2)
    # median order value 40: break-even 30 / (0.5 - 5/40) = 80 = 2 orders
    assert res["aov"] == 40.0 and res["breakeven_spend"] == pytest.approx(80.0)
    assert res["breakeven_orders"] == pytest.approx(2.0)
    gaps = res["per_customer"]["gap"].tolist()
    assert gaps[0] == 0 and gaps[1] == pytest.approx(40.0) and np.isinf(gaps[2])  # c never pays back
    values = pd.DataFrame({"customer_id": ["a", "b", "c"], "clv": [5.0, 30.0, 100.0],
                           "expected_purchases": [1.0, 2.0, 30.0]})
    res = lc.profitability(act, acquisition_cost=30, service_cost=5, margin=0.5, values=values)
    assert res["expected_to_cross"] == 1  # b: -15 + 30 - 10 >= 0; c: -34 + 100 - 150 < 0
    assert "80" in lc.describe_profitability(res)
    with pytest.raises(ParameterError):
        lc.profitability(act, acquisition_cost=30, service_cost=5, margin=1.5)


# ------------------------------------------------------------------ export, metrics, findings

def test_export_metrics_and_findings_from_the_minimal_contract(orders_table, activity):
    summary = clv.transaction_summary(orders_table, observation_end=AS_OF)
    models = clv.fit_value_models(summary, pnbd=False)
    values = clv.customer_values(summary, models)
    stages = lc.assign_stages(activity)
    churn = pd.DataFrame({"customer_id": activity["customer_id"],
                          "churn_probability": np.linspace(0.05, 0.95, len(activity))})
    churn["risk_level"] = lc.risk_levels(churn["churn_probability"]).to_numpy()
    table = lc.lifecycle_table(activity, stages, values, churn)
    assert list(table.columns) == ["customer_id", "stage", "p_alive", "expected_purchases", "clv",
                                   "churn_probability", "risk_level"]
    assert len(table) == 8 and table["p_alive"].between(0, 1).all()
    metrics = lc.lifecycle_metrics(models=models, table=table)
    assert set(metrics) == {
        "bgnbd_r", "bgnbd_alpha", "bgnbd_a", "bgnbd_b", "bgnbd_loglik", "pnbd_r", "pnbd_alpha",
        "pnbd_s", "pnbd_beta", "pnbd_loglik", "gg_p", "gg_q", "gg_v", "holdout_actual_transactions",
        "holdout_predicted_transactions", "churn_auc", "clv_total", "share_new", "share_growing",
        "share_mature", "share_declining", "share_churned"}
    assert metrics["share_churned"] == pytest.approx(3 / 8) and metrics["pnbd_r"] is None
    assert metrics["clv_total"] == pytest.approx(table["clv"].sum())
    prof = lc.profitability(activity, acquisition_cost=20, service_cost=2, margin=0.5, values=values)
    facts = lc.findings(stages=lc.stage_summary(stages), table=table, profit=prof,
                        survival=lc.churn_survival(activity))
    assert 3 <= len(facts) <= 5
    assert all(any(ch.isdigit() for ch in f) for f in facts)
    high = lc.high_risk_customers(table, activity)
    assert (high["churn_probability"] >= 0.6).all() and list(high.columns)[:2] == ["customer_id", "stage"]


# ------------------------------------------------------------------ the report's inputs and parameters

def test_check_parameters_names_every_problem_at_once():
    ok = lc.check_parameters(risk_thresholds=[0.2, 0.7], calibration_end="2025-01-31")
    assert ok["thresholds"] == {"low": 0.0, "medium": 0.2, "high": 0.7}
    assert ok["calibration_end"] == dt.date(2025, 1, 31)
    assert lc.check_parameters(risk_thresholds={"medium": 0.4, "high": 0.8})["thresholds"]["high"] == 0.8
    with pytest.raises(ParameterError) as err:
        lc.check_parameters(time_unit="Y", horizon=0, margin=1.5, churn_window=3.5, risk_thresholds=[0.7, 0.2],
                            cohort_period="Q", acquisition_cost=-1, calibration_end="31/01/2025")
    msg = str(err.value)
    for name in ("time_unit", "horizon", "margin", "churn_window", "risk_thresholds", "cohort_period",
                 "acquisition_cost", "calibration_end"):
        assert name in msg


def test_report_dates_default_holdout_is_the_last_quarter(orders_table):
    d = lc.report_dates(orders_table)
    assert (d["first"], d["as_of"]) == (dt.date(2023, 1, 1), dt.date(2025, 6, 20))
    span = (d["as_of"] - d["first"]).days
    assert d["span_days"] == span and d["holdout_days"] == round(span / 4)
    d = lc.report_dates(orders_table, as_of="2025-03-31", calibration_end="2024-12-31")
    assert (d["calibration_end"], d["holdout_days"]) == (dt.date(2024, 12, 31), 90)
    with pytest.raises(ParameterError, match="calibration_end"):
        lc.report_dates(orders_table, as_of="2025-03-31", calibration_end="2025-04-30")
    from crmlab.exceptions import NoDataError
    with pytest.raises(NoDataError):
        lc.report_dates(orders_table, as_of="2022-12-31")
    short = lc.report_dates(orders_table, as_of="2023-02-20")  # 50 days: a 12-day holdout is too short
    assert short["calibration_end"] is None and short["holdout_days"] == 0


def test_the_cached_day_table_gives_the_same_results_as_the_orders(orders_table):
    days = lc.purchase_days(orders_table)
    assert set(days.columns) == set(clv.DAY_COLUMNS)
    pd.testing.assert_frame_equal(lc.customer_activity(days, as_of=AS_OF),
                                  lc.customer_activity(orders_table, as_of=AS_OF))
    a = clv.transaction_summary(days, calibration_end="2024-12-31", observation_end="2025-03-31")
    b = clv.transaction_summary(orders_table, calibration_end="2024-12-31", observation_end="2025-03-31")
    pd.testing.assert_frame_equal(a, b)
    assert a.attrs == b.attrs
    # a day table cut at an earlier date keeps each customer's first day right
    early = lc.customer_activity(days, as_of="2024-04-01").set_index("customer_id")
    assert early.loc[1, "n_days"] == 2 and early.loc[1, "first_purchase"] == pd.Timestamp("2024-01-01")
    assert clv.observed_window(days) == (dt.date(2023, 1, 1), dt.date(2025, 6, 20))


def test_report_tables_leave_out_orders_of_unknown_customers(tmp_path):
    from crmlab.sources import open_source

    orders = _orders()
    orders.loc[len(orders)] = [99, pd.Timestamp("2025-01-01 10:00"), 5.0]  # nobody in customers
    orders.to_csv(tmp_path / "orders.csv", index=False)
    # customer 8's row is quarantined (a birth date in the future) but is still a customer
    pd.DataFrame({"customer_id": range(1, 9), "birth_date": ["1980-01-01"] * 7 + ["2199-01-01"]}).to_csv(
        tmp_path / "customers.csv", index=False)
    with open_source(str(tmp_path)) as data:
        t = lc.report_tables(data)
        assert t["orphan_orders"] == 1 and "1 orders" in t["note"]
        assert t["interactions"] is None and t["tickets"] is None and t["customers"] is not None
        assert len(data.quarantine_of("customers")) == 1
        days = lc.purchase_days(t["orders"], customers=t["known_customers"])
        assert set(days.customer_id.to_pandas()) == set(range(1, 9))
        pd.testing.assert_frame_equal(lc.customer_activity(days, as_of=AS_OF),
                                      lc.customer_activity(_orders(), as_of=AS_OF))
        for cached in (days, t["customers"], t["known_customers"]):
            cached.release()  # while the connection is open


# ------------------------------------------------------------------ the page's parts

def test_previous_stages_first_run_other_source_and_last_export(tmp_path):
    assert lc.previous_stages([])["stages"] is None
    assert "first run" in lc.previous_stages([])["text"]
    run = tmp_path / "run1"
    (run / "exports").mkdir(parents=True)
    pd.DataFrame({"customer_id": [1, 2], "stage": ["new", "mature"], "clv": [1.0, 2.0]}).to_csv(
        run / "exports" / "customer_lifecycle.csv", index=False)
    prev = [{"run_dir": run, "params": {"source": "a"}, "finished_at": "2026-01-02T10:00:00"}]
    other = lc.previous_stages(prev, source="b")
    assert other["stages"] is None and "another data source" in other["text"]
    same = lc.previous_stages(prev, source="a")
    assert same["stages"].to_dict("list") == {"customer_id": ["1", "2"], "stage": ["new", "mature"]}
    assert same["when"] == "2026-01-02"


def test_flow_matrix_hides_small_cells_and_flows_are_described():
    prev = pd.DataFrame({"customer_id": [str(i) for i in range(40)],
                         "stage": ["mature"] * 30 + ["new"] * 10})
    now = pd.DataFrame({"customer_id": list(range(3, 45)),          # 0-2 gone, 40-44 new
                        "stage": ["mature"] * 12 + ["declining"] * 15 + ["growing"] * 10 + ["new"] * 5})
    flows = lc.stage_flows(now, prev)
    assert flows["customers"].sum() == 45
    m = lc.flow_matrix(flows, min_size=10)
    assert m.loc["mature", "declining"] == "15 (50%)"
    assert m.loc["mature", lc.GONE] == "<10" and m.loc[lc.NOT_YET, "new"] == "<10"
    assert m.loc["new", "growing"] == "10 (100%)" and m.loc["new", "mature"] == ""
    text = lc.describe_flows(flows, min_size=10)
    assert "mature \u2192 declining (15)" in text and "15 customers slipped into decline" in text
    assert "5 customers are new" in text and "3 customers of the previous run" in text


def test_risk_summary_and_high_risk_list_leave_out_the_churned():
    table = pd.DataFrame({
        "customer_id": [1, 2, 3, 4, 5], "stage": ["churned", "mature", "declining", "new", "growing"],
        "p_alive": [0.1, 0.9, 0.5, 1.0, 0.8], "expected_purchases": [0.1, 3, 1, 2, 2],
        "clv": [500.0, 100.0, 300.0, 50.0, 20.0], "churn_probability": [0.99, 0.1, 0.8, 0.7, 0.4]})
    table["risk_level"] = lc.risk_levels(table["churn_probability"]).astype(object)
    risk = lc.risk_summary(table, active=lc.active_mask(table))
    assert risk["risk_level"].tolist() == ["low", "medium", "high"]
    assert risk["customers"].tolist() == [1, 1, 2] and risk["clv_total"].tolist() == [100.0, 20.0, 350.0]
    high = lc.high_risk_customers(table)
    assert high["customer_id"].tolist() == [3, 4]  # the churned customer 1 is a win-back case
    figures = lc.report_metrics(table=table)
    assert figures["share_high_risk"] == 0.5 and figures["active_customers"] == 4
    assert figures["customers"] == 5
    text = lc.describe_risk(risk)
    assert "Of 4 active customers" in text and "350" in text


def test_value_by_channel_needs_the_channel_column(orders_table, activity):
    import ibis as _ibis

    table = lc.lifecycle_table(activity, lc.assign_stages(activity))
    table["clv"] = 10.0
    table["risk_level"] = "low"
    profit = lc.profitability(activity, acquisition_cost=10, service_cost=1, margin=0.5)
    bare = _ibis.memtable(pd.DataFrame({"customer_id": activity["customer_id"]}))
    assert lc.value_by_channel(activity, table, profit, bare) is None
    assert lc.value_by_channel(activity, table, profit, None) is None
    ch = _ibis.memtable(pd.DataFrame({"customer_id": activity["customer_id"],
                                      "acquisition_channel": ["web"] * 6 + ["store"] * 2}))
    by = lc.value_by_channel(activity, table, profit, ch)
    assert by["acquisition_channel"].tolist() == ["web", "store"] and by["customers"].tolist() == [6, 2]
    blank = _ibis.memtable(pd.DataFrame({"customer_id": activity["customer_id"],
                                         "acquisition_channel": ["web"] * 5 + ["  ", None, "store"]}))
    assert lc.value_by_channel(activity, table, profit, blank)["acquisition_channel"].tolist() == [
        "web", lc.UNKNOWN_CHANNEL, "store"]
    per = profit["per_customer"]
    store = per["customer_id"].isin(activity["customer_id"].iloc[6:])
    assert by.loc[1, "share_below"] == pytest.approx((per.loc[store, "profit"] < 0).mean())
    assert by.loc[0, "mean_revenue"] == pytest.approx(activity["revenue"].iloc[:6].mean())


def test_churn_risk_says_what_a_short_history_lacks(orders_table):
    res = lc.churn_risk(orders_table, as_of="2023-06-30", start="2023-01-01", churn_window=180)
    assert res["model"] is None and res["scores"] is None
    assert "450 days" in res["needs"]


def test_metric_cards_put_the_kpis_first_and_keep_missing_figures():
    figures = {"bgnbd_r": 0.5, "clv_total": 1234.0, "churn_auc": None, "share_high_risk": 0.1,
               "share_new": 0.2}
    cards = lc.metric_cards(figures, horizon=6, currency="CNY")
    assert [c["key"] for c in cards if c["kpi"]] == ["clv_total", "share_high_risk"]
    assert cards[0]["label"] == "Customer value (CNY), next 6 months"
    auc = next(c for c in cards if c["key"] == "churn_auc")
    assert auc["value"] is None and not auc["kpi"]  # not computed: recorded, but no card
    assert next(c for c in cards if c["key"] == "share_new")["fmt"] == "{:.1%}"


def test_page_tables_show_ids_as_text_and_plain_headings():
    shown = lc.page_table(pd.DataFrame({"customer_id": [123456], "name": ["Ann Lee"], "clv": [1.5],
                                        "customers": [12]}))
    frame = shown["table"]
    assert frame.columns.tolist() == ["Customer", "name", "Value (CLV)", "Customers"]
    assert frame["Customer"].tolist() == ["123456"]
    assert shown["table_options"]["count_col"] == "Customers"
    assert lc.page_table(None) == {"table": None}


def _summary_frame() -> pd.DataFrame:
    """The simulated BG/NBD summary as clv.fit_value_models takes it (weeks)."""
    x, tx, T = _simulate_summary()
    s = pd.DataFrame({"customer_id": range(len(x)), "frequency": x, "recency": tx, "T": T,
                      "monetary": np.where(x > 0, 20.0 + x, 0.0)})
    s.attrs["time_unit"] = "W"
    return s


def test_parameter_table_states_each_estimate_in_words():
    s = _summary_frame()
    models = clv.fit_value_models(s, pnbd=False)
    table = lc.parameter_table(models)
    assert table["model"].tolist() == ["BG/NBD"] * 5 + ["Gamma-Gamma"] * 4
    bg = models.bgnbd.params_
    per_year = bg["r"] / bg["alpha"] * 365.25 / 7
    assert f"{per_year:.1f} purchases a year" in table.loc[1, "meaning"]
    assert table.loc[4, "value"] == f"{models.bgnbd.loglik_:,.1f}"


def _simulate_summary(n=2000, seed=3):
    rng = np.random.default_rng(seed)
    lam, p = rng.gamma(0.8, 1 / 2.0, n), rng.beta(1.0, 5.0, n)
    T = rng.uniform(5, 100, n)
    N = rng.poisson(lam * T)
    x = np.minimum(rng.geometric(p) - 1, N).astype(float)
    tx = np.where(x > 0, np.minimum(rng.beta(np.maximum(x, 1), N - x + 1) * T, T), 0.0)
    return x, tx, T


def test_charts_draw_what_they_say(orders_table, activity):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = lc.stage_summary(lc.assign_stages(activity))
    fig = lc.stage_chart(summary)
    assert len(fig.axes[0].patches) == 5
    plt.close(fig)
    check = {"by_frequency": pd.DataFrame({"calibration_purchases": ["0", "1", "2+"], "customers": [50, 4, 20],
                                           "actual": [0.5, 1.0, 2.0], "predicted": [0.6, 1.1, 1.8]}),
             "total": {"actual": 10.0, "predicted": 11.0, "customers": 74, "holdout_length": 13.0},
             "time_unit": "W"}
    fig = lc.holdout_chart(check, min_size=10)
    assert len(fig.axes[0].patches) == 4  # the group of 4 customers is left out
    assert "13 weeks" in fig.axes[0].get_title(loc="left")
    plt.close(fig)
    coh = lc.cohort_matrices(orders_table, as_of=AS_OF, min_size=1)
    fig = lc.cohort_chart(coh, "retention")
    rows = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert rows[-1] < "2025-06"  # the newest cohort has no month after its first yet
    plt.close(fig)
    sv = lc.churn_survival(activity)
    fig = lc.survival_chart(sv)
    assert fig.axes[0].get_ylim()[1] == pytest.approx(1.02)
    plt.close(fig)


@pytest.mark.postgres
def test_the_same_expressions_give_the_same_results_on_postgresql(pg_url, orders_table):
    """Summary, activity, cohorts and churn snapshots from PostgreSQL equal DuckDB's,
    on the orders and on the cached day table."""
    pg = ibis.connect(pg_url)
    frame = _orders().assign(status=["paid"] * 5 + [" Refunded"] + ["paid"] * (len(_orders()) - 6))
    remote = pg.create_table("lc_orders", frame, overwrite=True)
    local = ibis.duckdb.connect().create_table("lc_orders", frame)
    try:
        for a, b in ((remote, local), (lc.purchase_days(remote), lc.purchase_days(local))):
            pd.testing.assert_frame_equal(
                clv.transaction_summary(a, calibration_end="2024-12-31", observation_end=AS_OF, time_unit="W"),
                clv.transaction_summary(b, calibration_end="2024-12-31", observation_end=AS_OF, time_unit="W"),
                check_dtype=False)
            pd.testing.assert_frame_equal(lc.customer_activity(a, as_of=AS_OF), lc.customer_activity(b, as_of=AS_OF),
                                          check_dtype=False)
            ca, cb = lc.cohort_matrices(a, as_of=AS_OF, min_size=1), lc.cohort_matrices(b, as_of=AS_OF, min_size=1)
            pd.testing.assert_frame_equal(ca.retention, cb.retention, check_dtype=False)
            pd.testing.assert_frame_equal(ca.revenue, cb.revenue, check_dtype=False)
            snaps = ["2024-06-30", "2024-12-31"]
            pd.testing.assert_frame_equal(lc.churn_snapshots(a, snaps, observation_end=AS_OF),
                                          lc.churn_snapshots(b, snaps, observation_end=AS_OF), check_dtype=False)
    finally:
        pg.drop_table("lc_orders")


def test_snapshots_can_sample_customers_but_score_everyone(population):
    orders, as_of, dates, snaps, _ = population
    dates_all = dates["train"] + [dates["test"], dates["score"]]
    few = lc.churn_snapshots(orders, dates_all, churn_window=180, observation_end=as_of, max_customers=500,
                             keep_all=[dates["score"]], random_state=1)
    per = few.groupby("snapshot")["customer_id"].apply(set)
    assert len(per[pd.Timestamp(as_of)]) == 3000  # scored: everyone
    sample = set().union(*[per[pd.Timestamp(d)] for d in dates["train"] + [dates["test"]]])
    assert len(sample) <= 500 and len(per[pd.Timestamp(dates["test"])]) > 300
    # the sampled rows are the full frame's rows, unchanged
    full = snaps.set_index(["snapshot", "customer_id"])
    part = few[few["snapshot"] == pd.Timestamp(dates["test"])].set_index(["snapshot", "customer_id"])
    pd.testing.assert_frame_equal(part, full.loc[part.index], check_dtype=False)


# ------------------------------------------------------------------ awkward shapes (each a crash once)

def _uniform_orders(n_customers=400, n_orders=3200, days=500, seed=0) -> pd.DataFrame:
    """A plain export: orders spread uniformly over ``days`` days."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "customer_id": rng.integers(1, n_customers + 1, n_orders),
        "order_date": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, days, n_orders), unit="D"),
        "amount": rng.gamma(2.0, 30.0, n_orders).round(2)})


def test_churn_model_leaves_out_signals_missing_in_every_training_row():
    """500 days of orders: the one training snapshot lies within ``recent_days``
    of the first order, so ``trend`` is missing for every training customer
    (scikit-learn's binning fails on an all-missing column)."""
    orders = _uniform_orders()
    dates = lc.snapshot_dates("2025-05-14", churn_window=180, start="2024-01-01")
    snaps = lc.churn_snapshots(orders, dates["train"] + [dates["test"], dates["score"]], churn_window=180,
                               observation_end="2025-05-14")
    train = snaps[snaps["snapshot"].isin(pd.to_datetime(dates["train"]))]
    assert train["trend"].isna().all() and snaps["trend"].notna().any()
    model = lc.ChurnModel(churn_window=180).fit(snaps)
    assert "trend" not in model.features_ and "recency_days" in model.features_
    assert lc.churn_scores(model, snaps, as_of="2025-05-14")["churn_probability"].between(0, 1).all()


@pytest.mark.parametrize("shape", ["one_day", "one_order", "small_cohorts", "zero_amounts"])
def test_cohort_sections_say_what_they_need_instead_of_drawing_nothing(shape):
    one_day = pd.DataFrame({"customer_id": range(60), "order_date": pd.Timestamp("2025-11-11"), "amount": 30.0})
    shapes = {
        "one_day": one_day,
        "one_order": one_day.head(1),
        # 50 monthly buyers, one cohort of fewer than ten per month
        "small_cohorts": pd.DataFrame([(c, d, 25.0) for c in range(50)
                                       for d in pd.date_range("2024-01-01", "2024-12-01", freq="MS")
                                       if d.month >= c % 12 + 1], columns=["customer_id", "order_date", "amount"]),
        "zero_amounts": _uniform_orders(days=400).assign(amount=0.0),
    }
    orders = shapes[shape]
    co = lc.cohort_matrices(orders)
    for what in ("retention", "revenue"):
        needs = lc.cohort_needs(co, what)
        if needs is None:
            assert lc.cohort_chart(co, what) is not None
        else:
            assert "cohort" in needs
    if shape != "zero_amounts":
        assert lc.cohort_needs(co, "retention") is not None
    assert isinstance(lc.describe_cohort_revenue(co), str)


def test_report_dates_take_the_snapshot_date_of_every_order_and_name_missing_purchases():
    orders = pd.DataFrame({"customer_id": [1, 1, 2], "amount": [10.0, 12.0, 5.0],
                           "order_date": pd.to_datetime(["2025-01-01", "2025-03-01", "2025-04-01"]),
                           "status": ["paid", "paid", "refunded"]})
    days = lc.purchase_days(orders)
    d = lc.report_dates(days, orders=orders)
    assert d["as_of"] == dt.date(2025, 4, 1) and d["latest"] == dt.date(2025, 3, 1)  # engine.snapshot_date
    from crmlab.exceptions import NoDataError
    refunded = orders.assign(status="refunded")
    with pytest.raises(NoDataError, match="no purchases"):
        lc.report_dates(lc.purchase_days(refunded), orders=refunded)


def test_calibration_fit_sits_beside_the_full_fit_in_table_and_metrics():
    s = _summary_frame()
    full = clv.fit_value_models(s, pnbd=False)
    early = s.assign(T=s["T"] * 0.7, recency=np.minimum(s["recency"], s["T"] * 0.7))
    early.attrs["time_unit"] = "W"
    cal = clv.fit_value_models(early, pnbd=False)
    table = lc.parameter_table(full, calibration=cal)
    assert list(table.columns) == ["model", "parameter", "calibration", "full_period", "meaning"]
    row = table[(table["model"] == "BG/NBD") & (table["parameter"] == "r")].iloc[0]
    assert (row["calibration"], row["full_period"]) == (f"{cal.bgnbd.params_['r']:.4g}", f"{full.bgnbd.params_['r']:.4g}")
    page = lc.page_table(table)["table"]
    assert {"Calibration period", "Full period"} <= set(page.columns)
    m = lc.report_metrics(models=full, calibration_models=cal)
    assert m["calibration_bgnbd_alpha"] == pytest.approx(cal.bgnbd.params_["alpha"])
    assert m["calibration_gg_q"] == pytest.approx(cal.gg.params_["q"]) and m["calibration_pnbd_s"] is None
    keys = {f"calibration_{k}" for k in ("bgnbd_r", "bgnbd_alpha", "bgnbd_a", "bgnbd_b", "pnbd_r", "pnbd_alpha",
                                         "pnbd_s", "pnbd_beta", "gg_p", "gg_q", "gg_v")}
    assert keys <= set(m) and all(lc.report_metrics(models=full)[k] is None for k in keys)
