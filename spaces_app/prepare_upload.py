"""Assemble the folder to upload as a Hugging Face Space: the page (`app.py`), every other module of `spaces_app`
as the package `spaces_app/`, the card, the requirements pinned to the project's lock, and a copy of the
`llava_codebook` package.

python spaces_app/prepare_upload.py build/space
hf upload <org>/<space-name> build/space . --repo-type space
"""

import argparse
import re
import shutil
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
LOCK = APP_DIR.parent / "constraints.txt"
# Beside app.py at the top of the Space; every other module goes into spaces_app/ (this script stays behind).
TOP_FILES = ("app.py", "README.md")
LEFT_BEHIND = ("app.py", "prepare_upload.py")
_REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: str | Path) -> dict[str, str]:
    """`{canonical name: version}` of the `name==version` lines of a lock file."""
    pins = {}
    for line in Path(path).read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", line.strip())
        if match:
            pins[canonical(match.group(1))] = match.group(2)
    return pins


def pinned_requirements(requirements: str, pins: dict[str, str]) -> str:
    """`requirements` (a requirements.txt) with each package that `pins` holds pinned to that version instead of its
    range: the Space then installs what the project's suite passed with. A package the lock lacks keeps its range."""
    lines = []
    for line in requirements.splitlines():
        requirement = line.split("#", 1)[0].strip()
        match = _REQUIREMENT.match(requirement)
        if match and canonical(match.group(1)) in pins:
            line = f"{match.group(1)}=={pins[canonical(match.group(1))]}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def prepare_upload(
    destination: str | Path, package_dir: str | Path | None = None, lock: str | Path | None = LOCK
) -> Path:
    """Write the Space into `destination` (emptied first) and return it. `lock`: the lock whose versions pin the
    requirements (`None`, or a missing file: the ranges of spaces_app/requirements.txt stay)."""
    destination = Path(destination)
    package_dir = Path(package_dir) if package_dir else APP_DIR.parent / "llava_codebook"
    if not (package_dir / "__init__.py").exists():
        raise FileNotFoundError(f"No llava_codebook package at {package_dir}; run this from a checkout of the project.")
    if destination.exists():
        shutil.rmtree(destination)
    (destination / "spaces_app").mkdir(parents=True)
    for name in TOP_FILES:
        shutil.copy2(APP_DIR / name, destination / name)
    for module in sorted(APP_DIR.glob("*.py")):
        if module.name not in LEFT_BEHIND:
            shutil.copy2(module, destination / "spaces_app" / module.name)
    requirements = (APP_DIR / "requirements.txt").read_text()
    if lock is not None and Path(lock).exists():
        requirements = pinned_requirements(requirements, read_lock(lock))
    (destination / "requirements.txt").write_text(requirements)
    shutil.copytree(package_dir, destination / "llava_codebook", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return destination


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("destination", help="folder to write (emptied first)")
    print(prepare_upload(parser.parse_args(argv).destination))


if __name__ == "__main__":
    main()
