"""The codebook runtime: safetensors format with provenance, Hub resolution, push, and its error messages."""

import json
import os
import subprocess
import sys
from unittest import mock

import pytest
import torch
from huggingface_hub import HfApi
from safetensors import safe_open
from safetensors.torch import save_file

from llava_codebook import CodebookError, CodebookNotFoundError, RedundancyCodebook
from llava_codebook.codebook import resolve_codebook_file

from hub_helpers import seed_hub_cache


@pytest.fixture
def codebook():
    torch.manual_seed(0)
    return RedundancyCodebook(
        torch.randn(12, 64).half(),
        base_model="org/base@abc123",
        vision_feature_layer=-2,
        build_parameters={"top1_prob_thres": 0.15, "image_ids": ["a", "b"]},
    )


def test_save_writes_safetensors_with_str_metadata_a_json_config_and_a_card(codebook, tmp_path):
    codebook.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "codebook.safetensors"), framework="pt") as reader:
        assert list(reader.keys()) == ["prototypes"]
        meta = reader.metadata()
    assert all(isinstance(v, str) for v in meta.values())
    assert json.loads(meta["build_parameters"])["image_ids"] == ["a", "b"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["dim"] == 64 and config["num_prototypes"] == 12 and config["feature_space"] == "post-projector"
    card = (tmp_path / "README.md").read_text()
    assert "base_model: org/base" in card and "codebook_repo" in card


def test_round_trip_is_bit_exact_with_provenance(codebook, tmp_path):
    codebook.save_pretrained(tmp_path)
    loaded = RedundancyCodebook.from_pretrained(tmp_path)
    assert loaded.prototypes.dtype == torch.float16
    assert torch.equal(loaded.prototypes, codebook.prototypes)
    assert loaded.provenance() == codebook.provenance()


def test_a_bare_codebook_safetensors_loads(tmp_path):
    prototypes = torch.randn(3, 8)
    save_file({"prototypes": prototypes}, tmp_path / "codebook.safetensors")
    loaded = RedundancyCodebook.from_pretrained(tmp_path)
    assert torch.equal(loaded.prototypes, prototypes) and loaded.base_model is None


def test_a_pickled_file_given_to_the_loader_is_refused_and_points_to_import_seed(tmp_path):
    path = tmp_path / "codebook.safetensors"
    torch.save(torch.randn(3, 8), path)
    with pytest.raises(CodebookError, match="pickled PyTorch file, not safetensors.*import-seed"):
        RedundancyCodebook.from_pretrained(tmp_path)


def test_a_safetensors_file_whose_header_length_reads_like_a_pickle_opcode_loads(tmp_path):
    """A 640-byte header makes the file start with b"\\x80\\x02", as a protocol-2 pickle does; it is still safetensors."""
    path = tmp_path / "codebook.safetensors"
    for size in range(700):
        save_file({"prototypes": torch.ones(3, 8)}, path, {"note": "x" * size})
        if path.read_bytes()[:2] == b"\x80\x02":
            break
    else:
        pytest.fail("no metadata size gave a 640-byte header")
    assert torch.equal(RedundancyCodebook.from_pretrained(tmp_path).prototypes, torch.ones(3, 8))


def test_a_file_without_the_prototypes_tensor_is_refused(tmp_path):
    save_file({"weights": torch.randn(3, 8)}, tmp_path / "codebook.safetensors")
    with pytest.raises(CodebookError, match="no tensor named 'prototypes'"):
        RedundancyCodebook.from_pretrained(tmp_path)


def test_a_directory_without_the_file_names_what_it_holds(tmp_path):
    (tmp_path / "other.bin").write_text("x")
    with pytest.raises(CodebookNotFoundError, match=r"has no 'codebook.safetensors' \(it holds \['other.bin'\]\)"):
        RedundancyCodebook.from_pretrained(tmp_path)


def test_hub_reference_resolves_through_the_real_hf_hub_download_from_the_cache(codebook, tmp_path):
    codebook.save_pretrained(tmp_path / "src")
    cache = tmp_path / "cache"
    seed_hub_cache(cache, "org/codebook", {"codebook.safetensors": tmp_path / "src" / "codebook.safetensors"}, "v1")
    loaded = RedundancyCodebook.from_pretrained("org/codebook", revision="v1", cache_dir=cache, local_files_only=True)
    assert torch.equal(loaded.prototypes, codebook.prototypes)
    with pytest.raises(CodebookNotFoundError, match="revision 'main'"):
        RedundancyCodebook.from_pretrained("org/codebook", cache_dir=cache, local_files_only=True)


def test_missing_codebook_message_names_repo_revision_and_offline_mode(tmp_path):
    # HF_HUB_OFFLINE is read at import time, so the offline check runs in a fresh interpreter.
    script = (
        "from llava_codebook import RedundancyCodebook\n"
        "try:\n"
        f"    RedundancyCodebook.from_pretrained('org/missing-codebook', revision='v2', cache_dir={str(tmp_path)!r})\n"
        "except Exception as err:\n"
        "    print(type(err).__name__, err)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert "CodebookNotFoundError" in result.stdout
    assert "'org/missing-codebook'" in result.stdout and "revision 'v2'" in result.stdout
    assert "offline mode is ON" in result.stdout


def test_an_invalid_reference_says_it_is_neither_a_path_nor_a_repo_id():
    with pytest.raises(CodebookNotFoundError, match="neither an existing local path nor a valid Hub repo id"):
        resolve_codebook_file("not a//valid repo")


def test_push_to_hub_creates_the_repo_and_uploads_exactly_the_codebook_files(codebook):
    uploaded = {}

    def fake_upload_folder(self, *, repo_id, folder_path, revision=None, create_pr=None, commit_message=None, **kw):
        uploaded.update(repo_id=repo_id, revision=revision, create_pr=create_pr, files=sorted(os.listdir(folder_path)))
        card = open(os.path.join(folder_path, "README.md")).read()
        uploaded["card_mentions_repo"] = '"codebook_repo": "org/cb"' in card
        return "commit-info"

    with (
        mock.patch.object(HfApi, "create_repo", autospec=True) as create_repo,
        mock.patch.object(HfApi, "create_branch", autospec=True) as create_branch,
        mock.patch.object(HfApi, "upload_folder", autospec=True, side_effect=fake_upload_folder),
    ):
        assert codebook.push_to_hub("org/cb", revision="v1") == "commit-info"
        create_repo.assert_called_once_with(mock.ANY, "org/cb", private=None, exist_ok=True)
        create_branch.assert_called_once_with(mock.ANY, "org/cb", branch="v1", exist_ok=True)
    assert uploaded == {
        "repo_id": "org/cb",
        "revision": "v1",
        "create_pr": False,
        "files": ["README.md", "codebook.safetensors", "config.json"],
        "card_mentions_repo": True,
    }


def test_push_as_pull_request_does_not_create_a_branch(codebook):
    with (
        mock.patch.object(HfApi, "create_repo", autospec=True),
        mock.patch.object(HfApi, "create_branch", autospec=True) as create_branch,
        mock.patch.object(HfApi, "upload_folder", autospec=True) as upload,
    ):
        codebook.push_to_hub("org/cb", create_pr=True)
    create_branch.assert_not_called()
    assert upload.call_args.kwargs["create_pr"] is True


def test_non_2d_or_integer_prototypes_are_rejected():
    with pytest.raises(CodebookError, match=r"2-D tensor \[K, D\]"):
        RedundancyCodebook(torch.randn(4))
    with pytest.raises(CodebookError, match="floating point"):
        RedundancyCodebook(torch.ones(2, 3, dtype=torch.long))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_codebook_with_a_non_finite_entry_is_refused_at_construction_and_at_load(tmp_path, bad):
    prototypes = torch.randn(6, 8)
    prototypes[4, 3] = bad
    with pytest.raises(CodebookError, match=r"NaN or infinite values in 1 of its 6 prototypes \(rows \[4\]\)"):
        RedundancyCodebook(prototypes=prototypes)
    save_file({"prototypes": prototypes}, tmp_path / "codebook.safetensors")
    with pytest.raises(CodebookError, match="NaN or infinite"):
        RedundancyCodebook.from_pretrained(tmp_path)


def test_a_codebook_without_rows_is_refused_at_construction_and_at_load(tmp_path):
    with pytest.raises(CodebookError, match=r"at least one prototype.*\(0, 8\)"):
        RedundancyCodebook(prototypes=torch.zeros(0, 8))
    save_file({"prototypes": torch.zeros(0, 8)}, tmp_path / "codebook.safetensors")
    with pytest.raises(CodebookError, match="at least one prototype"):
        RedundancyCodebook.from_pretrained(tmp_path)


def test_a_model_refuses_a_corrupt_codebook_when_it_is_attached(tiny_model, tmp_path):
    prototypes = tiny_model.codebook.prototypes.clone()
    prototypes[0, 0] = float("nan")
    save_file({"prototypes": prototypes}, tmp_path / "codebook.safetensors")
    before = tiny_model.codebook
    with pytest.raises(CodebookError, match="NaN or infinite"):
        tiny_model.load_codebook(str(tmp_path))
    assert tiny_model.codebook is before


def test_the_card_table_keeps_values_holding_a_pipe_in_one_cell():
    codebook = RedundancyCodebook(torch.randn(3, 8), build_parameters={"template_text": "<|im_start|>user"})
    rows = [line for line in str(codebook.model_card()).splitlines() if "template_text" in line]
    assert len(rows) == 1
    # Unescaped pipes delimit cells: a row of two cells has exactly three.
    assert rows[0].replace("\\|", "").count("|") == 3
