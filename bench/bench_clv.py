"""Benchmarks of crmlab.clv and crmlab.lifecycle (issue 5).

Cases
-----
``fit_clv_crmlab`` / ``fit_clv_lifetimes`` (group ``btyd-fit-clv``)
    BG/NBD fit + Gamma-Gamma fit + 12-month CLV (1 % monthly discount,
    30-day months) on the same per-customer summary: 20,000 customers at
    demo scale, 1,000,000 at large scale. The summary is drawn from the
    BG/NBD process (seeded) and written to CSV by whichever case runs first.
    The ``lifetimes`` case runs in ``bench/.venv-peers/lifetimes`` (created
    on first use: ``python -m venv`` + ``pip install lifetimes`` with the
    numpy < 2 / pandas < 2.2 / scipy < 1.14 it works with) as a subprocess; its note
    reports the largest relative difference of the fitted parameters from
    crmlab's (target: <= 1e-3) and of the CLV totals. Target: crmlab at
    least 10x faster (the table's ratio column).
``prepare``
    Makes (or finds) the synthetic world of the scale in its own process,
    so the measured cases' peak memory is theirs alone: ``demo`` (20,000
    customers, ~400,000 orders) or ``large`` (1,000,000 / ~20,000,000).
``lifecycle_pipeline``
    Every computation of the lifecycle report, in the notebook's order, on
    that world opened with ``crmlab.sources.open_source`` (DuckDB over its
    Parquet files): the orders of known customers, the cached customer-day
    table, stages, cohorts, Kaplan-Meier, the calibration/holdout check and
    tracking, the three models and CLV, the churn snapshots, model and
    scores (with the interactions and tickets), profitability, value by
    acquisition channel, the metrics, the findings and the
    ``customer_lifecycle.csv`` export. Charts and the page are left out
    (``report_lifecycle`` in ``bench_runner.py`` times the whole notebook
    with ``crmlab run``). Target at large scale: < 90 s and < 3 GiB. The
    note lists the slowest steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd

from run import timed

BENCH_DIR = Path(__file__).resolve().parent
# bench/.venv-peers holds the peer environments (git-ignored); lifetimes needs numpy < 2,
# so it gets its own venv inside it rather than sharing one with peers that need numpy 2
PEERS = BENCH_DIR / ".venv-peers" / "lifetimes"
PEER_PACKAGES = ["lifetimes==0.11.3", "numpy<2", "pandas<2.2", "scipy<1.14"]

CUSTOMERS = {"demo": 20_000, "large": 1_000_000}
HORIZON, DISCOUNT, MONTH_DAYS = 12, 0.01, 30.0


# ------------------------------------------------------------------ data

def _simulate_summary(n: int, seed: int = 42) -> pd.DataFrame:
    """A day-level BTYD summary drawn from the BG/NBD process (vectorised:
    given N(T) ~ Poisson(lambda T) arrivals and dropout after purchase
    K ~ Geometric(p), x = min(N, K) and the x-th arrival time is T times a
    Beta(x, N - x + 1) order statistic), plus Gamma-Gamma spend."""
    rng = np.random.default_rng(seed)
    lam, p = rng.gamma(0.8, 1 / 80.0, n), rng.beta(0.8, 3.0, n)
    T = rng.integers(1, 1300, n).astype(float)
    N = rng.poisson(lam * T)
    x = np.minimum(rng.geometric(p), N)
    tx = np.where(x > 0, np.minimum(np.round(rng.beta(np.maximum(x, 1), N - x + 1) * T), T), 0.0)
    nu = rng.gamma(3.7, 1 / 15.0, n)
    mon = np.where(x > 0, rng.gamma(np.maximum(x, 1) * 6.0, 1 / (nu * np.maximum(x, 1))), 0.0)
    return pd.DataFrame({"frequency": x.astype(float), "recency": tx, "T": T, "monetary": mon})


def _summary_csv(scale: str, work: Path) -> Path:
    path = work / f"btyd-summary-{scale}.csv"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        _simulate_summary(CUSTOMERS[scale]).to_csv(tmp, index=False, float_format="%.17g")
        tmp.replace(path)
    return path


# ------------------------------------------------------------------ cases

def fit_clv_crmlab(scale: str, work: Path) -> dict:
    from crmlab import clv

    s = pd.read_csv(_summary_csv(scale, work))
    x, tx, T, m = (s[c].to_numpy() for c in ("frequency", "recency", "T", "monetary"))
    with timed() as t:
        bg = clv.BetaGeoModel().fit(x, tx, T)
        rep = x > 0
        gg = clv.GammaGammaModel().fit(x[rep], m[rep])
        value = clv.clv(bg, gg, x, tx, T, m, horizon=HORIZON, discount_rate=DISCOUNT,
                        time_unit="D", month_days=MONTH_DAYS)
    out = {"bg": bg.params_, "gg": gg.params_, "clv_sum": float(value.sum())}
    (work / f"fit-clv-crmlab-{scale}.json").write_text(json.dumps(out))
    return {"seconds": t.seconds, "group": "btyd-fit-clv", "impl": "crmlab", "rows": len(s),
            "note": f"{bg.n_groups_:,} distinct summaries; BG/NBD {bg.params_}"}


_PEER_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import pandas as pd
    from lifetimes import BetaGeoFitter, GammaGammaFitter
    s = pd.read_csv(sys.argv[1])
    start = time.perf_counter()
    bg = BetaGeoFitter().fit(s["frequency"], s["recency"], s["T"])
    rep = s[s["frequency"] > 0]
    gg = GammaGammaFitter().fit(rep["frequency"], rep["monetary"])
    clv = gg.customer_lifetime_value(bg, s["frequency"], s["recency"], s["T"], s["monetary"],
                                     time={horizon}, discount_rate={discount}, freq="D")
    seconds = time.perf_counter() - start
    print(json.dumps({{"seconds": seconds, "bg": dict(bg.params_), "gg": dict(gg.params_),
                      "clv_sum": float(clv.sum())}}))
""")


def _peer_python() -> Path:
    py = PEERS / "bin" / "python"
    if not (PEERS / ".installed").exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
        (PEERS / ".installed").write_text(" ".join(PEER_PACKAGES))
    return py


def fit_clv_lifetimes(scale: str, work: Path) -> dict:
    path = _summary_csv(scale, work)
    py = _peer_python()
    script = _PEER_SCRIPT.format(horizon=HORIZON, discount=DISCOUNT)
    proc = subprocess.run([str(py), "-c", script, str(path)], capture_output=True, text=True,
                          check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    note = "lifetimes 0.11.3 in bench/.venv-peers/lifetimes"
    ours = work / f"fit-clv-crmlab-{scale}.json"
    if ours.exists():
        mine = json.loads(ours.read_text())
        rel = max(abs(res[m][k] / mine[m][k] - 1) for m in ("bg", "gg") for k in mine[m])
        clv_rel = abs(res["clv_sum"] / mine["clv_sum"] - 1)
        note += (f"; max relative parameter difference from crmlab {rel:.1e} "
                 f"({'ok' if rel <= 1e-3 else 'ABOVE 1e-3'}), CLV total {clv_rel:.1e}")
    return {"seconds": res["seconds"], "group": "btyd-fit-clv", "impl": "lifetimes",
            "rows": CUSTOMERS[scale], "note": note}


def _world(scale: str) -> Path:
    from crmlab.synthetic import ensure_world

    return Path(ensure_world("demo" if scale == "demo" else "large"))


def prepare(scale: str, work: Path) -> dict:
    """Not a measurement: the world is made before the measured cases run."""
    world = _world(scale)
    rows = json.loads((world / "world.json").read_text())["rows"]
    return {"seconds": 0.0, "group": "setup", "impl": "crmlab", "rows": rows["orders"],
            "note": f"world {world.name}: {rows['customers']:,} customers, {rows['orders']:,} orders"}


def lifecycle_pipeline(scale: str, work: Path) -> dict:
    from crmlab import clv, config, lifecycle as lc
    from crmlab.sources import open_source

    world = _world(scale)
    steps: dict[str, float] = {}

    def step(name, fn):
        start = time.perf_counter()
        result = fn()
        steps[name] = round(time.perf_counter() - start, 2)
        return result

    out = work / f"customer_lifecycle-{scale}.csv"
    with timed() as t:
        data = step("open", lambda: open_source(str(world)))
        tables = step("tables", lambda: lc.report_tables(data))
        days = step("purchase_days", lambda: lc.purchase_days(tables["orders"], customers=tables["known_customers"]))
        dates = step("dates", lambda: lc.report_dates(days))
        as_of = dates["as_of"]
        act = step("activity", lambda: lc.customer_activity(days, as_of=as_of))
        stages = step("stages", lambda: lc.assign_stages(act))
        stage_table = lc.stage_summary(stages)
        step("cohorts", lambda: lc.cohort_matrices(days, as_of=as_of))
        surv = step("survival", lambda: lc.churn_survival(act, churn_window=180))
        cal = step("summary_calibration", lambda: clv.transaction_summary(
            days, calibration_end=dates["calibration_end"], observation_end=as_of, time_unit="W"))
        cal_model = step("bgnbd_calibration", lambda: clv.BetaGeoModel().fit(cal["frequency"], cal["recency"],
                                                                             cal["T"]))
        check = step("holdout_check", lambda: clv.holdout_check(cal, cal_model))
        step("tracking", lambda: clv.tracking_series(days, cal_model, calibration_end=dates["calibration_end"],
                                                     observation_end=as_of, time_unit="W"))
        full = step("summary_full", lambda: clv.transaction_summary(days, observation_end=as_of, time_unit="W"))
        models = step("models", lambda: clv.fit_value_models(full, random_state=config.DEFAULT_SEED))
        values = step("customer_values", lambda: clv.customer_values(full, models, horizon=12,
                                                                     discount_rate=0.01, margin=0.3))
        churn = step("churn", lambda: lc.churn_risk(
            days, as_of=as_of, start=dates["first"], churn_window=180, interactions=tables["interactions"],
            tickets=tables["tickets"], random_state=config.DEFAULT_SEED))
        table = step("table", lambda: lc.lifecycle_table(act, stages, values, churn["scores"]))
        step("lists", lambda: (lc.top_customers(table, act, customers=tables["customers"], top=25),
                               lc.high_risk_customers(table, act, customers=tables["customers"], top=25),
                               lc.risk_summary(table, active=lc.active_mask(table))))
        profit = step("profitability", lambda: lc.profitability(act, acquisition_cost=200, service_cost=15,
                                                                margin=0.3, values=values))
        step("by_channel", lambda: lc.value_by_channel(act, table, profit, tables["customers"]))
        metrics = lc.report_metrics(models=models, holdout=check, churn_model=churn["model"], table=table,
                                    profit=profit)
        lc.findings(stages=stage_table, table=table, holdout=check, profit=profit, survival=surv,
                    churn_model=churn["model"])
        step("export", lambda: table.to_csv(out, index=False))
    slow = sorted(steps.items(), key=lambda kv: -kv[1])[:5]
    return {"seconds": t.seconds, "group": "lifecycle-report", "impl": "crmlab", "rows": len(table),
            "target_seconds": 90 if scale == "large" else None,
            "target_mib": 3072 if scale == "large" else None,
            "note": (f"{len(table):,} customers; churn AUC {metrics['churn_auc']:.3f}; holdout "
                     f"accuracy {metrics['holdout_accuracy']:.1%}; slowest steps {slow}")}


CASES = {
    "prepare": prepare,
    "fit_clv_crmlab": fit_clv_crmlab,
    "fit_clv_lifetimes": fit_clv_lifetimes,
    "lifecycle_pipeline": lifecycle_pipeline,
}
