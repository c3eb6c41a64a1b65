"""Scheduled runs that can be left alone: ``crmlab schedule ...``.

``parameters/schedule.yaml`` (see the file itself and ``docs/scheduling.md``)
lists the jobs -- report, ``-f`` parameter files, parameters, source, cron
expression, time zone, time limit, retries, catch-up policy, audience,
notification channels, gate -- and the global settings: the grace period, the
retention of old runs, alert rules and notification channels.

::

    crmlab schedule list      [--json]                each job, its next run (job's zone and UTC), last outcome
    crmlab schedule run-due   [--job NAME] [--dry-run] run what is due, wait for its retries, exit
    crmlab schedule daemon    [--dry-run] [--until T]  stay in the foreground; SIGTERM stops it
    crmlab schedule crontab   [--convert [ZONE]]      crontab lines, one per job
    crmlab schedule check                             validate the file and every job's parameters
    crmlab schedule prune     [--report R]            apply the retention now

Every command takes ``--file`` (default ``parameters/schedule.yaml``),
``--reports-dir``, and ``--now T`` / ``--speed X``: a clock that starts at
``T`` and runs ``X`` times faster than real time (``--speed inf``: it jumps
straight to each wake-up). The fake clock is for tests, demos and
"what would this schedule do over the next week?" (with ``--dry-run``).

How it decides
--------------
*Cron.* Expressions are parsed and iterated by ``croniter`` -- the cron
library that Airflow and many schedulers build on, maintained, with the
Vixie-cron field syntax (ranges, steps, names, ``@daily``) and time zone
support when given aware datetimes. Its daylight-saving behaviour was
checked minute by minute against a brute-force reference (the tests keep
doing so): it is right except that a job at a fixed hour fires twice when
that hour repeats in autumn. :class:`CronTimes` corrects that, so:

* a job whose hour field names specific hours (``30 2 * * *``) is a
  fixed-time job: on the day the clocks spring forward, a time that does not
  exist fires once, at the moment the clock jumps (02:30 -> 03:00); on the
  day they fall back, a time that occurs twice fires once, the first time;
* a job that runs every hour (hour field ``*``) follows real time: it fires
  at each real occurrence of its minute (none in the skipped hour, two in
  the repeated one).

This is close to what Vixie cron and cronie document for clock changes. The server's own
zone never matters: a job at 00:30 Asia/Shanghai fires at 16:30 UTC on a UTC
server, once per Shanghai day.

*Due, missed, catch-up.* ``state.json`` keeps, per job, the last fire time
that was handled (run or deliberately skipped). Fires after it and up to now
are pending. A fire is *on time* when it came due while this scheduler was
running or at most ``grace`` before it started; an older one was *missed*
(the machine was down). Pending fires are never all run: ``skip`` runs the
newest only when it is on time, ``latest`` runs the newest once, ``each``
runs the newest ``max_catch_up`` in order -- the rest are recorded as missed
in the audit log. A fire is claimed in ``state.json`` (under a file lock)
before it runs, so a daemon and a ``run-due`` from cron never run the same
fire twice; a scheduler killed with SIGKILL loses that one run rather than
repeating it (at most once).

*No overlap, timeouts, signals.* Each run is a ``crmlab run`` child process
(the same code path as a person's run): the runner's per-report lock makes a
second run of a report exit 5 (audited as skipped); ``timeout`` stops the
notebook and its kernel (exit 4); SIGTERM or SIGINT to the daemon is passed
to the running child, which marks its run interrupted, releases the lock and
leaves ``latest.html`` alone, and the daemon then stops (exit 0). A second
daemon on the same reports tree exits 5. The daemon sleeps until the next
fire or retry (waking at least every minute to notice a changed wall clock)
-- it does not poll.

*Retries.* Only failures that may pass are retried: exit 1 with a connection
problem (:data:`TRANSIENT_ENAMES`, :data:`TRANSIENT_PATTERNS`; a database
that refuses connections is ``SourceUnavailable``). Bad input (exit 2), no
data (3), a timeout (4), a skip (5) and an interruption are not. The delay
doubles: ``backoff``, 2 x ``backoff``, 4 x ... up to ``max_backoff``. A retry
waits in ``state.json`` like a fire, so a restart keeps it; a newer fire of
the same job replaces it.

*Records.* ``reports/_schedule/audit.jsonl`` gets one JSON line per
decision and per run (who or what triggered it, parameters, data
fingerprint, outcome, exit code, duration) -- appended with ``O_APPEND`` in
a single ``write``, so concurrent writers never interleave; ``crmlab run``
writes its runs there too. ``state.json`` (written atomically) holds each
job's next run, last outcome and the open alerts, which ``reports/index.html``
shows. ``--dry-run`` decides as usual but runs nothing and keeps its own
``state.dry-run.json`` and ``audit.dry-run.jsonl``.

*Gates.* A job's ``gate`` expressions (the alert rules' language, over the
measures of :data:`crmlab.runner.GATE_MEASURES`) are passed to its run as
``--gate``: the runner checks them on the run's own data after the notebook
succeeded, and a run whose gate fails is ``gated`` (exit 6), keeps the last
good ``latest.html``, is audited with its gate and notifies like a failure.

*After a run.* A failure or a gated run (``notify_on``) is sent to the job's
channels and opens an alert until the job succeeds again; alert rules over
``metrics.json`` (:mod:`crmlab.notify`) are checked after each success and
notify when they open; old run directories are pruned (``retention``); the
index is rebuilt.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import getpass
import json
import logging
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from crmlab import config
from crmlab.exceptions import CrmlabError, ParameterError
from crmlab.runner import RunResult

log = logging.getLogger("crmlab.schedule")

UTC = dt.timezone.utc
SCHEDULE_DIR = "_schedule"
SCHEDULE_FILE = "schedule.yaml"
CATCH_UP = ("skip", "latest", "each")
AUDIENCES = ("stakeholder", "analyst")
NOTIFY_STATUSES = ("failed", "timeout", "bad_input", "no_data", "gated", "interrupted", "skipped")
DEFAULT_NOTIFY_ON = ("failed", "timeout", "bad_input", "no_data", "gated")
PLACEHOLDERS = ("{date}", "{yesterday}", "{scheduled_for}")
JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
RUN_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{4,}$")
DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|m|s)", re.I)
DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

# job fields (``defaults:`` may set any but name, report and cron) and their defaults
JOB_DEFAULTS: dict = {
    "description": "", "timezone": None, "param_files": [], "params": {}, "source": None,
    "mapping": None, "timeout": None, "retries": {"count": 0, "backoff": "1m", "max_backoff": "1h"},
    "catch_up": "latest", "max_catch_up": 3, "audience": "stakeholder", "notify": [], "enabled": True,
    "gate": [],
}
JOB_REQUIRED = ("name", "report", "cron")
RETRY_KEYS = ("count", "backoff", "max_backoff")
GLOBAL_KEYS = ("timezone", "grace", "base_url", "notify_on", "retention", "channels", "alerts",
               "defaults", "jobs")
GLOBAL_DEFAULTS: dict = {"timezone": "UTC", "grace": "10m", "base_url": "", "notify_on": list(DEFAULT_NOTIFY_ON)}
RETENTION_KEYS = ("keep_runs", "keep_days", "reports")
ALERT_KEYS = ("name", "report", "when", "notify", "note")

# failures that may pass on a retry: exception names reported by the run ...
TRANSIENT_ENAMES = frozenset({
    "SourceUnavailable", "ConnectionError", "ConnectionRefusedError", "ConnectionResetError",
    "ConnectionAbortedError", "BrokenPipeError", "TimeoutError", "OperationalError", "InterfaceError",
    "gaierror", "RemoteDisconnected", "IncompleteRead",
})
# ... or words in its error message
TRANSIENT_PATTERNS = tuple(re.compile(p, re.I) for p in (
    r"could not connect", r"connection (?:refused|reset|timed out|closed|lost)", r"did not answer",
    r"server closed the connection", r"temporar(?:y|ily) (?:failure|unavailable)", r"timeout expired",
    r"could not set lock on file", r"network is unreachable", r"no route to host",
))

MAX_SLEEP_S = 60.0      # the real clock re-reads the wall clock at least this often
STOP_GRACE_S = 60.0     # after passing on SIGTERM, how long a run may take to stop before it is killed
BACKSTOP_S = 600.0      # a run still alive this long after its time limit is killed
MAX_SCAN = 1000         # missed fires counted one by one, no more
MAX_CRON_STEPS = 10000  # croniter steps to find one fire (a repeated hour is skipped)


# -- small parsers ---------------------------------------------------------------

def parse_duration(value) -> float:
    """Seconds in ``90``, ``"90s"``, ``"5m"``, ``"1h30m"``, ``"2d"``.

    Examples
    --------
    >>> parse_duration("1h30m"), parse_duration(45), parse_duration("2.5m")
    (5400.0, 45.0, 150.0)
    """
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"a duration cannot be negative: {value!r}")
        return float(value)
    text = str(value).strip().lower().replace(" ", "")
    if not text:
        raise ValueError("an empty duration")
    parts = DURATION.findall(text)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != text:
        raise ValueError(f"not a duration: {value!r} (use e.g. 90s, 5m, 1h30m, 2d)")
    return sum(float(n) * DURATION_UNITS[u] for n, u in parts)


def expand_env(value):
    """``${NAME}`` and ``${NAME:-default}`` in every text of a YAML document,
    from the environment (so a deployment keeps addresses and secrets out of
    the file). An unset variable without a default becomes empty."""
    if isinstance(value, str):
        return ENV_REF.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, list):
        return [expand_env(v) for v in value]
    if isinstance(value, dict):
        return {k: expand_env(v) for k, v in value.items()}
    return value


def parse_time(value) -> dt.datetime | None:
    """An aware datetime from ISO text (``Z`` allowed; naive text is UTC)."""
    if value in (None, ""):
        return None
    if isinstance(value, dt.datetime):
        t = value
    else:
        t = dt.datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


def iso(t: dt.datetime | None) -> str | None:
    """UTC ISO text with a ``Z``: ``2026-03-08T07:00:00Z``."""
    if t is None:
        return None
    t = t.astimezone(UTC)
    spec = "seconds" if not t.microsecond else "milliseconds"
    return t.isoformat(timespec=spec).replace("+00:00", "Z")


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(f"unknown time zone {name!r} (use an IANA name such as Asia/Shanghai)") from None


# -- cron ------------------------------------------------------------------------

class CronTimes:
    """The fire times of a cron expression in a time zone.

    Parameters
    ----------
    expr : str
        Five fields (minute hour day-of-month month day-of-week) or a macro
        (``@hourly``, ``@daily``, ``@weekly``, ``@monthly``, ``@yearly``).
    timezone : str
        The IANA zone the fields are read in.

    Notes
    -----
    croniter iterates aware datetimes; a fixed-hour job's second pass
    through a repeated (fall-back) hour is dropped here, so it fires once
    (see the module docstring for the rules).

    Examples
    --------
    >>> ct = CronTimes("30 0 * * *", "Asia/Shanghai")
    >>> iso(ct.next_after(parse_time("2026-03-08T12:00:00Z")))
    '2026-03-08T16:30:00Z'
    """

    def __init__(self, expr: str, timezone: str):
        from croniter import croniter

        text = " ".join(str(expr).split())
        if not (text.startswith("@") or len(text.split()) == 5) or not croniter.is_valid(text):
            raise ValueError(f"not a cron expression: {expr!r} (five fields: minute hour "
                             f"day-of-month month day-of-week, or @daily, @hourly, ...)")
        self.expr = text
        self.timezone = str(timezone)
        self.tz = _zone(timezone)
        hours = croniter(text).expanded[1]
        self.fixed_hour = not (hours == ["*"] or len(set(hours)) >= 24)

    def __repr__(self) -> str:
        return f"CronTimes({self.expr!r}, {self.timezone!r})"

    def _repeat(self, local: dt.datetime) -> bool:
        """True for the second occurrence of a wall time (a fall-back hour)."""
        first = local.replace(tzinfo=None).replace(tzinfo=self.tz, fold=0)
        return first.utcoffset() != local.utcoffset()

    def next_after(self, t: dt.datetime) -> dt.datetime:
        """The first fire strictly after ``t`` (aware), in UTC."""
        from croniter import croniter

        it = croniter(self.expr, t.astimezone(self.tz))
        for _ in range(MAX_CRON_STEPS):
            local = it.get_next(dt.datetime)
            u = local.astimezone(UTC)
            if u <= t or (self.fixed_hour and self._repeat(local)):
                continue
            return u
        raise ValueError(f"cron {self.expr!r} does not fire after {iso(t)}")

    def between(self, after: dt.datetime, until: dt.datetime) -> Iterator[dt.datetime]:
        """The fires in ``(after, until]``, oldest first."""
        t = after
        while True:
            t = self.next_after(t)
            if t > until:
                return
            yield t

    def recent(self, after: dt.datetime, until: dt.datetime, k: int) -> tuple[list[dt.datetime], int, bool]:
        """The newest ``k`` fires in ``(after, until]`` and how many older ones there are.

        Returns
        -------
        (list, int, bool)
            Up to ``k`` fires, oldest first; the number of older fires in the
            interval (counted up to :data:`MAX_SCAN`); True when the count
            stopped at that limit.
        """
        if until <= after or k <= 0:
            return [], 0, False
        span = dt.timedelta(hours=1)
        while True:
            start = max(after, until - span)
            window = list(islice(self.between(start, until), MAX_SCAN))
            if len(window) >= k or start == after:
                break
            span *= 4
        newest = window[-k:]
        older = len(window) - len(newest)
        more = len(window) == MAX_SCAN
        if start > after:
            before = list(islice(self.between(after, start), MAX_SCAN))
            older += len(before)
            more = more or len(before) == MAX_SCAN
        return newest, older, more


# -- the schedule file -------------------------------------------------------------

@dataclass(frozen=True)
class Retries:
    """How often a failure that may pass is retried, and after how long:
    ``backoff``, then twice that, four times ..., at most ``max_backoff``."""

    count: int = 0
    backoff_s: float = 60.0
    max_backoff_s: float = 3600.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based).

        Examples
        --------
        >>> [Retries(3, 60, 200).delay(a) for a in (1, 2, 3)]
        [60.0, 120.0, 200.0]
        """
        return float(min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s))


@dataclass(frozen=True)
class Job:
    """One scheduled job (a ``jobs:`` entry after ``defaults:`` are applied)."""

    name: str
    report: str
    cron: str
    timezone: str
    times: CronTimes = field(repr=False, compare=False)
    description: str = ""
    param_files: tuple[str, ...] = ()
    params: Mapping = field(default_factory=dict)
    source: str | None = None
    mapping: str | None = None
    timeout_s: float | None = None
    retries: Retries = Retries()
    catch_up: str = "latest"
    max_catch_up: int = 3
    audience: str = "stakeholder"
    notify: tuple[str, ...] = ()
    enabled: bool = True
    gate: tuple[str, ...] = ()  # expressions that must hold on the run's data before it is published

    def params_for(self, scheduled_for: dt.datetime) -> dict:
        """The job's parameters with ``{date}`` (the fire's local date),
        ``{yesterday}`` and ``{scheduled_for}`` (UTC ISO time) filled in, so
        that ``catch_up: each`` can back-fill one day per fire.

        Examples
        --------
        >>> job = load_schedule_doc({"jobs": [{"name": "j", "report": "segmentation", "cron": "30 0 * * *",
        ...     "timezone": "Asia/Shanghai", "params": {"as_of": "{yesterday}"}}]}).jobs[0]
        >>> job.params_for(parse_time("2026-03-08T16:30:00Z"))
        {'as_of': '2026-03-08'}
        """
        local = scheduled_for.astimezone(self.times.tz)
        values = {"{date}": local.date().isoformat(),
                  "{yesterday}": (local.date() - dt.timedelta(days=1)).isoformat(),
                  "{scheduled_for}": iso(scheduled_for)}

        def fill(v):
            if isinstance(v, str):
                for k, text in values.items():
                    v = v.replace(k, text)
                return v
            if isinstance(v, list):
                return [fill(x) for x in v]
            return v

        return {k: fill(v) for k, v in self.params.items()}


@dataclass(frozen=True)
class AlertRule:
    """An alert rule over a report's ``metrics.json`` (:mod:`crmlab.notify`)."""

    name: str
    report: str
    rule: object  # crmlab.notify.Rule
    notify: tuple[str, ...] | None = None
    note: str = ""


@dataclass(frozen=True)
class Retention:
    """Keep the newest ``keep_runs`` runs or the runs of the last
    ``keep_days`` days (a run is kept when either rule keeps it; ``None``
    for both keeps everything), with per-report overrides."""

    keep_runs: int | None = None
    keep_days: float | None = None
    reports: Mapping = field(default_factory=dict)

    def for_report(self, report: str) -> tuple[int | None, float | None]:
        own = self.reports.get(report) or {}
        return own.get("keep_runs", self.keep_runs), own.get("keep_days", self.keep_days)


@dataclass(frozen=True)
class Schedule:
    """A validated ``schedule.yaml``."""

    path: Path | None
    jobs: tuple[Job, ...]
    timezone: str = "UTC"
    grace_s: float = 600.0
    base_url: str = ""
    notify_on: tuple[str, ...] = DEFAULT_NOTIFY_ON
    retention: Retention = Retention()
    channels: Mapping = field(default_factory=dict)
    alerts: tuple[AlertRule, ...] = ()

    def job(self, name: str) -> Job:
        for j in self.jobs:
            if j.name == name:
                return j
        raise ParameterError(f"no job named {name!r} in the schedule; jobs: "
                             f"{', '.join(j.name for j in self.jobs) or 'none'}")


def default_schedule_path() -> Path:
    """``parameters/schedule.yaml`` of the project."""
    return config.parameters_dir() / SCHEDULE_FILE


def load_schedule(path=None) -> Schedule:
    """Read and validate a schedule file.

    Parameters
    ----------
    path : path, optional
        Default :func:`default_schedule_path`.

    Returns
    -------
    Schedule

    Raises
    ------
    ParameterError
        Every problem at once, each naming the job (or section) and field:
        unknown keys, a bad cron expression, an unknown time zone or report,
        a parameter file that does not exist, an alert rule outside the rule
        language, a channel that is not defined ...

    Examples
    --------
    >>> load_schedule().jobs[0].report                      # doctest: +SKIP
    'data-quality'
    """
    path = Path(path) if path else default_schedule_path()
    if not path.is_file():
        raise ParameterError(f"no schedule file at {path}")
    return load_schedule_doc(config.load_yaml(path, "schedule file"), path=path)


def _listed(value) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else [value]


def load_schedule_doc(doc, *, path=None) -> Schedule:
    """:func:`load_schedule` on an already-parsed YAML document."""
    from crmlab.notify import RuleError, parse_channel, parse_rule

    problems: list[str] = []
    if not isinstance(doc, Mapping):
        raise ParameterError(f"schedule file {path or ''} must hold a mapping with a jobs: list")
    doc = expand_env(dict(doc))
    problems += [f"unknown top-level field {k!r} (known: {', '.join(GLOBAL_KEYS)})"
                 for k in doc if k not in GLOBAL_KEYS]
    g = {**GLOBAL_DEFAULTS, **{k: v for k, v in doc.items() if v is not None}}
    try:
        _zone(g["timezone"])
    except ValueError as exc:
        problems.append(f"field timezone: {exc}")
        g["timezone"] = "UTC"
    try:
        grace_s = parse_duration(g["grace"])
    except ValueError as exc:
        problems.append(f"field grace: {exc}")
        grace_s = 600.0
    notify_on = _listed(g["notify_on"])
    problems += [f"field notify_on: unknown outcome {s!r} (known: {', '.join(NOTIFY_STATUSES)})"
                 for s in notify_on if s not in NOTIFY_STATUSES]

    # channels
    channels = {}
    raw_channels = doc.get("channels") or {}
    if not isinstance(raw_channels, Mapping):
        problems.append("field channels: must be a mapping of name: {type: webhook|smtp, ...}")
        raw_channels = {}
    for name, spec in raw_channels.items():
        ch, found = parse_channel(str(name), spec)
        problems += found
        if ch is not None:
            channels[str(name)] = ch

    def check_targets(where: str, targets) -> tuple[str, ...]:
        names = tuple(str(t) for t in _listed(targets))
        for t in names:
            if t not in channels and t not in raw_channels:
                problems.append(f"{where}: field notify: unknown channel {t!r} "
                                f"(channels: {', '.join(map(str, raw_channels)) or 'none defined'})")
        return names

    # retention
    ret = doc.get("retention") or {}
    retention = Retention()
    if not isinstance(ret, Mapping):
        problems.append("field retention: must be a mapping with keep_runs and/or keep_days")
    else:
        problems += [f"retention: unknown field {k!r} (known: {', '.join(RETENTION_KEYS)})"
                     for k in ret if k not in RETENTION_KEYS]

        def limits(where, spec) -> dict:
            out = {}
            for key, kind in (("keep_runs", int), ("keep_days", float)):
                v = spec.get(key)
                if v is None:
                    continue
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 or \
                        (kind is int and not float(v).is_integer()):
                    problems.append(f"{where}: field {key}: must be a positive "
                                    f"{'whole number' if kind is int else 'number'}, not {v!r}")
                else:
                    out[key] = kind(v)
            return out

        top = limits("retention", ret)
        per = {}
        for report, spec in (ret.get("reports") or {}).items():
            if report not in config.REPORTS:
                problems.append(f"retention: reports: unknown report {report!r}")
            elif not isinstance(spec, Mapping):
                problems.append(f"retention: reports: {report}: must be a mapping")
            else:
                problems += [f"retention: reports: {report}: unknown field {k!r}" for k in spec
                             if k not in ("keep_runs", "keep_days")]
                per[report] = limits(f"retention: reports: {report}", spec)
        retention = Retention(keep_runs=top.get("keep_runs"), keep_days=top.get("keep_days"), reports=per)

    # alerts
    alerts = []
    seen_alerts: set[str] = set()
    for i, spec in enumerate(_listed(doc.get("alerts"))):
        where = f"alert {spec.get('name') if isinstance(spec, Mapping) and spec.get('name') else f'#{i + 1}'}"
        if not isinstance(spec, Mapping):
            problems.append(f"{where}: must be a mapping with name, report and when")
            continue
        problems += [f"{where}: unknown field {k!r} (known: {', '.join(ALERT_KEYS)})"
                     for k in spec if k not in ALERT_KEYS]
        missing = [k for k in ("name", "report", "when") if not spec.get(k)]
        problems += [f"{where}: field {k} is required" for k in missing]
        if missing:
            continue
        if spec["name"] in seen_alerts:
            problems.append(f"{where}: the name is used twice")
        seen_alerts.add(spec["name"])
        if spec["report"] not in config.REPORTS:
            problems.append(f"{where}: field report: unknown report {spec['report']!r} "
                            f"(reports: {', '.join(config.REPORTS)})")
        try:
            rule = parse_rule(str(spec["when"]))
        except RuleError as exc:
            problems.append(f"{where}: field when: {exc}")
            continue
        targets = check_targets(where, spec["notify"]) if spec.get("notify") is not None else None
        alerts.append(AlertRule(name=str(spec["name"]), report=str(spec["report"]), rule=rule,
                                notify=targets, note=str(spec.get("note") or "")))

    # jobs
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, Mapping):
        problems.append("field defaults: must be a mapping of job fields")
        defaults = {}
    problems += [f"defaults: unknown field {k!r} (known: {', '.join(JOB_DEFAULTS)})"
                 for k in defaults if k not in JOB_DEFAULTS]
    jobs: list[Job] = []
    raw_jobs = doc.get("jobs")
    if not isinstance(raw_jobs, list):
        problems.append("field jobs: must be a list of jobs")
        raw_jobs = []
    seen: set[str] = set()
    for i, spec in enumerate(raw_jobs):
        if not isinstance(spec, Mapping):
            problems.append(f"job #{i + 1}: must be a mapping with name, report and cron")
            continue
        where = f"job {spec.get('name') or f'#{i + 1}'}"
        if spec.get("name") and str(spec["name"]) in seen:
            problems.append(f"{where}: the name is used twice")
        seen.add(str(spec.get("name")))
        job, found = _parse_job(spec, defaults, where, g["timezone"], check_targets)
        problems += found
        if job is not None:
            jobs.append(job)
    if problems:
        raise ParameterError(f"schedule file {path or '(inline)'} is not valid:\n"
                             + "\n".join(f"  - {p}" for p in problems))
    return Schedule(path=Path(path) if path else None, jobs=tuple(jobs), timezone=g["timezone"],
                    grace_s=grace_s, base_url=str(g.get("base_url") or ""), notify_on=tuple(notify_on),
                    retention=retention, channels=channels, alerts=tuple(alerts))


def _parse_job(spec: Mapping, defaults: Mapping, where: str, zone: str, check_targets):
    from crmlab import runner

    problems = [f"{where}: unknown field {k!r} (known: {', '.join((*JOB_REQUIRED, *JOB_DEFAULTS))})"
                for k in spec if k not in JOB_REQUIRED and k not in JOB_DEFAULTS]
    missing = [f"{where}: field {k}: YAML read {spec[k]!r} as a yes/no value; put it in quotes"
               if isinstance(spec.get(k), bool) else f"{where}: field {k} is required"
               for k in JOB_REQUIRED if isinstance(spec.get(k), bool) or not spec.get(k)]
    if missing:
        return None, problems + missing
    v = {**JOB_DEFAULTS, **{k: x for k, x in defaults.items() if k in JOB_DEFAULTS},
         **{k: x for k, x in spec.items() if k in JOB_DEFAULTS}}
    v["timezone"] = v["timezone"] or zone
    name, report = str(spec["name"]), str(spec["report"])
    if not JOB_NAME.match(name):
        problems.append(f"{where}: field name: use letters, digits, '.', '_' and '-' only")
    if report not in config.REPORTS:
        problems.append(f"{where}: field report: unknown report {report!r} (reports: {', '.join(config.REPORTS)})")
    times = None
    try:
        times = CronTimes(str(spec["cron"]), v["timezone"])
        times.next_after(dt.datetime.now(UTC))
    except ValueError as exc:
        field_name = "timezone" if "time zone" in str(exc) else "cron"
        problems.append(f"{where}: field {field_name}: {exc}")
    except Exception as exc:  # croniter: an expression that never fires (31 February)
        problems.append(f"{where}: field cron: {spec['cron']!r} never fires ({type(exc).__name__})")
    timeout = None
    if v["timeout"] not in (None, "", 0):
        try:
            timeout = parse_duration(v["timeout"]) or None
        except ValueError as exc:
            problems.append(f"{where}: field timeout: {exc}")
    retries = Retries()
    r = v["retries"]
    if isinstance(r, int) and not isinstance(r, bool):
        r = {**JOB_DEFAULTS["retries"], "count": r}
    if not isinstance(r, Mapping):
        problems.append(f"{where}: field retries: must be a mapping with count and backoff")
    else:
        problems += [f"{where}: field retries: unknown field {k!r} (known: {', '.join(RETRY_KEYS)})"
                     for k in r if k not in RETRY_KEYS]
        r = {**JOB_DEFAULTS["retries"], **r}
        count = r["count"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            problems.append(f"{where}: field retries.count: must be a whole number >= 0, not {count!r}")
            count = 0
        try:
            retries = Retries(count=count, backoff_s=parse_duration(r["backoff"]),
                              max_backoff_s=parse_duration(r["max_backoff"]))
        except ValueError as exc:
            problems.append(f"{where}: field retries: {exc}")
    if v["catch_up"] not in CATCH_UP:
        problems.append(f"{where}: field catch_up: must be one of {', '.join(CATCH_UP)}, not {v['catch_up']!r}")
    mcu = v["max_catch_up"]
    if isinstance(mcu, bool) or not isinstance(mcu, int) or mcu < 1:
        problems.append(f"{where}: field max_catch_up: must be a whole number >= 1, not {mcu!r}")
        mcu = 1
    if v["audience"] not in AUDIENCES:
        problems.append(f"{where}: field audience: must be stakeholder or analyst, not {v['audience']!r}")
    if not isinstance(v["params"], Mapping):
        problems.append(f"{where}: field params: must be a mapping of name: value")
        v["params"] = {}
    if "run_dir" in v["params"]:
        problems.append(f"{where}: field params: run_dir is set by the runner")
    files = tuple(str(f) for f in _listed(v["param_files"]))
    if report in config.REPORTS:
        for f in files:
            try:
                runner._param_file(report, f)
            except ParameterError as exc:
                problems.append(f"{where}: field param_files: {exc}")
    if not isinstance(v["enabled"], bool):
        problems.append(f"{where}: field enabled: must be true or false")
    gate = v["gate"] if v["gate"] is not None else []
    if isinstance(gate, str):
        gate = [gate]
    if not isinstance(gate, list):
        problems.append(f"{where}: field gate: must be a list of expressions, e.g. [\"quality_score >= 95\"]")
        gate = []
    for expr in gate:
        try:
            runner.parse_gate([expr])
        except ParameterError as exc:
            problems.append(f"{where}: field gate: {exc}")
    targets = check_targets(where, v["notify"])
    if problems:
        return None, problems
    return Job(name=name, report=report, cron=times.expr, timezone=v["timezone"], times=times,
               description=str(v["description"] or ""), param_files=files, params=dict(v["params"]),
               source=str(v["source"]) if v["source"] else None,
               mapping=str(v["mapping"]) if v["mapping"] else None, timeout_s=timeout, retries=retries,
               catch_up=v["catch_up"], max_catch_up=mcu, audience=v["audience"], notify=targets,
               enabled=v["enabled"], gate=tuple(" ".join(str(e).split()) for e in gate)), []


# -- clocks ------------------------------------------------------------------------

class RealClock:
    """The wall clock; sleeps are cut short by ``wake`` and re-read the
    clock at least every :data:`MAX_SLEEP_S` seconds."""

    fake = False
    instant = False

    def now(self) -> dt.datetime:
        return dt.datetime.now(UTC)

    def sleep_until(self, t: dt.datetime, wake: threading.Event) -> None:
        while not wake.is_set():
            left = (t - self.now()).total_seconds()
            if left <= 0:
                return
            wake.wait(min(left, MAX_SLEEP_S))


class FakeClock(RealClock):
    """A clock that starts at ``start`` and runs ``speed`` times faster than
    real time; ``speed=inf`` jumps straight to each wake-up (a run then takes
    no time on this clock).

    Examples
    --------
    >>> c = FakeClock(parse_time("2026-03-08T00:00:00Z"), speed=math.inf)
    >>> c.sleep_until(parse_time("2026-03-08T07:00:00Z"), threading.Event()); iso(c.now())
    '2026-03-08T07:00:00Z'
    """

    fake = True

    def __init__(self, start: dt.datetime, speed: float = 1.0):
        if not speed or speed <= 0:
            raise ParameterError("--speed must be a positive number or inf")
        self.start = start.astimezone(UTC)
        self.speed = float(speed)
        self.instant = math.isinf(self.speed)
        self._t0 = time.monotonic()
        self._offset = dt.timedelta(0)

    def now(self) -> dt.datetime:
        if self.instant:
            return self.start + self._offset
        return self.start + dt.timedelta(seconds=(time.monotonic() - self._t0) * self.speed)

    def sleep_until(self, t: dt.datetime, wake: threading.Event) -> None:
        if self.instant:
            if t > self.now():
                self._offset = t - self.start
            return
        while not wake.is_set():
            left = (t - self.now()).total_seconds() / self.speed
            if left <= 0:
                return
            wake.wait(min(left, MAX_SLEEP_S))


# -- state and audit -------------------------------------------------------------------

def _write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class StateStore:
    """``reports/_schedule/state.json``: read freely (it is replaced
    atomically); changed only inside :meth:`edit`, which holds an exclusive
    lock on ``.state.json.lock`` so concurrent schedulers take turns."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.lock_path = self.path.with_name(f".{self.path.name}.lock")

    def read(self) -> dict:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    @contextlib.contextmanager
    def edit(self) -> Iterator[dict]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            state = self.read()
            yield state
            _write_json_atomic(self.path, state)
        finally:
            os.close(fd)


def schedule_dir(reports_dir=None) -> Path:
    """``reports/_schedule``."""
    return config.reports_dir(reports_dir) / SCHEDULE_DIR


def audit_path(reports_dir=None, *, dry_run: bool = False) -> Path:
    """``reports/_schedule/audit.jsonl`` (``audit.dry-run.jsonl``)."""
    return schedule_dir(reports_dir) / ("audit.dry-run.jsonl" if dry_run else "audit.jsonl")


def append_audit(record: Mapping, path: Path) -> dict:
    """Append one JSON line to the audit log: ``O_APPEND`` and a single
    ``write`` of the whole line, so lines from concurrent processes never
    interleave. ``time`` (now, UTC) is added unless the record has one.

    Returns
    -------
    dict
        The record as written.

    Examples
    --------
    >>> rec = append_audit({"event": "prune", "report": "segmentation"},
    ...                    Path(tempfile.mkdtemp()) / "audit.jsonl")
    >>> sorted(rec)
    ['event', 'report', 'time']
    """
    rec = {"time": iso(dt.datetime.now(UTC)), **record}
    line = (json.dumps(rec, ensure_ascii=False, default=str, separators=(",", ":")) + "\n").encode("utf-8")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, line)
    finally:
        os.close(fd)
    if written != len(line):
        raise OSError(f"the audit log {path} took {written} of {len(line)} bytes (disk full?)")
    return rec


def read_audit(reports_dir=None, *, dry_run: bool = False, path=None) -> list[dict]:
    """Every record of the audit log, oldest first (unreadable lines skipped)."""
    path = Path(path) if path else audit_path(reports_dir, dry_run=dry_run)
    out = []
    with contextlib.suppress(OSError):
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def _who() -> dict:
    try:
        user = getpass.getuser()
    except Exception:  # no name for this uid (a container)
        user = str(os.getuid())
    return {"user": user, "host": socket.gethostname(), "pid": os.getpid()}


def audit_run(result: RunResult, *, reports_dir=None, trigger: str = "cli", path=None, **context) -> dict:
    """One audit line for one run: report, trigger, who, parameters, data
    fingerprint, outcome, exit code, duration.

    ``crmlab run`` calls this for every run it makes (trigger ``cli`` or
    ``run-all``); the scheduler adds the job's context (``job``,
    ``scheduled_for``, ``attempt``, ...) as keyword arguments.

    Returns
    -------
    dict
        The record written.

    Examples
    --------
    >>> r = RunResult("segmentation", None, None, "skipped", 5, message="already running")
    >>> rec = audit_run(r, trigger="cli", path=Path(tempfile.mkdtemp()) / "audit.jsonl")
    >>> rec["event"], rec["trigger"], rec["status"], rec["exit_code"]
    ('run', 'cli', 'skipped', 5)
    """
    from crmlab.privacy import redact_url

    doc = {}
    if result.run_dir:
        with contextlib.suppress(OSError, ValueError):
            doc = json.loads((Path(result.run_dir) / "run.json").read_text(encoding="utf-8"))
    params = {k: v for k, v in (doc.get("params") or result.params or {}).items() if k != "run_dir"}
    if params.get("source"):
        params["source"] = redact_url(params["source"])
    err = result.error or doc.get("error") or {}
    if isinstance(context.get("given"), Mapping):
        context["given"] = _redacted(context["given"])
    rec = {"event": "run", "report": result.report, "trigger": trigger, **_who(), **context,
           "params": params, "fingerprint": (doc.get("source") or {}).get("fingerprint"),
           "run_id": result.run_id, "run_dir": str(result.run_dir) if result.run_dir else None,
           "status": result.status, "exit_code": result.exit_code,
           "duration_s": round(float(result.duration_s or 0.0), 3),
           "error": err.get("ename"), "cell": err.get("cell")}
    gate = result.gate or doc.get("gate")
    if gate:
        rec["gate"] = {"passed": gate.get("passed"),
                       "checks": [{k: c.get(k) for k in ("expression", "values", "passed", "reason")}
                                  for c in gate.get("checks") or []]}
    return append_audit(rec, Path(path) if path else audit_path(reports_dir))


# -- retention ---------------------------------------------------------------------

def prune_runs(report: str, reports_dir=None, *, keep_runs: int | None = None, keep_days: float | None = None,
               now: dt.datetime | None = None) -> list[str]:
    """Remove a report's old run directories.

    A run is kept when it is among the newest ``keep_runs`` or started
    within the last ``keep_days`` days (with only one limit set, that one
    decides; with neither, nothing is removed). Always kept: the newest
    successful run for stakeholders (the page behind ``latest.html``), the
    newest successful run of any audience, a run whose report lock is held
    (it is running), and anything that is not a run directory with a
    readable ``run.json``.

    Returns
    -------
    list of str
        The run ids removed, oldest first.

    Examples
    --------
    >>> prune_runs("segmentation", "/tmp/crmlab-doc-reports", keep_runs=30)  # doctest: +SKIP
    ['20260101T060000Z-1a2b']
    """
    import shutil

    from crmlab import locks

    if keep_runs is None and keep_days is None:
        return []
    rd = config.reports_dir(reports_dir) / report
    if not rd.is_dir():
        return []
    now = now or dt.datetime.now(UTC)
    runs = []
    for d in rd.iterdir():
        if not d.is_dir() or not RUN_ID.match(d.name):
            continue
        try:
            doc = json.loads((d / "run.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        try:
            started = parse_time(doc.get("started_at")) or dt.datetime.strptime(
                d.name[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            continue
        runs.append((started, d.name, doc, d))
    runs.sort(key=lambda r: (r[0], r[1]), reverse=True)
    keep: set[str] = set()
    if keep_runs is not None:
        keep |= {r[1] for r in runs[:keep_runs]}
    if keep_days is not None:
        keep |= {r[1] for r in runs if r[0] >= now - dt.timedelta(days=keep_days)}
    for audience in ("stakeholder", None):
        best = next((r for r in runs if r[2].get("status") == "success"
                     and (audience is None or r[2].get("audience", "stakeholder") == audience)), None)
        if best:
            keep.add(best[1])
    holder = locks.holder(report, reports_dir)
    if holder:
        keep |= {r[1] for r in runs if r[2].get("status") == "running"}
    removed = []
    for started, name, doc, d in sorted(runs, key=lambda r: (r[0], r[1])):
        if name in keep:
            continue
        trash = d.with_name(f".trash-{name}-{os.getpid()}")
        try:
            os.rename(d, trash)  # gone from the index at once; removed below
        except OSError:
            continue
        shutil.rmtree(trash, ignore_errors=True)
        removed.append(name)
    return removed


# -- deciding what is due --------------------------------------------------------------

@dataclass
class Plan:
    """What one job has pending: the fires to run now (oldest first, each with
    its trigger), how many the catch-up policy leaves out, and the newest fire
    considered (the job's new ``last_fire``)."""

    fires: list[tuple[dt.datetime, str]]
    missed: int = 0
    missed_more: bool = False
    newest: dt.datetime | None = None


def plan_job(job: Job, last_fire: dt.datetime | None, now: dt.datetime, *, alive_since: dt.datetime,
             grace_s: float, on_time: str = "schedule") -> Plan:
    """Decide which of a job's pending fires run now.

    Parameters
    ----------
    job : Job
    last_fire : datetime or None
        The last fire handled (``state.json``); None the first time the job
        is seen, when only fires within ``grace`` of ``alive_since`` count.
    now : datetime
    alive_since : datetime
        When this scheduler started: fires at or after ``alive_since -
        grace`` are on time (trigger ``on_time``), older ones were missed
        (trigger ``catch-up``).
    grace_s : float

    Returns
    -------
    Plan

    Examples
    --------
    >>> job = load_schedule_doc({"jobs": [{"name": "j", "report": "segmentation", "cron": "0 6 * * *",
    ...                                    "catch_up": "each", "max_catch_up": 2}]}).jobs[0]
    >>> p = plan_job(job, parse_time("2026-01-02T06:00Z"), parse_time("2026-01-07T12:00Z"),
    ...              alive_since=parse_time("2026-01-07T12:00Z"), grace_s=600)
    >>> [(iso(f), t) for f, t in p.fires], p.missed
    ([('2026-01-06T06:00:00Z', 'catch-up'), ('2026-01-07T06:00:00Z', 'catch-up')], 3)
    """
    horizon = alive_since - dt.timedelta(seconds=grace_s)
    since = last_fire if last_fire is not None else min(horizon, now)
    if since >= now:
        return Plan([])
    k = job.max_catch_up if job.catch_up == "each" else 1
    newest, older, more = job.times.recent(since, now, k)
    if not newest:
        return Plan([])
    run = [f for f in newest if f >= horizon] if job.catch_up == "skip" else newest
    return Plan(fires=[(f, on_time if f >= horizon else "catch-up") for f in run],
                missed=older + len(newest) - len(run), missed_more=more, newest=newest[-1])


def is_transient(result: RunResult) -> bool:
    """True for an outcome that may pass on a retry: exit 1 with a
    connection problem (:data:`TRANSIENT_ENAMES` or
    :data:`TRANSIENT_PATTERNS`). Never bad input, no data, a timeout, a skip
    or an interruption.

    Examples
    --------
    >>> is_transient(RunResult("segmentation", None, None, "failed", 1, error={"ename": "SourceUnavailable"}))
    True
    >>> is_transient(RunResult("segmentation", None, None, "bad_input", 2, message="could not connect"))
    False
    """
    if result.status != "failed" or result.exit_code != config.EXIT_FAILED:
        return False
    err = result.error or {}
    if err.get("ename") in TRANSIENT_ENAMES:
        return True
    text = f"{err.get('evalue') or ''} {result.message or ''}"
    return any(p.search(text) for p in TRANSIENT_PATTERNS)


@dataclass
class Fire:
    """One run to make: a job at a scheduled time, its trigger and attempt."""

    job: Job
    scheduled_for: dt.datetime
    trigger: str
    attempt: int = 1
    order: int = 0


# -- the scheduler -----------------------------------------------------------------

class Scheduler:
    """Decides what is due, runs it, records what happened.

    Parameters
    ----------
    schedule : Schedule
    reports_dir : path, optional
    clock : RealClock or FakeClock, optional
    dry_run : bool
        Decide and record, run nothing (own state and audit files).
    mode : {"daemon", "run-due"}
        ``run-due`` runs what is due, waits for its retries, and returns.
    only : iterable of str, optional
        Job names to consider (default: every enabled job).

    Examples
    --------
    >>> results = Scheduler(load_schedule(), mode="run-due").run()   # doctest: +SKIP
    """

    def __init__(self, schedule: Schedule, *, reports_dir=None, clock=None, dry_run: bool = False,
                 mode: str = "daemon", only: Iterable[str] | None = None):
        self.schedule = schedule
        self.rdir = config.reports_dir(reports_dir)
        self.clock = clock or RealClock()
        self.dry_run = dry_run
        self.mode = mode
        only = set(only or ())
        for name in only:
            schedule.job(name)  # unknown names are refused
        self.jobs = [j for j in schedule.jobs if j.enabled and (not only or j.name in only)]
        suffix = ".dry-run" if dry_run else ""
        self.store = StateStore(schedule_dir(self.rdir) / f"state{suffix}.json")
        self.audit_file = audit_path(self.rdir, dry_run=dry_run)
        self.started = self.clock.now()
        self.results: list[RunResult] = []
        self._wake = threading.Event()
        self._stop: int | None = None
        self._child: subprocess.Popen | None = None
        self._killed: str | None = None
        self._stop_timer: threading.Timer | None = None

    # -- records --
    def _audit(self, event: str, **fields) -> dict:
        rec = {"time": iso(self.clock.now()), "event": event, "by": self.mode, **fields}
        if self.clock.fake:
            rec["wall_time"] = iso(dt.datetime.now(UTC))
        if self.dry_run:
            rec["dry_run"] = True
        try:
            return append_audit(rec, self.audit_file)
        except OSError as exc:
            log.error("could not write the audit log: %s", exc)
            return rec

    def _say(self, level: int, text: str, *args) -> None:
        log.log(level, "%s " + text, self.clock.now().strftime("%Y-%m-%d %H:%M:%SZ"), *args)

    def _refresh(self, state: dict, now: dt.datetime) -> None:
        """Each job's next run and description in the state; jobs and alerts
        no longer in the schedule dropped."""
        jobs = state.setdefault("jobs", {})
        names = {j.name for j in self.schedule.jobs}
        for stale in [n for n in jobs if n not in names]:
            del jobs[stale]
        state["alerts"] = [a for a in state.get("alerts") or [] if a.get("job") in names]
        for job in self.schedule.jobs:
            js = jobs.setdefault(job.name, {})
            last = parse_time(js.get("last_fire"))
            nxt = job.times.next_after(max(now, last) if last else now) if job.enabled else None
            js.update(name=job.name, report=job.report, cron=job.cron, timezone=job.timezone,
                      catch_up=job.catch_up, enabled=job.enabled, next_run=iso(nxt),
                      next_run_local=_local_text(nxt, job.times.tz))
        state.update(updated_at=iso(now), schedule_file=str(self.schedule.path or ""),
                     clock="fake" if self.clock.fake else "real")

    # -- signals --
    def _on_signal(self, signum, frame) -> None:
        if self._stop is None:
            self._stop = signum
        self._wake.set()
        child = self._child
        if child is not None and child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
            if self._stop_timer is None:
                self._stop_timer = threading.Timer(STOP_GRACE_S, self._kill_child, ("stop",))
                self._stop_timer.daemon = True
                self._stop_timer.start()

    def _kill_child(self, why: str) -> None:
        from crmlab.runner import _kill_tree

        child = self._child
        if child is not None and child.poll() is None:
            self._killed = why
            log.error("the run did not stop in time (%s); killing it and its kernel", why)
            _kill_tree(child)

    # -- the loop --
    def run(self, *, until: dt.datetime | None = None) -> list[RunResult]:
        """Run the schedule until stopped (daemon), until idle (run-due) or
        until the clock passes ``until``.

        Returns
        -------
        list of RunResult
            The runs made, in order.
        """
        in_main = threading.current_thread() is threading.main_thread()
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)} if in_main else {}
        self._audit("start", pid=os.getpid(), jobs=[j.name for j in self.jobs],
                    schedule_file=str(self.schedule.path or ""),
                    clock="fake" if self.clock.fake else "real", until=iso(until))
        self._say(logging.INFO, "scheduler %s started: %d job(s) from %s", self.mode, len(self.jobs),
                  self.schedule.path or "(inline)")
        reason = "idle"
        try:
            while self._stop is None:
                now = self.clock.now()
                if until is not None and now > until:
                    reason = "until"
                    break
                due = self._collect_due(now)
                for i, fire in enumerate(due):
                    if self._stop is not None:
                        for left in due[i:]:
                            self._audit("not-started", job=left.job.name, report=left.job.report,
                                        scheduled_for=iso(left.scheduled_for), reason="the scheduler is stopping")
                        break
                    self._run_fire(fire)
                if due:
                    continue
                wake, why = self._next_wake(retries_only=self.mode == "run-due")
                if wake is None and self.mode == "run-due":
                    reason = "idle"
                    break
                if until is not None and (wake is None or wake > until):
                    if self.clock.instant or self.clock.now() >= until:
                        reason = "until"
                        break
                    wake, why = until, "--until"
                if wake is None:  # a daemon without enabled jobs: sleep until stopped
                    self._say(logging.INFO, "no job will fire; waiting for a signal")
                    while self._stop is None:
                        self._wake.wait(MAX_SLEEP_S)
                    break
                self._say(logging.INFO, "sleeping until %s (%s)", iso(wake), why)
                self.clock.sleep_until(wake, self._wake)
            if self._stop is not None:
                reason = signal.Signals(self._stop).name
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            self._audit("stop", reason=reason, runs=len(self.results))
            self._say(logging.INFO, "scheduler %s stopped (%s) after %d run(s)", self.mode, reason,
                      len(self.results))
        return self.results

    def _next_wake(self, *, retries_only: bool = False) -> tuple[dt.datetime | None, str]:
        state = self.store.read().get("jobs", {})
        best, why = None, ""
        for job in self.jobs:
            js = state.get(job.name, {})
            retry = js.get("retry")
            candidates = []
            if retry:
                candidates.append((parse_time(retry.get("at")), f"retry {retry.get('attempt')} of {job.name}"))
            if not retries_only and js.get("next_run"):
                candidates.append((parse_time(js["next_run"]), f"next fire of {job.name}"))
            for t, text in candidates:
                if t is not None and (best is None or t < best):
                    best, why = t, text
        return best, why

    def _collect_due(self, now: dt.datetime) -> list[Fire]:
        """Claim the due fires and retries (under the state lock) and return
        them, oldest first."""
        due: list[Fire] = []
        on_time = "schedule" if self.mode == "daemon" else "run-due"
        with self.store.edit() as state:
            jobs = state.setdefault("jobs", {})
            for order, job in enumerate(self.jobs):
                js = jobs.setdefault(job.name, {})
                plan = plan_job(job, parse_time(js.get("last_fire")), now, alive_since=self.started,
                                grace_s=self.schedule.grace_s, on_time=on_time)
                if plan.newest is not None:
                    js["last_fire"] = iso(plan.newest)
                if plan.missed:
                    more = "+" if plan.missed_more else ""
                    self._audit("missed", job=job.name, report=job.report, count=plan.missed,
                                more=plan.missed_more, policy=job.catch_up, last_fire=iso(plan.newest))
                    self._say(logging.WARNING, "%s: %d%s missed fire(s) not run (catch_up: %s)", job.name,
                              plan.missed, more, job.catch_up)
                retry = js.get("retry")
                if retry and plan.fires:
                    js["retry"] = None
                    self._audit("retry-dropped", job=job.name, report=job.report,
                                scheduled_for=retry.get("scheduled_for"), reason="a newer fire is due")
                elif retry and (parse_time(retry.get("at")) or now) <= now:
                    js["retry"] = None
                    due.append(Fire(job, parse_time(retry["scheduled_for"]), retry.get("trigger") or on_time,
                                    int(retry.get("attempt") or 2), order))
                for f, trigger in plan.fires:
                    due.append(Fire(job, f, trigger, 1, order))
            for fire in due:
                self._audit("due", job=fire.job.name, report=fire.job.report, trigger=fire.trigger,
                            scheduled_for=iso(fire.scheduled_for), attempt=fire.attempt)
                self._say(logging.INFO, "%s: due (%s, scheduled for %s, attempt %d)", fire.job.name,
                          fire.trigger, iso(fire.scheduled_for), fire.attempt)
            self._refresh(state, now)
        due.sort(key=lambda f: (f.scheduled_for, f.order))
        return due

    def _execute(self, fire: Fire) -> RunResult:
        """One ``crmlab run`` child for the fire (or nothing, in a dry run)."""
        from crmlab import runner

        job = fire.job
        params = job.params_for(fire.scheduled_for)
        if self.dry_run:
            return RunResult(report=job.report, run_id=None, run_dir=None, status="dry-run", exit_code=0,
                             message="dry run: nothing was executed", params=params)
        import yaml

        with tempfile.TemporaryDirectory(prefix="crmlab-schedule-") as tmp:
            tmp = Path(tmp)
            files = list(job.param_files)
            if params:
                (tmp / "params.yaml").write_text(yaml.safe_dump(dict(params), allow_unicode=True), encoding="utf-8")
                files.append(str(tmp / "params.yaml"))
            result_path = tmp / "result.json"
            args = runner._cli_args(job.report, source=job.source, mapping=job.mapping, reports_dir=self.rdir,
                                    audience=job.audience, timeout=job.timeout_s, trigger=f"schedule:{job.name}",
                                    param_files=files, params=None, gate=job.gate) + [
                "--result-json", str(result_path)]
            t0 = time.monotonic()
            self._killed = None
            backstop = None
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            self._child = proc
            try:
                if self._stop is not None:  # the signal came while the child was starting
                    self._on_signal(self._stop, None)
                if job.timeout_s:
                    backstop = threading.Timer(job.timeout_s + BACKSTOP_S, self._kill_child, ("timeout",))
                    backstop.daemon = True
                    backstop.start()
                proc.wait()
            finally:
                self._child = None
                for timer in (backstop, self._stop_timer):
                    if timer is not None:
                        timer.cancel()
                self._stop_timer = None
            seconds = round(time.monotonic() - t0, 3)
            try:
                doc = json.loads(result_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                doc = None
        if doc:
            res = RunResult(report=doc.get("report", job.report), run_id=doc.get("run_id"),
                            run_dir=Path(doc["run_dir"]) if doc.get("run_dir") else None,
                            status=doc.get("status", "failed"), exit_code=int(doc.get("exit_code", 1)),
                            error=doc.get("error"), message=doc.get("message", ""),
                            duration_s=doc.get("duration_s") or seconds, params=doc.get("params") or params,
                            gate=doc.get("gate"))
        else:
            rc = proc.returncode
            if self._killed == "timeout":
                status, code = "timeout", config.EXIT_TIMEOUT
            elif rc < 0 or rc > 128:
                status, code = "interrupted", 128 + (-rc if rc < 0 else rc - 128)
            else:
                from crmlab.runner import EXIT_STATUS

                status, code = EXIT_STATUS.get(rc, "failed"), rc
            res = RunResult(report=job.report, run_id=None, run_dir=None, status=status, exit_code=code,
                            message=f"the run process ended with code {rc} without a result",
                            duration_s=seconds, params=params)
        return res

    def _run_fire(self, fire: Fire) -> RunResult:
        job = fire.job
        self._say(logging.INFO, "%s: running report %s (%s, attempt %d)", job.name, job.report, fire.trigger,
                  fire.attempt)
        result = self._execute(fire)
        given = {"param_files": list(job.param_files), "params": job.params_for(fire.scheduled_for)}
        if job.source:
            given["source"] = job.source
        try:
            audit_run(result, path=self.audit_file, trigger=fire.trigger, time=iso(self.clock.now()),
                      by=self.mode, job=job.name, scheduled_for=iso(fire.scheduled_for), attempt=fire.attempt,
                      given=given, **({"wall_time": iso(dt.datetime.now(UTC))} if self.clock.fake else {}),
                      **({"dry_run": True} if self.dry_run else {}))
        except OSError as exc:
            log.error("could not write the audit log: %s", exc)
        level = logging.INFO if result.status in ("success", "dry-run") else logging.ERROR
        self._say(level, "%s: %s (exit %d) in %.1f s%s", job.name, result.status, result.exit_code,
                  float(result.duration_s or 0), f" -> {result.run_dir}" if result.run_dir else "")
        self.results.append(result)
        self._after_run(fire, result)
        return result

    def _after_run(self, fire: Fire, result: RunResult) -> None:
        from crmlab.notify import alert_message, failure_message, run_link

        job = fire.job
        now = self.clock.now()
        retry_at = None
        if self._stop is None and is_transient(result) and fire.attempt <= job.retries.count:
            retry_at = now + dt.timedelta(seconds=job.retries.delay(fire.attempt))
        evaluations = []
        if retry_at is None and result.status == "success" and not self.dry_run:
            evaluations = self._evaluate_alerts(job, result)
        failed = retry_at is None and result.status in self.schedule.notify_on
        link = run_link(result.run_dir, self.rdir, self.schedule.base_url) if result.run_dir else ""
        opened, closed = [], []
        with self.store.edit() as state:
            js = state.setdefault("jobs", {}).setdefault(job.name, {})
            js.update(last_run=iso(now), last_scheduled_for=iso(fire.scheduled_for), last_status=result.status,
                      last_exit_code=result.exit_code, last_attempt=fire.attempt,
                      last_run_dir=str(result.run_dir) if result.run_dir else None,
                      last_duration_s=result.duration_s)
            if retry_at is not None:
                js["retry"] = {"scheduled_for": iso(fire.scheduled_for), "attempt": fire.attempt + 1,
                               "at": iso(retry_at), "trigger": fire.trigger}
            else:
                alerts = state.setdefault("alerts", [])
                by_id = {a.get("id"): a for a in alerts}
                fail_id = f"{job.name}:run-failed"
                if result.status == "success":
                    js["consecutive_failures"] = 0
                    if fail_id in by_id:
                        closed.append(by_id.pop(fail_id))
                elif failed:
                    js["consecutive_failures"] = int(js.get("consecutive_failures") or 0) + 1
                    n = js["consecutive_failures"]
                    text = (f"last run {result.status.replace('_', ' ')} (exit {result.exit_code})"
                            + (f", {n} times in a row" if n > 1 else ""))
                    entry = by_id.get(fail_id) or {"id": fail_id, "kind": "failure", "job": job.name,
                                                   "report": job.report, "since": iso(now)}
                    entry.update(message=text, run_dir=js["last_run_dir"], link=link)
                    by_id[fail_id] = entry
                for rule, verdict, values in evaluations:
                    aid = f"{job.name}:{rule.name}"
                    if verdict and aid not in by_id:
                        by_id[aid] = {"id": aid, "kind": "alert", "job": job.name, "report": job.report,
                                      "rule": rule.name, "when": rule.rule.text, "since": iso(now),
                                      "values": values, "message": f"{rule.name}: {rule.rule.describe(values)}",
                                      "run_dir": js["last_run_dir"], "link": link}
                        opened.append((rule, values))
                    elif verdict and aid in by_id:
                        by_id[aid].update(values=values, message=f"{rule.name}: {rule.rule.describe(values)}",
                                          run_dir=js["last_run_dir"], link=link)
                    elif verdict is False and aid in by_id:
                        closed.append(by_id.pop(aid))
                state["alerts"] = list(by_id.values())
            self._refresh(state, now)

        if retry_at is not None:
            self._audit("retry", job=job.name, report=job.report, scheduled_for=iso(fire.scheduled_for),
                        attempt=fire.attempt + 1, at=iso(retry_at),
                        delay_s=job.retries.delay(fire.attempt), after_status=result.status,
                        after_error=(result.error or {}).get("ename"))
            self._say(logging.WARNING, "%s: %s may pass; retry %d of %d at %s", job.name, result.status,
                      fire.attempt, job.retries.count, iso(retry_at))
            return
        for entry in closed:
            self._audit("alert-closed", job=job.name, report=job.report, alert=entry.get("id"))
        if failed:
            msg = failure_message(report=job.report, job=job.name, status=result.status,
                                  exit_code=result.exit_code, attempts=fire.attempt,
                                  scheduled_for=iso(fire.scheduled_for), error=result.error, link=link,
                                  time=iso(now), gate=result.gate if result.status == "gated" else None)
            self._notify(job, job.notify, msg, kind="failure")
        for rule, values in opened:
            self._audit("alert-opened", job=job.name, report=job.report, alert=rule.name, when=rule.rule.text,
                        values=values)
            self._say(logging.WARNING, "%s: alert %s: %s", job.name, rule.name, rule.rule.describe(values))
            msg = alert_message(report=job.report, job=job.name, rule_name=rule.name, rule=rule.rule,
                                values=values, link=link, note=rule.note, time=iso(now))
            self._notify(job, rule.notify if rule.notify is not None else job.notify, msg, kind="alert",
                         alert=rule.name)
        if result.status == "success" and not self.dry_run:
            keep_runs, keep_days = self.schedule.retention.for_report(job.report)
            try:
                removed = prune_runs(job.report, self.rdir, keep_runs=keep_runs, keep_days=keep_days)
            except OSError as exc:
                removed = []
                log.error("%s: pruning old runs failed: %s", job.report, exc)
            if removed:
                self._audit("prune", report=job.report, removed=removed, keep_runs=keep_runs, keep_days=keep_days)
                self._say(logging.INFO, "%s: removed %d old run(s)", job.report, len(removed))
        if not self.dry_run:
            try:
                from crmlab.index import build_index

                build_index(self.rdir)
            except Exception:
                log.exception("rebuilding the index failed")

    def _notify(self, job: Job, targets: Sequence[str], msg, *, kind: str, **fields) -> None:
        from crmlab.notify import send

        channels = [self.schedule.channels[t] for t in targets if t in self.schedule.channels]
        if not channels:
            return
        if self.dry_run:
            self._audit("notify", job=job.name, report=job.report, kind=kind, subject=msg.subject,
                        results=[{"channel": c.name, "type": c.type, "ok": None, "error": "dry run"}
                                 for c in channels], **fields)
            return
        results = send(channels, msg)
        self._audit("notify", job=job.name, report=job.report, kind=kind, subject=msg.subject, results=results,
                    **fields)
        for r in results:
            self._say(logging.INFO if r["ok"] else logging.WARNING, "%s: %s notification to %s: %s", job.name,
                      kind, r["channel"], "sent" if r["ok"] else r["error"])

    def _evaluate_alerts(self, job: Job, result: RunResult) -> list[tuple[AlertRule, bool | None, dict]]:
        rules = [a for a in self.schedule.alerts if a.report == job.report]
        if not rules or not result.run_dir:
            return []
        current = _read_metrics(Path(result.run_dir))
        previous = _previous_metrics(Path(result.run_dir))
        out = []
        for a in rules:
            verdict, values = a.rule.evaluate(current, previous)
            if verdict is None:
                self._say(logging.INFO, "%s: alert %s cannot be told (a metric or the previous run is "
                                        "missing)", job.name, a.name)
            out.append((a, verdict, values))
        return out


def _redacted(given: dict) -> dict:
    from crmlab.privacy import redact_url

    out = dict(given)
    if out.get("source"):
        out["source"] = redact_url(out["source"])
    params = dict(out.get("params") or {})
    if isinstance(params.get("source"), str):
        params["source"] = redact_url(params["source"])
    out["params"] = params
    return out


def _read_metrics(run_dir: Path) -> dict:
    try:
        doc = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _previous_metrics(run_dir: Path) -> dict | None:
    """``metrics.json`` of the newest successful run before ``run_dir``
    (run ids sort by time); None when there is none."""
    names = sorted((d.name for d in run_dir.parent.iterdir()
                    if d.is_dir() and RUN_ID.match(d.name) and d.name < run_dir.name), reverse=True)
    for name in names:
        try:
            doc = json.loads((run_dir.parent / name / "run.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if doc.get("status") == "success":
            return _read_metrics(run_dir.parent / name)
    return None


def _local_text(t: dt.datetime | None, tz: ZoneInfo) -> str | None:
    if t is None:
        return None
    local = t.astimezone(tz)
    zone = "" if local.tzname() == tz.key else f" ({tz.key})"
    return f"{local:%Y-%m-%d %H:%M} {local.tzname()}{zone}"


# -- crontab -------------------------------------------------------------------------

def _crmlab_command() -> list[str]:
    script = Path(sys.executable).with_name("crmlab")
    return [str(script)] if script.exists() else [sys.executable, "-m", "crmlab.cli"]


def convert_cron(expr: str, from_tz: str, to_tz: str, *, start: dt.datetime | None = None) -> str | None:
    """The cron expression with its times moved from one zone to another,
    or None when that cannot be exact.

    Exact only when the two zones keep the same distance over the next year
    (no daylight-saving change in either, or the same changes), the minute
    and hour fields are plain numbers or lists, and a change of day can be
    carried by the day-of-week field (day-of-month and month must be ``*``).

    Examples
    --------
    >>> convert_cron("30 0 * * *", "Asia/Shanghai", "UTC")
    '30 16 * * *'
    >>> convert_cron("0 6 * * 1", "Asia/Shanghai", "UTC")
    '0 22 * * 0'
    >>> convert_cron("30 2 * * *", "Europe/Berlin", "UTC") is None
    True
    """
    from croniter import croniter

    fields = expr.split()
    if len(fields) != 5:
        return None
    src, dst = _zone(from_tz), _zone(to_tz)
    start = start or dt.datetime.now(UTC)
    deltas, offsets = set(), set()
    for day in range(0, 367):
        t = start + dt.timedelta(days=day)
        a, b = t.astimezone(src).utcoffset(), t.astimezone(dst).utcoffset()
        deltas.add(b - a)
        offsets |= {a, b}
    if fields[1] == "*" and fields[2:] == ["*", "*", "*"] and re.fullmatch(r"\d+(,\d+)*", fields[0]):
        # every hour at fixed minutes: the same in any zone whose offsets are whole hours
        whole = all(o.total_seconds() % 3600 == 0 for o in offsets)
        return expr if whole else None
    if len(deltas) != 1 or not all(re.fullmatch(r"\d+(,\d+)*", f) for f in fields[:2]):
        return None
    shift = int(deltas.pop().total_seconds() // 60)
    minutes = [int(x) for x in fields[0].split(",")]
    hours = [int(x) for x in fields[1].split(",")]
    moved = set()
    day_shifts = set()
    for h in hours:
        for m in minutes:
            total = h * 60 + m + shift
            day_shifts.add(total // 1440)
            moved.add(((total % 1440) // 60, total % 60))
    new_hours = sorted({h for h, _ in moved})
    new_minutes = sorted({m for _, m in moved})
    if len(day_shifts) != 1 or moved != {(h, m) for h in new_hours for m in new_minutes}:
        return None
    day_shift = day_shifts.pop()
    dom, month, dow = fields[2], fields[3], fields[4]
    if day_shift:
        if dom != "*" or month != "*":
            return None
        if dow != "*":
            days = croniter(expr).expanded[4]
            if days == ["*"]:
                dow = "*"
            else:
                dow = ",".join(str(d) for d in sorted({(int(d) + day_shift) % 7 for d in days}))
    return " ".join([",".join(map(str, new_minutes)), ",".join(map(str, new_hours)), dom, month, dow])


def crontab_lines(schedule: Schedule, *, reports_dir=None, convert_to: str | None = None, every: int = 5,
                  schedule_file=None) -> list[str]:
    """Crontab lines for the schedule: one ``crmlab schedule run-due --job
    NAME`` line per enabled job.

    With ``convert_to=None`` each zone's jobs follow a ``CRON_TZ=`` line
    (cronie, BSD cron). With a zone name the times are converted
    to it (:func:`convert_cron`) for a cron that ignores ``CRON_TZ``
    (Debian's); a job that cannot be converted exactly is left to a
    catch-all line that runs ``run-due`` every ``every`` minutes.
    """
    cmd = _crmlab_command()
    rdir = config.reports_dir(reports_dir)
    base = [*cmd, "-q", "schedule", "run-due"]
    if schedule_file and Path(schedule_file).resolve() != default_schedule_path().resolve():
        base += ["--file", str(Path(schedule_file).resolve())]
    if reports_dir:
        base += ["--reports-dir", str(rdir)]
    logfile = schedule_dir(rdir) / "cron.log"

    def line(timing: str, extra: list[str]) -> str:
        command = " ".join(shlex.quote(x) for x in [*base, *extra]) + f" >> {shlex.quote(str(logfile))} 2>&1"
        return f"{timing} {command.replace('%', chr(92) + '%')}"

    now = dt.datetime.now(UTC)
    out = [f"# crmlab schedule: {len(schedule.jobs)} job(s) from {schedule.path or '(inline)'}, "
           f"generated {iso(now)}",
           "# Install: crmlab schedule crontab | crontab -   (this replaces your crontab; merge by hand if needed)",
           "# Each line asks crmlab to run one job. run-due checks that the job is due in its own time zone,",
           "# takes the report's lock, retries, writes the audit log and notifies, so a late or repeated line",
           "# does no harm (a fire runs once).",
           f"CRMLAB_HOME={config.project_root()}"]
    left_over = []
    if convert_to is None:
        out += ["# CRON_TZ= sets the zone of the times on the lines after it (cronie, BSD cron).",
                "# A cron that ignores CRON_TZ (Debian's and Ubuntu's classic cron): use",
                "# `crmlab schedule crontab --convert` instead."]
        by_zone: dict[str, list[Job]] = {}
        for job in schedule.jobs:
            if job.enabled:
                by_zone.setdefault(job.timezone, []).append(job)
        for zone, jobs in by_zone.items():
            out.append(f"CRON_TZ={zone}")
            for job in jobs:
                out.append(line(job.cron, ["--job", job.name]))
        out.append("CRON_TZ=UTC")
    else:
        out.append(f"# times converted to {convert_to} (this machine's zone); exact only for zones without "
                   f"daylight-saving changes")
        for job in schedule.jobs:
            if not job.enabled:
                continue
            moved = job.cron if job.timezone == convert_to else convert_cron(job.cron, job.timezone, convert_to)
            if moved is None:
                left_over.append(job)
                out.append(f"# {job.name}: {job.cron} in {job.timezone} cannot be converted exactly "
                           f"(daylight saving time or a day change); the catch-all line runs it")
            else:
                out.append(line(moved, ["--job", job.name]))
    catch_all = line(f"*/{every} * * * *", [*(a for j in left_over for a in ("--job", j.name))])
    if left_over:
        out.append(f"# catch-all: every {every} minutes crmlab runs whatever of these jobs is due "
                   f"(keep grace >= {every}m)")
        out.append(catch_all)
    else:
        out += [f"# Alternative to the lines above: one catch-all line; crmlab runs whatever is due every {every}",
                f"# minutes (keep grace >= {every}m in schedule.yaml):", "# " + catch_all]
    return out


# -- commands ------------------------------------------------------------------------

def _clock(args) -> RealClock:
    if args.now:
        try:
            start = parse_time(args.now)
        except ValueError:
            raise ParameterError(f"--now expects an ISO time such as 2026-03-08T05:59:58Z, not {args.now!r}") from None
        return FakeClock(start, speed=_speed(args.speed) if args.speed else 1.0)
    if args.speed:
        raise ParameterError("--speed needs --now")
    return RealClock()


def _speed(text) -> float:
    if str(text).lower() in ("inf", "instant"):
        return math.inf
    try:
        return float(text)
    except ValueError:
        raise ParameterError(f"--speed expects a number or inf, not {text!r}") from None


def _jobs_table(schedule: Schedule, reports_dir, clock) -> list[dict]:
    now = clock.now()
    state = StateStore(schedule_dir(reports_dir) / "state.json").read().get("jobs", {})
    rows = []
    for job in schedule.jobs:
        js = state.get(job.name, {})
        nxt = job.times.next_after(now) if job.enabled else None
        rows.append({"name": job.name, "report": job.report, "cron": job.cron, "timezone": job.timezone,
                     "enabled": job.enabled, "catch_up": job.catch_up, "next_run": iso(nxt),
                     "next_run_local": nxt.astimezone(job.times.tz).isoformat() if nxt else None,
                     "last_run": js.get("last_run"), "last_status": js.get("last_status"),
                     "last_exit_code": js.get("last_exit_code"), "retry": js.get("retry")})
    return rows


def cmd_list(args) -> int:
    schedule = load_schedule(args.file)
    clock = _clock(args)
    rows = _jobs_table(schedule, args.reports_dir, clock)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return config.EXIT_OK
    print(f"{len(rows)} job(s) in {schedule.path}; now {clock.now():%Y-%m-%d %H:%M} UTC")
    head = ("JOB", "REPORT", "CRON", "ZONE", "NEXT RUN (JOB'S ZONE)", "NEXT RUN (UTC)", "LAST OUTCOME")
    table = [head]
    for r in rows:
        if r["next_run"]:
            local = parse_time(r["next_run_local"]).astimezone(_zone(r["timezone"]))
            nxt_local = f"{local:%Y-%m-%d %H:%M} {local.tzname()}"
            nxt_utc = f"{parse_time(r['next_run']):%Y-%m-%d %H:%M} UTC"
        else:
            nxt_local, nxt_utc = "disabled", "-"
        last = f"{r['last_status']} {r['last_run'] or ''}".strip() if r["last_status"] else "-"
        table.append((r["name"], r["report"], r["cron"], r["timezone"], nxt_local, nxt_utc, last))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    return config.EXIT_OK


def cmd_crontab(args) -> int:
    schedule = load_schedule(args.file)
    zone = args.convert
    if zone == "local":
        zone = _local_zone_name()
    for line in crontab_lines(schedule, reports_dir=args.reports_dir, convert_to=zone, every=args.every,
                              schedule_file=args.file):
        print(line)
    return config.EXIT_OK


def _local_zone_name() -> str:
    """This machine's IANA zone (``TZ``, ``/etc/timezone``, ``/etc/localtime``), else UTC."""
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz:
        with contextlib.suppress(ValueError):
            _zone(tz)
            return tz
    with contextlib.suppress(OSError, ValueError):
        name = Path("/etc/timezone").read_text().strip()
        _zone(name)
        return name
    with contextlib.suppress(OSError, ValueError):
        target = os.path.realpath("/etc/localtime")
        name = target.split("zoneinfo/", 1)[1]
        _zone(name)
        return name
    return "UTC"


def cmd_check(args) -> int:
    from crmlab import runner

    schedule = load_schedule(args.file)
    now = dt.datetime.now(UTC)
    problems = []
    for job in schedule.jobs:
        try:
            runner.resolve_parameters(job.report, param_files=job.param_files, params=job.params_for(now),
                                      source=job.source, mapping=job.mapping, audience=job.audience)
        except CrmlabError as exc:
            problems.append(f"job {job.name}: {str(exc).splitlines()[0]}")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return config.EXIT_BAD_INPUT
    print(f"{schedule.path}: {len(schedule.jobs)} job(s), {len(schedule.alerts)} alert rule(s), "
          f"{len(schedule.channels)} channel(s): ok")
    return config.EXIT_OK


def cmd_prune(args) -> int:
    schedule = load_schedule(args.file)
    reports = [args.report] if args.report else list(config.REPORTS)
    total = 0
    for report in reports:
        keep_runs, keep_days = schedule.retention.for_report(report)
        removed = prune_runs(report, args.reports_dir, keep_runs=keep_runs, keep_days=keep_days)
        if removed:
            append_audit({"event": "prune", "by": "cli", **_who(), "report": report, "removed": removed,
                          "keep_runs": keep_runs, "keep_days": keep_days}, audit_path(args.reports_dir))
            for name in removed:
                print(config.reports_dir(args.reports_dir) / report / name)
        total += len(removed)
    print(f"removed {total} run(s)", file=sys.stderr)
    return config.EXIT_OK


def cmd_run_due(args) -> int:
    from crmlab.runner import exit_code_of

    schedule = load_schedule(args.file)
    sched = Scheduler(schedule, reports_dir=args.reports_dir, clock=_clock(args), dry_run=args.dry_run,
                      mode="run-due", only=args.job)
    results = sched.run()
    for r in results:
        if r.run_dir:
            print(r.run_dir)
    return exit_code_of(results)


@contextlib.contextmanager
def _daemon_lock(reports_dir, dry_run: bool) -> Iterator[None]:
    path = schedule_dir(reports_dir) / (".daemon.dry-run.lock" if dry_run else ".daemon.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = None
            with contextlib.suppress(OSError, ValueError, AttributeError):
                pid = json.loads(os.pread(fd, 4096, 0) or b"{}").get("pid")
            raise _DaemonRunning(f"a scheduler daemon already runs on {schedule_dir(reports_dir).parent}"
                                 + (f" (pid {pid})" if pid else "")) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
        yield
    finally:
        os.close(fd)


class _DaemonRunning(CrmlabError):
    exit_code = config.EXIT_LOCKED


def cmd_daemon(args) -> int:
    schedule = load_schedule(args.file)
    until = parse_time(args.until) if args.until else None
    with _daemon_lock(args.reports_dir, args.dry_run):
        sched = Scheduler(schedule, reports_dir=args.reports_dir, clock=_clock(args), dry_run=args.dry_run,
                          mode="daemon")
        if not args.dry_run:
            with contextlib.suppress(Exception):
                with sched.store.edit() as state:  # the index shows the jobs before their first run
                    sched._refresh(state, sched.clock.now())
                from crmlab.index import build_index

                build_index(sched.rdir)
        sched.run(until=until)
    return config.EXIT_OK


COMMANDS = {"list": cmd_list, "run-due": cmd_run_due, "daemon": cmd_daemon, "crontab": cmd_crontab,
            "check": cmd_check, "prune": cmd_prune}


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--file", metavar="SCHEDULE.yaml", help="default parameters/schedule.yaml")
    common.add_argument("--reports-dir", metavar="DIR", help="reports tree (default $CRMLAB_REPORTS_DIR or reports/)")
    common.add_argument("--now", metavar="TIME", help="start a fake clock at this ISO time (tests, demos)")
    common.add_argument("--speed", metavar="X", help="the fake clock runs X times real time; inf jumps")
    ap = argparse.ArgumentParser(prog="crmlab schedule", description="Scheduled runs (parameters/schedule.yaml).")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("list", parents=[common], help="each job with its next run time (job's zone and UTC)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("run-due", parents=[common], help="run what is due now (and its retries), then exit")
    p.add_argument("--job", action="append", metavar="NAME", help="only this job (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="decide and record, run nothing")
    p = sub.add_parser("daemon", parents=[common], help="stay in the foreground and run jobs when due")
    p.add_argument("--dry-run", action="store_true", help="decide and record, run nothing")
    p.add_argument("--until", metavar="TIME", help="stop when the clock passes this ISO time")
    p = sub.add_parser("crontab", parents=[common], help="print crontab lines, one per job")
    p.add_argument("--convert", nargs="?", const="local", metavar="ZONE",
                   help="convert times to ZONE (default: this machine's) instead of CRON_TZ lines")
    p.add_argument("--every", type=int, default=5, metavar="MINUTES", help="period of the catch-all line")
    sub.add_parser("check", parents=[common], help="validate the schedule and every job's parameters")
    p = sub.add_parser("prune", parents=[common], help="remove old runs now, as retention says")
    p.add_argument("--report", choices=list(config.REPORTS))
    return ap


def main(argv: list[str] | None = None) -> int:
    """``crmlab schedule ARGS`` (called by :mod:`crmlab.cli`); returns the
    exit code.

    Examples
    --------
    >>> main(["list"])                                     # doctest: +SKIP
    0
    """
    ap = _parser()
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) and config.EXIT_BAD_INPUT
    try:
        return COMMANDS[args.command](args)
    except CrmlabError as exc:
        print(f"crmlab: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
