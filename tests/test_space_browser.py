"""A real browser (headless Chromium through Selenium) uses the Space: upload, ask, see overlays, counts and answers;
on a desktop-wide window and on a 420 px wide phone screen.

Needs the Debian packages `chromium` and `chromium-driver` and the pip package `selenium`; skipped, saying so, when
the browser is absent. Screenshots of every scene go to `$SPACE_SCREENSHOT_DIR` when set (CI artifacts), else to
`results-local/space-screenshots/` in the checkout (ignored by git), where they are kept after the run.
"""

import os
import re
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
    from spaces_app import app, model

    # A Gradio cache of its own: servers of other test runs on this machine clean theirs up on exit.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio-cache")))
        demo = app.build_demo(model.load_tiny_backend(), examples_dir=tmp_path_factory.mktemp("examples"))
        url = launch_on_a_free_port(demo, **app.launch_options(demo))
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


def screenshot_dir(tmp_path: Path | None = None) -> Path:
    """Where the screenshots go: kept after the run (artefacts), not in pytest's temporary directory."""
    directory = Path(os.environ.get("SPACE_SCREENSHOT_DIR") or REPO_ROOT / "results-local" / "space-screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def save_page(browser, name: str) -> Path:
    """A screenshot of the whole page (not only the window), at the window's width."""
    width = browser.execute_script("return window.innerWidth")
    height = browser.execute_script("return window.innerHeight")
    full = browser.execute_script("return document.documentElement.scrollHeight")
    emulate(browser, width, full)
    path = screenshot_dir() / name
    try:
        assert browser.save_screenshot(str(path))
    finally:
        emulate(browser, width, height)
    print(f"screenshot: {path}")
    return path


def emulate(browser, width: int, height: int) -> None:
    """Make the page see a screen of `width` x `height` CSS pixels (below Chromium's 500 px least window width too)."""
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
    )


def wait_for(condition, what: str, timeout: float = WAIT):
    """`condition()` once it is truthy. An element that the page re-rendered while it was read counts as not yet."""
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except StaleElementReferenceException:
            value = None
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


# ------------------------------------------------------------------------------------------------ issue 8, the Space
def half_noise(path: Path, width: int, height: int, block: int = 10) -> Path:
    """Blocky noise on the left half, flat white on the right (blocks keep a 10000 px wide file small)."""
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (max(1, height // block), max(1, width // (2 * block)), 3), dtype=np.uint8)
    pixels = np.full((height, width, 3), 255, dtype=np.uint8)
    pixels[:, : width // 2] = np.asarray(Image.fromarray(small).resize((width // 2, height), Image.NEAREST))
    Image.fromarray(pixels).save(path)
    return path


def open_space(browser, url: str):
    from selenium.webdriver.common.by import By

    browser.get(url)
    # The page renders its components progressively: under load the upload input can exist before the question box.
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#question textarea"), "the question box")
    return wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#input-image input[type=file]"), "upload")[0]


def counts_of(browser) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.CSS_SELECTOR, "#counts").text


def upload_and_wait_for_counts(browser, url: str, path: Path, question: str = "") -> str:
    from selenium.webdriver.common.by import By

    open_space(browser, url).send_keys(str(path))
    if question:
        browser.find_element(By.CSS_SELECTOR, "#question textarea").send_keys(question)
    return wait_for(lambda: (t := counts_of(browser)) and "Kept" in t and t, "the counts after upload")


def set_slider(browser, elem_id: str, value: float) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = browser.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.ENTER)


def shown(browser, elem_id: str) -> bool:
    from selenium.webdriver.common.by import By

    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(5):
        try:
            elements = browser.find_elements(By.CSS_SELECTOR, f"#{elem_id}")
            return bool(elements) and elements[0].is_displayed()
        except StaleElementReferenceException:  # re-rendered between finding and reading it: look again
            time.sleep(0.1)
    raise AssertionError(f"#{elem_id} kept being re-rendered")


def rect(browser, selector: str) -> dict:
    return browser.execute_script(
        "const r = document.querySelector(arguments[0]).getBoundingClientRect();"
        "return {top: r.top + window.scrollY, bottom: r.bottom + window.scrollY, left: r.left, right: r.right,"
        " width: r.width, height: r.height};",
        selector,
    )


def shown_size(browser, image) -> tuple[float, float]:
    """The size at which an <img> shows its picture: fitted into its box, aspect kept (`object-fit: contain`)."""
    return browser.execute_script(
        "const i = arguments[0], r = i.getBoundingClientRect();"
        "const s = Math.min(r.width / i.naturalWidth, r.height / i.naturalHeight);"
        "return [i.naturalWidth * s, i.naturalHeight * s];",
        image,
    )


def error_badges(browser) -> list:
    """Gradio's red "Error" marks (on outputs of a failed event, and the error toast's title)."""
    from selenium.webdriver.common.by import By

    return [e for e in browser.find_elements(By.XPATH, "//*[normalize-space(text())='Error']") if e.is_displayed()]


def ask_and_wait_for_answers(browser):
    from selenium.webdriver.common.by import By

    browser.find_element(By.CSS_SELECTOR, "#ask").click()

    def answers():
        pruned = browser.find_element(By.CSS_SELECTOR, "#pruned-answer textarea").get_attribute("value")
        timing = browser.find_element(By.CSS_SELECTOR, "#pruned-time").text
        return (pruned, timing) if pruned and "prompt of" in timing else None

    return wait_for(answers, "the answers")


def test_asking_without_an_image_warns_and_marks_no_output_as_failed(served, browser, tmp_path):
    from selenium.webdriver.common.by import By

    open_space(browser, served)
    browser.find_element(By.CSS_SELECTOR, "#question textarea").send_keys("what is in it ?")
    browser.find_element(By.CSS_SELECTOR, "#ask").click()
    body = wait_for(
        lambda: (t := browser.find_element(By.TAG_NAME, "body").text) and "pick an example) first." in t and t,
        "the missing-image message",
    )
    time.sleep(1)  # any badge of a failed event would be painted by now
    assert "Warning" in body  # a message, not a failure
    assert not error_badges(browser), "a user error painted Error badges"
    # The outputs are left as they were: no overlays, the upload prompt, no answers.
    assert not browser.find_elements(By.CSS_SELECTOR, "#base-overlay img")
    assert counts_of(browser).startswith("Upload an image")
    assert browser.find_element(By.CSS_SELECTOR, "#pruned-answer textarea").get_attribute("value") == ""
    save_page(browser, "space_ask_without_image.png")


def test_answers_from_an_earlier_setting_or_image_are_marked_out_of_date(served, browser, tmp_path):
    from selenium.webdriver.common.by import By

    first = half_noise(tmp_path / "first.png", 200, 120)
    upload_and_wait_for_counts(browser, served, first, "what is in this picture ?")
    answer_text, _ = ask_and_wait_for_answers(browser)
    time.sleep(1)
    assert not shown(browser, "answer-notice")

    def marked(what: str):
        def check():
            if not shown(browser, "answer-notice"):
                return None
            notice = browser.find_element(By.CSS_SELECTOR, "#answer-notice").text
            return notice if "Out of date" in notice and what in notice else None

        return wait_for(check, f"the out-of-date notice naming {what}")

    def stale(elem_id: str) -> bool:
        return "stale" in browser.find_element(By.CSS_SELECTOR, f"#{elem_id}").get_attribute("class").split()

    set_slider(browser, "threshold", 0.5)
    notice = marked("the threshold")
    assert "Press Ask" in notice
    for elem_id in ("pruned-answer", "full-answer", "pruned-time", "full-time"):
        assert stale(elem_id), f"{elem_id} is not greyed out"
    assert "out of date" in browser.find_element(By.CSS_SELECTOR, "#pruned-answer").text
    # The old answer stays readable, marked; the counts above follow the new threshold.
    assert browser.find_element(By.CSS_SELECTOR, "#pruned-answer textarea").get_attribute("value") == answer_text
    save_page(browser, "space_answers_out_of_date.png")

    set_slider(browser, "threshold", 0.9)  # back to what they were made with: current again
    wait_for(lambda: not shown(browser, "answer-notice") and not stale("pruned-answer"), "the answers unmarked")

    second = half_noise(tmp_path / "second.png", 120, 200)
    browser.find_element(By.CSS_SELECTOR, "#input-image input[type=file]").send_keys(str(second))
    marked("the image")
    assert stale("full-time")

    # A new answer for the current controls is current.
    ask_and_wait_for_answers(browser)
    wait_for(lambda: not shown(browser, "answer-notice") and not stale("pruned-answer"), "the new answers unmarked")


def test_a_33_to_1_image_is_shown_legibly_and_its_empty_tile_grid_explained(served, browser, tmp_path):
    from selenium.webdriver.common.by import By

    wide = half_noise(tmp_path / "wide.png", 10000, 300)
    text = upload_and_wait_for_counts(browser, served, wide)
    assert "stretched 8.3× vertically: this image is 33.3:1" in text
    assert "No tile tokens." in text and "base view alone" in text
    assert "0/0" not in text and re.search(r"high-res tiles \(1×3 crops, 0×12 unpadded\) 0 0 –", text), text
    for elem_id in ("base-overlay", "tile-overlay"):
        image = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, f"#{elem_id} img"), f"the {elem_id} image")[0]
        wait_for(lambda: browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image), "")
        width, height = shown_size(browser, image)
        assert height >= 60 and abs(width / height - 4) < 0.1, (width, height)
    assert rect(browser, "#input-image")["height"] >= 150, "the input box collapsed"
    # Each base token is a visible band: the noisy half kept, the flat half dropped.
    overlay = browser.find_element(By.CSS_SELECTOR, "#base-overlay img")
    overlay_png = tmp_path / "wide_overlay.png"
    overlay_png.write_bytes(overlay.screenshot_as_png)
    gray = np.asarray(Image.open(overlay_png).convert("L"), dtype=float)
    picture_height = shown_size(browser, overlay)[1]  # the box letterboxes the picture: keep its middle band
    middle = gray.shape[0] // 2
    gray = gray[middle - int(picture_height * 0.4) : middle + int(picture_height * 0.4)]
    width = gray.shape[1]
    assert gray[:, : width * 2 // 5].std() > 20 and np.median(gray[:, width * 3 // 5 :]) < 130
    save_page(browser, "space_33_to_1_desktop.png")
    emulate(browser, 420, 900)
    time.sleep(1)
    assert shown_size(browser, browser.find_element(By.CSS_SELECTOR, "#base-overlay img"))[1] >= 30
    save_page(browser, "space_33_to_1_420px.png")


def test_on_a_420_px_screen_the_overlays_sit_next_to_the_input(served, browser, tmp_path):
    from selenium.webdriver.common.by import By

    emulate(browser, 420, 900)
    upload_and_wait_for_counts(browser, served, half_noise(tmp_path / "phone.png", 200, 120))
    for elem_id in ("base-overlay", "tile-overlay"):
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, f"#{elem_id} img"), f"the {elem_id} image")
    assert browser.execute_script("return window.innerWidth") == 420
    picture, base, tile = (rect(browser, f"#{name}") for name in ("input-image", "base-overlay", "tile-overlay"))
    examples = rect(browser, "[data-testid='dataset-cell-0-0']")
    controls = rect(browser, "#question")
    # Right under the input, side by side, on screen, before the controls and the examples.
    assert 0 <= base["top"] - picture["bottom"] < 40, (picture, base)
    assert abs(base["top"] - tile["top"]) < 2 and base["right"] <= tile["left"] + 1
    assert base["left"] >= 0 and tile["right"] <= 420
    assert tile["bottom"] < controls["top"] < examples["top"]
    assert base["bottom"] - picture["top"] < 900, "the input and the overlays do not fit on one screen"
    for name in ("base-overlay", "tile-overlay"):
        assert browser.find_element(By.CSS_SELECTOR, f"#{name} img").size["width"] > 100
    save_page(browser, "space_420px.png")


def test_budget_mode_shows_only_its_slider_and_says_what_the_share_counts(served, browser, tmp_path):
    from selenium.webdriver.common.by import By

    upload_and_wait_for_counts(browser, served, half_noise(tmp_path / "budget.png", 200, 120))
    assert shown(browser, "threshold") and not shown(browser, "keep-ratio")
    budget = [e for e in browser.find_elements(By.CSS_SELECTOR, "#mode label") if e.text.strip() == "budget"]
    budget[0].click()
    wait_for(lambda: shown(browser, "keep-ratio") and not shown(browser, "threshold"), "only the budget slider")
    label = browser.find_element(By.CSS_SELECTOR, "#keep-ratio").text
    assert "share of the scored tokens kept" in label and "row newlines are not counted" in label
    value = float(browser.find_element(By.CSS_SELECTOR, "#keep-ratio input[type=number]").get_attribute("value"))

    def scored_row():
        match = re.search(r"scored \(base \+ tiles\) (\d+) (\d+) ([\d.]+) %", counts_of(browser))
        return match and int(match[1]) == round(value * int(match[2])) and match

    match = wait_for(scored_row, "the table's scored row at the budget's share")
    assert float(match[3]) == pytest.approx(100 * value, abs=100 / int(match[2]))
    text = counts_of(browser)
    assert "row newlines (not scored)" in text and "in the prompt (scored + newlines)" in text
    flops = re.search(r"Predicted LLM prefill: [\d.]+ (\w*FLOPs) → [\d.]+ (\w*FLOPs) \([\d.]+ % saved\)", text)
    assert flops and flops[1] == flops[2], text  # one unit for the line
    save_page(browser, "space_budget_mode.png")
    threshold = [e for e in browser.find_elements(By.CSS_SELECTOR, "#mode label") if e.text.strip() == "threshold"]
    threshold[0].click()
    wait_for(lambda: shown(browser, "threshold") and not shown(browser, "keep-ratio"), "only the threshold slider")


# ------------------------------------------------------------------------------------------------ issue 9, strategies
def choose(browser, elem_id: str, name: str) -> list[str]:
    """Open the dropdown `#elem_id` and click the option of the strategy `name` (each labelled "name: what it does");
    returns the names of every option it offered."""
    from selenium.webdriver.common.by import By

    def named(option) -> str:
        return (option.get_attribute("aria-label") or "").split(":")[0]

    browser.find_element(By.CSS_SELECTOR, f"#{elem_id} input").click()
    options = wait_for(
        lambda: (
            (o := browser.find_elements(By.CSS_SELECTOR, "ul[role=listbox] li[role=option]"))
            and any(named(option) == name for option in o)
            and o
        ),
        f"the option {name} of #{elem_id}",
    )
    offered = [named(option) for option in options]
    next(option for option in options if named(option) == name).click()
    return offered


def mode_choices(browser) -> list[str]:
    from selenium.webdriver.common.by import By

    return [label.text.strip() for label in browser.find_elements(By.CSS_SELECTOR, "#mode label")]


def test_a_peer_strategy_offers_only_a_budget_and_shows_its_own_selection(served, browser, tmp_path):
    upload_and_wait_for_counts(browser, served, half_noise(tmp_path / "peer.png", 200, 120))
    assert mode_choices(browser) == ["threshold", "budget"]
    choose(browser, "strategy", "divprune")
    wait_for(lambda: mode_choices(browser) == ["budget"], "the budget rule alone")
    wait_for(lambda: shown(browser, "keep-ratio") and not shown(browser, "threshold"), "only the budget slider")
    text = wait_for(
        lambda: (t := counts_of(browser)) and "Strategy: divprune" in t and "Kept" in t and t, "divprune's counts"
    )
    assert "⚠️" not in text
    value = float(browser.find_element("css selector", "#keep-ratio input[type=number]").get_attribute("value"))
    match = re.search(r"scored \(base \+ tiles\) (\d+) (\d+)", text)
    assert match and int(match[1]) == round(value * int(match[2]))
    # codebook_diverse reads the threshold as well as the budget: both sliders.
    choose(browser, "strategy", "codebook_diverse")
    wait_for(lambda: shown(browser, "keep-ratio") and shown(browser, "threshold"), "both sliders")
    # Back to the codebook: its threshold rule is offered again.
    choose(browser, "strategy", "codebook")
    wait_for(lambda: mode_choices(browser) == ["threshold", "budget"], "both rules again")
    save_page(browser, "space_strategy_selector.png")


def test_two_strategies_side_by_side_at_one_budget(served, browser, tmp_path):
    from selenium.webdriver.common.by import By

    upload_and_wait_for_counts(browser, served, half_noise(tmp_path / "compare.png", 200, 120))

    def table():
        text = browser.find_element(By.CSS_SELECTOR, "#compare-counts").text
        return text if "Jaccard" in text else None

    first = wait_for(table, "the comparison table")
    assert "A: codebook" in first and "B: divprune" in first
    for view in ("a-base", "a-tile", "b-base", "b-tile"):
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, f"#compare-{view} img"), f"the {view} overlay")
    choose(browser, "compare-b", "hired")
    second = wait_for(lambda: (t := table()) and "B: hired" in t and t, "the comparison with hired")
    assert "A: codebook" in second
    # The same budget for both: the scored row names one count for A and B.
    scored = re.search(r"scored (\d+) / (\d+) \([\d.]+ %\) (\d+) / (\d+)", second)
    assert scored and scored[1] == scored[3] and scored[2] == scored[4], second
    set_slider(browser, "compare-budget", 0.5)
    third = wait_for(lambda: (t := table()) and "50% of the scored tokens" in t and t, "the comparison at 50 %")
    assert re.search(r"scored (\d+) / (\d+)", third)[1] != scored[1]
    save_page(browser, "space_compare_strategies.png")


# ------------------------------------------------------------------------------------------------ the video section
@pytest.fixture(scope="module")
def served_video_family(tmp_path_factory):
    """The Hub-shaped LLaVA-OneVision checkpoint served as `test_space_families` serves it, so the page has its video
    section."""
    from test_space_families import family_backend

    from spaces_app import app

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio-cache-video")))
        backend = family_backend("llava-onevision-qwen2-7b-ov", tmp_path_factory.mktemp("browser-video-family"))
        assert backend.takes_video and not backend.is_demo
        demo = app.build_demo(backend, examples_dir=tmp_path_factory.mktemp("examples"))
        url = launch_on_a_free_port(demo, **app.launch_options(demo))
        try:
            yield url
        finally:
            demo.close()


def test_a_video_upload_shows_its_frames_answers_and_marks_them_out_of_date(served_video_family, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from test_space_families import bright_noise, write_gif

    clip = write_gif(tmp_path / "clip.gif", [bright_noise(80, 60, 60 + i) for i in range(4)])
    browser.get(served_video_family)
    upload = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#input-video input[type=file]"), "video upload")
    upload[0].send_keys(clip)

    def video_counts():
        return browser.find_element(By.CSS_SELECTOR, "#video-counts").text

    text = wait_for(lambda: (t := video_counts()) and "Kept" in t and t, "the video's counts")
    assert "4 frames, each pooled to" in text and "scored" in text
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#video-strip img"), "the strip of frames")
    browser.find_element(By.CSS_SELECTOR, "#video-question textarea").send_keys("what happens ?")
    browser.find_element(By.CSS_SELECTOR, "#ask-video").click()
    wait_for(
        lambda: "prompt of" in browser.find_element(By.CSS_SELECTOR, "#video-pruned-time").text,
        "the video answers",
    )
    assert not shown(browser, "video-answer-notice")
    # A peer strategy that needs the tower's [CLS] attention is not even offered here (SigLIP); switching to one that
    # reads the features re-scores the frames and marks the answers out of date.
    offered = choose(browser, "strategy", "divprune")
    assert offered == ["codebook", "codebook_diverse", "divprune", "random", "uniform"]
    wait_for(lambda: "Strategy: divprune" in video_counts(), "the video re-scored with divprune")
    notice = wait_for(
        lambda: (
            shown(browser, "video-answer-notice") and browser.find_element(By.CSS_SELECTOR, "#video-answer-notice").text
        ),
        "the out-of-date notice of the video answers",
    )
    assert "the strategy" in notice and "Ask about the video" in notice
    assert "(out of date)" in browser.find_element(By.CSS_SELECTOR, "#video-pruned").text
    save_page(browser, "space_video_section.png")
