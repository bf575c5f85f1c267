"""The web app in a real browser: Debian's Chromium, headless, driven by Playwright.

One server (``synthetic-tiny``, a free port, in this process) and one page serve every scenario,
in order: load the page, generate a synthetic scene, add and fill edit rows, find masks, run
ALE and the naive edit (results, exact scores), then bad inputs shown in the page. A screenshot
of the page is saved to the test's tmp folder.

Skipped only where Gradio, Playwright or a Chromium binary is missing, and never when
``CI=true`` (then it fails instead).
"""

from __future__ import annotations

import os
import shutil
import socket

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
WAIT_MS = 60_000


def _need(condition: bool, reason: str) -> None:
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: the browser tests must run)")
    pytest.skip(reason)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def page():
    try:
        import gradio  # noqa: F401
    except ImportError:
        _need(False, 'gradio is not installed (pip install -e ".[ui]")')
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need(False, 'playwright is not installed (pip install -e ".[ui]")')
    executable = _chromium()
    _need(executable is not None, "no Chromium found (apt-get install -y chromium)")

    from aledit.ui import launch

    port = _free_port()
    blocks = launch(port=port, block=False)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-dev-shm-usage"])
            try:
                tab = browser.new_page(viewport={"width": 1400, "height": 1000})
                tab.set_default_timeout(WAIT_MS)
                tab.goto(f"http://127.0.0.1:{port}/")
                yield tab
            finally:
                browser.close()
    finally:
        blocks.close()


def _text(page, selector: str) -> str:
    return page.input_value(f"{selector} textarea")


def _wait_idle(page) -> None:
    """Until no component shows Gradio's "processing" overlay."""
    page.wait_for_function("!document.body.innerText.includes('processing |')")


def _error_shown(page, text: str) -> None:
    """Gradio shows a raised ``gr.Error`` as a toast with its message; close it afterwards."""
    toast = page.locator(".toast-body").filter(has_text=text)
    toast.first.wait_for()
    body = toast.first.inner_text()
    assert "Traceback" not in body and 'File "' not in body
    page.locator(".toast-close").first.click()
    page.wait_for_function("document.querySelectorAll('.toast-body').length === 0")


def test_page_loads(page):
    page.wait_for_selector("#generate")
    assert "aledit" in page.title()
    for selector in ("#run", "#find-masks", "#add-edit", "#edit-0", "#mask-0", "#methods"):
        assert page.locator(selector).count() == 1, selector
    # the options accordion shows each method's defaults (synthetic-tiny's guidance for ALE)
    page.get_by_text("Method options").click()
    table = page.locator("#options-ale")
    table.get_by_text("target_guidance").wait_for()
    assert "8.0" in table.inner_text() and "rgb_cam" in table.inner_text()
    page.get_by_text("Method options").click()


def test_generate_scene_fills_image_and_edits(page):
    page.click("#generate")
    page.wait_for_function("document.querySelector('#edit-0 textarea').value.includes('->')")
    _wait_idle(page)
    assert page.locator("#source img").count() == 1
    # seed 5, material edit of two objects (the demo's scene)
    assert _text(page, "#edit-0") == "ring -> ring made of dots"
    assert _text(page, "#edit-1") == "circle -> circle made of paint"
    assert not page.locator("#edit-2").is_visible()


def test_add_and_remove_edit_rows(page):
    page.click("#add-edit")
    page.locator("#edit-2 textarea").wait_for(state="visible")
    page.fill("#edit-2 textarea", "star -> star made of dots")
    page.click("#remove-edit")
    page.locator("#edit-2").wait_for(state="hidden")
    page.click("#add-edit")  # a removed row comes back empty
    page.locator("#edit-2 textarea").wait_for(state="visible")
    _wait_idle(page)
    assert _text(page, "#edit-2") == ""
    page.click("#remove-edit")
    page.locator("#edit-2").wait_for(state="hidden")
    # two edits again, typed by hand
    page.fill("#edit-0 textarea", "ring -> ring made of dots")
    page.fill("#edit-1 textarea", "circle -> circle made of paint")


def test_find_masks_previews_them(page):
    before = page.locator("#mask-0 canvas").first.screenshot()
    page.click("#find-masks")
    page.wait_for_timeout(300)
    _wait_idle(page)
    page.wait_for_timeout(500)
    after = page.locator("#mask-0 canvas").first.screenshot()
    assert before != after  # the ring's mask is now blended into the editor's picture


def test_run_ale_and_naive(page):
    page.fill("#steps input", "4")
    boxes = page.locator("#methods input[type=checkbox]")
    labels = page.locator("#methods label")
    for i in range(boxes.count()):
        name = labels.nth(i).inner_text().strip()
        if boxes.nth(i).is_checked() != (name in ("ale", "naive")):
            labels.nth(i).click()
    page.click("#run")
    page.wait_for_selector("#comparison img")
    page.locator("#status").filter(has_text="Done (seed 0)").wait_for()
    _wait_idle(page)
    assert page.locator("#results img").count() >= 2
    assert page.locator("#attention img").count() == 4  # 2 methods x 2 objects
    page.wait_for_function("document.querySelector('#scores').innerText.includes('naive')")
    text = page.locator("#scores").inner_text()
    words = text.split()  # header words, then each row's cells
    rows = [words[words.index(name): words.index(name) + 8] for name in ("ale", "naive")]
    for row in rows:  # seven scores each, numbers in [0, 1] or n/a
        values = [float(v) for v in row[1:8] if v != "n/a"]
        assert len(values) >= 6 and all(0.0 <= v <= 1.0 for v in values), row
    for name in ("comparison.png", "ale.png", "naive.png"):
        link = page.locator(f'#download a[download="{name}"]')
        link.wait_for()
        assert page.request.get(link.get_attribute("href")).body()[:8] == b"\x89PNG\r\n\x1a\n"


def test_edit_without_arrow_is_an_error_in_the_page(page):
    page.fill("#edit-1 textarea", "circle becomes paint")
    page.click("#run")
    _error_shown(page, "malformed edit 'circle becomes paint': expected 'SOURCE -> TARGET'")
    page.fill("#edit-1 textarea", "circle -> circle made of paint")


def test_empty_mask_is_an_error_in_the_page(page):
    page.click("#clear-1")
    _wait_idle(page)
    page.click("#run")
    _error_shown(page, "mask for 'circle' is empty")


def test_a_good_edit_after_errors_and_a_screenshot(page, tmp_path):
    page.click("#find-masks")
    page.wait_for_timeout(300)
    _wait_idle(page)
    page.fill("#seed input", "1")
    page.click("#run")
    page.locator("#status").filter(has_text="Done (seed 1)").wait_for()
    page.wait_for_selector("#comparison img")
    page.wait_for_function("document.querySelector('#scores').innerText.includes('naive')")
    _wait_idle(page)
    page.wait_for_timeout(500)
    path = tmp_path / "ui.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    target = os.environ.get("ALEDIT_UI_SCREENSHOT")  # e.g. docs/ui.png, to refresh the README's picture
    if target:
        shutil.copyfile(path, target)
