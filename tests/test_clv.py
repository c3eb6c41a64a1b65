"""crmlab.clv: the BTYD models against published numbers, the model
definitions (numerical integration), simulation, and the engine summary.

The CDNOW sample (Fader, Hardie & Lee 2005) ships in the PyPI package
``lifetimes``; it is read by path, never imported (it does not import under
numpy 2). Install it with ``pip install --no-deps lifetimes``.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import ibis
import numpy as np
import pandas as pd
import pytest
from scipy.special import betaln, gammaln

from crmlab import clv
from crmlab.exceptions import DataContractError, ParameterError


# ---------------------------------------------------------------- fixtures

def _cdnow_dir() -> Path | None:
    try:
        dist = importlib.metadata.distribution("lifetimes")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(dist.locate_file("lifetimes/datasets"))
    return path if (path / "cdnow_customers_summary.csv").exists() else None


CDNOW = _cdnow_dir()
needs_cdnow = pytest.mark.skipif(
    CDNOW is None, reason="CDNOW sample data comes with the PyPI package 'lifetimes' "
                          "(pip install --no-deps lifetimes)")


@pytest.fixture(scope="module")
def cdnow():
    """2,357 CDNOW customers, 39-week calibration: ID, frequency, recency, T (weeks)."""
    return pd.read_csv(CDNOW / "cdnow_customers_summary.csv")


@pytest.fixture(scope="module")
def cdnow_spend():
    """The same customers with zbar, the mean repeat-transaction value."""
    return pd.read_csv(CDNOW / "cdnow_customers_summary_with_transactions.csv")


@pytest.fixture(scope="module")
def cdnow_orders():
    """The CDNOW sample's transactions (78 weeks) as an ibis table in DuckDB."""
    raw = pd.read_csv(CDNOW / "CDNOW_sample.txt", sep=r"\s+", header=None,
                      names=["master_id", "customer_id", "date", "cds", "amount"])
    orders = pd.DataFrame({
        "customer_id": raw["customer_id"].astype("int64"),
        "order_date": pd.to_datetime(raw["date"].astype(str), format="%Y%m%d"),
        "amount": raw["amount"].astype(float),
    })
    return ibis.duckdb.connect().create_table("orders", orders), orders


def _sig3(x: float) -> str:
    return f"{x:.3g}"


FHL_BGNBD = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}


def _fitted(model_cls, params):
    m = model_cls()
    m.params_ = dict(params)
    return m


# ------------------------------------------------------ published numbers

@needs_cdnow
def test_bgnbd_reproduces_fhl_2005_cdnow(cdnow):
    m = clv.BetaGeoModel().fit(cdnow["frequency"], cdnow["recency"], cdnow["T"])
    # FHL (2005), "Counting your customers the easy way", CDNOW estimates and LL
    for k, v in FHL_BGNBD.items():
        assert _sig3(m.params_[k]) == _sig3(v), k
    assert round(m.loglik_, 1) == -9582.4
    assert m.converged_


@needs_cdnow
def test_pareto_nbd_reproduces_published_cdnow(cdnow):
    m = clv.ParetoNBDModel().fit(cdnow["frequency"], cdnow["recency"], cdnow["T"])
    published = {"r": 0.553, "alpha": 10.578, "s": 0.606, "beta": 11.669}
    for k, v in published.items():
        assert _sig3(m.params_[k]) == _sig3(v), k
    assert round(m.loglik_, 1) == -9595.0


@needs_cdnow
def test_gamma_gamma_reproduces_fhl_2005_jmr(cdnow_spend):
    # FHL (2005), "RFM and CLV": the 946 customers with a repeat purchase
    assert (cdnow_spend["x"] > 0).sum() == 946
    m = clv.GammaGammaModel().fit(cdnow_spend["x"], cdnow_spend["zbar"])
    assert m.n_customers_ == 946
    for k, v in {"p": 6.25, "q": 3.74, "v": 15.44}.items():
        assert _sig3(m.params_[k]) == _sig3(v), k


@needs_cdnow
def test_bgnbd_expectations_match_hardie_spreadsheet(cdnow):
    """Values from Hardie's BG/NBD Excel implementation on CDNOW (which
    uses the unrounded estimates): the conditional expectation for the
    customer with x=2, t_x=30.43, T=38.86 over the next 39 weeks, and
    E[X(t)] at several t."""
    m = clv.BetaGeoModel().fit(cdnow["frequency"], cdnow["recency"], cdnow["T"])
    assert abs(m.expected_purchases(39, [2], [30.43], [38.86])[0] - 1.226) < 1e-3
    assert abs(_fitted(clv.BetaGeoModel, FHL_BGNBD).expected_purchases(39, [2], [30.43], [38.86])[0]
               - 1.226) < 1e-3
    t = np.array([0.1429, 1.0, 3.0, 31.8571, 32.0, 78.0])
    expected = np.array([0.0078, 0.0532, 0.1506, 1.0405, 1.0437, 1.8576])
    np.testing.assert_allclose(m.expected_purchases_new(t), expected, atol=5e-4)


# ------------------------------------------- the model definitions themselves

def _gamma_grid(shape, rate, n=2500, lo=-40.0, hi=8.0):
    """Nodes and weights integrating over a Gamma(shape, rate) variable on a log grid."""
    u = np.linspace(lo, hi, n)
    v = np.exp(u)
    w = np.exp(shape * np.log(rate) + shape * u - rate * v - gammaln(shape)) * (u[1] - u[0])
    return v, w


def _pnbd_by_integration(params, x, tx, T, t):
    """P(alive), E[Y(t)|history] and the log-likelihood of one customer by
    2-D numerical integration of the Pareto/NBD individual-level model over
    lambda ~ Gamma(r, alpha) and mu ~ Gamma(s, beta) -- no hypergeometric function."""
    r, al, s, be = params
    lam, wl = _gamma_grid(r, al)
    mu, wm = _gamma_grid(s, be)
    L, M, W = lam[:, None], mu[None, :], wl[:, None] * wm[None, :]
    c = np.max(x * np.log(lam) - lam * tx)
    with np.errstate(over="ignore", under="ignore"):
        alive = np.exp(x * np.log(L) - (L + M) * T - c)
        dead = np.exp(x * np.log(L) - L * tx - c) * M / (L + M) * (
            np.exp(-M * tx) - np.exp(-L * (T - tx) - M * T))
    den = ((alive + dead) * W).sum()
    p_alive = (alive * W).sum() / den
    expect = (L / M * -np.expm1(-M * t) * alive * W).sum() / den
    return p_alive, expect, np.log(den) + c


@pytest.mark.parametrize("params", [(0.553, 10.578, 0.606, 11.669),  # alpha < beta
                                    (1.3, 30.0, 2.0, 6.0)])          # alpha >= beta
@pytest.mark.parametrize("x,tx,T", [(0, 0.0, 38.86), (2, 30.43, 38.86), (7, 20.0, 38.86),
                                    (25, 37.0, 38.86), (3, 5.0, 60.0)])
def test_pareto_nbd_closed_forms_equal_numerical_integration(params, x, tx, T):
    m = _fitted(clv.ParetoNBDModel, dict(zip(("r", "alpha", "s", "beta"), params)))
    p_ref, e_ref, ll_ref = _pnbd_by_integration(params, x, tx, T, 39.0)
    assert m.p_alive([x], [tx], [T])[0] == pytest.approx(p_ref, rel=1e-6)
    assert m.expected_purchases(39.0, [x], [tx], [T])[0] == pytest.approx(e_ref, rel=1e-6)
    assert m.loglik([x], [tx], [T]) == pytest.approx(ll_ref, rel=1e-8)


def test_pareto_nbd_stays_finite_for_heavy_buyers_and_extreme_parameters():
    """Where the raw 2F1 of the note overflows (large x, alpha << beta), the
    Euler-transformed log form still agrees with numerical integration."""
    params = (3.0, 0.5, 2.0, 600.0)
    m = _fitted(clv.ParetoNBDModel, dict(zip(("r", "alpha", "s", "beta"), params)))
    x, tx, T = 150, 9.0, 10.0
    p_ref, _, ll_ref = _pnbd_by_integration(params, x, tx, T, 10.0)
    assert np.isfinite(m.loglik([x], [tx], [T]))
    assert m.loglik([x], [tx], [T]) == pytest.approx(ll_ref, rel=1e-7)
    assert m.p_alive([x], [tx], [T])[0] == pytest.approx(p_ref, rel=1e-6)


def _bg_by_integration(params, x, tx, T, t):
    """BG/NBD P(alive) and E[Y(t)|history] from the individual-level model
    (FHL 2005, section 3) integrated numerically over lambda and p."""
    r, al, a, b = params
    lam, wl = _gamma_grid(r, al, n=4000, lo=-100.0)
    # p ~ Beta(a, b) with p = u^(1/a): the density's p^(a-1) singularity becomes flat in u
    u, wu = np.polynomial.legendre.leggauss(600)
    u, wu = (u + 1) / 2, wu / 2
    pg = u ** (1 / a)
    wp = wu / a * np.exp((b - 1) * np.log1p(-pg) - betaln(a, b))
    with np.errstate(divide="ignore", under="ignore"):
        c = np.max(x * np.log(lam) - lam * tx)  # common scale, so large x does not overflow
        lam_alive = wl * np.exp(x * np.log(lam) - lam * T - c)
        lam_dead = wl * np.exp(x * np.log(lam) - lam * tx - c)
    e_surv = np.sum(wp * (1 - pg) ** x)                         # E_p[(1-p)^x]
    e_drop = np.sum(wp * pg * (1 - pg) ** (x - 1)) if x > 0 else 0.0
    den = e_surv * lam_alive.sum() + e_drop * lam_dead.sum()
    # alive at T, purchases in (T, T+t] stop after the first one followed by dropout:
    # E[Y(t) | lambda, p, alive] = (1 - exp(-lambda p t)) / p
    fut = np.sum((wp * (1 - pg) ** x / pg)[:, None] * -np.expm1(-np.outer(pg, lam) * t)
                 * lam_alive[None, :])
    return e_surv * lam_alive.sum() / den, fut / den


@pytest.mark.parametrize("x,tx,T", [(0, 0.0, 38.86), (2, 30.43, 38.86), (6, 12.0, 38.86),
                                    (400, 38.0, 38.86)])
def test_bgnbd_p_alive_and_expectation_equal_numerical_integration(x, tx, T):
    m = _fitted(clv.BetaGeoModel, FHL_BGNBD)
    p_ref, e_ref = _bg_by_integration(tuple(FHL_BGNBD.values()), x, tx, T, 39.0)
    assert m.p_alive([x], [tx], [T])[0] == pytest.approx(p_ref, rel=1e-4)
    assert m.expected_purchases(39.0, [x], [tx], [T])[0] == pytest.approx(e_ref, rel=1e-4)


def test_bgnbd_expectation_is_right_where_the_hypergeometric_function_struggles():
    """FHL eq. (10) in closed form against the same expectation integrated
    over the posterior of p by Gauss-Jacobi quadrature, for large a, b (a
    fit on little data runs them to 1e7+), heavy buyers and long horizons.
    (For a < 1 the quadrature itself needs many nodes at long horizons;
    the closed form is checked there against numerical integration above.)"""
    rng = np.random.default_rng(3)
    for _ in range(30):
        r, al = 10 ** rng.uniform(-1.3, 0.7), 10 ** rng.uniform(0, 3)
        a, b = 10 ** rng.uniform(0, 3.5), 10 ** rng.uniform(-1, 3.5)
        x = np.array([0.0, 40, 400])
        T = 10 ** rng.uniform(0, 3, 3)
        t = np.full(3, 10 ** rng.uniform(-1, 2.5))
        closed = clv._bg_core(r, al, a, b, x, T, t)
        by_p = clv._bg_core_quadrature(r, al, a, b, x, T, t)
        np.testing.assert_allclose(closed, by_p, rtol=1e-6, err_msg=str((r, al, a, b)))
    # and the quadrature is the model's expectation (the 2-D integration above)
    m = _fitted(clv.BetaGeoModel, FHL_BGNBD)
    _, e_ref = _bg_by_integration(tuple(FHL_BGNBD.values()), 2, 30.43, 38.86, 39.0)
    core = clv._bg_core_quadrature(*FHL_BGNBD.values(), np.array([2.0]), np.array([38.86]), np.array([39.0]))
    assert core[0] * m.p_alive([2], [30.43], [38.86])[0] == pytest.approx(e_ref, rel=1e-4)


def test_bgnbd_limiting_cases():
    m = _fitted(clv.BetaGeoModel, FHL_BGNBD)
    # no repeat purchase: BG/NBD customers can only drop out after a purchase
    assert m.p_alive([0], [0.0], [100.0])[0] == 1.0
    # long silence after the last purchase drives P(alive) towards 0, monotonically
    p = m.p_alive(np.full(5, 3), np.full(5, 10.0), np.array([10.0, 20, 50, 200, 5000]))
    assert np.all(np.diff(p) < 0) and p[-1] < 1e-3 and p[0] > 0.5
    # nothing happens in no time; a = 1 (a removable singularity) matches its neighbours
    assert m.expected_purchases(0.0, [2], [30.0], [38.0])[0] == 0.0
    near = [_fitted(clv.BetaGeoModel, {**FHL_BGNBD, "a": a}).expected_purchases(39, [2], [30.4], [38.9])[0]
            for a in (1 - 1e-3, 1.0, 1 + 1e-3)]
    assert near[1] == pytest.approx((near[0] + near[2]) / 2, rel=1e-5)
    # expectations grow with the horizon and stay finite for heavy buyers (the raw 2F1 overflows)
    e = m.expected_purchases(np.array([1.0, 10, 100, 1000]), [400], [38.86], [38.86])[0]
    assert np.all(np.isfinite(e)) and np.all(np.diff(e) > 0)


def test_gamma_gamma_expected_spend_is_the_published_weighted_mean():
    m = _fitted(clv.GammaGammaModel, {"p": 6.25, "q": 3.74, "v": 15.44})
    pop = 6.25 * 15.44 / (3.74 - 1)
    assert m.expected_spend([0], [0.0])[0] == pytest.approx(pop)
    w = 6.25 * 3 / (6.25 * 3 + 3.74 - 1)
    assert m.expected_spend([3], [50.0])[0] == pytest.approx(w * 50 + (1 - w) * pop)
    assert m.expected_spend([10 ** 7], [50.0])[0] == pytest.approx(50.0, rel=1e-5)


# ----------------------------------------------------------- gradients, grouping

def _central_diff(f, theta, h=1e-6):
    g = np.zeros(len(theta))
    for k in range(len(theta)):
        e = np.zeros(len(theta))
        e[k] = h
        g[k] = (f(theta + e) - f(theta - e)) / (2 * h)
    return g


@pytest.fixture(scope="module")
def small_summary():
    rng = np.random.default_rng(7)
    n = 400
    x = rng.poisson(2.0, n).astype(float)
    T = rng.uniform(5, 40, n)
    tx = np.where(x > 0, rng.uniform(0, 1, n) * T, 0.0)
    m = np.where(x > 0, rng.gamma(5.0, 8.0, n), 0.0)
    return x, tx, T, m


@pytest.mark.parametrize("model_cls,point", [
    (clv.BetaGeoModel, {"r": 0.6, "alpha": 3.0, "a": 0.9, "b": 2.5}),
    (clv.BetaGeoModel, {"r": 2.0, "alpha": 12.0, "a": 3.0, "b": 0.7}),
    (clv.ParetoNBDModel, {"r": 0.6, "alpha": 3.0, "s": 0.9, "beta": 8.0}),
    (clv.ParetoNBDModel, {"r": 0.6, "alpha": 9.0, "s": 1.4, "beta": 2.0}),
])
def test_count_model_gradients_equal_finite_differences(model_cls, point, small_summary):
    x, tx, T, _ = small_summary
    m = model_cls()
    names = list(point)
    f = lambda th: m.loglik(x, tx, T, params=dict(zip(names, np.exp(th))))
    theta = np.log(list(point.values()))
    np.testing.assert_allclose(m.loglik_gradient(x, tx, T, params=point), _central_diff(f, theta),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("point", [{"p": 6.0, "q": 3.7, "v": 15.0}, {"p": 1.2, "q": 9.0, "v": 300.0}])
def test_gamma_gamma_gradient_equals_finite_differences(point, small_summary):
    x, _, _, mon = small_summary
    m = clv.GammaGammaModel()
    f = lambda th: m.loglik(x, mon, params=dict(zip("pqv", np.exp(th))))
    np.testing.assert_allclose(m.loglik_gradient(x, mon, params=point),
                               _central_diff(f, np.log(list(point.values()))), rtol=1e-5, atol=1e-5)


def test_grouped_likelihood_equals_the_per_customer_sum():
    """The grouped, weighted log-likelihood equals FHL (2005) eq. (6) summed
    customer by customer, written out naively here."""
    x = np.array([0, 0, 2, 2, 2, 5, 1, 0])
    tx = np.array([0, 0, 30.43, 30.43, 12.0, 35.0, 1.71, 0])
    T = np.array([38.86, 38.86, 38.86, 38.86, 38.86, 38.86, 38.86, 20.0])
    r, al, a, b = FHL_BGNBD.values()
    naive = 0.0
    for xi, ti, Ti in zip(x, tx, T):
        A = np.exp(betaln(a, b + xi) - betaln(a, b) + gammaln(r + xi) - gammaln(r) + r * np.log(al)
                   - (r + xi) * np.log(al + Ti))
        B = (np.exp(betaln(a + 1, b + xi - 1) - betaln(a, b) + gammaln(r + xi) - gammaln(r)
                    + r * np.log(al) - (r + xi) * np.log(al + ti)) if xi > 0 else 0.0)
        naive += np.log(A + B)
    assert clv.BetaGeoModel().loglik(x, tx, T, params=FHL_BGNBD) == pytest.approx(naive, rel=1e-12)


@needs_cdnow
@pytest.mark.parametrize("model_cls", [clv.BetaGeoModel, clv.ParetoNBDModel])
def test_weights_give_the_same_fit_as_repeated_rows(model_cls, cdnow):
    counts = cdnow.groupby(["frequency", "recency", "T"]).size().reset_index(name="n")
    assert len(counts) < len(cdnow)  # there is something to group
    by_rows = model_cls().fit(cdnow["frequency"], cdnow["recency"], cdnow["T"])
    by_weights = model_cls().fit(counts["frequency"], counts["recency"], counts["T"], weights=counts["n"])
    for k, v in by_rows.params_.items():
        assert by_weights.params_[k] == pytest.approx(v, rel=1e-6)
    assert by_weights.loglik_ == pytest.approx(by_rows.loglik_, rel=1e-10)
    assert by_rows.n_groups_ == len(counts)


def test_time_unit_only_rescales_the_rate_parameters():
    x, tx, T = _simulate_bgnbd(2000, 0.9, 40.0, 0.8, 4.0, seed=11)
    weeks = [model().fit(x, tx / 7, T / 7) for model in (clv.BetaGeoModel, clv.ParetoNBDModel)]
    days = [model().fit(x, tx, T) for model in (clv.BetaGeoModel, clv.ParetoNBDModel)]
    for w, d in zip(weeks, days):
        assert w.converged_ and d.converged_
        for k, v in w.params_.items():
            scale = 7 if k in ("alpha", "beta") else 1
            assert d.params_[k] == pytest.approx(scale * v, rel=1e-4), k


# ------------------------------------------------------------------ simulation

def _simulate_bgnbd(n, r, alpha, a, b, seed):
    """Customers from the BG/NBD story itself: Poisson purchases at rate
    lambda ~ Gamma(r, alpha) from time 0, dropout with probability p ~ Beta(a, b)
    right after each repeat purchase; observed for T days."""
    rng = np.random.default_rng(seed)
    lam, p = rng.gamma(r, 1 / alpha, n), rng.beta(a, b, n)
    T = rng.uniform(365, 1095, n)
    x, tx, t = np.zeros(n), np.zeros(n), np.zeros(n)
    alive = np.ones(n, dtype=bool)
    while alive.any():
        t = t + rng.exponential(1 / lam)
        alive &= t < T
        x += alive
        tx = np.where(alive, t, tx)
        alive &= rng.random(n) >= p
    return x, tx, T


@pytest.mark.slow
def test_bgnbd_recovers_planted_parameters_within_10_percent():
    planted = {"r": 0.9, "alpha": 40.0, "a": 0.8, "b": 4.0}
    x, tx, T = _simulate_bgnbd(20_000, seed=3, **planted)
    m = clv.BetaGeoModel().fit(x, tx, T)
    for k, v in planted.items():
        assert abs(m.params_[k] / v - 1) < 0.10, (k, m.params_[k])


# ------------------------------------------------------------------ CLV

def test_clv_is_the_discounted_sum_of_monthly_expected_transactions(small_summary):
    x, tx, T, mon = small_summary
    bg = _fitted(clv.BetaGeoModel, {"r": 0.6, "alpha": 3.0, "a": 0.9, "b": 2.5})
    gg = _fitted(clv.GammaGammaModel, {"p": 6.0, "q": 3.7, "v": 15.0})
    # time in weeks: a month is 365.25/12/7 weeks
    got = clv.clv(bg, gg, x, tx, T, mon, horizon=6, discount_rate=0.02, margin=0.4, time_unit="W")
    step = 365.25 / 12 / 7
    spend = gg.expected_spend(x, mon)
    brute = np.zeros(len(x))
    for k in range(1, 7):
        d = (bg.expected_purchases(k * step, x, tx, T) - bg.expected_purchases((k - 1) * step, x, tx, T))
        brute += 0.4 * spend * d / 1.02 ** k
    np.testing.assert_allclose(got, brute, rtol=1e-10)
    # without discounting the months telescope to the whole horizon
    flat = clv.clv(bg, gg, x, tx, T, mon, horizon=6, discount_rate=0.0, time_unit="W")
    np.testing.assert_allclose(flat, spend * bg.expected_purchases(6 * step, x, tx, T), rtol=1e-10)


def test_clv_refuses_nonsense_parameters(small_summary):
    x, tx, T, mon = small_summary
    bg = _fitted(clv.BetaGeoModel, FHL_BGNBD)
    gg = _fitted(clv.GammaGammaModel, {"p": 6.0, "q": 3.7, "v": 15.0})
    with pytest.raises(ParameterError):
        clv.clv(bg, gg, x, tx, T, mon, horizon=0)
    with pytest.raises(ParameterError):
        clv.clv(bg, gg, x, tx, T, mon, time_unit="Y")


def test_inputs_are_validated():
    with pytest.raises(DataContractError, match="recency"):
        clv.BetaGeoModel().fit([1, 2], [5.0, 9.0], [4.0, 10.0])
    with pytest.raises(DataContractError, match="frequency"):
        clv.BetaGeoModel().fit([1.5], [1.0], [2.0])
    with pytest.raises(ParameterError, match="not fitted"):
        clv.BetaGeoModel().p_alive([1], [1.0], [2.0])


# ------------------------------------------------------- the engine summary

@needs_cdnow
def test_summary_from_cdnow_transactions_matches_the_published_summary(cdnow_orders, cdnow, cdnow_spend):
    table, _ = cdnow_orders
    s = clv.transaction_summary(table, calibration_end="1997-09-30", observation_end="1998-06-30",
                                time_unit="W")
    assert len(s) == 2357 and s.attrs["holdout_length"] == 39.0
    m = s.merge(cdnow, left_on="customer_id", right_on="ID").merge(
        cdnow_spend[["ID", "zbar"]], on="ID")
    assert (m["frequency_x"] == m["frequency_y"]).all()
    assert np.abs(m["recency_x"] - m["recency_y"]).max() < 0.006  # the file rounds to 2 decimals
    assert np.abs(m["T_x"] - m["T_y"]).max() < 0.006
    assert np.abs(m["monetary"] - m["zbar"]).max() < 0.006
    fit = clv.BetaGeoModel().fit(s["frequency"], s["recency"], s["T"])
    for k, v in FHL_BGNBD.items():
        assert _sig3(fit.params_[k]) == _sig3(v)


def test_summary_counts_same_day_orders_once_and_skips_cancelled():
    orders = pd.DataFrame({
        "customer_id": [1, 1, 1, 1, 2, 2, 3],
        "order_date": pd.to_datetime(["2024-01-01 09:00", "2024-01-01 18:00", "2024-01-11 10:00",
                                      "2024-01-21 10:00", "2024-01-05 00:00", "2024-02-10 00:00",
                                      "2024-02-01 00:00"]),
        "amount": [10.0, 5.0, 20.0, 99.0, 7.0, 8.0, 3.0],
        "status": ["paid", "paid", "paid", " Cancelled", "paid", "paid", "refunded"],
    })
    table = ibis.duckdb.connect().create_table("orders", orders)
    s = clv.transaction_summary(table, calibration_end="2024-01-31", observation_end="2024-02-29")
    s = s.set_index("customer_id")
    assert list(s.index) == [1, 2]  # customer 3 only has a refunded order
    assert s.loc[1, "frequency"] == 1 and s.loc[1, "recency"] == 10.0 and s.loc[1, "T"] == 30.0
    assert s.loc[1, "monetary"] == 20.0 and s.loc[1, "revenue"] == 35.0
    assert s.loc[2, "frequency"] == 0 and s.loc[2, "frequency_holdout"] == 1
    weeks = clv.transaction_summary(table, calibration_end="2024-01-31", time_unit="W")
    assert weeks.set_index("customer_id").loc[1, "T"] == pytest.approx(30 / 7)


@needs_cdnow
def test_holdout_check_and_tracking_add_up(cdnow_orders):
    table, orders = cdnow_orders
    s = clv.transaction_summary(table, calibration_end="1997-09-30", observation_end="1998-06-30",
                                time_unit="W")
    bg = clv.BetaGeoModel().fit(s["frequency"], s["recency"], s["T"])
    check = clv.holdout_check(s, bg)
    # actual: distinct purchase days after the calibration end, counted here in pandas
    days = orders.assign(day=orders["order_date"].dt.normalize()).drop_duplicates(["customer_id", "day"])
    assert check["total"]["actual"] == (days["day"] > "1997-09-30").sum()
    assert check["total"]["predicted"] == pytest.approx(
        bg.expected_purchases(39.0, s["frequency"], s["recency"], s["T"]).sum())
    assert check["time_unit"] == "W" and check["total"]["holdout_length"] == pytest.approx(39.0)
    by = check["by_frequency"]
    assert list(by["calibration_purchases"]) == ["0", "1", "2", "3", "4", "5", "6", "7+"]
    assert by["customers"].sum() == 2357
    assert (by["actual"] * by["customers"]).sum() == pytest.approx(check["total"]["actual"])
    # the model is informative: more calibration purchases, more holdout purchases
    assert by["predicted"].is_monotonic_increasing
    track = clv.tracking_series(table, bg, calibration_end="1997-09-30", observation_end="1998-06-30",
                                time_unit="W")
    repeat_total = len(days) - days["customer_id"].nunique()
    assert track["actual"].iloc[-1] == repeat_total
    first = days.groupby("customer_id")["day"].min()
    age = (pd.Timestamp("1998-06-30") - first).dt.days.to_numpy() / 7
    assert track["expected"].iloc[-1] == pytest.approx(bg.expected_purchases_new(age).sum(), rel=1e-9)
    assert track["actual"].is_monotonic_increasing and track["expected"].is_monotonic_increasing
    # FHL (2005) figure 3: the model tracks cumulative repeat purchases within a few percent
    assert abs(track["expected"].iloc[-1] / track["actual"].iloc[-1] - 1) < 0.08


def test_fit_value_models_and_customer_values_on_a_tiny_world():
    rng = np.random.default_rng(1)
    x, tx, T = _simulate_bgnbd(3000, 0.9, 40.0, 0.8, 4.0, seed=1)
    s = pd.DataFrame({"customer_id": np.arange(len(x)), "frequency": x, "recency": tx, "T": T,
                      "monetary": np.where(x > 0, rng.gamma(6.0, 5.0, len(x)), 0.0)})
    s.attrs["time_unit"] = "D"
    models = clv.fit_value_models(s, pnbd_max_customers=1000, random_state=0)
    assert models.pnbd.n_customers_ == 1000
    table = models.parameters()
    assert set(table["model"]) == {"BG/NBD", "Pareto/NBD", "Gamma-Gamma"}
    vals = clv.customer_values(s, models, horizon=12, discount_rate=0.01, margin=0.3)
    assert list(vals.columns) == ["customer_id", "frequency", "p_alive", "expected_purchases", "expected_spend", "clv"]
    assert (vals["frequency"] == s["frequency"]).all()
    assert vals["p_alive"].between(0, 1).all() and (vals["clv"] >= 0).all()
    # more recent, more frequent buyers are worth more
    hi = (s["frequency"] >= 5) & (s["T"] - s["recency"] < 30)
    lo = (s["frequency"] >= 5) & (s["T"] - s["recency"] > 300)
    assert vals.loc[hi, "clv"].mean() > 3 * vals.loc[lo, "clv"].mean()
    assert "times a year" in clv.describe_models(models)
    # Pareto/NBD on a sample: compared per customer, and said so
    per = (models.bgnbd.loglik_ / 3000, models.pnbd.loglik_ / 1000)
    text = clv.describe_models(models)
    assert "sample of 1,000 customers" in text and f"{per[0]:.4f}" in text
    assert ("BG/NBD fits" in text) == (per[0] >= per[1])


# ------------------------------------------------- data that cannot identify the models

def _clockwork_summary(n=300, seed=0):
    """Customers who all buy like clockwork and never leave: no spread in
    purchase rates and no dropout, so r, alpha (and s, beta) run off towards
    a flat limit of the likelihood (the shop-export example looks like this)."""
    rng = np.random.default_rng(seed)
    T = rng.uniform(4, 130, n)
    gap = 14.0
    x = np.floor(T / gap)
    tx = x * gap
    return x, tx, T


@pytest.mark.parametrize("model_cls", [clv.BetaGeoModel, clv.ParetoNBDModel])
def test_a_flat_likelihood_stops_at_the_parameter_bounds_and_is_flagged(model_cls):
    """Before: the optimiser chased the flat limit to exp(25), where the
    Pareto/NBD's hypergeometric terms cost 100x more per evaluation (30 s on
    the 288 customers of examples/shop-export) and never converged."""
    x, tx, T = _clockwork_summary()
    m = model_cls().fit(x, tx, T)
    assert m.converged_ and m.at_bound_
    theta = np.log(list(m.params_.values()))
    assert (np.abs(theta) <= clv._COUNT_LOG_RANGE + np.log(T.mean()) + 1e-9).all()
    models = clv.ValueModels(bgnbd=m if model_cls is clv.BetaGeoModel else clv.BetaGeoModel().fit(x, tx, T),
                             pnbd=m if model_cls is clv.ParetoNBDModel else None, gg=None)
    assert "Caution" in clv.describe_models(models)
