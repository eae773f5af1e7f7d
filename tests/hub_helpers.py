"""Seed a local Hugging Face Hub cache so the real `hf_hub_download` resolves repos offline."""

import hashlib
import shutil
from pathlib import Path


def seed_hub_cache(cache_dir, repo_id: str, files: dict, revision: str = "main") -> str:
    """Lay `files` ({name in repo: local path}) out as the Hub cache does for `repo_id` at `revision`.

    Returns the fake commit hash the revision points to.
    """
    repo_dir = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    snapshot = repo_dir / "snapshots" / commit
    for name, source in files.items():
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / revision).write_text(commit)
    return commit
