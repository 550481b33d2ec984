"""The HTML report in a real browser: headless Chromium (the system's, driven by playwright) renders the page from
disk; the content must be there and no script error may occur. A screenshot is written for people to look at:
runs/report-screenshot.png (and runs/report-screenshot-query.png), or $DDA_SCREENSHOT_DIR."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from report_data import synthetic_run, tiny_attribute_run

from dda.report_html import write_page

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _chromium() -> str | None:
    env = os.environ.get("DDA_CHROMIUM")
    if env and Path(env).exists():
        return env
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


playwright = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is not installed (pip install -e '.[dev]')"
)
CHROMIUM = _chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium binary on PATH (Debian: apt-get install "
    "chromium; or set DDA_CHROMIUM); the report cannot be rendered",
)
SHOTS = Path(os.environ.get("DDA_SCREENSHOT_DIR", Path(__file__).resolve().parents[1] / "runs"))


def _open(page_path: Path, width: int = 1280, height: int = 1600):
    pw = playwright.sync_playwright().start()
    # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses to start
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": width, "height": height})
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    requests: list[str] = []
    page.on("request", lambda req: requests.append(req.url))
    page.goto(page_path.resolve().as_uri())
    page.wait_for_load_state("load")
    return pw, browser, page, errors, requests


def test_bench_report_renders_in_chromium(tmp_path):
    run = synthetic_run(tmp_path / "bench", n_queries=6, n_docs=8, tokens_per_doc=120)
    html_path = write_page(run, tmp_path / "report.html")
    pw, browser, page, errors, requests = _open(html_path)
    try:
        # summary: every query linked, the bench tables and the beta curve drawn
        for i in range(6):
            assert page.locator(f'a[href="#q-{i}"]').count() >= 1
        assert page.locator("text=Table 1: methods").count() == 1
        # remove-and-retrain: before, dda's top k, k random; then one margin row per query
        assert page.locator("table.fix tr").count() == 1 + 3
        assert page.locator("table.fix tr").nth(2).locator("td").first.inner_text() == "dda top 10"
        assert page.locator("table.fix-margins tr").count() == 1 + 6
        assert page.locator("svg.beta polyline").count() == 3
        assert page.locator(".grid-agree td").count() == 16
        # the first query is shown: documents with shaded tokens, ground truth marked
        assert page.locator("#query-title").inner_text().startswith("Query 1/6")
        cards = page.locator("#query .doc")
        assert cards.count() == 4 * 8  # four methods x top 8
        shaded = page.locator("#query .doc .toks .tk[style*='background']")
        assert shaded.count() > 100
        assert page.locator("#query .truth").count() >= 1
        assert page.locator("#query mark.chg-neg").first.inner_text() == "China"
        page.screenshot(path=str(SHOTS / "report-screenshot.png"), full_page=False)
        # a link from the summary opens that query
        page.locator('a[href="#q-3"]').first.click()
        page.wait_for_function("document.getElementById('query-title').textContent.startsWith('Query 4/6')")
        page.locator("#query .doc").first.scroll_into_view_if_needed()
        assert "\nnull\n" not in page.locator("#query").inner_text()  # no missing block printed as text
        page.screenshot(path=str(SHOTS / "report-screenshot-query.png"), full_page=False)
        print(f"screenshots: {SHOTS / 'report-screenshot.png'}, {SHOTS / 'report-screenshot-query.png'}")
    finally:
        browser.close()
        pw.stop()
    assert errors == []
    assert all(u.startswith("file:") for u in requests), requests  # nothing fetched from a network


def test_attribute_report_from_a_real_run_renders_in_chromium(tmp_path):
    attr = tiny_attribute_run(tmp_path / "tiny")
    html_path = write_page(attr, tmp_path / "report.html")
    pw, browser, page, errors, requests = _open(html_path)
    try:
        assert page.locator('#summary a[href="#q-0"]').inner_text() == "q-china"
        assert page.locator('#summary a[href="#q-1"]').inner_text() == "q-other"
        first = page.locator("#query .doc").first
        train_id = first.get_attribute("data-train-id")
        assert train_id and train_id.startswith("ex")
        assert first.locator(".toks .tk[style*='background']").count() > 5
        # the contrast's target token is listed for the query
        assert page.locator("#query .qtok span.target").first.inner_text().strip() in ("China", "England")
        # the instruction template is folded away until the prompt is expanded
        template = first.locator(".toks.template")
        assert template.count() == 1 and not template.is_visible()
        first.locator("button.linkish").click()
        assert template.is_visible() and first.locator(".toks.prompt.open").count() == 2
    finally:
        browser.close()
        pw.stop()
    assert errors == []
    assert all(u.startswith("file:") for u in requests), requests
