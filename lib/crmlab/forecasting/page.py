"""What the forecasting notebook needs besides the models: its parameters
checked, the grouping column found, the segment of each customer, and the
price analysis assembled.

Each function is one notebook call::

    fc.check_parameters(data, freq=freq, value=value, group_by=group_by, ...)
    g = fc.grouping(data, group_by, as_of=as_of)
    series = fc.series_from_dataset(data, freq=freq, group_by=g["by"], segments=g["segments"],
                                    as_of=as_of)
    price = fc.price_analysis(data, res, price_change=price_change, as_of=as_of)
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from crmlab import calendars, config
from crmlab.exceptions import CrmlabError, ParameterError
from crmlab.forecasting.elasticity import price_elasticity, price_panel, price_scenario
from crmlab.forecasting.series import FREQ_RULES
from crmlab.schema import ID_COLUMNS, pii_columns

VALUES = ("revenue", "orders")
CALENDARS = tuple(sorted(calendars.EVENTS)) + ("none",)
# customer -> segment columns found in the segmentation report's export
SEGMENT_COLUMNS = ("segment", "tier", "cluster")
# tables whose columns may group the forecast, in the order they are looked up
GROUP_TABLES = ("orders", "order_lines", "customers")
# columns that never group a forecast: money, counts and times, besides keys and personal data
NOT_GROUPS = {"amount", "discount", "quantity", "unit_price", "order_date", "signup_date",
              "opened_at", "resolved_at", "ts", "unit_cost", "list_price", "age"}
GROUP_KEYS_ALLOWED = ("product_id",)       # a key that still makes a sensible grouping
# the elasticity is estimated on weekly product sales: retailers change shelf
# prices on a weekly cycle, so a week has one price per product (a month mixes
# several, and the average price of a month with a markdown in it overstates
# the units sold at the average: the estimate shrinks towards zero); daily,
# most product-days have no sale and their price goes unobserved
ELASTICITY_FREQ = "W"
SCENARIO_CHANGES = (-0.10, -0.05, 0.05, 0.10)


def _groupable(table: str, columns) -> list[str]:
    pii = set(pii_columns(table))
    return [c for c in columns if c not in pii and c not in NOT_GROUPS and not c.startswith("_")
            and (c not in ID_COLUMNS or c in GROUP_KEYS_ALLOWED)]


def grouping_columns(data=None) -> dict[str, list[str]]:
    """The columns that can group the forecast, per table.

    Any column of ``orders``, ``order_lines`` or ``customers`` -- in the data
    contract (``crmlab.schema``) or in this source -- except keys, personal
    data (names, emails, phones, addresses, birth dates, national ids),
    amounts, counts and times; ``product_id`` is allowed. The segment columns
    (``segment``, ``tier``, ``cluster``) are always offered: they come from
    the segmentation report or are computed (:func:`segments_for`).

    Returns
    -------
    dict
        ``table -> [column, ...]`` (``"segmentation"`` for the segment columns).
    """
    from crmlab.schema import TABLES

    out = {}
    for name in GROUP_TABLES:
        cols = list(TABLES[name].columns)
        if data is not None and data.has(name):
            cols += [c for c in data.table(name).columns if c not in cols]
        out[name] = _groupable(name, cols)
    out["segmentation"] = [c for c in SEGMENT_COLUMNS if not any(c in cols for cols in out.values())]
    return out


def grouping(data, group_by: str, *, as_of=None, reports_dir=None) -> dict:
    """How to group the forecast by ``group_by`` on this source.

    Returns
    -------
    dict
        ``by``: the column to pass to ``series_from_dataset`` (None for the
        total only, or when this source lacks the column); ``segments``: the
        customer -> segment frame when ``group_by`` is a segment column
        (:func:`segments_for`); ``note``: a sentence for the page;
        ``needs``: ``"table.column"`` when the source lacks the column (the
        page shows the section as not available), else None.

    Examples
    --------
    >>> grouping(minimal_orders_only, "region")["needs"]       # doctest: +SKIP
    'customers.region'
    """
    out = {"by": None, "segments": None, "note": "", "needs": None}
    if not group_by:
        return out
    if group_by in SEGMENT_COLUMNS and not any(data.has(t, group_by) for t in GROUP_TABLES):
        out["segments"], out["note"] = segments_for(data, group_by, as_of=as_of, reports_dir=reports_dir)
        out["by"] = group_by
        return out
    for table in GROUP_TABLES:
        if data.has(table, group_by):
            needed = [(t, c) for t, c in (("order_lines", "order_id"), ("order_lines", "quantity"),
                                          ("order_lines", "unit_price"), ("orders", "order_id"))
                      if table == "order_lines" and not data.has(t, c)]
            if needed:
                out["needs"] = [f"{t}.{c}" for t, c in needed]
                return out
            out["by"] = group_by
            return out
    known = grouping_columns()
    table = next((t for t, cols in known.items() if group_by in cols), "customers")
    out["needs"] = f"{table}.{group_by}"
    return out


def check_parameters(data, *, freq: str, value: str, group_by: str, horizon: int, holdout: int,
                     n_origins: int, calendar: str, price_change: float,
                     max_groups_shown: int) -> None:
    """Refuse parameters the report cannot use, naming every problem at once.

    Raises
    ------
    ParameterError
        With one clause per problem; an unknown ``group_by`` lists the
        columns that can group the forecast.

    Examples
    --------
    >>> check_parameters(data, freq="W", value="revenue", group_by="colour", horizon=13,
    ...                  holdout=0, n_origins=4, calendar="cn", price_change=0.0,
    ...                  max_groups_shown=8)                                  # doctest: +SKIP
    Traceback (most recent call last):
    ParameterError: group_by 'colour' is not a column that can group sales; known: ...
    """
    problems = []
    if freq not in FREQ_RULES:
        problems.append(f"freq must be one of {sorted(FREQ_RULES)}, not {freq!r}")
    if value not in VALUES:
        problems.append(f"value must be one of {list(VALUES)}, not {value!r}")
    if group_by:
        known = grouping_columns(data)
        if not any(group_by in cols for cols in known.values()):
            listed = "; ".join(f"{t}: {', '.join(c)}" for t, c in known.items() if c)
            problems.append(f"group_by {group_by!r} is not a column that can group sales; "
                            f"known: {listed}")
    if not 0 <= horizon <= 1000:
        problems.append(f"horizon must be between 1 and 1000 periods (0 = the frequency's "
                        f"default), not {horizon}")
    if holdout < 0:
        problems.append(f"holdout must be 0 or more, not {holdout}")
    if not 1 <= n_origins <= 52:
        problems.append(f"n_origins must be between 1 and 52, not {n_origins}")
    if calendar not in CALENDARS:
        problems.append(f"calendar must be one of {list(CALENDARS)}, not {calendar!r}")
    if not -0.9 <= price_change <= 1.0:
        problems.append(f"price_change must be between -0.9 and 1.0 (e.g. -0.10 for a 10% cut), "
                        f"not {price_change}")
    if max_groups_shown < 1:
        problems.append(f"max_groups_shown must be at least 1, not {max_groups_shown}")
    if problems:
        raise ParameterError("; ".join(problems))


def latest_segments(reports_dir=None) -> pd.DataFrame | None:
    """``exports/segments.csv`` of the newest successful segmentation run, or None.

    Returns
    -------
    DataFrame or None
        ``customer_id`` and the segment columns it has, one row per customer.
    """
    from crmlab.report import list_runs

    root = config.reports_dir(reports_dir)
    for run in list_runs(root / "segmentation", status="success"):
        path = run["_dir"] / "exports" / "segments.csv"
        if path.is_file():
            frame = pd.read_csv(path, dtype={c: "string" for c in SEGMENT_COLUMNS})
            if "customer_id" in frame.columns:
                frame.attrs["run_id"] = run.get("run_id", run["_dir"].name)
                return frame
    return None


def segments_for(data, group_by: str, *, as_of=None, reports_dir=None) -> tuple[pd.DataFrame | None, str]:
    """The customer -> segment frame that ``group_by`` needs, and where it came from.

    ``group_by`` names a segment column (``segment``, ``tier``, ``cluster``)
    that the data's tables lack: the newest successful segmentation run's
    ``exports/segments.csv`` is used when it has the column; otherwise RFM
    segments and tiers are computed now with :mod:`crmlab.segmentation` (its
    shipped segment map) as of ``as_of``. Any other ``group_by`` needs no
    segment frame.

    Returns
    -------
    (DataFrame or None, str)
        ``customer_id, <group_by>`` and one sentence for the page saying which
        source was used (empty when no segment frame is needed).
    """
    if not group_by or group_by not in SEGMENT_COLUMNS:
        return None, ""
    if any(data.has(t, group_by) for t in GROUP_TABLES):
        return None, ""
    frame = latest_segments(reports_dir)
    if frame is not None and group_by in frame.columns and frame[group_by].notna().any():
        note = (f"Customers are grouped by the {group_by} the segmentation report gave them in its "
                f"latest successful run ({frame.attrs.get('run_id', 'unknown run')}).")
        return frame[["customer_id", group_by]], note
    if group_by == "cluster":
        raise ParameterError("group_by 'cluster' needs a successful segmentation run with "
                             "behavioural groups; run `crmlab run segmentation` first")
    from crmlab import segmentation as seg

    scored = seg.score_rfm(seg.rfm_table(data.table("orders"), as_of or None).to_pandas())
    note = (f"No segmentation run was found, so RFM {group_by}s were computed for this page with "
            f"the shipped segment map (as of {as_of or 'the latest order'}).")
    return scored[["customer_id", group_by]].astype({group_by: "string"}), note


def price_analysis(data, forecast=None, *, price_change: float = 0.0, as_of=None,
                   value: str = "revenue", changes=SCENARIO_CHANGES,
                   freq: str = ELASTICITY_FREQ) -> dict:
    """The price elasticity from the data and what price changes would do.

    Builds the product x week panel in the engine (:func:`price_panel`),
    estimates the elasticity (:func:`price_elasticity`: Poisson
    pseudo-maximum likelihood with product and week fixed effects and the
    promotion share) and applies it to the forecast's total for
    ``price_change`` and the standard ladder ``changes``.

    Weekly product sales (``ELASTICITY_FREQ``), whatever the forecast's
    period: shelf prices change on a weekly cycle, so each product-week has
    one price, while a month with a markdown in it averages two and biases
    the estimate towards zero. A product-week without a sale has no observed
    price and drops out; ``sold_share`` says how many had one (the fewer,
    the more the estimate is pulled towards zero).

    Returns
    -------
    dict
        ``available`` (bool); when False, ``needs`` (the missing
        ``table.column`` list) or ``reason``. When True: ``elasticity``
        (:class:`Elasticity`), ``usable`` (the interval is below zero, so a
        scenario is drawn), ``scenario`` (for ``price_change``, or None when
        0 or not usable), ``table`` (one row per price change: ``price
        change, units, revenue, revenue impact, impact low, impact high``),
        ``sold_share`` (share of product-periods with a sale), ``freq``.
    """
    needs = [f"order_lines.{c}" for c in ("product_id", "quantity", "unit_price")
             if not data.has("order_lines", c)]
    if needs:
        return {"available": False, "needs": needs, "reason": None}
    if value != "revenue":
        return {"available": False, "needs": None,
                "reason": "Price scenarios apply to a revenue forecast (value = revenue)."}
    try:
        panel = price_panel(data.table("order_lines"), data.table("orders"), freq=freq, as_of=as_of or None)
        el = price_elasticity(panel, freq=freq)
    except (CrmlabError, np.linalg.LinAlgError) as exc:
        return {"available": False, "needs": None,
                "reason": f"The data cannot support a price elasticity: {exc}"}
    sold_share = len(panel) / max(1, panel["unit"].nunique() * panel["period"].nunique())
    usable = el.ci_high < 0
    out = {"available": True, "elasticity": el, "usable": usable, "scenario": None,
           "table": None, "sold_share": float(sold_share), "freq": freq}
    if forecast is None or not usable:
        return out
    asked = [price_change] if price_change else []
    rows = []
    for c in sorted(set(changes) | set(asked)):
        sc = price_scenario(forecast, el, c)
        rows.append({"price change": c, "units": sc["quantity_change_pct"] / 100,
                     "revenue": sc["impact_pct"] / 100, "revenue impact": sc["impact"],
                     "impact low": sc["impact_low"], "impact high": sc["impact_high"],
                     "asked": bool(asked) and np.isclose(c, price_change)})
        if asked and np.isclose(c, price_change):
            out["scenario"] = sc
    out["table"] = pd.DataFrame(rows)
    return out
