"""Tests of crmlab.segmentation: RFM, scores with ties, the segment map,
clustering, naming, profiles, concentration, the filter language, movement
and the predictive check."""

from __future__ import annotations

import datetime as dt

import ibis
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import adjusted_rand_score

from conftest import STATUS_ORDERS, small_export
from crmlab import segmentation as seg
from crmlab.exceptions import NoDataError, ParameterError

AS_OF = "2024-06-30"


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def con():
    return ibis.duckdb.connect()


@pytest.fixture(scope="module")
def tiny(con):
    """Three customers, checked by hand (as of 2024-06-30):

    c1: two orders on 2024-01-01 (10 + 20)          -> recency 181, 1 day, 2 orders, 30
    c2: 2024-02-01 (5), 2024-03-01 refunded (5), 2024-05-01 (100)
                                                    -> recency 60, 2 days, 2 orders, 105
    c3: 2024-06-30 23:00 (7); 2024-07-02 (1000) is after as_of
                                                    -> recency 0, 1 day, 1 order, 7
    c4: only a cancelled order                      -> not a customer in RFM
    """
    orders = pd.DataFrame({
        "order_id": [1, 2, 3, 4, 5, 6, 7, 8],
        "customer_id": [1, 1, 2, 2, 2, 3, 3, 4],
        "order_date": pd.to_datetime(["2024-01-01 10:00", "2024-01-01 12:00", "2024-02-01 00:00",
                                      "2024-03-01 00:00", "2024-05-01 00:00", "2024-06-30 23:00",
                                      "2024-07-02 00:00", "2024-03-03 00:00"]),
        "amount": [10.0, 20, 5, 5, 100, 7, 1000, 50],
        "status": ["paid", "paid", "paid", "refunded", "paid", "paid", "paid", "cancelled"],
        "channel": ["app", "web", "app", "app", "store", "web", "web", "app"],
        "discount": [1.0, 0, 0, 0, 10, 0, 0, 0],
    })
    lines = pd.DataFrame({"order_id": [1, 1, 2, 3, 5, 6, 7], "product_id": [1, 2, 3, 1, 2, 3, 3],
                          "category": ["a", "b", "a", "a", "b", "c", "c"], "quantity": [1, 2, 1, 1, 1, 1, 1],
                          "unit_price": [5.0, 2.5, 20, 5, 110, 7, 1000]})
    customers = pd.DataFrame({"customer_id": [1, 2, 3, 4], "gender": ["F", "M", None, "F"],
                              "region": ["East", "West", "East", "North"],
                              "birth_date": pd.to_datetime(["1990-01-01", "1980-06-30", None, "1970-01-01"])})
    return (con.create_table("tiny_orders", orders, overwrite=True),
            con.create_table("tiny_lines", lines, overwrite=True),
            con.create_table("tiny_customers", customers, overwrite=True))


# planted behavioural groups: spend level, channel mix, category mix,
# discount rate, age -- and one shared purchase process (not by group)
GROUPS = {
    "premium": (300, [0.30, 0.10, 0.55, 0.05], [0.70, 0.05, 0.15, 0.10], 0.02, 47),
    "bargain": (40, [0.15, 0.70, 0.10, 0.05], [0.05, 0.70, 0.15, 0.10], 0.25, 36),
    "family": (110, [0.60, 0.15, 0.20, 0.05], [0.10, 0.20, 0.60, 0.10], 0.10, 39),
    "young": (70, [0.25, 0.10, 0.05, 0.60], [0.15, 0.05, 0.10, 0.70], 0.12, 24),
}
CHANNELS = ["app", "web", "store", "mini_program"]
CATEGORIES = ["electronics", "groceries", "home", "fashion"]


def planted_world(n: int, seed: int, as_of: str = "2024-12-31"):
    """Orders, order lines and customers of ``n`` customers in the planted
    GROUPS; about half buy once (a shared gamma-Poisson purchase process);
    baskets hold 1 + Poisson(1.5) lines."""
    rng = np.random.default_rng(seed)
    names = list(GROUPS)
    group = rng.integers(len(names), size=n)
    end = pd.Timestamp(as_of)
    n_orders = 1 + rng.poisson(rng.gamma(0.6, 2.5, size=n))
    orders, lines = [], []
    oid = 0
    for i in range(n):
        aov, ch, cat, disc, _ = GROUPS[names[group[i]]]
        first = end - pd.Timedelta(days=int(rng.integers(0, 700)))
        for d in np.sort(rng.integers(0, (end - first).days + 1, size=n_orders[i])):
            oid += 1
            amount = float(np.round(aov * rng.lognormal(0, 0.35), 2))
            rate = float(np.clip(disc * rng.lognormal(0, 0.3), 0, 0.6))
            orders.append((oid, i + 1, first + pd.Timedelta(days=int(d), hours=int(rng.integers(8, 22))),
                           amount, CHANNELS[rng.choice(4, p=ch)], "paid", round(amount * rate / (1 - rate), 2)))
            n_lines = 1 + rng.poisson(1.5)                     # a basket of a few lines
            for c, share in zip(rng.choice(4, size=n_lines, p=cat), rng.dirichlet(np.ones(n_lines))):
                lines.append((oid, int(c) * 10 + 1, CATEGORIES[c], 1, round(amount * share, 2)))
    orders = pd.DataFrame(orders, columns=["order_id", "customer_id", "order_date", "amount", "channel",
                                           "status", "discount"])
    lines = pd.DataFrame(lines, columns=["order_id", "product_id", "category", "quantity", "unit_price"])
    ages = np.array([GROUPS[names[g]][4] for g in group]) + rng.normal(0, 4, size=n)
    customers = pd.DataFrame({
        "customer_id": np.arange(1, n + 1),
        "birth_date": [end - pd.Timedelta(days=int(a * 365.25)) for a in ages],
        "region": rng.choice(["East", "West", "North"], size=n),
        "gender": rng.choice(["F", "M"], size=n),
    })
    truth = pd.Series(group, index=np.arange(1, n + 1))
    return orders, lines, customers, truth


@pytest.fixture(scope="module")
def world(con):
    orders, lines, customers, truth = planted_world(600, seed=7)
    tables = {"orders": con.create_table("w_orders", orders, overwrite=True),
              "order_lines": con.create_table("w_lines", lines, overwrite=True),
              "customers": con.create_table("w_customers", customers, overwrite=True)}
    return tables, orders, lines, truth


@pytest.fixture(scope="module")
def world_cust(world):
    tables, *_ = world
    return seg.customer_table(**tables, as_of="2024-12-31")


@pytest.fixture(scope="module")
def world_clustered(world_cust):
    return seg.cluster_customers(seg.score_rfm(world_cust), random_state=11)


# --------------------------------------------------------------------------
# RFM in the engine
# --------------------------------------------------------------------------

def test_rfm_values_by_hand(tiny):
    orders, _, _ = tiny
    got = seg.rfm_table(orders, AS_OF).to_pandas().set_index("customer_id").sort_index()
    assert got.index.tolist() == [1, 2, 3]                      # c4 only cancelled
    assert got["recency"].tolist() == [181, 60, 0]
    assert got["frequency"].tolist() == [2, 2, 1]                # paid orders
    assert got["n_orders"].tolist() == [2, 2, 1] and "n_days" not in got.columns
    assert got["monetary"].tolist() == [30.0, 105.0, 7.0]        # refund and post-as_of order left out
    assert got["tenure"].tolist() == [181, 150, 0]
    by_days = seg.rfm_table(orders, AS_OF, frequency="days").to_pandas().set_index("customer_id").sort_index()
    assert by_days["frequency"].tolist() == [1, 2, 1] == by_days["n_days"].tolist()   # distinct purchase days
    with pytest.raises(ParameterError, match="frequency"):
        seg.rfm_table(orders, AS_OF, frequency="visits")


def _status_orders(con, name="status_orders"):
    """conftest.STATUS_ORDERS in a DuckDB table."""
    return con.create_table(name, STATUS_ORDERS, overwrite=True)


def test_a_purchase_means_what_the_engine_says(con):
    from crmlab import engine

    orders = _status_orders(con)
    totals = engine.purchase_totals(orders, AS_OF)
    assert totals == {"purchase_revenue": 390.0, "purchasing_customers": 4}   # paid, missing, shipped, completed
    cust = seg.customer_table(orders, AS_OF)
    assert cust["monetary"].sum() == totals["purchase_revenue"]
    assert len(cust) == totals["purchasing_customers"]
    rfm = seg.rfm_table(orders, AS_OF).to_pandas()
    assert rfm["monetary"].sum() == totals["purchase_revenue"] and len(rfm) == 4
    summary = engine.customer_summary(engine.purchases(orders), AS_OF).to_pandas().set_index("customer_id")
    got = cust.set_index("customer_id")
    assert got["n_orders"].to_dict() == summary["n_orders"].to_dict()
    assert got["monetary"].to_dict() == summary["revenue"].to_dict()


def test_rfm_default_as_of_is_latest_order(tiny):
    orders, _, _ = tiny
    got = seg.rfm_table(orders).to_pandas().set_index("customer_id")
    assert got.loc[3, "recency"] == 0 and got.loc[3, "monetary"] == 1007.0


def test_customer_table_tiny(tiny):
    orders, lines, customers = tiny
    cust = seg.customer_table(orders, AS_OF, order_lines=lines, customers=customers).set_index("customer_id")
    assert cust.loc[1, "ch_app"] == 0.5 and cust.loc[1, "ch_web"] == 0.5
    assert cust.loc[2, "ch_store"] == 0.5 and cust.loc[2, "ch_app"] == 0.5   # the refund is not a purchase
    # line value: c1 = 5 + 2*2.5 + 20 = 30 (a: 25, b: 5); c2 = 5 (a) + 110 (b)
    assert cust.loc[1, "line_value"] == 30.0
    assert cust.loc[1, "cat_a"] == pytest.approx(25 / 30)
    assert cust.loc[2, "cat_b"] == pytest.approx(110 / 115)
    assert cust.loc[3, "cat_c"] == 1.0                           # the 1000 after as_of is ignored
    assert cust.loc[1, "discount_share"] == pytest.approx(1 / 31)
    assert cust.loc[1, "age"] == 34 and cust.loc[2, "age"] == 44 and np.isnan(cust.loc[3, "age"])
    assert cust.loc[1, "region"] == "East"
    assert cust.attrs["as_of"] == AS_OF


def test_customer_table_no_data(tiny):
    orders, _, _ = tiny
    with pytest.raises(NoDataError):
        seg.customer_table(orders, "2020-01-01")


def test_engine_aggregation_equals_pandas(world):
    tables, orders, lines, _ = world
    as_of = pd.Timestamp("2024-09-30")
    cust = seg.customer_table(**tables, as_of="2024-09-30").set_index("customer_id")
    o = orders[orders.order_date < as_of + pd.Timedelta(days=1)]
    g = o.groupby("customer_id")
    expect = pd.DataFrame({
        "recency": (as_of - g.order_date.max().dt.normalize()).dt.days,
        "frequency": g.size(),
        "monetary": g.amount.sum(),
        "n_orders": g.size(),
        "tenure": (as_of - g.order_date.min().dt.normalize()).dt.days,
    })
    pd.testing.assert_frame_equal(cust[expect.columns].sort_index(), expect.sort_index(),
                                  check_dtype=False, check_names=False)
    ch = pd.crosstab(o.customer_id, o.channel, normalize="index")
    for c in CHANNELS:
        np.testing.assert_allclose(cust[f"ch_{c}"].sort_index(), ch[c].sort_index())
    lo = lines.merge(o[["order_id", "customer_id"]], on="order_id")
    cat = lo.pivot_table(index="customer_id", columns="category", values="unit_price", aggfunc="sum",
                         fill_value=0)
    cat = cat.div(cat.sum(axis=1), axis=0)
    for c in CATEGORIES:
        np.testing.assert_allclose(cust[f"cat_{c}"].sort_index(), cat[c].sort_index())
    disc = g.discount.sum() / (g.amount.sum() + g.discount.sum())
    np.testing.assert_allclose(cust["discount_share"].sort_index(), disc.sort_index())
    days = seg.customer_table(tables["orders"], "2024-09-30", frequency="days").set_index("customer_id")
    by_day = g.order_date.apply(lambda s: s.dt.normalize().nunique())
    assert (days["frequency"].sort_index() == by_day.sort_index()).all()
    assert (days["frequency"] <= days["n_orders"]).all() and (days["frequency"] < days["n_orders"]).any()


# --------------------------------------------------------------------------
# scores, segment map, tiers
# --------------------------------------------------------------------------

def test_quantile_scores_distinct_values_are_quintiles():
    s = seg.quantile_score(np.arange(100))
    assert np.bincount(s)[1:].tolist() == [20] * 5
    r = seg.quantile_score(np.arange(100), higher_is_better=False)
    assert r[0] == 5 and r[-1] == 1


def test_quantile_scores_heavy_ties_share_a_score():
    # 60% bought on one day, 20% on two, 10% on three, 10% on five
    freq = np.array([1] * 60 + [2] * 20 + [3] * 10 + [5] * 10)
    s = seg.quantile_score(freq)
    assert set(s[freq == 1]) == {1}      # the whole tie group shares the bottom score
    assert set(s[freq == 2]) == {4}      # 60% strictly below -> 1 + floor(5 * 0.6)
    assert set(s[freq == 3]) == {5} and set(s[freq == 5]) == {5}
    # random ties: equal values share a score and scores never decrease with the value
    rng = np.random.default_rng(0)
    x = rng.poisson(0.7, size=1000)
    sc = seg.quantile_score(x)
    for v in np.unique(x):
        assert len(set(sc[x == v])) == 1
    order = np.argsort(x, kind="stable")
    assert np.all(np.diff(sc[order]) >= 0)
    # recency, lower is better: the score counts customers strictly worse, so
    # a tie group at the top scores what its share of worse customers earns
    rec = np.array([0] * 50 + list(range(1, 51)))
    rs = seg.quantile_score(rec, higher_is_better=False)
    assert set(rs[rec == 0]) == {3}                 # 50% strictly worse -> 1 + floor(2.5)
    assert rs[rec == 1].item() == 5 - 0 - 2 and rs[rec == 50].item() == 1


def test_default_segment_map_names_and_coverage():
    rules = seg.load_rules()
    names = [s["name"] for s in rules["segments"]]
    for required in ("champions", "loyal", "potential", "new", "at risk", "hibernating", "lost"):
        assert required in names
    assert [t["name"] for t in rules["tiers"]] == ["VIP", "potential", "ordinary", "low"]
    grid = pd.DataFrame([(r, f, m) for r in range(1, 6) for f in range(1, 6) for m in range(1, 6)],
                        columns=["r_score", "f_score", "m_score"])
    segs = seg.assign_rules(grid, rules["segments"])
    tiers = seg.assign_rules(grid, rules["tiers"])
    assert seg.OTHER not in set(segs) and set(segs) == set(names)   # every cell named, every name reachable
    assert seg.OTHER not in set(tiers)
    one = lambda r, f, m: segs[((grid.r_score == r) & (grid.f_score == f) & (grid.m_score == m)).to_numpy()][0]
    assert one(5, 5, 5) == "champions" and one(5, 1, 2) == "new" and one(1, 1, 1) == "lost"
    assert one(1, 5, 5) == "at risk" and one(2, 1, 1) == "hibernating"


def test_segment_map_override_from_yaml(tmp_path):
    path = tmp_path / "map.yaml"
    path.write_text(
        "segments:\n"
        "  - {name: active, r: [3, 5]}\n"
        "  - {name: dormant}\n"
        "cluster_weights: {rfm: 0}\n", encoding="utf-8")
    rules = seg.load_rules(path)
    assert [s["name"] for s in rules["segments"]] == ["active", "dormant"]
    assert rules["tiers"] == seg.load_rules()["tiers"]            # sections not mentioned keep defaults
    assert rules["cluster_weights"]["rfm"] == 0 and rules["cluster_weights"]["spend"] == 1.0
    cust = pd.DataFrame({"customer_id": range(10), "recency": range(10), "frequency": [1] * 10,
                         "monetary": np.arange(10.0)})
    scored = seg.score_rfm(cust, path)
    assert set(scored.segment) == {"active", "dormant"}
    assert (scored.loc[scored.recency <= 3, "segment"] == "active").all()


@pytest.mark.parametrize("text, needle", [
    ("colour: {}\n", "unknown section"),
    ("segments:\n  - {name: x, r: [0, 9]}\n", "'r'"),
    ("segments:\n  - {name: x, q: [1, 2]}\n", "unknown key"),
    ("segments: []\n", "non-empty"),
])
def test_segment_map_rejects_bad_files(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ParameterError, match=needle):
        seg.load_rules(path)
    with pytest.raises(ParameterError, match="not found"):
        seg.load_rules(tmp_path / "missing.yaml")


def test_score_rfm_columns_and_rfm_score(world_cust):
    scored = seg.score_rfm(world_cust)
    assert (scored.rfm_score == scored.r_score + scored.f_score + scored.m_score).all()
    assert scored.rfm_score.between(3, 15).all()
    champs = scored[scored.segment == "champions"]
    assert len(champs) and (champs.r_score >= 4).all() and (champs.m_score >= 4).all()
    summary = seg.rfm_summary(scored)
    assert summary["table"]["customers"].sum() == len(scored)
    assert summary["scores"].sum().tolist() == [len(scored)] * 3
    assert "ties" in summary["text"]


# --------------------------------------------------------------------------
# clustering and naming
# --------------------------------------------------------------------------

def test_clustering_recovers_planted_groups_and_k(world_cust, world_clustered, world):
    *_, truth = world
    clustered, model = world_clustered
    assert model.k_ == len(GROUPS)
    ari = adjusted_rand_score(truth.loc[clustered.customer_id].to_numpy(), clustered.cluster_id)
    assert ari >= 0.75
    ks = model.k_scores_
    assert ks["k"].tolist() == list(range(2, 11)) and ks["chosen"].sum() == 1
    assert ks.loc[ks.k == model.k_, "stability"].item() >= model.min_stability
    assert np.all(np.diff(model.sizes_) <= 0)                    # numbered by size
    assert (model.predict(seg.behaviour_features(world_cust)) == model.labels_).all()


def test_same_seed_same_clusters(world_cust):
    X = seg.behaviour_features(world_cust)
    a = seg.BehaviourSegmenter(k_range=(3, 5), n_seeds=2, random_state=5).fit(X)
    b = seg.BehaviourSegmenter(k_range=(3, 5), n_seeds=2, random_state=5).fit(X)
    assert (a.labels_ == b.labels_).all()
    pd.testing.assert_frame_equal(a.k_scores_, b.k_scores_)


def test_rfm_noise_does_not_drive_clusters(world_cust, world):
    """With the RFM group weighted up, purchase-timing noise takes over and
    recovery drops: the shipped weighting is what makes recovery work."""
    *_, truth = world
    X = seg.behaviour_features(world_cust)
    y = truth.loc[world_cust.customer_id].to_numpy()
    base = seg.BehaviourSegmenter(k=4, n_seeds=2, random_state=1).fit(X)
    noisy = seg.BehaviourSegmenter(k=4, n_seeds=2, random_state=1, weights={"rfm": 3.0}).fit(X)
    assert adjusted_rand_score(y, base.labels_) > adjusted_rand_score(y, noisy.labels_) + 0.2


def test_fixed_k_and_bad_parameters(world_cust):
    X = seg.behaviour_features(world_cust)
    model = seg.BehaviourSegmenter(k=3, n_seeds=2, random_state=0).fit(X)
    assert model.k_ == 3 and len(model.k_scores_) == 1 and "analyst" in model.k_reason_
    with pytest.raises(ParameterError):
        seg.BehaviourSegmenter(k_range=(1, 3)).fit(X)
    with pytest.raises(ParameterError):
        seg.BehaviourSegmenter(weights={g: 0 for g in ("spend", "discount", "channel", "category",
                                                       "demographics", "engagement", "rfm")}).fit(X)


def test_mix_shrinkage_pulls_single_orders_to_the_overall_mix():
    cust = pd.DataFrame({"n_orders": [1, 9], "aov": [10.0, 10.0], "monetary": [10.0, 90.0], "tenure": [0, 100],
                         "recency": [0, 0], "frequency": [1, 9], "ch_app": [1.0, 0.0], "ch_web": [0.0, 1.0]})
    X = seg.behaviour_features(cust)
    overall_app = 1 / 10                                        # by orders
    assert X.loc[0, "channel:app"] ** 2 == pytest.approx((1 * 1 + 1 * overall_app) / 2)
    assert X.loc[1, "channel:app"] ** 2 == pytest.approx((9 * 0 + 1 * overall_app) / 10)


def test_naming_rules():
    n = 40
    cust = pd.DataFrame({
        "aov": [300.0] * n + [40.0] * n + [100.0] * n,
        "discount_share": [0.15] * n + [0.3] * n + [0.15] * n,
        "frequency": [6] * n + [1] * n + [2] * n,
        "ch_app": [0.9] * n + [0.1] * n + [0.4] * n,
        "ch_web": [0.1] * n + [0.9] * n + [0.6] * n,
    })
    labels = np.repeat([0, 1, 2], n)
    names = seg.name_clusters(cust, labels)
    assert names[0] == "high-spend app loyalists"
    assert names[1] == "low-spend discount-driven web occasional buyers"
    assert names[2] == "typical buyers"
    # a rule change is a data change
    rules = seg.load_rules({"cluster_naming": {"template": "{spend} spenders", "descriptors": {
        "spend": {"column": "aov", "stat": "median", "words": [{"word": "big", "ratio_at_least": 2}]}}}})
    named = seg.name_clusters(cust, labels, rules)
    assert named[0] == "big spenders"
    # equal names are told apart
    same = seg.name_clusters(cust.iloc[:2 * n], np.repeat([0, 1], n) * 0 + np.tile([0, 1], n))
    assert len(set(same.values())) == 2


# --------------------------------------------------------------------------
# profiles and small groups
# --------------------------------------------------------------------------

def _profile_frame(sizes: dict[str, int]) -> pd.DataFrame:
    rows = []
    for name, k in sizes.items():
        for i in range(k):
            rows.append({"segment": name, "monetary": 10.0 * (i + 1), "n_orders": 1 + i % 3, "tenure": 30,
                         "age": 20 + i, "region": "East" if i % 2 else "West", "ch_app": 1.0, "ch_web": 0.0,
                         "satisfaction": 4.0})
    return pd.DataFrame(rows)


def test_profiles_merge_and_suppress_small_groups():
    prof = seg.segment_profiles(_profile_frame({"a": 15, "b": 12, "c": 4, "d": 3}), min_size=10)
    assert list(prof["table"].index) == ["a", "b"]              # c + d = 7 < 10: not shown at all
    assert prof["suppressed"] == 7
    prof = seg.segment_profiles(_profile_frame({"a": 15, "b": 12, "c": 4, "d": 7}), min_size=10)
    assert list(prof["table"].index) == ["a", "b", seg.OTHER]   # c + d = 11 shown together
    t = prof["table"]
    assert t.loc[seg.OTHER, "customers"] == 11 and prof["suppressed"] == 0
    assert t["share_customers"].sum() == pytest.approx(1.0)
    assert t["share_revenue"].sum() == pytest.approx(1.0)
    assert t.loc["a", "channels"].startswith("app 100%")
    assert set(["median_age", "age_band", "region", "satisfaction"]) <= set(t.columns)
    assert (prof["channels"].sum(axis=1).round(6) == 1).all()


# --------------------------------------------------------------------------
# concentration
# --------------------------------------------------------------------------

def test_gini_closed_forms():
    n = 1000
    assert seg.gini(np.arange(1, n + 1)) == pytest.approx((n - 1) / (3 * n))
    assert seg.gini(np.full(50, 7.0)) == pytest.approx(0.0)
    one = np.zeros(100)
    one[3] = 5
    assert seg.gini(one) == pytest.approx(99 / 100)
    # the exponential distribution: Gini 1/2 and top-20% share 0.2 * (1 - ln 0.2)
    m = 200_000
    expo = -np.log(1 - (np.arange(m) + 0.5) / m)                # exact quantiles
    assert seg.gini(expo) == pytest.approx(0.5, abs=2e-3)
    conc = seg.concentration(pd.DataFrame({"monetary": expo}))
    assert conc["top20_revenue_share"] == pytest.approx(0.2 * (1 - np.log(0.2)), abs=2e-3)
    assert conc["gini"] == pytest.approx(0.5, abs=2e-3)


def test_pareto_curve_small_case():
    conc = seg.concentration(pd.DataFrame({"monetary": [1.0, 1, 1, 1, 6]}), points=6)
    p = conc["pareto"]
    assert p["revenue_share"].iloc[0] == 0 and p["revenue_share"].iloc[-1] == pytest.approx(1)
    assert conc["top20_revenue_share"] == pytest.approx(0.6)    # one of five holds 6 of 10
    assert np.all(np.diff(p["revenue_share"]) >= 0)
    assert "60%" in conc["text"]


# --------------------------------------------------------------------------
# drill-down filter
# --------------------------------------------------------------------------

@pytest.fixture
def people():
    return pd.DataFrame({
        "customer_id": [1, 2, 3, 4, 5, 6],
        "region": ["East", "East", "West", "East", None, "East"],
        "age": [35.0, 25, 40, 50, 33, np.nan],
        "segment": ["at risk", "at risk", "at risk", "loyal", "at risk", "at risk"],
        "monetary": [10.0, 20, 30, 40, 50, 60],
    })


def test_filter_accepts_the_example(people):
    f = seg.parse_filter('region == "East" and age >= 30 and segment == "at risk"', people.columns)
    assert people[f(people)].customer_id.tolist() == [1]         # missing age/region never match
    g = seg.parse_filter('30 <= age < 45 and segment in ["at risk", "new"] and not region == "West"',
                         people.columns)
    assert people[g(people)].customer_id.tolist() == [1]
    h = seg.parse_filter("region != 'East' or monetary > -1 and monetary < 15", people.columns)
    assert people[h(people)].customer_id.tolist() == [1, 3]
    # missing values are unknown, as in SQL: neither == nor its negation selects them
    for expr in ('region == "West"', 'not region == "West"', 'region != "West"'):
        assert 5 not in people[seg.parse_filter(expr, people.columns)(people)].customer_id.tolist()
    assert 5 in people[seg.parse_filter('region == "West" or age < 34', people.columns)(people)].customer_id.tolist()
    assert seg.parse_filter("", people.columns)(people).all()


@pytest.mark.parametrize("expr", [
    "__import__('os').system('true')",
    "region.lower() == 'east'",
    "segment.__class__ == 1",
    "len(region) > 2",
    "people[0] == 1",
    "age + 1 > 30",
    "(lambda: 1)() == 1",
    "age",
    "1 == 1",
    "[age] == [1]",
    "region == 'East' if True else False",
    "region == f'{age}'",
])
def test_filter_rejects_anything_outside_the_whitelist(people, expr):
    with pytest.raises(ParameterError):
        seg.parse_filter(expr, people.columns)


def test_filter_unknown_column_names_it_and_lists_known(people):
    with pytest.raises(ParameterError) as err:
        seg.parse_filter('city == "Paris"', people.columns)
    msg = str(err.value)
    assert "'city'" in msg and "region" in msg and "segment" in msg
    with pytest.raises(ParameterError, match="valid expression"):
        seg.parse_filter("region ==", people.columns)


def test_drill_down_counts_and_small_selection(people):
    res = seg.drill_down(people, 'segment == "at risk"', min_size=3)
    assert res["count"] == 5 and res["share"] == pytest.approx(5 / 6)
    assert res["profile"] is not None and res["profile"]["customers"].iloc[0] == 5
    assert res["customers"].customer_id.tolist()[0] == 6         # largest spend first
    small = seg.drill_down(people, 'region == "West"', min_size=3)
    assert small["count"] == 1 and small["profile"] is None and "not shown" in small["text"]
    assert small["customers"].empty                              # no list of a group under min_size
    banded = seg.drill_down(people, 'age_band == "35-44"', min_size=1)
    assert sorted(banded["customers"].customer_id) == [1, 3]


# --------------------------------------------------------------------------
# movement
# --------------------------------------------------------------------------

def test_transition_matrix_sums_and_sentences():
    prev = pd.DataFrame({"customer_id": range(100), "segment": ["loyal"] * 60 + ["new"] * 40})
    cur = pd.DataFrame({"customer_id": range(10, 120),
                        "segment": ["loyal"] * 20 + ["at risk"] * 30 + ["loyal"] * 20 + ["new"] * 40})
    res = seg.transitions(prev, cur, order=["loyal", "new", "at risk"], min_size=10)
    counts = res["counts"]
    assert counts.to_numpy().sum() == 120                        # customers in either run
    assert counts.loc["loyal", "at risk"] == 30 and counts.loc["loyal", "(not in this run)"] == 10
    assert counts.loc["new", "loyal"] == 20 and counts.loc["(not in previous run)", "new"] == 20
    assert np.allclose(res["shares"].sum(axis=1), 1)
    assert res["stayed_share"] == pytest.approx(40 / 90)           # 20 loyal + 20 new of 90 in both
    assert "30 customers (50% of last run's loyal) moved from loyal to at risk" in res["sentences"][1]
    assert res["table"].loc["loyal", "at risk"] == "30 (50%)" and res["table"].loc["new", "at risk"] == "\u2013"
    assert "slipped from loyal to at risk" in res["text"]
    back = seg.transitions(cur, prev, order=["loyal", "new", "at risk"], min_size=10)
    assert "slipped" not in back["text"]                          # at risk -> loyal is no slip


# --------------------------------------------------------------------------
# predictive check, exports, metrics, findings
# --------------------------------------------------------------------------

def test_holdout_check_ranks_future_spend(con):
    rng = np.random.default_rng(3)
    rows = []
    oid = 0
    for c in range(1, 201):
        rate = rng.gamma(1.0, 1.0)                              # one habit before and after as_of
        spend = rng.lognormal(3, 0.5)
        for year, n in ((2023, 1 + rng.poisson(rate * 3)), (2024, rng.poisson(rate * 3))):
            for _ in range(n):
                oid += 1
                rows.append((oid, c, pd.Timestamp(f"{year}-01-01") + pd.Timedelta(days=int(rng.integers(0, 365))),
                             spend))
    orders = pd.DataFrame(rows, columns=["order_id", "customer_id", "order_date", "amount"])
    t = con.create_table("holdout_orders", orders, overwrite=True)
    res = seg.rfm_holdout_check(t, "2023-12-31", holdout_days=300)
    assert res["complete"] and res["n_customers"] == 200
    assert res["holdout_end"] == "2024-10-26"
    # the same figure by hand
    scored = seg.score_rfm(seg.rfm_table(t, "2023-12-31").to_pandas())
    window = (orders.order_date >= "2024-01-01") & (orders.order_date < "2024-10-27")
    fut = orders[window].groupby("customer_id").amount.sum()
    rho = stats.spearmanr(scored.rfm_score, fut.reindex(scored.customer_id).fillna(0).to_numpy()).statistic
    assert res["spearman"] == pytest.approx(rho) and rho > 0.3
    assert "Spearman" in res["text"]
    short = seg.rfm_holdout_check(t, "2024-12-01", holdout_days=90)
    assert not short["complete"]


def test_exports_metrics_findings(world_clustered):
    clustered, model = world_clustered
    conc = seg.concentration(clustered)
    export = seg.segments_export(clustered)
    assert tuple(export.columns) == seg.EXPORT_COLUMNS and len(export) == len(clustered)
    m = seg.metrics(clustered, model=model, conc=conc)
    shares = [v for k, v in m.items() if k.startswith("share_") and not k.startswith("share_tier_")]
    assert sum(shares) == pytest.approx(1, abs=1e-3)
    for key in ("n_customers", "share_champions", "share_at_risk", "share_lost", "n_clusters",
                "silhouette", "top20_revenue_share", "gini"):
        assert key in m
    assert m["n_clusters"] == model.k_ and m["n_customers"] == len(clustered)
    found = seg.findings(clustered, clustered=clustered, model=model, conc=conc)
    assert 3 <= len(found) <= 5 and all(any(ch.isdigit() for ch in s) for s in found)
    summary = seg.cluster_summary(clustered, model)
    assert summary["table"]["customers"].sum() == len(clustered)
    assert str(model.k_) in summary["text"]


# --------------------------------------------------------------------------
# engine portability and the synthetic world
# --------------------------------------------------------------------------

@pytest.mark.postgres
def test_customer_table_same_on_postgres(pg_url, world):
    """The same ibis expressions give the same customer table on PostgreSQL."""
    _, orders, lines, _ = world
    customers = planted_world(600, seed=7)[2]
    pg = ibis.connect(pg_url)
    tables = {"orders": pg.create_table("seg_orders", orders, overwrite=True),
              "order_lines": pg.create_table("seg_lines", lines, overwrite=True),
              "customers": pg.create_table("seg_customers", customers, overwrite=True)}
    duck = ibis.duckdb.connect()
    local = {"orders": duck.create_table("o", orders), "order_lines": duck.create_table("l", lines),
             "customers": duck.create_table("c", customers)}
    a = seg.customer_table(**tables, as_of="2024-09-30")
    b = seg.customer_table(**local, as_of="2024-09-30")
    assert list(a.columns) == list(b.columns)
    for col in ("recency", "frequency", "monetary", "n_orders", "tenure", "discount_share", "ch_app",
                "cat_home", "age"):
        np.testing.assert_allclose(a[col].to_numpy(float), b[col].to_numpy(float), rtol=1e-9, equal_nan=True)
    for name in ("seg_orders", "seg_lines", "seg_customers"):
        pg.drop_table(name)


def test_orders_only_still_segments(con, world):
    """Only the required columns: RFM, segments and a clustering on spend
    and timing still work; nothing optional is invented."""
    _, orders, _, _ = world
    t = con.create_table("bare_orders", orders[["customer_id", "order_date", "amount"]], overwrite=True)
    cust = seg.customer_table(t, "2024-12-31")
    assert not any(c.startswith(("ch_", "cat_")) for c in cust.columns)
    assert "discount_share" not in cust.columns and "age" not in cust.columns
    X = seg.behaviour_features(cust)
    assert {c.split(":")[0] for c in X.columns} == {"spend", "rfm"}
    clustered, model = seg.cluster_customers(seg.score_rfm(cust), k_range=(2, 4), n_seeds=2, random_state=0)
    assert clustered["cluster"].notna().all() and model.k_ in (2, 3, 4)
    prof = seg.segment_profiles(clustered, by="segment")
    assert "channels" not in prof["table"].columns and prof["table"]["customers"].sum() <= len(clustered)


# --------------------------------------------------------------------------
# speed-ups that must not change a number
# --------------------------------------------------------------------------

def test_silhouette_and_rand_index_equal_scikit_learn():
    from sklearn.metrics import pairwise_distances, silhouette_score

    rng = np.random.default_rng(5)
    X = np.vstack([rng.normal(c, 1.0, size=(60, 3)) for c in (0, 4, 8)])
    D = pairwise_distances(X)
    for labels in (np.repeat([0, 1, 2], 60), rng.integers(0, 4, 180)):
        labels = labels.copy()
        labels[0] = 9                                            # a cluster of one scores 0
        assert seg.silhouette_from_distances(D, labels) == pytest.approx(silhouette_score(X, labels))
        other = rng.integers(0, 5, 180)
        assert seg.adjusted_rand(labels, other) == pytest.approx(adjusted_rand_score(labels, other))
    assert np.isnan(seg.silhouette_from_distances(D, np.zeros(180)))
    assert seg.adjusted_rand([1, 1, 2, 2], ["b", "b", "a", "a"]) == 1.0


def test_dirty_spellings_count_as_their_level(con):
    """Raw statuses and channels as exports write them (' PAID', 'App ',
    empty) are compared cleaned; categories likewise."""
    orders = pd.DataFrame({
        "order_id": [1, 2, 3, 4, 5, 6],
        "customer_id": [1, 1, 1, 2, 2, 2],
        "order_date": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-01", "2024-01-02",
                                      "2024-01-03"]),
        "amount": [10.0, 20, 30, 40, 50, 60],
        "status": [" PAID", "Paid", "refunded", "", None, "Cancelled "],
        "channel": ["App ", "app", "web", "WEB", None, "app"],
    })
    lines = pd.DataFrame({"order_id": [1, 2, 4, 5], "product_id": [1, 2, 3, 4],
                          "category": ["Home ", "home", "toys", "TOYS"], "quantity": [1, 1, 1, 1],
                          "unit_price": [10.0, 20, 40, 50]})
    cust = seg.customer_table(con.create_table("dirty_orders", orders, overwrite=True), "2024-06-30",
                              order_lines=con.create_table("dirty_lines", lines, overwrite=True))
    c1, c2 = cust.iloc[0], cust.iloc[1]
    assert (c1.n_orders, c1.monetary, c2.n_orders, c2.monetary) == (2, 30, 2, 90)   # paid, empty and null count
    assert (c1.ch_app, c1.ch_web) == (1.0, 0.0)                   # ' App' and 'app' are one channel
    assert (c2.ch_app, c2.ch_web) == (0.0, 1.0)                   # a missing channel is not a level
    assert (c1.cat_home, c2.cat_toys) == (1.0, 1.0)
    assert (c1.main_channel, c2.main_category) == ("app", "toys")


def test_snapshot_dates_and_the_holdout_snapshot(tiny):
    orders, _, _ = tiny
    dates = seg.order_dates(orders, "")
    assert dates == {"as_of": dt.date(2024, 7, 2), "first": dt.date(2024, 1, 1), "latest": dt.date(2024, 7, 2)}
    assert seg.order_dates(orders, "2024-03-31")["as_of"] == dt.date(2024, 3, 31)
    d = {"as_of": dt.date(2025, 1, 1), "first": dt.date(2023, 1, 1), "latest": dt.date(2026, 6, 30)}
    assert seg.holdout_snapshot(d, 180) == dt.date(2025, 1, 1)               # the data covers the holdout
    d["as_of"] = dt.date(2026, 6, 1)
    assert seg.holdout_snapshot(d, 180) == dt.date(2026, 6, 30) - dt.timedelta(days=180)
    d["first"] = dt.date(2025, 12, 1)
    assert seg.holdout_snapshot(d, 180) is None                              # too little history before it
    with pytest.raises(ParameterError, match="holdout_days"):
        seg.holdout_snapshot(d, 0)


def test_holdout_check_on_a_sample_of_customers(world):
    tables, *_ = world
    full = seg.rfm_holdout_check(tables["orders"], "2024-06-30", 180)
    part = seg.rfm_holdout_check(tables["orders"], "2024-06-30", 180, n_customers=600, max_customers=200)
    assert full["sampled_one_in"] == 1 and part["sampled_one_in"] == 3
    assert 0.2 * full["n_customers"] < part["n_customers"] < 0.5 * full["n_customers"]
    assert part["spearman"] == pytest.approx(full["spearman"], abs=0.15)
    assert "one in 3" in part["text"]
    again = seg.rfm_holdout_check(tables["orders"], "2024-06-30", 180, n_customers=600, max_customers=200)
    assert again["n_customers"] == part["n_customers"]                    # the same sample every run


# --------------------------------------------------------------------------
# the page: tables, inputs, charts, the previous run, metric cards
# --------------------------------------------------------------------------

def test_page_table_headings_formats_and_small_groups():
    t = pd.DataFrame({"customers": [120, 4], "share_revenue": [0.9, 0.1], "email": ["a@b.cn", "c@d.cn"],
                      "customer_id": [100001, 100002]}, index=pd.Index(["loyal", "new"], name="segment"))
    shown = seg.page_table(t, columns=["segment", "customer_id", "customers", "share_revenue", "email", "nope"])
    frame, opts = shown["table"], shown["table_options"]
    assert list(frame.columns) == ["Segment", "Customer", "Customers", "Share of revenue", "email"]
    assert opts["formats"]["Share of revenue"] == "{:.1%}" and opts["formats"]["Customer"] == "{}"
    assert opts["count_col"] == "Customers" and opts["min_size"] == 10     # small groups merged on the page
    assert seg.page_table(None) == {"table": None}
    from crmlab.report import table_html
    html = table_html(frame, **opts)
    assert "100001" in html and "100,001" not in html and "a@b.cn" not in html and "new" not in html


def test_missing_inputs_name_the_source_columns(world_cust):
    assert seg.missing_inputs(world_cust, ["categories", "channels", "age", "region"]) == []
    bare = world_cust[["customer_id", "recency", "frequency", "monetary", "n_orders", "tenure", "aov"]]
    assert seg.missing_inputs(bare, ["categories", "channels", "satisfaction"]) == [
        "order_lines.category", "orders.channel", "tickets.satisfaction"]
    assert seg.clustering_note(world_cust) is None
    assert "order_lines.category" in seg.clustering_note(bare)


def test_no_spend_at_all_makes_the_golden_customers_not_available(con, world_cust):
    # every order of zero amount: RFM still segments, but there is no revenue to rank by
    orders = con.create_table("zero_orders", pd.DataFrame({
        "customer_id": [1, 2, 2, 3], "amount": [0.0, 0.0, 0.0, 0.0],
        "order_date": pd.to_datetime(["2024-01-01", "2024-02-01", "2024-03-01", "2024-03-01"])}), overwrite=True)
    scored = seg.score_rfm(seg.customer_table(orders, AS_OF))
    assert len(scored) == 3 and scored["m_score"].nunique() == 1
    assert seg.missing_inputs(scored, ["revenue"]) == ["orders.amount above zero"]
    assert seg.missing_inputs(world_cust, ["revenue"]) == []


def test_segment_map_table_states_every_rule():
    rules = seg.load_rules()
    table = seg.segment_map_table(rules)
    assert table["segment"].tolist() == [r["name"] for r in rules["segments"]]
    champions = table.set_index("segment").loc["champions"]
    assert champions["rule"] == "recency score 4\u20135, frequency score 4\u20135, spend score 4\u20135"
    assert champions["label"] == "core customers"
    assert table.set_index("segment").loc["lost", "rule"] == "everyone not matched above"
    assert seg.rule_text({"name": "x", "f": [1, 1], "fm": [3, 5]}) == (
        "frequency score 1, frequency and spend (mean) score 3\u20135")


def test_segment_map_path_relative_to_the_project(tmp_path, monkeypatch):
    (tmp_path / "parameters").mkdir()
    (tmp_path / "parameters" / "map.yaml").write_text("rfm_score_weights: {r: 2}\n", encoding="utf-8")
    monkeypatch.setenv("CRMLAB_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path.parent)
    assert seg.load_rules("parameters/map.yaml")["rfm_score_weights"] == {"r": 2, "f": 1, "m": 1}
    with pytest.raises(ParameterError, match="segment_map"):
        seg.load_rules("parameters/none.yaml")


def test_previous_segments_first_run_other_source_and_ids(tmp_path):
    assert seg.previous_segments([])["segments"] is None
    run_dir = tmp_path / "run1"
    (run_dir / "exports").mkdir(parents=True)
    pd.DataFrame({"customer_id": [1, 2, 3], "segment": ["loyal", "new", "lost"]}).to_csv(
        run_dir / "exports" / "segments.csv", index=False)
    prev = [{"run_id": "run1", "run_dir": run_dir, "finished_at": "2026-06-01T10:00:00",
             "params": {"source": "/data/a", "as_of": ""}}]
    other = seg.previous_segments(prev, source="/data/b")
    assert other["segments"] is None and "another data source" in other["text"]
    same = seg.previous_segments(prev, source="/data/a")
    assert same["segments"]["customer_id"].tolist() == ["1", "2", "3"] and "2026-06-01" in same["text"]
    now = pd.DataFrame({"customer_id": [1, 2, 4], "segment": ["loyal", "loyal", "new"]})   # ids as numbers
    res = seg.transitions(same["segments"], now, min_size=1)
    assert res["counts"].loc["loyal", "loyal"] == 1 and res["counts"].loc["new", "loyal"] == 1
    assert res["counts"].to_numpy().sum() == 4
    (run_dir / "exports" / "segments.csv").unlink()
    assert "no segment list" in seg.previous_segments(prev, source="/data/a")["text"]


def test_metric_cards_kpis_first_with_labels():
    cards = seg.metric_cards({"share_loyal": 0.2, "n_customers": 100, "share_champions": 0.1, "gini": 0.5,
                              "share_tier_vip": 0.1})
    assert [c["key"] for c in cards if c["kpi"]] == ["n_customers", "share_champions"]
    by_key = {c["key"]: c for c in cards}
    assert by_key["share_champions"]["label"] == "Core customers"
    assert by_key["share_loyal"]["label"] == "Share: loyal" and by_key["share_loyal"]["fmt"] == "{:.1%}"
    assert by_key["share_tier_vip"]["label"] == "Share: VIP tier"


def test_crosstab_blanks_small_cells():
    cust = pd.DataFrame({"segment": ["loyal"] * 30 + ["new"] * 12 + ["lost"] * 3,
                         "region": ["East"] * 20 + ["West"] * 10 + ["East"] * 12 + [None] * 3})
    t = seg.crosstab(cust, "segment", "region", min_size=10, order=["new", "loyal", "lost"])
    assert t.index.tolist() == ["new", "loyal", "lost"]
    assert t.loc["loyal", "East"] == 20 and t.loc["new", "East"] == 12
    assert np.isnan(t.loc["new", "West"]) and np.isnan(t.loc["lost", "unknown"])   # under 10: blank


def test_charts_show_what_they_say(world_clustered):
    import matplotlib
    matplotlib.use("Agg")
    clustered, model = world_clustered
    summary = seg.rfm_summary(clustered, min_size=10)
    fig = seg.segment_chart(summary, min_size=10)
    shown = int((summary["table"]["customers"] >= 10).sum())
    assert len(fig.axes) == 2 and all(len(ax.patches) == shown for ax in fig.axes)
    fig = seg.k_choice_chart(model)
    chosen = [line for ax in fig.axes for line in ax.lines if list(line.get_xdata()) == [model.k_, model.k_]]
    assert len(chosen) == 2                                       # the chosen k marked on both panels
    prof = seg.segment_profiles(clustered, by="cluster")
    fig = seg.mix_chart(prof["categories"], max_levels=3)
    assert len(fig.axes) == len(prof["categories"]) and all(len(ax.patches) == 3 for ax in fig.axes)
    fig = seg.pareto_chart(seg.concentration(clustered))
    assert fig.axes[0].lines[0].get_ydata()[-1] == pytest.approx(1.0)
    holdout = {"table": pd.DataFrame({"customers": [5, 50, 60], "mean_future_spend": [1.0, 2.0, 3.0]},
                                     index=pd.Index([3, 4, 5], name="rfm_score")),
               "holdout_start": "2024-01-01", "holdout_end": "2024-06-29"}
    assert len(seg.holdout_chart(holdout, min_size=10).axes[0].patches) == 2   # the score held by 5 left out
    # nothing large enough to show: no chart (a tiny source still gets its page)
    assert seg.segment_chart(summary, min_size=10**6) is None
    assert seg.holdout_chart(holdout, min_size=100) is None and seg.mix_chart(pd.DataFrame()) is None
    assert seg.crosstab_chart(seg.crosstab(clustered, "segment", "region", min_size=10**6)) is None


# --------------------------------------------------------------------------
# foreign shapes: CSV folders nobody planned for publish or refuse cleanly
# --------------------------------------------------------------------------

def _shape_tables(n_cust: int = 12, n_orders: int = 40, seed: int = 3) -> dict[str, pd.DataFrame]:
    """A small export as CSV files: orders (status, channel) and customers (name, region)."""
    return small_export(n_cust, n_orders, seed)[0]


def _shape(name: str) -> dict[str, pd.DataFrame]:
    t = _shape_tables()
    o, c = t["orders"], t["customers"]
    return {
        "orders only": {"orders": o},
        "one customer": {"orders": o.assign(customer_id=1), "customers": c.head(1)},
        "one order": {"orders": o.head(2).tail(1), "customers": c},
        "one day": {**t, "orders": o.assign(order_date="2024-06-01")},
        "equal amounts": {**t, "orders": o.assign(amount=50.0)},
        "zero amounts": {**t, "orders": o.assign(amount=0.0)},
        "one region and channel": {"orders": o.assign(channel="web"), "customers": c.assign(region="East")},
        "ids with leading zeros": {k: v.assign(customer_id=v.customer_id.map("{:05d}".format)) for k, v in t.items()},
        "no status": {**t, "orders": o.drop(columns="status")},
        # sources quarantine a status outside the contract's domain; the rest are purchases
        "unknown statuses": {**t, "orders": o.assign(status=np.where(o.index % 2, "shipped", "paid"))},
        "Chinese and emoji text": {
            "orders": o.assign(channel=[["小程序", "café", "📱 app"][i % 3] for i in range(len(o))]),
            "customers": c.assign(name=[["张伟", "José Müller", "Zoë 🎉"][i % 3] for i in range(len(c))],
                                  region=[["华东", "Île-de-France"][i % 2] for i in range(len(c))])},
    }[name]


def _write_csv(tables: dict[str, pd.DataFrame], directory, encoding: str = "utf-8"):
    directory.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        df.to_csv(directory / f"{name}.csv", index=False, encoding=encoding)
    return directory


def _publish(data, as_of: str = "", min_size: int = 10) -> dict:
    """What notebooks/20-segmentation.ipynb computes, in its order, with its
    up-front "not available" decisions; returns the metrics."""
    tables = seg.dataset_tables(data)
    dates = seg.order_dates(tables["orders"], as_of)
    cust = seg.customer_table(**tables, as_of=dates["as_of"])
    scored = seg.score_rfm(cust)
    seg.page_table(seg.rfm_summary(scored, min_size=min_size)["table"], columns=seg.SEGMENT_COLUMNS,
                   min_size=min_size)
    seg.tier_summary(scored, min_size=min_size)
    snapshot = seg.holdout_snapshot(dates, 180)
    holdout = None if snapshot is None else seg.rfm_holdout_check(tables["orders"], snapshot, 180,
                                                                  latest=dates["latest"])
    clustered, model = scored.assign(cluster=""), None
    if len(scored) >= seg.MIN_CLUSTER_CUSTOMERS:
        clustered, model = seg.cluster_customers(scored, random_state=0)
    seg.segment_profiles(clustered, by="cluster" if model else "segment", min_size=min_size)
    seg.segment_profiles(scored, by="segment", min_size=min_size)
    conc = None if seg.missing_inputs(scored, ["revenue"]) else seg.concentration(scored)
    if conc is not None:
        golden = seg.golden_customers(clustered, top=50)
        if "customers" in tables:
            seg.attach_contacts(golden["table"], tables["customers"])
    if not seg.missing_inputs(clustered, ["region"]):
        seg.crosstab(clustered, "segment", "region", min_size=min_size)
    seg.findings(scored, clustered=clustered if model else None, model=model, conc=conc, holdout=holdout,
                 min_size=min_size)
    seg.segments_export(clustered)
    return seg.metrics(scored, model=model, conc=conc, holdout=holdout)


@pytest.mark.parametrize("name", ["orders only", "one customer", "one order", "one day", "equal amounts",
                                  "zero amounts", "one region and channel", "ids with leading zeros",
                                  "no status", "unknown statuses", "Chinese and emoji text"])
def test_foreign_shapes_publish(tmp_path, name):
    from crmlab import engine
    from crmlab.sources import open_source

    data = open_source(str(_write_csv(_shape(name), tmp_path / "src")))
    m = _publish(data)
    totals = engine.purchase_totals(data.table("orders"))
    assert m["n_customers"] == totals["purchasing_customers"] >= 1
    if name == "ids with leading zeros":
        export = seg.segments_export(seg.score_rfm(seg.customer_table(data.table("orders"))).assign(cluster=""))
        assert (export["customer_id"].astype(str).str.len() == 5).all()   # 00001 stays 00001


@pytest.mark.parametrize("statuses", [["refunded"], ["cancelled", " Refunded "]])
def test_no_purchase_at_all_is_refused_with_a_sentence(tmp_path, statuses):
    from crmlab.sources import open_source

    t = _shape_tables()
    orders = t["orders"].assign(status=[statuses[i % len(statuses)] for i in range(len(t["orders"]))])
    data = open_source(str(_write_csv({**t, "orders": orders}, tmp_path / "src")))
    with pytest.raises(NoDataError, match="table orders has no purchase"):
        _publish(data)
