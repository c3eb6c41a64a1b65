"""The data contract, written once.

Every table and column crmlab understands is declared here, with its logical
type, whether it is required, its primary key, its personal-data (PII) class,
its domain and its business limits. Everything else reads this module:
``sources`` builds the typed views, the pandera schemas and the quarantine
predicates from it; ``privacy`` masks by :data:`PII_CLASSES`; ``quality``
explains quarantine checks with :data:`CHECKS`.

Only ``orders(customer_id, order_date, amount)`` is required of a source.
Every other table is optional; when a source has one, the columns marked
``required`` are the ones without which that table means nothing (its
keys), and a source that lacks them is refused before anything runs.

Logical types
-------------
``id``        an identifier; keeps its source type (int64 or string) but the
              same id (``customer_id`` ...) has one type in every table
``string``    free text
``timestamp`` a point in time, naive, in the source's timezone
``date``      a calendar day
``float``, ``int``, ``bool``
``category``  a string from a fixed domain, normalised (trimmed, case-folded,
              mapped through :data:`VALUE_MAPS` and the source mapping)

Business rules are data: :data:`LIMITS`, :data:`VALUE_MAPS` and
:data:`NULL_TOKENS` are module-level dicts that a source mapping can
override (``limits:`` and ``values:``), never ``if`` ladders.

Examples
--------
>>> column("orders", "amount").type
'float'
>>> required_columns("orders")
('customer_id', 'order_date', 'amount')
>>> pii_columns("customers")["email"]
'email'
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Mapping

import ibis.expr.datatypes as idt

#: Personal-data classes; ``crmlab.privacy`` masks a column by its class.
PII_CLASSES: tuple[str, ...] = ("name", "email", "phone", "national_id", "address", "birth_date")

#: Logical type -> ibis dtype of the typed column (ids: see :func:`ibis_dtype`).
LOGICAL_TYPES: dict[str, idt.DataType | None] = {
    "id": None,
    "string": idt.string,
    "timestamp": idt.timestamp,
    "date": idt.date,
    "float": idt.float64,
    "int": idt.int64,
    "bool": idt.boolean,
    "category": idt.string,
}

#: Quarantine checks: name -> what it means, in words a stakeholder reads.
CHECKS: dict[str, str] = {
    "not_null": "a required value is missing",
    "parse_date": "a date that cannot be read",
    "parse_number": "a number that cannot be read",
    "negative_amount": "a negative amount",
    "absurd_amount": "an amount above the plausible maximum",
    "future_date": "a date after the data was extracted",
    "date_out_of_range": "a date before the plausible minimum",
    "duplicate_key": "a repeated primary key (the first row is kept)",
    "out_of_domain": "a value outside the allowed list",
    "out_of_range": "a number outside its allowed range",
}


@dataclass(frozen=True)
class Column:
    """One column of the contract.

    Parameters
    ----------
    name : str
        Canonical name.
    type : str
        Logical type, a key of :data:`LOGICAL_TYPES`.
    required : bool
        Required whenever its table is present.
    pii : str or None
        Personal-data class, one of :data:`PII_CLASSES`.
    domain : tuple of str or None
        Allowed values of a ``category`` column (after normalisation).
    description : str
    """

    name: str
    type: str
    required: bool = False
    pii: str | None = None
    domain: tuple[str, ...] | None = None
    description: str = ""

    def __post_init__(self):
        if self.type not in LOGICAL_TYPES:
            raise ValueError(f"column {self.name}: unknown logical type {self.type!r}")
        if self.pii is not None and self.pii not in PII_CLASSES:
            raise ValueError(f"column {self.name}: unknown PII class {self.pii!r}")
        if (self.type == "category") != (self.domain is not None):
            raise ValueError(f"column {self.name}: a domain goes with type 'category'")


@dataclass(frozen=True)
class Table:
    """One table of the contract.

    Parameters
    ----------
    name : str
    columns : dict of str to Column
    key : tuple of str
        Primary key; repeated keys are quarantined (the first row is kept).
    order : tuple of str
        Row order where a database gives none (PostgreSQL): the key, else
        these columns.
    required : bool
        Whether a source must have this table.
    """

    name: str
    columns: dict[str, Column]
    key: tuple[str, ...] = ()
    order: tuple[str, ...] = ()
    required: bool = False
    description: str = ""

    @property
    def required_columns(self) -> tuple[str, ...]:
        return tuple(c for c, col in self.columns.items() if col.required)

    @property
    def row_order(self) -> tuple[str, ...]:
        return self.key or self.order or self.required_columns


def _table(name: str, columns: list[Column], **kw: Any) -> Table:
    return Table(name, {c.name: c for c in columns}, **kw)


C = Column
TABLES: dict[str, Table] = {t.name: t for t in [
    _table("customers", [
        C("customer_id", "id", required=True),
        C("name", "string", pii="name", description="full name (or first_name + last_name)"),
        C("first_name", "string", pii="name"),
        C("last_name", "string", pii="name"),
        C("email", "string", pii="email"),
        C("phone", "string", pii="phone"),
        C("gender", "string"),
        C("birth_date", "date", pii="birth_date"),
        C("address", "string", pii="address"),
        C("city", "string"),
        C("postcode", "string", pii="address"),
        C("region", "string"),
        C("country", "string"),
        C("national_id", "string", pii="national_id"),
        C("signup_date", "date"),
        C("acquisition_channel", "string"),
        C("company", "string"),
        C("industry", "string"),
    ], key=("customer_id",), description="one row per customer"),
    _table("orders", [
        C("order_id", "id"),
        C("customer_id", "id", required=True),
        C("order_date", "timestamp", required=True),
        C("amount", "float", required=True, description="order value in the source currency"),
        C("channel", "string"),
        C("status", "category", domain=("paid", "refunded", "cancelled")),
        C("discount", "float"),
        C("currency", "string"),
        C("quantity", "int"),
    ], key=("order_id",), required=True, description="one row per order"),
    _table("order_lines", [
        C("order_id", "id", required=True),
        C("product_id", "id", required=True),
        C("category", "string"),
        C("quantity", "int"),
        C("unit_price", "float"),
    ], order=("order_id", "product_id"), description="one row per product in an order"),
    _table("products", [
        C("product_id", "id", required=True),
        C("name", "string"),
        C("category", "string"),
        C("unit_cost", "float"),
        C("list_price", "float"),
    ], key=("product_id",), description="one row per product"),
    _table("interactions", [
        C("customer_id", "id", required=True),
        C("ts", "timestamp", required=True),
        C("type", "string", required=True, description="web visit, app login, email open, call, ..."),
        C("channel", "string"),
    ], order=("customer_id", "ts"), description="one row per touch point"),
    _table("tickets", [
        C("ticket_id", "id", required=True),
        C("customer_id", "id", required=True),
        C("opened_at", "timestamp", required=True),
        C("channel", "string"),
        C("topic", "string"),
        C("satisfaction", "int", description="1-5"),
        C("nps", "int", description="0-10"),
        C("text", "string"),
        C("resolved_at", "timestamp"),
    ], key=("ticket_id",), description="one row per support ticket"),
    _table("campaigns", [
        C("campaign_id", "id", required=True),
        C("name", "string"),
        C("channel", "string"),
        C("start_date", "date"),
        C("end_date", "date"),
        C("cost", "float"),
        C("cost_per_contact", "float"),
        C("planned_treatment_share", "float"),
    ], key=("campaign_id",), description="one row per campaign"),
    _table("campaign_contacts", [
        C("campaign_id", "id", required=True),
        C("customer_id", "id", required=True),
        C("group", "category", required=True, domain=("treatment", "control")),
        C("sent_at", "timestamp"),
        C("delivered", "bool"),
        C("opened", "bool"),
        C("clicked", "bool"),
        C("converted", "bool"),
        C("revenue", "float"),
    ], key=("campaign_id", "customer_id"), description="one row per customer in a campaign"),
]}
del C

#: Ids that must have one type across tables (the columns of type ``id``).
ID_COLUMNS: tuple[str, ...] = tuple(sorted({
    c.name for t in TABLES.values() for c in t.columns.values() if c.type == "id"}))

#: The earliest plausible date of an event (an order, a sign-up, a touch
#: point, a ticket, a campaign): decades of a company's history stay usable,
#: while placeholders such as ``1900-01-01`` or ``1899-12-30`` (a spreadsheet's
#: day zero) and ``0001-01-01`` are quarantined.
EARLIEST_EVENT = "1950-01-01"
_EVENT = {"min": EARLIEST_EVENT, "future_days": 1}
#: Business limits, table -> column -> limit. ``min``/``max`` bound numbers
#: and dates (ISO strings); ``future_days`` bounds a date by the source's
#: ``extracted_at`` plus that many days. A mapping's ``limits:`` overrides
#: any key, or adds limits to any number or date column.
LIMITS: dict[str, dict[str, dict[str, Any]]] = {
    "customers": {"birth_date": {"min": "1900-01-01", "future_days": 1},
                  "signup_date": dict(_EVENT)},
    "orders": {"order_date": dict(_EVENT), "amount": {"min": 0, "max": 1_000_000}},
    "interactions": {"ts": dict(_EVENT)},
    "tickets": {"opened_at": dict(_EVENT), "resolved_at": dict(_EVENT),
                "satisfaction": {"min": 1, "max": 5}, "nps": {"min": 0, "max": 10}},
    "campaigns": {"start_date": {"min": EARLIEST_EVENT}, "end_date": {"min": EARLIEST_EVENT}},
    "campaign_contacts": {"sent_at": dict(_EVENT)},
}
del _EVENT

#: Which check a broken limit reports, (table, column, limit) -> check;
#: otherwise numbers report ``out_of_range``, dates ``date_out_of_range``
#: (``future_date`` for ``future_days``).
LIMIT_CHECKS: dict[tuple[str, str, str], str] = {
    ("orders", "amount", "min"): "negative_amount",
    ("orders", "amount", "max"): "absurd_amount",
}

def _words(**groups: str) -> dict[str, str]:
    """``{word: canonical}`` from ``canonical="word|word|..."``."""
    return {w.strip(): canon for canon, words in groups.items() for w in words.split("|")}


#: Default value maps of category columns, keyed by the value trimmed and
#: case-folded; a mapping's ``values:`` adds to them and overrides them.
#: ``orders.status`` maps the common vocabulary of order exports (English and
#: Chinese shop systems) onto paid/refunded/cancelled. Words that are not yet
#: a purchase (pending, processing, unpaid, in transit) are left out on
#: purpose: they stay ``out_of_domain`` until the source mapping's
#: ``values:`` says what they mean for that shop.
VALUE_MAPS: dict[str, dict[str, dict[str, str]]] = {
    "orders": {"status": _words(
        paid="shipped|delivered|completed|complete|fulfilled|closed|success|successful|"
             "succeeded|settled|已完成|已发货|已签收|交易成功",
        refunded="returned|refund|refunded|已退款|退货",
        cancelled="void|voided|failed|declined|canceled|cancel|已取消|交易关闭")},
    "campaign_contacts": {"group": {"treated": "treatment", "test": "treatment",
                                    "holdout": "control", "hold-out": "control"}},
}

#: Spellings of "true"/"false" in bool columns (after trimming and case-folding).
BOOL_VALUES: dict[str, bool] = {
    "true": True, "t": True, "yes": True, "y": True, "1": True, "是": True,
    "false": False, "f": False, "no": False, "n": False, "0": False, "否": False,
}

#: Text that means "missing" in a column that is not free text (after
#: trimming and case-folding).
NULL_TOKENS: tuple[str, ...] = ("", "null", "none", "nan", "nat", "na", "n/a", "\\n", "-", "--", "无", "空")

#: Order statuses that are not purchases (after trimming and case-folding,
#: and after :data:`VALUE_MAPS`). On a source's typed orders a status is
#: paid, refunded, cancelled or missing (other words are quarantined as
#: ``out_of_domain``); paid and missing are purchases. The one definition of
#: "a purchase" every report uses (:func:`crmlab.engine.purchases`).
NON_PURCHASE_STATUSES: tuple[str, ...] = ("refunded", "cancelled", "canceled")

#: Date layouts tried, in order, when a date arrives as text (strptime
#: codes). ``{dmy}`` expands to day-first or month-first by ``dayfirst``.
_DATE_LAYOUTS = ("%Y-%m-%d", "%Y/%m/%d", "%Y.%m.%d", "{dmy}/", "{dmy}-", "%d.%m.%Y",
                 "%Y年%m月%d日", "%b %d, %Y", "%d %b %Y", "%B %d, %Y", "%d %B %Y", "%Y%m%d")
_TIME_LAYOUTS = ("", " %H:%M", " %H:%M:%S", " %H:%M:%S.%f", "T%H:%M", "T%H:%M:%S",
                 "T%H:%M:%S.%f")
_ZONED_LAYOUTS = ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S.%f%z",
                  "%Y-%m-%d %H:%M:%S%z", "%Y-%m-%d %H:%M:%S.%f%z",
                  "%Y-%m-%dT%H:%MZ", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S.%fZ")


def date_formats(dayfirst: bool = False) -> list[str]:
    """The strptime formats tried, in order, for dates stored as text.

    ISO 8601 first, then ``%Y/%m/%d``, then ``%d/%m/%Y`` and ``%d-%m-%Y``
    (``dayfirst``) or ``%m/%d/%Y`` and ``%m-%d-%Y``, the dotted ``%d.%m.%Y``
    (day first everywhere it is written), ``%Y年%m月%d日``, month names
    (``%b %d, %Y`` ...) and the packed ``%Y%m%d``, each with an optional
    time of day; ISO with a UTC offset last (``%z``; ``Z``).

    Examples
    --------
    >>> date_formats(dayfirst=True)[:2]
    ['%Y-%m-%d', '%Y-%m-%d %H:%M']
    >>> "%d/%m/%Y" in date_formats(True), "%m/%d/%Y" in date_formats(True)
    (True, False)
    """
    dmy = "%d{s}%m{s}%Y" if dayfirst else "%m{s}%d{s}%Y"
    out = []
    for layout in _DATE_LAYOUTS:
        if layout.startswith("{dmy}"):
            layout = dmy.format(s=layout[-1])
        times = _TIME_LAYOUTS if "%b" not in layout and "%B" not in layout else ("",)
        if layout == "%Y%m%d":
            times = ("",)
        if "年" in layout:
            times = ("", " %H:%M", " %H:%M:%S", "%H时%M分", "%H时%M分%S秒")
        out.extend(layout + t for t in times)
    out.extend(_ZONED_LAYOUTS)
    return out


# --------------------------------------------------------------------------- access

def table(name: str) -> Table:
    """The contract of one table; unknown names raise ``KeyError`` listing
    the known ones."""
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r}; known: {', '.join(TABLES)}") from None


def column(table_name: str, name: str) -> Column:
    """The contract of one column.

    Examples
    --------
    >>> column("tickets", "nps").type
    'int'
    """
    t = table(table_name)
    try:
        return t.columns[name]
    except KeyError:
        raise KeyError(f"table {table_name} has no column {name!r} in the contract; "
                       f"known: {', '.join(t.columns)}") from None


def required_columns(table_name: str) -> tuple[str, ...]:
    """Columns a table must have whenever a source has the table."""
    return table(table_name).required_columns


def pii_columns(table_name: str | None = None) -> dict:
    """Personal-data columns and their class.

    Returns
    -------
    dict
        ``{column: pii_class}`` for one table, or
        ``{(table, column): pii_class}`` for every table when ``table_name``
        is None.
    """
    if table_name is not None:
        return {c.name: c.pii for c in table(table_name).columns.values() if c.pii}
    return {(t.name, c.name): c.pii for t in TABLES.values() for c in t.columns.values() if c.pii}


def limits(table_name: str, overrides: Mapping[str, Mapping[str, Any]] | None = None
           ) -> dict[str, dict[str, Any]]:
    """The business limits of a table: :data:`LIMITS` updated key by key
    with ``overrides`` (``{column: {"min": ..., "max": ..., "future_days": ...}}``);
    a ``None`` value removes a limit."""
    out = {c: dict(lim) for c, lim in LIMITS.get(table_name, {}).items()}
    for col, lim in (overrides or {}).items():
        merged = {**out.get(col, {}), **lim}
        out[col] = {k: v for k, v in merged.items() if v is not None}
    return out


def limit_check(table_name: str, column_name: str, which: str) -> str:
    """The check name a broken limit reports (``which`` in min, max, future_days)."""
    if (table_name, column_name, which) in LIMIT_CHECKS:
        return LIMIT_CHECKS[table_name, column_name, which]
    if which == "future_days":
        return "future_date"
    kind = column(table_name, column_name).type
    return "date_out_of_range" if kind in ("date", "timestamp") else "out_of_range"


def ibis_dtype(table_name: str, column_name: str, id_type: str = "int64") -> idt.DataType:
    """The ibis dtype of a typed column; ids take ``id_type`` (int64 or string)."""
    kind = column(table_name, column_name).type
    return idt.dtype(id_type) if kind == "id" else LOGICAL_TYPES[kind]


def _as_limit_value(value: Any, kind: str) -> Any:
    if kind in ("date", "timestamp") and isinstance(value, str):
        return dt.datetime.fromisoformat(value)
    return value


def pandera_schema(table_name: str, *, backend: str = "ibis", columns=None,
                   id_types: Mapping[str, str] | None = None, checks: bool = False):
    """A pandera schema of one table, built from the contract.

    Parameters
    ----------
    table_name : str
    backend : {"ibis", "pandas"}
        ``"ibis"`` validates an ibis table in the engine (presence and
        types); ``"pandas"`` validates a small pandas frame.
    columns : iterable of str, optional
        Restrict to these columns (required ones always stay).
    id_types : dict, optional
        ``{id_column: "int64" | "string"}``; default int64.
    checks : bool
        Add the row-level checks (domains, limits without ``future_days``)
        as pandera checks. crmlab's own quarantine computes them in the
        engine with row numbers instead; this is for callers validating a
        small frame by hand.

    Returns
    -------
    pandera DataFrameSchema
        Not strict (extra columns pass); optional columns have
        ``required=False``; every column is nullable (missing required
        values are quarantined row by row, not refused).

    Examples
    --------
    >>> import pandas as pd
    >>> s = pandera_schema("orders", backend="pandas")
    >>> sorted(c for c, col in s.columns.items() if col.required)
    ['amount', 'customer_id', 'order_date']
    """
    id_types = dict(id_types or {})
    t = table(table_name)
    keep = set(columns) | set(t.required_columns) if columns is not None else set(t.columns)
    lims = limits(table_name)
    if backend == "ibis":
        import pandera.ibis as pa
        dtype_of = lambda c: ibis_dtype(table_name, c, id_types.get(c, "int64"))  # noqa: E731
    elif backend == "pandas":
        import pandera.pandas as pa
        pandas_types = {"id": None, "string": None, "timestamp": "datetime64[ns]",
                        "date": "datetime64[ns]", "float": "float64", "int": "Int64",
                        "bool": "boolean", "category": None}
        dtype_of = lambda c: pandas_types[t.columns[c].type]  # noqa: E731
    else:
        raise ValueError(f"backend must be 'ibis' or 'pandas', not {backend!r}")
    cols = {}
    for name, col in t.columns.items():
        if name not in keep:
            continue
        col_checks = []
        if checks:
            if col.domain is not None:
                col_checks.append(pa.Check.isin(list(col.domain)))
            lim = lims.get(name, {})
            if "min" in lim:
                col_checks.append(pa.Check.ge(_as_limit_value(lim["min"], col.type)))
            if "max" in lim:
                col_checks.append(pa.Check.le(_as_limit_value(lim["max"], col.type)))
        cols[name] = pa.Column(dtype_of(name), checks=col_checks or None, nullable=True,
                               required=col.required, description=col.description or None)
    return pa.DataFrameSchema(cols, name=table_name, strict=False,
                              unique=list(t.key) if checks and t.key else None)


__all__ = [
    "BOOL_VALUES", "CHECKS", "Column", "EARLIEST_EVENT", "ID_COLUMNS", "LIMITS", "LIMIT_CHECKS", "LOGICAL_TYPES",
    "NON_PURCHASE_STATUSES", "NULL_TOKENS", "PII_CLASSES", "TABLES", "Table", "VALUE_MAPS", "column", "date_formats",
    "ibis_dtype", "limit_check", "limits", "pandera_schema", "pii_columns", "required_columns",
    "table",
]
