import pytest
import torch

from llava_codebook.codebooks.dpcknn import dpc_knn


def _blobs(sizes, dim=8, spread=0.05, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[: len(sizes)] * 10.0
    points = [centres[i] + spread * torch.randn(n, dim, generator=generator) for i, n in enumerate(sizes)]
    truth = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    return torch.cat(points), truth


def _same_partition(labels, truth):
    pairs = {(int(a), int(b)) for a, b in zip(labels, truth)}
    return len(pairs) == len(set(labels.tolist())) == len(set(truth.tolist()))


def test_well_separated_blobs_are_recovered_exactly():
    points, truth = _blobs([20, 12, 7])
    labels, centres = dpc_knn(points, n_clusters=3, k=5)
    assert _same_partition(labels, truth)
    assert sorted(truth[centres].tolist()) == [0, 1, 2]  # one centre per blob


def test_shuffled_input_gives_the_same_clusters():
    points, truth = _blobs([15, 10, 9, 6], seed=3)
    perm = torch.randperm(points.shape[0], generator=torch.Generator().manual_seed(0))
    labels, _ = dpc_knn(points[perm], n_clusters=4)
    assert _same_partition(labels, truth[perm])


def test_repeated_calls_and_exact_ties_are_deterministic():
    points = torch.cat([torch.zeros(5, 4), torch.ones(5, 4)])  # every density ties within a group
    first = dpc_knn(points, n_clusters=2, k=3)
    for _ in range(3):
        again = dpc_knn(points, n_clusters=2, k=3)
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert first[1].tolist() == [0, 5]  # lowest index wins the tie in each group
    assert first[0].tolist() == [0] * 5 + [1] * 5


def test_more_clusters_than_points_gives_one_cluster_per_point():
    labels, centres = dpc_knn(torch.randn(3, 4), n_clusters=8)
    assert sorted(labels.tolist()) == [0, 1, 2] and centres.numel() == 3


def test_dtype_does_not_change_the_result():
    points, _ = _blobs([10, 10], seed=5)
    assert torch.equal(dpc_knn(points, 2)[0], dpc_knn(points.half(), 2)[0])


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        dpc_knn(torch.zeros(3), 2)
    with pytest.raises(ValueError, match="n_clusters"):
        dpc_knn(torch.zeros(3, 2), 0)
