"""The pruning-aware model against the stock LLaVA-NeXT model, which serves as the oracle."""

import pytest
import torch
import torch.nn.functional as F
from transformers import LlavaNextForConditionalGeneration, pipeline
from transformers.generation.utils import GenerateBeamDecoderOnlyOutput

from llava_codebook import CodebookError, RedundancyCodebook

GREEDY = dict(max_new_tokens=6, do_sample=False)


def stock_twin(model):
    """The stock transformers class with the same weights: the reference every test compares against."""
    stock = LlavaNextForConditionalGeneration(model.config)
    stock.load_state_dict(model.state_dict())
    stock.generation_config = model.generation_config
    return stock.eval()


def batch(processor, texts, images):
    return processor(images=images or None, text=texts, padding=True, return_tensors="pt")


def oracle_generate(stock, inputs, selection, model, position_mode="contiguous", **kwargs):
    """Stock generate on the full prompt with the dropped placeholders masked out of attention."""
    mask = inputs["attention_mask"].clone()
    placeholders = inputs["input_ids"] == model.config.image_token_id
    mask[placeholders] = torch.cat(selection.keep_masks()).long()
    extra = {}
    if position_mode == "original":
        full = inputs["attention_mask"]
        extra["position_ids"] = (full.cumsum(-1) - 1).masked_fill(full == 0, 0)
    return stock.generate(**{**inputs, "attention_mask": mask}, **extra, **kwargs)


CASES = {
    "batch_of_two_left_padded_different_grids": (
        ["<image>\nwhat does this image show?", "describe the <image> picture"],
        ["wide", "tall"],
    ),
    "two_images_in_one_prompt_and_a_sample_without_image": (
        ["<image> left <image> right ?", "what is the sky colour ?", "<image> where is the cat ?"],
        ["wide", "square", "tall"],
    ),
}
SETTINGS = {
    "threshold": dict(codebook_threshold=0.9),
    "budget_ratio": dict(pruning_mode="budget", keep_ratio=0.3),
    "budget_tokens_original_positions": dict(pruning_mode="budget", keep_tokens=5, position_mode="original"),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("setting", SETTINGS)
def test_pruned_generate_matches_stock_model_with_dropped_placeholders_masked(
    tiny_model, tiny_processor, images, case, setting
):
    texts, names = CASES[case]
    inputs = batch(tiny_processor, texts, [images[n] for n in names])
    out = tiny_model.generate(**inputs, **SETTINGS[setting], **GREEDY, return_dict_in_generate=True)
    selection = out.visual_token_selection
    assert (selection.num_kept < selection.num_total).all(), "the case must actually prune every image"
    expected = oracle_generate(
        stock_twin(tiny_model),
        inputs,
        selection,
        tiny_model,
        SETTINGS[setting].get("position_mode", "contiguous"),
        **GREEDY,
    )
    assert torch.equal(out.sequences, expected)
    # The caller's prompt is spliced back in front of the new tokens.
    assert torch.equal(out.sequences[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])


def test_pruned_beam_search_matches_the_oracle(tiny_model, tiny_processor, images):
    inputs = batch(tiny_processor, ["<image> what is this ?", "describe <image>"], [images["wide"], images["square"]])
    out = tiny_model.generate(**inputs, num_beams=3, num_return_sequences=2, return_dict_in_generate=True, **GREEDY)
    expected = oracle_generate(
        stock_twin(tiny_model),
        inputs,
        out.visual_token_selection,
        tiny_model,
        num_beams=3,
        num_return_sequences=2,
        **GREEDY,
    )
    assert out.sequences.shape[0] == 4
    assert torch.equal(out.sequences, expected)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_every_attention_backend_keeps_working(tiny_model, tiny_processor, images, attn):
    tiny_model.set_attn_implementation(attn)
    stock = stock_twin(tiny_model)
    stock.set_attn_implementation(attn)
    inputs = batch(tiny_processor, ["<image> what ?", "a <image> b c"], [images["tall"], images["wide"]])
    out = tiny_model.generate(**inputs, return_dict_in_generate=True, **GREEDY)
    assert torch.equal(out.sequences, oracle_generate(stock, inputs, out.visual_token_selection, tiny_model, **GREEDY))


def _generate_with_logits(model, inputs, **kwargs):
    return model.generate(**inputs, **GREEDY, output_logits=True, return_dict_in_generate=True, **kwargs)


@pytest.mark.parametrize("how", ["pruning_disabled", "pruning_false", "budget_keep_all"])
def test_keep_all_is_bit_identical_to_stock_tokens_and_logits(tiny_model, tiny_processor, images, how):
    inputs = batch(tiny_processor, ["<image> what ?", "describe it"], [images["wide"]])
    expected = _generate_with_logits(stock_twin(tiny_model), inputs)
    if how == "pruning_disabled":
        with tiny_model.pruning_disabled():
            out = _generate_with_logits(tiny_model, inputs)
        assert tiny_model.model._pruning_enabled, "the context manager restores pruning on exit"
    elif how == "pruning_false":
        out = _generate_with_logits(tiny_model, inputs, pruning=False)
    else:
        out = _generate_with_logits(tiny_model, inputs, pruning_mode="budget", keep_ratio=1.0)
        assert torch.equal(out.visual_token_selection.num_kept, out.visual_token_selection.num_total)
    assert torch.equal(out.sequences, expected.sequences)
    for got, want in zip(out.logits, expected.logits):
        assert torch.equal(got, want)


def test_pruning_disabled_restores_state_after_an_exception(tiny_model):
    with pytest.raises(RuntimeError):
        with tiny_model.pruning_disabled():
            raise RuntimeError("boom")
    assert tiny_model.model._pruning_enabled


def _independent_selection(stock, inputs, prototypes, threshold=None, keep_tokens=None):
    """The rule recomputed from scratch on the stock packed post-projector features (float64 cosine, own newline
    detection: a packed row equal to the `image_newline` parameter)."""
    with torch.no_grad():
        packed = stock.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"], return_dict=True)
    results = []
    for features in packed.pooler_output:
        newline = (features == stock.model.image_newline).all(-1)
        scores = F.cosine_similarity(features.double()[:, None], prototypes.double()[None], dim=-1).amax(-1)
        content = (~newline).nonzero().squeeze(-1)
        if threshold is not None:
            chosen = content[scores[content] < threshold]
        else:
            chosen = content[scores[content].argsort()[:keep_tokens]]
        results.append(sorted(chosen.tolist() + newline.nonzero().squeeze(-1).tolist()))
    return results


@pytest.mark.parametrize("mode", ["threshold", "budget"])
def test_kept_indices_equal_an_independent_computation_of_the_rule(tiny_model, tiny_processor, images, mode):
    inputs = batch(tiny_processor, ["<image> a", "<image> b", "<image> c"], list(images.values()))
    if mode == "threshold":
        # Pick a threshold in the middle of a gap between scores so float rounding cannot flip a token.
        scores = torch.cat(tiny_model(**inputs, codebook_threshold=0.9).visual_token_selection.scores).sort().values
        gap = (scores[1:] - scores[:-1]).argmax()
        threshold = float(scores[gap] + scores[gap + 1]) / 2
        settings, expected = dict(codebook_threshold=threshold, min_visual_tokens=0), dict(threshold=threshold)
    else:
        settings, expected = dict(pruning_mode="budget", keep_tokens=7), dict(keep_tokens=7)
    selection = tiny_model(**inputs, **settings).visual_token_selection
    want = _independent_selection(stock_twin(tiny_model), inputs, tiny_model.codebook.prototypes, **expected)
    assert [k.tolist() for k in selection.kept_indices] == want
    assert selection.num_kept.tolist() == [len(w) for w in want]


def test_minimum_keep_guard_holds_when_the_threshold_drops_everything(tiny_model, tiny_processor, images):
    inputs = batch(tiny_processor, ["<image> a", "<image> b"], [images["wide"], images["tall"]])
    for minimum in (0, 1, 4):
        selection = tiny_model(**inputs, codebook_threshold=-1.0, min_visual_tokens=minimum).visual_token_selection
        for kept, newline in zip(selection.kept_indices, selection.newline_mask):
            content_kept = (~newline[kept]).sum().item()
            assert content_kept == minimum
            assert newline[kept].sum() == newline.sum(), "newline tokens are always kept"


def test_newlines_can_be_pruned_when_not_protected(tiny_model, tiny_processor, images):
    inputs = batch(tiny_processor, ["<image> a"], [images["wide"]])
    selection = tiny_model(
        **inputs, codebook_threshold=-1.0, always_keep_newline=False, min_visual_tokens=0
    ).visual_token_selection
    assert selection.num_kept.tolist() == [0]


def test_raising_the_threshold_never_keeps_fewer_tokens_in_the_model(tiny_model, tiny_processor, images):
    inputs = batch(tiny_processor, ["<image> a", "<image> b"], [images["square"], images["tall"]])
    previous = None
    for threshold in (-1.0, 0.5, 0.8, 0.9, 0.95, 0.99, 1.0):
        kept = tiny_model(**inputs, codebook_threshold=threshold).visual_token_selection.num_kept
        if previous is not None:
            assert (kept >= previous).all()
        previous = kept


def test_per_call_threshold_override_changes_the_kept_count_without_touching_the_config(
    tiny_model, tiny_processor, images
):
    inputs = batch(tiny_processor, ["<image> a"], [images["square"]])
    low = tiny_model.generate(**inputs, codebook_threshold=0.5, return_dict_in_generate=True, **GREEDY)
    high = tiny_model.generate(**inputs, codebook_threshold=0.99, return_dict_in_generate=True, **GREEDY)
    assert low.visual_token_selection.num_kept[0] < high.visual_token_selection.num_kept[0]
    assert tiny_model.config.codebook_threshold == 0.9


def test_a_per_call_keep_ratio_wins_over_a_config_keep_tokens(tiny_model):
    """A share asked for in the call is that call's budget even where the config fixes a count; a count in the call
    still wins over a share, and without per-call budget the config's count holds."""
    tiny_model.config.keep_tokens = 5
    try:
        assert tiny_model.pruning_settings(pruning_mode="budget", keep_ratio=0.5).keep_tokens is None
        assert tiny_model.pruning_settings(pruning_mode="budget", keep_ratio=0.5, keep_tokens=7).keep_tokens == 7
        assert tiny_model.pruning_settings(pruning_mode="budget").keep_tokens == 5
    finally:
        tiny_model.config.keep_tokens = None


def test_forward_compacts_inputs_and_labels_together(tiny_model, tiny_processor, images):
    """Kept positions get the same logits as the stock model with dropped placeholders masked (and the same
    position ids); the loss is the cross-entropy over the compacted labels."""
    inputs = batch(
        tiny_processor, ["<image> what is the colour ?", "describe <image> the sky"], [images["wide"], images["tall"]]
    )
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == tiny_model.config.image_token_id, -100)
    labels = labels.masked_fill(inputs["attention_mask"] == 0, -100)
    out = tiny_model(**inputs, labels=labels)
    selection = out.visual_token_selection
    keep = torch.ones_like(inputs["input_ids"], dtype=torch.bool)
    keep[inputs["input_ids"] == tiny_model.config.image_token_id] = torch.cat(selection.keep_masks())
    mask = inputs["attention_mask"] * keep
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        reference = stock_twin(tiny_model)(**{**inputs, "attention_mask": mask}, position_ids=positions).logits
    width = out.logits.shape[1]
    for row in range(keep.shape[0]):
        kept_positions = (keep[row] & (inputs["attention_mask"][row] == 1)).nonzero().squeeze(-1)
        got = out.logits[row, width - kept_positions.numel() :]
        torch.testing.assert_close(got, reference[row, kept_positions], atol=1e-4, rtol=1e-4)
    compact_labels = torch.full((keep.shape[0], width), -100)
    for row in range(keep.shape[0]):
        kept_labels = labels[row][keep[row] & (inputs["attention_mask"][row] == 1)]  # padding is dropped too
        compact_labels[row, width - kept_labels.numel() :] = kept_labels
    shifted = F.cross_entropy(
        out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), compact_labels[:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(out.loss, shifted)


def test_pipeline_image_text_to_text_runs_the_pruned_model(tiny_model, tiny_processor, images, monkeypatch):
    calls = []
    original = tiny_model.model.select_segments
    monkeypatch.setattr(tiny_model.model, "select_segments", lambda *a, **k: calls.append(1) or original(*a, **k))
    pipe = pipeline("image-text-to-text", model=tiny_model, processor=tiny_processor)
    result = pipe(images=images["wide"], text="<image> what is this ?", max_new_tokens=4, do_sample=False)
    assert result[0]["generated_text"].startswith("<image> what is this ?")
    assert calls, "the pipeline went through the pruning path"


def test_pipeline_applies_per_call_overrides_and_records_what_was_kept(tiny_model, tiny_processor, images):
    pipe = pipeline("image-text-to-text", model=tiny_model, processor=tiny_processor)
    ask = dict(images=images["wide"], text="<image> what is this ?", max_new_tokens=3, do_sample=False)
    with tiny_model.record_selections() as selections:
        pipe(**ask)
        pipe(**ask, codebook_threshold=0.2)
        pipe(**ask, pruning_mode="budget", keep_tokens=3)
        pipe(**ask, pruning=False)
    assert len(selections) == 3, "the unpruned call records nothing"
    default, strict, budget = selections
    expected = tiny_model.generate(
        **batch(tiny_processor, [ask["text"]], [ask["images"]]), codebook_threshold=0.2, return_dict_in_generate=True
    ).visual_token_selection
    assert torch.equal(strict.kept_indices[0], expected.kept_indices[0])
    assert strict.num_kept[0] < default.num_kept[0]
    newlines = int(budget.newline_mask[0].sum())
    assert int(budget.num_kept[0]) == 3 + newlines
    with pytest.raises(ValueError, match="codebook_threshold"):
        pipe(**ask, codebook_threshold=float("nan"))


def test_recorded_selections_belong_to_their_own_thread(tiny_model, tiny_processor, images):
    import threading

    inputs = batch(tiny_processor, ["<image> a"], [images["square"]])
    other = threading.Thread(target=lambda: tiny_model.generate(**inputs, **GREEDY))
    with tiny_model.record_selections() as selections:
        other.start()
        other.join(timeout=60)
        assert selections == []
        tiny_model.generate(**inputs, **GREEDY)
    assert len(selections) == 1


def test_base_model_forward_prunes_and_reports_the_selection(tiny_model, tiny_processor, images):
    inputs = batch(tiny_processor, ["<image> a"], [images["wide"]])
    out = tiny_model.model(**inputs)
    selection = out.visual_token_selection
    dropped = int(selection.num_total.sum() - selection.num_kept.sum())
    assert dropped > 0
    assert out.last_hidden_state.shape[1] == inputs["input_ids"].shape[1] - dropped


# ---------------------------------------------------------------- bad input
def test_codebook_dimension_mismatch_is_rejected(tiny_model):
    with pytest.raises(CodebookError, match="dimension 32 but the language model's hidden size is 64"):
        tiny_model.load_codebook(RedundancyCodebook(torch.randn(4, 32)))


@pytest.mark.parametrize(
    "override, message",
    [
        (dict(codebook_threshold=3.0), r"outside \[-1.0, 1.0\]"),
        (dict(keep_ratio=0.0), r"outside \(0.0, 1.0\]"),
        (dict(pruning_strategy="magic"), "pruning_strategy='magic' is unknown"),
        (dict(pruning_mode="random"), "pruning_mode='random' is unknown"),
    ],
)
def test_bad_per_call_overrides_raise_clear_errors(tiny_model, tiny_processor, images, override, message):
    inputs = batch(tiny_processor, ["<image> a"], [images["wide"]])
    with pytest.raises(ValueError, match=message):
        tiny_model.generate(**inputs, **override, **GREEDY)


def test_codebook_reference_cannot_change_per_call_and_says_how_to_switch(tiny_model, tiny_processor, images):
    inputs = batch(tiny_processor, ["<image> a"], [images["wide"]])
    with pytest.raises(ValueError, match=r"\['codebook_repo'\] cannot change per call.*load_codebook"):
        tiny_model.generate(**inputs, codebook_repo="org/other", **GREEDY)


def test_image_count_that_does_not_match_the_placeholders_is_rejected(tiny_model, tiny_processor, images):
    inputs = batch(tiny_processor, ["<image> a"], [images["wide"]])
    extra = torch.full((1, 3), tiny_model.config.image_token_id)
    inputs["input_ids"] = torch.cat([inputs["input_ids"], extra], dim=1)
    inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(extra)], dim=1)
    with pytest.raises(ValueError, match=r"holds \d+ image placeholder tokens but the 1 image\(s\) give \d+"):
        tiny_model.generate(**inputs, **GREEDY)
    with pytest.raises(ValueError, match="number of images"):
        tiny_processor(images=[images["wide"], images["tall"]], text=["<image> only one"], return_tensors="pt")


def test_a_model_without_codebook_says_how_to_configure_one(tiny_processor, images):
    from llava_codebook.tiny import build_tiny_model

    model = build_tiny_model()
    inputs = batch(tiny_processor, ["<image> a"], [images["wide"]])
    with pytest.raises(ValueError, match="No codebook is configured: set `codebook_repo`"):
        model.generate(**inputs, **GREEDY)
    assert model.generate(**inputs, pruning=False, **GREEDY).shape[1] == inputs["input_ids"].shape[1] + 6


def test_static_cache_generation_matches_the_oracle(tiny_model, tiny_processor, images):
    inputs = batch(tiny_processor, ["<image> what ?", "the <image> sky"], [images["wide"], images["square"]])
    out = tiny_model.generate(**inputs, cache_implementation="static", return_dict_in_generate=True, **GREEDY)
    expected = oracle_generate(stock_twin(tiny_model), inputs, out.visual_token_selection, tiny_model, **GREEDY)
    assert torch.equal(out.sequences, expected)


def test_inputs_embeds_are_pruned_like_input_ids_finding_placeholders_as_stock_does(tiny_model, tiny_processor, images):
    inputs = batch(tiny_processor, ["<image> a", "the <image> sky ?"], [images["wide"], images["tall"]])
    embeds = tiny_model.get_input_embeddings()(inputs["input_ids"])
    with torch.no_grad():
        by_ids = tiny_model(**inputs)
        by_embeds = tiny_model(**{k: v for k, v in inputs.items() if k != "input_ids"}, inputs_embeds=embeds)
    assert (by_ids.visual_token_selection.num_kept < by_ids.visual_token_selection.num_total).all()
    for a, b in zip(by_ids.visual_token_selection.kept_indices, by_embeds.visual_token_selection.kept_indices):
        assert torch.equal(a, b)
    assert torch.allclose(by_ids.logits, by_embeds.logits, atol=1e-5)
    # generate from embeddings returns only the new tokens, as the stock model does; they match the input_ids run.
    out_ids = tiny_model.generate(**inputs, **GREEDY)
    out_embeds = tiny_model.generate(
        inputs_embeds=embeds, **{k: v for k, v in inputs.items() if k != "input_ids"}, **GREEDY
    )
    assert torch.equal(out_ids[:, inputs["input_ids"].shape[1] :], out_embeds)


def test_pixel_values_without_image_sizes_get_a_clear_error(tiny_model, tiny_processor, images):
    inputs = batch(tiny_processor, ["<image> a"], [images["wide"]])
    del inputs["image_sizes"]
    with pytest.raises(ValueError, match="without `image_sizes`.*processor returns"):
        tiny_model(**inputs)
    with pytest.raises(ValueError, match="without `image_sizes`"):
        tiny_model.generate(**inputs, **GREEDY)


def test_generate_output_always_carries_visual_token_selection(tiny_model, tiny_processor, images):
    text_only = batch(tiny_processor, ["what is the sky colour ?"], None)
    assert tiny_model.generate(**text_only, return_dict_in_generate=True, **GREEDY).visual_token_selection is None
    inputs = batch(tiny_processor, ["<image> a"], [images["wide"]])
    with tiny_model.pruning_disabled():
        assert tiny_model.generate(**inputs, return_dict_in_generate=True, **GREEDY).visual_token_selection is None
    beams = tiny_model.generate(**inputs, num_beams=2, pruning=False, return_dict_in_generate=True, **GREEDY)
    assert beams.visual_token_selection is None and isinstance(beams, GenerateBeamDecoderOnlyOutput)
    assert tiny_model.generate(**inputs, return_dict_in_generate=True, **GREEDY).visual_token_selection is not None


def test_pruning_disabled_in_one_thread_does_not_disable_it_in_another(tiny_model, tiny_processor, images):
    import threading

    inputs = batch(tiny_processor, ["<image> a"], [images["square"]])
    inside, release, result = threading.Event(), threading.Event(), {}

    def stock_request():
        with tiny_model.pruning_disabled():
            inside.set()
            release.wait(timeout=60)

    worker = threading.Thread(target=stock_request)
    worker.start()
    inside.wait(timeout=60)
    try:
        result["selection"] = tiny_model.generate(
            **inputs, return_dict_in_generate=True, **GREEDY
        ).visual_token_selection
    finally:
        release.set()
        worker.join(timeout=60)
    assert result["selection"] is not None
    assert result["selection"].num_kept[0] < result["selection"].num_total[0]


def test_images_that_lose_every_token_still_generate_like_the_oracle_with_beams(tiny_model, tiny_processor, images):
    # Only reachable with the guards off; the prompts end in text, as chat prompts do.
    inputs = batch(
        tiny_processor, ["<image> a <image> b", "c <image> d"], [images["wide"], images["square"], images["tall"]]
    )
    settings = dict(codebook_threshold=-1.0, min_visual_tokens=0, always_keep_newline=False)
    out = tiny_model.generate(**inputs, **settings, num_beams=2, return_dict_in_generate=True, **GREEDY)
    assert out.visual_token_selection.num_kept.tolist() == [0, 0, 0]
    expected = oracle_generate(
        stock_twin(tiny_model), inputs, out.visual_token_selection, tiny_model, num_beams=2, **GREEDY
    )
    assert torch.equal(out.sequences, expected)


def test_pruning_true_turns_a_model_configured_without_pruning_on(tiny_model, tiny_processor, images):
    tiny_model.config.pruning_strategy = "none"
    inputs = batch(tiny_processor, ["<image> a"], [images["wide"]])
    assert tiny_model.generate(**inputs, return_dict_in_generate=True, **GREEDY).visual_token_selection is None
    selection = tiny_model.generate(**inputs, pruning=True, return_dict_in_generate=True, **GREEDY)
    assert selection.visual_token_selection.strategy == "codebook"


def test_crop_ids_and_packed_crop_values_follow_the_processor_geometry(tiny_model, tiny_processor, images):
    # The processor's geometry is an independent model of the stock packing (pure numpy, tested against pixels).
    sizes = torch.tensor([[im.height, im.width] for im in images.values()])
    geometries = tiny_processor.token_geometry(sizes.tolist())
    side = tiny_model.config.vision_config.image_size // tiny_model.config.vision_config.patch_size
    for ids, geometry in zip(tiny_model.model.crop_ids(sizes), geometries):
        assert ids.tolist() == geometry.crop.tolist()
    # A value per (crop, row, col) comes back at the packed token that geometry places at that crop, row and col.
    values = [
        torch.arange(crops * side * side, dtype=torch.float32).reshape(crops, side * side)
        for crops in (int(g.crop.max()) + 1 for g in geometries)
    ]
    for packed, geometry in zip(tiny_model.model.pack_crop_values(values, sizes), geometries):
        assert torch.isnan(packed).numpy().tolist() == geometry.newline_mask.tolist()
        value = packed[~torch.isnan(packed)].long()
        crop, row, col = value // (side * side), value % (side * side) // side, value % side
        real = ~geometry.newline_mask
        assert crop.tolist() == geometry.crop[real].tolist()
        base = geometry.view[real] == 0
        assert row[base].tolist() == geometry.row[real][base].tolist()
        assert col[base].tolist() == geometry.col[real][base].tolist()
        # Tile rows/cols in the geometry count on the unpadded grid, which starts a fixed number of token rows and
        # columns into the padded one: the offset is the same for every tile token of the image.
        tile = torch.from_numpy(~base)
        row_offsets = (row[tile] - torch.from_numpy(geometry.row[real][~base])) % side
        col_offsets = (col[tile] - torch.from_numpy(geometry.col[real][~base])) % side
        assert row_offsets.unique().numel() <= 1 and col_offsets.unique().numel() <= 1
