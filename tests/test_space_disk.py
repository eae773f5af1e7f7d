"""The Space's disk bound: everything it writes (uploads, overlays, frame strips) lives in its file cache, which stays
under `$FILE_CACHE_MB` in bytes on disk, under concurrent uploads too, with a sweeper that survives its own errors;
leftovers are deleted at start and everything at exit.

The bytes are measured here on their own (`disk_usage`: the blocks of every file and folder under the cache), not
with the code under test."""

import os
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np
import pytest
from PIL import Image

from spaces_app import disk

KIB = 1024


def disk_usage(root: Path) -> int:
    """Bytes on disk of everything under `root` (the blocks of each file and folder, `root` itself aside); what is
    deleted while it walks is not counted."""
    total = 0
    for folder, subfolders, names in os.walk(root):
        for name in subfolders + names:
            try:
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
            except FileNotFoundError:
                continue
    return total


def cached_file(root: Path, name: str, nbytes: int, age: float = 0.0) -> Path:
    """A file as Gradio caches one, `<root>/<hash>/<name>`, written `age` seconds ago."""
    folder = root / (f"{abs(hash(name)):x}" * 4)[:40]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(os.urandom(nbytes))
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    os.utime(folder, (stamp, stamp))
    return path


def noise_picture(seed: int, side: int = 48) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8))


def test_room_is_made_by_deleting_the_oldest_files_first(tmp_path):
    files = [cached_file(tmp_path, f"{index}.png", 16 * KIB, age=100 - index) for index in range(10)]
    bound = disk_usage(tmp_path) + 8 * KIB
    cache = disk.FileCache(tmp_path, max_bytes=bound, sweep_seconds=60, max_age=3600)
    assert cache.sweep() == 0 and cache.estimate == disk_usage(tmp_path)
    cache.reserve(60 * KIB)  # does not fit: the oldest files go, down to the low-water mark
    kept = [path.exists() for path in files]
    assert kept == sorted(kept) and 0 < kept.count(False) < len(files), kept  # a prefix of the oldest, gone
    assert disk_usage(tmp_path) + cache.reserved <= disk.LOW_WATER * bound + 4 * KIB * kept.count(False)
    cache.release(60 * KIB)
    assert cache.estimate + cache.reserved <= bound


def test_a_write_that_cannot_fit_beside_the_uploads_in_progress_is_refused(tmp_path):
    cache = disk.FileCache(tmp_path, max_bytes=100 * KIB, sweep_seconds=60, max_age=3600)
    cache.reserve(90 * KIB)
    with pytest.raises(disk.CacheFull, match="full of recent uploads"):
        cache.reserve(20 * KIB)
    cache.release(90 * KIB)
    cache.sweep()  # measured again: nothing was written
    cache.reserve(20 * KIB)


def test_a_file_just_accepted_is_not_deleted_to_make_room_for_the_next(tmp_path):
    """An upload that was accepted is there when the request naming it comes: room is made from files older than
    `min_age` only, and a write that would need a younger one is refused instead."""
    young = cached_file(tmp_path, "just-uploaded.png", 64 * KIB, age=1)
    cache = disk.FileCache(tmp_path, max_bytes=disk_usage(tmp_path) + 16 * KIB, sweep_seconds=60, max_age=3600)
    cache.sweep()
    with pytest.raises(disk.CacheFull):
        cache.reserve(32 * KIB)
    assert young.exists()
    stamp = time.time() - cache.min_age - 1
    os.utime(young, (stamp, stamp))
    cache.reserve(32 * KIB)
    assert not young.exists()


def test_files_older_than_the_age_go_at_each_sweep_with_their_folders(tmp_path):
    old = cached_file(tmp_path, "old.png", 4 * KIB, age=120)
    new = cached_file(tmp_path, "new.png", 4 * KIB, age=0)
    young_empty = tmp_path / ("e" * 40)  # a folder Gradio has just made for a file it is about to move in
    young_empty.mkdir()
    cache = disk.FileCache(tmp_path, max_bytes=10 * 2**20, sweep_seconds=60, max_age=60)
    cache.sweep()
    assert not old.exists() and not old.parent.exists()
    assert new.exists() and young_empty.exists()
    stamp = time.time() - 2 * disk.GRACE_SECONDS
    os.utime(young_empty, (stamp, stamp))  # still empty a while later: it goes
    cache.sweep()
    assert not young_empty.exists() and new.exists()


def test_only_what_gradio_and_the_space_write_is_counted_and_deleted(tmp_path):
    ours = [
        cached_file(tmp_path, "upload.png", 4 * KIB),
        tmp_path / "tmpab12cd34",  # an upload Gradio was receiving
        tmp_path / disk.OVERLAY_FOLDER / "f00.png",
    ]
    ours[1].write_bytes(b"partial")
    ours[2].parent.mkdir()
    ours[2].write_bytes(b"png")
    example = cached_file(tmp_path, "house_in_a_field.png", 4 * KIB)  # Gradio keeps it for good
    foreign = [tmp_path / "notes.txt", tmp_path / "deep_links" / "page.json", tmp_path / "tmp"]
    foreign[0].write_text("not the Space's")
    foreign[1].parent.mkdir()
    foreign[1].write_text("{}")
    foreign[2].mkdir()
    blocks = SimpleNamespace(blocks={1: SimpleNamespace(keep_in_cache={str(example)})}, temp_file_sets=[])
    cache = disk.FileCache(tmp_path, max_bytes=10 * 2**20, sweep_seconds=60, max_age=3600, blocks=blocks)
    cache.clear()
    assert not any(path.exists() for path in ours) and not ours[0].parent.exists()
    assert not (tmp_path / disk.OVERLAY_FOLDER).exists()
    assert example.exists() and all(path.exists() for path in foreign)


def test_gradio_forgets_the_files_that_were_deleted(tmp_path):
    gone = cached_file(tmp_path, "gone.png", 4 * KIB, age=120)
    stays = cached_file(tmp_path, "stays.png", 4 * KIB)
    tracked = {str(gone), str(stays)}
    blocks = SimpleNamespace(blocks={}, temp_file_sets=[tracked])
    disk.FileCache(tmp_path, max_bytes=10 * 2**20, sweep_seconds=60, max_age=60, blocks=blocks).sweep()
    assert tracked == {str(stays)}


def test_start_deletes_the_leftovers_of_earlier_runs_and_stop_everything_written(tmp_path):
    leftovers = [cached_file(tmp_path, "earlier.png", 4 * KIB, age=5), tmp_path / "tmpzz99yy88"]
    leftovers[1].write_bytes(b"cut off")
    cache = disk.FileCache(tmp_path, max_bytes=10 * 2**20, sweep_seconds=60, max_age=3600)
    cache.start()
    try:
        assert cache.alive and not any(path.exists() for path in leftovers)
        overlay = Path(disk.OverlayFiles(cache).save(noise_picture(1)))
        assert overlay.exists() and overlay.parent == cache.overlay_dir
    finally:
        cache.stop()
    assert not cache.alive and not overlay.exists() and not cache.overlay_dir.exists()
    assert [path.name for path in tmp_path.iterdir()] == [disk.LOCK_FILE]


def test_a_second_server_on_the_same_folder_is_refused_while_the_first_runs(tmp_path):
    first = disk.FileCache(tmp_path, max_bytes=10 * 2**20)
    first.claim()
    try:
        with pytest.raises(RuntimeError, match="Another server is using .* GRADIO_TEMP_DIR"):
            disk.FileCache(tmp_path, max_bytes=10 * 2**20).claim()
    finally:
        first.stop()
    second = disk.FileCache(tmp_path, max_bytes=10 * 2**20)
    second.claim()  # once the first has let go
    second.stop()


def test_a_failing_sweep_is_logged_and_the_sweeper_runs_on(tmp_path, caplog):
    cache = disk.FileCache(tmp_path, max_bytes=10 * 2**20, sweep_seconds=0.05, max_age=3600)
    cache.start()
    stock_scan, failures = cache._scan, []

    def scan_failing_once():
        if not failures:
            failures.append(1)
            raise RuntimeError("Set changed size during iteration")
        return stock_scan()

    cache._scan = scan_failing_once
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and cache.sweeps < 3:
            time.sleep(0.05)
        assert cache.alive and cache.sweeps >= 3
        assert cache.last_error == "RuntimeError: Set changed size during iteration"
        assert "A sweep of the file cache failed" in caplog.text
    finally:
        cache.stop()


def test_overlays_are_named_by_content_written_whole_and_bounded(tmp_path):
    cache = disk.FileCache(tmp_path, max_bytes=120 * KIB, sweep_seconds=60, max_age=3600)
    cache.min_age = 0  # written back to back here: let each make room from the one before
    overlays = disk.OverlayFiles(cache)
    first = overlays.save(noise_picture(0))
    assert overlays.save(noise_picture(0)) == first  # the same picture, the same file
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(noise_picture(0)))
    for seed in range(1, 30):  # each about 7 KB: far more than the bound holds
        overlays.save(noise_picture(seed))
        assert disk_usage(tmp_path) <= cache.max_bytes
    assert not list(tmp_path.rglob("*.part")) and not Path(first).exists()  # the oldest went first
    assert overlays.save(None) is None


# ---------------------------------------------------------------------------------------------------- served
UPLOADERS, UPLOAD_SECONDS, UPLOAD_BYTES = 6, 8.0, 150 * KIB
PREVIEWERS, PREVIEWS_EACH = 2, 4


def test_concurrent_uploads_and_previews_keep_the_folder_under_its_bound_and_the_sweeper_alive(tmp_path, monkeypatch):
    """Gradio's own sweep died here ("Set changed size during iteration") and the folder grew without bound. Several
    clients upload at once (raw HTTP) while others preview (gradio_client uploading pictures, raw HTTP on the
    examples: overlays written): the folder, measured every few milliseconds, never exceeds FILE_CACHE_MB, and the
    sweeper still runs afterwards."""
    gradio_client = pytest.importorskip("gradio_client")
    import httpx
    from gradio_client.exceptions import AppError
    from space_helpers import call_raw, launch_on_a_free_port

    from spaces_app import app, inputs, model

    cache_dir = tmp_path / "cache"
    for name, value in {
        "GRADIO_TEMP_DIR": str(cache_dir),  # set for as long as the server runs: Gradio reads it on every request
        "MAX_UPLOAD_MB": "1",
        "FILE_CACHE_MB": "4",
        "CACHE_SWEEP_SECONDS": "0.2",
        "CACHE_MAX_AGE_SECONDS": "600",  # the bytes, not the age, must hold the folder
    }.items():
        monkeypatch.setenv(name, value)
    demo = app.build_demo(model.load_tiny_backend(), examples_dir=tmp_path / "examples")
    url = launch_on_a_free_port(demo, **app.launch_options(demo))
    bound, files = 4 * 2**20, demo.file_cache
    files.min_age = 1.0  # shorter than the 10 s a Space keeps a file at least, so that the folder turns over here
    peak, statuses, previews, example_previews, errors = [0], [], [], [], []
    done = threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], disk_usage(cache_dir))
            time.sleep(0.005)

    def upload(worker: int):
        rng, deadline = np.random.default_rng(worker), time.monotonic() + UPLOAD_SECONDS
        with httpx.Client(timeout=60) as http:
            for index in range(1000):
                if time.monotonic() > deadline:
                    break
                body = rng.integers(0, 256, UPLOAD_BYTES, dtype=np.uint8).tobytes()  # a new file each time
                posted = http.post(f"{url}gradio_api/upload", files=[("files", (f"{worker}-{index}.png", body))])
                statuses.append(posted.status_code)
                if posted.status_code == 503:
                    time.sleep(0.05)

    def preview_uploads(worker: int):
        """gradio_client: upload a picture, preview it (overlays written)."""
        client = gradio_client.Client(url, verbose=False, download_files=False)
        for index in range(PREVIEWS_EACH):
            path = tmp_path / f"p{worker}-{index}.png"
            noise_picture(100 * worker + index, side=64).save(path)
            # Under this flood an upload can be refused for want of room (503, "try again"), or, once older than the
            # time a file is kept at least, deleted to make room before its preview reads it ("upload it again").
            try:
                upload = gradio_client.handle_file(str(path))
                result = client.predict(upload, "threshold", 0.5, 0.25, "", api_name="/preview")
            except AppError as exc:
                previews.append(str(exc))
                continue
            except httpx.HTTPStatusError as exc:
                previews.append(exc.response.status_code)
                continue
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(repr(exc))
                continue
            previews.append(result[3]["counts"] if result[3] else result[2])

    def preview_examples(worker: int):
        """Raw HTTP: preview the example pictures (which the cache keeps) at thresholds of their own, so that each
        writes new overlays."""
        examples = sorted((tmp_path / "examples").glob("*.png"))
        for index in range(PREVIEWS_EACH):
            data = [{"path": str(examples[index % len(examples)])}, "threshold", 0.3 + 0.1 * index + 0.01 * worker]
            event, result = call_raw(url, "preview", [*data, 0.25, "", "codebook", False, 0.9])
            if event != "complete" or not result[3]:
                errors.append((event, result))
            else:
                example_previews.append(result[0])

    try:
        watcher = threading.Thread(target=watch)
        watcher.start()
        workers = [threading.Thread(target=upload, args=(w,)) for w in range(UPLOADERS)]
        workers += [threading.Thread(target=preview_uploads, args=(w,)) for w in range(PREVIEWERS)]
        workers += [threading.Thread(target=preview_examples, args=(w,)) for w in range(PREVIEWERS)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=180)
        done.set()
        watcher.join()
        assert not any(worker.is_alive() for worker in workers), "a client did not finish in time"
        assert not errors and len(previews) == PREVIEWERS * PREVIEWS_EACH, errors
        # Each preview of an upload drew its overlays, or said why not: its upload was refused for want of room (503),
        # deleted before it was read ("upload it again"), or its overlays found no room ("try again").
        said = [made for made in previews if not isinstance(made, dict) and made != 503]
        assert all(inputs.UNREADABLE_IMAGE in made or "file cache is full" in made for made in said), said
        assert len(example_previews) == PREVIEWERS * PREVIEWS_EACH and all(example_previews)  # overlays written
        assert set(statuses) <= {200, 503}, sorted(set(statuses))
        assert statuses.count(200) * UPLOAD_BYTES > 2 * bound  # the folder turned over: the bound was at stake
        assert peak[0] <= bound, f"the folder reached {peak[0]:,} bytes, over its bound of {bound:,}"
        # The sweeper is alive and still sweeping after the burst, and never failed.
        sweeps = files.sweeps
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and files.sweeps < sweeps + 2:
            time.sleep(0.1)
        assert files.alive and files.sweeps >= sweeps + 2 and files.last_error is None
        assert disk_usage(cache_dir) <= bound
        # Gradio's record of the files it served forgets the deleted ones: it does not grow for the server's life.
        assert all(Path(path).exists() for path in list(demo.upload_file_set))
    finally:
        done.set()
        demo.close()
    assert not files.alive
