"""Probabilistic repeat-purchase and spend models, and customer lifetime value.

The "buy till you die" (BTYD) family describes a customer base with no
contract: customers buy at their own rate while "alive" and leave unseen.
Three models, each fitted by maximum likelihood on numpy/scipy:

* :class:`BetaGeoModel` -- BG/NBD (Fader, Hardie & Lee 2005, "Counting your
  customers the easy way: an alternative to the Pareto/NBD model",
  Marketing Science 24(2), 275-284).
* :class:`ParetoNBDModel` -- Pareto/NBD (Schmittlein, Morrison & Colombo 1987,
  "Counting your customers: who are they and what will they do next?",
  Management Science 33(1), 1-24), in the form derived by Fader & Hardie
  (2005), "A note on deriving the Pareto/NBD model and related
  expressions" (brucehardie.com/notes/009).
* :class:`GammaGammaModel` -- the spend model of Fader, Hardie & Lee (2005),
  "RFM and CLV: using iso-value curves for customer base analysis", Journal
  of Marketing Research 42(4), 415-430.

All three take the per-customer summary of :func:`transaction_summary`
(``frequency`` = repeat purchase days, ``recency`` = time of the last
repeat purchase since the first, ``T`` = time since the first purchase,
``monetary`` = mean value of the repeat purchases). Same-day purchases are
one transaction, as in the literature.

Speed. Customers with identical summaries contribute identical likelihood
terms, so each model first groups the input into distinct rows with
weights, and evaluates every special function (log-gamma, digamma, the
Gaussian hypergeometric function) only once per distinct ``x``, ``T`` or
(``x``, ``T``) pair; per-row work is a handful of vectorised array
operations. The BG/NBD and Gamma-Gamma log-likelihoods have analytic
gradients; the optimiser is L-BFGS-B on log-parameters.

Examples
--------
>>> import numpy as np
>>> from crmlab.clv import BetaGeoModel
>>> m = BetaGeoModel().fit(np.array([2, 1, 0, 0, 5]), np.array([30.4, 1.7, 0, 0, 35.0]),
...                        np.array([38.9, 38.9, 38.9, 38.9, 38.9]))
>>> sorted(m.params_)
['a', 'alpha', 'b', 'r']
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import betaln, digamma, expit, gammaln, hyp2f1
from threadpoolctl import threadpool_limits

from crmlab import engine
from crmlab.exceptions import DataContractError, NoDataError, ParameterError

#: days per unit of ``time_unit``
TIME_UNITS: dict[str, float] = {"D": 1.0, "W": 7.0, "M": 365.25 / 12}

#: the length of one discounting period (a month) in days
MONTH_DAYS = 365.25 / 12

#: the columns of the customer-day table (:func:`customer_days`)
DAY_COLUMNS: tuple[str, ...] = ("customer_id", "day", "amount", "n_orders", "first_day")

#: the share of the observed window kept as holdout by default
HOLDOUT_SHARE = 0.25

_LOG_BOUNDS = (-25.0, 25.0)

#: how far (in log units) the count models' parameters may go: shapes within
#: exp(+-8), time scales (alpha, beta) within exp(+-8) of the mean time with
#: us. Beyond that a likelihood only flattens towards a limit (no spread in
#: purchase rates, no dropout) that the data cannot tell apart, while the
#: Pareto/NBD's hypergeometric terms get ~100x dearer per evaluation: an
#: unbounded chase took 30 s on 288 customers and never converged.
_COUNT_LOG_RANGE = 8.0


def _blas_single_thread(func):
    """Run ``func`` with one BLAS thread. The likelihoods are memory-bound
    vector operations; OpenBLAS threads only add synchronisation, and on a
    machine shared with other runs they make a fit 10-30x slower (measured:
    2.9 s against 0.1 s for a 20,000-customer BG/NBD fit on a loaded host)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with threadpool_limits(limits=1, user_api="blas"):
            return func(*args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------
# the summary (engine-side)
# --------------------------------------------------------------------------

def _as_date(value) -> dt.date | None:
    if value in (None, ""):
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, pd.Timestamp):
        return value.date()
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        raise ParameterError(f"not a date (YYYY-MM-DD): {str(value)[:40]!r}") from None


def _time_unit(time_unit: str) -> float:
    try:
        return TIME_UNITS[time_unit]
    except KeyError:
        raise ParameterError(f"time_unit must be one of {sorted(TIME_UNITS)}, got {time_unit!r}") from None


def _ibis_table(orders):
    """Accept an ibis table, or a pandas frame (wrapped as an in-memory table)."""
    if isinstance(orders, pd.DataFrame):
        import ibis

        return ibis.memtable(orders)
    return orders


def is_day_table(table) -> bool:
    """Whether a table is already the customer-day table of :func:`customer_days`."""
    return set(getattr(table, "columns", ())) == set(DAY_COLUMNS)


def customer_days(orders, *, as_of=None, customers=None, customer_id_col: str = "customer_id",
                  date_col: str = "order_date", amount_col: str = "amount"):
    """Orders to one row per customer and purchase day (engine-side).

    Transforms ``customer_id, order_date, amount`` (one row per order) into
    ``customer_id, day, amount, n_orders, first_day`` -- one row per
    customer per day with a purchase (same-day orders are one transaction),
    ``amount`` summed and ``n_orders`` counted over the day, ``first_day``
    the customer's first purchase day. Only purchases count
    (:func:`crmlab.engine.purchases`: refunded and cancelled orders are
    not); orders after ``as_of`` are ignored.

    A table that already is a customer-day table (the columns of
    :data:`DAY_COLUMNS`, e.g. one made once and cached in the engine with
    ``customer_days(orders).cache()``) is passed through, filtered to
    ``as_of``: every function of this module and of :mod:`crmlab.lifecycle`
    that takes ``orders`` accepts it, so a report scans the orders once.
    (``first_day`` stays right under the filter: a customer's first day is
    on or before any of their days.)

    Parameters
    ----------
    orders : ibis.Table or pandas.DataFrame
    as_of : str | date | None
    customers : ibis.Table, optional
        A table with a ``customer_id`` column: only these customers' days
        are kept (applied to the per-customer part, not to every order).

    Returns
    -------
    ibis.Table
    """
    if is_day_table(orders):
        t, cutoff = _ibis_table(orders), _as_date(as_of)
        t = t if customers is None else t.semi_join(customers.select("customer_id"), "customer_id")
        return t if cutoff is None else t.filter(t.day <= cutoff)
    t = engine.purchases(_ibis_table(orders))
    day = t[date_col].date() if t[date_col].type().is_timestamp() else t[date_col].cast("date")
    t = t.mutate(_day=day)
    cutoff = _as_date(as_of)
    if cutoff is not None:
        t = t.filter(t._day <= cutoff)
    daily = t.group_by([t[customer_id_col].name("customer_id"), t._day.name("day")]).aggregate(
        amount=t[amount_col].sum(), n_orders=t[amount_col].count())
    # each customer's first day from a second, cheap aggregate joined back: at 20M orders
    # this is about twice as fast as a window over the customer-day rows (no sort)
    first = t.group_by(t[customer_id_col].name("customer_id")).aggregate(first_day=t._day.min())
    if customers is not None:  # on a million customers, not on twenty million orders
        first = first.semi_join(customers.select("customer_id"), "customer_id")
    return daily.inner_join(first, "customer_id").select(*DAY_COLUMNS)


def observed_window(orders, *, date_col: str = "order_date") -> tuple[dt.date, dt.date]:
    """The first and last order dates (one small query); of a customer-day
    table, the first and last purchase days."""
    t = _ibis_table(orders)
    days = is_day_table(t)
    if days:
        date_col = "day"
    res = t.aggregate(lo=t[date_col].min(), hi=t[date_col].max()).to_pandas()
    lo, hi = res["lo"].iloc[0], res["hi"].iloc[0]
    if pd.isna(lo):
        raise NoDataError("table orders has no purchases (orders that are not refunded or cancelled) "
                          "with an order_date" if days else "table orders has no rows with an order_date")
    return _as_date(lo), _as_date(hi)


def snapshot_of(orders, as_of=None, *, date_col: str = "order_date") -> dt.date:
    """The snapshot date (:func:`crmlab.engine.snapshot_date`: ``as_of`` when
    given, else the newest order) of an orders table or pandas frame; of a
    customer-day table, its newest purchase day."""
    t = _ibis_table(orders)
    return engine.snapshot_date(t, as_of, date_col="day" if is_day_table(t) else date_col)


def default_calibration_end(start, end, *, holdout_share: float = HOLDOUT_SHARE) -> dt.date:
    """The calibration end that keeps the last ``holdout_share`` of the
    window ``[start, end]`` as holdout (default: the last quarter)."""
    start, end = _as_date(start), _as_date(end)
    days = (end - start).days
    return end - dt.timedelta(days=int(round(days * holdout_share)))


def transaction_summary(orders, *, calibration_end=None, observation_end=None,
                        time_unit: str = "D", customer_id_col: str = "customer_id",
                        date_col: str = "order_date", amount_col: str = "amount") -> pd.DataFrame:
    """Orders to the per-customer BTYD summary, aggregated in the engine.

    Transforms ``customer_id, order_date, amount`` (one row per order) into
    one row per customer whose first purchase is on or before
    ``calibration_end``::

        customer_id
        frequency       repeat purchase days in the calibration period (x)
        recency         first to last purchase day in the calibration period (t_x)
        T               first purchase day to calibration_end (T)
        monetary        mean amount per repeat purchase day in calibration
                        (0 when frequency is 0; the Gamma-Gamma input)
        first_purchase, last_purchase   timestamps of the days (calibration period)
        revenue         calibration-period amount, first day included
        frequency_holdout  purchase days after calibration_end up to
                        observation_end (only when observation_end is later)
        revenue_holdout    their amount

    Times are in ``time_unit`` (``D`` days, ``W`` weeks, ``M`` months of
    365.25/12 days); purchase days are whole days, so same-day orders count
    once. Refunded and cancelled orders are not purchases.

    Parameters
    ----------
    orders : ibis.Table or pandas.DataFrame
    calibration_end : str | date | None
        End of the calibration period (inclusive). ``None``: observation_end.
    observation_end : str | date | None
        End of the observed data (inclusive). ``None``: the newest order
        (or calibration_end, if that is later).
    time_unit : {"D", "W", "M"}

    Returns
    -------
    pandas.DataFrame

    Examples
    --------
    >>> import pandas as pd
    >>> orders = pd.DataFrame({"customer_id": [1, 1, 1, 2],
    ...     "order_date": pd.to_datetime(["2024-01-01", "2024-01-01", "2024-01-15", "2024-01-10"]),
    ...     "amount": [10.0, 5.0, 20.0, 7.0]})
    >>> s = transaction_summary(orders, calibration_end="2024-01-31")
    >>> s[["frequency", "recency", "T", "monetary"]].to_dict("list")
    {'frequency': [1, 0], 'recency': [14.0, 0.0], 'T': [30.0, 21.0], 'monetary': [20.0, 0.0]}
    """
    unit = _time_unit(time_unit)
    t = _ibis_table(orders)
    if observation_end in (None, ""):
        observation_end = snapshot_of(t, date_col=date_col)
        if calibration_end not in (None, ""):
            observation_end = max(observation_end, _as_date(calibration_end))
    obs_end = _as_date(observation_end)
    cal_end = _as_date(calibration_end) or obs_end
    if cal_end > obs_end:
        raise ParameterError("calibration_end is after the end of the observed data")
    d = customer_days(t, as_of=obs_end, customer_id_col=customer_id_col, date_col=date_col,
                      amount_col=amount_col)
    d = d.filter(d.first_day <= cal_end)
    in_cal = d.day <= cal_end
    off = d.day.delta(d.first_day, unit="day")
    agg = d.group_by("customer_id").aggregate(
        first_purchase=d.first_day.min(),
        n_cal=in_cal.sum(),
        recency_days=off.max(where=in_cal),
        revenue=d.amount.sum(where=in_cal),
        repeat_revenue=d.amount.sum(where=in_cal & (d.day != d.first_day)),
        frequency_holdout=(~in_cal).sum(),
        revenue_holdout=d.amount.sum(where=~in_cal),
    )
    agg = agg.mutate(T_days=ibis_date(cal_end).delta(agg.first_purchase, unit="day"))
    df = agg.to_pandas()
    df = df.sort_values("customer_id", kind="stable").reset_index(drop=True)
    freq = df["n_cal"].astype("int64") - 1
    out = pd.DataFrame({
        "customer_id": df["customer_id"].to_numpy(),
        "frequency": freq.to_numpy(),
        "recency": df["recency_days"].astype("float64").to_numpy() / unit,
        "T": df["T_days"].astype("float64").to_numpy() / unit,
        "monetary": np.where(freq > 0, df["repeat_revenue"].fillna(0.0).to_numpy()
                             / np.maximum(freq, 1), 0.0),
    })
    first = pd.to_datetime(df["first_purchase"]).to_numpy()
    out["first_purchase"] = first
    out["last_purchase"] = first + pd.to_timedelta(df["recency_days"].to_numpy(), unit="D").to_numpy()
    out["revenue"] = df["revenue"].fillna(0.0).to_numpy()
    if obs_end > cal_end:
        out["frequency_holdout"] = df["frequency_holdout"].astype("int64").to_numpy()
        out["revenue_holdout"] = df["revenue_holdout"].fillna(0.0).to_numpy()
    out.attrs.update(calibration_end=cal_end, observation_end=obs_end, time_unit=time_unit,
                     holdout_length=(obs_end - cal_end).days / unit)
    return out


def ibis_date(value: dt.date):
    """A date as an ibis date literal."""
    import ibis

    return ibis.literal(value, type="date")


# --------------------------------------------------------------------------
# grouping identical summaries
# --------------------------------------------------------------------------

def _check_summary(frequency, recency, T, weights=None):
    x = np.asarray(frequency, dtype="float64").ravel()
    tx = np.asarray(recency, dtype="float64").ravel()
    TT = np.asarray(T, dtype="float64").ravel()
    if not (len(x) == len(tx) == len(TT)):
        raise ParameterError("frequency, recency and T must have the same length")
    if len(x) == 0:
        raise NoDataError("no customers to fit")
    for name, v in (("frequency", x), ("recency", tx), ("T", TT)):
        if not np.isfinite(v).all() or (v < 0).any():
            raise DataContractError("values must be finite and non-negative", table="summary",
                                    column=name, check="non_negative")
    if (np.floor(x) != x).any():
        raise DataContractError("frequency must be whole numbers", table="summary",
                                column="frequency", check="integer")
    if (tx > TT * (1 + 1e-12) + 1e-12).any():
        raise DataContractError("recency is larger than T", table="summary", column="recency",
                                check="recency_le_T")
    tx = np.where(x == 0, 0.0, np.minimum(tx, TT))
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype="float64").ravel()
    if len(w) != len(x) or (w < 0).any() or not np.isfinite(w).all():
        raise ParameterError("weights must be finite, non-negative and one per customer")
    return x, tx, TT, w


@dataclass
class _Groups:
    """Distinct (x, t_x, T) rows with weights, and per-column distinct values.

    ``xu[xi]`` is the frequency of each group, likewise ``tu[ti]``,
    ``Tu[Ti]``; ``inverse`` maps each input row to its group.
    """

    w: np.ndarray
    xu: np.ndarray
    xi: np.ndarray
    tu: np.ndarray
    ti: np.ndarray
    Tu: np.ndarray
    Ti: np.ndarray
    inverse: np.ndarray
    wx: np.ndarray  # total weight per distinct x

    @property
    def n(self) -> int:
        return len(self.w)

    @classmethod
    def build(cls, x, tx, T, w) -> "_Groups":
        cx, ux = pd.factorize(x)
        ct, ut = pd.factorize(tx)
        cT, uT = pd.factorize(T)
        key = (cx.astype(np.int64) * len(ut) + ct) * len(uT) + cT
        ck, uk = pd.factorize(key)
        weights = np.bincount(ck, weights=w, minlength=len(uk))
        Ti = (uk % len(uT)).astype(np.intp)
        rest = uk // len(uT)
        ti = (rest % len(ut)).astype(np.intp)
        xi = (rest // len(ut)).astype(np.intp)
        keep = weights > 0
        if not keep.all():  # rows with zero weight drop out
            remap = np.cumsum(keep) - 1
            ck = remap[ck]
            weights, xi, ti, Ti = weights[keep], xi[keep], ti[keep], Ti[keep]
        wx = np.bincount(xi, weights=weights, minlength=len(ux))
        return cls(w=weights, xu=np.asarray(ux, dtype="float64"), xi=xi,
                   tu=np.asarray(ut, dtype="float64"), ti=ti,
                   Tu=np.asarray(uT, dtype="float64"), Ti=Ti, inverse=ck, wx=wx)

    def values(self):
        return self.xu[self.xi], self.tu[self.ti], self.Tu[self.Ti]


def _pairs(a: np.ndarray, b: np.ndarray):
    """Distinct (a, b) pairs: returns (a_unique_pairs, b_unique_pairs, inverse)."""
    ca, ua = pd.factorize(np.asarray(a).ravel())
    cb, ub = pd.factorize(np.asarray(b).ravel())
    key = ca.astype(np.int64) * len(ub) + cb
    ck, uk = pd.factorize(key)
    return np.asarray(ua)[uk // len(ub)], np.asarray(ub)[uk % len(ub)], ck


def _minimize(fun, theta0, *, max_iter: int, tol: float, bounds=None):
    res = minimize(fun, np.asarray(theta0, dtype="float64"), jac=True, method="L-BFGS-B",
                   bounds=bounds or [_LOG_BOUNDS] * len(theta0),
                   options={"maxiter": max_iter, "ftol": tol, "gtol": tol * 1e2, "maxcor": 20})
    return res


def _at_bound(theta, bounds) -> bool:
    return any(min(t - lo, hi - t) < 1e-6 for t, (lo, hi) in zip(theta, bounds))


def _log1mexp(d):
    """log(1 - exp(d)) for d <= 0, accurate near 0 and for very negative d."""
    d = np.minimum(d, 0.0)
    with np.errstate(divide="ignore"):
        return np.where(d > -0.693, np.log(-np.expm1(d)), np.log1p(-np.exp(d)))


class _CountModel:
    """Shared plumbing of the two transaction-count models."""

    _names: tuple[str, ...] = ()
    _time_scales: tuple[str, ...] = ("alpha",)  # parameters in the unit of T

    def __init__(self, *, max_iter: int = 1000, tol: float = 1e-12):
        self.max_iter = max_iter
        self.tol = tol

    def _theta(self):
        return np.log([self.params_[k] for k in self._names])

    def _start(self, g: _Groups) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def _bounds(self, g: _Groups) -> list[tuple[float, float]]:
        """Log-parameter bounds (see :data:`_COUNT_LOG_RANGE`)."""
        centre = math.log(max(float(np.dot(g.w, g.Tu[g.Ti]) / g.w.sum()), 1e-9))
        return [(centre - _COUNT_LOG_RANGE, centre + _COUNT_LOG_RANGE) if k in self._time_scales
                else (-_COUNT_LOG_RANGE, _COUNT_LOG_RANGE) for k in self._names]

    def _nll(self, theta, g: _Groups):  # pragma: no cover - overridden
        raise NotImplementedError

    @_blas_single_thread
    def fit(self, frequency, recency, T, weights=None):
        """Fit by maximum likelihood.

        Parameters
        ----------
        frequency, recency, T : array-like, one value per customer
            Repeat purchases, time of the last repeat purchase and time
            since the first purchase, as in :func:`transaction_summary`.
        weights : array-like, optional
            How many customers each row stands for (default 1 each).

        Returns
        -------
        self
            With ``params_`` (dict), ``loglik_`` (total log-likelihood),
            ``n_customers_``, ``n_groups_`` (distinct summaries), ``n_iter_``,
            ``converged_`` and ``at_bound_`` (some parameter stopped at its
            bound: the data do not pin it down, see :data:`_COUNT_LOG_RANGE`).
        """
        x, tx, T, w = _check_summary(frequency, recency, T, weights)
        g = _Groups.build(x, tx, T, w)
        total = g.w.sum()

        def fun(theta):
            ll, grad = self._nll(theta, g)
            return -ll / total, -grad / total

        bounds = self._bounds(g)
        start = np.clip(self._start(g), [lo for lo, _ in bounds], [hi for _, hi in bounds])
        res = _minimize(fun, start, max_iter=self.max_iter, tol=self.tol, bounds=bounds)
        self.params_ = dict(zip(self._names, (float(v) for v in np.exp(res.x))))
        self.at_bound_ = _at_bound(res.x, bounds)
        self.loglik_ = float(-res.fun * total)
        self.n_customers_ = float(total)
        self.n_groups_ = int(g.n)
        self.n_iter_ = int(res.nit)
        self.converged_ = bool(res.success)
        return self

    def loglik(self, frequency, recency, T, weights=None, *, params: dict | None = None) -> float:
        """The total log-likelihood of a summary at ``params`` (default: the fitted ones)."""
        x, tx, T, w = _check_summary(frequency, recency, T, weights)
        g = _Groups.build(x, tx, T, w)
        p = params if params is not None else self.params_
        return float(self._nll(np.log([p[k] for k in self._names]), g)[0])

    def loglik_gradient(self, frequency, recency, T, weights=None, *,
                        params: dict | None = None) -> np.ndarray:
        """The gradient of the total log-likelihood with respect to the
        log-parameters (in ``_names`` order), as the optimiser uses it."""
        x, tx, T, w = _check_summary(frequency, recency, T, weights)
        g = _Groups.build(x, tx, T, w)
        p = params if params is not None else self.params_
        return self._nll(np.log([p[k] for k in self._names]), g)[1]

    def _require_fit(self):
        if not hasattr(self, "params_"):
            raise ParameterError(f"{type(self).__name__} is not fitted yet: call fit() first")


# --------------------------------------------------------------------------
# BG/NBD
# --------------------------------------------------------------------------

def _beta_nodes(a: float, b: float, n: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Jacobi nodes on [0, 1] and weights summing to one for the
    Beta(a, b) density (Golub-Welsch; scipy's ``roots_jacobi`` overflows
    its weight normalisation for large a + b)."""
    from scipy.linalg import eigh_tridiagonal

    al, be = b - 1.0, a - 1.0  # Jacobi weight (1-u)^al (1+u)^be on [-1, 1], u = 2p - 1
    k = np.arange(n, dtype=float)
    s = 2 * k + al + be
    with np.errstate(divide="ignore", invalid="ignore"):
        diag = (be ** 2 - al ** 2) / (s * (s + 2))
    diag[0] = (be - al) / (al + be + 2)
    j = k[:-1] + 1
    s1 = 2 * j + al + be
    off = np.sqrt(4 * j * (j + al) * (j + be) * (j + al + be) / ((s1 - 1) * s1 ** 2 * (s1 + 1)))
    u, vec = eigh_tridiagonal(diag, off)
    w = vec[0] ** 2
    return (u + 1) / 2, w / w.sum()


def _bg_core_quadrature(r, alpha, a, b, x, T, t):
    """The BG/NBD core as the expectation it is: given alive at T, lambda ~
    Gamma(r+x, alpha+T) and p ~ Beta(a, b+x), E[Y(t)] / P(alive) =
    E_p[(1 - (1 + p t/(alpha+T))^-(r+x)) / p], by Gauss-Jacobi quadrature in p
    -- the fallback where scipy's hyp2f1 is unreliable (large a, b or x)."""
    out = np.empty(len(x))
    k = t / (alpha + T)
    for xv in np.unique(x):
        rows = x == xv
        # a < 1 puts much weight near p = 0, where g varies on the scale 1/k: more nodes
        p, w = _beta_nodes(a, b + xv, 200 if a >= 1 else 800)
        kk = k[rows][:, None]
        out[rows] = (-np.expm1(-(r + xv) * np.log1p(p[None, :] * kk)) / p[None, :]) @ w
    return out


def _bg_core(r, alpha, a, b, x, T, t):
    """(a+b+x-1)/(a-1) * [1 - ((alpha+T)/(alpha+T+t))^(r+x) 2F1(r+x, b+x; a+b+x-1; z)],
    z = t/(alpha+T+t): the bracket of FHL (2005) eq. (10) (and, with x = T = 0,
    eq. (9)), i.e. E[Y(t) | x, t_x, T] / P(alive).

    Two closed forms cover different regions: the raw one, whose series
    converges at z = 1 when a - 1 - r - x > 0 (large a), and the one after
    Euler's transformation 2F1(A, B; C; z) = (1-z)^(C-A-B) 2F1(C-A, C-B; C; z),
    i.e. (1-z)^(a-1) 2F1(a+b-1-r, a-1; a+b+x-1; z), bounded for large x
    (the "#NUM!" problem of Fader & Hardie's note 027). Both are evaluated
    and checked against the bounds 1 - (1+k)^-(r+x) <= core <= (r+x) k,
    k = t/(alpha+T) (p = 1 and p -> 0). Where both pass they must agree
    (they do to ~1e-9 over realistic parameters); where only one passes it
    is used; where none passes, or the two disagree (scipy's hyp2f1 can be
    silently wrong for parameters in the hundreds), the expectation is
    integrated over p by Gauss-Jacobi quadrature.
    """
    if abs(a - 1.0) < 1e-4:  # removable singularity at a = 1: average both sides
        h = 2e-4
        return 0.5 * (_bg_core(r, alpha, 1 - h, b, x, T, t) + _bg_core(r, alpha, 1 + h, b, x, T, t))
    x, T, t = np.broadcast_arrays(np.asarray(x, float), np.asarray(T, float), np.asarray(t, float))
    shape = x.shape
    x, T, t = x.ravel(), T.ravel(), t.ravel()
    n, k = r + x, t / (alpha + T)
    z = t / (alpha + T + t)
    coef = (a + b + x - 1) / (a - 1)
    with np.errstate(all="ignore"):
        F = hyp2f1(a + b - 1 - r, a - 1, a + b + x - 1, z)
        euler = coef * (-(F - 1.0) - np.expm1((a - 1) * np.log1p(-z)) * F)
        raw = coef * -np.expm1(n * np.log1p(-z) + np.log(hyp2f1(n, b + x, a + b + x - 1, z)))
        lo, hi = -np.expm1(-n * np.log1p(k)), n * k
        ok_e = np.isfinite(euler) & (euler >= lo * (1 - 1e-9) - 1e-300) & (euler <= hi * (1 + 1e-9))
        ok_r = np.isfinite(raw) & (raw >= lo * (1 - 1e-9) - 1e-300) & (raw <= hi * (1 + 1e-9))
        agree = np.abs(euler - raw) <= 1e-7 * np.abs(raw)
    out = np.where(ok_e, euler, raw)
    todo = ~(ok_e | ok_r) | (ok_e & ok_r & ~agree)
    if todo.any():
        out[todo] = _bg_core_quadrature(r, alpha, a, b, x[todo], T[todo], t[todo])
    return np.where(t > 0, out, 0.0).reshape(shape)


def _core_pairs(model, frequency, T, times):
    """The model's E[Y(t)|...] / P(alive), which depends on (x, T, t) only,
    for each distinct (x, T) pair: returns (core of shape (n_pairs, k), inverse)."""
    px, pT, inv = _pairs(np.asarray(frequency, float).ravel(), np.asarray(T, float).ravel())
    tt = np.asarray(times, float).reshape(1, -1)
    return model._core(px[:, None], pT[:, None], tt), inv


@_blas_single_thread
def _expected(model, t, frequency, recency, T):
    core, inv = _core_pairs(model, frequency, T, t)
    out = core[inv] * model.p_alive(frequency, recency, T).ravel()[:, None]
    return out[:, 0] if np.ndim(t) == 0 else out


class BetaGeoModel(_CountModel):
    """BG/NBD model of repeat purchases (Fader, Hardie & Lee 2005).

    While alive a customer buys as a Poisson process with rate
    lambda ~ Gamma(r, alpha); after each repeat purchase they drop out with
    probability p ~ Beta(a, b). The log-likelihood of a customer with
    summary (x, t_x, T) is FHL (2005) eq. (6)::

        L = B(a, b+x)/B(a, b) * G(r+x) alpha^r / (G(r) (alpha+T)^(r+x))
            + [x > 0] B(a+1, b+x-1)/B(a, b) * G(r+x) alpha^r / (G(r) (alpha+t_x)^(r+x))

    evaluated in logs (log-sum-exp of the two terms) with its analytic
    gradient; the total over customers (eq. (7)) is maximised with L-BFGS-B
    on log(r, alpha, a, b). Identical summaries are grouped with weights.

    Parameters
    ----------
    max_iter : int
        Optimiser iterations.
    tol : float
        Relative tolerance on the mean log-likelihood.

    Attributes
    ----------
    params_ : dict
        ``r``, ``alpha`` (in the summary's time unit), ``a``, ``b``.
    loglik_ : float
        Total log-likelihood at the estimate.

    Examples
    --------
    On the CDNOW sample FHL (2005) report r = 0.243, alpha = 4.414,
    a = 0.793, b = 2.426 and LL = -9582.4 (tests/test_clv.py reproduces
    them).
    """

    _names = ("r", "alpha", "a", "b")

    def _start(self, g: _Groups) -> np.ndarray:
        x, tx, T = g.values()
        rate = max(np.dot(g.w, x), 1.0) / max(np.dot(g.w, T), 1e-9)
        return np.log([1.0, 1.0 / rate, 1.0, 3.0])

    def _nll(self, theta, g: _Groups):
        r, al, a, b = np.exp(theta)
        xu = g.xu
        pos = xu > 0
        rx = r + xu
        lbab = betaln(a, b)
        lgx = gammaln(rx) - gammaln(r) + r * np.log(al)
        l1x = betaln(a, b + xu) - lbab
        l2x = np.full_like(xu, -np.inf)
        l2x[pos] = betaln(a + 1, b + xu[pos] - 1) - lbab
        lT, lt = np.log(al + g.Tu), np.log(al + g.tu)
        iT, it = 1.0 / (al + g.Tu), 1.0 / (al + g.tu)

        rxg = rx[g.xi]
        lTg, ltg = lT[g.Ti], lt[g.ti]
        l1 = l1x[g.xi] - rxg * lTg
        l2 = l2x[g.xi] - rxg * ltg
        m = np.maximum(l1, l2)
        lse = m + np.log1p(np.exp(-np.abs(l1 - l2)))
        ll = float(np.dot(g.wx, lgx) + np.dot(g.w, lse))
        w2 = np.exp(l2 - lse) * g.w  # weight x posterior share of the second term
        w1 = g.w - w2

        d_r = np.dot(g.wx, digamma(rx) - digamma(r) + np.log(al)) - np.dot(w1, lTg) - np.dot(w2, ltg)
        d_al = g.wx.sum() * r / al - np.dot(w1 * rxg, iT[g.Ti]) - np.dot(w2 * rxg, it[g.ti])
        dab = digamma(a + b) - digamma(a + b + xu)
        sw2x = np.bincount(g.xi, weights=w2, minlength=len(xu))
        d_a = np.dot(g.wx, dab) + sw2x.sum() / a
        inv_b = np.zeros_like(xu)
        inv_b[pos] = 1.0 / (b + xu[pos] - 1)
        d_b = np.dot(g.wx, dab - digamma(b) + digamma(b + xu)) - np.dot(sw2x, inv_b)
        grad = np.array([d_r * r, d_al * al, d_a * a, d_b * b])
        return ll, grad

    def p_alive(self, frequency, recency, T) -> np.ndarray:
        """P(alive | x, t_x, T) = 1 / (1 + [x > 0] a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x))
        (Fader, Hardie & Lee 2008, "Computing P(alive) using the BG/NBD model").
        Customers without repeat purchases are alive with probability 1 under
        BG/NBD (dropout happens only right after a purchase)."""
        self._require_fit()
        r, al, a, b = (self.params_[k] for k in self._names)
        x = np.asarray(frequency, float)
        tx, T = np.asarray(recency, float), np.asarray(T, float)
        with np.errstate(divide="ignore", invalid="ignore"):
            lk = (np.log(a) - np.log(np.maximum(b + x - 1, 1e-300))
                  + (r + x) * (np.log(al + T) - np.log(al + tx)))
        return np.where(x > 0, expit(-lk), 1.0)

    def _core(self, x, T, t):
        r, al, a, b = (self.params_[k] for k in self._names)
        return _bg_core(r, al, a, b, x, T, t)

    def expected_purchases(self, t, frequency, recency, T) -> np.ndarray:
        """Expected repeat purchases in the next ``t`` time units given the
        history, E[Y(t) | x, t_x, T] (FHL 2005 eq. (10)).

        ``t`` is a scalar or an array broadcastable against a trailing axis
        (shape ``(k,)`` gives ``(n_customers, k)``). The hypergeometric part
        is computed once per distinct (x, T) pair.

        Returns
        -------
        numpy.ndarray
        """
        self._require_fit()
        return _expected(self, t, frequency, recency, T)

    def expected_purchases_new(self, t) -> np.ndarray:
        """Expected repeat purchases of a new customer in (0, t], E[X(t)]
        (FHL 2005 eq. (9)); the curve behind the tracking plot."""
        self._require_fit()
        t = np.asarray(t, float)
        return self._core(np.zeros_like(t), np.zeros_like(t), t)


# --------------------------------------------------------------------------
# Pareto/NBD
# --------------------------------------------------------------------------

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(24)


def _log_tail_integral(p, q, al, be, u):
    """log J(u), J(u) = integral from u to infinity of (al+tau)^-p (be+tau)^-q dtau,
    by Gauss-Legendre quadrature -- the fallback where scipy's hyp2f1 fails
    (large parameters with z close to 1, or integer parameters).

    With m = min(al, be), K = m + u and tau = K e^y - m the integrand becomes
    exp(phi(y)) with phi concave (slope -(p-1) near y = 0, -(p+q-1) far out),
    integrated over [0, Y] on 40 geometrically graded intervals so that both
    sharp peaks at 0 (large p) and slow tails (small p+q-1) are resolved.
    """
    p, q, u = np.broadcast_arrays(np.asarray(p, float), np.asarray(q, float), np.asarray(u, float))
    m = min(al, be)
    K = m + u
    decay = np.maximum(p + q - 1, 1e-3)
    Y = np.log((max(al, be) + u) / K) + 80.0 / decay + 1.0
    k = np.arange(40, -1, -1)
    edges = np.concatenate([np.zeros(p.shape + (1,)), Y[..., None] * 2.0 ** -k[None, :]], axis=-1)
    lo, hi = edges[..., :-1], edges[..., 1:]
    half = (hi - lo) / 2
    y = (lo + half)[..., None] + half[..., None] * _GL_NODES
    Ke = K[..., None, None] * np.exp(y)
    phi = (-p[..., None, None] * np.log(Ke + (al - m)) - q[..., None, None] * np.log(Ke + (be - m))
           + np.log(Ke))
    logw = np.log(half)[..., None] + np.log(_GL_WEIGHTS)
    flat = (phi + logw).reshape(p.shape + (-1,))
    top = flat.max(axis=-1)
    return top + np.log(np.exp(flat - top[..., None]).sum(axis=-1))


def _pnbd_log_h(r, al, s, be, x, u):
    """log of 2F1(r+s+x, B; r+s+x+1; z(u)) / m(u)^(r+s+x), the building
    block of A_0 in Fader & Hardie (2005), section 3: B = s+1, z = (al-be)/(al+u),
    m = al+u when al >= be; B = r+x, z = (be-al)/(be+u), m = be+u otherwise.

    Euler's transformation 2F1(A, B; A+1; z) = (1-z)^(1-B) 2F1(1, A+1-B; A+1; z)
    leaves a series with c - a - b > -1 that stays bounded, and the powers
    are taken in logs, so large x and long histories neither overflow nor
    lose precision::

        al >= be:  -(r+x) log(al+u) - s log(be+u)       + log 2F1(1, r+x; r+s+x+1; z)
        al <  be:  -(r+x-1) log(al+u) - (s+1) log(be+u) + log 2F1(1, s+1; r+s+x+1; z)
    """
    x, u = np.broadcast_arrays(np.asarray(x, float), np.asarray(u, float))
    c = r + s + x + 1
    la, lb = np.log(al + u), np.log(be + u)
    with np.errstate(invalid="ignore", divide="ignore"):
        if al >= be:
            z = (al - be) / (al + u)
            out = -(r + x) * la - s * lb + np.log(hyp2f1(1.0, r + x, c, z))
        else:
            z = (be - al) / (be + u)
            out = -(r + x - 1) * la - (s + 1) * lb + np.log(hyp2f1(1.0, s + 1, c, z))
    bad = ~np.isfinite(out)
    if bad.any():  # h(u) = (r+s+x) * J(u), J the tail integral
        out = np.array(out, dtype=float)
        out[bad] = np.log(r + s + x[bad]) + _log_tail_integral(r + x[bad], s + 1, al, be, u[bad])
    return out


class ParetoNBDModel(_CountModel):
    """Pareto/NBD model of repeat purchases (Schmittlein, Morrison & Colombo 1987).

    While alive a customer buys as a Poisson process with rate
    lambda ~ Gamma(r, alpha) and dies after an exponential lifetime with
    rate mu ~ Gamma(s, beta). The likelihood is Fader & Hardie (2005),
    section 3::

        L = G(r+x) alpha^r beta^s / G(r) * { 1 / ((alpha+T)^(r+x) (beta+T)^s)
                                             + s/(r+s+x) * A_0 }
        A_0 = h(t_x) - h(T),  h(u) = 2F1(r+s+x, B; r+s+x+1; z(u)) / m(u)^(r+s+x)

    with the alpha >= beta and alpha < beta cases of the note chosen so that
    0 <= z < 1, and each 2F1 evaluated after Euler's transformation in logs
    (see ``_pnbd_log_h``) -- stable for large x and long histories. The
    2F1 terms are computed once per distinct (x, t_x) and (x, T) pair. The
    gradient with respect to log(r, alpha, s, beta) is a central finite
    difference of this closed form (the 2F1 has no closed-form derivative
    in its parameters); the optimiser is L-BFGS-B.

    Parameters
    ----------
    max_iter, tol : see :class:`BetaGeoModel`.

    Attributes
    ----------
    params_ : dict
        ``r``, ``alpha``, ``s``, ``beta`` (alpha and beta in the summary's
        time unit).
    loglik_ : float

    Examples
    --------
    On the CDNOW sample the published estimates are r = 0.553,
    alpha = 10.578, s = 0.606, beta = 11.669, LL = -9595.0.
    """

    _names = ("r", "alpha", "s", "beta")
    _time_scales = ("alpha", "beta")
    _fd_step = 1e-5

    def _start(self, g: _Groups) -> np.ndarray:
        x, tx, T = g.values()
        rate = max(np.dot(g.w, x), 1.0) / max(np.dot(g.w, T), 1e-9)
        span = np.dot(g.w, T) / g.w.sum()
        # non-integer on purpose: scipy's hyp2f1 has trouble with integer parameters
        return np.log([0.9, 0.9 / rate, 0.8, span])

    @staticmethod
    def _pair_index(g: _Groups):
        cache = getattr(g, "_pnbd_pairs", None)
        if cache is None:
            x, tx, T = g.values()
            xa, ta, ia = _pairs(x, tx)
            xb, Tb, ib = _pairs(x, T)
            cache = (xa, ta, ia, xb, Tb, ib)
            g._pnbd_pairs = cache
        return cache

    def _ll_groups(self, params, g: _Groups) -> np.ndarray:
        """Per-group log-likelihood at natural-scale params."""
        r, al, s, be = params
        xa, ta, ia, xb, Tb, ib = self._pair_index(g)
        x, tx, T = g.values()
        log_h_tx = _pnbd_log_h(r, al, s, be, xa, ta)[ia]
        log_h_T = _pnbd_log_h(r, al, s, be, xb, Tb)[ib]
        log_a0 = log_h_tx + _log1mexp(log_h_T - log_h_tx)
        l1 = -(r + x) * np.log(al + T) - s * np.log(be + T)
        l2 = np.log(s) - np.log(r + s + x) + log_a0
        lgx = gammaln(r + g.xu) - gammaln(r)
        return lgx[g.xi] + r * np.log(al) + s * np.log(be) + np.logaddexp(l1, l2)

    def _nll(self, theta, g: _Groups):
        with np.errstate(divide="ignore"):
            ll = float(np.dot(g.w, self._ll_groups(np.exp(theta), g)))
            h = self._fd_step
            grad = np.empty(len(theta))
            for k in range(len(theta)):
                e = np.zeros(len(theta))
                e[k] = h
                up = np.dot(g.w, self._ll_groups(np.exp(theta + e), g))
                dn = np.dot(g.w, self._ll_groups(np.exp(theta - e), g))
                grad[k] = (up - dn) / (2 * h)
        return ll, grad

    def _log_a0(self, x, tx, T):
        r, al, s, be = (self.params_[k] for k in self._names)
        xa, ta, ia = _pairs(x, tx)
        xb, Tb, ib = _pairs(x, T)
        lh_tx = _pnbd_log_h(r, al, s, be, xa, ta)[ia]
        lh_T = _pnbd_log_h(r, al, s, be, xb, Tb)[ib]
        with np.errstate(divide="ignore"):
            return lh_tx + _log1mexp(lh_T - lh_tx)

    def p_alive(self, frequency, recency, T) -> np.ndarray:
        """P(alive | x, t_x, T) = 1 / (1 + s/(r+s+x) (alpha+T)^(r+x) (beta+T)^s A_0)
        (Fader & Hardie 2005, section 5)."""
        self._require_fit()
        r, al, s, be = (self.params_[k] for k in self._names)
        x = np.asarray(frequency, float).ravel()
        tx, T = np.asarray(recency, float).ravel(), np.asarray(T, float).ravel()
        lk = (np.log(s) - np.log(r + s + x) + (r + x) * np.log(al + T) + s * np.log(be + T)
              + self._log_a0(x, tx, T))
        return expit(-lk)

    def _core(self, x, T, t):
        """E[Y(t)|...] / P(alive) = (r+x)(beta+T)/((alpha+T)(s-1)) [1 - ((beta+T)/(beta+T+t))^(s-1)]."""
        r, al, s, be = (self.params_[k] for k in self._names)
        lr = np.log(be + T) - np.log(be + T + t)
        if abs(s - 1) < 1e-12:
            part = -lr
        else:
            part = -np.expm1((s - 1) * lr) / (s - 1)
        return (r + x) * (be + T) / (al + T) * part

    def expected_purchases(self, t, frequency, recency, T) -> np.ndarray:
        """Expected repeat purchases in the next ``t`` time units given the
        history (Fader & Hardie 2005, section 6)::

            E[Y(t) | x, t_x, T] = (r+x)(beta+T) / ((alpha+T)(s-1))
                                  * [1 - ((beta+T)/(beta+T+t))^(s-1)] * P(alive)

        ``t`` broadcasting as in :meth:`BetaGeoModel.expected_purchases`.
        """
        self._require_fit()
        return _expected(self, t, frequency, recency, T)

    def expected_purchases_new(self, t) -> np.ndarray:
        """E[X(t)] = r beta / (alpha (s-1)) [1 - (beta/(beta+t))^(s-1)] (section 4)."""
        self._require_fit()
        t = np.asarray(t, float)
        return self._core(np.zeros_like(t), np.zeros_like(t), t)


# --------------------------------------------------------------------------
# Gamma-Gamma spend
# --------------------------------------------------------------------------

class GammaGammaModel:
    """Gamma-Gamma model of the spend per transaction (FHL 2005, "RFM and CLV").

    Each transaction's value is Gamma(p, nu) with the customer's nu ~
    Gamma(q, v); a customer's mean value over x transactions, zbar, then
    has the marginal density (FHL 2005 JMR, the spend sub-model)::

        f(zbar | p, q, v, x) = G(px+q) / (G(px) G(q)) * v^q zbar^(px-1) x^(px)
                               / (v + x zbar)^(px+q)

    maximised (analytic gradient, L-BFGS-B on log(p, q, v)) over customers
    with at least one repeat purchase; zbar is the mean value of the repeat
    purchases, as in the paper.

    Attributes
    ----------
    params_ : dict
        ``p``, ``q``, ``v``.
    loglik_ : float

    Examples
    --------
    On the 946 CDNOW customers with a repeat purchase FHL (2005) report
    p = 6.25, q = 3.74, v = 15.44.
    """

    _names = ("p", "q", "v")

    def __init__(self, *, max_iter: int = 1000, tol: float = 1e-12):
        self.max_iter = max_iter
        self.tol = tol

    @staticmethod
    def _prepare(frequency, monetary, weights=None):
        x = np.asarray(frequency, float).ravel()
        m = np.asarray(monetary, float).ravel()
        w = np.ones_like(x) if weights is None else np.asarray(weights, float).ravel()
        if not (len(x) == len(m) == len(w)):
            raise ParameterError("frequency, monetary and weights must have the same length")
        keep = (x > 0) & (w > 0)
        if (keep & ~(np.isfinite(m) & (m > 0))).any():
            raise DataContractError("mean repeat-purchase value must be positive", table="summary",
                                    column="monetary", check="positive")
        x, m, w = x[keep], m[keep], w[keep]
        if len(x) == 0:
            raise NoDataError("no customer with a repeat purchase: the spend model needs some")
        cx, ux = pd.factorize(x)
        return dict(x=x, lm=np.log(m), xm=x * m, w=w, xi=cx, xu=np.asarray(ux, float),
                    wx=np.bincount(cx, weights=w), const=np.dot(w, x * np.log(x)))

    @staticmethod
    def _nll(theta, d):
        p, q, v = np.exp(theta)
        xu, wx = d["xu"], d["wx"]
        px = p * xu
        lg = gammaln(px + q) - gammaln(px) - gammaln(q)
        lv = np.log(v + d["xm"])
        pxq = (px + q)[d["xi"]]
        ll = (np.dot(wx, lg) + wx.sum() * q * np.log(v) + np.dot(d["w"], (px[d["xi"]] - 1) * d["lm"])
              + p * d["const"] - np.dot(d["w"], pxq * lv))
        dpsi = digamma(px + q)
        d_p = (np.dot(wx * xu, dpsi - digamma(px)) + np.dot(d["w"] * d["x"], d["lm"])
               + d["const"] - np.dot(d["w"] * d["x"], lv))
        d_q = np.dot(wx, dpsi - digamma(q)) + wx.sum() * np.log(v) - np.dot(d["w"], lv)
        d_v = wx.sum() * q / v - np.dot(d["w"], pxq / (v + d["xm"]))
        return float(ll), np.array([d_p * p, d_q * q, d_v * v])

    @_blas_single_thread
    def fit(self, frequency, monetary, weights=None):
        """Fit on customers with ``frequency > 0`` (others are ignored).

        Parameters
        ----------
        frequency : array-like
            Repeat purchases per customer (x).
        monetary : array-like
            Mean value of those repeat purchases (zbar).
        weights : array-like, optional

        Returns
        -------
        self
        """
        d = self._prepare(frequency, monetary, weights)
        total = d["w"].sum()
        mean = np.dot(d["w"], np.exp(d["lm"])) / total

        def fun(theta):
            ll, grad = self._nll(theta, d)
            return -ll / total, -grad / total

        res = _minimize(fun, np.log([1.0, 3.0, 2.0 * mean]), max_iter=self.max_iter, tol=self.tol)
        self.params_ = dict(zip(self._names, (float(v) for v in np.exp(res.x))))
        self.loglik_ = float(-res.fun * total)
        self.n_customers_ = float(total)
        self.n_iter_ = int(res.nit)
        self.converged_ = bool(res.success)
        return self

    def loglik(self, frequency, monetary, weights=None, *, params: dict | None = None) -> float:
        """Total log-likelihood (customers with a repeat purchase) at ``params``."""
        d = self._prepare(frequency, monetary, weights)
        p = params if params is not None else self.params_
        return self._nll(np.log([p[k] for k in self._names]), d)[0]

    def loglik_gradient(self, frequency, monetary, weights=None, *, params=None) -> np.ndarray:
        """Gradient of :meth:`loglik` with respect to log(p, q, v)."""
        d = self._prepare(frequency, monetary, weights)
        p = params if params is not None else self.params_
        return self._nll(np.log([p[k] for k in self._names]), d)[1]

    def expected_spend(self, frequency, monetary) -> np.ndarray:
        """E[spend per transaction | x, zbar] = p (v + x zbar) / (p x + q - 1):
        a weighted mean of the population mean p v / (q - 1) and the
        customer's own zbar, with weight p x / (p x + q - 1) on zbar (FHL 2005 JMR).
        Customers with x = 0 get the population mean."""
        if not hasattr(self, "params_"):
            raise ParameterError("GammaGammaModel is not fitted yet: call fit() first")
        p, q, v = (self.params_[k] for k in self._names)
        x = np.asarray(frequency, float)
        m = np.where(x > 0, np.asarray(monetary, float), 0.0)
        return p * (v + x * m) / (p * x + q - 1)

    def population_mean(self) -> float:
        """p v / (q - 1): the mean spend per transaction across customers."""
        p, q, v = (self.params_[k] for k in self._names)
        return p * v / (q - 1) if q > 1 else math.inf


# --------------------------------------------------------------------------
# CLV
# --------------------------------------------------------------------------

@_blas_single_thread
def clv(transactions_model, spend_model, frequency, recency, T, monetary, *,
        horizon: int = 12, discount_rate: float = 0.01, margin: float = 1.0,
        time_unit: str = "D", month_days: float = MONTH_DAYS) -> np.ndarray:
    """Discounted expected margin over the next ``horizon`` months, per customer.

    ``CLV = margin * E[spend] * sum_{k=1..horizon} (E[Y(k m)] - E[Y((k-1) m)]) / (1 + d)^k``

    where ``E[Y(t)]`` is the transactions model's conditional expectation,
    ``m`` one month (``month_days`` days) in ``time_unit``, ``d`` the
    *monthly* ``discount_rate`` and ``E[spend]`` the Gamma-Gamma conditional
    mean spend. This is the monthly discounting of expected transactions of
    the ``lifetimes`` package's ``customer_lifetime_value`` (which uses
    30-day months: pass ``month_days=30`` to match it exactly).

    Parameters
    ----------
    transactions_model : BetaGeoModel or ParetoNBDModel (fitted)
    spend_model : GammaGammaModel (fitted)
    frequency, recency, T, monetary : array-like, one value per customer
    horizon : int
        Months ahead.
    discount_rate : float
        Monthly discount rate (0.01 = 1 % a month).
    margin : float
        Share of revenue that is margin (1.0 = revenue).
    time_unit : {"D", "W", "M"}
        The unit of ``recency`` and ``T``.

    Returns
    -------
    numpy.ndarray
        One value per customer, in the currency of ``monetary``.
    """
    if horizon < 1:
        raise ParameterError("horizon must be at least one month")
    if discount_rate <= -1:
        raise ParameterError("discount_rate must be above -1")
    transactions_model._require_fit()
    step = month_days / _time_unit(time_unit)
    core, inv = _core_pairs(transactions_model, frequency, T, step * np.arange(1, horizon + 1))
    disc = (1.0 + discount_rate) ** -np.arange(1, horizon + 1)
    # E[Y(t)] = core(x, T, t) * P(alive): discount per distinct (x, T) pair, then per customer
    per_pair = np.diff(core, axis=1, prepend=0.0) @ disc
    per_txn = per_pair[inv] * transactions_model.p_alive(frequency, recency, T).ravel()
    spend = spend_model.expected_spend(np.asarray(frequency, float).ravel(),
                                       np.asarray(monetary, float).ravel())
    return margin * spend * per_txn


# --------------------------------------------------------------------------
# calibration / holdout
# --------------------------------------------------------------------------

def holdout_check(summary: pd.DataFrame, model, *, max_frequency: int = 7) -> dict:
    """Predicted against actual repeat transactions in the holdout period.

    Takes a :func:`transaction_summary` frame computed with a calibration
    end before the observation end (so it has ``frequency_holdout``) and a
    transactions model fitted on its calibration columns.

    Returns
    -------
    dict
        ``total``: ``{"actual": float, "predicted": float, "customers": int,
        "holdout_length": float}`` (in ``time_unit``, the summary's, also
        returned); ``by_frequency``: a frame with one row per
        number of calibration repeat purchases ``0 .. max_frequency-1`` and
        ``"{max_frequency}+"``, columns ``calibration_purchases, customers,
        actual, predicted`` (means per customer) -- the classic
        conditional-expectation plot of FHL (2005), figure 5.
    """
    if "frequency_holdout" not in summary:
        raise ParameterError("the summary has no holdout period: pass a calibration_end "
                             "before the observation end to transaction_summary")
    t_star = summary.attrs.get("holdout_length")
    if not t_star:
        raise ParameterError("the summary does not record its holdout length")
    pred = model.expected_purchases(t_star, summary["frequency"], summary["recency"], summary["T"])
    actual = summary["frequency_holdout"].to_numpy(float)
    band = np.minimum(summary["frequency"].to_numpy(), max_frequency)
    frame = pd.DataFrame({"band": band, "actual": actual, "predicted": pred})
    by = frame.groupby("band").agg(customers=("actual", "size"), actual=("actual", "mean"),
                                   predicted=("predicted", "mean")).reset_index()
    by["calibration_purchases"] = [f"{int(b)}+" if b == max_frequency else str(int(b))
                                   for b in by["band"]]
    by = by[["calibration_purchases", "customers", "actual", "predicted"]]
    return {
        "total": {"actual": float(actual.sum()), "predicted": float(pred.sum()),
                  "customers": int(len(summary)), "holdout_length": float(t_star)},
        "by_frequency": by,
        "time_unit": summary.attrs.get("time_unit", "D"),
    }


def tracking_series(orders, model, *, calibration_end, observation_end=None, time_unit: str = "D",
                    freq: str = "W", customer_id_col: str = "customer_id",
                    date_col: str = "order_date", amount_col: str = "amount") -> pd.DataFrame:
    """Cumulative repeat transactions over time, actual against the model.

    The cohort is every customer whose first purchase is on or before
    ``calibration_end`` (the customers the model was fitted on). Actual:
    their repeat purchase days counted by date (engine-side). Expected: for
    each date tau, ``sum_d n_first(d) * E[X((tau - d) / unit)]`` over first
    purchase days d <= tau, with the model's unconditional
    ``expected_purchases_new`` (FHL 2005, figure 3).

    Returns
    -------
    pandas.DataFrame
        One row per period end (``freq``, default weekly): ``date,
        actual, expected`` (cumulative repeat transactions) and
        ``period_actual, period_expected`` (per period); ``attrs`` hold
        ``calibration_end``.
    """
    unit = _time_unit(time_unit)
    t = _ibis_table(orders)
    if observation_end in (None, ""):
        observation_end = snapshot_of(t, date_col=date_col)
    obs_end, cal_end = _as_date(observation_end), _as_date(calibration_end)
    d = customer_days(t, as_of=obs_end, customer_id_col=customer_id_col, date_col=date_col,
                      amount_col=amount_col)
    d = d.filter(d.first_day <= cal_end)
    is_first = d.day == d.first_day
    daily = d.group_by("day").aggregate(n_first=is_first.sum(), n_repeat=(~is_first).sum()).to_pandas()
    if daily.empty:
        raise NoDataError("no customers with a first purchase before calibration_end")
    daily["day"] = pd.to_datetime(daily["day"])
    start = daily["day"].min()
    days = pd.date_range(start, pd.Timestamp(obs_end), freq="D")
    daily = daily.set_index("day").reindex(days, fill_value=0)
    lags = np.arange(len(days), dtype=float) / unit
    e_new = model.expected_purchases_new(lags)
    expected = np.convolve(daily["n_first"].to_numpy(float), e_new)[: len(days)]
    out = pd.DataFrame({"actual": daily["n_repeat"].cumsum().to_numpy(float),
                        "expected": expected}, index=days)
    out = out.resample(freq).last()
    out.loc[pd.Timestamp(obs_end)] = [out["actual"].iloc[-1], expected[-1]]  # the last (partial) period
    out = out[~out.index.duplicated(keep="last")].sort_index()
    out = out[out.index <= pd.Timestamp(obs_end)]
    out.index.name = "date"
    out = out.reset_index()
    out["period_actual"] = out["actual"].diff().fillna(out["actual"])
    out["period_expected"] = out["expected"].diff().fillna(out["expected"])
    out.attrs["calibration_end"] = cal_end
    return out


# --------------------------------------------------------------------------
# the report's model bundle
# --------------------------------------------------------------------------

@dataclass
class ValueModels:
    """The three fitted models of the lifecycle report, and what they say."""

    bgnbd: BetaGeoModel
    pnbd: ParetoNBDModel | None
    gg: GammaGammaModel | None
    time_unit: str = "D"

    def parameters(self) -> pd.DataFrame:
        """One row per model: ``model, parameter, value`` plus the
        log-likelihood, for the page's parameter table."""
        rows = []
        for label, m in (("BG/NBD", self.bgnbd), ("Pareto/NBD", self.pnbd), ("Gamma-Gamma", self.gg)):
            if m is None:
                continue
            for k, v in m.params_.items():
                rows.append({"model": label, "parameter": k, "value": v})
            rows.append({"model": label, "parameter": "log-likelihood", "value": m.loglik_})
        return pd.DataFrame(rows)


@_blas_single_thread
def fit_value_models(summary: pd.DataFrame, *, pnbd: bool = True, pnbd_max_customers: int = 200_000,
                     random_state: int | None = 0) -> ValueModels:
    """Fit BG/NBD, Pareto/NBD and Gamma-Gamma on a :func:`transaction_summary`.

    Pareto/NBD's likelihood needs the hypergeometric function per distinct
    (x, t_x) and (x, T) pair; above ``pnbd_max_customers`` it is fitted on a
    seeded random sample of that many customers (its estimates then carry
    sampling error of a few percent at most; BG/NBD and Gamma-Gamma always
    use every customer). ``pnbd=False`` skips it.

    Returns
    -------
    ValueModels
    """
    if len(summary) == 0:
        raise NoDataError("no customers in the calibration period")
    unit = summary.attrs.get("time_unit", "D")
    x, tx, T = summary["frequency"], summary["recency"], summary["T"]
    bg = BetaGeoModel().fit(x, tx, T)
    pn = None
    if pnbd:
        sub = summary
        if len(summary) > pnbd_max_customers:
            sub = summary.sample(n=pnbd_max_customers, random_state=random_state)
        pn = ParetoNBDModel().fit(sub["frequency"], sub["recency"], sub["T"])
    gg = None
    spenders = (summary["frequency"] > 0) & (summary["monetary"] > 0)
    if spenders.any():  # repeat purchases worth nothing (free orders) carry no spend information
        gg = GammaGammaModel().fit(summary.loc[spenders, "frequency"], summary.loc[spenders, "monetary"])
    return ValueModels(bgnbd=bg, pnbd=pn, gg=gg, time_unit=unit)


@_blas_single_thread
def customer_values(summary: pd.DataFrame, models: ValueModels, *, horizon: int = 12,
                    discount_rate: float = 0.01, margin: float = 1.0) -> pd.DataFrame:
    """Per-customer P(alive), expected purchases and CLV from the BG/NBD and
    Gamma-Gamma models.

    Transforms the :func:`transaction_summary` frame (one row per customer)
    into one row per customer with ``customer_id, frequency`` (repeat
    purchases so far), ``p_alive, expected_purchases`` (repeat purchases
    in the next ``horizon`` months),
    ``expected_spend`` (per purchase) and ``clv`` (discounted expected margin
    over ``horizon`` months, see :func:`clv`).

    Returns
    -------
    pandas.DataFrame
    """
    unit = models.time_unit
    x, tx, T, m = summary["frequency"], summary["recency"], summary["T"], summary["monetary"]
    bg = models.bgnbd
    t_h = horizon * MONTH_DAYS / _time_unit(unit)
    out = pd.DataFrame({"customer_id": summary["customer_id"].to_numpy(), "frequency": x.to_numpy()})
    out["p_alive"] = bg.p_alive(x, tx, T)
    out["expected_purchases"] = bg.expected_purchases(t_h, x, tx, T)
    if models.gg is not None:
        out["expected_spend"] = models.gg.expected_spend(x, m)
        out["clv"] = clv(bg, models.gg, x, tx, T, m, horizon=horizon, discount_rate=discount_rate,
                         margin=margin, time_unit=unit)
    else:
        out["expected_spend"] = np.nan
        out["clv"] = np.nan
    return out


# --------------------------------------------------------------------------
# plain words
# --------------------------------------------------------------------------

_UNIT_WORDS = {"D": "day", "W": "week", "M": "month"}


def describe_models(models: ValueModels) -> str:
    """One paragraph on the fitted models: what they imply about the base."""
    bg = models.bgnbd.params_
    unit = _UNIT_WORDS.get(models.time_unit, models.time_unit)
    mean_rate = bg["r"] / bg["alpha"]
    per_year = mean_rate * 365.25 / _time_unit(models.time_unit)
    p_drop = bg["a"] / (bg["a"] + bg["b"])
    text = (f"While they stay active, customers buy about {per_year:.1f} times a year on average "
            f"(BG/NBD mean rate {mean_rate:.3g} per {unit}); after each purchase about "
            f"{p_drop:.0%} of them drop out for good.")
    if models.pnbd is not None:
        bg_m, pn_m = models.bgnbd, models.pnbd
        # a Pareto/NBD fitted on a sample is compared per customer, not in total
        per_bg, per_pn = bg_m.loglik_ / bg_m.n_customers_, pn_m.loglik_ / pn_m.n_customers_
        better = "BG/NBD" if per_bg >= per_pn else "Pareto/NBD"
        if pn_m.n_customers_ == bg_m.n_customers_:
            versus = f"log-likelihood {bg_m.loglik_:,.1f} against {pn_m.loglik_:,.1f}"
        else:
            versus = (f"log-likelihood per customer {per_bg:.4f} against {per_pn:.4f}; Pareto/NBD was "
                      f"fitted on a random sample of {pn_m.n_customers_:,.0f} customers")
        text += f" The Pareto/NBD model tells a similar story; {better} fits these data better ({versus})."
    if models.gg is not None:
        text += (f" A typical purchase is worth about {models.gg.population_mean():,.2f}; "
                 "customers with few purchases are valued closer to that mean than to their own average.")
    shaky = [label for label, m in (("BG/NBD", models.bgnbd), ("Pareto/NBD", models.pnbd),
                                    ("Gamma-Gamma", models.gg))
             if m is not None and (not m.converged_ or getattr(m, "at_bound_", False)
                                   or max(m.params_.values()) > 1e5)]
    if shaky:
        text += (f" Caution: the {_join_words(shaky)} fit ran some parameters to extreme values "
                 "-- the data hold little information about them (often: too few customers or too "
                 "short a history), so read P(alive) and CLV as rough rankings.")
    return text


def _join_words(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def describe_holdout(check: dict) -> str:
    """One paragraph on the calibration/holdout check and what to do about it."""
    tot = check["total"]
    act, pred = tot["actual"], tot["predicted"]
    err = (pred - act) / act if act else math.nan
    if not math.isfinite(err):
        verdict = "There were no repeat purchases in the holdout period to compare against."
    elif abs(err) <= 0.1:
        verdict = (f"The model predicted {pred:,.0f} repeat purchases in the holdout period and "
                   f"customers made {act:,.0f} ({err:+.0%}): close enough to plan with its forecasts.")
    else:
        word = "over" if err > 0 else "under"
        verdict = (f"The model predicted {pred:,.0f} repeat purchases in the holdout period but "
                   f"customers made {act:,.0f} ({err:+.0%}): it {word}-forecasts, so treat its "
                   "expected purchases and CLV as a ranking rather than exact amounts.")
    return verdict
