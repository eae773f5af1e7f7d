"""Shared fixtures: everything is built in code and runs offline."""

import os

# huggingface_hub reads these once, at import: set them before anything imports it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SEED_CODEBOOKS = REPO_ROOT.parent / "shared" / "seed-codebooks"


@pytest.fixture(scope="session")
def tiny_processor():
    from llava_codebook.tiny import build_tiny_processor

    return build_tiny_processor()


@pytest.fixture(scope="session")
def tiny_codebook(tiny_processor):
    from llava_codebook.tiny import build_tiny_model, flat_colour_codebook

    return flat_colour_codebook(build_tiny_model(seed=0), tiny_processor)


@pytest.fixture
def tiny_model(tiny_codebook):
    """A fresh tiny model (seed 0) with the flat-colour codebook attached; threshold 0.9 prunes flat regions."""
    from llava_codebook.tiny import build_tiny_model

    model = build_tiny_model(seed=0, codebook_threshold=0.9)
    model.load_codebook(tiny_codebook)
    return model


def textured(height: int, width: int, seed: int = 0, flat_share: float = 0.5) -> Image.Image:
    """An image whose left part is noise and the rest flat white: some tokens are kept, some dropped."""
    rng = np.random.default_rng(seed)
    pixels = np.full((height, width, 3), 255, dtype=np.uint8)
    noisy = int(width * (1 - flat_share))
    pixels[:, :noisy] = rng.integers(0, 256, (height, noisy, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture
def images():
    """Images of different sizes, hence different AnyRes grids in the tiny model."""
    return {
        "wide": textured(90, 150, seed=1),
        "tall": textured(130, 70, seed=2, flat_share=0.3),
        "square": textured(100, 100, seed=3, flat_share=0.7),
    }


@pytest.fixture(scope="session")
def stock_checkpoints(tmp_path_factory):
    """family -> directory of a stock checkpoint shaped like its llava-hf Hub repository (see tests/hub_fixtures.py).

    Built once per session (about a second for all four); tests must not write into these directories.
    """
    from hub_fixtures import build_stock_checkpoints

    return build_stock_checkpoints(tmp_path_factory.mktemp("stock-checkpoints"))
