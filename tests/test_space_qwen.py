"""The Space serving Qwen2-VL, Qwen2.5-VL and Qwen3-VL from their Hub-shaped checkpoints, images and videos.

Each member's checkpoint is the `qwen_fixtures` replica (stock class, stock processor files naming the torchvision
video processor), loaded by `model.load_backend` with a codebook directory, as `MODEL_ID=... CODEBOOK_REPO=...` would.
The oracle for every kept / dropped token is the model's own forward pass on the same inputs
(`visual_token_selection.keep_masks()`); the merged-token grid each overlay must have is read from the stock
processor's own `image_grid_thw` / `video_grid_thw` (patches, merged 2 x 2), and a video's temporal patches are its
frames in twos (the last repeated when the count is odd).
"""

import os
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
from PIL import Image  # noqa: E402
from qwen_fixtures import build_stock_checkpoint, build_stock_processor  # noqa: E402

from llava_codebook import RedundancyCodebook, load_pruned_model  # noqa: E402
from spaces_app import app, images, inputs, model, render, video_inputs, videos  # noqa: E402

FAMILIES = {"qwen2-vl-2b": "qwen2_vl", "qwen2.5-vl-3b": "qwen2_5_vl", "qwen3-vl-2b": "qwen3_vl"}
OFFERED = ("codebook", "codebook_diverse", "divprune", "random", "uniform")
CLS_RULES = ("cls_attention", "visionzip", "hired")
THRESHOLD = 0.99
IMAGE_SIZE = (150, 90)  # width, height
FRAMES = 5  # odd: the last temporal patch repeats the fifth frame


def bright_noise(width: int, height: int, seed: int) -> Image.Image:
    """Noise in [140, 255]: a dropped cell (darkened 70 % towards near-black) is then plainly darker than a kept one."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(140, 256, (height, width, 3), dtype=np.uint8))


def the_image() -> Image.Image:
    return bright_noise(*IMAGE_SIZE, seed=2)


def the_clip() -> list[Image.Image]:
    return [bright_noise(80, 60, 10 + i) for i in range(FRAMES)]


def write_gif(path: Path, frames: list[Image.Image]) -> str:
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return str(path)


def qwen_backend(name: str, root: Path) -> "model.Backend":
    """The Space's backend for `name`, from its Hub-shaped checkpoint, with a codebook of every third merged token of
    the test image and the test clip, so that both lose some tokens at `THRESHOLD`."""
    checkpoint = build_stock_checkpoint(name, root / name)
    pruned = load_pruned_model(checkpoint, dtype=torch.float32, pruning_strategy="none")
    processor = build_stock_processor(name)
    rows = []
    with torch.no_grad():
        call = processor.image_processor(images=[the_image()], return_tensors="pt")
        rows.append(pruned.model.encode_for_pruning("image", dict(call)).packed[0][::3])
        call = processor.video_processor(videos=[the_clip()], return_tensors="pt")
        rows.append(pruned.model.encode_for_pruning("video", dict(call)).packed[0][::3])
    codebook_dir = root / f"{name}-codebook"
    RedundancyCodebook(torch.cat(rows).detach().clone()).save_pretrained(codebook_dir)
    return model.load_backend(str(checkpoint), str(codebook_dir))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("space-qwen")
    return {name: qwen_backend(name, root) for name in FAMILIES}


def model_keep_mask(backend, kind: str, media, **overrides) -> np.ndarray:
    """The model's own forward pass on the processor's inputs: its keep mask of the one image or video."""
    media_kwargs = {"videos": [media]} if kind == "video" else {"images": [media]}
    prompt = [model.build_prompt(backend.processor, "what is this ?", kind)]
    encoded = backend.processor(**media_kwargs, text=prompt, return_tensors="pt")
    encoded = {k: v for k, v in encoded.items() if isinstance(v, torch.Tensor)}
    with torch.no_grad():
        out = backend.model(**encoded, **overrides)
    (keep,) = out.visual_token_selection.keep_masks()
    return keep.numpy()


def merged_grid(name: str, kind: str, media) -> tuple[int, int, int]:
    """(temporal patches, rows, cols) of merged tokens, from the stock processor's own grid in patches."""
    processor = build_stock_processor(name)
    if kind == "image":
        grid = processor.image_processor(images=[media], return_tensors="pt")["image_grid_thw"]
    else:
        grid = processor.video_processor(videos=[media], return_tensors="pt")["video_grid_thw"]
    t, h, w = (int(v) for v in grid[0])
    return t, h // 2, w // 2


def drawn_cells(picture: Image.Image, grid_shape, region, size, offset=(0, 0)) -> np.ndarray:
    """Which cells of a grid over `region` of a picture of `size` look kept (bright) where it was drawn."""
    pixels = np.asarray(picture, dtype=float).mean(-1)
    x0, y0, x1, y1 = offset[0], offset[1], offset[0] + size[0], offset[1] + size[1]
    scale = ((x1 - x0) / region[2], (y1 - y0) / region[3])
    centres = render.cell_centres(grid_shape, region, scale)
    return np.array([[pixels[int(y0 + y), int(x0 + x)] > 110 for x, y in row] for row in centres])


@pytest.mark.parametrize("name", FAMILIES)
def test_each_qwen_family_is_served_and_draws_its_merged_tokens_as_the_model_kept_them(served, name):
    backend = served[name]
    assert not backend.is_demo and backend.family == FAMILIES[name] and backend.takes_video
    assert not backend.anyres_geometry and "merged tokens" in backend.notice
    image = the_image()
    shown = images.preview(backend, image, "threshold", THRESHOLD, 0.25)
    keep = shown.selection.keep_masks()[0].numpy()
    assert np.array_equal(keep, model_keep_mask(backend, "image", image, codebook_threshold=THRESHOLD))
    _, rows, cols = merged_grid(name, "image", image)
    assert keep.size == rows * cols and 0 < keep.sum() < keep.size
    assert (shown.counts["all"]["kept"], shown.counts["all"]["total"]) == (int(keep.sum()), keep.size)
    assert shown.counts["newline"]["total"] == 0 and shown.counts["tile"]["total"] == 0
    assert shown.tile_overlay is None and max(shown.base_overlay.size) == render.OVERLAY_SIDE
    assert f"| merged tokens ({rows}×{cols}) | {int(keep.sum())} | {keep.size} |" in shown.markdown
    assert "row newlines" not in shown.markdown and "FLOPs" in shown.markdown
    # The overlay: the merged grid in raster order over the whole image (Qwen resizes, it does not crop).
    whole = (0.0, 0.0, float(image.width), float(image.height))
    drawn = drawn_cells(shown.base_overlay, (rows, cols), whole, shown.base_overlay.size)
    assert np.array_equal(drawn, keep.reshape(rows, cols))


@pytest.mark.parametrize("name", FAMILIES)
def test_each_qwen_family_offers_and_compares_only_the_strategies_without_cls_and_refuses_tile_skipping(served, name):
    backend = served[name]
    assert backend.strategies("image") == backend.strategies("video") == OFFERED
    image = the_image()
    for strategy_a, strategy_b in zip(OFFERED, OFFERED[1:] + OFFERED[:1]):
        result = images.compare(backend, image, strategy_a, strategy_b, 0.3, THRESHOLD)
        for side, strategy in ((result.left, strategy_a), (result.right, strategy_b)):
            keep = side.selection.keep_masks()[0].numpy()
            settings = inputs.pruning_overrides("budget", THRESHOLD, 0.3, strategy)
            assert np.array_equal(keep, model_keep_mask(backend, "image", image, **settings)), strategy
            assert side.tile_overlay is None
    with pytest.raises(inputs.InputError, match="without AnyRes tiles, so there are no tiles to skip"):
        images.preview(backend, image, "threshold", THRESHOLD, 0.3, tile_skipping=True)
    for rule in CLS_RULES:
        with pytest.raises(inputs.InputError, match=rf"'{rule}' strategy .*\[CLS\]"):
            images.preview(backend, image, "budget", THRESHOLD, 0.3, strategy=rule)
        with pytest.raises(inputs.InputError, match=rf"'{rule}' strategy .*\[CLS\]"):
            images.compare(backend, image, "codebook", rule, 0.3, THRESHOLD)


@pytest.mark.parametrize("name", FAMILIES)
def test_a_qwen_video_is_a_strip_of_temporal_patches_whose_cells_are_the_models_keep_mask(served, name, tmp_path):
    backend = served[name]
    path = write_gif(tmp_path / "clip.gif", the_clip())
    frames = video_inputs.check_video(path, allowed_dirs=[tmp_path.resolve()])
    assert len(frames) == FRAMES
    patches, rows, cols = merged_grid(name, "video", frames)
    assert patches == 3  # frames 1-2, 3-4, 5 (repeated)
    for mode, settings in (("threshold", {"codebook_threshold": THRESHOLD}), ("budget", {"keep_ratio": 0.4})):
        shown = videos.preview_video(backend, path, mode, THRESHOLD, 0.4, allowed_dirs=[tmp_path.resolve()])
        keep = shown.selection.keep_masks()[0].numpy()
        assert np.array_equal(keep, model_keep_mask(backend, "video", frames, pruning_mode=mode, **settings))
        assert shown.selection.modalities == ["video"] and 0 < keep.sum() < keep.size == patches * rows * cols
        assert len(shown.layout.boxes) == len(shown.grids) == patches
        assert [grid.shape for grid in shown.grids] == [(rows, cols)] * patches
        assert [c["frames"] for c in shown.counts["frames"]] == ["1–2", "3–4", "5"]
        # Patch p holds merged tokens p * rows * cols ... in raster order.
        for patch, (grid, counted) in enumerate(zip(shown.grids, shown.counts["frames"])):
            expected = keep[patch * rows * cols : (patch + 1) * rows * cols].reshape(rows, cols)
            assert np.array_equal(keep[grid], expected)
            assert counted == {"kept": int(expected.sum()), "total": rows * cols, "frames": counted["frames"]}
        assert "3 temporal patches of 2 frames each" in shown.markdown and "| 3–4 |" in shown.markdown
        for patch, (px0, py0, px1, py1) in enumerate(shown.layout.boxes):
            frame = frames[2 * patch]  # each panel shows its patch's first frame
            whole = (0.0, 0.0, float(frame.width), float(frame.height))
            drawn = drawn_cells(shown.strip, (rows, cols), whole, (px1 - px0, py1 - py0), (px0, py0))
            assert np.array_equal(drawn, keep[shown.grids[patch]]), f"panel {patch}"


@pytest.mark.parametrize("name", FAMILIES)
def test_qwen_answers_run_with_and_without_pruning_for_images_and_videos(served, name, tmp_path):
    backend = served[name]
    result = images.answer(backend, the_image(), "what is this ?", "budget", THRESHOLD, 0.4, 3)
    made, counts = result.generations, result.preview.counts["all"]
    assert made.full_prompt_tokens - made.pruned_prompt_tokens == counts["total"] - counts["kept"] > 0
    assert made.pruned_text and made.full_text
    path = write_gif(tmp_path / "clip.gif", the_clip())
    result = videos.answer_video(backend, path, "what is this ?", "budget", THRESHOLD, 0.4, 3, [tmp_path.resolve()])
    made, counts = result.generations, result.preview.counts["all"]
    assert made.full_prompt_tokens - made.pruned_prompt_tokens == counts["total"] - counts["kept"] > 0
    assert made.pruned_text and made.full_text


def test_a_qwen_model_is_served_over_http_images_and_videos(served, tmp_path_factory, tmp_path):
    """Qwen2.5-VL served on 127.0.0.1 with the app's own launch options: the image and video endpoints give what the
    Space's functions give, the page has no tile overlay, and a [CLS] rule is refused naming the ones that apply."""
    gradio_client = pytest.importorskip("gradio_client")
    from space_helpers import launch_on_a_free_port

    backend = served["qwen2.5-vl-3b"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio-cache-qwen")))
        demo = app.build_demo(backend, examples_dir=tmp_path_factory.mktemp("examples-qwen"))
        tiles = [c for c in demo.blocks.values() if getattr(c, "elem_id", None) == "tile-overlay"]
        assert len(tiles) == 1 and tiles[0].visible is False
        url = launch_on_a_free_port(demo, **app.launch_options(demo))
        try:
            client = gradio_client.Client(url, verbose=False, download_files=True)
            names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
            assert {"/preview", "/answer", "/compare", "/preview_video", "/answer_video"} <= names
            image_path = tmp_path / "picture.png"
            the_image().save(image_path)
            base, _, markdown, details = client.predict(
                gradio_client.handle_file(str(image_path)), "threshold", THRESHOLD, 0.25, "", "codebook",
                api_name="/preview",
            )  # fmt: skip
            expected = images.preview(backend, the_image(), "threshold", THRESHOLD, 0.25)
            assert details["counts"] == expected.counts and markdown == expected.markdown
            assert np.array_equal(np.asarray(Image.open(base).convert("RGB")), np.asarray(expected.base_overlay))
            # No tiles to skip: the request is refused with the reason, in place of the counts.
            base, _, refused, details = client.predict(
                gradio_client.handle_file(str(image_path)), "threshold", THRESHOLD, 0.25, "", "codebook", True, 0.9,
                api_name="/preview",
            )  # fmt: skip
            assert base is None and details == {} and "no tiles to skip" in refused
            clip_path = write_gif(tmp_path / "clip.gif", the_clip())
            strip, markdown, details = client.predict(
                gradio_client.handle_file(clip_path), "budget", THRESHOLD, 0.4, "", "divprune",
                api_name="/preview_video",
            )  # fmt: skip
            expected = videos.preview_video(
                backend, clip_path, "budget", THRESHOLD, 0.4, allowed_dirs=[tmp_path.resolve()], strategy="divprune"
            )
            assert details["counts"] == expected.counts and markdown == expected.markdown
            assert np.array_equal(np.asarray(Image.open(strip).convert("RGB")), np.asarray(expected.strip))
            answer = client.predict(
                gradio_client.handle_file(clip_path), "what is this ?", "budget", THRESHOLD, 0.4, 3, "codebook",
                api_name="/answer_video",
            )  # fmt: skip
            assert answer[3] and answer[5] and "prompt of" in answer[4]
            _, refused, _ = client.predict(
                gradio_client.handle_file(clip_path), "budget", THRESHOLD, 0.4, "", "visionzip",
                api_name="/preview_video",
            )  # fmt: skip
            assert "'visionzip' strategy" in refused and f"choose one of: {', '.join(OFFERED)}" in refused
        finally:
            demo.close()
