"""The whole build pipeline on the tiny random model (`llava_codebook.tiny`) with synthetic images, in seconds.

The tiny model's probes are noise (random weights), so the preset here is permissive; what the run shows is the
mechanics end to end: probes, divergences, redundancy test, both clustering steps and a loadable codebook.
"""

from pathlib import Path

import numpy as np

from .presets import BuildPreset

TINY_PRESET = BuildPreset(
    top1_prob_thres=0.5,
    jsd_thres=1e-2,
    cluster_size_thres=8,
    prototype_cluster_nums=8,
    min_unique_images=2,
    per_image_clusters=4,
)


def synthetic_images(count: int = 8, seed: int = 0, side: int = 96):
    """Deterministic RGB PIL images: even positions flat colours, odd positions textured (noise + stripes)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        if index % 2 == 0:
            colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
            images.append(Image.new("RGB", (side, side + 8 * (index % 3)), colour))
        else:
            noise = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
            noise[:, :: 7 + index % 5] = 255
            images.append(Image.fromarray(noise, "RGB"))
    return images


def build_tiny_pipeline_codebook(
    out: str | Path | None = None,
    work_dir: str | Path | None = None,
    num_images: int = 8,
    seed: int = 0,
    progress: bool = False,
    **kwargs,
):
    """Run the full pipeline on the tiny model and `num_images` synthetic images; returns the `BuildResult`.

    Without `out` / `work_dir`, a temporary work directory is used and the codebook is only returned.
    """  # fmt: skip
    import tempfile

    from ..tiny import build_tiny_model, build_tiny_processor
    from .build import build_codebook
    from .data import pil_images

    model, processor = build_tiny_model(seed), build_tiny_processor()
    kwargs.setdefault("preset", TINY_PRESET)
    kwargs.setdefault("base_model", "llava-codebook/tiny-random")
    images = pil_images(synthetic_images(num_images, seed=seed), ids=[f"synthetic-{i:03d}" for i in range(num_images)])
    if out is None and work_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            return build_codebook(model, processor, images, work_dir=tmp, progress=progress, **kwargs)
    return build_codebook(model, processor, images, out=out, work_dir=work_dir, progress=progress, **kwargs)
