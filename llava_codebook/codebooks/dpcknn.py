"""DPC-KNN (density-peak clustering with k nearest neighbours), deterministic.

* distances `d_ij = ||x_i - x_j|| / sqrt(C)`;
* density `rho_i = exp(-mean_{j in kNN(i)} d_ij^2)` over the `k` nearest points, the point itself included
  (distance 0), as in the common TCFormer form;
* `delta_i` = distance to the nearest point of higher density; the densest point gets the largest distance of all;
* centres are the `n_clusters` points with the largest `rho * delta`; every point joins its nearest centre.

There is no random tie-break noise: a density tie counts the lower index as the higher density, centres are
taken by a stable sort (lower index first on equal scores) and a point equidistant to two centres joins the one
with the larger score. Computed in float64 so the result does not depend on the input dtype.
"""

import torch


def dpc_knn(features: torch.Tensor, n_clusters: int, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster `[N, C]` points into `min(n_clusters, N)` clusters.

    Returns `(labels, centres)`: `labels` `[N]` int64 in `[0, n)`, cluster `j` being the one around the
    `j`-th best centre; `centres` `[n]` int64 point indices, best first.
    """
    if features.ndim != 2:
        raise ValueError(f"features must be [N, C], got shape {tuple(features.shape)}.")
    if n_clusters < 1 or k < 1:
        raise ValueError(f"n_clusters and k must be >= 1, got n_clusters={n_clusters}, k={k}.")
    n = features.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    x = features.detach().to("cpu", torch.float64)
    dist = torch.cdist(x, x) / (x.shape[1] ** 0.5)
    dist.fill_diagonal_(0.0)
    knn = dist.sort(dim=-1, stable=True).values[:, : min(k, n)]
    density = torch.exp(-(knn**2).mean(dim=-1))

    index = torch.arange(n)
    higher = (density[None, :] > density[:, None]) | (
        (density[None, :] == density[:, None]) & (index[None, :] < index[:, None])
    )
    delta = torch.where(higher, dist, torch.full_like(dist, float("inf"))).amin(dim=-1)
    delta = torch.where(torch.isinf(delta), dist.max(), delta)

    score = density * delta
    n_centres = min(n_clusters, n)
    centres = torch.sort(-score, stable=True).indices[:n_centres]
    # argmin returns the first minimum, i.e. the better-scored centre on an exact distance tie.
    labels = dist[:, centres].argmin(dim=-1)
    labels[centres] = torch.arange(n_centres)
    return labels, centres
