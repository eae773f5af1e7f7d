"""`llava-codebook profile` on the embedded tiny model: what it measures, the table it writes, its errors."""

import json
from pathlib import Path

import pytest
from lmms_eval_helpers import textured
from typer.testing import CliRunner

from llava_codebook.cli import app
from llava_codebook.flops import prefill_flops
from llava_codebook.profile import COLUMNS, Budget, parse_budgets, render_markdown, run_profile, write_report


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory):
    from llava_codebook.tiny import build_tiny_default

    return build_tiny_default(tmp_path_factory.mktemp("tiny") / "repo")


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("images")
    textured(1, (112, 112), flat_share=0.3).save(directory / "square.png")
    textured(2, (90, 150), flat_share=0.6).save(directory / "wide.png")
    return directory


@pytest.fixture(scope="module")
def report(tiny_repo, image_dir):
    return run_profile(
        str(tiny_repo),
        [str(image_dir)],
        strategies=["none", "codebook"],
        budgets=[Budget(keep_tokens=4), Budget(keep_tokens=12)],
        repeats=2,
        warmup=1,
        max_new_tokens=3,
        device="cpu",
    )


def kv_bytes_per_token(config) -> int:
    text = config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * 4  # keys and values, float32


def test_kv_cache_bytes_are_exactly_proportional_to_the_prompt_that_reached_the_model(report, tiny_repo):
    from llava_codebook import load_pruned_model

    per_token = kv_bytes_per_token(load_pruned_model(str(tiny_repo)).config)
    entries = [entry for row in report["rows"] for entry in row["per_image"]]
    assert len(entries) == 3 * 2
    assert len({entry["prompt_tokens"] for entry in entries}) == 6  # six different prompt lengths...
    for entry in entries:  # ...and the cache holds exactly those tokens
        assert entry["kv_cache_bytes"] == per_token * entry["prompt_tokens"]
        assert entry["prompt_tokens"] == (
            entry["prompt_tokens_unpruned"] - entry["visual_tokens_total"] + entry["visual_tokens_kept"]
        )


def test_two_budgets_are_ordered_and_the_baseline_keeps_everything(report, tiny_repo):
    from llava_codebook import load_pruned_model

    text_config = load_pruned_model(str(tiny_repo)).config.text_config
    none, small, large = report["rows"]
    assert [row["configuration"] for row in report["rows"]] == ["none", "codebook @ 4 tokens", "codebook @ 12 tokens"]
    for image in range(2):
        a, b, c = (row["per_image"][image] for row in (none, small, large))
        assert a["visual_tokens_kept"] == a["visual_tokens_total"] == b["visual_tokens_total"]
        assert b["visual_tokens_kept"] < c["visual_tokens_kept"] < a["visual_tokens_kept"]
        assert c["visual_tokens_kept"] - b["visual_tokens_kept"] == 8  # one image, 8 more tokens, same newlines
        assert b["kv_cache_bytes"] < c["kv_cache_bytes"] < a["kv_cache_bytes"]
        assert b["prefill_flops"] < c["prefill_flops"] < a["prefill_flops"] == a["prefill_flops_unpruned"]
        assert b["prefill_flops"] == prefill_flops(text_config, b["prompt_tokens"])
    assert small["prefill_flops_share"] < large["prefill_flops_share"] < none["prefill_flops_share"] == 1.0
    for row in report["rows"]:
        for key in ("vision_selection_s", "prefill_s", "ttft_s", "decode_s_per_token"):
            assert row[key] > 0, key
        assert row["ttft_s"] > row["vision_selection_s"] + row["prefill_s"] * 0.99
        assert row["peak_memory_bytes"] is None or row["peak_memory_bytes"] > 0
    assert none["prefill_time_share"] == 1.0


def test_markdown_and_json_tables(report, tmp_path):
    markdown_path, json_path = write_report(report, tmp_path / "results" / "profile-tiny.md")
    assert (markdown_path.name, json_path.name) == ("profile-tiny.md", "profile-tiny.json")
    markdown = markdown_path.read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| configuration"))
    assert [cell.strip() for cell in header.strip("|").split("|")] == list(COLUMNS)
    table = [line for line in markdown.splitlines() if line.startswith("| ") and line is not header]
    assert len(table) == 1 + 3 and "CPU" in markdown and "Hardware:" in markdown
    assert markdown == render_markdown(report)
    data = json.loads(json_path.read_text())
    assert [row["configuration"] for row in data["rows"]] == [row["configuration"] for row in report["rows"]]
    assert {"hardware", "model", "settings", "rows"} <= set(data)


def test_a_share_budget_wins_over_a_token_budget_in_the_checkpoint(tiny_repo, image_dir, tmp_path):
    """A repo whose config sets keep_tokens still profiles a share (a per-call keep_tokens=None would not clear it)."""
    import shutil

    repo = Path(shutil.copytree(tiny_repo, tmp_path / "repo"))
    config = json.loads((repo / "config.json").read_text())
    (repo / "config.json").write_text(json.dumps({**config, "keep_tokens": 3, "pruning_mode": "budget"}))
    kwargs = {"strategies": ["codebook"], "repeats": 1, "warmup": 0, "max_new_tokens": 2, "device": "cpu"}
    (half,) = run_profile(str(repo), [str(image_dir / "square.png")], budgets=[Budget(keep_ratio=0.5)], **kwargs)[
        "rows"
    ]
    (three,) = run_profile(str(repo), [str(image_dir / "square.png")], budgets=[Budget(keep_tokens=3)], **kwargs)[
        "rows"
    ]
    assert half["visual_tokens_kept"] > three["visual_tokens_kept"]


def test_budget_parsing():
    assert parse_budgets("320, 160,25%,0.5") == [
        Budget(keep_tokens=320),
        Budget(keep_tokens=160),
        Budget(keep_ratio=0.25),
        Budget(keep_ratio=0.5),
    ]
    for bad in ("0", "1.5", "-3", "abc", "", "150%"):
        with pytest.raises(ValueError):
            parse_budgets(bad)


def error_line(result, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def test_command_writes_the_tables_and_reports_errors_on_one_line(tiny_repo, image_dir, tmp_path):
    runner = CliRunner()
    base = ["profile", "--model", str(tiny_repo), "--images", str(image_dir / "square.png")]
    quick = ["--repeats", "1", "--warmup", "0", "--max-new-tokens", "2", "--device", "cpu"]
    out = tmp_path / "profile"
    result = runner.invoke(app, [*base, "--budgets", "4,50%", *quick, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.with_suffix(".md").is_file() and out.with_suffix(".json").is_file()
    assert "| codebook @ 50% |" in result.stdout and "Wrote" in result.stdout
    command = json.loads(out.with_suffix(".json").read_text())["command"]
    assert command.startswith("llava-codebook profile --model ") and "--budgets 4,50%" in command
    assert "'lots'" in error_line(runner.invoke(app, [*base, "--budgets", "4,lots", *quick]))
    assert "registry" in error_line(runner.invoke(app, [*base, "--strategies", "none,nope", *quick]))
    assert "No such image" in error_line(runner.invoke(app, ["profile", "--model", str(tiny_repo), "--images", "x"]))
    assert "--repeats" in error_line(runner.invoke(app, [*base, "--repeats", "0"]), code=2)


def test_help_fits_80_columns_and_names_every_option():
    result = CliRunner().invoke(app, ["profile", "--help"], terminal_width=80)
    assert result.exit_code == 0 and "…" not in result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    for option in ("--model", "--images", "--strategies", "--budgets", "--device", "--dtype", "--out"):
        assert option in result.output
