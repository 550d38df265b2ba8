from __future__ import annotations

import numpy as np
import pytest

from grpokit.sampling import (
    expected_prob_group_informative,
    expected_reward_variance,
    exploration_slots,
    prob_group_informative,
    prompt_status,
    select_prompts,
    thompson_scores,
)
from grpokit.sampling.selection import STATUS_HOPELESS, STATUS_INFORMATIVE, STATUS_SOLVED


def test_probability_of_a_non_zero_variance_group_matches_the_spec_cases():
    assert prob_group_informative(0.5, 8) == pytest.approx(0.9921875, abs=1e-12)
    assert prob_group_informative(0.05, 8) == pytest.approx(0.336580, abs=1e-6)
    assert prob_group_informative([0.0, 1.0], 8).tolist() == [0.0, 0.0]


def test_reward_variance_peaks_at_one_half():
    assert expected_reward_variance([0.0, 0.25, 0.5, 1.0]).tolist() == [0.0, 0.1875, 0.25, 0.0]


def test_expectation_under_a_uniform_posterior_is_g_minus_one_over_g_plus_one():
    assert expected_prob_group_informative(1.0, 1.0, 2) == pytest.approx(1 / 3)
    assert expected_prob_group_informative(1.0, 1.0, 8) == pytest.approx(7 / 9)


def test_expectation_under_beta_2_5_for_four_rollouts_is_nine_fourteenths():
    # 1 − (2·3·4·5)/(7·8·9·10) − (5·6·7·8)/(7·8·9·10) = 1 − 120/5040 − 1680/5040 = 9/14
    assert expected_prob_group_informative(2.0, 5.0, 4) == pytest.approx(9 / 14)


def test_a_concentrated_posterior_gives_the_plug_in_probability():
    assert expected_prob_group_informative(5000.0, 5000.0, 8) == pytest.approx(0.9921875, abs=1e-3)


def test_thompson_scores_average_to_the_posterior_expectation():
    rng = np.random.default_rng(0)
    draws = thompson_scores(np.full(200_000, 2.0), np.full(200_000, 5.0), 4, rng)
    assert draws.mean() == pytest.approx(9 / 14, abs=3e-3)


def test_status_skips_confidently_solved_and_hopeless_prompts_only():
    # Beta(20, 1) at G = 4: E[p^4] = 20/24, so E[P_inf] ≈ 0.167 < 0.25 → solved; mirrored → hopeless.
    status = prompt_status([1.0, 20.0, 1.0, 3.0], [1.0, 1.0, 20.0, 3.0], 4, skip_below=0.25)
    assert status.tolist() == [STATUS_INFORMATIVE, STATUS_SOLVED, STATUS_HOPELESS, STATUS_INFORMATIVE]


def test_exploration_slots_round_floor_times_k_at_random_with_the_right_mean():
    rng = np.random.default_rng(0)
    slots = [exploration_slots(32, 0.05, rng) for _ in range(20_000)]
    assert set(slots) == {1, 2}
    assert np.mean(slots) == pytest.approx(1.6, abs=0.02)
    assert exploration_slots(32, 0.0, rng) == 0 and exploration_slots(32, 1.0, rng) == 32


def test_without_a_floor_the_best_informative_prompts_win_and_skipped_ones_come_last():
    rng = np.random.default_rng(0)
    status = [STATUS_INFORMATIVE, STATUS_INFORMATIVE, STATUS_SOLVED, STATUS_INFORMATIVE]
    scores = [0.9, 0.1, 0.95, 0.8]
    assert select_prompts(scores, status, 2, 0.0, rng).tolist() == [0, 3]
    assert select_prompts(scores, status, 4, 0.0, rng).tolist() == [0, 3, 1, 2]


def test_the_revisit_floor_draws_every_skipped_prompt_at_rate_floor_k_over_n():
    # 10 prompts, 8 skipped; k = 2 with floor 0.5 → exactly one uniform slot, so each skipped
    # prompt is drawn with probability 1/10 per batch (the other slot goes to an informative one).
    rng = np.random.default_rng(1)
    status = np.array([STATUS_INFORMATIVE] * 2 + [STATUS_HOPELESS] * 8)
    scores = np.array([0.9, 0.8] + [0.0] * 8)
    counts = np.zeros(10)
    draws = 5000
    for _ in range(draws):
        batch = select_prompts(scores, status, 2, 0.5, rng)
        assert len(set(batch.tolist())) == 2
        counts[batch] += 1
    np.testing.assert_allclose(counts[2:] / draws, 0.1, atol=0.015)


def test_select_prompts_refuses_more_prompts_than_exist():
    with pytest.raises(ValueError):
        select_prompts([0.5, 0.5], [0, 0], 3, 0.0, np.random.default_rng(0))
