"""Every bound the Space puts on what a visitor may send and on what it keeps, and the variable that changes each.

Read from the environment (on a Space: *Settings → Variables*). A bad value stops the Space at start and names the
variable. The input limits are read once, at import; the server limits when the server is set up. The Space's README
lists them all under *Limits*.
"""

import math
import os

MIB = 2**20


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


# ---------------------------------------------------------------------------------------------------- inputs
MAX_IMAGE_PIXELS = int(env_number("MAX_IMAGE_PIXELS", 40_000_000, 1))
MAX_IMAGE_SIDE = int(env_number("MAX_IMAGE_SIDE", 12_000, 1))
MAX_QUESTION_CHARS = 1_000
MAX_NEW_TOKENS = 128
THRESHOLD_RANGE = (-1.0, 1.0)
# Videos: frames taken from a file (spread evenly); frames and pixels a file may hold, read from its frame headers
# before any frame is decoded (each frame also obeys the image limits).
VIDEO_FRAMES = int(env_number("VIDEO_FRAMES", 8, 1))
MAX_VIDEO_FILE_FRAMES = int(env_number("MAX_VIDEO_FILE_FRAMES", 1_000, 1))
MAX_VIDEO_PIXELS = int(env_number("MAX_VIDEO_PIXELS", 200_000_000, 1))

# ---------------------------------------------------------------------------------------------------- server
# Requests waiting in the queue; past it a request is refused at once (Gradio's "queue is full").
QUEUE_SIZE = 32
# Multipart framing around one uploaded file: boundaries and part headers.
MULTIPART_SLACK = 64 * 1024
# An upload is let in only while the Space's files, with it, fit this share of $FILE_CACHE_MB; the rest stays for the
# overlays and frame strips the page draws, so that a flood of uploads cannot stop the Space showing what it computes.
UPLOAD_SHARE = 0.75


def feature_cache_bytes() -> int:
    """The feature cache's bound, `$FEATURE_CACHE_MB` mebibytes (default 256; 0 turns the cache off)."""
    return int(env_number("FEATURE_CACHE_MB", 256, 0) * MIB)


def max_upload_bytes() -> int:
    """The largest image file Gradio accepts on upload, `$MAX_UPLOAD_MB` mebibytes (default 25)."""
    return int(env_number("MAX_UPLOAD_MB", 25, 0.01) * MIB)


def max_request_bytes() -> int:
    """The largest request body other than an upload, `$MAX_REQUEST_KB` kibibytes (default 256): an API call is a
    few inputs of JSON (a question of 1,000 characters is at most 12 KB escaped), or a small image as a data: URL."""
    return int(env_number("MAX_REQUEST_KB", 256, 1) * 1024)


def file_cache_bytes() -> int:
    """The disk the Space may fill, `$FILE_CACHE_MB` mebibytes (default 1024): uploads, overlays and frame strips,
    counted as the blocks they take on disk. `UPLOAD_SHARE` of it, where uploads are let in, must hold at least two of
    the largest."""
    bound = int(env_number("FILE_CACHE_MB", 1024, 1) * MIB)
    upload = max_upload_bytes() + MULTIPART_SLACK
    if UPLOAD_SHARE * bound < 2 * upload:
        raise ValueError(
            f"$FILE_CACHE_MB ({bound / MIB:g}) must leave room for two of the largest uploads ($MAX_UPLOAD_MB = "
            f"{max_upload_bytes() / MIB:g}) in the {UPLOAD_SHARE:.0%} of it that uploads may fill: raise it to "
            f"{2 * upload / UPLOAD_SHARE / MIB:.1f} or more, or lower $MAX_UPLOAD_MB."
        )
    return bound


def file_cache_schedule() -> tuple[float, float]:
    """`(sweep, age)`: every `$CACHE_SWEEP_SECONDS` (default 60) the files of the cache older than
    `$CACHE_MAX_AGE_SECONDS` (default 600) are deleted, whatever room is left."""
    return env_number("CACHE_SWEEP_SECONDS", 60, 0.1), env_number("CACHE_MAX_AGE_SECONDS", 600, 1)


def max_sessions() -> int:
    """Sessions whose state the server keeps, `$MAX_SESSIONS` (default 500; the oldest is dropped first). Gradio
    keeps about 120 KB per session for this page (a copy of each component's settings), whether a browser or a single
    API call opened it."""
    return int(env_number("MAX_SESSIONS", 500, 1))
