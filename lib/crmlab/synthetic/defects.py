"""Data defects, injected at configured rates and every one recorded.

Each class (:data:`crmlab.synthetic.scenario.DEFECT_CLASSES`) touches the
tables and columns listed in :data:`WHERE`; its rate is the share of each
such table's rows that get it. A (row, column) gets at most one defect, so
the truth is unambiguous. Defects that a duplicate record carries anyway (a
reformatted phone, a missing e-mail) are recorded under their class too and
count towards its rate.
"""

from __future__ import annotations

import difflib

import numpy as np

from crmlab.synthetic import geo, people

# class -> table -> columns it may touch (with weights)
WHERE: dict[str, dict[str, dict[str, float]]] = {
    "invalid_email": {"customers": {"email": 1.0}},
    "invalid_phone": {"customers": {"phone": 1.0}},
    "missing_value": {
        "customers": {"email": 0.25, "phone": 0.15, "birth_date": 0.15, "address": 0.12,
                      "postcode": 0.1, "national_id": 0.08, "gender": 0.05, "city": 0.05,
                      "acquisition_channel": 0.05},
        "orders": {"channel": 1.0},
    },
    "orphan_order": {"orders": {"customer_id": 1.0}},
    "negative_amount": {"orders": {"amount": 1.0}},
    "absurd_amount": {"orders": {"amount": 1.0}},
    "future_date": {"orders": {"order_date": 1.0}},
    "date_out_of_range": {"customers": {"birth_date": 0.7, "signup_date": 0.3}},
    "mixed_date_format": {"customers": {"birth_date": 0.6, "signup_date": 0.4}},
    "mixed_phone_format": {"customers": {"phone": 1.0}},
    "case_whitespace": {"customers": {"city": 0.5, "gender": 0.5},
                        "orders": {"status": 0.5, "channel": 0.5}},
    "out_of_domain": {"customers": {"gender": 1.0}, "orders": {"status": 1.0},
                      "tickets": {"satisfaction": 0.5, "nps": 0.5}},
}

# what duplicate records change, with probabilities (data, not logic)
DUPLICATE_CHANGES: dict[str, dict[str, float]] = {
    "name": {"typo": 0.3, "abbreviated": 0.15, "nickname": 0.1, "swapped": 0.1, "case": 0.05,
             "same": 0.3},
    "phone": {"format": 0.55, "missing": 0.06, "same": 0.39},
    "email": {"case": 0.3, "missing": 0.12, "same": 0.58},
    "address": {"abbreviated": 0.5, "missing": 0.05, "same": 0.45},
    "missing": {"birth_date": 0.08, "national_id": 0.15, "postcode": 0.06, "city": 0.02},
}
DUPLICATE_ORDER_MOVE = 0.5   # chance that an order after the duplicate's sign-up is booked on it

INVALID_EMAIL = ("{l}{d}", "{l}@@{d}", "{l} @{d}", "{l}@", "@{d}", "{l}@{d0}..{d1}",
                 "{l}@{d0},{d1}")
OUT_OF_DOMAIN = {"gender": ("X?", "U", "?"), "status": ("unknown", "pending", "?")}
ORDER_STATUS_CASE = ("upper", "title", "lead", "trail")


class DefectLog:
    """Collects (table, local row, column, defect) while a chunk is built."""

    def __init__(self, sizes: dict[str, int]):
        self.records: dict[str, list[tuple[np.ndarray, str | None, str]]] = {t: [] for t in sizes}
        self.used: dict[tuple[str, str], np.ndarray] = {}
        self.sizes = dict(sizes)

    def free(self, table: str, column: str) -> np.ndarray:
        key = (table, column)
        if key not in self.used:
            self.used[key] = np.zeros(self.sizes[table], dtype=bool)
        return self.used[key]

    def add(self, table: str, rows: np.ndarray, column: str | None, defect: str) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return
        if column is not None:
            self.free(table, column)[rows] = True
        self.records[table].append((rows, column, defect))

    def rows_with(self, table: str, defect: str) -> np.ndarray:
        """Boolean mask of the rows that already have ``defect`` (any column)."""
        mask = np.zeros(self.sizes[table], dtype=bool)
        for r, _, d in self.records[table]:
            if d == defect:
                mask[r] = True
        return mask

    def count(self, table: str, defect: str) -> int:
        return int(sum(len(r) for r, _, d in self.records[table] if d == defect))

    def arrays(self, table: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, columns, defects) of a table's records, as arrays."""
        recs = self.records[table]
        if not recs:
            return (np.array([], dtype=np.int64), np.array([], dtype=object),
                    np.array([], dtype=object))
        rows = np.concatenate([r for r, _, _ in recs])
        cnt = [len(r) for r, _, _ in recs]
        cols = np.repeat(np.array([c for _, c, _ in recs], dtype=object), cnt)
        defs = np.repeat(np.array([d for _, _, d in recs], dtype=object), cnt)
        return rows, cols, defs


def _pick(rng, ok: np.ndarray, k: int) -> np.ndarray:
    cand = np.flatnonzero(ok)
    k = min(k, len(cand))
    return np.sort(rng.choice(cand, k, replace=False)) if k > 0 else np.array([], dtype=np.int64)


def _targets(rate: float, n: int, weights: dict[str, float], rng) -> dict[str, int]:
    total = int(round(rate * n))
    cols = list(weights)
    w = np.array([weights[c] for c in cols], dtype=float)
    counts = rng.multinomial(total, w / w.sum()) if total else np.zeros(len(cols), dtype=int)
    return dict(zip(cols, counts.tolist()))


# ---------------------------------------------------------------- duplicates

def _typo(rng, s: str, pool: np.ndarray | None = None) -> str:
    if len(s) < 2:
        return s + s[-1:]
    if pool is not None:                       # Chinese: one character mistyped
        i = int(rng.integers(1, len(s))) if len(s) > 1 else 0
        c = str(rng.choice(pool))
        return s[:i] + c + s[i + 1:] if c != s[i] else s[:i] + s[i] + s[i:]
    i = int(rng.integers(0, len(s) - 1))
    op = int(rng.integers(0, 3))
    if op == 0:                                # swap two neighbours
        return s[:i] + s[i + 1] + s[i] + s[i + 2:]
    if op == 1:                                # drop one
        return s[:i] + s[i + 1:]
    return s[:i] + s[i] + s[i:]                # double one


def _abbreviate_address(addr: str, locale: str) -> str:
    if locale == "zh_CN":
        k = addr.find("区")
        out = addr[k + 1:] if 0 < k < len(addr) - 1 else addr
        return out.split("栋")[0] + "栋" if "栋" in out and out.endswith("室") else out
    words = addr.split(" ")
    return " ".join(geo.ADDRESS_ABBREVIATIONS.get(w, w) for w in words)


def _choose(rng, table: dict[str, float]) -> str:
    keys = list(table)
    p = np.array([table[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def make_duplicates(rng: np.random.Generator, cols: dict, info: dict, idx: np.ndarray,
                    new_ids: np.ndarray, new_signup_s: np.ndarray, channels: list[str],
                    start: np.datetime64, pools: dict) -> tuple[dict, list[str], list[list]]:
    """Near-copies of some customers, as if re-entered from another channel.

    Parameters
    ----------
    cols : the chunk's customers, column name -> array (contract columns),
        one row per original
    info : per-row helper arrays: ``locale``, ``phone_number`` (national
        digits), ``first``, ``last`` (name parts)
    idx : rows of ``cols`` to duplicate
    new_ids, new_signup_s : the duplicates' customer_id and sign-up (display seconds)
    pools : locale -> :class:`crmlab.synthetic.people.Pools`

    Returns
    -------
    (duplicates as column name -> array, per-duplicate change list
    as "field:change" strings joined by ",", per-duplicate list of
    (column, defect) pairs their changes amount to)
    """
    rows = []
    changes = []
    implied = []
    names = list(cols)
    zh_chars = {loc: np.array(sorted(set("".join(p.first_female.tolist()[:300]))))
                for loc, p in pools.items()}
    for j, i in enumerate(idx.tolist()):
        r = {c: cols[c][i] for c in names}
        loc = info["locale"][i]
        first, last = info["first"][i], info["last"][i]
        ch: list[str] = []
        imp: list[tuple[str, str]] = []
        how = _choose(rng, DUPLICATE_CHANGES["name"])
        if loc == "zh_CN":
            if how in ("typo", "nickname", "abbreviated"):
                r["name"] = last + _typo(rng, first, zh_chars[loc])
                how = "typo"
            elif how in ("swapped", "case"):
                r["name"] = last + " " + first
                how = "spaced"
        else:
            if how == "typo":
                r["name"] = (f"{_typo(rng, first)} {last}" if rng.random() < 0.4
                             else f"{first} {_typo(rng, last)}")
            elif how == "abbreviated":
                r["name"] = f"{first[0]}. {last}"
            elif how == "nickname":
                if first in geo.NICKNAMES:
                    r["name"] = f"{geo.NICKNAMES[first]} {last}"
                else:
                    r["name"] = f"{first[0]}. {last}"
                    how = "abbreviated"
            elif how == "swapped":
                r["name"] = f"{last}, {first}" if rng.random() < 0.5 else f"{last} {first}"
            elif how == "case":
                r["name"] = r["name"].upper() if rng.random() < 0.5 else r["name"].lower()
        if how != "same":
            ch.append(f"name:{how}")
        ph = _choose(rng, DUPLICATE_CHANGES["phone"])
        em = _choose(rng, DUPLICATE_CHANGES["email"])
        if ph == "missing" and em == "missing":
            em = "same"
        if ph == "format":
            others = people.PHONE_FORMATS_OTHER[loc]
            tpl = others[int(rng.integers(len(others)))]
            r["phone"] = people.format_phone(info["phone_number"][i], loc, tpl)
            imp.append(("phone", "mixed_phone_format"))
        elif ph == "missing":
            r["phone"] = None
            imp.append(("phone", "missing_value"))
        if ph != "same":
            ch.append(f"phone:{ph}")
        if em == "case" and r["email"]:
            local, dom = r["email"].split("@", 1)
            r["email"] = (local.title() + "@" + dom.title() if rng.random() < 0.6
                          else r["email"].upper())
        elif em == "missing":
            r["email"] = None
            imp.append(("email", "missing_value"))
        if em != "same":
            ch.append(f"email:{em}")
        ad = _choose(rng, DUPLICATE_CHANGES["address"])
        if ad == "abbreviated":
            new = _abbreviate_address(r["address"], loc)
            if new != r["address"]:
                r["address"] = new
                ch.append("address:abbreviated")
        elif ad == "missing":
            r["address"] = None
            imp.append(("address", "missing_value"))
            ch.append("address:missing")
        for col, p in DUPLICATE_CHANGES["missing"].items():
            if rng.random() < p:
                r[col] = None
                imp.append((col, "missing_value"))
                ch.append(f"{col}:missing")
        others = [c for c in channels if c != r["acquisition_channel"]]
        r["acquisition_channel"] = others[int(rng.integers(len(others)))]
        ch.append("acquisition_channel:other")
        r["customer_id"] = int(new_ids[j])
        day = start + np.timedelta64(int(new_signup_s[j]), "s")
        r["signup_date"] = str(np.datetime_as_string(day, unit="D"))
        ch.append("signup_date:later")
        rows.append(r)
        changes.append(",".join(ch))
        implied.append(imp)
    out = {c: np.array([r[c] for r in rows], dtype=object) for c in names}
    out["customer_id"] = np.asarray(new_ids, dtype=np.int64)
    return out, changes, implied


def name_similarity(a: str, b: str) -> float:
    """Similarity of two names, order-insensitive (max of plain and token-sorted ratios)."""
    a2, b2 = a.lower().replace(",", ""), b.lower().replace(",", "")
    plain = difflib.SequenceMatcher(None, a2, b2).ratio()
    srt = difflib.SequenceMatcher(None, " ".join(sorted(a2.split())),
                                  " ".join(sorted(b2.split()))).ratio()
    return max(plain, srt)


# ---------------------------------------------------------------- customers

def inject_customers(rng: np.random.Generator, rates: dict, col: dict, info: dict,
                     log: DefectLog) -> None:
    """Plant the customer-table classes in place.

    ``col`` maps column name -> object array (originals and duplicates).
    """
    n = len(col["name"])
    loc = info["locale"]

    def todo(defect):
        if defect not in rates or "customers" not in WHERE[defect]:
            return {}
        # rows that duplicates already made defective count towards the target
        done = log.rows_with("customers", defect)
        left = max(int(round(rates[defect] * n)) - int(done.sum()), 0)
        return _targets(left / max(n, 1), n, WHERE[defect]["customers"], rng)

    class _Present(dict):
        def __missing__(self, c):
            a = col[c]
            v = np.not_equal(a, None) & np.not_equal(a, "")
            self[c] = v
            return v

    present = _Present()

    for c, k in todo("invalid_email").items():
        rows = _pick(rng, present["email"] & ~log.free("customers", "email"), k)
        for i in rows:
            local, dom = col["email"][i].split("@", 1)
            d0, _, d1 = dom.partition(".")
            tpl = INVALID_EMAIL[int(rng.integers(len(INVALID_EMAIL)))]
            col["email"][i] = tpl.format(l=local, d=dom, d0=d0, d1=d1 or "com")
        log.add("customers", rows, "email", "invalid_email")

    for c, k in todo("invalid_phone").items():
        rows = _pick(rng, present["phone"] & ~log.free("customers", "phone"), k)
        for i in rows:
            col["phone"][i] = _invalid_phone(rng, info["phone_number"][i], loc[i])
        log.add("customers", rows, "phone", "invalid_phone")

    for c, k in todo("mixed_phone_format").items():
        rows = _pick(rng, present["phone"] & ~log.free("customers", "phone")
                     & ~log.rows_with("customers", "mixed_phone_format"), k)
        for i in rows:
            fmts = people.PHONE_FORMATS_OTHER[loc[i]]
            col["phone"][i] = people.format_phone(info["phone_number"][i], loc[i],
                                                  fmts[int(rng.integers(len(fmts)))])
        log.add("customers", rows, "phone", "mixed_phone_format")

    for c, k in todo("date_out_of_range").items():
        rows = _pick(rng, present[c] & ~log.free("customers", c)
                     & ~log.rows_with("customers", "date_out_of_range"), k)
        for i in rows:
            col[c][i] = _bad_date(rng, c)
        log.add("customers", rows, c, "date_out_of_range")

    for c, k in todo("mixed_date_format").items():
        rows = _pick(rng, present[c] & ~log.free("customers", c)
                     & ~log.rows_with("customers", "mixed_date_format"), k)
        for i in rows:
            fmts = people.DATE_FORMATS_OTHER[loc[i]]
            col[c][i] = people.format_date(np.datetime64(col[c][i]), loc[i],
                                           fmts[int(rng.integers(len(fmts)))])
        log.add("customers", rows, c, "mixed_date_format")

    for c, k in todo("case_whitespace").items():
        rows = _pick(rng, present[c] & ~log.free("customers", c)
                     & ~log.rows_with("customers", "case_whitespace"), k)
        for i in rows:
            col[c][i] = _case_space(rng, col[c][i])
        log.add("customers", rows, c, "case_whitespace")

    for c, k in todo("out_of_domain").items():
        rows = _pick(rng, present[c] & ~log.free("customers", c)
                     & ~log.rows_with("customers", "out_of_domain"), k)
        vals = OUT_OF_DOMAIN[c]
        for i in rows:
            col[c][i] = vals[int(rng.integers(len(vals)))]
        log.add("customers", rows, c, "out_of_domain")

    for c, k in todo("missing_value").items():
        rows = _pick(rng, present[c] & ~log.free("customers", c)
                     & ~log.rows_with("customers", "missing_value"), k)
        blank = rng.random(len(rows)) < 0.2
        for i, b in zip(rows, blank):
            col[c][i] = "" if b else None
        log.add("customers", rows, c, "missing_value")


def _invalid_phone(rng, number: str, locale: str) -> str:
    k = int(rng.integers(0, 5))
    if locale == "zh_CN":
        return (number[:-1] if k == 0 else number + str(int(rng.integers(10))) if k == 1 else
                "12" + number[2:] if k == 2 else number[:3] + "-" + number[3:7] if k == 3 else
                number[:3] + "****" + number[7:])
    return ("555-" + number[6:] if k == 0 else f"(123) {number[3:6]}-{number[6:]}" if k == 1 else
            f"({number[:3]}) {number[3:6]}-{number[6:9]}" if k == 2 else
            "000-000-0000" if k == 3 else
            f"({number[:3]}) {number[3:6]}-{number[6:]}{number[6:]}")


def _bad_date(rng, column: str) -> str:
    if column == "birth_date":
        k = int(rng.integers(0, 3))
        y = (int(rng.integers(1800, 1900)) if k == 0 else int(rng.integers(2030, 2100)) if k == 1
             else 1)
    else:
        k = int(rng.integers(0, 3))
        y = (int(rng.integers(1801, 1900)) if k == 0 else int(rng.integers(2090, 2100)) if k == 1
             else 9999)
    if y in (1, 9999):
        return f"{y:04d}-12-31" if y == 9999 else "0001-01-01"
    return f"{y:04d}-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}"


def _case_space(rng, v: str) -> str:
    """The same value with stray spaces or another letter case (`` PAID``, ``Paid``)."""
    k = int(rng.integers(0, 6))
    alt = (" " + v if k == 0 else v + " " if k == 1 else "  " + v + "  " if k == 2 else
           v.upper() if k == 3 else v.title() if k == 4 else v.lower())
    return alt if alt != v else v + " "


# ------------------------------------------------------------------- orders

def orphan_orders(rng: np.random.Generator, rate: float, n_orders: int) -> tuple[np.ndarray, int]:
    """How many orphan orders to add and which existing orders they copy."""
    k = int(round(rate * n_orders / max(1 - rate, 1e-9)))
    return (np.sort(rng.choice(n_orders, k, replace=False)) if 0 < k <= n_orders
            else np.array([], dtype=np.int64)), k


def inject_orders(rng: np.random.Generator, rates: dict, o: dict, log: DefectLog,
                  end_s: int, orphan_rows: np.ndarray) -> None:
    """Plant order-table classes in place.

    ``o`` holds arrays ``amount``, ``ts`` (display seconds), ``status_code`` /
    ``status_dict``, ``channel_code`` / ``channel_dict`` (code -1 = null).
    """
    n = len(o["amount"])
    log.add("orders", orphan_rows, "customer_id", "orphan_order")

    def take(defect, table="orders"):
        if defect not in rates:
            return {}
        return _targets(rates[defect], n, WHERE[defect][table], rng)

    for defect in ("negative_amount", "absurd_amount"):
        for c, k in take(defect).items():
            rows = _pick(rng, ~log.free("orders", "amount"), k)
            a = o["amount"][rows]
            if defect == "negative_amount":
                o["amount"][rows] = -np.maximum(a, 0.01)
            else:
                power = np.maximum(3, np.ceil(np.log10(1.5e6 / np.maximum(a, 0.01))))
                placeholder = rng.random(len(rows)) < 0.3
                o["amount"][rows] = np.where(placeholder, 99_999_999.99,
                                             np.round(np.maximum(a, 0.01) * 10 ** power, 2))
            log.add("orders", rows, "amount", defect)
    for c, k in take("future_date").items():
        rows = _pick(rng, ~log.free("orders", "order_date"), k)
        o["ts"][rows] = end_s + rng.integers(2 * 365, 10 * 365, len(rows)) * 86400 + \
            rng.integers(0, 86400, len(rows))
        log.add("orders", rows, "order_date", "future_date")
    for c, k in take("case_whitespace").items():
        key = "status" if c == "status" else "channel"
        rows = _pick(rng, ~log.free("orders", c) & (o[f"{key}_code"] >= 0), k)
        _recode(rng, o, key, rows, lambda v: _case_space(rng, v))
        log.add("orders", rows, c, "case_whitespace")
    for c, k in take("out_of_domain").items():
        rows = _pick(rng, ~log.free("orders", c), k)
        vals = OUT_OF_DOMAIN["status"]
        _recode(rng, o, "status", rows, lambda v: vals[int(rng.integers(len(vals)))])
        log.add("orders", rows, c, "out_of_domain")
    for c, k in take("missing_value").items():
        rows = _pick(rng, ~log.free("orders", c) & (o["channel_code"] >= 0), k)
        o["channel_code"][rows] = -1
        log.add("orders", rows, c, "missing_value")


def _recode(rng, o: dict, key: str, rows: np.ndarray, fn) -> None:
    d = o[f"{key}_dict"]
    codes = o[f"{key}_code"]
    for i in rows:
        v = fn(d[codes[i]])
        if v not in d:
            d.append(v)
        codes[i] = d.index(v)


def inject_tickets(rng: np.random.Generator, rates: dict, tk: dict, log: DefectLog) -> None:
    """Plant ticket-table classes (out-of-domain scores) in place."""
    n = len(tk["satisfaction"])
    if "out_of_domain" not in rates:
        return
    for c, k in _targets(rates["out_of_domain"], n, WHERE["out_of_domain"]["tickets"], rng).items():
        rows = _pick(rng, ~log.free("tickets", c), k)
        vals = np.array([0, 6, 7, 9, 10]) if c == "satisfaction" else np.array([-1, 11, 15, 99])
        tk[c][rows] = rng.choice(vals, len(rows))
        log.add("tickets", rows, c, "out_of_domain")
