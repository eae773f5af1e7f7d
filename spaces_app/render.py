"""Rendering: which tokens were kept, drawn over the picture.

- `render_overlay`: LLaVA-NeXT's AnyRes pixel geometry (base view, tiles, crop borders, unseen strips), stretched
  to at most `MAX_SHOWN_ASPECT`:1 so that the tokens of a long image stay visible.
- `grid_views`: the views of one image's packed tokens as grids, read from the family's `crop_ids` (0 = the base
  view, 1.. = tiles, -1 = newline) and newline positions; no family-specific pixel geometry is needed.
- `frame_grids`: a video's pooled tokens as one grid per frame (`crop_ids` = frame index; Qwen-VL: one grid of merged
  tokens per temporal patch of two frames).
- `render_grid`: a picture with a grid of kept / dropped cells drawn over a region of it; `render_strip` puts one
  such panel per frame side by side.
- `hatch_boxes`: the AnyRes tiles tile skipping left unencoded, greyed and hatched over an overlay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

from llava_codebook.processing_llava_next_codebook import render_keep_overlay

# Overlays are OVERLAY_SIDE px on their longer side. An image longer than MAX_SHOWN_ASPECT:1 is drawn stretched to that
# ratio: at its own, a 10000x300 picture would be a 512x15 sliver in which no token can be seen.
OVERLAY_SIDE = 512

MAX_SHOWN_ASPECT = 4.0


def overlay_stretch(size: tuple[int, int]) -> float:
    """How much an overlay of an image of `size` (width, height) is stretched across its short side (1: not at all)."""
    width, height = size
    return max(1.0, max(width, height) / min(width, height) / MAX_SHOWN_ASPECT)


def render_overlay(image: Image.Image, geometry, keep, view: str) -> Image.Image:
    """`render_keep_overlay` at `OVERLAY_SIDE`, stretched across to `MAX_SHOWN_ASPECT`:1 when the image is longer."""
    if overlay_stretch(image.size) == 1.0:
        return render_keep_overlay(image, geometry, keep, view, max_side=OVERLAY_SIDE)
    # Draw the stretched picture with the token boxes scaled to it: each token is then as clear as in any overlay.
    short = round(OVERLAY_SIDE / MAX_SHOWN_ASPECT)
    shown = (OVERLAY_SIDE, short) if image.width > image.height else (short, OVERLAY_SIDE)
    sx, sy = shown[0] / image.width, shown[1] / image.height
    layout = replace(geometry.layout, image_size=(shown[1], shown[0]))
    scaled = replace(geometry, layout=layout, boxes=geometry.boxes * np.array([sx, sy, sx, sy]))
    return render_keep_overlay(image.resize(shown, Image.BICUBIC), scaled, keep, view, max_side=OVERLAY_SIDE)


def shown_size(size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) an overlay of an image of `size` is drawn at: `OVERLAY_SIDE` long, at most
    `MAX_SHOWN_ASPECT`:1 (see `overlay_stretch`)."""
    width, height = size
    scale = OVERLAY_SIDE / max(width, height)
    short = max(round(min(width, height) * scale), round(OVERLAY_SIDE / MAX_SHOWN_ASPECT), 1)
    return (OVERLAY_SIDE, short) if width >= height else (short, OVERLAY_SIDE)


DROPPED_TINT = np.array([20, 20, 30], dtype=np.float32)
UNSEEN_TINT = np.array([255, 0, 255], dtype=np.float32)


@dataclass(frozen=True)
class GridView:
    """One view's tokens as a `rows` x `cols` grid: `indices[r, c]` is the packed index of each cell, and `region`
    (x0, y0, x1, y1, in the picture's pixels) is the part of the picture the view sees."""

    name: str
    indices: np.ndarray
    region: tuple[float, float, float, float]

    @property
    def shape(self) -> tuple[int, int]:
        return self.indices.shape

    def keep_grid(self, keep: np.ndarray) -> np.ndarray:
        return np.asarray(keep, dtype=bool)[self.indices]


def _square_grid(indices: np.ndarray) -> np.ndarray:
    """Indices of a square token grid in raster order (one row when the count is not a square)."""
    side = math.isqrt(len(indices))
    if side * side == len(indices):
        return indices.reshape(side, side)
    return indices.reshape(1, -1)


def base_region(size: tuple[int, int], image_processor) -> tuple[float, float, float, float]:
    """The part of an image of `size` (width, height) its base view sees: the centre crop of a processor that resizes
    the shortest edge and centre-crops (LLaVA-1.5's CLIP processor), else the whole image (resized to a square)."""
    width, height = size
    crop = dict(getattr(image_processor, "crop_size", None) or {})
    shortest = dict(getattr(image_processor, "size", None) or {}).get("shortest_edge")
    if getattr(image_processor, "do_center_crop", False) and shortest and crop.get("height") and crop.get("width"):
        scale = shortest / min(width, height)
        seen_w, seen_h = min(width, crop["width"] / scale), min(height, crop["height"] / scale)
        x0, y0 = (width - seen_w) / 2, (height - seen_h) / 2
        return (x0, y0, x0 + seen_w, y0 + seen_h)
    return (0.0, 0.0, float(width), float(height))


def _token_grid(indices: np.ndarray, token_grid: tuple[int, int] | None) -> np.ndarray:
    """Indices in raster order as a `token_grid` (rows, cols) grid where the family states one, else square."""
    if token_grid is not None and token_grid[0] * token_grid[1] == len(indices):
        return indices.reshape(token_grid)
    return _square_grid(indices)


def grid_views(
    crop_ids, newline, size: tuple[int, int], image_processor, token_grid: tuple[int, int] | None = None
) -> dict[str, GridView]:
    """The base view (crop 0, a square grid over `base_region`, or a `token_grid` one: Qwen-VL's merged tokens over the
    whole image, which its processor resizes without cropping) and, where there are tiles, the tile grid: the tile
    tokens in packed order, one row per newline, over the whole image (the unpadded AnyRes grid covers the image)."""
    crop_ids = np.asarray(crop_ids)
    newline = np.asarray(newline, dtype=bool)
    width, height = size
    base = _token_grid(np.flatnonzero(crop_ids == 0), token_grid)
    views = {"base": GridView("base", base, base_region(size, image_processor))}
    tiles = np.flatnonzero((crop_ids > 0) & ~newline)
    if len(tiles):
        rows = max(1, int(newline[tiles[0] :].sum()))
        grid = tiles.reshape(rows, -1) if len(tiles) % rows == 0 else tiles.reshape(1, -1)
        views["tile"] = GridView("tile", grid, (0.0, 0.0, float(width), float(height)))
    return views


def frame_grids(crop_ids, newline, token_grid: tuple[int, int] | None = None) -> list[np.ndarray]:
    """Per frame (Qwen-VL: per temporal patch), its tokens' packed indices as a grid (`crop_ids` = frame index,
    newlines excluded): square, or `token_grid` (rows, cols) where the family states one."""
    crop_ids = np.asarray(crop_ids)
    newline = np.asarray(newline, dtype=bool)
    frames = int(crop_ids[~newline].max()) + 1 if (~newline).any() else 0
    return [_token_grid(np.flatnonzero((crop_ids == f) & ~newline), token_grid) for f in range(frames)]


def render_grid(
    image: Image.Image,
    keep_grid: np.ndarray,
    region: tuple[float, float, float, float] | None = None,
    display: tuple[int, int] | None = None,
) -> Image.Image:
    """`image` at `display` (width, height) with a grid of cells over `region`: kept cells as they are, dropped ones
    darkened, and what lies outside the region (what the view does not see) tinted magenta."""
    width, height = image.size
    region = region or (0.0, 0.0, float(width), float(height))
    out_w, out_h = display or image.size
    sx, sy = out_w / width, out_h / height
    pixels = np.asarray(image.convert("RGB").resize((out_w, out_h), Image.BICUBIC), dtype=np.float32)
    out = pixels.copy()
    x0, y0, x1, y1 = (round(region[0] * sx), round(region[1] * sy), round(region[2] * sx), round(region[3] * sy))
    unseen = np.ones((out_h, out_w), dtype=bool)
    unseen[y0:y1, x0:x1] = False
    out[unseen] = 0.5 * pixels[unseen] + 0.5 * UNSEEN_TINT
    rows, cols = keep_grid.shape
    ys = np.linspace(y0, y1, rows + 1).round().astype(int)
    xs = np.linspace(x0, x1, cols + 1).round().astype(int)
    for r in range(rows):
        for c in range(cols):
            if not keep_grid[r, c]:
                cell = out[ys[r] : ys[r + 1], xs[c] : xs[c + 1]]
                cell[:] = 0.3 * pixels[ys[r] : ys[r + 1], xs[c] : xs[c + 1]] + 0.7 * DROPPED_TINT
    picture = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture, "RGBA")
    if (xs[1] - xs[0]) >= 6 and (ys[1] - ys[0]) >= 6:
        for r in range(rows):
            for c in range(cols):
                draw.rectangle([xs[c], ys[r], xs[c + 1] - 1, ys[r + 1] - 1], outline=(255, 255, 255, 60))
    return picture


SKIPPED_GREY = np.array([150, 150, 150], dtype=np.float32)


def hatch_boxes(picture: Image.Image, boxes, image_size: tuple[int, int]) -> Image.Image:
    """`picture` (an overlay of a whole image of `image_size` = (width, height), at any display size) with each
    `(x0, y0, x1, y1)` box of the image greyed and hatched diagonally: the tiles that were never encoded."""
    width, height = image_size
    sx, sy = picture.width / width, picture.height / height
    pixels = np.asarray(picture.convert("RGB"), dtype=np.float32).copy()
    shown = [(round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy)) for x0, y0, x1, y1 in boxes]
    for x0, y0, x1, y1 in shown:
        pixels[y0:y1, x0:x1] = 0.35 * pixels[y0:y1, x0:x1] + 0.65 * SKIPPED_GREY
    out = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out, "RGBA")
    step = max(6, round(min(out.size) / 24))
    for x0, y0, x1, y1 in shown:
        for offset in range(-(y1 - y0), x1 - x0, step):
            # A 45-degree line through the box, clipped to it.
            start = (x0 + max(offset, 0), y0 + max(-offset, 0))
            length = min(x1 - start[0], y1 - start[1])
            if length > 0:
                draw.line([start, (start[0] + length, start[1] + length)], fill=(60, 60, 60, 200), width=2)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(60, 60, 60, 255), width=2)
    return out


def cell_centres(keep_grid_shape, region, display_scale=(1.0, 1.0)) -> np.ndarray:
    """`[rows, cols, 2]` (x, y) pixel centres of a grid's cells over `region`, scaled by `display_scale`: where a test
    reads a cell's state back from a rendered panel."""
    rows, cols = keep_grid_shape
    x0, y0, x1, y1 = region
    sx, sy = display_scale
    xs = (x0 + (np.arange(cols) + 0.5) * (x1 - x0) / cols) * sx
    ys = (y0 + (np.arange(rows) + 0.5) * (y1 - y0) / rows) * sy
    return np.stack(np.meshgrid(xs, ys), axis=-1)


STRIP_PANEL_HEIGHT = 192
STRIP_GAP = 8
STRIP_LABEL_HEIGHT = 18


@dataclass
class StripLayout:
    """Where each frame's panel lies in a strip: `boxes[f]` = (x0, y0, x1, y1) of frame f's picture."""

    boxes: list[tuple[int, int, int, int]]


def render_strip(
    frames: list[Image.Image],
    keep_grids: list[np.ndarray],
    labels: list[str],
    regions: list | None = None,
    panel_height: int = STRIP_PANEL_HEIGHT,
) -> tuple[Image.Image, StripLayout]:
    """One panel per frame, left to right: the frame at `panel_height` with its pooled token grid (kept / dropped)
    over `regions[f]` (the part of the frame the model sees; default all of it), and its label underneath. Returns
    the strip and where each panel's picture lies."""
    panels, boxes, x = [], [], 0
    regions = regions or [None] * len(frames)
    for frame, grid, region in zip(frames, keep_grids, regions):
        width = max(1, round(frame.width * panel_height / frame.height))
        panels.append(render_grid(frame, grid, region, display=(width, panel_height)))
        boxes.append((x, 0, x + width, panel_height))
        x += width + STRIP_GAP
    strip = Image.new("RGB", (max(1, x - STRIP_GAP), panel_height + STRIP_LABEL_HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for panel, box, label in zip(panels, boxes, labels):
        strip.paste(panel, box[:2])
        draw.text((box[0] + 2, panel_height + 3), label, fill=(0, 0, 0))
    return strip, StripLayout(boxes)
