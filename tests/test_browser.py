"""reports/index.html in headless Chromium (Debian's chromium, driven by
Playwright): no console errors, every report link loads the page it names,
and nothing is fetched from outside the reports tree."""

from __future__ import annotations

import functools
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "notebooks"))
from testkit import make_project, tiny_source  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.browser


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


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
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(reports)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM,
                              args=["--headless", "--no-sandbox", "--disable-gpu",
                                    "--disable-background-networking"])
        yield b
        b.close()


def _open(browser, base: str, url: str):
    """Load ``url`` with the network closed except for the local server;
    returns (page, console errors, page errors, blocked or failed requests)."""
    page = browser.new_page()
    errors, page_errors, outside = [], [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    page.on("requestfailed", lambda r: outside.append(r.url))

    def gate(route):
        if route.request.url.startswith(base) or route.request.url.startswith("data:"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", gate)
    response = page.goto(url, wait_until="load")
    assert response is not None and response.ok, url
    return page, errors, page_errors, outside


def test_index_and_every_report_link_load_cleanly(site, browser):
    page, errors, page_errors, outside = _open(browser, site, f"{site}/index.html")
    assert page.title() == "crmlab reports"
    hrefs = page.eval_on_selector_all(".crm-report a[href]", "els => els.map(e => e.getAttribute('href'))")
    page.close()
    assert (errors, page_errors, outside) == ([], [], [])
    assert "segmentation/latest.html" in hrefs
    assert sum(h.endswith("/report.html") for h in hrefs) == 2, hrefs
    expected = {"segmentation": "Customer segments", "lifecycle": "Customer lifecycle and value"}
    for href in hrefs:
        page, errors, page_errors, outside = _open(browser, site, f"{site}/{href}")
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
