"""Videos as the Space reads them: an animated GIF, WebP or PNG (PIL decodes these; no video decoder installs beside
the pinned CPU torch), confined like an image, every frame's size checked from the file's headers before any frame is
decoded, then at most `$VIDEO_FRAMES` frames, spread evenly, decoded."""

import io
from pathlib import Path

import numpy as np
from PIL import Image

from . import limits
from .frame_headers import FrameHeaders, MalformedHeaders, read_frame_headers
from .inputs import UNREADABLE_IMAGE, InputError, MissingImage, check_image, locate_image

VIDEO_FILE_TYPES = [".gif", ".webp", ".png"]
UNREADABLE_VIDEO = (
    "That file could not be read as a video. Upload an animated GIF, WebP or PNG (and upload it again if it was a "
    "while ago: uploads expire)."
)
MISSING_VIDEO = "Upload a video (an animated GIF, WebP or PNG) first."


class MissingVideo(MissingImage):
    """No video was given."""


def sampled_frame_indices(count: int, wanted: int | None = None) -> list[int]:
    """`wanted` (default `$VIDEO_FRAMES`) frame indices spread evenly over `count` frames, first and last included."""
    wanted = min(count, wanted or limits.VIDEO_FRAMES)
    return sorted({round(i) for i in np.linspace(0, count - 1, wanted)})


def check_video(video, allowed_dirs=None) -> list[Image.Image]:
    """The frames (RGB PIL images, at most `$VIDEO_FRAMES`, spread evenly) of a video input, or an `InputError`.

    `video` is an animated GIF / WebP / PNG given as for `locate_image` (a path confined to `allowed_dirs`, Gradio's
    file payload, a data: URL), or, in code, a list of frames or a `[T, H, W, 3]` array. Every refused or unreadable
    file gets the one `UNREADABLE_VIDEO`. The size of the animation and of each of its frames, and the number of
    frames, are read from the file's headers and bounded before any frame is decoded (`check_frame_headers`).
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
        # At most an upload's worth ($MAX_UPLOAD_MB) or a request body's (a data: URL): read whole, headers walked.
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        headers = read_frame_headers(data)
    except (OSError, MalformedHeaders) as exc:
        raise InputError(UNREADABLE_VIDEO) from exc
    if headers is not None:
        check_frame_headers(headers)
    try:
        clip = Image.open(io.BytesIO(data))  # the first frame's header only
        count = int(getattr(clip, "n_frames", 1))
    except Image.DecompressionBombError as exc:
        raise InputError(_too_large(None, None)) from exc
    except Exception as exc:  # not a picture, or headers PIL will not take: all the same to the caller
        raise InputError(UNREADABLE_VIDEO) from exc
    canvas = headers.canvas if headers is not None else clip.size
    check_frame_size(*clip.size)
    check_frame_count(count, *canvas)
    frames = []
    try:
        for index in sampled_frame_indices(count):
            clip.seek(index)  # reads this frame's header (and decodes the frames before it: checked already)
            if clip.size != canvas:
                raise InputError(_inconsistent(index, (0, 0, *clip.size), canvas))
            frames.append(clip.convert("RGB"))
    except InputError:
        raise
    except Exception as exc:  # truncated or corrupt frames
        raise InputError(UNREADABLE_VIDEO) from exc
    return frames


def check_frame_headers(headers: FrameHeaders) -> None:
    """Refuse an animation whose canvas or any frame is over the limits, or whose frames do not lie within its canvas
    (a decoder would grow the picture to fit them), or that holds too many frames."""
    width, height = headers.canvas
    check_frame_size(width, height)
    for index, (x, y, frame_w, frame_h) in enumerate(headers.boxes):
        if frame_w < 1 or frame_h < 1 or x + frame_w > width or y + frame_h > height:
            raise InputError(_inconsistent(index, (x, y, frame_w, frame_h), headers.canvas))
    check_frame_count(headers.count, width, height)


def check_frame_size(width: int, height: int) -> None:
    pixels, side = width * height, max(width, height)
    if width < 1 or height < 1 or pixels > limits.MAX_IMAGE_PIXELS or side > limits.MAX_IMAGE_SIDE:
        raise InputError(_too_large(width, height))


def check_frame_count(count: int, width: int, height: int) -> None:
    if count > limits.MAX_VIDEO_FILE_FRAMES or width * height * count > limits.MAX_VIDEO_PIXELS:
        raise InputError(
            f"That video has {count} frames of {width}x{height}; this Space reads at most "
            f"{limits.MAX_VIDEO_FILE_FRAMES} frames and {limits.MAX_VIDEO_PIXELS / 1e6:.0f} megapixels in all (it "
            f"samples {limits.VIDEO_FRAMES} frames anyway). Shorten or downscale it first."
        )


def _too_large(width: int | None, height: int | None) -> str:
    size = f" is {width}x{height} pixels a frame;" if width is not None else "'s frames are too large:"
    return (
        f"That video{size} this Space accepts up to {limits.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels and "
        f"{limits.MAX_IMAGE_SIDE} px a side. Downscale it first."
    )


def _inconsistent(index: int, box: tuple[int, int, int, int], canvas: tuple[int, int]) -> str:
    x, y, width, height = box
    return (
        f"That video's frames do not fit together: frame {index + 1} is {width}x{height} pixels at ({x}, {y}), "
        f"outside the {canvas[0]}x{canvas[1]} animation it belongs to. Export the video again so that every frame "
        "lies within the animation's size."
    )
