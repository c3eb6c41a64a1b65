"""reports/index.html in headless Chromium (Debian's chromium, driven by
Playwright): no console errors, every report link loads the page it names,
and nothing is fetched from outside the reports tree."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "notebooks"))
from testkit import make_project, tiny_source  # noqa: E402

from conftest import CHROMIUM, _QuietHandler, open_page, serve  # noqa: E402

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def reports_tree(tmp_path_factory):
    """A reports tree from real runs (one success, one failure)."""
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
    return reports


@pytest.fixture(scope="module")
def site(reports_tree):
    """The reports tree served on localhost."""
    with serve(reports_tree) as base:
        yield base


def follow(page, selector: str) -> None:
    """Click the link ``selector`` and return once the page it opens has loaded.

    Playwright's click waits only until the navigation has started (the new
    document is committed, its <head> maybe not yet parsed), so the page
    is waited for by its address and its load event."""
    href = page.eval_on_selector(selector, "a => a.href")  # resolved against the page
    page.click(selector)
    page.wait_for_url(href, wait_until="load")


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
        follow(page, "nav.crm-nav a")
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


class _SlowIndex(_QuietHandler):
    """Sends index.html up to its <title>, then the rest half a second later
    (a busy server or network): the navigation commits before the title arrives."""

    def do_GET(self):
        if not self.path.endswith("/index.html"):
            return super().do_GET()
        body = (Path(self.directory) / "index.html").read_bytes()
        cut = body.index(b"<title>")
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:cut])
        self.wfile.flush()
        time.sleep(0.5)
        self.wfile.write(body[cut:])


def test_following_a_link_waits_for_the_page_it_opens(reports_tree, browser):
    # Playwright's click returns when the navigation commits; the title read
    # then is "" until the new page's <title> has arrived
    with serve(reports_tree, handler=_SlowIndex) as base:
        page, errors, page_errors, outside = open_page(browser, base, f"{base}/segmentation/latest.html")
        follow(page, "nav.crm-nav a")
        assert page.title() == "crmlab reports"
        assert page.url == f"{base}/index.html"
        page.close()
        assert (errors, page_errors, outside) == ([], [], [])
