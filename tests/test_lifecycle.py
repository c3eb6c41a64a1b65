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
