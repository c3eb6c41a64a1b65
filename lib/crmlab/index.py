"""``reports/index.html``: every report at a glance.

For each report of ``config.REPORTS``: the latest run's status and time
(failed runs show as failed), the key figures of the latest successful run
with their change since the successful run before it, a link to
``latest.html`` and the history of runs, newest first, each linking to its
own ``report.html``. The page is one self-contained file (the report theme's
CSS inline, no scripts), every value escaped.

The scheduler's hook: when ``reports/_schedule/state.json`` exists, a
"Schedule" section shows each job's next run, last outcome and the open
alerts. The expected shape (extra keys are ignored)::

    {"updated_at": "...",
     "jobs": [{"name": "daily-segmentation", "report": "segmentation",
               "cron": "0 6 * * *", "next_run": "...", "last_run": "...",
               "last_status": "success", "last_exit_code": 0}],
     "alerts": [{"job": "...", "report": "...", "since": "...", "message": "..."}]}

``jobs`` may also be a mapping ``name -> job``.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from pathlib import Path
from urllib.parse import quote

from crmlab import config
from crmlab.charts import sparkline
from crmlab.privacy import escape
from crmlab.report import (ARROWS, change, format_value, list_runs, read_json, report_title)

SCHEDULE_STATE = Path("_schedule") / "state.json"
HISTORY_SHOWN = 10  # runs listed openly; older ones fold into "older runs"
CSS_PATH = Path(__file__).resolve().parent / "templates" / "crmlab" / "static" / "crmlab.css"


def _when(stamp) -> str:
    if not stamp:
        return "–"
    try:
        t = dt.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return str(stamp)
    if t.tzinfo is not None:
        t = t.astimezone(dt.timezone.utc)
    return t.strftime("%Y-%m-%d %H:%M UTC")


def _pill(status: str) -> str:
    status = str(status or "unknown")
    return f'<span class="crm-pill {escape(status)}">{escape(status.replace("_", " "))}</span>'


def _last_event(report_dir: Path) -> dict | None:
    """The newest line of ``events.jsonl`` (refused or skipped runs)."""
    import json

    path = report_dir / "events.jsonl"
    if not path.exists():
        return None
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 8192))
        lines = [l for l in f.read().decode("utf-8", "replace").splitlines() if l.strip()]
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def _run_status(run: dict, report: str, root: Path) -> str:
    """A run's status; a "running" run whose lock is free was abandoned
    (its runner was killed)."""
    status = run.get("status", "unknown")
    if status == "running":
        from crmlab.locks import holder

        lock = holder(report, root)
        if not lock or lock.get("run_id") not in (None, run.get("run_id")):
            return "abandoned"
    return status


def _kpi_cards(successes: list[dict]) -> str:
    if not successes:
        return ""
    latest = successes[0]
    before = read_json(successes[1]["_dir"] / "metrics.json", {}) if len(successes) > 1 else {}
    if len(successes) > 1 and not before:
        before = {k["key"]: k.get("value") for k in successes[1].get("kpis") or []}
    cards = []
    for k in latest.get("kpis") or []:
        key, fmt, better = k.get("key"), k.get("fmt"), k.get("better")
        c = change(k.get("value"), before.get(key), better, fmt) if before else None
        move = (f'<span class="crm-{c["tone"]}">{ARROWS[c["direction"]]} {escape(c["text"])}</span>'
                if c else '<span class="crm-flat">no earlier run</span>')
        trend = []
        for run in reversed(successes[:26]):
            value = next((x.get("value") for x in run.get("kpis") or [] if x.get("key") == key), None)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                trend.append(value)
        label = str(k.get("label") or key)
        cards.append(f'<div class="crm-kpi"><div class="crm-kpi-label">{escape(label)}</div>'
                     f'<div class="crm-kpi-value">{escape(format_value(k.get("value"), fmt))}</div>'
                     f'<div class="crm-kpi-change">{move}</div>'
                     f'{sparkline(trend, label=f"{label} over recent runs")}</div>')
    return f'<div class="crm-kpis">{"".join(cards)}</div>' if cards else ""


def _history(report: str, runs: list[dict], root: Path) -> str:
    if not runs:
        return ""
    rows = []
    for run in runs:
        d = run["_dir"]
        status = _run_status(run, report, root)
        href = f"{quote(report)}/{quote(d.name)}/report.html"
        link = (f'<a href="{escape(href)}">{escape(_when(run.get("started_at")))}</a>'
                if (d / "report.html").exists() else escape(_when(run.get("started_at"))))
        seconds = run.get("duration_s")
        err = run.get("error") or {}
        where = f"cell {err['cell']}: " if err.get("cell") else ""
        detail = f"{where}{err.get('ename') or ''}" if err else ""
        rows.append(f"<tr><td>{link}</td><td>{_pill(status)}</td>"
                    f"<td class=\"num\">{escape(f'{seconds:.1f} s' if isinstance(seconds, (int, float)) else '–')}</td>"
                    f"<td>{escape(run.get('trigger') or '')}</td><td>{escape(run.get('audience') or '')}</td>"
                    f"<td>{escape(detail)}</td></tr>")
    head = "<tr><th>run</th><th>status</th><th class=\"num\">time</th><th>trigger</th><th>audience</th><th>note</th></tr>"
    shown = f'<table class="crm-table">{head}{"".join(rows[:HISTORY_SHOWN])}</table>'
    older = ""
    if len(rows) > HISTORY_SHOWN:
        older = (f"<details><summary>{len(rows) - HISTORY_SHOWN} older runs</summary>"
                 f'<table class="crm-table">{head}{"".join(rows[HISTORY_SHOWN:])}</table></details>')
    plural = "s" if len(runs) != 1 else ""
    return (f"<details open><summary>History ({len(runs)} run{plural}, newest first)</summary>"
            f"{shown}{older}</details>")


def report_card(report: str, root: Path) -> str:
    """The index's block for one report."""
    rd = root / report
    runs = list_runs(rd)
    successes = [r for r in runs if r.get("status") == "success"]
    title = escape(report_title(report))
    if runs:
        latest = runs[0]
        status = _run_status(latest, report, root)
        line = f"Last run {escape(_when(latest.get('started_at')))} {_pill(status)}"
        err = latest.get("error") or {}
        if status != "success" and err:
            where = f" at cell {err['cell']}" if err.get("cell") else ""
            line += (f' <span class="crm-note">failed{escape(where)}: '
                     f'{escape(err.get("ename") or "")} {escape(err.get("evalue") or "")}</span>')
    else:
        line = '<span class="crm-note">Not run yet.</span>'
    event = _last_event(rd)
    if event and (not runs or str(event.get("time", "")) > str(runs[0].get("started_at", ""))):
        line += (f'<br><span class="crm-note">Latest attempt {escape(_when(event.get("time")))}: '
                 f'{_pill(event.get("status"))} {escape(event.get("message", ""))}</span>')
    latest_link = ""
    if (rd / "latest.html").exists():
        when = _when(successes[0].get("started_at")) if successes else ""
        latest_link = (f'<p><a class="crm-latest" href="{escape(quote(report))}/latest.html">'
                       f'Open the latest successful report</a> <span class="crm-note">{escape(when)}</span></p>')
    return (f'<section class="crm-report" id="{escape(report)}"><h2>{title}</h2>'
            f'<p class="crm-meta">{line}</p>{latest_link}{_kpi_cards(successes)}{_history(report, runs, root)}'
            f"</section>")


def _local_note(job: dict) -> str:
    """The next run in the job's own zone, under the UTC time (when the
    scheduler recorded it as ``next_run_local``)."""
    local = job.get("next_run_local")
    return f'<br><span class="crm-note">{escape(local)}</span>' if local else ""


def schedule_section(state: dict) -> str:
    """The scheduler's block: jobs (next run, last outcome) and open alerts."""
    jobs = state.get("jobs") or []
    if isinstance(jobs, dict):
        jobs = [dict(v, name=v.get("name", k)) for k, v in jobs.items()]
    rows = "".join(
        f"<tr><td>{escape(j.get('name'))}</td><td>{escape(j.get('report'))}</td>"
        f"<td><code>{escape(j.get('cron') or j.get('schedule') or '')}</code></td>"
        f"<td>{escape(_when(j.get('next_run')))}{_local_note(j)}</td><td>{escape(_when(j.get('last_run')))}</td>"
        f"<td>{_pill(j.get('last_status')) if j.get('last_status') else '–'}</td></tr>"
        for j in jobs if isinstance(j, dict))
    table = ("<table class=\"crm-table\"><tr><th>job</th><th>report</th><th>when</th><th>next run</th>"
             f"<th>last run</th><th>last outcome</th></tr>{rows}</table>") if rows else \
        '<p class="crm-note">No scheduled jobs.</p>'
    alerts = [a for a in state.get("alerts") or [] if isinstance(a, dict)]
    alert_html = ("<h3>Open alerts</h3><ul>" + "".join(
        f"<li><strong>{escape(a.get('job') or a.get('report') or '')}</strong> "
        f"since {escape(_when(a.get('since')))}: {escape(a.get('message') or '')}</li>" for a in alerts)
        + "</ul>") if alerts else '<p class="crm-note">No open alerts.</p>'
    updated = f' <span class="crm-note">updated {escape(_when(state.get("updated_at")))}</span>' \
        if state.get("updated_at") else ""
    return f'<section class="crm-schedule"><h2>Schedule{updated}</h2>{table}{alert_html}</section>'


def build_index(reports_dir=None) -> Path:
    """Write ``reports/index.html`` (atomically) and return its path.

    Parameters
    ----------
    reports_dir : path, optional
        The reports tree (default ``config.reports_dir()``).

    Returns
    -------
    Path

    Examples
    --------
    >>> build_index("/tmp/crmlab-doc-reports").name     # doctest: +SKIP
    'index.html'
    """
    root = config.reports_dir(reports_dir)
    root.mkdir(parents=True, exist_ok=True)
    cards = "".join(report_card(r, root) for r in config.REPORTS)
    state = read_json(root / SCHEDULE_STATE, None)
    schedule = schedule_section(state) if isinstance(state, dict) else ""
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    css = CSS_PATH.read_text(encoding="utf-8")
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<meta name="generator" content="crmlab">
<link rel="icon" href="data:,">
<title>crmlab reports</title>
<style type="text/css">
{css}
</style>
</head>
<body class="crm-page crm-index">
<main class="crm-main">
<header class="crm-header"><h1>crmlab reports</h1>
<div class="crm-meta"><span>{len(config.REPORTS)} reports</span><span>index built {escape(now)}</span></div>
</header>
{schedule}
{cards}
<footer class="crm-footer"><p>Each report's latest page is replaced only by a successful run; a failed
run keeps its own page in its run directory. Rebuild this page with <code>crmlab index</code>.</p></footer>
</main>
</body>
</html>
"""
    out = root / "index.html"
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".index.html.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(page)
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)
    return out
