"""Configuration of a LLaVA-NeXT-Video model that prunes redundant visual tokens before the language model sees them."""

from huggingface_hub.dataclasses import strict
from transformers import LlavaNextVideoConfig

from .pruning_config import PRUNING_FIELDS_DOC, PruningConfigMixin


@strict
class LlavaNextVideoCodebookConfig(PruningConfigMixin, LlavaNextVideoConfig):
    __doc__ = (
        "A stock `LlavaNextVideoConfig` plus the pruning settings below (`llava_codebook.pruning_config`)."
        + PRUNING_FIELDS_DOC
        + r"""
    Example:

    ```python
    >>> from llava_codebook import LlavaNextVideoCodebookConfig

    >>> config = LlavaNextVideoCodebookConfig(codebook_repo="org/codebook-llava-next-video-7b", codebook_threshold=0.2)
    >>> config.model_type
    'llava_next_video_codebook'
    ```"""
    )

    model_type = "llava_next_video_codebook"


__all__ = ["LlavaNextVideoCodebookConfig"]
