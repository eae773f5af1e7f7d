"""LLaVA 1.5, LLaVA-OneVision and LLaVA-NeXT-Video against their stock classes, which serve as the oracle.

Each family is loaded from a checkpoint shaped like its llava-hf Hub repo (`hub_fixtures.OTHER_FAMILIES`) with
`load_pruned_model`, in float32, and run with the family's stock processor (video families with a PIL stand-in for
the stock video processor, which needs torchvision). The codebook holds every third packed token of the very inputs,
so every image and every video loses tokens at threshold 0.99.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from hub_fixtures import OTHER_FAMILIES, build_stock_checkpoints, build_stock_processor, stock_class
from noise_images import clip, picture

from llava_codebook import RedundancyCodebook, UnsupportedModelError, load_pruned_model

FAMILY_NAMES = list(OTHER_FAMILIES)
VIDEO_FAMILIES = [name for name, spec in OTHER_FAMILIES.items() if spec.video_token is not None]
GREEDY = dict(max_new_tokens=5, do_sample=False)
PRUNE = dict(codebook_threshold=0.99)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return build_stock_checkpoints(tmp_path_factory.mktemp("other-families"), families=OTHER_FAMILIES)


@pytest.fixture(scope="module")
def families(checkpoints):
    """family -> (pruning model, stock model, stock processor), float32, from the Hub-shaped checkpoint."""
    out = {}
    for name, directory in checkpoints.items():
        model = load_pruned_model(directory, dtype=torch.float32, pruning_strategy="none").eval()
        stock = stock_class(name).from_pretrained(directory, dtype=torch.float32).eval()
        out[name] = (model, stock, build_stock_processor(name))
    return out


def prompt(processor, *kinds: str, text: str = "what is this ?") -> str:
    content = [{"type": kind} for kind in kinds] + [{"type": "text", "text": text}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


# Per family, batches of two (left-padded by the processor): each has images, a video where the family takes them,
# and a sample with no visual input; one has several images in one prompt (OneVision: base views only).
def cases(name: str, processor) -> dict:
    if name == "llava-1.5-7b":
        return {
            "two_images_and_a_text_only_sample": dict(
                text=[prompt(processor, "image", "image"), prompt(processor)],
                images=[picture(90, 150, 1), picture(70, 70, 2)],
            ),
            "one_image_each": dict(
                text=[prompt(processor, "image"), prompt(processor, "image", text="where ?")],
                images=[picture(90, 150, 3), picture(130, 70, 4)],
            ),
        }
    return {
        "image_and_video_and_a_text_only_sample": dict(
            text=[prompt(processor, "image", "video"), prompt(processor)],
            images=[picture(90, 150, 1)],
            videos=[clip(3, 10)],
        ),
        "two_images_in_one_prompt_and_a_video": dict(
            text=[prompt(processor, "image", "image"), prompt(processor, "video", text="what happens ?")],
            images=[[picture(90, 150, 2), picture(130, 70, 3)]],
            videos=[clip(2, 20)],
        ),
    }


def encode(processor, case) -> dict:
    processor.tokenizer.padding_side = "left"
    return dict(processor(**case, padding=True, return_tensors="pt"))


def attach_codebook_from(model, inputs) -> None:
    """Every third packed token of each segment of `inputs` as the codebook: all segments lose tokens."""
    call = dict(inputs)
    rows = []
    with torch.no_grad():
        for modality in model.model.pruning_modalities:
            visual = model.model.encode_for_pruning(modality, call)
            if visual is not None:
                rows += [features[::3] for features in visual.packed]
    model.load_codebook(RedundancyCodebook(torch.cat(rows).detach().clone()))


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
    return stock.generate(**{**inputs, "attention_mask": placeholder_keep_mask(model, inputs, selection)}, **kwargs)


@pytest.mark.parametrize("name", FAMILY_NAMES)
@pytest.mark.parametrize("setting", ["threshold", "budget"])
def test_pruned_generate_matches_the_stock_class_with_dropped_placeholders_masked(families, name, setting):
    model, stock, processor = families[name]
    settings = PRUNE if setting == "threshold" else dict(pruning_mode="budget", keep_ratio=0.4)
    for case_name, case in cases(name, processor).items():
        inputs = encode(processor, case)
        assert not inputs["attention_mask"][:, 0].all(), "the batch is left-padded"
        attach_codebook_from(model, inputs)
        out = model.generate(**inputs, pruning_strategy="codebook", **settings, **GREEDY, return_dict_in_generate=True)
        selection = out.visual_token_selection
        assert (selection.num_kept < selection.num_total).all(), f"{case_name}: every segment must lose tokens"
        expected_modalities = {"image", "video"} if "videos" in case else {"image"}
        assert set(selection.modalities) == expected_modalities
        assert torch.equal(out.sequences, oracle_generate(stock, model, inputs, selection, **GREEDY)), case_name
        assert torch.equal(out.sequences[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])


@pytest.mark.parametrize("name", VIDEO_FAMILIES)
def test_pruned_beam_search_over_videos_matches_the_oracle(families, name):
    model, stock, processor = families[name]
    inputs = encode(processor, cases(name, processor)["image_and_video_and_a_text_only_sample"])
    attach_codebook_from(model, inputs)
    beams = dict(num_beams=3, num_return_sequences=2, **GREEDY)
    out = model.generate(**inputs, pruning_strategy="codebook", **PRUNE, **beams, return_dict_in_generate=True)
    assert out.sequences.shape[0] == 4
    assert torch.equal(out.sequences, oracle_generate(stock, model, inputs, out.visual_token_selection, **beams))


@pytest.mark.parametrize("name", FAMILY_NAMES)
@pytest.mark.parametrize("how", ["pruning_false", "budget_keep_all"])
def test_keep_all_is_bit_identical_to_the_stock_class_tokens_and_logits(families, name, how):
    model, stock, processor = families[name]
    inputs = encode(processor, next(iter(cases(name, processor).values())))
    attach_codebook_from(model, inputs)
    logits = dict(output_logits=True, return_dict_in_generate=True, **GREEDY)
    expected = stock.generate(**inputs, **logits)
    if how == "pruning_false":
        out = model.generate(**inputs, pruning=False, **logits)
        assert out.visual_token_selection is None
    else:
        # Pruning runs (and the kept features go through the hand-off) but keeps every token.
        out = model.generate(**inputs, pruning_strategy="codebook", pruning_mode="budget", keep_ratio=1.0, **logits)
        assert torch.equal(out.visual_token_selection.num_kept, out.visual_token_selection.num_total)
    assert torch.equal(out.sequences, expected.sequences)
    for got, want in zip(out.logits, expected.logits):
        assert torch.equal(got, want)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_forward_logits_at_kept_positions_match_the_masked_stock_forward(families, name):
    model, stock, processor = families[name]
    inputs = encode(processor, next(iter(cases(name, processor).values())))
    attach_codebook_from(model, inputs)
    out = model(**inputs, pruning_strategy="codebook", **PRUNE)
    mask = placeholder_keep_mask(model, inputs, out.visual_token_selection)
    with torch.no_grad():
        reference = stock(**{**inputs, "attention_mask": mask}, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    width = out.logits.shape[1]
    for row in range(mask.shape[0]):
        kept = mask[row].nonzero().squeeze(-1)
        torch.testing.assert_close(out.logits[row, width - kept.numel() :], reference[row, kept], atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------ the layout each family states
def test_llava_images_are_one_view_of_576_tokens_at_real_geometry_and_have_no_newline(families):
    model, _, processor = families["llava-1.5-7b"]
    inputs = encode(processor, cases("llava-1.5-7b", processor)["one_image_each"])
    visual = model.model.encode_for_pruning("image", dict(inputs))
    side = model.config.vision_config.image_size // model.config.vision_config.patch_size
    assert [f.shape[0] for f in visual.packed] == [side * side] * 2  # (336 / 14)^2 = 576 on the real checkpoint
    assert not any(n.any() for n in visual.newline) and all((c == 0).all() for c in visual.crop_ids)


@pytest.mark.parametrize("name", VIDEO_FAMILIES)
def test_a_video_is_its_pooled_frames_in_order_then_the_families_newline(families, name):
    model, _, processor = families[name]
    inputs = encode(processor, dict(text=[prompt(processor, "video")], videos=[clip(3, 5)]))
    visual = model.model.encode_for_pruning("video", dict(inputs))
    (features,), (newline,), (crop_ids,) = visual.packed, visual.newline, visual.crop_ids
    side = model.config.vision_config.image_size // model.config.vision_config.patch_size
    pooled = math.ceil(side / 2) ** 2 if name.startswith("llava-onevision") else (side // 2) ** 2
    has_newline = name.startswith("llava-onevision")  # OneVision ends a video with image_newline; NeXT-Video does not
    assert features.shape[0] == 3 * pooled + has_newline
    assert newline.nonzero().squeeze(-1).tolist() == ([3 * pooled] if has_newline else [])
    assert crop_ids[~newline].tolist() == [frame for frame in range(3) for _ in range(pooled)]
    if has_newline:
        assert torch.equal(features[-1], model.model.image_newline.float())
    # A per-frame map laid out by the family pools like the features: a constant frame stays that constant.
    values = [torch.arange(3.0)[:, None].expand(3, side * side)]
    (laid_out,) = visual.pack_crop_values(values)
    assert laid_out[~newline].tolist() == crop_ids[~newline].float().tolist()


def test_onevision_images_alone_are_anyres_max_9_and_in_a_multi_image_prompt_their_base_view(families):
    model, _, processor = families["llava-onevision-qwen2-7b-ov"]
    big = picture(420, 420, 7)  # the 6 x 6 crop grid: 30 x 30 tile tokens, shrunk bilinearly to 15 x 15
    alone = model.model.encode_for_pruning(
        "image", encode(processor, dict(text=[prompt(processor, "image")], images=[big]))
    )
    side = model.config.vision_config.image_size // model.config.vision_config.patch_size
    (features,), (newline,) = alone.packed, alone.newline
    assert features.shape[0] == side * side + 15 * 16 and int(newline.sum()) == 15
    several = dict(text=[prompt(processor, "image", "image")], images=[[big, picture(90, 150, 8)]])
    multi = model.model.encode_for_pruning("image", encode(processor, several))
    assert [f.shape[0] for f in multi.packed] == [side * side + 1] * 2
    assert all(n.nonzero().squeeze(-1).tolist() == [side * side] for n in multi.newline)


@pytest.mark.parametrize("name", VIDEO_FAMILIES)
def test_the_release_per_frame_video_rule_matches_an_independent_computation_on_pooled_frames(families, name):
    """The release pools each frame 2 x 2 (OneVision: bilinear, 27 -> 14 per side; NeXT-Video: average), then keeps a
    pooled token iff its best cosine to a codebook row is below the threshold; frames are concatenated."""
    model, _, processor = families[name]
    inputs = encode(
        processor,
        dict(text=[prompt(processor, "video"), prompt(processor, "video")], videos=[clip(3, 30), clip(3, 40)]),
    )
    config, base = model.config, model.model
    with torch.no_grad():
        frames = inputs["pixel_values_videos"].flatten(0, 1)
        hidden = base.vision_tower(frames, output_hidden_states=True).hidden_states[config.vision_feature_layer]
        if config.vision_feature_select_strategy == "default":
            hidden = hidden[:, 1:]
        side = config.vision_config.image_size // config.vision_config.patch_size
        if name.startswith("llava-onevision"):  # project, then bilinear 2 x 2 pooling
            grid = base.multi_modal_projector(hidden).unflatten(1, (side, side)).permute(0, 3, 1, 2)
            pooled = F.interpolate(grid, size=[math.ceil(side / 2)] * 2, mode="bilinear").flatten(2).transpose(1, 2)
        else:  # average-pool 2 x 2, then project
            grid = hidden.unflatten(1, (side, side)).permute(0, 3, 1, 2)
            pooled = base.multi_modal_projector(F.avg_pool2d(grid, 2).flatten(2).transpose(1, 2))
    per_video = pooled.flatten(0, 1).split(3 * pooled.shape[1])
    prototypes = torch.cat([v[::4] for v in per_video]) + 0.05 * torch.randn(
        sum(len(v[::4]) for v in per_video), pooled.shape[-1]
    )
    model.load_codebook(RedundancyCodebook(prototypes))
    scores = [F.cosine_similarity(v.double()[:, None], prototypes.double()[None], dim=-1).amax(-1) for v in per_video]
    ordered = torch.cat(scores).sort().values
    gap = (ordered[1:] - ordered[:-1]).argmax()
    threshold = float(ordered[gap] + ordered[gap + 1]) / 2  # in the widest gap: float rounding cannot flip a token
    selection = model(
        **inputs, pruning_strategy="codebook", codebook_threshold=threshold, min_visual_tokens=0
    ).visual_token_selection
    for kept, video_scores, features in zip(selection.kept_indices, scores, per_video):
        expected = (video_scores < threshold).nonzero().squeeze(-1).tolist()
        if name.startswith("llava-onevision"):
            expected.append(features.shape[0])  # the trailing newline, protected
        assert kept.tolist() == expected
    assert 0 < int(selection.num_kept.sum()) < int(selection.num_total.sum())


# ------------------------------------------------------------------ dispatch
def test_load_pruned_model_refuses_a_model_type_it_does_not_support(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "idefics3"}))
    with pytest.raises(
        UnsupportedModelError, match=r"model_type 'idefics3'.*llava_onevision \(LLaVA-OneVision\).*qwen3_vl"
    ):
        load_pruned_model(str(tmp_path))
