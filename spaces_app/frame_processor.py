"""Frames prepared with PIL where the stock video processors cannot run.

The stock video processors of LLaVA-OneVision and LLaVA-NeXT-Video need torchvision, which does not install beside the
pinned CPU torch: `frame_video_processor` resizes (and centre-crops), rescales and normalises frames as the
checkpoint's video-processor config says.
"""

from typing import ClassVar

import numpy as np
from PIL import Image


def _expose_video_processor_base() -> type:
    """transformers' video-processor base class. It needs no torchvision, but transformers exports it only when
    torchvision imports; the stock processors look it up there, so it is exposed for `FrameVideoProcessor`."""
    import transformers
    from transformers.video_processing_utils import VideoProcessorMixin

    if not hasattr(transformers, "VideoProcessorMixin"):
        transformers.VideoProcessorMixin = VideoProcessorMixin
    return VideoProcessorMixin


def frame_video_processor(config: dict):
    """A PIL stand-in for a stock video processor configured by `config` (a `video_preprocessor_config.json`, or
    the `video_processor` entry of `processor_config.json`): resize (to `size`'s height x width, or the shortest
    edge to `size.shortest_edge`), centre-crop to `crop_size` where `do_center_crop`, rescale and normalise."""
    import torch
    from transformers.feature_extraction_utils import BatchFeature

    base = _expose_video_processor_base()
    size = config.get("size") or {"height": 384, "width": 384}
    crop = config.get("crop_size") or {}
    center_crop = bool(config.get("do_center_crop")) and crop
    mean = np.asarray(config.get("image_mean", (0.5, 0.5, 0.5)), dtype=np.float32)
    std = np.asarray(config.get("image_std", (0.5, 0.5, 0.5)), dtype=np.float32)
    resample = int(config.get("resample", 3))
    rescale = float(config.get("rescale_factor", 1 / 255))

    def prepare(frame: Image.Image) -> np.ndarray:
        frame = frame.convert("RGB")
        if "shortest_edge" in size:
            scale = size["shortest_edge"] / min(frame.size)
            target = (max(1, round(frame.width * scale)), max(1, round(frame.height * scale)))
        else:
            target = (size["width"], size["height"])
        frame = frame.resize(target, resample)
        if center_crop:
            left, top = (frame.width - crop["width"]) // 2, (frame.height - crop["height"]) // 2
            frame = frame.crop((left, top, left + crop["width"], top + crop["height"]))
        array = np.asarray(frame, dtype=np.float32) * rescale
        return ((array - mean) / std).transpose(2, 0, 1)

    class FrameVideoProcessor(base):
        model_input_names: ClassVar[list[str]] = ["pixel_values_videos"]

        def __init__(self):
            super().__init__()
            # Read by `base_region`, like the stock processors' attributes of the same names.
            self.size, self.crop_size, self.do_center_crop = dict(size), dict(crop), bool(center_crop)

        def preprocess(self, videos, return_tensors=None, **kwargs):
            videos = [videos] if isinstance(videos, np.ndarray) and videos.ndim == 4 else list(videos)
            out = []
            for frames in videos:
                images = [f if isinstance(f, Image.Image) else Image.fromarray(np.asarray(f)) for f in frames]
                out.append(np.stack([prepare(image) for image in images]))
            return BatchFeature({"pixel_values_videos": torch.tensor(np.stack(out))}, tensor_type=return_tensors)

    return FrameVideoProcessor()
