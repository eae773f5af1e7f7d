import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open

from codebooks_helpers import run_offline, save_images, seed_hub_cache
from llava_codebook.codebook import RedundancyCodebook
from llava_codebook.codebooks import build as build_module
from llava_codebook.codebooks.build import CodebookBuildError, build_codebook
from llava_codebook.codebooks.data import dataset_images, folder_images, pil_images
from llava_codebook.codebooks.store import WorkDirMismatchError
from llava_codebook.codebooks.tiny_pipeline import TINY_PRESET, build_tiny_pipeline_codebook, synthetic_images
from llava_codebook.tiny import build_tiny_model, build_tiny_processor


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_model(0), build_tiny_processor()


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    save_images(folder, synthetic_images(8))
    (folder / "img-004.png").write_bytes(b"not a png at all")  # replaces a good image with a corrupt file
    return folder


def _build(tiny, images, **kwargs):
    kwargs.setdefault("preset", TINY_PRESET)
    kwargs.setdefault("image_batch_size", 2)
    kwargs.setdefault("base_model", "org/tiny-llava")
    return build_codebook(*tiny, images, progress=False, **kwargs)


def test_tiny_pipeline_builds_a_loadable_codebook_with_provenance(tmp_path):
    result = build_tiny_pipeline_codebook(out=tmp_path / "cb", num_images=8)
    loaded = RedundancyCodebook.from_pretrained(tmp_path / "cb")
    assert loaded.dim == 64 and loaded.num_prototypes == result.summary.num_prototypes > 0
    assert torch.equal(loaded.prototypes, result.codebook.prototypes)
    with safe_open(str(tmp_path / "cb" / "codebook.safetensors"), "pt") as reader:
        params = json.loads(reader.metadata()["build_parameters"])
    assert params["image_ids"] == [f"synthetic-{i:03d}" for i in range(8)]
    assert params["jsd_thres"] == TINY_PRESET.jsd_thres and params["divergence"] == "release"
    assert len(params["prototype_image_ids"]) == loaded.num_prototypes
    config = json.loads((tmp_path / "cb" / "config.json").read_text())
    assert config["base_model"] == "llava-codebook/tiny-random" and config["package_version"]
    card = (tmp_path / "cb" / "README.md").read_text()
    assert "base_model: llava-codebook/tiny-random" in card and "codebook_repo" in card


def test_unreadable_images_are_skipped_counted_and_reported(tiny, image_folder, tmp_path):
    result = _build(tiny, folder_images(image_folder), work_dir=tmp_path)
    summary = result.summary
    assert summary.num_images == 8 and summary.num_unreadable == 1
    assert summary.unreadable[0]["image_id"] == "img-004.png" and "img-004.png" in str(summary)
    assert "img-004.png" not in result.codebook.build_parameters["image_ids"]
    assert result.codebook.build_parameters["unreadable_image_ids"] == ["img-004.png"]
    assert summary.num_probes == 7 * 16


def test_an_interrupted_build_resumes_and_gives_the_same_codebook(tiny, image_folder, tmp_path, monkeypatch):
    reference = _build(tiny, folder_images(image_folder), out=tmp_path / "reference")

    real_write, written = build_module.ResultStore.write, []

    def write_then_crash(self, key, result):
        if len(written) == 3:  # after one full batch and half of the next
            raise KeyboardInterrupt
        written.append(key)
        real_write(self, key, result)

    monkeypatch.setattr(build_module.ResultStore, "write", write_then_crash)
    with pytest.raises(KeyboardInterrupt):
        _build(tiny, folder_images(image_folder), out=tmp_path / "resumed")
    monkeypatch.setattr(build_module.ResultStore, "write", real_write)
    assert len(list((tmp_path / "resumed" / "probes" / "images").iterdir())) == 3

    resumed = _build(tiny, folder_images(image_folder), out=tmp_path / "resumed")
    assert resumed.summary.num_resumed == 3 and resumed.summary.num_probed_now == 4
    assert torch.equal(resumed.codebook.prototypes, reference.codebook.prototypes)
    metadata = [
        safe_open(str(tmp_path / run / "codebook.safetensors"), "pt").metadata() for run in ("reference", "resumed")
    ]
    assert metadata[0] == metadata[1]  # every build parameter, image id and per-prototype provenance
    assert (tmp_path / "resumed" / "config.json").read_text() == (tmp_path / "reference" / "config.json").read_text()
    again = _build(tiny, folder_images(image_folder), out=tmp_path / "resumed")
    assert again.summary.num_probed_now == 0 and again.summary.num_resumed == 7


def test_a_work_dir_from_another_model_is_refused(tiny, tmp_path):
    images = synthetic_images(4)
    _build(tiny, pil_images(images), work_dir=tmp_path)
    other = (build_tiny_model(seed=1), tiny[1])
    with pytest.raises(WorkDirMismatchError, match="projector_sha256"):
        _build(other, pil_images(images), work_dir=tmp_path)


def test_stages_3_to_5_rerun_with_new_thresholds_without_probing(tiny, tmp_path, monkeypatch):
    images = synthetic_images(6)
    first = _build(tiny, pil_images(images), work_dir=tmp_path)

    def no_probing(*args, **kwargs):
        raise AssertionError("probed again")

    monkeypatch.setattr(build_module, "probe_images", no_probing)
    looser = _build(tiny, pil_images(images), work_dir=tmp_path, preset_overrides={"min_unique_images": 0})
    assert looser.summary.num_resumed == 6 and looser.codebook.num_prototypes >= first.codebook.num_prototypes
    with pytest.raises(CodebookBuildError, match="min_unique_images=99"):
        _build(tiny, pil_images(images), work_dir=tmp_path, preset_overrides={"min_unique_images": 99})
    with pytest.raises(CodebookBuildError, match="0 of 96 probes were redundant"):
        _build(tiny, pil_images(images), work_dir=tmp_path, preset_overrides={"top1_prob_thres": 0.0})


def test_num_images_and_id_lists_restrict_the_source(tiny, image_folder, tmp_path):
    first = _build(
        tiny,
        folder_images(image_folder),
        work_dir=tmp_path / "a",
        num_images=3,
        preset_overrides={"min_unique_images": 0},
    )
    assert first.codebook.build_parameters["image_ids"] == ["img-000.png", "img-001.png", "img-002.png"]
    chosen = _build(tiny, folder_images(image_folder, ids=["img-007.png", "img-001.png"]), work_dir=tmp_path / "b")
    assert chosen.codebook.build_parameters["image_ids"] == ["img-007.png", "img-001.png"]
    with pytest.raises(ValueError, match="not files under"):
        list(folder_images(image_folder, ids=["nope.png"]))


def test_a_datasets_dataset_is_a_source_with_an_id_column(tiny, tmp_path):
    datasets = pytest.importorskip("datasets")
    images = synthetic_images(4)
    table = datasets.Dataset.from_dict(
        {"image": images, "name": [f"row-{i}" for i in range(4)], "caption": ["x"] * 4},
        features=datasets.Features(
            {"image": datasets.Image(), "name": datasets.Value("string"), "caption": datasets.Value("string")}
        ),
    )
    result = _build(tiny, dataset_images(table, id_column="name", ids=["row-3", "row-1", "row-0"]), work_dir=tmp_path)
    assert result.codebook.build_parameters["image_ids"] == ["row-0", "row-1", "row-3"]
    streamed = _build(tiny, dataset_images(table.to_iterable_dataset(), id_column="name"), work_dir=tmp_path / "s")
    assert streamed.summary.num_images == 4
    with pytest.raises(ValueError, match="no column 'picture'"):
        next(dataset_images(table, image_column="picture"))


@pytest.mark.slow
def test_built_codebook_is_used_by_the_model_through_its_config_reference_from_the_hub_cache(tmp_path):
    build_tiny_pipeline_codebook(out=tmp_path / "cb")
    cache = tmp_path / "hub"
    seed_hub_cache(cache, "org/tiny-codebook", {"codebook.safetensors": tmp_path / "cb" / "codebook.safetensors"})
    code = textwrap.dedent(
        f"""
        import torch
        from llava_codebook.tiny import build_tiny_model, build_tiny_processor
        from llava_codebook.codebook import RedundancyCodebook
        from llava_codebook.codebooks.tiny_pipeline import synthetic_images
        model = build_tiny_model(0, codebook_repo="org/tiny-codebook", codebook_threshold=0.95)
        processor = build_tiny_processor()
        model.load_codebook()  # resolves the config reference with the real hf_hub_download, offline
        expected = RedundancyCodebook.from_file({str(tmp_path / "cb" / "codebook.safetensors")!r}).prototypes
        assert torch.equal(model.codebook.prototypes, expected)
        inputs = processor(images=synthetic_images(1), text="<image>\\nwhat is this ?", return_tensors="pt")
        with torch.no_grad():
            out = model(**inputs)
        selection = out.visual_token_selection
        print("KEPT", int(selection.num_kept[0]), "OF", int(selection.num_total[0]))
        """
    )
    run = run_offline(code, cache)
    assert run.returncode == 0, run.stderr[-3000:]
    kept, total = (int(x) for x in run.stdout.split("KEPT")[1].split("OF"))
    assert 0 < kept < total  # a flat image: the codebook of flat/textured probes prunes part of it


def test_dataset_rows_are_not_decoded_until_probed(tmp_path):
    datasets = pytest.importorskip("datasets")
    images = synthetic_images(2)
    table = datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()}))
    items = list(dataset_images(table))
    assert [i.image_id for i in items] == ["train/0", "train/1"]
    raw = items[0].loader()
    assert isinstance(raw, dict) and raw["bytes"]  # still encoded
    assert items[0].load().size == images[0].size


def test_data_parallel_processes_split_images_and_the_main_process_merges_them(tiny, tmp_path, monkeypatch):
    images = synthetic_images(8)
    single = _build(tiny, pil_images(images), work_dir=tmp_path / "single")
    probed_by = {}
    real_write = build_module.ResultStore.write
    for rank in (1, 0):  # the other process finishes first; the main one then merges everything
        monkeypatch.setattr(build_module, "_distributed_state", lambda rank=rank: (rank, 2, lambda: None))
        monkeypatch.setattr(
            build_module.ResultStore, "write",
            lambda self, key, result, rank=rank: (probed_by.__setitem__(result.image_id, rank), real_write(self, key, result)),
        )  # fmt: skip
        merged = _build(tiny, pil_images(images), work_dir=tmp_path / "parallel")
        assert (merged.codebook is None) == (rank == 1)
    # batches of 2 dealt round-robin: images 0,1 / 4,5 to process 0 and 2,3 / 6,7 to process 1
    assert probed_by == {str(i): (i // 2) % 2 for i in range(8)}
    assert torch.equal(merged.codebook.prototypes, single.codebook.prototypes)
    assert merged.codebook.build_parameters["num_processes"] == 2


@pytest.mark.slow
def test_two_real_processes_under_torchrun_build_the_same_codebook_as_one(tmp_path):
    script = tmp_path / "build.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, torch
            from llava_codebook.codebooks.build import partial_state
            from llava_codebook.codebooks.tiny_pipeline import build_tiny_pipeline_codebook
            state = partial_state()
            result = build_tiny_pipeline_codebook(work_dir=sys.argv[1], num_images=8, image_batch_size=2)
            print("RANK", state.process_index, state.num_processes, result.summary.num_probed_now, flush=True)
            if result.codebook is not None:
                torch.save(result.codebook.prototypes, sys.argv[2])
            """
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script)]
    run = subprocess.run(command + [str(tmp_path / "work"), str(tmp_path / "protos.pt")], env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(line for line in run.stdout.splitlines() if line.startswith("RANK")) == ["RANK 0 2 4", "RANK 1 2 4"]
    single = build_tiny_pipeline_codebook(num_images=8, image_batch_size=2)
    assert torch.equal(torch.load(tmp_path / "protos.pt", weights_only=True), single.codebook.prototypes)


def test_the_probe_stage_shows_a_progress_bar_in_images_per_second(tiny, image_folder, tmp_path, capsys):
    build_codebook(*tiny, folder_images(image_folder), work_dir=tmp_path, preset=TINY_PRESET, progress=True)
    err = capsys.readouterr().err
    assert "probing" in err and "8/8" in err and "img/s" in err and "selecting" in err


def test_duplicate_image_ids_are_refused(tiny, tmp_path):
    images = synthetic_images(3)
    with pytest.raises(ValueError, match="'a' occurs twice"):
        _build(tiny, pil_images(images, ids=["a", "b", "a"]), work_dir=tmp_path)


def test_an_unreadable_image_replaced_by_a_good_one_is_probed_on_resume(tiny, tmp_path):
    folder = tmp_path / "images"
    save_images(folder, synthetic_images(4))
    good = (folder / "img-001.png").read_bytes()
    (folder / "img-001.png").write_bytes(b"not a png")
    first = _build(tiny, folder_images(folder), work_dir=tmp_path / "work", preset_overrides={"min_unique_images": 0})
    assert first.summary.num_unreadable == 1
    (folder / "img-001.png").write_bytes(good)
    again = _build(tiny, folder_images(folder), work_dir=tmp_path / "work", preset_overrides={"min_unique_images": 0})
    assert again.summary.num_unreadable == 0 and (again.summary.num_resumed, again.summary.num_probed_now) == (3, 1)
    assert "img-001.png" in again.codebook.build_parameters["image_ids"]


def test_in_memory_and_dataset_images_are_keyed_by_content_too(tiny, tmp_path):
    images = synthetic_images(4)
    _build(tiny, pil_images(images, ids=list("abcd")), work_dir=tmp_path)
    swapped = [images[1], images[0], images[2], images[3]]  # "a" and "b" now name each other's picture
    again = _build(tiny, pil_images(swapped, ids=list("abcd")), work_dir=tmp_path)
    assert again.summary.num_changed == 2 and again.summary.num_resumed == 2 and again.summary.num_probed_now == 2


def test_num_images_below_one_is_refused_by_name(tiny, tmp_path):
    with pytest.raises(ValueError, match="num_images must be at least 1; got -3"):
        _build(tiny, pil_images(synthetic_images(2)), work_dir=tmp_path, num_images=-3)
