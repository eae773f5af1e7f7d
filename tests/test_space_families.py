"""The Space serving each model family from a checkpoint directory (as `MODEL_ID` names one), and videos as a strip.

Each family's checkpoint is the Hub-shaped fixture of `hub_fixtures` (stock class, stock processor files, a video
processor config naming the torchvision processor), loaded by `model.load_backend` with a codebook directory, as
`MODEL_ID=... CODEBOOK_REPO=...` would. The oracle for every kept / dropped token is the model's own forward pass on
the same inputs (`visual_token_selection.keep_masks()`).
"""

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
import torch  # noqa: E402
from hub_fixtures import OTHER_FAMILIES, build_stock_checkpoint  # noqa: E402
from PIL import Image  # noqa: E402

from llava_codebook import RedundancyCodebook, load_pruned_model  # noqa: E402
from spaces_app import app, freshness, images, inputs, limits, model, render, video_inputs, videos  # noqa: E402

FAMILY_NAMES = list(OTHER_FAMILIES)
VIDEO_FAMILIES = [name for name, spec in OTHER_FAMILIES.items() if spec.video_token is not None]
EXPECTED_FAMILY = {
    "llava-1.5-7b": "llava",
    "llava-onevision-qwen2-7b-ov": "llava_onevision",
    "llava-next-video-7b": "llava_next_video",
}
THRESHOLD = 0.99


def bright_noise(width: int, height: int, seed: int) -> Image.Image:
    """Noise in [140, 255]: a dropped cell (darkened 70 % towards near-black) is then plainly darker than a kept one."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(140, 256, (height, width, 3), dtype=np.uint8))


def write_gif(path: Path, frames: list[Image.Image]) -> str:
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return str(path)


def family_backend(name: str, root: Path) -> "model.Backend":
    """The Space's backend for family `name`, loaded from its Hub-shaped checkpoint under `root` with a codebook built
    from its own image features (every third token of a picture), so that every image and video loses some tokens at
    `THRESHOLD`: what `MODEL_ID=... CODEBOOK_REPO=...` would serve."""
    from llava_codebook.families import family_for_model_type

    checkpoint = build_stock_checkpoint(name, root / name)
    pruned = load_pruned_model(checkpoint, dtype=torch.float32, pruning_strategy="none")
    processor = model.load_processor(str(checkpoint), family_for_model_type(pruned.config.model_type))
    call = processor.image_processor(images=[bright_noise(150, 90, 1)], return_tensors="pt")
    with torch.no_grad():
        features = pruned.model.encode_for_pruning("image", dict(call)).packed[0]
    codebook_dir = root / f"{name}-codebook"
    RedundancyCodebook(features[::3].detach().clone()).save_pretrained(codebook_dir)
    return model.load_backend(str(checkpoint), str(codebook_dir))


@pytest.fixture(scope="module")
def served_families(tmp_path_factory):
    """family -> Backend (`family_backend`)."""
    root = tmp_path_factory.mktemp("space-families")
    return {name: family_backend(name, root) for name in FAMILY_NAMES}


def model_keep_mask(backend, kind: str, media, question: str = "what is this ?", **overrides) -> np.ndarray:
    """The model's own forward pass on the processor's inputs: its keep mask of the one image or video."""
    media_kwargs = {"videos": [media]} if kind == "video" else {"images": [media]}
    prompt = [model.build_prompt(backend.processor, question, kind)]
    inputs = backend.processor(**media_kwargs, text=prompt, return_tensors="pt")
    inputs = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    with torch.no_grad():
        out = backend.model(**inputs, **overrides)
    (keep,) = out.visual_token_selection.keep_masks()
    return keep.numpy()


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_each_family_is_served_from_its_checkpoint_with_overlays_and_counts_of_the_models_own_selection(
    served_families, name
):
    backend = served_families[name]
    assert not backend.is_demo and backend.family == EXPECTED_FAMILY[name]
    assert backend.takes_video == (name in VIDEO_FAMILIES)
    image = bright_noise(150, 90, 2)
    shown = images.preview(backend, image, "threshold", THRESHOLD, 0.25)
    keep = shown.selection.keep_masks()[0].numpy()
    assert np.array_equal(keep, model_keep_mask(backend, "image", image, codebook_threshold=THRESHOLD))
    assert 0 < shown.counts["all"]["kept"] < shown.counts["all"]["total"] == keep.size
    assert shown.counts["all"]["kept"] == int(keep.sum())
    assert shown.counts["scored"]["total"] + shown.counts["newline"]["total"] == keep.size
    assert max(shown.base_overlay.size) == render.OVERLAY_SIDE
    # LLaVA-1.5 has one view and no tiles; the AnyRes families draw their tiles too.
    assert (shown.tile_overlay is None) == (name == "llava-1.5-7b")
    assert "Kept" in shown.markdown and "FLOPs" in shown.markdown


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_each_family_compares_the_strategies_it_offers_with_the_models_own_selections(served_families, name):
    """Every strategy a family's page offers, re-scored from the one cached encoding, keeps what the model's own
    forward pass keeps with it; a family whose tower cannot rank by [CLS] attention does not offer those rules."""
    backend = served_families[name]
    offered = backend.strategies("image")
    cls_rules = {"cls_attention", "visionzip", "hired"}
    assert cls_rules.isdisjoint(offered) == (name == "llava-onevision-qwen2-7b-ov")
    image = bright_noise(150, 90, 4)
    for strategy_a, strategy_b in zip(offered, offered[1:] + offered[:1]):
        result = images.compare(backend, image, strategy_a, strategy_b, 0.3, THRESHOLD)
        for side, strategy in ((result.left, strategy_a), (result.right, strategy_b)):
            keep = side.selection.keep_masks()[0].numpy()
            settings = inputs.pruning_overrides("budget", THRESHOLD, 0.3, strategy)
            assert np.array_equal(keep, model_keep_mask(backend, "image", image, **settings)), (name, strategy)
        assert (result.left.tile_overlay is None) == (name == "llava-1.5-7b")
    if name == "llava-onevision-qwen2-7b-ov":
        with pytest.raises(inputs.InputError, match="'hired' strategy ranks tokens by the vision tower's \\[CLS\\]"):
            images.compare(backend, image, "codebook", "hired", 0.3, THRESHOLD)


def test_llava_one_view_is_drawn_over_the_centre_crop_with_each_cell_as_the_model_kept_it(served_families):
    backend = served_families["llava-1.5-7b"]
    image = bright_noise(150, 90, 3)
    shown = images.preview(backend, image, "threshold", THRESHOLD, 0.25)
    keep = shown.selection.keep_masks()[0].numpy()
    views = render.grid_views(
        np.zeros(keep.size), np.zeros(keep.size, bool), image.size, backend.processor.image_processor
    )
    view = views["base"]
    x0, _, x1, _ = view.region
    assert (x0, x1) == pytest.approx((30.0, 120.0))  # the 90 x 90 centre crop of a 150 x 90 picture
    overlay = np.asarray(shown.base_overlay, dtype=float)
    scale = (overlay.shape[1] / image.width, overlay.shape[0] / image.height)
    centres = render.cell_centres(view.shape, view.region, scale)
    brightness = overlay.mean(-1)
    seen = np.array([[brightness[int(y), int(x)] > 110 for x, y in row] for row in centres])
    assert np.array_equal(seen, view.keep_grid(keep))
    assert overlay[overlay.shape[0] // 2, 2, 1] < overlay[overlay.shape[0] // 2, 2, 0]  # magenta outside the crop


@pytest.mark.parametrize("name", VIDEO_FAMILIES)
def test_a_video_is_a_strip_with_one_panel_per_frame_whose_cells_are_the_models_keep_mask(
    served_families, name, tmp_path
):
    backend = served_families[name]
    clip = [bright_noise(80, 60, 10 + i) for i in range(4)]
    path = write_gif(tmp_path / "clip.gif", clip)
    frames = video_inputs.check_video(path, allowed_dirs=[tmp_path.resolve()])
    assert len(frames) == 4
    for mode, settings in (("threshold", {"codebook_threshold": THRESHOLD}), ("budget", {"keep_ratio": 0.4})):
        shown = videos.preview_video(backend, path, mode, THRESHOLD, 0.4, allowed_dirs=[tmp_path.resolve()])
        keep = shown.selection.keep_masks()[0].numpy()
        assert np.array_equal(keep, model_keep_mask(backend, "video", frames, pruning_mode=mode, **settings))
        assert shown.selection.modalities == ["video"]
        assert len(shown.layout.boxes) == len(shown.grids) == 4
        assert [c["kept"] for c in shown.counts["frames"]] == [int(keep[g].sum()) for g in shown.grids]
        assert 0 < shown.counts["all"]["kept"] < shown.counts["all"]["total"]
        strip = np.asarray(shown.strip, dtype=float).mean(-1)
        boxes = shown.layout.boxes
        assert all(b0[2] < b1[0] for b0, b1 in zip(boxes, boxes[1:]))  # left to right, side by side
        for frame, grid, (px0, py0, px1, py1) in zip(frames, shown.grids, boxes):
            region = render.base_region(frame.size, backend.processor.video_processor)
            scale = ((px1 - px0) / frame.width, (py1 - py0) / frame.height)
            centres = render.cell_centres(grid.shape, region, scale)
            drawn = np.array([[strip[int(py0 + y), int(px0 + x)] > 110 for x, y in row] for row in centres])
            assert np.array_equal(drawn, keep[grid]), f"frame panel at {px0} differs from the model's keep mask"


@pytest.mark.parametrize("name", VIDEO_FAMILIES)
def test_a_video_answer_runs_with_and_without_pruning(served_families, name, tmp_path):
    backend = served_families[name]
    path = write_gif(tmp_path / "clip.gif", [bright_noise(80, 60, 20 + i) for i in range(3)])
    result = videos.answer_video(backend, path, "what is this ?", "budget", THRESHOLD, 0.4, 3, [tmp_path.resolve()])
    made = result.generations
    dropped = result.preview.counts["all"]["total"] - result.preview.counts["all"]["kept"]
    assert made.full_prompt_tokens - made.pruned_prompt_tokens == dropped > 0
    assert made.pruned_text and made.full_text


def test_video_paths_are_confined_and_every_unreadable_file_gets_one_message(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    outside = write_gif(tmp_path / "outside.gif", [bright_noise(20, 20, i) for i in range(2)])
    (allowed / "notes.gif").write_text("not a picture")
    (allowed / "link.gif").symlink_to(outside)
    for bad in (
        outside,
        str(allowed / "notes.gif"),
        str(allowed / "link.gif"),
        str(allowed / "missing.gif"),
        str(allowed / ".." / "outside.gif"),
        str(allowed),
    ):
        with pytest.raises(inputs.InputError) as caught:
            video_inputs.check_video({"path": bad}, allowed_dirs=[allowed.resolve()])
        assert str(caught.value) == video_inputs.UNREADABLE_VIDEO, bad
    with pytest.raises(inputs.MissingImage):
        video_inputs.check_video(None)
    inside = write_gif(allowed / "ok.gif", [bright_noise(20, 20, i) for i in range(12)])
    frames = video_inputs.check_video({"path": inside}, allowed_dirs=[allowed.resolve()])
    assert len(frames) == limits.VIDEO_FRAMES and all(f.mode == "RGB" and f.size == (20, 20) for f in frames)


def test_a_video_with_too_many_frames_is_refused_before_its_frames_are_decoded(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "MAX_VIDEO_FILE_FRAMES", 5)
    path = write_gif(tmp_path / "long.gif", [bright_noise(20, 20, i) for i in range(6)])
    with pytest.raises(inputs.InputError, match="6 frames"):
        video_inputs.check_video(path, allowed_dirs=[tmp_path.resolve()])


def test_the_embedded_default_stays_the_offline_llava_next_demo_without_a_video_section():
    backend = model.load_backend(None)
    assert backend.is_demo and backend.family == "llava_next" and not backend.takes_video
    with pytest.raises(inputs.InputError, match="does not take videos"):
        videos.preview_video(backend, [bright_noise(20, 20, 0)], "threshold", 0.5, 0.25)


# ---------------------------------------------------------------------------------------------------- served
@pytest.fixture(scope="module")
def served_video(served_families, tmp_path_factory):
    """The OneVision backend served on 127.0.0.1 with the app's own launch options, and its upload cache."""
    from space_helpers import launch_on_a_free_port

    with pytest.MonkeyPatch.context() as patch:
        cache = tmp_path_factory.mktemp("gradio-cache-video")
        patch.setenv("GRADIO_TEMP_DIR", str(cache))
        demo = app.build_demo(
            served_families["llava-onevision-qwen2-7b-ov"], examples_dir=tmp_path_factory.mktemp("examples")
        )
        url = launch_on_a_free_port(demo, **app.launch_options(demo))
        try:
            yield url
        finally:
            demo.close()


def test_a_served_video_family_takes_an_uploaded_video_end_to_end_and_refuses_paths_outside(
    served_families, served_video, tmp_path
):
    gradio_client = pytest.importorskip("gradio_client")
    from space_helpers import call_raw

    client = gradio_client.Client(served_video, verbose=False, download_files=True)
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/preview", "/answer", "/preview_video", "/answer_video"} <= names
    clip = [bright_noise(80, 60, 30 + i) for i in range(4)]
    path = write_gif(tmp_path / "clip.gif", clip)
    strip, markdown, details = client.predict(
        gradio_client.handle_file(path), "budget", THRESHOLD, 0.4, "", api_name="/preview_video"
    )
    backend = served_families["llava-onevision-qwen2-7b-ov"]
    expected = videos.preview_video(backend, path, "budget", THRESHOLD, 0.4, allowed_dirs=[tmp_path.resolve()])
    assert details["counts"] == expected.counts and markdown == expected.markdown
    assert np.array_equal(np.asarray(Image.open(strip).convert("RGB")), np.asarray(expected.strip))
    answer = client.predict(
        gradio_client.handle_file(path), "what is this ?", "budget", THRESHOLD, 0.4, 3, api_name="/answer_video"
    )
    assert answer[3] and answer[5] and "prompt of" in answer[4]
    # A path outside the upload cache and the examples: the one generic message, for the video input too.
    for api_name, data in (
        (
            "preview_video",
            [{"path": path, "meta": {"_type": "gradio.FileData"}}, "budget", THRESHOLD, 0.4, "", "codebook"],
        ),
        ("answer_video", [{"path": path}, "what ?", "budget", THRESHOLD, 0.4, 3, "codebook"]),
    ):
        assert call_raw(served_video, api_name, data) == ("error", video_inputs.UNREADABLE_VIDEO)
    # The strategy selector reaches the video too: a peer that reads the features alone re-scores the cached frames,
    # one that needs the tower's [CLS] attention is refused with the strategies that apply.
    strip, markdown, details = client.predict(
        gradio_client.handle_file(path), "budget", THRESHOLD, 0.4, "", "divprune", api_name="/preview_video"
    )
    expected = videos.preview_video(
        backend, path, "budget", THRESHOLD, 0.4, allowed_dirs=[tmp_path.resolve()], strategy="divprune"
    )
    assert details["counts"] == expected.counts and "divprune" in markdown
    _, refused, _ = client.predict(
        gradio_client.handle_file(path), "budget", THRESHOLD, 0.4, "", "cls_attention", api_name="/preview_video"
    )
    assert "'cls_attention' strategy ranks tokens by the vision tower's [CLS] attention" in refused
    assert "choose one of: codebook, codebook_diverse, divprune, random, uniform" in refused


@pytest.mark.parametrize("kind", ["gif", "png", "webp"])
def test_a_served_video_family_refuses_a_later_frame_larger_than_the_first_over_http(served_video, tmp_path, kind):
    """A 16x16 first frame and a 12000x12000 second one: refused with the frames' sizes, by the client and by raw HTTP,
    by the preview (in place) and the answer (an error), never "Something went wrong"."""
    gradio_client = pytest.importorskip("gradio_client")
    from animation_files import animated, noise_frames, set_frame_box
    from gradio_client.exceptions import AppError
    from space_helpers import call_raw, file_payload, upload_raw

    bomb = tmp_path / f"bomb.{kind}"
    bomb.write_bytes(set_frame_box(animated(kind, noise_frames(2)), kind, 1, 0, 0, 12000, 12000))
    message = "That video's frames do not fit together: frame 2 is 12000x12000 pixels at (0, 0)"
    client = gradio_client.Client(served_video, verbose=False)
    upload = gradio_client.handle_file(str(bomb))
    strip, counts, details = client.predict(upload, "budget", THRESHOLD, 0.4, "", api_name="/preview_video")
    assert strip is None and details == {} and message in counts
    with pytest.raises(AppError, match=re.escape(message)):
        client.predict(upload, "what ?", "budget", THRESHOLD, 0.4, 3, api_name="/answer_video")
    uploaded = file_payload(upload_raw(served_video, bomb))
    event, error = call_raw(served_video, "answer_video", [uploaded, "what ?", "budget", THRESHOLD, 0.4, 3, "codebook"])
    assert event == "error" and error.startswith(message), error
    event, outputs = call_raw(served_video, "preview_video", [uploaded, "budget", THRESHOLD, 0.4, "", "codebook"])
    assert event == "complete" and message in outputs[1]


def test_null_is_a_bad_value_for_every_number_the_video_endpoints_take(served_video, tmp_path):
    gradio_client = pytest.importorskip("gradio_client")
    from gradio_client.exceptions import AppError
    from space_helpers import call_raw, file_payload, upload_raw

    path = write_gif(tmp_path / "clip.gif", [bright_noise(40, 30, 50 + i) for i in range(3)])
    clip = file_payload(upload_raw(served_video, path))
    for position, message in ((3, "The threshold"), (4, "The token budget"), (5, "max_new_tokens")):
        data = [clip, "what ?", "budget", THRESHOLD, 0.4, 3, "codebook"]
        data[position] = None
        assert call_raw(served_video, "answer_video", data) == ("error", f"{message} must be a number; got nothing.")
    for position, message in ((2, "The threshold"), (3, "The token budget")):
        data = [clip, "budget", THRESHOLD, 0.4, "", "codebook"]
        data[position] = None
        event, outputs = call_raw(served_video, "preview_video", data)
        assert event == "complete" and f"{message} must be a number; got nothing." in outputs[1]
    client = gradio_client.Client(served_video, verbose=False)
    with pytest.raises(AppError, match="max_new_tokens must be a number; got nothing."):
        client.predict(
            gradio_client.handle_file(path), "what ?", "budget", THRESHOLD, 0.4, None, api_name="/answer_video"
        )


def test_video_answers_are_marked_out_of_date_when_a_control_they_were_made_with_moves(served_families, tmp_path):
    import gradio as gr

    backend = served_families["llava-onevision-qwen2-7b-ov"]
    examples = tmp_path / "examples"
    demo = app.build_demo(backend, examples_dir=examples)
    steps = {fn.name: fn.fn for fn in demo.fns.values()}
    path = write_gif(examples / "clip.gif", [bright_noise(80, 60, 40 + i) for i in range(3)])
    controls = [{"path": path}, "what is it ?", "budget", THRESHOLD, 0.4, 3, "codebook"]
    *outputs, made_with = steps["on_video_answer"](*controls)
    assert outputs[3] and made_with == freshness.answer_signature(*controls)
    mark = steps["on_video_controls_changed"]
    notice, pruned, *_ = mark(*controls, made_with)
    assert notice.visible is False and not pruned.elem_classes
    notice, pruned, full, *_ = mark(*controls[:4], 0.6, *controls[5:], made_with)
    assert (
        notice.visible and "the token budget has changed" in notice.value and "**Ask about the video**" in notice.value
    )
    assert freshness.STALE_CLASS in pruned.elem_classes and pruned.label == "Answer with pruning (out of date)"
    notice, *_ = mark({"path": str(examples / "other.gif")}, *controls[1:], made_with)
    assert "the video has changed" in notice.value
    notice, *_ = mark(*controls[:6], "divprune", made_with)
    assert "the strategy has changed" in notice.value
    # Nothing answered yet: nothing to mark.
    assert all(isinstance(update, type(gr.skip())) for update in mark(*controls, None))
