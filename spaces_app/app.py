"""Gradio Space: see which visual tokens a redundancy codebook drops, and what that does to the answer and its cost.

The logic lives in plain functions (`load_backend`, `preview`, `answer`, `token_counts`, `flops_estimate`, ...);
`build_demo` only wires them to components. Run locally with `python spaces_app/app.py` (embedded random-weight
demo model) or `python spaces_app/app.py --model llava-hf/llava-v1.6-mistral-7b-hf --codebook org/codebook`.
"""

import argparse
import asyncio
import base64
import binascii
import hashlib
import html
import inspect
import io
import logging
import math
import os
import re
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

# ZeroGPU Spaces: borrow a GPU for the duration of each model call; a no-op anywhere else. Imported before torch and
# anything that could initialise CUDA, as ZeroGPU requires.
try:
    import spaces

    gpu = spaces.GPU(duration=120)
    HAS_SPACES = True
except ImportError:
    HAS_SPACES = False

    def gpu(fn):
        return fn


import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402
from starlette.datastructures import Headers  # noqa: E402
from starlette.exceptions import HTTPException  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402

APP_DIR = Path(__file__).resolve().parent
try:
    import llava_codebook  # noqa: F401
except ImportError:
    # Not installed: use a copy uploaded beside app.py (the Space) or the repo checkout this file lives in.
    for candidate in (APP_DIR, APP_DIR.parent):
        if (candidate / "llava_codebook" / "__init__.py").exists():
            sys.path.insert(0, str(candidate))
            break
    import llava_codebook  # noqa: F401

from llava_codebook.flops import prefill_flops  # noqa: E402
from llava_codebook.processing_llava_next_codebook import (  # noqa: E402
    geometry_for_processor,
    render_keep_overlay,
    view_counts,
)
from llava_codebook.strategies import STRATEGIES, image_budget  # noqa: E402

try:  # imported as the package `spaces_app`
    from . import frames as frame_views
    from .examples import write_examples
except ImportError:  # run as a script, or as the Space's app_file
    import frames as frame_views
    from examples import write_examples


logger = logging.getLogger("llava_codebook.space")


def env_number(name: str, default: float, minimum: float) -> float:
    """`$name` as a number (at least `minimum`), or `default` when unset: a bad value stops the Space at start and
    names the variable, instead of surfacing later as an odd limit."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"${name} must be a number of at least {minimum:g}; got {raw!r}.")
    return value


MIB = 2**20
MAX_IMAGE_PIXELS = int(env_number("MAX_IMAGE_PIXELS", 40_000_000, 1))
MAX_IMAGE_SIDE = int(env_number("MAX_IMAGE_SIDE", 12_000, 1))
MAX_QUESTION_CHARS = 1_000
TINY_THRESHOLD = 0.9
DEMO_NOTICE = (
    "**Demonstration model.** This Space is serving the embedded *random-weight* tiny LLaVA-NeXT (56 px crops, 4×4 "
    "tokens each) with a codebook of flat-colour patches. Its answers are meaningless words; the pruning mechanics "
    "(AnyRes packing, scoring, kept/dropped tokens, prompt compaction, FLOPs) are the real ones. Set `MODEL_ID` (and "
    "`CODEBOOK_REPO`) to serve a real checkpoint."
)


class InputError(ValueError):
    """A problem with what the user gave (image, question, settings), worded for the user."""


# ---------------------------------------------------------------------------------------------------- backend
def feature_cache_bytes() -> int:
    """The feature cache's bound, `$FEATURE_CACHE_MB` mebibytes (default 256; 0 turns the cache off)."""
    return int(env_number("FEATURE_CACHE_MB", 256, 0) * MIB)


class EncodingCache:
    """A thread-safe LRU of encoded images, keyed by the image's pixels and bounded by the bytes it holds.

    Entries are evicted least recently used first until the sum of their `nbytes` is at most `max_bytes`; an entry
    larger than the whole bound is served but not kept.
    """

    def __init__(self, max_bytes: int | None = None):
        self.max_bytes = feature_cache_bytes() if max_bytes is None else int(max_bytes)
        self.nbytes = 0
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._computing: dict = {}  # key -> [lock, waiters]: one computation per key at a time

    def get_or_compute(self, key, compute):
        """The entry of `key`, computed by `compute()` and cached when missing. Concurrent requests for one key (the
        preview and the comparison of a new upload) wait for the one computation instead of each running the tower."""
        value = self.get(key)
        if value is not None:
            return value
        with self._lock:
            entry = self._computing.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                value = self.get(key)
                if value is None:
                    value = compute()
                    self.put(key, value)
                return value
        finally:
            with self._lock:
                entry[1] -= 1
                if entry[1] == 0:
                    self._computing.pop(key, None)

    def get(self, key):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def put(self, key, value) -> None:
        size = value.nbytes
        with self._lock:
            if key in self._items:
                self.nbytes -= self._items.pop(key).nbytes
            if size > self.max_bytes:
                return
            self._items[key] = value
            self.nbytes += size
            while self.nbytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self.nbytes -= evicted.nbytes

    def values(self) -> list:
        with self._lock:
            return list(self._items.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


@dataclass
class Backend:
    """The model the Space serves, its processor, and what to tell the user about it.

    `family` is the stock `model_type` of the model's family (`llava_codebook.families`): `"llava_next"` and
    `"llava_next_video"` images are drawn with LLaVA-NeXT's AnyRes pixel geometry; `"llava"` (one view) and
    `"llava_onevision"` images as token grids read from the family's crop ids; `"llava_onevision"` and
    `"llava_next_video"` also take videos, drawn as a strip of frames.
    """

    model: object
    processor: object
    name: str
    is_demo: bool
    notice: str
    default_threshold: float
    cache: EncodingCache = field(default_factory=EncodingCache)
    family: str = "llava_next"

    @property
    def anyres_geometry(self) -> bool:
        """Images are drawn with LLaVA-NeXT's pixel geometry (base view and AnyRes tiles, in pixels)."""
        return self.family in ("llava_next", "llava_next_video")

    @property
    def takes_video(self) -> bool:
        return "video" in getattr(self.model.model, "pruning_modalities", ())

    def strategies(self, modality: str = "image") -> tuple[str, ...]:
        """The pruning strategies this model can serve on `modality` (`available_strategies`), `"none"` aside: the
        page already answers without pruning."""
        return tuple(name for name in self.model.available_strategies(modality) if name != "none")


def load_tiny_backend(notice: str = DEMO_NOTICE) -> Backend:
    """The embedded default: built in code, offline, in about a second."""
    from llava_codebook.tiny import build_tiny_model, build_tiny_processor, flat_colour_codebook

    model = build_tiny_model(seed=0, codebook_threshold=TINY_THRESHOLD)
    processor = build_tiny_processor()
    model.load_codebook(flat_colour_codebook(model, processor))
    return Backend(model, processor, "embedded tiny random-weight LLaVA-NeXT", True, notice, TINY_THRESHOLD)


def load_processor(model_id: str, family) -> object:
    """The processor of `model_id` for its family (`llava_codebook.families.Family`).

    LLaVA-NeXT gets the package's processor (the stock one plus its pixel geometry); the others their stock one.
    The stock video processors of LLaVA-OneVision and LLaVA-NeXT-Video need torchvision: where it does not import,
    the processor is put together from the checkpoint's image processor, tokenizer and settings, with frames
    prepared by `frames.frame_video_processor` as the checkpoint's video-processor config says.
    """
    from llava_codebook import LlavaNextCodebookProcessor

    if family.stock_model_type == "llava_next":
        return LlavaNextCodebookProcessor.from_pretrained(model_id)
    try:
        return family.processor_class.from_pretrained(model_id)
    except ImportError:
        if "video" not in family.modalities:
            raise
        logger.info("The stock video processor needs torchvision; preparing frames with PIL instead")
    import json

    from transformers import AutoImageProcessor, AutoTokenizer
    from transformers.utils import cached_file

    def read_json(name: str) -> dict:
        path = cached_file(model_id, name, _raise_exceptions_for_missing_entries=False)
        return json.loads(Path(path).read_text()) if path else {}

    settings = read_json("processor_config.json")
    video_config = settings.pop("video_processor", None) or read_json("video_preprocessor_config.json")
    tokenizer = AutoTokenizer.from_pretrained(model_id)
    template = cached_file(model_id, "chat_template.jinja", _raise_exceptions_for_missing_entries=False)
    accepted = inspect.signature(family.processor_class.__init__).parameters
    kwargs = {k: v for k, v in settings.items() if k in accepted and k not in ("image_processor", "tokenizer")}
    return family.processor_class(
        image_processor=AutoImageProcessor.from_pretrained(model_id),
        tokenizer=tokenizer,
        video_processor=frame_views.frame_video_processor(video_config),
        chat_template=Path(template).read_text() if template else getattr(tokenizer, "chat_template", None),
        **kwargs,
    )


def load_backend(model_id: str | None = None, codebook_repo: str | None = None) -> Backend:
    """Serve `model_id` (Hub id or local directory of any supported family: LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision,
    LLaVA-NeXT-Video) with `codebook_repo`; with no model, or when it cannot be loaded (offline, missing codebook),
    serve the embedded demo model and say so."""
    if not model_id:
        return load_tiny_backend()
    try:
        from transformers import PretrainedConfig

        from llava_codebook import load_pruned_model
        from llava_codebook.families import family_for_config

        family = family_for_config(PretrainedConfig.get_config_dict(model_id)[0], model_id)
        cuda = torch.cuda.is_available()
        overrides = {"codebook_repo": codebook_repo} if codebook_repo else {}
        model = load_pruned_model(model_id, dtype=torch.float16 if cuda else torch.float32, **overrides).eval()
        if cuda:
            model = model.to("cuda")
        processor = load_processor(model_id, family)
        if model.codebook is None:
            model.load_codebook()
    except Exception as exc:  # offline, wrong id, no codebook: fall back, and tell the user why
        logger.exception("Could not load %s", model_id)
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        return load_tiny_backend(f"⚠️ Could not load `{model_id}` ({reason}). Falling back. " + DEMO_NOTICE)
    codebook = model.codebook
    notice = (
        f"Serving **{model_id}** ({family.name}) with codebook **{codebook_repo or model.config.codebook_repo}** "
        f"({codebook.prototypes.shape[0]} prototypes) on {'GPU' if cuda else 'CPU'}."
    )
    if not family.stock_model_type.startswith("llava_next"):
        notice += f" {GRID_VIEW_NOTES[family.stock_model_type]}"
    if "video" in family.modalities:
        notice += f" {VIDEO_NOTE}"
    return Backend(
        model,
        processor,
        model_id,
        False,
        notice,
        float(model.config.codebook_threshold),
        family=family.stock_model_type,
    )


GRID_VIEW_NOTES = {
    "llava": "This family sees each image as one square view (the centre crop, its outside tinted magenta); the "
    "overlay draws that view's token grid.",
    "llava_onevision": "Images are drawn as token grids: the base view over the whole image, and the unpadded AnyRes "
    "tile grid as the model packs it (shrunk to about nine crops' worth of tokens for large images) over the image.",
}
VIDEO_NOTE = (
    "It also takes videos: upload an animated GIF, WebP or PNG below to see each frame's pooled tokens, kept and "
    "dropped, as a strip."
)


# ---------------------------------------------------------------------------------------------------- inputs
# Every endpoint checks every input it takes through `validate_inputs`: one set of limits, one wording.
MAX_NEW_TOKENS = 128
THRESHOLD_RANGE = (-1.0, 1.0)
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
                f"That image is far larger than this Space accepts ({MAX_IMAGE_PIXELS / 1e6:.0f} megapixels, "
                f"{MAX_IMAGE_SIDE} px a side). Downscale it first."
            ) from exc
        except Exception as exc:  # missing, a directory, not an image: all the same to the caller
            raise InputError(UNREADABLE_IMAGE) from exc
    width, height = source.size
    if width < 1 or height < 1:
        raise InputError("That image is empty (0 pixels).")
    if width * height > MAX_IMAGE_PIXELS or max(width, height) > MAX_IMAGE_SIDE:
        raise InputError(
            f"That image is {width}x{height} pixels; this Space accepts up to {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels "
            f"and {MAX_IMAGE_SIDE} px a side. Downscale it first (the model sees at most 1008 px a side anyway)."
        )
    try:
        return ImageOps.exif_transpose(source).convert("RGB")
    except Exception as exc:  # truncated or corrupt pixel data
        raise InputError(UNREADABLE_IMAGE) from exc


# Videos: an animated GIF, WebP or PNG (PIL decodes these; no video decoder is installed beside torch 2.13 CPU).
VIDEO_FILE_TYPES = [".gif", ".webp", ".png"]
VIDEO_FRAMES = int(env_number("VIDEO_FRAMES", 8, 1))
MAX_VIDEO_FILE_FRAMES = int(env_number("MAX_VIDEO_FILE_FRAMES", 1_000, 1))
MAX_VIDEO_PIXELS = int(env_number("MAX_VIDEO_PIXELS", 200_000_000, 1))
UNREADABLE_VIDEO = (
    "That file could not be read as a video. Upload an animated GIF, WebP or PNG (and upload it again if it was a "
    "while ago: uploads expire)."
)
MISSING_VIDEO = "Upload a video (an animated GIF, WebP or PNG) first."


class MissingVideo(MissingImage):
    """No video was given."""


def sampled_frame_indices(count: int, wanted: int | None = None) -> list[int]:
    """`wanted` (default `VIDEO_FRAMES`) frame indices spread evenly over `count` frames, first and last included."""
    wanted = min(count, wanted or VIDEO_FRAMES)
    return sorted({round(i) for i in np.linspace(0, count - 1, wanted)})


def check_video(video, allowed_dirs=None) -> list[Image.Image]:
    """The frames (RGB PIL images, at most `VIDEO_FRAMES`, spread evenly) of a video input, or an `InputError`.

    `video` is an animated GIF / WebP / PNG given as for `locate_image` (a path confined to `allowed_dirs`, Gradio's
    file payload, a data: URL), or, in code, a list of frames or a `[T, H, W, 3]` array. Every refused or unreadable
    file gets the one `UNREADABLE_VIDEO`. The size and frame count are read from the header and bounded before any
    frame is decoded.
    """
    if video is None or (isinstance(video, dict) and not video.get("path") and not video.get("url")):
        raise MissingVideo(MISSING_VIDEO)
    if isinstance(video, np.ndarray) and video.ndim == 4:
        video = list(video)
    if isinstance(video, (list, tuple)):
        if not video:
            raise MissingVideo(MISSING_VIDEO)
        picked = [video[i] for i in sampled_frame_indices(len(video))]
        return [check_image(frame).convert("RGB") for frame in picked]
    try:
        source = locate_image(video, allowed_dirs)
    except MissingImage:
        raise MissingVideo(MISSING_VIDEO) from None
    except InputError as exc:
        raise InputError(UNREADABLE_VIDEO if str(exc) == UNREADABLE_IMAGE else str(exc)) from None
    if isinstance(source, Image.Image):
        return [check_image(source)]
    try:
        clip = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        count = int(getattr(clip, "n_frames", 1))
    except Image.DecompressionBombError as exc:
        raise InputError(
            f"That video's frames are larger than this Space accepts ({MAX_IMAGE_PIXELS / 1e6:.0f} MP)."
        ) from exc
    except Exception as exc:  # missing, a directory, not a picture: all the same to the caller
        raise InputError(UNREADABLE_VIDEO) from exc
    width, height = clip.size
    if width < 1 or height < 1 or width * height > MAX_IMAGE_PIXELS or max(width, height) > MAX_IMAGE_SIDE:
        raise InputError(
            f"That video is {width}x{height} pixels a frame; this Space accepts up to {MAX_IMAGE_PIXELS / 1e6:.0f} "
            f"megapixels and {MAX_IMAGE_SIDE} px a side. Downscale it first."
        )
    if count > MAX_VIDEO_FILE_FRAMES or width * height * count > MAX_VIDEO_PIXELS:
        raise InputError(
            f"That video has {count} frames of {width}x{height}; this Space reads at most {MAX_VIDEO_FILE_FRAMES} "
            f"frames and {MAX_VIDEO_PIXELS / 1e6:.0f} megapixels in all (it samples {VIDEO_FRAMES} frames anyway). "
            "Shorten or downscale it first."
        )
    try:
        frames = []
        for index in sampled_frame_indices(count):
            clip.seek(index)
            frames.append(clip.convert("RGB"))
    except Exception as exc:  # truncated or corrupt frames
        raise InputError(UNREADABLE_VIDEO) from exc
    return frames


def check_question(question, required: bool = True, image_token: str = "<image>") -> str:
    """The question, stripped; or an `InputError` naming what is wrong (type, length, characters, reserved tokens)."""
    if question is None:
        question = ""
    if not isinstance(question, str):
        raise InputError(f"The question must be text; got {_type_name(question)}.")
    question = question.strip()
    if required and not question:
        raise InputError("Type a question about the image.")
    if len(question) > MAX_QUESTION_CHARS:
        raise InputError(f"The question is {len(question)} characters long; keep it under {MAX_QUESTION_CHARS}.")
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


def check_mode(mode) -> str:
    if not isinstance(mode, str) or mode not in PRUNING_MODES:
        raise InputError(f"Unknown pruning mode {repr(mode)[:60]}; choose 'threshold' or 'budget'.")
    return mode


# The strategies the Space can offer, as the selectors name them (`llava_codebook.strategies.STRATEGIES`; a model
# serves those it can run, `Backend.strategies`). The README's table says more of each.
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
    "threshold": lambda value: check_number(value, "The threshold", *THRESHOLD_RANGE),
    "keep_ratio": lambda value: check_number(value, "The token budget", 0.0, 1.0, low_open=True),
    "max_new_tokens": lambda value: check_number(value, "max_new_tokens", 1, MAX_NEW_TOKENS, whole=True),
    "strategy": check_strategy_name,
    "strategy_a": check_strategy_name,
    "strategy_b": check_strategy_name,
}


@dataclass(frozen=True)
class Inputs:
    """One request's inputs, checked: what `preview` and `answer` work from."""

    image: Image.Image
    question: str
    mode: str
    threshold: float
    keep_ratio: float
    max_new_tokens: int | None = None
    strategy: str = "codebook"

    @property
    def overrides(self) -> dict:
        """Per-call pruning arguments for the model."""
        return pruning_overrides(self.mode, self.threshold, self.keep_ratio, self.strategy)


def validate_inputs(
    image,
    question,
    mode,
    threshold,
    keep_ratio,
    max_new_tokens=None,
    *,
    question_required: bool = False,
    image_token: str = "<image>",
    allowed_dirs=None,
    video: bool = False,
    reserved_tokens: tuple = (),
    strategy: str = "codebook",
    strategies: tuple[str, ...] = ("codebook",),
) -> Inputs:
    """Check every input of a request (the cheap ones first, the image last) and return them typed, or raise an
    `InputError` that names the problem and the fix. `max_new_tokens=None`: the endpoint does not take it. With
    `video`, `image` is a video (`check_video`) and `Inputs.image` its list of frames; `reserved_tokens` are further
    placeholders (`<video>`) a question must not hold. `strategy` must be one of `strategies` (what the model serves
    for this modality) and define `mode`."""
    strategy = check_strategy(strategy, strategies, "video" if video else "image")
    mode = SCALAR_CHECKS["mode"](mode)
    check_strategy_mode(strategy, mode)
    threshold = SCALAR_CHECKS["threshold"](threshold)
    keep_ratio = SCALAR_CHECKS["keep_ratio"](keep_ratio)
    if max_new_tokens is not None:
        max_new_tokens = SCALAR_CHECKS["max_new_tokens"](max_new_tokens)
    question = check_question(question, required=question_required, image_token=image_token)
    for token in reserved_tokens:
        check_question(question, required=False, image_token=token)
    image = check_video(image, allowed_dirs) if video else check_image(image, allowed_dirs)
    return Inputs(image, question, mode, threshold, keep_ratio, max_new_tokens, strategy)


def pruning_overrides(mode, threshold, keep_ratio, strategy: str = "codebook") -> dict:
    """Per-call pruning arguments for the model from the pruning inputs (each one checked): the strategy, its rule
    and the rule's setting (a budget strategy that reads the codebook's threshold gets that too)."""
    mode = SCALAR_CHECKS["mode"](mode)
    threshold = SCALAR_CHECKS["threshold"](threshold)
    keep_ratio = SCALAR_CHECKS["keep_ratio"](keep_ratio)
    strategy = check_strategy(strategy, tuple(name for name in STRATEGIES if name != "none"))
    check_strategy_mode(strategy, mode)
    overrides = {"pruning_strategy": strategy, "pruning_mode": mode}
    if mode == "budget":
        overrides["keep_ratio"] = keep_ratio
    if strategy_reads_threshold(strategy, mode):
        overrides["codebook_threshold"] = threshold
    return overrides


def build_prompt(processor, question: str, kind: str = "image") -> str:
    """The checkpoint's chat template with one image (or video, `kind`) and the question, or `<image> question`
    without a template."""
    if getattr(processor, "chat_template", None):
        conversation = [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": question}]}]
        return processor.apply_chat_template(conversation, add_generation_prompt=True)
    return f"{getattr(processor, f'{kind}_token')} {question}"


def text_token_count(processor, question: str, kind: str = "image") -> int:
    """Prompt tokens other than the image (video) placeholders (the one `<image>` before the processor expands it)."""
    ids = processor.tokenizer(build_prompt(processor, question or "?", kind))["input_ids"]
    placeholder = getattr(processor, f"{kind}_token_id")
    return len(ids) - sum(1 for token in ids if token == placeholder)


# ---------------------------------------------------------------------------------------------------- scoring
def image_key(image: Image.Image) -> str:
    digest = hashlib.sha1(image.tobytes())
    digest.update(f"{image.size}{image.mode}".encode())
    return digest.hexdigest()


_SERVED: dict = {}


@gpu
def _on_served_gpu(function_name: str, *args):
    """Run `function_name(served backend, *args)` where the GPU is. On ZeroGPU this is a worker process that borrows
    a GPU, and arguments and results cross a process boundary: the backend (the model) is looked up, not passed."""
    return globals()[function_name](_SERVED["backend"], *args)


def on_model_device(backend: Backend, function, *args):
    """`function(backend, *args)`, through `@spaces.GPU` when this backend is the one the Space serves on ZeroGPU."""
    if HAS_SPACES and _SERVED.get("backend") is backend:
        return _on_served_gpu(function.__name__, *args)
    return function(backend, *args)


def token_counts(geometry, keep_mask) -> dict:
    """Kept / total tokens for the base view, the tiles, the two together (`scored`: what the pruning rule scores and
    the budget counts), the row newlines (not scored, always kept) and overall, with kept percentages."""
    counts = view_counts(geometry, keep_mask)
    counts["scored"] = {key: counts["base"][key] + counts["tile"][key] for key in ("kept", "total")}
    for entry in counts.values():
        entry["percent_kept"] = 100.0 * entry["kept"] / entry["total"] if entry["total"] else 0.0
    return counts


def flops_estimate(text_config, text_tokens: int, visual_tokens: int, kept_visual_tokens: int) -> dict:
    """Predicted LLM prefill FLOPs with all visual tokens and with the kept ones (see `llava_codebook.flops`)."""
    full = prefill_flops(text_config, text_tokens + visual_tokens)
    pruned = prefill_flops(text_config, text_tokens + kept_visual_tokens)
    return {"full": full, "pruned": pruned, "percent_saved": 100.0 * (1.0 - pruned / full)}


FLOPS_UNITS = (("PFLOPs", 1e15), ("TFLOPs", 1e12), ("GFLOPs", 1e9), ("MFLOPs", 1e6), ("kFLOPs", 1e3))


def flops_unit(value: float) -> tuple[str, float]:
    """The unit `value` reads best in (its value there is at least 1, below 1000), and that unit's scale."""
    for unit, scale in FLOPS_UNITS:
        if round(value / scale, 2) >= 1:
            return unit, scale
    return "FLOPs", 1.0


def format_flops(full: float, pruned: float) -> str:
    """`full -> pruned` in one unit, the one that suits `full`: "6.16 MFLOPs → 0.91 MFLOPs (85.2 % saved)"."""
    unit, scale = flops_unit(full)
    saved = 100.0 * (1.0 - pruned / full) if full else 0.0
    return f"{full / scale:.2f} {unit} → {pruned / scale:.2f} {unit} ({saved:.1f} % saved)"


def _percent(entry: dict) -> str:
    return f"{entry['percent_kept']:.1f} %" if entry["total"] else "–"


def empty_tile_grid_note(geometry) -> str:
    """Why the tile grid of this image has no tokens (an empty string when it has some)."""
    layout = geometry.layout
    rows, cols = layout.kept_token_grid
    if rows and cols:
        return ""
    height, width = layout.image_size
    fitted_h, fitted_w = layout.resized_size
    grid_h, grid_w = layout.canvas_size
    side = "tall" if rows == 0 else "wide"
    return (
        f"**No tile tokens.** Fitted into its {layout.tile_grid[0]}×{layout.tile_grid[1]} crop grid "
        f"({grid_w}×{grid_h} px), this {width}×{height} image is {fitted_w}×{fitted_h} px: less than one "
        f"{layout.patch_size} px token {side}, and the stock unpadding keeps whole tokens only. The model sees this "
        "image through the base view alone."
    )


def _ratio(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def format_counts(counts: dict, flops: dict, geometry) -> str:
    """The counts table and summary shown under the overlays. Every number says what it counts: the pruning rule
    scores the base-view and tile tokens (`scored`: the threshold and the budget apply to these), the row newlines
    are not scored and always kept, and the prompt carries both."""
    layout = geometry.layout
    side = layout.tokens_per_side
    rows, cols = layout.kept_token_grid
    base, tile, scored, newline, every = (counts[k] for k in ("base", "tile", "scored", "newline", "all"))
    height, width = layout.image_size
    lines = []
    stretch = overlay_stretch((width, height))
    if stretch > 1:
        arrow, direction = ("↕", "vertically") if width > height else ("↔", "horizontally")
        aspect = max(width, height) / min(width, height)
        lines += [
            f"{arrow} The overlays are stretched {_ratio(stretch)}× {direction}: this image is {_ratio(aspect)}:1, "
            f"shown at {MAX_SHOWN_ASPECT:g}:1 so that its tokens stay visible.",
            "",
        ]
    tiles = f"{layout.tile_grid[0]}×{layout.tile_grid[1]} crops, {rows}×{cols} unpadded"
    lines += [
        "| tokens | kept | total | kept % |",
        "|---|---:|---:|---:|",
        f"| base view ({side}×{side}) | {base['kept']} | {base['total']} | {_percent(base)} |",
        f"| high-res tiles ({tiles}) | {tile['kept']} | {tile['total']} | {_percent(tile)} |",
        f"| **scored** (base + tiles) | **{scored['kept']}** | **{scored['total']}** | **{_percent(scored)}** |",
        f"| row newlines (not scored) | {newline['kept']} | {newline['total']} | |",
        f"| in the prompt (scored + newlines) | {every['kept']} | {every['total']} | {_percent(every)} |",
        "",
        "The threshold and the budget apply to the *scored* tokens (a budget's share is a share of those); row "
        "newlines are always kept.",
        "",
    ]
    note = empty_tile_grid_note(geometry)
    if note:
        lines += [note, ""]
    lines.append(
        f"**Kept {every['kept']} / {every['total']} visual tokens ({_percent(every)})** in the prompt: "
        f"{scored['kept']} / {scored['total']} scored ({_percent(scored)}) and {newline['kept']} row newlines. "
        f"Predicted LLM prefill: {format_flops(flops['full'], flops['pruned'])}."
    )
    return "\n".join(lines)


# Overlays are OVERLAY_SIDE px on their longer side. An image longer than MAX_SHOWN_ASPECT:1 is drawn stretched to that
# ratio: at its own, a 10000x300 picture would be a 512x15 sliver in which no token can be seen.
OVERLAY_SIDE = 512
MAX_SHOWN_ASPECT = 4.0


def overlay_stretch(size: tuple[int, int]) -> float:
    """How much an overlay of an image of `size` (width, height) is stretched across its short side (1: not at all)."""
    width, height = size
    return max(1.0, max(width, height) / min(width, height) / MAX_SHOWN_ASPECT)


def render_overlay(image: Image.Image, geometry, keep, view: str) -> Image.Image:
    """`render_keep_overlay` at `OVERLAY_SIDE`, stretched across to `MAX_SHOWN_ASPECT`:1 when the image is longer."""
    if overlay_stretch(image.size) == 1.0:
        return render_keep_overlay(image, geometry, keep, view, max_side=OVERLAY_SIDE)
    # Draw the stretched picture with the token boxes scaled to it: each token is then as clear as in any overlay.
    short = round(OVERLAY_SIDE / MAX_SHOWN_ASPECT)
    shown = (OVERLAY_SIDE, short) if image.width > image.height else (short, OVERLAY_SIDE)
    sx, sy = shown[0] / image.width, shown[1] / image.height
    layout = replace(geometry.layout, image_size=(shown[1], shown[0]))
    scaled = replace(geometry, layout=layout, boxes=geometry.boxes * np.array([sx, sy, sx, sy]))
    return render_keep_overlay(image.resize(shown, Image.BICUBIC), scaled, keep, view, max_side=OVERLAY_SIDE)


@dataclass
class Preview:
    base_overlay: Image.Image
    tile_overlay: Image.Image | None
    counts: dict
    flops: dict
    markdown: str
    selection: object


def preview(
    backend: Backend,
    image,
    mode: str,
    threshold: float,
    keep_ratio: float,
    question: str = "",
    allowed_dirs=None,
    strategy: str = "codebook",
) -> Preview:
    """Overlays and counts for the current settings; the vision tower runs only the first time an image is seen.
    With `allowed_dirs`, an image given as a path must lie in one of those folders (see `locate_image`)."""
    return show_selection(
        backend, _image_inputs(backend, image, question, mode, threshold, keep_ratio, None, allowed_dirs, strategy)
    )


def _image_token(backend: Backend) -> str:
    return getattr(backend.processor, "image_token", None) or "<image>"


def _image_inputs(
    backend, image, question, mode, threshold, keep_ratio, max_new_tokens, allowed_dirs, strategy, required=False
) -> Inputs:
    """`validate_inputs` for an image request to this backend: its image placeholder, the strategies it serves for
    images (the image twin of `_video_inputs`)."""
    return validate_inputs(
        image,
        question,
        mode,
        threshold,
        keep_ratio,
        max_new_tokens,
        question_required=required,
        image_token=_image_token(backend),
        allowed_dirs=allowed_dirs,
        strategy=strategy,
        strategies=backend.strategies("image"),
    )


@dataclass
class EncodedVisual:
    """One image or video encoded once by its family (`encode_for_strategies`), on the CPU; re-scoring under any
    strategy the Space offers reuses it and never runs the vision tower again.

    packed, newline, crop_ids: the packed tokens, their row-newline mask and the crop (view, tile or frame) of each.
    crop_grid: the AnyRes tile grid `(rows, cols)` where the family has one (LLaVA-NeXT), else `None`.
    signals: what the tower computed for these tokens that the offered strategies read ([CLS] attention, keys,
        projector inputs; `signals.pack_tower_signals`), empty when none of them needs any.
    geometry: for LLaVA-NeXT's pixel drawing, each token's box in the image (`geometry_for_processor`), else `None`.
    """

    modality: str
    packed: torch.Tensor
    newline: torch.Tensor
    crop_ids: torch.Tensor
    crop_grid: tuple[int, int] | None = None
    signals: dict = field(default_factory=dict)
    geometry: object = None

    @property
    def nbytes(self) -> int:
        """Bytes held by the tensors, the signals and the geometry's arrays: what the feature cache counts."""
        total = self.packed.nbytes + self.newline.nbytes + self.crop_ids.nbytes + _nested_nbytes(self.signals)
        if self.geometry is not None:
            arrays = [getattr(self.geometry, f.name) for f in fields(self.geometry)]
            total += sum(array.nbytes for array in arrays if isinstance(array, np.ndarray))
        return total


def _nested_nbytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.nbytes
    if isinstance(value, dict):
        return sum(_nested_nbytes(v) for v in value.values())
    return 0


def family_features(backend: Backend, modality: str, call: dict):
    """The family's own encoding of one image or video, with the tower signals every strategy the Space offers for
    it needs (`encode_for_strategies`): `(packed, newline, crop_ids, crop_grid, signals)` on the CPU. `call` holds
    the processor's tensors (`pixel_values`, `image_sizes` / `pixel_values_videos`)."""
    model = backend.model
    moved = {
        k: (v.to(model.device, model.dtype) if k.startswith("pixel_values") else v.to(model.device))
        for k, v in call.items()
        if isinstance(v, torch.Tensor)
    }
    with torch.no_grad():
        (segment,) = model.model.encode_for_strategies(modality, moved, backend.strategies(modality)).segments()
    return (
        segment.features.cpu(),
        segment.newline.cpu(),
        segment.crop_ids.cpu(),
        segment.crop_grid,
        _to_device(segment.signals, torch.device("cpu")),
    )


def frames_key(frames: list[Image.Image]) -> str:
    digest = hashlib.sha1(b"video")
    for frame in frames:
        digest.update(image_key(frame).encode())
    return digest.hexdigest()


def encode_visual(backend: Backend, modality: str, media) -> EncodedVisual:
    """Processor + the family's encoder, once per distinct image (PIL image) or video (list of frames); cached, and
    computed once even when several requests bring the same new picture at the same time."""
    key = image_key(media) if modality == "image" else frames_key(media)

    def compute() -> EncodedVisual:
        if modality == "image":
            call = backend.processor.image_processor(images=[media], return_tensors="pt")
        else:
            call = backend.processor.video_processor(videos=[media], return_tensors="pt")
        packed, newline, crop_ids, crop_grid, signals = on_model_device(backend, family_features, modality, dict(call))
        geometry = None
        if modality == "image" and backend.anyres_geometry:
            geometry = geometry_for_processor(backend.processor, call["image_sizes"])[0]
            if len(geometry) != packed.shape[0]:
                raise RuntimeError(
                    f"The processor's geometry lists {len(geometry)} tokens but the model packed {packed.shape[0]}: "
                    "the processor and model configs disagree (crop size, patch size or grid pinpoints)."
                )
        return EncodedVisual(modality, packed, newline, crop_ids, crop_grid, signals, geometry)

    return backend.cache.get_or_compute(key, compute)


def score_visual(backend: Backend, encoded: EncodedVisual, overrides: dict):
    """Re-score cached features under new settings (no vision tower): a `VisualTokenSelection` of one segment, on
    the CPU. Selection runs where the cached features are (the CPU), except for a merging strategy on a model served
    on a GPU: its merged tokens go through the model's projector, so that selection runs on the model's device."""
    settings = backend.model.pruning_settings(**overrides)
    if STRATEGIES[settings.pruning_strategy].merges and backend.model.device.type != "cpu":
        return on_model_device(backend, select_cached, encoded, settings, True)
    return select_cached(backend, encoded, settings, False)


def select_cached(backend: Backend, encoded: EncodedVisual, settings, on_device: bool):
    """`select_segments` on one cached encoding under `settings` (`pruning_settings`), moved to the model's device
    first with `on_device`; the selection comes back on the CPU."""
    from llava_codebook.strategies import Segment

    device = backend.model.device if on_device else torch.device("cpu")
    segment = Segment(
        encoded.packed.to(device),
        encoded.newline.to(device),
        encoded.modality,
        crop_ids=encoded.crop_ids.to(device),
        crop_grid=encoded.crop_grid,
        signals=_to_device(encoded.signals, device),
    )
    with torch.no_grad():
        selection = backend.model.model.select_segments([segment], settings)
    return _to_device(selection, torch.device("cpu")) if on_device else selection


def _to_device(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict) and not hasattr(value, "to_tuple"):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    if hasattr(value, "to_tuple"):  # a ModelOutput (the selection report)
        return type(value)(**{k: _to_device(v, device) for k, v in value.items()})
    return value


def merged_count(encoded: EncodedVisual, selection) -> int:
    """How many kept tokens carry merged features instead of their own (VisionZip's contextual tokens)."""
    if not selection.merged_features or selection.merged_features[0] is None:
        return 0
    own = encoded.packed[selection.kept_indices[0].cpu()].float()
    return int((selection.merged_features[0].cpu().float() != own).any(-1).sum())


def show_selection(backend: Backend, inputs: Inputs) -> Preview:
    """`preview` for inputs already checked."""
    encoded = encode_visual(backend, "image", inputs.image)
    selection = score_visual(backend, encoded, inputs.overrides)
    return draw_selection(backend, inputs.image, encoded, selection, inputs.question, inputs.strategy)


def draw_selection(backend: Backend, image, encoded: EncodedVisual, selection, question: str, strategy: str) -> Preview:
    """The overlays, counts and FLOPs of one selection of an encoded image: with LLaVA-NeXT's pixel geometry where the
    family has it, else each view drawn as its token grid, read from the family's crop ids (`frames.grid_views`)."""
    keep = selection.keep_masks()[0].cpu().numpy()
    crop_ids, newline = encoded.crop_ids.numpy(), encoded.newline.numpy()
    if encoded.geometry is not None:
        counts = token_counts(encoded.geometry, keep)
    else:
        scored = ~newline
        counts = counts_by_mask(
            keep,
            {
                "base": crop_ids == 0,
                "tile": (crop_ids > 0) & scored,
                "scored": scored,
                "newline": newline,
                "all": np.ones_like(newline),
            },
        )
    flops = flops_estimate(
        backend.model.config.text_config,
        text_token_count(backend.processor, question),
        counts["all"]["total"],
        counts["all"]["kept"],
    )
    merged = merged_count(encoded, selection)
    if merged:
        counts["merged"] = merged
    if encoded.geometry is not None:
        base_overlay = render_overlay(image, encoded.geometry, keep, "base")
        tile_overlay = render_overlay(image, encoded.geometry, keep, "tile")
        markdown = format_counts(counts, flops, encoded.geometry)
    else:
        views = frame_views.grid_views(crop_ids, newline, image.size, backend.processor.image_processor)
        overlays = {
            name: frame_views.render_grid(image, view.keep_grid(keep), view.region, shown_size(image.size))
            for name, view in views.items()
        }
        base_overlay, tile_overlay = overlays["base"], overlays.get("tile")
        markdown = format_grid_counts(counts, flops, views, backend.family)
    lead = f"**Strategy:** {STRATEGY_LABELS.get(strategy, strategy)}."
    if merged:
        lead += f" {merged} of the kept tokens are contextual tokens carrying merged features (drawn kept)."
    return Preview(base_overlay, tile_overlay, counts, flops, f"{lead}\n\n{markdown}", selection)


# ---------------------------------------------------------------------------------------------------- other families
def counts_by_mask(keep: np.ndarray, masks: dict) -> dict:
    """`{name: {kept, total, percent_kept}}` for each named token mask."""
    counts = {}
    for name, mask in masks.items():
        kept, total = int((keep & mask).sum()), int(mask.sum())
        counts[name] = {"kept": kept, "total": total, "percent_kept": 100.0 * kept / total if total else 0.0}
    return counts


def shown_size(size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) an overlay of an image of `size` is drawn at: `OVERLAY_SIDE` long, at most
    `MAX_SHOWN_ASPECT`:1 (see `overlay_stretch`)."""
    width, height = size
    scale = OVERLAY_SIDE / max(width, height)
    short = max(round(min(width, height) * scale), round(OVERLAY_SIDE / MAX_SHOWN_ASPECT), 1)
    return (OVERLAY_SIDE, short) if width >= height else (short, OVERLAY_SIDE)


def format_grid_counts(counts: dict, flops: dict, views: dict, family: str) -> str:
    """The counts table of `draw_selection` for grid-drawn families: the same rows as `format_counts`, the views
    named by their grids."""
    base, tile, scored, newline, every = (counts[k] for k in ("base", "tile", "scored", "newline", "all"))
    rows, cols = views["base"].shape
    lines = [
        "| tokens | kept | total | kept % |",
        "|---|---:|---:|---:|",
        f"| {'the view' if family == 'llava' else 'base view'} ({rows}×{cols}) | {base['kept']} | {base['total']} | "
        f"{_percent(base)} |",
    ]
    if "tile" in views:
        t_rows, t_cols = views["tile"].shape
        lines.append(
            f"| high-res tiles ({t_rows}×{t_cols} packed) | {tile['kept']} | {tile['total']} | {_percent(tile)} |"
        )
    lines += [
        f"| **scored** | **{scored['kept']}** | **{scored['total']}** | **{_percent(scored)}** |",
        f"| row newlines (not scored) | {newline['kept']} | {newline['total']} | |",
        f"| in the prompt | {every['kept']} | {every['total']} | {_percent(every)} |",
        "",
    ]
    if family == "llava":
        lines += ["This family sees one square view (the centre crop; magenta: outside it). There are no tiles.", ""]
    lines.append(
        f"**Kept {every['kept']} / {every['total']} visual tokens ({_percent(every)})** in the prompt. "
        f"Predicted LLM prefill: {format_flops(flops['full'], flops['pruned'])}."
    )
    return "\n".join(lines)


@dataclass
class VideoPreview:
    strip: Image.Image
    counts: dict
    flops: dict
    markdown: str
    selection: object
    layout: object  # `frames.StripLayout`: where each frame's panel lies in the strip
    grids: list  # per frame, the packed indices of its pooled token grid


def preview_video(
    backend: Backend,
    video,
    mode: str,
    threshold: float,
    keep_ratio: float,
    question: str = "",
    allowed_dirs=None,
    strategy: str = "codebook",
) -> VideoPreview:
    """The video as a strip of its frames, each with its pooled tokens kept / dropped, and the counts."""
    return show_video_selection(
        backend, _video_inputs(backend, video, question, mode, threshold, keep_ratio, None, allowed_dirs, strategy)
    )


def _video_inputs(
    backend, video, question, mode, threshold, keep_ratio, max_new_tokens, allowed_dirs, strategy, required=False
):
    if not backend.takes_video:
        raise InputError(f"{backend.name} does not take videos; upload an image instead.")
    return validate_inputs(
        video,
        question,
        mode,
        threshold,
        keep_ratio,
        max_new_tokens,
        question_required=required,
        image_token=_image_token(backend),
        reserved_tokens=(getattr(backend.processor, "video_token", None) or "<video>",),
        allowed_dirs=allowed_dirs,
        video=True,
        strategy=strategy,
        strategies=backend.strategies("video"),
    )


def show_video_selection(backend: Backend, inputs: Inputs) -> VideoPreview:
    frames = inputs.image
    encoded = encode_visual(backend, "video", frames)
    selection = score_visual(backend, encoded, inputs.overrides)
    keep = selection.keep_masks()[0].cpu().numpy()
    crop_ids, newline = encoded.crop_ids.numpy(), encoded.newline.numpy()
    grids = frame_views.frame_grids(crop_ids, newline)
    if len(grids) != len(frames):
        raise RuntimeError(f"The model encoded {len(grids)} frames of the {len(frames)} it was given.")
    per_frame = [{"kept": int(keep[g].sum()), "total": int(g.size)} for g in grids]
    counts = counts_by_mask(keep, {"scored": ~newline, "newline": newline, "all": np.ones_like(newline)})
    counts["frames"] = per_frame
    flops = flops_estimate(
        backend.model.config.text_config,
        text_token_count(backend.processor, inputs.question, "video"),
        counts["all"]["total"],
        counts["all"]["kept"],
    )
    regions = [frame_views.base_region(frame.size, backend.processor.video_processor) for frame in frames]
    labels = [f"frame {i + 1}: {c['kept']}/{c['total']} kept" for i, c in enumerate(per_frame)]
    strip, layout = frame_views.render_strip(frames, [keep[g] for g in grids], labels, regions)
    rows, cols = grids[0].shape
    every, scored = counts["all"], counts["scored"]
    markdown = "\n".join(
        [
            f"**Strategy:** {STRATEGY_LABELS.get(inputs.strategy, inputs.strategy)}.",
            "",
            f"{len(frames)} frames, each pooled to {rows}×{cols} tokens; clear = kept, dark = dropped.",
            "",
            "| frame | kept | total | kept % |",
            "|---|---:|---:|---:|",
            *(
                f"| {i + 1} | {c['kept']} | {c['total']} | {100.0 * c['kept'] / c['total']:.1f} % |"
                for i, c in enumerate(per_frame)
            ),
            f"| **scored** | **{scored['kept']}** | **{scored['total']}** | **{_percent(scored)}** |",
            f"| newline (not scored) | {counts['newline']['kept']} | {counts['newline']['total']} | |",
            "",
            f"**Kept {every['kept']} / {every['total']} visual tokens ({_percent(every)})** in the prompt. "
            f"Predicted LLM prefill: {format_flops(flops['full'], flops['pruned'])}.",
        ]
    )
    return VideoPreview(strip, counts, flops, markdown, selection, layout, grids)


@dataclass
class VideoAnswer:
    generations: "Generations"
    preview: VideoPreview


def answer_video(
    backend: Backend,
    video,
    question: str,
    mode: str,
    threshold: float,
    keep_ratio: float,
    max_new_tokens: int = 24,
    allowed_dirs=None,
    strategy: str = "codebook",
) -> VideoAnswer:
    """Check the inputs, show the video's selection (cached features), then answer with pruning and without."""
    inputs = _video_inputs(
        backend, video, question, mode, threshold, keep_ratio, max_new_tokens, allowed_dirs, strategy, required=True
    )
    shown = show_video_selection(backend, inputs)
    generations = on_model_device(
        backend, generate_both, inputs.image, inputs.question, inputs.overrides, inputs.max_new_tokens, "video"
    )
    return VideoAnswer(generations=generations, preview=shown)


@dataclass
class Generations:
    pruned_text: str
    pruned_seconds: float
    pruned_prompt_tokens: int
    full_text: str
    full_seconds: float
    full_prompt_tokens: int


@dataclass
class Answer:
    generations: Generations
    preview: Preview


def _timed_generate(model, inputs: dict, **kwargs):
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    output = model.generate(**inputs, do_sample=False, return_dict_in_generate=True, **kwargs)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return output, time.perf_counter() - start


def generate_both(
    backend: Backend, image, question: str, overrides: dict, max_new_tokens: int, kind: str = "image"
) -> Generations:
    """Greedy answers with pruning and without (the stock computation), each timed end to end, vision tower included.
    `kind="video"`: `image` is a video's list of frames."""
    processor, model = backend.processor, backend.model
    media = {"videos": [image]} if kind == "video" else {"images": [image]}
    inputs = processor(**media, text=[build_prompt(processor, question, kind)], return_tensors="pt")
    inputs = {
        k: (v.to(model.device, model.dtype) if k.startswith("pixel_values") else v.to(model.device))
        for k, v in inputs.items()
        if isinstance(v, torch.Tensor)
    }
    prompt_len = inputs["input_ids"].shape[1]
    pruned, pruned_seconds = _timed_generate(model, inputs, max_new_tokens=max_new_tokens, **overrides)
    full, full_seconds = _timed_generate(model, inputs, max_new_tokens=max_new_tokens, pruning=False)
    selection = pruned.visual_token_selection
    decode = processor.tokenizer.decode
    return Generations(
        pruned_text=decode(pruned.sequences[0, prompt_len:], skip_special_tokens=True).strip(),
        pruned_seconds=pruned_seconds,
        pruned_prompt_tokens=prompt_len - int(selection.num_total.sum() - selection.num_kept.sum()),
        full_text=decode(full.sequences[0, prompt_len:], skip_special_tokens=True).strip(),
        full_seconds=full_seconds,
        full_prompt_tokens=prompt_len,
    )


def answer(
    backend: Backend,
    image,
    question: str,
    mode: str,
    threshold: float,
    keep_ratio: float,
    max_new_tokens: int = 24,
    allowed_dirs=None,
    strategy: str = "codebook",
) -> Answer:
    """Check the inputs, show the selection (cached features), then answer with pruning and without."""
    inputs = _image_inputs(
        backend, image, question, mode, threshold, keep_ratio, max_new_tokens, allowed_dirs, strategy, required=True
    )
    shown = show_selection(backend, inputs)
    generations = on_model_device(
        backend, generate_both, inputs.image, inputs.question, inputs.overrides, inputs.max_new_tokens
    )
    return Answer(generations=generations, preview=shown)


# ---------------------------------------------------------------------------------------------------- comparison
@dataclass
class Comparison:
    """Two strategies at one budget on one image: each one's `Preview`, their agreement, and the table shown."""

    left: Preview
    right: Preview
    strategies: tuple[str, str]
    overlap: dict
    markdown: str


def kept_overlap(keep_a: np.ndarray, keep_b: np.ndarray, scored: np.ndarray) -> dict:
    """How two kept sets agree on the scored tokens: kept by both, by one only, by neither, and their Jaccard index
    (|A ∩ B| / |A ∪ B|; 1.0 when both keep nothing)."""
    a, b = keep_a & scored, keep_b & scored
    both, union = int((a & b).sum()), int((a | b).sum())
    return {
        "both": both,
        "only_a": int((a & ~b).sum()),
        "only_b": int((b & ~a).sum()),
        "neither": int((scored & ~a & ~b).sum()),
        "jaccard": both / union if union else 1.0,
    }


def compare(
    backend: Backend,
    image,
    strategy_a: str,
    strategy_b: str,
    keep_ratio: float,
    threshold: float,
    question: str = "",
    allowed_dirs=None,
) -> Comparison:
    """Strategies `strategy_a` and `strategy_b` at the same budget (`keep_ratio` of the scored tokens) on the same
    image: overlays and counts of each, and how far their kept sets agree. Both are re-scored from the one cached
    encoding of the image (features and tower signals): the vision tower runs only the first time an image is seen.
    `threshold` is the codebook's, read by a strategy that drops codebook-redundant tokens first."""
    strategy_b = check_strategy(strategy_b, backend.strategies("image"))
    inputs = _image_inputs(backend, image, question, "budget", threshold, keep_ratio, None, allowed_dirs, strategy_a)
    strategy_a = inputs.strategy
    encoded = encode_visual(backend, "image", inputs.image)
    shown = []
    for strategy in (strategy_a, strategy_b):
        overrides = pruning_overrides("budget", inputs.threshold, inputs.keep_ratio, strategy)
        selection = score_visual(backend, encoded, overrides)
        shown.append(draw_selection(backend, inputs.image, encoded, selection, inputs.question, strategy))
    keep_a, keep_b = (p.selection.keep_masks()[0].cpu().numpy() for p in shown)
    overlap = kept_overlap(keep_a, keep_b, ~encoded.newline.numpy())
    settings = backend.model.pruning_settings(**pruning_overrides("budget", inputs.threshold, inputs.keep_ratio))
    budget = image_budget(int((~encoded.newline).sum()), settings)
    markdown = format_comparison(shown, (strategy_a, strategy_b), overlap, budget, inputs.keep_ratio)
    return Comparison(shown[0], shown[1], (strategy_a, strategy_b), overlap, markdown)


def _kept_cell(entry: dict) -> str:
    return f"{entry['kept']} / {entry['total']}" + (f" ({entry['percent_kept']:.1f} %)" if entry["total"] else "")


def format_comparison(shown: list, strategies: tuple[str, str], overlap: dict, budget: int, keep_ratio: float) -> str:
    """The comparison table: each strategy's kept tokens per view, in the prompt and the predicted prefill, then how
    far the two kept sets agree."""
    a, b = strategies
    rows = [("base view", "base"), ("high-res tiles", "tile"), ("**scored**", "scored"), ("row newlines", "newline")]
    lines = [
        f"Both at the same budget: {keep_ratio:.0%} of the scored tokens = **{budget}** per image (a strategy may keep "
        "fewer: `codebook_diverse` keeps no token the codebook marks redundant beyond the minimum).",
        "",
        f"| tokens | A: {a} | B: {b} |",
        "|---|---:|---:|",
    ]
    for label, key in rows:
        if shown[0].counts[key]["total"]:
            lines.append(f"| {label} | {_kept_cell(shown[0].counts[key])} | {_kept_cell(shown[1].counts[key])} |")
    lines.append(f"| in the prompt | {_kept_cell(shown[0].counts['all'])} | {_kept_cell(shown[1].counts['all'])} |")
    prefill = []
    for preview in shown:
        unit, scale = flops_unit(preview.flops["full"])
        prefill.append(f"{preview.flops['pruned'] / scale:.2f} {unit} ({preview.flops['percent_saved']:.1f} % saved)")
    lines += [f"| predicted LLM prefill | {prefill[0]} | {prefill[1]} |", ""]
    for side, preview, name in (("A", shown[0], a), ("B", shown[1], b)):
        if preview.counts.get("merged"):
            lines += [
                f"{side} ({name}): {preview.counts['merged']} kept tokens are contextual tokens carrying merged "
                "features (drawn kept at their place).",
                "",
            ]
    lines.append(
        f"**Agreement on the scored tokens:** both keep {overlap['both']}, only A keeps {overlap['only_a']}, only B "
        f"keeps {overlap['only_b']}, neither keeps {overlap['neither']}; Jaccard overlap of the kept sets "
        f"**{overlap['jaccard']:.2f}** (1 = the same tokens)."
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- UI
UPLOAD_PROMPT = "Upload an image (or pick an example) to see which tokens are kept."


def check_payload_form(names: list, inputs: list, allowed_dirs) -> None:
    """What must hold before Gradio processes an endpoint's inputs: their number, the image payload's form and path,
    and no other input being a JSON object or array (Gradio would treat one shaped like a file as a file). A name of
    `None` stands for a session-state input, which Gradio fills in itself: whatever was sent there is not read."""
    if len(inputs) != len(names):
        listed = ", ".join(name for name in names if name)
        raise InputError(f"This endpoint takes {len(names)} inputs, in this order: {listed}; got {len(inputs)}.")
    for name, value in zip(names, inputs):
        if name is None:
            continue
        if name == "image":
            if value is not None:
                locate_image(value, allowed_dirs)
        elif name == "video":
            if value is not None:
                try:
                    locate_image(value, allowed_dirs)
                except InputError as exc:
                    raise InputError(UNREADABLE_VIDEO if str(exc) == UNREADABLE_IMAGE else str(exc)) from None
        elif isinstance(value, (dict, list)):
            (SCALAR_CHECKS.get(name) or check_question)(value)  # refuses it, worded as for any other wrong type


def guard_gradio_preprocessing(demo: gr.Blocks, dependency_ids, allowed_dirs) -> None:
    """Run `check_payload_form` before Gradio's own input processing for the given events, and word what Gradio
    still refuses there.

    Gradio processes inputs before the handler runs: it copies an uploaded file into its cache, downloads a URL,
    validates a file payload; and an exception there (or too few inputs) reaches the caller as an empty error. Blocks
    has no hook before that step, hence wrapping this instance's `preprocess_data`. After `check_payload_form` only
    the image can fail there (a path Gradio will not take): that gets the same `UNREADABLE_IMAGE` as any other
    refused path.
    """
    stock_preprocess_data = demo.preprocess_data
    guarded = {}
    for fn_id in dependency_ids:
        if fn_id in demo.fns:
            block_fn = demo.fns[fn_id]
            names = list(inspect.signature(block_fn.fn).parameters)
            guarded[fn_id] = [None if block.stateful else name for name, block in zip(names, block_fn.inputs)]

    async def preprocess_data(block_fn, inputs, state, explicit_call=False):
        names = guarded.get(block_fn._id)
        if names is None:
            return await stock_preprocess_data(block_fn, inputs, state, explicit_call)
        try:
            check_payload_form(names, inputs, allowed_dirs)
        except InputError as exc:
            raise _user_error(exc) from None
        try:
            return await stock_preprocess_data(block_fn, inputs, state, explicit_call)
        except gr.Error:
            raise
        except Exception as exc:
            logger.info("Gradio refused a file payload (%s)", type(exc).__name__)
            unreadable = UNREADABLE_VIDEO if "video" in names else UNREADABLE_IMAGE
            raise gr.Error(unreadable, print_exception=False) from None

    demo.preprocess_data = preprocess_data


def _one_line(text: str, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


def generation_outputs(made: "Generations") -> tuple[str, str, str, str]:
    """The answers with and without pruning and their time lines, as the image and video sections show them."""
    return (
        made.pruned_text,
        f"**With pruning:** {_seconds(made.pruned_seconds)} · prompt of {made.pruned_prompt_tokens} tokens",
        made.full_text,
        f"**Without pruning:** {_seconds(made.full_seconds)} · prompt of {made.full_prompt_tokens} tokens",
    )


def _user_error(exc: Exception) -> gr.Error:
    """The `gr.Error` to show for `exc`. A user error (`InputError`) is logged as one INFO line and never with a
    traceback; anything else is unexpected and logged with its traceback, once (Gradio does not print it again)."""
    if isinstance(exc, InputError):
        logger.info("Refused a request: %s", _one_line(exc))
        return gr.Error(str(exc), print_exception=False)
    logger.exception("Unexpected error in the Space")
    return gr.Error(
        f"Something went wrong ({type(exc).__name__}). Try another image or other settings.", print_exception=False
    )


# ---------------------------------------------------------------------------------------------------- freshness
# The answers on screen stay until the next Ask; every control they depend on is compared with the ones they were
# made with, and when any differs they are greyed out, relabelled, and a line says what changed.
SETTING_NAMES = {
    "image": "the image",
    "question": "the question",
    "strategy": "the strategy",
    "mode": "the pruning rule",
    "threshold": "the threshold",
    "keep_ratio": "the token budget",
    "max_new_tokens": "max new tokens",
}
STALE_CLASS = "stale"


def answer_signature(image, question, mode, threshold, keep_ratio, max_new_tokens, strategy="codebook") -> dict:
    """What an answer depends on, comparable between events: the image (its path in the upload cache: a new upload
    is a new image), the question as it is asked, the strategy, the pruning rule with the settings it reads (the
    budget, the threshold, or both for a budget strategy that reads the codebook's threshold), and max new tokens."""
    if isinstance(image, dict):
        image = image.get("path")
    signature = {
        "image": None if image is None else str(image),
        "question": question.strip() if isinstance(question, str) else question,
        "strategy": strategy,
        "mode": mode,
        "max_new_tokens": max_new_tokens,
    }
    if mode == "budget":
        signature["keep_ratio"] = keep_ratio
    reads_threshold = mode == "threshold"
    if strategy in STRATEGIES and mode in PRUNING_MODES:
        reads_threshold = strategy_reads_threshold(strategy, mode)
    if reads_threshold:
        signature["threshold"] = threshold
    return signature


def changed_settings(answered: dict, current: dict) -> list[str]:
    """The names (`SETTING_NAMES`) of what differs between two `answer_signature`s; a change of pruning rule or
    strategy is named once, not also as a setting that only one side reads."""
    settings = ("threshold", "keep_ratio")
    names = [
        name
        for name in SETTING_NAMES
        if name != "mode"
        and answered.get(name) != current.get(name)
        and (name not in settings or (name in answered and name in current))
    ]
    if answered.get("mode") != current.get("mode"):
        names = [name for name in names if name not in settings] + ["mode"]
    return [name for name in SETTING_NAMES if name in names]


def stale_notice(changed: list[str], medium: str = "image") -> str:
    """The line above out-of-date answers: what changed since they were made, and what to do. `medium`: what the
    answers are about (`"image"` or `"video"`; the signature's `image` entry holds either)."""
    what = [f"the {medium}" if name == "image" else SETTING_NAMES[name] for name in changed]
    listed = what[0] if len(what) == 1 else ", ".join(what[:-1]) + " and " + what[-1]
    verb = "has" if len(what) == 1 else "have"
    ask = "Ask about the video" if medium == "video" else "Ask"
    return (
        f"⚠️ **Out of date:** {listed} {verb} changed since these answers. Press **{ask}** to answer with the "
        "current settings."
    )


def freshness_updates(answered: dict | None, current: dict, medium: str = "image") -> list:
    """Updates for [notice, pruned answer, full answer, pruned time, full time]: the answers marked out of date (greyed,
    relabelled, the notice shown) when `current` differs from what they were made with, unmarked when it matches."""
    if answered is None:  # nothing answered yet: nothing to mark
        return [gr.skip()] * 5
    changed = changed_settings(answered, current)
    classes = [STALE_CLASS] if changed else []
    suffix = " (out of date)" if changed else ""
    return [
        gr.Markdown(value=stale_notice(changed, medium) if changed else "", visible=bool(changed)),
        gr.Textbox(label=f"Answer with pruning{suffix}", elem_classes=classes),
        gr.Textbox(label=f"Answer without pruning{suffix}", elem_classes=classes),
        gr.Markdown(elem_classes=classes),
        gr.Markdown(elem_classes=classes),
    ]


class OverlayFiles:
    """Overlays handed to Gradio as PNG files named by their content, written atomically.

    Gradio saves a returned PIL image into its cache by rewriting a content-named file in place, so two requests
    producing the same overlay (the preview and the answer of one user) can serve a half-written file. A file path
    output is instead copied under a temporary name and renamed, which is safe. At most `capacity` files are kept.
    """

    def __init__(self, directory: str | Path | None = None, capacity: int = 256):
        self.directory = Path(directory or tempfile.mkdtemp(prefix="llava-codebook-overlays-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.capacity = capacity
        self._lock = threading.Lock()

    def save(self, image: Image.Image | None) -> str | None:
        if image is None:  # a view this family does not have (LLaVA-1.5: no tiles)
            return None
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
        path = self.directory / f"{hashlib.sha1(data).hexdigest()}.png"
        if not path.exists():
            partial = path.with_suffix(f".{threading.get_ident()}.part")
            partial.write_bytes(data)
            os.replace(partial, path)
            self._prune()
        return str(path)

    def _prune(self) -> None:
        with self._lock:
            files = sorted(self.directory.glob("*.png"), key=lambda f: f.stat().st_mtime)
            for old in files[: max(0, len(files) - self.capacity)]:
                old.unlink(missing_ok=True)


def max_upload_bytes() -> int:
    """The largest image file Gradio accepts on upload, `$MAX_UPLOAD_MB` mebibytes (default 25)."""
    return int(env_number("MAX_UPLOAD_MB", 25, 0.01) * MIB)


def max_request_bytes() -> int:
    """The largest request body other than an upload, `$MAX_REQUEST_KB` kibibytes (default 256): an API call is a
    few inputs of JSON (a question of 1,000 characters is at most 12 KB escaped), or a small image as a data: URL."""
    return int(env_number("MAX_REQUEST_KB", 256, 1) * 1024)


# Multipart framing around one uploaded file: boundaries and part headers.
MULTIPART_SLACK = 64 * 1024


class RequestBodyLimits:
    """ASGI middleware: a request body over its limit gets 413 before anything reads or parses it.

    Gradio's `max_file_size` bounds each uploaded file, but nothing bounds a JSON call (a 50 MB question was parsed
    and held) or the number of files in one upload. The limit is `upload_bytes` on Gradio's upload route and
    `body_bytes` everywhere else; a declared Content-Length is judged at once, a chunked body as it arrives.
    """

    def __init__(self, app, body_bytes: int, upload_bytes: int):
        self.app = app
        self.body_bytes = body_bytes
        self.upload_bytes = upload_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        is_upload = scope["path"].rstrip("/").endswith("/gradio_api/upload")
        limit = self.upload_bytes if is_upload else self.body_bytes
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return await self._refuse(limit, scope, receive, send)
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # An HTTPException, so that FastAPI re-raises it from its body parsing instead of a 400.
                    raise HTTPException(413, self.refusal(limit))
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except HTTPException as exc:
            if exc.status_code != 413 or started:
                raise
            await self._refuse(limit, scope, receive, send)

    def refusal(self, limit: int) -> str:
        return (
            f"Request body too large: this Space takes at most {limit:,} bytes here. Send images as file uploads "
            f"(gradio_client: handle_file) of at most {(self.upload_bytes - MULTIPART_SLACK) / MIB:g} MB."
        )

    async def _refuse(self, limit: int, scope, receive, send):
        await PlainTextResponse(self.refusal(limit), status_code=413)(scope, receive, send)


def cache_cleanup() -> tuple[int, int]:
    """Gradio's `delete_cache` for this Space: every `$CACHE_SWEEP_SECONDS` (default 60), delete the uploads and
    outputs it cached more than `$CACHE_MAX_AGE_SECONDS` ago (default 600). Each request leaves a few hundred KB
    there (its upload, two overlays), so the cache holds at most about (age + sweep) x request rate of them."""
    return int(env_number("CACHE_SWEEP_SECONDS", 60, 1)), int(env_number("CACHE_MAX_AGE_SECONDS", 600, 1))


def remove_empty_cache_folders(cache_dir: str | Path, age: float) -> int:
    """Remove the folders of Gradio's cache that have stayed empty for `age` seconds; return how many.

    Gradio caches each file in a folder of its own (`<cache>/<hash>/<name>`) and its cleanup deletes the files, not
    the folders: on a busy Space they would pile up (a disk block and an inode each). `rmdir` removes only empty
    folders, and a folder just made for a new file is younger than `age`.
    """
    removed, now = 0, time.time()
    try:
        folders = list(Path(cache_dir).iterdir())
    except OSError:
        return 0
    for folder in folders:
        try:
            if folder.is_dir() and not folder.is_symlink() and now - folder.stat().st_mtime > age:
                folder.rmdir()
                removed += 1
        except OSError:  # not empty, or gone already
            continue
    return removed


@asynccontextmanager
async def sweep_empty_cache_folders(server_app):
    """Lifespan of the served app: with each `delete_cache` sweep, also `remove_empty_cache_folders`."""
    blocks = server_app.get_blocks()
    frequency, age = blocks.delete_cache or (None, None)

    async def sweep():
        while True:
            await asyncio.sleep(frequency)
            await asyncio.to_thread(remove_empty_cache_folders, blocks.GRADIO_CACHE, age)

    task = asyncio.create_task(sweep()) if frequency and age else None
    try:
        yield
    finally:
        if task is not None:
            task.cancel()


def launch_options() -> dict:
    """`demo.launch` arguments that bound what a request may bring (uploads, bodies), read from the environment."""
    upload_bytes = max_upload_bytes()
    limits = Middleware(RequestBodyLimits, body_bytes=max_request_bytes(), upload_bytes=upload_bytes + MULTIPART_SLACK)
    return {
        "max_file_size": upload_bytes,
        "app_kwargs": {"middleware": [limits], "lifespan": sweep_empty_cache_folders},
        "ssr_mode": False,
        "css": SPACE_CSS,
    }


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


# Pictures keep a fixed height (a 33:1 upload must not collapse its box); on a phone the input takes the full width and
# the two overlays sit side by side right under it. Out-of-date answers are greyed out.
SPACE_CSS = """
.picture { height: 300px; }
@media (max-width: 640px) { .picture { height: 200px; } }
.stale { opacity: 0.45; }
#counts td:not(:first-child), #counts th:not(:first-child) { white-space: nowrap; }
"""
THRESHOLD_LABEL = "Threshold t"
THRESHOLD_INFO = "A scored token (base view or tile) is kept iff its score < t."
BUDGET_LABEL = "Token budget: share of the scored tokens kept"
BUDGET_INFO = "Scored = base view + tiles, as in the table; row newlines are not counted and always kept."
STRATEGY_INFO = (
    "Which rule picks the kept tokens. The peers keep a token budget (no threshold); codebook_diverse also reads the "
    "threshold (what it marks redundant is never kept beyond the minimum)."
)
COMPARE_PROMPT = "Upload an image (or pick an example) to compare two strategies on it."


def strategy_choices(names) -> list[tuple[str, str]]:
    """Dropdown choices: (label, name) for each strategy."""
    return [(STRATEGY_LABELS.get(name, name), name) for name in names]


def control_visibility(strategy: str, mode: str) -> tuple:
    """Updates for [threshold slider, budget slider]: each shown when the strategy reads it under `mode`."""
    reads_threshold = strategy_reads_threshold(strategy, mode) if strategy in STRATEGIES else mode != "budget"
    return gr.Slider(visible=reads_threshold), gr.Slider(visible=mode == "budget")


# How the page's events queue: previews (run on every slider move, the latest one wins) two at a time, answers (a
# generation each) one at a time. Both take the image payload unprocessed: `check_image` reads it.
PREVIEW_EVENT = {
    "trigger_mode": "always_last",
    "show_progress": "hidden",
    "concurrency_limit": 2,
    "concurrency_id": "preview",
    "preprocess": False,
}
ANSWER_EVENT = {"concurrency_limit": 1, "concurrency_id": "answer", "preprocess": False}


def build_demo(backend: Backend, examples_dir: str | Path | None = None) -> gr.Blocks:
    examples_dir = Path(examples_dir or Path(tempfile.gettempdir()) / "llava-codebook-space-examples")
    overlays = OverlayFiles()
    example_rows = write_examples(examples_dir)
    # The only folders an image path may point into (after resolving links and `..`): Gradio's upload cache, where
    # uploads and the example files it serves live, and the app's own example folder. Set once `image` exists.
    allowed_dirs: list[Path] = []

    def on_preview(image, mode, threshold, keep_ratio, question, strategy):
        try:
            shown = preview(backend, image, mode, threshold, keep_ratio, question, allowed_dirs, strategy)
        except MissingImage:
            return None, None, UPLOAD_PROMPT, {}
        except Exception as exc:  # the preview runs on every slider move: report in place, no modal
            # Markdown would take a quoted `<image>` for an HTML tag.
            return None, None, f"⚠️ {html.escape(_user_error(exc).message, quote=False)}", {}
        return (
            overlays.save(shown.base_overlay),
            overlays.save(shown.tile_overlay),
            shown.markdown,
            {"counts": shown.counts, "flops": shown.flops},
        )

    def on_ask(image, question, mode, threshold, keep_ratio, max_new_tokens, strategy):
        """The page's first step of Ask: check the inputs. A user error is a message (a warning toast), not a failed
        event: it leaves every output as it was, where a failed answer would mark each one with an error badge. The
        hidden error stops the chain. Returns what the answer will be made with, for `on_answered`."""
        try:
            _image_inputs(
                backend,
                image,
                question,
                mode,
                threshold,
                keep_ratio,
                max_new_tokens,
                allowed_dirs,
                strategy,
                required=True,
            )
        except InputError as exc:
            message = _user_error(exc).message
            gr.Warning(html.escape(message, quote=False))  # the toast renders HTML
            raise gr.Error(message, visible=False, print_exception=False) from None
        except Exception as exc:
            raise _user_error(exc) from None
        return answer_signature(image, question, mode, threshold, keep_ratio, max_new_tokens, strategy)

    def on_answer(image, question, mode, threshold, keep_ratio, max_new_tokens, strategy):
        try:
            result = answer(
                backend, image, question, mode, threshold, keep_ratio, max_new_tokens, allowed_dirs, strategy
            )
        except Exception as exc:
            raise _user_error(exc) from None
        shown, made = result.preview, result.generations
        return (
            overlays.save(shown.base_overlay),
            overlays.save(shown.tile_overlay),
            shown.markdown,
            {"counts": shown.counts, "flops": shown.flops},
            *generation_outputs(made),
        )

    def on_answered(image, question, mode, threshold, keep_ratio, max_new_tokens, strategy, asked):
        """After an answer arrived: remember what it was made with, and if the controls moved meanwhile, mark it out
        of date and bring the overlays and counts (which the answer reset to its own settings) back to the controls."""
        current = answer_signature(image, question, mode, threshold, keep_ratio, max_new_tokens, strategy)
        refreshed = (
            [gr.skip()] * 4
            if current == asked
            else list(on_preview(image, mode, threshold, keep_ratio, question, strategy))
        )
        return [asked, *freshness_updates(asked, current), *refreshed]

    def on_controls_changed(image, question, mode, threshold, keep_ratio, max_new_tokens, strategy, answered):
        return freshness_updates(
            answered, answer_signature(image, question, mode, threshold, keep_ratio, max_new_tokens, strategy)
        )

    def on_mode(mode, strategy):
        """Only the controls the strategy reads under the rule are shown (a hidden one keeps its value)."""
        return control_visibility(strategy, mode)

    def on_strategy(strategy, mode):
        """Offer only the rules the strategy defines (a peer has a budget only), then show the controls it reads."""
        if strategy not in STRATEGIES:
            return gr.skip(), gr.skip(), gr.skip()
        modes = strategy_modes(strategy)
        mode = mode if mode in modes else "budget"
        return gr.Radio(choices=list(modes), value=mode), *control_visibility(strategy, mode)

    def on_compare(image, strategy_a, strategy_b, keep_ratio, threshold, question):
        try:
            shown = compare(backend, image, strategy_a, strategy_b, keep_ratio, threshold, question, allowed_dirs)
        except MissingImage:
            return None, None, None, None, COMPARE_PROMPT, {}
        except Exception as exc:
            return None, None, None, None, f"⚠️ {html.escape(_user_error(exc).message, quote=False)}", {}
        names = shown.strategies
        return (
            gr.Image(value=overlays.save(shown.left.base_overlay), label=f"A: {names[0]}, base view"),
            gr.Image(value=overlays.save(shown.left.tile_overlay), label=f"A: {names[0]}, high-res tiles"),
            gr.Image(value=overlays.save(shown.right.base_overlay), label=f"B: {names[1]}, base view"),
            gr.Image(value=overlays.save(shown.right.tile_overlay), label=f"B: {names[1]}, high-res tiles"),
            shown.markdown,
            {
                "strategies": list(names),
                "counts": [shown.left.counts, shown.right.counts],
                "flops": [shown.left.flops, shown.right.flops],
                "overlap": shown.overlap,
            },
        )

    with gr.Blocks(title="Redundancy-codebook token pruning", delete_cache=cache_cleanup()) as demo:
        gr.Markdown(
            "# Which visual tokens does a redundancy codebook drop?\n"
            "Each visual token of the image (base view and high-res tiles) is scored by its best cosine similarity "
            "to a codebook prototype, and dropped when the score reaches the threshold (or, with a budget, only the "
            "least redundant share is kept). Row newlines are not scored and always kept. Pick another **strategy** "
            "to see a peer rule (FasterVLM, VisionZip, DivPrune, HiRED, baselines) at a token budget, or compare two "
            "below. Move the controls: the overlays are re-scored from cached features, without re-running the "
            "vision tower.\n\n"
            "**Legend:** clear = kept · dark = dropped · yellow = crop borders · magenta = a strip no tile token sees "
            "(the stock unpadding works in whole tokens)."
        )
        gr.Markdown(backend.notice, elem_id="model-notice")
        # The pictures first, side by side: the overlays stay next to the input at any width.
        with gr.Row(equal_height=True):
            with gr.Column(scale=1, min_width=240):
                # The events below take the image payload unprocessed (`preprocess=False`): `check_image` reads it,
                # and Gradio's image preprocessing, which opens any path it is sent, never runs.
                image = gr.Image(
                    type="filepath", image_mode=None, label="Image", elem_id="input-image", elem_classes=["picture"]
                )
                allowed_dirs += [Path(image.GRADIO_CACHE).resolve(), examples_dir.resolve()]
            with gr.Column(scale=2, min_width=240):
                with gr.Row(equal_height=True):
                    base_view = gr.Image(
                        label="Base view (whole image)",
                        type="filepath",
                        interactive=False,
                        elem_id="base-overlay",
                        elem_classes=["picture"],
                        buttons=["fullscreen", "download"],
                        min_width=120,
                    )
                    tile_view = gr.Image(
                        label="High-res tiles",
                        type="filepath",
                        interactive=False,
                        elem_id="tile-overlay",
                        elem_classes=["picture"],
                        buttons=["fullscreen", "download"],
                        min_width=120,
                    )
        with gr.Row():
            with gr.Column(scale=1, min_width=240):
                question = gr.Textbox(
                    label="Question",
                    placeholder="What is in the picture?",
                    max_length=MAX_QUESTION_CHARS,
                    elem_id="question",
                )
                strategy = gr.Dropdown(
                    strategy_choices(backend.strategies("image")),
                    value="codebook",
                    label="Strategy",
                    info=STRATEGY_INFO,
                    elem_id="strategy",
                )
                mode = gr.Radio(["threshold", "budget"], value="threshold", label="Pruning rule", elem_id="mode")
                threshold = gr.Slider(
                    -1.0,
                    1.0,
                    value=backend.default_threshold,
                    step=0.01,
                    label=THRESHOLD_LABEL,
                    info=THRESHOLD_INFO,
                    elem_id="threshold",
                )
                keep_ratio = gr.Slider(
                    0.05,
                    1.0,
                    value=0.25,
                    step=0.05,
                    label=BUDGET_LABEL,
                    info=BUDGET_INFO,
                    elem_id="keep-ratio",
                    visible=False,
                )
                max_new_tokens = gr.Slider(
                    1, MAX_NEW_TOKENS, value=24, step=1, label="Max new tokens", elem_id="max-new-tokens"
                )
                ask = gr.Button("Ask", variant="primary", elem_id="ask")
            with gr.Column(scale=2, min_width=240):
                counts = gr.Markdown(UPLOAD_PROMPT, elem_id="counts")
                with gr.Accordion("Raw counts", open=False):
                    details = gr.JSON(label="counts and FLOPs")
                answer_notice = gr.Markdown(visible=False, elem_id="answer-notice")
                with gr.Row():
                    with gr.Column(min_width=160):
                        pruned_time = gr.Markdown("**With pruning**", elem_id="pruned-time")
                        pruned_answer = gr.Textbox(
                            label="Answer with pruning", interactive=False, elem_id="pruned-answer"
                        )
                    with gr.Column(min_width=160):
                        full_time = gr.Markdown("**Without pruning**", elem_id="full-time")
                        full_answer = gr.Textbox(
                            label="Answer without pruning", interactive=False, elem_id="full-answer"
                        )
        offered = backend.strategies("image")
        gr.Markdown(
            "## Compare two strategies at the same budget\n"
            "The image above, pruned by two strategies to the same number of tokens. Both are re-scored from the "
            "cached vision outputs (features and the tower's [CLS] attention): changing a strategy or the budget "
            "never re-runs the vision tower."
        )
        with gr.Row():
            compare_a = gr.Dropdown(
                strategy_choices(offered), value="codebook", label="Strategy A", elem_id="compare-a", min_width=160
            )
            compare_b = gr.Dropdown(
                strategy_choices(offered),
                value="divprune" if "divprune" in offered else offered[-1],
                label="Strategy B",
                elem_id="compare-b",
                min_width=160,
            )
            compare_budget = gr.Slider(
                0.05,
                1.0,
                value=0.25,
                step=0.05,
                label="Token budget for both: share of the scored tokens kept",
                elem_id="compare-budget",
                min_width=160,
            )
        with gr.Row(equal_height=True):
            compare_views = []
            for side in ("A", "B"):
                for view, label in (("base", "base view"), ("tile", "high-res tiles")):
                    compare_views.append(
                        gr.Image(
                            label=f"{side}: {label}",
                            type="filepath",
                            interactive=False,
                            elem_id=f"compare-{side.lower()}-{view}",
                            elem_classes=["picture"],
                            buttons=["fullscreen", "download"],
                            min_width=120,
                        )
                    )
        compare_counts = gr.Markdown(COMPARE_PROMPT, elem_id="compare-counts")
        with gr.Accordion("Raw comparison", open=False):
            compare_details = gr.JSON(label="counts, FLOPs and overlap")
        gr.Examples(example_rows, inputs=[image, question], label="Examples (drawn in code)")
        if backend.takes_video:
            video_events = build_video_section(
                backend,
                allowed_dirs,
                overlays,
                image.GRADIO_CACHE,
                mode,
                threshold,
                keep_ratio,
                max_new_tokens,
                strategy,
            )
        else:
            video_events = []
        asked = gr.State(None)  # what the answer being made is made with
        answered = gr.State(None)  # what the answers on screen were made with

        preview_inputs = [image, mode, threshold, keep_ratio, question, strategy]
        preview_outputs = [base_view, tile_view, counts, details]
        answer_inputs = [image, question, mode, threshold, keep_ratio, max_new_tokens, strategy]
        compare_inputs = [image, compare_a, compare_b, compare_budget, threshold, question]
        compare_outputs = compare_views + [compare_counts, compare_details]
        answer_outputs = preview_outputs + [pruned_answer, pruned_time, full_answer, full_time]
        freshness_outputs = [answer_notice, pruned_answer, full_answer, pruned_time, full_time]
        private = {"api_visibility": "private", "preprocess": False, "show_progress": "hidden"}
        events = []  # every event that takes the image: its payload is checked before Gradio processes it
        for control in (image, mode, threshold, keep_ratio):
            events.append(
                control.change(
                    on_preview,
                    preview_inputs,
                    preview_outputs,
                    api_name="preview" if control is image else False,
                    **PREVIEW_EVENT,
                )
            )
        mode.change(on_mode, [mode, strategy], [threshold, keep_ratio], queue=False, **private)
        # A new strategy first brings the rule and the sliders in line with it (a peer has no threshold rule), then
        # previews: previewing first would ask for a rule the strategy may not have.
        events.append(
            strategy.change(on_strategy, [strategy, mode], [mode, threshold, keep_ratio], queue=False, **private).then(
                on_preview,
                preview_inputs,
                preview_outputs,
                **PREVIEW_EVENT,
                api_visibility="private",
            )
        )
        for control in (image, compare_a, compare_b, compare_budget, threshold):
            events.append(
                control.change(
                    on_compare,
                    compare_inputs,
                    compare_outputs,
                    api_name="compare" if control is image else False,
                    **PREVIEW_EVENT,
                )
            )
        for control in (image, question, mode, threshold, keep_ratio, max_new_tokens, strategy):
            events.append(
                control.change(
                    on_controls_changed,
                    answer_inputs + [answered],
                    freshness_outputs,
                    queue=False,
                    trigger_mode="always_last",
                    **private,
                )
            )
        for trigger, api_name in ((ask.click, "answer"), (question.submit, None)):
            checked = trigger(on_ask, answer_inputs, asked, concurrency_limit=2, concurrency_id="preview", **private)
            answered_now = checked.success(
                on_answer,
                answer_inputs,
                answer_outputs,
                api_name=api_name or False,
                api_visibility="public" if api_name else "private",
                **ANSWER_EVENT,
            )
            settled = answered_now.success(
                on_answered,
                answer_inputs + [asked],
                [answered, *freshness_outputs, *preview_outputs],
                concurrency_limit=2,
                concurrency_id="preview",
                **private,
            )
            events += [checked, answered_now, settled]
    guard_gradio_preprocessing(demo, [event["id"] for event in events + video_events], allowed_dirs)
    demo.queue(max_size=32, default_concurrency_limit=1)
    return demo


VIDEO_UPLOAD_PROMPT = "Upload a video (an animated GIF, WebP or PNG) to see each frame's kept and dropped tokens."


def build_video_section(
    backend, allowed_dirs, overlays, cache_dir, mode, threshold, keep_ratio, max_new_tokens, strategy
):
    """The video part of the page, for families that take videos: the upload, the strip of frames, the counts and the
    answers; it shares the pruning controls (strategy included: those that read the tower's [CLS] attention cannot
    rank pooled frame tokens, and say so). Returns its events (their payloads are checked like the image's)."""
    cache_dir = Path(cache_dir).resolve()
    if cache_dir not in allowed_dirs:
        allowed_dirs.append(cache_dir)

    def on_video_preview(video, mode, threshold, keep_ratio, question, strategy):
        try:
            shown = preview_video(backend, video, mode, threshold, keep_ratio, question, allowed_dirs, strategy)
        except MissingImage:
            return None, VIDEO_UPLOAD_PROMPT, {}
        except Exception as exc:
            return None, f"⚠️ {html.escape(_user_error(exc).message, quote=False)}", {}
        return overlays.save(shown.strip), shown.markdown, {"counts": shown.counts, "flops": shown.flops}

    def on_video_answer(video, question, mode, threshold, keep_ratio, max_new_tokens, strategy):
        try:
            result = answer_video(
                backend, video, question, mode, threshold, keep_ratio, max_new_tokens, allowed_dirs, strategy
            )
        except Exception as exc:
            raise _user_error(exc) from None
        shown, made = result.preview, result.generations
        return (
            overlays.save(shown.strip),
            shown.markdown,
            {"counts": shown.counts, "flops": shown.flops},
            *generation_outputs(made),
            # What these answers were made with (a session state: not part of the API's outputs).
            answer_signature(video, question, mode, threshold, keep_ratio, max_new_tokens, strategy),
        )

    def on_video_controls_changed(video, question, mode, threshold, keep_ratio, max_new_tokens, strategy, answered):
        """The video answers on screen marked out of date (or current again) as the controls move, as the image's."""
        current = answer_signature(video, question, mode, threshold, keep_ratio, max_new_tokens, strategy)
        return freshness_updates(answered, current, medium="video")

    gr.Markdown(
        "## Video\nThe frames (up to "
        f"{VIDEO_FRAMES}, spread evenly) as the model pools them: each frame's pooled tokens are scored like an "
        "image's and dropped when redundant. Uses the pruning controls above (strategies that read the vision "
        "tower's [CLS] attention do not apply to pooled frames)."
    )
    with gr.Row():
        with gr.Column(scale=1, min_width=240):
            video = gr.File(
                label="Video (animated GIF, WebP or PNG)", file_types=VIDEO_FILE_TYPES, elem_id="input-video"
            )
            video_question = gr.Textbox(
                label="Question about the video",
                placeholder="What happens in the video?",
                max_length=MAX_QUESTION_CHARS,
                elem_id="video-question",
            )
            ask_video = gr.Button("Ask about the video", variant="primary", elem_id="ask-video")
        with gr.Column(scale=2, min_width=240):
            strip = gr.Image(
                label="Frames: kept / dropped tokens",
                type="filepath",
                interactive=False,
                elem_id="video-strip",
                buttons=["fullscreen", "download"],
            )
            video_counts = gr.Markdown(VIDEO_UPLOAD_PROMPT, elem_id="video-counts")
            with gr.Accordion("Raw video counts", open=False):
                video_details = gr.JSON(label="counts and FLOPs")
            video_answer_notice = gr.Markdown(visible=False, elem_id="video-answer-notice")
            with gr.Row():
                with gr.Column(min_width=160):
                    video_pruned_time = gr.Markdown("**With pruning**", elem_id="video-pruned-time")
                    video_pruned = gr.Textbox(label="Answer with pruning", interactive=False, elem_id="video-pruned")
                with gr.Column(min_width=160):
                    video_full_time = gr.Markdown("**Without pruning**", elem_id="video-full-time")
                    video_full = gr.Textbox(label="Answer without pruning", interactive=False, elem_id="video-full")
    preview_inputs = [video, mode, threshold, keep_ratio, video_question, strategy]
    preview_outputs = [strip, video_counts, video_details]
    events = []
    for control in (video, mode, threshold, keep_ratio, strategy):
        events.append(
            control.change(
                on_video_preview,
                preview_inputs,
                preview_outputs,
                api_name="preview_video" if control is video else False,
                **PREVIEW_EVENT,
            )
        )
    answer_inputs = [video, video_question, mode, threshold, keep_ratio, max_new_tokens, strategy]
    answered = gr.State(None)  # what the video answers on screen were made with
    answer_outputs = preview_outputs + [video_pruned, video_pruned_time, video_full, video_full_time, answered]
    freshness_outputs = [video_answer_notice, video_pruned, video_full, video_pruned_time, video_full_time]
    private = {"api_visibility": "private", "preprocess": False, "show_progress": "hidden"}
    for trigger, api_name in ((ask_video.click, "answer_video"), (video_question.submit, None)):
        made = trigger(
            on_video_answer,
            answer_inputs,
            answer_outputs,
            api_name=api_name or False,
            api_visibility="public" if api_name else "private",
            **ANSWER_EVENT,
        )
        # Controls moved while the answer was made: it arrives marked.
        settled = made.success(
            on_video_controls_changed, answer_inputs + [answered], freshness_outputs, queue=False, **private
        )
        events += [made, settled]
    for control in (video, video_question, mode, threshold, keep_ratio, max_new_tokens, strategy):
        events.append(
            control.change(
                on_video_controls_changed,
                answer_inputs + [answered],
                freshness_outputs,
                queue=False,
                trigger_mode="always_last",
                **private,
            )
        )
    return events


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the redundancy-codebook pruning Space locally.")
    parser.add_argument(
        "--model",
        default=os.environ.get("MODEL_ID"),
        help="Hub id or local dir (default: $MODEL_ID, else the embedded random-weight demo model)",
    )
    parser.add_argument(
        "--codebook",
        default=os.environ.get("CODEBOOK_REPO"),
        help="codebook repo or dir (default: $CODEBOOK_REPO, else the model config's)",
    )
    parser.add_argument("--host", default=None, help="address to listen on (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    backend = load_backend(args.model, args.codebook)
    _SERVED["backend"] = backend  # the one `@spaces.GPU` calls run with
    demo = build_demo(backend)
    demo.launch(server_name=args.host, server_port=args.port, **launch_options())


if __name__ == "__main__":
    main()
