"""The benchmark scripts run on the current core: a smoke run at tiny geometry, end to end, through their command
line (a renamed core attribute once broke `benchmarks/strategies.py` while every unit test passed)."""

import re
import subprocess
import sys
from pathlib import Path

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
