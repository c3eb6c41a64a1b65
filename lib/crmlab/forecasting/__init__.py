"""Forecasting: what will we sell?

The analytics behind ``notebooks/40-forecasting.ipynb``. A notebook cell is a
call or two::

    from crmlab import forecasting as fc
    series = fc.series_from_dataset(data, freq="W", group_by="region", as_of=as_of)
    res = fc.forecast(series, value="revenue", freq="W", horizon=12, holdout=8,
                      calendar="cn")
    res.score_table()                 # every model's backtest scores, best first
    res.history("total")              # history + forecast + intervals, for the chart
    fc.group_table(res)               # largest groups (all groups are exported)
    el = fc.price_elasticity(fc.price_panel(data.table("order_lines"), data.table("orders")))
    sc = fc.price_scenario(res, el, price_change=-0.10)
    fc.findings(res, elasticity=el, scenario=sc)   # 3-5 sentences
    fc.explain(res, "forecast")                    # one paragraph per section
    fc.forecast_metrics(res); fc.exports(res)      # metrics.json, exports/*.csv
    fc.forecast_chart(res)                         # history, forecast, 80/95% bands

Modules: ``series`` (engine-side series, calendar regressors), ``metrics``
(MASE, sMAPE, coverage, conformal quantiles), ``models`` (the estimators),
``pipeline`` (backtest, selection, intervals, reconciliation, holdout),
``elasticity`` (price elasticity and scenarios), ``narrative`` (figures,
tables and sentences), ``charts`` (the page's figures), ``page`` (parameter
checks, the segment frame, the price analysis).
"""

from crmlab.forecasting.elasticity import Elasticity, price_elasticity, price_panel, price_scenario
from crmlab.forecasting.metrics import conformal_quantiles, coverage, insample_scale, mase, smape
from crmlab.forecasting.models import (
    DETAILED_MODELS, FAST_MODELS, MODELS, ETSForecaster, GradientBoostingForecaster,
    HoltWintersForecaster, MovingAverageForecaster, NaiveForecaster, SarimaxForecaster,
    SeasonalNaiveForecaster, ThetaForecaster)
from crmlab.forecasting.narrative import (
    effects_display, effects_table, event_label, explain, exports, findings, forecast_metrics,
    group_table, groups_display, groups_formats, kpi_model, p_text, plain_model,
    holdout_table, metric_cards, model_label, price_metrics, scenario_table, score_board)
from crmlab.forecasting.page import (
    check_parameters, grouping, grouping_columns, latest_segments, price_analysis, segments_for)
from crmlab.forecasting.pipeline import ForecastResult, forecast, periods_needed, rolling_origins
from crmlab.forecasting.series import (
    FREQ_RULES, TOTAL, build_series, calendar_features, series_from_dataset, to_panel)
from crmlab.forecasting.charts import backtest_chart, forecast_chart, groups_chart, scoreboard_chart

__all__ = [
    "build_series", "series_from_dataset", "calendar_features", "to_panel", "FREQ_RULES", "TOTAL",
    "mase", "smape", "insample_scale", "coverage", "conformal_quantiles",
    "MODELS", "FAST_MODELS", "DETAILED_MODELS", "NaiveForecaster", "SeasonalNaiveForecaster",
    "MovingAverageForecaster", "HoltWintersForecaster", "ETSForecaster", "ThetaForecaster",
    "SarimaxForecaster", "GradientBoostingForecaster",
    "forecast", "ForecastResult", "rolling_origins", "periods_needed",
    "price_panel", "price_elasticity", "price_scenario", "Elasticity",
    "forecast_metrics", "exports", "findings", "explain", "group_table", "model_label",
    "effects_display", "groups_display", "groups_formats", "kpi_model", "p_text", "plain_model",
    "metric_cards", "price_metrics", "scenario_table", "grouping", "score_board", "effects_table", "holdout_table", "event_label",
    "check_parameters", "grouping_columns", "latest_segments", "segments_for", "price_analysis",
    "forecast_chart", "backtest_chart", "groups_chart", "scoreboard_chart",
]
