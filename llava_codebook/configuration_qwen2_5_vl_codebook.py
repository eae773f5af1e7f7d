"""Configuration of a Qwen2.5-VL model that prunes redundant visual tokens before the language model sees them."""

from huggingface_hub.dataclasses import strict
from transformers import Qwen2_5_VLConfig

from .pruning_config import PRUNING_FIELDS_DOC, LayoutPositionsConfigMixin, PruningConfigMixin


@strict
class Qwen2_5_VLCodebookConfig(LayoutPositionsConfigMixin, PruningConfigMixin, Qwen2_5_VLConfig):
    __doc__ = (
        "A stock `Qwen2_5_VLConfig` plus the pruning settings below (`llava_codebook.pruning_config`). Kept tokens "
        'keep the 3-D (M-RoPE) positions of the full prompt, so `position_mode` is always `"original"`.'
        + PRUNING_FIELDS_DOC
        + r"""
    Example:

    ```python
    >>> from llava_codebook import Qwen2_5_VLCodebookConfig

    >>> config = Qwen2_5_VLCodebookConfig(codebook_repo="org/codebook-qwen2.5-vl", keep_ratio=0.25)
    >>> config.model_type, config.position_mode
    ('qwen2_5_vl_codebook', 'original')
    ```"""
    )

    model_type = "qwen2_5_vl_codebook"
    # Each image is one grid of merged tokens at its own resolution: no AnyRes tiles, so `tile_skipping=True` is
    # refused.
    has_image_tiles = False


__all__ = ["Qwen2_5_VLCodebookConfig"]
