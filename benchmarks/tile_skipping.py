"""Vision-tower time with and without codebook-guided tile skipping, at LLaVA-NeXT-7B geometry, on this machine.

Model: a random-weight LLaVA-NeXT with CLIP ViT-L/14-336's shape (hidden 1024, 24 layers, 577 tokens per 336 px
crop), the v1.6 AnyRes pinpoints and a projector into a 4096-wide language model (one layer; it never runs here).
Codebook: every packed token of flat images of six colours, encoded by this model (`tiny.flat_colour_codebook`'s
recipe, the documented stand-in for a trained codebook). Images: the mixed set of `benchmarks/mixed_images.py`
(flat, natural-looking, text-heavy, a slide).

For each configuration the encoding step of a call (what `forward` / `generate` do before prefill: tower, projector,
scoring, packing) is timed, and the vision tower's own time is taken from hooks on it, in two ways of calling: one
image per call, and all the images in one call. Configurations: skipping off (the stock path: one pass over every
crop), then on at each `--shares` value of `tile_skip_share`. Repeats are interleaved (repeat -> calls ->
configuration) after a warm-up of every path and call shape. The table gives, per way and configuration, the crops
the tower ran on, their FLOPs (`flops.vision_tower_flops`), the tower's process CPU time (the work done: on a shared
CPU other processes stretch wall time at random), the tower's and the whole encoding's wall time, the CPU time per
crop, and tower CPU time and crops as shares of skipping off: "tower time falls in proportion" means the last two
agree. A CPU runs a tower pass over one crop less efficiently per crop than a pass over several, and skipping splits
a call's encoding into a base-view pass and a tile pass, so with one image per call the tower time falls a little
less than the crops do; the per-crop column shows by how much. Ratios are taken within this one run.

    python benchmarks/tile_skipping.py [--repeats 2] [--shares 0.9,0.5,0] [--out benchmarks/results/tile-skipping.md]
    python benchmarks/tile_skipping.py --smoke --out /tmp/smoke.md   # tiny geometry, seconds; checks the script
"""

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextImageProcessorPil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mixed_images import mixed_set  # noqa: E402

from llava_codebook import LlavaNextCodebookConfig, LlavaNextCodebookForConditionalGeneration  # noqa: E402
from llava_codebook.flops import vision_tower_flops  # noqa: E402
from llava_codebook.processing_llava_next_codebook import LlavaNextCodebookProcessor  # noqa: E402
from llava_codebook.tiny import build_tiny_tokenizer, flat_colour_codebook  # noqa: E402

PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
# CLIP ViT-L/14-336 and the 4096-wide projector of LLaVA-NeXT-7B; the smoke geometry shrinks everything.
GEOMETRY = {
    "7b": dict(hidden=1024, intermediate=4096, layers=24, heads=16, crop=336, text_hidden=4096),
    "smoke": dict(hidden=32, intermediate=64, layers=2, heads=2, crop=56, text_hidden=64),
}


def build(geometry: str):
    shape = GEOMETRY[geometry]
    crop, scale = shape["crop"], shape["crop"] / 336
    pinpoints = [[int(h * scale), int(w * scale)] for h, w in PINPOINTS]
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    config = LlavaNextCodebookConfig(
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=shape["text_hidden"],
            intermediate_size=shape["text_hidden"],
            num_hidden_layers=1,
            num_attention_heads=32 if geometry == "7b" else 4,
        ),
        vision_config=CLIPVisionConfig(
            hidden_size=shape["hidden"],
            intermediate_size=shape["intermediate"],
            num_hidden_layers=shape["layers"],
            num_attention_heads=shape["heads"],
            image_size=crop,
            patch_size=14,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
    )
    model = LlavaNextCodebookForConditionalGeneration(config).eval()
    processor = LlavaNextCodebookProcessor(
        image_processor=LlavaNextImageProcessorPil(
            size={"shortest_edge": crop}, crop_size={"height": crop, "width": crop}, image_grid_pinpoints=pinpoints
        ),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    model.load_codebook(flat_colour_codebook(model, processor, side=2 * crop))
    return model, processor


class TowerClock:
    """Sums the wall time and the process CPU time of every vision-tower call, and counts its crops.

    CPU time is the work done whatever else the machine runs: on a shared CPU, where other processes stretch the wall
    time of a call at random, it is the steadier measure of what skipping saves."""

    def __init__(self, tower):
        self.reset()
        tower.register_forward_pre_hook(self._before)
        tower.register_forward_hook(self._after)

    def _before(self, module, args):
        self._start = (time.perf_counter(), time.process_time())
        self.crops += args[0].shape[0]

    def _after(self, module, args, output):
        self.wall += time.perf_counter() - self._start[0]
        self.cpu += time.process_time() - self._start[1]

    def reset(self):
        self.wall, self.cpu, self.crops, self._start = 0.0, 0.0, 0, None


def encode(model, pixels, settings):
    """The encoding step of one call, as `prune_call` runs it; returns each image's skipped tile ids (none when off)."""
    call = dict(pixels)
    base = model.model
    if settings.tile_skipping:
        return base.encode_skipping_tiles("image", call, settings).skipped_tiles
    base.encode_for_pruning("image", call)
    return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threshold", type=float, default=0.9, help="codebook_threshold of the skip rule")
    parser.add_argument("--shares", default="0.9,0.5,0.0", help="tile_skip_share values to run")
    parser.add_argument("--smoke", action="store_true", help="tiny geometry: checks the script, measures nothing")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "tile-skipping.md"))
    args = parser.parse_args()

    geometry = "smoke" if args.smoke else "7b"
    model, processor = build(geometry)
    scale = GEOMETRY[geometry]["crop"] / 336
    images = {name: im.resize((round(im.width * scale), round(im.height * scale))) for name, im in mixed_set().items()}
    # Two ways to call: one image per call (as `profile` does), and every image in one call (the tower passes are
    # then batches of several crops, which a CPU runs more efficiently per crop than a single crop).
    modes = {
        "1 image per call": [dict(processor.image_processor(images=im, return_tensors="pt")) for im in images.values()],
        f"{len(images)} images in one call": [
            dict(processor.image_processor(images=list(images.values()), return_tensors="pt"))
        ],
    }
    shares = [float(s) for s in args.shares.split(",")]
    configs = {"off": model.pruning_settings(codebook_threshold=args.threshold)}
    for share in shares:
        configs[f"share {share:g}"] = model.pruning_settings(
            codebook_threshold=args.threshold, tile_skipping=True, tile_skip_share=share
        )
    clock = TowerClock(model.model.vision_tower)
    runs = {(m, c): [] for m in modes for c in configs}  # per repeat: (tower wall, tower CPU, encoding wall)
    crops, skipped = {}, {}
    with torch.no_grad():
        # Warm-up: every path once, on every call shape (the first use of a shape is slow).
        for calls in modes.values():
            for settings in configs.values():
                for call in calls:
                    encode(model, call, settings)
        for _ in range(args.repeats):
            for mode, calls in modes.items():
                for label, settings in configs.items():
                    clock.reset()
                    start = time.perf_counter()
                    tiles = [t for call in calls for t in encode(model, call, settings)]
                    runs[mode, label].append((clock.wall, clock.cpu, time.perf_counter() - start))
                    crops[mode, label] = clock.crops
                    skipped[mode, label] = tiles

    vision = model.config.vision_config
    rows = []
    for mode in modes:
        off_cpu = statistics.median(r[1] for r in runs[mode, "off"])
        for label in configs:
            wall, cpu, total = (statistics.median(r[i] for r in runs[mode, label]) for i in range(3))
            n_crops = crops[mode, label]
            rows.append(
                f"| {mode} | {label} | {n_crops} | {vision_tower_flops(vision, n_crops) / 1e12:.2f} | {cpu:.1f} | "
                f"{wall:.1f} | {total:.1f} | {cpu / n_crops:.2f} | {cpu / off_cpu:.2f} | "
                f"{n_crops / crops[mode, 'off']:.2f} |"
            )
    per_call = next(iter(modes))
    all_crops = [1 + (call["pixel_values"].shape[1] - 1) for call in modes[per_call]]
    skips = []
    for label in configs:
        if label == "off":
            continue
        tiles = skipped[per_call, label]
        same = [t.tolist() for t in tiles] == [t.tolist() for t in skipped[next(reversed(modes)), label]]
        skips.append(
            f"- share {label.split()[1]}: "
            + "; ".join(f"{n}: {t.tolist()} ({c - t.numel()}/{c} crops)" for n, t, c in zip(images, tiles, all_crops))
            + ("" if same else " (the batched call decided otherwise for some image)")
        )
    title = "# Tile skipping: vision-tower time" + (
        " (SMOKE RUN: tiny geometry, not a measurement)" if args.smoke else ""
    )
    sizes = ", ".join(f"{n} {im.width}x{im.height}" for n, im in images.items())
    setting = (
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}. Geometry: {geometry} (vision tower {vision.hidden_size} x "
        f"{vision.num_hidden_layers} layers, {vision.image_size} px crops, {vision_tower_flops(vision) / 1e9:.0f} "
        f"GFLOPs per crop). Codebook: flat colours, codebook_threshold={args.threshold}. Images: {sizes}. "
        f"{args.repeats} repeat(s) after a warm-up of every path and call shape, interleaved; each number is the "
        "median over repeats of the sum over the mode's calls."
    )
    header = (
        "| calls | configuration | crops encoded | tower TFLOPs | tower CPU s | tower wall s | encoding wall s "
        "| tower CPU s per crop | tower CPU vs off | crops vs off |"
    )
    command = (
        f"python benchmarks/tile_skipping.py{' --smoke' if args.smoke else ''} --repeats {args.repeats} "
        f"--threshold {args.threshold} --shares {args.shares}"
    )
    report = "\n".join(
        [
            title,
            "",
            setting,
            "",
            header,
            "|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Skipped tiles per image (crop ids, 1 = first tile, row-major; crops encoded / all):",
            "",
            *skips,
            "",
            f"Command: `{command}`",
            "",
        ]
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    print(report)


if __name__ == "__main__":
    main()
