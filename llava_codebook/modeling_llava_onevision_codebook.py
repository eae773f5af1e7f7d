"""LLaVA-OneVision with visual token pruning: the stock classes plus the family-independent core (`pruning_core.py`).

What is OneVision-specific is the layout, and every packed token comes from the stock model's own code:

- an image alone in its prompt is AnyRes-max-9: the base view (27 x 27 = 729 tokens at 384 px), then the unpadded
  tile grid row by row, each row followed by the `image_newline` token, the grid first shrunk bilinearly to about
  nine crops' worth of tokens when larger (`pack_image_features`); an image sharing its prompt with others is its
  base view plus one newline. Which packed tokens are newlines, and which crop each comes from, is found by packing a
  one-channel marker map with that same stock function;
- a video is its frames, each pooled 2 x 2 by the stock `get_video_features` (729 -> 196 tokens), concatenated, then
  one trailing newline. The pooled frame tokens are what the language model receives and what is scored, as the
  release does; the trailing newline is protected like a row newline.
"""

from dataclasses import dataclass

import torch
from transformers import LlavaOnevisionForConditionalGeneration, LlavaOnevisionModel
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava_onevision.modeling_llava_onevision import (
    LlavaOnevisionCausalLMOutputWithPast,
    LlavaOnevisionModelOutputWithPast,
    image_size_to_num_patches,
)

from .configuration_llava_onevision_codebook import LlavaOnevisionCodebookConfig
from .pruning_core import PruningForConditionalGenerationMixin, PruningModelMixin, VisualInputs
from .pruning_loading import register_stock_checkpoint_layout
from .pruning_settings import VisualTokenSelection
from .tile_skipping import anyres_tiles, decide_skips, encode_skipping_tiles, skipped_token_masks, split_crops

register_stock_checkpoint_layout(LlavaOnevisionCodebookConfig.model_type, "llava_onevision")
# The stock base class's own key mapping, looked up by class name before the model type (see the LLaVA-NeXT family).
register_stock_checkpoint_layout("LlavaOnevisionCodebookModel", "LlavaOnevisionModel")


@dataclass
class LlavaOnevisionCodebookModelOutputWithPast(LlavaOnevisionModelOutputWithPast):
    r"""
    visual_token_selection (`VisualTokenSelection`, *optional*):
        Which packed visual tokens were kept, per image and per video; `None` when nothing was pruned in this call.
    """

    visual_token_selection: VisualTokenSelection | None = None


@dataclass
class LlavaOnevisionCodebookCausalLMOutputWithPast(LlavaOnevisionCausalLMOutputWithPast):
    r"""
    visual_token_selection (`VisualTokenSelection`, *optional*):
        Which packed visual tokens were kept, per image and per video; `None` when nothing was pruned in this call.
        Logits and the loss are over the compacted sequence (dropped placeholders removed, batch re-padded left).
    """

    visual_token_selection: VisualTokenSelection | None = None


class LlavaOnevisionCodebookModel(PruningModelMixin, LlavaOnevisionModel):
    config_class = LlavaOnevisionCodebookConfig
    config: LlavaOnevisionCodebookConfig
    pruning_output_class = LlavaOnevisionCodebookModelOutputWithPast
    pruning_modalities = ("image", "video")
    # Large images' tile grids are resized after the tower, and video frames pooled: no packed token maps onto one
    # tower token, so no tower signal can be handed over (SigLIP has no [CLS] token either).
    tower_signal_modalities = ()
    tile_skipping_modalities = ("image",)

    def encode_for_pruning(self, modality: str, call: dict) -> VisualInputs | None:
        if modality == "image":
            return self._encode_images(call)
        if modality == "video":
            return self._encode_videos(call)
        return None

    def stock_encoder_outputs(self, mm_encoder_outputs: dict) -> dict:
        # The stock forward reads videos as one `[num_videos, tokens, dim]` tensor (`pooler_output.flatten(0, 1)`);
        # pruned videos differ in length, so they travel as one row holding every video's kept tokens in order.
        video = mm_encoder_outputs.get("video")
        if video is None or isinstance(video.pooler_output, torch.Tensor):
            return mm_encoder_outputs
        batched = type(video)(**{**video, "pooler_output": torch.cat(list(video.pooler_output))[None]})
        return {**mm_encoder_outputs, "video": batched}

    # ------------------------------------------------------------------ images
    def _crops_per_image(self, image_sizes, batch_num_images) -> list[int]:
        """Crops of each image in `pixel_values`, as the stock `get_image_features` counts them: AnyRes crops for an
        image alone in its prompt, the base view only for an image of a multi-image prompt."""
        alone = (
            [True] * len(image_sizes)
            if batch_num_images is None
            else [n == 1 for n in batch_num_images for _ in range(n)]
        )
        return [
            image_size_to_num_patches(size, self.config.image_grid_pinpoints, self.config.vision_config.image_size)
            if single
            else 1
            for size, single in zip(image_sizes, alone)
        ]

    def pack_crop_values(
        self, values: list[torch.Tensor], image_sizes, batch_num_images=None, vision_aspect_ratio: str | None = None
    ) -> list[torch.Tensor]:
        """Lay per-crop values (`values[i]`: `[num_crops_i, tokens_per_crop]`, crop 0 the base view) out in the packed
        order with the stock `pack_image_features`, NaN at the newlines. Where the stock packer shrinks the tile grid
        bilinearly, the values are interpolated with it."""
        maps = [v.detach().float().cpu().unsqueeze(-1) for v in values]
        packed, _ = self.pack_image_features(
            maps,
            torch.as_tensor(image_sizes).cpu(),
            image_newline=torch.full((1,), torch.nan),
            vision_aspect_ratio=vision_aspect_ratio or self.config.vision_aspect_ratio,
        )
        return [p[:, 0] for p in packed]

    def image_crop_ids(self, image_sizes, batch_num_images=None, vision_aspect_ratio=None) -> list[torch.Tensor]:
        """Per image, the crop each packed token comes from (0 = base view, 1.. = tiles; -1 = newline). A token of a
        grid the stock packer shrank gets the crop it mostly comes from."""
        side = self.config.vision_config.image_size // self.config.vision_config.patch_size
        ids = [
            torch.arange(n).float()[:, None].expand(-1, side * side)
            for n in self._crops_per_image(image_sizes, batch_num_images)
        ]
        packed = self.pack_crop_values(ids, image_sizes, batch_num_images, vision_aspect_ratio)
        return [p.nan_to_num(-1).round().long() for p in packed]

    def _pop_image_inputs(self, call: dict):
        """`(pixel_values, image_sizes, batch_num_images)` popped from `call`, or `None` when it has no images."""
        pixel_values = call.get("pixel_values")
        if pixel_values is None or pixel_values.size(0) == 0:
            return None
        image_sizes = call.get("image_sizes")
        if image_sizes is None:
            raise ValueError(
                "`pixel_values` were given without `image_sizes`: LLaVA-OneVision needs each image's original (height, "
                "width) to lay out its AnyRes tiles. Pass the `image_sizes` the processor returns with `pixel_values`."
            )
        return call.pop("pixel_values"), call.pop("image_sizes"), call.pop("batch_num_images", None)

    def _encode_images(self, call: dict) -> VisualInputs | None:
        inputs = self._pop_image_inputs(call)
        if inputs is None:
            return None
        pixel_values, image_sizes, batch_num_images = inputs
        aspect = call.get("vision_aspect_ratio")
        outputs = self.get_image_features(
            pixel_values,
            image_sizes,
            vision_feature_layer=call.get("vision_feature_layer"),
            vision_feature_select_strategy=call.get("vision_feature_select_strategy"),
            vision_aspect_ratio=aspect,
            batch_num_images=batch_num_images,
            return_dict=True,
        )
        packed = list(outputs.pooler_output)
        return VisualInputs.from_crop_ids(
            "image",
            self.config.image_token_id,
            packed,
            self.image_crop_ids(image_sizes, batch_num_images, aspect),
            outputs,
            mismatch="image_sizes / batch_num_images do not describe pixel_values",
            pack_crop_values=lambda values: self.pack_crop_values(values, image_sizes, batch_num_images, aspect),
        )

    def tile_regions(self, image_sizes, batch_num_images=None) -> list[torch.BoolTensor | None]:
        """Per image, `[num_tiles, side * side]`: the base-view tokens in each tile's region (`tile_skipping.py`);
        `None` for an image of a multi-image prompt, which is its base view alone."""
        vision = self.config.vision_config
        side = vision.image_size // vision.patch_size
        pinpoints = self.config.image_grid_pinpoints
        return [
            anyres_tiles(size, pinpoints, vision.image_size).regions(side) if crops > 1 else None
            for size, crops in zip(image_sizes, self._crops_per_image(image_sizes, batch_num_images))
        ]

    def _skipped_masks(self, image_sizes, batch_num_images, aspect, skipped_tiles, crop_ids):
        side = self.config.vision_config.image_size // self.config.vision_config.patch_size
        return skipped_token_masks(
            lambda values: self.pack_crop_values(values, image_sizes, batch_num_images, aspect),
            self._crops_per_image(image_sizes, batch_num_images),
            skipped_tiles,
            side * side,
            crop_ids,
        )

    def encode_skipping_tiles(self, modality: str, call: dict, settings) -> VisualInputs | None:
        inputs = self._pop_image_inputs(call) if modality == "image" else None
        if inputs is None:
            return None
        pixel_values, image_sizes, batch_num_images = inputs
        aspect = call.get("vision_aspect_ratio") or self.config.vision_aspect_ratio
        layer = call.get("vision_feature_layer")
        layer = self.config.vision_feature_layer if layer is None else layer
        select = call.get("vision_feature_select_strategy") or self.config.vision_feature_select_strategy
        vision = self.config.vision_config
        counts = self._crops_per_image(image_sizes, batch_num_images)
        regions = self.tile_regions(image_sizes, batch_num_images)
        encoding = encode_skipping_tiles(
            self,
            split_crops(pixel_values, counts),
            regions,
            settings,
            vision.image_size // vision.patch_size,
            vision_feature_layer=layer,
            vision_feature_select_strategy=select,
        )
        packed, _ = self.pack_image_features(
            encoding.crop_features, image_sizes, image_newline=self.image_newline, vision_aspect_ratio=aspect
        )
        crop_ids = self.image_crop_ids(image_sizes, batch_num_images, aspect)
        return VisualInputs.from_crop_ids(
            "image",
            self.config.image_token_id,
            packed,
            crop_ids,
            BaseModelOutputWithPooling(pooler_output=packed),
            mismatch="image_sizes / batch_num_images do not describe pixel_values",
            pack_crop_values=lambda values: self.pack_crop_values(values, image_sizes, batch_num_images, aspect),
            skipped=self._skipped_masks(image_sizes, batch_num_images, aspect, encoding.skipped_tiles, crop_ids),
            skipped_tiles=[
                tiles if region is not None else None for tiles, region in zip(encoding.skipped_tiles, regions)
            ],
        )

    def skip_encoded_tiles(
        self, segments, image_sizes, settings, batch_num_images=None, vision_aspect_ratio=None
    ) -> tuple[list[torch.BoolTensor], list[torch.LongTensor | None]]:
        """Tile skipping for images encoded in full already (see the LLaVA-NeXT family's `skip_encoded_tiles`)."""
        aspect = vision_aspect_ratio or self.config.vision_aspect_ratio
        vision = self.config.vision_config
        side = vision.image_size // vision.patch_size
        bases = torch.stack([s.features[(s.crop_ids == 0).to(s.features.device)][-side * side :] for s in segments])
        regions = self.tile_regions(image_sizes, batch_num_images)
        skipped_tiles = decide_skips(self, bases, regions, settings, side)
        masks = self._skipped_masks(
            image_sizes, batch_num_images, aspect, skipped_tiles, [s.crop_ids for s in segments]
        )
        return masks, [tiles if region is not None else None for tiles, region in zip(skipped_tiles, regions)]

    # ------------------------------------------------------------------ videos
    def pack_frame_values(self, values: list[torch.Tensor]) -> list[torch.Tensor]:
        """Lay per-frame values (`values[v]`: `[num_frames, tokens_per_frame]`) out in a video's packed order: pooled
        2 x 2 with the stock `apply_pooling`, frames concatenated, NaN for the trailing newline."""
        out = []
        for frames in values:
            pooled = self.apply_pooling(frames.detach().float().cpu().unsqueeze(-1)).reshape(-1)
            out.append(torch.cat([pooled, torch.full((1,), torch.nan)]))
        return out

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
        crop_ids = []
        for features in packed:
            per_frame, remainder = divmod(features.shape[0] - 1, frames)
            if remainder:
                raise ValueError(f"A video has {features.shape[0]} tokens, not {frames} pooled frames plus a newline.")
            crop_ids.append(torch.cat([torch.arange(frames).repeat_interleave(per_frame), torch.full((1,), -1)]))
        return VisualInputs.from_crop_ids(
            "video",
            self.config.video_token_id,
            packed,
            crop_ids,
            outputs,
            mismatch="pixel_values_videos does not describe the encoded video",
            pack_crop_values=self.pack_frame_values,
        )


class LlavaOnevisionCodebookForConditionalGeneration(
    PruningForConditionalGenerationMixin, LlavaOnevisionForConditionalGeneration
):
    config_class = LlavaOnevisionCodebookConfig
    config: LlavaOnevisionCodebookConfig
    pruning_base_class = LlavaOnevisionCodebookModel
    pruning_output_class = LlavaOnevisionCodebookCausalLMOutputWithPast


__all__ = ["LlavaOnevisionCodebookForConditionalGeneration", "LlavaOnevisionCodebookModel"]
