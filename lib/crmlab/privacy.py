"""Masking and escaping for pages that stakeholders read.

DESIGN.md "Anatomy of a report page": tables shown to stakeholders are
masked -- emails ``z***@example.com``, phones ``138****5678``, names ``张*`` /
``J*** S.``, no national ids, addresses reduced to the city, birth dates to an
age band -- every value from the data is HTML-escaped, and groups smaller than
``config.MIN_GROUP_SIZE`` customers are not shown individually.

Which column holds which kind of personal data comes from the data contract
(``crmlab.schema``, the PII class of each column) when it is available, else
from :data:`COLUMN_PII`, a plain name map. The masking rule of each class is
in :data:`MASKERS`. Analysts (``audience="analyst"``) see their data as it is.
"""

from __future__ import annotations

import datetime as dt
import html
import math
import re
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit, urlunsplit

import pandas as pd

from crmlab import config

AUDIENCES = ("stakeholder", "analyst")

# column name -> PII class, used when crmlab.schema does not say (foreign
# exports, derived tables such as duplicate pairs: ``email_a`` matches ``email``)
COLUMN_PII: dict[str, str] = {
    "name": "name", "full_name": "name", "customer_name": "name", "first_name": "name",
    "last_name": "name", "contact_name": "name",
    "email": "email", "e_mail": "email", "mail": "email",
    "phone": "phone", "mobile": "phone", "telephone": "phone", "tel": "phone",
    "phone_number": "phone", "cellphone": "phone",
    "national_id": "national_id", "id_number": "national_id", "id_card": "national_id",
    "ssn": "national_id", "passport": "national_id",
    "address": "address", "street": "address", "street_address": "address",
    "birth_date": "birth_date", "birthday": "birth_date", "date_of_birth": "birth_date",
    "dob": "birth_date",
}

# age bands for birth dates: (lowest age, label), ascending
AGE_BANDS: list[tuple[int, str]] = [
    (0, "under 18"), (18, "18-24"), (25, "25-34"), (35, "35-44"), (45, "45-54"),
    (55, "55-64"), (65, "65+"),
]

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]")
_EMAIL_IN_TEXT = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# "<province 省/自治区> <city 市>", else a county 县, prefecture 州 or league 盟
_CN_CITY = [re.compile(r"^(?:.{1,10}?(?:省|自治区))?(.{1,8}?%s)" % s) for s in "市县州盟"]
# "<city>, ST 12345" -- the last line of a US-style address
_US_CITY = re.compile(r"(?:^|\n|,)\s*([^,\n\d]+?),?\s+[A-Z]{2}\s+\d{5}(?:-\d{4})?\s*$")
_PHONE_IN_TEXT = re.compile(r"\+?\d[\d\s().-]{6,}\d")
_DATE_START = re.compile(r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}")


def _missing(value) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def escape(value) -> str:
    """HTML-escape one value for a page (quotes included); missing -> ``""``.

    Examples
    --------
    >>> escape('<script>alert(1)</script>')
    '&lt;script&gt;alert(1)&lt;/script&gt;'
    """
    if _missing(value):
        return ""
    return html.escape(str(value), quote=True)


def mask_email(value):
    """Keep the first character of the local part and the domain.

    Examples
    --------
    >>> mask_email("zhangsan@example.com")
    'z***@example.com'
    """
    if _missing(value):
        return value
    text = str(value).strip()
    local, at, domain = text.rpartition("@")
    if not at or not local:
        return "***"
    return f"{local[0]}***@{domain}"


def _national_digits(text: str) -> tuple[str, str]:
    """(country prefix to show, national number digits) of a phone string."""
    digits = re.sub(r"\D", "", text)
    international = text.lstrip().startswith(("+", "00"))
    if international:
        import phonenumbers

        try:
            number = phonenumbers.parse("+" + digits.removeprefix("00") if text.lstrip().startswith("00")
                                        else "+" + digits, None)
            return f"+{number.country_code} ", str(number.national_number)
        except phonenumbers.NumberParseException:
            return "", digits
    return "", digits


def mask_phone(value):
    """Keep the first 3 and the last 4 digits of the national number.

    A ``+86`` / ``+1`` / ``00..`` prefix is kept in front (it names a
    country, not a person); separators are dropped. Numbers shorter than 8
    digits keep only their last 2 digits.

    Examples
    --------
    >>> mask_phone("13812345678")
    '138****5678'
    >>> mask_phone("+86 138-1234-5678")
    '+86 138****5678'
    >>> mask_phone("+1 (415) 555-0123")
    '+1 415***0123'
    """
    if _missing(value):
        return value
    prefix, digits = _national_digits(str(value))
    if not digits:
        return "***"
    if len(digits) < 8:
        return prefix + "*" * max(len(digits) - 2, 1) + digits[-2:]
    return prefix + digits[:3] + "*" * (len(digits) - 7) + digits[-4:]


def mask_name(value):
    """A person's name reduced to what cannot identify them.

    Chinese (and other CJK) names keep the first character (the family name
    for most names): ``张三 -> 张*``. Western names keep the initial of the
    first word and of the last word: ``John Smith -> J*** S.``.

    Examples
    --------
    >>> mask_name("张三")
    '张*'
    >>> mask_name("John Smith")
    'J*** S.'
    """
    if _missing(value):
        return value
    text = str(value).strip()
    if not text:
        return text
    if _CJK.search(text) and " " not in text:
        return text[0] + "*" * max(len(text) - 1, 1)
    words = text.split()
    first = words[0][0] + "***"
    return f"{first} {words[-1][0]}." if len(words) > 1 else first


def city_of_address(value):
    """The city part of a postal address, else ``None``.

    Chinese addresses: the part ending in 市 (after an optional province);
    western addresses: the line or comma-separated part before the
    ``STATE ZIP`` tail, as Faker and most exports write them.

    Examples
    --------
    >>> city_of_address("浙江省杭州市西湖区文三路 90 号")
    '杭州市'
    >>> city_of_address("0487 Hull Village Suite 759\\nLake Eric, WA 55032")
    'Lake Eric'
    >>> city_of_address("西藏自治区马鞍山县南湖李街H座 557070")
    '马鞍山县'
    """
    if _missing(value):
        return None
    text = str(value).strip()
    if _CJK.search(text):
        m = next((m for p in _CN_CITY if (m := p.search(text))), None)
        return m.group(1) if m else None
    m = _US_CITY.search(text)
    if m:
        return m.group(1).strip()
    parts = [p.strip() for p in re.split(r"[\n,]", text) if p.strip()]
    if len(parts) >= 2 and not re.search(r"\d", parts[-2]):
        return parts[-2]
    return None


def age_band(value, as_of=None):
    """A birth date as an age band (:data:`AGE_BANDS`), else ``None``.

    Examples
    --------
    >>> age_band("1990-05-01", as_of="2026-06-30")
    '35-44'
    """
    if _missing(value):
        return None
    born = pd.to_datetime(value, errors="coerce")
    if pd.isna(born):
        return None
    today = pd.Timestamp(as_of) if as_of else pd.Timestamp(dt.date.today())
    age = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
    if age < 0:
        return None
    label = None
    for lowest, name in AGE_BANDS:
        if age >= lowest:
            label = name
    return label


def scrub_text(text: str) -> str:
    """Mask email addresses and phone-like digit runs inside free text
    (error messages shown on a page).

    Examples
    --------
    >>> scrub_text("no customer for zhangsan@example.com or 13812345678")
    'no customer for z***@example.com or 138****5678'
    """
    def phone(m: re.Match) -> str:
        found = m.group(0)
        if len(re.sub(r"\D", "", found)) < 10 or _DATE_START.match(found):
            return found  # a date, an amount or a count, not a phone number
        return mask_phone(found)

    text = _EMAIL_IN_TEXT.sub(lambda m: mask_email(m.group(0)), str(text))
    return _PHONE_IN_TEXT.sub(phone, text)


def redact_url(spec) -> str:
    """A source SPEC without its password (``postgresql://u:***@host/db``).

    Examples
    --------
    >>> redact_url("postgresql://crm:secret@db:5432/crm")
    'postgresql://crm:***@db:5432/crm'
    """
    text = "" if _missing(spec) else str(spec)
    if "://" not in text:
        return text
    parts = urlsplit(text)
    if parts.password is None:
        return text
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


# PII class -> how a stakeholder page shows the column (None: column dropped)
MASKERS: dict[str, Callable | None] = {
    "name": mask_name,
    "email": mask_email,
    "phone": mask_phone,
    "national_id": None,
    "address": city_of_address,
    "birth_date": age_band,
}


def _schema_pii(table: str | None) -> dict[str, str] | None:
    """column -> PII class from the data contract (``crmlab.schema.pii_columns``);
    ``None`` when the contract does not know the table (or is not installed)."""
    try:
        from crmlab.schema import pii_columns
    except ImportError:
        return None
    try:
        found = pii_columns(table) if table else pii_columns()
    except Exception:  # an unknown table name: no contract columns to go by
        return None
    out: dict[str, str] = {}
    for key, cls in dict(found).items():
        name = key[-1] if isinstance(key, tuple) else key
        if cls:
            out.setdefault(str(name), str(cls))
    return out


def pii_class(column: str, known: Mapping[str, str] | None = None) -> str | None:
    """The PII class of a column name: exact, then without one ``_suffix``
    (``email_a``), then without one ``prefix_`` (``customer_email``).

    Examples
    --------
    >>> pii_class("email_b")
    'email'
    >>> pii_class("segment") is None
    True
    """
    known = {**COLUMN_PII, **(known or {})}
    name = str(column).strip().lower()
    for candidate in (name, re.sub(r"_[a-z0-9]{1,6}$", "", name), re.sub(r"^[a-z0-9]{1,10}_", "", name)):
        if candidate in known:
            return known[candidate]
    return None


def mask_frame(df: pd.DataFrame, audience: str = "stakeholder", *, table: str | None = None,
               pii: Mapping[str, str] | None = None, as_of=None) -> pd.DataFrame:
    """Mask the personal columns of a frame for a stakeholder page.

    Takes any frame and returns a copy with the same rows: name, email and
    phone columns masked, address columns reduced to the city, birth dates to
    an age band, national-id columns removed. Other columns are unchanged
    (values are escaped later, when the table is written as HTML).

    Parameters
    ----------
    df : pandas.DataFrame
    audience : {"stakeholder", "analyst"}
        Analysts get the frame back unchanged.
    table : str, optional
        Canonical table the columns come from (for the schema's PII classes).
    pii : mapping, optional
        ``column -> PII class`` overrides (``{"contact": "phone"}``).
    as_of : date-like, optional
        Reference date for age bands (default today).

    Returns
    -------
    pandas.DataFrame

    Examples
    --------
    >>> mask_frame(pd.DataFrame({"name": ["张三"], "national_id": ["110"]}))["name"].tolist()
    ['张*']
    """
    if audience not in AUDIENCES:
        from crmlab.exceptions import ParameterError
        raise ParameterError(f"audience must be one of {AUDIENCES}, not {audience!r}")
    if audience == "analyst":
        return df
    contract = _schema_pii(table) if table else None
    # a canonical table's contract is authoritative (products.name is no person's
    # name); anything else is matched by column name, erring on the side of masking
    known = {**(contract if contract is not None else (_schema_pii(None) or {})), **(pii or {})}
    out = df.copy()
    drop = []
    for col in out.columns:
        cls = known.get(col) if contract is not None else (known.get(col) or pii_class(col, known))
        if cls is None or cls not in MASKERS:
            continue
        masker = MASKERS[cls]
        if masker is None:
            drop.append(col)
        else:
            values = [age_band(v, as_of) if masker is age_band else masker(v) for v in out[col]]
            out[col] = pd.Series(values, index=out.index, dtype=object)
    return out.drop(columns=drop)


def suppress_small_groups(df: pd.DataFrame, count_col: str, min_size: int = config.MIN_GROUP_SIZE,
                          *, label_col: str | None = None, other_label: str | None = None) -> pd.DataFrame:
    """Replace groups smaller than ``min_size`` by one "other" row.

    Takes one row per group with a count column (customers per group) and
    returns the groups with ``count >= min_size`` unchanged, plus -- when the
    small groups together reach ``min_size`` -- one row labelled
    ``other_label`` holding their summed count (other columns empty, since
    they cannot be combined safely). Small groups that together stay under
    ``min_size`` are dropped.

    Parameters
    ----------
    df : pandas.DataFrame
    count_col : str
        The number of customers in each row's group.
    min_size : int
    label_col : str, optional
        Column that names the group (default: the first non-numeric column).
    other_label : str, optional
        Default ``"other groups (under {min_size})"``.

    Returns
    -------
    pandas.DataFrame

    Examples
    --------
    >>> t = pd.DataFrame({"city": ["A", "B", "C"], "n": [50, 4, 7]})
    >>> suppress_small_groups(t, "n")["city"].tolist()
    ['A', 'other groups (under 10)']
    """
    if count_col not in df.columns:
        from crmlab.exceptions import ParameterError
        raise ParameterError(f"count column {count_col!r} is not in the table")
    counts = pd.to_numeric(df[count_col], errors="coerce").fillna(0)
    small = counts < min_size
    kept = df.loc[~small]
    if not small.any():
        return df.copy()
    total = counts[small].sum()
    if total < min_size:
        return kept.reset_index(drop=True)
    if label_col is None:
        label_col = next((c for c in df.columns if c != count_col
                          and not pd.api.types.is_numeric_dtype(df[c])), None)
    other = {c: None for c in df.columns}
    other[count_col] = total
    if label_col is not None:
        other[label_col] = other_label or f"other groups (under {min_size})"
    out = pd.concat([kept.astype(object), pd.DataFrame([other], dtype=object)], ignore_index=True)
    out[count_col] = pd.to_numeric(out[count_col])
    return out
