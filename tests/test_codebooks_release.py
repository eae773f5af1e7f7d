import pytest
import torch
from typer.testing import CliRunner

from codebooks_helpers import SEED_CODEBOOKS
from llava_codebook.cli import app
from llava_codebook.codebook import CodebookError, RedundancyCodebook
from llava_codebook.codebooks.release import import_release_codebook

RELEASED = [
    ("llava15_coco_train_500samples_numPrototypes-454.pt", "liuhaotian/llava-v1.5-7b", (454, 4096)),
    ("llavaov_coco_train_1200samples_numPrototypes-45.pt", "lmms-lab/llava-onevision-qwen2-7b-ov", (45, 3584)),
]


@pytest.mark.parametrize("name, base_model, shape", RELEASED)
def test_released_codebook_imports_with_identical_shape_dtype_and_values(name, base_model, shape, tmp_path):
    source = SEED_CODEBOOKS / name
    if not source.is_file():
        pytest.skip(f"{source} is not present")
    original = torch.load(source, map_location="cpu", weights_only=True)
    import_release_codebook(source, base_model, out=tmp_path)
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
    codebook = import_release_codebook(source, "liuhaotian/llava-v1.5-7b")
    assert codebook.build_parameters["num_duplicate_rows"] == 25


def test_import_seed_command_writes_a_safetensors_codebook(tmp_path):
    source = tmp_path / "x_numPrototypes-3.pt"
    torch.save(torch.randn(3, 8, dtype=torch.float16), source)
    result = CliRunner().invoke(
        app, ["import-seed", str(source), "--base-model", "org/base", "--out", str(tmp_path / "cb")]
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
        import_release_codebook(pickled, "org/base")
    vector = tmp_path / "vector.pt"
    torch.save(torch.zeros(8), vector)
    with pytest.raises(CodebookError, match=r"float \[K, D\]"):
        import_release_codebook(vector, "org/base")
    wrong_count = tmp_path / "cb_numPrototypes-5.pt"
    torch.save(torch.zeros(4, 8), wrong_count)
    with pytest.raises(CodebookError, match="says 5 prototypes but holds 4"):
        import_release_codebook(wrong_count, "org/base")
    result = CliRunner().invoke(app, ["import-seed", str(vector), "--base-model", "o/b", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "float [K, D]" in result.output
