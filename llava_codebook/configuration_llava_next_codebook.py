"""Configuration of a LLaVA-NeXT model that prunes redundant visual tokens before the language model sees them."""

from huggingface_hub.dataclasses import strict
from transformers import LlavaNextConfig

from .pruning_config import PRUNING_FIELDS_DOC, PruningConfigMixin


@strict
class LlavaNextCodebookConfig(PruningConfigMixin, LlavaNextConfig):
    __doc__ = (
        "A stock `LlavaNextConfig` plus the pruning settings below (`llava_codebook.pruning_config`)."
        + PRUNING_FIELDS_DOC
        + r"""
    Example:

    ```python
    >>> from llava_codebook import LlavaNextCodebookConfig

    >>> config = LlavaNextCodebookConfig(codebook_repo="org/codebook-llava-next", codebook_threshold=0.2)
    >>> config.pruning_mode
    'threshold'
    ```"""
    )

    model_type = "llava_next_codebook"


__all__ = ["LlavaNextCodebookConfig"]
