"""The Space's pure functions: inputs checked with clear messages, overlays, counts, FLOPs, cached re-scoring."""

import contextlib
import logging
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from llava_codebook.flops import prefill_flops_ratio  # noqa: E402
from llava_codebook.processing_llava_next_codebook import DROPPED, KEPT, UNSEEN, token_state_map  # noqa: E402
from spaces_app import (  # noqa: E402
    app,
    counts,
    disk,
    encoding,
    freshness,
    gpu,
    images,
    inputs,
    limits,
    model,
    render,
    server,
)
from spaces_app.examples import SCENES, write_examples  # noqa: E402

# (width, height) of test pictures: wide, tall, square, tiny, huge, very wide.
SIZES = {
    "wide": (150, 90),
    "tall": (70, 130),
    "square": (100, 100),
    "tiny": (12, 10),
    "huge": (3000, 2000),
    "very-wide": (900, 160),
}


def half_flat(width: int, height: int, seed: int = 0) -> Image.Image:
    """Noise on the left half, flat white on the right: the demo codebook drops the flat side."""
    rng = np.random.default_rng(seed)
    pixels = np.full((height, width, 3), 255, dtype=np.uint8)
    pixels[:, : width // 2] = rng.integers(0, 256, (height, width // 2, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def backend():
    return model.load_tiny_backend()


def test_with_no_model_the_space_serves_the_demo_model_and_says_so(backend):
    assert backend.is_demo
    assert "random-weight" in backend.notice and "Demonstration model" in backend.notice
    assert backend.default_threshold == pytest.approx(0.9)


def test_a_model_that_cannot_be_loaded_is_an_error_naming_it_and_why_never_the_demo(tmp_path, monkeypatch):
    """A model that was asked for and cannot be loaded is never replaced by another one: one message names the model,
    the step that failed, why, and what to do."""
    from llava_codebook.tiny import build_tiny_default

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    unsupported = tmp_path / "a-bert"
    unsupported.mkdir()
    (unsupported / "config.json").write_text('{"model_type": "bert"}')
    saved = build_tiny_default(tmp_path / "checkpoint")
    cases = [
        (str(tmp_path / "no-such-model"), None, "(its config): there is no directory"),
        ("my-org/some-model", None, "(its config): it is not in the local Hugging Face cache, and HF_HUB_OFFLINE"),
        (str(unsupported), None, "has model_type 'bert', which llava-codebook does not support"),
        (str(saved), str(tmp_path / "no-such-codebook"), f"(its codebook {str(tmp_path / 'no-such-codebook')!r})"),
    ]
    for model_id, codebook, why in cases:
        with pytest.raises(model.ModelLoadError) as refusal:
            model.load_backend(model_id, codebook_repo=codebook)
        message = str(refusal.value)
        assert message.startswith(f"Could not load the model {model_id!r} "), message
        assert why in message, message
        assert "Run without a model to serve the embedded tiny demo model." in message
        assert "\n" not in message and "Traceback" not in message


@pytest.mark.parametrize("name", list(SIZES))
def test_preview_overlays_cover_the_image_and_counts_match_the_selection(backend, name):
    image = half_flat(*SIZES[name])
    shown = images.preview(backend, image, "threshold", 0.9, 0.25)
    selection = shown.selection
    geometry = backend.cache.get(encoding.image_key(image)).geometry
    keep = selection.keep_masks()[0].numpy()
    assert len(geometry) == int(selection.num_total[0]) == shown.counts["all"]["total"]
    assert shown.counts["all"]["kept"] == int(selection.num_kept[0])
    for view in ("base", "tile"):
        members = geometry.view_mask(view)
        assert shown.counts[view]["total"] == int(members.sum())
        assert shown.counts[view]["kept"] == int(keep[members].sum())
    assert shown.counts["newline"]["kept"] == shown.counts["newline"]["total"]  # always kept
    # Kept and dropped base tokens tile the whole picture; the tiles leave at most the thin unpadding strips.
    base_state = token_state_map(geometry, keep, "base", image.size[::-1])
    assert not (base_state == UNSEEN).any()
    tile_state = token_state_map(geometry, keep, "tile", image.size[::-1])
    if geometry.view_mask("tile").any():
        assert (tile_state == UNSEEN).mean() < 0.35
    # The overlays are pictures of the image's shape, larger side 512 px; a shape longer than 4:1 is shown at 4:1.
    aspect = image.width / image.height
    shown_aspect = min(max(aspect, 1 / render.MAX_SHOWN_ASPECT), render.MAX_SHOWN_ASPECT)
    for overlay in (shown.base_overlay, shown.tile_overlay):
        assert max(overlay.size) == 512
        assert abs(overlay.size[0] / overlay.size[1] - shown_aspect) < 0.05 * shown_aspect


def test_overlay_pixels_show_the_kept_and_dropped_tokens(backend):
    image = half_flat(300, 180, seed=4)
    shown = images.preview(backend, image, "threshold", 0.9, 0.25)
    geometry = backend.cache.get(encoding.image_key(image)).geometry
    keep = shown.selection.keep_masks()[0].numpy()
    state = token_state_map(geometry, keep, "base", shown.base_overlay.size[::-1])
    assert (state == KEPT).any() and (state == DROPPED).any()
    overlay = np.asarray(shown.base_overlay.convert("RGB")).astype(float)
    original = np.asarray(image.resize(shown.base_overlay.size, Image.BICUBIC)).astype(float)
    # Dropped regions are darkened; kept ones keep their pixels (token grid lines aside).
    assert overlay[state == DROPPED].mean() < 0.5 * original[state == DROPPED].mean()
    assert np.median(np.abs(overlay[state == KEPT] - original[state == KEPT])) < 5


@contextlib.contextmanager
def tower_passes(backend):
    """Count the vision tower's forward passes inside the block."""
    calls = []
    handle = backend.model.model.vision_tower.register_forward_hook(lambda *args: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


def test_moving_the_slider_rescores_without_rerunning_the_vision_tower(backend):
    with tower_passes(backend) as calls:
        _slider_moves(backend, calls)


def _slider_moves(backend, calls):
    image = half_flat(140, 100, seed=7)
    kept = []
    for threshold in (0.5, 0.8, 0.9, 0.95, 1.0):
        kept.append(images.preview(backend, image, "threshold", threshold, 0.25).counts["all"]["kept"])
    budget = images.preview(backend, image, "budget", 0.9, 0.5).counts
    assert len(calls) == 1, "the vision tower ran again for an image already seen"
    assert kept == sorted(kept) and kept[0] < kept[-1], "a higher threshold keeps more tokens"
    visual = budget["base"]["total"] + budget["tile"]["total"]
    assert budget["base"]["kept"] + budget["tile"]["kept"] == round(0.5 * visual)
    # A new image is encoded once more; the cache keeps the ones it has seen.
    images.preview(backend, half_flat(140, 100, seed=8), "threshold", 0.9, 0.25)
    assert len(calls) == 2


class Sized:
    def __init__(self, nbytes: int):
        self.nbytes = nbytes


def test_encoding_cache_is_bounded_by_bytes_and_evicts_the_least_recently_used():
    cache = encoding.EncodingCache(max_bytes=100)
    for key, size in (("a", 40), ("b", 40), ("c", 10)):
        cache.put(key, Sized(size))
    assert cache.nbytes == 90 and len(cache) == 3
    cache.get("a")  # "a" is now the most recently used: "b" goes first
    cache.put("d", Sized(30))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("d") is not None
    assert cache.nbytes == 80 <= cache.max_bytes
    cache.put("a", Sized(60))  # re-putting a key replaces its size, it does not add to it
    assert cache.nbytes == 100 and len(cache) == 3
    cache.put("huge", Sized(101))  # larger than the whole bound: served by the caller, never kept
    assert cache.get("huge") is None and cache.nbytes == 100


def test_the_feature_cache_bound_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("FEATURE_CACHE_MB", "1.5")
    assert encoding.EncodingCache().max_bytes == int(1.5 * 2**20)
    monkeypatch.delenv("FEATURE_CACHE_MB")
    assert encoding.EncodingCache().max_bytes == 256 * 2**20
    monkeypatch.setenv("FEATURE_CACHE_MB", "lots")
    with pytest.raises(ValueError, match="FEATURE_CACHE_MB"):
        encoding.EncodingCache()


def test_cached_features_are_counted_in_bytes_and_hold_no_pixels(backend):
    image = half_flat(600, 400, seed=30)
    images.preview(backend, image, "threshold", 0.9, 0.25)
    encoded = backend.cache.get(encoding.image_key(image))
    geometry_bytes = sum(getattr(encoded.geometry, name).nbytes for name in ("view", "crop", "row", "col", "boxes"))
    tensors = [encoded.packed, encoded.newline, encoded.crop_ids]
    # The tower signals every offered strategy reads are cached too, and counted: [CLS] rows and keys per layer, and
    # the projector inputs.
    signals = encoded.signals
    assert set(signals) == {"cls_attention", "keys", "projector_inputs"}
    tensors += [*signals["cls_attention"].values(), *signals["keys"].values(), signals["projector_inputs"]]
    assert encoded.nbytes == sum(t.nbytes for t in tensors) + geometry_bytes
    assert not any(isinstance(value, Image.Image) for value in vars(encoded).values())


def test_counts_add_up_and_percentages_are_of_the_view():
    from llava_codebook.processing_llava_next_codebook import packed_token_geometry
    from llava_codebook.tiny import TINY_PINPOINTS

    geometry = packed_token_geometry((90, 150), 56, 14, TINY_PINPOINTS)
    keep = np.zeros(len(geometry), bool)
    keep[geometry.newline_mask] = True
    keep[:4] = True  # four base tokens
    tally = counts.token_counts(geometry, keep)
    assert tally["base"] == {"kept": 4, "total": 16, "percent_kept": 25.0}
    assert tally["tile"]["kept"] == 0 and tally["tile"]["total"] == 32
    assert tally["all"]["kept"] == 4 + tally["newline"]["total"]
    assert tally["all"]["total"] == 16 + 32 + tally["newline"]["total"] == len(geometry)
    assert tally["scored"] == {"kept": 4, "total": 48, "percent_kept": pytest.approx(100 * 4 / 48)}
    text = counts.format_counts(tally, counts.flops_estimate(_llama(), 10, 52, 8), geometry)
    assert "| base view (4×4) | 4 | 16 | 25.0 % |" in text
    assert "| **scored** (base + tiles) | **4** | **48** | **8.3 %** |" in text
    assert "| row newlines (not scored) | 4 | 4 | |" in text
    assert "| in the prompt (scored + newlines) | 8 | 52 | 15.4 % |" in text
    assert "Kept 8 / 52 visual tokens (15.4 %)** in the prompt: 4 / 48 scored (8.3 %) and 4 row newlines." in text


def _llama(**kwargs):
    from transformers import LlamaConfig

    defaults = dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=32064,
    )
    return LlamaConfig(**{**defaults, **kwargs})


def test_flops_estimate_matches_the_shared_cost_model():
    config = _llama()
    estimate = counts.flops_estimate(config, text_tokens=40, visual_tokens=2928, kept_visual_tokens=732)
    ratio = prefill_flops_ratio(config, 40, 2928, 732)
    assert estimate["percent_saved"] == pytest.approx(100 * (1 - ratio))
    assert 70 < estimate["percent_saved"] < 80  # a quarter of the tokens: a bit over 3/4 of the cost saved
    assert counts.flops_estimate(config, 40, 2928, 2928)["percent_saved"] == pytest.approx(0.0)
    assert estimate["full"] > estimate["pruned"] > 0


@pytest.mark.parametrize(
    "full, pruned, line",
    [
        (6.16e6, 911_104, "6.16 MFLOPs → 0.91 MFLOPs (85.2 % saved)"),  # the mixed "MFLOPs -> FLOPs" line
        (4.2e13, 1.05e13, "42.00 TFLOPs → 10.50 TFLOPs (75.0 % saved)"),
        (999.999e9, 2e8, "1.00 TFLOPs → 0.00 TFLOPs (100.0 % saved)"),  # rounds up into the next unit
        (2.5e3, 2.5e3, "2.50 kFLOPs → 2.50 kFLOPs (0.0 % saved)"),
        (640.0, 64.0, "640.00 FLOPs → 64.00 FLOPs (90.0 % saved)"),
    ],
)
def test_the_flops_line_uses_one_unit_chosen_by_the_larger_number(full, pruned, line):
    assert counts.format_flops(full, pruned) == line


def test_the_counts_show_the_flops_in_one_unit(backend):
    shown = images.preview(backend, half_flat(150, 90, seed=1), "threshold", 0.9, 0.25, "what is it ?")
    summary = shown.markdown.split("Predicted LLM prefill: ")[1]
    units = re.findall(r"[\d.]+ (\w*FLOPs)", summary)
    assert len(units) == 2 and units[0] == units[1], summary
    assert summary.startswith(counts.format_flops(shown.flops["full"], shown.flops["pruned"]))


def test_the_budget_and_the_table_count_the_same_tokens(backend):
    """The slider's share is a share of the scored tokens (base + tiles), which the table has a row for; the newlines
    it does not count are a row of their own, and the overall share says that it includes them."""
    image = half_flat(150, 90, seed=2)
    for ratio in (0.25, 0.5, 1.0):
        shown = images.preview(backend, image, "budget", 0.9, ratio)
        scored = shown.counts["scored"]
        assert scored["kept"] == round(ratio * scored["total"])
        assert f"| **scored** (base + tiles) | **{scored['kept']}** | **{scored['total']}** " in shown.markdown
        assert shown.counts["all"]["kept"] == scored["kept"] + shown.counts["newline"]["total"]
    assert "share of the scored tokens" in app.BUDGET_LABEL and "newlines are not counted" in app.BUDGET_INFO
    assert "scored" in app.THRESHOLD_INFO


@pytest.mark.parametrize(
    "size, shown_size, direction",
    [((10000, 300), (512, 128), "vertically"), ((300, 10000), (128, 512), "horizontally")],
)
def test_an_extreme_aspect_ratio_is_shown_stretched_and_an_empty_tile_grid_explained(
    backend, size, shown_size, direction
):
    image = half_flat(10000, 300, seed=5)  # noise on the left, flat on the right; turned for the tall case
    image = image if size[0] > size[1] else image.transpose(Image.TRANSPOSE)
    assert image.size == size
    shown = images.preview(backend, image, "threshold", 0.9, 0.25)
    assert shown.base_overlay.size == shown.tile_overlay.size == shown_size
    assert render.overlay_stretch(size) == pytest.approx(10000 / 300 / 4)
    assert f"stretched 8.3× {direction}: this image is 33.3:1, shown at 4:1" in shown.markdown
    # The stock packer leaves no tile token for so thin an image: the table says so instead of "0/0, 0.0 %".
    assert shown.counts["tile"]["total"] == 0
    assert "| 0 | 0 | – |" in shown.markdown and "0.0 %" not in shown.markdown.split("high-res tiles")[1][:60]
    assert "**No tile tokens.**" in shown.markdown and "base view alone" in shown.markdown
    # Every token of the base view is a visible band of the stretched overlay: the noisy half kept, the flat half
    # dropped (darkened), each token box tens of pixels thick.
    geometry = backend.cache.get(encoding.image_key(image)).geometry
    keep = shown.selection.keep_masks()[0].numpy()
    base = geometry.view_mask("base")
    assert keep[base].any() and not keep[base].all()
    gray = np.asarray(shown.base_overlay.convert("L"), dtype=float)
    noisy, flat = (gray[:, :200], gray[:, 312:]) if size[0] > size[1] else (gray[:200], gray[312:])
    assert noisy.std() > 20 and np.median(flat) < 130
    assert min(shown_size) / geometry.layout.tokens_per_side >= 30


def test_overlays_of_ordinary_shapes_are_not_stretched(backend):
    for size in ((400, 100), (100, 400), (150, 90)):
        assert render.overlay_stretch(size) == 1.0
        assert "stretched" not in images.preview(backend, half_flat(*size), "threshold", 0.9, 0.25).markdown
    assert "No tile tokens" not in images.preview(backend, half_flat(150, 90), "threshold", 0.9, 0.25).markdown


def test_answer_with_and_without_pruning_uses_the_previewed_selection(backend):
    image = half_flat(150, 90, seed=1)
    result = images.answer(backend, image, "what is in this picture ?", "threshold", 0.9, 0.25, max_new_tokens=5)
    made = result.generations
    assert isinstance(made.pruned_text, str) and made.pruned_text
    assert isinstance(made.full_text, str) and made.full_text
    assert made.pruned_seconds > 0 and made.full_seconds > 0
    dropped = result.preview.counts["all"]["total"] - result.preview.counts["all"]["kept"]
    assert dropped > 0
    assert made.full_prompt_tokens - made.pruned_prompt_tokens == dropped
    expected_text_tokens = made.full_prompt_tokens - result.preview.counts["all"]["total"]
    assert model.text_token_count(backend.processor, "what is in this picture ?") == expected_text_tokens


@pytest.mark.parametrize(
    "bad, message",
    [(None, "Upload an image"), ("not-an-image", "could not be read as an image")],
)
def test_bad_images_get_a_clear_message(tmp_path, bad, message):
    if bad == "not-an-image":
        path = tmp_path / "notes.png"
        path.write_text("this is text, not a picture")
        bad = str(path)
    with pytest.raises(inputs.InputError, match=message):
        inputs.check_image(bad)


def test_a_huge_image_is_refused_before_its_pixels_are_decoded(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("1", (9000, 6000)).save(path)  # 54 megapixels, a small file
    with pytest.raises(inputs.InputError, match="9000x6000 pixels"):
        inputs.check_image(str(path))


def test_a_truncated_image_gets_a_clear_message(tmp_path):
    path = tmp_path / "cut.png"
    half_flat(200, 200).save(path)
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(inputs.InputError, match="could not be"):
        inputs.check_image(str(path))


@pytest.mark.parametrize("question", ["", "   ", None])
def test_an_empty_question_gets_a_clear_message(question):
    with pytest.raises(inputs.InputError, match="Type a question"):
        inputs.check_question(question)


def test_bad_settings_get_a_clear_message():
    with pytest.raises(inputs.InputError, match="threshold must lie"):
        inputs.pruning_overrides("threshold", 1.5, 0.25)
    with pytest.raises(inputs.InputError, match="budget must lie"):
        inputs.pruning_overrides("budget", 0.5, 0.0)
    with pytest.raises(inputs.InputError, match="Unknown pruning mode"):
        inputs.pruning_overrides("random", 0.5, 0.5)
    assert inputs.pruning_overrides("budget", 0.5, 0.3) == {
        "pruning_strategy": "codebook",
        "pruning_mode": "budget",
        "keep_ratio": 0.3,
    }
    with pytest.raises(inputs.InputError, match="'divprune' strategy keeps a token budget and has no threshold"):
        inputs.pruning_overrides("threshold", 0.5, 0.3, "divprune")
    with pytest.raises(inputs.InputError, match="Unknown pruning strategy 'fastest'; choose one of: codebook, "):
        inputs.pruning_overrides("budget", 0.5, 0.3, "fastest")
    with pytest.raises(inputs.InputError, match="The strategy must be one of the listed names; got list"):
        inputs.pruning_overrides("budget", 0.5, 0.3, ["divprune"])
    # A peer gets its budget; the codebook-then-diverse rule reads the threshold as well.
    assert inputs.pruning_overrides("budget", 0.5, 0.3, "divprune") == {
        "pruning_strategy": "divprune",
        "pruning_mode": "budget",
        "keep_ratio": 0.3,
    }
    assert inputs.pruning_overrides("budget", 0.5, 0.3, "codebook_diverse")["codebook_threshold"] == 0.5


def test_image_paths_are_confined_to_the_allowed_folders_with_one_message(tmp_path):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    half_flat(40, 30).save(allowed / "ok.png")
    half_flat(40, 30).save(outside / "secret.png")
    (allowed / "link.png").symlink_to(outside / "secret.png")
    (allowed / "notes.png").write_text("not a picture")
    folders = [allowed.resolve()]
    assert inputs.check_image(str(allowed / "ok.png"), folders).size == (40, 30)
    assert inputs.check_image({"path": str(allowed / "ok.png"), "meta": {"_type": "gradio.FileData"}}, folders)
    refused = [
        outside / "secret.png",  # exists, outside
        allowed / ".." / "outside" / "secret.png",  # `..` out of the folder
        allowed / "link.png",  # a link out of the folder
        outside / "missing.png",
        allowed / "missing.png",
        allowed,  # a directory
        allowed / "notes.png",  # inside, not a picture
        "bad\0path.png",
    ]
    for path in refused:
        with pytest.raises(inputs.InputError) as refusal:
            inputs.check_image({"path": str(path)}, folders)
        assert str(refusal.value) == inputs.UNREADABLE_IMAGE, path


def test_a_fifo_in_an_allowed_folder_is_refused_without_waiting_on_it(tmp_path):
    import threading

    os.mkfifo(tmp_path / "fifo.png")  # opening it for reading would wait for a writer
    outcome = []

    def check():
        try:
            inputs.check_image(str(tmp_path / "fifo.png"), [tmp_path.resolve()])
        except inputs.InputError as exc:
            outcome.append(str(exc))

    worker = threading.Thread(target=check, daemon=True)
    worker.start()
    worker.join(timeout=10)
    if worker.is_alive():  # release the blocked open before failing
        with open(tmp_path / "fifo.png", "wb"):
            pass
    assert outcome == [inputs.UNREADABLE_IMAGE]


def test_an_image_sent_as_a_data_url_is_read_and_a_url_is_not_fetched():
    import base64
    import io

    buffer = io.BytesIO()
    half_flat(30, 20).save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    assert inputs.check_image({"path": None, "url": url}, allowed_dirs=[]).size == (30, 20)
    with pytest.raises(inputs.InputError, match="could not be read as an image"):
        inputs.check_image({"path": None, "url": "data:image/png;base64,@@@"}, allowed_dirs=[])
    with pytest.raises(inputs.InputError, match="does not download images"):
        inputs.check_image({"path": "https://example.com/picture.png"}, allowed_dirs=[])


GOOD = {"image": None, "question": "what is it ?", "mode": "budget", "threshold": 0.9, "keep_ratio": 0.5}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"question": "a" * 1001}, "The question is 1001 characters long; keep it under 1000."),
        ({"question": "what is <image> here"}, "image placeholder (<image>)"),
        ({"question": "what \ud800 is it"}, "contains U+D800"),
        ({"question": 3}, "The question must be text; got int."),
        ({"question": "   "}, "Type a question"),
        ({"mode": None}, "Unknown pruning mode None"),
        ({"threshold": float("nan")}, "The threshold must be a finite number; got nan."),
        ({"threshold": "0.5"}, "The threshold must be a number; got str."),
        ({"threshold": 1.5}, "The threshold must lie in [-1, 1]; got 1.5."),
        ({"keep_ratio": 0}, "The token budget must lie in (0, 1]; got 0."),
        ({"keep_ratio": True}, "The token budget must be a number; got bool."),
        ({"max_new_tokens": float("nan")}, "max_new_tokens must be a finite number; got nan."),
        ({"max_new_tokens": 1.5}, "max_new_tokens must be a whole number; got 1.5."),
        ({"max_new_tokens": 0}, "max_new_tokens must lie in [1, 128]; got 0."),
        ({"max_new_tokens": [3]}, "max_new_tokens must be a number; got list."),
        ({"image": 3}, "The image must be a file uploaded to this Space"),
        ({"image": {"url": "https://example.com/x.png"}}, "The image must be a file uploaded to this Space"),
    ],
)
def test_every_input_is_checked_by_one_function_with_a_message_naming_it(changes, message):
    request = {**GOOD, "image": half_flat(20, 20), "max_new_tokens": 5, **changes}
    with pytest.raises(inputs.InputError) as refusal:
        inputs.validate_inputs(**request, question_required=True)
    assert message in str(refusal.value)


SIGNATURE = {
    "image": {"path": "/cache/a/photo.png", "meta": {"_type": "gradio.FileData"}},
    "question": "what is it ?",
    "mode": "threshold",
    "threshold": 0.9,
    "keep_ratio": 0.25,
    "max_new_tokens": 24,
}


@pytest.mark.parametrize(
    "changes, changed",
    [
        ({}, []),
        ({"question": "  what is it ?  "}, []),  # asked the same: the answer still matches
        ({"keep_ratio": 0.5}, []),  # the budget is not what the threshold rule uses
        ({"threshold": 0.5}, ["threshold"]),
        ({"image": {"path": "/cache/b/photo.png"}}, ["image"]),
        ({"image": None}, ["image"]),
        ({"question": "and now ?", "max_new_tokens": 5}, ["question", "max_new_tokens"]),
        ({"mode": "budget", "threshold": 0.5}, ["mode"]),  # named once, as the rule
        ({"strategy": "divprune", "mode": "budget"}, ["strategy", "mode"]),
    ],
)
def test_answers_are_compared_with_the_controls_they_were_made_with(changes, changed):
    answered = freshness.answer_signature(**SIGNATURE)
    current = freshness.answer_signature(**{**SIGNATURE, **changes})
    assert freshness.changed_settings(answered, current) == changed
    updates = freshness.freshness_updates(answered, current)
    notice, pruned, full, pruned_time, full_time = updates
    assert notice.visible is bool(changed)
    assert (STALE := freshness.STALE_CLASS) in pruned.elem_classes if changed else not pruned.elem_classes
    for update in (full, pruned_time, full_time):
        assert update.elem_classes == pruned.elem_classes
    assert pruned.label == ("Answer with pruning (out of date)" if changed else "Answer with pruning")
    if changed:
        assert notice.value.startswith("⚠️ **Out of date:**") and "Press **Ask**" in notice.value
        for name in changed:
            assert freshness.SETTING_NAMES[name] in notice.value
        assert STALE == "stale"


@pytest.mark.parametrize(
    "changes, changed",
    [
        ({"threshold": 0.5}, ["threshold"]),  # codebook_diverse drops what the codebook's threshold marks redundant
        ({"keep_ratio": 0.5}, ["keep_ratio"]),
        # divprune reads no threshold: only the strategy is named, not the threshold that only the old one read
        ({"strategy": "divprune", "threshold": 0.5}, ["strategy"]),
    ],
)
def test_a_budget_strategy_that_reads_the_threshold_is_out_of_date_when_it_moves(changes, changed):
    answered = freshness.answer_signature(**{**SIGNATURE, "mode": "budget", "strategy": "codebook_diverse"})
    current = freshness.answer_signature(**{**SIGNATURE, "mode": "budget", "strategy": "codebook_diverse", **changes})
    assert freshness.changed_settings(answered, current) == changed


def test_with_no_answer_yet_nothing_is_marked():
    import gradio as gr

    updates = freshness.freshness_updates(None, freshness.answer_signature(**SIGNATURE))
    assert all(isinstance(update, type(gr.skip())) for update in updates) and len(updates) == 5


def page_step(demo, name: str):
    """One of the page's event handlers (closures inside `build_demo`), by name."""
    return next(fn.fn for fn in demo.fns.values() if fn.name == name)


def test_an_answer_made_while_the_controls_moved_arrives_marked_and_the_overlays_follow_the_controls(backend, tmp_path):
    import gradio as gr

    demo = app.build_demo(backend, examples_dir=tmp_path / "examples")
    on_answered = page_step(demo, "on_answered")
    image = str(sorted((tmp_path / "examples").glob("*.png"))[0])
    controls = [image, "what is it ?", "threshold", 0.9, 0.25, 8, "codebook", False, 0.9]
    asked = freshness.answer_signature(*controls)
    # Unchanged while the answer was made: remembered, unmarked, the answer's own overlays left in place.
    remembered, notice, *_, base, tile, counts, details = on_answered(*controls, asked)
    assert remembered == asked and notice.visible is False
    assert all(isinstance(update, type(gr.skip())) for update in (base, tile, counts, details))
    # The threshold moved meanwhile: marked, and the preview redone for the controls as they are now.
    moved = [image, "what is it ?", "threshold", 0.5, 0.25, 8, "codebook", False, 0.9]
    remembered, notice, pruned, *_, base, tile, counts, details = on_answered(*moved, asked)
    assert remembered == asked and notice.visible is True and "the threshold" in notice.value
    assert freshness.STALE_CLASS in pruned.elem_classes
    assert details["counts"] == images.preview(backend, image, "threshold", 0.5, 0.25, "what is it ?").counts


def test_asking_with_a_missing_input_warns_and_stops_without_marking_outputs(backend, tmp_path):
    import gradio as gr

    on_ask = page_step(app.build_demo(backend, examples_dir=tmp_path / "examples"), "on_ask")
    with pytest.warns(UserWarning, match="pick an example"), pytest.raises(gr.Error) as stop:
        on_ask(None, "what is it ?", "threshold", 0.9, 0.25, 8, "codebook")
    # The error only stops the chain before /answer: invisible, and no traceback printed for it.
    assert stop.value.visible is False and stop.value.print_exception is False
    with pytest.warns(UserWarning, match="image placeholder \\(&lt;image&gt;\\)"), pytest.raises(gr.Error):
        on_ask(
            half_flat(40, 40), "what <image> is", "threshold", 0.9, 0.25, 8, "codebook"
        )  # escaped: the toast is HTML
    with pytest.warns(UserWarning, match="'hired' strategy keeps a token budget"), pytest.raises(gr.Error):
        on_ask(half_flat(40, 40), "what is it ?", "threshold", 0.9, 0.25, 8, "hired")


def test_the_out_of_date_notice_names_what_changed():
    notice = freshness.stale_notice
    assert notice(["image"]).startswith("⚠️ **Out of date:** the image has changed since these answers.")
    assert "the question and max new tokens have changed" in notice(["question", "max_new_tokens"])
    assert "the image, the question and the threshold have" in notice(["image", "question", "threshold"])


def test_a_user_error_is_logged_in_one_line_without_a_traceback(caplog):
    caplog.set_level(logging.INFO, logger="llava_codebook.space")
    error = server.user_error(inputs.InputError("Unknown pruning mode 'x\ny'; choose 'threshold' or 'budget'."))
    assert error.print_exception is False  # Gradio prints no traceback for it either
    (record,) = caplog.records
    assert record.levelno == logging.INFO and record.exc_info is None
    assert record.getMessage() == "Refused a request: Unknown pruning mode 'x y'; choose 'threshold' or 'budget'."
    assert "\n" not in record.getMessage()


def test_an_unexpected_error_keeps_its_traceback_once(caplog):
    caplog.set_level(logging.INFO, logger="llava_codebook.space")
    try:
        raise RuntimeError("disk on fire")
    except RuntimeError as exc:
        error = server.user_error(exc)
    assert "Something went wrong (RuntimeError)" in error.message
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info and record.exc_info[0] is RuntimeError
    assert error.print_exception is False  # logged above with the traceback: not printed a second time


def test_validated_inputs_come_back_typed():
    checked = inputs.validate_inputs(half_flat(20, 20), "  what ?  ", "threshold", 1, 0.5, 4.0)
    assert (checked.question, checked.threshold, checked.max_new_tokens) == ("what ?", 1.0, 4)
    assert isinstance(checked.max_new_tokens, int) and checked.image.mode == "RGB"
    assert checked.overrides == {"pruning_strategy": "codebook", "pruning_mode": "threshold", "codebook_threshold": 1.0}


def test_example_images_are_drawn_in_code_and_show_kept_and_dropped_tokens(backend, tmp_path):
    rows = write_examples(tmp_path)
    assert [Path(path).name for path, _ in rows] == list(SCENES)
    for path, question in rows:
        assert question
        shown = images.preview(backend, path, "threshold", backend.default_threshold, 0.25)
        assert 0 < shown.counts["all"]["kept"] < shown.counts["all"]["total"], path


def test_command_line_options(monkeypatch):
    monkeypatch.delenv("MODEL_ID", raising=False)
    args = app.parse_args([])
    assert args.model is None and args.port is None
    args = app.parse_args(["--model", "org/model", "--codebook", "org/cb", "--port", "7999", "--host", "127.0.0.1"])
    assert (args.model, args.codebook, args.port, args.host) == ("org/model", "org/cb", 7999, "127.0.0.1")
    monkeypatch.setenv("MODEL_ID", "env/model")
    monkeypatch.setenv("CODEBOOK_REPO", "env/cb")
    args = app.parse_args([])
    assert (args.model, args.codebook) == ("env/model", "env/cb")


def test_launch_options_bound_uploads_request_bodies_disk_and_sessions_from_the_environment(
    backend, monkeypatch, tmp_path
):
    for name in ("MAX_UPLOAD_MB", "MAX_REQUEST_KB", "FILE_CACHE_MB", "MAX_SESSIONS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "cache"))
    demo = app.build_demo(backend, examples_dir=tmp_path / "examples")
    options = app.launch_options(demo)
    assert options["max_file_size"] == 25 * 2**20
    assert options["state_session_capacity"] == 500
    body_limits, admission = options["app_kwargs"]["middleware"]
    assert body_limits.cls is server.RequestBodyLimits and admission.cls is disk.UploadAdmission
    assert body_limits.kwargs == {"body_bytes": 256 * 1024, "upload_bytes": 25 * 2**20 + limits.MULTIPART_SLACK}
    assert admission.kwargs["cache"] is demo.file_cache and demo.file_cache.max_bytes == 1024 * 2**20
    assert demo.file_cache.root == (tmp_path / "cache").resolve()
    assert demo.delete_cache is None  # Gradio's own sweep, which dies under concurrent uploads, never runs
    monkeypatch.setenv("MAX_UPLOAD_MB", "4")
    monkeypatch.setenv("MAX_REQUEST_KB", "32")
    monkeypatch.setenv("MAX_SESSIONS", "7")
    options = app.launch_options(demo)
    assert options["max_file_size"] == 4 * 2**20 and options["state_session_capacity"] == 7
    assert options["app_kwargs"]["middleware"][0].kwargs["body_bytes"] == 32 * 1024
    monkeypatch.setenv("MAX_REQUEST_KB", "-1")
    with pytest.raises(ValueError, match="MAX_REQUEST_KB"):
        app.launch_options(demo)


def test_the_file_cache_bound_and_schedule_come_from_the_environment(monkeypatch):
    for name in ("FILE_CACHE_MB", "MAX_UPLOAD_MB", "CACHE_SWEEP_SECONDS", "CACHE_MAX_AGE_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    assert limits.file_cache_bytes() == 1024 * 2**20
    assert limits.file_cache_schedule() == (60, 600)
    monkeypatch.setenv("FILE_CACHE_MB", "80")
    monkeypatch.setenv("CACHE_SWEEP_SECONDS", "5")
    monkeypatch.setenv("CACHE_MAX_AGE_SECONDS", "30")
    assert limits.file_cache_bytes() == 80 * 2**20
    assert limits.file_cache_schedule() == (5, 30)
    monkeypatch.setenv("FILE_CACHE_MB", "60")  # its uploads' three quarters hold less than two 25 MB uploads
    with pytest.raises(ValueError, match=r"\$FILE_CACHE_MB \(60\) must leave room for two of the largest uploads"):
        limits.file_cache_bytes()


def test_zerogpu_calls_carry_only_picklable_values_and_never_the_model(backend, monkeypatch):
    """On ZeroGPU, `@spaces.GPU` runs the model calls in a worker: what crosses must pickle, and the model must not."""
    import importlib
    import pickle

    crossings = []

    def fake_gpu_worker(reference, *args):
        module, name = reference.split(":")
        crossings.append(name)
        payload = pickle.dumps(args)
        assert backend.model.__class__.__name__.encode() not in payload
        result = getattr(importlib.import_module(module), name)(gpu._SERVED["backend"], *pickle.loads(payload))
        return pickle.loads(pickle.dumps(result))

    monkeypatch.setattr(gpu, "HAS_SPACES", True)
    monkeypatch.setattr(gpu, "_on_served_gpu", fake_gpu_worker)
    monkeypatch.setitem(gpu._SERVED, "backend", backend)
    result = images.answer(backend, half_flat(160, 96, seed=21), "what is it ?", "budget", 0.9, 0.5, 3)
    assert crossings == ["family_features", "generate_both"]
    assert (
        result.generations.pruned_text and result.preview.counts["all"]["kept"] < result.preview.counts["all"]["total"]
    )


def test_a_saved_checkpoint_is_served_as_a_real_model(tmp_path):
    """The MODEL_ID path, offline: a pruning-enabled checkpoint directory (the tiny default, saved) is loaded with its
    codebook and processor, announced by name, and previews like any model."""
    from llava_codebook.tiny import build_tiny_default

    directory = build_tiny_default(tmp_path / "checkpoint", threshold=0.85)
    served = model.load_backend(str(directory))
    assert not served.is_demo, served.notice
    assert str(directory) in served.notice and "prototypes" in served.notice
    assert served.default_threshold == pytest.approx(0.85)
    shown = images.preview(served, half_flat(150, 90, seed=5), "threshold", 0.85, 0.25)
    assert 0 < shown.counts["all"]["kept"] < shown.counts["all"]["total"]


# ---------------------------------------------------------------------------------------------------- strategies
PEERS = ["codebook_diverse", "cls_attention", "visionzip", "divprune", "hired", "random", "uniform"]


def test_the_demo_offers_every_strategy_for_images(backend):
    assert backend.strategies("image") == ("codebook", *PEERS)


@pytest.mark.parametrize("strategy", PEERS)
def test_each_strategy_previews_what_the_model_keeps_when_it_answers(backend, strategy):
    """The overlay re-scored from the cached encoding shows the tokens the model drops in `generate` with that
    strategy: same kept indices (and the same count of merged tokens), at the budget asked for."""
    image = half_flat(150, 90, seed=50)
    shown = images.preview(backend, image, "budget", 0.9, 0.5, "", None, strategy)
    with backend.model.record_selections() as made:
        model.generate_both(backend, image, "what ?", inputs.pruning_overrides("budget", 0.9, 0.5, strategy), 2)
    (selection,) = made
    assert selection.strategy == strategy
    assert selection.kept_indices[0].tolist() == shown.selection.kept_indices[0].tolist()
    scored = shown.counts["scored"]
    if strategy != "codebook_diverse":  # it keeps no redundant token beyond the minimum: at most the budget
        assert scored["kept"] == round(0.5 * scored["total"])
    assert f"**Strategy:** {inputs.STRATEGY_LABELS[strategy]}" in shown.markdown


def test_visionzip_reports_its_merged_tokens(backend):
    shown = images.preview(backend, half_flat(150, 90, seed=51), "budget", 0.9, 0.8, "", None, "visionzip")
    selection = shown.selection
    own = backend.cache.get(encoding.image_key(half_flat(150, 90, seed=51))).packed[selection.kept_indices[0]]
    merged = int((selection.merged_features[0] != own).any(-1).sum())
    assert merged > 0 and shown.counts["merged"] == merged
    assert f"{merged} of the kept tokens are contextual tokens carrying merged features" in shown.markdown


def naive_overlap(kept_a: list[int], kept_b: list[int], scored: list[int]) -> dict:
    a, b, scored = set(kept_a) & set(scored), set(kept_b) & set(scored), set(scored)
    union = a | b
    return {
        "both": len(a & b),
        "only_a": len(a - b),
        "only_b": len(b - a),
        "neither": len(scored - union),
        "jaccard": len(a & b) / len(union) if union else 1.0,
    }


@pytest.mark.parametrize("pair", [("codebook", "divprune"), ("cls_attention", "hired"), ("visionzip", "random")])
def test_two_strategies_compared_at_one_budget_show_each_ones_selection_and_their_overlap(backend, pair):
    image = half_flat(150, 90, seed=52)
    with tower_passes(backend) as calls:
        result = images.compare(backend, image, *pair, 0.4, 0.9, "what ?")
        again = images.compare(backend, image, *reversed(pair), 0.2, 0.9, "what ?")
    assert len(calls) <= 1, "both strategies, both budgets: one tower pass at most (none once the image is cached)"
    for side, strategy in zip((result.left, result.right), pair):
        alone = images.preview(backend, image, "budget", 0.9, 0.4, "what ?", None, strategy)
        assert side.counts == alone.counts and side.flops == alone.flops
        assert side.selection.kept_indices[0].tolist() == alone.selection.kept_indices[0].tolist()
        assert np.array_equal(np.asarray(side.base_overlay), np.asarray(alone.base_overlay))
    newline = backend.cache.get(encoding.image_key(image)).newline
    scored = (~newline).nonzero().squeeze(-1).tolist()
    kept = [side.selection.kept_indices[0].tolist() for side in (result.left, result.right)]
    want = naive_overlap(*kept, scored)
    assert result.overlap["jaccard"] == pytest.approx(want.pop("jaccard"))
    assert {k: result.overlap[k] for k in want} == want
    assert f"| tokens | A: {pair[0]} | B: {pair[1]} |" in result.markdown
    assert f"Jaccard overlap of the kept sets **{result.overlap['jaccard']:.2f}**" in result.markdown
    assert (
        again.strategies == tuple(reversed(pair))
        and again.left.counts["scored"]["kept"] < result.left.counts["scored"]["kept"]
    )


def test_a_comparison_of_a_strategy_with_itself_agrees_fully(backend):
    result = images.compare(backend, half_flat(150, 90, seed=53), "divprune", "divprune", 0.3, 0.9)
    assert result.overlap["jaccard"] == 1.0 and result.overlap["only_a"] == result.overlap["only_b"] == 0


def test_comparison_inputs_are_checked_like_every_other(backend):
    image = half_flat(40, 40)
    with pytest.raises(inputs.InputError, match="Unknown pruning strategy 'fastest'"):
        images.compare(backend, image, "codebook", "fastest", 0.3, 0.9)
    with pytest.raises(inputs.InputError, match=r"The token budget must lie in \(0, 1\]; got 1.5"):
        images.compare(backend, image, "codebook", "divprune", 1.5, 0.9)
    with pytest.raises(inputs.InputError, match="The threshold must be a finite number"):
        images.compare(backend, image, "codebook_diverse", "divprune", 0.3, float("nan"))
    with pytest.raises(inputs.MissingImage):
        images.compare(backend, None, "codebook", "divprune", 0.3, 0.9)


def test_requests_for_one_new_image_at_once_run_the_tower_once(backend):
    import threading

    image = half_flat(150, 90, seed=54)
    start = threading.Barrier(3, timeout=30)
    errors = []

    def request(run):
        try:
            start.wait()
            run()
        except Exception as exc:  # reported below
            errors.append(exc)

    runs = [
        lambda: images.preview(backend, image, "threshold", 0.9, 0.3),
        lambda: images.compare(backend, image, "codebook", "hired", 0.3, 0.9),
        lambda: images.preview(backend, image, "budget", 0.9, 0.3, "", None, "visionzip"),
    ]
    with tower_passes(backend) as calls:
        threads = [threading.Thread(target=request, args=(run,)) for run in runs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert not errors, errors
    assert len(calls) == 1


def test_the_strategy_control_offers_only_the_rules_a_strategy_has(backend, tmp_path):
    demo = app.build_demo(backend, examples_dir=tmp_path / "examples")
    on_strategy = page_step(demo, "on_strategy")
    mode, threshold, budget = on_strategy("divprune", "threshold")
    assert mode.choices == [("budget", "budget")] and mode.value == "budget"
    assert threshold.visible is False and budget.visible is True
    mode, threshold, budget = on_strategy("codebook_diverse", "budget")  # reads the codebook's threshold too
    assert mode.value == "budget" and threshold.visible is True and budget.visible is True
    mode, threshold, budget = on_strategy("codebook", "budget")
    assert [c[1] for c in mode.choices] == ["threshold", "budget"] and mode.value == "budget"
    assert threshold.visible is False and budget.visible is True
