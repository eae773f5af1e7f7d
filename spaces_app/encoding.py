"""The encoding cache: the vision tower runs once per distinct image or video, and every later re-scoring (a slider
move, another strategy, a comparison) reads the cached encoding instead.

`encode_visual` runs the processor and the family's encoder and caches the result in the backend's `EncodingCache`
(least recently used first out, bounded by the bytes of its tensors, `$FEATURE_CACHE_MB`); `score_visual` re-scores
an encoding under new pruning settings.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from llava_codebook.processing_llava_next_codebook import geometry_for_processor
from llava_codebook.strategies import STRATEGIES

from . import limits
from .gpu import on_model_device

if TYPE_CHECKING:
    from .model import Backend


class EncodingCache:
    """A thread-safe LRU of encoded images, keyed by the image's pixels and bounded by the bytes it holds.

    Entries are evicted least recently used first until the sum of their `nbytes` is at most `max_bytes`; an entry
    larger than the whole bound is served but not kept.
    """

    def __init__(self, max_bytes: int | None = None):
        self.max_bytes = limits.feature_cache_bytes() if max_bytes is None else int(max_bytes)
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


def image_key(image: Image.Image) -> str:
    digest = hashlib.sha1(image.tobytes())
    digest.update(f"{image.size}{image.mode}".encode())
    return digest.hexdigest()


def frames_key(frames: list[Image.Image]) -> str:
    digest = hashlib.sha1(b"video")
    for frame in frames:
        digest.update(image_key(frame).encode())
    return digest.hexdigest()


@dataclass
class EncodedVisual:
    """One image or video encoded once by its family (`encode_for_strategies`), on the CPU; re-scoring under any
    strategy the Space offers reuses it and never runs the vision tower again.

    packed, newline, crop_ids: the packed tokens, their row-newline mask and the crop (view, tile or frame) of each.
    crop_grid: the AnyRes tile grid `(rows, cols)` where the family has one (LLaVA-NeXT), else `None`.
    signals: what the tower computed for these tokens that the offered strategies read ([CLS] attention, keys,
        projector inputs; `signals.pack_tower_signals`), empty when none of them needs any.
    geometry: for LLaVA-NeXT's pixel drawing, each token's box in the image (`geometry_for_processor`), else `None`.
    image_size: `(height, width)` of an image as the processor reports it (what tile skipping maps tiles with).
    token_grid: `(rows, cols)` of the tokens of one crop where the processor says it (Qwen-VL: its merged tokens,
        each a 2 x 2 block of patches, from `image_grid_thw` / `video_grid_thw`), else `None` (square crops).
    frames_per_crop: frames that one crop of a video covers (Qwen-VL: a temporal patch of 2 frames), else 1.
    """

    modality: str
    packed: torch.Tensor
    newline: torch.Tensor
    crop_ids: torch.Tensor
    crop_grid: tuple[int, int] | None = None
    signals: dict = field(default_factory=dict)
    geometry: object = None
    image_size: tuple[int, int] | None = None
    token_grid: tuple[int, int] | None = None
    frames_per_crop: int = 1

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


def merged_token_grid(backend: Backend, modality: str, call: dict) -> tuple[tuple[int, int] | None, int]:
    """`(token_grid, frames_per_crop)` of one encoded image or video (see `EncodedVisual`): Qwen-VL's processor gives
    each one's (t, h, w) grid in patches, merged `spatial_merge_size` x `spatial_merge_size` into one token and
    `temporal_patch_size` frames into one temporal patch; `(None, 1)` for the families without such a grid."""
    grid = call.get("image_grid_thw" if modality == "image" else "video_grid_thw")
    if grid is None:
        return None, 1
    merge = backend.model.config.vision_config.spatial_merge_size
    _, height, width = (int(value) for value in grid[0])
    frames = getattr(backend.processor.video_processor, "temporal_patch_size", 1) if modality == "video" else 1
    return (height // merge, width // merge), int(frames)


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
        sizes = call.get("image_sizes")  # LLaVA-1.5's and Qwen-VL's processors give none: no tiles
        size = tuple(int(v) for v in sizes[0]) if sizes is not None else None
        token_grid, frames_per_crop = merged_token_grid(backend, modality, call)
        return EncodedVisual(
            modality, packed, newline, crop_ids, crop_grid, signals, geometry, size, token_grid, frames_per_crop
        )

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
    first with `on_device`; the selection comes back on the CPU. With tile skipping, the tiles the model would not
    encode are read from the cached base view (`skip_encoded_tiles`: encoded crops do not depend on one another, so
    this is what the model itself keeps)."""
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
    base = backend.model.model
    with torch.no_grad():
        if settings.tile_skipping and encoded.modality == "image":
            skipped = base.skip_encoded_tiles([segment], torch.tensor([encoded.image_size]), settings)
            selection = base.select_segments([segment], settings, *skipped)
        else:
            selection = base.select_segments([segment], settings)
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
