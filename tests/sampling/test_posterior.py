from __future__ import annotations

import math

import numpy as np
import pytest

from grpokit.sampling import PromptPosteriors, beta_mean, beta_std, beta_update, group_successes


def test_uniform_prior_and_six_of_eight_give_beta_7_3_with_mean_0_7():
    alpha, beta = beta_update(1.0, 1.0, successes=6, trials=8)
    assert (alpha, beta) == (7.0, 3.0)
    assert beta_mean(alpha, beta) == pytest.approx(0.7)
    assert beta_std(7.0, 3.0) == pytest.approx(math.sqrt(21 / 1100))  # αβ / ((α+β)²(α+β+1))


def test_discount_scales_old_evidence_before_adding_the_new():
    # λ = 0.5: α = 0.5·7 + 2 = 5.5, β = 0.5·3 + (4 − 2) = 3.5
    alpha, beta = beta_update(7.0, 3.0, successes=2, trials=4, discount=0.5)
    assert (alpha, beta) == (5.5, 3.5)


def test_discounted_evidence_stays_below_n_over_one_minus_lambda():
    # Each update adds n = 8; with λ = 0.9 the total α + β converges to 8 / (1 − 0.9) = 80.
    alpha, beta = 1.0, 1.0
    for _ in range(300):
        alpha, beta = beta_update(alpha, beta, successes=8, trials=8, discount=0.9)
    assert alpha + beta == pytest.approx(80.0, rel=1e-9)
    assert beta < 1e-12  # a prompt always solved forgets its old failures


def test_update_rejects_more_successes_than_trials_and_a_bad_discount():
    with pytest.raises(ValueError):
        beta_update(1.0, 1.0, successes=3, trials=2)
    with pytest.raises(ValueError):
        beta_update(1.0, 1.0, successes=1, trials=2, discount=0.0)


def test_group_successes_threshold_the_reward_skip_nan_and_follow_first_appearance():
    rewards = [1.0, 0.0, float("nan"), 1.0, 1.0, 0.4]
    ids, successes, trials = group_successes(rewards, [3, 3, 3, 0, 0, 0], threshold=0.5)
    assert ids.tolist() == [3, 0]
    assert successes.tolist() == [1.0, 2.0]  # 0.4 is not above the threshold
    assert trials.tolist() == [2.0, 3.0]  # the NaN row is no evidence


def test_posteriors_update_only_the_listed_prompts_and_ignore_groups_without_valid_rewards():
    posteriors = PromptPosteriors(4, prior_alpha=1.0, prior_beta=1.0, discount=0.5)
    posteriors.update([2, 0, 1], successes=[6, 0, 0], trials=[8, 2, 0], clock=7)
    assert posteriors.alpha.tolist() == [0.5, 1.0, 6.5, 1.0]
    assert posteriors.beta.tolist() == [2.5, 1.0, 2.5, 1.0]  # 0.5·1 + (8 − 6) for prompt 2
    assert posteriors.visits.tolist() == [1, 0, 1, 0]
    assert posteriors.rollouts.tolist() == [2, 0, 8, 0]
    assert posteriors.last_update.tolist() == [7, -1, 7, -1]


def test_posterior_state_round_trips_exactly_and_refuses_another_data_set():
    posteriors = PromptPosteriors(3, discount=0.9)
    posteriors.update([0, 2], [1, 3], [3, 3])
    restored = PromptPosteriors(3, discount=0.9)
    restored.load_state_dict(posteriors.state_dict())
    np.testing.assert_array_equal(restored.alpha, posteriors.alpha)
    np.testing.assert_array_equal(restored.beta, posteriors.beta)
    np.testing.assert_array_equal(restored.visits, posteriors.visits)
    with pytest.raises(ValueError, match="same data set"):
        PromptPosteriors(4).load_state_dict(posteriors.state_dict())
