from __future__ import annotations

import pytest

from grpokit.config_schema import ConfigError
from grpokit.trainers.lm_config import load_lm_config

MINIMAL = {"model": {"name_or_path": "m"}, "data": {"path": "d.jsonl"}, "rewards": [{"function": "exact_match"}]}


def _with(**sections):
    config = {k: (dict(v) if isinstance(v, dict) else list(v)) for k, v in MINIMAL.items()}
    config.update(sections)
    return config


def test_defaults_are_filled_in():
    config = load_lm_config(MINIMAL)
    assert config.algorithm.preset == "grpo"
    assert config.training.num_iterations == 1
    assert config.rewards[0].weight == 1.0


def test_a_typo_is_an_error_naming_the_field_and_the_allowed_keys():
    with pytest.raises(ConfigError, match=r"training: unknown key\(s\) \['learning_rat'\]; allowed: .*'learning_rate'"):
        load_lm_config(_with(training={"learning_rat": 1e-5}))


def test_a_value_outside_its_choices_names_the_choices():
    with pytest.raises(ConfigError, match=r"training.lr_schedule: 'warm' is not allowed; choose one of"):
        load_lm_config(_with(training={"lr_schedule": "warm"}))


def test_wrong_types_are_errors():
    with pytest.raises(ConfigError, match="training.max_steps: expected an integer"):
        load_lm_config(_with(training={"max_steps": "ten"}))
    with pytest.raises(ConfigError, match=r"rewards\[0\].weight: expected a number"):
        load_lm_config(_with(rewards=[{"function": "exact_match", "weight": "heavy"}]))


def test_required_fields_are_named():
    with pytest.raises(ConfigError, match="model.name_or_path: required"):
        load_lm_config({"data": {"path": "d"}, "rewards": [{"function": "f"}]})
    with pytest.raises(ConfigError, match="rewards: at least one"):
        load_lm_config(_with(rewards=[]))


def test_set_overrides_parse_values_as_yaml():
    config = load_lm_config(MINIMAL, ["training.learning_rate=3e-4", "model.lora.r=8", "algorithm.overrides.eps_high=0.28"])
    assert config.training.learning_rate == pytest.approx(3e-4)
    assert config.model.lora.r == 8 and config.model.lora.alpha == 32
    assert config.algorithm.overrides == {"eps_high": 0.28}
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_lm_config(MINIMAL, ["training.learning_rate"])


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="training.mini_batches: 3 must divide"):
        load_lm_config(_with(rollout={"prompts_per_step": 16}, training={"mini_batches": 3}))
    with pytest.raises(ConfigError, match="rollout.max_new_tokens: must be >= 1"):
        load_lm_config(_with(rollout={"max_new_tokens": 0}))


def test_a_missing_or_broken_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_lm_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_lm_config(bad)
