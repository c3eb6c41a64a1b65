"""Segmentation: who are our customers? (the analytics of the segmentation report)

Every heavy step runs in the engine (ibis: DuckDB by default, PostgreSQL
too); pandas sees one row per customer. The notebook calls, in order::

    tables = dataset_tables(data)                 # orders + the optional tables present
    dates = order_dates(tables["orders"], as_of)  # snapshot, first and latest order (one query)
    cust = customer_table(**tables, as_of=dates["as_of"])   # one row per customer (engine-side)
    scored = score_rfm(cust, rules)               # r/f/m scores, rfm_score, segment, tier
    clustered, model = cluster_customers(scored, rules=rules, random_state=seed)
    rfm_summary(...), tier_summary(...), cluster_summary(...), segment_profiles(...),
    concentration(...), golden_customers(...), drill_down(...), crosstab(...),
    previous_segments(...), transitions(...), rfm_holdout_check(..., holdout_snapshot(...)),
    metrics(...), metric_cards(...), findings(...), segments_export(...)

Section functions return small dicts holding a ``table`` and a ``text``
paragraph (what it means and what to do) written from the numbers;
:func:`page_table` turns a table into ``Report.section`` keywords (plain
headings, formats, small groups merged) and the ``*_chart`` functions draw
with :mod:`crmlab.charts`. ``missing_inputs`` names what a section lacks for
``Report.not_available``.

Definitions (as of the snapshot date ``as_of`` of :func:`crmlab.engine.snapshot_date`;
orders after it are ignored; only purchases count, in the one meaning of
:func:`crmlab.engine.purchases`: a refunded or cancelled order is not a
purchase, and a missing status, ``paid`` and any other status word are;
the per-customer figures come from :func:`crmlab.engine.customer_summary`):

recency
    days from the last purchase day to ``as_of`` (0 = bought on the as-of day).
frequency
    purchases (the usual count of RFM); ``frequency="days"`` counts
    distinct purchase days instead (same-day orders are one purchase, as in
    the buy-till-you-die models of the lifecycle report) -- a distinct count
    per customer, which costs about half again the engine's time at scale.
monetary
    total purchase revenue (sum of ``amount``, which is after discount).
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
from sklearn.metrics import pairwise_distances
from threadpoolctl import threadpool_limits

from crmlab import config
from crmlab.engine import as_of_literal, customer_summary, purchases, snapshot_date
from crmlab.exceptions import NoDataError, ParameterError

RULES_PATH = Path(__file__).with_name("segments.yaml")

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
        override = config.load_yaml(config.project_path(path), "segment map (parameter segment_map)")
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


def _purchases(orders: ir.Table, cutoff, *, date_col: str, status_col: str | None) -> ir.Table:
    """The purchases (:func:`crmlab.engine.purchases`) up to ``cutoff``."""
    t = purchases(orders, status_col=status_col) if status_col else orders
    return t.filter(t[date_col] <= cutoff)


# the holdout check samples customers beyond this many (rfm_holdout_check)
HOLDOUT_MAX_CUSTOMERS = 100_000

# more distinct raw values than this: a column is cleaned in the engine row by row
MAX_RAW_LEVELS = 1000


def _clean_value(value) -> str | None:
    """One categorical value as compared: trimmed, lower case; empty = None
    (the Python twin of :func:`_clean_text`)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    text = str(value).strip().lower()
    return text or None


# the categorical columns of orders profiled together in one query (their
# raw values, with order counts and first/last order date per combination)
PROFILE_COLUMNS: tuple[str, ...] = ("channel",)
_PROFILES: dict = {}
_PROFILES_KEPT = 8


def _orders_profile(orders: ir.Table, date_col: str = "order_date") -> pd.DataFrame | None:
    """Orders per combination of the raw values of :data:`PROFILE_COLUMNS`,
    with the first and last order date: ``<cols>, _w, _first, _last``.

    One engine query answers the first and latest order dates and the
    channel levels, so a report reads the orders once for both (what is a
    purchase is :func:`crmlab.engine.purchases`' business, row by row). Cached per table expression (a Dataset opened again, or another
    file, is another expression). None when the columns hold more than
    :data:`MAX_RAW_LEVELS` combinations (free text).
    """
    cols = tuple(c for c in PROFILE_COLUMNS if c in orders.columns)
    key = (orders.op(), cols, date_col)
    if key in _PROFILES:
        return _PROFILES[key]
    aggs = dict(_w=orders.count(), _first=orders[date_col].min(), _last=orders[date_col].max())
    if cols:
        found = orders.group_by(list(cols)).aggregate(**aggs).limit(MAX_RAW_LEVELS + 1).to_pandas()
        found = None if len(found) > MAX_RAW_LEVELS else found
    else:
        found = orders.aggregate(**aggs).to_pandas()
    if len(_PROFILES) >= _PROFILES_KEPT:
        _PROFILES.pop(next(iter(_PROFILES)))
    _PROFILES[key] = found
    return found


def _raw_levels(t: ir.Table, col: str, weight=None) -> pd.DataFrame | None:
    """The distinct raw values of a categorical column and their cleaned form.

    A frame ``raw, clean, weight`` (``clean`` is None for missing or empty
    values; ``weight`` defaults to rows), heaviest first -- from the orders
    profile when :func:`order_dates` has already made it, else from one
    cheap group-by on the raw column (no string function per row). None when there are
    more than :data:`MAX_RAW_LEVELS` raw values (free text), so the caller
    cleans row by row instead. Comparing raw values with ``isin`` lets the
    engine use the column's dictionary encoding.
    """
    found = None
    profile = _PROFILES.get((t.op(), tuple(c for c in PROFILE_COLUMNS if c in t.columns), "order_date"))
    if weight is None and col in PROFILE_COLUMNS and profile is not None:
        found = profile.groupby(col, dropna=False, sort=False)["_w"].sum().reset_index()
    if found is None:
        w = t.count() if weight is None else weight
        found = (t.group_by(col).aggregate(_w=w).order_by(ibis.desc("_w")).limit(MAX_RAW_LEVELS + 1)
                 .to_pandas())
        if len(found) > MAX_RAW_LEVELS:
            return None
    found = found.sort_values("_w", ascending=False, kind="stable")
    raw = found[col].astype(object).where(found[col].notna(), None).tolist()
    return pd.DataFrame({"raw": pd.Series(raw, dtype=object),
                         "clean": pd.Series([_clean_value(v) for v in raw], dtype=object),
                         "weight": pd.to_numeric(found["_w"], errors="coerce").fillna(0.0).to_numpy(float)})


def _isin(col: ir.Value, raws: list) -> ir.BooleanValue:
    """``col`` is one of ``raws``; a None among them matches missing values.
    The column is referenced once (a typed view's expression is then
    evaluated once per row)."""
    values = [r for r in raws if not (r is None or (isinstance(r, float) and math.isnan(r)))]
    if not values:
        return col.isnull() if raws else ibis.literal(False)
    return col.fill_null(values[0]).isin(values) if len(values) < len(raws) else col.isin(values)


def _levels(source: ir.Table, col: str, limit: int, *, weight=None,
            table: ir.Table | None = None) -> tuple[list[str], ir.IntegerValue]:
    """The ``limit`` heaviest cleaned levels of a column and a per-row code.

    The levels are read from ``source`` (weighted by ``weight``, default
    rows); the code is an expression on ``table`` (default ``source``).
    Returns ``(levels, code)``: ``levels`` sorted alphabetically (a stable
    column order whatever the weights) and an ibis integer expression that
    is the row's level number (0 .. len(levels) - 1), -1 for another known
    level, null for a missing value. One code per row, computed once, lets
    each level's aggregate compare integers instead of text.
    """
    table = source if table is None else table
    raw = _raw_levels(source, col, weight)
    if raw is None:  # free text: cleaned row by row in the engine
        w = source.count() if weight is None else weight
        counts = (source.mutate(_c=_clean_text(source[col])).filter(lambda x: x._c.notnull()).group_by("_c")
                  .aggregate(_w=w).order_by([ibis.desc("_w"), "_c"]).limit(limit).to_pandas())
        levels = sorted(str(v) for v in counts["_c"])
        clean = _clean_text(table[col])
        code = clean.substitute({v: i for i, v in enumerate(levels)}, else_=ibis.literal(-1, "int64"))
        return levels, clean.isnull().ifelse(ibis.null("int64"), code)
    known = raw[raw["clean"].notna()]
    by_level = known.groupby("clean")["weight"].sum()
    levels = sorted(sorted(by_level.index, key=lambda v: (-by_level[v], v))[:limit])
    number = {v: i for i, v in enumerate(levels)}
    codes = {r: number.get(c, -1) for r, c in zip(known["raw"], known["clean"])}
    if not codes:
        return levels, ibis.null("int64")
    return levels, table[col].substitute(codes, else_=ibis.null("int64")).cast("int64")


def _clean_text(col: ir.Value) -> ir.Value:
    """Categorical text as compared: trimmed, lower case, empty = missing."""
    value = col.cast("string").strip().lower()
    return (value == "").ifelse(ibis.null("string"), value)


def _trim_text(col: ir.Value) -> ir.Value:
    """Text trimmed, empty = missing (case kept: a region's name reads as written)."""
    value = col.cast("string").strip()
    return (value == "").ifelse(ibis.null("string"), value)


FREQUENCIES: tuple[str, ...] = ("orders", "days")


def _check_frequency(frequency: str) -> None:
    if frequency not in FREQUENCIES:
        raise ParameterError(f"frequency must be 'orders' or 'days', not {frequency!r} (parameter frequency)")


def _rfm_summary(t: ir.Table, day: dt.date, *, customer_id_col: str, date_col: str,
                 amount_col: str) -> ir.Table:
    """The engine's per-customer summary (:func:`crmlab.engine.customer_summary`)
    of the purchases ``t`` up to ``day``, with ``monetary`` for its revenue:
    ``customer_id, first_purchase, last_purchase, n_orders, n_days, monetary``."""
    summary = customer_summary(t, day, customer_id_col=customer_id_col, date_col=date_col,
                               amount_col=amount_col)
    return summary.select(customer_id_col, "first_purchase", "last_purchase", "n_orders", "n_days",
                          monetary=summary.revenue)


def _with_rfm(agg: ir.Table, day: dt.date, frequency: str) -> ir.Table:
    _check_frequency(frequency)
    snap = ibis.literal(day, type="date")
    return agg.mutate(
        recency=snap.delta(agg.last_purchase.date(), unit="day"),
        tenure=snap.delta(agg.first_purchase.date(), unit="day"),
        frequency=agg.n_days if frequency == "days" else agg.n_orders,
    )


def rfm_table(orders: ir.Table, as_of: str | dt.date | None = None, *, frequency: str = "orders",
              customer_id_col: str = "customer_id", date_col: str = "order_date",
              amount_col: str = "amount", status_col: str | None = "status") -> ir.Table:
    """Recency, frequency and monetary value per customer, in the engine.

    Transforms a table of the form ``customer_id, order_date, amount[, status]``
    (one row per order) into one row per customer who bought up to ``as_of``::

        customer_id, recency, frequency, monetary, n_orders, [n_days,] tenure,
        first_purchase, last_purchase

    ``recency``/``tenure`` are days from the last/first purchase day to
    ``as_of``; ``frequency`` is purchases, or distinct purchase days
    (``frequency="days"``, which adds ``n_days``); ``monetary`` is purchase
    revenue. Orders after ``as_of`` and refunded or cancelled orders are
    ignored (see the module docstring); the figures are those of
    :func:`crmlab.engine.customer_summary`.

    Parameters
    ----------
    orders : ibis.Table
    as_of : str | date | None
        Snapshot date; empty = the latest order date.
    frequency : {"orders", "days"}

    Returns
    -------
    ibis.Table

    Examples
    --------
    >>> rfm_table(data.table("orders"), "2026-06-30").to_pandas()  # doctest: +SKIP
    """
    _check_frequency(frequency)
    day = snapshot_date(orders, as_of, date_col=date_col)
    t = _purchases(orders, as_of_literal(day), date_col=date_col, status_col=status_col)
    agg = _with_rfm(_rfm_summary(t, day, customer_id_col=customer_id_col, date_col=date_col,
                                 amount_col=amount_col), day, frequency)
    days = ["n_days"] if frequency == "days" else []
    return agg.select(customer_id_col, "recency", "frequency", "monetary", "n_orders", *days,
                      "tenure", "first_purchase", "last_purchase")


def customer_table(orders: ir.Table, as_of: str | dt.date | None = None, *,
                   order_lines: ir.Table | None = None, products: ir.Table | None = None,
                   customers: ir.Table | None = None, interactions: ir.Table | None = None,
                   tickets: ir.Table | None = None, frequency: str = "orders",
                   customer_id_col: str = "customer_id", date_col: str = "order_date",
                   amount_col: str = "amount", status_col: str | None = "status",
                   channel_col: str = "channel", discount_col: str = "discount",
                   max_channels: int = MAX_CHANNELS, max_categories: int = MAX_CATEGORIES) -> pd.DataFrame:
    """Everything segmentation needs, one row per customer, computed in the engine.

    Transforms the order-level tables (``orders`` required; ``order_lines``
    (+ ``products`` for the category), ``customers``, ``interactions``,
    ``tickets`` optional -- each adds its columns when present) into a pandas
    frame with one row per customer who bought up to ``as_of``::

        customer_id, recency, frequency, monetary, n_orders, [n_days,] tenure,
        first_purchase, last_purchase, aov              (always; n_days for frequency="days")
        discount, discount_share                        (orders.discount)
        ch_<channel> ...                                (orders.channel: share of the orders
                                                         whose channel is known)
        line_value, cat_<category> ...                  (order_lines: share of line value)
        n_interactions                                  (interactions up to as_of)
        n_tickets, satisfaction, nps                    (tickets up to as_of)
        gender, region, country, acquisition_channel, age   (customers)
        main_channel, main_category                     (the level with the largest share)

    Channel, category and status text is compared trimmed and in lower case
    (``' APP'`` is ``app``) -- by mapping the few distinct raw spellings, not
    by a string function per row. Only the ``max_channels`` /
    ``max_categories`` most frequent levels (by orders / order lines) get a
    column; the rest make ``ch_other`` / ``cat_other``. Each part (orders,
    lines, interactions, tickets, customers) is one engine query; only the
    per-customer results reach pandas.

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
        No purchase up to ``as_of``.

    Examples
    --------
    >>> cust = customer_table(**dataset_tables(data), as_of="2026-06-30")  # doctest: +SKIP
    """
    cid = customer_id_col
    _check_frequency(frequency)
    day = snapshot_date(orders, as_of, date_col=date_col)
    cutoff = as_of_literal(day)
    t = _purchases(orders, cutoff, date_col=date_col, status_col=status_col)
    # each part is its own query, merged here on the customer id: the engine
    # holds one part's hash tables at a time (memory), and pandas joins
    # million-row frames in well under a second
    rfm = _with_rfm(_rfm_summary(t, day, customer_id_col=cid, date_col=date_col, amount_col=amount_col),
                    day, frequency)
    if frequency != "days":
        rfm = rfm.drop("n_days")
    parts: list[ir.Table] = [rfm]
    aggs: dict = {}
    channels: list = []
    if channel_col and channel_col in t.columns:
        # the levels are read from all orders (one cached query), so the
        # choice of columns does not depend on as_of
        channels, code = _levels(orders, channel_col, max_channels, table=t)
        t = t.mutate(_ch=code)
        aggs["_ch_known"] = t._ch.count()
        for i in range(len(channels)):
            aggs[f"_ch{i}"] = t[date_col].count(where=t._ch == i)
    if discount_col and discount_col in t.columns:
        aggs["discount"] = t[discount_col].fill_null(0).sum()
    if aggs:
        parts.append(t.group_by(cid).aggregate(**aggs))
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
            # the categories with most lines get a column (counting lines reads the raw,
            # dictionary-encoded column only; weighing by value would compute it twice)
            categories, code = _levels(lines, "category", max_categories)
            lines = lines.select("order_id", _value=value, _cat=code)
            lj = lines.join(t.select("order_id", cid), "order_id")
            cat_aggs = {"line_value": lj._value.sum()}
            for i in range(len(categories)):
                cat_aggs[f"_cat{i}"] = lj._value.sum(where=lj._cat == i)
            parts.append(lj.group_by(cid).aggregate(**cat_aggs))
    if interactions is not None and cid in interactions.columns:
        it = interactions
        if "ts" in it.columns:
            it = it.filter(it.ts <= cutoff)
        parts.append(it.group_by(cid).aggregate(n_interactions=it.count()))
    if tickets is not None and cid in tickets.columns:
        tk = tickets
        if "opened_at" in tk.columns:
            tk = tk.filter(tk.opened_at <= cutoff)
        tk_aggs = {"n_tickets": tk.count()}
        for col in ("satisfaction", "nps"):
            if col in tk.columns:
                tk_aggs[col] = tk[col].cast("float64").mean()
        parts.append(tk.group_by(cid).aggregate(**tk_aggs))
    birth_col = None
    if customers is not None and cid in customers.columns:
        cols = [c for c in PROFILE_ATTRIBUTES if c in customers.columns]
        if "birth_date" in customers.columns:
            birth_col = "birth_date"
        if cols or birth_col:  # attributes trimmed (a stray space is not another region)
            trimmed = {c: _trim_text(customers[c]) for c in cols}
            parts.append(customers.select(cid, *([birth_col] if birth_col else []), **trimmed))

    df = parts[0].to_pandas()
    if df.empty:
        raise NoDataError(f"table orders has no purchase (an order not refunded or cancelled) up to "
                          f"{day.isoformat()} (check as_of)")
    df = df.drop_duplicates(cid)
    for part in parts[1:]:
        extra = part.to_pandas()
        extra = extra.drop_duplicates(cid)  # a repeated id (customers) keeps its first row
        df = df.merge(extra, on=cid, how="left")
    df = df.sort_values(cid, kind="stable").reset_index(drop=True)
    first = [c for c in (cid, "recency", "frequency", "monetary", "n_orders", "n_days", "tenure") if c in df.columns]
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
    for prefix, name in (("ch_", "main_channel"), ("cat_", "main_category")):
        cols = [c for c in df.columns if c.startswith(prefix)]
        if cols:  # the level with the largest share, for drill-down filters
            shares = df[cols].to_numpy(float)
            known = ~np.isnan(shares).all(axis=1)
            best = np.nanargmax(np.where(np.isnan(shares), -1.0, shares), axis=1)
            levels = np.array([c[len(prefix):] for c in cols], dtype=object)[best]
            df[name] = pd.Series(levels, index=df.index, dtype=object).where(known)
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
        parts.append(f"{_cap(segment_title(top['segment'], rules))} ({_n(top['customers'])} customers, "
                     f"{_pct(top['share_customers'])}) bring {_pct(top['share_revenue'])} of revenue.")
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
        what = ("once" if low == 1 else f"{_n(low)} times") if "n_days" not in scored.columns else (
            "on one day" if low == 1 else f"on {_n(low)} days")
        return (f"Scores are quintiles of rank with ties kept together: {_pct(share_low)} of customers "
                f"bought {what} only, so they all share frequency score 1 and the frequency scores in use "
                f"are {', '.join(str(int(u)) for u in used)}.")
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


def silhouette_from_distances(D: np.ndarray, labels) -> float:
    """Mean silhouette width from a matrix of pairwise distances.

    ``s(i) = (b(i) - a(i)) / max(a(i), b(i))`` with ``a(i)`` the mean distance
    from i to the other members of its cluster and ``b(i)`` the smallest mean
    distance from i to the members of another cluster; ``s(i) = 0`` for a
    cluster of one (Rousseeuw 1987, "Silhouettes: a graphical aid to the
    interpretation and validation of cluster analysis", J. Comput. Appl.
    Math. 20:53-65, eq. 1-2). The same number as
    ``sklearn.metrics.silhouette_score``, but the distances are computed once
    and shared by every candidate k; the per-cluster sums are one matrix
    product.

    Parameters
    ----------
    D : numpy.ndarray, n x n
        Symmetric distances, zero diagonal.
    labels : array-like of length n

    Returns
    -------
    float
        NaN unless 2 <= number of clusters <= n - 1.

    Examples
    --------
    >>> D = np.array([[0, 1, 4, 5], [1, 0, 3, 4], [4, 3, 0, 1], [5, 4, 1, 0]], float)
    >>> round(silhouette_from_distances(D, [0, 0, 1, 1]), 4)
    0.746
    """
    _, lab = np.unique(np.asarray(labels), return_inverse=True)
    n = len(lab)
    k = int(lab.max()) + 1 if n else 0
    if k < 2 or k > n - 1:
        return float("nan")
    onehot = np.zeros((n, k))
    onehot[np.arange(n), lab] = 1.0
    sums = np.asarray(D, dtype=float) @ onehot               # n x k: distance to each cluster
    counts = onehot.sum(axis=0)
    own = counts[lab]
    rows = np.arange(n)
    a = sums[rows, lab] / np.maximum(own - 1, 1)
    mean_other = sums / counts
    mean_other[rows, lab] = np.inf
    b = mean_other.min(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = (b - a) / np.maximum(a, b)
    s = np.where(own > 1, np.nan_to_num(s), 0.0)
    return float(s.mean())


def adjusted_rand(a, b) -> float:
    """Adjusted Rand index of two labellings of the same items.

    ``ARI = (sum_ij C(n_ij, 2) - E) / ((sum_i C(a_i, 2) + sum_j C(b_j, 2)) / 2 - E)``
    with ``E = sum_i C(a_i, 2) * sum_j C(b_j, 2) / C(n, 2)`` (Hubert &
    Arabie 1985, "Comparing partitions", J. Classification 2:193-218, eq. 5);
    1 when the partitions agree, about 0 for chance. The same number as
    ``sklearn.metrics.adjusted_rand_score``, from one ``bincount``.

    Examples
    --------
    >>> adjusted_rand([0, 0, 1, 1], [1, 1, 0, 0])
    1.0
    """
    _, a = np.unique(np.asarray(a), return_inverse=True)
    _, b = np.unique(np.asarray(b), return_inverse=True)
    n = len(a)
    if n < 2:
        return 1.0

    def pairs(x):
        x = np.asarray(x, dtype=float)
        return float((x * (x - 1) / 2).sum())

    index = pairs(np.bincount(a * (int(b.max()) + 1) + b))
    sa, sb = pairs(np.bincount(a)), pairs(np.bincount(b))
    expected = sa * sb / (n * (n - 1) / 2)
    top = (sa + sb) / 2
    if top == expected:
        return 1.0
    return float((index - expected) / (top - expected))


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
                 n_init: int = 3, min_stability: float = 0.8,
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
        # one distance matrix serves the silhouette of every k (and of the final labels)
        D = pairwise_distances(Zs[sil_idx])
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
            stability = float(np.median([adjusted_rand(runs[a], runs[b]) for a, b in pairs])) if pairs else 1.0
            sil = silhouette_from_distances(D, best[sil_idx])
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
        self.silhouette_ = silhouette_from_distances(D, self.labels_[sel[sil_idx]])
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
    return ", ".join(f"{str(k).replace('_', ' ')} {v:.0%}" for k, v in row.items() if v > 0)


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
        ``table`` (index = group, largest first -- segments and tiers in
        the order of the map -- "other" last), ``channels`` and
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
    if by in ("segment", "tier"):  # named groups read in the order of the segment map
        names = [r["name"] for r in rules["segments" if by == "segment" else "tiers"]]
        order = [i for i in names if i in order] + [i for i in order if i not in names]
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
    sat = shown["satisfaction"].dropna().sort_values() if "satisfaction" in shown.columns else pd.Series(dtype=float)
    if len(sat) > 1 and sat.iloc[-1] - sat.iloc[0] < 0.2:
        word = {"cluster": "group", "_selection": "group"}.get(by, by)
        parts.append(f"Satisfaction is about the same in every {word} ({sat.min():.1f} to {sat.max():.1f} of 5).")
    elif len(sat) > 1:
        s = sat
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
                     columns: Iterable[str] = ("customer_id", "monetary", "frequency", "recency", "segment",
                                               "cluster")) -> dict:
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
    out = selection.merge(found, on=customer_id_col, how="left")
    rest = [c for c in selection.columns if c != customer_id_col]
    return out[[customer_id_col, *cols, *rest]]       # contact details right after the id


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
               list_columns: Iterable[str] = ("customer_id", "segment", "cluster", "recency", "frequency",
                                              "monetary"),
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
        (one-row persona of the selection, its shares being of all customers
        and all revenue; None when fewer than ``min_size`` match),
        ``customers`` (the top ``list_size`` by ``sort_by``: ids and
        figures, for a masked list; empty when fewer than ``min_size``
        match), ``text``.
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
        # shares of all customers and all revenue, not of the selection itself
        profile["share_customers"] = count / max(len(data), 1)
        profile["share_revenue"] = share_rev
    cols = [c for c in list_columns if c in sel.columns]
    # a selection under the minimum size is not listed customer by customer
    customers = (sel.nlargest(list_size, sort_by)[cols].reset_index(drop=True) if count >= min_size
                 else sel[cols].iloc[:0])
    what = f"the filter {filter.strip()!r}" if filter and filter.strip() else "no filter"
    text = (f"{_n(count)} customers ({_pct(count / max(len(data), 1))}) match {what}, bringing "
            f"{_pct(share_rev)} of revenue.")
    if 0 < count < min_size:
        text += f" Fewer than {min_size} match, so their profile and list are not shown."
    return {"count": count, "share": count / max(len(data), 1), "share_revenue": share_rev,
            "profile": profile, "customers": customers, "text": text}


# --------------------------------------------------------------------------
# movement between runs
# --------------------------------------------------------------------------

# segments whose customers are lapsing (a move into one of them is a slip)
LAPSING: tuple[str, ...] = ("at risk", "hibernating", "lost")
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
        "<min_size", empty cells as a dash), ``stayed_share`` (of customers in both runs, the share
        whose segment did not change), ``sentences`` (the biggest moves in
        plain words), ``text``.
    """
    # ids compared as text: a CSV read back may type them differently
    prev = previous[[id_col, segment_col]].astype({id_col: str}).drop_duplicates(id_col)
    cur = current[[id_col, segment_col]].astype({id_col: str}).drop_duplicates(id_col)
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
            table.loc[r, c] = ("\u2013" if v == 0 else f"<{min_size}" if v < min_size
                               else f"{v:,} ({shares.loc[r, c]:.0%})")
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
    # a slip: into a lapsing segment from one listed before it (the map runs from best to worst)
    rank = {name: i for i, name in enumerate(names)}
    worse = [m for m in moves if m[2] in LAPSING and rank.get(m[2], 0) > rank.get(m[1], 0)]
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

def order_dates(orders: ir.Table, as_of: str | dt.date | None = None, *,
                date_col: str = "order_date") -> dict:
    """The dates a run needs, from one engine query (which also profiles the
    channels for :func:`customer_table`) and the snapshot date.

    Returns ``{"as_of", "first", "latest"}`` as dates: the snapshot
    (:func:`crmlab.engine.snapshot_date`: ``as_of``, or the latest order
    date when empty), and the first and the latest order date in the data
    (``latest`` may be after ``as_of``).

    Raises
    ------
    NoDataError
        The table has no order date.
    ParameterError
        ``as_of`` is not a date.
    """
    profile = _orders_profile(orders, date_col)
    if profile is None:  # free-text status or channel: the dates alone
        profile = orders.aggregate(_first=orders[date_col].min(), _last=orders[date_col].max()).to_pandas()
    first, last = profile["_first"].min(), profile["_last"].max()
    if pd.isna(last):
        raise NoDataError("table orders has no rows with an order_date")
    first, latest = pd.Timestamp(first).date(), pd.Timestamp(last).date()
    day = snapshot_date(orders, as_of, date_col=date_col)
    return {"as_of": day, "first": first, "latest": latest}


def holdout_snapshot(dates: Mapping, holdout_days: int = 180) -> dt.date | None:
    """The snapshot at which to check RFM against what customers did next.

    ``as_of`` itself when the data covers the ``holdout_days`` after it (a
    true check of this run's scores); else ``latest - holdout_days`` (the
    same method back-tested on the latest period the data can judge); None
    when that leaves less than ``holdout_days`` of history before it.

    Parameters
    ----------
    dates : dict
        From :func:`order_dates`.

    Examples
    --------
    >>> d = {"as_of": dt.date(2026, 6, 30), "first": dt.date(2023, 1, 1), "latest": dt.date(2026, 6, 30)}
    >>> holdout_snapshot(d, 180)
    datetime.date(2026, 1, 1)
    """
    if holdout_days <= 0:
        raise ParameterError("holdout_days must be positive (parameter holdout_days)")
    span = dt.timedelta(days=int(holdout_days))
    day = dates["as_of"] if dates["as_of"] + span <= dates["latest"] else dates["latest"] - span
    return day if day - span >= dates["first"] else None


def rfm_holdout_check(orders: ir.Table, as_of: str | dt.date, holdout_days: int = 180, *,
                      rules: Mapping | str | Path | None = None, frequency: str = "orders",
                      latest: dt.date | None = None,
                      n_customers: int | None = None, max_customers: int | None = HOLDOUT_MAX_CUSTOMERS,
                      customer_id_col: str = "customer_id", date_col: str = "order_date",
                      amount_col: str = "amount", status_col: str | None = "status") -> dict:
    """Rank correlation of ``rfm_score`` at ``as_of`` with spend in the next
    ``holdout_days`` days.

    Scores every customer who bought up to ``as_of`` (the RFM of
    :func:`rfm_table`, :func:`score_rfm`), sums each one's purchase spend in
    ``(as_of, as_of + holdout_days]`` (0 for those who did not buy) -- both
    in the engine -- and takes Spearman's rank
    correlation (ties get average ranks) with its two-sided p-value. To
    check a snapshot you can see the future of, pass an ``as_of`` at least
    ``holdout_days`` before the latest order (:func:`holdout_snapshot`).

    Parameters
    ----------
    orders : ibis.Table
        One row per order: ``customer_id, order_date, amount[, status]``.
    as_of : str | date
        The snapshot.
    latest : date, optional
        The latest order date, when already known (saves a query).
    n_customers, max_customers : int, optional
        With about ``n_customers`` customers (e.g. the current customer
        table's length) and more than ``max_customers``, the check runs on a
        random sample of about ``max_customers`` of them, chosen by a hash of
        the customer id in the engine (same sample every run): Spearman's
        rank correlation on a hundred thousand customers is precise to
        about 0.003, and the aggregation is ten times lighter at scale.

    Returns
    -------
    dict
        ``spearman``, ``p_value``, ``n_customers``, ``holdout_start``,
        ``holdout_end``, ``complete`` (the data reaches the end of the
        holdout), ``table`` (one row per rfm_score: customers, share who
        bought, mean future spend), ``text``.
    """
    if holdout_days <= 0:
        raise ParameterError("holdout_days must be positive (parameter holdout_days)")
    _check_frequency(frequency)
    day = snapshot_date(orders, as_of, date_col=date_col)
    end = day + dt.timedelta(days=int(holdout_days))
    t = _purchases(orders, as_of_literal(end), date_col=date_col, status_col=status_col)
    every = 1
    if n_customers and max_customers and n_customers > max_customers:
        every = math.ceil(n_customers / max_customers)
        t = t.filter(t[customer_id_col].hash() % every == 0)
    past = t[date_col] <= as_of_literal(day)
    agg = _with_rfm(_rfm_summary(t, day, customer_id_col=customer_id_col, date_col=date_col,
                                 amount_col=amount_col), day, frequency)
    after = t.filter(~past)
    future = after.group_by(customer_id_col).aggregate(future_spend=after[amount_col].sum())
    merged = agg.to_pandas().merge(future.to_pandas(), on=customer_id_col, how="left")
    merged = score_rfm(merged, rules)
    merged["future_spend"] = merged["future_spend"].fillna(0.0).astype(float)
    if latest is None:
        latest = snapshot_date(orders, date_col=date_col)
    complete = latest >= end
    if len(merged) < 3 or merged["future_spend"].nunique() < 2 or merged["rfm_score"].nunique() < 2:
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
    elif rho > 0 and p < 0.05:
        strength = "strongly" if rho >= 0.5 else "clearly" if rho >= 0.3 else "weakly" if rho > 0.1 else "hardly"
        text = (f"The RFM score ranks customers by what they do next: scored on {day.isoformat()}, customers "
                f"with a higher score spent more in the following {holdout_days} days (Spearman rank "
                f"correlation {rho:.2f} over {_n(len(merged))} customers, p {_p(p)}; 1 would be a perfect "
                f"ranking, 0 none). The score {strength} predicts future spend, so it is a sound basis for "
                f"deciding whom to treat first.")
    else:
        text = (f"Scored on {day.isoformat()}, a higher RFM score did not go with higher spend in the following "
                f"{holdout_days} days (Spearman rank correlation {rho:.2f}, p {_p(p)}): do not rank customers "
                f"by it alone in this business.")
    if not math.isnan(rho) and not complete:
        text += f" The data ends on {latest.isoformat()}, before the holdout does, so the figure is provisional."
    if every > 1 and not math.isnan(rho):
        text += f" (The check ran on a random sample of {_n(len(merged))} customers: one in {every}.)"
    return {"spearman": rho, "p_value": p, "n_customers": len(merged), "sampled_one_in": every,
            "holdout_start": day.isoformat(),
            "holdout_end": end.isoformat(), "complete": bool(complete), "table": table, "text": text}


# --------------------------------------------------------------------------
# the page: tables, charts, inputs, the previous run, metric cards
# --------------------------------------------------------------------------

# column -> (heading a stakeholder reads, display format or None)
COLUMN_LABELS: dict[str, tuple[str, str | None]] = {
    "segment": ("Segment", None),
    "label": ("Also called", None),
    "tier": ("Tier", None),
    "cluster": ("Group", None),
    "selection": ("Selection", None),
    "customers": ("Customers", "{:,.0f}"),
    "share_customers": ("Share of customers", "{:.1%}"),
    "share_revenue": ("Share of revenue", "{:.1%}"),
    "median_recency": ("Days since last purchase (median)", "{:,.0f}"),
    "mean_frequency": ("Purchase days (mean)", "{:,.1f}"),
    "mean_monetary": ("Spend per customer (mean)", "{:,.0f}"),
    "avg_order_value": ("Average order value", "{:,.0f}"),
    "median_tenure_days": ("Days since first purchase (median)", "{:,.0f}"),
    "discount_share": ("Discount share of spend", "{:.1%}"),
    "median_age": ("Median age", "{:,.0f}"),
    "age_band": ("Most common age", None),
    "gender": ("Gender (most common)", None),
    "region": ("Region", None),
    "country": ("Country", None),
    "acquisition_channel": ("Came through", None),
    "channels": ("Buys through", None),
    "categories": ("Buys mostly", None),
    "satisfaction": ("Satisfaction (1-5)", "{:.1f}"),
    "nps": ("Likely to recommend (0-10)", "{:.1f}"),
    "meaning": ("What it means", None),
    "rule": ("Rule (scores 1-5, 5 = best)", None),
    "action": ("What to do", None),
    "customer_id": ("Customer", "{}"),
    "recency": ("Days since last purchase", "{:,.0f}"),
    "frequency": ("Purchase days", "{:,.0f}"),
    "monetary": ("Spend", "{:,.0f}"),
    "aov": ("Average order", "{:,.0f}"),
    "rfm_score": ("RFM score", "{:,.0f}"),
    "share_buying": ("Bought again in the holdout", "{:.0%}"),
    "mean_future_spend": ("Spend in the holdout (mean)", "{:,.0f}"),
    "k": ("Groups (k)", "{:,.0f}"),
    "silhouette": ("Silhouette", "{:.2f}"),
    "stability": ("Stability", "{:.2f}"),
    "chosen": ("Chosen", None),
    "previous": ("Segment last run \u2193 / now \u2192", None),
}
# personal columns keep their names, so the page masks them (crmlab.privacy)
CONTACT_COLUMNS: tuple[str, ...] = ("name", "email", "phone")

# the columns of the behavioural-groups table and of the profile tables
GROUP_COLUMNS: tuple[str, ...] = ("cluster", "customers", "share_customers", "share_revenue", "avg_order_value",
                                  "discount_share", "channels", "categories")
PERSONA_COLUMNS: tuple[str, ...] = ("cluster", "segment", "customers", "age_band", "median_age", "gender", "region",
                                    "acquisition_channel", "median_tenure_days", "satisfaction", "nps")
SEGMENT_PROFILE_COLUMNS: tuple[str, ...] = ("segment", "customers", "avg_order_value", "age_band", "gender", "region",
                                            "channels", "categories", "median_tenure_days", "satisfaction")
# columns a drill-down filter may use, in the order the page lists them
FILTER_COLUMNS: tuple[str, ...] = ("segment", "tier", "cluster", "region", "country", "gender", "age", "age_band",
                                   "acquisition_channel", "main_channel", "main_category", "recency", "frequency",
                                   "monetary", "aov", "tenure", "r_score", "f_score", "m_score", "rfm_score",
                                   "discount_share", "n_interactions", "n_tickets", "satisfaction")
EXAMPLE_FILTER = 'region == "East" and age >= 30 and segment == "at risk"'

# what the parts of the page need: customer-table column (or prefix) -> the
# source column that provides it (for "not available: needs ...")
INPUTS: dict[str, tuple[str, str]] = {
    "categories": ("cat_", "order_lines.category"),
    "channels": ("ch_", "orders.channel"),
    "discount": ("discount_share", "orders.discount"),
    "age": ("age", "customers.birth_date"),
    "gender": ("gender", "customers.gender"),
    "region": ("region", "customers.region"),
    "interactions": ("n_interactions", "interactions"),
    "satisfaction": ("satisfaction", "tickets.satisfaction"),
}
# parts of the page that need a column with some positive value: part ->
# (customer-table column, the source column that provides it)
POSITIVE_INPUTS: dict[str, tuple[str, str]] = {
    "revenue": ("monetary", "orders.amount above zero"),
}
# behavioural clustering needs at least this many customers
MIN_CLUSTER_CUSTOMERS = 100

# metrics.json key -> how the page shows it (kpi=True: a KPI card);
# share_<segment> keys not listed get a label from the segment map
METRIC_CARDS: dict[str, dict] = {
    "n_customers": {"label": "Customers", "fmt": "{:,.0f}", "better": "higher", "kpi": True},
    "share_champions": {"label": "Core customers", "fmt": "{:.1%}", "better": "higher", "kpi": True},
    "share_at_risk": {"label": "Customers at risk", "fmt": "{:.1%}", "better": "lower", "kpi": True},
    "top20_revenue_share": {"label": "Revenue from the top 20%", "fmt": "{:.1%}", "better": None, "kpi": True},
    "holdout_spearman": {"label": "RFM predicts spend (rank correlation)", "fmt": "{:.2f}", "better": "higher"},
    "gini": {"label": "Revenue concentration (Gini)", "fmt": "{:.2f}", "better": None},
    "n_clusters": {"label": "Behavioural groups", "fmt": "{:,.0f}", "better": None},
    "silhouette": {"label": "Cluster separation (silhouette)", "fmt": "{:.2f}", "better": "higher"},
}


def page_table(df: pd.DataFrame | None, *, columns: Iterable[str] | None = None,
               min_size: int = config.MIN_GROUP_SIZE, max_rows: int | None = None) -> dict:
    """A result table made ready for the page: plain headings and formats.

    Takes any small frame of this module (its index, when named, becomes the
    first column), keeps ``columns`` (those present, in that order; default
    all) and renames them by :data:`COLUMN_LABELS`. Returns the keywords of
    ``Report.section`` -- ``{"table": frame, "table_options": {...}}`` with
    ``formats``, ``max_rows`` and, when there is a ``customers`` column,
    ``count_col`` and ``min_size``, so that groups under the minimum size
    are merged before a stakeholder sees them. Personal columns (name,
    email, phone) keep their names so the page masks them. ``None`` gives
    ``{"table": None}``.

    Returns
    -------
    dict

    Examples
    --------
    >>> shown = page_table(pd.DataFrame({"segment": ["loyal"], "customers": [120],
    ...                                  "share_revenue": [0.4]}))
    >>> list(shown["table"].columns), shown["table_options"]["count_col"]
    (['Segment', 'Customers', 'Share of revenue'], 'Customers')
    """
    if df is None:
        return {"table": None}
    frame = df.reset_index() if df.index.name is not None else df.reset_index(drop=True)
    if columns is not None:
        frame = frame[[c for c in columns if c in frame.columns]]
    frame = frame.copy()
    for col in frame.columns:  # pandas' str dtype does not take the blanks of small groups
        if not pd.api.types.is_numeric_dtype(frame[col]) and not pd.api.types.is_bool_dtype(frame[col]):
            frame[col] = frame[col].astype(object)
    formats = {COLUMN_LABELS[c][0]: COLUMN_LABELS[c][1] for c in frame.columns
               if c in COLUMN_LABELS and COLUMN_LABELS[c][1] and c not in CONTACT_COLUMNS}
    options: dict[str, Any] = {"formats": formats,
                               "max_rows": int(max_rows) if max_rows else max(50, min(len(frame), 500))}
    if "customers" in frame.columns:
        options.update(count_col=COLUMN_LABELS["customers"][0], min_size=int(min_size))
    frame = frame.rename(columns={c: COLUMN_LABELS[c][0] for c in frame.columns
                                  if c in COLUMN_LABELS and c not in CONTACT_COLUMNS})
    return {"table": frame, "table_options": options}


# score keys of a rule, as the segment map table says them
RULE_WORDS: dict[str, str] = {"r": "recency", "f": "frequency", "m": "spend", "fm": "frequency and spend (mean)"}
SEGMENT_COLUMNS: tuple[str, ...] = ("segment", "customers", "share_customers", "share_revenue", "median_recency",
                                    "mean_frequency", "mean_monetary")


def rule_text(rule: Mapping) -> str:
    """A segment-map rule in words: ``{"r": [4, 5], "f": [1, 1]}`` ->
    ``"recency score 4-5, frequency score 1"``; a rule without ranges is
    the catch-all."""
    parts = []
    for key, word in RULE_WORDS.items():
        if key in rule:
            lo, hi = rule[key]
            span = f"{lo:g}" if lo == hi else f"{lo:g}\u2013{hi:g}"
            parts.append(f"{word} score {span}")
    return ", ".join(parts) if parts else "everyone not matched above"


def segment_map_table(rules: Mapping | str | Path | None = None, section: str = "segments") -> pd.DataFrame:
    """The segment map (or the value tiers, ``section="tiers"``) as a table:
    ``segment, label, rule, meaning, action`` in the order the rules apply
    (``label`` empty when it repeats the name)."""
    rows = []
    for r in _rules(rules)[section]:
        label = r.get("label", "")
        rows.append({"segment": r["name"], "label": "" if label in ("", r["name"]) else label,
                     "rule": rule_text(r), "meaning": r.get("meaning", ""), "action": r.get("action", "")})
    table = pd.DataFrame(rows)
    return table.drop(columns=[c for c in ("label", "action") if not table[c].astype(bool).any()])


def missing_inputs(cust: pd.DataFrame, parts: Iterable[str]) -> list[str]:
    """The source columns a part of the page lacks, e.g.
    ``missing_inputs(cust, ["categories"]) -> ["order_lines.category"]``
    when the customer table has no category mix (:data:`INPUTS`), or
    ``missing_inputs(cust, ["revenue"]) -> ["orders.amount above zero"]``
    when no customer spent anything (:data:`POSITIVE_INPUTS`)."""
    out = []
    for part in parts:
        if part in POSITIVE_INPUTS:
            col, needs = POSITIVE_INPUTS[part]
            if col not in cust.columns or not (pd.to_numeric(cust[col], errors="coerce") > 0).any():
                out.append(needs)
            continue
        col, needs = INPUTS[part]
        have = (any(c.startswith(col) for c in cust.columns) if col.endswith("_")
                else col in cust.columns and cust[col].notna().any())
        if not have:
            out.append(needs)
    return out


# a missing input, as the page says what the groups were formed without
INPUT_WORDS: dict[str, str] = {"categories": "what customers buy", "channels": "where they buy",
                               "discount": "their discount habit", "age": "their age"}


def clustering_note(cust: pd.DataFrame) -> str | None:
    """A sentence for the clustering section when behavioural inputs are
    missing (None when all are there)."""
    parts = [p for p in INPUT_WORDS if missing_inputs(cust, [p])]
    if not parts:
        return None
    needs = missing_inputs(cust, parts)
    return (f"The groups were formed without {', '.join(INPUT_WORDS[p] for p in parts)}, which the data does "
            f"not hold; they rest on spend per order and purchase timing. Adding {', '.join(needs)} would "
            f"describe behaviour better.")


def drill_hint(cust: pd.DataFrame, *, min_size: int = config.MIN_GROUP_SIZE) -> str:
    """The paragraph of the drill-down section when no filter was given:
    what the default view shows and how to select customers."""
    cols = [c for c in FILTER_COLUMNS if c in cust.columns or (c == "age_band" and "age" in cust.columns)]
    return (f"No filter was set, so this shows how many customers each segment has in each region (blank: "
            f"fewer than {min_size}, not shown). To select customers on any combination of attributes, run the "
            f"report with the filter parameter, for example: crmlab run segmentation -p "
            f"'filter={EXAMPLE_FILTER}'. The page then shows how many match, their profile and a masked list "
            f"of the most valuable of them. You can filter on: {', '.join(cols)}.")


def _pyplot():
    import matplotlib.pyplot as plt

    from crmlab import charts

    charts.use_theme()
    return plt, charts


def _percent_axis(axis, which: str = "y") -> None:
    from matplotlib.ticker import PercentFormatter

    (axis.yaxis if which == "y" else axis.xaxis).set_major_formatter(PercentFormatter(1.0, decimals=0))


def segment_chart(summary: Mapping | pd.DataFrame, *, min_size: int = config.MIN_GROUP_SIZE):
    """Customers and revenue per RFM segment, side by side (horizontal bars).

    Takes :func:`rfm_summary`'s result (or its ``table``); segments with
    fewer than ``min_size`` customers are left out. Returns a matplotlib
    figure with two panels sharing the segment axis (None when no segment
    is large enough to show).
    """
    table = summary["table"] if isinstance(summary, Mapping) else summary
    shown = table[table["customers"] >= min_size]
    if shown.empty:
        return None
    labels = [s if lab in ("", s) else f"{s} ({lab})" for s, lab in zip(shown["segment"], shown["label"])]
    plt, charts = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, max(2.5, 0.45 * len(shown) + 1.2)), sharey=True)
    charts.bar(pd.Series(shown["share_customers"].to_numpy(), index=labels), horizontal=True, fmt="{:.0%}",
               title="Share of customers", ax=left)
    charts.bar(pd.Series(shown["share_revenue"].to_numpy(), index=labels), horizontal=True, fmt="{:.0%}",
               title="Share of revenue", color=charts.COLORS["accent"], ax=right)
    for axis in (left, right):
        _percent_axis(axis, "x")
        axis.set_xlim(0, max(0.05, float(np.nanmax(shown[["share_customers", "share_revenue"]].to_numpy()))) * 1.25)
    fig.tight_layout()
    return fig


def k_choice_chart(model: BehaviourSegmenter):
    """How the number of groups was chosen: silhouette and stability by k
    (two small multiples), the chosen k marked and the stability bar drawn.

    Takes a fitted :class:`BehaviourSegmenter`; returns a matplotlib figure.
    """
    scores = model.k_scores_
    names = {"silhouette": "Separation (silhouette): higher is better",
             "stability": "Stability across seeds (adjusted Rand)"}
    long = scores.melt(id_vars="k", value_vars=list(names), var_name="measure", value_name="value")
    long["measure"] = long["measure"].map(names)
    plt, charts = _pyplot()
    fig = charts.small_multiples(long, facet="measure", x="k", y="value", ncols=2, kind="line", sharey=False)
    fig.set_size_inches(10, 3.2)
    for axis in fig.axes:
        name = axis.get_title(loc="left") or axis.get_title()
        part = long[long["measure"] == name]
        axis.plot(part["k"], part["value"], "o", color=charts.COLORS["main"], ms=4)
        axis.axvline(model.k_, color=charts.COLORS["accent"], lw=1.5, ls="--", label=f"chosen k = {model.k_}")
        if name.startswith("Stability"):
            axis.axhline(model.min_stability, color=charts.COLORS["neutral"], lw=1, ls=":",
                         label=f"stable enough ({model.min_stability:g})")
        axis.set_xlabel("number of groups k")
        axis.set_xticks(list(scores["k"]))
        axis.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig


def mix_chart(mix: pd.DataFrame, *, title: str | None = None, max_levels: int = 8, ncols: int = 3,
              max_panels: int = 12):
    """Small multiples of a mix: one panel per group, one bar per level.

    Takes a groups x levels share table (:func:`segment_profiles`'s
    ``categories`` or ``channels``: rows sum to 1, groups in the order to
    show, largest first); keeps the ``max_levels`` levels with the largest
    average share, in the same order on every panel. Each panel is a
    :func:`crmlab.charts.bar` (horizontal, values written on the bars);
    panels share the level axis. Returns a matplotlib figure (None for an
    empty table).
    """
    import textwrap

    if mix is None or mix.empty:
        return None
    plt, charts = _pyplot()
    data = mix.head(max_panels)
    levels = list(data.mean(axis=0).sort_values(ascending=False).index[:max_levels])
    labels = [str(v).replace("_", " ") for v in levels]
    n = len(data)
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols + 0.8, (0.22 * len(levels) + 1.0) * nrows),
                             sharey=True, sharex=True, squeeze=False)
    top = float(np.nanmax(data[levels].to_numpy())) if n else 1.0
    for axis, (group, row) in zip(axes.flat, data[levels].iterrows()):
        charts.bar(pd.Series(row.to_numpy(float), index=labels), horizontal=True, fmt="{:.0%}", ax=axis,
                   title=textwrap.fill(str(group), 32))
        axis.title.set_fontsize(10)
        axis.tick_params(labelsize=9)
        axis.set_xlim(0, top * 1.35)
        _percent_axis(axis, "x")
    for axis in list(axes.flat)[n:]:
        fig.delaxes(axis)
    if title:
        fig.suptitle(title, x=0.01, ha="left", fontweight="bold")
    fig.tight_layout()
    return fig


def pareto_chart(conc: Mapping):
    """The Pareto curve: the share of revenue brought by the top share of
    customers, against the line of equal spend, with the top 20% marked.

    Takes :func:`concentration`'s result; returns a matplotlib figure.
    """
    plt, charts = _pyplot()
    p = conc["pareto"]
    fig, axis = plt.subplots(figsize=(7, 4))
    axis.plot(p["customer_share"], p["revenue_share"], color=charts.COLORS["main"], lw=2.2,
              label="our customers")
    axis.plot([0, 1], [0, 1], ls="--", color=charts.COLORS["neutral"], lw=1, label="if everyone spent the same")
    top = float(conc["top20_revenue_share"])
    axis.plot([0.2], [top], "o", color=charts.COLORS["accent"], ms=7)
    axis.annotate(f"top 20% bring {top:.0%}", (0.2, top), xytext=(12, -18), textcoords="offset points",
                  fontsize=10)
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    _percent_axis(axis, "x")
    _percent_axis(axis, "y")
    axis.set_xlabel("Share of customers, biggest spenders first")
    axis.set_ylabel("Share of revenue")
    axis.set_title("How concentrated revenue is")
    axis.legend(loc="lower right")
    return fig


def holdout_chart(holdout: Mapping, *, min_size: int = config.MIN_GROUP_SIZE):
    """Mean spend in the holdout per RFM score (scores held by fewer than
    ``min_size`` customers left out). Takes :func:`rfm_holdout_check`'s
    result; returns a matplotlib figure (None when no score is held by
    enough customers)."""
    table = holdout["table"]
    shown = table[table["customers"] >= min_size]["mean_future_spend"]
    if shown.empty:
        return None
    days = _holdout_days(holdout)
    _, charts = _pyplot()
    return charts.bar(shown, fmt="{:,.0f}", title=f"Spend in the {days} days after {holdout['holdout_start']}, "
                                                  f"by RFM score then",
                      xlabel="RFM score (higher = bought more recently, more often, more)",
                      ylabel="Mean spend per customer")


def crosstab(cust: pd.DataFrame, rows: str = "segment", cols: str = "region", *,
             min_size: int = config.MIN_GROUP_SIZE, order: Iterable[str] | None = None,
             max_cols: int = 12) -> pd.DataFrame:
    """Customers per combination of two columns (segment x region ...).

    Takes one row per customer; returns a rows x columns table of counts
    where cells under ``min_size`` are blank (NaN) -- not shown
    individually. Rows follow ``order`` when given; at most ``max_cols``
    columns (the largest), the rest summed into ``"other"``.
    """
    a = cust[rows].astype(object).where(cust[rows].notna(), "unknown")
    b = cust[cols].astype(object).where(cust[cols].notna(), "unknown")
    top = b.value_counts().index[:max_cols]
    b = b.where(b.isin(top), OTHER)
    table = pd.crosstab(a, b)
    names = [r for r in (order or []) if r in table.index]
    table = table.reindex(names + [r for r in table.index if r not in names])
    table = table[[c for c in b.value_counts().index]]
    table = table.astype(float).where(table >= min_size)
    table.index.name, table.columns.name = rows, cols
    return table


def crosstab_chart(table: pd.DataFrame, *, title: str | None = None):
    """:func:`crosstab` as a labelled heatmap (blank cells: under the
    minimum size). Returns a matplotlib figure (None when every cell is
    blank)."""
    if table.empty or table.isna().all().all():
        return None
    _, charts = _pyplot()
    return charts.heatmap(table, fmt=",.0f", title=title)


def previous_segments(previous: list[Mapping], *, source: str | None = None,
                      id_col: str = "customer_id") -> dict:
    """The customer -> segment list of the previous successful run.

    Parameters
    ----------
    previous : list of dict
        ``Report.previous(1)``: the earlier runs, newest first (``run_dir``,
        ``params``, ``finished_at`` ...).
    source : str, optional
        This run's source: a previous run on another source is not compared.

    Returns
    -------
    dict
        ``segments`` (frame ``customer_id, segment`` with ids as text, or
        None), ``run_id``, ``text`` (why there is nothing to compare, or what
        is compared with).
    """
    if not previous:
        return {"segments": None, "run_id": None,
                "text": "This is the first run of this report, so there is no earlier segmentation to compare "
                        "with yet: moves between segments will show from the next run on."}
    run = previous[0]
    when = str(run.get("finished_at") or run.get("started_at") or "")[:10] or "an earlier date"
    params = run.get("params") or {}
    if source and params.get("source") and params.get("source") != source:
        return {"segments": None, "run_id": run.get("run_id"),
                "text": f"The previous run ({when}) read another data source, so its segments are not "
                        f"compared with these; moves will show from the next run on this source."}
    path = Path(run["run_dir"]) / "exports" / "segments.csv"
    if not path.is_file():
        return {"segments": None, "run_id": run.get("run_id"),
                "text": f"The previous run ({when}) left no segment list to compare with."}
    frame = pd.read_csv(path, usecols=[id_col, "segment"], dtype={id_col: str, "segment": str})
    prev_as_of = params.get("as_of") or "its latest order"
    return {"segments": frame, "run_id": run.get("run_id"),
            "text": f"Compared with the previous run of {when} (as of {prev_as_of})."}


def metric_cards(figures: Mapping, rules: Mapping | str | Path | None = None) -> list[dict]:
    """Keyword sets for ``Report.metric``, one per figure of :func:`metrics`.

    Each is ``{"key", "value", "label", "fmt", "better", "kpi"}`` from
    :data:`METRIC_CARDS`; ``share_<segment>`` keys get the segment map's label
    and a percentage format. KPI cards come first.
    """
    rules = _rules(rules)
    labels = {f"share_{slug(r['name'])}": r.get("label") or r["name"] for r in rules["segments"]}
    labels.update({f"share_tier_{slug(r['name'])}": f"{r['name']} tier" for r in rules["tiers"]})
    out = []
    for key, value in figures.items():
        spec = dict(METRIC_CARDS.get(key, {}))
        if not spec:
            spec = {"label": f"Share: {labels.get(key, key)}", "fmt": "{:.1%}" if key.startswith("share_") else
                    "{:,.2f}", "better": None}
        spec.setdefault("kpi", False)
        out.append({"key": key, "value": value, **spec})
    return sorted(out, key=lambda m: not m["kpi"])


# --------------------------------------------------------------------------
# exports, metrics, findings
# --------------------------------------------------------------------------

def segments_export(scored: pd.DataFrame) -> pd.DataFrame:
    """``exports/segments.csv``: ``customer_id, recency, frequency, monetary,
    r_score, f_score, m_score, rfm_score, segment, tier, cluster`` (cluster =
    its plain-word name; empty when clustering did not run)."""
    out = scored.reindex(columns=[c for c in EXPORT_COLUMNS if c in scored.columns])
    if "cluster" not in out.columns:
        out["cluster"] = ""
    out["monetary"] = out["monetary"].round(2)           # money to the cent (shorter, faster file)
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


def segment_title(name: str, rules: Mapping | str | Path | None = None) -> str:
    """A segment as a page names it: ``"core customers (champions)"`` when the
    map gives a label, else the name."""
    info = {r["name"]: r for r in _rules(rules)["segments"]}
    label = info.get(name, {}).get("label")
    return f"{label} ({name})" if label and label != name else str(name)


def findings(scored: pd.DataFrame, *, clustered: pd.DataFrame | None = None,
             model: BehaviourSegmenter | None = None, conc: Mapping | None = None,
             movement: Mapping | None = None, holdout: Mapping | None = None,
             min_size: int = config.MIN_GROUP_SIZE, rules: Mapping | str | Path | None = None) -> list[str]:
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
        out.append(f"{_cap(segment_title(top.name, rules))} are {_pct(top['size'] / n)} of {_n(n)} customers "
                   f"and bring {_pct(top['sum'] / total)} of revenue.")
    if "at risk" in by_seg.index:
        r = by_seg.loc["at risk"]
        days = scored.loc[scored["segment"] == "at risk", "recency"].median()
        out.append(f"{_n(r['size'])} valuable customers are at risk (no purchase for a median {_n(days)} days); "
                   f"they brought {_pct(r['sum'] / total)} of revenue.")
    if conc is not None:
        out.append(f"The top 20% of customers bring {_pct(conc['top20_revenue_share'])} of revenue and the top 1% "
                   f"bring {_pct(conc['top1_revenue_share'])}.")
    if movement is not None and len(movement.get("sentences", [])) > 1:
        out.append(movement["sentences"][1])
    if clustered is not None and model is not None:
        sizes = clustered["cluster"].value_counts()
        if len(sizes) and sizes.iloc[0] >= min_size:
            out.append(f"Behaviour splits customers into {model.k_} groups; the largest is "
                       f"\u201c{sizes.index[0]}\u201d ({_pct(sizes.iloc[0] / n)}).")
    rho = float("nan") if holdout is None else holdout.get("spearman", float("nan"))
    if not math.isnan(rho):
        if rho > 0 and holdout.get("p_value", 1.0) < 0.05:
            out.append(f"The RFM score predicts spend: customers with a higher score spent more in the "
                       f"{_holdout_days(holdout)} days after scoring (rank correlation {rho:.2f}; 1 would be a "
                       f"perfect ranking).")
        else:
            out.append(f"The RFM score did not predict spend in the {_holdout_days(holdout)} days after scoring "
                       f"(rank correlation {rho:.2f}): do not rank customers by it alone.")
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


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


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
