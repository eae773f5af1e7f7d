"""Token-selection strategies behind one registry: a name in `pruning_strategy` picks one entry.

A strategy sees every visual segment of one call (an image's packed tokens, later a video's) and returns, per
segment, the kept indices into that segment's packed order (and, for a merging rule, the features the kept tokens
carry instead of their own). Every strategy works on the same packing (base view, unpadded tiles, row newlines), the
same batch and the same budget vocabulary:

- the budget counts an image's non-newline tokens: `keep_tokens`, else `round(keep_ratio * n)`, never below
  `min_visual_tokens`, never above `n` (`image_budget`);
- row newlines are never ranked: kept (and not counted) when `always_keep_newline`, dropped otherwise (the codebook
  rule alone ranks them when they are not protected, as it always has);
- a budget split over crops is exact (`split_budget`: largest remainder, ties to the earlier crop, caps honoured).

A strategy declares what it needs (`Strategy.signals`: [CLS] attention, keys or projector inputs of the vision
tower, captured during the one tower pass, see `signals.py`; `uses_codebook`; the modes it defines). Adding a rule
is one function and one entry in `STRATEGIES`; the model, the Space and the benchmarks find it there. docs/strategies.md
compares the rules and states where each departs from its published code.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .selection import codebook_similarity, select_tokens
from .signals import SignalRequest


@dataclass
class Segment:
    """One image's (or video's) packed visual tokens as the language model would receive them.

    features: `[L, D]` post-projector tokens in the stock packed order.
    newline: `[L]` bool, True for the row-newline tokens of the layout.
    modality: `"image"` or `"video"`.
    crop_ids: `[L]` long, the crop (view, tile or frame) each token comes from, -1 for newlines (when known).
    crop_grid: `(rows, cols)` of the tile grid when the crops after the first are tiles of one image in row-major
        order (LLaVA-NeXT AnyRes); `None` when unknown or not a grid.
    signals: what the vision tower computed for these tokens, in packed order (`signals.pack_tower_signals`):
        `"cls_attention"` / `"keys"`: layer -> `[L]` / `[L, d]`, `"projector_inputs"`: `[L, hidden]`.
    """

    features: torch.Tensor
    newline: torch.Tensor
    modality: str = "image"
    crop_ids: torch.Tensor | None = None
    crop_grid: tuple[int, int] | None = None
    signals: dict = field(default_factory=dict)


@dataclass
class StrategyResult:
    """Per segment: ascending kept indices, the per-token score the strategy ranked by (if it has one) and, for a
    merging strategy, the `[n_kept, D]` features handed to the language model for the kept tokens (`None` for a
    segment whose kept tokens carry their own features)."""

    kept: list[torch.Tensor]
    scores: list[torch.Tensor] | None = None
    features: list[torch.Tensor | None] | None = None


@dataclass(frozen=True)
class Strategy:
    """A registry entry: the selection function and what it needs.

    select: `(segments, settings, model) -> StrategyResult`.
    signals: `settings -> SignalRequest`, what the vision tower must provide (captured during encoding).
    modes: the `pruning_mode`s the rule defines.
    uses_codebook: whether it needs the model's codebook.
    merges: whether kept tokens may carry merged features instead of their own.
    """

    select: Callable
    signals: Callable | None = None
    modes: tuple[str, ...] = ("budget",)
    uses_codebook: bool = False
    merges: bool = False

    def __call__(self, segments: list[Segment], settings, model) -> StrategyResult:
        return self.select(segments, settings, model)

    def signal_request(self, settings) -> SignalRequest:
        return self.signals(settings) if self.signals is not None else SignalRequest()


# ------------------------------------------------------------------------------------------------ shared budget rules
def image_budget(n_candidates: int, settings) -> int:
    """Non-newline tokens to keep out of `n_candidates`: `keep_tokens`, else `round(keep_ratio * n)` (Python's
    round), at least `min_visual_tokens`, at most `n_candidates` (what `select_tokens` does in budget mode)."""
    n = settings.keep_tokens if settings.keep_tokens is not None else round(n_candidates * settings.keep_ratio)
    return min(max(n, settings.min_visual_tokens), n_candidates)


def split_budget(total: int, caps: list[int], weights: list[int] | None = None) -> list[int]:
    """Split `total` tokens over parts holding `caps[i]` tokens each, in proportion to integer `weights` (equal when
    `None`); the shares sum to exactly `min(total, sum(caps))`.

    Rounding: each part gets `floor(total * w_i / W)`, and the tokens left over go one each to the parts with the
    largest remainders, ties to the earlier part (so an even split gives the first `total % n` parts one more). A
    part whose share exceeds its cap gets its cap, and what is left is split again over the other parts the same
    way. Parts of weight 0 get nothing unless every part still open has weight 0, which then share equally.
    """
    weights = [1] * len(caps) if weights is None else [int(w) for w in weights]
    if len(weights) != len(caps) or any(w < 0 for w in weights) or any(c < 0 for c in caps):
        raise ValueError(f"split_budget needs one non-negative weight per part; got caps={caps}, weights={weights}.")
    shares = [0] * len(caps)
    remaining = min(int(total), sum(caps))
    open_parts = [i for i, cap in enumerate(caps) if cap > 0]
    while remaining > 0 and open_parts:
        part_weights = [weights[i] for i in open_parts]
        if sum(part_weights) == 0:
            part_weights = [1] * len(open_parts)
        whole = sum(part_weights)
        quota = [remaining * w // whole for w in part_weights]
        leftover = remaining - sum(quota)
        by_remainder = sorted(range(len(open_parts)), key=lambda j: (-(remaining * part_weights[j] % whole), j))
        for j in by_remainder[:leftover]:
            quota[j] += 1
        over = [j for j, i in enumerate(open_parts) if quota[j] > caps[i]]
        if not over:
            for j, i in enumerate(open_parts):
                shares[i] = quota[j]
            break
        for j in over:
            shares[open_parts[j]] = caps[open_parts[j]]
            remaining -= caps[open_parts[j]]
        open_parts = [i for j, i in enumerate(open_parts) if j not in over]
    return shares


def top_k(scores: torch.Tensor, indices: torch.Tensor, k: int) -> torch.Tensor:
    """The `k` of `indices` with the highest `scores`, ties to the earlier index (a stable descending sort)."""
    order = torch.sort(scores[indices], descending=True, stable=True).indices
    return indices[order[:k]]


def _candidates(segment: Segment) -> torch.Tensor:
    return (~segment.newline).nonzero().squeeze(-1)


def _with_newlines(segment: Segment, chosen: torch.Tensor, settings) -> torch.Tensor:
    parts = [chosen.to(segment.newline.device)]
    if settings.always_keep_newline:
        parts.append(segment.newline.nonzero().squeeze(-1))
    return torch.sort(torch.cat(parts)).values


def _crops(segment: Segment, candidates: torch.Tensor, name: str) -> tuple[list[int], list[torch.Tensor]]:
    """The crops of a segment and each crop's candidate indices (ascending), crops in id order."""
    if segment.crop_ids is None:
        raise ValueError(f"pruning_strategy={name!r} splits the budget over crops, but this segment has no crop ids.")
    crop_of = segment.crop_ids[candidates]
    ids = sorted(int(c) for c in crop_of.unique())
    return ids, [candidates[crop_of == c] for c in ids]


def _signal(segment: Segment, kind: str, layer, name: str) -> torch.Tensor:
    values = segment.signals.get(kind)
    if isinstance(values, dict):
        values = values.get(layer)
    if values is None:
        raise ValueError(
            f"pruning_strategy={name!r} needs the vision tower's {kind.replace('_', ' ')}"
            f"{'' if layer is None else f' of layer {layer}'} for each {segment.modality}'s tokens. It is captured "
            "while forward / generate encode the pixels, for the modalities whose tower tokens map one to one onto "
            "packed tokens (images; not pooled video frames); select_visual_tokens gets features encoded already. "
            "Strategies that read the features alone work everywhere: 'codebook', 'codebook_diverse', 'divprune', "
            "'random', 'uniform'."
        )
    return values.to(segment.features.device)


# ----------------------------------------------------------------------------------------------------- the strategies
def codebook_strategy(segments: list[Segment], settings, model) -> StrategyResult:
    """Score every token by its best cosine to a codebook prototype; drop the most redundant (threshold or budget)."""
    scores = _codebook_scores(segments, model)
    kept = [
        select_tokens(
            segment_scores,
            protected=segment.newline if settings.always_keep_newline else None,
            mode=settings.pruning_mode,
            threshold=settings.codebook_threshold,
            keep_ratio=settings.keep_ratio,
            keep_tokens=settings.keep_tokens,
            min_keep=settings.min_visual_tokens,
        )
        for segment, segment_scores in zip(segments, scores)
    ]
    return StrategyResult(kept=kept, scores=scores)


def _codebook_scores(segments: list[Segment], model) -> list[torch.Tensor]:
    prototypes = model.codebook_prototypes(segments[0].features.device)
    # Selection is discrete: no gradient flows through the scores. One product scores every segment of the call.
    with torch.no_grad():
        flat = codebook_similarity(torch.cat([s.features for s in segments]), prototypes)
    return list(flat.split([s.features.shape[0] for s in segments]))


def keep_all_strategy(segments: list[Segment], settings, model) -> StrategyResult:
    """Keep every token (what `pruning_strategy="none"` means); useful as a registry entry for comparisons."""
    return StrategyResult(kept=[torch.arange(s.features.shape[0], device=s.features.device) for s in segments])


def max_min_diverse(features: torch.Tensor, k: int) -> torch.Tensor:
    """DivPrune's greedy solution of the max-min diversity problem (MMDP) on cosine distance; `k` indices in pick order.

    With `d(i, j) = 1 - cos(x_i, x_j)`: the first pick is the token whose nearest other token is farthest (the second
    smallest distance in its column of `d`, its own zero distance being the smallest); each next pick is the token
    farthest from everything picked so far (the largest minimum distance to the picked set). Ties go to the lower
    index. Float32 whatever the input dtype. Unlike the published loop, a picked token is never picked again (there,
    when every remaining distance is 0, e.g. a flat image, a picked index can repeat).
    """
    n = features.shape[0]
    k = min(k, n)
    if k <= 0:
        return torch.empty(0, dtype=torch.long, device=features.device)
    unit = F.normalize(features.float(), dim=-1)
    distance = 1.0 - unit @ unit.T
    if n == 1:
        return torch.zeros(1, dtype=torch.long, device=features.device)
    first = int(torch.argmax(distance.topk(2, dim=0, largest=False).values[1]))
    picks = torch.empty(k, dtype=torch.long, device=features.device)
    picks[0] = first
    closest = distance[first].clone()
    closest[first] = -math.inf
    for step in range(1, k):
        pick = torch.argmax(closest)
        picks[step] = pick
        # A picked token stays at -inf: the minimum never lifts it.
        closest = torch.minimum(closest, distance[pick])
        closest[pick] = -math.inf
    return picks


def divprune_strategy(segments: list[Segment], settings, model) -> StrategyResult:
    """DivPrune (Alvar et al., CVPR 2025, arXiv 2503.02175): keep the budget's most diverse tokens of each image, by
    greedy MMDP on the cosine distance between its packed post-projector tokens (`max_min_diverse`), over the whole
    image at once.

    Deviation: newline tokens are not candidates (kept or dropped by `always_keep_newline`, not counted); the
    published LLaVA-NeXT code runs MMDP over the packed sequence including them, with the budget a share of it.
    """
    kept = []
    for segment in segments:
        candidates = _candidates(segment)
        with torch.no_grad():
            picks = max_min_diverse(segment.features[candidates], image_budget(candidates.numel(), settings))
        kept.append(_with_newlines(segment, candidates[picks], settings))
    return StrategyResult(kept=kept)


def codebook_diverse_strategy(segments: list[Segment], settings, model) -> StrategyResult:
    """Codebook, then diversity (this package's rule): never spend a budget on tokens the codebook marks redundant.

    Per image: the tokens whose codebook score `max_k cos(z_i, C_k)` is below `codebook_threshold` are the
    candidates; if they fit in the budget all are kept (the image keeps fewer than the budget rather than keep
    redundant tokens), otherwise the budget's most diverse of them are kept (DivPrune's greedy MMDP,
    `max_min_diverse`). `min_visual_tokens` still holds: when too few tokens pass the threshold, the least redundant
    of the others fill up to it. Budget mode only; the threshold is the codebook's.
    """
    scores = _codebook_scores(segments, model)
    kept = []
    for segment, segment_scores in zip(segments, scores):
        candidates = _candidates(segment)
        budget = image_budget(candidates.numel(), settings)
        fresh = candidates[segment_scores[candidates] < settings.codebook_threshold]
        if fresh.numel() > budget:
            with torch.no_grad():
                chosen = fresh[max_min_diverse(segment.features[fresh], budget)]
        else:
            floor = min(settings.min_visual_tokens, candidates.numel())
            redundant = candidates[segment_scores[candidates] >= settings.codebook_threshold]
            fill = redundant[
                torch.sort(segment_scores[redundant], stable=True).indices[: max(floor - fresh.numel(), 0)]
            ]
            chosen = torch.cat([fresh, fill])
        kept.append(_with_newlines(segment, chosen, settings))
    return StrategyResult(kept=kept, scores=scores)


def cls_attention_strategy(segments: list[Segment], settings, model) -> StrategyResult:
    """FasterVLM (Zhang et al., arXiv 2412.01818, "[CLS] Attention is All You Need for Training-Free Visual Token
    Pruning"): rank the tokens of each crop by the [CLS]-to-patch attention of the vision tower's layer
    `cls_attention_layer` (the penultimate by default, the layer LLaVA's features come from), averaged over heads,
    and keep each crop's top-k, the image budget split evenly over its crops (`split_budget`).

    Deviations: this runs on the stock LLaVA-NeXT layout (unpadded tile grid, row newlines kept), so the top-k of a
    tile is taken over the tokens that survive unpadding; the published LLaVA-NeXT code fixes
    `mm_patch_merge_type = 'spatial'` (no unpadding, no newlines) and ranks all 576 positions of each tile, padding
    included. The budget is the image's, split evenly, where the published code fixes a per-crop count.
    """
    kept, scores = [], []
    for segment in segments:
        attention = _signal(segment, "cls_attention", settings.cls_attention_layer, "cls_attention")
        candidates = _candidates(segment)
        _, members = _crops(segment, candidates, "cls_attention")
        shares = split_budget(image_budget(candidates.numel(), settings), [m.numel() for m in members])
        chosen = [top_k(attention, crop, share) for crop, share in zip(members, shares)]
        kept.append(_with_newlines(segment, torch.cat(chosen), settings))
        scores.append(attention)
    return StrategyResult(kept=kept, scores=scores)


def visionzip_strategy(segments: list[Segment], settings, model) -> StrategyResult:
    """VisionZip (Yang et al., CVPR 2025, arXiv 2412.04467): per crop, dominant tokens by [CLS] attention, the rest
    merged into contextual tokens by key similarity.

    Per crop (the image budget split evenly over its crops): `round(visionzip_dominant_ratio * share)` (half up)
    dominant tokens with the highest [CLS] attention of layer `cls_attention_layer`; the other tokens of the crop,
    in order, give `share - dominant` contextual targets at a uniform stride (`max(1, n // m)`); every remaining
    token joins the target whose key (that layer's keys, mean over heads) has the highest cosine with its own; a
    contextual token is the target's projector input plus the mean of the projector inputs it absorbed (as the
    published code computes it), then projected. Contextual tokens occupy their target's place.

    Deviations: the [CLS] token is never kept (it has no placeholder in the stock packing; the published code spends
    one dominant slot on it); contextual tokens sit at their target's position, where the published LLaVA-NeXT code
    appends them after the image; ranking and merging use the tokens that survive AnyRes unpadding, and the tile
    grid keeps its newlines (the published LLaVA-NeXT code drops them).
    """
    kept, scores, merged = [], [], []
    for segment in segments:
        attention = _signal(segment, "cls_attention", settings.cls_attention_layer, "visionzip")
        keys = _signal(segment, "keys", settings.cls_attention_layer, "visionzip")
        inputs = _signal(segment, "projector_inputs", None, "visionzip")
        candidates = _candidates(segment)
        _, members = _crops(segment, candidates, "visionzip")
        shares = split_budget(image_budget(candidates.numel(), settings), [m.numel() for m in members])
        chosen, targets, contextual = [], [], []
        for crop, share in zip(members, shares):
            dominant_count = min(share, math.floor(share * settings.visionzip_dominant_ratio + 0.5))
            dominant = top_k(attention, crop, dominant_count)
            chosen.append(dominant)
            count = share - dominant_count
            if count == 0:
                continue
            rest = crop[~torch.isin(crop, dominant)]
            step = max(1, rest.numel() // count)
            picked = torch.arange(0, rest.numel(), step, device=rest.device)[:count]
            is_target = torch.zeros(rest.numel(), dtype=torch.bool, device=rest.device)
            is_target[picked] = True
            crop_targets, others = rest[is_target], rest[~is_target]
            similarity = F.normalize(keys[others], dim=-1) @ F.normalize(keys[crop_targets], dim=-1).T
            owner = similarity.argmax(dim=1)
            absorbed = torch.zeros(count, inputs.shape[-1], dtype=torch.float32, device=inputs.device)
            absorbed.index_add_(0, owner, inputs[others].float())
            counts = torch.bincount(owner, minlength=count).clamp(min=1).unsqueeze(-1)
            contextual.append(inputs[crop_targets].float() + absorbed / counts)
            targets.append(crop_targets)
        chosen.extend(targets)
        keep = _with_newlines(segment, torch.cat(chosen), settings)
        features = segment.features[keep].clone()
        if targets:
            with torch.no_grad():
                projected = model.project_visual_features(torch.cat(contextual).to(inputs.dtype))
            rows = torch.searchsorted(keep, torch.cat(targets))
            features[rows] = projected.to(features.dtype)
        kept.append(keep)
        scores.append(attention)
        merged.append(features)
    return StrategyResult(kept=kept, scores=scores, features=merged)


def hired_strategy(segments: list[Segment], settings, model) -> StrategyResult:
    """HiRED (Arif et al., arXiv 2408.10945): distribute the image budget over the base view and the tiles, then keep
    each crop's top tokens by a late layer's [CLS] attention.

    Per image with budget `B`: the base view gets `min(floor(B * hired_base_share), its tokens)`; the tiles share the
    rest in proportion to how many of the base view's top `floor(n_base * (1 - hired_base_share))` tokens by [CLS]
    attention of layer `hired_budget_layer` (the first) lie in each tile's region of the base view (the base grid cut
    into the tile grid's rows and columns), rounded by `split_budget` so the shares sum to `B` exactly (what the
    tiles cannot hold goes back to the base view). Within each crop the top tokens by [CLS] attention of
    `cls_attention_layer` (summed over heads in the paper; the order is the same) are kept. Newlines are kept.

    Deviations: the published code reshapes the base view's raster into the tile grid (so a 2x2 grid gets four
    horizontal bands, not quadrants) and truncates each tile's share (its shares do not sum to the budget); here a
    tile's region is its spatial block and the split is exact. Top-k runs over the tokens that survive AnyRes
    unpadding, and newlines are kept (the published code drops them).
    """
    kept, scores = [], []
    for segment in segments:
        late = _signal(segment, "cls_attention", settings.cls_attention_layer, "hired")
        early = _signal(segment, "cls_attention", settings.hired_budget_layer, "hired")
        candidates = _candidates(segment)
        crop_ids, members = _crops(segment, candidates, "hired")
        budget = image_budget(candidates.numel(), settings)
        base = members[0]
        tiles = members[1:]
        tile_total = sum(t.numel() for t in tiles)
        base_share = min(math.floor(budget * settings.hired_base_share), base.numel())
        tile_budget = min(budget - base_share, tile_total)
        base_share = budget - tile_budget
        chosen = [top_k(late, base, base_share)]
        if tiles and tile_budget > 0:
            weights = _hired_tile_weights(segment, base, early, crop_ids[1:], settings.hired_base_share)
            shares = split_budget(tile_budget, [t.numel() for t in tiles], weights)
            chosen.extend(top_k(late, tile, share) for tile, share in zip(tiles, shares))
        kept.append(_with_newlines(segment, torch.cat(chosen), settings))
        scores.append(late)
    return StrategyResult(kept=kept, scores=scores)


def _hired_tile_weights(segment, base, early, tile_ids, base_share) -> list[int]:
    """Per tile, how many of the base view's top tokens by early-layer [CLS] attention lie in the tile's region."""
    if segment.crop_grid is None:
        raise ValueError("pruning_strategy='hired' distributes the budget over a tile grid, but this segment has none.")
    rows, cols = segment.crop_grid
    side = math.isqrt(base.numel())
    offset = base.numel() - side * side  # 1 when the feature-select strategy kept [CLS] in front of the base grid
    top = top_k(early, base, math.floor(base.numel() * (1 - base_share)))
    position = torch.searchsorted(base, top) - offset
    position = position[position >= 0]
    region = (position // side) * rows // side * cols + (position % side) * cols // side + 1
    counts = torch.bincount(region, minlength=rows * cols + 1)
    return [int(counts[t]) if t < counts.numel() else 0 for t in tile_ids]


def _generator(settings) -> torch.Generator:
    # One generator per image, seeded alike, so an image keeps the same tokens wherever it sits in a batch.
    return torch.Generator().manual_seed(settings.pruning_seed)


def random_strategy(segments: list[Segment], settings, model) -> StrategyResult:
    """Baseline: a uniformly random subset of the budget's size, drawn with `pruning_seed`."""
    kept = []
    for segment in segments:
        candidates = _candidates(segment)
        order = torch.randperm(candidates.numel(), generator=_generator(settings))
        picks = order[: image_budget(candidates.numel(), settings)].to(candidates.device)
        kept.append(_with_newlines(segment, candidates[picks], settings))
    return StrategyResult(kept=kept)


def uniform_strategy(segments: list[Segment], settings, model) -> StrategyResult:
    """Baseline: a strided grid over the packed order (each crop's raster), `floor((i + phase) * n / k)` for
    `i < k` with one offset `phase` in [0, 1) drawn with `pruning_seed`: evenly spaced, every crop in proportion to
    its tokens."""
    kept = []
    for segment in segments:
        candidates = _candidates(segment)
        n, k = candidates.numel(), image_budget(candidates.numel(), settings)
        phase = float(torch.rand((), generator=_generator(settings), dtype=torch.float64))
        picks = torch.floor((torch.arange(k, dtype=torch.float64) + phase) * n / k).long() if k else torch.zeros(0)
        kept.append(_with_newlines(segment, candidates[picks.long().to(candidates.device)], settings))
    return StrategyResult(kept=kept)


def _cls_layer(settings) -> SignalRequest:
    return SignalRequest(cls_attention_layers=(settings.cls_attention_layer,))


STRATEGIES: dict[str, Strategy] = {
    "codebook": Strategy(codebook_strategy, modes=("threshold", "budget"), uses_codebook=True),
    "codebook_diverse": Strategy(codebook_diverse_strategy, uses_codebook=True),
    "cls_attention": Strategy(cls_attention_strategy, signals=_cls_layer),
    "visionzip": Strategy(
        visionzip_strategy,
        signals=lambda s: SignalRequest(
            cls_attention_layers=(s.cls_attention_layer,), key_layers=(s.cls_attention_layer,), projector_inputs=True
        ),
        merges=True,
    ),
    "divprune": Strategy(divprune_strategy),
    "hired": Strategy(
        hired_strategy,
        signals=lambda s: SignalRequest(cls_attention_layers=(s.cls_attention_layer, s.hired_budget_layer)),
    ),
    "random": Strategy(random_strategy),
    "uniform": Strategy(uniform_strategy),
    "none": Strategy(keep_all_strategy, modes=("threshold", "budget")),
}
# Strategies that need a codebook attached to the model.
NEEDS_CODEBOOK = frozenset(name for name, strategy in STRATEGIES.items() if strategy.uses_codebook)


__all__ = [
    "NEEDS_CODEBOOK",
    "STRATEGIES",
    "Segment",
    "Strategy",
    "StrategyResult",
    "codebook_strategy",
    "image_budget",
    "keep_all_strategy",
    "max_min_diverse",
    "split_budget",
    "top_k",
]
