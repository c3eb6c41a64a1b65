"""Alert rules over ``metrics.json`` and notifications by webhook and SMTP.

The scheduler (:mod:`crmlab.schedule`) sends a message when a scheduled run
fails and when an alert rule over a run's ``metrics.json`` opens. Rules and
channels are written in ``parameters/schedule.yaml``::

    channels:
      ops-webhook: {type: webhook, url: "${CRMLAB_WEBHOOK_URL}"}
      analytics-mail: {type: smtp, host: mail.example.com, port: 587, starttls: true,
                       from: crmlab@example.com, to: [analytics@example.com],
                       username: crmlab, password_env: CRMLAB_SMTP_PASSWORD}
    alerts:
      - name: quality-below-80
        report: data-quality
        when: quality_score < 80
      - name: churned-share-up-5-points
        report: lifecycle
        when: change(share_churned) >= 0.05

The rule language
-----------------
One expression over the numbers in the run's ``metrics.json``:

* a metric by its key (``quality_score``); a nested or unusual key with
  ``metric("campaigns.C01.roi")`` (dots walk into nested objects);
* ``previous(x)``: the value in the previous successful run of the same
  report; ``change(x)`` = current - previous; ``pct_change(x)`` = the change
  in percent of the previous value;
* numbers, ``+ - * /``, ``abs()``, ``min()``, ``max()``, comparisons
  (``< <= > >= == !=``, chained as in Python), ``and``, ``or``, ``not``,
  parentheses.

A rule whose metrics are missing, not numbers, or that needs a previous run
when there is none, is *unknown*: it neither opens nor closes an alert.
Rules are parsed with :mod:`ast` against a whitelist of node types and
function names; nothing is ever evaluated by ``eval``.

Messages name the report, the job, the outcome, the rule with the values it
used and the link to the run's ``report.html`` -- never a value from the
data itself (metrics are aggregate numbers; error messages, which may quote
data, are left out: the linked page shows them masked).
"""

from __future__ import annotations

import ast
import json
import logging
import math
import os
import smtplib
import urllib.error
import urllib.request
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage

log = logging.getLogger("crmlab.notify")

CHANNEL_TYPES: tuple[str, ...] = ("webhook", "smtp")
# keys each channel type accepts: True = required
CHANNEL_KEYS: dict[str, dict[str, bool]] = {
    "webhook": {"type": True, "url": True, "headers": False, "timeout": False},
    "smtp": {"type": True, "host": True, "port": False, "from": True, "to": True, "starttls": False,
             "ssl": False, "username": False, "password_env": False, "timeout": False},
}
DEFAULT_TIMEOUT_S = 10.0
SMTP_DEFAULT_PORT = 25
# rule functions: name -> number of arguments
FUNCTIONS: dict[str, int] = {"previous": 1, "change": 1, "pct_change": 1, "metric": 1, "abs": 1,
                             "min": 2, "max": 2}
METRIC_FUNCTIONS = ("previous", "change", "pct_change", "metric")  # their argument names a metric
PREVIOUS_FUNCTIONS = ("previous", "change", "pct_change")  # they read the previous run
_COMPARE = {ast.Lt: lambda a, b: a < b, ast.LtE: lambda a, b: a <= b, ast.Gt: lambda a, b: a > b,
            ast.GtE: lambda a, b: a >= b, ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b}
_ARITH = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
          ast.Div: lambda a, b: a / b}
_COMPARE_TEXT = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!="}


class RuleError(ValueError):
    """A rule that is not in the rule language (the message says where)."""


class _Unknown(Exception):
    """A metric is missing or not a number: the rule is unknown this time."""


# -- rules -------------------------------------------------------------------

def _metric_name(node: ast.AST, func: str) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.strip():
        return node.value.strip()
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "metric"
            and len(node.args) == 1 and not node.keywords):
        return _metric_name(node.args[0], "metric")
    raise RuleError(f"{func}() takes a metric name, e.g. {func}(quality_score) or "
                    f'{func}("campaigns.C01.roi")')


def _check(node: ast.AST, names: set[str]) -> None:
    """Walk the tree; refuse anything outside the rule language."""
    if isinstance(node, ast.Expression):
        _check(node.body, names)
    elif isinstance(node, ast.BoolOp):
        for v in node.values:
            _check(v, names)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub, ast.UAdd)):
        _check(node.operand, names)
    elif isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
        _check(node.left, names)
        _check(node.right, names)
    elif isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
        _check(node.left, names)
        for c in node.comparators:
            _check(c, names)
    elif isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
            and not isinstance(node.value, bool):
        pass
    elif isinstance(node, ast.Name):
        names.add(node.id)
    elif isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            raise RuleError(f"only the rule functions can be called ({', '.join(FUNCTIONS)})")
        if node.func.id not in FUNCTIONS:
            raise RuleError(f"unknown function {node.func.id!r}; functions: {', '.join(FUNCTIONS)}")
        if node.keywords or len(node.args) != FUNCTIONS[node.func.id]:
            raise RuleError(f"{node.func.id}() takes {FUNCTIONS[node.func.id]} argument(s)")
        if node.func.id in METRIC_FUNCTIONS:
            names.add(_metric_name(node.args[0], node.func.id))
        else:
            for a in node.args:
                _check(a, names)
    else:
        raise RuleError(f"{type(node).__name__} is not allowed in a rule ({ast.unparse(node)})")


@dataclass(frozen=True)
class Rule:
    """A parsed alert rule (use :func:`parse_rule`).

    ``metrics`` are the metric keys the rule reads, in sorted order.
    """

    text: str
    tree: ast.Expression = field(repr=False, compare=False)
    metrics: tuple[str, ...] = ()

    def evaluate(self, current: Mapping, previous: Mapping | None = None) -> tuple[bool | None, dict]:
        """The rule on one run's metrics.

        Parameters
        ----------
        current : mapping
            The run's ``metrics.json``.
        previous : mapping, optional
            The ``metrics.json`` of the previous successful run of the same
            report (for ``previous``, ``change``, ``pct_change``).

        Returns
        -------
        (bool or None, dict)
            True when the alert condition holds, False when it does not,
            None when it cannot be told (a metric missing or not a number,
            no previous run); and the values used, ``{"quality_score": 72.0,
            "previous(share_churned)": 0.1, ...}``.

        Examples
        --------
        >>> parse_rule("change(share_churned) >= 0.05").evaluate({"share_churned": 0.21},
        ...                                                    {"share_churned": 0.15})
        (True, {'share_churned': 0.21, 'previous(share_churned)': 0.15})
        """
        used: dict = {}
        try:
            result = _eval(self.tree.body, current, previous, used)
        except (_Unknown, ZeroDivisionError):
            return None, used
        return bool(result), used

    def describe(self, values: Mapping) -> str:
        """``rule (a = 1, previous(a) = 0.5)`` for a message."""
        shown = ", ".join(f"{k} = {_fmt(v)}" for k, v in values.items())
        return f"{self.text} ({shown})" if shown else self.text


def parse_rule(text: str, *, measures: Collection[str] | None = None) -> Rule:
    """Parse an alert rule (see the module docstring for the language).

    Parameters
    ----------
    text : str
        The expression.
    measures : collection of str, optional
        The only names the expression may read. A run's gate
        (:mod:`crmlab.runner`) passes its measures here: names outside them
        are refused, and so are ``previous``, ``change`` and ``pct_change``
        (a gate reads the run's own data, never an earlier run).

    Raises
    ------
    RuleError
        The text is not a rule: a syntax error, an attribute, a subscript,
        a call to anything but the rule functions, text where a number is
        expected, a name that is not one of ``measures`` ...

    Examples
    --------
    >>> parse_rule("quality_score < 80").metrics
    ('quality_score',)
    >>> parse_rule("__import__('os')")
    Traceback (most recent call last):
    ...
    crmlab.notify.RuleError: unknown function '__import__'; functions: previous, change, pct_change, metric, abs, min, max
    """
    if not isinstance(text, str) or not text.strip():
        raise RuleError("a rule must be a non-empty expression such as quality_score < 80")
    text = " ".join(text.split())
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise RuleError(f"not a valid expression (column {exc.offset})") from None
    names: set[str] = set()
    _check(tree, names)
    if measures is not None:
        earlier = sorted({n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call)
                          and isinstance(n.func, ast.Name) and n.func.id in PREVIOUS_FUNCTIONS})
        if earlier:
            raise RuleError(f"{earlier[0]}() reads an earlier run; a gate reads only this run's data")
        unknown = sorted(n for n in names if n not in measures)
        if unknown:
            raise RuleError(f"unknown measure {unknown[0]!r} (measures: {', '.join(measures)})")
    return Rule(text=text, tree=tree, metrics=tuple(sorted(names)))


def lookup(metrics: Mapping | None, name: str):
    """A numeric metric by key (dots walk into nested objects), or raise
    ``_Unknown``. A key that itself contains dots is found first."""
    if not isinstance(metrics, Mapping):
        raise _Unknown(name)
    if name in metrics:
        value = metrics[name]
    else:
        value = metrics
        for part in name.split("."):
            if not isinstance(value, Mapping) or part not in value:
                raise _Unknown(name)
            value = value[part]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (isinstance(value, float) and math.isnan(value)):
        raise _Unknown(name)
    return value


def _eval(node, current, previous, used):
    if isinstance(node, ast.BoolOp):
        if isinstance(node.op, ast.And):
            return all(_eval(v, current, previous, used) for v in node.values)
        return any(_eval(v, current, previous, used) for v in node.values)
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand, current, previous, used)
        return (not v) if isinstance(node.op, ast.Not) else (-v if isinstance(node.op, ast.USub) else +v)
    if isinstance(node, ast.BinOp):
        return _ARITH[type(node.op)](_eval(node.left, current, previous, used),
                                     _eval(node.right, current, previous, used))
    if isinstance(node, ast.Compare):
        left = _eval(node.left, current, previous, used)
        for op, comp in zip(node.ops, node.comparators):
            right = _eval(comp, current, previous, used)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        used[node.id] = lookup(current, node.id)
        return used[node.id]
    if isinstance(node, ast.Call):
        fn = node.func.id
        if fn in METRIC_FUNCTIONS:
            name = _metric_name(node.args[0], fn)
            if fn == "metric":
                used[name] = lookup(current, name)
                return used[name]
            if fn == "previous":
                used[f"previous({name})"] = lookup(previous, name)
                return used[f"previous({name})"]
            used[name] = now = lookup(current, name)
            used[f"previous({name})"] = before = lookup(previous, name)
            if fn == "change":
                return now - before
            return (now - before) / abs(before) * 100.0  # pct_change; 0 -> ZeroDivisionError -> unknown
        args = [_eval(a, current, previous, used) for a in node.args]
        return {"abs": abs, "min": min, "max": max}[fn](*args)
    raise RuleError(f"{type(node).__name__} is not allowed in a rule")  # _check keeps this unreachable


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


# -- channels ----------------------------------------------------------------

@dataclass(frozen=True)
class Channel:
    """A notification target: a webhook (HTTP POST of JSON) or SMTP mail.

    ``configured`` is False when its address is empty (an unset
    ``${VARIABLE}`` in the schedule file): such a channel is skipped with a
    log line, so a schedule can name channels that a deployment fills in.
    """

    name: str
    type: str
    options: Mapping = field(default_factory=dict)

    @property
    def configured(self) -> bool:
        key = "url" if self.type == "webhook" else "host"
        return bool(str(self.options.get(key) or "").strip()) and (
            self.type != "smtp" or bool(_recipients(self.options.get("to"))))


def _recipients(to) -> list[str]:
    if isinstance(to, str):
        return [a.strip() for a in to.split(",") if a.strip()]
    return [str(a).strip() for a in (to or []) if str(a).strip()]


def parse_channel(name: str, spec) -> tuple[Channel | None, list[str]]:
    """A channel from its YAML mapping; ``(None, problems)`` when invalid.

    Examples
    --------
    >>> parse_channel("hook", {"type": "webhook", "url": "http://127.0.0.1:9/x"})[0].type
    'webhook'
    """
    where = f"channel {name}"
    if not isinstance(spec, Mapping):
        return None, [f"{where}: must be a mapping with a type ({' or '.join(CHANNEL_TYPES)})"]
    kind = spec.get("type")
    if kind not in CHANNEL_TYPES:
        return None, [f"{where}: field type: must be one of {', '.join(CHANNEL_TYPES)}, not {kind!r}"]
    problems = [f"{where}: unknown field {k!r} (known: {', '.join(CHANNEL_KEYS[kind])})"
                for k in spec if k not in CHANNEL_KEYS[kind]]
    problems += [f"{where}: field {k} is required" for k, req in CHANNEL_KEYS[kind].items()
                 if req and k not in spec]
    if kind == "smtp" and "port" in spec:
        try:
            int(spec["port"])
        except (TypeError, ValueError):
            problems.append(f"{where}: field port: must be a number, not {spec['port']!r}")
    if kind == "webhook" and spec.get("url") and not str(spec["url"]).startswith(("http://", "https://")):
        problems.append(f"{where}: field url: must start with http:// or https://")
    if "headers" in spec and not isinstance(spec["headers"], Mapping):
        problems.append(f"{where}: field headers: must be a mapping of header: value")
    return (None if problems else Channel(name=name, type=kind, options=dict(spec))), problems


# -- messages ------------------------------------------------------------------

@dataclass
class Message:
    """One notification: ``subject`` and ``text`` for mail and chat, and
    ``payload`` (a flat JSON object) for webhooks."""

    subject: str
    text: str
    payload: dict


def run_link(run_dir, reports_dir, base_url: str = "") -> str:
    """The address of a run's ``report.html``: under ``base_url`` when the
    reports tree is served (``https://reports.example.com/segmentation/<run
    id>/report.html``), else a ``file://`` URL."""
    from pathlib import Path

    if not run_dir:
        return ""
    page = Path(run_dir) / "report.html"
    if base_url:
        try:
            rel = page.resolve().relative_to(Path(reports_dir).resolve())
            return base_url.rstrip("/") + "/" + "/".join(rel.parts)
        except ValueError:
            pass
    return page.resolve().as_uri()


def failure_message(*, report: str, job: str | None, status: str, exit_code: int, attempts: int = 1,
                    scheduled_for: str | None = None, error: Mapping | None = None, link: str = "",
                    time: str | None = None, gate: Mapping | None = None) -> Message:
    """The message for a scheduled run that did not succeed.

    Only the error's type and cell are quoted (its text may quote data).
    For a gated run, ``gate`` (the ``gate`` record of its ``run.json``)
    adds each failed expression with the measures it read -- aggregate
    numbers the runner computed, never a value from the data -- or the
    sentence saying why a measure could not be computed.

    Examples
    --------
    >>> failure_message(report="segmentation", job="daily", status="failed", exit_code=1).subject
    'crmlab: segmentation failed (job daily)'
    """
    status_text = status.replace("_", " ")
    subject = f"crmlab: {report} {status_text}" + (f" (job {job})" if job else "")
    err = error or {}
    where = f" at cell {err['cell']}" if err.get("cell") else ""
    lines = [f"Report: {report}", f"Job: {job or '-'}", f"Outcome: {status_text} (exit code {exit_code})"]
    if scheduled_for:
        lines.append(f"Scheduled for: {scheduled_for}")
    lines.append(f"Attempts: {attempts}")
    if err.get("ename"):
        lines.append(f"Error: {err['ename']}{where}")
    failed_checks = [c for c in ((gate or {}).get("checks") or []) if not c.get("passed")]
    for c in failed_checks:
        lines.append(f"Gate failed: {gate_check_text(c)}")
    if link:
        lines.append(f"Report page: {link}")
    payload = {"kind": "failure", "report": report, "job": job, "status": status, "exit_code": exit_code,
               "attempts": attempts, "scheduled_for": scheduled_for, "error": err.get("ename"),
               "cell": err.get("cell"), "link": link, "time": time}
    if gate:
        payload["gate"] = [{k: c.get(k) for k in ("expression", "values", "passed", "reason")}
                           for c in gate.get("checks") or []]
    text = "\n".join(lines)
    payload["text"] = f"{subject}\n{text}"
    return Message(subject=subject, text=text, payload=payload)


def gate_check_text(check: Mapping) -> str:
    """One gate check for a person: ``orders_age_days <= 2 (orders_age_days =
    5)``, or the expression and why it could not be told.

    Examples
    --------
    >>> gate_check_text({"expression": "quality_score >= 95", "values": {}, "passed": False,
    ...                  "reason": "no data-quality run on this data"})
    'quality_score >= 95: no data-quality run on this data'
    """
    values = check.get("values") or {}
    shown = ", ".join(f"{k} = {_fmt(v)}" for k, v in values.items())
    text = f"{check.get('expression')} ({shown})" if shown else str(check.get("expression"))
    return f"{text}: {check['reason']}" if check.get("reason") else text


def alert_message(*, report: str, job: str | None, rule_name: str, rule: Rule, values: Mapping,
                  link: str = "", note: str = "", time: str | None = None) -> Message:
    """The message for an alert rule that holds on a run's metrics.

    Examples
    --------
    >>> m = alert_message(report="data-quality", job="dq", rule_name="low",
    ...                   rule=parse_rule("quality_score < 80"), values={"quality_score": 72.5})
    >>> m.subject
    'crmlab alert: data-quality: quality_score < 80'
    >>> m.payload["values"]
    {'quality_score': 72.5}
    """
    subject = f"crmlab alert: {report}: {rule.text}"
    lines = [f"Report: {report}", f"Job: {job or '-'}", f"Alert: {rule_name}",
             f"Rule: {rule.describe(values)}"]
    if note:
        lines.append(note)
    if link:
        lines.append(f"Report page: {link}")
    text = "\n".join(lines)
    payload = {"kind": "alert", "report": report, "job": job, "alert": rule_name, "rule": rule.text,
               "values": dict(values), "note": note or None, "link": link, "time": time,
               "text": f"{subject}\n{text}"}
    return Message(subject=subject, text=text, payload=payload)


# -- sending -------------------------------------------------------------------

def send_webhook(channel: Channel, message: Message) -> None:
    """POST ``message.payload`` as JSON to the channel's ``url``.

    Raises
    ------
    OSError
        The receiver did not answer or answered with an HTTP error.
    """
    opts = channel.options
    headers = {"Content-Type": "application/json", "User-Agent": "crmlab"}
    headers.update({str(k): str(v) for k, v in (opts.get("headers") or {}).items()})
    data = json.dumps(message.payload, ensure_ascii=False).encode("utf-8")
    req = urllib.request.Request(str(opts["url"]), data=data, headers=headers, method="POST")
    timeout = float(opts.get("timeout") or DEFAULT_TIMEOUT_S)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:
        raise OSError(f"the webhook answered HTTP {exc.code}") from None


def send_smtp(channel: Channel, message: Message) -> None:
    """Send ``message`` as a plain-text mail through the channel's SMTP
    server (``starttls`` or ``ssl`` when set; a login when ``username`` is
    set, with the password read from the environment variable named by
    ``password_env`` -- never from the schedule file).

    Raises
    ------
    OSError, smtplib.SMTPException
    """
    opts = channel.options
    mail = EmailMessage()
    mail["Subject"] = message.subject
    mail["From"] = str(opts["from"])
    to = _recipients(opts.get("to"))
    mail["To"] = ", ".join(to)
    mail.set_content(message.text + "\n")
    timeout = float(opts.get("timeout") or DEFAULT_TIMEOUT_S)
    port = int(opts.get("port") or SMTP_DEFAULT_PORT)
    cls = smtplib.SMTP_SSL if opts.get("ssl") else smtplib.SMTP
    with cls(str(opts["host"]), port, timeout=timeout) as smtp:
        if opts.get("starttls") and not opts.get("ssl"):
            smtp.starttls()
        if opts.get("username"):
            smtp.login(str(opts["username"]), os.environ.get(str(opts.get("password_env") or ""), ""))
        smtp.send_message(mail, to_addrs=to)


SENDERS = {"webhook": send_webhook, "smtp": send_smtp}


def send(channels: Sequence[Channel], message: Message) -> list[dict]:
    """Send one message to each channel; a failing channel never stops the
    others.

    Returns
    -------
    list of dict
        ``{"channel", "type", "ok", "error"}`` per channel (``error``: the
        exception's type and text, for the audit log; the text never holds
        the message itself).
    """
    results = []
    for ch in channels:
        if not ch.configured:
            log.info("notification channel %s has no address configured; skipped", ch.name)
            results.append({"channel": ch.name, "type": ch.type, "ok": False, "error": "not configured"})
            continue
        try:
            SENDERS[ch.type](ch, message)
            results.append({"channel": ch.name, "type": ch.type, "ok": True, "error": None})
        except (OSError, smtplib.SMTPException, ValueError) as exc:
            log.warning("notification to %s failed: %s: %s", ch.name, type(exc).__name__, exc)
            results.append({"channel": ch.name, "type": ch.type, "ok": False,
                            "error": f"{type(exc).__name__}: {exc}"[:300]})
    return results
