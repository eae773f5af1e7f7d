"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL against their stock classes, which serve as the oracle.

Each member is loaded from a checkpoint shaped like its Hub repository (`qwen_fixtures.QWEN_FAMILIES`) with
`load_pruned_model`, in float32, and run with its stock processor (videos through the PIL stand-in of the stock video
processor, which needs torchvision). The codebook holds every third merged token of the very inputs, so every image and
every video loses tokens at threshold 0.99.

The oracle is the stock model on the full prompt with the dropped visual tokens excluded from attention and every
token keeping the 3-D (M-RoPE) position the stock model gives it in the unpruned prompt (`get_rope_index` on the full
prompt, passed as `position_ids`). Greedy tokens must be identical and logits equal to float tolerance; the language
model's prefill must be as wide as the longest kept row, and its positions those of the full prompt.
"""

import pytest
import torch
from noise_images import clip, picture
from qwen_fixtures import QWEN_FAMILIES, build_stock_checkpoints, build_stock_processor, stock_class

from llava_codebook import RedundancyCodebook, load_pruned_model
from llava_codebook.strategies import STRATEGIES

FAMILY_NAMES = list(QWEN_FAMILIES)
GREEDY = dict(max_new_tokens=5, do_sample=False)
PRUNE = dict(codebook_threshold=0.99)
FEATURES_ONLY = ("codebook", "codebook_diverse", "divprune", "random", "uniform", "none")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return build_stock_checkpoints(tmp_path_factory.mktemp("qwen-families"))


@pytest.fixture(scope="module")
def families(checkpoints):
    """family -> (pruning model, stock model, stock processor), float32, from the Hub-shaped checkpoint."""
    out = {}
    for name, directory in checkpoints.items():
        model = load_pruned_model(directory, dtype=torch.float32, pruning_strategy="none").eval()
        stock = stock_class(name).from_pretrained(directory, dtype=torch.float32).eval()
        out[name] = (model, stock, build_stock_processor(name))
    return out


def metadata(frames: int) -> dict:
    # Two frames a second: Qwen2.5-VL's temporal positions step by tokens_per_second x 1 s = 2; Qwen3-VL writes the
    # frames' timestamps into the prompt.
    return {"total_num_frames": frames, "fps": 2.0, "frames_indices": list(range(frames))}


def prompt(processor, *kinds: str, text: str = "what is this ?") -> str:
    content = [{"type": kind} for kind in kinds] + [{"type": "text", "text": text}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


# Batches of two, left-padded by the processor: images, several images in one prompt, a video, a text-only row. The
# 130 x 150 px image spans more than one 112 px window of Qwen2.5-VL's windowed attention.
def cases(processor) -> dict:
    return {
        "image_and_video_and_a_text_only_sample": dict(
            text=[prompt(processor, "image", "video"), prompt(processor)],
            images=[picture(130, 150, 1)],
            videos=[clip(4, 10)],
            video_metadata=[metadata(4)],
        ),
        "two_images_in_one_prompt_and_a_video": dict(
            text=[prompt(processor, "image", "image"), prompt(processor, "video", text="what happens ?")],
            images=[picture(90, 150, 2), picture(130, 70, 3)],
            videos=[clip(3, 20)],
            video_metadata=[metadata(3)],
        ),
    }


def encode(processor, case) -> dict:
    processor.tokenizer.padding_side = "left"
    return dict(processor(**case, padding=True, return_tensors="pt"))


def attach_codebook_from(model, inputs) -> None:
    """Every third merged token of each segment of `inputs` as the codebook: all segments lose tokens."""
    call = dict(inputs)
    rows = []
    with torch.no_grad():
        for modality in model.model.pruning_modalities:
            visual = model.model.encode_for_pruning(modality, call)
            if visual is not None:
                rows += [features[::3] for features in visual.packed]
    model.load_codebook(RedundancyCodebook(torch.cat(rows).detach().clone()))


def full_prompt_positions(stock, inputs) -> torch.Tensor:
    """`[3, B, S]`: the stock model's own M-RoPE positions of the unpruned prompt."""
    extra = {"second_per_grid_ts": inputs["second_per_grid_ts"]} if "second_per_grid_ts" in inputs else {}
    positions, _ = stock.model.get_rope_index(
        inputs["input_ids"],
        inputs["mm_token_type_ids"],
        image_grid_thw=inputs.get("image_grid_thw"),
        video_grid_thw=inputs.get("video_grid_thw"),
        attention_mask=inputs["attention_mask"],
        **extra,
    )
    return positions


def placeholder_keep_mask(model, inputs, selection) -> torch.Tensor:
    """The attention mask with the dropped image and video placeholders zeroed (the oracle's input)."""
    mask = inputs["attention_mask"].clone()
    keep = selection.keep_masks()
    for modality in ("image", "video"):
        own = [m for m, kind in zip(keep, selection.modalities) if kind == modality]
        if own:
            mask[inputs["input_ids"] == getattr(model.config, f"{modality}_token_id")] = torch.cat(own).long()
    return mask


def oracle_generate(stock, model, inputs, selection, **kwargs):
    mask = placeholder_keep_mask(model, inputs, selection)
    return stock.generate(
        **{**inputs, "attention_mask": mask}, position_ids=full_prompt_positions(stock, inputs), **kwargs
    )


class LanguageModelCalls:
    """Records the width and the position ids of every call of the language model (prefill first)."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.model.language_model.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs):
        self.calls.append((kwargs["inputs_embeds"].shape[1], kwargs["position_ids"].detach().clone()))

    def __enter__(self):
        return self.calls

    def __exit__(self, *exc):
        self.handle.remove()


def assert_logits_close(got, want):
    for step, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=f"step {step}")


@pytest.mark.parametrize("name", FAMILY_NAMES)
@pytest.mark.parametrize("setting", ["threshold", "budget"])
def test_pruned_generate_matches_the_stock_model_with_dropped_tokens_masked_and_full_prompt_positions(
    families, name, setting
):
    model, stock, processor = families[name]
    settings = PRUNE if setting == "threshold" else dict(pruning_mode="budget", keep_ratio=0.4)
    logits = dict(output_logits=True, return_dict_in_generate=True, **GREEDY)
    for case_name, case in cases(processor).items():
        inputs = encode(processor, case)
        assert not inputs["attention_mask"][:, 0].all(), "the batch is left-padded"
        attach_codebook_from(model, inputs)
        out = model.generate(**inputs, pruning_strategy="codebook", **settings, **logits)
        selection = out.visual_token_selection
        assert (selection.num_kept < selection.num_total).all(), f"{case_name}: every segment must lose tokens"
        assert set(selection.modalities) == {"image", "video"}
        expected = oracle_generate(stock, model, inputs, selection, **logits)
        assert torch.equal(out.sequences, expected.sequences), case_name
        assert_logits_close(out.logits, expected.logits)
        assert torch.equal(out.sequences[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])


def generate_recording_the_language_model(model, inputs):
    attach_codebook_from(model, inputs)
    with LanguageModelCalls(model) as calls:
        out = model.generate(**inputs, pruning_strategy="codebook", **PRUNE, **GREEDY, return_dict_in_generate=True)
    return calls, placeholder_keep_mask(model, inputs, out.visual_token_selection).bool()


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_prefill_is_as_wide_as_the_longest_kept_row(families, name):
    model, _, processor = families[name]
    inputs = encode(processor, cases(processor)["image_and_video_and_a_text_only_sample"])
    calls, keep = generate_recording_the_language_model(model, inputs)
    width, _ = calls[0]
    assert width == int(keep.sum(dim=1).max()) < inputs["input_ids"].shape[1]


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_every_kept_token_has_its_full_prompt_position_at_prefill_and_decoding_continues_as_stock(families, name):
    """At prefill the language model sees each row's kept tokens (right-aligned) at the stock 3-D positions of the
    full prompt; each decoding step continues one past the last position on every axis, as the stock model does when
    it decodes the full prompt."""
    model, stock, processor = families[name]
    inputs = encode(processor, cases(processor)["image_and_video_and_a_text_only_sample"])
    calls, keep = generate_recording_the_language_model(model, inputs)
    width, positions = calls[0]
    assert positions.shape[0] == 3
    full = full_prompt_positions(stock, inputs)
    for row in range(keep.shape[0]):
        kept = keep[row].nonzero().squeeze(-1)
        assert torch.equal(positions[:, row, width - kept.numel() :], full[:, row, kept]), row
    with LanguageModelCalls(stock) as stock_calls:
        stock.generate(**inputs, **GREEDY)
    assert len(calls) == len(stock_calls) == GREEDY["max_new_tokens"]
    for (_, ours), (_, theirs) in zip(calls[1:], stock_calls[1:]):
        # The stock generate adds a text row in front ([4, B, 1]); the three M-RoPE rows are what the model uses.
        assert torch.equal(ours[-3:], theirs[-3:])


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_the_oracle_tells_wrong_positions_apart(families, name):
    """The comparison above can fail: the same kept tokens renumbered 0, 1, ... (what a prompt written without the
    dropped tokens would get) give logits that differ from the oracle's."""
    model, stock, processor = families[name]
    inputs = encode(processor, cases(processor)["image_and_video_and_a_text_only_sample"])
    attach_codebook_from(model, inputs)
    selection = model(**inputs, pruning_strategy="codebook", **PRUNE).visual_token_selection
    mask = placeholder_keep_mask(model, inputs, selection)
    with torch.no_grad():
        right = stock(**{**inputs, "attention_mask": mask}, position_ids=full_prompt_positions(stock, inputs)).logits
        renumbered = (mask.cumsum(-1) - 1).clamp(min=0)[None].expand(3, -1, -1)
        wrong = stock(**{**inputs, "attention_mask": mask}, position_ids=renumbered).logits
    assert (right[:, -1] - wrong[:, -1]).abs().max() > 1e-3


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_pruned_beam_search_matches_the_oracle(families, name):
    model, stock, processor = families[name]
    inputs = encode(processor, cases(processor)["image_and_video_and_a_text_only_sample"])
    attach_codebook_from(model, inputs)
    beams = dict(num_beams=3, num_return_sequences=2, **GREEDY)
    out = model.generate(**inputs, pruning_strategy="codebook", **PRUNE, **beams, return_dict_in_generate=True)
    assert out.sequences.shape[0] == 4
    assert torch.equal(out.sequences, oracle_generate(stock, model, inputs, out.visual_token_selection, **beams))


@pytest.mark.parametrize("name", FAMILY_NAMES)
@pytest.mark.parametrize("how", ["pruning_false", "budget_keep_all"])
def test_keep_all_is_bit_identical_to_the_stock_class_tokens_and_logits(families, name, how):
    model, stock, processor = families[name]
    inputs = encode(processor, cases(processor)["two_images_in_one_prompt_and_a_video"])
    attach_codebook_from(model, inputs)
    logits = dict(output_logits=True, return_dict_in_generate=True, **GREEDY)
    expected = stock.generate(**inputs, **logits)
    if how == "pruning_false":
        out = model.generate(**inputs, pruning=False, **logits)
        assert out.visual_token_selection is None
    else:
        out = model.generate(**inputs, pruning_strategy="codebook", pruning_mode="budget", keep_ratio=1.0, **logits)
        assert torch.equal(out.visual_token_selection.num_kept, out.visual_token_selection.num_total)
    assert torch.equal(out.sequences, expected.sequences)
    for got, want in zip(out.logits, expected.logits):
        assert torch.equal(got, want)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_forward_logits_at_kept_positions_match_the_masked_stock_forward(families, name):
    model, stock, processor = families[name]
    inputs = encode(processor, cases(processor)["two_images_in_one_prompt_and_a_video"])
    attach_codebook_from(model, inputs)
    out = model(**inputs, pruning_strategy="codebook", **PRUNE)
    mask = placeholder_keep_mask(model, inputs, out.visual_token_selection)
    with torch.no_grad():
        reference = stock(
            **{**inputs, "attention_mask": mask}, position_ids=full_prompt_positions(stock, inputs)
        ).logits
    width = out.logits.shape[1]
    for row in range(mask.shape[0]):
        kept = mask[row].nonzero().squeeze(-1)
        torch.testing.assert_close(out.logits[row, width - kept.numel() :], reference[row, kept], atol=1e-4, rtol=1e-4)


def test_qwen3_vl_drops_the_same_tokens_from_every_deepstack_feature_list(families):
    model, _, processor = families["qwen3-vl-2b"]
    inputs = encode(processor, cases(processor)["two_images_in_one_prompt_and_a_video"])
    attach_codebook_from(model, inputs)
    call = dict(inputs)
    with torch.no_grad():
        full = {m: model.model.encode_for_pruning(m, dict(call)) for m in ("image", "video")}
    handed = {}
    original = type(model.model).kept_encoder_output

    def spy(self, visual, keep, merged):
        handed[visual.modality] = original(self, visual, keep, merged), [k.clone() for k in keep]
        return handed[visual.modality][0]

    type(model.model).kept_encoder_output = spy
    try:
        model(**inputs, pruning_strategy="codebook", **PRUNE)
    finally:
        type(model.model).kept_encoder_output = original
    for modality, (handoff, keep) in handed.items():
        layers = full[modality].handoff.deepstack_features
        assert len(handoff.deepstack_features) == len(layers) == 3
        for kept_layer, full_layer in zip(handoff.deepstack_features, layers):
            for kept, every, mask in zip(kept_layer, full_layer, keep):
                assert not mask.all()
                assert torch.equal(kept, every[mask])


# ------------------------------------------------------------------ segments, strategies, errors
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_an_image_is_its_merged_grid_and_a_video_its_temporal_patches_in_order(families, name):
    model, _, processor = families[name]
    spec = QWEN_FAMILIES[name]
    inputs = encode(processor, cases(processor)["image_and_video_and_a_text_only_sample"])
    image = model.model.encode_for_pruning("image", dict(inputs))
    video = model.model.encode_for_pruning("video", dict(inputs))
    merge = spec.vision["spatial_merge_size"]
    ((t, h, w),) = inputs["image_grid_thw"].tolist()
    assert [f.shape[0] for f in image.packed] == [h * w // merge**2] and (image.crop_ids[0] == 0).all()
    ((t, h, w),) = inputs["video_grid_thw"].tolist()
    assert t == 2  # four frames, two per temporal patch
    assert video.crop_ids[0].tolist() == [frame for frame in range(t) for _ in range(h * w // merge**2)]
    assert not any(n.any() for n in image.newline + video.newline)
    # The stock merger's output, split per image, is what the language model receives.
    with torch.no_grad():
        stock_features = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
    assert torch.equal(image.packed[0], stock_features.pooler_output[0])


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_only_the_strategies_that_need_no_cls_token_are_offered_and_the_others_are_refused(families, name):
    model, _, processor = families[name]
    offered = tuple(s for s in STRATEGIES if s in FEATURES_ONLY)
    assert model.available_strategies("image") == offered == model.available_strategies("video")
    inputs = encode(processor, cases(processor)["image_and_video_and_a_text_only_sample"])
    for strategy in ("cls_attention", "visionzip", "hired"):
        with pytest.raises(ValueError, match=rf"pruning_strategy='{strategy}' cannot run on .*no \[CLS\] token"):
            model.generate(**inputs, pruning_strategy=strategy, pruning_mode="budget", keep_tokens=3, **GREEDY)


@pytest.mark.parametrize("name", FAMILY_NAMES)
@pytest.mark.parametrize("strategy", ["codebook_diverse", "divprune", "random", "uniform"])
def test_feature_strategies_prune_images_and_videos_and_match_the_oracle(families, name, strategy):
    model, stock, processor = families[name]
    inputs = encode(processor, cases(processor)["two_images_in_one_prompt_and_a_video"])
    attach_codebook_from(model, inputs)
    budget = dict(pruning_mode="budget", keep_tokens=3, codebook_threshold=0.99)
    out = model.generate(**inputs, pruning_strategy=strategy, **budget, **GREEDY, return_dict_in_generate=True)
    selection = out.visual_token_selection
    assert set(selection.modalities) == {"image", "video"}
    assert (selection.num_kept <= 3).all() and (selection.num_kept < selection.num_total).all()
    assert torch.equal(out.sequences, oracle_generate(stock, model, inputs, selection, **GREEDY))


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_contiguous_positions_and_missing_token_types_are_refused_with_the_fix(families, name):
    model, _, processor = families[name]
    inputs = encode(processor, cases(processor)["image_and_video_and_a_text_only_sample"])
    attach_codebook_from(model, inputs)
    assert model.config.position_mode == "original"
    with pytest.raises(ValueError, match="position_mode='contiguous' is not available.*M-RoPE"):
        model.generate(**inputs, pruning_strategy="codebook", position_mode="contiguous", **GREEDY)
    with pytest.raises(ValueError, match="position_mode='contiguous' is not available"):
        model.config.position_mode = "contiguous"
    without = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
    with pytest.raises(ValueError, match="without `mm_token_type_ids`.*Pass the `mm_token_type_ids`"):
        model.generate(**without, pruning_strategy="codebook", **PRUNE, **GREEDY)
    without_grid = {k: v for k, v in inputs.items() if k != "image_grid_thw"}
    with pytest.raises(ValueError, match="without `image_grid_thw`"):
        model(**without_grid, pruning_strategy="codebook", **PRUNE)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_a_selection_rerun_from_one_encoding_equals_the_models_own_for_every_offered_strategy(families, name):
    """What the Space does: encode an image and a video once, then select again under any offered strategy; each must
    keep exactly what the model keeps when it encodes for that strategy alone."""
    model, _, processor = families[name]
    inputs = encode(processor, cases(processor)["image_and_video_and_a_text_only_sample"])
    attach_codebook_from(model, inputs)
    call = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
    with torch.no_grad():
        segments = [
            segment
            for modality in ("image", "video")
            for segment in model.model.encode_for_strategies(modality, dict(call)).segments()
        ]
    for strategy in model.available_strategies("image"):
        settings = dict(pruning_mode="budget", keep_tokens=4, codebook_threshold=0.99, pruning_strategy=strategy)
        with torch.no_grad():
            own = model(**inputs, **settings).visual_token_selection
            again = model.model.select_segments(segments, model.pruning_settings(**settings))
        if strategy == "none":
            assert own is None and again.num_kept.tolist() == again.num_total.tolist()
            continue
        assert [k.tolist() for k in again.kept_indices] == [k.tolist() for k in own.kept_indices], strategy


def test_generate_from_inputs_embeds_alone_matches_the_stock_generate_on_the_masked_full_prompt(families):
    """Without `input_ids` the stock `generate` has no layout to read and numbers the real tokens 0, 1, ... on every
    axis; the pruned prompt keeps those numbers."""
    model, stock, processor = families["qwen2.5-vl-7b"]
    inputs = encode(processor, cases(processor)["image_and_video_and_a_text_only_sample"])
    attach_codebook_from(model, inputs)
    ids = inputs.pop("input_ids")
    embeds = model.get_input_embeddings()(ids)
    logits = dict(output_logits=True, return_dict_in_generate=True, **GREEDY)
    out = model.generate(inputs_embeds=embeds, **inputs, pruning_strategy="codebook", **PRUNE, **logits)
    selection = out.visual_token_selection
    assert (selection.num_kept < selection.num_total).all()
    mask = placeholder_keep_mask(model, {**inputs, "input_ids": ids}, selection)
    numbered = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)[None].expand(3, -1, -1)
    expected = stock.generate(
        inputs_embeds=embeds, **{**inputs, "attention_mask": mask}, position_ids=numbered, **logits
    )
    assert torch.equal(out.sequences, expected.sequences)
    assert_logits_close(out.logits, expected.logits)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_tile_skipping_is_refused_because_a_qwen_image_has_no_tiles(families, checkpoints, name):
    """Each image is one grid of merged tokens: `tile_skipping=True` is refused in the config, at load and per call,
    with the reason and the families it applies to; `tile_skipping=False` runs as usual."""
    model, _, processor = families[name]
    config_class = type(model.config)
    with pytest.raises(ValueError, match="encodes each image as one view with no tiles: there is nothing to skip"):
        config_class(tile_skipping=True)
    with pytest.raises(ValueError, match="nothing to skip"):
        load_pruned_model(checkpoints[name], dtype=torch.float32, tile_skipping=True)
    inputs = encode(processor, cases(processor)["image_and_video_and_a_text_only_sample"])
    attach_codebook_from(model, inputs)
    with pytest.raises(ValueError, match="LLaVA-NeXT, LLaVA-OneVision and LLaVA-NeXT-Video; leave tile_skipping=False"):
        model.generate(**inputs, pruning_strategy="codebook", tile_skipping=True, **PRUNE, **GREEDY)
    out = model.generate(**inputs, pruning_strategy="codebook", tile_skipping=False, **PRUNE, **GREEDY)
    assert out.shape[0] == 2
