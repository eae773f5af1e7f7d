"""The Space served on 127.0.0.1 and called as a remote user would: through `gradio_client`, and with raw HTTP
payloads the client would never build (every request loop here is bounded in count and time)."""

import io
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from spaces_app import app, disk, encoding, images, inputs, limits, model  # noqa: E402
from space_helpers import call_raw, launch_on_a_free_port  # noqa: E402

TIMEOUT = 120  # seconds any one call may take before the test fails rather than hangs
MAX_UPLOAD_MB = 2  # small, so that the tests of the limit send little


def picture(path: Path, width: int, height: int, seed: int, flat_share: float = 0.5) -> str:
    rng = np.random.default_rng(seed)
    pixels = np.full((height, width, 3), 255, dtype=np.uint8)
    noisy = int(width * (1 - flat_share))
    pixels[:, :noisy] = rng.integers(0, 256, (height, noisy, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


class Served(NamedTuple):
    backend: model.Backend
    url: str
    examples: Path  # the app's example folder
    cache: Path  # Gradio's upload cache


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    # A Gradio cache of its own: servers of other test runs on this machine clean theirs up on exit.
    with pytest.MonkeyPatch.context() as patch:
        cache = tmp_path_factory.mktemp("gradio-cache")
        patch.setenv("GRADIO_TEMP_DIR", str(cache))
        patch.setenv("MAX_UPLOAD_MB", str(MAX_UPLOAD_MB))
        backend = model.load_tiny_backend()
        examples = tmp_path_factory.mktemp("examples")
        demo = app.build_demo(backend, examples_dir=examples)
        url = launch_on_a_free_port(demo, **app.launch_options(demo))
        assert url.startswith("http://127.0.0.1:")
        try:
            yield Served(backend, url, examples, cache)
        finally:
            demo.close()


@pytest.fixture
def client(served):
    return Client(served.url, verbose=False, download_files=True)


def expected(backend, path, mode, threshold, keep_ratio, question=""):
    """What the pure functions say for these inputs (the oracle for the served results)."""
    return images.preview(backend, path, mode, threshold, keep_ratio, question)


def test_answer_endpoint_returns_overlays_counts_and_both_timed_answers(served, client, tmp_path):
    backend = served.backend
    path = picture(tmp_path / "wide.png", 150, 90, seed=1)
    job = client.submit(handle_file(path), "what is this ?", "threshold", 0.9, 0.25, 6, api_name="/answer")
    base, tile, counts_md, details, pruned, pruned_time, full, full_time = job.result(timeout=TIMEOUT)
    want = expected(backend, path, "threshold", 0.9, 0.25, "what is this ?")
    assert details["counts"] == want.counts
    assert details["flops"]["percent_saved"] == pytest.approx(want.flops["percent_saved"])
    assert f"Kept {want.counts['all']['kept']} / {want.counts['all']['total']} visual tokens" in counts_md
    assert "% saved" in counts_md
    for overlay_path, reference in ((base, want.base_overlay), (tile, want.tile_overlay)):
        overlay = Image.open(overlay_path)
        assert overlay.format == "PNG" and overlay.size == reference.size
        np.testing.assert_array_equal(np.asarray(overlay.convert("RGB")), np.asarray(reference.convert("RGB")))
    assert pruned and full
    assert pruned_time.startswith("**With pruning:**") and (" ms " in pruned_time or " s " in pruned_time)
    assert full_time.startswith("**Without pruning:**")
    dropped = want.counts["all"]["total"] - want.counts["all"]["kept"]
    pruned_tokens = int(pruned_time.split("prompt of ")[1].split()[0])
    full_tokens = int(full_time.split("prompt of ")[1].split()[0])
    assert full_tokens - pruned_tokens == dropped > 0


def test_preview_endpoint_rescores_with_the_budget(served, client, tmp_path):
    backend = served.backend
    path = picture(tmp_path / "tall.png", 70, 130, seed=2, flat_share=0.3)
    result = client.submit(handle_file(path), "budget", 0.9, 0.5, "", api_name="/preview").result(timeout=TIMEOUT)
    details = result[3]
    counts = details["counts"]
    visual = counts["base"]["total"] + counts["tile"]["total"]
    assert counts["base"]["kept"] + counts["tile"]["kept"] == round(0.5 * visual)
    assert counts == expected(backend, path, "budget", 0.9, 0.5).counts


def test_bad_inputs_come_back_as_messages(client, tmp_path):
    good = picture(tmp_path / "ok.png", 100, 100, seed=3)
    with pytest.raises(AppError, match="Type a question"):
        client.predict(handle_file(good), "   ", "threshold", 0.9, 0.25, 4, api_name="/answer")
    not_image = tmp_path / "notes.png"
    not_image.write_text("plain text")
    with pytest.raises(AppError, match="could not be read as an image"):
        client.predict(handle_file(str(not_image)), "what ?", "threshold", 0.9, 0.25, 4, api_name="/answer")
    huge = tmp_path / "huge.png"
    Image.new("1", (9000, 6000)).save(huge)
    with pytest.raises(AppError, match="9000x6000 pixels"):
        client.predict(handle_file(str(huge)), "what ?", "threshold", 0.9, 0.25, 4, api_name="/answer")
    # The preview reports in place instead of raising (it runs on every slider move).
    result = client.predict(handle_file(str(huge)), "threshold", 0.9, 0.25, "", api_name="/preview")
    assert result[0] is None and "9000x6000 pixels" in result[2]


def test_a_null_number_and_a_bad_example_index_come_back_as_messages_through_the_client(client, tmp_path):
    good = picture(tmp_path / "ok.png", 60, 60, seed=4)
    with pytest.raises(AppError, match="max_new_tokens must be a number; got nothing."):
        client.predict(handle_file(good), "what ?", "threshold", 0.9, 0.25, None, api_name="/answer")
    result = client.predict(handle_file(good), "threshold", None, 0.25, "", api_name="/preview")
    assert result[0] is None and "The threshold must be a number; got nothing." in result[2]
    result = client.predict(handle_file(good), "codebook", "divprune", None, 0.9, "", api_name="/compare")
    assert result[0] is None and "The token budget must be a number; got nothing." in result[4]
    with pytest.raises(AppError, match="Pick one of the 4 examples: .* got 99."):
        client.predict(99, api_name="/load_example")
    picked = client.predict(1, api_name="/load_example")  # a good index still loads that example
    assert Path(picked[0]["value"]).name == "lighthouse.png"


def test_only_the_three_endpoints_are_public(client):
    """The page's own steps (the check before Ask, the out-of-date marks, the rule's slider, the strategy's rules) are
    not API endpoints."""
    api = client.view_api(return_format="dict", print_info=False)
    assert sorted(api["named_endpoints"]) == ["/answer", "/compare", "/preview"]
    assert not api["unnamed_endpoints"]


def test_user_errors_are_logged_in_one_line_and_unexpected_ones_with_their_traceback(
    served, client, tmp_path, caplog, capfd, monkeypatch
):
    caplog.set_level(logging.INFO, logger="llava_codebook.space")
    good = picture(tmp_path / "logged.png", 100, 100, seed=4)
    capfd.readouterr()
    with pytest.raises(AppError, match="Type a question"):
        client.predict(handle_file(good), "   ", "threshold", 0.9, 0.25, 4, api_name="/answer")
    refused = [record for record in caplog.records if "Type a question" in record.getMessage()]
    assert len(refused) == 1, [record.getMessage() for record in caplog.records]
    assert refused[0].levelno == logging.INFO and refused[0].exc_info is None
    assert "\n" not in refused[0].getMessage()
    assert "Traceback" not in capfd.readouterr().err  # and Gradio printed none either

    caplog.clear()

    def broken(*args, **kwargs):
        raise RuntimeError("the accelerator fell over")

    monkeypatch.setattr(images, "generate_both", broken)
    with pytest.raises(AppError, match=r"Something went wrong \(RuntimeError\)"):
        client.predict(handle_file(good), "what ?", "threshold", 0.9, 0.25, 4, api_name="/answer")
    unexpected = [record for record in caplog.records if record.exc_info]
    assert len(unexpected) == 1 and unexpected[0].exc_info[0] is RuntimeError
    assert unexpected[0].levelno == logging.ERROR
    assert capfd.readouterr().err.count("Traceback") <= 1  # logged once (where a handler prints it), not twice


def test_two_concurrent_clients_get_their_own_results(served, tmp_path):
    backend, url = served.backend, served.url
    requests = [
        (picture(tmp_path / "a.png", 150, 90, seed=10, flat_share=0.2), "threshold", 0.95, 0.25),
        (picture(tmp_path / "b.png", 90, 160, seed=11, flat_share=0.8), "budget", 0.9, 0.3),
    ]
    results: dict = {}
    errors: list = []

    def run(index, path, mode, threshold, keep_ratio):
        try:
            client = Client(url, verbose=False)
            preview = client.submit(handle_file(path), mode, threshold, keep_ratio, "", api_name="/preview")
            answer = client.submit(
                handle_file(path), "what is it ?", mode, threshold, keep_ratio, 4, api_name="/answer"
            )
            results[index] = (preview.result(timeout=TIMEOUT), answer.result(timeout=TIMEOUT))
        except Exception as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, *r)) for i, r in enumerate(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=2 * TIMEOUT)
    assert not errors, errors
    assert sorted(results) == [0, 1]
    for index, (path, mode, threshold, keep_ratio) in enumerate(requests):
        want = expected(backend, path, mode, threshold, keep_ratio)
        preview, answer = results[index]
        assert preview[3]["counts"] == want.counts
        assert answer[3]["counts"] == want.counts
        assert Image.open(preview[0]).size == want.base_overlay.size
    assert results[0][0][3]["counts"] != results[1][0][3]["counts"]


# ---------------------------------------------------------------------------------------------------- security
# Everything /answer and /preview take after the image (the last two: tile skipping off, its share).
ANSWER_ARGS = ["what is it ?", "threshold", 0.9, 0.25, 3, "codebook", False, 0.9]
PREVIEW_ARGS = ["threshold", 0.9, 0.25, "", "codebook", False, 0.9]
COMPARE_ARGS = ["codebook", "divprune", 0.25, 0.9, ""]  # everything /compare takes after the image


def endpoint_data(api_name: str, image) -> list:
    rest = {"answer": ANSWER_ARGS, "preview": PREVIEW_ARGS, "compare": COMPARE_ARGS}[api_name]
    return [image, *rest]


def secret_picture(directory: Path) -> tuple[Path, np.ndarray]:
    """A distinctive noise PNG: any returned picture that correlates with it has leaked it."""
    directory.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(1234).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    path = directory / "secret.png"
    Image.fromarray(pixels).save(path)
    return path, pixels


def returned_pictures(base_url: str, outputs) -> list[np.ndarray]:
    """Every image among an endpoint's outputs, downloaded from the server."""
    import httpx

    pictures = []
    for value in outputs if isinstance(outputs, list) else []:
        if isinstance(value, dict) and value.get("url"):
            response = httpx.get(value["url"], timeout=TIMEOUT)
            response.raise_for_status()
            pictures.append(np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB")))
    return pictures


def correlation(picture: np.ndarray, secret: np.ndarray) -> float:
    resized = np.asarray(Image.fromarray(picture).resize(secret.shape[1::-1], Image.BILINEAR), dtype=float)
    return float(np.corrcoef(resized.ravel(), secret.astype(float).ravel())[0, 1])


def test_the_leak_check_sees_a_picture_that_is_served_back(served, tmp_path):
    """The check below is live: the same picture placed where the server may read it does come back in overlays."""
    allowed, pixels = secret_picture(served.examples / f"control-{tmp_path.name}")
    event, outputs = call_raw(served.url, "preview", endpoint_data("preview", {"path": str(allowed)}))
    assert event == "complete" and outputs[0] is not None, outputs
    assert max(correlation(picture, pixels) for picture in returned_pictures(served.url, outputs)) > 0.6


@pytest.mark.parametrize("api_name", ["preview", "answer", "compare"])
@pytest.mark.parametrize("with_meta", [False, True], ids=["no-meta", "meta"])
def test_a_path_outside_the_allowed_folders_is_refused_and_its_pixels_never_come_back(
    served, tmp_path, api_name, with_meta
):
    secret, pixels = secret_picture(tmp_path / "outside")
    payload = {"path": str(secret)}
    if with_meta:
        payload["meta"] = {"_type": "gradio.FileData"}
    event, result = call_raw(served.url, api_name, endpoint_data(api_name, payload))
    assert (event, result) == ("error", inputs.UNREADABLE_IMAGE)
    assert not any(correlation(picture, pixels) > 0.5 for picture in returned_pictures(served.url, result))


@pytest.mark.parametrize("api_name", ["preview", "answer", "compare"])
def test_dot_dot_and_symlink_escapes_from_the_allowed_folders_are_refused(served, tmp_path, api_name):
    secret, _ = secret_picture(tmp_path / "outside")
    links = []
    for folder in (served.examples, served.cache):
        link = folder / f"link-{api_name}-{tmp_path.name}.png"
        link.symlink_to(secret)
        links.append(link)
    escapes = [
        os.path.join(served.examples, os.path.relpath(secret, served.examples)),  # examples/../<test dir>/...
        os.path.join(served.cache, os.path.relpath(secret, served.cache)),
        *map(str, links),
    ]
    try:
        for path in escapes:
            assert Path(path).resolve() == secret.resolve()  # each one does lead to the secret
            event, result = call_raw(served.url, api_name, endpoint_data(api_name, {"path": path}))
            assert (event, result) == ("error", inputs.UNREADABLE_IMAGE), path
    finally:
        for link in links:
            link.unlink()


def test_every_refused_or_unreadable_path_gets_the_same_message(served, tmp_path):
    """No existence oracle: missing, a directory, not a picture, outside or inside the allowed folders, all alike."""
    (tmp_path / "notes.png").write_text("not a picture")
    inside_text = served.examples / "notes-inside.png"
    inside_text.write_text("not a picture either")
    truncated = served.examples / "truncated.png"
    truncated.write_bytes(Path(sorted(served.examples.glob("house*.png"))[0]).read_bytes()[:300])
    paths = [
        tmp_path / "missing.png",
        tmp_path,
        tmp_path / "notes.png",
        Path(sys.executable),
        served.examples / "missing.png",
        served.examples,
        inside_text,
        truncated,
        "relative/path.png",
        "/dev/zero",
    ]
    for path in paths:
        for api_name in ("preview", "answer", "compare"):
            event, result = call_raw(served.url, api_name, endpoint_data(api_name, {"path": str(path)}))
            if event == "complete":  # the preview and the comparison report what they found in place
                event, result = "error", result[2 if api_name == "preview" else 4].removeprefix("⚠️ ")
            assert (event, result) == ("error", inputs.UNREADABLE_IMAGE), (path, api_name)


def test_uploads_and_the_example_images_still_work(served, client, tmp_path):
    upload = picture(tmp_path / "upload.png", 120, 80, seed=40)
    counts = client.predict(handle_file(upload), *PREVIEW_ARGS, api_name="/preview")[3]["counts"]
    assert counts["all"]["total"] > 0
    for example in sorted(served.examples.glob("*.png"))[:2]:
        event, outputs = call_raw(served.url, "answer", endpoint_data("answer", {"path": str(example)}))
        assert event == "complete" and outputs[3]["counts"]["all"]["total"] > 0, outputs


@pytest.mark.parametrize("api_name", ["preview", "answer"])
def test_an_over_long_question_is_refused_by_every_endpoint(served, client, tmp_path, api_name):
    path = handle_file(picture(tmp_path / "q.png", 100, 100, seed=41))
    question = "why " * 300  # 1,200 characters
    message = "The question is 1199 characters long; keep it under 1000."
    if api_name == "preview":
        base, tile, counts_md, details = client.predict(path, "threshold", 0.9, 0.25, question, api_name="/preview")
        assert base is None and tile is None and details == {} and message in counts_md
    else:
        with pytest.raises(AppError, match=message):
            client.predict(path, question, "threshold", 0.9, 0.25, 3, api_name="/answer")


IMAGE_FORM_START = "The image must be a file uploaded to this Space"
# (api_name, the data sent as raw JSON text, the message that must come back). `IMAGE` stands for a valid payload.
BAD_INPUTS = {
    "image token in the question": (
        "answer",
        '[IMAGE, "what is <image> here", "threshold", 0.9, 0.25, 3, "codebook", false, 0.9]',
        "image placeholder (<image>)",
    ),
    "image token, preview": (
        "preview",
        '[IMAGE, "threshold", 0.9, 0.25, "a <image>", "codebook", false, 0.9]',
        "image placeholder (&lt;image&gt;)",
    ),
    "max_new_tokens NaN": (
        "answer",
        '[IMAGE, "what", "threshold", 0.9, 0.25, NaN, "codebook", false, 0.9]',
        "max_new_tokens must be a finite number; got nan",
    ),
    "threshold infinite": (
        "preview",
        '[IMAGE, "threshold", Infinity, 0.25, "", "codebook", false, 0.9]',
        "The threshold must be a finite number; got inf",
    ),
    "lone surrogate": (
        "answer",
        '[IMAGE, "what \\ud800 is it", "threshold", 0.9, 0.25, 3, "codebook", false, 0.9]',
        "contains U+D800",
    ),
    "lone surrogate, preview": (
        "preview",
        '[IMAGE, "threshold", 0.9, 0.25, "\\udfff", "codebook", false, 0.9]',
        "contains U+DFFF",
    ),
    "threshold as text": (
        "answer",
        '[IMAGE, "what", "threshold", "high", 0.25, 3, "codebook", false, 0.9]',
        "The threshold must be a number; got str",
    ),
    "budget as a bool": (
        "preview",
        '[IMAGE, "budget", 0.9, true, "", "codebook", false, 0.9]',
        "The token budget must be a number; got bool",
    ),
    "max_new_tokens fractional": (
        "answer",
        '[IMAGE, "what", "threshold", 0.9, 0.25, 2.5, "codebook", false, 0.9]',
        "max_new_tokens must be a whole number",
    ),
    "max_new_tokens too many": (
        "answer",
        '[IMAGE, "what", "threshold", 0.9, 0.25, 100000, "codebook", false, 0.9]',
        "max_new_tokens must lie in [1, 128]",
    ),
    "question as a number": (
        "answer",
        '[IMAGE, 42, "threshold", 0.9, 0.25, 3, "codebook", false, 0.9]',
        "The question must be text; got int",
    ),
    "question as an object": (
        "preview",
        '[IMAGE, "threshold", 0.9, 0.25, {"path": "/etc/hostname", "meta": {"_type": "gradio.FileData"}}, "codebook", false, 0.9]',
        "The question must be text; got dict",
    ),
    "mode unknown": (
        "preview",
        '[IMAGE, "random", 0.9, 0.25, "", "codebook", false, 0.9]',
        "Unknown pruning mode 'random'",
    ),
    "image as a number": ("answer", '[7, "what", "threshold", 0.9, 0.25, 3, "codebook", false, 0.9]', IMAGE_FORM_START),
    "image as a URL": (
        "preview",
        '[{"path": "https://example.com/a.png", "meta": {"_type": "gradio.FileData"}}, "threshold", 0.9, 0.25, "", "codebook", false, 0.9]',
        "this Space does not download images",
    ),
    "image missing": ("answer", '[null, "what", "threshold", 0.9, 0.25, 3, "codebook", false, 0.9]', "Upload an image"),
    "question missing": (
        "answer",
        '[IMAGE, null, "threshold", 0.9, 0.25, 3, "codebook", false, 0.9]',
        "Type a question",
    ),
    "too few inputs": (
        "answer",
        '[IMAGE, "what"]',
        "This endpoint takes 9 inputs, in this order: image, question, mode, threshold, keep_ratio, max_new_tokens, "
        "strategy, tile_skipping, tile_skip_share; got 2.",
    ),
    "too many inputs": (
        "preview",
        '[IMAGE, "threshold", 0.9, 0.25, "", "codebook", false, 0.9, 3]',
        "This endpoint takes 8 inputs, in this order: image, mode, threshold, keep_ratio, question, strategy, "
        "tile_skipping, tile_skip_share; got 9.",
    ),
    "strategy unknown": (
        "preview",
        '[IMAGE, "budget", 0.9, 0.25, "", "fastest", false, 0.9]',
        "Unknown pruning strategy 'fastest'",
    ),
    "strategy without the rule": (
        "answer",
        '[IMAGE, "what", "threshold", 0.9, 0.25, 3, "divprune", false, 0.9]',
        "The 'divprune' strategy keeps a token budget and has no threshold",
    ),
    "strategy as an object": (
        "answer",
        '[IMAGE, "what", "budget", 0.9, 0.25, 3, {"path": "/etc/hostname"}, false, 0.9]',
        "The strategy must be one of the listed names; got dict",
    ),
    "compare strategy unknown": (
        "compare",
        '[IMAGE, "codebook", "fastest", 0.25, 0.9, ""]',
        "Unknown pruning strategy 'fastest'",
    ),
    "compare budget zero": (
        "compare",
        '[IMAGE, "codebook", "divprune", 0, 0.9, ""]',
        "The token budget must lie in (0, 1]; got 0",
    ),
    "compare too few inputs": (
        "compare",
        '[IMAGE, "codebook"]',
        "This endpoint takes 6 inputs, in this order: image, strategy_a, strategy_b, keep_ratio, threshold, question; "
        "got 2.",
    ),
    # null is a bad value for every number an endpoint takes.
    "max_new_tokens null": (
        "answer",
        '[IMAGE, "what", "threshold", 0.9, 0.25, null, "codebook", false, 0.9]',
        "max_new_tokens must be a number; got nothing.",
    ),
    "threshold null": (
        "answer",
        '[IMAGE, "what", "threshold", null, 0.25, 3, "codebook", false, 0.9]',
        "The threshold must be a number; got nothing.",
    ),
    "budget null": (
        "answer",
        '[IMAGE, "what", "budget", 0.9, null, 3, "codebook", false, 0.9]',
        "The token budget must be a number; got nothing.",
    ),
    "preview threshold null": (
        "preview",
        '[IMAGE, "threshold", null, 0.25, "", "codebook", false, 0.9]',
        "The threshold must be a number; got nothing.",
    ),
    "preview budget null": (
        "preview",
        '[IMAGE, "budget", 0.9, null, "", "codebook", false, 0.9]',
        "The token budget must be a number; got nothing.",
    ),
    "compare budget null": (
        "compare",
        '[IMAGE, "codebook", "divprune", null, 0.9, ""]',
        "The token budget must be a number; got nothing.",
    ),
    "compare threshold null": (
        "compare",
        '[IMAGE, "codebook", "divprune", 0.25, null, ""]',
        "The threshold must be a number; got nothing.",
    ),
    "tile skipping as text": (
        "preview",
        '[IMAGE, "threshold", 0.9, 0.25, "", "codebook", "yes", 0.9]',
        "Tile skipping must be true or false; got str",
    ),
    "tile skip share out of range": (
        "answer",
        '[IMAGE, "what", "threshold", 0.9, 0.25, 3, "codebook", true, 1.5]',
        "The tile skip share must lie in [0, 1]; got 1.5",
    ),
    # Picking an example sends its index: anything else is named.
    "example index past the end": ("load_example", "[4]", "Pick one of the 4 examples"),
    "example index negative": ("load_example", "[-1]", "from 0 to 3; got -1."),
    "example index null": ("load_example", "[null]", "from 0 to 3; got None."),
    "example index as text": ("load_example", '["0"]', "from 0 to 3; got '0'."),
    "example with two inputs": (
        "load_example",
        "[0, 1]",
        "This endpoint takes 1 input, in this order: example; got 2.",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_each_bad_input_gets_a_message_that_names_it(served, case):
    api_name, data, message = BAD_INPUTS[case]
    example = sorted(served.examples.glob("*.png"))[0]
    data = data.replace("IMAGE", '{"path": "%s"}' % example)
    event, result = call_raw(served.url, api_name, body='{"data": %s}' % data)
    if event == "complete":  # the preview and the comparison report in place (they run on every slider move)
        message_at = 4 if api_name == "compare" else 2
        assert result[0] is None and result[message_at + 1] == {}, result
        event, result = "error", result[message_at]
    assert event == "error" and result and message in result, result
    assert "Something went wrong" not in result


def test_request_bodies_over_the_limit_are_refused_before_they_are_parsed(served, tmp_path):
    import httpx

    limit = limits.max_request_bytes()
    base = served.url.rstrip("/")
    over = ('{"data": [null, "threshold", 0.9, 0.25, "' + "x" * limit + '", "codebook", false, 0.9]}').encode()
    routes = ["/gradio_api/call/preview", "/gradio_api/call/answer", "/gradio_api/queue/join"]
    for route in routes:
        declared = httpx.post(base + route, content=over, headers={"Content-Type": "application/json"}, timeout=30)
        assert declared.status_code == 413 and "Request body too large" in declared.text, (route, declared.text)
        # Without a Content-Length (chunked), the body is cut off as it arrives.
        chunks = (over[start : start + 16384] for start in range(0, len(over), 16384))
        streamed = httpx.post(base + route, content=chunks, headers={"Content-Type": "application/json"}, timeout=30)
        assert streamed.status_code == 413 and "Request body too large" in streamed.text, (route, streamed.text)
    # Just under the limit the body is parsed, and the question then refused by the endpoint's own check.
    under = '{"data": [null, "threshold", 0.9, 0.25, "' + "x" * 2000 + '", "codebook", false, 0.9]}'
    assert call_raw(served.url, "preview", body=under) == (
        "complete",
        [None, None, "⚠️ The question is 2000 characters long; keep it under 1000.", {}],
    )


def test_uploads_over_the_file_size_limit_are_refused(served, tmp_path):
    import httpx

    upload = f"{served.url.rstrip('/')}/gradio_api/upload"
    small = picture(tmp_path / "small.png", 40, 40, seed=50)
    accepted = httpx.post(upload, files=[("files", open(small, "rb"))], timeout=30)
    assert accepted.status_code == 200 and Path(accepted.json()[0]).is_relative_to(served.cache)
    one_big = [("files", ("big.png", b"\0" * (MAX_UPLOAD_MB * 2**20 + 1)))]
    assert httpx.post(upload, files=one_big, timeout=30).status_code == 413
    # Many files each under the limit: the body as a whole is over it.
    many = [("files", (f"{index}.png", b"\0" * (2**20))) for index in range(MAX_UPLOAD_MB + 1)]
    assert httpx.post(upload, files=many, timeout=30).status_code == 413


def held_bytes(value, seen=None) -> int:
    """Bytes of array data reachable from a cached entry, counted independently of the cache's own bookkeeping:
    tensors, numpy arrays and decoded pictures, through dataclass fields and containers."""
    import dataclasses

    import torch

    seen = set() if seen is None else seen
    if id(value) in seen:
        return 0
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        return value.nbytes
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, Image.Image):
        return value.width * value.height * len(value.getbands())
    if dataclasses.is_dataclass(value):
        return sum(held_bytes(getattr(value, f.name), seen) for f in dataclasses.fields(value))
    if isinstance(value, (list, tuple)):
        return sum(held_bytes(item, seen) for item in value)
    if isinstance(value, dict):
        return sum(held_bytes(item, seen) for item in value.values())
    return 0


def large_picture(path: Path, seed: int) -> str:
    """A 2000x1500 picture (9 MB decoded) that compresses to little: flat, with a patch of noise of its own."""
    pixels = np.full((1500, 2000, 3), 200, dtype=np.uint8)
    pixels[:64, :64] = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


def test_feature_cache_memory_stays_under_its_bound_while_distinct_large_images_arrive(served, tmp_path, monkeypatch):
    monkeypatch.setenv("FEATURE_CACHE_MB", "0.1")  # room for a few of the tiny model's entries
    cache = encoding.EncodingCache()
    monkeypatch.setattr(served.backend, "cache", cache)
    bound = int(0.1 * 2**20)
    assert cache.max_bytes == bound
    client = Client(served.url, verbose=False)
    keys = []
    for index in range(8):
        path = large_picture(tmp_path / f"large-{index}.png", seed=70 + index)
        keys.append(encoding.image_key(Image.open(path).convert("RGB")))
        counts = client.predict(handle_file(path), *PREVIEW_ARGS, api_name="/preview")[3]["counts"]
        assert counts["all"]["total"] > 0
        entries = cache.values()
        assert held_bytes(entries) == cache.nbytes <= bound, f"after image {index}: {held_bytes(entries)} bytes"
    assert 2 <= len(cache) < 8, "the bound should hold several entries, and evict"
    assert cache.get(keys[0]) is None and cache.get(keys[-1]) is not None  # least recently used out first


def cache_contents(cache: Path) -> tuple[list[Path], list[Path]]:
    """(files, empty folders) under Gradio's cache, left out: the example files it keeps for good, the server's lock
    on the folder, and the overlay folder (kept while the server runs)."""
    kept = (*SCENE_NAMES, disk.LOCK_FILE)
    files = [path for path in cache.rglob("*") if path.is_file() and not path.name.endswith(kept)]
    folders = [
        path
        for path in cache.iterdir()
        if path.is_dir() and not any(path.iterdir()) and path.name != disk.OVERLAY_FOLDER
    ]
    return files, folders


SCENE_NAMES = ("house_in_a_field.png", "lighthouse.png", "bar_chart.png", "city_at_dusk.png")


def test_the_cache_of_uploads_and_overlays_is_swept_on_the_configured_schedule(tmp_path):
    cache = tmp_path / "gradio-cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(cache))
        patch.setenv("CACHE_SWEEP_SECONDS", "1")
        patch.setenv("CACHE_MAX_AGE_SECONDS", "2")
        demo = app.build_demo(model.load_tiny_backend(), examples_dir=tmp_path / "examples")
        assert demo.delete_cache is None and (demo.file_cache.sweep_seconds, demo.file_cache.max_age) == (1, 2)
        url = launch_on_a_free_port(demo, **app.launch_options(demo))
        try:
            client = Client(url, verbose=False)
            for index in range(3):  # distinct uploads and overlays, each cached in a folder of its own
                path = picture(tmp_path / f"{index}.png", 60, 40, seed=60 + index)
                client.predict(handle_file(path), "threshold", 0.5 + 0.2 * index, 0.25, "", api_name="/preview")
            files, _ = cache_contents(cache)
            assert len(files) >= 6, files  # 3 uploads, 6 overlays (some may be swept already)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and any(cache_contents(cache)):
                time.sleep(0.5)
            assert cache_contents(cache) == ([], []), "files or empty folders outlived CACHE_MAX_AGE_SECONDS"
            assert sorted(path.name for path in cache.rglob("*.png")) == sorted(SCENE_NAMES)  # examples stay
        finally:
            demo.close()
