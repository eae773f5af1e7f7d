"""The README's quick start and the documented import-seed command run as written, and the scripts install only when
something changed."""

import os
import re
import shlex
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from llava_codebook.cli import app
from llava_codebook.codebook import RedundancyCodebook

from docs_blocks import quick_start_blocks, reader_directory, run_python, run_shell

REPO_ROOT = Path(__file__).resolve().parents[1]
CLI_PAGE = (REPO_ROOT / "docs" / "cli.md").read_text()


@pytest.mark.slow
def test_the_readme_quick_start_runs_as_written_on_the_embedded_tiny_model(tmp_path):
    """From the top of the README in a fresh clone: activate the environment the two commands made, write the tiny
    repo, run the script; it generates with pruning (the flat white picture loses most of its tokens)."""
    shell, python = quick_start_blocks()
    cwd = reader_directory(tmp_path / "clone")  # not the repo root: the saved repo's remote code must be what loads
    done = run_shell(shell.code, cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    checks = textwrap.dedent(
        """
        assert report.num_kept[0] < report.num_total[0] // 2, "the flat white picture is mostly pruned"
        assert report.num_kept[1] > report.num_total[1] // 2, "the noisy picture is mostly kept"
        print("QUICKSTART-OK")
        """
    )
    done = run_python(python.code + checks, cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "QUICKSTART-OK" in done.stdout


def test_the_saved_tiny_default_is_self_contained_and_has_a_chat_template(tmp_path):
    from llava_codebook.tiny import build_tiny_default, build_tiny_processor

    build_tiny_default(tmp_path / "first")
    shutil.move(tmp_path / "first", tmp_path / "moved")  # no absolute path inside: it loads from anywhere
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "moved", trust_remote_code=True)
    assert model.codebook is not None and model.config.codebook_repo == "."
    processor = AutoProcessor.from_pretrained(tmp_path / "moved", trust_remote_code=True)
    turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is this ?"}]}]
    text = processor.apply_chat_template(turn, add_generation_prompt=True)
    # The template renders the prompt the demo and the builder used before it existed: no token changes.
    assert text == "<image>\nwhat is this ?"
    tokenizer = build_tiny_processor().tokenizer
    assert tokenizer(text)["input_ids"] == tokenizer("<image> what is this ?")["input_ids"]


def test_the_readme_import_seed_command_runs_as_written(tmp_path, monkeypatch):
    import json

    from huggingface_hub import constants

    from codebooks_helpers import seed_hub_cache

    lines = [line for line in CLI_PAGE.splitlines() if "llava-codebook import-seed FILE.pt" in line]
    assert lines, "docs/cli.md shows no import-seed command"
    command = shlex.split(re.search(r"`(llava-codebook import-seed [^`]*)`", lines[0]).group(1))
    base_model = command[command.index("--base-model") + 1]
    # The base model's config as the Hub serves it (llava-1.5-7b-hf: Llama's default hidden size, 4096, left out).
    config = {"model_type": "llava", "vision_feature_layer": -2, "text_config": {"model_type": "llama"}}
    seed_hub_cache(tmp_path / "hub", base_model, {"config.json": json.dumps(config).encode()})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    torch.save(torch.randn(3, 4096), tmp_path / "release.pt")
    args = [{"FILE.pt": str(tmp_path / "release.pt"), "DIR": str(tmp_path / "cb")}.get(a, a) for a in command[1:]]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert RedundancyCodebook.from_pretrained(tmp_path / "cb").num_prototypes == 3


# ------------------------------------------------------------------------------------------- setup-env.sh stamp
FAKE_PYTHON = """#!/usr/bin/env bash
echo "$* ${MODEL_ID:+MODEL_ID=$MODEL_ID}" >>"$LOG"
exit "${FAIL:-0}"
"""


@pytest.fixture
def fake_checkout(tmp_path):
    """A checkout with the real setup-env.sh and a .venv whose python only records how it was called."""
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    for script in ("setup-env.sh", "demo.sh"):
        shutil.copy(REPO_ROOT / "scripts" / script, root / "scripts")
    (root / "pyproject.toml").write_text('[project]\nname = "x"\n')
    (root / "constraints.txt").write_text("numpy==2.0.0\n")
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(FAKE_PYTHON)
    (bin_dir / "python").chmod(0o755)
    (bin_dir / "activate").write_text(f'export PATH="{bin_dir}:$PATH"\n')
    return root


def run_logged(root: Path, command: str, fail: bool = False) -> list[str]:
    """Run `command` in bash with the fake venv's python; returns how python was called."""
    log = root / "calls.log"
    log.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_ID", "VIRTUAL_ENV")}
    env.update(LOG=str(log), FAIL="1" if fail else "0")
    run = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True)
    assert (run.returncode != 0) == fail, run.stderr
    return [line.strip() for line in log.read_text().splitlines()] if log.exists() else []


def package_install(root: Path, extras: str = "") -> str:
    """How setup-env.sh installs the package: from the lock, built with the locked build tools."""
    target = f"{root}[{extras}]" if extras else str(root)
    return f"-m pip install --quiet --constraint {root}/constraints.txt --no-build-isolation -e {target}"


def setup_env(root: Path, extras: str, fail: bool = False) -> list[str]:
    """Source setup-env.sh as demo.sh / test.sh do; returns the package installs it ran."""
    calls = run_logged(root, f'source "{root}/scripts/setup-env.sh" {extras}', fail)
    return [call for call in calls if call.startswith("-m pip install") and " -e " in call]


def test_setup_env_installs_once_then_only_when_pyproject_lock_or_extras_change(fake_checkout):
    root = fake_checkout
    assert setup_env(root, "space") == [package_install(root, "space")]
    assert setup_env(root, "space") == []  # the demo's second start: no pip at all
    assert setup_env(root, "test") == [package_install(root, "test")]
    assert setup_env(root, "space") == []
    (root / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["numpy"]\n')
    assert setup_env(root, "space") == [package_install(root, "space")]
    assert setup_env(root, "") == [package_install(root)]
    (root / "constraints.txt").write_text("numpy==2.0.1\n")  # a refreshed lock reinstalls
    assert setup_env(root, "space") == [package_install(root, "space")]


def test_setup_env_pins_the_build_tools_and_every_install_to_the_lock(fake_checkout):
    calls = run_logged(fake_checkout, f'source "{fake_checkout}/scripts/setup-env.sh" test')
    installs = [call for call in calls if "pip install" in call]
    assert installs[0] == f"-m pip install --quiet --constraint {fake_checkout}/constraints.txt pip setuptools wheel"
    assert all(f"--constraint {fake_checkout}/constraints.txt" in call for call in installs), installs


def test_setup_env_refuses_to_install_without_the_lock(fake_checkout):
    (fake_checkout / "constraints.txt").unlink()
    log = fake_checkout / "calls.log"
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_ID", "VIRTUAL_ENV")}
    run = subprocess.run(
        ["bash", "-c", f'source "{fake_checkout}/scripts/setup-env.sh" space'],
        env={**env, "LOG": str(log)},
        capture_output=True,
        text=True,
    )
    assert run.returncode != 0 and "constraints.txt is missing" in run.stderr
    assert not log.exists()  # nothing was installed unpinned


def test_setup_env_retries_after_a_failed_install(fake_checkout):
    assert setup_env(fake_checkout, "space", fail=True) == []  # the build tools' install failed: nothing stamped
    assert setup_env(fake_checkout, "space") == [package_install(fake_checkout, "space")]


def test_demo_installs_on_its_first_start_only_and_passes_options_to_the_app(fake_checkout):
    root = fake_checkout
    first = run_logged(root, f'bash "{root}/scripts/demo.sh"')
    assert package_install(root, "space") in first and first[-1] == f"{root}/spaces_app/app.py"
    assert run_logged(root, f'bash "{root}/scripts/demo.sh" --port 7861') == [f"{root}/spaces_app/app.py --port 7861"]
    assert run_logged(root, f'bash "{root}/scripts/demo.sh" org/model --port 7861') == [
        f"{root}/spaces_app/app.py --port 7861 MODEL_ID=org/model"
    ]


def test_demo_and_test_scripts_share_setup_env():
    for script in ("demo.sh", "test.sh"):
        assert 'source "$root/scripts/setup-env.sh"' in (REPO_ROOT / "scripts" / script).read_text()
