"""llava-codebook: redundancy-codebook visual token pruning for the LLaVA and Qwen-VL model families on the Hugging Face
Hub."""

from .codebook import CodebookError, CodebookNotFoundError, RedundancyCodebook
from .configuration_llava_codebook import LlavaCodebookConfig
from .configuration_llava_next_codebook import LlavaNextCodebookConfig
from .configuration_llava_next_video_codebook import LlavaNextVideoCodebookConfig
from .configuration_llava_onevision_codebook import LlavaOnevisionCodebookConfig
from .configuration_qwen2_5_vl_codebook import Qwen2_5_VLCodebookConfig
from .configuration_qwen2_vl_codebook import Qwen2VLCodebookConfig
from .configuration_qwen3_vl_codebook import Qwen3VLCodebookConfig
from .families import FAMILIES, UnsupportedModelError
from .loading import load_pruned_model
from .modeling_llava_codebook import LlavaCodebookForConditionalGeneration, LlavaCodebookModel
from .modeling_llava_next_codebook import (
    LlavaNextCodebookForConditionalGeneration,
    LlavaNextCodebookModel,
    PruningSettings,
    VisualTokenSelection,
)
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
from .pruning_loading import IncompleteCheckpointError
from .selection import codebook_similarity, select_tokens
from .strategies import STRATEGIES

__version__ = "0.1.0"


def register_auto_classes() -> None:
    """Make the Auto classes know every family's classes, and `save_pretrained` write the remote-code files and an
    `auto_map` for the Auto classes.

    With the package imported, `AutoModelForImageTextToText.from_pretrained(repo)` resolves a pruning-enabled repo
    to the installed classes (with `trust_remote_code=True` the repo's own files are used instead), and
    `pipeline("image-text-to-text", ...)` recognises the model class. A family without its own processor class
    maps to its stock processor, which is what its converted repos ship.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

    for family in FAMILIES.values():
        config = family.config_class
        AutoConfig.register(config.model_type, config, exist_ok=True)
        AutoModel.register(config, family.model_class, exist_ok=True)
        AutoModelForImageTextToText.register(config, family.generation_class, exist_ok=True)
        AutoProcessor.register(config, family.processor_class, exist_ok=True)
        config.register_for_auto_class()
        family.model_class.register_for_auto_class("AutoModel")
        family.generation_class.register_for_auto_class("AutoModelForImageTextToText")
        if not family.ships_stock_processor:
            family.processor_class.register_for_auto_class("AutoProcessor")


register_auto_classes()

__all__ = [
    "FAMILIES",
    "STRATEGIES",
    "CodebookError",
    "CodebookNotFoundError",
    "IncompleteCheckpointError",
    "LlavaCodebookConfig",
    "LlavaCodebookForConditionalGeneration",
    "LlavaCodebookModel",
    "LlavaNextCodebookConfig",
    "LlavaNextCodebookForConditionalGeneration",
    "LlavaNextCodebookModel",
    "LlavaNextCodebookProcessor",
    "LlavaNextVideoCodebookConfig",
    "LlavaNextVideoCodebookForConditionalGeneration",
    "LlavaNextVideoCodebookModel",
    "LlavaOnevisionCodebookConfig",
    "LlavaOnevisionCodebookForConditionalGeneration",
    "LlavaOnevisionCodebookModel",
    "PruningSettings",
    "Qwen2VLCodebookConfig",
    "Qwen2VLCodebookForConditionalGeneration",
    "Qwen2VLCodebookModel",
    "Qwen2_5_VLCodebookConfig",
    "Qwen2_5_VLCodebookForConditionalGeneration",
    "Qwen2_5_VLCodebookModel",
    "Qwen3VLCodebookConfig",
    "Qwen3VLCodebookForConditionalGeneration",
    "Qwen3VLCodebookModel",
    "RedundancyCodebook",
    "UnsupportedModelError",
    "VisualTokenSelection",
    "codebook_similarity",
    "load_pruned_model",
    "register_auto_classes",
    "select_tokens",
]
