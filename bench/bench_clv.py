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
``lifecycle_pipeline``
    Every package-level step of the lifecycle report on an orders table in
    DuckDB (Parquet): summaries and holdout check, the three models and
    CLV, stages, cohorts, Kaplan-Meier, churn snapshots and model, the
    export and metrics -- 20,000 customers at demo scale; 1,000,000
    customers / ~20,000,000 orders at large scale, target < 90 s and
    < 3 GiB. The notebook's rendering is not included.
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


def _simulate_orders(n: int, *, days: int = 1278, start: str = "2023-01-01", seed: int = 7) -> pd.DataFrame:
    """Orders of n customers acquired over ``days`` (growing), buying as a
    Poisson process until a BG/NBD-style dropout; ~20 orders per customer."""
    rng = np.random.default_rng(seed)
    lam, p = rng.gamma(1.2, 1 / 16.0, n), rng.beta(0.6, 15.0, n)
    t = days * np.sqrt(rng.random(n)) - 1.0  # more acquisitions later
    t = np.clip(t, 0, days - 1)
    spend = rng.gamma(3.0, 40.0, n)
    ids, times = [np.arange(n)], [t.copy()]
    active = np.arange(n)
    while len(active):
        t[active] = t[active] + rng.exponential(1.0, len(active)) / lam[active]
        active = active[t[active] < days]
        ids.append(active.copy())
        times.append(t[active])
        active = active[rng.random(len(active)) >= p[active]]
    c, tt = np.concatenate(ids), np.concatenate(times)
    return pd.DataFrame({
        "customer_id": c.astype("int64") + 1,
        "order_date": pd.Timestamp(start) + pd.to_timedelta(np.floor(tt * 86400).astype("int64"), unit="s"),
        "amount": np.round(rng.gamma(4.0, spend[c] / 4.0), 2),
    })


def _orders_parquet(scale: str, work: Path) -> Path:
    path = work / f"orders-{scale}.parquet"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        _simulate_orders(CUSTOMERS[scale]).to_parquet(tmp, index=False)
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


def lifecycle_pipeline(scale: str, work: Path) -> dict:
    import ibis

    from crmlab import clv, lifecycle as lc

    path = _orders_parquet(scale, work)
    con = ibis.duckdb.connect()
    orders = con.read_parquet(str(path), table_name="orders")
    n_orders = int(orders.count().execute())
    steps: dict[str, float] = {}

    def step(name, fn):
        start = time.perf_counter()
        result = fn()
        steps[name] = round(time.perf_counter() - start, 2)
        return result

    with timed() as t:
        lo, hi = clv.observed_window(orders)
        cal_end = clv.default_calibration_end(lo, hi)
        cal = step("summary_calibration", lambda: clv.transaction_summary(
            orders, calibration_end=cal_end, observation_end=hi))
        bg_cal = step("bgnbd_calibration", lambda: clv.BetaGeoModel().fit(
            cal["frequency"], cal["recency"], cal["T"]))
        check = step("holdout_check", lambda: clv.holdout_check(cal, bg_cal))
        step("tracking", lambda: clv.tracking_series(orders, bg_cal, calibration_end=cal_end,
                                                     observation_end=hi))
        full = step("summary_full", lambda: clv.transaction_summary(orders, observation_end=hi))
        models = step("models", lambda: clv.fit_value_models(full))
        values = step("customer_values", lambda: clv.customer_values(full, models, margin=0.3))
        act = step("activity", lambda: lc.customer_activity(orders, as_of=hi))
        stages = step("stages", lambda: lc.assign_stages(act))
        step("cohorts", lambda: lc.cohort_matrices(orders, as_of=hi))
        surv = step("survival", lambda: lc.churn_survival(act))
        dates = lc.snapshot_dates(hi, churn_window=180, start=lo)
        snaps = step("churn_snapshots", lambda: lc.churn_snapshots(
            orders, dates["train"] + [dates["test"], dates["score"]], observation_end=hi))
        model = step("churn_model", lambda: lc.ChurnModel(churn_window=180).fit(snaps))
        churn = step("churn_score", lambda: lc.churn_scores(model, snaps, as_of=hi))
        table = lc.lifecycle_table(act, stages, values, churn)
        profit = lc.profitability(act, acquisition_cost=50, service_cost=5, margin=0.3, values=values)
        metrics = lc.lifecycle_metrics(models=models, holdout=check, churn_model=model, table=table)
        lc.findings(stages=lc.stage_summary(stages), table=table, holdout=check, profit=profit,
                    survival=surv, churn_model=model)
    slow = sorted(steps.items(), key=lambda kv: -kv[1])[:4]
    return {"seconds": t.seconds, "group": "lifecycle-report", "impl": "crmlab", "rows": n_orders,
            "target_seconds": 90 if scale == "large" else None,
            "target_mib": 3072 if scale == "large" else None,
            "note": (f"{len(act):,} customers, {n_orders:,} orders; churn AUC {metrics['churn_auc']:.3f}; "
                     f"slowest steps {slow}")}


CASES = {
    "fit_clv_crmlab": fit_clv_crmlab,
    "fit_clv_lifetimes": fit_clv_lifetimes,
    "lifecycle_pipeline": lifecycle_pipeline,
}
