"""Build parameters: the release's probe ranks, prompt and conversations, and its per-model recipe as named presets.

A preset holds two kinds of settings. The *thresholds* (redundancy test and clustering) act on stored probes, so
changing them reruns stages 3-5 only. The *probe recipe* (conversation, the "A" step, pad row, ranking) changes the
probes themselves, so a work directory made with another recipe is refused on resume.
"""

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
RANK_DTYPES = ("float32", "float16")
RANK_TIES = ("split", "group")
GROUP_SELECTIONS = ("release", "unique")
CLUSTER_DTYPES = ("float64", "float32", "float16")
CHECKPOINT_TEMPLATE = "checkpoint"


@dataclass(frozen=True)
class ReleaseConversation:
    """One of the release's conversation templates (its `conv_templates` entry `name`), rendered for one question.

    `style` is how the turns are joined: `"two"` (LLaVA-1.5's `SeparatorStyle.TWO`: `system + sep + "USER: " +
    message + sep + "ASSISTANT:"`), `"llama3"` (the Meta-Llama-3-Instruct chat template the release applies: a
    header per turn, contents trimmed, `<|eot_id|>` after each, then an open assistant header) and `"chatml"`
    (Qwen's `SeparatorStyle.CHATML`). The user message is the image placeholder, a newline, then the question.

    `bos_count` is how many BOS tokens start the release's token ids. The release tokenizes the text in chunks split
    at the image placeholder, keeps the BOS its tokenizer adds to the first chunk and drops the others; for LLaMA-3
    the template itself also writes `<|begin_of_text|>`, so that prompt starts with two. The text kept here has no
    BOS in it: the builder prepends `bos_count` copies of the tokenizer's BOS id.
    """

    name: str
    system: str
    roles: tuple[str, str]
    style: str
    sep: str
    bos_count: int

    def render(self, question: str, image_token: str = "<image>") -> str:
        """The prompt text (without BOS) for one user turn holding the image then `question`."""
        user, assistant = self.roles
        message = f"{image_token}\n{question}"
        if self.style == "two":
            return f"{self.system}{self.sep}{user}: {message}{self.sep}{assistant}:"
        if self.style == "chatml":
            return f"{self.system}{self.sep}\n{user}\n{message}{self.sep}\n{assistant}\n"
        if self.style == "llama3":
            turns = [("system", self.system), (user, message)]
            text = "".join(
                f"<|start_header_id|>{role}<|end_header_id|>\n\n{body.strip()}{self.sep}" for role, body in turns
            )
            return text + f"<|start_header_id|>{assistant}<|end_header_id|>\n\n"
        raise ValueError(f"Unknown conversation style {self.style!r}.")


_VICUNA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
_LLAVA_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language."
)
CONVERSATIONS: dict[str, ReleaseConversation] = {
    # LLaVA-1.5: the release's probing scripts (`--conv_mode llava_v1`, LLaMA tokenizer adds BOS).
    "llava_v1": ReleaseConversation("llava_v1", _VICUNA_SYSTEM, ("USER", "ASSISTANT"), "two", " ", bos_count=1),
    # LLaMA3-LLaVA-NeXT: the release's evaluation scripts (its probing scripts for this model are not public).
    "llava_llama_3": ReleaseConversation(
        "llava_llama_3", _LLAVA_SYSTEM, ("user", "assistant"), "llama3", "<|eot_id|>", bos_count=2
    ),
    # LLaVA-OneVision (Qwen2): the release's evaluation scripts (`qwen_1_5`; Qwen's tokenizer adds no BOS).
    "qwen_1_5": ReleaseConversation(
        "qwen_1_5",
        "<|im_start|>system\nYou are a helpful assistant.",
        ("<|im_start|>user", "<|im_start|>assistant"),
        "chatml",
        "<|im_end|>",
        bos_count=0,
    ),
}


@dataclass(frozen=True)
class BuildPreset:
    """The thresholds of the redundancy test and the clustering, and the probe recipe, of one release run.

    A probed token is redundant iff `ctx_weight * div_ctx + global_weight * div_global < jsd_thres` and
    `p_max < top1_prob_thres`. A global cluster is kept when its members come from at least `min_unique_images`
    distinct images (the release's rule is "more than" its threshold, so its 64 and 16 are 65 and 17 here).
    `divergence` picks the divergence those thresholds apply to: `"release"` (the
    default) is the release's `0.5 * (KL(M||P) + KL(M||Q))` averaged over the top-k entries, the quantity its
    thresholds were tuned on; `"jsd"` is the textbook Jensen-Shannon divergence `0.5 * (KL(P||M) + KL(Q||M))`
    summed over the entries (for small perturbations the two agree up to a factor: the JSD is about `top_logits`
    times the release value, so thresholds tuned for one do not carry over to the other).

    Probe recipe (what the release's scripts did around the formulas):

    * `conversation`: the release's conversation for the family (a key of `CONVERSATIONS`), or `"checkpoint"` for
      the checkpoint's own chat template (no system prompt; whatever BOS the template writes).
    * `skip_first_token`: when the greedy first token is this token (e.g. SentencePiece `"▁A"`), the logits of the
      second step are read instead, as the release did for LLaVA-1.5 (its answers often start with "A ..."); each
      run (single-token, intact and perturbed leave-one-out) decides on its own. `""`: never.
    * `pad_token_id`: the embedding row that replaces tokens in leave-one-out (the release used fixed rows); None
      takes the model config's pad token.
    * `rank_dtype` / `rank_ties`: [CLS]-similarity ranking in `"float32"` or `"float16"` (the release's: its
      vision tower ran in fp16); `"split"` probes one patch per rank (ties in raster order), `"group"` probes every
      patch whose similarity equals the rank's value together, as the release did (so a tied group is probed at
      each of its ranks; with `group_selection` below, the source of duplicate rows in the released codebooks).
      Leave-one-out always has a single target per rank: the patch at that position of a stable sort (lower
      raster index first among ties; the release took `topk(...).indices[-1]`, whose order among ties CUDA does
      not specify).
    * `index_rank_start`: for towers without [CLS] (ranking by raster index), the raster index probed for rank 1.
      The release probed index `n` for rank `n` (start 1; index 0 is never probed); 0 probes index `n - 1`.
    * `group_selection`: what the per-image selection adds for a kept token row when probes feed tied groups
      (`rank_ties="group"`; with `"split"` every probe is one row and both values give the kept rows).
      `"release"` (default, the release's rule): each kept row adds its probe's *whole* tied group, so a group of
      `g` patches whose `m` rows were kept (counting every rank it was probed at) is added `m` times, `m * g`
      rows, duplicates included, as in the released codebooks. `"unique"` (a departure): the same patches, each
      once per image.
    * `cluster_dtype`: which arithmetic both DPC-KNN steps use (see `dpcknn`): `"float16"` is TCFormer's
      `cluster_dpc_knn` run on fp16 tensors, as the release's caller passed them (its clustering module is not
      public); `"float64"` (default) and `"float32"` compute the rule in that precision, without fp16 rounding
      (a point's distance to itself is 0).
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
    conversation: str = CHECKPOINT_TEMPLATE
    skip_first_token: str = ""
    pad_token_id: int | None = None
    rank_dtype: str = "float32"
    rank_ties: str = "split"
    index_rank_start: int = 0
    group_selection: str = "release"
    cluster_dtype: str = "float64"

    def __post_init__(self):
        for name, allowed in (
            ("divergence", DIVERGENCES),
            ("conversation", (CHECKPOINT_TEMPLATE, *CONVERSATIONS)),
            ("rank_dtype", RANK_DTYPES),
            ("rank_ties", RANK_TIES),
            ("group_selection", GROUP_SELECTIONS),
            ("cluster_dtype", CLUSTER_DTYPES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is unknown; use one of {allowed}.")
        for name in ("cluster_size_thres", "prototype_cluster_nums", "per_image_clusters", "knn_k", "top_logits"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("min_unique_images", "index_rank_start"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.pad_token_id is not None and self.pad_token_id < 0:
            raise ValueError(f"pad_token_id must be a token id (>= 0) or None, got {self.pad_token_id}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, BuildPreset] = {
    "llava-1.5": BuildPreset(
        top1_prob_thres=0.15,
        jsd_thres=2e-3,
        cluster_size_thres=8,
        prototype_cluster_nums=64,
        min_unique_images=65,  # the release: more than 64
        conversation="llava_v1",
        skip_first_token="▁A",
        pad_token_id=0,
    ),
    "llava-next-llama3": BuildPreset(
        top1_prob_thres=0.10,
        jsd_thres=2e-3,
        cluster_size_thres=8,
        prototype_cluster_nums=64,
        min_unique_images=65,  # the release: more than 64
        conversation="llava_llama_3",
        pad_token_id=0,
    ),
    "llava-ov": BuildPreset(
        top1_prob_thres=0.08,
        jsd_thres=1.8e-3,
        cluster_size_thres=3,
        prototype_cluster_nums=24,
        min_unique_images=17,  # the release: more than 16
        conversation="qwen_1_5",
        pad_token_id=151643,
        index_rank_start=1,
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
