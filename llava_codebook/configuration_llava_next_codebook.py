"""Configuration of a LLaVA-NeXT model that prunes redundant visual tokens with a redundancy codebook."""

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import LlavaNextConfig

CODEBOOK_FILENAME = "codebook.safetensors"
PRUNING_STRATEGIES = ("codebook", "none")
PRUNING_MODES = ("threshold", "budget")
POSITION_MODES = ("contiguous", "original")


def validate_pruning_settings(
    pruning_strategy: str,
    pruning_mode: str,
    codebook_threshold: float,
    keep_ratio: float,
    keep_tokens: int | None,
    min_visual_tokens: int,
    position_mode: str,
) -> None:
    """Raise a `ValueError` naming the allowed range for any pruning setting that is out of it.

    Shared by the config (at construction) and the model (for per-call overrides of `generate` / `forward`).
    """
    if pruning_strategy not in PRUNING_STRATEGIES:
        raise ValueError(f"pruning_strategy={pruning_strategy!r} is unknown; use one of {PRUNING_STRATEGIES}.")
    if pruning_mode not in PRUNING_MODES:
        raise ValueError(f"pruning_mode={pruning_mode!r} is unknown; use one of {PRUNING_MODES}.")
    if position_mode not in POSITION_MODES:
        raise ValueError(f"position_mode={position_mode!r} is unknown; use one of {POSITION_MODES}.")
    if isinstance(codebook_threshold, bool) or not isinstance(codebook_threshold, (int, float)):
        raise ValueError(f"codebook_threshold must be a number in [-1.0, 1.0], got {codebook_threshold!r}.")
    if not -1.0 <= float(codebook_threshold) <= 1.0:
        raise ValueError(
            f"codebook_threshold={codebook_threshold} is outside [-1.0, 1.0]: it is compared with a cosine "
            "similarity (a token is kept iff its best cosine to a prototype is below it). Higher keeps more."
        )
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float)) or not 0.0 < float(keep_ratio) <= 1.0:
        raise ValueError(f"keep_ratio={keep_ratio!r} is outside (0.0, 1.0]: it is the share of visual tokens kept.")
    if keep_tokens is not None and (
        isinstance(keep_tokens, bool) or not isinstance(keep_tokens, int) or keep_tokens < 1
    ):
        raise ValueError(f"keep_tokens={keep_tokens!r} must be None or an integer >= 1 (visual tokens kept per image).")
    if isinstance(min_visual_tokens, bool) or not isinstance(min_visual_tokens, int) or min_visual_tokens < 0:
        raise ValueError(f"min_visual_tokens={min_visual_tokens!r} must be an integer >= 0.")


@strict
class LlavaNextCodebookConfig(LlavaNextConfig):
    r"""
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
        `"codebook"` prunes visual tokens that are too similar to a codebook prototype; `"none"` keeps every token.
    pruning_mode (`str`, *optional*, defaults to `"threshold"`):
        `"threshold"` keeps token *i* iff `max_k cos(z_i, C_k) < codebook_threshold` (the kept count varies per
        image); `"budget"` keeps the `keep_tokens` (or `round(keep_ratio * L)`) lowest-scoring tokens of each image.
    codebook_threshold (`float`, *optional*, defaults to 0.11):
        Cosine threshold of threshold mode, in `[-1, 1]`. Higher keeps more tokens.
    keep_ratio (`float`, *optional*, defaults to 0.25):
        Share of each image's visual tokens kept in budget mode, in `(0, 1]`.
    keep_tokens (`int`, *optional*):
        Number of visual tokens kept per image in budget mode; overrides `keep_ratio` when set.
    min_visual_tokens (`int`, *optional*, defaults to 1):
        Lower bound on the visual tokens kept per image (the lowest-scoring ones fill up to it), so that no image
        can vanish from the prompt. 0 disables the guard.
    always_keep_newline (`bool`, *optional*, defaults to `True`):
        Keep the `image_newline` tokens that end each row of the AnyRes tile grid; they are not counted as visual
        tokens by the budget and the minimum.
    position_mode (`str`, *optional*, defaults to `"contiguous"`):
        `"contiguous"`: kept tokens get consecutive position ids, as if the prompt had been written without the
        dropped tokens. `"original"`: every token keeps the position id it had in the full prompt.

    Example:

    ```python
    >>> from llava_codebook import LlavaNextCodebookConfig

    >>> config = LlavaNextCodebookConfig(codebook_repo="org/codebook-llava-next", codebook_threshold=0.2)
    >>> config.pruning_mode
    'threshold'
    ```"""

    model_type = "llava_next_codebook"

    codebook_repo: str | None = None
    codebook_filename: str = CODEBOOK_FILENAME
    codebook_revision: str | None = None
    pruning_strategy: Literal["codebook", "none"] = "codebook"
    pruning_mode: Literal["threshold", "budget"] = "threshold"
    # `int` is accepted too so that `codebook_threshold=1` or `keep_ratio=1` read naturally; both are stored as float.
    codebook_threshold: float | int = 0.11
    keep_ratio: float | int = 0.25
    keep_tokens: int | None = None
    min_visual_tokens: int = 1
    always_keep_newline: bool = True
    position_mode: Literal["contiguous", "original"] = "contiguous"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        validate_pruning_settings(
            pruning_strategy=self.pruning_strategy,
            pruning_mode=self.pruning_mode,
            codebook_threshold=self.codebook_threshold,
            keep_ratio=self.keep_ratio,
            keep_tokens=self.keep_tokens,
            min_visual_tokens=self.min_visual_tokens,
            position_mode=self.position_mode,
        )
        self.codebook_threshold, self.keep_ratio = float(self.codebook_threshold), float(self.keep_ratio)
        if not self.codebook_filename.endswith(".safetensors"):
            raise ValueError(
                f"codebook_filename={self.codebook_filename!r} is not a .safetensors file. Pickled codebooks are never "
                "loaded by the model; convert one with `llava-codebook import-seed FILE.pt --out DIR`."
            )


__all__ = ["LlavaNextCodebookConfig"]
