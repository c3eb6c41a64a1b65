"""Run a report notebook and publish its page.

``crmlab run REPORT`` -> :func:`run_report`:

1. parameters: the notebook's cell tagged ``parameters`` (the one papermill
   injects after) gives names, types, defaults and help; ``-f`` YAML files
   (in order) and then ``-p key=value`` override them. Unknown names and
   values of the wrong type are refused before anything runs (exit 2).
2. the lock: one run per report at a time (:mod:`crmlab.locks`); a second
   run exits 5 at once, recorded in ``reports/<report>/events.jsonl``.
3. the source is opened once to check the data contract: a broken contract
   exits 2, no orders exits 3, before a run directory exists. Meanwhile the
   child process (4) has started: it launches the kernel and imports the
   crmlab modules the notebook imports (:func:`preload_modules`), so kernel
   start and imports overlap the check; a refused source stops it. A file
   source's check leaves its verdict (id types, contract passed) and its
   quarantine in a cache keyed by the source's fingerprint, which the
   notebook's own ``open_source`` reads instead of checking again.
4. execution: papermill runs in the child process in its own session, on the
   kernel started in 3, writing ``notebook.ipynb`` into the run directory as
   cells complete; after the last cell the kernel is stopped at once. A time
   limit (counted from here) or a SIGTERM/SIGINT to the runner stops the
   child and its kernel together. ``CRMLAB_PROFILE=1`` (a developer's
   switch) profiles the kernel with pyinstrument from its start to the last
   cell and writes ``profile.txt`` into the run directory.
5. ``report.html`` is rendered with nbconvert (loaded and warmed up in a
   thread while the notebook runs; template ``crmlab``: no code,
   no parameter cells, no stderr, the ``summary`` cells moved up under the
   ``header`` cell, everything inline) -- for a failed run too, with a banner
   naming the failing cell.
6. the gate (``--gate EXPR``, a scheduled job's ``gate:``): after the
   notebook succeeded, each expression is checked on measures of the run's
   own data (:data:`GATE_MEASURES`); a run whose gate fails is ``gated``
   (exit 6) and is not published. A measure that cannot be computed fails
   its expression with a sentence saying why.
7. ``run.json`` is written (first with status ``running``, at the end with
   the outcome and the gate's record); on success ``latest.html`` is
   replaced atomically; the index is rebuilt.

Statuses and exit codes (``config.EXIT_*``): success 0, failed 1, bad_input
2, no_data 3, timeout 4, skipped 5, gated 6. A run stopped by a signal has status
``interrupted`` and exit code 128 + the signal number (143 for SIGTERM, 130
for SIGINT), as a shell reports a process killed by that signal.

The child process (``python -m crmlab.runner --execute SPEC.json``) runs the
notebook on a kernel of this same interpreter: the runner writes a
``python3`` kernelspec pointing at ``sys.executable`` into a private
``JUPYTER_PATH`` for the run, so the notebook cannot pick up another Python.
"""

from __future__ import annotations

import ast
import contextlib
import datetime as dt
import functools
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from crmlab import config
from crmlab.exceptions import (CrmlabError, DataContractError, NoDataError, ParameterError, RunLocked,
                               SourceUnavailable)

log = logging.getLogger("crmlab.runner")

STATUS_EXIT: dict[str, int] = {
    "success": config.EXIT_OK,
    "failed": config.EXIT_FAILED,
    "bad_input": config.EXIT_BAD_INPUT,
    "no_data": config.EXIT_NO_DATA,
    "timeout": config.EXIT_TIMEOUT,
    "skipped": config.EXIT_LOCKED,
    "gated": config.EXIT_GATED,
}
EXIT_STATUS: dict[int, str] = {v: k for k, v in STATUS_EXIT.items()}
# exception name reported by the kernel -> status of the run
ENAME_STATUS: dict[str, str] = {
    "NoDataError": "no_data",
    "DataContractError": "bad_input",
    "ParameterError": "bad_input",
}
# worst last: run-all's exit code is that of its worst run
SEVERITY: tuple[str, ...] = ("success", "skipped", "gated", "no_data", "bad_input", "interrupted", "timeout",
                             "failed")
RUNNER_ONLY: tuple[str, ...] = ("run_dir",)
TYPES: tuple[str, ...] = ("str", "int", "float", "bool", "list", "dict")
TRUE_WORDS = {"true", "yes", "y", "on", "1"}
FALSE_WORDS = {"false", "no", "n", "off", "0"}
# cells never shown on a page; papermill marks its own error notes with the last tag
HIDDEN_TAGS = {"parameters", "injected-parameters", "papermill-error-cell-tag", "remove-cell",
               "remove_cell"}
# output types that need JavaScript from a CDN: dropped so pages work offline
SCRIPT_MIMETYPES = ("application/javascript", "application/vnd.jupyter.widget-view+json",
                    "application/vnd.jupyter.widget-state+json", "text/vnd.mermaid")
PACKAGES: tuple[str, ...] = ("pandas", "numpy", "pyarrow", "duckdb", "ibis-framework", "sqlglot",
                             "pandera", "splink", "statsmodels", "scikit-learn", "scipy",
                             "matplotlib", "seaborn", "faker", "papermill", "nbconvert", "nbclient",
                             "ipykernel")
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
EVENTS_FILE = "events.jsonl"
KILL_GRACE_S = 3.0
PROBE_TIMEOUT_S = 5.0  # how long a network source's server may take to accept a connection
# developer switch: set (to anything) and each run's kernel is profiled with pyinstrument,
# from its start (the notebook's imports included) to the last cell: <run_dir>/profile.txt
PROFILE_ENV = "CRMLAB_PROFILE"


@dataclass
class RunResult:
    """The outcome of one run.

    ``run_dir`` is None when nothing ran (refused parameters or source,
    skipped). ``error`` is ``{"cell", "execution_count", "ename", "evalue"}``
    for a failed notebook (``cell``: 1-based position in the report's
    notebook), else None. ``message`` says what happened in one line.
    """

    report: str
    run_id: str | None
    run_dir: Path | None
    status: str
    exit_code: int
    error: dict | None = None
    message: str = ""
    duration_s: float = 0.0
    params: dict = field(default_factory=dict)
    gate: dict | None = None  # the gate's record in run.json (:func:`check_gate`), when the run had one

    @property
    def ok(self) -> bool:
        return self.status == "success"


def _skip_slow_imports() -> None:
    """Keep ``rfc3987_syntax`` from loading: jsonschema (under nbformat)
    imports it, when installed, only for the IRI format checks that no
    notebook schema uses, and it builds a parser at import (over a second of
    CPU in every process that reads a notebook)."""
    sys.modules.setdefault("rfc3987_syntax", None)


class _Interrupted(Exception):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


# -- parameters -------------------------------------------------------------

def notebook_path(report: str) -> Path:
    """The notebook of a report (``config.notebooks_dir() / REPORTS[report]``)."""
    if report not in config.REPORTS:
        raise ParameterError(f"unknown report {report!r}; reports: {', '.join(config.REPORTS)}")
    return config.notebooks_dir() / config.REPORTS[report]


def _type_name(inferred: str | None, default) -> str:
    text = (inferred or "None").replace(" ", "")
    m = re.fullmatch(r"(?:typing\.)?Optional\[(.+)\]", text)
    if m:
        text = m.group(1)
    text = re.sub(r"\|None$|^None\|", "", text)
    base = re.match(r"(?:typing\.)?([A-Za-z_]+)", text)
    name = base.group(1).lower() if base else "none"
    if name in TYPES:
        return name
    if name == "none":
        inferred_type = type(default).__name__
        return inferred_type if inferred_type in TYPES else "any"
    return "any"


def parse_parameters_cell(source: str) -> dict[str, dict]:
    """The parameters declared in a ``parameters`` cell's source.

    Reads ``name: type = literal  # help`` (and untyped ``name = literal``)
    statements with :mod:`ast`; the help is the comment on the statement's
    last line. (papermill's own inspector skips any line with a second
    ``=``, such as ``mapping: str = ""  # empty = none``.)

    Returns
    -------
    dict
        ``name -> {"type", "default", "help"}`` in cell order.

    Examples
    --------
    >>> parse_parameters_cell('n: int = 3  # how many; 0 = all')
    {'n': {'type': 'int', 'default': 3, 'help': 'how many; 0 = all'}}
    """
    import io
    import tokenize

    comments: dict[int, str] = {}
    with contextlib.suppress(tokenize.TokenError, IndentationError):
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string.lstrip("#").strip()
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ParameterError(f"the parameters cell is not valid Python (line {exc.lineno})") from None
    out: dict[str, dict] = {}
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            name, annotation, value = node.target.id, ast.unparse(node.annotation), node.value
        elif (isinstance(node, ast.Assign) and len(node.targets) == 1
              and isinstance(node.targets[0], ast.Name)):
            name, annotation, value = node.targets[0].id, None, node.value
        else:
            continue
        try:
            default = ast.literal_eval(value)
        except ValueError:
            default = ast.unparse(value)
        out[name] = {"type": _type_name(annotation, default), "default": default,
                     "help": comments.get(node.end_lineno, "")}
    return out


def known_parameters(report: str) -> dict[str, dict]:
    """The parameters a report's notebook declares in its cell tagged
    ``parameters`` (the cell papermill injects after).

    Returns
    -------
    dict
        ``name -> {"type": "str"|"int"|"float"|"bool"|"list"|"dict"|"any",
        "default": <value>, "help": <the line's comment>}``, in notebook order.

    Examples
    --------
    >>> known_parameters("segmentation")["as_of"]          # doctest: +SKIP
    {'type': 'str', 'default': '', 'help': 'snapshot date (YYYY-MM-DD); empty = the latest order date'}
    """
    path = notebook_path(report)
    if not path.exists():
        raise ParameterError(f"the notebook of report {report} is missing: {path}")
    cell = next((c for c in _code_cells(path) if "parameters" in c["tags"]), None)
    return parse_parameters_cell(cell["source"]) if cell is not None else {}


def _code_cells(path: Path) -> list[dict]:
    """The code cells of a notebook file as ``{"source": str, "tags": list}``,
    read as plain JSON (nbformat 4 stores cells so; importing and validating
    with nbformat costs a third of a second in every run). Other nbformat
    versions go through nbformat, which converts them."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ParameterError(f"the notebook {Path(path).name} cannot be read: {type(exc).__name__}") from None
    if not isinstance(doc, dict) or doc.get("nbformat") != 4 or not isinstance(doc.get("cells"), list):
        _skip_slow_imports()
        import nbformat

        nb = nbformat.read(str(path), as_version=4)
        return [{"source": c.source, "tags": list(c.get("metadata", {}).get("tags", []))}
                for c in nb.cells if c.cell_type == "code"]
    out = []
    for cell in doc["cells"]:
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        out.append({"source": "".join(source) if isinstance(source, list) else str(source),
                    "tags": list((cell.get("metadata") or {}).get("tags", []))})
    return out


def preload_modules(path: Path) -> list[str]:
    r"""The crmlab modules a notebook imports at the top level of its code
    cells (``from crmlab import segmentation``, ``from crmlab.report import
    Report``): what the kernel imports while the runner checks the source.

    Examples
    --------
    >>> import json, tempfile
    >>> cell = {"cell_type": "code", "metadata": {}, "source": "from crmlab import charts\nimport os"}
    >>> f = Path(tempfile.mkdtemp()) / "nb.ipynb"
    >>> _ = f.write_text(json.dumps({"nbformat": 4, "cells": [cell]}))
    >>> preload_modules(f)
    ['crmlab', 'crmlab.charts']
    """
    out: list[str] = []
    for cell in _code_cells(path):
        if "parameters" in cell["tags"]:
            continue
        try:
            tree = ast.parse(cell["source"])
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            out += [n for n in names if n == "crmlab" or n.startswith("crmlab.")]
    return list(dict.fromkeys(out))


def describe_parameters(known: Mapping[str, dict]) -> str:
    """The known parameters, one per line: ``name: type = default  # help``."""
    lines = []
    for name, info in known.items():
        help_ = f"  # {info['help']}" if info.get("help") else ""
        lines.append(f"  {name}: {info['type']} = {info['default']!r}{help_}")
    return "\n".join(lines)


def coerce(name: str, value, type_name: str):
    """A parameter value converted to its declared type, or ValueError.

    Text (from ``-p key=value``) is parsed: ``int``/``float`` as numbers,
    ``bool`` from true/false/yes/no/on/off/1/0, ``list``/``dict`` as YAML.
    Typed values (from YAML files or Python callers) are checked.

    Examples
    --------
    >>> coerce("n", "12", "int"), coerce("flag", "true", "bool"), coerce("xs", "[a, b]", "list")
    (12, True, ['a', 'b'])
    """
    import yaml

    def bad(expected: str):
        return ValueError(f"parameter {name} expects {expected}, got {value!r}")

    if value is None:
        return None
    if type_name == "str":
        if isinstance(value, str):
            return value
        if isinstance(value, (dt.date, dt.datetime)):
            return value.isoformat()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad("str")
    if type_name == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in TRUE_WORDS | FALSE_WORDS:
            return value.strip().lower() in TRUE_WORDS
        raise bad("bool (true/false)")
    if type_name == "int":
        if isinstance(value, bool):
            raise bad("int")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return int(value.strip())
        raise bad("int")
    if type_name == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return float(value.strip())
        raise bad("float")
    if type_name in ("list", "dict"):
        kind = list if type_name == "list" else dict
        parsed = value
        if isinstance(value, str):
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                raise bad(f"{type_name} (YAML, e.g. {'[a, b]' if kind is list else '{a: 1}'})") from None
        if isinstance(parsed, tuple):
            parsed = list(parsed)
        if isinstance(parsed, kind):
            return parsed
        raise bad(f"{type_name} (YAML, e.g. {'[a, b]' if kind is list else '{a: 1}'})")
    # untyped: text is read as YAML (numbers become numbers)
    if isinstance(value, str):
        with contextlib.suppress(yaml.YAMLError):
            return yaml.safe_load(value) if value.strip() else value
    return value


def _param_file(report: str, ref) -> Path:
    """A ``-f`` argument: a path, or a name under ``parameters/<report>/``."""
    path = Path(ref)
    if path.is_file():
        return path.resolve()
    for candidate in (config.parameters_dir() / report / str(ref),
                      config.parameters_dir() / report / f"{ref}.yaml"):
        if candidate.is_file():
            return candidate
    raise ParameterError(f"parameter file not found: {ref}")


def parse_assignments(items: Iterable[str]) -> dict[str, str]:
    """``["a=1", "b=x=y"]`` -> ``{"a": "1", "b": "x=y"}`` (text values)."""
    out = {}
    for item in items:
        key, eq, value = str(item).partition("=")
        if not eq or not key.strip():
            raise ParameterError(f"-p expects key=value, got {item!r}")
        out[key.strip()] = value
    return out


def _absolute_spec(value: str) -> str:
    """Relative file paths made absolute (the kernel runs in notebooks/)."""
    if not value or re.match(r"^[A-Za-z][\w+.-]*:", value):
        return value
    path = Path(value).expanduser()
    return str(path.resolve()) if path.exists() else value


def resolve_parameters(report: str, *, param_files: Iterable = (), params: Mapping | None = None,
                       source: str | None = None, mapping: str | None = None,
                       audience: str | None = None) -> dict:
    """The effective parameters of a run: defaults < ``-f`` files (in order)
    < ``-p`` values < the ``--source/--mapping/--audience`` options.

    Every problem is collected and raised at once, before anything runs.

    Returns
    -------
    dict
        ``name -> value`` for every parameter the notebook declares.

    Raises
    ------
    ParameterError
        Unknown names, values of the wrong type, ``run_dir`` set by hand; the
        message lists the known parameters with their types.
    """
    known = known_parameters(report)
    values = {name: info["default"] for name, info in known.items()}
    layers: list[tuple[str, Mapping]] = []
    for ref in param_files or ():
        path = _param_file(report, ref)
        data = config.load_yaml(path, "parameter file")
        layers.append((f"in {path.name}", data))
    if params:
        layers.append(("given with -p", params))
    problems = []
    for origin, layer in layers:
        for name, raw in layer.items():
            if name not in known:
                problems.append(f"unknown parameter {name!r} ({origin})")
            elif name in RUNNER_ONLY:
                problems.append(f"parameter {name!r} is set by the runner ({origin})")
            else:
                try:
                    values[name] = coerce(name, raw, known[name]["type"])
                except ValueError as exc:
                    problems.append(f"{exc} ({origin})")
    for name, value in (("source", source), ("mapping", mapping), ("audience", audience)):
        if value is not None and name in known:
            values[name] = str(value)
    if "audience" in values and values["audience"] not in ("stakeholder", "analyst"):
        problems.append(f"audience must be stakeholder or analyst, not {values['audience']!r}")
    if problems:
        raise ParameterError("; ".join(problems) + f"\nKnown parameters of report {report}:\n"
                             + describe_parameters(known))
    for name in ("source", "mapping"):
        if isinstance(values.get(name), str):
            values[name] = _absolute_spec(values[name])
    return values


# -- the source check -------------------------------------------------------

def _open_source(spec, mapping):
    """``crmlab.sources.open_source`` (imported late; tests replace this)."""
    from crmlab.sources import open_source

    return open_source(spec, mapping or None)


def _source_kind(spec: str) -> str:
    spec = str(spec or config.DEFAULT_SOURCE)
    if spec.startswith("synthetic:"):
        return "synthetic"
    if spec.startswith(("postgresql://", "postgres://")):
        return "postgres"
    if spec.endswith(".duckdb"):
        return "duckdb"
    return "files"


def probe_source(spec: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Check that a network source's server accepts a TCP connection.

    A database that refuses or does not answer is a failure that may pass
    (the scheduler retries it), unlike a broken data contract (exit 2): this
    probe tells the two apart before the source is opened. Sources that are
    not reached over TCP (files, DuckDB, a PostgreSQL Unix socket) are not
    probed.

    Raises
    ------
    SourceUnavailable
        The server refused the connection, did not answer within
        ``timeout`` seconds, or its name does not resolve (exit 1).
    """
    import socket
    from urllib.parse import parse_qsl, urlsplit

    if _source_kind(spec) != "postgres":
        return
    try:
        parts = urlsplit(spec)
        host = dict(parse_qsl(parts.query)).get("host") or parts.hostname
        port = parts.port or 5432
    except ValueError:
        return  # an unusual URL: left to the driver
    if not host or host.startswith("/") or "," in host:
        return
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise SourceUnavailable(f"the PostgreSQL server at {host}:{port} did not answer "
                                f"({type(exc).__name__})") from None


def check_source(spec: str | None, mapping: str | None = None, *, probe: bool = True) -> dict:
    """Open the source once and describe it for ``run.json``.

    ``probe=False`` skips :func:`probe_source` (the caller has probed).

    Returns
    -------
    dict
        ``spec`` (password redacted), ``kind``, ``fingerprint``,
        ``extracted_at``, ``encodings``, ``row_counts`` (``{table: rows}``),
        ``quarantined`` (``{table: rows}``), ``checked``.

    Raises
    ------
    DataContractError
        The data breaks the contract (exit 2).
    NoDataError
        The source has no orders (exit 3).
    SourceUnavailable
        A network source's server did not answer (exit 1; may pass).
    """
    from crmlab.privacy import redact_url
    from crmlab.report import jsonable

    spec = spec or config.DEFAULT_SOURCE
    if probe:
        probe_source(spec)
    info = {"spec": redact_url(spec), "kind": _source_kind(spec), "checked": False}
    try:
        ds = _open_source(spec, mapping)
    except ImportError as exc:
        if "crmlab.sources" not in str(exc) and getattr(exc, "name", "") != "crmlab.sources":
            raise
        log.warning("crmlab.sources is not available: the source is not checked before the run")
        return info
    try:
        counts = dict(getattr(ds, "row_counts", {}) or {})
        info.update({
            "kind": getattr(ds, "kind", None) or info["kind"],
            "fingerprint": getattr(ds, "fingerprint", None),
            "extracted_at": jsonable(getattr(ds, "extracted_at", None)),
            "encodings": jsonable(getattr(ds, "encodings", {}) or {}),
            "row_counts": {t: (c.get("rows") if isinstance(c, dict) else c) for t, c in counts.items()},
            "quarantined": {t: c.get("quarantined", 0) for t, c in counts.items() if isinstance(c, dict)},
            "checked": True,
        })
    finally:
        closer = getattr(ds, "close", None)
        if callable(closer):
            with contextlib.suppress(Exception):
                closer()
    usable = (info["row_counts"].get("orders") or 0) - (info["quarantined"].get("orders") or 0)
    if usable <= 0:
        from crmlab.sources import no_usable_rows   # counts and checks, never values

        raise NoDataError(no_usable_rows(ds, mapping))
    return info


# -- provenance -------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """``{"version", "git_sha", "dirty"}`` of the crmlab code that runs
    (git facts only when the package is a git checkout)."""
    import crmlab

    out: dict = {"version": crmlab.__version__}
    checkout = Path(crmlab.__file__).resolve().parents[2]
    if (checkout / ".git").exists() and shutil.which("git"):
        try:
            sha = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True,
                                 text=True, timeout=5)
            if sha.returncode == 0:
                out["git_sha"] = sha.stdout.strip()
                dirty = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain",
                                        "--untracked-files=no"], capture_output=True, text=True, timeout=5)
                out["dirty"] = bool(dirty.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    return out


@functools.lru_cache(maxsize=1)
def package_versions() -> dict:
    """Versions of the libraries a run's numbers depend on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _log_event(report: str, reports_dir, event: dict) -> None:
    """Append one line to ``reports/<report>/events.jsonl`` (runs that made
    no run directory: refused, skipped)."""
    path = config.reports_dir(reports_dir) / report / EVENTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps({"time": _now(), **event}, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


# -- child process ----------------------------------------------------------

def _kernel_home(tmp: Path) -> Path:
    """A private JUPYTER_PATH whose ``python3`` kernel is this interpreter."""
    spec_dir = tmp / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True, exist_ok=True)
    from ipykernel.kernelspec import get_kernel_dict

    kernel = get_kernel_dict()  # argv: [sys.executable, "-m", "ipykernel_launcher", ...]
    kernel["display_name"] = "Python 3 (crmlab)"
    (spec_dir / "kernel.json").write_text(json.dumps(kernel))
    return tmp / "jupyter"


def _kill_tree(proc: subprocess.Popen, grace: float = KILL_GRACE_S) -> None:
    """Stop the child, its kernel and anything they started: SIGTERM to the
    whole tree (the kernel runs in a session of its own, so the process
    group alone would miss it), SIGKILL to what is left after ``grace``."""
    import psutil

    try:
        root = psutil.Process(proc.pid)
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        procs = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)


def _log_tail(path: Path, report: str, lines: int = 20) -> None:
    """The end of the child's own log (papermill, kernel start-up) for a run
    that did not succeed; on success it is noise and stays unread."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return
    if text:
        tail = "\n".join("    " + l for l in text.splitlines()[-lines:])
        log.warning("%s: the notebook process said:\n%s", report, tail)


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when the runner dies (prctl)."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def preload(names: Iterable[str]) -> None:
    """Import modules, skipping any that fails (run in the kernel before the
    notebook, by :func:`_child_main`). A module that fails to import is left
    for the notebook's own import, which then fails in its cell with its
    traceback."""
    import importlib

    for name in names:
        with contextlib.suppress(Exception):
            importlib.import_module(name)


# run in the kernel with silent=True: no execution count, no history, no output
_PRELOAD_CODE = "import crmlab.runner as _crmlab_runner\n_crmlab_runner.preload({names!r})\ndel _crmlab_runner\n"
_PROFILE_START = ("import pyinstrument as _crmlab_pi\n"
                  "_crmlab_profiler = _crmlab_pi.Profiler(async_mode='disabled')\n"
                  "_crmlab_profiler.start()\ndel _crmlab_pi\n")
_PROFILE_STOP = ("_crmlab_profiler.stop()\n"
                 "open({path!r}, 'w', encoding='utf-8').write(_crmlab_profiler.output_text(unicode=True, color=False))\n"
                 "del _crmlab_profiler\n")
KERNEL_ARGS = ["--HistoryManager.hist_file=:memory:"]  # what nbclient gives the kernels it starts
START_TIMEOUT_S = 120.0


def _kernel_execute(km, code: str, timeout: float = START_TIMEOUT_S) -> dict:
    """Run ``code`` silently in the kernel of ``km`` and wait for its reply
    (a blocking client of its own, closed afterwards)."""
    from jupyter_client.blocking import BlockingKernelClient

    kc = BlockingKernelClient()
    kc.load_connection_info(km.get_connection_info())
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=timeout)
        msg_id = kc.execute(code, silent=True, store_history=False, allow_stdin=False)
        deadline = time.monotonic() + timeout
        while True:
            reply = kc.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
            if reply.get("parent_header", {}).get("msg_id") == msg_id:
                return reply["content"]
    finally:
        kc.stop_channels()


def _start_kernel(spec: dict):
    """Launch the notebook's kernel (not yet waiting for it to be ready).

    Returns the ``AsyncKernelManager`` (papermill runs the notebook on it),
    or None when the kernel could not be launched here: then papermill
    starts its own and reports what goes wrong."""
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync

    km = AsyncKernelManager(kernel_name=spec["kernel_name"])
    try:
        run_sync(km.start_kernel)(cwd=spec["cwd"], extra_arguments=list(KERNEL_ARGS))
    except Exception as exc:  # not started: papermill starts a kernel and reports
        log.warning("the kernel could not be started ahead of the run (%s: %s)", type(exc).__name__, exc)
        return None
    return km


def _warm_kernel(km, spec: dict):
    """Wait for the kernel and import the crmlab modules the notebook
    imports (``spec["preload"]``), while the runner checks the source.
    Returns ``km``, or None (the kernel stopped) when it did not answer."""
    from jupyter_core.utils import run_sync

    try:
        if spec.get("profile"):
            _kernel_execute(km, _PROFILE_START)
        _kernel_execute(km, _PRELOAD_CODE.format(names=list(spec.get("preload") or [])))
    except Exception as exc:  # papermill starts a kernel of its own and reports
        log.warning("the kernel started ahead of the run did not answer (%s: %s)", type(exc).__name__, exc)
        with contextlib.suppress(Exception):
            run_sync(km.shutdown_kernel)(now=True)
        return None
    return km


def _child_main(spec_path: str) -> int:
    """Execute one notebook with papermill (the runner's child process).

    With ``spec["wait"]`` the child starts first (:class:`_Child`): it
    starts the kernel and imports the notebook's crmlab modules, then reads
    the rest of the spec (``output``, ``parameters``) as one JSON line on
    its standard input -- or an empty line / end of input when the runner
    refused the source, and then stops without running anything.

    Writes ``{"status": "ok"|"error"|"crash", ...}`` to ``spec["result"]``.
    On SIGTERM it stops its kernel first, so no kernel is left behind.
    """
    import psutil

    spec = json.loads(Path(spec_path).read_text())
    _die_with_parent()
    if os.getppid() != spec.get("parent_pid", os.getppid()):
        return 1  # the runner is already gone

    def stop(signum, frame):
        for p in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                p.kill()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    # the runner has checked the parameters; papermill's own inspector misreads
    # comments that contain "=" and would only add noise
    logging.getLogger("papermill").setLevel(logging.ERROR)
    _skip_slow_imports()
    # the kernel boots while papermill is imported
    km = _start_kernel(spec) if spec.get("wait") else None
    # papermill imports pyarrow.fs for hdfs:// paths only; this process reads and writes local files
    sys.modules.setdefault("pyarrow.fs", None)
    import papermill as pm
    from jupyter_core.utils import run_sync
    from papermill.exceptions import PapermillExecutionError

    if spec.get("wait"):
        km = _warm_kernel(km, spec) if km is not None else None
        line = sys.stdin.readline()
        if not line.strip():  # the runner refused the source: nothing runs
            if km is not None:
                run_sync(km.shutdown_kernel)(now=True)
            return 0
        spec.update(json.loads(line))
    try:
        pm.execute_notebook(spec["input"], spec["output"], parameters=spec["parameters"],
                            kernel_name=spec["kernel_name"], cwd=spec["cwd"], progress_bar=False,
                            log_output=False, request_save_on_cell_execute=True,
                            start_timeout=START_TIMEOUT_S, **({"km": km} if km is not None else {}))
        result = {"status": "ok"}
    except PapermillExecutionError as exc:
        result = {"status": "error", "cell_index": exc.cell_index, "execution_count": exc.exec_count,
                  "ename": exc.ename, "evalue": exc.evalue}
    except Exception as exc:  # the kernel died, the notebook is unreadable, ...
        result = {"status": "crash", "ename": type(exc).__name__, "evalue": str(exc)[:2000]}
    if km is not None and spec.get("profile") and spec["parameters"].get("run_dir"):
        with contextlib.suppress(Exception):  # a developer's switch, never a reason to fail
            _kernel_execute(km, _PROFILE_STOP.format(
                path=str(Path(spec["parameters"]["run_dir"]) / "profile.txt")), timeout=30)
    Path(spec["result"]).write_text(json.dumps(result))
    if km is not None:
        # every cell has run and papermill has saved the notebook: the kernel is
        # stopped at once (a graceful shutdown waits 1-2 s for the interpreter to
        # tear down the libraries it loaded)
        with contextlib.suppress(Exception):
            run_sync(km.shutdown_kernel)(now=True)
    return 0


class _Child:
    """The notebook's process, started before the source is checked.

    ``python -m crmlab.runner --execute SPEC.json`` in a session of its
    own: it imports papermill, starts the kernel and imports the notebook's
    crmlab modules while the runner opens and checks the source, then waits
    for :meth:`go` (the run directory and parameters). :meth:`cancel` stops
    it when the source is refused. ``tmp`` holds the spec, the private
    kernelspec, ``result.json`` and ``child.log``.
    """

    def __init__(self, report: str, rdir: Path, lock_fd: int):
        self.tmp = Path(tempfile.mkdtemp(prefix="crmlab-run-"))
        path = notebook_path(report)
        spec = {"input": str(path), "kernel_name": "python3", "cwd": str(config.notebooks_dir()),
                "result": str(self.tmp / "result.json"), "parent_pid": os.getpid(), "wait": True,
                "preload": preload_modules(path), "profile": bool(os.environ.get(PROFILE_ENV))}
        (self.tmp / "spec.json").write_text(json.dumps(spec, default=str))
        env = dict(os.environ, JUPYTER_PATH=str(_kernel_home(self.tmp)), CRMLAB_REPORTS_DIR=str(rdir),
                   PYTHONUNBUFFERED="1")
        if env.get("CRMLAB_THREADS"):
            for var in THREAD_VARS:
                env.setdefault(var, env["CRMLAB_THREADS"])
        with open(self.tmp / "child.log", "wb") as child_log:
            self.proc = subprocess.Popen([sys.executable, "-m", "crmlab.runner", "--execute",
                                          str(self.tmp / "spec.json")],
                                         env=env, stdin=subprocess.PIPE, stdout=child_log, stderr=child_log,
                                         start_new_session=True, pass_fds=(lock_fd,))

    def go(self, output: Path, parameters: dict) -> None:
        """Run the notebook: ``output`` is the executed notebook's path."""
        line = json.dumps({"output": str(output), "parameters": parameters}, default=str) + "\n"
        try:
            self.proc.stdin.write(line.encode("utf-8"))
            self.proc.stdin.close()
        except OSError:  # the child is gone; its missing result says so
            pass

    def cleanup(self) -> None:
        """Stop the child and its kernel if they still run (a refused source:
        nothing ran), and remove ``tmp``."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        if self.proc.poll() is None:
            _kill_tree(self.proc)
        shutil.rmtree(self.tmp, ignore_errors=True)


# -- rendering --------------------------------------------------------------

def _failed_cell(nb) -> dict | None:
    """The first cell with an error output: its 1-based position among the
    report notebook's own cells (papermill's additions not counted), its
    execution count and the error."""
    position = 0
    for cell in nb.cells:
        tags = set(cell.get("metadata", {}).get("tags", []))
        if tags & {"injected-parameters", "papermill-error-cell-tag"}:
            continue
        position += 1
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.get("output_type") == "error" and not (
                    out.get("ename") == "SystemExit" and out.get("evalue") in ("", "0")):
                return {"cell": position, "execution_count": cell.get("execution_count"),
                        "ename": out.get("ename"), "evalue": out.get("evalue")}
    return None


def prepare_notebook(nb, audience: str = "stakeholder"):
    """The executed notebook made ready for its page (in place; returns it).

    Drops papermill's error notes, the cells tagged ``remove-cell``, stderr
    output (warnings) and script-only outputs. For stakeholders it also
    drops the parameter cells, tracebacks, the values of cells' last lines
    (``execute_result``: only what the notebook displays on purpose is
    shown) and the cells above the first cell tagged ``header`` (the
    notebook's title for analysts; the header carries the page's title).
    Then the cells tagged ``summary`` move to just after the first cell
    tagged ``header`` (or to the top when there is none).
    """
    hidden = HIDDEN_TAGS if audience == "stakeholder" else HIDDEN_TAGS - {"parameters",
                                                                           "injected-parameters"}
    kept = []
    for cell in nb.cells:
        tags = set(cell.get("metadata", {}).get("tags", []))
        if tags & hidden:
            continue
        if cell.cell_type == "code":
            outputs = []
            for out in cell.get("outputs", []):
                kind = out.get("output_type")
                if kind == "stream" and out.get("name") == "stderr":
                    continue
                if kind in ("error", "execute_result") and audience == "stakeholder":
                    continue  # tracebacks, and the value of a cell's last line (an accidental df.head())
                if kind in ("display_data", "execute_result"):
                    data = {k: v for k, v in out.get("data", {}).items() if k not in SCRIPT_MIMETYPES}
                    if not data:
                        continue
                    out["data"] = data
                outputs.append(out)
            cell["outputs"] = outputs
            if tags & {"remove-input", "hide-input"}:
                cell.setdefault("metadata", {})["transient"] = {"remove_source": True}
        kept.append(cell)
    if audience == "stakeholder":
        first = next((i for i, c in enumerate(kept) if "header" in c.get("metadata", {}).get("tags", [])), 0)
        kept = kept[first:]  # the page starts with its header; the title cell above is for analysts
    summary = [c for c in kept if "summary" in c.get("metadata", {}).get("tags", [])]
    rest = [c for c in kept if "summary" not in c.get("metadata", {}).get("tags", [])]
    at = next((i + 1 for i, c in enumerate(rest) if "header" in c.get("metadata", {}).get("tags", [])), 0)
    nb.cells = rest[:at] + summary + rest[at:]
    return nb


BANNERS: dict[str, str] = {
    "failed": "This run failed",
    "bad_input": "This run stopped: the data or the parameters are not usable",
    "no_data": "This run stopped: there is no data for it",
    "timeout": "This run was stopped: it went past its time limit",
    "interrupted": "This run was interrupted before it finished",
    "gated": "This run was not published: its data failed the gate",
}


def banner_html(status: str, error: dict | None) -> str:
    """The banner at the top of a page that did not succeed ('' on success)."""
    from crmlab.privacy import escape

    if status == "success":
        return ""
    head = BANNERS.get(status, f"This run ended with status {status}")
    error = error or {}
    if error.get("cell"):
        head += f" at cell {error['cell']}"
    message = ": ".join(str(x) for x in (error.get("ename"), error.get("evalue")) if x)
    detail = f'<span class="crm-banner-detail">{escape(message)}</span>' if message else ""
    return f"{escape(head)}.{detail}"


_RENDER_LOCK = threading.Lock()  # one exporter per audience, one page at a time


@functools.lru_cache(maxsize=2)
def _html_exporter(audience: str):
    """The nbconvert exporter of the ``crmlab`` template for an audience,
    made once per process: its Jinja environment keeps the compiled
    templates, so a second page is not read and compiled again."""
    _skip_slow_imports()
    from nbconvert import HTMLExporter

    return HTMLExporter(template_name="crmlab", extra_template_basedirs=[str(TEMPLATES_DIR)],
                        exclude_input=audience == "stakeholder", exclude_input_prompt=True,
                        exclude_output_prompt=True, exclude_anchor_links=True, embed_images=True)


def _warm_renderer(audience: str) -> threading.Thread:
    """Import nbconvert and compile the page's templates in a thread while
    the notebook runs in the child (the runner only waits then): about
    half a second less between the last cell and ``report.html``."""
    def warm():
        with contextlib.suppress(Exception):  # only a head start: render_html does the same again
            _skip_slow_imports()
            import nbformat

            nb = nbformat.v4.new_notebook(cells=[
                nbformat.v4.new_markdown_cell("warm-up"),
                nbformat.v4.new_code_cell("", outputs=[nbformat.v4.new_output(
                    "display_data", data={"text/html": "<p>warm-up</p>"})])])
            resources = {"metadata": {"name": "warm-up"},
                         "crmlab": {"title": "warm-up", "audience": audience, "status": "success",
                                    "banner": "", "index_href": "", "run_id": ""}}
            with _RENDER_LOCK:
                _html_exporter(audience).from_notebook_node(nb, resources=resources)

    thread = threading.Thread(target=warm, name="crmlab-warm-renderer", daemon=True)
    thread.start()
    return thread


def render_html(notebook, out_path, *, report: str, audience: str = "stakeholder",
                status: str = "success", error: dict | None = None, index_href: str = "../../index.html",
                run_id: str | None = None) -> Path:
    """Render an executed notebook to a self-contained HTML page.

    Parameters
    ----------
    notebook : path or nbformat.NotebookNode
        The executed notebook (``None`` or unreadable: a page with the banner only).
    out_path : path
        Where ``report.html`` goes (written atomically).
    status, error
        The run's outcome, for the banner and the header's status pill.

    Returns
    -------
    Path
    """
    _skip_slow_imports()
    import nbformat

    from crmlab.privacy import escape
    from crmlab.report import STATUS_MARKER, report_title

    if notebook is None or isinstance(notebook, (str, os.PathLike)):
        try:
            nb = nbformat.read(str(notebook), as_version=4) if notebook else nbformat.v4.new_notebook()
        except (OSError, ValueError, KeyError) as exc:
            log.warning("cannot read the executed notebook (%s); the page shows the banner only",
                        type(exc).__name__)
            nb = nbformat.v4.new_notebook()
    else:
        nb = notebook
    prepare_notebook(nb, audience)
    title = report_title(report)
    if status != "success":
        title += f" ({status.replace('_', ' ')})"
    resources = {"metadata": {"name": title},
                 "crmlab": {"title": f"{title} · crmlab", "audience": audience, "status": status,
                            "banner": banner_html(status, error), "index_href": index_href,
                            "run_id": run_id or ""}}
    with _RENDER_LOCK:
        body, _ = _html_exporter(audience).from_notebook_node(nb, resources=resources)
    pill = f'<span class="crm-pill {escape(status)}">{escape(status.replace("_", " "))}</span>'
    body = body.replace(STATUS_MARKER, pill)
    out_path = Path(out_path)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    tmp.write_text(body, encoding="utf-8")
    os.replace(tmp, out_path)
    return out_path


def publish_latest(run_dir: Path) -> Path:
    """Replace ``reports/<report>/latest.html`` with this run's page,
    atomically (``latest.html.tmp`` then ``os.replace``)."""
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    page = page.replace('href="../../index.html"', 'href="../index.html"')
    latest = run_dir.parent / "latest.html"
    tmp = run_dir.parent / "latest.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, latest)
    return latest


# -- the gate ---------------------------------------------------------------

# what a gate expression may read: measures of the run's own data (DESIGN.md
# data contract; docs/scheduling.md "Gates")
GATE_MEASURES: dict[str, str] = {
    "quality_score": "the data-quality score (0-100) of this data: the run's own for data-quality, else "
                     "read from the newest data-quality run on the same source fingerprint",
    "orders_age_days": "whole days from the newest order date to when the data was extracted "
                       "(a live database: now)",
    "quarantined_share": "quarantined rows / rows read, over every table (0..1)",
    "quarantined_rows": "rows quarantined, over every table",
    "rows_<table>": "rows read from one table of the contract (rows_orders, rows_customers, ...), "
                    "quarantined ones included",
}
GATE_QUALITY_REPORT = "data-quality"
GATE_QUALITY_STATUSES = ("success", "gated")  # runs whose notebook computed a quality score


def gate_measure_names() -> tuple[str, ...]:
    """Every name a gate may read: :data:`GATE_MEASURES` with ``rows_<table>``
    spelled out for each table of the contract (``crmlab.schema.TABLES``)."""
    from crmlab.schema import TABLES

    return tuple(n for n in GATE_MEASURES if "<" not in n) + tuple(f"rows_{t}" for t in TABLES)


def parse_gate(expressions: Iterable[str] | str | None) -> list:
    """Gate expressions parsed with the alert rules' parser
    (:func:`crmlab.notify.parse_rule`), reading only :data:`GATE_MEASURES`.

    Returns
    -------
    list of crmlab.notify.Rule

    Raises
    ------
    ParameterError
        An expression outside the rule language or reading an unknown
        measure; the message quotes the expression.

    Examples
    --------
    >>> [r.metrics for r in parse_gate(["quality_score >= 95", "orders_age_days <= 2"])]
    [('quality_score',), ('orders_age_days',)]
    >>> parse_gate(["revenue > 0"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    crmlab.exceptions.ParameterError: gate expression 'revenue > 0': unknown measure 'revenue' (measures: ...)
    """
    from crmlab.notify import RuleError, parse_rule

    if expressions is None:
        return []
    if isinstance(expressions, str):
        expressions = [expressions]
    rules = []
    for text in expressions:
        if not isinstance(text, str):
            raise ParameterError(f"gate expression {text!r}: must be text, e.g. \"quality_score >= 95\"")
        try:
            rules.append(parse_rule(text, measures=gate_measure_names()))
        except RuleError as exc:
            raise ParameterError(f"gate expression {text!r}: {exc}") from None
    return rules


def _gate_pending(rules) -> dict | None:
    """The gate's record before it is checked (and for a run whose notebook
    did not succeed: the gate was never evaluated)."""
    if not rules:
        return None
    return {"passed": None, "checks": [{"expression": r.text, "values": {}, "passed": None,
                                        "reason": "not evaluated: the notebook did not succeed"}
                                       for r in rules], "measures": {}, "measured_from": {}, "not_measured": {}}


def gate_measures(names: Iterable[str], *, report: str, run_dir: Path, source_info: Mapping,
                  params: Mapping, reports_dir) -> tuple[dict, dict, dict]:
    """The measures a gate reads, from the run's own data.

    Parameters
    ----------
    names : iterable of str
        Keys of :data:`GATE_MEASURES`.
    report, run_dir
        The run (``quality_score`` of a data-quality run is its own).
    source_info : mapping
        The source check's description (:func:`check_source`): row counts,
        quarantined rows, fingerprint.
    params : mapping
        The run's parameters (``source`` and ``mapping`` are reopened for
        ``orders_age_days``).
    reports_dir : path

    Returns
    -------
    (dict, dict, dict)
        ``{measure: number}`` for those computed; ``{measure: sentence}``
        saying why each other one could not be; ``{measure: where it was
        read}`` (the data-quality run of ``quality_score``).
    """
    names = set(names)
    values: dict = {}
    reasons: dict = {}
    origin: dict = {}
    checked = bool(source_info.get("checked"))
    rows = dict(source_info.get("row_counts") or {})
    quarantined = dict(source_info.get("quarantined") or {})
    not_checked = "the source was not checked before the run, so its row counts are not known"
    fingerprint = source_info.get("fingerprint")

    for name in sorted(n for n in names if n.startswith("rows_")):
        table = name[len("rows_"):]
        if not checked:
            reasons[name] = not_checked
        elif rows.get(table) is None:
            reasons[name] = f"table {table} is not in this source"
        else:
            values[name] = int(rows[table])
    if names & {"quarantined_rows", "quarantined_share"}:
        total = sum(int(v or 0) for v in rows.values())
        bad = sum(int(v or 0) for v in quarantined.values())
        for name in names & {"quarantined_rows", "quarantined_share"}:
            if not checked:
                reasons[name] = not_checked
            elif name == "quarantined_rows":
                values[name] = bad
            elif total == 0:
                reasons[name] = "the source has no rows, so no share of them can be quarantined"
            else:
                values[name] = round(bad / total, 6)
    if "orders_age_days" in names:
        value, why = _orders_age_days(params, fingerprint)
        if why:
            reasons["orders_age_days"] = why
        else:
            values["orders_age_days"] = value
    if "quality_score" in names:
        value, why, where = _quality_score(report, run_dir, fingerprint, reports_dir)
        if why:
            reasons["quality_score"] = why
        else:
            values["quality_score"], origin["quality_score"] = value, where
    return values, reasons, origin


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return None
    return value


def _quality_score(report, run_dir, fingerprint, reports_dir) -> tuple[float | None, str | None, str | None]:
    """``quality_score``: the data-quality run's own, else the newest
    data-quality run whose notebook succeeded on the same fingerprint."""
    from crmlab.report import list_runs, read_json

    if report == GATE_QUALITY_REPORT:
        value = _number(read_json(Path(run_dir) / "metrics.json", {}).get("quality_score"))
        if value is None:
            return None, "this data-quality run wrote no quality_score to its metrics.json", None
        return value, None, f"{report}/{Path(run_dir).name}"
    if not fingerprint:
        return None, ("the source's fingerprint is not known, so no data-quality run can be matched to "
                      "this data"), None
    rd = config.reports_dir(reports_dir) / GATE_QUALITY_REPORT
    for run in list_runs(rd):
        same_data = (run.get("source") or {}).get("fingerprint") == fingerprint
        if run.get("status") not in GATE_QUALITY_STATUSES or not same_data:
            continue
        value = _number(read_json(run["_dir"] / "metrics.json", {}).get("quality_score"))
        if value is not None:
            return value, None, f"{GATE_QUALITY_REPORT}/{run['_dir'].name}"
    return None, (f"no data-quality run on this data (source fingerprint {fingerprint}) has a quality "
                  f"score; run the data-quality report on the same source first"), None


def _orders_age_days(params, fingerprint) -> tuple[int | None, str | None]:
    """``orders_age_days``: the source reopened; its newest order date
    (:func:`crmlab.engine.latest_order_date`, quarantined rows left out)
    against its ``extracted_at`` (a live database: now)."""
    from crmlab import engine

    try:
        ds = _open_source(params.get("source") or config.DEFAULT_SOURCE, params.get("mapping"))
    except CrmlabError as exc:
        return None, f"the source could not be opened again to measure it: {str(exc).splitlines()[0]}"
    try:
        now_fp = getattr(ds, "fingerprint", None)
        if fingerprint and now_fp != fingerprint:
            return None, (f"the source changed during the run (fingerprint {fingerprint} before, {now_fp} "
                          f"after), so its age is not that of this run's data")
        extracted = getattr(ds, "extracted_at", None)
        if extracted is None:
            return None, "the source does not say when its data was extracted"
        try:
            newest = engine.latest_order_date(ds.table("orders"))
        except CrmlabError as exc:
            return None, str(exc).splitlines()[0]
        if isinstance(newest, str):
            newest = dt.date.fromisoformat(newest[:10])
        day = extracted.date() if isinstance(extracted, dt.datetime) else extracted
        return int((day - newest).days), None
    finally:
        closer = getattr(ds, "close", None)
        if callable(closer):
            with contextlib.suppress(Exception):
                closer()


def check_gate(rules, *, report: str, run_dir: Path, source_info: Mapping, params: Mapping,
               reports_dir) -> dict:
    """Check a run's gate (after its notebook succeeded).

    Parameters
    ----------
    rules : list of crmlab.notify.Rule
        From :func:`parse_gate`.
    report, run_dir, source_info, params, reports_dir
        As :func:`gate_measures` takes them.

    Returns
    -------
    dict
        The record written to ``run.json`` under ``gate``: ``passed`` (every
        expression held), ``checks`` (one per expression: ``expression``,
        ``values`` it read, ``passed``, ``reason`` when it could not be
        told), ``measures``, ``measured_from`` and ``not_measured``
        (measure -> the sentence why). An expression whose
        measure could not be computed fails, with the sentence why.
    """
    names = sorted({m for r in rules for m in r.metrics})
    values, reasons, origin = gate_measures(names, report=report, run_dir=run_dir, source_info=source_info,
                                            params=params, reports_dir=reports_dir)
    checks = []
    for rule in rules:
        verdict, used = rule.evaluate(values)
        reason = None
        if verdict is None:
            missing = [reasons[m] for m in rule.metrics if m in reasons]
            reason = "; ".join(dict.fromkeys(missing)) if missing else \
                "cannot be told on these numbers (a division by zero)"
            if missing:
                reason = "cannot be computed: " + reason
        checks.append({"expression": rule.text, "values": used, "passed": verdict is True, "reason": reason})
        (log.info if verdict else log.warning)("%s: gate %s: %s", report, rule.describe(used),
                                                "passed" if verdict else f"failed{f' ({reason})' if reason else ''}")
    return {"passed": all(c["passed"] for c in checks), "checks": checks, "measures": values,
            "measured_from": origin, "not_measured": reasons}


# -- one run ----------------------------------------------------------------

def _refused(report, reports_dir, status, message, trigger, start, params=None, log_it=True, error=None):
    code = STATUS_EXIT[status]
    if log_it:
        with contextlib.suppress(OSError):
            _log_event(report, reports_dir, {"status": status, "exit_code": code, "trigger": trigger,
                                             "message": message.splitlines()[0],
                                             **({"ename": error.get("ename")} if error else {})})
    log.error("%s: %s", report, message)
    return RunResult(report=report, run_id=None, run_dir=None, status=status, exit_code=code, error=error,
                     message=message, duration_s=round(time.monotonic() - start, 3), params=params or {})


def run_report(report: str, *, source: str | None = None, mapping: str | None = None,
               param_files: Iterable = (), params: Mapping | None = None, reports_dir=None,
               audience: str = "stakeholder", timeout: float | None = None, trigger: str = "cli",
               publish: bool = True, gate: Iterable[str] = ()) -> RunResult:
    """Run one report notebook and publish its page.

    Parameters
    ----------
    report : str
        A key of ``config.REPORTS``.
    source, mapping : str, optional
        Override the notebook's ``source`` / ``mapping`` parameters.
    param_files : iterable of path or name
        ``-f`` YAML files, applied in order (a bare name is looked up in
        ``parameters/<report>/``).
    params : mapping, optional
        ``-p`` values (text is parsed to the declared type).
    reports_dir : path, optional
        The reports tree (default ``config.reports_dir()``).
    audience : {"stakeholder", "analyst"}
        Analyst pages keep code and unmasked tables and never replace
        ``latest.html``.
    timeout : float, optional
        Seconds the notebook may run; then it is stopped (exit 4).
    trigger : str
        Who asked (``cli``, ``run-all``, ``schedule``), recorded in run.json.
    publish : bool
        Replace ``latest.html`` on success and rebuild the index.
    gate : iterable of str
        Gate expressions (:func:`parse_gate`) that must all hold on the
        run's data after the notebook succeeded; else the run is ``gated``
        (exit 6) and ``latest.html`` keeps the last good page.

    Returns
    -------
    RunResult
        Never raises for an outcome that has an exit code.

    Examples
    --------
    >>> r = run_report("segmentation", source="synthetic:demo", params={"as_of": "2026-03-31"})  # doctest: +SKIP
    >>> r.status, r.exit_code, r.run_dir.name                                                  # doctest: +SKIP
    ('success', 0, '20261124T205300Z-3f2a')
    """
    start = time.monotonic()
    rdir = config.reports_dir(reports_dir)
    if report not in config.REPORTS:
        return _refused(report, rdir, "bad_input",
                        f"unknown report {report!r}; reports: {', '.join(config.REPORTS)}", trigger, start,
                        log_it=False)
    try:
        values = resolve_parameters(report, param_files=param_files, params=params, source=source,
                                    mapping=mapping, audience=audience)
        gate_rules = parse_gate(gate)
    except CrmlabError as exc:
        return _refused(report, rdir, "bad_input", str(exc), trigger, start)
    audience = values.get("audience", audience)

    from crmlab.locks import report_lock
    from crmlab.report import new_run_id

    run_id = new_run_id()
    try:
        with report_lock(report, rdir, run_id=run_id) as lock:
            child = None
            try:
                t0 = time.monotonic()
                spec = values.get("source") or config.DEFAULT_SOURCE
                probe_source(spec)
                # the kernel starts and imports while the source is checked
                child = _Child(report, rdir, lock.fd)
                source_info = check_source(spec, values.get("mapping"), probe=False)
                source_info["check_s"] = round(time.monotonic() - t0, 3)
            except (DataContractError, NoDataError, SourceUnavailable) as exc:
                if child is not None:
                    child.cleanup()
                if isinstance(exc, DataContractError):
                    return _refused(report, rdir, "bad_input", str(exc), trigger, start, values)
                if isinstance(exc, NoDataError):
                    return _refused(report, rdir, "no_data", str(exc), trigger, start, values)
                # may pass: the scheduler retries it
                return _refused(report, rdir, "failed", str(exc), trigger, start, values,
                                error={"ename": "SourceUnavailable", "evalue": str(exc)})
            except BaseException:
                if child is not None:
                    child.cleanup()
                raise
            try:
                return _execute(report, run_id, rdir, values, source_info, audience=audience,
                                timeout=timeout, trigger=trigger, publish=publish, start=start,
                                gate=gate_rules, child=child)
            finally:
                child.cleanup()
    except RunLocked as exc:
        return _refused(report, rdir, "skipped", str(exc), trigger, start, values)


def _execute(report, run_id, rdir, values, source_info, *, audience, timeout, trigger, publish,
             start, child: _Child, gate=()) -> RunResult:
    from crmlab.privacy import scrub_text
    from crmlab.report import read_json, write_json

    run_dir = rdir / report / run_id
    (run_dir / "exports").mkdir(parents=True)
    values = dict(values, run_dir=str(run_dir))
    started_at = _now()
    manifest = {
        "report": report, "run_id": run_id, "status": "running", "exit_code": None, "trigger": trigger,
        "audience": audience, "started_at": started_at, "finished_at": None, "duration_s": None,
        "timings": {}, "params": values, "source": {k: v for k, v in source_info.items()
                                                    if k not in ("row_counts", "quarantined")},
        "row_counts": source_info.get("row_counts", {}), "quarantined": source_info.get("quarantined", {}),
        "code_version": code_version(), "packages": package_versions(), "pid": os.getpid(),
        "kpis": [], "error": None, "gate": _gate_pending(gate),
    }
    write_json(run_dir / "run.json", manifest)
    log.info("%s: running %s (run %s)", report, config.REPORTS[report], run_id)

    status, error, exit_code = "failed", None, config.EXIT_FAILED
    t_exec = time.monotonic()
    tmp = child.tmp
    child.go(run_dir / "notebook.ipynb", values)
    proc = child.proc
    renderer = _warm_renderer(audience)  # nbconvert loads while the notebook runs
    in_main = threading.current_thread() is threading.main_thread()
    previous_handlers = {}
    received: list[int] = []
    child_state = None  # ok | error | crash | missing (no result written)

    def on_signal(signum, frame):
        if received:  # already stopping: a second signal must not break the clean-up
            return
        received.append(signum)
        raise _Interrupted(signum)

    if in_main:
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous_handlers[sig] = signal.signal(sig, on_signal)
    try:
        try:
            proc.wait(timeout=timeout)
            result = read_json(tmp / "result.json", None)
            child_state = result["status"] if result else "missing"
            if result is None:
                error = {"ename": "ChildExited", "evalue": f"the notebook process ended with code "
                                                          f"{proc.returncode} before it finished"}
            elif result["status"] == "ok":
                status, exit_code = "success", config.EXIT_OK
            else:
                error = {"ename": result.get("ename"), "evalue": result.get("evalue")}
                if result["status"] == "error":
                    status = ENAME_STATUS.get(result.get("ename"), "failed")
                    exit_code = STATUS_EXIT[status]
        except subprocess.TimeoutExpired:
            _kill_tree(proc)
            status, exit_code = "timeout", config.EXIT_TIMEOUT
            error = {"ename": "RunTimeout", "evalue": f"stopped after the time limit of {timeout:g} s"}
        except _Interrupted as exc:
            _kill_tree(proc)
            status, exit_code = "interrupted", 128 + exc.signum
            error = {"ename": "Interrupted",
                     "evalue": f"stopped by signal {signal.Signals(exc.signum).name}"}
    except _Interrupted:  # arrived while a timed-out child was being stopped; handled below
        _kill_tree(proc)
    finally:
        if proc.poll() is None:
            _kill_tree(proc)
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
        if child_state in ("missing", "crash"):
            _log_tail(tmp / "child.log", report)  # the child's own words, when no cell error explains
    execute_s = round(time.monotonic() - t_exec, 3)
    if received and status != "interrupted":  # the signal came while the child was being stopped
        status, exit_code = "interrupted", 128 + received[0]
        error = {"ename": "Interrupted", "evalue": f"stopped by signal {signal.Signals(received[0]).name}"}
    gate_s = None
    if gate and status == "success":  # after the notebook, before the page and latest.html
        t_gate = time.monotonic()
        manifest["gate"] = check_gate(gate, report=report, run_dir=run_dir, source_info=source_info,
                                      params=values, reports_dir=rdir)
        gate_s = round(time.monotonic() - t_gate, 3)
        if not manifest["gate"]["passed"]:
            from crmlab.notify import gate_check_text

            status, exit_code = "gated", config.EXIT_GATED
            error = {"ename": "GateFailed", "evalue": "; ".join(
                gate_check_text(c) for c in manifest["gate"]["checks"] if not c["passed"])}
    # the outcome is on record before the page is rendered
    manifest.update({"status": status, "exit_code": exit_code, "error": error, "finished_at": _now(),
                     "duration_s": round(time.monotonic() - start, 3)})
    write_json(run_dir / "run.json", manifest)

    nb_path = run_dir / "notebook.ipynb"
    if status not in ("success", "gated", "timeout", "interrupted") and nb_path.exists():
        _skip_slow_imports()
        import nbformat

        with contextlib.suppress(Exception):
            found = _failed_cell(nbformat.read(str(nb_path), as_version=4))
            if found:
                error = {**(error or {}), **found}
    if error and error.get("evalue"):
        error["evalue"] = scrub_text(str(error["evalue"]))[:1000]
    if not (run_dir / "metrics.json").exists():
        write_json(run_dir / "metrics.json", {})

    renderer.join()
    t_render = time.monotonic()
    try:
        render_html(nb_path if nb_path.exists() else None, run_dir / "report.html", report=report,
                    audience=audience, status=status, error=error, run_id=run_id)
    except Exception as exc:  # a page that cannot be rendered is a failed run
        log.exception("%s: rendering report.html failed", report)
        if status == "success":
            status, exit_code = "failed", config.EXIT_FAILED
            error = {"ename": "RenderError", "evalue": scrub_text(f"{type(exc).__name__}: {exc}")[:1000]}
        with contextlib.suppress(Exception):
            render_html(None, run_dir / "report.html", report=report, audience=audience, status=status,
                        error=error, run_id=run_id)
    render_s = round(time.monotonic() - t_render, 3)

    manifest.update({
        "status": status, "exit_code": exit_code, "finished_at": _now(),
        "duration_s": round(time.monotonic() - start, 3),
        "timings": {"source_check_s": source_info.get("check_s"), "execute_s": execute_s,
                    "render_s": render_s, **({"gate_s": gate_s} if gate_s is not None else {})},
        "kpis": read_json(run_dir / "kpis.json", []) or [], "error": error,
    })
    manifest["source"].pop("check_s", None)
    write_json(run_dir / "run.json", manifest)

    if publish:
        if status == "success" and audience == "stakeholder":
            publish_latest(run_dir)
        try:
            from crmlab.index import build_index

            build_index(rdir)
        except Exception:
            log.exception("rebuilding the index failed")
    message = f"{report}: {status} in {manifest['duration_s']:.1f} s"
    if error:
        where = f" at cell {error['cell']}" if error.get("cell") else ""
        message += f"{where} ({error.get('ename')}: {error.get('evalue')})"
    (log.info if status == "success" else log.error)("%s", message)
    return RunResult(report=report, run_id=run_id, run_dir=run_dir, status=status, exit_code=exit_code,
                     error=error, message=message, duration_s=manifest["duration_s"], params=values,
                     gate=manifest.get("gate"))


# -- every report -----------------------------------------------------------

def exit_code_of(results: Iterable[RunResult]) -> int:
    """The exit code of the worst run (:data:`SEVERITY`); 0 when all succeeded."""
    results = list(results)
    if not results:
        return config.EXIT_OK
    worst = max(results, key=lambda r: SEVERITY.index(r.status) if r.status in SEVERITY else len(SEVERITY))
    return worst.exit_code


def _cli_args(report, *, source, mapping, reports_dir, audience, timeout, trigger, param_files, params,
              gate=()):
    args = [sys.executable, "-m", "crmlab.cli", "run", report, "--trigger", trigger, "--audience", audience]
    for expr in gate or ():
        args += ["--gate", str(expr)]
    if source:
        args += ["--source", str(source)]
    if mapping:
        args += ["--mapping", str(mapping)]
    if reports_dir:
        args += ["--reports-dir", str(reports_dir)]
    if timeout:
        args += ["--timeout", str(timeout)]
    for f in param_files or ():
        args += ["-f", str(f)]
    for k, v in (params or {}).items():
        args += ["-p", f"{k}={v}"]
    return args


# thread-pool sizes of the numeric libraries a kernel loads (OpenMP, OpenBLAS, MKL, numexpr)
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_MAX_THREADS")


def run_all(*, source: str | None = None, mapping: str | None = None, jobs: int = 1, reports_dir=None,
            audience: str = "stakeholder", timeout: float | None = None, trigger: str = "run-all",
            reports: Iterable[str] | None = None, param_files: Iterable = (), params: Mapping | None = None,
            stream=None) -> list[RunResult]:
    """Run every report (or ``reports``), up to ``jobs`` at a time.

    Each report runs as its own ``crmlab run`` process, so runs share no
    state and each takes its own lock. One progress line per start and per
    finish goes to ``stream`` (stderr); the log of a run that did not
    succeed follows its line. The index is rebuilt at the end.

    Returns
    -------
    list of RunResult
        In the order of ``config.REPORTS``; :func:`exit_code_of` gives the
        command's exit code.

    Examples
    --------
    >>> results = run_all(jobs=2)                        # doctest: +SKIP
    >>> exit_code_of(results)                            # doctest: +SKIP
    0
    """
    from crmlab.report import read_json

    stream = stream or sys.stderr
    names = list(reports or config.REPORTS)
    rdir = config.reports_dir(reports_dir)
    jobs = max(1, int(jobs))
    # parallel reports share the cores: each one's numeric libraries get a fair share
    # of threads (oversubscribed OpenMP/BLAS pools are many times slower)
    threads = int(os.environ.get("CRMLAB_THREADS") or max(1, (os.cpu_count() or 1) // jobs))
    results: dict[str, RunResult] = {}
    live: set[subprocess.Popen] = set()
    stopping = threading.Event()
    lock = threading.Lock()
    width = max(len(n) for n in names) if names else 0
    stream.write(f"crmlab run-all: {len(names)} reports, {jobs} at a time\n")
    stream.flush()

    def say(text):
        with lock:
            stream.write(text + "\n")
            stream.flush()

    def one(name: str) -> RunResult:
        if stopping.is_set():
            return RunResult(name, None, None, "interrupted", 128 + signal.SIGTERM, message="not started")
        t0 = time.monotonic()
        say(f"  {name:<{width}}  started")
        proc = subprocess.Popen(_cli_args(name, source=source, mapping=mapping, reports_dir=rdir,
                                          audience=audience, timeout=timeout, trigger=trigger,
                                          param_files=param_files, params=params),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, CRMLAB_THREADS=str(threads)))
        with lock:
            live.add(proc)
        out, err = proc.communicate()
        with lock:
            live.discard(proc)
        seconds = time.monotonic() - t0
        lines = [l for l in out.splitlines() if l.strip()]
        run_dir = Path(lines[-1]) if lines and Path(lines[-1]).is_dir() else None
        doc = read_json(run_dir / "run.json", {}) if run_dir else {}
        status = doc.get("status") or EXIT_STATUS.get(proc.returncode, "interrupted"
                                                      if proc.returncode and proc.returncode > 128 else "failed")
        res = RunResult(report=name, run_id=doc.get("run_id"), run_dir=run_dir, status=status,
                        exit_code=proc.returncode, error=doc.get("error"), duration_s=round(seconds, 3),
                        message=(err.strip().splitlines() or [""])[-1])
        say(f"  {name:<{width}}  {status:<11} {seconds:6.1f} s" + (f"  {run_dir}" if run_dir else ""))
        if status != "success" and err.strip():
            say("\n".join("      " + l for l in err.strip().splitlines()[-15:]))
        return res

    def forward(signum, frame):
        stopping.set()
        with lock:
            for p in live:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signum)

    in_main = threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)} if in_main else {}
    try:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for name, res in zip(names, pool.map(one, names)):
                results[name] = res
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    with contextlib.suppress(Exception):
        from crmlab.index import build_index

        build_index(rdir)
    ordered = [results[n] for n in names]
    ok = sum(r.ok for r in ordered)
    say(f"crmlab run-all: {ok} of {len(ordered)} succeeded; exit code {exit_code_of(ordered)}")
    return ordered


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--execute":
        sys.exit(_child_main(sys.argv[2]))
    sys.exit("usage: python -m crmlab.runner --execute SPEC.json (used by crmlab run)")
