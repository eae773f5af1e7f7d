"""Import a codebook released as a pickled PyTorch file (`torch.save` of one fp16 `[K, D]` tensor) into safetensors.

The file is read with `torch.load(..., map_location="cpu", weights_only=True)`, which refuses anything but tensors
and plain containers, so importing cannot run code. The rows keep their dtype and values exactly (duplicates too).
"""

import hashlib
import os
import re
from pathlib import Path

import torch

from ..codebook import CodebookError, RedundancyCodebook


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_release_tensor(path: str | os.PathLike) -> torch.Tensor:
    """The `[K, D]` tensor of a released `.pt` codebook, on CPU, in its saved dtype."""
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
    if isinstance(value, dict) and len(value) == 1:
        (value,) = value.values()
    if not isinstance(value, torch.Tensor):
        raise CodebookError(f"{str(path)!r} holds a {type(value).__name__}, expected one [K, D] tensor.")
    if value.ndim != 2 or not value.is_floating_point():
        raise CodebookError(
            f"{str(path)!r} holds a {value.dtype} tensor of shape {tuple(value.shape)}, expected a float [K, D] tensor."
        )
    return value


def import_release_codebook(
    path: str | os.PathLike,
    base_model: str,
    *,
    out: str | os.PathLike | None = None,
    vision_feature_layer: int | list[int] | None = -2,
    base_model_revision: str | None = None,
) -> RedundancyCodebook:
    """Turn a released `.pt` codebook into a `RedundancyCodebook` declared for `base_model` (saved to `out` if given).

    A file name with `numPrototypes-K` (the release's naming) must hold K rows; a mismatch means a wrong or
    truncated file and is an error.
    """
    path = Path(path)
    prototypes = load_release_tensor(path)
    named = re.search(r"numPrototypes-(\d+)", path.name)
    if named and int(named.group(1)) != prototypes.shape[0]:
        raise CodebookError(
            f"{path.name!r} says {named.group(1)} prototypes but holds {prototypes.shape[0]} rows: the file is not the "
            "released one (re-download it)."
        )
    unique_rows = torch.unique(prototypes, dim=0).shape[0]
    codebook = RedundancyCodebook(
        prototypes=prototypes.contiguous(),
        base_model=f"{base_model}@{base_model_revision}" if base_model_revision else base_model,
        vision_feature_layer=vision_feature_layer,
        build_parameters={
            "method": "imported from a released codebook (arXiv 2503.20540)",
            "source_file": path.name,
            "source_sha256": _sha256(path),
            "source_format": "torch.save tensor, read with weights_only=True",
            "num_duplicate_rows": prototypes.shape[0] - unique_rows,
        },
    )
    if out is not None:
        codebook.save_pretrained(out)
    return codebook
