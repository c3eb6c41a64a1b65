"""Shapes of foreign data for the gauntlet (tests/test_gauntlet.py).

Nothing here comes from :mod:`crmlab.synthetic`: a company's export is the
normal case, so these tables are built the way other systems write them --
CSV files with their own id styles, statuses, encodings and gaps.

:func:`base_tables` builds one plain, contract-conforming CRM export from a
few knobs; :data:`SHAPES` maps a shape's name to a function that bends it
(drop a table, put every order on one day, type ids differently ...).
:func:`write_source` writes a shape as a source directory, and
:func:`run_inprocess` executes a report notebook's cells in this process
(the notebook's code, its parameters cell and the runner's contract check,
without a kernel start), returning ``(outcome, detail)``.
"""

from __future__ import annotations

import contextlib
import io
import json
import traceback
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

REPORTS = ("data-quality", "segmentation", "lifecycle", "forecasting", "campaigns")
OPTIONAL = ("customers", "order_lines", "products", "interactions", "tickets", "campaigns",
            "campaign_contacts")
HEADERS = {  # the contract's columns of each optional table, for header-only files
    "customers": ["customer_id", "name", "email", "phone", "region", "signup_date"],
    "order_lines": ["order_id", "product_id", "category", "quantity", "unit_price"],
    "products": ["product_id", "name", "category", "unit_cost", "list_price"],
    "interactions": ["customer_id", "ts", "type", "channel"],
    "tickets": ["ticket_id", "customer_id", "opened_at", "channel", "topic", "satisfaction", "nps",
                "text", "resolved_at"],
    "campaigns": ["campaign_id", "name", "channel", "start_date", "end_date", "cost"],
    "campaign_contacts": ["campaign_id", "customer_id", "group", "converted", "revenue"],
}

FIRST = ["Anna", "Ben", "Chloé", "Dmitri", "Eve", "Farah", "Günter", "Hiro", "Ines", "José"]
LAST = ["Smith", "Müller", "García", "Ng", "O'Brien", "Kowalski", "Rossi", "Dubois"]
ZH = ["王伟", "李娜", "张敏", "刘洋", "陈静", "杨磊", "赵丽", "黄强"]
REGIONS = ["North", "South", "East", "West"]
CHANNELS = ["web", "store", "app"]
CATEGORIES = ["tea", "cups", "pots", "gifts"]


def base_tables(*, customers: int = 60, orders_per_customer: float = 4.0, start: str = "2023-01-01",
                days: int = 540, freq: str | None = None, seed: int = 0, text: str = "latin",
                ids: str = "int", status: str = "mixed", amounts: str = "varied",
                campaign: str = "randomised") -> dict[str, pd.DataFrame]:
    """One plain export: every table of the contract, small.

    Parameters
    ----------
    customers : number of customers (at least 1)
    orders_per_customer : mean orders per customer (each has at least one)
    start, days : the orders' date range
    freq : None (any day and time), "D", "W" or "MS" (dates on that grid only)
    text : "latin" (accented names), "zh" (Chinese names) or "emoji"
    ids : "int", "zero" (text with leading zeros) or "code" (``C-0001``)
    status : "mixed", "absent", "refunded" (all), "unknown" (own words)
    amounts : "varied", "equal", "zero", "huge"
    campaign : "randomised", "no_control", "no_conversions"

    Returns
    -------
    dict of table name -> pandas.DataFrame, canonical column names.
    """
    rng = np.random.default_rng(seed)
    n = max(int(customers), 1)
    cid = {"int": lambda i: i + 1, "zero": lambda i: f"{i + 1:05d}",
           "code": lambda i: f"C-{i + 1:04d}"}[ids]
    idx = np.arange(n)
    if text == "zh":
        names = [ZH[i % len(ZH)] + ("" if i < len(ZH) else str(i)) for i in idx]
    elif text == "emoji":
        names = [f"{FIRST[i % len(FIRST)]} {LAST[i % len(LAST)]} 🎉" for i in idx]
    else:
        names = [f"{FIRST[i % len(FIRST)]} {LAST[(i // len(FIRST)) % len(LAST)]}" for i in idx]
    cust = pd.DataFrame({
        "customer_id": [cid(i) for i in idx],
        "name": names,
        "email": [f"user{i}@example.org" for i in idx],
        "phone": [f"+44 20 7946 {i % 10000:04d}" for i in idx],
        "region": [REGIONS[i % len(REGIONS)] for i in idx],
        "signup_date": (pd.Timestamp(start) - pd.to_timedelta(rng.integers(0, 200, n), "D")).strftime("%Y-%m-%d"),
    })
    counts = 1 + rng.poisson(max(orders_per_customer - 1, 0), n)
    owner = np.repeat(idx, counts)
    m = len(owner)
    if freq is None:
        stamp = (pd.Timestamp(start) + pd.to_timedelta(rng.integers(0, max(days, 1), m), "D")
                 + pd.to_timedelta(rng.integers(8 * 3600, 20 * 3600, m), "s"))
    else:
        grid = pd.date_range(start, periods=max(2, days // {"D": 1, "W": 7, "MS": 30}[freq]), freq=freq)
        stamp = pd.DatetimeIndex(grid[rng.integers(0, len(grid), m)])
    amount = {"varied": lambda: rng.gamma(2.0, 45.0, m).round(2), "equal": lambda: np.full(m, 50.0),
              "zero": lambda: np.zeros(m), "huge": lambda: rng.gamma(2.0, 5e10, m).round(2)}[amounts]()
    orders = pd.DataFrame({"order_id": np.arange(1, m + 1), "customer_id": [cid(i) for i in owner],
                           "order_date": pd.DatetimeIndex(stamp).strftime("%Y-%m-%d %H:%M:%S"),
                           "amount": amount,
                           "channel": [CHANNELS[i % len(CHANNELS)] for i in range(m)]})
    if status == "mixed":
        orders["status"] = rng.choice(["paid"] * 8 + ["refunded", "cancelled"], m)
    elif status == "refunded":
        orders["status"] = "refunded"
    elif status == "unknown":
        orders["status"] = rng.choice(["shipped", "delivered", "in transit"], m)
    orders = orders.sort_values("order_date", kind="stable").reset_index(drop=True)
    orders["order_id"] = np.arange(1, m + 1)
    products = pd.DataFrame({"product_id": [f"P{j}" for j in range(8)],
                             "name": [f"Item {j}" for j in range(8)],
                             "category": [CATEGORIES[j % len(CATEGORIES)] for j in range(8)],
                             "unit_cost": np.linspace(2, 20, 8).round(2),
                             "list_price": np.linspace(5, 50, 8).round(2)})
    line_order = np.repeat(orders["order_id"].to_numpy(), 1 + rng.integers(0, 2, m))
    pid = rng.integers(0, 8, len(line_order))
    lines = pd.DataFrame({"order_id": line_order, "product_id": [f"P{j}" for j in pid],
                          "category": [CATEGORIES[j % len(CATEGORIES)] for j in pid],
                          "quantity": 1 + rng.integers(0, 3, len(line_order)),
                          "unit_price": products["list_price"].to_numpy()[pid]})
    lines = lines.drop_duplicates(["order_id", "product_id"])
    end = pd.Timestamp(start) + pd.Timedelta(days=max(days, 1))
    k = max(n // 2, 1)
    inter = pd.DataFrame({"customer_id": [cid(i) for i in rng.integers(0, n, 3 * k)],
                          "ts": (pd.Timestamp(start) + pd.to_timedelta(rng.integers(0, max(days, 1), 3 * k), "D")
                                 ).strftime("%Y-%m-%d %H:%M:%S"),
                          "type": rng.choice(["web visit", "app login", "email open"], 3 * k)})
    opened = pd.Timestamp(start) + pd.to_timedelta(rng.integers(0, max(days, 1), k), "D")
    tickets = pd.DataFrame({"ticket_id": np.arange(1, k + 1),
                            "customer_id": [cid(i) for i in rng.integers(0, n, k)],
                            "opened_at": opened.strftime("%Y-%m-%d %H:%M:%S"),
                            "channel": rng.choice(["phone", "chat"], k),
                            "topic": rng.choice(["delivery", "refund", "product"], k),
                            "satisfaction": rng.integers(1, 6, k), "nps": rng.integers(0, 11, k),
                            "text": rng.choice(["Parcel late", "包裹晚到了", "Great tea 🍵", "Wrong item"], k),
                            "resolved_at": (opened + pd.to_timedelta(rng.integers(1, 72, k), "h")
                                            ).strftime("%Y-%m-%d %H:%M:%S")})
    mid = pd.Timestamp(start) + pd.Timedelta(days=max(days, 2) // 2)
    campaigns = pd.DataFrame({"campaign_id": ["CMP-1", "CMP-2"], "name": ["Spring mail", "Autumn SMS"],
                              "channel": ["email", "sms"],
                              "start_date": [mid.strftime("%Y-%m-%d"), (mid + pd.Timedelta(days=30)).strftime("%Y-%m-%d")],
                              "end_date": [(mid + pd.Timedelta(days=14)).strftime("%Y-%m-%d"),
                                           min(end, mid + pd.Timedelta(days=44)).strftime("%Y-%m-%d")],
                              "cost": [300.0, 120.0]})
    rows = []
    for c in campaigns["campaign_id"]:
        chosen = rng.choice(n, size=min(n, max(2, (3 * n) // 4)), replace=False)
        group = np.where(rng.random(len(chosen)) < 0.8, "treatment", "control")
        if campaign == "no_control":
            group[:] = "treatment"
        conv = rng.random(len(chosen)) < np.where(group == "treatment", 0.25, 0.15)
        if campaign == "no_conversions":
            conv[:] = False
        for i, g, v in zip(chosen, group, conv):
            rows.append((c, cid(i), g, bool(v), round(float(rng.gamma(2, 30)), 2) if v else 0.0))
    contacts = pd.DataFrame(rows, columns=["campaign_id", "customer_id", "group", "converted", "revenue"])
    return {"customers": cust, "orders": orders, "order_lines": lines, "products": products,
            "interactions": inter, "tickets": tickets, "campaigns": campaigns,
            "campaign_contacts": contacts}


def _only(*keep: str):
    return lambda t: {k: v for k, v in t.items() if k in keep}


def _set(table: str, **cols):
    def f(t):
        t[table] = t[table].assign(**{k: (v(t[table]) if callable(v) else v) for k, v in cols.items()})
        return t
    return f


def _drop_cols(table: str, *cols: str):
    def f(t):
        t[table] = t[table].drop(columns=[c for c in cols if c in t[table].columns])
        return t
    return f


def _empty_optionals(t):
    return {k: (v if k == "orders" else v.iloc[0:0]) for k, v in t.items()}


def _one_day(t):
    t["orders"]["order_date"] = "2024-11-11 10:00:00"
    return t


def _plain_export(t):  # crash 3 of the foreign-data issue: customers and orders, nothing else
    t = _only("customers", "orders")(t)
    t["customers"] = t["customers"][["customer_id", "name", "email", "phone"]]
    t["orders"] = t["orders"][["order_id", "customer_id", "order_date", "amount"]]
    return t


def _spreadsheet(t):  # crash 5: 2024/3/5 dates, ¥1,234.50 amounts, an empty row, 00042 ids
    o = t["orders"]
    d = pd.to_datetime(o["order_date"])
    o["order_date"] = [f"{x.year}/{x.month}/{x.day}" for x in d]
    o["amount"] = [f"¥{a:,.2f}" for a in o["amount"]]
    blank = pd.DataFrame([[""] * o.shape[1]], columns=o.columns)
    t["orders"] = pd.concat([o.iloc[:5], blank, o.iloc[5:]], ignore_index=True)
    return t


def _mixed_id_types(t):  # numbers in one table, the same ids as text in another
    t["orders"]["customer_id"] = t["orders"]["customer_id"].astype(str) + ".0"
    return t


def _single_customer(t):
    c0 = t["customers"]["customer_id"].iloc[0]
    t["orders"]["customer_id"] = c0
    for k in ("campaign_contacts",):
        t[k] = t[k].drop_duplicates("campaign_id").assign(customer_id=c0)
    t["tickets"]["customer_id"] = c0
    t["interactions"]["customer_id"] = c0
    return t


#: name -> (knobs of base_tables, function that bends the tables, the reports
#: the shape can break: every report unless the shape only concerns some tables)
ALL = REPORTS
CAMPAIGN = ("data-quality", "campaigns")
SHAPES: dict[str, tuple[dict, Callable, tuple[str, ...]]] = {
    "plain": ({}, lambda t: t, ALL),
    "orders-only": ({}, _only("orders"), ALL),
    "orders-minimal-columns": ({}, lambda t: {"orders": t["orders"][["customer_id", "order_date", "amount"]]}, ALL),
    "one-customer": ({"customers": 1, "orders_per_customer": 6}, _single_customer, ALL),
    "one-order": ({"customers": 1, "orders_per_customer": 1}, lambda t: t, ALL),
    "two-orders": ({"customers": 2, "orders_per_customer": 1}, lambda t: t, ALL),
    "one-day": ({"customers": 40}, _one_day, ALL),
    "few-days": ({"customers": 40, "days": 3}, lambda t: t, ALL),
    "decades": ({"customers": 80, "orders_per_customer": 8, "start": "1970-01-01", "days": 65 * 365}, lambda t: t, ALL),
    "weekly-only": ({"customers": 50, "freq": "W", "days": 400}, lambda t: t, ALL),
    "monthly-only": ({"customers": 50, "freq": "MS", "days": 900, "orders_per_customer": 10}, lambda t: t, ALL),
    "small-plain-export": ({"customers": 400, "orders_per_customer": 8, "days": 500}, _plain_export, ALL),
    "zero-padded-ids": ({"ids": "zero"}, lambda t: t, ALL),
    "code-ids": ({"ids": "code"}, lambda t: t, ("data-quality", "segmentation", "lifecycle", "campaigns")),
    "mixed-id-types": ({}, _mixed_id_types, ALL),
    "status-absent": ({"status": "absent"}, lambda t: t, ALL),
    "all-refunded": ({"status": "refunded"}, lambda t: t, ALL),
    "unknown-statuses": ({"status": "unknown"}, lambda t: t, ALL),
    "equal-amounts": ({"amounts": "equal"}, lambda t: t, ALL),
    "zero-amounts": ({"amounts": "zero"}, lambda t: t, ALL),
    "huge-amounts": ({"amounts": "huge"}, lambda t: t, ALL),
    "one-category": ({}, _set("order_lines", category="tea"), ("data-quality", "segmentation", "forecasting")),
    "no-control-group": ({"campaign": "no_control"}, lambda t: t, CAMPAIGN),
    "no-conversions": ({"campaign": "no_conversions"}, lambda t: t, CAMPAIGN),
    "tickets-without-text": ({}, _drop_cols("tickets", "text", "topic", "satisfaction", "nps", "resolved_at"),
                             ("data-quality", "lifecycle")),
    "optional-tables-empty": ({}, _empty_optionals, ALL),
    "chinese-text": ({"text": "zh"}, lambda t: t, ("data-quality", "segmentation", "lifecycle", "campaigns")),
    "emoji-text": ({"text": "emoji"}, lambda t: t, ("data-quality", "segmentation", "lifecycle", "campaigns")),
    "spreadsheet-export": ({}, _spreadsheet, ALL),
}


def shape_tables(name: str, seed: int = 0) -> dict[str, pd.DataFrame]:
    knobs, bend, _ = SHAPES[name]
    return bend(base_tables(seed=seed, **knobs))


def write_source(tables: dict[str, pd.DataFrame], directory: Path, *, encoding: str = "utf-8") -> Path:
    """Each table as ``<name>.csv`` (header-only when it has no rows)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        if df.empty and len(df.columns) == 0:
            df = pd.DataFrame(columns=HEADERS.get(name, ["customer_id"]))
        df.to_csv(directory / f"{name}.csv", index=False, encoding=encoding)
    return directory


# ----------------------------------------------------------------------------- running a report
def _cells(report: str) -> list[tuple[str, list[str]]]:
    from crmlab.runner import notebook_path
    nb = json.loads(Path(notebook_path(report)).read_text(encoding="utf-8"))
    return [("".join(c["source"]), c.get("metadata", {}).get("tags", []))
            for c in nb["cells"] if c["cell_type"] == "code"]


def run_inprocess(report: str, source: Path | str, run_dir: Path, *, mapping: str = "",
                  params: dict | None = None) -> tuple[str, str]:
    """Run one report's notebook in this process, as the runner would.

    The runner's own contract check comes first (refusals there never start
    a kernel), then every code cell with the parameters injected after the
    ``parameters`` cell. Returns ``("published", "")``, ``("refused", the
    sentence)`` for a :class:`~crmlab.exceptions.CrmlabError` whose exit code
    is 2 or 3, or ``("crashed", cell number and traceback)``.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from crmlab import runner
    from crmlab.exceptions import CrmlabError

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    values = {"source": str(source), "mapping": mapping, "run_dir": str(run_dir)}
    values.update(params or {})
    try:
        runner.check_source(str(source), mapping or None)
    except CrmlabError as exc:
        return ("refused", str(exc)) if exc.exit_code in (2, 3) else ("crashed", f"check: {exc!r}")
    except Exception:  # noqa: BLE001 - the gauntlet reports every other error as a crash
        return "crashed", "contract check\n" + traceback.format_exc()
    ns: dict = {"__name__": "__main__"}
    i = 0
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the cells' HTML displays
            for i, (code, tags) in enumerate(_cells(report)):
                exec(compile(code, f"<{report} cell {i}>", "exec"), ns)  # noqa: S102
                if "parameters" in tags:
                    injected = "\n".join(f"{k} = {v!r}" for k, v in values.items())
                    exec(compile(injected, f"<{report} injected>", "exec"), ns)  # noqa: S102
        return "published", ""
    except CrmlabError as exc:
        if exc.exit_code in (2, 3) and str(exc).strip():
            return "refused", str(exc)
        return "crashed", f"cell {i}\n" + traceback.format_exc()
    except Exception:  # noqa: BLE001
        return "crashed", f"cell {i}\n" + traceback.format_exc()
    finally:
        plt.close("all")


def metrics_of(run_dir: Path) -> dict:
    path = Path(run_dir) / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else {}
