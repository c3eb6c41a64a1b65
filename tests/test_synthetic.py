"""The synthetic world: layout, determinism, and that what it plants is there.

Worlds are small (a few thousand customers) and built once per module.
"""

from __future__ import annotations

import json
import multiprocessing
import re
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import phonenumbers
import pyarrow.parquet as pq
import pytest
from scipy import optimize, special, stats

from crmlab import calendars, synthetic
from crmlab.exceptions import ParameterError
from crmlab.synthetic import defects as D
from crmlab.synthetic import people
from crmlab.synthetic.clock import build_clock
from crmlab.synthetic.scenario import effective_scenario, scenario_hash
from crmlab.synthetic.tables import SCHEMAS, TABLES, TRUTH_SCHEMAS

EMAIL = re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
ISO = re.compile(r"^\d{4}-\d{2}-\d{2}$")
CANONICAL_PHONE = {"CN": re.compile(r"^1\d{10}$"), "US": re.compile(r"^\(\d{3}\) \d{3}-\d{4}$")}


def _scenario(tmp: Path, name: str, text: str) -> Path:
    p = tmp / f"{name}.yaml"
    p.write_text(text)
    return p


def _read(world: Path, name: str) -> pd.DataFrame:
    return pq.read_table(world / f"{name}.parquet").to_pandas()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """The small scenario with its default defects."""
    return synthetic.generate("small", out=tmp_path_factory.mktemp("w") / "small")


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    """A clean world (``defects: none``), bigger, for the model checks."""
    d = tmp_path_factory.mktemp("clean")
    scn = _scenario(d, "clean", "base: small\ncustomers: 4000\ndefects: none\n")
    return synthetic.generate(scn, out=d / "world")


# ------------------------------------------------------------------- layout

def test_tables_columns_and_world_json(world):
    info = json.loads((world / "world.json").read_text())
    assert set(info) == {"scenario", "seed", "customers", "locale", "start", "end", "currency",
                         "generator_version", "rows"}
    assert info["scenario"] == "small" and info["currency"] == "CNY" and info["end"] == "2026-06-30"
    con = duckdb.connect(str(world / "crm.duckdb"), read_only=True)
    for t in TABLES:
        tab = pq.read_table(world / f"{t}.parquet")
        assert tab.schema.names == SCHEMAS[t].names, t
        assert tab.schema.equals(SCHEMAS[t]), t
        assert info["rows"][t] == tab.num_rows > 0, t
        assert con.execute(f'SELECT count(*) FROM "{t}"').fetchall()[0][0] == tab.num_rows
    con.close()
    for name, schema in TRUTH_SCHEMAS.items():
        assert pq.read_schema(world / "truth" / f"{name}.parquet").names == schema.names
    assert set(pq.read_schema(world / "truth/duplicates.parquet").names) >= {
        "customer_id_a", "customer_id_b", "changes"}
    assert pq.read_schema(world / "truth/defects.parquet").names == [
        "table", "row", "key", "column", "defect"]
    assert set(pq.read_schema(world / "truth/campaigns.parquet").names) >= {
        "campaign_id", "has_control", "planned_treatment_share", "true_uplift",
        "true_revenue_uplift_per_contact", "effect_kind", "srm_planted", "shared_control_with"}
    assert set(pq.read_schema(world / "truth/daily.parquet").names) >= {
        "date", "multiplier", "is_promotion", "holiday", "expected_orders"}
    params = json.loads((world / "truth/params.json").read_text())
    assert params["bgnbd"]["time_unit"] == "D"
    assert set(params["bgnbd"]) >= {"r", "alpha", "a", "b"}
    # truth rows mirror customers.parquet, duplicates included
    tc = _read(world / "truth", "customers")
    assert tc["customer_id"].tolist() == _read(world, "customers")["customer_id"].tolist()


def test_same_seed_same_bytes_any_chunking_or_workers(tmp_path, monkeypatch):
    scn = _scenario(tmp_path, "tiny", "base: small\ncustomers: 900\nchunk_customers: 300\n")
    monkeypatch.setenv("CRMLAB_GENERATE_WORKERS", "0")
    a = synthetic.generate(scn, out=tmp_path / "a")
    monkeypatch.setenv("CRMLAB_GENERATE_WORKERS", "2")
    b = synthetic.generate(scn, out=tmp_path / "b")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.suffix in (".parquet", ".json"))
    assert len(files) == len(TABLES) + 9
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    for t in TABLES:
        q = f'SELECT * FROM "{t}"'
        ra = duckdb.connect(str(a / "crm.duckdb"), read_only=True).execute(q).fetchall()
        rb = duckdb.connect(str(b / "crm.duckdb"), read_only=True).execute(q).fetchall()
        assert ra == rb, t
    c = synthetic.generate(scn, seed=7, out=tmp_path / "c")
    assert (a / "orders.parquet").read_bytes() != (c / "orders.parquet").read_bytes()


def test_scenarios_load_and_hash():
    demo = synthetic.load_scenario("demo")
    assert demo["customers"] == 20_000 and demo["locale"] == {"zh_CN": 0.6, "en_US": 0.4}
    small = synthetic.load_scenario("small")
    assert small["customers"] == 2000 and small["bgnbd"] == demo["bgnbd"]
    assert synthetic.load_scenario("large")["customers"] == 1_000_000
    assert effective_scenario("small", locale="en_US")["locale"] == {"en_US": 1.0}
    h = scenario_hash(small)
    assert h == scenario_hash(synthetic.load_scenario("small"))
    assert h != scenario_hash(effective_scenario("small", seed=1))
    assert synthetic.world_dir("small").name == f"small-{h}"
    with pytest.raises(ParameterError, match="unknown scenario"):
        synthetic.load_scenario("no-such-scenario")
    with pytest.raises(ParameterError, match="locale"):
        effective_scenario("small", locale="fr_FR")


def test_generate_prints_nothing_and_refuses_foreign_dirs(tmp_path, capsys):
    scn = _scenario(tmp_path, "mini", "base: small\ncustomers: 60\n")
    synthetic.generate(scn, out=tmp_path / "w")
    synthetic.generate(scn, out=tmp_path / "w")            # replacing a world is fine
    assert capsys.readouterr().out == ""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ParameterError, match="not a synthetic world"):
        synthetic.generate(scn, out=tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def _ensure_in_child(args):
    scenario, counter = args
    import crmlab.synthetic.world as W

    original = W.build_world

    def counting(doc, root):
        with open(counter, "a") as fh:
            fh.write("x")
        return original(doc, root)

    W.build_world = counting
    return str(synthetic.ensure_world(scenario))


def test_ensure_world_caches_and_generates_once_under_concurrency(tmp_path, monkeypatch):
    monkeypatch.setenv("CRMLAB_DATA_DIR", str(tmp_path / "data"))
    scn = _scenario(tmp_path, "mini", "base: small\ncustomers: 80\n")
    counter = tmp_path / "count"
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(3) as pool:
        paths = pool.map(_ensure_in_child, [(str(scn), str(counter))] * 3)
    assert len(set(paths)) == 1 and counter.read_text() == "x"
    path = Path(paths[0])
    assert path.parent == tmp_path / "data" and path.name.startswith("mini-")
    stamp = (path / "world.json").stat().st_mtime_ns
    assert synthetic.ensure_world(scn) == path
    assert (path / "world.json").stat().st_mtime_ns == stamp
    scn.write_text("base: small\ncustomers: 81\n")      # a changed scenario is a new world
    assert synthetic.ensure_world(scn) != path


# ---------------------------------------------------------- purchase models

def _bgnbd_nll(params, x, tx, T):
    """Negative log-likelihood of BG/NBD (Fader, Hardie & Lee 2005, eq. 6)."""
    r, al, a, b = np.exp(params)
    a1 = special.gammaln(r + x) - special.gammaln(r) + r * np.log(al)
    a2 = special.betaln(a, b + x) - special.betaln(a, b)
    a3 = -(r + x) * np.log(al + T)
    a4 = np.where(x > 0, np.log(a) - np.log(b + x - 1) - (r + x) * np.log(al + tx), -np.inf)
    return -(a1 + a2 + np.logaddexp(a3, a4)).sum()


def _organic(world):
    o = _read(world, "orders")
    co = _read(world / "truth", "campaign_orders")
    return o[~o["order_id"].isin(co.loc[co["incremental"], "order_id"])]


def test_purchases_are_bgnbd(clean):
    params = json.loads((clean / "truth/params.json").read_text())
    scn = effective_scenario(params)
    clock = build_clock(scn)
    tc = _read(clean / "truth", "customers")
    o = _organic(clean)
    g = o.groupby("customer_id")["order_date"].agg(["min", "max", "count"])
    tc = tc.set_index("customer_id").join(g, how="inner")
    end = pd.Timestamp(params["end"]) + pd.Timedelta(days=1)
    t0 = pd.Timestamp(params["start"])
    signup_t = ((tc["min"] - t0).dt.total_seconds() / 86400).to_numpy()
    loc = np.array([list(scn["locale"]).index(x) for x in tc["locale"]])
    expo = clock.cum[loc, clock.n_days] - clock.tau(loc, clock.t_of_display(signup_t * 86400))
    x = tc["count"].to_numpy() - 1
    lam, p, alive = tc["lam"].to_numpy(), tc["p"].to_numpy(), tc["alive_at_end"].to_numpy()
    # repeat purchases of customers still active: Poisson thinned by survival,
    # E[x | alive] = lam * exposure * (1 - p)
    expected = (lam * expo * (1 - p))[alive].sum()
    assert abs(x[alive].sum() / expected - 1) < 0.05
    # how many are still active: P(alive) = exp(-lam p exposure)
    pa = np.exp(-lam * p * expo)
    assert abs(alive.sum() - pa.sum()) < 4 * np.sqrt((pa * (1 - pa)).sum())
    # the dropout date is the last organic purchase of those who left
    last = tc.loc[~alive, "max"].dt.normalize()
    assert (pd.to_datetime(tc.loc[~alive, "dropout_date"]) == last).all()
    assert tc.loc[alive, "dropout_date"].isna().all()
    # a maximum-likelihood fit on calendar time recovers the planted population
    tx = ((tc["max"] - tc["min"]).dt.total_seconds() / 86400).to_numpy()
    T = ((end - tc["min"]).dt.total_seconds() / 86400).to_numpy()
    fit = optimize.minimize(_bgnbd_nll, np.log([1.0, 5.0, 1.0, 5.0]), args=(x, tx, T),
                            method="Nelder-Mead", options={"maxiter": 3000, "xatol": 1e-5})
    got = dict(zip("r alpha a b".split(), np.exp(fit.x)))
    for k in ("r", "alpha", "a", "b"):
        assert got[k] == pytest.approx(params["bgnbd"][k], rel=0.2), (k, got)


def test_purchase_counts_match_bgnbd_closed_forms():
    """Fader, Hardie & Lee (2005), eq. 8 (x = 0) and eq. 9, with their CDNOW
    estimates (r 0.243, alpha 4.414, a 0.793, b 2.426 in weeks) on a flat clock."""
    from crmlab.synthetic.behaviour import purchase_events
    from crmlab.synthetic.clock import Clock

    days = 39 * 7
    flat = Clock(start=pd.Timestamp("2024-01-01").date(), n_days=days, locales=("en_US",),
                 mult=np.ones((1, days)), cum=np.arange(days + 1.0)[None, :],
                 promo=np.zeros((1, days), bool), extra_discount=np.zeros((1, days)),
                 holiday=[None] * days, hour_cdf=np.linspace(0, 1, 25))
    r, alpha, a, b = 0.243, 4.414 * 7, 0.793, 2.426
    n = 400_000
    rng = np.random.default_rng(5)
    ev = purchase_events(rng, flat, np.zeros(n, dtype=np.int64), np.zeros(n),
                         rng.gamma(r, 1 / alpha, n), rng.beta(a, b, n))
    x, t = ev["x"], float(days)
    z = t / (alpha + t)
    expected = (a + b - 1) / (a - 1) * (1 - (alpha / (alpha + t)) ** r
                                        * special.hyp2f1(r, b, a + b - 1, z))   # eq. 9
    assert x.mean() == pytest.approx(expected, rel=0.02)
    assert (x == 0).mean() == pytest.approx((alpha / (alpha + t)) ** r, abs=0.003)   # eq. 8


def test_spend_is_gamma_gamma_per_segment(clean):
    params = json.loads((clean / "truth/params.json").read_text())
    tc = _read(clean / "truth", "customers").set_index("customer_id")
    o = _organic(clean)
    o = o[o["status"] == "paid"]
    per = o.groupby("customer_id")["amount"].agg(["mean", "count"]).join(tc)
    for seg, cfg in params["segments"].items():
        s = per[per["segment"] == seg]
        # the segment's orders average its Gamma-Gamma mean p * gamma / (q - 1)
        w = s["count"]
        assert (s["mean"] * w).sum() / w.sum() == pytest.approx(
            (s["spend_mean"] * w).sum() / w.sum(), rel=0.05)
        assert s["spend_mean"].mean() == pytest.approx(cfg["spend"]["mean"], rel=0.1)
    busy = per[per["count"] >= 10]
    assert np.corrcoef(np.log(busy["mean"]), np.log(busy["spend_mean"]))[0, 1] > 0.8
    # lines add up: amount + discount = sum of quantity * unit price
    lines = _read(clean, "order_lines")
    gross = (lines["quantity"] * lines["unit_price"]).groupby(lines["order_id"]).sum()
    allo = _read(clean, "orders").set_index("order_id")
    assert np.allclose(allo["amount"] + allo["discount"], gross.loc[allo.index], atol=0.02)
    assert (allo["quantity"] == lines.groupby("order_id")["quantity"].sum().loc[allo.index]).all()


def test_segments_separable_by_behaviour_not_by_one_column(clean):
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    con = duckdb.connect()
    o, lpath = str(clean / "orders.parquet"), str(clean / "order_lines.parquet")
    f = con.execute(f"""SELECT customer_id, avg(ln(amount)) AS spend,
        sum(discount) / sum(amount + discount) AS disc FROM '{o}' GROUP BY 1""").df()
    cat = con.execute(f"""SELECT customer_id, category, sum(l.quantity * unit_price) AS v
        FROM '{o}' JOIN '{lpath}' l USING (order_id) GROUP BY 1, 2""").df()
    ch = con.execute(f"SELECT customer_id, channel, count(*) AS n FROM '{o}' GROUP BY 1, 2").df()
    cat = cat.pivot_table(index="customer_id", columns="category", values="v", fill_value=0)
    ch = ch.pivot_table(index="customer_id", columns="channel", values="n", fill_value=0)
    cust = _read(clean, "customers").set_index("customer_id")
    X = (f.set_index("customer_id")
         .join(cat.div(cat.sum(axis=1), axis=0))
         .join(ch.div(ch.sum(axis=1), axis=0))
         .join((2026 - cust["birth_date"].str[:4].astype(int)).rename("age")))
    truth = _read(clean / "truth", "customers").set_index("customer_id")["segment"].loc[X.index]
    k = truth.nunique()
    with threadpool_limits(1):        # small data: threads only contend
        labels = KMeans(k, n_init=4, random_state=0).fit_predict(StandardScaler().fit_transform(X))
        assert adjusted_rand_score(truth, labels) >= 0.7
        for col in X.columns:
            one = KMeans(k, n_init=1, random_state=0).fit_predict(X[[col]].to_numpy())
            assert adjusted_rand_score(truth, one) < 0.5, col


def test_seasonality_and_holidays_show(clean):
    o = _organic(clean)
    cust = _read(clean, "customers").set_index("customer_id")["country"]
    o = o.assign(day=o["order_date"].dt.normalize(), country=o["customer_id"].map(cust))
    daily = o.groupby(["country", "day"]).size()
    cn, us = daily.loc["CN"], daily.loc["US"]
    western = calendars.holidays([2024, 2025], "western").set_index("name")["date"]
    for year in (2024, 2025):
        normal = cn.loc[f"{year}-10-20":f"{year}-11-05"].median()
        assert cn.loc[f"{year}-11-11"] > 2 * normal                    # Singles' Day
        bf = western["black_friday"][western["black_friday"].dt.year == year].iloc[0]
        assert us.loc[bf] > 2 * us.loc[f"{year}-11-01":f"{year}-11-20"].median()
    cny = pd.Timestamp("2025-01-29")
    assert cn.loc[cny - pd.Timedelta(days=1):cny + pd.Timedelta(days=3)].mean() < \
        0.75 * cn.loc["2025-01-05":"2025-01-18"].mean()
    d = _read(clean / "truth", "daily").set_index("date")
    assert d.loc[pd.Timestamp("2025-11-11").date(), "holiday"] == "singles_day"
    assert d["multiplier_zh_CN"].mean() == pytest.approx(1.0)
    assert d.loc[pd.Timestamp("2025-11-11").date(), "is_promotion"]
    per_day = o.groupby(o["day"].dt.strftime("%Y-%m-%d")).size()
    n = per_day.reindex([str(x) for x in d.index], fill_value=0).to_numpy()
    assert np.corrcoef(n, d["expected_orders"])[0, 1] > 0.9


def test_tickets_and_interactions_carry_churn_signal(clean):
    tc = _read(clean / "truth", "customers").set_index("customer_id")
    tk = _read(clean, "tickets").join(tc, on="customer_id")
    assert set(tk["satisfaction"]) <= {1, 2, 3, 4, 5} and tk["nps"].between(0, 10).all()
    assert stats.spearmanr(tk["p"], tk["satisfaction"]).statistic < -0.1
    assert stats.spearmanr(tk["satisfaction"], tk["nps"]).statistic > 0.6
    assert tk["resolved_at"].isna().mean() < 0.1
    assert (tk["resolved_at"].dropna() > tk.loc[tk["resolved_at"].notna(), "opened_at"]).all()
    it = _read(clean, "interactions").join(tc[["dropout_date", "lam"]], on="customer_id")
    gone = it[it["dropout_date"].notna()]
    drop = pd.to_datetime(gone["dropout_date"])
    before = (gone["ts"] < drop).groupby(gone["customer_id"]).sum()
    after = (gone["ts"] > drop + pd.Timedelta(days=90)).groupby(gone["customer_id"]).sum()
    assert after.sum() < 0.1 * before.sum()


# ---------------------------------------------------------------- campaigns

def test_campaign_truth_is_consistent(world):
    cc = _read(world, "campaign_contacts")
    tcon = _read(world / "truth", "contacts")
    m = cc.merge(tcon, on=["campaign_id", "customer_id", "group"], validate="one_to_one")
    assert len(m) == len(cc)
    for group, col in (("control", "p_control"), ("treatment", "p_treatment")):
        g = m[m["group"] == group]
        sd = np.sqrt((g[col] * (1 - g[col])).sum())
        assert abs(g["converted"].sum() - g[col].sum()) < 4 * sd, group
    camp = _read(world, "campaigns").set_index("campaign_id")
    tcam = _read(world / "truth", "campaigns").set_index("campaign_id")
    assert 12 <= len(camp) <= 16 and set(camp["channel"]) <= {"email", "sms", "app_push", "wechat"}
    kinds = tcam["effect_kind"].value_counts()
    assert kinds["negative"] == 1 and 2 <= kinds["none"] <= 3 and kinds["heterogeneous"] >= 2
    assert (tcam.loc[tcam["effect_kind"] == "none", "true_uplift"] == 0).all()
    assert (tcam.loc[tcam["effect_kind"] == "negative", "true_uplift"] < 0).all()
    assert (tcam.loc[tcam["effect_kind"] == "positive", "true_uplift"] > 0).all()
    assert set(camp["planned_treatment_share"].dropna()) == {0.5, 0.8}
    # no control group: none in the contacts, null planned share
    nc = tcam.index[~tcam["has_control"]]
    assert len(nc) >= 1 and camp.loc[nc, "planned_treatment_share"].isna().all()
    assert (cc.loc[cc["campaign_id"].isin(nc), "group"] == "treatment").all()
    # two campaigns share one control group
    a, b = tcam.dropna(subset=["shared_control_with"]).index[:2]
    ctrl = cc[cc["group"] == "control"].groupby("campaign_id")["customer_id"].apply(set)
    assert tcam.loc[a, "shared_control_with"] == b and ctrl[a] == ctrl[b]
    # the planted sample-ratio mismatch: its control group lost a share of rows
    srm = tcam.index[tcam["srm_planted"]]
    assert len(srm) == 1
    groups = cc.loc[cc["campaign_id"] == srm[0], "group"]
    s = camp.loc[srm[0], "planned_treatment_share"]
    loss = next(c["srm"]["control_loss"] for c in synthetic.load_scenario("small")["campaigns"]["list"]
                if c["id"] == srm[0])
    expected = s / (s + (1 - s) * (1 - loss))
    assert abs((groups == "treatment").mean() - expected) < 4 * np.sqrt(expected * (1 - expected) / len(groups))
    # controls get no message; revenue only with a conversion
    assert (cc.loc[cc["group"] == "control", ["delivered", "opened", "clicked"]] == 0).all().all()
    assert (cc.loc[cc["converted"] == 0, "revenue"] == 0).all()
    assert (cc["clicked"] <= cc["opened"]).all() and (cc["opened"] <= cc["delivered"]).all()


def test_conversions_are_real_orders(clean):
    cc = _read(clean, "campaign_contacts")
    co = _read(clean / "truth", "campaign_orders")
    o = _read(clean, "orders").set_index("order_id")
    camp = _read(clean / "truth", "campaigns").set_index("campaign_id")
    assert co["incremental"].sum() > 0 and co["order_id"].isin(o.index).all()
    j = co.join(o[["order_date"]], on="order_id").merge(
        cc[["campaign_id", "customer_id", "sent_at"]], on=["campaign_id", "customer_id"])
    days = j["campaign_id"].map(camp["attribution_days"])
    assert ((j["order_date"] >= j["sent_at"]) &
            (j["order_date"] < j["sent_at"] + pd.to_timedelta(days, unit="D"))).all()
    conv = cc.set_index(["campaign_id", "customer_id"])["converted"]
    with_orders = co.groupby(["campaign_id", "customer_id"]).size()
    assert (conv.loc[with_orders.index] == 1).all() and conv.sum() == len(with_orders)
    # incremental orders only for treated contacts of campaigns with an effect,
    # as many as planted (what a difference-in-differences on orders estimates)
    inc = co[co["incremental"]]
    assert (inc["group"] == "treatment").all()
    assert set(inc["campaign_id"]) <= set(camp.index[camp["true_uplift"] > 0])
    planted = camp["n_treatment"] * camp["true_extra_orders_per_contact"]
    got = inc.groupby("campaign_id").size().reindex(camp.index, fill_value=0)
    assert (abs(got - planted) <= 4 * np.sqrt(planted) + 1).all()
    assert got.sum() > 0.8 * planted.sum()


# ------------------------------------------------------------------ defects

def test_clean_world_is_clean(clean):
    assert len(_read(clean / "truth", "defects")) == 0
    assert len(_read(clean / "truth", "duplicates")) == 0
    c = _read(clean, "customers")
    assert c.notna().all().all() and not (c == "").any().any()
    for num, country in zip(c["phone"], c["country"]):
        assert CANONICAL_PHONE[country].match(num)
        assert phonenumbers.is_valid_number(phonenumbers.parse(num, country))
    assert c["email"].str.match(EMAIL).all() and not c["email"].str.lower().duplicated().any()
    assert c["birth_date"].str.match(ISO).all() and c["signup_date"].str.match(ISO).all()
    assert (c["birth_date"] < c["signup_date"]).all()
    cn = c[c["country"] == "CN"]
    assert all(len(x) == 18 and people.id_check_digit(x[:17]) == x[17] for x in cn["national_id"])
    o = _read(clean, "orders")
    assert o["amount"].between(0.01, 1e6).all() and (o["discount"] >= 0).all()
    assert set(o["status"]) == {"paid", "refunded", "cancelled"}
    assert (o["order_date"] <= pd.Timestamp("2026-07-01")).all()
    assert o["customer_id"].isin(c["customer_id"]).all()


def _defective(world, table):
    d = _read(world / "truth", "defects")
    return d[d["table"] == table]


def test_defects_at_configured_rates_and_really_defective(world):
    rates = synthetic.load_scenario("small")["defects"]
    d = _read(world / "truth", "defects")
    c = _read(world, "customers")
    o = _read(world, "orders")
    t = _read(world, "tickets")
    size = {"customers": len(c), "orders": len(o), "tickets": len(t)}
    assert set(d["defect"]) == set(D.WHERE) | {"duplicate_customer"}
    for cls, where in D.WHERE.items():
        for table in where:
            rows = d[(d["defect"] == cls) & (d["table"] == table)]["row"].nunique()
            expect = rates[cls] * size[table]
            assert abs(rows - expect) <= max(3 * np.sqrt(expect), 2), (cls, table, rows, expect)
    assert not d.duplicated(["table", "row", "column"]).any()
    # each planted value is wrong in the way its class says; keys and rows agree
    key = {"customers": "customer_id", "orders": "order_id", "tickets": "ticket_id"}
    frames = {"customers": c, "orders": o, "tickets": t}
    for table, frame in frames.items():
        sub = d[d["table"] == table]
        assert (frame[key[table]].to_numpy()[sub["row"] - 1] == sub["key"]).all()
    cust = d[d["table"] == "customers"].set_index("row")
    val = {r: c.iloc[r - 1] for r in cust.index}
    for r, row in cust.iterrows():
        v = val[r][row["column"]] if isinstance(row["column"], str) else None
        country = val[r]["country"]
        match row["defect"]:
            case "invalid_email":
                assert not EMAIL.match(v)
            case "invalid_phone":
                try:
                    ok = phonenumbers.is_valid_number(phonenumbers.parse(v, country))
                except phonenumbers.NumberParseException:
                    ok = False
                assert not ok, v
            case "mixed_phone_format":
                assert not CANONICAL_PHONE[country].match(v)
                assert phonenumbers.is_valid_number(phonenumbers.parse(v, country))
            case "missing_value":
                assert v is None or v == "" or pd.isna(v)
            case "date_out_of_range":
                assert not 1900 <= int(v[:4]) <= 2026
            case "mixed_date_format":
                assert not ISO.match(v) and re.search(r"\d", v)
            case "case_whitespace":
                if row["column"] == "gender":
                    assert v not in {"F", "M"} and v.strip().upper() in {"F", "M"}
                else:
                    assert v != v.strip() or v != v.title()
            case "out_of_domain":
                assert v not in {"F", "M"}
    ords = d[d["table"] == "orders"]
    for cls, check in {
        "negative_amount": lambda x: x["amount"] < 0,
        "absurd_amount": lambda x: x["amount"] > 1e6,
        "future_date": lambda x: x["order_date"] > pd.Timestamp("2027-06-30"),
        "orphan_order": lambda x: ~x["customer_id"].isin(c["customer_id"]),
        "missing_value": lambda x: x["channel"].isna(),
        "out_of_domain": lambda x: ~x["status"].isin(["paid", "refunded", "cancelled"]),
        "case_whitespace": lambda x: x["status"].str.strip().str.lower().isin(
            ["paid", "refunded", "cancelled"]) | x["channel"].str.strip().str.lower().isin(
            ["web", "app", "store", "mini_program"]),
    }.items():
        rows = o.iloc[ords.loc[ords["defect"] == cls, "row"] - 1]
        assert len(rows) and check(rows).all(), cls
    # ... and the rows without a defect are clean
    ok = o[~pd.Series(np.arange(1, len(o) + 1)).isin(set(ords["row"])).to_numpy()]
    assert ok["amount"].between(0.01, 1e6).all()
    assert ok["status"].isin(["paid", "refunded", "cancelled"]).all() and ok["channel"].notna().all()
    assert ok["customer_id"].isin(c["customer_id"]).all()
    tt = d[d["table"] == "tickets"]
    bad = t.iloc[tt["row"] - 1]
    assert (~bad["satisfaction"].between(1, 5) | ~bad["nps"].between(0, 10)).all()
    good = t.drop(index=tt["row"] - 1)
    assert good["satisfaction"].between(1, 5).all() and good["nps"].between(0, 10).all()
    cf = set(d.loc[d["table"] == "customers", "row"])
    cleanc = c[~pd.Series(np.arange(1, len(c) + 1)).isin(cf).to_numpy()]
    assert cleanc["email"].str.match(EMAIL).all()
    assert all(CANONICAL_PHONE[k].match(p) for p, k in zip(cleanc["phone"], cleanc["country"]))
    assert cleanc["birth_date"].str.match(ISO).all() and cleanc["gender"].isin(["F", "M"]).all()


def test_duplicates_are_near_copies_and_exactly_the_listed_pairs(tmp_path):
    rates = {k: 0 for k in synthetic.DEFECT_CLASSES} | {"duplicate_customer": 0.03}
    scn = _scenario(tmp_path, "dups", f"base: small\ncustomers: 3000\ndefects: {json.dumps(rates)}\n")
    w = synthetic.generate(scn, out=tmp_path / "w")
    c = _read(w, "customers").set_index("customer_id")
    pairs = _read(w / "truth", "duplicates")
    assert len(pairs) == 90 and pairs["customer_id_b"].min() > c.index[:3000].max()
    tc = _read(w / "truth", "customers").set_index("customer_id")
    assert (tc.loc[pairs["customer_id_b"], "duplicate_of"].to_numpy() == pairs["customer_id_a"]).all()
    for a, b in zip(pairs["customer_id_a"], pairs["customer_id_b"]):
        ra, rb = c.loc[a], c.loc[b]
        assert D.name_similarity(ra["name"], rb["name"]) >= 0.5, (ra["name"], rb["name"])
        same_phone = rb["phone"] is not None and pd.notna(rb["phone"]) and \
            re.sub(r"\D", "", rb["phone"]).endswith(re.sub(r"\D", "", ra["phone"])[-10:])
        same_mail = pd.notna(rb["email"]) and rb["email"].lower() == ra["email"].lower()
        assert same_phone or same_mail
        assert rb["signup_date"] > ra["signup_date"]
        assert rb["acquisition_channel"] != ra["acquisition_channel"]
        assert (ra["region"], ra["country"]) == (rb["region"], rb["country"])
    # no other two records share a phone number or an e-mail address
    key_phone = c["phone"].dropna().map(lambda p: re.sub(r"\D", "", p)[-10:])
    key_mail = c["email"].dropna().str.lower()
    found = set()
    for keys in (key_phone, key_mail):
        for _, ids in keys.groupby(keys).groups.items():
            if len(ids) > 1:
                assert len(ids) == 2
                found.add(tuple(sorted(ids)))
    assert found == set(zip(pairs["customer_id_a"], pairs["customer_id_b"]))
    # orders moved to the duplicate are counted
    o = _read(w, "orders")
    moved = o[o["customer_id"].isin(pairs["customer_id_b"])].groupby("customer_id").size()
    assert moved.reindex(pairs["customer_id_b"], fill_value=0).tolist() == pairs["orders_moved"].tolist()
    assert pairs["orders_moved"].sum() > 0
    # every defect a duplicate carries is listed under its class too
    d = _read(w / "truth", "defects")
    assert set(d["defect"]) <= {"duplicate_customer", "missing_value", "mixed_phone_format"}
    fmt = pairs["changes"].str.contains("phone:format").sum()
    assert (d["defect"] == "mixed_phone_format").sum() == fmt


def test_phone_formats_parse_to_the_same_number():
    rng = np.random.default_rng(3)
    for locale, region in (("zh_CN", "CN"), ("en_US", "US")):
        for number in people.phone_numbers(rng, locale, 200):
            e164 = {phonenumbers.format_number(phonenumbers.parse(people.format_phone(number, locale, f), region),
                                               phonenumbers.PhoneNumberFormat.E164)
                    for f in (people.PHONE_FORMATS[locale],) + people.PHONE_FORMATS_OTHER[locale]}
            assert len(e164) == 1
            assert phonenumbers.is_valid_number(phonenumbers.parse(number, region))


def test_resident_id_check_digit_matches_published_example():
    # GB 11643-1999's worked example: 11010519491231002 -> check character X
    assert people.id_check_digit("11010519491231002") == "X"
    ids = people.cn_resident_ids(np.random.default_rng(0), np.array(["44", "31"]),
                                 np.array(["1990-01-02", "1985-12-31"], dtype="datetime64[D]"),
                                 np.array([True, False]))
    assert [x[6:14] for x in ids] == ["19900102", "19851231"]
    assert int(ids[0][16]) % 2 == 0 and int(ids[1][16]) % 2 == 1     # women even, men odd
