"""One lock per report, safe across crashes.

A run holds an exclusive ``fcntl.flock`` on ``reports/<report>/.lock`` for as
long as it runs. The kernel drops a flock when the last process holding the
open file goes away, so a lock left behind by a crashed or killed run is free
again at once: there is no stale-lock clean-up to get wrong. The holder's pid,
run id and start time are written into the file for people and for the
"already running" message; the file's content never decides anything.

The runner passes the locked descriptor on to the process that executes the
notebook, so the lock stays held until both are gone.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from crmlab import config
from crmlab.exceptions import RunLocked

LOCK_NAME = ".lock"


@dataclass
class Lock:
    """A held report lock: ``fd`` is the open, flocked descriptor."""

    report: str
    path: Path
    fd: int
    run_id: str | None = None


def lock_path(report: str, reports_dir=None) -> Path:
    """``reports/<report>/.lock``."""
    return config.reports_dir(reports_dir) / report / LOCK_NAME


def _read_holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 4096).decode("utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def _try_flock(fd: int, attempts: int = 4, pause: float = 0.05) -> bool:
    """Take the exclusive lock without waiting for a run; a few short retries
    ride out a momentary probe by :func:`holder` (which takes a shared lock)."""
    for i in range(attempts):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if i + 1 < attempts:
                time.sleep(pause)
    return False


@contextlib.contextmanager
def report_lock(report: str, reports_dir=None, *, run_id: str | None = None) -> Iterator[Lock]:
    """Hold the report's lock for the ``with`` block, or raise at once.

    Parameters
    ----------
    report : str
        A key of ``config.REPORTS``.
    reports_dir : path, optional
        The reports tree (default ``config.reports_dir()``).
    run_id : str, optional
        Written into the lock file with the pid, for the "already running"
        message.

    Returns
    -------
    context manager yielding a :class:`Lock`

    Raises
    ------
    RunLocked
        Another live process holds the lock (exit code 5).

    Examples
    --------
    >>> with report_lock("segmentation", "/tmp/crmlab-doc-reports") as lock:  # doctest: +SKIP
    ...     ...
    """
    path = lock_path(report, reports_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_flock(fd):
            holder = _read_holder(fd)
            who = ", ".join(f"{k} {holder[k]}" for k in ("pid", "run_id", "started_at") if holder.get(k))
            raise RunLocked(f"report {report} is already running" + (f" ({who})" if who else "")) from None
        info = {"pid": os.getpid(), "run_id": run_id, "host": socket.gethostname(),
                "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
        yield Lock(report=report, path=path, fd=fd, run_id=run_id)
    finally:
        # closing the descriptor releases the flock (unless a child still holds it)
        os.close(fd)


def holder(report: str, reports_dir=None) -> dict | None:
    """Who holds the report's lock (``{"pid", "run_id", "started_at", ...}``),
    or ``None`` when no live process does.

    Examples
    --------
    >>> holder("segmentation", "/tmp/crmlab-doc-empty") is None
    True
    """
    path = lock_path(report, reports_dir)
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd) or {"pid": None}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def is_locked(report: str, reports_dir=None) -> bool:
    """True while a live process runs the report."""
    return holder(report, reports_dir) is not None
