import math

import pytest
import torch

from llava_codebook.codebooks.divergence import topk_divergence


def _manual(p_logits, q_logits, kind):
    p = torch.softmax(p_logits.double(), -1)
    q = torch.softmax(q_logits.double(), -1)
    m = (p + q) / 2
    if kind == "release":
        return float((0.5 * (m * (m / p).log() + m * (m / q).log())).mean())
    return float(0.5 * ((p * (p / m).log()).sum() + (q * (q / m).log()).sum()))


@pytest.mark.parametrize("kind", ["release", "jsd"])
def test_divergence_matches_hand_formula_on_top_k_entries(kind):
    torch.manual_seed(0)
    intact, perturbed = torch.randn(3, 40), torch.randn(3, 40)
    got = topk_divergence(intact, perturbed, k=10, kind=kind)
    for row in range(3):
        top = intact[row].topk(10).indices
        assert got[row].item() == pytest.approx(_manual(intact[row, top], perturbed[row, top], kind), rel=1e-5)


@pytest.mark.parametrize("kind", ["release", "jsd"])
def test_divergence_is_zero_for_identical_logits(kind):
    logits = torch.randn(4, 30)
    assert torch.all(topk_divergence(logits, logits.clone(), kind=kind) < 1e-12)


def test_logits_outside_the_intact_top_k_do_not_matter():
    intact = torch.arange(20.0)[None]
    perturbed = intact.clone()
    perturbed[0, :5] += 100.0  # far outside the intact top-10 (indices 10..19)
    assert topk_divergence(intact, perturbed, k=10).item() < 1e-12
    assert topk_divergence(intact, perturbed + 0.0 * intact, k=20).item() > 1e-3  # with them, it does


def test_jsd_is_bounded_by_ln2_and_release_is_about_k_times_smaller_for_small_changes():
    torch.manual_seed(1)
    far = topk_divergence(torch.tensor([[50.0, 0, 0]]), torch.tensor([[0, 0, 50.0]]), k=3, kind="jsd")
    assert far.item() <= math.log(2) + 1e-6
    intact = torch.randn(64, 100)
    perturbed = intact + 1e-3 * torch.randn(64, 100)
    ratio = topk_divergence(intact, perturbed, k=10, kind="jsd") / topk_divergence(intact, perturbed, k=10)
    assert torch.allclose(ratio, torch.full_like(ratio, 10.0), rtol=0.01)


def test_unknown_kind_and_shape_mismatch_are_refused():
    with pytest.raises(ValueError, match="unknown"):
        topk_divergence(torch.zeros(1, 5), torch.zeros(1, 5), kind="kl")
    with pytest.raises(ValueError, match="same shape"):
        topk_divergence(torch.zeros(1, 5), torch.zeros(1, 6))
