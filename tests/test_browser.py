"""reports/index.html in headless Chromium (Debian's chromium, driven by
Playwright): no console errors, every report link loads the page it names,
and nothing is fetched from outside the reports tree."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "notebooks"))
from testkit import make_project, tiny_source  # noqa: E402

from conftest import CHROMIUM, open_page, serve  # noqa: E402

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A reports tree from real runs (one success, one failure), served on
    localhost."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium package")
    tmp = tmp_path_factory.mktemp("site")
    root = make_project(tmp / "project", {"segmentation": "ok", "lifecycle": "broken"})
    reports = tmp / "reports"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CRMLAB_HOME", str(root))
        mp.setenv("CRMLAB_REPORTS_DIR", str(reports))
        from crmlab.runner import run_report

        src = str(tiny_source(tmp / "src"))
        assert run_report("segmentation", source=src).status == "success"
        assert run_report("lifecycle", source=src).status == "failed"
    with serve(reports) as base:
        yield base


def test_index_and_every_report_link_load_cleanly(site, browser):
    page, errors, page_errors, outside = open_page(browser, site, f"{site}/index.html")
    assert page.title() == "crmlab reports"
    hrefs = page.eval_on_selector_all(".crm-report a[href]", "els => els.map(e => e.getAttribute('href'))")
    page.close()
    assert (errors, page_errors, outside) == ([], [], [])
    assert "segmentation/latest.html" in hrefs
    assert sum(h.endswith("/report.html") for h in hrefs) == 2, hrefs
    expected = {"segmentation": "Customer segments", "lifecycle": "Customer lifecycle and value"}
    for href in hrefs:
        page, errors, page_errors, outside = open_page(browser, site, f"{site}/{href}")
        title = page.title()
        report = href.split("/")[0]
        assert title.startswith(expected[report]) and title.endswith("· crmlab"), (href, title)
        assert page.locator("header.crm-header h1").inner_text() == expected[report]
        if report == "lifecycle":
            assert "This run failed at cell 5" in page.locator(".crm-banner").inner_text()
        else:
            assert page.locator(".crm-kpi").count() == 2 and page.locator("img.crm-figure").count() == 1
        # the way back to the index works from run pages and from latest.html
        page.click("nav.crm-nav a")
        assert page.title() == "crmlab reports"
        page.close()
        assert (errors, page_errors, outside) == ([], [], []), href


def test_the_page_works_from_file_urls_too(site, browser, tmp_path):
    # opened straight from disk (an emailed or copied report): still no errors
    page = browser.new_page()
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    from urllib.request import urlopen

    local = tmp_path / "latest.html"
    local.write_bytes(urlopen(f"{site}/segmentation/latest.html").read())
    page.goto(local.as_uri())
    assert page.title().startswith("Customer segments") and errors == []
    page.close()
