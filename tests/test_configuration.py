"""The config: typed fields validated at construction, with messages that name the allowed range."""

import pytest

from llava_codebook import LlavaNextCodebookConfig


def test_defaults_follow_the_release_threshold_mode_contiguous_positions_and_kept_newlines():
    config = LlavaNextCodebookConfig()
    assert config.model_type == "llava_next_codebook"
    assert (config.pruning_strategy, config.pruning_mode, config.position_mode) == (
        "codebook",
        "threshold",
        "contiguous",
    )
    assert config.always_keep_newline is True
    assert config.codebook_filename == "codebook.safetensors"


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("codebook_threshold", 1.5, r"outside \[-1.0, 1.0\]"),
        ("codebook_threshold", -2, r"outside \[-1.0, 1.0\]"),
        ("keep_ratio", 0.0, r"outside \(0.0, 1.0\]"),
        ("keep_ratio", 1.2, r"outside \(0.0, 1.0\]"),
        ("keep_tokens", 0, "integer >= 1"),
        ("min_visual_tokens", -1, "integer >= 0"),
        ("codebook_filename", "codebook.pt", "not a .safetensors file.*import-seed"),
    ],
)
def test_out_of_range_values_raise_and_name_the_allowed_range(field, value, message):
    with pytest.raises(ValueError, match=message):
        LlavaNextCodebookConfig(**{field: value})


@pytest.mark.parametrize("field", ["pruning_strategy", "pruning_mode", "position_mode"])
def test_unknown_choices_are_rejected_with_the_choices_listed(field):
    with pytest.raises(Exception, match="expected one of"):
        LlavaNextCodebookConfig(**{field: "nonsense"})


def test_integers_are_accepted_for_float_fields_and_stored_as_float():
    config = LlavaNextCodebookConfig(codebook_threshold=1, keep_ratio=1)
    assert config.codebook_threshold == 1.0 and isinstance(config.codebook_threshold, float)
    assert isinstance(config.keep_ratio, float)


def test_round_trip_through_dict_and_json(tmp_path):
    config = LlavaNextCodebookConfig(
        codebook_repo="org/cb", codebook_revision="v1", pruning_mode="budget", keep_tokens=64, position_mode="original"
    )
    config.save_pretrained(tmp_path)
    loaded = LlavaNextCodebookConfig.from_pretrained(tmp_path)
    for field in ("codebook_repo", "codebook_revision", "pruning_mode", "keep_tokens", "position_mode"):
        assert getattr(loaded, field) == getattr(config, field)


@pytest.mark.parametrize(
    "field, value",
    [
        ("codebook_threshold", float("nan")),
        ("codebook_threshold", float("inf")),
        ("keep_ratio", 7.0),
        ("keep_ratio", float("nan")),
        ("min_visual_tokens", -2),
        ("keep_tokens", 0),
        ("codebook_filename", "codebook.bin"),
    ],
)
def test_invalid_values_are_refused_on_assignment_and_the_old_value_is_kept(field, value):
    config = LlavaNextCodebookConfig()
    before = getattr(config, field)
    with pytest.raises(ValueError, match=field):
        setattr(config, field, value)
    assert getattr(config, field) == before


def test_from_pretrained_keyword_overrides_are_validated(tmp_path):
    LlavaNextCodebookConfig().save_pretrained(tmp_path)
    for overrides in ({"codebook_threshold": float("nan")}, {"keep_ratio": 7.0}, {"min_visual_tokens": -2}):
        with pytest.raises(ValueError, match=next(iter(overrides))):
            LlavaNextCodebookConfig.from_pretrained(tmp_path, **overrides)
    loaded = LlavaNextCodebookConfig.from_pretrained(tmp_path, codebook_threshold=1, keep_ratio=0.5)
    assert loaded.codebook_threshold == 1.0 and isinstance(loaded.codebook_threshold, float)


def test_a_config_forced_past_the_validators_is_never_written(tmp_path):
    config = LlavaNextCodebookConfig()
    config.__dict__["codebook_threshold"] = float("nan")  # bypasses __setattr__
    with pytest.raises(ValueError, match="codebook_threshold"):
        config.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out" / "config.json").exists()


def test_every_strategy_the_config_accepts_is_in_the_registry_and_vice_versa():
    from llava_codebook.pruning_config import PRUNING_STRATEGIES
    from llava_codebook.strategies import STRATEGIES

    assert set(PRUNING_STRATEGIES) == set(STRATEGIES)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("pruning_seed", -1, "integer >= 0"),
        ("pruning_seed", 1.5, "integer >= 0"),
        ("cls_attention_layer", 1.0, "must be an integer: a layer of the vision tower"),
        ("hired_budget_layer", True, "must be an integer"),
        ("visionzip_dominant_ratio", 1.5, r"outside \[0.0, 1.0\]"),
        ("visionzip_dominant_ratio", float("nan"), r"outside \[0.0, 1.0\]"),
        ("hired_base_share", -0.1, r"outside \[0.0, 1.0\]: it is the share of each image's budget HiRED gives"),
    ],
)
def test_strategy_parameters_are_validated_at_construction_on_assignment_and_per_call(field, value, message):
    from llava_codebook.pruning_config import PRUNING_VALIDATORS
    from llava_codebook.pruning_settings import PruningSettings
    from llava_codebook.tiny import build_tiny_model

    # A value of the wrong type is refused by the typed field itself (its message names the expected type).
    with pytest.raises(Exception, match=f"{message}|expected"):
        LlavaNextCodebookConfig(**{field: value})
    config = LlavaNextCodebookConfig()
    with pytest.raises(Exception, match=f"{message}|expected"):
        setattr(config, field, value)
    with pytest.raises(ValueError, match=message):
        build_tiny_model().pruning_settings(**{field: value})
    assert set(PruningSettings.__dataclass_fields__) == set(PRUNING_VALIDATORS)


def test_strategy_parameters_have_the_published_defaults_and_round_trip(tmp_path):
    config = LlavaNextCodebookConfig()
    assert (config.pruning_seed, config.cls_attention_layer, config.hired_budget_layer) == (0, -2, 0)
    assert (config.visionzip_dominant_ratio, config.hired_base_share) == (54 / 64, 0.5)
    config = LlavaNextCodebookConfig(
        pruning_strategy="hired", pruning_mode="budget", keep_tokens=64, hired_base_share=1, pruning_seed=9
    )
    config.save_pretrained(tmp_path)
    loaded = LlavaNextCodebookConfig.from_pretrained(tmp_path)
    assert (loaded.pruning_strategy, loaded.hired_base_share, loaded.pruning_seed) == ("hired", 1.0, 9)
    assert isinstance(loaded.hired_base_share, float)


def test_the_configuration_reference_lists_every_pruning_field():
    import re
    from pathlib import Path

    from llava_codebook.pruning_config import PRUNING_VALIDATORS

    page = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    section = re.search(r"^## Fields\n(.*?)(?=^## )", page, flags=re.S | re.M).group(1)
    listed = set(re.findall(r"^\| `(\w+)` \|", section, flags=re.M))
    assert set(PRUNING_VALIDATORS) | {"codebook_repo", "codebook_filename", "codebook_revision"} == listed
