"""Alert rules over metrics.json, messages, and delivery by webhook and SMTP
(crmlab.notify), against a local HTTP receiver and a local SMTP sink that
the tests start. ``HookSink`` and ``SmtpSink`` are reused by test_schedule.
"""

from __future__ import annotations

import email
import email.policy
import json
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from crmlab.notify import (Channel, RuleError, alert_message, failure_message, parse_channel, parse_rule,
                           run_link, send, send_smtp, send_webhook)


# -- local receivers -------------------------------------------------------------

class HookSink:
    """A local HTTP server that records each POST: ``posts`` is a list of
    ``{"path", "headers", "json"}``. ``status`` is the code it answers."""

    def __init__(self, status: int = 200):
        sink = self
        self.posts: list[dict] = []
        self.status = status

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                sink.posts.append({"path": self.path, "headers": dict(self.headers),
                                   "json": json.loads(body.decode("utf-8"))})
                self.send_response(sink.status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class SmtpSink:
    """A minimal SMTP server (HELO/EHLO, MAIL, RCPT, DATA, QUIT) that keeps
    each message: ``messages`` holds ``{"from", "to", "message"}`` with an
    ``email.message.EmailMessage``."""

    def __init__(self):
        sink = self
        self.messages: list[dict] = []

        class Handler(socketserver.StreamRequestHandler):
            def reply(self, line: str):
                self.wfile.write((line + "\r\n").encode("ascii"))
                self.wfile.flush()

            def handle(self):
                self.reply("220 localhost crmlab test sink")
                sender, rcpts = None, []
                while True:
                    raw = self.rfile.readline()
                    if not raw:
                        return
                    cmd = raw.decode("utf-8", "replace").strip()
                    verb = cmd.split(" ", 1)[0].upper()
                    if verb in ("EHLO", "HELO"):
                        self.reply("250 localhost")
                    elif verb == "MAIL":
                        sender, rcpts = cmd.split(":", 1)[1].strip(" <>"), []
                        self.reply("250 ok")
                    elif verb == "RCPT":
                        rcpts.append(cmd.split(":", 1)[1].strip(" <>"))
                        self.reply("250 ok")
                    elif verb == "DATA":
                        self.reply("354 end with .")
                        lines = []
                        while True:
                            line = self.rfile.readline()
                            if line in (b".\r\n", b".\n", b""):
                                break
                            lines.append(line[1:] if line.startswith(b"..") else line)
                        msg = email.message_from_bytes(b"".join(lines), policy=email.policy.default)
                        sink.messages.append({"from": sender, "to": rcpts, "message": msg})
                        self.reply("250 queued")
                    elif verb == "QUIT":
                        self.reply("221 bye")
                        return
                    else:
                        self.reply("250 ok")

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def closed_port() -> int:
    """A local port nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def hook():
    sink = HookSink()
    yield sink
    sink.close()


@pytest.fixture
def smtp():
    sink = SmtpSink()
    yield sink
    sink.close()


# -- the rule language -------------------------------------------------------------

def test_threshold_rules_hold_or_not_on_the_metrics():
    rule = parse_rule("quality_score < 80")
    assert rule.evaluate({"quality_score": 72.5}) == (True, {"quality_score": 72.5})
    assert rule.evaluate({"quality_score": 80}) == (False, {"quality_score": 80})
    both = parse_rule("duplicate_rate > 0.02 and not (orphan_orders == 0)")
    assert both.evaluate({"duplicate_rate": 0.03, "orphan_orders": 4})[0] is True
    assert both.evaluate({"duplicate_rate": 0.03, "orphan_orders": 0})[0] is False
    assert parse_rule("0.5 < churn_rate <= 0.7").evaluate({"churn_rate": 0.7})[0] is True
    assert parse_rule("abs(backtest_mase - 1) > 0.2 or max(a, b) >= 10").evaluate(
        {"backtest_mase": 1.1, "a": 3, "b": 10})[0] is True


def test_change_since_the_previous_run():
    up5 = parse_rule("change(share_churned) >= 0.05")  # "up five points" on a 0..1 share
    assert up5.evaluate({"share_churned": 0.21}, {"share_churned": 0.15}) == (
        True, {"share_churned": 0.21, "previous(share_churned)": 0.15})
    assert up5.evaluate({"share_churned": 0.18}, {"share_churned": 0.15})[0] is False
    assert parse_rule("pct_change(clv_total) <= -10").evaluate({"clv_total": 850.0}, {"clv_total": 1000.0})[0]
    assert parse_rule("previous(n) > 5").evaluate({}, {"n": 6})[0] is True


def test_nested_metrics_are_reached_with_metric():
    metrics = {"campaigns": {"C01": {"roi": -0.2}, "C02": {"roi": 1.5}}}
    rule = parse_rule('metric("campaigns.C01.roi") < 0')
    assert rule.metrics == ("campaigns.C01.roi",)
    assert rule.evaluate(metrics) == (True, {"campaigns.C01.roi": -0.2})
    assert parse_rule('change(metric("campaigns.C02.roi")) > 1').evaluate(
        metrics, {"campaigns": {"C02": {"roi": 0.1}}})[0] is True


@pytest.mark.parametrize("current, previous", [
    ({}, None),                                   # the metric is missing
    ({"quality_score": None}, None),              # not computed
    ({"quality_score": "n/a"}, None),             # text
    ({"quality_score": True}, None),              # a flag is not a number
    ({"quality_score": float("nan")}, None),
])
def test_a_rule_that_cannot_be_told_is_unknown(current, previous):
    assert parse_rule("quality_score < 80").evaluate(current, previous)[0] is None


def test_change_without_a_previous_run_is_unknown_not_an_alert():
    assert parse_rule("change(share_churned) > 0.05").evaluate({"share_churned": 0.9}, None)[0] is None
    assert parse_rule("pct_change(x) > 5").evaluate({"x": 1}, {"x": 0})[0] is None  # division by zero


@pytest.mark.parametrize("text, says", [
    ("__import__('os')", "unknown function '__import__'"),
    ("open('x').read() > 1", "only the rule functions can be called"),
    ("quality_score.real < 80", "Attribute is not allowed"),
    ("xs[0] > 1", "Subscript is not allowed"),
    ("(lambda: 1)() > 0", "only the rule functions can be called"),
    ("[x for x in y]", "ListComp is not allowed"),
    ("quality_score < 'eighty'", "Constant is not allowed"),
    ("change(1 + 2) > 0", "change() takes a metric name"),
    ("abs(x, y) > 0", "abs() takes 1 argument"),
    ("min(a, b=2) > 0", "min() takes 2 argument"),
    ("quality_score <", "not a valid expression"),
    ("", "non-empty"),
    ("x ** 2 > 4", "BinOp is not allowed"),
])
def test_anything_outside_the_grammar_is_refused(text, says):
    with pytest.raises(RuleError, match=None) as info:
        parse_rule(text)
    assert says in str(info.value)


# -- messages ----------------------------------------------------------------------

def test_failure_message_names_report_outcome_and_link_but_never_the_error_text(tmp_path):
    run_dir = tmp_path / "segmentation" / "20260302T060000Z-ab12"
    link = run_link(run_dir, tmp_path, "https://reports.example.com/crm/")
    assert link == "https://reports.example.com/crm/segmentation/20260302T060000Z-ab12/report.html"
    assert run_link(run_dir, tmp_path).startswith("file:///") and run_link(None, tmp_path) == ""
    msg = failure_message(report="segmentation", job="daily-seg", status="bad_input", exit_code=2, attempts=1,
                          scheduled_for="2026-03-02T06:00:00Z", link=link,
                          error={"ename": "DataContractError", "cell": 4,
                                 "evalue": "no customer for zhangsan@example.com / 13812345678"})
    whole = msg.subject + msg.text + json.dumps(msg.payload)
    assert msg.subject == "crmlab: segmentation bad input (job daily-seg)"
    for part in ("Report: segmentation", "Outcome: bad input (exit code 2)", "Error: DataContractError at cell 4",
                 f"Report page: {link}"):
        assert part in msg.text
    assert msg.payload["status"] == "bad_input" and msg.payload["link"] == link
    assert "zhangsan" not in whole and "13812345678" not in whole and "no customer" not in whole


def test_alert_message_states_rule_and_values():
    rule = parse_rule("change(share_churned) >= 0.05")
    values = rule.evaluate({"share_churned": 0.21}, {"share_churned": 0.15})[1]
    msg = alert_message(report="lifecycle", job="weekly", rule_name="churn-up", rule=rule, values=values,
                        link="https://r.example/x/report.html", note="Call the retention team.")
    assert msg.subject == "crmlab alert: lifecycle: change(share_churned) >= 0.05"
    assert "Rule: change(share_churned) >= 0.05 (share_churned = 0.21, previous(share_churned) = 0.15)" in msg.text
    assert msg.payload["values"] == {"share_churned": 0.21, "previous(share_churned)": 0.15}
    assert msg.payload["kind"] == "alert" and msg.payload["text"].startswith(msg.subject)


# -- channels and delivery -------------------------------------------------------------

def test_channel_definitions_are_checked():
    ch, problems = parse_channel("ops", {"type": "webhook", "url": "https://hooks.example.com/x"})
    assert ch is not None and ch.configured and problems == []
    assert parse_channel("ops", {"type": "pager"})[1] == [
        "channel ops: field type: must be one of webhook, smtp, not 'pager'"]
    _, problems = parse_channel("mail", {"type": "smtp", "host": "h", "port": "x", "from": "a@b", "to": ["c@d"],
                                         "password": "secret"})
    assert "channel mail: unknown field 'password'" in problems[0] and "field port: must be a number" in problems[1]
    assert "field url: must start with http" in parse_channel("h", {"type": "webhook", "url": "ftp://x"})[1][0]
    assert parse_channel("m", {"type": "smtp", "from": "a@b", "to": []})[1] == ["channel m: field host is required"]
    # an address left empty by an unset ${VARIABLE} leaves the channel unconfigured, not broken
    assert not parse_channel("h", {"type": "webhook", "url": ""})[0].configured


def test_webhook_posts_the_payload_as_json(hook):
    ch = Channel("ops", "webhook", {"url": hook.url, "headers": {"Authorization": "Bearer t0ken"}})
    msg = failure_message(report="campaigns", job="daily", status="timeout", exit_code=4, link="http://x/r.html")
    send_webhook(ch, msg)
    assert len(hook.posts) == 1
    post = hook.posts[0]
    assert post["path"] == "/hook" and post["headers"]["Content-Type"] == "application/json"
    assert post["headers"]["Authorization"] == "Bearer t0ken"
    assert post["json"]["report"] == "campaigns" and post["json"]["status"] == "timeout"
    assert post["json"]["link"] == "http://x/r.html" and post["json"]["text"].startswith("crmlab: campaigns timeout")


def test_smtp_sends_a_plain_mail(smtp):
    ch = Channel("mail", "smtp", {"host": "127.0.0.1", "port": smtp.port, "from": "crmlab@example.com",
                                  "to": ["ops@example.com", "lead@example.com"]})
    rule = parse_rule("quality_score < 80")
    msg = alert_message(report="data-quality", job="dq", rule_name="low", rule=rule,
                        values={"quality_score": 71.0}, link="https://r.example/dq/report.html")
    send_smtp(ch, msg)
    assert len(smtp.messages) == 1
    got = smtp.messages[0]
    assert got["from"] == "crmlab@example.com" and got["to"] == ["ops@example.com", "lead@example.com"]
    mail = got["message"]
    assert mail["Subject"] == "crmlab alert: data-quality: quality_score < 80"
    body = mail.get_content()
    assert "Rule: quality_score < 80 (quality_score = 71)" in body and "https://r.example/dq/report.html" in body


def test_a_failing_channel_never_stops_the_others(hook, smtp):
    refused = Channel("down", "webhook", {"url": f"http://127.0.0.1:{closed_port()}/x", "timeout": 2})
    erroring = HookSink(status=500)
    try:
        channels = [refused, Channel("err", "webhook", {"url": erroring.url}),
                    Channel("unset", "webhook", {"url": ""}), Channel("ok", "webhook", {"url": hook.url}),
                    Channel("mail", "smtp", {"host": "127.0.0.1", "port": smtp.port, "from": "a@example.com",
                                             "to": "b@example.com"})]
        results = send(channels, failure_message(report="lifecycle", job="j", status="failed", exit_code=1))
    finally:
        erroring.close()
    by = {r["channel"]: r for r in results}
    assert [by[n]["ok"] for n in ("down", "err", "unset", "ok", "mail")] == [False, False, False, True, True]
    assert "HTTP 500" in by["err"]["error"] and by["unset"]["error"] == "not configured"
    assert by["down"]["error"].split(":")[0] in ("URLError", "ConnectionRefusedError")
    assert len(hook.posts) == 1 and len(smtp.messages) == 1


# -- gates -----------------------------------------------------------------------------

def test_a_gate_is_a_rule_over_known_measures_only():
    measures = ("quality_score", "orders_age_days")
    rule = parse_rule("quality_score >= 95 and orders_age_days <= 2", measures=measures)
    assert rule.metrics == ("orders_age_days", "quality_score")
    assert rule.evaluate({"quality_score": 96.0, "orders_age_days": 3}) == (
        False, {"quality_score": 96.0, "orders_age_days": 3})
    assert parse_rule("revenue > 0").metrics == ("revenue",)  # alert rules read any metric
    for text, says in (("revenue > 0", "unknown measure 'revenue' (measures: quality_score, orders_age_days)"),
                       ('metric("revenue") > 0', "unknown measure 'revenue'"),
                       ("previous(quality_score) > 90", "previous() reads an earlier run"),
                       ("orders_age_days <=", "not a valid expression")):
        with pytest.raises(RuleError) as info:
            parse_rule(text, measures=measures)
        assert says in str(info.value)


def test_a_gated_run_message_names_the_failed_expressions_with_their_values():
    gate = {"passed": False, "checks": [
        {"expression": "quarantined_share < 0.01", "values": {"quarantined_share": 0.0}, "passed": True},
        {"expression": "orders_age_days <= 2", "values": {"orders_age_days": 7}, "passed": False},
        {"expression": "quality_score >= 95", "values": {}, "passed": False,
         "reason": "cannot be computed: no data-quality run on this data"}]}
    msg = failure_message(report="segmentation", job="daily", status="gated", exit_code=6,
                          error={"ename": "GateFailed", "evalue": "orders_age_days <= 2 (orders_age_days = 7)"},
                          gate=gate)
    assert msg.subject == "crmlab: segmentation gated (job daily)"
    assert "Outcome: gated (exit code 6)" in msg.text and "Error: GateFailed" in msg.text
    assert "Gate failed: orders_age_days <= 2 (orders_age_days = 7)" in msg.text
    assert "Gate failed: quality_score >= 95: cannot be computed: no data-quality run on this data" in msg.text
    assert "quarantined_share" not in msg.text  # only what failed is in the text; the payload has every check
    assert [(g["expression"], g["passed"]) for g in msg.payload["gate"]] == [
        ("quarantined_share < 0.01", True), ("orders_age_days <= 2", False), ("quality_score >= 95", False)]
