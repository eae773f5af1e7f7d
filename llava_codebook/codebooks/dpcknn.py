"""DPC-KNN (density-peak clustering with k nearest neighbours), deterministic.

* distances `d_ij = ||x_i - x_j|| / sqrt(C)`;
* density `rho_i = exp(-mean_{j in kNN(i)} d_ij^2)` over the `k` nearest points, the point itself included
  (distance 0), as in the common TCFormer form;
* `delta_i` = distance to the nearest point of higher density; a point with no denser point gets the largest
  distance of all;
* centres are the `n_clusters` points with the largest `rho * delta`; every point joins its nearest centre.

Precision (`dtype`):

* `"float64"` (default) and `"float32"` compute in that precision. The TCFormer form adds 1e-6 of random noise to
  the densities so that none tie; here a density tie instead counts the lower index as the denser point (the noise
  made that choice at random; exact ties only happen between identical points).
* `"float16"` follows what the release's caller did: it passed fp16 tensors to its clustering module (which is
  not public). Distances, distance / sqrt(C), squared distances, their mean, the density and the score are each
  rounded to float16 as fp16 tensors are. At float16 resolution (about 5e-4 near a density of 1) the 1e-6 noise
  vanishes, so tied densities stay tied and neither counts as denser than the other (a comparison is strict): two
  tied densest points are both centre candidates with the largest distance. The CUDA kernels themselves (cdist
  through matrix products, fused reductions) are not reproduced bit for bit, and neither is the noise for the
  rare densities below about 2e-3, where float16 would keep it.

Everywhere, centres are taken by a stable sort (lower index first on equal scores) and a point equidistant to two
centres joins the one with the larger score.
"""

import torch

DTYPES = ("float64", "float32", "float16")


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
    # float16 is emulated in float64 with a rounding after each step that yields an fp16 tensor in the release.
    work = torch.float64 if half else getattr(torch, dtype)

    def rounded(values: torch.Tensor) -> torch.Tensor:
        return values.to(torch.float32).to(torch.float16).to(work) if half else values

    x = rounded(features.detach().to("cpu", work))
    # Below float64 the matrix-product shortcut of cdist loses digits to cancellation: compute differences directly.
    mode = "use_mm_for_euclid_dist_if_necessary" if dtype == "float64" else "donot_use_mm_for_euclid_dist"
    dist = rounded(rounded(torch.cdist(x, x, compute_mode=mode)) / (x.shape[1] ** 0.5))
    dist.fill_diagonal_(0.0)
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
    # argmin returns the first minimum, i.e. the better-scored centre on an exact distance tie.
    labels = dist[:, centres].argmin(dim=-1)
    labels[centres] = torch.arange(n_centres)
    return labels, centres
