from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from grpokit.algorithms import (
    PRESETS,
    combine_rewards,
    compute_advantages,
    get_preset,
    gpg_advantages,
    group_advantages,
    rloo_advantages,
    valid_reward_mask,
)

from ._strategies import FAST

NAN = float("nan")


def t(values):
    return torch.tensor(values, dtype=torch.float32)


def ids(values):
    return torch.tensor(values, dtype=torch.long)


def test_grpo_unbiased_std_case():
    adv = group_advantages(t([1, 0, 0, 0]), ids([0, 0, 0, 0]), eps=0.0)
    torch.testing.assert_close(adv, t([1.5, -0.5, -0.5, -0.5]))
    assert adv.dtype == torch.float32


def test_grpo_population_std_case():
    adv = group_advantages(t([1, 0, 0, 0]), ids([0, 0, 0, 0]), std="population", eps=0.0)
    torch.testing.assert_close(adv, t([1.7321, -0.5774, -0.5774, -0.5774]), atol=1e-4, rtol=0)


def test_eps_is_added_to_std():
    adv = group_advantages(t([1, 0, 0, 0]), ids([0, 0, 0, 0]), eps=0.5)
    torch.testing.assert_close(adv, t([0.75, -0.25, -0.25, -0.25]))


def test_dr_grpo_no_std_is_centred_reward():
    adv = group_advantages(t([3, 1, 2, 10]), ids([0, 0, 0, 1]), scale="none")
    # the single-member group 1 gets 0
    torch.testing.assert_close(adv, t([1, -1, 0, 0]))


def test_batch_std_divides_by_std_of_all_valid_rewards():
    rewards = t([1, 0, 1, 1, NAN])
    adv = group_advantages(rewards, ids([0, 0, 1, 1, 1]), scale="batch", eps=0.0)
    batch_std = torch.tensor([1.0, 0.0, 1.0, 1.0]).std().item()  # 0.5, unbiased over the 4 valid rewards
    torch.testing.assert_close(adv, t([0.5 / batch_std, -0.5 / batch_std, 0, 0, 0]))


def test_groups_need_not_be_contiguous_nor_equal_sized():
    rewards = t([1, 5, 0, 7, 0, 0])
    groups = ids([3, 9, 3, 9, 3, 3])
    adv = group_advantages(rewards, groups, eps=0.0)
    torch.testing.assert_close(adv[[0, 2, 4, 5]], t([1.5, -0.5, -0.5, -0.5]))
    torch.testing.assert_close(adv[[1, 3]], t([-math.sqrt(0.5), math.sqrt(0.5)]))


@pytest.mark.parametrize("scale", ["group", "none", "batch"])
def test_all_equal_group_gets_exactly_zero_even_with_float_residue(scale):
    # 0.1 + 0.2 != 0.3 in floating point; the group's std is ~1e-8, which must not become ±1
    rewards = torch.tensor([0.1 + 0.2, 0.3, 0.3, 1.0, 0.0], dtype=torch.float64).float()
    rewards[0] = rewards[0] + 3e-8
    adv = group_advantages(rewards, ids([0, 0, 0, 1, 1]), scale=scale, eps=1e-12)
    assert torch.equal(adv[:3], torch.zeros(3))
    assert adv[3] > 0 > adv[4]


def test_single_valid_sample_group_gets_zero():
    adv = group_advantages(t([1.0, NAN, 0.0, 1.0]), ids([0, 0, 1, 1]), eps=0.0)
    assert adv[0] == 0 and adv[1] == 0
    torch.testing.assert_close(adv[2:], t([-math.sqrt(0.5), math.sqrt(0.5)]))


def test_nan_rewards_are_excluded_from_stats_and_get_zero():
    with_nan = group_advantages(t([1, 0, NAN, 0, 0]), ids([0, 0, 0, 0, 0]), eps=0.0)
    without = group_advantages(t([1, 0, 0, 0]), ids([0, 0, 0, 0]), eps=0.0)
    assert with_nan[2] == 0
    torch.testing.assert_close(with_nan[[0, 1, 3, 4]], without)


def test_two_grpo_pair_cases():
    groups = ids([0, 0])
    torch.testing.assert_close(group_advantages(t([1, 0]), groups, std="population", eps=0.0), t([1, -1]))
    torch.testing.assert_close(
        group_advantages(t([1, 0]), groups, eps=0.0), t([0.7071, -0.7071]), atol=1e-4, rtol=0
    )
    assert torch.equal(group_advantages(t([1, 1]), groups), torch.zeros(2))


def test_rloo_is_reward_minus_mean_of_the_others():
    adv = rloo_advantages(t([1, 0, 0, 0, 2, NAN, 3]), ids([0, 0, 0, 0, 1, 1, 2]))
    torch.testing.assert_close(adv, t([1, -1 / 3, -1 / 3, -1 / 3, 0, 0, 0]))


def test_valid_reward_mask():
    assert valid_reward_mask(t([1, NAN, 0])).tolist() == [True, False, True]
    assert valid_reward_mask(t([[1, NAN], [NAN, NAN]])).tolist() == [True, False]


def test_unknown_scale_is_rejected_with_allowed_values():
    with pytest.raises(ValueError, match="group"):
        group_advantages(t([1, 0]), ids([0, 0]), scale="zscore")


def test_sum_then_normalize_skips_nan_components_and_zeroes_unscorable_rows():
    rewards = t([[1, 1], [0, NAN], [0, 0], [NAN, NAN]])
    adv = combine_rewards(rewards, [1.0, 2.0], ids([0, 0, 0, 0]), eps=0.0)
    expected = group_advantages(t([3, 0, 0, NAN]), ids([0, 0, 0, 0]), eps=0.0)
    torch.testing.assert_close(adv, expected)
    assert adv[3] == 0


def test_normalize_then_sum_normalizes_each_reward_in_its_group_then_over_the_batch():
    # column 0: group z-scores [1.5, -0.5, -0.5, -0.5]; column 1 (×100 in scale) identical shape, reversed
    rewards = t([[1, 0], [0, 0], [0, 0], [0, 100]])
    groups = ids([0, 0, 0, 0])
    raw = combine_rewards(rewards, [1, 1], groups, mode="normalize_then_sum", eps=0.0, batch_normalize=False)
    torch.testing.assert_close(
        raw, t([1.0, -1.0, -1.0, 1.0])
    )  # the 100-scale reward does not drown the other
    adv = combine_rewards(rewards, [1, 1], groups, mode="normalize_then_sum", eps=0.0)
    torch.testing.assert_close(adv, raw / raw.std())


def test_combine_rewards_rejects_wrong_number_of_weights():
    with pytest.raises(ValueError, match="weights"):
        combine_rewards(t([[1, 2]]), [1.0], ids([0]))


@FAST
@given(
    seed=st.integers(0, 10_000),
    batch=st.integers(1, 24),
    num_groups=st.integers(1, 5),
    scale=st.sampled_from(["group", "none", "batch"]),
    std=st.sampled_from(["unbiased", "population"]),
)
def test_group_advantages_sum_to_zero_per_group(seed, batch, num_groups, scale, std):
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 3, (batch,), generator=gen).float() * torch.rand(batch, generator=gen)
    rewards[torch.rand(batch, generator=gen) < 0.2] = NAN
    groups = torch.randint(0, num_groups, (batch,), generator=gen) * 7
    adv = group_advantages(rewards, groups, scale=scale, std=std)
    assert torch.isfinite(adv).all()
    assert torch.all(adv[torch.isnan(rewards)] == 0)
    for g in groups.unique():
        assert abs(adv[groups == g].double().sum().item()) < 1e-4


@FAST
@given(seed=st.integers(0, 10_000), batch=st.integers(1, 24), num_groups=st.integers(1, 5))
def test_rloo_sums_to_zero_per_group_and_matches_scaled_centring(seed, batch, num_groups):
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.rand(batch, generator=gen)
    groups = torch.randint(0, num_groups, (batch,), generator=gen)
    adv = rloo_advantages(rewards, groups)
    centred = group_advantages(rewards, groups, scale="none")
    for g in groups.unique():
        n = int((groups == g).sum())
        expected = centred[groups == g] * n / (n - 1) if n > 1 else torch.zeros(1)
        torch.testing.assert_close(adv[groups == g], expected, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- compute_advantages
# The one entry point of both trainers; it must reproduce, bit for bit, the branches it replaced.
REWARDS_2 = torch.tensor([[1.0, 0.5], [0.0, NAN], [1.0, 0.0], [0.0, 0.25], [2.0, 1.0], [2.0, 1.0]],
                         dtype=torch.float64)
WEIGHTS_2 = torch.tensor([1.0, 2.0], dtype=torch.float64)
GROUPS_2 = ids([0, 0, 0, 1, 1, 1])


@pytest.mark.parametrize("advantage", ["group", "none", "batch"])
@pytest.mark.parametrize("multi_reward", ["sum_then_normalize", "normalize_then_sum"])
def test_compute_advantages_equals_the_language_model_trainers_former_branch(advantage, multi_reward):
    preset = get_preset("grpo", advantage=advantage, multi_reward=multi_reward, std="population")
    expected = combine_rewards(REWARDS_2, WEIGHTS_2, GROUPS_2, mode=multi_reward, scale=advantage,
                               std="population", eps=preset.advantage_eps)
    assert torch.equal(compute_advantages(preset, REWARDS_2, WEIGHTS_2, GROUPS_2), expected)


def test_compute_advantages_rloo_uses_the_weighted_total():
    total = (REWARDS_2 * WEIGHTS_2).sum(dim=1)
    expected = rloo_advantages(total, GROUPS_2)
    actual = compute_advantages(get_preset("grpo", advantage="rloo"), REWARDS_2, WEIGHTS_2, GROUPS_2)
    assert torch.equal(actual, expected)


@pytest.mark.parametrize("advantage", ["group", "none", "batch", "rloo"])
def test_compute_advantages_of_one_total_equals_the_flow_trainers_former_branch(advantage):
    rewards, groups = t([0.5, 0.1, NAN, 0.9, 0.3, 0.3]), ids([0, 0, 0, 1, 1, 1])
    # a [B] total ignores multi_reward: GDPO's per-column normalisation has one column and nothing to combine
    preset = get_preset("grpo", advantage=advantage, multi_reward="normalize_then_sum")
    expected = (rloo_advantages(rewards, groups) if advantage == "rloo" else
                group_advantages(rewards, groups, scale=advantage, std=preset.std, eps=preset.advantage_eps))
    assert torch.equal(compute_advantages(preset, rewards, None, groups), expected)


def test_compute_advantages_needs_weights_for_several_rewards():
    with pytest.raises(ValueError, match="weight"):
        compute_advantages(PRESETS["grpo"], REWARDS_2, None, GROUPS_2)


def test_gpg_advantage_rescales_by_the_share_of_informative_completions():
    # group 0 informative, group 1 all equal: B = 8 valid, M = 4 → α = 2; centred group 0 = [0.75, −0.25 ×3]
    adv = gpg_advantages(t([1, 0, 0, 0, 1, 1, 1, 1]), None, ids([0, 0, 0, 0, 1, 1, 1, 1]))
    torch.testing.assert_close(adv, t([1.5, -0.5, -0.5, -0.5, 0, 0, 0, 0]))


def test_gpg_advantage_ignores_unscorable_rows_in_alpha():
    # 3 valid rows (the NaN row is excluded from B), all in the informative group → α = 1
    adv = gpg_advantages(t([1, 0, NAN, 0]), None, ids([0, 0, 0, 0]))
    torch.testing.assert_close(adv, t([2 / 3, -1 / 3, 0, -1 / 3]))
