"""The page anatomy every report notebook uses (DESIGN.md "Anatomy of a report page").

A notebook builds its page with one :class:`Report`::

    rep = Report("segmentation", run_dir=run_dir, params=dict(source=source, as_of=as_of),
                 audience=audience)
    rep.header(data, as_of=as_of)                        # cell tagged "header"
    rep.metric("customers", n, label="Active customers", kpi=True, better="higher")
    rep.finding(f"{share:.0%} of revenue comes from the core segment.")
    rep.section("Segments", "What it means and what to do.", figure=fig, table=profile)
    rep.summary()                                        # cell tagged "summary"
    rep.export("customer_segments", assignments)
    rep.footer()

1. the header: report name, data source, as-of date, run time, status;
2. "What changed": the findings the notebook wrote from its results, plus
   the change of each KPI since the previous successful run, written by code;
3. KPI cards: value, change, a sparkline over earlier runs;
4. sections: a chart and/or a (masked, escaped) table with one paragraph;
5. the footer: parameters, source fingerprint, code version, how to rerun.

The runner moves the cells tagged ``summary`` up to just after the first
cell tagged ``header`` when it renders the page, so a notebook computes first
and the reader still sees "What changed" first.

Everything that comes from data is HTML-escaped here; tables are masked for
stakeholders (:mod:`crmlab.privacy`). ``metrics.json`` (flat ``key -> value``)
and ``kpis.json`` are rewritten after every :meth:`Report.metric`, so even a
run that fails half-way leaves the figures it had.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import secrets
import shlex
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from crmlab import config
from crmlab.exceptions import ParameterError
from crmlab.privacy import AUDIENCES, escape, mask_frame, redact_url, suppress_small_groups

# report name -> the title a stakeholder reads
TITLES: dict[str, str] = {
    "data-quality": "Data quality",
    "segmentation": "Customer segments",
    "lifecycle": "Customer lifecycle and value",
    "forecasting": "Sales forecast",
    "campaigns": "Campaign results",
}
# the runner replaces this marker in the rendered page with the run's status
STATUS_MARKER = "<!--crmlab:status-->"
BETTER = (None, "higher", "lower")
_KEY = re.compile(r"^[A-Za-z0-9_.\-]+$")
# direction -> arrow shown beside a change
ARROWS = {"up": "▲", "down": "▼", "flat": "="}


def write_csv(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a frame as UTF-8 CSV without its index: pyarrow's writer (several
    times faster than pandas' on a million rows), pandas' for columns pyarrow
    cannot type (mixed Python objects)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    try:
        table = pa.Table.from_pandas(df, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        df.to_csv(path, index=False)
        return
    # whole seconds read better than microseconds in a spreadsheet
    for i, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type) and field.type.unit != "s":
            table = table.set_column(i, field.name, table.column(i).cast(pa.timestamp("s"), safe=False))
    # a plain header as pandas writes it; the rows from pyarrow
    header = pd.DataFrame(columns=df.columns).to_csv(index=False)
    with open(path, "wb") as fh:
        fh.write(header.encode("utf-8"))
        pacsv.write_csv(table, fh, write_options=pacsv.WriteOptions(
            include_header=False, quoting_style="needed"))


def report_title(report: str) -> str:
    """The stakeholder-facing title of a report name."""
    return TITLES.get(report, report.replace("-", " ").capitalize())


def new_run_id(now: dt.datetime | None = None) -> str:
    """A run id sortable by time: ``20261124T205300Z-3f2a``."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def jsonable(value):
    """A value made safe for JSON: numpy scalars to Python, NaN to None,
    timestamps to ISO text, containers recursively."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, np.ndarray, pd.Series)):
        return [jsonable(v) for v in list(value)]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(float(value)) or math.isinf(float(value)) else float(value)
    if isinstance(value, (pd.Timestamp, dt.datetime, dt.date)):
        return None if pd.isna(value) else value.isoformat()
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (int, str)):
        return value
    return str(value)


def json_text(obj) -> str:
    """The text :func:`write_json` writes for ``obj`` (JSON-safe, indented)."""
    return json.dumps(jsonable(obj), indent=2, ensure_ascii=False)


def write_json(path: str | os.PathLike, obj, *, text: str | None = None) -> Path:
    """Write JSON atomically (a temp file in the same directory, then
    ``os.replace``): a reader never sees half a file. ``text`` is
    :func:`json_text` of ``obj`` when the caller has it already."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json_text(obj) if text is None else text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_json(path, default=None):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def list_runs(report_dir: str | os.PathLike, *, status: str | None = None,
              exclude: str | os.PathLike | None = None) -> list[dict]:
    """The runs of one report, newest first.

    Parameters
    ----------
    report_dir : path
        ``reports/<report>``.
    status : str, optional
        Only runs with this status (``"success"``).
    exclude : path, optional
        A run directory to leave out (the current run).

    Returns
    -------
    list of dict
        Each run's ``run.json`` with ``"_dir"`` (its Path) added.
    """
    report_dir = Path(report_dir)
    exclude = Path(exclude).resolve() if exclude else None
    runs = []
    if not report_dir.is_dir():
        return runs
    for d in report_dir.iterdir():
        if d.name.startswith((".", "_")) or not d.is_dir():
            continue
        if exclude is not None and d.resolve() == exclude:
            continue
        doc = read_json(d / "run.json")
        if not isinstance(doc, dict) or (status and doc.get("status") != status):
            continue
        doc["_dir"] = d
        runs.append(doc)
    runs.sort(key=lambda r: (str(r.get("started_at") or ""), r["_dir"].name), reverse=True)
    return runs


def format_value(value, fmt: str | None = "{:,.0f}") -> str:
    """A figure as text with its format (``"{:,.0f}"``, ``"{:.1%}"``);
    missing values show as an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    try:
        return (fmt or "{}").format(value)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return str(value)


def change(current, previous, better: str | None = None, fmt: str | None = "{:,.0f}") -> dict | None:
    """How a figure moved since the previous run.

    Returns ``None`` when either value is missing or not a number; else a
    dict with ``diff``, ``rel`` (relative change or None), ``direction``
    (up/down/flat), ``tone`` (good/bad/flat, from ``better``) and ``text``:
    percentage points for percentages, else the relative change, else the
    absolute difference.

    Examples
    --------
    >>> change(110, 100, "higher")["text"], change(110, 100, "higher")["tone"]
    ('+10.0%', 'good')
    >>> change(0.12, 0.10, "lower", "{:.1%}")["text"]
    '+2.0 pts'
    """
    try:
        cur, prev = float(current), float(previous)
    except (TypeError, ValueError):
        return None
    if math.isnan(cur) or math.isnan(prev):
        return None
    diff = cur - prev
    rel = diff / abs(prev) if prev else None
    direction = "up" if diff > 0 else "down" if diff < 0 else "flat"
    if direction == "flat" or better is None:
        tone = "flat"
    else:
        tone = "good" if (direction == "up") == (better == "higher") else "bad"
    if fmt and "%" in fmt:
        text = f"{diff * 100:+.1f} pts"
    elif rel is not None:
        text = f"{rel:+.1%}"
    else:
        text = ("+" if diff >= 0 else "-") + format_value(abs(diff), fmt)
    return {"diff": diff, "rel": rel, "direction": direction, "tone": tone, "text": text}


def _run_date(run: dict) -> str:
    stamp = run.get("finished_at") or run.get("started_at") or ""
    return str(stamp)[:10]


def _display(html: str) -> None:
    from IPython.display import HTML, display

    display(HTML(html))


def table_html(df: pd.DataFrame, *, audience: str = "stakeholder", count_col: str | None = None,
               min_size: int = config.MIN_GROUP_SIZE, max_rows: int = 50,
               formats: dict[str, str] | None = None, caption: str | None = None,
               index: bool = False, table: str | None = None, pii: dict | None = None,
               as_of=None) -> str:
    """A frame as an HTML table that is safe to show a stakeholder.

    Takes any small frame; returns ``<table class="crm-table">`` HTML with
    personal columns masked (stakeholder audience), groups under
    ``min_size`` merged when ``count_col`` is named, at most ``max_rows``
    rows, and every header and cell escaped.

    Parameters
    ----------
    formats : dict, optional
        ``column -> format`` (``"{:.1%}"``); numbers default to thousands
        separators, floats to two decimals.
    index : bool
        Show the index as the first column(s).
    table, pii, as_of
        Passed to :func:`crmlab.privacy.mask_frame`.
    """
    if audience not in AUDIENCES:
        raise ParameterError(f"audience must be one of {AUDIENCES}, not {audience!r}")
    frame = df.reset_index() if index else df
    frame = mask_frame(frame, audience, table=table, pii=pii, as_of=as_of)
    if count_col and audience == "stakeholder":
        frame = suppress_small_groups(frame, count_col, min_size)
    formats = formats or {}
    shown = frame.head(max_rows)
    cols = list(shown.columns)
    numeric = {c: pd.api.types.is_numeric_dtype(shown[c]) and not pd.api.types.is_bool_dtype(shown[c])
               for c in cols}

    def cell(col, value):
        if col in formats:
            return escape(format_value(value, formats[col]))
        if numeric[col] and value is not None and not (isinstance(value, float) and math.isnan(value)):
            is_int = float(value).is_integer() and pd.api.types.is_integer_dtype(shown[col])
            return escape(format_value(value, "{:,.0f}" if is_int else "{:,.2f}"))
        return escape(value)

    head = "".join(f'<th class="{"num" if numeric[c] else ""}">{escape(c)}</th>' for c in cols)
    rows = []
    for values in shown.itertuples(index=False, name=None):
        tds = "".join(f'<td class="{"num" if numeric[c] else ""}">{cell(c, v)}</td>'
                      for c, v in zip(cols, values))
        rows.append(f"<tr>{tds}</tr>")
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    more = (f'<p class="crm-note">Showing {len(shown):,} of {len(frame):,} rows.</p>'
            if len(frame) > len(shown) else "")
    return (f'<div class="crm-table-wrap"><table class="crm-table">{cap}<thead><tr>{head}</tr>'
            f'</thead><tbody>{"".join(rows)}</tbody></table></div>{more}')


def _paragraphs(text: str | None, cls: str = "crm-text") -> str:
    if not text:
        return ""
    parts = [p.strip() for p in re.split(r"\n\s*\n", str(text)) if p.strip()]
    return "".join(f'<p class="{cls}">{escape(p)}</p>' for p in parts)


class Report:
    """One report page under construction, and its run's figures.

    Parameters
    ----------
    report : str
        The report name (a key of ``config.REPORTS``).
    run_dir : str or Path, optional
        The run directory the runner made; empty (an analyst in JupyterLab)
        gives a scratch directory ``reports/_scratch/<report>/<run_id>``,
        and earlier runs are still read from ``reports/<report>/``.
    params : dict, optional
        The notebook's parameters, for the header and the footer
        (``source``, ``as_of`` and the report's own).
    audience : {"stakeholder", "analyst"}
        Stakeholder tables are masked; analysts see data as it is.
    reports_dir : path, optional
        The reports tree for the scratch case (default ``config.reports_dir()``).

    Attributes
    ----------
    metrics : dict
        Flat ``key -> value``, written to ``metrics.json``.
    kpis : list of dict
        The KPI cards (``key, label, value, fmt, better``), ``kpis.json``.
    findings : list of str
        The "What changed" sentences.

    Examples
    --------
    >>> rep = Report("segmentation", run_dir=tmp_run_dir)              # doctest: +SKIP
    >>> rep.metric("customers", 1234, label="Customers", kpi=True)    # doctest: +SKIP
    """

    def __init__(self, report: str, *, run_dir: str | os.PathLike | None = "", params: dict | None = None,
                 audience: str = "stakeholder", reports_dir=None, title: str | None = None):
        if audience not in AUDIENCES:
            raise ParameterError(f"audience must be one of {AUDIENCES}, not {audience!r}")
        self.report = report
        self.title = title or report_title(report)
        self.audience = audience
        self.params = dict(params or {})
        self.started_at = utcnow()
        self.interactive = not run_dir
        if run_dir:
            self.run_dir = Path(run_dir)
            self.history_dir = self.run_dir.parent
        else:
            root = config.reports_dir(reports_dir)
            self.run_dir = root / "_scratch" / report / new_run_id(self.started_at)
            self.history_dir = root / report
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics: dict = {}
        self.kpis: list[dict] = []
        self.findings: list[str] = []
        self._saved: dict[str, str] = {}  # file name -> the text last written (save)
        self.source_info: dict = {"spec": self.params.get("source")}
        self.as_of = self.params.get("as_of") or None
        from crmlab import charts
        charts.use_theme()

    # -- earlier runs -------------------------------------------------------
    def previous(self, n: int = 1) -> list[dict]:
        """The ``n`` latest earlier successful runs of this report, newest
        first: dicts with ``run_id, run_dir, started_at, finished_at,
        params, metrics, kpis``."""
        out = []
        for run in list_runs(self.history_dir, status="success", exclude=self.run_dir)[:n]:
            d = run["_dir"]
            out.append({"run_id": run.get("run_id", d.name), "run_dir": d,
                        "started_at": run.get("started_at"), "finished_at": run.get("finished_at"),
                        "params": run.get("params", {}),
                        "metrics": read_json(d / "metrics.json", {}) or {},
                        "kpis": run.get("kpis") or read_json(d / "kpis.json", []) or []})
        return out

    def history(self, key: str, n: int = 52) -> pd.Series:
        """A metric over earlier successful runs, oldest first.

        Returns
        -------
        pandas.Series
            Indexed by each run's start time (UTC), named ``key``; runs that
            lack the metric are left out. The current run is not included.
        """
        times, values = [], []
        for run in reversed(self.previous(n)):
            value = run["metrics"].get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                times.append(pd.Timestamp(run["started_at"]) if run["started_at"] else pd.NaT)
                values.append(float(value))
        return pd.Series(values, index=pd.DatetimeIndex(times), name=key, dtype=float)

    # -- figures ------------------------------------------------------------
    def metric(self, key: str, value, label: str | None = None, fmt: str = "{:,.0f}",
               better: str | None = None, kpi: bool = False) -> None:
        """Record a figure in ``metrics.json``; ``kpi=True`` also makes it a
        KPI card. (Returns nothing, so a cell ending with it shows nothing.)

        Parameters
        ----------
        key : str
            Flat, stable key (letters, digits, ``_.-``), as the report's issue lists.
        value : number, str, bool, list or dict
        label : str, optional
            What the card says (default: the key).
        fmt : str
            Display format, ``"{:,.0f}"`` or ``"{:.1%}"``.
        better : {"higher", "lower", None}
            Which way is good, for the colour of changes.
        """
        if not _KEY.match(str(key)):
            raise ParameterError(f"metric key {key!r}: use letters, digits, '_', '.', '-'")
        if better not in BETTER:
            raise ParameterError(f"metric {key}: better must be one of {BETTER}, not {better!r}")
        self.metrics[key] = jsonable(value)
        if kpi:
            self.kpis = [k for k in self.kpis if k["key"] != key]
            self.kpis.append({"key": key, "label": label or key, "value": jsonable(value),
                              "fmt": fmt, "better": better})
        self.save()

    def finding(self, text: str) -> None:
        """A plain-language finding for "What changed" (3 to 5 per report),
        written from the results. Escaped when shown."""
        self.findings.append(str(text))

    # -- page parts ---------------------------------------------------------
    def header_html(self, data=None, *, as_of=None, subtitle: str | None = None) -> str:
        if data is not None:
            self.source_info = {
                "spec": getattr(data, "spec", None) or self.params.get("source"),
                "kind": getattr(data, "kind", None),
                "fingerprint": getattr(data, "fingerprint", None),
                "extracted_at": jsonable(getattr(data, "extracted_at", None)),
                "row_counts": jsonable(getattr(data, "row_counts", None)),
            }
        if as_of is not None and str(as_of) != "":
            self.as_of = str(as_of)[:10] if isinstance(as_of, (dt.date, pd.Timestamp)) else str(as_of)
        status = ('<span class="crm-pill">draft</span>' if self.interactive else STATUS_MARKER)
        counts = self.source_info.get("row_counts") or {}
        orders = counts.get("orders", {}).get("rows") if isinstance(counts.get("orders"), dict) else None
        meta = [f"<span>Data: <code>{escape(redact_url(self.source_info.get('spec') or 'unknown'))}</code></span>",
                f"<span>As of {escape(self.as_of or 'the latest data')}</span>"]
        if orders is not None:
            meta.append(f"<span>{orders:,} orders</span>")
        meta.append(f"<span>Run {escape(self.started_at.strftime('%Y-%m-%d %H:%M UTC'))}</span>")
        meta.append(f"<span>{status}</span>")
        sub = f"<p>{escape(subtitle)}</p>" if subtitle else ""
        return (f'<header class="crm-header"><h1>{escape(self.title)}</h1>{sub}'
                f'<div class="crm-meta">{"".join(meta)}</div></header>')

    def header(self, data=None, *, as_of=None, subtitle: str | None = None) -> None:
        """Show the header: report name, data source, as-of date, run time and
        status. ``data`` is the ``Dataset`` (for its source, fingerprint and
        row counts). The notebook tags this cell ``header``.

        With a ``data`` that has orders, it also records the figures every
        report states the same way (:func:`crmlab.engine.purchase_totals`:
        ``purchase_revenue`` and ``purchasing_customers`` up to the as-of
        date), so two reports on the same data never disagree about them."""
        html = self.header_html(data, as_of=as_of, subtitle=subtitle)
        if data is not None and hasattr(data, "has") and data.has("orders"):
            from crmlab.engine import purchase_totals
            for key, value in purchase_totals(data.table("orders"), self.as_of).items():
                self.metric(key, value)
        _display(html)

    def change_sentences(self) -> list[str]:
        """One sentence per KPI on its change since the previous successful
        run (plain text, not yet escaped)."""
        prev = self.previous(1)
        if not self.kpis:
            return []
        if not prev:
            return ["This is the first successful run of this report, so there is no earlier run "
                    "to compare with yet."]
        last = prev[0]
        when = _run_date(last)
        out = []
        for k in self.kpis:
            before = last["metrics"].get(k["key"])
            c = change(k["value"], before, k["better"], k["fmt"])
            if c is None:
                continue
            label, now_txt = k["label"], format_value(k["value"], k["fmt"])
            if c["direction"] == "flat":
                out.append(f"{label} is unchanged at {now_txt} since the previous run ({when}).")
            else:
                verb = "rose" if c["direction"] == "up" else "fell"
                out.append(f"{label} {verb} from {format_value(before, k['fmt'])} to {now_txt} "
                           f"({c['text']}) since the previous run ({when}).")
        return out

    def summary_html(self) -> str:
        prev = self.previous(1)
        last = prev[0]["metrics"] if prev else {}
        items = "".join(f"<li>{escape(f)}</li>" for f in self.findings)
        items += "".join(f'<li class="crm-delta">{escape(s)}</li>' for s in self.change_sentences())
        from crmlab.charts import sparkline

        cards = []
        for k in self.kpis:
            c = change(k["value"], last.get(k["key"]), k["better"], k["fmt"])
            if c is None:
                move = '<span class="crm-flat">no earlier run</span>' if not prev else ""
            else:
                move = (f'<span class="crm-{c["tone"]}">{ARROWS[c["direction"]]} {escape(c["text"])}'
                        f'</span> <span class="crm-flat">vs previous run</span>')
            trend = list(self.history(k["key"]).to_numpy())
            if isinstance(k["value"], (int, float)) and not isinstance(k["value"], bool):
                trend.append(float(k["value"]))
            spark = sparkline(trend, label=f"{k['label']} over recent runs")
            cards.append(
                f'<div class="crm-kpi"><div class="crm-kpi-label">{escape(k["label"])}</div>'
                f'<div class="crm-kpi-value">{escape(format_value(k["value"], k["fmt"]))}</div>'
                f'<div class="crm-kpi-change">{move}</div>{spark}</div>')
        body = f'<ul class="crm-findings">{items}</ul>' if items else ""
        kpis = f'<div class="crm-kpis">{"".join(cards)}</div>' if cards else ""
        return f'<section class="crm-summary"><h2>What changed</h2>{body}{kpis}</section>'

    def summary(self) -> None:
        """Show "What changed" (the findings, then each KPI's change since the
        previous successful run) and the KPI cards with sparklines. The
        notebook tags this cell ``summary``; the page shows it on top."""
        self.save()
        _display(self.summary_html())

    def table_html(self, df: pd.DataFrame, **kwargs) -> str:
        """:func:`table_html` with this report's audience and as-of date."""
        kwargs.setdefault("as_of", self.as_of)
        return table_html(df, audience=self.audience, **kwargs)

    def table(self, df: pd.DataFrame, **kwargs) -> None:
        """Show a masked, escaped table; keywords as :func:`table_html`
        (``count_col=`` merges groups under the minimum size)."""
        _display(self.table_html(df, **kwargs))

    def section_html(self, title: str, text: str | None = None, *, figure=None,
                     table: pd.DataFrame | None = None, note: str | None = None,
                     table_options: dict | None = None, figure_format: str = "png") -> str:
        from crmlab.charts import figure_html

        parts = [f"<h2>{escape(title)}</h2>"]
        if figure is not None:
            parts.append(figure_html(figure, fmt=figure_format, alt=title))
        if table is not None:
            parts.append(self.table_html(table, **(table_options or {})))
        parts.append(_paragraphs(text))
        parts.append(_paragraphs(note, "crm-note"))
        return f'<section class="crm-section">{"".join(parts)}</section>'

    def section(self, title: str, text: str | None = None, *, figure=None,
                table: pd.DataFrame | None = None, note: str | None = None,
                table_options: dict | None = None, figure_format: str = "png") -> None:
        """Show one section: its chart (a matplotlib figure, inlined and
        closed) and/or table, and the paragraph that says what it means and
        what to do. ``table_options`` go to :meth:`table_html`."""
        _display(self.section_html(title, text, figure=figure, table=table, note=note,
                                   table_options=table_options, figure_format=figure_format))

    def not_available(self, title: str, needs, reason: str | None = None) -> None:
        """Show the visible "Not available: needs X" note of a section whose
        data is missing (``needs="tickets.satisfaction"`` or a list)."""
        needs = [needs] if isinstance(needs, str) else list(needs)
        self.metrics.setdefault("_not_available", [])
        self.metrics["_not_available"] = sorted(set(self.metrics["_not_available"]) | {title})
        extra = f" {escape(reason)}" if reason else ""
        _display(f'<section class="crm-section"><h2>{escape(title)}</h2><p class="crm-na">'
                 f'Not available: needs {escape(", ".join(needs))}.{extra}</p></section>')

    # -- files --------------------------------------------------------------
    def export(self, name: str, df: pd.DataFrame, *, mask: bool = True) -> Path:
        """Write ``exports/<name>.csv`` (UTF-8, no index). Personal columns
        are masked for the stakeholder audience unless ``mask=False``."""
        safe = re.sub(r"[^A-Za-z0-9_.\-]", "_", str(name)).strip("._") or "export"
        out_dir = self.run_dir / "exports"
        out_dir.mkdir(parents=True, exist_ok=True)
        frame = mask_frame(df, self.audience, as_of=self.as_of) if mask else df
        path = out_dir / f"{safe}.csv"
        tmp = out_dir / f".{safe}.csv.tmp"
        write_csv(frame, tmp)
        os.replace(tmp, path)
        return path

    def save(self) -> None:
        """Write ``metrics.json`` and ``kpis.json`` (atomically, JSON-safe);
        a file whose text has not changed since this report last wrote it is
        not written again (a metric that is no KPI leaves ``kpis.json``)."""
        for name, obj in (("metrics.json", self.metrics), ("kpis.json", self.kpis)):
            path, text = self.run_dir / name, json_text(obj)
            if self._saved.get(name) != text or not path.exists():
                write_json(path, obj, text=text)
                self._saved[name] = text

    def rerun_command(self) -> str:
        """The ``crmlab run`` command that reproduces this page."""
        cmd = ["crmlab", "run", self.report]
        for key, value in self.params.items():
            if key in ("run_dir",) or value in (None, ""):
                continue
            if key == "audience" and value == "stakeholder":
                continue
            if key in ("source", "mapping", "audience"):
                cmd += [f"--{key}", redact_url(value) if key == "source" else str(value)]
            else:
                text = json.dumps(jsonable(value), ensure_ascii=False) if isinstance(
                    value, (list, dict, bool)) else str(value)
                if isinstance(value, bool):
                    text = text.lower()
                cmd += ["-p", f"{key}={text}"]
        return shlex.join(cmd)

    def footer_html(self) -> str:
        from crmlab.runner import code_version

        def shown(key, value):
            if key == "source":
                return redact_url(value)
            if isinstance(value, (list, dict)):
                return json.dumps(jsonable(value), ensure_ascii=False)
            return value

        rows = "".join(f"<tr><th>{escape(k)}</th><td><code>{escape(shown(k, v))}</code></td></tr>"
                       for k, v in self.params.items() if k != "run_dir")
        code = code_version()
        version = escape(code.get("version", ""))
        if code.get("git_sha"):
            version += f" (git {escape(code['git_sha'][:10])}{', modified' if code.get('dirty') else ''})"
        info = self.source_info
        facts = [f"<tr><th>source fingerprint</th><td><code>{escape(info.get('fingerprint') or 'unknown')}</code></td></tr>"]
        if info.get("extracted_at"):
            facts.append(f"<tr><th>data extracted</th><td>{escape(str(info['extracted_at'])[:19])}</td></tr>")
        facts.append(f"<tr><th>crmlab version</th><td>{version}</td></tr>")
        facts.append(f"<tr><th>run directory</th><td><code>{escape(self.run_dir.name)}</code></td></tr>")
        return (f'<footer class="crm-footer"><h2>About this report</h2>'
                f'<table>{rows}{"".join(facts)}</table>'
                f'<p>To run it again: <code>{escape(self.rerun_command())}</code></p></footer>')

    def footer(self) -> None:
        """Save ``metrics.json`` / ``kpis.json`` and show the footer:
        parameters, source fingerprint, code version, how to rerun."""
        self.save()
        _display(self.footer_html())
