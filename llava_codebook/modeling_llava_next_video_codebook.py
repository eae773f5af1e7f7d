"""LLaVA-NeXT-Video with visual token pruning: the stock classes plus the family-independent core (`pruning_core.py`).

Images are LLaVA-NeXT's (AnyRes base view, unpadded tiles, a newline per tile row): their layout is the LLaVA-NeXT
family's own `LlavaNextImageLayout`, used as is. A video is its frames, each pooled by the stock `vision_resampler`
(2 x 2 average pooling in the llava-hf checkpoints: 576 -> 144 tokens per frame), concatenated, with no newline;
the pooled frame tokens are what the language model receives and what is scored.
"""

from dataclasses import dataclass

import torch
from transformers import LlavaNextVideoForConditionalGeneration, LlavaNextVideoModel
from transformers.models.llava_next_video.modeling_llava_next_video import (
    LlavaNextVideoCausalLMOutputWithPast,
    LlavaNextVideoModelOutputWithPast,
)

from .configuration_llava_next_video_codebook import LlavaNextVideoCodebookConfig
from .modeling_llava_next_codebook import LlavaNextImageLayout
from .pruning_core import PruningForConditionalGenerationMixin, PruningModelMixin, VisualInputs
from .pruning_loading import register_stock_checkpoint_layout
from .pruning_settings import VisualTokenSelection

register_stock_checkpoint_layout(LlavaNextVideoCodebookConfig.model_type, "llava_next_video")
# The stock base class's own key mapping, looked up by class name before the model type (see the LLaVA-NeXT family).
register_stock_checkpoint_layout("LlavaNextVideoCodebookModel", "LlavaNextVideoModel")


@dataclass
class LlavaNextVideoCodebookModelOutputWithPast(LlavaNextVideoModelOutputWithPast):
    r"""
    visual_token_selection (`VisualTokenSelection`, *optional*):
        Which packed visual tokens were kept, per image and per video; `None` when nothing was pruned in this call.
    """

    visual_token_selection: VisualTokenSelection | None = None


@dataclass
class LlavaNextVideoCodebookCausalLMOutputWithPast(LlavaNextVideoCausalLMOutputWithPast):
    r"""
    visual_token_selection (`VisualTokenSelection`, *optional*):
        Which packed visual tokens were kept, per image and per video; `None` when nothing was pruned in this call.
        Logits and the loss are over the compacted sequence (dropped placeholders removed, batch re-padded left).
    """

    visual_token_selection: VisualTokenSelection | None = None


class LlavaNextVideoCodebookModel(LlavaNextImageLayout, PruningModelMixin, LlavaNextVideoModel):
    config_class = LlavaNextVideoCodebookConfig
    config: LlavaNextVideoCodebookConfig
    pruning_output_class = LlavaNextVideoCodebookModelOutputWithPast
    pruning_modalities = ("image", "video")

    def encode_for_pruning(self, modality: str, call: dict) -> VisualInputs | None:
        if modality == "video":
            return self._encode_videos(call)
        return super().encode_for_pruning(modality, call)

    def pack_frame_values(self, values: list[torch.Tensor]) -> list[torch.Tensor]:
        """Lay per-frame values (`values[v]`: `[num_frames, tokens_per_frame]`) out in a video's packed order, pooled
        by the stock `vision_resampler` itself. Only for the average and max pooling modes (a learned convolution
        has no meaning on a one-channel map)."""
        return [self.vision_resampler(frames.detach().float().cpu().unsqueeze(-1)).reshape(-1) for frames in values]

    def _encode_videos(self, call: dict) -> VisualInputs | None:
        pixel_values_videos = call.get("pixel_values_videos")
        if pixel_values_videos is None or pixel_values_videos.size(0) == 0:
            return None
        call.pop("pixel_values_videos")
        outputs = self.get_video_features(
            pixel_values_videos,
            vision_feature_layer=call.get("vision_feature_layer"),
            vision_feature_select_strategy=call.get("vision_feature_select_strategy"),
            return_dict=True,
        )
        packed = list(outputs.pooler_output)
        frames = pixel_values_videos.shape[1]
        crop_ids = [torch.arange(frames).repeat_interleave(f.shape[0] // frames) for f in packed]
        linear_pooling = self.config.spatial_pool_mode in ("average", "max")
        return VisualInputs(
            "video",
            self.config.video_token_id,
            packed,
            newline=[torch.zeros(f.shape[0], dtype=torch.bool) for f in packed],
            handoff=outputs,
            crop_ids=crop_ids,
            pack_crop_values=self.pack_frame_values if linear_pooling else None,
        )


class LlavaNextVideoCodebookForConditionalGeneration(
    PruningForConditionalGenerationMixin, LlavaNextVideoForConditionalGeneration
):
    config_class = LlavaNextVideoCodebookConfig
    config: LlavaNextVideoCodebookConfig
    pruning_base_class = LlavaNextVideoCodebookModel
    pruning_output_class = LlavaNextVideoCodebookCausalLMOutputWithPast


__all__ = ["LlavaNextVideoCodebookForConditionalGeneration", "LlavaNextVideoCodebookModel"]
