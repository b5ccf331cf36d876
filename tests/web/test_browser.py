"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

Logs in, sees the HIGH study first on the worklist, opens it and sees its heatmap; screenshots
go to ``test-artifacts/browser/``. Skips, saying why, where Chromium or Playwright is missing
(``make test-tools`` installs Chromium; Playwright never downloads a browser here).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port
from tests.web.conftest import PASSWORD

ARTIFACTS = ROOT / "test-artifacts" / "browser"


def _chromium() -> str | None:
    for candidate in (os.environ.get("RADTRIAGE_CHROMIUM"), "/usr/bin/chromium",
                      shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    executable = _chromium()
    if executable is None:
        pytest.skip("Chromium is not installed (Debian package `chromium`: `make test-tools` "
                    "installs it); the browser test needs a real browser")
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        pytest.skip("the Python package playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as pw:
        try:
            b = pw.chromium.launch(executable_path=executable, headless=True,
                                   args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        except Error as exc:
            pytest.skip(f"Chromium at {executable} does not start headless here: {exc}")
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def dashboard(sqlite_site):  # type: ignore[no-untyped-def]
    from tests.fakes import HeatmapScorer
    from web.app import WebContext, create_app
    from web.server import WebServer

    server = WebServer(create_app(WebContext(config=sqlite_site.config, db=sqlite_site.db,
                                             scorer=HeatmapScorer(0.9))), "127.0.0.1", free_port())
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def test_log_in_see_the_high_study_first_and_its_heatmap(browser, dashboard, sqlite_site):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(dashboard + "/", wait_until="load")
        assert "/login" in page.url
        page.fill("#password", "not the password")
        page.click("#login")
        assert page.text_content("#login-error").strip() == "Wrong password."
        page.fill("#password", PASSWORD)
        page.click("#login")
        page.wait_for_selector("#worklist")
        page.screenshot(path=str(ARTIFACTS / "worklist.png"), full_page=True)
        rows = page.locator("#worklist tr.study")
        assert rows.count() == 4
        first = rows.nth(0)
        assert first.get_attribute("data-priority") == "HIGH"
        assert first.locator(".flag").text_content().strip() == "HIGH"
        assert first.get_attribute("data-study-id") == str(sqlite_site.studies["high_early"])
        assert rows.nth(3).get_attribute("data-priority") == "ROUTINE"
        first.locator("a.open").click()
        page.wait_for_selector("img.heatmap")
        assert page.text_content("#study-priority").strip() == "HIGH"
        assert "93.0%" in page.text_content("#probability")
        page.wait_for_function("() => [...document.querySelectorAll('img.heatmap')]"
                               ".every(i => i.complete && i.naturalWidth > 0)")
        widths = page.eval_on_selector_all("img.heatmap", "els => els.map(e => e.naturalWidth)")
        assert widths == [768, 768]
        page.screenshot(path=str(ARTIFACTS / "study.png"), full_page=True)
        page.click("#nav-queue")
        page.wait_for_selector("#dead")
        page.screenshot(path=str(ARTIFACTS / "queue.png"), full_page=True)
        assert page.locator("#dead tr[data-delivery-id]").count() == 1
        # an upload through the form: its CSRF token is its first field, checked before the file
        page.click("#nav-upload")
        page.set_input_files("#files", files=[{"name": "arm.png", "mimeType": "image/png",
                                                "buffer": _png()}])
        page.click("#score")
        page.wait_for_selector("img.heatmap")
        assert "90.0%" in page.text_content(".probability")
        page.screenshot(path=str(ARTIFACTS / "upload.png"), full_page=True)
        # logging out ends the session: the cookie the browser had no longer opens a page
        cookie = next(c for c in page.context.cookies() if c["name"] == "radtriage_session")
        page.click("form.logout button")
        page.wait_for_selector("#password")
        page.context.add_cookies([cookie])
        page.goto(dashboard + "/queue", wait_until="load")
        assert "/login" in page.url
    finally:
        page.close()


@pytest.fixture
def demo_dashboard(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A site of its own served with a demo model card that has metrics, with a study that
    could not be analysed and two quarantined files."""
    import datetime as dt

    from db import Database
    from tests.web.conftest import add_study, demo_scorer, quarantine_two, seed, site_config
    from web.app import WebContext, create_app
    from web.server import WebServer

    config = site_config(tmp_path, f"sqlite:///{tmp_path / 'radtriage.db'}")
    db = Database(config.database.url)
    db.migrate()
    try:
        site = seed(config, db, tmp_path)
        not_analysed = add_study(config, db, tmp_path, "not_analysed", 0.7, "WRIST",
                                 site.now + dt.timedelta(minutes=5), 5, modality="XA")
        quarantine_two(config.storage.path)
        server = WebServer(create_app(WebContext(config=config, db=db, scorer=demo_scorer())),
                           "127.0.0.1", free_port())
        server.start()
        try:
            yield server.url, not_analysed
        finally:
            server.stop()
    finally:
        db.dispose()


def test_demo_notice_not_analysed_quarantine_and_model_metrics(browser, demo_dashboard):  # type: ignore[no-untyped-def]
    url, not_analysed = demo_dashboard
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(url + "/", wait_until="load")
        page.fill("#password", PASSWORD)
        page.click("#login")
        page.wait_for_selector("#worklist")
        assert "DEMO MODEL - trained on synthetic radiographs" in page.text_content("#notice")
        row = page.locator(f'#worklist tr[data-study-id="{not_analysed}"]')
        badge = row.locator(".flag")
        assert badge.text_content().strip() == "NOT ANALYSED"
        colour = badge.evaluate("e => getComputedStyle(e).backgroundColor")
        r, g, b = (int(v) for v in colour[colour.index("(") + 1:colour.index(")")].split(",")[:3])
        assert r == g == b, colour  # grey, not the green of ROUTINE
        page.screenshot(path=str(ARTIFACTS / "worklist-demo.png"), full_page=True)
        page.click("#nav-quarantine")
        page.wait_for_selector("#quarantine")
        assert page.locator("#quarantine tr.quarantined").count() == 2
        assert "no pixel data <b>bold</b>" in page.text_content("#quarantine")
        page.screenshot(path=str(ARTIFACTS / "quarantine.png"), full_page=True)
        page.click("#nav-model")
        page.wait_for_selector("#metrics-held_out")
        page.wait_for_function("() => [...document.querySelectorAll('img.plot')]"
                               ".every(i => i.complete && i.naturalWidth > 0)")
        assert page.locator("img.plot").count() == 3  # held out: ROC and reliability; validation: ROC
        assert page.locator("#metrics-held_out tbody tr").count() == 3
        page.screenshot(path=str(ARTIFACTS / "model.png"), full_page=True)
    finally:
        page.close()


def _png() -> bytes:
    import cv2
    import numpy as np

    img = np.zeros((120, 90), np.uint8)
    img[20:100, 30:60] = 200
    return cv2.imencode(".png", img)[1].tobytes()
