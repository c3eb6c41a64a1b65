"""The data contract: tables and columns as DESIGN.md lists them, types,
PII classes, limits, date layouts and the pandera schemas built from it."""

from __future__ import annotations

import datetime as dt

import ibis
import pandas as pd
import pandera.errors as pe
import pytest

from crmlab import schema

# DESIGN.md "Data contract", copied by hand: the schema must not drift from it
DESIGN = {
    "customers": "customer_id name first_name last_name email phone gender birth_date address "
                 "city postcode region country national_id signup_date acquisition_channel "
                 "company industry",
    "orders": "order_id customer_id order_date amount channel status discount currency quantity",
    "order_lines": "order_id product_id category quantity unit_price",
    "products": "product_id name category unit_cost list_price",
    "interactions": "customer_id ts type channel",
    "tickets": "ticket_id customer_id opened_at channel topic satisfaction nps text resolved_at",
    "campaigns": "campaign_id name channel start_date end_date cost cost_per_contact "
                 "planned_treatment_share",
    "campaign_contacts": "campaign_id customer_id group sent_at delivered opened clicked "
                         "converted revenue",
}


def test_tables_and_columns_match_design():
    assert set(schema.TABLES) == set(DESIGN)
    for name, cols in DESIGN.items():
        assert list(schema.TABLES[name].columns) == cols.split(), name


def test_only_orders_is_required_with_three_columns():
    assert [t for t, c in schema.TABLES.items() if c.required] == ["orders"]
    assert schema.required_columns("orders") == ("customer_id", "order_date", "amount")
    assert not schema.column("orders", "order_id").required


def test_domains_and_ranges_from_design():
    assert schema.column("orders", "status").domain == ("paid", "refunded", "cancelled")
    assert schema.column("campaign_contacts", "group").domain == ("treatment", "control")
    assert schema.limits("tickets")["satisfaction"] == {"min": 1, "max": 5}
    assert schema.limits("tickets")["nps"] == {"min": 0, "max": 10}
    assert schema.limits("orders")["amount"] == {"min": 0, "max": 1_000_000}


def test_pii_classes():
    pii = schema.pii_columns("customers")
    assert pii == {"name": "name", "first_name": "name", "last_name": "name", "email": "email",
                   "phone": "phone", "birth_date": "birth_date", "address": "address",
                   "postcode": "address", "national_id": "national_id"}
    assert set(schema.pii_columns().values()) <= set(schema.PII_CLASSES)
    assert ("products", "name") not in schema.pii_columns()      # a product name is no person


def test_limit_overrides_merge_and_remove():
    lim = schema.limits("orders", {"amount": {"max": 5_000_000}, "order_date": {"min": None}})
    assert lim["amount"] == {"min": 0, "max": 5_000_000}
    assert lim["order_date"] == {"future_days": 1}
    assert schema.LIMITS["orders"]["amount"]["max"] == 1_000_000      # defaults untouched


def test_limit_check_names():
    assert schema.limit_check("orders", "amount", "min") == "negative_amount"
    assert schema.limit_check("orders", "amount", "max") == "absurd_amount"
    assert schema.limit_check("orders", "order_date", "future_days") == "future_date"
    assert schema.limit_check("orders", "order_date", "min") == "date_out_of_range"
    assert schema.limit_check("tickets", "nps", "max") == "out_of_range"
    assert set(schema.LIMIT_CHECKS.values()) <= set(schema.CHECKS)


def test_date_formats_follow_dayfirst():
    first, month = schema.date_formats(True), schema.date_formats(False)
    assert first[0] == month[0] == "%Y-%m-%d"
    assert "%d/%m/%Y" in first and "%m/%d/%Y" not in first
    assert "%m/%d/%Y" in month and "%d/%m/%Y" not in month
    assert "%d.%m.%Y" in first and "%d.%m.%Y" in month   # dotted dates are day-first everywhere
    assert len(set(month)) == len(month)


def test_unknown_names_are_refused_with_the_known_ones():
    with pytest.raises(KeyError, match="orders"):
        schema.table("order")
    with pytest.raises(KeyError, match="amount"):
        schema.column("orders", "amout")
    with pytest.raises(ValueError):
        schema.Column("x", "decimal")


def test_pandas_schema_collects_every_failure():
    frame = pd.DataFrame({
        "order_id": [1, 2, 2], "customer_id": [1, 1, 2],
        "order_date": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03"]),
        "amount": [10.0, -1.0, 2e6], "status": ["paid", "unknown", "paid"]})
    with pytest.raises(pe.SchemaErrors) as info:
        schema.pandera_schema("orders", backend="pandas", checks=True).validate(frame, lazy=True)
    failed = set(info.value.failure_cases["column"].dropna())
    assert {"amount", "status", "order_id"} <= failed       # all three, not the first only


def test_ibis_schema_reports_missing_required_column_and_wrong_type():
    t = ibis.table({"customer_id": "string", "order_date": "timestamp"}, name="orders")
    with pytest.raises(pe.SchemaErrors) as info:
        schema.pandera_schema("orders").validate(t, lazy=True)
    cases = info.value.failure_cases
    assert "amount" in set(cases["failure_case"])              # missing
    assert "customer_id" in set(cases["column"].dropna())      # string, expected int64
    # with string ids declared, the id passes
    with pytest.raises(pe.SchemaErrors) as info:
        schema.pandera_schema("orders", id_types={"customer_id": "string"}).validate(t, lazy=True)
    assert "customer_id" not in set(info.value.failure_cases["column"].dropna())


def test_limit_values_are_valid_dates():
    for t, cols in schema.LIMITS.items():
        for c, lim in cols.items():
            kind = schema.column(t, c).type
            for k in ("min", "max"):
                if k in lim and kind in ("date", "timestamp"):
                    assert dt.datetime.fromisoformat(lim[k])


STATUS_WORDS = {
    "paid": "shipped delivered completed complete fulfilled closed success successful succeeded "
            "settled 已完成 已发货 已签收 交易成功",
    "refunded": "returned refund refunded 已退款 退货",
    "cancelled": "void voided failed declined canceled cancel 已取消 交易关闭",
}


def test_the_common_status_words_of_order_exports_map_onto_the_contract():
    vmap = schema.VALUE_MAPS["orders"]["status"]
    for status, words in STATUS_WORDS.items():
        for word in words.split():
            assert vmap.get(word) == status, word
    assert set(vmap.values()) <= set(schema.column("orders", "status").domain)
    assert all(k == k.strip().lower() for k in vmap)      # looked up trimmed and case-folded
    # not yet purchases: the user decides in the mapping's values
    for word in ("pending", "processing", "unpaid", "in transit", "unknown", "?"):
        assert word not in vmap


def test_event_dates_reach_back_to_1950_and_births_to_1900():
    for table, column in [("orders", "order_date"), ("customers", "signup_date"),
                          ("interactions", "ts"), ("tickets", "opened_at"),
                          ("tickets", "resolved_at"), ("campaign_contacts", "sent_at"),
                          ("campaigns", "start_date"), ("campaigns", "end_date")]:
        assert schema.limits(table)[column]["min"] == "1950-01-01", (table, column)
    assert schema.limits("orders")["order_date"]["future_days"] == 1
    assert schema.limits("customers")["birth_date"]["min"] == "1900-01-01"
