"""The size of every frame of an animated GIF, PNG (APNG) or WebP, read from the file's own headers: no pixel is
decoded, so a video's frames can be checked against the limits before any of them is.

A decoder sizes a frame from these headers. PIL, asked for a GIF frame that is larger than the animation's canvas
(its "logical screen"), grows the picture to the frame, so a 16x16 first frame can be followed by a 12000x12000 one:
`check_video` refuses any frame that does not lie within the canvas.
"""

import struct
from dataclasses import dataclass


@dataclass(frozen=True)
class FrameHeaders:
    """What a file declares: `canvas` (width, height) of the whole animation, each frame's `boxes` (x, y, width,
    height) in it, and `declared_count`, the number of frames a header announces (APNG's `acTL`; the number of boxes
    for GIF and WebP)."""

    format: str
    canvas: tuple[int, int]
    boxes: tuple[tuple[int, int, int, int], ...]
    declared_count: int

    @property
    def count(self) -> int:
        return max(self.declared_count, len(self.boxes))


class MalformedHeaders(ValueError):
    """The headers end early or contradict themselves."""


def read_frame_headers(data: bytes) -> FrameHeaders | None:
    """The frame headers of `data` when it is a GIF, PNG or WebP file (animated or not), else `None`."""
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return _gif(data)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return _png(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp(data)
    return None


def _unpack(fmt: str, data: bytes, offset: int) -> tuple:
    try:
        return struct.unpack_from(fmt, data, offset)
    except struct.error:
        raise MalformedHeaders("the file ends inside a header") from None


def _skip_sub_blocks(data: bytes, offset: int) -> int:
    """Past a GIF data stream: sub-blocks of a length byte and that many bytes, ended by a zero length."""
    while offset < len(data) and data[offset]:
        offset += data[offset] + 1
    return offset + 1


def _colour_table_size(packed: int) -> int:
    return 3 * 2 ** ((packed & 7) + 1) if packed & 0x80 else 0


def _gif(data: bytes) -> FrameHeaders:
    width, height, packed = _unpack("<HHB", data, 6)
    offset = 13 + _colour_table_size(packed)
    boxes = []
    # The block walk of a GIF reader: an extension (0x21) or an image (0x2C) until the trailer (0x3B); any other byte
    # is skipped, as PIL skips it, so that both see the same frames.
    while offset < len(data) and data[offset] != 0x3B:
        introducer = data[offset]
        if introducer == 0x21:
            offset = _skip_sub_blocks(data, offset + 2)
        elif introducer == 0x2C:
            boxes.append(_unpack("<HHHH", data, offset + 1))
            (local,) = _unpack("<B", data, offset + 9)
            offset = _skip_sub_blocks(data, offset + 10 + _colour_table_size(local) + 1)
        else:
            offset += 1
    return FrameHeaders("GIF", (width, height), tuple(boxes), len(boxes))


def _png(data: bytes) -> FrameHeaders:
    offset, canvas, declared, boxes = 8, None, 1, []
    while offset + 8 <= len(data):
        length, kind = _unpack(">I4s", data, offset)
        body = offset + 8
        if kind == b"IHDR":
            canvas = _unpack(">II", data, body)
        elif kind == b"acTL":
            declared = _unpack(">I", data, body)[0]
        elif kind == b"fcTL":
            width, height, x, y = _unpack(">IIII", data, body + 4)
            boxes.append((x, y, width, height))
        elif kind == b"IEND":
            break
        offset = body + length + 4  # data and CRC
    if canvas is None:
        raise MalformedHeaders("a PNG without its IHDR header")
    return FrameHeaders("PNG", canvas, tuple(boxes) or ((0, 0, *canvas),), declared)


def _uint24(data: bytes, offset: int) -> int:
    if offset + 3 > len(data):
        raise MalformedHeaders("the file ends inside a header")
    return int.from_bytes(data[offset : offset + 3], "little")


def _webp(data: bytes) -> FrameHeaders | None:
    offset, canvas, boxes = 12, None, []
    while offset + 8 <= len(data):
        kind, length = _unpack("<4sI", data, offset)
        body = offset + 8
        if kind == b"VP8X":
            canvas = (_uint24(data, body + 4) + 1, _uint24(data, body + 7) + 1)
        elif kind == b"ANMF":
            x, y = 2 * _uint24(data, body), 2 * _uint24(data, body + 3)
            boxes.append((x, y, _uint24(data, body + 6) + 1, _uint24(data, body + 9) + 1))
        offset = body + length + (length & 1)  # chunks are padded to an even length
    if canvas is None:  # a still WebP: its one size is the one PIL reads
        return None
    return FrameHeaders("WEBP", canvas, tuple(boxes) or ((0, 0, *canvas),), max(len(boxes), 1))
