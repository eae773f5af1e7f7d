"""LLaVA-NeXT with visual token pruning: the stock classes plus the family-independent core (`pruning_core.py`).

What is LLaVA-NeXT-specific is only the layout: every packed image token (base crop, unpadded AnyRes tiles and row
newlines) comes from the stock `get_image_features` / `pack_image_features`, and which of them are row newlines is
found by packing a one-channel marker map with that same stock function, so no layout code is duplicated here.
"""

from dataclasses import dataclass

import torch
from transformers import LlavaNextForConditionalGeneration, LlavaNextModel
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava_next.modeling_llava_next import (
    LlavaNextCausalLMOutputWithPast,
    LlavaNextModelOutputWithPast,
    get_anyres_image_grid_shape,
    image_size_to_num_patches,
)

from .configuration_llava_next_codebook import LlavaNextCodebookConfig
from .pruning_core import PruningForConditionalGenerationMixin, PruningModelMixin, VisualInputs
from .pruning_loading import (
    CODEBOOK_REFERENCE_FIELDS,
    SELF_REPO,
    IncompleteCheckpointError,
    register_stock_checkpoint_layout,
)
from .pruning_settings import PRUNING_FIELDS, PruningSettings, VisualTokenSelection
from .strategies import Segment
from .tile_skipping import anyres_tiles, decide_skips, encode_skipping_tiles, skipped_token_masks, split_crops

register_stock_checkpoint_layout(LlavaNextCodebookConfig.model_type, "llava_next")
# Stock also maps its base model by class name (`LlavaNextModel`: legacy `language_model.model.*` <->
# `language_model.*`), alone and, scoped to `model.`, inside the generation model. Class names are looked up before
# model types, so the base class needs that entry too, or a model built in code would save `language_model.*`.
register_stock_checkpoint_layout("LlavaNextCodebookModel", "LlavaNextModel")


@dataclass
class LlavaNextCodebookModelOutputWithPast(LlavaNextModelOutputWithPast):
    r"""
    visual_token_selection (`VisualTokenSelection`, *optional*):
        Which packed visual tokens were kept, per image; `None` when nothing was pruned in this call.
    """

    visual_token_selection: VisualTokenSelection | None = None


@dataclass
class LlavaNextCodebookCausalLMOutputWithPast(LlavaNextCausalLMOutputWithPast):
    r"""
    visual_token_selection (`VisualTokenSelection`, *optional*):
        Which packed visual tokens were kept, per image; `None` when nothing was pruned in this call. Logits and
        the loss are over the compacted sequence (dropped image placeholders removed, batch re-padded on the left).
    """

    visual_token_selection: VisualTokenSelection | None = None


class LlavaNextImageLayout:
    """LLaVA-NeXT's AnyRes image layout, for a base model whose stock class has LLaVA-NeXT's `get_image_features` and
    `pack_image_features` (LLaVA-NeXT, and LLaVA-NeXT-Video, whose images are LLaVA-NeXT's): the `"image"` modality's
    encoding, its newline masks and crop ids, and the image helpers built on them."""

    def _tokens_per_crop(self, vision_feature_select_strategy: str | None) -> int:
        strategy = vision_feature_select_strategy or self.config.vision_feature_select_strategy
        side = self.config.vision_config.image_size // self.config.vision_config.patch_size
        return side * side + (1 if strategy == "full" else 0)

    def _num_crops(self, image_size) -> int:
        return image_size_to_num_patches(
            image_size, self.config.image_grid_pinpoints, self.config.vision_config.image_size
        )

    def tile_grid(self, image_size) -> tuple[int, int]:
        """`(rows, cols)` of an image's AnyRes tile grid (crops 1.. in row-major order), as the stock packer uses it."""
        rows, cols = get_anyres_image_grid_shape(
            image_size, self.config.image_grid_pinpoints, self.config.vision_config.image_size
        )
        return int(rows), int(cols)

    def pack_crop_values(
        self, values: list[torch.Tensor], image_sizes: torch.Tensor, vision_feature_select_strategy: str | None = None
    ) -> list[torch.Tensor]:
        """Lay per-crop values out in the packed token order, with the stock `pack_image_features` itself.

        `values[i]` is `[num_crops_i, tokens_per_crop]` for image `i` (crop 0 the base view, then the tiles; tokens in
        the crop's raster order, after the feature-select strategy), e.g. a [CLS]-attention map of each crop.
        Returns per image a float32 `[L_i]` in packed order, NaN at the row-newline positions.
        """
        strategy = vision_feature_select_strategy or self.config.vision_feature_select_strategy
        maps = [v.detach().float().cpu().unsqueeze(-1) for v in values]
        packed, _ = self.pack_image_features(
            maps, image_sizes.cpu(), strategy, image_newline=torch.full((1,), torch.nan)
        )
        return [p[:, 0] for p in packed]

    def newline_masks(self, image_sizes: torch.Tensor, vision_feature_select_strategy: str | None = None):
        """Per image, which packed tokens are row newlines (the NaNs of a packed all-zero map)."""
        per_crop = self._tokens_per_crop(vision_feature_select_strategy)
        zeros = [torch.zeros(self._num_crops(size), per_crop) for size in image_sizes]
        return [packed.isnan() for packed in self.pack_crop_values(zeros, image_sizes, vision_feature_select_strategy)]

    def crop_ids(self, image_sizes: torch.Tensor, vision_feature_select_strategy: str | None = None):
        """Per image, the crop each packed token comes from (0 = base view, 1.. = tiles in stock order; -1 = newline)."""
        per_crop = self._tokens_per_crop(vision_feature_select_strategy)
        ids = [torch.arange(self._num_crops(size)).float()[:, None].expand(-1, per_crop) for size in image_sizes]
        packed = self.pack_crop_values(ids, image_sizes, vision_feature_select_strategy)
        return [p.nan_to_num(-1).long() for p in packed]

    tile_skipping_modalities = ("image",)

    def _pop_image_inputs(self, call: dict):
        """`(pixel_values, image_sizes)` popped from `call`, or `None` when it has no images."""
        pixel_values = call.get("pixel_values")
        if pixel_values is None or pixel_values.size(0) == 0:
            return None
        image_sizes = call.get("image_sizes")
        if image_sizes is None:
            raise ValueError(
                "`pixel_values` were given without `image_sizes`: LLaVA-NeXT needs each image's original (height, "
                "width) to unpad its AnyRes tiles. Pass the `image_sizes` the processor returns with `pixel_values` "
                "(`model(**processor(images=..., text=..., return_tensors='pt'))`)."
            )
        return call.pop("pixel_values"), call.pop("image_sizes")

    def encode_for_pruning(self, modality: str, call: dict) -> VisualInputs | None:
        inputs = self._pop_image_inputs(call) if modality == "image" else None
        if inputs is None:
            return None
        pixel_values, image_sizes = inputs
        strategy = call.get("vision_feature_select_strategy")
        outputs = self.get_image_features(
            pixel_values,
            image_sizes,
            vision_feature_layer=call.get("vision_feature_layer"),
            vision_feature_select_strategy=strategy,
            return_dict=True,
        )
        packed = list(outputs.pooler_output)
        return VisualInputs.from_crop_ids(
            "image",
            self.config.image_token_id,
            packed,
            self.crop_ids(image_sizes, strategy),
            outputs,
            mismatch="image_sizes does not describe pixel_values",
            pack_crop_values=lambda values: self.pack_crop_values(values, image_sizes, strategy),
            num_crops=[self._num_crops(size) for size in image_sizes],
            crop_grids=[self.tile_grid(size) for size in image_sizes],
        )

    def tile_regions(self, image_sizes) -> list[torch.BoolTensor]:
        """Per image, `[num_tiles, side * side]`: the base-view tokens in each tile's region (`tile_skipping.py`)."""
        vision = self.config.vision_config
        side = vision.image_size // vision.patch_size
        pinpoints = self.config.image_grid_pinpoints
        return [anyres_tiles(size, pinpoints, vision.image_size).regions(side) for size in image_sizes]

    def _skipped_masks(self, image_sizes, strategy, skipped_tiles, crop_ids) -> list[torch.BoolTensor]:
        return skipped_token_masks(
            lambda values: self.pack_crop_values(values, image_sizes, strategy),
            [self._num_crops(size) for size in image_sizes],
            skipped_tiles,
            self._tokens_per_crop(strategy),
            crop_ids,
        )

    def encode_skipping_tiles(self, modality: str, call: dict, settings: PruningSettings) -> VisualInputs | None:
        inputs = self._pop_image_inputs(call) if modality == "image" else None
        if inputs is None:
            return None
        pixel_values, image_sizes = inputs
        strategy = call.get("vision_feature_select_strategy") or self.config.vision_feature_select_strategy
        layer = call.get("vision_feature_layer")
        layer = self.config.vision_feature_layer if layer is None else layer
        vision = self.config.vision_config
        counts = [self._num_crops(size) for size in image_sizes]
        encoding = encode_skipping_tiles(
            self,
            split_crops(pixel_values, counts),
            self.tile_regions(image_sizes),
            settings,
            vision.image_size // vision.patch_size,
            vision_feature_layer=layer,
            vision_feature_select_strategy=strategy,
        )
        packed, _ = self.pack_image_features(
            encoding.crop_features, image_sizes, strategy, image_newline=self.image_newline
        )
        crop_ids = self.crop_ids(image_sizes, strategy)
        return VisualInputs.from_crop_ids(
            "image",
            self.config.image_token_id,
            packed,
            crop_ids,
            BaseModelOutputWithPooling(pooler_output=packed),
            mismatch="image_sizes does not describe pixel_values",
            num_crops=counts,
            crop_grids=[self.tile_grid(size) for size in image_sizes],
            skipped=self._skipped_masks(image_sizes, strategy, encoding.skipped_tiles, crop_ids),
            skipped_tiles=encoding.skipped_tiles,
        )

    def skip_encoded_tiles(
        self, segments: list[Segment], image_sizes, settings: PruningSettings, vision_feature_select_strategy=None
    ) -> tuple[list[torch.BoolTensor], list[torch.LongTensor]]:
        """Tile skipping for images encoded in full already (an app's cached encodings): per image the packed tokens
        skipping takes away and the tiles it skips, by the rule `encode_skipping_tiles` applies
        (`tile_skipping.decide_skips`) read on the base view's packed tokens. Encoded crops do not depend on one
        another, so `select_segments(segments, settings, *these)` is what the model selects with skipping on (up to
        the rounding of a different tower batch)."""
        strategy = vision_feature_select_strategy or self.config.vision_feature_select_strategy
        vision = self.config.vision_config
        bases = torch.stack([s.features[(s.crop_ids == 0).to(s.features.device)] for s in segments])
        regions = self.tile_regions(image_sizes)
        skipped_tiles = decide_skips(self, bases, regions, settings, vision.image_size // vision.patch_size)
        crop_ids = [s.crop_ids for s in segments]
        return self._skipped_masks(image_sizes, strategy, skipped_tiles, crop_ids), skipped_tiles

    def select_visual_tokens(
        self,
        packed_features: list[torch.Tensor],
        image_sizes: torch.Tensor,
        settings: PruningSettings | None = None,
        vision_feature_select_strategy: str | None = None,
    ) -> VisualTokenSelection:
        """Choose the kept tokens of already-encoded images (`get_image_features(...).pooler_output`)."""
        settings = settings or self.pruning_settings()
        crop_ids = self.crop_ids(image_sizes, vision_feature_select_strategy)
        if len(crop_ids) != len(packed_features):
            raise ValueError(f"Got {len(packed_features)} packed images but {len(crop_ids)} image sizes.")
        segments = [
            Segment(f, (c < 0).to(f.device), "image", crop_ids=c.to(f.device))
            for f, c in zip(packed_features, crop_ids)
        ]
        return self.select_segments(segments, settings)

    def prepare_pruned_inputs(
        self,
        input_ids,
        pixel_values,
        image_sizes,
        settings: PruningSettings,
        attention_mask=None,
        position_ids=None,
        labels=None,
        pad_token_id: int = 0,
        inputs_embeds=None,
    ) -> tuple[dict, VisualTokenSelection]:
        """The compacted keyword arguments for the stock `forward` / `generate` and the selection, for `settings`."""
        call = dict(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            pixel_values=pixel_values,
            image_sizes=image_sizes,
            attention_mask=attention_mask,
            position_ids=position_ids,
            labels=labels,
            **{name: getattr(settings, name) for name in PRUNING_FIELDS},
        )
        selection = self.prune_call(call, None, pad_token_id)
        return call, selection


class LlavaNextCodebookModel(LlavaNextImageLayout, PruningModelMixin, LlavaNextModel):
    config_class = LlavaNextCodebookConfig
    config: LlavaNextCodebookConfig
    pruning_output_class = LlavaNextCodebookModelOutputWithPast
    pruning_modalities = ("image",)


class LlavaNextCodebookForConditionalGeneration(
    PruningForConditionalGenerationMixin, LlavaNextForConditionalGeneration
):
    config_class = LlavaNextCodebookConfig
    config: LlavaNextCodebookConfig
    pruning_base_class = LlavaNextCodebookModel
    pruning_output_class = LlavaNextCodebookCausalLMOutputWithPast

    def select_visual_tokens(self, packed_features, image_sizes, settings=None, vision_feature_select_strategy=None):
        return self.model.select_visual_tokens(packed_features, image_sizes, settings, vision_feature_select_strategy)


__all__ = [
    "CODEBOOK_REFERENCE_FIELDS",
    "IncompleteCheckpointError",
    "LlavaNextCodebookForConditionalGeneration",
    "LlavaNextCodebookModel",
    "LlavaNextImageLayout",
    "PruningSettings",
    "SELF_REPO",
    "VisualTokenSelection",
]
