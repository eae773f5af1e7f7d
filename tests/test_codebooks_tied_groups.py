"""Tied groups in the per-image selection follow the release's rule (issue 23).

With `rank_ties="group"` a probe feeds every patch tied at its rank in fp16, and a group of `g` tied patches is
probed at each of its `g` ranks. The release clusters every row of every probe, and for each kept row adds its
probe's whole group (`[fix_patch_sim_idx_visual_tokens[i] for i in low_info_patch_ids_selected]`), so duplicates
reach the codebook: rows 59-66 of the released LLaVA-1.5 codebook are one tied pair four times. The references
are the plain loops of `codebooks_release_reference`, on ties built to occur.
"""

from collections import Counter

import numpy as np
import pytest
import torch

from codebooks_helpers import SEED_CODEBOOKS
from codebooks_release_reference import (
    release_is_redundant,
    release_kept_keys,
    release_prototypes,
    release_select_in_image,
)
from llava_codebook.codebooks.build import BuildSummary, assemble_codebook, build_codebook
from llava_codebook.codebooks.data import ImageItem, pil_images
from llava_codebook.codebooks.presets import BuildPreset, get_preset
from llava_codebook.codebooks.probe import ImageProbeResult
from llava_codebook.codebooks.select import redundant_mask, select_in_image
from llava_codebook.codebooks.store import ResultStore
from llava_codebook.codebooks.tiny_pipeline import synthetic_images
from llava_codebook.tiny import build_tiny_model, build_tiny_processor

RELEASED_LLAVA15 = SEED_CODEBOOKS / "llava15_coco_train_500samples_numPrototypes-454.pt"
# The release's LLaVA-1.5 thresholds, with fp16 clustering (the release's) and a global step sized for a few images.
PRESET = BuildPreset(top1_prob_thres=0.15, jsd_thres=2e-3, cluster_size_thres=8, prototype_cluster_nums=6,
                     min_unique_images=2, cluster_dtype="float16")  # fmt: skip
# Tied groups as fp16 [CLS] ranking makes them: (first rank, patches); a group of g patches holds g ranks.
TIES = ((5, (40, 41)), (12, (7, 19, 30)), (20, (3, 50)))


def image_probes(seed: int, tokens_of=None, ties=TIES, num_probes: int = 32, dim: int = 24) -> ImageProbeResult:
    """One image's stored probes with tied groups: probe ranks 1..`num_probes`, each rank of a tied group feeding
    the whole group (its rows in raster order), every other rank a patch of its own. Tokens are fp16, drawn around
    six centres shared by all images (`tokens_of(patch)` overrides them)."""
    rng = np.random.default_rng(seed)
    shared = np.random.default_rng(1234).normal(size=(6, dim)) * 2.0
    group_at = {rank + i: patches for rank, patches in ties for i in range(len(patches))}
    tied = {p for _, patches in ties for p in patches}
    singles = iter(p for p in range(64) if p not in tied)
    vectors = {}

    def token(patch):
        if patch not in vectors:
            vectors[patch] = tokens_of(patch) if tokens_of else shared[rng.integers(6)] + 0.5 * rng.normal(size=dim)
        return torch.as_tensor(vectors[patch], dtype=torch.float16)

    targets, rows, row_probes, row_patches = [], [], [], []
    for probe, rank in enumerate(range(1, num_probes + 1)):
        if rank in group_at:
            group = sorted(group_at[rank])
            first = min(r for r in group_at if group_at[r] == group_at[rank])
            targets.append(group[rank - first])  # the leave-one-out target: the rank's place in the stable order
        else:
            group = [next(singles)]
            targets.append(group[0])
        for patch in group:
            rows.append(token(patch))
            row_probes.append(probe)
            row_patches.append(patch)
    p_max = torch.as_tensor(rng.uniform(0.0, 0.25, num_probes), dtype=torch.float32)
    for rank in group_at:
        p_max[rank - 1] = 0.05  # tied probes are redundant, so their groups are kept when their cluster is small
    top_probs = torch.sort(torch.rand(num_probes, 50, generator=torch.Generator().manual_seed(seed)), -1, True)[0]
    return ImageProbeResult(
        image_id=f"img-{seed}", index=seed, patch_indices=torch.tensor(targets), ranks=torch.arange(1, num_probes + 1),
        tokens=torch.stack(rows), token_probes=torch.tensor(row_probes), token_patch_indices=torch.tensor(row_patches),
        p_max=p_max, top_ids=torch.zeros(num_probes, 50, dtype=torch.long), top_probs=top_probs,
        div_ctx_release=torch.as_tensor(rng.uniform(0, 1.5e-3, num_probes), dtype=torch.float32),
        div_ctx_jsd=torch.zeros(num_probes),
        div_global_release=torch.as_tensor(rng.uniform(0, 5e-5, num_probes), dtype=torch.float32),
        div_global_jsd=torch.zeros(num_probes),
    )  # fmt: skip


def release_view(result: ImageProbeResult, preset) -> tuple[dict, dict]:
    """What the release's script read for one image: per probe key (its rank) the `(patch, vector)` rows in rank
    order, and its verdict from `p_max` and the divergences."""
    probes, low_info = {}, {}
    for probe, rank in enumerate(result.ranks.tolist()):
        members = (result.token_probes == probe).nonzero().squeeze(-1).tolist()
        probes[rank] = [(int(result.token_patch_indices[r]), result.tokens[r].double().numpy()) for r in members]
        low_info[rank] = release_is_redundant(float(result.p_max[probe]), float(result.div_ctx_release[probe]),
                                              float(result.div_global_release[probe]), preset)  # fmt: skip
    return probes, low_info


def builder_selection(result: ImageProbeResult, preset) -> torch.Tensor:
    redundant = redundant_mask(result.p_max, result.div_ctx_release, result.div_global_release, preset)
    return select_in_image(result.tokens, redundant[result.token_probes], preset, result.token_probes,
                           result.token_patch_indices)  # fmt: skip


@pytest.mark.parametrize("seed", range(4))
def test_each_kept_row_adds_its_probes_whole_tied_group(seed):
    result = image_probes(seed)
    chosen = builder_selection(result, PRESET)
    expected = release_select_in_image(*release_view(result, PRESET), PRESET)
    rank_of = result.ranks[result.token_probes]
    assert list(zip(rank_of[chosen].tolist(), result.token_patch_indices[chosen].tolist())) == [
        (key, patch) for key, patch, _ in expected
    ]
    assert torch.equal(result.tokens[chosen].double(), torch.tensor(np.array([v for _, _, v in expected])))
    # A tied group kept at several rows is added that many times: more rows than were kept, duplicates included.
    assert chosen.numel() > len(release_kept_keys(*release_view(result, PRESET), PRESET))
    assert max(Counter(result.token_patch_indices[chosen].tolist()).values()) > 1


@pytest.mark.parametrize("seed", range(4))
def test_unique_selection_keeps_each_patch_of_the_release_selection_once(seed):
    result = image_probes(seed)
    unique = builder_selection(result, get_preset(PRESET, group_selection="unique"))
    release = builder_selection(result, PRESET)
    selected = release_select_in_image(*release_view(result, PRESET), PRESET)
    expected = list(dict.fromkeys(patch for _, patch, _ in selected))  # each patch at its first place
    assert result.token_patch_indices[unique].tolist() == expected
    assert set(result.token_patch_indices[release].tolist()) == set(expected) and release.numel() > unique.numel()


def test_without_tied_groups_both_selections_are_the_kept_rows():
    result = image_probes(7, ties=())
    assert result.tokens.shape[0] == 32  # one row per probe
    release = builder_selection(result, PRESET)
    expected = release_select_in_image(*release_view(result, PRESET), PRESET)
    assert result.token_patch_indices[release].tolist() == [patch for _, patch, _ in expected]
    assert torch.equal(builder_selection(result, get_preset(PRESET, group_selection="unique")), release)


def test_assembled_codebook_is_the_release_rule_on_stored_probes(tmp_path):
    results = [image_probes(seed) for seed in range(6)]
    store = ResultStore(tmp_path)
    store.prepare({"test": "tied groups"})
    items = []
    for result in results:
        item = ImageItem(index=result.index, image_id=result.image_id, loader=lambda: None, content_sha256="")
        store.write(item.key, result)
        items.append(item)
    summary = BuildSummary()
    prototypes, _, provenance = assemble_codebook(store, items, PRESET, summary, progress=False)

    rows = []  # every row the release's per-image loop kept, image by image: (image id, patch, vector)
    kept_rows = 0  # the rows themselves, before each adds its group
    for result in results:
        selected = release_select_in_image(*release_view(result, PRESET), PRESET)
        rows += [(result.image_id, patch, vector) for _, patch, vector in selected]
        kept_rows += len(release_kept_keys(*release_view(result, PRESET), PRESET))
    kept = release_prototypes(rows, PRESET)
    assert summary.num_after_image_clusters == len(rows) > kept_rows
    expected = Counter((rows[i][0], rows[i][1]) for i in kept)
    assert Counter(zip(provenance["image_ids"], provenance["patch_indices"])) == expected
    assert max(expected.values()) > 1  # duplicates reach the codebook, as in the released one
    as_rows = sorted(tuple(v) for v in prototypes.double().tolist())
    assert as_rows == sorted(tuple(rows[i][2].tolist()) for i in kept)


def test_released_pair_repeated_four_times_is_what_the_rule_makes():
    if not RELEASED_LLAVA15.is_file():
        pytest.skip(f"released codebook not available ({RELEASED_LLAVA15})")
    released = torch.load(RELEASED_LLAVA15, map_location="cpu", weights_only=True).detach()
    pair_a, pair_b = released[59], released[60]
    assert all(torch.equal(released[59 + i], pair_a if i % 2 == 0 else pair_b) for i in range(8))
    # An image whose tied pair (those two tokens) is probed at ranks 5 and 6, its other probes other released rows;
    # every probe redundant and every cluster small enough, so all four rows of the pair are kept: the rule adds
    # the pair once per kept row, A B four times, as rows 59-66 hold it.
    others = iter([row for row in released if not (torch.equal(row, pair_a) or torch.equal(row, pair_b))][::5])
    pair = {40: pair_a, 41: pair_b}
    result = image_probes(0, tokens_of=lambda patch: pair[patch] if patch in pair else next(others),
                          ties=((5, (40, 41)),), num_probes=24, dim=4096)  # fmt: skip
    preset = get_preset(PRESET, top1_prob_thres=1.0, jsd_thres=1.0, cluster_size_thres=96)
    chosen = builder_selection(result, preset)
    expected = release_select_in_image(*release_view(result, preset), preset)
    assert result.token_patch_indices[chosen].tolist() == [patch for _, patch, _ in expected]
    in_pair = chosen[torch.isin(result.token_patch_indices[chosen], torch.tensor([40, 41]))]
    assert torch.equal(result.tokens[in_pair], released[59:67])
    unique = builder_selection(result, get_preset(preset, group_selection="unique"))
    assert torch.isin(result.token_patch_indices[unique], torch.tensor([40, 41])).sum() == 2


@pytest.mark.slow
def test_a_tiny_build_with_fp16_ties_gives_the_release_rules_codebook(tmp_path):
    model, processor = build_tiny_model(0, crop=336), build_tiny_processor(crop=336)
    release = {"rank_dtype": "float16", "rank_ties": "group", "cluster_dtype": "float16", "top1_prob_thres": 0.9,
               "jsd_thres": 1.0, "prototype_cluster_nums": 8, "min_unique_images": 0}  # fmt: skip
    images = pil_images(synthetic_images(2, side=336))  # a flat image and a textured one: fp16 ties in both
    result = build_codebook(model, processor, images, work_dir=tmp_path, preset="llava-next-llama3",
                            preset_overrides=release, batch_size=128, progress=False)  # fmt: skip
    preset = get_preset("llava-next-llama3", **release)
    store = ResultStore(tmp_path)
    rows, kept_rows = [], 0  # the release's per-image loop, image by image in source order
    for stored in sorted((store.read(p.stem) for p in store.images.glob("*.safetensors")), key=lambda r: r.index):
        assert stored.tokens.shape[0] > stored.p_max.numel()  # tied groups were probed together
        view = release_view(stored, preset)
        rows += [(stored.image_id, patch, vector) for _, patch, vector in release_select_in_image(*view, preset)]
        kept_rows += len(release_kept_keys(*view, preset))
    kept = release_prototypes(rows, preset)
    assert result.summary.num_after_image_clusters == len(rows) > kept_rows
    params = result.codebook.build_parameters
    expected = Counter((rows[i][0], rows[i][1]) for i in kept)
    assert Counter(zip(params["prototype_image_ids"], params["prototype_patch_indices"])) == expected
    assert max(expected.values()) > 1
