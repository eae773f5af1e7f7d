"""The Space with tile skipping: the tiles the model would not encode are read from the cached encoding, hatched grey
on the tile overlay, and counted with the vision-tower FLOPs saved; the answer runs the model's own skipping."""

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

from llava_codebook.flops import vision_tower_flops  # noqa: E402
from llava_codebook.tile_skipping import anyres_tiles  # noqa: E402
from spaces_app import app, freshness, images, inputs, model  # noqa: E402


def flat_below(width: int, height: int, seed: int = 0) -> Image.Image:
    """Saturated colour noise on the top half, flat white below: the demo codebook finds the bottom tiles redundant."""
    rng = np.random.default_rng(seed)
    pixels = np.full((height, width, 3), 255, dtype=np.uint8)
    pixels[: height // 2] = rng.integers(0, 256, (height // 2, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def backend():
    return model.load_tiny_backend()


def test_the_preview_skips_what_the_model_skips_and_hatches_those_tiles(backend):
    image = flat_below(150, 140, seed=3)
    shown = images.preview(backend, image, "threshold", 0.9, 0.25, tile_skipping=True, tile_skip_share=0.9)
    plain = images.preview(backend, image, "threshold", 0.9, 0.25)
    skipped = shown.selection.skipped_tiles[0]
    # The model itself, asked for the same, skips the same tiles and keeps the same tokens.
    call = backend.processor(images=[image], text=["<image>\nwhat ?"], return_tensors="pt")
    own = backend.model(**call, tile_skipping=True, tile_skip_share=0.9, codebook_threshold=0.9)
    assert skipped.tolist() == own.visual_token_selection.skipped_tiles[0].tolist()
    assert torch.equal(shown.selection.kept_indices[0], own.visual_token_selection.kept_indices[0])
    layout = anyres_tiles((image.height, image.width), backend.model.config.image_grid_pinpoints, 56)
    assert 0 < skipped.numel() < layout.num_tiles, "some tiles are skipped, not all"
    # Counted, with the tower's FLOPs.
    per_crop = vision_tower_flops(backend.model.config.vision_config)
    tower = shown.flops["vision_tower"]
    assert (tower["tiles"], tower["tiles_skipped"]) == (layout.num_tiles, skipped.numel())
    assert tower["full"] == (1 + layout.num_tiles) * per_crop
    assert tower["with_skipping"] == (1 + layout.num_tiles - skipped.numel()) * per_crop
    assert f"{skipped.numel()} of {layout.num_tiles} high-res tiles not encoded" in shown.markdown
    assert "vision_tower" not in plain.flops and "Tile skipping" not in plain.markdown
    # Hatched grey where a skipped tile lies, untouched where none does.
    drawn = np.asarray(shown.tile_overlay.convert("RGB")).astype(float)
    before = np.asarray(plain.tile_overlay.convert("RGB")).astype(float)
    sx, sy = drawn.shape[1] / image.width, drawn.shape[0] / image.height
    inside = np.zeros(drawn.shape[:2], dtype=bool)
    for tile in skipped.tolist():
        x0, y0, x1, y1 = layout.content_box(tile - 1)
        inside[round(y0 * sy) + 3 : round(y1 * sy) - 3, round(x0 * sx) + 3 : round(x1 * sx) - 3] = True
    assert inside.any()
    spread = drawn[inside].max(axis=-1) - drawn[inside].min(axis=-1)
    assert np.median(spread) < 10, "greyed: the colour is gone"
    assert np.abs(drawn[inside] - before[inside]).mean() > 20
    outside = np.ones(drawn.shape[:2], dtype=bool)
    for tile in skipped.tolist():
        x0, y0, x1, y1 = layout.content_box(tile - 1)
        outside[max(round(y0 * sy) - 3, 0) : round(y1 * sy) + 3, max(round(x0 * sx) - 3, 0) : round(x1 * sx) + 3] = (
            False
        )
    assert outside.any() and np.array_equal(drawn[outside], before[outside])


def test_the_answer_runs_the_models_own_tile_skipping(backend, monkeypatch):
    image = flat_below(150, 140, seed=5)
    seen = []
    generate = backend.model.generate

    def recording(*args, **kwargs):
        out = generate(*args, **kwargs)
        seen.append({k: kwargs.get(k) for k in ("tile_skipping", "tile_skip_share", "codebook_threshold")})
        return out

    monkeypatch.setattr(backend.model, "generate", recording)
    result = images.answer(
        backend, image, "what is it ?", "budget", 0.9, 0.3, 3, tile_skipping=True, tile_skip_share=0.5
    )
    assert {"tile_skipping": True, "tile_skip_share": 0.5, "codebook_threshold": 0.9} in seen
    assert result.preview.flops["vision_tower"]["tiles_skipped"] == result.preview.selection.skipped_tiles[0].numel()


@pytest.mark.parametrize(
    "value, message",
    [("yes", "Tile skipping must be true or false; got str"), (None, "Tile skipping must be true or false")],
)
def test_a_tile_skipping_input_that_is_not_a_flag_gets_a_clear_message(backend, value, message):
    with pytest.raises(inputs.InputError, match=message):
        images.preview(backend, flat_below(100, 100), "threshold", 0.9, 0.25, tile_skipping=value)
    with pytest.raises(inputs.InputError, match=r"The tile skip share must lie in \[0, 1\]; got 2"):
        images.preview(backend, flat_below(100, 100), "threshold", 0.9, 0.25, tile_skipping=True, tile_skip_share=2)


def test_a_strategy_that_cannot_skip_tiles_says_so(backend):
    with pytest.raises(ValueError, match="tile_skipping=True cannot run with pruning_strategy='cls_attention'"):
        images.preview(backend, flat_below(100, 100), "budget", 0.9, 0.25, strategy="cls_attention", tile_skipping=True)


def test_turning_tile_skipping_on_marks_the_answers_out_of_date():
    answered = freshness.answer_signature("a.png", "what ?", "threshold", 0.9, 0.25, 8, "codebook")
    now = freshness.answer_signature("a.png", "what ?", "threshold", 0.9, 0.25, 8, "codebook", True, 0.9)
    assert freshness.changed_settings(answered, now) == ["tile_skipping"]
    moved = freshness.answer_signature("a.png", "what ?", "threshold", 0.9, 0.25, 8, "codebook", True, 0.5)
    assert freshness.changed_settings(now, moved) == ["tile_skip_share"]


def test_the_page_offers_tile_skipping_where_the_family_has_tiles(backend, tmp_path):
    demo = app.build_demo(backend, examples_dir=tmp_path / "examples")
    checkbox = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "tile-skipping")
    share = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "tile-skip-share")
    assert checkbox.visible is True and checkbox.value is False
    assert share.visible is False  # shown once tile skipping is on
