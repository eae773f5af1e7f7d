"""The processor's token -> pixel geometry agrees with the stock packing and with the pixels the crops are made of."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import LlavaNextProcessor  # noqa: E402
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD  # noqa: E402
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches  # noqa: E402

from llava_codebook.processing_llava_next_codebook import (  # noqa: E402
    DROPPED,
    KEPT,
    UNSEEN,
    LlavaNextCodebookProcessor,
    geometry_for_processor,
    packed_token_geometry,
    render_keep_overlay,
    token_state_map,
    view_counts,
)
from llava_codebook.tiny import TINY_PINPOINTS, build_tiny_model, build_tiny_processor  # noqa: E402

PATCH = 14
REAL_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
# (height, width): wide, tall, square, tiny (upscaled), huge (downscaled), very wide, very tall.
SIZES = {
    "wide": (90, 150),
    "tall": (130, 70),
    "square": (100, 100),
    "tiny": (10, 12),
    "huge": (2000, 3000),
    "very-wide": (300, 1700),
    "very-tall": (1400, 260),
    "exact-2x1": (56, 112),
}


@pytest.fixture(scope="module")
def packers():
    """Stock `pack_image_features` of a tiny model at the tiny (56 px) and the real (336 px) crop size."""
    return {56: build_tiny_model(crop=56).model, 336: build_tiny_model(crop=336).model}


def coordinate_image(height: int, width: int) -> Image.Image:
    """Red encodes x and green y (linear ramps over pixel centres); blue marks real image pixels (padding is 0)."""
    pixels = np.zeros((height, width, 3))
    pixels[..., 0] = np.linspace(0, 255, width)[None, :]
    pixels[..., 1] = np.linspace(0, 255, height)[:, None]
    pixels[..., 2] = 255
    return Image.fromarray(np.round(pixels).astype(np.uint8))


def local_token(geometry, index):
    """(row, col) of packed token `index` inside its own crop."""
    side = geometry.layout.tokens_per_side
    if geometry.crop[index] == 0:
        return int(geometry.row[index]), int(geometry.col[index])
    top, left = geometry.layout.unpad
    return int((geometry.row[index] + top) % side), int((geometry.col[index] + left) % side)


def rasterise(geometry, indices, scale=1.0):
    """Count how many of the boxes `indices` cover each pixel, edges rounded as the overlay rounds them."""
    height, width = geometry.image_size
    cover = np.zeros((int(round(height * scale)), int(round(width * scale))), dtype=np.int32)
    for i in indices:
        x0, y0, x1, y1 = geometry.boxes[i] * scale
        cover[int(round(y0)) : int(round(y1)), int(round(x0)) : int(round(x1))] += 1
    return cover


@pytest.mark.parametrize("crop", [56, 336])
@pytest.mark.parametrize("name", list(SIZES))
def test_packed_order_matches_stock_pack_image_features(packers, crop, name):
    """Pack a (crop, row, col) coordinate map through the stock packer: the geometry must list the same tokens."""
    size = SIZES[name]
    model = packers[crop]
    pinpoints = model.config.image_grid_pinpoints
    side = crop // PATCH
    crops = image_size_to_num_patches(size, pinpoints, crop)
    rows, cols = np.divmod(np.arange(side * side), side)
    features = torch.zeros(crops, side * side, 3)
    features[:, :, 0] = torch.arange(crops)[:, None]
    features[:, :, 1] = torch.as_tensor(rows)
    features[:, :, 2] = torch.as_tensor(cols)
    packed, _ = model.pack_image_features(
        [features], torch.tensor([size]), "default", image_newline=torch.full((3,), -1.0)
    )
    packed = packed[0].long().numpy()

    geometry = packed_token_geometry(size, crop, PATCH, pinpoints)
    assert len(geometry) == packed.shape[0]
    is_newline = packed[:, 0] == -1
    np.testing.assert_array_equal(geometry.newline_mask, is_newline)
    np.testing.assert_array_equal(geometry.crop[~is_newline], packed[~is_newline, 0])
    local = np.array([local_token(geometry, i) for i in np.flatnonzero(~is_newline)]).reshape(-1, 2)
    np.testing.assert_array_equal(local, packed[~is_newline, 1:])
    assert (geometry.view[packed[:, 0] == 0] == 0).all(), "crop 0 is the base view"
    assert (geometry.view[packed[:, 0] > 0] == 1).all(), "crops 1.. are tiles"


@pytest.mark.parametrize("crop", [56, 336])
@pytest.mark.parametrize("name", ["wide", "tall", "square", "tiny", "huge", "very-wide"])
def test_every_token_box_is_where_its_pixels_came_from(crop, name):
    """Run the real image processor on an image whose colours encode position, read each token's patch back out
    of `pixel_values`, and check that the decoded position is the centre of the token's box."""
    height, width = SIZES[name]
    processor = build_tiny_processor(crop)
    inputs = processor.image_processor(images=[coordinate_image(height, width)], return_tensors="np")
    geometry = geometry_for_processor(processor, inputs["image_sizes"])[0]
    std = np.array(OPENAI_CLIP_STD)[:, None, None]
    mean = np.array(OPENAI_CLIP_MEAN)[:, None, None]
    pixels = (inputs["pixel_values"][0] * std + mean) * 255
    assert pixels.shape[0] == geometry.layout.num_crops

    for i in np.flatnonzero(~geometry.newline_mask):
        r, c = local_token(geometry, i)
        block = pixels[geometry.crop[i], :, r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH]
        content = block[2] > 128
        assert content.any(), f"token {i} ({geometry.view_of(i)}) has a box but looks at padding only"
        x = block[0][content].mean() / 255 * (width - 1) + 0.5
        y = block[1][content].mean() / 255 * (height - 1) + 0.5
        x0, y0, x1, y1 = geometry.box(i)
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        # The colour ramps only encode pixel centres, so a box centre nearer the border than half a pixel reads
        # as the outermost pixel centre.
        centre_x = np.clip((x0 + x1) / 2, 0.5, width - 0.5)
        centre_y = np.clip((y0 + y1) / 2, 0.5, height - 0.5)
        assert abs(x - centre_x) <= 0.1 * (x1 - x0) + 0.25, (i, geometry.view_of(i), (x, y), (x0, y0, x1, y1))
        assert abs(y - centre_y) <= 0.1 * (y1 - y0) + 0.25, (i, geometry.view_of(i), (x, y), (x0, y0, x1, y1))


@pytest.mark.parametrize("crop", [56, 336])
@pytest.mark.parametrize("name", list(SIZES))
def test_base_boxes_tile_the_whole_image_once(crop, name):
    pinpoints = TINY_PINPOINTS if crop == 56 else REAL_PINPOINTS
    geometry = packed_token_geometry(SIZES[name], crop, PATCH, pinpoints)
    base = np.flatnonzero(geometry.view_mask("base"))
    assert len(base) == (crop // PATCH) ** 2
    height, width = geometry.image_size
    areas = (geometry.boxes[base, 2] - geometry.boxes[base, 0]) * (geometry.boxes[base, 3] - geometry.boxes[base, 1])
    assert areas.sum() == pytest.approx(height * width)
    scale = min(1.0, 600 / max(height, width)) if max(height, width) > 600 else max(1.0, 100 / min(height, width))
    assert (rasterise(geometry, base, scale) == 1).all()


@pytest.mark.parametrize("crop", [56, 336])
@pytest.mark.parametrize("name", list(SIZES))
def test_tile_boxes_cover_the_image_once_except_thin_unpadding_strips(crop, name):
    """Tile boxes never overlap, and they cover the image but for strips at the two ends of the padded axis that
    are thinner than half a token (plus the pixel an odd padding puts off-centre): the stock packer unpads in whole
    tokens, truncating the content size."""
    pinpoints = TINY_PINPOINTS if crop == 56 else REAL_PINPOINTS
    geometry = packed_token_geometry(SIZES[name], crop, PATCH, pinpoints)
    layout = geometry.layout
    height, width = geometry.image_size
    tiles = np.flatnonzero(geometry.view_mask("tile"))
    boxes = geometry.boxes[tiles]
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all(), "a kept tile token sees no image"
    covered_x = (boxes[:, 0].min(), boxes[:, 2].max())
    covered_y = (boxes[:, 1].min(), boxes[:, 3].max())
    strip_y = (0.5 * PATCH + 1) * height / layout.resized_size[0]
    strip_x = (0.5 * PATCH + 1) * width / layout.resized_size[1]
    assert covered_y[0] <= strip_y and covered_y[1] >= height - strip_y
    assert covered_x[0] <= strip_x and covered_x[1] >= width - strip_x
    if layout.unpad[0] == 0:
        assert covered_y == (0, height)
    if layout.unpad[1] == 0:
        assert covered_x == (0, width)
    # Inside the covered rectangle, every pixel is covered exactly once.
    scale = min(1.0, 600 / max(height, width)) if max(height, width) > 600 else max(1.0, 100 / min(height, width))
    cover = rasterise(geometry, tiles, scale)
    rows = slice(int(round(covered_y[0] * scale)), int(round(covered_y[1] * scale)))
    cols = slice(int(round(covered_x[0] * scale)), int(round(covered_x[1] * scale)))
    assert cover.max() == 1
    assert (cover[rows, cols] == 1).all()


def test_an_image_aligned_with_its_grid_is_covered_exactly_by_tiles():
    geometry = packed_token_geometry((56, 112), 56, PATCH, TINY_PINPOINTS)
    assert geometry.layout.unpad == (0, 0)
    cover = rasterise(geometry, np.flatnonzero(geometry.view_mask("tile")))
    assert (cover == 1).all()


def test_newline_tokens_map_to_none():
    geometry = packed_token_geometry((90, 150), 56, PATCH, TINY_PINPOINTS)
    rows, cols = geometry.layout.kept_token_grid
    newlines = np.flatnonzero(geometry.newline_mask)
    assert len(newlines) == rows
    # One newline ends each tile row, right after that row's tokens.
    side = geometry.layout.tokens_per_side
    np.testing.assert_array_equal(newlines, side * side + np.arange(1, rows + 1) * (cols + 1) - 1)
    for i in newlines:
        assert geometry.box(i) is None and geometry.view_of(i) is None
        assert geometry.crop[i] == -1 and np.isnan(geometry.boxes[i]).all()


def test_keep_masks_paint_kept_and_dropped_boxes_that_cover_the_image():
    geometry = packed_token_geometry((90, 150), 56, PATCH, TINY_PINPOINTS)
    rng = np.random.default_rng(0)
    keep = rng.random(len(geometry)) < 0.4
    for view in ("base", "tile"):
        state = token_state_map(geometry, keep, view, (90, 150))
        indices = np.flatnonzero(geometry.view_mask(view))
        kept_cover = rasterise(geometry, indices[keep[indices]])
        dropped_cover = rasterise(geometry, indices[~keep[indices]])
        np.testing.assert_array_equal(state == KEPT, kept_cover == 1)
        np.testing.assert_array_equal(state == DROPPED, dropped_cover == 1)
        if view == "base":
            assert not (state == UNSEEN).any()
        else:
            # 90x150 in a 112x112 canvas: 68 px of content in 4 token rows (56 px) + thin strips the packer cut.
            assert (state == UNSEEN).mean() < 0.2


def test_overlay_darkens_dropped_tokens_and_keeps_the_rest():
    image = Image.new("RGB", (150, 90), (200, 180, 160))
    geometry = packed_token_geometry((90, 150), 56, PATCH, TINY_PINPOINTS)
    keep = np.zeros(len(geometry), dtype=bool)
    keep[0] = True  # the top-left base token only
    overlay = render_keep_overlay(image, geometry, keep, "base", max_side=300, grid_lines=False)
    assert overlay.size == (300, 180)
    pixels = np.asarray(overlay).astype(int)
    state = token_state_map(geometry, keep, "base", (180, 300))
    assert (pixels[state == KEPT] == (200, 180, 160)).all()
    assert (pixels[state == DROPPED].sum(axis=-1) < 0.5 * (200 + 180 + 160)).all()


def test_overlay_rejects_a_mask_from_another_image():
    geometry = packed_token_geometry((90, 150), 56, PATCH, TINY_PINPOINTS)
    with pytest.raises(ValueError, match="packed tokens"):
        render_keep_overlay(Image.new("RGB", (150, 90)), geometry, np.ones(len(geometry) + 1, bool))
    with pytest.raises(ValueError, match="geometry is for 150x90"):
        render_keep_overlay(Image.new("RGB", (90, 150)), geometry, np.ones(len(geometry), bool))


def test_view_counts_add_up():
    geometry = packed_token_geometry((130, 70), 56, PATCH, TINY_PINPOINTS)
    keep = np.arange(len(geometry)) % 3 == 0
    counts = view_counts(geometry, keep)
    assert counts["base"]["total"] == 16
    assert counts["base"]["total"] + counts["tile"]["total"] + counts["newline"]["total"] == len(geometry)
    assert (
        counts["base"]["kept"] + counts["tile"]["kept"] + counts["newline"]["kept"]
        == keep.sum()
        == counts["all"]["kept"]
    )


def stock_twin(processor):
    return LlavaNextProcessor(
        image_processor=processor.image_processor,
        tokenizer=processor.tokenizer,
        patch_size=processor.patch_size,
        vision_feature_select_strategy=processor.vision_feature_select_strategy,
        num_additional_image_tokens=processor.num_additional_image_tokens,
    )


@pytest.mark.parametrize("crop", [56, 336])
def test_placeholders_and_pixels_are_those_of_the_stock_processor(crop):
    processor = build_tiny_processor(crop)
    assert isinstance(processor, LlavaNextCodebookProcessor)
    stock = stock_twin(processor)
    images = [coordinate_image(*SIZES[name]) for name in ("wide", "tall", "tiny")]
    text = ["describe <image> what is this ?", "<image> <image> how many ?"]
    ours = processor(images=images, text=text, return_tensors="pt", padding=True)
    theirs = stock(images=images, text=text, return_tensors="pt", padding=True)
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0)
    # The geometry lists exactly as many tokens as there are placeholders for each image.
    geometries = processor.token_geometry(ours["image_sizes"])
    placeholders = int((ours["input_ids"] == processor.image_token_id).sum())
    assert placeholders == sum(len(g) for g in geometries)


def test_geometry_works_with_a_stock_processor():
    processor = build_tiny_processor()
    stock = stock_twin(processor)
    sizes = [[90, 150], [130, 70]]
    for ours, theirs in zip(processor.token_geometry(sizes), geometry_for_processor(stock, torch.tensor(sizes))):
        np.testing.assert_array_equal(ours.boxes, theirs.boxes)
        np.testing.assert_array_equal(ours.view, theirs.view)


def test_processor_overlays_follow_the_model_selection(tiny_model, tiny_processor, images):
    """End to end: the model's keep masks, drawn by the processor, mark the flat (redundant) half as dropped."""
    image = images["wide"]  # left half noise, right half flat white
    inputs = tiny_processor(images=[image], text=["<image> what is this ?"], return_tensors="pt")
    out = tiny_model.generate(**inputs, max_new_tokens=1, return_dict_in_generate=True)
    masks = out.visual_token_selection.keep_masks()
    overlays = tiny_processor.render_keep_overlays([image], masks)[0]
    assert set(overlays) == {"base", "tile"}
    geometry = tiny_processor.token_geometry(inputs["image_sizes"])[0]
    keep = masks[0].numpy()
    state = token_state_map(geometry, keep, "base", (image.height, image.width))
    assert 0 < (state == KEPT).mean() < 1
    # Tokens wholly inside the flat white part are the ones dropped, wholly inside the noise are kept.
    flat_from = image.width * 0.5
    for i in np.flatnonzero(geometry.view_mask("base")):
        x0, _, x1, _ = geometry.box(i)
        if x0 >= flat_from + 1:
            assert not keep[i], f"flat base token {i} kept"
        if x1 <= flat_from - 1:
            assert keep[i], f"noisy base token {i} dropped"


def test_processor_round_trips_through_save_pretrained(tmp_path):
    processor = build_tiny_processor()
    processor.save_pretrained(tmp_path)
    loaded = LlavaNextCodebookProcessor.from_pretrained(tmp_path)
    np.testing.assert_array_equal(
        loaded.token_geometry([[90, 150]])[0].boxes, processor.token_geometry([[90, 150]])[0].boxes
    )
