"""The redundancy rule as pure functions: features in, scores out; scores in, kept indices out.

The model, the Space, the codebook builder and the benchmarks all call these two functions, so the rule exists once.
"""

import torch
import torch.nn.functional as F


def codebook_similarity(features: torch.Tensor, prototypes: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
    """Score each token by its best cosine similarity to any prototype: `s_i = max_k cos(z_i, C_k)`.

    Args:
        features: `[N, D]` visual tokens in the space the codebook was built in (after the projector).
        prototypes: `[K, D]` codebook rows.
        chunk_size: tokens scored per matrix product, bounding the `[chunk, K]` similarity block in memory.

    Returns:
        `[N]` float32 scores in `[-1, 1]` on the device of `features`. The computation is done in float32 whatever
        the input dtypes, so scores do not depend on whether the model runs in fp16, bf16 or fp32.
    """
    if features.ndim != 2 or prototypes.ndim != 2:
        raise ValueError(
            f"features must be [N, D] and prototypes [K, D]; got {tuple(features.shape)} and {tuple(prototypes.shape)}."
        )
    if features.shape[-1] != prototypes.shape[-1]:
        raise ValueError(
            f"Feature dimension {features.shape[-1]} does not match the codebook dimension {prototypes.shape[-1]}: "
            "the codebook was built for another model (it must match the language model's hidden size)."
        )
    if prototypes.shape[0] == 0:
        raise ValueError("The codebook has no prototypes: every token would score -1 and nothing would be pruned.")
    protos = F.normalize(prototypes.to(device=features.device, dtype=torch.float32), dim=-1)
    scores = []
    for start in range(0, features.shape[0], chunk_size):
        block = F.normalize(features[start : start + chunk_size].float(), dim=-1)
        scores.append((block @ protos.T).amax(dim=-1))
    if not scores:
        return torch.empty(0, dtype=torch.float32, device=features.device)
    return torch.cat(scores)


def select_tokens(
    scores: torch.Tensor,
    *,
    mode: str = "threshold",
    threshold: float = 0.11,
    keep_ratio: float = 0.25,
    keep_tokens: int | None = None,
    min_keep: int = 1,
    protected: torch.Tensor | None = None,
) -> torch.Tensor:
    """Choose the tokens of one image to keep, returned as sorted indices (raster order preserved).

    Args:
        scores: `[L]` redundancy scores of one image's tokens (higher = more redundant).
        mode: `"threshold"` keeps token *i* iff `scores[i] < threshold`; `"budget"` keeps the `keep_tokens` (or
            `round(keep_ratio * L)`) lowest-scoring tokens, ties broken by position.
        min_keep: at least this many unprotected tokens are kept; the lowest-scoring ones fill up to it.
        protected: `[L]` bool mask of tokens that are always kept and are not counted by the budget or the minimum
            (the AnyRes row-newline tokens).

    Returns:
        `[n_kept]` int64 indices into `scores`, ascending.
    """
    if scores.ndim != 1:
        raise ValueError(f"scores must be one image's [L] vector, got shape {tuple(scores.shape)}.")
    if protected is None:
        protected = torch.zeros_like(scores, dtype=torch.bool)
    candidates = (~protected).nonzero().squeeze(-1)
    # Candidates ordered from least to most redundant; a stable sort makes ties go to the earlier token.
    ranked = candidates[torch.sort(scores[candidates].float(), stable=True).indices]
    if mode == "threshold":
        n_keep = int((scores[candidates] < threshold).sum())
    elif mode == "budget":
        n_keep = keep_tokens if keep_tokens is not None else int(round(candidates.numel() * keep_ratio))
    else:
        raise ValueError(f"mode={mode!r} is unknown; use 'threshold' or 'budget'.")
    # Threshold mode keeps exactly a prefix of `ranked`, so one prefix length covers both modes and the minimum.
    n_keep = min(max(n_keep, min_keep), candidates.numel())
    keep = torch.cat([ranked[:n_keep], protected.nonzero().squeeze(-1)])
    return torch.sort(keep).values
