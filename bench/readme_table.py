"""Write the README's speed table from the committed benchmark baselines.

    python bench/readme_table.py           # rewrite the table in README.md
    python bench/readme_table.py --check   # exit 1 if README.md is not what the baselines give

The table sits between the markers ``<!-- speed-table:start -->`` and
``<!-- speed-table:end -->`` and is generated from ``bench/BASELINE-demo.json``
and ``bench/BASELINE-large.json`` (written by ``make bench-demo`` / ``make
bench``, i.e. ``bench/run.py --baseline``) and nothing else: every number in it
can be traced to a case in one of those files and rerun with the command the
file records. A scale without a baseline file keeps its rows, marked "not yet
measured with this baseline". Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
README = BENCH_DIR.parent / "README.md"
START, END = "<!-- speed-table:start -->", "<!-- speed-table:end -->"
SCALES = {"demo": "Demo scale", "large": "Large scale (1M customers / 20M orders)"}
NOT_MEASURED = "not yet measured with this baseline"

# area.case -> what the row says, in the table's order. A crmlab case not listed
# here still gets a row (named area.case, after these), so no measured case is hidden.
LABELS = {
    "generate.world": "generate the synthetic world",
    "generate.people_crmlab": "synthetic people (names, addresses, phones)",
    "sources.open_quarantine": "open a source: contract check and quarantine",
    "quality.report": "data-quality computation",
    "quality.profile_crmlab": "profiling the customers table",
    "quality.checks_crmlab": "every data-quality rule on the customers table",
    "segmentation.rfm_crmlab": "per-customer RFM aggregation",
    "segmentation.customer_table": "segmentation customer table",
    "segmentation.end_to_end": "segmentation end to end",
    "clv.fit_clv_crmlab": "BG/NBD + Gamma–Gamma + CLV",
    "clv.lifecycle_pipeline": "lifecycle computation",
    "forecasting.grouped_crmlab": "forecasting: weekly series per group, backtest + selection",
    "forecasting.total_all_models": "forecasting: the total with every model",
    "forecasting.elasticity": "price elasticity",
    "forecasting.report_world": "forecasting computation",
    "campaigns.aggregates_crmlab": "campaign aggregates",
    "campaigns.report_core": "campaigns computation (core)",
    "campaigns.report_full": "campaigns computation (full)",
    "campaigns.report_world": "campaigns computation on the world",
    "runner.runner_tiny": "a tiny notebook through `crmlab run` (checks, lock, kernel, page, index)",
    "runner.report_data_quality": "data-quality report through `crmlab run`",
    "runner.report_segmentation": "segmentation report through `crmlab run`",
    "runner.report_lifecycle": "lifecycle report through `crmlab run`",
    "runner.report_forecasting": "forecasting report through `crmlab run`",
    "runner.report_campaigns": "campaigns report through `crmlab run`",
}


def baseline_path(scale: str) -> Path:
    return BENCH_DIR / f"BASELINE-{scale}.json"


def load(scale: str) -> dict | None:
    path = baseline_path(scale)
    return json.loads(path.read_text()) if path.exists() else None


def _secs(x: float) -> str:
    return f"{x:.2f} s" if x < 10 else f"{x:.1f} s" if x < 100 else f"{x:.0f} s"


def _mem(mib: float | None) -> str:
    if not mib:
        return ""
    return f"{mib:.0f} MiB" if mib < 1024 else f"{mib / 1024:.1f} GiB"


def _ratio(x: float | None) -> str:
    return "" if x is None else f"{x:.1f}x" if x < 100 else f"{x:.0f}x"


def _key(case: dict) -> str:
    return f"{case['area']}.{case['case']}"


def _crmlab_cell(case: dict) -> str:
    if "error" in case:
        return "error in this run (see the baseline file)"
    return ", ".join(x for x in (_secs(case["seconds"]), _mem(case.get("peak_mib"))) if x)


def _peer_cell(case: dict, cases: list[dict]) -> str:
    peers = [c for c in cases if c.get("group") == case.get("group") and c.get("impl") != "crmlab"
             and c.get("group") not in (None, "setup")]
    out = []
    for p in peers:
        if "error" in p:
            out.append(f"{p['impl']}: error in this run")
            continue
        text = f"{p['impl']} {_secs(p['seconds'])}"
        extra = [f"{_ratio(p.get('ratio_to_crmlab'))} the time"] if p.get("ratio_to_crmlab") else []
        if p.get("memory_ratio_to_crmlab"):
            extra.append(f"{_ratio(p['memory_ratio_to_crmlab'])} the memory")
        out.append(text + (f" ({', '.join(extra)})" if extra else ""))
    return "; ".join(out) or "—"


def _target_cell(case: dict) -> str:
    parts = []
    if case.get("target_seconds") is not None:
        parts.append(f"< {case['target_seconds']} s")
    if case.get("target_mib") is not None:
        parts.append(f"< {_mem(case['target_mib'])}")
    if not parts:
        return "—"
    met = {True: "met", False: "**not met**"}.get(case.get("meets_target"), "")
    return ", ".join(parts) + (f": {met}" if met else "")


def _ordered(keys: list[str]) -> list[str]:
    known = [k for k in LABELS if k in keys]
    return known + sorted(k for k in keys if k not in LABELS)


def _provenance(scale: str, doc: dict) -> str:
    env = doc.get("environment", {})
    commit = (env.get("commit") or "unknown")[:10] + (" + local changes" if env.get("dirty") else "")
    world = next((c for c in doc["cases"] if _key(c) == "generate.world" and "customers" in c), None)
    size = f" ({world['customers']:,} customers, {world['rows']:,} orders)" if world else ""
    la = doc.get("load_average", {})
    load = (f", load average {la['start'][0]:.1f} at the start and {la['end'][0]:.1f} at the end"
            if la.get("start") and la.get("end") else "")
    when = doc.get("time", "")
    date = f"{when[:4]}-{when[4:6]}-{when[6:8]}" if len(when) >= 8 else when
    return (f"**{SCALES[scale]}**{size}: `bench/{baseline_path(scale).name}`, made by "
            f"`{doc.get('command', 'python bench/run.py --scale ' + scale)}` on {date}, commit "
            f"{commit}, Python {env.get('python', '?')}, {doc.get('cpu_count', '?')} cores, "
            f"{env.get('memory_gib', '?')} GiB{load}; median of {doc.get('repeat', 1)} run(s), "
            f"time of the measured part and peak memory of the whole process tree.")


def table(scale: str, doc: dict | None, demo: dict | None) -> list[str]:
    head = ["| what | crmlab | peer, same run | target |", "|---|---|---|---|"]
    if doc is None:
        keys = (demo or {}).get("cases_at_scale", {}).get(scale) or list(LABELS)
        rows = [f"| {LABELS.get(k, k)} | {NOT_MEASURED} | — | — |"
                for k in _ordered([k for k in keys if k in LABELS or k.endswith("crmlab")])]
        make = "make bench-demo` or `make bench" if scale == "demo" else "make bench"
        return [f"**{SCALES[scale]}**: {NOT_MEASURED} (`{make}` writes "
                f"`bench/{baseline_path(scale).name}`).", ""] + head + rows
    cases = doc["cases"]
    mine = {_key(c): c for c in cases if c.get("impl") == "crmlab" and c.get("group") != "setup"
            and not str(c.get("note", "")).startswith("skipped")}
    rows = [f"| {LABELS.get(k, k)} | {_crmlab_cell(mine[k])} | {_peer_cell(mine[k], cases)} | "
            f"{_target_cell(mine[k])} |" for k in _ordered(list(mine))]
    return [_provenance(scale, doc), ""] + head + rows


def render() -> str:
    docs = {s: load(s) for s in SCALES}
    lines = ["<!-- generated by bench/readme_table.py from bench/BASELINE-*.json: "
             "do not edit by hand -->"]
    for scale in SCALES:
        lines += [""] + table(scale, docs[scale], docs["demo"])
    return "\n".join(lines) + "\n"


def replace(text: str, block: str) -> str:
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise SystemExit(f"README.md needs exactly one {START} ... {END} pair")
    before, rest = text.split(START)
    _, after = rest.split(END)
    return f"{before}{START}\n{block}{END}{after}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 if it differs")
    ap.add_argument("--readme", type=Path, default=README)
    args = ap.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    new = replace(text, render())
    if args.check:
        if new != text:
            print(f"{args.readme} speed table differs from bench/BASELINE-*.json: "
                  "run python bench/readme_table.py", file=sys.stderr)
            return 1
        return 0
    if new != text:
        args.readme.write_text(new, encoding="utf-8")
        print(f"rewrote the speed table in {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
