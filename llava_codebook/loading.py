"""Load any supported checkpoint (a stock llava-hf or Qwen-VL repo, or a pruning-enabled one) into its pruning-aware
class."""

from transformers import PretrainedConfig

from .families import family_for_config
from .pruning_loading import CODEBOOK_REFERENCE_FIELDS
from .pruning_settings import PRUNING_FIELDS

CONFIG_OVERRIDES = PRUNING_FIELDS + CODEBOOK_REFERENCE_FIELDS
_HUB_KWARGS = ("revision", "cache_dir", "local_files_only", "token", "force_download")


def load_pruned_model(model_id: str, **kwargs):
    """Load `model_id` into the pruning-aware generation class of its family, with pruning settings as arguments.

    `model_id` is a Hub id or local directory of a stock checkpoint of a supported family (LLaVA 1.5, LLaVA-NeXT,
    LLaVA-OneVision, LLaVA-NeXT-Video, Qwen2-VL, Qwen2.5-VL, Qwen3-VL; e.g. `llava-hf/llava-1.5-7b-hf`,
    `Qwen/Qwen2.5-VL-7B-Instruct`) or of a pruning-enabled repo; the family is
    read from its config's `model_type` (`llava_codebook.families`), and any other type is refused with the list of
    supported ones. Config fields (`codebook_repo`, `codebook_threshold`, `pruning_mode`, ...) override what the
    checkpoint's config says; every other argument (`dtype`, `device_map`, `revision`, ...) goes to `from_pretrained`.

    Example:
        >>> model = load_pruned_model("llava-hf/llava-1.5-7b-hf", codebook_repo="org/codebook", dtype="auto")
    """
    overrides = {name: kwargs.pop(name) for name in CONFIG_OVERRIDES if name in kwargs}
    hub = {name: kwargs[name] for name in _HUB_KWARGS if name in kwargs}
    # Read the raw config so a stock config becomes the family's pruning-enabled one without a type-mismatch warning,
    # and the overrides are validated together with everything else at construction.
    config_dict, _ = PretrainedConfig.get_config_dict(model_id, **hub)
    family = family_for_config(config_dict, str(model_id))
    config_dict = {k: v for k, v in config_dict.items() if k not in ("model_type", "architectures", "auto_map")}
    config = family.config_class.from_dict({**config_dict, **overrides})
    return family.generation_class.from_pretrained(model_id, config=config, **kwargs)
