"""Sales series built in the engine, and the calendar regressors beside them.

Heavy work (the scan and group-by over orders and order lines) runs in the
engine through ibis; pandas only sees one row per period per group, with the
periods that had no sales filled with zero.
"""

from __future__ import annotations

import functools

import ibis
import ibis.expr.types as ir
import numpy as np
import pandas as pd

from crmlab import calendars
from crmlab.engine import as_of_literal, purchases, snapshot_date
from crmlab.exceptions import DataContractError, NoDataError, ParameterError

# Per-frequency rules: the seasonal cycle used by the seasonal models, the
# number of periods in a year (for Fourier terms), the default horizon (four
# weeks of days, a quarter of weeks, a year of months: a monthly forecast then
# always has the same months last year to compare with), the moving-average
# window and the lags of the gradient-boosting model.
FREQ_RULES: dict[str, dict] = {
    "D": {"season_length": 7, "periods_per_year": 365.25, "horizon": 28, "window": 7,
          "label": "day", "fourier": ((7, 3), (365.25, 4)), "lags": (1, 2, 3, 6, 7, 8, 14, 364)},
    "W": {"season_length": 52, "periods_per_year": 365.25 / 7, "horizon": 13, "window": 4,
          "label": "week", "fourier": ((365.25 / 7, 5),), "lags": (1, 2, 3, 4, 51, 52, 53)},
    "M": {"season_length": 12, "periods_per_year": 12.0, "horizon": 12, "window": 3,
          "label": "month", "fourier": ((12, 4),), "lags": (1, 2, 3, 11, 12, 13)},
}

TOTAL = "total"          # the label of the overall series
MISSING_GROUP = "(not recorded)"  # the label of rows whose group value is null
_TRUNC_UNIT = {"D": "D", "W": "W", "M": "M"}


def check_freq(freq: str) -> dict:
    """The rules of a frequency, or a ParameterError naming the choices."""
    try:
        return FREQ_RULES[freq]
    except KeyError:
        raise ParameterError(f"freq must be one of {sorted(FREQ_RULES)}, not {freq!r}") from None


def period_start(dates, freq: str) -> pd.DatetimeIndex:
    """The start of the period (day; Monday-based week; month) holding each date."""
    d = pd.DatetimeIndex(pd.to_datetime(dates)).normalize()
    if freq == "D":
        return d
    if freq == "W":
        return d - pd.to_timedelta(d.day_of_week, unit="D")
    return d - pd.to_timedelta(d.day - 1, unit="D")


def period_range(start, end, freq: str) -> pd.DatetimeIndex:
    """Every period start from ``start``'s period to ``end``'s period."""
    a, b = period_start([start], freq)[0], period_start([end], freq)[0]
    step = {"D": "D", "W": "W-MON", "M": "MS"}[freq]
    return pd.date_range(a, b, freq=step)


def future_periods(last, horizon: int, freq: str) -> pd.DatetimeIndex:
    """The ``horizon`` period starts after the period starting at ``last``."""
    step = {"D": "D", "W": "W-MON", "M": "MS"}[freq]
    return pd.date_range(pd.Timestamp(last), periods=horizon + 1, freq=step)[1:]


def period_end(periods, freq: str) -> pd.DatetimeIndex:
    """The last day of each period (given by its start)."""
    p = pd.DatetimeIndex(periods)
    if freq == "D":
        return p
    if freq == "W":
        return p + pd.Timedelta(days=6)
    return p + pd.offsets.MonthEnd(0)


def calendar_features(periods, freq: str, calendar: str = "cn") -> pd.DataFrame:
    """The share of each period's days that fall in each event's window.

    Transforms a sequence of period starts into a frame indexed by them with
    one column ``hol_<event>`` per event of the calendar (values 0 to 1; at
    ``freq="D"`` simply 0 or 1), from :func:`crmlab.calendars.holiday_flags`.

    Parameters
    ----------
    periods : sequence of timestamps
        Period starts (as made by :func:`period_range`).
    freq : {"D", "W", "M"}
    calendar : {"cn", "western", "both", "none"}
        ``"none"`` gives a frame without columns.

    Returns
    -------
    pandas.DataFrame

    Examples
    --------
    >>> f = calendar_features(pd.date_range("2024-11-04", periods=2, freq="W-MON"), "W", "cn")
    >>> f["hol_singles_day"].round(3).tolist()  # window Nov 10-11: one day in each week
    [0.143, 0.143]
    """
    check_freq(freq)
    idx = pd.DatetimeIndex(periods)
    if calendar == "none" or len(idx) == 0:
        return pd.DataFrame(index=idx)
    if calendar not in calendars.EVENTS:
        raise ParameterError(f"calendar must be one of {sorted(calendars.EVENTS) + ['none']}, "
                             f"not {calendar!r}")
    share = _period_shares(idx.min(), idx.max(), freq, calendar)
    return share.reindex(idx).fillna(0.0)


@functools.lru_cache(maxsize=64)
def _period_shares(first: pd.Timestamp, last: pd.Timestamp, freq: str, calendar: str) -> pd.DataFrame:
    """Holiday shares of every period from ``first`` to ``last`` (cached: the
    backtest asks for the same calendar many times)."""
    days = pd.date_range(first, period_end([last], freq)[0], freq="D")
    flags = calendars.holiday_flags(days, calendar).astype(float)
    flags["_period"] = period_start(days, freq)
    return flags.groupby("_period").mean()


def fourier_terms(t: np.ndarray, freq: str) -> np.ndarray:
    """Sine/cosine pairs of the frequency's seasonal cycles at time steps ``t``.

    Returns an array of shape (len(t), 2 * sum of orders), as in dynamic
    harmonic regression (Hyndman & Athanasopoulos, *Forecasting: Principles
    and Practice*, 3rd ed., section 10.5).
    """
    cols = []
    for period, order in check_freq(freq)["fourier"]:
        for k in range(1, order + 1):
            w = 2 * np.pi * k * np.asarray(t, dtype=float) / period
            cols += [np.sin(w), np.cos(w)]
    return np.column_stack(cols)


def canonical_labels(values, weights=None) -> dict:
    """Group labels that differ only in case or surrounding spaces, mapped
    to one: the spelling with the most weight (e.g. revenue), trimmed; an
    empty label becomes ``MISSING_GROUP``.

    Examples
    --------
    >>> canonical_labels(["Web", " web ", "WEB", "app", " "], [10, 1, 2, 5, 1])
    {'Web': 'Web', ' web ': 'Web', 'WEB': 'Web', 'app': 'app', ' ': '(not recorded)'}
    """
    frame = pd.DataFrame({"raw": pd.Series(values, dtype=object).astype(str),
                          "w": 1.0 if weights is None else np.asarray(weights, dtype=float)})
    frame["label"] = frame["raw"].str.strip()
    frame["key"] = frame["label"].str.casefold()
    best = (frame.groupby(["key", "label"], as_index=False)["w"].sum()
            .sort_values(["key", "w", "label"], ascending=[True, False, True])
            .drop_duplicates("key").set_index("key")["label"])
    return {r: (best[k] if best[k] else MISSING_GROUP) for r, k in zip(frame["raw"], frame["key"])}


def _columns(t: ir.Table | None) -> set[str]:
    return set(t.columns) if t is not None else set()


def build_series(orders: ir.Table, *, order_lines: ir.Table | None = None,
                 customers: ir.Table | None = None, segments: pd.DataFrame | None = None,
                 freq: str = "W", group_by: str | None = None, as_of=None,
                 complete_periods: bool = True,
                 customer_id_col: str = "customer_id", order_id_col: str = "order_id",
                 date_col: str = "order_date", amount_col: str = "amount",
                 discount_col: str = "discount", status_col: str = "status",
                 quantity_col: str = "quantity", unit_price_col: str = "unit_price") -> pd.DataFrame:
    """Orders to revenue and order counts per period (and per group), in the engine.

    Transforms orders (``order_id, customer_id, order_date, amount`` and
    optionally ``status``, ``discount``) into one row per period per group::

        group, period, revenue, orders, discount_share, group_customers

    Only purchases count (:func:`crmlab.engine.purchases`, the one meaning
    every report uses: not refunded or cancelled; a missing or unknown
    status is a purchase). ``period`` is the period start (day; week
    starting Monday; month).
    Periods without sales are filled with zero. ``discount_share`` is the
    period's discount over its gross value (``discount / (amount +
    discount)``; absent without a ``discount`` column) -- the promotion
    regressor. ``group_customers`` is the group's distinct customers over
    the whole window (pages hide groups below ``config.MIN_GROUP_SIZE``).
    Group labels that differ only in case or surrounding spaces ("Web",
    " web ") are one group (:func:`canonical_labels`; its customers are then
    the sum over the spellings).

    ``group_by`` may be a column of orders (channel), of order lines
    (category: each order's amount is split across its lines by line
    revenue ``quantity * unit_price``, so groups add up to the total of
    orders that have lines; ``orders`` then counts orders holding the
    group), of customers (region), or of ``segments`` (a customer ->
    segment frame, e.g. the segmentation export).

    Parameters
    ----------
    orders, order_lines, customers : ibis.Table
        Canonical tables (``Dataset.table(...)``); only ``orders`` is required.
    segments : pandas.DataFrame, optional
        ``customer_id`` and the ``group_by`` column.
    freq : {"D", "W", "M"}
    group_by : str, optional
        None gives the single group ``"total"``.
    as_of : str or date, optional
        The snapshot date (:func:`crmlab.engine.snapshot_date`: as given,
        else the newest order's date); orders after it are ignored and the
        series runs to its period.
    complete_periods : bool
        Drop a first and last period that the data covers only in part, so
        a half-observed week is not mistaken for a collapse in sales. When
        every purchase falls on the first instant of its period (an export
        of period totals stamped with the period's first day, e.g. monthly
        sales dated the 1st), the period of the newest stamp is complete:
        the stamp stands for the whole period. Detected from the data;
        transactional data whose newest order merely falls on a 1st keeps
        the rule above.

    Returns
    -------
    pandas.DataFrame
        Sorted by group then period.

    Examples
    --------
    >>> con = ibis.duckdb.connect()
    >>> o = con.create_table("o", pd.DataFrame({"order_id": [1, 2, 3], "customer_id": [1, 1, 2],
    ...     "order_date": pd.to_datetime(["2024-01-01", "2024-01-09", "2024-01-21"]),
    ...     "amount": [10.0, 5.0, 7.0]}))
    >>> build_series(o, freq="W")[["period", "revenue", "orders"]].to_dict("list")["revenue"]
    [10.0, 5.0, 7.0]
    """
    check_freq(freq)
    t = orders
    cols = _columns(t)
    for c in (customer_id_col, date_col, amount_col):
        if c not in cols:
            raise DataContractError("required column missing", table="orders", column=c)
    snap = snapshot_date(orders, as_of, date_col=date_col)
    t = purchases(t, status_col=status_col)
    t = t.filter(t[date_col] <= as_of_literal(snap))
    has_discount = discount_col in cols

    base = {customer_id_col: t[customer_id_col], "_date": t[date_col],
            "_amount": t[amount_col].cast("float64")}
    if has_discount:
        base["_discount"] = t[discount_col].cast("float64").fill_null(0.0)
    if order_id_col in cols:
        base["_order"] = t[order_id_col]
    if group_by is None:
        base["_group"] = ibis.literal(TOTAL)
        x = t.select(**base)
    elif group_by in cols:
        base["_group"] = t[group_by].cast("string")
        x = t.select(**base)
    elif group_by in _columns(order_lines):
        x = _line_allocation(t.select(**base), order_lines, group_by, order_id_col,
                             quantity_col, unit_price_col, has_discount)
    elif group_by in _columns(customers) or (segments is not None and group_by in segments.columns):
        if group_by in _columns(customers):
            lookup = customers.select(customer_id_col, _group=customers[group_by].cast("string"))
        else:
            seg = segments[[customer_id_col, group_by]].drop_duplicates(customer_id_col)
            seg = seg.assign(**{group_by: seg[group_by].astype(str)})
            lookup = ibis.memtable(seg.rename(columns={group_by: "_group"}))
            lookup = lookup.cast({customer_id_col: t[customer_id_col].type()})
        x = t.select(**base)
        x = x.left_join(lookup, customer_id_col).select(*x.columns, "_group")
    else:
        raise ParameterError(f"group_by column {group_by!r} is in none of orders, order_lines, "
                             "customers or the segments frame")
    x = x.mutate(_group=x._group.fill_null(MISSING_GROUP), _period=x._date.truncate(_TRUNC_UNIT[freq]))

    aggs = {"revenue": x._amount.sum(),
            "orders": (x._order.nunique() if "_order" in x.columns else x._amount.count())}
    if has_discount:
        aggs["_disc"] = x._discount.sum()
    # the first and last order per cell give the data's span without another
    # scan, and the orders after their period's first instant tell whether the
    # data is period-stamped (every order at the start of its period)
    aggs["_first"], aggs["_last"] = x._date.min(), x._date.max()
    aggs["_unstamped"] = (x._date > x._period).sum()
    per = x.group_by(["_group", "_period"]).aggregate(**aggs).to_pandas()
    sizes = x.group_by("_group").aggregate(group_customers=x[customer_id_col].nunique()).to_pandas()
    if per.empty or per["_first"].isna().all():
        raise NoDataError("table orders has no purchases (orders that are not refunded or "
                          "cancelled) with an order_date on or before the snapshot date")
    span = pd.DataFrame({"first": [per["_first"].min()], "last": [per["_last"].max()]})
    stamped = int(per["_unstamped"].fillna(0).sum()) == 0
    per = per.drop(columns=["_first", "_last", "_unstamped"])
    if group_by is not None:   # "Web", " web " and "WEB" are one group
        canon = canonical_labels(per["_group"], per["revenue"])
        if any(k != v for k, v in canon.items()):
            per = per.assign(_group=per["_group"].map(canon)).groupby(
                ["_group", "_period"], as_index=False).sum(numeric_only=True)
            sizes = sizes.assign(_group=sizes["_group"].map(canon)).groupby(
                "_group", as_index=False)["group_customers"].sum()

    first, newest = pd.Timestamp(span["first"].iloc[0]), pd.Timestamp(span["last"].iloc[0])
    last = max(newest, pd.Timestamp(snap))
    periods = period_range(first, last, freq)
    if complete_periods:
        if len(periods) and first.normalize() > periods[0]:
            periods = periods[1:]
        # period-stamped data (monthly totals dated the 1st): the newest
        # stamp stands for its whole period, which is then complete
        if len(periods) and last.normalize() < period_end(periods[-1:], freq)[0]:
            if not (stamped and period_start([newest], freq)[0] == periods[-1]):
                periods = periods[:-1]
    if len(periods) == 0:
        raise NoDataError(f"the purchases in table orders ({first:%Y-%m-%d} to {last:%Y-%m-%d}) "
                          f"cover no complete {FREQ_RULES[freq]['label']}; a forecast needs many "
                          f"complete {FREQ_RULES[freq]['label']}s of sales")

    per["_period"] = pd.to_datetime(per["_period"]).dt.tz_localize(None).astype("datetime64[ns]")
    groups = sorted(per["_group"].astype(str).unique())
    full = pd.MultiIndex.from_product([groups, periods], names=["group", "period"])
    per = per.rename(columns={"_group": "group", "_period": "period"})
    per["group"] = per["group"].astype(str)
    out = per.set_index(["group", "period"]).reindex(full, fill_value=0).reset_index()
    out["revenue"] = out["revenue"].astype(float)
    out["orders"] = out["orders"].astype("int64")
    if has_discount:
        gross = out["revenue"] + out["_disc"]
        out["discount_share"] = np.where(gross > 0, out["_disc"] / gross.where(gross > 0, 1), 0.0)
        out = out.drop(columns="_disc")
    sizes = sizes.rename(columns={"_group": "group"}).astype({"group": str})
    out = out.merge(sizes, on="group", how="left")
    out["group_customers"] = out["group_customers"].fillna(0).astype("int64")
    return out.sort_values(["group", "period"], ignore_index=True)


def _line_allocation(x: ir.Table, lines: ir.Table, group_by: str, order_id_col: str,
                     quantity_col: str, unit_price_col: str, has_discount: bool) -> ir.Table:
    """Split each order's amount over its lines by line revenue."""
    for c in (order_id_col, quantity_col, unit_price_col):
        if c not in lines.columns:
            raise DataContractError("column needed to split orders by an order-line column is "
                                    "missing", table="order_lines", column=c)
    if "_order" not in x.columns:
        raise DataContractError("required column missing", table="orders", column=order_id_col)
    line = lines.select(_order=lines[order_id_col], _group=lines[group_by].cast("string"),
                        _lrev=(lines[quantity_col] * lines[unit_price_col]).cast("float64"))
    per_order = line.group_by("_order").aggregate(_otot=line._lrev.sum())
    line = line.join(per_order, "_order")
    j = x.join(line, "_order")
    share = (j._otot > 0).ifelse(j._lrev / j._otot, 0.0)
    cols = {c: j[c] for c in x.columns if c not in ("_amount", "_discount")}
    cols["_group"] = j._group
    cols["_amount"] = j._amount * share
    if has_discount:
        cols["_discount"] = j._discount * share
    return j.select(**cols)


def series_from_dataset(data, *, group_by: str | None = None, segments: pd.DataFrame | None = None,
                        **kwargs) -> pd.DataFrame:
    """:func:`build_series` on a ``Dataset``, taking the tables ``group_by`` needs.

    Examples
    --------
    >>> series_from_dataset(data, freq="W", group_by="region")  # doctest: +SKIP
    """
    lines = data.table("order_lines") if group_by and data.has("order_lines", group_by) else None
    customers = (data.table("customers")
                 if group_by and lines is None and data.has("customers", group_by) else None)
    return build_series(data.table("orders"), order_lines=lines, customers=customers,
                        segments=segments, group_by=group_by, **kwargs)


def to_panel(series: pd.DataFrame, value: str = "revenue", *, exog: tuple[str, ...] = ()) -> dict:
    """A long series frame as arrays: one row per group, one column per period.

    Returns ``{"groups": list, "periods": DatetimeIndex, "Y": (n, T) array,
    "X": (n, T, k) array or None, "exog_names": list}``.
    """
    if value not in series.columns:
        raise DataContractError("value column missing from the series frame", column=value)
    wide = series.pivot(index="group", columns="period", values=value).fillna(0.0)
    names = [c for c in exog if c in series.columns]
    X = None
    if names:
        X = np.stack([series.pivot(index="group", columns="period", values=c)
                      .reindex(index=wide.index, columns=wide.columns).fillna(0.0).to_numpy(float)
                      for c in names], axis=-1)
    return {"groups": [str(g) for g in wide.index], "periods": pd.DatetimeIndex(wide.columns),
            "Y": wide.to_numpy(float), "X": X, "exog_names": names}
