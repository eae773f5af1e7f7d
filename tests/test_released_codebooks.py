"""The method's two public codebooks, as a user runs them: `import-seed --base-model <llava-hf id>`, `convert`, load.

The base models are Hub-layout replicas of llava-hf/llava-1.5-7b-hf and llava-hf/llava-onevision-qwen2-7b-ov-hf
(`hub_fixtures`) served by the real Hub client from a seeded offline cache, with the language model's hidden size of
the real checkpoint (4096, 3584: the codebooks' dimension) and everything else shrunk: one text layer, a small MLP,
and an embedding table of 1024 rows instead of 32064 / 152128 (at the real width those tables alone would be 0.5 /
2.2 GB). The token ids stay real, so they exceed that table: these replicas are for loading and scoring, not for
generating. Skipped only where `../shared/seed-codebooks/` is absent.
"""

import pytest
import torch
from codebooks_helpers import SEED_CODEBOOKS
from hub_fixtures import build_stock_checkpoint, build_stock_processor, stock_class
from hub_helpers import seed_hub_cache
from huggingface_hub import constants
from PIL import Image
from typer.testing import CliRunner

from llava_codebook import RedundancyCodebook
from llava_codebook.cli import app
from llava_codebook.strategies import Segment

RELEASES = {
    "llava-1.5-7b": ("llava15_coco_train_500samples_numPrototypes-454.pt", "llava-hf/llava-1.5-7b-hf", 4096, 0.45),
    "llava-onevision-qwen2-7b-ov": (
        "llavaov_coco_train_1200samples_numPrototypes-45.pt",
        "llava-hf/llava-onevision-qwen2-7b-ov-hf",
        3584,
        0.5,
    ),
}
REPLICA_VOCAB = 1024


def run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.mark.slow
@pytest.mark.parametrize("family", RELEASES)
def test_a_released_codebook_imports_for_its_llava_hf_id_converts_and_loads_on_a_replica(family, tmp_path, monkeypatch):
    filename, hub_id, hidden, threshold = RELEASES[family]
    release = SEED_CODEBOOKS / filename
    if not SEED_CODEBOOKS.parent.is_dir():
        pytest.skip("../shared is absent")
    replica = build_stock_checkpoint(family, tmp_path / "replica", text_hidden_size=hidden, vocab_size=REPLICA_VOCAB)
    cache = tmp_path / "hub"
    seed_hub_cache(cache, hub_id, {str(p.relative_to(replica)): p for p in replica.rglob("*") if p.is_file()})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    assert "with dimension" not in run(
        "import-seed", str(release), "--base-model", hub_id, "--out", str(tmp_path / "cb")
    )
    codebook = RedundancyCodebook.from_pretrained(tmp_path / "cb")
    original = torch.load(release, map_location="cpu", weights_only=True)
    assert codebook.base_model == hub_id and codebook.dim == hidden and torch.equal(codebook.prototypes, original)
    out = tmp_path / "converted"
    run(
        "convert",
        "--base",
        hub_id,
        "--codebook",
        str(tmp_path / "cb"),
        "--threshold",
        str(threshold),
        "--out",
        str(out),
    )

    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True)
    stock = stock_class(family).from_pretrained(replica)
    expected, loaded = stock.state_dict(), model.state_dict()
    assert sorted(loaded) == sorted(expected)
    assert all(torch.equal(loaded[name], expected[name]) for name in expected)
    assert model.config.codebook_threshold == threshold and torch.equal(model.codebook.prototypes, original)

    # The codebook scores the replica's own post-projector tokens (its real width) through the family's layout.
    processor = build_stock_processor(family)
    image = Image.effect_noise((150, 90), 60).convert("RGB")
    inputs = processor(images=[image], text=["<image>"], return_tensors="pt")
    visual = model.model.encode_for_pruning("image", dict(inputs))
    segments = [Segment(f.float(), n, "image") for f, n in zip(visual.packed, visual.newline)]
    selection = model.model.select_segments(segments, model.pruning_settings())
    assert selection.num_total.tolist() == [visual.packed[0].shape[0]] and visual.packed[0].shape[1] == hidden
    assert 1 <= int(selection.num_kept[0]) <= int(selection.num_total[0])
    assert selection.scores[0].abs().max() <= 1.0 + 1e-3


def test_import_seed_refuses_a_released_codebook_for_the_other_familys_base_model(tmp_path, monkeypatch):
    """The 45 x 3584 OneVision codebook declared for a llava-1.5 checkpoint of another width is refused."""
    release = SEED_CODEBOOKS / RELEASES["llava-onevision-qwen2-7b-ov"][0]
    if not release.is_file():
        pytest.skip(f"{release} is not present")
    replica = build_stock_checkpoint("llava-1.5-7b", tmp_path / "replica")
    cache = tmp_path / "hub"
    seed_hub_cache(cache, "llava-hf/llava-1.5-7b-hf", {"config.json": replica / "config.json"})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    args = ["import-seed", str(release), "--base-model", "llava-hf/llava-1.5-7b-hf", "--out", str(tmp_path / "cb")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "dimension 3584" in result.stderr and not (tmp_path / "cb").exists()
