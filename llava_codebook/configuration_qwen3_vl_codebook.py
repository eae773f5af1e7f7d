"""Configuration of a Qwen3-VL model that prunes redundant visual tokens before the language model sees them."""

from huggingface_hub.dataclasses import strict
from transformers import Qwen3VLConfig

from .pruning_config import PRUNING_FIELDS_DOC, LayoutPositionsConfigMixin, PruningConfigMixin


@strict
class Qwen3VLCodebookConfig(LayoutPositionsConfigMixin, PruningConfigMixin, Qwen3VLConfig):
    __doc__ = (
        "A stock `Qwen3VLConfig` plus the pruning settings below (`llava_codebook.pruning_config`). Kept tokens keep "
        'the 3-D (M-RoPE) positions of the full prompt, so `position_mode` is always `"original"`.'
        + PRUNING_FIELDS_DOC
        + r"""
    Example:

    ```python
    >>> from llava_codebook import Qwen3VLCodebookConfig

    >>> config = Qwen3VLCodebookConfig(codebook_repo="org/codebook-qwen3-vl", pruning_mode="budget", keep_ratio=0.25)
    >>> config.model_type, config.position_mode
    ('qwen3_vl_codebook', 'original')
    ```"""
    )

    model_type = "qwen3_vl_codebook"
    # Each image is one grid of merged tokens at its own resolution: no AnyRes tiles, so `tile_skipping=True` is
    # refused.
    has_image_tiles = False


__all__ = ["Qwen3VLCodebookConfig"]
