"""Per-image probe results on disk, so that a build can stop at any point and resume where it stopped.

Layout of a work directory:
    run.json                    the fingerprint of the probes (model, layer, prompt, ranks, pad embedding, ...)
    images/<key>.safetensors    one finished image (tensors + image id, index and content hash in the metadata)
    unreadable/<key>.json       one image that did not decode (id, index, error, content hash)
Files are written to a temporary name and renamed, so a file that exists is complete.

What a stored result may be reused for: every setting that changes a probe is in `run.json`, and a run with other
settings is refused with the differing values named; within a run, a result counts as finished only for an image of
the same id *and* the same content hash (the SHA-256 of its bytes), so a different image under an old name is probed
again.
"""

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .probe import ImageProbeResult


class WorkDirMismatchError(ValueError):
    """The work directory holds probes of a different model or probe setting."""


# Bumped when what a stored result means changes; a work directory of another format is refused, not misread.
# 2: results carry the content hash of their image.
# 3: token rows are stored apart from probes (`token_probes`, `token_patch_indices`: a probe may feed tied patches).
STORE_FORMAT = 3


class ResultStore:
    def __init__(self, work_dir: str | os.PathLike):
        self.root = Path(work_dir)
        self.images = self.root / "images"
        self.unreadable = self.root / "unreadable"

    def prepare(self, fingerprint: dict, main_process: bool = True) -> None:
        """Create the directory, or check that an existing one was made with the same fingerprint."""
        fingerprint = {"store_format": STORE_FORMAT, **fingerprint}
        run = self.root / "run.json"
        if run.is_file():
            previous = json.loads(run.read_text())
            if previous.get("store_format") != STORE_FORMAT:
                raise WorkDirMismatchError(
                    f"The work directory {str(self.root)!r} was made by another version of llava-codebook (store "
                    f"format {previous.get('store_format', 1)}, this version reads format {STORE_FORMAT}: its results "
                    "mean something else). Use another --work-dir, or delete this one to start over."
                )
            if previous != fingerprint:
                differ = sorted(k for k in set(previous) | set(fingerprint) if previous.get(k) != fingerprint.get(k))
                changes = "; ".join(
                    f"{k}: {_short(previous.get(k))} before, {_short(fingerprint.get(k))} now" for k in differ
                )
                raise WorkDirMismatchError(
                    f"The work directory {str(self.root)!r} holds probes made with different settings ({changes}). "
                    "Use the earlier settings to resume, another --work-dir (or --out) for the new ones, or delete "
                    "this one to start over."
                )
            return
        self.images.mkdir(parents=True, exist_ok=True)
        self.unreadable.mkdir(parents=True, exist_ok=True)
        if main_process:
            _atomic_write_text(run, json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")

    def result_path(self, key: str) -> Path:
        return self.images / f"{key}.safetensors"

    def result_content(self, key: str) -> str | None:
        """The content hash of the image a stored result was probed from ("" if unknown); None without a result."""
        path = self.result_path(key)
        if not path.is_file():
            return None
        with safe_open(str(path), framework="pt", device="cpu") as reader:
            return reader.metadata().get("content_sha256", "")

    def is_done(self, key: str, content_sha256: str = "") -> bool:
        """A result for `key` exists and was probed from an image with this content hash."""
        return self.result_content(key) == content_sha256

    def write(self, key: str, result: ImageProbeResult) -> None:
        meta = {"image_id": result.image_id, "index": str(result.index), "content_sha256": result.content_sha256}
        path = self.result_path(key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file(result.tensors(), tmp, metadata=meta)
        os.replace(tmp, path)
        stale = self.unreadable / f"{key}.json"
        if stale.exists():
            stale.unlink()

    def read(self, key: str) -> ImageProbeResult:
        with safe_open(str(self.result_path(key)), framework="pt", device="cpu") as reader:
            meta = reader.metadata()
            tensors = {name: reader.get_tensor(name) for name in ImageProbeResult.TENSORS}
        return ImageProbeResult(
            image_id=meta["image_id"],
            index=int(meta["index"]),
            content_sha256=meta.get("content_sha256", ""),
            **tensors,
        )

    def mark_unreadable(self, key: str, image_id: str, index: int, error: str, content_sha256: str = "") -> None:
        record = {"image_id": image_id, "index": index, "error": error, "content_sha256": content_sha256}
        _atomic_write_text(self.unreadable / f"{key}.json", json.dumps(record) + "\n")

    def unreadable_record(self, key: str, content_sha256: str = "") -> dict | None:
        """The record of an image found unreadable, if it had this content hash (a replaced file is tried again)."""
        path = self.unreadable / f"{key}.json"
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        if record.pop("content_sha256", "") != content_sha256:
            return None
        return record


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _short(value, limit: int = 60) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def tensor_digest(tensor: torch.Tensor) -> str:
    """A short content hash of a tensor (for fingerprints)."""
    import hashlib

    data = tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]
