"""Assemble the folder to upload as a Hugging Face Space: the app files plus a copy of the `llava_codebook` package.

python spaces_app/prepare_upload.py build/space
hf upload <org>/<space-name> build/space . --repo-type space
"""

import argparse
import shutil
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
APP_FILES = ("app.py", "examples.py", "frames.py", "README.md", "requirements.txt")


def prepare_upload(destination: str | Path, package_dir: str | Path | None = None) -> Path:
    """Write the Space into `destination` (emptied first) and return it."""
    destination = Path(destination)
    package_dir = Path(package_dir) if package_dir else APP_DIR.parent / "llava_codebook"
    if not (package_dir / "__init__.py").exists():
        raise FileNotFoundError(f"No llava_codebook package at {package_dir}; run this from a checkout of the project.")
    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    for name in APP_FILES:
        shutil.copy2(APP_DIR / name, destination / name)
    shutil.copytree(package_dir, destination / "llava_codebook", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return destination


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("destination", help="folder to write (emptied first)")
    print(prepare_upload(parser.parse_args(argv).destination))


if __name__ == "__main__":
    main()
