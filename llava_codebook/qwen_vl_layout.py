"""What the Qwen-VL families (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) state to the family-independent core.

- **Segments.** The vision encoder merges each 2 x 2 block of patches (`spatial_merge_size`) into one token of the
  language model's space; an image's merged tokens (its grid in raster order) are one segment, a video's (temporal
  patch by temporal patch, each in raster order) another. Every token comes from the stock `get_image_features` /
  `get_video_features`; a token's crop is its temporal patch (0 for an image). There are no newline tokens.
- **Positions (M-RoPE).** The stock model gives every token a 3-D (t, h, w) position derived from the full prompt's
  layout (`get_rope_index`: the image and video grids, `second_per_grid_ts`). Those positions are computed once on
  the full prompt and compacted with it, so each kept visual token and every text token keeps the position the stock
  model gives it in the unpruned prompt; decoding continues from the last one as the stock `generate` does.
- **No tower signals.** The Qwen ViT has no [CLS] token and merges patches before the language model, so the
  strategies that read [CLS] attention (`cls_attention`, `visionzip`, `hired`) are not offered and are refused.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_outputs import MultimodalBaseModelOutputWithPast, MultimodalCausalLMOutputWithPast

from .pruning_config import check_layout_position_mode
from .pruning_core import VisualInputs
from .pruning_settings import PruningSettings, VisualTokenSelection


@dataclass
class QwenVLCodebookModelOutputWithPast(MultimodalBaseModelOutputWithPast):
    r"""
    visual_token_selection (`VisualTokenSelection`, *optional*):
        Which merged visual tokens were kept, per image and per video; `None` when nothing was pruned in this call.
    """

    visual_token_selection: VisualTokenSelection | None = None


@dataclass
class QwenVLCodebookCausalLMOutputWithPast(MultimodalCausalLMOutputWithPast):
    r"""
    visual_token_selection (`VisualTokenSelection`, *optional*):
        Which merged visual tokens were kept, per image and per video; `None` when nothing was pruned in this call.
        Logits and the loss are over the compacted sequence (dropped placeholders removed, batch re-padded left).
    """

    visual_token_selection: VisualTokenSelection | None = None


# modality -> (pixel input, grid input) of the stock forward
_INPUTS = {"image": ("pixel_values", "image_grid_thw"), "video": ("pixel_values_videos", "video_grid_thw")}


class QwenVLLayout:
    """The Qwen-VL layout, for a base model whose stock class is `Qwen2VLModel`, `Qwen2_5_VLModel` or `Qwen3VLModel`
    (`XCodebookModel(QwenVLLayout, PruningModelMixin, StockXModel)`)."""

    pruning_modalities = ("image", "video")
    # Merged tokens are 2 x 2 blocks of tower tokens: no tower signal maps onto one of them.
    tower_signal_modalities = ()

    def vision_tower_has_cls_token(self) -> bool:
        return False

    def pruning_vision_tower(self) -> nn.Module:
        # The tower ends in its 2 x 2 merger (the projector), which `visual` runs as part of its forward.
        return self.visual

    def pruning_vision_layers(self) -> nn.ModuleList:
        return self.visual.blocks

    def pruning_projector(self) -> nn.Module:
        return self.visual.merger

    def encode_for_pruning(self, modality: str, call: dict) -> VisualInputs | None:
        if modality not in _INPUTS:
            return None
        pixels_name, grid_name = _INPUTS[modality]
        pixels = call.get(pixels_name)
        if pixels is None or pixels.numel() == 0:
            return None
        grid = call.get(grid_name)
        if grid is None:
            raise ValueError(
                f"`{pixels_name}` were given without `{grid_name}`: the Qwen-VL encoder needs each {modality}'s "
                f"(t, h, w) patch grid. Pass the `{grid_name}` the processor returns with `{pixels_name}`."
            )
        # The grid stays in the call: the prompt's positions are derived from it (`prompt_position_ids`).
        call.pop(pixels_name)
        encode = self.get_image_features if modality == "image" else self.get_video_features
        outputs = encode(pixels, grid, return_dict=True)
        packed = list(outputs.pooler_output)
        merged = self.config.vision_config.spatial_merge_size**2
        crop_ids = [torch.arange(int(t)).repeat_interleave(int(h) * int(w) // merged) for t, h, w in grid.tolist()]
        return VisualInputs.from_crop_ids(
            modality,
            getattr(self.config, f"{modality}_token_id"),
            packed,
            crop_ids,
            outputs,
            mismatch=f"{grid_name} does not describe {pixels_name}",
        )

    def prompt_position_ids(self, call: dict, attention_mask: torch.Tensor, settings: PruningSettings) -> torch.Tensor:
        """`[3, B, S]`: the (t, h, w) position the stock model gives every token of the full prompt."""
        check_layout_position_mode(settings.position_mode, type(self).__name__)
        input_ids = call.get("input_ids")
        if input_ids is None:
            # With `inputs_embeds` alone the stock `generate` has no layout to read and numbers the real tokens
            # 0, 1, ... on every axis; the kept tokens keep those numbers.
            text = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
            return text[None].expand(3, -1, -1)
        token_types = call.get("mm_token_type_ids")
        if token_types is None:
            raise ValueError(
                "Images or videos were given without `mm_token_type_ids`: the model derives every token's 3-D "
                "(M-RoPE) position from which tokens are image and video tokens. Pass the `mm_token_type_ids` the "
                "processor returns with `input_ids`."
            )
        grids = {name: call.get(name) for name in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")}
        positions, _ = self.get_rope_index(
            input_ids,
            mm_token_type_ids=token_types,
            attention_mask=attention_mask,
            **{name: value for name, value in grids.items() if value is not None},
        )
        return positions


__all__ = ["QwenVLCodebookCausalLMOutputWithPast", "QwenVLCodebookModelOutputWithPast", "QwenVLLayout"]
