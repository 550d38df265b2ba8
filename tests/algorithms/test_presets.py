from __future__ import annotations

import dataclasses
import re

import pytest

from grpokit.algorithms import PRESETS, ClipCovConfig, Preset, get_preset

GRPO = PRESETS["grpo"]


def _differences(preset: Preset) -> dict[str, object]:
    return {
        f.name: getattr(preset, f.name)
        for f in dataclasses.fields(Preset)
        if f.name not in ("name", "summary") and getattr(preset, f.name) != getattr(GRPO, f.name)
    }


def test_grpo_is_deepseekmath_grpo():
    assert (GRPO.advantage, GRPO.std, GRPO.ratio_level, GRPO.surrogate) == (
        "group",
        "unbiased",
        "token",
        "ppo_clip",
    )
    assert (GRPO.eps_low, GRPO.eps_high, GRPO.aggregation) == (0.2, 0.2, "seq_mean_token_mean")
    assert (GRPO.beta, GRPO.kl_estimator, GRPO.kl_in_reward) == (0.04, "k3", False)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("grpo", {}),
        ("dr_grpo", {"advantage": "none", "aggregation": "seq_mean_token_sum_norm", "beta": 0.0}),
        (
            "dapo",
            {
                "eps_high": 0.28,
                "aggregation": "token_mean",
                "beta": 0.0,
                "dynamic_sampling": True,
                "soft_overlong": True,
            },
        ),
        ("gspo", {"ratio_level": "sequence", "eps_low": 3e-4, "eps_high": 4e-4, "beta": 0.0}),
        ("gspo_token", {"ratio_level": "sequence_token", "eps_low": 3e-4, "eps_high": 4e-4, "beta": 0.0}),
        ("bnpo", {"aggregation": "token_mean"}),
        (
            "cispo",
            {"surrogate": "cispo", "eps_low": 1.0, "eps_high": 4.0, "aggregation": "token_mean", "beta": 0.0},
        ),
        ("grpo_2", {"num_generations": 2, "std": "population"}),
        ("sapo", {"surrogate": "sapo", "beta": 0.0}),
        ("gmpo", {"surrogate": "gmpo", "eps_low": 0.4, "eps_high": 0.4, "beta": 0.0}),
        ("gpg", {"surrogate": "gpg", "advantage": "gpg", "aggregation": "token_mean", "beta": 0.0}),
    ],
)
def test_each_preset_is_grpo_with_a_few_fields_replaced(name, expected):
    preset = PRESETS[name]
    assert preset.name == name and preset.summary and "\n" not in preset.summary
    assert _differences(preset) == expected


def test_replace_rejects_unknown_field_and_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown Preset field.*aggregation"):
        GRPO.replace(agregation="token_mean")


def test_invalid_value_names_the_field_and_allowed_values():
    with pytest.raises(ValueError, match="'aggregation' must be one of .*token_mean"):
        GRPO.replace(aggregation="mean")
    with pytest.raises(ValueError, match="'surrogate'"):
        dataclasses.replace(GRPO, surrogate="reinforce")
    with pytest.raises(ValueError, match="dual_clip_c"):
        GRPO.replace(dual_clip_c=0.9)
    with pytest.raises(ValueError, match="top_entropy_quantile"):
        GRPO.replace(top_entropy_quantile=1.5)


def test_presets_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        GRPO.beta = 0.0  # type: ignore[misc]


def test_get_preset_applies_overrides_and_lists_valid_names():
    preset = get_preset("dapo", beta=0.01)
    assert preset.beta == 0.01 and preset.eps_high == 0.28 and PRESETS["dapo"].beta == 0.0
    with pytest.raises(ValueError, match="valid presets: .*grpo"):
        get_preset("trpo")


def test_clip_cov_accepts_a_dict_and_checks_its_keys():
    preset = GRPO.replace(clip_cov={"clip_ratio": 1e-3})
    assert preset.clip_cov == ClipCovConfig(clip_ratio=1e-3)
    with pytest.raises(ValueError, match="clip_ratio"):
        GRPO.replace(clip_cov={"ratio": 1e-3})


def test_a_mechanism_that_needs_a_field_value_says_so():
    with pytest.raises(ValueError, match="surrogate='gmpo' needs ratio_level='token', got 'sequence'"):
        PRESETS["gmpo"].replace(ratio_level="sequence")


def test_sapo_temperatures_must_be_positive():
    with pytest.raises(ValueError, match="tau_neg"):
        PRESETS["sapo"].replace(tau_neg=0.0)


def test_every_registered_choice_is_accepted_and_listed_in_the_error():
    from grpokit.algorithms.registry import REGISTRIES

    for registry in REGISTRIES:
        for name in registry.names():
            needs = registry.get(name).requires
            GRPO.replace(**{registry.preset_field: name, **needs})
        last = re.escape(registry.names()[-1])  # "k3+" is not a regex
        with pytest.raises(ValueError, match=f"'{registry.preset_field}' must be one of .*{last}"):
            GRPO.replace(**{registry.preset_field: "no_such_thing"})
