"""Masking and escaping (crmlab.privacy), and a whole stakeholder page built
from hostile customer data."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "notebooks"))
from testkit import make_project, tiny_source  # noqa: E402

from crmlab.privacy import (age_band, city_of_address, escape, mask_email, mask_frame, mask_name,  # noqa: E402
                            mask_phone, redact_url, scrub_text, suppress_small_groups)

HOSTILE = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>']


@pytest.mark.parametrize("value, expected", [
    ("zhangsan@example.com", "z***@example.com"),
    ("  A.B+tag@mail.example.cn ", "A***@mail.example.cn"),
    ("not-an-email", "***"),
    (None, None),
])
def test_mask_email(value, expected):
    assert mask_email(value) == expected


@pytest.mark.parametrize("value, expected", [
    ("13812345678", "138****5678"),
    ("+86 138-1234-5678", "+86 138****5678"),
    ("008613812345678", "+86 138****5678"),
    ("+1 (415) 555-0123", "+1 415***0123"),
    ("415.555.0123", "415***0123"),
    ("555-0123", "*****23"),
])
def test_mask_phone_keeps_first_3_and_last_4_of_the_national_number(value, expected):
    assert mask_phone(value) == expected


@pytest.mark.parametrize("value, expected", [
    ("张三", "张*"), ("欧阳娜娜", "欧***"), ("John Smith", "J*** S."),
    ("Mary Ann  Lee", "M*** L."), ("Madonna", "M***"), (HOSTILE[0], "<***"), (HOSTILE[1], '"*** o.'),
])
def test_mask_name(value, expected):
    assert mask_name(value) == expected


def test_addresses_become_cities_and_birth_dates_age_bands():
    assert city_of_address("浙江省杭州市西湖区文三路 90 号") == "杭州市"
    assert city_of_address("广西壮族自治区天津市江北蒋路H座 477835") == "天津市"
    assert city_of_address("1777 Kramer Court\nJohnsonfurt, NE 80119") == "Johnsonfurt"
    assert city_of_address("123 Main St, Springfield, IL 62704") == "Springfield"
    assert age_band("1990-07-01", as_of="2026-06-30") == "35-44"  # 35 years old
    assert age_band("1991-07-01", as_of="2026-06-30") == "25-34"
    assert age_band("2010-01-01", as_of="2026-06-30") == "under 18"
    assert age_band("not a date") is None and age_band("2030-01-01", as_of="2026-06-30") is None


def test_mask_frame_by_contract_and_by_name():
    df = pd.DataFrame({
        "customer_id": [1, 2], "name": ["张三", "John Smith"], "email": ["zhangsan@example.com", "j@x.org"],
        "phone": ["13812345678", "+1 415 555 0123"], "national_id": ["110101199001011234", "123-45-6789"],
        "address": ["浙江省杭州市西湖区", "1 Main St\nLake Eric, WA 55032"], "birth_date": ["1990-01-01", None],
        "email_b": ["li@example.cn", "x@y.z"], "segment": ["core", "lost"],
    })
    out = mask_frame(df, as_of="2026-06-30")
    assert "national_id" not in out.columns and list(out.columns)[:2] == ["customer_id", "name"]
    assert out["name"].tolist() == ["张*", "J*** S."]
    assert out["email"].tolist() == ["z***@example.com", "j***@x.org"]
    assert out["phone"].tolist() == ["138****5678", "+1 415***0123"]
    assert out["address"].tolist() == ["杭州市", "Lake Eric"]
    assert out["birth_date"].tolist() == ["35-44", None]
    assert out["email_b"].tolist() == ["l***@example.cn", "x***@y.z"]  # derived column, matched by name
    assert out["segment"].tolist() == ["core", "lost"] and out["customer_id"].tolist() == [1, 2]
    assert df["name"].tolist() == ["张三", "John Smith"], "the input is not changed"
    assert mask_frame(df, "analyst") is df
    # a canonical table's contract decides: a product's name is not a person's
    products = pd.DataFrame({"product_id": [1], "name": ["Green tea 绿茶"]})
    assert mask_frame(products, table="products")["name"].tolist() == ["Green tea 绿茶"]
    assert mask_frame(pd.DataFrame({"contact": ["13812345678"]}), pii={"contact": "phone"})["contact"][0] \
        == "138****5678"


def test_escape_scrub_and_redact():
    assert escape(HOSTILE[1]) == "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"
    assert escape(None) == "" and escape(float("nan")) == ""
    text = scrub_text("no row for zhangsan@example.com / +86 13812345678 on 2026-06-30 12:00, 1234567 rows")
    assert "zhangsan" not in text and "12345678" not in text
    assert "2026-06-30 12:00" in text and "1234567 rows" in text
    assert redact_url("postgresql://crm:pa55@db:5432/crm") == "postgresql://crm:***@db:5432/crm"
    assert redact_url("synthetic:demo") == "synthetic:demo"


def test_suppress_small_groups():
    t = pd.DataFrame({"city": ["A", "B", "C", "D"], "customers": [50, 4, 7, 12], "revenue": [1.0, 2.0, 3.0, 4.0]})
    out = suppress_small_groups(t, "customers", 10)
    assert out["city"].tolist() == ["A", "D", "other groups (under 10)"]
    assert out["customers"].tolist() == [50, 12, 11] and pd.isna(out["revenue"].iloc[-1])
    few = suppress_small_groups(t.iloc[:2], "customers", 10)
    assert few["city"].tolist() == ["A"], "small groups that stay small together are dropped"
    assert suppress_small_groups(t, "customers", 1).equals(t)


def test_a_hostile_page_is_masked_and_escaped(tmp_path, monkeypatch):
    project = make_project(tmp_path / "project", {"segmentation": "hostile"})
    monkeypatch.setenv("CRMLAB_HOME", str(project))
    monkeypatch.setenv("CRMLAB_REPORTS_DIR", str(tmp_path / "reports"))
    from crmlab.runner import run_report

    r = run_report("segmentation", source=str(tiny_source(tmp_path / "src")))
    assert r.status == "success", r.message
    html = (r.run_dir / "report.html").read_text(encoding="utf-8")
    # nothing hostile survives as markup, in the table, the finding or the section text
    for raw in ("<script>alert", "<img src=x", "<i>at risk</i>", "onerror=alert(1)>"):
        assert raw not in html, raw
    assert "<script" not in html and "<img src=" not in html
    # names, emails and phones masked; national ids gone; the Chinese name masked too
    for personal in ("张三丰", "John Smith", "zhangsan@example.com", "13812345678", "139-8765-4321",
                     "110101199001011234", "123-45-6789", "A1234567"):
        assert personal not in html, personal
    # (quotes in text need no escaping; the page's HTML parser writes them plain)
    for masked in ("&lt;***", '"*** o.', "张**", "J*** S.", "z***@example.com", "138****5678",
                   "+86 139****4321", "&lt;i&gt;at risk&lt;/i&gt;"):
        assert masked in html, masked
    # the finding and the section text were written with the raw name: escaped, never markup
    assert "The top customer is &lt;script&gt;alert(1)&lt;/script&gt;" in html
    export = (r.run_dir / "exports" / "people.csv").read_text(encoding="utf-8")
    assert "zhangsan@example.com" not in export and "national_id" not in export.splitlines()[0]
