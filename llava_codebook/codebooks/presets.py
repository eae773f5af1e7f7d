"""Build parameters: the release's probe ranks and prompt, and its per-model thresholds as named presets."""

from dataclasses import asdict, dataclass, replace
from typing import Any

# Ranks (1-based, in descending [CLS]-similarity order) probed per 336 px crop: the 24 most [CLS]-like tokens, then
# blocks of 8 spread over the rest of the 576. On a smaller grid only the ranks that exist are probed.
RELEASE_PROBE_RANKS: tuple[int, ...] = tuple(
    list(range(1, 25))
    + [rank for start in (37, 73, 145, 217, 289, 361, 433, 505, 569) for rank in range(start, start + 8)]
)
RELEASE_PROMPT = "What does this image show? You must provide a single word that best describes the image."
DIVERGENCES = ("release", "jsd")


@dataclass(frozen=True)
class BuildPreset:
    """Thresholds of the redundancy test and the clustering that turns redundant tokens into a codebook.

    A probed token is redundant iff `ctx_weight * div_ctx + global_weight * div_global < jsd_thres` and
    `p_max < top1_prob_thres`. `divergence` picks the divergence those thresholds apply to: `"release"` (the
    default) is the release's `0.5 * (KL(M||P) + KL(M||Q))` averaged over the top-k entries, the quantity its
    thresholds were tuned on; `"jsd"` is the textbook Jensen-Shannon divergence `0.5 * (KL(P||M) + KL(Q||M))`
    summed over the entries (for small perturbations the two agree up to a factor: the JSD is about `top_logits`
    times the release value, so thresholds tuned for one do not carry over to the other).
    """

    top1_prob_thres: float
    jsd_thres: float
    cluster_size_thres: int
    prototype_cluster_nums: int
    min_unique_images: int
    ctx_weight: float = 1.0
    global_weight: float = 16.0
    per_image_clusters: int = 8
    knn_k: int = 5
    top_logits: int = 10
    pmax_top_logits: int = 50
    divergence: str = "release"

    def __post_init__(self):
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"divergence={self.divergence!r} is unknown; use one of {DIVERGENCES}.")
        for name in ("cluster_size_thres", "prototype_cluster_nums", "per_image_clusters", "knn_k", "top_logits"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.min_unique_images < 0:
            raise ValueError(f"min_unique_images must be >= 0, got {self.min_unique_images}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, BuildPreset] = {
    "llava-1.5": BuildPreset(
        top1_prob_thres=0.15, jsd_thres=2e-3, cluster_size_thres=8, prototype_cluster_nums=64, min_unique_images=64
    ),
    "llava-next-llama3": BuildPreset(
        top1_prob_thres=0.10, jsd_thres=2e-3, cluster_size_thres=8, prototype_cluster_nums=64, min_unique_images=64
    ),
    "llava-ov": BuildPreset(
        top1_prob_thres=0.08, jsd_thres=1.8e-3, cluster_size_thres=3, prototype_cluster_nums=24, min_unique_images=16
    ),
}


def get_preset(name: str | BuildPreset, **overrides) -> BuildPreset:
    """A named preset (`llava-1.5`, `llava-next-llama3`, `llava-ov`) with any fields overridden (None = keep)."""
    if isinstance(name, BuildPreset):
        preset = name
    elif name in PRESETS:
        preset = PRESETS[name]
    else:
        raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)} or pass a BuildPreset.")
    unknown = set(overrides) - set(BuildPreset.__dataclass_fields__)
    if unknown:
        raise ValueError(
            f"Unknown preset fields {sorted(unknown)}; valid fields: {sorted(BuildPreset.__dataclass_fields__)}."
        )
    return replace(preset, **{key: value for key, value in overrides.items() if value is not None})
