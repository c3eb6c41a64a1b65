"""Retail calendars: the holidays and shopping festivals that move sales.

One definition serves the synthetic generator (which plants their effects)
and the forecasting models (which use them as regressors), so the two can
never disagree about when Singles' Day falls.

Calendars are data: ``EVENTS`` maps a calendar name to its events, each a
rule that yields the event's date in a year (or None when there is none
that year). ``"cn"`` holds the Chinese retail year, ``"western"`` the
US/European one, ``"both"`` their union.

Holidays whose date takes a calendar of its own come from the ``holidays``
package: Chinese New Year from the Chinese lunisolar calendar of
``holidays.China`` (which starts in 1950: earlier years have no Chinese New
Year here), Thanksgiving -- and with it Black Friday and Cyber Monday --
from ``holidays.US`` (the fourth Thursday of November, with its history:
the last Thursday before 1939, Franklin's next-to-last 1939-41). Easter is
``dateutil``'s Western Easter; the shopping festivals (618, Singles' Day,
Double 12) and the other fixed days are rules here. Every year the
libraries know works; a year in which an event has no date simply lacks
that event.
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import Callable, Iterable, Optional

import holidays as holidays_lib
import pandas as pd
from dateutil.easter import easter

# the names the holidays package gives the days taken from it (its English
# catalogue, asked for explicitly so the default language never matters)
CNY_NAME = "Chinese New Year (Spring Festival)"
THANKSGIVING_NAME = "Thanksgiving Day"

Rule = Callable[[int], Optional[dt.date]]


def _fixed(month: int, day: int) -> Rule:
    return lambda year: dt.date(year, month, day)


def _offset(rule: Rule, days: int) -> Rule:
    def shifted(year: int) -> dt.date | None:
        day = rule(year)
        return None if day is None else day + dt.timedelta(days=days)
    return shifted


@functools.lru_cache(maxsize=512)
def _library_day(country: str, name: str, year: int) -> dt.date | None:
    """The first day of ``year`` that the holidays package names ``name``
    (observed and substitute days carry other names), or None."""
    if not 1 <= year <= 9998:
        return None
    cal = holidays_lib.country_holidays(country, years=year, language="en_US")
    days = [d for d in cal.get_named(name, lookup="exact", split_multiple_names=True) if d.year == year]
    return min(days) if days else None


def _cny(year: int) -> dt.date | None:
    """Chinese New Year (first day of the Spring Festival), from the Chinese
    lunisolar calendar of ``holidays.China``; None before 1950."""
    return _library_day("CN", CNY_NAME, year)


def _thanksgiving(year: int) -> dt.date | None:
    """US Thanksgiving Day as ``holidays.US`` dates it."""
    return _library_day("US", THANKSGIVING_NAME, year)


# name -> (rule giving the date in a year, days before, days after): the
# window around the day in which sales move.
EVENTS: dict[str, dict[str, tuple[Rule, int, int]]] = {
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
        An event without a date in a year (see the module) has no rows there.

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
            if day is None:   # no such day that year (Chinese New Year before 1950)
                continue
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
    if calendar not in EVENTS:
        raise ValueError(f"unknown calendar {calendar!r}; known: {sorted(EVENTS)}")
    days = _window_days(calendar, idx.min().year - 1, idx.max().year + 1) if len(idx) else {}
    empty = pd.DatetimeIndex([])
    return pd.DataFrame({f"hol_{name}": idx.isin(days.get(name, empty)).astype("int8")
                         for name in EVENTS[calendar]}, index=idx)


@functools.lru_cache(maxsize=64)
def _window_days(calendar: str, first_year: int, last_year: int) -> dict[str, pd.DatetimeIndex]:
    """Event name -> the days of its windows from ``first_year`` to
    ``last_year`` (cached: a forecast's backtest asks for the same years
    again and again)."""
    win = holidays(range(first_year, last_year + 1), calendar, windows=True)
    return {name: pd.DatetimeIndex(g["date"].unique()) for name, g in win.groupby("name")}
