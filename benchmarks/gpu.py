"""The GPU check in one command: every strategy at real 7B geometry, batch sizes 1 and 8, mixed prompts.

LLaVA-NeXT-7B, LLaVA-1.5-7B and Qwen2.5-VL-7B (its language model and vision tower at their real shapes).

    bash benchmarks/gpu.sh            # a CUDA GPU: sized to finish in under 8 minutes on one H100
    bash benchmarks/gpu.sh --smoke    # tiny geometry on the CPU, one repeat: checks the script runs (the tests do)

For each geometry in `GEOMETRIES` a random-weight model is built directly on the GPU at the real shapes (bf16), with a
codebook of 969 random prototypes, and profiled by the measurement behind `llava-codebook profile`
(`llava_codebook.profile.profile_model`): `none`, `codebook` and every peer strategy of the registry the model serves
(no [CLS] rules on Qwen-VL) at 320, 160 and 64 visual tokens per image, on eight mixed prompts (one image at the real
sizes, two images, text only) in batches of 1 and of 8, all interleaved in one run. Per configuration and batch size it
reports TTFT and prefill (with their shares of `none`), the prefill width, the vision tower's time and the selection's
share of it, decode, generated tokens/s, the KV-cache bytes and the peak GPU memory. For a geometry with AnyRes tiles
(LLaVA-NeXT), a second section runs `none` and `codebook` at the same budgets without and with tile skipping at
`tile_skip_share=0` (every tile skipped, the base views alone: the most the vision tower can save, whatever the
codebook; with a trained codebook the saving depends on the image), with the crops the tower ran on and their FLOPs.
Repeats stop when another would overrun the time budget (`--time-budget`, shared by the sections); the report says how
many ran.

Random weights: the times, memory and cache are what these shapes cost; the answers are noise, and with a random
codebook `codebook_diverse` may keep fewer tokens than its budget. Writes `benchmarks/results/gpu-<hardware>.md`
(and `.json`), labelled with the GPU. A geometry is one entry of `GEOMETRIES`: a function returning the config and
processor of a family this package supports, with a flag for the tiny smoke version.
"""

import argparse
import json
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing (the GPU machine's own Python)

from llava_codebook import RedundancyCodebook  # noqa: E402
from llava_codebook.families import family_for_model_type  # noqa: E402
from llava_codebook.profile import (  # noqa: E402
    Budget,
    describe_model,
    hardware,
    profile_model,
    software,
)
from llava_codebook.profile_prompts import Prompt  # noqa: E402
from llava_codebook.profile_report import render_markdown  # noqa: E402
from llava_codebook.strategies import STRATEGIES  # noqa: E402
from llava_codebook.tiny import TINY_CHAT_TEMPLATE, build_tiny_tokenizer  # noqa: E402

BUDGETS = (320, 160, 64)
SMOKE_BUDGETS = (8, 4, 2)
BATCH_SIZES = (1, 8)
PROTOTYPES = 969
# The tile-skipping section skips every tile (see the module docstring): the floor of the vision tower's cost.
SKIP_SHARE = 0.0
MINIMUM_TRANSFORMERS = "5.23"  # pyproject.toml's lower bound
ANYRES_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


# ------------------------------------------------------------------ geometries
def vicuna_7b(smoke: bool, vocab_size: int):
    """Vicuna-7B's shape (Llama, 4096 x 32 layers, 32 heads, MLP 11008, vocabulary 32,064 as in llava-hf)."""
    from transformers import LlamaConfig

    if smoke:
        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4
        )
    return LlamaConfig(
        vocab_size=32064,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
    )


def clip_l_336(smoke: bool):
    """CLIP ViT-L/14 at 336 px (1024 x 24 layers, 16 heads, MLP 4096): the tower of both LLaVA 7B models."""
    from transformers import CLIPVisionConfig

    if smoke:
        return CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=56,
            patch_size=14,
        )
    return CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
    )


def llava_next_7b(smoke: bool):
    """llava-hf/llava-v1.6-vicuna-7b-hf: AnyRes over 336 px crops (a 672x672 image: 2,928 tokens)."""
    from transformers import LlavaNextImageProcessorPil

    from llava_codebook import LlavaNextCodebookConfig, LlavaNextCodebookProcessor

    tokenizer = build_tiny_tokenizer()
    vision = clip_l_336(smoke)
    crop = vision.image_size
    pinpoints = [[h * crop // 336, w * crop // 336] for h, w in ANYRES_PINPOINTS]
    config = LlavaNextCodebookConfig(
        text_config=vicuna_7b(smoke, len(tokenizer)),
        vision_config=vision,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        image_seq_length=(crop // 14) ** 2,
        pad_token_id=tokenizer.pad_token_id,
    )
    processor = LlavaNextCodebookProcessor(
        image_processor=LlavaNextImageProcessorPil(
            size={"shortest_edge": crop}, crop_size={"height": crop, "width": crop}, image_grid_pinpoints=pinpoints
        ),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=TINY_CHAT_TEMPLATE,
    )
    return config, processor


def llava_15_7b(smoke: bool):
    """llava-hf/llava-1.5-7b-hf: one 336 px view per image (576 tokens)."""
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    from llava_codebook import LlavaCodebookConfig

    tokenizer = build_tiny_tokenizer()
    vision = clip_l_336(smoke)
    crop = vision.image_size
    config = LlavaCodebookConfig(
        text_config=vicuna_7b(smoke, len(tokenizer)),
        vision_config=vision,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(crop // 14) ** 2,
        pad_token_id=tokenizer.pad_token_id,
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": crop}, crop_size={"height": crop, "width": crop}, do_center_crop=True
        ),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token="<image>",
        chat_template=TINY_CHAT_TEMPLATE,
    )
    return config, processor


def qwen25_vl_7b(smoke: bool):
    """Qwen/Qwen2.5-VL-7B-Instruct: its language model (Qwen2, 3584 x 28 layers, 28 heads / 4 KV, MLP 18944, vocabulary
    152,064, untied head, M-RoPE sections 16 / 24 / 24) and vision tower (1280 x 32 blocks, 16 heads, MLP 3420, windowed
    attention over 112 px with full attention in blocks 7, 15, 23, 31, 2 x 2 merger to 3584), its image processor's
    pixel range (3,136 to 12,845,056: a 672x672 image is 48x48 patches, 576 merged tokens). The tokenizer is the tiny
    word-level one with Qwen's vision tokens added; a prompt's text is a few tokens either way."""
    from tokenizers import AddedToken
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessorPil

    from llava_codebook import Qwen2_5_VLCodebookConfig
    from llava_codebook.processors import qwen_frame_video_processor

    tokenizer = build_tiny_tokenizer()
    vision_tokens = ["<|vision_start|>", "<|vision_end|>", "<|video_pad|>"]
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in vision_tokens], special_tokens=True)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in ["<image>", *vision_tokens]}
    if smoke:
        text = {"vocab_size": len(tokenizer), "hidden_size": 256, "intermediate_size": 128, "num_hidden_layers": 2}
        text |= {"num_attention_heads": 2, "num_key_value_heads": 1}
        vision = {"hidden_size": 32, "intermediate_size": 64, "depth": 2, "num_heads": 2, "fullatt_block_indexes": [1]}
    else:
        text = {"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28}
        text |= {"num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 128000}
        vision = {"hidden_size": 1280, "intermediate_size": 3420, "depth": 32, "num_heads": 16}
        vision |= {"fullatt_block_indexes": [7, 15, 23, 31]}
    config = Qwen2_5_VLCodebookConfig(
        text_config={
            **text,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": False,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            # The head dimension is 128 at both sizes (256 / 2 heads when smoke): M-RoPE's sections cover 64 of it.
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        },
        vision_config={
            **vision,
            "out_hidden_size": text["hidden_size"],
            "window_size": 112,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "hidden_act": "silu",
            "tokens_per_second": 2,
        },
        image_token_id=ids["<image>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    # Smoke: the sixth-size pictures are enlarged to at least 112 x 112 px (16 merged tokens), so that every image
    # holds more tokens than the largest smoke budget, as every real-size one does at the real budgets.
    pixels = {"shortest_edge": (112 * 112) if smoke else 56 * 56, "longest_edge": 28 * 28 * 16384}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(size=pixels, patch_size=14, merge_size=2, temporal_patch_size=2),
        tokenizer=tokenizer,
        video_processor=qwen_frame_video_processor({"size": pixels}),
        # Qwen's own template wraps each image in vision start / end tokens: two images never touch, so the stock
        # M-RoPE layout (`get_rope_index`) tells them apart.
        chat_template=TINY_CHAT_TEMPLATE.replace("'<image>\n'", "'<|vision_start|><image><|vision_end|>'"),
    )
    return config, processor


@dataclass(frozen=True)
class Geometry:
    """A model to check: what it stands for, and `build(smoke) -> (config, processor)` of a supported family."""

    title: str
    build: Callable
    tiles: bool = False  # AnyRes tiles, so a tile-skipping section too


GEOMETRIES = {
    "llava-next-7b": Geometry("LLaVA-NeXT-7B (Vicuna-7B, CLIP-L/336, AnyRes up to 672 px)", llava_next_7b, tiles=True),
    "llava-1.5-7b": Geometry("LLaVA-1.5-7B (Vicuna-7B, CLIP-L/336, one 336 px view)", llava_15_7b),
    "qwen2.5-vl-7b": Geometry(
        "Qwen2.5-VL-7B (Qwen2-7B, its 32-block windowed ViT, 2x2-merged tokens at native resolution)", qwen25_vl_7b
    ),
}


# ------------------------------------------------------------------ the work
def noise(height: int, width: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def mixed_prompts(folder: Path, scale: float) -> list[Prompt]:
    """Eight prompts: one image at the real sizes (672x672, 672x336, 336x336), two images, and three text only."""
    sizes = {"square-672": (672, 672), "tall-672x336": (672, 336), "square-336": (336, 336), "wide-336x672": (336, 672)}
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for seed, (name, (height, width)) in enumerate(sizes.items()):
        files[name] = folder / f"{name}.png"
        noise(max(int(height * scale), 14), max(int(width * scale), 14), seed).save(files[name])
    return [
        Prompt("Describe this image.", (files["square-672"],)),
        Prompt("What is the capital of France?"),
        Prompt("Which of the two is brighter?", (files["square-336"], files["wide-336x672"])),
        Prompt("What is in the picture?", (files["tall-672x336"],)),
        Prompt("Write a haiku about autumn."),
        Prompt("What colour dominates?", (files["square-336"],)),
        Prompt("Explain prefill in one line."),
        Prompt("Describe the texture.", (files["wide-336x672"],)),
    ]


def build_model(geometry: Geometry, smoke: bool, device: torch.device, dtype: torch.dtype):
    """The random-weight model, built where it runs (a 7B model initialised on the CPU would take minutes)."""
    config, processor = geometry.build(smoke)
    family = family_for_model_type(config.model_type)
    torch.manual_seed(0)
    with torch.device(device):
        model = family.generation_class._from_config(config, dtype=dtype).eval()
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    prototypes = torch.randn(PROTOTYPES if not smoke else 16, config.text_config.hidden_size)
    model.load_codebook(RedundancyCodebook(prototypes))
    return model, processor


def check_transformers() -> None:
    """Refuse a transformers older than the package supports (a GPU machine's own Python may hold one), by name."""
    import transformers
    from packaging.version import Version

    pinned = next(
        (
            line.split("==")[1].strip()
            for line in (ROOT / "constraints.txt").read_text().splitlines()
            if line.startswith("transformers==")
        ),
        "5.25.0",
    )
    if Version(transformers.__version__) < Version(MINIMUM_TRANSFORMERS):
        sys.exit(
            f"transformers {transformers.__version__} is older than llava-codebook needs ({MINIMUM_TRANSFORMERS}); "
            f"install the lock's version first: pip install --no-deps transformers=={pinned} (on a machine without "
            "network, download its wheel elsewhere and install that)."
        )


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny geometry on the CPU, one repeat (not a measurement)")
    parser.add_argument("--geometries", default=",".join(GEOMETRIES), help=f"comma-separated, of {list(GEOMETRIES)}")
    parser.add_argument("--repeats", type=int, default=3, help="at most this many interleaved repeats")
    parser.add_argument("--time-budget", type=float, default=400.0, help="seconds of measuring, all geometries")
    parser.add_argument("--max-new-tokens", type=int, default=6)
    parser.add_argument("--out-dir", default=None, help="default: benchmarks/results (smoke: results-local)")
    args = parser.parse_args(argv)
    check_transformers()
    names = [name.strip() for name in args.geometries.split(",") if name.strip()]
    unknown = [name for name in names if name not in GEOMETRIES]
    if unknown or not names:
        parser.error(f"unknown geometries {unknown or names}; known: {', '.join(GEOMETRIES)}")
    if args.smoke:
        device, dtype, repeats, warmup, budgets = torch.device("cpu"), torch.float32, 1, 0, SMOKE_BUDGETS
        args.max_new_tokens = 2
    elif torch.cuda.is_available():
        device, dtype, repeats, warmup, budgets = torch.device("cuda"), torch.bfloat16, args.repeats, 1, BUDGETS
    else:
        parser.error("no CUDA GPU here; run with --smoke to check the script on the CPU")
    out_dir = Path(args.out_dir) if args.out_dir else ROOT / ("results-local" if args.smoke else "benchmarks/results")
    label = "smoke-cpu" if args.smoke else slug(torch.cuda.get_device_name(device))
    strategies = ["none", *(name for name in STRATEGIES if name != "none")]
    images = tempfile.TemporaryDirectory(prefix="gpu-check-images-")
    prompts = mixed_prompts(Path(images.name), 56 / 336 if args.smoke else 1.0)
    if args.smoke:  # one of each kind (one image, text only, two images) keeps the check quick on a shared CPU
        prompts = prompts[:4]
    deadline = time.perf_counter() + args.time_budget
    command = "bash benchmarks/gpu.sh " + " ".join(argv if argv is not None else sys.argv[1:])
    reports = []
    sections_left = sum(2 if GEOMETRIES[name].tiles else 1 for name in names)
    for name in names:
        geometry = GEOMETRIES[name]
        started = time.perf_counter()
        model, processor = build_model(geometry, args.smoke, device, dtype)
        built = time.perf_counter() - started
        # (title suffix, strategies, tile skipping) of each section this geometry gets.
        parts = [("", strategies, "off")]
        if geometry.tiles:
            parts.append((", with and without tile skipping", ["none", "codebook"], "both"))
            model.config.tile_skip_share = SKIP_SHARE
        for suffix, section_strategies, skipping in parts:
            share = max(deadline - time.perf_counter(), 0.0) / sections_left
            sections_left -= 1
            print(f"{name}{suffix}: built in {built:.0f} s; measuring for at most about {share:.0f} s", flush=True)
            result = profile_model(
                model,
                processor,
                prompts,
                # A family runs the strategies its tower can serve (no [CLS] rules on Qwen-VL's ViT).
                strategies=[name for name in section_strategies if name in model.available_strategies("image")],
                budgets=[Budget(keep_tokens=b) for b in budgets],
                batch_sizes=BATCH_SIZES,
                repeats=repeats,
                warmup=warmup,
                max_new_tokens=args.max_new_tokens,
                time_budget_s=share,
                progress=lambda message, name=name: print(f"{name}: {message}", flush=True),
                tile_skipping=skipping,
            )
            reports.append(
                {
                    "geometry": name,
                    "title": geometry.title
                    + suffix
                    + (" (SMOKE RUN: tiny geometry, not a measurement)" if args.smoke else ""),
                    "command": command.strip(),
                    "hardware": hardware(device),
                    "device": str(device),
                    "software": software(),
                    "model": {"id": f"random weights at {name} geometry", **describe_model(model)},
                    "settings": {
                        "prompts": [{"text": p.text, "images": [Path(i).name for i in p.images]} for p in prompts],
                        "max_new_tokens": args.max_new_tokens,
                        "repeats": result["repeats_done"],
                        "warmup": warmup,
                        "batch_sizes": list(BATCH_SIZES),
                        "memory": "CUDA allocator peak" if device.type == "cuda" else "process peak resident set size",
                        "build_seconds": built,
                        "measure_seconds": result["seconds"],
                        "tile_skipping": skipping,
                        "tile_skip_share": model.config.tile_skip_share,
                    },
                    "rows": result["rows"],
                }
            )
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = out_dir / f"gpu-{label}.md"
    sections = [
        f"# GPU check on {reports[0]['hardware']}",
        "",
        "Written by `bash benchmarks/gpu.sh` (see `benchmarks/gpu.py`): random weights at the real shapes, so the "
        "times, memory and cache are what these shapes cost and the answers are noise.",
        "",
    ]
    for report in reports:
        sections.append(render_markdown(report, title=report["title"], level=2))
    markdown.write_text("\n".join(sections))
    markdown.with_suffix(".json").write_text(json.dumps(reports, indent=2) + "\n")
    images.cleanup()
    print(f"Wrote {markdown} and {markdown.with_suffix('.json')}", flush=True)
    return markdown


if __name__ == "__main__":
    main()
