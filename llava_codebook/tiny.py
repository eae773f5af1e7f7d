"""The embedded default: a tiny random-weight LLaVA-NeXT, its processor and a codebook, all built in code, offline.

It exists so that the demo, the tests and the benchmarks run anywhere in seconds. Its answers are noise (random
weights); what it shows faithfully is the mechanics: AnyRes packing, scoring, selection and prompt compaction.
"""

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextImageProcessorPil, PreTrainedTokenizerFast

from .codebook import CODEBOOK_FILENAME, RedundancyCodebook
from .configuration_llava_next_codebook import LlavaNextCodebookConfig
from .modeling_llava_next_codebook import SELF_REPO, LlavaNextCodebookForConditionalGeneration
from .processing_llava_next_codebook import LlavaNextCodebookProcessor

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
WORDS = (
    "what does this image show you must provide a single word that best describes the is in of and a an it "
    "describe picture photo colour color red green blue white black sky cat dog person car tree road house yes no "
    "how many are there where left right top bottom"
).split()
TINY_CROP = 56  # pixels per crop side: 4 x 4 tokens of 14 px
TINY_PINPOINTS = [[56, 112], [112, 56], [112, 112], [168, 56], [56, 168]]
# A chat template, so that code written for real checkpoints (`processor.apply_chat_template(...)`) runs on the tiny
# model too. The vocabulary has no role words, so a turn is its content: an image becomes "<image>\n", text stays
# text, an assistant turn ends with </s>, and the generation prompt is empty. A one-turn user message therefore
# renders as "<image>\n" + question, the prompt the demo and the builder use without a template: adding the
# template changes no token they produce.
TINY_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{- '<image>\n' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{{- '</s>' -}}{%- endif -%}"
    "{%- if not loop.last -%}{{- '\n' -}}{%- endif -%}"
    "{%- endfor -%}"
)


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over a fixed vocabulary, with `<image>` as a special token."""
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + WORDS + list("?.,!:\n"))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("\n", behavior="isolated"),
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation(),
        ]
    )
    backend.decoder = decoders.WordPiece(prefix="##")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def build_tiny_processor(crop: int = TINY_CROP) -> LlavaNextCodebookProcessor:
    scale = crop / TINY_CROP
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": crop},
        crop_size={"height": crop, "width": crop},
        image_grid_pinpoints=[[int(h * scale), int(w * scale)] for h, w in TINY_PINPOINTS],
    )
    return LlavaNextCodebookProcessor(
        image_processor=image_processor,
        tokenizer=build_tiny_tokenizer(),
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token, dropped by the "default" feature strategy
        chat_template=TINY_CHAT_TEMPLATE,
    )


def tiny_config(crop: int = TINY_CROP, text_hidden_size: int = 64, **pruning) -> LlavaNextCodebookConfig:
    tokenizer_vocab = len(SPECIAL_TOKENS) + len(WORDS) + 6
    scale = crop / TINY_CROP
    text = LlamaConfig(
        vocab_size=tokenizer_vocab,
        hidden_size=text_hidden_size,
        intermediate_size=2 * text_hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=crop,
        patch_size=14,
        projection_dim=32,
    )
    return LlavaNextCodebookConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=SPECIAL_TOKENS.index("<image>"),
        image_grid_pinpoints=[[int(h * scale), int(w * scale)] for h, w in TINY_PINPOINTS],
        image_seq_length=(crop // 14) ** 2,
        pad_token_id=0,
        **pruning,
    )


def build_tiny_model(seed: int = 0, **config_kwargs) -> LlavaNextCodebookForConditionalGeneration:
    """A random-weight model (seeded, so two calls give the same weights), in eval mode."""
    torch.manual_seed(seed)
    model = LlavaNextCodebookForConditionalGeneration(tiny_config(**config_kwargs))
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 2
    model.generation_config.bos_token_id = 1
    return model.eval()


def flat_colour_codebook(model, processor, colours=None, side: int = 112) -> RedundancyCodebook:
    """A codebook of the post-projector tokens of flat-colour images: it marks featureless regions as redundant.

    This is the documented stand-in for the demo (the real pipeline, `llava_codebook.codebooks`, needs a trained
    model to give meaningful probes); prototypes are every packed non-newline token of each flat image.
    """
    from PIL import Image

    colours = colours or [(0, 0, 0), (255, 255, 255), (128, 128, 128), (70, 130, 180), (34, 139, 34), (200, 60, 50)]
    images = [Image.new("RGB", (side, side), colour) for colour in colours]
    pixels = processor.image_processor(images=images, return_tensors="pt")
    with torch.no_grad():
        packed = model.get_image_features(pixels["pixel_values"], pixels["image_sizes"], return_dict=True).pooler_output
    newline = model.model.newline_masks(pixels["image_sizes"])
    rows = torch.cat([features[~mask] for features, mask in zip(packed, newline)])
    return RedundancyCodebook(
        prototypes=rows.detach().clone(),
        base_model="llava-codebook/tiny-random (built in code)",
        base_model_type=model.config.model_type,
        build_parameters={"method": "flat-colour patches", "colours": [list(c) for c in colours], "side": side},
    )


def build_tiny_default(directory: str | Path, seed: int = 0, threshold: float = 0.9) -> Path:
    """Write the embedded default to `directory` as a self-contained, pruning-enabled repo: model (with remote code),
    processor (with a chat template) and its codebook in `codebook/`, referenced as the repo's own (`"."`), the
    layout `llava-codebook convert` writes. It loads offline, from anywhere it is moved to (or after an upload to
    the Hub), with `AutoModelForImageTextToText.from_pretrained(directory, trust_remote_code=True)` and
    `AutoProcessor.from_pretrained(directory, trust_remote_code=True)`.

    From a shell: `python -m llava_codebook.tiny DIRECTORY`.
    """
    directory = Path(directory).resolve()
    model = build_tiny_model(seed)
    processor = build_tiny_processor()
    codebook = flat_colour_codebook(model, processor)
    codebook.save_pretrained(directory / "codebook")
    model.config.codebook_repo, model.config.codebook_filename = SELF_REPO, f"codebook/{CODEBOOK_FILENAME}"
    model.config.codebook_threshold = threshold
    model.load_codebook(codebook)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m llava_codebook.tiny DIRECTORY  (writes the embedded default there)")
    print(f"Wrote the embedded tiny model to {build_tiny_default(sys.argv[1])}")
