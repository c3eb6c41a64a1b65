"""The runner: parameters, lock, source check, execution in a child process,
rendering, publishing (DESIGN.md "What one run leaves behind").

Notebook runs are the slow part (a kernel each), so the runs are shared:
``history`` runs the ``ok`` notebook twice and then a ``broken`` one under
the same report name, and several tests read what those three runs left.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "notebooks"))
from testkit import crmlab, env_for, make_project, pid_alive, run_dirs, tiny_source, wait_for  # noqa: E402

import crmlab as crmlab_pkg  # noqa: E402
from crmlab import locks, runner  # noqa: E402
from crmlab.exceptions import RunLocked  # noqa: E402
from crmlab.runner import RunResult, exit_code_of, run_report  # noqa: E402


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project whose five reports are the test notebooks; a tiny source."""
    root = make_project(tmp_path / "project", {"segmentation": "ok", "lifecycle": "ok",
                                               "forecasting": "no_data", "campaigns": "slow",
                                               "data-quality": "broken"})
    reports = tmp_path / "reports"
    monkeypatch.setenv("CRMLAB_HOME", str(root))
    monkeypatch.setenv("CRMLAB_REPORTS_DIR", str(reports))
    return SimpleNamespace(root=root, reports=reports, source=tiny_source(tmp_path / "src"), tmp=tmp_path)


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """Two good runs of one report, then a failing one."""
    tmp = tmp_path_factory.mktemp("history")
    root = make_project(tmp / "project", {"segmentation": "ok"})
    reports = tmp / "reports"
    source = tiny_source(tmp / "src")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CRMLAB_HOME", str(root))
        mp.setenv("CRMLAB_REPORTS_DIR", str(reports))
        first = run_report("segmentation", source=str(source), params={"n": "4"})
        second = run_report("segmentation", source=str(source), params={"n": 5})
        latest = reports / "segmentation" / "latest.html"
        latest_before = latest.read_bytes()
        make_project(root, {"segmentation": "broken"})
        failed = run_report("segmentation", source=str(source))
        yield SimpleNamespace(first=first, second=second, failed=failed, reports=reports, source=source,
                              latest_before=latest_before, latest_after=latest.read_bytes())


def _json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


# -- what a successful run leaves behind --------------------------------------

def test_success_run_leaves_what_design_says(history):
    r = history.first
    assert (r.status, r.exit_code, r.error) == ("success", 0, None)
    names = {p.name for p in r.run_dir.iterdir()}
    assert {"report.html", "notebook.ipynb", "metrics.json", "run.json", "exports"} <= names
    assert names <= {"report.html", "notebook.ipynb", "metrics.json", "run.json", "exports", "kpis.json"}
    metrics = _json(r.run_dir / "metrics.json")
    assert metrics["customers"] == 400 and metrics["churn_rate"] == pytest.approx(0.14)
    assert (r.run_dir / "exports" / "customers.csv").read_text(encoding="utf-8").startswith("city,customers")
    assert r.run_dir.parent == history.reports / "segmentation"


def test_run_json_is_a_complete_manifest(history):
    r = history.first
    doc = _json(r.run_dir / "run.json")
    assert doc["report"] == "segmentation" and doc["run_id"] == r.run_dir.name
    assert (doc["status"], doc["exit_code"], doc["error"]) == ("success", 0, None)
    assert doc["trigger"] == "cli" and doc["audience"] == "stakeholder"
    assert doc["started_at"] < doc["finished_at"] and doc["duration_s"] > 0
    assert doc["timings"]["execute_s"] > 0 and doc["timings"]["render_s"] > 0
    # effective parameters: defaults, the -p value converted to int, the injected run_dir
    assert doc["params"]["n"] == 4 and doc["params"]["ratio"] == 0.5 and doc["params"]["flag"] is False
    assert doc["params"]["run_dir"] == str(r.run_dir) and doc["params"]["source"] == str(history.source)
    src = doc["source"]
    assert src["kind"] == "files" and src["checked"] is True and len(src["fingerprint"]) >= 8
    assert src["encodings"] == {"orders": "utf-8"} and src["extracted_at"]
    assert doc["row_counts"]["orders"] == 3 and doc["quarantined"]["orders"] == 0
    assert doc["code_version"]["version"] == crmlab_pkg.__version__
    assert {"pandas", "numpy", "duckdb", "papermill", "nbconvert", "statsmodels"} <= set(doc["packages"])
    assert [k["key"] for k in doc["kpis"]] == ["customers", "churn_rate"]
    assert doc["kpis"][0]["value"] == 400 and doc["kpis"][1]["better"] == "lower"


def test_run_ids_sort_by_time(history):
    ids = [history.first.run_id, history.second.run_id, history.failed.run_id]
    assert ids == sorted(ids)
    assert all(len(i.split("-")[0]) == 16 and i.split("-")[0].endswith("Z") for i in ids)


def test_page_has_no_code_and_reads_header_then_summary(history):
    html = (history.second.run_dir / "report.html").read_text(encoding="utf-8")
    for absent in ("rep.metric(", "import sys", "STDERR-NOISE-LINE", "WARNING-NOISE-LINE",
                   "injected-parameters", "celltag_parameters", "In&nbsp;[", "Passed unknown",
                   "A tiny notebook for the runner", "<!--crmlab:status-->"):
        assert absent not in html, absent
    order = [html.index(s) for s in ('class="crm-header"', "What changed", "NARRATIVE-MARKDOWN-CELL",
                                     "Customers by city", 'class="crm-footer"')]
    assert order == sorted(order), "the summary cell is moved up to just after the header"
    assert "Active customers rose from 400 to 500 (+25.0%)" in html
    assert "Churn rate rose from 14.0% to 15.0% (+1.0 pts)" in html
    assert '<span class="crm-pill success">success</span>' in html
    assert "There are 500 active customers." in html


def test_page_is_self_contained(history):
    html = (history.second.run_dir / "report.html").read_text(encoding="utf-8")
    assert "<script" not in html
    for remote in ('src="http', "src='http", 'href="http', "@import", "url(http", "cdnjs", "require.js"):
        assert remote not in html, remote
    assert 'src="data:image/png;base64,' in html and ".crm-kpi" in html  # chart and theme inline


def test_latest_is_the_last_successful_page(history):
    latest = history.reports / "segmentation" / "latest.html"
    page = (history.second.run_dir / "report.html").read_text(encoding="utf-8")
    assert latest.read_text(encoding="utf-8") == page.replace('href="../../index.html"', 'href="../index.html"')
    assert not (history.reports / "segmentation" / "latest.html.tmp").exists()


def test_failed_run_keeps_latest_and_says_where_it_failed(history):
    r = history.failed
    assert (r.status, r.exit_code) == ("failed", 1)
    assert r.error["cell"] == 5 and r.error["ename"] == "ValueError"
    assert "BROKEN-ON-PURPOSE" in r.error["evalue"]
    doc = _json(r.run_dir / "run.json")
    assert doc["status"] == "failed" and doc["exit_code"] == 1 and doc["error"]["cell"] == 5
    html = (r.run_dir / "report.html").read_text(encoding="utf-8")
    assert "This run failed at cell 5." in html and "ValueError: BROKEN-ON-PURPOSE" in html
    assert html.index("This run failed") < html.index('class="crm-header"')
    assert "Traceback" not in html and "crm-pill failed" in html
    assert history.latest_after == history.latest_before, "a failed run never touches latest.html"
    # the figures recorded before the failure are kept
    assert _json(r.run_dir / "metrics.json") == {"customers": 300}


def test_index_shows_the_failure_and_the_history(history):
    index = (history.reports / "index.html").read_text(encoding="utf-8")
    section = index[index.index('id="segmentation"'):index.index('id="lifecycle"')]
    assert "crm-pill failed" in section and "failed at cell 5" in section
    links = [f"segmentation/{r.run_id}/report.html" for r in (history.failed, history.second, history.first)]
    positions = [section.index(link) for link in links]
    assert positions == sorted(positions), "history newest first"
    assert 'href="segmentation/latest.html"' in section


# -- audiences, exit codes ---------------------------------------------------

def test_analyst_page_keeps_code_and_does_not_publish(project):
    r = run_report("lifecycle", source=str(project.source), audience="analyst")
    assert r.status == "success"
    html = (r.run_dir / "report.html").read_text(encoding="utf-8")
    code = re.sub(r"<[^>]+>", "", html)  # the code is highlighted span by span
    assert 'rep.metric("customers"' in html.replace("&quot;", '"') or 'rep.metric("customers"' in code
    assert "jp-InputArea-editor" in html
    assert not (project.reports / "lifecycle" / "latest.html").exists()
    assert _json(r.run_dir / "run.json")["audience"] == "analyst"


def test_no_data_raised_in_the_notebook_exits_3(project):
    r = run_report("forecasting", source=str(project.source))
    assert (r.status, r.exit_code, r.error["ename"]) == ("no_data", 3, "NoDataError")
    assert "no data" in (r.run_dir / "report.html").read_text(encoding="utf-8")
    assert not (project.reports / "forecasting" / "latest.html").exists()


def test_timeout_stops_the_notebook_and_its_kernel(project):
    pid_file = project.tmp / "kernel.pid"
    r = run_report("campaigns", source=str(project.source), params={"pid_file": str(pid_file)}, timeout=20)
    assert (r.status, r.exit_code) == ("timeout", 4)
    assert pid_file.exists(), "the kernel started and reached the sleeping cell within the time limit"
    kernel = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while pid_alive(kernel) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(kernel), "no kernel is left behind"
    doc = _json(r.run_dir / "run.json")
    assert doc["status"] == "timeout" and doc["exit_code"] == 4
    assert "time limit" in (r.run_dir / "report.html").read_text(encoding="utf-8")
    assert locks.holder("campaigns") is None


def test_sigterm_interrupts_cleanly(project):
    pid_file = project.tmp / "kernel.pid"
    latest = project.reports / "campaigns" / "latest.html"
    latest.parent.mkdir(parents=True)
    latest.write_bytes(b"<html>the last good page</html>")
    proc = subprocess.Popen([sys.executable, "-m", "crmlab.cli", "run", "campaigns", "--source",
                             str(project.source), "-p", f"pid_file={pid_file}"],
                            env=env_for(project.root, project.reports), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(pid_file, 120), "the notebook reached its sleeping cell"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    run_dir = Path(out.strip().splitlines()[-1])
    doc = _json(run_dir / "run.json")
    assert doc["status"] == "interrupted" and doc["exit_code"] == 143
    assert not pid_alive(int(pid_file.read_text()))
    assert latest.read_bytes() == b"<html>the last good page</html>"
    assert locks.holder("campaigns") is None
    with locks.report_lock("campaigns"):
        pass


# -- locks -------------------------------------------------------------------

_HOLD = ("import sys, time\nfrom crmlab.locks import report_lock\n"
         "with report_lock('segmentation', sys.argv[1], run_id='holder-run'):\n"
         "    print('locked', flush=True)\n    time.sleep(float(sys.argv[2]))\n")


def _holder(reports: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(reports), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_is_skipped_while_one_runs(project):
    holder = _holder(project.reports, 60)
    try:
        r = run_report("segmentation", source=str(project.source))
        assert (r.status, r.exit_code, r.run_dir) == ("skipped", 5, None)
        assert f"pid {holder.pid}" in r.message and "holder-run" in r.message
        assert run_dirs(project.reports, "segmentation") == []
        events = (project.reports / "segmentation" / "events.jsonl").read_text().splitlines()
        assert json.loads(events[-1])["status"] == "skipped"
        assert locks.holder("segmentation")["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_dead_process_is_free(project):
    holder = _holder(project.reports, 60)
    holder.send_signal(signal.SIGKILL)  # no clean-up at all
    holder.wait()
    path = locks.lock_path("segmentation")
    assert path.exists() and str(holder.pid) in path.read_text()
    assert locks.holder("segmentation") is None
    with locks.report_lock("segmentation", run_id="next") as lock:
        assert json.loads(path.read_text())["run_id"] == "next" and lock.fd > 0
        with pytest.raises(RunLocked):
            with locks.report_lock("segmentation"):
                pass


# -- parameters --------------------------------------------------------------

def test_known_parameters_reads_types_defaults_and_help(project):
    known = runner.known_parameters("segmentation")
    assert {k: v["type"] for k, v in known.items()} == {
        "source": "str", "mapping": "str", "as_of": "str", "run_dir": "str", "audience": "str",
        "n": "int", "ratio": "float", "flag": "bool", "items": "list", "opts": "dict"}
    assert known["n"]["default"] == 3 and known["opts"]["default"] == {}
    # a comment holding "=" is read (papermill's own inspector skips such lines)
    assert known["mapping"]["help"] == "mapping YAML for a foreign export; empty = none"


def test_parse_parameters_cell_handles_untyped_and_multiline():
    known = runner.parse_parameters_cell(
        'a = 1  # untyped int\nb: "list[str]" = ["x"]\nc: dict = {\n    "k": 1,\n}  # on the last line\n'
        'd: float | None = None  # optional\n')
    assert known["a"] == {"type": "int", "default": 1, "help": "untyped int"}
    assert known["b"]["type"] == "list" and known["c"] == {"type": "dict", "default": {"k": 1},
                                                          "help": "on the last line"}
    assert known["d"]["type"] == "float"


def test_parameters_merge_defaults_files_then_p(project):
    f1 = project.tmp / "one.yaml"
    f1.write_text("n: 7\nratio: 0.25\nas_of: 2026-06-30\n")
    named = project.root / "parameters" / "segmentation"
    named.mkdir(parents=True)
    (named / "monthly.yaml").write_text("n: 8\nitems: [north, south]\n")
    values = runner.resolve_parameters("segmentation", param_files=[f1, "monthly"],
                                       params={"n": "9", "flag": "yes", "opts": "{k: 1}", "ratio": "1"})
    assert values["n"] == 9 and values["ratio"] == 1.0 and isinstance(values["ratio"], float)
    assert values["as_of"] == "2026-06-30", "a YAML date for a str parameter becomes its ISO text"
    assert values["items"] == ["north", "south"] and values["opts"] == {"k": 1} and values["flag"] is True
    assert values["source"] == "fake:ok" and values["audience"] == "stakeholder"


def test_unknown_and_mistyped_parameters_are_refused_before_anything_runs(project):
    r = run_report("segmentation", source=str(project.source),
                   params={"nn": "1", "n": "abc", "flag": "maybe", "items": "x", "run_dir": "/tmp/x"})
    assert (r.status, r.exit_code, r.run_dir) == ("bad_input", 2, None)
    for text in ("unknown parameter 'nn'", "parameter n expects int, got 'abc'",
                 "parameter flag expects bool", "parameter items expects list",
                 "'run_dir' is set by the runner", "Known parameters of report segmentation",
                 "n: int = 3  # customers in hundreds", "ratio: float = 0.5"):
        assert text in r.message, text
    assert run_dirs(project.reports, "segmentation") == []
    with pytest.raises(ValueError):
        runner.coerce("n", True, "int")
    unknown = run_report("no-such-report")
    assert unknown.exit_code == 2 and "segmentation" in unknown.message


def test_a_broken_source_contract_exits_2_before_a_run_dir(project):
    bad = tiny_source(project.tmp / "bad", columns=("customer_id", "order_date"))
    r = run_report("segmentation", source=str(bad))
    assert (r.status, r.exit_code, r.run_dir) == ("bad_input", 2, None)
    assert "orders" in r.message and "amount" in r.message
    empty = tiny_source(project.tmp / "empty", rows=0)
    r = run_report("segmentation", source=str(empty))
    assert (r.status, r.exit_code, r.run_dir) == ("no_data", 3, None)
    assert run_dirs(project.reports, "segmentation") == []
    events = [json.loads(l) for l in (project.reports / "segmentation" / "events.jsonl").read_text().splitlines()]
    assert [e["status"] for e in events] == ["bad_input", "no_data"]


# -- pure parts --------------------------------------------------------------

def test_worst_exit_code_wins():
    def res(status, code):
        return RunResult("r", None, None, status, code)

    assert exit_code_of([res("success", 0)] * 3) == 0
    assert exit_code_of([res("success", 0), res("skipped", 5), res("no_data", 3)]) == 3
    assert exit_code_of([res("timeout", 4), res("failed", 1), res("skipped", 5)]) == 1
    assert exit_code_of([res("success", 0), res("gated", 6), res("skipped", 5)]) == 6
    assert exit_code_of([res("gated", 6), res("no_data", 3)]) == 3


def test_prepare_notebook_moves_summary_under_header_and_hides_parameters():
    nb = nbformat.v4.new_notebook()

    def cell(src, *tags, kind="code"):
        c = nbformat.v4.new_code_cell(src) if kind == "code" else nbformat.v4.new_markdown_cell(src)
        c.metadata["tags"] = list(tags)
        return c

    nb.cells = [cell("# title", kind="md"), cell("a = 1", "parameters"), cell("a = 2", "injected-parameters"),
                cell("h", "header"), cell("body"), cell("s", "summary"), cell("tail")]
    nb.cells[4].outputs = [nbformat.v4.new_output("stream", name="stderr", text="noise"),
                           nbformat.v4.new_output("stream", name="stdout", text="kept"),
                           nbformat.v4.new_output("execute_result", data={"text/plain": "42"}),
                           nbformat.v4.new_output("display_data", data={"application/javascript": "x()"})]
    out = runner.prepare_notebook(nb, "stakeholder")
    assert [c.source for c in out.cells] == ["h", "s", "body", "tail"]
    assert [o.get("text") for o in out.cells[2].outputs] == ["kept"]
    nb2 = nbformat.v4.new_notebook()
    nb2.cells = [cell("x"), cell("s", "summary")]
    assert [c.source for c in runner.prepare_notebook(nb2, "analyst").cells] == ["s", "x"]


# -- the gate ---------------------------------------------------------------------

def _gate_source(directory: Path, *, extracted: str, bad_rows: int = 0) -> Path:
    """Three good orders (newest 2026-06-03), ``bad_rows`` orders without a
    customer (quarantined), and the file's time set to ``extracted``."""
    src = tiny_source(directory)
    with open(src / "orders.csv", "a", encoding="utf-8") as f:
        for i in range(bad_rows):
            f.write(f",2026-06-0{i + 1},9.5\n")
    stamp = dt.datetime.fromisoformat(extracted).replace(tzinfo=dt.timezone.utc).timestamp()
    os.utime(src / "orders.csv", (stamp, stamp))
    return src


def _fake_quality_run(reports: Path, run_id: str, fingerprint: str, score, status: str = "success") -> Path:
    d = reports / "data-quality" / run_id
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"run_id": run_id, "status": status, "started_at": run_id,
                                            "source": {"fingerprint": fingerprint}}))
    (d / "metrics.json").write_text(json.dumps({"quality_score": score}))
    return d


def test_gate_expressions_use_the_rule_parser_and_refuse_unknown_measures():
    rules = runner.parse_gate(["quality_score >= 95", "orders_age_days <= 2", "quarantined_share < 0.01",
                               "rows_orders >= 3 and quarantined_rows == 0"])
    assert [r.metrics for r in rules] == [("quality_score",), ("orders_age_days",), ("quarantined_share",),
                                          ("quarantined_rows", "rows_orders")]
    for text, says in (("freshness <= 2", "unknown measure 'freshness'"),
                       ("rows_sales > 0", "unknown measure 'rows_sales'"),
                       ("quality_score >=", "not a valid expression"),
                       ("change(quality_score) > 0", "change() reads an earlier run"),
                       ("__import__('os')", "unknown function '__import__'")):
        with pytest.raises(runner.ParameterError) as info:
            runner.parse_gate(["orders_age_days <= 2", text])
        assert f"gate expression {text!r}: {says}" in str(info.value)


def test_gate_measures_come_from_the_runs_own_data(tmp_path):
    src = _gate_source(tmp_path / "src", extracted="2026-06-10T12:00:00", bad_rows=1)
    info = runner.check_source(str(src))
    assert info["row_counts"]["orders"] == 4 and info["quarantined"]["orders"] == 1
    reports, run_dir = tmp_path / "reports", tmp_path / "reports" / "segmentation" / "r1"
    names = ["rows_orders", "rows_tickets", "quarantined_rows", "quarantined_share", "orders_age_days",
             "quality_score"]
    kw = dict(report="segmentation", run_dir=run_dir, source_info=info, params={"source": str(src)},
              reports_dir=reports)
    values, reasons, origin = runner.gate_measures(names, **kw)
    assert values == {"rows_orders": 4, "quarantined_rows": 1, "quarantined_share": 0.25,
                      "orders_age_days": 7}  # newest valid order 2026-06-03, extracted 2026-06-10
    assert reasons["rows_tickets"] == "table tickets is not in this source"
    assert "no data-quality run on this data" in reasons["quality_score"] and info["fingerprint"] in reasons[
        "quality_score"]
    # the score of the newest data-quality run on the same data; other data's runs never count
    _fake_quality_run(reports, "20260610T050000Z-aaaa", info["fingerprint"], 91.5)
    _fake_quality_run(reports, "20260610T060000Z-bbbb", "0123456789ab", 99.0)
    _fake_quality_run(reports, "20260610T070000Z-cccc", info["fingerprint"], None, status="failed")
    values, reasons, origin = runner.gate_measures(["quality_score"], **kw)
    assert values == {"quality_score": 91.5} and origin == {"quality_score": "data-quality/20260610T050000Z-aaaa"}
    # a data-quality run reads its own metrics
    own = _fake_quality_run(reports, "20260610T080000Z-dddd", "ffffffffffff", 88.0)
    assert runner.gate_measures(["quality_score"], **dict(kw, report="data-quality", run_dir=own))[0] == {
        "quality_score": 88.0}


def test_a_measure_that_cannot_be_computed_fails_its_expression_with_a_sentence(tmp_path):
    src = _gate_source(tmp_path / "src", extracted="2026-06-04T08:00:00")
    info = runner.check_source(str(src))
    gate = runner.check_gate(runner.parse_gate(["orders_age_days <= 2", "quality_score >= 95",
                                                "rows_tickets > 0 or orders_age_days < 5"]),
                             report="lifecycle", run_dir=tmp_path / "run", source_info=info,
                             params={"source": str(src)}, reports_dir=tmp_path / "reports")
    assert [(c["expression"], c["passed"]) for c in gate["checks"]] == [
        ("orders_age_days <= 2", True), ("quality_score >= 95", False),
        ("rows_tickets > 0 or orders_age_days < 5", False)]  # never passes on a measure it does not have
    assert gate["checks"][0]["values"] == {"orders_age_days": 1} and gate["passed"] is False
    assert gate["checks"][1]["reason"].startswith("cannot be computed: no data-quality run on this data")
    assert gate["checks"][2]["reason"] == "cannot be computed: table tickets is not in this source"
    # data that changed since the run's source check is not measured as if it were the run's
    os.utime(src / "orders.csv", (1_780_000_000, 1_780_000_000))
    later = runner.check_gate(runner.parse_gate(["orders_age_days <= 2"]), report="lifecycle",
                              run_dir=tmp_path / "run", source_info=info, params={"source": str(src)},
                              reports_dir=tmp_path / "reports")
    assert later["passed"] is False and "the source changed during the run" in later["checks"][0]["reason"]


# -- small data is fast: what the source check hands on, the kernel started ahead ----

def _descendant_kernels() -> list:
    import psutil

    return [p for p in psutil.Process().children(recursive=True)
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
            and any("ipykernel" in part for part in p.cmdline())]


def test_the_contract_check_of_a_conforming_source_needs_no_pandera(tmp_path):
    # pandera (about a second to import and validate) only words the failures
    src = tiny_source(tmp_path / "src")
    code = ("import sys\nfrom crmlab import runner\ninfo = runner.check_source(sys.argv[1])\n"
            "print(info['row_counts']['orders'], 'pandera' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code, str(src)], capture_output=True, text=True,
                          env=dict(os.environ, CRMLAB_DATA_DIR=str(tmp_path / "cache")))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3", "False"]
    bad = tiny_source(tmp_path / "bad", columns=("customer_id", "order_date"))
    with pytest.raises(runner.DataContractError, match="required column amount is missing"):
        runner.check_source(str(bad))


def test_the_notebook_reuses_the_checks_verdict_on_the_same_files(tmp_path, monkeypatch):
    from crmlab import sources

    monkeypatch.setenv("CRMLAB_DATA_DIR", str(tmp_path / "cache"))
    src = tiny_source(tmp_path / "src")
    (src / "customers.csv").write_text("customer_id,name\n00001,Ann\n2,Bo\n", encoding="utf-8")
    info = runner.check_source(str(src))
    first = sources.open_source(str(src))
    calls = []
    monkeypatch.setattr(sources.Dataset, "_settle_id_types", lambda self: calls.append("settle"))
    monkeypatch.setattr(sources.Dataset, "_check_contract", lambda self: calls.append("check"))
    again = sources.open_source(str(src))
    assert calls == [] and again.id_types == first.id_types == {"customer_id": "string"}
    assert again.fingerprint == info["fingerprint"]
    assert again.to_pandas("orders").equals(first.to_pandas("orders"))
    # changed files are checked again
    (src / "orders.csv").write_text("customer_id,order_date,amount\n1,2026-06-01,10\n", encoding="utf-8")
    os.utime(src / "orders.csv", (1_780_000_000, 1_780_000_000))
    sources.open_source(str(src))
    assert calls == ["settle", "check"]


def test_a_small_typed_table_is_typed_once_with_the_same_rows(tmp_path, monkeypatch):
    from crmlab import sources

    monkeypatch.setenv("CRMLAB_DATA_DIR", str(tmp_path / "cache"))
    src = tiny_source(tmp_path / "src", rows=5)
    with (src / "orders.csv").open("a", encoding="utf-8") as fh:
        fh.write("3,not a date,1.0\n")
    ds = sources.open_source(str(src))
    typed = ds.table("orders")
    assert ds.table("orders") is typed
    # a temp table in DuckDB, not the typing chain over the CSV text
    temp = {name for name, is_temp in ds.backend.raw_sql(
        "SELECT table_name, temporary FROM duckdb_tables()").fetchall() if is_temp}
    assert typed.get_name().rsplit(".", 1)[-1] in temp
    assert "ANTI JOIN" not in ds.backend.compile(typed.count())
    view = ds.work("orders").expr.select("_row", *ds.columns("orders")).filter(lambda t: t._row != 6)
    expected = view.drop("_row").to_pandas().sort_values(["order_date"], ignore_index=True)
    got = typed.to_pandas().sort_values(["order_date"], ignore_index=True)
    assert len(got) == 5 and got.equals(expected)
    monkeypatch.setattr(sources, "CACHE_TYPED_ROWS", 2)
    other = sources.open_source(str(src))
    big = other.table("orders")
    assert "ANTI JOIN" in other.backend.compile(big.count()) and big.count().execute() == 5


def test_preload_modules_are_the_crmlab_modules_a_notebook_imports(project):
    for report in ("segmentation", "data-quality"):
        real = runner.preload_modules(Path(runner.__file__).resolve().parents[2] / "notebooks"
                                      / runner.config.REPORTS[report])
        assert real[:1] == ["crmlab"] and {"crmlab.report", "crmlab.sources"} <= set(real)
        assert all(m == "crmlab" or m.startswith("crmlab.") for m in real)
    # ok.ipynb: from crmlab.report import Report; from crmlab import charts (pandas, matplotlib: not crmlab)
    assert set(runner.preload_modules(runner.notebook_path("segmentation"))) == {
        "crmlab.report", "crmlab.report.Report", "crmlab", "crmlab.charts"}


def test_the_kernel_starts_while_the_source_is_checked(project, monkeypatch):
    seen = []
    real_open = runner._open_source

    def slow_open(spec, mapping):
        deadline = time.monotonic() + 60
        while not _descendant_kernels() and time.monotonic() < deadline:
            time.sleep(0.1)
        seen.append(len(_descendant_kernels()))
        return real_open(spec, mapping)

    monkeypatch.setattr(runner, "_open_source", slow_open)
    r = run_report("segmentation", source=str(project.source))
    assert r.status == "success", r.message
    assert seen == [1], "one kernel was up before the source check finished"
    assert _descendant_kernels() == [], "no kernel is left behind"
    page = (r.run_dir / "report.html").read_text(encoding="utf-8")
    assert "Active customers" in page


def test_a_refused_source_stops_the_kernel_started_ahead(project, monkeypatch):
    def refuse(spec, mapping):
        deadline = time.monotonic() + 60
        while not _descendant_kernels() and time.monotonic() < deadline:
            time.sleep(0.1)
        raise runner.DataContractError("source does not meet the data contract: table orders")

    monkeypatch.setattr(runner, "_open_source", refuse)
    r = run_report("segmentation", source=str(project.source))
    assert (r.status, r.exit_code, r.run_dir) == ("bad_input", 2, None)
    assert _descendant_kernels() == [] and run_dirs(project.reports, "segmentation") == []
    assert locks.holder("segmentation") is None


def test_pages_reuse_one_exporter_per_audience(history):
    assert runner._html_exporter("stakeholder") is runner._html_exporter("stakeholder")
    assert runner._html_exporter("analyst") is not runner._html_exporter("stakeholder")
    out = history.reports / "again.html"
    nb = history.second.run_dir / "notebook.ipynb"
    runner.render_html(nb, out, report="segmentation", run_id=history.second.run_id)
    again = out.read_text(encoding="utf-8")
    assert again == (history.second.run_dir / "report.html").read_text(encoding="utf-8")
