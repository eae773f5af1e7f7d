"""Qwen2-VL with visual token pruning: the stock classes plus the family-independent core (`pruning_core.py`) and the
Qwen-VL layout (`qwen_vl_layout.py`: merged tokens as segments, the full prompt's M-RoPE positions kept)."""

from transformers import Qwen2VLForConditionalGeneration, Qwen2VLModel

from .configuration_qwen2_vl_codebook import Qwen2VLCodebookConfig
from .pruning_core import PruningForConditionalGenerationMixin, PruningModelMixin
from .pruning_loading import register_stock_checkpoint_layout
from .qwen_vl_layout import QwenVLCodebookCausalLMOutputWithPast, QwenVLCodebookModelOutputWithPast, QwenVLLayout

# The Hub's Qwen2-VL checkpoints keep the pre-5 key layout (`model.layers.*`, `visual.*`, `lm_head.*`); the stock
# classes map it by class name, so the project's classes register the same maps under their own names.
register_stock_checkpoint_layout("Qwen2VLCodebookForConditionalGeneration", "Qwen2VLForConditionalGeneration")
register_stock_checkpoint_layout("Qwen2VLCodebookModel", "Qwen2VLModel")


class Qwen2VLCodebookModel(QwenVLLayout, PruningModelMixin, Qwen2VLModel):
    config_class = Qwen2VLCodebookConfig
    config: Qwen2VLCodebookConfig
    pruning_output_class = QwenVLCodebookModelOutputWithPast


class Qwen2VLCodebookForConditionalGeneration(PruningForConditionalGenerationMixin, Qwen2VLForConditionalGeneration):
    config_class = Qwen2VLCodebookConfig
    config: Qwen2VLCodebookConfig
    pruning_base_class = Qwen2VLCodebookModel
    pruning_output_class = QwenVLCodebookCausalLMOutputWithPast


__all__ = ["Qwen2VLCodebookForConditionalGeneration", "Qwen2VLCodebookModel"]
