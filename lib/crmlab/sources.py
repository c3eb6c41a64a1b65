"""From a SPEC to a :class:`Dataset`: mapping, encodings, validation, quarantine.

A SPEC names where the data is (DESIGN.md "Command line"):

``synthetic:<scenario>``   a generated world (``crmlab.synthetic.ensure_world``),
                           opened as its Parquet files, with ``truth`` and ``world``
a directory                CSV and/or Parquet files named after the tables
                           (``orders.csv``, ``customers.parquet`` ...) or as
                           the mapping says
``<file>.duckdb``          a DuckDB database, attached read-only
``postgresql://...``       a PostgreSQL database (tables in the URL's schema
                           -- ``.../db/schema`` or ``?schema=`` -- else the
                           search_path)

A mapping (``parameters/sources/<name>.yaml``) renames a foreign export onto
the contract of :mod:`crmlab.schema` and declares file names, encodings,
delimiters, date formats, the timezone, value maps and limits; see
``parameters/sources/shop-export.yaml`` for a worked example.

What opening does, and when
---------------------------
:func:`open_source` is cheap: it builds ibis views (Parquet and database
tables are never copied; CSV files are loaded into an in-memory DuckDB table,
so each keeps its row numbers), renames columns, settles the type of each id
and checks the contract's presence and types with pandera (``lazy=True``, so
every failure is collected). A missing required table or column raises
:class:`~crmlab.exceptions.DataContractError` naming table and column.

Row-level validation runs later, once, inside the engine: every check of the
contract becomes an ibis predicate, one query per table returns only the
failing row numbers, and the result is cached on the Dataset as
``quarantine`` (``table, row, column, check`` -- never a value).
``Dataset.table(name)`` is the typed table with those rows removed.

Text is parsed in the engine: dates with :func:`crmlab.schema.date_formats`
(or the mapping's ``date_format``), numbers with optional thousands
separators and currency signs, bools and categories through value maps. On
DuckDB dates use ``try_strptime``; on other engines the same formats are
compiled to regular expressions and ``make_timestamp`` (portable, never
raises on bad text).
"""

from __future__ import annotations

import codecs
import contextlib
import datetime as dt
import functools
import gzip
import hashlib
import json
import os
import re
import shutil
import tempfile
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import parse_qsl, unquote, urlencode, urlparse, urlunparse

import ibis
import ibis.expr.datatypes as idt
import ibis.expr.types as ir
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from crmlab import config, schema
from crmlab.exceptions import DataContractError, NoDataError, ParameterError, SourceUnavailable

# ----------------------------------------------------------------------------- mapping

#: Keys a mapping may have at the top level; the per-table defaults among
#: them are inherited by every table.
MAPPING_KEYS: dict[str, str] = {
    "name": "a short name of the source",
    "description": "free text",
    "tables": "canonical table -> its settings (below)",
    "schema": "database schema holding the tables (DuckDB files, PostgreSQL)",
    "encoding": "text encoding of CSV files (default: detected: utf-8(-sig), else gb18030, "
                "cp1252 or latin-1 by how the text reads)",
    "delimiter": "CSV field separator (default: detected)",
    "decimal": "decimal mark of numbers stored as text: '.' (default) or ','",
    "dayfirst": "read 01/02/2024 as 1 February (default false: 2 January)",
    "timezone": "IANA zone of naive times; aware times are converted to it",
}
#: Keys of ``tables.<table>``.
TABLE_KEYS: dict[str, str] = {
    "source": "file name (relative to the source directory) or database table name",
    "columns": "foreign column -> canonical column",
    "date_format": "canonical column -> strptime format or list of formats",
    "values": "canonical column -> {foreign value: canonical value}",
    "limits": "canonical column -> {min, max, future_days}",
    "fill": "canonical column -> one value for every row, when the export has no such column",
    "encoding": MAPPING_KEYS["encoding"],
    "delimiter": MAPPING_KEYS["delimiter"],
    "decimal": MAPPING_KEYS["decimal"],
    "dayfirst": MAPPING_KEYS["dayfirst"],
    "timezone": MAPPING_KEYS["timezone"],
}
_INHERITED = ("encoding", "delimiter", "decimal", "dayfirst", "timezone")
#: Tables of at most this many rows are typed once into a DuckDB temp table
#: on first use (:meth:`Dataset.table`); bigger ones stay views over the source.
CACHE_TYPED_ROWS = 200_000
LIMIT_KEYS = ("min", "max", "future_days")

#: strptime codes a date format may use (the same on every engine).
FORMAT_TOKENS: dict[str, str] = {
    "%Y": r"([0-9]{4})", "%y": r"([0-9]{2})", "%m": r"(0?[1-9]|1[0-2])",
    "%d": r"(0?[1-9]|[12][0-9]|3[01])", "%H": r"([01]?[0-9]|2[0-3])", "%I": r"(0?[1-9]|1[0-2])",
    "%M": r"([0-5]?[0-9])", "%S": r"([0-5]?[0-9])", "%f": r"([0-9]{1,6})",
    "%b": r"([A-Za-z]{3})", "%B": r"([A-Za-z]{3,9})", "%p": r"([AaPp][Mm])",
    "%z": r"([+-][0-9]{2}:?[0-9]{2})",
}
#: Fixed-width forms used where codes touch (``%Y%m%d``).
FIXED_TOKENS: dict[str, str] = {
    "%m": r"(0[1-9]|1[0-2])", "%d": r"(0[1-9]|[12][0-9]|3[01])", "%H": r"([01][0-9]|2[0-3])",
    "%I": r"(0[1-9]|1[0-2])", "%M": r"([0-5][0-9])", "%S": r"([0-5][0-9])",
}
_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august",
           "september", "october", "november", "december")


def _unknown(keys: Iterable[str], known: Iterable[str], where: str) -> None:
    bad = sorted(set(keys) - set(known))
    if bad:
        raise ParameterError(f"mapping {where}: unknown key(s) {', '.join(map(str, bad))}; "
                             f"known: {', '.join(known)}")


def _check_format(fmt: Any, where: str) -> None:
    if not isinstance(fmt, str) or not fmt:
        raise ParameterError(f"mapping {where}: a date format must be a non-empty string")
    for code in re.findall(r"%.", fmt):
        if code not in FORMAT_TOKENS and code != "%%":
            raise ParameterError(f"mapping {where}: date format code {code} is not supported; "
                                 f"supported: {' '.join(FORMAT_TOKENS)}")


def mapping_path(name: str | os.PathLike) -> Path:
    """Where a mapping lives: a path as given, else
    ``parameters/sources/<name>.yaml``."""
    p = Path(name)
    if p.exists() or p.suffix in (".yaml", ".yml") or len(p.parts) > 1:
        return p
    return config.parameters_dir() / "sources" / f"{name}.yaml"


def load_mapping(mapping: str | os.PathLike | Mapping | None) -> dict:
    """Read and validate a source mapping.

    Parameters
    ----------
    mapping : str, Path, dict or None
        A YAML file, the name of one in ``parameters/sources/``, or the
        parsed dict. ``None`` or ``""`` means no mapping.

    Returns
    -------
    dict
        ``{"name", "schema", "tables": {table: settings}}`` where every
        canonical table has its settings with the inherited defaults
        filled in (``encoding``, ``delimiter``, ``decimal``, ``dayfirst``,
        ``timezone``) and ``columns``, ``date_format``, ``values``,
        ``limits``, ``fill`` as dicts (date formats as lists).

    Raises
    ------
    ParameterError
        Unknown keys, tables or columns (named), a bad timezone, date
        format, decimal mark or limit.

    Examples
    --------
    >>> m = load_mapping({"tables": {"orders": {"columns": {"Betrag": "amount"}}}})
    >>> m["tables"]["orders"]["columns"]
    {'Betrag': 'amount'}
    """
    if mapping is None or (isinstance(mapping, str) and not mapping.strip()):
        doc: dict = {}
        where = "(none)"
    elif isinstance(mapping, Mapping):
        doc = dict(mapping)
        where = str(doc.get("name", "(dict)"))
    else:
        path = mapping_path(mapping)
        doc = config.load_yaml(path, "mapping")
        where = path.name
        doc.setdefault("name", path.stem)
    _unknown(doc, MAPPING_KEYS, where)
    tables = doc.get("tables") or {}
    if not isinstance(tables, Mapping):
        raise ParameterError(f"mapping {where}: 'tables' must map table names to settings")
    _unknown(tables, schema.TABLES, f"{where} tables")
    out = {"name": doc.get("name"), "description": doc.get("description"),
           "schema": doc.get("schema"), "tables": {}}
    for tname, contract in schema.TABLES.items():
        t = dict(tables.get(tname) or {})
        w = f"{where} tables.{tname}"
        _unknown(t, TABLE_KEYS, w)
        for key in _INHERITED:
            t.setdefault(key, doc.get(key))
        t["dayfirst"] = bool(t["dayfirst"])
        t["decimal"] = t["decimal"] or "."
        if t["decimal"] not in (".", ","):
            raise ParameterError(f"mapping {w}: decimal must be '.' or ','")
        if t["timezone"]:
            try:
                zoneinfo.ZoneInfo(str(t["timezone"]))
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise ParameterError(f"mapping {w}: unknown timezone {t['timezone']!r}") from None
        if t["encoding"]:
            try:
                codecs.lookup(str(t["encoding"]))
            except LookupError:
                raise ParameterError(f"mapping {w}: unknown encoding {t['encoding']!r}") from None
        cols = {str(k): str(v) for k, v in (t.get("columns") or {}).items()}
        _unknown_cols = [c for c in cols.values() if c not in contract.columns]
        if _unknown_cols:
            raise ParameterError(f"mapping {w}.columns: unknown canonical column(s) "
                                 f"{', '.join(sorted(_unknown_cols))}; known: "
                                 f"{', '.join(contract.columns)}")
        targets = list(cols.values())
        twice = sorted({c for c in targets if targets.count(c) > 1})
        if twice:
            raise ParameterError(f"mapping {w}.columns: more than one column mapped to "
                                 f"{', '.join(twice)}")
        t["columns"] = cols
        for key in ("date_format", "values", "limits", "fill"):
            section = t.get(key) or {}
            if not isinstance(section, Mapping):
                raise ParameterError(f"mapping {w}.{key}: expected column -> settings")
            _unknown(section, contract.columns, f"{w}.{key}")
            t[key] = dict(section)
        for col, fmts in t["date_format"].items():
            if contract.columns[col].type not in ("date", "timestamp"):
                raise ParameterError(f"mapping {w}.date_format: {col} is not a date column")
            fmts = [fmts] if isinstance(fmts, str) else list(fmts or [])
            for f in fmts:
                _check_format(f, f"{w}.date_format.{col}")
            t["date_format"][col] = fmts
        for col, value in t["fill"].items():
            if value is None or not isinstance(value, (str, int, float, bool, dt.date)):
                raise ParameterError(f"mapping {w}.fill.{col}: expected one value (text, a "
                                     f"number, true/false or a date)")
        for col, vmap in t["values"].items():
            if not isinstance(vmap, Mapping):
                raise ParameterError(f"mapping {w}.values.{col}: expected foreign -> canonical")
            t["values"][col] = {str(k).strip().lower(): v for k, v in vmap.items()}
        for col, lim in t["limits"].items():
            if not isinstance(lim, Mapping):
                raise ParameterError(f"mapping {w}.limits.{col}: expected min/max/future_days")
            _unknown(lim, LIMIT_KEYS, f"{w}.limits.{col}")
            kind = contract.columns[col].type
            if kind not in ("float", "int", "date", "timestamp"):
                raise ParameterError(f"mapping {w}.limits.{col}: limits apply to numbers and "
                                     f"dates only")
            for k, v in lim.items():
                if v is None:
                    continue
                if kind in ("date", "timestamp") and k != "future_days":
                    try:
                        dt.datetime.fromisoformat(str(v))
                    except ValueError:
                        raise ParameterError(f"mapping {w}.limits.{col}.{k}: expected an ISO "
                                             f"date") from None
                elif not isinstance(v, (int, float)) or isinstance(v, bool):
                    raise ParameterError(f"mapping {w}.limits.{col}.{k}: expected a number")
        out["tables"][tname] = t
    return out


# ----------------------------------------------------------------------------- encodings

_CHUNK = 1 << 20


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _decodes(path: Path, encoding: str) -> bool:
    dec = codecs.getincrementaldecoder(encoding)(errors="strict")
    try:
        with _open_binary(path) as fh:
            while chunk := fh.read(_CHUNK):
                dec.decode(chunk)
            dec.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


#: Encodings weighed when a file is not UTF-8: GB18030 (a superset of GBK
#: and GB2312) and the western single-byte ones (cp1252, else Latin-1, which
#: reads any byte). Many Latin-1 files are also valid GB18030 (``é`` and the
#: letter after it make one Chinese character), so decoding alone cannot
#: choose; :func:`detect_encoding` asks charset_normalizer which reading is
#: text.
FALLBACK_ENCODINGS = ("gb18030", "cp1252", "latin_1")
_SAMPLE = 1 << 16
_HIGH_LINE = re.compile(rb"[^\n]*[\x80-\xff][^\n]*\n?")


def _non_ascii_lines(path: Path, limit: int = _SAMPLE) -> bytes:
    """The file's first lines that hold a byte above ASCII, about ``limit``
    bytes of them (whole lines): what tells the encodings apart."""
    out, size, rest = [], 0, b""
    with _open_binary(path) as fh:
        while size < limit:
            chunk = fh.read(_CHUNK)
            data = rest + chunk
            cut = data.rfind(b"\n") + 1
            if not chunk or len(data) > _CHUNK and not cut:
                cut = len(data)   # the end, or a line longer than a chunk
            data, rest = data[:cut], data[cut:]
            for m in _HIGH_LINE.finditer(data):
                out.append(m.group())
                size += len(m.group())
                if size >= limit:
                    break
            if not chunk:
                break
    return b"".join(out)


def _judge_encoding(sample: bytes, candidates: list[str]) -> str | None:
    """The candidate under which ``sample`` reads as text, by
    charset_normalizer (its "mess" measure: unlikely characters, scripts
    mixed within a word, rare ideographs; ties go to the language coherence
    of the result), or None when none does."""
    from charset_normalizer import from_bytes

    best = from_bytes(sample, cp_isolation=candidates, explain=False).best()
    return None if best is None else codecs.lookup(best.encoding).name


def detect_encoding(path: str | os.PathLike, declared: str | None = None) -> str:
    """The text encoding of a CSV file.

    A declared encoding wins. Otherwise the whole file is tried as UTF-8
    (``"utf-8-sig"`` when it starts with a byte-order mark, else
    ``"utf-8"``). A file that is not UTF-8 is weighed between the
    :data:`FALLBACK_ENCODINGS` it decodes under -- GB18030, cp1252 (else
    Latin-1) -- by how its lines with non-ASCII bytes read in each
    (charset_normalizer), so ``Müller`` in Latin-1, which is also valid
    GB18030, is not read as Chinese. Returns the codec's name
    (``"gb18030"``, ``"cp1252"``, ``"iso8859-1"``).

    Raises
    ------
    DataContractError
        No candidate reads as text; the message says to declare
        ``encoding`` in the mapping (and holds no file content).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
    >>> _ = p.write_bytes("名字\\n张三\\n".encode("gbk"))
    >>> detect_encoding(p)
    'gb18030'
    >>> _ = p.write_bytes("name\\nGünter Müller\\n".encode("latin-1"))
    >>> detect_encoding(p)
    'cp1252'
    """
    path = Path(path)
    if declared:
        return codecs.lookup(declared).name if declared.lower() != "utf-8-sig" else "utf-8-sig"
    if _decodes(path, "utf-8"):
        with _open_binary(path) as fh:
            return "utf-8-sig" if fh.read(3) == codecs.BOM_UTF8 else "utf-8"
    candidates = [e for e in FALLBACK_ENCODINGS[:2] if _decodes(path, e)]
    if "cp1252" not in candidates:
        candidates.append("latin_1")
    found = _judge_encoding(_non_ascii_lines(path), candidates)
    if found is None and "gb18030" in candidates:
        found = "gb18030"   # valid GB18030 that no candidate reads better
    if found is None:
        raise DataContractError(f"file {path.name} is neither UTF-8, GB18030 nor Latin-1 text; "
                                f"declare its encoding in the mapping (tables.<table>.encoding)")
    return found


def _transcode(path: Path, encoding: str, out: Path) -> Path:
    """Write ``path`` re-encoded as UTF-8 without BOM (DuckDB reads only UTF-8)."""
    dec = codecs.getincrementaldecoder(encoding)(errors="strict")
    first = True
    try:
        with _open_binary(path) as src, open(out, "w", encoding="utf-8", newline="") as dst:
            while chunk := src.read(_CHUNK):
                text = dec.decode(chunk)
                if first:
                    text, first = text.lstrip("\ufeff"), False
                dst.write(text)
            dst.write(dec.decode(b"", final=True))
    except UnicodeDecodeError as exc:
        raise DataContractError(f"file {path.name} is not valid {encoding} text (byte "
                                f"{exc.start} of a chunk); check the declared encoding") from None
    return out


# ----------------------------------------------------------------------------- engine helpers

@ibis.udf.scalar.builtin(name="timezone",
                         signature=((idt.string, idt.Timestamp(timezone="UTC")), idt.timestamp))
def _utc_to_local(zone, ts):  # DuckDB and PostgreSQL: aware -> naive wall time in zone
    ...


@ibis.udf.scalar.builtin(name="timezone",
                         signature=((idt.string, idt.timestamp), idt.Timestamp(timezone="UTC")))
def _local_to_aware(zone, ts):  # naive wall time in zone -> aware
    ...


@ibis.udf.scalar.builtin(name="split_part",
                         signature=((idt.string, idt.string, idt.int64), idt.string))
def _split_part(s, sep, n):  # DuckDB and PostgreSQL: n-th field, 1-based
    ...


_INT_RE = r"^(0|-?[1-9][0-9]{0,17})(\.0+)?$"   # 42, and 42.0 as a spreadsheet writes it
_POINT_ZERO_RE = r"^(-?[0-9]+)\.0+$"
_NUMBER_RE = {
    ".": r"^[+-]?([0-9]{1,3}(,[0-9]{3})+|[0-9]+)?(\.[0-9]+)?([eE][+-]?[0-9]+)?$",
    ",": r"^[+-]?([0-9]{1,3}(\.[0-9]{3})+|[0-9]+)?(,[0-9]+)?([eE][+-]?[0-9]+)?$",
}
_CURRENCY_RE = r"[\s¥￥$€£]|元|RMB|CNY|USD|EUR"


@ibis.udf.scalar.builtin(name="trim", signature=((idt.string,), idt.string))
def _trim(s):  # DuckDB and PostgreSQL: strip spaces (quicker than strip()'s char list)
    ...


_TOKEN_LEN = max(len(t) for t in schema.NULL_TOKENS)


def id_text(col: ir.Value) -> ir.StringValue:
    """An id as text, written one way whatever its source type: integers
    as digits, an integral float (``42.0``) as the integer it holds, text
    trimmed with a spreadsheet's ``.0`` dropped (``"42.0"`` -> ``"42"``).
    Leading zeros stay (``"00042"`` is not ``"42"``). For comparing ids
    across tables typed differently."""
    dtype = col.type()
    if dtype.is_integer():
        return col.cast(idt.string)
    if dtype.is_floating() or dtype.is_decimal():
        whole = col.notnull() & (col == col.floor())
        return ibis.ifelse(whole, col.cast(idt.int64).cast(idt.string), col.cast(idt.string))
    text = _trim(col.cast(idt.string))
    return text.re_replace(_POINT_ZERO_RE, r"\1")


def is_blank(col: ir.Value) -> ir.BooleanValue:
    """The one meaning of an empty cell: NULL, NaN, or text that is empty,
    spaces or a null token (:data:`crmlab.schema.NULL_TOKENS`, compared
    trimmed and case-folded). Validation, the data-quality report and the
    deduplication all read "empty" through this."""
    if not col.type().is_string():
        return col.isnull() | col.isnan() if col.type().is_floating() else col.isnull()
    t = _trim(col)
    return col.isnull() | ((t.length() <= _TOKEN_LEN) & t.lower().isin(list(schema.NULL_TOKENS)))


def _clean_text(s: ir.StringValue) -> ir.StringValue:
    """Text without surrounding spaces; NULL for blanks and null tokens."""
    return ibis.ifelse(is_blank(s), ibis.null(idt.string), _trim(s))


def _parse_number(c: ir.StringValue, decimal: str = ".") -> ir.FloatingValue:
    """Cleaned text (:func:`_clean_text`) to float64, NULL where it is no
    number. Accepts thousands separators and currency signs (``¥1,234.50``);
    never raises."""
    c = c.re_replace(_CURRENCY_RE, "")
    ok = c.re_search(_NUMBER_RE[decimal]) & c.re_search("[0-9]")
    num = c.replace(",", "") if decimal == "." else c.replace(".", "").replace(",", ".")
    return ibis.ifelse(ok, num, ibis.null(idt.string)).cast(idt.float64)


def _format_regex(fmt: str, capture: bool = True) -> tuple[str, list[str]]:
    """A strptime format as an anchored regular expression and the code of
    each group, e.g. ``("^([0-9]{4})-(0?[1-9]|1[0-2])-...$", ["%Y", "%m", "%d"])``.
    ``capture=False`` gives non-capturing groups (a quicker match test)."""
    parts, codes, i = ["^"], [], 0
    while i < len(fmt):
        code = fmt[i:i + 2]
        if code == "%%":
            parts.append("%")
            i += 2
        elif code in FORMAT_TOKENS:
            # fixed width between two codes with no separator (%Y%m%d)
            packed = fmt[i + 2:i + 3] == "%" or (i >= 2 and fmt[i - 2] == "%")
            tok = FIXED_TOKENS.get(code, FORMAT_TOKENS[code]) if packed else FORMAT_TOKENS[code]
            parts.append(tok if capture else "(?:" + tok[1:])
            codes.append(code)
            i += 2
        else:
            parts.append(re.escape(fmt[i]))
            i += 1
    parts.append("$")
    return "".join(parts), codes


# Slots of the canonical date text "Y|y|m|b|d|H|I|M|S|f|p|z" that the
# portable parser rewrites every format into, and their defaults.
_SLOTS = {"%Y": "", "%y": "", "%m": "", "%b": "", "%d": "1", "%H": "", "%I": "", "%M": "0",
          "%S": "0", "%f": "", "%p": "", "%z": ""}
_SLOT_OF = {"%B": "%b"}


def _canonical_replacement(fmt: str) -> tuple[str, str]:
    """(pattern, replacement) rewriting text in ``fmt`` to the canonical
    slots; a trailing literal ``Z`` means UTC."""
    pattern, codes = _format_regex(fmt)
    slots = dict(_SLOTS)
    if fmt.endswith("Z") and "%z" not in fmt:
        slots["%z"] = "Z"
    if "%H" not in codes and "%I" not in codes:
        slots["%H"] = "0"
    for i, code in enumerate(codes):
        slots[_SLOT_OF.get(code, code)] = f"\\{i + 1}"
    return pattern, "|".join(slots.values())


def _canonical_dates(c: ir.StringValue, formats: list[str]) -> ir.StringValue:
    """Stage 1 of the portable parser: cleaned text -> the canonical slots
    of the first format whose regular expression matches, else NULL."""
    parts = []
    for fmt in formats:
        pattern, repl = _canonical_replacement(fmt)
        parts.append(ibis.ifelse(c.re_search(pattern), c.re_replace(pattern, repl),
                                 ibis.null(idt.string)))
    return ibis.coalesce(*parts) if len(parts) > 1 else parts[0]


def _date_components(k: ir.StringValue) -> dict[str, ir.Value]:
    """Stage 2: canonical slots -> integer components (NULL when absent)."""
    # split_part, not split()[i]: ibis 12 with sqlglot 27 indexes PostgreSQL
    # arrays off by one
    slot = {code: _split_part(k, "|", i + 1) for i, code in enumerate(_SLOTS)}
    num = lambda code: slot[code].nullif("").cast(idt.int64)  # noqa: E731
    yy = num("%y")
    year = ibis.coalesce(num("%Y"), ibis.ifelse(yy < 69, yy + 2000, yy + 1900))
    names = {**{m: i + 1 for i, m in enumerate(_MONTHS)},
             **{m[:3]: i + 1 for i, m in enumerate(_MONTHS)}}
    month = ibis.coalesce(num("%m"), slot["%b"].lower().substitute(
        names, else_=ibis.null(idt.int64)))
    h12, pm = num("%I"), slot["%p"].lower() == "pm"
    hour = ibis.coalesce(num("%H"), h12 % 12 + ibis.ifelse(pm, 12, 0))
    hour_ok = ibis.ifelse(h12.notnull(), h12.between(1, 12), hour.between(0, 23))
    frac = slot["%f"]
    micro = ibis.ifelse(frac == "", 0, frac.substr(0, 6).rpad(6, "0").nullif("").cast(idt.int64))
    z = slot["%z"].replace(":", "")
    off = z.substr(1, 2).nullif("").cast(idt.int64) * 60 + z.substr(3, 2).nullif("").cast(
        idt.int64)
    offset = ibis.cases((z == "", ibis.null(idt.int64)), (z == "Z", 0),
                        (z.startswith("-"), -off), else_=off)
    return {"year": year, "month": month, "day": num("%d"), "hour": hour,
            "hour_ok": hour_ok.fill_null(False), "minute": num("%M"), "second": num("%S"),
            "micro": micro, "offset": offset}


def _timestamp_from_components(t: ir.Table, prefix: str, zone: str | None
                               ) -> ir.TimestampValue:
    """Stage 3: validated components -> a naive timestamp in ``zone``."""
    g = lambda name: t[f"{prefix}{name}"]  # noqa: E731
    year, month, day = g("year"), g("month"), g("day")
    leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
    days_in_month = ibis.cases((month == 2, ibis.ifelse(leap, 29, 28)),
                               (month.isin([4, 6, 9, 11]), 30), else_=31)
    valid = ((year >= 1) & month.between(1, 12) & (day >= 1) & (day <= days_in_month)
             & g("hour_ok") & g("minute").between(0, 59) & g("second").between(0, 59))
    ts = ibis.timestamp(year, month, day, g("hour"), g("minute"), g("second"))
    ts = ts + g("micro").as_interval("us")
    off = g("offset")
    ts = ibis.ifelse(off.isnull(), ts, _to_zone(ts - off.as_interval("m"), zone))
    return ibis.ifelse(valid.fill_null(False), ts, ibis.null(idt.timestamp))


def _to_zone(ts: ir.TimestampValue, zone: str | None) -> ir.TimestampValue:
    """Naive UTC wall time -> naive wall time in ``zone``."""
    return _utc_to_local(zone or "UTC", _local_to_aware("UTC", ts))


def _layout(fmt: str) -> str:
    """The date part of a format (what comes before the time of day)."""
    return re.split(r"[ T]?%[HI]", fmt)[0]


def _strptime_duckdb_sql(formats: list[str], zone: str | None) -> str:
    """DuckDB SQL reading the text ``s`` into a naive timestamp in ``zone``.

    Each value is routed by regular expression to the one format that can
    read it (formats grouped by date layout, so a value meets a handful of
    expressions), then read with ``try_strptime``: DuckDB's strptime is
    quick when it succeeds and slow when it fails, regular expressions are
    quick either way.
    """
    z = _sql_str(zone or "UTC")

    def read(fmt: str) -> str:
        call = f"try_strptime(s, {_sql_str(fmt)})"
        if "%z" in fmt:
            return f"timezone({z}, {call})"
        if fmt.endswith("Z"):
            return f"timezone({z}, timezone('UTC', {call}))"
        return call

    def match(pattern: str) -> str:
        return f"regexp_matches(s, {_sql_str(pattern)})"

    groups: list[list[str]] = []
    for fmt in formats:
        if groups and _layout(groups[-1][0]) == _layout(fmt):
            groups[-1].append(fmt)
        else:
            groups.append([fmt])
    branches = []
    for group in groups:
        patterns = [_format_regex(f, capture=False)[0] for f in group]
        if len(group) == 1:
            branches.append(f"WHEN {match(patterns[0])} THEN {read(group[0])}")
            continue
        either = "^(?:" + "|".join(p[1:-1] for p in patterns) + ")$"
        inner = " ".join(f"WHEN {match(p)} THEN {read(f)}" for p, f in zip(patterns, group))
        branches.append(f"WHEN {match(either)} THEN CASE {inner} ELSE NULL::TIMESTAMP END")
    return f"CASE {' '.join(branches)} ELSE NULL::TIMESTAMP END"


def _duckdb_date_parser(backend, formats: list[str], zone: str | None):
    """A DuckDB macro for :func:`_strptime_duckdb_sql` on ``backend``'s
    connection, as an ibis function of a string column. The macro keeps
    the long expression out of every query ibis compiles."""
    body = _strptime_duckdb_sql(formats, zone)
    name = "crmlab_dt_" + hashlib.sha1(body.encode()).hexdigest()[:12]
    backend.raw_sql(f"CREATE OR REPLACE TEMP MACRO {name}(s) AS ({body})")

    def fn(s):  # pragma: no cover - a signature for ibis, never called
        ...
    fn.__name__ = name
    return ibis.udf.scalar.builtin(name=name, signature=((idt.string,), idt.timestamp))(fn)


def parse_datetime(t: ir.Table, column: str, formats: list[str], zone: str | None = None,
                   *, backend=None, engine: str | None = None) -> ir.Table:
    """Parse a text column of dates in the engine; never raises.

    Adds ``<column>_parsed``: a naive timestamp in ``zone`` from the first
    of ``formats`` that matches (aware text, ``%z`` or a trailing ``Z``, is
    converted to ``zone``), NULL for text no format reads. On DuckDB this
    is ``try_strptime``; on other engines each format becomes a regular
    expression rewriting the text into fixed slots, then
    ``make_timestamp`` on validated components -- the same answer (a test
    holds them to it).

    Parameters
    ----------
    t : ibis.Table
    column : str
        A string column.
    formats : list of str
        strptime formats using the codes of :data:`FORMAT_TOKENS`;
        :func:`crmlab.schema.date_formats` gives the default list.
    zone : str, optional
        IANA timezone; default UTC.
    backend : ibis backend, optional
        Where the query will run; default the table's backend.
    engine : str, optional
        Force the route: ``"duckdb"`` or any other name for the portable
        one; default the backend's name.

    Returns
    -------
    ibis.Table
        ``t`` with ``<column>_parsed`` added.
    """
    if backend is None:
        backend = t._find_backend()
    engine = engine or backend.name
    name = f"{column}_parsed"
    rule = _date_rule(f"_t_{column}", formats, zone, backend, prefix=f"_p_{column}_",
                      engine=engine)
    w = _stage(t, {f"_t_{column}": _clean_text(t[column])}, engine)
    for stage in rule.stages:
        w = _stage(w, {k: f(w) for k, f in stage.items()}, engine)
    w = w.mutate(**{name: rule.value(w)})
    return w.select(*t.columns, name)


def _stage(t: ir.Table, columns: dict, engine: str) -> ir.Table:
    """Add helper columns as a subquery of their own, so a long expression
    is computed once, not pasted into each use. Outside DuckDB a window
    column fences the subquery (PostgreSQL pulls plain subqueries up into
    the outer query, which would paste the expressions back)."""
    if engine != "duckdb":
        columns = {**columns, f"_fence{len(t.columns)}": ibis.row_number().over()}
    return t.mutate(**columns).view()


def _date_rule(text_col: str, formats: list[str], zone: str | None, backend, prefix: str,
               engine: str | None = None) -> "_Rule":
    """The rule parsing a cleaned text column of dates (see
    :func:`parse_datetime`)."""
    if (engine or backend.name) == "duckdb":
        parse = _duckdb_date_parser(backend, formats, zone)
        return _Rule(value=lambda t: parse(t[text_col]), present=lambda t: t[text_col].notnull())
    canon = f"{prefix}k"
    stages = [{canon: lambda t: _canonical_dates(t[text_col], formats)}]
    comps = {f"{prefix}{k}": (lambda k: lambda t: _date_components(t[canon])[k])(k)
             for k in ("year", "month", "day", "hour", "hour_ok", "minute", "second",
                       "micro", "offset")}
    stages.append(comps)
    return _Rule(value=lambda t: _timestamp_from_components(t, prefix, zone),
                 present=lambda t: t[text_col].notnull(), stages=stages)


def _family(dtype: idt.DataType) -> str:
    if dtype.is_null():
        return "null"
    if dtype.is_string():
        return "string"
    if dtype.is_boolean():
        return "bool"
    if dtype.is_integer():
        return "int"
    if dtype.is_floating() or dtype.is_decimal():
        return "float"
    if dtype.is_timestamp():
        return "timestamp"
    if dtype.is_date():
        return "date"
    return str(dtype)


#: Source types a column of each logical type can be read from.
COMPATIBLE: dict[str, tuple[str, ...]] = {
    "id": ("int", "float", "string", "null"),
    "string": ("string", "int", "float", "bool", "date", "timestamp", "null"),
    "timestamp": ("timestamp", "date", "string", "null"),
    "date": ("timestamp", "date", "string", "null"),
    "float": ("float", "int", "bool", "string", "null"),
    "int": ("float", "int", "bool", "string", "null"),
    "bool": ("bool", "int", "string", "null"),
    "category": ("string", "int", "null"),
}
_EXPECTED = {"id": "integers or text", "string": "text", "timestamp": "a timestamp, date or text",
             "date": "a date, timestamp or text", "float": "numbers or text",
             "int": "numbers or text", "bool": "true/false, 0/1 or text",
             "category": "text or integer codes"}


@dataclass
class _Rule:
    """How a column is typed and checked. Each callable takes the work
    table: ``value(t)`` is the typed value, ``present(t)`` whether the
    source holds a value, ``failed(value, present)`` whether that value
    breaks ``check``; ``stages`` are helper columns computed first, one
    ``{name: f(t)}`` per stage (each stage is a subquery, so long
    expressions are written once)."""

    value: Any
    present: Any
    check: str | None = None
    failed: Any = None
    stages: list = field(default_factory=list)


@dataclass
class _Work:
    """One table on its way from raw to typed: ``expr`` has ``_row``, the
    raw value ``_r_<col>`` and the typed ``<col>`` of each contract column
    present; ``flags`` maps (column, check) to a boolean over ``expr``."""

    expr: ir.Table
    columns: list[str]
    flags: dict[tuple[str, str], ir.BooleanValue] = field(default_factory=dict)


# ----------------------------------------------------------------------------- SPEC

SPEC_FORMS = ("synthetic:<scenario>", "a directory of CSV/Parquet files", "a .duckdb file",
              "a postgresql:// URL")
_DUCKDB_SUFFIXES = (".duckdb", ".ddb", ".db")
_TEXT_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz")


def _redact(spec: str) -> str:
    """A SPEC fit for logs and report footers: no password."""
    if "://" not in spec:
        return spec
    u = urlparse(spec)
    if u.password:
        netloc = f"{u.username}:***@{u.hostname}" + (f":{u.port}" if u.port else "")
        u = u._replace(netloc=netloc)
    q = parse_qsl(u.query)
    if any(k.lower() == "password" for k, _ in q):
        u = u._replace(query=urlencode([(k, "***" if k.lower() == "password" else v)
                                        for k, v in q]))
    return urlunparse(u)


def _resolve(spec: str) -> tuple[str, Any]:
    if spec.startswith("synthetic:"):
        scenario = spec.split(":", 1)[1].strip()
        if not scenario:
            raise DataContractError("source synthetic: needs a scenario name, e.g. synthetic:demo")
        return "synthetic", scenario
    if spec.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        return "postgres", spec
    path = Path(spec).expanduser()
    if path.is_dir():
        return "files", path
    if path.is_file() and path.suffix.lower() in _DUCKDB_SUFFIXES:
        return "duckdb", path
    what = "does not exist" if not path.exists() else "is not a directory or a DuckDB file"
    raise DataContractError(f"unknown source {spec!r} ({what}); a source is one of: "
                            f"{'; '.join(SPEC_FORMS)}")


def _sql_str(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _quote(name: str) -> str:
    return '"' + str(name).replace('"', '""') + '"'


def _normalise_name(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


@functools.lru_cache(maxsize=1)
def _code_key() -> str:
    """The version of the code that types and checks a source (this module
    and the schema, by size and modification time): part of the caches'
    keys, so a changed check is never answered from an older cache."""
    parts = []
    for module in (__file__, schema.__file__):
        with contextlib.suppress(OSError):
            st = os.stat(module)
            parts.append(f"{Path(module).name}:{st.st_size}:{st.st_mtime_ns}")
    return ",".join(parts)


def _local_now(zone: str | None) -> dt.datetime:
    tz = zoneinfo.ZoneInfo(zone) if zone else None
    return dt.datetime.now(tz).replace(tzinfo=None, microsecond=0)


def _from_timestamp(ts: float, zone: str | None) -> dt.datetime:
    tz = zoneinfo.ZoneInfo(zone) if zone else None
    return dt.datetime.fromtimestamp(ts, tz).replace(tzinfo=None, microsecond=0)


# ----------------------------------------------------------------------------- Dataset

class Dataset:
    """An opened source: the contract's tables as ibis tables on one engine.

    Built by :func:`open_source`; see docs/internals.md "Dataset".

    Attributes
    ----------
    spec : str
        The SPEC as given (passwords redacted).
    kind : {"synthetic", "files", "duckdb", "postgres"}
    backend : ibis backend
    tables : list of str
        Canonical tables present, in contract order.
    encodings : dict
        ``{table: encoding}`` of the tables read from text files.
    extracted_at : datetime
        When the data was exported (naive, in the mapping's timezone).
    truth : Path or None
        A synthetic world's ``truth/`` folder.
    world : dict or None
        A synthetic world's ``world.json``.
    mapping : dict
        The validated mapping (:func:`load_mapping`).
    id_types : dict
        ``{id column: "int64" | "string"}``, one type per id across tables.
    notes : list of str
        Things worth knowing that are not errors (files ignored, mapped
        columns not found ...).
    """

    def __init__(self, *, spec: str, kind: str, backend, raw: dict[str, ir.Table],
                 mapping: dict, extracted_at: dt.datetime, origins: dict[str, str],
                 encodings: dict[str, str] | None = None, truth: Path | None = None,
                 world: dict | None = None, files: list[Path] | None = None,
                 notes: list[str] | None = None):
        self.spec = spec
        self.kind = kind
        self.backend = backend
        self.mapping = mapping
        self.extracted_at = extracted_at
        self.encodings = dict(encodings or {})
        self.truth = truth
        self.world = world
        self.origins = origins
        self.notes = list(notes or [])
        self._raw = raw
        self._files = list(files or [])
        self._engine = backend.name
        self.tables = [t for t in schema.TABLES if t in raw]
        self.id_types: dict[str, str] = {}
        self._id_points: set[tuple[str, str]] = set()   # text ids written 42.0
        self._work: dict[str, _Work] = {}
        self._typed: dict[str, ir.Table] = {}
        self._quarantine: dict[str, pd.DataFrame] = {}
        self._counts: dict[str, int] = {}
        self._fingerprint: str | None = None
        # databases that number rows with a window (PostgreSQL): the tables
        # without it, for typed views of tables with nothing quarantined
        self._unnumbered: dict[str, ir.Table] = {}

    # -- what is there
    def __repr__(self) -> str:
        return f"Dataset({self.spec!r}, kind={self.kind!r}, tables={self.tables})"

    def __enter__(self) -> "Dataset":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def columns(self, table: str) -> list[str]:
        """Contract columns present in a table, in contract order."""
        self._need(table)
        return [c for c in schema.TABLES[table].columns if c in self._raw[table].columns]

    def has(self, table: str, column: str | None = None) -> bool:
        """Whether the source has a table (and a contract column of it)."""
        if table not in self._raw:
            return False
        return column is None or column in self.columns(table)

    def _need(self, table: str) -> None:
        if table not in schema.TABLES:
            raise DataContractError(f"unknown table {table!r}; the contract has "
                                    f"{', '.join(schema.TABLES)}", table=table)
        if table not in self._raw:
            raise DataContractError(f"source has no table {table}", table=table)

    # -- the three views of a table
    def raw(self, name: str) -> ir.Table:
        """The table as found after renaming, before typing: every source
        column (contract ones under their canonical names) and ``_row``,
        the 1-based data row in the source."""
        self._need(name)
        return self._raw[name]

    def table(self, name: str) -> ir.Table:
        """The typed table: contract columns only, with the types of
        :mod:`crmlab.schema`, quarantined rows removed.

        Returns
        -------
        ibis.Table
            One row per usable source row; columns as :meth:`columns`.
        """
        self._need(name)
        if name not in self._typed:
            bad = self.quarantine_of(name)
            if not len(bad) and name in self._unnumbered:
                w = self._build(name, numbered=False)   # no row-number window needed
                self._typed[name] = w.expr.select(*w.columns)
                return self._typed[name]
            w = self.work(name)
            typed = w.expr.select("_row", *w.columns)
            if len(bad):
                rows = ibis.memtable(pd.DataFrame({"_row": sorted(set(bad["row"]))},
                                                  dtype="int64"))
                typed = typed.anti_join(rows, "_row")
            typed = typed.drop("_row")
            if self._engine == "duckdb" and self.count(name) <= CACHE_TYPED_ROWS:
                # a small table is typed once into a DuckDB temp table: each later
                # query reads it instead of parsing every date and number again,
                # and compiles a short SELECT instead of the whole typing chain
                typed = typed.cache()
            self._typed[name] = typed
        return self._typed[name]

    def to_pandas(self, name: str, columns: Iterable[str] | None = None) -> pd.DataFrame:
        """The typed table (or some of its columns) as a pandas frame.
        Dates arrive as datetime64 (never Python objects). Meant for small
        tables and results; aggregate big ones in the engine first."""
        t = self.table(name)
        if columns is not None:
            t = t.select(*columns)
        return t.to_pyarrow().to_pandas(date_as_object=False)

    # -- typing and checks (engine-side)
    def work(self, name: str) -> _Work:
        """The typed columns and quarantine predicates of a table (cached)."""
        self._need(name)
        if name not in self._work:
            self._work[name] = self._build(name)
        return self._work[name]

    def _build(self, name: str, numbered: bool = True) -> _Work:
        """Typed columns and quarantine flags of a table, as staged ibis
        expressions: raw ``_r_<col>`` -> cleaned text ``_t_<col>`` -> any
        helper stages -> typed ``<col>``; each stage a subquery."""
        contract = schema.TABLES[name]
        tmap = self.mapping["tables"][name]
        raw = self._raw[name] if numbered else self._unnumbered[name]
        cols = self.columns(name)
        w = raw.select(*(["_row"] if numbered else []), *[raw[c].name(f"_r_{c}") for c in cols])
        rules = {c: self._rule(name, contract.columns[c], w[f"_r_{c}"].type(), tmap)
                 for c in cols}
        texts = {f"_t_{c}": _clean_text(w[f"_r_{c}"]) for c in cols
                 if _family(w[f"_r_{c}"].type()) == "string"
                 and contract.columns[c].type not in ("string", "category")}
        if texts:
            w = _stage(w, texts, self._engine)
        for i in range(max((len(r.stages) for r in rules.values()), default=0)):
            stage = {k: f(w) for r in rules.values() if i < len(r.stages)
                     for k, f in r.stages[i].items()}
            w = _stage(w, stage, self._engine)
        w = w.mutate(**{c: rules[c].value(w) for c in cols}).view()
        lims = schema.limits(name, tmap["limits"])
        flags = {}
        for c in cols:
            col, rule = contract.columns[c], rules[c]
            v, present = w[c], rule.present(w)
            if rule.check is not None:
                flags[(c, rule.check)] = rule.failed(v, present)
            if col.required or c in contract.key:
                flags[(c, "not_null")] = ~present
            for which, bound in lims.get(c, {}).items():
                key = (c, schema.limit_check(name, c, which))
                broken = self._limit(v, col.type, which, bound)
                flags[key] = flags[key] | broken if key in flags else broken
        return _Work(expr=w, columns=cols, flags=flags)

    def _limit(self, value, kind: str, which: str, bound) -> ir.BooleanValue:
        if which == "future_days":
            cut = self.extracted_at + dt.timedelta(days=float(bound))
            return value > (ibis.literal(cut.date()) if kind == "date" else ibis.literal(cut))
        if kind in ("date", "timestamp"):
            b = dt.datetime.fromisoformat(str(bound))
            lit = ibis.literal(b.date()) if kind == "date" else ibis.literal(b)
        else:
            lit = ibis.literal(float(bound))
        return value < lit if which == "min" else value > lit

    def _rule(self, table: str, col: schema.Column, rtype: idt.DataType, tmap: dict) -> _Rule:
        """How one column is typed and checked, given its source type."""
        fam, kind, c = _family(rtype), col.type, col.name
        text = fam == "string"
        r, tx = f"_r_{c}", f"_t_{c}"   # raw value; cleaned text (text sources)
        notnull = lambda t: t[r].notnull()  # noqa: E731
        filled = lambda t: t[tx].notnull()  # noqa: E731
        is_null = lambda v, present: present & v.isnull()  # noqa: E731
        if fam == "null":
            target = schema.ibis_dtype(table, c, self.id_types.get(c, "int64"))
            return _Rule(lambda t: ibis.null(target), lambda t: ibis.literal(False))
        vmap = {**schema.VALUE_MAPS.get(table, {}).get(c, {}), **tmap["values"].get(c, {})}
        if kind == "id":
            want = idt.dtype(self.id_types.get(c, "int64"))
            if text:  # an int64 id read from text holds only integer text (checked at open)
                if (table, c) in self._id_points:   # "42.0" -> "42"
                    return _Rule(lambda t: t[tx].re_replace(_POINT_ZERO_RE, r"\1").cast(want),
                                 filled)
                return _Rule(lambda t: t[tx].cast(want), filled)
            if want.is_string():   # 42.0 in a float column is the id "42"
                return _Rule(lambda t: id_text(t[r]), notnull)
            return _Rule(lambda t: t[r].cast(want), notnull)
        if kind == "string":
            if not text:
                return _Rule(lambda t: t[r].cast(idt.string), notnull)
            if vmap:
                value = lambda t: _trim(t[r]).lower().substitute(vmap, else_=t[r])  # noqa: E731
            else:
                value = lambda t: t[r]  # noqa: E731
            return _Rule(value, lambda t: ~(t[r].isnull() | (_trim(t[r]) == "")))
        if kind in ("timestamp", "date"):
            zone = tmap["timezone"]
            if text:
                formats = tmap["date_format"].get(c) or schema.date_formats(tmap["dayfirst"])
                rule = _date_rule(tx, formats, zone, self.backend, prefix=f"_p_{c}_",
                                  engine=self._engine)
                rule.check, rule.failed = "parse_date", is_null
            elif fam == "timestamp" and rtype.timezone is not None:
                rule = _Rule(lambda t: _utc_to_local(
                    zone or "UTC", t[r].cast(idt.Timestamp(timezone="UTC"))), notnull)
            else:
                rule = _Rule(lambda t: t[r].cast(idt.timestamp), notnull)
            if kind == "date":
                parse = rule.value
                rule.value = lambda t: parse(t).date()
            return rule
        if kind in ("float", "int"):
            if text:
                num = lambda t: _parse_number(t[tx], tmap["decimal"])  # noqa: E731
            else:
                num = lambda t: t[r].cast(idt.float64)  # noqa: E731
            if kind == "int" and not text and fam == "int":
                value = lambda t: t[r].cast(idt.int64)  # noqa: E731  (already whole numbers)
            elif kind == "int":
                def value(t):
                    x = num(t)
                    return ibis.ifelse(x.notnull() & (x != x.floor()), ibis.null(idt.float64),
                                       x).cast(idt.int64)
            else:
                value = num
            check = "parse_number" if (text or (kind == "int" and fam == "float")) else None
            return _Rule(value, filled if text else notnull, check, is_null)
        if kind == "bool":
            if text:
                bmap = {**schema.BOOL_VALUES, **vmap}
                return _Rule(lambda t: t[tx].lower().substitute(bmap, else_=ibis.null(idt.boolean)),
                             filled, "out_of_domain", is_null)
            if fam == "bool":
                return _Rule(lambda t: t[r], notnull)
            return _Rule(lambda t: t[r] != 0, notnull)
        if kind == "category":
            # values already canonical skip the normalisation (most rows)
            domain = list(col.domain)
            as_text = (lambda t: t[r]) if text else (lambda t: t[r].cast(idt.string))  # noqa: E731

            def value(t):
                norm = _clean_text(as_text(t)).lower()
                norm = norm.substitute(vmap, else_=norm) if vmap else norm
                return ibis.ifelse(as_text(t).isin(domain), as_text(t), norm)
            return _Rule(value, lambda t: as_text(t).isin(domain) | ~is_blank(as_text(t)),
                         "out_of_domain", lambda v, present: present & ~v.isin(domain))
        raise AssertionError(kind)  # pragma: no cover - every logical type is handled

    # -- quarantine
    def quarantine_of(self, name: str) -> pd.DataFrame:
        """The quarantine of one table (cached): ``table, row, column, check``."""
        self._need(name)
        if name in self._quarantine:
            return self._quarantine[name]
        cached = self._quarantine_cache(name)
        if cached is not None and cached.is_file():
            out = pq.read_table(cached).to_pandas()
            self._quarantine[name] = out
            return out
        w = self.work(name)
        e = w.expr
        names = list(w.flags)
        frames = []
        if names:
            # one pass: the failing row numbers of each check as an array
            aggs = {f"_q{i}": e._row.collect(where=w.flags[k].fill_null(False))
                    for i, k in enumerate(names)}
            hits = e.aggregate(**aggs).to_pyarrow()
            for i, (column, check) in enumerate(names):
                rows = hits[f"_q{i}"][0].values
                if rows is not None and len(rows):
                    frames.append(pd.DataFrame({"table": name,
                                                "row": rows.to_numpy(zero_copy_only=False),
                                                "column": column, "check": check}))
        key = [k for k in schema.TABLES[name].key if k in w.columns]
        if key and len(key) == len(schema.TABLES[name].key):
            rows = self._duplicate_rows(name, e, key)
            if len(rows):
                frames.append(pd.DataFrame({"table": name, "row": rows, "column": "+".join(key),
                                            "check": "duplicate_key"}))
        out = (pd.concat(frames, ignore_index=True) if frames else
               pd.DataFrame({"table": [], "row": [], "column": [], "check": []}))
        out = out.astype({"table": "str", "row": "int64", "column": "str", "check": "str"})
        out = out.sort_values(["row", "column", "check"], ignore_index=True)
        self._quarantine[name] = out
        if cached is not None:
            with contextlib.suppress(OSError):   # a cache, never a reason to fail
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
                pq.write_table(pa.Table.from_pandas(out, preserve_index=False), tmp)
                os.replace(tmp, cached)
        return out

    def _quarantine_cache(self, name: str) -> Path | None:
        """Where a file source's quarantine of one table is cached: keyed by
        the fingerprint (names, sizes, modification times, mapping) and the
        directory, so the runner's contract check and the notebook compute
        it once. Row numbers and check names only, never values. Databases
        are not cached: their content can change under the same names."""
        if not self._files:
            return None
        where = str(sorted({str(f.resolve().parent) for f in self._files}))
        key = hashlib.sha256(f"{self.fingerprint}|{where}|{_code_key()}|{name}".encode()).hexdigest()[:24]
        return config.data_dir() / "_cache" / "quarantine" / f"{key}.parquet"

    def _open_cache(self) -> Path | None:
        """Where a file source's settled id types and passed contract check
        are cached, keyed like the quarantine (fingerprint, directory, the
        code that checks): the runner's contract check opens the source
        first, and the notebook's own :func:`open_source` then reads the
        verdict instead of typing and checking every table again. Only a
        source that passed is cached; a broken one is checked every time."""
        if not self._files:
            return None
        where = str(sorted({str(f.resolve().parent) for f in self._files}))
        key = hashlib.sha256(f"{self.fingerprint}|{where}|{_code_key()}|open".encode()).hexdigest()[:24]
        return config.data_dir() / "_cache" / "open" / f"{key}.json"

    def _settle_and_check(self) -> None:
        """:meth:`_settle_id_types` and :meth:`_check_contract`, or their
        cached outcome for a file source already opened with this code."""
        cached = self._open_cache()
        if cached is not None and cached.is_file():
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                doc = json.loads(cached.read_text(encoding="utf-8"))
                id_types = {str(k): str(v) for k, v in doc["id_types"].items()}
                points = {(str(t), str(c)) for t, c in doc["id_points"]}
                self.id_types, self._id_points = id_types, points
                return
        self._settle_id_types()
        self._check_contract()
        if cached is not None:
            with contextlib.suppress(OSError):   # a cache, never a reason to fail
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps({"id_types": self.id_types,
                                           "id_points": sorted(self._id_points)}), encoding="utf-8")
                os.replace(tmp, cached)

    def _keys_unique(self, name: str, key: list[str]) -> bool:
        """DuckDB, one integer key: True when a bitmap over the key's range
        (``bitstring_agg``, one pass, no hash table) proves every key
        distinct; False when it cannot tell."""
        raw = self._raw[name]
        if self._engine != "duckdb" or len(key) != 1 or _family(raw[key[0]].type()) != "int":
            return False
        col = raw[key[0]]
        lo, hi, n = raw.aggregate(lo=col.min(), hi=col.max(), n=col.count()).to_pyarrow(
            ).to_pylist()[0].values()
        if not n:
            return True
        if hi - lo + 1 > max(8 * n, 1 << 20):   # sparse keys: a bitmap would be too big
            return False
        inner = self.backend.compile(raw.select(_k=col.cast(idt.int64)))
        distinct = self.backend.raw_sql(
            f"SELECT bit_count(bitstring_agg(_k, {int(lo)}, {int(hi)})) FROM ({inner})"
        ).fetchall()[0][0]
        return distinct == n

    def _duplicate_rows(self, name: str, e: ir.Table, key: list[str]) -> np.ndarray:
        """Rows whose key an earlier row already has. Integer keys proven
        unique by a bitmap skip the rest; otherwise one hash aggregate finds
        the repeated keys and only their rows are fetched (ids and row
        numbers, never other values)."""
        if self._keys_unique(name, key):
            return np.empty(0, dtype="int64")
        k = e.select("_row", *key).filter(ibis.and_(*[e[c].notnull() for c in key]))
        repeated = k.group_by(key).aggregate(_n=k.count()).filter(lambda t: t._n > 1)
        keys = repeated.select(*key).to_pyarrow()
        if keys.num_rows == 0:
            return np.empty(0, dtype="int64")
        if len(key) == 1 and keys.num_rows <= 10_000:
            hit = k.filter(k[key[0]].isin(keys.column(0).to_pylist()))
        else:
            hit = k.semi_join(ibis.memtable(keys), key)
        found = hit.to_pyarrow().to_pandas().sort_values("_row")
        return found.loc[found.duplicated(key), "_row"].to_numpy("int64")

    @property
    def quarantine(self) -> pd.DataFrame:
        """Every quarantined row, once per failed check: a pandas frame
        ``table, row, column, check`` (``row`` = 1-based data row in the
        source; never a value). Computed once, in the engine."""
        return pd.concat([self.quarantine_of(t) for t in self.tables], ignore_index=True)

    def count(self, name: str) -> int:
        """Rows of a table as found (quarantined ones included)."""
        self._need(name)
        if name not in self._counts:
            self._counts[name] = int(self._raw[name].count().to_pyarrow().as_py())
        return self._counts[name]

    @property
    def row_counts(self) -> dict[str, dict[str, int]]:
        """``{table: {"rows": rows as found, "quarantined": distinct rows
        quarantined}}``."""
        return {t: {"rows": self.count(t),
                    "quarantined": int(self.quarantine_of(t)["row"].nunique())}
                for t in self.tables}

    @property
    def fingerprint(self) -> str:
        """A short hex digest of what was read: files by name, size and
        modification time (plus ``world.json``); databases by table names,
        row counts and newest dates; and the mapping."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(json.dumps(self.mapping, sort_keys=True, default=str).encode())
            if self._files:
                for f in sorted(self._files):
                    st = f.stat()
                    h.update(f"{f.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            else:
                for t in self.tables:
                    raw = self._raw[t]
                    dates = [c for c in self.columns(t)
                             if schema.TABLES[t].columns[c].type in ("date", "timestamp")]
                    aggs = {"_n": raw.count()}
                    aggs.update({f"_m{i}": raw[c].max().cast(idt.string)
                                 for i, c in enumerate(dates[:2])})
                    vals = raw.aggregate(**aggs).to_pyarrow().to_pylist()[0]
                    h.update(f"{t}|{json.dumps(vals, sort_keys=True, default=str)}\n".encode())
            if self.world is not None:
                h.update(json.dumps(self.world, sort_keys=True, default=str).encode())
            self._fingerprint = h.hexdigest()[:12]
        return self._fingerprint

    def close(self) -> None:
        """Release the engine connection (CSV tables loaded into memory go
        with it)."""
        # the temp tables of small typed tables go first, while the connection is
        # open (else ibis tries when they are collected, on a closed connection)
        for typed in self._typed.values():
            if isinstance(typed, ir.CachedTable):
                with contextlib.suppress(Exception):
                    typed.release()
        with contextlib.suppress(Exception):
            self.backend.disconnect()

    # -- contract check at open
    def _settle_id_types(self) -> None:
        """One type per id across tables: int64 when every table stores it
        as numbers (text sources: when every value is integer text without
        leading zeros, ``42.0`` counting as ``42``), else string. As string,
        a number is written as the integer it holds (:func:`id_text`), so
        ``42`` in one file meets ``42.0`` in another, while ``00042`` stays
        apart from ``42``."""
        found: dict[str, list[tuple[str, str]]] = {}
        for t in self.tables:
            raw = self._raw[t]
            for c in self.columns(t):
                if schema.TABLES[t].columns[c].type == "id":
                    found.setdefault(c, []).append((t, _family(raw[c].type())))
        for idcol, where in found.items():
            fams = {f for _, f in where} - {"null"}
            texts = [t for t, f in where if f == "string"]
            numeric = fams - {"string"} <= {"int", "float"}
            if numeric and texts:
                # text ids count as integers only from CSV text and when every
                # value is integer text without leading zeros
                kinds = {t: self._integer_text(t, idcol) for t in texts
                         if t in self.encodings}
                numeric = len(kinds) == len(texts) and all(ok for ok, _ in kinds.values())
                self._id_points |= {(t, idcol) for t, (_, point) in kinds.items() if point}
            self.id_types[idcol] = "int64" if numeric and fams else "string"

    def _integer_text(self, table: str, column: str) -> tuple[bool, bool]:
        """(every value is integer text or blank, some value ends in ``.0``)."""
        r = self._raw[table][column]
        t = _trim(r)
        got = self._raw[table].aggregate(
            _ok=(is_blank(r) | t.re_search(_INT_RE)).min(),
            _point=t.re_search(_POINT_ZERO_RE).max()).to_pyarrow().to_pylist()[0]
        return got["_ok"] in (True, None), bool(got["_point"])

    def _types_as_contract(self, table: str, typed: ir.Table) -> bool:
        """True when a typed table has every required column and each column
        has exactly its contract dtype: then pandera's presence and type
        check (not strict, nullable, no row checks) passes, and it is not
        run (importing pandera and validating cost about a second per open).
        Anything else goes to pandera, which words the failures."""
        contract = schema.TABLES[table]
        if any(c not in typed.columns for c in contract.required_columns):
            return False
        return all(typed[c].type() == schema.ibis_dtype(table, c, self.id_types.get(c, "int64"))
                   for c in typed.columns)

    def _check_contract(self) -> None:
        """Presence and types of every table and column, all failures at
        once (pandera, ``lazy=True``, for the tables a plain dtype
        comparison does not clear); raises DataContractError."""

        failures: list[tuple[str, str | None, str]] = []
        if "orders" not in self._raw:
            failures.append(("orders", None, "required table orders is missing"))
        for t in self.tables:
            raw = self._raw[t]
            contract = schema.TABLES[t]
            ok_cols = []
            for c in self.columns(t):
                fam = _family(raw[c].type())
                kind = contract.columns[c].type
                if fam not in COMPATIBLE[kind]:
                    failures.append((t, c, f"column {c} holds {raw[c].type()}, expected "
                                           f"{_EXPECTED[kind]}"))
                else:
                    ok_cols.append(c)
            def missing(c: str) -> None:
                mapped = [k for k, v in self.mapping["tables"][t]["columns"].items() if v == c]
                hint = (f" (mapped from {mapped[0]!r}, which the source does not have)"
                        if mapped else "")
                failures.append((t, c, f"required column {c} is missing{hint}"))

            if not ok_cols:   # no contract column at all: nothing for pandera to type
                for c in contract.required_columns:
                    if c not in raw.columns:
                        missing(c)
                continue
            w = self.work(t)
            typed = w.expr.select(*[c for c in w.columns if c in ok_cols])
            if self._types_as_contract(t, typed):
                continue   # what pandera would find: every required column, every type as the contract's
            import pandera.errors as pe

            sch = schema.pandera_schema(t, backend="ibis", id_types=self.id_types)
            try:
                sch.validate(typed, lazy=True)
            except pe.SchemaErrors as exc:
                for _, f in exc.failure_cases.iterrows():
                    if f["check"] == "column_in_dataframe":
                        c = str(f["failure_case"])
                        if c in ok_cols or c in raw.columns:
                            continue  # reported above as a wrong type
                        missing(c)
                    else:
                        c = str(f["column"])
                        failures.append((t, c, f"column {c} has type {f['failure_case']}, "
                                               f"contract type {f['check']}"))
            except pe.SchemaError as exc:  # pragma: no cover - lazy=True collects
                failures.append((t, None, str(exc.reason_code)))
        if failures:
            failures.sort(key=lambda f: f[0] != "orders")   # the required table first
            lines = [f"  - table {t}: {msg}" for t, _, msg in failures]
            found = {t: ", ".join(c for c in self._raw[t].columns if c != "_row")
                     for t, _, _ in failures if t in self._raw}
            lines += [f"  (table {t} has columns: {cols})" for t, cols in found.items()]
            t0, c0, _ = failures[0]
            err = DataContractError(
                f"source {self.spec} does not meet the data contract:\n" + "\n".join(lines),
                table=t0, column=c0, check="contract")
            err.failures = [(t, c) for t, c, _ in failures]
            raise err


# ----------------------------------------------------------------------------- openers

def _find_file(directory: Path, name: str, declared: str | None) -> Path | None:
    if declared:
        p = directory / declared
        if not p.is_file():
            raise DataContractError(f"file {declared} (mapped to table {name}) not found in "
                                    f"{directory}", table=name)
        return p
    for suffix in (".parquet", ".csv", ".tsv", ".csv.gz", ".tsv.gz", ".txt"):
        p = directory / f"{name}{suffix}"
        if p.is_file():
            return p
    return None


def _empty_text(path: Path) -> bool:
    """Whether a text file holds nothing but a byte-order mark and white
    space (no header, no rows)."""
    with _open_binary(path) as fh:
        chunk = fh.read(_CHUNK)
        if chunk.startswith(codecs.BOM_UTF8):
            chunk = chunk[len(codecs.BOM_UTF8):]
        while chunk:
            if chunk.strip(b" \t\r\n"):
                return False
            chunk = fh.read(_CHUNK)
    return True


def _empty_table(tname: str, path: Path, what: str, notes: list[str]) -> None:
    """An empty file: ``orders`` (required) means no data; an optional
    table is treated as absent, with a note."""
    if tname == "orders":
        raise NoDataError(f"table orders is empty: file {path.name} {what}")
    notes.append(f"table {tname}: file {path.name} {what}; treated as absent")


def _has_rows(t: ir.Table) -> bool:
    """Whether a table holds at least one row (reads one row at most)."""
    return bool(t.limit(1).count().to_pyarrow().as_py())


def _empty_db_table(tname: str, src: str, t: ir.Table, notes: list[str]) -> bool:
    """A database table without rows is read like a file with a header and
    no rows: an optional table is absent, with a note (True); ``orders``
    stays, with zero rows, and the run's contract check refuses it."""
    if tname == "orders" or _has_rows(t):
        return False
    notes.append(f"table {tname}: database table {src} has no rows; treated as absent")
    return True


def _open_files(directory: Path, mapping: dict) -> dict:
    """CSV/Parquet directory -> in-memory DuckDB with one raw view per table.

    An empty file (no header, or an optional table's header without rows)
    is no table: ``orders`` raises :class:`NoDataError`, an optional table
    is left out with a note. A header-only ``orders`` stays (zero rows)."""
    con = _duckdb_connect()
    raw, origins, encodings, files, notes = {}, {}, {}, [], []
    tmp = Path(tempfile.mkdtemp(prefix="crmlab-src-"))
    try:
        for tname in schema.TABLES:
            tmap = mapping["tables"][tname]
            path = _find_file(directory, tname, tmap.get("source"))
            if path is None:
                continue
            files.append(path)
            view = f"raw_{tname}"
            name = path.name.lower()
            if name.endswith(".parquet"):
                try:
                    n_rows = pq.ParquetFile(path).metadata.num_rows
                except Exception:  # pyarrow.ArrowInvalid, OSError: not Parquet
                    raise DataContractError(f"file {path.name} could not be read as Parquet",
                                            table=tname, check="read_parquet") from None
                if n_rows == 0 and tname != "orders":
                    _empty_table(tname, path, "has no rows", notes)
                    continue
                try:
                    con.raw_sql(
                        f"CREATE VIEW {_quote(view)} AS SELECT file_row_number + 1 AS _row, "
                        f"* EXCLUDE (file_row_number) FROM read_parquet({_sql_str(path)}, "
                        f"file_row_number = true)")
                except Exception:  # duckdb.Error
                    raise DataContractError(f"file {path.name} could not be read as Parquet",
                                            table=tname, check="read_parquet") from None
            elif name.endswith(_TEXT_SUFFIXES):
                if _empty_text(path):
                    _empty_table(tname, path, "is empty (no header, no rows)", notes)
                    continue
                enc = detect_encoding(path, tmap.get("encoding"))
                encodings[tname] = enc
                src = path
                if enc not in ("utf-8", "utf_8"):
                    src = _transcode(path, enc, tmp / f"{tname}.csv")
                delim = tmap.get("delimiter") or ("\t" if ".tsv" in name else None)
                opts = ["header = true", "all_varchar = true"]
                if delim:
                    opts.append(f"delim = {_sql_str(delim)}")
                try:
                    con.raw_sql(f"CREATE TABLE {_quote('csv_' + tname)} AS SELECT * FROM "
                                f"read_csv({_sql_str(src)}, {', '.join(opts)})")
                except Exception as exc:  # duckdb.Error; its text may quote cells
                    line = re.search(r"[Ll]ine:? ?(\d+)", str(exc))
                    at = f" near line {line.group(1)}" if line else ""
                    raise DataContractError(
                        f"file {path.name} could not be read as CSV{at}; check the delimiter, "
                        f"quoting and encoding in the mapping", table=tname, check="read_csv"
                    ) from None
                if tname != "orders" and not con.raw_sql(
                        f"SELECT count(*) FROM {_quote('csv_' + tname)}").fetchone()[0]:
                    con.raw_sql(f"DROP TABLE {_quote('csv_' + tname)}")
                    _empty_table(tname, path, "has a header and no rows", notes)
                    continue
                con.raw_sql(f"CREATE VIEW {_quote(view)} AS SELECT rowid + 1 AS _row, * "
                            f"FROM {_quote('csv_' + tname)}")
            else:
                notes.append(f"table {tname}: file {path.name} is neither CSV nor Parquet; "
                             f"ignored")
                continue
            raw[tname] = con.table(view)
            origins[tname] = path.name
    except BaseException:
        con.disconnect()
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    newest = max((f.stat().st_mtime for f in files), default=None)
    return dict(backend=con, raw=raw, origins=origins, encodings=encodings, files=files,
                notes=notes, newest=newest)


def _open_duckdb(path: Path, mapping: dict) -> dict:
    con = _duckdb_connect()
    try:
        con.raw_sql(f"ATTACH {_sql_str(path)} AS src (READ_ONLY)")
    except Exception:
        con.disconnect()
        raise DataContractError(f"DuckDB file {path.name} could not be opened read-only (is it "
                                f"a DuckDB database, and not open for writing elsewhere?)"
                                ) from None
    sch = mapping.get("schema") or "main"
    objects = con.raw_sql(
        "SELECT table_name, 'table' FROM duckdb_tables() WHERE database_name = 'src' "
        f"AND schema_name = {_sql_str(sch)} UNION ALL SELECT view_name, 'view' FROM "
        f"duckdb_views() WHERE database_name = 'src' AND schema_name = {_sql_str(sch)} "
        "AND NOT internal").fetchall()
    kinds = dict(objects)
    raw, origins, notes = {}, {}, []
    for tname in schema.TABLES:
        src = mapping["tables"][tname].get("source") or tname
        if src not in kinds:
            if mapping["tables"][tname].get("source"):
                con.disconnect()
                raise DataContractError(f"table {src} (mapped to {tname}) not found in "
                                        f"{path.name}", table=tname)
            continue
        ref = f"src.{_quote(sch)}.{_quote(src)}"
        row = "rowid + 1" if kinds[src] == "table" else "row_number() OVER ()"
        con.raw_sql(f"CREATE VIEW {_quote('raw_' + tname)} AS SELECT {row} AS _row, * "
                    f"FROM {ref}")
        t = con.table(f"raw_{tname}")
        if _empty_db_table(tname, src, t, notes):
            con.raw_sql(f"DROP VIEW {_quote('raw_' + tname)}")
            continue
        raw[tname] = t
        origins[tname] = src
    return dict(backend=con, raw=raw, origins=origins, notes=notes)


def _duckdb_connect():
    """An in-memory DuckDB; its thread pool follows ``CRMLAB_THREADS`` when a
    parallel run-all shares the cores between reports."""
    threads = os.environ.get("CRMLAB_THREADS")
    return ibis.duckdb.connect(threads=int(threads)) if threads else ibis.duckdb.connect()


def _open_postgres(url: str, mapping: dict) -> dict:
    u = urlparse(url)
    query = dict(parse_qsl(u.query))
    db, *rest = (u.path or "/").lstrip("/").split("/", 1)
    kwargs: dict[str, Any] = {"database": unquote(db) or None}
    sch = query.pop("schema", None) or (rest[0] if rest else None) or mapping.get("schema")
    if u.hostname or "host" in query:
        kwargs["host"] = query.pop("host", None) or u.hostname
    if u.port:
        kwargs["port"] = u.port
    if u.username:
        kwargs["user"] = unquote(u.username)
    if u.password:
        kwargs["password"] = unquote(u.password)
    kwargs.update(query)
    try:
        con = ibis.postgres.connect(schema=sch, **kwargs)
    except Exception as exc:
        reason = type(exc).__name__
        text = str(exc).lower()
        # wrong credentials or database name will not pass by themselves: bad input;
        # a server that refuses, times out or is starting up may: retryable
        permanent = any(s in text for s in ("authentication failed", "does not exist",
                                            "no password supplied", "permission denied"))
        if reason == "OperationalError" and not permanent:
            raise SourceUnavailable(f"PostgreSQL at {_redact(url)} did not answer ({reason})"
                                    ) from None
        raise DataContractError(f"could not connect to PostgreSQL at {_redact(url)} ({reason})"
                                ) from None
    found = set(con.list_tables(database=sch) if sch else con.list_tables())
    raw, origins, unnumbered, notes = {}, {}, {}, []
    for tname, contract in schema.TABLES.items():
        src = mapping["tables"][tname].get("source") or tname
        if src not in found:
            if mapping["tables"][tname].get("source"):
                con.disconnect()
                raise DataContractError(f"table {src} (mapped to {tname}) not found in the "
                                        f"database", table=tname)
            continue
        t = con.table(src, database=sch) if sch else con.table(src)
        if _empty_db_table(tname, src, t, notes):
            continue
        rename = _renames(list(t.columns), mapping["tables"][tname]["columns"], contract)
        # position in key order, ties broken by the other contract columns
        canon = {rename.get(c, c): c for c in t.columns}
        order = [c for c in contract.row_order if c in canon]
        order += [c for c in contract.columns if c in canon and c not in order]
        keys = [t[canon[c]] for c in order] or [t[c] for c in t.columns]
        raw[tname] = t.mutate(_row=ibis.row_number().over(order_by=keys) + 1)
        unnumbered[tname] = t
        origins[tname] = src
    return dict(backend=con, raw=raw, origins=origins, unnumbered=unnumbered, notes=notes)


def _renames(columns: list[str], declared: dict[str, str], contract: schema.Table
             ) -> dict[str, str]:
    """foreign -> canonical for a table's columns: the mapping's renames,
    then names that match a contract column after trimming and case-folding."""
    out = {c: declared[c] for c in columns if c in declared}
    taken = set(out.values()) | {c for c in columns if c in contract.columns and c not in out}
    for c in columns:
        if c in out or c in contract.columns:
            continue
        n = _normalise_name(c)
        if n in contract.columns and n not in taken:
            out[c] = n
            taken.add(n)
    return out


def _apply_renames(t: ir.Table, tname: str, declared: dict[str, str],
                   notes: list[str] | None, fill: Mapping[str, Any] | None = None) -> ir.Table:
    """Canonical names for a table's columns (:func:`_renames`), and the
    mapping's ``fill`` constants for contract columns it lacks."""
    contract = schema.TABLES[tname]
    cols = [c for c in t.columns if c != "_row"]
    rename = _renames(cols, declared, contract)
    for f in declared:
        if f not in cols and notes is not None:
            notes.append(f"table {tname}: mapped column {f!r} -> {declared[f]} not in the "
                         f"source")
    # a source column already named like a mapped target keeps its data
    # under <name>_original
    clash = {c: f"{c}_original" for c in cols if c in rename.values() and c not in rename}
    sel = [t["_row"]] if "_row" in t.columns else []
    names = []
    for c in cols:
        new = rename.get(c) or clash.get(c) or c
        sel.append(t[c].name(new))
        names.append(new)
    for c, value in (fill or {}).items():
        if c not in names:   # the export's own column wins over a fill
            sel.append(ibis.literal(value).name(c))
    return t.select(*sel)


def _world_dir(scenario: str) -> Path:
    import importlib

    try:
        synthetic = importlib.import_module("crmlab.synthetic")
    except ImportError:
        raise DataContractError("synthetic sources need crmlab.synthetic, which is not "
                                "installed") from None
    return Path(synthetic.ensure_world(scenario))


def _read_world(directory: Path) -> dict | None:
    p = directory / "world.json"
    if not p.is_file():
        return None
    return json.loads(p.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- public

def open_source(spec: str | None = None, mapping: str | os.PathLike | dict | None = None
                ) -> Dataset:
    """Open a data source as a :class:`Dataset`.

    Parameters
    ----------
    spec : str, optional
        ``synthetic:<scenario>``, a directory of CSV/Parquet files, a
        ``.duckdb`` file or a ``postgresql://`` URL; default
        ``config.DEFAULT_SOURCE``.
    mapping : str, Path or dict, optional
        A source mapping (:func:`load_mapping`).

    Returns
    -------
    Dataset
        Cheap to open: views only; the quarantine is computed on first use.

    Raises
    ------
    DataContractError
        Unknown SPEC (with the accepted forms); a missing required table or
        column, or a column of an unusable type (every failure, named by
        table and column, never a value); an unreadable file.
    ParameterError
        A bad mapping.

    Examples
    --------
    >>> ds = open_source("examples/shop-export", "shop-export")   # doctest: +SKIP
    >>> ds.table("orders").amount.sum().execute()                 # doctest: +SKIP
    """
    spec = str(spec) if spec not in (None, "") else config.DEFAULT_SOURCE
    m = load_mapping(mapping)
    kind, target = _resolve(spec)
    zone = m["tables"]["orders"]["timezone"]
    truth = world = None
    if kind == "synthetic":
        target = _world_dir(target)
    if kind in ("synthetic", "files"):
        world = _read_world(target)
        if world is not None:
            kind = "synthetic"
            truth = target / "truth" if (target / "truth").is_dir() else None
        opened = _open_files(target, m)
        if world is not None and world.get("end"):
            extracted = dt.datetime.fromisoformat(str(world["end"]))
        elif opened["newest"] is not None:
            extracted = _from_timestamp(opened["newest"], zone)
        else:
            extracted = _local_now(zone)
        files = opened["files"] + ([target / "world.json"] if world is not None else [])
    elif kind == "duckdb":
        opened = _open_duckdb(target, m)
        extracted, files = _local_now(zone), []
    else:
        opened = _open_postgres(target, m)
        extracted, files = _local_now(zone), []
    notes = opened.get("notes", [])
    raw = {t: _apply_renames(r, t, m["tables"][t]["columns"], notes, m["tables"][t]["fill"])
           for t, r in opened["raw"].items()}
    unnumbered = {t: _apply_renames(r, t, m["tables"][t]["columns"], None,
                                    m["tables"][t]["fill"])
                  for t, r in opened.get("unnumbered", {}).items()}
    ds = Dataset(spec=_redact(spec), kind=kind, backend=opened["backend"], raw=raw, mapping=m,
                 extracted_at=extracted, origins=opened["origins"],
                 encodings=opened.get("encodings"), truth=truth, world=world, files=files,
                 notes=notes)
    ds._unnumbered = unnumbered
    try:
        ds._settle_and_check()
    except Exception:
        ds.close()
        raise
    return ds


def no_usable_rows(ds: Dataset, mapping: str | os.PathLike | None = None,
                   table: str = "orders", most: int = 3) -> str:
    """The sentence refusing a source whose ``table`` has no usable rows:
    why, with counts and checks, never a value.

    An empty table says what is empty ("table orders is empty (the file has
    a header and no rows)"); a table whose every row is quarantined names
    the row count and the ``most`` frequent checks with their rows, and
    where to look::

        table orders has no usable rows in this source: all 240 rows are
        quarantined (status out_of_domain: 180, amount absurd_amount: 60);
        see `crmlab validate --source DIR` or map the values in a source mapping

    Reads the row counts and the quarantine the Dataset already computed
    (cached), so it also works after ``ds.close()``.
    """
    import shlex

    n = ds.row_counts[table]["rows"]
    if n == 0:
        origin = str(ds.origins.get(table, ""))
        what = ("the database table has no rows" if ds.kind in ("duckdb", "postgres") else
                "the file has no rows" if origin.lower().endswith(".parquet") else
                "the file has a header and no rows")
        return f"table {table} is empty ({what})"
    q = ds.quarantine_of(table)
    per = (q.groupby(["column", "check"], sort=False)["row"].nunique()
           .sort_values(ascending=False, kind="stable"))
    checks = [f"{c} {chk}: {k:,}" for (c, chk), k in per.head(most).items()]
    if len(per) > most:
        checks.append(f"{len(per) - most} more check{'s' if len(per) - most > 1 else ''}")
    command = f"crmlab validate --source {shlex.quote(ds.spec)}"
    if mapping:
        command += f" --mapping {shlex.quote(str(mapping))}"
    return (f"table {table} has no usable rows in this source: all {n:,} rows are quarantined "
            f"({', '.join(checks)}); see `{command}` or map the values in a source mapping")


def validate_command(spec: str | None, mapping: str | os.PathLike | dict | None = None
                     ) -> tuple[int, str]:
    """``crmlab validate``: check a source against the contract.

    Returns
    -------
    (int, str)
        The exit code -- 0 the contract holds, 2 it does not (or the SPEC
        or mapping is bad), 3 ``orders`` has no usable rows -- and the
        printable report: source, tables with rows, quarantined rows and
        encodings, columns present, quarantine counts per column and check.
        Never a data value.
    """
    from crmlab.exceptions import CrmlabError

    try:
        ds = open_source(spec, mapping)
    except (DataContractError, ParameterError) as exc:
        return exc.exit_code, f"contract: FAILED\n{exc}"
    except CrmlabError as exc:
        return exc.exit_code, f"contract: FAILED\n{exc}"
    with ds:
        counts = ds.row_counts
        q = ds.quarantine
        lines = [f"source: {ds.spec} ({ds.kind}"
                 + (f", mapping {ds.mapping['name']}" if ds.mapping.get("name") else "") + ")",
                 f"extracted at: {ds.extracted_at:%Y-%m-%d %H:%M}   fingerprint: "
                 f"{ds.fingerprint}", ""]
        head = ("table", "from", "rows", "quarantined", "encoding")
        rows = [(t, ds.origins.get(t, ""), f"{counts[t]['rows']:,}",
                 f"{counts[t]['quarantined']:,}", ds.encodings.get(t, "")) for t in ds.tables]
        widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
        for r in [head, *rows]:
            lines.append("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
        lines.append("")
        for t in ds.tables:
            present = ds.columns(t)
            absent = [c for c in schema.TABLES[t].columns if c not in present]
            lines.append(f"{t}: {', '.join(present)}")
            if absent:
                lines.append(f"  not in source: {', '.join(absent)}")
        missing = [t for t in schema.TABLES if t not in ds.tables]
        if missing:
            lines.append(f"tables not in source: {', '.join(missing)}")
        if len(q):
            lines += ["", "quarantined rows per check:"]
            order = {t: i for i, t in enumerate(schema.TABLES)}
            agg = (q.groupby(["table", "column", "check"]).size().reset_index(name="n")
                   .sort_values(["table", "n"], key=lambda c: c.map(order) if c.name == "table"
                                else -c).set_index(["table", "column", "check"])["n"])
            labels = [f"{t}.{c}" for t, c, _ in agg.index]
            width = max(map(len, labels))
            for label, ((_, _, chk), n) in zip(labels, agg.items()):
                lines.append(f"  {label:<{width}}  {chk:<17}  {n:>9,}  {schema.CHECKS[chk]}")
        for note in ds.notes:
            lines.append(f"note: {note}")
        usable = counts["orders"]["rows"] - counts["orders"]["quarantined"]
        lines.append("")
        if usable <= 0:
            why = "is empty" if counts["orders"]["rows"] == 0 else "has no usable rows"
            lines.append(f"contract: NO DATA (table orders {why})")
            return config.EXIT_NO_DATA, "\n".join(lines)
        lines.append(f"contract: OK (orders: {usable:,} usable rows)")
        return config.EXIT_OK, "\n".join(lines)


__all__ = ["Dataset", "detect_encoding", "id_text", "is_blank", "load_mapping",
           "no_usable_rows", "open_source", "validate_command"]
