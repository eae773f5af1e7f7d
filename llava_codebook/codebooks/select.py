"""Stages 3 and 4 of a build, pure functions of tensors: the redundancy test and the two clustering steps."""

import torch

from .dpcknn import dpc_knn
from .presets import BuildPreset


def redundant_mask(
    p_max: torch.Tensor, div_ctx: torch.Tensor, div_global: torch.Tensor, preset: BuildPreset
) -> torch.Tensor:
    """Stage 3: `ctx_weight * div_ctx + global_weight * div_global < jsd_thres` and `p_max < top1_prob_thres`.

    A token is redundant when removing it barely changes the answer, locally and globally, and when on its own it
    does not make the model confident about any word.
    """
    combined = preset.ctx_weight * div_ctx.double() + preset.global_weight * div_global.double()
    return (combined < preset.jsd_thres) & (p_max.double() < preset.top1_prob_thres)


def select_in_image(
    tokens: torch.Tensor,
    redundant: torch.Tensor,
    preset: BuildPreset,
    token_probes: torch.Tensor | None = None,
    token_patches: torch.Tensor | None = None,
) -> torch.Tensor:
    """Stage 4a: cluster one image's probed token rows (`per_image_clusters` DPC-KNN clusters over *all* rows, in
    `preset.cluster_dtype`) and keep the redundant rows lying in clusters of at most `cluster_size_thres` rows.
    `redundant` is per row (a tied group's rows share their probe's verdict); `token_probes` / `token_patches` give
    each row's probe and raster index (default: every row is its own probe and patch).

    Small clusters are what makes a redundant token a prototype: a token that dominates the image (a large cluster)
    is part of the content, not background.

    Returns indices into `tokens`, possibly repeated, in the release's order: clusters in the order their first row
    appears, rows in order within a cluster. With `group_selection="release"` each kept row contributes its probe's
    whole tied group (its rows in order), so a probe with `m` kept rows contributes its group `m` times; with
    `"unique"`, that list with each patch at its first occurrence only.
    """
    if tokens.shape[0] == 0:
        return torch.empty(0, dtype=torch.long)
    n = tokens.shape[0]
    probes = torch.arange(n) if token_probes is None else token_probes.cpu()
    patches = torch.arange(n) if token_patches is None else token_patches.cpu()
    labels, _ = dpc_knn(tokens, preset.per_image_clusters, k=preset.knn_k, dtype=preset.cluster_dtype)
    sizes = torch.bincount(labels)
    redundant = redundant.cpu()
    kept_rows = []
    for label in dict.fromkeys(labels.tolist()):  # first-appearance order
        if sizes[label] <= preset.cluster_size_thres:
            rows = (labels == label).nonzero().squeeze(-1)
            kept_rows += rows[redundant[rows]].tolist()
    group_of = {int(p): (probes == p).nonzero().squeeze(-1) for p in probes[kept_rows].unique()}
    chosen = [group_of[int(probes[row])] for row in kept_rows]
    chosen = torch.cat(chosen) if chosen else torch.empty(0, dtype=torch.long)
    if preset.group_selection == "unique":
        first: dict[int, int] = {}  # patch -> its first position in `chosen`
        for position, patch in enumerate(patches[chosen].tolist()):
            first.setdefault(patch, position)
        chosen = chosen[sorted(first.values())]
    return chosen


def select_prototype_clusters(tokens: torch.Tensor, image_of: torch.Tensor, preset: BuildPreset) -> dict:
    """Stage 4b: DPC-KNN over every token kept by 4a into `prototype_cluster_nums` clusters; keep whole clusters
    whose members come from at least `min_unique_images` distinct images (the release's "more than 64" is 65).

    Returns `members` (ascending indices into `tokens` of the kept clusters' members), `labels` `[N]`,
    `kept_clusters` (cluster ids) and `unique_images` per cluster.
    """
    if tokens.shape[0] == 0:
        empty = torch.empty(0, dtype=torch.long)
        return {"members": empty, "labels": empty, "kept_clusters": empty, "unique_images": empty}
    labels, _ = dpc_knn(tokens, preset.prototype_cluster_nums, k=preset.knn_k, dtype=preset.cluster_dtype)
    n_clusters = int(labels.max()) + 1
    unique_images = torch.tensor([int(image_of[labels == c].unique().numel()) for c in range(n_clusters)])
    kept = (unique_images >= preset.min_unique_images).nonzero().squeeze(-1)
    members = torch.isin(labels, kept).nonzero().squeeze(-1)
    return {"members": members, "labels": labels, "kept_clusters": kept, "unique_images": unique_images}
