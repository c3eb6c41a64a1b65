"""Tests of crmlab.campaigns: published numbers for the intervals and power,
simulation checks (coverage, Welch vs bootstrap, difference-in-differences),
and the counting rules on tiny contact tables."""

from __future__ import annotations

import datetime as dt
import json
import math

import ibis
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from conftest import STATUS_ORDERS, small_export
from crmlab import campaigns as cp
from crmlab.exceptions import DataContractError, ParameterError


class FakeData:
    """The slice of the Dataset interface the campaigns report uses."""

    def __init__(self, **frames):
        self.con = ibis.duckdb.connect()
        self.tables = {k: self.con.create_table(k, v) for k, v in frames.items()}

    def has(self, table, column=None):
        return table in self.tables and (column is None or column in self.tables[table].columns)

    def table(self, name):
        return self.tables[name]


def _tbl(df: pd.DataFrame, name="t"):
    return ibis.duckdb.connect().create_table(name, df)


# --------------------------------------------------------------------------
# intervals and tests against published numbers
# --------------------------------------------------------------------------

def test_wilson_reproduces_newcombe_1998a_table_1():
    # Newcombe (1998a) Stat Med 17:857, Table I, method 3 (Wilson score)
    cases = [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611),
             (1, 29, 0.0061, 0.1718)]
    x, n, lo, hi = map(np.array, zip(*cases))
    low, high = cp.wilson_interval(x, n)
    assert np.round(low, 4).tolist() == lo.tolist()
    assert np.round(high, 4).tolist() == hi.tolist()
    assert np.isnan(cp.wilson_interval(0, 0)[0])


def test_newcombe_reproduces_newcombe_1998_table_2():
    # Newcombe (1998) Stat Med 17:873, Table II, method 10 (hybrid score)
    low, high = cp.newcombe_interval([56, 9], [70, 10], [48, 3], [80, 10])
    assert np.round(low, 4).tolist() == [0.0524, 0.1705]
    assert np.round(high, 4).tolist() == [0.3339, 0.8090]


def test_newcombe_is_the_hybrid_of_two_wilson_intervals():
    rng = np.random.default_rng(0)
    n1, n2 = rng.integers(5, 500, 50), rng.integers(5, 500, 50)
    x1, x2 = rng.binomial(n1, 0.3), rng.binomial(n2, 0.2)
    l1, u1 = cp.wilson_interval(x1, n1)
    l2, u2 = cp.wilson_interval(x2, n2)
    p1, p2 = x1 / n1, x2 / n2
    low, high = cp.newcombe_interval(x1, n1, x2, n2)
    np.testing.assert_allclose(low, p1 - p2 - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2))
    np.testing.assert_allclose(high, p1 - p2 + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


def test_newcombe_coverage_on_simulated_randomised_campaigns():
    # 4000 campaigns with a planted uplift of 1.5 points on a 5% baseline
    rng = np.random.default_rng(42)
    reps, n_t, n_c, p_c, up = 4000, 3000, 2000, 0.05, 0.015
    x_t, x_c = rng.binomial(n_t, p_c + up, reps), rng.binomial(n_c, p_c, reps)
    low, high = cp.newcombe_interval(x_t, n_t, x_c, n_c)
    coverage = np.mean((low <= up) & (up <= high))
    assert 0.935 <= coverage <= 0.965          # 95% nominal, +-4 standard errors


def test_two_proportion_test_is_the_pooled_z_test():
    # 56/70 vs 48/80: pooled p = 104/150, z = 0.2 / sqrt(p(1-p)(1/70 + 1/80)) = 2.6502
    p = cp.two_proportion_test(56, 70, 48, 80)
    pooled = 104 / 150
    z = 0.2 / math.sqrt(pooled * (1 - pooled) * (1 / 70 + 1 / 80))
    assert z == pytest.approx(2.6502, abs=1e-4)
    assert p[()] == pytest.approx(2 * stats.norm.sf(z))
    assert cp.two_proportion_test(0, 10, 0, 10)[()] == 1.0


def test_welch_from_summaries_matches_scipy_on_raw_data():
    rng = np.random.default_rng(1)
    a, b = rng.normal(10, 3, 400), rng.normal(9, 5, 250)
    w = cp.welch_test(a.mean(), a.var(ddof=1), len(a), b.mean(), b.var(ddof=1), len(b))
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert w["p_value"][()] == pytest.approx(ref.pvalue)
    ci = ref.confidence_interval()
    assert (w["ci_low"][()], w["ci_high"][()]) == pytest.approx((ci.low, ci.high))


def test_bootstrap_agrees_with_welch_on_large_normal_data():
    rng = np.random.default_rng(2)
    a, b = rng.normal(50, 10, 20_000), rng.normal(49.5, 12, 15_000)
    w = cp.welch_test(a.mean(), a.var(ddof=1), len(a), b.mean(), b.var(ddof=1), len(b))
    lo, hi = cp.bootstrap_mean_difference(a, len(a), b, len(b), n_boot=1000, rng=3)
    width = w["ci_high"][()] - w["ci_low"][()]
    assert abs(lo - w["ci_low"][()]) < 0.1 * width
    assert abs(hi - w["ci_high"][()]) < 0.1 * width


def test_zero_inflated_bootstrap_matches_the_plain_bootstrap():
    # the shortcut (only non-zero values) must give the same distribution as
    # resampling the full vector with its zeros
    rng = np.random.default_rng(4)
    n, k = 5000, 150
    nonzero = rng.lognormal(4, 1.2, k)
    full = np.r_[nonzero, np.zeros(n - k)]
    fast = cp.bootstrap_means(nonzero, n, n_boot=4000, rng=5)
    plain = full[rng.integers(0, n, size=(4000, n))].mean(axis=1)
    assert fast.mean() == pytest.approx(full.mean(), rel=0.02)
    assert fast.std() == pytest.approx(plain.std(), rel=0.08)
    assert fast.std() == pytest.approx(full.std(ddof=1) / math.sqrt(n), rel=0.08)
    # seeded: the same seed gives the same replicates
    np.testing.assert_array_equal(cp.bootstrap_means(nonzero, n, n_boot=50, rng=9),
                                  cp.bootstrap_means(nonzero, n, n_boot=50, rng=9))


def test_holm_and_bh_ordering():
    p = [0.01, 0.04, 0.03, 0.005, np.nan]
    holm = cp.adjust_pvalues(p, "holm")
    bh = cp.adjust_pvalues(p, "bh")
    # Holm: sorted p x (4, 3, 2, 1), made monotone -> 0.02, 0.03, 0.06, 0.06
    np.testing.assert_allclose(holm[:4], [0.03, 0.06, 0.06, 0.02])
    # BH: sorted p x 4 / rank, made monotone from the top -> 0.02, 0.02, 0.04, 0.04
    np.testing.assert_allclose(bh[:4], [0.02, 0.04, 0.04, 0.02])
    assert np.isnan(holm[4]) and np.isnan(bh[4])
    assert (bh[:4] <= holm[:4]).all() and (holm[:4] >= np.asarray(p[:4])).all()
    # the adjustment keeps the order of the raw p-values (ties allowed)
    order = np.argsort(p[:4])
    assert (np.diff(holm[order]) >= 0).all() and (np.diff(bh[order]) >= 0).all()
    with pytest.raises(ParameterError):
        cp.adjust_pvalues(p, "fisher")


# --------------------------------------------------------------------------
# power
# --------------------------------------------------------------------------

def test_sample_size_matches_cohen_and_fleiss():
    # Cohen (1988) Table 6.4.1: h = 0.20, two-sided alpha 0.05, power 0.80 -> n = 392
    p2 = math.sin(math.asin(math.sqrt(0.5)) + 0.1) ** 2          # h = 0.2 from 0.5
    assert abs(cp.sample_size(0.5, p2 - 0.5) - 392) <= 1
    # 50% -> 60%: 2 (z_.975 + z_.8)^2 / h^2 = 387.2 per group (Fleiss' formula gives 387.3)
    assert cp.sample_size(0.5, 0.1) == 388
    assert cp.sample_size(0.5, 0.2, relative=True) == 388
    # a control group twice as large needs a smaller treatment group
    assert cp.sample_size(0.5, 0.1, ratio=2.0) < 388
    with pytest.raises(ParameterError):
        cp.sample_size(0.5, 0.0)


def test_minimum_detectable_effect_inverts_sample_size():
    n = cp.sample_size(0.05, 0.01)
    mde = cp.minimum_detectable_effect(n, n, 0.05)
    assert mde == pytest.approx(0.01, rel=0.01)
    assert mde <= 0.01                                    # n was rounded up
    assert cp.minimum_detectable_effect(4 * n, 4 * n, 0.05) < mde
    assert math.isnan(cp.minimum_detectable_effect(0, 10, 0.05))


# --------------------------------------------------------------------------
# counting contacts
# --------------------------------------------------------------------------

def _contacts():
    """Campaign A and B each have a control group; customer 9 is in both; C
    uses A's control group; D has no control group."""
    rows = [
        # campaign, customer, group, delivered, opened, clicked, converted, revenue
        ("A", 1, "treatment", True, True, True, 1, 100.0),
        ("A", 2, "Treatment ", True, False, False, 0, 0.0),
        ("A", 3, "treatment", False, False, False, 0, None),
        ("A", 9, "control", None, None, None, 0, 0.0),
        ("A", 8, "control", None, None, None, 1, 50.0),
        ("B", 4, "treatment", True, True, False, 1, 30.0),
        ("B", 9, "control", None, None, None, 1, 20.0),
        ("C", 5, "treatment", True, True, True, 1, 70.0),
        ("C", 6, "treatment", True, False, False, 0, 0.0),
        ("D", 7, "treatment", True, True, True, 0, 0.0),
    ]
    return pd.DataFrame(rows, columns=["campaign_id", "customer_id", "group", "delivered",
                                       "opened", "clicked", "converted", "revenue"])


def test_aggregates_count_shared_controls_per_campaign():
    agg = cp.contact_aggregates(_tbl(_contacts())).set_index(["campaign_id", "group"])
    assert agg.loc[("A", "treatment"), "contacts"] == 3          # "Treatment " normalised
    assert agg.loc[("A", "control"), "contacts"] == 2
    assert agg.loc[("B", "control"), "contacts"] == 1            # customer 9 counts again
    assert agg.loc[("A", "treatment"), "delivered"] == 2
    assert agg.loc[("A", "control"), "delivered_known"] == 0
    assert agg.loc[("A", "treatment"), "revenue"] == 100
    assert agg.loc[("A", "treatment"), "revenue_nonzero"] == 1
    assert agg.loc[("A", "control"), "revenue_sq"] == 2500
    assert ("C", "control") not in agg.index


def test_shared_control_group_comparison():
    agg = cp.contact_aggregates(_tbl(_contacts()))
    comp = cp.compare_groups(agg, control_from={"C": "A"}, n_boot=0)
    conv = comp[comp.metric == "conversion"].set_index("campaign_id")
    assert sorted(conv.index) == ["A", "B", "C"]                  # D has no control
    assert conv.loc["C", "control_campaign"] == "A"
    assert conv.loc["C", "n_control"] == 2 and conv.loc["C", "control"] == 0.5
    assert conv.loc["B", "n_control"] == 1 and conv.loc["B", "control"] == 1.0
    assert conv.loc["A", "treatment"] == pytest.approx(1 / 3)
    # no clicks recorded for the control groups: no click comparison
    assert "click_rate" not in set(comp.metric)
    srm = cp.sample_ratio_check(agg, control_from={"C": "A"})
    assert sorted(srm.campaign_id) == ["A", "B"]


def test_flags_as_timestamps_and_missing_revenue():
    df = _contacts().drop(columns=["revenue"])
    df["converted"] = np.where(df.converted == 1, pd.Timestamp("2024-05-02"), pd.NaT)
    df["converted"] = pd.to_datetime(df["converted"])
    agg = cp.contact_aggregates(_tbl(df)).set_index(["campaign_id", "group"])
    assert agg.loc[("A", "treatment"), "converted"] == 1
    assert agg["revenue"].isna().all()
    comp = cp.compare_groups(agg.reset_index(), n_boot=0)
    assert set(comp.metric) == {"conversion"}
    with pytest.raises(DataContractError):
        cp.contact_aggregates(_tbl(df.drop(columns=["group"])))


def test_funnel_rates_and_costs():
    info = cp.campaign_info(pd.DataFrame({
        "campaign_id": ["A", "B", "C", "D"], "channel": ["email", "sms", "email", "app_push"],
        "cost": [30.0, np.nan, np.nan, 5.0], "cost_per_contact": [np.nan, 2.0, np.nan, np.nan]}))
    agg = cp.contact_aggregates(_tbl(_contacts()))
    f = cp.funnel(agg, info).set_index("campaign_id")
    assert f.loc["A", "contacted"] == 3 and f.loc["A", "delivered"] == 2
    assert f.loc["A", "converted_rate"] == pytest.approx(1 / 3)
    assert f.loc["A", "opened_step_rate"] == pytest.approx(1 / 2)
    assert f.loc["A", "converted_ci_low"] < 1 / 3 < f.loc["A", "converted_ci_high"]
    assert f.loc["A", "cost_per_conversion"] == 30.0
    assert f.loc["B", "cost"] == 2.0                               # cost per contact x 1
    assert math.isnan(f.loc["C", "cost"])
    ch = cp.channel_summary(agg, info).set_index("channel")
    assert ch.loc["email", "campaigns"] == 2 and ch.loc["email", "contacted"] == 5
    long = cp.funnel_stages(f.reset_index())
    assert set(long.stage) == set(cp.FUNNEL_STAGES)


def test_impact_roi_and_interval():
    comp = pd.DataFrame({
        "campaign_id": ["X", "X"], "metric": ["conversion", "revenue_per_contact"],
        "treatment": [0.06, 5.0], "control": [0.05, 4.0], "uplift": [0.01, 1.0],
        "ci_low": [0.0, 0.5], "ci_high": [0.02, 1.5], "n_treatment": [1000, 1000],
        "n_control": [1000, 1000]})
    fun = pd.DataFrame({"campaign_id": ["X"], "cost": [200.0]})
    imp = cp.impact(comp, fun, margin=0.5).iloc[0]
    assert imp.incremental_conversions == pytest.approx(10)
    assert imp.incremental_revenue == pytest.approx(1000)
    assert imp.roi == pytest.approx((0.5 * 1000 - 200) / 200)
    assert imp.roi_ci_low == pytest.approx((0.5 * 500 - 200) / 200)
    assert imp.roi_ci_high == pytest.approx((0.5 * 1500 - 200) / 200)
    assert imp.cost_per_incremental_conversion == pytest.approx(20)
    with pytest.raises(ParameterError):
        cp.impact(comp, fun, margin=30)


# --------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------

def _agg_split(n_t, n_c, cid="S"):
    return pd.DataFrame({"campaign_id": [cid, cid], "group": ["treatment", "control"],
                         "contacts": [float(n_t), float(n_c)]})


def test_srm_flags_planted_mismatch_and_not_a_fair_split():
    info = cp.campaign_info(pd.DataFrame({"campaign_id": ["S"], "planned_treatment_share": [0.5]}))
    bad = cp.sample_ratio_check(_agg_split(53_000, 47_000), info)
    assert bool(bad.mismatch.iloc[0]) and bad.p_value.iloc[0] < 1e-6
    fair = cp.sample_ratio_check(_agg_split(50_150, 49_850), info)   # z = 0.95
    assert not fair.mismatch.iloc[0]
    # an 80/20 plan: 80,000 / 20,000 is fine, 50/50 is not
    info80 = info.assign(planned_treatment_share=0.8)
    assert not cp.sample_ratio_check(_agg_split(80_000, 20_000), info80).mismatch.iloc[0]
    assert cp.sample_ratio_check(_agg_split(50_000, 50_000), info80).mismatch.iloc[0]
    # no planned share: 0.5 assumed, and said so
    r = cp.sample_ratio_check(_agg_split(53_000, 47_000))
    assert r.planned_share_assumed.iloc[0] and r.mismatch.iloc[0]
    warns = cp.check_warnings(bad, pd.DataFrame(columns=["campaign_id", "imbalanced"]))
    assert len(warns) == 1 and "S" in warns[0] and "53.0%" in warns[0]


def test_chance_imbalance_is_worded_as_chance():
    bal = pd.DataFrame({"campaign_id": ["K"], "covariate": ["pre_spend"],
                        "label": ["spend in the year before"], "smd": [0.15], "p_value": [0.2],
                        "imbalanced": [True], "beyond_chance": [False]})
    warns = cp.check_warnings(pd.DataFrame(columns=["mismatch"]), bal)
    assert len(warns) == 1 and "now and then" in warns[0] and "SMD +0.15" in warns[0]


def test_contact_features_hand_computed():
    # customer 1: three orders before the start on 2024-06-01, one after (ignored)
    orders = pd.DataFrame({
        "order_id": [1, 2, 3, 4],
        "customer_id": [1, 1, 1, 1],
        "order_date": pd.to_datetime(["2024-05-01", "2024-05-15", "2024-05-20", "2024-06-05"]),
        "amount": [80.0, 20.0, 50.0, 999.0], "discount": [20.0, 0.0, 0.0, 0.0],
        "channel": ["app", "web", "app", "web"]})
    lines = pd.DataFrame({
        "order_id": [1, 2, 3, 3, 4], "product_id": [1, 2, 1, 2, 2],
        "category": ["Home", "Sports", "Home", "Sports", "Sports"],
        "quantity": [2, 1, 1, 1, 50], "unit_price": [40.0, 20.0, 30.0, 20.0, 20.0]})
    contacts = pd.DataFrame({"campaign_id": ["K", "K"], "customer_id": [1, 2],
                             "group": ["treatment", "control"], "converted": [True, False]})
    campaigns = pd.DataFrame({"campaign_id": ["K"], "start_date": [pd.Timestamp("2024-06-01")]})
    customers = pd.DataFrame({"customer_id": [1, 2], "gender": ["F", "M"],
                              "birth_date": pd.to_datetime(["1990-06-01", "2000-01-01"])})
    con = ibis.duckdb.connect()
    f = cp.contact_features(con.create_table("c", contacts), con.create_table("k", campaigns),
                            con.create_table("o", orders), con.create_table("cu", customers),
                            order_lines=con.create_table("l", lines)).to_pandas()
    one = f.set_index("customer_id").loc[1]
    assert (one.pre_orders, one.pre_spend, one.pre_aov) == (3, 150.0, 50.0)
    assert one.pre_discount_share == pytest.approx(20 / 170)
    assert (one.recency_days, one.tenure_days) == (12, 31)
    assert one.order_channel == "app" and one.converted == 1
    assert one.cat_home == pytest.approx(110 / 150) and one.cat_sports == pytest.approx(40 / 150)
    assert one.age == pytest.approx(34.0, abs=0.1) and one.gender == "F"
    two = f.set_index("customer_id").loc[2]
    assert (two.pre_orders, two.recency_days, two.tenure_days) == (0, 365, 0)
    assert pd.isna(two.pre_aov) and pd.isna(two.cat_home)
    now = cp.customer_features(con.table("o"), con.table("cu"), as_of="2024-06-10",
                               order_lines=con.table("l")).to_pandas().set_index("customer_id")
    assert now.loc[1, "pre_orders"] == 4 and now.loc[1, "recency_days"] == 6


def _balance_world(imbalanced: bool, seed=0):
    rng = np.random.default_rng(seed)
    n = 2000
    cust = np.arange(n)
    group = np.where(cust % 2 == 0, "treatment", "control")
    contacts = pd.DataFrame({"campaign_id": "K", "customer_id": cust, "group": group,
                             "converted": 0, "revenue": 0.0})
    rate = np.where((group == "treatment") & imbalanced, 4.0, 2.0)
    k = rng.poisson(rate)
    cid = np.repeat(cust, k)
    orders = pd.DataFrame({
        "order_id": np.arange(len(cid)), "customer_id": cid,
        "order_date": pd.Timestamp("2024-06-01") - pd.to_timedelta(rng.integers(1, 300, len(cid)),
                                                                   unit="D"),
        "amount": rng.gamma(2, 40, len(cid))})
    # orders after the start must not count: give every control customer 5 of them
    late = pd.DataFrame({"order_id": np.arange(len(cid), len(cid) + 5 * n // 2),
                         "customer_id": np.repeat(cust[group == "control"], 5),
                         "order_date": pd.Timestamp("2024-06-03"), "amount": 10.0})
    orders = pd.concat([orders, late], ignore_index=True)
    campaigns = pd.DataFrame({"campaign_id": ["K"], "start_date": [pd.Timestamp("2024-06-01")],
                              "end_date": [pd.Timestamp("2024-06-07")]})
    return contacts, campaigns, orders


@pytest.mark.parametrize("imbalanced", [True, False])
def test_smd_flags_imbalance(imbalanced):
    contacts, campaigns, orders = _balance_world(imbalanced)
    con = ibis.duckdb.connect()
    feats = cp.contact_features(con.create_table("c", contacts), con.create_table("k", campaigns),
                                con.create_table("o", orders))
    bal = cp.balance_check(feats).set_index("covariate")
    assert bal.loc["pre_orders", "imbalanced"] == imbalanced
    if imbalanced:
        assert bal.loc["pre_orders", "smd"] > 0.5
        assert bal.loc["pre_orders", "beyond_chance"]
        assert bal.loc["pre_orders", "mean_treatment"] == pytest.approx(4.0, rel=0.1)
        warns = cp.check_warnings(pd.DataFrame(columns=["mismatch"]), bal.reset_index())
        assert len(warns) == 1 and "orders in the year before" in warns[0]
        assert "probably not random" in warns[0]
    else:
        assert bal["smd"].abs().max() < 0.1
        assert not bal["beyond_chance"].any()
    # the late orders (after the start) are invisible
    assert bal.loc["pre_orders", "mean_control"] == pytest.approx(2.0, rel=0.1)


# --------------------------------------------------------------------------
# campaigns without a control group
# --------------------------------------------------------------------------

def _panel(n=30_000, effect=0.3, treated_trend=0.0, seed=0):
    """Customers with their own order rate; heavier buyers are more likely to
    be contacted; a common (additive: parallel) trend over three windows; a
    planted effect on the treated in the last window (and optionally a
    different trend for them, which breaks parallel trends)."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(1.5, 0.6, n)
    treated = rng.random(n) < 1 / (1 + np.exp(-(lam - 1.2) * 2))
    trend = np.array([0.0, 0.1, 0.25])
    bump = np.where(treated, treated_trend, 0.0)
    mean = lam[:, None] + trend[None, :] + np.c_[np.zeros(n), bump, 2 * bump]
    y = rng.poisson(mean)
    y[:, 2] += rng.poisson(np.where(treated, effect, 0.0))
    hist = rng.poisson(lam * 6)
    return pd.DataFrame({
        "treated": treated, "orders_m2": y[:, 0], "orders_m1": y[:, 1], "orders_0": y[:, 2],
        "revenue_m2": y[:, 0] * 50.0, "revenue_m1": y[:, 1] * 50.0, "revenue_0": y[:, 2] * 50.0,
        "f_orders": hist, "f_spend": hist * 50.0,
        "f_recency": np.where(hist > 0, rng.integers(1, 200, n), 365),
        "f_tenure": rng.integers(0, 1000, n)})


def test_did_recovers_planted_effect_and_placebo_is_zero():
    res = cp.did_estimate(_panel(), seed=1).set_index("outcome")
    orders = res.loc["orders"]
    assert orders.ci_low <= 0.3 <= orders.ci_high
    assert abs(orders.effect - 0.3) < 0.06
    assert orders.placebo_ci_low <= 0 <= orders.placebo_ci_high
    assert orders.parallel_trends == "plausible"
    assert res.loc["revenue", "effect"] == pytest.approx(50 * orders.effect)
    assert orders.incremental_total == pytest.approx(orders.effect * orders.n_treated)
    # a naive before/after on the treated alone would be biased by the common trend
    assert orders.treated_after - orders.treated_before > orders.effect + 0.1


def test_did_matches_exactly_within_strata():
    panel = _panel(n=6000, seed=3)
    panel["country"] = np.where(np.arange(len(panel)) % 2 == 0, "CN", "US")
    # a country effect on the change: only an exact match removes it
    panel.loc[panel.country == "CN", "orders_0"] += 1
    panel.loc[panel.treated & (panel.country == "US"), "treated"] = False
    res = cp.did_estimate(panel, exact=("country",), seed=1).set_index("outcome")
    assert res.loc["orders", "ci_low"] <= 0.3 <= res.loc["orders", "ci_high"]
    loose = cp.did_estimate(panel, seed=1).set_index("outcome")
    assert loose.loc["orders", "effect"] > 0.8


def test_did_placebo_catches_different_pre_trends():
    res = cp.did_estimate(_panel(treated_trend=0.2, seed=2), seed=1).set_index("outcome")
    assert res.loc["orders", "parallel_trends"] == "doubtful"
    assert res.loc["orders", "placebo"] > 0.1


def test_interrupted_time_series_recovers_a_level_shift():
    rng = np.random.default_rng(3)
    days = pd.date_range("2024-01-01", periods=120)
    t = np.arange(120)
    y = 50 + 0.1 * t + np.where(t >= 90, 8, 0) + rng.normal(0, 2, 120)
    res = cp.interrupted_time_series(pd.Series(y, index=days), days[90])
    assert res["level_ci_low"] <= 8 <= res["level_ci_high"]
    assert res["incremental_total"] == pytest.approx(8 * 30, rel=0.25)
    assert res["n_after"] == 30


def test_quasi_experiment_on_engine_tables():
    rng = np.random.default_rng(5)
    n = 4000
    cust = np.arange(n)
    lam = rng.gamma(2, 0.01, n)                             # orders per day
    start = pd.Timestamp("2024-05-01")
    treated = cust[rng.random(n) < 0.4]
    rows = []
    for day in pd.date_range("2023-06-01", "2024-06-30"):
        boost = 0.01 if day >= start else 0.0
        k = rng.poisson(lam + np.isin(cust, treated) * boost)
        rows.append(pd.DataFrame({"customer_id": np.repeat(cust, k), "order_date": day}))
    orders = pd.concat(rows, ignore_index=True).assign(amount=40.0)
    contacts = pd.DataFrame({"campaign_id": "Q", "customer_id": treated, "group": "treatment"})
    info = cp.campaign_info(pd.DataFrame({"campaign_id": ["Q"], "start_date": [start],
                                          "end_date": [start + pd.Timedelta(days=6)]}))
    con = ibis.duckdb.connect()
    q = cp.quasi_experiment("Q", con.create_table("c", contacts), info,
                            con.create_table("o", orders), window_days=30, seed=1)
    assert q["design"] == "did" and "not a randomised result" in q["label"]
    row = q["table"].set_index("outcome").loc["orders"]
    assert row.ci_low <= 0.3 <= row.ci_high                 # 0.01 per day x 30 days
    assert row.placebo_ci_low <= 0 <= row.placebo_ci_high
    # with (almost) everyone contacted there is nobody to match: interrupted time series
    everyone = pd.DataFrame({"campaign_id": "Q", "customer_id": cust, "group": "treatment"})
    q2 = cp.quasi_experiment("Q", con.create_table("e", everyone), info,
                             con.create_table("o2", orders), window_days=30)
    assert q2["design"] == "its" and q2["notes"]


# --------------------------------------------------------------------------
# the whole report on a tiny world
# --------------------------------------------------------------------------

def _world(seed=0):
    rng = np.random.default_rng(seed)
    n_cust = 6000
    customers = pd.DataFrame({
        "customer_id": np.arange(n_cust), "gender": rng.choice(["F", "M"], n_cust),
        "region": rng.choice(["East", "West", "North"], n_cust),
        "birth_date": (pd.Timestamp("1960-01-01")
                       + pd.to_timedelta(rng.integers(0, 15000, n_cust), unit="D")).date})
    no = 40_000
    orders = pd.DataFrame({
        "order_id": np.arange(no), "customer_id": rng.integers(0, n_cust, no),
        "order_date": pd.Timestamp("2023-01-01") + pd.to_timedelta(rng.integers(0, 560, no), unit="D"),
        "amount": rng.gamma(2, 50, no)})
    plan = [("UP", 0.5, 0.04, "email"), ("NONE", 0.8, 0.0, "sms"), ("HURT", 0.5, -0.03, "email"),
            ("NOCTRL", None, 0.0, "app_push")]
    contacts, camps = [], []
    for i, (cid, share, up, channel) in enumerate(plan):
        n = 5000
        cust = rng.choice(n_cust, n, replace=False)
        g = (np.where(rng.random(n) < share, "treatment", "control") if share
             else np.full(n, "treatment"))
        p = 0.08 + up * (g == "treatment")
        conv = rng.random(n) < p
        contacts.append(pd.DataFrame({
            "campaign_id": cid, "customer_id": cust, "group": g, "delivered": True,
            "opened": rng.random(n) < 0.4, "clicked": np.where(g == "treatment", rng.random(n) < 0.1, None),
            "converted": conv.astype(int), "revenue": np.where(conv, rng.lognormal(4, 1, n), 0.0)}))
        start = pd.Timestamp("2024-03-01") + pd.Timedelta(days=40 * i)
        camps.append({"campaign_id": cid, "name": f"Spring {cid.lower()}", "channel": channel,
                      "start_date": start, "end_date": start + pd.Timedelta(days=6),
                      "cost": 3000.0, "cost_per_contact": np.nan, "planned_treatment_share": share})
    return FakeData(campaign_contacts=pd.concat(contacts, ignore_index=True),
                    campaigns=pd.DataFrame(camps), orders=orders, customers=customers)


@pytest.fixture(scope="module")
def analysis():
    return cp.analyse(_world(), n_boot=300, n_permutations=20, seed=3)


def test_analyse_sections_and_exports(analysis):
    a = analysis
    conv = a.comparison[a.comparison.metric == "conversion"].set_index("campaign_id")
    assert sorted(conv.index) == ["HURT", "NONE", "UP"]
    assert conv.loc["UP", "significant"] and conv.loc["UP", "uplift"] > 0
    assert conv.loc["HURT", "significant"] and conv.loc["HURT", "uplift"] < 0
    assert (a.comparison.p_adjusted >= a.comparison.p_value).all()
    assert list(a.results_table().columns) == ["campaign_id", "metric", "treatment", "control",
                                               "uplift", "ci_low", "ci_high", "p_value",
                                               "p_adjusted"]
    assert [q["campaign_id"] for q in a.quasi] == ["NOCTRL"]
    assert a.quasi_table().design.iloc[0] == "did"
    assert not a.warnings                                    # randomised, planned split
    assert set(a.balance.campaign_id) == {"UP", "NONE", "HURT"}
    assert set(a.power.campaign_id) == {"UP", "NONE", "HURT"}
    assert set(a.uplift) == {"UP", "NONE", "HURT"}


def test_metrics_have_the_issue_names_and_raw_p_values(analysis):
    m = analysis.metrics()
    json.dumps(m)                                            # serialisable
    keys = {"n_treatment", "n_control", "conversion_treatment", "conversion_control",
            "uplift_conversion", "uplift_conversion_ci_low", "uplift_conversion_ci_high",
            "p_value_conversion", "revenue_per_contact_treatment", "revenue_per_contact_control",
            "incremental_revenue", "roi"}
    assert set(m["campaigns"]) == {"UP", "NONE", "HURT"}
    assert all(set(v) == keys for v in m["campaigns"].values())
    conv = analysis.comparison.query("metric == 'conversion'").set_index("campaign_id")
    assert m["campaigns"]["UP"]["p_value_conversion"] == conv.loc["UP", "p_value"]


def test_findings_and_paragraphs_are_written_from_numbers(analysis):
    f = analysis.findings(currency="CNY")
    assert 3 <= len(f) <= 5
    hurt = analysis.comparison.query("metric == 'conversion' and campaign_id == 'HURT'").iloc[0]
    assert any("HURT" in s and "stop or rework" in s and f"{-100 * hurt.uplift:.1f} points" in s
               for s in f)
    up = analysis.comparison.query("metric == 'conversion' and campaign_id == 'UP'").iloc[0]
    assert any(s.startswith("The strongest was UP") and f"{100 * up.treatment:.1f}%" in s for s in f)
    t = analysis.totals()
    assert any(f"CNY {abs(t['incremental_revenue']):,.0f} of revenue" in s
               and f"ROI {t['roi_overall']:+.0%}" in s for s in f)
    text = analysis.section_text()
    assert set(text) == set(cp.SECTIONS) | {"srm", "profile"}
    assert "Holm" in text["comparison"]
    assert "estimated, not measured" in text["quasi"] and "Parallel trends" in text["quasi"]
    assert "3 of 3 campaigns are as planned" in text["srm"]


def test_uplift_targets_export(analysis):
    data = _world()
    feats = cp.customer_features(data.table("orders"), data.table("customers"),
                                 as_of="2024-07-01").to_pandas()
    assert len(feats) == 6000 and feats.customer_id.is_unique
    targets = cp.uplift_targets(analysis.uplift, feats, top_share=0.1, only_better_than_random=False)
    assert list(targets.columns) == ["customer_id", "campaign_id", "uplift_score"]
    fitted = [c for c, r in analysis.uplift.items() if r.fitted]
    assert set(targets.campaign_id) == set(fitted)
    assert (targets.groupby("campaign_id").size() == 600).all()
    # the same through the analysis, with the features measured as for the contacts
    again = analysis.uplift_targets(data, as_of="2024-07-01", top_share=0.1,
                                    only_better_than_random=False)
    pd.testing.assert_frame_equal(again, targets)
    assert all(len(analysis.uplift[c].segments) == 5 for c in fitted)
    # by default only models that beat random targeting make the list: in this world the
    # effects are the same for everyone, so no ranking beats random
    good = {c for c, r in analysis.uplift.items() if r.better_than_random}
    assert set(analysis.uplift_targets(data, as_of="2024-07-01").campaign_id) == good


def test_missing_tables_are_reported():
    a = cp.analyse(FakeData(orders=pd.DataFrame({"customer_id": [1], "amount": [1.0]})))
    assert not any(a.available(s) for s in cp.SECTIONS)
    assert all("campaign_contacts" in a.needs[s][0] for s in cp.SECTIONS)
    text = a.section_text()
    assert all(text[s].startswith("Not available: needs campaign_contacts") for s in cp.SECTIONS)
    cards = {c["key"]: c["value"] for c in a.metric_cards()}
    assert cards["campaigns"] == {} and cards["campaigns_analysed"] == 0
    assert cards["incremental_revenue"] is None and cards["roi_overall"] is None
    assert 1 <= len(a.findings()) <= 5
    assert list(a.results_table().columns) == ["campaign_id", "metric", "treatment", "control",
                                               "uplift", "ci_low", "ci_high", "p_value",
                                               "p_adjusted"]
    assert all(cp.page_table(a, name)["table"] is None for name in cp.PAGE_TABLES)
    with pytest.raises(ParameterError):
        cp.analyse(_world(), correction="sidak")


def test_as_of_leaves_out_later_campaigns():
    a = cp.analyse(_world(), as_of="2024-04-15", quasi=False, uplift=False, n_boot=200)
    assert sorted(a.funnel.campaign_id) == ["NONE", "UP"]
    assert a.uplift == {} and a.quasi == []


# --------------------------------------------------------------------------
# the page: parameters, selection, totals, tables and charts
# --------------------------------------------------------------------------



def test_a_purchase_means_what_the_engine_says():
    from crmlab import engine

    data = FakeData(orders=STATUS_ORDERS)
    totals = engine.purchase_totals(data.table("orders"))
    assert totals == {"purchase_revenue": 390.0, "purchasing_customers": 4}   # paid, missing, shipped, completed
    orders = cp.purchase_orders(data)
    assert sorted(orders.to_pandas().order_id) == [1, 2, 3, 6]
    feats = cp.customer_features(orders, as_of=cp.snapshot_date(data), pre_days=3660).to_pandas()
    assert feats["pre_spend"].sum() == totals["purchase_revenue"]
    assert int((feats["pre_orders"] > 0).sum()) == totals["purchasing_customers"]
    # as_of cuts the orders at the end of that day
    early = cp.purchase_orders(data, "2024-02-05").to_pandas()
    assert sorted(early.order_id) == [1, 2]
    assert cp.purchase_orders(FakeData(campaigns=pd.DataFrame({"campaign_id": ["A"]}))) is None


@pytest.mark.parametrize("name, value", [("margin", 1.5), ("alpha", 0.6), ("correction", "sidak"),
                                         ("power", 1.0), ("target_uplift", 0), ("n_boot", 50),
                                         ("pre_days", 7), ("seed", -1), ("max_uplift_models", 99)])
def test_parameters_outside_their_domain_are_refused(name, value):
    with pytest.raises(ParameterError, match=f"^{name} must be"):
        cp.check_parameters(**{name: value})
    good = dict(margin=0.3, alpha=0.05, correction="bh", power=0.8, target_uplift=0.02, n_boot=0,
                pre_days=365, seed=0, max_uplift_models=0)
    assert cp.check_parameters(**good) == good


def test_power_table_plans_for_an_absolute_or_a_relative_rise():
    comp = pd.DataFrame({"campaign_id": ["A"], "metric": ["conversion"], "control": [0.05],
                         "uplift": [0.01], "n_treatment": [4000.0], "n_control": [4000.0]})
    absolute = cp.power_table(comp, target_uplift=0.02).iloc[0]
    assert absolute.n_needed_treatment == cp.sample_size(0.05, 0.02)
    relative = cp.power_table(comp, target_uplift=0.2, relative=True).iloc[0]
    assert relative.n_needed_treatment == cp.sample_size(0.05, 0.2, relative=True)
    # 4,000 per group detects a rise from 5% to 7% but not from 5% to 6%
    assert absolute.powered and not relative.powered


def test_uplift_candidates_are_the_largest_sound_randomised_campaigns():
    comp = pd.DataFrame({"campaign_id": ["A", "B", "C", "D"], "metric": "conversion",
                         "n_treatment": [100.0, 5000, 3000, 8000], "n_control": [100.0, 5000, 3000, 8000]})
    srm = pd.DataFrame({"campaign_id": ["A", "B", "C", "D"], "mismatch": [False, False, False, True]})
    bal = pd.DataFrame({"campaign_id": ["C"], "beyond_chance": [False], "imbalanced": [True]})
    chosen, note = cp.uplift_candidates(comp, srm, bal, max_models=2)
    assert chosen == ["B", "C"] and "D failed a check" in note and "2 largest of 3" in note
    assert cp.uplift_candidates(comp, srm, bal.assign(beyond_chance=True), max_models=None)[0] == ["B", "A"]
    assert cp.uplift_candidates(comp, srm, bal, max_models=0)[0] == []
    assert cp.uplift_candidates(comp, srm, bal, campaigns=["D"]) == (["D"], "")
    with pytest.raises(ParameterError, match="no control group"):
        cp.uplift_candidates(comp, srm, bal, campaigns=["X"])


def test_totals_and_cards(analysis):
    imp = analysis.impact
    t = analysis.totals()
    cost = imp.cost.sum()
    assert t["roi_overall"] == pytest.approx((0.3 * imp.incremental_revenue.sum() - cost) / cost)
    conv = analysis.comparison.query("metric == 'conversion'")
    assert t["share_significant_positive"] == pytest.approx(
        ((conv.uplift > 0) & conv.significant).mean())
    cards = analysis.metric_cards()
    assert [c["key"] for c in cards if c.get("kpi")] == [
        "campaigns_analysed", "incremental_revenue", "roi_overall", "share_significant_positive",
        "campaigns_with_warnings"]
    keys = [c["key"] for c in cards]
    assert "campaigns" in keys and len(keys) == len(set(keys))


def test_page_tables_leave_out_small_groups_and_read_plainly(analysis):
    for name in cp.PAGE_TABLES:
        shown = cp.page_table(analysis, name)
        if shown["table"] is not None:
            assert not any("_" in c for c in shown["table"].columns), name
    comp = cp.page_table(analysis, "comparison", min_size=2000)["table"]
    # NONE split 80/20 has about 1,000 controls: under the minimum, not shown
    assert [c.split()[0] for c in comp.Campaign] == ["UP", "HURT"]
    assert comp.Result.tolist() == ["raised", "lowered"]
    funnel = cp.page_table(analysis, "funnel")
    assert funnel["table_options"]["count_col"] == "Contacted"
    assert list(funnel["table"].Campaign.str.split().str[0]) == ["UP", "NONE", "HURT", "NOCTRL"]
    with pytest.raises(ParameterError):
        cp.page_table(analysis, "nope")


def test_charts_draw_one_mark_per_campaign(analysis):
    import matplotlib

    matplotlib.use("Agg")
    fig = cp.forest_chart(analysis)
    labels = [t.get_text().split()[0] for t in fig.axes[0].get_yticklabels()]
    assert labels == ["UP", "NONE", "HURT"]                 # by start date, first on top
    colours = {ln.get_color() for ln in fig.axes[0].lines if ln.get_marker() == "o"}
    assert {"#1a7f37", "#c62828"} <= colours                # one rose, one fell
    assert len(cp.roi_chart(analysis).axes[0].get_yticklabels()) == 3
    assert cp.quasi_chart(analysis) is not None and cp.power_chart(analysis) is not None
    assert cp.uplift_chart(analysis) is not None            # the best fitted model
    empty = cp.analyse(FakeData(orders=pd.DataFrame({"customer_id": [1], "amount": [1.0]})))
    assert cp.uplift_chart(empty) is None and cp.quasi_chart(empty) is None
    import matplotlib.pyplot as plt
    plt.close("all")


def test_segment_profile_describes_each_verdict():
    X = pd.DataFrame({"pre_aov": [100.0, 300, 500, 700], "age": [20.0, 30, 40, 50],
                      "cat_home": [0.9, 0.1, 0.2, 0.3], "cat_toys": [0.1, 0.9, 0.8, 0.7]})
    seg = pd.DataFrame({"bin": [1, 2], "verdict": ["helps", "hurts"], "n_treatment": [1, 1],
                        "n_control": [1, 1], "conversion_treatment": [1.0, 0.0],
                        "conversion_control": [0.0, 1.0]})
    prof = cp.segment_profile(X, seg, np.array([1, 1, 2, 2]), min_group_size=2)
    assert prof.verdict.tolist() == ["helps", "hurts"]
    assert prof.pre_aov.tolist() == [200.0, 600.0] and prof.age.tolist() == [25.0, 45.0]
    assert prof.top_category.tolist() == ["home", "toys"]
    assert prof.observed_uplift.tolist() == [1.0, -1.0]
    assert cp.segment_profile(X, seg, np.array([1, 1, 2, 2]), min_group_size=3).empty


def test_snapshot_date():
    data = FakeData(orders=pd.DataFrame({"customer_id": [1, 2], "amount": [1.0, 2.0],
                                         "order_date": pd.to_datetime(["2026-01-02 08:00", "2026-03-04 10:00"])}))
    assert cp.snapshot_date(data, "") == dt.date(2026, 3, 4)
    assert cp.snapshot_date(data, "2025-12-31") == dt.date(2025, 12, 31)
    assert cp.snapshot_date(FakeData(campaigns=pd.DataFrame({"campaign_id": ["A"]}))) is None
    with pytest.raises(ParameterError, match="as_of"):
        cp.snapshot_date(data, "last tuesday")


def test_sample_contacts_keeps_the_same_customers_per_campaign():
    rng = np.random.default_rng(0)
    ctrl = rng.choice(100_000, 20_000, replace=False)
    rows = pd.concat([
        pd.DataFrame({"campaign_id": "A", "customer_id": rng.choice(100_000, 40_000, replace=False)}),
        pd.DataFrame({"campaign_id": "B", "customer_id": ctrl}),        # B and C share a control group
        pd.DataFrame({"campaign_id": "C", "customer_id": ctrl}),
        pd.DataFrame({"campaign_id": "D", "customer_id": np.arange(500)})])
    t = _tbl(rows)
    sizes = rows.groupby("campaign_id").size().to_dict()
    got = cp.sample_contacts(t, sizes, 5_000).to_pandas()
    n = got.groupby("campaign_id").size()
    assert n["D"] == 500                                     # small campaigns are kept whole
    assert abs(n["A"] - 5_000) < 300 and abs(n["B"] - 5_000) < 300
    assert set(got[got.campaign_id == "B"].customer_id) == set(got[got.campaign_id == "C"].customer_id)
    again = cp.sample_contacts(t, sizes, 5_000).to_pandas()
    assert set(map(tuple, again.to_numpy())) == set(map(tuple, got.to_numpy()))
    assert cp.sample_contacts(t, sizes, None) is t


# --------------------------------------------------------------------------
# foreign shapes: CSV folders nobody planned for publish or refuse cleanly
# --------------------------------------------------------------------------

def _shape_tables(n_cust: int = 40, seed: int = 5) -> dict[str, pd.DataFrame]:
    """A small export as CSV files: orders, customers, two campaigns with
    a treatment and a control half each."""
    export, rng = small_export(n_cust, 4 * n_cust, seed, channels=("app", "web"))
    orders, customers = export["orders"], export["customers"]
    campaigns = pd.DataFrame({"campaign_id": ["C1", "C2"], "name": ["Spring", "Autumn"],
                              "channel": ["email", "sms"], "start_date": ["2024-04-01", "2024-09-01"],
                              "end_date": ["2024-04-14", "2024-09-14"], "cost": [100.0, 50.0]})
    contacts = pd.concat([pd.DataFrame({
        "campaign_id": c, "customer_id": np.arange(1, n_cust + 1),
        "group": np.where(np.arange(n_cust) % 2, "control", "treatment"),
        "delivered": 1, "opened": rng.integers(0, 2, n_cust), "clicked": rng.integers(0, 2, n_cust),
        "converted": (rng.random(n_cust) < 0.3).astype(int)}) for c in ("C1", "C2")], ignore_index=True)
    contacts["revenue"] = contacts["converted"] * 50.0
    return {"orders": orders, "customers": customers, "campaigns": campaigns, "campaign_contacts": contacts}


def _shape(name: str) -> dict[str, pd.DataFrame]:
    t = _shape_tables()
    c = t["campaign_contacts"]
    return {
        "no campaign contacts": {k: v for k, v in t.items() if k != "campaign_contacts"},
        "orders only": {"orders": t["orders"]},
        "no control group": {**t, "campaign_contacts": c.assign(group="treatment")},
        "no conversions": {**t, "campaign_contacts": c.assign(converted=0, revenue=0.0)},
        "conversions in one group": {**t, "campaign_contacts": c.assign(
            converted=((c.group == "treatment") & (c.customer_id % 3 == 0)).astype(int))},
        "one contact": {**t, "campaign_contacts": c.head(1)},
        "contacts header only": {**t, "campaign_contacts": c.head(0)},
        "campaigns header only": {**t, "campaigns": t["campaigns"].head(0)},
        "one customer": {**t, "orders": t["orders"].assign(customer_id=1), "customers": t["customers"].head(1),
                         "campaign_contacts": c[c.customer_id == 1]},
        "one day": {**t, "orders": t["orders"].assign(order_date="2024-06-01")},
        "zero amounts": {**t, "orders": t["orders"].assign(amount=0.0)},
        "ids with leading zeros": {k: (v.assign(customer_id=v.customer_id.map("{:05d}".format))
                                      if "customer_id" in v else v) for k, v in t.items()},
        "Chinese and emoji text": {**t, "campaigns": t["campaigns"].assign(name=["春节 🎉", "Été"],
                                                                           channel=["微信", "e-mail"])},
    }[name]


def _write_csv(tables: dict[str, pd.DataFrame], directory):
    directory.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        df.to_csv(directory / f"{name}.csv", index=False)
    return directory


def _publish(data) -> cp.CampaignAnalysis:
    """What notebooks/50-campaigns.ipynb computes, in its order, with its
    up-front "not available" decisions (n_boot and permutations kept small)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cp.snapshot_date(data, "")
    a = cp.analyse(data, n_boot=200, n_permutations=20, max_uplift_models=1)
    a.section_text()
    charts = {"funnel": cp.funnel_chart, "comparison": cp.forest_chart,
              "revenue": lambda x: cp.forest_chart(x, "revenue_per_contact"), "impact": cp.roi_chart,
              "checks": cp.balance_chart, "quasi": cp.quasi_chart, "power": cp.power_chart,
              "uplift": cp.uplift_chart}
    tables = {"funnel": ["funnel", "channels"], "checks": ["warnings", "srm"], "uplift": ["uplift", "profile"]}
    for section, chart in charts.items():
        if a.available(section):
            chart(a)
            for name in tables.get(section, [section]):
                cp.page_table(a, name)
        else:
            assert a.needs[section]
    a.metric_cards()
    a.findings()
    a.results_table()
    a.uplift_targets(data)
    plt.close("all")
    return a


@pytest.mark.parametrize("name", ["no campaign contacts", "orders only", "no control group", "no conversions",
                                  "conversions in one group", "one contact", "contacts header only",
                                  "campaigns header only", "one customer", "one day", "zero amounts",
                                  "ids with leading zeros", "Chinese and emoji text"])
def test_foreign_shapes_publish(tmp_path, name):
    from crmlab.sources import open_source

    data = open_source(str(_write_csv(_shape(name), tmp_path / "src")))
    a = _publish(data)
    expect_contacts = name not in ("no campaign contacts", "orders only", "contacts header only")
    assert a.available("funnel") == expect_contacts


def _typed(t: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The shape as a database holds it (dates typed): a DuckDB file or
    PostgreSQL keeps an empty table, where a CSV folder drops an empty file."""
    out = {k: v.copy() for k, v in t.items()}
    out["orders"]["order_date"] = pd.to_datetime(out["orders"]["order_date"])
    for col in ("start_date", "end_date"):
        out["campaigns"][col] = pd.to_datetime(out["campaigns"][col])
    return out


def test_an_empty_campaigns_table_publishes_the_contacts():
    t = _typed(_shape_tables())
    a = _publish(FakeData(**{**t, "campaigns": t["campaigns"].head(0)}))
    assert a.available("funnel") and a.available("comparison")
    assert sorted(a.funnel.campaign_id) == ["C1", "C2"]
    assert not a.available("impact") and "campaigns.cost or campaigns.cost_per_contact" in a.needs["impact"]


def test_an_empty_contacts_table_publishes_every_section_as_not_available():
    t = _typed(_shape_tables())
    a = _publish(FakeData(**{**t, "campaign_contacts": t["campaign_contacts"].head(0)}))
    assert not any(a.available(s) for s in cp.SECTIONS)
    assert a.needs["funnel"] == ["campaign_contacts rows"]
    # contacts only for campaigns after as_of: the same, and the page says why
    later = cp.analyse(FakeData(**t), as_of="2024-03-01", quasi=False, uplift=False, n_boot=0)
    assert later.needs["comparison"] == ["campaign_contacts rows for the campaigns starting up to as_of"]
