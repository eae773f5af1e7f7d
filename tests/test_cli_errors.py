"""The first errors a newcomer meets are one line that names the problem and the way out, and come at once: a Hub that
does not answer (asked once, never retried), a path that does not exist, a reader that closes the pipe."""

import json
import os
import socket
import subprocess
import sys
import threading

import pytest
import torch
from codebooks_helpers import seed_hub_cache
from huggingface_hub import constants
from PIL import Image
from typer.testing import CliRunner

from llava_codebook.cli import app
from llava_codebook.codebook import RedundancyCodebook


class SilentHub:
    """A loopback endpoint that accepts each connection and closes it without a reply, counting the attempts: a Hub
    that cannot be reached, and a witness of how often the commands tried."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            connection.close()

    def close(self):
        self.server.close()


@pytest.fixture
def silent_hub(tmp_path, monkeypatch):
    """Online mode (HF_HUB_OFFLINE off) against an endpoint that never answers, with an empty Hub cache."""
    hub = SilentHub()
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the commands may switch it on for themselves
    yield hub
    hub.close()


def error_line(result, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def local_codebook(tmp_path_factory):
    path = tmp_path_factory.mktemp("codebook")
    RedundancyCodebook(torch.randn(3, 8), base_model="org/base", base_model_type="llava").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "noise.png"
    Image.effect_noise((64, 64), 80).convert("RGB").save(path)
    return path


def hub_commands(tmp_path, codebook, image):
    release = tmp_path / "release_numPrototypes-3.pt"
    torch.save(torch.randn(3, 4096), release)
    out = str(tmp_path / "out")
    return {
        "import-seed": (
            ["import-seed", str(release), "--base-model", "llava-hf/llava-1.5-7b-hf", "--out", out],
            "llava-hf/llava-1.5-7b-hf (--base-model)",
            "--no-verify-base-model",
        ),
        "convert": (
            ["convert", "--base", "llava-hf/llava-1.5-7b-hf", "--codebook", str(codebook), "--out", out],
            "llava-hf/llava-1.5-7b-hf (--base)",
            "local folder",
        ),
        "convert-codebook": (
            ["convert", "--base", str(codebook), "--codebook", "org/codebook", "--out", out],
            "org/codebook (--codebook)",
            "local folder",
        ),
        "profile": (["profile", "--model", "llava-hf/llava-1.5-7b-hf", "--images", str(image)], "(--model)", "local"),
        "build": (
            ["build", "--model", "llava-hf/llava-1.5-7b-hf", "--images", str(image.parent), "--out", out],
            "llava-hf/llava-1.5-7b-hf (--model)",
            "local folder",
        ),
        "inspect": (["inspect", "org/codebook"], "org/codebook (CODEBOOK)", "local folder"),
        "push": (["push", str(codebook), "--repo", "me/codebook"], "me/codebook (--repo)", "HF_ENDPOINT"),
    }


@pytest.mark.parametrize(
    "command", ["import-seed", "convert", "convert-codebook", "profile", "build", "inspect", "push"]
)
def test_a_hub_id_the_hub_cannot_serve_fails_after_one_request_with_one_line(
    command, silent_hub, tmp_path, local_codebook, image_file
):
    args, named, fix = hub_commands(tmp_path, local_codebook, image_file)[command]
    line = error_line(CliRunner().invoke(app, args))
    assert "cannot be reached" in line and silent_hub.url in line and named in line and fix in line
    if command != "push":  # an upload has no cached way out
        assert "HF_HUB_OFFLINE=1" in line and "not in the local Hub cache" in line
    assert silent_hub.connections == 1  # one probe, no retries: the error comes at once
    assert not (tmp_path / "out").exists()


def test_a_cached_hub_id_is_read_from_the_cache_when_the_hub_does_not_answer(silent_hub, tmp_path):
    config = {"model_type": "llava", "vision_feature_layer": -2, "text_config": {"model_type": "llama"}}
    seed_hub_cache(tmp_path / "hub-cache", "llava-hf/llava-1.5-7b-hf", {"config.json": json.dumps(config).encode()})
    release = tmp_path / "release.pt"
    torch.save(torch.randn(3, 4096), release)
    args = ["import-seed", str(release), "--base-model", "llava-hf/llava-1.5-7b-hf", "--out", str(tmp_path / "cb")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Retrying" not in result.output and silent_hub.connections == 1  # then offline, from the cache
    assert RedundancyCodebook.from_pretrained(tmp_path / "cb").base_model_type == "llava"


def test_a_path_that_does_not_exist_is_named_as_missing_before_anything_loads(tmp_path, local_codebook, image_file):
    out = tmp_path / "out"
    cases = [
        (["convert", "--base", "./no-such-dir", "--codebook", str(local_codebook), "--out", str(out)], "--base"),
        (["convert", "--base", str(local_codebook), "--codebook", "./no-such-cb", "--out", str(out)], "--codebook"),
        (["build", "--model", str(local_codebook), "--images", "./no-such-imgs", "--out", str(out)], "--images"),
        (["build", "--model", "./no-such-model", "--images", str(image_file.parent), "--out", str(out)], "--model"),
        (["profile", "--model", "./no-such-model", "--images", str(image_file)], "--model"),
        (["inspect", "./no-such-cb"], "CODEBOOK"),
        (["import-seed", "no-such.pt", "--base-model", "org/base", "--out", str(out)], "FILE"),
        (["push", "no-such-cb", "--repo", "me/codebook"], "PATH"),
    ]
    for args, option in cases:
        line = error_line(CliRunner().invoke(app, args))
        assert f"Error: {option} " in line and "no such" in line, line
        assert "Repo id" not in line and "alphanumeric" not in line
    assert not out.exists()  # nothing written, no probes/run.json


def test_build_checks_its_image_folder_before_loading_the_model(tmp_path, monkeypatch):
    """The model is never loaded for a missing image folder (it used to be loaded, then fail, leaving OUT behind)."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", refuse)
    (tmp_path / "model").mkdir()
    out = tmp_path / "out"
    args = ["build", "--model", str(tmp_path / "model"), "--images", "./no-such-imgs", "--out", str(out)]
    assert "--images './no-such-imgs': no such folder" in error_line(CliRunner().invoke(app, args))
    assert not out.exists()


def test_a_reader_that_stops_reading_ends_the_command_quietly(local_codebook):
    """`llava-codebook inspect CB | head -8`: the pipe closes before the command has written everything."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line
    try:
        done = subprocess.run(
            [sys.executable, "-m", "llava_codebook.cli", "inspect", str(local_codebook)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
            check=False,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    finally:
        os.close(write_end)
    assert done.stderr == "", done.stderr  # no "Error: [Errno 32] Broken pipe", no ignored-exception report
    assert done.returncode == 128 + 13  # as a process that SIGPIPE ended, so `set -o pipefail` still sees it


def test_a_network_failure_inside_a_command_is_reported_as_one_line_not_as_a_bug(local_codebook, monkeypatch):
    from huggingface_hub.utils import get_session

    from llava_codebook.codebooks import hub

    transport_error = type(get_session()).__module__.split(".")[0]
    errors = __import__(transport_error)

    def drop(*args, **kwargs):
        raise errors.ConnectError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # past the up-front check, as after a drop mid-upload
    monkeypatch.setattr(hub, "push_codebook", drop)
    line = error_line(CliRunner().invoke(app, ["push", str(local_codebook), "--repo", "me/codebook"]))
    assert "could not be reached" in line and "Network is unreachable" in line and "unexpected" not in line
