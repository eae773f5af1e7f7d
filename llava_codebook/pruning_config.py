"""The pruning settings every pruning-enabled config carries, whatever the model family, with their validation.

`PruningConfigMixin` is a dataclass of the pruning fields; a family's config is
`@strict class XCodebookConfig(PruningConfigMixin, StockXConfig)` and states only its `model_type` and docstring.
"""

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

CODEBOOK_FILENAME = "codebook.safetensors"
PRUNING_STRATEGIES = (
    "codebook",
    "codebook_diverse",
    "cls_attention",
    "visionzip",
    "divprune",
    "hired",
    "random",
    "uniform",
    "none",
)
# The strategies that define a threshold mode (the rest rank under a budget only); a test checks the registry agrees.
THRESHOLD_STRATEGIES = ("codebook", "none")
PRUNING_MODES = ("threshold", "budget")
POSITION_MODES = ("contiguous", "original")
# The strategies that read the packed features alone (no signal captured inside the vision tower): the only ones that
# can run on tiles encoded apart from their base view, so the only ones tile skipping combines with. A test checks
# the registry agrees.
TILE_SKIPPING_STRATEGIES = ("codebook", "codebook_diverse", "divprune", "random", "uniform", "none")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_choice(name: str, choices: tuple[str, ...]):
    def check(value) -> None:
        if value not in choices:
            raise ValueError(f"{name}={value!r} is unknown; use one of {choices}.")

    return check


def check_codebook_threshold(value) -> None:
    if not _is_number(value) or math.isnan(value):
        raise ValueError(f"codebook_threshold must be a number in [-1.0, 1.0], got {value!r}.")
    if not -1.0 <= float(value) <= 1.0:
        raise ValueError(
            f"codebook_threshold={value} is outside [-1.0, 1.0]: it is compared with a cosine similarity (a token "
            "is kept iff its best cosine to a prototype is below it). Higher keeps more."
        )


def check_keep_ratio(value) -> None:
    if not _is_number(value) or math.isnan(value) or not 0.0 < float(value) <= 1.0:
        raise ValueError(f"keep_ratio={value!r} is outside (0.0, 1.0]: it is the share of visual tokens kept.")


def check_keep_tokens(value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"keep_tokens={value!r} must be None or an integer >= 1 (visual tokens kept per image).")


def check_min_visual_tokens(value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"min_visual_tokens={value!r} must be an integer >= 0 (visual tokens kept per image).")


def check_pruning_seed(value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"pruning_seed={value!r} must be an integer >= 0 (seeds the random and uniform strategies).")


def check_layer_index(name: str):
    def check(value) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(
                f"{name}={value!r} must be an integer: a layer of the vision tower, counted from 0 (first) or from "
                "the end (-1 = last, -2 = penultimate)."
            )

    return check


def check_share(name: str, meaning: str):
    def check(value) -> None:
        if not _is_number(value) or math.isnan(value) or not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name}={value!r} is outside [0.0, 1.0]: it is {meaning}.")

    return check


def check_flag(name: str):
    def check(value) -> None:
        if not isinstance(value, bool):
            raise ValueError(f"{name}={value!r} must be True or False.")

    return check


def check_codebook_filename(value) -> None:
    if not isinstance(value, str) or not value.endswith(".safetensors"):
        raise ValueError(
            f"codebook_filename={value!r} is not a .safetensors file. Pickled codebooks are never loaded by the "
            "model; convert one with `llava-codebook import-seed FILE.pt --base-model MODEL_ID --out DIR`."
        )


# One validator per pruning field. The config runs them at construction, on every attribute assignment (which is
# how `from_pretrained(..., codebook_threshold=...)` and `config.x = ...` set values) and the model runs them on
# per-call overrides, so an invalid value is refused wherever it enters.
PRUNING_VALIDATORS = {
    "pruning_strategy": check_choice("pruning_strategy", PRUNING_STRATEGIES),
    "pruning_mode": check_choice("pruning_mode", PRUNING_MODES),
    "codebook_threshold": check_codebook_threshold,
    "keep_ratio": check_keep_ratio,
    "keep_tokens": check_keep_tokens,
    "min_visual_tokens": check_min_visual_tokens,
    "always_keep_newline": check_flag("always_keep_newline"),
    "position_mode": check_choice("position_mode", POSITION_MODES),
    "pruning_seed": check_pruning_seed,
    "cls_attention_layer": check_layer_index("cls_attention_layer"),
    "visionzip_dominant_ratio": check_share(
        "visionzip_dominant_ratio", "the share of each crop's budget VisionZip gives to dominant tokens"
    ),
    "hired_base_share": check_share(
        "hired_base_share", "the share of each image's budget HiRED gives to the base view"
    ),
    "hired_budget_layer": check_layer_index("hired_budget_layer"),
    "tile_skipping": check_flag("tile_skipping"),
    "tile_skip_share": check_share(
        "tile_skip_share",
        "the share of a tile's region of the base view that must be codebook-redundant for the tile to be skipped",
    ),
}
FLOAT_FIELDS = ("codebook_threshold", "keep_ratio", "visionzip_dominant_ratio", "hired_base_share", "tile_skip_share")


def check_family_has_tiles(config_class, tile_skipping) -> None:
    if tile_skipping and not getattr(config_class, "has_image_tiles", True):
        raise ValueError(
            f"tile_skipping=True asks to skip AnyRes tiles, but a {config_class.__name__} model encodes each image as "
            "one view with no tiles: there is nothing to skip. Tile skipping applies to the images of LLaVA-NeXT, "
            "LLaVA-OneVision and LLaVA-NeXT-Video; leave tile_skipping=False here."
        )


def check_strategy_mode(pruning_strategy, pruning_mode) -> None:
    """Threshold mode is the codebook's own; every other strategy ranks tokens under a budget."""
    if pruning_mode == "threshold" and pruning_strategy not in THRESHOLD_STRATEGIES:
        raise ValueError(
            f"pruning_strategy={pruning_strategy!r} has no threshold mode (only {THRESHOLD_STRATEGIES[0]!r} does): "
            "pass pruning_mode='budget' with keep_tokens=... or keep_ratio=... (per call or in the config)."
        )


def check_tile_skipping_strategy(tile_skipping, pruning_strategy) -> None:
    """Tile skipping encodes the base views and the tiles left in two tower passes, so it combines only with the
    strategies that read the packed features alone."""
    if tile_skipping and pruning_strategy not in TILE_SKIPPING_STRATEGIES:
        raise ValueError(
            f"tile_skipping=True cannot run with pruning_strategy={pruning_strategy!r}: that strategy reads signals "
            "captured inside one vision-tower pass over every crop, and tile skipping encodes the base views and the "
            f"tiles it keeps in two passes. Use one of {TILE_SKIPPING_STRATEGIES[:-1]}, or tile_skipping=False."
        )


def validate_pruning_settings(**settings) -> dict:
    """Validate pruning settings given by name; returns them with the float fields stored as `float`.

    Raises a `ValueError` that names the setting, the value received and the allowed range.
    """
    unknown = set(settings) - set(PRUNING_VALIDATORS)
    if unknown:
        raise TypeError(f"Unknown pruning settings {sorted(unknown)}; expected some of {tuple(PRUNING_VALIDATORS)}.")
    for name, value in settings.items():
        PRUNING_VALIDATORS[name](value)
    if "pruning_strategy" in settings and "pruning_mode" in settings:
        check_strategy_mode(settings["pruning_strategy"], settings["pruning_mode"])
    if "tile_skipping" in settings and "pruning_strategy" in settings:
        check_tile_skipping_strategy(settings["tile_skipping"], settings["pruning_strategy"])
    return {name: float(value) if name in FLOAT_FIELDS else value for name, value in settings.items()}


# The docstring section every family config repeats for its pruning fields (transformers documents config fields in
# the class docstring).
PRUNING_FIELDS_DOC = r"""
    codebook_repo (`str`, *optional*):
        Where the redundancy codebook lives: a Hub repo id (`"org/codebook-llava-next"`), a local directory, or
        `"."` for the repo the model itself is loaded from (a self-contained repo, e.g. with
        `codebook_filename="codebook/codebook.safetensors"`). With `None`, pruning raises until a codebook is given
        (`model.load_codebook(...)`) or is turned off (`pruning_strategy="none"`).
    codebook_filename (`str`, *optional*, defaults to `"codebook.safetensors"`):
        File inside `codebook_repo` holding the `prototypes` tensor of shape `[K, text_hidden_size]`.
    codebook_revision (`str`, *optional*):
        Branch, tag or commit of `codebook_repo` on the Hub. Pin a commit for reproducible results.
    pruning_strategy (`str`, *optional*, defaults to `"codebook"`):
        The rule that chooses the kept tokens (`llava_codebook.strategies`; docs/strategies.md compares them):
        `"codebook"` prunes tokens too similar to a codebook prototype; `"codebook_diverse"` drops the
        codebook-redundant tokens, then keeps the most diverse of the rest (MMDP) up to the budget; `"cls_attention"`
        (FasterVLM), `"visionzip"` (VisionZip, merges), `"divprune"` (DivPrune), `"hired"` (HiRED), `"random"` and
        `"uniform"` are the peers and baselines; `"none"` keeps every token. Every strategy but `"codebook"` needs
        `pruning_mode="budget"`.
    pruning_mode (`str`, *optional*, defaults to `"threshold"`):
        `"threshold"` keeps token *i* iff `max_k cos(z_i, C_k) < codebook_threshold` (the kept count varies per
        image); `"budget"` keeps the `keep_tokens` (or `round(keep_ratio * L)`) lowest-scoring tokens of each image.
        A call that passes `keep_tokens` or `keep_ratio` without `pruning_mode` runs in budget mode.
    codebook_threshold (`float`, *optional*, defaults to 0.11):
        Cosine threshold of threshold mode, in `[-1, 1]`. Higher keeps more tokens.
    keep_ratio (`float`, *optional*, defaults to 0.25):
        Share of each image's visual tokens kept in budget mode, in `(0, 1]`.
    keep_tokens (`int`, *optional*):
        Number of visual tokens kept per image in budget mode; overrides `keep_ratio` when set, except against a
        `keep_ratio` given per call (without `keep_tokens`): that call keeps its share.
    min_visual_tokens (`int`, *optional*, defaults to 1):
        Lower bound on the visual tokens kept per image (the lowest-scoring ones fill up to it), so that no image
        can vanish from the prompt. 0 disables the guard.
    always_keep_newline (`bool`, *optional*, defaults to `True`):
        Keep the `image_newline` tokens that end each row of the AnyRes tile grid (and a LLaVA-OneVision video); they
        are not counted as visual tokens by the budget and the minimum.
    position_mode (`str`, *optional*, defaults to `"contiguous"`):
        `"contiguous"`: kept tokens get consecutive position ids, as if the prompt had been written without the
        dropped tokens. `"original"`: every token keeps the position id it had in the full prompt.
    pruning_seed (`int`, *optional*, defaults to 0):
        Seed of the `"random"` draw and of the `"uniform"` grid's offset. Each image is drawn from a generator seeded
        with it, so an image keeps the same tokens whatever else is in the batch.
    cls_attention_layer (`int`, *optional*, defaults to -2):
        Vision-tower layer whose [CLS]-to-patch attention ranks tokens for `"cls_attention"`, `"visionzip"` (its keys
        too) and `"hired"` (selection within a crop); -2 is the penultimate layer, the one LLaVA's features come from.
    visionzip_dominant_ratio (`float`, *optional*, defaults to 0.84375):
        Share of each crop's budget that `"visionzip"` keeps as dominant tokens (by [CLS] attention); the rest are
        contextual tokens merged from the remaining ones. 0.84375 = 54/64, the published 54 + 10 (and 108 + 20,
        162 + 30) split.
    hired_base_share (`float`, *optional*, defaults to 0.5):
        HiRED's alpha: share of each image's budget given to the base (full-image) view; the rest is distributed over
        the tiles. 0.5 as in the published evaluation scripts.
    hired_budget_layer (`int`, *optional*, defaults to 0):
        Vision-tower layer whose [CLS] attention on the base view distributes HiRED's tile budget (the first layer,
        as published).
    tile_skipping (`bool`, *optional*, defaults to `False`):
        Codebook-guided tile skipping (LLaVA-NeXT, LLaVA-OneVision and LLaVA-NeXT-Video images): encode each image's
        base view first, score its tokens with the codebook, and never send to the vision tower an AnyRes tile whose
        region of the base view is redundant: at least `tile_skip_share` of the base-view tokens in that region score
        at or above `codebook_threshold` (a tile showing padding only is skipped too). A skipped tile's packed tokens
        count as dropped (a row newline goes with its row when skipping empties the row); the remaining tokens are
        selected by `pruning_strategy` as usual, under the same budget (`keep_ratio` is a share of the image's full
        token count) and minimum. Needs a codebook whatever the strategy, and a strategy that reads the features
        alone (`codebook`, `codebook_diverse`, `divprune`, `random`, `uniform`). Videos have no tiles and are pruned
        as usual; LLaVA-1.5 refuses the setting.
    tile_skip_share (`float`, *optional*, defaults to 0.9):
        Share, in `[0, 1]`, of a tile's region of the base view that must be codebook-redundant for the tile to be
        skipped (`tile_skipping`). 1.0 skips only tiles whose whole region is redundant; 0.0 skips every tile (the
        base view alone, as the released LLaVA-NeXT evaluation runs).
"""


@dataclass
class PruningConfigMixin:
    """The pruning fields, validated at construction, on assignment and before any save (see `PRUNING_FIELDS_DOC`)."""

    codebook_repo: str | None = None
    codebook_filename: str = CODEBOOK_FILENAME
    codebook_revision: str | None = None
    pruning_strategy: Literal[
        "codebook", "codebook_diverse", "cls_attention", "visionzip", "divprune", "hired", "random", "uniform", "none"
    ] = "codebook"
    pruning_mode: Literal["threshold", "budget"] = "threshold"
    # `int` is accepted too so that `codebook_threshold=1` or `keep_ratio=1` read naturally; both are stored as float.
    codebook_threshold: float | int = 0.11
    keep_ratio: float | int = 0.25
    keep_tokens: int | None = None
    min_visual_tokens: int = 1
    always_keep_newline: bool = True
    position_mode: Literal["contiguous", "original"] = "contiguous"
    pruning_seed: int = 0
    cls_attention_layer: int = -2
    visionzip_dominant_ratio: float | int = 0.84375
    hired_base_share: float | int = 0.5
    hired_budget_layer: int = 0
    tile_skipping: bool = False
    tile_skip_share: float | int = 0.9
    # Whether the family's images have AnyRes tiles at all; a family without them (LLaVA-1.5) refuses tile skipping.
    has_image_tiles: ClassVar[bool] = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # Fields are assigned one by one, so a rule between two of them is checked once all are set (and again on
        # every call's settings and before any save).
        check_strategy_mode(self.pruning_strategy, self.pruning_mode)
        check_tile_skipping_strategy(self.tile_skipping, self.pruning_strategy)

    def __setattr__(self, name, value):
        # Runs at construction, on `config.x = ...` and for `from_pretrained(..., x=...)` (which sets attributes after
        # loading), so no path can store an invalid value. `@strict` has type-checked `value` already.
        if name in PRUNING_VALIDATORS:
            PRUNING_VALIDATORS[name](value)
            if name == "tile_skipping":
                check_family_has_tiles(type(self), value)
            if name in FLOAT_FIELDS:
                value = float(value)
        elif name == "codebook_filename":
            check_codebook_filename(value)
        elif name == "model_type":
            # A stock `llava_next` config.json read into this class (the class's own `from_pretrained` on a llava-hf
            # repo) must not carry `llava_next` along: transformers picks the checkpoint key conversion by it.
            value = type(self).model_type
        super().__setattr__(name, value)

    def save_pretrained(self, save_directory, *args, **kwargs):
        # Never write a config that cannot be loaded back, even if a value was forced past the validators
        # (e.g. through `__dict__`): check every field again before anything is written.
        validate_pruning_settings(**{name: getattr(self, name) for name in PRUNING_VALIDATORS})
        check_codebook_filename(self.codebook_filename)
        return super().save_pretrained(save_directory, *args, **kwargs)


@dataclass
class LayoutPositionsConfigMixin:
    """For a family whose stock model derives position ids from the full prompt's layout (Qwen-VL's M-RoPE: an image
    token's (t, h, w) is its place in the image grid): a pruned prompt keeps those positions, so `position_mode` is
    `"original"`, and `"contiguous"` (renumbering the kept tokens) is refused; no renumbered prompt has a layout."""

    position_mode: Literal["contiguous", "original"] = "original"

    def __setattr__(self, name, value):
        if name == "position_mode" and value != "original":
            check_layout_position_mode(value, type(self).__name__)
        super().__setattr__(name, value)


def check_layout_position_mode(value, owner: str) -> None:
    """Refuse any `position_mode` but `"original"` for a family whose positions come from the prompt's layout."""
    if value != "original":
        raise ValueError(
            f"position_mode={value!r} is not available for {owner}: its model gives each visual token the 3-D (t, h, "
            "w) position of its place in the image or video grid (M-RoPE), which a pruned prompt keeps; renumbering "
            "the kept tokens would give positions of no grid. Use position_mode='original' (the default here)."
        )
