"""reports/index.html (crmlab.index), built from run directories written by
hand: statuses, key figures and their change, links, history, the
scheduler's section, escaping."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from crmlab import config
from crmlab.index import build_index
from crmlab.report import write_json


def _run(reports, report, run_id, status, kpis=(), metrics=None, error=None, page=True):
    d = reports / report / run_id
    d.mkdir(parents=True)
    stamp = f"{run_id[:4]}-{run_id[4:6]}-{run_id[6:8]}T{run_id[9:11]}:{run_id[11:13]}:00+00:00"
    write_json(d / "run.json", {"report": report, "run_id": run_id, "status": status, "started_at": stamp,
                                "finished_at": stamp, "duration_s": 12.5, "trigger": "schedule",
                                "audience": "stakeholder", "kpis": list(kpis), "error": error})
    write_json(d / "metrics.json", metrics or {k["key"]: k["value"] for k in kpis})
    if page:
        (d / "report.html").write_text("<html></html>")
    return d


def _kpi(key, value, fmt="{:,.0f}", better="higher", label=None):
    return {"key": key, "label": label or key, "value": value, "fmt": fmt, "better": better}


@pytest.fixture
def reports(tmp_path, monkeypatch):
    monkeypatch.setenv("CRMLAB_REPORTS_DIR", str(tmp_path / "reports"))
    r = tmp_path / "reports"
    _run(r, "segmentation", "20260101T060000Z-aaaa", "success",
         [_kpi("customers", 1000), _kpi("churn", 0.20, "{:.1%}", "lower", "Churn rate")])
    _run(r, "segmentation", "20260102T060000Z-bbbb", "success",
         [_kpi("customers", 1100), _kpi("churn", 0.25, "{:.1%}", "lower", "Churn rate")])
    _run(r, "segmentation", "20260103T060000Z-cccc", "failed",
         error={"cell": 7, "ename": "KeyError", "evalue": "<script>alert(1)</script>"})
    (r / "segmentation" / "latest.html").write_text("<html></html>")
    return r


def _section(html, report):
    start = html.index(f'id="{report}"')
    nxt = html.find('<section class="crm-report"', start)
    return html[start:nxt if nxt > 0 else None]


def test_index_lists_every_report_with_status_figures_and_history(reports):
    html = build_index().read_text(encoding="utf-8")
    assert [m for m in re.findall(r'<section class="crm-report" id="([^"]+)"', html)] == list(config.REPORTS)
    seg = _section(html, "segmentation")
    # the latest run failed: shown as failed, with its cell and an escaped message
    assert "Last run 2026-01-03 06:00 UTC" in seg and "crm-pill failed" in seg and "failed at cell 7" in seg
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in seg
    # key figures of the latest successful run, with the change since the one before
    assert ">1,100<" in seg and "+10.0%" in seg and "25.0%" in seg and "+5.0 pts" in seg
    assert re.search(r'crm-good">[^<]*\+10\.0%', seg) and re.search(r'crm-bad">[^<]*\+5\.0 pts', seg)
    # links: latest and each run's page, newest first
    assert 'href="segmentation/latest.html"' in seg
    links = re.findall(r'href="(segmentation/[^"]+/report.html)"', seg)
    assert links == [f"segmentation/{i}/report.html" for i in
                     ("20260103T060000Z-cccc", "20260102T060000Z-bbbb", "20260101T060000Z-aaaa")]
    assert "Not run yet." in _section(html, "campaigns")
    assert "<script" not in html and not re.search(r"""(?:src|href)=["']?https?:""", html)


def test_older_runs_fold_away_and_a_page_less_run_has_no_link(reports):
    for day in range(4, 16):
        _run(reports, "lifecycle", f"202601{day:02d}T060000Z-{day:04x}", "success", [_kpi("clv", day)])
    _run(reports, "lifecycle", "20260120T060000Z-ffff", "timeout", page=False)
    html = _section(build_index(reports).read_text(encoding="utf-8"), "lifecycle")
    assert "History (13 runs, newest first)" in html and "3 older runs" in html
    assert "20260120T060000Z-ffff/report.html" not in html and "crm-pill timeout" in html


def test_a_running_run_whose_runner_died_is_abandoned(reports):
    _run(reports, "campaigns", "20260105T060000Z-dead", "running")
    html = _section(build_index(reports).read_text(encoding="utf-8"), "campaigns")
    assert "crm-pill abandoned" in html
    # while a live process holds the lock, it is running
    code = ("import sys, time\nfrom crmlab.locks import report_lock\n"
            "with report_lock('campaigns', sys.argv[1], run_id='20260105T060000Z-dead'):\n"
            "    print('locked', flush=True); time.sleep(30)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(reports)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        html = _section(build_index(reports).read_text(encoding="utf-8"), "campaigns")
        assert "crm-pill running" in html
    finally:
        holder.kill()
        holder.wait()


def test_refused_attempts_after_the_last_run_are_shown(reports):
    with open(reports / "segmentation" / "events.jsonl", "w") as f:
        f.write(json.dumps({"time": "2026-01-04T06:00:00+00:00", "status": "skipped", "exit_code": 5,
                            "message": "report segmentation is already running (pid 42)"}) + "\n")
    seg = _section(build_index(reports).read_text(encoding="utf-8"), "segmentation")
    assert "Latest attempt 2026-01-04 06:00 UTC" in seg and "crm-pill skipped" in seg


def test_schedule_state_hook(reports):
    state = {"updated_at": "2026-01-04T05:00:00+00:00",
             "jobs": {"daily-seg": {"report": "segmentation", "cron": "0 6 * * *",
                                    "next_run": "2026-01-05T06:00:00+00:00", "last_status": "failed"}},
             "alerts": [{"job": "daily-seg", "since": "2026-01-03T06:05:00+00:00",
                         "message": "failed twice in a row <b>"}]}
    write_json(reports / "_schedule" / "state.json", state)
    html = build_index(reports).read_text(encoding="utf-8")
    sched = html[html.index('class="crm-schedule"'):html.index('id="data-quality"')]
    assert "daily-seg" in sched and "0 6 * * *" in sched and "2026-01-05 06:00 UTC" in sched
    assert "crm-pill failed" in sched and "failed twice in a row &lt;b&gt;" in sched
    assert "_schedule" not in _section(html, "segmentation")
    (reports / "_schedule" / "state.json").unlink()
    assert 'class="crm-schedule"' not in build_index(reports).read_text(encoding="utf-8")


def test_index_is_replaced_atomically(reports):
    path = build_index(reports)
    assert path == reports / "index.html" and oct(path.stat().st_mode & 0o777) == "0o644"
    assert not list(reports.glob(".index.html.*"))
