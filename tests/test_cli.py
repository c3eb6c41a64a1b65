"""The ``crmlab`` command, run as a user runs it (a subprocess): stable
names, exit codes, the run directory printed last, progress on stderr."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "notebooks"))
from testkit import crmlab, env_for, make_project, run_dirs, tiny_source  # noqa: E402


@pytest.fixture
def project(tmp_path):
    root = make_project(tmp_path / "project", {"segmentation": "ok", "lifecycle": "broken"})
    reports = tmp_path / "reports"
    return root, reports, env_for(root, reports), tiny_source(tmp_path / "src")


def test_run_prints_the_run_directory_last(project):
    root, reports, env, src = project
    out = crmlab(["run", "segmentation", "--source", str(src), "-p", "n=2"], env)
    assert out.returncode == 0, out.stderr
    run_dir = Path(out.stdout.strip().splitlines()[-1])
    assert run_dir.parent == reports / "segmentation" and run_dir.is_dir()
    doc = json.loads((run_dir / "run.json").read_text())
    assert doc["status"] == "success" and doc["params"]["n"] == 2
    assert json.loads((run_dir / "metrics.json").read_text())["customers"] == 200
    assert "segmentation: success" in out.stderr  # progress and logs on stderr, not stdout
    assert (reports / "index.html").exists() and (reports / "segmentation" / "latest.html").exists()


def test_reports_dir_option_moves_the_tree(project, tmp_path):
    root, reports, env, src = project
    other = tmp_path / "elsewhere"
    out = crmlab(["run", "segmentation", "--source", str(src), "-p", "n=oops", "--reports-dir", str(other)], env)
    assert out.returncode == 2 and out.stdout == ""
    assert "parameter n expects int, got 'oops'" in out.stderr
    assert "Known parameters of report segmentation" in out.stderr and "flag: bool = False" in out.stderr
    assert run_dirs(other, "segmentation") == [] and not reports.exists()
    out = crmlab(["index", "--reports-dir", str(other)], env)
    assert out.returncode == 0 and out.stdout.strip() == str(other / "index.html")


def test_bad_usage_exits_2(project):
    root, reports, env, src = project
    assert crmlab(["run", "no-such-report", "--source", str(src)], env).returncode == 2
    assert crmlab(["run", "segmentation", "-p", "novalue"], env).returncode == 2
    assert crmlab(["run", "segmentation", "--audience", "everyone"], env).returncode == 2
    assert crmlab(["frobnicate"], env).returncode == 2


def test_run_all_runs_in_parallel_and_exits_with_the_worst(project):
    root, reports, env, src = project
    out = crmlab(["run-all", "--source", str(src), "--jobs", "2"], env)
    assert out.returncode == 1, out.stderr  # lifecycle's notebook fails; three notebooks are missing
    err = out.stderr
    assert "crmlab run-all: 5 reports, 2 at a time" in err
    for report, status in (("segmentation", "success"), ("lifecycle", "failed"), ("campaigns", "bad_input")):
        assert f"  {report:<12}  started" in err
        assert any(line.strip().startswith(f"{report} ") and f" {status} " in line for line in err.splitlines())
    assert "1 of 5 succeeded; exit code 1" in err
    printed = [Path(l) for l in out.stdout.splitlines()]
    assert {p.parent.name for p in printed} == {"segmentation", "lifecycle"} and all(p.is_dir() for p in printed)
    for p in printed:
        assert json.loads((p / "run.json").read_text())["trigger"] == "run-all"
    index = (reports / "index.html").read_text(encoding="utf-8")
    assert "crm-pill failed" in index and "crm-pill success" in index


def test_validate_prints_the_contract_check(project, tmp_path):
    root, reports, env, src = project
    out = crmlab(["validate", "--source", str(src)], env)
    assert out.returncode == 0 and "orders" in out.stdout
    bad = tiny_source(tmp_path / "bad", columns=("customer_id", "amount"))
    assert crmlab(["validate", "--source", str(bad)], env).returncode == 2


def test_generate_prints_the_world_directory(project, tmp_path):
    root, reports, env, src = project
    env = dict(env, CRMLAB_HOME=str(Path(__file__).resolve().parents[1]))  # the repo's scenarios
    out = crmlab(["generate", "--scenario", "small", "--customers", "200", "--seed", "7", "--out",
                  str(tmp_path / "world")], env)
    assert out.returncode == 0, out.stderr
    world = Path(out.stdout.strip().splitlines()[-1])
    assert world == tmp_path / "world" and (world / "orders.parquet").exists()


@pytest.mark.skipif(importlib.util.find_spec("crmlab.schedule") is not None,
                    reason="the scheduler is installed; its own tests cover its commands")
def test_schedule_without_the_scheduler_says_so(project):
    root, reports, env, src = project
    out = crmlab(["schedule", "list"], env)
    assert out.returncode == 2 and "scheduler" in out.stderr


def test_run_gate_refuses_a_bad_expression_before_anything_runs(project):
    root, reports, env, src = project
    out = crmlab(["run", "segmentation", "--source", str(src), "--gate", "orders_age_days <= 2",
                  "--gate", "revenue > 0"], env)
    assert out.returncode == 2 and out.stdout == ""
    assert "gate expression 'revenue > 0': unknown measure 'revenue' (measures: quality_score, " in out.stderr
    assert run_dirs(reports, "segmentation") == []
    usage = crmlab(["--help"], env)
    assert "6 gated" in " ".join(usage.stdout.split())
    assert "--gate EXPR" in crmlab(["run", "--help"], env).stdout
