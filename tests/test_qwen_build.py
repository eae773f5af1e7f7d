"""The codebook builder on the Qwen-VL families: probes held against the stock model, and the `qwen-vl` preset end to
end through the command line on a tiny replica (checkpoint chat template, merged tokens, M-RoPE positions).

Oracle of a probe: the probe prompt with the image's placeholder expanded to the whole square view (what the stock
processor writes), run by the stock model with every token not fed by the probe excluded from attention and every
token at the stock position of that full prompt; the probe's last-token logits must be that forward pass's.
"""

import pytest
import torch
from codebooks_helpers import save_images
from qwen_fixtures import build_stock_checkpoint, build_stock_model, build_stock_processor
from typer.testing import CliRunner

from llava_codebook import RedundancyCodebook, load_pruned_model
from llava_codebook.cli import app
from llava_codebook.codebooks.probe import ProbeLayout, leave_one_out, single_token_probe
from llava_codebook.codebooks.probe_mrope import MRopeProbeRunner, probe_runner
from llava_codebook.codebooks.tiny_pipeline import synthetic_images

NAMES = ["qwen2-vl-2b", "qwen2.5-vl-3b", "qwen3-vl-2b"]
GRID = 4  # merged tokens a side of the probed view


@pytest.fixture(scope="module")
def runners():
    out = {}
    for name in NAMES:
        model = build_stock_model(name, dtype="float32")
        out[name] = probe_runner(model, build_stock_processor(name), probe_grid=GRID, pad_token_id=151643)
    return out


def full_prompt(runner):
    """The probe prompt with the placeholder expanded to the whole view: ids, token types, grid, stock positions."""
    config = runner.model.config
    ids = runner.prompt_token_ids
    at, count = ids.index(config.image_token_id), GRID * GRID
    full = torch.tensor([ids[:at] + [config.image_token_id] * count + ids[at + 1 :]])
    types = torch.zeros_like(full)
    types[0, at : at + count] = 1
    grid = runner._grid(1)
    positions, _ = runner.model.model.get_rope_index(full, types, image_grid_thw=grid)
    return full, types, grid, positions, at


@pytest.mark.parametrize("name", NAMES)
def test_a_probe_is_the_stock_model_on_the_full_probe_prompt_with_unfed_tokens_masked(runners, name):
    runner = runners[name]
    assert isinstance(runner, MRopeProbeRunner) and runner.ranks_by_index and not runner.has_cls
    images = synthetic_images(2)
    pixels = runner.pixel_values(images)
    encoded = runner.encode_crops(pixels)
    assert encoded.tokens.shape[:2] == (2, GRID * GRID)
    full, types, grid, positions, at = full_prompt(runner)
    per_image = pixels.shape[0] // 2
    for image in range(2):
        for fed in ([5], [0, 1, 2, 4, 5, 6, 8, 9, 10], list(range(GRID * GRID))):
            indices = torch.tensor([fed])
            layout = ProbeLayout.whole(indices, torch.tensor([image]))
            ours = runner.first_token_logits(encoded.tokens[image : image + 1, indices[0]], layout)
            mask = torch.ones_like(full)
            mask[0, at : at + GRID * GRID] = 0
            mask[0, at + indices[0]] = 1
            with torch.no_grad():
                expected = runner.model(
                    input_ids=full,
                    attention_mask=mask,
                    position_ids=positions,
                    pixel_values=pixels[image * per_image : (image + 1) * per_image],
                    image_grid_thw=grid,
                    mm_token_type_ids=types,
                ).logits[:, -1]
            torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_a_token_replaced_by_the_pad_embedding_keeps_its_slots_position(runners):
    """Leave-one-out's perturbed context: the target's embedding is the pad row, at the target's own position."""
    runner = runners["qwen2.5-vl-3b"]
    encoded = runner.encode_crops(runner.pixel_values(synthetic_images(1)))
    window = torch.tensor([[0, 1, 2, 4, 5, 6, 8, 9, 10]])
    replaced = window == 5  # the target, in the middle of its 3 x 3 block
    visual = encoded.tokens[0:1, window[0]].clone()
    visual[replaced] = runner.pad_embedding
    ours = runner.first_token_logits(visual, ProbeLayout(window, replaced, torch.tensor([0])))
    full, _, _, positions, at = full_prompt(runner)
    embeds = runner.model.get_input_embeddings()(full).clone()
    embeds[0, at : at + GRID * GRID] = encoded.tokens[0]
    embeds[0, at + 5] = runner.pad_embedding
    mask = torch.zeros_like(full)
    mask[0, :at], mask[0, at + GRID * GRID :], mask[0, at + window[0]] = 1, 1, 1
    with torch.no_grad():
        expected = runner.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits[:, -1]
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_both_probe_stages_run_on_merged_tokens(runners, name):
    runner = runners[name]
    encoded = runner.encode_crops(runner.pixel_values(synthetic_images(2)))
    indices = runner.probe_indices(encoded.order)
    assert indices[0].tolist() == list(range(GRID * GRID))  # ranked by raster index from 0, every token probed
    single = single_token_probe(runner, encoded.tokens, indices)
    divergences = leave_one_out(runner, encoded.tokens, indices)
    assert single["p_max"].shape == (2, GRID * GRID) and (single["p_max"] > 0).all()
    assert all(values.shape == (2, GRID * GRID) and torch.isfinite(values).all() for values in divergences.values())


@pytest.mark.slow
def test_the_build_command_makes_a_codebook_for_a_qwen_replica_that_then_prunes_it(tmp_path):
    checkpoint = build_stock_checkpoint("qwen2.5-vl-3b", tmp_path / "model")
    folder = tmp_path / "images"
    save_images(folder, synthetic_images(6))
    args = [
        "build", "--model", str(checkpoint), "--images", str(folder), "--out", str(tmp_path / "cb"),
        "--preset", "qwen-vl", "--probe-grid", str(GRID), "--top1-prob-thres", "0.9", "--jsd-thres", "0.05",
        "--prototype-cluster-nums", "4", "--min-unique-images", "1", "--cluster-size-thres", "8",
        "--image-batch-size", "3", "--no-progress", "--dtype", "float32",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    codebook = RedundancyCodebook.from_pretrained(tmp_path / "cb")
    params = codebook.build_parameters
    assert params["preset"] == "qwen-vl" and params["conversation"] == "checkpoint" and params["probe_grid"] == GRID
    assert "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>" in params["template_text"]
    assert params["ranked_by"] == "index" and params["pad_token_id"] == 151643 and codebook.vision_feature_layer is None
    model = load_pruned_model(checkpoint, codebook_repo=str(tmp_path / "cb"), dtype=torch.float32)
    assert codebook.dim == model.config.text_config.hidden_size
    processor = build_stock_processor("qwen2.5-vl-3b")
    message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is this ?"}]}]
    prompt = processor.apply_chat_template(message, add_generation_prompt=True)
    inputs = processor(text=[prompt], images=synthetic_images(2)[1:], return_tensors="pt")
    selection = model(
        **inputs, pruning_strategy="codebook", pruning_mode="budget", keep_ratio=0.5
    ).visual_token_selection
    assert selection.num_kept.tolist() == [round(0.5 * int(selection.num_total[0]))]
