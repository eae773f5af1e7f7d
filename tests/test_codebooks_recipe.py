"""The builder reproduces the release's recipe around its formulas (issue 12).

Each rule is checked against an independent implementation written here from the release's code: its conversation
templates and `tokenizer_image_token`, its generate-then-skip-"▁A" loop, its fp16 [CLS] cosine with `== topk[-1]`
tie groups and its raster-index probes for towers without [CLS] (its DPC-KNN on fp16 tensors and its per-image
selection of tied groups are checked in `test_codebooks_dpcknn_fp16` and `test_codebooks_tied_groups`).
"""

import re
import types

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from codebooks_helpers import SEED_CODEBOOKS
from llava_codebook.codebooks.build import build_codebook
from llava_codebook.codebooks.data import pil_images
from llava_codebook.codebooks.presets import CONVERSATIONS, PRESETS, RELEASE_PROBE_RANKS, RELEASE_PROMPT
from llava_codebook.codebooks.probe import ProbeRunner, probe_images, probe_prompt, prompt_ids
from llava_codebook.codebooks.store import WorkDirMismatchError, tensor_digest
from llava_codebook.codebooks.tiny_pipeline import synthetic_images
from llava_codebook.tiny import build_tiny_model, build_tiny_processor

IMAGE = "<image>"
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
WORDS = (
    "A a cat What does this image show? You must provide single word that best describes the image. USER: ASSISTANT:"
)


def sentencepiece_tokenizer(bos="<s>", add_bos=True, specials=()) -> PreTrainedTokenizerFast:
    """A word-level stand-in for LLaMA's SentencePiece tokenizer: pieces carry the "▁" word-start marker (so "A" is
    "▁A"), and, like LLaMA's, it adds BOS to every text it encodes with special tokens."""
    special = ["<unk>", bos, "</s>", IMAGE, *specials]
    pieces = ["▁" + word for word in WORDS.split()] + ["▁"]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(special + pieces))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    if add_bos:
        backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, vocab[bos])])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos if add_bos else None, eos_token="</s>", unk_token="<unk>",
        pad_token="<unk>", extra_special_tokens={"image_token": IMAGE},
    )  # fmt: skip
    tokenizer.add_special_tokens({"additional_special_tokens": list(specials)})
    return tokenizer


def release_tokenizer_image_token(text: str, tokenizer, image_id: int) -> list[int]:
    """The release's `tokenizer_image_token`: encode each chunk between placeholders with the tokenizer's special
    tokens, keep the first chunk's BOS, drop it from the others."""
    chunks = [tokenizer(chunk).input_ids for chunk in text.split(IMAGE)]
    offset = 1 if chunks[0] and chunks[0][0] == tokenizer.bos_token_id else 0
    ids = [chunks[0][0]] if offset else []
    for position, chunk in enumerate(chunks):
        if position:
            ids.append(image_id)
        ids += chunk[offset:]
    return ids


def f16(value: float) -> float:
    return float(np.float16(np.float32(value)))


# ---------------------------------------------------------------------------------------------------- 1. prompt
def test_llava_v1_prompt_is_the_release_conversation_with_its_system_prompt_and_bos():
    tokenizer = sentencepiece_tokenizer()
    image_id = tokenizer.convert_tokens_to_ids(IMAGE)
    # conv_llava_v1, SeparatorStyle.TWO: system + sep, "USER: " + message + sep, then "ASSISTANT:" (open turn).
    system = (
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the human's questions."
    )
    expected_text = system + " " + "USER" + ": " + IMAGE + "\n" + RELEASE_PROMPT + " " + "ASSISTANT" + ":"
    prompt = probe_prompt(tokenizer, RELEASE_PROMPT, image_id, "llava_v1")
    assert prompt.text == expected_text
    assert prompt.token_ids == release_tokenizer_image_token(expected_text, tokenizer, image_id)
    assert prompt.bos_token_ids == [tokenizer.bos_token_id]
    assert PRESETS["llava-1.5"].conversation == "llava_v1"


LLAMA3_INSTRUCT_TEMPLATE = (  # Meta-Llama-3-8B-Instruct's chat template, which the release's llava_llama_3 applies
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def test_llama3_prompt_is_the_instruct_template_with_the_llava_system_prompt_and_two_bos():
    tokenizer = sentencepiece_tokenizer(bos="<|begin_of_text|>", specials=LLAMA3_SPECIALS[1:])
    image_id = tokenizer.convert_tokens_to_ids(IMAGE)
    tokenizer.chat_template = LLAMA3_INSTRUCT_TEMPLATE
    system = (
        "You are a helpful language and vision assistant. You are able to understand the visual content that the "
        "user provides, and assist the user with a variety of tasks using natural language."
    )
    messages = [{"role": "system", "content": system}, {"role": "user", "content": IMAGE + "\n" + RELEASE_PROMPT}]
    release_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert release_text.startswith("<|begin_of_text|><|start_header_id|>system")
    reference = release_tokenizer_image_token(release_text, tokenizer, image_id)

    tokenizer.chat_template = None  # the builder does not need the template: it renders the release's
    prompt = probe_prompt(tokenizer, RELEASE_PROMPT, image_id, "llava_llama_3")
    assert prompt.token_ids == reference
    assert prompt.bos_token_ids == [tokenizer.bos_token_id] * 2  # the template's and the tokenizer's
    assert "<|begin_of_text|>" + prompt.text == release_text
    assert PRESETS["llava-next-llama3"].conversation == "llava_llama_3"


def test_onevision_prompt_is_the_release_qwen_chatml_conversation_without_bos():
    tokenizer = sentencepiece_tokenizer(add_bos=False, specials=QWEN_SPECIALS)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE)
    # conv_qwen ("qwen_1_5"), SeparatorStyle.CHATML: system + sep + "\n", then role + "\n" + message + sep + "\n".
    expected_text = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{IMAGE}\n{RELEASE_PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    )
    prompt = probe_prompt(tokenizer, RELEASE_PROMPT, image_id, "qwen_1_5")
    assert prompt.text == expected_text and prompt.bos_token_ids == []
    assert prompt.token_ids == release_tokenizer_image_token(expected_text, tokenizer, image_id)
    assert PRESETS["llava-ov"].conversation == "qwen_1_5"


def test_the_checkpoint_template_stays_an_option():
    processor = build_tiny_processor()
    image_id = processor.tokenizer.convert_tokens_to_ids(IMAGE)
    ids = prompt_ids(processor, "what is this ?", image_id, "checkpoint")
    assert ids == processor.tokenizer(f"{IMAGE}\nwhat is this ?", add_special_tokens=False)["input_ids"]
    with pytest.raises(ValueError, match="conversation='vicuna' is unknown"):
        prompt_ids(processor, "what is this ?", image_id, "vicuna")
    with pytest.raises(ValueError, match="no BOS token"):
        prompt_ids(sentencepiece_tokenizer(add_bos=False), "x", 3, "llava_v1")


# ------------------------------------------------------------------------------------------- tiny stock models
def tiny_llava15(seed: int = 0):
    """A tiny stock LlavaForConditionalGeneration (CLIP with [CLS], LLaMA) and a processor with a "▁A" token."""
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = sentencepiece_tokenizer()
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56,
            patch_size=14,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )  # fmt: skip
    return model, processor


def tiny_onevision(seed: int = 0, side: int = 98):
    """A tiny stock LlavaOnevisionForConditionalGeneration (SigLIP: no [CLS]; 7x7 tokens) whose vocabulary holds
    the release's OneVision pad row 151643. Its processor is the image processor and tokenizer (the stock
    LlavaOnevisionProcessor needs torchvision for its video processor)."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration
    from transformers import LlavaOnevisionImageProcessorPil, Qwen2Config, SiglipVisionConfig

    tokenizer = sentencepiece_tokenizer(add_bos=False, specials=QWEN_SPECIALS)
    pinpoints = [[side, side], [side, 2 * side], [2 * side, side]]
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=side,
            patch_size=14,
        ),
        text_config=Qwen2Config(
            vocab_size=151_700, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE), vision_feature_layer=-1,
        vision_feature_select_strategy="full", image_grid_pinpoints=pinpoints,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": side, "width": side}, crop_size={"height": side, "width": side}, image_grid_pinpoints=pinpoints
    )
    return model, types.SimpleNamespace(image_processor=image_processor, tokenizer=tokenizer)


# ------------------------------------------------------------------------------------------------- 2. "A" step
def _full_embeds(model, ids, image_id, visual):
    embedded = model.get_input_embeddings()(torch.tensor(ids))
    at = ids.index(image_id)
    return torch.cat([embedded[:at], visual, embedded[at + 1 :]])


def test_the_a_step_reads_the_second_step_when_the_greedy_first_token_is_a():
    model, processor = tiny_llava15()
    tokenizer = processor.tokenizer
    a_id, image_id = tokenizer.convert_tokens_to_ids("▁A"), model.config.image_token_id
    visual = torch.randn(16, 1, 64, generator=torch.Generator().manual_seed(1))
    plain = ProbeRunner(model, processor, conversation="llava_v1", batch_size=5)
    ids = plain.prompt_token_ids
    with torch.no_grad():
        # Make "▁A" the greedy first token for about half of the inputs: its logit follows one hidden unit.
        language_model = model.model.language_model
        hidden = torch.stack(
            [language_model(inputs_embeds=_full_embeds(model, ids, image_id, v)[None]).last_hidden_state[0, -1]
             for v in visual]
        )  # fmt: skip
        unit = int((hidden > 0).float().mean(0).sub(0.5).abs().argmin())
        model.lm_head.weight.mul_(0.01)
        model.lm_head.weight[a_id] = 0.0
        model.lm_head.weight[a_id, unit] = 100.0

    def release(v):  # generate one step greedily; on "▁A", take the next step's logits
        embeds = _full_embeds(model, ids, image_id, v)
        with torch.no_grad():
            logits = model(inputs_embeds=embeds[None]).logits[0, -1].float()
            if logits.argmax() == a_id:
                step = model.get_input_embeddings()(torch.tensor([a_id]))
                logits = model(inputs_embeds=torch.cat([embeds, step])[None]).logits[0, -1].float()
        return logits, bool(model(inputs_embeds=embeds[None]).logits[0, -1].argmax() == a_id)

    reference = [release(v) for v in visual]
    skipped = torch.tensor([was_a for _, was_a in reference])
    assert 0 < int(skipped.sum()) < len(visual)  # both branches are exercised

    runner = ProbeRunner(model, processor, conversation="llava_v1", skip_first_token="▁A", batch_size=5)
    got = runner.first_token_logits(visual)
    expected = torch.stack([logits for logits, _ in reference])
    assert torch.allclose(got, expected, atol=1e-4)
    without = plain.first_token_logits(visual)
    assert torch.allclose(without[~skipped], got[~skipped]) and not torch.allclose(without[skipped], got[skipped])
    assert PRESETS["llava-1.5"].skip_first_token == "▁A" and runner.skip_token_id == a_id


def test_an_a_step_token_outside_the_vocabulary_is_refused():
    with pytest.raises(ValueError, match="'▁A' is not a token of this tokenizer"):
        ProbeRunner(*(build_tiny_model(0), build_tiny_processor()), skip_first_token="▁A")


# ------------------------------------------------------------------------------------------------ 3. pad row
def test_presets_carry_the_release_pad_rows():
    names = {"llava-v1.5-7b": "llava-1.5", "llama3-llava-next-8B": "llava-next-llama3"}
    names["llava-onevision-qwen2-7b-ov"] = "llava-ov"
    expected = {"llava-1.5": 0, "llava-next-llama3": 0, "llava-ov": 151643}
    assert {name: preset.pad_token_id for name, preset in PRESETS.items()} == expected
    folder = SEED_CODEBOOKS / "pad_embs"
    if not folder.is_dir():
        pytest.skip(f"{folder} is not present")
    for path in folder.glob("*.pt"):  # the release's files name the row they hold
        model_name, token_id = re.fullmatch(r"(.+)-pad_token_ids_(\d+)_word_token_embedding\.pt", path.name).groups()
        assert PRESETS[names[model_name]].pad_token_id == int(token_id), path.name


def test_the_preset_pad_row_wins_over_the_config_and_a_foreign_row_is_refused(tmp_path):
    model, processor = build_tiny_model(0), build_tiny_processor()
    model.config.text_config.pad_token_id = 7
    runner = ProbeRunner(model, processor, pad_token_id=PRESETS["llava-next-llama3"].pad_token_id)
    assert torch.equal(runner.pad_embedding, model.get_input_embeddings().weight[0])
    with pytest.raises(ValueError, match="pad_token_id=151643 is not a row of the input embeddings"):
        build_codebook(model, processor, pil_images(synthetic_images(1)), work_dir=tmp_path, preset="llava-ov")


# --------------------------------------------------------------------------------------- 4. fp16 rank and ties
def release_fp16_ranking(hidden: np.ndarray, ranks) -> tuple[list[float], dict[int, list[int]]]:
    """fp16 cosine of each patch to [CLS] (F.normalize then matmul, each result an fp16 tensor) and, per rank n,
    every patch whose cosine equals the n-th largest (the release's `cos == topk(cos, n).values[..., -1:]`)."""
    features = [[f16(v) for v in row] for row in hidden]
    units = []
    for row in features:
        norm = f16(sum(v * v for v in row) ** 0.5)
        units.append([f16(v / norm) for v in row])
    cls = units[0]
    cosine = [f16(sum(a * b for a, b in zip(unit, cls))) for unit in units[1:]]
    descending = sorted(cosine, reverse=True)
    groups = {n: [i for i, c in enumerate(cosine) if c == descending[n - 1]] for n in ranks}
    return cosine, groups


def test_fp16_ranking_and_tie_groups_match_the_release_rule():
    model, processor = build_tiny_model(0, crop=336), build_tiny_processor(crop=336)
    runner = ProbeRunner(model, processor, rank_dtype="float16", rank_ties="group")
    pixels = runner.pixel_values(synthetic_images(2, side=336))
    encoded = runner.encode_crops(pixels)
    groups = runner.probe_groups(encoded, runner.probe_indices(encoded.order))
    with torch.no_grad():
        hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-2].double().numpy()
    tied = 0
    for b in range(2):
        cosine, expected = release_fp16_ranking(hidden[b], runner.probe_ranks)
        assert encoded.similarity[b].tolist() == cosine
        assert [g.tolist() for g in groups[b]] == [expected[n] for n in runner.probe_ranks]
        tied += sum(len(g) > 1 for g in expected.values())
    assert tied > 0  # the textured image has fp16 ties among its probed ranks

    split = ProbeRunner(model, processor, rank_dtype="float16")
    assert all(len(g) == 1 for g in split.probe_groups(encoded, split.probe_indices(encoded.order))[1])


def test_group_ties_probe_tied_patches_together_and_store_each_as_a_row():
    model, processor = build_tiny_model(0, crop=336), build_tiny_processor(crop=336)
    runner = ProbeRunner(model, processor, rank_dtype="float16", rank_ties="group", batch_size=64)
    images = synthetic_images(2, side=336)[1:]  # a textured image: ties come from fp16 rounding
    (result,) = probe_images(runner, images, list(pil_images(images)))
    encoded = runner.encode_crops(runner.pixel_values(images))
    sizes = torch.bincount(result.token_probes, minlength=96)
    j = int((sizes > 1).nonzero()[0])  # a tied probe: its patches go to the language model together
    members = result.token_patch_indices[result.token_probes == j]
    logits = runner.first_token_logits(encoded.tokens[0, members][None])
    top50 = torch.softmax(logits[0].topk(50).values.double(), -1)
    assert result.p_max[j].item() == pytest.approx(top50.max().item(), rel=1e-4)
    assert result.tokens.shape[0] == int(sizes.sum()) > 96 and torch.equal(result.tokens[result.token_probes == j],
                                                                         encoded.tokens[0, members])  # fmt: skip
    # A group spanning ranks n and n+1 is probed at both: its rows appear twice, as in the released codebook.
    assert torch.unique(result.tokens, dim=0).shape[0] < result.tokens.shape[0]


# ------------------------------------------------------------------------------------------- 5. index ranking
def test_onevision_probes_raster_index_n_for_rank_n():
    model, processor = tiny_onevision()
    runner = ProbeRunner(model, processor, index_rank_start=PRESETS["llava-ov"].index_rank_start)
    assert not runner.has_cls and runner.ranks_by_index and runner.side == 7
    _, order = runner.encode(runner.pixel_values(synthetic_images(2)))
    indices = runner.probe_indices(order)
    expected = [n for n in RELEASE_PROBE_RANKS if n < 49]  # rank n -> patch_features[n:n+1], n < 49 tokens
    assert runner.probe_ranks == expected and indices.tolist() == [expected, expected]
    from_zero = ProbeRunner(model, processor)
    assert from_zero.probe_indices(order)[0].tolist() == [n - 1 for n in RELEASE_PROBE_RANKS if n <= 49]


# ------------------------------------------------------------------------------------------------ 6. base crop
def test_the_probed_view_of_an_anyres_image_is_the_whole_image_resized_to_the_tower():
    model, processor = build_tiny_model(0), build_tiny_processor()
    runner = ProbeRunner(model, processor)
    wide = synthetic_images(2, side=96)[1].resize((150, 60))  # not square: a crop or a tile would differ
    squashed = wide.resize((56, 56), Image.BICUBIC)  # what the release's process_anyres_image puts first
    probed = runner.pixel_values([wide])
    expected = processor.image_processor(images=[squashed], return_tensors="pt")["pixel_values"][:, 0]
    assert torch.allclose(probed, expected, atol=0.05)


# ------------------------------------------------------------------------------------ builds record the recipe
LOOSE = {"top1_prob_thres": 0.9, "jsd_thres": 1.0, "cluster_size_thres": 96, "prototype_cluster_nums": 4}
LOOSE |= {"min_unique_images": 0, "per_image_clusters": 4}


def _model_for(preset_name):
    if preset_name == "llava-1.5":
        return tiny_llava15()
    if preset_name == "llava-ov":
        return tiny_onevision()
    return build_tiny_model(0), build_tiny_processor()


@pytest.mark.parametrize("preset_name", sorted(PRESETS))
def test_a_build_with_each_preset_records_the_release_recipe(preset_name, tmp_path):
    model, processor = _model_for(preset_name)
    preset = PRESETS[preset_name]
    images = pil_images(synthetic_images(3))
    result = build_codebook(model, processor, images, work_dir=tmp_path, preset=preset_name, preset_overrides=LOOSE,
                            base_model=f"tiny/{preset_name}", progress=False)  # fmt: skip
    params = result.codebook.build_parameters
    tokenizer = getattr(processor, "tokenizer", processor)
    conversation = CONVERSATIONS[preset.conversation]
    assert params["conversation"] == preset.conversation
    assert params["template_text"] == conversation.render(RELEASE_PROMPT, IMAGE)
    assert params["bos_token_ids"] == [tokenizer.bos_token_id] * conversation.bos_count
    assert params["pad_token_id"] == preset.pad_token_id
    assert params["pad_embedding_sha256"] == tensor_digest(model.get_input_embeddings().weight[preset.pad_token_id])
    skip = preset.skip_first_token
    assert params["skip_first_token"] == skip
    assert params["skip_first_token_id"] == (tokenizer.convert_tokens_to_ids(skip) if skip else None)
    assert (params["rank_dtype"], params["rank_ties"], params["cluster_dtype"]) == ("float32", "split", "float64")
    assert params["group_selection"] == "release"
    by_index = preset_name == "llava-ov"
    assert params["ranked_by"] == ("index" if by_index else "cls")
    assert params["index_rank_start"] == (1 if by_index else None)


def test_release_precision_options_are_recorded_and_part_of_the_resume_check(tmp_path, monkeypatch):
    from llava_codebook.codebooks import build as build_module

    model, processor = build_tiny_model(0), build_tiny_processor()
    images = synthetic_images(4)
    release = {**LOOSE, "rank_dtype": "float16", "rank_ties": "group", "cluster_dtype": "float16"}
    first = build_codebook(model, processor, pil_images(images), work_dir=tmp_path, preset="llava-next-llama3",
                           preset_overrides=release, progress=False)  # fmt: skip
    params = first.codebook.build_parameters
    assert (params["rank_dtype"], params["rank_ties"], params["cluster_dtype"]) == ("float16", "group", "float16")

    monkeypatch.setattr(build_module, "probe_images", lambda *a, **k: pytest.fail("probed again"))
    wide = build_codebook(model, processor, pil_images(images), work_dir=tmp_path, preset="llava-next-llama3",
                          preset_overrides={**release, "cluster_dtype": "float64", "group_selection": "unique"},
                          progress=False)  # fmt: skip
    assert wide.summary.num_resumed == 4  # the clustering precision and group selection act on stored probes
    assert wide.codebook.build_parameters["group_selection"] == "unique"
    for change, named in (({"rank_ties": "split"}, "rank_ties"), ({"conversation": "checkpoint"}, "template_text")):
        with pytest.raises(WorkDirMismatchError, match=named):
            build_codebook(model, processor, pil_images(images), work_dir=tmp_path, preset="llava-next-llama3",
                           preset_overrides={**release, **change}, progress=False)  # fmt: skip
