"""The app end to end in a real browser: Debian's Chromium, headless, driven by Playwright.

Skipped (with the reason) only where no browser can be installed. Screenshots of both tabs go to
``$SEGREVIEW_SCREENSHOTS`` when set (``docs/`` to refresh the committed ones), else to a temporary folder.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from segcontract.testing import make_contract_dataset

gradio = pytest.importorskip("gradio", reason="the app extra (gradio) is not installed")
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev group)")

from segreview.app import build_app, launch  # noqa: E402
from segreview.callbacks import AppState  # noqa: E402
from segreview.paths import Roots  # noqa: E402

CHROMIUM = (
    os.environ.get("SEGREVIEW_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium: install Debian's `chromium` (see the README's development section)"
)
TIMEOUT_MS = 120_000


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory, review_dataset):
    root = tmp_path_factory.mktemp("review")
    review_dataset(3, size=(192, 192)).save_to_disk(str(root / "tiny"))
    Image.fromarray(np.asarray(make_contract_dataset(1, size=(96, 96))[0]["image"])).save(root / "photo.png")
    state = AppState(Roots.of([root]))
    demo = build_app(state, str(root / "tiny"), model="tiny")
    url = launch(demo, "127.0.0.1", _free_port(), block=False)
    yield url, root
    demo.close()


@pytest.fixture(scope="module")
def page(served):
    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1400, "height": 1100})
        tab.set_default_timeout(TIMEOUT_MS)
        tab.goto(served[0])
        yield tab
        browser.close()


def _screenshot_folder(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("SEGREVIEW_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _wait_text(page, selector: str, text: str) -> None:
    playwright_api.expect(page.locator(selector)).to_contain_text(text, timeout=TIMEOUT_MS)


def test_review_reject_second_sample_and_save(page, served, tmp_path):
    root = served[1]
    page.click("#open")
    _wait_text(page, "#review-status", "Sample 1 of 3")
    page.click("#next")
    _wait_text(page, "#review-status", "Sample 2 of 3")
    page.click("#reject")
    _wait_text(page, "#review-status", "1 rejected · REJECTED")
    page.locator("#output textarea, #output input").first.fill(str(root / "kept"))
    page.click("#save")
    _wait_text(page, "#save-status", "Saved 2 samples")
    page.screenshot(path=str(_screenshot_folder(tmp_path) / "segreview_review.png"), full_page=True)
    kept = datasets.load_from_disk(str(root / "kept"))
    assert len(kept) == 2
    assert kept["image_id"] == [0, 2]
    assert "| 1 | 1 | 000001.png |" in (root / "kept" / "README.md").read_text()
    assert len(datasets.load_from_disk(str(root / "tiny"))) == 3


def test_tryout_tiny_model_click_gives_a_mask(page, served, tmp_path):
    _, root = served
    page.get_by_role("tab", name="Model try-out").click()
    page.click("#load-model")
    _wait_text(page, "#model-status", "Loaded SEEM tiny")
    page.locator("#tryout-image input[type=file]").set_input_files(str(root / "photo.png"))
    _wait_text(page, "#tryout-status", "No points yet")  # the upload is processed: clicks now land on it
    picture = page.locator("#tryout-image img").first
    picture.wait_for(state="visible")
    # The centre: Gradio 6 maps clicks on an image shown larger than its pixels as if it were not scaled up
    # (a small test image is), which only the centre survives.
    picture.click()
    _wait_text(page, "#tryout-status", "visual prompt: 1 of 1 masks non-empty")
    page.locator("#tryout-output img").first.wait_for(state="visible")
    page.screenshot(path=str(_screenshot_folder(tmp_path) / "segreview_tryout.png"), full_page=True)
