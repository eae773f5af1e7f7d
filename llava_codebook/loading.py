"""Load any LLaVA-NeXT checkpoint (a stock llava-hf repo or a pruning-enabled one) into the pruning-aware class."""

from .configuration_llava_next_codebook import LlavaNextCodebookConfig
from .modeling_llava_next_codebook import (
    CODEBOOK_REFERENCE_FIELDS,
    PRUNING_FIELDS,
    LlavaNextCodebookForConditionalGeneration,
)

CONFIG_OVERRIDES = PRUNING_FIELDS + CODEBOOK_REFERENCE_FIELDS
_HUB_KWARGS = ("revision", "cache_dir", "local_files_only", "token", "force_download")


def load_pruned_model(model_id: str, **kwargs) -> LlavaNextCodebookForConditionalGeneration:
    """Load `model_id` as `LlavaNextCodebookForConditionalGeneration`, with pruning settings given as arguments.

    `model_id` is a Hub id or local directory of a stock LLaVA-NeXT checkpoint (e.g. `llava-hf/llava-v1.6-mistral-7b-hf`)
    or of a pruning-enabled repo. Config fields (`codebook_repo`, `codebook_threshold`, `pruning_mode`, ...) override
    what the checkpoint's config says; every other argument (`dtype`, `device_map`, `revision`, ...) goes to
    `from_pretrained`.

    Example:
        >>> model = load_pruned_model("llava-hf/llava-v1.6-mistral-7b-hf", codebook_repo="org/codebook", dtype="auto")
    """
    overrides = {name: kwargs.pop(name) for name in CONFIG_OVERRIDES if name in kwargs}
    hub = {name: kwargs[name] for name in _HUB_KWARGS if name in kwargs}
    # Read the raw config so a stock `llava_next` config becomes a `llava_next_codebook` one without a type-mismatch
    # warning, and the overrides are validated together with everything else at construction.
    config_dict, _ = LlavaNextCodebookConfig.get_config_dict(model_id, **hub)
    config_dict = {k: v for k, v in config_dict.items() if k not in ("model_type", "architectures", "auto_map")}
    config = LlavaNextCodebookConfig.from_dict({**config_dict, **overrides})
    return LlavaNextCodebookForConditionalGeneration.from_pretrained(model_id, config=config, **kwargs)
