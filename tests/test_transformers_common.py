"""transformers' own common model tests (`ModelTesterMixin`, `ConfigTester`) run against the project's classes.

The upstream test modules come from the installed transformers' sdist (see `transformers_upstream.py`; this module
is skipped, with the reason, only when that sdist cannot be downloaded). One model tester (tiny LLaVA-NeXT configs,
the sizes of upstream's own LLaVA-NeXT tester) drives three unittest classes that differ only in the classes under
test and the config:

- `StockLlavaNextTest`: the stock `LlavaNextModel` / `LlavaNextForConditionalGeneration`, the control.
- `CodebookPruningOffTest`: `LlavaNextCodebookModel` / `LlavaNextCodebookForConditionalGeneration` with
  `pruning_strategy="none"`. Every upstream test must end as it does for the control; `OFF_EXPECTED` lists the
  exceptions, each classified.
- `CodebookPruningOnTest`: the same classes pruning in budget mode (10 of each image's 24 packed tokens dropped)
  against a codebook on disk that the config references, so every model the mixin builds (by `__init__`, by
  `from_pretrained`, on the meta device) prunes. Every difference from the control is classified in `ON_EXPECTED`.

Each upstream test is one pytest item per variant (`test_stock_control[...]`, `test_pruning_off[...]`,
`test_pruning_on[...]`), run through `unittest`, so upstream's `setUp`, `subTest` and `skipTest` behave as upstream.
A variant that ends differently from the control fails its item unless the table names the test; then the item is
an explicit xfail carrying the classification, and only if the failure text matches the entry's pattern and the
test ends as for the control once the named cause is removed (`recheck`: the strict loading relaxed; for a bug, its
proposed `fix` applied, while without the fix it must still differ). A table entry whose test no longer differs, or
whose bug no longer shows, fails too (strict): the table must be updated when a fix lands.

`GenerationTesterMixin` and `ExportTesterMixin` are stand-ins without tests: their modules are not in the sdist, so
upstream's generation and export suites do not run here (generation is held against the stock model in
`test_modeling.py`).

Classification (the tables `OFF_EXPECTED` / `ON_EXPECTED` below are the executable form):

| upstream test                                     | variant | kind        | reason                                  |
|---------------------------------------------------|---------|-------------|-----------------------------------------|
| test_correct_missing_keys                         | off, on | by design   | loads a head from a base-model          |
|                                                   |         |             | checkpoint (lm_head missing), or a      |
| test_base_model_prefix_loads_base_weights         | off, on | by design   | placeholder for every weight: strict    |
| test_model_weights_reload_no_missing_tied_weights | off, on | by design   | loading refuses it                      |
|                                                   |         |             | (recheck: refusal off -> as for stock)  |
| test_can_init_all_missing_weights                 | off, on | by design   | every weight left to initialisation     |
|                                                   |         |             | (strict loading refuses; recheck as     |
|                                                   |         |             | above)                                  |
| test_attention_outputs                            | on      | by design   | attentions over the compacted prompt:   |
|                                                   |         |             | 21 positions, not 31                    |
| test_hidden_states_output                         | on      | by design   | hidden states over the compacted prompt |

Every other upstream test ends for both variants as for the stock classes (passed, or skipped for the same reason:
accelerator, flash-attention, deepspeed, kernels, `@slow`). The stock classes themselves fail
`test_training_gradient_checkpointing*` with this tester (no gradient reaches the vision tower's unused
post-layernorm; upstream's own LLaVA-NeXT test marks them xfail); the project's classes fail them identically.
"""

import contextlib
import copy
import os
import re
import shutil
import tempfile
import time
import unittest
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModel,
    AutoModelForImageTextToText,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextModel,
    set_seed,
)
from transformers.models.auto import modeling_auto
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from llava_codebook import (
    LlavaNextCodebookConfig,
    LlavaNextCodebookForConditionalGeneration,
    LlavaNextCodebookModel,
    RedundancyCodebook,
)
from llava_codebook import pruning_loading

from transformers_upstream import GenerationTesterMixin, UpstreamTestsUnavailable, import_upstream

try:
    upstream = import_upstream()
except UpstreamTestsUnavailable as error:
    pytest.skip(f"transformers' own tests are not available here: {error}", allow_module_level=True)

# About a minute for the three variants on an idle 2-core machine (two when it is shared): end-to-end scale.
pytestmark = pytest.mark.slow

ModelTesterMixin = upstream.modeling.ModelTesterMixin
ConfigTester = upstream.configuration.ConfigTester
floats_tensor = upstream.modeling.floats_tensor
ids_tensor = upstream.modeling.ids_tensor

# ------------------------------------------------------------------------------------------------------ the tester
TEXT_CONFIG = {
    "model_type": "llama",
    "vocab_size": 99,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 37,
    "hidden_act": "gelu",
    "max_position_embeddings": 580,
    "initializer_range": 0.02,
    "pad_token_id": 1,
}
VISION_CONFIG = {
    "model_type": "clip_vision_model",
    "image_size": 8,
    "patch_size": 4,
    "num_channels": 3,
    "hidden_size": 32,
    "projection_dim": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "initializer_range": 0.02,
}
IMAGE_TOKEN_ID = 0
TEXT_TOKENS = 7
PACKED_TOKENS = 24  # per image: 4 base-crop tokens + a 4x4 grid whose 4 rows each end with a newline
NEWLINES = 4
# Pruning ON: budget mode keeps round(0.5 * 20) of each image's 20 visual tokens, plus its 4 row newlines, so every
# image loses 10 of its 24 packed tokens whatever the (random) weights.
PRUNING_ON = {"pruning_strategy": "codebook", "pruning_mode": "budget", "keep_ratio": 0.5}
PRUNING_OFF = {"pruning_strategy": "none"}
FULL_LENGTH = TEXT_TOKENS + PACKED_TOKENS  # 31
PRUNED_LENGTH = TEXT_TOKENS + NEWLINES + round(0.5 * (PACKED_TOKENS - NEWLINES))  # 21


class TinyLlavaNextTester:
    """Tiny LLaVA-NeXT inputs and config for the upstream mixin (the sizes of upstream's LLaVA-NeXT tester).

    One 8x8 image per sample, 2x2 patches per crop, grid pinpoints [[16, 16]]: 5 crops per image (base + 2x2 tiles)
    and 24 packed tokens (4 base + 4 rows of 4 grid tokens, each row with its newline). The prompt is the 24
    placeholders followed by 7 text tokens.
    """

    def __init__(self, parent, config_class=LlavaNextConfig, **config_kwargs):
        self.parent = parent
        self.config_class = config_class
        self.config_kwargs = config_kwargs
        self.text_config = copy.deepcopy(TEXT_CONFIG)
        self.vision_config = copy.deepcopy(VISION_CONFIG)
        self.pad_token_id = TEXT_CONFIG["pad_token_id"]
        self.image_token_index = IMAGE_TOKEN_ID
        self.num_hidden_layers = TEXT_CONFIG["num_hidden_layers"]
        self.vocab_size = TEXT_CONFIG["vocab_size"]
        self.hidden_size = TEXT_CONFIG["hidden_size"]
        self.num_attention_heads = TEXT_CONFIG["num_attention_heads"]
        self.is_training = True
        self.batch_size = 3
        self.num_channels = 3
        self.image_size = VISION_CONFIG["image_size"]
        self.image_grid_pinpoints = [[16, 16]]
        self.num_image_tokens = PACKED_TOKENS
        self.seq_length = FULL_LENGTH
        self.encoder_seq_length = self.seq_length

    def get_config(self):
        return self.config_class(
            text_config=copy.deepcopy(self.text_config),
            vision_config=copy.deepcopy(self.vision_config),
            image_token_index=self.image_token_index,
            projector_hidden_act="gelu",
            vision_feature_select_strategy="default",
            vision_feature_layer=-1,
            image_grid_pinpoints=self.image_grid_pinpoints,
            image_seq_length=self.num_image_tokens,
            **self.config_kwargs,
        )

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor([self.batch_size, 5, self.num_channels, self.image_size, self.image_size])
        return self.get_config(), pixel_values

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values = self.prepare_config_and_inputs()
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size - 2) + 2
        input_ids[input_ids == self.image_token_index] = self.pad_token_id
        input_ids[:, : self.num_image_tokens] = self.image_token_index
        inputs_dict = {
            "pixel_values": pixel_values,
            "image_sizes": torch.tensor([[self.image_size, self.image_size]] * self.batch_size),
            "input_ids": input_ids,
            "attention_mask": torch.ones(input_ids.shape, dtype=torch.long),
        }
        return config, inputs_dict


# The codebook of the pruning-ON variant: written once per module run, referenced by absolute path in the config.
_SESSION: dict = {}


def _write_codebook(directory: Path) -> Path:
    """Prototypes taken from packed image features of a tiny model (8 of one image's tokens)."""
    tester = TinyLlavaNextTester(None, LlavaNextCodebookConfig, **PRUNING_OFF)
    set_seed(0)
    config, inputs = tester.prepare_config_and_inputs_for_common()
    model = LlavaNextCodebookModel(config).eval()
    with torch.no_grad():
        packed = model.get_image_features(inputs["pixel_values"], inputs["image_sizes"], return_dict=True)
    prototypes = packed.pooler_output[0][::3][:8].detach().clone()
    RedundancyCodebook(prototypes=prototypes, base_model="tiny upstream-tester LLaVA-NeXT").save_pretrained(directory)
    return directory


def pruning_on_config_kwargs() -> dict:
    return {**PRUNING_ON, "codebook_repo": str(_SESSION["codebook_dir"])}


class _UpstreamCommon(ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    """What every variant shares; pytest never collects these classes itself (`__test__ = False`)."""

    __test__ = False
    config_class = LlavaNextConfig
    all_model_classes = ()
    _is_composite = True
    # LLaVA-NeXT's `get_image_features` returns one row per AnyRes crop (3 images x 5 crops = 15), not per image:
    # upstream's flag for testers whose image batch is not the vision batch.
    skip_test_image_features_output_shape = True
    # Upstream runs this test only for models whose configuration file carries a copyright year >= 2023 (stock
    # LLaVA-NeXT: 2024); the project's file has no such line, so without the flag it would be skipped for it alone.
    test_can_init_all_missing_weights_before_2023 = True

    def config_kwargs(self) -> dict:
        return {}

    def setUp(self):
        self.model_tester = TinyLlavaNextTester(self, self.config_class, **self.config_kwargs())
        self.config_tester = ConfigTester(
            self,
            config_class=self.config_class,
            has_text_modality=False,
            common_properties=["image_token_index", "vision_feature_layer", "image_seq_length"],
        )

    def test_config(self):
        self.config_tester.run_common_tests()


class StockLlavaNextTest(_UpstreamCommon):
    __test__ = False
    config_class = LlavaNextConfig
    all_model_classes = (LlavaNextModel, LlavaNextForConditionalGeneration)


class CodebookPruningOffTest(_UpstreamCommon):
    __test__ = False
    config_class = LlavaNextCodebookConfig
    all_model_classes = (LlavaNextCodebookModel, LlavaNextCodebookForConditionalGeneration)

    def config_kwargs(self) -> dict:
        return dict(PRUNING_OFF)


class CodebookPruningOnTest(_UpstreamCommon):
    __test__ = False
    config_class = LlavaNextCodebookConfig
    all_model_classes = (LlavaNextCodebookModel, LlavaNextCodebookForConditionalGeneration)

    def config_kwargs(self) -> dict:
        return pruning_on_config_kwargs()


VARIANTS = {"stock": StockLlavaNextTest, "off": CodebookPruningOffTest, "on": CodebookPruningOnTest}


def upstream_test_names() -> list[str]:
    names = unittest.TestLoader().getTestCaseNames(StockLlavaNextTest)
    return [name for name in names if getattr(getattr(StockLlavaNextTest, name), "__test__", True) is not False]


NAMES = upstream_test_names()


# ------------------------------------------------------------------------------------------------------ running
@dataclass
class Outcome:
    status: str  # "passed", "failed" or "skipped"
    details: list[str] = field(default_factory=list)  # tracebacks of failures, reasons of skips
    seconds: float = 0.0

    @property
    def text(self) -> str:
        return "\n".join(self.details)

    def error_line(self) -> str:
        """The first failure's exception line, or the first skip reason."""
        if not self.details:
            return ""
        lines = self.details[0].strip().splitlines()
        if self.status != "failed":
            return lines[0]
        raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Exit)\b", line)]
        return (raised or lines)[-1]

    def error_type(self) -> str:
        return self.error_line().split(":", 1)[0].rsplit(".", 1)[-1]

    def summary(self) -> str:
        return f"{self.status}: {self.error_line()}"[:300]


def run_upstream(case_class, name: str) -> Outcome:
    """Run one upstream test method of `case_class` through unittest (same seed for every variant)."""
    result = unittest.TestResult()
    case = case_class(name)
    set_seed(0)
    start = time.perf_counter()
    case.run(result)
    seconds = time.perf_counter() - start
    failures = [trace for _, trace in result.failures + result.errors]
    failures += [f"unexpected success of an expected failure: {test}" for test in result.unexpectedSuccesses]
    if failures:
        return Outcome("failed", failures, seconds)
    whole_skips = [reason for test, reason in result.skipped if test is case]
    if whole_skips:
        return Outcome("skipped", whole_skips, seconds)
    # Skipped subtests (e.g. one model class without weight conversions) with the rest passing: passed.
    return Outcome("passed", [f"subtest skipped: {test}: {reason}" for test, reason in result.skipped], seconds)


_CONTROL: dict[str, Outcome] = {}


def control(name: str) -> Outcome:
    if name not in _CONTROL:
        _CONTROL[name] = run_upstream(StockLlavaNextTest, name)
    return _CONTROL[name]


# -------------------------------------------------------------------------------------------------- rechecks
@contextlib.contextmanager
def strict_loading_relaxed():
    """Loading as stock transformers does it: the project's refusal of incomplete checkpoints switched off."""
    with mock.patch.object(pruning_loading, "refuse_incomplete_load", lambda *args, **kwargs: None):
        yield


# ---------------------------------------------------------------------------------------------- classification
@dataclass(frozen=True)
class Expected:
    """A classified difference from the control.

    `kind` is "by design" or "project bug"; `match` must be found in the variant's failure text, so a different
    failure of the same test is not excused. The classification is then verified: inside the `recheck` context
    managers (what removes a by-design cause, e.g. the strict loading) plus, for a bug, its proposed `fix`, the test
    must end as for the control; and for a bug, under `recheck` alone it must still differ (else the bug is fixed).
    """

    kind: str
    reason: str
    match: str
    recheck: tuple = ()
    fix: object = None


STRICT_LOADING = (
    "the project's from_pretrained refuses any load that would leave a weight missing, unused or reshaped "
    "(IncompleteCheckpointError); this upstream test loads such a checkpoint on purpose ({what}). Rechecked: with "
    "the refusal switched off the test ends as for the stock classes."
)
OFF_EXPECTED: dict[str, Expected] = {
    "test_correct_missing_keys": Expected(
        "by design",
        STRICT_LOADING.format(what="a head loaded from a base-model checkpoint, lm_head left random"),
        "IncompleteCheckpointError",
        (strict_loading_relaxed,),
    ),
    "test_base_model_prefix_loads_base_weights": Expected(
        "by design",
        STRICT_LOADING.format(what="a head loaded from a base-model checkpoint, lm_head left random"),
        "IncompleteCheckpointError",
        (strict_loading_relaxed,),
    ),
    "test_model_weights_reload_no_missing_tied_weights": Expected(
        "by design",
        STRICT_LOADING.format(what="every weight replaced by one unrelated placeholder tensor"),
        "IncompleteCheckpointError",
        (strict_loading_relaxed,),
    ),
    "test_can_init_all_missing_weights": Expected(
        "by design",
        STRICT_LOADING.format(what="from_pretrained(None, state_dict={}): every weight left to initialisation"),
        "IncompleteCheckpointError",
        (strict_loading_relaxed,),
    ),
}

SHORTER = (
    "pruning drops 10 of each image's 24 placeholders before the language model runs, so the {what} cover the "
    f"compacted prompt ({PRUNED_LENGTH} positions) instead of the full one ({FULL_LENGTH})"
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

# The stock classes fail these with this tester; the project's classes must fail them the same way.
STOCK_FAILURES = {
    "test_training_gradient_checkpointing": "no gradient reaches the vision tower's post-layernorm (LLaVA-NeXT "
    "reads an earlier layer); upstream's own LLaVA-NeXT test marks it xfail",
}
STOCK_FAILURES["test_training_gradient_checkpointing_use_reentrant_false"] = STOCK_FAILURES[
    "test_training_gradient_checkpointing"
]
STOCK_FAILURES["test_training_gradient_checkpointing_use_reentrant_true"] = STOCK_FAILURES[
    "test_training_gradient_checkpointing"
]


def _normalised(line: str) -> str:
    return re.sub(r"Codebook", "", line)


def check_variant(
    variant: str, name: str, table: dict[str, Expected], variants: dict | None = None, control_outcome=None
) -> None:
    """Run `variants[variant]`'s upstream test `name` (default: this module's LLaVA-NeXT variants) and hold it against
    the control's outcome (default: this module's stock control), as the module docstring describes."""
    variants = variants or VARIANTS
    reference = control_outcome or control(name)
    outcome = run_upstream(variants[variant], name)
    expected = table.get(name)
    same = outcome.status == reference.status and (
        outcome.status != "failed" or _normalised(outcome.error_line()) == _normalised(reference.error_line())
    )
    if same and expected is None:
        if outcome.status == "skipped":
            pytest.skip(f"skipped for the stock classes too: {outcome.error_line()}")
        if outcome.status == "failed":
            pytest.xfail(f"fails as for the stock classes: {STOCK_FAILURES.get(name, reference.summary())}")
        return
    where = f"pruning {variant.upper()}: {name} {outcome.summary()}; the stock classes {reference.summary()}"
    if expected is None:
        pytest.fail(f"{where}\n--- this variant:\n{outcome.text}\n--- stock:\n{reference.text}", pytrace=False)
    if same:
        pytest.fail(
            f"{name} is classified ({expected.kind}: {expected.reason}) but now ends as for the stock classes "
            f"({outcome.status}): remove its entry from the table.",
            pytrace=False,
        )
    if not re.search(expected.match, outcome.text):
        pytest.fail(
            f"{where}, but not as classified ({expected.kind}; looked for /{expected.match}/):\n{outcome.text}",
            pytrace=False,
        )
    if expected.fix is not None and expected.recheck:
        # The bug must still be there: with only the by-design cause removed, the test still differs.
        without_fix = run_under(expected.recheck, variant, name, variants)
        if without_fix.status == reference.status:
            pytest.fail(
                f"{where}; classified as a project bug, but under {_names(expected.recheck)} alone it now ends as "
                f"for the stock classes: the bug is fixed, reclassify the entry (by design) with no `fix`.",
                pytrace=False,
            )
    contexts = (*expected.recheck, *((expected.fix,) if expected.fix is not None else ()))
    if contexts:
        rechecked = run_under(contexts, variant, name, variants)
        if rechecked.status != reference.status:
            pytest.fail(
                f"{where}; the classification ({expected.kind}) is not confirmed: under {_names(contexts)} it ends "
                f"{rechecked.summary()}\n{rechecked.text}",
                pytrace=False,
            )
    pytest.xfail(f"{expected.kind}: {expected.reason}")


def _names(contexts) -> str:
    return " + ".join(context.__name__ for context in contexts)


def run_under(contexts, variant: str, name: str, variants: dict | None = None) -> Outcome:
    with contextlib.ExitStack() as stack:
        for context in contexts:
            stack.enter_context(context())
        return run_upstream((variants or VARIANTS)[variant], name)


# ------------------------------------------------------------------------------------------------------ session
@pytest.fixture(scope="module", autouse=True)
def registered_project_classes():
    """Register the project's classes in the auto mapping *names*, like a stock model.

    Upstream decides labels and base-model handling by looking the class names up in these mappings. Importing
    `llava_codebook` already registers the classes with the Auto classes themselves (checked here); the name entries
    are undone when the module ends, so no other test module sees them.
    """
    model_type = LlavaNextCodebookConfig.model_type
    assert CONFIG_MAPPING[model_type] is LlavaNextCodebookConfig
    assert (
        AutoModelForImageTextToText._model_mapping[LlavaNextCodebookConfig] is LlavaNextCodebookForConditionalGeneration
    )
    assert AutoModel._model_mapping[LlavaNextCodebookConfig] is LlavaNextCodebookModel
    names = [
        (modeling_auto.MODEL_MAPPING_NAMES, LlavaNextCodebookModel.__name__),
        (modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES, LlavaNextCodebookForConditionalGeneration.__name__),
    ]
    added = [mapping for mapping, _ in names if model_type not in mapping]
    for mapping, class_name in names:
        mapping.setdefault(model_type, class_name)
    directory = Path(tempfile.mkdtemp(prefix="llava-codebook-upstream-"))
    _SESSION["codebook_dir"] = _write_codebook(directory / "codebook")
    try:
        yield
    finally:
        _SESSION.clear()
        shutil.rmtree(directory, ignore_errors=True)
        for mapping in added:
            mapping.pop(model_type, None)


# ------------------------------------------------------------------------------------------ the upstream tests
@pytest.mark.parametrize("name", NAMES)
def test_stock_control(name):
    outcome = control(name)
    if outcome.status == "skipped":
        pytest.skip(outcome.error_line())
    if outcome.status == "failed":
        known = STOCK_FAILURES.get(name)
        pytest.xfail(f"the stock classes fail it: {known or 'not classified'}: {outcome.error_line()}"[:400])


@pytest.mark.parametrize("name", NAMES)
def test_pruning_off(name):
    check_variant("off", name, OFF_EXPECTED)


@pytest.mark.parametrize("name", NAMES)
def test_pruning_on(name):
    check_variant("on", name, ON_EXPECTED)


def test_classification_tables_name_upstream_tests():
    """A renamed or removed upstream test must not leave a stale entry behind."""
    assert set(OFF_EXPECTED) <= set(NAMES) and set(ON_EXPECTED) <= set(NAMES)
    assert set(STOCK_FAILURES) <= set(NAMES)


# ------------------------------------------------------------------------ legacy checkpoints (reverse mapping)
LEGACY_PREFIXES = ("language_model.model.", "language_model.lm_head.", "vision_tower.", "multi_modal_projector.")


def saved_keys(model, directory) -> set[str]:
    model.save_pretrained(directory)
    return set(load_file(os.path.join(directory, "model.safetensors")))


def project_config(stock_config, **pruning) -> LlavaNextCodebookConfig:
    fields = {k: v for k, v in stock_config.to_dict().items() if k not in ("model_type", "architectures")}
    return LlavaNextCodebookConfig(**fields, **pruning)


PAIRS = {
    "for_conditional_generation": (LlavaNextForConditionalGeneration, LlavaNextCodebookForConditionalGeneration),
    "base_model": (LlavaNextModel, LlavaNextCodebookModel),
}


@pytest.mark.parametrize("pair", PAIRS)
def test_stock_legacy_checkpoint_loads_into_project_classes(pair, tmp_path):
    """A checkpoint written by the stock class in the llava-hf layout loads with every tensor equal."""
    stock_class, project_class = PAIRS[pair]
    set_seed(0)
    stock_config = TinyLlavaNextTester(None).get_config()
    stock = stock_class(stock_config).eval()
    keys = saved_keys(stock, tmp_path)
    assert all(key.startswith(LEGACY_PREFIXES) or key == "image_newline" for key in keys), sorted(keys)
    assert any(key.startswith("language_model.model.") for key in keys)

    for pruning in (PRUNING_OFF, pruning_on_config_kwargs()):
        project = project_class.from_pretrained(tmp_path, config=project_config(stock_config, **pruning))
        assert (project.codebook is not None) == (pruning["pruning_strategy"] == "codebook")
        expected, loaded = stock.state_dict(), project.state_dict()
        assert loaded.keys() == expected.keys()
        for key, tensor in expected.items():
            torch.testing.assert_close(loaded[key], tensor, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("pair", PAIRS)
def test_project_checkpoint_loads_into_stock_classes(pair, tmp_path):
    """What the project's `save_pretrained` writes loads into the stock class, every weight used and equal."""
    stock_class, project_class = PAIRS[pair]
    set_seed(0)
    stock_config = TinyLlavaNextTester(None).get_config()
    project = project_class(project_config(stock_config, **PRUNING_OFF)).eval()
    project.save_pretrained(tmp_path)
    stock, info = stock_class.from_pretrained(tmp_path, config=stock_config, output_loading_info=True)
    assert not any(info[what] for what in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    expected, loaded = project.state_dict(), stock.state_dict()
    assert loaded.keys() == expected.keys()
    for key, tensor in expected.items():
        torch.testing.assert_close(loaded[key], tensor, rtol=0, atol=0, msg=key)


def test_stock_full_checkpoint_loads_into_project_base_model(tmp_path):
    """`AutoModel` on a llava-hf repo: the base model takes every weight of a full checkpoint but the head."""
    set_seed(0)
    stock_config = TinyLlavaNextTester(None).get_config()
    stock = LlavaNextForConditionalGeneration(stock_config).eval()
    stock.save_pretrained(tmp_path)
    project = LlavaNextCodebookModel.from_pretrained(tmp_path, config=project_config(stock_config, **PRUNING_OFF))
    expected, loaded = stock.model.state_dict(), project.state_dict()
    assert loaded.keys() == expected.keys()
    for key, tensor in expected.items():
        torch.testing.assert_close(loaded[key], tensor, rtol=0, atol=0, msg=key)


def _layout_differences(pair, tmp_path) -> tuple[set[str], set[str]]:
    stock_class, project_class = PAIRS[pair]
    stock_config = TinyLlavaNextTester(None).get_config()
    stock_keys = saved_keys(stock_class(stock_config), tmp_path / "stock")
    project_keys = saved_keys(project_class(project_config(stock_config, **PRUNING_OFF)), tmp_path / "project")
    return stock_keys - project_keys, project_keys - stock_keys


@pytest.mark.parametrize("pair", PAIRS)
def test_project_save_writes_stock_legacy_layout(pair, tmp_path):
    """The project's `save_pretrained` writes exactly the key set the stock class writes (llava-hf's layout)."""
    stock_only, project_only = _layout_differences(pair, tmp_path)
    assert not stock_only and not project_only, (sorted(stock_only)[:4], sorted(project_only)[:4])


# ------------------------------------------------------------------------------- initialisation on meta device
MODEL_CLASSES = {
    cls.__name__: cls
    for cls in (
        LlavaNextModel,
        LlavaNextForConditionalGeneration,
        LlavaNextCodebookModel,
        LlavaNextCodebookForConditionalGeneration,
    )
}


def _meta_initialisation_differences(model_class) -> list[str]:
    """Weights that differ between `model_class(config)` and the same model built on the meta device, moved with
    `to_empty` and initialised by `init_weights()` (what `from_pretrained` does for any weight it does not load),
    under upstream's seeded initialisation."""
    stock = not model_class.__name__.startswith("LlavaNextCodebook")
    config_class, pruning = (LlavaNextConfig, {}) if stock else (LlavaNextCodebookConfig, PRUNING_OFF)
    config = TinyLlavaNextTester(None, config_class, **pruning)
    with upstream.modeling.seeded_weight_init():
        from_init = model_class(copy.deepcopy(config.get_config()))
        with torch.device("meta"):
            from_meta = model_class(copy.deepcopy(config.get_config()))
        from_meta.to_empty(device="cpu")
        from_meta.init_weights()
    expected, initialised = from_init.state_dict(), from_meta.state_dict()
    return sorted(key for key, tensor in expected.items() if not torch.equal(tensor, initialised[key]))


@pytest.mark.parametrize(
    "name",
    [
        "LlavaNextModel",
        "LlavaNextForConditionalGeneration",
        "LlavaNextCodebookModel",
        "LlavaNextCodebookForConditionalGeneration",
    ],
)
def test_meta_device_initialisation_matches_init(name):
    assert _meta_initialisation_differences(MODEL_CLASSES[name]) == []


# --------------------------------------------------------------------------------- inputs_embeds, pruning ON
@pytest.mark.parametrize("project_class", [LlavaNextCodebookForConditionalGeneration, LlavaNextCodebookModel])
def test_inputs_embeds_with_pruning_matches_input_ids(project_class):
    """With pruning ON, `forward(inputs_embeds=..., pixel_values=..., image_sizes=...)` finds the placeholders as the
    stock model does (by the image token's embedding) and gives what `forward(input_ids=...)` gives."""
    set_seed(0)
    tester = TinyLlavaNextTester(None, LlavaNextCodebookConfig, **pruning_on_config_kwargs())
    config, inputs = tester.prepare_config_and_inputs_for_common()
    # Row 0 left-padded: 3 pads, the 24 placeholders, 4 text tokens.
    inputs["input_ids"][0] = torch.cat(
        [
            torch.full((3,), tester.pad_token_id),
            torch.full((PACKED_TOKENS,), IMAGE_TOKEN_ID),
            inputs["input_ids"][0, PACKED_TOKENS : FULL_LENGTH - 3],
        ]
    )
    inputs["attention_mask"][0, :3] = 0
    model = project_class(config).eval()
    input_ids = inputs.pop("input_ids")
    inputs_embeds = model.get_input_embeddings()(input_ids)
    with torch.no_grad():
        by_ids = model(input_ids=input_ids, **inputs)
        by_embeds = model(inputs_embeds=inputs_embeds, **inputs)
        with model.pruning_disabled():
            full = model(inputs_embeds=inputs_embeds, **inputs)
    assert by_embeds.visual_token_selection is not None
    torch.testing.assert_close(by_embeds.visual_token_selection.num_kept, by_ids.visual_token_selection.num_kept)
    for kept_embeds, kept_ids in zip(
        by_embeds.visual_token_selection.kept_indices, by_ids.visual_token_selection.kept_indices
    ):
        assert torch.equal(kept_embeds, kept_ids)
    assert by_embeds[0].shape[1] == PRUNED_LENGTH < full[0].shape[1] == FULL_LENGTH
    torch.testing.assert_close(by_embeds[0], by_ids[0])


def test_generate_from_inputs_embeds_with_pruning_matches_input_ids():
    """`generate(inputs_embeds=..., pixel_values=...)` prunes too, and picks the tokens `input_ids` would."""
    set_seed(0)
    tester = TinyLlavaNextTester(None, LlavaNextCodebookConfig, **pruning_on_config_kwargs())
    config, inputs = tester.prepare_config_and_inputs_for_common()
    model = LlavaNextCodebookForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tester.pad_token_id
    model.generation_config.eos_token_id = None
    input_ids = inputs.pop("input_ids")
    greedy = dict(max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
    by_ids = model.generate(input_ids=input_ids, **inputs, **greedy)
    by_embeds = model.generate(inputs_embeds=model.get_input_embeddings()(input_ids), **inputs, **greedy)
    assert by_embeds.visual_token_selection is not None
    assert torch.equal(by_embeds.sequences, by_ids.sequences[:, input_ids.shape[1] :])
