"""The benchmark scripts run on the current core: a smoke run at tiny geometry, end to end, through their command
line (a renamed core attribute once broke `benchmarks/strategies.py` while every unit test passed)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from llava_codebook.strategies import STRATEGIES as REGISTRY

REPO_ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ["codebook", "codebook_diverse", "cls_attention", "visionzip", "divprune", "hired", "random", "uniform"]


def test_the_strategies_benchmark_runs_and_writes_every_strategy_and_budget(tmp_path):
    out = tmp_path / "strategies.md"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "strategies.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = out.read_text()
    assert table.startswith("# Strategies benchmark (SMOKE RUN: tiny geometry")
    for name in STRATEGIES:
        timings = re.search(rf"^\| `{name}` \| ([^\n]+) \|$", table, re.MULTILINE)
        assert timings and timings[1].count(" ms (") == 4, name  # one timing per budget
    # Kept counts: every strategy but codebook_diverse keeps exactly its budget (16, 8, 4, 2) of visual tokens.
    for name in STRATEGIES:
        if name != "codebook_diverse":
            assert re.search(
                rf"^\| `{name}` \| 16 \+ \d+ \| 8 \+ \d+ \| 4 \+ \d+ \| 2 \+ \d+ \|$", table, re.MULTILINE
            ), name
    assert "## Targets" in table and "## Kept-set overlap" in table


def test_the_strategies_benchmark_runs_at_the_qwen_geometry_with_the_strategies_qwen_offers(tmp_path):
    out = tmp_path / "strategies-qwen.md"
    result = subprocess.run(
        [
            sys.executable, str(REPO_ROOT / "benchmarks" / "strategies.py"), "--smoke", "--geometry", "qwen2.5-vl-7b",
            "--out", str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    table = out.read_text()
    assert "--geometry qwen2.5-vl-7b" in table and "'family': 'qwen2_5_vl'" in table
    offered = ["codebook", "codebook_diverse", "divprune", "random", "uniform"]  # no [CLS] rule on the Qwen ViT
    for name in STRATEGIES:
        timings = re.search(rf"^\| `{name}` \| ([^\n]+) \|$", table, re.MULTILINE)
        assert bool(timings) == (name in offered), name
        if timings:
            assert timings[1].count(" ms (") == 4, name
    for name in ("codebook", "divprune", "random", "uniform"):  # merged tokens, no newlines: 16, 8, 4, 2 kept
        assert re.search(rf"^\| `{name}` \| 16 \+ 0 \| 8 \+ 0 \| 4 \+ 0 \| 2 \+ 0 \|$", table, re.MULTILINE), name


@pytest.mark.slow
def test_the_gpu_check_runs_every_strategy_at_both_batch_sizes_in_its_cpu_smoke_mode(tmp_path):
    """`benchmarks/gpu.sh --smoke`: the one-command GPU check, at tiny geometry on the CPU, through its own script;
    Qwen2.5-VL-7B's geometry beside the LLaVA ones, with the strategies its ViT (no [CLS] token) can serve."""
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "benchmarks" / "gpu.sh"), "--smoke", "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (markdown,) = tmp_path.glob("gpu-*.md")
    assert markdown.name == "gpu-smoke-cpu.md" and markdown.with_suffix(".json").is_file()
    table = markdown.read_text()
    assert table.startswith("# GPU check on CPU")
    for title in ("LLaVA-NeXT-7B", "LLaVA-1.5-7B", "Qwen2.5-VL-7B"):
        assert re.search(rf"^## {re.escape(title)} .*\(SMOKE RUN", table, re.MULTILINE), title
    reports = json.loads(markdown.with_suffix(".json").read_text())
    # LLaVA-NeXT has AnyRes tiles, so a second section: none and codebook without and with tile skipping. Qwen2.5-VL
    # has none (one grid of merged tokens per image) and serves only the strategies its ViT (no [CLS] token) can.
    geometries = ["llava-next-7b", "llava-next-7b", "llava-1.5-7b", "qwen2.5-vl-7b"]
    assert [report["geometry"] for report in reports] == geometries
    assert [report["settings"]["tile_skipping"] for report in reports] == ["off", "both", "off", "off"]
    assert reports[3]["model"]["class"] == "Qwen2_5_VLCodebookForConditionalGeneration"
    cls_rules = {"cls_attention", "visionzip", "hired"}

    def every_strategy(offered) -> set:
        return {(size, "none") for size in (1, 8)} | {
            (size, f"{name} @ {budget} tokens") for size in (1, 8) for name in offered for budget in (8, 4, 2)
        }

    expected = every_strategy([name for name in REGISTRY if name != "none"])
    qwen = every_strategy([name for name in REGISTRY if name != "none" and name not in cls_rules])
    skipping = {(size, "none") for size in (1, 8)} | {
        (size, f"codebook @ {budget} tokens{suffix}")
        for size in (1, 8)
        for budget in (8, 4, 2)
        for suffix in ("", " + tile skipping")
    }
    for report, rows_expected in zip(reports, (expected, skipping, expected, qwen)):
        rows = {(row["batch_size"], row["configuration"]): row for row in report["rows"]}
        assert set(rows) == rows_expected, report["geometry"]
        if report["settings"]["tile_skipping"] == "both":
            # tile_skip_share=0 skips every tile: only the base view of each image is encoded.
            for (size, configuration), row in rows.items():
                for batch in row["per_batch"]:
                    images = sum(int(kind.split()[0]) for kind in batch["prompts"] if kind != "text only")
                    if configuration.endswith("+ tile skipping"):
                        assert batch["crops_encoded"] == images and (batch["tiles_skipped"] > 0) == (images > 0)
                    else:
                        assert batch["crops_encoded"] >= 3 * images and batch["tiles_skipped"] == 0
        for (size, configuration), row in rows.items():
            assert f"| {size} | {configuration} |" in table
            assert row["kv_cache_bytes"] > 0 and row["peak_memory_bytes"] > 0
            if configuration != "none":
                assert row["selection_share_of_tower"] > 0
                assert row["prefill_width"] < row["prefill_width_unpruned"]


@pytest.mark.slow
def test_the_tile_skipping_benchmark_runs_and_counts_the_crops_each_configuration_encodes(tmp_path):
    out = tmp_path / "tile-skipping.md"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "tile_skipping.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = out.read_text()
    assert table.startswith("# Tile skipping: vision-tower time (SMOKE RUN: tiny geometry")
    rows = {
        (calls, label): int(crops)
        for calls, label, crops in re.findall(
            r"^\| (1 image per call|4 images in one call) \| (off|share [\d.]+) \| (\d+) \|", table, re.MULTILINE
        )
    }
    for calls in ("1 image per call", "4 images in one call"):
        # Four images of five crops each (base view + 2 x 2 tiles at every aspect the drawn set has at tiny geometry);
        # share 0 skips every tile, so only the base views are encoded; a higher share never skips more.
        assert rows[calls, "off"] == 20 and rows[calls, "share 0"] == 4
        assert rows[calls, "share 0.9"] >= rows[calls, "share 0.5"] >= rows[calls, "share 0"]
