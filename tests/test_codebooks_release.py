import json

import pytest
import torch
from huggingface_hub import constants
from typer.testing import CliRunner

from codebooks_helpers import SEED_CODEBOOKS, seed_hub_cache
from llava_codebook.cli import app
from llava_codebook.codebook import CodebookError, RedundancyCodebook
from llava_codebook.codebooks.release import import_release_codebook

RELEASED = [
    ("llava15_coco_train_500samples_numPrototypes-454.pt", "llava-hf/llava-1.5-7b-hf", (454, 4096)),
    ("llavaov_coco_train_1200samples_numPrototypes-45.pt", "llava-hf/llava-onevision-qwen2-7b-ov-hf", (45, 3584)),
]


@pytest.mark.parametrize("name, base_model, shape", RELEASED)
def test_released_codebook_imports_with_identical_shape_dtype_and_values(name, base_model, shape, tmp_path):
    source = SEED_CODEBOOKS / name
    if not source.is_file():
        pytest.skip(f"{source} is not present")
    original = torch.load(source, map_location="cpu", weights_only=True)
    # The base model's config is not at hand here (test_released_codebooks.py checks it against Hub replicas).
    import_release_codebook(source, base_model, out=tmp_path, verify_base_model=False)
    loaded = RedundancyCodebook.from_pretrained(tmp_path)
    assert tuple(loaded.prototypes.shape) == shape == tuple(original.shape)
    assert loaded.prototypes.dtype == original.dtype == torch.float16
    assert torch.equal(loaded.prototypes, original)
    assert loaded.base_model == base_model
    assert loaded.build_parameters["source_file"] == name
    assert len(loaded.build_parameters["source_sha256"]) == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "codebook.safetensors", "config.json"]


def test_llava15_release_has_its_25_duplicate_rows_recorded(tmp_path):
    source = SEED_CODEBOOKS / RELEASED[0][0]
    if not source.is_file():
        pytest.skip(f"{source} is not present")
    codebook = import_release_codebook(source, "llava-hf/llava-1.5-7b-hf", verify_base_model=False)
    assert codebook.build_parameters["num_duplicate_rows"] == 25


def test_import_seed_command_writes_a_safetensors_codebook(tmp_path):
    source = tmp_path / "x_numPrototypes-3.pt"
    torch.save(torch.randn(3, 8, dtype=torch.float16), source)
    result = CliRunner().invoke(
        app,
        [
            "import-seed",
            str(source),
            "--base-model",
            "org/base",
            "--no-verify-base-model",
            "--out",
            str(tmp_path / "cb"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "3 x 8" in result.output
    assert torch.equal(
        RedundancyCodebook.from_pretrained(tmp_path / "cb").prototypes, torch.load(source, weights_only=True)
    )


class NotATensor:
    pass


def test_files_that_need_arbitrary_unpickling_or_hold_no_matrix_are_refused(tmp_path):
    pickled = tmp_path / "evil.pt"
    torch.save({"payload": NotATensor()}, pickled)
    with pytest.raises(CodebookError, match="tensor-only"):
        import_release_codebook(pickled, "org/base", verify_base_model=False)
    vector = tmp_path / "vector.pt"
    torch.save(torch.zeros(8), vector)
    with pytest.raises(CodebookError, match=r"float \[K, D\]"):
        import_release_codebook(vector, "org/base", verify_base_model=False)
    wrong_count = tmp_path / "cb_numPrototypes-5.pt"
    torch.save(torch.zeros(4, 8), wrong_count)
    with pytest.raises(CodebookError, match="says 5 prototypes but holds 4"):
        import_release_codebook(wrong_count, "org/base", verify_base_model=False)
    result = CliRunner().invoke(
        app, ["import-seed", str(vector), "--base-model", "o/b", "--no-verify-base-model", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1 and "float [K, D]" in result.output


PAD_EMBEDDINGS = sorted((SEED_CODEBOOKS / "pad_embs").glob("*.pt"))


@pytest.mark.parametrize("shape", [(4096,), (1, 4096)])
def test_a_single_vector_is_refused_as_no_prototype_matrix_and_named_as_a_pad_embedding(shape, tmp_path):
    vector = _seed_file(tmp_path, torch.randn(*shape, dtype=torch.float16), "pad_token_ids_0_word_token_embedding.pt")
    args = [
        "import-seed",
        str(vector),
        "--base-model",
        "org/base",
        "--no-verify-base-model",
        "--out",
        str(tmp_path / "o"),
    ]
    line = error_line(CliRunner().invoke(app, args))
    assert f"shape {list(shape)}, not a float [K, D] prototype matrix" in line and "--pad-embedding" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("pad", PAD_EMBEDDINGS, ids=lambda path: path.name)
def test_the_released_pad_embeddings_are_refused_before_the_base_model_is_read(pad, tmp_path, monkeypatch):
    # An empty offline cache: were the base model read first, the error would be about it.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    args = ["import-seed", str(pad), "--base-model", "llava-hf/llava-1.5-7b-hf", "--out", str(tmp_path / "o")]
    line = error_line(CliRunner().invoke(app, args))
    assert "not a float [K, D] prototype matrix" in line and "pad-token embedding" in line


def _seed_file(tmp_path, value, name="seed.pt"):
    torch.save(value, tmp_path / name)
    return tmp_path / name


def error_line(result, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def test_import_seed_refuses_a_non_empty_out_and_overwrite_replaces_the_card_too(tmp_path):
    first = _seed_file(tmp_path, torch.randn(3, 8), "first.pt")
    second = _seed_file(tmp_path, torch.randn(5, 8), "second.pt")
    out = tmp_path / "cb"
    assert (
        CliRunner()
        .invoke(
            app, ["import-seed", str(first), "--base-model", "org/first", "--no-verify-base-model", "--out", str(out)]
        )
        .exit_code
        == 0
    )
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    args = ["import-seed", str(second), "--base-model", "org/second", "--no-verify-base-model", "--out", str(out)]
    line = error_line(CliRunner().invoke(app, args))
    assert "is not empty" in line and "--overwrite" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    result = CliRunner().invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    codebook = RedundancyCodebook.from_pretrained(out)
    assert codebook.num_prototypes == 5 and codebook.base_model == "org/second"
    card = (out / "README.md").read_text()
    assert "org/second" in card and "org/first" not in card  # the card describes the codebook it sits beside


def test_import_seed_never_replaces_the_directory_holding_its_source(tmp_path):
    source = _seed_file(tmp_path, torch.randn(3, 8))
    args = [
        "import-seed",
        str(source),
        "--base-model",
        "org/base",
        "--no-verify-base-model",
        "--out",
        str(tmp_path),
        "--overwrite",
    ]
    line = error_line(CliRunner().invoke(app, args))
    assert "contains the release file" in line and source.is_file()


def test_a_dict_of_several_entries_is_refused_with_its_keys_and_key_picks_one(tmp_path):
    prototypes = torch.randn(4, 8, dtype=torch.float16)
    source = _seed_file(tmp_path, {"prototypes": prototypes, "centroids": torch.randn(2, 8), "step": torch.tensor(3)})
    base = ["import-seed", str(source), "--base-model", "org/base", "--no-verify-base-model", "--out"]
    line = error_line(CliRunner().invoke(app, [*base, str(tmp_path / "a")]))
    assert "'prototypes' (float16 [4, 8])" in line and "'centroids' (float32 [2, 8])" in line and "'step'" in line
    assert "--key" in line and not (tmp_path / "a").exists()

    result = CliRunner().invoke(app, [*base, str(tmp_path / "b"), "--key", "prototypes"])
    assert result.exit_code == 0, result.output
    assert "'prototypes'" in result.output
    codebook = RedundancyCodebook.from_pretrained(tmp_path / "b")
    assert torch.equal(codebook.prototypes, prototypes) and codebook.build_parameters["source_key"] == "prototypes"

    line = error_line(CliRunner().invoke(app, [*base, str(tmp_path / "c"), "--key", "nope"]))
    assert "no entry 'nope'" in line and "'prototypes'" in line


def test_a_single_entry_dict_is_used_and_says_which_entry(tmp_path):
    prototypes = torch.randn(3, 8)
    source = _seed_file(tmp_path, {"codebook": prototypes})
    result = CliRunner().invoke(
        app, ["import-seed", str(source), "--base-model", "o/b", "--no-verify-base-model", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 0 and "(the dict entry 'codebook')" in result.output
    assert RedundancyCodebook.from_pretrained(tmp_path / "o").build_parameters["source_key"] == "codebook"


def test_import_seed_without_base_model_names_the_option(tmp_path):
    source = _seed_file(tmp_path, torch.randn(3, 8))
    line = error_line(CliRunner().invoke(app, ["import-seed", str(source), "--out", str(tmp_path / "o")]), code=2)
    assert "Missing option '--base-model'" in line


# ------------------------------------------------------------------ --base-model is checked against its config
@pytest.fixture
def base_models(tmp_path, monkeypatch):
    """An offline Hub cache with the config.json of a few base models (hidden size 8 unless said otherwise)."""
    cache = tmp_path / "hub"
    configs = {
        # llava-1.5-7b-hf's config.json leaves Llama's default hidden size (4096) out of text_config.
        "llava-hf/llava-1.5-7b-hf": {
            "model_type": "llava",
            "vision_feature_layer": -2,
            "text_config": {"model_type": "llama"},
        },
        "org/onevision-8": {
            "model_type": "llava_onevision",
            "vision_feature_layer": -1,
            "text_config": {"model_type": "qwen2", "hidden_size": 8},
        },
        "org/qwen2-vl": {"model_type": "qwen2_vl", "text_config": {"hidden_size": 8}},
    }
    for repo, config in configs.items():
        seed_hub_cache(cache, repo, {"config.json": json.dumps(config).encode()})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_import_seed_records_the_base_models_own_feature_layer_after_checking_family_and_size(tmp_path, base_models):
    source = _seed_file(tmp_path, torch.randn(3, 8))
    result = CliRunner().invoke(
        app, ["import-seed", str(source), "--base-model", "org/onevision-8", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 0, result.output
    codebook = RedundancyCodebook.from_pretrained(tmp_path / "o")
    assert (codebook.base_model, codebook.vision_feature_layer) == ("org/onevision-8", -1)


def test_import_seed_reads_the_hidden_size_a_llava_hf_config_leaves_to_its_default(tmp_path, base_models):
    wrong = _seed_file(tmp_path, torch.randn(3, 8), "wrong.pt")
    line = error_line(
        CliRunner().invoke(
            app, ["import-seed", str(wrong), "--base-model", "llava-hf/llava-1.5-7b-hf", "--out", str(tmp_path / "w")]
        )
    )
    assert "dimension 8" in line and "hidden size 4096" in line and not (tmp_path / "w").exists()
    right = _seed_file(tmp_path, torch.randn(3, 4096, dtype=torch.float16), "right.pt")
    result = CliRunner().invoke(
        app, ["import-seed", str(right), "--base-model", "llava-hf/llava-1.5-7b-hf", "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 0, result.output


def test_import_seed_refuses_a_base_model_of_an_unsupported_family_or_one_it_cannot_read(tmp_path, base_models):
    source = _seed_file(tmp_path, torch.randn(3, 8))
    line = error_line(
        CliRunner().invoke(
            app, ["import-seed", str(source), "--base-model", "org/qwen2-vl", "--out", str(tmp_path / "q")]
        )
    )
    assert "model_type 'qwen2_vl'" in line and "llava_onevision" in line
    line = error_line(
        CliRunner().invoke(
            app, ["import-seed", str(source), "--base-model", "org/missing", "--out", str(tmp_path / "m")]
        )
    )
    assert "org/missing" in line and "--no-verify-base-model" in line
    assert not (tmp_path / "q").exists() and not (tmp_path / "m").exists()


RELEASE_CARDS = [
    (RELEASED[0][0], "llava-hf/llava-1.5-7b-hf", {"model_type": "llava", "text_config": {"model_type": "llama"}},
     "LLaVA 1.5", "llava_codebook", 0.45),
    (RELEASED[1][0], "llava-hf/llava-onevision-qwen2-7b-ov-hf",
     {"model_type": "llava_onevision", "vision_feature_layer": -1,
      "text_config": {"model_type": "qwen2", "hidden_size": 3584}},
     "LLaVA-OneVision", "llava_onevision_codebook", 0.5),
]  # fmt: skip


@pytest.mark.parametrize("name, base_model, config, family, model_type, threshold", RELEASE_CARDS)
def test_an_imported_release_card_names_its_family_model_type_and_the_releases_threshold(
    name, base_model, config, family, model_type, threshold, tmp_path, monkeypatch
):
    source = SEED_CODEBOOKS / name
    if not source.is_file():
        pytest.skip(f"{source} is not present")
    seed_hub_cache(tmp_path / "hub", base_model, {"config.json": json.dumps(config).encode()})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    args = ["import-seed", str(source), "--base-model", base_model, "--out", str(tmp_path / "cb")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    card = (tmp_path / "cb" / "README.md").read_text()
    assert f"for {family}. A {family} model configured with" in card
    assert f"codebook_threshold={threshold})" in card and f'"codebook_threshold": {threshold}' in card
    assert f"a `{model_type}` model" in card and f"{family} (`{model_type.removesuffix('_codebook')}`)" in card
    assert "LLaVA-NeXT" not in card and "0.11" not in card and "llava_next_codebook" not in card
    # The card's code runs against the codebook it describes: its load call names this codebook and threshold.
    assert f'load_pruned_model("{base_model}", codebook_repo="<this repo id>", codebook_threshold={threshold})' in card
