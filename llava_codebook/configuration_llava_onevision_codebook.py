"""Configuration of a LLaVA-OneVision model that prunes redundant visual tokens before the language model sees them."""

from huggingface_hub.dataclasses import strict
from transformers import LlavaOnevisionConfig

from .pruning_config import PRUNING_FIELDS_DOC, PruningConfigMixin


@strict
class LlavaOnevisionCodebookConfig(PruningConfigMixin, LlavaOnevisionConfig):
    __doc__ = (
        "A stock `LlavaOnevisionConfig` plus the pruning settings below (`llava_codebook.pruning_config`)."
        + PRUNING_FIELDS_DOC
        + r"""
    Example:

    ```python
    >>> from llava_codebook import LlavaOnevisionCodebookConfig

    >>> config = LlavaOnevisionCodebookConfig(codebook_repo="org/codebook-ov", codebook_threshold=0.5)
    >>> config.model_type
    'llava_onevision_codebook'
    ```"""
    )

    model_type = "llava_onevision_codebook"


__all__ = ["LlavaOnevisionCodebookConfig"]
