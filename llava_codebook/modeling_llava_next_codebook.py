"""LLaVA-NeXT with redundancy-codebook visual token pruning.

The vision tower and projector run as in the stock model. Every packed visual token (base crop, unpadded AnyRes
tiles and row newlines) is scored against the codebook, each image keeps its own subset, and the prompt is
compacted (dropped placeholders removed, the batch re-padded on the left) *before* the stock `generate` /
`forward` sees it, so the KV cache, masks and position ids downstream describe one consistent shorter prompt.
"""

import contextlib
import contextvars
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import LlavaNextForConditionalGeneration, LlavaNextModel
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.generation.utils import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput
from transformers.modeling_outputs import ModelOutput
from transformers.models.llava_next.modeling_llava_next import (
    LlavaNextCausalLMOutputWithPast,
    LlavaNextModelOutputWithPast,
    image_size_to_num_patches,
)
from transformers.utils import logging

from .codebook import RedundancyCodebook
from .configuration_llava_next_codebook import PRUNING_VALIDATORS, LlavaNextCodebookConfig, validate_pruning_settings
from .selection import codebook_similarity, select_tokens

logger = logging.get_logger(__name__)

PRUNING_FIELDS = tuple(PRUNING_VALIDATORS)
OVERRIDE_NAMES = PRUNING_FIELDS + ("pruning",)
CODEBOOK_REFERENCE_FIELDS = ("codebook_repo", "codebook_filename", "codebook_revision")
_CODEBOOK_LOAD_KWARGS = ("cache_dir", "local_files_only", "token")
SELF_REPO = "."  # `codebook_repo` value meaning "the repo this model was loaded from"
# Base models (by id) with pruning switched off in the current thread / task; see `pruning_disabled`.
_DISABLED: contextvars.ContextVar[frozenset] = contextvars.ContextVar(
    "llava_codebook_pruning_disabled", default=frozenset()
)


# Open `record_selections()` blocks of the current thread / task: (id of the base model, list to append to).
_RECORDERS: contextvars.ContextVar[tuple] = contextvars.ContextVar("llava_codebook_recorders", default=())


@dataclass(frozen=True)
class PruningSettings:
    """The pruning knobs in force for one call: the config's values with any per-call overrides applied."""

    pruning_strategy: str = "codebook"
    pruning_mode: str = "threshold"
    codebook_threshold: float = 0.11
    keep_ratio: float = 0.25
    keep_tokens: int | None = None
    min_visual_tokens: int = 1
    always_keep_newline: bool = True
    position_mode: str = "contiguous"

    @property
    def active(self) -> bool:
        return self.pruning_strategy == "codebook"


@dataclass
class VisualTokenSelection(ModelOutput):
    r"""
    Which packed visual tokens of each image reached the language model.

    num_kept (`torch.LongTensor` of shape `(num_images,)`):
        Tokens kept per image, row newlines included (what the language model receives).
    num_total (`torch.LongTensor` of shape `(num_images,)`):
        Tokens the stock model would have given the language model for each image.
    kept_indices (`list[torch.LongTensor]`):
        Per image, ascending indices of the kept tokens in the stock packed order (base crop, then the unpadded
        tile grid row by row, each row followed by its newline token).
    scores (`list[torch.FloatTensor]`):
        Per image, every packed token's redundancy score `max_k cos(z_i, C_k)`.
    newline_mask (`list[torch.BoolTensor]`):
        Per image, which packed tokens are `image_newline` tokens.
    """

    num_kept: torch.LongTensor | None = None
    num_total: torch.LongTensor | None = None
    kept_indices: list[torch.LongTensor] | None = None
    scores: list[torch.FloatTensor] | None = None
    newline_mask: list[torch.BoolTensor] | None = None

    def keep_masks(self) -> list[torch.BoolTensor]:
        """Per image, a bool mask over its packed tokens (True = kept)."""
        masks = []
        for indices, scores in zip(self.kept_indices, self.scores):
            mask = torch.zeros(scores.shape[0], dtype=torch.bool, device=indices.device)
            mask[indices] = True
            masks.append(mask)
        return masks


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


@dataclass
class CodebookGenerateDecoderOnlyOutput(GenerateDecoderOnlyOutput):
    visual_token_selection: VisualTokenSelection | None = None


@dataclass
class CodebookGenerateBeamDecoderOnlyOutput(GenerateBeamDecoderOnlyOutput):
    visual_token_selection: VisualTokenSelection | None = None


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


def register_stock_checkpoint_layout(model_type: str, stock_model_type: str) -> None:
    """Load and save `model_type` checkpoints with the key layout of the stock `stock_model_type` class.

    Every llava-hf repo stores the legacy layout (`language_model.model.*`, `language_model.lm_head.weight`,
    `vision_tower.*`, ...), which the stock class renames on load (and back on save) through transformers'
    checkpoint-conversion table. That table skips custom-code classes unless their `model_type` is registered, so
    without this call the language model of every real checkpoint would load as missing and be initialised at
    random. It runs when this file is imported, which every load and save of the class does (the installed package
    and the remote-code copy alike): saving and loading stay symmetric.
    """
    register_checkpoint_conversion_mapping(
        model_type, get_checkpoint_conversion_mapping(stock_model_type), overwrite=True
    )


register_stock_checkpoint_layout(LlavaNextCodebookConfig.model_type, "llava_next")


class IncompleteCheckpointError(ValueError):
    """Loading a checkpoint would have left weights of the model missing, unused, or of another shape."""


def _refuse_incomplete_load(model, info: dict, source) -> None:
    problems = {
        "missing (would be initialised at random)": sorted(info.get("missing_keys") or ()),
        "unexpected (in the checkpoint, not used by the model)": sorted(info.get("unexpected_keys") or ()),
        "of another shape": sorted(
            f"{key} {tuple(saved)} vs {tuple(expected)}" for key, saved, expected in info.get("mismatched_keys") or ()
        ),
        "not converted": sorted(f"{key}: {err}" for key, err in (info.get("conversion_errors") or {}).items()),
        "errors": list(info.get("error_msgs") or ()),
    }
    problems = {what: keys for what, keys in problems.items() if keys}
    if not problems:
        return
    lines = []
    for what, keys in problems.items():
        shown = ", ".join(keys[:12]) + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")
        lines.append(f"  {what}: {shown}")
    raise IncompleteCheckpointError(
        f"Loading {source!r} into {type(model).__name__} does not fill every weight exactly:\n"
        + "\n".join(lines)
        + "\nThe model was not returned, so no randomly initialised weight can be used by mistake. Load a "
        "LLaVA-NeXT checkpoint (stock llava-hf layout or a repo written by this package) whose config matches its "
        "weights; a stock checkpoint is loaded with `load_pruned_model(...)`."
    )


class _CodebookPruningMixin:
    """Codebook loading and the `pruning_disabled()` toggle, shared by the base model and the generation model."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Stock `from_pretrained`, refusing any checkpoint that does not fill every weight, then the codebook.

        Raises `IncompleteCheckpointError` (a `ValueError`) naming the keys when any weight would be missing,
        unused or of another shape, instead of returning a model with freshly initialised tensors.
        """
        output_loading_info = kwargs.pop("output_loading_info", False)
        # Shape mismatches are let through the stock loader only so that they are reported below together with the
        # missing and unused keys; the model is never returned with them.
        kwargs["ignore_mismatched_sizes"] = True
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        _refuse_incomplete_load(model, info, pretrained_model_name_or_path)
        loaded = (model, info) if output_loading_info else model
        # The codebook is not a weight: it is resolved from the config's reference once the weights are in place,
        # so that meta-device initialisation cannot touch it.
        base = model._pruning_base()
        if base.config.pruning_strategy == "codebook" and base.config.codebook_repo is not None:
            hub_kwargs = {key: kwargs[key] for key in _CODEBOOK_LOAD_KWARGS if key in kwargs}
            if base.config.codebook_repo == SELF_REPO:
                # The codebook ships inside this model's repo: resolve it at the revision the weights came from.
                hub_kwargs["revision"] = base.config.codebook_revision or kwargs.get("revision")
            base.load_codebook(**hub_kwargs)
        return loaded

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Stock `save_pretrained` (legacy llava-hf key layout), plus the codebook when it lives in the repo itself.

        A model whose config says `codebook_repo="."` writes its codebook to `codebook_filename` inside
        `save_directory`, so the saved (or pushed) repo is self-contained and loads and generates identically.
        """
        base = self._pruning_base()
        embedded = base.config.codebook_repo == SELF_REPO
        if embedded and base._codebook is None:
            # Resolve it before anything is written: a repo whose config names a codebook it lacks is never written.
            base.load_codebook()
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if embedded and kwargs.get("is_main_process", True):
            root = Path(save_directory)
            target = root / base.config.codebook_filename
            if target.parent.resolve() == root.resolve():
                # Beside the model's own config.json and card: only the tensor file.
                base._codebook.save_file(target)
            else:
                base._codebook.save_pretrained(target.parent, filename=target.name)
        return result

    @contextlib.contextmanager
    def pruning_disabled(self):
        """Run the stock LLaVA-NeXT computation (no scoring, no compaction) inside the `with` block.

        The switch is per thread (and per asyncio task): a server answering one request without pruning does not
        turn pruning off for a request served concurrently by the same model.
        """
        token = _DISABLED.set(_DISABLED.get() | {id(self._pruning_base())})
        try:
            yield self
        finally:
            _DISABLED.reset(token)

    @contextlib.contextmanager
    def record_selections(self):
        """Collect the `VisualTokenSelection` of every pruned call made inside the `with` block, in call order.

        For callers that never see the model's outputs, such as `pipeline("image-text-to-text", ...)`:

        >>> with model.record_selections() as selections:  # doctest: +SKIP
        ...     answers = pipe(images=image, text=prompt, max_new_tokens=20)
        >>> selections[0].num_kept, selections[0].num_total  # doctest: +SKIP

        Per thread (and asyncio task), like `pruning_disabled()`: concurrent requests do not see each other's.
        """
        log: list[VisualTokenSelection] = []
        token = _RECORDERS.set(_RECORDERS.get() + ((id(self._pruning_base()), log),))
        try:
            yield log
        finally:
            _RECORDERS.reset(token)

    @property
    def _pruning_enabled(self) -> bool:
        return id(self._pruning_base()) not in _DISABLED.get()

    @property
    def codebook(self) -> RedundancyCodebook | None:
        return self._pruning_base()._codebook


class LlavaNextCodebookModel(_CodebookPruningMixin, LlavaNextModel):
    config_class = LlavaNextCodebookConfig
    config: LlavaNextCodebookConfig
    # Loaded from a full checkpoint (the usual case: `AutoModel` on a llava-hf repo), the base model has no use for
    # the language-model head; every other unused or missing weight still fails the load.
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]

    def __init__(self, config: LlavaNextCodebookConfig):
        super().__init__(config)
        self._codebook: RedundancyCodebook | None = None
        self._prototypes_on_device: dict = {}

    def _pruning_base(self) -> "LlavaNextCodebookModel":
        return self

    # ------------------------------------------------------------------ codebook
    def load_codebook(
        self, codebook: RedundancyCodebook | str | None = None, revision: str | None = None, **hub_kwargs
    ) -> RedundancyCodebook:
        """Attach a codebook: a `RedundancyCodebook`, a reference (Hub repo id / local dir), or, when `None`, the
        reference in the config (`codebook_repo`, `codebook_filename`, `codebook_revision`). `hub_kwargs`
        (`cache_dir`, `local_files_only`, `token`) go to the Hub download."""
        if codebook is None or isinstance(codebook, str):
            repo = codebook if codebook is not None else self.config.codebook_repo
            if codebook is None:
                revision = revision or self.config.codebook_revision
            if repo == SELF_REPO:
                repo = getattr(self.config, "_name_or_path", None) or None
            if repo is None:
                raise ValueError(
                    "No codebook is configured: set `codebook_repo` in the config (a Hub repo id or a local "
                    "directory), pass a codebook to `load_codebook`, or use `pruning=False` / pruning_strategy='none'."
                )
            codebook = RedundancyCodebook.from_pretrained(
                repo, filename=self.config.codebook_filename, revision=revision, **hub_kwargs
            )
        codebook.check_compatible(self.config.text_config.hidden_size)
        self._codebook = codebook
        self._prototypes_on_device = {}
        return codebook

    def _prototypes(self, device: torch.device) -> torch.Tensor:
        if self._codebook is None:
            self.load_codebook()
        key = str(device)
        if key not in self._prototypes_on_device:
            self._prototypes_on_device[key] = self._codebook.prototypes.to(device)
        return self._prototypes_on_device[key]

    # ------------------------------------------------------------------ settings
    def pruning_settings(self, **overrides) -> PruningSettings:
        """The settings in force: config values, then per-call overrides (`pruning=False` turns pruning off)."""
        unknown = set(overrides) - set(OVERRIDE_NAMES)
        if unknown:
            raise TypeError(f"Unknown pruning arguments {sorted(unknown)}; expected some of {OVERRIDE_NAMES}.")
        values = {name: getattr(self.config, name) for name in PRUNING_FIELDS}
        values.update({k: v for k, v in overrides.items() if k in PRUNING_FIELDS and v is not None})
        pruning = overrides.get("pruning")
        if pruning is not None:
            values["pruning_strategy"] = "codebook" if pruning else "none"
        if not self._pruning_enabled:
            values["pruning_strategy"] = "none"
        return PruningSettings(**validate_pruning_settings(**values))

    # ------------------------------------------------------------------ selection
    def newline_masks(self, image_sizes: torch.Tensor, vision_feature_select_strategy: str | None = None):
        """Per image, which packed tokens are row newlines, found by packing a one-channel marker map with the
        stock `pack_image_features` (so the layout logic is never duplicated here)."""
        strategy = vision_feature_select_strategy or self.config.vision_feature_select_strategy
        side = self.config.vision_config.image_size // self.config.vision_config.patch_size
        per_crop = side * side + (1 if strategy == "full" else 0)
        markers = [
            torch.zeros(
                image_size_to_num_patches(size, self.config.image_grid_pinpoints, self.config.vision_config.image_size),
                per_crop,
                1,
            )
            for size in image_sizes
        ]
        packed, _ = self.pack_image_features(markers, image_sizes.cpu(), strategy, image_newline=torch.ones(1))
        return [marker[:, 0].bool() for marker in packed]

    def select_visual_tokens(
        self,
        packed_features: list[torch.Tensor],
        image_sizes: torch.Tensor,
        settings: PruningSettings | None = None,
        vision_feature_select_strategy: str | None = None,
    ) -> VisualTokenSelection:
        """Score each image's packed post-projector tokens against the codebook and choose the kept ones."""
        settings = settings or self.pruning_settings()
        newline = self.newline_masks(image_sizes, vision_feature_select_strategy)
        if len(newline) != len(packed_features):
            raise ValueError(f"Got {len(packed_features)} packed images but {len(newline)} image sizes.")
        device = packed_features[0].device
        prototypes = self._prototypes(device)
        # Selection is discrete: no gradient flows through the scores.
        with torch.no_grad():
            flat_scores = codebook_similarity(torch.cat(list(packed_features)), prototypes)
        all_scores = flat_scores.split([f.shape[0] for f in packed_features])
        kept, scores, masks = [], [], []
        for features, image_scores, is_newline in zip(packed_features, all_scores, newline):
            if is_newline.shape[0] != features.shape[0]:
                raise ValueError(
                    f"An image has {features.shape[0]} packed tokens but its size implies {is_newline.shape[0]}; "
                    "image_sizes does not describe pixel_values."
                )
            is_newline = is_newline.to(device)
            kept.append(
                select_tokens(
                    image_scores,
                    mode=settings.pruning_mode,
                    threshold=settings.codebook_threshold,
                    keep_ratio=settings.keep_ratio,
                    keep_tokens=settings.keep_tokens,
                    min_keep=settings.min_visual_tokens,
                    protected=is_newline if settings.always_keep_newline else None,
                )
            )
            scores.append(image_scores)
            masks.append(is_newline)
        return VisualTokenSelection(
            num_kept=torch.tensor([k.numel() for k in kept]),
            num_total=torch.tensor([f.shape[0] for f in packed_features]),
            kept_indices=kept,
            scores=scores,
            newline_mask=masks,
        )

    def placeholder_mask(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> torch.Tensor:
        """`[B, S]` bool mask of the image placeholders, found as the stock model finds them: by token id, or, with
        `inputs_embeds` alone, by equality with the image token's embedding."""
        if input_ids is not None:
            return input_ids == self.config.image_token_id
        image_token = torch.full((), self.config.image_token_id, dtype=torch.long, device=inputs_embeds.device)
        return (inputs_embeds == self.get_input_embeddings()(image_token)).all(-1)

    def prepare_pruned_inputs(
        self,
        input_ids: torch.LongTensor | None,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor | None,
        settings: PruningSettings,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        vision_feature_layer=None,
        vision_feature_select_strategy=None,
        pad_token_id: int = 0,
        inputs_embeds: torch.Tensor | None = None,
    ) -> tuple[dict, VisualTokenSelection]:
        """Encode the images once, choose the kept tokens, and compact the text-side tensors to match.

        Returns the keyword arguments for the stock `forward` / `generate` (`input_ids` or `inputs_embeds`,
        `attention_mask`, `position_ids`, `labels`, `mm_encoder_outputs`) and the selection.
        """
        if input_ids is None and inputs_embeds is None:
            raise ValueError("Pass `input_ids` (or `inputs_embeds`) together with `pixel_values`.")
        if image_sizes is None:
            raise ValueError(
                "`pixel_values` were given without `image_sizes`: LLaVA-NeXT needs each image's original (height, "
                "width) to unpad its AnyRes tiles. Pass the `image_sizes` the processor returns with `pixel_values` "
                "(`model(**processor(images=..., text=..., return_tensors='pt'))`)."
            )
        image_outputs = self.get_image_features(
            pixel_values,
            image_sizes,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            return_dict=True,
        )
        packed = list(image_outputs.pooler_output)
        is_placeholder = self.placeholder_mask(input_ids, inputs_embeds)
        n_placeholders, n_features = int(is_placeholder.sum()), sum(f.shape[0] for f in packed)
        if n_placeholders != n_features:
            raise ValueError(
                f"The prompt holds {n_placeholders} image placeholder tokens but the {len(packed)} image(s) give "
                f"{n_features} visual tokens. Each image needs exactly one `<image>` in the text, expanded by the "
                "processor: build inputs with `processor(images=..., text=...)` and as many `<image>` as images."
            )
        selection = self.select_visual_tokens(packed, image_sizes, settings, vision_feature_select_strategy)
        keep = torch.ones_like(is_placeholder)
        keep[is_placeholder] = torch.cat(selection.keep_masks()).to(keep.device)
        if attention_mask is None:
            attention_mask = torch.ones(keep.shape, dtype=torch.long, device=keep.device)
        if position_ids is None and settings.position_mode == "original":
            position_ids = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
        compacted = compact_sequences(
            keep,
            {
                "input_ids": input_ids,
                "inputs_embeds": inputs_embeds,
                "attention_mask": attention_mask,
                "position_ids": position_ids,
                "labels": labels,
            },
            {"input_ids": pad_token_id, "inputs_embeds": 0.0, "attention_mask": 0, "position_ids": 0, "labels": -100},
        )
        image_outputs.pooler_output = [f[k.to(f.device)] for f, k in zip(packed, selection.kept_indices)]
        compacted["mm_encoder_outputs"] = {"image": image_outputs}
        return compacted, selection

    def prune_call(self, call: dict, pruning: bool | None, pad_token_id: int) -> VisualTokenSelection | None:
        """Apply pruning to one call's keyword arguments, in place; returns the selection, or `None` if none applies.

        Pops the per-call overrides. When pruning applies (codebook strategy, images given), replaces `input_ids`
        (or `inputs_embeds`), `attention_mask`, `position_ids` and `labels` by their compacted versions and hands
        the encoded, pruned images over as `mm_encoder_outputs` instead of `pixel_values` / `image_sizes`.
        """
        reference = [name for name in CODEBOOK_REFERENCE_FIELDS if name in call]
        if reference:
            raise ValueError(
                f"{reference} cannot change per call: the codebook is loaded once per model. Use "
                "`model.load_codebook(repo_or_path, revision=...)` to switch codebooks, then call again."
            )
        overrides = {name: call.pop(name) for name in PRUNING_FIELDS if name in call}
        settings = self.pruning_settings(pruning=pruning, **overrides)
        pixel_values = call.get("pixel_values")
        if not settings.active or pixel_values is None or pixel_values.size(0) == 0:
            return None
        compacted, selection = self.prepare_pruned_inputs(
            call.get("input_ids"),
            call.pop("pixel_values"),
            call.pop("image_sizes", None),
            settings,
            attention_mask=call.get("attention_mask"),
            position_ids=call.get("position_ids"),
            labels=call.get("labels"),
            vision_feature_layer=call.get("vision_feature_layer"),
            vision_feature_select_strategy=call.get("vision_feature_select_strategy"),
            pad_token_id=pad_token_id,
            inputs_embeds=call.get("inputs_embeds"),
        )
        call.update({name: value for name, value in compacted.items() if value is not None or name in call})
        for owner, log in _RECORDERS.get():
            if owner == id(self):
                log.append(selection)
        return selection

    # The stock parameters are spelled out: `generate` inspects this signature (e.g. for `mm_encoder_outputs`).
    def forward(
        self,
        input_ids=None,
        pixel_values=None,
        image_sizes=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        vision_feature_layer=None,
        vision_feature_select_strategy=None,
        use_cache=None,
        mm_encoder_outputs=None,
        pruning: bool | None = None,
        **kwargs,
    ) -> LlavaNextCodebookModelOutputWithPast:
        """Stock `LlavaNextModel.forward`, with the images pruned first when `pixel_values` are given.

        Accepts the pruning config fields (`codebook_threshold=...`, `pruning_mode=...`, ...) and `pruning=False` as
        per-call overrides; the output's `visual_token_selection` reports what was kept.
        """
        call = dict(
            input_ids=input_ids,
            pixel_values=pixel_values,
            image_sizes=image_sizes,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            use_cache=use_cache,
            mm_encoder_outputs=mm_encoder_outputs,
            **kwargs,
        )
        selection = self.prune_call(call, pruning, _pad_token_id(self.config))
        outputs = super().forward(**call)
        if isinstance(outputs, tuple):
            return outputs
        return LlavaNextCodebookModelOutputWithPast(**outputs, visual_token_selection=selection)


def _pad_token_id(config) -> int:
    for candidate in (getattr(config, "pad_token_id", None), getattr(config.text_config, "pad_token_id", None)):
        if candidate is not None:
            return int(candidate)
    return 0


class LlavaNextCodebookForConditionalGeneration(_CodebookPruningMixin, LlavaNextForConditionalGeneration):
    config_class = LlavaNextCodebookConfig
    config: LlavaNextCodebookConfig

    def __init__(self, config: LlavaNextCodebookConfig):
        # The stock __init__ hard-codes `LlavaNextModel`; build the same two modules, with the pruning-aware inner
        # model, without constructing (and discarding) a stock one first. Weight names stay stock (`model.*`).
        super(LlavaNextForConditionalGeneration, self).__init__(config)
        self.model = LlavaNextCodebookModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def _pruning_base(self) -> LlavaNextCodebookModel:
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

    def load_codebook(self, codebook=None, **hub_kwargs) -> RedundancyCodebook:
        return self.model.load_codebook(codebook, **hub_kwargs)

    def pruning_settings(self, **overrides) -> PruningSettings:
        return self.model.pruning_settings(**overrides)

    def select_visual_tokens(self, packed_features, image_sizes, settings=None, vision_feature_select_strategy=None):
        return self.model.select_visual_tokens(packed_features, image_sizes, settings, vision_feature_select_strategy)

    def _generation_pad_token_id(self, kwargs) -> int:
        generation_config = kwargs.get("generation_config") or self.generation_config
        for candidate in (kwargs.get("pad_token_id"), generation_config.pad_token_id):
            if candidate is not None:
                return int(candidate if not isinstance(candidate, (list, tuple)) else candidate[0])
        return _pad_token_id(self.config)

    # The stock parameters are spelled out: `generate` inspects this signature (`logits_to_keep`,
    # `mm_encoder_outputs`, `position_ids`), and a missing name silently changes what it passes.
    def forward(
        self,
        input_ids=None,
        pixel_values=None,
        image_sizes=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        vision_feature_layer=None,
        vision_feature_select_strategy=None,
        labels=None,
        use_cache=None,
        logits_to_keep=0,
        mm_encoder_outputs=None,
        pruning: bool | None = None,
        **kwargs,
    ) -> LlavaNextCodebookCausalLMOutputWithPast:
        """Stock `LlavaNextForConditionalGeneration.forward`, with the images pruned first when `pixel_values` are
        given. `input_ids`, `attention_mask`, `position_ids` and `labels` are compacted together, so the logits and
        the loss cover the kept tokens only. Accepts the pruning config fields and `pruning=False` as overrides.
        """
        call = dict(
            input_ids=input_ids,
            pixel_values=pixel_values,
            image_sizes=image_sizes,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            mm_encoder_outputs=mm_encoder_outputs,
            **kwargs,
        )
        selection = self.model.prune_call(call, pruning, self._generation_pad_token_id(kwargs))
        with self.pruning_disabled():
            outputs = super().forward(**call)
        if isinstance(outputs, tuple):
            return outputs
        return LlavaNextCodebookCausalLMOutputWithPast(**outputs, visual_token_selection=selection)

    @torch.no_grad()
    def generate(self, inputs=None, pruning=None, **kwargs):
        """Stock `generate`, on a prompt compacted per image before prefill.

        Accepts the pruning config fields (`codebook_threshold=0.2`, `pruning_mode="budget"`, `keep_ratio=0.1`, ...)
        and `pruning=False` as per-call overrides. The returned sequences start with the caller's original prompt,
        so `out[:, input_ids.shape[1]:]` are the new tokens. With `return_dict_in_generate=True` the output also
        carries `visual_token_selection`.
        """
        if kwargs.get("input_ids") is None and isinstance(inputs, torch.Tensor) and not inputs.is_floating_point():
            kwargs["input_ids"], inputs = inputs, None
        input_ids = kwargs.get("input_ids")
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
    "LlavaNextCodebookModel",
    "LlavaNextCodebookForConditionalGeneration",
    "VisualTokenSelection",
    "PruningSettings",
]
