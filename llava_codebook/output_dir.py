"""Safe output directories for the commands that write one (`convert`, `import-seed`, `build`).

Rules, shared by every writer:
- a source (the base checkpoint, the codebook, the release file, the image folder) is never written into, and an
  output directory may not contain one either (replacing it would delete the source); paths are compared after
  resolving symlinks;
- a non-empty output directory is refused unless `overwrite=True` (`--overwrite`);
- the result is written to a fresh hidden directory beside the target and renamed into place when complete, so an
  interrupted or failed run leaves the target as it was (absent, or the old contents) and no half-written repo.
  (A process killed outright, with no chance to clean up, can leave a hidden `.NAME.partial-*` directory beside
  the target; it is never read and can be deleted.)
"""

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path


class OutputDirError(ValueError):
    """The output directory cannot be used: not empty, not a directory, or overlapping a source."""


def refuse_source_overlap(
    out: str | os.PathLike, sources: Mapping[str, str | os.PathLike | None] | None = None, *, replaces: bool = True
) -> Path:
    """Raise `OutputDirError` when `out` is, is inside, or contains one of `sources` ({what: path}); returns `out`
    resolved. Sources that are not local paths (Hub ids) or are None are ignored.

    `replaces=False` is for a writer that only adds files to `out` (never removes any): an `out` around a source
    is then harmless and allowed.
    """
    target = Path(out).expanduser().resolve()
    for what, source in (sources or {}).items():
        if source is None or not Path(source).expanduser().exists():
            continue
        origin = Path(source).expanduser().resolve()
        if target == origin:
            relation = "is"
        elif origin in target.parents:
            relation = "is inside"
        elif target in origin.parents and replaces:
            relation = "contains"
        else:
            continue
        raise OutputDirError(
            f"The output directory {str(out)!r} {relation} the {what} {str(source)!r}; sources are never written "
            "to, with or without --overwrite. Choose an output directory outside it."
        )
    return target


def check_output_dir(
    out: str | os.PathLike, *, overwrite: bool = False, sources: Mapping[str, str | os.PathLike | None] | None = None
) -> Path:
    """Refuse `out` unless it is new or empty (or `overwrite`), and never a source; returns it resolved.

    Call it before any expensive work, so that a refusal costs nothing.
    """
    target = refuse_source_overlap(out, sources)
    if target.exists() and not target.is_dir():
        raise OutputDirError(f"The output path {str(out)!r} exists and is not a directory; choose a directory.")
    if target.is_dir() and not overwrite:
        entries = sorted(entry.name for entry in target.iterdir())
        if entries:
            shown = ", ".join(entries[:5]) + (f", ... ({len(entries)} entries)" if len(entries) > 5 else "")
            raise OutputDirError(
                f"The output directory {str(out)!r} is not empty ({shown}). Choose a new or empty directory, or "
                "pass --overwrite (overwrite=True) to replace its whole contents."
            )
    return target


@contextlib.contextmanager
def write_output_dir(
    out: str | os.PathLike, *, overwrite: bool = False, sources: Mapping[str, str | os.PathLike | None] | None = None
) -> Iterator[Path]:
    """Yield an empty staging directory; when the block completes, it replaces `out` whole.

    On an exception (KeyboardInterrupt included) the staging directory is removed and `out` is untouched. With
    `overwrite`, the previous contents are removed only after the new ones are in place.
    """
    target = check_output_dir(out, overwrite=overwrite, sources=sources)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Beside the target, so the final rename stays on one filesystem (atomic); mkdir (not mkdtemp) so the directory
    # gets the usual permissions.
    staging = _sibling(target, "partial")
    staging.mkdir()
    try:
        yield staging
        # Something may have appeared meanwhile (another run): the rules hold at the moment of the swap too.
        check_output_dir(out, overwrite=overwrite, sources=sources)
        _move_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextlib.contextmanager
def replace_files(directory: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging directory inside `directory`; when the block completes, each file written there replaces its
    namesake in `directory` by rename (other entries of `directory` stay). A file is never seen half-written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    staging = _sibling(directory / "staging", "partial")
    staging.mkdir()
    try:
        yield staging
        for entry in sorted(staging.iterdir()):
            os.replace(entry, directory / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _sibling(target: Path, tag: str) -> Path:
    return target.parent / f".{target.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}"


def _move_into_place(staging: Path, target: Path) -> None:
    if not target.exists():
        os.rename(staging, target)
        return
    if not any(target.iterdir()):
        target.rmdir()
        os.rename(staging, target)
        return
    previous = _sibling(target, "old")
    os.rename(target, previous)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(previous, target)  # put the old contents back: nothing is lost
        raise
    shutil.rmtree(previous, ignore_errors=True)
