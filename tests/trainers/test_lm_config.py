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


@pytest.mark.parametrize(("section", "values", "message"), [
    ("training", {"learning_rate": -1e-5}, "training.learning_rate: must be > 0, got -1e-05"),
    ("training", {"learning_rate": 0}, "training.learning_rate: must be > 0"),
    ("rollout", {"temperature": -0.1}, "rollout.temperature: must be >= 0"),
    ("rollout", {"top_p": 1.5}, r"rollout.top_p: must be in \(0, 1\]"),
    # seeds of round r of step s: 17·s + r, so a 17th extra round would sample with the next step's seeds
    ("rollout", {"max_dynamic_sampling_rounds": 17}, r"rollout.max_dynamic_sampling_rounds: must be in \[0, 16\]"),
    ("training", {"micro_batch_size": 0}, "training.micro_batch_size: must be >= 1"),
    ("training", {"adam_beta2": 1.0}, r"training.adam_beta2: must be in \[0, 1\)"),
    ("training", {"num_threads": 0}, "training.num_threads: must be >= 1"),
    ("eval", {"samples_per_prompt": -1}, "eval.samples_per_prompt: must be >= 0"),
    ("data", {"path": "d.jsonl", "max_prompt_tokens": 0}, "data.max_prompt_tokens: must be >= 1"),
    ("checkpoint", {"keep_last": 0}, "checkpoint.keep_last: must be >= 1"),
])
def test_numbers_outside_their_range_are_errors_naming_the_field(section, values, message):
    with pytest.raises(ConfigError, match=message):
        load_lm_config(_with(**{section: values}))


def test_reward_timeouts_must_be_positive():
    with pytest.raises(ConfigError, match=r"rewards\[0\].timeout_seconds: must be > 0"):
        load_lm_config(_with(rewards=[{"function": "exact_match", "timeout_seconds": 0}]))
    with pytest.raises(ConfigError, match="rewards_timeout_seconds: must be > 0"):
        load_lm_config(_with(rewards_timeout_seconds=-1))


def test_one_completion_per_prompt_is_an_error_naming_the_field():
    with pytest.raises(ConfigError, match=r"rollout.num_generations: must be >= 2 for preset 'grpo', got 1"):
        load_lm_config(_with(rollout={"num_generations": 1}))
    with pytest.raises(ConfigError, match="algorithm.overrides.num_generations: must be >= 2 for preset 'dapo'"), \
            pytest.warns(FutureWarning, match="rollout.num_generations"):
        load_lm_config(_with(algorithm={"preset": "dapo", "overrides": {"num_generations": 1}}))
    # Adaptive sampling picks G_i >= sampling.min_group_size (>= 2) itself.
    load_lm_config(_with(rollout={"num_generations": 1}, sampling={"strategy": "adaptive"}))


def test_every_reward_gets_the_default_timeout_unless_it_sets_one_or_needs_the_main_thread():
    from grpokit.trainers.lm_build import build_rewards

    rewards = [{"function": "exact_match"}, {"function": "xml_count", "timeout_seconds": 5},
               {"function": "math_verify"}]
    runner = build_rewards(load_lm_config(_with(rewards=rewards)))
    assert [r.timeout_seconds for r in runner.rewards] == [60.0, 5.0, None]
    runner = build_rewards(load_lm_config(_with(rewards=rewards, rewards_timeout_seconds=None)))
    assert [r.timeout_seconds for r in runner.rewards] == [None, 5.0, None]


def test_preset_overrides_are_checked_when_the_config_loads():
    with pytest.raises(ConfigError, match=r"algorithm.overrides: unknown field\(s\) \['eps_hi'\]; allowed: .*'eps_high'"):
        load_lm_config(_with(algorithm={"overrides": {"eps_hi": 0.28}}))
    with pytest.raises(ConfigError, match="algorithm.overrides.eps_high: expected a number, got 'wide'"):
        load_lm_config(_with(algorithm={"overrides": {"eps_high": "wide"}}))
    with pytest.raises(ConfigError, match="algorithm.overrides.beta: expected a number"):
        load_lm_config(MINIMAL, ["algorithm.overrides.beta=[1]"])
    with pytest.raises(ConfigError, match="algorithm: .*eps_low must be"):  # a value the preset refuses, at load
        load_lm_config(_with(algorithm={"overrides": {"eps_low": -0.1}}))
    config = load_lm_config(_with(algorithm={"overrides": {"eps_high": "1e-3"}}))  # YAML reads 1e-3 as a string
    assert config.algorithm.overrides == {"eps_high": 1e-3}


def test_g_has_one_home_in_rollout_num_generations():
    from grpokit.trainers.lm_build import build_preset

    assert build_preset(load_lm_config(MINIMAL)).num_generations == 8  # unset: the preset's
    assert build_preset(load_lm_config(_with(rollout={"num_generations": 4}))).num_generations == 4
    with pytest.warns(FutureWarning, match="G is set as rollout.num_generations now"):
        config = load_lm_config(_with(algorithm={"overrides": {"num_generations": 6}}))
    assert config.rollout.num_generations == 6 and "num_generations" not in config.algorithm.overrides
    assert build_preset(config).num_generations == 6
    with pytest.raises(ConfigError, match=r"algorithm.overrides.num_generations \(6\) disagrees with "
                                          r"rollout.num_generations \(4\)"):
        load_lm_config(_with(rollout={"num_generations": 4}, algorithm={"overrides": {"num_generations": 6}}))

