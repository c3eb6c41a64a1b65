"""The segmentation report end to end, and its accuracy against the planted world.

End to end: ``notebooks/20-segmentation.ipynb`` run by
``crmlab.runner.run_report`` on the generator's ``small`` world (2,000
customers) twice in one reports tree -- the second run with a drill-down
filter, so it also shows the movement since the first -- and once on the
same world cut down to the minimal contract (orders with customer_id,
order_date, amount and nothing else).

Accuracy (slow): on the ``demo`` world (20,000 customers, five latent
segments that differ in what, where and how much they buy) the behavioural
clusters recover the planted segments with adjusted Rand >= 0.7, and the
RFM score ranks customers by their spend in the following 180 days
(Spearman > 0, p < 0.001).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from conftest import assert_no_personal_values, minimal_orders_source
from crmlab import segmentation as seg
from crmlab.runner import run_report

synthetic = pytest.importorskip("crmlab.synthetic")

#: the metrics.json keys fixed by issue 4 (plus one share per segment of the map)
ISSUE_KEYS = {"n_customers", "n_clusters", "silhouette", "top20_revenue_share", "gini"}
SEGMENT_KEYS = {f"share_{seg.slug(r['name'])}" for r in seg.load_rules()["segments"]}
FILTER = 'region == "East" and age >= 30 and segment == "at risk"'


@pytest.fixture(scope="module")
def small_world() -> Path:
    return Path(synthetic.ensure_world("small"))


@pytest.fixture(scope="module")
def small_runs(small_world, tmp_path_factory):
    """Two runs on the small world in one reports tree: the second (with a
    drill-down filter) sees the first as its previous run."""
    reports = tmp_path_factory.mktemp("segmentation-reports")
    first = run_report("segmentation", source=str(small_world), reports_dir=reports)
    second = run_report("segmentation", source=str(small_world), reports_dir=reports,
                        params={"filter": FILTER})
    return first, second


def _metrics(run) -> dict:
    return json.loads((run.run_dir / "metrics.json").read_text(encoding="utf-8"))


def _page(run) -> str:
    return (run.run_dir / "report.html").read_text(encoding="utf-8")


def test_the_report_runs_and_its_figures_are_plausible(small_runs, small_world):
    run = small_runs[0]
    assert run.exit_code == 0, run.message
    m = _metrics(run)
    assert ISSUE_KEYS | SEGMENT_KEYS | {"holdout_spearman"} <= set(m)
    buyers = pd.read_parquet(small_world / "orders.parquet", columns=["customer_id"]).customer_id.nunique()
    assert 0.9 * buyers <= m["n_customers"] <= buyers
    assert sum(m[k] for k in SEGMENT_KEYS) == pytest.approx(1.0, abs=1e-3)
    assert all(0 <= m[k] < 0.6 for k in SEGMENT_KEYS)            # no segment swallows everyone
    assert 2 <= m["n_clusters"] <= 10 and 0 < m["silhouette"] <= 1
    assert 0.2 < m["top20_revenue_share"] < 1 and 0 < m["gini"] < 1
    assert m["holdout_spearman"] > 0.2
    kpis = json.loads((run.run_dir / "kpis.json").read_text(encoding="utf-8"))
    assert [k["key"] for k in kpis][:2] == ["n_customers", "share_champions"]


def test_the_export_has_the_issue_columns(small_runs):
    run = small_runs[0]
    export = pd.read_csv(run.run_dir / "exports" / "segments.csv")
    assert list(export.columns) == ["customer_id", "recency", "frequency", "monetary", "r_score", "f_score",
                                    "m_score", "rfm_score", "segment", "tier", "cluster"]
    assert len(export) == _metrics(run)["n_customers"] and export.customer_id.is_unique
    assert export[["r_score", "f_score", "m_score"]].isin(range(1, 6)).all().all()
    assert (export.rfm_score == export.r_score + export.f_score + export.m_score).all()
    names = {r["name"] for r in seg.load_rules()["segments"]}
    assert export.cluster.notna().all() and export.segment.isin(names).all()


def test_the_page_masks_personal_data(small_runs, small_world):
    """No raw email, phone or national id of the world appears on either page
    (the golden customers and the drill-down list show masked contacts)."""
    for run in small_runs:
        page = _page(run)
        assert "@" in page and "***@" in page                     # masked emails are listed
        assert_no_personal_values(page, small_world, ("email", "phone", "national_id"))


def test_the_page_reads_like_a_report(small_runs):
    first, second = (_page(r) for r in small_runs)
    for title in ("RFM segments", "The segment map", "Value tiers", "Does the RFM score predict spend?",
                  "Behavioural groups", "Personas", "Golden customers", "Movement since the previous run"):
        assert title in first
    assert "Spearman rank correlation" in first                  # the holdout figure is stated
    assert "first run of this report" in first                   # movement: first run says so
    assert "customers by segment and region" in first            # no filter: the overview
    assert "What changed" in first and "<pre" not in first and "Traceback" not in first
    # the second run: the drill-down and the movement since the first run
    assert "Drill-down: region ==" in second and "match the filter" in second
    assert "Compared with the previous run" in second and "are in the same segment" in second
    assert "Segment last run" in second


@pytest.fixture(scope="module")
def minimal_run(small_world, tmp_path_factory):
    """The small world's orders with only customer_id, order_date, amount."""
    src = minimal_orders_source(small_world, tmp_path_factory.mktemp("minimal-source"))
    return run_report("segmentation", source=str(src), reports_dir=tmp_path_factory.mktemp("minimal-reports"))


def test_minimal_source_shows_what_is_not_available(minimal_run):
    run = minimal_run
    assert run.exit_code == 0, run.message
    m = _metrics(run)
    assert ISSUE_KEYS | SEGMENT_KEYS <= set(m)
    assert set(m["_not_available"]) == {"What each group buys", "Where each group buys", "Drill-down"}
    page = _page(run)
    for needs in ("order_lines.category", "orders.channel", "customers.region"):
        assert f"Not available: needs {needs}" in page
    assert "formed without what customers buy, where they buy, their discount habit, their age" in page
    export = pd.read_csv(run.run_dir / "exports" / "segments.csv")
    assert export.cluster.notna().all() and len(export) == m["n_customers"]


def test_a_foreign_export_without_spend_publishes(tmp_path):
    """A CSV export of zero-amount orders only (free samples), ids with
    leading zeros, statuses the contract knows and does not (``shipped`` is
    quarantined), Chinese and emoji channels: the page publishes, and the
    section that needs revenue says so."""
    src = tmp_path / "src"
    src.mkdir()
    n = 30
    pd.DataFrame({
        "order_id": range(1, n + 1),
        "customer_id": [f"{1 + i % 12:05d}" for i in range(n)],
        "order_date": [(dt.date(2024, 1, 1) + dt.timedelta(days=7 * i)).isoformat() for i in range(n)],
        "amount": 0.0,
        "status": [["paid", None, "refunded", "shipped", "Paid "][i % 5] for i in range(n)],
        "channel": [["小程序", "café", "📱 app"][i % 3] for i in range(n)],
    }).to_csv(src / "orders.csv", index=False)
    run = run_report("segmentation", source=str(src), reports_dir=tmp_path / "reports")
    assert run.exit_code == 0, run.message
    m = _metrics(run)
    assert m["n_customers"] == 12 and m["purchase_revenue"] == 0
    assert "Golden customers" in m["_not_available"]
    assert "Not available: needs orders.amount above zero" in _page(run)
    export = pd.read_csv(run.run_dir / "exports" / "segments.csv", dtype={"customer_id": str})
    assert sorted(export.customer_id) == [f"{i:05d}" for i in range(1, 13)]


# --------------------------------------------------------------------------
# accuracy on the demo world (issue 4)
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo():
    from crmlab.sources import open_source

    data = open_source(str(synthetic.ensure_world("demo")))
    tables = seg.dataset_tables(data)
    dates = seg.order_dates(tables["orders"])
    cust = seg.customer_table(**tables, as_of=dates["as_of"])
    return data, tables, dates, cust


@pytest.mark.slow
def test_clusters_recover_the_planted_segments(demo):
    data, _, _, cust = demo
    clustered, model = seg.cluster_customers(seg.score_rfm(cust), random_state=42)
    truth = pd.read_parquet(data.truth / "customers.parquet").set_index("customer_id")["segment"]
    planted = truth.reindex(clustered.customer_id).to_numpy()
    known = pd.notna(planted)
    assert known.mean() > 0.9
    assert model.k_ == truth.nunique()                            # the stated criteria find the planted k
    assert adjusted_rand_score(planted[known], clustered.cluster_id[known]) >= 0.7


@pytest.mark.slow
def test_rfm_score_ranks_future_spend(demo):
    _, tables, dates, cust = demo
    snapshot = seg.holdout_snapshot(dates, 180)
    assert snapshot == dates["latest"] - dt.timedelta(days=180)
    res = seg.rfm_holdout_check(tables["orders"], snapshot, 180, latest=dates["latest"])
    assert res["complete"] and res["n_customers"] > 10_000
    assert res["spearman"] > 0.3 and res["p_value"] < 0.001
    by_score = res["table"]["mean_future_spend"]
    assert by_score.iloc[-3:].mean() > 3 * by_score.iloc[:3].mean()   # top scores spend far more
