"""Checkpoints shaped like the llava-hf LLaVA 1.5, LLaVA-OneVision and LLaVA-NeXT-Video repos
(`hub_fixtures.OTHER_FAMILIES`) survive every load and save path of the product with every tensor equal to what the
family's stock class loads from the same directory, and convert into repos that ship exactly their family's files."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from hub_fixtures import OTHER_FAMILIES, build_stock_checkpoints, stock_class
from hub_helpers import seed_hub_cache
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoTokenizer

from llava_codebook import FAMILIES, RedundancyCodebook, load_pruned_model
from llava_codebook.convert import convert_checkpoint

FAMILY_NAMES = list(OTHER_FAMILIES)
# What a converted repo of each family must ship as remote code: its own configuration and modeling files and the
# core they import, nothing of another family except what it reuses (NeXT-Video's images are LLaVA-NeXT's).
CORE_FILES = {
    "pruning_core.py",
    "pruning_loading.py",
    "pruning_settings.py",
    "pruning_config.py",
    "strategies.py",
    "signals.py",
    "selection.py",
    "codebook.py",
    "tile_skipping.py",
}
SHIPPED = {
    "llava-1.5-7b": {"configuration_llava_codebook.py", "modeling_llava_codebook.py"},
    "llava-onevision-qwen2-7b-ov": {
        "configuration_llava_onevision_codebook.py",
        "modeling_llava_onevision_codebook.py",
    },
    "llava-next-video-7b": {
        "configuration_llava_next_video_codebook.py",
        "modeling_llava_next_video_codebook.py",
        # LlavaNextImageLayout, and the LLaVA-NeXT config its module imports.
        "modeling_llava_next_codebook.py",
        "configuration_llava_next_codebook.py",
    },
}
MODEL_TYPES = {
    "llava-1.5-7b": "llava_codebook",
    "llava-onevision-qwen2-7b-ov": "llava_onevision_codebook",
    "llava-next-video-7b": "llava_next_video_codebook",
}


@pytest.fixture(scope="module")
def hub_checkpoints(tmp_path_factory):
    """family -> stock checkpoint directory, and family -> codebook directory of the right dimension."""
    root = tmp_path_factory.mktemp("family-checkpoints")
    checkpoints = build_stock_checkpoints(root / "stock", families=OTHER_FAMILIES)
    codebooks = {}
    for family, directory in checkpoints.items():
        hidden = json.loads((directory / "config.json").read_text())["text_config"]["hidden_size"]
        generator = torch.Generator().manual_seed(len(family))
        codebook = RedundancyCodebook(prototypes=torch.randn(12, hidden, generator=generator), base_model=family)
        codebooks[family] = codebook.save_pretrained(root / "codebooks" / family)
    return checkpoints, codebooks


def tensors(model) -> dict:
    return {name: tensor.detach() for name, tensor in model.state_dict().items()}


def assert_every_tensor_equal(expected: dict, actual: dict) -> None:
    assert sorted(actual) == sorted(expected), "parameter names differ"
    different = [k for k in expected if expected[k].dtype != actual[k].dtype or not torch.equal(expected[k], actual[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:5]}"


def stock_tensors(family, directory) -> dict:
    return tensors(stock_class(family).from_pretrained(directory))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_the_replica_has_the_hub_key_layout_and_real_ids(hub_checkpoints, family):
    directory, spec = hub_checkpoints[0][family], OTHER_FAMILIES[family]
    with safe_open(str(directory / "model.safetensors"), "pt") as handle:
        keys = set(handle.keys())
        embed = handle.get_slice("language_model.model.embed_tokens.weight").get_shape()
    prefixes = (
        "language_model.model.",
        "language_model.lm_head.",
        "vision_tower.vision_model.",
        "multi_modal_projector.",
    )
    assert all(key.startswith((*prefixes, "image_newline")) for key in keys)
    assert ("image_newline" in keys) == (spec.architecture != "llava")
    assert embed[0] == spec.vocab_size
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == spec.architecture and config["image_token_index"] == spec.image_token_id
    if spec.video_token is not None:
        assert config["video_token_index"] == spec.video_token[1]
        video = json.loads((directory / "processor_config.json").read_text())["video_processor"]
        assert video["video_processor_type"] in ("LlavaOnevisionVideoProcessor", "LlavaNextVideoVideoProcessor")
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert len(tokenizer) == spec.tokenizer_length
    assert tokenizer.convert_tokens_to_ids("<image>") == spec.image_token_id
    assert (
        tokenizer.apply_chat_template(
            [
                {
                    "role": "user",
                    "content": [{"type": "image"}, {"type": "text", "text": "What is shown in this image?"}],
                }
            ],
            add_generation_prompt=True,
            tokenize=False,
        )
        == spec.expected_prompt
    )


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_load_pruned_model_and_the_classes_own_from_pretrained_load_every_tensor(hub_checkpoints, family):
    checkpoints, codebooks = hub_checkpoints
    directory = checkpoints[family]
    expected = stock_tensors(family, directory)
    model = load_pruned_model(directory, codebook_repo=str(codebooks[family]), codebook_threshold=0.3)
    assert model.config.model_type == MODEL_TYPES[family]
    assert_every_tensor_equal(expected, tensors(model))
    classes = FAMILIES[OTHER_FAMILIES[family].architecture]
    assert_every_tensor_equal(expected, tensors(classes.generation_class.from_pretrained(directory)))
    stock_base = stock_class(family).__mro__[0].__name__.replace("ForConditionalGeneration", "Model")
    import transformers

    base_expected = tensors(getattr(transformers, stock_base).from_pretrained(directory))
    assert_every_tensor_equal(base_expected, tensors(classes.model_class.from_pretrained(directory)))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_save_writes_the_llava_hf_layout_that_the_stock_class_reads_back(hub_checkpoints, family, tmp_path):
    checkpoints, codebooks = hub_checkpoints
    model = load_pruned_model(checkpoints[family], codebook_repo=str(codebooks[family]))
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as saved:
        assert any(key.startswith("language_model.model.") for key in saved.keys())  # noqa: SIM118
    assert_every_tensor_equal(stock_tensors(family, checkpoints[family]), stock_tensors(family, tmp_path))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_convert_ships_exactly_the_family_files_and_the_base_processor_unchanged(hub_checkpoints, family, tmp_path):
    checkpoints, codebooks = hub_checkpoints
    out = convert_checkpoint(str(checkpoints[family]), str(codebooks[family]), tmp_path / "out", threshold=0.4)
    assert {p.name for p in out.glob("*.py")} == SHIPPED[family] | CORE_FILES
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == MODEL_TYPES[family] and config["codebook_threshold"] == 0.4
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForImageTextToText"}
    for name in ("processor_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (out / name).read_bytes() == (checkpoints[family] / name).read_bytes(), name
    assert type(AutoImageProcessor.from_pretrained(out)).__name__.endswith("Pil")
    card = (out / "README.md").read_text()
    assert f"- {OTHER_FAMILIES[family].architecture}" in card and "trust_remote_code=True" in card
    assert ("processor(videos=" in card) == (OTHER_FAMILIES[family].video_token is not None)
    assert ("frames = " in card) == ("videos=[frames]" in card)  # the card's video snippet defines what it uses
    # Every link of the card leads somewhere that exists: the base checkpoint, local here (no package index page).
    assert re.findall(r"\]\((\S+?)\)", card) == [str(checkpoints[family])]


LOAD_SCRIPT = r"""
import json, sys, torch
from pathlib import Path
from safetensors.torch import save_file
from transformers import AutoModelForImageTextToText
out_dir, jobs = Path(sys.argv[1]), json.loads(sys.argv[2])
report = {}
for name, repo in jobs.items():
    assert "llava_codebook" not in sys.modules
    model = AutoModelForImageTextToText.from_pretrained(repo, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["__codebook__"] = model.codebook.prototypes
    save_file(state, str(out_dir / f"{name}.safetensors"))
    report[name] = [type(model).__name__, model.config.model_type]
print("REPORT" + json.dumps(report))
"""


@pytest.mark.slow
def test_converted_repos_load_by_hub_id_through_remote_code_offline_in_a_fresh_interpreter(hub_checkpoints, tmp_path):
    checkpoints, codebooks = hub_checkpoints
    cache, dumps = tmp_path / "hub-cache", tmp_path / "dumps"
    dumps.mkdir()
    jobs = {}
    for family in FAMILY_NAMES:
        converted = convert_checkpoint(str(checkpoints[family]), str(codebooks[family]), tmp_path / family)
        seed_hub_cache(
            cache,
            f"org/{family}-codebook",
            {str(p.relative_to(converted)): p for p in converted.rglob("*") if p.is_file()},
        )
        jobs[family] = f"org/{family}-codebook"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_MODULES_CACHE": str(cache / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(dumps), json.dumps(jobs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT")]
    assert lines, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(lines[0][len("REPORT") :])
    for family in FAMILY_NAMES:
        generation = FAMILIES[OTHER_FAMILIES[family].architecture].generation_class.__name__
        assert report[family] == [generation, MODEL_TYPES[family]]
        loaded = load_file(dumps / f"{family}.safetensors")
        assert torch.equal(loaded.pop("__codebook__"), RedundancyCodebook.from_pretrained(codebooks[family]).prototypes)
        assert_every_tensor_equal(stock_tensors(family, checkpoints[family]), loaded)


PROCESSOR_SCRIPT = r"""
import json, sys
from transformers import AutoProcessor, AutoTokenizer
repos, kwargs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for family, repo in repos.items():
    try:
        print("LOADED", family, type(AutoProcessor.from_pretrained(repo, **kwargs)).__name__)
    except ImportError as err:  # the stock video processors need torchvision, absent beside this torch build
        if "Torchvision" not in str(err):
            raise
        print("NEEDS-TORCHVISION", family, type(AutoTokenizer.from_pretrained(repo, **kwargs)).__name__)
assert "llava_codebook" not in sys.modules  # a Hub user without the package
"""


def documented_processor_kwargs() -> dict:
    """The keyword arguments the docs' real-checkpoint snippets pass to `AutoProcessor.from_pretrained` (all alike)."""
    import ast

    from docs_blocks import REPO_ROOT, page_blocks

    found = []
    for block in page_blocks(REPO_ROOT / "docs" / "real-checkpoints.md"):
        if block.lang != "python":
            continue
        for node in ast.walk(ast.parse(block.code)):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "AutoProcessor.from_pretrained":
                found.append({kw.arg: ast.literal_eval(kw.value) for kw in node.keywords})
    assert len(found) >= 2 and all(kwargs == found[0] for kwargs in found), found
    return found[0]


@pytest.mark.slow
def test_a_converted_repos_processor_loads_as_the_docs_write_it_without_asking_anything(hub_checkpoints, tmp_path):
    """`AutoProcessor.from_pretrained("ov-codebook", ...)` as docs/real-checkpoints.md writes it, for every family, in a
    fresh interpreter without llava_codebook and with no terminal to answer transformers' remote-code question."""
    from hub_fixtures import build_stock_checkpoint

    checkpoints, codebooks = hub_checkpoints
    next_checkpoint = build_stock_checkpoint("vicuna-7b", tmp_path / "llava-next")
    hidden = json.loads((next_checkpoint / "config.json").read_text())["text_config"]["hidden_size"]
    next_codebook = RedundancyCodebook(torch.randn(4, hidden), base_model="vicuna").save_pretrained(tmp_path / "cb")
    sources = {
        **{f: (checkpoints[f], codebooks[f]) for f in FAMILY_NAMES},
        "llava-next": (next_checkpoint, next_codebook),
    }
    repos = {
        f: str(convert_checkpoint(str(base), str(cb), tmp_path / f"{f}-codebook")) for f, (base, cb) in sources.items()
    }
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    done = subprocess.run(
        [sys.executable, "-c", PROCESSOR_SCRIPT, json.dumps(repos), json.dumps(documented_processor_kwargs())],
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert "Do you wish to run the custom code" not in done.stdout + done.stderr
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = dict(line.split(" ", 1)[1].split(" ") for line in done.stdout.splitlines() if line.startswith("LOADED"))
    assert loaded["llava-1.5-7b"] == "LlavaProcessor" and loaded["llava-next"] == "LlavaNextCodebookProcessor"
    try:
        import torchvision  # noqa: F401

        video_loaded = True
    except Exception:
        video_loaded = False
    for family, name in (("llava-onevision-qwen2-7b-ov", "LlavaOnevisionProcessor"),
                         ("llava-next-video-7b", "LlavaNextVideoProcessor")):  # fmt: skip
        if video_loaded:
            assert loaded[family] == name
        else:
            assert f"NEEDS-TORCHVISION {family}" in done.stdout
