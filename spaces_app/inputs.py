"""Input checks and confinement: every input of every endpoint is checked here, with one set of limits and one
wording, before anything is computed.

`validate_inputs` checks a request (the cheap inputs first, the picture last) and returns them typed; `locate_image`
confines a path to the upload cache and the examples; `check_image` reads a picture's size from its header before any
pixel is decoded. Videos are read by `video_inputs.check_video`.
"""

import base64
import binascii
import io
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from llava_codebook.strategies import STRATEGIES

from . import limits

logger = logging.getLogger("llava_codebook.space")


class InputError(ValueError):
    """A problem with what the user gave (image, question, settings), worded for the user."""


PRUNING_MODES = ("threshold", "budget")

# One message for every image path that is refused or cannot be read, whatever the reason (outside the allowed
# folders, missing, a directory, not a picture, truncated): a different message per reason would tell a caller
# which paths exist on the server.
UNREADABLE_IMAGE = (
    "That file could not be read as an image. Upload a PNG, JPEG or WebP picture (and upload it again if it was a "
    "while ago: uploads expire)."
)

IMAGE_FORM = (
    "The image must be a file uploaded to this Space, sent as {{'path': <the path /gradio_api/upload returned>, "
    "'meta': {{'_type': 'gradio.FileData'}}}} (gradio_client: handle_file(local_path)); got {got}."
)

_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)

MISSING_IMAGE = "Upload an image (or pick an example) first."


class MissingImage(InputError):
    """No image was given: the preview shows a prompt for one rather than an error."""


def _type_name(value) -> str:
    return "nothing" if value is None else type(value).__name__


def locate_image(image, allowed_dirs=None):
    """Where an image input's pixels are, without reading them: a PIL image, the bytes of a `data:` URL, or a path.

    `image` may be a PIL image, a numpy array, a path, or Gradio's file payload (a dict with `path`, or with a
    base64 `data:` URL). With `allowed_dirs`, a path must lie inside one of them once links and `..` are resolved;
    anything else gets `UNREADABLE_IMAGE`. A URL is refused before anything would fetch it.
    """
    if isinstance(image, dict):
        path, url = image.get("path"), image.get("url")
        if path is None and isinstance(url, str) and url.startswith("data:"):
            header, _, data = url.partition(",")
            if not header.endswith(";base64"):
                raise InputError(IMAGE_FORM.format(got="a data: URL that is not base64"))
            try:
                return base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InputError(UNREADABLE_IMAGE) from exc
        if path is None and isinstance(url, str):
            raise InputError(IMAGE_FORM.format(got="a URL: this Space does not download images"))
        if not isinstance(path, str) or not path:
            raise InputError(IMAGE_FORM.format(got=f"a dict whose path is {_type_name(path)}"))
        image = path
    if image is None:
        raise MissingImage(MISSING_IMAGE)
    if isinstance(image, np.ndarray):
        try:
            return Image.fromarray(image)
        except (TypeError, ValueError) as exc:
            raise InputError(f"That array is not an image ({exc}).") from exc
    if isinstance(image, Image.Image):
        return image
    if not isinstance(image, (str, os.PathLike)):
        raise InputError(IMAGE_FORM.format(got=_type_name(image)))
    path = os.fspath(image)
    if _URL.match(path):
        raise InputError(IMAGE_FORM.format(got="a URL: this Space does not download images"))
    if allowed_dirs is None:
        return path
    try:
        resolved = Path(path).resolve()  # follows every link and `..`: what would actually be opened
    except (OSError, ValueError, RuntimeError) as exc:  # a NUL byte, a symlink loop
        raise InputError(UNREADABLE_IMAGE) from exc
    if not any(resolved.is_relative_to(folder) for folder in allowed_dirs):
        logger.warning("Refused an image path outside the upload cache and the examples: %r", path[:300])
        raise InputError(UNREADABLE_IMAGE)
    if not resolved.is_file():  # a directory, or a FIFO or device, which opening could block on
        raise InputError(UNREADABLE_IMAGE)
    return resolved


def check_image(image, allowed_dirs=None) -> Image.Image:
    """An RGB PIL image from any form `locate_image` takes, or an `InputError` that says what is wrong with it."""
    source = locate_image(image, allowed_dirs)
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    if not isinstance(source, Image.Image):
        try:
            source = Image.open(source)  # reads the header only: the size is checked before any pixel is decoded
        except Image.DecompressionBombError as exc:
            raise InputError(
                f"That image is far larger than this Space accepts ({limits.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels, "
                f"{limits.MAX_IMAGE_SIDE} px a side). Downscale it first."
            ) from exc
        except Exception as exc:  # missing, a directory, not an image: all the same to the caller
            raise InputError(UNREADABLE_IMAGE) from exc
    width, height = source.size
    if width < 1 or height < 1:
        raise InputError("That image is empty (0 pixels).")
    if width * height > limits.MAX_IMAGE_PIXELS or max(width, height) > limits.MAX_IMAGE_SIDE:
        raise InputError(
            f"That image is {width}x{height} pixels; this Space accepts up to "
            f"{limits.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels and {limits.MAX_IMAGE_SIDE} px a side. "
            "Downscale it first (the model sees at most 1008 px a side anyway)."
        )
    try:
        return ImageOps.exif_transpose(source).convert("RGB")
    except Exception as exc:  # truncated or corrupt pixel data
        raise InputError(UNREADABLE_IMAGE) from exc


def check_question(question, required: bool = True, image_token: str = "<image>") -> str:
    """The question, stripped; or an `InputError` naming what is wrong (type, length, characters, reserved tokens)."""
    if question is None:
        question = ""
    if not isinstance(question, str):
        raise InputError(f"The question must be text; got {_type_name(question)}.")
    question = question.strip()
    if required and not question:
        raise InputError("Type a question about the image.")
    if len(question) > limits.MAX_QUESTION_CHARS:
        raise InputError(f"The question is {len(question)} characters long; keep it under {limits.MAX_QUESTION_CHARS}.")
    surrogate = next((char for char in question if "\ud800" <= char <= "\udfff"), None)
    if surrogate is not None:
        raise InputError(
            f"The question contains U+{ord(surrogate):04X}, half of a UTF-16 surrogate pair and not a character on "
            "its own; retype the question (or send it as UTF-8)."
        )
    if image_token and image_token in question:
        raise InputError(
            f"The question contains the model's image placeholder ({image_token}); remove it: the picture is attached "
            "for you."
        )
    return question


def check_number(value, what: str, low: float, high: float, low_open: bool = False, whole: bool = False):
    """`value` as a float (an int with `whole`) within [low, high] (or (low, high]), or an `InputError` about it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{what} must be a number; got {_type_name(value)}.")
    if not math.isfinite(value):
        raise InputError(f"{what} must be a finite number; got {value}.")
    if whole and value != int(value):
        raise InputError(f"{what} must be a whole number; got {value}.")
    if value < low or value > high or (low_open and value == low):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise InputError(f"{what} must lie in {interval}; got {value}.")
    return int(value) if whole else float(value)


def check_flag(value, what: str) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{what} must be true or false; got {_type_name(value)}.")
    return value


def check_mode(mode) -> str:
    if not isinstance(mode, str) or mode not in PRUNING_MODES:
        raise InputError(f"Unknown pruning mode {repr(mode)[:60]}; choose 'threshold' or 'budget'.")
    return mode


# The strategies the Space can offer, as the selectors name them (`llava_codebook.strategies.STRATEGIES`; a model
# serves those it can run, `Backend.strategies`). The table in docs/strategies.md says more of each.
STRATEGY_LABELS = {
    "codebook": "codebook: redundancy codebook",
    "codebook_diverse": "codebook_diverse: codebook, then the most diverse",
    "cls_attention": "cls_attention: [CLS] attention (FasterVLM)",
    "visionzip": "visionzip: dominant + merged tokens (VisionZip)",
    "divprune": "divprune: max-min diversity (DivPrune)",
    "hired": "hired: [CLS]-attention budget over crops (HiRED)",
    "random": "random: a seeded random subset (baseline)",
    "uniform": "uniform: a strided grid (baseline)",
}


def strategy_modes(strategy: str) -> tuple[str, ...]:
    """The pruning modes a strategy defines (the codebook alone also has a threshold mode)."""
    return STRATEGIES[strategy].modes


def strategy_reads_threshold(strategy: str, mode: str) -> bool:
    """Whether the threshold slider matters for `strategy` in `mode`: in threshold mode, and for a budget strategy
    that first drops what the codebook marks redundant (`codebook_diverse`)."""
    return mode == "threshold" or (STRATEGIES[strategy].uses_codebook and "threshold" not in strategy_modes(strategy))


def check_strategy_name(strategy) -> str:
    """A strategy's name as text (which strategies a model serves is `check_strategy`'s business)."""
    if not isinstance(strategy, str):
        raise InputError(f"The strategy must be one of the listed names; got {_type_name(strategy)}.")
    return strategy


def check_strategy(strategy, available: tuple[str, ...], modality: str = "image") -> str:
    """`strategy` when this model serves it for `modality`, or an `InputError` that lists those it serves."""
    strategy = check_strategy_name(strategy)
    if strategy in available:
        return strategy
    listed = ", ".join(available)
    if strategy in STRATEGIES and strategy != "none":
        raise InputError(
            f"The '{strategy}' strategy ranks tokens by the vision tower's [CLS] attention, which this model cannot "
            f"provide for {modality}s (no [CLS] token in its tower, or pooled tokens); choose one of: {listed}."
        )
    raise InputError(f"Unknown pruning strategy {repr(strategy)[:60]}; choose one of: {listed}.")


def check_strategy_mode(strategy: str, mode: str) -> None:
    if mode not in strategy_modes(strategy):
        raise InputError(
            f"The '{strategy}' strategy keeps a token budget and has no threshold: choose the 'budget' rule (the "
            "threshold belongs to the 'codebook' strategy)."
        )


# One checker per scalar input, by the name every endpoint gives it.
SCALAR_CHECKS = {
    "mode": check_mode,
    "threshold": lambda value: check_number(value, "The threshold", *limits.THRESHOLD_RANGE),
    "keep_ratio": lambda value: check_number(value, "The token budget", 0.0, 1.0, low_open=True),
    "max_new_tokens": lambda value: check_number(value, "max_new_tokens", 1, limits.MAX_NEW_TOKENS, whole=True),
    "strategy": check_strategy_name,
    "strategy_a": check_strategy_name,
    "strategy_b": check_strategy_name,
    "tile_skipping": lambda value: check_flag(value, "Tile skipping"),
    "tile_skip_share": lambda value: check_number(value, "The tile skip share", 0.0, 1.0),
}


@dataclass(frozen=True)
class Inputs:
    """One request's inputs, checked: what `preview` and `answer` work from."""

    image: Image.Image
    question: str
    mode: str
    threshold: float
    keep_ratio: float
    max_new_tokens: int | None = None  # None: the endpoint does not take it
    strategy: str = "codebook"
    tile_skipping: bool = False
    tile_skip_share: float = 0.9

    @property
    def overrides(self) -> dict:
        """Per-call pruning arguments for the model."""
        return pruning_overrides(
            self.mode, self.threshold, self.keep_ratio, self.strategy, self.tile_skipping, self.tile_skip_share
        )


# `validate_inputs(max_new_tokens=NOT_TAKEN)`: the endpoint does not take that input. A sentinel, not `None`: `None`
# is what a caller sends as JSON `null`, and that is a bad value like any other.
NOT_TAKEN = object()


def validate_inputs(
    image,
    question,
    mode,
    threshold,
    keep_ratio,
    max_new_tokens=NOT_TAKEN,
    *,
    question_required: bool = False,
    image_token: str = "<image>",
    allowed_dirs=None,
    reserved_tokens: tuple = (),
    strategy: str = "codebook",
    strategies: tuple[str, ...] = ("codebook",),
    modality: str = "image",
    check_media=None,
    tile_skipping=False,
    tile_skip_share=0.9,
) -> Inputs:
    """Check every input of a request (the cheap ones first, the picture last) and return them typed, or raise an
    `InputError` that names the problem and the fix. `max_new_tokens=NOT_TAKEN`: the endpoint does not take it.
    `check_media(image, allowed_dirs)` reads the picture (default `check_image`; a video's is
    `video_inputs.check_video`, and `Inputs.image` is then its list of frames); `reserved_tokens` are further
    placeholders (`<video>`) a question must not hold. `strategy` must be one of `strategies` (what the model serves
    for `modality`) and define `mode`. `tile_skipping` / `tile_skip_share`: codebook-guided tile skipping (images)."""
    strategy = check_strategy(strategy, strategies, modality)
    tile_skipping = SCALAR_CHECKS["tile_skipping"](tile_skipping)
    tile_skip_share = SCALAR_CHECKS["tile_skip_share"](tile_skip_share)
    mode = SCALAR_CHECKS["mode"](mode)
    check_strategy_mode(strategy, mode)
    threshold = SCALAR_CHECKS["threshold"](threshold)
    keep_ratio = SCALAR_CHECKS["keep_ratio"](keep_ratio)
    max_new_tokens = None if max_new_tokens is NOT_TAKEN else SCALAR_CHECKS["max_new_tokens"](max_new_tokens)
    question = check_question(question, required=question_required, image_token=image_token)
    for token in reserved_tokens:
        check_question(question, required=False, image_token=token)
    image = (check_media or check_image)(image, allowed_dirs)
    return Inputs(
        image, question, mode, threshold, keep_ratio, max_new_tokens, strategy, tile_skipping, tile_skip_share
    )


def pruning_overrides(
    mode, threshold, keep_ratio, strategy: str = "codebook", tile_skipping: bool = False, tile_skip_share: float = 0.9
) -> dict:
    """Per-call pruning arguments for the model from the pruning inputs (each one checked): the strategy, its rule
    and the rule's setting (a budget strategy that reads the codebook's threshold gets that too), and tile skipping
    with its share when it is on (its rule reads the codebook's threshold too)."""
    mode = SCALAR_CHECKS["mode"](mode)
    threshold = SCALAR_CHECKS["threshold"](threshold)
    keep_ratio = SCALAR_CHECKS["keep_ratio"](keep_ratio)
    strategy = check_strategy(strategy, tuple(name for name in STRATEGIES if name != "none"))
    check_strategy_mode(strategy, mode)
    overrides = {"pruning_strategy": strategy, "pruning_mode": mode}
    if mode == "budget":
        overrides["keep_ratio"] = keep_ratio
    if strategy_reads_threshold(strategy, mode) or tile_skipping:
        overrides["codebook_threshold"] = threshold
    if SCALAR_CHECKS["tile_skipping"](tile_skipping):
        overrides["tile_skipping"] = True
        overrides["tile_skip_share"] = SCALAR_CHECKS["tile_skip_share"](tile_skip_share)
    return overrides
