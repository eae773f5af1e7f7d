"""The settings in force for one call and the report of what it kept, for every pruning-enabled class.

- `PruningSettings`: the config's pruning fields with any per-call overrides applied (`resolve_settings`); a budget
  given in a call means budget mode, `pruning=False` turns pruning off.
- `pruning_disabled()` / `record_selections()`: per thread (and asyncio task) switches, so concurrent requests on one
  served model never see each other's state.
- `VisualTokenSelection`: which packed visual tokens of each image (video) reached the language model, returned by
  `forward` and `generate`.
"""

import contextlib
import contextvars
from dataclasses import dataclass

import torch
from transformers.generation.utils import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput
from transformers.modeling_outputs import ModelOutput

from .pruning_config import PRUNING_VALIDATORS, check_family_has_tiles, validate_pruning_settings

PRUNING_FIELDS = tuple(PRUNING_VALIDATORS)
OVERRIDE_NAMES = PRUNING_FIELDS + ("pruning",)
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
    pruning_seed: int = 0
    cls_attention_layer: int = -2
    visionzip_dominant_ratio: float = 0.84375
    hired_base_share: float = 0.5
    hired_budget_layer: int = 0
    tile_skipping: bool = False
    tile_skip_share: float = 0.9

    @property
    def active(self) -> bool:
        return self.pruning_strategy != "none"


@dataclass
class VisualTokenSelection(ModelOutput):
    r"""
    Which packed visual tokens of each visual segment (an image, or a video) reached the language model.

    Every per-segment field lists the segments in prompt order: row by row through the batch, and within a row in the
    order its images and videos appear in the text (`[video prompt, image prompt]` gives `["video", "image"]`).

    num_kept (`torch.LongTensor` of shape `(num_segments,)`):
        Tokens kept per segment, row newlines included (what the language model receives).
    num_total (`torch.LongTensor` of shape `(num_segments,)`):
        Tokens the stock model would have given the language model for each segment.
    kept_indices (`list[torch.LongTensor]`):
        Per segment, ascending indices of the kept tokens in the stock packed order (for a LLaVA-NeXT image: base crop,
        then the unpadded tile grid row by row, each row followed by its newline token; for a video: its pooled frames
        in order, then the trailing newline where the family has one).
    scores (`list[torch.FloatTensor]`, *optional*):
        Per segment, the per-token score the strategy ranked by (codebook: the redundancy `max_k cos(z_i, C_k)`).
    newline_mask (`list[torch.BoolTensor]`):
        Per segment, which packed tokens are row-newline tokens.
    modalities (`list[str]`):
        Per segment, `"image"` or `"video"`, in prompt order.
    strategy (`str`):
        The `pruning_strategy` that chose the tokens.
    merged_features (`list[torch.FloatTensor]`, *optional*):
        For a merging strategy (`"visionzip"`), per segment the `[num_kept, D]` features handed to the language model
        for the kept tokens (merged tokens differ from their own packed features); `None` when every kept token
        carries its own features.
    skipped_tiles (`list[torch.LongTensor | None]`, *optional*):
        With `tile_skipping`, per segment the crop ids of the AnyRes tiles that were never encoded (1 = the first
        tile, row-major, as in `pixel_values`; empty when none was skipped; `None` for a segment with no tiles to
        skip, such as a video). Their packed tokens count as dropped. `None` when tile skipping was off.
    """

    num_kept: torch.LongTensor | None = None
    num_total: torch.LongTensor | None = None
    kept_indices: list[torch.LongTensor] | None = None
    scores: list[torch.FloatTensor] | None = None
    newline_mask: list[torch.BoolTensor] | None = None
    modalities: list[str] | None = None
    strategy: str | None = None
    merged_features: list[torch.FloatTensor | None] | None = None
    skipped_tiles: list[torch.LongTensor | None] | None = None

    def keep_masks(self) -> list[torch.BoolTensor]:
        """Per segment, a bool mask over its packed tokens (True = kept)."""
        masks = []
        for indices, newline in zip(self.kept_indices, self.newline_mask):
            mask = torch.zeros(newline.shape[0], dtype=torch.bool, device=indices.device)
            mask[indices] = True
            masks.append(mask)
        return masks


@dataclass
class CodebookGenerateDecoderOnlyOutput(GenerateDecoderOnlyOutput):
    visual_token_selection: VisualTokenSelection | None = None


@dataclass
class CodebookGenerateBeamDecoderOnlyOutput(GenerateBeamDecoderOnlyOutput):
    visual_token_selection: VisualTokenSelection | None = None


def resolve_settings(config, overrides: dict, enabled: bool = True) -> PruningSettings:
    """The settings in force for one call: `config`'s pruning values, then the per-call `overrides` (`pruning=False`
    turns pruning off, as does `enabled=False`, the state of `pruning_disabled()`)."""
    unknown = set(overrides) - set(OVERRIDE_NAMES)
    if unknown:
        raise TypeError(f"Unknown pruning arguments {sorted(unknown)}; expected some of {OVERRIDE_NAMES}.")
    values = {name: getattr(config, name) for name in PRUNING_FIELDS}
    values.update({k: v for k, v in overrides.items() if k in PRUNING_FIELDS and v is not None})
    if overrides.get("keep_ratio") is not None and overrides.get("keep_tokens") is None:
        # A share asked for in this call is the budget of this call, even where the config fixes a token count.
        values["keep_tokens"] = None
    budget_given = overrides.get("keep_tokens") is not None or overrides.get("keep_ratio") is not None
    if budget_given and overrides.get("pruning_mode") is None:
        # A budget asked for in this call means budget mode, whatever mode the config is in.
        values["pruning_mode"] = "budget"
    pruning = overrides.get("pruning")
    if pruning is True and values["pruning_strategy"] == "none":
        values["pruning_strategy"] = "codebook"
    if pruning is False or not enabled:
        values["pruning_strategy"] = "none"
    check_family_has_tiles(type(config), values["tile_skipping"])
    return PruningSettings(**validate_pruning_settings(**values))


class SettingsMixin:
    """The per-thread switches and the settings in force, shared by a family's base and generation model;
    `_pruning_base()` is the model whose id the switches are keyed on."""

    @contextlib.contextmanager
    def pruning_disabled(self):
        """Run the stock computation (no selection, no compaction) inside the `with` block.

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

    def pruning_settings(self, **overrides) -> PruningSettings:
        """The settings a call with these overrides would run under."""
        return resolve_settings(self._pruning_base().config, overrides, self._pruning_enabled)

    def report_selection(self, selection: "VisualTokenSelection") -> None:
        """Hand `selection` to every open `record_selections()` block of this model in the current thread / task."""
        for owner, log in _RECORDERS.get():
            if owner == id(self._pruning_base()):
                log.append(selection)


__all__ = [
    "OVERRIDE_NAMES",
    "PRUNING_FIELDS",
    "CodebookGenerateBeamDecoderOnlyOutput",
    "CodebookGenerateDecoderOnlyOutput",
    "PruningSettings",
    "SettingsMixin",
    "VisualTokenSelection",
    "resolve_settings",
]
