"""Forecasting bench: grouped backtest and selection on many weekly series.

The issue's target: 1,000 weekly series of three years, with the full
rolling-origin backtest and model selection, in under 3 minutes on the
2-core machine. The series are made here (seeded): trend, yearly season,
holiday bumps from ``crmlab.calendars`` (the CN calendar), a promotion
share with its own effect, and noise; sizes spread over two orders of
magnitude like real regions or categories.

Cases (``python bench/run.py --only forecasting``):

* ``grouped_crmlab``: ``crmlab.forecasting.forecast`` on all series -- the
  fast vectorised models and the global gradient-boosting model on every
  series, the statsmodels models (ETS, Theta, SARIMAX) on the total and the
  3 largest groups, ensembles, intervals, reconciliation.
* ``grouped_statsmodels_per_series``: the peer approach -- statsmodels'
  Holt-Winters (``ExponentialSmoothing``, damped additive trend and
  additive season, optimised) fitted per series and origin -- run on a
  tenth of the series (at most ``PEER_SAMPLE``) and scaled up (noted in the
  result).
* ``total_all_models``: the total series alone with every model.
* ``elasticity`` / ``elasticity_ols``: the price elasticity on 300 products x
  36 months of Poisson units with a planted -1.2, by Poisson pseudo-maximum
  likelihood with product and month fixed effects (the report's) and by the
  classic log-OLS within regression (its peer), both timed and scored.
* ``report_world``: the report's own computation with its default parameters
  on the synthetic world of the scale (``demo``: 20,000 customers / 400,000
  orders; ``large``: 1,000,000 customers / 20,000,000 orders): weekly revenue
  by region built in DuckDB, backtest and selection, the monthly product
  price panel and elasticity, the page's tables and charts. Steps are timed
  separately.

Demo scale is the issue's size (1,000 series); large scale is 5,000.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import timed  # noqa: E402

N_SERIES = {"demo": 1000, "large": 5000}
WEEKS = 156
HORIZON = 12
N_ORIGINS = 4
TARGET_SECONDS = 180
PEER_SAMPLE = 100      # series the per-series statsmodels peer fits (its time is scaled up)


def make_series(n: int, weeks: int = WEEKS, seed: int = 42) -> pd.DataFrame:
    """``n`` weekly series in the long format of ``build_series``."""
    from crmlab.forecasting.series import calendar_features

    rng = np.random.default_rng(seed)
    periods = pd.date_range("2023-01-02", periods=weeks, freq="W-MON")
    hol = calendar_features(periods, "W", "cn").to_numpy()            # (T, k)
    t = np.arange(weeks)
    level = rng.lognormal(np.log(2000), 1.0, n)[:, None]
    growth = rng.normal(0.002, 0.002, n)[:, None]
    amp = rng.uniform(0.05, 0.35, n)[:, None]
    phase = rng.uniform(0, 2 * np.pi, n)[:, None]
    bumps = rng.uniform(0.0, 1.5, (n, hol.shape[1]))                  # per-event lift
    promo = rng.uniform(0, 0.15, (n, weeks)) * (rng.random((n, weeks)) < 0.3)
    mult = ((1 + growth * t) * (1 + amp * np.sin(2 * np.pi * t / 52.18 + phase))
            * (1 + bumps @ hol.T) * (1 + 2.0 * promo))
    noise = rng.normal(0, rng.uniform(0.03, 0.12, (n, 1)), (n, weeks))
    y = np.clip(level * mult * (1 + noise), 0, None)
    return pd.DataFrame({
        "group": np.repeat([f"g{i:04d}" for i in range(n)], weeks),
        "period": np.tile(periods, n),
        "revenue": y.ravel(),
        "discount_share": promo.ravel(),
        "group_customers": np.repeat(rng.integers(20, 5000, n), weeks),
    })


def grouped_crmlab(scale: str, work: Path) -> dict:
    from crmlab import forecasting as fc

    n = int(os.environ.get("CRMLAB_BENCH_FORECAST_SERIES", N_SERIES[scale]))
    series = make_series(n)
    with timed() as t:
        res = fc.forecast(series, freq="W", horizon=HORIZON, n_origins=N_ORIGINS, calendar="cn",
                          n_detailed=3, random_state=0)
    m = fc.forecast_metrics(res)
    groups = res.scores[res.scores["chosen"] & (res.scores["group"] != "total")]
    sn = res.scores[(res.scores["model"] == "seasonal_naive") & (res.scores["group"] != "total")]
    return {"seconds": t.seconds, "group": "forecast-grouped-weekly", "impl": "crmlab",
            "target_seconds": TARGET_SECONDS, "series": n, "weeks": WEEKS,
            "total_model": m["model"], "total_mase": round(m["backtest_mase"], 3),
            "total_seasonal_naive_mase": round(m["seasonal_naive_mase"], 3),
            "total_coverage_80": m["coverage_80"],
            "groups_mean_mase": round(float(groups["mase"].mean()), 3),
            "groups_mean_seasonal_naive_mase": round(float(sn["mase"].mean()), 3),
            "groups_coverage_80": round(float(groups["coverage_80"].mean()), 3),
            "groups_coverage_95": round(float(groups["coverage_95"].mean()), 3)}


def grouped_statsmodels_per_series(scale: str, work: Path) -> dict:
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    from crmlab.forecasting.metrics import mase
    from crmlab.forecasting.pipeline import rolling_origins

    n_full = int(os.environ.get("CRMLAB_BENCH_FORECAST_SERIES", N_SERIES[scale]))
    n = max(1, min(PEER_SAMPLE, n_full // 10))
    series = make_series(n_full)
    wide = series.pivot(index="group", columns="period", values="revenue").to_numpy()[:n]
    origins = rolling_origins(WEEKS, HORIZON, N_ORIGINS, HORIZON, 106)
    scores = []
    with timed() as t, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for y in wide:
            for o in origins + [WEEKS]:
                fit = ExponentialSmoothing(y[:o], trend="add", damped_trend=True, seasonal="add",
                                           seasonal_periods=52,
                                           initialization_method="heuristic").fit()
                f = fit.forecast(HORIZON)
                if o < WEEKS:
                    scores.append(float(mase(y[o:o + HORIZON], f, y[:o], 52)))
    return {"seconds": t.seconds * n_full / n, "group": "forecast-grouped-weekly",
            "impl": "statsmodels", "series": n_full, "mean_mase": round(float(np.mean(scores)), 3),
            "note": f"Holt-Winters only, fitted on {n} series x {len(origins) + 1} fits and "
                    f"scaled to {n_full} series (measured {t.seconds:.1f} s)"}


def total_all_models(scale: str, work: Path) -> dict:
    from crmlab import forecasting as fc

    s = make_series(1, weeks=182, seed=7).assign(group="total")
    with timed() as t:
        res = fc.forecast(s, freq="W", horizon=HORIZON, holdout=8, n_origins=N_ORIGINS)
    m = fc.forecast_metrics(res)
    return {"seconds": t.seconds, "group": "forecast-total", "impl": "crmlab",
            "model": m["model"], "mase": round(m["backtest_mase"], 3),
            "seasonal_naive_mase": round(m["seasonal_naive_mase"], 3),
            "holdout_mase": round(m["holdout_mase"], 3), "coverage_80": m["coverage_80"],
            "coverage_95": m["coverage_95"]}


PLANTED_ELASTICITY = -1.2


def price_panel_sim(seed: int = 3, n_prod: int = 300, T: int = 36) -> pd.DataFrame:
    """Products x months of Poisson units (a few to a few hundred a month)
    answering their paid price with ``PLANTED_ELASTICITY``; months without a
    sale are missing, as in real data."""
    rng = np.random.default_rng(seed)
    months = pd.date_range("2023-01-01", periods=T, freq="MS")
    lp = np.log(rng.uniform(5, 500, n_prod))[:, None] + np.cumsum(rng.normal(0, 0.05, (n_prod, T)), 1)
    d = rng.choice([0.0, 0.1, 0.2], (n_prod, T))
    price = np.exp(lp) * (1 - d)
    mu = np.exp(rng.uniform(0.5, 5, n_prod)[:, None] + PLANTED_ELASTICITY * (np.log(price) - lp[:, :1])
                + 0.3 * np.sin(2 * np.pi * np.arange(T) / 12)[None])
    panel = pd.DataFrame({"unit": np.repeat(np.arange(n_prod).astype(str), T),
                          "period": np.tile(months, n_prod), "quantity": rng.poisson(mu).ravel(),
                          "price": price.ravel(), "discount_share": d.ravel()})
    return panel[panel["quantity"] > 0].reset_index(drop=True)


def _elasticity(method: str) -> dict:
    from crmlab import forecasting as fc

    panel = price_panel_sim()
    with timed() as t:
        el = fc.price_elasticity(panel, freq="M", method=method)
    return {"seconds": t.seconds, "group": "forecast-elasticity",
            "impl": "crmlab" if method == "ppml" else "log-OLS", "rows": len(panel),
            "estimate": round(el.estimate, 3), "planted": PLANTED_ELASTICITY,
            "ci": [round(float(el.ci_low), 3), round(float(el.ci_high), 3)],
            "covers_planted": bool(el.ci_low < PLANTED_ELASTICITY < el.ci_high)}


def elasticity(scale: str, work: Path) -> dict:
    return _elasticity("ppml")


def elasticity_ols(scale: str, work: Path) -> dict:
    return _elasticity("ols")


REPORT_TARGET_SECONDS = {"demo": 20, "large": 180}
REPORT_TARGET_MIB = 3072


def report_world(scale: str, work: Path) -> dict:
    """The notebook's calls with its default parameters, step by step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from crmlab import forecasting as fc
    from crmlab.engine import latest_order_date
    from crmlab.sources import open_source
    from crmlab.synthetic import ensure_world

    world = ensure_world("demo" if scale == "demo" else "large")
    steps = {}

    def step(name, fn):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        steps[name] = {"wall": round(time.perf_counter() - t0, 3), "cpu": round(time.process_time() - c0, 3)}
        return out

    with timed() as t:
        data = step("open", lambda: open_source(str(world)))
        step("as_of", lambda: latest_order_date(data.table("orders")))
        g = fc.grouping(data, "region")
        series = step("series", lambda: fc.series_from_dataset(data, freq="W", group_by=g["by"]))
        res = step("forecast", lambda: fc.forecast(series, freq="W", horizon=13, n_origins=4,
                                                   calendar="both", n_detailed=0, random_state=42))
        price = step("price", lambda: fc.price_analysis(data, res))

        def page():
            figs = [fc.forecast_chart(res), fc.scoreboard_chart(fc.score_board(res)), fc.backtest_chart(res),
                    fc.groups_chart(res, list(fc.group_table(res, n=8)["group"]))]
            fc.findings(res, price=price)
            fc.metric_cards(res, price=price)
            fc.exports(res)
            for f in figs:
                f.savefig(work / "fig.png")
                plt.close(f)
        step("page", page)
    m = fc.forecast_metrics(res)
    el = price.get("elasticity")
    return {"seconds": t.seconds, "group": "forecast-report-world", "impl": "crmlab",
            "orders": data.row_counts.get("orders", {}).get("rows"), "series": len(res.groups),
            "target_seconds": REPORT_TARGET_SECONDS[scale], "target_mib": REPORT_TARGET_MIB,
            "model": m["model"], "mase": round(m["backtest_mase"], 3),
            "seasonal_naive_mase": round(m["seasonal_naive_mase"], 3), "coverage_80": m["coverage_80"],
            "elasticity": None if el is None else round(el.estimate, 3), "steps": steps}


CASES = {
    "grouped_crmlab": grouped_crmlab,
    "grouped_statsmodels_per_series": grouped_statsmodels_per_series,
    "total_all_models": total_all_models,
    "elasticity": elasticity,
    "elasticity_ols": elasticity_ols,
    "report_world": report_world,
}

if __name__ == "__main__":  # a quick look without the harness: python bench/bench_forecasting.py 100
    os.environ.setdefault("CRMLAB_BENCH_FORECAST_SERIES", sys.argv[1] if len(sys.argv) > 1 else "100")
    for name, case in CASES.items():
        start = time.perf_counter()
        print(name, case("demo", Path("/tmp")), f"wall {time.perf_counter() - start:.1f}s", flush=True)
