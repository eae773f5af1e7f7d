"""Test checkpoints built like the real llava-hf LLaVA-NeXT checkpoints on the Hub, shrunk only in size.

Each family imitates one Hub repository. What is REAL (taken from the repository's config, tokenizer, processor and
chat template files, or from transformers' conversion script that produced them; every value says where it was read):

- the checkpoint is written by the stock `transformers.LlavaNextForConditionalGeneration.save_pretrained`, whose
  safetensors keys have the legacy llava-hf layout (`language_model.model.*`, `language_model.lm_head.weight`,
  `multi_modal_projector.*`, `image_newline`, `vision_tower.*`). transformers 5.23 writes the CLIP tower as
  `vision_tower.embeddings.*` where the Hub files have `vision_tower.vision_model.embeddings.*`, so by default the
  vision keys are renamed to the Hub's names after the save (`key_layout="transformers5"` keeps the stock names);
  the stock class loads either;
- the tensors' dtype (float16, as the conversion script wrote them; transformers 5 loads a checkpoint in its own
  dtype by default);
- the text-model family (`MistralConfig` or `LlamaConfig`), the embedding-table size (`text_config.vocab_size`, padded
  to a multiple of 64 by the conversion script), the image token id, the bos/eos/pad/unk ids, the chat-format special
  tokens at their ids, `len(tokenizer)`, the tokenizer's padding side and whether it prepends a BOS token;
- `vision_feature_layer`, `vision_feature_select_strategy`, `num_additional_image_tokens`, `patch_size`, the CLIP
  normalisation mean/std, the pinpoint *shapes* (aspect ratios and grid sizes) and the chat template string;
- the GQA ratio (attention heads per key/value head), rope theta, max positions and sliding window of the text model.

What is SHRUNK, so that all four checkpoints build in about a second and forward passes are instant:

- hidden sizes and layer counts (text: 8 dims per head, 2 layers; CLIP vision: hidden 32, 2 layers);
- the vision crop: 56 px instead of 336 px (`patch_size` stays 14, so a crop is 4 x 4 patches instead of 24 x 24).
  Every pixel size scales by the same factor `SHRINK` (= 6): `image_grid_pinpoints`, the processor's `size` and
  `crop_size`, the vision `image_size`. `image_seq_length` is the base crop's patch count, hence 16 instead of 576;
- the tokenizer's *text* vocabulary: a word-level vocabulary holding the special tokens at their real ids, a few
  English words, and numbered placeholder entries in every other slot so that `len(tokenizer)` is the real length.
  Ordinary words therefore get made-up ids; only special-token ids are real.

The weights are random (seeded), so the models' outputs are noise; what the fixtures reproduce is the *structure* a real
checkpoint has on disk and the way the stock classes load and process it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REAL_CROP = 336  # llava-hf preprocessor_config.json: size.shortest_edge = crop_size = 336 (CLIP ViT-L/14-336)
FIXTURE_CROP = 56
SHRINK = REAL_CROP // FIXTURE_CROP
PATCH_SIZE = 14  # llava-hf config.json vision_config.patch_size and processor_config.json patch_size

# The five AnyRes resolutions (height, width) of every LLaVA-v1.6 checkpoint imitated here: config.json and
# preprocessor_config.json `image_grid_pinpoints` of all four llava-hf repos (the conversion script copies them from
# the image processor of openai/clip-vit-large-patch14-336, LlavaNextImageProcessor's default).
LLAVA_V16_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))

# CLIP normalisation: llava-hf preprocessor_config.json image_mean / image_std (= transformers OPENAI_CLIP_MEAN/STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Where the Hub checkpoints keep each part, as the llava-hf conversion names them (KEYS_TO_MODIFY_MAPPING in
# transformers' convert_llava_next_weights_to_hf.py: "model.vision_tower." is dropped from the original
# "model.vision_tower.vision_tower.vision_model.*", leaving "vision_tower.vision_model.*").
HUB_KEY_PREFIXES = (
    "language_model.model.",
    "language_model.lm_head.",
    "vision_tower.vision_model.",
    "multi_modal_projector.",
    "image_newline",
)
# What transformers 5.23's own `save_pretrained` writes: the same legacy names for the language model, projector and
# newline (it reverses its "llava_next" renaming on save), but the CLIP tower without "vision_model." (its
# CLIPVisionModel prefix change is not reversed), i.e. "vision_tower.embeddings.*". Both load in the stock class.
TRANSFORMERS5_KEY_PREFIXES = tuple(
    "vision_tower." if p == "vision_tower.vision_model." else p for p in HUB_KEY_PREFIXES
)
KEY_LAYOUTS = {"hub": HUB_KEY_PREFIXES, "transformers5": TRANSFORMERS5_KEY_PREFIXES}

# The conversation every family's `expected_prompt` renders (user turn: one image, then this text).
QUESTION = "What is shown in this image?"

# Ordinary words given made-up ids in every fixture tokenizer, so prompts used in tests tokenize without unknowns.
WORDS = (  # noqa: SIM905 (a sentence of words reads better than a 60-line list)
    "what is shown in this image ? describe the picture photo a an of and it you are helpful assistant user system "
    "answer questions question . , : ! / [ ] < > | inst s sys how many where colour color red green blue white black "
    "sky cat dog car tree yes no one word"
).split()
UNKNOWN_WORD = "<fixture-unknown-word>"  # WordLevel needs an unknown entry; Llama-3 has no unk token of its own


@dataclass(frozen=True)
class FamilySpec:
    """Everything that makes one family's checkpoint look like its Hub repository (see the module docstring)."""

    hub_repo_id: str
    text_model_type: str  # "mistral" or "llama": the text config class the Hub config.json names
    text_base_model: str  # text_config._name_or_path on the Hub
    vocab_size: int  # text_config.vocab_size: rows of the embedding and lm_head tables
    tokenizer_length: int  # len(tokenizer): base vocabulary plus the tokens the conversion added
    image_token_id: int
    bos_token: tuple[str, int] | None  # None: the tokenizer has no BOS token (Qwen2)
    eos_token: tuple[str, int]
    pad_token: tuple[str, int]
    unk_token: tuple[str, int] | None
    chat_special_tokens: dict  # chat-format tokens -> real id; value of `chat_tokens_are_special` says how added
    chat_tokens_are_special: bool
    fixed_tokens: dict  # further tokens at real ids that are plain vocabulary entries (byte pieces, reserved ...)
    add_bos_token: bool
    padding_side: str
    chat_template: str
    expected_prompt: str  # the chat template's rendering of [user: image + QUESTION] with the generation prompt
    attention_heads_per_kv_head: int  # num_attention_heads / num_key_value_heads of the real text model
    rope_theta: float
    max_position_embeddings: int
    rms_norm_eps: float
    text_config_pad_token_id: int | None  # text_config.pad_token_id on the Hub (None where the file has none)
    generation_ids: dict  # generation_config.json bos/eos/pad ids
    checkpoint_dtype: str  # dtype of the saved tensors (config.json torch_dtype); transformers 5 loads it by default
    sliding_window: int | None = None  # Mistral only
    image_grid_pinpoints: tuple = LLAVA_V16_PINPOINTS
    vision_feature_layer: int = -2
    vision_feature_select_strategy: str = "default"
    image_seq_length: int = (REAL_CROP // PATCH_SIZE) ** 2
    num_additional_image_tokens: int = 1
    tie_word_embeddings: bool = False
    # The stock class the checkpoint is written by (config.json "model_type"), and what differs between families.
    architecture: str = "llava_next"
    video_token: tuple[str, int] | None = None
    vision_model_type: str = "clip"  # "siglip" for LLaVA-OneVision
    real_crop: int = REAL_CROP
    fixture_crop: int = FIXTURE_CROP
    image_mean: tuple = CLIP_MEAN
    image_std: tuple = CLIP_STD
    rope_scaling: dict | None = None  # extra rope parameters (LLaVA-NeXT-Video: linear, factor 2.5)
    sliding_window_enabled: bool | None = None  # Qwen2's use_sliding_window

    @property
    def fixture_pinpoints(self) -> list[list[int]]:
        return [
            [height * self.fixture_crop // self.real_crop, width * self.fixture_crop // self.real_crop]
            for height, width in self.image_grid_pinpoints
        ]

    @property
    def fixture_image_seq_length(self) -> int:
        return (self.fixture_crop // PATCH_SIZE) ** 2


def _sentencepiece_byte_tokens() -> dict:
    # Llama/Mistral sentencepiece vocabularies hold the 256 byte-fallback pieces right after <unk>, <s>, </s>.
    return {f"<0x{byte:02X}>": 3 + byte for byte in range(256)}


def _llama3_reserved_tokens() -> dict:
    # Meta-Llama-3 numbers its unused special slots 128002-128005, 128008 and 128010-128255 in order.
    slots = [*range(128002, 128006), 128008, *range(128010, 128256)]
    return {f"<|reserved_special_token_{index}|>": token_id for index, token_id in enumerate(slots)}


FAMILIES: dict[str, FamilySpec] = {
    "mistral-7b": FamilySpec(
        hub_repo_id="llava-hf/llava-v1.6-mistral-7b-hf",
        # config.json text_config: architectures MistralForCausalLM, model_type "mistral", _name_or_path below.
        text_model_type="mistral",
        text_base_model="mistralai/Mistral-7B-Instruct-v0.2",
        # config.json text_config.vocab_size = 32064 (32000 + <image> + <pad>, padded to 64 by the conversion script).
        vocab_size=32064,
        # added_tokens.json {"<image>": 32000, "<pad>": 32001} on top of Mistral's 32000 pieces.
        tokenizer_length=32002,
        # config.json image_token_index; conversion script image_token_index = 32000 (liuhaotian/llava-v1.6-mistral-7b)
        image_token_id=32000,
        # tokenizer_config.json added_tokens_decoder / special_tokens_map.json: <s>=1, </s>=2, <unk>=0, <pad>=32001.
        bos_token=("<s>", 1),
        eos_token=("</s>", 2),
        pad_token=("<pad>", 32001),
        unk_token=("<unk>", 0),
        # Mistral-Instruct-v0.2 writes [INST]/[/INST] as plain text: no chat special tokens.
        chat_special_tokens={},
        chat_tokens_are_special=True,
        fixed_tokens=_sentencepiece_byte_tokens(),
        # LlamaTokenizer(Fast) prepends <s> (tokenizer_config.json add_bos_token true).
        add_bos_token=True,
        # tokenizer_config.json "padding_side": "left" (processor dump of llava-hf/llava-v1.6-mistral-7b-hf).
        padding_side="left",
        # chat_template.json of llava-hf/llava-v1.6-mistral-7b-hf after "support system msg" and PR #43 ("</s> " EOS).
        chat_template=(
            "{% for message in messages %}{% if message['role'] == 'system' %}{{ '<<SYS>>\n' + "
            "message['content'][0]['text'] + '\n<</SYS>>\n\n' }}{% elif message['role'] == 'user' %}{{ '[INST] ' }}"
            "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', "
            "'image') %}{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% for content in message['content'] "
            "| selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}{{' [/INST]' }}{% elif "
            "message['role'] == 'assistant' %}{{ ' ' + message['content'][0]['text'] + '</s> '}}{% else %}{{ "
            "raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
        ),
        # Model card / conversion script prompt: "[INST] <image>\nWhat is shown in this image? [/INST]".
        expected_prompt=f"[INST] <image>\n{QUESTION} [/INST]",
        # config.json text_config: num_key_value_heads 8 of 32 heads, rope_theta 1e6, max_position_embeddings 32768,
        # rms_norm_eps 1e-05, sliding_window null (Mistral-7B-Instruct-v0.2).
        attention_heads_per_kv_head=4,
        rope_theta=1_000_000.0,
        max_position_embeddings=32768,
        rms_norm_eps=1e-5,
        sliding_window=None,
        # config.json text_config has no pad_token_id: the pad id lives in the tokenizer (<pad> = 32001).
        text_config_pad_token_id=None,
        # generation_config.json: bos 1, eos 2; earlier revisions also had pad_token_id 32001 (the <pad> token).
        generation_ids={"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 32001},
        # Conversion script: torch.set_default_dtype(float16) and every converted tensor .to(float16).
        checkpoint_dtype="float16",
    ),
    "vicuna-7b": FamilySpec(
        hub_repo_id="llava-hf/llava-v1.6-vicuna-7b-hf",
        # config.json text_config: LlamaForCausalLM, _name_or_path lmsys/vicuna-7b-v1.5 (conversion script too).
        text_model_type="llama",
        text_base_model="lmsys/vicuna-7b-v1.5",
        # config.json text_config.vocab_size = 32064 (same conversion: 32000 + 2, padded to 64).
        vocab_size=32064,
        # added_tokens.json {"<image>": 32000}: the pad token is Vicuna's own <unk>, no <pad> was added.
        tokenizer_length=32001,
        image_token_id=32000,  # config.json image_token_index; conversion script image_token_index = 32000
        # special_tokens_map.json: bos <s>, eos </s>, unk <unk>, pad <unk> (id 0).
        bos_token=("<s>", 1),
        eos_token=("</s>", 2),
        pad_token=("<unk>", 0),
        unk_token=("<unk>", 0),
        chat_special_tokens={},  # "USER:" / "ASSISTANT:" are plain text
        chat_tokens_are_special=True,
        fixed_tokens=_sentencepiece_byte_tokens(),
        add_bos_token=True,  # LlamaTokenizer, add_bos_token true
        # UNCONFIRMED: the repo's tokenizer_config.json could not be read here. "left" follows llava-hf's practice
        # for its processors (llava-1.5 repos were switched to left, mistral-7b-hf has left) and the model docs'
        # advice for batched generation; vicuna-7b-v1.5's own tokenizer_config.json says "right".
        padding_side="left",
        # chat_template.json of llava-hf/llava-v1.6-vicuna-7b-hf at 30f8c4f ("incorporate `generation` tag", #5).
        chat_template=(
            "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
            "{% endif %}{# Render all images first #}{% for content in message['content'] | selectattr('type', "
            "'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != "
            "'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ "
            "content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', "
            "'equalto', 'text') %}{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif "
            "%}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
        ),
        # Model card / conversion script prompt: "... USER: <image>\nWhat is shown in this image? ASSISTANT:".
        expected_prompt=f"USER: <image>\n{QUESTION} ASSISTANT:",
        # vicuna-7b-v1.5 config.json: 32 heads, 32 key/value heads (no GQA), rope theta 10000 (Llama-2 default),
        # max_position_embeddings 4096, rms_norm_eps 1e-05, pad_token_id 0 (also in llava-hf text_config).
        attention_heads_per_kv_head=1,
        rope_theta=10_000.0,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        text_config_pad_token_id=0,
        # generation_config.json of llava-hf/llava-v1.6-vicuna-7b-hf: bos 1, eos 2, pad 0.
        generation_ids={"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0},
        checkpoint_dtype="float16",  # conversion script (same float16 conversion as mistral-7b)
    ),
    "llama3-8b": FamilySpec(
        hub_repo_id="llava-hf/llama3-llava-next-8b-hf",
        # config.json text_config: LlamaForCausalLM, _name_or_path meta-llama/Meta-Llama-3-8B-Instruct.
        text_model_type="llama",
        text_base_model="meta-llama/Meta-Llama-3-8B-Instruct",
        # config.json text_config.vocab_size = 128320 (128256 + <image> + <pad>, padded to 64).
        vocab_size=128320,
        # The conversion adds <image> (128256) and <pad> (128257) to Llama-3's 128256 entries.
        tokenizer_length=128258,
        # config.json image_token_index = 128256; conversion script (lmms-lab/llama3-llava-next-8b) the same.
        image_token_id=128256,
        # special_tokens_map.json: bos <|begin_of_text|>, eos <|eot_id|>, pad <pad>; Llama-3 has no unk token.
        bos_token=("<|begin_of_text|>", 128000),
        eos_token=("<|eot_id|>", 128009),
        pad_token=("<pad>", 128257),
        unk_token=None,
        # Meta-Llama-3 tokenizer_config.json added_tokens_decoder: all special.
        chat_special_tokens={
            "<|end_of_text|>": 128001,
            "<|start_header_id|>": 128006,
            "<|end_header_id|>": 128007,
        },
        chat_tokens_are_special=True,
        fixed_tokens=_llama3_reserved_tokens(),
        add_bos_token=True,  # Llama-3's tokenizer.json post-processor prepends <|begin_of_text|>
        # UNCONFIRMED: the repo's tokenizer_config.json could not be read here. The conversion PR (#31395) checked
        # batched generation with padding_side="left" and the docs advise it; Meta-Llama-3's own default is "right".
        padding_side="left",
        # chat_template.json of llava-hf/llama3-llava-next-8b-hf (2844b9a, "Create chat_template.json").
        chat_template=(
            "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'}}"
            "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', "
            "'image') %}{{ '<image>' }}{% endfor %}{# Render all text next #}{% for content in message['content'] | "
            "selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] + '<|eot_id|>' }}{% endfor %}"
            "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
            "{% endif %}"
        ),
        expected_prompt=(
            f"<|start_header_id|>user<|end_header_id|>\n\n<image>\n{QUESTION}<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
        ),
        # config.json text_config: num_key_value_heads 8 of 32 heads, rope_theta 500000.0,
        # max_position_embeddings 8192, rms_norm_eps 1e-05, bos 128000, eos 128009, no pad_token_id.
        attention_heads_per_kv_head=4,
        rope_theta=500_000.0,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        text_config_pad_token_id=None,
        # generation_config.json: bos 128000, eos 128009 (no pad; the tokenizer's <pad> is 128257).
        generation_ids={"bos_token_id": 128000, "eos_token_id": 128009, "pad_token_id": 128257},
        # UNCONFIRMED: the repo's top-level torch_dtype could not be read; the conversion script (PR #31395 version)
        # converts every tensor to float16 as for the other families.
        checkpoint_dtype="float16",
    ),
    "yi-34b": FamilySpec(
        hub_repo_id="llava-hf/llava-v1.6-34b-hf",
        # config.json text_config: LlamaForCausalLM (Yi uses the Llama architecture), NousResearch/Nous-Hermes-2-Yi-34B.
        text_model_type="llama",
        text_base_model="NousResearch/Nous-Hermes-2-Yi-34B",
        # config.json text_config.vocab_size = 64064 (conversion script: 64000 + 3, padded to 64).
        vocab_size=64064,
        # special_tokens_map.json lists <image> as the only addition and pads with <unk>, so 64000 + 1.
        # UNCONFIRMED: the repo's added_tokens.json could not be read here.
        tokenizer_length=64001,
        # config.json image_token_index = 64000; conversion script image_token_index = 64000 for llava-v1.6-34b.
        image_token_id=64000,
        # special_tokens_map.json: bos <|startoftext|>, eos <|im_end|>, pad <unk>, unk <unk>; Yi's ids
        # (Yi tokenizer_config.json added_tokens_decoder): <unk> 0, <|startoftext|> 1, <|endoftext|> 2,
        # <|im_start|> 6, <|im_end|> 7; text_config.eos_token_id 7 agrees.
        bos_token=("<|startoftext|>", 1),
        eos_token=("<|im_end|>", 7),
        pad_token=("<unk>", 0),
        unk_token=("<unk>", 0),
        chat_special_tokens={"<|endoftext|>": 2, "<|im_start|>": 6},
        # Yi's tokenizer_config.json marks <|im_start|>/<|im_end|> as added but not special.
        chat_tokens_are_special=False,
        fixed_tokens={},
        add_bos_token=False,  # Yi tokenizer_config.json add_bos_token false
        # UNCONFIRMED: the repo's tokenizer_config.json could not be read here; the conversion loads Yi's slow
        # LlamaTokenizer (use_fast=False), whose class default padding side is "left".
        padding_side="left",
        # UNCONFIRMED verbatim: the ChatML template llava-hf uses for its Yi-34B LLaVA-NeXT checkpoints
        # (transformers' convert_llava_next_video_weights_to_hf.py, `chat_yi`); the model card's prompt is
        # "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<image>\n...<|im_end|>
        # <|im_start|>assistant\n".
        chat_template=(
            "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}{# Render all images first #}"
            "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}"
            "{% endfor %}{# Render all text next #}{% for content in message['content'] | selectattr('type', "
            "'equalto', 'text') %}{{ content['text'] }}{% endfor %}{{'<|im_end|>' + '\n'}}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
        ),
        expected_prompt=f"<|im_start|>user\n<image>\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n",
        # config.json text_config: 56 heads, 8 key/value heads, rope_theta 5000000.0, max_position_embeddings 4096,
        # rms_norm_eps 1e-05, eos_token_id 7, pad_token_id 0.
        attention_heads_per_kv_head=7,
        rope_theta=5_000_000.0,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        text_config_pad_token_id=0,
        # UNCONFIRMED: llava-hf's generation_config.json could not be read; ids follow text_config (bos 1, eos 7,
        # pad 0).
        generation_ids={"bos_token_id": 1, "eos_token_id": 7, "pad_token_id": 0},
        checkpoint_dtype="float16",  # config.json "torch_dtype": "float16"
    ),
}

# LLaVA-OneVision's AnyRes grid: every (rows, columns) of 1..6 crops of 384 px (config.json and
# preprocessor_config.json `image_grid_pinpoints` of llava-hf/llava-onevision-qwen2-7b-ov-hf, 36 entries; the image
# processor's default too).
ONEVISION_PINPOINTS = tuple((384 * rows, 384 * cols) for rows in range(1, 7) for cols in range(1, 7))
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)  # preprocessor_config.json image_mean / image_std (SigLIP)

# The Vicuna chat template llava-hf ships with its Vicuna-based checkpoints, with a video entry for NeXT-Video.
_VICUNA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{# Render all images first #}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}{VIDEOS}{# Render all text next #}{% if message['role'] != "
    "'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ "
    "content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'text') %}{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif "
    "%}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
_VICUNA_VIDEOS = (
    "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>\n' }}{% endfor %}"
)

# Checkpoints of the other three families. Same conventions as FAMILIES (real ids, layout, template; sizes shrunk),
# kept apart because much of the suite runs over the four LLaVA-NeXT checkpoints above.
OTHER_FAMILIES: dict[str, FamilySpec] = {
    "llava-1.5-7b": FamilySpec(
        hub_repo_id="llava-hf/llava-1.5-7b-hf",
        architecture="llava",  # config.json model_type "llava", LlavaForConditionalGeneration
        # config.json text_config: LlamaForCausalLM, _name_or_path lmsys/vicuna-7b-v1.5, vocab_size 32064 (32000 +
        # <image> + <pad>, padded to 64 by convert_llava_weights_to_hf.py).
        text_model_type="llama",
        text_base_model="lmsys/vicuna-7b-v1.5",
        vocab_size=32064,
        tokenizer_length=32002,  # added_tokens.json {"<image>": 32000, "<pad>": 32001}
        image_token_id=32000,  # config.json image_token_index
        bos_token=("<s>", 1),
        eos_token=("</s>", 2),
        pad_token=("<pad>", 32001),  # config.json pad_token_id 32001; special_tokens_map.json pad "<pad>"
        unk_token=("<unk>", 0),
        chat_special_tokens={},
        chat_tokens_are_special=True,
        fixed_tokens=_sentencepiece_byte_tokens(),
        add_bos_token=True,
        padding_side="left",  # tokenizer_config.json "padding_side": "left" (llava-hf switched its 1.5 repos)
        # chat_template.json of llava-hf/llava-1.5-7b-hf: the Vicuna template of llava-v1.6-vicuna-7b-hf.
        chat_template=_VICUNA_TEMPLATE.replace("{VIDEOS}", ""),
        expected_prompt=f"USER: <image>\n{QUESTION} ASSISTANT:",  # model card prompt format
        # vicuna-7b-v1.5: 32 heads, 32 key/value heads, rope theta 10000, 4096 positions, rms_norm_eps 1e-05.
        attention_heads_per_kv_head=1,
        rope_theta=10_000.0,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        text_config_pad_token_id=None,
        # UNCONFIRMED: generation_config.json read as bos 1, eos 2, pad 32001 (the config's pad_token_id).
        generation_ids={"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 32001},
        checkpoint_dtype="float16",  # config.json "torch_dtype": "float16"
        image_grid_pinpoints=(),  # one 336 px view, no AnyRes
    ),
    "llava-onevision-qwen2-7b-ov": FamilySpec(
        hub_repo_id="llava-hf/llava-onevision-qwen2-7b-ov-hf",
        architecture="llava_onevision",
        # config.json text_config: Qwen2ForCausalLM, _name_or_path Qwen/Qwen2-7B-Instruct; vocab_size 152128
        # (convert_llava_onevision_weights_to_hf.py: Qwen2-7B's 152064 + <image> + <video>, padded to 64).
        text_model_type="qwen2",
        text_base_model="Qwen/Qwen2-7B-Instruct",
        vocab_size=152128,
        # Qwen2's 151643 entries + <|endoftext|> 151643, <|im_start|> 151644, <|im_end|> 151645, then the
        # conversion's <image> 151646 and <video> 151647 (config.json image_token_index / video_token_index).
        tokenizer_length=151648,
        image_token_id=151646,
        video_token=("<video>", 151647),
        bos_token=None,  # Qwen2 has no BOS token (tokenizer_config.json bos_token null)
        eos_token=("<|im_end|>", 151645),
        pad_token=("<|endoftext|>", 151643),
        unk_token=None,
        chat_special_tokens={"<|im_start|>": 151644},
        chat_tokens_are_special=True,
        fixed_tokens={},
        add_bos_token=False,
        # UNCONFIRMED: the repo's tokenizer_config.json could not be read here; llava-hf's processors pad left
        # for batched generation, as the model docs advise.
        padding_side="left",
        # chat_template.json of the llava-hf OneVision repos (as transformers' processor tests copy it).
        chat_template=(
            "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}{# Render all images first #}"
            "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}"
            "{% endfor %}{# Render all video then #}{% for content in message['content'] | selectattr('type', "
            "'equalto', 'video') %}{{ '<video>' }}{% endfor %}{# Render all text next #}{% if message['role'] != "
            "'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
            "{{ '\n' + content['text'] }}{% endfor %}{% else %}{% for content in message['content'] | "
            "selectattr('type', 'equalto', 'text') %}{% generation %}{{ '\n' + content['text'] }}{% endgeneration %}"
            "{% endfor %}{% endif %}{{'<|im_end|>'}}{% endfor %}{% if add_generation_prompt %}"
            "{{ '<|im_start|>assistant\n' }}{% endif %}"
        ),
        expected_prompt=f"<|im_start|>user <image>\n{QUESTION}<|im_end|><|im_start|>assistant\n",
        # Qwen2-7B-Instruct config.json: 28 heads, 4 key/value heads, rope_theta 1e6, 32768 positions,
        # rms_norm_eps 1e-06, sliding_window 131072 with use_sliding_window false.
        attention_heads_per_kv_head=7,
        rope_theta=1_000_000.0,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        sliding_window=131072,
        sliding_window_enabled=False,
        text_config_pad_token_id=None,
        # UNCONFIRMED: generation_config.json read as bos 151643, eos 151645, pad 151643.
        generation_ids={"bos_token_id": 151643, "eos_token_id": 151645, "pad_token_id": 151643},
        checkpoint_dtype="float16",  # config.json "torch_dtype": "float16"
        image_grid_pinpoints=ONEVISION_PINPOINTS,
        # SigLIP so400m-patch14-384 without its head: config.json vision_feature_layer -1, strategy "full" (SigLIP
        # has no CLS token); 384 px crops of 27 x 27 patches.
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_model_type="siglip",
        real_crop=384,
        # 70 px = 5 x 5 patches: an odd side like the real 27, so the 2 x 2 video pooling rounds up (27 -> 14).
        fixture_crop=70,
        image_mean=SIGLIP_MEAN,
        image_std=SIGLIP_STD,
        num_additional_image_tokens=0,
    ),
    "llava-next-video-7b": FamilySpec(
        hub_repo_id="llava-hf/LLaVA-NeXT-Video-7B-hf",
        architecture="llava_next_video",
        # config.json (as transformers 4.57 loads it): text_config LlamaForCausalLM, lmsys/vicuna-7b-v1.5,
        # vocab_size 32064, pad_token_id 0, rope_scaling linear factor 2.5; image_token_index 32001,
        # video_token_index 32000; spatial_pool_mode "average", spatial_pool_stride 2; dtype bfloat16.
        text_model_type="llama",
        text_base_model="lmsys/vicuna-7b-v1.5",
        vocab_size=32064,
        tokenizer_length=32002,  # <video> 32000, <image> 32001 on top of Vicuna's 32000
        image_token_id=32001,
        video_token=("<video>", 32000),
        bos_token=("<s>", 1),
        eos_token=("</s>", 2),
        pad_token=("<unk>", 0),
        unk_token=("<unk>", 0),
        chat_special_tokens={},
        chat_tokens_are_special=True,
        fixed_tokens=_sentencepiece_byte_tokens(),
        add_bos_token=True,
        padding_side="left",  # UNCONFIRMED, as for vicuna-7b above
        # chat_template.json: the Vicuna template with videos rendered after the images.
        chat_template=_VICUNA_TEMPLATE.replace("{VIDEOS}", _VICUNA_VIDEOS),
        expected_prompt=f"USER: <image>\n{QUESTION} ASSISTANT:",
        attention_heads_per_kv_head=1,
        rope_theta=10_000.0,
        rope_scaling={"rope_type": "linear", "factor": 2.5},
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        text_config_pad_token_id=0,
        generation_ids={"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0},
        checkpoint_dtype="bfloat16",
    ),
}
ALL_FAMILIES: dict[str, FamilySpec] = {**FAMILIES, **OTHER_FAMILIES}

TEXT_HEAD_DIM = 8
TEXT_LAYERS = 2
VISION_HIDDEN = 32
VISION_LAYERS = 2


def legacy_key_prefixes(layout: str = "hub") -> tuple[str, ...]:
    """Prefixes the keys of a LLaVA-NeXT checkpoint start with (each key with one of them; each prefix used).

    "hub": the llava-hf repositories (the default layout of `build_stock_checkpoint`); "transformers5": what the stock
    `save_pretrained` of transformers 5.23 writes (vision tower without "vision_model.").
    """
    try:
        return KEY_LAYOUTS[layout]
    except KeyError:
        raise ValueError(f"unknown key layout {layout!r}; expected one of {sorted(KEY_LAYOUTS)}") from None


def hub_key(key: str) -> str:
    """The name the Hub checkpoints give a key that transformers 5's `save_pretrained` writes."""
    if key.startswith("vision_tower.") and not key.startswith("vision_tower.vision_model."):
        return "vision_tower.vision_model." + key[len("vision_tower.") :]
    return key


def _rename_saved_keys_to_hub_layout(directory: Path) -> None:
    """Rewrite the stock-saved safetensors (and shard index) of `directory` with the Hub's key names."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
            tensors = {hub_key(key): handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not iterable)
        save_file(tensors, str(path), metadata=metadata)
    index_path = directory / "model.safetensors.index.json"
    if index_path.exists():
        index = json.loads(index_path.read_text())
        index["weight_map"] = {hub_key(key): shard for key, shard in index["weight_map"].items()}
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _spec(family: str) -> FamilySpec:
    try:
        return ALL_FAMILIES[family]
    except KeyError:
        raise ValueError(f"unknown family {family!r}; expected one of {sorted(ALL_FAMILIES)}") from None


def _vocabulary(spec: FamilySpec) -> dict:
    """token -> id for all `spec.tokenizer_length` ids: real special tokens, words, then placeholders in the gaps."""
    fixed = dict(spec.fixed_tokens)
    for token, token_id in (spec.bos_token or ("", -1), spec.eos_token, spec.pad_token, spec.unk_token or ("", -1)):
        if token_id >= 0:
            fixed[token] = token_id
    fixed.update(spec.chat_special_tokens)
    fixed["<image>"] = spec.image_token_id
    if spec.video_token is not None:
        fixed[spec.video_token[0]] = spec.video_token[1]
    taken = set(fixed.values())
    if len(taken) != len(fixed):
        raise ValueError(f"{spec.hub_repo_id}: two fixed tokens share an id")
    # Words and the unknown entry take the lowest free ids above the byte pieces: their ids are made up anyway.
    free_ids = (token_id for token_id in range(300, spec.tokenizer_length) if token_id not in taken)
    words = {word: next(free_ids) for word in dict.fromkeys([*WORDS, UNKNOWN_WORD]) if word not in fixed}
    vocabulary = {**fixed, **words}
    used = set(vocabulary.values())
    # Placeholders keep every id below len(tokenizer) occupied, as in the real vocabulary.
    vocabulary.update(
        {
            f"<fixture-placeholder-{token_id}>": token_id
            for token_id in range(spec.tokenizer_length)
            if token_id not in used
        }
    )
    return vocabulary


def build_stock_tokenizer(family: str):
    """A fast tokenizer with the family's special tokens at their real ids and `len(tokenizer)` of the real one."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    spec = _spec(family)
    backend = Tokenizer(models.WordLevel(vocab=_vocabulary(spec), unk_token=UNKNOWN_WORD))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.decoder = decoders.WordPiece(prefix="##")
    if spec.add_bos_token:
        bos, bos_id = spec.bos_token
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    special = {"eos_token": spec.eos_token[0], "pad_token": spec.pad_token[0]}
    if spec.bos_token is not None:
        special["bos_token"] = spec.bos_token[0]
    if spec.unk_token is not None:
        special["unk_token"] = spec.unk_token[0]
    extra_special = {"image_token": "<image>"}
    if spec.video_token is not None:
        extra_special["video_token"] = spec.video_token[0]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        **special,
        # `image_token` (`video_token`) is how the processors find "<image>" ("<video>") and its id on the tokenizer.
        extra_special_tokens=extra_special,
        padding_side=spec.padding_side,
        clean_up_tokenization_spaces=False,
    )
    # Chat-format tokens must match as whole tokens before the word-level split; they keep their vocabulary ids.
    tokenizer.add_tokens(
        [
            AddedToken(token, special=spec.chat_tokens_are_special, normalized=False)
            for token in spec.chat_special_tokens
        ],
        special_tokens=spec.chat_tokens_are_special,
    )
    tokenizer.chat_template = spec.chat_template
    return tokenizer


def _expose_video_processor_base() -> type:
    """transformers' video-processor base class, exposed where processors look it up.

    Every stock video processor needs torchvision, which does not import beside torch 2.13 CPU here, and without it
    transformers does not export `VideoProcessorMixin`, so no processor with a video processor (OneVision,
    NeXT-Video) can even be constructed. The class itself needs no torchvision: exposing it lets the stock processor
    run with `PilVideoProcessor` below. Only the tests do this; the product never constructs a video processor.
    """
    import transformers
    from transformers.video_processing_utils import VideoProcessorMixin

    if not hasattr(transformers, "VideoProcessorMixin"):
        transformers.VideoProcessorMixin = VideoProcessorMixin
    return VideoProcessorMixin


def pil_video_processor(size: int, mean, std):
    """A stand-in for the stock video processors (torchvision-only): every frame resized to `size` x `size` with
    PIL (bicubic), rescaled to [0, 1] and normalised, as `LlavaOnevisionVideoProcessor` (resize to 384 x 384) and
    `LlavaNextVideoVideoProcessor` (a square 336 px crop of square frames) do."""
    import numpy as np
    import torch
    from PIL import Image
    from transformers.feature_extraction_utils import BatchFeature

    base = _expose_video_processor_base()

    class PilVideoProcessor(base):
        model_input_names = ["pixel_values_videos"]

        def preprocess(self, videos, return_tensors=None, **kwargs):
            videos = [videos] if isinstance(videos, np.ndarray) and videos.ndim == 4 else list(videos)
            out = []
            for frames in videos:
                pixels = []
                for frame in frames:
                    image = frame if isinstance(frame, Image.Image) else Image.fromarray(np.asarray(frame))
                    array = np.asarray(image.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32)
                    pixels.append(((array / 255.0 - np.asarray(mean)) / np.asarray(std)).transpose(2, 0, 1))
                out.append(np.stack(pixels))
            return BatchFeature({"pixel_values_videos": torch.tensor(np.stack(out))}, tensor_type=return_tensors)

    return PilVideoProcessor()


def build_stock_processor(family: str):
    """The family's stock processor (`LlavaNextProcessor`, `LlavaProcessor`, `LlavaOnevisionProcessor`,
    `LlavaNextVideoProcessor`) with a PIL image processor, configured as the family's Hub processor. Video families
    get `pil_video_processor` as their video processor."""
    import transformers

    spec = _spec(family)
    crop = spec.fixture_crop
    tokenizer = build_stock_tokenizer(family)
    mean, std = list(spec.image_mean), list(spec.image_std)
    if spec.architecture == "llava":
        # preprocessor_config.json: CLIPImageProcessor, shortest edge 336, centre crop 336, bicubic, CLIP mean/std.
        image_processor = transformers.CLIPImageProcessorPil(
            size={"shortest_edge": crop},
            crop_size={"height": crop, "width": crop},
            do_center_crop=True,
            image_mean=mean,
            image_std=std,
            resample=3,
        )
        return transformers.LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=PATCH_SIZE,
            vision_feature_select_strategy=spec.vision_feature_select_strategy,
            num_additional_image_tokens=spec.num_additional_image_tokens,
            image_token="<image>",
            chat_template=spec.chat_template,
        )
    if spec.architecture == "llava_onevision":
        # preprocessor_config.json: 384 x 384 crops, bicubic, SigLIP mean/std, padding, the 36 pinpoints;
        # processor_config.json: num_image_tokens 729, vision_aspect_ratio "anyres_max_9".
        image_processor = transformers.LlavaOnevisionImageProcessorPil(
            size={"height": crop, "width": crop},
            image_grid_pinpoints=spec.fixture_pinpoints,
            image_mean=mean,
            image_std=std,
            resample=3,
            do_pad=True,
        )
        return transformers.LlavaOnevisionProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=pil_video_processor(crop, mean, std),
            num_image_tokens=spec.fixture_image_seq_length,
            vision_feature_select_strategy=spec.vision_feature_select_strategy,
            vision_aspect_ratio="anyres_max_9",
            chat_template=spec.chat_template,
        )
    image_processor = transformers.LlavaNextImageProcessorPil(
        size={"shortest_edge": crop},
        crop_size={"height": crop, "width": crop},
        image_grid_pinpoints=spec.fixture_pinpoints,
        image_mean=mean,
        image_std=std,
        resample=3,  # preprocessor_config.json "resample": 3 (bicubic)
        do_pad=True,
    )
    common = dict(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy=spec.vision_feature_select_strategy,
        # processor_config.json: the CLS token CLIP adds, dropped again by the "default" strategy
        num_additional_image_tokens=spec.num_additional_image_tokens,
        image_token="<image>",
        chat_template=spec.chat_template,
    )
    if spec.architecture == "llava_next_video":
        return transformers.LlavaNextVideoProcessor(
            video_processor=pil_video_processor(crop, mean, std), video_token="<video>", **common
        )
    return transformers.LlavaNextProcessor(**common)


def stock_config(family: str, text_hidden_size: int | None = None, vocab_size: int | None = None):
    """The family's stock config (`LlavaNextConfig`, `LlavaConfig`, ...) with its real structure and shrunk sizes.

    `text_hidden_size` replaces the shrunk text width (for codebooks, whose dimension is the real one) with one text
    layer and `vocab_size` the embedding table's row count; both only where a test needs them.
    """
    import transformers

    spec = _spec(family)
    ratio = spec.attention_heads_per_kv_head
    # Keep the real GQA ratio (MHA stays MHA) with as few heads as that allows.
    heads, kv_heads = (4, 4) if ratio == 1 else (ratio, 1)
    rope = {"rope_type": "default", "rope_theta": spec.rope_theta, **(spec.rope_scaling or {})}
    text_kwargs = {
        "vocab_size": vocab_size or spec.vocab_size,
        "hidden_size": text_hidden_size or heads * TEXT_HEAD_DIM,
        "intermediate_size": 2 * heads * TEXT_HEAD_DIM,
        "num_hidden_layers": 1 if text_hidden_size else TEXT_LAYERS,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": spec.rms_norm_eps,
        "rope_parameters": rope,
        "bos_token_id": spec.bos_token[1] if spec.bos_token else None,
        "eos_token_id": spec.eos_token[1],
        "pad_token_id": spec.text_config_pad_token_id,
        "tie_word_embeddings": False,
    }
    if spec.text_model_type == "mistral":
        text_config = transformers.MistralConfig(sliding_window=spec.sliding_window, **text_kwargs)
    elif spec.text_model_type == "qwen2":
        text_config = transformers.Qwen2Config(
            sliding_window=spec.sliding_window, use_sliding_window=spec.sliding_window_enabled, **text_kwargs
        )
    else:
        text_config = transformers.LlamaConfig(**text_kwargs)
    vision_kwargs = dict(
        hidden_size=VISION_HIDDEN,
        intermediate_size=2 * VISION_HIDDEN,
        num_hidden_layers=VISION_LAYERS,
        num_attention_heads=2,
        image_size=spec.fixture_crop,
        patch_size=PATCH_SIZE,
    )
    if spec.vision_model_type == "siglip":
        # SigLIP so400m's activation and norm epsilon; no pooling head (config.json vision_use_head false).
        vision_config = transformers.SiglipVisionConfig(
            hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, vision_use_head=False, **vision_kwargs
        )
    else:
        vision_config = transformers.CLIPVisionConfig(
            projection_dim=VISION_HIDDEN, hidden_act="quick_gelu", layer_norm_eps=1e-5, **vision_kwargs
        )
    common = dict(
        text_config=text_config,
        vision_config=vision_config,
        image_token_index=spec.image_token_id,
        vision_feature_layer=spec.vision_feature_layer,
        vision_feature_select_strategy=spec.vision_feature_select_strategy,
        projector_hidden_act="gelu",  # config.json projector_hidden_act
        multimodal_projector_bias=True,
        tie_word_embeddings=spec.tie_word_embeddings,
    )
    if spec.architecture == "llava":
        # config.json pad_token_id 32001 (top level) and image_seq_length 576.
        return transformers.LlavaConfig(
            image_seq_length=spec.fixture_image_seq_length, pad_token_id=spec.pad_token[1], **common
        )
    if spec.architecture == "llava_onevision":
        return transformers.LlavaOnevisionConfig(
            video_token_index=spec.video_token[1],
            image_grid_pinpoints=spec.fixture_pinpoints,
            vision_aspect_ratio="anyres_max_9",
            **common,
        )
    if spec.architecture == "llava_next_video":
        return transformers.LlavaNextVideoConfig(
            video_token_index=spec.video_token[1],
            image_grid_pinpoints=spec.fixture_pinpoints,
            image_seq_length=spec.fixture_image_seq_length,
            spatial_pool_mode="average",
            spatial_pool_stride=2,
            **common,
        )
    return transformers.LlavaNextConfig(
        image_grid_pinpoints=spec.fixture_pinpoints, image_seq_length=spec.fixture_image_seq_length, **common
    )


STOCK_CLASSES = {
    "llava": "LlavaForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
    "llava_next_video": "LlavaNextVideoForConditionalGeneration",
}


def stock_class(family: str) -> type:
    """The stock transformers generation class of `family`'s checkpoints."""
    import transformers

    return getattr(transformers, STOCK_CLASSES[_spec(family).architecture])


def build_stock_model(
    family: str,
    seed: int = 0,
    dtype: str | None = None,
    text_hidden_size: int | None = None,
    vocab_size: int | None = None,
):
    """The stock generation class of the family with seeded random weights, in eval mode.

    `dtype` defaults to the dtype of the real checkpoint's tensors (`FamilySpec.checkpoint_dtype`).
    """
    import torch

    spec = _spec(family)
    torch.manual_seed(seed)
    model = stock_class(family)(stock_config(family, text_hidden_size, vocab_size)).eval()
    model = model.to(getattr(torch, dtype or spec.checkpoint_dtype))
    for name, value in spec.generation_ids.items():
        setattr(model.generation_config, name, value)
    return model


def build_stock_checkpoint(
    family: str,
    directory,
    seed: int = 0,
    dtype: str | None = None,
    max_shard_size: int | str | None = None,
    key_layout: str = "hub",
    text_hidden_size: int | None = None,
    vocab_size: int | None = None,
) -> Path:
    """Write the family's checkpoint (stock model + stock processor, `save_pretrained` both) to `directory`.

    `key_layout="hub"` (default) then renames the vision-tower keys to the Hub's `vision_tower.vision_model.*` (the
    only key names where the stock save and the Hub files differ, see `TRANSFORMERS5_KEY_PREFIXES`);
    "transformers5" keeps the stock save's names. By default the weights go to one `model.safetensors`; the Hub
    repositories are sharded (`model-0000k-of-0000n.safetensors` plus `model.safetensors.index.json`): pass
    `max_shard_size` (e.g. "1MB") to get that layout from the same stock `save_pretrained`.
    """
    legacy_key_prefixes(key_layout)  # reject an unknown layout before writing anything
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    build_stock_model(family, seed, dtype, text_hidden_size, vocab_size).save_pretrained(directory, **save_kwargs)
    if key_layout == "hub":
        _rename_saved_keys_to_hub_layout(directory)
    build_stock_processor(family).save_pretrained(directory)
    spec = _spec(family)
    if spec.video_token is not None:
        _write_hub_video_processor_config(directory / "processor_config.json", spec)
    return directory


def _write_hub_video_processor_config(path: Path, spec: FamilySpec) -> None:
    """Replace the stand-in's entry in `processor_config.json` by what the Hub repo's video processor config says:
    the stock (torchvision) video processor and its settings."""
    import json

    crop = spec.fixture_crop
    if spec.architecture == "llava_onevision":
        # video_preprocessor_config.json: resize to 384 x 384, bicubic, SigLIP mean/std.
        values = {"video_processor_type": "LlavaOnevisionVideoProcessor", "size": {"height": crop, "width": crop}}
    else:
        # video_preprocessor_config.json: shortest edge 336, centre crop 336 x 336, bicubic, CLIP mean/std.
        values = {
            "video_processor_type": "LlavaNextVideoVideoProcessor",
            "size": {"shortest_edge": crop},
            "crop_size": {"height": crop, "width": crop},
            "do_center_crop": True,
        }
    values.update(
        do_resize=True,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        do_convert_rgb=True,
        image_mean=list(spec.image_mean),
        image_std=list(spec.image_std),
        resample=3,
    )
    processor_config = json.loads(path.read_text())
    processor_config["video_processor"] = values
    path.write_text(json.dumps(processor_config, indent=2, sort_keys=True) + "\n")


def build_stock_checkpoints(root, seed: int = 0, families=None) -> dict[str, Path]:
    """The checkpoints of `families` (default: the four LLaVA-NeXT ones, `FAMILIES`) under `root/<family>`;
    returns family -> directory."""
    root = Path(root)
    return {family: build_stock_checkpoint(family, root / family, seed) for family in (families or FAMILIES)}
