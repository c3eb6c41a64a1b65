"""Aggregations that run inside the engine.

Each function takes and returns ibis table expressions, so the same
definition compiles to DuckDB SQL (the embedded default), PostgreSQL SQL and
later Spark SQL. Only the small results -- one row per customer, per period
or per campaign -- reach pandas, by the caller's ``.to_pandas()``.
"""

from __future__ import annotations

import datetime as dt

import ibis
import ibis.expr.types as ir


def as_of_literal(as_of: str | dt.date | dt.datetime | None) -> ir.TimestampScalar | None:
    """A snapshot date as an ibis timestamp literal at the end of that day
    (orders on the as-of date count), or None."""
    if as_of in (None, ""):
        return None
    ts = dt.datetime.fromisoformat(str(as_of)) if not isinstance(as_of, dt.datetime) else as_of
    if isinstance(as_of, (str, dt.date)) and not isinstance(as_of, dt.datetime) and len(str(as_of)) <= 10:
        ts = ts + dt.timedelta(days=1) - dt.timedelta(microseconds=1)
    return ibis.literal(ts, type="timestamp")


def latest_order_date(orders: ir.Table, *, date_col: str = "order_date") -> dt.date:
    """The date of the newest order: the default ``as_of`` of every report."""
    value = orders[date_col].max().execute()
    if value is None:
        from crmlab.exceptions import NoDataError
        raise NoDataError("table orders has no rows with an order_date")
    return value.date() if hasattr(value, "date") else value


def customer_summary(orders: ir.Table, as_of=None, *, customer_id_col: str = "customer_id",
                     date_col: str = "order_date", amount_col: str = "amount") -> ir.Table:
    """Transactions to one row per customer, computed in the engine.

    Transforms a table of the form ``customer_id, order_date, amount`` (one
    row per order) into one row per customer with::

        customer_id, first_purchase, last_purchase   (timestamps)
        n_orders        orders up to as_of
        n_days          distinct purchase days (same-day orders are one
                        transaction, as in the BTYD literature)
        revenue         sum of amount
        first_day_revenue   revenue on the first purchase day (so repeat
                        spend = revenue - first_day_revenue)

    Orders after ``as_of`` are ignored.

    Parameters
    ----------
    orders : ibis.Table
    as_of : str | date | None
        Snapshot date; ``None`` keeps every order.

    Returns
    -------
    ibis.Table
        One row per customer who ordered up to ``as_of``.
    """
    t = orders
    cutoff = as_of_literal(as_of)
    if cutoff is not None:
        t = t.filter(t[date_col] <= cutoff)
    day = t[date_col].truncate("D").name("_day")
    daily = (
        t.mutate(_day=day)
        .group_by([customer_id_col, "_day"])
        .aggregate(
            _orders=t[amount_col].count(),
            _amount=t[amount_col].sum(),
            _first=t[date_col].min(),
            _last=t[date_col].max(),
        )
    )
    first_day = daily._day.min().over(group_by=daily[customer_id_col])
    daily = daily.mutate(_is_first=(daily._day == first_day))
    return daily.group_by(customer_id_col).aggregate(
        first_purchase=daily._first.min(),
        last_purchase=daily._last.max(),
        n_orders=daily._orders.sum(),
        n_days=daily._day.count(),
        revenue=daily._amount.sum(),
        first_day_revenue=daily._is_first.ifelse(daily._amount, 0).sum(),
    )
