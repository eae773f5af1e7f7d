"""Animated GIF, PNG (APNG) and WebP files for the Space's video tests: written by PIL, then with chosen header fields
rewritten in place (a frame's box, the canvas, the declared frame count) to make the files a hostile visitor would
send. The rewriting walks each format's structure here, on its own, without the Space's reader."""

import io
import struct
import zlib

import numpy as np
from PIL import Image

FORMATS = {"gif": "GIF", "png": "PNG", "webp": "WEBP"}


def noise_frames(count: int, width: int = 16, height: int = 16, seed: int = 0) -> list[Image.Image]:
    """Frames of noise: every pixel changes between frames, so no writer crops a frame to what changed."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(count)]


def animated(kind: str, frames: list[Image.Image]) -> bytes:
    """`frames` as one animated file of `kind` ("gif", "png" or "webp")."""
    buffer = io.BytesIO()
    extra = {"gif": {"optimize": False, "disposal": 1}, "webp": {"lossless": True}, "png": {}}[kind]
    frames[0].save(buffer, format=FORMATS[kind], save_all=True, append_images=frames[1:], duration=100, **extra)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------- GIF
def _gif_table(packed: int) -> int:
    return 3 * 2 ** ((packed & 7) + 1) if packed & 0x80 else 0


def _gif_sub_blocks_end(data, offset: int) -> int:
    while data[offset]:
        offset += data[offset] + 1
    return offset + 1


def _gif_descriptors(data) -> list[int]:
    """Offsets of each image descriptor (the byte 0x2C) of a GIF."""
    offset, found = 13 + _gif_table(data[10]), []
    while data[offset] != 0x3B:
        if data[offset] == 0x21:
            offset = _gif_sub_blocks_end(data, offset + 2)
        elif data[offset] == 0x2C:
            found.append(offset)
            offset = _gif_sub_blocks_end(data, offset + 10 + _gif_table(data[offset + 9]) + 1)
        else:
            raise ValueError(f"unexpected GIF block {data[offset]:#x}")
    return found


# ---------------------------------------------------------------------------------------------------- PNG
def _png_chunks(data) -> list[tuple[int, bytes, int]]:
    """(offset, type, length) of each chunk of a PNG."""
    offset, chunks = 8, []
    while offset < len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        chunks.append((offset, bytes(data[offset + 4 : offset + 8]), length))
        offset += 12 + length
    return chunks


def _png_rewrite(data: bytearray, offset: int, length: int, at: int, fields: bytes) -> None:
    """Write `fields` at `at` bytes into the chunk at `offset`, and its CRC again."""
    data[offset + 8 + at : offset + 8 + at + len(fields)] = fields
    crc = zlib.crc32(bytes(data[offset + 4 : offset + 8 + length]))
    data[offset + 8 + length : offset + 12 + length] = struct.pack(">I", crc)


# ---------------------------------------------------------------------------------------------------- WebP
def _webp_chunks(data) -> list[tuple[int, bytes, int]]:
    offset, chunks = 12, []
    while offset < len(data):
        kind, length = struct.unpack_from("<4sI", data, offset)
        chunks.append((offset, kind, length))
        offset += 8 + length + (length & 1)
    return chunks


def _uint24(value: int) -> bytes:
    return value.to_bytes(3, "little")


# ---------------------------------------------------------------------------------------------------- edits
def set_frame_box(data: bytes, kind: str, frame: int, x: int, y: int, width: int, height: int) -> bytes:
    """`data` with frame `frame` (0-based) declared as `width` x `height` at (`x`, `y`)."""
    data = bytearray(data)
    if kind == "gif":
        offset = _gif_descriptors(data)[frame]
        data[offset + 1 : offset + 9] = struct.pack("<HHHH", x, y, width, height)
    elif kind == "png":
        offset, _, length = [c for c in _png_chunks(data) if c[1] == b"fcTL"][frame]
        _png_rewrite(data, offset, length, 4, struct.pack(">IIII", width, height, x, y))
    else:
        offset, _, _ = [c for c in _webp_chunks(data) if c[1] == b"ANMF"][frame]
        body = offset + 8
        data[body : body + 12] = _uint24(x // 2) + _uint24(y // 2) + _uint24(width - 1) + _uint24(height - 1)
    return bytes(data)


def set_canvas(data: bytes, kind: str, width: int, height: int) -> bytes:
    """`data` with the whole animation declared as `width` x `height`."""
    data = bytearray(data)
    if kind == "gif":
        data[6:10] = struct.pack("<HH", width, height)
    elif kind == "png":
        offset, _, length = next(c for c in _png_chunks(data) if c[1] == b"IHDR")
        _png_rewrite(data, offset, length, 0, struct.pack(">II", width, height))
    else:
        offset, _, _ = next(c for c in _webp_chunks(data) if c[1] == b"VP8X")
        data[offset + 12 : offset + 18] = _uint24(width - 1) + _uint24(height - 1)
    return bytes(data)


def set_declared_frames(data: bytes, count: int) -> bytes:
    """An APNG with `count` frames announced in its `acTL` header (the frames themselves unchanged)."""
    data = bytearray(data)
    offset, _, length = next(c for c in _png_chunks(data) if c[1] == b"acTL")
    _png_rewrite(data, offset, length, 0, struct.pack(">I", count))
    return bytes(data)
