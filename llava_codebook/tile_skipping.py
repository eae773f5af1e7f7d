"""Codebook-guided tile skipping: AnyRes tiles whose part of the image the base view already shows to be redundant
are never given to the vision tower.

Every pre-LLM pruning rule encodes every AnyRes crop before it decides what to drop, so the vision tower is a floor
under the saving. Tile skipping lowers it for the families with tiles (LLaVA-NeXT, LLaVA-OneVision and
LLaVA-NeXT-Video images):

1. the base view of every image of the call is encoded (one tower pass) and its tokens scored with the codebook;
2. a tile is skipped when its region of the base view is redundant: at least `tile_skip_share` of the region's
   base-view tokens score at or above `codebook_threshold` (what threshold mode drops); a tile showing padding only
   (an empty region) is skipped too;
3. the tiles left, of every image, are encoded in one tower pass; the packed layout is the stock packer's, with the
   skipped tiles' features zero;
4. the packed tokens computed from a skipped tile are dropped (all of its tokens for LLaVA-NeXT; for a LLaVA-OneVision
   grid the packer shrank bilinearly, every token with any weight on it), and a row newline goes with its row when
   skipping leaves the row no token; the pruning strategy then selects among the remaining tokens under the image's
   own budget (`keep_ratio` is a share of its full token count) and minimum.

The region of a tile is found from the real AnyRes geometry: the base view is the whole image resized to the tower's
resolution, so its token (i, j) covers rows [i/side, (i+1)/side) and columns [j/side, (j+1)/side) of the image; the
tiles are cut from the image resized with its aspect ratio to the best-fit pinpoint resolution and padded centrally,
so tile (r, c) shows the part of the image its square covers once the padding is removed. A base-view token is in a
tile's region when the two overlap with positive area.

The features of the encoded crops are unchanged by skipping (each crop is encoded on its own), so what the language
model receives is the stock packing with the skipped tiles' tokens (and the dropped tokens) left out.
"""

import math
from dataclasses import dataclass, replace

import torch
from transformers.image_processing_utils import select_best_resolution

from .selection import codebook_similarity
from .strategies import Segment, StrategyResult


@dataclass(frozen=True)
class AnyResTiles:
    """Where the tiles of one image lie, in the image processor's own arithmetic; sizes are `(height, width)`.

    canvas: the best-fit pinpoint resolution the tiles are cut from; resized: the image resized into it with its
    aspect ratio; paste: the top / left padding; grid: `(rows, cols)` of tiles of `crop_size` pixels.
    """

    image_size: tuple[int, int]
    crop_size: int
    canvas: tuple[int, int]
    resized: tuple[int, int]
    paste: tuple[int, int]
    grid: tuple[int, int]

    @property
    def num_tiles(self) -> int:
        return self.grid[0] * self.grid[1]

    def _span(self, index: int, axis: int) -> tuple[int, int]:
        """The tile's extent along `axis` in pixels of the resized image, clipped to it (empty on padding)."""
        start = index * self.crop_size - self.paste[axis]
        stop = start + self.crop_size
        size = self.resized[axis]
        return min(max(start, 0), size), min(max(stop, 0), size)

    def content_box(self, tile: int) -> tuple[float, float, float, float] | None:
        """`(x0, y0, x1, y1)` of the original image that tile `tile` (0-based, row-major) shows, or `None` for a
        tile of padding only."""
        row, col = divmod(tile, self.grid[1])
        (y0, y1), (x0, x1) = self._span(row, 0), self._span(col, 1)
        if y0 >= y1 or x0 >= x1:
            return None
        sy, sx = self.image_size[0] / self.resized[0], self.image_size[1] / self.resized[1]
        return (x0 * sx, y0 * sy, x1 * sx, y1 * sy)

    def regions(self, side: int) -> torch.BoolTensor:
        """`[num_tiles, side * side]`: which base-view tokens (raster order) lie in each tile's region."""
        rows, cols = self.grid
        cells = torch.arange(side)
        masks = []
        for tile in range(rows * cols):
            row, col = divmod(tile, cols)
            along = []
            for axis, index in ((0, row), (1, col)):
                start, stop = self._span(index, axis)
                size = self.resized[axis]
                # Cell k spans [k * size / side, (k + 1) * size / side) resized pixels; integers keep it exact.
                along.append((cells * size < stop * side) & ((cells + 1) * size > start * side) & (start < stop))
            masks.append((along[0][:, None] & along[1][None, :]).reshape(-1))
        return torch.stack(masks) if masks else torch.zeros(0, side * side, dtype=torch.bool)


def anyres_tiles(image_size, grid_pinpoints, crop_size: int) -> AnyResTiles:
    """The tile layout of an image of `image_size = (height, width)`, as the stock LLaVA-NeXT / OneVision image
    processors compute it: `select_best_resolution`, an aspect-preserving resize (`get_patch_output_size`, which
    rounds the fitted side up), central zero padding (the odd pixel bottom / right) and a split into crops."""
    height, width = (int(v) for v in (image_size.tolist() if hasattr(image_size, "tolist") else image_size))
    canvas_h, canvas_w = select_best_resolution((height, width), [list(p) for p in grid_pinpoints])
    scale_w, scale_h = canvas_w / width, canvas_h / height
    if scale_w < scale_h:
        resized = (min(math.ceil(height * scale_w), canvas_h), canvas_w)
    else:
        resized = (canvas_h, min(math.ceil(width * scale_h), canvas_w))
    paste = ((canvas_h - resized[0]) // 2, (canvas_w - resized[1]) // 2)
    return AnyResTiles(
        image_size=(height, width),
        crop_size=int(crop_size),
        canvas=(canvas_h, canvas_w),
        resized=resized,
        paste=paste,
        grid=(canvas_h // crop_size, canvas_w // crop_size),
    )


def split_crops(pixel_values: torch.Tensor, crop_counts: list[int]) -> list[torch.Tensor]:
    """Per image its `[num_crops, C, H, W]` crops, from `pixel_values` as the stock `get_image_features` reads them:
    `[images, max_crops, C, H, W]` padded per image, or the crops of every image concatenated."""
    if pixel_values.dim() == 5:
        return [pixels[:count] for pixels, count in zip(pixel_values, crop_counts)]
    if pixel_values.dim() != 4 or pixel_values.shape[0] != sum(crop_counts):
        raise ValueError(
            f"pixel_values of shape {tuple(pixel_values.shape)} do not hold the {sum(crop_counts)} crops that "
            "image_sizes imply; pass the pixel_values and image_sizes the processor returned together."
        )
    return list(pixel_values.split(crop_counts))


def tiles_to_skip(redundant: torch.BoolTensor, regions: torch.BoolTensor, share: float) -> torch.BoolTensor:
    """The rule: tile t is skipped iff its region is empty or `redundant` over its region reaches `share`.

    redundant: `[side * side]` base-view tokens scoring at or above the codebook threshold; regions: `[T, side *
    side]` (`AnyResTiles.regions`). The share is compared as a quotient, so a share given as a decimal (0.3) is met
    by exactly that fraction of tokens (3 of 10).
    """
    regions = regions.to(redundant.device)
    total = regions.sum(dim=1).double()
    hits = (regions & redundant[None, :]).sum(dim=1).double()
    return (total == 0) | (hits / total.clamp(min=1) >= share)


def encode_crops(model, pixel_values: torch.Tensor, vision_feature_layer, vision_feature_select_strategy):
    """`[N, tokens, D]` projected features of a batch of crops, as the stock `get_image_features` computes them before
    it splits and packs (the tower's `vision_feature_layer` hidden states, [CLS] dropped by the "default" strategy,
    the projector)."""
    outputs = model.vision_tower(pixel_values, output_hidden_states=vision_feature_layer, return_dict=True)
    if isinstance(vision_feature_layer, int):
        selected = outputs.hidden_states[vision_feature_layer]
    else:
        selected = torch.cat([outputs.hidden_states[layer] for layer in vision_feature_layer], dim=-1)
    if vision_feature_select_strategy == "default":
        selected = selected[:, 1:]
    return model.multi_modal_projector(selected)


@dataclass
class SkippedEncoding:
    """One call's images encoded with tile skipping.

    crop_features: per image `[num_crops, tokens, D]`, crop 0 the base view, a skipped tile's rows zero.
    skipped_tiles: per image the crop ids (1 = first tile, row-major) of the skipped tiles.
    crops_encoded: crops the vision tower ran on (base views included).
    """

    crop_features: list[torch.Tensor]
    skipped_tiles: list[torch.Tensor]
    crops_encoded: int


def decide_skips(model, bases: torch.Tensor, regions: list[torch.BoolTensor | None], settings, side: int) -> list:
    """The rule for a batch of images: per image, the crop ids (1 = first tile, row-major) of the tiles to skip.

    `bases` is `[N, tokens, D]`, each image's projected base-view tokens (a [CLS] token first where the feature
    strategy keeps it); `regions[i]` image i's tiles' regions (`None` for an image with no tiles)."""
    prototypes = model.codebook_prototypes(bases.device)
    with torch.no_grad():
        scores = codebook_similarity(bases.flatten(0, 1), prototypes).view(bases.shape[0], -1)
    # With the "full" strategy a [CLS] token comes first; the base-view grid is the last side * side tokens.
    redundant = scores[:, -side * side :] >= settings.codebook_threshold
    return [
        torch.zeros(0, dtype=torch.long)
        if region is None
        else tiles_to_skip(redundant[index], region, settings.tile_skip_share).nonzero().squeeze(-1).cpu() + 1
        for index, region in enumerate(regions)
    ]


def encode_skipping_tiles(
    model, crops: list[torch.Tensor], regions: list[torch.BoolTensor | None], settings, side: int, **feature_args
) -> SkippedEncoding:
    """Encode every image's base view, decide its tiles (`decide_skips`), then encode the tiles left, all images in
    one pass. `crops[i]` is image i's `[num_crops, C, H, W]` pixels (crop 0 the base view); `regions[i]` its tiles'
    regions (`None` for an image encoded as its base view alone); `feature_args` are `encode_crops`'s
    `vision_feature_layer` / `vision_feature_select_strategy`."""
    bases = encode_crops(model, torch.stack([pixels[0] for pixels in crops]), **feature_args)
    skipped_tiles = decide_skips(model, bases, regions, settings, side)
    remaining, kept_ids = [], []
    for pixels, skipped in zip(crops, skipped_tiles):
        kept = torch.ones(pixels.shape[0], dtype=torch.bool)
        kept[0] = False
        kept[skipped] = False
        kept_ids.append(kept.nonzero().squeeze(-1))
        remaining.append(pixels[kept_ids[-1].to(pixels.device)])
    tiles = torch.cat(remaining)
    tile_features = encode_crops(model, tiles, **feature_args) if tiles.shape[0] else bases[:0]
    crop_features, offset = [], 0
    for index, (pixels, kept) in enumerate(zip(crops, kept_ids)):
        features = bases.new_zeros(pixels.shape[0], *bases.shape[1:])
        features[0] = bases[index]
        features[kept.to(features.device)] = tile_features[offset : offset + kept.numel()]
        offset += kept.numel()
        crop_features.append(features)
    return SkippedEncoding(
        crop_features=crop_features, skipped_tiles=skipped_tiles, crops_encoded=len(crops) + tiles.shape[0]
    )


def skipped_token_masks(
    pack_crop_values, crop_counts: list[int], skipped_tiles: list[torch.Tensor], tokens_per_crop: int, crop_ids
) -> list[torch.BoolTensor]:
    """Per image, `[L]` True at the packed tokens skipping takes away: every token the packer computed with any weight
    on a skipped tile (found by packing a map that is 1 on skipped tiles with the family's own `pack_crop_values`),
    and the newline of a row left with no token. `crop_ids` are the family's (0 = base view, -1 = newline)."""
    indicator = []
    for count, skipped in zip(crop_counts, skipped_tiles):
        values = torch.zeros(count, tokens_per_crop)
        values[skipped.long()] = 1.0
        indicator.append(values)
    masks = []
    for packed, ids in zip(pack_crop_values(indicator), crop_ids):
        ids = ids.to(packed.device)
        newline = ids < 0
        lost = packed.nan_to_num(0.0) > 0
        # A grid row's tokens are the tile tokens between two newlines; `row` numbers them by the newlines before.
        row = torch.cumsum(newline.long(), 0) - newline.long()
        grid = (ids > 0) & ~newline
        rows = int(newline.sum())
        total = torch.bincount(row[grid], minlength=rows)[:rows]
        gone = torch.bincount(row[grid & lost], minlength=rows)[:rows]
        lost[newline] = (total > 0) & (gone == total)
        masks.append(lost)
    return masks


def select_around_skipped(strategy, segments: list[Segment], skipped: list, settings, model) -> StrategyResult:
    """Run `strategy` on what skipping left of each segment and map its choice back to the packed order.

    `skipped[i]` is segment i's `[L]` mask of tokens skipping took away (or `None`). Each segment's budget stays its
    own: in budget mode without `keep_tokens`, `keep_ratio` applies to the segment's full count of non-newline tokens,
    so skipping moves the budget onto the tokens left instead of shrinking it. Scores are NaN where skipped.
    """
    if not any(mask is not None and bool(mask.any()) for mask in skipped):
        return strategy(segments, settings, model)
    kept, scores, merged = [], [], []
    for segment, mask in zip(segments, skipped):
        if mask is None:
            mask = torch.zeros_like(segment.newline)
        available = (~mask.to(segment.newline.device)).nonzero().squeeze(-1)
        part = Segment(
            features=segment.features[available.to(segment.features.device)],
            newline=segment.newline[available],
            modality=segment.modality,
            crop_ids=None if segment.crop_ids is None else segment.crop_ids[available],
            crop_grid=segment.crop_grid,
        )
        own = settings
        if settings.pruning_mode == "budget" and settings.keep_tokens is None:
            own = replace(settings, keep_tokens=round(int((~segment.newline).sum()) * settings.keep_ratio))
        result = strategy([part], own, model)
        kept.append(available[result.kept[0].to(available.device)])
        if result.scores is not None:
            full = torch.full(mask.shape, math.nan, dtype=result.scores[0].dtype, device=result.scores[0].device)
            full[available.to(full.device)] = result.scores[0]
            scores.append(full)
        merged.append(None if result.features is None else result.features[0])
    return StrategyResult(
        kept=kept,
        scores=scores if len(scores) == len(kept) else None,
        features=merged if any(f is not None for f in merged) else None,
    )


__all__ = [
    "AnyResTiles",
    "SkippedEncoding",
    "anyres_tiles",
    "decide_skips",
    "encode_crops",
    "encode_skipping_tiles",
    "select_around_skipped",
    "skipped_token_masks",
    "split_crops",
    "tiles_to_skip",
]
