"""`llava-codebook profile` on a Qwen-VL replica: it loads (the stock processor without torchvision), and the cache
after prefill holds exactly the prompt that reached the language model, pruned or not, one prompt at a time and
batched (two images of different sizes: the batch runs at its longest kept row)."""

import numpy as np
import torch
from PIL import Image
from qwen_fixtures import build_stock_checkpoint, stock_class

from llava_codebook import RedundancyCodebook
from llava_codebook.convert import convert_checkpoint
from llava_codebook.profile import Budget, run_profile


def test_profile_runs_on_a_qwen_replica_and_the_cache_holds_the_compacted_prompt(tmp_path):
    directory = build_stock_checkpoint("qwen2.5-vl-3b", tmp_path / "model")
    config = stock_class("qwen2.5-vl-3b").config_class.from_pretrained(directory)
    codebook = RedundancyCodebook(torch.randn(8, config.text_config.hidden_size)).save_pretrained(tmp_path / "cb")
    # What a user profiles: the converted repo (codebook inside, the base processor files copied unchanged).
    repo = convert_checkpoint(str(directory), str(codebook), tmp_path / "repo")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("square", (112, 112)), ("wide", (90, 150))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(images / f"{name}.png")
    report = run_profile(
        str(repo), [str(images)], strategies=["none", "codebook", "divprune"],
        budgets=[Budget(keep_tokens=4)], repeats=1, warmup=0, max_new_tokens=2, device="cpu", dtype="float32",
        batch_sizes=[1, 2],
    )  # fmt: skip
    text = config.text_config
    per_token = (
        2 * text.num_hidden_layers * text.num_key_value_heads * (text.hidden_size // text.num_attention_heads) * 4
    )  # fp32 K and V
    rows = {(row["batch_size"], row["configuration"]): row["per_batch"] for row in report["rows"]}
    configurations = ("none", "codebook @ 4 tokens", "divprune @ 4 tokens")
    assert set(rows) == {(size, name) for size in (1, 2) for name in configurations}
    for (size, configuration), per_batch in rows.items():
        for entry in per_batch:
            # The cache holds the batch at its prefill width: each row's real kept tokens, re-padded to the longest.
            assert entry["kv_cache_bytes"] == per_token * size * entry["prefill_width"]
            if size == 1:
                assert entry["prefill_width"] == entry["prompt_tokens"]
            if configuration == "none":
                assert entry["visual_tokens_kept"] == entry["visual_tokens_total"] > 4 * size
            else:
                assert entry["visual_tokens_kept"] == 4 * size < entry["visual_tokens_total"]
                assert (
                    entry["prompt_tokens"] == entry["prompt_tokens_unpruned"] - entry["visual_tokens_total"] + 4 * size
                )
                assert entry["prefill_width"] < entry["prefill_width_unpruned"]
