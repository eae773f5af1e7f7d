"""The Space as a process that runs for days: its session state is bounded, it deletes the leftovers of earlier runs
when it starts and everything it wrote when it stops (no folder left behind in the system's temp folder per start),
it will not share its folder with a second server, and a model that was asked for and cannot be loaded stops it
with one message instead of serving another model."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import httpx
import pytest
from PIL import Image
from space_helpers import call_raw, launch_on_a_free_port

from spaces_app import app, disk, model

APP = REPO_ROOT / "spaces_app" / "app.py"


def test_session_state_is_bounded_under_concurrent_callers(tmp_path, monkeypatch):
    """Each API call opens a session whose state Gradio keeps (about 100 KB for this page): at most MAX_SESSIONS are
    kept, the oldest dropped first, whatever the number of callers."""
    gradio_client = pytest.importorskip("gradio_client")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "cache"))  # for the server's life: read on every request
    monkeypatch.setenv("MAX_SESSIONS", "5")
    demo = app.build_demo(model.load_tiny_backend(), examples_dir=tmp_path / "examples")
    url = launch_on_a_free_port(demo, **app.launch_options(demo))
    example = {"path": str(min((tmp_path / "examples").glob("*.png")))}
    sizes, outcomes = [], []

    def call(worker: int):
        for index in range(5):
            outcomes.append(call_raw(url, "preview", [example, "threshold", 0.5, 0.25, "", "codebook", False, 0.9])[0])
            sizes.append(len(demo.state_holder.session_data))

    try:
        callers = [threading.Thread(target=call, args=(worker,)) for worker in range(4)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(timeout=120)
        for _ in range(3):  # gradio_client callers, a session each
            client = gradio_client.Client(url, verbose=False)
            upload = gradio_client.handle_file(example["path"])
            client.predict(upload, "threshold", 0.5, 0.25, "", api_name="/preview")
            sizes.append(len(demo.state_holder.session_data))
        assert outcomes == ["complete"] * 20
        assert max(sizes) <= 5 and len(demo.state_holder.session_data) == 5
    finally:
        demo.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def space_env(tmp_path: Path, **extra) -> dict:
    """The environment of a Space started as `python spaces_app/app.py`: its own system temp folder, offline."""
    env = {k: v for k, v in os.environ.items() if k not in ("GRADIO_TEMP_DIR", "MODEL_ID", "CODEBOOK_REPO")}
    (tmp_path / "system-tmp").mkdir(exist_ok=True)
    env.update(
        TMPDIR=str(tmp_path / "system-tmp"),
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf-home"),
        GRADIO_ANALYTICS_ENABLED="False",
        **extra,
    )
    return env


def start_space(env: dict, port: int, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(APP), "--port", str(port), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_until_served(process: subprocess.Popen, url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the Space exited with {process.returncode}:\n{process.stdout.read()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError("the Space did not start in time")


@pytest.mark.slow
def test_a_started_space_deletes_leftovers_and_at_exit_everything_it_wrote(tmp_path):
    gradio_client = pytest.importorskip("gradio_client")
    env = space_env(tmp_path)
    folder = tmp_path / "system-tmp" / "llava-codebook-space"  # the Space's own folder when none is named
    leftovers = [folder / ("a" * 40) / "earlier-upload.png", folder / disk.OVERLAY_FOLDER / "earlier.png"]
    for path in leftovers:
        path.parent.mkdir(parents=True)
        path.write_bytes(b"from an earlier run")
    (folder / "tmpqq11ww22").write_bytes(b"an upload cut off by a crash")
    foreign = folder / "someone-else.txt"
    foreign.write_text("not the Space's")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    space = start_space(env, port)
    try:
        wait_until_served(space, url)
        assert not any(path.exists() for path in leftovers) and not (folder / "tmpqq11ww22").exists()
        assert foreign.exists()
        # A second server on the same folder would delete this one's files: it refuses to start, and says why.
        second = subprocess.run(
            [sys.executable, str(APP), "--port", str(free_port())],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert second.returncode != 0 and "Another server is using" in second.stderr, second.stderr[-2000:]
        picture = tmp_path / "picture.png"
        Image.effect_noise((90, 60), 60).convert("RGB").save(picture)
        client = gradio_client.Client(url, verbose=False)
        client.predict(gradio_client.handle_file(str(picture)), "threshold", 0.5, 0.25, "", api_name="/preview")
        written = [path for path in folder.rglob("*.png") if path.name == "picture.png"]
        overlays = list((folder / disk.OVERLAY_FOLDER).glob("*.png"))
        assert written and len(overlays) == 2
    finally:
        space.send_signal(signal.SIGTERM)
        log = space.communicate(timeout=60)[0]
    assert space.returncode == 0, log[-3000:]
    assert not any(path.exists() for path in written + overlays) and not (folder / disk.OVERLAY_FOLDER).exists()
    left = sorted(path.name for path in folder.rglob("*") if path.is_file())
    examples = {"house_in_a_field.png", "lighthouse.png", "bar_chart.png", "city_at_dusk.png"}
    assert set(left) == examples | {disk.LOCK_FILE, foreign.name}, left  # Gradio keeps its example copies
    # Nothing of the Space's was left in the system's temp folder but its own folder and the example pictures.
    assert sorted(path.name for path in (tmp_path / "system-tmp").iterdir()) == [
        "llava-codebook-space",
        "llava-codebook-space-examples",
    ]


@pytest.mark.parametrize("how", ["argument", "MODEL_ID"])
def test_a_model_that_cannot_be_loaded_stops_the_space_with_one_message(tmp_path, how):
    """`bash scripts/demo.sh my-org/some-model` runs `app.py` with MODEL_ID set: the Space must not start, and must
    not serve another model instead."""
    env = space_env(tmp_path, **({"MODEL_ID": "my-org/some-model"} if how == "MODEL_ID" else {}))
    args = ["--model", "my-org/some-model"] if how == "argument" else []
    done = subprocess.run(
        [sys.executable, str(APP), "--port", str(free_port()), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 1
    message = [line for line in done.stderr.splitlines() if line.strip()]
    assert message[-1] == (
        "error: Could not load the model 'my-org/some-model' (its config): it is not in the local Hugging Face "
        f"cache, and HF_HUB_OFFLINE keeps the Hub out of reach. {model.LOAD_HINT}"
    )
    assert "Traceback" not in done.stderr and "Running on" not in done.stdout + done.stderr
