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
        "--image-batch-size", "3", "--no-progress", "--pad-token-id", "0",
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


# Loose thresholds so that six synthetic images give a non-empty codebook on the tiny model.
LOOSE = [
    "--trust-remote-code", "--preset", "llava-ov", "--top1-prob-thres", "0.5", "--jsd-thres", "0.01",
    "--prototype-cluster-nums", "6", "--min-unique-images", "1", "--cluster-size-thres", "8", "--no-progress",
    "--pad-token-id", "0",  # the llava-ov preset's pad row (151643) is beyond the tiny model's vocabulary
]  # fmt: skip


def build_args(checkpoint, folder, out, *extra):
    return ["build", "--model", str(checkpoint), "--images", str(folder), "--out", str(out), *LOOSE, *map(str, extra)]


def error_line(result, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def test_ctrl_c_during_build_says_how_many_images_are_done_and_how_to_resume(tiny_checkpoint, tmp_path, monkeypatch):
    from llava_codebook.codebooks import build as build_module

    folder = tmp_path / "images"
    save_images(folder, synthetic_images(6))
    args = build_args(tiny_checkpoint, folder, tmp_path / "cb", "--image-batch-size", "2")
    real_probe, calls = build_module.probe_images, []

    def probe_then_ctrl_c(*a, **k):
        calls.append(1)
        if len(calls) == 3:  # two batches of two images are finished
            raise KeyboardInterrupt
        return real_probe(*a, **k)

    monkeypatch.setattr(build_module, "probe_images", probe_then_ctrl_c)
    line = error_line(CliRunner().invoke(app, args), code=130)
    assert "Interrupted: 4 of 6 images are finished" in line and "Run the same command again" in line
    assert str(tmp_path / "cb" / "probes") in line
    assert not (tmp_path / "cb" / "codebook.safetensors").exists()

    monkeypatch.setattr(build_module, "probe_images", real_probe)
    resumed = CliRunner().invoke(app, args)
    assert resumed.exit_code == 0, resumed.output
    assert "2 probed now, 4 from earlier runs" in resumed.output


def test_build_resume_reprobes_images_whose_content_changed_under_the_same_name(tiny_checkpoint, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    names = save_images(first, synthetic_images(6, seed=0))
    save_images(second, synthetic_images(6, seed=1), names)  # same file names, other pictures
    (second / names[2]).write_bytes((first / names[2]).read_bytes())  # one picture is the same in both
    assert CliRunner().invoke(app, build_args(tiny_checkpoint, first, tmp_path / "cb")).exit_code == 0

    again = CliRunner().invoke(app, build_args(tiny_checkpoint, second, tmp_path / "cb"))
    assert again.exit_code == 0, again.output
    assert "5 probed now, 1 from earlier runs" in again.output
    assert "5 had a stored result of other content under their name and were probed again" in again.output
    fresh = CliRunner().invoke(app, build_args(tiny_checkpoint, second, tmp_path / "fresh"))
    assert fresh.exit_code == 0, fresh.output
    resumed, reference = (RedundancyCodebook.from_pretrained(tmp_path / d) for d in ("cb", "fresh"))
    assert torch.equal(resumed.prototypes, reference.prototypes)


def test_build_with_other_probe_settings_in_the_same_out_stops_and_names_what_differs(tiny_checkpoint, tmp_path):
    folder = tmp_path / "images"
    save_images(folder, synthetic_images(6))
    assert CliRunner().invoke(app, build_args(tiny_checkpoint, folder, tmp_path / "cb")).exit_code == 0
    line = error_line(CliRunner().invoke(app, build_args(tiny_checkpoint, folder, tmp_path / "cb", "--prompt", "hi")))
    assert "prompt:" in line and '"hi" now' in line and "other --work-dir" in line
    line = error_line(
        CliRunner().invoke(app, build_args(tiny_checkpoint, folder, tmp_path / "cb", "--dtype", "bfloat16"))
    )
    assert 'dtype: "float32" before, "bfloat16" now' in line
    line = error_line(
        CliRunner().invoke(app, build_args(tiny_checkpoint, folder, tmp_path / "cb", "--probe-ranks", "1,2"))
    )
    assert "probe_ranks:" in line


def test_a_work_dir_of_the_old_name_keyed_format_is_refused(tiny_checkpoint, tmp_path):
    folder = tmp_path / "images"
    save_images(folder, synthetic_images(2))
    (tmp_path / "cb" / "probes").mkdir(parents=True)
    (tmp_path / "cb" / "probes" / "run.json").write_text(json.dumps({"base_model": str(tiny_checkpoint)}))
    line = error_line(CliRunner().invoke(app, build_args(tiny_checkpoint, folder, tmp_path / "cb")))
    assert "another version of llava-codebook (store format 1, this version reads format 3" in line


def test_a_rebuild_into_the_same_out_writes_its_own_card(tiny_checkpoint, tmp_path):
    folder = tmp_path / "images"
    save_images(folder, synthetic_images(6))
    assert CliRunner().invoke(app, build_args(tiny_checkpoint, folder, tmp_path / "cb")).exit_code == 0
    assert "| `min_unique_images` | `1` |" in (tmp_path / "cb" / "README.md").read_text()
    rebuilt = CliRunner().invoke(app, build_args(tiny_checkpoint, folder, tmp_path / "cb", "--min-unique-images", "0"))
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "| `min_unique_images` | `0` |" in (tmp_path / "cb" / "README.md").read_text()
    assert sorted(p.name for p in (tmp_path / "cb").iterdir()) == [
        "README.md", "codebook.safetensors", "config.json", "probes"
    ]  # fmt: skip


def test_build_never_writes_into_the_model_or_the_image_folder(tiny_checkpoint, tmp_path):
    folder = tmp_path / "images"
    save_images(folder, synthetic_images(2))
    config = (tiny_checkpoint / "config.json").read_bytes()
    for args in (
        build_args(tiny_checkpoint, folder, tiny_checkpoint),
        build_args(tiny_checkpoint, folder, tmp_path / "cb", "--work-dir", folder / "probes"),
    ):
        line = error_line(CliRunner().invoke(app, args))
        assert "sources are never written to" in line
    assert (tiny_checkpoint / "config.json").read_bytes() == config
    assert sorted(p.name for p in folder.iterdir()) == ["img-000.png", "img-001.png"]


def test_build_options_override_the_preset_recipe_and_are_recorded(tiny_checkpoint, tmp_path):
    folder = tmp_path / "images"
    save_images(folder, synthetic_images(4))
    recipe = [
        "--conversation", "checkpoint", "--skip-first-token", "none", "--rank-precision", "float16",
        "--rank-ties", "group", "--cluster-dtype", "float16", "--index-rank-start", "0", "--group-selection", "unique",
    ]  # fmt: skip
    result = CliRunner().invoke(app, build_args(tiny_checkpoint, folder, tmp_path / "cb", *recipe))
    assert result.exit_code == 0, result.output
    params = RedundancyCodebook.from_pretrained(tmp_path / "cb").build_parameters
    assert params["conversation"] == "checkpoint" and params["template_text"] == (
        "<image>\nWhat does this image show? You must provide a single word that best describes the image."
    )
    assert (params["rank_dtype"], params["rank_ties"], params["cluster_dtype"]) == ("float16", "group", "float16")
    assert params["group_selection"] == "unique" and params["skip_first_token"] == "" and params["pad_token_id"] == 0

    line = error_line(CliRunner().invoke(app, build_args(tiny_checkpoint, folder, tmp_path / "x", "--rank-ties", "x")))
    assert "rank_ties='x' is unknown" in line and "'group'" in line
    args = build_args(tiny_checkpoint, folder, tmp_path / "y", "--group-selection", "once")
    line = error_line(CliRunner().invoke(app, args))
    assert "group_selection='once' is unknown" in line and "'unique'" in line


def test_min_unique_images_is_the_least_number_of_images_a_kept_cluster_spans(tiny_checkpoint, tmp_path):
    """`--min-unique-images 1` on six images keeps every cluster (each spans at least one image), as 0 does; 2 keeps
    only clusters drawn from two images or more; 7 cannot be met by six images and says so."""
    folder = tmp_path / "images"
    save_images(folder, synthetic_images(6))
    work = ["--work-dir", tmp_path / "probes"]  # probed once, clustered four times

    def build(minimum):
        result = CliRunner().invoke(
            app, build_args(tiny_checkpoint, folder, tmp_path / f"cb{minimum}", "--min-unique-images", minimum, *work)
        )
        return result, (
            RedundancyCodebook.from_pretrained(tmp_path / f"cb{minimum}") if result.exit_code == 0 else None
        )

    spans = {}
    for minimum in (0, 1, 2):
        result, codebook = build(minimum)
        assert result.exit_code == 0, result.output
        params = codebook.build_parameters
        images_of = {}
        for cluster, image in zip(params["prototype_clusters"], params["prototype_image_ids"]):
            images_of.setdefault(cluster, set()).add(image)
        assert all(len(images) >= minimum for images in images_of.values())
        spans[minimum] = (codebook.prototypes, sorted(len(images) for images in images_of.values()))
    assert torch.equal(spans[0][0], spans[1][0])
    assert spans[2][1] == [n for n in spans[1][1] if n >= 2] and min(spans[1][1]) == 1  # 2 drops the one-image ones
    line = error_line(build(7)[0])
    assert "spans at least min_unique_images=7 images" in line
