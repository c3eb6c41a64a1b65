"""crmlab benchmark: wall time and peak memory, crmlab beside its peers.

Every case runs in a fresh child process, so its peak resident memory is its
own: the larger of the child's ``ru_maxrss`` and the peak of the summed
resident memory of the child and every process it starts (kernels, worker
processes), sampled every 50 ms. A case is a function in a ``bench/bench_*.py``
module, listed in that module's ``CASES`` dict::

    def aggregation_duckdb(scale: str, work: Path) -> dict:
        ...setup (not timed)...
        with timed() as t:
            ...the measured work...
        return {"seconds": t.seconds, "group": "rfm-aggregation", "impl": "duckdb",
                "rows": n}

    CASES = {"aggregation_duckdb": aggregation_duckdb}

``seconds`` is the measured part (setup excluded); without it the child's
whole wall time counts. Cases that share a ``group`` are compared side by
side: the table shows each one's median time as a ratio to the case whose
``impl`` is ``"crmlab"``. ``target_seconds`` / ``target_mib`` (optional)
print a pass/fail column against the issue's goal.

Usage::

    python bench/run.py                      # demo scale, every case
    python bench/run.py --scale large        # 1M customers / 20M orders
    python bench/run.py --only segmentation --repeat 3

Writes ``bench/results/bench-<scale>-<time>.json`` and ``latest-<scale>.json``
(git-ignored scratch). With ``--baseline`` (what ``make bench`` and ``make
bench-demo`` pass) the same document also goes to ``bench/BASELINE-<scale>.json``,
which is committed: the README's speed table is generated from it by
``bench/readme_table.py``, and it records how it was made (command, commit,
Python, machine, the lock's hash and whether the environment matched it, the
peers' versions), so every number in the README can be traced and rerun.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import platform
import re
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
ROOT = BENCH_DIR.parent
LOCK = ROOT / "requirements" / "lock.txt"
SCALES = ("demo", "large")


@dataclass
class Timer:
    seconds: float = 0.0


@contextlib.contextmanager
def timed():
    """Measure the enclosed block: ``with timed() as t: ...; t.seconds``."""
    t = Timer()
    start = time.perf_counter()
    try:
        yield t
    finally:
        t.seconds = time.perf_counter() - start


def _modules() -> dict[str, Path]:
    return {p.stem.removeprefix("bench_"): p for p in sorted(BENCH_DIR.glob("bench_*.py"))}


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCH_DIR))
    spec.loader.exec_module(mod)
    return mod


def _run_child(area: str, case: str, scale: str, work: Path) -> dict:
    """Run one case in a child process; add wall time and peak RSS."""
    cmd = [sys.executable, str(Path(__file__)), "--_case", f"{area}:{case}",
           "--scale", scale, "--work", str(work)]
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as fout, tempfile.TemporaryFile("w+") as ferr:
        proc = subprocess.Popen(cmd, stdout=fout, stderr=ferr, text=True)
        tree_peak = _watch_tree(proc)
        wall = time.perf_counter() - start
        fout.seek(0), ferr.seek(0)
        out, err = fout.read(), ferr.read()
    result: dict = {"area": area, "case": case, "wall_seconds": round(wall, 3)}
    if proc.returncode != 0:
        result["error"] = (err.strip().splitlines() or ["failed"])[-1][:300]
        sys.stderr.write(err[-3000:])
        return result
    payload = json.loads(out.strip().splitlines()[-1])
    result.update(payload)
    # peak of the summed resident memory of the case and every process it started
    result["peak_mib"] = round(max(result.get("peak_mib", 0), tree_peak / 2**20), 1)
    result.setdefault("seconds", round(wall, 3))
    return result


def _watch_tree(proc: subprocess.Popen, every: float = 0.05) -> int:
    """Wait for ``proc``; return the peak of the summed RSS (bytes) of it and
    its descendants, sampled every ``every`` seconds."""
    import psutil

    peak = 0
    try:
        root = psutil.Process(proc.pid)
    except psutil.NoSuchProcess:
        proc.wait()
        return 0
    while proc.poll() is None:
        total = 0
        try:
            procs = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        peak = max(peak, total)
        time.sleep(every)
    proc.wait()
    return peak


def _child(spec: str, scale: str, work: Path) -> None:
    import resource

    area, case = spec.split(":")
    mod = _load(_modules()[area])
    work.mkdir(parents=True, exist_ok=True)
    res = mod.CASES[case](scale, work) or {}
    # peak resident set of this process and of any children it waited for (MiB)
    self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    res["peak_mib"] = round(max(self_kib, kids_kib) / 1024, 1)
    print(json.dumps(res, default=float))


def _summarise(rows: list[dict]) -> list[dict]:
    """Median over repeats per (area, case); ratios within groups."""
    by_case: dict[tuple, list[dict]] = {}
    for r in rows:
        by_case.setdefault((r["area"], r["case"]), []).append(r)
    summary = []
    for (area, case), runs in by_case.items():
        ok = [r for r in runs if "error" not in r]
        base = dict(ok[0] if ok else runs[0])
        if ok:
            base["seconds"] = round(statistics.median(r["seconds"] for r in ok), 3)
            base["peak_mib"] = round(statistics.median(r["peak_mib"] for r in ok), 1)
            base["runs"] = [round(r["seconds"], 3) for r in ok]
        summary.append(base)
    refs = {s["group"]: s for s in summary if s.get("group") and s.get("impl") == "crmlab"
            and "error" not in s}
    for s in summary:
        ref = refs.get(s.get("group"))
        if ref and "error" not in s and s.get("impl") != "crmlab":
            s["ratio_to_crmlab"] = round(s["seconds"] / ref["seconds"], 2) if ref["seconds"] else None
            s["memory_ratio_to_crmlab"] = (round(s["peak_mib"] / ref["peak_mib"], 2)
                                           if ref.get("peak_mib") else None)
        ok_time = s.get("target_seconds") is None or s.get("seconds", 1e9) <= s["target_seconds"]
        ok_mem = s.get("target_mib") is None or s.get("peak_mib", 1e12) <= s["target_mib"]
        if s.get("target_seconds") is not None or s.get("target_mib") is not None:
            s["meets_target"] = bool(ok_time and ok_mem and "error" not in s)
    return summary


def _print_table(summary: list[dict], scale: str) -> None:
    cols = ["area", "case", "impl", "seconds", "peak_mib", "ratio_to_crmlab", "target", "ok"]
    lines = []
    for s in summary:
        target = []
        if s.get("target_seconds") is not None:
            target.append(f"<{s['target_seconds']}s")
        if s.get("target_mib") is not None:
            target.append(f"<{s['target_mib']}MiB")
        lines.append([
            s["area"], s["case"], s.get("impl", ""),
            "ERROR" if "error" in s else f"{s['seconds']:.2f}",
            "" if "error" in s else f"{s['peak_mib']:.0f}",
            "" if s.get("ratio_to_crmlab") is None else f"{s['ratio_to_crmlab']:.2f}x",
            " ".join(target),
            {True: "yes", False: "NO"}.get(s.get("meets_target"), ""),
        ])
    widths = [max(len(str(x)) for x in [c] + [l[i] for l in lines]) for i, c in enumerate(cols)]
    print(f"\ncrmlab bench, scale={scale} (times: median seconds of the measured part)")
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("  ".join("-" * w for w in widths))
    for l in lines:
        print("  ".join(str(x).ljust(w) for x, w in zip(l, widths)))
    for s in summary:
        if "error" in s:
            print(f"! {s['area']}.{s['case']}: {s['error']}")
        elif s.get("note"):
            print(f"- {s['area']}.{s['case']}: {s['note']}")


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _freeze(python: Path) -> dict[str, str]:
    """name -> version of every distribution a peer's Python has ({} if it has none)."""
    if not python.exists():
        return {}
    code = ("import importlib.metadata as m, json; "
            "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def environment() -> dict:
    """How and where the numbers were made: enough to trace and rerun them."""
    pins: dict[str, set[str]] = {}
    if LOCK.exists():
        for line in LOCK.read_text().splitlines():
            m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", line)
            if m:
                pins.setdefault(_norm(m[1]), set()).add(m[2])
    have = {_norm(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    off_lock = sorted(f"{n} {have[n]} (lock: {' or '.join(sorted(pins[n]))})"
                      for n in pins.keys() & have.keys() if have[n] not in pins[n])
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        mem_gib = None
    peers = BENCH_DIR / ".venv-peers"
    return {
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "memory_gib": mem_gib,
        "lock": str(LOCK.relative_to(ROOT)),
        "lock_sha256": hashlib.sha256(LOCK.read_bytes()).hexdigest() if LOCK.exists() else None,
        "differs_from_lock": off_lock,
        "versions": {n: have[n] for n in ("crmlab", "duckdb", "ibis-framework", "pandas", "numpy",
                                          "pyarrow", "scipy", "scikit-learn", "statsmodels")
                     if n in have},
        "peers": {"ydata-profiling": {k: v for k, v in _freeze(peers / "bin" / "python").items()
                                      if _norm(k) in ("ydata-profiling", "pandas", "numpy")},
                  "lifetimes": {k: v for k, v in
                                _freeze(peers / "lifetimes" / "bin" / "python").items()
                                if _norm(k) in ("lifetimes", "pandas", "numpy", "scipy")}},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", choices=SCALES, default="demo")
    ap.add_argument("--only", action="append", default=[],
                    help="area or area.case to run (repeatable)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--baseline", action="store_true",
                    help="also write the committed bench/BASELINE-<scale>.json (every case, "
                         "no --only)")
    ap.add_argument("--_case", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    work = args.work or Path(os.environ.get("CRMLAB_BENCH_WORK", RESULTS_DIR / "work"))
    if args._case:
        _child(args._case, args.scale, work)
        return 0

    if args.baseline and args.only:
        ap.error("--baseline records a whole run: leave out --only")
    plan = []
    for area, path in _modules().items():
        mod = _load(path)
        for case in getattr(mod, "CASES", {}):
            scales = getattr(mod, "SCALES", {}).get(case, SCALES)
            if args.scale not in scales:
                continue
            if args.only and not any(o in (area, f"{area}.{case}") for o in args.only):
                continue
            plan.append((area, case))
    load_start = os.getloadavg()
    rows = []
    for i in range(args.repeat):
        for area, case in plan:
            print(f"[{i + 1}/{args.repeat}] {area}.{case} ...", flush=True)
            rows.append(_run_child(area, case, args.scale, work / area))
    summary = _summarise(rows)
    _print_table(summary, args.scale)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    cases_at_scale = {}
    for area, path in _modules().items():
        mod = _load(path)
        for case in getattr(mod, "CASES", {}):
            for sc in getattr(mod, "SCALES", {}).get(case, SCALES):
                cases_at_scale.setdefault(sc, []).append(f"{area}.{case}")
    command = "python bench/run.py " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]) if a != "--baseline")
    doc = {"scale": args.scale, "time": stamp, "cpu_count": os.cpu_count(),
           "repeat": args.repeat, "command": command.strip(),
           # the machine's 1/5/15-minute load averages before and after: on a shared
           # machine, a high load says the times are slower than the code is
           "load_average": {"start": [round(x, 2) for x in load_start],
                            "end": [round(x, 2) for x in os.getloadavg()]},
           "environment": environment(),
           "cases_at_scale": cases_at_scale, "cases": summary, "runs": rows}
    text = json.dumps(doc, indent=2, default=float) + "\n"
    out = RESULTS_DIR / f"bench-{args.scale}-{stamp}.json"
    out.write_text(text)
    (RESULTS_DIR / f"latest-{args.scale}.json").write_text(text)
    print(f"\nwrote {out}")
    if args.baseline:
        baseline = BENCH_DIR / f"BASELINE-{args.scale}.json"
        baseline.write_text(text)
        print(f"wrote {baseline} (commit it; `python bench/readme_table.py` updates the README)")
    return 1 if any("error" in s for s in summary) else 0


if __name__ == "__main__":
    sys.exit(main())
