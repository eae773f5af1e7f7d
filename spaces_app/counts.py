"""What the page says in numbers: kept / total tokens per view, the predicted LLM prefill FLOPs, and the tables that
show them (one image, a grid-drawn family, two strategies compared)."""

import numpy as np

from llava_codebook.flops import prefill_flops, vision_tower_flops
from llava_codebook.processing_llava_next_codebook import view_counts

from .render import MAX_SHOWN_ASPECT, overlay_stretch


def token_counts(geometry, keep_mask) -> dict:
    """Kept / total tokens for the base view, the tiles, the two together (`scored`: what the pruning rule scores and
    the budget counts), the row newlines (not scored, always kept) and overall, with kept percentages."""
    counts = view_counts(geometry, keep_mask)
    counts["scored"] = {key: counts["base"][key] + counts["tile"][key] for key in ("kept", "total")}
    for entry in counts.values():
        entry["percent_kept"] = 100.0 * entry["kept"] / entry["total"] if entry["total"] else 0.0
    return counts


def counts_by_mask(keep: np.ndarray, masks: dict) -> dict:
    """`{name: {kept, total, percent_kept}}` for each named token mask."""
    counts = {}
    for name, mask in masks.items():
        kept, total = int((keep & mask).sum()), int(mask.sum())
        counts[name] = {"kept": kept, "total": total, "percent_kept": 100.0 * kept / total if total else 0.0}
    return counts


def flops_estimate(text_config, text_tokens: int, visual_tokens: int, kept_visual_tokens: int) -> dict:
    """Predicted LLM prefill FLOPs with all visual tokens and with the kept ones (see `llava_codebook.flops`)."""
    full = prefill_flops(text_config, text_tokens + visual_tokens)
    pruned = prefill_flops(text_config, text_tokens + kept_visual_tokens)
    return {"full": full, "pruned": pruned, "percent_saved": 100.0 * (1.0 - pruned / full)}


def tower_flops_estimate(vision_config, tiles: int, tiles_skipped: int) -> dict:
    """Vision-tower FLOPs of one image of `tiles` AnyRes tiles (plus its base view), encoded in full and with
    `tiles_skipped` of them skipped (`llava_codebook.flops.vision_tower_flops`)."""
    per_crop = vision_tower_flops(vision_config)
    full = (1 + tiles) * per_crop
    return {
        "tiles": tiles,
        "tiles_skipped": tiles_skipped,
        "full": full,
        "with_skipping": full - tiles_skipped * per_crop,
    }


def format_tile_skipping(tower: dict) -> str:
    """The line under the counts when tile skipping is on: how many tiles were never encoded, and the tower FLOPs."""
    return (
        f"**Tile skipping:** {tower['tiles_skipped']} of {tower['tiles']} high-res tiles not encoded (hatched grey; "
        f"their tokens count as dropped). Vision tower: {format_flops(tower['full'], tower['with_skipping'])}."
    )


FLOPS_UNITS = (("PFLOPs", 1e15), ("TFLOPs", 1e12), ("GFLOPs", 1e9), ("MFLOPs", 1e6), ("kFLOPs", 1e3))


def flops_unit(value: float) -> tuple[str, float]:
    """The unit `value` reads best in (its value there is at least 1, below 1000), and that unit's scale."""
    for unit, scale in FLOPS_UNITS:
        if round(value / scale, 2) >= 1:
            return unit, scale
    return "FLOPs", 1.0


def format_flops(full: float, pruned: float) -> str:
    """`full -> pruned` in one unit, the one that suits `full`: "6.16 MFLOPs → 0.91 MFLOPs (85.2 % saved)"."""
    unit, scale = flops_unit(full)
    saved = 100.0 * (1.0 - pruned / full) if full else 0.0
    return f"{full / scale:.2f} {unit} → {pruned / scale:.2f} {unit} ({saved:.1f} % saved)"


def _percent(entry: dict) -> str:
    return f"{entry['percent_kept']:.1f} %" if entry["total"] else "–"


def _ratio(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def empty_tile_grid_note(geometry) -> str:
    """Why the tile grid of this image has no tokens (an empty string when it has some)."""
    layout = geometry.layout
    rows, cols = layout.kept_token_grid
    if rows and cols:
        return ""
    height, width = layout.image_size
    fitted_h, fitted_w = layout.resized_size
    grid_h, grid_w = layout.canvas_size
    side = "tall" if rows == 0 else "wide"
    return (
        f"**No tile tokens.** Fitted into its {layout.tile_grid[0]}×{layout.tile_grid[1]} crop grid "
        f"({grid_w}×{grid_h} px), this {width}×{height} image is {fitted_w}×{fitted_h} px: less than one "
        f"{layout.patch_size} px token {side}, and the stock unpadding keeps whole tokens only. The model sees this "
        "image through the base view alone."
    )


def format_counts(counts: dict, flops: dict, geometry) -> str:
    """The counts table and summary shown under the overlays. Every number says what it counts: the pruning rule
    scores the base-view and tile tokens (`scored`: the threshold and the budget apply to these), the row newlines
    are not scored and always kept, and the prompt carries both."""
    layout = geometry.layout
    side = layout.tokens_per_side
    rows, cols = layout.kept_token_grid
    base, tile, scored, newline, every = (counts[k] for k in ("base", "tile", "scored", "newline", "all"))
    height, width = layout.image_size
    lines = []
    stretch = overlay_stretch((width, height))
    if stretch > 1:
        arrow, direction = ("↕", "vertically") if width > height else ("↔", "horizontally")
        aspect = max(width, height) / min(width, height)
        lines += [
            (
                f"{arrow} The overlays are stretched {_ratio(stretch)}× {direction}: this image is {_ratio(aspect)}:1, "
                f"shown at {MAX_SHOWN_ASPECT:g}:1 so that its tokens stay visible."
            ),
            "",
        ]
    tiles = f"{layout.tile_grid[0]}×{layout.tile_grid[1]} crops, {rows}×{cols} unpadded"
    lines += [
        "| tokens | kept | total | kept % |",
        "|---|---:|---:|---:|",
        f"| base view ({side}×{side}) | {base['kept']} | {base['total']} | {_percent(base)} |",
        f"| high-res tiles ({tiles}) | {tile['kept']} | {tile['total']} | {_percent(tile)} |",
        f"| **scored** (base + tiles) | **{scored['kept']}** | **{scored['total']}** | **{_percent(scored)}** |",
        f"| row newlines (not scored) | {newline['kept']} | {newline['total']} | |",
        f"| in the prompt (scored + newlines) | {every['kept']} | {every['total']} | {_percent(every)} |",
        "",
        (
            "The threshold and the budget apply to the *scored* tokens (a budget's share is a share of those); row "
            "newlines are always kept."
        ),
        "",
    ]
    note = empty_tile_grid_note(geometry)
    if note:
        lines += [note, ""]
    lines.append(
        f"**Kept {every['kept']} / {every['total']} visual tokens ({_percent(every)})** in the prompt: "
        f"{scored['kept']} / {scored['total']} scored ({_percent(scored)}) and {newline['kept']} row newlines. "
        f"Predicted LLM prefill: {format_flops(flops['full'], flops['pruned'])}."
    )
    return "\n".join(lines)


def format_grid_counts(counts: dict, flops: dict, views: dict, family: str) -> str:
    """The counts table of `draw_selection` for grid-drawn families: the same rows as `format_counts`, the views
    named by their grids."""
    base, tile, scored, newline, every = (counts[k] for k in ("base", "tile", "scored", "newline", "all"))
    rows, cols = views["base"].shape
    merged = family.startswith("qwen")
    view = "merged tokens" if merged else "the view" if family == "llava" else "base view"
    lines = [
        "| tokens | kept | total | kept % |",
        "|---|---:|---:|---:|",
        f"| {view} ({rows}×{cols}) | {base['kept']} | {base['total']} | {_percent(base)} |",
    ]
    if "tile" in views:
        t_rows, t_cols = views["tile"].shape
        lines.append(
            f"| high-res tiles ({t_rows}×{t_cols} packed) | {tile['kept']} | {tile['total']} | {_percent(tile)} |"
        )
    lines.append(f"| **scored** | **{scored['kept']}** | **{scored['total']}** | **{_percent(scored)}** |")
    if not merged:  # Qwen-VL has no newline tokens
        lines.append(f"| row newlines (not scored) | {newline['kept']} | {newline['total']} | |")
    lines += [f"| in the prompt | {every['kept']} | {every['total']} | {_percent(every)} |", ""]
    if family == "llava":
        lines += ["This family sees one square view (the centre crop; magenta: outside it). There are no tiles.", ""]
    if merged:
        lines += [
            "This family merges each 2×2 block of patches into one token and sees the whole image as one grid of "
            "them (resized to whole blocks, not cropped). There are no tiles and no newline tokens.",
            "",
        ]
    lines.append(
        f"**Kept {every['kept']} / {every['total']} visual tokens ({_percent(every)})** in the prompt. "
        f"Predicted LLM prefill: {format_flops(flops['full'], flops['pruned'])}."
    )
    return "\n".join(lines)


def kept_overlap(keep_a: np.ndarray, keep_b: np.ndarray, scored: np.ndarray) -> dict:
    """How two kept sets agree on the scored tokens: kept by both, by one only, by neither, and their Jaccard index
    (|A ∩ B| / |A ∪ B|; 1.0 when both keep nothing)."""
    a, b = keep_a & scored, keep_b & scored
    both, union = int((a & b).sum()), int((a | b).sum())
    return {
        "both": both,
        "only_a": int((a & ~b).sum()),
        "only_b": int((b & ~a).sum()),
        "neither": int((scored & ~a & ~b).sum()),
        "jaccard": both / union if union else 1.0,
    }


def _kept_cell(entry: dict) -> str:
    return f"{entry['kept']} / {entry['total']}" + (f" ({entry['percent_kept']:.1f} %)" if entry["total"] else "")


def format_comparison(shown: list, strategies: tuple[str, str], overlap: dict, budget: int, keep_ratio: float) -> str:
    """The comparison table: each strategy's kept tokens per view, in the prompt and the predicted prefill, then how
    far the two kept sets agree."""
    a, b = strategies
    rows = [("base view", "base"), ("high-res tiles", "tile"), ("**scored**", "scored"), ("row newlines", "newline")]
    lines = [
        (
            f"Both at the same budget: {keep_ratio:.0%} of the scored tokens = **{budget}** per image (a strategy may "
            "keep fewer: `codebook_diverse` keeps no token the codebook marks redundant beyond the minimum)."
        ),
        "",
        f"| tokens | A: {a} | B: {b} |",
        "|---|---:|---:|",
    ]
    for label, key in rows:
        if shown[0].counts[key]["total"]:
            lines.append(f"| {label} | {_kept_cell(shown[0].counts[key])} | {_kept_cell(shown[1].counts[key])} |")
    lines.append(f"| in the prompt | {_kept_cell(shown[0].counts['all'])} | {_kept_cell(shown[1].counts['all'])} |")
    prefill = []
    for preview in shown:
        unit, scale = flops_unit(preview.flops["full"])
        prefill.append(f"{preview.flops['pruned'] / scale:.2f} {unit} ({preview.flops['percent_saved']:.1f} % saved)")
    lines += [f"| predicted LLM prefill | {prefill[0]} | {prefill[1]} |", ""]
    for side, preview, name in (("A", shown[0], a), ("B", shown[1], b)):
        if preview.counts.get("merged"):
            lines += [
                (
                    f"{side} ({name}): {preview.counts['merged']} kept tokens are contextual tokens carrying merged "
                    "features (drawn kept at their place)."
                ),
                "",
            ]
    lines.append(
        f"**Agreement on the scored tokens:** both keep {overlap['both']}, only A keeps {overlap['only_a']}, only B "
        f"keeps {overlap['only_b']}, neither keeps {overlap['neither']}; Jaccard overlap of the kept sets "
        f"**{overlap['jaccard']:.2f}** (1 = the same tokens)."
    )
    return "\n".join(lines)


def format_video_counts(counts: dict, flops: dict, grid_shape: tuple[int, int], frames_per_crop: int = 1) -> str:
    """The counts table of a video: each frame's kept pooled tokens (Qwen-VL, `frames_per_crop` > 1: each temporal
    patch's merged tokens, its frames named), the scored total, the newline and the prefill."""
    per_frame, every, scored, newline = counts["frames"], counts["all"], counts["scored"], counts["newline"]
    rows, cols = grid_shape
    if frames_per_crop > 1:
        lead = (
            f"{len(per_frame)} temporal patches of {frames_per_crop} frames each, each merged to {rows}×{cols} tokens "
            "(the strip shows each patch's first frame); clear = kept, dark = dropped."
        )
        unit, names = "frames", [c["frames"] for c in per_frame]
    else:
        lead = f"{len(per_frame)} frames, each pooled to {rows}×{cols} tokens; clear = kept, dark = dropped."
        unit, names = "frame", [str(i + 1) for i in range(len(per_frame))]
    newline_row = (
        [] if frames_per_crop > 1 else [f"| newline (not scored) | {newline['kept']} | {newline['total']} | |"]
    )
    return "\n".join(
        [
            lead,
            "",
            f"| {unit} | kept | total | kept % |",
            "|---|---:|---:|---:|",
            *(
                f"| {name} | {c['kept']} | {c['total']} | {100.0 * c['kept'] / c['total']:.1f} % |"
                for name, c in zip(names, per_frame)
            ),
            f"| **scored** | **{scored['kept']}** | **{scored['total']}** | **{_percent(scored)}** |",
            *newline_row,
            "",
            (
                f"**Kept {every['kept']} / {every['total']} visual tokens ({_percent(every)})** in the prompt. "
                f"Predicted LLM prefill: {format_flops(flops['full'], flops['pruned'])}."
            ),
        ]
    )
