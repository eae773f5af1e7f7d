"""llava-codebook: redundancy-codebook visual token pruning for LLaVA-NeXT models on the Hugging Face Hub."""

from .codebook import CodebookError, CodebookNotFoundError, RedundancyCodebook
from .configuration_llava_next_codebook import LlavaNextCodebookConfig
from .loading import load_pruned_model
from .modeling_llava_next_codebook import (
    LlavaNextCodebookForConditionalGeneration,
    LlavaNextCodebookModel,
    PruningSettings,
    VisualTokenSelection,
)
from .processing_llava_next_codebook import LlavaNextCodebookProcessor
from .pruning_core import IncompleteCheckpointError
from .selection import codebook_similarity, select_tokens
from .strategies import STRATEGIES

__version__ = "0.1.0"


def register_auto_classes() -> None:
    """Make the Auto classes know the package's classes, and `save_pretrained` write the remote-code files and an
    `auto_map` for the four Auto classes.

    With the package imported, `AutoModelForImageTextToText.from_pretrained(repo)` resolves a pruning-enabled repo
    to the installed classes (with `trust_remote_code=True` the repo's own files are used instead), and
    `pipeline("image-text-to-text", model=...)` recognises the model class.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

    AutoConfig.register(LlavaNextCodebookConfig.model_type, LlavaNextCodebookConfig, exist_ok=True)
    AutoModel.register(LlavaNextCodebookConfig, LlavaNextCodebookModel, exist_ok=True)
    AutoModelForImageTextToText.register(
        LlavaNextCodebookConfig, LlavaNextCodebookForConditionalGeneration, exist_ok=True
    )
    AutoProcessor.register(LlavaNextCodebookConfig, LlavaNextCodebookProcessor, exist_ok=True)
    LlavaNextCodebookConfig.register_for_auto_class()
    LlavaNextCodebookModel.register_for_auto_class("AutoModel")
    LlavaNextCodebookForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
    LlavaNextCodebookProcessor.register_for_auto_class("AutoProcessor")


register_auto_classes()

__all__ = [
    "CodebookError",
    "CodebookNotFoundError",
    "IncompleteCheckpointError",
    "LlavaNextCodebookConfig",
    "LlavaNextCodebookForConditionalGeneration",
    "LlavaNextCodebookModel",
    "LlavaNextCodebookProcessor",
    "PruningSettings",
    "RedundancyCodebook",
    "STRATEGIES",
    "VisualTokenSelection",
    "codebook_similarity",
    "load_pruned_model",
    "register_auto_classes",
    "select_tokens",
]
