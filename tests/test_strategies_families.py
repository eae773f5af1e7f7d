"""The peer strategies on the other families: what each tower and layout allows, against the stock-class oracle.

LLaVA 1.5 (CLIP, one view per image) takes every strategy; LLaVA-OneVision's SigLIP tower has no [CLS] token, so the
[CLS]-attention rules refuse with the reason; pooled video frames carry no per-token tower signal, so those rules
refuse videos, and the rules that read the features alone prune images and videos alike.
"""

import copy

import pytest
import torch
from noise_images import picture
from test_families import (  # noqa: F401 (families, checkpoints: the fixtures)
    GREEDY,
    attach_codebook_from,
    cases,
    checkpoints,
    encode,
    families,
    oracle_generate,
    prompt,
)

from llava_codebook.strategies import STRATEGIES

NEEDS_TOWER = [name for name, s in STRATEGIES.items() if s.signals is not None]
FEATURES_ONLY = ["codebook_diverse", "divprune", "random", "uniform"]
BUDGET = dict(pruning_mode="budget", keep_tokens=3, codebook_threshold=0.99)


@pytest.mark.parametrize("strategy", ["cls_attention", "hired", *FEATURES_ONLY])
def test_llava_1_5_takes_every_pure_selection_strategy_and_matches_the_oracle(families, strategy):
    model, stock, processor = families["llava-1.5-7b"]
    for case_name, case in cases("llava-1.5-7b", processor).items():
        inputs = encode(processor, case)
        attach_codebook_from(model, inputs)
        out = model.generate(**inputs, pruning_strategy=strategy, **BUDGET, **GREEDY, return_dict_in_generate=True)
        selection = out.visual_token_selection
        assert selection.num_kept.tolist() == [3] * len(selection.num_kept) or strategy == "codebook_diverse"
        assert torch.equal(out.sequences, oracle_generate(stock, model, inputs, selection, **GREEDY)), case_name


def test_llava_1_5_cls_attention_keeps_the_top_tokens_of_the_eager_cls_row(families):
    model, _, processor = families["llava-1.5-7b"]
    inputs = encode(processor, cases("llava-1.5-7b", processor)["one_image_each"])
    selection = model(**inputs, pruning_strategy="cls_attention", **BUDGET).visual_token_selection
    eager = copy.deepcopy(model.model.vision_tower)  # its own config: the model's tower keeps sdpa
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        attention = eager(inputs["pixel_values"], output_attentions=True).attentions[-2]
    for i, kept in enumerate(selection.kept_indices):
        row = attention[i, :, 0, 1:].double().mean(dim=0).tolist()
        assert kept.tolist() == sorted(sorted(range(len(row)), key=lambda t: (-row[t], t))[:3])
    assert model.model.vision_tower.config._attn_implementation == "sdpa"


def test_llava_1_5_visionzip_hands_merged_features_over(families):
    model, _, processor = families["llava-1.5-7b"]
    inputs = encode(processor, cases("llava-1.5-7b", processor)["one_image_each"])
    settings = dict(BUDGET, keep_tokens=8, visionzip_dominant_ratio=0.5)
    selection = model(**inputs, pruning_strategy="visionzip", **settings).visual_token_selection
    assert selection.num_kept.tolist() == [8, 8]
    assert all(features.shape[0] == 8 for features in selection.merged_features)


@pytest.mark.parametrize("strategy", NEEDS_TOWER)
def test_onevision_refuses_cls_attention_rules_because_siglip_has_no_cls_token(families, strategy):
    model, _, processor = families["llava-onevision-qwen2-7b-ov"]
    inputs = encode(
        processor, cases("llava-onevision-qwen2-7b-ov", processor)["image_and_video_and_a_text_only_sample"]
    )
    with pytest.raises(ValueError, match=r"vision tower has no \[CLS\] token \(e.g. SigLIP\)"):
        model.generate(**inputs, pruning_strategy=strategy, **BUDGET, **GREEDY)


@pytest.mark.parametrize("name", ["llava-onevision-qwen2-7b-ov", "llava-next-video-7b"])
@pytest.mark.parametrize("strategy", FEATURES_ONLY)
def test_feature_strategies_prune_images_and_videos_and_match_the_oracle(families, name, strategy):
    model, stock, processor = families[name]
    inputs = encode(processor, cases(name, processor)["image_and_video_and_a_text_only_sample"])
    attach_codebook_from(model, inputs)
    out = model.generate(**inputs, pruning_strategy=strategy, **BUDGET, **GREEDY, return_dict_in_generate=True)
    selection = out.visual_token_selection
    assert set(selection.modalities) == {"image", "video"}
    assert (selection.num_kept < selection.num_total).all()
    assert torch.equal(out.sequences, oracle_generate(stock, model, inputs, selection, **GREEDY))


def test_next_video_takes_cls_attention_for_images_and_refuses_it_for_pooled_video_frames(families):
    model, stock, processor = families["llava-next-video-7b"]
    all_cases = cases("llava-next-video-7b", processor)
    with_video = encode(processor, all_cases["image_and_video_and_a_text_only_sample"])
    with pytest.raises(ValueError, match=r"'cls_attention' needs .* for each video's tokens.*not pooled video frames"):
        model.generate(**with_video, pruning_strategy="cls_attention", **BUDGET, **GREEDY)
    images_only = encode(
        processor, dict(text=[prompt(processor, "image"), prompt(processor)], images=[picture(90, 150, 1)])
    )
    out = model.generate(**images_only, pruning_strategy="hired", **BUDGET, **GREEDY, return_dict_in_generate=True)
    assert torch.equal(out.sequences, oracle_generate(stock, model, images_only, out.visual_token_selection, **GREEDY))


def test_each_family_offers_the_strategies_its_tower_and_layout_allow(families):
    everything = tuple(STRATEGIES)
    features_only = tuple(name for name in STRATEGIES if name not in NEEDS_TOWER)
    for name, (model, _, _) in families.items():
        video = "video" in model.model.pruning_modalities
        if name.startswith("llava-onevision"):  # SigLIP: no [CLS]; tile grids resized after the tower
            assert model.available_strategies("image") == features_only, name
        else:
            assert model.available_strategies("image") == everything, name
        if video:  # pooled frames: no per-token tower signal
            assert model.available_strategies("video") == features_only, name


def test_a_selection_rerun_from_one_encoding_equals_the_models_own_for_every_offered_strategy(families):
    """What the Space does: encode once with every offered strategy's tower signals, then select again under any of
    them. Each must keep (and merge) exactly what the model keeps when it encodes for that strategy alone."""
    for name, (model, _, processor) in families.items():
        image = picture(90, 150, 7)
        case = dict(text=[prompt(processor, "image")], images=[image])
        inputs = encode(processor, case)
        attach_codebook_from(model, inputs)
        call = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
        with torch.no_grad():
            segments = model.model.encode_for_strategies("image", dict(call)).segments()
        for strategy in model.available_strategies("image"):
            settings = dict(BUDGET, keep_tokens=6, pruning_strategy=strategy)
            with torch.no_grad():
                own = model(**inputs, **settings).visual_token_selection
                again = model.model.select_segments(segments, model.pruning_settings(**settings))
            if strategy == "none":
                assert own is None and again.num_kept.tolist() == again.num_total.tolist()
                continue
            assert [k.tolist() for k in again.kept_indices] == [k.tolist() for k in own.kept_indices], (name, strategy)
            for mine, theirs in zip(again.merged_features or [], own.merged_features or []):
                torch.testing.assert_close(mine, theirs)
