"""DPC-KNN (density-peak clustering with k nearest neighbours), deterministic.

The rule (TCFormer's `cluster_dpc_knn`, the form the release's caller expects; its own module is not public):

* distances `d_ij = ||x_i - x_j|| / sqrt(C)`;
* density `rho_i = exp(-mean of d_ij^2 over the k smallest d_ij of row i)` (the row's own entry included);
* `delta_i` = distance to the nearest point of higher density; a point with no denser point gets the largest
  distance of all;
* centres are the `n_clusters` points with the largest `rho * delta`; every point joins its nearest centre.

TCFormer adds 1e-6 of random noise to the densities so that none tie. Here nothing is random: centres are taken by a
stable sort (lower index first on equal scores) and a point equidistant to two centres joins the better-scored one.

Precision (`dtype`), i.e. which arithmetic computes that rule:

* `"float64"` (default) and `"float32"`: the rule without fp16 rounding. Distances are `torch.cdist` in that
  precision: float32 always by direct differences `sqrt(sum_c (x_ic - x_jc)^2)`; float64 by direct differences
  up to 25 rows and above that by torch's matrix-product form (fast; its cancellation residue, about 1e-6 where
  points coincide, is far below anything fp16 resolves). A point's distance to itself is set to 0; every later
  step stays in that precision; a density tie counts the lower index as the denser point (the noise made that
  choice at random). This is not a copy of any one implementation's arithmetic: Chat-UniVi's variant casts to
  float32, but its `torch.cdist` then takes the matrix-product form above 25 rows (in float32, not set to 0 on the
  diagonal) and its noise breaks ties at random.
* `"float16"`: TCFormer's `cluster_dpc_knn` run on fp16 tensors, as the release's caller passed them. For fp16,
  `torch.cdist` has only its matrix-product form (its direct kernel has no fp16 version, on CPU or CUDA, so it
  refuses fp16 with at most 25 rows; the release's clusterings all had more): with `s_i = sum_c x_ic^2` (each
  square and the sum rounded to fp16), `d_ij^2 = s_i + s_j - 2 x_i . x_j` is one fp16 matrix-product entry,
  accumulated in higher precision and rounded to fp16 once, then clamped at 0; `d_ij = sqrt(d_ij^2)` rounded.
  A point's distance to itself is therefore whatever that gives (often not 0), and it counts among the k nearest
  as it does in TCFormer. Every later tensor (distance / sqrt(C), squares, mean, density, score) is rounded to
  fp16 too. At fp16 resolution (about 5e-4 near a density of 1) the noise vanishes, so tied densities stay tied:
  neither counts as denser (the comparison is strict), and two tied densest points both get the largest distance.
  The same form is used at every size (with at most 25 rows torch would raise instead).

  Emulated in float64 with a rounding to fp16 after each of those steps, so the result does not depend on the
  machine. Not reproduced bit for bit: a real matrix product accumulates in float32 in a kernel-specific order
  (cuBLAS on the release's GPUs, the CPU BLAS here), which moves an entry lying near an fp16 rounding boundary by
  one fp16 step, and more where `d_ij^2` is a cancellation residue (a point's distance to itself or to a copy of
  itself, a few hundredths after the division); the noise itself, which survives fp16 rounding only for
  densities below about 4e-3; and CUDA's unspecified order among equal scores in `topk`.
"""

import torch

DTYPES = ("float64", "float32", "float16")


def _round_fp16(values: torch.Tensor) -> torch.Tensor:
    """Round float64 values as an fp16 result computed in float32 is rounded (float32 first, then fp16)."""
    return values.to(torch.float32).to(torch.float16).to(values.dtype)


def distance_matrix(features: torch.Tensor, dtype: str = "float64") -> torch.Tensor:
    """`[N, N]` distances `||x_i - x_j|| / sqrt(C)` of `[N, C]` points in the form `dtype` names (see the module
    docstring). float16 values are returned as float64 holding fp16 values, so equal values are exactly equal."""
    channels = features.shape[1]
    if dtype == "float16":
        x = _round_fp16(features.detach().to("cpu", torch.float64))
        squares = _round_fp16(_round_fp16(x * x).sum(dim=-1))
        # One matrix-product entry: the three terms are accumulated together and rounded once.
        squared = _round_fp16(squares[:, None] + squares[None, :] - 2.0 * (x @ x.T))
        return _round_fp16(_round_fp16(squared.clamp_min(0.0).sqrt()) / channels**0.5)
    x = features.detach().to("cpu", getattr(torch, dtype))
    # Below float64 the matrix-product shortcut of cdist loses digits to cancellation: compute differences directly.
    mode = "use_mm_for_euclid_dist_if_necessary" if dtype == "float64" else "donot_use_mm_for_euclid_dist"
    dist = torch.cdist(x, x, compute_mode=mode) / channels**0.5
    return dist.fill_diagonal_(0.0)


def dpc_knn(
    features: torch.Tensor, n_clusters: int, k: int = 5, dtype: str = "float64"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster `[N, C]` points into `min(n_clusters, N)` clusters.

    Returns `(labels, centres)`: `labels` `[N]` int64 in `[0, n)`, cluster `j` being the one around the
    `j`-th best centre; `centres` `[n]` int64 point indices, best first.
    """
    if features.ndim != 2:
        raise ValueError(f"features must be [N, C], got shape {tuple(features.shape)}.")
    if n_clusters < 1 or k < 1:
        raise ValueError(f"n_clusters and k must be >= 1, got n_clusters={n_clusters}, k={k}.")
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is unknown; use one of {DTYPES}.")
    n = features.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    half = dtype == "float16"

    def rounded(values: torch.Tensor) -> torch.Tensor:
        return _round_fp16(values) if half else values

    dist = distance_matrix(features, dtype)
    knn = dist.sort(dim=-1, stable=True).values[:, : min(k, n)]
    density = rounded(torch.exp(-rounded(rounded(knn**2).mean(dim=-1))))

    denser = density[None, :] > density[:, None]  # [i, j]: point j is denser than point i
    if not half:
        index = torch.arange(n)
        denser |= (density[None, :] == density[:, None]) & (index[None, :] < index[:, None])
    delta = torch.where(denser, dist, torch.full_like(dist, float("inf"))).amin(dim=-1)
    delta = torch.where(torch.isinf(delta), dist.max(), delta)

    score = rounded(density * delta)
    n_centres = min(n_clusters, n)
    centres = torch.sort(-score, stable=True).indices[:n_centres]
    # A centre's row of distances (TCFormer reads rows); argmin returns the first minimum, i.e. the better-scored
    # centre on an exact distance tie.
    labels = dist[centres].argmin(dim=0)
    labels[centres] = torch.arange(n_centres)
    return labels, centres
