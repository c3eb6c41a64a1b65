"""Tests of crmlab.calendars: the holidays and shopping festivals of any year."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from crmlab import calendars

# Chinese New Year (first day of the Spring Festival) as published by the
# Purple Mountain Observatory: the hand table calendars.py carried before it
# took the dates from the holidays package. The synthetic worlds plant their
# effects on these days, so the library must give the same ones.
PUBLISHED_CNY = {
    2015: "2015-02-19", 2016: "2016-02-08", 2017: "2017-01-28", 2018: "2018-02-16",
    2019: "2019-02-05", 2020: "2020-01-25", 2021: "2021-02-12", 2022: "2022-02-01",
    2023: "2023-01-22", 2024: "2024-02-10", 2025: "2025-01-29", 2026: "2026-02-17",
    2027: "2027-02-06", 2028: "2028-01-26", 2029: "2029-02-13", 2030: "2030-02-03",
    2031: "2031-01-23", 2032: "2032-02-11", 2033: "2033-01-31", 2034: "2034-02-19",
    2035: "2035-02-08",
}


def _days(frame: pd.DataFrame, name: str) -> dict[int, str]:
    d = frame.loc[frame["name"] == name, "date"]
    return {day.year: day.strftime("%Y-%m-%d") for day in d}


def test_chinese_new_year_from_the_library_equals_the_published_table():
    got = _days(calendars.holidays(PUBLISHED_CNY, "cn"), "chinese_new_year")
    assert got == PUBLISHED_CNY


def test_chinese_new_year_outside_the_old_table():
    got = _days(calendars.holidays([1970, 1989, 2007, 2100], "cn"), "chinese_new_year")
    assert got == {1970: "1970-02-06", 1989: "1989-02-06", 2007: "2007-02-18", 2100: "2100-02-09"}


@pytest.mark.parametrize("calendar", ["cn", "western", "both"])
def test_holiday_flags_over_1970_to_2040(calendar):
    days = pd.date_range("1970-01-01", "2040-12-31", freq="D")
    flags = calendars.holiday_flags(days, calendar)
    assert len(flags) == len(days)
    assert list(flags.columns) == [f"hol_{n}" for n in calendars.EVENTS[calendar]]
    per_year = flags.groupby(flags.index.year).sum()
    # every event flags its whole window in every year
    for name, (_, before, after) in calendars.EVENTS[calendar].items():
        assert (per_year[f"hol_{name}"] >= 1).all(), name
        assert (per_year[f"hol_{name}"] <= 2 * (before + after + 1)).all(), name


def test_every_year_1900_to_2100_works_and_a_missing_date_is_left_out():
    h = calendars.holidays(range(1900, 2101), "both")
    years = h.date.dt.year
    # rule-based events (fixed days, Easter, Thanksgiving) exist in every year
    for name in ("singles_day", "shopping_618", "black_friday", "easter", "christmas"):
        assert set(years[h.name == name]) == set(range(1900, 2101)), name
    cny = set(years[h.name == "chinese_new_year"])
    assert set(range(1950, 2101)) <= cny          # the library's China starts in 1950
    assert cny <= set(range(1900, 2101))
    assert h.date.notna().all()


def test_thanksgiving_follows_its_history():
    got = _days(calendars.holidays([1939, 1941, 2024], "western"), "thanksgiving")
    # Franklin's Thanksgiving (1939-41 on the next-to-last Thursday), then the fourth
    assert got == {1939: "1939-11-23", 1941: "1941-11-20", 2024: "2024-11-28"}
    bf = _days(calendars.holidays([2024], "western"), "black_friday")
    assert bf == {2024: "2024-11-29"}


def test_shopping_festivals_keep_their_days():
    h = calendars.holidays([1985], "cn")
    got = dict(zip(h.name, h.date.dt.date))
    assert got["singles_day"] == dt.date(1985, 11, 11)
    assert got["double_12"] == dt.date(1985, 12, 12)
    assert got["shopping_618"] == dt.date(1985, 6, 18)


def test_unknown_calendar_is_refused():
    with pytest.raises(ValueError, match="unknown calendar"):
        calendars.holidays([2024], "mars")
