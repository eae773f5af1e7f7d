"""The lmms-eval model `llava_codebook`: registration, batched requests, loglikelihood, the per-request accounting,
and a run through lmms-eval's own command line on the embedded tiny model with a local task suite (offline)."""

import glob
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

pytest.importorskip(
    "lmms_eval", reason="lmms-eval comes with `bash scripts/setup-env.sh test` (pip install --no-deps lmms-eval==0.7.3)"
)

from lmms_eval.api.instance import GenerationResult, Instance
from lmms_eval_helpers import TASKS, textured, write_tasks

from llava_codebook.flops import prefill_flops
from llava_codebook.integrations.accounting import account_rows
from llava_codebook.integrations.lmms_eval_model import (
    LlavaCodebook,
    batches,
    cut_at_stop_strings,
    pruning_overrides,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
TASK, SPLIT = "toy", "test"
GREEDY = {"max_new_tokens": 4, "temperature": 0, "do_sample": False, "until": ["."]}


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory):
    from llava_codebook.tiny import build_tiny_default

    return build_tiny_default(tmp_path_factory.mktemp("tiny") / "repo")


@pytest.fixture(scope="module")
def docs():
    sizes = [(112, 112), (90, 150), (130, 70), (100, 100), (60, 160)]
    return [
        {
            "question": q,
            "answer": a,
            "image": textured(i, sizes[i], flat_share=0.15 * i),
            "image_b": textured(10 + i, sizes[-1 - i], flat_share=0.5),
        }
        for i, (q, a) in enumerate(
            [
                ("is there a cat ?", "yes"),
                ("what colour is the sky ?", "blue"),
                ("how many dogs are there ?", "no"),
                ("is the house red ?", "yes"),
                ("describe the picture .", "a cat"),
            ]
        )
    ]


def make_model(tiny_repo, docs, **model_args) -> LlavaCodebook:
    lm = LlavaCodebook(pretrained=str(tiny_repo), device="cpu", **model_args)
    lm.task_dict = {TASK: {SPLIT: docs}}
    return lm


def one_image(doc):
    return [doc["image"]]


def two_images(doc):
    return [doc["image"], doc["image_b"]]


def generate_requests(docs, doc_to_visual=one_image, gen_kwargs=GREEDY):
    return [
        Instance(
            "generate_until",
            (doc["question"], dict(gen_kwargs), doc_to_visual, i, TASK, SPLIT),
            idx=0,
            metadata={"task": TASK, "doc_id": i, "repeats": 1},
        )
        for i, doc in enumerate(docs)
    ]


def choice_requests(docs, choices=(" yes", " no", " a cat")):
    return [
        Instance(
            "loglikelihood",
            (doc["question"], choice, one_image, i, TASK, SPLIT),
            idx=j,
            metadata={"task": TASK, "doc_id": i, "repeats": 1},
        )
        for i, doc in enumerate(docs)
        for j, choice in enumerate(choices)
    ]


# ---------------------------------------------------------------------------------------------------- registration
def test_entry_point_registers_the_model_with_lmms_eval():
    from importlib.metadata import entry_points

    from lmms_eval.models import get_model

    (entry,) = [e for e in entry_points().select(group="lmms_eval.models") if e.name == "llava_codebook"]
    assert entry.value == "llava_codebook.integrations.lmms_eval_plugin:manifest"
    assert get_model("llava_codebook") is LlavaCodebook


def test_budget_arguments_select_budget_mode_and_unknown_arguments_are_named(tiny_repo, docs):
    assert pruning_overrides({"keep_tokens": 320, "pruning_strategy": "codebook"}) == {
        "keep_tokens": 320,
        "pruning_strategy": "codebook",
        "pruning_mode": "budget",
    }
    assert pruning_overrides({"keep_ratio": 0.5}) == {"keep_ratio": 0.5, "keep_tokens": None, "pruning_mode": "budget"}
    assert pruning_overrides({"keep_ratio": 0.5, "pruning_mode": "threshold"})["pruning_mode"] == "threshold"
    assert pruning_overrides({"codebook_threshold": 0.3}) == {"codebook_threshold": 0.3}
    with pytest.raises(TypeError, match="keep_tokenz"):
        LlavaCodebook(pretrained=str(tiny_repo), keep_tokenz=3)
    with pytest.raises(ValueError, match="keep_ratio"):
        LlavaCodebook(pretrained=str(tiny_repo), keep_ratio=7.0)
    lm = LlavaCodebook.create_from_arg_string(
        f"pretrained={tiny_repo},keep_tokens=5,codebook_revision=None,dtype=float32", {"batch_size": "2"}
    )
    assert (lm.batch_size, lm.model.config.keep_tokens, lm.model.config.pruning_mode) == (2, 5, "budget")
    assert lm.model.dtype == torch.float32


def test_batches_group_by_settings_and_put_the_longest_first():
    lengths = [3, 9, 1, 7, 5]
    keys = ["a", "b", "a", "a", "b"]
    out = batches(range(5), key=lambda i: keys[i], length=lambda i: lengths[i], size=2)
    assert out == [[3, 0], [2], [1, 4]]
    assert cut_at_stop_strings("yes. no", ["."]) == "yes"
    assert cut_at_stop_strings("yes", ["", "\n"]) == "yes"


# ---------------------------------------------------------------------------------------------------- generation
def texts_and_counts(results):
    assert all(isinstance(r, GenerationResult) for r in results)
    return [r.text for r in results], [r.token_counts.to_dict() for r in results]


@pytest.mark.parametrize("doc_to_visual", [one_image, two_images], ids=["one-image", "two-images"])
def test_batched_generation_matches_one_request_at_a_time(tiny_repo, docs, doc_to_visual):
    """Left-padded batches of prompts with different image sizes (and two images per prompt) give each request the
    answer and the kept / total counts it gets alone."""
    alone = texts_and_counts(
        make_model(tiny_repo, docs, keep_tokens=6).generate_until(generate_requests(docs, doc_to_visual))
    )
    batched = texts_and_counts(
        make_model(tiny_repo, docs, keep_tokens=6, batch_size=3).generate_until(generate_requests(docs, doc_to_visual))
    )
    assert batched == alone
    counts = alone[1]
    assert all(c["visual_tokens_kept"] < c["visual_tokens_total"] for c in counts)
    assert len({c["visual_tokens_total"] for c in counts}) > 1  # the image sizes differ, so do the totals


def test_counts_are_what_the_model_kept_and_flops_follow_the_prompt(tiny_repo, docs):
    lm = make_model(tiny_repo, docs, keep_tokens=4, batch_size=2)
    _, counts = texts_and_counts(lm.generate_until(generate_requests(docs, two_images)))
    text_config = lm.model.config.text_config
    for doc, count in zip(docs, counts):
        prompt = lm._prompt(doc["question"], 2, 0)
        inputs = lm.processor(images=[doc["image"], doc["image_b"]], text=[prompt], return_tensors="pt")
        report = lm.model.generate(**inputs, max_new_tokens=1, return_dict_in_generate=True).visual_token_selection
        assert count["visual_tokens_kept"] == int(report.num_kept.sum())
        assert count["visual_tokens_total"] == int(report.num_total.sum())
        # Budget mode: 4 tokens per image plus its row newlines, which are always kept.
        newlines = sum(int(mask.sum()) for mask in report.newline_mask)
        assert count["visual_tokens_kept"] == 2 * 4 + newlines
        length = inputs["input_ids"].shape[1]
        assert count["input_tokens"] == length - count["visual_tokens_total"] + count["visual_tokens_kept"]
        assert count["prefill_tflops"] == pytest.approx(prefill_flops(text_config, count["input_tokens"]) / 1e12)
        assert count["prefill_tflops_unpruned"] == pytest.approx(prefill_flops(text_config, length) / 1e12)


def test_unpruned_baseline_keeps_every_visual_token(tiny_repo, docs):
    lm = make_model(tiny_repo, docs, pruning_strategy="none", batch_size=5)
    _, counts = texts_and_counts(lm.generate_until(generate_requests(docs)))
    assert all(c["visual_tokens_kept"] == c["visual_tokens_total"] > 0 for c in counts)
    assert all(c["prefill_tflops"] == c["prefill_tflops_unpruned"] for c in counts)


def test_the_run_summary_gets_the_means(tiny_repo, docs):
    from lmms_eval.models.model_utils.gen_metrics import reset_logged_metrics, summarize_logged_metrics

    reset_logged_metrics()
    lm = make_model(tiny_repo, docs, keep_tokens=4, batch_size=2)
    _, counts = texts_and_counts(lm.generate_until(generate_requests(docs)))
    summary = summarize_logged_metrics()
    mean = sum(c["visual_tokens_kept"] for c in counts) / len(counts)
    assert summary["avg_visual_tokens_kept"] == pytest.approx(mean)
    assert summary["avg_prefill_tflops"] == pytest.approx(sum(c["prefill_tflops"] for c in counts) / len(counts))
    assert summary["total_gen_tokens"] == sum(c["output_tokens"] for c in counts)
    reset_logged_metrics()


def test_tile_skipping_comes_through_the_model_args_and_each_request_logs_its_skipped_tiles(tiny_repo, docs):
    """`tile_skipping=True,tile_skip_share=0.5` parsed by lmms-eval's own argument parser reaches the model, and each
    request logs the tiles the model skipped for it (as the model reports them alone) and their tower FLOPs."""
    from lmms_eval.models.model_utils.gen_metrics import reset_logged_metrics, summarize_logged_metrics

    from llava_codebook.flops import vision_tower_flops

    reset_logged_metrics()
    lm = LlavaCodebook.create_from_arg_string(
        f"pretrained={tiny_repo},device=cpu,keep_tokens=4,batch_size=2,tile_skipping=True,tile_skip_share=0.5"
    )
    lm.task_dict = {TASK: {SPLIT: docs}}
    assert (lm.model.config.tile_skipping, lm.model.config.tile_skip_share) == (True, 0.5)
    _, counts = texts_and_counts(lm.generate_until(generate_requests(docs, two_images)))
    per_crop = vision_tower_flops(lm.model.config.vision_config) / 1e12
    for doc, count in zip(docs, counts):
        inputs = lm.processor(
            images=[doc["image"], doc["image_b"]], text=[lm._prompt(doc["question"], 2, 0)], return_tensors="pt"
        )
        report = lm.model.generate(**inputs, max_new_tokens=1, return_dict_in_generate=True).visual_token_selection
        assert count["tiles_skipped"] == sum(t.numel() for t in report.skipped_tiles)
        assert count["visual_tokens_kept"] == int(report.num_kept.sum())
        assert count["vision_tflops_saved"] == pytest.approx(count["tiles_skipped"] * per_crop)
    assert len({c["tiles_skipped"] for c in counts}) > 1, "the drawn images differ in how many tiles are redundant"
    summary = summarize_logged_metrics()
    assert summary["avg_tiles_skipped"] == pytest.approx(sum(c["tiles_skipped"] for c in counts) / len(counts))
    reset_logged_metrics()


def test_a_video_request_to_an_image_only_family_is_refused_by_name(tiny_repo, docs):
    lm = make_model(tiny_repo, docs)
    with pytest.raises(ValueError, match="takes images only"):
        lm._split_visuals([docs[0]["image"], "clip.mp4"])
    with pytest.raises(ValueError, match="audio"):
        lm._split_visuals([{"array": [0.0], "sampling_rate": 16000}])


# ---------------------------------------------------------------------------------------------------- loglikelihood
def reference_loss(lm, doc, continuation: str) -> tuple[float, bool]:
    """The continuation's mean NLL from one unbatched forward pass of the stock computation."""
    prompt = lm._prompt(doc["question"], 1, 0)
    inputs = lm.processor(images=[doc["image"]], text=[prompt], return_tensors="pt")
    target = lm.tokenizer(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.cat([inputs["input_ids"], torch.tensor([target])], dim=1)
    with torch.no_grad(), lm.model.pruning_disabled():
        logits = lm.model(input_ids=ids, pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"]).logits
    log_probs = torch.log_softmax(logits[0, -len(target) - 1 : -1].float(), -1)
    chosen = log_probs.gather(-1, torch.tensor(target)[:, None])[:, 0]
    return float(-chosen.mean()), bool((log_probs.argmax(-1) == torch.tensor(target)).all())


def test_loglikelihood_unpruned_matches_a_plain_forward_pass(tiny_repo, docs):
    lm = make_model(tiny_repo, docs, pruning_strategy="none", batch_size=4)
    requests = choice_requests(docs)
    results = lm.loglikelihood(requests)
    for request, result in zip(requests, results):
        loss, greedy = result.text
        expected_loss, expected_greedy = reference_loss(lm, docs[request.args[3]], request.args[1])
        assert loss == pytest.approx(expected_loss, abs=1e-4) and greedy == expected_greedy


def test_loglikelihood_pruned_is_the_same_batched_or_alone_and_logs_counts(tiny_repo, docs):
    requests = choice_requests(docs)
    alone = make_model(tiny_repo, docs, keep_tokens=5).loglikelihood(requests)
    batched = make_model(tiny_repo, docs, keep_tokens=5, batch_size=6).loglikelihood(requests)
    for a, b in zip(alone, batched):
        assert a.text[0] == pytest.approx(b.text[0], abs=1e-4) and a.text[1] == b.text[1]
        assert a.token_counts.to_dict() == b.token_counts.to_dict()
        assert a.token_counts.visual_tokens_kept < a.token_counts.visual_tokens_total
    unpruned = make_model(tiny_repo, docs, pruning_strategy="none").loglikelihood(requests[:3])
    assert [r.text[0] for r in unpruned] != pytest.approx([r.text[0] for r in alone[:3]], abs=1e-6)


# ---------------------------------------------------------------------------------------------------- accounting
def test_accounting_refuses_a_selection_that_does_not_cover_the_prompts(tiny_model, tiny_processor):
    image = Image.new("RGB", (100, 100), "white")
    inputs = tiny_processor(images=[image, image], text=["<image>\nis it ?", "<image>\nis it ?"], return_tensors="pt")
    report = tiny_model.generate(**inputs, max_new_tokens=1, return_dict_in_generate=True).visual_token_selection
    accounts = account_rows(tiny_model, inputs["input_ids"], inputs["attention_mask"], report)
    assert [a.visual_tokens_kept for a in accounts] == report.num_kept.tolist()
    report.num_total = report.num_total[:1]
    report.num_kept, report.modalities = report.num_kept[:1], report.modalities[:1]
    with pytest.raises(RuntimeError, match="do not cover"):
        account_rows(tiny_model, inputs["input_ids"], inputs["attention_mask"], report)


def _gather_in_process(rank: int, init_file: str, out_dir: str) -> None:
    import types

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        me = types.SimpleNamespace(world_size=2, rank=rank)
        gathered = LlavaCodebook._gather(me, [f"rank{rank}-a", f"rank{rank}-b"][: rank + 1])
        Path(out_dir, f"{rank}.json").write_text(json.dumps(gathered))
    finally:
        torch.distributed.destroy_process_group()


def test_with_several_processes_process_0_gathers_every_record(tmp_path):
    """Under `accelerate launch`, only process 0 writes the summary: it must see every process's requests."""
    # fork: the children reuse this interpreter's imports instead of loading torch and transformers again
    torch.multiprocessing.start_processes(
        _gather_in_process, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="fork"
    )
    assert json.loads((tmp_path / "0.json").read_text()) == ["rank0-a", "rank1-a", "rank1-b"]
    assert json.loads((tmp_path / "1.json").read_text()) == []


# ---------------------------------------------------------------------------------------------------- end to end
def lmms_eval_failure(output: str) -> str | None:
    """What a failed lmms-eval run printed about its failure, or `None` when it printed none.

    lmms-eval 0.7.3 catches every error of a run (an import that fails, a model that does not load), logs it and still
    exits 0, so the exit status alone says nothing: the run's own traceback and error line are the failure message.
    """
    lines = re.sub(r"\x1b\[[0-9;]*m", "", output).splitlines()
    marks = [i for i, line in enumerate(lines) if "Traceback (most recent call last)" in line or "| ERROR" in line]
    if not marks:
        return None
    return "\n".join(lines[marks[0] :][-80:])


def run_lmms_eval(repo: Path, tasks: Path, out: Path, model_args: str) -> dict:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(out / "hf-home"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    command = [
        sys.executable,
        "-m",
        "lmms_eval",
        "--model",
        "llava_codebook",
        "--model_args",
        f"pretrained={repo},{model_args}",
        "--tasks",
        ",".join(TASKS),
        "--include_path",
        str(tasks),
        "--batch_size",
        "4",
        "--log_samples",
        "--output_path",
        str(out),
        "--verbosity",
        "WARNING",
    ]
    run = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=600, cwd=out)
    failure = lmms_eval_failure(run.stdout + "\n" + run.stderr)
    assert run.returncode == 0 and failure is None, (
        f"lmms-eval failed (exit status {run.returncode}):\n{failure or run.stdout[-3000:] + run.stderr[-3000:]}"
    )
    results_files = glob.glob(str(out / "*" / "*_results.json"))
    assert len(results_files) == 1, f"lmms-eval wrote {len(results_files)} results files; its output:\n" + (
        run.stdout[-3000:] + run.stderr[-3000:]
    )
    results = json.loads(Path(results_files[0]).read_text())
    samples = {}
    for task in TASKS:
        (samples_file,) = glob.glob(str(out / "*" / f"*_samples_{task}.jsonl"))
        samples[task] = {row["doc_id"]: row for row in map(json.loads, Path(samples_file).read_text().splitlines())}
    return {"stdout": run.stdout, "results": results, "samples": samples}


@pytest.mark.slow
def test_a_failing_lmms_eval_run_fails_with_lmms_evals_own_error(tmp_path):
    """lmms-eval exits 0 after an error: the run helper must still fail, with the error as its message (a model that
    cannot be loaded stands in for any failure inside lmms-eval, an import error included)."""
    tasks = write_tasks(tmp_path / "tasks")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(AssertionError) as failed:
        run_lmms_eval(tmp_path / "no-such-model", tasks, out, "pruning_strategy=codebook")
    message = str(failed.value)
    assert message.startswith("lmms-eval failed") and "Traceback" in message and "no-such-model" in message


def test_the_installed_filelock_is_what_lmms_eval_imports_and_the_eval_extra_bounds_it():
    """lmms-eval 0.7.3's evaluator reaches into `filelock._api` (gone in filelock 4): the eval extra bounds filelock
    below 4, and the installed filelock (what the lock and that bound give) has what lmms-eval uses."""
    import tomllib
    from importlib.metadata import version

    from packaging.requirements import Requirement

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    (bound,) = [
        Requirement(r) for r in project["project"]["optional-dependencies"]["eval"] if r.startswith("filelock")
    ]
    assert not bound.specifier.contains("4.0.0") and bound.specifier.contains(version("filelock"))
    api = importlib.import_module("filelock._api")
    assert hasattr(api, "FileLockMeta") and hasattr(api, "BaseFileLock")
    evaluator = (Path(importlib.util.find_spec("lmms_eval").origin).parent / "evaluator.py").read_text()
    assert "import filelock._api" in evaluator  # what the bound protects; drop the bound when lmms-eval stops


# Two runs of lmms-eval's command line: about 40 s on the shared 2-core machine (interpreter and lmms-eval start-up
# dominate; the tiny model answers 36 requests per run in about a second).
@pytest.mark.slow
def test_lmms_eval_command_line_end_to_end_at_two_budgets(tiny_repo, tmp_path):
    """lmms-eval's real command line, offline, on three local tasks (one image, two images, multiple choice): the
    runs complete, scores are written, every sample logs its kept / total counts and FLOPs, the summary reports
    their means, and the kept counts follow the budget."""
    tasks = write_tasks(tmp_path / "tasks")
    runs = {}
    for budget in (4, 12):
        out = tmp_path / f"out-{budget}"
        out.mkdir()
        runs[budget] = run_lmms_eval(tiny_repo, tasks, out, f"pruning_strategy=codebook,keep_tokens={budget}")
    for budget, run in runs.items():
        results = run["results"]
        assert set(results["results"]) == set(TASKS)
        assert "accuracy,none" in results["results"]["tiny_yesno"] and "acc,none" in results["results"]["tiny_choice"]
        throughput = results["throughput"]
        assert {"avg_visual_tokens_kept", "avg_visual_tokens_total", "avg_prefill_tflops"} <= set(throughput)
        assert "avg_visual_tokens_kept" in run["stdout"]  # the printed summary, under the scores
        kept = [
            c["visual_tokens_kept"] for task in TASKS for s in run["samples"][task].values() for c in s["token_counts"]
        ]
        assert throughput["avg_visual_tokens_kept"] == pytest.approx(sum(kept) / len(kept))
        for task in TASKS:
            assert len(run["samples"][task]) == 6
            for sample in run["samples"][task].values():
                for counts in sample["token_counts"]:
                    assert 0 < counts["visual_tokens_kept"] < counts["visual_tokens_total"]
                    assert 0 < counts["prefill_tflops"] < counts["prefill_tflops_unpruned"]
    for task, images in (("tiny_yesno", 1), ("tiny_pair", 2), ("tiny_choice", 1)):
        for doc_id, small in runs[4]["samples"][task].items():
            large = runs[12]["samples"][task][doc_id]
            # Same images, same newlines: 8 more tokens per image at the larger budget.
            for a, b in zip(small["token_counts"], large["token_counts"]):
                assert b["visual_tokens_total"] == a["visual_tokens_total"]
                assert b["visual_tokens_kept"] - a["visual_tokens_kept"] == 8 * images


# ---------------------------------------------------------------------------------------------------- installation
RECORDING_PYTHON = """#!/usr/bin/env bash
if [ "$1" = "-c" ]; then exec {python} "$@"; fi
echo "$*" >>"$LOG"
"""


def test_extras_never_resolve_lmms_eval_or_another_torch():
    """lmms-eval's own dependencies pull torchvision and another torch: it is installed --no-deps, never resolved."""
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    for name in ("eval", "test"):
        for requirement in extras[name]:
            assert not requirement.lower().startswith(("lmms-eval", "lmms_eval", "torch")), (name, requirement)
    assert "llava-codebook[eval]" in extras["test"]
    no_deps = project["tool"]["llava-codebook"]["no-deps"]
    assert no_deps["eval"] == no_deps["test"] == ["lmms-eval==0.7.3"]


def test_setup_env_installs_lmms_eval_without_dependencies_for_the_eval_and_test_extras(tmp_path):
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "scripts" / "setup-env.sh", root / "scripts")
    shutil.copy(REPO_ROOT / "pyproject.toml", root)
    shutil.copy(REPO_ROOT / "constraints.txt", root)
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(RECORDING_PYTHON.format(python=sys.executable))
    (bin_dir / "python").chmod(0o755)
    (bin_dir / "activate").write_text(f'export PATH="{bin_dir}:$PATH"\n')

    def installs(extras: str) -> list[str]:
        log = root / f"calls-{len(list(root.glob('calls-*')))}.log"
        env = {**{k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}, "LOG": str(log)}
        run = subprocess.run(
            ["bash", "-c", f'source "{root}/scripts/setup-env.sh" {extras}'],
            check=False,
            env=env,
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0, run.stderr
        return [line for line in log.read_text().splitlines() if "install" in line] if log.exists() else []

    lock = f"--constraint {root}/constraints.txt"
    assert installs("test")[-2:] == [
        f"-m pip install --quiet {lock} --no-build-isolation -e {root}[test]",
        f"-m pip install --quiet {lock} --no-deps lmms-eval==0.7.3",
    ]
    assert installs("eval")[-1] == f"-m pip install --quiet {lock} --no-deps lmms-eval==0.7.3"
    assert not any("--no-deps" in call for call in installs("space"))
    assert installs("test") == []  # stamped: nothing runs again
