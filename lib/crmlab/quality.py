"""Can this data be trusted? The analytics of the data-quality report.

Every check runs inside the engine (ibis expressions; DuckDB by default) and
only small results reach pandas: one row per table, column or check, plus
the list of flagged rows (table, row, column, defect), which is as long as
the number of defects found. The rules -- email pattern, categorical
domains, date limits, dimension weights, importance of columns, the
plain-language fixes -- are data in ``quality.yaml`` (:func:`load_rules`).

The notebook calls :func:`assess` once and shows what it returns::

    q = quality.assess(data, as_of=as_of)      # a QualityReport
    q.overview, q.completeness, q.validity     # small frames ready to show
    q.paragraph("validity")                   # the section's sentence(s)
    q.findings()                               # "what changed" sentences
    q.metrics(), q.exports()                   # metrics.json and exports/*.csv

The page is built from the report with plain-heading tables
(:func:`overview_table`, :func:`completeness_table`, :func:`checks_table`,
:func:`phone_table`, :func:`normalisation_table`, :func:`integrity_table`,
:func:`outlier_table`, :func:`quarantine_table`, :func:`fixes_table`,
:func:`example_pairs`, each passed through :func:`page_table`), charts in
the shared theme (:func:`dimension_chart`, :func:`trend_chart`,
:func:`completeness_chart`, :func:`format_chart`, :func:`weights_chart`),
the KPI cards (:func:`metric_cards`), the score across runs
(:func:`score_history`, :func:`trend_text`) and what a section lacks on
thin data (:func:`section_needs`).

Each check also has its own function taking ibis tables, for analysts who
want one piece (:func:`table_checks` + :func:`run_checks`,
:func:`normalise_phones`, :func:`format_mix`, :func:`integrity`,
:func:`duplicate_keys`, :func:`outliers`, :func:`freshness`,
:func:`quarantine_summary`, :func:`detect_defects`).

Scale: every table is read in a few passes whatever its size -- all of a
table's rules in one aggregation (counts and the flagged rows' numbers
together), categorical values counted once, integer keys checked against a
bitmap of the parent's keys instead of a hash join, long value lists tested
as a subquery, outlier fences from a sample of storage blocks. A source's
own conventions come from its mapping (:func:`source_rules`).

How the six dimension scores (0-100) are computed
-------------------------------------------------
completeness
    importance-weighted mean, over every column of every table, of the share
    of filled cells (empty strings and null tokens such as ``"N/A"`` count
    as empty). Importance per column is in ``quality.yaml``.
validity
    mean over the validity checks (email syntax and domain, phone number,
    date limits, amount limits, categorical domains and ranges) of the share
    of checked (non-empty) values that pass.
uniqueness
    mean over tables with a key of ``1 - redundant rows / rows``; redundant
    rows are repeated keys plus, for customers, the records that the entity
    resolution merges into another (records in a cluster minus one).
consistency
    mean over the consistency checks (date formats, phone formats,
    whitespace and case of text and categorical columns) of the share of
    values written in the column's canonical form.
integrity
    mean over the relationships present (orders -> customers, lines ->
    orders, contacts -> campaigns, ...) of the share of child rows whose
    parent exists.
timeliness
    mean over dated tables of a freshness score: 100 when the newest record
    is at most ``fresh_days`` older than the reference date (``as_of``, else
    the extraction time), falling linearly to 0 at ``stale_days``.

The quality score is the weighted mean of the dimensions that could be
measured (weights in ``quality.yaml``).

Messages, frames and sentences name tables, columns, rows and checks, never
a personal value.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import functools
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ibis
import ibis.expr.datatypes as dtypes
import ibis.expr.types as ir
import numpy as np
import pandas as pd
import phonenumbers
import yaml

from crmlab import schema
from crmlab.exceptions import DataContractError, NoDataError, ParameterError
from crmlab.sources import id_text, is_blank

RULES_PATH = Path(__file__).with_name("quality.yaml")

DIMENSIONS = ("completeness", "validity", "uniqueness", "consistency", "integrity", "timeliness")


# the metric names of the issue (metrics.json)
METRIC_NAMES = ("quality_score",) + tuple(f"{d}_score" for d in DIMENSIONS) + (
    "duplicate_pairs", "duplicate_rate", "invalid_email_rate", "invalid_phone_rate",
    "orphan_orders", "quarantined_rows")

# short plain names of defect classes, for sentences and tables
DEFECT_LABELS: dict[str, str] = {
    "missing_value": "missing values",
    "invalid_email": "invalid email addresses",
    "invalid_phone": "invalid phone numbers",
    "invalid_date": "unreadable dates",
    "invalid_number": "unreadable numbers",
    "negative_amount": "negative amounts",
    "absurd_amount": "absurd amounts",
    "future_date": "dates in the future",
    "date_out_of_range": "impossible dates",
    "mixed_date_format": "dates in a minority format",
    "mixed_phone_format": "phones in a minority format",
    "case_whitespace": "stray spaces or case variants",
    "out_of_domain": "values outside their allowed list",
    "orphan_order": "orders without a known customer",
    "orphan_order_line": "order lines without a known order or product",
    "orphan_contact": "campaign contacts without a known campaign or customer",
    "orphan_ticket": "tickets without a known customer",
    "orphan_interaction": "interactions without a known customer",
    "duplicate_customer": "duplicate customer records",
    "duplicate_key": "repeated keys",
    "stale_data": "stale data",
    "quarantine": "rows set aside by validation",
    "outlier": "outliers",
}


# --------------------------------------------------------------------------
# rules
# --------------------------------------------------------------------------

def _deep_merge(base: dict, over: Mapping) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


@functools.lru_cache(maxsize=4)
def _read_rules(path: str) -> dict:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def load_rules(overrides: Mapping | str | Path | None = None, path: str | Path | None = None
               ) -> dict:
    """The data-quality rules: ``quality.yaml`` merged with ``overrides``.

    Parameters
    ----------
    overrides : mapping, or a YAML file, optional
        Keys to replace; dictionaries merge key by key, lists and scalars
        replace (e.g. ``{"domains": {"orders": {"status": ["paid", "open"]}}}``).
        A file name is read as YAML (relative names also from the project
        root, as a user types them); ``""`` or None: none.
    path : path, optional
        Another rules file instead of the packaged one.

    Returns
    -------
    dict
        A fresh copy (changing it does not change later calls).

    Raises
    ------
    ParameterError
        The overrides file is missing or not a YAML mapping.

    Examples
    --------
    >>> load_rules({"dedupe": {"threshold": 0.95}})["dedupe"]["threshold"]
    0.95
    """
    base = _read_rules(str(path or RULES_PATH))
    if isinstance(overrides, (str, Path)):
        overrides = _read_overrides(overrides)
    return _deep_merge(base, overrides or {})


def _read_overrides(name: str | Path) -> dict:
    from crmlab import config

    if not str(name).strip():
        return {}
    p = config.project_path(name)
    doc = config.load_yaml(p, "quality rules (parameter rules)")
    unknown = sorted(set(doc) - set(_read_rules(str(RULES_PATH))))
    if unknown:
        raise ParameterError(f"quality rules file {p.name}: unknown section(s) {', '.join(unknown)}; "
                             f"known: {', '.join(_read_rules(str(RULES_PATH)))}")
    return doc


def source_rules(rules: dict, mapping: Mapping | None) -> dict:
    """The rules made to fit one source: what its mapping declares
    (``crmlab.sources.load_mapping``) is taken as the source's own truth.

    - ``values`` (foreign -> canonical value maps), together with the data
      contract's synonyms (``crmlab.schema.VALUE_MAPS``), become
      ``rules["value_maps"][table][column]``: a mapped value is in its domain;
    - ``date_format`` becomes ``rules["source_date_formats"][table][column]``,
      tried before the known formats;
    - ``limits``: a ``min``/``max`` of an amount replace its ``min`` and
      ``absurd_max``; a ``min``/``max`` of a date replace its ``min``/``max``.

    Returns a new dict; ``rules`` is not changed.

    Examples
    --------
    >>> m = {"tables": {"orders": {"limits": {"amount": {"max": 200000}},
    ...                            "values": {"status": {"已支付": "paid"}}}}}
    >>> r = source_rules(load_rules(), m)
    >>> r["amounts"]["orders"]["amount"]["absurd_max"], r["value_maps"]["orders"]["status"]["已支付"]
    (200000, 'paid')
    """
    out = copy.deepcopy(rules)
    maps: dict = {t: {c: {str(k).strip().lower(): v for k, v in m.items()} for c, m in cols.items()}
                  for t, cols in schema.VALUE_MAPS.items()}
    formats: dict = {}
    for table, settings in ((mapping or {}).get("tables") or {}).items():
        settings = settings or {}
        for col, vmap in (settings.get("values") or {}).items():
            maps.setdefault(table, {}).setdefault(col, {}).update(
                {str(k).strip().lower(): v for k, v in vmap.items()})
        for col, fmts in (settings.get("date_format") or {}).items():
            formats.setdefault(table, {})[col] = [fmts] if isinstance(fmts, str) else list(fmts)
        for col, lim in (settings.get("limits") or {}).items():
            amount = out.get("amounts", {}).get(table, {}).get(col)
            date = out.get("dates", {}).get("columns", {}).get(table, {}).get(col)
            if amount is not None:
                if lim.get("min") is not None:
                    amount["min"] = lim["min"]
                if lim.get("max") is not None:
                    amount["absurd_max"] = lim["max"]
            elif date is not None:
                for k in ("min", "max"):
                    if lim.get(k) is not None:
                        date[k] = str(lim[k])
    out["value_maps"] = maps
    out["source_date_formats"] = formats
    out["source_mapping_values"] = {
        t: sorted((st or {}).get("values") or {})
        for t, st in ((mapping or {}).get("tables") or {}).items() if (st or {}).get("values")}
    out["source_decimal"] = {t: (st or {}).get("decimal") or "."
                             for t, st in ((mapping or {}).get("tables") or {}).items()}
    return out


# --------------------------------------------------------------------------
# small engine helpers
# --------------------------------------------------------------------------

@ibis.udf.scalar.builtin(signature=((dtypes.string, dtypes.string), dtypes.timestamp))
def try_strptime(value, fmt):  # noqa: D103 - DuckDB's TRY_STRPTIME
    ...


def _is_string(col: ir.Value) -> bool:
    return col.type().is_string()


def _blank(col: ir.Value) -> ir.BooleanValue:
    """True where a cell is empty (:func:`crmlab.sources.is_blank`: null,
    NaN, or text that is blank or one of :data:`crmlab.schema.NULL_TOKENS`).

    When ``col`` is a column of a table that carries a ``_b__<name>`` helper
    (see :func:`table_checks`), that precomputed column is used."""
    if isinstance(col, ir.Column):
        try:
            rel = col.op().rel.to_expr()
            name = col.get_name()
            if f"_b__{name}" in rel.columns:
                return rel[f"_b__{name}"]
        except Exception:  # not a plain column reference
            pass
    return is_blank(col)


def value_counts(t: ir.Table, columns: Sequence[str], *, limit: int | None = None
                 ) -> dict[str, pd.DataFrame | None]:
    """How often each value of some (categorical) columns occurs, in one query.

    Transforms a table into, per column, a small frame ``_v`` (the value as
    text), ``_n`` (rows) of its non-null values -- or None when the column
    has more than ``limit`` (default ``MAX_DISTINCT_CLASSIFIED``) distinct
    values. The group-bys of all columns run as one UNION ALL, so the engine
    plans and scans once per call. Values stay inside crmlab's rules (they
    are classified, never reported).
    """
    limit = MAX_DISTINCT_CLASSIFIED if limit is None else limit
    columns = [c for c in dict.fromkeys(columns) if c in t.columns]
    if not columns:
        return {}
    parts = [t.filter(t[c].notnull()).group_by(_v=t[c].cast("string"))
             .aggregate(_n=ibis._.count()).limit(limit + 1).mutate(_c=ibis.literal(c))
             for c in columns]
    df = (ibis.union(*parts) if len(parts) > 1 else parts[0]).to_pandas()
    out: dict[str, pd.DataFrame | None] = {}
    for c in columns:
        part = df[df["_c"] == c]
        out[c] = (None if len(part) > limit else
                  pd.DataFrame({"_v": part["_v"].astype(str).to_numpy(),
                                "_n": part["_n"].astype("int64").to_numpy()}))
    return out


def _blank_by_values(t: ir.Table, column: str, counts: pd.DataFrame | None = None
                     ) -> ir.BooleanValue:
    """:func:`_blank` for a low-cardinality text column: its distinct values
    (``counts``, from :func:`value_counts`) are classified once, then each
    row is a null test and a short lookup."""
    col = t[column]
    if not _is_string(col):
        return _blank(col)
    if counts is None:
        counts = value_counts(t, [column]).get(column)
    if counts is None:
        return _blank(col)
    tokens = [v for v in counts["_v"] if " ".join(v.split()).lower() in schema.NULL_TOKENS]
    return col.isnull() | _isin(col, tokens) if tokens else col.isnull()


# lists longer than this are tested as ``IN (SELECT ...)`` of a small
# in-memory table: engines compare a literal IN list item by item on every
# row (DuckDB: 300 values cost 30x the time of 10), and hash a subquery once
ISIN_LITERAL_MAX = 8


def _isin(expr: ir.Value, values: Sequence) -> ir.BooleanValue:
    """``expr IN values``, fast for long lists (:data:`ISIN_LITERAL_MAX`)."""
    values = list(dict.fromkeys(values))
    if not values:
        return ibis.literal(False)
    if len(values) <= ISIN_LITERAL_MAX:
        return expr.isin(values)
    return expr.isin(ibis.memtable(pd.DataFrame({"_v": values}))._v)


def _in_list(expr: ir.StringValue, values: Sequence[str]) -> ir.BooleanValue:
    """``expr IN values`` for text (every ISO country code ...)."""
    return _isin(expr, [str(v) for v in values])


def _as_number(col: ir.Value, decimal: str = ".") -> ir.NumericValue:
    """A number column as numbers; text is read as crmlab.sources reads it
    (currency signs and thousands separators allowed: ``¥1,234.50``), NULL
    where it is no number."""
    if _is_string(col):
        from crmlab.sources import _parse_number

        return _parse_number(col.strip(), decimal)
    if col.type().is_boolean():
        return col.cast("int8")
    return col


def date_parse_formats(rules: dict, extra: Sequence[str] = ()) -> list[str]:
    """The strptime formats tried, in order, on a text date: ``extra`` (a
    source mapping's ``date_format`` for the column) first, then every
    ``format`` and ``alt_format`` of ``rules["date_formats"]``.

    Examples
    --------
    >>> date_parse_formats(load_rules(), ["%d.%m.%y"])[:2]
    ['%d.%m.%y', '%Y-%m-%d']
    """
    out = list(extra)
    for f in rules["date_formats"]:
        alt = f.get("alt_format") or []
        for fmt in [f["format"], *([alt] if isinstance(alt, str) else alt)]:
            if fmt not in out:
                out.append(fmt)
    return out


def _as_timestamp(col: ir.Value, rules: dict, extra: Sequence[str] = ()) -> ir.TimestampValue:
    """A date column as a timestamp; text is parsed with every known format
    (:func:`date_parse_formats`)."""
    t = col.type()
    if t.is_timestamp():
        return col
    if t.is_date():
        return col.cast("timestamp")
    if _is_string(col):
        s = col.strip()
        try:
            engine = col.get_backend().name
        except Exception:  # an unbound expression (a memtable): DuckDB runs it
            engine = "duckdb"
        if engine != "duckdb":
            # other engines: ISO dates only (TRY_STRPTIME is DuckDB's); map the
            # source's date_format in its mapping to type the column instead
            return s.try_cast("timestamp")
        return ibis.coalesce(*[try_strptime(s, f) for f in date_parse_formats(rules, extra)])
    return col.cast("timestamp")


def _row_id(t: ir.Table, row_col: str) -> ir.IntegerValue:
    """The 1-based source row: ``row_col`` when present, else a row number
    (insertion order on an in-memory table)."""
    if row_col in t.columns:
        return t[row_col].cast("int64")
    return (ibis.row_number() + 1).cast("int64")


def _with_row(t: ir.Table, row_col: str) -> ir.Table:
    if row_col in t.columns:
        return t
    return t.mutate(**{row_col: (ibis.row_number() + 1).cast("int64")})


def reference_time(as_of=None, extracted_at=None) -> dt.datetime:
    """The date checks and freshness are measured against: the end of the
    ``as_of`` day, else the extraction time, else now."""
    if as_of not in (None, ""):
        day = pd.Timestamp(str(as_of))
        if len(str(as_of)) <= 10:
            day = day + pd.Timedelta(days=1) - pd.Timedelta(microseconds=1)
        return day.to_pydatetime()
    if extracted_at is not None:
        ts = pd.Timestamp(extracted_at)
        if ts.tzinfo is not None:
            ts = ts.tz_convert(None)
        return ts.to_pydatetime()
    return dt.datetime.now()


def _pct(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole else 0.0


# --------------------------------------------------------------------------
# phones: phonenumbers' own metadata, vectorised in the engine
# --------------------------------------------------------------------------

# the number types is_valid_number accepts; the common ones first, because
# the engine stops at the first that matches
_TYPES = ("mobile", "fixed_line", "toll_free", "premium_rate", "shared_cost", "voip",
          "personal_number", "pager", "uan", "voicemail")


def _full(pattern: str) -> str:
    return f"^(?:{pattern})$"


def _lengths_in(col: ir.StringValue, lengths: Sequence[int]) -> ir.BooleanValue:
    return col.length().isin(list(lengths))


def _desc_match(col: ir.StringValue, desc) -> ir.BooleanValue:
    """phonenumbers' ``_is_number_matching_desc``: length in the desc's
    possible lengths and a full match of its national number pattern."""
    cond = col.re_search(_full(desc.national_number_pattern))
    if desc.possible_length:
        cond = _lengths_in(col, [n for n in desc.possible_length if n > 0]) & cond
    return cond


@functools.lru_cache(maxsize=64)
def _fast_plan(region: str):
    """What the fast path needs about one region, or None when the region
    uses features the fast path does not reproduce (prefix transform rules)."""
    md = phonenumbers.PhoneMetadata.metadata_for_region(region)
    if md is None or md.national_prefix_transform_rule:
        return None
    gen = md.general_desc
    types = [getattr(md, name) for name in _TYPES]
    types = [d for d in types if d is not None and d.national_number_pattern]
    return {
        "region": region,
        "cc": str(md.country_code),
        "idd": md.international_prefix,
        "npfp": md.national_prefix_for_parsing,
        "general": gen,
        "lengths": sorted(n for n in gen.possible_length if n > 0),
        "local_lengths": sorted(gen.possible_length_local_only or ()),
        "types": types,
        # the fast path only confirms a +CC number for the region phonenumbers
        # tries first for that code (US for +1, CN for +86)
        "main": phonenumbers.COUNTRY_CODE_TO_REGION_CODE[md.country_code][0] == region,
    }


def _case(key: ir.Value, branches: Mapping[str, ir.Value], default: ir.Value) -> ir.Value:
    """``CASE key WHEN k THEN v ... ELSE default END`` from a dict."""
    out = default
    for k, v in branches.items():
        out = ibis.ifelse(key == k, v, out)
    return out


def _fast_phone_columns(t: ir.Table, raw: str, region: str,
                        fast_regions: Sequence[str]) -> ir.Table:
    """Add ``_fast``: the E.164 of numbers the fast path confirms as valid,
    else null.

    It decides only positives: a number it cannot confirm (another country,
    an extension, letters, a pattern it does not know, an invalid number) is
    left null for ``phonenumbers.parse``. Each step mirrors phonenumbers'
    ``parse``: strip ``+`` or the region's international prefix and read the
    country code, else read the number in the row's region; strip the
    national prefix (``_maybe_strip_national_prefix_carrier_code`` and the
    length test that follows it); then ``is_valid_number`` (general pattern
    and a number type, with possible lengths). Steps are separated by
    ``view()`` so the SQL stays linear in size.
    """
    plans = [p for p in (_fast_plan(r) for r in fast_regions) if p is not None]
    null_s = ibis.null().cast("string")
    if not plans:
        return t.mutate(_fast=null_s)
    by_region = {p["region"]: p for p in plans}
    main_by_cc = {p["cc"]: p["region"] for p in plans if p["main"]}

    s = t[raw].strip()
    t = t.mutate(_simple=s.re_search(r"^(\+|\()?[0-9][0-9 \-.()]*$").fill_null(False),
                 _digits=s.re_replace(r"[^0-9]", ""), _plus=s.startswith("+").fill_null(False)).view()
    # the international prefix of the row's region (00 in China, 011 in the US)
    idd = _case(t[region], {r: t._digits.re_extract(f"^(?:{p['idd']})", 0)
                            for r, p in by_region.items() if p["idd"]}, ibis.literal(""))
    t = t.mutate(_idd=ibis.ifelse(t._plus, ibis.literal(""), idd.fill_null(""))).view()
    after_idd = t._digits.substr(t._idd.length())
    t = t.mutate(_intl=t._plus | ((t._idd.length() > 0) & ~after_idd.startswith("0")),
                 _after=ibis.ifelse(t._plus, t._digits, after_idd)).view()
    # which plan reads the number, and its national significant number
    plan_intl, nsn_intl = null_s, null_s
    for cc, r in main_by_cc.items():
        hit = t._after.startswith(cc)
        plan_intl = ibis.ifelse(hit, ibis.literal(r), plan_intl)
        nsn_intl = ibis.ifelse(hit, t._after.substr(len(cc)), nsn_intl)
    # a national number that starts with its country code is ambiguous
    # (phonenumbers may strip the code): left to the library
    national_ok = t[region].isin(list(by_region)) & ~_case(
        t[region], {r: t._digits.startswith(p["cc"]) for r, p in by_region.items()},
        ibis.literal(True))
    plan_nat = ibis.ifelse(national_ok, t[region], null_s)
    t = t.mutate(_plan=ibis.ifelse(t._intl, plan_intl, plan_nat),
                 _nsn0=ibis.ifelse(t._intl, nsn_intl, t._digits))
    t = t.view()
    prefix = _case(t._plan, {r: t._nsn0.re_extract(f"^(?:{p['npfp']})", 0)
                             for r, p in by_region.items() if p["npfp"]}, ibis.literal(""))
    t = t.mutate(_prefix=prefix.fill_null("")).view()
    t = t.mutate(_rest=t._nsn0.substr(t._prefix.length())).view()

    def strip(p):
        gen = _full(p["general"].national_number_pattern)
        keep_original = t._nsn0.re_search(gen) & ~t._rest.re_search(gen)
        n = t._rest.length()
        length_ok = n.isin(p["lengths"]) | (n > max(p["lengths"]))
        if p["local_lengths"]:
            length_ok = length_ok & ~n.isin(p["local_lengths"])
        # the patterns run only for the few numbers that start with a prefix
        return ibis.ifelse(t._prefix.length() > 0, length_ok & ~keep_original, False)

    do_strip = _case(t._plan, {r: strip(p) for r, p in by_region.items()}, ibis.literal(False))
    t = t.mutate(_nsn=ibis.ifelse(do_strip.fill_null(False), t._rest, t._nsn0)).view()

    def valid(p):
        nsn = t._nsn
        any_type = ibis.or_(*[_desc_match(nsn, d) for d in p["types"]])
        # cheap tests first: the engine skips the rest for rows already false
        return (nsn.length().between(min(p["lengths"]), max(p["lengths"])) & ~nsn.startswith("0")
                & any_type & _desc_match(nsn, p["general"]))

    ok = _case(t._plan, {r: valid(p) for r, p in by_region.items()}, ibis.literal(False))
    cc = _case(t._plan, {r: ibis.literal(p["cc"]) for r, p in by_region.items()}, null_s)
    t = t.mutate(_fast=ibis.ifelse(t._simple & ok.fill_null(False), "+" + cc + t._nsn, null_s))
    return t.drop("_simple", "_digits", "_plus", "_idd", "_intl", "_after", "_plan", "_nsn0",
                  "_prefix", "_rest", "_nsn")


def parse_phone(raw: str | None, region: str | None) -> tuple[str | None, bool]:
    """One number through ``phonenumbers``: (E.164 or None, valid).

    The reference the fast path is tested against; also its fallback.

    Examples
    --------
    >>> parse_phone("+86 138-1234-5678", "CN")
    ('+8613812345678', True)
    >>> parse_phone("12345", "CN")
    (None, False)
    """
    if raw is None or not str(raw).strip():
        return None, False
    try:
        num = phonenumbers.parse(str(raw), region or None)
    except phonenumbers.NumberParseException:
        return None, False
    if not phonenumbers.is_valid_number(num):
        return None, False
    return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164), True


def _phone_region(t: ir.Table, country_col: str | None, default_region: str) -> ir.StringValue:
    default = ibis.literal(default_region)
    if country_col and country_col in t.columns:
        c = t[country_col].cast("string").strip().upper()
        return ibis.ifelse(_in_list(c, sorted(phonenumbers.SUPPORTED_REGIONS)).fill_null(False),
                           c, default)
    return default


def normalise_phones(t: ir.Table, *, phone_col: str = "phone", country_col: str | None = "country",
                     default_region: str = "CN", fast_regions: Sequence[str] = ("CN", "US"),
                     row_col: str = "_row", keep: Sequence[str] = ()) -> ir.Table:
    """Parse, validate and normalise phone numbers to E.164, in the engine.

    Transforms a table with a phone column (text as customers typed it) into
    one row per input row with::

        <row_col>, *keep, phone_region, phone_e164 (null unless valid),
        phone_valid (null when empty), phone_method ("fast" | "library" | null)

    Numbers are read in the numbering plan of the row's ``country_col``
    (ISO-2), else ``default_region``; ``+CC`` and international-prefix forms
    (``00`` from China, ``011`` from the US) carry their own country. So
    ``+86 138-1234-5678``, ``008613812345678`` and ``13812345678`` (in
    China) all become ``+8613812345678``.

    Speed: the engine strips everything but digits and checks them against
    the national-number patterns, number-type patterns and possible lengths
    that ``phonenumbers`` ships in its metadata
    (``PhoneMetadata.metadata_for_region``), for ``fast_regions``. Only the
    numbers this fast path cannot confirm (other countries, extensions,
    letters, invalid numbers) go through ``phonenumbers.parse`` one distinct
    value at a time and are joined back. Both give the same answer (tested on
    generated numbers).

    Parameters
    ----------
    t : ibis.Table
    phone_col, country_col : str
        Column names; ``country_col`` may be absent.
    default_region : str
        ISO-2 region for national numbers without a country.
    fast_regions : sequence of str
        Regions validated in the engine.
    row_col : str
        Row identifier carried through (added as a row number if absent).
    keep : sequence of str
        Other columns carried through (e.g. ``customer_id``).

    Returns
    -------
    ibis.Table
        Materialised in the engine (a cached table; ``.release()`` frees it).

    Examples
    --------
    >>> con = ibis.duckdb.connect()
    >>> t = con.create_table("c", pd.DataFrame({"phone": ["+86 138-1234-5678", "13812345678"]}))
    >>> normalise_phones(t).phone_e164.to_pandas().tolist()
    ['+8613812345678', '+8613812345678']
    """
    if phone_col not in t.columns:
        raise DataContractError("phone column not found", column=phone_col, check="phone")
    t = _with_row(t, row_col)
    raw = t[phone_col].cast("string")
    base = t.select(row_col, *keep, _raw=raw,
                    phone_region=_phone_region(t, country_col, default_region))
    base = _fast_phone_columns(base, "_raw", "phone_region", fast_regions)
    # letters (other than a trailing extension such as "x12" or "ext. 12")
    # make a customer's number invalid; phonenumbers would read them as a
    # vanity number (ABC -> 222)
    lettered = (base._raw.re_replace(r"(?i)\s*(x|ext\.?|extension)\s*\d+\s*$", "")
                .re_search(r"[A-Za-z]").fill_null(False))
    # the fast path runs once: both the list of numbers left for the library
    # and the final join read this materialised table
    base = base.mutate(_empty=_blank(base._raw), _letters=lettered).cache()
    todo = (base.filter(base._fast.isnull() & ~base._empty & ~base._letters)
            .select("_raw", "phone_region").distinct().to_pandas())
    if len(todo):
        parsed = [parse_phone(r, g) for r, g in zip(todo["_raw"], todo["phone_region"])]
        todo["_lib_e164"] = pd.Series([p[0] for p in parsed], dtype="string")
        todo["_lib_valid"] = [p[1] for p in parsed]
    else:
        todo = pd.DataFrame({"_raw": pd.Series([], dtype="string"),
                             "phone_region": pd.Series([], dtype="string"),
                             "_lib_e164": pd.Series([], dtype="string"),
                             "_lib_valid": pd.Series([], dtype="bool")})
    lib = ibis.memtable(todo)
    j = base.left_join(lib, [base._raw == lib._raw, base.phone_region == lib.phone_region])
    out = j.select(
        j[row_col], *[j[k] for k in keep],
        phone_region=j.phone_region,
        phone_e164=ibis.ifelse(j._letters, ibis.null().cast("string"),
                               ibis.coalesce(j._fast, j._lib_e164)),
        phone_valid=ibis.ifelse(j._empty, ibis.null().cast("boolean"),
                                ~j._letters & (j._fast.notnull() | j._lib_valid.fill_null(False))),
        phone_method=ibis.ifelse(j._empty, ibis.null().cast("string"),
                                 ibis.ifelse(j._fast.notnull(), "fast", "library")),
    ).cache()
    base.release()
    return out


def phone_summary(phones: ir.Table) -> pd.DataFrame:
    """Per numbering plan: how many numbers, how many valid, and how many the
    engine confirmed without the per-number library call.

    Takes the output of :func:`normalise_phones`; returns one row per
    ``phone_region`` with ``numbers, valid, invalid, invalid_pct, fast_pct``.
    """
    p = phones.filter(phones.phone_valid.notnull())
    out = (p.group_by("phone_region")
           .aggregate(numbers=p.count(),
                      valid=p.phone_valid.cast("int64").sum(),
                      fast=(p.phone_method == "fast").cast("int64").sum())
           .to_pandas())
    out["invalid"] = out["numbers"] - out["valid"]
    out["invalid_pct"] = 100.0 * out["invalid"] / out["numbers"]
    out["fast_pct"] = 100.0 * out["fast"] / out["numbers"]
    return (out[["phone_region", "numbers", "valid", "invalid", "invalid_pct", "fast_pct"]]
            .sort_values("numbers", ascending=False, ignore_index=True))


# --------------------------------------------------------------------------
# row-level checks, counted and listed in two engine queries per table
# --------------------------------------------------------------------------

@dataclasses.dataclass
class Check:
    """One rule applied to one column of one table.

    ``applies`` marks the rows the rule looks at (e.g. non-empty values),
    ``flag`` the rows that break it; both are boolean expressions over the
    same table. ``defect`` is the row-level class reported by
    :func:`detect_defects` (None: counted, never listed row by row).
    """

    table: str
    column: str
    check: str
    dimension: str
    defect: str | None
    flag: ir.BooleanValue
    applies: ir.BooleanValue


def run_checks(t: ir.Table, checks: Sequence[Check], *, row_col: str = "_row",
               key_col: str | None = None, list_rows: bool = True
               ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Count and list the rows each check flags, in one pass over the table.

    Every rule is evaluated once per row; one aggregation returns, per
    check, the rows it looks at, the rows it flags and (for checks with a
    row-level defect class) the flagged rows' numbers and keys as arrays, so
    a 40-million-row table is read once.

    Parameters
    ----------
    t : ibis.Table
        The table every check's expressions are bound to.
    checks : sequence of Check
    row_col, key_col : str
        Row identifier and (optional) primary key carried into the list.
    list_rows : bool
        Also return the flagged rows.

    Returns
    -------
    summary : DataFrame
        One row per check: ``table, column, check, dimension, defect,
        checked, failed, failed_pct``.
    flagged : DataFrame
        One row per flagged (row, check) with a defect class:
        ``table, row, key, column, check, defect``.
    """
    cols = ["table", "column", "check", "dimension", "defect", "checked", "failed", "failed_pct"]
    flag_cols = ["table", "row", "key", "column", "check", "defect"]
    if not checks:
        return pd.DataFrame(columns=cols), pd.DataFrame(columns=flag_cols)
    hits = [(c.applies & c.flag).fill_null(False) for c in checks]
    has_key = bool(key_col and key_col in t.columns)
    per_row, alias, seen = {}, {}, []
    for i, (c, h) in enumerate(zip(checks, hits)):
        if isinstance(c.applies, ir.Column):
            e = c.applies.fill_null(False)
            same = next((name for name, prev in seen if prev.equals(e)), None)
            if same is None:      # several rules look at the same rows: one column
                per_row[f"a{i}"] = e
                seen.append((f"a{i}", e))
            alias[f"a{i}"] = same or f"a{i}"
        if isinstance(h, ir.Column):
            per_row[f"f{i}"] = h
    extra = {"_k": t[key_col].cast("string")} if has_key else {}
    flags = t.select(_r=_row_id(t, row_col), **extra, **per_row)
    n_rows = flags.count()
    aggs = {}
    listed = []
    for i, (c, h) in enumerate(zip(checks, hits)):
        for name, e in ((f"a{i}", c.applies), (f"f{i}", h)):
            col = alias.get(name, name)
            aggs[name] = (flags[col].cast("int64").sum() if col in per_row
                          else ibis.ifelse(e.fill_null(False), n_rows, 0))  # constant rule
        if list_rows and c.defect and f"f{i}" in per_row:
            # rows and keys in one order, a missing key kept as NULL (a row of
            # empty cells has none), so the two arrays stay aligned
            aggs[f"r{i}"] = flags._r.collect(where=flags[f"f{i}"], order_by=flags._r)
            if has_key:
                aggs[f"k{i}"] = flags._k.collect(where=flags[f"f{i}"], order_by=flags._r,
                                                 include_null=True)
            listed.append(i)
    got = flags.aggregate(**aggs).to_pyarrow()
    value = {name: got.column(name)[0].as_py() for name in got.column_names
             if not name.startswith(("r", "k"))}
    rows, parts = [], []
    for i, c in enumerate(checks):
        checked = int(value[f"a{i}"] or 0)
        failed = int(value[f"f{i}"] or 0)
        rows.append([c.table, c.column, c.check, c.dimension, c.defect, checked, failed,
                     _pct(failed, checked)])
        if i in listed and failed:
            r = got.column(f"r{i}")[0].values.to_numpy(zero_copy_only=False).astype("int64")
            k = (pd.array(got.column(f"k{i}")[0].values.to_pylist(), dtype="string") if has_key
                 else pd.array([None] * len(r), dtype="string"))
            parts.append(pd.DataFrame({"table": c.table, "row": r, "key": k, "column": c.column,
                                       "check": c.check, "defect": c.defect}))
    summary = pd.DataFrame(rows, columns=cols)
    flagged = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=flag_cols)
    return summary, flagged


def _domain_fold(col: ir.Value) -> ir.StringValue:
    return col.cast("string").strip().re_replace(r"\s+", " ").lower()


def completeness_checks(t: ir.Table, table: str, rules: dict, *, row_col: str = "_row"
                        ) -> list[Check]:
    """Empty cells per column (dimension ``completeness``); columns listed in
    ``required_filled`` also report each empty cell as ``missing_value``."""
    required = set(rules.get("required_filled", {}).get(table, []))
    out = []
    for c in t.columns:
        if c == row_col or c.startswith("_"):   # the row id and crmlab's helper columns
            continue
        out.append(Check(table, c, "filled", "completeness",
                         "missing_value" if c in required else None,
                         _blank(t[c]), ibis.literal(True)))
    return out


def _email_syntax_bad(col: ir.Value, r: dict) -> ir.BooleanValue:
    e = col.cast("string").strip()
    return ~e.re_search(r["pattern"]).fill_null(False) | (e.length() > r["max_length"])


def _email_domain(col: ir.Value) -> ir.StringValue:
    """The lower-case text after the first "@" (string functions, no regex)."""
    e = col.cast("string").strip()
    return e.substr(e.find("@") + 1).lower()


def email_checks(t: ir.Table, table: str, column: str, rules: dict) -> list[Check]:
    """Email syntax (the pattern of ``quality.yaml`` on the trimmed value,
    at most ``max_length`` characters) and domain sanity (reserved top-level
    domains, misspelled provider domains)."""
    r = rules["email"]
    applies = ~_blank(t[column])
    helper = f"_syntax_bad__{column}"
    syntax_bad = t[helper] if helper in t.columns else _email_syntax_bad(t[column], r)
    # the domain (after the "@" of an address that passed the syntax check)
    # is computed once per row (a helper column of table_checks) and then
    # looked up; its top-level domain is the part after the domain's last dot
    dom_col = f"_domain__{column}"
    domain = t[dom_col] if dom_col in t.columns else _email_domain(t[column])
    tld = domain.re_extract(r"\.([^.]+)$", 1)
    domain_bad = (_isin(domain, [x.lower() for x in r["misspelled_domains"]])
                  | _isin(tld, [x.lower() for x in r["reserved_tlds"]]))
    return [Check(table, column, "email_syntax", "validity", "invalid_email", syntax_bad, applies),
            Check(table, column, "email_domain", "validity", "invalid_email",
                  domain_bad & ~syntax_bad, applies)]


def date_checks(t: ir.Table, table: str, column: str, rule: dict, rules: dict,
                reference: dt.datetime, *, ts_col: str | None = None) -> list[Check]:
    """A date column within ``[min, max]`` (``max: as_of`` = the reference
    date plus ``grace_days``), and readable when it is text. ``ts_col``: a
    column of ``t`` already holding the parsed timestamp."""
    col = t[column]
    ts = t[ts_col] if ts_col else _as_timestamp(col, rules)
    applies = ~_blank(col)
    lo = pd.Timestamp(rule.get("min", "1900-01-01")).to_pydatetime()
    hi_rule = rule.get("max", "as_of")
    hi = (reference + dt.timedelta(days=rules["dates"].get("grace_days", 1))
          if hi_rule in ("as_of", None) else pd.Timestamp(hi_rule).to_pydatetime())
    out = []
    if _is_string(col):
        out.append(Check(table, column, "date_parse", "validity", "invalid_date",
                         ts.isnull(), applies))
    out.append(Check(table, column, "date_after_max", "validity",
                     rule.get("future_class", "future_date"),
                     ts > ibis.literal(hi, type="timestamp"), applies & ts.notnull()))
    out.append(Check(table, column, "date_before_min", "validity",
                     rule.get("past_class", "date_out_of_range"),
                     ts < ibis.literal(lo, type="timestamp"), applies & ts.notnull()))
    return out


def amount_checks(t: ir.Table, table: str, column: str, rule: dict, *,
                  absurd_rows: Sequence[int] | None = None, row_col: str = "_row",
                  decimal: str = ".") -> list[Check]:
    """Negative (below ``min``) and absurd amounts: above ``absurd_max``, or
    among ``absurd_rows`` (rows found more than ``absurd_factor`` times
    their reference, see :func:`basket_absurd_rows`)."""
    col = t[column]
    x = _as_number(col, decimal)
    applies = ~_blank(col)
    out = []
    if _is_string(col):
        out.append(Check(table, column, "number_parse", "validity", "invalid_number",
                         x.isnull(), applies))
    known = applies & x.notnull()
    if rule.get("min") is not None:
        out.append(Check(table, column, "below_min", "validity", "negative_amount",
                         x < rule["min"], known))
    absurd = ibis.literal(False)
    if rule.get("absurd_max") is not None:
        absurd = absurd | (x > rule["absurd_max"])
    if absurd_rows is not None and len(absurd_rows) and row_col in t.columns:
        absurd = absurd | _isin(t[row_col], [int(r) for r in absurd_rows])
    if rule.get("absurd_max") is not None or rule.get("absurd_factor"):
        out.append(Check(table, column, "absurd", "validity", "absurd_amount", absurd, known))
    return out


# a categorical column with at most this many distinct values is classified
# value by value (one small query), and each row is then only looked up
MAX_DISTINCT_CLASSIFIED = 10_000


def _fold(v: str) -> str:
    return " ".join(str(v).split()).lower()


# a domain that more than this share of a column's filled values falls
# outside is not the column's vocabulary (a source with its own codes): the
# check is not applied, and the page says so
DOMAIN_MAX_OUTSIDE = 0.5


def domain_checks(t: ir.Table, table: str, column: str, domain: Sequence, *,
                  value_map: Mapping[str, str] | None = None, notes: list | None = None,
                  counts: pd.DataFrame | None = None) -> list[Check]:
    """A categorical column against its allowed values, compared trimmed and
    case-folded: outside = ``out_of_domain``; inside but written another way
    (``' PAID'``, ``Paid``) = ``case_whitespace`` (consistency).

    ``value_map`` (folded foreign value -> canonical value: a source
    mapping's ``values`` and the contract's synonyms) puts mapped values
    inside the domain, as crmlab reads them so. When more than
    ``DOMAIN_MAX_OUTSIDE`` of the filled values fall outside, the domain is
    not the column's vocabulary: no check is made and a sentence is added
    to ``notes``.

    The column's distinct values are counted once (a group-by in the
    engine; values never leave crmlab's queries) and rows are flagged by
    looking their value up, so a 20-million-row column costs one scan."""
    col = t[column]
    allowed = ([str(v) for v in domain] if not isinstance(domain, str)
               else sorted(phonenumbers.SUPPORTED_REGIONS) if domain == "iso3166" else [domain])
    vmap = {str(k).strip().lower(): str(v) for k, v in (value_map or {}).items()}
    applies = ~_blank(col)
    s = col.cast("string")
    if counts is None:
        counts = value_counts(t, [column]).get(column)
    if counts is not None:
        values = counts["_v"].astype(str).tolist()
        folded_allowed = {v.lower() for v in allowed}
        exact = set(allowed)

        def inside(v):
            f = _fold(v)
            return f in folded_allowed or vmap.get(f, "").lower() in folded_allowed

        outside = [v for v in values if not inside(v) and _fold(v) not in schema.NULL_TOKENS]
        variant = [v for v in values if _fold(v) in folded_allowed and v not in exact]
        filled = counts.loc[[_fold(v) not in schema.NULL_TOKENS for v in values], "_n"].sum()
        n_out = counts.loc[counts["_v"].astype(str).isin(outside), "_n"].sum()
        if filled and n_out > DOMAIN_MAX_OUTSIDE * filled:
            if notes is not None:
                notes.append(f"{table}.{column} uses its own values ({n_out / filled:.0%} are not "
                             f"among {', '.join(allowed[:8])}{' ...' if len(allowed) > 8 else ''}), "
                             f"so its allowed-values check was not applied; list its values under "
                             f"domains in the quality rules (or map them in the source mapping).")
            return []
        out_flag = _isin(s, outside)
        var_flag = _isin(s, variant)
    else:   # free text configured as a category: compare row by row
        inside_expr = _in_list(_domain_fold(col), [v.lower() for v in allowed])
        out_flag, var_flag = ~inside_expr, inside_expr & ~_in_list(s, allowed)
    return [Check(table, column, "domain", "validity", "out_of_domain", out_flag, applies),
            Check(table, column, "canonical_spelling", "consistency", "case_whitespace",
                  var_flag, applies)]


def range_checks(t: ir.Table, table: str, column: str, bounds: Sequence, decimal: str = "."
                 ) -> list[Check]:
    """A numeric scale within ``[low, high]`` (e.g. satisfaction 1-5)."""
    col = t[column]
    x = _as_number(col, decimal)
    lo, hi = bounds
    applies = ~_blank(col) & x.notnull()
    return [Check(table, column, "range", "validity", "out_of_domain", (x < lo) | (x > hi), applies)]


def _spelling_variants(t: ir.Table, column: str, canonical: Sequence | None = None,
                       counts: pd.DataFrame | None = None) -> list[str]:
    """The spellings of a text column that differ from the canonical one of
    their trimmed, case-folded form: the domain value when ``canonical`` is
    given, else the most frequent spelling. (Values stay in the engine's
    query; they are never reported.) ``counts``: :func:`value_counts`."""
    if counts is None:
        col = t[column].cast("string")
        counts = (t.filter(t[column].notnull()).group_by(_v=col).aggregate(_n=ibis._.count())
                  .to_pandas())
    counts = counts[[_fold(v) not in schema.NULL_TOKENS for v in counts["_v"].astype(str)]]
    if counts.empty:
        return []
    counts = counts.assign(_f=[_fold(v) for v in counts["_v"].astype(str)])
    if canonical is not None:
        allowed = {str(v) for v in canonical}
        folded = {str(v).lower() for v in canonical}
        bad = counts[counts["_f"].isin(folded) & ~counts["_v"].isin(allowed)]
        return bad["_v"].astype(str).tolist()
    top = (counts.sort_values(["_f", "_n", "_v"], ascending=[True, False, True])
           .drop_duplicates("_f"))
    best = dict(zip(top["_f"], top["_v"]))
    bad = counts[counts["_v"] != counts["_f"].map(best)]
    return bad["_v"].astype(str).tolist()


def text_checks(t: ir.Table, table: str, column: str, counts: pd.DataFrame | None = None
                ) -> list[Check]:
    """Stray spaces and case variants of a free-text column: a value is
    inconsistent when it is not the most frequent spelling of its trimmed,
    case-folded form (``' Beijing'``, ``BEIJING`` beside ``Beijing``)."""
    col = t[column]
    variants = _spelling_variants(t, column, counts=counts)
    flag = _isin(col.cast("string"), variants)
    return [Check(table, column, "canonical_spelling", "consistency", "case_whitespace",
                  flag, ~_blank(col))]


def _format_class(col: ir.StringValue, formats: Sequence[dict]) -> ir.StringValue:
    """The name of the first format whose pattern the trimmed value matches
    (``"other"`` if none): a CASE that the engine stops at the first match,
    so values in an early, common format cost one pattern each."""
    s = col.cast("string").strip()

    def chain(fs):
        out = ibis.literal("other")
        for f in reversed(fs):
            out = ibis.ifelse(s.re_search(f["regex"]).fill_null(False), f["name"], out)
        return out

    # dispatch on the first character: a pattern that can only start with
    # "+" is not tried on "13812345678" (first-match order is kept)
    first = {f["name"]: _literal_start(f["regex"]) for f in formats}
    result = chain([f for f in formats if first[f["name"]] is None])
    for ch in sorted({c for c in first.values() if c}):
        result = ibis.ifelse(s.startswith(ch),
                             chain([f for f in formats if first[f["name"]] in (ch, None)]), result)
    return result


def _literal_start(pattern: str) -> str | None:
    """The character every match of an anchored pattern starts with, when
    it is plain to see (``^\\+...`` -> ``+``, ``^(00|011)...`` -> ``0``),
    else None.

    Examples
    --------
    >>> _literal_start(r"^\\(\\+\\d{1,3}\\)"), _literal_start(r"^\\d+$")
    ('(', None)
    """
    m = re.match(r"^\^(?:\\([^\w\s])|([^\\\[\](){}.*+?^$|\w\s])|\((\w)\w*(?:\|\3\w*)+\))",
                 pattern)
    if not m:
        return None
    return next(g for g in m.groups() if g)


def format_mix(t: ir.Table, column: str, formats: Sequence[dict], *,
               group_col: str | None = None) -> pd.DataFrame:
    """How the values of a text column are written.

    Transforms a table into one row per (group, format)::

        group, format, rows, share

    ``format`` is the name of the first pattern of ``formats`` the trimmed
    value matches (``"other"`` if none); ``group`` is ``group_col`` (e.g.
    the country, since each country writes phones its own way) or ``"all"``.
    """
    grp = (t[group_col].cast("string").strip().upper().fill_null("?")
           if group_col and group_col in t.columns else ibis.literal("all"))
    x = t.filter(~_blank(t[column])).mutate(_g=grp, _fmt=_format_class(t[column], formats))
    out = x.group_by(["_g", "_fmt"]).aggregate(rows=x.count()).to_pandas()
    out = out.rename(columns={"_g": "group", "_fmt": "format"})
    out["share"] = out["rows"] / out.groupby("group")["rows"].transform("sum")
    return out.sort_values(["group", "rows"], ascending=[True, False], ignore_index=True)


def format_checks(t: ir.Table, table: str, column: str, formats: Sequence[dict], *,
                  check: str, defect: str, min_share: float | None = None,
                  group_col: str | None = None) -> tuple[list[Check], pd.DataFrame]:
    """Values written in a minority format of their column (per group).

    With ``min_share`` None, every value outside the dominant format of its
    group is flagged; otherwise formats used by fewer than ``min_share`` of
    the group are. ``"other"`` (no known format) is left to the validity
    checks. Returns the checks and the format mix (:func:`format_mix`) with
    a ``canonical`` column.
    """
    mix = format_mix(t, column, formats, group_col=group_col)
    if mix.empty:
        return [], mix.assign(canonical=pd.Series(dtype=bool))
    if min_share is None:
        top = mix.sort_values("rows", ascending=False, kind="stable").drop_duplicates("group")
        dominant = set(zip(top["group"], top["format"]))
        mix["canonical"] = [(g, f) in dominant for g, f in zip(mix["group"], mix["format"])]
    else:
        mix["canonical"] = mix["share"] >= min_share
    mix.loc[mix["format"] == "other", "canonical"] = True
    minority = mix[~mix["canonical"]]
    grp = (t[group_col].cast("string").strip().upper().fill_null("?")
           if group_col and group_col in t.columns else ibis.literal("all"))
    # one membership test, so the format is classified once per row
    bad = sorted({f"{g}|{f}" for g, f in zip(minority["group"], minority["format"])})
    flag = _isin(grp + "|" + _format_class(t[column], formats), bad)
    return [Check(table, column, check, "consistency", defect, flag, ~_blank(t[column]))], mix


# --------------------------------------------------------------------------
# integrity and uniqueness
# --------------------------------------------------------------------------

def _join_keys(a: ir.Value, b: ir.Value) -> tuple[ir.Value, ir.Value]:
    """Two key columns made comparable: as they are when both are integers
    (or both the same non-text type), else as text written one way
    (:func:`crmlab.sources.id_text`: ``42``, ``42.0`` and ``" 42 "`` meet,
    ``00042`` stays apart)."""
    if a.type() == b.type() and not _is_string(a) and not a.type().is_floating():
        return a, b
    return id_text(a), id_text(b)


# integer keys spanning at most this many values are looked up in a bitmap
# (one bit per possible key: 2**28 bits = 32 MiB) instead of a hash join
BITMAP_MAX_BITS = 1 << 28


def _duckdb(expr: ir.Expr):
    """The DuckDB backend that runs ``expr``, or None on another engine."""
    try:
        backend = expr._find_backend(use_default=True)
    except Exception:  # noqa: BLE001 - several backends or none: no raw SQL
        return None
    return backend if getattr(backend, "name", None) == "duckdb" else None


def _key_range(keys: ir.IntegerValue) -> tuple[int, int, int] | None:
    """``(min, max, count)`` of an integer key column, when a bitmap over its
    range is small enough (else None)."""
    rel = keys.op().rel.to_expr() if isinstance(keys, ir.Column) else None
    if rel is None:
        return None
    got = rel.aggregate(lo=keys.min(), hi=keys.max(), n=keys.count()).to_pyarrow().to_pylist()[0]
    if got["lo"] is None:
        return None
    lo, hi = int(got["lo"]), int(got["hi"])
    if hi - lo + 1 > BITMAP_MAX_BITS:
        return None
    return lo, hi, int(got["n"])


def _bitmap_orphans(kids: ir.Table, ck: ir.Value, parent: ir.Table, pk: ir.Value,
                    row_col: str, key_col: str | None) -> pd.DataFrame | None:
    """Child rows whose integer key is not among the parent's keys, found
    with a bitmap of the parent's keys (DuckDB ``bitstring_agg``/``get_bit``):
    one pass over each table and a few MiB of memory, where a hash anti-join
    of 40 million order lines against 20 million orders holds gigabytes.
    None when it does not apply (another engine, keys that are not integers
    or span too wide a range)."""
    backend = _duckdb(kids)
    if backend is None or not (ck.type().is_integer() and pk.type().is_integer()):
        return None
    p = parent.select(_k=pk.cast("int64")).filter(ibis._._k.notnull())
    rng = _key_range(p._k)
    if rng is None:
        return None
    lo, hi, _ = rng
    key = (kids[key_col].cast("string") if key_col and key_col in kids.columns
           else ibis.null().cast("string"))
    c = kids.select(_r=_row_id(kids, row_col), _key=key, _ck=ck.cast("int64"))
    sql = (f"SELECT _r, _key FROM ({backend.compile(c)}) AS c WHERE c._ck < {lo} OR c._ck > {hi} "
           f"OR get_bit((SELECT bitstring_agg(_k, {lo}, {hi}) FROM ({backend.compile(p)}) AS p), "
           f"CAST(c._ck - {lo} AS INTEGER)) = 0")
    rows = backend.raw_sql(sql).fetchall()
    return pd.DataFrame({"row": pd.array([r[0] for r in rows], dtype="int64"),
                         "key": pd.array([r[1] for r in rows], dtype="string")})


def integrity(tables: Mapping[str, ir.Table], rules: dict | None = None, *,
              row_col: str = "_row", list_rows: bool = True,
              filled: Mapping[tuple[str, str], int] | None = None
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Referential integrity: child rows whose parent does not exist.

    Checks every relationship of ``rules["relationships"]`` whose two tables
    and columns are present (orders -> customers, order lines -> orders and
    products, contacts -> campaigns and customers, tickets and interactions
    -> customers).

    Returns
    -------
    summary : DataFrame
        One row per relationship: ``relationship, table, column, parent,
        parent_column, checked, orphans, orphan_pct``.
    flagged : DataFrame
        ``table, row, key, column, check, defect`` for each orphan row.

    ``filled`` ((table, column) -> filled cells, from the completeness
    checks) saves counting the child rows again.
    """
    rules = rules or load_rules()
    cols = ["relationship", "table", "column", "parent", "parent_column", "checked", "orphans",
            "orphan_pct"]
    rows, flags = [], []
    for rel in rules.get("relationships", []):
        child, parent = tables.get(rel["child"]), tables.get(rel["parent"])
        if child is None or parent is None or rel["column"] not in child.columns \
                or rel["parent_column"] not in parent.columns:
            continue
        ck, pk = _join_keys(child[rel["column"]], parent[rel["parent_column"]])
        keys = parent.select(_pk=pk).filter(ibis._._pk.notnull()).distinct()
        kids = child.filter(~_blank(child[rel["column"]])).mutate(_ck=ck)
        known = (filled or {}).get((rel["child"], rel["column"]))
        checked = int(known) if known is not None else int(kids.count().execute())
        key_col = rules.get("keys", {}).get(rel["child"])
        found = _bitmap_orphans(kids, kids._ck, parent, pk, row_col, key_col)
        if found is None:
            orphans = kids.anti_join(keys, kids._ck == keys._pk)
            key = (orphans[key_col].cast("string") if key_col in orphans.columns
                   else ibis.null().cast("string"))
            found = orphans.select(row=_row_id(orphans, row_col), key=key).to_pandas()
        n = int(len(found))
        if not list_rows:
            found = None
        rows.append([rel["name"], rel["child"], rel["column"], rel["parent"],
                     rel["parent_column"], checked, n, _pct(n, checked)])
        if found is not None and n:
            flags.append(found.assign(table=rel["child"], column=rel["column"],
                                      check=f"exists_in_{rel['parent']}", defect=rel["defect"]))
    flag_cols = ["table", "row", "key", "column", "check", "defect"]
    flagged = pd.concat(flags, ignore_index=True)[flag_cols] if flags else pd.DataFrame(columns=flag_cols)
    return pd.DataFrame(rows, columns=cols), flagged


def duplicate_keys(t: ir.Table, table: str, key: str, *, row_col: str = "_row"
                   ) -> tuple[dict, pd.DataFrame]:
    """Repeated primary keys: every row after the first with the same key.

    Returns ``({table, key, rows, repeated}, flagged rows)``.
    """
    k = t[key]
    filled = t.filter(~_blank(k))
    rows = unique = None
    backend = _duckdb(t)
    if backend is not None and k.type().is_integer():
        # a bitmap over the key range counts distinct keys in one pass and a
        # few MiB (a hash of 20 million keys holds a gigabyte)
        p = filled.select(_k=filled[key].cast("int64"))
        rng = _key_range(p._k)
        if rng is not None:
            lo, hi, rows = rng
            unique = backend.raw_sql(f"SELECT bit_count(bitstring_agg(_k, {lo}, {hi})) FROM "
                                     f"({backend.compile(p)}) AS p").fetchall()[0][0]
    if rows is None:
        counts = filled.aggregate(n=filled.count(), u=filled[key].nunique()).to_pandas().iloc[0]
        rows, unique = int(counts["n"]), int(counts["u"])
    rows, unique = int(rows), int(unique)
    flag_cols = ["table", "row", "key", "column", "check", "defect"]
    found = pd.DataFrame(columns=flag_cols)
    if rows > unique:
        w = filled.mutate(_r=_row_id(filled, row_col))
        w = w.mutate(_i=ibis.row_number().over(group_by=w[key], order_by=w._r))
        dup = w.filter(w._i > 0).select(row="_r", key=w[key].cast("string")).to_pandas()
        found = dup.assign(table=table, column=key, check="unique_key", defect="duplicate_key")[flag_cols]
    return {"table": table, "key": key, "rows": rows, "repeated": rows - unique}, found


# --------------------------------------------------------------------------
# outliers (robust, in the engine)
# --------------------------------------------------------------------------

# Iglewicz & Hoaglin (1993), "How to Detect and Handle Outliers", ASQC
# Basic References in Quality Control 16, p. 11-12: the modified z-score
# M_i = 0.6745 (x_i - median) / MAD flags |M_i| > 3.5. 0.6745 is the 0.75
# quantile of the standard normal, so MAD / 0.6745 estimates sigma.
MAD_CONSISTENCY = 0.6745


def modified_z(x, median: float, mad: float):
    """The modified z-score of Iglewicz & Hoaglin (1993):
    ``0.6745 * (x - median) / MAD`` (NaN when MAD is 0: no typical
    deviation to measure against).

    Examples
    --------
    >>> round(float(modified_z(10.0, 5.0, 1.0)), 4)
    3.3725
    """
    x = np.asarray(x, dtype=float)
    if not mad or mad <= 0:
        return np.full_like(x, np.nan)
    return MAD_CONSISTENCY * (x - median) / mad


OUTLIER_SAMPLE_ROWS = 1_000_000


def _outlier_value(col: ir.Value, log: bool, decimal: str = ".") -> ir.FloatingValue:
    x = _as_number(col, decimal).cast("float64")
    if log:
        return ibis.ifelse(x > 0, x.log10(), ibis.null().cast("float64"))
    return ibis.ifelse(x.isnan(), ibis.null().cast("float64"), x)


def outliers(t: ir.Table, *, table: str, columns: Sequence[str] | None = None,
             k: float = 3.5, log_columns: Sequence[str] = (), skip_columns: Sequence[str] = (),
             random_state: int = 42, n_rows: int | None = None, decimal: str = "."
             ) -> pd.DataFrame:
    """Outliers per numeric column by the modified z-score.

    A value is an outlier when its modified z-score (Iglewicz & Hoaglin,
    1993) exceeds ``k`` (3.5): it lies more than ``k / 0.6745`` median
    absolute deviations from the median -- on a log10 scale for money and
    counts (``log_columns``, positive values only), where "ten times the
    usual order" is one step. A column where more than half the values are
    equal has MAD 0 and is not assessed (``lower``/``upper`` empty). The
    numeric columns are fetched once (numbers only) for the exact median and
    MAD; above ``OUTLIER_SAMPLE_ROWS`` rows a seeded sample of storage blocks
    of about that size is fetched instead (its error is far below the
    fences' width) and the outliers are counted on all rows in one more
    engine query. Text columns are read as numbers (``decimal`` mark).

    Parameters
    ----------
    t : ibis.Table
    table : str
        Name for the output.
    columns : sequence of str, optional
        Numeric columns to check (default: every numeric column not in
        ``skip_columns``).
    k : float
    log_columns, skip_columns : sequence of str
    random_state : int
        Seed of the sample on large tables.
    n_rows : int, optional
        The table's rows, when known (else counted), to decide on sampling.

    Returns
    -------
    DataFrame
        One row per column: ``table, column, scale, values, median, lower,
        upper, low, high, outliers, outlier_pct`` (``lower``/``upper`` in the
        column's own units).
    """
    if columns is None:
        columns = [c for c, typ in t.schema().items()
                   if typ.is_numeric() and not typ.is_boolean() and c not in set(skip_columns)]
    cols = ["table", "column", "scale", "values", "median", "lower", "upper", "low", "high",
            "outliers", "outlier_pct"]
    if not columns:
        return pd.DataFrame(columns=cols)

    def value(c):
        return _outlier_value(t[c], c in set(log_columns), decimal)

    vals = {c: value(c) for c in columns}
    # median and MAD are exact, in numpy, on the values fetched once -- all of
    # them up to OUTLIER_SAMPLE_ROWS rows, else a seeded uniform sample of
    # that size (their error is far below the fences' width); the outliers
    # are then counted on every row, in the engine
    n_rows = int(t.count().execute()) if n_rows is None else int(n_rows)
    sampled = n_rows > OUTLIER_SAMPLE_ROWS
    # a sample of storage blocks (about 2,000 rows each): only those are read
    base = t.sample(OUTLIER_SAMPLE_ROWS / n_rows, method="block", seed=random_state) \
        if sampled else t
    got = base.select(**{f"v{i}": _outlier_value(base[c], c in set(log_columns), decimal)
                         for i, c in enumerate(columns)}).to_pyarrow()
    data = {c: got.column(f"v{i}").to_numpy(zero_copy_only=False).astype(float)
            for i, c in enumerate(columns)}
    m, bounds, cnt = {}, {}, {}
    for i, c in enumerate(columns):
        a = data[c][~np.isnan(data[c])]
        if not len(a):
            m[c] = np.nan
            continue
        m[c] = float(np.median(a))
        mad = float(np.median(np.abs(a - m[c])))
        half = k * mad / MAD_CONSISTENCY if mad > 0 else None
        bounds[c] = (m[c] - half, m[c] + half) if half is not None else None
        if not sampled:
            lo, hi = bounds[c] or (-np.inf, np.inf)
            cnt.update({f"n{i}": len(a), f"l{i}": int((a < lo).sum()), f"h{i}": int((a > hi).sum())})
    if sampled:
        aggs = {f"n{i}": vals[c].count() for i, c in enumerate(columns)}
        for i, c in enumerate(columns):
            if bounds.get(c):
                lo, hi = bounds[c]
                aggs[f"l{i}"] = (vals[c] < lo).cast("int64").sum()
                aggs[f"h{i}"] = (vals[c] > hi).cast("int64").sum()
        cnt = t.aggregate(**aggs).to_pandas().iloc[0].to_dict()
    rows = []
    for i, c in enumerate(columns):
        log = c in set(log_columns)
        back = (lambda v: 10 ** v) if log else (lambda v: v)
        if pd.isna(m[c]):
            continue
        n = int(cnt.get(f"n{i}") or 0)
        b = bounds.get(c)
        low = int(cnt.get(f"l{i}") or 0) if b else 0
        high = int(cnt.get(f"h{i}") or 0) if b else 0
        rows.append([table, c, "log10" if log else "linear", n, back(float(m[c])),
                     back(b[0]) if b else None, back(b[1]) if b else None, low, high,
                     low + high, _pct(low + high, n)])
    return pd.DataFrame(rows, columns=cols)


# --------------------------------------------------------------------------
# dates: coverage and freshness
# --------------------------------------------------------------------------

def date_coverage(t: ir.Table, column: str, reference: dt.datetime, rules: dict, *,
                  earliest: str = "1900-01-01") -> dict:
    """First and latest plausible date of a column, as ``{first, latest}``
    timestamps: values before ``earliest`` or after the reference date (plus
    ``grace_days``) are defects, not coverage, and are ignored."""
    lo = pd.Timestamp(earliest).to_pydatetime()
    hi = reference + dt.timedelta(days=rules["dates"].get("grace_days", 1))
    x = t.mutate(_ts=_as_timestamp(t[column], rules))
    x = x.filter((x._ts >= ibis.literal(lo, type="timestamp"))
                 & (x._ts <= ibis.literal(hi, type="timestamp")))
    r = x.aggregate(first=x._ts.min(), latest=x._ts.max()).to_pandas().iloc[0]
    return {"first": r["first"], "latest": r["latest"]}


def freshness_score(lag_days: float | None, fresh_days: float, stale_days: float) -> float | None:
    """100 up to ``fresh_days`` of lag, linear down to 0 at ``stale_days``.

    Examples
    --------
    >>> freshness_score(16, 2, 30)
    50.0
    """
    if lag_days is None or (isinstance(lag_days, float) and math.isnan(lag_days)):
        return None
    if lag_days <= fresh_days:
        return 100.0
    if lag_days >= stale_days:
        return 0.0
    return 100.0 * (stale_days - lag_days) / (stale_days - fresh_days)


def freshness(tables: Mapping[str, ir.Table], reference: dt.datetime, rules: dict | None = None,
              *, coverage: Mapping[str, dict] | None = None) -> pd.DataFrame:
    """Freshness of each dated table against the reference date.

    Returns one row per table of ``rules["timeliness"]["columns"]`` that is
    present: ``table, column, first, latest, reference, lag_days, score``
    (lag = whole days from the newest plausible record to the reference).
    ``coverage`` (table -> :func:`date_coverage` of that column) saves the
    queries when the caller has them.
    """
    rules = rules or load_rules()
    tl = rules["timeliness"]
    rows = []
    for table, column in tl["columns"].items():
        t = tables.get(table)
        if t is None or column not in t.columns:
            continue
        rule = rules["dates"]["columns"].get(table, {}).get(column, {})
        cov = (coverage or {}).get(table) or date_coverage(
            t, column, reference, rules, earliest=rule.get("min", "1900-01-01"))
        latest = cov["latest"]
        lag = None if pd.isna(latest) else max(
            0, (pd.Timestamp(reference).normalize() - pd.Timestamp(latest).normalize()).days)
        rows.append([table, column, cov["first"], latest, pd.Timestamp(reference), lag,
                     freshness_score(lag, tl["fresh_days"], tl["stale_days"])])
    return pd.DataFrame(rows, columns=["table", "column", "first", "latest", "reference",
                                       "lag_days", "score"])


# --------------------------------------------------------------------------
# quarantine
# --------------------------------------------------------------------------

QUARANTINE_COLUMNS = ["table", "row", "column", "check"]


def quarantine_export(quarantine: pd.DataFrame | None) -> pd.DataFrame:
    """The export frame ``table, row, column, check`` -- only these four
    columns, whatever else the input carries, so no value can leak."""
    if quarantine is None or len(quarantine) == 0:
        return pd.DataFrame(columns=QUARANTINE_COLUMNS)
    missing = [c for c in QUARANTINE_COLUMNS if c not in quarantine.columns]
    if missing:
        raise DataContractError("quarantine frame lacks columns " + ", ".join(missing),
                                check="quarantine")
    out = quarantine[QUARANTINE_COLUMNS].copy()
    out["row"] = out["row"].astype("int64")
    return out.sort_values(["table", "row", "column", "check"], ignore_index=True)


def quarantine_summary(quarantine: pd.DataFrame | None) -> pd.DataFrame:
    """Rows set aside by validation, counted by table and check.

    Takes the ``table, row, column, check`` frame of ``Dataset.quarantine``;
    returns ``table, check, columns, rows`` (distinct rows; ``columns`` lists
    the column names involved), most rows first. Never values.
    """
    q = quarantine_export(quarantine)
    if q.empty:
        return pd.DataFrame(columns=["table", "check", "columns", "rows"])
    out = (q.groupby(["table", "check"])
           .agg(columns=("column", lambda s: ", ".join(sorted(set(map(str, s))))),
                rows=("row", "nunique"))
           .reset_index())
    return out.sort_values(["rows", "table"], ascending=[False, True], ignore_index=True)


# --------------------------------------------------------------------------
# the whole assessment
# --------------------------------------------------------------------------

class _Source:
    """A Dataset (crmlab.sources) or a plain mapping of ibis tables, seen the
    same way: ``raw`` = as found (for checks), ``typed`` = usable rows."""

    def __init__(self, data):
        if isinstance(data, Mapping):
            self.names = [n for n in data]
            self._raw = self._typed = dict(data)
            self.quarantine = None
            self.row_counts = None
            self.extracted_at = None
            self.mapping = None
            self.notes = []
        else:
            self.names = list(getattr(data, "tables"))
            self._data = data
            self._raw = self._typed = None
            self.quarantine = getattr(data, "quarantine", None)
            self.row_counts = getattr(data, "row_counts", None)
            self.extracted_at = getattr(data, "extracted_at", None)
            self.mapping = getattr(data, "mapping", None)
            self.notes = list(getattr(data, "notes", None) or [])

    def raw(self, name: str) -> ir.Table:
        if self._raw is not None:
            return self._raw[name]
        return self._data.raw(name) if hasattr(self._data, "raw") else self._data.table(name)

    def typed(self, name: str) -> ir.Table:
        if self._typed is not None:
            return self._typed[name]
        return self._data.table(name)


# only orders above this quantile of amount are compared with their basket
# (an amount 50 times its basket is far above it); the rest need no lookup
ABSURD_CANDIDATE_QUANTILE = 0.99
ABSURD_COMPARE_ALL_ROWS = 2_000_000


def basket_absurd_rows(orders: ir.Table, tables: Mapping[str, ir.Table], factor: float, *,
                       row_col: str = "_row", decimal: Mapping[str, str] | None = None,
                       n_rows: int | None = None) -> list[int]:
    """The order rows whose amount is more than ``factor`` times their
    reference: the order's line total (sum of quantity x unit_price) when
    order lines exist, else the customer's median order.

    With order lines, every order is compared up to
    ``ABSURD_COMPARE_ALL_ROWS`` orders (``n_rows``, counted when not given);
    above that only the top 1% of amounts (``ABSURD_CANDIDATE_QUANTILE``) --
    a semi-join keeps the aggregation of lines small on tens of millions of
    rows; an order below that is ``factor`` times its basket only when the
    basket is tiny, and the absolute limit (``absurd_max``) applies to every
    order.
    Returns the rows (``row_col``) -- a short list, so the check itself is a
    lookup, not a join of the whole orders table.
    """
    dec_o = (decimal or {}).get("orders", ".")
    dec_l = (decimal or {}).get("order_lines", ".")
    if not factor or "amount" not in orders.columns:
        return []
    orders = _with_row(orders, row_col)
    if n_rows is None:
        n_rows = int(orders.count().execute())
    lines = tables.get("order_lines")
    if lines is not None and {"order_id", "quantity", "unit_price"} <= set(lines.columns) \
            and "order_id" in orders.columns:
        amt = _as_number(orders.amount, dec_o)
        cut = 0.0
        if n_rows is None or n_rows > ABSURD_COMPARE_ALL_ROWS:
            cut = orders.filter(amt > 0).aggregate(
                q=amt.approx_quantile(ABSURD_CANDIDATE_QUANTILE)).to_pandas()["q"].iloc[0]
            cut = 0.0 if cut is None or pd.isna(cut) else float(cut)
        lk, ok = _join_keys(lines.order_id, orders.order_id)
        cands = orders.select(_r=orders[row_col], _ok=ok, _amt=amt).filter(ibis._._amt > cut)
        l2 = lines.select(_lk=lk, _v=_as_number(lines.quantity, dec_l)
                          * _as_number(lines.unit_price, dec_l))
        l2 = l2.semi_join(cands, l2._lk == cands._ok)
        tot = l2.group_by("_lk").aggregate(_ref=l2._v.sum())
        j = cands.inner_join(tot, cands._ok == tot._lk)
    elif "customer_id" in orders.columns:
        o2 = orders.select(_r=orders[row_col], _c=orders.customer_id,
                           _amt=_as_number(orders.amount, dec_o))
        med = (o2.filter(o2._amt > 0).group_by(_ck=o2._c)
               .aggregate(_ref=ibis._._amt.median()))
        j = o2.inner_join(med, o2._c == med._ck)
    else:
        return []
    hit = j.filter((j._ref > 0) & (j._amt > j._ref * factor)).select("_r").to_pandas()
    return sorted(int(r) for r in hit["_r"])


def table_checks(name: str, t: ir.Table, rules: dict, reference: dt.datetime, *,
                 tables: Mapping[str, ir.Table] | None = None, row_col: str = "_row",
                 notes: list | None = None
                 ) -> tuple[ir.Table, list[Check], list[pd.DataFrame]]:
    """Every row-level rule of ``rules`` that applies to one table.

    Returns the table the checks are bound to (possibly with helper columns,
    e.g. the order's line total), the checks (completeness, email, dates,
    amounts, domains, ranges, spelling, date formats, phone formats) and the
    format mixes (frames with ``table, column, group, format, rows, share,
    canonical``).
    """
    tables = tables or {}
    # values several rules read (parsed dates, email syntax) are computed
    # once per row, behind a view() so the SQL does not repeat them
    date_rules = {c: r for c, r in rules.get("dates", {}).get("columns", {}).get(name, {}).items()
                  if c in t.columns}
    email_col = rules.get("email", {}).get("columns", {}).get(name)
    extra = rules.get("source_date_formats", {}).get(name, {})
    decimal = rules.get("source_decimal", {}).get(name, ".")
    helpers = {f"_ts__{c}": _as_timestamp(t[c], rules, extra.get(c, ())) for c in date_rules
               if _is_string(t[c])}
    categorical = [c for c in list(rules.get("domains", {}).get(name, {}))
                   + list(rules.get("tidy_text", {}).get(name, []))
                   if c in t.columns and not c.startswith("_")]
    # every categorical column's values counted once, for blanks, domains and spellings
    counts = value_counts(t, [c for c in categorical if _is_string(t[c])])
    helpers.update({f"_b__{c}": (_blank_by_values(t, c, counts.get(c)) if c in counts
                                 else _blank(t[c]))
                    for c in t.columns if not c.startswith("_") and f"_b__{c}" not in t.columns})
    if email_col and email_col in t.columns:
        helpers[f"_syntax_bad__{email_col}"] = _email_syntax_bad(t[email_col], rules["email"])
        helpers[f"_domain__{email_col}"] = _email_domain(t[email_col])
    if helpers:
        t = t.mutate(**helpers).view()
    checks: list[Check] = completeness_checks(t, name, rules, row_col=row_col)
    mixes: list[pd.DataFrame] = []
    if email_col and email_col in t.columns:
        checks += email_checks(t, name, email_col, rules)
    for col, rule in date_rules.items():
        if col in t.columns:
            ts_col = f"_ts__{col}" if f"_ts__{col}" in t.columns else None
            checks += date_checks(t, name, col, rule, rules, reference, ts_col=ts_col)
            if _is_string(t[col]):
                fc, mix = format_checks(t, name, col, rules["date_formats"],
                                        check="date_format", defect="mixed_date_format")
                checks += fc
                mixes.append(mix.assign(table=name, column=col))
    for col, rule in rules.get("amounts", {}).get(name, {}).items():
        if col in t.columns:
            rows = (basket_absurd_rows(t, tables, rule.get("absurd_factor"), row_col=row_col,
                                       decimal=rules.get("source_decimal", {}))
                    if name == "orders" and col == "amount" else None)
            checks += amount_checks(t, name, col, rule, absurd_rows=rows, row_col=row_col,
                                    decimal=decimal)
    domains = rules.get("domains", {}).get(name, {})
    vmaps = rules.get("value_maps", {}).get(name, {})
    for col, domain in domains.items():
        if col in t.columns:
            checks += domain_checks(t, name, col, domain, value_map=vmaps.get(col), notes=notes,
                                    counts=counts.get(col))
    for col, bounds in rules.get("ranges", {}).get(name, {}).items():
        if col in t.columns:
            checks += range_checks(t, name, col, bounds, decimal=decimal)
    for col in rules.get("tidy_text", {}).get(name, []):
        if col in t.columns and col not in domains and _is_string(t[col]):
            checks += text_checks(t, name, col, counts=counts.get(col))
    phone_col = rules.get("phone", {}).get("columns", {}).get(name)
    if phone_col and phone_col in t.columns and _is_string(t[phone_col]):
        country = rules["phone"].get("country_column")
        fc, mix = format_checks(t, name, phone_col, rules["phone_formats"], check="phone_format",
                                defect="mixed_phone_format",
                                min_share=rules.get("phone_format_min_share"),
                                group_col=country if country in t.columns else None)
        checks += fc
        mixes.append(mix.assign(table=name, column=phone_col))
    return t, checks, mixes


@dataclasses.dataclass
class QualityReport:
    """Everything the data-quality page shows, as small frames.

    Build it with :func:`assess`. Frames hold counts, shares and names of
    tables, columns and checks -- never a personal value (``duplicates`` and
    ``customer_key`` hold customer ids only).
    """

    reference: dt.datetime
    rows: dict
    overview: pd.DataFrame
    freshness: pd.DataFrame
    scores: dict
    completeness: pd.DataFrame
    validity: pd.DataFrame
    phones: pd.DataFrame
    consistency: pd.DataFrame
    formats: pd.DataFrame
    integrity: pd.DataFrame
    uniqueness: pd.DataFrame
    outliers: pd.DataFrame
    quarantine: pd.DataFrame
    quarantine_rows: pd.DataFrame
    defects: pd.DataFrame
    duplicates: Any = None  # crmlab.dedupe.DedupeResult | None
    rules: dict = dataclasses.field(default_factory=dict, repr=False)
    notes: list = dataclasses.field(default_factory=list)  # checks not applied, and why
    # what the source said when it was opened (empty files treated as absent,
    # mapped columns not found ...): the notes `crmlab validate` prints
    source_notes: list = dataclasses.field(default_factory=list)
    # (table, column, log scale) of the numeric columns the outliers looked at
    outlier_columns: list = dataclasses.field(default_factory=list)

    # -- numbers -------------------------------------------------------
    @property
    def quality_score(self) -> float | None:
        return self.scores.get("quality")

    def _rate(self, check_names: Sequence[str], table: str, column: str) -> float | None:
        v = self.validity
        if v.empty:
            return None
        sel = v[(v["table"] == table) & (v["column"] == column) & v["check"].isin(check_names)]
        if sel.empty or sel["checked"].max() == 0:
            return None
        if "phone_number" in check_names:
            return float(sel["failed"].sum() / sel["checked"].max())
        bad = self.defects
        bad = bad[(bad["table"] == table) & (bad["column"] == column)
                  & bad["check"].isin(check_names)]["row"].nunique() if len(bad) else 0
        return float(bad / sel["checked"].max())

    def metrics(self) -> dict:
        """The flat ``metrics.json`` of the issue: ``quality_score``, the six
        ``<dimension>_score`` (0-100, None when not measurable),
        ``rows_<table>``, ``duplicate_pairs``, ``duplicate_rate`` (share of
        customer records that merge into another), ``invalid_email_rate`` and
        ``invalid_phone_rate`` (shares of the filled values, 0-1),
        ``orphan_orders``, ``quarantined_rows``."""
        def r(x, nd=2):
            return None if x is None else round(float(x), nd)

        out = {"quality_score": r(self.scores.get("quality"), 1)}
        for d in DIMENSIONS:
            out[f"{d}_score"] = r(self.scores.get(d), 1)
        for t, n in self.rows.items():
            out[f"rows_{t}"] = int(n)
        dd = self.duplicates
        out["duplicate_pairs"] = int(dd.summary["duplicate_pairs"]) if dd is not None else None
        out["duplicate_rate"] = r(dd.summary["duplicate_rate"], 5) if dd is not None else None
        email_col = self.rules.get("email", {}).get("columns", {}).get("customers", "email")
        phone_col = self.rules.get("phone", {}).get("columns", {}).get("customers", "phone")
        out["invalid_email_rate"] = r(self._rate(["email_syntax", "email_domain"], "customers",
                                                 email_col), 5)
        out["invalid_phone_rate"] = r(self._rate(["phone_number"], "customers", phone_col), 5)
        integ = self.integrity
        orphan = integ[(integ["table"] == "orders") & (integ["parent"] == "customers")] \
            if len(integ) else integ
        out["orphan_orders"] = int(orphan["orphans"].sum()) if len(orphan) else None
        q = self.quarantine_rows
        out["quarantined_rows"] = int(q[["table", "row"]].drop_duplicates().shape[0]) if len(q) else 0
        return out

    def exports(self) -> dict[str, pd.DataFrame]:
        """``duplicates``, ``customer_key`` and ``quarantine`` frames, named as
        the CSV files of ``exports/`` (without ``.csv``)."""
        dd = self.duplicates
        empty_pairs = pd.DataFrame(columns=["customer_id_a", "customer_id_b", "match_probability"])
        empty_key = pd.DataFrame(columns=["customer_id", "unified_id"])
        return {
            "duplicates": dd.pairs if dd is not None else empty_pairs,
            "customer_key": dd.customer_key if dd is not None else empty_key,
            "quarantine": quarantine_export(self.quarantine_rows),
        }

    def kpis(self) -> list[dict]:
        """KPI cards: key, label, value, format, better ("higher"/"lower")."""
        m = self.metrics()
        cards = [("quality_score", "Quality score", "{:.1f}", "higher"),
                 ("duplicate_rate", "Duplicate customer records", "{:.1%}", "lower"),
                 ("invalid_email_rate", "Invalid emails", "{:.1%}", "lower"),
                 ("invalid_phone_rate", "Invalid phones", "{:.1%}", "lower"),
                 ("orphan_orders", "Orders without customer", "{:,}", "lower"),
                 ("quarantined_rows", "Quarantined rows", "{:,}", "lower")]
        return [{"key": k, "label": lab, "value": m.get(k), "format": f, "better": b}
                for k, lab, f, b in cards if m.get(k) is not None]

    # -- words ---------------------------------------------------------
    def fixes(self) -> pd.DataFrame:
        """Recommended fixes, one row per issue found, most rows first:
        ``issue, table, column, rows, fix``."""
        return recommended_fixes(self)

    def findings(self, previous: Mapping | None = None, limit: int = 5) -> list[str]:
        """Three to five plain sentences with numbers for "What changed",
        written from the results (and from the previous run's metrics when
        given)."""
        return findings(self, previous=previous, limit=limit)

    def paragraph(self, section: str, **kwargs) -> str:
        """The paragraph under a section: overview, completeness, validity,
        consistency, integrity, outliers, duplicates, quarantine, fixes."""
        return paragraph(self, section, **kwargs)


def _score_mean(values: Sequence[float]) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


def dimension_scores(*, completeness: pd.DataFrame, validity: pd.DataFrame,
                     consistency: pd.DataFrame, integrity: pd.DataFrame,
                     uniqueness: pd.DataFrame, freshness: pd.DataFrame,
                     weights: Mapping[str, float]) -> dict:
    """The six dimension scores and the weighted quality score (0-100).

    See the module docstring for each definition. A dimension with nothing
    to measure is None and its weight is left out of the quality score.

    Returns
    -------
    dict
        ``{completeness, validity, uniqueness, consistency, integrity,
        timeliness, quality}``.
    """
    s: dict[str, float | None] = {}
    if len(completeness):
        w = completeness["importance"].astype(float)
        share = completeness["filled"] / completeness["rows"].where(completeness["rows"] > 0)
        ok = share.notna()
        s["completeness"] = float(100 * (w[ok] * share[ok]).sum() / w[ok].sum()) if ok.any() else None
    else:
        s["completeness"] = None

    def pass_mean(df, failed="failed", checked="checked"):
        if df is None or not len(df):
            return None
        d = df[df[checked] > 0]
        return _score_mean(list(100 * (1 - d[failed] / d[checked])))

    s["validity"] = pass_mean(validity)
    s["consistency"] = pass_mean(consistency)
    s["integrity"] = pass_mean(integrity, "orphans")
    s["uniqueness"] = pass_mean(uniqueness, "redundant", "rows")
    s["timeliness"] = _score_mean(list(freshness["score"])) if len(freshness) else None
    got = {d: v for d, v in s.items() if v is not None and weights.get(d, 0) > 0}
    total = sum(weights[d] for d in got)
    s["quality"] = float(sum(weights[d] * v for d, v in got.items()) / total) if total else None
    return s


def assess(data, *, as_of: str | dt.date | None = None, rules: Mapping | str | None = None,
           dedupe: bool = True, threshold: float | None = None, random_state: int = 42,
           row_col: str = "_row") -> QualityReport:
    """Run every check of the data-quality report.

    Parameters
    ----------
    data : crmlab.sources.Dataset or mapping of name -> ibis.Table
        Checks read ``data.raw(name)`` (the rows as found, so defects that
        validation quarantined are still seen); outliers and dates read
        ``data.table(name)``. A plain mapping is used for both.
    as_of : str or date, optional
        Snapshot date the dates and freshness are measured against (end of
        that day); default ``data.extracted_at``, else now.
    rules : mapping, optional
        Overrides of ``quality.yaml`` (:func:`load_rules`).
    dedupe : bool
        Run the entity resolution of customers (Splink).
    threshold : float, optional
        Match probability for duplicates (default from the rules, 0.9).
    random_state : int
    row_col : str
        The source row column of raw tables.

    Returns
    -------
    QualityReport

    Raises
    ------
    NoDataError
        When the source has no table at all.
    """
    src = _Source(data)
    rules = source_rules(load_rules(rules), src.mapping)
    if not src.names:
        raise NoDataError("the source has no tables")
    reference = reference_time(as_of, src.extracted_at)
    raw = {n: _with_row(src.raw(n), row_col) for n in src.names}
    typed = {n: src.typed(n) for n in src.names}

    summaries, flagged, mixes, notes = [], [], [], []
    rows: dict[str, int] = {}
    for name in src.names:
        t, checks, mx = table_checks(name, raw[name], rules, reference, tables=raw,
                                     row_col=row_col, notes=notes)
        key = rules.get("keys", {}).get(name)
        summary, flags = run_checks(t, checks, row_col=row_col, key_col=key)
        summaries.append(summary)
        flagged.append(flags)
        mixes += mx
        first = summary[summary["check"] == "filled"]
        rows[name] = int(first["checked"].max()) if len(first) else int(raw[name].count().execute())
    summary = pd.concat(summaries, ignore_index=True) if summaries else pd.DataFrame()

    # phones: parsed per country (engine fast path + phonenumbers)
    phone_rows, phones_frame, customer_phones = [], pd.DataFrame(), None
    for name, col in rules.get("phone", {}).get("columns", {}).items():
        if name in raw and col in raw[name].columns:
            key = rules.get("keys", {}).get(name)
            ph = normalise_phones(raw[name], phone_col=col,
                                  country_col=rules["phone"].get("country_column"),
                                  default_region=rules["phone"].get("default_region", "CN"),
                                  fast_regions=rules["phone"].get("fast_regions", ["CN", "US"]),
                                  row_col=row_col, keep=[key] if key in raw[name].columns else [])
            if name == "customers" and key in ph.columns:
                customer_phones = ph
            phones_frame = phone_summary(ph)
            checked = int(phones_frame["numbers"].sum())
            failed = int(phones_frame["invalid"].sum())
            phone_rows.append([name, col, "phone_number", "validity", "invalid_phone", checked,
                               failed, _pct(failed, checked)])
            bad = ph.filter(ph.phone_valid == False)  # noqa: E712 - SQL comparison
            kexpr = bad[key].cast("string") if key in bad.columns else ibis.null().cast("string")
            bad = bad.select(row=bad[row_col], key=kexpr).to_pandas()
            flagged.append(bad.assign(table=name, column=col, check="phone_number",
                                      defect="invalid_phone"))
    if phone_rows:
        summary = pd.concat([summary, pd.DataFrame(phone_rows, columns=summary.columns)],
                            ignore_index=True)

    fills = summary[summary["check"] == "filled"] if len(summary) else summary
    filled = ({(t, c): int(n - f) for t, c, n, f in
               zip(fills["table"], fills["column"], fills["checked"], fills["failed"])}
              if len(fills) else {})
    integ, integ_flags = integrity(raw, rules, row_col=row_col, filled=filled)
    flagged.append(integ_flags)

    # uniqueness: repeated keys and (customers) duplicate people
    uniq_rows = []
    dd = None
    if dedupe and "customers" in raw:
        from crmlab import dedupe as _dedupe
        cust = raw["customers"]
        ident = [c for c in _dedupe.ROLES if c in cust.columns]
        records = filled.get(("customers", "customer_id"), 0)
        if ident and "customer_id" in cust.columns and records >= _dedupe.MIN_RECORDS:
            dd = _dedupe.find_duplicates(cust, threshold=threshold, rules=rules,
                                         random_state=random_state, phones=customer_phones)
            merged = dd.customer_key[dd.customer_key["customer_id"] != dd.customer_key["unified_id"]]
            if len(merged):
                ids = ibis.memtable(pd.DataFrame({"_id": merged["customer_id"].astype(str)}))
                hit = cust.filter(cust.customer_id.cast("string").isin(ids._id))
                found = hit.select(row=hit[row_col], key=hit.customer_id.cast("string")).to_pandas()
                # a whole record is the defect: no column (as in the synthetic truth)
                flagged.append(found.assign(table="customers", column=None,
                                            check="same_person", defect="duplicate_customer"))
    for name, key in rules.get("keys", {}).items():
        if name in raw and key in raw[name].columns:
            info, dup = duplicate_keys(raw[name], name, key, row_col=row_col)
            flagged.append(dup)
            people = dd.summary["duplicate_records"] if (dd is not None and name == "customers") else 0
            uniq_rows.append([name, key, rows.get(name, info["rows"]), info["repeated"], people])
    uniqueness = pd.DataFrame(uniq_rows, columns=["table", "key", "rows", "repeated_keys",
                                                  "duplicate_records"])
    uniqueness["redundant"] = uniqueness["repeated_keys"] + uniqueness["duplicate_records"]
    uniqueness["unique_pct"] = 100 * (1 - uniqueness["redundant"] / uniqueness["rows"].where(
        uniqueness["rows"] > 0))

    # outliers: the numeric columns of the contract (typed) read from the rows
    # as found (raw), so a large table is sampled at its storage blocks rather
    # than through its typing; dates on the usable (typed) rows
    oc = rules.get("outliers", {})
    outl, outlier_columns = [], []
    for n in src.names:
        numeric = [c for c, typ in typed[n].schema().items()
                   if typ.is_numeric() and not typ.is_boolean() and c in raw[n].columns
                   and c not in set(oc.get("skip_columns", [])) and c != row_col]
        outlier_columns += [(n, c, c in set(oc.get("log_columns", []))) for c in numeric]
        outl.append(outliers(raw[n], table=n, columns=numeric, k=oc.get("k", 3.5),
                             log_columns=oc.get("log_columns", []), random_state=random_state,
                             n_rows=rows.get(n),
                             decimal=rules.get("source_decimal", {}).get(n, ".")))
    outl = pd.concat([o for o in outl if len(o)], ignore_index=True) if any(len(o) for o in outl) \
        else pd.DataFrame(columns=["table", "column", "scale", "values", "median", "lower",
                                   "upper", "low", "high", "outliers", "outlier_pct"])
    # first and latest plausible date of each dated table (overview, freshness)
    date_cols = dict(rules.get("timeliness", {}).get("columns", {}))
    date_cols.setdefault("customers", "signup_date")
    date_cols.setdefault("campaigns", "start_date")
    coverage = {}
    for n, col in date_cols.items():
        if n in typed and col in typed[n].columns:
            rule = rules.get("dates", {}).get("columns", {}).get(n, {}).get(col, {})
            coverage[n] = date_coverage(typed[n], col, reference, rules,
                                        earliest=rule.get("min", "1900-01-01"))
    fresh = freshness(typed, reference, rules, coverage=coverage)

    # frames for the page
    comp = summary[summary["check"] == "filled"].copy()
    default_imp = rules.get("default_importance", 1)
    may_be_empty = rules.get("may_be_empty", {})
    comp["importance"] = [0 if c in may_be_empty.get(t, []) else
                          rules.get("importance", {}).get(t, {}).get(c, default_imp)
                          for t, c in zip(comp["table"], comp["column"])]
    comp = comp.rename(columns={"checked": "rows", "failed": "missing"})
    comp["filled"] = comp["rows"] - comp["missing"]
    comp["complete_pct"] = 100 - comp["failed_pct"]
    comp = (comp[["table", "column", "importance", "rows", "filled", "missing", "complete_pct"]]
            .sort_values(["importance", "complete_pct", "table", "column"],
                         ascending=[False, True, True, True], ignore_index=True))
    validity_df = summary[summary["dimension"] == "validity"].reset_index(drop=True)
    consistency_df = summary[summary["dimension"] == "consistency"].reset_index(drop=True)
    formats = pd.concat(mixes, ignore_index=True) if mixes else pd.DataFrame(
        columns=["table", "column", "group", "format", "rows", "share", "canonical"])
    if len(formats):
        formats = formats[["table", "column", "group", "format", "rows", "share", "canonical"]]

    # overview
    ov = []
    for n in src.names:
        rc = (src.row_counts or {}).get(n, {})
        first = latest = None
        col = date_cols.get(n)
        if n in coverage:
            first, latest = coverage[n]["first"], coverage[n]["latest"]
        ov.append([n, rows.get(n), rc.get("quarantined", 0), col if first is not None else None,
                   first, latest])
    overview = pd.DataFrame(ov, columns=["table", "rows", "quarantined", "date_column", "first",
                                         "last"])

    qrows = quarantine_export(src.quarantine)
    scores = dimension_scores(completeness=comp, validity=validity_df, consistency=consistency_df,
                              integrity=integ, uniqueness=uniqueness, freshness=fresh,
                              weights=rules["weights"])
    flag_cols = ["table", "row", "key", "column", "check", "defect"]
    defects = pd.concat([f for f in flagged if f is not None and len(f)], ignore_index=True) \
        if any(f is not None and len(f) for f in flagged) else pd.DataFrame(columns=flag_cols)
    defects = defects[flag_cols]
    defects["row"] = defects["row"].astype("int64")
    return QualityReport(reference=reference, rows=rows, overview=overview, freshness=fresh,
                         scores=scores, completeness=comp, validity=validity_df,
                         phones=phones_frame, consistency=consistency_df, formats=formats,
                         integrity=integ, uniqueness=uniqueness, outliers=outl,
                         quarantine=quarantine_summary(qrows), quarantine_rows=qrows,
                         defects=defects, duplicates=dd, rules=rules, notes=notes,
                         source_notes=src.notes, outlier_columns=outlier_columns)


def detect_defects(data, *, as_of=None, rules: Mapping | None = None, dedupe: bool = True,
                   random_state: int = 42) -> pd.DataFrame:
    """Every flagged row, for scoring against a synthetic world's truth.

    Returns one row per (table, row, column, defect), deduplicated::

        table, row, key, column, defect

    ``row`` is the 1-based source row (``_row`` of the raw tables, the same
    numbering as ``truth/defects.parquet``); ``key`` the row's primary key
    as text when the table has one. Defect classes: missing_value,
    invalid_email, invalid_phone, invalid_date, invalid_number,
    negative_amount, absurd_amount, future_date, date_out_of_range,
    mixed_date_format, mixed_phone_format, case_whitespace, out_of_domain,
    orphan_order (and orphan_order_line, orphan_contact, orphan_ticket,
    orphan_interaction), duplicate_customer, duplicate_key.
    """
    rep = assess(data, as_of=as_of, rules=rules, dedupe=dedupe, random_state=random_state)
    return (rep.defects[["table", "row", "key", "column", "defect"]]
            .drop_duplicates(["table", "row", "column", "defect"])
            .sort_values(["table", "row", "column", "defect"], ignore_index=True))


# --------------------------------------------------------------------------
# history, fixes and words
# --------------------------------------------------------------------------

def score_trend(history: Sequence[Mapping], current: Mapping | None = None, *,
                keys: Sequence[str] = ("quality_score",) + tuple(f"{d}_score" for d in DIMENSIONS)
                ) -> pd.DataFrame:
    """The quality score and dimension scores across runs, oldest first.

    Takes earlier runs' metrics (a list of ``metrics.json`` dicts, oldest
    first; a ``run_id``/``run``/``as_of``/``started_at`` key, when present,
    labels the run) and optionally the current run's; returns one row per
    run: ``run`` and the score columns (missing scores as NaN).

    Examples
    --------
    >>> score_trend([{"quality_score": 90.0}], {"quality_score": 92.5})["quality_score"].tolist()
    [90.0, 92.5]
    """
    runs = list(history) + ([current] if current is not None else [])
    rows = []
    for i, m in enumerate(runs):
        label = next((m[k] for k in ("run_id", "run", "as_of", "started_at") if m.get(k)), i + 1)
        rows.append({"run": label, **{k: (float(m[k]) if m.get(k) is not None else np.nan)
                                       for k in keys}})
    return pd.DataFrame(rows, columns=["run", *keys])


def recommended_fixes(rep: QualityReport) -> pd.DataFrame:
    """One row per issue found, with the rows it affects and a fix in plain
    words (templates in ``quality.yaml`` under ``fixes``), most rows first.

    Returns ``issue, table, column, rows, fix``.
    """
    templates = rep.rules.get("fixes", {})
    items: list[list] = []

    def add(defect, table, column, n, **fmt):
        if not n:
            return
        text = templates.get(defect, "Review these rows.")
        column = column if isinstance(column, str) and column else None
        items.append([DEFECT_LABELS.get(defect, defect.replace("_", " ")), table, column, int(n),
                      text.format(column=column or table, table=table, **fmt)])

    d = rep.defects
    if len(d):
        g = d.groupby(["defect", "table", "column"], dropna=False)["row"].nunique().reset_index()
        for defect, table, column, n in g.itertuples(index=False):
            add(defect, table, column, n)
    # completeness of optional columns (no row-level class): the emptiest ones
    c = rep.completeness
    listed = {(t, col) for t, col in zip(d["table"], d["column"])} if len(d) else set()
    for r in c[(c["missing"] > 0)].itertuples(index=False):
        if (r.table, r.column) not in listed and r.importance >= 2:
            add("missing_value", r.table, r.column, r.missing)
    for r in rep.freshness.itertuples(index=False):
        if r.score is not None and r.score < 100:
            add("stale_data", r.table, r.column, rep.rows.get(r.table, 0), lag=r.lag_days)
    seen = set(zip(d["table"], d["defect"])) if len(d) else set()
    for r in rep.quarantine.itertuples(index=False):
        if (r.table, r.check) not in seen:   # else already listed under its defect class
            add("quarantine", r.table, r.columns, r.rows, check=r.check)
    for r in rep.outliers.itertuples(index=False):
        add("outlier", r.table, r.column, r.outliers)
    out = pd.DataFrame(items, columns=["issue", "table", "column", "rows", "fix"])
    return out.sort_values(["rows", "table", "column"], ascending=[False, True, True],
                           ignore_index=True)


def _where(table: str, column) -> str:
    return f"{table}.{column}" if isinstance(column, str) and column else str(table)


def _n(x) -> str:
    return f"{int(x):,}"


def _p(x: float) -> str:
    if x == 0:
        return "0%"
    if x < 0.1:
        return "<0.1%"
    return f"{x:.1f}%"


def _dim_sentence(scores: Mapping) -> str:
    dims = {d: scores[d] for d in DIMENSIONS if scores.get(d) is not None}
    if scores.get("quality") is None or not dims:
        return "No quality score could be computed: the data has nothing to check."
    worst = min(dims, key=dims.get)
    return (f"The data scores {scores['quality']:.1f} out of 100; its weakest dimension is "
            f"{worst} ({dims[worst]:.1f}).")


def findings(rep: QualityReport, previous: Mapping | None = None, limit: int = 5) -> list[str]:
    """Plain sentences with numbers for the top of the page, most important
    first: the score (and its change), the biggest issue, duplicates,
    integrity and freshness."""
    out = [_dim_sentence(rep.scores)]
    m = rep.metrics()
    if previous and previous.get("quality_score") is not None and m["quality_score"] is not None:
        delta = m["quality_score"] - float(previous["quality_score"])
        if abs(delta) >= 0.05:
            out[0] += (f" That is {abs(delta):.1f} points {'up' if delta > 0 else 'down'} "
                       f"on the previous run.")
        else:
            out[0] += " That is unchanged since the previous run."
    fixes = rep.fixes()
    fixes = fixes[fixes["issue"] != DEFECT_LABELS["stale_data"]]   # freshness has its own sentence
    if len(fixes):
        top = fixes.iloc[0]
        total = rep.rows.get(top["table"], 0)
        share = f" ({_p(100 * top['rows'] / total)} of {top['table']})" if total else ""
        out.append(f"The largest issue is {top['issue']} in {_where(top['table'], top['column'])}: "
                   f"{_count(top['rows'], 'row')}{share}.")
    dd = rep.duplicates
    if dd is not None:
        s = dd.summary
        if s["duplicate_records"]:
            out.append(f"{_n(s['duplicate_records'])} customer records ({_p(100 * s['duplicate_rate'])})"
                       f" look like another record of the same person; the proposed customer key "
                       f"merges {_n(s['records'])} records into {_n(s['people'])} people.")
        else:
            out.append("No duplicate customer records were found.")
    if m.get("orphan_orders"):
        out.append(f"{_count(m['orphan_orders'], 'order points', 'orders point')} to a customer "
                   f"that does not exist.")
    fr = rep.freshness
    if len(fr):
        o = fr[fr["table"] == "orders"]
        row = o.iloc[0] if len(o) else fr.iloc[0]
        if pd.notna(row["lag_days"]):
            lag = int(row["lag_days"])
            when = "the same day as" if lag == 0 else f"{lag} day{'s' if lag != 1 else ''} before"
            out.append(f"The newest {row['table'][:-1] if row['table'].endswith('s') else row['table']}"
                       f" is from {pd.Timestamp(row['latest']).date()}, {when} the reference date "
                       f"{pd.Timestamp(rep.reference).date()}.")
    return out[:limit]


def paragraph(rep: QualityReport, section: str, *, shown: int | None = None) -> str:
    """The paragraph that says what a section's table or chart means and
    what to do, written from the numbers (``shown``: how many rows of the
    section's list the page shows, for "fixes")."""
    s = section.lower()
    if s == "overview":
        total = sum(rep.rows.values())
        text = (f"{_count(len(rep.rows), 'table')} with {_count(total, 'row')} were checked. "
                + _dim_sentence(rep.scores))
        parts = [f"{d} {rep.scores[d]:.1f}" for d in DIMENSIONS if rep.scores.get(d) is not None]
        if parts:
            text += " Dimension scores: " + ", ".join(parts) + "."
        missing = [d for d in DIMENSIONS if rep.scores.get(d) is None]
        if missing:
            text += (f" Not measurable on this data: {', '.join(missing)} (left out of the "
                     f"score).")
        notes = [*rep.source_notes, *rep.notes]
        if notes:
            text += "\n\nNotes on the source: " + " ".join(
                n.rstrip(".") + "." for n in notes)
        return text
    if s == "completeness":
        c = rep.completeness
        if c.empty:
            return "Not available: no columns to check."
        key = c[c["importance"] >= 4]
        worst = (key if len(key) else c).sort_values("complete_pct").iloc[0]
        full = int((c["missing"] == 0).sum())
        text = f"{full} of {_count(len(c), 'column')} are complete."
        if worst["missing"] > 0:
            text += (f" Among the columns that matter most, {worst['table']}.{worst['column']} "
                     f"is the least complete: {_count(worst['missing'], 'empty cell')} "
                     f"({_p(100 - worst['complete_pct'])} of its rows).")
        else:
            text += " Every column that matters most is complete."
        return text
    if s == "validity":
        v = rep.validity
        if v.empty:
            return "Not available: no column with a validity rule."
        bad = v[v["failed"] > 0].sort_values("failed", ascending=False)
        if bad.empty:
            return f"All {len(v)} validity checks pass."
        lines = [f"{_n(r.failed)} {DEFECT_LABELS.get(r.defect, r.defect)} in {r.table}.{r.column} "
                 f"({_p(r.failed_pct)})" for r in bad.head(3).itertuples(index=False)]
        return (f"{len(bad)} of {_count(len(v), 'validity check')} find problems; the largest: "
                + "; ".join(lines) + ". Correct them in the source: crmlab leaves values it "
                "cannot trust out of the analyses.")
    if s == "consistency":
        c = rep.consistency
        if c.empty and (rep.formats is None or rep.formats.empty):
            return "Not available: no text column to check for formats."
        bad = c[c["failed"] > 0].sort_values("failed", ascending=False)
        if bad.empty:
            return "Every checked column is written one way."
        lines = [f"{r.table}.{r.column}: {_count(r.failed, 'value')} ({_p(r.failed_pct)})"
                 for r in bad.head(3).itertuples(index=False)]
        return ("Some columns mix formats or spellings -- " + "; ".join(lines) + ". crmlab reads "
                "every known date format and stores dates as ISO dates, phones as E.164, and "
                "categories trimmed and case-folded; fixing the source keeps other systems right.")
    if s == "integrity":
        g = rep.integrity
        if g.empty:
            return "Not available: needs two related tables (e.g. orders and customers)."
        bad = g[g["orphans"] > 0]
        if bad.empty:
            return (f"All {_count(len(g), 'relationship')} hold: every row that points to "
                    f"another table finds its parent.")
        lines = [f"{_n(r.orphans)} {r.relationship} ({_p(r.orphan_pct)})"
                 for r in bad.itertuples(index=False)]
        return ("Broken links: " + "; ".join(lines) + ". Analyses leave these rows out of "
                "per-customer figures; reconcile them with the source system.")
    if s == "outliers":
        o = rep.outliers
        k = rep.rules.get("outliers", {}).get("k", 3.5)
        method = (f"A value counts as an outlier when it lies more than {k / MAD_CONSISTENCY:.1f} "
                  f"median absolute deviations from its column's median (a modified z-score above "
                  f"{k:g}), on a log scale for money and counts.")
        if o.empty:
            return f"Not available: needs {', '.join(outlier_needs(rep))}. " + method
        bad = o[o["outliers"] > 0].sort_values("outliers", ascending=False)
        if bad.empty:
            return method + " No column has outliers."
        r = bad.iloc[0]
        return (method + f" The most affected column is {r['table']}.{r['column']}: "
                f"{_count(r['outliers'], 'value')} ({_p(r['outlier_pct'])}) outside "
                f"{r['lower']:,.4g} to {r['upper']:,.4g}.")
    if s == "duplicates":
        dd = rep.duplicates
        if dd is None:
            return "Not available: needs a customers table with identifying columns."
        sm = dd.summary
        if not sm["duplicate_pairs"]:
            text = (f"No two of the {_count(sm['records'], 'customer record')} reach a match "
                    f"probability of {sm['threshold']:.0%}: no duplicates were found.")
        else:
            text = (f"{_count(sm['duplicate_pairs'], 'pair')} of customer records are judged the "
                    f"same person (match probability at least {sm['threshold']:.0%}). Joined into "
                    f"clusters, they merge {_count(sm['records'], 'record')} into "
                    f"{_count(sm['people'], 'person', 'people')}: "
                    f"{_count(sm['duplicate_records'], 'record')} ({_p(100 * sm['duplicate_rate'])}) "
                    f"are a second record of someone. Each cluster's smallest customer id is the "
                    f"proposed unified id (customer_key.csv).")
        if dd.sentences:
            text += "\n\nWhat the model learned from this data: " + " ".join(dd.sentences[:5])
        return text
    if s == "quarantine":
        q = rep.quarantine
        if q.empty:
            return "No rows were set aside by validation."
        total = int(rep.quarantine_rows[["table", "row"]].drop_duplicates().shape[0])
        r = q.iloc[0]
        return (f"{_count(total, 'row')} {'was' if total == 1 else 'were'} set aside because "
                f"{'it breaks' if total == 1 else 'they break'} the data contract; the most common "
                f"reason is {str(r['check']).replace('_', ' ')} in {r['table']} "
                f"({_count(r['rows'], 'row')}). quarantine.csv lists each by table, row, column "
                f"and check, without its values.")
    if s == "fixes":
        f = rep.fixes()
        if f.empty:
            return "Nothing to fix."
        top = f.iloc[0]
        listed = (f" (the {shown} that affect the most rows are listed)"
                  if shown is not None and shown < len(f) else "")
        return (f"{_count(len(f), 'issue')} found{listed}, ordered by the rows they affect. Start with "
                f"{top['issue']} in {_where(top['table'], top['column'])} "
                f"({_count(top['rows'], 'row')}): {top['fix']}")
    raise ValueError(f"unknown section {section!r}")


# --------------------------------------------------------------------------
# the page: KPI cards, tables with plain headings, charts
# --------------------------------------------------------------------------

# key -> (label, format, which way is better, KPI card?) for metrics.json
METRIC_CARDS: dict[str, tuple[str, str, str | None, bool]] = {
    "quality_score": ("Quality score (0-100)", "{:.1f}", "higher", True),
    "duplicate_rate": ("Duplicate customer records", "{:.1%}", "lower", True),
    "invalid_email_rate": ("Invalid emails", "{:.1%}", "lower", True),
    "invalid_phone_rate": ("Invalid phone numbers", "{:.1%}", "lower", True),
    "quarantined_rows": ("Quarantined rows", "{:,.0f}", "lower", True),
    "orphan_orders": ("Orders without a customer", "{:,.0f}", "lower", True),
    "duplicate_pairs": ("Duplicate pairs", "{:,.0f}", "lower", False),
    **{f"{d}_score": (f"{d.capitalize()} score", "{:.1f}", "higher", False) for d in DIMENSIONS},
}

# importance in quality.yaml -> words for the page
IMPORTANCE_LABELS: dict[int, str] = {5: "key", 4: "essential", 3: "important", 2: "useful",
                                     1: "optional", 0: "may be empty"}

# check name -> what it tests, in plain words
CHECK_LABELS: dict[str, str] = {
    "email_syntax": "is an email address",
    "email_domain": "email domain can receive mail",
    "phone_number": "valid number for its country",
    "date_parse": "is a readable date",
    "date_after_max": "not after the reference date",
    "date_before_min": "not before the earliest plausible date",
    "number_parse": "is a readable number",
    "below_min": "not negative",
    "absurd": "not absurdly large",
    "domain": "one of the allowed values",
    "range": "within its scale",
    "canonical_spelling": "one spelling per value (spaces, case)",
    "date_format": "one date format",
    "phone_format": "one phone format per country",
}

# what crmlab reads each kind of column as, for the "normalisation applied" table
STORED_AS: dict[str, str] = {
    "date_format": "a date (ISO YYYY-MM-DD)",
    "phone_format": "E.164, e.g. +8613812345678",
    "canonical_spelling": "trimmed, case-folded, mapped to its allowed value",
}


def metric_cards(q: QualityReport) -> list[dict]:
    """Every figure of ``metrics.json`` as keywords of ``Report.metric``.

    Returns one dict per metric (``key, value, label, fmt, better, kpi``),
    the six KPI cards of the page first (quality score, duplicate rate,
    invalid email and phone rates, quarantined rows, orphan orders), then
    the dimension scores, ``rows_<table>`` and ``duplicate_pairs``. A
    figure that cannot be measured on this data is ``None`` and gets no card.
    """
    out = []
    for key, value in q.metrics().items():
        label, fmt, better, kpi = METRIC_CARDS.get(
            key, (key.replace("_", " ").capitalize(), "{:,.0f}", None, False))
        out.append({"key": key, "value": value, "label": label, "fmt": fmt, "better": better,
                    "kpi": kpi and value is not None})
    return sorted(out, key=lambda c: not c["kpi"])


def _fmt_date(x) -> str | None:
    return None if x is None or pd.isna(x) else str(pd.Timestamp(x).date())


def _count(n: int, one: str, many: str | None = None) -> str:
    """``"1 row"``, ``"3 rows"``."""
    n = int(n)
    return f"{n:,} {one if n == 1 else (many or one + 's')}"


def overview_table(q: QualityReport) -> pd.DataFrame:
    """One row per table: ``Table, Rows, Quarantined rows, Dated by, First,
    Latest, Days behind`` (the freshness lag for tables that grow daily)."""
    ov = q.overview.copy()
    lag = dict(zip(q.freshness["table"], q.freshness["lag_days"])) if len(q.freshness) else {}
    return pd.DataFrame({
        "Table": ov["table"], "Rows": ov["rows"].astype("int64"),
        "Quarantined rows": ov["quarantined"].fillna(0).astype("int64"),
        "Dated by": ov["date_column"].astype(object).where(ov["date_column"].notna(), "–"),
        "First": [_fmt_date(x) or "–" for x in ov["first"]],
        "Latest": [_fmt_date(x) or "–" for x in ov["last"]],
        "Days behind": [("–" if lag.get(t) is None or pd.isna(lag.get(t)) else f"{int(lag[t]):,}")
                        for t in ov["table"]],
    })


def completeness_table(q: QualityReport) -> pd.DataFrame:
    """The columns with empty cells, most important first, then emptiest:
    ``Table, Column, Importance, Rows, Empty, Filled``."""
    c = q.completeness
    c = c[(c["missing"] > 0) & (c["importance"] > 0)].sort_values(["importance", "missing"],
                                                                   ascending=[False, False])
    return pd.DataFrame({
        "Table": c["table"], "Column": c["column"],
        "Importance": [IMPORTANCE_LABELS.get(int(i), str(i)) for i in c["importance"]],
        "Rows": c["rows"].astype("int64"), "Empty": c["missing"].astype("int64"),
        "Filled": c["complete_pct"] / 100,
    }).reset_index(drop=True)


def checks_table(frame: pd.DataFrame, failed_label: str = "Failed", *,
                 failing_only: bool = True) -> pd.DataFrame:
    """Checks (validity or consistency rows of :func:`run_checks`) with
    plain names, most failures first: ``Table, Column, Rule, Checked,
    <failed_label>, Share``; only the checks that find something unless
    ``failing_only`` is False."""
    if frame is None or frame.empty:
        return pd.DataFrame(columns=["Table", "Column", "Rule", "Checked", failed_label, "Share"])
    f = frame[(frame["checked"] > 0) & ((frame["failed"] > 0) | (not failing_only))]
    f = f.sort_values(["failed", "table", "column"], ascending=[False, True, True])
    return pd.DataFrame({
        "Table": f["table"], "Column": f["column"],
        "Rule": [CHECK_LABELS.get(c, c.replace("_", " ")) for c in f["check"]],
        "Checked": f["checked"].astype("int64"), failed_label: f["failed"].astype("int64"),
        "Share": f["failed_pct"] / 100,
    }).reset_index(drop=True)


def phone_table(q: QualityReport) -> pd.DataFrame:
    """Phone numbers per numbering plan: ``Country, Numbers, Valid,
    Invalid, Share invalid, Confirmed in the engine``."""
    p = q.phones
    if p is None or p.empty:
        return pd.DataFrame(columns=["Country", "Numbers", "Valid", "Invalid", "Share invalid",
                                     "Confirmed in the engine"])
    return pd.DataFrame({
        "Country": p["phone_region"], "Numbers": p["numbers"].astype("int64"),
        "Valid": p["valid"].astype("int64"), "Invalid": p["invalid"].astype("int64"),
        "Share invalid": p["invalid_pct"] / 100, "Confirmed in the engine": p["fast_pct"] / 100,
    })


def normalisation_table(q: QualityReport) -> pd.DataFrame:
    """What crmlab does to each inconsistent column when it reads it:
    ``Column, Written as, Read as`` (how many formats or spellings were
    found, and the one form it stores)."""
    rows = []
    f = q.formats
    if f is not None and len(f):
        for (table, column), g in f.groupby(["table", "column"], sort=False):
            known = g[g["format"] != "other"]
            forms = known.groupby("format")["rows"].sum().sort_values(ascending=False)
            share = forms / max(forms.sum(), 1)
            kind = "phone_format" if column in q.rules.get("phone", {}).get("columns", {}).values() \
                else "date_format"
            written = ", ".join(f"{name} ({_p(100 * x)})" for name, x in share.head(4).items())
            if len(share) > 4:
                written += f" and {len(share) - 4} more"
            rows.append([f"{table}.{column}", written or "–", STORED_AS[kind]])
    c = q.consistency
    if c is not None and len(c):
        for r in c[(c["check"] == "canonical_spelling") & (c["failed"] > 0)].itertuples(index=False):
            rows.append([f"{r.table}.{r.column}", f"{_count(r.failed, 'value')} with other "
                         f"spaces or case", STORED_AS["canonical_spelling"]])
    for table, cols in (q.rules.get("source_mapping_values") or {}).items():
        for col in cols:
            rows.append([f"{table}.{col}", "the source's own codes",
                         "its canonical value, as the source mapping says"])
    return pd.DataFrame(rows, columns=["Column", "Written as", "Read as"])


def integrity_table(q: QualityReport) -> pd.DataFrame:
    """``Relationship, Rows checked, Without parent, Share`` per relationship."""
    g = q.integrity
    if g is None or g.empty:
        return pd.DataFrame(columns=["Relationship", "Rows checked", "Without parent", "Share"])
    return pd.DataFrame({
        "Relationship": g["relationship"].str.capitalize(),
        "Rows checked": g["checked"].astype("int64"), "Without parent": g["orphans"].astype("int64"),
        "Share": g["orphan_pct"] / 100,
    })


def outlier_table(q: QualityReport) -> pd.DataFrame:
    """One row per numeric column: ``Table, Column, Scale, Values, Median,
    Usual from, Usual to, Below, Above, Share`` (columns where over half the
    values are equal have no usual range and are not assessed)."""
    o = q.outliers
    if o is None or o.empty:
        return pd.DataFrame(columns=["Table", "Column", "Scale", "Values", "Median", "Usual from",
                                     "Usual to", "Below", "Above", "Share"])
    o = o.sort_values(["outliers", "table", "column"], ascending=[False, True, True])
    return pd.DataFrame({
        "Table": o["table"], "Column": o["column"],
        "Scale": o["scale"].map({"log10": "log", "linear": "linear"}),
        "Values": o["values"].astype("int64"), "Median": _sig(o["median"]),
        "Usual from": _sig(o["lower"]), "Usual to": _sig(o["upper"]),
        "Below": o["low"].astype("int64"), "Above": o["high"].astype("int64"),
        "Share": o["outlier_pct"] / 100,
    }).reset_index(drop=True)


def _sig(x: pd.Series, digits: int = 4) -> pd.Series:
    """Numbers rounded to ``digits`` significant digits (for bounds shown
    with thousands separators rather than in scientific notation)."""
    v = pd.to_numeric(x, errors="coerce").astype(float)
    mag = np.floor(np.log10(np.abs(v.where(v != 0))))
    factor = 10.0 ** (digits - 1 - mag.fillna(0))
    return (np.round(v * factor) / factor).where(v.notna())


def weights_table(q: QualityReport) -> pd.DataFrame:
    """The duplicate model's weights: ``Field, Agreement, Multiplies the
    odds by, Match weight`` (weight = log2 of the factor)."""
    dd = q.duplicates
    if dd is None or dd.weights is None or dd.weights.empty:
        return pd.DataFrame(columns=["Field", "Agreement", "Multiplies the odds by", "Match weight"])
    from crmlab.dedupe import FIELD_LABELS

    w = dd.weights.dropna(subset=["match_weight"])
    return pd.DataFrame({
        "Field": [FIELD_LABELS.get(c, c.replace("_", " ")) for c in w["comparison"]],
        "Agreement": ["different" if str(lv).startswith("All other") else str(lv)
                      for lv in w["level"]],
        "Multiplies the odds by": w["bayes_factor"].astype(float),
        "Match weight": w["match_weight"].astype(float),
    }).reset_index(drop=True)


def quarantine_table(q: QualityReport) -> pd.DataFrame:
    """``Table, Check, Columns, Rows`` -- counts only, never values."""
    s = q.quarantine
    if s is None or s.empty:
        return pd.DataFrame(columns=["Table", "Check", "Columns", "Rows"])
    return pd.DataFrame({"Table": s["table"], "Check": s["check"].str.replace("_", " "),
                         "Columns": s["columns"], "Rows": s["rows"].astype("int64")})


def fixes_table(q: QualityReport) -> pd.DataFrame:
    """``Rows affected, Issue, Where, What to do``, most rows first."""
    f = q.fixes()
    return pd.DataFrame({"Rows affected": f["rows"].astype("int64"),
                         "Issue": f["issue"].str.capitalize(),
                         "Where": [_where(t, c) for t, c in zip(f["table"], f["column"])],
                         "What to do": f["fix"]})


# columns of the example pairs that hold personal data, and their masking class
EXAMPLE_PII: dict[str, str] = {"Name": "name", "Email": "email", "Phone": "phone",
                               "Birth date": "birth_date", "Address": "address"}


def example_pairs(q: QualityReport, data, n: int = 20, *, customer_id_col: str = "customer_id",
                  columns: Sequence[str] = ("name", "first_name", "last_name", "email", "phone",
                                            "city", "birth_date")) -> pd.DataFrame:
    """Some of the pairs judged the same person, two rows per pair.

    Pairs are spread evenly over the ranking by match probability (from
    the most certain down to the closest calls). Transforms the model's
    pairs and the raw customers table (``data``: a Dataset or a mapping of
    ibis tables) into::

        Pair, Match probability, Customer id, Name, Email, Phone, City,
        Birth date, Why

    where the pair's figures are on its first row and ``Why`` says which
    fields agree. Personal columns are as found: the page masks them
    (``page_table`` passes :data:`EXAMPLE_PII`), the analyst sees them.
    """
    dd = q.duplicates
    cols = ["Pair", "Match probability", "Customer id", "Name", "Email", "Phone", "City",
            "Birth date", "Why"]
    if dd is None or dd.model is None or n <= 0 or not len(dd.pairs):
        return pd.DataFrame(columns=cols)
    ranked = dd.model.predict()
    pick = np.unique(np.linspace(0, len(ranked) - 1, min(n, len(ranked))).round().astype(int))
    chosen = ranked.iloc[pick].reset_index(drop=True)
    why = dd.model.describe(chosen)
    raw = data.raw("customers") if hasattr(data, "raw") else data["customers"]
    have = [c for c in columns if c in raw.columns]
    ids = sorted(set(chosen["customer_id_a"].astype(str)) | set(chosen["customer_id_b"].astype(str)))
    rec = (raw.filter(raw[customer_id_col].cast("string").isin(ids))
           .select(_id=raw[customer_id_col].cast("string"), *have).to_pandas()
           .drop_duplicates("_id").set_index("_id"))
    if "name" not in rec.columns and {"first_name", "last_name"} & set(rec.columns):
        parts = [rec[c].fillna("").astype(str) for c in ("first_name", "last_name") if c in rec]
        rec["name"] = parts[0].str.cat(parts[1:], sep=" ").str.strip() if len(parts) > 1 else parts[0]
    rows = []
    for i, (r, text) in enumerate(zip(chosen.itertuples(index=False), why), start=1):
        for j, cid in enumerate((r.customer_id_a, r.customer_id_b)):
            got = rec.loc[str(cid)] if str(cid) in rec.index else pd.Series(dtype=object)
            rows.append([str(i) if j == 0 else "",
                         f"{float(r.match_probability):.2%}" if j == 0 else "",
                         str(cid), got.get("name"), got.get("email"), got.get("phone"),
                         got.get("city"), got.get("birth_date"), text if j == 0 else ""])
    out = pd.DataFrame(rows, columns=cols)
    return out[[c for c in cols if c in ("Pair", "Match probability", "Customer id", "Why")
                or out[c].notna().any()]]


# page section -> (table function, column formats); counts get thousands
# separators, shares are fractions shown as percentages
PAGE_FORMATS: dict[str, str] = {
    "Filled": "{:.1%}", "Share": "{:.2%}", "Share invalid": "{:.1%}",
    "Confirmed in the engine": "{:.0%}", "Median": "{:,.7g}", "Usual from": "{:,.7g}",
    "Usual to": "{:,.7g}", "Multiplies the odds by": "{:,.0f}", "Match weight": "{:+.1f}",
}


def page_table(frame: pd.DataFrame | None, *, max_rows: int | None = None,
               count_col: str | None = None, min_size: int = 10,
               pii: Mapping[str, str] | None = None) -> dict:
    """A table of this module made ready for ``Report.section``: returns
    ``{"table": frame, "table_options": {...}}`` with the formats of
    :data:`PAGE_FORMATS`, ``max_rows``, the personal columns to mask
    (``pii``: label -> class) and, with ``count_col``, groups under
    ``min_size`` merged. An empty frame gives ``{"table": None}``.

    Examples
    --------
    >>> page_table(pd.DataFrame({"Table": ["orders"], "Share": [0.5]}))["table_options"]["formats"]
    {'Share': '{:.2%}'}
    """
    if frame is None or frame.empty:
        return {"table": None}
    options: dict[str, Any] = {
        "formats": {c: f for c, f in PAGE_FORMATS.items() if c in frame.columns},
        "max_rows": int(max_rows) if max_rows else max(50, len(frame)),
    }
    if pii:
        options["pii"] = {c: v for c, v in pii.items() if c in frame.columns}
    if count_col and count_col in frame.columns:
        options.update(count_col=count_col, min_size=int(min_size))
    return {"table": frame, "table_options": options}


def outlier_needs(q: QualityReport) -> list[str]:
    """What the outliers lack when no column could be assessed: a numeric
    column at all, or -- when there are some -- values to compare (money and
    counts are compared on a log scale, so they need values above zero)."""
    if not q.outlier_columns:
        return ["a numeric column, such as orders.amount"]
    logs = [f"{t}.{c}" for t, c, log in q.outlier_columns if log]
    linear = [f"{t}.{c}" for t, c, log in q.outlier_columns if not log]
    needs = []
    if logs:
        needs.append(f"{' or '.join(logs)} values above zero (money and counts are compared "
                     f"on a log scale)")
    if linear:
        needs.append(f"numbers in {' or '.join(linear)}")
    return needs


def section_needs(q: QualityReport, section: str, *, dedupe: bool = True) -> list[str] | None:
    """What a section lacks on this data (for ``Report.not_available``),
    or None when it can be shown."""
    s = section.lower()
    if s == "contacts":
        v = q.validity
        ok = len(v) and v["check"].isin(["email_syntax", "phone_number"]).any()
        return None if ok else ["customers.email", "customers.phone"]
    if s == "consistency":
        return None if len(q.consistency) or len(q.formats) else [
            "a text column with formats, such as customers.phone or customers.birth_date"]
    if s == "integrity":
        return None if len(q.integrity) else ["customers.customer_id (or another table that "
                                              "rows point to)"]
    if s == "outliers":
        return None if len(q.outliers) else outlier_needs(q)
    if s == "duplicates":
        if not dedupe:
            return ["the parameter dedupe = true"]
        if q.duplicates is not None:
            return None
        from crmlab.dedupe import MIN_RECORDS
        c = q.completeness
        ids = c[(c["table"] == "customers") & (c["column"] == "customer_id")]
        if len(ids) and int(ids["filled"].iloc[0]) < MIN_RECORDS:
            return [f"at least {MIN_RECORDS} customer records with a customer_id"]
        return ["customers.customer_id", "customers.name, email, phone or another identifying column"]
    return None


# --- charts ---------------------------------------------------------------

def dimension_chart(q: QualityReport):
    """Horizontal bars: how many of the score's points each dimension costs.

    A dimension's cost is ``weight * (100 - score) / sum of weights``, so the
    bars add up to ``100 - quality score``: the longest bar is where to look
    first. Labels carry each dimension's own score; dimensions that could not
    be measured are left out.
    """
    from crmlab import charts

    weights = q.rules.get("weights", {})
    dims = {d: q.scores.get(d) for d in DIMENSIONS if q.scores.get(d) is not None
            and weights.get(d, 0) > 0}
    total = sum(weights[d] for d in dims) or 1.0
    lost = pd.Series({f"{d} ({v:.1f})": weights[d] * (100 - v) / total for d, v in dims.items()},
                     dtype=float)
    score = q.scores.get("quality")
    title = (f"Where the quality score of {score:.1f} loses its {100 - score:.1f} points"
             if score is not None else "Points lost per dimension")
    fig = charts.bar(lost, horizontal=True, fmt="{:.2f}", title=title,
                     xlabel="points lost out of 100 (dimension score in brackets)",
                     color=charts.COLORS["accent"])
    return fig


def score_history(previous: Sequence[Mapping], current: Mapping | None = None,
                  now=None) -> pd.DataFrame:
    """The scores across runs, oldest first.

    Takes ``Report.previous(n)`` (earlier successful runs, newest first:
    dicts with ``started_at`` and ``metrics``) and the current run's
    metrics; returns ``run`` (timestamp) and the score columns of
    :func:`score_trend`, one row per run that has a quality score.
    """
    hist = []
    for run in reversed(list(previous)):
        m = dict(run.get("metrics") or {})
        m["started_at"] = run.get("started_at")
        hist.append(m)
    cur = None
    if current is not None:
        cur = dict(current)
        cur["started_at"] = (pd.Timestamp(now) if now is not None
                             else pd.Timestamp.now(tz="UTC")).isoformat()
    t = score_trend(hist, cur)
    t["run"] = pd.to_datetime(t["run"], utc=True, errors="coerce", format="ISO8601")
    return t[t["quality_score"].notna()].reset_index(drop=True)


def trend_chart(history: pd.DataFrame):
    """The quality score across runs (bold) with its dimensions (thin)."""
    import matplotlib.pyplot as plt

    from crmlab import charts

    charts.use_theme()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    x = np.arange(len(history))
    for i, d in enumerate(DIMENSIONS):
        col = f"{d}_score"
        if col in history and history[col].notna().any():
            ax.plot(x, history[col], lw=1, alpha=0.6, color=charts.PALETTE[(i + 1) % 7], label=d)
    ax.plot(x, history["quality_score"], lw=2.6, marker="o", color=charts.COLORS["main"],
            label="quality score")
    ax.set_xticks(x, [t.strftime("%m-%d %H:%M") if pd.notna(t) else "?" for t in history["run"]],
                  rotation=30 if len(x) > 6 else 0)
    ax.set_ylabel("score (0-100)")
    ax.set_title("Quality score over recent runs")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9)
    return fig


def trend_text(history: pd.DataFrame) -> str:
    """The score's trend in words, from :func:`score_history`."""
    if len(history) <= 1:
        return ("This is the first run with a quality score, so there is no trend yet; each "
                "later run adds a point here and a change to the KPI cards above.")
    first, last, prev = history.iloc[0], history.iloc[-1], history.iloc[-2]
    text = (f"Over the last {len(history)} runs the quality score went from "
            f"{first['quality_score']:.1f} to {last['quality_score']:.1f}.")
    moves = {d: last[f"{d}_score"] - prev[f"{d}_score"] for d in DIMENSIONS
             if pd.notna(last.get(f"{d}_score")) and pd.notna(prev.get(f"{d}_score"))}
    moves = {d: v for d, v in moves.items() if abs(v) >= 0.05}
    if moves:
        d = max(moves, key=lambda k: abs(moves[k]))
        text += (f" Since the previous run, {d} moved most ({moves[d]:+.1f} points), to "
                 f"{last[f'{d}_score']:.1f}.")
    else:
        text += " No dimension moved since the previous run."
    return text


def completeness_chart(q: QualityReport, n: int = 12):
    """Horizontal bars: the share of empty cells of the ``n`` emptiest
    columns (most important first on ties); None when every cell is filled."""
    from crmlab import charts

    c = q.completeness[(q.completeness["missing"] > 0) & (q.completeness["importance"] > 0)]
    if c.empty:
        return None
    c = c.assign(empty=100 - c["complete_pct"]).sort_values(["empty", "importance"],
                                                             ascending=[False, False]).head(n)
    series = pd.Series(list(c["empty"]), index=[f"{t}.{col}" for t, col in
                                                 zip(c["table"], c["column"])], dtype=float)
    return charts.bar(series, horizontal=True, fmt="{:.2f}%",
                      title="Empty cells: share of rows per column", xlabel="% of rows empty")


def format_chart(q: QualityReport, min_size: int = 10):
    """Stacked horizontal bars: how each date and phone column is written
    (share of values per format; phones per country with at least
    ``min_size`` numbers); None when there is no such column."""
    import matplotlib.pyplot as plt

    from crmlab import charts

    f = q.formats
    if f is None or f.empty:
        return None
    f = f.copy()
    sizes = f.groupby(["table", "column", "group"])["rows"].transform("sum")
    f = f[sizes >= min_size]
    if f.empty:
        return None
    f["bar"] = [f"{t}.{c}" + ("" if g == "all" else f" ({g})")
                for t, c, g in zip(f["table"], f["column"], f["group"])]
    wide = f.pivot_table(index="bar", columns="format", values="share", aggfunc="sum",
                         sort=False).fillna(0)
    # formats under 1% of every column are one grey "other formats" slice
    main = [c for c in wide.columns if wide[c].max() >= 0.01 and c != "other"]
    main = list(wide[main].sum().sort_values(ascending=False).index)
    rest = [c for c in wide.columns if c not in main]
    wide = wide[main].assign(**({"other formats": wide[rest].sum(axis=1)} if rest else {}))
    charts.use_theme()
    fig, ax = plt.subplots(figsize=(8, max(2.2, 0.45 * len(wide) + 1.4)))
    left = np.zeros(len(wide))
    labels = list(wide.index)[::-1]
    for i, fmt in enumerate(wide.columns):
        vals = wide[fmt].to_numpy()[::-1] * 100
        color = charts.COLORS["neutral"] if fmt == "other formats" else charts.PALETTE[i % 7]
        ax.barh(labels, vals, left=left, color=color, label=fmt)
        left = left + vals
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of values")
    ax.grid(axis="y", visible=False)
    ax.set_title("How dates and phone numbers are written")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3, fontsize=9)
    return fig


def weights_chart(q: QualityReport):
    """Horizontal bars: the match weight of each field's levels of agreement
    (log2 of how much it multiplies the odds of a match; positive = more
    likely the same person); None without a duplicate model."""
    import matplotlib.pyplot as plt

    from crmlab import charts

    w = weights_table(q)
    if w.empty:
        return None
    labels = [f"{f}: {a}" for f, a in zip(w["Field"], w["Agreement"])][::-1]
    vals = w["Match weight"].to_numpy()[::-1]
    charts.use_theme()
    fig, ax = plt.subplots(figsize=(8, max(3, 0.28 * len(w) + 1.2)))
    colors = [charts.COLORS["main"] if v >= 0 else charts.COLORS["bad"] for v in vals]
    ax.barh(labels, vals, color=colors)
    ax.axvline(0, color=charts.COLORS["neutral"], lw=1)
    ax.grid(axis="y", visible=False)
    ax.tick_params(axis="y", labelsize=9)
    ax.set_xlabel("match weight (each +1 doubles the odds of a match; -1 halves them)")
    ax.set_title("What the duplicate model learned from each field")
    return fig


def phone_text(q: QualityReport) -> str:
    """The paragraph under the phone numbers per country."""
    p = q.phones
    if p is None or p.empty:
        return "No phone numbers to check."
    n, bad = int(p["numbers"].sum()), int(p["invalid"].sum())
    fast = float((p["numbers"] * p["fast_pct"]).sum() / max(n, 1))
    worst = p.sort_values("invalid_pct", ascending=False).iloc[0]
    text = (f"{_count(n, 'phone number')} were checked against the numbering plan of the "
            f"customer's country; {bad:,} {'is' if bad == 1 else 'are'} not valid "
            f"({_p(100 * bad / max(n, 1))})")
    if bad and len(p) > 1:
        text += f", most often in {worst['phone_region']} ({_p(worst['invalid_pct'])})"
    return (text + f". Valid numbers are stored in E.164 (+8613812345678); {fast:.0f}% were "
            f"confirmed by pattern inside the engine, the rest one by one with phonenumbers. "
            f"Countries with fewer customers than the minimum group size are merged.")


def examples_text(q: QualityReport, examples: pd.DataFrame) -> str:
    """The paragraph above the example duplicate pairs."""
    dd = q.duplicates
    if dd is None or not len(dd.pairs):
        return "No pair of customer records reached the match threshold."
    shown = int((examples["Pair"] != "").sum()) if len(examples) else 0
    return (f"{_count(shown, 'pair')} of {len(dd.pairs):,}, spread from the most certain match to "
            f"the closest call above the threshold. 'Why' says which fields are the same, close "
            f"(a typo, a reformatted value), different or missing on one record. Names, emails and phone numbers are masked on this page "
            f"and birth dates shown as age bands; the analyst view and duplicates.csv give the "
            f"customer ids to review.")
