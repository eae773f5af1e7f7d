"""Self-checks of the Hub-shaped fixtures in `hub_fixtures`: they must look and load like the llava-hf checkpoints."""

import json

import numpy as np
import pytest
import torch
from hub_fixtures import (
    FAMILIES,
    PATCH_SIZE,
    QUESTION,
    SHRINK,
    build_stock_checkpoint,
    legacy_key_prefixes,
)
from PIL import Image
from safetensors import safe_open

# The documented values of each Hub repository, written out again on purpose: checking the fixtures against
# `FAMILIES` alone would be circular. Sources are cited next to each value in `hub_fixtures.FAMILIES`.
HUB_VALUES = {
    "mistral-7b": {
        "repo": "llava-hf/llava-v1.6-mistral-7b-hf",
        "text_model_type": "mistral",
        "image_token_id": 32000,
        "vocab_size": 32064,
        "tokenizer_length": 32002,
        "bos": ("<s>", 1),
        "eos": ("</s>", 2),
        "pad": ("<pad>", 32001),
        "heads_per_kv_head": 4,
        "rope_theta": 1e6,
    },
    "vicuna-7b": {
        "repo": "llava-hf/llava-v1.6-vicuna-7b-hf",
        "text_model_type": "llama",
        "image_token_id": 32000,
        "vocab_size": 32064,
        "tokenizer_length": 32001,
        "bos": ("<s>", 1),
        "eos": ("</s>", 2),
        "pad": ("<unk>", 0),
        "heads_per_kv_head": 1,
        "rope_theta": 1e4,
    },
    "llama3-8b": {
        "repo": "llava-hf/llama3-llava-next-8b-hf",
        "text_model_type": "llama",
        "image_token_id": 128256,
        "vocab_size": 128320,
        "tokenizer_length": 128258,
        "bos": ("<|begin_of_text|>", 128000),
        "eos": ("<|eot_id|>", 128009),
        "pad": ("<pad>", 128257),
        "heads_per_kv_head": 4,
        "rope_theta": 5e5,
    },
    "yi-34b": {
        "repo": "llava-hf/llava-v1.6-34b-hf",
        "text_model_type": "llama",
        "image_token_id": 64000,
        "vocab_size": 64064,
        "tokenizer_length": 64001,
        "bos": ("<|startoftext|>", 1),
        "eos": ("<|im_end|>", 7),
        "pad": ("<unk>", 0),
        "heads_per_kv_head": 7,
        "rope_theta": 5e6,
    },
}
HUB_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]  # all four repos
# The chat-format pieces each family's rendered prompt must contain, in order (model cards' prompt formats).
PROMPT_PATTERNS = {
    "mistral-7b": ["[INST] ", "<image>\n", QUESTION, " [/INST]"],
    "vicuna-7b": ["USER: ", "<image>\n", QUESTION, " ASSISTANT:"],
    "llama3-8b": [
        "<|start_header_id|>user<|end_header_id|>\n\n",
        "<image>",
        QUESTION,
        "<|eot_id|>",
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ],
    "yi-34b": ["<|im_start|>user\n", "<image>\n", QUESTION, "<|im_end|>", "<|im_start|>assistant\n"],
}
FAMILY_NAMES = sorted(HUB_VALUES)

# How transformers 5 names, in the loaded model, each legacy checkpoint prefix (checked independently of its own
# conversion mapping, so that a change there shows up here).
LOADED_NAME_FOR_PREFIX = {
    "vision_tower.vision_model.": "model.vision_tower.",  # before "vision_tower.": the longer prefix wins
    "language_model.lm_head.": "lm_head.",
    "language_model.model.": "model.language_model.",
    "vision_tower.": "model.vision_tower.",
    "multi_modal_projector.": "model.multi_modal_projector.",
    "image_newline": "model.image_newline",
}


def _loaded_name(saved_key: str) -> str:
    prefix = next(prefix for prefix in LOADED_NAME_FOR_PREFIX if saved_key.startswith(prefix))
    return LOADED_NAME_FOR_PREFIX[prefix] + saved_key[len(prefix) :]


def _assert_loads_unchanged(directory):
    """The stock class loads `directory` with no missing/unexpected/mismatched key, every tensor as saved."""
    from transformers import LlavaNextForConditionalGeneration

    model, info = LlavaNextForConditionalGeneration.from_pretrained(directory, output_loading_info=True)
    assert {name: list(value) for name, value in info.items() if value} == {}
    saved = _saved_tensors(directory)
    state = model.state_dict()
    assert len(saved) == len(state)
    for key, tensor in saved.items():
        assert torch.equal(state[_loaded_name(key)], tensor), key


def _saved_tensors(directory) -> dict:
    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            tensors.update({key: handle.get_tensor(key) for key in handle.keys()})  # noqa: SIM118 (not iterable)
    return tensors


def _conversation():
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]


def _images():
    """Wide, tall and square images: each lands on a different AnyRes pinpoint and unpadding."""
    rng = np.random.default_rng(0)
    sizes = [(90, 150), (130, 70), (100, 100)]
    return [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for height, width in sizes]


@pytest.fixture(scope="module")
def stock_models(stock_checkpoints):
    from transformers import LlavaNextForConditionalGeneration

    return {
        family: LlavaNextForConditionalGeneration.from_pretrained(directory).eval()
        for family, directory in stock_checkpoints.items()
    }


def test_families_imitate_the_four_llava_next_hub_repos():
    assert {family: spec.hub_repo_id for family, spec in FAMILIES.items()} == {
        family: values["repo"] for family, values in HUB_VALUES.items()
    }


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_checkpoint_has_the_legacy_llava_hf_key_layout(stock_checkpoints, family):
    directory = stock_checkpoints[family]
    assert (directory / "model.safetensors").is_file()
    with safe_open(str(directory / "model.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
        embed = handle.get_slice("language_model.model.embed_tokens.weight")
        lm_head = handle.get_slice("language_model.lm_head.weight")
        embed_shape, lm_head_shape, dtype = embed.get_shape(), lm_head.get_shape(), embed.get_dtype()
    prefixes = legacy_key_prefixes()
    assert all(key.startswith(prefixes) for key in keys), sorted(k for k in keys if not k.startswith(prefixes))
    assert all(any(key.startswith(prefix) for key in keys) for prefix in prefixes)
    assert not any(key.startswith(("model.", "lm_head.")) for key in keys)
    assert {
        "image_newline",
        "multi_modal_projector.linear_1.weight",
        "multi_modal_projector.linear_2.bias",
        "vision_tower.vision_model.embeddings.patch_embedding.weight",
        "vision_tower.vision_model.post_layernorm.weight",
        "language_model.model.layers.1.self_attn.q_proj.weight",
        "language_model.model.norm.weight",
    } <= keys
    # Untied lm_head with the real (padded) vocabulary, in the real checkpoint dtype.
    assert embed_shape[0] == lm_head_shape[0] == HUB_VALUES[family]["vocab_size"]
    assert dtype == "F16"


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_stock_class_loads_every_saved_tensor_unchanged(stock_checkpoints, family):
    _assert_loads_unchanged(stock_checkpoints[family])


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_processor_loads_back_with_the_real_tokens_and_chat_template(stock_checkpoints, family):
    from transformers import AutoProcessor, LlavaNextImageProcessorPil, LlavaNextProcessor

    values, spec = HUB_VALUES[family], FAMILIES[family]
    processor = AutoProcessor.from_pretrained(stock_checkpoints[family])
    tokenizer = processor.tokenizer
    assert isinstance(processor, LlavaNextProcessor)
    assert isinstance(processor.image_processor, LlavaNextImageProcessorPil)
    assert len(tokenizer) == values["tokenizer_length"]
    assert tokenizer.padding_side == spec.padding_side
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == values["bos"]
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == values["eos"]
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == values["pad"]
    assert processor.image_token == "<image>"
    assert processor.image_token_id == tokenizer.convert_tokens_to_ids("<image>") == values["image_token_id"]
    for token, token_id in spec.chat_special_tokens.items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id, token

    prompt = processor.apply_chat_template(_conversation(), add_generation_prompt=True)
    assert prompt == spec.expected_prompt
    position = 0
    for piece in PROMPT_PATTERNS[family]:
        position = prompt.index(piece, position) + len(piece)

    input_ids = tokenizer(prompt).input_ids
    assert input_ids.count(values["image_token_id"]) == 1
    assert (input_ids[0] == values["bos"][1]) == spec.add_bos_token
    # Chat-format tokens come out whole, at their real ids.
    for token, token_id in [*spec.chat_special_tokens.items(), values["eos"]]:
        if token in prompt:
            assert token_id in input_ids, token


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_processor_image_tokens_match_the_features_the_model_packs(stock_checkpoints, stock_models, family):
    from transformers import AutoProcessor

    model = stock_models[family]
    processor = AutoProcessor.from_pretrained(stock_checkpoints[family])
    prompt = processor.apply_chat_template(_conversation(), add_generation_prompt=True)
    images = _images()
    inputs = processor(images=images, text=[prompt] * len(images), padding=True, return_tensors="pt")
    image_tokens = (inputs["input_ids"] == HUB_VALUES[family]["image_token_id"]).sum(dim=1).tolist()
    with torch.no_grad():
        packed = model.get_image_features(inputs["pixel_values"], inputs["image_sizes"], return_dict=True)
        # The stock forward raises when the prompt's image tokens and the packed features disagree.
        output = model(**inputs, logits_to_keep=1)
    assert image_tokens == [features.shape[0] for features in packed.pooler_output]
    assert len(set(image_tokens)) == len(images)  # three different AnyRes packings, not one size for all
    assert output.logits.shape == (len(images), 1, HUB_VALUES[family]["vocab_size"])
    # Left padding, as for batched generation: the shorter prompts start with padding.
    assert inputs["attention_mask"][:, -1].all() and not inputs["attention_mask"][:, 0].all()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_config_values_are_the_documented_hub_values(stock_checkpoints, stock_models, family):
    from transformers import AutoProcessor

    values = HUB_VALUES[family]
    model = stock_models[family]
    config = model.config
    text = config.text_config
    assert config.model_type == "llava_next"
    assert text.model_type == values["text_model_type"]
    assert config.image_token_id == values["image_token_id"]
    assert text.vocab_size == values["vocab_size"]
    assert config.vision_feature_layer == -2
    assert config.vision_feature_select_strategy == "default"
    assert config.tie_word_embeddings is False and text.tie_word_embeddings is False
    assert [[height * SHRINK, width * SHRINK] for height, width in config.image_grid_pinpoints] == HUB_PINPOINTS
    assert config.image_seq_length * SHRINK**2 == 576
    assert config.vision_config.patch_size == PATCH_SIZE
    assert config.vision_config.image_size * SHRINK == 336
    assert text.num_attention_heads // text.num_key_value_heads == values["heads_per_kv_head"]
    assert text.rope_parameters["rope_theta"] == values["rope_theta"]
    assert (text.bos_token_id, text.eos_token_id) == (values["bos"][1], values["eos"][1])
    assert (model.generation_config.bos_token_id, model.generation_config.eos_token_id) == (
        values["bos"][1],
        values["eos"][1],
    )
    assert model.dtype == torch.float16

    processor = AutoProcessor.from_pretrained(stock_checkpoints[family])
    image_processor = processor.image_processor
    assert processor.patch_size == PATCH_SIZE
    assert processor.num_additional_image_tokens == 1
    assert processor.vision_feature_select_strategy == "default"
    assert [[h * SHRINK, w * SHRINK] for h, w in image_processor.image_grid_pinpoints] == HUB_PINPOINTS
    assert image_processor.size["shortest_edge"] * SHRINK == 336
    assert list(image_processor.image_mean) == [0.48145466, 0.4578275, 0.40821073]
    assert list(image_processor.image_std) == [0.26862954, 0.26130258, 0.27577711]


def test_sharded_build_keeps_the_hub_layout_and_loads_back(tmp_path):
    directory = build_stock_checkpoint("mistral-7b", tmp_path / "sharded", max_shard_size="1MB")
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and not (directory / "model.safetensors").exists()
    assert set(index["weight_map"]) == set(_saved_tensors(directory))
    assert all(key.startswith(legacy_key_prefixes()) for key in index["weight_map"])
    _assert_loads_unchanged(directory)


def test_transformers5_layout_is_what_the_stock_save_writes_and_loads_back(tmp_path):
    directory = build_stock_checkpoint("llama3-8b", tmp_path / "t5", key_layout="transformers5")
    keys = set(_saved_tensors(directory))
    prefixes = legacy_key_prefixes("transformers5")
    assert all(key.startswith(prefixes) for key in keys)
    assert "vision_tower.embeddings.patch_embedding.weight" in keys
    assert not any(key.startswith("vision_tower.vision_model.") for key in keys)
    _assert_loads_unchanged(directory)
