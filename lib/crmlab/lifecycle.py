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

from crmlab.clv import _as_date, _ibis_table, customer_days, ibis_date, observed_window
from crmlab.config import MIN_GROUP_SIZE
from crmlab.exceptions import NoDataError, ParameterError

RULES_PATH = Path(__file__).with_name("lifecycle.yaml")

#: columns of ``exports/customer_lifecycle.csv`` (names fixed by the issue)
EXPORT_COLUMNS = ["customer_id", "stage", "p_alive", "expected_purchases", "clv",
                  "churn_probability", "risk_level"]

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
    as_of = _as_date(as_of) or observed_window(t, date_col=date_col)[1]
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
    as_of = _as_date(as_of) or observed_window(t, date_col=date_col)[1]
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
                   revenue_per_customer=rev.div(sizes.replace(0, np.nan), axis=0), period=period)


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
                    ticket_ts_col: str = "opened_at") -> pd.DataFrame:
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

    Returns
    -------
    pandas.DataFrame
    """
    r = _rules(rules)
    window = int(churn_window if churn_window is not None else r.get("churn_window", 180))
    recent = int(recent_days if recent_days is not None else r.get("recent_days", 180))
    t = _ibis_table(orders)
    end = _as_date(observation_end) or observed_window(t, date_col=date_col)[1]
    snaps = sorted({_as_date(s) for s in snapshots})
    if not snaps:
        raise ParameterError("no snapshot dates")
    d = customer_days(t, as_of=end, customer_id_col=customer_id_col, date_col=date_col,
                      amount_col=amount_col)
    aggs = {"first_day": d.first_day.min()}
    for k, s in enumerate(snaps):
        upto = d.day <= ibis_date(s)
        aggs[f"n_{k}"] = upto.sum()
        aggs[f"last_{k}"] = d.day.max(where=upto)
        aggs[f"rev_{k}"] = d.amount.sum(where=upto)
        aggs[f"recent_{k}"] = (upto & (d.day > ibis_date(s - dt.timedelta(days=recent)))).sum()
        aggs[f"future_{k}"] = ((d.day > ibis_date(s)) & (d.day <= ibis_date(s + dt.timedelta(days=window)))).sum()
    # sorted, so that row order (and any seeded sampling of rows) is reproducible
    wide = d.group_by("customer_id").aggregate(**aggs).to_pandas()
    wide = wide.sort_values("customer_id", kind="stable").reset_index(drop=True)
    extra = []
    if interactions is not None:
        extra.append(_interaction_features(interactions, snaps, recent, customer_id_col, interaction_ts_col))
    if tickets is not None:
        extra.append(_ticket_features(tickets, snaps, customer_id_col, ticket_ts_col))
    first = pd.to_datetime(wide["first_day"])
    frames = []
    for k, s in enumerate(snaps):
        ts = pd.Timestamp(s)
        rows = (first <= ts).to_numpy()
        w = wide.loc[rows]
        n = w[f"n_{k}"].to_numpy(float)
        tenure = _days_between(ts, first[rows])
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
        for e in extra:
            f = f.merge(e[k], on="customer_id", how="left")
        frames.append(f)
    out = pd.concat(frames, ignore_index=True)
    for col in ("interactions_recent", "tickets_recent"):
        if col in out:
            out[col] = out[col].fillna(0.0)
    out.attrs.update(churn_window=window, recent_days=recent, observation_end=end)
    return out


def _interaction_features(interactions, snaps, recent, cid, ts_col) -> list[pd.DataFrame]:
    t = _ibis_table(interactions)
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


def _ticket_features(tickets, snaps, cid, ts_col) -> list[pd.DataFrame]:
    t = _ibis_table(tickets)
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
                 max_importance_rows: int = 20_000, max_iter: int = 200, learning_rate: float = 0.1,
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
        self.features_ = [c for c in snapshots.columns if c not in _NOT_FEATURES
                          and snapshots[c].notna().any()]
        dates = sorted(lab["snapshot"].unique())
        test_date = dates[-1]
        window = pd.Timedelta(days=self.churn_window)
        train_dates = [s for s in dates if s + window <= test_date]
        if not train_dates:
            raise NoDataError("no snapshot early enough to train on without seeing the test period")
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


def describe_churn(model: ChurnModel, scored: pd.DataFrame | None = None) -> str:
    """One paragraph on the churn model: how good it is, what drives it, what to do."""
    text = (f"Tested on customers as they were on {model.split_['test_snapshot']:%Y-%m-%d} "
            f"(trained only on earlier dates), the model ranks churners above non-churners "
            f"{model.auc_:.0%} of the time (ROC AUC {model.auc_:.2f}); among the 10 % it flags "
            f"as most at risk, {model.top_decile_precision_:.0%} did stop buying, against "
            f"{model.base_rate_:.0%} overall.")
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
    churn_probability, risk_level``.
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
    return out[EXPORT_COLUMNS]


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
    most important first (value at risk, stage mix and movement, model
    check, profitability, survival), and at most five are returned.
    """
    cur = f" {currency}" if currency else ""
    out: list[str] = []
    if table is not None and "risk_level" in table and table["risk_level"].notna().any():
        high = table["risk_level"] == "high"
        clv_high = float(np.nansum(table.loc[high, "clv"])) if "clv" in table else math.nan
        clv_all = float(np.nansum(table["clv"])) if "clv" in table else math.nan
        s = f"{int(high.sum()):,} customers ({high.mean():.0%}) are at high risk of churning"
        if math.isfinite(clv_high) and clv_all > 0:
            s += (f"; together they hold {clv_high:,.0f}{cur} of expected value "
                  f"({clv_high / clv_all:.0%} of the {clv_all:,.0f}{cur} total)")
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
                        level: str = "high", top: int = 50, value_col: str = "clv") -> pd.DataFrame:
    """The customers at ``level`` risk, most valuable first.

    Takes the :func:`lifecycle_table` frame (and optionally the
    :func:`customer_activity` frame for revenue and recency) and returns at
    most ``top`` rows: ``customer_id, stage, churn_probability, clv``
    (+ ``revenue, recency_days``). Masking of personal data for the page is
    the page module's job; this frame holds ids only.
    """
    t = table[table["risk_level"] == level]
    if activity is not None:
        t = t.merge(activity[["customer_id", "revenue", "recency_days"]], on="customer_id", how="left")
    sort = value_col if value_col in t and t[value_col].notna().any() else "churn_probability"
    cols = [c for c in ["customer_id", "stage", "churn_probability", "clv", "revenue", "recency_days"]
            if c in t]
    return t.sort_values(sort, ascending=False).head(top)[cols].reset_index(drop=True)
