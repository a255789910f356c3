"""In a real headless Chromium: compare → choose by key → edit → profile edit → export, with screenshots, then the
database and the profile file are checked. Skipped when Chromium or Playwright is absent."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import yaml

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.chromium


@pytest.fixture
def browser():
    # CI sets PERSONALIGN_REQUIRE_CHROMIUM=1: there a missing browser is a failure, not a skip.
    missing = (pytest.fail if os.environ.get("PERSONALIGN_REQUIRE_CHROMIUM") == "1" else pytest.skip)
    if CHROMIUM is None:
        missing("no chromium on PATH (Debian: apt-get install -y chromium chromium-driver; .ci/run does this)")
    try:
        from playwright import sync_api
    except ImportError:
        missing("playwright is not installed (pip install -e '.[dev]')")
    with sync_api.sync_playwright() as playwright:
        # Debian's Chromium, not Playwright's download (not reachable here); no sandbox as CI runs as root.
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield instance
        instance.close()


@pytest.fixture
def served(make_studio):
    import uvicorn

    from personalign.studio.app import create_app

    studio, _ = make_studio()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(studio), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield studio, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture
def shots(tmp_path) -> Path:
    """Screenshots go to $STUDIO_SCREENSHOTS when set (CI keeps them), else into the test's temp folder."""
    folder = Path(os.environ.get("STUDIO_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_compare_choose_edit_profile_export_in_chromium(browser, served, shots, studio_profile, tmp_path):
    studio, url = served
    page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)

    # Compare: two blind candidates with their checks; answer B with the keyboard and a reason.
    page.goto(f"{url}/compare")
    assert page.locator(".candidate").count() == 2 and page.locator(".checks li").count() >= 2
    first_round = page.locator("#round-prompt").get_attribute("data-round")
    page.screenshot(path=shots / "01-compare.png", full_page=True)
    page.fill("#reason", "warmer and shorter")
    page.evaluate("document.activeElement.blur()")
    with page.expect_navigation():
        page.keyboard.press("2")
    assert page.locator("#saved").inner_text() == "Saved your choice."
    page.screenshot(path=shots / "02-chosen.png", full_page=True)

    # A typed prompt (eval prompts stay out of training), then edit its candidate A: an empty edit is refused
    # beside the field, a real one is stored.
    page.fill("#prompt", "Thank Sam for introducing me to Elena.")
    with page.expect_navigation():
        page.press("#prompt", "Enter")
    second_round = page.locator("#round-prompt").get_attribute("data-round")
    assert second_round != first_round and "Thank Sam" in page.locator("#round-prompt").inner_text()
    page.click("#edit-A")
    page.fill("#edited", "   ")
    page.click("#save-edit")
    assert "is empty" in page.locator("#error-edited").inner_text()
    page.screenshot(path=shots / "03-edit-error.png", full_page=True)
    edited = "Hi Sam,\n\nThank you for the kind introduction; I would love to meet.\n\nWarmly,\nMaya"
    page.fill("#edited", edited)
    with page.expect_navigation():
        page.click("#save-edit")
    assert "Saved your edit" in page.locator("#saved").inner_text()
    page.screenshot(path=shots / "04-edit-saved.png", full_page=True)
    with page.expect_navigation():
        page.keyboard.press("0")  # then a tie on the same round

    # Profile: a bad value is reported next to its field and nothing is written; a good edit is saved.
    page.goto(f"{url}/profile")
    page.fill("#max_words", "lots")
    page.click("#save-profile")
    error = page.locator('[data-field="constraints.max_words"]')
    assert "field 'constraints.max_words'" in error.inner_text()
    page.screenshot(path=shots / "05-profile-error.png", full_page=True)
    assert yaml.safe_load(studio_profile.read_text())["constraints"]["max_words"] == 150
    page.fill("#max_words", "120")
    page.fill("#rules", page.input_value("#rules") + "\nMention one concrete next step.")
    with page.expect_navigation():
        page.click("#save-profile")
    assert page.locator("#saved").is_visible()
    page.screenshot(path=shots / "06-profile-saved.png", full_page=True)

    # Progress and export.
    page.goto(f"{url}/progress")
    assert "2 choices (1 ties) and 1 edits" in page.locator("#counts").inner_text()
    assert "1 answers on evaluation prompts held out" in page.locator("#trainable").inner_text()
    page.screenshot(path=shots / "07-progress.png", full_page=True)
    with page.expect_download() as download:
        page.click("#export-demos")
    target = tmp_path / "demos.jsonl"
    download.value.save_as(target)
    (demo,) = [json.loads(line) for line in target.read_text().splitlines()]
    assert demo["output"] == edited
    page.close()

    # The database and the profile file afterwards.
    conn = sqlite3.connect(studio.db.path)
    choices = conn.execute("SELECT round_id, shown_choice, reason FROM choices ORDER BY id").fetchall()
    assert choices == [(first_round, "B", "warmer and shorter"), (second_round, "tie", "")]
    edits = conn.execute("SELECT round_id, shown_position, edited FROM edits").fetchall()
    assert edits == [(second_round, "A", edited)]
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    saved = yaml.safe_load(studio_profile.read_text())
    assert saved["constraints"]["max_words"] == 120 and saved["rules"][-1] == "Mention one concrete next step."
    assert {p.name for p in shots.glob("*.png")} >= {f"0{i}-{n}.png" for i, n in enumerate(
        ["compare", "chosen", "edit-error", "edit-saved", "profile-error", "profile-saved", "progress"], start=1)}
