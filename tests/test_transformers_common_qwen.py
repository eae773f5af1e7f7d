"""transformers' own common model tests (`ModelTesterMixin`, `ConfigTester`) run against the Qwen-VL classes.

The same harness as `test_transformers_common.py` (the LLaVA-NeXT run: upstream modules from the installed sdist,
one pytest item per upstream test and variant, every difference from the stock control classified and rechecked),
for each Qwen family: Qwen2-VL, Qwen2.5-VL and Qwen3-VL. The sdist has no Qwen model tester (`tests/models/` is not
in it), so `TinyQwenVLTester` below provides tiny configs and inputs: 3 samples, each one image of 1 x 4 x 8 patches
(8 merged tokens, 2 x 2 merge) followed by 7 text tokens, with `mm_token_type_ids` as the processor gives them.

Variants per family: `stock` (the stock `XModel` / `XForConditionalGeneration`, the control), `off` (the project's
classes, `pruning_strategy="none"`), `on` (the project's classes pruning in budget mode: 4 of each image's 8 merged
tokens dropped, against a codebook on disk referenced by the config).

Classification (the executable form is `OFF_EXPECTED` / `ON_EXPECTED` below):

| upstream test                                     | variant | kind      | reason                                        |
|---------------------------------------------------|---------|-----------|-----------------------------------------------|
| test_correct_missing_keys                         | off, on | by design | strict loading refuses a load that leaves     |
| test_base_model_prefix_loads_base_weights         | off, on | by design | weights missing, unused or reshaped           |
| test_model_weights_reload_no_missing_tied_weights | off, on | by design | (recheck: the refusal off -> as for stock)    |
| test_can_init_all_missing_weights                 | off, on | by design |                                               |
| test_attention_outputs                            | on      | by design | attentions over the compacted prompt: 11      |
| test_hidden_states_output                         | on      | by design | positions, not 15                             |

Every other upstream test ends for both variants as for the stock classes (passed, skipped for the same reason, or
failed the same way: `STOCK_FAILURES`).
"""

import copy
import shutil
import tempfile
import unittest
from pathlib import Path

import pytest
import torch
import transformers
from test_transformers_common import (
    OFF_EXPECTED,
    Expected,
    check_variant,
    run_upstream,
    upstream,
)
from transformers import AutoModel, AutoModelForImageTextToText, set_seed
from transformers.models.auto import modeling_auto
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from llava_codebook import FAMILIES, RedundancyCodebook

from transformers_upstream import GenerationTesterMixin

pytestmark = pytest.mark.slow

ModelTesterMixin = upstream.modeling.ModelTesterMixin
ConfigTester = upstream.configuration.ConfigTester
floats_tensor = upstream.modeling.floats_tensor
ids_tensor = upstream.modeling.ids_tensor

# ------------------------------------------------------------------------------------------------------ the tester
VISION_START, IMAGE_TOKEN, VIDEO_TOKEN, PAD = 3, 4, 5, 0
TEXT_TOKENS = 7
GRID = (1, 4, 8)  # (t, h, w) patches of every image
MERGED = GRID[0] * GRID[1] * GRID[2] // 4  # 8 language-model tokens per image
FULL_LENGTH = MERGED + TEXT_TOKENS  # 15
PRUNING_ON = {"pruning_strategy": "codebook", "pruning_mode": "budget", "keep_ratio": 0.5}
PRUNING_OFF = {"pruning_strategy": "none"}
PRUNED_LENGTH = TEXT_TOKENS + round(0.5 * MERGED)  # 11

TEXT_CONFIG = {
    "vocab_size": 99,
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "max_position_embeddings": 512,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
    "pad_token_id": PAD,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
VISION_CONFIGS = {
    "qwen2_vl": {
        "depth": 2,
        "embed_dim": 32,
        "hidden_size": 32,
        "num_heads": 4,
        "mlp_ratio": 4,
        "hidden_act": "quick_gelu",
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
    "qwen2_5_vl": {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 37,
        "out_hidden_size": 32,
        "num_heads": 4,
        "hidden_act": "silu",
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 56,
        "fullatt_block_indexes": [1],
        "tokens_per_second": 2,
    },
    "qwen3_vl": {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 37,
        "out_hidden_size": 32,
        "num_heads": 4,
        "hidden_act": "gelu_pytorch_tanh",
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "num_position_embeddings": 16,
        "deepstack_visual_indexes": [0, 1],
    },
}
STOCK_CONFIGS = {
    "qwen2_vl": transformers.Qwen2VLConfig,
    "qwen2_5_vl": transformers.Qwen2_5_VLConfig,
    "qwen3_vl": transformers.Qwen3VLConfig,
}
ARCHITECTURES = list(STOCK_CONFIGS)


class TinyQwenVLTester:
    """Tiny Qwen-VL inputs and config for the upstream mixin (see the module docstring)."""

    def __init__(self, parent, architecture: str, config_class=None, **config_kwargs):
        self.parent = parent
        self.architecture = architecture
        self.config_class = config_class or STOCK_CONFIGS[architecture]
        self.config_kwargs = config_kwargs
        self.text_config = copy.deepcopy(TEXT_CONFIG)
        if architecture == "qwen3_vl":
            self.text_config["head_dim"] = 8
        self.vision_config = copy.deepcopy(VISION_CONFIGS[architecture])
        self.pad_token_id = PAD
        self.num_hidden_layers = TEXT_CONFIG["num_hidden_layers"]
        self.vocab_size = TEXT_CONFIG["vocab_size"]
        self.hidden_size = TEXT_CONFIG["hidden_size"]
        self.num_attention_heads = TEXT_CONFIG["num_attention_heads"]
        self.is_training = True
        self.batch_size = 3
        self.seq_length = FULL_LENGTH
        self.encoder_seq_length = self.seq_length
        self.image_token_id = IMAGE_TOKEN

    def get_config(self):
        return self.config_class(
            text_config=copy.deepcopy(self.text_config),
            vision_config=copy.deepcopy(self.vision_config),
            image_token_id=IMAGE_TOKEN,
            video_token_id=VIDEO_TOKEN,
            vision_start_token_id=VISION_START,
            **self.config_kwargs,
        )

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        patch, temporal = self.vision_config["patch_size"], self.vision_config["temporal_patch_size"]
        patches = GRID[0] * GRID[1] * GRID[2]
        pixel_values = floats_tensor([self.batch_size * patches, 3 * temporal * patch * patch])
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size - 6) + 6
        input_ids[:, :MERGED] = IMAGE_TOKEN
        token_types = torch.zeros_like(input_ids)
        token_types[:, :MERGED] = 1
        inputs = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "pixel_values": pixel_values,
            "image_grid_thw": torch.tensor([GRID] * self.batch_size),
            "mm_token_type_ids": token_types,
        }
        return config, inputs


# Codebooks of the pruning-ON variants, one per architecture: written once per module run, referenced by path.
_SESSION: dict = {}


def _write_codebook(architecture: str, directory: Path) -> Path:
    family = FAMILIES[architecture]
    tester = TinyQwenVLTester(None, architecture, family.config_class, **PRUNING_OFF)
    set_seed(0)
    config, inputs = tester.prepare_config_and_inputs_for_common()
    model = family.model_class(config).eval()
    with torch.no_grad():
        features = model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True)
    prototypes = features.pooler_output[0][::3].detach().clone()
    RedundancyCodebook(prototypes=prototypes, base_model=f"tiny upstream-tester {architecture}").save_pretrained(
        directory
    )
    return directory


class _QwenCommon(ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    """What every Qwen variant shares; pytest never collects these classes itself (`__test__ = False`)."""

    __test__ = False
    architecture = "qwen2_vl"
    config_class = transformers.Qwen2VLConfig
    all_model_classes = ()
    _is_composite = True
    # `get_image_features` returns the merged tokens of all images in one sequence before the split (upstream's own
    # Qwen-VL tests set this too).
    skip_test_image_features_output_shape = True
    test_can_init_all_missing_weights_before_2023 = True

    def config_kwargs(self) -> dict:
        return {}

    def setUp(self):
        self.model_tester = TinyQwenVLTester(self, self.architecture, self.config_class, **self.config_kwargs())
        self.config_tester = ConfigTester(
            self, config_class=self.config_class, has_text_modality=False, common_properties=["image_token_id"]
        )

    def test_config(self):
        self.config_tester.run_common_tests()


def _variants(architecture: str) -> dict:
    family = FAMILIES[architecture]
    stock, stock_generation = (
        next(base for base in cls.__mro__ if base.__module__.startswith("transformers.models."))
        for cls in (family.model_class, family.generation_class)
    )
    common = {"architecture": architecture, "__test__": False}
    return {
        "stock": type(
            f"Stock{architecture}Test",
            (_QwenCommon,),
            {**common, "config_class": STOCK_CONFIGS[architecture], "all_model_classes": (stock, stock_generation)},
        ),
        "off": type(
            f"PruningOff{architecture}Test",
            (_QwenCommon,),
            {
                **common,
                "config_class": family.config_class,
                "all_model_classes": (family.model_class, family.generation_class),
                "config_kwargs": lambda self: dict(PRUNING_OFF),
            },
        ),
        "on": type(
            f"PruningOn{architecture}Test",
            (_QwenCommon,),
            {
                **common,
                "config_class": family.config_class,
                "all_model_classes": (family.model_class, family.generation_class),
                "config_kwargs": lambda self: {**PRUNING_ON, "codebook_repo": str(_SESSION["codebooks"][architecture])},
            },
        ),
    }


VARIANTS = {architecture: _variants(architecture) for architecture in ARCHITECTURES}


def upstream_test_names(architecture: str) -> list[str]:
    stock = VARIANTS[architecture]["stock"]
    names = unittest.TestLoader().getTestCaseNames(stock)
    return [name for name in names if getattr(getattr(stock, name), "__test__", True) is not False]


NAMES = {architecture: upstream_test_names(architecture) for architecture in ARCHITECTURES}
CASES = [(architecture, name) for architecture in ARCHITECTURES for name in NAMES[architecture]]

SHORTER = (
    f"pruning drops {MERGED - round(0.5 * MERGED)} of each image's {MERGED} merged tokens before the language model "
    f"runs, so the {{what}} cover the compacted prompt ({PRUNED_LENGTH} positions) instead of the full one "
    f"({FULL_LENGTH})"
)
ON_EXPECTED: dict[str, Expected] = {
    **OFF_EXPECTED,
    "test_attention_outputs": Expected(
        "by design",
        SHORTER.format(what="attention maps"),
        rf"\[4, {PRUNED_LENGTH}, {PRUNED_LENGTH}\] != \[4, {FULL_LENGTH}, {FULL_LENGTH}\]",
    ),
    "test_hidden_states_output": Expected(
        "by design",
        SHORTER.format(what="hidden states"),
        rf"\[{PRUNED_LENGTH}, 32\] != \[{FULL_LENGTH}, 32\]",
    ),
}

_CONTROL: dict = {}


def control(architecture: str, name: str):
    if (architecture, name) not in _CONTROL:
        _CONTROL[(architecture, name)] = run_upstream(VARIANTS[architecture]["stock"], name)
    return _CONTROL[(architecture, name)]


@pytest.fixture(scope="module", autouse=True)
def registered_project_classes():
    """Register the project's Qwen classes in the auto mapping *names*, like stock models (see the LLaVA-NeXT run);
    the entries are undone when the module ends."""
    added = []
    for architecture in ARCHITECTURES:
        family = FAMILIES[architecture]
        model_type = family.model_type
        assert CONFIG_MAPPING[model_type] is family.config_class
        assert AutoModelForImageTextToText._model_mapping[family.config_class] is family.generation_class
        assert AutoModel._model_mapping[family.config_class] is family.model_class
        for mapping, cls in (
            (modeling_auto.MODEL_MAPPING_NAMES, family.model_class),
            (modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES, family.generation_class),
        ):
            if model_type not in mapping:
                mapping[model_type] = cls.__name__
                added.append((mapping, model_type))
    directory = Path(tempfile.mkdtemp(prefix="llava-codebook-upstream-qwen-"))
    _SESSION["codebooks"] = {a: _write_codebook(a, directory / a) for a in ARCHITECTURES}
    try:
        yield
    finally:
        _SESSION.clear()
        shutil.rmtree(directory, ignore_errors=True)
        for mapping, model_type in added:
            mapping.pop(model_type, None)


@pytest.mark.parametrize(("architecture", "name"), CASES)
def test_stock_control(architecture, name):
    outcome = control(architecture, name)
    if outcome.status == "skipped":
        pytest.skip(outcome.error_line())
    if outcome.status == "failed":
        pytest.xfail(f"the stock classes fail it: {outcome.error_line()}"[:400])


@pytest.mark.parametrize(("architecture", "name"), CASES)
def test_pruning_off(architecture, name):
    check_variant("off", name, OFF_EXPECTED, VARIANTS[architecture], control(architecture, name))


@pytest.mark.parametrize(("architecture", "name"), CASES)
def test_pruning_on(architecture, name):
    check_variant("on", name, ON_EXPECTED, VARIANTS[architecture], control(architecture, name))


def test_classification_tables_name_upstream_tests():
    for architecture in ARCHITECTURES:
        assert set(OFF_EXPECTED) <= set(NAMES[architecture]) and set(ON_EXPECTED) <= set(NAMES[architecture])
