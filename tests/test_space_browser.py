"""A real browser (headless Chromium through Selenium) uses the Space: upload, ask, see overlays, counts and answers.

Needs the Debian packages `chromium` and `chromium-driver` and the pip package `selenium`; skipped, saying so, when
the browser is absent. The screenshot goes to `$SPACE_SCREENSHOT_DIR` when set (CI artifacts), else to pytest's
temporary directory.
"""

import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402
from space_helpers import launch_on_a_free_port  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT = 90  # seconds for any one thing to appear on the page

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium chromium-driver)"),
    pytest.mark.skipif(CHROMEDRIVER is None, reason="chromedriver is not installed (apt-get install chromium-driver)"),
]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from spaces_app import app

    # A Gradio cache of its own: servers of other test runs on this machine clean theirs up on exit.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio-cache")))
        demo = app.build_demo(app.load_tiny_backend(), examples_dir=tmp_path_factory.mktemp("examples"))
        url = launch_on_a_free_port(demo, **app.launch_options())
        try:
            yield url
        finally:
            demo.close()


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1800",
    ):
        options.add_argument(flag)
    # The driver is given explicitly, so Selenium Manager never tries to download one.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot_dir(tmp_path: Path) -> Path:
    directory = Path(os.environ.get("SPACE_SCREENSHOT_DIR") or tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def wait_for(condition, what: str, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"Timed out after {timeout:.0f} s waiting for {what}")


def test_upload_ask_and_see_overlays_counts_and_answers(served, browser, tmp_path):
    from selenium.webdriver.common.by import By

    rng = np.random.default_rng(0)
    pixels = np.full((120, 200, 3), 255, dtype=np.uint8)
    pixels[:, :100] = rng.integers(0, 256, (120, 100, 3), dtype=np.uint8)
    upload = tmp_path / "half_flat.png"
    Image.fromarray(pixels).save(upload)

    browser.get(served)
    notice = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#model-notice"), "the model notice")
    assert "random-weight" in notice[0].text

    file_input = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#input-image input[type=file]"), "upload")
    file_input[0].send_keys(str(upload))
    question = browser.find_element(By.CSS_SELECTOR, "#question textarea")
    question.send_keys("what is in this picture ?")

    # The preview fills the overlays and counts as soon as the image is in.
    def counts_text():
        text = browser.find_element(By.CSS_SELECTOR, "#counts").text
        return text if "visual tokens" in text and "Kept" in text else None

    wait_for(counts_text, "the token counts after upload")
    browser.find_element(By.CSS_SELECTOR, "#ask").click()

    def answers():
        pruned = browser.find_element(By.CSS_SELECTOR, "#pruned-answer textarea").get_attribute("value")
        full = browser.find_element(By.CSS_SELECTOR, "#full-answer textarea").get_attribute("value")
        timing = browser.find_element(By.CSS_SELECTOR, "#pruned-time").text
        return (pruned, full, timing) if pruned and full and "prompt of" in timing else None

    pruned, full, timing = wait_for(answers, "both answers and their timings")
    assert "With pruning" in timing
    assert "Without pruning" in browser.find_element(By.CSS_SELECTOR, "#full-time").text

    for element_id in ("base-overlay", "tile-overlay"):
        image = wait_for(
            lambda: browser.find_elements(By.CSS_SELECTOR, f"#{element_id} img"), f"the {element_id} image"
        )
        wait_for(
            lambda: browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image[0]),
            f"the {element_id} image to load",
        )
        assert image[0].size["width"] > 50 and image[0].size["height"] > 20

    text = counts_text()
    assert "base view" in text and "high-res tiles" in text and "% saved" in text
    shot = screenshot_dir(tmp_path) / "space_after_answer.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    # The base overlay as the page shows it: the flat white right half is dropped (darkened, where white would be
    # 255), the noisy left half is kept (still noise).
    overlay = browser.find_element(By.CSS_SELECTOR, "#base-overlay img")
    overlay_png = tmp_path / "overlay.png"
    overlay_png.write_bytes(overlay.screenshot_as_png)
    gray = np.asarray(Image.open(overlay_png).convert("L"), dtype=float)
    height, width = gray.shape
    right = gray[height // 8 : -height // 8, int(width * 0.6) : int(width * 0.9)]
    left = gray[height // 8 : -height // 8, int(width * 0.1) : int(width * 0.4)]
    assert np.median(right) < 130, "the flat half should be shown as dropped"
    assert left.std() > 20 > right.std(), "the noisy half should be shown as kept, the flat half flat"


def test_an_empty_question_shows_a_message_not_a_trace(served, browser, tmp_path):
    from selenium.webdriver.common.by import By

    upload = tmp_path / "flat.png"
    Image.new("RGB", (100, 100), (70, 130, 180)).save(upload)
    browser.get(served)
    file_input = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#input-image input[type=file]"), "upload")
    file_input[0].send_keys(str(upload))
    wait_for(lambda: "Kept" in browser.find_element(By.CSS_SELECTOR, "#counts").text, "the counts")
    browser.find_element(By.CSS_SELECTOR, "#ask").click()
    body = wait_for(
        lambda: (t := browser.find_element(By.TAG_NAME, "body").text) and "Type a question" in t and t,
        "the empty-question message",
    )
    assert "Traceback" not in body
    browser.save_screenshot(str(screenshot_dir(tmp_path) / "space_empty_question.png"))


def test_picking_an_example_then_moving_the_threshold_updates_the_tokens_shown(served, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(served)
    first_example = wait_for(
        lambda: browser.find_elements(By.CSS_SELECTOR, "[data-testid='dataset-cell-0-0']"), "the example table"
    )
    first_example[0].click()
    wait_for(
        lambda: (
            browser.find_element(By.CSS_SELECTOR, "#question textarea").get_attribute("value")
            == "What is in the field?"
        ),
        "the example question in the textbox",
    )
    text = wait_for(
        lambda: (t := browser.find_element(By.CSS_SELECTOR, "#counts").text) and "Kept" in t and t,
        "the counts of the example image",
    )
    assert "high-res tiles" in text
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#tile-overlay img"), "the tile overlay of the example")
    browser.save_screenshot(str(screenshot_dir(tmp_path) / "space_example.png"))

    # Moving the threshold down re-scores at once: fewer tokens are kept.
    kept_before = int(text.split("Kept ")[1].split(" /")[0])
    box = browser.find_element(By.CSS_SELECTOR, "#threshold input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("0.3", Keys.ENTER)

    def kept_now():
        current = browser.find_element(By.CSS_SELECTOR, "#counts").text
        kept = int(current.split("Kept ")[1].split(" /")[0]) if "Kept " in current else None
        return kept if kept is not None and kept != kept_before else None

    assert wait_for(kept_now, "the counts after moving the threshold") < kept_before
