"""Per-image probe results on disk, so that a build can stop at any point and resume where it stopped.

Layout of a work directory:
    run.json                    the fingerprint of the probes (model, layer, prompt, ranks, pad embedding, ...)
    images/<key>.safetensors    one finished image (tensors + image id and index in the metadata)
    unreadable/<key>.json       one image that did not decode (id, index, error)
Files are written to a temporary name and renamed, so a file that exists is complete.
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


class ResultStore:
    def __init__(self, work_dir: str | os.PathLike):
        self.root = Path(work_dir)
        self.images = self.root / "images"
        self.unreadable = self.root / "unreadable"

    def prepare(self, fingerprint: dict, main_process: bool = True) -> None:
        """Create the directory, or check that an existing one was made with the same fingerprint."""
        run = self.root / "run.json"
        if run.is_file():
            previous = json.loads(run.read_text())
            if previous != fingerprint:
                differ = sorted(k for k in set(previous) | set(fingerprint) if previous.get(k) != fingerprint.get(k))
                raise WorkDirMismatchError(
                    f"The work directory {str(self.root)!r} holds probes made with different settings (differing: "
                    f"{differ}). Use another --work-dir, or delete this one to start over."
                )
            return
        self.images.mkdir(parents=True, exist_ok=True)
        self.unreadable.mkdir(parents=True, exist_ok=True)
        if main_process:
            _atomic_write_text(run, json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")

    def result_path(self, key: str) -> Path:
        return self.images / f"{key}.safetensors"

    def is_done(self, key: str) -> bool:
        return self.result_path(key).is_file()

    def write(self, key: str, result: ImageProbeResult) -> None:
        meta = {"image_id": result.image_id, "index": str(result.index)}
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
        return ImageProbeResult(image_id=meta["image_id"], index=int(meta["index"]), **tensors)

    def mark_unreadable(self, key: str, image_id: str, index: int, error: str) -> None:
        _atomic_write_text(
            self.unreadable / f"{key}.json", json.dumps({"image_id": image_id, "index": index, "error": error}) + "\n"
        )

    def unreadable_record(self, key: str) -> dict | None:
        path = self.unreadable / f"{key}.json"
        return json.loads(path.read_text()) if path.is_file() else None


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def tensor_digest(tensor: torch.Tensor) -> str:
    """A short content hash of a tensor (for fingerprints)."""
    import hashlib

    data = tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]
