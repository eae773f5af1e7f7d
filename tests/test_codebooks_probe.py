import pytest
import torch
from PIL import Image

from llava_codebook.codebooks.data import pil_images
from llava_codebook.codebooks.divergence import topk_divergence
from llava_codebook.codebooks.presets import RELEASE_PROMPT
from llava_codebook.codebooks.probe import (
    ProbeRunner,
    context_window,
    leave_one_out,
    probe_images,
    prompt_ids,
    single_token_probe,
)
from llava_codebook.codebooks.tiny_pipeline import synthetic_images
from llava_codebook.tiny import build_tiny_model, build_tiny_processor


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_model(0), build_tiny_processor()


@pytest.fixture(scope="module")
def runner(tiny):
    return ProbeRunner(*tiny, batch_size=7)


def _reference_logits(model, runner, visual):
    """First-token logits from the model's own forward with `inputs_embeds` (one sequence at a time)."""
    embeds = torch.cat([runner.prefix, visual, runner.suffix])[None]
    with torch.no_grad():
        return model(inputs_embeds=embeds).logits[0, -1].float()


def test_prompt_goes_through_the_tokenizer_with_one_image_placeholder(tiny):
    model, processor = tiny
    ids = prompt_ids(processor, RELEASE_PROMPT, model.config.image_token_id)
    assert ids.count(model.config.image_token_id) == 1 and ids[0] == model.config.image_token_id
    words = processor.tokenizer.decode(ids[1:]).split()
    assert "single" in words and "describes" in words and processor.tokenizer.unk_token not in words


def test_pad_embedding_is_the_models_pad_row(runner, tiny):
    model, _ = tiny
    assert runner.pad_token_id == 0
    assert torch.equal(runner.pad_embedding, model.get_input_embeddings().weight[0])


def test_release_ranks_are_cut_to_the_tiny_grid(runner):
    assert runner.side == 4 and runner.probe_ranks == list(range(1, 17))


def test_context_window_is_3x3_and_shifted_inside_at_borders():
    assert context_window(5, 4).tolist() == [0, 1, 2, 4, 5, 6, 8, 9, 10]
    assert context_window(0, 4).tolist() == [0, 1, 2, 4, 5, 6, 8, 9, 10]
    assert context_window(15, 4).tolist() == [5, 6, 7, 9, 10, 11, 13, 14, 15]
    assert context_window(3, 5).tolist() == [2, 3, 4, 7, 8, 9, 12, 13, 14]


def test_probe_order_follows_cls_similarity_at_the_feature_layer(runner, tiny):
    model, processor = tiny
    pixels = runner.pixel_values(synthetic_images(2))
    tokens, order = runner.encode(pixels)
    with torch.no_grad():
        hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-2]
        expected_tokens = model.model.multi_modal_projector(hidden[:, 1:])
    similarity = torch.nn.functional.cosine_similarity(hidden[:, :1], hidden[:, 1:], dim=-1)
    assert torch.allclose(tokens, expected_tokens)
    ranked = similarity.gather(1, order)
    assert torch.all(ranked[:, :-1] >= ranked[:, 1:])


def test_rank_by_index_probes_in_raster_order(tiny):
    runner = ProbeRunner(*tiny, rank_by="index")
    _, order = runner.encode(runner.pixel_values(synthetic_images(1)))
    assert order[0].tolist() == list(range(16))


def test_single_token_probe_matches_the_model_forward_and_p_max_is_over_top_50(runner, tiny):
    model, _ = tiny
    tokens, order = runner.encode(runner.pixel_values(synthetic_images(2)))
    indices = runner.probe_indices(order)
    out = single_token_probe(runner, tokens, indices)
    for b, j in [(0, 0), (1, 5), (1, 15)]:
        logits = _reference_logits(model, runner, tokens[b, indices[b, j]][None])
        top50 = torch.softmax(logits.topk(50).values.double(), -1)
        assert out["p_max"][b, j].item() == pytest.approx(top50.max().item(), rel=1e-4)
        assert out["top_ids"][b, j].tolist() == logits.topk(50).indices.tolist()


def test_probe_results_do_not_depend_on_the_batch_size(tiny):
    images = synthetic_images(3)
    small = probe_images(ProbeRunner(*tiny, batch_size=1), images, list(pil_images(images)))
    large = probe_images(ProbeRunner(*tiny, batch_size=200), images, list(pil_images(images)))
    for a, b in zip(small, large):
        for name in a.TENSORS:
            assert torch.allclose(getattr(a, name).float(), getattr(b, name).float(), rtol=1e-4, atol=1e-7), name


def test_leave_one_out_replaces_the_target_then_the_block_with_the_pad_embedding(runner, tiny):
    model, _ = tiny
    tokens, order = runner.encode(runner.pixel_values(synthetic_images(2)))
    indices = runner.probe_indices(order)
    out = leave_one_out(runner, tokens, indices)
    b, j = 1, 3
    target = int(indices[b, j])
    window = context_window(target, 4)
    block = tokens[b, window].clone()
    removed = block.clone()
    removed[window.tolist().index(target)] = runner.pad_embedding
    ctx = topk_divergence(
        _reference_logits(model, runner, block)[None], _reference_logits(model, runner, removed)[None]
    )
    everything = tokens[b].clone()
    blanked = everything.clone()
    blanked[window] = runner.pad_embedding
    glob = topk_divergence(
        _reference_logits(model, runner, everything)[None], _reference_logits(model, runner, blanked)[None], kind="jsd"
    )
    assert out["ctx_release"][b, j].item() == pytest.approx(ctx.item(), rel=1e-3)
    assert out["global_jsd"][b, j].item() == pytest.approx(glob.item(), rel=1e-3)
    assert torch.all(out["ctx_release"] > 0) and torch.all(out["global_release"] > 0)


def test_a_flat_image_and_a_textured_image_get_different_probe_orders(runner):
    flat, textured = Image.new("RGB", (64, 64), (10, 200, 30)), synthetic_images(2)[1]
    _, order = runner.encode(runner.pixel_values([flat, textured]))
    assert order[0].tolist() != order[1].tolist()


def test_a_model_without_a_pad_token_needs_one_explicitly(tiny):
    model, processor = tiny
    model = build_tiny_model(0)
    model.config.text_config.pad_token_id = None
    model.config.pad_token_id = None
    processor = build_tiny_processor()
    processor.tokenizer.pad_token = None
    with pytest.raises(ValueError, match="pad_token_id=... or pad_embedding"):
        ProbeRunner(model, processor)
    runner = ProbeRunner(model, processor, pad_embedding=torch.zeros(64))
    assert torch.equal(runner.pad_embedding, torch.zeros(64))


def test_a_chat_template_shapes_the_probe_prompt(tiny):
    model, _ = tiny
    processor = build_tiny_processor()
    processor.chat_template = (
        "{% for m in messages %}user : {% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
        "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}{% if add_generation_prompt %} answer :{% endif %}"
    )
    ids = prompt_ids(processor, "what is this ?", model.config.image_token_id)
    expected = processor.tokenizer("user : <image>\nwhat is this ? answer :", add_special_tokens=False)["input_ids"]
    assert ids == expected


def test_the_stock_llava_next_class_gives_the_same_probes(tiny):
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    model, processor = tiny
    config = LlavaNextConfig(
        **{k: v for k, v in model.config.to_dict().items() if k in LlavaNextConfig.__dataclass_fields__}
    )
    stock = LlavaNextForConditionalGeneration(config).eval()
    stock.load_state_dict(model.state_dict())
    images = synthetic_images(2)
    ours = probe_images(ProbeRunner(model, processor), images, list(pil_images(images)))
    theirs = probe_images(ProbeRunner(stock, processor), images, list(pil_images(images)))
    for a, b in zip(ours, theirs):
        assert torch.equal(a.tokens, b.tokens) and torch.allclose(a.div_global_release, b.div_global_release)


def test_a_336px_crop_probes_all_96_release_ranks():
    from llava_codebook.codebooks.presets import RELEASE_PROBE_RANKS

    model, processor = build_tiny_model(0, crop=336), build_tiny_processor(crop=336)
    runner = ProbeRunner(model, processor, batch_size=96)
    assert runner.side == 24 and runner.probe_ranks == list(RELEASE_PROBE_RANKS)
    images = synthetic_images(1, side=336)
    (result,) = probe_images(runner, images, list(pil_images(images)))
    assert result.tokens.shape == (96, 64) and result.div_global_jsd.shape == (96,)
    assert result.patch_indices.unique().numel() == 96 and int(result.patch_indices.max()) < 576
