"""Import a codebook released as a pickled PyTorch file (`torch.save` of one fp16 `[K, D]` tensor) into safetensors.

A file holding a dict (`{"prototypes": tensor}`) is accepted when the dict has one entry, or with `key=` naming
the entry; the entry used is recorded in the provenance (`source_key`). Several entries and no `key` is refused with
the keys found: guessing could import the wrong matrix.

The file is read with `torch.load(..., map_location="cpu", weights_only=True)`, which refuses anything but tensors
and plain containers, so importing cannot run code. The rows keep their dtype and values exactly (duplicates too).
"""

import hashlib
import os
import re
from pathlib import Path

import torch

from ..codebook import CodebookError, RedundancyCodebook
from ..output_dir import check_output_dir, write_output_dir


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_release_tensor(path: str | os.PathLike, key: str | None = None) -> tuple[torch.Tensor, str | None]:
    """The `[K, D]` tensor of a released `.pt` codebook, on CPU, in its saved dtype, and the dict key it was found
    under (None for a file holding the tensor itself)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Release file {str(path)!r} does not exist.")
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for non-tensor or corrupt pickles
        raise CodebookError(
            f"{str(path)!r} could not be read as a tensor-only PyTorch file ({type(err).__name__}: {err}). Only "
            "files holding plain tensors are imported; anything needing arbitrary unpickling is refused."
        ) from err
    picked = None
    if isinstance(value, dict):
        found = ", ".join(f"{str(k)!r} ({_describe(v)})" for k, v in value.items()) or "none"
        if key is not None:
            if key not in value:
                raise CodebookError(f"{str(path)!r} has no entry {key!r}; its keys are: {found}.")
            picked = key
        elif len(value) == 1:
            (picked,) = value
        else:
            raise CodebookError(
                f"{str(path)!r} holds a dict of {len(value)} entries ({found}); say which one is the codebook with "
                "--key NAME (key= in Python)."
            )
        value = value[picked]
    elif key is not None:
        raise CodebookError(f"{str(path)!r} holds a {type(value).__name__}, not a dict: drop --key.")
    where = f"{str(path)!r}" + (f" (entry {picked!r})" if picked is not None else "")
    if not isinstance(value, torch.Tensor):
        raise CodebookError(f"{where} holds a {type(value).__name__}, expected one [K, D] tensor.")
    if value.ndim != 2 or not value.is_floating_point() or value.shape[0] < 2:
        # The release ships its pad-token embeddings as .pt files beside the codebooks: one row of the same width.
        single_vector = value.ndim == 1 or (value.ndim == 2 and value.shape[0] == 1)
        hint = (
            " A single vector, such as a pad-token embedding (the release's pad_embs/*.pt), is not a codebook; "
            "`llava-codebook build` takes one as --pad-embedding."
            if single_vector
            else ""
        )
        raise CodebookError(
            f"{where} holds a {str(value.dtype).removeprefix('torch.')} tensor of shape {list(value.shape)}, not a "
            f"float [K, D] prototype matrix with at least 2 rows.{hint}"
        )
    return value, picked


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"{str(value.dtype).removeprefix('torch.')} {list(value.shape)}"
    return type(value).__name__


def import_release_codebook(
    path: str | os.PathLike,
    base_model: str,
    *,
    out: str | os.PathLike | None = None,
    vision_feature_layer: int | list[int] | None = None,
    base_model_revision: str | None = None,
    key: str | None = None,
    overwrite: bool = False,
    verify_base_model: bool = True,
    token: str | bool | None = None,
) -> RedundancyCodebook:
    """Turn a released `.pt` codebook into a `RedundancyCodebook` declared for `base_model` (saved to `out` if given).

    A file name with `numPrototypes-K` (the release's naming) must hold K rows; a mismatch means a wrong or
    truncated file and is an error. `key` names the entry of a file holding a dict. `out` must be new or empty
    unless `overwrite` (then its contents are replaced whole, so no card of another codebook survives).

    With `verify_base_model` (the default) the base model's `config.json` is read (a local directory, or a Hub id
    through the Hub and its cache) and the import is refused unless the model is of a family llava-codebook loads
    (`llava`, `llava_next`, `llava_onevision`, `llava_next_video`) and its text hidden size is the codebook's
    dimension. `vision_feature_layer` defaults to the base model's own (-2 when it is not verified).
    """
    path = Path(path)
    sources = {"release file": path}
    if out is not None:
        check_output_dir(out, overwrite=overwrite, sources=sources)
    # The file first: a wrong one is refused before the base model is read (which may mean the Hub).
    prototypes, picked = load_release_tensor(path, key=key)
    named = re.search(r"numPrototypes-(\d+)", path.name)
    if named and int(named.group(1)) != prototypes.shape[0]:
        raise CodebookError(
            f"{path.name!r} says {named.group(1)} prototypes but holds {prototypes.shape[0]} rows: the file is not the "
            "released one (re-download it)."
        )
    reference = f"{base_model}@{base_model_revision}" if base_model_revision else base_model
    model_type = None
    if verify_base_model:
        from ..families import family_for_config
        from .hub import base_model_config

        config = base_model_config(reference, token=token)
        family = family_for_config(config, base_model)
        model_type = family.stock_model_type
        if vision_feature_layer is None:
            default = family.config_class.__dataclass_fields__["vision_feature_layer"].default
            vision_feature_layer = config.get("vision_feature_layer", default)
    elif vision_feature_layer is None:
        vision_feature_layer = -2
    unique_rows = torch.unique(prototypes, dim=0).shape[0]
    codebook = RedundancyCodebook(
        prototypes=prototypes.contiguous(),
        base_model=reference,
        base_model_type=model_type,
        vision_feature_layer=vision_feature_layer,
        build_parameters={
            "method": "imported from a released codebook (arXiv 2503.20540)",
            "source_file": path.name,
            "source_sha256": _sha256(path),
            "source_format": "torch.save tensor, read with weights_only=True",
            **({"source_key": picked} if picked is not None else {}),
            "num_duplicate_rows": prototypes.shape[0] - unique_rows,
        },
    )
    if verify_base_model:
        from .hub import verify_against_base_model

        verify_against_base_model(codebook, token=token)
    if out is not None:
        with write_output_dir(out, overwrite=overwrite, sources=sources) as staging:
            codebook.save_pretrained(staging)
    return codebook
