"""The image part of the page as plain functions: `preview` (overlays and counts for the current settings),
`answer` (the same, then the answers with and without pruning) and `compare` (two strategies at one budget). Each
checks its inputs first (`inputs.validate_inputs`) and reads the encoding cache: the vision tower runs only the first
time an image is seen."""

from dataclasses import dataclass

import numpy as np
from PIL import Image

from llava_codebook.strategies import image_budget
from llava_codebook.tile_skipping import anyres_tiles

from .counts import (
    counts_by_mask,
    flops_estimate,
    format_comparison,
    format_counts,
    format_grid_counts,
    format_tile_skipping,
    kept_overlap,
    token_counts,
    tower_flops_estimate,
)
from .encoding import EncodedVisual, encode_visual, merged_count, score_visual
from .gpu import on_model_device
from .inputs import (
    NOT_TAKEN,
    STRATEGY_LABELS,
    InputError,
    Inputs,
    check_strategy,
    pruning_overrides,
    validate_inputs,
)
from .model import Backend, Generations, generate_both, text_token_count
from .render import grid_views, hatch_boxes, render_grid, render_overlay, shown_size


@dataclass
class Preview:
    base_overlay: Image.Image
    tile_overlay: Image.Image | None
    counts: dict
    flops: dict
    markdown: str
    selection: object


def preview(
    backend: Backend,
    image,
    mode: str,
    threshold: float,
    keep_ratio: float,
    question: str = "",
    allowed_dirs=None,
    strategy: str = "codebook",
    tile_skipping=False,
    tile_skip_share=0.9,
) -> Preview:
    """Overlays and counts for the current settings; the vision tower runs only the first time an image is seen.
    With `allowed_dirs`, an image given as a path must lie in one of those folders (see `locate_image`). With
    `tile_skipping`, the tiles the model would not encode are hatched grey and counted with the tower FLOPs saved."""
    inputs = image_inputs(
        backend,
        image,
        question,
        mode,
        threshold,
        keep_ratio,
        allowed_dirs,
        strategy,
        tile_skipping=tile_skipping,
        tile_skip_share=tile_skip_share,
    )
    return show_selection(backend, inputs)


def image_placeholder(backend: Backend) -> str:
    return getattr(backend.processor, "image_token", None) or "<image>"


def image_inputs(
    backend,
    image,
    question,
    mode,
    threshold,
    keep_ratio,
    allowed_dirs,
    strategy,
    max_new_tokens=NOT_TAKEN,
    required=False,
    tile_skipping=False,
    tile_skip_share=0.9,
) -> Inputs:
    """`validate_inputs` for an image request to this backend: its image placeholder, the strategies it serves for
    images, tile skipping only where its images have AnyRes tiles (the image twin of `videos.video_inputs`)."""
    checked = validate_inputs(
        image,
        question,
        mode,
        threshold,
        keep_ratio,
        max_new_tokens,
        question_required=required,
        image_token=image_placeholder(backend),
        allowed_dirs=allowed_dirs,
        strategy=strategy,
        strategies=backend.strategies("image"),
        tile_skipping=tile_skipping,
        tile_skip_share=tile_skip_share,
    )
    if checked.tile_skipping and "image" not in getattr(backend.model.model, "tile_skipping_modalities", ()):
        raise InputError(
            f"{backend.name} encodes each image without AnyRes tiles, so there are no tiles to skip; leave tile "
            "skipping off (it applies to LLaVA-NeXT, LLaVA-OneVision and LLaVA-NeXT-Video)."
        )
    return checked


def show_selection(backend: Backend, inputs: Inputs) -> Preview:
    """`preview` for inputs already checked."""
    encoded = encode_visual(backend, "image", inputs.image)
    selection = score_visual(backend, encoded, inputs.overrides)
    return draw_selection(backend, inputs.image, encoded, selection, inputs.question, inputs.strategy)


def draw_selection(backend: Backend, image, encoded: EncodedVisual, selection, question: str, strategy: str) -> Preview:
    """The overlays, counts and FLOPs of one selection of an encoded image: with LLaVA-NeXT's pixel geometry where the
    family has it, else each view drawn as its token grid, read from the family's crop ids (`frames.grid_views`)."""
    keep = selection.keep_masks()[0].cpu().numpy()
    crop_ids, newline = encoded.crop_ids.numpy(), encoded.newline.numpy()
    if encoded.geometry is not None:
        counts = token_counts(encoded.geometry, keep)
    else:
        scored = ~newline
        counts = counts_by_mask(
            keep,
            {
                "base": crop_ids == 0,
                "tile": (crop_ids > 0) & scored,
                "scored": scored,
                "newline": newline,
                "all": np.ones_like(newline),
            },
        )
    flops = flops_estimate(
        backend.model.config.text_config,
        text_token_count(backend.processor, question),
        counts["all"]["total"],
        counts["all"]["kept"],
    )
    merged = merged_count(encoded, selection)
    if merged:
        counts["merged"] = merged
    if encoded.geometry is not None:
        base_overlay = render_overlay(image, encoded.geometry, keep, "base")
        tile_overlay = render_overlay(image, encoded.geometry, keep, "tile")
        markdown = format_counts(counts, flops, encoded.geometry)
    else:
        views = grid_views(crop_ids, newline, image.size, backend.processor.image_processor, encoded.token_grid)
        overlays = {
            name: render_grid(image, view.keep_grid(keep), view.region, shown_size(image.size))
            for name, view in views.items()
        }
        base_overlay, tile_overlay = overlays["base"], overlays.get("tile")
        markdown = format_grid_counts(counts, flops, views, backend.family)
    lead = f"**Strategy:** {STRATEGY_LABELS.get(strategy, strategy)}."
    if merged:
        lead += f" {merged} of the kept tokens are contextual tokens carrying merged features (drawn kept)."
    skipped = selection.skipped_tiles[0] if selection.skipped_tiles is not None else None
    if skipped is not None:
        model = backend.model
        layout = anyres_tiles(
            encoded.image_size, model.config.image_grid_pinpoints, model.config.vision_config.image_size
        )
        flops["vision_tower"] = tower_flops_estimate(model.config.vision_config, layout.num_tiles, skipped.numel())
        boxes = [box for box in (layout.content_box(int(t) - 1) for t in skipped) if box is not None]
        if tile_overlay is not None and boxes:
            tile_overlay = hatch_boxes(tile_overlay, boxes, image.size)
        markdown += "\n\n" + format_tile_skipping(flops["vision_tower"])
    return Preview(base_overlay, tile_overlay, counts, flops, f"{lead}\n\n{markdown}", selection)


@dataclass
class Answer:
    generations: Generations
    preview: Preview


def answer(
    backend: Backend,
    image,
    question: str,
    mode: str,
    threshold: float,
    keep_ratio: float,
    max_new_tokens: int = 24,
    allowed_dirs=None,
    strategy: str = "codebook",
    tile_skipping=False,
    tile_skip_share=0.9,
) -> Answer:
    """Check the inputs, show the selection (cached features), then answer with pruning and without."""
    inputs = image_inputs(
        backend,
        image,
        question,
        mode,
        threshold,
        keep_ratio,
        allowed_dirs,
        strategy,
        max_new_tokens,
        required=True,
        tile_skipping=tile_skipping,
        tile_skip_share=tile_skip_share,
    )
    shown = show_selection(backend, inputs)
    generations = on_model_device(
        backend, generate_both, inputs.image, inputs.question, inputs.overrides, inputs.max_new_tokens
    )
    return Answer(generations=generations, preview=shown)


@dataclass
class Comparison:
    """Two strategies at one budget on one image: each one's `Preview`, their agreement, and the table shown."""

    left: Preview
    right: Preview
    strategies: tuple[str, str]
    overlap: dict
    markdown: str


def compare(
    backend: Backend,
    image,
    strategy_a: str,
    strategy_b: str,
    keep_ratio: float,
    threshold: float,
    question: str = "",
    allowed_dirs=None,
) -> Comparison:
    """Strategies `strategy_a` and `strategy_b` at the same budget (`keep_ratio` of the scored tokens) on the same
    image: overlays and counts of each, and how far their kept sets agree. Both are re-scored from the one cached
    encoding of the image (features and tower signals): the vision tower runs only the first time an image is seen.
    `threshold` is the codebook's, read by a strategy that drops codebook-redundant tokens first."""
    strategy_b = check_strategy(strategy_b, backend.strategies("image"))
    inputs = image_inputs(backend, image, question, "budget", threshold, keep_ratio, allowed_dirs, strategy_a)
    strategy_a = inputs.strategy
    encoded = encode_visual(backend, "image", inputs.image)
    shown = []
    for strategy in (strategy_a, strategy_b):
        overrides = pruning_overrides("budget", inputs.threshold, inputs.keep_ratio, strategy)
        selection = score_visual(backend, encoded, overrides)
        shown.append(draw_selection(backend, inputs.image, encoded, selection, inputs.question, strategy))
    keep_a, keep_b = (p.selection.keep_masks()[0].cpu().numpy() for p in shown)
    overlap = kept_overlap(keep_a, keep_b, ~encoded.newline.numpy())
    settings = backend.model.pruning_settings(**pruning_overrides("budget", inputs.threshold, inputs.keep_ratio))
    budget = image_budget(int((~encoded.newline).sum()), settings)
    markdown = format_comparison(shown, (strategy_a, strategy_b), overlap, budget, inputs.keep_ratio)
    return Comparison(shown[0], shown[1], (strategy_a, strategy_b), overlap, markdown)
