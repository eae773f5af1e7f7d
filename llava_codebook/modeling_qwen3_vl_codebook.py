"""Qwen3-VL with visual token pruning: the stock classes plus the family-independent core (`pruning_core.py`) and the
Qwen-VL layout (`qwen_vl_layout.py`: merged tokens as segments, the full prompt's M-RoPE positions kept).

What Qwen3-VL adds is deepstack: features of intermediate vision layers, one list per such layer with one `[L, D]`
tensor per image (video), are added to the first language-model layers' hidden states at the visual positions. A
dropped token is dropped from every one of those lists too, so each kept token still receives its own deepstack
features at its (compacted) position.
"""

from transformers import Qwen3VLForConditionalGeneration, Qwen3VLModel
from transformers.modeling_outputs import ModelOutput

from .configuration_qwen3_vl_codebook import Qwen3VLCodebookConfig
from .pruning_core import PruningForConditionalGenerationMixin, PruningModelMixin, VisualInputs
from .qwen_vl_layout import QwenVLCodebookCausalLMOutputWithPast, QwenVLCodebookModelOutputWithPast, QwenVLLayout

# Qwen3-VL checkpoints already use transformers' own key layout (`model.language_model.*`, `model.visual.*`): the
# stock classes register no key map, and neither do these.


class Qwen3VLCodebookModel(QwenVLLayout, PruningModelMixin, Qwen3VLModel):
    config_class = Qwen3VLCodebookConfig
    config: Qwen3VLCodebookConfig
    pruning_output_class = QwenVLCodebookModelOutputWithPast

    def kept_encoder_output(self, visual: VisualInputs, keep, merged) -> ModelOutput:
        handoff = super().kept_encoder_output(visual, keep, merged)
        if getattr(handoff, "deepstack_features", None) is not None:
            handoff.deepstack_features = [
                [features[mask.to(features.device)] for features, mask in zip(per_segment, keep)]
                for per_segment in handoff.deepstack_features
            ]
        return handoff


class Qwen3VLCodebookForConditionalGeneration(PruningForConditionalGenerationMixin, Qwen3VLForConditionalGeneration):
    config_class = Qwen3VLCodebookConfig
    config: Qwen3VLCodebookConfig
    pruning_base_class = Qwen3VLCodebookModel
    pruning_output_class = QwenVLCodebookCausalLMOutputWithPast


__all__ = ["Qwen3VLCodebookForConditionalGeneration", "Qwen3VLCodebookModel"]
