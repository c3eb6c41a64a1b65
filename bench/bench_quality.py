"""Benchmark of the data-quality report's computation (issue 3).

Targets (scale ``large``: 1,000,000 customers / ~20,000,000 orders): the
report's computation under 60 s and 3 GiB; its profiling part at least 5x
faster than ydata-profiling in minimal mode on the same customer table,
with at most a fifth of its memory.

The world is the scale's synthetic scenario from ``ensure_world`` (cached;
generating it is setup, not timed), opened as a Parquet source.

Cases

``report``            what the notebook computes, kernel start excluded:
                      ``sources.open_source`` (the contract check and the
                      quarantine of every table) and ``quality.assess`` on
                      the whole world -- every check of every table, phones,
                      integrity, outliers, freshness and the Splink entity
                      resolution of customers -- then metrics, exports,
                      findings and fixes (group ``quality-report``);
                      ``open_seconds`` and ``assess_seconds`` split it
``profile_crmlab``    the profiling part on the customers table alone -- what
                      ydata-profiling minimal computes, the crmlab way: per
                      column the empty cells and the distinct values (an
                      estimate, as profilers give), the frequencies of the
                      low-cardinality columns (spelling variants), the formats of the
                      date and phone columns, the numeric distribution
                      (median, MAD, outliers) -- group ``customer-profiling``
``profile_ydata``     ydata-profiling ``ProfileReport(minimal=True)`` of the
                      same customers table (read into pandas first, not
                      timed), run from its own virtualenv
                      ``bench/.venv-peers`` (created here on first use:
                      ``python -m venv`` + ``pip install ydata-profiling``,
                      since its pins clash with this environment) -- same
                      group, so the table shows the ratio
``checks_crmlab``     every rule of the report on the customers table
                      (profiling plus validity: email syntax and domains,
                      dates in every known format, domains, phone numbers
                      read with each country's numbering plan) -- more than a
                      profiler computes, shown for scale (group
                      ``customer-checks``, no peer)
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from run import timed

BENCH_DIR = Path(__file__).resolve().parent
PEERS_VENV = BENCH_DIR / ".venv-peers"


def _world(scale: str) -> Path:
    from crmlab import synthetic

    return synthetic.ensure_world(scale)


def report(scale: str, work: Path) -> dict:
    from crmlab import quality, sources

    world = _world(scale)
    with timed() as t:
        start = time.perf_counter()
        data = sources.open_source(str(world))
        _ = data.row_counts          # the contract check and every table's quarantine
        opened = time.perf_counter() - start
        rep = quality.assess(data)
        metrics = rep.metrics()
        rep.exports()
        rep.findings()
        rep.fixes()
    return {"seconds": t.seconds, "group": "quality-report", "impl": "crmlab",
            "open_seconds": round(opened, 2), "assess_seconds": round(t.seconds - opened, 2),
            "rows": metrics.get("rows_orders"), "customers": metrics.get("rows_customers"),
            "quality_score": metrics["quality_score"],
            "duplicate_pairs": metrics["duplicate_pairs"],
            "target_seconds": 60 if scale == "large" else None,
            "target_mib": 3072 if scale == "large" else None}


def _customers(scale: str):
    import ibis

    path = _world(scale) / "customers.parquet"
    con = ibis.duckdb.connect()
    return con.read_parquet(path).mutate(_row=ibis.row_number() + 1)


def profile_crmlab(scale: str, work: Path) -> dict:
    """What ydata-profiling minimal computes, the crmlab way: per column the
    empty cells, the distinct values and their frequencies (with spelling
    variants), the formats of text columns, and the numeric distribution
    (median, MAD, outliers)."""
    from crmlab import quality

    customers = _customers(scale)
    rules = quality.load_rules()
    text = [c for c, typ in customers.schema().items() if typ.is_string()]
    formats = {c: rules["date_formats"] for c in ("birth_date", "signup_date")}
    formats["phone"] = rules["phone_formats"]
    with timed() as t:
        # distinct values per column (HyperLogLog, like a profiler's estimate)
        distinct = customers.aggregate(**{c: customers[c].approx_nunique() for c in text}
                                       ).to_pandas().iloc[0]
        # the frequencies of the low-cardinality columns, in one query
        counts = quality.value_counts(customers, [c for c in text
                                                  if distinct[c] <= quality.MAX_DISTINCT_CLASSIFIED])
        checks = quality.completeness_checks(customers, "customers", rules)
        for c, found in counts.items():
            if found is not None:
                checks += quality.text_checks(customers, "customers", c, counts=found)
        summary, _ = quality.run_checks(customers, checks, list_rows=False)
        mixes = [quality.format_mix(customers, c, f, group_col="country" if c == "phone" else None)
                 for c, f in formats.items() if c in customers.columns]
        out = quality.outliers(customers, table="customers")
    n = int(summary.loc[summary["check"] == "filled", "checked"].max())
    return {"seconds": t.seconds, "group": "customer-profiling", "impl": "crmlab", "rows": n,
            "columns": len(customers.columns) - 1, "formats": int(sum(len(m) for m in mixes)),
            "numeric": len(out), "frequencies": len(counts)}


def checks_crmlab(scale: str, work: Path) -> dict:
    """Every rule of the report on the customers table (profiling plus
    validity: email syntax and domains, dates parsed in every known format,
    categorical domains, phone numbers read with each country's numbering
    plan) -- more than a profiler does; shown for scale, no peer."""
    from crmlab import quality

    customers = _customers(scale)
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
    return {"seconds": t.seconds, "group": "customer-checks", "impl": "crmlab", "rows": n,
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


CASES = {"report": report, "profile_crmlab": profile_crmlab, "profile_ydata": profile_ydata,
         "checks_crmlab": checks_crmlab}
