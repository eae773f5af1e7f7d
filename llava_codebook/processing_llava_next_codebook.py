"""Processor for pruning-aware LLaVA-NeXT: stock LLaVA-NeXT processing, plus the token -> pixel geometry.

The model keeps or drops *packed* visual tokens: the base view (the whole image squashed to one crop), then the
unpadded AnyRes tile grid row by row, each row followed by an `image_newline` token. To show a person which parts of
the picture survived, every packed token is mapped back to the box of the original image it was computed from.

The geometry is a set of pure functions of (original size, crop size, patch size, grid pinpoints), mirroring what
the stock image processor does to the pixels (squash for the base view; resize-with-aspect, central zero padding and
a split into crops for the tiles) and what the stock `pack_image_features` does to the tokens (drop the token rows or
columns that hold padding only, append a newline per row). `LlavaNextCodebookProcessor` adds thin methods on top,
and `geometry_for_processor` gives the same answer for a stock `LlavaNextProcessor`.

A consequence of the stock layout worth knowing: the tile unpadding is decided in whole tokens (the content size
in tokens is truncated), so along the padded axis a strip thinner than half a token at each edge of the image can
lie in no tile token at all (the base view still covers it). `PackedTokenGeometry.boxes` are exact; the overlay
tints such strips as unseen. At extreme aspect ratios (content thinner than one token row) the stock packer keeps
no tile token at all.
"""

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from transformers import LlavaNextProcessor

from .pruning_config import PRUNING_VALIDATORS, validate_pruning_settings
from .tile_skipping import anyres_tiles

BASE = "base"
TILE = "tile"
VIEWS = (BASE, TILE)
_VIEW_CODES = {BASE: 0, TILE: 1}


@dataclass(frozen=True)
class AnyResLayout:
    """How one image is laid out for the vision tower, in the stock processor's and packer's own arithmetic.

    All sizes are `(height, width)`. "Canvas" is the best-fit grid resolution the tiles are cut from.
    """

    image_size: tuple[int, int]
    crop_size: int
    patch_size: int
    canvas_size: tuple[int, int]
    resized_size: tuple[int, int]
    paste: tuple[int, int]
    tile_grid: tuple[int, int]
    token_grid: tuple[int, int]
    unpad: tuple[int, int]
    kept_token_grid: tuple[int, int]

    @property
    def tokens_per_side(self) -> int:
        return self.crop_size // self.patch_size

    @property
    def num_crops(self) -> int:
        """Crops given to the vision tower: the base view plus every tile."""
        return 1 + self.tile_grid[0] * self.tile_grid[1]

    @property
    def num_packed_tokens(self) -> int:
        rows, cols = self.kept_token_grid
        return self.tokens_per_side**2 + rows * (cols + 1)


def _check_size(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def anyres_layout(image_size, crop_size: int, patch_size: int, grid_pinpoints) -> AnyResLayout:
    """Lay out one image of `image_size = (height, width)` the way the stock LLaVA-NeXT processor and model do.

    `grid_pinpoints` is the `[[height, width], ...]` list of the image processor (and the model config).
    """
    height, width = (_check_size("image height", int(v)) for v in image_size)
    crop_size = _check_size("crop_size", crop_size)
    patch_size = _check_size("patch_size", patch_size)
    if crop_size % patch_size:
        raise ValueError(f"crop_size={crop_size} is not a multiple of patch_size={patch_size}.")
    pinpoints = [list(p) for p in grid_pinpoints]
    if not pinpoints or any(len(p) != 2 or p[0] % crop_size or p[1] % crop_size for p in pinpoints):
        raise ValueError(
            f"grid_pinpoints must be a non-empty list of [height, width] multiples of crop_size={crop_size}, "
            f"got {grid_pinpoints!r}."
        )
    # The pixel side (best-fit canvas, aspect-preserving resize, central padding, the split into crops) is the one
    # tile skipping maps tiles with.
    tiles = anyres_tiles((height, width), pinpoints, crop_size)
    (canvas_h, canvas_w), resized, paste, tile_grid = tiles.canvas, tiles.resized, tiles.paste, tiles.grid

    side = crop_size // patch_size
    token_h, token_w = tile_grid[0] * side, tile_grid[1] * side
    # Token-space unpadding, as the stock `unpad_image`: the same margin is cut from both ends of the padded axis.
    if width / height > token_w / token_h:
        content_h = int(round(height * (token_w / width), 7))
        unpad = ((token_h - content_h) // 2, 0)
    else:
        content_w = int(round(width * (token_h / height), 7))
        unpad = (0, (token_w - content_w) // 2)
    kept = (token_h - 2 * unpad[0], token_w - 2 * unpad[1])
    return AnyResLayout(
        image_size=(height, width),
        crop_size=crop_size,
        patch_size=patch_size,
        canvas_size=(canvas_h, canvas_w),
        resized_size=resized,
        paste=paste,
        tile_grid=tile_grid,
        token_grid=(token_h, token_w),
        unpad=unpad,
        kept_token_grid=kept,
    )


@dataclass(frozen=True)
class PackedTokenGeometry:
    """Where each packed visual token of one image comes from, index-aligned with the model's packed order.

    image_size: `(height, width)` of the original image.
    view: `[L]` int8, 0 = base view, 1 = tile, -1 = row newline (use `view_of(i)` for the name).
    crop: `[L]` int64 index of the crop in `pixel_values[image]` (0 = base view, 1.. = tiles in row-major order),
        -1 for newlines.
    row, col: `[L]` int64 token position within its view's token grid (for tiles: in the unpadded tile token grid,
        the rows and columns the packed sequence walks), -1 for newlines.
    boxes: `[L, 4]` float64 `(x0, y0, x1, y1)` in original-image pixels (right/bottom exclusive, clipped to the
        image), NaN for newlines.
    """

    layout: AnyResLayout
    view: np.ndarray
    crop: np.ndarray
    row: np.ndarray
    col: np.ndarray
    boxes: np.ndarray

    def __len__(self) -> int:
        return int(self.view.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        return self.layout.image_size

    @property
    def newline_mask(self) -> np.ndarray:
        return self.view < 0

    def view_mask(self, view: str) -> np.ndarray:
        if view not in _VIEW_CODES:
            raise ValueError(f"view must be one of {VIEWS}, got {view!r}.")
        return self.view == _VIEW_CODES[view]

    def view_of(self, index: int) -> str | None:
        code = int(self.view[index])
        return None if code < 0 else VIEWS[code]

    def box(self, index: int) -> tuple[float, float, float, float] | None:
        """The `(x0, y0, x1, y1)` pixel box of packed token `index`, or `None` for a newline token."""
        if self.view[index] < 0:
            return None
        return tuple(float(v) for v in self.boxes[index])


def packed_token_geometry(image_size, crop_size: int, patch_size: int, grid_pinpoints) -> PackedTokenGeometry:
    """Map every packed visual token of an image of `image_size = (height, width)` to its view, crop and pixel box."""
    layout = anyres_layout(image_size, crop_size, patch_size, grid_pinpoints)
    height, width = layout.image_size
    side = layout.tokens_per_side

    # Base view: the whole image squashed to one crop, so its token grid divides the image evenly.
    base_rows, base_cols = np.divmod(np.arange(side * side), side)
    base_boxes = np.stack(
        [
            base_cols * width / side,
            base_rows * height / side,
            (base_cols + 1) * width / side,
            (base_rows + 1) * height / side,
        ],
        axis=1,
    )

    # Tiles: token (r, c) of the unpadded grid is token (r + top, c + left) of the padded canvas; each canvas token
    # is a patch_size square, mapped back through the central padding and the aspect-preserving resize.
    rows, cols = layout.kept_token_grid
    grid_r = np.repeat(np.arange(rows), cols + 1)
    grid_c = np.tile(np.arange(cols + 1), rows)
    is_newline = grid_c == cols
    canvas_r = grid_r + layout.unpad[0]
    canvas_c = grid_c + layout.unpad[1]
    patch = layout.patch_size
    sy = height / layout.resized_size[0]
    sx = width / layout.resized_size[1]
    tile_boxes = np.stack(
        [
            (canvas_c * patch - layout.paste[1]) * sx,
            (canvas_r * patch - layout.paste[0]) * sy,
            ((canvas_c + 1) * patch - layout.paste[1]) * sx,
            ((canvas_r + 1) * patch - layout.paste[0]) * sy,
        ],
        axis=1,
    ).astype(np.float64)
    tile_boxes[:, [0, 2]] = tile_boxes[:, [0, 2]].clip(0, width)
    tile_boxes[:, [1, 3]] = tile_boxes[:, [1, 3]].clip(0, height)
    tile_boxes[is_newline] = np.nan
    tile_crop = 1 + (canvas_r // side) * layout.tile_grid[1] + canvas_c // side

    view = np.concatenate([np.zeros(side * side, np.int8), np.where(is_newline, -1, 1).astype(np.int8)])
    crop = np.concatenate([np.zeros(side * side, np.int64), np.where(is_newline, -1, tile_crop)])
    row = np.concatenate([base_rows, np.where(is_newline, -1, grid_r)]).astype(np.int64)
    col = np.concatenate([base_cols, np.where(is_newline, -1, grid_c)]).astype(np.int64)
    return PackedTokenGeometry(
        layout=layout, view=view, crop=crop, row=row, col=col, boxes=np.concatenate([base_boxes, tile_boxes])
    )


def _size_field(size, name: str):
    """A field of an image processor size, whether it is a plain dict (saved configs) or a `SizeDict`."""
    if size is None:
        return None
    return size.get(name) if isinstance(size, dict) else getattr(size, name, None)


def _processor_settings(processor) -> tuple[int, int, list]:
    """(crop size, patch size, grid pinpoints) of a LLaVA-NeXT processor, stock or codebook."""
    image_processor = processor.image_processor
    crop = _size_field(getattr(image_processor, "crop_size", None), "height")
    size = getattr(image_processor, "size", None)
    resize_to = _size_field(size, "shortest_edge") or _size_field(size, "height")
    if crop is None:
        crop = resize_to
    if resize_to is not None and int(resize_to) != int(crop):
        raise ValueError(
            f"The image processor resizes crops to {resize_to} px and then centre-crops them to {crop} px; the "
            "geometry supports processors whose resize and crop sizes are equal (every released LLaVA-NeXT checkpoint)."
        )
    if processor.patch_size is None:
        raise ValueError("The processor has no patch_size: it cannot say how many tokens each crop gives.")
    if getattr(processor, "vision_feature_select_strategy", "default") == "full":
        raise ValueError("vision_feature_select_strategy='full' keeps the CLS token, which has no place in the image.")
    return int(crop), int(processor.patch_size), [list(p) for p in image_processor.image_grid_pinpoints]


def geometry_for_processor(processor, image_sizes) -> list[PackedTokenGeometry]:
    """Per image, the packed-token geometry for `image_sizes` (`[N, 2]` heights and widths, e.g. the processor's
    `image_sizes` output), with the crop size, patch size and pinpoints of `processor` (a stock `LlavaNextProcessor`
    works too)."""
    crop, patch, pinpoints = _processor_settings(processor)
    sizes = np.asarray(image_sizes.tolist() if hasattr(image_sizes, "tolist") else image_sizes)
    if sizes.ndim != 2 or sizes.shape[1] != 2:
        raise ValueError(f"image_sizes must be [num_images, 2] (height, width), got shape {sizes.shape}.")
    return [packed_token_geometry(tuple(int(v) for v in s), crop, patch, pinpoints) for s in sizes]


# --------------------------------------------------------------------------------------------------- overlays
KEPT, DROPPED, UNSEEN = 1, 2, 3
_DROPPED_TINT = np.array([20, 20, 30], dtype=np.float32)
_UNSEEN_TINT = np.array([255, 0, 255], dtype=np.float32)


def _edges(lo: float, hi: float, scale: float) -> tuple[int, int]:
    return int(round(lo * scale)), int(round(hi * scale))


def token_state_map(geometry: PackedTokenGeometry, keep_mask, view: str, display_size: tuple[int, int]) -> np.ndarray:
    """A `[H, W]` uint8 map at `display_size = (height, width)`: KEPT / DROPPED per token box of `view`, UNSEEN (3)
    where no token of that view looks, 0 never (every pixel gets a state)."""
    keep = np.asarray(keep_mask.tolist() if hasattr(keep_mask, "tolist") else keep_mask, dtype=bool)
    if keep.shape != (len(geometry),):
        raise ValueError(
            f"keep_mask has shape {keep.shape} but the image has {len(geometry)} packed tokens; the mask must come "
            "from the same image, model and processor settings as the geometry."
        )
    out_h, out_w = display_size
    height, width = geometry.image_size
    sy, sx = out_h / height, out_w / width
    state = np.full((out_h, out_w), UNSEEN, dtype=np.uint8)
    for index in np.flatnonzero(geometry.view_mask(view)):
        x0, y0, x1, y1 = geometry.boxes[index]
        c0, c1 = _edges(x0, x1, sx)
        r0, r1 = _edges(y0, y1, sy)
        state[r0:r1, c0:c1] = KEPT if keep[index] else DROPPED
    return state


def render_keep_overlay(
    image: Image.Image,
    geometry: PackedTokenGeometry,
    keep_mask,
    view: str = BASE,
    max_side: int = 768,
    grid_lines: bool = True,
) -> Image.Image:
    """The image with the tokens of `view` drawn over it: kept tokens as they are, dropped ones darkened, crop
    borders (tile view) in yellow, and any strip no token of the view covers tinted magenta.

    `keep_mask` is `[L]` over the image's packed tokens (e.g. `VisualTokenSelection.keep_masks()[i]`). The output is
    `max_side` pixels on its long side and keeps the image's aspect ratio.
    """
    if not isinstance(image, Image.Image):
        raise ValueError(f"image must be a PIL image, got {type(image).__name__}.")
    height, width = geometry.image_size
    if image.size != (width, height):
        raise ValueError(f"image is {image.size[0]}x{image.size[1]} (WxH) but the geometry is for {width}x{height}.")
    # Always drawn at `max_side`: small images are enlarged so that their token boxes stay visible.
    scale = max_side / max(height, width)
    display = (max(1, int(round(height * scale))), max(1, int(round(width * scale))))
    state = token_state_map(geometry, keep_mask, view, display)

    base = np.asarray(image.convert("RGB").resize((display[1], display[0]), Image.BICUBIC), dtype=np.float32)
    out = base.copy()
    dropped = state == DROPPED
    out[dropped] = 0.3 * base[dropped] + 0.7 * _DROPPED_TINT
    unseen = state == UNSEEN
    out[unseen] = 0.5 * base[unseen] + 0.5 * _UNSEEN_TINT
    picture = Image.fromarray(out.clip(0, 255).astype(np.uint8))

    if grid_lines:
        draw = ImageDraw.Draw(picture, "RGBA")
        sy, sx = display[0] / height, display[1] / width
        for index in np.flatnonzero(geometry.view_mask(view)):
            x0, y0, x1, y1 = geometry.boxes[index]
            c0, c1 = _edges(x0, x1, sx)
            r0, r1 = _edges(y0, y1, sy)
            if c1 - c0 >= 6 and r1 - r0 >= 6:
                draw.rectangle([c0, r0, c1 - 1, r1 - 1], outline=(255, 255, 255, 60))
        if view == TILE:
            for crop_index in np.unique(geometry.crop[geometry.view_mask(TILE)]):
                boxes = geometry.boxes[geometry.crop == crop_index]
                c0, c1 = _edges(boxes[:, 0].min(), boxes[:, 2].max(), sx)
                r0, r1 = _edges(boxes[:, 1].min(), boxes[:, 3].max(), sy)
                draw.rectangle([c0, r0, c1 - 1, r1 - 1], outline=(255, 215, 0, 230), width=2)
    return picture


def render_keep_overlays(image: Image.Image, geometry: PackedTokenGeometry, keep_mask, max_side: int = 768) -> dict:
    """`{"base": overlay, "tile": overlay}` for one image (see `render_keep_overlay`)."""
    return {view: render_keep_overlay(image, geometry, keep_mask, view, max_side=max_side) for view in VIEWS}


def view_counts(geometry: PackedTokenGeometry, keep_mask) -> dict:
    """Kept and total tokens per view and overall. Newline tokens are counted apart (they carry no pixels)."""
    keep = np.asarray(keep_mask.tolist() if hasattr(keep_mask, "tolist") else keep_mask, dtype=bool)
    if keep.shape != (len(geometry),):
        raise ValueError(f"keep_mask has shape {keep.shape}, expected ({len(geometry)},).")
    counts = {}
    for name, mask in (
        (BASE, geometry.view_mask(BASE)),
        (TILE, geometry.view_mask(TILE)),
        ("newline", geometry.newline_mask),
    ):
        counts[name] = {"kept": int(keep[mask].sum()), "total": int(mask.sum())}
    counts["all"] = {"kept": int(keep.sum()), "total": int(keep.size)}
    return counts


class LlavaNextCodebookProcessor(LlavaNextProcessor):
    """Stock `LlavaNextProcessor` (same inputs, same placeholders), plus where each packed visual token comes from.

    Example:

    ```python
    >>> from llava_codebook.tiny import build_tiny_processor
    >>> processor = build_tiny_processor()
    >>> geometry = processor.token_geometry([[90, 150]])[0]
    >>> geometry.view_of(0), geometry.box(0)
    ('base', (0.0, 0.0, 37.5, 22.5))
    ```
    """

    def __call__(self, images=None, text=None, *args, **kwargs):
        """Stock processing. Pruning settings given here (`codebook_threshold=0.2`, `pruning_mode="budget"`,
        `pruning=False`, ...) are validated and returned with the model inputs, so `model.generate(**inputs)` and
        `pipeline(...)(..., codebook_threshold=0.2)` apply them as per-call overrides."""
        names = (*PRUNING_VALIDATORS, "pruning")
        overrides = {name: kwargs.pop(name) for name in names if name in kwargs}
        pruning = overrides.pop("pruning", None)
        if pruning is not None and not isinstance(pruning, bool):
            raise ValueError(f"pruning={pruning!r} must be True or False.")
        overrides = validate_pruning_settings(**{k: v for k, v in overrides.items() if v is not None})
        encoding = super().__call__(images, text, *args, **kwargs)
        # Added after tensor conversion so they stay plain Python values (`BatchFeature.to` leaves those alone).
        for name, value in overrides.items():
            encoding[name] = value
        if pruning is not None:
            encoding["pruning"] = pruning
        return encoding

    def save_pretrained(self, save_directory, *args, **kwargs):
        # Loading records how the tokenizer was found (`is_local`, `local_files_only`) in its init kwargs, and the
        # stock save writes them back: a repo saved from a loaded processor would then differ from the original and
        # pin offline mode for its users. Write only what describes the processor.
        for key in ("is_local", "local_files_only"):
            self.tokenizer.init_kwargs.pop(key, None)
        return super().save_pretrained(save_directory, *args, **kwargs)

    def token_geometry(self, image_sizes) -> list[PackedTokenGeometry]:
        """Per image of `image_sizes` (`[N, 2]` heights, widths): the view, crop and pixel box of each packed token."""
        return geometry_for_processor(self, image_sizes)

    def render_keep_overlays(self, images, keep_masks, max_side: int = 768) -> list[dict]:
        """Per image, `{"base": PIL image, "tile": PIL image}` with kept and dropped tokens drawn over the picture.

        `keep_masks` are per-image `[L]` masks over packed tokens, e.g. `output.visual_token_selection.keep_masks()`.
        """
        images = [images] if isinstance(images, Image.Image) else list(images)
        if len(images) != len(keep_masks):
            raise ValueError(f"Got {len(images)} images but {len(keep_masks)} keep masks.")
        geometries = self.token_geometry([[im.height, im.width] for im in images])
        return [render_keep_overlays(im, g, m, max_side) for im, g, m in zip(images, geometries, keep_masks)]


__all__ = [
    "AnyResLayout",
    "LlavaNextCodebookProcessor",
    "PackedTokenGeometry",
    "anyres_layout",
    "geometry_for_processor",
    "packed_token_geometry",
    "render_keep_overlay",
    "render_keep_overlays",
    "token_state_map",
    "view_counts",
]
