"""The tables `llava-codebook profile` writes: Markdown for people, JSON with every per-batch number."""

import json
from collections import Counter
from pathlib import Path

from .profile_prompts import Prompt

MiB = 2**20

COLUMNS = (
    "batch size",
    "configuration",
    "visual tokens kept / total",
    "prefill width (unpruned)",
    "predicted prefill GFLOPs (share)",
    "vision tower ms (share)",
    "crops encoded (tower GFLOPs)",
    "selection ms (share of tower)",
    "vision + selection ms",
    "prefill ms (share)",
    "TTFT ms (share)",
    "decode ms/token",
    "generated tokens/s",
    "peak memory MiB (+ during call)",
    "KV cache MiB",
)

COLUMN_NOTES = (
    "Columns (per batch, averaged over the batches of a batch size): visual tokens kept / total in the batch (row "
    "newlines included); the width the language model's prefill ran at (every row padded to it) and, in parentheses, "
    "the unpruned prompt's; the predicted prefill FLOPs of that width times the rows "
    "(`llava_codebook.flops.prefill_flops`: `2 * n * P + 4 * n^2 * d_attn` per layer, `P` the attention and MLP "
    "weights, plus the LM head on the last token) and their share of the unpruned batch's; vision tower = its "
    "forward passes (a strategy's signal probes included), the crops it ran on and their FLOPs "
    "(`llava_codebook.flops.vision_tower_flops`; `+ tile skipping` rows leave the tiles the codebook finds redundant "
    "unencoded); selection = the strategy choosing the kept tokens, and "
    "its share of the vision tower's time; vision + selection = from the call to the start of the language model's "
    "prefill; prefill = the language model's first forward pass; TTFT = time to the first new token; decode = mean "
    "time per following token; generated tokens/s = new tokens of all rows over the time of the calls (all batches of "
    "the batch size together); shares in "
    "parentheses are relative to the `none` row of the same batch size; peak memory during the call (in "
    "parentheses: above what was held when it started); the KV cache after prefill."
)


def _fmt(value, scale: float = 1.0, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value * scale:,.{digits}f}"


def _flops(value: float) -> str:
    """GFLOPs with about three significant digits, from a toy model's 0.0123 to a 7B model's 46,000."""
    giga = value / 1e9
    if giga >= 100:
        return f"{giga:,.0f}"
    return f"{giga:.3g}" if giga < 1 else f"{giga:.2f}"


def _share(value) -> str:
    return "" if value is None else f" ({value:.2f})"


def _percent(value) -> str:
    return "" if value is None else f" ({value:.1%})"


def _crops(row: dict) -> str:
    if row.get("crops_encoded") is None:
        return "n/a"
    flops = row.get("vision_tower_flops")
    return f"{row['crops_encoded']:,.1f}".removesuffix(".0") + ("" if flops is None else f" ({_flops(flops)})")


def table_row(row: dict) -> str:
    cells = [
        str(row["batch_size"]),
        row["configuration"],
        f"{row['visual_tokens_kept']:,.0f} / {row['visual_tokens_total']:,.0f}",
        f"{row['prefill_width']:,.0f} ({row['prefill_width_unpruned']:,.0f})",
        f"{_flops(row['prefill_flops'])} ({row['prefill_flops_share']:.2f})",
        _fmt(row["vision_tower_s"], 1e3) + _share(row.get("vision_tower_share")),
        _crops(row),
        _fmt(row["selection_s"], 1e3, 2) + _percent(row["selection_share_of_tower"]),
        _fmt(row["vision_selection_s"], 1e3),
        _fmt(row["prefill_s"], 1e3) + _share(row["prefill_time_share"]),
        _fmt(row["ttft_s"], 1e3) + _share(row["ttft_share"]),
        _fmt(row["decode_s_per_token"], 1e3, 2),
        _fmt(row["generated_tokens_per_s"], 1, 2),
        _fmt(row["peak_memory_bytes"], 1 / MiB, 0)
        + (
            ""
            if row["peak_memory_above_start_bytes"] is None
            else f" (+{row['peak_memory_above_start_bytes'] / MiB:,.0f})"
        ),
        _fmt(row["kv_cache_bytes"], 1 / MiB, 2),
    ]
    return "| " + " | ".join(cells) + " |"


def _mix(kinds: list[str]) -> str:
    """`["1 image", "text only", "1 image"]` -> `"2 x 1 image, 1 x text only"`."""
    return ", ".join(f"{count} x {kind}" for kind, count in Counter(kinds).items())


def width_tables(rows: list[dict]) -> list[str]:
    """Per batch size, the prefill width of every batch under every configuration (and the unpruned prompt's)."""
    lines = []
    for size in dict.fromkeys(row["batch_size"] for row in rows):
        same = [row for row in rows if row["batch_size"] == size]
        batches = same[0]["per_batch"]
        lines += [
            f"Batch size {size}:",
            "",
            "| configuration | " + " | ".join(f"batch {i + 1}" for i in range(len(batches))) + " |",
            "|" + "---|" * (len(batches) + 1),
            "| prompts | " + " | ".join(_mix(batch["prompts"]) for batch in batches) + " |",
            "| unpruned | " + " | ".join(f"{batch['prefill_width_unpruned']:,}" for batch in batches) + " |",
        ]
        for row in same:
            widths = " | ".join(f"{batch['prefill_width']:,}" for batch in row["per_batch"])
            lines.append(f"| {row['configuration']} | {widths} |")
        lines.append("")
    return lines


def _skipping_note(settings: dict) -> str:
    mode = settings.get("tile_skipping", "off")
    if mode == "off":
        return ""
    which = "every pruned configuration" if mode == "on" else "each pruned configuration, also"
    return f" Tile skipping: {which} with `tile_skipping=True` at `tile_skip_share={settings['tile_skip_share']:g}`."


def render_markdown(report: dict, title: str = "Efficiency profile", level: int = 1) -> str:
    """The report as Markdown, its title a heading of `level` (2 where it is one section of a longer page)."""
    settings, model = report["settings"], report["model"]
    prompts = settings["prompts"]
    kinds = [Prompt(p["text"], tuple(p["images"])).kind for p in prompts]
    lines = [f"{'#' * level} {title}", ""]
    if report.get("command"):
        lines += [f"Command: `{report['command']}`", ""]
    lines += [
        f"Hardware: {report['hardware']}; {report['software']}.",
        "",
        (
            f"Model: `{model['id']}` ({model['class']}, {model['parameters'] / 1e6:,.1f} M parameters, language model "
            f"{model['text_hidden_size']} x {model['text_layers']} layers), {model['dtype']}, "
            f"attention `{model['attn_implementation']}`."
        ),
        "",
        (
            f"Work: {len(prompts)} prompt(s) ({_mix(kinds)}) in batches of "
            f"{' and of '.join(str(s) for s in settings['batch_sizes'])} (left-padded), "
            f"{settings['max_new_tokens']} new tokens per call; {settings['warmup']} warm-up call(s) per configuration "
            f"and batch size, then {settings['repeats']} interleaved repeats; each time is the median over repeats, "
            f"averaged over the batches of a batch size. Peak memory: {settings['memory']}." + _skipping_note(settings)
        ),
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
        *(table_row(row) for row in report["rows"]),
        "",
        COLUMN_NOTES,
        "",
        f"{'#' * (level + 1)} Prefill width per batch",
        "",
        "The width the language model's prefill ran at, per batch: after pruning, each row is its real tokens only, "
        "re-padded on the left to the longest row.",
        "",
        *width_tables(report["rows"]),
    ]
    return "\n".join(lines)


def write_report(report: dict, out: str | Path, title: str = "Efficiency profile") -> tuple[Path, Path]:
    """Write `OUT.md` and `OUT.json` (a `.md` / `.json` suffix on `out` is dropped first)."""
    out = Path(out)
    if out.suffix in (".md", ".json"):
        out = out.with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)
    markdown, data = out.with_name(out.name + ".md"), out.with_name(out.name + ".json")
    markdown.write_text(render_markdown(report, title))
    data.write_text(json.dumps(report, indent=2) + "\n")
    return markdown, data


__all__ = ["COLUMNS", "render_markdown", "width_tables", "write_report"]
