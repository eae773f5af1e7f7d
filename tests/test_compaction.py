"""Batches get the saving: after pruning each row is its real tokens only, re-padded on the left to the longest row.

For every family (LLaVA-NeXT, LLaVA 1.5, LLaVA-OneVision with images and videos, LLaVA-NeXT-Video, and Qwen2-VL,
Qwen2.5-VL, Qwen3-VL with images and videos), loaded from a checkpoint shaped like its Hub repo, a batch mixes a
text-only row, a row with several images, videos where the family takes them, and rows that drop different amounts.
The language model's prefill width is read by a hook on the language model itself, and must equal
`max over rows (real length - dropped)`, computed here from the attention mask and the selection report; the generated
tokens must equal the stock oracle's (the stock class on the full prompt, the dropped placeholders masked out of
`attention_mask`; on Qwen-VL every token also keeps the 3-D M-RoPE position the stock model gives it in the full
prompt, passed as `position_ids`) for every row.
"""

import contextlib

import hub_fixtures
import pytest
import qwen_fixtures
import torch
import torch.nn.functional as F
from noise_images import picture
from PIL import Image

from llava_codebook import RedundancyCodebook, load_pruned_model
from llava_codebook.integrations.accounting import account_rows

LLAVA_NAMES = ["vicuna-7b", "llava-1.5-7b", "llava-onevision-qwen2-7b-ov", "llava-next-video-7b"]
QWEN_NAMES = ["qwen2-vl-2b", "qwen2.5-vl-7b", "qwen3-vl-2b"]  # one member of each Qwen-VL family
FAMILY_NAMES = LLAVA_NAMES + QWEN_NAMES
VIDEO_FAMILIES = ["llava-onevision-qwen2-7b-ov", "llava-next-video-7b", *QWEN_NAMES]
GREEDY = dict(max_new_tokens=4, do_sample=False)
PRUNE = dict(pruning_strategy="codebook", codebook_threshold=0.99)


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    """family -> (pruning model, stock model, stock processor), float32, from the Hub-shaped checkpoint."""
    root = tmp_path_factory.mktemp("compaction")
    out = {}
    for fixtures, names in ((hub_fixtures, LLAVA_NAMES), (qwen_fixtures, QWEN_NAMES)):
        for name, directory in fixtures.build_stock_checkpoints(root, families=names).items():
            model = load_pruned_model(directory, dtype=torch.float32, pruning_strategy="none").eval()
            stock = fixtures.stock_class(name).from_pretrained(directory, dtype=torch.float32).eval()
            out[name] = (model, stock, fixtures.build_stock_processor(name))
    return out


def clip(seed: int) -> list[Image.Image]:
    return [picture(60, 80, seed + i) for i in range(3)]


def clip_metadata(name: str) -> dict:
    """Qwen-VL times a video by its metadata (two frames a second here); the LLaVA families take none."""
    if name not in QWEN_NAMES:
        return {}
    return {"video_metadata": [{"total_num_frames": 3, "fps": 2.0, "frames_indices": [0, 1, 2]}] * 2}


def prompt(processor, *kinds: str, text: str = "what is this ?") -> str:
    content = [{"type": kind} for kind in kinds] + [{"type": "text", "text": text}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


def mixed_batch(name: str, processor, padding_side: str = "left") -> dict:
    """A text-only row between rows with one image, several images and (video families) videos; the images differ
    in size, so their rows drop different amounts."""
    if name in VIDEO_FAMILIES:
        case = dict(
            text=[
                prompt(processor, "video", "image"),
                prompt(processor),
                prompt(processor, "image", "image", text="which one ?"),
                prompt(processor, "video", text="what happens ?"),
            ],
            # Nested per prompt: OneVision lays a multi-image prompt's images out as base views only.
            images=[[picture(90, 150, 1)], [picture(130, 70, 2), picture(70, 70, 3)]],
            videos=[clip(10), clip(20)],
            **clip_metadata(name),
        )
    else:
        case = dict(
            text=[prompt(processor, "image", "image"), prompt(processor), prompt(processor, "image", text="where ?")],
            images=[picture(90, 150, 1), picture(130, 70, 2), picture(70, 70, 3)],
        )
    processor.tokenizer.padding_side = padding_side
    try:
        return dict(processor(**case, padding=True, return_tensors="pt"))
    finally:
        processor.tokenizer.padding_side = "left"


def attach_codebook_from(model, inputs) -> None:
    """Every third packed token of each segment of `inputs` as the codebook: every segment loses tokens, and segments
    of different sizes lose different amounts."""
    call, rows = dict(inputs), []
    with torch.no_grad():
        for modality in model.model.pruning_modalities:
            visual = model.model.encode_for_pruning(modality, call)
            if visual is not None:
                rows += [features[::3] for features in visual.packed]
    model.load_codebook(RedundancyCodebook(torch.cat(rows).detach().clone()))


@contextlib.contextmanager
def language_model_widths(model):
    """The sequence width of every language-model forward pass inside the block (the first one is the prefill)."""
    widths = []

    def record(module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        widths.append(int((embeds if embeds is not None else kwargs["input_ids"]).shape[1]))

    handle = model.model.language_model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        yield widths
    finally:
        handle.remove()


def placeholder_keep_mask(model, inputs, selection) -> torch.Tensor:
    """The attention mask with the dropped placeholders zeroed (the oracle's input). The stock model fills each
    modality's placeholders with its segments in flattened order, so each modality's masks go there in that order."""
    mask = inputs["attention_mask"].clone()
    keep = selection.keep_masks()
    for modality in ("image", "video"):
        own = [m for m, kind in zip(keep, selection.modalities) if kind == modality]
        if own:
            mask[inputs["input_ids"] == getattr(model.config, f"{modality}_token_id")] = torch.cat(own).long()
    return mask


def dropped_per_row(model, inputs, selection) -> torch.Tensor:
    """Placeholders the selection dropped, per row."""
    return (inputs["attention_mask"] - placeholder_keep_mask(model, inputs, selection)).sum(dim=1)


def sufficient_width(model, inputs, selection) -> int:
    return int((inputs["attention_mask"].sum(dim=1) - dropped_per_row(model, inputs, selection)).max())


def assert_the_batch_discriminates(model, inputs, selection) -> None:
    """Rows drop different amounts and one drops nothing, so keeping padding (the width of the row that dropped
    least, the whole padded width here) would be wider than the sufficient width."""
    dropped = dropped_per_row(model, inputs, selection)
    visual_rows = dropped[dropped > 0]
    assert len(set(visual_rows.tolist())) == len(visual_rows) >= 2, dropped
    assert (dropped == 0).any(), "a text-only row is part of the batch"
    assert sufficient_width(model, inputs, selection) < inputs["input_ids"].shape[1] - int(dropped.min())


def full_prompt_positions(name: str, stock, inputs) -> torch.Tensor | None:
    """The stock model's own positions of the unpruned prompt: Qwen-VL's `[3, B, S]` M-RoPE grid (`get_rope_index` on
    the full prompt), `None` for the LLaVA families (their oracle numbers the masked prompt itself)."""
    if name not in QWEN_NAMES:
        return None
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


def oracle_generate(stock, model, inputs, selection, name: str, **kwargs):
    positions = full_prompt_positions(name, stock, inputs)
    if positions is not None:
        kwargs["position_ids"] = positions
    return stock.generate(**{**inputs, "attention_mask": placeholder_keep_mask(model, inputs, selection)}, **kwargs)


@pytest.mark.parametrize("name", FAMILY_NAMES)
@pytest.mark.parametrize("search", ["greedy", "beams"])
def test_batched_prefill_is_as_wide_as_the_longest_pruned_row_and_every_row_matches_the_oracle(families, name, search):
    model, stock, processor = families[name]
    inputs = mixed_batch(name, processor)
    assert not inputs["attention_mask"][:, 0].all(), "the batch is left-padded"
    attach_codebook_from(model, inputs)
    kwargs = dict(GREEDY) if search == "greedy" else dict(num_beams=3, num_return_sequences=2, **GREEDY)
    with language_model_widths(model) as widths:
        out = model.generate(**inputs, **PRUNE, **kwargs, return_dict_in_generate=True)
    selection = out.visual_token_selection
    assert_the_batch_discriminates(model, inputs, selection)
    assert widths[0] == sufficient_width(model, inputs, selection)
    if name in VIDEO_FAMILIES:
        assert set(selection.modalities) == {"image", "video"}
    expected = oracle_generate(stock, model, inputs, selection, name, **kwargs)
    assert out.sequences.shape == expected.shape
    for row in range(expected.shape[0]):
        assert torch.equal(out.sequences[row], expected[row]), f"row {row}"


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_original_positions_survive_dropping_the_padding(families, name):
    """`position_mode="original"`: every kept token keeps its full-prompt position, counted from the row's first
    real token (not from the padding), as the stock model counts it (on Qwen-VL, where it is the only mode: its 3-D
    M-RoPE position)."""
    model, stock, processor = families[name]
    inputs = mixed_batch(name, processor)
    attach_codebook_from(model, inputs)
    with language_model_widths(model) as widths:
        out = model.generate(**inputs, **PRUNE, position_mode="original", **GREEDY, return_dict_in_generate=True)
    selection = out.visual_token_selection
    assert widths[0] == sufficient_width(model, inputs, selection)
    full = inputs["attention_mask"]
    positions = full_prompt_positions(name, stock, inputs)
    if positions is None:
        positions = (full.cumsum(-1) - 1).masked_fill(full == 0, 0)
    mask = placeholder_keep_mask(model, inputs, selection)
    expected = stock.generate(**{**inputs, "attention_mask": mask}, position_ids=positions, **GREEDY)
    assert torch.equal(out.sequences, expected)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_inputs_embeds_are_compacted_to_the_same_width_and_tokens(families, name):
    model, stock, processor = families[name]
    inputs = mixed_batch(name, processor)
    attach_codebook_from(model, inputs)
    with language_model_widths(model) as by_ids_widths:
        by_ids = model.generate(**inputs, **PRUNE, **GREEDY, return_dict_in_generate=True)
    embeds = model.get_input_embeddings()(inputs["input_ids"]).detach()
    rest = {key: value for key, value in inputs.items() if key != "input_ids"}
    with language_model_widths(model) as by_embeds_widths:
        by_embeds = model.generate(inputs_embeds=embeds, **rest, **PRUNE, **GREEDY, return_dict_in_generate=True)
    selection = by_ids.visual_token_selection
    assert by_embeds_widths[0] == by_ids_widths[0] == sufficient_width(model, inputs, selection)
    if name in QWEN_NAMES:
        # Without `input_ids` the stock Qwen-VL `generate` has no layout to derive M-RoPE positions from and numbers
        # the real tokens 0, 1, ... on every axis: the oracle is the stock model from the same embeddings, so.
        full = inputs["attention_mask"]
        numbered = (full.cumsum(-1) - 1).clamp(min=0)[None].expand(3, -1, -1)
        mask = placeholder_keep_mask(model, inputs, selection)
        expected = stock.generate(
            inputs_embeds=embeds, **{**rest, "attention_mask": mask}, position_ids=numbered, **GREEDY
        )
        assert torch.equal(by_embeds.sequences, expected)
    else:
        # From embeddings the stock `generate` returns the new tokens only.
        assert torch.equal(by_embeds.sequences, by_ids.sequences[:, inputs["input_ids"].shape[1] :])


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_a_right_padded_batch_gets_the_same_treatment(families, name):
    """Right padding (training-style inputs) is dropped too: generation gives the left-padded batch's oracle tokens,
    and the prompt handed back is the caller's own."""
    model, stock, processor = families[name]
    left, right = mixed_batch(name, processor), mixed_batch(name, processor, padding_side="right")
    assert not right["attention_mask"][:, -1].all() and right["attention_mask"][:, 0].all()
    attach_codebook_from(model, left)
    with language_model_widths(model) as widths:
        out = model.generate(**right, **PRUNE, **GREEDY, return_dict_in_generate=True)
    selection = out.visual_token_selection
    assert widths[0] == sufficient_width(model, right, selection)
    expected = oracle_generate(stock, model, left, selection, name, **GREEDY)
    width = right["input_ids"].shape[1]
    assert torch.equal(out.sequences[:, :width], right["input_ids"])
    assert torch.equal(out.sequences[:, width:], expected[:, width:])


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_training_style_forward_on_right_padding_compacts_logits_and_loss(families, name):
    """A right-padded batch with labels (padding and placeholders ignored): the logits of every real kept token are
    the stock model's with the dropped placeholders masked, at that row's positions; the loss is the next-token
    cross-entropy of each row's kept labels, rows left-padded to the longest."""
    model, stock, processor = families[name]
    inputs = mixed_batch(name, processor, padding_side="right")
    attach_codebook_from(model, inputs)
    ids, attention = inputs["input_ids"], inputs["attention_mask"]
    placeholders = (ids == model.config.image_token_id) | (ids == getattr(model.config, "video_token_id", -1))
    labels = ids.masked_fill(placeholders | (attention == 0), -100)
    with language_model_widths(model) as widths:
        out = model(**inputs, labels=labels, **PRUNE)
    selection = out.visual_token_selection
    mask = placeholder_keep_mask(model, inputs, selection)
    width = sufficient_width(model, inputs, selection)
    assert widths == [width] and out.logits.shape[1] == width
    with torch.no_grad():
        positions = full_prompt_positions(name, stock, inputs)
        if positions is None:  # LLaVA's default numbers the kept tokens 0, 1, ...
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
        reference = stock(**{**inputs, "attention_mask": mask}, position_ids=positions).logits
    expected_labels = torch.full((ids.shape[0], width), -100)
    for row in range(ids.shape[0]):
        kept = mask[row].nonzero().squeeze(-1)
        got = out.logits[row, width - kept.numel() :]
        torch.testing.assert_close(got, reference[row, kept], atol=1e-4, rtol=1e-4)
        expected_labels[row, width - kept.numel() :] = labels[row, kept]
    loss = F.cross_entropy(
        out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), expected_labels[:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(out.loss, loss)


def test_a_label_on_padding_is_refused_because_dropping_the_padding_would_lose_it(families):
    model, _, processor = families["vicuna-7b"]
    inputs = mixed_batch("vicuna-7b", processor, padding_side="right")
    attach_codebook_from(model, inputs)
    labels = inputs["input_ids"].clone()  # padding not masked out
    with pytest.raises(ValueError, match=r"padding position \(attention_mask 0\).*masked_fill\(attention_mask == 0"):
        model(**inputs, labels=labels, **PRUNE)


def test_a_mask_that_is_not_one_row_per_prompt_is_refused(families):
    model, _, processor = families["vicuna-7b"]
    inputs = mixed_batch("vicuna-7b", processor)
    attach_codebook_from(model, inputs)
    mask = inputs["attention_mask"][:, None, None, :].float()
    with pytest.raises(ValueError, match=r"2-D `attention_mask` of the prompt's shape"):
        model(**{**inputs, "attention_mask": mask}, **PRUNE)


# ------------------------------------------------------------------ the selection lists segments in prompt order
@pytest.mark.parametrize("name", VIDEO_FAMILIES)
def test_the_selection_lists_segments_in_prompt_order_and_accounting_agrees(families, name):
    """A batch of [video prompt, image prompt, image-then-video prompt] reports video, image, image, video: the order a
    reader meets them. Each segment's size is that of its own placeholders, and the lmms-eval accounting attributes
    every row's kept tokens to it."""
    model, _, processor = families[name]
    case = dict(
        text=[
            prompt(processor, "video", text="what happens ?"),
            prompt(processor, "image"),
            prompt(processor, "image", "video"),
        ],
        images=[[picture(90, 150, 1)], [picture(130, 70, 2)]],
        videos=[clip(10), clip(20)],
    )
    processor.tokenizer.padding_side = "left"
    inputs = dict(processor(**case, padding=True, return_tensors="pt"))
    attach_codebook_from(model, inputs)
    with language_model_widths(model) as widths:
        out = model.generate(**inputs, **PRUNE, max_new_tokens=1, return_dict_in_generate=True)
    selection = out.visual_token_selection
    assert selection.modalities == ["video", "image", "image", "video"]
    ids = inputs["input_ids"]
    image, video = (ids == model.config.image_token_id), (ids == model.config.video_token_id)
    assert selection.num_total.tolist() == [
        int(video[0].sum()),
        int(image[1].sum()),
        int(image[2].sum()),
        int(video[2].sum()),
    ]
    kept = selection.num_kept.tolist()
    accounts = account_rows(model, ids, inputs["attention_mask"], selection)
    assert [a.visual_tokens_kept for a in accounts] == [kept[0], kept[1], kept[2] + kept[3]]
    assert max(a.prompt_tokens for a in accounts) == widths[0] == sufficient_width(model, inputs, selection)


def test_without_an_attention_mask_the_padding_is_found_from_the_pad_token_as_the_stock_generate_does(families):
    model, _, processor = families["vicuna-7b"]
    inputs = mixed_batch("vicuna-7b", processor)
    attach_codebook_from(model, inputs)
    with language_model_widths(model) as with_mask:
        expected = model.generate(**inputs, **PRUNE, **GREEDY, return_dict_in_generate=True)
    unmasked = {key: value for key, value in inputs.items() if key != "attention_mask"}
    with language_model_widths(model) as without_mask:
        out = model.generate(**unmasked, **PRUNE, **GREEDY, pad_token_id=processor.tokenizer.pad_token_id)
    assert without_mask[0] == with_mask[0] == sufficient_width(model, inputs, expected.visual_token_selection)
    assert torch.equal(out, expected.sequences)
