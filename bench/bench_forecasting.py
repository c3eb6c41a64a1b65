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
  3 largest groups, ensembles, intervals, bottom-up reconciliation.
* ``grouped_statsmodels_per_series``: the peer approach -- statsmodels'
  Holt-Winters (``ExponentialSmoothing``, damped additive trend and
  additive season, optimised) fitted per series and origin -- run on a
  tenth of the series and scaled up (noted in the result).
* ``total_all_models``: the total series alone with every model.
* ``elasticity``: the fixed-effects price regression on 300 products x 156 weeks.

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
    n = max(1, n_full // 10)
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


def elasticity(scale: str, work: Path) -> dict:
    from crmlab import forecasting as fc

    rng = np.random.default_rng(3)
    n_prod, T = 300, 156
    weeks = pd.date_range("2023-01-02", periods=T, freq="W-MON")
    lp = np.log(rng.uniform(5, 500, n_prod))[:, None] + np.cumsum(rng.normal(0, 0.03, (n_prod, T)), 1)
    d = rng.choice([0.0, 0.1, 0.2], (n_prod, T))
    price = np.exp(lp) * (1 - d)
    mu = rng.uniform(2, 5, n_prod)[:, None] - 1.2 * (np.log(price) - lp[:, :1]) \
        + rng.normal(0, 0.2, (n_prod, T))
    panel = pd.DataFrame({"unit": np.repeat(np.arange(n_prod).astype(str), T),
                          "period": np.tile(weeks, n_prod), "quantity": np.exp(mu).ravel(),
                          "price": price.ravel(), "discount_share": d.ravel()})
    with timed() as t:
        el = fc.price_elasticity(panel, freq="W", calendar="cn")
    return {"seconds": t.seconds, "group": "forecast-elasticity", "impl": "crmlab",
            "rows": len(panel), "estimate": round(el.estimate, 3), "planted": -1.2,
            "ci": [round(el.ci_low, 3), round(el.ci_high, 3)]}


CASES = {
    "grouped_crmlab": grouped_crmlab,
    "grouped_statsmodels_per_series": grouped_statsmodels_per_series,
    "total_all_models": total_all_models,
    "elasticity": elasticity,
}

if __name__ == "__main__":  # a quick look without the harness: python bench/bench_forecasting.py 100
    os.environ.setdefault("CRMLAB_BENCH_FORECAST_SERIES", sys.argv[1] if len(sys.argv) > 1 else "100")
    for name, case in CASES.items():
        start = time.perf_counter()
        print(name, case("demo", Path("/tmp")), f"wall {time.perf_counter() - start:.1f}s", flush=True)
