"""PPO critic maths: hand-computed cases (values in the docstrings of grpokit.algorithms.critic)."""

from __future__ import annotations

import pytest
import torch

from grpokit.algorithms.critic import clipped_value_loss, gae_advantages, token_rewards_with_kl, whiten

# float32 arithmetic on numbers of order 1: a few ulps (~1e-7 each) of rounding at most
TOL = 1e-6


def test_token_rewards_put_the_score_on_the_last_valid_token_and_pay_kl_everywhere():
    old = torch.tensor([[0.5, -0.2, 1.0, 0.0]])
    ref = torch.zeros(1, 4)
    mask = torch.tensor([[1, 1, 1, 0]])
    r = token_rewards_with_kl(torch.tensor([1.0]), mask, old, ref, kl_coef=0.1)
    assert r.tolist()[0] == pytest.approx([-0.05, 0.02, 0.9, 0.0], abs=TOL)


def test_token_rewards_without_reference_and_for_an_empty_row():
    mask = torch.tensor([[0, 1, 0], [0, 0, 0]])  # row 0: one valid token in the middle; row 1: none
    r = token_rewards_with_kl(torch.tensor([2.0, 5.0]), mask, torch.zeros(2, 3), None, kl_coef=0.1)
    assert r.tolist() == [[0.0, 2.0, 0.0], [0.0, 0.0, 0.0]]


def test_gae_hand_case():
    adv, ret = gae_advantages(
        torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.4, 0.6]]), torch.ones(1, 3), gamma=1.0, lam=0.5
    )
    assert adv.tolist()[0] == pytest.approx([0.1, 0.4, 0.4], abs=TOL)
    assert ret.tolist()[0] == pytest.approx([0.6, 0.8, 1.0], abs=TOL)


def test_gae_with_gamma_discounts_and_lambda_one_is_the_monte_carlo_return_minus_value():
    # γ = 0.9, λ = 1: A_t = Σ_k γ^k r_{t+k} − V_t. r = [0, 0, 1] → returns [0.81, 0.9, 1].
    values = torch.tensor([[0.3, 0.2, 0.1]])
    adv, ret = gae_advantages(torch.tensor([[0.0, 0.0, 1.0]]), values, torch.ones(1, 3), gamma=0.9, lam=1.0)
    assert ret.tolist()[0] == pytest.approx([0.81, 0.9, 1.0], abs=TOL)
    assert adv.tolist()[0] == pytest.approx([0.51, 0.7, 0.9], abs=TOL)


def test_gae_lambda_zero_is_the_one_step_td_error():
    r, v = torch.tensor([[0.1, 0.2, 0.3]]), torch.tensor([[1.0, 2.0, 4.0]])
    adv, _ = gae_advantages(r, v, torch.ones(1, 3), gamma=0.5, lam=0.0)
    # δ = [0.1 + 0.5·2 − 1, 0.2 + 0.5·4 − 2, 0.3 − 4] = [0.1, 0.2, −3.7]
    assert adv.tolist()[0] == pytest.approx([0.1, 0.2, -3.7], abs=TOL)


def test_gae_skips_masked_positions_inside_and_after_a_completion():
    # The masked middle token (a tool's output) must not change anything: same as the 2-token row.
    values = torch.tensor([[0.5, 99.0, 0.6, 7.0]])
    rewards = torch.tensor([[0.0, 5.0, 1.0, 3.0]])  # rewards at masked positions are ignored too
    adv, ret = gae_advantages(rewards, values, torch.tensor([[1, 0, 1, 0]]), gamma=1.0, lam=0.5)
    short_adv, short_ret = gae_advantages(
        torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.6]]), torch.ones(1, 2), gamma=1.0, lam=0.5
    )
    assert adv[0, [0, 2]].tolist() == pytest.approx(short_adv[0].tolist(), abs=TOL)
    assert ret[0, [0, 2]].tolist() == pytest.approx(short_ret[0].tolist(), abs=TOL)
    assert adv[0, [1, 3]].tolist() == [0.0, 0.0] and ret[0, [1, 3]].tolist() == [0.0, 0.0]


def test_gae_outputs_are_detached():
    values = torch.tensor([[0.5, 0.4]], requires_grad=True)
    adv, ret = gae_advantages(torch.zeros(1, 2), values, torch.ones(1, 2), gamma=1.0, lam=1.0)
    assert not adv.requires_grad and not ret.requires_grad


def test_whiten_hand_case_and_mask():
    out = whiten(torch.tensor([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1, 1, 1, 0]]))
    assert out.tolist()[0] == pytest.approx([-1.2247449, 0.0, 1.2247449, 0.0], abs=1e-5)
    scaled = whiten(torch.tensor([[1.0, 2.0, 3.0]]), torch.ones(1, 3), shift_mean=False)
    assert scaled.tolist()[0] == pytest.approx([1.2247449, 2.4494897, 3.6742346], abs=1e-5)


def test_clipped_value_loss_hand_cases():
    old, ret = torch.tensor([0.5, 0.5, 0.5]), torch.tensor([1.0, 1.0, 0.0])
    loss, clipped = clipped_value_loss(torch.tensor([0.9, 0.6, 0.9]), old, ret, clip=0.2)
    # V = 0.9, G = 1: max(0.01, (0.7 − 1)² = 0.09)/2 = 0.045, the clip chose;
    # V = 0.6: inside the clip, 0.16/2 = 0.08;  V = 0.9, G = 0: max(0.81, 0.49)/2 = 0.405, unclipped.
    assert loss.tolist() == pytest.approx([0.045, 0.08, 0.405], abs=TOL)
    assert clipped.tolist() == [True, False, False]


def test_clipped_value_loss_gradient_stops_when_the_clip_chooses():
    values = torch.tensor([0.9, 0.6], requires_grad=True)
    loss, _ = clipped_value_loss(values, torch.tensor([0.5, 0.5]), torch.tensor([1.0, 1.0]), clip=0.2)
    loss.sum().backward()
    # clipped token: the loss is constant in V → 0; the other: ∂½(V − G)²/∂V = V − G = −0.4
    assert values.grad.tolist() == pytest.approx([0.0, -0.4], abs=TOL)


def test_value_loss_without_clip_is_half_squared_error():
    loss, clipped = clipped_value_loss(torch.tensor([3.0]), torch.tensor([0.0]), torch.tensor([1.0]), clip=None)
    assert loss.item() == 2.0 and not clipped.any()
