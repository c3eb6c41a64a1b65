"""The data-quality report end to end, and its accuracy against the planted truth.

End to end (``crmlab.runner.run_report`` on the real notebook): the small
synthetic world, the smallest source the contract accepts (the sections
that lack their inputs say "Not available" and the report goes on) and the
worked example ``examples/shop-export`` (a GBK file, Chinese headers, its
mapping). Accuracy (slow): duplicate pairs and every injected defect class
on the demo world, with the tolerances of issue 3.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import assert_no_personal_values
from crmlab import config, dedupe, quality, schema, sources, synthetic
from crmlab.exceptions import DataContractError, NoDataError, ParameterError
from crmlab.runner import run_report

sys.path.insert(0, str(Path(__file__).resolve().parent / "notebooks"))
import testkit  # noqa: E402

METRIC_KEYS = ["quality_score", "completeness_score", "validity_score", "uniqueness_score",
               "consistency_score", "integrity_score", "timeliness_score", "duplicate_pairs",
               "duplicate_rate", "invalid_email_rate", "invalid_phone_rate", "orphan_orders",
               "quarantined_rows"]
EXPORTS = {"duplicates": ["customer_id_a", "customer_id_b", "match_probability"],
           "customer_key": ["customer_id", "unified_id"],
           "quarantine": ["table", "row", "column", "check"]}
EXAMPLE = config.project_root() / "examples" / "shop-export"


def _header(path: Path) -> list[str]:
    with open(path, encoding="utf-8", newline="") as fh:
        return next(csv.reader(fh))


def _visible_text(html: str) -> str:
    """The page without inline images (base64 can contain any short string)."""
    return re.sub(r'src="data:[^"]*"', "", html)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    reports = tmp_path_factory.mktemp("reports")
    res = run_report("data-quality", source="synthetic:small", reports_dir=reports)
    return res


@pytest.fixture(scope="module")
def small_world():
    return synthetic.ensure_world("small")


def test_small_world_run_succeeds_with_the_metrics_of_the_issue(small_run, small_world):
    assert small_run.exit_code == 0, small_run.message
    m = json.loads((small_run.run_dir / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert key in m, key
    world = json.loads((small_world / "world.json").read_text())
    for table, n in world["rows"].items():
        assert m[f"rows_{table}"] == n
    for key in METRIC_KEYS[:7]:
        assert 0 <= m[key] <= 100
    # the small world plants ~2% defects: a high score that is not perfect
    assert 90 < m["quality_score"] < 100
    truth = pd.read_parquet(small_world / "truth" / "duplicates.parquet")
    assert m["duplicate_pairs"] == pytest.approx(len(truth), rel=0.05)
    assert m["duplicate_rate"] == pytest.approx(len(truth) / world["rows"]["customers"], rel=0.05)
    defects = pd.read_parquet(small_world / "truth" / "defects.parquet")
    assert m["orphan_orders"] == int((defects["defect"] == "orphan_order").sum())
    for rate, cls in (("invalid_email_rate", "invalid_email"), ("invalid_phone_rate", "invalid_phone")):
        planted = int((defects["defect"] == cls).sum()) / world["rows"]["customers"]
        assert m[rate] == pytest.approx(planted, rel=0.25, abs=0.002)
    data = sources.open_source("synthetic:small")
    assert m["quarantined_rows"] == len(data.quarantine[["table", "row"]].drop_duplicates())


def test_small_world_exports_have_the_exact_columns(small_run, small_world):
    out = small_run.run_dir / "exports"
    for name, columns in EXPORTS.items():
        assert _header(out / f"{name}.csv") == columns
    pairs = pd.read_csv(out / "duplicates.csv")
    assert (pairs["match_probability"] >= 0.9).all()
    key = pd.read_csv(out / "customer_key.csv")
    customers = pd.read_parquet(small_world / "customers.parquet", columns=["customer_id"])
    assert sorted(key["customer_id"]) == sorted(customers["customer_id"])
    for a, b in zip(pairs["customer_id_a"], pairs["customer_id_b"]):
        assert key.set_index("customer_id").loc[a, "unified_id"] == \
            key.set_index("customer_id").loc[b, "unified_id"]


def test_small_world_page_shows_no_raw_personal_data(small_run, small_world):
    html = (small_run.run_dir / "report.html").read_text(encoding="utf-8")
    text = _visible_text(html)
    assert "Duplicate customers" in text and "Examples of records judged the same person" in text
    assert "Not available" not in text
    assert_no_personal_values(text, small_world, ("email", "phone", "national_id"))
    # the example pairs show masked names (full names of several words never appear)
    customers = pd.read_parquet(small_world / "customers.parquet", columns=["name"])
    full_names = [v for v in customers["name"].dropna().astype(str) if " " in v and len(v) > 8]
    assert not any(v in text for v in full_names)
    assert "crm-kpi" in html and "crm-findings" in html


@pytest.fixture(scope="module")
def minimal_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("minimal")
    src = testkit.tiny_source(root / "src", rows=3)
    res = run_report("data-quality", source=str(src), reports_dir=root / "reports")
    return res


def test_minimal_source_says_what_is_missing_and_goes_on(minimal_run):
    assert minimal_run.exit_code == 0, minimal_run.message
    text = _visible_text((minimal_run.run_dir / "report.html").read_text(encoding="utf-8"))
    assert "Not available: needs customers.email, customers.phone" in text
    assert "Not available: needs customers.customer_id" in text       # integrity, duplicates
    assert "Recommended fixes" in text and "Outliers" in text
    m = json.loads((minimal_run.run_dir / "metrics.json").read_text())
    assert m["rows_orders"] == 3
    assert m["duplicate_pairs"] is None and m["invalid_email_rate"] is None
    assert m["quality_score"] is not None and m["uniqueness_score"] is None
    for name, columns in EXPORTS.items():
        assert _header(minimal_run.run_dir / "exports" / f"{name}.csv") == columns


def test_worked_example_with_gbk_file_and_chinese_headers(tmp_path):
    res = run_report("data-quality", source=str(EXAMPLE), mapping="shop-export",
                     reports_dir=tmp_path / "reports")
    assert res.exit_code == 0, res.message
    m = json.loads((res.run_dir / "metrics.json").read_text())
    assert m["rows_customers"] == 300 and m["rows_orders"] == 1500
    assert m["quarantined_rows"] == 7                 # the seven rows the example breaks on purpose
    assert m["invalid_email_rate"] is not None and m["duplicate_pairs"] is not None
    text = _visible_text((res.run_dir / "report.html").read_text(encoding="utf-8"))
    members = pd.read_csv(EXAMPLE / "members.csv", encoding="gb18030", dtype=str)
    phones = [v for v in members["手机号"].dropna() if len(v) >= 7]
    assert phones and not any(p in text for p in phones)
    assert not any(e in text for e in members["邮箱"].dropna())
    # statuses in Chinese are mapped by the mapping, so they are not "outside the allowed list"
    assert "values outside their allowed list in orders.status" not in text


# ----------------------------------------------------------------------------- accuracy

@pytest.fixture(scope="module")
def demo():
    world = synthetic.ensure_world("demo")
    data = sources.open_source(str(world))
    q = quality.assess(data, random_state=42)
    return world, data, q


@pytest.mark.slow
def test_duplicate_pairs_precision_and_recall_on_the_demo_world(demo):
    world, _, q = demo
    truth = pd.read_parquet(world / "truth" / "duplicates.parquet")
    m = dedupe.pair_metrics(q.duplicates.pairs, truth)
    assert m["precision"] >= 0.95 and m["recall"] >= 0.95, m


def _keys(frame: pd.DataFrame) -> set:
    col = frame["column"].astype(object).where(frame["column"].notna(), None)
    return set(zip(frame["table"], frame["row"].astype(int), col))


@pytest.mark.slow
@pytest.mark.parametrize("defect", synthetic.DEFECT_CLASSES)
def test_each_defect_class_is_found_without_false_alarms(demo, defect):
    world, data, q = demo
    truth = pd.read_parquet(world / "truth" / "defects.parquet")
    planted = truth[truth["defect"] == defect]
    assert len(planted), f"the demo world plants no {defect}"
    found = q.defects[q.defects["defect"] == defect]
    recall = len(_keys(planted) & _keys(found)) / len(_keys(planted))
    assert recall >= 0.98, f"{defect}: recall {recall:.3f}"
    # false alarms: rows flagged for this class that carry no planted defect at all
    dirty = set(zip(truth["table"], truth["row"].astype(int)))
    tables = sorted(set(planted["table"]))
    clean_rows = sum(data.count(t) for t in tables) - len({k for k in dirty if k[0] in tables})
    alarms = {(t, int(r)) for t, r in zip(found["table"], found["row"])} - dirty
    assert len(alarms) / clean_rows < 0.01, f"{defect}: {len(alarms)} false alarms"


# ----------------------------------------------------------------------------- foreign shapes
#
# Each shape runs the notebook's own code cells in this process, as papermill
# would (the runner's contract check first, the parameters injected after the
# parameters cell), with the page's HTML collected from Report: a few seconds
# a shape instead of a kernel, an nbconvert and a page per shape.

NOTEBOOK = config.project_root() / "notebooks" / config.REPORTS["data-quality"]
REFUSED = (NoDataError, DataContractError, ParameterError)


def run_cells(source: Path, run_dir: Path, **params) -> tuple[str, dict]:
    """(the page's visible HTML, metrics.json) of the notebook on ``source``;
    raises what the contract check or a cell raised."""
    from unittest import mock

    from crmlab import report, runner

    runner.check_source(str(source), params.get("mapping") or None)
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    shown: list[str] = []
    ns: dict = {}
    inject = {"source": str(source), "run_dir": str(run_dir), **params}
    with mock.patch.object(report, "_display", shown.append):
        for cell in nb["cells"]:
            if cell["cell_type"] != "code":
                continue
            exec(compile("".join(cell["source"]), str(NOTEBOOK), "exec"), ns)
            if "parameters" in cell.get("metadata", {}).get("tags", []):
                ns.update(inject)
    return "\n".join(shown), json.loads((run_dir / "metrics.json").read_text())


def write(d: Path, **tables: str) -> Path:
    """A directory source: ``name=csv text`` per table (``bytes`` kept as they are)."""
    d.mkdir(parents=True, exist_ok=True)
    for name, text in tables.items():
        p = d / f"{name}.csv"
        p.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return d


SPREADSHEET = {
    "orders": ("order_id,customer_id,order_date,amount,status\n"
               '1,00042,2024/3/5,"¥1,234.50",paid\n'
               "2,00043,2024/3/6,¥99.00,paid\n"
               '3,42,2024/3/7,"¥2,000.00",refunded\n'
               ",,,,\n"
               "4,00044,2024/3/8,¥15.20,\n"),
    "customers": ("customer_id,name,email,phone,signup_date\n"
                  "00042,Ann Lee,ann@example.com,13912345670,2023/1/2\n"
                  "00043,Bob Ray,bob@example.com,,2023/2/3\n"
                  "42,Carl Zed,carl@example.com,+8613812345679,2023/3/4\n"
                  ",,,,\n"
                  "00044,Dee Fox,dee@example,123,2023/4/5\n"),
}


def test_spreadsheet_export_publishes_and_quarantines_the_empty_row(tmp_path):
    src = write(tmp_path / "src", **SPREADSHEET)
    html, m = run_cells(src, tmp_path / "run")
    assert m["rows_orders"] == 5 and m["rows_customers"] == 5
    assert m["orphan_orders"] == 0                       # 00042 and 42 are two customers
    assert m["duplicate_rate"] == 0 and m["quarantined_rows"] == 2
    q = pd.read_csv(tmp_path / "run" / "exports" / "quarantine.csv")
    assert set(zip(q["table"], q["row"], q["check"])) >= {("orders", 4, "not_null"),
                                                         ("customers", 4, "not_null")}
    key = pd.read_csv(tmp_path / "run" / "exports" / "customer_key.csv", dtype=str)
    assert sorted(key["customer_id"]) == ["00042", "00043", "00044", "42"]
    assert "Ann Lee" not in html and "13912345670" not in html


def test_spreadsheet_export_end_to_end(tmp_path):
    src = write(tmp_path / "src", **SPREADSHEET)
    res = run_report("data-quality", source=str(src), reports_dir=tmp_path / "reports")
    assert res.exit_code == 0, res.message


@pytest.mark.parametrize("content", ["", "customer_id,order_date,amount\n"])
def test_empty_orders_refuse_with_no_data(tmp_path, content):
    src = write(tmp_path / "src", orders=content)
    res = run_report("data-quality", source=str(src), reports_dir=tmp_path / "reports")
    assert res.exit_code == 3 and "orders" in res.message, res.message
    assert "empty" in res.message or "no usable rows" in res.message


ORDERS = ("order_id,customer_id,order_date,amount,status\n"
          + "".join(f"{i},{i % 4 + 1},2024-0{i % 6 + 1}-1{i % 9},{10 + 3 * i}.5,paid\n"
                    for i in range(1, 25)))


@pytest.mark.parametrize("table", [t for t in schema.TABLES if t != "orders"])
def test_each_optional_table_zero_byte_is_absent(tmp_path, table):
    src = write(tmp_path / "src", orders=ORDERS, **{table: ""})
    html, m = run_cells(src, tmp_path / "run", dedupe=False)
    assert m["rows_orders"] == 24 and f"rows_{table}" not in m
    assert "Not available: needs customers" in html if table == "customers" else True


def _orders(rows) -> str:
    return "order_id,customer_id,order_date,amount,status\n" + "".join(rows)


def _amounts(value) -> str:
    return _orders(f"{i},{i % 3 + 1},2024-01-0{i % 9 + 1},{value(i)},paid\n" for i in range(1, 20))


ONE_CUSTOMER = ORDERS.replace(",2,2024", ",1,2024").replace(",3,2024", ",1,2024").replace(",4,2024", ",1,2024")
LATIN1 = "customer_id,name,city\n1,José Müller,Zürich\n2,Renée Côté,Montréal\n3,Ana,Lyon\n4,Bo,Köln\n"
NEEDS_CUSTOMERS = "Not available: needs customers.customer_id (or another table that rows point to)"
NEEDS_TWO = "Not available: needs at least 2 customer records with a customer_id"

# shape -> (tables, what the page must say); every shape publishes
SHAPES = {
    "orders only": (dict(orders=ORDERS), NEEDS_CUSTOMERS),
    "one order": (dict(orders=_orders(["1,1,2024-01-01,10,paid\n"])), NEEDS_CUSTOMERS),
    "one customer": (dict(orders=ONE_CUSTOMER, customers="customer_id,name,email,phone\n"
                          "1,Ann Lee,ann@example.com,13912345670\n"), NEEDS_TWO),
    "one customer, only its id": (dict(orders=_orders(["1,1,2024-01-01,10,paid\n"]),
                                       customers="customer_id\n1\n"), NEEDS_TWO),
    "customers with only customer_id": (dict(orders=ORDERS, customers="customer_id\n1\n2\n3\n4\n"),
                                        "Not available: needs customers.email, customers.phone"),
    "customers without any id": (dict(orders=ORDERS, customers="customer_id,name\n,\n,A\n"),
                                 NEEDS_TWO),
    "Chinese names and emoji": (dict(orders=ORDERS, customers=(
        "customer_id,name,email,city\n1,张伟😀,a@qq.com,北京\n2,李娜🎉,b@163.com,上海\n"
        "3,王芳,,深圳\n4,欧阳娜娜👍🏽,d@qq.com,广州\n")), "Duplicate customers"),
    "no status column": (dict(orders="customer_id,order_date,amount\n1,2024-01-01,10\n"
                              "2,2024-01-02,20\n"), "Recommended fixes"),
    "all refunded": (dict(orders=ORDERS.replace("paid", "refunded")), "Recommended fixes"),
    "equal amounts": (dict(orders=_amounts(lambda i: 50)), "Outliers"),
    "zero amounts": (dict(orders=_amounts(lambda i: 0)), "Recommended fixes"),
    "some amounts 1e12": (dict(orders=_amounts(lambda i: "1e12" if i % 2 else 10)),
                          "absurd amounts"),
    "some negative amounts": (dict(orders=_amounts(lambda i: -i if i % 2 else i)),
                              "negative amounts"),
    "every order on one day": (dict(orders=_orders(f"{i},{i % 3 + 1},2024-01-01,{i},paid\n"
                                                   for i in range(1, 20))), "Outliers"),
    "Latin-1 customers, encoding declared": (dict(orders=ORDERS, customers=LATIN1.encode("latin-1"),
                                                  _mapping="encoding: latin-1\n"), "Duplicate customers"),
    # told apart from GB18030 by its characters (charset_normalizer)
    "Latin-1 customers, encoding not declared": (dict(orders=ORDERS, customers=LATIN1.encode("latin-1")),
                                                 "Duplicate customers"),
}

# shape -> (tables, exit code, words of the refusal)
REFUSALS = {
    "customers in an encoding that is neither UTF-8, GB18030 nor Latin-1": (
        dict(orders=ORDERS, customers=b"customer_id,name\n1,\x81\x30\xff\x81\n"), 2,
        "declare its encoding"),
    "unknown status words only": (dict(orders=ORDERS.replace("paid", "pending")), 3, "orders"),
    "negative amounts only": (dict(orders=_amounts(lambda i: -i)), 3, "orders"),
    "every amount 1e12": (dict(orders=_amounts(lambda i: "1e12")), 3, "orders"),
}


def _source(tmp_path: Path, tables: dict) -> tuple[Path, dict]:
    tables = dict(tables)
    params = {}
    if "_mapping" in tables:
        m = tmp_path / "mapping.yaml"
        m.write_text(tables.pop("_mapping"), encoding="utf-8")
        params["mapping"] = str(m)
    return write(tmp_path / "src", **tables), params


@pytest.mark.parametrize("shape", list(SHAPES))
def test_awkward_shapes_publish(tmp_path, shape):
    tables, says = SHAPES[shape]
    src, params = _source(tmp_path, tables)
    html, m = run_cells(src, tmp_path / "run", **params)
    assert says in html
    assert m["rows_orders"] == tables["orders"].count("\n") - 1
    assert m["quality_score"] is not None and 0 <= m["quality_score"] <= 100


@pytest.mark.parametrize("shape", list(REFUSALS))
def test_awkward_shapes_refuse_with_a_sentence(tmp_path, shape):
    tables, code, words = REFUSALS[shape]
    src, params = _source(tmp_path, tables)
    with pytest.raises(REFUSED) as info:
        run_cells(src, tmp_path / "run", **params)
    assert info.value.exit_code == code and words in str(info.value)


@pytest.mark.parametrize("customers, orders_ids, orphans", [
    (pd.DataFrame({"customer_id": [1, 2, 3, 4], "name": ["A B", "C D", "E F", "G H"]}),
     ["1", "2.0", "3", "4.0"], 0),                                   # int parquet, text with .0
    (pd.DataFrame({"customer_id": [1.0, 2.0, 3.0, None], "name": ["A B", "C D", "E F", None]}),
     ["0001", "2", "3", "3"], 1),                                    # float parquet, a leading zero
])
def test_ids_typed_differently_join_in_the_report(tmp_path, customers, orders_ids, orphans):
    src = tmp_path / "src"
    src.mkdir()
    customers.to_parquet(src / "customers.parquet", index=False)
    write(src, orders=_orders(f"{i + 1},{c},2024-01-0{i + 1},10,paid\n"
                              for i, c in enumerate(orders_ids)))
    html, m = run_cells(src, tmp_path / "run")
    assert m["orphan_orders"] == orphans


def test_zero_amounts_say_what_the_outliers_need(tmp_path):
    src = write(tmp_path / "src", orders=_amounts(lambda i: 0))
    html, _ = run_cells(src, tmp_path / "run")
    assert "needs a numeric column" not in html
    assert "Not available: needs orders.amount values above zero" in html


def test_the_page_shows_the_notes_about_empty_files(tmp_path):
    src = write(tmp_path / "src", orders=ORDERS, customers="customer_id,name\n", tickets="")
    code, text = sources.validate_command(str(src))
    notes = [line[len("note: "):] for line in text.splitlines() if line.startswith("note: ")]
    assert len(notes) == 2, text
    html, _ = run_cells(src, tmp_path / "run")
    for note in notes:
        assert note in html
