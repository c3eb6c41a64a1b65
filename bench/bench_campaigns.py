"""Benchmark of the campaigns report's computation (issue 7).

Target: 50 campaigns with 5M contacts in total in under 60 s and 3 GiB
(scale ``large``). The data -- customers, orders, campaigns and contacts --
is generated here, seeded, as Parquet (setup, not timed) and read through
DuckDB views, as a Parquet source is. The measured part is what the
notebook computes: ``crmlab.campaigns.analyse`` with the notebook's
defaults, the page's tables, charts, findings and metrics, and both exports
(``uplift_targets`` scores every customer).

Cases

``report_core``       every randomised-campaign section: funnel, channels,
                      treatment vs control with the bootstrap, ROI, sample
                      ratio, covariate balance (a join of contacts with the
                      orders before each start), power
``report_full``       the whole report as the notebook runs it: the above
                      plus the matched difference-in-differences of the
                      campaigns without a control group, uplift models for
                      the three largest randomised campaigns, the page and
                      the exports (the issue's target)
``report_world``      the whole report on the scale's synthetic world
                      (``crmlab.synthetic.ensure_world``: demo = 20,000
                      customers, large = 1,000,000 customers and 20M
                      orders with their order lines), through
                      ``crmlab.sources.open_source`` as ``crmlab run`` does
``aggregates_crmlab`` the per-campaign x group aggregation in the engine
``aggregates_pandas`` the same aggregation by reading the contacts into
                      pandas (the peer)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from run import timed

SIZES = {
    "demo": {"customers": 100_000, "orders": 500_000, "campaigns": 50, "contacts": 250_000},
    "large": {"customers": 1_000_000, "orders": 5_000_000, "campaigns": 50,
              "contacts": 5_000_000},
}
SEED = 7
VERSION = 2          # bump when the generated data changes


def _generate(scale: str, work: Path) -> Path:
    """Seeded Parquet files for one scale, cached under ``work``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    size = SIZES[scale]
    out = work / f"campaigns-{scale}-v{VERSION}"
    if (out / "done.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    n_cust = size["customers"]
    ids = np.arange(1, n_cust + 1, dtype=np.int64)
    pq.write_table(pa.table({
        "customer_id": ids,
        "gender": rng.choice(np.array(["F", "M"]), n_cust),
        "region": rng.choice(np.array(["East", "North", "South", "West", "Central"]), n_cust),
        "birth_date": (np.datetime64("1950-01-01") + rng.integers(0, 20_000, n_cust)
                       .astype("timedelta64[D]")),
    }), out / "customers.parquet")
    # orders: a skewed purchase rate per customer over 2024-2025
    rate = rng.gamma(0.8, 1.0, n_cust)
    who = rng.choice(ids, size=size["orders"], p=rate / rate.sum())
    day0 = np.datetime64("2024-01-01T00:00:00")
    pq.write_table(pa.table({
        "order_id": np.arange(1, size["orders"] + 1, dtype=np.int64),
        "customer_id": who,
        "order_date": day0 + rng.integers(0, 730 * 86_400, size["orders"]).astype("timedelta64[s]"),
        "amount": np.round(rng.gamma(2.0, 60.0, size["orders"]), 2),
    }), out / "orders.parquet")
    # campaigns: 5 of 50 without a control group, the rest split 50/50 or 80/20
    k = size["campaigns"]
    starts = np.datetime64("2025-01-10") + np.sort(rng.integers(0, 330, k)).astype("timedelta64[D]")
    share = np.where(np.arange(k) % 2 == 0, 0.5, 0.8)
    share[np.arange(k) % 10 == 9] = np.nan
    weights = rng.uniform(0.5, 1.5, k)
    n_per = rng.multinomial(size["contacts"], weights / weights.sum())
    uplift = rng.choice([0.0, 0.005, 0.01, 0.02, -0.01], k)
    pq.write_table(pa.table({
        "campaign_id": np.array([f"CMP-{i + 1:03d}" for i in range(k)]),
        "name": np.array([f"Campaign {i + 1}" for i in range(k)]),
        "channel": np.array(["email", "sms", "app_push", "wechat"])[np.arange(k) % 4],
        "start_date": starts,
        "end_date": starts + np.timedelta64(6, "D"),
        "cost": np.round(n_per * rng.uniform(0.02, 0.1, k), 2),
        "cost_per_contact": np.full(k, np.nan),
        "planned_treatment_share": share,
    }), out / "campaigns.parquet")
    writer = None
    for i in range(k):
        n = int(n_per[i])
        cust = rng.choice(ids, size=n, replace=False)
        treat = np.ones(n, bool) if np.isnan(share[i]) else rng.random(n) < share[i]
        p = 0.04 + uplift[i] * treat
        conv = rng.random(n) < p
        delivered = treat & (rng.random(n) < 0.95)
        opened = delivered & (rng.random(n) < 0.3)
        clicked = opened & (rng.random(n) < 0.2)
        table = pa.table({
            "campaign_id": np.full(n, f"CMP-{i + 1:03d}"),
            "customer_id": cust,
            "group": np.where(treat, "treatment", "control"),
            "sent_at": (np.datetime64(starts[i], "s")
                        + rng.integers(9 * 3600, 11 * 3600, n).astype("timedelta64[s]")),
            "delivered": delivered, "opened": opened, "clicked": clicked, "converted": conv,
            "revenue": np.where(conv, np.round(rng.lognormal(4.0, 1.2, n), 2), 0.0),
        })
        if writer is None:
            writer = pq.ParquetWriter(out / "campaign_contacts.parquet", table.schema)
        writer.write_table(table)
    writer.close()
    (out / "done.json").write_text(json.dumps({"scale": scale, "seed": SEED, **size}))
    return out


class _Views:
    """A minimal Dataset over DuckDB views of the Parquet files (the part
    of ``crmlab.sources.Dataset`` the campaigns report uses)."""

    def __init__(self, folder: Path):
        import ibis

        self.backend = ibis.duckdb.connect()
        self._tables = {p.stem: self.backend.read_parquet(str(p), table_name=p.stem)
                        for p in folder.glob("*.parquet")}

    def has(self, table, column=None):
        return table in self._tables and (column is None or column in self._tables[table].columns)

    def table(self, name):
        return self._tables[name]


def _page(data, **kwargs):
    """What the notebook computes, without rendering: the analysis, every
    page table and chart, metrics, findings and both exports."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from crmlab import campaigns as cp

    a = cp.analyse(data, **kwargs)
    a.metric_cards()
    a.findings()
    a.section_text()
    for name in cp.PAGE_TABLES:
        cp.page_table(a, name)
    if kwargs.get("uplift", True) and kwargs.get("quasi", True):
        for chart in (cp.funnel_chart, cp.forest_chart, cp.roi_chart, cp.balance_chart,
                      cp.quasi_chart, cp.power_chart, cp.uplift_chart):
            chart(a)
        cp.forest_chart(a, "revenue_per_contact")
        plt.close("all")
    a.results_table()
    targets = a.uplift_targets(data) if kwargs.get("uplift", True) else None
    return a, targets


def _case(scale, work, **kwargs):
    folder = _generate(scale, work)
    with timed() as t:
        data = _Views(folder)
        a, targets = _page(data, **kwargs)
    return t, a, targets, SIZES[scale]


def report_core(scale: str, work: Path) -> dict:
    t, a, _, size = _case(scale, work, quasi=False, uplift=False)
    return {"seconds": t.seconds, "group": "campaigns-report", "impl": "crmlab",
            "rows": size["contacts"], "campaigns": int(len(a.funnel)),
            "steps": a.timings,
            "target_seconds": 60 if scale == "large" else None,
            "target_mib": 3072 if scale == "large" else None}


def report_full(scale: str, work: Path) -> dict:
    t, a, targets, size = _case(scale, work)
    fitted = sum(r.fitted for r in a.uplift.values())
    return {"seconds": t.seconds, "group": "campaigns-report-full", "impl": "crmlab",
            "rows": size["contacts"], "campaigns": int(len(a.funnel)),
            "uplift_models": int(fitted), "quasi": int(len(a.quasi)),
            "targets": int(len(targets)), "steps": a.timings,
            "target_seconds": 60 if scale == "large" else None,
            "target_mib": 3072 if scale == "large" else None}


def report_world(scale: str, work: Path) -> dict:
    from crmlab import synthetic
    from crmlab.sources import open_source

    synthetic.ensure_world(scale)          # not timed: the world is cached
    with timed() as t:
        data = open_source(f"synthetic:{scale}")
        a, targets = _page(data)
    return {"seconds": t.seconds, "group": "campaigns-report-world", "impl": "crmlab",
            "rows": int(a.aggregates["contacts"].sum()), "campaigns": int(len(a.funnel)),
            "uplift_models": int(sum(r.fitted for r in a.uplift.values())),
            "targets": int(len(targets)), "steps": a.timings}


def aggregates_crmlab(scale: str, work: Path) -> dict:
    from crmlab import campaigns as cp

    folder = _generate(scale, work)
    with timed() as t:
        agg = cp.contact_aggregates(_Views(folder).table("campaign_contacts"))
    return {"seconds": t.seconds, "group": "campaign-aggregates", "impl": "crmlab",
            "rows": SIZES[scale]["contacts"], "groups": int(len(agg))}


def aggregates_pandas(scale: str, work: Path) -> dict:
    folder = _generate(scale, work)
    with timed() as t:
        c = pd.read_parquet(folder / "campaign_contacts.parquet")
        c["revenue_sq"] = c["revenue"] ** 2
        agg = c.groupby(["campaign_id", "group"]).agg(
            contacts=("customer_id", "size"), customers=("customer_id", "nunique"),
            delivered=("delivered", "sum"), opened=("opened", "sum"), clicked=("clicked", "sum"),
            converted=("converted", "sum"), revenue=("revenue", "sum"),
            revenue_sq=("revenue_sq", "sum"))
    return {"seconds": t.seconds, "group": "campaign-aggregates", "impl": "pandas",
            "rows": SIZES[scale]["contacts"], "groups": int(len(agg))}


CASES = {
    "report_core": report_core,
    "report_full": report_full,
    "report_world": report_world,
    "aggregates_crmlab": aggregates_crmlab,
    "aggregates_pandas": aggregates_pandas,
}
