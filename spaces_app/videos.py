"""The video part of the page as plain functions, for the families that take videos (LLaVA-OneVision,
LLaVA-NeXT-Video): `preview_video` (the frames as a strip, each with its pooled tokens kept / dropped, and the counts)
and `answer_video` (the same, then the answers with and without pruning)."""

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .counts import counts_by_mask, flops_estimate, format_video_counts
from .encoding import encode_visual, score_visual
from .gpu import on_model_device
from .images import image_placeholder
from .inputs import NOT_TAKEN, STRATEGY_LABELS, InputError, Inputs, validate_inputs
from .model import Backend, Generations, generate_both, text_token_count
from .render import base_region, frame_grids, render_strip
from .video_inputs import check_video


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
        backend, video_inputs(backend, video, question, mode, threshold, keep_ratio, allowed_dirs, strategy)
    )


def video_inputs(
    backend,
    video,
    question,
    mode,
    threshold,
    keep_ratio,
    allowed_dirs,
    strategy,
    max_new_tokens=NOT_TAKEN,
    required=False,
) -> Inputs:
    """`validate_inputs` for a video request to this backend: the video read by `check_video`, the placeholders of
    both kinds kept out of the question, the strategies it serves for videos."""
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
        image_token=image_placeholder(backend),
        reserved_tokens=(getattr(backend.processor, "video_token", None) or "<video>",),
        allowed_dirs=allowed_dirs,
        modality="video",
        check_media=check_video,
        strategy=strategy,
        strategies=backend.strategies("video"),
    )


def show_video_selection(backend: Backend, inputs: Inputs) -> VideoPreview:
    frames = inputs.image
    encoded = encode_visual(backend, "video", frames)
    selection = score_visual(backend, encoded, inputs.overrides)
    keep = selection.keep_masks()[0].cpu().numpy()
    crop_ids, newline = encoded.crop_ids.numpy(), encoded.newline.numpy()
    grids = frame_grids(crop_ids, newline)
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
    regions = [base_region(frame.size, backend.processor.video_processor) for frame in frames]
    labels = [f"frame {i + 1}: {c['kept']}/{c['total']} kept" for i, c in enumerate(per_frame)]
    strip, layout = render_strip(frames, [keep[g] for g in grids], labels, regions)
    markdown = format_video_counts(counts, flops, grids[0].shape)
    lead = f"**Strategy:** {STRATEGY_LABELS.get(inputs.strategy, inputs.strategy)}."
    markdown = f"{lead}\n\n{markdown}"
    return VideoPreview(strip, counts, flops, markdown, selection, layout, grids)


@dataclass
class VideoAnswer:
    generations: Generations
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
    inputs = video_inputs(
        backend, video, question, mode, threshold, keep_ratio, allowed_dirs, strategy, max_new_tokens, required=True
    )
    shown = show_video_selection(backend, inputs)
    generations = on_model_device(
        backend, generate_both, inputs.image, inputs.question, inputs.overrides, inputs.max_new_tokens, "video"
    )
    return VideoAnswer(generations=generations, preview=shown)
