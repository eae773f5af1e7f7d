"""Vision-tower time with and without codebook-guided tile skipping, at LLaVA-NeXT-7B geometry, on this machine.

Model: a random-weight LLaVA-NeXT with CLIP ViT-L/14-336's shape (hidden 1024, 24 layers, 577 tokens per 336 px
crop), the v1.6 AnyRes pinpoints and a projector into a 4096-wide language model (one layer; it never runs here).
Codebook: every packed token of flat images of six colours, encoded by this model (`tiny.flat_colour_codebook`'s
recipe, the documented stand-in for a trained codebook). Images: the mixed set of `benchmarks/mixed_images.py`
(flat, natural-looking, text-heavy, a slide), one per call.

Per image and configuration, the encoding step of a call (what `forward` / `generate` do before prefill: tower,
projector, scoring, packing) is timed, and the vision tower's own time is taken from hooks on it. Configurations:
skipping off (the stock path: one pass over every crop), then on at each `--shares` value of `tile_skip_share`.
Repeats are interleaved (repeat -> image -> configuration). The table gives, per configuration, the crops the tower
ran on, their FLOPs (`flops.vision_tower_flops`), the tower's and the whole encoding's wall seconds (sums over the
images of per-image medians), the tower's process CPU time (the work done, steady on a shared machine where wall time is
stretched at random by other processes) per crop and as a share of skipping off beside the share of crops: "tower
time falls in proportion" means the last two agree. Ratios are taken within this one run.

    python benchmarks/tile_skipping.py [--repeats 2] [--threshold 0.9] [--out benchmarks/results/tile-skipping.md]
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
    """The encoding step of one call, as `prune_call` runs it; returns the skipped tile ids (None when off)."""
    call = dict(pixels)
    base = model.model
    if settings.tile_skipping:
        return base.encode_skipping_tiles("image", call, settings).skipped_tiles[0]
    base.encode_for_pruning("image", call)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threshold", type=float, default=0.9, help="codebook_threshold of the skip rule")
    parser.add_argument("--shares", default="1.0,0.9,0.5,0.0", help="tile_skip_share values to run")
    parser.add_argument("--smoke", action="store_true", help="tiny geometry: checks the script, measures nothing")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "tile-skipping.md"))
    args = parser.parse_args()

    geometry = "smoke" if args.smoke else "7b"
    model, processor = build(geometry)
    scale = GEOMETRY[geometry]["crop"] / 336
    images = {name: im.resize((round(im.width * scale), round(im.height * scale))) for name, im in mixed_set().items()}
    pixels = {name: dict(processor.image_processor(images=im, return_tensors="pt")) for name, im in images.items()}
    shares = [float(s) for s in args.shares.split(",")]
    configs = {"off": model.pruning_settings(codebook_threshold=args.threshold)}
    for share in shares:
        configs[f"share {share:g}"] = model.pruning_settings(
            codebook_threshold=args.threshold, tile_skipping=True, tile_skip_share=share
        )
    clock = TowerClock(model.model.vision_tower)
    tower = {(c, n): [] for c in configs for n in images}
    tower_cpu = {(c, n): [] for c in configs for n in images}
    total = {(c, n): [] for c in configs for n in images}
    crops, skipped = {}, {}
    with torch.no_grad():
        # Warm-up: one call of each path (the kernels' first use is slow), on the image with the fewest crops.
        first = min(images, key=lambda n: pixels[n]["pixel_values"].shape[1])
        encode(model, pixels[first], configs["off"])
        encode(model, pixels[first], configs[f"share {shares[0]:g}"])
        for _ in range(args.repeats):
            for name in images:
                for label, settings in configs.items():
                    clock.reset()
                    start = time.perf_counter()
                    tiles = encode(model, pixels[name], settings)
                    total[label, name].append(time.perf_counter() - start)
                    tower[label, name].append(clock.wall)
                    tower_cpu[label, name].append(clock.cpu)
                    crops[label, name] = clock.crops
                    skipped[label, name] = tiles

    vision = model.config.vision_config
    rows = []

    def summed(values, label):
        return sum(statistics.median(values[label, n]) for n in images)

    off_cpu, off_crops = summed(tower_cpu, "off"), sum(crops["off", n] for n in images)
    for label in configs:
        tower_s, cpu_s, total_s = summed(tower, label), summed(tower_cpu, label), summed(total, label)
        n_crops = sum(crops[label, n] for n in images)
        per_image = ", ".join(f"{n} {crops[label, n]}/{crops['off', n]}" for n in images)
        rows.append(
            f"| {label} | {n_crops} | {vision_tower_flops(vision, n_crops) / 1e12:.2f} | {cpu_s:.1f} | {tower_s:.1f} | "
            f"{total_s:.1f} | {cpu_s / n_crops:.2f} | {cpu_s / off_cpu:.2f} | {n_crops / off_crops:.2f} | {per_image} |"
        )
    skips = [
        f"- share {label.split()[1]}: " + "; ".join(f"{n}: {skipped[label, n].tolist()}" for n in images)
        for label in configs
        if label != "off"
    ]
    title = "# Tile skipping: vision-tower time" + (
        " (SMOKE RUN: tiny geometry, not a measurement)" if args.smoke else ""
    )
    sizes = ", ".join(f"{n} {im.width}x{im.height}" for n, im in images.items())
    setting = (
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}. Geometry: {geometry} (vision tower {vision.hidden_size} x "
        f"{vision.num_hidden_layers} layers, {vision.image_size} px crops, {vision_tower_flops(vision) / 1e9:.0f} "
        f"GFLOPs per crop). Codebook: flat colours, codebook_threshold={args.threshold}. Images: {sizes}, one per "
        f"call; {args.repeats} repeat(s) after a warm-up call of each path, interleaved; times are sums over the "
        "images of per-image medians."
    )
    header = (
        "| configuration | crops encoded | tower TFLOPs | tower CPU s | tower wall s | encoding wall s | tower CPU s "
        "per crop | tower CPU vs off | crops vs off | crops per image (encoded/all) |"
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
            "Skipped tiles per image (crop ids, 1 = first tile, row-major):",
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
