from __future__ import annotations

import dataclasses

import pytest

from grpokit.flow.presets import FLOW_GRPO, FLOW_GRPO_GUARD, FLOW_PRESETS, get_flow_preset


def _differences(a, b) -> dict:
    return {
        f.name: (getattr(a, f.name), getattr(b, f.name))
        for f in dataclasses.fields(a)
        if getattr(a, f.name) != getattr(b, f.name)
    }


def test_guard_differs_from_flow_grpo_only_in_guard_switches_and_clip():
    flow = _differences(FLOW_GRPO, FLOW_GRPO_GUARD)
    assert set(flow) == {"name", "summary", "loss", "ratio_norm", "step_balancing"}
    assert set(_differences(FLOW_GRPO.loss, FLOW_GRPO_GUARD.loss)) == {"eps_low", "eps_high"}
    assert FLOW_GRPO_GUARD.ratio_norm and FLOW_GRPO_GUARD.step_balancing
    assert not FLOW_GRPO.ratio_norm and not FLOW_GRPO.step_balancing


def test_flow_grpo_defaults_follow_the_paper():
    assert FLOW_GRPO.noise_level == 0.7 and FLOW_GRPO.logprob_reduction == "mean"
    assert FLOW_GRPO.loss.eps_low == FLOW_GRPO.loss.eps_high == 1e-4
    assert FLOW_GRPO.loss.beta == 0.04 and FLOW_GRPO.adv_clip_max == 5.0


def test_replace_routes_core_fields_to_the_loss_preset():
    preset = get_flow_preset("flow_grpo_guard", step_balancing=False, eps_high=3e-6, beta=0.0)
    assert preset.step_balancing is False and preset.ratio_norm is True
    assert preset.loss.eps_high == 3e-6 and preset.loss.eps_low == 2e-6 and preset.loss.beta == 0.0


def test_unknown_names_and_bad_values_raise():
    with pytest.raises(ValueError, match="valid presets"):
        get_flow_preset("dance_grpo")
    with pytest.raises(ValueError, match="unknown Preset field"):
        FLOW_GRPO.replace(not_a_field=1)
    with pytest.raises(ValueError, match="logprob_reduction"):
        FLOW_GRPO.replace(logprob_reduction="max")
    assert set(FLOW_PRESETS) == {"flow_grpo", "flow_grpo_guard", "mix_grpo", "mix_grpo_plain", "flow_grpo_fast"}
