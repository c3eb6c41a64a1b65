"""Retail calendars: the holidays and shopping festivals that move sales.

One definition serves the synthetic generator (which plants their effects)
and the forecasting models (which use them as regressors), so the two can
never disagree about when Singles' Day falls.

Calendars are data: ``EVENTS`` maps a calendar name to its events, each a
rule that yields one date per year. ``"cn"`` holds the Chinese retail year,
``"western"`` the US/European one, ``"both"`` their union.
"""

from __future__ import annotations

import datetime as dt
from typing import Callable, Iterable

import pandas as pd
from dateutil.easter import easter

# Chinese New Year (first day of the Spring Festival), from the Chinese
# lunisolar calendar as published by the Purple Mountain Observatory.
CHINESE_NEW_YEAR: dict[int, str] = {
    2015: "2015-02-19", 2016: "2016-02-08", 2017: "2017-01-28", 2018: "2018-02-16",
    2019: "2019-02-05", 2020: "2020-01-25", 2021: "2021-02-12", 2022: "2022-02-01",
    2023: "2023-01-22", 2024: "2024-02-10", 2025: "2025-01-29", 2026: "2026-02-17",
    2027: "2027-02-06", 2028: "2028-01-26", 2029: "2029-02-13", 2030: "2030-02-03",
    2031: "2031-01-23", 2032: "2032-02-11", 2033: "2033-01-31", 2034: "2034-02-19",
    2035: "2035-02-08",
}


def _fixed(month: int, day: int) -> Callable[[int], dt.date]:
    return lambda year: dt.date(year, month, day)


def _nth_weekday(month: int, weekday: int, n: int) -> Callable[[int], dt.date]:
    """The n-th given weekday (Mon=0) of a month; n=-1 for the last."""
    def rule(year: int) -> dt.date:
        if n > 0:
            first = dt.date(year, month, 1)
            return first + dt.timedelta(days=(weekday - first.weekday()) % 7 + 7 * (n - 1))
        nxt = dt.date(year + (month == 12), month % 12 + 1, 1)
        last = nxt - dt.timedelta(days=1)
        return last - dt.timedelta(days=(last.weekday() - weekday) % 7)
    return rule


def _offset(rule: Callable[[int], dt.date], days: int) -> Callable[[int], dt.date]:
    return lambda year: rule(year) + dt.timedelta(days=days)


def _cny(year: int) -> dt.date:
    try:
        return dt.date.fromisoformat(CHINESE_NEW_YEAR[year])
    except KeyError:
        raise ValueError(f"Chinese New Year is tabulated for {min(CHINESE_NEW_YEAR)}-"
                         f"{max(CHINESE_NEW_YEAR)} only, not {year}") from None


_thanksgiving = _nth_weekday(11, 3, 4)

# name -> (rule giving the date in a year, days before, days after): the
# window around the day in which sales move.
EVENTS: dict[str, dict[str, tuple[Callable[[int], dt.date], int, int]]] = {
    "cn": {
        "chinese_new_year": (_cny, 7, 7),
        "womens_day_38": (_fixed(3, 8), 0, 0),
        "shopping_618": (_fixed(6, 18), 2, 0),
        "national_day": (_fixed(10, 1), 0, 6),
        "singles_day": (_fixed(11, 11), 1, 0),
        "double_12": (_fixed(12, 12), 0, 0),
    },
    "western": {
        "new_year": (_fixed(1, 1), 0, 0),
        "valentines_day": (_fixed(2, 14), 1, 0),
        "easter": (easter, 2, 1),
        "thanksgiving": (_thanksgiving, 0, 0),
        "black_friday": (_offset(_thanksgiving, 1), 0, 0),
        "cyber_monday": (_offset(_thanksgiving, 4), 0, 0),
        "christmas": (_fixed(12, 25), 10, 1),
    },
}
EVENTS["both"] = {**EVENTS["cn"], **EVENTS["western"]}


def holidays(years: Iterable[int], calendar: str = "both", *, windows: bool = False) -> pd.DataFrame:
    """The events of a calendar in the given years.

    Parameters
    ----------
    years : iterable of int
    calendar : {"cn", "western", "both"}
    windows : bool
        If True, one row per day of each event's window (days before and
        after included) with ``offset`` = days from the event day.

    Returns
    -------
    pandas.DataFrame
        Columns ``date`` (datetime64), ``name``, ``offset`` (0 on the day).

    Examples
    --------
    >>> holidays([2024], "cn").query("name == 'singles_day'").date.dt.strftime("%m-%d").tolist()
    ['11-11']
    """
    if calendar not in EVENTS:
        raise ValueError(f"unknown calendar {calendar!r}; known: {sorted(EVENTS)}")
    rows = []
    for year in years:
        for name, (rule, before, after) in EVENTS[calendar].items():
            day = rule(year)
            offsets = range(-before, after + 1) if windows else (0,)
            rows.extend((day + dt.timedelta(days=o), name, o) for o in offsets)
    out = pd.DataFrame(rows, columns=["date", "name", "offset"])
    out["date"] = pd.to_datetime(out["date"])
    return out.sort_values(["date", "name"], ignore_index=True)


def holiday_flags(dates: pd.DatetimeIndex | pd.Series, calendar: str = "both") -> pd.DataFrame:
    """One 0/1 column per event (its whole window) for each date.

    Transforms a sequence of dates into a frame indexed like it, with one
    column ``hol_<name>`` per event of the calendar.
    """
    idx = pd.DatetimeIndex(pd.to_datetime(dates)).normalize()
    years = range(idx.min().year - 1, idx.max().year + 2) if len(idx) else ()
    win = holidays(years, calendar, windows=True)
    out = pd.DataFrame(index=idx)
    for name in EVENTS[calendar]:
        days = set(win.loc[win.name == name, "date"])
        out[f"hol_{name}"] = idx.isin(list(days)).astype("int8")
    return out
