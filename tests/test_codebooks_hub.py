import json
from pathlib import Path
from unittest import mock

import pytest
import torch
from huggingface_hub import HfApi, constants
from huggingface_hub.hf_api import CommitInfo
from typer.testing import CliRunner

from codebooks_helpers import seed_hub_cache
from llava_codebook.cli import app
from llava_codebook.codebook import CodebookError, RedundancyCodebook
from llava_codebook.codebooks.hub import BaseModelUnreachableError, inspect_codebook, push_codebook

UPLOADED = ["README.md", "codebook.safetensors", "config.json"]


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An offline Hub cache holding the config of `org/base-64` (text hidden size 64)."""
    cache = tmp_path / "hub"
    config = json.dumps({"model_type": "llava_next", "vision_feature_layer": -2, "text_config": {"hidden_size": 64}})
    seed_hub_cache(cache, "org/base-64", {"config.json": config.encode()})
    original = json.dumps({"model_type": "llava", "hidden_size": 64, "mm_vision_select_layer": -1})  # liuhaotian-style
    seed_hub_cache(cache, "org/original-llava", {"config.json": original.encode()})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _codebook_dir(tmp_path, dim=64, base_model="org/base-64", feature_space="post-projector", layer=-2) -> Path:
    codebook = RedundancyCodebook(
        prototypes=torch.randn(5, dim), base_model=base_model, feature_space=feature_space,
        vision_feature_layer=layer, build_parameters={"jsd_thres": 2e-3},
    )  # fmt: skip
    return codebook.save_pretrained(tmp_path / f"cb-{dim}-{feature_space}-{base_model.replace('/', '-')}-{layer}")


@pytest.fixture
def patched_api():
    uploads = []

    def record_upload(self, *, repo_id, folder_path, **kwargs):
        uploads.append(sorted(p.name for p in Path(folder_path).iterdir()))
        readme = (Path(folder_path) / "README.md").read_text()
        uploads.append(readme)
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/abc", commit_message="m",
                          commit_description="", oid="abc", pr_url=None)  # fmt: skip

    with (
        mock.patch.object(HfApi, "create_repo", autospec=True) as create_repo,
        mock.patch.object(HfApi, "create_branch", autospec=True) as create_branch,
        mock.patch.object(HfApi, "upload_folder", autospec=True, side_effect=record_upload) as upload_folder,
    ):
        yield create_repo, create_branch, upload_folder, uploads


def test_push_creates_the_repo_and_uploads_exactly_the_codebook_files(tmp_path, offline_cache, patched_api):
    create_repo, create_branch, upload_folder, uploads = patched_api
    push_codebook(_codebook_dir(tmp_path), "org/codebook-tiny")
    create_repo.assert_called_once_with(mock.ANY, "org/codebook-tiny", private=None, exist_ok=True)
    create_branch.assert_not_called()
    assert upload_folder.call_args.kwargs["repo_id"] == "org/codebook-tiny"
    assert upload_folder.call_args.kwargs["revision"] is None and upload_folder.call_args.kwargs["create_pr"] is False
    assert uploads[0] == UPLOADED
    assert '"codebook_repo": "org/codebook-tiny"' in uploads[1] and "base_model: org/base-64" in uploads[1]


def test_push_to_a_revision_creates_the_branch_and_a_pr_targets_it(tmp_path, offline_cache, patched_api):
    create_repo, create_branch, upload_folder, uploads = patched_api
    push_codebook(_codebook_dir(tmp_path), "org/codebook-tiny", revision="v1")
    create_branch.assert_called_once_with(mock.ANY, "org/codebook-tiny", branch="v1", exist_ok=True)
    assert upload_folder.call_args.kwargs["revision"] == "v1"
    create_branch.reset_mock()
    push_codebook(_codebook_dir(tmp_path), "org/codebook-tiny", revision="v1", create_pr=True)
    create_branch.assert_not_called()
    assert upload_folder.call_args.kwargs["create_pr"] is True and upload_folder.call_args.kwargs["revision"] == "v1"


def test_push_refuses_a_codebook_whose_dimension_or_feature_space_disagrees_with_the_base_model(
    tmp_path, offline_cache, patched_api
):
    create_repo, _, upload_folder, _ = patched_api
    with pytest.raises(
        CodebookError, match="dimension 32 but its declared base model 'org/base-64' has text hidden size 64"
    ):
        push_codebook(_codebook_dir(tmp_path, dim=32), "org/codebook-tiny")
    with pytest.raises(CodebookError, match="feature space 'pre-projector'"):
        push_codebook(_codebook_dir(tmp_path, feature_space="pre-projector"), "org/codebook-tiny")
    with pytest.raises(CodebookError, match="vision feature layer -2 but .* 'org/original-llava' projects layer -1"):
        push_codebook(_codebook_dir(tmp_path, base_model="org/original-llava"), "org/codebook-tiny")
    create_repo.assert_not_called()
    upload_folder.assert_not_called()
    push_codebook(_codebook_dir(tmp_path, base_model="org/original-llava", layer=-1), "org/codebook-tiny")
    upload_folder.assert_called_once()


def test_push_says_clearly_when_the_base_model_config_cannot_be_reached(tmp_path, offline_cache, patched_api):
    _, _, upload_folder, _ = patched_api
    with pytest.raises(
        BaseModelUnreachableError,
        match="Could not read the config of the declared base model 'org/elsewhere'.*Offline mode is ON",
    ):
        push_codebook(_codebook_dir(tmp_path, base_model="org/elsewhere"), "org/codebook-tiny")
    upload_folder.assert_not_called()
    push_codebook(_codebook_dir(tmp_path, base_model="org/elsewhere"), "org/codebook-tiny", verify_base_model=False)
    upload_folder.assert_called_once()


def test_push_command_passes_repo_revision_and_pr(tmp_path, offline_cache, patched_api):
    _, create_branch, upload_folder, uploads = patched_api
    result = CliRunner().invoke(
        app, ["push", str(_codebook_dir(tmp_path)), "--repo", "org/cb", "--revision", "v1", "--create-pr"]
    )
    assert result.exit_code == 0, result.output
    assert upload_folder.call_args.kwargs["repo_id"] == "org/cb" and upload_folder.call_args.kwargs["create_pr"] is True
    assert uploads[0] == UPLOADED
    bad = CliRunner().invoke(app, ["push", str(_codebook_dir(tmp_path, dim=32)), "--repo", "org/cb"])
    assert bad.exit_code == 1 and "hidden size 64" in bad.output


def test_pull_and_inspect_from_the_offline_hub_cache(tmp_path, offline_cache):
    source = _codebook_dir(tmp_path)
    seed_hub_cache(offline_cache, "org/codebook-tiny", {"codebook.safetensors": source / "codebook.safetensors"})
    pulled = RedundancyCodebook.from_pretrained("org/codebook-tiny")  # the real hf_hub_download, offline
    assert torch.equal(pulled.prototypes, RedundancyCodebook.from_pretrained(source).prototypes)
    info = inspect_codebook("org/codebook-tiny")
    assert info["num_prototypes"] == 5 and info["dim"] == 64 and info["base_model"] == "org/base-64"
    assert info["unique_rows"] == 5 and info["build_parameters"] == {"jsd_thres": 2e-3}
    result = CliRunner().invoke(app, ["inspect", "org/codebook-tiny", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["num_prototypes"] == 5
    missing = CliRunner().invoke(app, ["inspect", "org/not-cached"])
    assert missing.exit_code == 1 and "offline mode is ON" in missing.output
