"""Sources: every SPEC form, mappings, encodings, the contract check and the
quarantine (planted bad rows found with their row numbers, good rows kept,
no values anywhere)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import duckdb
import ibis
import pandas as pd
import pytest
from conftest import TINY_DEFECTS, WORLD_END, tiny_world_tables

from crmlab import engine, schema, sources
from crmlab.exceptions import DataContractError, NoDataError, ParameterError
from crmlab.sources import detect_encoding, load_mapping, open_source, validate_command

QCOLS = ["table", "row", "column", "check"]


def planted(tables=None) -> set[tuple]:
    return {d for d in TINY_DEFECTS if tables is None or d[0] in tables}


def as_set(q: pd.DataFrame) -> set[tuple]:
    return set(q[QCOLS].itertuples(index=False, name=None))


def write_csv_world(directory: Path, encodings: dict[str, str] | None = None) -> Path:
    """The tiny world as CSV, ids as integer text (as an export writes them)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, df in tiny_world_tables().items():
        df = df.copy()
        for c in df.columns:
            if c.endswith("_id"):
                df[c] = df[c].astype("Int64")
        text = df.to_csv(index=False)
        (directory / f"{name}.csv").write_bytes(text.encode((encodings or {}).get(name, "utf-8")))
    return directory


# ----------------------------------------------------------------------------- quarantine

def test_parquet_dir_quarantine_finds_every_planted_row(tiny_world):
    with open_source(str(tiny_world)) as ds:
        q = ds.quarantine
        assert list(q.columns) == QCOLS
        assert as_set(q) == planted()                     # every one, nothing else
        counts = ds.row_counts
        for t, df in tiny_world_tables().items():
            bad = {r for tt, r, _, _ in TINY_DEFECTS if tt == t}
            assert counts[t] == {"rows": len(df), "quarantined": len(bad)}
            kept = ds.table(t).count().execute()
            assert kept == len(df) - len(bad)             # good rows kept


def test_quarantine_holds_no_values(tiny_world):
    with open_source(str(tiny_world)) as ds:
        q = ds.quarantine
    assert q["row"].dtype == "int64"
    values = {str(v) for df in tiny_world_tables().values() for v in df.to_numpy().ravel()}
    names = set(schema.TABLES) | {c for t in schema.TABLES.values() for c in t.columns}
    names |= {"+".join(t.key) for t in schema.TABLES.values()} | set(schema.CHECKS)
    for col in ("table", "column", "check"):
        assert set(q[col]) <= names
        assert not (set(q[col]) & (values - names))


def test_table_is_typed_and_keeps_first_of_duplicates(tiny_world):
    with open_source(str(tiny_world)) as ds:
        orders = ds.to_pandas("orders")
        raw = ds.raw("orders").to_pandas()
        customers = ds.to_pandas("customers")
        assert ds.table("orders").schema()["customer_id"].is_int64()   # float source, int ids
    assert str(orders["order_date"].dtype).startswith("datetime64")
    assert set(orders["status"]) <= {"paid", "refunded", "cancelled"}
    assert " PAID" in set(raw["status"])             # normalised, not quarantined
    assert "_row" in raw.columns and raw["_row"].tolist() == list(range(1, 41))
    dup = raw.loc[raw._row == 35, "order_id"].item()
    assert (orders.order_id == dup).sum() == 1       # row 34 kept, row 35 out
    # mixed date formats: 05/03/1975 month-first, 1990年7月1日, Jan 05, 1988
    bd = customers.set_index("customer_id")["birth_date"]
    assert bd[2] == pd.Timestamp("1975-05-03") and bd[3] == pd.Timestamp("1990-07-01")
    assert bd[5] == pd.Timestamp("1988-01-05")


def test_synthetic_spec_opens_the_world_dir(tiny_world, monkeypatch):
    fake = types.ModuleType("crmlab.synthetic")
    fake.ensure_world = lambda scenario: tiny_world if scenario == "tiny" else None
    monkeypatch.setitem(sys.modules, "crmlab.synthetic", fake)
    with open_source("synthetic:tiny") as ds:
        assert ds.kind == "synthetic" and ds.spec == "synthetic:tiny"
        assert ds.truth == tiny_world / "truth" and ds.world["end"] == WORLD_END
        assert ds.extracted_at == pd.Timestamp(WORLD_END)
        assert as_set(ds.quarantine) == planted()
        assert ds.encodings == {}


def test_opening_is_lazy(tiny_world):
    with open_source(str(tiny_world)) as ds:
        assert ds._quarantine == {} and ds._counts == {}
        ds.table("tickets")
        assert set(ds._quarantine) == {"tickets"}


# ----------------------------------------------------------------------------- source kinds

def test_csv_dir_with_gbk_and_bom_reads_like_parquet(tmp_path, tiny_world):
    d = write_csv_world(tmp_path / "csv", {"customers": "gbk", "orders": "utf-8-sig"})
    # a Chinese name so the GBK file really needs GBK
    text = (d / "customers.csv").read_bytes().decode("gbk").replace("Person 1,", "张三,")
    (d / "customers.csv").write_bytes(text.encode("gbk"))
    with open_source(str(d)) as ds:
        assert ds.kind == "files"
        assert ds.encodings["customers"] == "gb18030"
        assert ds.encodings["orders"] == "utf-8-sig"
        assert ds.encodings["tickets"] == "utf-8"
        assert ds.id_types["customer_id"] == "int64"
        assert as_set(ds.quarantine) == planted()
        names = ds.to_pandas("customers", ["customer_id", "name"])
        assert "张三" in set(names["name"])
        assert ds.raw("orders").columns[:2] == ("_row", "order_id")   # no BOM in the name
        with open_source(str(tiny_world)) as pq_ds:
            a = engine.customer_summary(ds.table("orders")).to_pandas()
            b = engine.customer_summary(pq_ds.table("orders")).to_pandas()
    key = ["customer_id"]
    pd.testing.assert_frame_equal(a.sort_values(key, ignore_index=True),
                                  b.sort_values(key, ignore_index=True), check_dtype=False)


def test_duckdb_file(tmp_path):
    path = tmp_path / "crm.duckdb"
    con = duckdb.connect(str(path))
    for name, df in tiny_world_tables().items():
        con.register("df", df)
        con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM df')
        con.unregister("df")
    con.close()
    with open_source(str(path)) as ds:
        assert ds.kind == "duckdb" and len(ds.tables) == 8
        assert as_set(ds.quarantine) == planted()
    with duckdb.connect(str(path)) as con:       # attached read-only: file untouched
        assert con.execute("SELECT count(*) FROM orders").fetchall() == [(40,)]


@pytest.mark.postgres
def test_postgres_matches_duckdb(pg_url, tiny_world):
    con = ibis.postgres.connect(host=pg_url.split("@")[1].split(":")[0],
                                port=int(pg_url.rsplit(":", 1)[1].split("/")[0]),
                                user="postgres", database="crmlab_test")
    con.raw_sql("CREATE SCHEMA IF NOT EXISTS shop").close()
    for name, df in tiny_world_tables().items():
        con.create_table(name, df, database="shop", overwrite=True)
    con.disconnect()
    with open_source(f"{pg_url}/shop") as pg, open_source(str(tiny_world)) as dk:
        assert pg.kind == "postgres" and pg.backend.name == "postgres"
        assert as_set(pg.quarantine) == as_set(dk.quarantine) == planted()
        assert pg.row_counts == dk.row_counts
        a = engine.customer_summary(pg.table("orders"), as_of="2024-06-30").to_pandas()
        b = engine.customer_summary(dk.table("orders"), as_of="2024-06-30").to_pandas()
        c1 = pg.to_pandas("customers").sort_values("customer_id", ignore_index=True)
        c2 = dk.to_pandas("customers").sort_values("customer_id", ignore_index=True)
        # a clean table needs no row numbers: no key-order sort on the server
        assert "ROW_NUMBER" not in ibis.to_sql(pg.table("interactions")).upper()
        i1 = pg.to_pandas("interactions").sort_values(["customer_id", "ts"], ignore_index=True)
        i2 = dk.to_pandas("interactions").sort_values(["customer_id", "ts"], ignore_index=True)
    pd.testing.assert_frame_equal(i1, i2, check_dtype=False)
    key = ["customer_id"]
    a, b = a.sort_values(key, ignore_index=True), b.sort_values(key, ignore_index=True)
    assert len(a) > 5
    pd.testing.assert_frame_equal(a, b, check_dtype=False)
    pd.testing.assert_frame_equal(c1, c2, check_dtype=False)   # text dates parsed alike


def test_unknown_spec_lists_the_accepted_forms(tmp_path):
    with pytest.raises(DataContractError) as info:
        open_source(str(tmp_path / "nowhere"))
    for form in sources.SPEC_FORMS:
        assert form in str(info.value)


def test_password_is_redacted():
    assert sources._redact("postgresql://ann:s3cret@db:5432/crm") == \
        "postgresql://ann:***@db:5432/crm"


# ----------------------------------------------------------------------------- contract check

def test_missing_required_column_names_table_and_column_not_values(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    (d / "orders.csv").write_text("order_id,customer_id,order_date,total\n"
                                  "1,42,2024-01-01,Zhang San 13800138000\n")
    (d / "customers.csv").write_text("id,name\n42,Zhang San\n")
    with pytest.raises(DataContractError) as info:
        open_source(str(d))
    msg = str(info.value)
    assert "orders" in msg and "amount" in msg
    assert "customers" in msg and "customer_id" in msg      # every failure, not the first
    assert "Zhang" not in msg and "13800138000" not in msg
    assert info.value.table == "orders" and info.value.column == "amount"
    code, text = validate_command(str(d))
    assert code == 2 and "amount" in text and "Zhang" not in text


def test_missing_orders_table(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    (d / "customers.csv").write_text("customer_id\n1\n")
    with pytest.raises(DataContractError, match="orders"):
        open_source(str(d))


def test_validate_command_exit_codes(tmp_path, tiny_world):
    code, text = validate_command(str(tiny_world))
    assert code == 0
    assert "contract: OK (orders: 32 usable rows)" in text
    assert "orders.amount" in text and "negative_amount" in text
    assert "5000000" not in text and "unknown" not in text
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "orders.csv").write_text("customer_id,order_date,amount\n")
    code, text = validate_command(str(empty))
    assert code == 3 and "NO DATA (table orders is empty)" in text
    code, text = validate_command(str(tmp_path / "nowhere"))
    assert code == 2


# ----------------------------------------------------------------------------- mapping

FOREIGN = ("Kundennr;Datum;Betrag;Status;Kanal\n"
           "7;03.02.2024 10:00;1.234,50;Bezahlt;web\n"
           "8;04/02/2024;99,00; ERSTATTET ;app\n"
           "9;2024-02-05;12,00;offen;web\n")


def test_mapping_renames_and_maps_values(tmp_path):
    d = tmp_path / "export"
    d.mkdir()
    (d / "bestellungen.csv").write_text(FOREIGN, encoding="utf-8")
    mapping = {"name": "de", "dayfirst": True, "decimal": ",",
               "tables": {"orders": {
                   "source": "bestellungen.csv", "delimiter": ";",
                   "columns": {"Kundennr": "customer_id", "Datum": "order_date",
                               "Betrag": "amount", "Status": "status", "Kanal": "channel"},
                   "values": {"status": {"bezahlt": "paid", "Erstattet": "refunded"}}}}}
    with open_source(str(d), mapping) as ds:
        assert ds.columns("orders") == ["customer_id", "order_date", "amount", "channel",
                                        "status"]
        o = ds.to_pandas("orders").sort_values("customer_id", ignore_index=True)
        q = ds.quarantine
    assert o["amount"].tolist() == [1234.5, 99.0]
    assert o["status"].tolist() == ["paid", "refunded"]
    assert o["order_date"].tolist() == [pd.Timestamp("2024-02-03 10:00"),
                                        pd.Timestamp("2024-02-04")]      # dayfirst honoured
    assert as_set(q) == {("orders", 3, "status", "out_of_domain")}      # 'offen' unmapped


def test_mapping_from_yaml_file_and_limits(tmp_path):
    d = tmp_path / "export"
    d.mkdir()
    (d / "orders.csv").write_text("customer_id,order_date,amount\n1,2024-01-01,600\n"
                                  "2,2024-01-02,400\n")
    m = tmp_path / "mine.yaml"
    m.write_text("tables:\n  orders:\n    limits:\n      amount: {max: 500}\n")
    with open_source(str(d), str(m)) as ds:
        assert as_set(ds.quarantine) == {("orders", 1, "amount", "absurd_amount")}
        assert ds.mapping["name"] == "mine"


@pytest.mark.parametrize("bad, needle", [
    ({"tabels": {}}, "tabels"),
    ({"tables": {"order": {}}}, "order"),
    ({"tables": {"orders": {"colums": {}}}}, "colums"),
    ({"tables": {"orders": {"columns": {"X": "amout"}}}}, "amout"),
    ({"tables": {"orders": {"limits": {"amount": {"maximum": 1}}}}}, "maximum"),
    ({"tables": {"orders": {"date_format": {"order_date": "%Y-%j"}}}}, "%j"),
    ({"timezone": "Mars/Olympus"}, "Mars/Olympus"),
])
def test_mapping_is_validated(bad, needle):
    with pytest.raises(ParameterError, match=needle.replace("%", "%")):
        load_mapping(bad)


def test_shipped_example_mapping(tmp_path):
    root = Path(__file__).resolve().parents[1]
    with open_source(str(root / "examples" / "shop-export"), "shop-export") as ds:
        assert ds.encodings == {"customers": "gb18030", "orders": "utf-8-sig",
                                "products": "utf-8"}
        assert ds.id_types["customer_id"] == "string"
        planted_rows = {17, 230, 404, 615, 777, 901, 1203}   # make_example.PLANTED_ORDERS
        assert set(ds.quarantine["row"]) == planted_rows
        assert ds.count("orders") == 1500
        assert set(ds.to_pandas("customers", ["gender"])["gender"]) == {"M", "F"}


# ----------------------------------------------------------------------------- text parsing

def test_detect_encoding(tmp_path):
    text = "customer_id,name\n1,张三\n"
    for enc, expected in [("utf-8", "utf-8"), ("utf-8-sig", "utf-8-sig"), ("gbk", "gb18030"),
                          ("gb18030", "gb18030")]:
        p = tmp_path / f"{enc}.csv"
        p.write_bytes(text.encode(enc))
        assert detect_encoding(p) == expected
    p = tmp_path / "latin.csv"
    p.write_bytes(b"name\n\x81\x30\xff\n")
    with pytest.raises(DataContractError, match="encoding"):
        detect_encoding(p)
    assert detect_encoding(p, "latin-1") == "iso8859-1"


DATES = ["2024-01-05", "2024-1-5", "2024-01-05 10:11", "2024-01-05T10:11:12.25",
         "2024/01/05", "05/01/2024", "13/01/2024", "2024年1月5日", "2024年01月05日 14:05",
         "Jan 05, 2024", "5 Jan 2024", "January 5, 2024", "20240105", "31.12.2023",
         "2024-02-29", "2023-02-29", "2024-02-30", "2024-13-01", "2024-01-05 24:00:00",
         "2024-01-05T10:11:12+08:00", "2024-01-05T10:11:12Z", "2024-01-05 10:11:12-0130",
         "garbage", "", " 2024-01-05 ", None, "NULL", "1900-02-29", "2000-02-29"]


@pytest.mark.parametrize("dayfirst", [False, True])
@pytest.mark.parametrize("zone", [None, "Asia/Shanghai"])
def test_date_parsers_agree_across_engines(dayfirst, zone):
    """DuckDB's try_strptime route and the portable regex route (used on
    PostgreSQL) give the same timestamp for every text."""
    con = ibis.duckdb.connect()
    t = ibis.memtable(pd.DataFrame({"s": pd.Series(DATES, dtype=object)}))
    formats = schema.date_formats(dayfirst)
    a = con.execute(sources.parse_datetime(t, "s", formats, zone, backend=con))
    b = con.execute(sources.parse_datetime(t, "s", formats, zone, backend=con,
                                           engine="postgres"))
    pd.testing.assert_series_equal(a["s_parsed"], b["s_parsed"])
    got = dict(zip(DATES, a["s_parsed"]))
    assert got["05/01/2024"] == pd.Timestamp("2024-01-05" if dayfirst else "2024-05-01")
    assert pd.isna(got["13/01/2024"]) != dayfirst
    for text in ("2023-02-29", "2024-02-30", "2024-13-01", "garbage", "1900-02-29"):
        assert pd.isna(got[text]), text
    shift = 8 if zone else 0
    assert got["2024-01-05T10:11:12Z"] == pd.Timestamp("2024-01-05 10:11:12") + \
        pd.Timedelta(hours=shift)
    assert got["2024-01-05T10:11:12+08:00"] == pd.Timestamp("2024-01-05 02:11:12") + \
        pd.Timedelta(hours=shift)
    assert got["20240105"] == got["31.12.2023"] + pd.Timedelta(days=5)


def test_aware_timestamps_are_converted_to_the_mapping_timezone(tmp_path):
    d = tmp_path / "tz"
    d.mkdir()
    pd.DataFrame({"customer_id": [1, 2], "amount": [1.0, 2.0],
                  "order_date": pd.to_datetime(["2024-01-01 00:30", "2024-06-01 12:00"],
                                               utc=True)}).to_parquet(d / "orders.parquet")
    with open_source(str(d), {"timezone": "Asia/Shanghai"}) as ds:
        got = ds.to_pandas("orders").sort_values("customer_id")["order_date"].tolist()
    assert got == [pd.Timestamp("2024-01-01 08:30"), pd.Timestamp("2024-06-01 20:00")]
    with open_source(str(d), {"timezone": "Europe/Berlin"}) as ds:   # summer time
        got = ds.to_pandas("orders").sort_values("customer_id")["order_date"].tolist()
    assert got == [pd.Timestamp("2024-01-01 01:30"), pd.Timestamp("2024-06-01 14:00")]


def test_numbers_and_ids_from_text(tmp_path):
    d = tmp_path / "n"
    d.mkdir()
    (d / "orders.csv").write_text('order_id,customer_id,order_date,amount,quantity\n'
                                  '1,007,2024-01-01,"¥1,234.50",2\n'
                                  '2,8,2024-01-01,12abc,2.5\n'
                                  '3,9,2024-01-01,1e3,\n', encoding="utf-8")
    (d / "customers.csv").write_text("customer_id\n007\n8\n", encoding="utf-8")
    with open_source(str(d)) as ds:
        assert ds.id_types == {"customer_id": "string", "order_id": "int64"}  # leading zero
        o = ds.to_pandas("orders")
        assert as_set(ds.quarantine) == {("orders", 2, "amount", "parse_number"),
                                         ("orders", 2, "quantity", "parse_number")}
    assert o["amount"].tolist() == [1234.5, 1000.0]
    assert o["customer_id"].tolist() == ["007", "9"]


def test_fingerprint_follows_the_files(tmp_path, tiny_world):
    with open_source(str(tiny_world)) as ds:
        first = ds.fingerprint
    with open_source(str(tiny_world)) as ds:
        assert ds.fingerprint == first and len(first) == 12
    df = tiny_world_tables()["products"].assign(list_price=1.0)
    df.to_parquet(tiny_world / "products.parquet", index=False)
    with open_source(str(tiny_world)) as ds:
        assert ds.fingerprint != first


# ----------------------------------------------------------------------------- empty files

ORDERS = "order_id,customer_id,order_date,amount\n1,7,2024-01-01,10\n2,8,2024-01-02,20\n"
OPTIONAL_HEADERS = {t: ",".join(schema.required_columns(t)) for t in schema.TABLES if t != "orders"}


@pytest.mark.parametrize("content", ["", "\n", "\ufeff"])
def test_an_empty_orders_file_is_no_data(tmp_path, content):
    (tmp_path / "orders.csv").write_text(content, encoding="utf-8")
    with pytest.raises(NoDataError, match="table orders is empty") as info:
        open_source(str(tmp_path))
    assert info.value.exit_code == 3
    code, text = validate_command(str(tmp_path))
    assert code == 3 and "orders is empty" in text


def test_a_header_only_orders_file_opens_with_no_rows(tmp_path):
    (tmp_path / "orders.csv").write_text("customer_id,order_date,amount\n")
    with open_source(str(tmp_path)) as ds:
        assert ds.row_counts["orders"] == {"rows": 0, "quarantined": 0}
        assert ds.to_pandas("orders").empty


@pytest.mark.parametrize("table", list(OPTIONAL_HEADERS))
@pytest.mark.parametrize("header_only", [False, True])
def test_an_empty_optional_table_is_absent_with_a_note(tmp_path, table, header_only):
    (tmp_path / "orders.csv").write_text(ORDERS)
    (tmp_path / f"{table}.csv").write_text(OPTIONAL_HEADERS[table] + "\n" if header_only else "")
    with open_source(str(tmp_path)) as ds:
        assert ds.tables == ["orders"] and not ds.has(table)
        assert any(f"file {table}.csv" in n and "absent" in n for n in ds.notes), ds.notes
        assert ds.row_counts["orders"]["rows"] == 2


def test_an_empty_parquet_table_is_absent(tmp_path):
    (tmp_path / "orders.csv").write_text(ORDERS)
    pd.DataFrame({"customer_id": pd.Series([], dtype="int64")}).to_parquet(
        tmp_path / "customers.parquet")
    with open_source(str(tmp_path)) as ds:
        assert ds.tables == ["orders"]


@pytest.mark.parametrize("table, header", [("orders", "Kunde,Datum"), ("tickets", "a,b")])
def test_a_table_without_any_contract_column_is_a_contract_error(tmp_path, table, header):
    (tmp_path / "orders.csv").write_text(ORDERS)
    (tmp_path / f"{table}.csv").write_text(f"{header}\n1,2\n")
    with pytest.raises(DataContractError) as info:
        open_source(str(tmp_path))
    msg = str(info.value)
    for col in schema.required_columns(table):
        assert f"table {table}: required column {col} is missing" in msg


# ----------------------------------------------------------------------------- ids across tables

def _ids_source(d: Path, customers, orders_ids: list[str]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(customers, pd.DataFrame):
        customers.to_parquet(d / "customers.parquet", index=False)
    else:
        (d / "customers.csv").write_text("customer_id,name\n" + "".join(
            f"{c},n{i}\n" for i, c in enumerate(customers)), encoding="utf-8")
    (d / "orders.csv").write_text("order_id,customer_id,order_date,amount\n" + "".join(
        f"{i + 1},{c},2024-01-0{i % 9 + 1},10\n" for i, c in enumerate(orders_ids)),
        encoding="utf-8")
    return d


@pytest.mark.parametrize("case, customers, orders_ids, id_type, expected", [
    ("int parquet, text csv", pd.DataFrame({"customer_id": [42, 43]}), ["42", " 43"],
     "int64", [42, 43]),
    ("42 and 42.0", ["42", "43"], ["42.0", "43"], "int64", [42, 43]),
    ("float parquet, leading zeros", pd.DataFrame({"customer_id": [42.0, 7.0, None]}),
     ["00042", "7", "42"], "string", ["00042", "7", "42"]),
    ("leading zeros both sides", ["00042", "42"], ["00042", "42", "042"], "string",
     ["00042", "42", "042"]),
])
def test_ids_of_one_meaning_join_across_tables(tmp_path, case, customers, orders_ids, id_type,
                                               expected):
    with open_source(str(_ids_source(tmp_path / "s", customers, orders_ids))) as ds:
        assert ds.id_types["customer_id"] == id_type
        o = ds.table("orders")
        c = ds.table("customers")
        assert o.customer_id.type() == c.customer_id.type()
        got = o.order_by("order_id").customer_id.to_pyarrow().to_pylist()
        assert got == expected
        joined = o.join(c, "customer_id").count().to_pyarrow().as_py()
        known = set(c.customer_id.to_pyarrow().to_pylist())
        assert joined == sum(v in known for v in expected)
        if id_type == "string":            # a float id is read as the integer it holds
            assert "42.0" not in known and ("42" in known or "00042" in known)


# ----------------------------------------------------------------------------- fill

def test_fill_sets_a_column_the_export_does_not_have(tmp_path):
    # a shop that exports daily totals, without customers
    (tmp_path / "orders.csv").write_text("Tag,Umsatz\n2024-01-01,100\n2024-01-02,250.5\n")
    m = {"tables": {"orders": {"columns": {"Tag": "order_date", "Umsatz": "amount"},
                               "fill": {"customer_id": "all", "status": "paid"}}}}
    with open_source(str(tmp_path), m) as ds:
        assert ds.columns("orders") == ["customer_id", "order_date", "amount", "status"]
        o = ds.to_pandas("orders")
        assert o["customer_id"].tolist() == ["all", "all"] and o["status"].tolist() == ["paid"] * 2
        assert ds.id_types["customer_id"] == "string" and ds.quarantine.empty
    # without the fill the export breaks the contract, naming the column
    with pytest.raises(DataContractError, match="required column customer_id is missing"):
        open_source(str(tmp_path), {"tables": {"orders": {"columns": m["tables"]["orders"]["columns"]}}})


def test_fill_never_overwrites_a_column_the_export_has(tmp_path):
    (tmp_path / "orders.csv").write_text("customer_id,order_date,amount\n7,2024-01-01,10\n")
    m = {"tables": {"orders": {"fill": {"customer_id": 1, "quantity": 1}}}}
    with open_source(str(tmp_path), m) as ds:
        o = ds.to_pandas("orders")
        assert o["customer_id"].tolist() == [7] and o["quantity"].tolist() == [1]


@pytest.mark.parametrize("fill, needle", [
    ({"customer": "all"}, "unknown key(s) customer"),
    ({"customer_id": None}, "fill.customer_id: expected one value"),
    ({"customer_id": ["a", "b"]}, "fill.customer_id: expected one value"),
    ("all", "fill: expected column -> settings"),
])
def test_fill_is_validated(fill, needle):
    with pytest.raises(ParameterError) as info:
        load_mapping({"tables": {"orders": {"fill": fill}}})
    assert needle in str(info.value)


# ----------------------------------------------------------------------------- status words

STATUSES = ["Shipped", " DELIVERED ", "已完成", "交易成功", "Returned", "退货", "Voided", "交易关闭",
            "Canceled", "closed", "pending", "unknown", "?", "Processing"]


def _status_orders(statuses) -> str:
    return "order_id,customer_id,order_date,amount,status\n" + "".join(
        f"{i},{i},2024-01-{i:02d},10,{s}\n" for i, s in enumerate(statuses, start=1))


def test_the_common_status_words_of_exports_are_read_as_the_contract_says(tmp_path):
    (tmp_path / "orders.csv").write_text(_status_orders(STATUSES), encoding="utf-8")
    with open_source(str(tmp_path)) as ds:
        o = ds.to_pandas("orders").sort_values("order_id")
        assert o["status"].tolist() == ["paid", "paid", "paid", "paid", "refunded", "refunded",
                                        "cancelled", "cancelled", "cancelled", "paid"]
        # words that are not yet purchases stay defects, found by their row
        assert as_set(ds.quarantine) == {("orders", r, "status", "out_of_domain")
                                         for r in (11, 12, 13, 14)}
        assert engine.purchases(ds.table("orders")).count().execute() == 5


def test_the_mappings_own_values_override_the_common_words(tmp_path):
    (tmp_path / "orders.csv").write_text(_status_orders(["closed", "pending", "Shipped"]))
    m = {"tables": {"orders": {"values": {"status": {"Closed": "cancelled",
                                                     "pending": "paid"}}}}}
    with open_source(str(tmp_path), m) as ds:
        o = ds.to_pandas("orders").sort_values("order_id")
        assert o["status"].tolist() == ["cancelled", "paid", "paid"]
        assert ds.quarantine.empty


# ----------------------------------------------------------------------------- decades of history

def test_orders_from_the_1970s_are_history_and_before_1950_out_of_range(tmp_path):
    (tmp_path / "orders.csv").write_text(
        "order_id,customer_id,order_date,amount\n1,7,1975-03-01,10\n2,7,1950-01-01,10\n"
        "3,8,1949-12-31,10\n4,8,1899-12-30,10\n5,8,2024-01-01,10\n")
    (tmp_path / "campaigns.csv").write_text(
        "campaign_id,start_date,end_date\n1,1968-05-01,1968-06-01\n2,1930-01-01,1930-02-01\n")
    with open_source(str(tmp_path)) as ds:
        assert as_set(ds.quarantine) == {("orders", 3, "order_date", "date_out_of_range"),
                                         ("orders", 4, "order_date", "date_out_of_range"),
                                         ("campaigns", 2, "start_date", "date_out_of_range"),
                                         ("campaigns", 2, "end_date", "date_out_of_range")}


# ----------------------------------------------------------------------------- Latin-1 or GB18030

EUROPEAN = "customer_id,name,city\n1,Günter Müller,Düsseldorf\n2,Chloé Dubois,Besançon\n" \
           "3,José García,Málaga\n"
# every accented letter followed by a letter: also valid GB18030 (as garbled Chinese)
EUROPEAN_GB_VALID = "customer_id,name\n1,Günter Müller\n2,Renée Lefèvre\n3,Björn Sørensen\n"
CHINESE = "customer_id,name,city\n1,张伟,北京\n2,王芳,上海\n3,李娜,广州\n4,欧阳娜娜,深圳\n"


@pytest.mark.parametrize("text, enc", [(EUROPEAN, "latin-1"), (EUROPEAN, "cp1252"),
                                       (EUROPEAN_GB_VALID, "latin-1"), (CHINESE, "gb18030"),
                                       (CHINESE, "gbk")],
                         ids=["european-latin1", "european-cp1252", "gb-valid-latin1",
                              "chinese-gb18030", "chinese-gbk"])
def test_latin1_and_gb18030_files_are_told_apart(tmp_path, text, enc):
    p = tmp_path / "customers.csv"
    p.write_bytes(text.encode(enc))
    got = detect_encoding(p)
    assert p.read_bytes().decode(got) == text
    assert got == ("gb18030" if enc in ("gb18030", "gbk") else "cp1252")
    (tmp_path / "orders.csv").write_text(ORDERS)
    with open_source(str(tmp_path)) as ds:
        assert ds.encodings["customers"] == got
        names = ds.to_pandas("customers").sort_values("customer_id")["name"].tolist()
        assert names == [line.split(",")[1] for line in text.splitlines()[1:]]


def test_latin1_file_valid_as_gb18030_is_not_read_as_chinese(tmp_path):
    p = tmp_path / "customers.csv"
    p.write_bytes(EUROPEAN_GB_VALID.encode("latin-1"))
    assert p.read_bytes().decode("gb18030")          # the trap: it does decode
    assert detect_encoding(p) != "gb18030"


# ----------------------------------------------------------------------------- empty database tables

def _duckdb_file(path: Path, customers_rows: int = 0, orders_rows: int = 2) -> Path:
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE orders (order_id BIGINT, customer_id BIGINT, "
                    "order_date TIMESTAMP, amount DOUBLE)")
        con.execute(f"INSERT INTO orders SELECT i, i, TIMESTAMP '2024-01-01' + to_days(i::INT), "
                    f"10.0 FROM range(1, {orders_rows + 1}) t(i)")
        con.execute("CREATE TABLE customers (customer_id BIGINT, name VARCHAR)")
        con.execute(f"INSERT INTO customers SELECT i, 'x' FROM range(1, {customers_rows + 1}) t(i)")
    return path


def test_an_empty_duckdb_table_is_absent_with_a_note(tmp_path):
    path = _duckdb_file(tmp_path / "crm.duckdb")
    with open_source(str(path)) as ds:
        assert ds.tables == ["orders"] and not ds.has("customers")
        assert any("table customers" in n and "no rows" in n and "absent" in n
                   for n in ds.notes), ds.notes
    code, text = validate_command(str(path))
    assert code == 0 and "note: table customers" in text


def test_an_empty_duckdb_orders_table_is_no_data(tmp_path):
    from crmlab import runner

    path = _duckdb_file(tmp_path / "crm.duckdb", customers_rows=2, orders_rows=0)
    with open_source(str(path)) as ds:
        assert ds.row_counts["orders"] == {"rows": 0, "quarantined": 0}
    with pytest.raises(NoDataError) as info:
        runner.check_source(str(path))
    assert str(info.value) == "table orders is empty (the database table has no rows)"
    assert info.value.exit_code == 3


@pytest.mark.postgres
def test_an_empty_postgres_table_is_treated_like_an_empty_file(pg_url):
    from crmlab import runner

    con = ibis.postgres.connect(host=pg_url.split("@")[1].split(":")[0],
                                port=int(pg_url.rsplit(":", 1)[1].split("/")[0]),
                                user="postgres", database="crmlab_test")
    con.raw_sql("CREATE SCHEMA IF NOT EXISTS empties").close()
    orders = pd.DataFrame({"order_id": [1, 2], "customer_id": [1, 2],
                           "order_date": pd.to_datetime(["2024-01-01", "2024-01-02"]),
                           "amount": [10.0, 20.0]})
    con.create_table("orders", orders, database="empties", overwrite=True)
    con.create_table("customers", pd.DataFrame({"customer_id": pd.Series([], dtype="int64")}),
                     database="empties", overwrite=True)
    con.raw_sql("CREATE SCHEMA IF NOT EXISTS nothing").close()
    con.create_table("orders", orders.iloc[:0], database="nothing", overwrite=True)
    con.disconnect()
    with open_source(f"{pg_url}/empties") as ds:
        assert ds.tables == ["orders"]
        assert any("table customers" in n and "absent" in n for n in ds.notes), ds.notes
    with pytest.raises(NoDataError, match=r"table orders is empty \(the database table has no "
                                          r"rows\)"):
        runner.check_source(f"{pg_url}/nothing")


# ----------------------------------------------------------------------------- refusals that say why

def test_a_source_whose_orders_are_all_quarantined_is_refused_with_the_counts(tmp_path):
    from crmlab import runner

    rows = [f"{i},{i},2024-01-{i:02d},{'2e6' if i > 18 else 10},pending\n" for i in range(1, 25)]
    (tmp_path / "orders.csv").write_text("order_id,customer_id,order_date,amount,status\n"
                                         + "".join(rows))
    with pytest.raises(NoDataError) as info:
        runner.check_source(str(tmp_path))
    msg = str(info.value)
    assert msg.startswith("table orders has no usable rows in this source: all 24 rows are "
                          "quarantined (status out_of_domain: 24, amount absurd_amount: 6)"), msg
    assert f"crmlab validate --source {tmp_path}" in msg and "source mapping" in msg
    assert "pending" not in msg and "2e6" not in msg            # checks, never values
    assert info.value.exit_code == 3


def test_a_header_only_orders_file_is_refused_as_empty(tmp_path):
    from crmlab import runner

    (tmp_path / "orders.csv").write_text("customer_id,order_date,amount\n")
    with pytest.raises(NoDataError) as info:
        runner.check_source(str(tmp_path))
    assert str(info.value) == "table orders is empty (the file has a header and no rows)"
