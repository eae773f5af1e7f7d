"""The processor of a checkpoint, also where its stock video processor cannot be built.

Every stock video processor needs torchvision, which does not import beside the CPU torch build this project pins,
and without it `AutoProcessor.from_pretrained` fails for every family that takes videos. `load_processor` then puts
the family's stock processor together from the checkpoint's own image processor, tokenizer, chat template and
settings, with a PIL video processor configured by the checkpoint's video-processor config, as the Space does for
the LLaVA video families. For the Qwen-VL families that is `qwen_frame_video_processor`: frames resized (PIL,
bicubic) to the size the stock `smart_resize` picks, rescaled, normalised, the frame count padded to a whole temporal
patch by repeating the last frame, and patches laid out as the stock processor lays them out. It takes the frames it
is given (no sampling by fps; a caller samples first) and returns their `video_metadata` for the processors that
derive timing from it (Qwen2.5-VL's `second_per_grid_ts`, Qwen3-VL's timestamps). Where torchvision imports, the stock
processor is used and nothing here runs.
"""

import json
from pathlib import Path

import numpy as np

# The stock Qwen video processors' defaults, used where the checkpoint's config leaves a value out.
_QWEN2_VIDEO_DEFAULTS = {
    "size": {"shortest_edge": 128 * 28 * 28, "longest_edge": 28 * 28 * 768},
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": (0.48145466, 0.4578275, 0.40821073),
    "image_std": (0.26862954, 0.26130258, 0.27577711),
    "resample": 3,
    "rescale_factor": 1 / 255,
}
_QWEN3_VIDEO_DEFAULTS = {
    **_QWEN2_VIDEO_DEFAULTS,
    "size": {"shortest_edge": 128 * 32 * 32, "longest_edge": 768 * 32 * 32},
    "patch_size": 16,
    "image_mean": (0.5, 0.5, 0.5),
    "image_std": (0.5, 0.5, 0.5),
}


def _expose_video_processor_base() -> type:
    """transformers' video-processor base class: it needs no torchvision, but transformers exports it only where
    torchvision imports, and the stock processors look it up there."""
    import transformers
    from transformers.video_processing_utils import VideoProcessorMixin

    if not hasattr(transformers, "VideoProcessorMixin"):
        transformers.VideoProcessorMixin = VideoProcessorMixin
    return VideoProcessorMixin


def _qwen_video_settings(config: dict, qwen3: bool) -> dict:
    settings = dict(_QWEN3_VIDEO_DEFAULTS if qwen3 else _QWEN2_VIDEO_DEFAULTS)
    settings.update({key: value for key, value in config.items() if key in settings and value is not None})
    size = dict(settings["size"])
    # Hub configs of the Qwen2-VL generation give the pixel range as min_pixels / max_pixels.
    if config.get("min_pixels") is not None:
        size["shortest_edge"] = config["min_pixels"]
    if config.get("max_pixels") is not None:
        size["longest_edge"] = config["max_pixels"]
    settings["size"] = size
    return settings


def qwen_frame_video_processor(config: dict | None = None, qwen3: bool = False):
    """A PIL video processor for the Qwen-VL families, configured by `config` (the `video_processor` entry of
    `processor_config.json`, `video_preprocessor_config.json`, or the image processor's `preprocessor_config.json`,
    which the Qwen2-VL repositories use for both), the stock class's defaults (Qwen3-VL's with `qwen3`) filling gaps.

    `processor(videos=[frames, ...])`, each video a list of PIL frames or a `[frames, height, width, 3]` array, returns
    `pixel_values_videos` `[sum(t * h * w), 3 * temporal_patch * patch * patch]`, `video_grid_thw` `[videos, 3]` and,
    with `return_metadata=True`, each video's `VideoMetadata` (from `video_metadata` when given).
    """
    import torch
    from PIL import Image
    from transformers.feature_extraction_utils import BatchFeature
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
    from transformers.video_utils import make_batched_metadata

    settings = _qwen_video_settings(config or {}, qwen3)
    patch, temporal, merge = settings["patch_size"], settings["temporal_patch_size"], settings["merge_size"]
    mean = np.asarray(settings["image_mean"], dtype=np.float32)
    std = np.asarray(settings["image_std"], dtype=np.float32)
    resample, rescale = int(settings["resample"]), float(settings["rescale_factor"])
    base = _expose_video_processor_base()

    def frames_of(video) -> list:
        if isinstance(video, np.ndarray) or hasattr(video, "numpy"):
            video = [np.asarray(frame) for frame in np.asarray(video)]
        return [f if isinstance(f, Image.Image) else Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in video]

    class QwenFrameVideoProcessor(base):
        model_input_names = ["pixel_values_videos", "video_grid_thw"]

        def __init__(self):
            super().__init__()
            # Read by the stock Qwen processors (placeholder counts, `second_per_grid_ts`, timestamps).
            self.patch_size, self.temporal_patch_size, self.merge_size = patch, temporal, merge
            self.size = dict(settings["size"])

        def _merge_and_standardize_kwargs(self, **kwargs):
            return {"size": self.size, "patch_size": patch, "merge_size": merge, "temporal_patch_size": temporal}

        def get_num_of_video_patches(self, num_frames: int, height: int, width: int, videos_kwargs=None) -> int:
            resized_height, resized_width = smart_resize(
                height, width, patch * merge, self.size["shortest_edge"], self.size["longest_edge"]
            )
            return -(-num_frames // temporal) * (resized_height // patch) * (resized_width // patch)

        def preprocess(self, videos, return_tensors=None, video_metadata=None, return_metadata=False, **kwargs):
            if isinstance(videos, np.ndarray) and videos.ndim == 4:
                videos = [videos]
            videos = [frames_of(video) for video in videos]
            if videos and not isinstance(videos[0], list):
                videos = [videos]
            if video_metadata is None:
                # What the stock processors assume of frames given without metadata: every frame, rate unknown.
                video_metadata = [
                    {"total_num_frames": len(f), "fps": None, "frames_indices": list(range(len(f))),
                     "height": f[0].height, "width": f[0].width}
                    for f in videos
                ]  # fmt: skip
            metadata = make_batched_metadata(videos, video_metadata=video_metadata)
            patches, grids = [], []
            for frames in videos:
                height, width = smart_resize(
                    frames[0].height,
                    frames[0].width,
                    patch * merge,
                    self.size["shortest_edge"],
                    self.size["longest_edge"],
                )
                pixels = np.stack(
                    [
                        (
                            (
                                np.asarray(f.convert("RGB").resize((width, height), resample), np.float32) * rescale
                                - mean
                            )
                            / std
                        ).transpose(2, 0, 1)
                        for f in frames
                    ]
                )
                if pad := -len(pixels) % temporal:
                    pixels = np.concatenate([pixels, np.repeat(pixels[-1:], pad, axis=0)])
                t, h, w = len(pixels) // temporal, height // patch, width // patch
                # (t, tp, c, h/m, m, p, w/m, m, p) -> (t, h/m, w/m, m, m, c, tp, p, p): the stock patchify order.
                blocks = pixels.reshape(t, temporal, 3, h // merge, merge, patch, w // merge, merge, patch)
                blocks = blocks.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
                patches.append(blocks.reshape(t * h * w, 3 * temporal * patch * patch))
                grids.append([t, h, w])
            data = {"pixel_values_videos": torch.tensor(np.concatenate(patches)), "video_grid_thw": torch.tensor(grids)}
            if return_metadata:
                data["video_metadata"] = metadata
            return BatchFeature(data, tensor_type=return_tensors, skip_tensor_conversion=["video_metadata"])

    return QwenFrameVideoProcessor()


def _read_json(model_id: str, name: str, revision: str | None) -> dict:
    from transformers.utils import cached_file

    path = cached_file(model_id, name, revision=revision, _raise_exceptions_for_missing_entries=False)
    return json.loads(Path(path).read_text()) if path else {}


def load_processor(model_id: str, revision: str | None = None, **kwargs):
    """`AutoProcessor.from_pretrained(model_id)`, or, for a Qwen-VL checkpoint whose stock video processor needs
    torchvision where it does not import, the family's stock processor with `qwen_frame_video_processor`."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, PretrainedConfig

    from .families import family_for_config

    hub = {"revision": revision} if revision else {}
    try:
        return AutoProcessor.from_pretrained(model_id, **hub, **kwargs)
    except ImportError as error:
        family = family_for_config(PretrainedConfig.get_config_dict(model_id, **hub)[0], str(model_id))
        if not family.stock_model_type.startswith("qwen") or "orchvision" not in str(error):
            raise
    settings = _read_json(model_id, "processor_config.json", revision)
    video = (
        settings.get("video_processor")
        or _read_json(model_id, "video_preprocessor_config.json", revision)
        or _read_json(model_id, "preprocessor_config.json", revision)
    )
    tokenizer = AutoTokenizer.from_pretrained(model_id, **hub)
    template = _read_json(model_id, "chat_template.json", revision).get("chat_template")
    if template is None:
        from transformers.utils import cached_file

        path = cached_file(
            model_id, "chat_template.jinja", revision=revision, _raise_exceptions_for_missing_entries=False
        )
        template = Path(path).read_text() if path else getattr(tokenizer, "chat_template", None)
    return family.processor_class(
        image_processor=AutoImageProcessor.from_pretrained(model_id, **hub),
        tokenizer=tokenizer,
        video_processor=qwen_frame_video_processor(video, qwen3=family.stock_model_type == "qwen3_vl"),
        chat_template=template,
    )


__all__ = ["load_processor", "qwen_frame_video_processor"]
