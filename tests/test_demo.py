"""The whole demo, as `make demo` runs it: the five real notebooks on a
synthetic world with `crmlab run-all --jobs 2`, the index built, then read
the way a stakeholder reads it -- in headless Chromium, with the network
closed -- and checked for leaked personal data."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pandas as pd
import pytest

from conftest import assert_no_personal_values, open_page, serve
from crmlab import config
from crmlab.report import TITLES

pytestmark = [pytest.mark.slow, pytest.mark.browser]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """`crmlab run-all` on the small world into a fresh reports tree."""
    reports = tmp_path_factory.mktemp("demo") / "reports"
    env = dict(os.environ, CRMLAB_REPORTS_DIR=str(reports))
    proc = subprocess.run([sys.executable, "-m", "crmlab.cli", "run-all", "--source", "synthetic:small",
                           "--jobs", "2"], env=env, capture_output=True, text=True, timeout=900)
    return reports, proc


def test_run_all_publishes_five_successful_reports(demo):
    reports, proc = demo
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the progress display names every report with its outcome
    for report in config.REPORTS:
        assert re.search(rf"{report}\s+success", proc.stderr), (report, proc.stderr[-2000:])
    for report in config.REPORTS:
        runs = [json.loads(p.read_text()) for p in (reports / report).glob("*/run.json")]
        assert [r["status"] for r in runs] == ["success"], report
        assert (reports / report / "latest.html").is_file()
        metrics = json.loads(next((reports / report).glob("*/metrics.json")).read_text())
        assert metrics, report
    assert (reports / "index.html").is_file()


def test_index_and_pages_in_chromium(demo, browser):
    reports, _ = demo
    with serve(reports) as base:
        page, errors, page_errors, outside = open_page(browser, base, f"{base}/index.html")
        hrefs = page.eval_on_selector_all(".crm-report a[href]", "els => els.map(e => e.getAttribute('href'))")
        page.close()
        assert (errors, page_errors, outside) == ([], [], [])
        latest = [h for h in hrefs if h.endswith("latest.html")]
        assert sorted(h.split("/")[0] for h in latest) == sorted(config.REPORTS)
        for href in hrefs:
            page, errors, page_errors, outside = open_page(browser, base, f"{base}/{href}")
            report = href.split("/")[0]
            assert page.title().startswith(TITLES[report]), href
            text = page.locator("body").inner_text()
            # the anatomy: header, what changed, KPI cards, sections, footer
            assert "What changed" in text, href
            assert page.locator(".crm-kpi").count() >= 3, href
            assert page.locator("img.crm-figure").count() >= 3, href
            assert "crmlab run" in text, href          # the footer says how to rerun
            assert "Traceback" not in text and "Error" not in text.split("What changed")[0], href
            page.close()
            assert (errors, page_errors, outside) == ([], [], []), href


def test_no_raw_personal_data_on_pages_or_exports(demo):
    reports, _ = demo
    from crmlab.synthetic import ensure_world

    world = ensure_world("small")
    people = pd.read_parquet(world / "customers.parquet", columns=["name"])
    # Western full names ("John Smith"); two-character Chinese names could
    # collide with ordinary words, so they are checked masked by the unit tests
    names = {v for v in people["name"].dropna().astype(str) if " " in v.strip()}
    pages = list(reports.glob("*/*/report.html")) + list(reports.glob("*/*/exports/*.csv"))
    assert len(pages) >= 5
    for path in pages:
        text = path.read_text(encoding="utf-8")
        assert_no_personal_values(text, world, ("email", "phone", "national_id"))
        assert not [s for s in names if s in text], path.relative_to(reports)
