"""The supported model families, keyed by `model_type`: which classes load a checkpoint, and how its config reads.

One table is what `load_pruned_model`, `convert`, `import-seed --base-model` and the Auto-class registration
dispatch on. A checkpoint's `config.json` names its family by `model_type`: the stock one of a llava-hf repo
(`"llava_onevision"`) or the package's own of a converted repo (`"llava_onevision_codebook"`); both map to the same
family. Not shipped as remote code (a converted repo carries only its own family's files).
"""

from dataclasses import dataclass

from transformers import (
    LlavaNextVideoProcessor,
    LlavaOnevisionProcessor,
    LlavaProcessor,
    Qwen2_5_VLProcessor,
    Qwen2VLProcessor,
    Qwen3VLProcessor,
)

from .configuration_llava_codebook import LlavaCodebookConfig
from .configuration_llava_next_codebook import LlavaNextCodebookConfig
from .configuration_llava_next_video_codebook import LlavaNextVideoCodebookConfig
from .configuration_llava_onevision_codebook import LlavaOnevisionCodebookConfig
from .configuration_qwen2_5_vl_codebook import Qwen2_5_VLCodebookConfig
from .configuration_qwen2_vl_codebook import Qwen2VLCodebookConfig
from .configuration_qwen3_vl_codebook import Qwen3VLCodebookConfig
from .modeling_llava_codebook import LlavaCodebookForConditionalGeneration, LlavaCodebookModel
from .modeling_llava_next_codebook import LlavaNextCodebookForConditionalGeneration, LlavaNextCodebookModel
from .modeling_llava_next_video_codebook import (
    LlavaNextVideoCodebookForConditionalGeneration,
    LlavaNextVideoCodebookModel,
)
from .modeling_llava_onevision_codebook import (
    LlavaOnevisionCodebookForConditionalGeneration,
    LlavaOnevisionCodebookModel,
)
from .modeling_qwen2_5_vl_codebook import Qwen2_5_VLCodebookForConditionalGeneration, Qwen2_5_VLCodebookModel
from .modeling_qwen2_vl_codebook import Qwen2VLCodebookForConditionalGeneration, Qwen2VLCodebookModel
from .modeling_qwen3_vl_codebook import Qwen3VLCodebookForConditionalGeneration, Qwen3VLCodebookModel
from .processing_llava_next_codebook import LlavaNextCodebookProcessor

QWEN_PRUNED_TOKENS = (
    "each merged visual token (a 2 x 2 block of patches) of an image and of each temporal patch of a video, every kept "
    "token keeping its 3-D (M-RoPE) position"
)


@dataclass(frozen=True)
class Family:
    """One model family: the stock `model_type` it extends and the package's classes for it.

    `processor_class` is the processor of a converted repo. For LLaVA-NeXT it is the package's (the stock processor
    plus the token -> pixel geometry the Space draws with); for the other families it is the stock processor: their
    converted repos ship the base checkpoint's processor files unchanged.
    """

    name: str
    stock_model_type: str
    config_class: type
    model_class: type
    generation_class: type
    processor_class: type
    pruned_tokens: str  # what is scored and pruned, in words (model cards)

    @property
    def model_type(self) -> str:
        return self.config_class.model_type

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.model_class.pruning_modalities

    @property
    def ships_stock_processor(self) -> bool:
        return self.processor_class.__module__.startswith("transformers.")


FAMILIES: dict[str, Family] = {
    family.stock_model_type: family
    for family in (
        Family(
            "LLaVA (1.5)",
            "llava",
            LlavaCodebookConfig,
            LlavaCodebookModel,
            LlavaCodebookForConditionalGeneration,
            LlavaProcessor,
            "each of the 576 visual tokens of an image (one 336 px view)",
        ),
        Family(
            "LLaVA-NeXT",
            "llava_next",
            LlavaNextCodebookConfig,
            LlavaNextCodebookModel,
            LlavaNextCodebookForConditionalGeneration,
            LlavaNextCodebookProcessor,
            "each packed visual token of an image (the base view and every AnyRes tile)",
        ),
        Family(
            "LLaVA-OneVision",
            "llava_onevision",
            LlavaOnevisionCodebookConfig,
            LlavaOnevisionCodebookModel,
            LlavaOnevisionCodebookForConditionalGeneration,
            LlavaOnevisionProcessor,
            "each packed visual token of an image (base view and AnyRes tiles) and each pooled frame token of a video",
        ),
        Family(
            "LLaVA-NeXT-Video",
            "llava_next_video",
            LlavaNextVideoCodebookConfig,
            LlavaNextVideoCodebookModel,
            LlavaNextVideoCodebookForConditionalGeneration,
            LlavaNextVideoProcessor,
            "each packed visual token of an image (base view and AnyRes tiles) and each pooled frame token of a video",
        ),
        Family(
            "Qwen2-VL",
            "qwen2_vl",
            Qwen2VLCodebookConfig,
            Qwen2VLCodebookModel,
            Qwen2VLCodebookForConditionalGeneration,
            Qwen2VLProcessor,
            QWEN_PRUNED_TOKENS,
        ),
        Family(
            "Qwen2.5-VL",
            "qwen2_5_vl",
            Qwen2_5_VLCodebookConfig,
            Qwen2_5_VLCodebookModel,
            Qwen2_5_VLCodebookForConditionalGeneration,
            Qwen2_5_VLProcessor,
            QWEN_PRUNED_TOKENS,
        ),
        Family(
            "Qwen3-VL",
            "qwen3_vl",
            Qwen3VLCodebookConfig,
            Qwen3VLCodebookModel,
            Qwen3VLCodebookForConditionalGeneration,
            Qwen3VLProcessor,
            QWEN_PRUNED_TOKENS,
        ),
    )
}


class UnsupportedModelError(ValueError):
    """The checkpoint's `model_type` is not one of the supported model families."""


def family_for_model_type(model_type: str | None, source: str | None = None) -> Family:
    """The family of a stock (`"llava"`) or pruning-enabled (`"llava_codebook"`) `model_type`."""
    for family in FAMILIES.values():
        if model_type in (family.stock_model_type, family.model_type):
            return family
    supported = ", ".join(f"{f.stock_model_type} ({f.name})" for f in FAMILIES.values())
    where = f"{source!r} has" if source else "The checkpoint has"
    raise UnsupportedModelError(
        f"{where} model_type {model_type!r}, which llava-codebook does not support. Supported families: {supported} "
        "(and their `_codebook` variants written by this package)."
    )


def family_for_config(config_dict: dict, source: str | None = None) -> Family:
    """The family of a checkpoint's raw `config.json` dict."""
    return family_for_model_type(config_dict.get("model_type"), source)


def text_hidden_size(config_dict: dict, source: str | None = None) -> int:
    """The language model's hidden size a raw `config.json` means, defaults included.

    Read through the family's config class, because llava-hf configs written by older transformers leave out values
    equal to the text model's defaults (llava-1.5-7b-hf's `text_config` has no `hidden_size`: Llama's 4096).
    """
    family = family_for_config(config_dict, source)
    fields = {k: v for k, v in config_dict.items() if k not in ("model_type", "architectures", "auto_map")}
    return int(family.config_class.from_dict(fields).text_config.hidden_size)


__all__ = [
    "FAMILIES",
    "Family",
    "UnsupportedModelError",
    "family_for_config",
    "family_for_model_type",
    "text_hidden_size",
]
