"""The Space served on 127.0.0.1 and called through `gradio_client`, as a remote user would call it."""

import os
import sys
import threading
from pathlib import Path

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

from spaces_app import app  # noqa: E402
from space_helpers import launch_on_a_free_port  # noqa: E402

TIMEOUT = 120  # seconds any one call may take before the test fails rather than hangs


def picture(path: Path, width: int, height: int, seed: int, flat_share: float = 0.5) -> str:
    rng = np.random.default_rng(seed)
    pixels = np.full((height, width, 3), 255, dtype=np.uint8)
    noisy = int(width * (1 - flat_share))
    pixels[:, :noisy] = rng.integers(0, 256, (height, noisy, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    # A Gradio cache of its own: servers of other test runs on this machine clean theirs up on exit.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio-cache")))
        backend = app.load_tiny_backend()
        demo = app.build_demo(backend, examples_dir=tmp_path_factory.mktemp("examples"))
        url = launch_on_a_free_port(demo)
        assert url.startswith("http://127.0.0.1:")
        try:
            yield backend, url
        finally:
            demo.close()


@pytest.fixture
def client(served):
    return Client(served[1], verbose=False, download_files=True)


def expected(backend, path, mode, threshold, keep_ratio, question=""):
    """What the pure functions say for these inputs (the oracle for the served results)."""
    return app.preview(backend, path, mode, threshold, keep_ratio, question)


def test_answer_endpoint_returns_overlays_counts_and_both_timed_answers(served, client, tmp_path):
    backend, _ = served
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
    backend, _ = served
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


def test_two_concurrent_clients_get_their_own_results(served, tmp_path):
    backend, url = served
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
