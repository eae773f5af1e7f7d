"""The command line as a user meets it: --version, --help, one-line errors, and `convert --out` safety."""

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from typer.testing import CliRunner

from llava_codebook import __version__
from llava_codebook.cli import app
from test_hub_packaging import stock_checkpoint  # noqa: F401 (fixture: a stock checkpoint and a codebook on disk)

REPO_ROOT = Path(__file__).resolve().parents[1]


def invoke(*args, **kwargs):
    return CliRunner().invoke(app, [str(a) for a in args], **kwargs)


def one_error_line(result, code: int = 1) -> str:
    """The report of a failed command: exit `code`, nothing on stdout, exactly one `Error:` line on stderr."""
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def tree(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def convert_args(checkpoint: Path, out, *extra):
    return ["convert", "--base", checkpoint / "base", "--codebook", checkpoint / "codebook", "--out", out, *extra]


def test_version_prints_the_package_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.output == f"llava-codebook {__version__}\n"


@pytest.mark.parametrize("command", ["build", "convert", "import-seed", "push", "inspect"])
def test_help_at_80_columns_shows_every_option_name_whole(command):
    result = invoke(command, "--help", terminal_width=80)
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    for name in {
        "build": ["--cluster-size-thres", "--prototype-cluster-nums", "--min-unique-images", "--trust-remote-code"],
        "convert": ["--codebook-revision", "--overwrite", "--push-to", "--create-pr"],
        "import-seed": ["--base-model", "--vision-feature-layer", "--overwrite", "--key"],
        "push": ["--verify-base-model", "--create-pr"],
        "inspect": ["--revision", "--json"],
    }[command]:
        assert name in result.output, name
    assert max(len(line) for line in result.output.splitlines()) <= 80


def test_a_bad_threshold_is_one_line_without_a_traceback(stock_checkpoint, tmp_path):
    line = one_error_line(invoke(*convert_args(stock_checkpoint, tmp_path / "out", "--threshold", "2.0")))
    assert "codebook_threshold=2.0 is outside [-1.0, 1.0]" in line
    assert not (tmp_path / "out").exists()


def test_a_bad_threshold_through_the_real_entry_point_prints_one_line(stock_checkpoint, tmp_path):
    """What a shell shows: no Rich traceback box before (or instead of) the message."""
    command = [sys.executable, "-m", "llava_codebook.cli", *map(str, convert_args(stock_checkpoint, tmp_path / "o"))]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "80"}
    env.pop("LLAVA_CODEBOOK_DEBUG", None)
    run = subprocess.run([*command, "--threshold", "2.0"], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 1 and run.stdout == ""
    assert len(run.stderr.splitlines()) == 1 and "codebook_threshold=2.0 is outside" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


def test_debug_flag_and_environment_variable_show_the_traceback(stock_checkpoint, tmp_path):
    args = convert_args(stock_checkpoint, tmp_path / "out", "--threshold", "2.0")
    result = invoke("--debug", *args)
    assert isinstance(result.exception, ValueError) and "outside [-1.0, 1.0]" in str(result.exception)
    result = invoke(*args, env={"LLAVA_CODEBOOK_DEBUG": "1"})
    assert isinstance(result.exception, ValueError)


def test_bad_options_name_the_value_on_one_line():
    base = ["build", "--model", "m", "--images", "i", "--out", "o"]
    line = one_error_line(invoke(*base, "--num-images", "-3"), code=2)
    assert "'--num-images'" in line and "-3" in line
    line = one_error_line(invoke(*base, "--dtype", "float8"), code=2)
    assert "'--dtype'" in line and "float8" in line and "bfloat16" in line  # not an AttributeError
    line = one_error_line(invoke(*base, "--probe-ranks", "1,two"), code=2)
    assert "--probe-ranks" in line and "1,two" in line


def test_an_unexpected_error_is_one_line_with_its_type_and_the_debug_hint(stock_checkpoint, tmp_path):
    with mock.patch("llava_codebook.convert.load_pruned_model", side_effect=KeyError("boom")):
        line = one_error_line(invoke(*convert_args(stock_checkpoint, tmp_path / "out")))
    assert "KeyError" in line and "boom" in line and "--debug" in line


def test_ctrl_c_in_any_command_is_one_line_and_exit_130(stock_checkpoint, tmp_path):
    with mock.patch("llava_codebook.convert.load_pruned_model", side_effect=KeyboardInterrupt):
        line = one_error_line(invoke(*convert_args(stock_checkpoint, tmp_path / "out")), code=130)
    assert line == "Error: Interrupted."


# ------------------------------------------------------------------------------------------------ convert --out
def test_convert_refuses_a_non_empty_out_before_loading_anything(stock_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors.index.json").write_text("{}")
    before = tree(out)
    with mock.patch("llava_codebook.convert.load_pruned_model", side_effect=AssertionError("loaded")):
        line = one_error_line(invoke(*convert_args(stock_checkpoint, out)))
    assert "is not empty" in line and "model.safetensors.index.json" in line and "--overwrite" in line
    assert tree(out) == before


def test_convert_overwrite_replaces_the_whole_directory_without_stale_files(stock_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors.index.json").write_text("{}")
    (out / "README.md").write_text("an old card")
    result = invoke(*convert_args(stock_checkpoint, out, "--overwrite", "--threshold", "0.5"))
    assert result.exit_code == 0, result.output
    assert not (out / "model.safetensors.index.json").exists()
    assert "an old card" not in (out / "README.md").read_text()
    assert json.loads((out / "config.json").read_text())["codebook_threshold"] == 0.5
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging or old directory left beside it


def test_convert_into_an_empty_existing_directory_is_fine(stock_checkpoint, tmp_path):
    (tmp_path / "out").mkdir()
    assert invoke(*convert_args(stock_checkpoint, tmp_path / "out")).exit_code == 0
    assert (tmp_path / "out" / "config.json").is_file()


@pytest.mark.parametrize("target", ["base", "codebook", "base-link", "inside-base", "parent"])
def test_convert_never_writes_into_a_source_even_with_overwrite(stock_checkpoint, tmp_path, target):
    (tmp_path / "base-link").symlink_to(stock_checkpoint / "base", target_is_directory=True)
    out = {
        "base": stock_checkpoint / "base",
        "codebook": stock_checkpoint / "codebook",
        "base-link": tmp_path / "base-link",  # a symlink to the base: resolved before comparing
        "inside-base": stock_checkpoint / "base" / "converted",
        "parent": stock_checkpoint,  # replacing it would delete both sources
    }[target]
    before = tree(stock_checkpoint)
    with mock.patch("llava_codebook.convert.load_pruned_model", side_effect=AssertionError("loaded")):
        line = one_error_line(invoke(*convert_args(stock_checkpoint, out, "--overwrite")))
    assert "sources are never written to" in line
    assert tree(stock_checkpoint) == before
    assert json.loads((stock_checkpoint / "base" / "config.json").read_text())["model_type"] == "llava_next"


@pytest.mark.parametrize("existing", [False, True])
def test_an_interrupted_convert_leaves_the_output_as_it_was(stock_checkpoint, tmp_path, existing):
    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "keep.txt").write_text("previous contents")
    before = tree(out) if existing else None

    def interrupted(*args, **kwargs):  # the card is written last: everything else is on disk by then
        raise KeyboardInterrupt

    with mock.patch("llava_codebook.convert.ModelCard.save", interrupted):
        result = invoke(*convert_args(stock_checkpoint, out, "--overwrite"))
    assert result.exit_code == 130
    assert (tree(out) == before) if existing else not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == (["out"] if existing else [])
