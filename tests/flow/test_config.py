"""The flow config: `rollout` (formerly `sampling`) holds G; preset overrides are checked at load."""

from __future__ import annotations

import pytest

from grpokit.config_schema import ConfigError
from grpokit.flow.config import load_flow_config

MINIMAL = {"trainer": "flow", "rewards": [{"function": "grpokit.flow.rewards:digits_proxy"}]}


def test_g_and_the_denoising_steps_live_in_rollout():
    config = load_flow_config({**MINIMAL, "rollout": {"num_generations": 4, "num_steps": 6}})
    assert (config.rollout.num_generations, config.rollout.num_steps) == (4, 6)
    with pytest.raises(ConfigError, match="rollout.num_generations: must be >= 2"):
        load_flow_config(MINIMAL, ["rollout.num_generations=1"])
    with pytest.warns(FutureWarning, match="G is set as rollout.num_generations now"):
        config = load_flow_config(MINIMAL, ["algorithm.overrides.num_generations=6"])
    assert config.rollout.num_generations == 6 and config.algorithm.overrides == {}


def test_the_old_sampling_section_is_read_with_a_warning_naming_the_new_one():
    with pytest.warns(FutureWarning, match="`sampling` section is now called `rollout`"):
        config = load_flow_config({**MINIMAL, "sampling": {"num_generations": 4}})
    assert config.rollout.num_generations == 4
    with pytest.warns(FutureWarning, match="now called `rollout`"):
        assert load_flow_config(MINIMAL, ["sampling.num_steps=3"]).rollout.num_steps == 3
    with pytest.raises(ConfigError, match="sampling: renamed to rollout, and this config has both"):
        load_flow_config({**MINIMAL, "sampling": {}, "rollout": {}})


def test_preset_overrides_are_checked_when_the_config_loads():
    with pytest.raises(ConfigError, match=r"algorithm.overrides: unknown field\(s\) \['noise'\]; allowed: .*'noise_level'"):
        load_flow_config({**MINIMAL, "algorithm": {"overrides": {"noise": 0.5}}})
    with pytest.raises(ConfigError, match="algorithm.overrides.ratio_norm: expected true/false"):
        load_flow_config(MINIMAL, ["algorithm.overrides.ratio_norm=maybe"])
    config = load_flow_config(MINIMAL, ["algorithm.overrides.noise_level=0.5", "algorithm.overrides.eps_high=2e-6"])
    assert config.algorithm.overrides == {"noise_level": 0.5, "eps_high": 2e-6}  # FlowPreset and loss fields
