"""The campaigns report: did our marketing work, and whom should we target next?

Reads ``campaigns`` and ``campaign_contacts`` (and ``orders``, ``customers``
for the covariate checks, the quasi-experiments and the uplift features)
as ibis tables. Every scan of contacts or orders runs in the engine; pandas
sees one row per campaign and group, per campaign and covariate, or -- for
the uplift models and the matched comparisons only -- a bounded sample of
customers.

Sections (each a function returning a small frame ready to show):

1. ``funnel`` / ``channel_summary``: contacted -> delivered -> opened ->
   clicked -> converted, each rate with a Wilson interval; cost per contact
   and per conversion.
2. ``compare_groups``: treatment against control -- conversion (pooled
   two-proportion z test, Newcombe hybrid score interval), revenue per
   contact (Welch t test, bootstrap interval), clicks where the control
   group has them; absolute and relative uplift; p-values adjusted across
   campaigns and metrics (Holm or Benjamini-Hochberg).
3. ``impact``: incremental conversions and revenue, ROI after cost with an
   interval.
4. ``sample_ratio_check``, ``balance_check``, ``check_warnings``: the
   checks that protect the reader.
5. ``quasi_experiment``: campaigns without a control group -- matched
   difference-in-differences with a placebo check, or an interrupted time
   series.
6. ``minimum_detectable_effect``, ``sample_size``, ``power_table``.
7. ``contact_features`` -> ``uplift_frame`` -> ``fit_uplift`` (models from
   :mod:`crmlab.uplift`, judged on held-out contacts by the Qini coefficient);
   ``customer_features`` -> ``uplift_targets`` for the next campaign.

``analyse(data)`` runs them all on a ``Dataset`` and returns a
``CampaignAnalysis`` with ``metric_cards()`` (metrics.json: the issue's
``campaigns`` dict and the KPI cards), ``results_table()``
(campaign_results.csv), ``uplift_targets(data)`` (uplift_targets.csv),
``findings()``, ``section_text()``, ``available(section)`` / ``needs``.
The page (``notebooks/50-campaigns.ipynb``) draws with ``funnel_chart``,
``forest_chart``, ``roi_chart``, ``balance_chart``, ``quasi_chart``,
``power_chart``, ``uplift_chart`` (the crmlab.charts theme) and shows
``page_table(analysis, name)``: plain headings, campaigns with groups under
the minimum size left out, in the order the campaigns started.

Contacts: one row per (campaign, customer) with ``group`` treatment or
control. A customer may be in the control group of several campaigns
(each row counts for its campaign). Two campaigns share one control group
either by listing the same control rows under both campaign ids, or by
``control_from={"CMP-002": "CMP-001"}`` (campaign CMP-002 is compared with
CMP-001's control rows).

References
----------
Wilson, E. B. (1927). Probable inference, the law of succession, and
    statistical inference. JASA 22, 209-212.
Newcombe, R. G. (1998). Interval estimation for the difference between
    independent proportions: comparison of eleven methods. Statistics in
    Medicine 17, 873-890 (method 10, the hybrid score interval).
Welch, B. L. (1947). The generalization of "Student's" problem when
    several different population variances are involved. Biometrika 34.
Efron, B. & Tibshirani, R. (1993). An Introduction to the Bootstrap
    (percentile interval, ch. 13).
Holm, S. (1979). A simple sequentially rejective multiple test procedure.
    Scand. J. Statist. 6, 65-70.
Benjamini, Y. & Hochberg, Y. (1995). Controlling the false discovery rate.
    JRSS B 57, 289-300.
Kohavi, R., Tang, D. & Xu, Y. (2020). Trustworthy Online Controlled
    Experiments, ch. 21 (sample ratio mismatch).
Austin, P. C. (2009). Balance diagnostics for comparing the distribution
    of baseline covariates between treatment groups in propensity-score
    matched samples. Statistics in Medicine 28, 3083-3107 (SMD, 0.1 rule).
Cohen, J. (1988). Statistical Power Analysis for the Behavioral Sciences,
    2nd ed., ch. 6 (effect size h for proportions).
Abadie, A. & Imbens, G. W. (2006). Large sample properties of matching
    estimators for average treatment effects. Econometrica 74, 235-267.
Wagner, A. K. et al. (2002). Segmented regression analysis of interrupted
    time series studies. J. Clin. Pharm. Ther. 27, 299-309.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import math
from typing import Any, Mapping, Sequence

import ibis
import ibis.expr.types as ir
import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (confint_proportions_2indep, proportion_confint,
                                          test_proportions_2indep)

from crmlab import engine
from crmlab.config import DEFAULT_SEED, MIN_GROUP_SIZE
from crmlab.exceptions import DataContractError, NoDataError, ParameterError
from crmlab import uplift as _uplift

# --------------------------------------------------------------------------
# business rules and wording, as data
# --------------------------------------------------------------------------

# how a raw ``group`` value (lower-cased, stripped) maps onto the contract
GROUP_VALUES: dict[str, str] = {
    "treatment": "treatment", "treated": "treatment", "test": "treatment",
    "control": "control", "holdout": "control", "hold-out": "control",
}

# string spellings of "yes" in flag columns (delivered, opened, ...)
TRUE_STRINGS = ("1", "true", "t", "yes", "y")

FUNNEL_STAGES: tuple[str, ...] = ("contacted", "delivered", "opened", "clicked", "converted")

CHECKS: dict[str, float] = {
    "srm_alpha": 0.001,          # sample-ratio mismatch: strict, as is customary
    "default_treatment_share": 0.5,
    "smd_threshold": 0.1,        # |standardised mean difference| above this = imbalance
    "balance_alpha": 0.001,      # ... and a difference this unlikely by chance = broken split
    "min_pool": 100,             # fewest unexposed customers for a matched comparison
    "placebo_ratio": 0.5,        # a placebo this large relative to the effect: fragile
}

# multiple-testing corrections: our name -> statsmodels method, short name, words for the page
CORRECTIONS: dict[str, dict[str, str]] = {
    "holm": {"method": "holm", "name": "Holm",
             "text": "Holm's step-down correction (controls the chance of any false positive "
                     "across all campaigns and metrics)"},
    "bh": {"method": "fdr_bh", "name": "Benjamini-Hochberg",
           "text": "the Benjamini-Hochberg correction (controls the expected share of false "
                   "positives among the results called significant)"},
    "bonferroni": {"method": "bonferroni", "name": "Bonferroni",
                   "text": "the Bonferroni correction"},
    "none": {"method": "", "name": "no", "text": "no correction for multiple testing"},
}

METRICS: dict[str, str] = {
    "conversion": "conversion rate",
    "revenue_per_contact": "revenue per contact",
    "click_rate": "click rate",
}

# pre-campaign covariates for the balance check: column -> words
BALANCE_COVARIATES: dict[str, str] = {
    "pre_orders": "orders in the year before",
    "pre_spend": "spend in the year before",
    "recency_days": "days since the last order",
    "tenure_days": "days since the first order",
}

# the quasi-experimental designs, labelled so nobody mistakes them for an experiment
QUASI_DESIGNS: dict[str, dict[str, str]] = {
    "did": {
        "label": "Quasi-experimental estimate (difference-in-differences against matched "
                 "customers who were not contacted) - not a randomised result",
        "assumption": "Parallel trends: without the campaign, the contacted customers' orders "
                      "would have changed like those of their matched look-alikes. The placebo "
                      "check applies the same comparison to the two periods before the campaign, "
                      "where the effect must be zero; a placebo far from zero means the "
                      "assumption is doubtful.",
    },
    "its": {
        "label": "Quasi-experimental estimate (interrupted time series of the contacted "
                 "customers' daily orders) - not a randomised result",
        "assumption": "The pre-campaign trend would have continued unchanged and nothing else "
                      "changed at the campaign's start (no other campaign, holiday or price "
                      "change). Seasonality that the pre-period does not show is not removed.",
    },
}

UPLIFT_FEATURES: tuple[str, ...] = ("pre_orders", "pre_spend", "pre_aov", "recency_days",
                                    "tenure_days", "pre_discount_share", "order_channel", "age",
                                    "gender", "region", "acquisition_channel")
DEMOGRAPHICS: tuple[str, ...] = ("gender", "region", "acquisition_channel")


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------

def _flag(col: ir.Column) -> ir.BooleanColumn:
    """A yes/no column as a boolean: booleans as they are, numbers != 0,
    timestamps when present, strings from ``TRUE_STRINGS``; null = no."""
    t = col.type()
    if t.is_boolean():
        return col.fill_null(False)
    if t.is_numeric():
        return col.fill_null(0) != 0
    if t.is_temporal():
        return col.notnull()
    if t.is_string():
        return col.strip().lower().isin(TRUE_STRINGS).fill_null(False)
    raise DataContractError(f"cannot read a yes/no flag from type {t}", table="campaign_contacts",
                            column=col.get_name(), check="type")


def _normalise_group(values: pd.Series) -> pd.Series:
    s = values.astype("string").str.strip().str.lower()
    return s.map(GROUP_VALUES).fillna("other").astype(str)


def _json(v):
    """A value as JSON wants it: floats, ints, None for missing."""
    if v is None:
        return None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if not np.isfinite(v) else float(v)
    return v


def _fmt_pct(x: float, digits: int = 1) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.{digits}f}%"


def _fmt_pts(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:+.{digits}f} points"


def _fmt_pts_range(lo: float, hi: float, digits: int = 1) -> str:
    """An interval in percentage points: ``+2.4 to +4.8 points``."""
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return "n/a"
    return f"{100 * lo:+.{digits}f} to {100 * hi:+.{digits}f} points"


def _fmt_money(x: float, currency: str = "") -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    sign = "-" if x < 0 else ""
    return f"{sign}{currency + ' ' if currency else ''}{abs(x):,.0f}"


def _fmt_p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


# --------------------------------------------------------------------------
# campaigns and engine-side aggregation
# --------------------------------------------------------------------------

def purchase_orders(data, as_of: str | dt.date | None = None) -> ir.Table | None:
    """The orders the report reads: the purchases of ``data`` (the one
    meaning, :func:`crmlab.engine.purchases`: refunded and cancelled orders
    are not purchases; paid, missing and other status words are) up to the
    end of the snapshot date (:func:`crmlab.engine.snapshot_date`). None
    when ``data`` has no orders table. Same columns as ``orders``."""
    if not data.has("orders"):
        return None
    orders = data.table("orders")
    day = engine.snapshot_date(orders, as_of)
    t = engine.purchases(orders)
    return t.filter(t["order_date"] <= engine.as_of_literal(day))


CAMPAIGN_COLUMNS = ("campaign_id", "name", "channel", "start_date", "end_date", "cost",
                    "cost_per_contact", "planned_treatment_share")


def campaign_info(campaigns: ir.Table | pd.DataFrame | None, *,
                  campaign_id_col: str = "campaign_id") -> pd.DataFrame:
    """The campaigns table as a small pandas frame with every contract
    column present (missing optional columns filled with nulls).

    Returns
    -------
    pandas.DataFrame
        One row per campaign: ``campaign_id, name, channel, start_date,
        end_date, cost, cost_per_contact, planned_treatment_share``.
    """
    if campaigns is None:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in CAMPAIGN_COLUMNS})
    df = campaigns if isinstance(campaigns, pd.DataFrame) else campaigns.to_pandas()
    df = df.rename(columns={campaign_id_col: "campaign_id"})
    for c in CAMPAIGN_COLUMNS:
        if c not in df.columns:
            df[c] = np.nan if c in ("cost", "cost_per_contact", "planned_treatment_share") else None
    for c in ("start_date", "end_date"):
        df[c] = pd.to_datetime(df[c])
    for c in ("cost", "cost_per_contact", "planned_treatment_share"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    return df[list(CAMPAIGN_COLUMNS)].drop_duplicates("campaign_id").reset_index(drop=True)


def contact_aggregates(contacts: ir.Table, *, campaign_ids: Sequence | None = None,
                       campaign_id_col: str = "campaign_id", customer_id_col: str = "customer_id",
                       group_col: str = "group", delivered_col: str = "delivered",
                       opened_col: str = "opened", clicked_col: str = "clicked",
                       converted_col: str = "converted", revenue_col: str = "revenue") -> pd.DataFrame:
    """Contacts to one row per campaign and group, computed in the engine.

    Transforms a table of the form ``campaign_id, customer_id, group,
    delivered, opened, clicked, converted, revenue`` (one row per contact;
    only the first three required) into one row per campaign and group
    with::

        contacts           rows
        customers          distinct customers
        delivered, opened, clicked, converted     rows flagged yes
        delivered_known, ... converted_known      rows where the flag is recorded
        revenue, revenue_sq, revenue_nonzero      sum, sum of squares, rows != 0

    Flags may be booleans, 0/1 or timestamps (present = yes). Missing
    optional columns give NaN counts. ``group`` values are normalised
    through ``GROUP_VALUES``; anything else becomes ``"other"``.

    Returns
    -------
    pandas.DataFrame
        Columns ``campaign_id, group`` and the counts above.

    Examples
    --------
    >>> agg = contact_aggregates(data.table("campaign_contacts"))  # doctest: +SKIP
    """
    t = contacts
    for col in (campaign_id_col, customer_id_col, group_col):
        if col not in t.columns:
            raise DataContractError("campaign contacts need this column", table="campaign_contacts",
                                    column=col, check="present")
    if campaign_ids is not None:
        t = t.filter(t[campaign_id_col].isin(list(campaign_ids)))
    aggs: dict[str, Any] = {"contacts": t.count(), "customers": t[customer_id_col].nunique()}
    stages = {"delivered": delivered_col, "opened": opened_col, "clicked": clicked_col,
              "converted": converted_col}
    for stage, col in stages.items():
        if col in t.columns:
            aggs[stage] = _flag(t[col]).cast("int64").sum()
            aggs[f"{stage}_known"] = t[col].notnull().cast("int64").sum()
    if revenue_col in t.columns:
        r = t[revenue_col].cast("float64").fill_null(0.0)
        aggs["revenue"] = r.sum()
        aggs["revenue_sq"] = (r * r).sum()
        aggs["revenue_nonzero"] = (r != 0).cast("int64").sum()
    df = t.group_by([campaign_id_col, group_col]).aggregate(**aggs).to_pandas()
    df = df.rename(columns={campaign_id_col: "campaign_id", group_col: "group"})
    df["group"] = _normalise_group(df["group"])
    num = [c for c in df.columns if c not in ("campaign_id", "group")]
    df[num] = df[num].apply(pd.to_numeric, errors="coerce").astype(float)
    df = df.groupby(["campaign_id", "group"], as_index=False, sort=True)[num].sum(min_count=1)
    for stage in stages:
        if stage not in df.columns:
            df[stage] = np.nan
            df[f"{stage}_known"] = 0.0
    for c in ("revenue", "revenue_sq", "revenue_nonzero"):
        if c not in df.columns:
            df[c] = np.nan
    return df


def revenue_values(contacts: ir.Table, *, campaign_ids: Sequence | None = None,
                   campaign_id_col: str = "campaign_id", group_col: str = "group",
                   revenue_col: str = "revenue") -> pd.DataFrame:
    """The non-zero revenue of each contact, for the bootstrap.

    Revenue per contact is mostly zero (most contacts do not buy); only the
    non-zero values leave the engine, and the zeros are counted in
    :func:`contact_aggregates`. Returns ``campaign_id, group, revenue``
    (one row per contact with revenue != 0), or an empty frame when the
    column is absent.
    """
    if revenue_col not in contacts.columns:
        return pd.DataFrame({"campaign_id": [], "group": [], "revenue": []})
    t = contacts
    if campaign_ids is not None:
        t = t.filter(t[campaign_id_col].isin(list(campaign_ids)))
    r = t[revenue_col].cast("float64")
    t = t.filter(r.notnull() & (r != 0))
    df = t.select(campaign_id=t[campaign_id_col], group=t[group_col],
                  revenue=t[revenue_col].cast("float64")).to_pandas()
    df["group"] = _normalise_group(df["group"])
    return df


# --------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------

def wilson_interval(successes, n, *, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Wilson (1927) score interval for a proportion, vectorised
    (statsmodels ``proportion_confint(method="wilson")``). NaN where
    ``n == 0``.

    Examples
    --------
    Newcombe (1998a, Table I): 81/263 -> 0.2553 to 0.3662.

    >>> [round(float(v), 4) for v in wilson_interval(81, 263)]
    [0.2553, 0.3662]
    """
    x = np.asarray(successes, dtype=float)
    n = np.asarray(n, dtype=float)
    ok = n > 0
    low = np.full(np.broadcast(x, n).shape, np.nan)
    high = low.copy()
    if np.any(ok):
        xb, nb = np.broadcast_to(x, low.shape), np.broadcast_to(n, low.shape)
        lo, hi = proportion_confint(xb[ok], nb[ok], alpha=alpha, method="wilson")
        low[ok], high[ok] = lo, hi
    return low, high


def newcombe_interval(x1, n1, x2, n2, *, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Newcombe's hybrid score interval for the difference of two
    independent proportions ``x1/n1 - x2/n2`` (Newcombe 1998, method 10:
    the Wilson intervals of each proportion combined), vectorised through
    statsmodels ``confint_proportions_2indep(method="newcomb")``.

    Examples
    --------
    Newcombe (1998, Table II, example a): 56/70 - 48/80 = 0.2000,
    95% interval 0.0524 to 0.3339.

    >>> [round(float(v), 4) for v in newcombe_interval(56, 70, 48, 80)]
    [0.0524, 0.3339]
    """
    arrs = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (x1, n1, x2, n2)))
    x1, n1, x2, n2 = arrs
    low = np.full(x1.shape, np.nan)
    high = low.copy()
    ok = (n1 > 0) & (n2 > 0)
    if np.any(ok):
        lo, hi = confint_proportions_2indep(x1[ok], n1[ok], x2[ok], n2[ok], method="newcomb",
                                            compare="diff", alpha=alpha)
        low[ok], high[ok] = lo, hi
    return low, high


def two_proportion_test(x1, n1, x2, n2) -> np.ndarray:
    """Two-sided p-value of the pooled two-proportion z test of
    ``x1/n1 = x2/n2`` (statsmodels score test without correction, which is
    the pooled z test at a zero difference). 1.0 where both rates are 0 or
    1 (no evidence either way); NaN where a group is empty."""
    arrs = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (x1, n1, x2, n2)))
    x1, n1, x2, n2 = arrs
    p = np.full(x1.shape, np.nan)
    ok = (n1 > 0) & (n2 > 0)
    pooled = np.divide(x1 + x2, n1 + n2, out=np.zeros_like(x1), where=ok)
    degenerate = ok & ((pooled == 0) | (pooled == 1))
    p[degenerate] = 1.0
    live = ok & ~degenerate
    if np.any(live):
        res = test_proportions_2indep(x1[live], n1[live], x2[live], n2[live], method="score",
                                      compare="diff", correction=False)
        p[live] = res.pvalue
    return p


def welch_test(mean1, var1, n1, mean2, var2, n2, *, alpha: float = 0.05) -> dict[str, np.ndarray]:
    """Welch's t test and interval for ``mean1 - mean2`` from group summaries
    (vectorised; scipy ``ttest_ind_from_stats(equal_var=False)`` for the
    p-value, Welch-Satterthwaite degrees of freedom for the interval).

    Returns
    -------
    dict
        ``diff, ci_low, ci_high, p_value, df`` arrays.
    """
    m1, v1, n1, m2, v2, n2 = np.broadcast_arrays(
        *(np.asarray(a, dtype=float) for a in (mean1, var1, n1, mean2, var2, n2)))
    with np.errstate(invalid="ignore", divide="ignore"):
        a, b = v1 / n1, v2 / n2
        se = np.sqrt(a + b)
        df = (a + b) ** 2 / (a ** 2 / (n1 - 1) + b ** 2 / (n2 - 1))
        res = stats.ttest_ind_from_stats(m1, np.sqrt(v1), n1, m2, np.sqrt(v2), n2, equal_var=False)
        q = stats.t.ppf(1 - alpha / 2, df)
    diff = m1 - m2
    p = np.asarray(res.pvalue, dtype=float)
    p = np.where((se == 0) & (n1 > 1) & (n2 > 1), np.where(diff == 0, 1.0, 0.0), p)
    return {"diff": diff, "ci_low": diff - q * se, "ci_high": diff + q * se, "p_value": p, "df": df}


def bootstrap_means(nonzero: np.ndarray, n: int, *, n_boot: int = 2000, rng=None,
                    max_cells: int = 4_000_000) -> np.ndarray:
    """Bootstrap replicates of the mean of ``n`` values of which only the
    non-zero ones (``nonzero``) are given -- the rest are zeros.

    Exactly the ordinary (multinomial) bootstrap of the full vector, done
    without materialising it: in each replicate the number of non-zero
    draws is ``K ~ Binomial(n, k/n)`` and those ``K`` values are drawn with
    replacement from ``nonzero``. Work is ``n_boot * k``, not
    ``n_boot * n``, and runs in vectorised chunks of at most ``max_cells``
    draws.

    Returns
    -------
    numpy.ndarray
        ``n_boot`` replicate means.
    """
    rng = np.random.default_rng(rng)
    v = np.asarray(nonzero, dtype=float)
    k = len(v)
    if n <= 0:
        return np.full(n_boot, np.nan)
    if k == 0:
        return np.zeros(n_boot)
    if k > n:
        raise ParameterError("more non-zero values than contacts")
    draws = rng.binomial(n, k / n, size=n_boot)
    sums = np.empty(n_boot)
    kmax = max(int(draws.max()), 1)
    step = max(1, max_cells // kmax)
    cols = np.arange(kmax)
    for start in range(0, n_boot, step):
        kb = draws[start:start + step]
        idx = rng.integers(0, k, size=(len(kb), kmax))
        vals = v[idx]
        vals[cols[None, :] >= kb[:, None]] = 0.0
        sums[start:start + step] = vals.sum(axis=1)
    return sums / n


def bootstrap_mean_difference(nonzero_1, n1: int, nonzero_2, n2: int, *, n_boot: int = 2000,
                              alpha: float = 0.05, rng=None) -> tuple[float, float]:
    """Percentile bootstrap interval (Efron & Tibshirani 1993, ch. 13) for
    the difference of two means, each group resampled on its own with
    :func:`bootstrap_means`. Seeded by ``rng``."""
    rng = np.random.default_rng(rng)
    d = (bootstrap_means(nonzero_1, n1, n_boot=n_boot, rng=rng)
         - bootstrap_means(nonzero_2, n2, n_boot=n_boot, rng=rng))
    if np.isnan(d).all():
        return float("nan"), float("nan")
    lo, hi = np.quantile(d, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def adjust_pvalues(p_values, method: str = "holm") -> np.ndarray:
    """Adjust p-values for multiple testing (statsmodels ``multipletests``).

    Parameters
    ----------
    p_values : array of float
        NaN entries are left NaN and do not count as tests.
    method : {"holm", "bh", "bonferroni", "none"}

    Returns
    -------
    numpy.ndarray
        Adjusted p-values, in the input order.
    """
    if method not in CORRECTIONS:
        raise ParameterError(f"unknown correction {method!r}; known: {', '.join(CORRECTIONS)}")
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if not ok.any():
        return out
    sm = CORRECTIONS[method]["method"]
    out[ok] = p[ok] if not sm else multipletests(p[ok], method=sm)[1]
    return out


# --------------------------------------------------------------------------
# 1. funnel
# --------------------------------------------------------------------------

def _contacted(aggregates: pd.DataFrame) -> pd.DataFrame:
    """Sum over the rows that received the campaign (everything but control)."""
    a = aggregates[aggregates["group"] != "control"]
    cols = [c for c in a.columns if c not in ("campaign_id", "group")]
    return a.groupby("campaign_id", sort=True)[cols].sum(min_count=1)


def funnel(aggregates: pd.DataFrame, campaigns: pd.DataFrame | None = None, *,
           alpha: float = 0.05) -> pd.DataFrame:
    """The funnel of each campaign, among the contacts who received it.

    Takes the frame of :func:`contact_aggregates` (one row per campaign and
    group) and the frame of :func:`campaign_info`, and returns one row per
    campaign with, for each stage after ``contacted``::

        <stage>              count (NaN when the stage is not recorded)
        <stage>_rate         share of contacted, with
        <stage>_ci_low/high  its Wilson interval
        <stage>_step_rate    share of the previous recorded stage

    and ``cost`` (the campaign's cost, else ``cost_per_contact`` x
    contacted), ``cost_per_contact``, ``cost_per_conversion``. The control
    group never received the campaign and is left out.

    Returns
    -------
    pandas.DataFrame
        ``campaign_id, name, channel, contacted, ...`` one row per campaign.
    """
    c = _contacted(aggregates)
    out = pd.DataFrame(index=c.index)
    out["contacted"] = c["contacts"]
    prev = out["contacted"]
    for stage in FUNNEL_STAGES[1:]:
        known = c[f"{stage}_known"].fillna(0)
        count = c[stage].where(known > 0)
        out[stage] = count
        out[f"{stage}_rate"] = count / out["contacted"]
        lo, hi = wilson_interval(count.fillna(0), out["contacted"].where(known > 0, 0), alpha=alpha)
        out[f"{stage}_ci_low"], out[f"{stage}_ci_high"] = lo, hi
        out[f"{stage}_step_rate"] = count / prev
        prev = count.where(count.notna(), prev)
    out = out.reset_index()
    info = campaigns if campaigns is not None else campaign_info(None)
    out = out.merge(info, on="campaign_id", how="left")
    own_cost = out["cost"]
    out["cost"] = own_cost.where(own_cost.notna(), out["cost_per_contact"] * out["contacted"])
    out["cost_per_contact"] = out["cost"] / out["contacted"]
    out["cost_per_conversion"] = out["cost"] / out["converted"].where(out["converted"] > 0)
    lead = ["campaign_id", "name", "channel", "start_date", "end_date"]
    rest = [c for c in out.columns if c not in lead and c != "planned_treatment_share"]
    return out[lead + rest]


def funnel_stages(funnel_frame: pd.DataFrame) -> pd.DataFrame:
    """The funnel in long form for a chart: one row per campaign and stage
    with ``count, rate, ci_low, ci_high, step_rate`` (unrecorded stages
    dropped)."""
    rows = []
    for _, r in funnel_frame.iterrows():
        rows.append({"campaign_id": r.campaign_id, "stage": "contacted", "count": r.contacted,
                     "rate": 1.0, "ci_low": 1.0, "ci_high": 1.0, "step_rate": 1.0})
        for s in FUNNEL_STAGES[1:]:
            if pd.notna(r[s]):
                rows.append({"campaign_id": r.campaign_id, "stage": s, "count": r[s],
                             "rate": r[f"{s}_rate"], "ci_low": r[f"{s}_ci_low"],
                             "ci_high": r[f"{s}_ci_high"], "step_rate": r[f"{s}_step_rate"]})
    return pd.DataFrame(rows)


def channel_summary(aggregates: pd.DataFrame, campaigns: pd.DataFrame | None = None, *,
                    alpha: float = 0.05) -> pd.DataFrame:
    """The funnel per channel: the campaigns of one channel pooled.

    Returns one row per channel (``"unknown"`` where the campaign has no
    channel) with ``campaigns, contacted`` and the stage counts, rates and
    Wilson intervals as in :func:`funnel`, plus ``cost``,
    ``cost_per_contact`` and ``cost_per_conversion``.
    """
    f = funnel(aggregates, campaigns, alpha=alpha)
    f["channel"] = f["channel"].fillna("unknown").astype(str)
    counts = ["contacted"] + list(FUNNEL_STAGES[1:]) + ["cost"]
    g = f.groupby("channel", sort=True)
    out = g[counts].sum(min_count=1)
    out.insert(0, "campaigns", g.size())
    for stage in FUNNEL_STAGES[1:]:
        out[f"{stage}_rate"] = out[stage] / out["contacted"]
        lo, hi = wilson_interval(out[stage].fillna(0), out["contacted"].where(out[stage].notna(), 0),
                                 alpha=alpha)
        out[f"{stage}_ci_low"], out[f"{stage}_ci_high"] = lo, hi
    out["cost_per_contact"] = out["cost"] / out["contacted"]
    out["cost_per_conversion"] = out["cost"] / out["converted"].where(out["converted"] > 0)
    return out.reset_index()


# --------------------------------------------------------------------------
# 2. treatment against control
# --------------------------------------------------------------------------

def _pairs(aggregates: pd.DataFrame, control_from: Mapping | None) -> pd.DataFrame:
    """One row per campaign that has a control group: its treatment
    columns (suffix _t) and the control columns it is compared with (_c)."""
    tr = _contacted(aggregates)
    ct = aggregates[aggregates["group"] == "control"].set_index("campaign_id")
    control_from = dict(control_from or {})
    rows = []
    for cid in tr.index:
        src = control_from.get(cid, cid)
        if src not in ct.index or ct.loc[src, "contacts"] <= 0:
            continue
        row = {"campaign_id": cid, "control_campaign": src}
        row.update({f"{k}_t": v for k, v in tr.loc[cid].items()})
        row.update({f"{k}_c": v for k, v in ct.loc[src].drop("group").items()})
        rows.append(row)
    return pd.DataFrame(rows)


def compare_groups(aggregates: pd.DataFrame, revenue: pd.DataFrame | None = None, *,
                   control_from: Mapping | None = None, alpha: float = 0.05,
                   correction: str = "holm", n_boot: int = 2000,
                   seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """Treatment against control, per campaign and metric.

    Metrics (each where the data has it):

    ``conversion``
        converted / contacts. Pooled two-proportion z test; Newcombe's
        hybrid score interval (1998, method 10) for the difference.
    ``revenue_per_contact``
        revenue / contacts (zero for contacts who did not buy). Welch's t
        test on the group summaries; the interval is a percentile bootstrap
        (``n_boot`` replicates, seeded) when ``revenue`` -- the non-zero
        values from :func:`revenue_values` -- is given, else Welch's.
        Revenue is heavy-tailed, which is why the bootstrap is preferred;
        both intervals are kept (``welch_ci_low/high``).
    ``click_rate``
        clicked / contacts, when the control group's clicks (or visits) are
        recorded -- some control contact clicked; a control group that got
        no message and shows no clicks has nothing to compare. Same test and
        interval as conversion.

    P-values are adjusted across every campaign and metric together with
    ``correction`` (see ``CORRECTIONS``).

    Parameters
    ----------
    aggregates : pandas.DataFrame
        From :func:`contact_aggregates`.
    revenue : pandas.DataFrame, optional
        From :func:`revenue_values`.
    control_from : mapping, optional
        ``{campaign_id: campaign_id whose control group it uses}``.
    alpha, correction, n_boot, seed

    Returns
    -------
    pandas.DataFrame
        One row per campaign and metric: ``campaign_id, metric, treatment,
        control, uplift, relative_uplift, ci_low, ci_high, p_value,
        p_adjusted, significant, n_treatment, n_control, control_campaign,
        test, interval, welch_ci_low, welch_ci_high``.
    """
    cols = ["campaign_id", "metric", "treatment", "control", "uplift", "relative_uplift",
            "ci_low", "ci_high", "p_value", "p_adjusted", "significant", "n_treatment",
            "n_control", "control_campaign", "test", "interval", "welch_ci_low", "welch_ci_high"]
    pairs = _pairs(aggregates, control_from)
    if pairs.empty:
        return pd.DataFrame({c: [] for c in cols})
    nt, nc = pairs["contacts_t"].to_numpy(float), pairs["contacts_c"].to_numpy(float)
    frames = []

    def proportion_rows(metric, xt, xc, mask):
        if not mask.any():
            return
        p = pairs[mask]
        a, b, n1, n2 = xt[mask], xc[mask], nt[mask], nc[mask]
        lo, hi = newcombe_interval(a, n1, b, n2, alpha=alpha)
        frames.append(pd.DataFrame({
            "campaign_id": p["campaign_id"].to_numpy(), "metric": metric,
            "treatment": a / n1, "control": b / n2, "ci_low": lo, "ci_high": hi,
            "p_value": two_proportion_test(a, n1, b, n2), "n_treatment": n1, "n_control": n2,
            "control_campaign": p["control_campaign"].to_numpy(),
            "test": "two-proportion z test (pooled)", "interval": "Newcombe hybrid score",
        }))

    known_t = pairs["converted_known_t"].to_numpy(float)
    known_c = pairs["converted_known_c"].to_numpy(float)
    proportion_rows("conversion", pairs["converted_t"].to_numpy(float),
                    pairs["converted_c"].to_numpy(float), (known_t > 0) & (known_c > 0))

    has_rev = pairs["revenue_t"].notna().to_numpy() & pairs["revenue_c"].notna().to_numpy()
    if has_rev.any():
        p = pairs[has_rev]
        n1, n2 = nt[has_rev], nc[has_rev]
        s1, s2 = p["revenue_t"].to_numpy(float), p["revenue_c"].to_numpy(float)
        q1, q2 = p["revenue_sq_t"].to_numpy(float), p["revenue_sq_c"].to_numpy(float)
        m1, m2 = s1 / n1, s2 / n2
        with np.errstate(invalid="ignore", divide="ignore"):
            v1 = np.maximum(q1 - n1 * m1 ** 2, 0) / (n1 - 1)
            v2 = np.maximum(q2 - n2 * m2 ** 2, 0) / (n2 - 1)
        w = welch_test(m1, v1, n1, m2, v2, n2, alpha=alpha)
        lo, hi = w["ci_low"].copy(), w["ci_high"].copy()
        interval = np.full(len(p), "Welch t", dtype=object)
        if revenue is not None and n_boot > 0:
            vals = {k: g["revenue"].to_numpy(float)
                    for k, g in revenue.groupby(["campaign_id", "group"], sort=False)}
            children = np.random.default_rng(seed).spawn(len(p))
            for i, (cid, src) in enumerate(zip(p["campaign_id"], p["control_campaign"])):
                treated = [vals.get((cid, g), np.empty(0)) for g in ("treatment", "other")]
                lo[i], hi[i] = bootstrap_mean_difference(
                    np.concatenate(treated), int(n1[i]), vals.get((src, "control"), np.empty(0)),
                    int(n2[i]), n_boot=n_boot, alpha=alpha, rng=children[i])
                interval[i] = f"bootstrap percentile ({n_boot} replicates)"
        frames.append(pd.DataFrame({
            "campaign_id": p["campaign_id"].to_numpy(), "metric": "revenue_per_contact",
            "treatment": m1, "control": m2, "ci_low": lo, "ci_high": hi,
            "p_value": w["p_value"], "n_treatment": n1, "n_control": n2,
            "control_campaign": p["control_campaign"].to_numpy(), "test": "Welch t test",
            "interval": interval, "welch_ci_low": w["ci_low"], "welch_ci_high": w["ci_high"],
        }))

    # the control group got no message, so its clicks are structurally zero unless
    # the data records visits for it: compare only when the control group has some
    ck_t = pairs["clicked_known_t"].to_numpy(float)
    clicks_c = pairs["clicked_c"].fillna(0).to_numpy(float)
    proportion_rows("click_rate", pairs["clicked_t"].fillna(0).to_numpy(float), clicks_c,
                    (ck_t > 0) & (clicks_c > 0))

    res = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
    res["uplift"] = res["treatment"] - res["control"]
    res["relative_uplift"] = res["uplift"] / res["control"].where(res["control"] != 0)
    res["p_adjusted"] = adjust_pvalues(res["p_value"].to_numpy(float), correction)
    res["significant"] = res["p_adjusted"] < alpha
    for c in cols:
        if c not in res.columns:
            res[c] = np.nan
    order = {m: i for i, m in enumerate(METRICS)}
    res = res.assign(_o=res["metric"].map(order)).sort_values(["campaign_id", "_o"])
    return res[cols].reset_index(drop=True)


def results_table(comparison: pd.DataFrame) -> pd.DataFrame:
    """The export ``campaign_results.csv``: ``campaign_id, metric,
    treatment, control, uplift, ci_low, ci_high, p_value, p_adjusted``."""
    return comparison[["campaign_id", "metric", "treatment", "control", "uplift", "ci_low",
                       "ci_high", "p_value", "p_adjusted"]].reset_index(drop=True)


# --------------------------------------------------------------------------
# 3. incremental results and ROI
# --------------------------------------------------------------------------

def impact(comparison: pd.DataFrame, funnel_frame: pd.DataFrame, *,
           margin: float = 0.3) -> pd.DataFrame:
    """Incremental conversions, revenue and ROI of each campaign with a
    control group.

    ``incremental_conversions = uplift_conversion x n_treatment`` and
    ``incremental_revenue = uplift_revenue_per_contact x n_treatment``,
    each with the interval of its uplift scaled the same way.
    ``ROI = (margin x incremental_revenue - cost) / cost``; its interval
    propagates the revenue uplift interval (cost is known, and ROI is
    increasing in the revenue uplift, so the ends map to the ends).

    Parameters
    ----------
    comparison : from :func:`compare_groups`
    funnel_frame : from :func:`funnel` (for the cost)
    margin : float
        Gross margin as a share of revenue (0-1).

    Returns
    -------
    pandas.DataFrame
        One row per campaign: ``campaign_id, n_treatment, n_control,
        incremental_conversions (+ _ci_low/_ci_high), incremental_revenue
        (+ ci), incremental_margin, cost, roi, roi_ci_low, roi_ci_high,
        cost_per_incremental_conversion``.
    """
    if not 0 <= margin <= 1:
        raise ParameterError(f"margin must be between 0 and 1, got {margin}")
    conv = comparison[comparison.metric == "conversion"].set_index("campaign_id")
    rev = comparison[comparison.metric == "revenue_per_contact"].set_index("campaign_id")
    ids = list(dict.fromkeys(list(conv.index) + list(rev.index)))
    out = pd.DataFrame(index=pd.Index(ids, name="campaign_id"))
    src = conv if len(conv) else rev
    out["n_treatment"] = src["n_treatment"].reindex(ids)
    out["n_control"] = src["n_control"].reindex(ids)
    n = out["n_treatment"]
    for name, frame in (("incremental_conversions", conv), ("incremental_revenue", rev)):
        for k, c in (("", "uplift"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high")):
            out[name + k] = frame[c].reindex(ids) * n if len(frame) else np.nan
    cost = funnel_frame.set_index("campaign_id")["cost"].reindex(ids)
    out["incremental_margin"] = margin * out["incremental_revenue"]
    out["cost"] = cost
    ok = cost > 0
    out["roi"] = ((out["incremental_margin"] - cost) / cost).where(ok)
    out["roi_ci_low"] = ((margin * out["incremental_revenue_ci_low"] - cost) / cost).where(ok)
    out["roi_ci_high"] = ((margin * out["incremental_revenue_ci_high"] - cost) / cost).where(ok)
    out["cost_per_incremental_conversion"] = (
        cost / out["incremental_conversions"].where(out["incremental_conversions"] > 0))
    return out.reset_index()


# --------------------------------------------------------------------------
# 4. checks
# --------------------------------------------------------------------------

def sample_ratio_check(aggregates: pd.DataFrame, campaigns: pd.DataFrame | None = None, *,
                       alpha: float = CHECKS["srm_alpha"],
                       default_share: float = CHECKS["default_treatment_share"],
                       control_from: Mapping | None = None) -> pd.DataFrame:
    """Sample-ratio mismatch: is the treatment share what was planned?

    A chi-square goodness-of-fit test (1 df) of the observed treatment and
    control counts against ``planned_treatment_share`` (``default_share``
    where the campaign does not state one). A strict ``alpha`` (0.001) is
    customary (Kohavi, Tang & Xu 2020, ch. 21): a mismatch means the
    assignment or the logging is broken, and the comparison cannot be
    trusted. Campaigns compared with another campaign's control group
    (``control_from``) are not tested: their split was not planned
    together.

    Returns
    -------
    pandas.DataFrame
        One row per campaign with a control group: ``campaign_id,
        n_treatment, n_control, observed_share, planned_share,
        planned_share_assumed, chi2, p_value, mismatch``.
    """
    tr = _contacted(aggregates)["contacts"]
    ct = aggregates[aggregates["group"] == "control"].set_index("campaign_id")["contacts"]
    planned = (campaigns.set_index("campaign_id")["planned_treatment_share"]
               if campaigns is not None and len(campaigns) else pd.Series(dtype=float))
    shared = set(dict(control_from or {}))
    rows = []
    for cid in tr.index:
        if cid not in ct.index or cid in shared:
            continue
        n_t, n_c = float(tr[cid]), float(ct[cid])
        share = planned.get(cid, np.nan)
        assumed = not (share is not None and np.isfinite(share) and 0 < share < 1)
        share = default_share if assumed else float(share)
        total = n_t + n_c
        chi2, p = stats.chisquare([n_t, n_c], f_exp=[total * share, total * (1 - share)])
        rows.append({"campaign_id": cid, "n_treatment": n_t, "n_control": n_c,
                     "observed_share": n_t / total, "planned_share": share,
                     "planned_share_assumed": assumed, "chi2": float(chi2), "p_value": float(p),
                     "mismatch": bool(p < alpha)})
    cols = ["campaign_id", "n_treatment", "n_control", "observed_share", "planned_share",
            "planned_share_assumed", "chi2", "p_value", "mismatch"]
    return pd.DataFrame(rows, columns=cols)


def _history_features(units: ir.Table, orders: ir.Table, *, keys: Sequence[str], ref: str,
                      customer_id: str, o_customer_id: str, o_date: str, o_amount: str,
                      pre_days: int, o_channel: str | None = "channel",
                      o_discount: str | None = "discount") -> ir.Table:
    """Add pre-period behaviour to ``units`` (rows with ``keys``, a customer
    id and a reference timestamp ``ref``), from the orders in the
    ``pre_days`` before ``ref``: their number and spend, the average order
    value (null without orders), days since the last order (capped at
    ``pre_days``; ``pre_days`` when none), days since the first order ever
    (0 when none) and, where orders record them, the discount share of
    list value (``discount / (amount + discount)``) and the channel most of
    them came through (``order_channel``). Orders at or after ``ref`` are
    not used."""
    k = units.select(*keys, ref).distinct()
    cols = {"_oc": orders[o_customer_id], "_od": orders[o_date].cast("timestamp"),
            "_oa": orders[o_amount].cast("float64").fill_null(0.0)}
    has_channel = bool(o_channel) and o_channel in orders.columns
    has_discount = bool(o_discount) and o_discount in orders.columns
    if has_channel:
        cols["_och"] = orders[o_channel].cast("string")
    if has_discount:
        cols["_odi"] = orders[o_discount].cast("float64").fill_null(0.0)
    o = orders.select(**cols)
    o = o.filter(o._od < k[ref].max())
    j = k.join(o, [k[customer_id] == o._oc, o._od < k[ref]])
    in_win = j._od >= (j[ref] - ibis.interval(days=int(pre_days)))
    aggs = {"_n": in_win.cast("int64").sum(),
            "_s": in_win.ifelse(j._oa, 0.0).sum(),
            "_last": j._od.max(), "_first": j._od.min()}
    if has_channel:
        aggs["_ch"] = in_win.ifelse(j._och, ibis.null()).mode()
    if has_discount:
        aggs["_di"] = in_win.ifelse(j._odi, 0.0).sum()
    h = j.group_by(list(keys)).aggregate(**aggs)
    h = h.rename({f"_k{i}": key for i, key in enumerate(keys)})
    pred = [units[key] == h[f"_k{i}"] for i, key in enumerate(keys)]
    lj = units.left_join(h, pred)
    recency = ibis.least(lj[ref].delta(lj._last, unit="day"), int(pre_days))
    extra: dict[str, Any] = {}
    if has_discount:
        gross = lj._s + lj._di
        extra["pre_discount_share"] = (gross > 0).ifelse(lj._di / gross, ibis.null())
    if has_channel:
        extra["order_channel"] = lj._ch
    return lj.select(
        *[lj[c] for c in units.columns],
        pre_orders=lj._n.fill_null(0),
        pre_spend=lj._s.fill_null(0.0),
        pre_aov=(lj._n > 0).ifelse(lj._s / lj._n, ibis.null()),
        recency_days=recency.fill_null(int(pre_days)),
        tenure_days=lj[ref].delta(lj._first, unit="day").fill_null(0),
        **extra,
    )


def _slug(value: str) -> str:
    out = "".join(ch if ch.isalnum() else "_" for ch in str(value).strip().lower())
    return "_".join(part for part in out.split("_") if part) or "other"


def _category_shares(units: ir.Table, orders: ir.Table, order_lines: ir.Table, *,
                     keys: Sequence[str], ref: str, customer_id: str, pre_days: int,
                     max_categories: int = 10, o_customer_id: str = "customer_id",
                     o_date: str = "order_date", order_id_col: str = "order_id",
                     category_col: str = "category", quantity_col: str = "quantity",
                     unit_price_col: str = "unit_price", base: ir.Table | None = None) -> ir.Table:
    """Add each unit's category mix before ``ref``: the share of its
    order-line value (quantity x unit price) in the ``pre_days`` before
    ``ref`` spent in each of the ``max_categories`` largest categories
    (columns ``cat_<category>``; null without lines). What customers buy
    tells segments apart better than how much or how often.

    ``base`` (default ``units``) is a cheaper table with the same ``keys``
    and ``ref`` to take the units from: when ``units`` carries other
    engine-side work (the history features), the engine would otherwise
    compute that work twice."""
    if category_col not in order_lines.columns:
        return units
    ol = order_lines
    value = (ol[quantity_col].cast("float64").fill_null(1.0) * ol[unit_price_col].cast("float64")
             if quantity_col in ol.columns and unit_price_col in ol.columns
             else ibis.literal(1.0))
    ol = ol.select(_oid=ol[order_id_col], _cat=ol[category_col].cast("string"), _v=value)
    top = (ol.group_by("_cat").aggregate(_tv=ol._v.sum()).order_by(ibis.desc("_tv"))
           .limit(max_categories).to_pandas()["_cat"].dropna().tolist())
    if not top:
        return units
    k = (units if base is None else base).select(*keys, ref).distinct()
    o = orders.select(_oid2=orders[order_id_col], _oc=orders[o_customer_id],
                      _od=orders[o_date].cast("timestamp"))
    # only the orders that can fall in some unit's window, of the units' customers:
    # the join with the (many more) order lines then builds on a small table
    o = o.filter(o._od < k[ref].max(), o._od >= k[ref].min() - ibis.interval(days=int(pre_days)),
                 o._oc.isin(k[customer_id]))
    lines = ol.join(o, ol._oid == o._oid2)
    j = k.join(lines, [k[customer_id] == lines._oc, lines._od < k[ref],
                       lines._od >= k[ref] - ibis.interval(days=int(pre_days))])
    names = {}
    for c in top:
        name = f"cat_{_slug(c)}"
        while name in names.values():
            name += "_"
        names[c] = name
    aggs = {"_tot": j._v.sum()}
    aggs.update({f"_c{i}": (j._cat == c).ifelse(j._v, 0.0).sum() for i, c in enumerate(top)})
    h = j.group_by(list(keys)).aggregate(**aggs)
    h = h.rename({f"_k{i}": key for i, key in enumerate(keys)})
    lj = units.left_join(h, [units[key] == h[f"_k{i}"] for i, key in enumerate(keys)])
    share = {names[c]: (lj._tot > 0).ifelse(lj[f"_c{i}"] / lj._tot, ibis.null())
             for i, c in enumerate(top)}
    return lj.select(*[lj[c] for c in units.columns], **share)


def _with_demographics(units: ir.Table, customers: ir.Table | None, *, ref: str,
                       customer_id: str, c_customer_id: str = "customer_id",
                       birth_date_col: str = "birth_date",
                       demographics: Sequence[str] = DEMOGRAPHICS) -> ir.Table:
    """Add age at ``ref`` (years) and the demographic columns present in
    ``customers`` (left join; missing = null)."""
    if customers is None:
        return units
    cols = [c for c in demographics if c in customers.columns]
    sel: dict[str, Any] = {"_dc": customers[c_customer_id]}
    sel.update({f"_d_{c}": customers[c].cast("string") for c in cols})
    if birth_date_col in customers.columns:
        bd = customers[birth_date_col]
        # typed tables hold a date; a raw text column is read where it parses
        sel["_d_birth"] = (bd.try_cast("timestamp") if bd.type().is_string()
                           else bd.cast("timestamp"))
    if len(sel) == 1:
        return units
    d = customers.select(**sel)
    lj = units.left_join(d, units[customer_id] == d._dc)
    extra: dict[str, Any] = {c: lj[f"_d_{c}"] for c in cols}
    if "_d_birth" in sel:
        extra["age"] = (lj[ref].delta(lj._d_birth, unit="day") / 365.25).round(1)
    return lj.select(*[lj[c] for c in units.columns], **extra)


def contact_features(contacts: ir.Table, campaigns: ir.Table, orders: ir.Table,
                     customers: ir.Table | None = None, *, order_lines: ir.Table | None = None,
                     pre_days: int = 365, max_categories: int = 10,
                     campaign_ids: Sequence | None = None,
                     campaign_id_col: str = "campaign_id", customer_id_col: str = "customer_id",
                     group_col: str = "group", converted_col: str = "converted",
                     revenue_col: str = "revenue", start_col: str = "start_date",
                     order_customer_id_col: str = "customer_id", date_col: str = "order_date",
                     amount_col: str = "amount") -> ir.Table:
    """Each contact with its behaviour before the campaign started (engine).

    Transforms contacts (``campaign_id, customer_id, group, converted,
    revenue``), campaigns (``campaign_id, start_date``) and orders
    (``customer_id, order_date, amount``) into one row per contact::

        campaign_id, customer_id, group (raw), converted (0/1), revenue,
        pre_orders, pre_spend     orders and spend in the pre_days before start
        pre_aov                   average order value of those orders (null if none)
        recency_days              days since the last order before start (capped)
        tenure_days               days since the first order before start
        pre_discount_share        discount / list value of those orders (if recorded)
        order_channel             most frequent channel of those orders (if recorded)
        cat_<category>            share of their line value per category (with
                                  order_lines; the max_categories largest)
        age, gender, region, acquisition_channel    where customers has them

    Only orders before the campaign's start are used, so the features are
    untouched by the campaign. Used by :func:`balance_check` (aggregated in
    the engine) and by :func:`uplift_frame` (a sample, pulled to pandas).

    Returns
    -------
    ibis.Table
    """
    c = contacts
    if campaign_ids is not None:
        c = c.filter(c[campaign_id_col].isin(list(campaign_ids)))
    conv = (_flag(c[converted_col]).cast("int8") if converted_col in c.columns
            else ibis.literal(None, type="int8"))
    rev = (c[revenue_col].cast("float64").fill_null(0.0) if revenue_col in c.columns
           else ibis.literal(None, type="float64"))
    c = c.select(campaign_id=c[campaign_id_col], customer_id=c[customer_id_col],
                 group=c[group_col].cast("string"), converted=conv, revenue=rev)
    camp = campaigns.select(_cid=campaigns[campaign_id_col],
                            _ref=campaigns[start_col].cast("timestamp"))
    u = c.join(camp, c.campaign_id == camp._cid)
    u = u.select("campaign_id", "customer_id", "group", "converted", "revenue", "_ref")
    feat = _history_features(u, orders, keys=("campaign_id", "customer_id"), ref="_ref",
                             customer_id="customer_id", o_customer_id=order_customer_id_col,
                             o_date=date_col, o_amount=amount_col, pre_days=pre_days)
    if order_lines is not None:
        feat = _category_shares(feat, orders, order_lines, keys=("campaign_id", "customer_id"),
                                ref="_ref", customer_id="customer_id", pre_days=pre_days,
                                max_categories=max_categories,
                                o_customer_id=order_customer_id_col, o_date=date_col, base=u)
    feat = _with_demographics(feat, customers, ref="_ref", customer_id="customer_id")
    return feat.drop("_ref")


def customer_features(orders: ir.Table, customers: ir.Table | None = None, *, as_of,
                      order_lines: ir.Table | None = None, pre_days: int = 365,
                      max_categories: int = 10, customer_id_col: str = "customer_id",
                      date_col: str = "order_date", amount_col: str = "amount") -> ir.Table:
    """Every customer's features as of a date, for scoring the next campaign.

    The same features as :func:`contact_features` (pre-period behaviour,
    category mix with ``order_lines``, demographics), measured before the
    end of ``as_of`` -- pass the same ``order_lines``, ``pre_days`` and
    ``max_categories`` as for the contacts the models learned from. Customers are those of ``customers`` when given, else
    every customer with an order.

    Returns
    -------
    ibis.Table
        One row per customer: ``customer_id`` and the features.
    """
    ref = pd.Timestamp(as_of).normalize() + pd.Timedelta(days=1)
    if customers is not None:
        base = customers.select(customer_id=customers[customer_id_col]).distinct()
    else:
        base = orders.select(customer_id=orders[customer_id_col]).distinct()
    base = base.mutate(_ref=ibis.literal(ref.to_pydatetime(), type="timestamp"))
    feat = _history_features(base, orders, keys=("customer_id",), ref="_ref",
                             customer_id="customer_id", o_customer_id=customer_id_col,
                             o_date=date_col, o_amount=amount_col, pre_days=pre_days)
    if order_lines is not None:
        feat = _category_shares(feat, orders, order_lines, keys=("customer_id",), ref="_ref",
                                customer_id="customer_id", pre_days=pre_days,
                                max_categories=max_categories, o_customer_id=customer_id_col,
                                o_date=date_col, base=base)
    feat = _with_demographics(feat, customers, ref="_ref", customer_id="customer_id",
                              c_customer_id=customer_id_col)
    return feat.drop("_ref")


def balance_check(features: ir.Table, *, covariates: Mapping[str, str] = BALANCE_COVARIATES,
                  threshold: float = CHECKS["smd_threshold"],
                  alpha: float = CHECKS["balance_alpha"],
                  control_from: Mapping | None = None) -> pd.DataFrame:
    """Balance of pre-campaign covariates between treatment and control.

    For each campaign and covariate the standardised mean difference
    ``SMD = (mean_t - mean_c) / sqrt((var_t + var_c) / 2)`` (Austin 2009,
    eq. 1); ``|SMD| > threshold`` (0.1 by convention) is flagged. In a
    randomised campaign a small group is imbalanced by chance now and then,
    so each difference also gets Welch's p-value, Holm-adjusted across all
    the campaigns and covariates checked (``p_adjusted``: with 13 campaigns
    and 4 covariates, 52 tests at 0.001 would raise a false alarm about one
    report in twenty): ``beyond_chance`` (adjusted p < ``alpha``, strict
    like the sample-ratio check) says the split itself is suspect, not just
    unlucky. Means and variances come from sums and sums of squares
    computed in the engine on the table of :func:`contact_features`.

    Returns
    -------
    pandas.DataFrame
        One row per campaign and covariate: ``campaign_id, covariate,
        label, mean_treatment, mean_control, smd, p_value, p_adjusted,
        imbalanced, beyond_chance``.
    """
    cols = ["campaign_id", "covariate", "label", "mean_treatment", "mean_control", "smd",
            "p_value", "p_adjusted", "imbalanced", "beyond_chance"]
    covs = [c for c in covariates if c in features.columns]
    aggs: dict[str, Any] = {"n": features.count()}
    for c in covs:
        x = features[c].cast("float64")
        aggs[f"s__{c}"] = x.sum()
        aggs[f"q__{c}"] = (x * x).sum()
    df = features.group_by(["campaign_id", "group"]).aggregate(**aggs).to_pandas()
    df["group"] = _normalise_group(df["group"])
    df.loc[df["group"] == "other", "group"] = "treatment"
    num = [c for c in df.columns if c not in ("campaign_id", "group")]
    df[num] = df[num].astype(float)
    df = df.groupby(["campaign_id", "group"], as_index=False)[num].sum()
    t = df[df.group == "treatment"].set_index("campaign_id")
    c = df[df.group == "control"].set_index("campaign_id")
    control_from = dict(control_from or {})
    rows = []
    for cid in t.index:
        src = control_from.get(cid, cid)
        if src not in c.index:
            continue
        for cov in covs:
            stats_ = []
            for side in (t.loc[cid], c.loc[src]):
                n, sm, sq = side["n"], side[f"s__{cov}"], side[f"q__{cov}"]
                mean = sm / n if n else np.nan
                var = max(sq - n * mean ** 2, 0.0) / (n - 1) if n > 1 else np.nan
                stats_.append((mean, var, n))
            (m1, v1, n1), (m2, v2, n2) = stats_
            pooled = math.sqrt((v1 + v2) / 2) if np.isfinite(v1 + v2) else np.nan
            smd = (m1 - m2) / pooled if pooled and pooled > 0 else (0.0 if m1 == m2 else np.inf)
            p = float(welch_test(m1, v1, n1, m2, v2, n2)["p_value"]) if pooled > 0 else 1.0
            rows.append({"campaign_id": cid, "covariate": cov, "label": covariates[cov],
                         "mean_treatment": m1, "mean_control": m2, "smd": smd, "p_value": p,
                         "imbalanced": bool(abs(smd) > threshold)})
    out = pd.DataFrame(rows, columns=[c for c in cols if c not in ("p_adjusted", "beyond_chance")])
    out["p_adjusted"] = adjust_pvalues(out["p_value"].to_numpy(float), "holm") if len(out) else []
    out["beyond_chance"] = out["imbalanced"].astype(bool) & (out["p_adjusted"] < alpha)
    return out[cols]


def check_warnings(srm: pd.DataFrame, balance: pd.DataFrame, *,
                   threshold: float = CHECKS["smd_threshold"],
                   alpha: float = CHECKS["srm_alpha"], chance: bool = True) -> list[str]:
    """Plain-language warnings for the campaigns that fail a check (empty
    when every check passes). Each names the campaign, the check and the
    numbers, and says what it means for the reader. ``chance=False`` leaves
    out imbalances within what a random split produces (small campaigns
    show them often; they call for caution, not alarm)."""
    out = []
    for _, r in srm[srm["mismatch"]].iterrows():
        out.append(
            f"Sample-ratio mismatch in campaign {r.campaign_id}: {_fmt_pct(r.observed_share)} of "
            f"its contacts are in the treatment group against a planned "
            f"{_fmt_pct(r.planned_share, 0)}{' (assumed)' if r.planned_share_assumed else ''} "
            f"({_fmt_p(r.p_value)}, threshold {alpha:g}). The assignment or the data capture is "
            f"probably broken, so its treatment-control comparison should not be trusted until "
            f"the cause is found.")
    if len(balance):
        bad = balance[balance["imbalanced"].astype(bool)]
        if not chance:
            bad = bad[bad.campaign_id.isin(bad.loc[bad["beyond_chance"].astype(bool), "campaign_id"])]
        for cid, g in bad.groupby("campaign_id", sort=True):
            parts = ", ".join(
                f"{r.label} (SMD {r.smd:+.2f}, {_fmt_p(r.p_value)}"
                + (f", {_fmt_p(r.p_adjusted)} after adjusting for the {len(balance)} checks"
                   if "p_adjusted" in g and np.isfinite(r.p_adjusted) else "") + ")"
                for _, r in g.iterrows())
            head = (f"Covariate imbalance in campaign {cid}: treatment and control differed "
                    f"before the campaign in {parts}, beyond the {threshold:g} threshold. ")
            if g["beyond_chance"].any():
                out.append(head + "A difference this large is very unlikely from a random split, "
                           "so the assignment was probably not random; part of the measured "
                           "uplift may be a difference that already existed.")
            else:
                out.append(head + "Random splits of groups this small differ this much now and "
                           "then, so the comparison is still fair on average, but this one "
                           "result may be pushed up or down by the head start; read its "
                           "interval, not its point estimate.")
    return out


# --------------------------------------------------------------------------
# 5. campaigns without a control group
# --------------------------------------------------------------------------

def customer_windows(orders: ir.Table, *, start, window_days: int, pre_days: int = 365,
                     customer_id_col: str = "customer_id", date_col: str = "order_date",
                     amount_col: str = "amount") -> ir.Table:
    """Per-customer orders in three windows around a start date (engine).

    With ``s`` = start and ``L`` = window_days, transforms orders into one
    row per customer who ordered before ``s + L``::

        orders_m2, revenue_m2     in [s - 2L, s - L)    placebo "before"
        orders_m1, revenue_m1     in [s - L, s)          before
        orders_0,  revenue_0      in [s, s + L)          after
        f_orders, f_spend, f_recency, f_tenure   behaviour measured at s - 2L
                                  (pre_days window; recency capped)
        f_history                 1 if the customer ordered before s - 2L

    The matching features are measured before all three windows. Matching
    on a window that is then used as a "before" period would bias the
    comparison by regression to the mean (customers matched on a noisy
    count differ in their true rate), so neither the estimate (m1 -> 0) nor
    the placebo (m2 -> m1) uses a window the matching has seen.
    """
    s = pd.Timestamp(start)
    L = pd.Timedelta(days=int(window_days))
    b0, b1, b2, b3 = (ibis.literal((s + k * L).to_pydatetime(), type="timestamp")
                      for k in (-2, -1, 0, 1))
    f0 = ibis.literal((s - 2 * L - pd.Timedelta(days=int(pre_days))).to_pydatetime(),
                      type="timestamp")
    o = orders.select(_c=orders[customer_id_col], _d=orders[date_col].cast("timestamp"),
                      _a=orders[amount_col].cast("float64").fill_null(0.0))
    o = o.filter(o._d < b3)

    def inside(lo, hi):
        return (o._d >= lo) & (o._d < hi)

    agg = o.group_by("_c").aggregate(
        orders_m2=inside(b0, b1).cast("int64").sum(),
        revenue_m2=inside(b0, b1).ifelse(o._a, 0.0).sum(),
        orders_m1=inside(b1, b2).cast("int64").sum(),
        revenue_m1=inside(b1, b2).ifelse(o._a, 0.0).sum(),
        orders_0=inside(b2, b3).cast("int64").sum(),
        revenue_0=inside(b2, b3).ifelse(o._a, 0.0).sum(),
        f_orders=inside(f0, b0).cast("int64").sum(),
        f_spend=inside(f0, b0).ifelse(o._a, 0.0).sum(),
        _last=(o._d < b0).ifelse(o._d, ibis.null()).max(),
        _first=(o._d < b0).ifelse(o._d, ibis.null()).min(),
    )
    cap = int(pre_days)
    return agg.select(
        customer_id=agg._c,
        orders_m2=agg.orders_m2, revenue_m2=agg.revenue_m2,
        orders_m1=agg.orders_m1, revenue_m1=agg.revenue_m1,
        orders_0=agg.orders_0, revenue_0=agg.revenue_0,
        f_orders=agg.f_orders, f_spend=agg.f_spend,
        f_recency=ibis.least(b0.delta(agg._last, unit="day"), cap).fill_null(cap),
        f_tenure=b0.delta(agg._first, unit="day").fill_null(0),
        f_history=agg._first.notnull().cast("int8"),
    )


DID_FEATURES = ("f_orders", "f_spend", "f_recency", "f_tenure")

# what the placebo check says about parallel trends
TREND_VERDICTS: dict[str, str] = {
    "doubtful": "the placebo differs from zero: the groups were already drifting apart",
    "fragile": "the placebo is not clearly different from zero but as large as a sizeable "
               "part of the effect",
    "plausible": "the placebo is close to zero",
}


def _trend_verdict(effect: float, placebo: float, lo: float, hi: float) -> str:
    if not lo <= 0 <= hi:
        return "doubtful"
    if abs(placebo) > CHECKS["placebo_ratio"] * abs(effect):
        return "fragile"
    return "plausible"


def did_estimate(panel: pd.DataFrame, *, treated_col: str = "treated",
                 outcomes: Sequence[str] = ("orders", "revenue"),
                 features: Sequence[str] = DID_FEATURES, n_neighbors: int = 5,
                 exact: Sequence[str] = (), alpha: float = 0.05,
                 max_pool: int | None = 200_000, max_treated: int | None = None,
                 seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """Matched difference-in-differences with a placebo check.

    Each treated customer is matched (with replacement) to its
    ``n_neighbors`` nearest untreated customers on standardised
    pre-period ``features`` (``log1p`` of counts and spend), measured
    before all three windows (see :func:`customer_windows`), and exactly
    on the ``exact`` columns (e.g. country, whose holidays move orders) where
    the stratum has at least ``n_neighbors`` candidates. For outcome
    ``y`` the change ``d = y_0 - y_m1`` (after minus before) of the treated
    customer is compared with the mean change of its matches::

        effect  = mean_i [ d_i - mean_{j in match(i)} d_j ]

    with a t interval. Its standard error is the larger of the spread of
    the paired differences and a variance that counts re-used controls
    (Abadie & Imbens 2006: the conditional variance, estimated within the
    matched sets, times ``1/n + sum_j w_j^2`` with ``w_j`` a control's share
    of all matches) -- the pairs alone would be too narrow when few
    controls serve many treated customers. The
    placebo does the same with ``y_m1 - y_m2``, two periods that both lie
    before the campaign: under parallel trends it is zero.

    Parameters
    ----------
    panel : pandas.DataFrame
        One row per customer: ``treated`` (bool), ``<outcome>_m2,
        <outcome>_m1, <outcome>_0`` per outcome, and the ``features`` (the
        frame of :func:`customer_windows` plus a treated flag).
    n_neighbors, alpha, seed
    exact : sequence of str
        Columns to match exactly on (missing values form their own stratum).
    max_pool : int, optional
        Untreated customers sampled (seeded) to match from.
    max_treated : int, optional
        Treated customers sampled (seeded) for the estimate; the incremental
        totals are still scaled to every treated customer.

    Returns
    -------
    pandas.DataFrame
        One row per outcome: ``outcome, n_treated, n_matched`` (treated
        customers used), ``n_controls, treated_earlier, control_earlier``
        (means in the placebo's first period), ``treated_before,
        treated_after, control_before, control_after, effect, ci_low,
        ci_high, p_value, incremental_total, incremental_ci_low,
        incremental_ci_high, placebo, placebo_ci_low, placebo_ci_high,
        placebo_p_value, parallel_trends, max_abs_smd_matched``.
        ``parallel_trends`` is a key of ``TREND_VERDICTS``: ``doubtful``
        (placebo interval excludes zero), ``fragile`` (it does not, but the
        placebo exceeds ``CHECKS["placebo_ratio"]`` of the effect) or
        ``plausible``.
    """
    from sklearn.neighbors import NearestNeighbors

    treated = panel[treated_col].astype(bool).to_numpy()
    if treated.sum() == 0 or (~treated).sum() == 0:
        raise NoDataError("a matched comparison needs treated and untreated customers")
    rng = np.random.default_rng(seed)
    pool_idx = np.flatnonzero(~treated)
    if max_pool and len(pool_idx) > max_pool:
        pool_idx = np.sort(rng.choice(pool_idx, size=max_pool, replace=False))
    t_idx = np.flatnonzero(treated)
    n_all_treated = len(t_idx)
    if max_treated and len(t_idx) > max_treated:
        t_idx = np.sort(rng.choice(t_idx, size=max_treated, replace=False))
    X = panel[list(features)].to_numpy(float).copy()
    for j, f in enumerate(features):
        if f in ("f_orders", "f_spend"):
            X[:, j] = np.log1p(np.maximum(X[:, j], 0))
    mu = X[np.r_[t_idx, pool_idx]].mean(axis=0)
    sd = X[np.r_[t_idx, pool_idx]].std(axis=0)
    sd[sd == 0] = 1.0
    Z = (X - mu) / sd
    # break exact ties (e.g. every customer without history) at random, so tied
    # treated customers do not all share the same few controls
    Z = Z + rng.normal(scale=1e-6, size=Z.shape)
    k = int(min(n_neighbors, len(pool_idx)))
    exact = [c for c in exact if c in panel.columns]
    if exact:
        cols = [panel[c].astype(object).where(panel[c].notna(), "<missing>").astype(str)
                for c in exact]
        strata = cols[0].str.cat(cols[1:], sep="|").to_numpy() if len(cols) > 1 else cols[0].to_numpy()
    else:
        strata = np.zeros(len(panel), dtype=object)
    matches = np.empty((len(t_idx), k), dtype=np.int64)
    todo = np.ones(len(t_idx), dtype=bool)
    for value in np.unique(strata[t_idx]) if exact else []:
        cand = pool_idx[strata[pool_idx] == value]
        rows_ = np.flatnonzero(strata[t_idx] == value)
        if len(cand) < k:
            continue                              # too few look-alikes: matched below
        pos = NearestNeighbors(n_neighbors=k).fit(Z[cand]).kneighbors(Z[t_idx[rows_]])[1]
        matches[rows_] = cand[pos]
        todo[rows_] = False
    if todo.any():
        pos = NearestNeighbors(n_neighbors=k).fit(Z[pool_idx]).kneighbors(Z[t_idx[todo]])[1]
        matches[todo] = pool_idx[pos]              # (n_treated, k)

    # balance after matching, on the raw features
    smd = []
    for j in range(X.shape[1]):
        a, b = X[t_idx, j], X[matches.ravel(), j]
        pooled = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2) if len(a) > 1 else 0.0
        smd.append(abs(a.mean() - b.mean()) / pooled if pooled > 0 else 0.0)
    max_smd = float(max(smd)) if smd else float("nan")

    n = len(t_idx)
    q = stats.t.ppf(1 - alpha / 2, max(n - 1, 1))
    # controls used by several treated customers weigh more: sum of squared weights
    used = np.bincount(matches.ravel())
    sum_w2 = float(np.sum(used.astype(float) ** 2) / (n * k) ** 2)

    def paired(change: np.ndarray):
        d = change[t_idx] - change[matches].mean(axis=1)
        est = float(d.mean())
        se_pairs = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
        # Abadie & Imbens (2006)-style: conditional variance from the spread
        # within each matched set, counted once per treated customer and once
        # per (re-used) control
        sigma2 = float(np.mean(change[matches].var(axis=1, ddof=1))) if k > 1 else 0.0
        se_reuse = math.sqrt(sigma2 / n + sigma2 * sum_w2)
        se = max(se_pairs, se_reuse)
        if se > 0:
            p = float(2 * stats.t.sf(abs(est / se), max(n - 1, 1)))
        else:
            p = 1.0 if est == 0 else 0.0
        return est, est - q * se, est + q * se, p

    rows = []
    for y in outcomes:
        m2, m1, y0 = (panel[f"{y}_{s}"].to_numpy(float) for s in ("m2", "m1", "0"))
        eff, lo, hi, p = paired(y0 - m1)
        pl, pl_lo, pl_hi, pl_p = paired(m1 - m2)
        rows.append({
            "outcome": y, "n_treated": n_all_treated, "n_matched": n,
            "n_controls": int(len(np.unique(matches))),
            "treated_earlier": float(m2[t_idx].mean()), "control_earlier": float(m2[matches].mean()),
            "treated_before": float(m1[t_idx].mean()), "treated_after": float(y0[t_idx].mean()),
            "control_before": float(m1[matches].mean()), "control_after": float(y0[matches].mean()),
            "effect": eff, "ci_low": lo, "ci_high": hi, "p_value": p,
            "incremental_total": eff * n_all_treated, "incremental_ci_low": lo * n_all_treated,
            "incremental_ci_high": hi * n_all_treated,
            "placebo": pl, "placebo_ci_low": pl_lo, "placebo_ci_high": pl_hi,
            "placebo_p_value": pl_p,
            "parallel_trends": _trend_verdict(eff, pl, pl_lo, pl_hi),
            "max_abs_smd_matched": max_smd,
        })
    return pd.DataFrame(rows)


def interrupted_time_series(series: pd.Series, start, *, alpha: float = 0.05,
                            hac_lags: int = 7) -> dict:
    """Segmented regression of a daily series around ``start`` (Wagner et
    al. 2002): ``y = b0 + b1 t + b2 after + b3 (t - t0) after + e`` by OLS
    with Newey-West (HAC) standard errors. The campaign's effect is the
    difference between the fitted series and the extrapolated pre-trend,
    summed over the days after ``start``.

    Parameters
    ----------
    series : pandas.Series
        Daily values (e.g. orders of the contacted customers) indexed by
        date, covering days before and after ``start``.

    Returns
    -------
    dict
        ``level_change, level_ci_low, level_ci_high, level_p_value,
        slope_change, incremental_total, incremental_ci_low,
        incremental_ci_high, n_before, n_after``.
    """
    from statsmodels.regression.linear_model import OLS  # not statsmodels.api: a second of imports

    s = series.sort_index().astype(float)
    idx = pd.to_datetime(s.index)
    t = np.asarray((idx - idx[0]).days, dtype=float)
    t0 = float((pd.Timestamp(start) - idx[0]).days)
    after = (t >= t0).astype(float)
    if after.sum() < 2 or (1 - after).sum() < 3:
        raise NoDataError("an interrupted time series needs days before and after the start")
    X = np.column_stack([np.ones_like(t), t, after, (t - t0) * after])
    fit = OLS(s.to_numpy(), X).fit(cov_type="HAC", cov_kwds={"maxlags": hac_lags})
    ci = fit.conf_int(alpha=alpha)
    post = after == 1
    # incremental total = sum over post days of b2 + b3 (t - t0): a linear combination
    w = np.array([0.0, 0.0, post.sum(), ((t - t0) * after).sum()])
    est = float(w @ fit.params)
    se = float(math.sqrt(w @ fit.cov_params() @ w))
    z = stats.norm.ppf(1 - alpha / 2)
    return {
        "level_change": float(fit.params[2]), "level_ci_low": float(ci[2, 0]),
        "level_ci_high": float(ci[2, 1]), "level_p_value": float(fit.pvalues[2]),
        "slope_change": float(fit.params[3]),
        "incremental_total": est, "incremental_ci_low": est - z * se,
        "incremental_ci_high": est + z * se,
        "n_before": int((1 - after).sum()), "n_after": int(after.sum()),
    }


def quasi_experiment(campaign_id, contacts: ir.Table, campaigns: pd.DataFrame, orders: ir.Table,
                     customers: ir.Table | None = None, *, as_of=None,
                     window_days: int | None = None, attribution_days: int = 14,
                     pre_days: int = 365, n_neighbors: int = 5, max_pool: int = 50_000,
                     max_treated: int | None = 25_000, exact: Sequence[str] = ("country",),
                     min_pool: int = int(CHECKS["min_pool"]), alpha: float = 0.05,
                     seed: int = DEFAULT_SEED, n_customers: int | None = None,
                     campaign_id_col: str = "campaign_id",
                     customer_id_col: str = "customer_id", group_col: str = "group",
                     date_col: str = "order_date", amount_col: str = "amount") -> dict:
    """A clearly labelled quasi-experimental estimate for a campaign without
    a control group.

    The window ``L`` is the campaign's length plus ``attribution_days``
    (or ``window_days``), shortened if the data ends earlier (at the end of
    the snapshot date, :func:`crmlab.engine.snapshot_date`: ``as_of``, else
    the newest order). The
    contacted customers are compared with matched customers who were not
    contacted -- neither by this campaign nor as treatment of another
    campaign running in ``[start - 2L, start + L)`` -- by
    :func:`did_estimate` -- both limited to customers who had ordered before
    ``start - 2L`` -- exactly matched on the ``exact`` columns of
    ``customers`` that exist. About ``max_pool`` candidates (a deterministic
    hash sample of all customers at the rate ``max_pool / n_customers``,
    taken in the engine before any join, so only the sampled customers'
    orders are aggregated) and at most ``max_treated`` contacted customers
    (seeded sample) enter the matching. With fewer than ``min_pool``
    candidates, the fallback is :func:`interrupted_time_series` on the
    contacted customers' daily orders. ``n_customers`` saves a query when
    the caller knows it.

    Returns
    -------
    dict
        ``campaign_id, design ("did" | "its"), label, assumption,
        window_days, table`` (pandas frame: the rows of
        :func:`did_estimate`, or one row of the ITS result), ``notes``.
    """
    info = campaigns.set_index("campaign_id")
    if campaign_id not in info.index or pd.isna(info.loc[campaign_id, "start_date"]):
        raise DataContractError("a quasi-experiment needs the campaign's start date",
                                table="campaigns", column="start_date", check="present")
    start = pd.Timestamp(info.loc[campaign_id, "start_date"])
    end = info.loc[campaign_id, "end_date"]
    length = (pd.Timestamp(end) - start).days + 1 if pd.notna(end) else 1
    L = int(window_days or max(length, 1) + attribution_days)
    notes = []
    limit = pd.Timestamp(engine.snapshot_date(orders, as_of, date_col=date_col)) + pd.Timedelta(days=1)
    if start + pd.Timedelta(days=L) > limit:
        L_new = int((limit - start).days)
        if L_new < 7:
            raise NoDataError(f"campaign {campaign_id}: fewer than 7 days of orders after its start")
        notes.append(f"The comparison window was shortened from {L} to {L_new} days because the "
                     f"data ends earlier.")
        L = L_new
    c = contacts
    treated_ids = c.filter(c[campaign_id_col] == campaign_id).select(
        customer_id=c[customer_id_col]).distinct()
    # customers treated by another campaign running around this one are not clean controls
    camp_t = ibis.memtable(campaigns[["campaign_id", "start_date", "end_date"]].rename(
        columns={"campaign_id": "_cid"}).assign(
        end_date=lambda d: d.end_date.fillna(d.start_date)))
    lo, hi = start - 2 * pd.Timedelta(days=L), start + pd.Timedelta(days=L)
    overl = camp_t.filter((camp_t._cid != campaign_id) & (camp_t.start_date < hi)
                          & (camp_t.end_date >= lo))
    other = c.join(overl, c[campaign_id_col] == overl._cid)
    grp = other[group_col].cast("string").strip().lower()
    other = other.filter(~grp.isin([k for k, v in GROUP_VALUES.items() if v == "control"]))
    exposed = other.select(_xc=other[customer_id_col]).distinct()
    # the panel is assembled and sampled in the engine: every contacted customer,
    # and about max_pool of the others (a deterministic hash sample, taken first)
    exact = [c for c in exact if customers is not None and c in customers.columns]
    if customers is not None:
        base = customers.select(customer_id=customers[customer_id_col],
                                **{c: customers[c].cast("string") for c in exact}).distinct()
    else:
        base = orders.select(customer_id=orders[customer_id_col]).union(treated_ids).distinct()
    if max_pool:
        n_base = int(base.count().execute()) if n_customers is None else int(n_customers)
        if n_base > max_pool:
            bucket = (base.customer_id.cast("string").hash() % 1_000_000).abs()
            base = base.filter(base.customer_id.isin(treated_ids.customer_id)
                               | (bucket < int(1_000_000 * max_pool / n_base)))
    mine = orders.filter(orders[customer_id_col].isin(base.customer_id))
    win = customer_windows(mine, start=start, window_days=L, pre_days=pre_days,
                           customer_id_col=customer_id_col, date_col=date_col,
                           amount_col=amount_col)
    tr = treated_ids.select(_tc=treated_ids.customer_id)
    base = base.left_join(tr, base.customer_id == tr._tc)
    base = base.left_join(exposed, base.customer_id == exposed._xc)
    base = base.select(customer_id=base.customer_id, *[base[c] for c in exact],
                       treated=base._tc.notnull(), _exposed=base._xc.notnull())
    base = base.filter(base.treated | ~base._exposed)
    panel = base.left_join(win, base.customer_id == win.customer_id).select(
        base.customer_id, base.treated, *[base[c] for c in exact],
        *[win[k] for k in win.columns if k != "customer_id"])
    panel = panel.to_pandas()
    fill = {k: 0.0 for k in panel.columns if k not in ("customer_id", "treated", *exact)}
    fill["f_recency"] = float(pre_days)
    panel = panel.fillna(fill)
    panel[list(fill)] = panel[list(fill)].astype(float)
    panel["treated"] = panel["treated"].astype(bool)
    ids = panel.loc[panel.treated, "customer_id"]
    # only customers who had ordered before the matching date: a customer's
    # first (acquisition) order inside the windows would look like a trend
    new = int((panel.treated & (panel.f_history == 0)).sum())
    if new:
        notes.append(f"{new} of {len(ids)} contacted customers had not ordered before "
                     f"{(start - 2 * pd.Timedelta(days=L)).date()} and are left out of the "
                     f"matched comparison (their first order would look like a trend).")
    panel = panel[panel.f_history == 1].reset_index(drop=True)
    pool = panel[~panel.treated]
    if len(pool) >= min_pool and panel.treated.sum() >= 10:
        table = did_estimate(panel, n_neighbors=n_neighbors, exact=exact, alpha=alpha,
                             max_pool=max_pool, max_treated=max_treated, seed=seed)
        design = "did"
    else:
        notes.append(f"Only {len(pool)} customers were not contacted around this campaign, too few "
                     f"to match; an interrupted time series is used instead.")
        o = orders
        span_lo = start - pd.Timedelta(days=max(4 * L, 56))
        o = o.filter((o[date_col] >= span_lo.to_pydatetime())
                     & (o[date_col] < (start + pd.Timedelta(days=L)).to_pydatetime()))
        o = o.filter(o[customer_id_col].isin(treated_ids.customer_id))
        daily = o.group_by(_day=o[date_col].cast("timestamp").truncate("D")).aggregate(
            orders=o.count()).to_pandas()
        days = pd.date_range(span_lo.normalize(), (start + pd.Timedelta(days=L - 1)).normalize())
        series = daily.set_index("_day")["orders"].reindex(days, fill_value=0)
        res = interrupted_time_series(series, start, alpha=alpha)
        table = pd.DataFrame([{"outcome": "orders", "n_treated": len(ids), **res}])
        design = "its"
    return {"campaign_id": campaign_id, "design": design, "label": QUASI_DESIGNS[design]["label"],
            "assumption": QUASI_DESIGNS[design]["assumption"], "window_days": L,
            "table": table, "notes": notes}


# --------------------------------------------------------------------------
# 6. power
# --------------------------------------------------------------------------

def _h_to_p2(h: float, p1: float) -> float:
    """Invert Cohen's h = 2 asin(sqrt(p2)) - 2 asin(sqrt(p1)) for p2."""
    return float(np.sin(np.clip(np.arcsin(np.sqrt(p1)) + h / 2, 0, np.pi / 2)) ** 2)


def minimum_detectable_effect(n_treatment: float, n_control: float, baseline: float, *,
                              alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest rise in conversion (absolute, in proportion points) a
    two-sided test at ``alpha`` detects with probability ``power``, given
    the group sizes and the control conversion rate ``baseline``.

    Solved on Cohen's (1988, ch. 6) arcsine effect size h with statsmodels
    ``NormalIndPower`` and mapped back to a proportion.

    Examples
    --------
    >>> round(minimum_detectable_effect(392, 392, 0.5), 2)  # h = 0.2 (Cohen's table)
    0.1
    """
    if n_treatment <= 0 or n_control <= 0 or not 0 < baseline < 1:
        return float("nan")
    h = NormalIndPower().solve_power(effect_size=None, nobs1=float(n_treatment), alpha=alpha,
                                     power=power, ratio=float(n_control) / float(n_treatment),
                                     alternative="two-sided")
    return _h_to_p2(float(np.squeeze(h)), baseline) - baseline


def sample_size(baseline: float, uplift: float, *, relative: bool = False, alpha: float = 0.05,
                power: float = 0.8, ratio: float = 1.0) -> int:
    """Treatment-group size needed to detect a rise in conversion from
    ``baseline`` by ``uplift`` (absolute points, or a share of baseline with
    ``relative=True``); the control group is ``ratio`` times as large.
    Cohen's h with statsmodels ``NormalIndPower``, rounded up.

    Examples
    --------
    Cohen (1988, Table 6.4.1): h = 0.20 at alpha 0.05 (two-sided) and power
    0.80 needs 392 per group; 0.50 -> 0.60 is h = 0.2014.

    >>> sample_size(0.5, 0.1)
    388
    """
    from statsmodels.stats.proportion import proportion_effectsize

    target = baseline * (1 + uplift) if relative else baseline + uplift
    if not (0 < baseline < 1 and 0 < target < 1) or target == baseline:
        raise ParameterError(f"baseline and baseline + uplift must be distinct proportions in (0, 1); "
                             f"got {baseline} and {target}")
    h = abs(proportion_effectsize(target, baseline))
    n = NormalIndPower().solve_power(effect_size=h, nobs1=None, alpha=alpha, power=power,
                                     ratio=ratio, alternative="two-sided")
    return int(math.ceil(float(np.squeeze(n)) - 1e-9))


def power_table(comparison: pd.DataFrame, *, alpha: float = 0.05, power: float = 0.8,
                target_uplift: float = 0.02, relative: bool = False) -> pd.DataFrame:
    """Power of each campaign's conversion comparison.

    Parameters
    ----------
    comparison : from :func:`compare_groups`
    alpha, power : the test's level and the wanted power
    target_uplift : float
        The uplift to plan for: absolute conversion points (0.02 = from 5%
        to 7%), or a share of each campaign's baseline with ``relative=True``.

    Returns
    -------
    pandas.DataFrame
        One row per campaign: ``campaign_id, n_treatment, n_control,
        baseline`` (control conversion), ``mde`` (absolute points),
        ``mde_relative`` (share of baseline), ``observed_uplift``,
        ``target_uplift`` (as given), ``n_needed_treatment`` and
        ``n_needed_control`` for that target with the campaign's split,
        ``powered`` (the run was big enough for the target).
    """
    conv = comparison[comparison.metric == "conversion"]
    rows = []
    for _, r in conv.iterrows():
        base = float(r.control)
        mde = minimum_detectable_effect(r.n_treatment, r.n_control, base, alpha=alpha, power=power)
        ratio = r.n_control / r.n_treatment if r.n_treatment else 1.0
        try:
            need = sample_size(base, target_uplift, relative=relative, alpha=alpha, power=power,
                               ratio=ratio)
        except ParameterError:
            need = np.nan
        rows.append({
            "campaign_id": r.campaign_id, "n_treatment": r.n_treatment, "n_control": r.n_control,
            "baseline": base, "mde": mde, "mde_relative": mde / base if base > 0 else np.nan,
            "observed_uplift": r.uplift, "target_uplift": target_uplift,
            "n_needed_treatment": need,
            "n_needed_control": math.ceil(need * ratio) if np.isfinite(need) else np.nan,
            "powered": bool(np.isfinite(need) and r.n_treatment >= need
                            and r.n_control >= math.ceil(need * ratio)),
        })
    cols = ["campaign_id", "n_treatment", "n_control", "baseline", "mde", "mde_relative",
            "observed_uplift", "target_uplift", "n_needed_treatment", "n_needed_control",
            "powered"]
    return pd.DataFrame(rows, columns=cols)


# --------------------------------------------------------------------------
# 7. uplift modelling
# --------------------------------------------------------------------------

@dataclasses.dataclass
class UpliftResult:
    """One campaign's uplift model and its held-out evaluation.

    ``model`` is a :class:`crmlab.uplift.UpliftModel` trained on ``n_train``
    of the campaign's contacts (``None`` when the campaign had too few
    conversions; ``note`` says why). Everything else judges that same model
    on ``n_test`` other contacts it never saw: ``qini`` (Radcliffe's Q),
    ``qini_p_value`` and ``null_95`` (the randomisation test: the p-value
    and the 95th percentile of Q when the model knows nothing), ``curve``
    (the Qini curve), ``uplift_curve``, ``segments`` (bins of predicted
    uplift with the observed uplift and a verdict) and ``profile`` (what the
    held-out customers of each verdict look like). The model that is judged
    is the one that scores the targeting list.
    """

    campaign_id: Any
    model: Any
    features: list
    n_train: int
    n_test: int
    qini: float
    qini_p_value: float
    curve: pd.DataFrame
    segments: pd.DataFrame
    note: str = ""
    null_95: float = float("nan")
    uplift_curve: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)
    profile: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)

    @property
    def fitted(self) -> bool:
        return self.model is not None

    @property
    def better_than_random(self) -> bool:
        """The Qini coefficient is positive and the randomisation test's
        p-value below 0.05."""
        return bool(self.fitted and np.isfinite(self.qini_p_value) and self.qini > 0
                    and self.qini_p_value < 0.05)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Predicted uplift per row of ``X`` (which has the ``features``)."""
        return self.model.predict(X[self.features])


# features described in the profile of the uplift segments: column -> (label, format)
PROFILE_FEATURES: dict[str, tuple[str, str]] = {
    "pre_aov": ("Average order value before", "{:,.0f}"),
    "pre_orders": ("Orders in the year before", "{:,.1f}"),
    "recency_days": ("Days since last order", "{:,.0f}"),
    "pre_discount_share": ("Discount share", "{:.0%}"),
    "age": ("Age", "{:,.0f}"),
}


def sample_contacts(contacts: ir.Table, sizes: Mapping, max_rows: int | None, *,
                    campaign_id_col: str = "campaign_id",
                    customer_id_col: str = "customer_id") -> ir.Table:
    """At most about ``max_rows`` contacts per campaign, in the engine.

    ``sizes`` maps each campaign to its number of contacts (from
    :func:`contact_aggregates`); a campaign with more keeps the contacts
    whose customer id hashes below the rate ``max_rows / size`` -- a
    deterministic sample, the same customers on every run and in every
    campaign (two campaigns sharing a control group keep the same control
    customers). Campaigns not in ``sizes`` or within ``max_rows`` are kept
    whole; ``max_rows=None`` keeps everything. Same columns.
    """
    big = {cid: n for cid, n in sizes.items() if max_rows and n > max_rows}
    if not big:
        return contacts
    bucket = (contacts[customer_id_col].cast("string").hash() % 1_000_000).abs()
    cond = ~contacts[campaign_id_col].isin(list(big))
    for cid, n in big.items():
        cond = cond | ((contacts[campaign_id_col] == cid)
                       & (bucket < int(1_000_000 * max_rows / n)))
    return contacts.filter(cond)


def uplift_frame(features: ir.Table, campaign_ids: Sequence, *,
                 max_rows_per_campaign: int = 200_000) -> pd.DataFrame:
    """Pull the contact features of some campaigns to pandas for the uplift
    models, keeping at most ``max_rows_per_campaign`` rows per campaign by
    a deterministic hash sample of the customer id (the same customers on
    every run).

    Returns
    -------
    pandas.DataFrame
        The columns of :func:`contact_features`, ``group`` normalised to
        treatment / control.
    """
    f = features.filter(features.campaign_id.isin(list(campaign_ids)))
    counts = f.group_by("campaign_id").aggregate(n=f.count()).to_pandas()
    big = counts[counts.n > max_rows_per_campaign]
    if len(big):
        frac = {r.campaign_id: max_rows_per_campaign / r.n for r in big.itertuples()}
        bucket = (f.customer_id.cast("string").hash() % 1_000_000).abs()
        cond = ~f.campaign_id.isin(list(frac))
        for cid, share in frac.items():
            cond = cond | ((f.campaign_id == cid) & (bucket < int(share * 1_000_000)))
        f = f.filter(cond)
    df = f.to_pandas()
    df["group"] = _normalise_group(df["group"])
    return df[df.group.isin(["treatment", "control"])].reset_index(drop=True)


def segment_profile(X: pd.DataFrame, segments: pd.DataFrame, bins: np.ndarray, *,
                    features: Mapping[str, tuple[str, str]] = PROFILE_FEATURES,
                    min_group_size: int = MIN_GROUP_SIZE) -> pd.DataFrame:
    """Who the customers of each verdict are: the held-out contacts grouped
    by the verdict of their bin of predicted uplift (helps / no clear
    effect / hurts, from :func:`crmlab.uplift.uplift_segments`).

    Parameters
    ----------
    X : pandas.DataFrame
        The held-out contacts' features, one row per contact.
    segments : pandas.DataFrame
        From :func:`crmlab.uplift.uplift_segments` on those contacts.
    bins : array of int
        Each contact's bin (1 = highest predicted uplift), aligned with ``X``.

    Returns
    -------
    pandas.DataFrame
        One row per verdict present, best first: ``verdict, bins`` (e.g.
        "1-2"), ``contacts``, ``observed_uplift`` (treated minus control
        conversion over its bins), the mean of each feature of ``features``
        present in ``X`` and ``top_category`` (the category with the largest
        mean share, where ``cat_*`` columns exist). Groups under
        ``min_group_size`` contacts are left out.
    """
    order = list(_uplift.SEGMENT_VERDICTS)
    verdict_of = segments.set_index("bin")["verdict"]
    v = pd.Series(np.asarray(bins)).map(verdict_of).to_numpy()
    cats = [c for c in X.columns if c.startswith("cat_")]
    rows = []
    for name in order:
        mask = v == name
        if mask.sum() < min_group_size:
            continue
        seg = segments[segments.verdict == name]
        nt, nc = seg.n_treatment.sum(), seg.n_control.sum()
        ct = (seg.conversion_treatment * seg.n_treatment).sum()
        cc = (seg.conversion_control * seg.n_control).sum()
        row = {"verdict": name,
               "bins": ", ".join(str(int(b)) for b in seg.bin),
               "contacts": int(mask.sum()),
               "observed_uplift": (ct / nt - cc / nc) if nt and nc else np.nan}
        part = X.loc[mask]
        for col in features:
            if col in X.columns and pd.api.types.is_numeric_dtype(X[col]):
                row[col] = float(pd.to_numeric(part[col], errors="coerce").mean())
        if cats:
            means = part[cats].mean()
            row["top_category"] = (means.idxmax()[4:].replace("_", " ")
                                   if means.notna().any() else None)
        rows.append(row)
    return pd.DataFrame(rows)


def fit_uplift(frame: pd.DataFrame, *, campaign_ids: Sequence | None = None,
               method: str = "t_learner", estimator=None,
               feature_cols: Sequence[str] = UPLIFT_FEATURES,
               test_size: float = 0.4, min_conversions: int = 30, n_bins: int = 5,
               n_permutations: int = 200, alpha: float = 0.05, refit: bool = False,
               seed: int = DEFAULT_SEED) -> dict[Any, UpliftResult]:
    """Fit and judge an uplift model per randomised campaign.

    Each campaign's contacts are split (seeded, stratified by group and
    outcome) into a training part and a held-out part of ``test_size``. An
    :class:`crmlab.uplift.UpliftModel` (on ``feature_cols`` and any
    ``cat_*`` category shares present) learns on the training part and is
    judged on the held-out part only: the Qini coefficient (Radcliffe 2007)
    with a randomisation p-value (:func:`crmlab.uplift.qini_permutation_test`),
    the Qini and uplift curves, the ``n_bins`` segments of predicted uplift
    (:func:`crmlab.uplift.uplift_segments`, intervals Bonferroni-adjusted
    across the segments) and their profile
    (:func:`segment_profile`). The judged model scores new customers; with
    ``refit=True`` a model refitted on all the contacts does (more data, but
    then the page's evaluation is of a sibling, not of the model used).

    One held-out part, not cross-fitting: pooling out-of-fold predictions
    makes similar customers in different folds score each other (each one's
    label trains the model that ranks the other), which correlates their
    contributions to the Qini curve; on the synthetic world that doubled
    the false positives of the randomisation test (10-12% at the 5% level
    against 2-4% for one split).

    Campaigns with fewer than ``min_conversions`` conversions in either
    group get no model (``note`` says why).

    Parameters
    ----------
    frame : pandas.DataFrame
        From :func:`uplift_frame`.
    estimator : scikit-learn classifier, optional
        The base classifier of :class:`crmlab.uplift.UpliftModel`.

    Returns
    -------
    dict
        ``{campaign_id: UpliftResult}``.
    """
    from sklearn.model_selection import train_test_split

    if not 0 < test_size < 1:
        raise ParameterError(f"test_size must be between 0 and 1, got {test_size}")
    ids = list(campaign_ids) if campaign_ids is not None else sorted(frame.campaign_id.unique())
    wanted = list(feature_cols) + [c for c in frame.columns
                                   if c.startswith("cat_") and c not in feature_cols]
    feats = [c for c in wanted if c in frame.columns and frame[c].notna().any()]
    out: dict[Any, UpliftResult] = {}
    children = np.random.default_rng(seed).spawn(len(ids))
    for i, cid in enumerate(ids):
        d = frame[frame.campaign_id == cid]
        t = (d["group"] == "treatment").to_numpy()
        y = d["converted"].fillna(0).to_numpy(int)
        conv_t = int(y[t].sum()) if t.any() else 0
        conv_c = int(y[~t].sum()) if (~t).any() else 0
        if min(conv_t, conv_c) < min_conversions:
            out[cid] = UpliftResult(
                cid, None, feats, 0, 0, float("nan"), float("nan"), pd.DataFrame(),
                pd.DataFrame(), note=(f"fewer than {min_conversions} conversions in the treatment "
                                      f"or the control group: no model"))
            continue
        rs = int(children[i].integers(2**31 - 1))
        X = d[feats].reset_index(drop=True)
        tr, te = train_test_split(np.arange(len(d)), test_size=test_size, random_state=rs,
                                  stratify=t.astype(int) * 2 + y)
        m = _uplift.UpliftModel(method=method, estimator=estimator,
                                random_state=rs).fit(X.iloc[tr], t[tr], y[tr])
        score = m.predict(X.iloc[te])
        yt, tt = y[te], t[te]
        perm = _uplift.qini_permutation_test(yt, tt, score, n_permutations=n_permutations,
                                             random_state=rs)
        final = (_uplift.UpliftModel(method=method, estimator=estimator, random_state=rs)
                 .fit(X, t, y) if refit else m)
        segments = _uplift.uplift_segments(yt, tt, score, n_bins=n_bins, alpha=alpha, adjust=True)
        bins = _uplift.score_bins(score, n_bins)
        out[cid] = UpliftResult(
            cid, final, feats, len(tr), len(te), perm["qini"], perm["p_value"],
            _uplift.qini_curve(yt, tt, score), segments, null_95=perm["null_95"],
            uplift_curve=_uplift.uplift_curve(yt, tt, score),
            profile=segment_profile(X.iloc[te].reset_index(drop=True), segments, bins))
    return out


def uplift_targets(results: Mapping[Any, UpliftResult], customers: pd.DataFrame, *,
                   top_share: float | None = None, only_better_than_random: bool = True
                   ) -> pd.DataFrame:
    """Score customers for the next campaign with each fitted model.

    Parameters
    ----------
    results : from :func:`fit_uplift`
    customers : pandas.DataFrame
        One row per customer with ``customer_id`` and the features (the
        frame of :func:`customer_features`).
    top_share : float, optional
        Keep only the top share of customers per campaign by score.
    only_better_than_random : bool
        Use only the models that beat random targeting on held-out
        customers (a model that does not would hand marketing a list no
        better than a lottery).

    Returns
    -------
    pandas.DataFrame
        The export ``uplift_targets.csv``: ``customer_id, campaign_id,
        uplift_score`` (the predicted rise in the chance of converting if
        contacted, in probability points), highest score first within each
        campaign.
    """
    frames = []
    for cid, r in results.items():
        if not r.fitted or (only_better_than_random and not r.better_than_random):
            continue
        score = r.predict(customers)
        f = pd.DataFrame({"customer_id": customers["customer_id"].to_numpy(), "campaign_id": cid,
                          "uplift_score": score}).sort_values("uplift_score", ascending=False,
                                                              kind="mergesort")
        if top_share is not None:
            f = f.head(int(math.ceil(top_share * len(f))))
        frames.append(f)
    if not frames:
        return pd.DataFrame({"customer_id": [], "campaign_id": [], "uplift_score": []})
    return pd.concat(frames, ignore_index=True)


def uplift_summary(results: Mapping[Any, UpliftResult]) -> pd.DataFrame:
    """One row per campaign: ``campaign_id, n_train, n_test, qini,
    qini_p_value, null_95, better_than_random, helps, no_effect, hurts``
    (numbers of held-out segments with each verdict), ``note``."""
    rows = []
    for cid, r in results.items():
        verdict = r.segments.get("verdict", pd.Series(dtype=str))
        rows.append({
            "campaign_id": cid, "n_train": r.n_train, "n_test": r.n_test, "qini": r.qini,
            "qini_p_value": r.qini_p_value, "null_95": r.null_95,
            "better_than_random": r.better_than_random,
            "helps": int((verdict == "helps").sum()),
            "no_effect": int((verdict == "no clear effect").sum()),
            "hurts": int((verdict == "hurts").sum()),
            "note": r.note,
        })
    return pd.DataFrame(rows, columns=["campaign_id", "n_train", "n_test", "qini", "qini_p_value",
                                       "null_95", "better_than_random", "helps", "no_effect",
                                       "hurts", "note"])


# --------------------------------------------------------------------------
# metrics, findings and the page
# --------------------------------------------------------------------------

def campaign_metrics(comparison: pd.DataFrame, impact_frame: pd.DataFrame) -> dict:
    """``metrics.json``'s ``campaigns`` entry: ``{campaign_id: {n_treatment,
    n_control, conversion_treatment, conversion_control, uplift_conversion,
    uplift_conversion_ci_low, uplift_conversion_ci_high, p_value_conversion,
    revenue_per_contact_treatment, revenue_per_contact_control,
    incremental_revenue, roi}}``. P-values are raw (uncorrected); missing
    values are ``None``. Campaign ids become strings (JSON keys)."""
    conv = comparison[comparison.metric == "conversion"].set_index("campaign_id")
    rev = comparison[comparison.metric == "revenue_per_contact"].set_index("campaign_id")
    imp = impact_frame.set_index("campaign_id") if len(impact_frame) else pd.DataFrame()
    ids = list(dict.fromkeys(list(conv.index) + list(rev.index)))

    def get(frame, cid, col):
        return frame.at[cid, col] if cid in frame.index and col in frame.columns else None

    out = {}
    for cid in ids:
        src = conv if cid in conv.index else rev
        out[str(cid)] = {k: _json(v) for k, v in {
            "n_treatment": int(src.at[cid, "n_treatment"]),
            "n_control": int(src.at[cid, "n_control"]),
            "conversion_treatment": get(conv, cid, "treatment"),
            "conversion_control": get(conv, cid, "control"),
            "uplift_conversion": get(conv, cid, "uplift"),
            "uplift_conversion_ci_low": get(conv, cid, "ci_low"),
            "uplift_conversion_ci_high": get(conv, cid, "ci_high"),
            "p_value_conversion": get(conv, cid, "p_value"),
            "revenue_per_contact_treatment": get(rev, cid, "treatment"),
            "revenue_per_contact_control": get(rev, cid, "control"),
            "incremental_revenue": get(imp, cid, "incremental_revenue"),
            "roi": get(imp, cid, "roi"),
        }.items()}
    return out


# the sections of the page: key -> title a stakeholder reads
SECTIONS: dict[str, str] = {
    "funnel": "Funnel per campaign",
    "channels": "Funnel per channel",
    "comparison": "Did the campaigns raise conversion? Treatment against control",
    "revenue": "Revenue per contact",
    "impact": "Incremental results and return on investment",
    "checks": "Checks before trusting the results",
    "quasi": "Campaigns without a control group: quasi-experimental estimates",
    "power": "Power: which effects each campaign could detect",
    "uplift": "Uplift model: whom to target next",
}

# the report's parameters: name -> (check, what the error says)
PARAMETER_RULES: dict[str, tuple[Any, str]] = {
    "margin": (lambda v: 0 <= v <= 1, "a share of revenue between 0 and 1"),
    "alpha": (lambda v: 0 < v < 0.5, "between 0 and 0.5 (0.05 is usual)"),
    "correction": (lambda v: v in CORRECTIONS, f"one of {', '.join(CORRECTIONS)}"),
    "power": (lambda v: 0 < v < 1, "between 0 and 1 (0.8 is usual)"),
    "target_uplift": (lambda v: 0 < v < 1, "an absolute rise in conversion between 0 and 1 "
                                           "(0.02 = two points)"),
    "n_boot": (lambda v: v == 0 or 200 <= v <= 100_000,
               "0 (Welch intervals only) or between 200 and 100,000"),
    "pre_days": (lambda v: 30 <= v <= 3660, "between 30 and 3,660 days"),
    "seed": (lambda v: v >= 0, "a non-negative integer"),
    "max_uplift_models": (lambda v: 0 <= v <= 50, "between 0 (no uplift models) and 50"),
}


def snapshot_date(data, as_of: str | dt.date | None = None) -> dt.date | None:
    """The report's snapshot date: :func:`crmlab.engine.snapshot_date` of
    ``data``'s orders (``as_of`` when given, else the newest order date);
    ``as_of`` alone (None when empty) for data without an orders table."""
    if not data.has("orders"):
        return engine.parse_as_of(as_of)
    return engine.snapshot_date(data.table("orders"), as_of)


def check_parameters(**params) -> dict:
    """Refuse report parameters outside their domain, before any work.

    Takes the report's own parameters as keywords (any of
    ``PARAMETER_RULES``); unknown names are ignored. Raises
    :class:`~crmlab.exceptions.ParameterError` naming the parameter and the
    domain (never a data value); returns the parameters unchanged.

    Examples
    --------
    >>> check_parameters(margin=0.3, correction="holm")["margin"]
    0.3
    >>> check_parameters(margin=1.5)
    Traceback (most recent call last):
    ...
    crmlab.exceptions.ParameterError: margin must be a share of revenue between 0 and 1, got 1.5
    """
    for name, value in params.items():
        if name not in PARAMETER_RULES:
            continue
        ok, domain = PARAMETER_RULES[name]
        try:
            good = bool(ok(value))
        except TypeError:
            good = False
        if not good:
            raise ParameterError(f"{name} must be {domain}, got {value!r}")
    return params


@dataclasses.dataclass
class CampaignAnalysis:
    """Everything the campaigns report shows, from :func:`analyse`.

    Frames: ``campaigns`` (info), ``aggregates``, ``funnel``, ``channels``,
    ``comparison``, ``impact``, ``srm``, ``balance``, ``power``,
    ``quasi`` (list of dicts from :func:`quasi_experiment`), ``uplift``
    (``{campaign_id: UpliftResult}``), ``warnings`` (list of str),
    ``notes`` (``{section: text}``: why a part is missing or limited),
    ``params``, ``needs`` (``{section: ["table.column", ...]}`` for the
    sections of ``SECTIONS`` the data cannot support) and ``currency``.
    """

    campaigns: pd.DataFrame
    aggregates: pd.DataFrame
    funnel: pd.DataFrame
    channels: pd.DataFrame
    comparison: pd.DataFrame
    impact: pd.DataFrame
    srm: pd.DataFrame
    balance: pd.DataFrame
    power: pd.DataFrame
    quasi: list
    uplift: dict
    warnings: list
    notes: dict
    params: dict
    needs: dict = dataclasses.field(default_factory=dict)
    currency: str = ""
    timings: dict = dataclasses.field(default_factory=dict)

    @functools.cached_property
    def names(self) -> dict:
        """``campaign_id -> name`` for the campaigns that have a name."""
        info = self.campaigns
        return {cid: name for cid, name in zip(info["campaign_id"], info["name"])
                if isinstance(name, str) and name}

    def available(self, section: str) -> bool:
        """True when the data supports the section (a key of ``SECTIONS``)."""
        if section not in SECTIONS:
            raise ParameterError(f"unknown section {section!r}; known: {', '.join(SECTIONS)}")
        return section not in self.needs

    def title(self, section: str) -> str:
        return SECTIONS[section]

    @property
    def featured(self) -> "UpliftResult | None":
        """The uplift model the page shows in detail: the best of those that
        beat random targeting (highest Qini coefficient), else the best
        fitted one, else None."""
        fitted = [r for r in self.uplift.values() if r.fitted]
        if not fitted:
            return None
        good = [r for r in fitted if r.better_than_random]
        return max(good or fitted, key=lambda r: r.qini if np.isfinite(r.qini) else -np.inf)

    def flagged(self) -> list:
        """Campaigns that fail a protective check: sample-ratio mismatch or
        a pre-campaign imbalance beyond what a random split produces, in id
        order. (Imbalances within chance are noted on the page, not counted.)"""
        bad = set(self.srm.loc[self.srm["mismatch"].astype(bool), "campaign_id"]) if len(self.srm) else set()
        if len(self.balance):
            bad |= set(self.balance.loc[self.balance["beyond_chance"].astype(bool), "campaign_id"])
        return sorted(bad, key=str)

    def chance_imbalanced(self) -> list:
        """Campaigns whose groups differed before the campaign by more than
        the balance threshold, but within what chance produces."""
        if not len(self.balance):
            return []
        b = self.balance
        over = set(b.loc[b["imbalanced"].astype(bool), "campaign_id"])
        return sorted(over - set(self.flagged()), key=str)

    def totals(self) -> dict:
        """The figures of the KPI cards: ``campaigns_analysed``,
        ``incremental_revenue`` (sum over campaigns with a control group),
        ``cost_with_control``, ``roi_overall`` ((margin x incremental revenue
        - cost) / cost over the campaigns with a control group and a cost),
        ``share_significant_positive`` (campaigns with a control group whose
        conversion rose beyond chance after the correction),
        ``campaigns_with_warnings``. Missing figures are None."""
        conv = self.comparison[self.comparison.metric == "conversion"] if len(self.comparison) \
            else self.comparison
        imp = self.impact
        inc = cost = roi = None
        if len(imp) and "incremental_revenue" in imp and imp["incremental_revenue"].notna().any():
            inc = float(imp["incremental_revenue"].sum())
            paid = imp[imp["cost"].notna() & (imp["cost"] > 0) & imp["incremental_revenue"].notna()]
            if len(paid):
                cost = float(paid["cost"].sum())
                roi = (self.params["margin"] * float(paid["incremental_revenue"].sum()) - cost) / cost
        share = (float((conv.significant.astype(bool) & (conv.uplift > 0)).mean())
                 if len(conv) else None)
        return {"campaigns_analysed": int(len(self.funnel)), "incremental_revenue": inc,
                "cost_with_control": cost, "roi_overall": roi,
                "share_significant_positive": share,
                "campaigns_with_warnings": int(len(self.flagged()))}

    def metrics(self) -> dict:
        """``{"campaigns": campaign_metrics(...)}`` plus the totals."""
        conv = self.comparison[self.comparison.metric == "conversion"] if len(self.comparison) \
            else self.comparison
        out = {"campaigns": campaign_metrics(self.comparison, self.impact)} if len(self.comparison) \
            else {"campaigns": {}}
        out.update(self.totals())
        out.update({
            "n_with_control": int(conv.campaign_id.nunique()) if len(conv) else 0,
            "n_significant_conversion": int(conv.significant.astype(bool).sum()) if len(conv) else 0,
            "uplift_models": int(sum(r.fitted for r in self.uplift.values())),
            "uplift_models_better_than_random": int(sum(r.better_than_random
                                                        for r in self.uplift.values())),
            "correction": self.params.get("correction"),
        })
        return out

    def metric_cards(self) -> list[dict]:
        """Keywords for ``Report.metric``, one dict per figure: the KPI cards
        (``kpi=True``: campaigns analysed, incremental revenue, overall ROI,
        share of campaigns with a significant positive effect, campaigns with
        warnings) and the other figures of :meth:`metrics` (``campaigns``:
        the per-campaign dict of the issue, raw p-values)."""
        m = self.metrics()
        cur = f" ({self.currency})" if self.currency else ""
        cards = [
            {"key": "campaigns_analysed", "label": "Campaigns analysed", "kpi": True},
            {"key": "incremental_revenue", "label": f"Incremental revenue{cur}", "kpi": True,
             "better": "higher"},
            {"key": "roi_overall", "label": "Overall ROI (campaigns with a control group)",
             "fmt": "{:.0%}", "kpi": True, "better": "higher"},
            {"key": "share_significant_positive",
             "label": "Campaigns with a significant positive effect", "fmt": "{:.0%}",
             "kpi": True, "better": "higher"},
            {"key": "campaigns_with_warnings", "label": "Campaigns with warnings", "kpi": True,
             "better": "lower"},
        ]
        shown = {c["key"] for c in cards}
        for c in cards:
            c["value"] = m[c["key"]]
        cards += [{"key": k, "value": v} for k, v in m.items() if k not in shown]
        return cards

    def results_table(self) -> pd.DataFrame:
        return results_table(self.comparison) if len(self.comparison) else pd.DataFrame(
            columns=["campaign_id", "metric", "treatment", "control", "uplift", "ci_low",
                     "ci_high", "p_value", "p_adjusted"])

    def uplift_summary(self) -> pd.DataFrame:
        return uplift_summary(self.uplift)

    def uplift_targets(self, data, *, as_of=None, top_share: float | None = None,
                       only_better_than_random: bool = True) -> pd.DataFrame:
        """The export ``uplift_targets.csv`` for this analysis: every customer
        of ``data`` scored by the fitted models (by default only those that
        beat random targeting), with features measured as of ``as_of``
        (default: the analysis' as_of, else the latest order) exactly as they
        were for the contacts. See :func:`uplift_targets`."""
        usable = [r for r in self.uplift.values()
                  if r.fitted and (r.better_than_random or not only_better_than_random)]
        if not usable:
            return uplift_targets({}, pd.DataFrame())
        when = snapshot_date(data, as_of or self.params.get("as_of"))
        orders = purchase_orders(data, when)
        feats = customer_features(
            orders, data.table("customers") if data.has("customers") else None, as_of=when,
            order_lines=(data.table("order_lines")
                         if self.params.get("order_lines") and data.has("order_lines") else None),
            pre_days=self.params["pre_days"]).to_pandas()
        return uplift_targets(self.uplift, feats, top_share=top_share,
                              only_better_than_random=only_better_than_random)

    def quasi_table(self) -> pd.DataFrame:
        """The quasi-experimental estimates in one frame (one row per
        campaign and outcome) with their design and label."""
        frames = []
        for q in self.quasi:
            if "table" in q:
                frames.append(q["table"].assign(campaign_id=q["campaign_id"], design=q["design"],
                                                label=q["label"]))
        if not frames:
            return pd.DataFrame()
        df = pd.concat(frames, ignore_index=True)
        lead = ["campaign_id", "design", "outcome"]
        return df[lead + [c for c in df.columns if c not in lead]]

    def findings(self, *, currency: str | None = None) -> list[str]:
        return findings(self, currency=self.currency if currency is None else currency)

    def section_text(self, *, currency: str | None = None) -> dict[str, str]:
        return section_text(self, currency=self.currency if currency is None else currency)


class _Clock:
    """Wall and CPU seconds per step of :func:`analyse` (``analysis.timings``)."""

    def __init__(self):
        import time

        self._time = time
        self.steps: dict[str, dict[str, float]] = {}
        self._mark = (time.perf_counter(), time.process_time())

    def lap(self, step: str) -> None:
        wall, cpu = self._time.perf_counter(), self._time.process_time()
        prev = self.steps.setdefault(step, {"wall": 0.0, "cpu": 0.0})
        prev["wall"] += wall - self._mark[0]
        prev["cpu"] += cpu - self._mark[1]
        self._mark = (wall, cpu)


def _name(analysis: CampaignAnalysis, cid) -> str:
    name = analysis.names.get(cid)
    return f"{cid} ({name})" if name else str(cid)


def _short(analysis: CampaignAnalysis, cid, width: int = 28) -> str:
    """A campaign's label for a chart axis: ``CMP-001 Spring welcome offer``,
    the name cut to ``width`` characters."""
    name = analysis.names.get(cid)
    if not name:
        return str(cid)
    name = name if len(name) <= width else name[:width - 1] + "…"
    return f"{cid} {name}"


def findings(analysis: CampaignAnalysis, *, currency: str = "") -> list[str]:
    """Three to five plain sentences with numbers, written from the results:
    how many campaigns worked (and which hurt), the strongest, money, the
    checks and the targeting."""
    a = analysis
    out: list[str] = []
    conv = a.comparison[a.comparison.metric == "conversion"] if len(a.comparison) else a.comparison
    corr = a.params.get("correction", "holm")
    if len(conv):
        up = conv[conv.significant.astype(bool) & (conv.uplift > 0)]
        down = conv[conv.significant.astype(bool) & (conv.uplift < 0)]
        hurt = ""
        if len(down):
            w = down.sort_values("uplift").iloc[0]
            hurt = (f" - {_name(a, w.campaign_id)} cut conversion by "
                    f"{_fmt_pts(-w.uplift, 1)[1:]} (95% interval "
                    f"{_fmt_pts_range(w.ci_low, w.ci_high)}): stop or rework it -")
        out.append(
            f"{len(up)} of {len(conv)} campaigns with a control group raised conversion by more "
            f"than chance explains ({CORRECTIONS[corr]['name']} correction across campaigns and "
            f"metrics), {len(down)} lowered it{hurt} and {len(conv) - len(up) - len(down)} showed "
            f"no clear effect.")
        # the strongest result: the largest rise that survives the correction, else the
        # largest rise, marked as a lead
        ranked = pd.concat([up.sort_values("uplift", ascending=False),
                            conv.sort_values("uplift", ascending=False)])
        best = ranked.iloc[0]
        if best.uplift > 0:
            inc = a.impact.set_index("campaign_id") if len(a.impact) else pd.DataFrame()
            extra = ""
            if best.campaign_id in inc.index and np.isfinite(inc.at[best.campaign_id,
                                                                    "incremental_conversions"]):
                extra = (f", about {inc.at[best.campaign_id, 'incremental_conversions']:,.0f} "
                         f"extra conversions")
            caveat = ("" if best.significant else
                      " - not significant after the correction, so a lead, not a result")
            out.append(
                f"The strongest was {_name(a, best.campaign_id)}: conversion "
                f"{_fmt_pct(best.treatment, 1)} against {_fmt_pct(best.control, 1)} in its control "
                f"group, {_fmt_pts(best.uplift, 1)} (95% interval "
                f"{_fmt_pts_range(best.ci_low, best.ci_high)}){extra}{caveat}.")
    t = a.totals()
    imp = a.impact[a.impact["roi"].notna()] if len(a.impact) else a.impact
    if len(imp) and t["roi_overall"] is not None:
        pay = imp[imp.roi > 0]
        sure = imp[imp.roi_ci_low > 0]
        out.append(
            f"At a {a.params.get('margin', 0.3):.0%} margin the {len(imp)} campaigns with a control "
            f"group {'added' if t['incremental_revenue'] >= 0 else 'lost'} "
            f"{_fmt_money(abs(t['incremental_revenue']), currency)} of revenue for "
            f"{_fmt_money(t['cost_with_control'], currency)} spent (overall ROI "
            f"{t['roi_overall']:+.0%}); {len(pay)} paid back their cost, {len(sure)} of them with "
            f"the whole 95% interval above break-even.")
    srm_bad = list(a.srm.loc[a.srm["mismatch"].astype(bool), "campaign_id"]) if len(a.srm) else []
    bal = a.balance
    broken = sorted(set(bal.loc[bal["beyond_chance"].astype(bool), "campaign_id"])) if len(bal) else []
    unlucky = (sorted(set(bal.loc[bal["imbalanced"].astype(bool), "campaign_id"]) - set(broken))
               if len(bal) else [])
    if srm_bad or broken:
        parts = []
        if srm_bad:
            parts.append(f"{', '.join(_name(a, c) for c in sorted(srm_bad, key=str))}: the "
                         f"treatment share differs from the plan")
        if broken:
            parts.append(f"{', '.join(_name(a, c) for c in broken)}: treatment and control "
                         f"differed before the campaign by more than chance")
        out.append("Do not rely on these results yet (see the checks section) - "
                   + "; ".join(parts) + ".")
    elif unlucky:
        out.append(f"{len(unlucky)} campaign(s) had treatment and control groups that differed "
                   f"somewhat before the campaign, within what chance produces; their results "
                   f"are fair on average but less certain than the intervals suggest.")
    r = a.featured
    if r is not None and r.better_than_random:
        top = r.segments.iloc[: max(1, len(r.segments) // 5)]
        nt, nc = top.n_treatment.sum(), top.n_control.sum()
        lift = ((top.conversion_treatment * top.n_treatment).sum() / nt
                - (top.conversion_control * top.n_control).sum() / nc) if nt and nc else np.nan
        overall = (r.curve.conversions_treatment.iloc[-1] / r.curve.n_treatment.iloc[-1]
                   - r.curve.conversions_control.iloc[-1] / r.curve.n_control.iloc[-1])
        out.append(
            f"To repeat {_name(a, r.campaign_id)}, target by its uplift model: on customers it "
            f"never saw, the top fifth it picks responded with {_fmt_pts(lift, 1)} against "
            f"{_fmt_pts(overall, 1)} on average (Qini coefficient {r.qini:.2f}, better than random "
            f"with {_fmt_p(r.qini_p_value)}); the list is in uplift_targets.csv.")
    elif a.uplift and any(x.fitted for x in a.uplift.values()):
        out.append("No uplift model beats random targeting yet, so choose the next audience by "
                   "the campaign results rather than by model scores.")
    if not out:
        out.append("No campaign has both contacts and a control group to evaluate yet.")
    return out[:5]


def section_text(analysis: CampaignAnalysis, *, currency: str = "") -> dict[str, str]:
    """One paragraph per section saying what the numbers mean and what to
    do: keys of ``SECTIONS`` plus ``srm`` (the sample-ratio table) and
    ``profile`` (who the uplift model picks; "" when there is none). A
    section the data cannot support gets what it needs."""
    a = analysis
    p = a.params
    text: dict[str, str] = {}
    missing = {k: "Not available: needs " + ", ".join(v) + "." for k, v in a.needs.items()}
    f = a.funnel
    if len(f) and f["converted_rate"].notna().any():
        best = f.sort_values("converted_rate", ascending=False).iloc[0]
        worst = f.sort_values("converted_rate").iloc[0]
        cpc = f["cost_per_conversion"]
        text["funnel"] = (
            f"Among the customers who received a campaign, conversion ranged from "
            f"{_fmt_pct(worst.converted_rate, 1)} for {_name(a, worst.campaign_id)} to "
            f"{_fmt_pct(best.converted_rate, 1)} for {_name(a, best.campaign_id)}. "
            + (f"A conversion cost from {_fmt_money(cpc.min(), currency)} to "
               f"{_fmt_money(cpc.max(), currency)}. " if cpc.notna().any() else "")
            + "Conversion among contacts is not the campaign's effect: customers who would have "
              "bought anyway are counted too - the next sections separate them.")
    elif len(f):
        text["funnel"] = ("The contacts record no conversions, so the funnel stops at the stages "
                          "that are recorded.")
    ch = a.channels
    if len(ch):
        stages = [s for s in FUNNEL_STAGES[1:] if ch[f"{s}_rate"].notna().any()]
        worst_step = {}
        for _, r in ch.iterrows():
            prev, prev_rate = "contacted", 1.0
            for s in stages:
                rate = r[f"{s}_rate"]
                if pd.notna(rate):
                    worst_step.setdefault(r.channel, []).append(
                        (rate / prev_rate if prev_rate else np.nan, prev, s))
                    prev, prev_rate = s, rate
        parts = []
        for chan, steps in worst_step.items():
            k = min(steps, key=lambda x: x[0] if np.isfinite(x[0]) else 2)
            parts.append(f"{str(chan).replace('_', ' ')}: {_fmt_pct(k[0], 0)} get from {k[1]} "
                         f"to {k[2]}")
        text["channels"] = (
            "The largest loss per channel - " + "; ".join(parts) + ". Work on that stage first: "
            "delivery by list hygiene, opening by subject line and timing, clicks by the offer. "
            "Cost per conversion compares channels on what they cost, not on their effect.")
    conv = a.comparison[a.comparison.metric == "conversion"] if len(a.comparison) else a.comparison
    if len(conv):
        n_up = int((conv.significant.astype(bool) & (conv.uplift > 0)).sum())
        n_down = int((conv.significant.astype(bool) & (conv.uplift < 0)).sum())
        text["comparison"] = (
            f"Each campaign's treatment group is compared with its control group, customers left "
            f"out at random. Bars are 95% intervals of the rise in conversion; p-values are "
            f"adjusted with {CORRECTIONS[p['correction']]['text']}. {n_up} of {len(conv)} "
            f"campaigns show a rise that survives the correction and {n_down} a fall. A campaign "
            f"without a significant result is not proven useless - it may have been too small to "
            f"tell (see Power) - but its budget needs another justification.")
    rev = a.comparison[a.comparison.metric == "revenue_per_contact"] if len(a.comparison) \
        else a.comparison
    if len(rev):
        pos = rev[rev.ci_low > 0]
        neg = rev[rev.ci_high < 0]
        text["revenue"] = (
            f"Revenue per contact counts every contact, buyers and non-buyers, so a few large "
            f"orders move it a lot. The intervals are bootstrap intervals, which do not assume "
            f"a bell curve; the p-values come from Welch's t test. {len(pos)} of {len(rev)} "
            f"campaigns raised revenue per contact with the whole interval above zero"
            + (f" and {len(neg)} lowered it" if len(neg) else "") + ".")
    imp = a.impact[a.impact["roi"].notna()] if len(a.impact) else a.impact
    if len(imp):
        sure = imp[imp.roi_ci_low > 0]
        loss = imp[imp.roi_ci_high < 0]
        text["impact"] = (
            f"Incremental revenue is what the treatment group bought beyond what its control "
            f"group shows it would have bought anyway. At a {p['margin']:.0%} margin, "
            f"{len(imp[imp.roi > 0])} of {len(imp)} campaigns returned more than they cost, "
            f"{len(sure)} with the whole 95% interval above break-even"
            + (f", and {len(loss)} lost money for sure" if len(loss) else "")
            + ". Fund the sure ones again; for the others, cut the cost per contact or target "
              "better (see the uplift model).")
    elif len(a.impact):
        text["impact"] = ("Incremental conversions are estimated, but the campaigns carry no cost, "
                          "so their return on investment cannot be computed.")
    unlucky = a.chance_imbalanced()
    lucky_note = (
        f" {len(unlucky)} campaign(s) ({', '.join(map(str, unlucky))}) had treatment and control "
        f"groups that differed before the campaign by more than {CHECKS['smd_threshold']:g} "
        f"standard deviations on some measure, within what a random split of groups that size "
        f"produces: their results are fair on average, but read their intervals rather than "
        f"their point estimates." if unlucky else "")
    if a.warnings:
        text["checks"] = ("Warning: " + " ".join(a.warnings) + lucky_note)
    elif len(a.srm):
        text["checks"] = (
            f"Every campaign passed the sample-ratio check (chi-square against the planned split, "
            f"threshold {CHECKS['srm_alpha']:g})"
            + (" and no split was unbalanced beyond chance before the campaign"
               if len(a.balance) else "")
            + ". The treatment-control comparisons can be read at face value." + lucky_note)
    if "checks" in a.notes and "checks" in text:
        text["checks"] += " " + a.notes["checks"]
    if len(a.srm):
        mism = a.srm[a.srm["mismatch"].astype(bool)]
        assumed = int(a.srm["planned_share_assumed"].astype(bool).sum())
        text["srm"] = (
            f"The share of each campaign's contacts in the treatment group against the planned "
            f"share: {len(a.srm) - len(mism)} of {len(a.srm)} campaigns are as planned"
            + (f", {len(mism)} {'is' if len(mism) == 1 else 'are'} not" if len(mism) else "")
            + "." + (f" {assumed} campaign(s) state no planned share; 50% is assumed."
                     if assumed else ""))
    r = a.featured
    if r is not None and len(r.profile):
        best_row = r.profile.iloc[0]
        text["profile"] = (
            f"What the held-out customers of {_name(a, r.campaign_id)} looked like before the "
            f"campaign, by the verdict on their fifth (averages). "
            + ("Reach customers like those where it helps first" if best_row.verdict == "helps"
               else "No fifth shows a clear effect yet")
            + ("; leave out those where it hurts." if (r.profile.verdict == "hurts").any() else "."))
    if a.quasi:
        parts = []
        for q in a.quasi:
            if "table" not in q:
                parts.append(f"{_name(a, q['campaign_id'])}: {q.get('error', 'not estimated')}.")
                continue
            row = q["table"].iloc[0]
            if q["design"] == "did":
                parts.append(
                    f"{_name(a, q['campaign_id'])}: {row.effect:+.3f} orders per contacted "
                    f"customer over {q['window_days']} days (95% interval {row.ci_low:+.3f} to "
                    f"{row.ci_high:+.3f}), about {row.incremental_total:+,.0f} orders in all; the "
                    f"placebo check gives {row.placebo:+.3f}: "
                    f"{TREND_VERDICTS[row.parallel_trends]}, so parallel trends are "
                    f"{row.parallel_trends}.")
            else:
                parts.append(
                    f"{_name(a, q['campaign_id'])}: about {row.incremental_total:+,.0f} orders "
                    f"over {q['window_days']} days against the pre-campaign trend (95% interval "
                    f"{row.incremental_ci_low:+,.0f} to {row.incremental_ci_high:+,.0f}).")
        text["quasi"] = (
            "These campaigns had no control group, so their effect is estimated, not measured. "
            + " ".join(parts) + " Assumptions: "
            + " ".join(QUASI_DESIGNS[d]["assumption"]
                       for d in dict.fromkeys(q["design"] for q in a.quasi if "design" in q))
            + " Give the next campaign a random control group to measure it properly.")
    elif "quasi" not in a.needs:
        text["quasi"] = "Every campaign had a control group, so no estimate without one was needed."
    pw = a.power
    if len(pw):
        under = pw[~pw.powered.astype(bool)]
        target = p["target_uplift"]
        need = pw["n_needed_treatment"].dropna()
        text["power"] = (
            f"The minimum detectable effect is the smallest rise in conversion each campaign could "
            f"reliably detect (power {p['power']:.0%}, alpha {p['alpha']:g}): from "
            f"{_fmt_pts(pw.mde.min(), 1)} to {_fmt_pts(pw.mde.max(), 1)}. {len(under)} of {len(pw)} "
            f"campaigns were too small to detect a rise of {_fmt_pts(target, 1)}"
            + (f"; at their baselines that takes {need.min():,.0f} to {need.max():,.0f} customers "
               f"in the treatment group" if len(need) else "")
            + ". Size the next test before launching it.")
    fitted = [r for r in a.uplift.values() if r.fitted]
    if fitted:
        good = [r for r in fitted if r.better_than_random]
        r = a.featured
        helps = r.segments[r.segments.verdict == "helps"]
        hurts = r.segments[r.segments.verdict == "hurts"]
        scope = a.notes.get("uplift_scope", "")
        text["uplift"] = (
            f"An uplift model predicts who buys because of the campaign, not who buys anyway. "
            f"{scope + ' ' if scope else ''}Judged on customers it never saw, {len(good)} of "
            f"{len(fitted)} models rank customers better than random (Qini coefficient above "
            f"zero, randomisation p < 0.05). "
            + (f"For {_name(a, r.campaign_id)}, the customers in {len(helps)} of the "
               f"{len(r.segments)} fifths by predicted uplift respond clearly to it"
               + (f" and {len(hurts)} fifth(s) buy less when contacted - leave those out" if len(hurts)
                  else "")
               + ". uplift_targets.csv scores every customer for that campaign; contact the "
                 "highest scores first." if good else
               "No model is yet better than random targeting, so keep targeting broadly and "
               "keep a control group to learn from."))
    elif a.uplift:
        text["uplift"] = ("No campaign had enough conversions in both groups to learn from: "
                          + "; ".join(f"{cid}: {r.note}" for cid, r in a.uplift.items()) + ".")
    for key in SECTIONS:
        if key not in text:
            text[key] = missing.get(key, a.notes.get(key, "Nothing to show."))
    for key in ("srm", "profile"):
        text.setdefault(key, "")
    return text


def analyse(data, *, as_of: str | dt.date | None = None, margin: float = 0.3,
            alpha: float = 0.05, correction: str = "holm", power: float = 0.8,
            target_uplift: float = 0.02, relative_target: bool = False, n_boot: int = 2000,
            pre_days: int = 365, control_from: Mapping | None = None, quasi: bool = True,
            uplift: bool = True, uplift_method: str = "t_learner",
            uplift_campaigns: Sequence | str | None = None, max_uplift_rows: int = 100_000,
            max_check_rows: int | None = 20_000,
            max_uplift_models: int | None = 3, n_permutations: int = 200,
            seed: int = DEFAULT_SEED) -> CampaignAnalysis:
    """Run every section of the campaigns report on a ``Dataset``.

    Parameters
    ----------
    data : crmlab.sources.Dataset
        Needs ``campaign_contacts`` (else every section is "not available");
        ``campaigns`` (dates, costs, planned shares), ``orders``,
        ``customers`` and ``order_lines`` enable cost, checks,
        quasi-experiments and uplift.
    as_of : date, optional
        Campaigns starting after it are left out; orders after it are not
        used. The orders are the purchases up to the snapshot date
        (:func:`purchase_orders`).
    margin, alpha, correction, power, n_boot, pre_days, control_from,
    uplift_method, max_uplift_rows, n_permutations, seed
        See the section functions.
    target_uplift, relative_target
        The rise in conversion the power section plans for: absolute points
        (0.02), or a share of the baseline with ``relative_target=True``.
    uplift_campaigns : sequence or str, optional
        The campaigns to fit uplift models for (one id as a string; "" =
        the default). Default: the ``max_uplift_models`` largest randomised
        campaigns that pass the checks (:func:`uplift_candidates`: an uplift
        model needs many contacts; a campaign with a broken split teaches a
        wrong lesson).
    max_check_rows : int, optional
        The balance check compares at most about this many contacts per
        campaign (a deterministic hash sample, :func:`sample_contacts`): a
        standardised difference is precise to about 0.015 from 20,000
        contacts split evenly, and the join with the orders grows with
        every one.
    max_uplift_models : int, optional
        At most this many uplift models (None: one per sound randomised
        campaign; 0: none). Each costs about a second at 10,000 contacts;
        ``max_uplift_rows`` caps the contacts one model learns from.
    quasi, uplift : bool
        Run the slower sections.

    Returns
    -------
    CampaignAnalysis
        With ``needs`` naming what the data lacks for each section it
        cannot support (no campaign contacts at all: every section), and
        ``timings`` (wall and CPU seconds per step).

    Examples
    --------
    >>> a = analyse(open_source("synthetic:demo"))                  # doctest: +SKIP
    >>> a.metrics()["campaigns"]["CMP-014"]["uplift_conversion"]    # doctest: +SKIP
    0.036
    """
    check_parameters(margin=margin, alpha=alpha, correction=correction, power=power,
                     target_uplift=target_uplift if not relative_target else 0.5,
                     n_boot=n_boot, pre_days=pre_days, seed=seed)
    if isinstance(uplift_campaigns, str):
        uplift_campaigns = [uplift_campaigns] if uplift_campaigns.strip() else None
    day = engine.parse_as_of(as_of)
    params = {"as_of": day.isoformat() if day else None, "margin": margin,
              "alpha": alpha, "correction": correction, "power": power,
              "target_uplift": target_uplift, "relative_target": relative_target,
              "n_boot": n_boot, "pre_days": pre_days, "seed": seed,
              "control_from": dict(control_from or {}), "order_lines": False}
    currency = str((getattr(data, "world", None) or {}).get("currency") or "")
    clock = _Clock()
    notes: dict[str, str] = {}
    needs: dict[str, list[str]] = {}
    contacts_ok = data.has("campaign_contacts") and all(
        data.has("campaign_contacts", c) for c in ("campaign_id", "customer_id", "group"))
    if not contacts_ok:
        return _empty_analysis(params, currency)
    contacts = data.table("campaign_contacts")
    camp_t = data.table("campaigns") if data.has("campaigns") else None
    snapshot = snapshot_date(data, day)
    orders = purchase_orders(data, snapshot)
    customers = data.table("customers") if data.has("customers") else None
    lines = data.table("order_lines") if data.has("order_lines") else None
    info = campaign_info(camp_t)
    has_start = camp_t is not None and "start_date" in camp_t.columns
    ids = None
    if params["as_of"] and len(info):
        cutoff = pd.Timestamp(params["as_of"]) + pd.Timedelta(days=1)
        info = info[info.start_date.isna() | (info.start_date < cutoff)]
        ids = list(info.campaign_id)
    agg = contact_aggregates(contacts, campaign_ids=ids)
    if agg.empty:  # a header-only table, or only campaigns that start after as_of
        return _empty_analysis(params, currency, need="campaign_contacts rows" + (
            " for the campaigns starting up to as_of" if ids is not None else ""))
    rev = revenue_values(contacts, campaign_ids=ids)
    clock.lap("aggregates")
    fun = funnel(agg, info, alpha=alpha)
    chan = channel_summary(agg, info, alpha=alpha)
    comp = compare_groups(agg, rev, control_from=control_from, alpha=alpha, correction=correction,
                          n_boot=n_boot, seed=seed)
    clock.lap("funnel and comparison")
    has_conv = data.has("campaign_contacts", "converted")
    has_rev = data.has("campaign_contacts", "revenue")
    has_cost = camp_t is not None and (fun["cost"].notna().any() if len(fun) else False)
    with_control = list(comp.campaign_id.unique())
    no_ctrl = ["campaign_contacts.group (control rows)"]
    if not (agg["group"] == "control").any():
        for k in ("comparison", "revenue", "impact", "power", "uplift"):
            needs[k] = list(no_ctrl)
    if not has_conv:
        for k in ("comparison", "power", "uplift"):
            needs.setdefault(k, []).append("campaign_contacts.converted")
    if not has_rev:
        needs.setdefault("revenue", []).append("campaign_contacts.revenue")
    if not has_rev or not has_cost:
        needs.setdefault("impact", []).extend(
            (["campaign_contacts.revenue"] if not has_rev else [])
            + ([] if has_cost else ["campaigns.cost or campaigns.cost_per_contact"]))
    imp = impact(comp, fun, margin=margin) if len(comp) else pd.DataFrame(
        columns=["campaign_id", "incremental_revenue", "roi", "cost", "incremental_conversions",
                 "roi_ci_low", "roi_ci_high"])
    srm = sample_ratio_check(agg, info, control_from=control_from)
    if not len(srm):
        needs["checks"] = list(no_ctrl)
    balance = pd.DataFrame(columns=["campaign_id", "covariate", "label", "mean_treatment",
                                    "mean_control", "smd", "p_value", "p_adjusted", "imbalanced",
                                    "beyond_chance"])
    if orders is not None and has_start and with_control:
        needed = sorted(set(with_control) | set(dict(control_from or {}).values()), key=str)
        sizes = agg.groupby("campaign_id")["contacts"].sum().to_dict()
        feats = contact_features(sample_contacts(contacts, sizes, max_check_rows), camp_t, orders,
                                 customers, pre_days=pre_days, campaign_ids=needed)
        balance = balance_check(feats, control_from=control_from)
    elif with_control:
        notes["checks"] = ("The balance check of pre-campaign behaviour needs orders and "
                           "campaigns.start_date; only the sample-ratio check ran.")
    warns = check_warnings(srm, balance, chance=False)
    clock.lap("checks")
    pw = power_table(comp, alpha=alpha, power=power, target_uplift=target_uplift,
                     relative=relative_target)
    clock.lap("impact and power")
    q_out = []
    no_control = [c for c in fun.campaign_id if c not in set(with_control)]
    if no_control and (orders is None or not has_start):
        needs["quasi"] = [x for x, ok in (("orders", orders is not None),
                                          ("campaigns.start_date", has_start)) if not ok]
    elif quasi and no_control:
        n_cust = int(customers.count().execute()) if customers is not None else None
        for cid in no_control:
            try:
                q_out.append(quasi_experiment(cid, contacts, info, orders, customers,
                                              as_of=snapshot, pre_days=pre_days,
                                              alpha=alpha, seed=seed, n_customers=n_cust))
            except (NoDataError, DataContractError) as exc:
                q_out.append({"campaign_id": cid, "error": str(exc)})
    clock.lap("quasi-experiments")
    up: dict = {}
    if uplift and "uplift" not in needs:
        if orders is None or not has_start:
            needs["uplift"] = [x for x, ok in (("orders", orders is not None),
                                               ("campaigns.start_date", has_start)) if not ok]
        else:
            chosen, scope = uplift_candidates(comp, srm, balance, max_models=max_uplift_models,
                                              campaigns=uplift_campaigns)
            if scope:
                notes["uplift_scope"] = scope
            if chosen:
                sizes = agg.groupby("campaign_id")["contacts"].sum().to_dict()
                feats = contact_features(sample_contacts(contacts, sizes, max_uplift_rows), camp_t,
                                         orders, customers, order_lines=lines, pre_days=pre_days,
                                         campaign_ids=chosen)
                params["order_lines"] = lines is not None
                frame = uplift_frame(feats, chosen, max_rows_per_campaign=max_uplift_rows)
                clock.lap("uplift features")
                up = fit_uplift(frame, campaign_ids=chosen, method=uplift_method,
                                alpha=alpha, n_permutations=n_permutations, seed=seed)
                clock.lap("uplift models")
    return CampaignAnalysis(info, agg, fun, chan, comp, imp, srm, balance, pw, q_out, up, warns,
                            notes, params, needs, currency, clock.steps)


def uplift_candidates(comparison: pd.DataFrame, srm: pd.DataFrame, balance: pd.DataFrame, *,
                      max_models: int | None = 4, campaigns: Sequence | None = None
                      ) -> tuple[list, str]:
    """The randomised campaigns to learn uplift models from.

    ``campaigns`` given: those of them with a control group (others are
    refused with a ParameterError). Else the campaigns with a control group
    that pass the sample-ratio check and show no imbalance beyond chance,
    the largest first (an uplift model needs many contacts), at most
    ``max_models`` (None: all; 0: none).

    Returns
    -------
    (list, str)
        The campaign ids, largest first, and a sentence for the page when
        campaigns were left out (else "").
    """
    conv = comparison[comparison.metric == "conversion"] if len(comparison) else comparison
    if not len(conv):
        return [], ""
    size = (conv.n_treatment + conv.n_control).groupby(conv.campaign_id).sum()
    if campaigns:
        wanted = list(dict.fromkeys(campaigns))
        unknown = [c for c in wanted if c not in size.index]
        if unknown:
            raise ParameterError(f"campaign {unknown[0]!s} has no control group to learn an uplift "
                                 f"model from; campaigns with one: "
                                 f"{', '.join(map(str, sorted(size.index, key=str)))}")
        return wanted, ""
    bad = set(srm.loc[srm["mismatch"].astype(bool), "campaign_id"]) if len(srm) else set()
    if len(balance):
        bad |= set(balance.loc[balance["beyond_chance"].astype(bool), "campaign_id"])
    ok = size.drop([c for c in bad if c in size.index]).sort_values(ascending=False, kind="mergesort")
    chosen = list(ok.index if max_models is None else ok.index[:max_models])
    notes = []
    if bad & set(size.index):
        notes.append(f"{', '.join(sorted(map(str, bad & set(size.index))))} failed a check and "
                     f"was not used.")
    if max_models is not None and len(ok) > len(chosen):
        notes.append(f"Models were learned for the {len(chosen)} largest of {len(ok)} randomised "
                     f"campaigns.")
    return chosen, " ".join(notes)


def _empty_analysis(params: dict, currency: str,
                    need: str = "campaign_contacts (campaign_id, customer_id, group)") -> CampaignAnalysis:
    """The analysis of data without campaign contacts: every section needs them."""
    need = [need]
    empty = pd.DataFrame()
    srm = pd.DataFrame(columns=["campaign_id", "mismatch"])
    bal = pd.DataFrame(columns=["campaign_id", "imbalanced", "beyond_chance"])
    return CampaignAnalysis(
        campaign_info(None), empty, pd.DataFrame(columns=["campaign_id", "converted_rate",
                                                          "cost_per_conversion"]),
        pd.DataFrame(), pd.DataFrame(columns=["campaign_id", "metric"]),
        pd.DataFrame(columns=["campaign_id", "incremental_revenue", "roi", "cost"]), srm, bal,
        pd.DataFrame(), [], {}, [], {}, params, {k: list(need) for k in SECTIONS}, currency)


# --------------------------------------------------------------------------
# the page: charts and tables (crmlab.charts theme)
# --------------------------------------------------------------------------

# verdict of a comparison -> colour name of crmlab.charts.COLORS
VERDICT_COLORS: dict[str, str] = {"raised": "good", "lowered": "bad", "no clear effect": "neutral",
                                  "helps": "good", "hurts": "bad"}


def _plt():
    import matplotlib.pyplot as plt

    from crmlab import charts

    charts.use_theme()
    return plt, charts


def _legend_below(fig, ax, handles=None, ncols: int = 3) -> None:
    """The legend in one row under the plot (the figure uses the
    constrained layout, which makes room for it)."""
    kw = {"handles": handles} if handles is not None else {}
    fig.legend(**kw, loc="outside lower center", ncols=ncols, fontsize=9)


def _chrono(a: CampaignAnalysis, frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in the order the campaigns started (then by id), as every table
    and chart of the page lists them."""
    if not len(frame) or "campaign_id" not in frame.columns:
        return frame
    start = a.campaigns.set_index("campaign_id")["start_date"].to_dict()
    key = pd.to_datetime(frame.campaign_id.map(start))  # NaT for a campaign without a start
    return (frame.assign(_start=key, _id=frame.campaign_id.astype(str))
            .sort_values(["_start", "_id"], na_position="last", kind="mergesort")
            .drop(columns=["_start", "_id"]))


def _shown(a: CampaignAnalysis, frame: pd.DataFrame, min_size: int) -> pd.DataFrame:
    """Rows of campaigns whose groups are all at least ``min_size``
    contacts (smaller groups are not shown on their own), in start order."""
    if not len(frame):
        return frame
    ok = pd.Series(True, index=frame.index)
    for col in ("n_treatment", "n_control", "contacted"):
        if col in frame.columns:
            ok &= frame[col].fillna(0) >= min_size
    return _chrono(a, frame[ok])


def _verdict(sig, uplift) -> str:
    if bool(sig) and uplift > 0:
        return "raised"
    if bool(sig) and uplift < 0:
        return "lowered"
    return "no clear effect"


def _pts(x, digits: int = 1) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{100 * x:+.{digits}f}"


def _range(lo, hi, fmt) -> str:
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return "–"
    return f"{fmt(lo)} to {fmt(hi)}"


def _money(x) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:,.0f}"


def _p(p) -> str:
    if p is None or not np.isfinite(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def funnel_chart(analysis: CampaignAnalysis):
    """Grouped bars: the share of contacted customers reaching each recorded
    stage (delivered, opened, clicked, converted), one bar per channel.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt, charts = _plt()
    ch = analysis.channels
    stages = [s for s in FUNNEL_STAGES[1:] if f"{s}_rate" in ch and ch[f"{s}_rate"].notna().any()]
    fig, ax = plt.subplots(figsize=(8.5, 3.8))
    width = 0.8 / max(len(ch), 1)
    x = np.arange(len(stages))
    for i, (_, r) in enumerate(ch.iterrows()):
        vals = np.array([r[f"{s}_rate"] for s in stages], dtype=float)
        bars = ax.bar(x + (i - (len(ch) - 1) / 2) * width, vals, width * 0.95,
                      color=charts.PALETTE[i % len(charts.PALETTE)],
                      label=str(r.channel).replace("_", " "))
        ax.bar_label(bars, labels=[f"{v:.0%}" if np.isfinite(v) else "" for v in vals],
                     fontsize=8, padding=1)
    ax.set_xticks(x, [s for s in stages])
    ax.set_ylim(0, 1.1)
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
    ax.set_ylabel("share of contacted customers")
    ax.set_title("How far contacted customers got, per channel")
    ax.grid(axis="x", visible=False)
    ax.legend(ncols=min(len(ch), 4), loc="upper right")
    return fig


def forest_chart(analysis: CampaignAnalysis, metric: str = "conversion", *,
                 min_size: int = MIN_GROUP_SIZE):
    """Treatment against control per campaign: the uplift (treatment minus
    control) with its 95% interval as a horizontal line, green where it rose
    beyond chance after the correction, red where it fell, grey otherwise;
    the adjusted p-value on the right, and campaigns that failed a check
    marked. ``metric`` is ``"conversion"`` (percentage points) or
    ``"revenue_per_contact"`` (money per contact).

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt, charts = _plt()
    c = analysis.comparison
    c = _shown(analysis, c[c.metric == metric], min_size)
    scale = 100.0 if metric != "revenue_per_contact" else 1.0
    fig, ax = plt.subplots(figsize=(9.2, 0.36 * len(c) + 1.5), layout="constrained")
    flagged = set(analysis.flagged())
    y = np.arange(len(c))[::-1]
    for yi, (_, r) in zip(y, c.iterrows()):
        col = charts.COLORS[VERDICT_COLORS[_verdict(r.significant, r.uplift)]]
        ax.plot([r.ci_low * scale, r.ci_high * scale], [yi, yi], color=col, lw=2.4,
                solid_capstyle="round")
        ax.plot(r.uplift * scale, yi, "o", color=col, ms=7)
        note = f"adj. p {_p(r.p_adjusted)}" + ("  check failed" if r.campaign_id in flagged else "")
        ax.annotate(note, xy=(1.01, yi), xycoords=("axes fraction", "data"), va="center",
                    fontsize=9, color=charts.COLORS["bad"] if r.campaign_id in flagged
                    else charts.COLORS["neutral"])
    ax.axvline(0, color="#374151", lw=1)
    ax.set_yticks(y, [_short(analysis, cid) for cid in c.campaign_id])
    ax.set_ylim(-0.7, len(c) - 0.3)
    ax.grid(axis="y", visible=False)
    if metric == "revenue_per_contact":
        cur = f" ({analysis.currency})" if analysis.currency else ""
        ax.set_xlabel(f"extra revenue per contact{cur} (treatment minus control)\n"
                      f"dots: estimate; lines: 95% bootstrap interval")
        ax.set_title("Revenue per contact: treatment against control")
    else:
        ax.set_xlabel("rise in conversion, percentage points (treatment minus control)\n"
                      "dots: estimate; lines: 95% interval")
        ax.set_title("Conversion: treatment against control")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=charts.COLORS[VERDICT_COLORS[v]], marker="o", lw=2.4, label=lab)
               for v, lab in (("raised", "rose beyond chance"), ("lowered", "fell beyond chance"),
                              ("no clear effect", "no clear effect"))]
    _legend_below(fig, ax, handles)
    return fig


def roi_chart(analysis: CampaignAnalysis, *, min_size: int = MIN_GROUP_SIZE):
    """Return on investment per campaign with its 95% interval; the line at
    0% is break-even (the incremental margin pays back the cost exactly).

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt, charts = _plt()
    imp = _shown(analysis, analysis.impact[analysis.impact["roi"].notna()], min_size)
    fig, ax = plt.subplots(figsize=(9.2, 0.36 * len(imp) + 1.4), layout="constrained")
    y = np.arange(len(imp))[::-1]
    for yi, (_, r) in zip(y, imp.iterrows()):
        key = "good" if r.roi_ci_low > 0 else "bad" if r.roi_ci_high < 0 else "neutral"
        col = charts.COLORS[key]
        ax.plot([r.roi_ci_low, r.roi_ci_high], [yi, yi], color=col, lw=2.4, solid_capstyle="round")
        ax.plot(r.roi, yi, "o", color=col, ms=7)
    ax.axvline(0, color="#374151", lw=1)
    ax.annotate("break-even", xy=(0, len(imp) - 0.45), ha="left", fontsize=9,
                color=charts.COLORS["neutral"], xytext=(4, 0), textcoords="offset points")
    ax.set_yticks(y, [_short(analysis, cid) for cid in imp.campaign_id])
    ax.set_ylim(-0.7, len(imp) - 0.2)
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:+.0%}"))
    ax.grid(axis="y", visible=False)
    ax.set_xlabel(f"ROI = (margin {analysis.params['margin']:.0%} x incremental revenue - cost) "
                  f"/ cost\ndots: estimate; lines: 95% interval; green: interval above break-even")
    ax.set_title("Return on investment per campaign")
    return fig


def balance_chart(analysis: CampaignAnalysis, *, min_size: int = MIN_GROUP_SIZE):
    """Standardised mean difference of each pre-campaign covariate between
    treatment and control, per campaign (a "love plot"); the dashed lines
    at +-0.1 are the usual balance threshold.

    Returns
    -------
    matplotlib.figure.Figure or None (no balance check)
    """
    b = analysis.balance
    if not len(b):
        return None
    plt, charts = _plt()
    keep = set(_shown(analysis, analysis.srm, min_size).campaign_id) if len(analysis.srm) else set()
    b = b[b.campaign_id.isin(keep)] if keep else b
    present = set(b.campaign_id)
    ids = [c for c in _chrono(analysis, analysis.srm).campaign_id if c in present] or sorted(present, key=str)
    fig, ax = plt.subplots(figsize=(9.2, 0.34 * len(ids) + 1.6), layout="constrained")
    pos = {cid: len(ids) - 1 - i for i, cid in enumerate(ids)}
    covs = list(dict.fromkeys(b.covariate))
    for j, cov in enumerate(covs):
        part = b[b.covariate == cov]
        ax.scatter(part.smd.clip(-0.5, 0.5), part.campaign_id.map(pos) + (j - (len(covs) - 1) / 2) * 0.12,
                   s=28, color=charts.PALETTE[j % len(charts.PALETTE)],
                   label=BALANCE_COVARIATES.get(cov, cov))
    thr = CHECKS["smd_threshold"]
    for v in (-thr, thr):
        ax.axvline(v, color=charts.COLORS["bad"], ls="--", lw=1)
    ax.axvline(0, color="#374151", lw=0.8)
    ax.set_yticks(list(pos.values()), [_short(analysis, c) for c in pos])
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("standardised difference before the campaign (treatment minus control)")
    ax.set_title("Were treatment and control alike before the campaign?")
    _legend_below(fig, ax, ncols=2)
    return fig


def quasi_chart(analysis: CampaignAnalysis):
    """For each campaign without a control group estimated by
    difference-in-differences: orders per customer in the two periods
    before the campaign and the period after, for the contacted customers
    and their matched look-alikes. Parallel lines before the campaign are
    what the estimate assumes.

    Returns
    -------
    matplotlib.figure.Figure or None (no such campaign)
    """
    rows = [(q, q["table"].iloc[0]) for q in analysis.quasi
            if q.get("design") == "did" and "table" in q]
    if not rows:
        return None
    plt, charts = _plt()
    fig, axes = plt.subplots(1, len(rows), figsize=(4.8 * len(rows) + 1, 3.6), squeeze=False)
    for ax, (q, r) in zip(axes.flat, rows):
        L = q["window_days"]
        x = [f"{2 * L}-{L} days\nbefore", f"{L} days\nbefore", f"{L} days\nafter"]
        ax.plot(x, [r.treated_earlier, r.treated_before, r.treated_after], "o-",
                color=charts.COLORS["main"], label="contacted customers")
        ax.plot(x, [r.control_earlier, r.control_before, r.control_after], "o--",
                color=charts.COLORS["neutral"], label="matched look-alikes")
        ax.set_ylabel("orders per customer")
        ax.set_title(_short(analysis, q["campaign_id"], 34), fontsize=11)
        ax.legend(loc="lower left", fontsize=9)
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    return fig


def power_chart(analysis: CampaignAnalysis, *, min_size: int = MIN_GROUP_SIZE):
    """Per campaign: the minimum detectable effect (bar), the observed
    uplift (dot) and the target effect (dashed line), in percentage points.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt, charts = _plt()
    pw = _shown(analysis, analysis.power, min_size)
    fig, ax = plt.subplots(figsize=(9.2, 0.36 * len(pw) + 1.5), layout="constrained")
    y = np.arange(len(pw))[::-1]
    ax.barh(y, pw.mde * 100, color=charts.COLORS["band"], alpha=0.35, height=0.6,
            label="smallest rise it could detect")
    ax.plot(pw.observed_uplift * 100, y, "o", color=charts.COLORS["main"], ms=7,
            label="rise observed")
    if not analysis.params.get("relative_target"):
        ax.axvline(analysis.params["target_uplift"] * 100, color=charts.COLORS["accent"], ls="--",
                   lw=1.6, label=f"target rise ({analysis.params['target_uplift'] * 100:.1f} points)")
    ax.axvline(0, color="#374151", lw=0.8)
    ax.set_yticks(y, [_short(analysis, cid) for cid in pw.campaign_id])
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("conversion, percentage points")
    ax.set_title(f"What each campaign could detect (power {analysis.params['power']:.0%})")
    _legend_below(fig, ax)
    return fig


def uplift_chart(analysis: CampaignAnalysis, result: "UpliftResult | None" = None):
    """The featured uplift model judged on held-out customers: the Qini
    curve (extra conversions when contacting the top share ranked by the
    model, against random selection) and the observed uplift in each fifth
    of predicted uplift with its (Bonferroni-adjusted) interval, coloured by
    verdict.

    Returns
    -------
    matplotlib.figure.Figure or None (no fitted model)
    """
    r = result if result is not None else analysis.featured
    if r is None or not r.fitted:
        return None
    plt, charts = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.9), gridspec_kw={"width_ratios": [1.2, 1]})
    q = r.curve
    left.plot(q.fraction, q.incremental, color=charts.COLORS["main"], lw=2.2,
              label=f"ranked by the model (Qini {r.qini:.2f})")
    left.plot(q.fraction, q.random, color=charts.COLORS["neutral"], ls="--", lw=1.4,
              label="random selection")
    left.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
    left.set_xlabel("share of held-out customers contacted, best-ranked first")
    left.set_ylabel("extra conversions")
    left.set_title("Qini curve on customers the model never saw", fontsize=11)
    left.legend(loc="lower right", fontsize=9)
    seg = r.segments
    n = len(seg)
    names = {1: "top"} | {n: "bottom"} if n > 1 else {1: "all"}
    labels = [f"{names.get(int(b), '')}\n{int(b)}/{n}".strip() for b in seg.bin]
    cols = [charts.COLORS[VERDICT_COLORS.get(v, "neutral")] for v in seg.verdict]
    val = seg.observed_uplift.to_numpy(float) * 100
    lo = np.nan_to_num(val - seg.ci_low.to_numpy(float) * 100)
    hi = np.nan_to_num(seg.ci_high.to_numpy(float) * 100 - val)
    right.bar(labels, np.nan_to_num(val), color=cols, yerr=[lo, hi], capsize=3,
              error_kw={"lw": 1, "ecolor": "#374151"})
    right.axhline(0, color="#374151", lw=0.8)
    right.set_ylabel("observed rise in conversion, points")
    right.set_xlabel("fifth of customers by predicted uplift")
    right.set_title("Where the campaign helps, does nothing or hurts", fontsize=11)
    right.grid(axis="x", visible=False)
    fig.suptitle(_short(analysis, r.campaign_id, 40), x=0.01, ha="left", fontweight="bold")
    fig.tight_layout()
    return fig


# table name -> builder; every builder returns (frame, options for Report.table_html)
def _funnel_columns(out: pd.DataFrame, f: pd.DataFrame, min_size: int):
    """Append the funnel rates, conversion interval and costs of ``f`` to ``out``."""
    stages = [s for s in FUNNEL_STAGES[1:] if f"{s}_rate" in f and f[f"{s}_rate"].notna().any()]
    for s in stages:
        if s == "converted":
            out["Converted (95% interval)"] = [
                "–" if not np.isfinite(v) else f"{v:.1%} ({100 * lo:.1f}–{100 * hi:.1f}%)"
                for v, lo, hi in zip(f.converted_rate, f.converted_ci_low, f.converted_ci_high)]
        else:
            out[s.capitalize()] = f[f"{s}_rate"]
    out["Cost per contact"] = f.cost_per_contact
    out["Cost per conversion"] = f.cost_per_conversion
    fmt = {s.capitalize(): "{:.1%}" for s in stages if s != "converted"}
    fmt.update({"Cost per contact": "{:,.2f}", "Cost per conversion": "{:,.2f}"})
    return out, {"formats": fmt, "count_col": "Contacted", "min_size": min_size}


def _funnel_table(a: CampaignAnalysis, min_size: int):
    f = _chrono(a, a.funnel)
    out = pd.DataFrame({"Campaign": f.campaign_id.map(lambda c: _short(a, c, 40)),
                        "Channel": f.channel.fillna("").astype(str).str.replace("_", " "),
                        "Contacted": f.contacted.astype("int64")})
    out, opts = _funnel_columns(out, f, min_size)
    return out, {**opts, "caption": "Rates are shares of contacted customers (the control group, "
                                    "who received nothing, is left out)."}


def _channel_table(a: CampaignAnalysis, min_size: int):
    c = a.channels
    out = pd.DataFrame({"Channel": c.channel.astype(str).str.replace("_", " "),
                        "Campaigns": c.campaigns.astype("int64"),
                        "Contacted": c.contacted.astype("int64")})
    return _funnel_columns(out, c, min_size)


def _comparison_table(a: CampaignAnalysis, min_size: int, metric: str = "conversion"):
    c = _shown(a, a.comparison[a.comparison.metric == metric], min_size)
    flagged = set(a.flagged())
    money = metric == "revenue_per_contact"
    fmt_u = _money if money else _pts
    out = pd.DataFrame({
        "Campaign": c.campaign_id.map(lambda x: _short(a, x, 40)),
        "Contacts (treatment / control)": [f"{int(t):,} / {int(k):,}"
                                           for t, k in zip(c.n_treatment, c.n_control)],
        "Treatment": c.treatment, "Control": c.control,
        ("Uplift (95% bootstrap interval)" if money else "Uplift, points (95% interval)"): [
            f"{fmt_u(u)} ({_range(lo, hi, fmt_u)})" for u, lo, hi in zip(c.uplift, c.ci_low,
                                                                        c.ci_high)],
    })
    if money:
        out["Welch 95% interval"] = [_range(lo, hi, _money)
                                     for lo, hi in zip(c.welch_ci_low, c.welch_ci_high)]
    else:
        out["Relative uplift"] = c.relative_uplift
    out["p-value"] = [_p(v) for v in c.p_value]
    out["Adjusted p-value"] = [_p(v) for v in c.p_adjusted]
    out["Result"] = [_verdict(s, u) + (" (check failed)" if cid in flagged else "")
                     for s, u, cid in zip(c.significant, c.uplift, c.campaign_id)]
    fmt = ({"Treatment": "{:,.2f}", "Control": "{:,.2f}"} if money else
           {"Treatment": "{:.2%}", "Control": "{:.2%}", "Relative uplift": "{:+.0%}"})
    return out, {"formats": fmt}


def _impact_table(a: CampaignAnalysis, min_size: int):
    i = _shown(a, a.impact, min_size)
    out = pd.DataFrame({
        "Campaign": i.campaign_id.map(lambda x: _short(a, x, 40)),
        "Extra conversions": i.incremental_conversions,
        "Extra conversions 95% interval": [_range(lo, hi, lambda v: f"{v:,.0f}") for lo, hi in
                                           zip(i.incremental_conversions_ci_low,
                                               i.incremental_conversions_ci_high)],
        "Extra revenue": i.incremental_revenue,
        "Extra revenue 95% interval": [_range(lo, hi, _money) for lo, hi in
                                       zip(i.incremental_revenue_ci_low,
                                           i.incremental_revenue_ci_high)],
        "Cost": i.cost, "ROI": i.roi,
        "ROI 95% interval": [_range(lo, hi, lambda v: f"{v:+.0%}")
                             for lo, hi in zip(i.roi_ci_low, i.roi_ci_high)],
        "Cost per extra conversion": i.cost_per_incremental_conversion,
    })
    return out, {"formats": {"Extra conversions": "{:,.0f}", "Extra revenue": "{:,.0f}",
                             "Cost": "{:,.0f}", "ROI": "{:+.0%}",
                             "Cost per extra conversion": "{:,.2f}"}}


def _warnings_table(a: CampaignAnalysis, min_size: int):
    rows = []
    for _, r in a.srm[a.srm["mismatch"].astype(bool)].iterrows() if len(a.srm) else []:
        rows.append({"Campaign": _short(a, r.campaign_id, 40), "Severity": "warning",
                     "Check": "sample ratio",
                     "Result": f"{r.observed_share:.1%} treated against {r.planned_share:.0%} "
                               f"planned (p {_p(r.p_value)})",
                     "What it means": "the split or the logging is broken: do not use the "
                                      "comparison until the cause is found"})
    if len(a.balance):
        for cid, g in a.balance[a.balance["imbalanced"].astype(bool)].groupby("campaign_id",
                                                                              sort=True):
            worst = g.loc[g.smd.abs().idxmax()]
            beyond = bool(g.beyond_chance.any())
            rows.append({"Campaign": _short(a, cid, 40), "Severity": "warning" if beyond else "note",
                         "Check": "balance before the campaign",
                         "Result": f"{worst.label}: SMD {worst.smd:+.2f} (p {_p(worst.p_value)})",
                         "What it means": ("the groups were not randomly split: the uplift may "
                                           "be a difference that already existed" if beyond else
                                           "a chance difference: read the interval, not the "
                                           "point estimate")})
    out = pd.DataFrame(rows, columns=["Campaign", "Severity", "Check", "Result", "What it means"])
    return out.sort_values("Severity", key=lambda s: s.map({"warning": 0, "note": 1}),
                           kind="mergesort"), {}


def _srm_table(a: CampaignAnalysis, min_size: int):
    s = _shown(a, a.srm, min_size)
    out = pd.DataFrame({
        "Campaign": s.campaign_id.map(lambda x: _short(a, x, 40)),
        "Treatment contacts": s.n_treatment.astype("int64"),
        "Control contacts": s.n_control.astype("int64"),
        "Treated share": s.observed_share,
        "Planned share": [f"{v:.0%}" + (" (assumed)" if assumed else "")
                          for v, assumed in zip(s.planned_share, s.planned_share_assumed)],
        "p-value": [_p(v) for v in s.p_value],
        "Result": np.where(s.mismatch.astype(bool), "mismatch", "as planned"),
    })
    return out, {"formats": {"Treated share": "{:.1%}"}}


def _quasi_table(a: CampaignAnalysis, min_size: int):
    q = a.quasi_table()
    if not len(q):
        return pd.DataFrame(), {}
    rows = []
    for _, r in q.iterrows():
        if r.design == "did":
            rows.append({"Campaign": _short(a, r.campaign_id, 40),
                         "Design": "difference-in-differences (matched)", "Outcome": r.outcome,
                         "Contacted customers": int(r.n_treated),
                         "Effect per customer": f"{r.effect:+,.3f}",
                         "95% interval": _range(r.ci_low, r.ci_high, lambda v: f"{v:+,.3f}"),
                         "Total": f"{r.incremental_total:+,.0f}",
                         "Placebo": f"{r.placebo:+,.3f}",
                         "Parallel trends": r.parallel_trends})
        else:
            rows.append({"Campaign": _short(a, r.campaign_id, 40),
                         "Design": "interrupted time series", "Outcome": r.outcome,
                         "Contacted customers": int(r.n_treated), "Effect per customer": "–",
                         "95% interval": _range(r.incremental_ci_low, r.incremental_ci_high,
                                                lambda v: f"{v:+,.0f}"),
                         "Total": f"{r.incremental_total:+,.0f}", "Placebo": "–",
                         "Parallel trends": "–"})
    return pd.DataFrame(rows), {"count_col": "Contacted customers", "min_size": min_size}


def _power_table(a: CampaignAnalysis, min_size: int):
    p = _shown(a, a.power, min_size)
    target = a.params["target_uplift"]
    rel = a.params.get("relative_target")
    out = pd.DataFrame({
        "Campaign": p.campaign_id.map(lambda x: _short(a, x, 40)),
        "Treatment contacts": p.n_treatment.astype("int64"),
        "Control contacts": p.n_control.astype("int64"),
        "Control conversion": p.baseline,
        "Detectable rise (points)": [_pts(v) for v in p.mde],
        "Observed rise (points)": [_pts(v) for v in p.observed_uplift],
        "Treatment needed": p.n_needed_treatment, "Control needed": p.n_needed_control,
        "Big enough": np.where(p.powered.astype(bool), "yes", "no"),
    })
    cap = (f"Group sizes needed to detect a rise of {target:.0%} of the baseline"
           if rel else f"Group sizes needed to detect a rise of {100 * target:.1f} points")
    return out, {"formats": {"Control conversion": "{:.2%}", "Treatment needed": "{:,.0f}",
                             "Control needed": "{:,.0f}"},
                 "caption": cap + f" with power {a.params['power']:.0%} at alpha "
                                  f"{a.params['alpha']:g}, with each campaign's split."}


def _uplift_table(a: CampaignAnalysis, min_size: int):
    s = a.uplift_summary()
    out = pd.DataFrame({
        "Campaign": s.campaign_id.map(lambda x: _short(a, x, 40)),
        "Learned from": s.n_train.astype("int64"), "Judged on": s.n_test.astype("int64"),
        "Qini coefficient": s.qini, "95% of chance below": s.null_95,
        "p-value": [_p(v) for v in s.qini_p_value],
        "Result": [("better than random" if b else "no better than random") if not note else note
                   for b, note in zip(s.better_than_random, s.note)],
    })
    return out, {"formats": {"Qini coefficient": "{:.3f}", "95% of chance below": "{:.3f}"}}


def _profile_table(a: CampaignAnalysis, min_size: int):
    r = a.featured
    if r is None or not len(r.profile):
        return pd.DataFrame(), {}
    p = r.profile
    out = pd.DataFrame({"Verdict": p.verdict, "Fifths (1 = top)": p.bins,
                        "Customers": p.contacts.astype("int64"),
                        "Observed rise (points)": [_pts(v) for v in p.observed_uplift]})
    fmt = {}
    for col, (label, f) in PROFILE_FEATURES.items():
        if col in p.columns:
            out[label] = p[col]
            fmt[label] = f
    if "top_category" in p.columns:
        out["Largest category"] = p.top_category
    return out, {"formats": fmt, "count_col": "Customers", "min_size": min_size}


PAGE_TABLES: dict[str, Any] = {
    "funnel": _funnel_table,
    "channels": _channel_table,
    "comparison": _comparison_table,
    "revenue": lambda a, m: _comparison_table(a, m, "revenue_per_contact"),
    "impact": _impact_table,
    "warnings": _warnings_table,
    "srm": _srm_table,
    "quasi": _quasi_table,
    "power": _power_table,
    "uplift": _uplift_table,
    "profile": _profile_table,
}


def page_table(analysis: CampaignAnalysis, name: str, *, min_size: int = MIN_GROUP_SIZE) -> dict:
    """A result table of the analysis made ready for the page.

    Parameters
    ----------
    analysis : CampaignAnalysis
    name : str
        A key of ``PAGE_TABLES``: ``funnel, channels, comparison, revenue,
        impact, warnings, srm, quasi, power, uplift, profile``.
    min_size : int
        Campaigns with a group smaller than this are left out; tables with
        a count column merge such rows (see ``Report.table_html``).

    Returns
    -------
    dict
        ``{"table": frame with plain headings, "table_options": {...}}`` --
        the keywords of ``Report.section`` (``{"table": None}`` when there is
        nothing to show).

    Examples
    --------
    >>> rep.section("Funnel", text, **page_table(analysis, "funnel"))   # doctest: +SKIP
    """
    if name not in PAGE_TABLES:
        raise ParameterError(f"unknown table {name!r}; known: {', '.join(PAGE_TABLES)}")
    a = analysis
    sources = {"funnel": a.funnel, "channels": a.channels, "comparison": a.comparison,
               "revenue": a.comparison, "impact": a.impact, "srm": a.srm, "warnings": a.srm,
               "power": a.power, "quasi": a.quasi, "uplift": a.uplift, "profile": a.uplift}
    if not len(sources[name]):
        return {"table": None}
    frame, options = PAGE_TABLES[name](analysis, min_size)
    if frame is None or not len(frame):
        return {"table": None}
    return {"table": frame.reset_index(drop=True), "table_options": options}

