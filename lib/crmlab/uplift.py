"""Uplift modelling: who buys *because of* a campaign, and how to judge it.

An uplift model predicts, for one customer, the change in the chance of
converting caused by the campaign: ``P(convert | treated) - P(convert |
not treated)``. It can only be learned from a randomised campaign with a
control group, and it can only be judged on held-out customers, with the
Qini curve (Radcliffe 2007) -- there is no per-customer truth to compare
with, since each customer was either treated or not.

Contents

``UpliftModel``        a scikit-learn-style estimator: the two-model
                       T-learner or the class-transformation model
``qini_curve``         incremental conversions when targeting the top share
                       of customers ranked by predicted uplift
``qini_coefficient``   Radcliffe's Q: the area between the Qini curve and
                       random targeting, relative to the optimum model
``uplift_curve``       the uplift curve of Rzepakowski & Jaroszewicz
``qini_permutation_test``  is the Qini coefficient better than chance?
``uplift_segments``    bins of predicted uplift with the observed uplift, its
                       interval and a verdict: helps, no clear effect, hurts

References
----------
Radcliffe, N. J. (2007). Using control groups to target on predicted lift:
    building and assessing uplift models. Direct Marketing Analytics
    Journal, 1, 14-21.
Jaskowski, M. & Jaroszewicz, S. (2012). Uplift modeling for clinical trial
    data. ICML 2012 Workshop on Clinical Data Analysis.
Kunzel, S. R., Sekhon, J. S., Bickel, P. J. & Yu, B. (2019). Metalearners
    for estimating heterogeneous treatment effects using machine learning.
    PNAS, 116(10), 4156-4165 (the T-learner).
Rzepakowski, P. & Jaroszewicz, S. (2012). Decision trees for uplift
    modeling with single and multiple treatments. Knowledge and Information
    Systems, 32, 303-327.
Newcombe, R. G. (1998). Interval estimation for the difference between
    independent proportions: comparison of eleven methods. Statistics in
    Medicine, 17, 873-890 (method 10, used for the per-segment intervals).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, clone
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from statsmodels.stats.proportion import confint_proportions_2indep

from crmlab.config import MIN_GROUP_SIZE
from crmlab.exceptions import ParameterError

# the verdict on a segment of predicted uplift, from its observed interval
SEGMENT_VERDICTS: dict[str, str] = {
    "helps": "the campaign raises conversion here (interval above zero)",
    "no clear effect": "no effect distinguishable from zero",
    "hurts": "the campaign lowers conversion here (interval below zero)",
}

METHODS = ("t_learner", "class_transformation")

# fits on fewer rows than this run on one OpenMP thread: for small data the
# threads' start-up and, on a busy machine, their contention cost far more
# than they save (measured: 5 s single-threaded against 110 s on a loaded
# 2-core machine for three small campaigns)
SINGLE_THREAD_BELOW = 100_000


def _threads(n_rows: int):
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1 if n_rows < SINGLE_THREAD_BELOW else None,
                             user_api="openmp")


def _default_classifier(random_state):
    # conversion signals are weak and rare, and an uplift is the difference of
    # two such models: small trees with large leaves and a slow learning rate
    # keep each model from fitting noise that the difference would amplify
    # (on the demo world's heterogeneous campaigns, 3 leaves of >= 400 rows
    # beat random targeting in 75-100% of held-out splits against 50-100% for
    # 4 leaves of >= 200, with fewer false positives on a campaign without
    # effect)
    return HistGradientBoostingClassifier(
        max_iter=100, learning_rate=0.05, max_leaf_nodes=3, min_samples_leaf=400,
        l2_regularization=1.0, early_stopping=False, random_state=random_state,
    )


def _arrays(y, treatment, score=None):
    y = np.asarray(y, dtype=float)
    t = np.asarray(treatment).astype(bool)
    if y.shape != t.shape:
        raise ParameterError("y and treatment must have the same length")
    if score is None:
        return y, t
    s = np.asarray(score, dtype=float)
    if s.shape != y.shape:
        raise ParameterError("score must have the same length as y and treatment")
    if np.isnan(s).any():
        raise ParameterError("score has missing values")
    return y, t, s


class UpliftModel(BaseEstimator):
    """Predict each customer's uplift in conversion from a randomised campaign.

    Parameters
    ----------
    method : {"t_learner", "class_transformation"}
        ``"t_learner"`` fits one classifier on the treated and one on the
        control customers; uplift = P(convert | x, treated) - P(convert | x,
        control) (Kunzel et al. 2019). ``"class_transformation"`` fits one
        classifier to Z = 1 when (treated and converted) or (control and not
        converted); with the groups weighted to equal size, uplift =
        2 P(Z=1 | x) - 1 (Jaskowski & Jaroszewicz 2012, eq. 5; the weights
        make their P(treated) = 1/2 assumption hold for any split).
    estimator : scikit-learn classifier, optional
        The base classifier (cloned). Default: a regularised
        ``HistGradientBoostingClassifier``.
    random_state : int, optional

    Attributes
    ----------
    feature_names_in_ : list of str
    treatment_share_ : float
        Share of treated rows in the training data.
    preprocessor_ : fitted ColumnTransformer (median-imputed, scaled numbers;
        one-hot categories, rare ones pooled), shared by the classifiers
    model_treatment_, model_control_ : fitted classifiers (T-learner)
    model_ : fitted classifier (class transformation)

    Examples
    --------
    >>> model = UpliftModel(random_state=0).fit(X, treatment, converted)  # doctest: +SKIP
    >>> model.predict(X_new)  # one uplift per row, in probability points  # doctest: +SKIP
    """

    def __init__(self, *, method: str = "t_learner", estimator=None, random_state=None):
        self.method = method
        self.estimator = estimator
        self.random_state = random_state

    def _classifier(self):
        return (clone(self.estimator) if self.estimator is not None
                else _default_classifier(self.random_state))

    @staticmethod
    def _preprocessor(X: pd.DataFrame) -> ColumnTransformer:
        cat = [c for c in X.columns if not pd.api.types.is_numeric_dtype(X[c])
               or pd.api.types.is_bool_dtype(X[c])]
        num = [c for c in X.columns if c not in cat]
        return ColumnTransformer(
            [("num", make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True),
                                   StandardScaler()), num),
             ("cat", make_pipeline(
                 SimpleImputer(strategy="constant", fill_value="unknown"),
                 OneHotEncoder(handle_unknown="ignore", min_frequency=20, sparse_output=False)),
              cat)],
            remainder="drop",
        )

    @staticmethod
    def _frame(X) -> pd.DataFrame:
        X = X if isinstance(X, pd.DataFrame) else pd.DataFrame(np.asarray(X))
        X = X.copy()
        X.columns = [str(c) for c in X.columns]
        for c in X.columns:
            if not pd.api.types.is_numeric_dtype(X[c]) or pd.api.types.is_bool_dtype(X[c]):
                X[c] = X[c].astype(object).where(X[c].notna(), None).astype(str)
        return X

    def fit(self, X, treatment, y) -> "UpliftModel":
        """Learn from customer features ``X`` (one row per contact), the
        group ``treatment`` (1/True = treated) and the outcome ``y`` (0/1)."""
        if self.method not in METHODS:
            raise ParameterError(f"unknown uplift method {self.method!r}; known: {', '.join(METHODS)}")
        X = self._frame(X)
        y, t = _arrays(y, treatment)
        if t.all() or not t.any():
            raise ParameterError("uplift modelling needs both treated and control rows")
        if len(np.unique(y[t])) < 2 or len(np.unique(y[~t])) < 2:
            raise ParameterError("uplift modelling needs conversions and non-conversions in both groups")
        self.feature_names_in_ = list(X.columns)
        self.treatment_share_ = float(t.mean())
        with _threads(len(X)):
            # one encoding for both groups, learned on all rows
            self.preprocessor_ = self._preprocessor(X).fit(X)
            Z = self.preprocessor_.transform(X)
            yi = y.astype(int)
            if self.method == "t_learner":
                self.model_treatment_ = self._classifier().fit(Z[t], yi[t])
                self.model_control_ = self._classifier().fit(Z[~t], yi[~t])
            else:
                z = (y.astype(bool) == t).astype(int)
                e = self.treatment_share_
                w = np.where(t, 0.5 / e, 0.5 / (1 - e))
                self.model_ = self._classifier().fit(Z, z, sample_weight=w)
        return self

    def predict(self, X) -> np.ndarray:
        """Predicted uplift per row (difference of conversion probabilities)."""
        X = self._frame(X)[self.feature_names_in_]
        with _threads(len(X)):
            Z = self.preprocessor_.transform(X)
            if self.method == "t_learner":
                return (self.model_treatment_.predict_proba(Z)[:, 1]
                        - self.model_control_.predict_proba(Z)[:, 1])
            return 2.0 * self.model_.predict_proba(Z)[:, 1] - 1.0


def _points(y: np.ndarray, t: np.ndarray, order: np.ndarray, last: np.ndarray | None = None):
    """Cumulative counts at the cut-offs of a ranking (numpy core of the
    Qini curve). ``order`` sorts customers best first; ``last`` holds the
    index (in sorted order) of the last customer of each tie group, ``None``
    when there are no ties."""
    ys, ts = y[order].astype(float), t[order].astype(bool)
    n = len(ys)
    if last is None:
        last = np.arange(n)
    n_t = np.cumsum(ts)[last].astype(float)
    n_all = (last + 1).astype(float)
    n_c = n_all - n_t
    r_t = np.cumsum(ys * ts)[last]
    r_c = np.cumsum(ys * ~ts)[last]
    scaled_c = np.divide(r_c * n_t, n_c, out=np.zeros_like(r_c), where=n_c > 0)
    return n_all, n_t, n_c, r_t, r_c, r_t - scaled_c


def _qini_area(n: int, n_all: np.ndarray, inc: np.ndarray) -> float:
    """Area between the Qini curve (points ``n_all / n``, ``inc``, from the
    origin) and the diagonal of random targeting, by the trapezoid rule."""
    x = np.r_[0.0, n_all / n]
    v = np.r_[0.0, inc]
    area = float(np.sum((x[1:] - x[:-1]) * (v[1:] + v[:-1]) / 2.0))
    return area - v[-1] / 2.0


def _ranking(s: np.ndarray):
    order = np.argsort(-s, kind="mergesort")
    ss = s[order]
    last = np.r_[np.flatnonzero(np.diff(ss) != 0), len(s) - 1]
    return order, last


def qini_curve(y, treatment, score) -> pd.DataFrame:
    """The Qini curve of a ranking (Radcliffe 2007).

    Customers are sorted by ``score`` (predicted uplift), highest first. At
    each cut-off -- the top share ``fraction`` of all customers -- the
    curve counts the incremental conversions::

        incremental = R_t - R_c * N_t / N_c

    where ``R_t, R_c`` are the conversions and ``N_t, N_c`` the numbers of
    treated and control customers above the cut-off (the control
    conversions scaled to the size of the treated group; 0 while no control
    customer is above the cut-off). Customers with equal scores cannot be
    ordered, so the curve has one point per distinct score, and the
    straight line between points is the expected curve over random
    tie-breaking.

    Parameters
    ----------
    y : array of 0/1
        Converted.
    treatment : array of bool or 0/1
    score : array of float
        Predicted uplift (only the order matters).

    Returns
    -------
    pandas.DataFrame
        One row per point, starting at (0, 0): ``fraction, n, n_treatment,
        n_control, conversions_treatment, conversions_control, incremental,
        random`` (``random`` is the straight line of random targeting, from
        0 to the overall incremental conversions).

    Examples
    --------
    >>> qini_curve([1, 0, 1, 0], [1, 1, 0, 0], [0.9, 0.8, 0.1, 0.2]).incremental.tolist()
    [0.0, 1.0, 1.0, 1.0, 0.0]
    """
    y, t, s = _arrays(y, treatment, score)
    n = len(y)
    if n == 0:
        raise ParameterError("qini_curve needs at least one row")
    n_all, n_t, n_c, r_t, r_c, inc = _points(y, t, *_ranking(s))
    frame = pd.DataFrame({
        "fraction": np.r_[0.0, n_all / n],
        "n": np.r_[0.0, n_all],
        "n_treatment": np.r_[0.0, n_t],
        "n_control": np.r_[0.0, n_c],
        "conversions_treatment": np.r_[0.0, r_t],
        "conversions_control": np.r_[0.0, r_c],
        "incremental": np.r_[0.0, inc],
    })
    frame["random"] = frame["fraction"] * frame["incremental"].iloc[-1]
    return frame


def uplift_curve(y, treatment, score) -> pd.DataFrame:
    """The uplift curve (Rzepakowski & Jaroszewicz 2012): at each cut-off,
    ``(R_t/N_t - R_c/N_c) * n`` -- the observed uplift among the top
    customers times their number. Same shape as :func:`qini_curve`, with
    the value in ``uplift`` and the random line in ``random``."""
    q = qini_curve(y, treatment, score)
    rate_t = np.divide(q.conversions_treatment, q.n_treatment,
                       out=np.zeros(len(q)), where=q.n_treatment > 0)
    rate_c = np.divide(q.conversions_control, q.n_control,
                       out=np.zeros(len(q)), where=q.n_control > 0)
    out = q[["fraction", "n", "n_treatment", "n_control"]].copy()
    out["uplift"] = (rate_t - rate_c) * q.n
    out["random"] = out["fraction"] * out["uplift"].iloc[-1]
    return out


def _optimum_score(y: np.ndarray, t: np.ndarray) -> np.ndarray:
    return y * t - y * (~t)


def optimum_qini_curve(y, treatment) -> pd.DataFrame:
    """The best Qini curve any model could reach on these customers
    (Radcliffe 2007, "optimum Qini curve", negative effects allowed):
    treated converters first, then every non-converter, control converters
    last."""
    y, t = _arrays(y, treatment)
    return qini_curve(y, t, _optimum_score(y, t))


def _optimum_area(y: np.ndarray, t: np.ndarray) -> float:
    """The area of :func:`optimum_qini_curve` above random targeting.

    For 0/1 outcomes in closed form (the permutation test needs it hundreds
    of times): the optimum ranking has three tied groups -- ``a`` treated
    converters, ``m`` non-converters, ``b`` control converters -- so its
    curve runs through (0, 0), (a/n, a), ((a+m)/n, a) and (1, a - b T/C)
    (``T``, ``C``: treated and control customers), and the trapezoid rule
    on those points gives the area. Other outcomes: by sorting.
    """
    n = len(y)
    if n == 0:
        return 0.0
    if not np.all((y == 0) | (y == 1)):
        pts = _points(y, t, *_ranking(_optimum_score(y, t)))
        return _qini_area(n, pts[0], pts[-1])
    n_t = float(np.count_nonzero(t))
    n_c = n - n_t
    a = float(np.count_nonzero(y[t]))
    b = float(np.count_nonzero(y)) - a
    m = n - a - b
    end = a - (b * n_t / n_c if n_c > 0 else 0.0)
    area = (a / n) * a / 2.0 + (m / n) * a + (b / n) * (a + end) / 2.0
    return area - end / 2.0


def qini_coefficient(y, treatment, score, *, normalize: bool = True) -> float:
    """Radcliffe's (2007) Qini coefficient of a ranking.

    The area between the Qini curve and the diagonal of random targeting,
    both drawn against the share of customers targeted (trapezoid rule on
    the points of :func:`qini_curve`)::

        area = integral_0^1 (incremental(f) - f * incremental(1)) df

    With ``normalize=True`` (Radcliffe's Q) the area is divided by the same
    area for the optimum model (:func:`optimum_qini_curve`), so 1 is the
    best possible ranking, 0 is random targeting and below 0 is worse than
    random. With ``normalize=False`` the raw area is returned, in
    incremental conversions.

    Parameters
    ----------
    y, treatment, score : arrays as in :func:`qini_curve`
    normalize : bool

    Returns
    -------
    float

    Examples
    --------
    A hand-computed case (see tests): six customers, Q = 11/13.

    >>> round(qini_coefficient([1, 0, 1, 0, 0, 1], [1, 0, 1, 1, 0, 0],
    ...                        [.9, .8, .7, .6, .5, .4]), 6)
    0.846154
    """
    y, t, s = _arrays(y, treatment, score)
    if len(y) == 0:
        raise ParameterError("qini_coefficient needs at least one row")
    pts = _points(y, t, *_ranking(s))
    area = _qini_area(len(y), pts[0], pts[-1])
    if not normalize:
        return area
    best = _optimum_area(y, t)
    return float(area / best) if best > 0 else float("nan")


def qini_permutation_test(y, treatment, score, *, n_permutations: int = 200,
                          random_state=None) -> dict:
    """Does the ranking find customers who respond to the campaign, beyond
    chance? A randomisation test of the Qini coefficient.

    The ranking is kept and the treatment labels are shuffled (a re-run of
    the random assignment, as in Fisher's randomisation test): this breaks
    any link between the scores and who responds to the treatment while
    keeping the scores' link to who buys anyway. Shuffling the order
    instead compares with a random ranking, whose Qini curve is less
    variable than that of a score that sorts heavy buyers to the top, so it
    passes useless models a little too often (synthetic world, no effect,
    one held-out split, 60 cases: 15% below 0.10 when shuffling the order,
    8% when shuffling the labels). Use it on predictions for customers the
    model did not learn from. The p-value is
    ``(1 + #{null >= observed}) / (1 + n_permutations)``.

    Returns
    -------
    dict
        ``qini`` (observed, normalised), ``p_value``, ``null_mean``,
        ``null_95`` (the 95th percentile of the null), ``n_permutations``.
    """
    y, t, s = _arrays(y, treatment, score)
    rng = np.random.default_rng(random_state)
    n = len(y)
    observed = qini_coefficient(y, t, s)
    order, last = _ranking(s)
    null = np.empty(n_permutations)
    for i in range(n_permutations):
        tp = rng.permutation(t)
        best = _optimum_area(y, tp)
        pts = _points(y, tp, order, last)
        null[i] = _qini_area(n, pts[0], pts[-1]) / best if best > 0 else np.nan
    null = null[np.isfinite(null)]
    return {
        "qini": observed,
        "p_value": float((1 + np.sum(null >= observed)) / (1 + len(null))),
        "null_mean": float(np.mean(null)) if len(null) else float("nan"),
        "null_95": float(np.quantile(null, 0.95)) if len(null) else float("nan"),
        "n_permutations": int(n_permutations),
    }


def score_bins(score, n_bins: int = 10) -> np.ndarray:
    """Each row's bin of predicted uplift: ``n_bins`` equal-sized bins, bin 1
    the highest scores (ties broken by position, as in :func:`uplift_segments`).

    Examples
    --------
    >>> score_bins([0.1, 0.5, 0.3, 0.2], n_bins=2).tolist()
    [2, 1, 1, 2]
    """
    s = np.asarray(score, dtype=float)
    n = len(s)
    n_bins = max(1, min(int(n_bins), n))
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(-s, kind="mergesort")] = np.arange(n)
    return (rank * n_bins) // n + 1


def uplift_segments(y, treatment, score, *, n_bins: int = 10, alpha: float = 0.05,
                    adjust: bool = False, min_group_size: int = MIN_GROUP_SIZE,
                    verdicts: Mapping[str, str] = SEGMENT_VERDICTS) -> pd.DataFrame:
    """Where the campaign helps, does nothing or hurts: bins of predicted
    uplift with the observed uplift in each.

    Customers are cut into ``n_bins`` equal-sized bins by predicted uplift
    (bin 1 = highest predicted uplift; ties broken by order). In each bin
    the observed uplift is the treated minus the control conversion rate,
    with Newcombe's hybrid score interval (1998, method 10). The verdict is
    ``"helps"`` when the interval lies above zero, ``"hurts"`` when below,
    else ``"no clear effect"``. With ``adjust=True`` each interval has level
    ``1 - alpha / n_bins`` (Bonferroni), so that across all the bins the
    chance of any verdict other than "no clear effect" arising by chance is
    at most ``alpha``; without it, one bin in twenty gets a verdict by chance
    when the campaign does nothing. Bins with fewer than ``min_group_size``
    customers in either group get no rates (privacy rule of the report
    pages) and the verdict ``"no clear effect"``. ``verdicts`` maps the
    three verdicts, in the order helps / no clear effect / hurts, to their
    explanations; its keys are the labels used.

    Returns
    -------
    pandas.DataFrame
        One row per bin: ``bin, predicted_uplift (mean), n_treatment,
        n_control, conversion_treatment, conversion_control,
        observed_uplift, ci_low, ci_high, verdict``.
    """
    y, t, s = _arrays(y, treatment, score)
    b = score_bins(s, n_bins)
    df = pd.DataFrame({"bin": b, "s": s, "t": t, "y": y})
    g = df.groupby("bin")
    out = pd.DataFrame({
        "predicted_uplift": g["s"].mean(),
        "n_treatment": g["t"].sum().astype(int),
        "n_control": (g["t"].count() - g["t"].sum()).astype(int),
        "x_t": df[df.t].groupby("bin")["y"].sum(),
        "x_c": df[~df.t].groupby("bin")["y"].sum(),
    }).fillna({"x_t": 0, "x_c": 0}).reset_index()
    ok = (out.n_treatment >= min_group_size) & (out.n_control >= min_group_size)
    nt, nc = out.n_treatment.to_numpy(float), out.n_control.to_numpy(float)
    xt, xc = out.x_t.to_numpy(float), out.x_c.to_numpy(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        pt, pc = xt / nt, xc / nc
    low = np.full(len(out), np.nan)
    high = np.full(len(out), np.nan)
    if ok.any():
        level = alpha / len(out) if adjust else alpha
        lo, hi = confint_proportions_2indep(xt[ok], nt[ok], xc[ok], nc[ok],
                                            method="newcomb", compare="diff", alpha=level)
        low[ok.to_numpy()], high[ok.to_numpy()] = lo, hi
    out["conversion_treatment"] = np.where(ok, pt, np.nan)
    out["conversion_control"] = np.where(ok, pc, np.nan)
    out["observed_uplift"] = np.where(ok, pt - pc, np.nan)
    out["ci_low"], out["ci_high"] = low, high
    names = list(verdicts)
    out["verdict"] = np.select([low > 0, high < 0], [names[0], names[2]], default=names[1])
    return out.drop(columns=["x_t", "x_c"])
