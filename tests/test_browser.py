"""A person's path through the app: headless Chromium uploads a slice and sees a mask.

Needs Debian's ``chromium`` and ``chromium-driver`` and the pip package
``selenium``; skipped, saying which is missing, without them. Selenium is
given both binaries, so it never tries to download a driver.
"""

from __future__ import annotations

import shutil
import urllib.request
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path(shutil.which("chromedriver") or "/usr/bin/chromedriver")

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium to run the browser test",
                allow_module_level=True)
if not CHROMEDRIVER.exists():
    pytest.skip(f"{CHROMEDRIVER} is missing: install Debian's chromium-driver to run the browser test",
                allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="pip package selenium is missing")

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from helpers import app as web_app  # noqa: E402

HEIGHT, WIDTH = 24, 40


@pytest.fixture(scope="module")
def app_url(tiny_model_path, free_port):
    demo = web_app.build_app(tiny_model_path)
    _, url, _ = web_app.launch_app(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield url
    finally:
        demo.close()


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", "--window-size=1280,1400",
                     f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_uploading_a_slice_shows_its_mask(app_url, browser, tmp_path):
    slice_path = tmp_path / "slice.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(slice_path)

    browser.get(app_url)
    wait = WebDriverWait(browser, 60)
    upload = wait.until(expected_conditions.presence_of_element_located(
        (By.CSS_SELECTOR, "#input-image input[type=file]")))
    assert "not diagnosis" in browser.find_element(By.ID, "disclaimer").text
    upload.send_keys(str(slice_path))
    mask_image = wait.until(expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, "#mask img")))
    wait.until(lambda driver: driver.find_element(By.CSS_SELECTOR, "#summary textarea").get_attribute("value"))
    browser.save_screenshot(str(tmp_path / "app_after_upload.png"))

    with urllib.request.urlopen(mask_image.get_attribute("src"), timeout=30) as response:
        mask = np.asarray(Image.open(BytesIO(response.read())))
    assert mask.shape[:2] == (HEIGHT, WIDTH)
    assert set(np.unique(mask)) <= {0, 255}
    area = browser.find_element(By.CSS_SELECTOR, "#area input").get_attribute("value")
    assert int(float(area)) == int((mask.reshape(HEIGHT, WIDTH, -1)[..., 0] > 0).sum())
    assert (tmp_path / "app_after_upload.png").stat().st_size > 0
