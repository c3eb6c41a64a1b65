"""The world's calendar: daily multipliers and the warped Poisson clock.

Every customer's purchases are a Poisson process in *clock time* tau, where a
calendar day d lasts m(d) clock units (m = weekly x yearly x holiday x
promotion, normalised to average 1 over the window per locale). Counts over
long spans therefore stay those of BG/NBD while busy days get more orders.

Times come in three forms:

- ``t``   calendar days since the world's start, uniform within a day;
- ``tau`` clock time, ``tau(t) = C[d] + (t - d) m(d)`` with C the running sum of m;
- display seconds since the start: the day plus a time of day drawn through
  the hourly profile (a monotone map of the uniform fraction, so order within
  a day is kept).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

from crmlab import calendars

DAY = 86400


@dataclass
class Clock:
    """Daily multipliers per locale and the maps between time forms."""

    start: dt.date
    n_days: int
    locales: tuple[str, ...]
    mult: np.ndarray            # (locales, n_days) multiplier, mean 1 per row
    cum: np.ndarray             # (locales, n_days + 1) running sum of mult
    promo: np.ndarray           # (locales, n_days) bool: a promotion day
    extra_discount: np.ndarray  # (locales, n_days) extra discount rate that day
    holiday: list               # per day: event names joined by "+", or None
    hour_cdf: np.ndarray        # (25,) cumulative hourly profile

    @property
    def start_ns(self) -> np.datetime64:
        return np.datetime64(self.start, "s")

    def tau(self, loc: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Calendar days -> clock time, per customer locale index."""
        d = np.clip(np.floor(t).astype(np.int64), 0, self.n_days - 1)
        return self.cum[loc, d] + (t - d) * self.mult[loc, d]

    def t_of_tau(self, loc: np.ndarray, tau: np.ndarray) -> np.ndarray:
        """Clock time -> calendar days (inverse of :meth:`tau`)."""
        out = np.empty(len(tau))
        for li in range(len(self.locales)):
            sel = loc == li
            if not sel.any():
                continue
            c = self.cum[li]
            d = np.clip(np.searchsorted(c, tau[sel], side="right") - 1, 0, self.n_days - 1)
            out[sel] = d + (tau[sel] - c[d]) / self.mult[li, d]
        return out

    def display_seconds(self, t: np.ndarray) -> np.ndarray:
        """Calendar days -> int64 seconds since the start with a realistic time of day."""
        d = np.floor(t)
        u = t - d
        h = np.clip(np.searchsorted(self.hour_cdf, u, side="right") - 1, 0, 23)
        w = self.hour_cdf[h + 1] - self.hour_cdf[h]
        frac = (h + (u - self.hour_cdf[h]) / w) / 24.0
        return (d * DAY + np.floor(frac * DAY)).astype(np.int64)

    def t_of_display(self, seconds: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`display_seconds` (to within a second)."""
        seconds = np.asarray(seconds, dtype=np.float64)
        d = np.floor(seconds / DAY)
        y = (seconds - d * DAY) / DAY * 24.0
        h = np.clip(np.floor(y).astype(np.int64), 0, 23)
        u = self.hour_cdf[h] + (y - h) * (self.hour_cdf[h + 1] - self.hour_cdf[h])
        return d + u

    def day_index(self, date: str | dt.date) -> int:
        """Day number of a date (0 = the start)."""
        return (pd.Timestamp(date).date() - self.start).days


def _md(text: str) -> tuple[int, int]:
    m, d = str(text).split("-")
    return int(m), int(d)


def build_clock(scn: dict) -> Clock:
    """The calendar of a scenario (``seasonality``, ``holidays``, ``promotions``).

    Parameters
    ----------
    scn : dict
        An effective scenario (:func:`crmlab.synthetic.scenario.load_scenario`).

    Returns
    -------
    Clock
    """
    start = dt.date.fromisoformat(scn["start"])
    end = dt.date.fromisoformat(scn["end"])
    n_days = (end - start).days + 1
    days = pd.date_range(start, periods=n_days, freq="D")
    seas = scn["seasonality"]
    weekly = np.asarray(seas["weekly"], dtype=float)
    base = weekly[days.day_of_week]
    yearly = seas.get("yearly") or {}
    if yearly:
        pm, pd_ = _md(yearly.get("peak", "12-01"))
        peak = dt.date(2001, pm, pd_).timetuple().tm_yday
        base = base * (1 + float(yearly.get("amplitude", 0)) *
                       np.cos(2 * np.pi * (days.day_of_year.to_numpy() - peak) / 365.25))
    years = range(start.year - 1, end.year + 2)

    promo_mult = np.ones(n_days)
    promo_disc = np.zeros(n_days)
    promo_day = np.zeros(n_days, dtype=bool)
    for p in scn.get("promotions") or []:
        (sm, sd), (em, ed) = _md(p["start"]), _md(p["end"])
        md = days.month * 100 + days.day
        sel = np.asarray((md >= sm * 100 + sd) & (md <= em * 100 + ed))
        promo_mult[sel] *= float(p.get("multiplier", 1.0))
        promo_disc[sel] = np.maximum(promo_disc[sel], float(p.get("extra_discount", 0.0)))
        promo_day |= sel

    locales = tuple(scn["locale"])
    effects = scn.get("holidays") or {}
    promo_events = set(scn.get("promotion_events") or [])
    event_disc = float(scn.get("promotion_event_discount", 0.0))
    names: list[set] = [set() for _ in range(n_days)]
    mult = np.empty((len(locales), n_days))
    promo = np.empty((len(locales), n_days), dtype=bool)
    extra = np.empty((len(locales), n_days))
    for li, loc in enumerate(locales):
        cal = (scn.get("calendars") or {}).get(loc, "both")
        hol = np.ones(n_days)
        lp = promo_day.copy()
        ld = promo_disc.copy()
        win = calendars.holidays(years, cal, windows=True)
        idx = ((win["date"] - pd.Timestamp(start)).dt.days).to_numpy()
        ok = (idx >= 0) & (idx < n_days)
        for i, name, off in zip(idx[ok], win["name"].to_numpy()[ok], win["offset"].to_numpy()[ok]):
            eff = effects.get(name) or {}
            key = "day" if off == 0 else ("before" if off < 0 else "after")
            hol[i] *= float(eff.get(key, 1.0))
            names[i].add(name)
            if name in promo_events:
                lp[i] = True
                ld[i] = max(ld[i], event_disc)
        # rebounds after an event's window
        for name, eff in effects.items():
            rb = (eff or {}).get("rebound")
            if not rb or name not in calendars.EVENTS.get(cal, {}):
                continue
            _, _, after = calendars.EVENTS[cal][name]
            days_of = win.loc[(win["name"] == name) & (win["offset"] == 0), "date"]
            for day in days_of:
                first = (day - pd.Timestamp(start)).days + after + 1
                for i in range(first, first + int(rb.get("days", 0))):
                    if 0 <= i < n_days:
                        hol[i] *= float(rb.get("multiplier", 1.0))
        m = base * hol * promo_mult
        mult[li] = m / m.mean()
        promo[li] = lp
        extra[li] = ld
    cum = np.concatenate([np.zeros((len(locales), 1)), np.cumsum(mult, axis=1)], axis=1)
    hourly = np.asarray(seas.get("hourly") or [1.0] * 24, dtype=float)
    hour_cdf = np.concatenate([[0.0], np.cumsum(hourly / hourly.sum())])
    hour_cdf[-1] = 1.0
    holiday = ["+".join(sorted(s)) if s else None for s in names]
    return Clock(start=start, n_days=n_days, locales=locales, mult=mult, cum=cum,
                 promo=promo, extra_discount=extra, holiday=holiday, hour_cdf=hour_cdf)
