"""Segmentation: who are our customers? (the analytics of the segmentation report)

Every heavy step runs in the engine (ibis: DuckDB by default, PostgreSQL
too); pandas sees one row per customer. The notebook calls, in order::

    tables = dataset_tables(data)                 # orders + the optional tables present
    cust = customer_table(**tables, as_of=as_of)  # one row per customer (engine-side)
    scored = score_rfm(cust, rules)               # r/f/m scores, rfm_score, segment, tier
    clustered, model = cluster_customers(scored, rules=rules, random_state=seed)
    rfm_summary(...), tier_summary(...), cluster_summary(...), segment_profiles(...),
    concentration(...), golden_customers(...), drill_down(...), transitions(...),
    rfm_holdout_check(...), findings(...), metrics(...), segments_export(...)

Section functions return small dicts holding a ``table`` ready to show and a
``text`` paragraph (what it means and what to do) written from the numbers.

Definitions (as of the snapshot date ``as_of``; orders after it are ignored;
when ``orders.status`` exists only paid orders count -- a refunded or
cancelled order is not a purchase -- and a missing status counts as paid):

recency
    days from the last purchase day to ``as_of`` (0 = bought on the as-of day).
frequency
    distinct purchase days (same-day orders are one purchase, as in the
    buy-till-you-die literature); ``frequency="orders"`` counts orders instead.
monetary
    total paid revenue (sum of ``amount``, which is after discount).
scores
    1-5 by quantiles of rank, ties kept together: a customer's score is
    ``1 + floor(5 * share of customers strictly worse)``. So score 4 means
    "strictly better than at least 60% but not 80% of customers"; customers
    with equal values always share a score; a tie group is never split by
    an arbitrary order. Frequency is heavily tied (most customers bought on
    one day only): that whole group is strictly worse than nobody, so it
    gets f_score 1, and the next group starts at the score its rank earns
    (e.g. 4 when 60% bought once) -- scores in between are then unused, which
    is honest: there is nothing to tell those customers apart. (Likewise a
    large tie at the top scores what its share of worse customers earns.)
rfm_score
    weighted sum of the three scores (weights in segments.yaml; 3-15 with
    unit weights), higher is better.
segment / tier
    first matching rule of the segment map / value tiers in segments.yaml
    (overridable with a YAML file, see :func:`load_rules`).
cluster
    k-means on behaviour (:class:`BehaviourSegmenter`): what customers buy
    (category mix), how much per order, where (channel mix), their discount
    habit and age, with recency/frequency/tenure weighing little (they are
    purchase-timing noise and RFM's subject already; weights and reasons in
    segments.yaml); k chosen by silhouette among the k stable across seeds;
    each cluster named in plain words by the naming rules of segments.yaml.
"""

from __future__ import annotations

import ast
import datetime as dt
import math
import re
from collections.abc import Callable, Iterable, Mapping
from itertools import combinations
from pathlib import Path
from typing import Any

import ibis
import ibis.expr.types as ir
import numpy as np
import pandas as pd
import yaml
from scipy import stats
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_score
from threadpoolctl import threadpool_limits

from crmlab import config
from crmlab.engine import as_of_literal, latest_order_date
from crmlab.exceptions import NoDataError, ParameterError

RULES_PATH = Path(__file__).with_name("segments.yaml")

# orders with these statuses are purchases (a null status counts as paid)
PAID_STATUSES: tuple[str, ...] = ("paid",)

# exports/segments.csv, in this order (issue 4)
EXPORT_COLUMNS: tuple[str, ...] = (
    "customer_id", "recency", "frequency", "monetary", "r_score", "f_score",
    "m_score", "rfm_score", "segment", "tier", "cluster",
)

# top-level sections of segments.yaml; an override file may set any of them
RULE_SECTIONS: tuple[str, ...] = (
    "rfm_score_weights", "segments", "tiers", "age_bands", "cluster_weights",
    "mix_prior_orders", "cluster_naming",
)
# rule key -> score column it ranges over (fm = mean of f and m)
SCORE_KEYS: dict[str, str] = {"r": "r_score", "f": "f_score", "m": "m_score", "fm": "fm_score"}
RULE_TEXT_KEYS: tuple[str, ...] = ("name", "label", "meaning", "action")
N_SCORES = 5

# categorical customer attributes carried into the customer table for profiles
PROFILE_ATTRIBUTES: tuple[str, ...] = ("gender", "region", "country", "acquisition_channel")
# the most frequent levels kept as mix columns; the rest count as "other"
MAX_CHANNELS = 8
MAX_CATEGORIES = 12
OTHER = "other"
MAX_FILTER_LENGTH = 2000


# --------------------------------------------------------------------------
# rules (segments.yaml)
# --------------------------------------------------------------------------

def load_rules(path: str | Path | Mapping | None = None) -> dict:
    """The segment map, value tiers and clustering rules.

    Parameters
    ----------
    path : str | Path | dict | None
        A YAML file (or an already loaded dict) whose top-level sections
        replace the shipped defaults of ``segments.yaml``; sections it does not
        mention keep their defaults. The dict sections ``rfm_score_weights``
        and ``cluster_weights`` are merged key by key. ``None`` or ``""``: the
        defaults.

    Returns
    -------
    dict
        ``rfm_score_weights, segments, tiers, age_bands, cluster_weights,
        mix_prior_orders, cluster_naming``, validated.

    Raises
    ------
    ParameterError
        The file is missing or a section, key or range is invalid (the message
        names it).

    Examples
    --------
    >>> rules = load_rules()
    >>> [s["name"] for s in rules["segments"]][:3]
    ['champions', 'loyal', 'new']
    """
    rules = yaml.safe_load(RULES_PATH.read_text(encoding="utf-8"))
    if path in (None, ""):
        return _validated(rules)
    if isinstance(path, Mapping):
        override = dict(path)
    else:
        p = Path(path)
        if not p.is_file():
            raise ParameterError(f"segment map file not found: {p}")
        try:
            override = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ParameterError(f"segment map {p} is not valid YAML: {exc}") from None
        if not isinstance(override, dict):
            raise ParameterError(f"segment map {p} must be a mapping of sections")
    unknown = sorted(set(override) - set(RULE_SECTIONS))
    if unknown:
        raise ParameterError(f"segment map: unknown section(s) {unknown}; known: {list(RULE_SECTIONS)}")
    for key, value in override.items():
        if key in ("rfm_score_weights", "cluster_weights") and isinstance(value, Mapping):
            rules[key] = {**rules[key], **value}
        else:
            rules[key] = value
    return _validated(rules)


def _rules(rules: Mapping | str | Path | None) -> dict:
    """Rules as given (already loaded) or loaded from a path / the defaults."""
    if isinstance(rules, Mapping) and "segments" in rules and "tiers" in rules:
        return dict(rules)
    return load_rules(rules)


def _validated(rules: dict) -> dict:
    for section in ("segments", "tiers"):
        items = rules.get(section)
        if not isinstance(items, list) or not items:
            raise ParameterError(f"segment map: section {section!r} must be a non-empty list of rules")
        names = []
        for i, rule in enumerate(items, 1):
            if not isinstance(rule, Mapping) or not isinstance(rule.get("name"), str) or not rule["name"].strip():
                raise ParameterError(f"segment map: {section} rule {i} needs a name")
            bad = sorted(set(rule) - set(SCORE_KEYS) - set(RULE_TEXT_KEYS))
            if bad:
                raise ParameterError(
                    f"segment map: {section} rule {rule['name']!r} has unknown key(s) {bad}; "
                    f"known: {list(SCORE_KEYS) + list(RULE_TEXT_KEYS)}")
            for key in SCORE_KEYS:
                if key in rule:
                    rng = rule[key]
                    ok = (isinstance(rng, (list, tuple)) and len(rng) == 2
                          and all(isinstance(v, (int, float)) for v in rng)
                          and 1 <= rng[0] <= rng[1] <= N_SCORES)
                    if not ok:
                        raise ParameterError(
                            f"segment map: {section} rule {rule['name']!r} key {key!r} must be "
                            f"[low, high] with 1 <= low <= high <= {N_SCORES}")
            names.append(rule["name"])
        if len(set(names)) != len(names):
            raise ParameterError(f"segment map: {section} names must be unique")
    weights = rules.get("rfm_score_weights") or {}
    if set(weights) - {"r", "f", "m"} or not all(isinstance(v, (int, float)) for v in weights.values()):
        raise ParameterError("segment map: rfm_score_weights takes numbers for r, f, m")
    cw = rules.get("cluster_weights") or {}
    if not all(isinstance(v, (int, float)) and v >= 0 for v in cw.values()):
        raise ParameterError("segment map: cluster_weights must be numbers >= 0")
    bands = rules.get("age_bands") or []
    lows = [b[0] for b in bands]
    if lows != sorted(lows) or len(set(lows)) != len(lows):
        raise ParameterError("segment map: age_bands must be [lower bound, label] in increasing order")
    prior = rules.get("mix_prior_orders", 1.0)
    if not isinstance(prior, (int, float)) or prior < 0:
        raise ParameterError("segment map: mix_prior_orders must be a number >= 0")
    return rules


def slug(name: str) -> str:
    """A segment name as a metric key part: ``"at risk"`` -> ``"at_risk"``."""
    return re.sub(r"[^0-9a-z]+", "_", str(name).lower()).strip("_") or "unnamed"


# --------------------------------------------------------------------------
# engine side: one row per customer
# --------------------------------------------------------------------------

def dataset_tables(data) -> dict[str, ir.Table]:
    """The tables of a :class:`crmlab.sources.Dataset` that segmentation uses.

    Returns ``{"orders": ..., "order_lines": ..., "products": ..., "customers":
    ..., "interactions": ..., "tickets": ...}`` with only the tables present,
    ready for ``customer_table(**dataset_tables(data), as_of=as_of)``.
    """
    out = {"orders": data.table("orders")}
    for name in ("order_lines", "products", "customers", "interactions", "tickets"):
        if data.has(name):
            out[name] = data.table(name)
    return out


def resolve_as_of(orders: ir.Table, as_of: str | dt.date | None = None, *,
                  date_col: str = "order_date") -> dt.date:
    """The snapshot date: ``as_of`` as a date, or the latest order date when
    it is empty. Raises ParameterError for an unreadable date."""
    if as_of in (None, ""):
        return latest_order_date(orders, date_col=date_col)
    if isinstance(as_of, dt.datetime):
        return as_of.date()
    if isinstance(as_of, dt.date):
        return as_of
    try:
        return dt.date.fromisoformat(str(as_of)[:10])
    except ValueError:
        raise ParameterError("as_of must be a date YYYY-MM-DD (parameter as_of)") from None


def _purchases(orders: ir.Table, cutoff, *, date_col: str, status_col: str | None,
               paid_statuses: Iterable[str] | None, start=None) -> ir.Table:
    t = orders.filter(orders[date_col] <= cutoff)
    if start is not None:
        t = t.filter(t[date_col] > start)
    if status_col and status_col in t.columns and paid_statuses is not None:
        status = _clean_text(t[status_col])
        t = t.filter(status.isin([str(s).lower() for s in paid_statuses]) | status.isnull())
    return t


def _clean_text(col: ir.Value) -> ir.Value:
    """Categorical text as compared: trimmed, lower case, empty = missing."""
    value = col.cast("string").strip().lower()
    return (value == "").ifelse(ibis.null("string"), value)


def _rfm_aggregates(t: ir.Table, *, date_col: str, amount_col: str) -> dict:
    return dict(
        first_purchase=t[date_col].min(),
        last_purchase=t[date_col].max(),
        n_orders=t[date_col].count(),
        n_days=t[date_col].date().nunique(),
        monetary=t[amount_col].sum(),
    )


def _with_rfm(agg: ir.Table, day: dt.date, frequency: str) -> ir.Table:
    if frequency not in ("days", "orders"):
        raise ParameterError(f"frequency must be 'days' or 'orders', not {frequency!r} (parameter frequency)")
    snap = ibis.literal(day, type="date")
    return agg.mutate(
        recency=snap.delta(agg.last_purchase.date(), unit="day"),
        tenure=snap.delta(agg.first_purchase.date(), unit="day"),
        frequency=agg.n_days if frequency == "days" else agg.n_orders,
    )


def rfm_table(orders: ir.Table, as_of: str | dt.date | None = None, *, frequency: str = "days",
              paid_statuses: Iterable[str] | None = PAID_STATUSES,
              customer_id_col: str = "customer_id", date_col: str = "order_date",
              amount_col: str = "amount", status_col: str | None = "status") -> ir.Table:
    """Recency, frequency and monetary value per customer, in the engine.

    Transforms a table of the form ``customer_id, order_date, amount[, status]``
    (one row per order) into one row per customer who bought up to ``as_of``::

        customer_id, recency, frequency, monetary, n_orders, n_days, tenure,
        first_purchase, last_purchase

    ``recency``/``tenure`` are days from the last/first purchase day to
    ``as_of``; ``frequency`` is distinct purchase days (``frequency="days"``)
    or orders; ``monetary`` is paid revenue. Orders after ``as_of`` and
    non-paid orders are ignored (see the module docstring).

    Parameters
    ----------
    orders : ibis.Table
    as_of : str | date | None
        Snapshot date; empty = the latest order date.
    frequency : {"days", "orders"}
    paid_statuses : iterable of str | None
        Statuses that are purchases; ``None`` keeps every order.

    Returns
    -------
    ibis.Table

    Examples
    --------
    >>> rfm_table(data.table("orders"), "2026-06-30").to_pandas()  # doctest: +SKIP
    """
    day = resolve_as_of(orders, as_of, date_col=date_col)
    t = _purchases(orders, as_of_literal(day), date_col=date_col, status_col=status_col,
                   paid_statuses=paid_statuses)
    agg = t.group_by(customer_id_col).aggregate(**_rfm_aggregates(t, date_col=date_col, amount_col=amount_col))
    agg = _with_rfm(agg, day, frequency)
    return agg.select(customer_id_col, "recency", "frequency", "monetary", "n_orders", "n_days",
                      "tenure", "first_purchase", "last_purchase")


def _top_levels(t: ir.Table, col: str, weight, limit: int) -> list:
    counts = (t.filter(t[col].notnull()).group_by(col).aggregate(_w=weight)
              .order_by([ibis.desc("_w"), col]).limit(limit).to_pandas())
    return [v for v in counts[col].tolist() if str(v).strip() != ""]


def customer_table(orders: ir.Table, as_of: str | dt.date | None = None, *,
                   order_lines: ir.Table | None = None, products: ir.Table | None = None,
                   customers: ir.Table | None = None, interactions: ir.Table | None = None,
                   tickets: ir.Table | None = None, frequency: str = "days",
                   paid_statuses: Iterable[str] | None = PAID_STATUSES,
                   customer_id_col: str = "customer_id", date_col: str = "order_date",
                   amount_col: str = "amount", status_col: str | None = "status",
                   channel_col: str = "channel", discount_col: str = "discount",
                   max_channels: int = MAX_CHANNELS, max_categories: int = MAX_CATEGORIES) -> pd.DataFrame:
    """Everything segmentation needs, one row per customer, computed in the engine.

    Transforms the order-level tables (``orders`` required; ``order_lines``
    (+ ``products`` for the category), ``customers``, ``interactions``,
    ``tickets`` optional -- each adds its columns when present) into a pandas
    frame with one row per customer who bought up to ``as_of``::

        customer_id, recency, frequency, monetary, n_orders, n_days, tenure,
        first_purchase, last_purchase, aov              (always)
        discount, discount_share                        (orders.discount)
        ch_<channel> ...                                (orders.channel: share of the orders
                                                         whose channel is known)
        line_value, cat_<category> ...                  (order_lines: share of line value)
        n_interactions                                  (interactions up to as_of)
        n_tickets, satisfaction, nps                    (tickets up to as_of)
        gender, region, country, acquisition_channel, age   (customers)

    Channel, category and status text is compared trimmed and in lower case
    (``' APP'`` is ``app``). Only the ``max_channels`` / ``max_categories``
    most frequent levels get a column; the rest make ``ch_other`` /
    ``cat_other``. Only the per-customer result reaches pandas.

    Parameters
    ----------
    orders : ibis.Table
        ``customer_id, order_date, amount`` and optionally ``order_id, status,
        channel, discount``.
    as_of : str | date | None
        Snapshot date; empty = the latest order date. Orders, interactions and
        tickets after it are ignored.

    Returns
    -------
    pandas.DataFrame
        Sorted by customer id; ``attrs["as_of"]`` holds the snapshot date.

    Raises
    ------
    NoDataError
        No paid order up to ``as_of``.

    Examples
    --------
    >>> cust = customer_table(**dataset_tables(data), as_of="2026-06-30")  # doctest: +SKIP
    """
    cid = customer_id_col
    day = resolve_as_of(orders, as_of, date_col=date_col)
    cutoff = as_of_literal(day)
    t = _purchases(orders, cutoff, date_col=date_col, status_col=status_col, paid_statuses=paid_statuses)
    aggs = _rfm_aggregates(t, date_col=date_col, amount_col=amount_col)
    channels: list = []
    if channel_col and channel_col in t.columns:
        t = t.mutate(_channel=_clean_text(t[channel_col]))
        channels = _top_levels(t, "_channel", t[date_col].count(), max_channels)
        aggs["_ch_known"] = t._channel.count()
        for i, value in enumerate(channels):
            aggs[f"_ch{i}"] = t[date_col].count(where=t._channel == value)
    if discount_col and discount_col in t.columns:
        aggs["discount"] = t[discount_col].fill_null(0).sum()
    agg = _with_rfm(t.group_by(cid).aggregate(**aggs), day, frequency)

    parts: list[ir.Table] = []
    categories: list = []
    if order_lines is not None and "order_id" in order_lines.columns and "order_id" in t.columns:
        lines = order_lines
        if ("category" not in lines.columns and products is not None
                and {"product_id", "category"} <= set(products.columns) and "product_id" in lines.columns):
            lines = lines.left_join(products.select("product_id", "category"), "product_id")
        if "category" in lines.columns:
            if {"quantity", "unit_price"} <= set(lines.columns):
                value = lines.quantity.fill_null(1).cast("float64") * lines.unit_price.cast("float64")
            elif "unit_price" in lines.columns:
                value = lines.unit_price.cast("float64")
            else:
                value = ibis.literal(1.0)
            lines = lines.select("order_id", category=_clean_text(lines.category), _value=value)
            categories = _top_levels(lines, "category", lines._value.sum(), max_categories)
            lj = lines.join(t.select("order_id", cid), "order_id")
            cat_aggs = {"line_value": lj._value.sum()}
            for i, value in enumerate(categories):
                cat_aggs[f"_cat{i}"] = lj._value.sum(where=lj.category == value)
            parts.append(lj.group_by(cid).aggregate(**cat_aggs))
    if interactions is not None and cid in interactions.columns:
        it = interactions
        if "ts" in it.columns:
            it = it.filter(it.ts <= cutoff)
        parts.append(it.group_by(cid).aggregate(n_interactions=it[cid].count()))
    if tickets is not None and cid in tickets.columns:
        tk = tickets
        if "opened_at" in tk.columns:
            tk = tk.filter(tk.opened_at <= cutoff)
        tk_aggs = {"n_tickets": tk[cid].count()}
        for col in ("satisfaction", "nps"):
            if col in tk.columns:
                tk_aggs[col] = tk[col].cast("float64").mean()
        parts.append(tk.group_by(cid).aggregate(**tk_aggs))
    birth_col = None
    if customers is not None and cid in customers.columns:
        cols = [c for c in PROFILE_ATTRIBUTES if c in customers.columns]
        if "birth_date" in customers.columns:
            birth_col = "birth_date"
            cols.append(birth_col)
        if cols:
            parts.append(customers.select(cid, *cols))
    for part in parts:
        agg = agg.left_join(part, cid).drop(f"{cid}_right")

    df = agg.to_pandas()
    if df.empty:
        raise NoDataError(f"table orders has no paid order up to {day.isoformat()} (check as_of)")
    # a customer id repeated in customers would repeat the row: keep the first
    df = df.drop_duplicates(cid).sort_values(cid, kind="stable").reset_index(drop=True)
    first = [cid, "recency", "frequency", "monetary", "n_orders", "n_days", "tenure"]
    df = df[first + [c for c in df.columns if c not in first]]
    n = df["n_orders"].astype(float)
    df["aov"] = df["monetary"] / n
    if "discount" in df.columns:
        gross = df["monetary"] + df["discount"]
        df["discount_share"] = (df["discount"] / gross.where(gross > 0)).clip(0, 1)
    if channels:
        known = df.pop("_ch_known").astype(float)
        known = known.where(known > 0)
        shares = {f"ch_{_level_name(v)}": df.pop(f"_ch{i}").astype(float) / known for i, v in enumerate(channels)}
        shares = pd.DataFrame(shares, index=df.index)
        rest = (1 - shares.sum(axis=1)).clip(lower=0).where(known.notna())
        if (rest > 1e-9).any():
            shares[f"ch_{OTHER}"] = shares.get(f"ch_{OTHER}", 0.0) + rest
        df = pd.concat([df, shares], axis=1)
    if categories:
        total = df["line_value"].where(df["line_value"] > 0)
        shares = {f"cat_{_level_name(v)}": df.pop(f"_cat{i}").fillna(0) / total for i, v in enumerate(categories)}
        shares = pd.DataFrame(shares, index=df.index)
        rest = (1 - shares.sum(axis=1)).clip(lower=0).where(total.notna())
        if (rest > 1e-9).any():
            shares[f"cat_{OTHER}"] = shares.get(f"cat_{OTHER}", 0.0) + rest
        df = pd.concat([df, shares], axis=1)
        df["line_value"] = df["line_value"].fillna(0.0)
    for col in ("n_interactions", "n_tickets"):
        if col in df.columns:
            df[col] = df[col].fillna(0).astype("int64")
    if birth_col:
        birth = df.pop(birth_col)
        if not pd.api.types.is_datetime64_any_dtype(birth):
            birth = pd.to_datetime(birth, errors="coerce", format="ISO8601")
        age = (pd.Timestamp(day) - birth).dt.days / 365.25
        df["age"] = np.floor(age.where((age >= 0) & (age < 120)))
    df.attrs["as_of"] = day.isoformat()
    return df


def _level_name(value) -> str:
    return str(value).strip()


# --------------------------------------------------------------------------
# RFM scores, segments and tiers
# --------------------------------------------------------------------------

def quantile_score(values, *, higher_is_better: bool = True, n_scores: int = N_SCORES) -> np.ndarray:
    """Scores 1..n_scores by rank quantiles, ties kept together.

    ``score = 1 + floor(n_scores * share of values strictly worse)``: equal
    values always share a score, the worst tie group gets 1, and a tie group
    larger than one quantile makes the scores it spans unused (e.g. when 60%
    of customers bought once they all get 1 and the next group gets 4).
    Missing values score 1.

    Parameters
    ----------
    values : array-like of numbers, length n
    higher_is_better : bool
        False for recency (fewer days since the last purchase is better).

    Returns
    -------
    numpy.ndarray of int64, length n, values in 1..n_scores

    Examples
    --------
    >>> quantile_score([1, 1, 1, 2, 5]).tolist()
    [1, 1, 1, 4, 5]
    >>> quantile_score([0, 10, 20, 30, 40], higher_is_better=False).tolist()
    [5, 4, 3, 2, 1]
    """
    s = pd.Series(np.asarray(values, dtype=float))
    n = int(s.notna().sum())
    if n == 0:
        return np.ones(len(s), dtype="int64")
    rank = s.rank(method="min", ascending=higher_is_better, na_option="keep")
    worse = (rank - 1).fillna(0).to_numpy("int64")
    return (1 + (worse * n_scores) // n).astype("int64")


def assign_rules(scores: pd.DataFrame, rules: list[Mapping], *, default: str = OTHER) -> np.ndarray:
    """Name each row by the first rule whose score ranges all hold.

    Parameters
    ----------
    scores : pandas.DataFrame
        ``r_score, f_score, m_score`` (1-5), one row per customer.
    rules : list of dict
        ``{"name": ..., "r": [lo, hi], "f": ..., "m": ..., "fm": ...}``
        (inclusive ranges; ``fm`` = mean of f and m); a rule without ranges
        matches every row.
    default : str
        Name of rows no rule matches.

    Returns
    -------
    numpy.ndarray of str, one per row.
    """
    values = {"r": scores["r_score"].to_numpy(float), "f": scores["f_score"].to_numpy(float),
              "m": scores["m_score"].to_numpy(float)}
    values["fm"] = (values["f"] + values["m"]) / 2
    out = np.full(len(scores), default, dtype=object)
    free = np.ones(len(scores), dtype=bool)
    for rule in rules:
        hit = free.copy()
        for key in SCORE_KEYS:
            if key in rule:
                lo, hi = rule[key]
                hit &= (values[key] >= lo) & (values[key] <= hi)
        out[hit] = rule["name"]
        free &= ~hit
    return out


def score_rfm(cust: pd.DataFrame, rules: Mapping | str | Path | None = None, *,
              recency_col: str = "recency", frequency_col: str = "frequency",
              monetary_col: str = "monetary") -> pd.DataFrame:
    """Add RFM scores, ``rfm_score``, ``segment`` and ``tier``.

    Takes one row per customer with ``recency, frequency, monetary`` (from
    :func:`customer_table` or :func:`rfm_table`) and returns a copy with
    ``r_score, f_score, m_score`` (1-5, see :func:`quantile_score`),
    ``rfm_score`` (weighted sum, higher is better), ``segment`` and ``tier``
    (first matching rule of the segment map and value tiers).

    Parameters
    ----------
    cust : pandas.DataFrame
    rules : dict | path | None
        From :func:`load_rules`; a path or None is loaded.

    Returns
    -------
    pandas.DataFrame
        The same rows plus the six columns.

    Examples
    --------
    >>> scored = score_rfm(cust)  # doctest: +SKIP
    >>> scored.segment.value_counts()  # doctest: +SKIP
    """
    rules = _rules(rules)
    out = cust.copy()
    out["r_score"] = quantile_score(out[recency_col], higher_is_better=False)
    out["f_score"] = quantile_score(out[frequency_col])
    out["m_score"] = quantile_score(out[monetary_col])
    w = {"r": 1, "f": 1, "m": 1, **rules.get("rfm_score_weights", {})}
    total = w["r"] * out["r_score"] + w["f"] * out["f_score"] + w["m"] * out["m_score"]
    integral = all(float(v).is_integer() for v in w.values())
    out["rfm_score"] = total.astype("int64") if integral else total.astype(float)
    out["segment"] = assign_rules(out, rules["segments"])
    out["tier"] = assign_rules(out, rules["tiers"])
    return out


def _ordered_names(rules_list: list[Mapping], present: Iterable[str]) -> list[str]:
    names = [r["name"] for r in rules_list]
    extra = sorted(set(present) - set(names))
    return names + extra


def rfm_summary(scored: pd.DataFrame, rules: Mapping | str | Path | None = None, *,
                min_size: int = config.MIN_GROUP_SIZE) -> dict:
    """The RFM section: one row per segment, the score distribution and its
    paragraph.

    Parameters
    ----------
    scored : pandas.DataFrame
        From :func:`score_rfm`.

    Returns
    -------
    dict
        ``table`` (segment, label, customers, share_customers, share_revenue,
        median_recency, mean_frequency, mean_monetary, meaning, action; in
        segment-map order; segments below ``min_size`` customers have their
        figures blanked), ``scores`` (customers per score 1-5 for r, f, m),
        ``text`` (what it means and what to do).
    """
    rules = _rules(rules)
    info = {r["name"]: r for r in rules["segments"]}
    total_rev = float(scored["monetary"].sum()) or 1.0
    n = len(scored)
    g = scored.groupby("segment", observed=True)
    rows = []
    for name in _ordered_names(rules["segments"], scored["segment"].unique()):
        size = int((scored["segment"] == name).sum())
        row = {"segment": name, "label": info.get(name, {}).get("label", name), "customers": size}
        if size >= min_size:
            sub = g.get_group(name)
            row.update(share_customers=size / n, share_revenue=float(sub["monetary"].sum()) / total_rev,
                       median_recency=float(sub["recency"].median()),
                       mean_frequency=float(sub["frequency"].mean()),
                       mean_monetary=float(sub["monetary"].mean()))
        elif size:
            row.update(share_customers=np.nan, share_revenue=np.nan, median_recency=np.nan,
                       mean_frequency=np.nan, mean_monetary=np.nan)
        else:
            row.update(share_customers=0.0, share_revenue=0.0, median_recency=np.nan,
                       mean_frequency=np.nan, mean_monetary=np.nan)
        row.update(meaning=info.get(name, {}).get("meaning", ""), action=info.get(name, {}).get("action", ""))
        rows.append(row)
    table = pd.DataFrame(rows)
    scores = pd.DataFrame({
        dim: scored[f"{dim}_score"].value_counts().reindex(range(1, N_SCORES + 1), fill_value=0)
        for dim in ("r", "f", "m")
    }).rename_axis("score")

    shown = table.dropna(subset=["share_revenue"])
    shown = shown[shown["customers"] > 0]
    parts = []
    if len(shown):
        top = shown.sort_values("share_revenue", ascending=False).iloc[0]
        parts.append(f"{_cap(top['segment'])} ({_n(top['customers'])} customers, {_pct(top['share_customers'])}) "
                     f"bring {_pct(top['share_revenue'])} of revenue.")
    risk = shown[shown["segment"] == "at risk"]
    if len(risk) and risk.iloc[0]["customers"] > 0:
        r = risk.iloc[0]
        parts.append(f"At risk customers hold {_pct(r['share_revenue'])} of revenue but last bought a median "
                     f"{_n(r['median_recency'])} days ago: {info.get('at risk', {}).get('action', 'win them back')}.")
    parts.append(_tie_sentence(scored))
    new = shown[shown["segment"] == "new"]
    if len(new) and new.iloc[0]["customers"] > 0:
        parts.append(f"{_n(new.iloc[0]['customers'])} new customers made their first purchase recently: "
                     f"{info.get('new', {}).get('action', 'onboard them')}.")
    return {"table": table, "scores": scores, "text": " ".join(p for p in parts if p)}


def _tie_sentence(scored: pd.DataFrame) -> str:
    freq = scored["frequency"]
    low = freq.min()
    share_low = float((freq == low).mean())
    if share_low > 1 / N_SCORES:
        used = sorted(scored["f_score"].unique().tolist())
        unit = "day" if low == 1 else "days"
        return (f"Scores are quintiles of rank with ties kept together: {_pct(share_low)} of customers "
                f"bought on {_n(low)} {unit} only, so they all share frequency score 1 and the frequency "
                f"scores in use are {', '.join(str(int(u)) for u in used)}.")
    return "Scores are quintiles of rank with ties kept together (equal values share a score)."


def tier_summary(scored: pd.DataFrame, rules: Mapping | str | Path | None = None, *,
                 min_size: int = config.MIN_GROUP_SIZE) -> dict:
    """The value tiers: one row per tier (VIP, ordinary, potential, low by
    default) with customers, shares of customers and revenue, mean spend, and
    a paragraph. Returns ``{"table", "text"}``."""
    rules = _rules(rules)
    info = {r["name"]: r for r in rules["tiers"]}
    n = len(scored)
    total_rev = float(scored["monetary"].sum()) or 1.0
    rows = []
    for name in _ordered_names(rules["tiers"], scored["tier"].unique()):
        sub = scored[scored["tier"] == name]
        size = len(sub)
        small = 0 < size < min_size
        rows.append({
            "tier": name, "customers": size,
            "share_customers": np.nan if small else size / n,
            "share_revenue": np.nan if small else float(sub["monetary"].sum()) / total_rev,
            "mean_monetary": np.nan if small or not size else float(sub["monetary"].mean()),
            "meaning": info.get(name, {}).get("meaning", ""),
        })
    table = pd.DataFrame(rows)
    first = table.iloc[0]
    text = ""
    if first["customers"] >= min_size:
        text = (f"{first['tier']} customers are {_pct(first['share_customers'])} of customers and bring "
                f"{_pct(first['share_revenue'])} of revenue; each spent {_money(first['mean_monetary'])} "
                f"on average against {_money(scored['monetary'].mean())} overall.")
    pot = table[table["tier"] == "potential"]
    if len(pot) and pot.iloc[0]["customers"] >= min_size:
        text += (f" {_n(pot.iloc[0]['customers'])} potential customers bought recently but little so far: "
                 f"they are where growth campaigns pay off first.")
    return {"table": table, "text": text.strip()}


# --------------------------------------------------------------------------
# behavioural clustering
# --------------------------------------------------------------------------

def behaviour_features(cust: pd.DataFrame, *, rules: Mapping | str | Path | None = None) -> pd.DataFrame:
    """Per-customer behavioural features for clustering, named ``group:feature``.

    Transforms the customer table (:func:`customer_table`) into numeric
    features, one row per customer (same index), built from what exists:

    ``spend:log_aov``                 log(1 + average order value)
    ``discount:discount_share``       discount / gross spend
    ``channel:<c>``                   sqrt of the share of orders per channel
    ``category:<c>``                  sqrt of the share of spend per category
    ``demographics:age``              age in years (missing: left NaN)
    ``engagement:log_interactions``   log(1 + interactions per 30 days of tenure)
    ``engagement:log_tickets``        log(1 + tickets per order)
    ``rfm:log_recency``, ``rfm:log_frequency``, ``rfm:log_tenure``

    Mix shares (channel, category, discount) of customers with few orders
    are noisy -- a single order is all one channel -- so each is shrunk
    towards the overall mix as if ``mix_prior_orders`` (segments.yaml)
    more orders followed it: ``(n * share + k * overall) / (n + k)``. The
    square root of shares (Hellinger) keeps small shares from vanishing.

    Returns
    -------
    pandas.DataFrame of float, one column per feature.
    """
    rules = _rules(rules)
    k = float(rules.get("mix_prior_orders", 1.0))
    n = cust["n_orders"].to_numpy(float)
    feats: dict[str, np.ndarray] = {"spend:log_aov": np.log1p(cust["aov"].clip(lower=0).to_numpy(float))}

    def shrink(share: np.ndarray, overall: float, weight: np.ndarray) -> np.ndarray:
        share = np.where(np.isnan(share), overall, share)
        return (weight * share + k * overall) / (weight + k) if k > 0 else share

    if "discount_share" in cust.columns:
        gross = (cust["monetary"] + cust["discount"]).to_numpy(float)
        overall = float(cust["discount"].sum() / gross.sum()) if gross.sum() > 0 else 0.0
        feats["discount:discount_share"] = shrink(cust["discount_share"].to_numpy(float), overall, n)
    for prefix, group, weight_col in (("ch_", "channel", "n_orders"), ("cat_", "category", "line_value")):
        cols = [c for c in cust.columns if c.startswith(prefix)]
        if len(cols) < 2:
            continue
        w = cust[weight_col].to_numpy(float)
        shares = cust[cols].to_numpy(float)
        known = ~np.isnan(shares).any(axis=1)
        overall = (np.nansum(shares[known] * w[known, None], axis=0) / max(w[known].sum(), 1e-12))
        for j, col in enumerate(cols):
            feats[f"{group}:{col[len(prefix):]}"] = np.sqrt(np.clip(shrink(shares[:, j], overall[j], n), 0, 1))
    if "age" in cust.columns and cust["age"].notna().any():
        feats["demographics:age"] = cust["age"].to_numpy(float)
    tenure = cust["tenure"].to_numpy(float)
    if "n_interactions" in cust.columns:
        feats["engagement:log_interactions"] = np.log1p(cust["n_interactions"].to_numpy(float) * 30 / (tenure + 30))
    if "n_tickets" in cust.columns:
        feats["engagement:log_tickets"] = np.log1p(cust["n_tickets"].to_numpy(float) / n)
    feats["rfm:log_recency"] = np.log1p(cust["recency"].to_numpy(float))
    feats["rfm:log_frequency"] = np.log1p(cust["frequency"].to_numpy(float))
    feats["rfm:log_tenure"] = np.log1p(tenure)
    return pd.DataFrame(feats, index=cust.index)


class BehaviourSegmenter(ClusterMixin, BaseEstimator):
    """K-means on weighted feature groups, with k chosen by silhouette and
    stability.

    Features come named ``group:feature`` (:func:`behaviour_features`).
    Each group is centred and scaled so that its total variance is 1 (a
    single column: standard scaling), then multiplied by its weight, so a
    group's pull on the k-means distance is its weight squared whatever its
    number of columns. Missing values are replaced by the column median.

    k is chosen on a sample of ``sample_size`` customers. For each k in
    ``k_range`` (inclusive), k-means is fitted ``n_seeds`` times, each on a
    different random ``subsample`` of the sample and with its own seed (best
    of ``n_init`` k-means++ starts, so an unlucky start does not pass for
    instability), and the labels the runs give the whole sample are
    compared:

    * stability = median adjusted Rand index between the pairs of runs
      (Ben-Hur, Elisseeff & Guyon 2002, "A stability based method for
      discovering structure in clustered data", PSB 7:6-17): a k that
      matches real structure is found again from other data and seeds;
    * silhouette = mean silhouette width ``s(i) = (b - a) / max(a, b)``
      (Rousseeuw 1987, "Silhouettes: a graphical aid to the interpretation
      and validation of cluster analysis", J. Comput. Appl. Math. 20:53-65)
      of the best run (lowest within-cluster sum of squares on the sample),
      on ``silhouette_size`` customers.

    ``k_`` is the k with the highest silhouette among those with stability
    >= ``min_stability``; when none is that stable, the most stable k. The
    final model starts from the centres of the best run at ``k_``, is
    refined on up to ``fit_size`` customers and labels everyone; clusters
    are numbered by size, largest first. Samples keep the cost flat:
    choosing k costs the same for ten thousand and ten million customers.

    Parameters
    ----------
    k : int | None
        A fixed number of clusters (its scores are still computed); None =
        choose.
    k_range : (int, int)
    weights : dict | None
        Group -> weight; groups not named get the shipped defaults
        (segments.yaml ``cluster_weights``), unknown groups 1. Weight 0 drops
        a group.
    n_seeds, subsample, sample_size, silhouette_size, fit_size, n_init, min_stability
        See above.
    n_threads : int | None
        Threads for k-means (None = all cores). One by default: the runs are
        on samples, and reports run side by side, where OpenMP threads
        fighting for cores are many times slower than one thread.
    random_state : int | None
        The one seed all randomness flows from.

    Attributes
    ----------
    k_ : int
    k_scores_ : pandas.DataFrame
        ``k, silhouette, stability, inertia, chosen`` (for the page).
    k_reason_ : str
        The choice in plain words.
    labels_ : numpy.ndarray of int, one per fitted row
    silhouette_ : float
        Silhouette of the final labels (on a sample).
    feature_names_in_, feature_groups_ : the columns used and their group
    center_, scale_ : pandas.Series, per column
    medians_ : pandas.Series, imputation values
    cluster_centers_ : numpy.ndarray, k x features (scaled space, size order)
    sizes_ : numpy.ndarray, customers per cluster

    Examples
    --------
    >>> model = BehaviourSegmenter(random_state=42).fit(behaviour_features(cust))  # doctest: +SKIP
    >>> model.k_, model.k_scores_  # doctest: +SKIP
    """

    def __init__(self, *, k: int | None = None, k_range: tuple[int, int] = (2, 10),
                 weights: Mapping[str, float] | None = None, n_seeds: int = 5, subsample: float = 0.8,
                 sample_size: int = 5_000, silhouette_size: int = 3_000, fit_size: int = 100_000,
                 n_init: int = 5, min_stability: float = 0.8,
                 n_threads: int | None = 1,
                 random_state: int | None = None):
        self.k = k
        self.k_range = k_range
        self.weights = weights
        self.n_seeds = n_seeds
        self.subsample = subsample
        self.sample_size = sample_size
        self.silhouette_size = silhouette_size
        self.fit_size = fit_size
        self.n_init = n_init
        self.min_stability = min_stability
        self.n_threads = n_threads
        self.random_state = random_state

    # -- scaling ------------------------------------------------------------
    def _group_weights(self) -> dict[str, float]:
        defaults = load_rules()["cluster_weights"]
        return {**defaults, **(self.weights or {})}

    def _fit_scaling(self, X: pd.DataFrame) -> None:
        if not isinstance(X, pd.DataFrame):
            X = pd.DataFrame(np.asarray(X, dtype=float), columns=[f"x{i}" for i in range(np.shape(X)[1])])
        weights = self._group_weights()
        groups = {c: (c.split(":", 1)[0] if ":" in c else c) for c in X.columns}
        keep = [c for c in X.columns if weights.get(groups[c], 1.0) > 0]
        if not keep:
            raise ParameterError("clustering: every feature group has weight 0 (parameter weights)")
        X = X[keep].astype(float)
        self.medians_ = X.median().fillna(0.0)
        X = X.fillna(self.medians_)
        self.center_ = X.mean()
        var = X.var(ddof=0)
        scale = pd.Series(1.0, index=keep)
        for group in dict.fromkeys(groups[c] for c in keep):
            cols = [c for c in keep if groups[c] == group]
            total = float(np.sqrt(var[cols].sum()))
            scale[cols] = (total if total > 0 else 1.0) / weights.get(group, 1.0)
        self.scale_ = scale
        self.feature_names_in_ = np.array(keep, dtype=object)
        self.feature_groups_ = {c: groups[c] for c in keep}

    def _scaled(self, X) -> np.ndarray:
        if not isinstance(X, pd.DataFrame):
            X = pd.DataFrame(np.asarray(X, dtype=float), columns=[f"x{i}" for i in range(np.shape(X)[1])])
        missing = [c for c in self.feature_names_in_ if c not in X.columns]
        if missing:
            raise ParameterError(f"clustering: features missing at predict: {missing}")
        Z = X[list(self.feature_names_in_)].astype(float).fillna(self.medians_)
        return ((Z - self.center_) / self.scale_).to_numpy(float)

    # -- fitting ------------------------------------------------------------
    def fit(self, X, y=None):
        """Scale, choose k, fit k-means and label every row. Returns self."""
        with threadpool_limits(limits=self.n_threads):
            return self._fit(X)

    def _fit(self, X):
        self._fit_scaling(X)
        Z = self._scaled(X)
        n = len(Z)
        lo, hi = self.k_range
        if self.k is not None:
            lo = hi = int(self.k)
        if n < 3 or lo < 2:
            raise ParameterError(f"clustering needs k >= 2 and at least 3 customers (k_range={self.k_range}, rows={n})")
        rng = np.random.default_rng(self.random_state)
        sel = np.sort(rng.choice(n, size=min(n, self.sample_size), replace=False))
        Zs = Z[sel]
        sil_idx = rng.choice(len(Zs), size=min(len(Zs), self.silhouette_size), replace=False)
        rows, best_centers = [], {}
        for k in range(lo, min(hi, len(Zs) - 1) + 1):
            runs, inertias, centers = [], [], []
            for _ in range(max(1, self.n_seeds)):
                sub = rng.choice(len(Zs), size=max(k + 1, int(self.subsample * len(Zs))), replace=False)
                km = KMeans(n_clusters=k, n_init=self.n_init, random_state=int(rng.integers(2**31 - 1)))
                km.fit(Zs[sub])
                runs.append(km.predict(Zs))
                inertias.append(-km.score(Zs))
                centers.append(km.cluster_centers_)
            best = runs[int(np.argmin(inertias))]
            best_centers[k] = centers[int(np.argmin(inertias))]
            pairs = list(combinations(range(len(runs)), 2))
            stability = float(np.median([adjusted_rand_score(runs[a], runs[b]) for a, b in pairs])) if pairs else 1.0
            labels = best[sil_idx]
            sil = float(silhouette_score(Zs[sil_idx], labels)) if len(np.unique(labels)) > 1 else float("nan")
            rows.append({"k": k, "silhouette": sil, "stability": stability, "inertia": float(min(inertias))})
        scores = pd.DataFrame(rows)
        if scores.empty:
            raise ParameterError(f"clustering: no k in k_range={self.k_range} fits {n} customers")
        stable = scores[scores["stability"] >= self.min_stability]
        if self.k is not None:
            k_best = int(self.k)
            reason = f"k = {k_best} was set by the analyst"
        elif len(stable) and stable["silhouette"].notna().any():
            k_best = int(stable.loc[stable["silhouette"].idxmax(), "k"])
            reason = (f"k = {k_best} has the highest silhouette among the k whose clusters are found again "
                      f"across {self.n_seeds} seeds and subsamples (adjusted Rand >= {self.min_stability:g})")
        else:
            k_best = int(scores.loc[scores["stability"].idxmax(), "k"])
            reason = (f"no k reached a stability of {self.min_stability:g}; k = {k_best} is the most stable, "
                      f"so treat the clusters as a soft grouping")
        scores["chosen"] = scores["k"] == k_best
        self.k_scores_ = scores
        self.k_ = k_best
        self.k_reason_ = reason

        fit_idx = rng.choice(n, size=min(n, self.fit_size), replace=False)
        model = KMeans(n_clusters=k_best, init=best_centers[k_best], n_init=1)
        model.fit(Z[fit_idx])
        raw = model.predict(Z)
        sizes = np.bincount(raw, minlength=k_best)
        order = np.argsort(-sizes, kind="stable")            # new label i = old label order[i]
        self.relabel_ = np.empty(k_best, dtype="int64")
        self.relabel_[order] = np.arange(k_best)
        self.model_ = model
        self.labels_ = self.relabel_[raw]
        self.cluster_centers_ = model.cluster_centers_[order]
        self.sizes_ = sizes[order]
        self.n_clusters_ = k_best
        sample = rng.choice(n, size=min(n, self.silhouette_size), replace=False)
        lab = self.labels_[sample]
        self.silhouette_ = float(silhouette_score(Z[sample], lab)) if len(np.unique(lab)) > 1 else float("nan")
        return self

    def predict(self, X) -> np.ndarray:
        """Cluster number (0 = the largest cluster at fit) for each row."""
        with threadpool_limits(limits=self.n_threads):
            return self.relabel_[self.model_.predict(self._scaled(X))]


def name_clusters(cust: pd.DataFrame, labels, rules: Mapping | str | Path | None = None) -> dict[int, str]:
    """Plain-word names for clusters from their profiles, by the naming rules.

    Each descriptor of ``cluster_naming`` (segments.yaml) compares a cluster
    with all customers: a ``column`` descriptor takes the ratio of the
    cluster's statistic (median or mean) to everyone's and gives the first
    word whose ``ratio_at_least`` / ``ratio_at_most`` holds (a word without
    bounds is the default); a ``mix`` descriptor names the level (channel,
    category) most over-represented in the cluster, if its share is at least
    ``share_at_least`` and ``lift_at_least`` times the overall share. The words
    fill ``template``; duplicate names get a number.

    Parameters
    ----------
    cust : pandas.DataFrame
        The customer table (one row per customer, e.g. ``aov, discount_share,
        age, frequency, ch_*, cat_*``), rows aligned with ``labels``.
    labels : array-like of int

    Returns
    -------
    dict
        cluster number -> name, e.g. ``{0: "high-spend app loyalists", ...}``.
    """
    rules = _rules(rules)
    naming = rules["cluster_naming"]
    labels = np.asarray(labels)
    names: dict[int, str] = {}
    for label in sorted(np.unique(labels).tolist()):
        inside = labels == label
        words = {}
        for key, desc in naming.get("descriptors", {}).items():
            words[key] = _describe(cust, inside, desc)
        habit = words.get("habit", "") or "buyers"
        others = {k: v for k, v in words.items() if k != "habit" and v}
        if others:
            name = naming["template"].format_map(_Blank(words))
        else:
            name = naming.get("fallback", "typical {habit}").format_map(_Blank({"habit": habit}))
        names[int(label)] = " ".join(name.split())
    seen: dict[str, int] = {}
    for label, name in names.items():
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            names[label] = f"{name} ({seen[name]})"
    return names


class _Blank(dict):
    def __missing__(self, key):
        return ""


def _stat(values: pd.Series, stat: str) -> float:
    values = values.dropna()
    if values.empty:
        return float("nan")
    return float(values.median() if stat == "median" else values.mean())


def _describe(cust: pd.DataFrame, inside: np.ndarray, desc: Mapping) -> str:
    if "column" in desc:
        col = desc["column"]
        if col not in cust.columns:
            return ""
        overall = _stat(cust[col], desc.get("stat", "mean"))
        here = _stat(cust.loc[inside, col], desc.get("stat", "mean"))
        ratio = here / overall if overall and not math.isnan(overall) and not math.isnan(here) else float("nan")
        for option in desc.get("words", []):
            lo, hi = option.get("ratio_at_least"), option.get("ratio_at_most")
            if lo is None and hi is None:
                return option["word"]
            if math.isnan(ratio):
                continue
            if (lo is None or ratio >= lo) and (hi is None or ratio <= hi):
                return option["word"]
        return ""
    prefix = desc.get("mix", "")
    cols = [c for c in cust.columns if c.startswith(prefix) and c != f"{prefix}{OTHER}"] if prefix else []
    best, best_lift = "", 0.0
    for col in cols:
        overall = float(cust[col].mean())
        here = float(cust.loc[inside, col].mean())
        if not overall or math.isnan(here):
            continue
        lift = here / overall
        if here >= desc.get("share_at_least", 0) and lift >= desc.get("lift_at_least", 1) and lift > best_lift:
            best, best_lift = col[len(prefix):].replace("_", " "), lift
    return desc.get("format", "{value}").format(value=best) if best else ""


def cluster_customers(cust: pd.DataFrame, *, k: int | None = None, k_range: tuple[int, int] = (2, 10),
                      rules: Mapping | str | Path | None = None, random_state: int | None = None,
                      **segmenter_params) -> tuple[pd.DataFrame, BehaviourSegmenter]:
    """Features, k-means with the k choice, and plain-word names, in one call.

    Returns a copy of ``cust`` with ``cluster_id`` (0 = largest) and
    ``cluster`` (its name), and the fitted :class:`BehaviourSegmenter`.

    Examples
    --------
    >>> clustered, model = cluster_customers(scored, random_state=42)  # doctest: +SKIP
    """
    rules = _rules(rules)
    X = behaviour_features(cust, rules=rules)
    model = BehaviourSegmenter(k=k, k_range=k_range, weights=rules["cluster_weights"],
                               random_state=random_state, **segmenter_params).fit(X)
    names = name_clusters(cust, model.labels_, rules)
    out = cust.copy()
    out["cluster_id"] = model.labels_
    out["cluster"] = pd.Series(model.labels_, index=out.index).map(names)
    return out, model


def cluster_summary(clustered: pd.DataFrame, model: BehaviourSegmenter, *,
                    min_size: int = config.MIN_GROUP_SIZE) -> dict:
    """The clustering section: the profile of each cluster, the k scores and
    a paragraph. Returns ``{"table", "k_scores", "text"}``."""
    prof = segment_profiles(clustered, by="cluster", min_size=min_size)
    table = prof["table"]
    scores = model.k_scores_
    chosen = scores[scores["chosen"]].iloc[0]
    parts = [f"Customers fall into {model.k_} behavioural groups: {model.k_reason_} "
             f"(silhouette {chosen['silhouette']:.2f}, stability {chosen['stability']:.2f})."]
    if model.silhouette_ < 0.25:
        parts.append("The groups overlap (silhouette below 0.25): use them as tendencies, not hard borders.")
    shown = table[table.index != OTHER].head(3)
    if len(shown):
        desc = "; ".join(f"{name} ({_pct(r['share_customers'])} of customers, {_pct(r['share_revenue'])} of revenue)"
                         for name, r in shown.iterrows())
        parts.append(f"The largest are {desc}.")
        named = table[table.index != OTHER]
        best = named.sort_values("avg_order_value", ascending=False).iloc[0]
        parts.append(f"Tailor the offer to each group: {best.name} buy the biggest baskets "
                     f"({_money(best['avg_order_value'])} per order), so lead with range and service there")
        if "discount_share" in named.columns and len(named) > 1:
            deal = named.sort_values("discount_share", ascending=False).iloc[0]
            parts[-1] += (f"; {deal.name} take the most discount ({_pct(deal['discount_share'])} of what they "
                          f"would have paid), so vouchers move them -- test smaller ones.")
        else:
            parts[-1] += "."
    return {"table": table, "k_scores": scores, "text": " ".join(parts)}


# --------------------------------------------------------------------------
# profiles (personas)
# --------------------------------------------------------------------------

def age_band(age: pd.Series, rules: Mapping | str | Path | None = None) -> pd.Series:
    """Ages in years to the bands of segments.yaml (``age_bands``)."""
    bands = _rules(rules)["age_bands"]
    edges = [b[0] for b in bands] + [np.inf]
    return pd.cut(age, bins=edges, right=False, labels=[b[1] for b in bands])


def mix_table(cust: pd.DataFrame, by: str, prefix: str) -> pd.DataFrame:
    """Share of orders per channel (``prefix="ch_"``) or of spend per category
    (``"cat_"``) in each group: groups x levels, rows summing to 1.

    Takes one row per customer with ``by`` and the mix columns; each
    customer counts by their orders (channels) or line value (categories).
    """
    cols = [c for c in cust.columns if c.startswith(prefix)]
    if not cols:
        return pd.DataFrame()
    weight = cust["n_orders" if prefix == "ch_" else "line_value"].astype(float)
    w = cust[cols].fillna(0).mul(weight, axis=0)
    out = w.groupby(cust[by], observed=True).sum()
    out = out.div(out.sum(axis=1).replace(0, np.nan), axis=0)
    out.columns = [c[len(prefix):] for c in cols]
    return out


def _top_text(row: pd.Series, n: int = 2) -> str:
    row = row.dropna().sort_values(ascending=False).head(n)
    return ", ".join(f"{k} {v:.0%}" for k, v in row.items() if v > 0)


def segment_profiles(cust: pd.DataFrame, by: str = "segment", *, min_size: int = config.MIN_GROUP_SIZE,
                     rules: Mapping | str | Path | None = None) -> dict:
    """Personas: one row per group (segment, tier, cluster or any column).

    Takes one row per customer (the customer table with ``by``) and returns
    one row per group with what exists: ``customers, share_customers,
    share_revenue, avg_order_value, median_tenure_days, discount_share``
    (of gross spend), ``median_age, age_band``
    (the most common), ``gender, region, country, acquisition_channel``
    (the most common value and its share), ``channels, categories`` (top two
    with shares), ``satisfaction, nps`` (means). Groups smaller than
    ``min_size`` are merged into ``"other"``; if that is still smaller it is
    left out and counted in ``suppressed``.

    Returns
    -------
    dict
        ``table`` (index = group, largest first, "other" last), ``channels`` and
        ``categories`` (group x level share tables for small-multiple charts),
        ``suppressed`` (customers not shown), ``text``.
    """
    rules = _rules(rules)
    groups = cust[by].astype(object).where(cust[by].notna(), "unknown")
    sizes = groups.value_counts()
    small = sizes[sizes < min_size].index
    groups = groups.where(~groups.isin(small), OTHER)
    sizes = groups.value_counts()
    suppressed = int(sizes.get(OTHER, 0)) if sizes.get(OTHER, 0) < min_size else 0
    if suppressed:
        keep = groups != OTHER
        cust, groups = cust[keep], groups[keep]
    data = cust.assign(_group=groups.to_numpy())
    n_all = len(data) + suppressed
    g = data.groupby("_group", observed=True)
    table = pd.DataFrame({"customers": g.size()})
    table["share_customers"] = table["customers"] / max(n_all, 1)
    if "monetary" in data.columns:
        table["share_revenue"] = g["monetary"].sum() / (float(data["monetary"].sum()) or 1.0)
        if "n_orders" in data.columns:
            table["avg_order_value"] = g["monetary"].sum() / g["n_orders"].sum()
    if "tenure" in data.columns:
        table["median_tenure_days"] = g["tenure"].median()
    if {"discount", "monetary"} <= set(data.columns):
        table["discount_share"] = g["discount"].sum() / (g["monetary"].sum() + g["discount"].sum())
    if "age" in data.columns and data["age"].notna().any():
        table["median_age"] = g["age"].median()
        bands = age_band(data["age"], rules)
        table["age_band"] = bands.groupby(data["_group"], observed=True).agg(
            lambda s: s.value_counts().idxmax() if s.notna().any() else None)
    for col in PROFILE_ATTRIBUTES:
        if col in data.columns and data[col].notna().any():
            table[col] = data[col].groupby(data["_group"], observed=True).agg(_mode_text)
    mixes = {}
    for prefix, label, weight in (("ch_", "channels", "n_orders"), ("cat_", "categories", "line_value")):
        if weight not in data.columns:
            continue
        mix = mix_table(data, "_group", prefix)
        if not mix.empty:
            mixes[label] = mix
            table[label] = mix.apply(_top_text, axis=1)
    for col in ("satisfaction", "nps"):
        if col in data.columns and data[col].notna().any():
            table[col] = g[col].mean()
    order = [i for i in table.sort_values("customers", ascending=False).index if i != OTHER]
    order += [OTHER] if OTHER in table.index else []
    table = table.loc[order].rename_axis(by)
    for label in mixes:
        mixes[label] = mixes[label].reindex(order).rename_axis(by)
    text = _profile_text(table, by, suppressed)
    return {"table": table, "channels": mixes.get("channels", pd.DataFrame()),
            "categories": mixes.get("categories", pd.DataFrame()), "suppressed": suppressed, "text": text}


def _mode_text(s: pd.Series) -> str | None:
    vc = s.dropna().value_counts(normalize=True)
    if vc.empty:
        return None
    return f"{vc.index[0]} {vc.iloc[0]:.0%}"


def _profile_text(table: pd.DataFrame, by: str, suppressed: int) -> str:
    shown = table[table.index != OTHER]
    if shown.empty:
        return f"No {by} has enough customers to be shown on its own."
    parts = []
    key = "avg_order_value" if "avg_order_value" in shown.columns else "customers"
    rich = shown.sort_values(key, ascending=False)
    hi, lo = rich.iloc[0], rich.iloc[-1]
    if len(rich) > 1 and key == "avg_order_value":
        parts.append(f"Baskets differ most between {hi.name} ({_money(hi['avg_order_value'])} per order) and "
                     f"{lo.name} ({_money(lo['avg_order_value'])}).")
    if "channels" in shown.columns:
        parts.append(f"{_cap(hi.name)} buy mostly via {hi['channels'] or 'mixed channels'}"
                     + (f" and favour {hi['categories']}" if "categories" in shown.columns and hi['categories'] else "")
                     + ": reach each group where it already buys.")
    if "satisfaction" in shown.columns and shown["satisfaction"].notna().sum() > 1:
        s = shown["satisfaction"].dropna().sort_values()
        parts.append(f"Satisfaction is lowest among {s.index[0]} ({s.iloc[0]:.1f} of 5) and highest among "
                     f"{s.index[-1]} ({s.iloc[-1]:.1f}).")
    if suppressed:
        parts.append(f"{_n(suppressed)} customers in groups smaller than {config.MIN_GROUP_SIZE} are not shown.")
    return " ".join(parts)


# --------------------------------------------------------------------------
# golden customers and concentration
# --------------------------------------------------------------------------

def gini(values) -> float:
    """Gini coefficient of non-negative values (0 = all equal, towards 1 = one
    holds everything).

    Uses the sorted form of Gini's mean difference,
    ``G = sum_ij |x_i - x_j| / (2 n^2 mean)
        = 2 * sum_i i * x_(i) / (n * sum x) - (n + 1) / n`` with ``x_(1) <= ... <= x_(n)``
    (e.g. Damgaard & Weiner 2000, Ecology 81(4):1139-1142, eq. 1). Closed
    forms for checking: 1, 2, ..., n gives ``(n - 1) / (3 n)``; the
    exponential distribution gives 1/2.

    Parameters
    ----------
    values : array-like of numbers >= 0 (negatives are clipped to 0)

    Returns
    -------
    float

    Examples
    --------
    >>> round(gini([1, 2, 3, 4]), 4)
    0.25
    """
    x = np.sort(np.clip(np.asarray(values, dtype=float), 0, None))
    x = x[~np.isnan(x)]
    n, total = len(x), x.sum()
    if n == 0 or total <= 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(2 * np.sum(i * x) / (n * total) - (n + 1) / n)


def concentration(cust: pd.DataFrame, value_col: str = "monetary", *, points: int = 101) -> dict:
    """How concentrated revenue is: the Pareto curve, top-20% share and Gini.

    Takes one row per customer with ``value_col``.

    Returns
    -------
    dict
        ``pareto`` (frame ``customer_share, revenue_share``: the share of
        revenue brought by the top ``customer_share`` of customers, ranked by
        value, at ``points`` evenly spaced shares from 0 to 1 -- the Lorenz
        curve read from the top), ``top1_revenue_share``,
        ``top10_revenue_share``, ``top20_revenue_share``, ``gini``,
        ``customers_for_half`` (smallest share of customers bringing half
        of revenue), ``text``.
    """
    x = np.sort(np.clip(cust[value_col].to_numpy(float), 0, None))[::-1]
    n, total = len(x), x.sum()
    if n == 0 or total <= 0:
        raise NoDataError(f"no positive {value_col} to measure concentration (column {value_col})")
    cum = np.concatenate([[0.0], np.cumsum(x) / total])

    def top(share: float) -> float:  # exact, interpolating within a customer
        pos = share * n
        k = int(np.floor(pos))
        frac = pos - k
        return float(cum[k] + (frac * x[k] / total if k < n else 0.0))

    grid = np.linspace(0, 1, points)
    pareto = pd.DataFrame({"customer_share": grid, "revenue_share": [top(s) for s in grid]})
    half = int(np.searchsorted(cum, 0.5)) / n
    res = {"pareto": pareto, "top1_revenue_share": top(0.01), "top10_revenue_share": top(0.10),
           "top20_revenue_share": top(0.20), "gini": gini(x), "customers_for_half": half}
    g = res["gini"]
    level = "highly" if g >= 0.6 else "moderately" if g >= 0.4 else "not very"
    res["text"] = (f"The top 20% of customers bring {_pct(res['top20_revenue_share'])} of revenue and the top 1% "
                   f"bring {_pct(res['top1_revenue_share'])}; half of revenue comes from {_pct(half)} of customers "
                   f"(Gini {g:.2f}: revenue is {level} concentrated). "
                   + ("Losing a few golden customers would hurt: give them named service and watch their "
                      "recency closely." if g >= 0.4 else
                      "Revenue is spread widely: broad retention matters more than a VIP programme."))
    return res


def golden_customers(scored: pd.DataFrame, *, top: int = 50, value_col: str = "monetary",
                     columns: Iterable[str] = ("customer_id", "monetary", "frequency", "recency", "aov",
                                               "segment", "tier", "cluster", "region")) -> dict:
    """The top customers by value, with their share of revenue.

    Returns ``{"table", "share_revenue", "text"}``: ``table`` has one row per
    golden customer (largest first; ids and figures, no contact data -- join
    it with :func:`attach_contacts` for a masked list on the page).
    """
    total = float(scored[value_col].sum()) or 1.0
    best = scored.nlargest(top, value_col)
    cols = [c for c in columns if c in best.columns]
    table = best[cols].reset_index(drop=True)
    share = float(best[value_col].sum()) / total
    n_risk = int((best.get("segment") == "at risk").sum()) if "segment" in best.columns else 0
    text = (f"The top {_n(len(best))} customers ({_pct(len(best) / max(len(scored), 1))} of all) bring "
            f"{_pct(share)} of revenue.")
    if n_risk:
        text += f" {_n(n_risk)} of them are at risk: call them before a competitor does."
    return {"table": table, "share_revenue": share, "text": text}


def attach_contacts(selection: pd.DataFrame, customers: ir.Table, *, customer_id_col: str = "customer_id",
                    columns: Iterable[str] = ("name", "email", "phone")) -> pd.DataFrame:
    """Add contact columns to a short list of customers, fetched in the engine
    for those ids only. The result holds personal data: mask it
    (``crmlab.privacy.mask_frame``) before a stakeholder sees it."""
    cols = [c for c in columns if c in customers.columns]
    if not cols or selection.empty:
        return selection
    ids = selection[customer_id_col].tolist()
    found = customers.filter(customers[customer_id_col].isin(ids)).select(customer_id_col, *cols).to_pandas()
    found = found.drop_duplicates(customer_id_col)
    return selection.merge(found, on=customer_id_col, how="left")


# --------------------------------------------------------------------------
# drill-down: a safe filter language
# --------------------------------------------------------------------------

_COMPARE = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
            ast.In: "in", ast.NotIn: "not in"}


def parse_filter(expr: str, columns: Iterable[str]) -> Callable[[pd.DataFrame], pd.Series]:
    """Compile a drill-down filter into a function frame -> boolean mask, safely.

    The language is a whitelist checked on the Python syntax tree (never
    ``eval``): column names, literals (strings, numbers, True/False, and
    lists/tuples of them for ``in``), comparisons ``== != < <= > >=`` (chains
    like ``30 <= age < 40`` too), ``in`` / ``not in``, and ``and`` / ``or`` /
    ``not`` with parentheses. Missing values follow SQL: a comparison with a
    missing value is unknown, ``not`` unknown is unknown, and rows whose
    filter is unknown are left out (so ``not region == "West"`` and
    ``region != "West"`` both leave out customers without a region).

    Parameters
    ----------
    expr : str
        e.g. ``region == "East" and age >= 30 and segment == "at risk"``.
        Empty: every row.
    columns : iterable of str
        The known columns.

    Returns
    -------
    callable
        ``mask = f(frame)``, a boolean Series aligned with the frame.

    Raises
    ------
    ParameterError
        A syntax error, anything outside the whitelist (attribute access,
        calls, subscripts, arithmetic ...), or an unknown column (the message
        lists the known ones).

    Examples
    --------
    >>> f = parse_filter('segment in ["loyal", "champions"] and not recency > 90', ["segment", "recency"])
    """
    expr = (expr or "").strip()
    known = list(columns)
    if not expr:
        return lambda frame: pd.Series(True, index=frame.index)
    if len(expr) > MAX_FILTER_LENGTH:
        raise ParameterError(f"filter is longer than {MAX_FILTER_LENGTH} characters (parameter filter)")
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as exc:
        raise ParameterError(f"filter is not a valid expression at column {exc.offset} (parameter filter)") from None
    compiled = _compile(tree.body, set(known), known)
    return lambda frame: compiled(frame).fillna(False).astype(bool)


def _refuse(what: str) -> ParameterError:
    return ParameterError(f"filter: {what} is not allowed; use column names, literals, comparisons, "
                          f"in / not in lists, and/or/not (parameter filter)")


def _literal(node: ast.AST):
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float, bool)):
        return node.value
    if (isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd))
            and isinstance(node.operand, ast.Constant) and isinstance(node.operand.value, (int, float))
            and not isinstance(node.operand.value, bool)):
        return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
    raise _refuse(type(node).__name__)


def _operand(node: ast.AST, known: set, ordered: list, *, allow_list: bool):
    """('col', name) or ('lit', value)."""
    if isinstance(node, ast.Name):
        if node.id not in known:
            raise ParameterError(f"filter: unknown column {node.id!r}; known columns: {', '.join(ordered)} "
                                 f"(parameter filter)")
        return ("col", node.id)
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        if not allow_list:
            raise _refuse("a list outside 'in'")
        return ("lit", [_literal(e) for e in node.elts])
    return ("lit", _literal(node))


def _compile(node: ast.AST, known: set, ordered: list) -> Callable[[pd.DataFrame], pd.Series]:
    if isinstance(node, ast.BoolOp):
        parts = [_compile(v, known, ordered) for v in node.values]
        if isinstance(node.op, ast.And):
            def f_and(frame):
                out = parts[0](frame)
                for p in parts[1:]:
                    out = out & p(frame)
                return out
            return f_and
        def f_or(frame):
            out = parts[0](frame)
            for p in parts[1:]:
                out = out | p(frame)
            return out
        return f_or
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        inner = _compile(node.operand, known, ordered)
        return lambda frame: ~inner(frame)
    if isinstance(node, ast.Compare):
        operands = [node.left, *node.comparators]
        tests = []
        for i, op in enumerate(node.ops):
            if type(op) not in _COMPARE:
                raise _refuse(f"the operator {type(op).__name__}")
            is_in = isinstance(op, (ast.In, ast.NotIn))
            left = _operand(operands[i], known, ordered, allow_list=False)
            right = _operand(operands[i + 1], known, ordered, allow_list=is_in)
            if left[0] == "lit" and right[0] == "lit":
                raise _refuse("a comparison without a column")
            if is_in and not (left[0] == "col" and right[0] == "lit" and isinstance(right[1], list)):
                raise _refuse("'in' other than column in [list of values]")
            tests.append(_comparison(_COMPARE[type(op)], left, right))
        def f_cmp(frame):
            out = tests[0](frame)
            for t in tests[1:]:
                out = out & t(frame)
            return out
        return f_cmp
    if isinstance(node, ast.Name):
        raise _refuse(f"a bare column ({node.id}) without a comparison")
    raise _refuse(type(node).__name__)


def _comparison(op: str, left: tuple, right: tuple) -> Callable[[pd.DataFrame], pd.Series]:
    def value(side, frame):
        return frame[side[1]] if side[0] == "col" else side[1]

    def f(frame):
        a, b = value(left, frame), value(right, frame)
        valid = pd.Series(True, index=frame.index)
        for side, v in ((left, a), (right, b)):
            if side[0] == "col":
                valid &= v.notna()
        try:
            if op == "in":
                res = a.isin(b)
            elif op == "not in":
                res = ~a.isin(b)
            else:
                res = {"==": lambda: a == b, "!=": lambda: a != b, "<": lambda: a < b, "<=": lambda: a <= b,
                       ">": lambda: a > b, ">=": lambda: a >= b}[op]()
        except TypeError:
            cols = [s[1] for s in (left, right) if s[0] == "col"]
            raise ParameterError(f"filter: cannot compare column {', '.join(cols)} with {op} and that kind of "
                                 f"value (parameter filter)") from None
        res = pd.Series(res, index=frame.index).astype("boolean")
        return res.mask(~valid, pd.NA)
    return f


def drill_down(cust: pd.DataFrame, filter: str = "", *, min_size: int = config.MIN_GROUP_SIZE,
               list_size: int = 20, sort_by: str = "monetary",
               list_columns: Iterable[str] = ("customer_id", "segment", "tier", "cluster", "region", "recency",
                                              "frequency", "monetary"),
               rules: Mapping | str | Path | None = None) -> dict:
    """Multi-dimensional selection: the customers matching ``filter``.

    Parameters
    ----------
    cust : pandas.DataFrame
        One row per customer (scored, clustered; any columns can be filtered
        on, plus ``age_band`` derived from ``age``).
    filter : str
        See :func:`parse_filter`, e.g. ``region == "East" and age >= 30 and
        segment == "at risk"``.

    Returns
    -------
    dict
        ``count``, ``share`` (of customers), ``share_revenue``, ``profile``
        (one-row persona of the selection; None when fewer than ``min_size``
        match), ``customers`` (the top ``list_size`` by ``sort_by``: ids and
        figures, for a masked list), ``text``.
    """
    data = cust
    if "age" in cust.columns and "age_band" not in cust.columns:
        data = cust.assign(age_band=age_band(cust["age"], rules).astype(object))
    mask = parse_filter(filter, data.columns)(data)
    sel = data[mask.to_numpy()]
    count = len(sel)
    total_rev = float(data["monetary"].sum()) or 1.0
    share_rev = float(sel["monetary"].sum()) / total_rev if count else 0.0
    profile = None
    if count >= min_size:
        profile = segment_profiles(sel.assign(_selection="selection"), by="_selection",
                                   min_size=min_size, rules=rules)["table"].rename_axis("selection")
    cols = [c for c in list_columns if c in sel.columns]
    customers = sel.nlargest(list_size, sort_by)[cols].reset_index(drop=True) if count else sel[cols]
    what = f"the filter {filter.strip()!r}" if filter and filter.strip() else "no filter"
    text = (f"{_n(count)} customers ({_pct(count / max(len(data), 1))}) match {what}, bringing "
            f"{_pct(share_rev)} of revenue.")
    if 0 < count < min_size:
        text += f" Fewer than {min_size} match, so their profile is not shown."
    return {"count": count, "share": count / max(len(data), 1), "share_revenue": share_rev,
            "profile": profile, "customers": customers, "text": text}


# --------------------------------------------------------------------------
# movement between runs
# --------------------------------------------------------------------------

NEW_ROW = "(not in previous run)"
GONE_COL = "(not in this run)"


def transitions(previous: pd.DataFrame, current: pd.DataFrame, *, id_col: str = "customer_id",
                segment_col: str = "segment", order: Iterable[str] | None = None,
                min_size: int = config.MIN_GROUP_SIZE, top: int = 3) -> dict:
    """Customers' moves between segments since the previous run.

    Takes two customer -> segment frames (the previous run's
    ``exports/segments.csv`` and this run's) and returns the transition
    matrix: rows = segment last run (plus customers new since then), columns
    = segment now (plus customers no longer present).

    Returns
    -------
    dict
        ``counts`` (int matrix; all cells sum to the customers in either
        run), ``shares`` (row shares: each row sums to 1), ``table`` (display
        strings "count (row share)", cells below ``min_size`` shown as
        "<min_size"), ``stayed_share`` (of customers in both runs, the share
        whose segment did not change), ``sentences`` (the biggest moves in
        plain words), ``text``.
    """
    prev = previous[[id_col, segment_col]].drop_duplicates(id_col)
    cur = current[[id_col, segment_col]].drop_duplicates(id_col)
    merged = prev.merge(cur, on=id_col, how="outer", suffixes=("_prev", "_now"))
    a = merged[f"{segment_col}_prev"].astype(object).where(merged[f"{segment_col}_prev"].notna(), NEW_ROW)
    b = merged[f"{segment_col}_now"].astype(object).where(merged[f"{segment_col}_now"].notna(), GONE_COL)
    names = list(dict.fromkeys(order or []))
    names += sorted((set(a) | set(b)) - set(names) - {NEW_ROW, GONE_COL}, key=str)
    rows = [s for s in names if s in set(a)] + ([NEW_ROW] if NEW_ROW in set(a) else [])
    cols = [s for s in names if s in set(b)] + ([GONE_COL] if GONE_COL in set(b) else [])
    counts = pd.crosstab(a, b).reindex(index=rows, columns=cols, fill_value=0).astype("int64")
    counts.index.name, counts.columns.name = "previous", "now"
    shares = counts.div(counts.sum(axis=1).replace(0, np.nan), axis=0).fillna(0.0)
    table = counts.astype(object).copy()
    for r in counts.index:
        for c in counts.columns:
            v = int(counts.loc[r, c])
            table.loc[r, c] = (f"<{min_size}" if 0 < v < min_size else f"{v:,} ({shares.loc[r, c]:.0%})")
    both = (a != NEW_ROW) & (b != GONE_COL)
    stayed = float((a[both] == b[both]).mean()) if both.any() else float("nan")
    moves = []
    for r in counts.index:
        for c in counts.columns:
            if r != c and r != NEW_ROW and c != GONE_COL and counts.loc[r, c] >= min_size:
                moves.append((int(counts.loc[r, c]), r, c))
    moves.sort(key=lambda m: (-m[0], m[1], m[2]))
    sentences = []
    if not math.isnan(stayed):
        sentences.append(f"{_pct(stayed)} of customers are in the same segment as in the previous run.")
    for v, r, c in moves[:top]:
        sentences.append(f"{_n(v)} customers ({_pct(shares.loc[r, c])} of last run's {r}) moved from {r} to {c}.")
    if NEW_ROW in counts.index and counts.loc[NEW_ROW].sum() >= min_size:
        sentences.append(f"{_n(counts.loc[NEW_ROW].sum())} customers bought for the first time since the previous run.")
    worse = [m for m in moves if m[2] in ("at risk", "hibernating", "lost")]
    text = " ".join(sentences)
    if worse:
        v, r, c = worse[0]
        text += (f" Act first on the {_n(v)} who slipped from {r} to {c}: a reminder now costs less than "
                 f"winning them back later.")
    return {"counts": counts, "shares": shares, "table": table, "stayed_share": stayed,
            "sentences": sentences, "text": text}


# --------------------------------------------------------------------------
# does RFM predict what customers do next?
# --------------------------------------------------------------------------

def rfm_holdout_check(orders: ir.Table, as_of: str | dt.date, holdout_days: int = 180, *,
                      rules: Mapping | str | Path | None = None, frequency: str = "days",
                      paid_statuses: Iterable[str] | None = PAID_STATUSES,
                      customer_id_col: str = "customer_id", date_col: str = "order_date",
                      amount_col: str = "amount", status_col: str | None = "status") -> dict:
    """Rank correlation of ``rfm_score`` at ``as_of`` with spend in the next
    ``holdout_days`` days.

    Scores every customer who bought up to ``as_of`` (:func:`rfm_table`,
    :func:`score_rfm`), sums each one's paid spend in ``(as_of, as_of +
    holdout_days]`` in the engine (0 for those who did not buy), and takes
    Spearman's rank correlation (ties get average ranks). To check a
    snapshot you can see the future of, pass an ``as_of`` at least
    ``holdout_days`` before the latest order.

    Returns
    -------
    dict
        ``spearman``, ``p_value``, ``n_customers``, ``holdout_start``,
        ``holdout_end``, ``complete`` (the data reaches the end of the
        holdout), ``table`` (per rfm_score: customers, share who bought,
        mean future spend), ``text``.
    """
    if holdout_days <= 0:
        raise ParameterError("holdout_days must be positive (parameter holdout_days)")
    day = resolve_as_of(orders, as_of, date_col=date_col)
    end = day + dt.timedelta(days=int(holdout_days))
    scored = score_rfm(rfm_table(orders, day, frequency=frequency, paid_statuses=paid_statuses,
                                 customer_id_col=customer_id_col, date_col=date_col, amount_col=amount_col,
                                 status_col=status_col).to_pandas(), rules)
    fut = _purchases(orders, as_of_literal(end), date_col=date_col, status_col=status_col,
                     paid_statuses=paid_statuses, start=as_of_literal(day))
    future = fut.group_by(customer_id_col).aggregate(future_spend=fut[amount_col].sum()).to_pandas()
    merged = scored.merge(future, on=customer_id_col, how="left")
    merged["future_spend"] = merged["future_spend"].fillna(0.0)
    latest = latest_order_date(orders, date_col=date_col)
    complete = latest >= end
    if merged["future_spend"].nunique() < 2 or merged["rfm_score"].nunique() < 2:
        rho, p = float("nan"), float("nan")
    else:
        res = stats.spearmanr(merged["rfm_score"], merged["future_spend"])
        rho, p = float(res.statistic), float(res.pvalue)
    table = merged.groupby("rfm_score").agg(customers=(customer_id_col, "size"),
                                            share_buying=("future_spend", lambda s: float((s > 0).mean())),
                                            mean_future_spend=("future_spend", "mean"))
    if math.isnan(rho):
        text = (f"No spend after {day.isoformat()} to check RFM against: choose an as_of at least "
                f"{holdout_days} days before the latest order.")
    else:
        strength = "strongly" if rho >= 0.5 else "clearly" if rho >= 0.3 else "weakly" if rho > 0.1 else "hardly"
        text = (f"RFM ranks customers by what they do next: over the {holdout_days} days after "
                f"{day.isoformat()}, a higher rfm_score went with higher spend (Spearman rank correlation "
                f"{rho:.2f} over {_n(len(merged))} customers; the score {strength} predicts future spend).")
        if not complete:
            text += f" The data ends on {latest.isoformat()}, before the holdout does, so the figure is provisional."
    return {"spearman": rho, "p_value": p, "n_customers": len(merged), "holdout_start": day.isoformat(),
            "holdout_end": end.isoformat(), "complete": bool(complete), "table": table, "text": text}


# --------------------------------------------------------------------------
# exports, metrics, findings
# --------------------------------------------------------------------------

def segments_export(scored: pd.DataFrame) -> pd.DataFrame:
    """``exports/segments.csv``: ``customer_id, recency, frequency, monetary,
    r_score, f_score, m_score, rfm_score, segment, tier, cluster`` (cluster =
    its plain-word name; empty when clustering did not run)."""
    out = scored.copy()
    if "cluster" not in out.columns:
        out["cluster"] = ""
    return out[list(EXPORT_COLUMNS)].reset_index(drop=True)


def metrics(scored: pd.DataFrame, *, model: BehaviourSegmenter | None = None, conc: Mapping | None = None,
            holdout: Mapping | None = None, rules: Mapping | str | Path | None = None) -> dict:
    """The flat key figures for ``metrics.json``.

    Returns ``n_customers``, ``share_<segment slug>`` for every segment of the
    map (0.0 when empty), ``share_tier_<tier slug>``, and when given:
    ``n_clusters``, ``silhouette`` (model), ``top20_revenue_share``, ``gini``
    (conc, from :func:`concentration`), ``holdout_spearman`` (holdout, from
    :func:`rfm_holdout_check`). Values are plain Python numbers.
    """
    rules = _rules(rules)
    n = len(scored)
    out: dict[str, Any] = {"n_customers": int(n)}
    shares = scored["segment"].value_counts(normalize=True)
    for name in _ordered_names(rules["segments"], shares.index):
        out[f"share_{slug(name)}"] = round(float(shares.get(name, 0.0)), 4)
    tiers = scored["tier"].value_counts(normalize=True)
    for name in _ordered_names(rules["tiers"], tiers.index):
        out[f"share_tier_{slug(name)}"] = round(float(tiers.get(name, 0.0)), 4)
    if model is not None:
        out["n_clusters"] = int(model.k_)
        out["silhouette"] = round(float(model.silhouette_), 4)
    if conc is not None:
        out["top20_revenue_share"] = round(float(conc["top20_revenue_share"]), 4)
        out["gini"] = round(float(conc["gini"]), 4)
    if holdout is not None and not math.isnan(holdout.get("spearman", float("nan"))):
        out["holdout_spearman"] = round(float(holdout["spearman"]), 4)
    return out


def findings(scored: pd.DataFrame, *, clustered: pd.DataFrame | None = None,
             model: BehaviourSegmenter | None = None, conc: Mapping | None = None,
             movement: Mapping | None = None, holdout: Mapping | None = None,
             min_size: int = config.MIN_GROUP_SIZE) -> list[str]:
    """Three to five plain sentences with numbers for "What changed".

    Each sentence comes from a result that was given: the segment bringing
    most revenue, the at-risk revenue, concentration, the biggest movement
    since the previous run, the largest behavioural group, and RFM's
    predictive check.
    """
    out = []
    n = len(scored)
    total = float(scored["monetary"].sum()) or 1.0
    by_seg = scored.groupby("segment", observed=True)["monetary"].agg(["size", "sum"])
    by_seg = by_seg[by_seg["size"] >= min_size]
    if len(by_seg):
        top = by_seg.sort_values("sum", ascending=False).iloc[0]
        out.append(f"{_cap(top.name)} are {_pct(top['size'] / n)} of {_n(n)} customers and bring "
                   f"{_pct(top['sum'] / total)} of revenue.")
    if "at risk" in by_seg.index:
        r = by_seg.loc["at risk"]
        days = scored.loc[scored["segment"] == "at risk", "recency"].median()
        out.append(f"{_n(r['size'])} valuable customers are at risk (no purchase for a median {_n(days)} days); "
                   f"they brought {_pct(r['sum'] / total)} of revenue.")
    if conc is not None:
        out.append(f"The top 20% of customers bring {_pct(conc['top20_revenue_share'])} of revenue "
                   f"(Gini {conc['gini']:.2f}).")
    if movement is not None and len(movement.get("sentences", [])) > 1:
        out.append(movement["sentences"][1])
    if clustered is not None and model is not None:
        sizes = clustered["cluster"].value_counts()
        if len(sizes) and sizes.iloc[0] >= min_size:
            out.append(f"Behaviour splits customers into {model.k_} groups; the largest is "
                       f"\u201c{sizes.index[0]}\u201d ({_pct(sizes.iloc[0] / n)}).")
    if holdout is not None and not math.isnan(holdout.get("spearman", float("nan"))):
        out.append(f"A higher RFM score means higher spend in the next {_holdout_days(holdout)} days "
                   f"(rank correlation {holdout['spearman']:.2f}).")
    return out[:5]


def _holdout_days(holdout: Mapping) -> int:
    a = dt.date.fromisoformat(holdout["holdout_start"])
    b = dt.date.fromisoformat(holdout["holdout_end"])
    return (b - a).days


# --------------------------------------------------------------------------
# number formatting for sentences
# --------------------------------------------------------------------------

def _pct(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    x = float(x)
    if 0 < abs(x) < 0.001:
        return "<0.1%"
    if 0 < abs(x) < 0.01:
        return f"{x:.1%}"
    return f"{x:.0%}"


def _n(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{round(float(x)):,}"


def _money(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    x = float(x)
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.2f}"


def _cap(s) -> str:
    s = str(s)
    return s[:1].upper() + s[1:]
