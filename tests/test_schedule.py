"""Scheduled runs (crmlab.schedule), proven with real processes where it
matters: a daemon started by the test (real time and a fake clock), a lock
held by another process, runs and a daemon stopped by SIGTERM midway, a
timeout that must take the kernel with it, retries of a database that
refuses connections, and simulated days across daylight-saving changes.

Real notebook runs cost 10-20 s each on a busy machine, so only four tests
execute notebooks; the rest run the scheduler with ``--dry-run`` (it decides
and records everything, runs nothing) or on runs refused before a kernel
starts.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import multiprocessing
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "notebooks"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from testkit import crmlab, env_for, make_project, pid_alive, run_dirs, tiny_source, wait_for  # noqa: E402
from test_notify import closed_port, hook, smtp  # noqa: E402,F401 (the receivers' fixtures)

from crmlab import config, locks, schedule  # noqa: E402
from crmlab.exceptions import ParameterError  # noqa: E402
from crmlab.runner import RunResult  # noqa: E402
from crmlab.schedule import (CronTimes, Retries, append_audit, convert_cron, crontab_lines, is_transient,  # noqa: E402
                             load_schedule, load_schedule_doc, parse_time, plan_job, prune_runs, read_audit)

UTC = dt.timezone.utc
REPO = Path(__file__).resolve().parents[1]


# -- helpers -------------------------------------------------------------------------

@pytest.fixture
def project(tmp_path):
    """Test notebooks under the five report names (ok, slow, ...), a tiny
    source, and the environment of a ``crmlab`` subprocess on a UTC server."""
    root = make_project(tmp_path / "project", {"segmentation": "ok", "forecasting": "ok", "data-quality": "ok",
                                               "lifecycle": "slow", "campaigns": "slow"})
    (root / "parameters").mkdir()
    reports = tmp_path / "reports"
    env = dict(env_for(root, reports), TZ="UTC", PYTHONUNBUFFERED="1")
    return SimpleNamespace(root=root, reports=reports, env=env, tmp=tmp_path, src=tiny_source(tmp_path / "src"))


def write_schedule(project, text: str) -> Path:
    path = project.root / "parameters" / "schedule.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def start_daemon(project, *args, err: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "crmlab.cli", "schedule", "daemon", *args], env=project.env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(err, "w"))


def wait_for_text(path: Path, text: str, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if path.exists() and text in path.read_text(encoding="utf-8", errors="replace"):
            return True
        time.sleep(0.2)
    return False


def wait_dead(pid: int, seconds: float = 15) -> bool:
    end = time.monotonic() + seconds
    while pid_alive(pid) and time.monotonic() < end:
        time.sleep(0.1)
    return not pid_alive(pid)


def runs_of(records, job=None):
    return [r for r in records if r["event"] == "run" and (job is None or r.get("job") == job)]


def fires(records) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in runs_of(records):
        out.setdefault(r["job"], []).append(r["scheduled_for"])
    return out


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def jobs_doc(*jobs, **top) -> dict:
    return {"timezone": "UTC", **top, "jobs": [dict(j) for j in jobs]}


def t(text: str) -> dt.datetime:
    return parse_time(text)


# -- cron and daylight saving time ------------------------------------------------------

def _matches(fields, wall: dt.datetime) -> bool:
    minutes, hours, doms, months, dows = fields
    ok = lambda values, v: values == ["*"] or v in values  # noqa: E731
    return (ok(minutes, wall.minute) and ok(hours, wall.hour) and ok(doms, wall.day)
            and ok(months, wall.month) and ok(dows, (wall.isoweekday() % 7)))


def reference_fires(expr: str, tz: str, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    """The documented rules, minute by minute in UTC: a fixed-hour job fires
    at the first occurrence of a matching wall time and, when the clock jumps
    over matching wall times, once at the jump; an every-hour job fires at
    every real occurrence."""
    from croniter import croniter

    fields = croniter(expr).expanded
    assert fields[2] == ["*"] or fields[4] == ["*"], "the reference knows AND-ed day fields only"
    zone = ZoneInfo(tz)
    fixed = not (fields[1] == ["*"] or len(fields[1]) == 24)
    out, u = [], start.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    while u <= end:
        wall = u.astimezone(zone).replace(tzinfo=None)
        before = (u - dt.timedelta(minutes=1)).astimezone(zone).replace(tzinfo=None)
        fire = _matches(fields, wall) and (not fixed or wall.replace(tzinfo=zone, fold=0).astimezone(UTC) == u)
        if fixed and not fire and wall - before > dt.timedelta(minutes=1):  # the clock sprang forward
            w = before + dt.timedelta(minutes=1)
            while w < wall and not fire:
                fire = _matches(fields, w)
                w += dt.timedelta(minutes=1)
        if fire:
            out.append(u)
        u += dt.timedelta(minutes=1)
    return out


@pytest.mark.parametrize("tz, day", [("America/New_York", "2026-03-08"), ("America/New_York", "2026-11-01"),
                                     ("Europe/Berlin", "2026-03-29"), ("Europe/Berlin", "2026-10-25"),
                                     ("Australia/Lord_Howe", "2026-04-05"), ("Asia/Shanghai", "2026-03-08")])
def test_fire_times_follow_the_dst_rules_minute_by_minute(tz, day):
    start = t(day) - dt.timedelta(hours=12)
    end = start + dt.timedelta(days=2)
    for expr in ("30 2 * * *", "30 1 * * *", "0 2 * * *", "*/20 2 * * *", "0 1-3 * * *", "15 */2 * * *",
                 "30 * * * *", "*/15 * * * *", "0 3 * * 0", "30 0 * * *"):
        ct = CronTimes(expr, tz)
        want = reference_fires(expr, tz, start, end)
        assert list(ct.between(start, end)) == want, (expr, tz)
        for k in range(0, 48 * 60, 53):  # from any moment, the next fire is the reference's next one
            at = start + dt.timedelta(minutes=k, seconds=17)
            assert ct.next_after(at) == next(f for f in want + [ct.next_after(end)] if f > at), (expr, tz, at)


def test_daily_jobs_fire_once_per_local_day_including_dst_days():
    shanghai = list(CronTimes("30 0 * * *", "Asia/Shanghai").between(t("2026-03-01T00:00Z"), t("2026-03-11T00:00Z")))
    assert [f.strftime("%H:%M") for f in shanghai] == ["16:30"] * 10  # 00:30 China time on a UTC clock
    assert len({f.astimezone(ZoneInfo("Asia/Shanghai")).date() for f in shanghai}) == 10
    ny = CronTimes("30 2 * * *", "America/New_York")
    assert list(ny.between(t("2026-03-07T12:00Z"), t("2026-03-09T12:00Z"))) == [
        t("2026-03-08T07:00Z"), t("2026-03-09T06:30Z")]  # 02:30 never happens on Mar 8: once, at 03:00 EDT
    fall = CronTimes("30 1 * * *", "America/New_York")
    assert list(fall.between(t("2026-10-31T12:00Z"), t("2026-11-02T12:00Z"))) == [
        t("2026-11-01T05:30Z"), t("2026-11-02T06:30Z")]  # 01:30 happens twice on Nov 1: once, the first time
    hourly = CronTimes("15 * * * *", "America/New_York")
    assert len(list(hourly.between(t("2026-11-01T04:00Z"), t("2026-11-02T05:00Z")))) == 25  # a 25-hour day


# -- the schedule file -------------------------------------------------------------------

def test_the_default_schedule_covers_all_five_reports(monkeypatch):
    monkeypatch.setenv("CRMLAB_HOME", str(REPO))
    for var in ("CRMLAB_WEBHOOK_URL", "CRMLAB_SMTP_HOST", "CRMLAB_MAIL_TO", "CRMLAB_SOURCE"):
        monkeypatch.delenv(var, raising=False)
    sch = load_schedule(REPO / "parameters" / "schedule.yaml")
    assert sorted(j.report for j in sch.jobs) == sorted(config.REPORTS)
    assert all(j.enabled and j.timezone == "Asia/Shanghai" and j.timeout_s for j in sch.jobs)
    assert {a.report for a in sch.alerts} >= {"data-quality", "lifecycle"}
    assert sch.job("daily-data-quality").retries == Retries(2, 300.0, 1800.0)
    assert sch.job("daily-data-quality").source == "synthetic:demo"  # ${CRMLAB_SOURCE:-synthetic:demo}
    assert sch.job("daily-segmentation").gate == ("orders_age_days <= 2", "quarantined_share < 0.01")
    assert "gated" in sch.notify_on
    assert not sch.channels["ops-webhook"].configured  # no address in the environment: skipped, not an error
    monkeypatch.setenv("CRMLAB_WEBHOOK_URL", "https://hooks.example.com/crm")
    assert load_schedule(REPO / "parameters" / "schedule.yaml").channels["ops-webhook"].configured


def test_every_problem_is_refused_at_once_naming_job_and_field(tmp_path):
    doc = {
        "timezone": "Mars/Olympus", "grace": "soon", "colour": "blue",
        "channels": {"hook": {"type": "webhook", "url": "http://127.0.0.1:9/x"}},
        "alerts": [{"name": "bad", "report": "lifecycle", "when": "__import__('os')"}],
        "jobs": [
            {"name": "a", "report": "segmentation", "cron": "61 * * * *"},
            {"name": "b", "report": "marketing-mix", "cron": "0 6 * * *", "timezone": "Europe/Atlantis"},
            {"name": "c", "report": "lifecycle", "cron": "0 6 * * *", "catch_up": "all", "retries": {"count": -1},
             "notify": ["pager"], "cronn": "0 7 * * *", "timeout": "an hour", "param_files": ["nope.yaml"]},
            {"name": "a", "report": "campaigns", "cron": "@daily"},
            {"report": "campaigns"},
            {"name": False, "report": "campaigns", "cron": "@daily"},  # `name: off` in YAML
        ]}
    with pytest.raises(ParameterError) as info:
        load_schedule_doc(doc, path=tmp_path / "schedule.yaml")
    text = str(info.value)
    for expected in (
            "unknown top-level field 'colour'", "field timezone: unknown time zone 'Mars/Olympus'",
            "field grace: not a duration: 'soon'", "alert bad: field when: unknown function '__import__'",
            "job a: field cron: not a cron expression: '61 * * * *'",
            "job b: field report: unknown report 'marketing-mix'", "job b: field timezone: unknown time zone",
            "job c: unknown field 'cronn'", "job c: field catch_up: must be one of skip, latest, each",
            "job c: field retries.count: must be a whole number >= 0", "job c: field notify: unknown channel 'pager'",
            "job c: field timeout: not a duration", "job c: field param_files: parameter file not found: nope.yaml",
            "job a: the name is used twice", "job #5: field name is required",
            "job #6: field name: YAML read False as a yes/no value; put it in quotes"):
        assert expected in text, expected


def test_job_parameters_fill_the_date_of_each_fire():
    job = load_schedule_doc(jobs_doc({"name": "j", "report": "segmentation", "cron": "30 0 * * *",
                                      "timezone": "Asia/Shanghai",
                                      "params": {"as_of": "{yesterday}", "note": "run {date} ({scheduled_for})",
                                                 "n": 4}})).jobs[0]
    assert job.params_for(t("2026-03-08T16:30Z")) == {"as_of": "2026-03-08", "n": 4,
                                                      "note": "run 2026-03-09 (2026-03-08T16:30:00Z)"}


# -- deciding what is due ------------------------------------------------------------------

def _plan(policy, last, now, alive, **extra):
    job = load_schedule_doc(jobs_doc({"name": "j", "report": "segmentation", "cron": "0 6 * * *",
                                      "catch_up": policy, **extra})).jobs[0]
    p = plan_job(job, t(last) if last else None, t(now), alive_since=t(alive), grace_s=600)
    return [(f.strftime("%d %H:%M"), trig) for f, trig in p.fires], p.missed


def test_catch_up_policies_after_downtime():
    # last handled Jan 2 06:00; the machine was down until Jan 7 12:00: five fires missed
    args = ("2026-01-02T06:00Z", "2026-01-07T12:00Z", "2026-01-07T12:00Z")
    assert _plan("skip", *args) == ([], 5)
    assert _plan("latest", *args) == ([("07 06:00", "catch-up")], 4)
    assert _plan("each", *args, max_catch_up=3) == (
        [("05 06:00", "catch-up"), ("06 06:00", "catch-up"), ("07 06:00", "catch-up")], 2)
    # a fire within grace of the start is on time, even under skip
    assert _plan("skip", "2026-01-06T06:00Z", "2026-01-07T06:05Z", "2026-01-07T06:04Z") == (
        [("07 06:00", "schedule")], 0)
    # a daemon busy with a long run: the fire came due while it was alive, so it is on time
    assert _plan("skip", "2026-01-06T06:00Z", "2026-01-07T08:00Z", "2026-01-01T00:00Z") == (
        [("07 06:00", "schedule")], 0)
    # first sight of a job: nothing from before the start, nothing twice
    assert _plan("each", None, "2026-01-07T12:00Z", "2026-01-07T12:00Z") == ([], 0)
    assert _plan("latest", "2026-01-07T06:00Z", "2026-01-07T12:00Z", "2026-01-07T12:00Z") == ([], 0)


def test_only_failures_that_may_pass_are_retried_with_doubling_waits():
    assert [Retries(4, 60, 300).delay(a) for a in (1, 2, 3, 4)] == [60.0, 120.0, 240.0, 300.0]
    r = lambda status, code, **kw: RunResult("segmentation", None, None, status, code, **kw)  # noqa: E731
    assert is_transient(r("failed", 1, error={"ename": "SourceUnavailable", "evalue": "x"}))
    assert is_transient(r("failed", 1, error={"ename": "ConnectionRefusedError", "cell": 3}))
    assert is_transient(r("failed", 1, error={"ename": "IOException", "evalue": "Could not set lock on file"}))
    assert is_transient(r("failed", 1, message="connection to server was lost: connection reset"))
    assert not is_transient(r("failed", 1, error={"ename": "ValueError", "evalue": "bad column"}))
    for status, code in (("bad_input", 2), ("no_data", 3), ("timeout", 4), ("skipped", 5), ("interrupted", 143)):
        assert not is_transient(r(status, code, error={"ename": "SourceUnavailable"}, message="could not connect"))


# -- records ---------------------------------------------------------------------------

def _writer(path: str, tag: str, n: int) -> None:
    for i in range(n):
        append_audit({"event": "test", "writer": tag, "i": i, "pad": tag * 6000}, Path(path))


def test_concurrent_audit_writers_never_interleave(tmp_path):
    path = tmp_path / "audit.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(path), tag, 250)) for tag in "abcd"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 1001
    seen = {tag: [] for tag in "abcd"}
    for line in lines[:-1]:
        rec = json.loads(line)  # a torn or interleaved line would not parse
        assert rec["pad"] == rec["writer"] * 6000
        seen[rec["writer"]].append(rec["i"])
    assert all(v == list(range(250)) for v in seen.values())


def _fake_run(report_dir: Path, day: int, status: str, audience: str = "stakeholder") -> str:
    name = f"202601{day:02d}T060000Z-{day:04x}"
    d = report_dir / name
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"run_id": name, "status": status, "audience": audience,
                                            "started_at": f"2026-01-{day:02d}T06:00:00+00:00"}))
    return name


def test_retention_keeps_n_runs_or_d_days_and_always_the_latest_success(tmp_path):
    reports = tmp_path / "reports"
    rd = reports / "segmentation"
    names = {1: _fake_run(rd, 1, "success"), 2: _fake_run(rd, 2, "success")}
    names.update({d: _fake_run(rd, d, "failed") for d in range(3, 9)})
    names[9] = _fake_run(rd, 9, "success", audience="analyst")
    names[10] = _fake_run(rd, 10, "running")
    (rd / "latest.html").write_text("<html>latest</html>")
    (rd / "notes").mkdir()
    (rd / "20260101T000000Z-ffff").mkdir()  # no run.json: not known to be a run, never removed
    now = t("2026-01-10T12:00Z")
    assert prune_runs("segmentation", reports, now=now) == []  # no limit set: keep everything
    with locks.report_lock("segmentation", reports, run_id=names[10]):  # run 10 is still running
        removed = prune_runs("segmentation", reports, keep_days=4.5, now=now)
        assert removed == [names[d] for d in (1, 3, 4, 5)]  # day 2: the newest stakeholder success
        removed = prune_runs("segmentation", reports, keep_runs=1, now=now)
        assert removed == [names[d] for d in (6, 7, 8)]  # 10 is newest and running, 9 the newest success
    left = sorted(p.name for p in rd.iterdir() if not p.name.startswith("."))  # .lock; no .trash-* left
    assert left == sorted([names[2], names[9], names[10], "20260101T000000Z-ffff", "latest.html", "notes"])
    assert (rd / "latest.html").read_text() == "<html>latest</html>"


# -- commands without runs -------------------------------------------------------------------

def test_list_shows_next_runs_in_the_job_zone_and_utc(project, capsys, monkeypatch):
    monkeypatch.setenv("CRMLAB_HOME", str(project.root))
    monkeypatch.setenv("CRMLAB_REPORTS_DIR", str(project.reports))
    write_schedule(project, """
        timezone: UTC
        jobs:
          - {name: cn-daily, report: segmentation, cron: "30 0 * * *", timezone: Asia/Shanghai}
          - {name: ny-early, report: lifecycle, cron: "30 2 * * *", timezone: America/New_York}
          - {name: paused, report: campaigns, cron: "0 9 * * *", enabled: false}
        """)
    assert schedule.main(["list", "--now", "2026-03-08T04:00:00Z"]) == 0
    out = capsys.readouterr().out
    cn = next(line for line in out.splitlines() if line.startswith("cn-daily"))
    ny = next(line for line in out.splitlines() if line.startswith("ny-early"))
    assert "2026-03-09 00:30 CST" in cn and "2026-03-08 16:30 UTC" in cn
    assert "2026-03-08 03:00 EDT" in ny and "2026-03-08 07:00 UTC" in ny  # the spring-forward day
    assert "disabled" in next(line for line in out.splitlines() if line.startswith("paused"))
    assert schedule.main(["list", "--json", "--now", "2026-03-08T04:00:00Z"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["cn-daily"]["next_run"] == "2026-03-08T16:30:00Z"
    assert rows["cn-daily"]["next_run_local"] == "2026-03-09T00:30:00+08:00"
    # the same through the crmlab command, as cron or a person would call it
    out = crmlab(["schedule", "list", "--now", "2026-03-08T04:00:00Z"], project.env)
    assert out.returncode == 0 and "2026-03-08 16:30 UTC" in out.stdout
    bad = crmlab(["schedule", "list", "--file", str(project.tmp / "missing.yaml")], project.env)
    assert bad.returncode == 2 and "no schedule file" in bad.stderr


def test_crontab_lines_with_cron_tz_or_converted_times(project, monkeypatch):
    monkeypatch.setenv("CRMLAB_HOME", str(project.root))
    path = write_schedule(project, """
        jobs:
          - {name: cn, report: segmentation, cron: "30 0 * * *", timezone: Asia/Shanghai}
          - {name: cn-monday, report: forecasting, cron: "0 6 * * 1", timezone: Asia/Shanghai}
          - {name: berlin, report: lifecycle, cron: "30 2 * * *", timezone: Europe/Berlin}
        """)
    sch = load_schedule(path)
    lines = crontab_lines(sch)
    assert "CRON_TZ=Asia/Shanghai" in lines and "CRON_TZ=Europe/Berlin" in lines
    at = lines.index("CRON_TZ=Asia/Shanghai")
    assert lines[at + 1].startswith("30 0 * * * ") and lines[at + 1].split(">>")[0].rstrip().endswith(
        "schedule run-due --job cn")
    assert lines[lines.index("CRON_TZ=Europe/Berlin") + 1].startswith("30 2 * * * ")
    assert f"CRMLAB_HOME={project.root}" in lines
    converted = [line for line in crontab_lines(sch, convert_to="UTC") if not line.startswith("#")]
    assert any(line.startswith("30 16 * * * ") and "--job cn " in line for line in converted)
    assert any(line.startswith("0 22 * * 0 ") and "--job cn-monday" in line for line in converted)
    # Berlin has daylight saving time: no exact UTC line, the catch-all runs it
    assert any(line.startswith("*/5 * * * * ") and line.split(">>")[0].rstrip().endswith("--job berlin")
               for line in converted)
    assert convert_cron("0 * * * *", "America/New_York", "UTC") == "0 * * * *"
    assert convert_cron("0 3 1 * *", "Asia/Shanghai", "UTC") is None  # day-of-month would move


# -- simulated days (fake clock, dry run) --------------------------------------------------------

SIM_JOBS = """
    timezone: UTC
    jobs:
      - {name: sh-0030, report: segmentation, cron: "30 0 * * *", timezone: Asia/Shanghai}
      - {name: ny-0230, report: lifecycle, cron: "30 2 * * *", timezone: America/New_York}
      - {name: ny-0130, report: forecasting, cron: "30 1 * * *", timezone: America/New_York}
      - {name: be-0230, report: campaigns, cron: "30 2 * * *", timezone: Europe/Berlin}
      - {name: ny-hourly, report: data-quality, cron: "15 * * * *", timezone: America/New_York}
    """


def test_a_simulated_day_across_spring_forward_fires_exactly_the_expected_runs(project):
    write_schedule(project, SIM_JOBS)
    err = project.tmp / "sim.err"
    out = subprocess.run([sys.executable, "-m", "crmlab.cli", "schedule", "daemon", "--dry-run",
                          "--now", "2026-03-08T04:00:00Z", "--speed", "inf", "--until", "2026-03-09T04:00:00Z"],
                         env=project.env, stderr=open(err, "w"), timeout=120)
    assert out.returncode == 0, err.read_text()
    records = read_audit(project.reports, dry_run=True)
    got = fires(records)
    # New York springs forward at 07:00 UTC on Mar 8 (02:00 EST -> 03:00 EDT); Berlin not until Mar 29
    assert got["ny-0130"] == ["2026-03-08T06:30:00Z"]           # 01:30 EST
    assert got["ny-0230"] == ["2026-03-08T07:00:00Z"]           # 02:30 never happens: once, as the clock jumps
    assert got["sh-0030"] == ["2026-03-08T16:30:00Z"]           # 00:30 China time on Mar 9, on a UTC server
    assert got["be-0230"] == ["2026-03-09T01:30:00Z"]           # 02:30 CET
    hourly = [t(x) for x in got["ny-hourly"]]                   # real hours: 24 in 24 hours, none lost
    assert hourly == [t("2026-03-08T04:15Z") + dt.timedelta(hours=h) for h in range(24)]
    assert {r["trigger"] for r in runs_of(records)} == {"schedule"}
    assert not [r for r in records if r["event"] == "missed"]
    assert not (project.reports / "_schedule" / "state.json").exists(), "a dry run keeps its own state"
    # it wakes once per distinct fire time: it sleeps, it does not poll
    sleeps = [line for line in err.read_text().splitlines() if "sleeping until" in line]
    assert len(sleeps) == len({r["scheduled_for"] for r in runs_of(records)}) == 28


def test_simulated_days_across_fall_back_fire_once_per_local_day(project):
    write_schedule(project, SIM_JOBS.replace("      - {name: ny-hourly", "      # - {name: ny-hourly"))
    out = crmlab(["schedule", "daemon", "--dry-run", "--now", "2026-10-24T12:00:00Z", "--speed", "inf",
                  "--until", "2026-11-02T12:00:00Z"], project.env, timeout=120)
    assert out.returncode == 0, out.stderr
    got = fires(read_audit(project.reports, dry_run=True))
    # Berlin falls back on Oct 25 (03:00 CEST -> 02:00 CET): 02:30 happens twice and fires the first time
    assert got["be-0230"] == (["2026-10-25T00:30:00Z"] + [f"2026-10-{d}T01:30:00Z" for d in range(26, 32)]
                              + ["2026-11-01T01:30:00Z", "2026-11-02T01:30:00Z"])
    # New York falls back on Nov 1 (02:00 EDT -> 01:00 EST): 01:30 happens twice and fires the first time
    assert got["ny-0130"] == ([f"2026-10-{d}T05:30:00Z" for d in range(25, 32)]
                              + ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"])
    assert got["ny-0230"] == ([f"2026-10-{d}T06:30:00Z" for d in range(25, 32)]
                              + ["2026-11-01T07:30:00Z", "2026-11-02T07:30:00Z"])
    assert got["sh-0030"] == [f"2026-10-{d}T16:30:00Z" for d in range(24, 32)] + ["2026-11-01T16:30:00Z"]
    for job, zone in (("be-0230", "Europe/Berlin"), ("ny-0130", "America/New_York"), ("sh-0030", "Asia/Shanghai")):
        days = [t(x).astimezone(ZoneInfo(zone)).date() for x in got[job]]
        assert len(days) == len(set(days)), f"{job} fired twice on a local day"


def test_catch_up_after_downtime_follows_each_policy_across_restarts(project):
    write_schedule(project, """
        timezone: UTC
        grace: 10m
        jobs:
          - {name: skipper, report: segmentation, cron: "0 6 * * *", catch_up: skip}
          - {name: latest, report: forecasting, cron: "0 6 * * *", catch_up: latest}
          - {name: each, report: data-quality, cron: "0 6 * * *", catch_up: each, max_catch_up: 3,
             params: {as_of: "{yesterday}"}}
        """)

    def daemon(now, until):
        out = crmlab(["schedule", "daemon", "--dry-run", "--now", now, "--speed", "inf", "--until", until],
                     project.env, timeout=120)
        assert out.returncode == 0, out.stderr
        return read_audit(project.reports, dry_run=True)

    first = daemon("2026-01-01T00:00:00Z", "2026-01-02T12:00:00Z")
    assert {job: len(v) for job, v in fires(first).items()} == {"skipper": 2, "latest": 2, "each": 2}
    # down from Jan 2 12:00 to Jan 7 12:00: five fires of each job were missed
    second = daemon("2026-01-07T12:00:00Z", "2026-01-07T13:00:00Z")[len(first):]
    runs = runs_of(second)
    assert [(r["job"], r["scheduled_for"], r["trigger"]) for r in runs] == [  # oldest first
        ("each", "2026-01-05T06:00:00Z", "catch-up"), ("each", "2026-01-06T06:00:00Z", "catch-up"),
        ("latest", "2026-01-07T06:00:00Z", "catch-up"), ("each", "2026-01-07T06:00:00Z", "catch-up")]
    assert [r["params"]["as_of"] for r in runs if r["job"] == "each"] == ["2026-01-04", "2026-01-05", "2026-01-06"]
    missed = {r["job"]: r["count"] for r in second if r["event"] == "missed"}
    assert missed == {"skipper": 5, "latest": 4, "each": 2}
    # restarted at once (run-due from cron): nothing again, no duplicates
    again = crmlab(["schedule", "run-due", "--dry-run", "--now", "2026-01-07T12:30:00Z"], project.env)
    assert again.returncode == 0 and runs_of(read_audit(project.reports, dry_run=True)) == runs_of(first + second)
    # started five minutes after a fire: within grace it is on time, even for skip
    third = daemon("2026-01-08T06:05:00Z", "2026-01-08T06:10:00Z")[len(first) + len(second):]
    assert [(r["job"], r["trigger"]) for r in runs_of(third) if r["job"] == "skipper"] == [("skipper", "schedule")]


# -- real runs -------------------------------------------------------------------------------

def test_daemon_runs_a_due_job_alerts_sleeps_and_stops_on_sigterm(project, hook, smtp):
    write_schedule(project, f"""
        timezone: UTC
        channels:
          hook: {{type: webhook, url: "{hook.url}"}}
          mail: {{type: smtp, host: 127.0.0.1, port: {smtp.port}, from: crmlab@example.com, to: [ops@example.com]}}
        alerts:
          - {{name: churn-high, report: segmentation, when: churn_rate > 0.1}}
          - {{name: few-customers, report: segmentation, when: customers < 100}}
        jobs:
          - {{name: seg, report: segmentation, cron: "0 6 * * *", source: "{project.src}", notify: [hook, mail]}}
          - {{name: later, report: forecasting, cron: "0 7 * * *", source: "{project.src}"}}
        """)
    err = project.tmp / "daemon.err"
    proc = start_daemon(project, "--now", "2026-03-02T05:59:57Z", err=err)  # the fire is 3 s away
    try:
        assert wait_for_text(err, "sleeping until 2026-03-02T07:00:00Z", 180), err.read_text()
        p = psutil.Process(proc.pid)
        before = sum(p.cpu_times()[:2])
        time.sleep(2.0)
        idle_cpu = sum(p.cpu_times()[:2]) - before
        second = crmlab(["schedule", "daemon"], project.env, timeout=60)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    finally:
        stop(proc)
    assert rc == 0, err.read_text()
    assert idle_cpu < 0.2, "an idle daemon sleeps until the next fire"
    assert second.returncode == 5 and "already runs" in second.stderr
    records = read_audit(project.reports)
    assert records[0]["event"] == "start" and records[-1] == {**records[-1], "event": "stop", "reason": "SIGTERM"}
    (run,) = runs_of(records)
    assert (run["job"], run["report"], run["trigger"], run["scheduled_for"], run["attempt"]) == (
        "seg", "segmentation", "schedule", "2026-03-02T06:00:00Z", 1)
    assert (run["status"], run["exit_code"]) == ("success", 0) and run["duration_s"] > 0
    assert run["fingerprint"] and run["params"]["n"] == 3 and run["params"]["source"] == str(project.src)
    assert run["user"] == getpass.getuser() and run["by"] == "daemon"
    page = Path(run["run_dir"]) / "report.html"
    assert page.exists() and json.loads((Path(run["run_dir"]) / "run.json").read_text())["trigger"] == "schedule:seg"
    (opened,) = [r for r in records if r["event"] == "alert-opened"]
    assert opened["alert"] == "churn-high" and opened["values"]["churn_rate"] == pytest.approx(0.13)
    (notified,) = [r for r in records if r["event"] == "notify"]
    assert [(x["channel"], x["ok"]) for x in notified["results"]] == [("hook", True), ("mail", True)]
    (post,) = hook.posts
    payload = post["json"]
    assert (payload["kind"], payload["report"], payload["job"], payload["rule"]) == (
        "alert", "segmentation", "seg", "churn_rate > 0.1")
    assert payload["values"]["churn_rate"] == pytest.approx(0.13) and payload["link"] == page.as_uri()
    (mail,) = smtp.messages
    body = mail["message"].get_content()
    assert "Rule: churn_rate > 0.1 (churn_rate = 0.13)" in body and page.as_uri() in body
    state = json.loads((project.reports / "_schedule" / "state.json").read_text())
    assert state["jobs"]["seg"]["last_status"] == "success" and state["jobs"]["seg"]["last_exit_code"] == 0
    assert state["jobs"]["seg"]["next_run"] == "2026-03-03T06:00:00Z"
    assert state["jobs"]["later"]["next_run"] == "2026-03-02T07:00:00Z"
    assert [a["id"] for a in state["alerts"]] == ["seg:churn-high"]
    html = (project.reports / "index.html").read_text(encoding="utf-8")
    section = html[html.index('class="crm-schedule"'):html.index('id="data-quality"')]
    assert "2026-03-03 06:00 UTC" in section and "crm-pill success" in section
    assert "churn-high: churn_rate &gt; 0.1 (churn_rate = 0.13)" in section


def test_sigterm_to_a_run_then_to_the_daemon_interrupts_cleanly(project):
    pids = {r: project.tmp / f"{r}.pid" for r in ("campaigns", "lifecycle")}
    for report in pids:
        (project.reports / report).mkdir(parents=True)
        (project.reports / report / "latest.html").write_text(f"<html>last good {report}</html>")
    write_schedule(project, f"""
        timezone: UTC
        defaults: {{source: "{project.src}", retries: {{count: 2, backoff: 1s}}}}
        jobs:
          - {{name: camp, report: campaigns, cron: "0 6 * * *", params: {{pid_file: "{pids['campaigns']}"}}}}
          - {{name: life, report: lifecycle, cron: "0 6 * * *", params: {{pid_file: "{pids['lifecycle']}"}}}}
        """)
    err = project.tmp / "daemon.err"
    proc = start_daemon(project, "--now", "2026-03-02T05:59:59Z", err=err)
    try:
        assert wait_for(pids["campaigns"], 180), err.read_text()
        child = next(c for c in psutil.Process(proc.pid).children() if "campaigns" in c.cmdline())
        child.send_signal(signal.SIGTERM)  # someone stops the run; the daemon goes on with the next job
        assert wait_for(pids["lifecycle"], 180), err.read_text()
        proc.send_signal(signal.SIGTERM)  # and then the daemon itself is stopped, mid-run
        rc = proc.wait(timeout=60)
    finally:
        stop(proc)
    assert rc == 0, err.read_text()
    records = read_audit(project.reports)
    runs = runs_of(records)
    assert [(r["job"], r["status"], r["exit_code"]) for r in runs] == [
        ("camp", "interrupted", 143), ("life", "interrupted", 143)]
    assert not [r for r in records if r["event"] == "retry"], "an interruption is never retried"
    assert records[-1]["event"] == "stop" and records[-1]["reason"] == "SIGTERM"
    for r in runs:
        doc = json.loads((Path(r["run_dir"]) / "run.json").read_text())
        assert doc["status"] == "interrupted" and doc["exit_code"] == 143
    for report, pid_file in pids.items():
        assert wait_dead(int(pid_file.read_text())), f"the kernel of {report} is gone"
        assert locks.holder(report, project.reports) is None, f"the lock of {report} is free"
        assert (project.reports / report / "latest.html").read_text() == f"<html>last good {report}</html>"
    state = json.loads((project.reports / "_schedule" / "state.json").read_text())
    assert [state["jobs"][j]["last_status"] for j in ("camp", "life")] == ["interrupted", "interrupted"]


def test_a_timeout_from_the_schedule_ends_the_kernel_and_is_not_retried(project, hook):
    pid_file = project.tmp / "kernel.pid"
    write_schedule(project, f"""
        timezone: UTC
        channels: {{hook: {{type: webhook, url: "{hook.url}"}}}}
        jobs:
          - {{name: camp, report: campaigns, cron: "0 6 * * *", source: "{project.src}", timeout: 20s,
             retries: {{count: 2, backoff: 1s}}, notify: [hook], params: {{pid_file: "{pid_file}"}}}}
        """)
    out = crmlab(["schedule", "run-due", "--now", "2026-03-02T06:00:05Z"], project.env, timeout=300)
    assert out.returncode == 4, out.stderr
    assert pid_file.exists(), "the kernel reached its sleeping cell within the time limit"
    assert wait_dead(int(pid_file.read_text())), "the kernel was ended with the run"
    leftovers = []
    for p in psutil.process_iter(["pid", "environ"]):
        env = p.info.get("environ") or {}
        if env.get("CRMLAB_REPORTS_DIR") == str(project.reports) and p.pid != psutil.Process().pid:
            leftovers.append(p.pid)
    assert leftovers == [], "no process of the run is left behind"
    records = read_audit(project.reports)
    runs = runs_of(records)
    assert [(r["job"], r["trigger"], r["status"], r["exit_code"], r["attempt"]) for r in runs] == [
        ("camp", "run-due", "timeout", 4, 1)]
    assert not [r for r in records if r["event"] == "retry"]
    assert json.loads((Path(runs[0]["run_dir"]) / "run.json").read_text())["status"] == "timeout"
    assert locks.holder("campaigns", project.reports) is None
    (post,) = hook.posts
    assert (post["json"]["kind"], post["json"]["status"], post["json"]["exit_code"]) == ("failure", "timeout", 4)


_HOLD = ("import sys, time\nfrom crmlab.locks import report_lock\n"
         "with report_lock('segmentation', sys.argv[1], run_id='holder-run'):\n"
         "    print('locked', flush=True)\n    time.sleep(120)\n")


def test_a_lock_held_by_another_process_skips_with_exit_5_and_is_audited(project):
    write_schedule(project, f"""
        timezone: UTC
        jobs:
          - {{name: seg, report: segmentation, cron: "0 6 * * *", source: "{project.src}"}}
        """)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(project.reports)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        due = crmlab(["schedule", "run-due", "--now", "2026-03-02T06:00:30Z"], project.env, timeout=120)
        manual = crmlab(["run", "segmentation", "--source", str(project.src)], project.env, timeout=120)
    finally:
        stop(holder)
    assert due.returncode == 5 and manual.returncode == 5, due.stderr + manual.stderr
    assert f"pid {holder.pid}" in manual.stderr
    runs = runs_of(read_audit(project.reports))
    assert [(r["trigger"], r.get("job"), r["status"], r["exit_code"]) for r in runs] == [
        ("run-due", "seg", "skipped", 5), ("cli", None, "skipped", 5)]
    assert runs[1]["user"] == getpass.getuser() and runs[1]["params"]["source"] == str(project.src)
    assert run_dirs(project.reports, "segmentation") == []
    state = json.loads((project.reports / "_schedule" / "state.json").read_text())
    assert state["jobs"]["seg"]["last_status"] == "skipped" and state["alerts"] == []


def test_transient_failures_are_retried_with_backoff_but_bad_input_is_not(project, hook):
    write_schedule(project, f"""
        timezone: UTC
        channels: {{hook: {{type: webhook, url: "{hook.url}"}}}}
        defaults: {{retries: {{count: 2, backoff: 1s}}, notify: [hook]}}
        jobs:
          - {{name: pg, report: segmentation, cron: "0 6 * * *",
             source: "postgresql://crm:s3cret@127.0.0.1:{closed_port()}/crm"}}
          - {{name: typo, report: forecasting, cron: "0 6 * * *", source: "{project.src}",
             params: {{no_such_parameter: 1}}}}
        """)
    out = crmlab(["schedule", "run-due", "--now", "2026-03-02T06:00:02Z"], project.env, timeout=300)
    assert out.returncode == 1, out.stderr  # the worst outcome: failed
    records = read_audit(project.reports)
    pg = runs_of(records, "pg")
    assert [(r["attempt"], r["status"], r["exit_code"], r["error"]) for r in pg] == [
        (1, "failed", 1, "SourceUnavailable"), (2, "failed", 1, "SourceUnavailable"),
        (3, "failed", 1, "SourceUnavailable")]
    assert [(r["attempt"], r["delay_s"]) for r in records if r["event"] == "retry"] == [(2, 1.0), (3, 2.0)]
    # each retry started only after its back-off had passed (1 s, then 2 s)
    starts = [parse_time(r["wall_time"]) for r in records if r["event"] == "due" and r["job"] == "pg"]
    ends = [parse_time(r["wall_time"]) for r in pg]
    assert (starts[1] - ends[0]).total_seconds() >= 0.95 and (starts[2] - ends[1]).total_seconds() >= 1.95
    typo = runs_of(records, "typo")
    assert [(r["attempt"], r["status"], r["exit_code"]) for r in typo] == [(1, "bad_input", 2)]
    assert "s3cret" not in (project.reports / "_schedule" / "audit.jsonl").read_text()
    payloads = {p["json"]["job"]: p["json"] for p in hook.posts}
    assert len(hook.posts) == 2
    assert (payloads["pg"]["status"], payloads["pg"]["attempts"], payloads["pg"]["error"]) == (
        "failed", 3, "SourceUnavailable")
    assert (payloads["typo"]["status"], payloads["typo"]["attempts"]) == ("bad_input", 1)
    assert "did not answer" not in json.dumps(payloads) and "no_such_parameter" not in json.dumps(payloads)
    state = json.loads((project.reports / "_schedule" / "state.json").read_text())
    assert state["jobs"]["pg"]["retry"] is None and state["jobs"]["pg"]["last_attempt"] == 3
    assert sorted(a["id"] for a in state["alerts"]) == ["pg:run-failed", "typo:run-failed"]


# -- gates -------------------------------------------------------------------------------

def test_a_gated_job_keeps_latest_exits_6_is_audited_and_notifies_a_passing_gate_publishes(project, hook, smtp):
    import os

    stamp = dt.datetime(2026, 6, 10, 12, tzinfo=UTC).timestamp()  # extracted a week after the newest order
    os.utime(project.src / "orders.csv", (stamp, stamp))
    for report in ("segmentation", "forecasting"):
        (project.reports / report).mkdir(parents=True)
        (project.reports / report / "latest.html").write_text(f"<html>last good {report}</html>")
    write_schedule(project, f"""
        timezone: UTC
        channels:
          hook: {{type: webhook, url: "{hook.url}"}}
          mail: {{type: smtp, host: 127.0.0.1, port: {smtp.port}, from: crmlab@example.com, to: [ops@example.com]}}
        defaults: {{source: "{project.src}", notify: [hook, mail]}}
        jobs:
          - {{name: seg, report: segmentation, cron: "0 6 * * *",
             gate: ["quarantined_share < 0.01", "orders_age_days <= 2"]}}
          - {{name: fc, report: forecasting, cron: "0 6 * * *",
             gate: ["orders_age_days <= 10", "quarantined_share < 0.01", "rows_orders >= 3"]}}
        """)
    out = crmlab(["schedule", "run-due", "--now", "2026-06-11T06:00:05Z"], project.env, timeout=300)
    assert out.returncode == 6, out.stderr  # the worst outcome: gated
    records = read_audit(project.reports)
    seg, fc = runs_of(records, "seg"), runs_of(records, "fc")
    assert [(r["status"], r["exit_code"], r["error"]) for r in seg] == [("gated", 6, "GateFailed")]
    assert [(c["expression"], c["values"], c["passed"]) for c in seg[0]["gate"]["checks"]] == [
        ("quarantined_share < 0.01", {"quarantined_share": 0.0}, True),
        ("orders_age_days <= 2", {"orders_age_days": 7}, False)]
    assert [(r["status"], r["exit_code"], r["gate"]["passed"]) for r in fc] == [("success", 0, True)]
    # the gated run keeps the last good page; the passing one publishes
    assert (project.reports / "segmentation" / "latest.html").read_text() == "<html>last good segmentation</html>"
    assert "crm-pill success" in (project.reports / "forecasting" / "latest.html").read_text(encoding="utf-8")
    doc = json.loads((Path(seg[0]["run_dir"]) / "run.json").read_text())
    assert (doc["status"], doc["exit_code"], doc["gate"]["passed"]) == ("gated", 6, False)
    assert doc["gate"]["measures"] == {"quarantined_share": 0.0, "orders_age_days": 7}
    assert "its data failed the gate" in (Path(seg[0]["run_dir"]) / "report.html").read_text(encoding="utf-8")
    # notified like a failure, with the expression that failed and its value
    (notified,) = [r for r in records if r["event"] == "notify"]
    assert notified["job"] == "seg" and [(x["channel"], x["ok"]) for x in notified["results"]] == [
        ("hook", True), ("mail", True)]
    (post,) = hook.posts
    assert (post["json"]["kind"], post["json"]["job"], post["json"]["status"], post["json"]["exit_code"]) == (
        "failure", "seg", "gated", 6)
    assert [(g["expression"], g["passed"]) for g in post["json"]["gate"]] == [
        ("quarantined_share < 0.01", True), ("orders_age_days <= 2", False)]
    (mail,) = smtp.messages
    body = mail["message"].get_content()
    assert "Outcome: gated (exit code 6)" in body and "Gate failed: orders_age_days <= 2 (orders_age_days = 7)" in body
    state = json.loads((project.reports / "_schedule" / "state.json").read_text())
    assert [a["id"] for a in state["alerts"]] == ["seg:run-failed"]
    html = (project.reports / "index.html").read_text(encoding="utf-8")
    section = html[html.index('id="segmentation"'):html.index('id="lifecycle"')]
    assert "crm-pill gated" in section and "GateFailed" in section


def test_schedule_check_refuses_a_bad_gate_naming_the_job_and_the_expression(project):
    write_schedule(project, f"""
        timezone: UTC
        jobs:
          - {{name: seg, report: segmentation, cron: "0 6 * * *", source: "{project.src}",
             gate: ["orders_age_days <= 2", "freshness <= 2"]}}
          - {{name: fc, report: forecasting, cron: "0 6 * * *", source: "{project.src}", gate: ["quality_score >="]}}
          - {{name: dq, report: data-quality, cron: "0 6 * * *", source: "{project.src}", gate: {{score: 95}}}}
        """)
    out = crmlab(["schedule", "check"], project.env, timeout=120)
    assert out.returncode == 2
    for says in ("job seg: field gate: gate expression 'freshness <= 2': unknown measure 'freshness' (measures: ",
                 "job fc: field gate: gate expression 'quality_score >=': not a valid expression",
                 "job dq: field gate: must be a list of expressions"):
        assert says in out.stderr, out.stderr
    write_schedule(project, f"""
        timezone: UTC
        jobs:
          - {{name: seg, report: segmentation, cron: "0 6 * * *", source: "{project.src}",
             gate: ["quality_score >= 95", "orders_age_days <= 2", "quarantined_share < 0.01"]}}
        """)
    ok = crmlab(["schedule", "check"], project.env, timeout=120)
    assert ok.returncode == 0 and "1 job(s)" in ok.stdout, ok.stderr
