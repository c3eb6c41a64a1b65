"""The ``crmlab`` command (DESIGN.md "Command line"; the names are stable).

::

    crmlab generate  [--scenario FILE] [--customers N] [--seed S] [--locale en_US|zh_CN] [--out DIR]
    crmlab validate  --source SPEC [--mapping FILE]
    crmlab run       REPORT [--source SPEC] [--mapping FILE] [-f PARAMS.yaml ...] [-p key=value ...]
                     [--reports-dir DIR] [--audience stakeholder|analyst] [--timeout SECONDS]
                     [--gate EXPR ...]
    crmlab run-all   [--source SPEC] [--jobs N] [--reports-dir DIR]
    crmlab schedule  list | run-due | daemon | crontab | check | prune
    crmlab index     [--reports-dir DIR]

Results go to standard output (``crmlab run`` prints the run directory as
its last line); progress and errors go to standard error. Exit codes: 0
success, 1 the notebook failed, 2 bad input or parameters (nothing ran), 3 no
data, 4 timeout, 5 skipped because a run of the same report is in progress,
6 gated (the notebook succeeded but the data failed the run's ``--gate``:
not published, ``latest.html`` keeps the last good page); a run stopped by a
signal exits 128 + the signal number.
"""

from __future__ import annotations

import argparse
import logging
import sys

from crmlab import config
from crmlab.exceptions import CrmlabError


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="crmlab", description="CRM analytics reports from notebooks.",
                                 epilog="Exit codes: 0 ok, 1 notebook failed, 2 bad input, 3 no data, "
                                        "4 timeout, 5 skipped (already running), 6 gated (the data failed "
                                        "the run's gate; not published).")
    ap.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    g = sub.add_parser("generate", help="generate a synthetic CRM world; prints its directory")
    g.add_argument("--scenario", default="demo", help="scenario name (synthetic/<name>.yaml) or YAML file")
    g.add_argument("--customers", type=int, help="number of customers (overrides the scenario)")
    g.add_argument("--seed", type=int, help="random seed (overrides the scenario)")
    g.add_argument("--locale", choices=("en_US", "zh_CN"), help="one locale instead of the scenario's mix")
    g.add_argument("--out", help="output directory (default: the cache under synthetic/data/)")

    v = sub.add_parser("validate", help="check a source against the data contract (exit 0 or 2)")
    v.add_argument("--source", required=True, metavar="SPEC")
    v.add_argument("--mapping", metavar="FILE")

    r = sub.add_parser("run", help="run one report; prints the run directory last")
    r.add_argument("report", metavar="REPORT", help=f"one of: {', '.join(config.REPORTS)}")
    r.add_argument("--source", metavar="SPEC", help=f"data source (default {config.DEFAULT_SOURCE})")
    r.add_argument("--mapping", metavar="FILE", help="mapping YAML for a foreign export")
    r.add_argument("-f", dest="param_files", action="append", default=[], metavar="PARAMS.yaml",
                   help="parameter file (repeatable, applied in order)")
    r.add_argument("-p", dest="params", action="append", default=[], metavar="key=value",
                   help="one parameter (repeatable; lists/dicts as YAML)")
    r.add_argument("--reports-dir", metavar="DIR", help="reports tree (default $CRMLAB_REPORTS_DIR or reports/)")
    r.add_argument("--audience", choices=("stakeholder", "analyst"), default="stakeholder")
    r.add_argument("--timeout", type=float, metavar="SECONDS", help="stop the notebook after this long")
    r.add_argument("--gate", action="append", default=[], metavar="EXPR",
                   help="publish only if this holds on the run's data, e.g. \"orders_age_days <= 2\" "
                        "(repeatable; measures: quality_score, orders_age_days, quarantined_share, "
                        "quarantined_rows, rows_<table>); else exit 6")
    r.add_argument("--trigger", default="cli", help=argparse.SUPPRESS)
    r.add_argument("--result-json", metavar="FILE", help=argparse.SUPPRESS)  # the scheduler reads the outcome here

    a = sub.add_parser("run-all", help="run every report, in parallel with --jobs")
    a.add_argument("--source", metavar="SPEC")
    a.add_argument("--mapping", metavar="FILE")
    a.add_argument("--jobs", "-j", type=int, default=1, metavar="N")
    a.add_argument("--reports-dir", metavar="DIR")
    a.add_argument("--audience", choices=("stakeholder", "analyst"), default="stakeholder")
    a.add_argument("--timeout", type=float, metavar="SECONDS", help="time limit of each report")

    s = sub.add_parser("schedule", help="list | run-due | daemon | crontab | check | prune", add_help=False)
    s.add_argument("args", nargs=argparse.REMAINDER)

    i = sub.add_parser("index", help="rebuild reports/index.html; prints its path")
    i.add_argument("--reports-dir", metavar="DIR")
    return ap


def _cmd_generate(args) -> int:
    from crmlab import synthetic

    path = synthetic.generate(args.scenario, customers=args.customers, seed=args.seed, locale=args.locale,
                              out=args.out)
    print(path)
    return config.EXIT_OK


def _cmd_validate(args) -> int:
    from crmlab import sources

    code, text = sources.validate_command(args.source, args.mapping)
    print(text)
    return code


def _cmd_run(args) -> int:
    from crmlab import runner

    params = runner.parse_assignments(args.params)
    result = runner.run_report(args.report, source=args.source, mapping=args.mapping,
                               param_files=args.param_files, params=params, reports_dir=args.reports_dir,
                               audience=args.audience, timeout=args.timeout, trigger=args.trigger,
                               gate=args.gate)
    if args.result_json:
        _write_result(result, args.result_json)
    if not str(args.trigger).startswith("schedule"):  # the scheduler audits its runs with the job's context
        _audit(result, args, params)
    # the reason of a refused or skipped run is already on stderr (the runner's log)
    if result.run_dir is not None:
        sys.stdout.flush()
        print(result.run_dir)
    return result.exit_code


def _write_result(result, path) -> None:
    """The run's outcome as JSON, for the process that started this one."""
    import dataclasses
    import json

    doc = dataclasses.asdict(result)
    doc["run_dir"] = str(result.run_dir) if result.run_dir else None
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, default=str)


def _audit(result, args, params) -> None:
    """One line in reports/_schedule/audit.jsonl for this run (never changes its outcome)."""
    try:
        from crmlab.schedule import audit_run

        given = {"param_files": list(args.param_files), "params": dict(params)}
        audit_run(result, reports_dir=args.reports_dir, trigger=args.trigger, given=given)
    except Exception as exc:
        logging.getLogger("crmlab").warning("could not write the audit log: %s", exc)


def _cmd_run_all(args) -> int:
    from crmlab import runner

    results = runner.run_all(source=args.source, mapping=args.mapping, jobs=args.jobs,
                             reports_dir=args.reports_dir, audience=args.audience, timeout=args.timeout)
    for r in results:
        if r.run_dir:
            print(r.run_dir)
    return runner.exit_code_of(results)


def _cmd_schedule(args) -> int:
    try:
        from crmlab import schedule
    except ImportError:
        print("crmlab: the scheduler (crmlab.schedule) is not installed in this version", file=sys.stderr)
        return config.EXIT_BAD_INPUT
    return int(schedule.main(list(args.args)) or 0)


def _cmd_index(args) -> int:
    from crmlab.index import build_index

    print(build_index(args.reports_dir))
    return config.EXIT_OK


COMMANDS = {"generate": _cmd_generate, "validate": _cmd_validate, "run": _cmd_run,
            "run-all": _cmd_run_all, "schedule": _cmd_schedule, "index": _cmd_index}


def main(argv: list[str] | None = None) -> int:
    """Run the ``crmlab`` command; returns its exit code.

    Examples
    --------
    >>> main(["index", "--reports-dir", "/tmp/crmlab-doc-reports"])  # doctest: +SKIP
    /tmp/crmlab-doc-reports/index.html
    0
    """
    ap = _parser()
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, stream=sys.stderr,
                        format="crmlab: %(message)s")
    for noisy in ("papermill", "traitlets", "nbconvert", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return COMMANDS[args.command](args)
    except CrmlabError as exc:
        print(f"crmlab: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("crmlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
