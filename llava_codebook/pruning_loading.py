"""Checkpoint loading and layout, and the codebook reference, for every pruning-enabled class.

- Loading never loses a weight: `from_pretrained` refuses missing, unused or reshaped weights
  (`IncompleteCheckpointError`) instead of returning a model with randomly initialised tensors.
- The stock checkpoint key layout is registered for the project's `model_type`s, so llava-hf repos load and save as
  the stock class does (`register_stock_checkpoint_layout`).
- The codebook is not a weight: it is resolved from the config's reference (`codebook_repo`, `codebook_filename`,
  `codebook_revision`) once the weights are in place, and saved with the model when it lives in the model's own repo.
"""

from pathlib import Path

import torch
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping

from .codebook import RedundancyCodebook
from .strategies import NEEDS_CODEBOOK

CODEBOOK_REFERENCE_FIELDS = ("codebook_repo", "codebook_filename", "codebook_revision")
_CODEBOOK_LOAD_KWARGS = ("cache_dir", "local_files_only", "token")
SELF_REPO = "."  # `codebook_repo` value meaning "the repo this model was loaded from"


def register_stock_checkpoint_layout(model_type: str, stock_model_type: str) -> None:
    """Load and save `model_type` checkpoints with the key layout of the stock `stock_model_type` class (either may
    also be a class name: transformers looks class names up first).

    Every llava-hf repo stores the legacy layout (`language_model.model.*`, `language_model.lm_head.weight`,
    `vision_tower.*`, ...), which the stock class renames on load (and back on save) through transformers'
    checkpoint-conversion table. That table skips custom-code classes unless their `model_type` is registered, so
    without this call the language model of every real checkpoint would load as missing and be initialised at
    random. A family's modeling file calls it when it is imported, which every load and save of its classes does
    (the installed package and the remote-code copy alike): saving and loading stay symmetric.
    """
    register_checkpoint_conversion_mapping(
        model_type, get_checkpoint_conversion_mapping(stock_model_type), overwrite=True
    )


class IncompleteCheckpointError(ValueError):
    """Loading a checkpoint would have left weights of the model missing, unused, or of another shape."""


def refuse_incomplete_load(model, info: dict, source) -> None:
    """Raise `IncompleteCheckpointError` naming every key that a load did not fill exactly."""
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
        f"Loading {str(source)!r} into {type(model).__name__} does not fill every weight exactly:\n"
        + "\n".join(lines)
        + "\nThe model was not returned, so no randomly initialised weight can be used by mistake. Load a checkpoint "
        "of this model family (stock llava-hf layout or a repo written by this package) whose config matches its "
        "weights; a stock checkpoint is loaded with `load_pruned_model(...)`."
    )


class CheckpointMixin:
    """Strict loading, saving with the codebook, and the codebook itself; `_pruning_base()` is the model holding the
    pruning config and the codebook (the base model of a family, also inside its generation model)."""

    @classmethod
    def is_custom_code(cls) -> bool:
        # The weights are initialised by the stock `_init_weights`, so transformers' shortcut for custom code (which
        # treats every module without parameters of its own as initialised) must not apply: it skips CLIPAttention /
        # CLIPMLP, whose init sets their projections, whenever a model is initialised from the meta device. The
        # checkpoint key conversions stay exactly those the family registers.
        return False

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
        refuse_incomplete_load(model, info, pretrained_model_name_or_path)
        # The codebook is not a weight: it is resolved from the config's reference once the weights are in place,
        # so that meta-device initialisation cannot touch it.
        base = model._pruning_base()
        if base.config.pruning_strategy in NEEDS_CODEBOOK and base.config.codebook_repo is not None:
            hub_kwargs = {key: kwargs[key] for key in _CODEBOOK_LOAD_KWARGS if key in kwargs}
            if base.config.codebook_repo == SELF_REPO:
                # The codebook ships inside this model's repo: resolve it at the revision the weights came from.
                hub_kwargs["revision"] = base.config.codebook_revision or kwargs.get("revision")
            base.load_codebook(**hub_kwargs)
        return (model, info) if output_loading_info else model

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Stock `save_pretrained` (stock key layout), plus the codebook when it lives in the repo itself.

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

    @property
    def codebook(self) -> RedundancyCodebook | None:
        return self._pruning_base()._codebook

    def load_codebook(self, codebook=None, **hub_kwargs) -> RedundancyCodebook:
        return self._pruning_base()._load_codebook(codebook, **hub_kwargs)


class CodebookHolderMixin:
    """What the base model of a family holds: the codebook, loaded lazily from the config's reference."""

    def __init__(self, config):
        super().__init__(config)
        self._codebook: RedundancyCodebook | None = None
        self._prototypes_on_device: dict = {}

    def _load_codebook(
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

    def codebook_prototypes(self, device: torch.device) -> torch.Tensor:
        """The codebook's rows on `device` (loaded from the config's reference on first use), cached per device."""
        if self._codebook is None:
            self._load_codebook()
        key = str(device)
        if key not in self._prototypes_on_device:
            self._prototypes_on_device[key] = self._codebook.prototypes.to(device)
        return self._prototypes_on_device[key]


__all__ = [
    "CODEBOOK_REFERENCE_FIELDS",
    "CheckpointMixin",
    "CodebookHolderMixin",
    "IncompleteCheckpointError",
    "SELF_REPO",
    "refuse_incomplete_load",
    "register_stock_checkpoint_layout",
]
