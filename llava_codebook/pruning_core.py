"""The family-independent pruning core: every pruning-enabled class is a stock class plus these mixins.

What lives here, once for every family: encoding a call's visual inputs (with the vision-tower signals a strategy
asks for), selection through the strategy registry (`strategies.py`), and prompt compaction: the placeholders of
dropped tokens and the padding (positions the attention mask zeroes) are removed from `input_ids` / `inputs_embeds`
(with the mask, position ids and labels), so each row is its real tokens only, the batch is re-padded on the left to
its longest row, and the encoded, pruned visual features are handed to the stock `forward` / `generate` as
`mm_encoder_outputs`, so everything downstream sees one prompt no wider than it needs to be. Beside it:
`pruning_loading.py` (strict checkpoint loading, the stock key layout, the codebook reference) and
`pruning_settings.py` (the settings in force for a call, the per-thread switches, the selection report).

What a family states (see `modeling_llava_next_codebook.py`): which modalities it prunes (`"image"`, `"video"`), how one
modality is encoded into per-segment packed features with their row-newline masks (`encode_for_pruning`; a segment is
one image or one video), its output classes, and the wiring of its two classes. A family whose stock `forward` reads a
modality's features from a container other than the per-segment list the core hands over says so in
`stock_encoder_outputs`; one whose stock model derives positions from the full prompt's layout (Qwen-VL's M-RoPE)
states them in `prompt_position_ids`; one whose encoder output carries further per-token features (Qwen3-VL's
deepstack) prunes them in `kept_encoder_output`. Nothing here knows a family's layout.
"""

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers.generation.utils import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput
from transformers.modeling_outputs import ModelOutput

from .pruning_loading import CODEBOOK_REFERENCE_FIELDS, CheckpointMixin, CodebookHolderMixin
from .pruning_settings import (
    PRUNING_FIELDS,
    CodebookGenerateBeamDecoderOnlyOutput,
    CodebookGenerateDecoderOnlyOutput,
    PruningSettings,
    SettingsMixin,
    VisualTokenSelection,
)
from .signals import SignalRequest, capture_tower_signals, pack_tower_signals
from .strategies import STRATEGIES, Segment
from .tile_skipping import select_around_skipped


@dataclass
class VisualInputs:
    """One modality of one call, encoded by the family: what the core needs to select and hand over.

    token_id: the placeholder token of this modality in `input_ids`.
    packed: per segment, `[L, D]` post-projector tokens in the order the stock model scatters them.
    newline: per segment, `[L]` bool mask of row-newline tokens.
    handoff: the stock encoder output that `forward(mm_encoder_outputs={modality: handoff})` accepts; its
        `pooler_output` is replaced by the kept features.
    crop_ids: per segment, `[L]` long: the crop (view, tile or frame) each packed token comes from, -1 for newlines.
    pack_crop_values: lays per-segment `[num_crops, tokens_per_crop]` values (computed on the vision tower's crops,
        e.g. a [CLS]-attention map) out in packed order, NaN at newlines; how a strategy that scores tokens inside
        the vision tower maps its scores onto what the language model receives.
    num_crops: per segment, how many consecutive crops of the vision tower's batch it was encoded from; needed to
        hand a strategy signals captured inside the tower (`signals.py`).
    crop_grids: per segment, `(rows, cols)` of its tile grid when the crops after the first are tiles in row-major
        order (LLaVA-NeXT AnyRes), else `None`.
    signals: per segment, the vision-tower signals a strategy asked for (`signals.py`), in packed order; set by the
        core when the active strategy needs any.
    skipped: per segment, `[L]` bool mask of the packed tokens tile skipping took away (`tile_skipping.py`), or
        `None` where nothing was skipped.
    skipped_tiles: per segment, the crop ids of the tiles skipping left unencoded (`None` for a segment that has no
        tiles to skip, e.g. a video).
    """

    modality: str
    token_id: int
    packed: list[torch.Tensor]
    newline: list[torch.Tensor]
    handoff: ModelOutput
    crop_ids: list[torch.Tensor] | None = None
    pack_crop_values: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None
    num_crops: list[int] | None = None
    crop_grids: list[tuple[int, int] | None] | None = None
    signals: list[dict] | None = None
    skipped: list[torch.Tensor | None] | None = None
    skipped_tiles: list[torch.Tensor | None] | None = None

    @classmethod
    def from_crop_ids(
        cls, modality: str, token_id: int, packed, crop_ids, handoff, *, mismatch: str, **optional
    ) -> "VisualInputs":
        """The usual construction: newlines are the tokens of crop -1, and each segment's crop ids (what the family's
        layout implies) must count as many tokens as the encoder packed; `mismatch` says which inputs then disagree."""
        for features, ids in zip(packed, crop_ids):
            if ids.shape[0] != features.shape[0]:
                raise ValueError(
                    f"A{'n' if modality[0] in 'aeiou' else ''} {modality} has {features.shape[0]} packed tokens but "
                    f"its size implies {ids.shape[0]}; {mismatch}."
                )
        newline = [ids < 0 for ids in crop_ids]
        return cls(modality, token_id, packed, newline, handoff, crop_ids=crop_ids, **optional)

    def segments(self) -> list[Segment]:
        """One `Segment` per image (video) of this modality: what a strategy selects from. Selecting again later from
        these (`select_segments`) gives what the call would have selected, without encoding again."""
        return [
            Segment(
                features=features,
                newline=newline.to(features.device),
                modality=self.modality,
                crop_ids=None if self.crop_ids is None else self.crop_ids[i].to(features.device),
                crop_grid=None if self.crop_grids is None else self.crop_grids[i],
                signals={} if self.signals is None else self.signals[i],
            )
            for i, (features, newline) in enumerate(zip(self.packed, self.newline))
        ]


# Per-token inputs of the stock forward besides ids, mask, positions and labels (`[B, S]`, 0 = text), compacted with
# the prompt so they stay aligned with it (Qwen-VL's `mm_token_type_ids`: which tokens are image or video tokens).
TOKEN_ALIGNED_INPUTS = ("mm_token_type_ids", "token_type_ids")


def compact_sequences(keep: torch.BoolTensor, tensors: dict, pad_values: dict) -> dict:
    """Drop the `False` positions of every `[B, S, ...]` tensor and left-pad the rows back to one length.

    Positions that are kept keep their order; row `b` ends up right-aligned, padded with `pad_values[name]`.
    """
    batch, _ = keep.shape
    lengths = keep.sum(dim=1)
    width = int(lengths.max()) if batch else 0
    dest = (width - lengths)[:, None] + keep.long().cumsum(dim=1) - 1
    rows = torch.arange(batch, device=keep.device)[:, None].expand_as(keep)[keep]
    cols = dest[keep]
    out = {}
    for name, tensor in tensors.items():
        if tensor is None:
            out[name] = None
            continue
        shape = (batch, width, *tensor.shape[2:])
        compacted = torch.full(shape, pad_values[name], dtype=tensor.dtype, device=tensor.device)
        compacted[rows.to(tensor.device), cols.to(tensor.device)] = tensor[keep.to(tensor.device)]
        out[name] = compacted
    return out


def real_tokens(placeholders: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor | None):
    """`[B, S]` bool: the positions that are part of a row's prompt, i.e. not padding (the attention mask's zeros).

    Compaction drops padding with the dropped placeholders, so that a row keeps its real tokens only and the batch is
    as wide as its longest pruned row, whichever side (or sides) the caller padded. A label on a padding position
    would be lost with it, so it must be the ignored -100.
    """
    if attention_mask is None:
        return torch.ones_like(placeholders, dtype=torch.bool)
    if attention_mask.dim() != 2 or attention_mask.shape != placeholders.shape:
        raise ValueError(
            f"Pruning needs a 2-D `attention_mask` of the prompt's shape {tuple(placeholders.shape)} (1 = token, "
            f"0 = padding), got shape {tuple(attention_mask.shape)}; pass the mask the processor returns."
        )
    present = (attention_mask != 0).to(placeholders.device)
    if labels is not None:
        lost = (~present & (labels.to(present.device) != -100)).nonzero()
        if lost.numel():
            row, column = lost[0].tolist()
            raise ValueError(
                f"labels[{row}, {column}] is {int(labels[row, column])} on a padding position (attention_mask 0): "
                "pruning drops padding from the prompt, and that label with it. Set the labels of padding to -100 "
                "(`labels.masked_fill(attention_mask == 0, -100)`), as the stock loss ignores them then too."
            )
    return present


def prompt_order(encoded: list[VisualInputs], placeholders: dict) -> list[int]:
    """The segments of `encoded` (listed modality by modality) sorted by where they start in the flattened
    (row-major) prompt: the order a reader of the batch meets the images and videos."""
    starts = []
    for visual in encoded:
        positions = placeholders[visual.modality].flatten().nonzero().squeeze(-1)
        lengths = torch.tensor([features.shape[0] for features in visual.packed], device=positions.device)
        firsts = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)[:-1]])
        starts += positions[firsts].tolist()
    return sorted(range(len(starts)), key=starts.__getitem__)


# ---------------------------------------------------------------------------------------------------------- wrappers
def _pad_token_id(config) -> int:
    for candidate in (getattr(config, "pad_token_id", None), getattr(config.text_config, "pad_token_id", None)):
        if candidate is not None:
            return int(candidate)
    return 0


def _stock_forward(cls):
    """The `forward` of the first stock transformers class in `cls`'s MRO."""
    for base in cls.__mro__:
        if base.__module__.startswith("transformers.") and "forward" in base.__dict__:
            return base.__dict__["forward"]
    raise TypeError(f"{cls.__name__} derives from no stock transformers model class.")


def _with_stock_signature(cls, body):
    """A `forward` for `cls` whose signature is the stock one plus `pruning`.

    `generate` inspects `forward`'s signature to decide what to pass (`mm_encoder_outputs`, `logits_to_keep`,
    `position_ids`): a missing name silently changes its behaviour, so the stock parameters must all be there.
    """
    stock = inspect.signature(_stock_forward(cls))
    params = [p for p in stock.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    var_keyword = [p for p in stock.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD]
    pruning = inspect.Parameter("pruning", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=bool | None)
    signature = stock.replace(parameters=[*params, pruning, *var_keyword])

    def forward(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs).arguments
        bound.pop("self")
        pruning_flag = bound.pop("pruning", None)
        for name, value in list(bound.items()):
            if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                bound.update(bound.pop(name))
        return body(self, bound, pruning_flag)

    forward.__signature__ = signature
    forward.__doc__ = body.__doc__
    forward.__name__ = forward.__qualname__ = "forward"
    return forward


# ----------------------------------------------------------------------------------------------------------- mixins
class PruningMixin(CheckpointMixin, SettingsMixin):
    """What a family's base and generation model share: strict loading and saving with the codebook
    (`pruning_loading.py`), the per-thread switches and the settings in force (`pruning_settings.py`)."""

    def available_strategies(self, modality: str = "image") -> tuple[str, ...]:
        """The strategies this model can run on `modality` (see `PruningModelMixin.available_strategies`)."""
        return self._pruning_base().available_strategies(modality)


class PruningModelMixin(PruningMixin, CodebookHolderMixin):
    """The base model of a family (`XCodebookModel(PruningModelMixin, StockXModel)`): selection and compaction.

    A family sets `pruning_output_class` (its `ModelOutputWithPast` plus `visual_token_selection`),
    `pruning_modalities` (e.g. `("image",)`) and implements `encode_for_pruning`.
    """

    pruning_output_class: type
    pruning_modalities: tuple[str, ...] = ("image",)
    # The modalities whose tower tokens map one to one onto packed tokens, so that signals captured inside the vision
    # tower ([CLS] attention, keys, projector inputs) can be handed to a strategy (`_encode_with_signals`). Pooled or
    # resized tokens (video frames, LLaVA-OneVision's shrunk tile grids) have no such map.
    tower_signal_modalities: tuple[str, ...] = ("image",)
    # Loaded from a full checkpoint (the usual case: `AutoModel` on a llava-hf repo), a base model has no use for the
    # language-model head (`language_model.lm_head.*` in the llava-hf layout, `lm_head.*` in transformers' own);
    # every other unused or missing weight still fails the load.
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\.", r"^language_model\.lm_head\."]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "forward" not in cls.__dict__:
            cls.forward = _with_stock_signature(cls, PruningModelMixin._pruned_forward)

    def _pruning_base(self):
        return self

    # ------------------------------------------------------------------ what a family implements
    def encode_for_pruning(self, modality: str, call: dict) -> VisualInputs | None:
        """Encode `modality`'s inputs of `call` (popping them), or return `None` when the call has none."""
        raise NotImplementedError

    def kept_encoder_output(
        self, visual: VisualInputs, keep: list[torch.Tensor], merged: list[torch.Tensor | None]
    ) -> ModelOutput:
        """`visual.handoff` carrying only the kept tokens of each segment (`keep[i]`: `[L_i]` bool), what the stock
        `forward` then receives as `mm_encoder_outputs[modality]`. A merging strategy's features (`merged[i]`, else
        `None`) replace the kept tokens' own. A family whose encoder output carries further per-token features (a
        list per segment, e.g. Qwen3-VL's deepstack features) drops the same tokens from them here."""
        visual.handoff.pooler_output = [
            features[mask.to(features.device)] if own is None else own
            for features, mask, own in zip(visual.packed, keep, merged)
        ]
        return visual.handoff

    def prompt_position_ids(self, call: dict, attention_mask: torch.Tensor, settings: PruningSettings):
        """The position ids of the full (unpruned) prompt that the kept tokens carry into the compacted one, or `None`
        to let the stock model number the compacted prompt itself (`position_mode="contiguous"`).

        The default numbers the real tokens `0, 1, ...` (`position_mode="original"`). A family whose stock model
        derives positions from the full prompt's layout (M-RoPE's `[3, B, S]` grid positions) returns those, and has
        no contiguous mode: the compacted prompt no longer holds the layout they are derived from."""
        if settings.position_mode != "original":
            return None
        return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)

    # The modalities whose segments have AnyRes tiles a family can leave unencoded (`encode_skipping_tiles`).
    tile_skipping_modalities: tuple[str, ...] = ()

    def encode_skipping_tiles(self, modality: str, call: dict, settings: PruningSettings) -> VisualInputs | None:
        """`encode_for_pruning` with codebook-guided tile skipping (`tile_skipping.py`): the tiles whose region of the
        base view is redundant are never encoded, and `VisualInputs.skipped` marks the packed tokens they took away."""
        raise NotImplementedError

    def stock_encoder_outputs(self, mm_encoder_outputs: dict) -> dict:
        """`mm_encoder_outputs` in the container the stock `forward` reads, called before every stock forward.

        The core hands each modality's kept features over as a per-segment list in `pooler_output` (which is also
        what `generate` expands for beam search). A family whose stock forward reads one modality from another
        container (a batched tensor) returns a converted copy here; the default passes the dict through.
        """
        return mm_encoder_outputs

    # ------------------------------------------------------------------ what a family may override: tower signals
    # Defaults fit the stock LLaVA families (CLIP or SigLIP `vision_tower`, `multi_modal_projector`).
    def pruning_vision_tower(self) -> nn.Module:
        """The vision encoder whose forward pass is one encoding of the visual inputs (what `profile` times)."""
        return self.vision_tower

    def pruning_vision_layers(self) -> nn.ModuleList:
        """The vision tower's encoder layers (each with a `self_attn` holding `q_proj` / `k_proj`)."""
        tower = self.vision_tower
        return getattr(tower, "vision_model", tower).encoder.layers

    def pruning_projector(self) -> nn.Module:
        """The module mapping vision-tower features to the language model's space."""
        return self.multi_modal_projector

    def project_visual_features(self, features: torch.Tensor) -> torch.Tensor:
        """Project tower features (e.g. tokens merged before the projector) as the family's encoder does."""
        return self.pruning_projector()(features)

    def vision_tower_has_cls_token(self) -> bool:
        """Whether position 0 of every crop's tower sequence is a [CLS] token (CLIP yes; SigLIP no)."""
        return getattr(self.config.vision_config, "model_type", None) == "clip_vision_model"

    def available_strategies(self, modality: str = "image") -> tuple[str, ...]:
        """The registered strategies (`strategies.STRATEGIES`, in registry order) this model can run on `modality`:
        those that read the features alone everywhere, and those that need tower signals only where the tower can
        provide them (the modality is in `tower_signal_modalities`, and [CLS] attention needs a tower with a [CLS]
        token). Signal layers are the config's (`cls_attention_layer`, `hired_budget_layer`)."""
        settings = self.pruning_settings()
        has_cls = self.vision_tower_has_cls_token()
        names = []
        for name, strategy in STRATEGIES.items():
            request = strategy.signal_request(settings)
            if request and (
                modality not in self.tower_signal_modalities or (request.cls_attention_layers and not has_cls)
            ):
                continue
            names.append(name)
        return tuple(names)

    def _refuse_strategy_it_cannot_run(self, settings: PruningSettings) -> None:
        """Raise, before anything is encoded, when the strategy runs on none of this model's modalities (one that
        runs on images but not on pooled video frames is refused later, and only for a call with a video)."""
        name = settings.pruning_strategy
        runs_on = {modality: self.available_strategies(modality) for modality in self.pruning_modalities}
        if any(name in names for names in runs_on.values()):
            return
        if STRATEGIES[name].signal_request(settings).cls_attention_layers and not self.vision_tower_has_cls_token():
            reason = (
                "it ranks tokens by [CLS] attention, but this model's vision tower has no [CLS] token (e.g. SigLIP)"
            )
        else:
            reason = "it reads signals from inside the vision tower, which this model cannot map onto its visual tokens"
        offered = sorted({n for names in runs_on.values() for n in names}, key=list(STRATEGIES).index)
        raise ValueError(
            f"pruning_strategy={name!r} cannot run on {type(self).__name__}: {reason}. Use one of the strategies it "
            f"can run: {', '.join(repr(n) for n in offered)}."
        )

    def encode_for_strategies(
        self, modality: str, call: dict, strategies: tuple[str, ...] | None = None
    ) -> VisualInputs | None:
        """Encode `modality`'s inputs of `call` (popping them) once, with the tower signals that every strategy in
        `strategies` (default: `available_strategies(modality)`) needs under the config's settings, so that a
        selection under any of them can be re-run later from the result alone (`select_segments` on segments built
        from it) without running the vision tower again. `None` when the call has no such inputs."""
        settings = self.pruning_settings()
        names = self.available_strategies(modality) if strategies is None else strategies
        unknown = [name for name in names if name not in STRATEGIES]
        if unknown:
            raise ValueError(f"Unknown pruning strategies {unknown}; registered: {sorted(STRATEGIES)}.")
        request = SignalRequest()
        for name in names:
            request = request | STRATEGIES[name].signal_request(settings)
        return self._encode_with_signals(modality, call, request)

    def _encode_with_signals(self, modality: str, call: dict, request: SignalRequest) -> VisualInputs | None:
        """`encode_for_pruning`, capturing `request`'s tower signals during that one pass (hooks removed after);
        the signals come back per segment in packed order in `VisualInputs.signals`."""
        if not request:
            return self.encode_for_pruning(modality, call)
        select = call.get("vision_feature_select_strategy") or getattr(
            self.config, "vision_feature_select_strategy", None
        )
        with capture_tower_signals(
            self.pruning_vision_layers(), self.pruning_projector(), request, self.vision_tower_has_cls_token()
        ) as captured:
            visual = self.encode_for_pruning(modality, call)
        if visual is None or visual.num_crops is None or visual.pack_crop_values is None:
            # A modality whose tower tokens do not map one to one onto packed tokens (pooled video frames) gets no
            # signals; a strategy that needs them says so, naming the modality.
            return visual
        drop_cls = select == "default" and self.vision_tower_has_cls_token()
        visual.signals = pack_tower_signals(captured, visual.num_crops, visual.pack_crop_values, drop_cls)
        return visual

    # ------------------------------------------------------------------ selection
    def select_segments(
        self, segments: list[Segment], settings: PruningSettings, skipped=None, skipped_tiles=None
    ) -> VisualTokenSelection:
        """Run the strategy of `settings` on every segment of a call; returns the selection report. `skipped` /
        `skipped_tiles` (per segment, from tile skipping) keep the tokens of unencoded tiles out of the choice."""
        strategy = STRATEGIES[settings.pruning_strategy]
        if skipped is None:
            result = strategy(segments, settings, self)
        else:
            result = select_around_skipped(strategy, segments, skipped, settings, self)
        return VisualTokenSelection(
            num_kept=torch.tensor([k.numel() for k in result.kept]),
            num_total=torch.tensor([s.features.shape[0] for s in segments]),
            kept_indices=result.kept,
            scores=result.scores,
            newline_mask=[s.newline for s in segments],
            modalities=[s.modality for s in segments],
            strategy=settings.pruning_strategy,
            merged_features=result.features,
            skipped_tiles=skipped_tiles,
        )

    def placeholder_mask(
        self, token_id: int, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None
    ) -> torch.Tensor:
        """`[B, S]` bool mask of the placeholders of `token_id`, found as the stock models find them: by token id,
        or, with `inputs_embeds` alone, by equality with that token's embedding."""
        if input_ids is not None:
            return input_ids == token_id
        token = torch.full((), token_id, dtype=torch.long, device=inputs_embeds.device)
        return (inputs_embeds == self.get_input_embeddings()(token)).all(-1)

    # ------------------------------------------------------------------ compaction
    def prune_call(self, call: dict, pruning: bool | None, pad_token_id: int) -> VisualTokenSelection | None:
        """Apply pruning to one call's keyword arguments, in place; returns the selection, or `None` if none applies.

        Pops the per-call overrides. When pruning applies (an active strategy and visual inputs given), encodes the
        visual inputs once, selects, replaces `input_ids` (or `inputs_embeds`), `attention_mask`, `position_ids` and
        `labels` by their compacted versions and hands the pruned features over as `mm_encoder_outputs`.
        """
        reference = [name for name in CODEBOOK_REFERENCE_FIELDS if name in call]
        if reference:
            raise ValueError(
                f"{reference} cannot change per call: the codebook is loaded once per model. Use "
                "`model.load_codebook(repo_or_path, revision=...)` to switch codebooks, then call again."
            )
        overrides = {name: call.pop(name) for name in PRUNING_FIELDS if name in call}
        settings = self.pruning_settings(pruning=pruning, **overrides)
        if not settings.active:
            return None
        self._refuse_strategy_it_cannot_run(settings)
        input_ids, inputs_embeds = call.get("input_ids"), call.get("inputs_embeds")
        request = STRATEGIES[settings.pruning_strategy].signal_request(settings)
        encoded = [
            self.encode_skipping_tiles(modality, call, settings)
            if settings.tile_skipping and modality in self.tile_skipping_modalities
            else self._encode_with_signals(modality, call, request)
            for modality in self.pruning_modalities
        ]
        encoded = [visual for visual in encoded if visual is not None]
        if not encoded:
            return None
        untiled = sorted({v.modality for v in encoded if v.modality not in self.tile_skipping_modalities})
        if settings.tile_skipping and untiled:
            warnings.warn(
                f"tile_skipping applies to AnyRes image tiles; this call's {' and '.join(untiled)} inputs have none "
                "and are pruned as usual (their `skipped_tiles` entries are None).",
                UserWarning,
                stacklevel=2,
            )
        if input_ids is None and inputs_embeds is None:
            raise ValueError("Pass `input_ids` (or `inputs_embeds`) together with the visual inputs.")
        placeholder = {}
        for visual in encoded:
            mask = self.placeholder_mask(visual.token_id, input_ids, inputs_embeds)
            n_placeholders, n_features = int(mask.sum()), sum(f.shape[0] for f in visual.packed)
            if n_placeholders != n_features:
                raise ValueError(
                    f"The prompt holds {n_placeholders} {visual.modality} placeholder tokens but the "
                    f"{len(visual.packed)} {visual.modality}(s) give {n_features} visual tokens. "
                    f"Each {visual.modality} needs exactly one `<{visual.modality}>` in the text, expanded by the "
                    f"processor: build inputs with the model's processor and as many `<{visual.modality}>` as "
                    f"{visual.modality}s."
                )
            placeholder[visual.modality] = mask
        segments = [segment for visual in encoded for segment in visual.segments()]
        order = prompt_order(encoded, placeholder)
        if settings.tile_skipping:
            skipped = [m for visual in encoded for m in (visual.skipped or [None] * len(visual.packed))]
            tiles = [t for visual in encoded for t in (visual.skipped_tiles or [None] * len(visual.packed))]
            selection = self.select_segments(
                [segments[i] for i in order], settings, [skipped[i] for i in order], [tiles[i] for i in order]
            )
        else:
            selection = self.select_segments([segments[i] for i in order], settings)
        # The selection lists segments in prompt order; each modality's hand-off lists its own in their order.
        masks, merged = selection.keep_masks(), selection.merged_features or [None] * len(segments)
        rank = {segment: position for position, segment in enumerate(order)}
        attention_mask, position_ids, labels = call.get("attention_mask"), call.get("position_ids"), call.get("labels")
        keep = real_tokens(next(iter(placeholder.values())), attention_mask, labels)
        handoff = dict(call.get("mm_encoder_outputs") or {})
        first = 0
        for visual in encoded:
            own = [masks[rank[first + i]] for i in range(len(visual.packed))]
            kept_features = [merged[rank[first + i]] for i in range(len(visual.packed))]
            first += len(visual.packed)
            # Placeholders follow the selection alone (a kept one stays even where the caller masked it), so the
            # prompt holds exactly one placeholder per handed-over feature.
            keep[placeholder[visual.modality]] = torch.cat(own).to(keep.device)
            handoff[visual.modality] = self.kept_encoder_output(visual, own, kept_features)
        if attention_mask is None:
            attention_mask = torch.ones(keep.shape, dtype=torch.long, device=keep.device)
        if position_ids is None:
            position_ids = self.prompt_position_ids(call, attention_mask, settings)
        # Position ids may carry rope axes in front (`[axes, B, S]`, M-RoPE): they are compacted along the sequence
        # like every other per-token tensor, each kept token keeping its values on every axis.
        axes_first = position_ids is not None and position_ids.dim() == 3
        aligned = {name: call[name] for name in TOKEN_ALIGNED_INPUTS if call.get(name) is not None}
        compacted = compact_sequences(
            keep,
            {
                "input_ids": input_ids,
                "inputs_embeds": inputs_embeds,
                "attention_mask": attention_mask,
                "position_ids": position_ids.movedim(0, -1) if axes_first else position_ids,
                "labels": labels,
                **aligned,
            },
            {
                "input_ids": pad_token_id,
                "inputs_embeds": 0.0,
                "attention_mask": 0,
                "position_ids": 0,
                "labels": -100,
                **dict.fromkeys(aligned, 0),
            },
        )
        if axes_first:
            compacted["position_ids"] = compacted["position_ids"].movedim(-1, 0)
        call.update({name: value for name, value in compacted.items() if value is not None or name in call})
        call["mm_encoder_outputs"] = handoff
        self.report_selection(selection)
        return selection

    def _pruned_forward(self, call: dict, pruning: bool | None):
        """Stock base-model `forward`, with the visual inputs pruned first.

        Accepts the pruning config fields (`codebook_threshold=...`, `pruning_mode=...`, ...) and `pruning=False` as
        per-call overrides; the output's `visual_token_selection` reports what was kept.
        """
        selection = self.prune_call(call, pruning, _pad_token_id(self.config))
        if call.get("mm_encoder_outputs"):
            call["mm_encoder_outputs"] = self.stock_encoder_outputs(call["mm_encoder_outputs"])
        outputs = super(PruningModelMixin, self).forward(**call)
        if isinstance(outputs, tuple):
            return outputs
        return self.pruning_output_class(**outputs, visual_token_selection=selection)


class PruningForConditionalGenerationMixin(PruningMixin):
    """The generation model of a family (`XCodebookForConditionalGeneration(this, StockXForConditionalGeneration)`).

    A family sets `pruning_base_class` (its base model class) and `pruning_output_class` (its
    `CausalLMOutputWithPast` plus `visual_token_selection`).
    """

    pruning_base_class: type
    pruning_output_class: type

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "forward" not in cls.__dict__:
            cls.forward = _with_stock_signature(cls, PruningForConditionalGenerationMixin._pruned_forward)

    def __init__(self, config):
        # The stock __init__ hard-codes the stock base model; build the same two modules, with the pruning-aware
        # base model, without constructing (and discarding) a stock one first. Weight names stay stock (`model.*`).
        stock = next(
            b for b in type(self).__mro__ if b.__module__.startswith("transformers.") and "__init__" in b.__dict__
        )
        super(stock, self).__init__(config)
        self.model = self.pruning_base_class(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def _pruning_base(self):
        return self.model

    def save_pretrained(self, save_directory, *args, **kwargs):
        # `register_for_auto_class` records one Auto class per class; the base model's entry is added by hand so the
        # saved repo also answers `AutoModel.from_pretrained(..., trust_remote_code=True)`.
        if getattr(type(self), "_auto_class", None) is not None:
            module = type(self.model).__module__.rsplit(".", 1)[-1]
            self.config.auto_map = {
                "AutoModel": f"{module}.{type(self.model).__name__}",
                **(getattr(self.config, "auto_map", None) or {}),
            }
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _generation_pad_token_id(self, kwargs) -> int:
        generation_config = kwargs.get("generation_config") or self.generation_config
        for candidate in (kwargs.get("pad_token_id"), generation_config.pad_token_id):
            if candidate is not None:
                return int(candidate if not isinstance(candidate, (list, tuple)) else candidate[0])
        return _pad_token_id(self.config)

    def _padding_mask(self, kwargs) -> torch.Tensor | None:
        """The attention mask the stock `generate` infers when none is given: the pad tokens of `input_ids` masked,
        where the pad token is set, occurs and is no EOS token; else `None` (every token is real)."""
        input_ids = kwargs.get("input_ids")
        generation_config = kwargs.get("generation_config") or self.generation_config
        pad = kwargs.get("pad_token_id", generation_config.pad_token_id)
        eos = kwargs.get("eos_token_id", generation_config.eos_token_id)
        if input_ids is None or pad is None:
            return None
        pads = torch.tensor(pad if isinstance(pad, (list, tuple)) else [pad], device=input_ids.device)
        eos = [] if eos is None else (list(eos) if isinstance(eos, (list, tuple)) else [eos])
        if not torch.isin(input_ids, pads).any() or any(int(p) in eos for p in pads):
            return None
        return (~torch.isin(input_ids, pads)).long()

    def _pruned_forward(self, call: dict, pruning: bool | None):
        """Stock `forward`, with the visual inputs pruned first. `input_ids`, `attention_mask`, `position_ids` and
        `labels` are compacted together, so the logits and the loss cover the kept tokens only. Accepts the pruning
        config fields and `pruning=False` as per-call overrides.
        """
        selection = self.model.prune_call(call, pruning, self._generation_pad_token_id(call))
        with self.pruning_disabled():
            outputs = super(PruningForConditionalGenerationMixin, self).forward(**call)
        if isinstance(outputs, tuple):
            return outputs
        return self.pruning_output_class(**outputs, visual_token_selection=selection)

    @torch.no_grad()
    def generate(self, inputs=None, pruning=None, **kwargs):
        """Stock `generate`, on a prompt compacted per image (and video) before prefill.

        Accepts the pruning config fields (`codebook_threshold=0.2`, `pruning_mode="budget"`, `keep_ratio=0.1`, ...)
        and `pruning=False` as per-call overrides. The returned sequences start with the caller's original prompt,
        so `out[:, input_ids.shape[1]:]` are the new tokens. With `return_dict_in_generate=True` the output also
        carries `visual_token_selection` (`None` when nothing was pruned).
        """
        if kwargs.get("input_ids") is None and isinstance(inputs, torch.Tensor) and not inputs.is_floating_point():
            kwargs["input_ids"], inputs = inputs, None
        input_ids = kwargs.get("input_ids")
        if kwargs.get("attention_mask") is None and (mask := self._padding_mask(kwargs)) is not None:
            # The stock `generate` would infer this mask from the pad tokens; compaction needs it first, to drop them.
            kwargs["attention_mask"] = mask
        selection = self.model.prune_call(kwargs, pruning, self._generation_pad_token_id(kwargs))
        with self.pruning_disabled():
            output = super().generate(inputs, **kwargs)
        sequences = output if isinstance(output, torch.Tensor) else output.sequences
        if selection is not None and input_ids is not None:
            # The stock `generate` returned the compacted prompt: put the caller's own prompt back in front of the
            # new tokens. (With `inputs_embeds` alone the stock output holds only new tokens, and so does this.)
            expand = sequences.shape[0] // input_ids.shape[0]
            new_tokens = sequences[:, kwargs["input_ids"].shape[1] :]
            sequences = torch.cat([input_ids.repeat_interleave(expand, dim=0).to(new_tokens.device), new_tokens], 1)
        if isinstance(output, torch.Tensor):
            return sequences
        if not isinstance(output, (GenerateDecoderOnlyOutput, GenerateBeamDecoderOnlyOutput)):
            return output
        output_cls = (
            CodebookGenerateBeamDecoderOnlyOutput
            if isinstance(output, GenerateBeamDecoderOnlyOutput)
            else CodebookGenerateDecoderOnlyOutput
        )
        fields = {key: value for key, value in output.items() if key != "sequences"}
        # Always present (None when nothing was pruned), so user code never needs `hasattr`.
        return output_cls(sequences=sequences, visual_token_selection=selection, **fields)


__all__ = [
    "TOKEN_ALIGNED_INPUTS",
    "PruningForConditionalGenerationMixin",
    "PruningMixin",
    "PruningModelMixin",
    "VisualInputs",
    "compact_sequences",
]
