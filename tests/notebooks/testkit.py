"""Helpers for the runner, report, index, CLI and browser tests.

The notebooks beside this file are tiny papermill-style notebooks, one per
behaviour: ``ok`` (a full page: metrics, findings, a section, summary,
export, footer), ``broken`` (raises ValueError in its fifth cell),
``no_data`` (raises NoDataError), ``slow`` (writes its kernel's pid, then
sleeps) and ``hostile`` (shows hostile customer names through Report).

A test project is a temp directory with ``notebooks/<config.REPORTS file>``
copied from these, pointed at by ``CRMLAB_HOME``; the reports tree is
``CRMLAB_REPORTS_DIR``. The data source is a directory holding a three-row
``orders.csv`` (the smallest source the data contract accepts).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from crmlab import config

HERE = Path(__file__).resolve().parent


def make_project(root: Path, notebooks: dict[str, str]) -> Path:
    """``root/notebooks/<file of report>`` copied from ``<behaviour>.ipynb``."""
    nb_dir = root / "notebooks"
    nb_dir.mkdir(parents=True, exist_ok=True)
    for report, behaviour in notebooks.items():
        shutil.copyfile(HERE / f"{behaviour}.ipynb", nb_dir / config.REPORTS[report])
    return root


def tiny_source(root: Path, rows: int = 3, columns=("customer_id", "order_date", "amount")) -> Path:
    """A directory source with ``orders.csv`` of ``rows`` valid orders."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [",".join(columns)]
    for i in range(rows):
        values = {"customer_id": str(i % 2 + 1), "order_date": f"2026-06-{i + 1:02d}", "amount": f"{10 + i}.5"}
        lines.append(",".join(values[c] for c in columns))
    (root / "orders.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def env_for(project: Path, reports: Path) -> dict:
    """The environment of a ``crmlab`` subprocess on this test project."""
    return dict(os.environ, CRMLAB_HOME=str(project), CRMLAB_REPORTS_DIR=str(reports))


def crmlab(args: list[str], env: dict, **kw) -> subprocess.CompletedProcess:
    """Run ``python -m crmlab.cli ARGS`` and capture its output."""
    return subprocess.run([sys.executable, "-m", "crmlab.cli", *args], env=env, capture_output=True,
                          text=True, **kw)


def run_dirs(reports: Path, report: str) -> list[Path]:
    """The run directories of one report (names not starting with . or _)."""
    d = reports / report
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))) \
        if d.is_dir() else []


def wait_for(path: Path, seconds: float = 60.0) -> bool:
    """Poll until ``path`` exists and is not empty."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if path.exists() and path.stat().st_size:
            return True
        time.sleep(0.1)
    return False


def pid_alive(pid: int) -> bool:
    """True while ``pid`` is a live (not zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
