"""Small data must be fast: every report through ``crmlab run`` on a small source.

Runs ``crmlab run REPORT`` as a child process for each report and source and
prints, per run, the wall time, the CPU time (user + sys of the runner, its
papermill child and the kernel: every reaped descendant) and the phase
timings of ``run.json``. The target is under 15 s wall per report, kernel
start included, on data under 10,000 orders.

Usage (from the checkout)::

    .venv/bin/python bench/small.py                         # both sources, every report
    .venv/bin/python bench/small.py --source /tmp/small-plain --reports lifecycle campaigns
    .venv/bin/python bench/small.py --home /tmp/before       # another checkout, same interpreter
    .venv/bin/python bench/small.py --json out.json
    .venv/bin/python bench/small.py --before /tmp/before --repeat 2   # side by side, alternating

``--cold`` gives every run an empty cache directory (a newly exported folder;
by default the second run of a source reuses what the first cached).
``--home DIR`` runs the code and notebooks of another checkout (its ``lib/`` on
``PYTHONPATH``, ``CRMLAB_HOME=DIR``) with this interpreter. ``--before DIR``
runs each report with that checkout and with this one, alternating (before,
after, before, after ...), and prints the medians side by side: the two
see the same load on a shared machine. (Make the other checkout with
``git archive REV | tar -x -C DIR``.) Sources:
``small-plain`` is the gauntlet's plain shape (60 customers, ~240 orders,
every table; written to a temporary folder) and ``shop-export`` the example
export with its mapping (1,500 orders).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REPORTS = ("data-quality", "segmentation", "lifecycle", "forecasting", "campaigns")
TARGET_S = 15.0


def small_plain(folder: Path) -> Path:
    """The gauntlet's ``plain`` shape written as CSV files into ``folder``."""
    sys.path.insert(0, str(REPO / "tests"))
    import gauntlet

    if not (folder / "orders.csv").exists():
        gauntlet.write_source(gauntlet.shape_tables("plain"), folder)
    return folder


def sources(work: Path) -> dict[str, list[str]]:
    return {"small-plain": ["--source", str(small_plain(work / "small-plain"))],
            "shop-export": ["--source", str(REPO / "examples" / "shop-export"), "--mapping", "shop-export"]}


COLD = False  # --cold: each run starts with an empty cache directory (CRMLAB_DATA_DIR)


def run_one(report: str, source_args: list[str], reports_dir: Path, home: Path | None) -> dict:
    """One ``crmlab run``: wall seconds, CPU seconds of every descendant, run.json timings."""
    env = dict(os.environ)
    if COLD:
        env["CRMLAB_DATA_DIR"] = tempfile.mkdtemp(prefix="crmlab-small-cold-")
    if home is not None:
        env["CRMLAB_HOME"] = str(home)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(home / "lib"), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "crmlab.cli", "run", report, *source_args, "--reports-dir", str(reports_dir)]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=str(home or REPO))
    out, err = proc.communicate()
    wall = time.monotonic() - t0
    if COLD:
        shutil.rmtree(env["CRMLAB_DATA_DIR"], ignore_errors=True)
    # the runner waits for its child, which waits for the kernel: all are reaped, so
    # RUSAGE_CHILDREN of this process grows by exactly this run's CPU
    return {"report": report, "exit_code": proc.returncode, "wall_s": round(wall, 2), "out": out, "err": err}


def measure(report, source_args, reports_dir, home) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    row = run_one(report, source_args, reports_dir, home)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    row["cpu_s"] = round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 2)
    lines = [l for l in row.pop("out").splitlines() if l.strip()]
    run_dir = Path(lines[-1]) if lines and Path(lines[-1]).is_dir() else None
    doc = json.loads((run_dir / "run.json").read_text()) if run_dir else {}
    row["status"] = doc.get("status")
    row["run_dir"] = str(run_dir) if run_dir else None
    row["metrics"] = json.loads((run_dir / "metrics.json").read_text()) if run_dir and (
        run_dir / "metrics.json").exists() else None
    row["timings"] = doc.get("timings", {})
    err = row.pop("err")
    if row["exit_code"] != 0:
        row["error"] = (err.strip().splitlines() or [""])[-1]
    return row


def compare(srcs: dict, reports, before: Path, work: Path, repeat: int, json_path: Path | None) -> int:
    """Each report with ``before`` and with this checkout, alternating; medians side by side."""
    import statistics

    rows = []
    print(f"{'source':<12} {'report':<13} {'before wall':>11} {'cpu':>5} {'after wall':>10} {'cpu':>5}  "
          f"{'check':>5} {'exec':>5} {'render':>6}  load")
    for name, source_args in srcs.items():
        for report in reports:
            runs = {"before": [], "after": []}
            for _ in range(repeat):
                for side, home in (("before", before), ("after", None)):
                    row = measure(report, source_args, work / side, home)
                    row.update(source=name, side=side, load=round(os.getloadavg()[0], 1))
                    runs[side].append(row)
                    rows.append(row)
            med = {side: (statistics.median(r["wall_s"] for r in rs), statistics.median(r["cpu_s"] for r in rs))
                   for side, rs in runs.items()}
            t = runs["after"][-1]["timings"]
            bad = [r for rs in runs.values() for r in rs if r["exit_code"] != 0]
            print(f"{name:<12} {report:<13} {med['before'][0]:>11.1f} {med['before'][1]:>5.1f} "
                  f"{med['after'][0]:>10.1f} {med['after'][1]:>5.1f}  {t.get('source_check_s') or 0:>5.1f} "
                  f"{t.get('execute_s') or 0:>5.1f} {t.get('render_s') or 0:>6.1f}  {rows[-1]['load']}"
                  + (f"  FAILED: {bad[0]['side']} exit {bad[0]['exit_code']} {bad[0].get('error', '')}" if bad else ""),
                  flush=True)
    if json_path:
        json_path.write_text(json.dumps(rows, indent=1))
    return 0 if all(r["exit_code"] == 0 for r in rows) else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reports", nargs="*", default=list(REPORTS))
    ap.add_argument("--source", action="append", help="a source folder (default: small-plain and shop-export)")
    ap.add_argument("--home", type=Path, help="run another checkout's code and notebooks")
    ap.add_argument("--before", type=Path, help="another checkout to compare with, run alternately")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--cold", action="store_true",
                    help="no cache from earlier runs: a fresh CRMLAB_DATA_DIR for each run (file sources only)")
    ap.add_argument("--json", type=Path, help="write every row to this file")
    args = ap.parse_args(argv)
    global COLD
    COLD = args.cold
    with tempfile.TemporaryDirectory(prefix="crmlab-small-") as tmp:
        work = Path(tmp)
        srcs = ({Path(s).name: ["--source", str(Path(s).resolve())] for s in args.source} if args.source
                else sources(work))
        if args.before:
            return compare(srcs, args.reports, args.before, work, args.repeat, args.json)
        rows = []
        print(f"{'source':<12} {'report':<13} {'exit':>4} {'wall s':>7} {'cpu s':>6}  "
              f"{'check':>5} {'exec':>5} {'render':>6}  load")
        for name, source_args in srcs.items():
            for report in args.reports:
                for _ in range(args.repeat):
                    row = measure(report, source_args, work / "reports", args.home)
                    row["source"], row["load"] = name, round(os.getloadavg()[0], 1)
                    rows.append(row)
                    t = row["timings"]
                    print(f"{name:<12} {report:<13} {row['exit_code']:>4} {row['wall_s']:>7.1f} {row['cpu_s']:>6.1f}  "
                          f"{t.get('source_check_s') or 0:>5.1f} {t.get('execute_s') or 0:>5.1f} "
                          f"{t.get('render_s') or 0:>6.1f}  {row['load']}"
                          + ("" if row["exit_code"] == 0 else f"  {row.get('error', '')}"), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    slow = [r for r in rows if r["wall_s"] >= TARGET_S]
    print(f"{len(rows) - len(slow)} of {len(rows)} runs under {TARGET_S:g} s")
    return 0 if all(r["exit_code"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
