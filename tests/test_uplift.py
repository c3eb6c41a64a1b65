"""Tests of crmlab.uplift: the Qini curve and coefficient against hand
computation, and the uplift models against planted heterogeneous effects."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression

from crmlab import uplift
from crmlab.exceptions import ParameterError

# six customers, computed by hand (see test_qini_hand_computed)
Y = [1, 0, 1, 0, 0, 1]
T = [1, 0, 1, 1, 0, 0]
S = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]


def test_qini_curve_hand_computed():
    # after k customers: (n_t, n_c, R_t, R_c) -> R_t - R_c * n_t / n_c (0 while n_c = 0)
    # 1: (1,0,1,0) -> 1   2: (1,1,1,0) -> 1   3: (2,1,2,0) -> 2
    # 4: (3,1,2,0) -> 2   5: (3,2,2,0) -> 2   6: (3,3,2,1) -> 2 - 1 = 1
    q = uplift.qini_curve(Y, T, S)
    assert q["incremental"].tolist() == [0, 1, 1, 2, 2, 2, 1]
    assert q["fraction"].tolist() == pytest.approx([0, 1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1])
    assert q["random"].iloc[-1] == 1 and q["random"].iloc[3] == pytest.approx(0.5)


def test_qini_coefficient_hand_computed():
    # model area (trapezoids, dx = 1/6): (0.5 + 1 + 1.5 + 2 + 2 + 1.5) / 6 = 17/12;
    # random diagonal 0 -> 1: 1/2; so the raw Qini area is 11/12.
    assert uplift.qini_coefficient(Y, T, S, normalize=False) == pytest.approx(11 / 12)
    # optimum: treated converters (2) first, then the 3 non-converters, the control
    # converter last: points (0,0) (2/6,2) (5/6,2) (1,1): area 1/3 + 1 + 1/4 = 19/12,
    # minus 1/2 = 13/12. Radcliffe's Q = (11/12) / (13/12) = 11/13.
    opt = uplift.optimum_qini_curve(Y, T)
    assert opt["incremental"].tolist() == [0, 2, 2, 1]
    assert uplift.qini_coefficient(Y, T, S) == pytest.approx(11 / 13)


def test_ties_are_averaged_and_random_scores_are_zero():
    # all scores equal: the curve is the straight line of random targeting
    assert uplift.qini_coefficient(Y, T, [0.5] * 6) == pytest.approx(0.0)
    q = uplift.qini_curve(Y, T, [0.5] * 6)
    assert len(q) == 2


def test_reversed_ranking_is_worse_than_random():
    assert uplift.qini_coefficient(Y, T, -np.asarray(S)) < 0


def test_bad_input():
    with pytest.raises(ParameterError):
        uplift.qini_curve([1, 0], [1, 0], [0.1])
    with pytest.raises(ParameterError):
        uplift.qini_curve([1, 0], [1, 0], [0.1, np.nan])


def _heterogeneous(n, seed):
    """Customers whose campaign helps when x > 0 and hurts when x < -1."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    z = rng.normal(size=n)                       # noise feature
    region = rng.choice(["East", "West"], size=n)
    t = rng.random(n) < 0.5
    p_c = 0.08 + 0.02 * (region == "East")
    tau = np.where(x > 0, 0.10, np.where(x < -1, -0.05, 0.0))
    p_t = np.clip(p_c + tau, 0, 1)
    y = (rng.random(n) < np.where(t, p_t, p_c)).astype(int)
    X = pd.DataFrame({"x": x, "z": z, "region": region})
    return X, t, y, p_t - p_c


def test_true_uplift_beats_random_targeting():
    X, t, y, tau = _heterogeneous(20_000, 1)
    perfect = uplift.qini_coefficient(y, t, tau)
    rng = np.random.default_rng(2)
    random = uplift.qini_coefficient(y, t, rng.random(len(y)))
    test = uplift.qini_permutation_test(y, t, tau, n_permutations=50, random_state=3)
    # Q is relative to the optimum ordering by observed outcomes, which no model
    # can reach; the true uplift lands far above the null of random rankings
    assert perfect == test["qini"] and perfect > 0.1
    assert perfect > 4 * test["null_95"]
    assert test["p_value"] < 0.05 and abs(test["null_mean"]) < 0.01
    assert abs(random) < test["null_95"] * 2


@pytest.mark.parametrize("method", ["t_learner", "class_transformation"])
def test_uplift_model_finds_planted_heterogeneity(method):
    X, t, y, tau = _heterogeneous(30_000, 4)
    Xh, th, yh, tauh = _heterogeneous(20_000, 5)
    model = uplift.UpliftModel(method=method, random_state=0)
    assert model.fit(X, t, y) is model
    pred = model.predict(Xh)
    assert np.corrcoef(pred, tauh)[0, 1] > 0.5
    assert uplift.qini_coefficient(yh, th, pred) > 0.5 * uplift.qini_coefficient(yh, th, tauh)
    # scikit-learn estimator contract
    assert clone(model).get_params()["method"] == method
    assert model.treatment_share_ == pytest.approx(t.mean())


def test_uplift_model_with_another_estimator_and_bad_method():
    X, t, y, _ = _heterogeneous(5_000, 6)
    m = uplift.UpliftModel(estimator=LogisticRegression(max_iter=500)).fit(X, t, y)
    assert m.predict(X.head(3)).shape == (3,)
    with pytest.raises(ParameterError):
        uplift.UpliftModel(method="s_learner").fit(X, t, y)
    with pytest.raises(ParameterError):
        uplift.UpliftModel().fit(X, np.ones(len(y), bool), y)


def test_segments_show_where_it_helps_and_hurts():
    X, t, y, tau = _heterogeneous(40_000, 7)
    seg = uplift.uplift_segments(y, t, tau, n_bins=5)
    assert seg["bin"].tolist() == [1, 2, 3, 4, 5]
    assert seg.loc[0, "verdict"] == "helps"          # top bin: x > 0
    assert seg.loc[4, "verdict"] == "hurts"          # bottom bin: x < -1 mostly
    assert (seg.n_treatment + seg.n_control).sum() == len(y)
    assert (seg.ci_low <= seg.observed_uplift).all() and (seg.observed_uplift <= seg.ci_high).all()


def test_small_segments_are_not_shown():
    seg = uplift.uplift_segments(Y, T, S, n_bins=2)
    assert seg["observed_uplift"].isna().all()
    assert (seg["verdict"] == "no clear effect").all()


def test_uplift_curve_ends_at_overall_uplift_times_n():
    X, t, y, tau = _heterogeneous(2_000, 8)
    u = uplift.uplift_curve(y, t, tau)
    overall = y[t].mean() - y[~t].mean()
    assert u["uplift"].iloc[-1] == pytest.approx(overall * len(y))


def test_permutation_test_holds_its_level_when_nothing_works():
    # no treatment effect; the score sorts heavy buyers to the top, the case
    # where comparing with a random order would be too lenient
    rng = np.random.default_rng(11)
    p = []
    for rep in range(80):
        n = 1500
        base = np.where(rng.random(n) < 0.5, 0.0, rng.beta(2, 8, n))
        t = rng.random(n) < 0.8
        y = (rng.random(n) < base).astype(int)
        score = base + rng.normal(scale=0.02, size=n)
        p.append(uplift.qini_permutation_test(y, t, score, n_permutations=60,
                                              random_state=rep)["p_value"])
    p = np.asarray(p)
    assert (p < 0.05).mean() <= 0.12 and (p < 0.5).mean() <= 0.65


def test_score_bins_are_equal_sized_best_first():
    s = np.array([0.3, 0.9, 0.1, 0.5, 0.7, 0.2])
    assert uplift.score_bins(s, 3).tolist() == [2, 1, 3, 2, 1, 3]
    assert uplift.score_bins(s, 10).tolist() == [4, 1, 6, 3, 2, 5]      # at most one bin per row


def test_adjusted_segment_verdicts_keep_the_family_level():
    # no effect anywhere and a useless score: a verdict other than "no clear
    # effect" in any of five bins is a false alarm
    rng = np.random.default_rng(3)
    alarms = {False: 0, True: 0}
    for _ in range(300):
        n = 2_000
        y = (rng.random(n) < 0.1).astype(int)
        t = rng.random(n) < 0.5
        s = rng.random(n)
        for adjust in alarms:
            seg = uplift.uplift_segments(y, t, s, n_bins=5, adjust=adjust)
            alarms[adjust] += (seg.verdict != "no clear effect").any()
    # five 95% intervals raise a false alarm in about 1 - 0.95 ** 5 = 23% of
    # studies; the Bonferroni-adjusted ones in at most 5%
    assert alarms[False] / 300 > 0.15
    assert alarms[True] / 300 <= 0.07
    seg_raw = uplift.uplift_segments(y, t, s, n_bins=5)
    seg_adj = uplift.uplift_segments(y, t, s, n_bins=5, adjust=True)
    assert ((seg_adj.ci_high - seg_adj.ci_low) > (seg_raw.ci_high - seg_raw.ci_low)).all()


def test_closed_form_optimum_area_is_the_sorted_one():
    rng = np.random.default_rng(5)
    for n, p in ((7, 0.4), (200, 0.1), (5_000, 0.03), (50, 0.0)):
        y = (rng.random(n) < p).astype(float)
        t = rng.random(n) < 0.6
        pts = uplift._points(y, t, *uplift._ranking(uplift._optimum_score(y, t)))
        assert uplift._optimum_area(y, t) == pytest.approx(uplift._qini_area(n, pts[0], pts[-1]))
    counts = rng.poisson(0.5, 300).astype(float)          # not 0/1: sorted, as before
    t = rng.random(300) < 0.5
    pts = uplift._points(counts, t, *uplift._ranking(uplift._optimum_score(counts, t)))
    assert uplift._optimum_area(counts, t) == pytest.approx(uplift._qini_area(300, pts[0], pts[-1]))
