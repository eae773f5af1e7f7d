"""Test checkpoints built like the Qwen-VL checkpoints on the Hub, shrunk only in size (the `hub_fixtures` conventions).

Four repositories are imitated: `Qwen/Qwen2-VL-2B-Instruct`, `Qwen/Qwen2.5-VL-3B-Instruct`, `Qwen/Qwen2.5-VL-7B-Instruct`
and `Qwen/Qwen3-VL-2B-Instruct`. What is REAL (read from each repository's config, tokenizer, preprocessor and chat
template files; each value says where):

- the checkpoint is written by the stock class's own `save_pretrained` (`Qwen2VLForConditionalGeneration`, ...). For
  Qwen2-VL and Qwen2.5-VL transformers 5 writes the layout the Hub files have (`model.layers.*`, `model.embed_tokens`,
  `visual.*`, `lm_head.weight` only when untied); Qwen3-VL's Hub files already use transformers' own layout
  (`model.language_model.*`, `model.visual.*`), which is also what the stock save writes;
- the tensors' dtype (bfloat16), the embedding table's size (`vocab_size`), `tie_word_embeddings`;
- the special tokens at their ids (`<|endoftext|>` 151643 ... `<|video_pad|>` 151656, the later tool / code / think
  tokens of Qwen2.5 and Qwen3), `len(tokenizer)`, no BOS token, the image / video / vision-start / vision-end ids in
  the config;
- M-RoPE: `mrope_section` (and Qwen3-VL's `mrope_interleaved`), hence the text head dimension (twice the section's
  sum: 128), `rope_theta`, `max_position_embeddings`, `rms_norm_eps`, the sliding-window settings;
- the vision settings: `patch_size` (14; Qwen3-VL 16), `temporal_patch_size` 2, `spatial_merge_size` 2, the
  activation, Qwen2.5-VL's `window_size` 112 and `tokens_per_second` 2 (its full-attention blocks at the same share of
  depth: the last block of the shrunk tower, as 7 / 15 / 23 / 31 of 32), Qwen3-VL's `num_position_embeddings` 2304 and
  three deepstack layers;
- the image processor's normalisation, patch / merge / temporal sizes and its minimum pixel count; the processor and
  video-processor classes the repositories name; the chat templates.

What is SHRUNK: hidden sizes and layer counts (text: 2 heads of 128 dims, 1 key/value head, 2 layers, 3 for Qwen3-VL
so that every deepstack list is used; vision: width 32, 2 heads, 2 layers, 3 for Qwen3-VL), the maximum pixels per
image and per video frame (64 merged tokens instead of 16384; video frames 16 instead of 768), and the tokenizer's
text vocabulary (word level, made-up ids, real special tokens, real length; as in `hub_fixtures`). The GQA ratio is
not kept (the head dimension is: the M-RoPE sections need it).

The stock video processors need torchvision, which does not import beside torch 2.13 CPU: the processor is built
with the package's PIL video processor (`llava_codebook.processors.qwen_frame_video_processor`), which resizes,
normalises and patchifies frames as the stock `Qwen2VLVideoProcessor` / `Qwen3VLVideoProcessor` do, and the saved
processor config then names the stock class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hub_fixtures import UNKNOWN_WORD, WORDS

SPECIAL_BASE = 151643  # <|endoftext|>: the first added token of every Qwen2 / Qwen2.5 / Qwen3 tokenizer
# tokenizer.json added_tokens of Qwen2-VL (151643-151656, all special)
QWEN2_SPECIAL = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Qwen2.5's further added tokens (151657-151664), not special (tokenizer_config.json added_tokens_decoder)
QWEN25_ADDED = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
# Qwen3's further added tokens (151665-151668), not special
QWEN3_ADDED = ("<tool_response>", "</tool_response>", "<think>", "</think>")

QUESTION = "What is shown in this image?"
# Timestamps of Qwen3-VL video prompts ("<0.5 seconds>") tokenize without unknown words.
EXTRA_WORDS = tuple("0123456789") + ("seconds", "happens", "video", "frame", "picture")

# chat_template.json of Qwen/Qwen2-VL-2B-Instruct, Qwen/Qwen2.5-VL-3B-Instruct and Qwen/Qwen2.5-VL-7B-Instruct.
QWEN2_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)


def _qwen3_content_loop(indent: str) -> str:
    return (
        f"{indent}{{%- for content in message.content %}}\n"
        f"{indent}    {{%- if content.type == 'image' or 'image' in content or 'image_url' in content %}}\n"
        f"{indent}        {{%- set image_count.value = image_count.value + 1 %}}\n"
        f"{indent}        {{%- if add_vision_id %}}Picture {{{{ image_count.value }}}}: {{% endif -%}}\n"
        f"{indent}        <|vision_start|><|image_pad|><|vision_end|>\n"
        f"{indent}    {{%- elif content.type == 'video' or 'video' in content %}}\n"
        f"{indent}        {{%- set video_count.value = video_count.value + 1 %}}\n"
        f"{indent}        {{%- if add_vision_id %}}Video {{{{ video_count.value }}}}: {{% endif -%}}\n"
        f"{indent}        <|vision_start|><|video_pad|><|vision_end|>\n"
        f"{indent}    {{%- elif 'text' in content %}}\n"
        f"{indent}        {{{{- content.text }}}}\n"
        f"{indent}    {{%- endif %}}\n"
        f"{indent}{{%- endfor %}}\n"
    )


def _qwen3_system(prefix: str, suffix: str) -> str:
    return (
        "    {%- if messages[0].role == 'system' %}\n"
        f"{prefix}"
        "        {%- if messages[0].content is string %}\n"
        "            {{- messages[0].content }}\n"
        "        {%- else %}\n"
        "            {%- for content in messages[0].content %}\n"
        "                {%- if 'text' in content %}\n"
        "                    {{- content.text }}\n"
        "                {%- endif %}\n"
        "            {%- endfor %}\n"
        "        {%- endif %}\n"
        f"{suffix}"
        "    {%- endif %}\n"
    )


# chat_template.json of Qwen/Qwen3-VL-2B-Instruct (the template every Qwen3-VL Instruct repository ships).
QWEN3_CHAT_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    + _qwen3_system("", "        {{- '\\n\\n' }}\n")
    + '    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided '
    'with function signatures within <tools></tools> XML tags:\\n<tools>" }}\n'
    "    {%- for tool in tools %}\n"
    '        {{- "\\n" }}\n'
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    '    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within '
    '<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": '
    '<args-json-object>}\\n</tool_call><|im_end|>\\n" }}\n'
    "{%- else %}\n"
    + _qwen3_system("        {{- '<|im_start|>system\\n' }}\n", "        {{- '<|im_end|>\\n' }}\n")
    + "{%- endif %}\n"
    "{%- set image_count = namespace(value=0) %}\n"
    "{%- set video_count = namespace(value=0) %}\n"
    "{%- for message in messages %}\n"
    '    {%- if message.role == "user" %}\n'
    "        {{- '<|im_start|>' + message.role + '\\n' }}\n"
    "        {%- if message.content is string %}\n"
    "            {{- message.content }}\n"
    "        {%- else %}\n" + _qwen3_content_loop("            ") + "        {%- endif %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    '    {%- elif message.role == "assistant" %}\n'
    "        {{- '<|im_start|>' + message.role + '\\n' }}\n"
    "        {%- if message.content is string %}\n"
    "            {{- message.content }}\n"
    "        {%- else %}\n"
    "            {%- for content_item in message.content %}\n"
    "                {%- if 'text' in content_item %}\n"
    "                    {{- content_item.text }}\n"
    "                {%- endif %}\n"
    "            {%- endfor %}\n"
    "        {%- endif %}\n"
    "        {%- if message.tool_calls %}\n"
    "            {%- for tool_call in message.tool_calls %}\n"
    "                {%- if (loop.first and message.content) or (not loop.first) %}\n"
    "                    {{- '\\n' }}\n"
    "                {%- endif %}\n"
    "                {%- if tool_call.function %}\n"
    "                    {%- set tool_call = tool_call.function %}\n"
    "                {%- endif %}\n"
    '                {{- \'<tool_call>\\n{"name": "\' }}\n'
    "                {{- tool_call.name }}\n"
    '                {{- \'", "arguments": \' }}\n'
    "                {%- if tool_call.arguments is string %}\n"
    "                    {{- tool_call.arguments }}\n"
    "                {%- else %}\n"
    "                    {{- tool_call.arguments | tojson }}\n"
    "                {%- endif %}\n"
    "                {{- '}\\n</tool_call>' }}\n"
    "            {%- endfor %}\n"
    "        {%- endif %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    '    {%- elif message.role == "tool" %}\n'
    '        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}\n'
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {%- if message.content is string %}\n"
    "            {{- message.content }}\n"
    "        {%- else %}\n" + _qwen3_content_loop("            ") + "        {%- endif %}\n"
    "        {{- '\\n</tool_response>' }}\n"
    '        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n'
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # preprocessor_config.json image_mean (Qwen2-VL, Qwen2.5-VL)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class QwenSpec:
    """Everything that makes one checkpoint look like its Hub repository (see the module docstring)."""

    hub_repo_id: str
    architecture: str  # config.json model_type
    vocab_size: int  # text vocab_size: rows of the embedding table
    tokenizer_length: int  # len(tokenizer)
    added_tokens: tuple  # tokens after QWEN2_SPECIAL, in id order (not special)
    tie_word_embeddings: bool
    mrope_section: tuple
    rope_theta: float
    max_position_embeddings: int
    rms_norm_eps: float
    chat_template: str
    expected_prompt: str  # the template's rendering of [user: image + QUESTION] with the generation prompt
    vision: dict  # real vision settings kept as they are
    patch_size: int
    image_mean: tuple
    image_std: tuple
    min_pixels: int  # the image processor's real minimum (size.shortest_edge)
    fixture_max_tokens: int = 64  # merged tokens an image may have (real: 16384)
    mrope_interleaved: bool = False
    text_extra: dict = field(default_factory=dict)  # further real text settings (sliding window, ...)
    text_layers: int = 2
    vision_layers: int = 2
    generation_ids: dict = field(
        # generation_config.json of every imitated repository
        default_factory=lambda: {"bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643}
    )
    checkpoint_dtype: str = "bfloat16"  # config.json torch_dtype
    padding_side: str = "left"  # UNCONFIRMED: the batched-generation examples of the model cards pad left

    @property
    def merge_factor(self) -> int:
        return self.patch_size * self.vision["spatial_merge_size"]

    @property
    def stock_model_class(self) -> str:
        return {
            "qwen2_vl": "Qwen2VLForConditionalGeneration",
            "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
            "qwen3_vl": "Qwen3VLForConditionalGeneration",
        }[self.architecture]

    @property
    def stock_processor_class(self) -> str:
        return {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen3_vl": "Qwen3VLProcessor"}[
            self.architecture
        ]


_QWEN2_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    f"<|vision_start|><|image_pad|><|vision_end|>{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
)
_QWEN2_VISION = {"spatial_merge_size": 2, "temporal_patch_size": 2, "hidden_act": "quick_gelu", "mlp_ratio": 4}
_QWEN25_VISION = {
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "hidden_act": "silu",
    "window_size": 112,
    "tokens_per_second": 2,
}
# config.json of the Qwen2.5-VL repositories: sliding_window 32768, use_sliding_window false
_QWEN2_TEXT = {"sliding_window": 32768, "use_sliding_window": False}

QWEN_FAMILIES: dict[str, QwenSpec] = {
    "qwen2-vl-2b": QwenSpec(
        hub_repo_id="Qwen/Qwen2-VL-2B-Instruct",
        architecture="qwen2_vl",
        # config.json: vocab_size 151936, tie_word_embeddings true, torch_dtype bfloat16
        vocab_size=151936,
        tokenizer_length=151657,
        added_tokens=(),
        tie_word_embeddings=True,
        # config.json rope_scaling {"type": "mrope", "mrope_section": [16, 24, 24]}, rope_theta 1e6,
        # max_position_embeddings 32768, rms_norm_eps 1e-06 (12 heads of 128: hidden 1536)
        mrope_section=(16, 24, 24),
        rope_theta=1_000_000.0,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        text_extra={**_QWEN2_TEXT, "max_window_layers": 28},
        chat_template=QWEN2_CHAT_TEMPLATE,
        expected_prompt=_QWEN2_PROMPT,
        # config.json vision_config: patch_size 14, temporal_patch_size 2, spatial_merge_size 2, mlp_ratio 4
        # (the activation is the class default, quick_gelu)
        vision=_QWEN2_VISION,
        patch_size=14,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        min_pixels=56 * 56,  # preprocessor_config.json min_pixels 3136 (max_pixels 12845056 = 16384 tokens)
    ),
    "qwen2.5-vl-3b": QwenSpec(
        hub_repo_id="Qwen/Qwen2.5-VL-3B-Instruct",
        architecture="qwen2_5_vl",
        # config.json: vocab_size 151936, tie_word_embeddings true, 16 heads / 2 key-value heads of 128
        vocab_size=151936,
        tokenizer_length=151665,
        added_tokens=QWEN25_ADDED,
        tie_word_embeddings=True,
        mrope_section=(16, 24, 24),
        rope_theta=1_000_000.0,
        max_position_embeddings=128000,
        rms_norm_eps=1e-6,
        text_extra={**_QWEN2_TEXT, "max_window_layers": 70},
        chat_template=QWEN2_CHAT_TEMPLATE,
        expected_prompt=_QWEN2_PROMPT,
        # config.json vision_config: hidden_act silu, window_size 112, fullatt_block_indexes [7, 15, 23, 31] of
        # depth 32, tokens_per_second 2, out_hidden_size 2048
        vision=_QWEN25_VISION,
        patch_size=14,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        min_pixels=56 * 56,
    ),
    "qwen2.5-vl-7b": QwenSpec(
        hub_repo_id="Qwen/Qwen2.5-VL-7B-Instruct",
        architecture="qwen2_5_vl",
        # config.json: vocab_size 152064, tie_word_embeddings false (lm_head.weight stored), 28 heads / 4 key-value
        vocab_size=152064,
        tokenizer_length=151665,
        added_tokens=QWEN25_ADDED,
        tie_word_embeddings=False,
        mrope_section=(16, 24, 24),
        rope_theta=1_000_000.0,
        max_position_embeddings=128000,
        rms_norm_eps=1e-6,
        text_extra={**_QWEN2_TEXT, "max_window_layers": 28},
        chat_template=QWEN2_CHAT_TEMPLATE,
        expected_prompt=_QWEN2_PROMPT,
        vision=_QWEN25_VISION,
        patch_size=14,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        min_pixels=56 * 56,
    ),
    "qwen3-vl-2b": QwenSpec(
        hub_repo_id="Qwen/Qwen3-VL-2B-Instruct",
        architecture="qwen3_vl",
        # config.json text_config: vocab_size 151936, tie_word_embeddings true, head_dim 128, 16 heads / 8 key-value,
        # rope_scaling {"mrope_interleaved": true, "mrope_section": [24, 20, 20]}, rope_theta 5000000,
        # max_position_embeddings 262144, rms_norm_eps 1e-06
        vocab_size=151936,
        tokenizer_length=151669,
        added_tokens=QWEN25_ADDED + QWEN3_ADDED,
        tie_word_embeddings=True,
        mrope_section=(24, 20, 20),
        mrope_interleaved=True,
        rope_theta=5_000_000.0,
        max_position_embeddings=262144,
        rms_norm_eps=1e-6,
        text_extra={"attention_bias": False},
        chat_template=QWEN3_CHAT_TEMPLATE,
        # The Instruct template adds no default system turn.
        expected_prompt=(
            f"<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{QUESTION}<|im_end|>\n"
            "<|im_start|>assistant\n"
        ),
        # config.json vision_config: patch_size 16, temporal_patch_size 2, spatial_merge_size 2, hidden_act
        # gelu_pytorch_tanh, num_position_embeddings 2304, deepstack_visual_indexes [5, 11, 17] of depth 24
        vision={
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "hidden_act": "gelu_pytorch_tanh",
            "num_position_embeddings": 2304,
        },
        patch_size=16,
        # preprocessor_config.json: image_mean / image_std 0.5, size.shortest_edge 65536 (64 tokens), longest_edge
        # 16777216 (16384 tokens); shrunk here to 4 and 64 tokens like the others
        image_mean=(0.5, 0.5, 0.5),
        image_std=(0.5, 0.5, 0.5),
        min_pixels=64 * 64,
        text_layers=3,
        vision_layers=3,
    ),
}

TEXT_HEADS, TEXT_KV_HEADS, TEXT_HEAD_DIM = 2, 1, 128
VISION_HIDDEN, VISION_HEADS = 32, 2


def _spec(name: str) -> QwenSpec:
    try:
        return QWEN_FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown Qwen family {name!r}; expected one of {sorted(QWEN_FAMILIES)}") from None


# ------------------------------------------------------------------------------------------------ config and model
def stock_config(name: str, text_hidden_size: int | None = None):
    """The family's stock config (`Qwen2VLConfig`, ...) with its real structure and shrunk sizes; `text_hidden_size`
    replaces the language model's width (Qwen2 and Qwen2.5 tie it to heads x 128: the head count follows)."""
    import transformers

    spec = _spec(name)
    rope = {"rope_type": "default", "rope_theta": spec.rope_theta, "mrope_section": list(spec.mrope_section)}
    if spec.mrope_interleaved:
        rope["mrope_interleaved"] = True
    qwen3 = spec.architecture == "qwen3_vl"
    heads = TEXT_HEADS if qwen3 or text_hidden_size is None else max(1, text_hidden_size // TEXT_HEAD_DIM)
    hidden = text_hidden_size or (64 if qwen3 else heads * TEXT_HEAD_DIM)
    text = {
        "vocab_size": spec.vocab_size,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": spec.text_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": TEXT_KV_HEADS,
        "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": spec.rms_norm_eps,
        "rope_parameters": rope,
        "bos_token_id": SPECIAL_BASE,
        "eos_token_id": SPECIAL_BASE + 2,  # <|im_end|>
        **spec.text_extra,
    }
    if qwen3:
        text["head_dim"] = TEXT_HEAD_DIM
    vision = {key: value for key, value in spec.vision.items()}
    vision.update(patch_size=spec.patch_size, depth=spec.vision_layers, num_heads=VISION_HEADS)
    if spec.architecture == "qwen2_vl":
        vision.update(embed_dim=VISION_HIDDEN, hidden_size=hidden)
        config_class = transformers.Qwen2VLConfig
    elif spec.architecture == "qwen2_5_vl":
        last = spec.vision_layers - 1
        vision.update(
            hidden_size=VISION_HIDDEN,
            intermediate_size=2 * VISION_HIDDEN,
            out_hidden_size=hidden,
            fullatt_block_indexes=[last],
        )
        config_class = transformers.Qwen2_5_VLConfig
    else:
        vision.update(
            hidden_size=VISION_HIDDEN,
            intermediate_size=2 * VISION_HIDDEN,
            out_hidden_size=hidden,
            deepstack_visual_indexes=list(range(spec.vision_layers)),
        )
        config_class = transformers.Qwen3VLConfig
    return config_class(
        text_config=text,
        vision_config=vision,
        image_token_id=SPECIAL_BASE + 12,  # <|image_pad|> 151655
        video_token_id=SPECIAL_BASE + 13,  # <|video_pad|> 151656
        vision_start_token_id=SPECIAL_BASE + 9,  # <|vision_start|> 151652
        vision_end_token_id=SPECIAL_BASE + 10,  # <|vision_end|> 151653
        tie_word_embeddings=spec.tie_word_embeddings,
    )


def stock_class(name: str) -> type:
    import transformers

    return getattr(transformers, _spec(name).stock_model_class)


def build_stock_model(name: str, seed: int = 0, dtype: str | None = None, text_hidden_size: int | None = None):
    """The stock generation class with seeded random weights, in eval mode, in the checkpoint's dtype by default."""
    import torch

    spec = _spec(name)
    torch.manual_seed(seed)
    model = stock_class(name)(stock_config(name, text_hidden_size)).eval()
    model = model.to(getattr(torch, dtype or spec.checkpoint_dtype))
    for key, value in spec.generation_ids.items():
        setattr(model.generation_config, key, value)
    return model


# ------------------------------------------------------------------------------------------------------ tokenizer
def _vocabulary(spec: QwenSpec) -> dict:
    special = {token: SPECIAL_BASE + i for i, token in enumerate(QWEN2_SPECIAL + spec.added_tokens)}
    if max(special.values()) != spec.tokenizer_length - 1:
        raise ValueError(f"{spec.hub_repo_id}: the added tokens do not end at len(tokenizer) - 1")
    free = iter(range(300, SPECIAL_BASE))
    words = {word: next(free) for word in dict.fromkeys([*WORDS, *EXTRA_WORDS, UNKNOWN_WORD])}
    used = set(words.values())
    vocabulary = {**words, **special}
    vocabulary.update({f"<fixture-placeholder-{i}>": i for i in range(SPECIAL_BASE) if i not in used})
    return vocabulary


def build_stock_tokenizer(name: str):
    """A fast tokenizer with Qwen's added tokens at their real ids and `len(tokenizer)` of the real one (no BOS; eos
    `<|im_end|>`, pad `<|endoftext|>`, as the Instruct repositories' tokenizer_config.json)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    spec = _spec(name)
    backend = Tokenizer(models.WordLevel(vocab=_vocabulary(spec), unk_token=UNKNOWN_WORD))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.decoder = decoders.WordPiece(prefix="##")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side=spec.padding_side,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN2_SPECIAL], special_tokens=True)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in spec.added_tokens])
    tokenizer.chat_template = spec.chat_template
    return tokenizer


# ------------------------------------------------------------------------------------------------------ processors
def image_processor_kwargs(name: str) -> dict:
    spec = _spec(name)
    factor = spec.merge_factor
    return dict(
        size={"shortest_edge": spec.min_pixels, "longest_edge": factor * factor * spec.fixture_max_tokens},
        patch_size=spec.patch_size,
        temporal_patch_size=spec.vision["temporal_patch_size"],
        merge_size=spec.vision["spatial_merge_size"],
        image_mean=list(spec.image_mean),
        image_std=list(spec.image_std),
    )


def qwen_pil_video_processor(name: str):
    """The package's PIL stand-in for the stock Qwen video processors (torchvision-only), configured as the
    family's (`llava_codebook.processors.qwen_frame_video_processor`; held against the stock image processor in
    `test_qwen_tools.py`)."""
    from llava_codebook.processors import qwen_frame_video_processor

    return qwen_frame_video_processor(image_processor_kwargs(name), qwen3=_spec(name).architecture == "qwen3_vl")


def build_stock_processor(name: str):
    """The family's stock processor (`Qwen2VLProcessor`, `Qwen2_5_VLProcessor`, `Qwen3VLProcessor`) with the stock PIL
    image processor and `qwen_pil_video_processor`, configured as the Hub repository's processor."""
    import transformers

    spec = _spec(name)
    image_processor = transformers.Qwen2VLImageProcessorPil(**image_processor_kwargs(name))
    return getattr(transformers, spec.stock_processor_class)(
        image_processor=image_processor,
        tokenizer=build_stock_tokenizer(name),
        video_processor=qwen_pil_video_processor(name),
        chat_template=spec.chat_template,
    )


# ---------------------------------------------------------------------------------------------------- checkpoints
def build_stock_checkpoint(name: str, directory, seed: int = 0, text_hidden_size: int | None = None) -> Path:
    """Write the family's checkpoint (stock model + stock processor, `save_pretrained` both) to `directory`; the
    processor config then names the stock (torchvision) processors the Hub repository's files name."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    build_stock_model(name, seed, text_hidden_size=text_hidden_size).save_pretrained(directory)
    build_stock_processor(name).save_pretrained(directory)
    _write_hub_processor_config(directory / "processor_config.json", name)
    return directory


def _write_hub_processor_config(path: Path, name: str) -> None:
    import json

    spec = _spec(name)
    config = json.loads(path.read_text())
    image = config.get("image_processor", {})
    image["image_processor_type"] = "Qwen2VLImageProcessor"  # preprocessor_config.json of every imitated repo
    video = {key: value for key, value in image.items() if key != "image_processor_type"}
    video_type = "Qwen3VLVideoProcessor" if spec.architecture == "qwen3_vl" else "Qwen2VLVideoProcessor"
    video["video_processor_type"] = video_type
    if spec.architecture == "qwen3_vl":
        video["fps"] = 2  # video_preprocessor_config.json fps 2
    config["image_processor"], config["video_processor"] = image, video
    config["processor_class"] = spec.stock_processor_class
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def build_stock_checkpoints(root, seed: int = 0, families=None) -> dict[str, Path]:
    root = Path(root)
    return {name: build_stock_checkpoint(name, root / name, seed) for name in (families or QWEN_FAMILIES)}
