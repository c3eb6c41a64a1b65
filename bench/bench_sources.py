"""Opening a source and computing its quarantine.

The target (issue 2): opening the 1M-customer / 20M-order Parquet world and
computing its quarantine takes a few seconds at most, engine-side. The
world is made here with numpy (setup, not timed): orders with planted
defects (repeated order ids, negative amounts, a rare ``' PAID'``), and
customers whose ``birth_date``/``signup_date`` are text in mixed layouts,
as the synthetic generator writes them.

``demo`` = 1M orders / 50k customers; ``large`` = 20M orders / 1M customers.
The peer is pandera on pandas (the same row checks, lazily collected) on
the orders table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from run import timed

SIZES = {"demo": (1_000_000, 50_000), "large": (20_000_000, 1_000_000)}
TARGET_SECONDS = {"demo": 2.0, "large": 8.0}


def make_world(scale: str, work: Path) -> Path:
    n, ncust = SIZES[scale]
    out = work / f"world-{scale}"
    if (out / "customers.parquet").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    order_id = np.arange(1, n + 1)
    bad = rng.choice(np.arange(1, n), n // 1000, replace=False)
    k = len(bad) // 2
    order_id[bad[:k]] = order_id[bad[:k] - 1]                       # repeated keys
    amount = rng.gamma(2.0, 40.0, n).round(2)
    amount[bad[k:]] = -5.0                                          # negative amounts
    status = np.array(["paid", "refunded", "cancelled", " PAID", "unknown"])[
        rng.choice(5, n, p=[0.798, 0.1, 0.1, 0.001, 0.001])]
    start = np.datetime64("2022-01-01T00:00:00")
    table = pa.table({
        "order_id": order_id, "customer_id": rng.integers(1, ncust + 1, n),
        "order_date": start + rng.integers(0, 900 * 86_400, n).astype("timedelta64[s]"),
        "amount": amount, "status": status,
        "channel": np.array(["web", "app", "store"])[rng.integers(0, 3, n)]})
    pq.write_table(table, out / "orders.parquet", row_group_size=1_000_000)
    del table
    days = np.datetime64("1950-01-01") + rng.integers(0, 20_000, ncust).astype("timedelta64[D]")
    iso = days.astype(str)
    layout = rng.choice(4, ncust, p=[0.97, 0.01, 0.01, 0.01])
    text = np.where(layout == 1, np.char.replace(iso, "-", "/"), iso)
    text = np.where(layout == 2, np.char.replace(iso, "-", ""), text)
    text = np.where(layout == 3, "not a date", text)
    pq.write_table(pa.table({"customer_id": np.arange(1, ncust + 1),
                             "birth_date": text, "signup_date": iso,
                             "city": np.array(["Beijing", "Boston"])[rng.integers(0, 2, ncust)]}),
                   out / "customers.parquet")
    return out


def open_quarantine(scale: str, work: Path) -> dict:
    world = make_world(scale, work)
    import pandera.ibis  # noqa: F401  (imports are not what is measured)

    from crmlab.sources import open_source
    with timed() as t:
        with open_source(str(world)) as ds:
            counts = ds.row_counts
    n = counts["orders"]["rows"]
    return {"seconds": t.seconds, "group": "quarantine", "impl": "crmlab", "rows": n,
            "quarantined": counts["orders"]["quarantined"] + counts["customers"]["quarantined"],
            "target_seconds": TARGET_SECONDS[scale]}


def pandera_pandas(scale: str, work: Path) -> dict:
    world = make_world(scale, work)
    import pandera.errors as pe
    import pandera.pandas  # noqa: F401

    from crmlab import schema
    with timed() as t:
        orders = pq.read_table(world / "orders.parquet").to_pandas(date_as_object=False)
        orders["status"] = orders["status"].str.strip().str.lower()
        sch = schema.pandera_schema("orders", backend="pandas", checks=True)
        try:
            sch.validate(orders, lazy=True)
            failures = 0
        except pe.SchemaErrors as exc:
            failures = len(exc.failure_cases)
    return {"seconds": t.seconds, "group": "quarantine", "impl": "pandera-pandas",
            "rows": len(orders), "failures": failures,
            "note": "orders only, pandas in memory; failure cases carry values, no row numbers"}


CASES = {"open_quarantine": open_quarantine, "pandera_pandas": pandera_pandas}
