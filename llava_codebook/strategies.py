"""Token-selection strategies behind one registry: a name in `pruning_strategy` picks one function.

A strategy sees every visual segment of one call (an image's packed tokens, later a video's) and returns, per
segment, the kept indices into that segment's packed order. Budgets, the per-segment minimum and the protected
row-newline tokens mean the same for every strategy (`select_tokens`). Adding a rule is one function and one entry
in `STRATEGIES`; the model, the Space and the benchmarks find it there.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .selection import codebook_similarity, select_tokens


@dataclass
class Segment:
    """One image's (or video's) packed visual tokens as the language model would receive them.

    features: `[L, D]` post-projector tokens in the stock packed order.
    newline: `[L]` bool, True for the row-newline tokens of the layout.
    modality: `"image"` or `"video"`.
    crop_ids: `[L]` long, the crop (view, tile or frame) each token comes from, -1 for newlines (when known).
    """

    features: torch.Tensor
    newline: torch.Tensor
    modality: str = "image"
    crop_ids: torch.Tensor | None = None


@dataclass
class StrategyResult:
    """Per segment: ascending kept indices, and the per-token score the strategy ranked by (if it has one)."""

    kept: list[torch.Tensor]
    scores: list[torch.Tensor] | None = None


def _budget_kwargs(settings) -> dict:
    return dict(
        mode=settings.pruning_mode,
        threshold=settings.codebook_threshold,
        keep_ratio=settings.keep_ratio,
        keep_tokens=settings.keep_tokens,
        min_keep=settings.min_visual_tokens,
    )


def codebook_strategy(segments: list[Segment], settings, model) -> StrategyResult:
    """Score every token by its best cosine to a codebook prototype; drop the most redundant (threshold or budget)."""
    prototypes = model.codebook_prototypes(segments[0].features.device)
    # Selection is discrete: no gradient flows through the scores. One product scores every segment of the call.
    with torch.no_grad():
        flat = codebook_similarity(torch.cat([s.features for s in segments]), prototypes)
    scores = list(flat.split([s.features.shape[0] for s in segments]))
    kept = [
        select_tokens(
            segment_scores,
            protected=segment.newline if settings.always_keep_newline else None,
            **_budget_kwargs(settings),
        )
        for segment, segment_scores in zip(segments, scores)
    ]
    return StrategyResult(kept=kept, scores=scores)


def keep_all_strategy(segments: list[Segment], settings, model) -> StrategyResult:
    """Keep every token (what `pruning_strategy="none"` means); useful as a registry entry for comparisons."""
    return StrategyResult(kept=[torch.arange(s.features.shape[0], device=s.features.device) for s in segments])


Strategy = Callable[[list[Segment], object, object], StrategyResult]
STRATEGIES: dict[str, Strategy] = {
    "codebook": codebook_strategy,
    "none": keep_all_strategy,
}
# Strategies that need a codebook attached to the model.
NEEDS_CODEBOOK = frozenset({"codebook"})


__all__ = ["NEEDS_CODEBOOK", "STRATEGIES", "Segment", "StrategyResult", "codebook_strategy", "keep_all_strategy"]
