"""Probe-stage throughput (probes/s) against the language-model batch size, on a small random LLaVA-NeXT.

    python benchmarks/probe_throughput.py            # writes benchmarks/results/probe_throughput.md

Measures, in one run and on one model, (a) the single-token probe alone (stage 1) and (b) stages 1 + 2 together
(single-token probe + context and global leave-one-out), which is what `llava-codebook build` spends its time on.
Random weights do not change the cost. Read the ratios between rows, not the absolute numbers: on a shared CPU
those are noise, and a real 7B/8B model on a GPU is a different regime.
"""

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llava_codebook.codebooks.data import pil_images  # noqa: E402
from llava_codebook.codebooks.probe import ProbeRunner, probe_images, single_token_probe  # noqa: E402
from llava_codebook.codebooks.tiny_pipeline import synthetic_images  # noqa: E402
from llava_codebook.tiny import build_tiny_model, build_tiny_processor  # noqa: E402


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _time(fn, repeats: int) -> tuple[float, float]:
    """(best wall seconds, best CPU seconds of this process) over `repeats` runs after one warm-up.

    The minimum is the estimate least disturbed by other jobs on a shared machine; CPU time of this process is
    the number other jobs disturb least (it does not count time spent waiting for a core).
    """
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return min(wall), min(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", default="1,4,16,64,96", help="comma-separated LM batch sizes")
    parser.add_argument("--images", type=int, default=4, help="images per measurement (one image batch)")
    parser.add_argument("--crop", type=int, default=112, help="crop side in px (tokens per crop = (crop/14)^2)")
    parser.add_argument("--hidden", type=int, default=256, help="text hidden size of the random model")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per row (best reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: CPU time = work done)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "probe_throughput.md")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_tiny_model(0, crop=args.crop, text_hidden_size=args.hidden)
    processor = build_tiny_processor(crop=args.crop)
    images = synthetic_images(args.images, side=args.crop)
    items = list(pil_images(images))
    rows = []
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        runner = ProbeRunner(model, processor, batch_size=batch_size)
        probes = len(runner.probe_ranks) * len(images)
        tokens, order = runner.encode(runner.pixel_values(images))
        indices = runner.probe_indices(order)
        stage1_wall, stage1_cpu = _time(lambda: single_token_probe(runner, tokens, indices), args.repeats)
        full_wall, full_cpu = _time(lambda: probe_images(runner, images, items), args.repeats)
        rows.append((batch_size, probes / stage1_cpu, probes / full_cpu, probes / stage1_wall, probes / full_wall))
        print(
            f"batch {batch_size:>4}: stage 1 {probes / stage1_cpu:8.1f}, stages 1+2 {probes / full_cpu:7.1f} probes/CPU-s"
        )

    base1, base12 = rows[0][1], rows[0][2]
    grid = args.crop // 14
    text = model.config.text_config
    lines = [
        "# Probe-stage throughput vs language-model batch size",
        "",
        "Command: `python benchmarks/probe_throughput.py` (all rows measured in one run; each number is the best of "
        f"{args.repeats} timed repeats after one warm-up). Throughput is probes per CPU-second of this process with "
        f"{args.threads} torch thread(s), which other jobs on the shared machine disturb far less than wall time; "
        "wall-clock probes/s are given for reference.",
        "",
        f"- Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {_cpu_name()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} thread(s) used), no GPU, shared with other jobs "
        f"(1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after the run).",
        f"- Model: random LLaVA-NeXT from `llava_codebook.tiny`: CLIP 32x2 layers at {args.crop} px "
        f"({grid}x{grid} = {grid * grid} tokens per crop), Llama {text.hidden_size} hidden x "
        f"{text.num_hidden_layers} layers, float32.",
        f"- Work: {args.images} images, {len(runner.probe_ranks)} probes each (the release's ranks that fit "
        f"a {grid}x{grid} grid); stage 2 adds 2 context runs (9 tokens) per probe, 1 intact global run per image "
        f"and 1 global run ({grid * grid} tokens) per probe.",
        "",
        "| LM batch size | stage 1 probes/CPU-s | vs batch 1 | stages 1+2 probes/CPU-s | vs batch 1 | stage 1 wall probes/s | stages 1+2 wall probes/s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for batch_size, stage1, full, stage1_wall, full_wall in rows:
        lines.append(
            f"| {batch_size} | {stage1:.1f} | {stage1 / base1:.2f}x | {full:.1f} | {full / base12:.2f}x | "
            f"{stage1_wall:.1f} | {full_wall:.1f} |"
        )
    lines += [
        "",
        "Reading: only the ratios between rows mean something; they show what batching many probes per forward",
        "pass buys over one probe per pass for this model on this machine. Absolute probes/s on a shared 2-core CPU",
        "with a toy model are noise and say nothing about a 7B/8B model on a GPU (not measured here). Stage 2 is",
        "most of the cost by construction: each probe adds three more sequences, one of them the whole crop long.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
