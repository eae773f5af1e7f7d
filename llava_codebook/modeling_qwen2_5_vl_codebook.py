"""Qwen2.5-VL with visual token pruning: the stock classes plus the family-independent core (`pruning_core.py`) and the
Qwen-VL layout (`qwen_vl_layout.py`: merged tokens as segments, the full prompt's M-RoPE positions kept)."""

from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLModel

from .configuration_qwen2_5_vl_codebook import Qwen2_5_VLCodebookConfig
from .pruning_core import PruningForConditionalGenerationMixin, PruningModelMixin
from .pruning_loading import register_stock_checkpoint_layout
from .qwen_vl_layout import QwenVLCodebookCausalLMOutputWithPast, QwenVLCodebookModelOutputWithPast, QwenVLLayout

# The Hub's Qwen2.5-VL checkpoints keep the pre-5 key layout (`model.layers.*`, `visual.*`, `lm_head.*`); the stock
# classes map it by class name, so the project's classes register the same maps under their own names.
register_stock_checkpoint_layout("Qwen2_5_VLCodebookForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration")
register_stock_checkpoint_layout("Qwen2_5_VLCodebookModel", "Qwen2_5_VLModel")


class Qwen2_5_VLCodebookModel(QwenVLLayout, PruningModelMixin, Qwen2_5_VLModel):
    config_class = Qwen2_5_VLCodebookConfig
    config: Qwen2_5_VLCodebookConfig
    pruning_output_class = QwenVLCodebookModelOutputWithPast


class Qwen2_5_VLCodebookForConditionalGeneration(
    PruningForConditionalGenerationMixin, Qwen2_5_VLForConditionalGeneration
):
    config_class = Qwen2_5_VLCodebookConfig
    config: Qwen2_5_VLCodebookConfig
    pruning_base_class = Qwen2_5_VLCodebookModel
    pruning_output_class = QwenVLCodebookCausalLMOutputWithPast


__all__ = ["Qwen2_5_VLCodebookForConditionalGeneration", "Qwen2_5_VLCodebookModel"]
