"""`llava-codebook profile` on the embedded tiny model: what it measures, the table it writes, its errors."""

import json
from pathlib import Path

import pytest
from lmms_eval_helpers import textured
from typer.testing import CliRunner

from llava_codebook.cli import app
from llava_codebook.flops import prefill_flops
from llava_codebook.profile import Budget, parse_batch_sizes, parse_budgets, run_profile
from llava_codebook.profile_prompts import Prompt, batches, read_prompts
from llava_codebook.profile_report import COLUMNS, render_markdown, write_report


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
    entries = [entry for row in report["rows"] for entry in row["per_batch"]]
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
        a, b, c = (row["per_batch"][image] for row in (none, small, large))
        assert a["visual_tokens_kept"] == a["visual_tokens_total"] == b["visual_tokens_total"]
        assert b["visual_tokens_kept"] < c["visual_tokens_kept"] < a["visual_tokens_kept"]
        assert c["visual_tokens_kept"] - b["visual_tokens_kept"] == 8  # one image, 8 more tokens, same newlines
        assert b["kv_cache_bytes"] < c["kv_cache_bytes"] < a["kv_cache_bytes"]
        assert b["prefill_flops"] < c["prefill_flops"] < a["prefill_flops"] == a["prefill_flops_unpruned"]
        assert b["prefill_flops"] == prefill_flops(text_config, b["prompt_tokens"])
    assert small["prefill_flops_share"] < large["prefill_flops_share"] < none["prefill_flops_share"] == 1.0
    for row in report["rows"]:
        for key in ("vision_tower_s", "vision_selection_s", "prefill_s", "ttft_s", "decode_s_per_token"):
            assert row[key] > 0, key
        assert row["ttft_s"] > row["vision_selection_s"] + row["prefill_s"] * 0.99
        assert row["peak_memory_bytes"] is None or row["peak_memory_bytes"] > 0
    assert none["prefill_time_share"] == 1.0


def test_markdown_and_json_tables(report, tmp_path):
    markdown_path, json_path = write_report(report, tmp_path / "results" / "profile-tiny.md")
    assert (markdown_path.name, json_path.name) == ("profile-tiny.md", "profile-tiny.json")
    markdown = markdown_path.read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| batch size"))
    assert [cell.strip() for cell in header.strip("|").split("|")] == list(COLUMNS)
    lines = markdown.splitlines()
    main_table = lines[lines.index(header) + 2 : lines.index(header) + 2 + 3]
    assert [line.split(" | ")[1] for line in main_table] == ["none", "codebook @ 4 tokens", "codebook @ 12 tokens"]
    assert "CPU" in markdown and "Hardware:" in markdown and "## Prefill width per batch" in markdown
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
    options = ("--model", "--images", "--prompts", "--batch-size", "--strategies", "--budgets", "--device", "--out")
    for option in options:
        assert option in result.output


# ------------------------------------------------------------------ batches of mixed prompts
@pytest.fixture(scope="module")
def prompts_file(image_dir, tmp_path_factory):
    """Eight prompts, in the JSON Lines format `--prompts` reads: one image, several images, text only."""
    directory = tmp_path_factory.mktemp("prompts")
    textured(3, (70, 130), flat_share=0.8).save(directory / "long.png")
    lines = [
        {"text": "what is this ?", "images": [str(image_dir / "square.png")]},
        {"text": "how many are there ?"},
        {"text": "left or right ?", "images": [str(image_dir / "wide.png"), "long.png"]},
        {"text": "describe it", "images": ["long.png"]},
        {"text": "is the sky blue ?"},
        {"text": "what colour ?", "images": [str(image_dir / "wide.png")]},
        {"text": "where ?", "images": ["long.png", str(image_dir / "square.png"), str(image_dir / "wide.png")]},
        {"text": "yes or no ?", "images": [str(image_dir / "square.png")]},
    ]
    path = directory / "prompts.jsonl"
    path.write_text("# a comment line\n\n" + "\n".join(json.dumps(line) for line in lines) + "\n")
    return path


@pytest.fixture(scope="module")
def batched(tiny_repo, prompts_file):
    return run_profile(
        str(tiny_repo),
        prompts_file=str(prompts_file),
        strategies=["none", "codebook"],
        budgets=[Budget(keep_tokens=3)],
        batch_sizes=[1, 8],
        repeats=1,
        warmup=0,
        max_new_tokens=2,
        device="cpu",
    )


def test_a_batch_runs_at_the_width_of_its_longest_pruned_prompt(batched, tiny_repo):
    """Batch size 8 over text-only, one-image and several-image prompts: the prefill width is the longest of the
    prompts' own widths when each runs alone (batch size 1), so neither padding nor a text-only row widens it; the
    KV cache holds exactly rows x width tokens."""
    from llava_codebook import load_pruned_model

    per_token = kv_bytes_per_token(load_pruned_model(str(tiny_repo)).config)
    rows = {(row["batch_size"], row["configuration"]): row for row in batched["rows"]}
    assert set(rows) == {(1, "none"), (1, "codebook @ 3 tokens"), (8, "none"), (8, "codebook @ 3 tokens")}
    for configuration in ("none", "codebook @ 3 tokens"):
        alone = rows[1, configuration]["per_batch"]
        (together,) = rows[8, configuration]["per_batch"]
        assert len(alone) == 8 and together["rows"] == 8
        assert together["prompts"] == [entry["prompts"][0] for entry in alone]
        assert together["prefill_width"] == max(entry["prefill_width"] for entry in alone)
        assert together["visual_tokens_kept"] == sum(entry["visual_tokens_kept"] for entry in alone)
        assert together["kv_cache_bytes"] == per_token * 8 * together["prefill_width"]
        for entry in alone:
            assert entry["prefill_width"] == entry["prompt_tokens"]
    pruned, unpruned = rows[8, "codebook @ 3 tokens"], rows[8, "none"]
    assert pruned["prefill_width"] < unpruned["prefill_width"] == pruned["prefill_width_unpruned"]
    assert pruned["prefill_flops_share"] == pytest.approx(
        prefill_flops(load_pruned_model(str(tiny_repo)).config.text_config, pruned["prefill_width"])
        / prefill_flops(load_pruned_model(str(tiny_repo)).config.text_config, unpruned["prefill_width"])
    )
    for row in batched["rows"]:
        work = sum(entry["rows"] * entry["new_tokens"] for entry in row["per_batch"])
        assert row["generated_tokens_per_s"] == pytest.approx(work / sum(e["call_s"] for e in row["per_batch"]))
        assert row["ttft_share"] > 0 and all(e["call_s"] >= e["ttft_s"] for e in row["per_batch"])
        if row["strategy"] == "codebook":
            assert 0 < row["selection_s"] < row["vision_selection_s"] and row["selection_share_of_tower"] > 0
        else:
            assert row["selection_s"] == 0


def test_the_report_shows_every_batch_width(batched):
    markdown = render_markdown(batched)
    assert "in batches of 1 and of 8" in markdown
    widths = {
        row["configuration"]: row["per_batch"][0]["prefill_width"] for row in batched["rows"] if row["batch_size"] == 8
    }
    section = markdown.split("Batch size 8:")[1]
    assert f"| codebook @ 3 tokens | {widths['codebook @ 3 tokens']} |" in section
    assert f"| none | {widths['none']} |" in section
    assert "| prompts | 4 x 1 image, 2 x text only, 1 x 2 images, 1 x 3 images |" in section


def test_prompts_files_and_batch_sizes_are_checked_with_the_line_at_fault(tmp_path, image_dir):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"text": "hi", "images": [str(image_dir / "square.png")]}) + '\n{"text": "bye"}\n')
    assert read_prompts(good) == [Prompt("hi", (image_dir / "square.png",)), Prompt("bye")]
    assert [len(b) for b in batches(read_prompts(good) * 5, 4)] == [4, 4, 2]
    cases = {
        "not json": ("not.jsonl", "{text: 1}", r"not\.jsonl:1 is not JSON"),
        "no text": ("notext.jsonl", '\n{"images": []}', r"notext\.jsonl:2: expected"),
        "unknown key": ("key.jsonl", '{"text": "a", "videos": []}', "expected"),
        "images not a list": ("list.jsonl", '{"text": "a", "images": "x.png"}', "must be a list"),
        "missing image": ("missing.jsonl", '{"text": "a", "images": ["gone.png"]}', "no such image file.*gone.png"),
        "empty": ("empty.jsonl", "# nothing\n", "holds no prompt"),
    }
    for name, content, message in cases.values():
        (tmp_path / name).write_text(content)
        with pytest.raises(ValueError, match=message):
            read_prompts(tmp_path / name)
    with pytest.raises(ValueError, match="No such prompts file"):
        read_prompts(tmp_path / "absent.jsonl")
    assert parse_batch_sizes("1, 8,8") == [1, 8]
    for bad in ("0", "x", "", "1.5"):
        with pytest.raises(ValueError, match="integers >= 1"):
            parse_batch_sizes(bad)


def test_text_only_work_is_refused(tiny_repo, tmp_path):
    path = tmp_path / "text.jsonl"
    path.write_text('{"text": "hello"}\n')
    with pytest.raises(ValueError, match="Every prompt is text only"):
        run_profile(str(tiny_repo), prompts_file=str(path), repeats=1, warmup=0, max_new_tokens=2, device="cpu")


def test_command_profiles_a_prompts_file_at_several_batch_sizes(tiny_repo, prompts_file, tmp_path):
    runner = CliRunner()
    quick = ["--repeats", "1", "--warmup", "0", "--max-new-tokens", "2", "--device", "cpu", "--budgets", "3"]
    out = tmp_path / "batched"
    base = ["profile", "--model", str(tiny_repo), "--prompts", str(prompts_file)]
    result = runner.invoke(app, [*base, "--batch-size", "1,8", *quick, "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["settings"]["batch_sizes"] == [1, 8] and "--batch-size 1,8" in data["command"]
    assert "| 8 | codebook @ 3 tokens |" in result.stdout and "Batch size 8:" in result.stdout
    assert "integers >= 1" in error_line(runner.invoke(app, [*base, "--batch-size", "0", *quick]))
    assert "No prompts given" in error_line(runner.invoke(app, ["profile", "--model", str(tiny_repo), *quick]))


def test_tile_skipping_rows_encode_fewer_crops_and_report_the_tower_flops(tiny_repo, tmp_path):
    import numpy as np
    from PIL import Image
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    from llava_codebook import load_pruned_model
    from llava_codebook.flops import vision_tower_flops

    # Noise with a flat white part (white is in the tiny codebook): the right half, and the bottom half.
    rng = np.random.default_rng(0)
    for name, (height, width), flat in (("a.png", (112, 112), np.s_[:, 56:]), ("b.png", (90, 150), np.s_[45:, :])):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        pixels[flat] = 255
        Image.fromarray(pixels).save(tmp_path / name)
    report = run_profile(
        str(tiny_repo),
        [str(tmp_path / "a.png"), str(tmp_path / "b.png")],
        strategies=["none", "codebook"],
        budgets=[Budget(keep_tokens=4)],
        repeats=1,
        warmup=0,
        max_new_tokens=2,
        device="cpu",
        tile_skipping="both",
        tile_skip_share=0.5,
    )
    none, plain, skipping = report["rows"]
    assert [row["configuration"] for row in report["rows"]] == [
        "none",
        "codebook @ 4 tokens",
        "codebook @ 4 tokens + tile skipping",
    ]
    config = load_pruned_model(str(tiny_repo)).config
    per_crop = vision_tower_flops(config.vision_config)
    crops = [
        image_size_to_num_patches(size, config.image_grid_pinpoints, config.vision_config.image_size)
        for size in ((112, 112), (90, 150))
    ]
    for row in (none, plain):
        assert [entry["crops_encoded"] for entry in row["per_batch"]] == crops
        assert all(entry["tiles_skipped"] == 0 for entry in row["per_batch"])
    for entry, all_crops in zip(skipping["per_batch"], crops):
        assert entry["crops_encoded"] == all_crops - entry["tiles_skipped"]
        assert entry["vision_tower_flops"] == per_crop * entry["crops_encoded"]
    assert sum(entry["tiles_skipped"] for entry in skipping["per_batch"]) > 0
    assert skipping["vision_tower_share"] is not None and report["settings"]["tile_skip_share"] == 0.5
    markdown = render_markdown({**report, "command": None})
    assert "| codebook @ 4 tokens + tile skipping |" in markdown
    assert (
        "Tile skipping: each pruned configuration, also with `tile_skipping=True` at `tile_skip_share=0.5`" in markdown
    )


def test_tile_skipping_variants_go_only_to_strategies_that_can_skip_tiles():
    from llava_codebook.profile import configurations

    labels = [c.label for c in configurations(["none", "codebook", "hired"], [Budget(keep_tokens=4)], "both")]
    assert labels == ["none", "codebook @ 4 tokens", "codebook @ 4 tokens + tile skipping", "hired @ 4 tokens"]
    with pytest.raises(ValueError, match="--tile-skipping 'sometimes' is unknown: use off, on"):
        configurations(["codebook"], [Budget(keep_tokens=4)], "sometimes")
