"""Benchmark of the data-quality report's computation (issue 3).

Targets (scale ``large``: 1,000,000 customers / ~20,000,000 orders): the
report's computation under 60 s and 3 GiB; its profiling part at least 5x
faster than ydata-profiling in minimal mode on the same customer table,
with at most a fifth of its memory.

The world is the scale's synthetic scenario from ``ensure_world`` (cached;
generating it is setup, not timed), opened as a Parquet source.

Cases

``report``            ``quality.assess`` on the whole world: every check of
                      every table, phones, integrity, outliers, freshness and
                      the Splink entity resolution of customers
``profile_crmlab``    the profiling part on the customers table alone:
                      completeness, validity (emails, dates, domains, phones
                      parsed per country), consistency (formats, spellings)
                      and outliers -- group ``customer-profiling``
``profile_ydata``     ydata-profiling ``ProfileReport(minimal=True)`` of the
                      same customers table (read into pandas first, not
                      timed), run from its own virtualenv
                      ``bench/.venv-peers`` (created here on first use:
                      ``python -m venv`` + ``pip install ydata-profiling``,
                      since its pins clash with this environment) -- same
                      group, so the table shows the ratio
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from run import timed

BENCH_DIR = Path(__file__).resolve().parent
PEERS_VENV = BENCH_DIR / ".venv-peers"


def _world(scale: str) -> Path:
    from crmlab import synthetic

    return synthetic.ensure_world(scale)


def report(scale: str, work: Path) -> dict:
    from crmlab import quality, sources

    data = sources.open_source(str(_world(scale)))
    _ = data.quarantine          # computed by sources when the data is opened
    with timed() as t:
        rep = quality.assess(data)
        metrics = rep.metrics()
        rep.exports()
        rep.findings()
    return {"seconds": t.seconds, "group": "quality-report", "impl": "crmlab",
            "rows": metrics.get("rows_orders"), "customers": metrics.get("rows_customers"),
            "quality_score": metrics["quality_score"],
            "duplicate_pairs": metrics["duplicate_pairs"],
            "target_seconds": 60 if scale == "large" else None,
            "target_mib": 3072 if scale == "large" else None}


def profile_crmlab(scale: str, work: Path) -> dict:
    import ibis

    from crmlab import quality

    path = _world(scale) / "customers.parquet"
    con = ibis.duckdb.connect()
    customers = con.read_parquet(path).mutate(_row=ibis.row_number() + 1)
    rules = quality.load_rules()
    reference = quality.reference_time()
    with timed() as t:
        tt, checks, _ = quality.table_checks("customers", customers, rules, reference,
                                             tables={"customers": customers})
        summary, flagged = quality.run_checks(tt, checks, key_col="customer_id")
        phones = quality.normalise_phones(customers, keep=["customer_id"])
        quality.phone_summary(phones)
        quality.outliers(customers, table="customers")
    n = int(summary.loc[summary["check"] == "filled", "checked"].max())
    return {"seconds": t.seconds, "group": "customer-profiling", "impl": "crmlab", "rows": n,
            "flagged": len(flagged)}


_YDATA_CHILD = textwrap.dedent("""
    import json, sys, time, warnings
    warnings.filterwarnings("ignore")
    import pandas as pd
    from ydata_profiling import ProfileReport
    df = pd.read_parquet(sys.argv[1])
    start = time.perf_counter()
    ProfileReport(df, minimal=True, progress_bar=False).to_json()
    print(json.dumps({"seconds": time.perf_counter() - start, "rows": len(df)}))
""")


PEERS = ["ydata-profiling", "pyarrow"]     # pyarrow: to read the same Parquet file


def _peers_python() -> Path:
    """The peers' virtualenv, created (or completed) on first use."""
    py = PEERS_VENV / "bin" / "python"
    stamp = PEERS_VENV / "crmlab-peers.json"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    if not stamp.exists() or json.loads(stamp.read_text()) != PEERS:
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", *PEERS], check=True)
        stamp.write_text(json.dumps(PEERS))
    return py


def profile_ydata(scale: str, work: Path) -> dict:
    py = _peers_python()
    path = _world(scale) / "customers.parquet"
    work.mkdir(parents=True, exist_ok=True)
    script = work / "ydata_child.py"
    script.write_text(_YDATA_CHILD)
    out = subprocess.run([str(py), str(script), str(path)], check=True, capture_output=True,
                         text=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    # peak memory: the harness reports max(this process, children waited for)
    return {"seconds": res["seconds"], "group": "customer-profiling", "impl": "ydata-profiling",
            "rows": res["rows"], "note": "ydata-profiling minimal mode, own virtualenv"}


CASES = {"report": report, "profile_crmlab": profile_crmlab, "profile_ydata": profile_ydata}
