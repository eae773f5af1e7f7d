"""Small fixtures for the codebook-builder tests: a seeded offline Hub cache and synthetic image folders."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path


def _seed_codebooks() -> Path:
    """`shared/seed-codebooks` next to the checkout (or next to the folder of worktrees it sits in)."""
    for folder in Path(__file__).resolve().parents[1:]:
        if (folder / "shared" / "seed-codebooks").is_dir():
            return folder / "shared" / "seed-codebooks"
    return Path(__file__).resolve().parents[2] / "shared" / "seed-codebooks"


SEED_CODEBOOKS = _seed_codebooks()


def seed_hub_cache(cache: Path, repo_id: str, files: dict[str, Path | bytes], revision: str = "main") -> Path:
    """Lay `files` out as the Hub cache would after a download of `repo_id` at `revision`; returns the snapshot."""
    sha = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    repo_dir = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / sha
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / revision).write_text(sha)
    for name, content in files.items():
        target = snapshot / name
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            shutil.copyfile(content, target)
    return snapshot


def save_images(folder: Path, images, names=None) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"img-{i:03d}.png" for i in range(len(images))]
    for name, image in zip(names, images):
        image.save(folder / name)
    return names


def run_offline(code: str, cache: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter with HF_HUB_OFFLINE=1 and HF_HUB_CACHE=`cache` set before any import."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HUB_DISABLE_TELEMETRY": "1"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
