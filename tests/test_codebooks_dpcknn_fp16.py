"""`cluster_dtype="float16"` is TCFormer's `cluster_dpc_knn` run on fp16 tensors, as the release ran it (issue 23).

On fp16, `torch.cdist` only has its matrix-product form, so distances are `sqrt(|x|^2 + |y|^2 - 2 x.y)` with fp16
roundings, not direct differences; the reference (`codebooks_release_reference`) computes that form one pair at a
time, and on this machine torch's own fp16 kernels are checked against it too.
"""

import numpy as np
import pytest
import torch

from codebooks_helpers import SEED_CODEBOOKS
from codebooks_release_reference import direct_fp16_distances, fp16_distances, partition, release_dpc_knn
from llava_codebook.codebooks.dpcknn import distance_matrix, dpc_knn

RELEASED_LLAVA15 = SEED_CODEBOOKS / "llava15_coco_train_500samples_numPrototypes-454.pt"
RELEASED_OV = SEED_CODEBOOKS / "llavaov_coco_train_1200samples_numPrototypes-45.pt"


def offset_blobs(seed: int, n: int = 40, channels: int = 64) -> torch.Tensor:
    """Clustered points sharing a large common component (as projector outputs do), where the fp16 norms of the
    matrix-product form are coarse next to the distances; rows 3 and 7 are one token twice (a tied group)."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(6, channels, generator=generator) * 0.5 + 4.0
    points = centres[torch.randint(0, 6, (n,), generator=generator)]
    points = points + 0.3 * torch.randn(n, channels, generator=generator)
    points[7] = points[3]
    return points


def torch_fp16_tcformer(x: torch.Tensor, n_clusters: int, k: int = 5) -> torch.Tensor:
    """TCFormer's `cluster_dpc_knn` with torch's own fp16 kernels on this machine (noise left out, equal scores
    lower index first)."""
    dist = torch.cdist(x, x) / x.shape[1] ** 0.5
    density = (-(dist.sort(dim=-1, stable=True).values[:, :k] ** 2).mean(dim=-1)).exp()
    mask = (density[None, :] > density[:, None]).to(x.dtype)
    delta = (dist * mask + dist.max() * (1 - mask)).min(dim=-1).values
    centres = torch.sort(-(delta * density).float(), stable=True).indices[:n_clusters]
    labels = dist[centres].argmin(dim=0)
    labels[centres] = torch.arange(len(centres))
    return labels


def load_released(path) -> torch.Tensor:
    if not path.is_file():
        pytest.skip(f"released codebook not available ({path})")
    return torch.load(path, map_location="cpu", weights_only=True).detach()


def test_torch_cdist_on_fp16_is_the_matrix_product_form_and_refuses_25_rows_or_fewer():
    # What the float16 mode is modelled on, checked on this torch: no direct fp16 kernel...
    with pytest.raises(NotImplementedError, match="Half"):
        torch.cdist(torch.randn(25, 8).half(), torch.randn(25, 8).half())
    # ... and above 25 rows [-2x, |x|^2, 1] @ [y, 1, |y|^2]^T, one fp16 product, clamped at 0, square root.
    x = offset_blobs(0).half()
    squares = x.pow(2).sum(dim=-1, keepdim=True)
    ones = torch.ones_like(squares)
    product = torch.cat([-2 * x, squares, ones], dim=-1) @ torch.cat([x, ones, squares], dim=-1).T
    assert torch.equal(torch.cdist(x, x), product.clamp_min(0).sqrt())
    assert (torch.cdist(x, x).diagonal() != 0).any()  # a point is not at distance 0 from itself


@pytest.mark.parametrize("points", [offset_blobs(1, n=30), offset_blobs(2, n=12)], ids=["30 rows", "12 rows"])
def test_float16_distances_are_the_matrix_product_form_entry_by_entry(points):
    expected = torch.tensor(fp16_distances(points.double().numpy()), dtype=torch.float64)
    assert torch.equal(distance_matrix(points, "float16"), expected)
    assert not torch.equal(expected, torch.tensor(direct_fp16_distances(points.double().numpy())))


def test_float16_dpc_knn_gives_the_partition_of_tcformer_on_fp16_tensors():
    differs = 0
    for seed in range(6):
        points = offset_blobs(seed)
        labels, _ = dpc_knn(points, 8, dtype="float16")
        expected = release_dpc_knn(points.double().numpy(), 8)
        assert partition(labels) == partition(expected), f"seed {seed}"
        direct = release_dpc_knn(points.double().numpy(), 8, distances=direct_fp16_distances)
        differs += partition(expected) != partition(direct)
    assert differs >= 2  # on this data the direct-difference form would give other partitions


def test_fp16_density_ties_stay_tied():
    # Two identical densest points: in float64 the lower index is the denser one (the other is 0 away from it); in
    # float16 neither is denser, so both become centres and the pair is split.
    points = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [3.0, 3.0], [3.1, 3.0], [3.0, 3.2]])
    wide, half = dpc_knn(points, 3, k=3)[0], dpc_knn(points, 3, k=3, dtype="float16")[0]
    assert partition(half) == partition(release_dpc_knn(points.double().numpy(), 3, k=3))
    assert int(wide[0]) == int(wide[1]) and int(half[0]) != int(half[1])


def test_a_tied_group_added_four_times_clusters_as_the_release_rule():
    # Rows 59-66 of the released LLaVA-1.5 codebook are one tied pair four times: such copies tie exactly in
    # distance, density and score, which the strict fp16 comparison leaves tied.
    points = offset_blobs(3, n=32)
    pair = points[[10, 11]]
    points = torch.cat([points, pair, pair, pair, pair])
    labels, _ = dpc_knn(points, 8, dtype="float16")
    assert partition(labels) == partition(release_dpc_knn(points.double().numpy(), 8))


def test_released_token_subsets_cluster_as_the_release_rule():
    released = load_released(RELEASED_LLAVA15)
    differs = 0
    for subset in (0, 3, 6):
        rows = torch.randperm(released.shape[0], generator=torch.Generator().manual_seed(subset))[:96]
        points = released[rows]  # 96 real fp16 tokens, as one image's probes
        labels, _ = dpc_knn(points, 8, dtype="float16")
        expected = release_dpc_knn(points.double().numpy(), 8)
        assert partition(labels) == partition(expected), f"subset {subset}"
        assert partition(labels) == partition(torch_fp16_tcformer(points, 8)), f"subset {subset}"
        direct = release_dpc_knn(points.double().numpy(), 8, distances=direct_fp16_distances)
        differs += partition(expected) != partition(direct)
    assert differs >= 1  # subset 6: direct differences would give another partition


def test_released_codebooks_cluster_as_torch_fp16_kernels_do_here():
    for path, n_clusters in ((RELEASED_LLAVA15, 64), (RELEASED_OV, 8)):
        points = load_released(path)
        ours = distance_matrix(points, "float16").half()
        kernels = torch.cdist(points, points) / points.shape[1] ** 0.5
        # Entries agree to one fp16 step except where d^2 is a cancellation residue (self distances, duplicates):
        # there the product's float32 accumulation order decides, which this machine's BLAS and CUDA's differ in.
        steps = (ours.view(torch.int16).int() - kernels.view(torch.int16).int()).abs()
        assert steps[kernels >= 0.05].max() <= 1 and (steps == 0).float().mean() > 0.99
        assert partition(dpc_knn(points, n_clusters, dtype="float16")[0]) == partition(
            torch_fp16_tcformer(points, n_clusters)
        )


def test_float64_and_float32_are_the_distances_without_fp16_rounding():
    points = offset_blobs(4, n=30)
    exact = [[float(np.linalg.norm(a - b)) / 8.0 for b in points.double().numpy()] for a in points.double().numpy()]
    exact = torch.tensor(exact, dtype=torch.float64)
    # float64's matrix-product form leaves a residue of about 1e-6 / sqrt(C) where points coincide (rows 3 and 7).
    assert torch.allclose(distance_matrix(points, "float64"), exact, rtol=0, atol=2e-7)
    assert torch.allclose(distance_matrix(points, "float32").double(), exact, rtol=0, atol=2e-6)
    assert float(distance_matrix(points, "float32")[3, 7]) == 0.0
    for dtype in ("float64", "float32"):
        assert (distance_matrix(points, dtype).diagonal() == 0).all()
