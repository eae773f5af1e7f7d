"""The Space as uploaded: its card's front matter, its requirements, and a bundle that imports its own package copy."""

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import gradio  # noqa: E402
from huggingface_hub import SpaceCard  # noqa: E402

from spaces_app.prepare_upload import prepare_upload  # noqa: E402

SPACE_DIR = REPO_ROOT / "spaces_app"


def test_space_card_front_matter_says_how_to_run_it():
    card = SpaceCard.load(SPACE_DIR / "README.md")
    data = card.data.to_dict()
    assert data["sdk"] == "gradio"
    assert data["app_file"] == "app.py" and (SPACE_DIR / data["app_file"]).exists()
    assert data["sdk_version"].split(".")[0] == gradio.__version__.split(".")[0]
    assert data["license"] == "apache-2.0"
    assert data["models"] and data["suggested_hardware"] and data["short_description"]
    assert len(data["short_description"]) <= 60  # the Hub's limit


def test_requirements_name_the_package_dependencies_but_not_gradio():
    lines = [line.split("#")[0].strip() for line in (SPACE_DIR / "requirements.txt").read_text().splitlines()]
    names = {line.split("<")[0].split(">")[0].split("=")[0].strip().lower() for line in lines if line}
    assert {"torch", "transformers", "huggingface_hub", "safetensors", "einops", "numpy", "pillow"} <= names
    assert "gradio" not in names  # the Space installs the sdk_version itself


def test_uploaded_bundle_ships_every_module_and_imports_its_own_copies(tmp_path):
    bundle = prepare_upload(tmp_path / "space")
    for name in ("app.py", "README.md", "requirements.txt", "llava_codebook/__init__.py", "spaces_app/__init__.py"):
        assert (bundle / name).exists(), name
    modules = {path.name for path in SPACE_DIR.glob("*.py")} - {"app.py", "prepare_upload.py"}
    assert {path.name for path in (bundle / "spaces_app").glob("*.py")} == modules
    assert not list(bundle.rglob("__pycache__"))
    probe = (
        "import app, llava_codebook, spaces_app.disk, pathlib;"
        "print(pathlib.Path(llava_codebook.__file__).resolve().parent.parent);"
        "print(pathlib.Path(spaces_app.disk.__file__).resolve().parent.parent);"
        "print(app.parse_args([]).model)"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_ID", "PYTHONPATH")}
    env.update(HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=bundle, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-2000:]
    package_home, modules_home, model = done.stdout.strip().splitlines()[-3:]
    assert Path(package_home) == bundle.resolve() and Path(modules_home) == bundle.resolve()
    assert model == "None"


def lock_pins() -> dict[str, str]:
    """The lock's `name==version` lines, read here on their own."""
    pins = {}
    for line in (REPO_ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[name.strip().lower().replace("_", "-")] = version.split(";")[0].strip()
    return pins


def test_the_bundle_pins_each_requirement_to_the_lock(tmp_path):
    pins = lock_pins()
    bundle = prepare_upload(tmp_path / "space")
    lines = [line.split("#")[0].strip() for line in (bundle / "requirements.txt").read_text().splitlines()]
    requirements = [line for line in lines if line]
    assert requirements and all("==" in line for line in requirements), requirements
    for line in requirements:
        name, version = line.split("==")
        assert pins[name.lower().replace("_", "-")] == version, line
    # The Space installs gradio at the card's sdk_version: the one the suite ran with.
    assert SpaceCard.load(SPACE_DIR / "README.md").data.sdk_version == pins["gradio"]


def test_without_a_lock_the_bundle_keeps_the_ranges(tmp_path):
    bundle = prepare_upload(tmp_path / "space", lock=tmp_path / "no-lock.txt")
    assert (bundle / "requirements.txt").read_text() == (SPACE_DIR / "requirements.txt").read_text()
