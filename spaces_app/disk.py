"""The disk bound: every file the Space writes (uploads, overlays, frame strips) lives in its file cache, Gradio's
upload folder, and `FileCache` keeps what is there under `$FILE_CACHE_MB`, counted in the blocks the files take.

Gradio's own clean-up (`Blocks(delete_cache=...)`) is not used: its sweep iterates a set that concurrent uploads
grow, dies with "Set changed size during iteration" and never runs again, and it bounds age, never bytes. Instead:

- an upload is let in (`UploadAdmission`) only once there is room for its declared size within the share of the
  bound uploads may fill (`limits.UPLOAD_SHARE`), the oldest files deleted first to make it (none younger than
  `MIN_AGE_SECONDS`: with no room, a new upload gets 503); an overlay is written (`OverlayFiles`) likewise, within
  the whole bound;
- a sweeper thread deletes the files older than `$CACHE_MAX_AGE_SECONDS` and the folders left empty, and measures
  the folder again, every `$CACHE_SWEEP_SECONDS`; an error in one sweep is logged and the next one runs;
- at start the leftovers of earlier runs are deleted, at exit everything the Space wrote.

Only what Gradio and the Space write there is counted and deleted: Gradio's hash-named folders, its temporary upload
files, and the overlay folder (the server's lock file is counted and kept). The example pictures Gradio keeps for good
stay, and so does anything else.
"""

import asyncio
import hashlib
import io
import logging
import os
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse

from . import limits
from .inputs import InputError

try:
    import fcntl
except ImportError:  # Windows has none: no lock there, and one server per folder is the user's business
    fcntl = None

logger = logging.getLogger("llava_codebook.space")

OVERLAY_FOLDER = "llava-codebook-overlays"
LOCK_FILE = ".llava-codebook-space.lock"
_GRADIO_FOLDER = re.compile(r"^[0-9a-f]{16,}$")  # `<cache>/<hash of the content>/<file name>`
_UPLOAD_TEMP = re.compile(r"^tmp[a-z0-9_]{6,}$")  # an upload being received, renamed into its folder once complete
# A folder Gradio has just made, or a temporary file it is still writing, is left alone this long: the file it is
# about to move in (or finish) is covered by its upload's admission.
GRACE_SECONDS = 5.0
# A file is kept at least this long (unless $CACHE_MAX_AGE_SECONDS is shorter): an upload that was accepted is there
# when the request that names it comes, a moment later. Room is made from older files only; when there are none,
# a new upload is refused (503, "try again") rather than deleting one that was just accepted.
MIN_AGE_SECONDS = 10.0
# Making room deletes down to this share of the bound, so that not every request has to sweep.
LOW_WATER = 0.8
# What a file costs beyond its bytes, at most: the rest of its last block and the folder Gradio makes for it.
FILE_OVERHEAD = 2 * 4096


class CacheFull(InputError):
    """No room can be made: recent files and uploads in progress hold the bound (a message for the visitor)."""


@dataclass(frozen=True)
class Entry:
    path: Path
    nbytes: int  # blocks taken on disk
    mtime: float
    kind: str  # "file", "upload" (a temporary upload file), "folder" or "lock" (this server's, never deleted)


def _disk_bytes(stat: os.stat_result) -> int:
    blocks = getattr(stat, "st_blocks", None)
    return blocks * 512 if blocks is not None else stat.st_size


class FileCache:
    """The Space's file cache in `root` (Gradio's upload folder), bounded by `max_bytes` (`$FILE_CACHE_MB`), with
    files older than `max_age` seconds deleted every `sweep_seconds` (`$CACHE_MAX_AGE_SECONDS`,
    `$CACHE_SWEEP_SECONDS`).

    `estimate` is the bytes on disk as last measured plus what was written since; `reserved` the bytes admitted for
    writes in progress. Their sum never exceeds `max_bytes`: a write that does not fit waits for room to be made from
    files older than `min_age`, and is refused (`CacheFull`) when none can be.
    """

    def __init__(self, root, max_bytes: int | None = None, sweep_seconds=None, max_age=None, blocks=None):
        sweep, age = limits.file_cache_schedule()
        self.root = Path(root).resolve()  # so that the paths scanned are the real ones, as `_kept_paths` are
        self.max_bytes = limits.file_cache_bytes() if max_bytes is None else int(max_bytes)
        self.sweep_seconds = float(sweep_seconds or sweep)
        self.max_age = float(max_age or age)
        self.blocks = blocks  # the Gradio app: the example files it keeps, and the sets of files it tracks
        self.min_age = min(MIN_AGE_SECONDS, self.max_age)
        self.estimate = 0
        self.reserved = 0
        self.sweeps = 0  # sweeps completed by the sweeper thread
        self.last_error: str | None = None
        self._lock = threading.Lock()  # one sweep at a time, and the admissions that may need one
        self._counts = threading.Lock()  # `estimate`, `reserved`: held an instant, never while the folder is walked
        self._written = 0  # bytes released since the start, so that a sweep counts the writes made while it walked
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock_file = None

    @property
    def overlay_dir(self) -> Path:
        return self.root / OVERLAY_FOLDER

    @property
    def alive(self) -> bool:
        """Whether the sweeper thread runs."""
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------------------------------------ life
    def claim(self) -> None:
        """Hold the folder for this server (a lock file in it): a second server on the same folder would delete
        this one's files."""
        if self._lock_file is not None or fcntl is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        handle = open(self.root / LOCK_FILE, "a+")  # noqa: SIM115 - held open for the server's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise RuntimeError(
                f"Another server is using {self.root} as its file cache (a second copy of this Space?), and each "
                "deletes what it finds there. Give this one a folder of its own: GRADIO_TEMP_DIR=/path/to/a/new/folder."
            ) from None
        self._lock_file = handle

    def start(self) -> None:
        """Claim the folder, delete the leftovers of earlier runs, and start the sweeper."""
        self.claim()
        self.clear()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="file-cache-sweeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the sweeper, delete everything the Space wrote, and let the folder go (again: a no-op)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.clear()
        handle, self._lock_file = self._lock_file, None
        if handle is not None:
            handle.close()  # releases the lock; the file stays, so that no two servers hold two files

    def _run(self) -> None:
        while not self._stop.wait(self.sweep_seconds):
            try:
                self.sweep()
                self.sweeps += 1
            except Exception as exc:  # one failed sweep must not end the next ones
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.exception("A sweep of the file cache failed; the next one runs in %g s", self.sweep_seconds)

    # ------------------------------------------------------------------------------------------------ room
    def reserve(self, nbytes: int, share: float = 1.0) -> None:
        """Admit a write of at most `nbytes` while all the files and admitted writes fit `share` of the bound,
        deleting the oldest files first when they would not; `CacheFull` when they cannot fit even then. Pair with
        `release`."""
        ceiling = int(self.max_bytes * share)
        with self._lock:
            if self._fits(nbytes, ceiling):
                return
            self._sweep_locked(target=int(ceiling * LOW_WATER) - self.reserved - nbytes)
            if not self._fits(nbytes, ceiling):
                raise CacheFull(
                    f"The Space's file cache is full of recent uploads ({self.estimate + self.reserved:,} of "
                    f"{self.max_bytes:,} bytes); try again in a minute."
                )

    def _fits(self, nbytes: int, ceiling: int) -> bool:
        """Reserve `nbytes` if they fit under `ceiling` beside the files and the other writes in progress."""
        with self._counts:
            if self.estimate + self.reserved + nbytes > ceiling:
                return False
            self.reserved += nbytes
            return True

    def release(self, nbytes: int) -> None:
        """The write admitted by `reserve(nbytes)` is done: its bytes count as on disk until the next sweep."""
        with self._counts:
            self.reserved -= nbytes
            self.estimate += nbytes
            self._written += nbytes

    @contextmanager
    def room_for(self, nbytes: int):
        self.reserve(nbytes)
        try:
            yield
        finally:
            self.release(nbytes)

    # ------------------------------------------------------------------------------------------------ sweeps
    def sweep(self) -> int:
        """Delete what is older than `max_age` (and more if the folder is over its bound), remove the folders left
        empty, measure again; return how many entries were deleted."""
        with self._lock:
            deleted = self._sweep_locked(target=self.max_bytes)
        self._forget_deleted()
        return deleted

    def clear(self) -> int:
        """Delete every file and folder the Space wrote (the example files Gradio keeps stay)."""
        with self._lock:
            deleted = self._sweep_locked(target=0, everything=True)
        self._forget_deleted()
        return deleted

    def usage(self) -> int:
        """The bytes the Space's files and folders take on disk now."""
        return sum(entry.nbytes for entry in self._scan())

    def _sweep_locked(self, target: int, everything: bool = False) -> int:
        with self._counts:
            written_before = self._written
        now, kept = time.time(), self._kept_paths()
        entries = self._scan()
        # An upload still being received is covered by its admission (`reserved`): not counted twice, not deleted.
        receiving = set()
        if not everything:
            receiving = {e.path for e in entries if e.kind == "upload" and now - e.mtime < GRACE_SECONDS}
        total = sum(entry.nbytes for entry in entries if entry.path not in receiving)
        deletable = [
            e
            for e in entries
            if e.kind in ("file", "upload")
            and e.path not in receiving
            and str(e.path) not in kept
            and (everything or now - e.mtime >= self.min_age)
        ]
        deleted = 0
        for entry in sorted(deletable, key=lambda e: e.mtime):
            if not (everything or total > target or now - entry.mtime > self.max_age):
                break  # the rest are younger, and there is room
            try:
                entry.path.unlink(missing_ok=True)
            except OSError as exc:
                logger.warning("Could not delete %s from the file cache: %s", entry.path, exc)
                continue
            total -= entry.nbytes
            deleted += 1
        for entry in (e for e in entries if e.kind == "folder"):
            # Only empty folders go (rmdir refuses others); one Gradio has just made is about to receive a file, and
            # the overlay folder stays while the server runs.
            if everything or (now - entry.mtime > GRACE_SECONDS and entry.path.name != OVERLAY_FOLDER):
                try:
                    entry.path.rmdir()
                except OSError:
                    continue
                total -= entry.nbytes
                deleted += 1
        with self._counts:  # what was written while the folder was walked may not have been seen: counted again
            self.estimate = max(total, 0) + self._written - written_before
        return deleted

    def _scan(self) -> list[Entry]:
        """The files and folders the Space and Gradio wrote: each hash-named folder and the overlay folder with the
        files in them, the temporary files of uploads, and the server's lock."""
        entries = []
        try:
            tops = list(os.scandir(self.root))
        except FileNotFoundError:
            return entries
        for top in tops:
            try:
                if top.is_dir(follow_symlinks=False) and (_GRADIO_FOLDER.match(top.name) or top.name == OVERLAY_FOLDER):
                    for child in os.scandir(top.path):
                        if not child.is_dir(follow_symlinks=False):
                            stat = child.stat(follow_symlinks=False)
                            entries.append(Entry(Path(child.path), _disk_bytes(stat), stat.st_mtime, "file"))
                    stat = top.stat(follow_symlinks=False)
                    entries.append(Entry(Path(top.path), _disk_bytes(stat), stat.st_mtime, "folder"))
                elif top.is_file(follow_symlinks=False) and (_UPLOAD_TEMP.match(top.name) or top.name == LOCK_FILE):
                    stat = top.stat(follow_symlinks=False)
                    kind = "lock" if top.name == LOCK_FILE else "upload"
                    entries.append(Entry(Path(top.path), _disk_bytes(stat), stat.st_mtime, kind))
            except FileNotFoundError:  # deleted meanwhile
                continue
        return entries

    def _kept_paths(self) -> set[str]:
        """The files Gradio keeps for good (the examples it cached), fully resolved."""
        if self.blocks is None:
            return set()
        kept = set()
        for block in list(self.blocks.blocks.values()):
            kept |= set(getattr(block, "keep_in_cache", ()))
        return {os.path.realpath(path) for path in kept}

    def _forget_deleted(self) -> None:
        """Drop deleted files from the sets in which Gradio tracks the files it served, which would otherwise grow
        for the server's life. Each set is copied in one step (no other thread's addition can break that), and
        entries are discarded one by one."""
        if self.blocks is None:
            return
        for tracked in list(getattr(self.blocks, "temp_file_sets", ())):
            for path in list(tracked):
                if not os.path.exists(path):
                    tracked.discard(path)


class OverlayFiles:
    """Overlays handed to Gradio as PNG files in the file cache, named by their content and written atomically.

    Gradio saves a returned PIL image into its cache by rewriting a content-named file in place, so two requests
    producing the same overlay (the preview and the answer of one user) can serve a half-written file. A file path
    output is instead served as it is (it already lies in the cache), written under a temporary name and renamed,
    after `FileCache.reserve` made room for it.
    """

    def __init__(self, cache: FileCache):
        self.cache = cache

    def save(self, image: Image.Image | None) -> str | None:
        if image is None:  # a view this family does not have (LLaVA-1.5: no tiles)
            return None
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
        folder = self.cache.overlay_dir
        path = folder / f"{hashlib.sha1(data).hexdigest()}.png"
        try:
            os.utime(path)  # shown again: the newest file now, the last to be deleted to make room
            return str(path)
        except FileNotFoundError:
            pass
        with self.cache.room_for(len(data) + FILE_OVERHEAD):
            folder.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{threading.get_ident()}.part")
            partial.write_bytes(data)
            os.replace(partial, path)
        return str(path)


# Files one upload request may carry (the page and gradio_client send one): each costs a block and a folder beyond
# its bytes, which the admission of the request's size must cover.
MAX_FILES_PER_UPLOAD = 4


class _TooManyFiles(Exception):
    pass


class UploadAdmission:
    """ASGI middleware: an upload to Gradio's upload route is let in only once the file cache has room for its
    declared size (`Content-Length`; the upload limit for a body of unknown length) and what its files cost beyond
    their bytes, within the share of the bound uploads may fill (`limits.UPLOAD_SHARE`). It is refused with 503 when
    no room can be made, and with 413 when it carries more than `MAX_FILES_PER_UPLOAD` files. The admission is
    released when the request ends: its files are then on disk."""

    def __init__(self, app, cache: FileCache, upload_bytes: int):
        self.app = app
        self.cache = cache
        self.upload_bytes = upload_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].rstrip("/").endswith("/gradio_api/upload"):
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        declared = headers.get("content-length", "")
        nbytes = min(int(declared), self.upload_bytes) if declared.isdigit() else self.upload_bytes
        nbytes += MAX_FILES_PER_UPLOAD * FILE_OVERHEAD
        try:
            await asyncio.to_thread(self.cache.reserve, nbytes, limits.UPLOAD_SHARE)
        except CacheFull as exc:
            response = PlainTextResponse(str(exc), status_code=503, headers={"Retry-After": "30"})
            return await response(scope, receive, send)
        count_parts = _part_counter(headers.get("content-type", ""))
        started = False

        async def counted_receive():
            message = await receive()
            if message["type"] == "http.request" and count_parts(message.get("body", b"")) > MAX_FILES_PER_UPLOAD:
                raise _TooManyFiles
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooManyFiles:
            if started:
                raise
            message = (
                f"An upload carries at most {MAX_FILES_PER_UPLOAD} files; send the others in uploads of their own."
            )
            await PlainTextResponse(message, status_code=413)(scope, receive, send)
        finally:
            self.cache.release(nbytes)


def _part_counter(content_type: str):
    """A function of the body's chunks, in order, that returns how many parts of a multipart body have begun: each
    part opens with `--<boundary>`, which no part's content holds (the boundary is chosen so)."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        return lambda chunk: 0  # not multipart: Gradio refuses it
    delimiter = b"--" + match.group(1).encode("latin-1")
    seen, tail = 0, b""

    def count(chunk: bytes) -> int:
        nonlocal seen, tail
        window = tail + chunk
        seen += window.count(delimiter)
        tail = window[-(len(delimiter) - 1) :] if len(delimiter) > 1 else b""
        return max(seen - 1, 0)  # the last delimiter closes the body

    return count
