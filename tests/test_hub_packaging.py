"""Hub packaging: convert a stock checkpoint, then load it back through every Auto class, offline, from a seeded
Hub cache, in a fresh interpreter (as a user of `trust_remote_code` would)."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from huggingface_hub import HfApi
from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
from typer.testing import CliRunner

from llava_codebook.cli import app
from llava_codebook.codebook import RedundancyCodebook

from hub_helpers import seed_hub_cache

REMOTE_FILES = [
    "configuration_llava_next_codebook.py",
    "modeling_llava_next_codebook.py",
    "processing_llava_next_codebook.py",
    "codebook.py",
    "selection.py",
    "pruning_config.py",
    "pruning_core.py",
    "pruning_loading.py",
    "pruning_settings.py",
    "strategies.py",
    "signals.py",
    "tile_skipping.py",
]
# The other families' own remote-code files (their converted repos ship these plus the core above; see
# test_family_checkpoints.py for the exact set per family).
FAMILY_REMOTE_FILES = [
    "configuration_llava_codebook.py",
    "modeling_llava_codebook.py",
    "configuration_llava_onevision_codebook.py",
    "modeling_llava_onevision_codebook.py",
    "configuration_llava_next_video_codebook.py",
    "modeling_llava_next_video_codebook.py",
]
# What a user of the Hub repo is guaranteed to have installed (plus the standard library).
ALLOWED_IMPORTS = {"transformers", "torch", "huggingface_hub", "safetensors", "einops", "numpy", "PIL"}


@pytest.fixture(scope="module")
def stock_checkpoint(tmp_path_factory, tiny_processor, tiny_codebook):
    """A stock llava_next checkpoint and processor on disk (as llava-hf publishes them), plus a codebook dir."""
    from llava_codebook.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("stock")
    model = build_tiny_model(seed=0)
    fields = {k: v for k, v in model.config.to_dict().items() if k in LlavaNextConfig.__dataclass_fields__}
    stock = LlavaNextForConditionalGeneration(LlavaNextConfig(**fields))
    stock.load_state_dict(model.state_dict())
    stock.generation_config = model.generation_config
    stock.save_pretrained(root / "base")
    LlavaNextProcessor(
        image_processor=tiny_processor.image_processor,
        tokenizer=tiny_processor.tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    ).save_pretrained(root / "base")
    tiny_codebook.save_pretrained(root / "codebook")
    return root


def run_cli(*args):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


LOAD_SCRIPT = r"""
import json, sys, torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor
repo, codebook_file = sys.argv[1], sys.argv[2]
report = {}
config = AutoConfig.from_pretrained(repo, trust_remote_code=True)
report["config"] = [type(config).__name__, config.model_type, config.codebook_threshold]
report["base"] = type(AutoModel.from_pretrained(repo, trust_remote_code=True)).__name__
expected = load_file(codebook_file)["prototypes"]
for dtype in (torch.float32, torch.bfloat16):
    model = AutoModelForImageTextToText.from_pretrained(repo, trust_remote_code=True, dtype=dtype)
    prototypes = model.codebook.prototypes
    report[str(dtype)] = {
        "class": type(model).__name__,
        "module": type(model).__module__.startswith("transformers_modules"),
        "codebook_exact": prototypes.dtype == expected.dtype and torch.equal(prototypes, expected),
        "weights_dtype": str(model.lm_head.weight.dtype),
    }
processor = AutoProcessor.from_pretrained(repo, trust_remote_code=True)
report["processor"] = type(processor).__name__
image = Image.new("RGB", (90, 60), (255, 255, 255))
inputs = processor(images=[image], text=["<image> what is this ?"], return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
report["kept"] = out.visual_token_selection.num_kept.tolist()
report["total"] = out.visual_token_selection.num_total.tolist()
# A peer strategy that reads the vision tower's [CLS] attention and merges tokens: the probe ships as remote code too.
peer = model.generate(**inputs, pruning_strategy="visionzip", pruning_mode="budget", keep_tokens=3, max_new_tokens=2,
                      do_sample=False, return_dict_in_generate=True).visual_token_selection
report["peer"] = [peer.strategy, peer.num_kept.tolist(), peer.merged_features is not None]
print("REPORT" + json.dumps(report))
"""


def load_offline(repo: str, codebook_file: Path, cache: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_MODULES_CACHE": str(cache / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, repo, str(codebook_file)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=cache,  # not the repo root: the installed package must not shadow the remote code
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT")]
    assert lines, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(lines[0][len("REPORT") :])


def seed_repo(cache: Path, repo_id: str, folder: Path) -> None:
    files = {str(p.relative_to(folder)): p for p in folder.rglob("*") if p.is_file()}
    seed_hub_cache(cache, repo_id, files)


def check_report(report):
    assert report["config"] == ["LlavaNextCodebookConfig", "llava_next_codebook", 0.95]
    assert report["base"] == "LlavaNextCodebookModel"
    for dtype, weights in (("torch.float32", "torch.float32"), ("torch.bfloat16", "torch.bfloat16")):
        assert report[dtype] == {
            "class": "LlavaNextCodebookForConditionalGeneration",
            "module": True,
            "codebook_exact": True,
            "weights_dtype": weights,
        }
    assert report["processor"] == "LlavaNextCodebookProcessor"
    assert report["kept"][0] < report["total"][0], "a flat white image is mostly pruned"
    assert report["peer"][0] == "visionzip" and report["peer"][1][0] < report["total"][0] and report["peer"][2]


@pytest.mark.slow
def test_converted_repo_with_embedded_codebook_loads_through_every_auto_class_offline(stock_checkpoint, tmp_path):
    out = tmp_path / "converted"
    run_cli(
        "convert",
        "--base",
        str(stock_checkpoint / "base"),
        "--codebook",
        str(stock_checkpoint / "codebook"),
        "--out",
        str(out),
        "--threshold",
        "0.95",
    )
    config = json.loads((out / "config.json").read_text())
    assert config["codebook_repo"] == "." and config["codebook_filename"] == "codebook/codebook.safetensors"
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForImageTextToText"}
    processor_config = json.loads((out / "processor_config.json").read_text())
    assert processor_config["auto_map"] == {
        "AutoProcessor": "processing_llava_next_codebook.LlavaNextCodebookProcessor"
    }
    card = (out / "README.md").read_text()
    assert "pipeline_tag: image-text-to-text" in card and "trust_remote_code=True" in card
    cache = tmp_path / "cache"
    seed_repo(cache, "org/llava-next-codebook", out)
    check_report(load_offline("org/llava-next-codebook", out / "codebook" / "codebook.safetensors", cache))


@pytest.mark.slow
def test_codebook_reference_to_another_hub_repo_resolves_from_the_cache(stock_checkpoint, tmp_path):
    cache = tmp_path / "cache"
    seed_hub_cache(
        cache,
        "org/tiny-codebook",
        {"codebook.safetensors": stock_checkpoint / "codebook" / "codebook.safetensors"},
        "v1",
    )
    out = tmp_path / "converted"
    env = {"HF_HUB_CACHE": str(cache)}
    with mock.patch.dict(os.environ, env):
        # The converter itself resolves the codebook (to validate it) through the real hf_hub_download.
        with mock.patch("huggingface_hub.constants.HF_HUB_CACHE", str(cache)):
            run_cli(
                "convert",
                "--base",
                str(stock_checkpoint / "base"),
                "--codebook",
                "org/tiny-codebook",
                "--codebook-revision",
                "v1",
                "--out",
                str(out),
                "--threshold",
                "0.95",
            )
    config = json.loads((out / "config.json").read_text())
    assert (config["codebook_repo"], config["codebook_revision"]) == ("org/tiny-codebook", "v1")
    assert not (out / "codebook").exists()
    seed_repo(cache, "org/llava-next-codebook", out)
    check_report(load_offline("org/llava-next-codebook", stock_checkpoint / "codebook" / "codebook.safetensors", cache))


def test_convert_pins_a_hub_codebook_to_the_commit_it_loaded_when_no_revision_is_given(stock_checkpoint, tmp_path):
    cache = tmp_path / "cache"
    codebook_file = stock_checkpoint / "codebook" / "codebook.safetensors"
    commit = seed_hub_cache(cache, "org/tiny-codebook", {"codebook.safetensors": codebook_file})
    out = tmp_path / "converted"
    with mock.patch("huggingface_hub.constants.HF_HUB_CACHE", str(cache)):
        run_cli(
            "convert", "--base", str(stock_checkpoint / "base"), "--codebook", "org/tiny-codebook", "--out", str(out)
        )
    config = json.loads((out / "config.json").read_text())
    assert (config["codebook_repo"], config["codebook_revision"]) == ("org/tiny-codebook", commit)
    pinned = RedundancyCodebook.from_pretrained("org/tiny-codebook", revision=commit, cache_dir=cache)
    assert torch.equal(pinned.prototypes, RedundancyCodebook.from_file(codebook_file).prototypes)


def test_convert_push_uploads_the_folder_to_the_named_repo(stock_checkpoint, tmp_path):
    out = tmp_path / "converted"
    with (
        mock.patch.object(HfApi, "create_repo", autospec=True) as create_repo,
        mock.patch.object(HfApi, "upload_folder", autospec=True) as upload_folder,
    ):
        run_cli(
            "convert",
            "--base",
            str(stock_checkpoint / "base"),
            "--codebook",
            str(stock_checkpoint / "codebook"),
            "--out",
            str(out),
            "--push-to",
            "org/pruned",
            "--create-pr",
        )
    create_repo.assert_called_once_with(mock.ANY, "org/pruned", private=None, exist_ok=True)
    kwargs = upload_folder.call_args.kwargs
    assert (kwargs["repo_id"], kwargs["folder_path"], kwargs["create_pr"]) == ("org/pruned", str(out), True)
    uploaded = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert {"config.json", "model.safetensors", "README.md", "codebook/codebook.safetensors", *REMOTE_FILES} <= set(
        uploaded
    )
    assert 'from_pretrained("org/pruned", trust_remote_code=True' in (out / "README.md").read_text()


def test_convert_refuses_a_codebook_of_the_wrong_dimension(stock_checkpoint, tmp_path):
    RedundancyCodebook(torch.randn(3, 32)).save_pretrained(tmp_path / "bad")
    result = CliRunner().invoke(
        app,
        [
            "convert",
            "--base",
            str(stock_checkpoint / "base"),
            "--codebook",
            str(tmp_path / "bad"),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code != 0
    assert "dimension 32 but the language model's hidden size is 64" in result.stderr  # the one-line report


@pytest.mark.parametrize("name", REMOTE_FILES + FAMILY_REMOTE_FILES)
def test_remote_code_files_are_flat_and_import_only_what_hub_users_have(name):
    source = Path(__file__).resolve().parents[1] / "llava_codebook" / name
    tree = ast.parse(source.read_text())
    stdlib = set(sys.stdlib_module_names)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            assert "." not in (node.module or ""), f"{name}: relative import {node.module} is not a flat sibling"
            shipped = REMOTE_FILES + FAMILY_REMOTE_FILES
            assert f"{node.module}.py" in shipped, f"{name} imports {node.module}, which is not shipped"
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module]
            for module in modules:
                top = module.split(".")[0]
                assert top in ALLOWED_IMPORTS or top in stdlib, f"{name} imports {module}"


def test_load_pruned_model_loads_a_stock_checkpoint_with_settings_as_arguments(stock_checkpoint):
    from llava_codebook import LlavaNextCodebookForConditionalGeneration, load_pruned_model

    model = load_pruned_model(
        str(stock_checkpoint / "base"),
        codebook_repo=str(stock_checkpoint / "codebook"),
        codebook_threshold=0.5,
        pruning_mode="budget",
        keep_tokens=3,
    )
    assert isinstance(model, LlavaNextCodebookForConditionalGeneration)
    assert (model.config.model_type, model.config.codebook_threshold, model.config.keep_tokens) == (
        "llava_next_codebook",
        0.5,
        3,
    )
    stock = LlavaNextForConditionalGeneration.from_pretrained(stock_checkpoint / "base")
    for (name, got), want in zip(model.state_dict().items(), stock.state_dict().values()):
        assert torch.equal(got, want), name
    expected = RedundancyCodebook.from_pretrained(stock_checkpoint / "codebook").prototypes
    assert torch.equal(model.codebook.prototypes, expected)
    with pytest.raises(ValueError, match=r"outside \[-1.0, 1.0\]"):
        load_pruned_model(
            str(stock_checkpoint / "base"), codebook_repo=str(stock_checkpoint / "codebook"), codebook_threshold=7.0
        )
