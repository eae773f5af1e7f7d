"""The release's stage 3-5 rules re-implemented with plain loops, for tests of the builder (never calls it).

Written from the release's codebook script (RedundancyCodebook, `experiments/..._dpcknn.py`) and from TCFormer's
`cluster_dpc_knn` as it behaves on fp16 tensors, i.e. through `torch.cdist`'s matrix-product form (the only one
torch has for fp16). One point, one pair, one value at a time: every value an fp16 tensor would hold is rounded to
fp16 (as computed in float32, then rounded).
"""

import math

import numpy as np


def f16(value: float) -> float:
    return float(np.float16(np.float32(value)))


def round_fp16(values: np.ndarray) -> np.ndarray:
    """Element by element, the fp16 value a float32 computation of `values` is rounded to (as float64)."""
    return np.asarray(values, dtype=np.float64).astype(np.float32).astype(np.float16).astype(np.float64)


def fp16_distances(points) -> list[list[float]]:
    """`torch.cdist(x, x) / sqrt(C)` of fp16 points: `|x_i|^2` is a sum of fp16 squares rounded to fp16, each
    `|x_i|^2 + |x_j|^2 - 2 x_i . x_j` one product entry rounded once, clamped at 0, its square root rounded."""
    x = round_fp16(points)
    n, channels = x.shape
    norms = [f16(float(round_fp16(row * row).sum())) for row in x]
    dist = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            squared = f16(norms[i] + norms[j] - 2.0 * float(np.dot(x[i], x[j])))
            dist[i][j] = f16(f16(math.sqrt(max(squared, 0.0))) / math.sqrt(channels))
    return dist


def direct_fp16_distances(points) -> list[list[float]]:
    """The other form: `sqrt(sum (x_i - x_j)^2)` of fp16 points rounded to fp16, 0 on the diagonal (what torch's
    direct kernel would give, had it an fp16 version)."""
    x = round_fp16(points)
    n, channels = x.shape
    dist = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            if i != j:
                dist[i][j] = f16(f16(math.sqrt(float(((x[i] - x[j]) ** 2).sum()))) / math.sqrt(channels))
    return dist


def release_dpc_knn(points, n_clusters: int, k: int = 5, distances=fp16_distances) -> list[int]:
    """TCFormer's `cluster_dpc_knn` on fp16 tensors. Its 1e-6 noise is lost in the fp16 density, so "denser" is a
    strict comparison of fp16 values; equal scores are taken lower index first (CUDA's `topk` leaves that order
    open)."""
    dist = distances(points)
    n = len(dist)
    density = []
    for i in range(n):
        nearest = sorted(dist[i])[: min(k, n)]  # the point's own entry included, whatever it is
        density.append(f16(math.exp(-f16(sum(f16(d * d) for d in nearest) / len(nearest)))))
    dist_max = max(max(row) for row in dist)
    delta = [min([dist[i][j] for j in range(n) if density[j] > density[i]], default=dist_max) for i in range(n)]
    score = [f16(delta[i] * density[i]) for i in range(n)]
    centres = sorted(range(n), key=lambda i: -score[i])[:n_clusters]
    labels = [min(range(len(centres)), key=lambda c: dist[centres[c]][i]) for i in range(n)]
    for c, centre in enumerate(centres):
        labels[centre] = c
    return labels


def release_is_redundant(p_max: float, div_ctx: float, div_global: float, preset) -> bool:
    """The release's test: `k_context * jsd_context + k_global * jsd_global < jsd_thres` and `p_max < top1`."""
    combined = preset.ctx_weight * div_ctx + preset.global_weight * div_global
    return combined < preset.jsd_thres and p_max < preset.top1_prob_thres


def release_kept_keys(probes: dict, low_info: dict, preset) -> list:
    """One image of the release's per-image loop, up to its list of kept rows. `probes` maps each probe key (its
    rank) to its rows, a list of `(patch, vector)` (a tied group has several), in the order the release listed
    them; `low_info` maps a key to its verdict.

    Every row of every probe is clustered; clusters are visited in the order their first row appears; in a cluster
    of at most `cluster_size_thres` rows, each flagged row appends its probe's key. Returns those keys, one per
    kept row.
    """
    vectors, keys = [], []
    for key, rows in probes.items():
        for _, vector in rows:
            vectors.append(vector)
            keys.append(key)
    labels = release_dpc_knn(vectors, preset.per_image_clusters, k=preset.knn_k)
    clusters: dict[int, list] = {}
    for key, label in zip(keys, labels):
        clusters.setdefault(label, []).append(key)
    selected = []
    for members in clusters.values():
        if len(members) <= preset.cluster_size_thres:
            selected += [key for key in members if low_info[key]]
    return selected


def release_select_in_image(probes: dict, low_info: dict, preset) -> list[tuple]:
    """The rows the release's per-image loop adds: for each kept row's key, all rows of that probe. Returns
    `(key, patch, vector)` rows in that order."""
    selected = release_kept_keys(probes, low_info, preset)
    return [(key, patch, vector) for key in selected for patch, vector in probes[key]]


def release_prototypes(rows: list[tuple], preset) -> list[int]:
    """The release's global step over `(image_id, ..., vector)` rows: cluster them all, keep each cluster whose rows
    come from more than the release's threshold of images, which is `min_unique_images - 1` (the preset counts the
    images a kept cluster needs at least). Returns the kept row indices, cluster by cluster in the order their first
    row appears."""
    release_threshold = preset.min_unique_images - 1
    labels = release_dpc_knn([row[-1] for row in rows], preset.prototype_cluster_nums, k=preset.knn_k)
    clusters: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        clusters.setdefault(label, []).append(index)
    kept = []
    for members in clusters.values():
        if len({rows[m][0] for m in members}) > release_threshold:
            kept += members
    return kept


def partition(labels) -> set[frozenset[int]]:
    groups: dict[int, set[int]] = {}
    for index, label in enumerate(labels):
        groups.setdefault(int(label), set()).add(index)
    return {frozenset(g) for g in groups.values()}
