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
    if value is None or (not isinstance(value, (dt.date, str)) and value != value):  # None, NaT
        from crmlab.exceptions import NoDataError
        raise NoDataError("table orders has no rows with an order_date")
    return value.date() if hasattr(value, "date") else value


def parse_as_of(as_of: str | dt.date | dt.datetime | None) -> dt.date | None:
    """A user's ``as_of`` as a date (None when empty); a
    :class:`~crmlab.exceptions.ParameterError` for text that is not a date."""
    if as_of is None or (isinstance(as_of, str) and not as_of.strip()):
        return None
    if isinstance(as_of, dt.datetime):
        return as_of.date()
    if isinstance(as_of, dt.date):
        return as_of
    if hasattr(as_of, "to_pydatetime"):  # pandas Timestamp
        return as_of.to_pydatetime().date()
    try:
        return dt.date.fromisoformat(str(as_of).strip()[:10])
    except ValueError:
        from crmlab.exceptions import ParameterError
        raise ParameterError("as_of must be a date YYYY-MM-DD (parameter as_of)") from None


def snapshot_date(orders: ir.Table, as_of: str | dt.date | dt.datetime | None = None, *,
                  date_col: str = "order_date") -> dt.date:
    """The report's snapshot date, the one meaning every report uses: ``as_of``
    as a date when given, else the date of the newest order (of any status).

    Orders on the snapshot date count (:func:`as_of_literal` is the end of
    that day). Raises NoDataError when ``as_of`` is empty and no order has a
    date, ParameterError when ``as_of`` is not a date.
    """
    day = parse_as_of(as_of)
    return day if day is not None else latest_order_date(orders, date_col=date_col)


def purchases(orders: ir.Table, *, status_col: str = "status") -> ir.Table:
    """The orders that are purchases -- the one meaning every report uses.

    An order is a purchase unless its optional ``status`` is one of
    :data:`crmlab.schema.NON_PURCHASE_STATUSES` (refunded, cancelled; case and
    surrounding spaces ignored). On a source's typed orders
    (``Dataset.table("orders")``) the status is already ``paid``,
    ``refunded``, ``cancelled`` or missing: an export's own words are mapped
    onto these when reading (``shipped``, ``已完成`` -> paid, ... through
    :data:`crmlab.schema.VALUE_MAPS` and the source mapping's ``values:``)
    and any other word is quarantined (``out_of_domain``). So ``paid`` and a
    missing status count as purchases, and an export without statuses is not
    emptied. (A table that did not come through a source keeps its words;
    there, any word other than refunded/cancelled counts as a purchase.)

    Takes and returns a table of the form ``customer_id, order_date, amount[,
    status, ...]`` (one row per order, same columns).
    """
    from crmlab.schema import NON_PURCHASE_STATUSES

    if status_col not in orders.columns:
        return orders
    s = orders[status_col].cast("string").strip().lower()
    return orders.filter(s.isnull() | ~s.isin(list(NON_PURCHASE_STATUSES)))


def purchase_totals(orders: ir.Table, as_of=None, *, customer_id_col: str = "customer_id",
                    date_col: str = "order_date", amount_col: str = "amount") -> dict:
    """The headline every report publishes the same way: purchase revenue and
    the number of purchasing customers up to ``as_of`` (every order when None).

    Transforms the orders table into ``{"purchase_revenue": float,
    "purchasing_customers": int}``; reports write both into ``metrics.json``
    so that two reports on the same data never disagree about them.
    """
    t = purchases(orders)
    cutoff = as_of_literal(as_of)
    if cutoff is not None:
        t = t.filter(t[date_col] <= cutoff)
    row = t.aggregate(_rev=t[amount_col].sum(), _cust=t[customer_id_col].nunique()).to_pyarrow().to_pylist()[0]
    revenue = row["_rev"]
    return {"purchase_revenue": round(float(revenue or 0.0), 2), "purchasing_customers": int(row["_cust"] or 0)}


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
