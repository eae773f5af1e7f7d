import json

import pytest
import torch
from typer.testing import CliRunner

from codebooks_helpers import save_images
from llava_codebook.cli import app
from llava_codebook.codebook import RedundancyCodebook
from llava_codebook.codebooks.tiny_pipeline import synthetic_images
from llava_codebook.tiny import build_tiny_default


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return build_tiny_default(tmp_path_factory.mktemp("tiny-model"))


def test_build_command_on_a_folder_writes_a_codebook_and_reports_unreadable_images(tiny_checkpoint, tmp_path):
    folder = tmp_path / "images"
    save_images(folder, synthetic_images(6))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    args = [
        "build", "--model", str(tiny_checkpoint), "--images", str(folder), "--out", str(tmp_path / "cb"),
        "--trust-remote-code", "--preset", "llava-ov", "--top1-prob-thres", "0.5", "--jsd-thres", "0.01",
        "--prototype-cluster-nums", "6", "--min-unique-images", "1", "--cluster-size-thres", "8",
        "--image-batch-size", "3", "--no-progress",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "1 unreadable and skipped" in result.output and "broken.jpg" in result.output
    codebook = RedundancyCodebook.from_pretrained(tmp_path / "cb")
    params = codebook.build_parameters
    assert params["preset"] == "llava-ov" and params["top1_prob_thres"] == 0.5 and params["cluster_size_thres"] == 8
    assert params["jsd_thres"] == 0.01 and params["min_unique_images"] == 1
    assert codebook.base_model == str(tiny_checkpoint) and codebook.dim == 64
    assert len(params["image_ids"]) == 6 and params["unreadable_image_ids"] == ["broken.jpg"]

    again = CliRunner().invoke(app, args)  # resumes: nothing is probed again
    assert again.exit_code == 0 and "0 probed now, 6 from earlier runs" in again.output


def test_build_command_explains_bad_input(tiny_checkpoint, tmp_path):
    result = CliRunner().invoke(
        app, ["build", "--model", str(tiny_checkpoint), "--images", str(tmp_path), "--out", str(tmp_path / "cb")]
    )
    assert result.exit_code == 1 and "No image files" in result.output
    result = CliRunner().invoke(
        app,
        ["build", "--model", str(tiny_checkpoint), "--images", str(tmp_path), "--out", str(tmp_path / "cb"),
         "--preset", "llava-9"],
    )  # fmt: skip
    assert result.exit_code == 1


def test_inspect_command_prints_the_provenance(tmp_path):
    RedundancyCodebook(
        prototypes=torch.ones(3, 4), base_model="org/base", build_parameters={"image_ids": list("abcdefghij")}
    ).save_pretrained(tmp_path)
    result = CliRunner().invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "org/base" in result.output and "<10 items>" in result.output
    info = json.loads(CliRunner().invoke(app, ["inspect", str(tmp_path), "--json"]).output)
    assert info["unique_rows"] == 1 and info["max_cosine_between_rows"] == pytest.approx(1.0)


def test_build_command_uses_a_given_pad_embedding_file(tiny_checkpoint, tmp_path):
    from llava_codebook.codebooks.store import tensor_digest

    folder = tmp_path / "images"
    save_images(folder, synthetic_images(3))
    pad = torch.randn(1, 64, dtype=torch.float16)  # the release stores pad embeddings as [1, D]
    torch.save(pad, tmp_path / "pad.pt")
    args = [
        "build", "--model", str(tiny_checkpoint), "--images", str(folder), "--out", str(tmp_path / "cb"),
        "--trust-remote-code", "--pad-embedding", str(tmp_path / "pad.pt"), "--top1-prob-thres", "0.5",
        "--prototype-cluster-nums", "4", "--min-unique-images", "0", "--no-progress",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    params = RedundancyCodebook.from_pretrained(tmp_path / "cb").build_parameters
    assert params["pad_embedding_sha256"] == tensor_digest(pad.flatten().float())
