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

Each section also has its own function taking ibis tables, for analysts
who want one piece (:func:`completeness`, :func:`validity`,
:func:`normalise_phones`, :func:`consistency`, :func:`integrity`,
:func:`outliers`, :func:`freshness`, :func:`quarantine_summary`,
:func:`detect_defects`).

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

from crmlab.exceptions import DataContractError, NoDataError

RULES_PATH = Path(__file__).with_name("quality.yaml")

DIMENSIONS = ("completeness", "validity", "uniqueness", "consistency", "integrity", "timeliness")

# the string tokens that mean "no value" in exports (compared trimmed, lower case)
NULL_TOKENS = ("", "null", "none", "nan", "n/a", "na", "-", "--", "无", "空")

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


def load_rules(overrides: Mapping | None = None, path: str | Path | None = None) -> dict:
    """The data-quality rules: ``quality.yaml`` merged with ``overrides``.

    Parameters
    ----------
    overrides : mapping, optional
        Keys to replace; dictionaries merge key by key, lists and scalars
        replace (e.g. ``{"domains": {"orders": {"status": ["paid", "open"]}}}``).
    path : path, optional
        Another rules file instead of the packaged one.

    Returns
    -------
    dict
        A fresh copy (changing it does not change later calls).

    Examples
    --------
    >>> load_rules({"dedupe": {"threshold": 0.95}})["dedupe"]["threshold"]
    0.95
    """
    base = _read_rules(str(path or RULES_PATH))
    return _deep_merge(base, overrides or {})


# --------------------------------------------------------------------------
# small engine helpers
# --------------------------------------------------------------------------

@ibis.udf.scalar.builtin(signature=((dtypes.string, dtypes.string), dtypes.timestamp))
def try_strptime(value, fmt):  # noqa: D103 - DuckDB's TRY_STRPTIME
    ...


def _is_string(col: ir.Value) -> bool:
    return col.type().is_string()


def _blank(col: ir.Value) -> ir.BooleanValue:
    """True where a cell is empty: null, or (text) blank or a null token.

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
    if _is_string(col):
        # the string functions run only on short values (a null token is short)
        return col.isnull() | ibis.ifelse(col.length() <= 12,
                                          col.strip().lower().isin(list(NULL_TOKENS)), False)
    if col.type().is_floating():
        return col.isnull() | col.isnan()
    return col.isnull()


def _blank_by_values(t: ir.Table, column: str) -> ir.BooleanValue:
    """:func:`_blank` for a low-cardinality text column: its distinct values
    are classified once, then each row is a null test and a short lookup."""
    col = t[column]
    if not _is_string(col):
        return _blank(col)
    distinct = (t.filter(col.notnull()).select(_v=col).distinct().limit(10_001)
                .to_pandas()["_v"].astype(str).tolist())
    if len(distinct) > 10_000:
        return _blank(col)
    tokens = [v for v in distinct if " ".join(v.split()).lower() in NULL_TOKENS]
    return col.isnull() | col.isin(tokens) if tokens else col.isnull()


def _in_list(expr: ir.StringValue, values: Sequence[str]) -> ir.BooleanValue:
    """``expr IN values``; a long list (every ISO country code) becomes one
    substring search in a delimited literal, which engines run far faster
    than a long chain of comparisons."""
    values = [str(v) for v in values]
    if len(values) <= 16:
        return expr.isin(values)
    sep = "\x1f"
    return ibis.literal(sep + sep.join(values) + sep).contains(sep + expr + sep)


def _as_number(col: ir.Value) -> ir.NumericValue:
    if _is_string(col):
        return col.strip().try_cast("float64")
    if col.type().is_boolean():
        return col.cast("int8")
    return col


def _as_timestamp(col: ir.Value, rules: dict) -> ir.TimestampValue:
    """A date column as a timestamp; text is parsed with every known format."""
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
        parsed = []
        for f in rules["date_formats"]:
            parsed.append(try_strptime(s, f["format"]))
            if f.get("alt_format"):
                parsed.append(try_strptime(s, f["alt_format"]))
        return ibis.coalesce(*parsed)
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


# tables up to this many rows evaluate their rules once into a cached table
# of booleans (about 60 bytes a row); larger ones are read twice instead
CACHE_MAX_ROWS = 2_000_000


def run_checks(t: ir.Table, checks: Sequence[Check], *, row_col: str = "_row",
               key_col: str | None = None, list_rows: bool = True, cache: bool | None = None
               ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Count and list the rows each check flags.

    Parameters
    ----------
    t : ibis.Table
        The table every check's expressions are bound to.
    checks : sequence of Check
    row_col, key_col : str
        Row identifier and (optional) primary key carried into the list.
    list_rows : bool
        Also return the flagged rows (a second query).
    cache : bool, optional
        Evaluate every rule once into a temporary table of booleans that both
        queries read (faster, costs memory); default: when the table has at
        most ``CACHE_MAX_ROWS`` rows.

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
    key = t[key_col] if key_col and key_col in t.columns else ibis.null().cast("string")
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
    flags = t.select(_r=_row_id(t, row_col), _k=key, **per_row)
    if cache is None:
        cache = int(t.count().execute()) <= CACHE_MAX_ROWS
    if cache:
        # every rule evaluated once per row into a narrow table of booleans
        # that the counts and the list of flagged rows both read
        flags = flags.cache()
    try:
        n_rows = flags.count()
        aggs = {}
        for i, (c, h) in enumerate(zip(checks, hits)):
            for name, e in ((f"a{i}", c.applies), (f"f{i}", h)):
                col = alias.get(name, name)
                aggs[name] = (flags[col].cast("int64").sum() if col in per_row
                              else ibis.ifelse(e.fill_null(False), n_rows, 0))  # constant rule
        counts = flags.aggregate(**aggs).to_pandas().iloc[0]
        rows = []
        for i, c in enumerate(checks):
            checked = int(counts[f"a{i}"] or 0)
            failed = int(counts[f"f{i}"] or 0)
            rows.append([c.table, c.column, c.check, c.dimension, c.defect, checked, failed,
                         _pct(failed, checked)])
        summary = pd.DataFrame(rows, columns=cols)
        active = [i for i, c in enumerate(checks) if c.defect and int(counts[f"f{i}"] or 0) > 0
                  and f"f{i}" in per_row]
        if not list_rows or not active:
            return summary, pd.DataFrame(columns=flag_cols)
        sel = (flags.filter(ibis.or_(*[flags[f"f{i}"] for i in active]))
               .select("_r", "_k", *[f"f{i}" for i in active]).to_pandas())
    finally:
        if cache:
            flags.release()
    parts = []
    for i in active:
        c = checks[i]
        hit = sel[sel[f"f{i}"].astype(bool)]
        keys = hit["_k"].astype("string").where(hit["_k"].notna(), None)
        parts.append(pd.DataFrame({"table": c.table, "row": hit["_r"].astype("int64"),
                                   "key": keys, "column": c.column, "check": c.check,
                                   "defect": c.defect}))
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


def email_checks(t: ir.Table, table: str, column: str, rules: dict) -> list[Check]:
    """Email syntax (the pattern of ``quality.yaml`` on the trimmed value,
    at most ``max_length`` characters) and domain sanity (reserved top-level
    domains, misspelled provider domains)."""
    r = rules["email"]
    e = t[column].cast("string").strip()
    applies = ~_blank(t[column])
    helper = f"_syntax_bad__{column}"
    syntax_bad = t[helper] if helper in t.columns else _email_syntax_bad(t[column], r)
    domain = e.lower().re_extract(r"@([^@]+)$", 1)
    tld = domain.re_extract(r"\.([^.]+)$", 1)
    domain_bad = (tld.isin([x.lower() for x in r["reserved_tlds"]])
                  | domain.isin([x.lower() for x in r["misspelled_domains"]]))
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


def amount_checks(t: ir.Table, table: str, column: str, rule: dict,
                  reference_col: str | None = None) -> list[Check]:
    """Negative (below ``min``) and absurd amounts: above ``absurd_max``, or
    more than ``absurd_factor`` times the row's reference value
    (``reference_col``, e.g. the order's line total)."""
    col = t[column]
    x = _as_number(col)
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
    if rule.get("absurd_factor") and reference_col and reference_col in t.columns:
        ref = t[reference_col]
        absurd = absurd | ((ref > 0) & (x > ref * rule["absurd_factor"])).fill_null(False)
    if rule.get("absurd_max") is not None or rule.get("absurd_factor"):
        out.append(Check(table, column, "absurd", "validity", "absurd_amount", absurd, known))
    return out


# a categorical column with at most this many distinct values is classified
# value by value (one small query), and each row is then only looked up
MAX_DISTINCT_CLASSIFIED = 10_000


def _fold(v: str) -> str:
    return " ".join(str(v).split()).lower()


def domain_checks(t: ir.Table, table: str, column: str, domain: Sequence) -> list[Check]:
    """A categorical column against its allowed values, compared trimmed and
    case-folded: outside = ``out_of_domain``; inside but written another way
    (``' PAID'``, ``Paid``) = ``case_whitespace`` (consistency).

    The column's distinct values are classified once (a group-by in the
    engine; values never leave crmlab's queries) and rows are flagged by
    looking their value up, so a 20-million-row column costs one scan."""
    col = t[column]
    allowed = ([str(v) for v in domain] if not isinstance(domain, str)
               else sorted(phonenumbers.SUPPORTED_REGIONS) if domain == "iso3166" else [domain])
    applies = ~_blank(col)
    s = col.cast("string")
    distinct = (t.filter(col.notnull()).select(_v=s).distinct().limit(MAX_DISTINCT_CLASSIFIED + 1)
                .to_pandas()["_v"].astype(str).tolist())
    if len(distinct) <= MAX_DISTINCT_CLASSIFIED:
        folded_allowed = {v.lower() for v in allowed}
        exact = set(allowed)
        outside = [v for v in distinct if _fold(v) not in folded_allowed
                   and _fold(v) not in NULL_TOKENS]
        variant = [v for v in distinct if _fold(v) in folded_allowed and v not in exact]
        out_flag = s.isin(outside) if outside else ibis.literal(False)
        var_flag = s.isin(variant) if variant else ibis.literal(False)
    else:   # free text configured as a category: compare row by row
        inside = _in_list(_domain_fold(col), [v.lower() for v in allowed])
        out_flag, var_flag = ~inside, inside & ~_in_list(s, allowed)
    return [Check(table, column, "domain", "validity", "out_of_domain", out_flag, applies),
            Check(table, column, "canonical_spelling", "consistency", "case_whitespace",
                  var_flag, applies)]


def range_checks(t: ir.Table, table: str, column: str, bounds: Sequence) -> list[Check]:
    """A numeric scale within ``[low, high]`` (e.g. satisfaction 1-5)."""
    col = t[column]
    x = _as_number(col)
    lo, hi = bounds
    applies = ~_blank(col) & x.notnull()
    return [Check(table, column, "range", "validity", "out_of_domain", (x < lo) | (x > hi), applies)]


def _spelling_variants(t: ir.Table, column: str, canonical: Sequence | None = None) -> list[str]:
    """The spellings of a text column that differ from the canonical one of
    their trimmed, case-folded form: the domain value when ``canonical`` is
    given, else the most frequent spelling. (Values stay in the engine's
    query; they are never reported.)"""
    col = t[column].cast("string")
    counts = (t.filter(~_blank(t[column])).group_by(_v=col).aggregate(_n=ibis._.count())
              .to_pandas())
    if counts.empty:
        return []
    counts["_f"] = (counts["_v"].astype(str).str.strip().str.replace(r"\s+", " ", regex=True)
                    .str.lower())
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


def text_checks(t: ir.Table, table: str, column: str) -> list[Check]:
    """Stray spaces and case variants of a free-text column: a value is
    inconsistent when it is not the most frequent spelling of its trimmed,
    case-folded form (``' Beijing'``, ``BEIJING`` beside ``Beijing``)."""
    col = t[column]
    variants = _spelling_variants(t, column)
    flag = col.cast("string").isin(variants) if variants else ibis.literal(False)
    return [Check(table, column, "canonical_spelling", "consistency", "case_whitespace",
                  flag, ~_blank(col))]


def _format_class(col: ir.StringValue, formats: Sequence[dict]) -> ir.StringValue:
    s = col.strip()
    out = ibis.literal("other")
    for f in reversed(formats):
        out = ibis.ifelse(s.re_search(f["regex"]).fill_null(False), f["name"], out)
    return out


def format_mix(t: ir.Table, column: str, formats: Sequence[dict], *,
               group_col: str | None = None) -> pd.DataFrame:
    """How the values of a text column are written.

    Transforms a table into one row per (group, format)::

        group, format, rows, share

    ``format`` is the name of the first pattern of ``formats`` the trimmed
    value matches (``"other"`` if none); ``group`` is ``group_col`` (e.g.
    the country, since each country writes phones its own way) or ``"all"``.
    """
    col = t[column].cast("string")
    grp = (t[group_col].cast("string").strip().upper().fill_null("?")
           if group_col and group_col in t.columns else ibis.literal("all"))
    x = t.filter(~_blank(t[column])).mutate(_g=grp, _fmt=_format_class(col, formats))
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
    col = t[column].cast("string")
    grp = (t[group_col].cast("string").strip().upper().fill_null("?")
           if group_col and group_col in t.columns else ibis.literal("all"))
    fmt = _format_class(col, formats)
    # one membership test, so the format is classified once per row
    bad = sorted({f"{g}|{f}" for g, f in zip(minority["group"], minority["format"])})
    flag = (grp + "|" + fmt).isin(bad) if bad else ibis.literal(False)
    return [Check(table, column, check, "consistency", defect, flag, ~_blank(t[column]))], mix


# --------------------------------------------------------------------------
# integrity and uniqueness
# --------------------------------------------------------------------------

def _join_keys(a: ir.Value, b: ir.Value) -> tuple[ir.Value, ir.Value]:
    """Two key columns made comparable (text, trimmed, when types differ)."""
    if a.type() == b.type() and not _is_string(a):
        return a, b
    return a.cast("string").strip(), b.cast("string").strip()


def integrity(tables: Mapping[str, ir.Table], rules: dict | None = None, *,
              row_col: str = "_row", list_rows: bool = True
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
        checked = int(kids.count().execute())
        orphans = kids.anti_join(keys, kids._ck == keys._pk)
        key_col = rules.get("keys", {}).get(rel["child"])
        key = (orphans[key_col].cast("string") if key_col in orphans.columns
               else ibis.null().cast("string"))
        found = orphans.select(row=_row_id(orphans, row_col), key=key).to_pandas() \
            if list_rows else None
        n = int(len(found)) if found is not None else int(orphans.count().execute())
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
    counts = filled.aggregate(n=filled.count(), u=filled[key].nunique()).to_pandas().iloc[0]
    rows, unique = int(counts["n"]), int(counts["u"])
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


OUTLIER_SAMPLE_ROWS = 2_000_000


def _outlier_value(col: ir.Value, log: bool) -> ir.FloatingValue:
    x = col.cast("float64")
    if log:
        return ibis.ifelse(x > 0, x.log10(), ibis.null().cast("float64"))
    return ibis.ifelse(x.isnan(), ibis.null().cast("float64"), x)


def outliers(t: ir.Table, *, table: str, columns: Sequence[str] | None = None,
             k: float = 3.5, log_columns: Sequence[str] = (), skip_columns: Sequence[str] = (),
             random_state: int = 42) -> pd.DataFrame:
    """Outliers per numeric column by the modified z-score, in the engine.

    A value is an outlier when its modified z-score (Iglewicz & Hoaglin,
    1993) exceeds ``k`` (3.5): it lies more than ``k / 0.6745`` median
    absolute deviations from the median -- on a log10 scale for money and
    counts (``log_columns``, positive values only), where "ten times the
    usual order" is one step. A column where more than half the values are
    equal has MAD 0 and is not assessed (``lower``/``upper`` empty). Three
    small queries per table (medians, MADs, counts); nothing leaves the
    engine but the bounds. On more than ``OUTLIER_SAMPLE_ROWS`` rows the
    median and MAD come from a seeded uniform sample of that size (their
    error is far below the fences' width); outliers are counted on all rows.

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
        return _outlier_value(t[c], c in set(log_columns))

    vals = {c: value(c) for c in columns}
    # the fences come from at most OUTLIER_SAMPLE_ROWS rows (a seeded uniform
    # sample) with approximate quantiles (t-digest): exact medians of tens of
    # millions of values cost a sort each, and the fences need two digits
    n_rows = int(t.count().execute())
    base = t
    if n_rows > OUTLIER_SAMPLE_ROWS:
        base = t.sample(OUTLIER_SAMPLE_ROWS / n_rows, method="row", seed=random_state)
    bvals = {c: _outlier_value(base[c], c in set(log_columns)) for c in columns}
    med = base.aggregate(**{f"m{i}": v.approx_median() for i, v in enumerate(bvals.values())}
                         ).to_pandas().iloc[0]
    m = {c: med[f"m{i}"] for i, c in enumerate(columns)}
    spread = base.aggregate(**{f"d{i}": (v - float(m[c])).abs().approx_median()
                               for i, (c, v) in enumerate(bvals.items()) if pd.notna(m[c])}
                            ).to_pandas().iloc[0] if any(pd.notna(x) for x in m.values()) else {}
    bounds = {}
    for i, c in enumerate(columns):
        if pd.isna(m[c]):
            continue
        mad = float(spread[f"d{i}"] or 0)
        half = k * mad / MAD_CONSISTENCY if mad > 0 else None
        bounds[c] = (float(m[c]) - half, float(m[c]) + half) if half is not None else None
    aggs = {f"n{i}": vals[c].count() for i, c in enumerate(columns)}
    for i, c in enumerate(columns):
        if bounds.get(c):
            lo, hi = bounds[c]
            aggs[f"l{i}"] = (vals[c] < lo).cast("int64").sum()
            aggs[f"h{i}"] = (vals[c] > hi).cast("int64").sum()
    cnt = t.aggregate(**aggs).to_pandas().iloc[0]
    rows = []
    for i, c in enumerate(columns):
        log = c in set(log_columns)
        back = (lambda v: 10 ** v) if log else (lambda v: v)
        n = int(cnt[f"n{i}"] or 0)
        if pd.isna(m[c]):
            continue
        b = bounds.get(c)
        low = int(cnt[f"l{i}"] or 0) if b else 0
        high = int(cnt[f"h{i}"] or 0) if b else 0
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


def freshness(tables: Mapping[str, ir.Table], reference: dt.datetime, rules: dict | None = None
              ) -> pd.DataFrame:
    """Freshness of each dated table against the reference date.

    Returns one row per table of ``rules["timeliness"]["columns"]`` that is
    present: ``table, column, first, latest, reference, lag_days, score``
    (lag = whole days from the newest plausible record to the reference).
    """
    rules = rules or load_rules()
    tl = rules["timeliness"]
    rows = []
    for table, column in tl["columns"].items():
        t = tables.get(table)
        if t is None or column not in t.columns:
            continue
        rule = rules["dates"]["columns"].get(table, {}).get(column, {})
        cov = date_coverage(t, column, reference, rules, earliest=rule.get("min", "1900-01-01"))
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
        else:
            self.names = list(getattr(data, "tables"))
            self._data = data
            self._raw = self._typed = None
            self.quarantine = getattr(data, "quarantine", None)
            self.row_counts = getattr(data, "row_counts", None)
            self.extracted_at = getattr(data, "extracted_at", None)

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
ABSURD_CANDIDATE_QUANTILE = 0.9


def _order_amount_reference(orders: ir.Table, tables: Mapping[str, ir.Table]) -> ir.Table:
    """Add ``_amount_ref``: the order's line total (sum of quantity x
    unit_price) when order lines exist, else the customer's median order.

    With order lines, only the orders above the 90th percentile of amount
    get a reference (a semi-join keeps the aggregation of lines small on
    tens of millions of rows); the others cannot be 50 times their basket
    unless that basket is tiny, and the absolute limit still applies."""
    lines = tables.get("order_lines")
    if lines is not None and {"order_id", "quantity", "unit_price"} <= set(lines.columns) \
            and "order_id" in orders.columns and "amount" in orders.columns:
        amt = _as_number(orders.amount)
        cut = orders.filter(amt > 0).aggregate(
            q=amt.approx_quantile(ABSURD_CANDIDATE_QUANTILE)).to_pandas()["q"].iloc[0]
        cut = 0.0 if cut is None or pd.isna(cut) else float(cut)
        lk, ok = _join_keys(lines.order_id, orders.order_id)
        o2 = orders.mutate(_ok=ok)
        cands = o2.filter(_as_number(o2.amount) > cut).select(_ck=o2._ok)
        l2 = lines.mutate(_lk=lk, _v=_as_number(lines.quantity) * _as_number(lines.unit_price))
        l2 = l2.semi_join(cands, l2._lk == cands._ck)
        tot = l2.group_by("_lk").aggregate(_amount_ref=l2._v.sum())
        return o2.left_join(tot, o2._ok == tot._lk).drop("_ok", "_lk")
    if "customer_id" in orders.columns and "amount" in orders.columns:
        o2 = orders.mutate(_amt=_as_number(orders.amount))
        med = (o2.filter(o2._amt > 0).group_by(_ck=o2.customer_id)
               .aggregate(_amount_ref=ibis._._amt.median()))
        return o2.left_join(med, o2.customer_id == med._ck).drop("_ck", "_amt")
    return orders


def table_checks(name: str, t: ir.Table, rules: dict, reference: dt.datetime, *,
                 tables: Mapping[str, ir.Table] | None = None, row_col: str = "_row"
                 ) -> tuple[ir.Table, list[Check], list[pd.DataFrame]]:
    """Every row-level rule of ``rules`` that applies to one table.

    Returns the table the checks are bound to (possibly with helper columns,
    e.g. the order's line total), the checks (completeness, email, dates,
    amounts, domains, ranges, spelling, date formats, phone formats) and the
    format mixes (frames with ``table, column, group, format, rows, share,
    canonical``).
    """
    tables = tables or {}
    if name == "orders" and "amount" in t.columns:
        t = _order_amount_reference(t, tables)
    # values several rules read (parsed dates, email syntax) are computed
    # once per row, behind a view() so the SQL does not repeat them
    date_rules = {c: r for c, r in rules.get("dates", {}).get("columns", {}).get(name, {}).items()
                  if c in t.columns}
    email_col = rules.get("email", {}).get("columns", {}).get(name)
    helpers = {f"_ts__{c}": _as_timestamp(t[c], rules) for c in date_rules
               if _is_string(t[c])}
    categorical = set(rules.get("domains", {}).get(name, {})) | set(
        rules.get("tidy_text", {}).get(name, []))
    helpers.update({f"_b__{c}": (_blank_by_values(t, c) if c in categorical else _blank(t[c]))
                    for c in t.columns if not c.startswith("_") and f"_b__{c}" not in t.columns})
    if email_col and email_col in t.columns:
        helpers[f"_syntax_bad__{email_col}"] = _email_syntax_bad(t[email_col], rules["email"])
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
            ref = "_amount_ref" if (name == "orders" and col == "amount"
                                    and "_amount_ref" in t.columns) else None
            checks += amount_checks(t, name, col, rule, reference_col=ref)
    domains = rules.get("domains", {}).get(name, {})
    for col, domain in domains.items():
        if col in t.columns:
            checks += domain_checks(t, name, col, domain)
    for col, bounds in rules.get("ranges", {}).get(name, {}).items():
        if col in t.columns:
            checks += range_checks(t, name, col, bounds)
    for col in rules.get("tidy_text", {}).get(name, []):
        if col in t.columns and col not in domains and _is_string(t[col]):
            checks += text_checks(t, name, col)
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

        out = {"quality_score": r(self.scores.get("quality"))}
        for d in DIMENSIONS:
            out[f"{d}_score"] = r(self.scores.get(d))
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

    def paragraph(self, section: str) -> str:
        """The paragraph under a section: overview, completeness, validity,
        consistency, integrity, outliers, duplicates, quarantine, fixes."""
        return paragraph(self, section)


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


def assess(data, *, as_of: str | dt.date | None = None, rules: Mapping | None = None,
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
    rules = load_rules(rules)
    src = _Source(data)
    if not src.names:
        raise NoDataError("the source has no tables")
    reference = reference_time(as_of, src.extracted_at)
    raw = {n: _with_row(src.raw(n), row_col) for n in src.names}
    typed = {n: src.typed(n) for n in src.names}

    summaries, flagged, mixes = [], [], []
    rows: dict[str, int] = {}
    for name in src.names:
        t, checks, mx = table_checks(name, raw[name], rules, reference, tables=raw,
                                     row_col=row_col)
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

    integ, integ_flags = integrity(raw, rules, row_col=row_col)
    flagged.append(integ_flags)

    # uniqueness: repeated keys and (customers) duplicate people
    uniq_rows = []
    dd = None
    if dedupe and "customers" in raw:
        from crmlab import dedupe as _dedupe
        cust = raw["customers"]
        ident = [c for c in _dedupe.ROLES if c in cust.columns]
        if ident and "customer_id" in cust.columns:
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

    # outliers and dates on the usable (typed) rows
    oc = rules.get("outliers", {})
    outl = [outliers(typed[n], table=n, k=oc.get("k", 3.5), log_columns=oc.get("log_columns", []),
                     skip_columns=oc.get("skip_columns", []) + [row_col],
                     random_state=random_state) for n in src.names]
    outl = pd.concat([o for o in outl if len(o)], ignore_index=True) if any(len(o) for o in outl) \
        else pd.DataFrame(columns=["table", "column", "scale", "values", "median", "lower",
                                   "upper", "low", "high", "outliers", "outlier_pct"])
    fresh = freshness(typed, reference, rules)

    # frames for the page
    comp = summary[summary["check"] == "filled"].copy()
    default_imp = rules.get("default_importance", 1)
    comp["importance"] = [rules.get("importance", {}).get(t, {}).get(c, default_imp)
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
    date_cols = dict(rules.get("timeliness", {}).get("columns", {}))
    date_cols.setdefault("customers", "signup_date")
    date_cols.setdefault("campaigns", "start_date")
    for n in src.names:
        rc = (src.row_counts or {}).get(n, {})
        first = latest = None
        col = date_cols.get(n)
        if col and col in typed[n].columns:
            cov = date_coverage(typed[n], col, reference, rules)
            first, latest = cov["first"], cov["latest"]
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
                         defects=defects, duplicates=dd, rules=rules)


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
    if len(fixes):
        top = fixes.iloc[0]
        total = rep.rows.get(top["table"], 0)
        share = f" ({_p(100 * top['rows'] / total)} of {top['table']})" if total else ""
        out.append(f"The largest issue is {top['issue']} in {_where(top['table'], top['column'])}: "
                   f"{_n(top['rows'])} rows{share}.")
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
        out.append(f"{_n(m['orphan_orders'])} orders point to a customer that does not exist.")
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


def paragraph(rep: QualityReport, section: str) -> str:
    """The paragraph that says what a section's table or chart means and
    what to do, written from the numbers."""
    s = section.lower()
    if s == "overview":
        total = sum(rep.rows.values())
        text = (f"{len(rep.rows)} tables with {_n(total)} rows were checked. "
                + _dim_sentence(rep.scores))
        parts = [f"{d} {rep.scores[d]:.0f}" for d in DIMENSIONS if rep.scores.get(d) is not None]
        if parts:
            text += " Dimension scores: " + ", ".join(parts) + "."
        return text
    if s == "completeness":
        c = rep.completeness
        if c.empty:
            return "Not available: no columns to check."
        key = c[c["importance"] >= 4]
        worst = (key if len(key) else c).sort_values("complete_pct").iloc[0]
        full = int((c["missing"] == 0).sum())
        return (f"{full} of {len(c)} columns are complete. Among the columns that matter most, "
                f"{worst['table']}.{worst['column']} is the least complete at "
                f"{worst['complete_pct']:.1f}% ({_n(worst['missing'])} empty). Columns are listed "
                f"by importance, then by how empty they are.")
    if s == "validity":
        v = rep.validity
        if v.empty:
            return "Not available: no column with a validity rule."
        bad = v[v["failed"] > 0].sort_values("failed", ascending=False)
        if bad.empty:
            return f"All {len(v)} validity checks pass."
        lines = [f"{_n(r.failed)} {DEFECT_LABELS.get(r.defect, r.defect)} in {r.table}.{r.column} "
                 f"({_p(r.failed_pct)})" for r in bad.head(3).itertuples(index=False)]
        text = (f"{len(bad)} of {len(v)} validity checks find problems; the largest: "
                + "; ".join(lines) + ".")
        if len(rep.phones):
            fast = float((rep.phones["numbers"] * rep.phones["fast_pct"]).sum()
                         / max(rep.phones["numbers"].sum(), 1))
            text += (f" Phone numbers are read with each country's numbering plan (phonenumbers) "
                     f"and stored in E.164 (+8613812345678); {fast:.0f}% were confirmed in the "
                     f"engine, the rest parsed one by one.")
        return text
    if s == "consistency":
        c = rep.consistency
        if c.empty:
            return "Not available: no text column to check for formats."
        bad = c[c["failed"] > 0].sort_values("failed", ascending=False)
        if bad.empty:
            return "Every checked column is written one way."
        lines = [f"{r.table}.{r.column}: {_n(r.failed)} values ({_p(r.failed_pct)})"
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
            return f"All {len(g)} relationships hold: every child row has its parent."
        lines = [f"{_n(r.orphans)} {r.relationship} ({_p(r.orphan_pct)})"
                 for r in bad.itertuples(index=False)]
        return "Broken links: " + "; ".join(lines) + ". Analyses leave these rows out of per-customer figures."
    if s == "outliers":
        o = rep.outliers
        k = rep.rules.get("outliers", {}).get("k", 3.5)
        method = (f"A value counts as an outlier when it is more than {k / MAD_CONSISTENCY:.1f} "
                  f"typical deviations (median absolute deviation) from the column's median -- on "
                  f"a log scale for money and counts, so it means about ten times more or less "
                  f"than usual.")
        if o.empty:
            return "Not available: no numeric column. " + method
        bad = o[o["outliers"] > 0].sort_values("outliers", ascending=False)
        if bad.empty:
            return "No column has outliers. " + method
        r = bad.iloc[0]
        return (method + f" The most affected is {r['table']}.{r['column']}: {_n(r['outliers'])} "
                f"values ({_p(r['outlier_pct'])}) outside {r['lower']:,.4g} to {r['upper']:,.4g}.")
    if s == "duplicates":
        dd = rep.duplicates
        if dd is None:
            return "Not available: needs a customers table with identifying columns."
        sm = dd.summary
        text = (f"{_n(sm['duplicate_pairs'])} pairs of customer records are judged the same person "
                f"(match probability at least {sm['threshold']:.0%}); they form clusters that "
                f"merge {_n(sm['records'])} records into {_n(sm['people'])} people. Each cluster's "
                f"smallest customer id is the proposed unified id (customer_key.csv).")
        if dd.sentences:
            text += " " + " ".join(dd.sentences[:4])
        return text
    if s == "quarantine":
        q = rep.quarantine
        if q.empty:
            return "No rows were set aside by validation."
        total = int(rep.quarantine_rows[["table", "row"]].drop_duplicates().shape[0])
        r = q.iloc[0]
        return (f"{_n(total)} rows were set aside because they break the data contract; the most "
                f"common reason is {r['check']} in {r['table']} ({_n(r['rows'])} rows). They are "
                f"listed by table, row, column and check in quarantine.csv, without their values.")
    if s == "fixes":
        f = rep.fixes()
        if f.empty:
            return "Nothing to fix."
        top = f.iloc[0]
        return (f"{len(f)} issues, ordered by the rows they affect. Start with {top['issue']} in "
                f"{_where(top['table'], top['column'])} ({_n(top['rows'])} rows): {top['fix']}")
    raise ValueError(f"unknown section {section!r}")
