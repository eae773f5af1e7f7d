"""Configuration of a LLaVA (1.5) model that prunes redundant visual tokens before the language model sees them."""

from huggingface_hub.dataclasses import strict
from transformers import LlavaConfig

from .pruning_config import PRUNING_FIELDS_DOC, PruningConfigMixin


@strict
class LlavaCodebookConfig(PruningConfigMixin, LlavaConfig):
    __doc__ = (
        "A stock `LlavaConfig` plus the pruning settings below (`llava_codebook.pruning_config`)."
        + PRUNING_FIELDS_DOC
        + r"""
    Example:

    ```python
    >>> from llava_codebook import LlavaCodebookConfig

    >>> config = LlavaCodebookConfig(codebook_repo="org/codebook-llava-1.5-7b", codebook_threshold=0.45)
    >>> config.model_type
    'llava_codebook'
    ```"""
    )

    model_type = "llava_codebook"
    # One 336 px view per image: no AnyRes tiles, so `tile_skipping=True` is refused.
    has_image_tiles = False


__all__ = ["LlavaCodebookConfig"]
