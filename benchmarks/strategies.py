"""Every pruning strategy on the same image, packing and budget: selection cost against the vision tower, and overlap.

LLaVA-NeXT-7B geometry (the default) with random weights: a CLIP-L/336 tower (1024 x 24 layers, 16 heads, 14 px
patches), the two-layer projector to 4096, one 672x672 image (2x2 tiles + base view: 2,880 visual tokens + 48 row
newlines) and a 969-row codebook of random prototypes. `--geometry qwen2.5-vl-7b`: Qwen2.5-VL-7B's vision tower (1280
x 32 layers, 16 heads, 14 px patches, 112 px attention windows with full attention in layers 7, 15, 23 and 31, the
2 x 2 merger to 3584) on the same image (48 x 48 patches: 576 merged tokens), the strategies that need no [CLS] token,
and a codebook of the same 969 random rows. The language model is cut to one small layer: it is never run, only its
hidden size (4096, 3584) matters here.

For each strategy and each budget (576 / 320 / 160 / 64 kept visual tokens) the selection itself is timed, on the
features and tower signals of one encoding pass (captured once with every probe the strategies need), and reported
as a share of the plain vision tower + projector time measured in the same run; the cost of the probes (tower pass
with hooks vs without) is reported separately. Kept sets are compared pairwise (Jaccard over non-newline tokens).

    python benchmarks/strategies.py [--geometry llava-next-7b|qwen2.5-vl-7b] [--repeats 3] [--device cpu|cuda]
        [--dtype float32|bfloat16] [--out FILE]
    python benchmarks/strategies.py --smoke   # tiny geometry, one round: checks the script runs (not a measurement)
"""

import argparse
import os
import platform
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextImageProcessorPil, Qwen2VLImageProcessorPil

from llava_codebook import (
    LlavaNextCodebookConfig,
    LlavaNextCodebookForConditionalGeneration,
    Qwen2_5_VLCodebookConfig,
    Qwen2_5_VLCodebookForConditionalGeneration,
    RedundancyCodebook,
)
from llava_codebook.processing_llava_next_codebook import LlavaNextCodebookProcessor
from llava_codebook.strategies import STRATEGIES
from llava_codebook.tiny import build_tiny_tokenizer

STRATEGY_NAMES = (
    "codebook",
    "codebook_diverse",
    "cls_attention",
    "visionzip",
    "divprune",
    "hired",
    "random",
    "uniform",
)
# The measured geometry (LLaVA-NeXT-7B), and a tiny one that only checks that the script runs (`--smoke`, used by
# the test suite: no number it writes is a measurement).
GEOMETRIES = {
    "llava-next-7b": dict(
        text_hidden=4096,
        text_heads=(32, 8),
        vision_hidden=1024,
        vision_mlp=4096,
        vision_layers=24,
        vision_heads=16,
        crop=336,
        patch=14,
        pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
        prototypes=969,
        side=672,
        budgets=(576, 320, 160, 64),
    ),
    # Qwen2.5-VL-7B-Instruct config.json: vision hidden 1280, intermediate 3420, depth 32, 16 heads, window 112,
    # fullatt_block_indexes [7, 15, 23, 31], out_hidden_size 3584 (the language model's width, 28 heads / 4 kv).
    "qwen2.5-vl-7b": dict(
        family="qwen2_5_vl",
        text_hidden=3584,
        text_heads=(28, 4),
        vision_hidden=1280,
        vision_mlp=3420,
        vision_layers=32,
        vision_heads=16,
        full_attention=(7, 15, 23, 31),
        window=112,
        patch=14,
        prototypes=969,
        side=672,
        budgets=(288, 160, 64, 32),
    ),
    "qwen-smoke": dict(
        family="qwen2_5_vl",
        text_hidden=256,
        text_heads=(2, 1),
        vision_hidden=32,
        vision_mlp=64,
        vision_layers=2,
        vision_heads=2,
        full_attention=(1,),
        window=112,
        patch=14,
        prototypes=8,
        side=140,
        budgets=(16, 8, 4, 2),
    ),
    "smoke": dict(
        text_hidden=64,
        text_heads=(4, 2),
        vision_hidden=32,
        vision_mlp=64,
        vision_layers=3,
        vision_heads=2,
        crop=56,
        patch=14,
        pinpoints=[[56, 112], [112, 56], [112, 112]],
        prototypes=8,
        side=112,
        budgets=(16, 8, 4, 2),
    ),
}


def build(device: str, dtype: torch.dtype, g: dict):
    if g.get("family") == "qwen2_5_vl":
        return build_qwen(device, dtype, g)
    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer()
    config = LlavaNextCodebookConfig(
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=g["text_hidden"],
            intermediate_size=256,
            num_hidden_layers=1,
            num_attention_heads=g["text_heads"][0],
            num_key_value_heads=g["text_heads"][1],
        ),
        vision_config=CLIPVisionConfig(
            hidden_size=g["vision_hidden"],
            intermediate_size=g["vision_mlp"],
            num_hidden_layers=g["vision_layers"],
            num_attention_heads=g["vision_heads"],
            image_size=g["crop"],
            patch_size=g["patch"],
            projection_dim=768,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=g["pinpoints"],
        pruning_mode="budget",
    )
    model = LlavaNextCodebookForConditionalGeneration(config).eval().to(device=device, dtype=dtype)
    model.load_codebook(RedundancyCodebook(torch.randn(g["prototypes"], g["text_hidden"])))
    crop = g["crop"]
    processor = LlavaNextCodebookProcessor(
        image_processor=LlavaNextImageProcessorPil(
            size={"shortest_edge": crop}, crop_size={"height": crop, "width": crop}, image_grid_pinpoints=g["pinpoints"]
        ),
        tokenizer=tokenizer,
        patch_size=g["patch"],
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return model, processor


def build_qwen(device: str, dtype: torch.dtype, g: dict):
    """Qwen2.5-VL at geometry `g` (random weights; the M-RoPE head dimension 128 needs heads x 128 = hidden), and
    its image processor sized to take the test image whole (no resize: 672 px is a multiple of 28)."""
    torch.manual_seed(0)
    heads, kv_heads = g["text_heads"]
    config = Qwen2_5_VLCodebookConfig(
        text_config={
            # Never run: a small table keeps memory to the tower (no prompt is tokenized here).
            "vocab_size": 1024,
            "hidden_size": g["text_hidden"],
            "intermediate_size": 256,
            "num_hidden_layers": 1,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        },
        vision_config={
            "hidden_size": g["vision_hidden"],
            "intermediate_size": g["vision_mlp"],
            "depth": g["vision_layers"],
            "num_heads": g["vision_heads"],
            "out_hidden_size": g["text_hidden"],
            "fullatt_block_indexes": list(g["full_attention"]),
            "window_size": g["window"],
            "patch_size": g["patch"],
            "hidden_act": "silu",
        },
        pruning_mode="budget",
    )
    model = Qwen2_5_VLCodebookForConditionalGeneration(config).eval().to(device=device, dtype=dtype)
    model.load_codebook(RedundancyCodebook(torch.randn(g["prototypes"], g["text_hidden"])))
    area = g["side"] * g["side"]
    return model, Qwen2VLImageProcessorPil(size={"shortest_edge": area, "longest_edge": area})


def test_image(side: int = 672) -> Image.Image:
    """Noise on the left half, a flat sky-blue right half: some regions redundant, some not."""
    rng = np.random.default_rng(0)
    pixels = np.empty((side, side, 3), dtype=np.uint8)
    pixels[:] = (70, 130, 180)
    pixels[:, : side // 2] = rng.integers(0, 256, (side, side // 2, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--geometry", default="llava-next-7b", choices=["llava-next-7b", "qwen2.5-vl-7b"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--out", default=None, help="defaults to benchmarks/results/strategies[-<device>].md")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny geometry, one round: checks that the script runs (not a measurement)"
    )
    args = parser.parse_args(argv)
    qwen = args.geometry.startswith("qwen")
    g = GEOMETRIES[("qwen-smoke" if qwen else "smoke") if args.smoke else args.geometry]
    if args.smoke:
        args.repeats = 1
    budgets, prototypes, width = g["budgets"], g["prototypes"], g["text_hidden"]
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    name = ("strategies-smoke" if args.smoke else "strategies") + ("-qwen2.5-vl-7b" if qwen else "")
    if device.type != "cpu":
        name += f"-{device.type}"
    # A smoke run never lands beside the measured tables.
    folder = Path(__file__).resolve().parents[1] / "results-local" if args.smoke else Path(__file__).parent / "results"
    out = Path(args.out) if args.out else folder / f"{name}.md"

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timed(fn):
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        return time.perf_counter() - start, result

    model, processor = build(args.device, dtype, g)
    base = model.model
    # The strategies this model can run: every one on LLaVA-NeXT; on Qwen the ones that need no [CLS] token.
    names = tuple(name for name in STRATEGY_NAMES if name in model.available_strategies("image"))
    if qwen:
        encoded = processor(images=[test_image(g["side"])], return_tensors="pt")
        sizes_name, sizes = "image_grid_thw", encoded["image_grid_thw"].to(device)
    else:
        encoded = processor(
            images=[test_image(g["side"])], text=["<image>\nwhat does this image show ?"], return_tensors="pt"
        )
        sizes_name, sizes = "image_sizes", encoded["image_sizes"].to(device)
    pixel_values = encoded["pixel_values"].to(device=device, dtype=dtype)

    def plain():
        with torch.no_grad():
            return base.get_image_features(pixel_values, sizes, return_dict=True)

    def probed():
        # One pass with every compared strategy's tower signals ([CLS] rows of layers -2 and 0, keys of -2, the
        # projector inputs), as the Space encodes; on Qwen no strategy needs any.
        call = {"pixel_values": pixel_values, sizes_name: sizes}
        with torch.no_grad():
            return base.encode_for_strategies("image", call, names)

    # The probes' own work (their hooks and the packing of what they captured), timed where it runs: a direct measure
    # that the difference between two tower passes on a loaded machine cannot give.
    probe_seconds = _instrument_probes(sync)

    plain()  # warm-up
    visual = probed()
    (segment,) = visual.segments()
    newline = segment.newline
    n_visual, n_newline = int((~newline).sum()), int(newline.sum())
    # With a random codebook no absolute threshold means anything: codebook_diverse gets this image's median score,
    # so half of its tokens count as redundant.
    scores = STRATEGIES["codebook"]([segment], model.pruning_settings(pruning_mode="budget"), base).scores[0]
    median_score = float(scores[~newline].float().median())
    runs = {
        (name, budget): model.pruning_settings(
            pruning_strategy=name, pruning_mode="budget", keep_tokens=budget, codebook_threshold=median_score
        )
        for budget in budgets
        for name in names
    }
    kept_sets, counts = {}, {}
    with torch.no_grad():
        for (name, budget), settings in runs.items():  # warm-up, and the kept sets
            kept = STRATEGIES[name]([segment], settings, base).kept[0]
            content = kept[~newline[kept]]
            kept_sets[name, budget] = set(content.tolist())
            counts[name, budget] = (content.numel(), int(newline[kept].sum()))

    # Rounds: each times the plain tower, the probed tower and every selection once, so that every ratio is taken
    # between timings close in time (this machine's load varies); the reported share is the median over rounds.
    load_before = _load()
    tower_times, probe_ratios, probe_work = [], [], []
    selection_times, shares = defaultdict(list), defaultdict(list)
    for _ in range(args.repeats):
        tower_seconds = timed(plain)[0]
        probe_seconds.clear()
        probe_ratios.append(timed(probed)[0] / tower_seconds - 1)
        probe_work.append(sum(probe_seconds) / tower_seconds)
        tower_times.append(tower_seconds)
        for (name, budget), settings in runs.items():
            with torch.no_grad():
                seconds = timed(lambda: STRATEGIES[name]([segment], settings, base))[0]
            selection_times[name, budget].append(seconds)
            shares[name, budget].append(seconds / tower_seconds)
    load_after = _load()
    tower = statistics.median(tower_times)
    probe_overhead = statistics.median(probe_ratios)
    probe_share = statistics.median(probe_work)
    selection_times = {key: statistics.median(values) for key, values in selection_times.items()}
    shares = {key: statistics.median(values) for key, values in shares.items()}

    def share(name, budget):
        return shares[name, budget]

    if qwen:
        tower_flops = _qwen_tower_flops((g["side"] // g["patch"]) ** 2, g)
        where = "1 view (no crops)"
        model_text = (
            "Model: random weights at Qwen2.5-VL-7B geometry: its vision tower (1280 x 32 layers, 16 heads, 14 px "
            "patches, 112 px attention windows, full attention in layers 7 / 15 / 23 / 31), the 2 x 2 merger to "
            "3584, sdpa attention; the strategies that need no [CLS] token (the Qwen ViT has none)"
        )
    else:
        tower_flops = _tower_flops(
            crops=int(visual.num_crops[0]),
            sequence=(g["crop"] // g["patch"]) ** 2 + 1,
            layers=g["vision_layers"],
            width=g["vision_hidden"],
            mlp=g["vision_mlp"],
            out=width,
        )
        where = f"{visual.num_crops[0]} crops"
        model_text = (
            "Model: random weights at LLaVA-NeXT-7B geometry: CLIP-L/336 vision tower (1024 x 24 layers, 16 "
            "heads, 14 px patches), projector 1024 -> 4096 -> 4096, sdpa attention"
        )
    lines = [
        "# Strategies benchmark"
        + (" (SMOKE RUN: tiny geometry, checks that the script runs; not a measurement)" if args.smoke else ""),
        "",
        f"Command: `python benchmarks/strategies.py --geometry {args.geometry} --repeats {args.repeats} "
        f"--device {args.device} --dtype {args.dtype}{' --smoke' if args.smoke else ''}`",
        "",
        f"Machine: {_machine(device)}; torch {torch.__version__}, Python {platform.python_version()}; "
        f"{torch.get_num_threads()} torch threads.",
        "",
        (f"Model: the tiny smoke geometry ({g})" if args.smoke else model_text)
        + f", {args.dtype}; one {g['side']}x{g['side']} image (half noise, half flat): {n_visual} visual tokens + "
        f"{n_newline} row newlines over {where}; codebook of {prototypes} random prototypes "
        f"({width}-d). Budgets count visual "
        f"tokens (newlines kept on top). `codebook_diverse` uses codebook_threshold = {median_score:.4f}, this "
        "image's median codebook score, so half its tokens count as redundant.",
        "",
        f"All timings come from this one run, in {args.repeats} rounds after one warm-up; each round times the plain "
        "vision tower + projector (`get_image_features`), the same pass with every probe attached "
        + (
            "(none here: no strategy this model offers reads the tower)"
            if qwen
            else "([CLS] rows of layers -2 and 0, keys of -2, projector inputs; paid only by the strategies that need "
            "them)"
        )
        + " and every selection once, and a share is the median over rounds of selection time / that round's tower "
        "time. "
        f"Vision tower + projector: median {tower:.3f} s (rounds: {', '.join(f'{t:.2f}' for t in tower_times)} s); "
        f"Probes: their own work (hooks + packing, timed inside them) is {probe_share:.2%} of the tower; the probed "
        f"pass measured whole was {probe_overhead:+.1%} against the plain one (median over rounds), a difference "
        "of two noisy tower timings. " + _load_note(load_before, load_after),
        "",
        "## Selection time, as a share of the vision tower + projector time",
        "",
        "| strategy | " + " | ".join(f"{b} kept" for b in budgets) + " |",
        "|---|" + "---|" * len(budgets),
    ]
    for name in names:
        cells = [f"{selection_times[name, b] * 1e3:.1f} ms ({share(name, b):.2%})" for b in budgets]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    lines += ["", "Kept visual tokens (+ newlines):", ""]
    lines.append("| strategy | " + " | ".join(str(b) for b in budgets) + " |")
    lines.append("|---|" + "---|" * len(budgets))
    for name in names:
        lines.append(
            f"| `{name}` | " + " | ".join(f"{counts[name, b][0]} + {counts[name, b][1]}" for b in budgets) + " |"
        )

    ratios = {b: selection_times["divprune", b] / selection_times["codebook", b] for b in budgets}
    worst = max(names, key=lambda n: max(share(n, b) for b in budgets))
    over = sorted({n for n in names for b in budgets if share(n, b) > 0.02})
    lines += [
        "",
        "## Targets",
        "",
        "- Codebook selection >= 10x cheaper than DivPrune on the same features: "
        + ("**met**" if min(ratios.values()) >= 10 else "**not met**")
        + " (DivPrune / codebook time: "
        + ", ".join(f"{ratios[b]:.1f}x at {b}" for b in budgets)
        + ").",
        "- Every strategy's selection <= 2 % of the vision tower: "
        + ("**met**" if not over else f"**not met** by {', '.join(f'`{n}`' for n in over)}")
        + f" (largest: `{worst}`, {max(share(worst, b) for b in budgets):.2%}).",
        "",
        f"Arithmetic behind both: DivPrune's pairwise cosine distances cost `n^2 x D` and the codebook's scores "
        f"`n x K x D`, a ratio of `n / K` = {n_visual} / {prototypes} = {n_visual / prototypes:.1f} "
        "whatever the hardware, so where both are bound by their matrix product DivPrune costs about that multiple "
        "of the codebook"
        + (", not 10x" if n_visual / prototypes < 10 else "")
        + (" (below 1 here: the codebook's product is the larger one)" if n_visual < prototypes else "")
        + f". The vision tower costs about {tower_flops / 1e12:.2f} TFLOP here, DivPrune's "
        f"product {2 * n_visual**2 * width / 1e9:.0f} GFLOP ({2 * n_visual**2 * width / tower_flops:.1%}) "
        f"and the codebook's {2 * n_visual * prototypes * width / 1e9:.0f} GFLOP "
        f"({2 * n_visual * prototypes * width / tower_flops:.1%}). On a GPU DivPrune also runs `k` "
        "sequential greedy steps of a few small kernels each, latency a single product does not have.",
        "",
        "## Kept-set overlap (Jaccard over visual tokens)",
    ]
    for budget in budgets:
        lines += ["", f"{budget} kept:", "", "| | " + " | ".join(f"`{n}`" for n in names) + " |"]
        lines.append("|---|" + "---|" * len(names))
        for a in names:
            cells = []
            for b in names:
                union = kept_sets[a, budget] | kept_sets[b, budget]
                cells.append(f"{len(kept_sets[a, budget] & kept_sets[b, budget]) / len(union):.2f}" if union else "-")
            lines.append(f"| `{a}` | " + " | ".join(cells) + " |")
    lines.append("")
    table = "\n".join(lines)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    print(table)


def _instrument_probes(sync) -> list[float]:
    """Time every call of the probe hooks and of the packing of their signals; returns the list they append to."""
    from llava_codebook import pruning_core, signals

    spent: list[float] = []

    def timing(fn):
        def wrapper(*args, **kwargs):
            sync()
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            sync()
            spent.append(time.perf_counter() - start)
            return result

        return wrapper

    signals._LayerProbe.on_query = timing(signals._LayerProbe.on_query)
    signals._LayerProbe.on_key = timing(signals._LayerProbe.on_key)
    pruning_core.pack_tower_signals = timing(pruning_core.pack_tower_signals)
    return spent


def _tower_flops(crops: int, sequence: int, layers: int, width: int, mlp: int, out: int) -> float:
    """Multiply-adds x 2 of a CLIP tower over the crops (projections, MLP, attention) plus the two-layer projector to
    `out`."""
    per_token = 2 * (4 * width * width + 2 * width * mlp + 2 * sequence * width)
    projector = 2 * (width * out + out * out)
    return crops * sequence * (layers * per_token) + crops * (sequence - 1) * projector


def _qwen_tower_flops(patches: int, g: dict) -> float:
    """Multiply-adds x 2 of a Qwen2.5-VL tower over `patches` patches (fused qkv and output projections, the gated
    MLP, attention within 112 px windows or over the whole image in the full-attention layers) plus the merger (4
    patches -> one token: 4w -> 4w -> out)."""
    width, mlp = g["vision_hidden"], g["vision_mlp"]
    window = min(patches, (g["window"] // g["patch"]) ** 2)
    full = len(g["full_attention"])
    projections = 4 * width * width + 3 * width * mlp
    attention = (g["vision_layers"] - full) * 2 * window * width + full * 2 * patches * width
    merger = (patches // 4) * (16 * width * width + 4 * width * g["text_hidden"])
    return 2 * (patches * (g["vision_layers"] * projections + attention) + merger)


def _load():
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _load_note(before, after) -> str:
    if before is None:
        return ""
    return (
        f"Load average (1 min) {before:.1f} before and {after:.1f} after the timed rounds on {os.cpu_count()} "
        "cores (the machine is shared with other work; the per-round tower times above show how much it moved)."
    )


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU {platform.machine()}, {platform.platform()}"


if __name__ == "__main__":
    main()
