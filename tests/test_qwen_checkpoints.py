"""Checkpoints shaped like the Qwen2-VL, Qwen2.5-VL and Qwen3-VL Hub repos (`qwen_fixtures.QWEN_FAMILIES`) survive every
load and save path of the product with every tensor equal to what the stock class loads from the same directory, and
convert into repos that ship exactly their family's files and load through remote code alone."""

import json
import os
import subprocess
import sys

import pytest
import torch
import transformers
from hub_helpers import seed_hub_cache
from qwen_fixtures import QUESTION, QWEN_FAMILIES, build_stock_checkpoints, stock_class
from safetensors import safe_open
from safetensors.torch import load_file
from test_family_checkpoints import CORE_FILES, assert_every_tensor_equal, tensors
from transformers import AutoImageProcessor, AutoTokenizer

from llava_codebook import FAMILIES, RedundancyCodebook, load_pruned_model
from llava_codebook.convert import convert_checkpoint

NAMES = list(QWEN_FAMILIES)
# The values each Hub repository documents, written out again on purpose (checking the replicas against
# `QWEN_FAMILIES` alone would be circular); the sources are cited in `qwen_fixtures`.
HUB_VALUES = {
    "qwen2-vl-2b": dict(model_type="qwen2_vl", vocab=151936, length=151657, tied=True, mrope=[16, 24, 24], patch=14),
    "qwen2.5-vl-3b": dict(
        model_type="qwen2_5_vl", vocab=151936, length=151665, tied=True, mrope=[16, 24, 24], patch=14
    ),
    "qwen2.5-vl-7b": dict(
        model_type="qwen2_5_vl", vocab=152064, length=151665, tied=False, mrope=[16, 24, 24], patch=14
    ),
    "qwen3-vl-2b": dict(model_type="qwen3_vl", vocab=151936, length=151669, tied=True, mrope=[24, 20, 20], patch=16),
}
# Where each Hub checkpoint keeps its weights: Qwen2-VL / Qwen2.5-VL in the layout before transformers 4.52 (language
# model at `model.*`, vision tower at `visual.*`), Qwen3-VL in transformers' own.
HUB_PREFIXES = {
    "qwen2_vl": ("model.embed_tokens.", "model.layers.", "model.norm.", "visual."),
    "qwen2_5_vl": ("model.embed_tokens.", "model.layers.", "model.norm.", "visual."),
    "qwen3_vl": ("model.language_model.", "model.visual."),
}
SHIPPED = {
    "qwen2_vl": {"configuration_qwen2_vl_codebook.py", "modeling_qwen2_vl_codebook.py", "qwen_vl_layout.py"},
    "qwen2_5_vl": {"configuration_qwen2_5_vl_codebook.py", "modeling_qwen2_5_vl_codebook.py", "qwen_vl_layout.py"},
    "qwen3_vl": {"configuration_qwen3_vl_codebook.py", "modeling_qwen3_vl_codebook.py", "qwen_vl_layout.py"},
}


# Loads each converted repo by Hub id through its remote code in a fresh interpreter where the package cannot be
# imported at all, and dumps every tensor (tied ones as copies: safetensors refuses shared storage).
LOAD_SCRIPT = r"""
import importlib.abc, json, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "llava_codebook":
            raise ModuleNotFoundError(f"No module named {name!r} (the package is absent in this test)")
sys.meta_path.insert(0, Absent())
from pathlib import Path
from safetensors.torch import save_file
from transformers import AutoModelForImageTextToText
out_dir, jobs = Path(sys.argv[1]), json.loads(sys.argv[2])
report = {}
for name, repo in jobs.items():
    model = AutoModelForImageTextToText.from_pretrained(repo, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    state["__codebook__"] = model.codebook.prototypes
    save_file(state, str(out_dir / f"{name}.safetensors"))
    report[name] = [type(model).__name__, model.config.model_type]
print("REPORT" + json.dumps(report))
"""


@pytest.fixture(scope="module")
def hub_checkpoints(tmp_path_factory):
    """family -> stock checkpoint directory, and family -> codebook directory of the right dimension."""
    root = tmp_path_factory.mktemp("qwen-checkpoints")
    checkpoints = build_stock_checkpoints(root / "stock")
    codebooks = {}
    for name, directory in checkpoints.items():
        hidden = json.loads((directory / "config.json").read_text())["text_config"]["hidden_size"]
        generator = torch.Generator().manual_seed(len(name))
        codebook = RedundancyCodebook(prototypes=torch.randn(12, hidden, generator=generator), base_model=name)
        codebooks[name] = codebook.save_pretrained(root / "codebooks" / name)
    return checkpoints, codebooks


def stock_tensors(name, directory) -> dict:
    return tensors(stock_class(name).from_pretrained(directory))


@pytest.mark.parametrize("name", NAMES)
def test_the_replica_has_the_hub_key_layout_real_ids_mrope_and_chat_template(hub_checkpoints, name):
    directory, real = hub_checkpoints[0][name], HUB_VALUES[name]
    with safe_open(str(directory / "model.safetensors"), "pt") as handle:
        keys = set(handle.keys())
        embed_key = next(k for k in keys if k.endswith("embed_tokens.weight"))
        embed = handle.get_slice(embed_key).get_shape()
        assert handle.get_slice(embed_key).get_dtype() == "BF16"
    prefixes = HUB_PREFIXES[real["model_type"]]
    assert all(key.startswith((*prefixes, "lm_head.")) for key in keys)
    assert all(any(key.startswith(prefix) for key in keys) for prefix in prefixes)
    assert ("lm_head.weight" in keys) == (not real["tied"])
    assert embed[0] == real["vocab"]
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == real["model_type"] and config["tie_word_embeddings"] == real["tied"]
    ids = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    assert [config[key] for key in ids] == [151655, 151656, 151652, 151653]
    assert config["text_config"]["rope_parameters"]["mrope_section"] == real["mrope"]
    assert config["text_config"]["head_dim" if "head_dim" in config["text_config"] else "hidden_size"] % 128 == 0
    assert config["vision_config"]["patch_size"] == real["patch"]
    assert config["vision_config"]["spatial_merge_size"] == config["vision_config"]["temporal_patch_size"] == 2
    processor = json.loads((directory / "processor_config.json").read_text())
    assert processor["video_processor"]["video_processor_type"] in ("Qwen2VLVideoProcessor", "Qwen3VLVideoProcessor")
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert len(tokenizer) == real["length"]
    expected_ids = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|image_pad|>": 151655}
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in expected_ids} == expected_ids
    assert tokenizer.bos_token is None and tokenizer.eos_token == "<|im_end|>"
    message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    rendered = tokenizer.apply_chat_template(message, add_generation_prompt=True, tokenize=False)
    assert rendered == QWEN_FAMILIES[name].expected_prompt
    assert rendered.endswith(
        "<|vision_start|><|image_pad|><|vision_end|>" + QUESTION + "<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize("name", NAMES)
def test_load_pruned_model_and_the_classes_own_from_pretrained_load_every_tensor(hub_checkpoints, name):
    checkpoints, codebooks = hub_checkpoints
    directory = checkpoints[name]
    expected = stock_tensors(name, directory)
    model = load_pruned_model(directory, codebook_repo=str(codebooks[name]), codebook_threshold=0.3)
    assert model.config.model_type == HUB_VALUES[name]["model_type"] + "_codebook"
    assert_every_tensor_equal(expected, tensors(model))
    family = FAMILIES[HUB_VALUES[name]["model_type"]]
    assert_every_tensor_equal(expected, tensors(family.generation_class.from_pretrained(directory)))
    stock_base = getattr(transformers, stock_class(name).__name__.replace("ForConditionalGeneration", "Model"))
    assert_every_tensor_equal(
        tensors(stock_base.from_pretrained(directory)), tensors(family.model_class.from_pretrained(directory))
    )


@pytest.mark.parametrize("name", NAMES)
def test_save_writes_the_hub_layout_that_the_stock_class_reads_back(hub_checkpoints, name, tmp_path):
    checkpoints, codebooks = hub_checkpoints
    model = load_pruned_model(checkpoints[name], codebook_repo=str(codebooks[name]))
    model.save_pretrained(tmp_path)
    with (
        safe_open(str(tmp_path / "model.safetensors"), "pt") as saved,
        safe_open(str(checkpoints[name] / "model.safetensors"), "pt") as hub,
    ):
        assert set(saved.keys()) == set(hub.keys())  # noqa: SIM118
    assert_every_tensor_equal(stock_tensors(name, checkpoints[name]), stock_tensors(name, tmp_path))


@pytest.mark.parametrize("name", NAMES)
def test_convert_ships_exactly_the_family_files_and_the_base_processor_unchanged(hub_checkpoints, name, tmp_path):
    checkpoints, codebooks = hub_checkpoints
    model_type = HUB_VALUES[name]["model_type"]
    out = convert_checkpoint(
        str(checkpoints[name]), str(codebooks[name]), tmp_path / "out", pruning_mode="budget", keep_ratio=0.3
    )
    assert {p.name for p in out.glob("*.py")} == SHIPPED[model_type] | CORE_FILES
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == f"{model_type}_codebook" and config["keep_ratio"] == 0.3
    assert config["position_mode"] == "original"
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForImageTextToText"}
    for file in ("processor_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (out / file).read_bytes() == (checkpoints[name] / file).read_bytes(), file
    assert type(AutoImageProcessor.from_pretrained(out)).__name__ == "Qwen2VLImageProcessorPil"
    card = (out / "README.md").read_text()
    assert f"- {model_type}" in card and "trust_remote_code=True" in card and "processor(videos=" in card
    assert "Qwen" in card


@pytest.mark.slow
def test_converted_repos_load_by_hub_id_through_remote_code_offline_in_a_fresh_interpreter(hub_checkpoints, tmp_path):
    checkpoints, codebooks = hub_checkpoints
    cache, dumps = tmp_path / "hub-cache", tmp_path / "dumps"
    dumps.mkdir()
    jobs = {}
    for name in NAMES:
        converted = convert_checkpoint(str(checkpoints[name]), str(codebooks[name]), tmp_path / name)
        repo = f"org/{name}-codebook"
        seed_hub_cache(cache, repo, {str(p.relative_to(converted)): p for p in converted.rglob("*") if p.is_file()})
        jobs[name] = repo
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_MODULES_CACHE": str(cache / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(dumps), json.dumps(jobs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        cwd=tmp_path,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT")]
    assert lines, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(lines[0][len("REPORT") :])
    for name in NAMES:
        family = FAMILIES[HUB_VALUES[name]["model_type"]]
        assert report[name] == [family.generation_class.__name__, family.model_type]
        loaded = load_file(dumps / f"{name}.safetensors")
        assert torch.equal(loaded.pop("__codebook__"), RedundancyCodebook.from_pretrained(codebooks[name]).prototypes)
        assert_every_tensor_equal(stock_tensors(name, checkpoints[name]), loaded)
