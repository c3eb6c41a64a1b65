"""Duplicate customers: which records are the same person?

Entity resolution with Splink (Fellegi & Sunter 1969, "A Theory for Record
Linkage", JASA 64(328):1183-1210, as implemented by Splink 5 on DuckDB).
Each pair of records that shares a blocking key (same normalised phone,
same email, same surname and birth date, ...) is compared field by field;
each field's level of agreement (exact, close, different, missing) carries
a match weight ``log2(m / u)``, where ``m`` is how often true matches agree
at that level and ``u`` how often random pairs do. The summed weights, with
the prior odds that two random records match, give the pair's match
probability (Fellegi-Sunter, eq. 2; Splink's ``predict``).

- ``u`` is estimated by sampling random record pairs (almost all
  non-matches): ``estimate_u_using_random_sampling``;
- ``m`` by expectation maximisation within blocks of likely matches
  (``estimate_parameters_using_expectation_maximisation``), one session per
  training rule until every field is estimated; a level EM cannot reach
  keeps a prior from ``quality.yaml``;
- the prior probability that two random records match is estimated from
  deterministic rules (same phone and surname, ...) with an assumed recall,
  then (on data up to ``prior_refine_max_records``) re-estimated from the
  model itself: the sum of the blocked pairs' match probabilities over all
  pairs, the E-step of EM for this one parameter;
- two corrections keep the weights sane on small or clean data: every m is
  floored at ``m_floor`` (1%: even true matches disagree now and then, so one
  changed phone cannot veto a pair that agrees on everything else), and u is
  solved from the random-pair mixture ``p = prior * m + (1 - prior) * u``
  instead of taking ``p`` itself (which counts the duplicates among the
  random pairs when they are a noticeable share of all pairs).

Pairs at or above the threshold are joined into clusters (connected
components); the smallest customer_id of a cluster is its proposed unified
id -- the "customer 360" key.

Blocking keeps the work linear in the records: a rule that would compare
more pairs than ``block_pairs_per_record`` per record (a street name shared
by hundreds of records) is narrowed with postcode, city, surname, ... until
it fits (:func:`block_pairs`, ``_narrow_blocks``). Each EM session starts
from a copy of the model, because Splink narrows the model in place and
restores it only when training succeeds.

The page explains the weights in plain words (:meth:`CustomerDeduplicator.explain`:
"an identical phone number multiplies the odds that two records are the
same person by 45,000") and says, for any judged pair, which fields are the
same, close, different or missing (:meth:`CustomerDeduplicator.describe`).

It works with whatever identifying columns exist: ``name`` or
``first_name`` + ``last_name``, ``email``, ``phone``, ``address``, ``city``,
``postcode``, ``birth_date``, ``national_id`` -- comparisons and blocking
rules are built from the columns present and filled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
from collections.abc import Mapping, Sequence

import ibis
import ibis.expr.datatypes as dtypes
import ibis.expr.types as ir
import numpy as np
import pandas as pd

from crmlab import quality
from crmlab.sources import is_blank
from crmlab.exceptions import DataContractError, NoDataError

log = logging.getLogger(__name__)

# identifying roles and the canonical column each reads by default
ROLES = ("name", "first_name", "last_name", "email", "phone", "address", "city", "postcode",
         "birth_date", "national_id")

#: Records (with an id) below which there is no pair to compare.
MIN_RECORDS = 2

# plain names of the prepared fields, for the page
FIELD_LABELS = {
    "name": "name", "email": "email", "phone": "phone number", "birth_date": "birth date",
    "address": "address", "city": "city", "postcode": "postcode", "national_id": "national id",
}

_CJK = "[一-鿿]"


def _clean_text(col: ir.Value) -> ir.StringValue:
    s = col.cast("string").lower()
    s = s.re_replace(r"[\s,.;:#/\\_·•'’\"()\-]+", " ")
    return s.strip()


def _nullify(col: ir.StringValue) -> ir.StringValue:
    return ibis.ifelse(is_blank(col), ibis.null().cast("string"), col)


def _name_stage(name: ir.Value, titles: Sequence[str]) -> dict[str, ir.Value]:
    """First stage of :func:`_name_parts`: ``_nm_cjk`` (Chinese script),
    ``_nm_c`` (the name without spaces or punctuation, for Chinese names)
    and ``_nm_s`` (lower case, titles dropped, one space between words, for
    the others) -- each computed once per row, the Latin clean-up only on
    rows that need it."""
    raw = name.cast("string")
    cjk = raw.re_search(_CJK).fill_null(False)
    s = _clean_text(raw)
    if titles:
        s = s.re_replace(r"\b(" + "|".join(titles) + r")\b", " ")
    s = s.re_replace(r"\s+", " ").strip()
    c = raw.re_replace(r"[\s,.;:#/\\_·•'’\"()\-]+", "")
    none = ibis.null().cast("string")
    return {"_nm_cjk": cjk, "_nm_c": ibis.ifelse(cjk, c, none), "_nm_s": ibis.ifelse(cjk, none, s)}


def _name_split(t: ir.Table, compound: Sequence[str]) -> tuple[ir.Value, ir.Value]:
    """Second stage: (forename, surname) from the columns of :func:`_name_stage`."""
    c, s, cjk = t._nm_c, t._nm_s, t._nm_cjk
    two = quality._isin(c.substr(0, 2), list(compound)) & (c.length() > 2)
    sur_cjk = ibis.ifelse(two, c.substr(0, 2), c.substr(0, 1))
    fore_cjk = ibis.ifelse(two, c.substr(2), c.substr(1))
    space = s.find(" ")
    fore_lat = ibis.ifelse(space < 0, ibis.null().cast("string"), s.substr(0, space))
    sur_lat = s.re_extract(r"(\S+)$", 1)
    return ibis.ifelse(cjk, fore_cjk, fore_lat), ibis.ifelse(cjk, sur_cjk, sur_lat)


def _name_parts(name: ir.Value, titles: Sequence[str], compound: Sequence[str]):
    """(forename, surname) from a full name.

    Latin script: titles and suffixes dropped, first token = forename, last
    token = surname (``J. Smith`` -> ``j``, ``smith``). Chinese script: no
    spaces, the surname is the first character (or a listed compound
    surname) and the rest the given name (``张伟`` -> ``伟``, ``张``).
    """
    t = name.op().rel.to_expr() if isinstance(name, ir.Column) else None
    if t is None:
        t = ibis.memtable({"_n": []})
    staged = t.mutate(**_name_stage(name, titles)).view()
    fore, sur = _name_split(staged, compound)
    done = staged.mutate(_fore=fore, _sur=sur).view()
    return _nullify(done._fore), _nullify(done._sur)


@ibis.udf.scalar.builtin(name="crmlab_abbreviate", signature=((dtypes.string,), dtypes.string))
def _abbreviate_builtin(text):  # noqa: D103 - the DuckDB macro made by _abbreviate
    ...


def _abbreviate(t: ir.Table, words: ir.StringValue, table: Mapping[str, str]) -> ir.StringValue:
    """Replace whole words of space-separated text by their abbreviation
    (``street`` -> ``st``).

    On DuckDB one pass: a temporary macro splits the text into words and
    looks each up in a map (a regex per word costs a pass each, 30 passes
    over a million addresses); other engines use the regex per word."""
    if not table:
        return words
    try:
        backend = t._find_backend(use_default=True)
    except Exception:  # noqa: BLE001 - no backend to define a macro on
        backend = None
    if backend is not None and backend.name == "duckdb":
        def lit(x):
            return "'" + str(x).replace("'", "''") + "'"
        keys = ", ".join(lit(k) for k in table)
        vals = ", ".join(lit(v) for v in table.values())
        backend.raw_sql(
            "CREATE OR REPLACE TEMP MACRO crmlab_abbreviate(a) AS array_to_string(list_transform("
            f"string_split(a, ' '), lambda w: coalesce(map_extract_value(MAP([{keys}], [{vals}]), w), "
            "w)), ' ')")
        return _abbreviate_builtin(words)
    for long, short in table.items():
        words = words.re_replace(rf"\b{long}\b", short)
    return words


def prepare_customers(t: ir.Table, *, customer_id_col: str = "customer_id",
                      columns: Mapping[str, str] | None = None, rules: dict | None = None,
                      country_col: str | None = "country", default_region: str | None = None,
                      phones: ir.Table | None = None) -> ir.Table:
    """Normalise the identifying columns of a customers table, in the engine.

    Transforms a customers table (any subset of the roles in ``ROLES``,
    named by ``columns`` or canonically) into one row per record with::

        unique_id            the customer id
        forename, surname    from name (or first_name + last_name), lower case,
                             titles dropped; Chinese names split surname/given
        email                trimmed, lower case
        phone                E.164 (quality.normalise_phones), else its digits
        birth_date           parsed from any known format, as YYYY-MM-DD text
        address              lower case, punctuation to spaces, common words
                             abbreviated (street -> st)
        city, postcode, national_id   trimmed and case-folded

    Records without an id are left out. Only the fields whose source
    columns exist are produced. ``phones`` (the
    output of :func:`crmlab.quality.normalise_phones` with
    ``keep=[customer_id_col]``) saves parsing the phones a second time.

    Returns
    -------
    ibis.Table
    """
    rules = rules or quality.load_rules()
    cfg = rules["dedupe"]
    cols = {r: r for r in ROLES}
    cols.update(columns or {})
    have = {r: c for r, c in cols.items() if c in t.columns}
    if customer_id_col not in t.columns:
        raise DataContractError("customers table has no id column", table="customers",
                                column=customer_id_col, check="dedupe")
    # a record without an id (a spreadsheet's row of empty cells) is no
    # customer: validation quarantines it, and it is nobody's duplicate
    t = t.filter(~is_blank(t[customer_id_col]))
    # stage 1: every field cleaned once per row (each stage is a projection
    # of the one before, so a value used several times is computed once)
    titles = cfg.get("name_titles", [])
    first: dict[str, ir.Value] = {"unique_id": t[customer_id_col]}
    if "name" in have:
        first.update(_name_stage(t[have["name"]], titles))
    elif "first_name" in have or "last_name" in have:
        if "first_name" in have:
            f = _clean_text(t[have["first_name"]])
            space = f.find(" ")
            first["forename"] = ibis.ifelse(space < 0, f, f.substr(0, space))
        if "last_name" in have:
            first["surname"] = _clean_text(t[have["last_name"]]).re_replace(r"\s+", "")
    if "email" in have:
        first["email"] = t[have["email"]].cast("string").strip().lower()
    if "birth_date" in have:
        first["birth_date"] = quality._as_timestamp(t[have["birth_date"]], rules).date()
    if "address" in have:
        a = _clean_text(t[have["address"]]).re_replace(r"\s+", " ")
        first["address"] = _abbreviate(t, a, cfg.get("address_abbreviations", {})).strip()
    if "city" in have:
        first["city"] = _clean_text(t[have["city"]]).re_replace(r"\s+", " ").re_replace("市$", "")
    if "postcode" in have:
        first["postcode"] = t[have["postcode"]].cast("string").upper().re_replace(r"[\s\-]", "")
    if "national_id" in have:
        first["national_id"] = (t[have["national_id"]].cast("string").upper()
                                .re_replace(r"[^0-9A-Z]", ""))
    s1 = t.select(**first).view()
    # stage 2: names split, the email's user name
    second: dict[str, ir.Value] = {"unique_id": s1.unique_id}
    if "_nm_cjk" in s1.columns:
        second["forename"], second["surname"] = _name_split(s1, cfg.get("compound_surnames", []))
    for f in ("forename", "surname", "email", "birth_date", "address", "city", "postcode",
              "national_id"):
        if f in s1.columns:
            second[f] = s1[f]
    if "email" in s1.columns:
        at = s1.email.find("@")
        second["email_user"] = ibis.ifelse(at > 0, s1.email.substr(0, at), ibis.null().cast("string"))
    s2 = s1.select(**second).view()
    # stage 3: blanks and null tokens become null
    order = ["unique_id", "forename", "surname", "email", "email_user", "birth_date", "address",
             "city", "postcode", "national_id"]
    out = {c: (s2[c] if c in ("unique_id", "birth_date") else _nullify(s2[c]))
           for c in order if c in s2.columns}
    prepared = s2.select(**out)
    if "phone" in have:
        region = default_region or rules["phone"].get("default_region", "CN")
        src = t.select(_row=t[customer_id_col], _phone=t[have["phone"]],
                       **({"_country": t[country_col]} if country_col and country_col in t.columns
                          else {}))
        if phones is not None:
            ph = phones.select(_row=phones[customer_id_col], phone_e164=phones.phone_e164)
        else:
            ph = quality.normalise_phones(
                src, phone_col="_phone",
                country_col="_country" if "_country" in src.columns else None,
                default_region=region,
                fast_regions=rules["phone"].get("fast_regions", ["CN", "US"]), row_col="_row")
        digits = src.select(_r=src._row, _digits=src._phone.cast("string").re_replace(r"[^0-9]", ""))
        ph = ph.join(digits, ph._row == digits._r)
        ph = ph.select(_uid=ph._row, phone=ibis.coalesce(
            ph.phone_e164, ibis.ifelse(ph._digits.length() >= 6, ph._digits,
                                       ibis.null().cast("string"))))
        prepared = prepared.left_join(ph, prepared.unique_id == ph._uid).drop("_uid")
    return prepared


# --------------------------------------------------------------------------
# the Splink model built from the fields present
# --------------------------------------------------------------------------

def _m_prior(n_levels: int, prior: Mapping[str, float]) -> list[float]:
    """Prior m for the non-null levels: exact, k fuzzy levels, else."""
    if n_levels <= 1:
        return [1.0]
    fuzzy = n_levels - 2
    if fuzzy == 0:
        return [prior["exact"] + prior["fuzzy"], prior["else"]]
    return [prior["exact"]] + [prior["fuzzy"] / fuzzy] * fuzzy + [prior["else"]]


def _comparisons(fields: Sequence[str], prior: Mapping[str, float]):
    import splink.comparison_library as cl
    import splink.comparison_level_library as cll

    comps = []
    if "forename" in fields or "surname" in fields:
        levels = [cll.And(cll.NullLevel("forename"), cll.NullLevel("surname"))
                  if "forename" in fields and "surname" in fields
                  else cll.NullLevel("forename" if "forename" in fields else "surname")]
        if "forename" in fields and "surname" in fields:
            levels += [
                cll.And(cll.ExactMatchLevel("forename"), cll.ExactMatchLevel("surname"))
                .configure(label_for_charts="same name"),
                cll.ColumnsReversedLevel("forename", "surname", symmetrical=True)
                .configure(label_for_charts="first and last name swapped"),
                cll.And(cll.JaroWinklerLevel("forename", 0.88), cll.JaroWinklerLevel("surname", 0.88))
                .configure(label_for_charts="name with a typo"),
                cll.CustomLevel(
                    "damerau_levenshtein(concat(surname_l, coalesce(forename_l, '')), "
                    "concat(surname_r, coalesce(forename_r, ''))) <= 1",
                    label_for_charts="one character different"),
                cll.CustomLevel(
                    "surname_l = surname_r and substr(forename_l, 1, 1) = substr(forename_r, 1, 1)"
                    " and (length(forename_l) = 1 or length(forename_r) = 1)",
                    label_for_charts="first name abbreviated to its initial"),
                cll.ExactMatchLevel("surname").configure(label_for_charts="same surname only"),
                cll.ElseLevel(),
            ]
        else:
            col = "forename" if "forename" in fields else "surname"
            levels += [cll.ExactMatchLevel(col).configure(label_for_charts="same name"),
                       cll.JaroWinklerLevel(col, 0.88).configure(label_for_charts="name with a typo"),
                       cll.ElseLevel()]
        comps.append(cl.CustomComparison(levels, output_column_name="name"))
    if "email" in fields:
        comps.append(cl.CustomComparison([
            cll.NullLevel("email"),
            cll.ExactMatchLevel("email").configure(label_for_charts="same address"),
            cll.ExactMatchLevel("email_user").configure(label_for_charts="same user name"),
            cll.JaroWinklerLevel("email", 0.88).configure(label_for_charts="nearly the same"),
            cll.ElseLevel()], output_column_name="email"))
    if "phone" in fields:
        comps.append(cl.CustomComparison([
            cll.NullLevel("phone"),
            cll.ExactMatchLevel("phone").configure(label_for_charts="same number"),
            cll.CustomLevel("right(phone_l, 8) = right(phone_r, 8)",
                            label_for_charts="same last 8 digits"),
            cll.DamerauLevenshteinLevel("phone", 1).configure(label_for_charts="one digit off"),
            cll.ElseLevel()], output_column_name="phone"))
    if "birth_date" in fields:
        comps.append(cl.CustomComparison([
            cll.NullLevel("birth_date"),
            cll.ExactMatchLevel("birth_date").configure(label_for_charts="same date"),
            cll.CustomLevel("damerau_levenshtein(cast(birth_date_l as varchar), "
                            "cast(birth_date_r as varchar)) <= 1",
                            label_for_charts="one digit off"),
            cll.AbsoluteDateDifferenceLevel("birth_date", input_is_string=False, threshold=1,
                                            metric="year")
            .configure(label_for_charts="within a year"),
            cll.ElseLevel()], output_column_name="birth_date"))
    for f in ("address", "city"):
        if f in fields:
            comps.append(cl.CustomComparison([
                cll.NullLevel(f),
                cll.ExactMatchLevel(f).configure(label_for_charts="same"),
                cll.JaroWinklerLevel(f, 0.9).configure(label_for_charts="nearly the same"),
                cll.JaroWinklerLevel(f, 0.7).configure(label_for_charts="similar"),
                cll.ElseLevel()], output_column_name=f))
    for f in ("postcode", "national_id"):
        if f in fields:
            comps.append(cl.CustomComparison([
                cll.NullLevel(f),
                cll.ExactMatchLevel(f).configure(label_for_charts="same"),
                cll.DamerauLevenshteinLevel(f, 1).configure(label_for_charts="one character off"),
                cll.ElseLevel()], output_column_name=f))
    for c in comps:
        n = len([lv for lv in c.create_comparison_levels() if not getattr(lv, "is_null_level", False)])
        c.configure(m_probabilities=_m_prior(n, prior))
    return comps


# blocking rules, in order of preference: (fields used, splink rule args)
PREDICT_BLOCKS: list[tuple[str, ...]] = [
    ("phone",), ("email",), ("national_id",), ("surname", "birth_date"),
    ("forename", "surname", "city"), ("forename", "surname", "postcode"),
    ("surname", "postcode"), ("birth_date", "postcode"), ("address",),
]
# the SQL a field blocks on (phones: the last 8 digits, so a national and an
# international form of one number meet even when the country is unknown)
BLOCK_EXPR = {"phone": "right(phone, 8)"}
# the name alone blocks only when no narrower rule with the surname exists
NAME_ONLY_BLOCK = ("forename", "surname")
# EM sessions, in order, until every comparison is trained: the narrow
# identifiers first (few pairs, nearly all matches, so EM is quick and clear)
TRAIN_BLOCKS: list[tuple[str, ...]] = [
    ("phone",), ("email",), ("national_id",), ("surname", "birth_date"),
    ("forename", "surname"), ("address",), ("postcode",), ("birth_date",),
]
DETERMINISTIC_RULES: list[tuple[str, ...]] = [
    ("phone", "surname"), ("email", "surname"), ("national_id",),
    ("forename", "surname", "birth_date"), ("phone", "email"),
]
# which comparison a field belongs to
FIELD_COMPARISON = {"forename": "name", "surname": "name"}
# fields added, in this order, to a blocking rule that would compare too many
# pairs (a street name shared by hundreds of records) to narrow it
NARROWING_FIELDS: tuple[str, ...] = ("postcode", "city", "surname", "birth_date", "forename")


def block_pairs(data, blocks: Sequence[Sequence[str]]) -> list[int]:
    """Record pairs each blocking rule compares: ``sum n (n - 1) / 2`` over
    the groups of records that share its key (records with a null key field
    compare with nothing). ``data`` is the prepared records (pyarrow); the
    rules are counted in one query."""
    import duckdb

    if not blocks:
        return []
    parts = []
    for i, block in enumerate(blocks):
        cols = [BLOCK_EXPR.get(f, f) for f in block]
        where = " and ".join(f'"{f}" is not null' for f in block)
        parts.append(f"select {i} as rule, coalesce(sum(n * (n - 1) / 2), 0) as pairs from "
                     f"(select count(*) as n from _records where {where} group by "
                     f"{', '.join(cols)})")
    con = duckdb.connect()
    try:
        con.register("_records", data)
        got = dict(con.sql(" union all ".join(parts)).fetchall())
    finally:
        con.close()
    return [int(got.get(i, 0)) for i in range(len(blocks))]


def _narrow_blocks(data, blocks: list[tuple[str, ...]], fields: Sequence[str],
                   budget: float) -> list[tuple[str, ...]]:
    """Keep the work of blocking linear in the records: a rule whose pairs
    exceed ``budget`` is narrowed by the first fields of
    :data:`NARROWING_FIELDS` present (``address`` -> ``address & postcode``)
    until it fits, else dropped; rules that end up the same are merged."""
    rules = [tuple(b) for b in blocks]
    pairs = block_pairs(data, rules)
    extra = {r: [f for f in NARROWING_FIELDS if f in fields and f not in r] for r in rules}
    while True:
        wide = [i for i, n in enumerate(pairs) if n > budget and extra[rules[i]]]
        if not wide:
            break
        for i in wide:
            old = rules[i]
            rules[i] = old + (extra[old][0],)
            extra[rules[i]] = extra[old][1:]
        counted = block_pairs(data, [rules[i] for i in wide])
        for i, n in zip(wide, counted):
            pairs[i] = n
    out = []
    for r, n in zip(rules, pairs):
        if n <= budget and r not in out:
            out.append(r)
    return out or list(blocks[:1])


@contextlib.contextmanager
def _quiet_splink(level: int = logging.ERROR):
    """Splink's own progress and training notes are for its developers'
    consoles, not for a report page: raise its log level while it runs."""
    lg = logging.getLogger("splink")
    old = lg.level
    lg.setLevel(level)
    try:
        yield
    finally:
        lg.setLevel(old)


def _quietly(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _quiet_splink():
            return fn(*args, **kwargs)
    return wrapper


def _comparison_of(field: str) -> str:
    return FIELD_COMPARISON.get(field, field)


class CustomerDeduplicator:
    """Find duplicate customer records with a Splink model trained on the data.

    Parameters
    ----------
    threshold : float
        Match probability at or above which a pair is the same person.
    customer_id_col : str
    columns : mapping, optional
        Role -> column name for identifying columns not named canonically
        (e.g. ``{"phone": "mobile"}``).
    country_col : str
        ISO-2 country used to read national phone numbers.
    default_region : str, optional
        Numbering plan of phones without a country (default from the rules).
    max_pairs_u : float, optional
        Random pairs sampled to estimate ``u`` (default from the rules).
    em_max_pairs : float, optional
        Cap on pairs per EM session (default from the rules).
    deterministic_recall : float
        Assumed share of true matches the deterministic rules find, used to
        estimate the prior match probability.
    phones : ibis.Table, optional
        Phones already normalised (``quality.normalise_phones`` keeping the
        id column).
    rules : dict, optional
        Data-quality rules (``quality.load_rules()``).
    random_state : int

    Attributes
    ----------
    fields_ : list of str
        Prepared fields used.
    comparisons_ : list of str
    blocking_rules_ : list of str
    probability_two_random_records_match_ : float
    match_weights_ : DataFrame
        ``comparison, level, m, u, bayes_factor, match_weight`` from the
        trained model.
    trained_by_em_ : list of str
        Comparisons whose m came from EM (the others keep the prior).
    n_records_ : int
    linker_ : splink.Linker

    Examples
    --------
    >>> dd = CustomerDeduplicator(threshold=0.9, random_state=1).fit(customers)  # doctest: +SKIP
    >>> pairs, key = dd.predict(), dd.customer_key()  # doctest: +SKIP
    """

    def __init__(self, *, threshold: float = 0.9, customer_id_col: str = "customer_id",
                 columns: Mapping[str, str] | None = None, country_col: str = "country",
                 default_region: str | None = None, max_pairs_u: float | None = None,
                 em_max_pairs: float | None = None, deterministic_recall: float = 0.8,
                 phones: ir.Table | None = None, rules: dict | None = None,
                 random_state: int = 42):
        self.threshold = threshold
        self.customer_id_col = customer_id_col
        self.columns = columns
        self.country_col = country_col
        self.default_region = default_region
        self.max_pairs_u = max_pairs_u
        self.em_max_pairs = em_max_pairs
        self.deterministic_recall = deterministic_recall
        self.phones = phones
        self.rules = rules
        self.random_state = random_state

    # -- fitting -------------------------------------------------------
    @_quietly
    def fit(self, customers: ir.Table | pd.DataFrame) -> "CustomerDeduplicator":
        """Prepare the records, build comparisons and blocking from the fields
        present, and estimate the model (u by sampling, m by EM).

        Parameters
        ----------
        customers : ibis.Table or DataFrame
            One row per customer record, with ``customer_id_col`` and any
            identifying columns.

        Returns
        -------
        self
        """
        from splink import DuckDBAPI, Linker, SettingsCreator, block_on

        rules = self.rules or quality.load_rules()
        cfg = rules["dedupe"]
        if isinstance(customers, pd.DataFrame):
            customers = ibis.memtable(customers)
        prepared = prepare_customers(customers, customer_id_col=self.customer_id_col,
                                     columns=self.columns, rules=rules,
                                     country_col=self.country_col,
                                     default_region=self.default_region, phones=self.phones)
        data = prepared.to_pyarrow()
        self.n_records_ = data.num_rows
        if self.n_records_ < MIN_RECORDS:
            raise NoDataError(f"duplicate customers need at least {MIN_RECORDS} customer records "
                              f"with an id; customers has {self.n_records_}")
        fields = [c for c in data.column_names if c not in ("unique_id", "email_user")
                  and data.column(c).null_count < data.num_rows]
        self.fields_ = fields
        if not fields:
            raise DataContractError("customers has no identifying column to compare "
                                    "(name, email, phone, address, birth_date, ...)",
                                    table="customers", check="dedupe")
        data = data.select(["unique_id", *fields, *(["email_user"] if "email" in fields else [])])
        comps = _comparisons(fields, cfg["prior_m"])
        self.comparisons_ = [c.create_output_column_name() for c in comps]

        blocks = [b for b in PREDICT_BLOCKS if set(b) <= set(fields)]
        # records that lack (or changed) their phone or email still meet by
        # name: by the name alone when no narrower name rule exists
        if set(NAME_ONLY_BLOCK) <= set(fields) and not any(
                {"surname"} & set(b) for b in blocks):
            blocks.append(NAME_ONLY_BLOCK)
        if not blocks:
            blocks = [(f,) for f in fields]
        budget = max(float(cfg.get("block_min_pairs", 1e6)),
                     float(cfg.get("block_pairs_per_record", 2.0)) * data.num_rows)
        blocks = _narrow_blocks(data, blocks, fields, budget)
        self.blocking_rules_ = [" & ".join(b) for b in blocks]

        db = DuckDBAPI()
        sdf = db.register(data, table_name="__crmlab_customers")
        settings = SettingsCreator(
            link_type="dedupe_only",
            unique_id_column_name="unique_id",
            comparisons=comps,
            blocking_rules_to_generate_predictions=[
                block_on(*[BLOCK_EXPR.get(f, f) for f in b]) for b in blocks],
            # EM in a block where nearly every pair is a match drives the m of
            # rare levels towards 0; Splink 5 refuses an m of exactly 0, so stop
            # early (the estimates have converged long before)
            max_iterations=int(cfg.get("em_max_iterations", 10)),
            em_convergence=float(cfg.get("em_convergence", 1e-3)),
            retain_matching_columns=False,
            retain_intermediate_calculation_columns=True,   # gamma_*: why a pair matched
        )
        linker = Linker(sdf, settings, log_level=None)
        n = self.n_records_
        # prior: deterministic matches / all pairs, corrected for their recall
        det = [block_on(*r) for r in DETERMINISTIC_RULES if set(r) <= set(fields)]
        try:
            if det and n > 1:
                linker.training.estimate_probability_two_random_records_match(
                    det, recall=self.deterministic_recall)
        except Exception as exc:  # too few pairs to estimate: keep the default
            log.warning("prior match probability not estimated (%s)", type(exc).__name__)
        # no deterministic match at all (data without duplicates): a prior of
        # 0 would be a log of zero in every later step; one pair in all pairs
        # is the smallest prior the data can support
        settings_obj = linker._settings_obj
        prior = settings_obj._probability_two_random_records_match
        floor = 1.0 / max(n * (n - 1) / 2, 1.0)
        if prior is None or not prior > floor:
            settings_obj._probability_two_random_records_match = min(floor, 0.5)
        max_u = float(self.max_pairs_u or cfg.get("max_pairs_u", 2e6))
        max_u = min(max_u, max(n * (n - 1) / 2, 1.0))
        # the sample is small (max_u pairs): one pass per comparison, no probing
        linker.training.estimate_u_using_random_sampling(
            max_pairs=max_u, seed=self.random_state, num_chunks=1, min_count_per_level=None)
        self.linker_ = linker
        self._db = db
        # a level never seen among the sampled random pairs: u is at most
        # about one in the number of pairs sampled (not Splink's generic default)
        for _, lv in self._levels():
            if lv._u_probability is None and not lv._is_else_level:
                lv.u_probability = 1.0 / max_u
        # EM: each session trains every comparison not in its blocking rule
        trained: set[str] = set()
        em_cap = self.em_max_pairs or cfg.get("em_max_pairs")
        for b in TRAIN_BLOCKS:
            if not set(b) <= set(fields):
                continue
            blocked = {_comparison_of(f) for f in b}
            todo = set(self.comparisons_) - trained - blocked
            if not todo:
                continue
            if self._em_session(linker, block_on(*b), em_cap if n > 20000 else None, cfg):
                trained |= set(self.comparisons_) - blocked
            if trained >= set(self.comparisons_):
                break
        self.trained_by_em_ = sorted(trained)
        self._floor_m(float(cfg.get("m_floor", 0.01)))
        sampled_u = [(lv, lv.u_probability) for _, lv in self._levels()]
        self._correct_u(float(linker._settings_obj._probability_two_random_records_match), max_u)
        if n <= int(cfg.get("prior_refine_max_records", 200000)):
            self._refine_prior(sampled_u, max_u, int(cfg.get("prior_refine_iterations", 2)))
        self._db = db
        self.match_weights_ = self._weights()
        self.probability_two_random_records_match_ = float(
            linker._settings_obj._probability_two_random_records_match)
        self._predictions = None
        return self

    @staticmethod
    def _em_session(linker, rule, max_pairs, cfg) -> bool:
        """One EM session; True when it trained.

        In a block where matches and non-matches are perfectly separated (as
        in clean synthetic data), EM drives the m of the levels only
        non-matches reach towards 0, and Splink 5 refuses an m below 1e-300.
        The session is then rerun with fewer iterations, down to a single
        one: the expected agreement rates among the pairs the prior model
        already believes are matches (m "from the expectation of the
        matches" rather than the converged EM).

        Splink's session narrows the linker's own model (it drops the
        comparisons its blocking rule uses and sets a blocking-adjusted
        prior) and restores it only when training succeeds, so the model is
        copied before each attempt and put back after a failed one."""
        settings = linker._settings_obj
        original = settings.training_settings
        model = settings.core_model_settings.copy()
        try:
            for iters in dict.fromkeys([original.max_iterations, 3, 1]):
                settings.training_settings = dataclasses.replace(original, max_iterations=iters)
                try:
                    linker.training.estimate_parameters_using_expectation_maximisation(
                        rule, estimate_without_term_frequencies=True,
                        max_pairs=float(max_pairs) if max_pairs else None)
                    return True
                except ValueError as exc:
                    settings.core_model_settings = model.copy()
                    if "m_probability" not in str(exc) and "u_probability" not in str(exc):
                        raise
            return False
        except Exception as exc:  # e.g. no pairs in this block: try the next rule
            settings.core_model_settings = model
            log.info("EM session skipped (%s)", type(exc).__name__)
            return False
        finally:
            settings.training_settings = original

    def _floor_m(self, floor: float) -> None:
        """Keep every m at least ``floor``, renormalised per comparison.

        When matches and non-matches separate perfectly in the training
        blocks, EM sends the m of the disagreeing levels towards 0 (weights
        of -190 were seen on synthetic data), so one changed phone number
        would veto a pair that agrees on everything else. Even true matches
        disagree now and then (typos, a new number, a move): the floor says
        so, and bounds a disagreement's weight at about log2(floor / u).
        """
        by_comp: dict[str, list] = {}
        for name, lv in self._levels():
            by_comp.setdefault(name, []).append(lv)
        for levels in by_comp.values():
            ms = [lv.m_probability for lv in levels]
            if any(m is None for m in ms):
                continue
            new = [max(m, floor) for m in ms]
            total = sum(new)
            for lv, m in zip(levels, new):
                lv.m_probability = m / total

    def _correct_u(self, prior: float, max_u: float) -> None:
        """Remove the true matches from the random-pair agreement rates.

        Random pairs are a mixture: the share agreeing at a level is
        ``p = prior * m + (1 - prior) * u``. Splink's sampling takes ``p`` for
        ``u``, which is right when matches are rare among all pairs (large
        data) and overstates ``u`` of the agreeing levels in small data,
        where a few hundred records hold dozens of duplicate pairs. Solving
        the mixture gives ``u = (p - prior * m) / (1 - prior)``, floored at
        one in the pairs sampled and renormalised per comparison.
        """
        if not 0 < prior < 1:
            return
        by_comp: dict[str, list] = {}
        for name, lv in self._levels():
            by_comp.setdefault(name, []).append(lv)
        floor = 1.0 / max_u
        for levels in by_comp.values():
            if any(lv.u_probability is None or lv.m_probability is None for lv in levels):
                continue
            new = [max((lv.u_probability - prior * lv.m_probability) / (1 - prior), floor)
                   for lv in levels]
            total = sum(new)
            for lv, u in zip(levels, new):
                lv.u_probability = u / total

    def _refine_prior(self, sampled_u, max_u: float, iterations: int) -> None:
        """Re-estimate the prior match probability from the model itself.

        The deterministic estimate rests on an assumed recall of its rules.
        Given m and u, the expected number of matches is the sum of the match
        probabilities of the blocked pairs (pairs outside every block are
        taken as non-matches), so ``prior = sum(p) / (n (n - 1) / 2)``: the
        E-step of EM for this one parameter. Each round re-solves u for the
        new prior (:meth:`_correct_u`). Only worth it -- and only run -- when
        duplicates are a noticeable share of all pairs (small data).
        """
        n = self.n_records_
        total = n * (n - 1) / 2
        settings = self.linker_._settings_obj
        for _ in range(iterations):
            p = self.linker_.inference.predict(warning_mode="never")
            s = self._db.duckdb_con.sql(
                f"select coalesce(sum(match_probability), 0) from {p.physical_name}"
            ).fetchall()[0][0]
            p.drop_table_from_database_and_remove_from_cache()
            prior = min(max(float(s) / total, 1.0 / total), 0.5)
            settings._probability_two_random_records_match = prior
            for lv, u in sampled_u:
                lv.u_probability = u
            self._correct_u(prior, max_u)

    def _levels(self):
        """(comparison name, level) for every non-null level of the model."""
        for comp in self.linker_._settings_obj.comparisons:
            for lv in comp.comparison_levels:
                if not lv.is_null_level:
                    yield comp.output_column_name, lv

    def _weights(self) -> pd.DataFrame:
        """The m, u and match weight of every level, as the model uses them."""
        rows = []
        for name, lv in self._levels():
            m, u, w = lv.m_probability, lv.u_probability, lv._match_weight
            rows.append([name, lv.label_for_charts, m, u, 2.0 ** w if w is not None else None, w])
        return pd.DataFrame(rows, columns=["comparison", "level", "m", "u", "bayes_factor",
                                           "match_weight"])

    # -- scoring -------------------------------------------------------
    def _check_fitted(self):
        if not hasattr(self, "linker_"):
            raise RuntimeError("call fit() first")

    @_quietly
    def _predict_all(self):
        if self._predictions is None:
            self._predictions = self.linker_.inference.predict(
                threshold_match_probability=self.threshold, warning_mode="never")
        return self._predictions

    @_quietly
    def predict(self) -> pd.DataFrame:
        """Pairs of the fitted records judged the same person.

        Returns
        -------
        DataFrame
            ``customer_id_a, customer_id_b, match_probability, match_weight``
            and one ``mw_<comparison>`` per comparison (the match weight the
            pair got from that field, 0 when missing; see :meth:`describe`),
            with ``customer_id_a < customer_id_b``, one row per pair at or
            above the threshold, most likely first.
        """
        self._check_fitted()
        p = self._predict_all()
        parts = "".join(f", mw_{c}" for c in self.comparisons_)
        df = self._db.duckdb_con.sql(
            f"select least(unique_id_l, unique_id_r) as customer_id_a, "
            f"greatest(unique_id_l, unique_id_r) as customer_id_b, match_probability, "
            f"match_weight{parts} from {p.physical_name} "
            f"order by match_probability desc, customer_id_a, customer_id_b").df()
        return df.reset_index(drop=True)

    def describe(self, pairs: pd.DataFrame) -> list[str]:
        """What agrees and what differs in each pair, in a few words.

        Takes rows of :meth:`predict` (with their ``mw_`` columns); returns
        one text per row such as ``"same: phone, email, birth date; close:
        name (typo); different: city; one lacks: address"``
        (within each group, strongest evidence first). A field's level is
        read back from the weight it contributed; levels that share a
        weight are named together.
        """
        self._check_fitted()
        levels: dict[str, list[tuple[float, str, str]]] = {}
        for comp in self.linker_._settings_obj.comparisons:
            non_null = [lv for lv in comp.comparison_levels if not lv.is_null_level]
            for k, lv in enumerate(non_null):
                kind = "same" if k == 0 else "different" if lv._is_else_level else "close"
                levels.setdefault(comp.output_column_name, []).append(
                    (float(lv._match_weight or 0.0), kind, str(lv.label_for_charts)))
        out = []
        for _, row in pairs.iterrows():
            groups: dict[str, list[tuple[float, str]]] = {"same": [], "close": [],
                                                          "different": [], "missing": []}
            for name in self.comparisons_:
                col = f"mw_{name}"
                if col not in row or pd.isna(row[col]):
                    continue
                w = float(row[col])
                field = SHORT_FIELDS.get(name, FIELD_LABELS.get(name, name.replace("_", " ")))
                hits = [(kind, label) for lw, kind, label in levels.get(name, [])
                        if abs(lw - w) < 1e-9]
                if not hits or (w == 0.0 and not any(abs(lw) < 1e-12 for lw, *_ in levels[name])):
                    groups["missing"].append((0.0, field))
                elif hits[0][0] == "close":
                    detail = " or ".join(dict.fromkeys(SHORT_LEVELS.get(label, label)
                                                       for _, label in hits))
                    groups["close"].append((w, f"{field} ({detail})"))
                else:
                    groups[hits[0][0]].append((w, field))
            words = {"same": "same", "close": "close", "different": "different",
                     "missing": "one lacks"}
            parts = [f"{words[kind]}: " + ", ".join(t for _, t in sorted(items, key=lambda x: -x[0]))
                     for kind, items in groups.items() if items]
            out.append("; ".join(parts))
        return out

    @_quietly
    def customer_key(self) -> pd.DataFrame:
        """The proposed unified customer id of every fitted record.

        Clusters are the connected components of the matched pairs; the
        unified id is the smallest customer_id in the cluster (a record
        without a match keeps its own id).

        Returns
        -------
        DataFrame
            ``customer_id, unified_id, cluster_size``, one row per record.
        """
        self._check_fitted()
        p = self._predict_all()
        clusters = self.linker_.clustering.cluster_pairwise_predictions_at_threshold(
            p, threshold_match_probability=self.threshold)
        df = self._db.duckdb_con.sql(
            f"select unique_id as customer_id, "
            f"min(unique_id) over (partition by cluster_id) as unified_id, "
            f"count(*) over (partition by cluster_id) as cluster_size "
            f"from {clusters.physical_name} order by customer_id").df()
        return df.reset_index(drop=True)

    # -- explanation ---------------------------------------------------
    def explain(self) -> list[str]:
        """What the trained model learned, in plain words.

        Up to four sentences: the prior (how often two random records are
        the same person); how much an identical value of each field
        multiplies the odds of a match, strongest first; the strongest
        partial agreements (a typo, a reformatted phone, ...); and how much
        a different value divides them. The factor of a level is its Bayes
        factor ``m / u`` (Fellegi & Sunter 1969), its match weight the
        log2 of that.
        """
        self._check_fitted()
        w = self.match_weights_.dropna(subset=["bayes_factor"])
        out = []
        prior = self.probability_two_random_records_match_
        if prior and prior > 0:
            out.append(f"Before any field is compared, two customer records picked at random are "
                       f"the same person about once in {_round_big(1 / prior)} pairs.")
        label = {c: FIELD_LABELS.get(c, c.replace("_", " ")) for c in w["comparison"].unique()}
        tops = (w.groupby("comparison", sort=False).head(1)
                .sort_values("bayes_factor", ascending=False))
        tops = tops[tops["bayes_factor"] > 1]
        if len(tops):
            first, rest = tops.iloc[0], tops.iloc[1:]
            s = (f"An identical {label[first.comparison]} multiplies the odds that two records are "
                 f"the same person by {_times(first.bayes_factor, 'by')}")
            if len(rest):
                s += "; an identical " + ", ".join(
                    f"{label[r.comparison]} by {_times(r.bayes_factor, 'by')}"
                    for r in rest.itertuples(index=False))
            out.append(s + ".")
        pos = w.groupby("comparison", sort=False).cumcount()
        size = w.groupby("comparison", sort=False)["level"].transform("size")
        inner = w[(pos > 0) & (pos < size - 1) & (w["bayes_factor"] >= 10)]
        inner = inner.sort_values("bayes_factor", ascending=False)
        if len(inner):
            out.append("Close calls count too: " + ", ".join(
                f"{_level_phrase(r.level, label[r.comparison])} by {_times(r.bayes_factor, 'by')}"
                for r in inner.head(3).itertuples(index=False)) + ".")
        lasts = (w.groupby("comparison", sort=False).tail(1)
                 .sort_values("bayes_factor", ascending=True))
        lasts = lasts[lasts["bayes_factor"] < 1]
        if len(lasts):
            worst = lasts.iloc[0]
            s = (f"A different {label[worst.comparison]} divides the odds by "
                 f"{_times(1 / worst.bayes_factor, 'by')}")
            if len(lasts) > 1:
                s += "; a different " + ", ".join(
                    f"{label[r.comparison]} by {_times(1 / r.bayes_factor, 'by')}"
                    for r in lasts.iloc[1:3].itertuples(index=False))
            out.append(s + ".")
        return out


def _round_big(x: float) -> str:
    if x >= 100:
        digits = int(math.floor(math.log10(x))) - 1
        x = round(x, -digits)
    return f"{x:,.0f}"


def _times(bf: float, style: str = "times") -> str:
    """``"20,000 times"`` (or ``"20,000"`` for "multiplies ... by")."""
    text = _round_big(bf) if bf >= 10 else f"{bf:.1f}"
    return text if style == "by" else f"{text} times"


# short words for a level of agreement and a field, for the "why" of a pair
SHORT_LEVELS: dict[str, str] = {
    "name with a typo": "typo", "one character different": "1 character",
    "first and last name swapped": "swapped", "first name abbreviated to its initial": "initial",
    "same surname only": "surname only", "same user name": "same user name",
    "same last 8 digits": "last 8 digits", "nearly the same": "nearly", "similar": "similar",
    "one digit off": "1 digit off", "one character off": "1 character off",
    "within a year": "within a year",
}
SHORT_FIELDS: dict[str, str] = {"phone": "phone", "birth_date": "birth date",
                                "national_id": "national id"}

# a comparison level (its chart label) as the subject of a sentence
LEVEL_PHRASES: dict[str, str] = {
    "same user name": "the same user name before the @",
    "same last 8 digits": "the same last 8 digits",
    "one digit off": "a {field} one digit off",
    "one character off": "a {field} one character off",
    "nearly the same": "a nearly identical {field}",
    "similar": "a similar {field}",
    "within a year": "a {field} within a year",
    "first and last name swapped": "swapped first and last names",
    "name with a typo": "a name with a typo",
    "one character different": "a name one character different",
    "first name abbreviated to its initial": "a first name cut to its initial",
    "same surname only": "the same surname alone",
}


def _level_phrase(level: str, field: str) -> str:
    """A comparison level as the subject of a sentence (:data:`LEVEL_PHRASES`)."""
    return LEVEL_PHRASES.get(str(level), "{field}: " + str(level)).format(field=field)


# --------------------------------------------------------------------------
# one call for the report
# --------------------------------------------------------------------------

class DedupeResult:
    """What the duplicates section shows and exports.

    Attributes
    ----------
    pairs : DataFrame
        ``customer_id_a, customer_id_b, match_probability`` (duplicates.csv).
    customer_key : DataFrame
        ``customer_id, unified_id`` (customer_key.csv).
    weights : DataFrame
        ``comparison, level, m, u, bayes_factor, match_weight``.
    sentences : list of str
        The match weights in plain words.
    summary : dict
        ``records, people, duplicate_records, duplicate_pairs,
        duplicate_rate, largest_cluster, threshold, fields``.
    """

    def __init__(self, pairs, customer_key, weights, sentences, summary, model=None):
        self.pairs, self.customer_key, self.weights = pairs, customer_key, weights
        self.sentences, self.summary, self.model = sentences, summary, model

    def __repr__(self) -> str:
        s = self.summary
        return (f"DedupeResult({s['duplicate_pairs']} pairs, {s['duplicate_records']} of "
                f"{s['records']} records merge into others)")


def find_duplicates(customers: ir.Table | pd.DataFrame, *, threshold: float | None = None,
                    customer_id_col: str = "customer_id", columns: Mapping[str, str] | None = None,
                    rules: dict | None = None, random_state: int = 42, **kwargs) -> DedupeResult:
    """Fit a :class:`CustomerDeduplicator` and return pairs, key and weights.

    Transforms a customers table (one row per record) into the duplicate
    pairs (one row per pair judged a match), the customer key (one row per
    record, with its unified id) and the model's weights in plain words.

    Parameters
    ----------
    customers : ibis.Table or DataFrame
    threshold : float, optional
        Default ``rules["dedupe"]["threshold"]`` (0.9).
    customer_id_col, columns, rules, random_state, **kwargs
        Passed to :class:`CustomerDeduplicator`.

    Returns
    -------
    DedupeResult
    """
    rules = rules or quality.load_rules()
    thr = rules["dedupe"]["threshold"] if threshold is None else threshold
    model = CustomerDeduplicator(threshold=thr, customer_id_col=customer_id_col, columns=columns,
                                 rules=rules, random_state=random_state, **kwargs).fit(customers)
    pairs = model.predict()
    key = model.customer_key()
    n = len(key)
    people = int(key["unified_id"].nunique()) if n else 0
    summary = {
        "records": n, "people": people, "duplicate_records": n - people,
        "duplicate_pairs": int(len(pairs)),
        "duplicate_rate": (n - people) / n if n else 0.0,
        "largest_cluster": int(key["cluster_size"].max()) if n else 0,
        "threshold": thr, "fields": model.fields_,
    }
    return DedupeResult(pairs[["customer_id_a", "customer_id_b", "match_probability"]],
                        key[["customer_id", "unified_id"]], model.match_weights_,
                        model.explain(), summary, model)


def pair_metrics(predicted: pd.DataFrame, truth: pd.DataFrame, *, closure: bool = True) -> dict:
    """Precision and recall of predicted duplicate pairs against known ones.

    Both frames hold ``customer_id_a, customer_id_b``. With ``closure`` the
    pairs are compared as clusters: every pair within a connected component
    counts (so a person entered three times gives three pairs on both sides,
    whichever two pairs were listed).

    Returns
    -------
    dict
        ``precision, recall, true_pairs, predicted_pairs, correct``.
    """
    def as_set(df):
        pairs = {(min(a, b), max(a, b)) for a, b in zip(df["customer_id_a"], df["customer_id_b"])}
        return _closure(pairs) if closure else pairs

    p, t = as_set(predicted), as_set(truth)
    correct = len(p & t)
    return {"precision": correct / len(p) if p else 1.0,
            "recall": correct / len(t) if t else 1.0,
            "true_pairs": len(t), "predicted_pairs": len(p), "correct": correct}


def _closure(pairs: set) -> set:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not pairs:
        return set()
    nodes = sorted({x for p in pairs for x in p})
    idx = {v: i for i, v in enumerate(nodes)}
    a = np.array([idx[p[0]] for p in pairs])
    b = np.array([idx[p[1]] for p in pairs])
    g = coo_matrix((np.ones(len(a)), (a, b)), shape=(len(nodes), len(nodes)))
    _, label = connected_components(g, directed=False)
    groups: dict[int, list] = {}
    for v, lab in zip(nodes, label):
        groups.setdefault(lab, []).append(v)
    out = set()
    for members in groups.values():
        members.sort()
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                out.add((members[i], members[j]))
    return out
