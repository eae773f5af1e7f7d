"""Videos as animated GIF, PNG and WebP files: every frame's declared size, the animation's size and the number of
frames are checked against the limits before any frame is decoded, and frames that do not fit their animation get a
message that says so (a 16x16 first frame followed by a 12000x12000 one made the Space decode 144 megapixels)."""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np
import pytest
from animation_files import (
    animated,
    noise_frames,
    set_canvas,
    set_declared_frames,
    set_frame_box,
)
from PIL import Image, ImageFile

from spaces_app import frame_headers, inputs, limits, video_inputs

KINDS = ["gif", "png", "webp"]


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


@pytest.fixture
def decoded(monkeypatch) -> list:
    """Every frame PIL decodes during the test (each call of its pixel loader), recorded."""
    calls = []
    stock_load = ImageFile.ImageFile.load

    def load(image):
        calls.append(image.size)
        return stock_load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return calls


@pytest.mark.parametrize("kind", KINDS)
def test_every_frame_box_is_read_from_the_headers_as_written(kind):
    boxes = [(0, 0, 32, 24), (4, 2, 10, 6), (16, 8, 16, 16)]
    data = animated(kind, noise_frames(3, 32, 24))
    for index, box in enumerate(boxes):
        data = set_frame_box(data, kind, index, *box)
    headers = frame_headers.read_frame_headers(data)
    assert headers.canvas == (32, 24)
    assert headers.boxes == tuple(boxes) and headers.count == 3


def test_a_still_picture_has_no_frame_headers_to_check_beyond_its_size():
    still = animated("png", noise_frames(1, 20, 10))
    headers = frame_headers.read_frame_headers(still)
    assert headers.canvas == (20, 10) and headers.boxes == ((0, 0, 20, 10),) and headers.count == 1
    assert frame_headers.read_frame_headers(b"\xff\xd8\xff\xe0 a JPEG") is None


@pytest.mark.parametrize("kind", KINDS)
def test_a_later_frame_larger_than_the_first_is_refused_before_any_frame_is_decoded(kind, tmp_path, decoded):
    bomb = set_frame_box(animated(kind, noise_frames(2)), kind, 1, 0, 0, 12000, 12000)
    path = write(tmp_path, f"bomb.{kind}", bomb)
    with pytest.raises(inputs.InputError) as refusal:
        video_inputs.check_video(path, allowed_dirs=[tmp_path.resolve()])
    assert str(refusal.value).startswith(
        "That video's frames do not fit together: frame 2 is 12000x12000 pixels at (0, 0), outside the 16x16 "
        "animation it belongs to."
    )
    assert decoded == []


@pytest.mark.parametrize("kind", KINDS)
def test_a_frame_placed_outside_the_animation_is_refused(kind, tmp_path, decoded):
    shifted = set_frame_box(animated(kind, noise_frames(3)), kind, 2, 40000, 0, 16, 16)
    with pytest.raises(inputs.InputError, match=r"frame 3 is 16x16 pixels at \(40000, 0\), outside the 16x16"):
        video_inputs.check_video(write(tmp_path, f"shifted.{kind}", shifted), allowed_dirs=[tmp_path.resolve()])
    assert decoded == []


@pytest.mark.parametrize("kind", KINDS)
def test_an_animation_over_the_size_limits_is_refused_from_its_header(kind, tmp_path, decoded):
    wide = set_canvas(animated(kind, noise_frames(2)), kind, limits.MAX_IMAGE_SIDE + 1, 16)
    with pytest.raises(inputs.InputError, match=f"That video is {limits.MAX_IMAGE_SIDE + 1}x16 pixels a frame"):
        video_inputs.check_video(write(tmp_path, f"wide.{kind}", wide), allowed_dirs=[tmp_path.resolve()])
    assert decoded == []


def test_a_declared_frame_count_over_the_limit_is_refused_before_decoding(tmp_path, decoded):
    announced = set_declared_frames(animated("png", noise_frames(2)), limits.MAX_VIDEO_FILE_FRAMES + 1)
    with pytest.raises(inputs.InputError, match=f"That video has {limits.MAX_VIDEO_FILE_FRAMES + 1} frames"):
        video_inputs.check_video(write(tmp_path, "long.png", announced), allowed_dirs=[tmp_path.resolve()])
    assert decoded == []


@pytest.mark.parametrize("kind", KINDS)
def test_many_small_frames_over_the_pixel_budget_are_refused_before_decoding(kind, tmp_path, decoded, monkeypatch):
    monkeypatch.setattr(limits, "MAX_VIDEO_PIXELS", 5 * 16 * 16)
    path = write(tmp_path, f"many.{kind}", animated(kind, noise_frames(6)))
    with pytest.raises(inputs.InputError, match="That video has 6 frames of 16x16"):
        video_inputs.check_video(path, allowed_dirs=[tmp_path.resolve()])
    assert decoded == []


@pytest.mark.parametrize("kind", KINDS)
def test_a_well_formed_animation_gives_its_sampled_frames_as_pil_decodes_them(kind, tmp_path):
    frames = noise_frames(12, 20, 12, seed=3)
    path = write(tmp_path, f"clip.{kind}", animated(kind, frames))
    got = video_inputs.check_video(path, allowed_dirs=[tmp_path.resolve()])
    wanted = video_inputs.sampled_frame_indices(12)
    assert len(got) == len(wanted) == limits.VIDEO_FRAMES
    with Image.open(path) as clip:
        for frame, index in zip(got, wanted):
            clip.seek(index)
            assert frame.size == (20, 12) and frame.mode == "RGB"
            assert np.array_equal(np.asarray(frame), np.asarray(clip.convert("RGB")))


def test_a_frame_that_decodes_larger_than_its_headers_say_is_refused(tmp_path, monkeypatch, decoded):
    """The size PIL will decode a frame at is checked against the headers' canvas before the frame is decoded: here
    the headers are made to understate it."""
    path = write(tmp_path, "clip.gif", animated("gif", noise_frames(3, 40, 30)))
    real = frame_headers.read_frame_headers(Path(path).read_bytes())
    understated = frame_headers.FrameHeaders("GIF", (20, 15), ((0, 0, 20, 15),) * 3, 3)
    monkeypatch.setattr(video_inputs, "read_frame_headers", lambda data: understated)
    with pytest.raises(inputs.InputError, match=r"frame 1 is 40x30 pixels at \(0, 0\), outside the 20x15 animation"):
        video_inputs.check_video(path, allowed_dirs=[tmp_path.resolve()])
    assert real.canvas == (40, 30) and decoded == []


@pytest.mark.parametrize("kind", KINDS)
def test_a_file_cut_short_in_its_headers_is_unreadable(kind, tmp_path):
    data = animated(kind, noise_frames(2))
    cut = data[: {"gif": 12, "png": 20, "webp": 34}[kind]]
    with pytest.raises(inputs.InputError) as refusal:
        video_inputs.check_video(write(tmp_path, f"cut.{kind}", cut), allowed_dirs=[tmp_path.resolve()])
    assert str(refusal.value) == video_inputs.UNREADABLE_VIDEO
