from dataclasses import replace

import pytest
import torch

from llava_codebook.codebooks.presets import PRESETS, RELEASE_PROBE_RANKS, BuildPreset, get_preset
from llava_codebook.codebooks.select import redundant_mask, select_in_image, select_prototype_clusters


def test_presets_hold_the_release_numbers():
    table = {
        # The release keeps clusters from more than 64 (16) images: at least 65 (17).
        "llava-1.5": (0.15, 2e-3, 8, 64, 65),
        "llava-next-llama3": (0.10, 2e-3, 8, 64, 65),
        "llava-ov": (0.08, 1.8e-3, 3, 24, 17),
    }
    for name, values in table.items():
        p = PRESETS[name]
        assert (
            p.top1_prob_thres,
            p.jsd_thres,
            p.cluster_size_thres,
            p.prototype_cluster_nums,
            p.min_unique_images,
        ) == values
        assert (p.ctx_weight, p.global_weight, p.per_image_clusters, p.knn_k, p.top_logits, p.pmax_top_logits) == (
            1.0, 16.0, 8, 5, 10, 50,
        )  # fmt: skip
        assert p.divergence == "release"
    assert len(RELEASE_PROBE_RANKS) == 96 and RELEASE_PROBE_RANKS[:24] == tuple(range(1, 25))
    assert RELEASE_PROBE_RANKS[24:32] == tuple(range(37, 45)) and RELEASE_PROBE_RANKS[-1] == 576


def test_preset_overrides_and_unknown_names():
    assert get_preset("llava-ov", min_unique_images=2, jsd_thres=None).min_unique_images == 2
    assert get_preset("llava-ov", jsd_thres=None).jsd_thres == 1.8e-3
    with pytest.raises(ValueError, match="Unknown preset"):
        get_preset("llava-2")
    with pytest.raises(ValueError, match="Unknown preset fields"):
        get_preset("llava-ov", jsd=1)
    with pytest.raises(ValueError, match="divergence"):
        get_preset("llava-ov", divergence="kl")


def test_redundancy_rule_weights_global_16x_and_needs_low_p_max():
    preset = PRESETS["llava-next-llama3"]  # jsd 2e-3, p_max 0.10
    p_max = torch.tensor([0.05, 0.05, 0.05, 0.20, 0.05])
    ctx = torch.tensor([1.0e-3, 0.0, 2.0e-3, 0.0, 1.9e-3])
    glob = torch.tensor([0.5e-4, 1.3e-4, 0.0, 0.0, 0.0])
    # 1e-3 + 16 * 0.5e-4 = 1.8e-3 < 2e-3 | 16 * 1.3e-4 = 2.08e-3 | 2e-3 not < 2e-3 | p_max too high | 1.9e-3
    assert redundant_mask(p_max, ctx, glob, preset).tolist() == [True, False, False, False, True]


def test_per_image_selection_keeps_redundant_tokens_in_small_clusters_only():
    preset = BuildPreset(top1_prob_thres=1, jsd_thres=1, cluster_size_thres=3, prototype_cluster_nums=2,
                         min_unique_images=0, per_image_clusters=3, knn_k=2)  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    big = torch.zeros(6, 4) + 0.01 * torch.randn(6, 4, generator=generator)  # a 6-token cluster (too large)
    small = torch.full((3, 4), 5.0) + 0.01 * torch.randn(3, 4, generator=generator)
    other = torch.full((2, 4), -5.0) + 0.01 * torch.randn(2, 4, generator=generator)
    tokens = torch.cat([big, small, other])
    redundant = torch.ones(11, dtype=torch.bool)
    redundant[10] = False
    assert select_in_image(tokens, redundant, preset).tolist() == [6, 7, 8, 9]


def test_global_clusters_are_kept_when_they_span_at_least_min_unique_images():
    preset = BuildPreset(top1_prob_thres=1, jsd_thres=1, cluster_size_thres=3, prototype_cluster_nums=2,
                         min_unique_images=3, knn_k=2)  # fmt: skip
    generator = torch.Generator().manual_seed(1)
    shared = torch.full((4, 4), 3.0) + 0.01 * torch.randn(4, 4, generator=generator)  # images 0, 1, 2, 2
    lonely = torch.full((4, 4), -3.0) + 0.01 * torch.randn(4, 4, generator=generator)  # images 3, 3, 4, 4
    image_of = torch.tensor([0, 1, 2, 2, 3, 3, 4, 4])
    out = select_prototype_clusters(torch.cat([shared, lonely]), image_of, preset)
    assert out["members"].tolist() == [0, 1, 2, 3]
    assert sorted(out["unique_images"].tolist()) == [2, 3]
    # One fewer admits the two-image cluster as well; one more admits nothing.
    two = select_prototype_clusters(torch.cat([shared, lonely]), image_of, replace(preset, min_unique_images=2))
    assert two["members"].tolist() == list(range(8))
    four = select_prototype_clusters(torch.cat([shared, lonely]), image_of, replace(preset, min_unique_images=4))
    assert four["members"].tolist() == []
