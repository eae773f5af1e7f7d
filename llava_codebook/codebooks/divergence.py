"""Divergence between the first-token distributions of an intact and a perturbed input, on the intact top-k logits.

Both runs' logits are gathered at the `k` largest logits of the intact run and renormalised with a softmax over
those `k` entries, giving `P` (intact) and `Q` (perturbed); `M = (P + Q) / 2`.

* `"release"` (the default): `0.5 * (KL(M||P) + KL(M||Q))`, averaged over the `k` entries. This is what the
  reference release computes (its KL arguments are swapped relative to the Jensen-Shannon divergence, and it
  averages instead of summing). It is the default because the released thresholds (`jsd_thres`) were tuned on it.
* `"jsd"`: the Jensen-Shannon divergence `0.5 * (KL(P||M) + KL(Q||M))`, summed over the entries (natural log),
  bounded by `ln 2`. For small perturbations it is about `k` times the release value.
"""

import torch

from .presets import DIVERGENCES


def topk_divergence(
    intact_logits: torch.Tensor, perturbed_logits: torch.Tensor, k: int = 10, kind: str = "release"
) -> torch.Tensor:
    """Per-row divergence of `perturbed_logits` from `intact_logits` (`[N, V]` each) on the intact top-`k` entries.

    Returns `[N]` float32. Ties among the top-k logits are resolved by `torch.topk`, which only changes the
    order of the gathered entries, never the value (the divergence is symmetric in entry order).
    """
    if kind not in DIVERGENCES:
        raise ValueError(f"kind={kind!r} is unknown; use one of {DIVERGENCES}.")
    if intact_logits.shape != perturbed_logits.shape or intact_logits.ndim != 2:
        raise ValueError(
            f"Expected two [N, V] logit tensors of the same shape, got {tuple(intact_logits.shape)} and "
            f"{tuple(perturbed_logits.shape)}."
        )
    k = min(k, intact_logits.shape[-1])
    intact_logits, perturbed_logits = intact_logits.double(), perturbed_logits.double()
    top = intact_logits.topk(k, dim=-1).indices
    log_p = torch.log_softmax(intact_logits.gather(-1, top), dim=-1)
    log_q = torch.log_softmax(perturbed_logits.gather(-1, top), dim=-1)
    p, q = log_p.exp(), log_q.exp()
    m = 0.5 * (p + q)
    log_m = m.log()
    if kind == "release":
        value = 0.5 * ((m * (log_m - log_p)) + (m * (log_m - log_q))).mean(dim=-1)
    else:
        value = 0.5 * ((p * (log_p - log_m)).sum(dim=-1) + (q * (log_q - log_m)).sum(dim=-1))
    return value.clamp_min(0).float()


def all_divergences(
    intact_logits: torch.Tensor, perturbed_logits: torch.Tensor, k: int = 10
) -> dict[str, torch.Tensor]:
    """Both kinds at once (the builder stores both so that the choice can change without re-probing)."""
    return {kind: topk_divergence(intact_logits, perturbed_logits, k=k, kind=kind) for kind in DIVERGENCES}
