"""Prefill speed-up from pruning, measured against the FLOPs prediction, and the cost of selection itself.

One 672x672 image on a mid-size random-weight LLaVA-NeXT (CLIP-style tower 768 x 12 layers at 336 px crops, so the
real AnyRes geometry of 2928 visual tokens; Llama-style LLM 1024 x 8 layers). For each kept share the prompt is
compacted by the product's own path (`prepare_pruned_inputs`, budget mode) and the language-model prefill is
timed alone (`logits_to_keep=1`, as `generate` does). Times are medians of interleaved repeats; only ratios taken
within this one run are reported, because absolute times on a shared CPU are noise.

    python benchmarks/prefill.py [--repeats 3] [--out benchmarks/results/prefill.md]
"""

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
from PIL import Image
from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextImageProcessorPil

from llava_codebook import LlavaNextCodebookConfig, LlavaNextCodebookForConditionalGeneration, RedundancyCodebook
from llava_codebook.flops import prefill_flops_ratio
from llava_codebook.tiny import build_tiny_tokenizer
from llava_codebook.processing_llava_next_codebook import LlavaNextCodebookProcessor

KEEP_SHARES = (1.0, 0.5, 0.25, 0.1)
PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def build(num_prototypes: int = 969):
    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer()
    config = LlavaNextCodebookConfig(
        text_config=LlamaConfig(
            vocab_size=32000,
            hidden_size=1024,
            intermediate_size=2816,
            num_hidden_layers=8,
            num_attention_heads=16,
            num_key_value_heads=8,
            max_position_embeddings=8192,
        ),
        vision_config=CLIPVisionConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=336,
            patch_size=14,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=PINPOINTS,
        pruning_mode="budget",
    )
    model = LlavaNextCodebookForConditionalGeneration(config).eval()
    model.load_codebook(RedundancyCodebook(torch.randn(num_prototypes, 1024)))
    processor = LlavaNextCodebookProcessor(
        image_processor=LlavaNextImageProcessorPil(
            size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, image_grid_pinpoints=PINPOINTS
        ),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return model, processor


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "prefill.md"))
    args = parser.parse_args()

    model, processor = build()
    image = Image.new("RGB", (672, 672))
    inputs = processor(images=[image], text=["<image>\nwhat does this image show ?"], return_tensors="pt")
    visual = int((inputs["input_ids"] == model.config.image_token_id).sum())
    text = inputs["input_ids"].shape[1] - visual

    prepared = {}
    for share in KEEP_SHARES:
        settings = model.pruning_settings(pruning_mode="budget", keep_ratio=share)
        compacted, selection = model.model.prepare_pruned_inputs(
            inputs["input_ids"],
            inputs["pixel_values"],
            inputs["image_sizes"],
            settings,
            attention_mask=inputs["attention_mask"],
        )
        compacted.pop("labels")
        prepared[share] = (compacted, int(selection.num_kept.sum()))

    def prefill(share):
        compacted, _ = prepared[share]
        with torch.no_grad(), model.pruning_disabled():
            return model(**compacted, logits_to_keep=1)

    def vision():
        with torch.no_grad():
            return model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"], return_dict=True)

    packed = vision().pooler_output
    settings = model.pruning_settings(pruning_mode="threshold", codebook_threshold=0.11)

    def select():
        return model.model.select_visual_tokens(packed, inputs["image_sizes"], settings)

    times = {share: [] for share in KEEP_SHARES}
    vision_times, select_times = [], []
    prefill(1.0)  # warm-up
    for _ in range(args.repeats):
        for share in KEEP_SHARES:
            times[share].append(timed(lambda: prefill(share))[0])
        vision_times.append(timed(vision)[0])
        select_times.append(timed(select)[0])

    full = statistics.median(times[1.0])
    rows = []
    for share in KEEP_SHARES:
        kept = prepared[share][1]
        measured = statistics.median(times[share]) / full
        predicted = prefill_flops_ratio(model.config.text_config, text, visual, kept)
        rows.append(f"| {share:.0%} | {kept} / {visual} | {measured:.3f} | {predicted:.3f} | {1 / measured:.2f}x |")
    overhead = statistics.median(select_times) / statistics.median(vision_times)

    table = "\n".join(
        [
            "# Prefill benchmark",
            "",
            f"Command: `python benchmarks/prefill.py --repeats {args.repeats}`",
            "",
            f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, {platform.platform()}; "
            f"torch {torch.__version__}, Python {platform.python_version()}.",
            "",
            "Model: random weights; LLM Llama-style hidden 1024, 8 layers, 16 heads (8 KV), MLP 2816; vision tower "
            "CLIP-style 768 x 12 layers, 336 px crops, 14 px patches; one 672x672 image "
            f"({visual} visual tokens incl. row newlines, {text} text tokens); codebook of 969 random prototypes; "
            "sdpa attention; fp32. Budget mode sets the kept share; times are medians of "
            f"{args.repeats} interleaved repeats after one warm-up.",
            "",
            "| keep_ratio (non-newline tokens) | kept / total (newlines included) | measured prefill time (share of 100 %) | FLOPs-predicted share | speed-up |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"Selection overhead (scoring all {visual} tokens against 969 prototypes + choosing): "
            f"{overhead:.2%} of the vision tower + projector time.",
            "",
        ]
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table)
    print(table)


if __name__ == "__main__":
    main()
