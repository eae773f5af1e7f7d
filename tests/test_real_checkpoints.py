"""Checkpoints shaped like the llava-hf LLaVA-NeXT repos (`hub_fixtures.py`: written by the stock class's
`save_pretrained`, real key layout, token ids, pinpoints and chat templates, sizes shrunk) survive every load and save
path of the product with every tensor equal to what the stock class loads from the same directory."""

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from hub_fixtures import FAMILIES, build_stock_checkpoint
from hub_helpers import seed_hub_cache
from huggingface_hub import HfApi, ModelCard
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load as safetensors_load
from safetensors.torch import load_file, save_file
from transformers import AutoProcessor, LlavaNextForConditionalGeneration, LlavaNextModel
from transformers.utils import PushToHubMixin

from llava_codebook import LlavaNextCodebookForConditionalGeneration, LlavaNextCodebookModel, RedundancyCodebook
from llava_codebook.convert import convert_checkpoint
from llava_codebook.loading import load_pruned_model
from llava_codebook.modeling_llava_next_codebook import IncompleteCheckpointError

FAMILY_NAMES = list(FAMILIES)
GREEDY = dict(max_new_tokens=4, do_sample=False)
QUESTION = "What is shown here?"


@pytest.fixture(scope="module")
def hub_checkpoints(stock_checkpoints, tmp_path_factory):
    """family -> directory of a stock checkpoint + stock processor, and family -> codebook directory."""
    root = tmp_path_factory.mktemp("codebooks")
    codebooks = {}
    for family, directory in stock_checkpoints.items():
        hidden = json.loads((directory / "config.json").read_text())["text_config"]["hidden_size"]
        generator = torch.Generator().manual_seed(len(family))
        codebook = RedundancyCodebook(prototypes=torch.randn(12, hidden, generator=generator), base_model=family)
        codebooks[family] = codebook.save_pretrained(root / family)
    return stock_checkpoints, codebooks


def tensors(model) -> dict:
    return {name: tensor.detach() for name, tensor in model.state_dict().items()}


def assert_every_tensor_equal(expected: dict, actual: dict) -> None:
    assert sorted(actual) == sorted(expected), "parameter names differ"
    different = [k for k in expected if expected[k].dtype != actual[k].dtype or not torch.equal(expected[k], actual[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:5]}"


def stock_tensors(directory) -> dict:
    return tensors(LlavaNextForConditionalGeneration.from_pretrained(directory))


def chat_inputs(processor, images):
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    processor.tokenizer.padding_side = "left"
    return processor(images=images, text=[prompt] * len(images), padding=True, return_tensors="pt")


def sample_images():
    wide = Image.new("RGB", (150, 90), (255, 255, 255))
    wide.paste(Image.effect_noise((60, 90), 80).convert("RGB"), (0, 0))
    tall = Image.new("RGB", (70, 130), (20, 20, 20))
    tall.paste(Image.effect_noise((70, 50), 60).convert("RGB"), (0, 80))
    return [wide, tall]


# ------------------------------------------------------------------ every load path, every tensor
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_load_pruned_model_loads_every_tensor_of_a_llava_hf_checkpoint(hub_checkpoints, family):
    checkpoints, codebooks = hub_checkpoints
    model = load_pruned_model(checkpoints[family], codebook_repo=str(codebooks[family]), codebook_threshold=0.3)
    assert_every_tensor_equal(stock_tensors(checkpoints[family]), tensors(model))
    assert model.config.model_type == "llava_next_codebook"
    assert model.config.image_token_id == FAMILIES[family].image_token_id


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_the_classes_own_from_pretrained_loads_every_tensor_of_a_llava_hf_checkpoint(hub_checkpoints, family):
    directory = hub_checkpoints[0][family]
    model = LlavaNextCodebookForConditionalGeneration.from_pretrained(directory)
    assert_every_tensor_equal(stock_tensors(directory), tensors(model))
    base = LlavaNextCodebookModel.from_pretrained(directory)
    assert_every_tensor_equal(tensors(LlavaNextModel.from_pretrained(directory)), tensors(base))


def test_a_sharded_checkpoint_loads_every_tensor(tmp_path):
    directory = build_stock_checkpoint("vicuna-7b", tmp_path / "sharded", max_shard_size="200KB")
    assert (directory / "model.safetensors.index.json").exists()
    model = LlavaNextCodebookForConditionalGeneration.from_pretrained(directory)
    assert_every_tensor_equal(stock_tensors(directory), tensors(model))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_save_writes_the_llava_hf_layout_that_the_stock_class_reads_back(hub_checkpoints, family, tmp_path):
    checkpoints, codebooks = hub_checkpoints
    model = load_pruned_model(checkpoints[family], codebook_repo=str(codebooks[family]))
    model.save_pretrained(tmp_path)
    with (
        safe_open(checkpoints[family] / "model.safetensors", "pt") as original,
        safe_open(tmp_path / "model.safetensors", "pt") as saved,
    ):
        assert sorted(saved.keys()) == sorted(original.keys())
        assert any(key.startswith("language_model.model.") for key in saved.keys())
    assert_every_tensor_equal(stock_tensors(checkpoints[family]), stock_tensors(tmp_path))


# ------------------------------------------------------------------ loads that would lose weights fail
def _rewrite_weights(directory: Path, change) -> None:
    weights = load_file(directory / "model.safetensors")
    change(weights)
    save_file(weights, directory / "model.safetensors", {"format": "pt"})


@pytest.mark.parametrize(
    "change, named",
    [
        (lambda w: w.pop("language_model.model.norm.weight"), r"missing.*model\.language_model\.norm\.weight"),
        (lambda w: w.pop("language_model.lm_head.weight"), r"missing.*lm_head\.weight"),
        (lambda w: w.update({"language_model.extra.weight": torch.zeros(2)}), r"unexpected.*extra\.weight"),
        (
            lambda w: w.update({"image_newline": torch.zeros(3, dtype=torch.float16)}),
            r"of another shape.*image_newline",
        ),
    ],
    ids=["missing-llm-weight", "missing-lm-head", "unexpected-key", "wrong-shape"],
)
def test_a_load_that_would_leave_a_weight_uninitialised_fails_naming_the_key(tmp_path, change, named):
    directory = build_stock_checkpoint("mistral-7b", tmp_path / "base")
    _rewrite_weights(directory, change)
    with pytest.raises(IncompleteCheckpointError, match=named):
        LlavaNextCodebookForConditionalGeneration.from_pretrained(directory)
    with pytest.raises(IncompleteCheckpointError, match=named):
        load_pruned_model(directory, pruning_strategy="none")
    with pytest.raises(IncompleteCheckpointError, match="not returned"):
        convert_checkpoint(str(directory), str(tmp_path / "cb-missing"), tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_output_loading_info_is_still_returned_when_asked_for(hub_checkpoints):
    model, info = LlavaNextCodebookForConditionalGeneration.from_pretrained(
        hub_checkpoints[0]["llama3-8b"], output_loading_info=True
    )
    assert isinstance(model, LlavaNextCodebookForConditionalGeneration)
    assert not info["missing_keys"] and not info["unexpected_keys"]


# ------------------------------------------------------------------ convert, save again, reload
LOAD_SCRIPT = r"""
import json, sys, torch
from pathlib import Path
from safetensors.torch import save_file
from transformers import AutoModelForImageTextToText
out_dir, jobs = Path(sys.argv[1]), json.loads(sys.argv[2])
report = {}
# Remote-code loads first, before anything imports the installed package: a Hub user of a converted repo does not
# have it (and once imported, its registered classes would take precedence over the repo's files).
for name, (kind, repo, codebook) in sorted(jobs.items(), key=lambda job: job[1][0] != "remote-code"):
    if kind == "remote-code":
        assert "llava_codebook" not in sys.modules
        model = AutoModelForImageTextToText.from_pretrained(repo, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    else:
        from llava_codebook import load_pruned_model
        model = load_pruned_model(repo, codebook_repo=codebook)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["__codebook__"] = model.codebook.prototypes
    save_file(state, str(out_dir / f"{name}.safetensors"))
    report[name] = type(model).__name__
print("REPORT" + json.dumps(report))
"""


def seed_folder(cache: Path, repo_id: str, folder: Path) -> None:
    seed_hub_cache(cache, repo_id, {str(p.relative_to(folder)): p for p in folder.rglob("*") if p.is_file()})


@pytest.mark.slow
def test_llava_hf_repo_ids_load_every_tensor_offline_in_a_fresh_interpreter(hub_checkpoints, tmp_path):
    """What a user does: a stock llava-hf id through `load_pruned_model`, and a converted repo id through the Auto
    class and its remote code, both resolved by the real Hub client from its cache with HF_HUB_OFFLINE=1."""
    checkpoints, codebooks = hub_checkpoints
    cache, dumps = tmp_path / "hub-cache", tmp_path / "dumps"
    dumps.mkdir()
    jobs = {}
    for family, spec in FAMILIES.items():
        converted = convert_checkpoint(str(checkpoints[family]), str(codebooks[family]), tmp_path / family)
        seed_folder(cache, spec.hub_repo_id, checkpoints[family])
        seed_folder(cache, f"org/codebook-{family}", codebooks[family])
        seed_folder(cache, f"org/{family}-codebook", converted)
        jobs[f"{family}-stock"] = ("stock", spec.hub_repo_id, f"org/codebook-{family}")
        jobs[f"{family}-converted"] = ("remote-code", f"org/{family}-codebook", None)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_MODULES_CACHE": str(cache / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(dumps), json.dumps(jobs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,  # not the repo root: the installed package must not shadow the remote code
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT")]
    assert lines, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(lines[0][len("REPORT") :])
    assert set(report.values()) == {"LlavaNextCodebookForConditionalGeneration"} and len(report) == 2 * len(FAMILIES)
    for family in FAMILIES:
        expected = stock_tensors(checkpoints[family])
        prototypes = RedundancyCodebook.from_pretrained(codebooks[family]).prototypes
        for job in ("stock", "converted"):
            loaded = load_file(dumps / f"{family}-{job}.safetensors")
            assert torch.equal(loaded.pop("__codebook__"), prototypes)
            assert_every_tensor_equal(expected, loaded)


@pytest.mark.parametrize("family", ["mistral-7b", "llama3-8b"])
def test_a_converted_model_saves_again_and_the_copy_loads_and_generates_identically(hub_checkpoints, family, tmp_path):
    checkpoints, codebooks = hub_checkpoints
    first = convert_checkpoint(str(checkpoints[family]), str(codebooks[family]), tmp_path / "converted", threshold=0.3)
    model = LlavaNextCodebookForConditionalGeneration.from_pretrained(first)
    processor = AutoProcessor.from_pretrained(first, trust_remote_code=True)
    model.save_pretrained(tmp_path / "again")
    processor.save_pretrained(tmp_path / "again")
    again = LlavaNextCodebookForConditionalGeneration.from_pretrained(tmp_path / "again")
    assert_every_tensor_equal(tensors(model), tensors(again))
    assert torch.equal(again.codebook.prototypes, model.codebook.prototypes)
    inputs = chat_inputs(processor, sample_images())
    expected = model.generate(**inputs, **GREEDY, return_dict_in_generate=True)
    actual = again.generate(**inputs, **GREEDY, return_dict_in_generate=True)
    assert torch.equal(actual.sequences, expected.sequences)
    kept = expected.visual_token_selection
    assert (kept.num_kept < kept.num_total).any(), "the codebook must prune something for this to mean anything"
    for a, b in zip(actual.visual_token_selection.kept_indices, kept.kept_indices):
        assert torch.equal(a, b)


def test_push_to_hub_of_a_converted_model_uploads_its_codebook(hub_checkpoints, tmp_path):
    checkpoints, codebooks = hub_checkpoints
    first = convert_checkpoint(str(checkpoints["vicuna-7b"]), str(codebooks["vicuna-7b"]), tmp_path / "c")
    model = LlavaNextCodebookForConditionalGeneration.from_pretrained(first)
    uploaded = {}

    def record_upload(self, working_dir, repo_id, **kwargs):
        # What the stock push_to_hub would upload: the folder its save_pretrained wrote.
        uploaded.update(
            {str(p.relative_to(working_dir)): p.read_bytes() for p in Path(working_dir).rglob("*") if p.is_file()}
        )

    with (
        mock.patch.object(HfApi, "create_repo", autospec=True, return_value=mock.Mock(repo_id="org/again")),
        mock.patch("transformers.utils.hub.create_and_tag_model_card", return_value=ModelCard("---\n---\n")),
        mock.patch.object(PushToHubMixin, "_upload_modified_files", autospec=True, side_effect=record_upload),
    ):
        model.push_to_hub("org/again")
    assert "codebook/codebook.safetensors" in uploaded, sorted(uploaded)
    pushed = safetensors_load(uploaded["codebook/codebook.safetensors"])["prototypes"]
    assert torch.equal(pushed, load_file(first / "codebook" / "codebook.safetensors")["prototypes"])


def test_saving_a_model_whose_embedded_codebook_cannot_be_found_writes_nothing(hub_checkpoints, tmp_path):
    checkpoints, codebooks = hub_checkpoints
    first = convert_checkpoint(str(checkpoints["yi-34b"]), str(codebooks["yi-34b"]), tmp_path / "c")
    model = LlavaNextCodebookForConditionalGeneration.from_pretrained(first, pruning_strategy="none")
    (first / "codebook" / "codebook.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="codebook"):
        model.save_pretrained(tmp_path / "copy")
    assert not (tmp_path / "copy").exists()


# ------------------------------------------------------------------ bad values through from_pretrained
@pytest.mark.parametrize(
    "overrides",
    [{"codebook_threshold": float("nan")}, {"keep_ratio": 7.0}, {"min_visual_tokens": -2}],
    ids=lambda o: next(iter(o)),
)
def test_from_pretrained_refuses_invalid_pruning_values(hub_checkpoints, tmp_path, overrides):
    checkpoints, codebooks = hub_checkpoints
    repo = convert_checkpoint(str(checkpoints["mistral-7b"]), str(codebooks["mistral-7b"]), tmp_path / "c")
    from transformers import AutoModelForImageTextToText

    with pytest.raises(ValueError, match=next(iter(overrides))):
        AutoModelForImageTextToText.from_pretrained(repo, trust_remote_code=True, **overrides)
    with pytest.raises(ValueError, match=next(iter(overrides))):
        load_pruned_model(checkpoints["mistral-7b"], codebook_repo=str(codebooks["mistral-7b"]), **overrides)


# ------------------------------------------------------------------ the processor
def test_the_converted_processor_is_stable_across_save_load_save(hub_checkpoints, tmp_path):
    checkpoints, codebooks = hub_checkpoints
    repo = convert_checkpoint(str(checkpoints["llama3-8b"]), str(codebooks["llama3-8b"]), tmp_path / "c")
    first = AutoProcessor.from_pretrained(repo, trust_remote_code=True)
    first.save_pretrained(tmp_path / "p1")
    second = AutoProcessor.from_pretrained(tmp_path / "p1", trust_remote_code=True)
    second.save_pretrained(tmp_path / "p2")
    assert first.to_dict() == second.to_dict()
    for name in ("processor_config.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tmp_path / "p1" / name).exists():
            assert (tmp_path / "p1" / name).read_text() == (tmp_path / "p2" / name).read_text(), name
    saved = json.loads((tmp_path / "p2" / "tokenizer_config.json").read_text())
    assert "local_files_only" not in saved and "is_local" not in saved
    assert json.loads((tmp_path / "p2" / "processor_config.json").read_text())["auto_map"]["AutoProcessor"]


def test_with_the_package_imported_the_auto_classes_know_the_installed_classes(hub_checkpoints, tmp_path):
    from transformers import AutoModel, AutoModelForImageTextToText

    checkpoints, codebooks = hub_checkpoints
    repo = convert_checkpoint(str(checkpoints["vicuna-7b"]), str(codebooks["vicuna-7b"]), tmp_path / "c")
    model = AutoModelForImageTextToText.from_pretrained(repo)  # no trust_remote_code needed: the package is here
    assert type(model) is LlavaNextCodebookForConditionalGeneration
    assert_every_tensor_equal(stock_tensors(checkpoints["vicuna-7b"]), tensors(model))
    assert type(AutoModel.from_pretrained(repo)) is LlavaNextCodebookModel
    assert type(AutoProcessor.from_pretrained(repo)).__name__ == "LlavaNextCodebookProcessor"
