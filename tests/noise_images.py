"""Seeded random-noise images and clips: inputs whose every token differs, so no rule finds them redundant by chance."""

import numpy as np
from PIL import Image


def picture(height: int, width: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def clip(frames: int, seed: int) -> list[Image.Image]:
    """`frames` 60x80 noise frames, each its own seed."""
    return [picture(60, 80, seed + i) for i in range(frames)]
