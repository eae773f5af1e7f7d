"""LLaVA (1.5) with visual token pruning: the stock classes plus the family-independent core (`pruning_core.py`).

The layout is the simplest of the families: each image is one square view (336 px, 24 x 24 = 576 tokens for the
llava-hf checkpoints) whose post-projector tokens reach the language model in raster order, with no newline tokens.
The tokens come from the stock `get_image_features`; nothing here re-implements the vision path.
"""

from dataclasses import dataclass

import torch
from transformers import LlavaForConditionalGeneration, LlavaModel
from transformers.models.llava.modeling_llava import LlavaCausalLMOutputWithPast, LlavaModelOutputWithPast

from .configuration_llava_codebook import LlavaCodebookConfig
from .pruning_core import PruningForConditionalGenerationMixin, PruningModelMixin, VisualInputs
from .pruning_loading import register_stock_checkpoint_layout
from .pruning_settings import VisualTokenSelection

register_stock_checkpoint_layout(LlavaCodebookConfig.model_type, "llava")
# The stock base class's own key mapping, looked up by class name before the model type (see the LLaVA-NeXT family).
register_stock_checkpoint_layout("LlavaCodebookModel", "LlavaModel")


@dataclass
class LlavaCodebookModelOutputWithPast(LlavaModelOutputWithPast):
    r"""
    visual_token_selection (`VisualTokenSelection`, *optional*):
        Which visual tokens were kept, per image; `None` when nothing was pruned in this call.
    """

    visual_token_selection: VisualTokenSelection | None = None


@dataclass
class LlavaCodebookCausalLMOutputWithPast(LlavaCausalLMOutputWithPast):
    r"""
    visual_token_selection (`VisualTokenSelection`, *optional*):
        Which visual tokens were kept, per image; `None` when nothing was pruned in this call. Logits and the loss
        are over the compacted sequence (dropped image placeholders removed, batch re-padded on the left).
    """

    visual_token_selection: VisualTokenSelection | None = None


class LlavaCodebookModel(PruningModelMixin, LlavaModel):
    config_class = LlavaCodebookConfig
    config: LlavaCodebookConfig
    pruning_output_class = LlavaCodebookModelOutputWithPast
    pruning_modalities = ("image",)

    def encode_for_pruning(self, modality: str, call: dict) -> VisualInputs | None:
        pixel_values = call.get("pixel_values")
        if modality != "image" or pixel_values is None or pixel_values.size(0) == 0:
            return None
        call.pop("pixel_values")
        # Only vision towers with variable-size views (Pixtral) take image sizes; the stock model splits by them.
        image_sizes = call.pop("image_sizes", None)
        outputs = self.get_image_features(
            pixel_values,
            vision_feature_layer=call.get("vision_feature_layer"),
            vision_feature_select_strategy=call.get("vision_feature_select_strategy"),
            image_sizes=image_sizes,
            return_dict=True,
        )
        packed = list(outputs.pooler_output)
        # One view per image, in raster order: every token comes from view 0, none is a newline, and a value computed
        # per vision-tower token is already in packed order.
        return VisualInputs.from_crop_ids(
            "image",
            self.config.image_token_id,
            packed,
            [torch.zeros(f.shape[0], dtype=torch.long) for f in packed],
            outputs,
            mismatch="the encoder's output does not match its own layout",
            pack_crop_values=lambda values: [v.detach().float().cpu().reshape(-1) for v in values],
            num_crops=[1] * len(packed),
        )


class LlavaCodebookForConditionalGeneration(PruningForConditionalGenerationMixin, LlavaForConditionalGeneration):
    config_class = LlavaCodebookConfig
    config: LlavaCodebookConfig
    pruning_base_class = LlavaCodebookModel
    pruning_output_class = LlavaCodebookCausalLMOutputWithPast


__all__ = ["LlavaCodebookForConditionalGeneration", "LlavaCodebookModel"]
