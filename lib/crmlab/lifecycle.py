"""Where each customer is in their life with us: stages, cohorts, survival,
churn risk and profitability.

Every function takes engine tables (ibis; a pandas frame is wrapped) or the
small per-customer frames built from them, and returns small frames or
dicts that a notebook shows as they are, plus ``describe_*`` functions that
turn the numbers into the plain-language paragraph of each page section
and :func:`findings` for the page's "What changed".

Rules that are business decisions -- stage thresholds, the churn window,
risk levels, the words for each churn driver -- live in ``lifecycle.yaml``
(:func:`load_rules`), not in code.

The second half of the module serves the report page
(``notebooks/30-lifecycle.ipynb``): :func:`check_parameters`,
:func:`report_tables`, :func:`purchase_days` (the customer-day table, made
once and kept in the engine: every later step reads it instead of the
orders), :func:`report_dates`, one chart function per section (themed by
:mod:`crmlab.charts`), :func:`page_table` for masked, labelled tables, the
customer lists, :func:`churn_risk`, :func:`report_metrics` and
:func:`metric_cards`.

Examples
--------
>>> import pandas as pd
>>> from crmlab import lifecycle
>>> orders = pd.DataFrame({"customer_id": [1, 1, 2],
...     "order_date": pd.to_datetime(["2025-01-05", "2025-03-01", "2025-06-20"]),
...     "amount": [20.0, 35.0, 12.0]})
>>> act = lifecycle.customer_activity(orders, as_of="2025-06-30")
>>> lifecycle.assign_stages(act).tolist()
['declining', 'new']
"""

from __future__ import annotations

import copy
import datetime as dt
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from threadpoolctl import threadpool_limits

from crmlab.clv import _as_date, _ibis_table, customer_days, ibis_date, observed_window, snapshot_of
from crmlab.config import MIN_GROUP_SIZE
from crmlab.exceptions import NoDataError, ParameterError

RULES_PATH = Path(__file__).with_name("lifecycle.yaml")

#: columns of ``exports/customer_lifecycle.csv`` (names fixed by the issue)
EXPORT_COLUMNS = ["customer_id", "stage", "p_alive", "expected_purchases", "clv",
                  "churn_probability", "risk_level"]

#: decimals kept in the export (probabilities to 0.01 %, money to cents)
EXPORT_DECIMALS = {"p_alive": 4, "expected_purchases": 4, "clv": 2, "churn_probability": 4}

#: label of customers with no stage in the previous run (stage flows)
NOT_YET = "(not a customer yet)"
#: label of customers of the previous run missing from this one
GONE = "(not in this run)"


# --------------------------------------------------------------------------
# rules
# --------------------------------------------------------------------------

@lru_cache(maxsize=4)
def _read_rules(path: str) -> dict:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def load_rules(path: str | Path | None = None) -> dict:
    """The lifecycle rules (``lifecycle.yaml`` next to this module, or ``path``).

    Returns
    -------
    dict
        ``stage_order``, ``stage_descriptions``, ``rules``, ``recent_days``,
        ``churn_window``, ``risk_levels``, ``feature_words`` (a fresh copy:
        changing it does not change the defaults).
    """
    rules = copy.deepcopy(_read_rules(str(path or RULES_PATH)))
    missing = {"stage_order", "rules", "risk_levels"} - set(rules)
    if missing:
        raise ParameterError(f"lifecycle rules lack {sorted(missing)}")
    return rules


def _rules(rules: dict | None) -> dict:
    return load_rules() if rules is None else rules


# --------------------------------------------------------------------------
# activity and stages
# --------------------------------------------------------------------------

def _days_between(later, earlier) -> np.ndarray:
    return ((pd.to_datetime(later) - pd.to_datetime(earlier)) / pd.Timedelta(days=1)).to_numpy(float)


def customer_activity(orders, *, as_of=None, recent_days: int | None = None, rules: dict | None = None,
                      customer_id_col: str = "customer_id", date_col: str = "order_date",
                      amount_col: str = "amount") -> pd.DataFrame:
    """Orders to one row per customer with the features the stage rules use.

    Transforms ``customer_id, order_date, amount`` (one row per order,
    aggregated in the engine) into one row per customer who bought on or
    before ``as_of``::

        customer_id, first_purchase, last_purchase
        n_days          purchase days (same-day orders are one)
        n_orders        orders
        revenue         total amount
        n_recent        purchase days in the last ``recent_days``
        tenure_days     as_of - first purchase
        recency_days    as_of - last purchase
        ipt_days        own mean gap between purchase days; customers with a
                        single purchase get the median over customers
        overdue         recency_days / ipt_days
        trend           purchase rate in the last ``recent_days`` / the rate
                        before (repeat purchases, half a purchase added to
                        each count so that zero counts stay finite); missing
                        for customers younger than ``recent_days``

    Parameters
    ----------
    orders : ibis.Table or pandas.DataFrame
    as_of : str | date | None
        Snapshot date; ``None``: the newest order.
    recent_days : int, optional
        Default: ``recent_days`` of the rules.

    Returns
    -------
    pandas.DataFrame
    """
    r = _rules(rules)
    recent = int(recent_days if recent_days is not None else r.get("recent_days", 180))
    t = _ibis_table(orders)
    as_of = snapshot_of(t, as_of, date_col=date_col)
    d = customer_days(t, as_of=as_of, customer_id_col=customer_id_col, date_col=date_col,
                      amount_col=amount_col)
    recent_start = as_of - dt.timedelta(days=recent)
    df = d.group_by("customer_id").aggregate(
        first_purchase=d.first_day.min(), last_purchase=d.day.max(), n_days=d.day.count(),
        n_orders=d.n_orders.sum(), revenue=d.amount.sum(),
        n_recent=(d.day > ibis_date(recent_start)).sum(),
    ).to_pandas()
    if df.empty:
        raise NoDataError("no orders on or before as_of")
    df = df.sort_values("customer_id", kind="stable").reset_index(drop=True)
    df["first_purchase"] = pd.to_datetime(df["first_purchase"])
    df["last_purchase"] = pd.to_datetime(df["last_purchase"])
    for c in ("n_days", "n_orders", "n_recent"):
        df[c] = df[c].astype("int64")
    end = pd.Timestamp(as_of)
    df["tenure_days"] = _days_between(end, df["first_purchase"])
    df["recency_days"] = _days_between(end, df["last_purchase"])
    span = _days_between(df["last_purchase"], df["first_purchase"])
    n = df["n_days"].to_numpy()
    ipt = np.where(n > 1, span / np.maximum(n - 1, 1), np.nan)
    fill = np.nanmedian(ipt) if np.isfinite(ipt).any() else np.nan
    df["ipt_days"] = np.where(n > 1, ipt, fill)
    df["overdue"] = df["recency_days"] / df["ipt_days"]
    tenure = df["tenure_days"].to_numpy()
    older = tenure > recent
    earlier = n - 1 - df["n_recent"].to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        trend = ((df["n_recent"].to_numpy() + 0.5) / recent) / (
            (earlier + 0.5) / np.where(older, tenure - recent, np.nan))
    df["trend"] = np.where(older, trend, np.nan)
    df.attrs.update(as_of=as_of, recent_days=recent)
    return df


def _condition_mask(frame: pd.DataFrame, conditions: dict) -> np.ndarray:
    mask = np.ones(len(frame), dtype=bool)
    for feature, bounds in (conditions or {}).items():
        if feature not in frame:
            raise ParameterError(f"a lifecycle stage rule uses feature {feature!r}, which is not "
                                 f"among the customer features {sorted(frame.columns)}")
        v = pd.to_numeric(frame[feature], errors="coerce").to_numpy(float)
        ok = np.isfinite(v)
        if "min" in bounds:
            ok &= v >= float(bounds["min"])
        if "max" in bounds:
            ok &= v <= float(bounds["max"])
        mask &= ok
    return mask


def assign_stages(activity: pd.DataFrame, *, rules: dict | None = None) -> pd.Series:
    """Each customer's lifecycle stage from the rules (first match wins).

    Takes the one-row-per-customer frame of :func:`customer_activity`
    (optionally with a ``p_alive`` column) and returns a categorical Series
    of the same length and index, categories in ``stage_order``. Customers
    no rule matches (only possible with custom rules) are missing.
    """
    r = _rules(rules)
    stage = np.full(len(activity), None, dtype=object)
    done = np.zeros(len(activity), dtype=bool)
    for rule in r["rules"]:
        if "any" in rule:
            match = np.zeros(len(activity), dtype=bool)
            for conditions in rule["any"]:
                match |= _condition_mask(activity, conditions)
        else:
            match = _condition_mask(activity, rule.get("when", {}))
        new = match & ~done
        stage[new] = rule["stage"]
        done |= new
    return pd.Series(pd.Categorical(stage, categories=r["stage_order"]), index=activity.index,
                     name="stage")


def stage_summary(stages: pd.Series, *, rules: dict | None = None) -> pd.DataFrame:
    """Customers per stage: ``stage, customers, share, description``, in stage
    order, every stage listed (zero when empty)."""
    r = _rules(rules)
    counts = stages.value_counts().reindex(r["stage_order"], fill_value=0)
    total = max(int(counts.sum()), 1)
    words = r.get("stage_descriptions", {})
    return pd.DataFrame({"stage": counts.index.astype(str), "customers": counts.to_numpy(),
                         "share": counts.to_numpy() / total,
                         "description": [words.get(s, "") for s in counts.index]})


def stage_flows(current: pd.DataFrame, previous: pd.DataFrame | None, *,
                customer_id_col: str = "customer_id", stage_col: str = "stage",
                rules: dict | None = None) -> pd.DataFrame:
    """Movements between stages since the previous run.

    Takes this run's and the previous run's ``customer_id, stage`` frames
    (the previous run's ``customer_lifecycle.csv`` export) and returns one
    row per (from, to) pair that occurs: ``from_stage, to_stage,
    customers``. Customers new since the previous run come from
    ``NOT_YET``; customers absent now go to ``GONE``. Without a previous run
    the result is empty.
    """
    cols = ["from_stage", "to_stage", "customers"]
    if previous is None or len(previous) == 0:
        return pd.DataFrame(columns=cols)
    cur = current[[customer_id_col, stage_col]].astype({stage_col: str})
    prev = previous[[customer_id_col, stage_col]].astype({stage_col: str})
    cur[customer_id_col] = cur[customer_id_col].astype(str)
    prev[customer_id_col] = prev[customer_id_col].astype(str)
    m = prev.merge(cur, on=customer_id_col, how="outer", suffixes=("_prev", "_now"))
    m["from_stage"] = m[f"{stage_col}_prev"].fillna(NOT_YET)
    m["to_stage"] = m[f"{stage_col}_now"].fillna(GONE)
    out = m.groupby(["from_stage", "to_stage"]).size().rename("customers").reset_index()
    order = [NOT_YET] + list(_rules(rules)["stage_order"]) + [GONE]
    rank = {s: i for i, s in enumerate(order)}
    out = out.sort_values(["from_stage", "to_stage"],
                          key=lambda s: s.map(lambda v: rank.get(v, len(order)))).reset_index(drop=True)
    return out[cols]


# --------------------------------------------------------------------------
# cohorts
# --------------------------------------------------------------------------

@dataclass
class Cohorts:
    """Acquisition cohorts: ``sizes`` (customers per cohort), ``retention``
    (share of the cohort buying in each period since acquisition; rows
    cohorts, columns periods 0, 1, ...), ``revenue`` (total per cell) and
    ``revenue_per_customer`` (revenue / cohort size). Cells not yet observed
    at ``as_of`` are missing."""

    sizes: pd.Series
    retention: pd.DataFrame
    revenue: pd.DataFrame
    revenue_per_customer: pd.DataFrame
    period: str = "M"
    min_size: int = MIN_GROUP_SIZE


_PERIOD_UNITS = {"M": "month", "W": "week"}


def cohort_matrices(orders, *, as_of=None, period: str = "M", max_periods: int = 24,
                    min_size: int = MIN_GROUP_SIZE, customer_id_col: str = "customer_id",
                    date_col: str = "order_date", amount_col: str = "amount") -> Cohorts:
    """Retention and revenue by acquisition cohort, aggregated in the engine.

    Transforms orders into a cohort x period-since-acquisition grid: a
    customer belongs to the cohort of the month (``period="M"``) or week
    (``"W"``) of their first purchase; a cell counts the distinct customers
    of the cohort who bought in that period and sums their amounts.

    Parameters
    ----------
    period : {"M", "W"}
    max_periods : int
        Periods since acquisition to keep (columns 0 .. max_periods).
    min_size : int
        Cohorts with fewer customers keep their size but show no retention
        or revenue (a cohort of two would show two people's spending);
        default ``crmlab.config.MIN_GROUP_SIZE``.

    Returns
    -------
    Cohorts
    """
    if period not in _PERIOD_UNITS:
        raise ParameterError(f"period must be one of {sorted(_PERIOD_UNITS)}, got {period!r}")
    unit = _PERIOD_UNITS[period]
    t = _ibis_table(orders)
    as_of = snapshot_of(t, as_of, date_col=date_col)
    d = customer_days(t, as_of=as_of, customer_id_col=customer_id_col, date_col=date_col,
                      amount_col=amount_col)
    trunc = "M" if period == "M" else "W"
    d = d.mutate(cohort=d.first_day.truncate(trunc), active=d.day.truncate(trunc))
    d = d.mutate(offset=d.active.delta(d.cohort, unit=unit))
    d = d.filter(d.offset <= max_periods)
    cells = d.group_by(["cohort", "offset"]).aggregate(
        customers=d.customer_id.nunique(), revenue=d.amount.sum()).to_pandas()
    if cells.empty:
        raise NoDataError("no orders on or before as_of")
    cells["cohort"] = pd.to_datetime(cells["cohort"])
    sizes = cells[cells["offset"] == 0].set_index("cohort")["customers"].sort_index()
    cust = cells.pivot(index="cohort", columns="offset", values="customers").sort_index()
    rev = cells.pivot(index="cohort", columns="offset", values="revenue").sort_index()
    cols = range(0, max_periods + 1)
    cust, rev = cust.reindex(columns=cols), rev.reindex(columns=cols)
    # a cell is observed once its period has started by as_of; unobserved cells stay missing
    start = pd.Timestamp(as_of)
    step = pd.DateOffset(months=1) if period == "M" else pd.DateOffset(weeks=1)
    observed = np.array([[c + k * step <= start for k in cols] for c in cust.index], dtype=bool)
    cust = cust.fillna(0).where(observed)
    rev = rev.fillna(0.0).where(observed)
    sizes = sizes.reindex(cust.index).fillna(0).astype("int64")
    small = (sizes < min_size).to_numpy()
    cust.loc[small], rev.loc[small] = np.nan, np.nan
    retention = cust.div(sizes.replace(0, np.nan), axis=0)
    label = "%Y-%m" if period == "M" else "%Y-%m-%d"
    for f in (retention, rev, cust):
        f.index = f.index.strftime(label)
        f.index.name = "cohort"
        f.columns.name = f"{unit}s since first purchase"
    sizes.index = sizes.index.strftime(label)
    return Cohorts(sizes=sizes.rename("customers"), retention=retention, revenue=rev,
                   revenue_per_customer=rev.div(sizes.replace(0, np.nan), axis=0), period=period,
                   min_size=int(min_size))


def _cohort_grid(cohorts: Cohorts, what: str, max_periods: int) -> pd.DataFrame:
    """The cells a cohort map shows: retention in periods 1 .. ``max_periods``,
    or cumulative revenue per customer in periods 0 .. ``max_periods``."""
    if what == "retention":
        return cohorts.retention.loc[:, 1:max_periods]
    if what == "revenue":
        return cohorts.revenue_per_customer.cumsum(axis=1, skipna=False).loc[:, 0:max_periods]
    raise ParameterError(f"what must be 'retention' or 'revenue', got {what!r}")


def cohort_needs(cohorts: Cohorts, what: str = "retention", *, max_periods: int = 12) -> str | None:
    """What a cohort map lacks, or None when it has something to show.

    Decided from the cohorts themselves, before drawing: the retention map
    needs a cohort of at least ``min_size`` customers observed for at least
    one period after its first (one day of orders, a single order or cohorts
    of a handful of customers each have none); the revenue map needs a cohort
    of at least ``min_size`` customers.
    """
    if _cohort_grid(cohorts, what, max_periods).notna().any().any():
        return None
    unit = _PERIOD_UNITS[cohorts.period]
    if what == "retention":
        return (f"an acquisition cohort of at least {cohorts.min_size} customers followed for at least one "
                f"{unit} after its first purchase")
    return f"an acquisition cohort of at least {cohorts.min_size} customers"


def describe_cohorts(cohorts: Cohorts, *, at: int | None = None) -> str:
    """One paragraph on cohort retention: the typical retention a few periods
    after acquisition, and whether newer cohorts keep customers better."""
    ret = cohorts.retention
    unit = _PERIOD_UNITS[cohorts.period]
    k = at if at is not None else (3 if cohorts.period == "M" else 12)
    if k not in ret.columns or ret[k].notna().sum() == 0:
        return "There is not enough history yet to compare cohorts."
    col = ret[k].dropna()
    weights = cohorts.sizes.reindex(col.index)
    typical = float(np.average(col, weights=weights)) if weights.sum() else float(col.mean())
    text = (f"{typical:.0%} of customers buy again in their {_ordinal(k)} {unit} after the first "
            f"purchase (weighted over {len(col)} cohorts).")
    if len(col) >= 6:
        half = len(col) // 2
        old, new = col.iloc[:half].mean(), col.iloc[half:].mean()
        if new > old * 1.1:
            text += (f" Newer cohorts retain better ({new:.0%} against {old:.0%}): "
                     "whatever changed in onboarding is working; keep it.")
        elif new < old * 0.9:
            text += (f" Newer cohorts retain worse ({new:.0%} against {old:.0%}): look at recent "
                     "acquisition channels and the first weeks after the first purchase.")
        else:
            text += " Retention is about the same for older and newer cohorts."
    return text


def _ordinal(k: int) -> str:
    return {0: "acquisition", 1: "1st", 2: "2nd", 3: "3rd"}.get(k, f"{k}th")


# --------------------------------------------------------------------------
# survival (Kaplan-Meier)
# --------------------------------------------------------------------------

@dataclass
class Survival:
    """A Kaplan-Meier curve of active lifetime (statsmodels ``SurvfuncRight``).

    ``curve``: ``days, survival, lower, upper`` (share of customers still
    active that many days after their first purchase, 95 % pointwise band);
    ``median_days`` (nan when more than half never churn within the data);
    ``customers``, ``churned``, ``one_time_share`` (customers whose lifetime
    ended on the first day: they never came back), ``churn_window``,
    ``definition`` (the churn definition in words).
    """

    curve: pd.DataFrame
    median_days: float
    customers: int
    churned: int
    one_time_share: float
    churn_window: int
    definition: str


def churn_survival(activity: pd.DataFrame, *, churn_window: int | None = None,
                   rules: dict | None = None) -> Survival:
    """Time to churn, by Kaplan-Meier, with right-censoring.

    Definition: a customer's active lifetime L is the time from their first
    to their last purchase; they count as churned once ``churn_window``
    days pass with no purchase. At ``as_of`` that is known for customers
    whose last purchase is at least ``churn_window`` days old (event, time
    L); everyone else is still possibly active and censored at
    ``as_of - churn_window - first purchase`` (the longest lifetime their
    data can confirm). Customers acquired within the last ``churn_window``
    days carry no information yet and are left out.

    Takes the frame of :func:`customer_activity` (``first_purchase,
    last_purchase`` and its ``attrs["as_of"]``).

    Returns
    -------
    Survival
    """
    from statsmodels.duration.survfunc import SurvfuncRight

    window = int(churn_window if churn_window is not None else _rules(rules).get("churn_window", 180))
    as_of = pd.Timestamp(activity.attrs.get("as_of") or activity["last_purchase"].max())
    cutoff = as_of - pd.Timedelta(days=window)
    first, last = activity["first_purchase"], activity["last_purchase"]
    keep = (first <= cutoff).to_numpy()
    if not keep.any():
        raise NoDataError(f"no customer acquired more than {window} days before as_of")
    life = _days_between(last, first)[keep]
    censor = _days_between(cutoff, first[keep])
    event = (last[keep] <= cutoff).to_numpy()
    duration = np.where(event, life, censor)
    grouped = pd.DataFrame({"d": duration, "e": event.astype(int)}).value_counts().reset_index()
    sf = SurvfuncRight(grouped["d"].to_numpy(float), grouped["e"].to_numpy(int),
                       freq_weights=grouped["count"].to_numpy(float))
    lower, upper = _pointwise_band(sf)
    curve = pd.DataFrame({"days": sf.surv_times, "survival": sf.surv_prob,
                          "lower": lower, "upper": upper})
    start = pd.DataFrame({"days": [0.0], "survival": [1.0], "lower": [1.0], "upper": [1.0]})
    if len(curve) == 0 or curve["days"].iloc[0] > 0:
        curve = pd.concat([start, curve], ignore_index=True)
    med = sf.quantile(0.5)
    n = int(keep.sum())
    one_time = float(np.mean(event & (life == 0)))
    definition = (f"A customer counts as churned after {window} days without a purchase; "
                  "lifetime runs from the first to the last purchase, and customers who may "
                  "still be active are censored.")
    return Survival(curve=curve, median_days=float(med) if med is not None else math.nan,
                    customers=n, churned=int(event.sum()), one_time_share=one_time,
                    churn_window=window, definition=definition)


def _pointwise_band(sf) -> tuple[np.ndarray, np.ndarray]:
    """95 % pointwise band on the log(-log) scale (Kalbfleisch & Prentice)."""
    s, se = np.asarray(sf.surv_prob), np.asarray(sf.surv_prob_se)
    with np.errstate(divide="ignore", invalid="ignore"):
        theta = np.log(-np.log(s))
        sd = se / (s * np.abs(np.log(s)))
        lo = np.exp(-np.exp(theta + 1.96 * sd))
        hi = np.exp(-np.exp(theta - 1.96 * sd))
    lo = np.where(np.isfinite(lo), lo, s)
    hi = np.where(np.isfinite(hi), hi, s)
    return lo, hi


def survival_at(survival: Survival, days: float) -> float:
    """The share still active ``days`` after the first purchase (step function)."""
    c = survival.curve
    idx = np.searchsorted(c["days"].to_numpy(), days, side="right") - 1
    return float(c["survival"].iloc[max(idx, 0)])


def describe_survival(survival: Survival) -> str:
    """One paragraph on the Kaplan-Meier curve and what it means."""
    s365 = survival_at(survival, 365)
    text = (f"{survival.one_time_share:.0%} of customers never came back after their first "
            f"purchase day. A year after the first purchase {s365:.0%} are still active")
    if math.isfinite(survival.median_days):
        text += f"; half of all customers have lapsed after about {survival.median_days:,.0f} days."
    else:
        text += "; more than half of the customers are still active at the end of the data."
    text += (" The first repeat purchase is the big hurdle: win-back and welcome offers pay most "
             "in the weeks after the first order." if survival.one_time_share >= 0.3 else
             " Most customers do come back; the curve's steep parts show when to reach out.")
    return text + " " + survival.definition


# --------------------------------------------------------------------------
# churn model
# --------------------------------------------------------------------------

def snapshot_dates(as_of, *, churn_window: int, n_train: int = 4, step_days: int | None = None,
                   start=None) -> dict:
    """The dates the churn model learns from, so that it never sees the future.

    ``test`` = ``as_of - churn_window`` (the latest date whose label -- a
    purchase or not in the next ``churn_window`` days -- is known at
    ``as_of``); training dates ``train`` lie at least ``churn_window`` days
    before ``test`` (``test - churn_window - k * step_days``), so their labels
    were known at the test date; ``score`` = ``as_of``. Dates before
    ``start + 90 days`` (too little history) are dropped.

    Returns
    -------
    dict
        ``{"train": [dates, oldest first], "test": date, "score": date}``
    """
    as_of = _as_date(as_of)
    step = int(step_days or max(30, churn_window // 2))
    test = as_of - dt.timedelta(days=churn_window)
    train = [test - dt.timedelta(days=churn_window + k * step) for k in range(n_train)]
    if start is not None:
        floor = _as_date(start) + dt.timedelta(days=90)
        train = [d for d in train if d >= floor]
    return {"train": sorted(train), "test": test, "score": as_of}


def churn_snapshots(orders, snapshots, *, churn_window: int | None = None, recent_days: int | None = None,
                    observation_end=None, interactions=None, tickets=None, rules: dict | None = None,
                    customer_id_col: str = "customer_id", date_col: str = "order_date",
                    amount_col: str = "amount", interaction_ts_col: str = "ts",
                    ticket_ts_col: str = "opened_at", max_customers: int | None = None,
                    keep_all=(), random_state: int | None = 0) -> pd.DataFrame:
    """Features and churn labels of every customer at each snapshot date.

    One scan of the customer-day table in the engine computes, for every
    snapshot date s (a fixed small list, as conditional aggregates), each
    customer's history up to s and whether they bought in (s, s +
    ``churn_window``]. Optional ``interactions`` and ``tickets`` tables add
    their own columns. Returns one row per customer acquired on or before
    s, per snapshot::

        customer_id, snapshot
        recency_days, tenure_days, frequency, monetary, recent_purchases,
        trend, overdue                      (orders)
        interactions_recent, interaction_recency_days   (interactions, if given)
        tickets_recent, satisfaction_mean, nps_mean     (tickets, if given)
        churned     1 = no purchase in the next churn_window days, 0 = bought,
                    missing when s + churn_window is after observation_end

    Parameters
    ----------
    snapshots : list of dates
    observation_end : date, optional
        The end of the data (default: the newest order).
    max_customers : int, optional
        Snapshots not in ``keep_all`` hold at most this many customers: a
        seeded random sample (``random_state``) of the customers acquired
        by the latest of them, the same customers in each, chosen before
        their features are aggregated (so the engine works on the sample).
        Training and testing need a few hundred thousand rows at most,
        scoring needs everyone: pass the scoring date in ``keep_all``.

    Returns
    -------
    pandas.DataFrame
    """
    r = _rules(rules)
    window = int(churn_window if churn_window is not None else r.get("churn_window", 180))
    recent = int(recent_days if recent_days is not None else r.get("recent_days", 180))
    t = _ibis_table(orders)
    end = snapshot_of(t, observation_end, date_col=date_col)
    snaps = sorted({_as_date(s) for s in snapshots})
    if not snaps:
        raise ParameterError("no snapshot dates")
    d = customer_days(t, as_of=end, customer_id_col=customer_id_col, date_col=date_col,
                      amount_col=amount_col)
    index = {s: k for k, s in enumerate(snaps)}
    everyone = {_as_date(s) for s in keep_all}
    full = snaps if max_customers is None else [s for s in snaps if s in everyone]
    part = [s for s in snaps if s not in full]
    # every customer, the snapshots that need everyone (few aggregates per customer: at a
    # million customers, all snapshots in one query need gigabytes)
    everyone_wide = _snapshot_aggregates(d, full, index, recent, window) if full else None
    wide = {s: everyone_wide for s in full}
    ids = None
    if part:
        base = everyone_wide if full else _snapshot_aggregates(d, [], index, recent, window)
        pool = np.sort(base.loc[pd.to_datetime(base["first_day"]) <= pd.Timestamp(max(part)),
                                "customer_id"].to_numpy())
        sub = d
        if len(pool) > max_customers:
            rng = np.random.default_rng(random_state)
            ids = np.sort(rng.choice(pool, size=int(max_customers), replace=False))
            sub = d.semi_join(_id_table(ids), "customer_id")
        w = _snapshot_aggregates(sub, part, index, recent, window)
        wide.update({s: w for s in part})
    extras = {s: [] for s in snaps}
    for table, features in ((interactions, _interaction_features), (tickets, _ticket_features)):
        if table is None:
            continue
        for group, restrict in ((full, None), (part, ids)):
            if group:
                found = features(table, group, recent, customer_id_col,
                                 interaction_ts_col if features is _interaction_features else ticket_ts_col,
                                 ids=restrict)
                for s, f in zip(group, found):
                    extras[s].append(f)
    frames = []
    for s in snaps:
        k, w, ts = index[s], wide[s], pd.Timestamp(s)
        first = pd.to_datetime(w["first_day"])
        rows = (first <= ts).to_numpy()
        w, first = w.loc[rows], first[rows]
        n = w[f"n_{k}"].to_numpy(float)
        tenure = _days_between(ts, first)
        recency = _days_between(ts, pd.to_datetime(w[f"last_{k}"]))
        span = tenure - recency
        ipt = np.where(n > 1, span / np.maximum(n - 1, 1), np.nan)
        rec_n = w[f"recent_{k}"].to_numpy(float)
        older = tenure > recent
        with np.errstate(divide="ignore", invalid="ignore"):
            trend = np.where(older, ((rec_n + 0.5) / recent)
                             / ((n - 1 - rec_n + 0.5) / np.where(older, tenure - recent, np.nan)), np.nan)
            overdue = recency / ipt
        f = pd.DataFrame({
            "customer_id": w["customer_id"].to_numpy(),
            "snapshot": ts,
            "recency_days": recency, "tenure_days": tenure, "frequency": n,
            "monetary": w[f"rev_{k}"].to_numpy(float) / np.maximum(n, 1),
            "recent_purchases": rec_n, "trend": trend, "overdue": overdue,
        })
        labelled = s + dt.timedelta(days=window) <= end
        f["churned"] = (w[f"future_{k}"].to_numpy() == 0).astype(float) if labelled else np.nan
        for e in extras[s]:
            f = f.merge(e, on="customer_id", how="left")
        frames.append(f)
    out = pd.concat(frames, ignore_index=True)
    for col in ("interactions_recent", "tickets_recent"):
        if col in out:
            out[col] = out[col].fillna(0.0)
    out.attrs.update(churn_window=window, recent_days=recent, observation_end=end)
    return out


def _snapshot_aggregates(d, snaps, index, recent, window) -> pd.DataFrame:
    """One engine query over the customer-day table ``d``: each customer's
    ``first_day`` and, for each snapshot s (``index[s]`` = k), ``n_k,
    last_k, rev_k, recent_k, future_k``; sorted by customer (reproducible
    row order)."""
    aggs = {"first_day": d.first_day.min()}
    for s in snaps:
        k, upto = index[s], d.day <= ibis_date(s)
        aggs[f"n_{k}"] = upto.sum()
        aggs[f"last_{k}"] = d.day.max(where=upto)
        aggs[f"rev_{k}"] = d.amount.sum(where=upto)
        aggs[f"recent_{k}"] = (upto & (d.day > ibis_date(s - dt.timedelta(days=recent)))).sum()
        aggs[f"future_{k}"] = ((d.day > ibis_date(s)) & (d.day <= ibis_date(s + dt.timedelta(days=window)))).sum()
    wide = d.group_by("customer_id").aggregate(**aggs).to_pandas()
    return wide.sort_values("customer_id", kind="stable").reset_index(drop=True)


def _id_table(ids):
    """A list of customer ids as a one-column engine table, for a semi-join."""
    import ibis

    return ibis.memtable(pd.DataFrame({"customer_id": ids}))


def _restrict(t, cid: str, ids):
    return t if ids is None else t.semi_join(_id_table(ids).rename(**{cid: "customer_id"}), cid)


def _interaction_features(interactions, snaps, recent, cid, ts_col, ids=None) -> list[pd.DataFrame]:
    t = _restrict(_ibis_table(interactions), cid, ids)
    day = t[ts_col].date() if t[ts_col].type().is_timestamp() else t[ts_col].cast("date")
    t = t.mutate(_day=day)
    aggs = {}
    for k, s in enumerate(snaps):
        upto = t._day <= ibis_date(s)
        aggs[f"i_recent_{k}"] = (upto & (t._day > ibis_date(s - dt.timedelta(days=recent)))).sum()
        aggs[f"i_last_{k}"] = t._day.max(where=upto)
    wide = t.group_by(t[cid].name("customer_id")).aggregate(**aggs).to_pandas()
    out = []
    for k, s in enumerate(snaps):
        out.append(pd.DataFrame({
            "customer_id": wide["customer_id"].to_numpy(),
            "interactions_recent": wide[f"i_recent_{k}"].to_numpy(float),
            "interaction_recency_days": _days_between(pd.Timestamp(s), pd.to_datetime(wide[f"i_last_{k}"])),
        }))
    return out


def _ticket_features(tickets, snaps, recent, cid, ts_col, ids=None) -> list[pd.DataFrame]:
    t = _restrict(_ibis_table(tickets), cid, ids)
    day = t[ts_col].date() if t[ts_col].type().is_timestamp() else t[ts_col].cast("date")
    t = t.mutate(_day=day)
    has_sat, has_nps = "satisfaction" in t.columns, "nps" in t.columns
    aggs = {}
    for k, s in enumerate(snaps):
        upto = t._day <= ibis_date(s)
        aggs[f"t_recent_{k}"] = (upto & (t._day > ibis_date(s - dt.timedelta(days=365)))).sum()
        if has_sat:
            aggs[f"t_sat_{k}"] = t.satisfaction.cast("float64").mean(where=upto)
        if has_nps:
            aggs[f"t_nps_{k}"] = t.nps.cast("float64").mean(where=upto)
    wide = t.group_by(t[cid].name("customer_id")).aggregate(**aggs).to_pandas()
    out = []
    for k in range(len(snaps)):
        f = pd.DataFrame({"customer_id": wide["customer_id"].to_numpy(),
                          "tickets_recent": wide[f"t_recent_{k}"].to_numpy(float)})
        if has_sat:
            f["satisfaction_mean"] = wide[f"t_sat_{k}"].to_numpy(float)
        if has_nps:
            f["nps_mean"] = wide[f"t_nps_{k}"].to_numpy(float)
        out.append(f)
    return out


_NOT_FEATURES = {"customer_id", "snapshot", "churned"}


class ChurnModel:
    """Who will stop buying: a gradient-boosted classifier trained on past snapshots.

    ``fit`` takes the frame of :func:`churn_snapshots` (several snapshot
    dates with known labels). It evaluates on a time-based split -- trained
    on snapshots whose label windows closed by the latest labelled snapshot,
    tested on that latest snapshot -- and then refits on every labelled
    snapshot for scoring. The model is scikit-learn's
    ``HistGradientBoostingClassifier`` (missing values allowed, so optional
    features may be absent for some customers).

    Parameters
    ----------
    churn_window : int
        Days of the label window (the snapshot frame's).
    max_train_rows : int
        Training rows beyond this are sampled (seeded) -- enough for a
        handful of features and keeps 1M-customer runs fast.
    max_importance_rows : int
        Test rows used for permutation importance.
    n_threads : int or None
        OpenMP threads for the booster (None: all cores). The default, 1,
        is deliberate: scheduled reports run side by side, and OpenMP's
        spinning threads on an oversubscribed machine make a fit ~40x
        slower (measured: 0.4 s with 1 thread against 18 s with 2 on a
        loaded 2-core host).
    random_state : int

    Attributes
    ----------
    features_ : list of str
    split_ : dict
        ``train_snapshots``, ``test_snapshot``, ``train_label_end`` (the
        last day any training label looked at; never after the test
        snapshot), ``train_rows``, ``test_rows``.
    auc_ : float
        ROC AUC on the test snapshot.
    auc_active_ : float
        The same among customers who bought within ``churn_window`` days
        before the test snapshot (the harder, more useful case).
    top_decile_precision_, base_rate_ : float
        Churn share among the 10 % highest-risk test customers, and overall.
    calibration_ : pandas.DataFrame
        ``predicted, observed, customers`` per probability decile.
    importance_ : pandas.DataFrame
        ``feature, importance, std, direction, words``: the drop in test
        AUC when the feature is shuffled (permutation importance), and
        whether higher values mean higher (+1) or lower (-1) risk.
    model_ : HistGradientBoostingClassifier
        Refitted on all labelled snapshots.
    """

    def __init__(self, *, churn_window: int = 180, max_train_rows: int = 200_000,
                 max_importance_rows: int = 5_000, max_iter: int = 100, learning_rate: float = 0.2,
                 n_threads: int | None = 1, random_state: int | None = 0):
        self.churn_window = churn_window
        self.max_train_rows = max_train_rows
        self.max_importance_rows = max_importance_rows
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.n_threads = n_threads
        self.random_state = random_state

    def _estimator(self):
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(max_iter=self.max_iter, learning_rate=self.learning_rate,
                                              random_state=self.random_state)

    def _sample(self, frame: pd.DataFrame, n: int, rng) -> pd.DataFrame:
        if len(frame) <= n:
            return frame
        return frame.iloc[np.sort(rng.choice(len(frame), size=n, replace=False))]

    def fit(self, snapshots: pd.DataFrame):
        """Evaluate on the latest labelled snapshot, then refit on all.

        Parameters
        ----------
        snapshots : pandas.DataFrame
            From :func:`churn_snapshots`: ``snapshot``, ``churned`` and
            feature columns.

        Returns
        -------
        self
        """
        import sklearn.ensemble  # noqa: F401  (load OpenMP before limiting its threads)

        with threadpool_limits(limits=self.n_threads, user_api="openmp"), \
                threadpool_limits(limits=1, user_api="blas"):
            return self._fit(snapshots)

    def _fit(self, snapshots: pd.DataFrame):
        from sklearn.inspection import permutation_importance
        from sklearn.metrics import roc_auc_score

        rng = np.random.default_rng(self.random_state)
        lab = snapshots[snapshots["churned"].notna()]
        if lab.empty:
            raise NoDataError("no snapshot with a known churn label: the data must span more "
                              "than the churn window")
        dates = sorted(lab["snapshot"].unique())
        test_date = dates[-1]
        window = pd.Timedelta(days=self.churn_window)
        train_dates = [s for s in dates if s + window <= test_date]
        if not train_dates:
            raise NoDataError("no snapshot early enough to train on without seeing the test period")
        # a signal the training rows never carry (``trend`` when every training date lies
        # within ``recent_days`` of the first order) cannot be learned: leave it out
        learn = lab[lab["snapshot"].isin(train_dates)]
        self.features_ = [c for c in snapshots.columns if c not in _NOT_FEATURES
                          and learn[c].notna().any()]
        train = self._sample(lab[lab["snapshot"].isin(train_dates)], self.max_train_rows, rng)
        test = lab[lab["snapshot"] == test_date]
        for name, part in (("training", train), ("test", test)):
            if part["churned"].nunique() < 2:
                raise NoDataError(f"the {name} snapshots hold only one outcome (all churned or none)")
        est = self._estimator().fit(train[self.features_], train["churned"].astype(int))
        p = est.predict_proba(test[self.features_])[:, 1]
        y = test["churned"].astype(int).to_numpy()
        self.split_ = {"train_snapshots": [pd.Timestamp(s).date() for s in train_dates],
                       "test_snapshot": pd.Timestamp(test_date).date(),
                       "train_label_end": (pd.Timestamp(max(train_dates)) + window).date(),
                       "train_rows": int(len(train)), "test_rows": int(len(test))}
        self.auc_ = float(roc_auc_score(y, p))
        active = (test["recency_days"] <= self.churn_window).to_numpy()
        self.auc_active_ = (float(roc_auc_score(y[active], p[active]))
                            if active.any() and len(np.unique(y[active])) == 2 else math.nan)
        self.base_rate_ = float(y.mean())
        top = p >= np.quantile(p, 0.9)
        self.top_decile_precision_ = float(y[top].mean())
        self.calibration_ = _calibration(y, p)
        imp_rows = self._sample(test, self.max_importance_rows, rng)
        pi = permutation_importance(est, imp_rows[self.features_], imp_rows["churned"].astype(int),
                                    scoring="roc_auc", n_repeats=3, random_state=self.random_state)
        p_imp = est.predict_proba(imp_rows[self.features_])[:, 1]
        directions = []
        for c in self.features_:
            v = imp_rows[c]
            ok = v.notna().to_numpy()
            rho = (pd.Series(v[ok].to_numpy()).rank().corr(pd.Series(p_imp[ok]).rank())
                   if ok.sum() > 2 else 0.0)
            directions.append(int(np.sign(rho)) if np.isfinite(rho) else 0)
        words = load_rules().get("feature_words", {})
        self.importance_ = pd.DataFrame({
            "feature": self.features_, "importance": pi.importances_mean, "std": pi.importances_std,
            "direction": directions, "words": [words.get(c, c.replace("_", " ")) for c in self.features_],
        }).sort_values("importance", ascending=False).reset_index(drop=True)
        final = self._sample(lab, self.max_train_rows, rng)
        self.model_ = self._estimator().fit(final[self.features_], final["churned"].astype(int))
        return self

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Churn probability (no purchase in the next ``churn_window`` days)
        for each row of a snapshot frame with the same feature columns."""
        if not hasattr(self, "model_"):
            raise ParameterError("ChurnModel is not fitted yet: call fit() first")
        X = frame.reindex(columns=self.features_)
        with threadpool_limits(limits=self.n_threads, user_api="openmp"):
            return self.model_.predict_proba(X)[:, 1]


def _calibration(y: np.ndarray, p: np.ndarray, bins: int = 10) -> pd.DataFrame:
    edges = np.unique(np.quantile(p, np.linspace(0, 1, bins + 1)))
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, max(len(edges) - 2, 0))
    f = pd.DataFrame({"bin": idx, "p": p, "y": y}).groupby("bin").agg(
        predicted=("p", "mean"), observed=("y", "mean"), customers=("y", "size"))
    return f.reset_index(drop=True)


def risk_levels(probability, *, thresholds: dict | None = None, rules: dict | None = None) -> pd.Series:
    """Low / medium / high risk from churn probabilities.

    ``thresholds`` maps each level to its lower bound (default: the rules'
    ``risk_levels``, low 0.0, medium 0.3, high 0.6); a probability gets the
    highest level whose bound it reaches.

    Returns
    -------
    pandas.Series
        Categorical, levels ordered by their bounds.
    """
    th = thresholds if thresholds is not None else _rules(rules)["risk_levels"]
    levels = sorted(th.items(), key=lambda kv: kv[1])
    names = [k for k, _ in levels]
    bounds = np.array([v for _, v in levels], dtype=float)
    if (np.diff(bounds) <= 0).any():
        raise ParameterError("risk level thresholds must be strictly increasing")
    p = np.asarray(probability, dtype=float)
    idx = np.searchsorted(bounds, p, side="right") - 1
    labels = np.array(names, dtype=object)[np.clip(idx, 0, len(names) - 1)]
    labels = np.where(np.isnan(p), None, labels)
    return pd.Series(pd.Categorical(labels, categories=names, ordered=True), name="risk_level")


def churn_scores(model: ChurnModel, snapshots: pd.DataFrame, *, as_of=None,
                 thresholds: dict | None = None) -> pd.DataFrame:
    """Score every customer at ``as_of`` (default: the latest snapshot).

    Takes the fitted model and the :func:`churn_snapshots` frame and
    returns one row per customer: ``customer_id, churn_probability,
    risk_level`` (levels from :func:`risk_levels` with ``thresholds``).
    """
    when = pd.Timestamp(_as_date(as_of)) if as_of is not None else snapshots["snapshot"].max()
    now = snapshots[snapshots["snapshot"] == when]
    if now.empty:
        raise ParameterError(f"no snapshot at {when:%Y-%m-%d} to score")
    prob = model.predict_proba(now)
    return pd.DataFrame({"customer_id": now["customer_id"].to_numpy(), "churn_probability": prob,
                         "risk_level": risk_levels(prob, thresholds=thresholds).to_numpy()})


def describe_drivers(model: ChurnModel, *, top: int = 3) -> str:
    """The main churn drivers in plain words (permutation importance)."""
    imp = model.importance_[model.importance_["importance"] > 0].head(top)
    if imp.empty:
        return "No single signal stands out: the model's risk comes from many small effects."
    parts = []
    for _, row in imp.iterrows():
        way = {1: "more of it means more risk", -1: "less of it means more risk"}.get(
            int(row["direction"]), "its effect is mixed")
        parts.append(f"{row['words']} ({way})")
    return ("The strongest warning signs are " + _join(parts) + ". Shuffling the top one costs "
            f"the model {imp['importance'].iloc[0]:.2f} of its AUC.")


def describe_churn(model: ChurnModel, scored: pd.DataFrame | None = None, *, drivers: bool = True) -> str:
    """One paragraph on the churn model: how good it is, (``drivers``) what
    drives it, and (``scored``) how many are at high risk now."""
    text = (f"Tested on customers as they were on {model.split_['test_snapshot']:%Y-%m-%d} "
            f"(trained only on earlier dates), the model ranks a customer who then stopped buying "
            f"above one who did not {model.auc_:.0%} of the time (ROC AUC {model.auc_:.2f}; 0.5 is a coin "
            f"toss, 1 is perfect). Among the 10 % it flags as most at risk, "
            f"{model.top_decile_precision_:.0%} did stop buying, against {model.base_rate_:.0%} of all customers.")
    if math.isfinite(model.auc_active_):
        text += (f" Among customers who had bought in the {model.churn_window} days before, the harder "
                 f"case, its AUC is {model.auc_active_:.2f}.")
    if drivers:
        text += " " + describe_drivers(model)
    if scored is not None and "risk_level" in scored:
        high = int((scored["risk_level"] == "high").sum())
        text += (f" {high:,} customers are at high risk now; contact the most valuable of them "
                 "first (the list below), before they pass their usual time between purchases.")
    return text


# --------------------------------------------------------------------------
# profitability
# --------------------------------------------------------------------------

def profitability(activity: pd.DataFrame, *, acquisition_cost: float, service_cost: float,
                  margin: float = 0.3, values: pd.DataFrame | None = None) -> dict:
    """The spend at which a customer becomes profitable, and who is below it.

    A customer's cumulative profit is ``margin * revenue - service_cost *
    orders - acquisition_cost``: ``acquisition_cost`` is paid once per
    customer, ``service_cost`` per order (fulfilment, payment, support per
    order). At an average order value ``aov`` the break-even spend is
    ``acquisition_cost / (margin - service_cost / aov)`` (never, when
    ``margin * aov <= service_cost``).

    Parameters
    ----------
    activity : pandas.DataFrame
        From :func:`customer_activity` (``revenue``, ``n_orders``).
    values : pandas.DataFrame, optional
        ``customer_id, clv, expected_purchases`` (from
        :func:`crmlab.clv.customer_values`, CLV computed with the same
        margin): adds how many of those below break-even are expected to
        pass it within the CLV horizon.

    Returns
    -------
    dict
        ``breakeven_spend`` and ``breakeven_orders`` at the median order
        value ``aov``; ``customers``, ``profitable``, ``below``,
        ``share_below``; ``expected_to_cross`` (or None);
        ``per_customer`` frame ``customer_id, profit, breakeven_spend,
        gap`` (spend still needed, 0 when profitable).
    """
    if margin <= 0 or margin > 1:
        raise ParameterError("margin must be in (0, 1]")
    if acquisition_cost < 0 or service_cost < 0:
        raise ParameterError("costs must not be negative")
    rev = activity["revenue"].to_numpy(float)
    orders = activity["n_orders"].to_numpy(float)
    aov_c = rev / np.maximum(orders, 1)
    profit = margin * rev - service_cost * orders - acquisition_cost
    unit_margin = margin - service_cost / np.where(aov_c > 0, aov_c, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        be_c = np.where(unit_margin > 0, acquisition_cost / unit_margin, np.inf)
    gap = np.where(profit >= 0, 0.0, np.maximum(be_c - rev, 0.0))
    aov = float(np.median(aov_c)) if len(aov_c) else math.nan
    um = margin - service_cost / aov if aov > 0 else -1.0
    be = acquisition_cost / um if um > 0 else math.inf
    below = profit < 0
    expected = None
    if values is not None and {"clv", "expected_purchases"} <= set(values.columns):
        v = activity[["customer_id"]].merge(values[["customer_id", "clv", "expected_purchases"]],
                                            on="customer_id", how="left")
        future = v["clv"].to_numpy(float) - service_cost * v["expected_purchases"].to_numpy(float)
        expected = int(np.sum(below & (profit + np.nan_to_num(future) >= 0)))
    return {
        "breakeven_spend": be, "breakeven_orders": be / aov if aov > 0 and math.isfinite(be) else math.inf,
        "aov": aov, "customers": int(len(rev)), "profitable": int((~below).sum()),
        "below": int(below.sum()), "share_below": float(below.mean()) if len(rev) else math.nan,
        "expected_to_cross": expected,
        "per_customer": pd.DataFrame({"customer_id": activity["customer_id"].to_numpy(),
                                      "profit": profit, "breakeven_spend": be_c, "gap": gap}),
    }


def describe_profitability(result: dict, *, currency: str = "") -> str:
    """One paragraph on break-even spend and the customers still below it."""
    cur = f" {currency}" if currency else ""
    if not math.isfinite(result["breakeven_spend"]):
        return ("At the current margin, service cost and typical order value a customer never "
                "earns back the acquisition cost: raise the margin or order value, or cut the "
                "cost per order.")
    text = (f"A customer pays back their acquisition cost after spending about "
            f"{result['breakeven_spend']:,.0f}{cur} (about {result['breakeven_orders']:.1f} orders "
            f"at the typical order value of {result['aov']:,.0f}{cur}). "
            f"{result['below']:,} customers ({result['share_below']:.0%}) are still below that.")
    if result.get("expected_to_cross") is not None:
        text += (f" Of them, {result['expected_to_cross']:,} are expected to cross it within the "
                 "CLV horizon; the rest will only pay back if they are won back or cost less to serve.")
    return text


# --------------------------------------------------------------------------
# export, metrics, findings
# --------------------------------------------------------------------------

def lifecycle_table(activity: pd.DataFrame, stages: pd.Series, values: pd.DataFrame | None = None,
                    churn: pd.DataFrame | None = None) -> pd.DataFrame:
    """The ``customer_lifecycle.csv`` export: one row per customer with
    ``customer_id, stage, p_alive, expected_purchases, clv,
    churn_probability, risk_level`` (missing where a model was not run).

    ``values``: ``customer_id, p_alive, expected_purchases, clv``
    (:func:`crmlab.clv.customer_values`); ``churn``: ``customer_id,
    churn_probability, risk_level``. Numbers are rounded as
    :data:`EXPORT_DECIMALS` says.
    """
    out = pd.DataFrame({"customer_id": activity["customer_id"].to_numpy(),
                        "stage": stages.astype(str).to_numpy()})
    if values is not None:
        out = out.merge(values[["customer_id", "p_alive", "expected_purchases", "clv"]],
                        on="customer_id", how="left")
    if churn is not None:
        out = out.merge(churn[["customer_id", "churn_probability", "risk_level"]],
                        on="customer_id", how="left")
    for c in EXPORT_COLUMNS:
        if c not in out:
            out[c] = np.nan
    # what a list for operational use needs (and half the time to write a million rows)
    return out[EXPORT_COLUMNS].round(EXPORT_DECIMALS)


def lifecycle_metrics(*, models=None, holdout: dict | None = None, churn_model: ChurnModel | None = None,
                      table: pd.DataFrame | None = None, rules: dict | None = None) -> dict:
    """The report's ``metrics.json``: exactly the keys the issue fixes.

    ``bgnbd_r, bgnbd_alpha, bgnbd_a, bgnbd_b, bgnbd_loglik, pnbd_r,
    pnbd_alpha, pnbd_s, pnbd_beta, pnbd_loglik, gg_p, gg_q, gg_v,
    holdout_actual_transactions, holdout_predicted_transactions, churn_auc,
    clv_total`` and ``share_<stage>`` for every stage (None where a part was
    not computed).
    """
    m: dict[str, float | None] = {}
    bg = getattr(models, "bgnbd", None)
    pn = getattr(models, "pnbd", None)
    gg = getattr(models, "gg", None)
    for prefix, model, names in (("bgnbd", bg, ("r", "alpha", "a", "b")),
                                 ("pnbd", pn, ("r", "alpha", "s", "beta"))):
        for k in names:
            m[f"{prefix}_{k}"] = float(model.params_[k]) if model is not None else None
        m[f"{prefix}_loglik"] = float(model.loglik_) if model is not None else None
    for k in ("p", "q", "v"):
        m[f"gg_{k}"] = float(gg.params_[k]) if gg is not None else None
    tot = (holdout or {}).get("total", {})
    m["holdout_actual_transactions"] = tot.get("actual")
    m["holdout_predicted_transactions"] = tot.get("predicted")
    m["churn_auc"] = float(churn_model.auc_) if churn_model is not None else None
    m["clv_total"] = (float(np.nansum(table["clv"])) if table is not None and table["clv"].notna().any()
                      else None)
    order = _rules(rules)["stage_order"]
    n = len(table) if table is not None else 0
    for s in order:
        m[f"share_{s}"] = float((table["stage"] == s).sum() / n) if n else None
    return m


def findings(*, stages: pd.DataFrame | None = None, flows: pd.DataFrame | None = None,
             holdout: dict | None = None, table: pd.DataFrame | None = None,
             churn_model: ChurnModel | None = None, profit: dict | None = None,
             survival: Survival | None = None, currency: str = "") -> list[str]:
    """Three to five plain sentences with numbers for the page's "What changed".

    Each argument is optional; sentences are written for the parts given,
    most important first (value at risk among active customers -- every
    stage but churned --, stage mix and movement, model check,
    profitability, survival), and at most five are returned.
    """
    cur = f" {currency}" if currency else ""
    out: list[str] = []
    if table is not None and "risk_level" in table and table["risk_level"].notna().any():
        active = table[active_mask(table).to_numpy()]
        high = (active["risk_level"].astype(object) == "high").to_numpy()
        clv_high = float(np.nansum(active.loc[high, "clv"])) if "clv" in active else math.nan
        clv_all = float(np.nansum(active["clv"])) if "clv" in active else math.nan
        s = (f"{int(high.sum()):,} of {len(active):,} active customers ({high.mean():.0%}) are at high risk "
             "of churning")
        if math.isfinite(clv_high) and clv_all > 0:
            s += (f"; they hold {clv_high:,.0f}{cur} of the {clv_all:,.0f}{cur} that active customers are "
                  f"expected to be worth ({clv_high / clv_all:.0%})")
        out.append(s + ".")
    if stages is not None and len(stages):
        st = stages.set_index("stage")
        parts = [f"{st.loc[s, 'share']:.0%} {s}" for s in st.index if st.loc[s, "customers"] > 0]
        out.append("Stage mix: " + _join(parts) + ".")
    if flows is not None and len(flows):
        moved = flows[(flows["from_stage"] != flows["to_stage"])
                      & ~flows["from_stage"].isin([NOT_YET]) & ~flows["to_stage"].isin([GONE])]
        if len(moved):
            top = moved.sort_values("customers", ascending=False).iloc[0]
            new = int(flows.loc[flows["from_stage"] == NOT_YET, "customers"].sum())
            out.append(f"Since the last run {int(moved['customers'].sum()):,} customers changed stage, "
                       f"most often from {top['from_stage']} to {top['to_stage']} "
                       f"({int(top['customers']):,}); {new:,} are new.")
    if holdout is not None:
        tot = holdout["total"]
        if tot["actual"]:
            err = (tot["predicted"] - tot["actual"]) / tot["actual"]
            out.append(f"On held-out recent data the purchase model predicted {tot['predicted']:,.0f} "
                       f"repeat purchases against {tot['actual']:,.0f} actual ({err:+.0%}).")
    if profit is not None and math.isfinite(profit.get("breakeven_spend", math.inf)):
        out.append(f"{profit['share_below']:.0%} of customers have not yet spent the "
                   f"{profit['breakeven_spend']:,.0f}{cur} it takes to pay back their acquisition cost.")
    if survival is not None and len(out) < 5:
        out.append(f"{survival.one_time_share:.0%} of customers never returned after their first "
                   f"purchase day.")
    if churn_model is not None and len(out) < 5:
        out.append(f"The churn model ranks correctly {churn_model.auc_:.0%} of the time on a later, "
                   "unseen period.")
    return out[:5]


def describe_stages(summary: pd.DataFrame, flows: pd.DataFrame | None = None) -> str:
    """One paragraph on the stage mix and what to do with each group."""
    st = summary.set_index("stage")
    total = int(st["customers"].sum())
    if total == 0:
        return "No customers to place in stages."
    get = lambda s: (int(st.loc[s, "customers"]), float(st.loc[s, "share"])) if s in st.index else (0, 0.0)
    dec, churned, new = get("declining"), get("churned"), get("new")
    text = (f"Of {total:,} customers, {new[1]:.0%} are new, {dec[1]:.0%} are declining and "
            f"{churned[1]:.0%} have churned. ")
    text += ("The declining group is where retention effort pays most: they are still reachable "
             "but overdue against their own rhythm. New customers need a reason for a second "
             "purchase; churned ones are a win-back list, not a retention list.")
    if flows is not None and len(flows):
        worse = flows[(flows["to_stage"].isin(["declining", "churned"]))
                      & ~flows["from_stage"].isin(["declining", "churned", NOT_YET])]
        if len(worse):
            text += f" Since the last run {int(worse['customers'].sum()):,} customers slipped into decline or churn."
    return text


def _join(parts: list[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def high_risk_customers(table: pd.DataFrame, activity: pd.DataFrame | None = None, *,
                        level: str = "high", top: int = 50, value_col: str = "clv", customers=None,
                        active_only: bool = True) -> pd.DataFrame:
    """The customers at ``level`` risk who are worth saving, most valuable first.

    Takes the :func:`lifecycle_table` frame (and optionally the
    :func:`customer_activity` frame for revenue and recency) and returns at
    most ``top`` rows: ``customer_id`` (+ ``name, email, phone`` when a
    ``customers`` table with them is given: mask them before a stakeholder
    sees them), ``stage,
    ``churn_probability, clv, revenue, recency_days`` (those computed).
    ``active_only`` leaves out customers already in the churned stage: they
    are a win-back list, not a retention list.
    """
    where = table["risk_level"].astype(object) == level
    if active_only:
        where &= active_mask(table)
    if activity is None:
        activity = pd.DataFrame({"customer_id": table["customer_id"], "revenue": np.nan, "recency_days": np.nan})
    return top_customers(table, activity, customers=customers, top=top, by=value_col, where=where,
                         columns=HIGH_RISK_COLUMNS)


# ==========================================================================
# the report page: parameters, inputs, charts, tables and cards
# ==========================================================================

#: the KPI cards and the other figures of ``metrics.json``: key -> (label,
#: format, which way is better, KPI card?). Keys not listed get their key
#: as label.
METRIC_CARDS: dict[str, tuple[str, str, str | None, bool]] = {
    "active_customers": ("Active customers", "{:,.0f}", "higher", True),
    "clv_total": ("Customer value, next 12 months", "{:,.0f}", "higher", True),
    "share_high_risk": ("Active customers at high churn risk", "{:.1%}", "lower", True),
    "churn_auc": ("Churn model accuracy (ROC AUC)", "{:.2f}", "higher", True),
    "holdout_accuracy": ("Purchase forecast accuracy (holdout)", "{:.1%}", "higher", True),
    "customers": ("Customers", "{:,.0f}", None, False),
    "holdout_actual_transactions": ("Repeat purchases in the holdout", "{:,.0f}", None, False),
    "holdout_predicted_transactions": ("Repeat purchases predicted for the holdout", "{:,.0f}", None, False),
    "share_below_breakeven": ("Customers below break-even", "{:.1%}", "lower", False),
    "breakeven_spend": ("Break-even spend", "{:,.0f}", None, False),
    "churn_top_decile_precision": ("Churn share among the top 10 % risk", "{:.1%}", "higher", False),
}

#: the acquisition channel of customers whose channel is missing or blank
UNKNOWN_CHANNEL = "(unknown)"

#: customers listed in the page's top-value and high-risk tables
TOP_N = 25

#: parameter name -> plain words, for error messages
_PARAMETER_WORDS = {"time_unit": "D, W or M", "cohort_period": "M or W"}


def check_parameters(*, calibration_end: str = "", time_unit: str = "W", horizon: int = 12,
                     discount_rate: float = 0.01, margin: float = 0.3, churn_window: int = 180,
                     risk_thresholds=(0.3, 0.6), acquisition_cost: float = 0.0,
                     service_cost: float = 0.0, cohort_period: str = "M",
                     min_group_size: int = MIN_GROUP_SIZE, top_n: int = 50) -> dict:
    """Check the lifecycle report's parameters, every problem at once.

    Returns
    -------
    dict
        ``thresholds`` (risk level -> lower bound, from ``risk_thresholds``:
        ``[medium, high]`` or a mapping ``{medium: .., high: ..}``) and
        ``calibration_end`` (a date, or None for the default).

    Raises
    ------
    ParameterError
        Naming each parameter that is wrong and what it accepts.

    Examples
    --------
    >>> check_parameters(risk_thresholds=[0.2, 0.7])["thresholds"]
    {'low': 0.0, 'medium': 0.2, 'high': 0.7}
    """
    from crmlab.clv import TIME_UNITS

    problems = []

    def number(name, value, lo, hi, *, integer=False, lo_open=False):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (float(value).is_integer() if integer else True)
        ok = ok and (value > lo if lo_open else value >= lo) and value <= hi
        if not ok:
            kind = "a whole number" if integer else "a number"
            low = f"above {lo:g}" if lo_open else f"at least {lo:g}"
            problems.append(f"{name} must be {kind} {low} and at most {hi:g}, got {value!r}")

    if time_unit not in TIME_UNITS:
        problems.append(f"time_unit must be one of {_PARAMETER_WORDS['time_unit']}, got {time_unit!r}")
    if cohort_period not in _PERIOD_UNITS:
        problems.append(f"cohort_period must be one of {_PARAMETER_WORDS['cohort_period']}, "
                        f"got {cohort_period!r}")
    number("horizon", horizon, 1, 120, integer=True)
    number("discount_rate", discount_rate, 0.0, 0.5)
    number("margin", margin, 0.0, 1.0, lo_open=True)
    number("churn_window", churn_window, 14, 1095, integer=True)
    number("acquisition_cost", acquisition_cost, 0.0, 1e12)
    number("service_cost", service_cost, 0.0, 1e12)
    number("min_group_size", min_group_size, 1, 1e6, integer=True)
    number("top_n", top_n, 1, 10_000, integer=True)
    if isinstance(risk_thresholds, dict):
        bounds = [risk_thresholds.get("medium"), risk_thresholds.get("high")]
    else:
        bounds = list(risk_thresholds) if isinstance(risk_thresholds, (list, tuple)) else [risk_thresholds]
    try:
        med, high = (float(b) for b in bounds)
        if not 0.0 < med < high < 1.0:
            raise ValueError
    except (TypeError, ValueError):
        problems.append("risk_thresholds must be two churn probabilities [medium, high] with "
                        f"0 < medium < high < 1, got {risk_thresholds!r}")
        med, high = 0.3, 0.6
    cal = None
    if calibration_end not in (None, ""):
        try:
            cal = _as_date(calibration_end)
        except ParameterError:
            problems.append(f"calibration_end must be a date YYYY-MM-DD or empty, got {str(calibration_end)[:40]!r}")
    if problems:
        raise ParameterError("; ".join(problems))
    return {"thresholds": {"low": 0.0, "medium": med, "high": high}, "calibration_end": cal}


def report_tables(data, *, known_customers_only: bool = True) -> dict:
    """The tables of a :class:`crmlab.sources.Dataset` the lifecycle report uses.

    Orders whose customer is not in the ``customers`` table (when there is
    one) are to be left out: they cannot be followed over a life with us,
    and usually come from broken keys (the data-quality report lists
    them). ``known_customers`` says whom to keep: pass it to
    :func:`purchase_days`.

    Returns
    -------
    dict
        ``orders`` (ibis table), ``customers`` (``customer_id`` and, when
        present, ``name, email, phone, acquisition_channel``, kept in the
        engine), ``known_customers`` (the ids of every customer row,
        quarantined ones included, when some orders have a customer id
        found in no row; else None), ``interactions``, ``tickets`` (ibis
        tables or None), ``currency`` (from a synthetic
        world, else ""), ``orphan_orders`` (orders left out) and ``note``
        (a sentence about them, or "").
    """
    orders = data.table("orders")
    out = {"orders": orders, "customers": None, "known_customers": None, "interactions": None, "tickets": None,
           "currency": str((getattr(data, "world", None) or {}).get("currency") or ""),
           "orphan_orders": 0, "note": ""}
    for name, col in (("interactions", "ts"), ("tickets", "opened_at")):
        if data.has(name, col) and data.has(name, "customer_id"):
            out[name] = data.table(name)
    if data.has("customers"):
        typed = data.table("customers")
        # the few columns the page uses, typed once and kept in the engine (three later reads)
        keep = [c for c in ("customer_id", *CONTACT_COLUMNS, "acquisition_channel") if c in typed.columns]
        customers = _cached(typed.select(*keep))
        out["customers"] = customers
        if known_customers_only:
            # every customer row counts, quarantined ones too: a customer with a broken
            # birth date is still a customer (only their contact details stay hidden)
            every = data.work("customers").expr
            ids = _cached(every.filter(every.customer_id.notnull()).select("customer_id").distinct())
            known = orders.customer_id.isin(ids.customer_id)
            counts = orders.aggregate(n=orders.count(), orphan=(~known).sum()).to_pandas().iloc[0]
            n, orphan = int(counts["n"]), int(counts["orphan"] or 0)
            if orphan:
                out["known_customers"] = ids
                out["orphan_orders"] = orphan
                out["note"] = (f"{orphan:,} orders ({orphan / max(n, 1):.1%}) whose customer is not in the "
                               "customer table are left out; the data-quality report lists them.")
    return out


def purchase_days(orders, customers=None, **columns):
    """The customer-day table of the orders (:func:`crmlab.clv.customer_days`),
    computed once and kept in the engine (``ibis`` ``cache``), so that every
    later step reads it instead of scanning the orders again. ``customers``
    (a table with ``customer_id``): keep only their days.

    Returns
    -------
    ibis.Table
        ``customer_id, day, amount, n_orders, first_day``.
    """
    return _cached(customer_days(orders, customers=customers, **columns))


def _cached(table):
    """``table.cache()``: computed once, kept as a temporary table in the engine."""
    try:
        return table.cache()
    except Exception:  # pragma: no cover - a backend that cannot cache: recompute each time
        return table


def report_dates(days, *, orders=None, as_of=None, calibration_end=None, holdout_share: float | None = None,
                 min_holdout_days: int = 28) -> dict:
    """The dates a lifecycle run needs, from one small query.

    Parameters
    ----------
    days : ibis.Table
        The customer-day table of the purchases (:func:`purchase_days`), or
        the orders themselves.
    orders : ibis.Table, optional
        The orders (every status): the snapshot date is theirs
        (:func:`crmlab.engine.snapshot_date`); default: ``days``.
    as_of : str | date | None
        Snapshot date; empty: the latest order date.
    calibration_end : str | date | None
        End of the models' calibration period; empty: the last quarter of
        the window from the first order to ``as_of`` is the holdout.

    Returns
    -------
    dict
        ``first``, ``latest`` (order dates in the data), ``as_of``,
        ``calibration_end``, ``holdout_days`` (0 when the window is too short
        for a holdout of ``min_holdout_days``: then ``calibration_end`` is
        None), ``span_days`` (first order to ``as_of``).

    Raises
    ------
    ParameterError
        ``calibration_end`` not strictly between the first order and ``as_of``.
    NoDataError
        No purchase on or before ``as_of`` (every order refunded or cancelled,
        or none that early).
    """
    from crmlab.clv import HOLDOUT_SHARE, default_calibration_end

    day = snapshot_of(days if orders is None else orders, as_of)
    first, latest = observed_window(days)
    if day < first:
        raise NoDataError(f"table orders has no purchases on or before as_of {day:%Y-%m-%d} "
                          f"(the first is on {first:%Y-%m-%d})")
    given = _as_date(calibration_end)
    if given is not None:
        if not first < given < day:
            raise ParameterError(f"calibration_end {given:%Y-%m-%d} must lie after the first order "
                                 f"({first:%Y-%m-%d}) and before as_of ({day:%Y-%m-%d})")
        cal = given
    else:
        cal = default_calibration_end(first, day, holdout_share=holdout_share or HOLDOUT_SHARE)
    holdout = (day - cal).days
    if given is None and (holdout < min_holdout_days or cal <= first):
        cal, holdout = None, 0
    return {"first": first, "latest": latest, "as_of": day, "calibration_end": cal, "holdout_days": holdout,
            "span_days": (day - first).days}


# -------------------------------------------------------------- page helpers

def _pyplot():
    import matplotlib.pyplot as plt

    from crmlab import charts

    charts.use_theme()
    return plt, charts


def _percent_axis(axis, which: str = "y") -> None:
    from matplotlib.ticker import PercentFormatter

    (axis.yaxis if which == "y" else axis.xaxis).set_major_formatter(PercentFormatter(1.0, decimals=0))


#: column -> (heading on the page, format)
COLUMN_LABELS: dict[str, tuple[str, str | None]] = {
    "customer_id": ("Customer", None), "stage": ("Stage", None), "customers": ("Customers", "{:,.0f}"),
    "share": ("Share", "{:.1%}"),
    "description": ("What it means", None), "model": ("Model", None), "parameter": ("Parameter", None),
    "value": ("Estimate", None), "meaning": ("What it says", None),
    "calibration": ("Calibration period", None), "full_period": ("Full period", None),
    "calibration_purchases": ("Repeat purchases before the holdout", None),
    "actual": ("Actual per customer", "{:.2f}"), "predicted": ("Predicted per customer", "{:.2f}"),
    "p_alive": ("P(alive)", "{:.0%}"), "expected_purchases": ("Expected purchases", "{:.1f}"),
    "clv": ("Value (CLV)", "{:,.0f}"), "revenue": ("Spent so far", "{:,.0f}"),
    "churn_probability": ("Churn probability", "{:.0%}"), "risk_level": ("Risk", None),
    "recency_days": ("Days since last purchase", "{:,.0f}"), "n_days": ("Purchase days", "{:,.0f}"),
    "acquisition_channel": ("Acquisition channel", None), "mean_clv": ("Mean value (CLV)", "{:,.0f}"),
    "mean_revenue": ("Mean spent so far", "{:,.0f}"), "share_below": ("Below break-even", "{:.0%}"),
    "mean_profit": ("Mean profit so far", "{:,.0f}"), "share_high_risk": ("Active at high risk", "{:.0%}"),
    "clv_total": ("Total value (CLV)", "{:,.0f}"), "mean_p_alive": ("Mean P(alive)", "{:.0%}"),
}
#: personal columns a listing may carry: their names stay so the page masks them
CONTACT_COLUMNS = ("name", "email", "phone")


def page_table(df: pd.DataFrame | None, *, max_rows: int | None = None,
               min_size: int = MIN_GROUP_SIZE) -> dict:
    """A result frame made ready for ``Report.section``: plain headings and formats.

    Returns ``{"table": frame, "table_options": {...}}`` (formats, rows and,
    when there is a ``customers`` column, the small-group merge); ``None``
    gives ``{"table": None}``.

    Examples
    --------
    >>> page_table(pd.DataFrame({"stage": ["new"], "customers": [12]}))["table"].columns.tolist()
    ['Stage', 'Customers']
    """
    if df is None:
        return {"table": None}
    frame = df.reset_index() if df.index.name is not None else df.reset_index(drop=True)
    frame = frame.copy()
    if "customer_id" in frame.columns:  # an id is a label, not a number: no thousands separators
        frame["customer_id"] = frame["customer_id"].astype(str)
    for col in frame.columns:  # pandas' str dtype does not take the blanks of small groups
        if not pd.api.types.is_numeric_dtype(frame[col]) and not pd.api.types.is_bool_dtype(frame[col]):
            frame[col] = frame[col].astype(object)
    formats = {COLUMN_LABELS[c][0]: COLUMN_LABELS[c][1] for c in frame.columns
               if c in COLUMN_LABELS and COLUMN_LABELS[c][1]}
    options: dict = {"formats": formats, "max_rows": int(max_rows or max(50, min(len(frame), 500)))}
    if "customers" in frame.columns:
        options.update(count_col=COLUMN_LABELS["customers"][0], min_size=int(min_size))
    frame = frame.rename(columns={c: COLUMN_LABELS[c][0] for c in frame.columns
                                  if c in COLUMN_LABELS and c not in CONTACT_COLUMNS})
    return {"table": frame, "table_options": options}


def attach_contacts(selection: pd.DataFrame, customers, *, customer_id_col: str = "customer_id",
                    columns=CONTACT_COLUMNS) -> pd.DataFrame:
    """Add contact columns (name, email, phone, those present) to a short list
    of customers, fetched in the engine for those ids only. The result holds
    personal data: the page masks it (``Report.section``)."""
    if customers is None or selection.empty:
        return selection
    cols = [c for c in columns if c in customers.columns]
    if not cols:
        return selection
    ids = selection[customer_id_col].tolist()
    found = (customers.filter(customers[customer_id_col].isin(ids))
             .select(customer_id_col, *cols).to_pandas().drop_duplicates(customer_id_col))
    out = selection.merge(found, on=customer_id_col, how="left")
    front = [customer_id_col, *cols]
    return out[front + [c for c in out.columns if c not in front]]


# -------------------------------------------------------------- stages

def stage_chart(summary: pd.DataFrame):
    """Customers per stage (horizontal bars, in stage order, count and share
    on each bar). Takes :func:`stage_summary`; returns a matplotlib figure."""
    plt, charts = _pyplot()
    labels = [f"{s}" for s in summary["stage"]]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(summary) + 1.3))
    values = summary["customers"].to_numpy()
    bars = ax.barh(labels[::-1], values[::-1], color=charts.COLORS["main"])
    ax.bar_label(bars, labels=[f"{v:,} ({s:.0%})" for v, s in zip(values[::-1], summary["share"].to_numpy()[::-1])],
                 padding=3)
    ax.set_xlim(0, max(values.max(), 1) * 1.25)
    ax.grid(axis="y", visible=False)
    ax.set_title("Customers per lifecycle stage")
    ax.set_xlabel("customers")
    return fig


def previous_stages(previous: list[dict], *, source: str | None = None, id_col: str = "customer_id") -> dict:
    """The customer -> stage list of the previous successful run.

    Parameters
    ----------
    previous : list of dict
        ``Report.previous(1)``: earlier successful runs, newest first.
    source : str, optional
        This run's source: a previous run on another source is not compared.

    Returns
    -------
    dict
        ``stages`` (frame ``customer_id, stage`` with ids as text, or None),
        ``when`` (the previous run's date or None) and ``text`` (what is
        compared, or why nothing is).
    """
    if not previous:
        return {"stages": None, "when": None,
                "text": "This is the first run of this report, so there is nothing to compare with yet: "
                        "moves between stages will show from the next run on."}
    run = previous[0]
    when = str(run.get("finished_at") or run.get("started_at") or "")[:10] or "an earlier date"
    params = run.get("params") or {}
    if source and params.get("source") and params.get("source") != source:
        return {"stages": None, "when": when,
                "text": f"The previous run ({when}) read another data source, so its stages are not "
                        "compared with these; moves will show from the next run on this source."}
    path = Path(run["run_dir"]) / "exports" / "customer_lifecycle.csv"
    if not path.is_file():
        return {"stages": None, "when": when,
                "text": f"The previous run ({when}) left no customer list to compare with."}
    frame = pd.read_csv(path, usecols=[id_col, "stage"], dtype={id_col: str, "stage": str})
    return {"stages": frame, "when": when,
            "text": f"Compared with the previous run of {when} (as of {params.get('as_of') or 'its latest order'})."}


def flow_matrix(flows: pd.DataFrame, *, min_size: int = MIN_GROUP_SIZE, rules: dict | None = None) -> pd.DataFrame:
    """The stage flows of :func:`stage_flows` as a from x to matrix for the page.

    Rows: the stage in the previous run (and customers new since then);
    columns: the stage now (and customers no longer in the data). Cells
    read ``"count (row share)"``; cells with fewer than ``min_size``
    customers read ``"<min_size"``, empty ones ``""``.
    """
    order = [NOT_YET] + list(_rules(rules)["stage_order"]) + [GONE]
    counts = flows.pivot_table(index="from_stage", columns="to_stage", values="customers",
                               aggfunc="sum", fill_value=0)
    counts = counts.reindex(index=[s for s in order if s in counts.index],
                            columns=[s for s in order if s in counts.columns], fill_value=0)
    shares = counts.div(counts.sum(axis=1).replace(0, np.nan), axis=0)
    out = counts.astype(object).copy()
    for r in counts.index:
        for c in counts.columns:
            v = int(counts.loc[r, c])
            out.loc[r, c] = "" if v == 0 else (f"<{min_size}" if v < min_size else f"{v:,} ({shares.loc[r, c]:.0%})")
    out.index.name = "previous stage \u2192 stage now"
    out.columns.name = None
    return out


def describe_flows(flows: pd.DataFrame, *, min_size: int = MIN_GROUP_SIZE) -> str:
    """The biggest moves between stages since the previous run, in plain words."""
    if flows is None or flows.empty:
        return ""
    both = flows[(flows["from_stage"] != NOT_YET) & (flows["to_stage"] != GONE)]
    moved = both[both["from_stage"] != both["to_stage"]]
    stayed = int(both.loc[both["from_stage"] == both["to_stage"], "customers"].sum())
    total = int(both["customers"].sum())
    new = int(flows.loc[flows["from_stage"] == NOT_YET, "customers"].sum())
    gone = int(flows.loc[flows["to_stage"] == GONE, "customers"].sum())
    text = (f"{stayed / total:.0%} of the customers of both runs kept their stage; "
            f"{int(moved['customers'].sum()):,} moved." if total else "No customer is in both runs.")
    big = moved[moved["customers"] >= min_size].sort_values("customers", ascending=False).head(3)
    if len(big):
        text += " The biggest moves: " + _join([f"{r.from_stage} \u2192 {r.to_stage} ({int(r.customers):,})"
                                                for r in big.itertuples()]) + "."
    worse = moved[moved["to_stage"].isin(["declining", "churned"])
                  & ~moved["from_stage"].isin(["declining", "churned"])]["customers"].sum()
    if worse:
        text += f" {int(worse):,} customers slipped into decline or churn: the first people to call."
    if new:
        text += f" {new:,} customers are new since then."
    if gone:
        text += f" {gone:,} customers of the previous run are not in this one."
    return text


# -------------------------------------------------------------- cohorts

def cohort_chart(cohorts: Cohorts, what: str = "retention", *, max_cohorts: int = 24, max_periods: int = 12):
    """A cohort heatmap: the most recent ``max_cohorts`` cohorts (rows) by
    periods since acquisition 1 .. ``max_periods`` (columns).

    ``what``: ``"retention"`` (share of the cohort buying in the period) or
    ``"revenue"`` (cumulative revenue per customer of the cohort by the end
    of the period, acquisition period included). Cohorts under the minimum
    size are blank. Returns a matplotlib figure.
    """
    unit = _PERIOD_UNITS[cohorts.period]
    grid = _cohort_grid(cohorts, what, max_periods)
    needs = cohort_needs(cohorts, what, max_periods=max_periods)
    if needs is not None:
        raise NoDataError(f"no cohort map to draw: it needs {needs} (check cohort_needs first)")
    plt, charts = _pyplot()
    if what == "retention":
        fmt, title, cmap = ".0%", f"Share of each cohort buying again, by {unit} since the first purchase", "Blues"
    else:
        fmt, title, cmap = ",.0f", f"Cumulative revenue per customer, by {unit} since the first purchase", "Greens"
    seen = np.flatnonzero(grid.notna().any(axis=1).to_numpy())
    grid = grid.iloc[: seen[-1] + 1 if len(seen) else 0].iloc[-max_cohorts:]  # not the cohorts too new to show
    fig, ax = plt.subplots(figsize=(min(2.5 + 0.75 * grid.shape[1], 14), min(1.4 + 0.32 * grid.shape[0], 11)))
    charts.heatmap(grid, fmt=fmt, title=title, cmap=cmap, ax=ax)
    ax.set_xlabel(f"{unit}s since the first purchase")
    ax.set_ylabel(f"cohort (first purchase {unit})")
    ax.tick_params(axis="y", labelrotation=0)
    ax.tick_params(labelsize=9)
    for t in ax.texts:
        t.set_fontsize(8)
    return fig


def describe_cohort_revenue(cohorts: Cohorts, *, at: int | None = None, currency: str = "") -> str:
    """One sentence on cumulative revenue per customer ``at`` periods after acquisition."""
    cum = cohorts.revenue_per_customer.cumsum(axis=1, skipna=False)
    unit = _PERIOD_UNITS[cohorts.period]
    k = at if at is not None else (11 if cohorts.period == "M" else 51)
    if k not in cum.columns or cum[k].notna().sum() == 0:
        k = int(max((c for c in cum.columns if cum[c].notna().any()), default=0))
    col = cum[k].dropna()
    if col.empty:
        return ""
    w = cohorts.sizes.reindex(col.index)
    typical = float(np.average(col, weights=w)) if w.sum() else float(col.mean())
    first = cum[0].dropna()
    w0 = cohorts.sizes.reindex(first.index)
    start = float(np.average(first, weights=w0)) if w0.sum() else float(first.mean())
    cur = f" {currency}" if currency else ""
    if not typical > 0:
        return "Customers' purchases so far carry no revenue (every amount is zero), so cohorts are not compared on spend."
    return (f"A customer spends about {start:,.0f}{cur} in their first {unit} and {typical:,.0f}{cur} in total "
            f"by the end of {unit} {k} (weighted over {len(col)} cohorts): "
            f"{'most' if start / typical > 0.5 else 'much'} of a customer's value comes "
            f"{'with the first purchases' if start / typical > 0.5 else 'from coming back'}.")


# -------------------------------------------------------------- survival

def survival_chart(survival: Survival):
    """The Kaplan-Meier curve with its 95 % band, the median and one year marked."""
    plt, charts = _pyplot()
    c = survival.curve
    fig, ax = plt.subplots(figsize=(8, 3.8))
    ax.fill_between(c["days"], c["lower"], c["upper"], step="post", color=charts.COLORS["band"], alpha=0.18,
                    lw=0, label="95 % band")
    ax.step(c["days"], c["survival"], where="post", color=charts.COLORS["main"], lw=2,
            label="share still active")
    if math.isfinite(survival.median_days):
        ax.axvline(survival.median_days, color=charts.COLORS["accent"], ls="--", lw=1.2,
                   label=f"half have lapsed: {survival.median_days:,.0f} days")
    if c["days"].max() >= 365:
        s365 = survival_at(survival, 365)
        ax.plot([365], [s365], "o", color=charts.COLORS["bad"], ms=5, label=f"after one year: {s365:.0%}")
    ax.set_ylim(0, 1.02)
    _percent_axis(ax, "y")
    ax.set_xlabel("days since the first purchase")
    ax.set_ylabel("customers still active")
    ax.set_title(f"How long customers stay (Kaplan-Meier, churn = {survival.churn_window} days silent)")
    ax.legend(loc="upper right")
    return fig


# -------------------------------------------------------------- purchase models

_UNIT_NAMES = {"D": "day", "W": "week", "M": "month"}


def _parameter_rows(models) -> list[tuple]:
    """``(model, parameter, value, meaning)`` for each fitted parameter and
    log-likelihood of a :class:`crmlab.clv.ValueModels`."""
    from crmlab.clv import TIME_UNITS

    unit = _UNIT_NAMES.get(models.time_unit, models.time_unit)
    rows = []
    bg = models.bgnbd.params_
    per_year = bg["r"] / bg["alpha"] * 365.25 / TIME_UNITS[models.time_unit]
    rows += [("BG/NBD", "r", bg["r"], "shape of how purchase rates vary between customers (small = very unequal)"),
             ("BG/NBD", "alpha", bg["alpha"], f"scale of purchase rates, in {unit}s: the mean rate is r / alpha "
                                               f"= {per_year:.1f} purchases a year"),
             ("BG/NBD", "a", bg["a"], "with b: how likely a customer is to drop out after a purchase"),
             ("BG/NBD", "b", bg["b"], f"mean dropout chance after each purchase a / (a + b) = "
                                      f"{bg['a'] / (bg['a'] + bg['b']):.1%}"),
             ("BG/NBD", "log-likelihood", models.bgnbd.loglik_, "fit to the data (higher is better)")]
    if models.pnbd is not None:
        pn = models.pnbd.params_
        life = pn["beta"] / (pn["s"] - 1) if pn["s"] > 1 else math.inf
        life_txt = (f"mean lifetime beta / (s - 1) = {life * TIME_UNITS[models.time_unit] / 365.25:.1f} years"
                    if math.isfinite(life) else "lifetimes vary so much that their mean is unbounded")
        rows += [("Pareto/NBD", "r", pn["r"], "shape of purchase rates, as in BG/NBD"),
                 ("Pareto/NBD", "alpha", pn["alpha"], f"scale of purchase rates, in {unit}s"),
                 ("Pareto/NBD", "s", pn["s"], "shape of how dropout rates vary between customers"),
                 ("Pareto/NBD", "beta", pn["beta"], f"scale of dropout rates, in {unit}s: {life_txt}"),
                 ("Pareto/NBD", "log-likelihood", models.pnbd.loglik_,
                  "fit to the data (comparable with BG/NBD's: same customers)"
                  if models.pnbd.n_customers_ == models.bgnbd.n_customers_ else
                  f"fit on a sample of {models.pnbd.n_customers_:,.0f} customers (not comparable with BG/NBD's)")]
    if models.gg is not None:
        gg = models.gg.params_
        rows += [("Gamma-Gamma", "p", gg["p"], "shape of the spend of one purchase around a customer's own mean"),
                 ("Gamma-Gamma", "q", gg["q"], "shape of how customers' mean spend varies"),
                 ("Gamma-Gamma", "v", gg["v"], f"scale of spend: mean spend per purchase p v / (q - 1) = "
                                              f"{models.gg.population_mean():,.0f}"),
                 ("Gamma-Gamma", "log-likelihood", models.gg.loglik_, "fit to the repeat customers' spend")]
    return rows


def _format_estimate(parameter: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:,.1f}" if parameter == "log-likelihood" else f"{value:.4g}"


def parameter_table(models, *, calibration=None) -> pd.DataFrame:
    """The fitted parameters and log-likelihoods of the three models, with
    what each says in plain words.

    Takes :class:`crmlab.clv.ValueModels` and returns ``model, parameter,
    value, meaning`` rows (one per parameter, then the log-likelihood);
    ``value`` is text (four significant digits; log-likelihoods to one
    decimal), as the page shows it.

    ``calibration``: the models fitted on the calibration period only (the
    holdout check's), shown beside the full-period fit so the estimates can
    be checked against a published table: the columns are then ``model,
    parameter, calibration, full_period, meaning`` (blank where one fit
    lacks a model).
    """
    full = _parameter_rows(models)
    if calibration is None:
        out = pd.DataFrame(full, columns=["model", "parameter", "value", "meaning"])
        out["value"] = [_format_estimate(k, v) for k, v in zip(out["parameter"], out["value"])]
        return out
    cal = {(m, k): v for m, k, v, _ in _parameter_rows(calibration)}
    seen = {(m, k) for m, k, _, _ in full}
    rows = [(m, k, cal.get((m, k)), v, words) for m, k, v, words in full]
    rows += [(m, k, v, None, words) for m, k, v, words in _parameter_rows(calibration) if (m, k) not in seen]
    out = pd.DataFrame(rows, columns=["model", "parameter", "calibration", "full_period", "meaning"])
    for col in ("calibration", "full_period"):
        out[col] = [_format_estimate(k, v) for k, v in zip(out["parameter"], out[col])]
    return out


def holdout_chart(check: dict, *, min_size: int = MIN_GROUP_SIZE):
    """Actual against predicted repeat purchases per customer in the holdout,
    by repeat purchases before it (grouped bars; FHL 2005, figure 5).
    Groups under ``min_size`` customers are left out."""
    plt, charts = _pyplot()
    by = check["by_frequency"]
    by = by[by["customers"] >= min_size]
    x = np.arange(len(by))
    fig, ax = plt.subplots(figsize=(8, 3.8))
    ax.bar(x - 0.2, by["actual"], width=0.4, color=charts.COLORS["neutral"], label="actual")
    ax.bar(x + 0.2, by["predicted"], width=0.4, color=charts.COLORS["main"], label="predicted (BG/NBD)")
    ax.set_xticks(x, by["calibration_purchases"])
    ax.grid(axis="x", visible=False)
    ax.set_xlabel("repeat purchases before the holdout period")
    ax.set_ylabel("repeat purchases per customer")
    ax.set_title(f"Holdout: predicted against actual, over {check['total']['holdout_length']:.0f} "
                 f"{_UNIT_NAMES.get(check.get('time_unit', ''), 'time unit')}s")
    ax.legend(loc="upper left")
    return fig


def tracking_chart(series: pd.DataFrame, *, calibration_end=None):
    """Repeat purchases over time, actual against the model: per week (left)
    and cumulative (right), the calibration end marked (FHL 2005, figures 2-3).
    Takes :func:`crmlab.clv.tracking_series`."""
    plt, charts = _pyplot()
    cal = pd.Timestamp(calibration_end or series.attrs.get("calibration_end"))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    body = series.iloc[:-1] if len(series) > 2 else series  # the last period may be partial
    for ax, (a, e, title) in zip((left, right), (("period_actual", "period_expected", "Repeat purchases per week"),
                                                 ("actual", "expected", "Cumulative repeat purchases"))):
        ax.plot(body["date"], body[a], color=charts.COLORS["neutral"], lw=1.4, label="actual")
        ax.plot(body["date"], body[e], color=charts.COLORS["main"], lw=1.8, ls="--", label="model")
        ax.axvline(cal, color=charts.COLORS["accent"], lw=1.2, ls=":", label="end of calibration")
        ax.set_title(title)
        ax.tick_params(axis="x", labelrotation=30, labelsize=9)
        ax.yaxis.set_major_formatter(_thousands())
    left.legend(loc="upper left", fontsize=9)
    fig.tight_layout()
    return fig


def _thousands():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _: f"{v:,.0f}")


def _compact_number(v: float) -> str:
    """12,345,678 -> "12.3M", 45,600 -> "45.6k", 950 -> "950"."""
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= size:
            return f"{v / size:.3g}{suffix}"
    return f"{v:,.0f}"


def _compact():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _: _compact_number(v))


def describe_tracking(series: pd.DataFrame) -> str:
    """One sentence on how the model tracks weekly purchases after the calibration end."""
    cal = pd.Timestamp(series.attrs.get("calibration_end"))
    after = series[series["date"] > cal]
    if after.empty or after["period_actual"].sum() == 0:
        return ""
    act, exp = after["period_actual"].sum(), after["period_expected"].sum()
    return (f"Over time the model expected {exp:,.0f} repeat purchases after the calibration end from the "
            f"customers it was fitted on, against {act:,.0f} made ({(exp - act) / act:+.0%}); the weekly "
            "curves show whether the gap comes from seasonal peaks (promotions, holidays) that the model "
            "does not know about, or from a steady drift.")


def holdout_accuracy(check: dict | None) -> float | None:
    """1 - |predicted - actual| / actual repeat purchases in the holdout (None without a check)."""
    if not check or not check["total"]["actual"]:
        return None
    tot = check["total"]
    return float(max(0.0, 1.0 - abs(tot["predicted"] - tot["actual"]) / tot["actual"]))


# -------------------------------------------------------------- value

def value_chart(values: pd.DataFrame, stages: pd.Series | None = None, *, currency: str = "",
                rules: dict | None = None):
    """Where the value sits: the distribution of P(alive) among repeat
    customers (left), of 12-month value per customer (middle, up to the 99th
    percentile) and total value per stage (right, when ``stages`` is given).

    Takes :func:`crmlab.clv.customer_values` (plus ``frequency`` when
    present to pick repeat customers). Returns a matplotlib figure."""
    plt, charts = _pyplot()
    n = 3 if stages is not None else 2
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6))
    pa = values["p_alive"].to_numpy(float)
    rep = values["frequency"].to_numpy() > 0 if "frequency" in values else np.ones(len(values), bool)
    axes[0].hist(pa[rep], bins=np.linspace(0, 1, 21), color=charts.COLORS["main"])
    axes[0].set_title("P(alive), repeat customers")
    axes[0].set_xlabel("probability still active")
    _percent_axis(axes[0], "x")
    clv = values["clv"].to_numpy(float)
    clv = clv[np.isfinite(clv)]
    if len(clv):
        top = np.quantile(clv, 0.99)
        axes[1].hist(np.clip(clv, 0, top), bins=30, color=charts.COLORS["accent"])
    axes[1].set_title("Value per customer (CLV)")
    axes[1].set_xlabel(f"expected margin{' (' + currency + ')' if currency else ''}")
    axes[1].xaxis.set_major_formatter(_thousands())
    for ax in axes[:2]:
        ax.set_ylabel("customers")
        ax.yaxis.set_major_formatter(_thousands())
    if stages is not None:
        order = list(_rules(rules)["stage_order"])
        frame = pd.DataFrame({"stage": stages.astype(str).to_numpy(), "clv": values["clv"].to_numpy(float)})
        per = frame.groupby("stage")["clv"].sum().reindex(order).fillna(0.0)
        charts.bar(per, horizontal=True, fmt="{:,.0f}", title="Total value by stage", ax=axes[2],
                   color=charts.COLORS["good"])
        for t in axes[2].texts:
            t.set_text(_compact_number(float(t.get_text().replace(",", "") or 0)))
        axes[2].xaxis.set_major_formatter(_compact())
        axes[2].locator_params(axis="x", nbins=4)
        axes[2].set_xlim(0, max(per.max(), 1) * 1.35)
    fig.tight_layout()
    return fig


def describe_values(values: pd.DataFrame, stages: pd.Series | None = None, *, horizon: int = 12,
                    currency: str = "") -> str:
    """One paragraph on P(alive), expected purchases and CLV."""
    cur = f" {currency}" if currency else ""
    clv = values["clv"].to_numpy(float)
    if not np.isfinite(clv).any():
        return ("No customer has bought twice yet, so spend per purchase cannot be modelled and no "
                "value is computed.")
    total = float(np.nansum(clv))
    srt = np.sort(np.nan_to_num(clv))[::-1]
    top10 = float(srt[: max(1, len(srt) // 10)].sum() / total) if total > 0 else math.nan
    exp = float(values["expected_purchases"].sum())
    rep = values["frequency"].to_numpy() > 0 if "frequency" in values else np.ones(len(values), bool)
    likely = float(np.mean(values["p_alive"].to_numpy()[rep] >= 0.5)) if rep.any() else math.nan
    text = (f"Customers are expected to make {exp:,.0f} repeat purchases in the next {horizon} months, worth "
            f"{total:,.0f}{cur} of margin in today's money (CLV). The top 10 % of customers hold {top10:.0%} of it. "
            f"Of the customers who have bought more than once, {likely:.0%} are more likely than not still "
            "active (P(alive) at least 50 %).")
    if stages is not None:
        frame = pd.DataFrame({"stage": stages.astype(str).to_numpy(), "clv": np.nan_to_num(clv)})
        per = frame.groupby("stage")["clv"].sum()
        if total > 0 and "declining" in per:
            text += (f" Declining customers still hold {per['declining'] / total:.0%} of the value: that is "
                     "what a retention campaign can save.")
    return text


#: the columns of the page's customer listings
TOP_COLUMNS = ("customer_id", "stage", "p_alive", "expected_purchases", "clv", "revenue", "recency_days")
HIGH_RISK_COLUMNS = ("customer_id", "stage", "churn_probability", "clv", "revenue", "recency_days")


def top_customers(table: pd.DataFrame, activity: pd.DataFrame, *, customers=None, top: int = 50,
                  by: str = "clv", where: pd.Series | None = None, columns=TOP_COLUMNS) -> pd.DataFrame:
    """The ``top`` customers by ``by`` (default CLV), with what the retention
    team needs to act: ``customer_id`` (+ name, email, phone when the
    customers table has them: masked on the page) and ``columns`` (of the
    :func:`lifecycle_table` frame plus ``revenue, recency_days``; those
    computed). ``where`` (a boolean Series aligned with ``table``) narrows
    the list first."""
    t = table if where is None else table[where.to_numpy()]
    t = t.merge(activity[["customer_id", "revenue", "recency_days"]], on="customer_id", how="left")
    key = by if by in t and t[by].notna().any() else "churn_probability"
    t = t.sort_values(key, ascending=False, kind="stable").head(int(top)).reset_index(drop=True)
    t = t[[c for c in columns if c in t and t[c].notna().any()]]
    return attach_contacts(t, customers)


# -------------------------------------------------------------- churn

def churn_risk(orders, *, as_of, start, churn_window: int = 180, thresholds: dict | None = None,
               interactions=None, tickets=None, random_state: int | None = 0,
               max_customers: int = 100_000, rules: dict | None = None) -> dict:
    """Train, check and apply the churn model in one go (what the page shows).

    Builds the snapshots of :func:`snapshot_dates` (training dates at least
    ``churn_window`` days before the test date; at most ``max_customers``
    sampled customers in each of them), fits :class:`ChurnModel` and scores
    every customer at ``as_of``.

    Returns
    -------
    dict
        ``model`` (fitted :class:`ChurnModel`) and ``scores`` (``customer_id,
        churn_probability, risk_level``), or both None with ``needs`` saying
        what is missing (a longer history).
    """
    dates = snapshot_dates(as_of, churn_window=churn_window, start=start)
    span = (_as_date(as_of) - _as_date(start)).days
    needs = (f"orders over at least {2 * churn_window + 90} days (now {span:,}): the churn model learns "
             f"from customers whose next {churn_window} days are already known")
    if not dates["train"]:
        return {"model": None, "scores": None, "needs": needs}
    snaps = churn_snapshots(orders, dates["train"] + [dates["test"], dates["score"]], churn_window=churn_window,
                            observation_end=as_of, interactions=interactions, tickets=tickets, rules=rules,
                            max_customers=max_customers, keep_all=[dates["score"]], random_state=random_state)
    try:
        model = ChurnModel(churn_window=churn_window, random_state=random_state).fit(snaps)
    except NoDataError as exc:
        return {"model": None, "scores": None, "needs": f"{needs} ({exc})"}
    scores = churn_scores(model, snaps, as_of=as_of, thresholds=thresholds)
    return {"model": model, "scores": scores, "needs": None}


def churn_quality_chart(model: ChurnModel):
    """How good the churn model is on the later, unseen snapshot: predicted
    against observed churn per risk decile (left; on the diagonal = well
    calibrated) and the churn share in the top decile against the base rate
    (right)."""
    plt, charts = _pyplot()
    cal = model.calibration_
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [1.4, 1]})
    left.plot([0, 1], [0, 1], color=charts.COLORS["neutral"], lw=1, ls=":", label="perfect calibration")
    left.plot(cal["predicted"], cal["observed"], "o-", color=charts.COLORS["main"], label="model, by risk decile")
    left.set_xlim(0, 1), left.set_ylim(0, 1.02)
    _percent_axis(left, "x"), _percent_axis(left, "y")
    left.set_xlabel("predicted churn probability")
    left.set_ylabel("share that did churn")
    left.set_title(f"Calibration (ROC AUC {model.auc_:.2f})")
    left.legend(loc="upper left", fontsize=9)
    bars = pd.Series({"all customers": model.base_rate_, "top 10 % risk": model.top_decile_precision_})
    charts.bar(bars, fmt="{:.0%}", title="Share that churned", ax=right,
               color=charts.COLORS["bad"])
    right.set_ylim(0, 1.1)
    _percent_axis(right, "y")
    fig.tight_layout()
    return fig


def drivers_chart(model: ChurnModel, *, top: int = 8):
    """The churn model's main drivers in plain words: the drop in AUC when
    each signal is shuffled (permutation importance), largest first, with
    which way each signal points."""
    import textwrap

    plt, charts = _pyplot()
    imp = model.importance_.head(top)
    ways = {1: "more of it, more risk", -1: "less of it, more risk"}
    labels = [textwrap.fill(f"{w} ({ways.get(int(d), 'mixed')})", 38)
              for w, d in zip(imp["words"], imp["direction"])]
    values = imp["importance"].clip(lower=0).to_numpy()
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(imp) + 1.2))
    bars = ax.barh(labels[::-1], values[::-1], color=charts.COLORS["main"])
    ax.bar_label(bars, labels=[f"{v:.3f}" for v in values[::-1]], padding=3)
    ax.set_xlim(0, max(float(values.max()) if len(values) else 0, 1e-3) * 1.25)
    ax.grid(axis="y", visible=False)
    ax.tick_params(axis="y", labelsize=10)
    ax.set_xlabel("drop in ROC AUC when the signal is shuffled")
    ax.set_title("What the churn model looks at")
    return fig


def risk_summary(table: pd.DataFrame, *, active: pd.Series | None = None, thresholds: dict | None = None,
                 rules: dict | None = None) -> pd.DataFrame:
    """Customers, total value and mean P(alive) per risk level, among the
    ``active`` customers (a boolean Series aligned with ``table``; default all).

    Returns ``risk_level, customers, share, clv_total, mean_p_alive``, one
    row per level that occurs, lowest risk first."""
    levels = thresholds or _rules(rules)["risk_levels"]
    t = table if active is None else table[active.to_numpy()]
    g = t.groupby("risk_level", observed=False).agg(customers=("customer_id", "size"), clv_total=("clv", "sum"),
                                                    mean_p_alive=("p_alive", "mean")).reset_index()
    g["share"] = g["customers"] / max(int(g["customers"].sum()), 1)
    g["risk_level"] = g["risk_level"].astype(str)
    order = {k: i for i, k in enumerate(sorted(levels, key=levels.get))}
    g = g.sort_values("risk_level", key=lambda c: c.map(lambda v: order.get(v, len(order))), kind="stable")
    return g[["risk_level", "customers", "share", "clv_total", "mean_p_alive"]].reset_index(drop=True)


def active_mask(table: pd.DataFrame) -> pd.Series:
    """Customers not (yet) churned: every stage but ``churned``."""
    return table["stage"].astype(str) != "churned"


def describe_risk(summary: pd.DataFrame, *, thresholds: dict | None = None, currency: str = "") -> str:
    """One paragraph on today's churn risk among active customers (takes :func:`risk_summary`)."""
    cur = f" {currency}" if currency else ""
    s = summary.set_index("risk_level")
    total = int(s["customers"].sum())
    if not total:
        return "No active customer to score."
    th = thresholds or load_rules()["risk_levels"]
    high = s.loc["high"] if "high" in s.index else None
    text = (f"Of {total:,} active customers (every stage but churned), "
            + _join([f"{int(s.loc[k, 'customers']):,} ({s.loc[k, 'share']:.0%}) are at {k} risk" for k in s.index])
            + f". High risk means a churn probability of at least {th.get('high', 0.6):.0%}, medium at least "
              f"{th.get('medium', 0.3):.0%}.")
    if high is not None and s["clv_total"].sum() > 0:
        text += (f" The high-risk group holds {high['clv_total']:,.0f}{cur} of expected value "
                 f"({high['clv_total'] / s['clv_total'].sum():.0%} of the active customers' value).")
    return text


def describe_channels(by_channel: pd.DataFrame, *, min_size: int = MIN_GROUP_SIZE, currency: str = "") -> str:
    """One paragraph comparing acquisition channels on value and payback."""
    cur = f" {currency}" if currency else ""
    big = by_channel[(by_channel["customers"] >= min_size)
                     & (by_channel["acquisition_channel"] != UNKNOWN_CHANNEL)].dropna(subset=["mean_clv"])
    if len(big) < 2:
        return "Too few customers per acquisition channel to compare them."
    best = big.sort_values("mean_clv", ascending=False).iloc[0]
    worst = big.sort_values("mean_clv").iloc[0]
    slow = big.sort_values("share_below", ascending=False).iloc[0]
    return (f"Customers won through {best['acquisition_channel']} are worth the most ({best['mean_clv']:,.0f}{cur} "
            f"expected value each), those from {worst['acquisition_channel']} the least "
            f"({worst['mean_clv']:,.0f}{cur}). {slow['share_below']:.0%} of the {slow['acquisition_channel']} "
            "customers have not yet paid back their acquisition cost, the most of any channel: if that channel "
            "also costs more per customer, it is the first to review.")


# -------------------------------------------------------------- profitability

def profit_chart(activity: pd.DataFrame, profit: dict, *, currency: str = ""):
    """Spend so far per customer (log scale) with the break-even spend marked;
    customers below it in the warning colour."""
    plt, charts = _pyplot()
    rev = activity["revenue"].to_numpy(float)
    rev = rev[rev > 0]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    if len(rev):
        bins = np.geomspace(max(rev.min(), 1e-2), rev.max() * 1.001, 40)
        be = profit["breakeven_spend"]
        counts, edges = np.histogram(rev, bins=bins)
        colors = [charts.COLORS["bad"] if math.isfinite(be) and hi <= be else charts.COLORS["good"]
                  for hi in edges[1:]]
        ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color=colors)
        ax.set_xscale("log")
        if math.isfinite(be):
            ax.axvline(be, color=charts.COLORS["accent"], lw=2, ls="--",
                       label=f"break-even spend {be:,.0f}{' ' + currency if currency else ''}")
            ax.legend(loc="upper right")
    ax.xaxis.set_major_formatter(_thousands())
    ax.set_xlabel(f"spent so far{' (' + currency + ', log scale)' if currency else ' (log scale)'}")
    ax.set_ylabel("customers")
    ax.set_title("Spend so far against the break-even spend")
    return fig


def value_by_channel(activity: pd.DataFrame, table: pd.DataFrame, profit: dict, customers,
                     *, channel_col: str = "acquisition_channel") -> pd.DataFrame | None:
    """Value and profitability by acquisition channel (None without a
    ``customers.acquisition_channel`` column).

    Returns ``acquisition_channel, customers, mean_revenue, mean_profit,
    share_below, mean_clv, share_high_risk`` (among the channel's active
    customers), largest channel first."""
    if customers is None or channel_col not in customers.columns:
        return None
    ch = customers.select("customer_id", channel_col).to_pandas().drop_duplicates("customer_id")
    active_ids = table.loc[active_mask(table).to_numpy(), "customer_id"]
    f = activity[["customer_id", "revenue"]].merge(profit["per_customer"][["customer_id", "profit"]],
                                                  on="customer_id", how="left")
    f = f.merge(table[["customer_id", "clv", "risk_level"]], on="customer_id", how="left")
    f = f.merge(ch, on="customer_id", how="left")
    chan = f[channel_col].astype(object)
    blank = chan.isna().to_numpy() | chan.astype(str).str.strip().eq("").to_numpy()
    f[channel_col] = chan.where(~blank, UNKNOWN_CHANNEL)
    f["below"] = f["profit"] < 0
    f["high"] = (f["risk_level"].astype(object) == "high").where(f["customer_id"].isin(active_ids))
    g = f.groupby(channel_col).agg(customers=("customer_id", "size"), mean_revenue=("revenue", "mean"),
                                   mean_profit=("profit", "mean"), share_below=("below", "mean"),
                                   mean_clv=("clv", "mean"), share_high_risk=("high", "mean"))
    return g.sort_values("customers", ascending=False).reset_index()


# -------------------------------------------------------------- figures and cards

#: the parameters of each model, as ``metrics.json`` names them (``<prefix>_<name>``)
MODEL_PARAMETERS = {"bgnbd": ("bgnbd", ("r", "alpha", "a", "b")), "pnbd": ("pnbd", ("r", "alpha", "s", "beta")),
                    "gg": ("gg", ("p", "q", "v"))}


def report_metrics(*, models=None, holdout: dict | None = None, churn_model: ChurnModel | None = None,
                   table: pd.DataFrame | None = None, profit: dict | None = None,
                   rules: dict | None = None, calibration_models=None) -> dict:
    """Every figure of the page's ``metrics.json``: :func:`lifecycle_metrics`
    (the issue's keys) plus ``customers``, ``active_customers``,
    ``share_high_risk`` (share of active customers at high churn risk -- a
    figure an alert rule can watch), ``holdout_accuracy``,
    ``churn_auc_active``, ``churn_top_decile_precision``, ``breakeven_spend``,
    ``share_below_breakeven`` and the calibration-period fit of the holdout
    check, ``calibration_bgnbd_r`` ... ``calibration_gg_v`` (None without a
    holdout)."""
    m = lifecycle_metrics(models=models, holdout=holdout, churn_model=churn_model, table=table, rules=rules)
    for attr, (prefix, names) in MODEL_PARAMETERS.items():
        fitted = getattr(calibration_models, attr, None)
        for k in names:
            m[f"calibration_{prefix}_{k}"] = float(fitted.params_[k]) if fitted is not None else None
    if table is not None:
        active = active_mask(table)
        m["customers"] = int(len(table))
        m["active_customers"] = int(active.sum())
        risk = table.loc[active.to_numpy(), "risk_level"]
        m["share_high_risk"] = (float((risk.astype(object) == "high").mean())
                                if risk.notna().any() and len(risk) else None)
    m["holdout_accuracy"] = holdout_accuracy(holdout)
    m["churn_auc_active"] = (float(churn_model.auc_active_) if churn_model is not None
                             and math.isfinite(churn_model.auc_active_) else None)
    m["churn_top_decile_precision"] = (float(churn_model.top_decile_precision_)
                                       if churn_model is not None else None)
    if profit is not None:
        m["breakeven_spend"] = float(profit["breakeven_spend"]) if math.isfinite(profit["breakeven_spend"]) else None
        m["share_below_breakeven"] = float(profit["share_below"])
    return m


def metric_cards(figures: dict, *, horizon: int = 12, currency: str = "", rules: dict | None = None) -> list[dict]:
    """Keyword sets for ``Report.metric``, one per figure (KPI cards first;
    figures that could not be computed still get their key, as None)."""
    stage_labels = {f"share_{s}": (f"Share of customers {s}", "{:.1%}", None, False)
                    for s in _rules(rules)["stage_order"]}
    cards = {**METRIC_CARDS, **stage_labels}
    out = []
    for key, value in figures.items():
        label, fmt, better, kpi = cards.get(key, (key, "{:,.4g}", None, False))
        if key == "clv_total":
            label = f"Customer value{' (' + currency + ')' if currency else ''}, next {horizon} months"
        out.append({"key": key, "value": value, "label": label, "fmt": fmt, "better": better,
                    "kpi": bool(kpi and value is not None)})
    return sorted(out, key=lambda c: not c["kpi"])
