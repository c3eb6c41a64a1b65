"""Segmentation benchmarks (issue 4).

``rfm_crmlab`` / ``rfm_pandas`` / ``rfm_duckdb`` (group ``segmentation-rfm``):
the per-customer RFM aggregation over the same orders Parquet file, from the
file to a pandas frame with one row per customer (recency, frequency as paid
orders -- the report's definition -- monetary, tenure, first/last purchase;
paid orders up to as_of, statuses compared trimmed and in lower case):

* crmlab -- ``segmentation.rfm_table`` (ibis on DuckDB) + ``to_pandas()``;
* pandas -- pyarrow ``read_table(...).to_pandas(date_as_object=False)`` and a
  group-by (read included: both sides start from the file);
* duckdb -- the same aggregation as one hand-written SQL GROUP BY.

Targets: crmlab at least 3x faster than pandas and within 2x of bare DuckDB
(the ``ratio_to_crmlab`` column: pandas >= 3, duckdb >= 0.5).

``customer_table``: the report's heaviest step alone -- the per-customer
table from the typed tables of the source (quarantine included).

``end_to_end``: the segmentation notebook's code cells run in the bench
process on the world (so it measures exactly what the report computes):
open the source, per-customer table (orders, lines, customers,
interactions, tickets), scores and segments, clustering with the choice of
k, profiles and charts, concentration, golden customers, the drill-down,
the holdout check, metrics, findings and the segments.csv export. Target:
1M customers / 20M orders in < 60 s and < 3 GiB.

Data: ``crmlab.synthetic.ensure_world("demo" | "large")``; when that module
is unavailable (or ``CRMLAB_BENCH_SIMPLE=1``), a simple world generated here
in chunks (demo: 10k customers / ~200k orders; large: 1M / ~20M). The
``prepare`` case, listed first, makes the data in its own process so the
measured cases' peak memory is theirs alone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from run import timed

GROUP = "segmentation-rfm"
SIMPLE_SIZES = {"demo": (10_000, 20.0), "large": (1_000_000, 20.0)}   # customers, mean orders each
SIMPLE_CHUNK = 100_000
CHANNELS = np.array(["app", "web", "store", "mini_program"])
CATEGORIES = np.array(["groceries", "fashion", "home", "beauty", "electronics", "baby_kids", "accessories",
                       "sports", "appliances", "phones"])
REGIONS = np.array(["East", "North", "South", "West", "Central"])


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------

def _world(scale: str, work: Path) -> Path:
    """The world directory for a scale (orders.parquet and friends)."""
    if os.environ.get("CRMLAB_BENCH_SIMPLE") != "1":
        try:
            from crmlab.synthetic import ensure_world
        except ImportError:
            ensure_world = None
        if ensure_world is not None:
            return Path(ensure_world("demo" if scale == "demo" else "large"))
    return _simple_world(scale, work)


def _simple_world(scale: str, work: Path) -> Path:
    """orders, order_lines and customers Parquet files, written chunk by chunk
    so generating 20M orders stays within a few hundred MiB."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n_customers, mean_orders = SIMPLE_SIZES[scale]
    out = work / f"simple-{scale}"
    done = out / "world.json"
    if done.exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(42)
    end = np.datetime64("2026-06-30T23:59:59", "s")
    span = 3 * 365 * 86400
    writers: dict[str, pq.ParquetWriter] = {}
    order_id = 0
    try:
        for start in range(0, n_customers, SIMPLE_CHUNK):
            k = min(SIMPLE_CHUNK, n_customers - start)
            ids = np.arange(start + 1, start + k + 1, dtype=np.int64)
            # orders per customer: 1 + gamma-Poisson, mean ~ mean_orders
            counts = 1 + rng.poisson(rng.gamma(0.9, (mean_orders - 1) / 0.9, k))
            cid = np.repeat(ids, counts)
            n = len(cid)
            first = rng.integers(0, span, k)
            offset = np.repeat(first, counts) + (rng.random(n) * (span - np.repeat(first, counts))).astype(np.int64)
            date = (end - np.timedelta64(span, "s") + offset.astype("timedelta64[s]")).astype("datetime64[us]")
            amount = np.round(rng.gamma(2.0, 150.0, n), 2)
            discount = np.where(rng.random(n) < 0.3, np.round(amount * 0.1, 2), 0.0)
            status = np.where(rng.random(n) < 0.97, "paid", np.where(rng.random(n) < 0.6, "refunded", "cancelled"))
            oid = np.arange(order_id + 1, order_id + n + 1, dtype=np.int64)
            order_id += n
            orders = pa.table({"order_id": oid, "customer_id": cid, "order_date": date, "amount": amount,
                               "channel": CHANNELS[rng.integers(0, len(CHANNELS), n)], "status": status,
                               "discount": discount})
            lines = pa.table({"order_id": oid, "product_id": rng.integers(1, 400, n),
                              "category": CATEGORIES[rng.integers(0, len(CATEGORIES), n)],
                              "quantity": np.ones(n, dtype=np.int64), "unit_price": amount + discount})
            birth = (np.datetime64("2006-01-01") - rng.integers(0, 50 * 365, k).astype("timedelta64[D]"))
            customers = pa.table({"customer_id": ids, "gender": np.where(rng.random(k) < 0.55, "F", "M"),
                                  "region": REGIONS[rng.integers(0, len(REGIONS), k)], "birth_date": birth})
            for name, table in (("orders", orders), ("order_lines", lines), ("customers", customers)):
                if name not in writers:
                    writers[name] = pq.ParquetWriter(out / f"{name}.parquet", table.schema)
                writers[name].write_table(table)
    finally:
        for w in writers.values():
            w.close()
    done.write_text(json.dumps({"scenario": f"simple-{scale}", "customers": n_customers, "orders": order_id,
                                "end": "2026-06-30"}))
    return out


def _as_of(world: Path) -> str:
    meta = world / "world.json"
    if meta.exists():
        end = json.loads(meta.read_text()).get("end")
        if end:
            return str(end)[:10]
    import duckdb
    value = duckdb.sql(f"SELECT max(order_date) FROM read_parquet('{world / 'orders.parquet'}')").fetchall()[0][0]
    return value.date().isoformat()


def prepare(scale: str, work: Path) -> dict:
    with timed() as t:
        world = _world(scale, work)
    return {"seconds": t.seconds, "note": f"data in {world}"}


# --------------------------------------------------------------------------
# the per-customer aggregation, three ways
# --------------------------------------------------------------------------

def rfm_crmlab(scale: str, work: Path) -> dict:
    import ibis

    from crmlab import segmentation as seg

    world = _world(scale, work)
    as_of = _as_of(world)
    con = ibis.duckdb.connect()
    orders = con.read_parquet(world / "orders.parquet")
    with timed() as t:
        df = seg.rfm_table(orders, as_of).to_pandas()
    return {"seconds": t.seconds, "group": GROUP, "impl": "crmlab", "rows": len(df)}


def rfm_pandas(scale: str, work: Path) -> dict:
    import pandas as pd
    import pyarrow.parquet as pq

    world = _world(scale, work)
    as_of = _as_of(world)
    snap = pd.Timestamp(as_of)
    cutoff = snap + pd.Timedelta(days=1)
    with timed() as t:
        o = pq.read_table(world / "orders.parquet", columns=["customer_id", "order_date", "amount", "status"]
                          ).to_pandas(date_as_object=False)
        status = o["status"].str.strip().str.lower()
        o = o[(o["order_date"] < cutoff) & (status.eq("paid") | status.isna())]
        g = o.groupby("customer_id", sort=False)
        df = g.agg(first_purchase=("order_date", "min"), last_purchase=("order_date", "max"),
                   frequency=("order_date", "size"), monetary=("amount", "sum"))
        df["recency"] = (snap - df["last_purchase"].dt.normalize()).dt.days
        df["tenure"] = (snap - df["first_purchase"].dt.normalize()).dt.days
        df = df.reset_index()
    return {"seconds": t.seconds, "group": GROUP, "impl": "pandas", "rows": len(df)}


def rfm_duckdb(scale: str, work: Path) -> dict:
    import duckdb

    world = _world(scale, work)
    as_of = _as_of(world)
    con = duckdb.connect()
    sql = f"""
        SELECT customer_id,
               date_diff('day', CAST(max(order_date) AS DATE), DATE '{as_of}') AS recency,
               count(order_date) AS frequency,
               sum(amount) AS monetary,
               date_diff('day', CAST(min(order_date) AS DATE), DATE '{as_of}') AS tenure,
               min(order_date) AS first_purchase,
               max(order_date) AS last_purchase
        FROM read_parquet('{world / "orders.parquet"}')
        WHERE order_date < DATE '{as_of}' + INTERVAL 1 DAY
          AND (lower(trim(status)) = 'paid' OR status IS NULL)
        GROUP BY customer_id
    """
    with timed() as t:
        df = con.sql(sql).df()
    return {"seconds": t.seconds, "group": GROUP, "impl": "duckdb", "rows": len(df)}


# --------------------------------------------------------------------------
# the per-customer table through the data contract, and the report end to end
# --------------------------------------------------------------------------

def customer_table(scale: str, work: Path) -> dict:
    """The report's heaviest step alone: ``customer_table`` on the typed
    tables of the source (orders, lines, customers, interactions, tickets),
    quarantine included (it is computed when the tables are first used)."""
    from crmlab import segmentation as seg
    from crmlab.sources import open_source

    world = _world(scale, work)
    as_of = _as_of(world)
    with timed() as t:
        tables = seg.dataset_tables(open_source(str(world)))
        cust = seg.customer_table(**tables, as_of=as_of)
    return {"seconds": t.seconds, "impl": "crmlab", "rows": len(cust),
            "note": f"{len(cust):,} customers x {cust.shape[1]} columns"}


def _notebook_cells() -> list[tuple[str, list[str]]]:
    import json

    from crmlab import config

    nb = json.loads((config.notebooks_dir() / config.REPORTS["segmentation"]).read_text(encoding="utf-8"))
    return [("".join(c["source"]), c.get("metadata", {}).get("tags", [])) for c in nb["cells"]
            if c["cell_type"] == "code"]


def end_to_end(scale: str, work: Path) -> dict:
    """The segmentation report's notebook, every code cell, run in this
    process on the scale's world: open the source, per-customer table,
    scores and segments, clustering with the choice of k, profiles, charts,
    concentration, golden customers, drill-down, the holdout check,
    metrics, findings and exports/segments.csv (the page itself is rendered
    by the runner, not here). Target (issue 4): 1M customers / 20M orders in
    < 60 s and < 3 GiB."""
    import contextlib
    import io
    import time

    os.environ.setdefault("MPLBACKEND", "Agg")
    world = _world(scale, work)
    run_dir = work / f"run-{scale}"
    run_dir.mkdir(parents=True, exist_ok=True)
    cells = _notebook_cells()
    scope: dict = {}
    laps: list[tuple[str, float]] = []
    with timed() as t:
        for source, tags in cells:
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):   # the page's HTML, shown nowhere here
                exec(compile(source, "<segmentation notebook>", "exec"), scope)
            if "parameters" in tags:
                scope.update(source=str(world), run_dir=str(run_dir))
            first = next((line for line in source.splitlines() if line.strip() and not line.startswith("#")), "")
            laps.append((first[:28], time.perf_counter() - start))
    top = sorted(laps, key=lambda lap: -lap[1])[:5]
    n = len(scope["scored"])
    model = scope.get("model")
    holdout = scope.get("holdout") or {}
    return {"seconds": t.seconds, "impl": "crmlab", "rows": n, "target_seconds": 60, "target_mib": 3072,
            "k": int(model.k_) if model is not None else None, "holdout_spearman": holdout.get("spearman"),
            "note": f"{n:,} customers, k={getattr(model, 'k_', None)}; slowest cells: "
                    + "; ".join(f"{name!r} {sec:.1f}s" for name, sec in top)}


CASES = {
    "prepare": prepare,
    "rfm_crmlab": rfm_crmlab,
    "rfm_pandas": rfm_pandas,
    "rfm_duckdb": rfm_duckdb,
    "customer_table": customer_table,
    "end_to_end": end_to_end,
}
