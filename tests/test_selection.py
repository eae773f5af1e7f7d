"""The pure redundancy rule: scores and kept indices."""

import pytest
import torch

from llava_codebook.selection import codebook_similarity, select_tokens


def naive_scores(features, prototypes):
    out = []
    for z in features.double():
        out.append(max(float(torch.dot(z, c) / (z.norm() * c.norm())) for c in prototypes.double()))
    return torch.tensor(out, dtype=torch.float64)


def test_scores_are_the_best_cosine_to_any_prototype():
    torch.manual_seed(0)
    features, prototypes = torch.randn(50, 16), torch.randn(7, 16)
    torch.testing.assert_close(codebook_similarity(features, prototypes).double(), naive_scores(features, prototypes))


def test_scores_agree_across_chunk_sizes_within_float32_rounding_and_keep_the_same_tokens():
    # Different chunkings run different BLAS kernels, which may round differently (seen: 3e-8 on an AVX-512 CPU), so
    # what the product needs is asserted: scores within float32 rounding, and identical decisions away from ties.
    torch.manual_seed(0)
    features, prototypes = torch.randn(37, 8), torch.randn(5, 8)
    reference = codebook_similarity(features, prototypes)
    rounding = 8 * torch.finfo(torch.float32).eps
    for chunk_size in (1, 4, 36, 37, 4096):
        chunked = codebook_similarity(features, prototypes, chunk_size=chunk_size)
        torch.testing.assert_close(chunked, reference, atol=rounding, rtol=0)
        for threshold in torch.linspace(-0.5, 0.9, 15).tolist():
            if (reference - threshold).abs().min() < 10 * rounding:
                continue  # an exact tie may go either way
            assert torch.equal(
                select_tokens(chunked, threshold=threshold, min_keep=0),
                select_tokens(reference, threshold=threshold, min_keep=0),
            )


def test_scores_are_float32_whatever_the_input_dtype():
    torch.manual_seed(0)
    features, prototypes = torch.randn(37, 8), torch.randn(5, 8)
    half = codebook_similarity(features.half(), prototypes.half())
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, codebook_similarity(features, prototypes), atol=2e-3, rtol=0)


def test_an_empty_codebook_is_refused_rather_than_pruning_nothing():
    with pytest.raises(ValueError, match="no prototypes"):
        codebook_similarity(torch.randn(3, 8), torch.randn(0, 8))


def test_scores_reject_a_dimension_mismatch_with_a_clear_message():
    with pytest.raises(ValueError, match="does not match the codebook dimension 8"):
        codebook_similarity(torch.randn(3, 16), torch.randn(2, 8))


def test_threshold_mode_keeps_exactly_the_tokens_below_the_threshold():
    scores = torch.tensor([0.1, 0.5, 0.3, 0.9, 0.29, 0.3])
    kept = select_tokens(scores, mode="threshold", threshold=0.3, min_keep=0)
    assert kept.tolist() == [0, 4]


def test_budget_mode_keeps_the_lowest_scores_in_raster_order_with_ties_to_the_earlier_token():
    scores = torch.tensor([0.4, 0.1, 0.4, 0.2, 0.4, 0.9])
    assert select_tokens(scores, mode="budget", keep_tokens=3, min_keep=0).tolist() == [0, 1, 3]
    # round(6 * 0.5) = 3 tokens through the ratio too.
    assert select_tokens(scores, mode="budget", keep_ratio=0.5, min_keep=0).tolist() == [0, 1, 3]


def test_minimum_keep_fills_with_the_lowest_scores_when_the_threshold_drops_everything():
    scores = torch.tensor([0.8, 0.6, 0.95, 0.7])
    assert select_tokens(scores, mode="threshold", threshold=-1.0, min_keep=0).numel() == 0
    assert select_tokens(scores, mode="threshold", threshold=-1.0, min_keep=2).tolist() == [1, 3]
    assert select_tokens(scores, mode="threshold", threshold=-1.0, min_keep=10).tolist() == [0, 1, 2, 3]


def test_protected_tokens_are_always_kept_and_not_counted_by_budget_or_minimum():
    scores = torch.tensor([0.1, 0.99, 0.2, 0.3, 0.99])
    protected = torch.tensor([False, True, False, False, True])
    assert select_tokens(scores, mode="budget", keep_tokens=1, min_keep=0, protected=protected).tolist() == [0, 1, 4]
    assert select_tokens(scores, mode="threshold", threshold=-1, min_keep=2, protected=protected).tolist() == [
        0,
        1,
        2,
        4,
    ]


def test_raising_the_threshold_never_keeps_fewer_tokens():
    torch.manual_seed(0)
    for _ in range(20):
        scores = torch.rand(64) * 2 - 1
        protected = torch.rand(64) < 0.1
        previous = None
        for threshold in torch.linspace(-1, 1, 41).tolist():
            kept = set(select_tokens(scores, threshold=threshold, min_keep=3, protected=protected).tolist())
            if previous is not None:
                assert previous <= kept
            previous = kept


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="mode='topk' is unknown"):
        select_tokens(torch.rand(4), mode="topk")
