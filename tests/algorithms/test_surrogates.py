from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from grpokit.algorithms import cispo_loss, gmpo_loss, gpg_loss, ppo_clip_loss, sapo_loss

from ._strategies import FAST


@pytest.mark.parametrize(
    "ratio, adv, expected, low, high",
    [
        (1.5, 1.0, -1.2, False, True),
        (1.5, -1.0, 1.5, False, False),
        (0.5, -1.0, 0.8, True, False),
        (0.5, 1.0, -0.5, False, False),
    ],
)
def test_ppo_clip_spec_cases(ratio, adv, expected, low, high):
    loss, clipped_low, clipped_high = ppo_clip_loss(
        torch.tensor([ratio]), torch.tensor([adv]), eps_low=0.2, eps_high=0.2
    )
    torch.testing.assert_close(loss, torch.tensor([expected]))
    assert clipped_low.item() is low and clipped_high.item() is high


def test_clip_higher_case():
    loss, _, _ = ppo_clip_loss(torch.tensor([1.5]), torch.tensor([1.0]), eps_low=0.2, eps_high=0.28)
    torch.testing.assert_close(loss, torch.tensor([-1.28]))


def test_dual_clip_bounds_loss_for_negative_advantage():
    loss, _, clipped_high = ppo_clip_loss(
        torch.tensor([5.0, 2.0]), torch.tensor([-1.0, -1.0]), eps_low=0.2, eps_high=0.2, dual_clip_c=3.0
    )
    torch.testing.assert_close(loss, torch.tensor([3.0, 2.0]))
    assert clipped_high.tolist() == [True, False]


def test_delta_caps_the_unclipped_ratio():
    loss, _, clipped_high = ppo_clip_loss(
        torch.tensor([5.0, 1.5]), torch.tensor([-1.0, -1.0]), eps_low=0.2, eps_high=0.2, delta=2.0
    )
    torch.testing.assert_close(loss, torch.tensor([2.0, 1.5]))
    assert clipped_high.tolist() == [True, False]


def test_invalid_dual_clip_is_rejected():
    with pytest.raises(ValueError, match="dual_clip_c"):
        ppo_clip_loss(torch.ones(1), torch.ones(1), eps_low=0.2, eps_high=0.2, dual_clip_c=0.5)


def test_cispo_gradient_is_clipped_weight_times_advantage_and_never_zero():
    logp = torch.tensor([-0.5, -0.5], requires_grad=True)
    ratio = torch.tensor([1.5, 0.1])
    loss, _, clipped_high = cispo_loss(ratio, logp, torch.tensor([1.0, 1.0]), eps_low=0.2, eps_high=0.28)
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([-1.28, -0.8]))
    assert clipped_high.tolist() == [True, False]


@FAST
@given(
    seed=st.integers(0, 10_000),
    eps_low=st.floats(0.05, 0.5),
    eps_high=st.floats(0.05, 0.5),
    dual=st.sampled_from([None, 3.0]),
    delta=st.sampled_from([None, 2.5]),
)
def test_clipped_tokens_pass_no_gradient_and_unclipped_ones_do(seed, eps_low, eps_high, dual, delta):
    gen = torch.Generator().manual_seed(seed)
    logp = (torch.randn(64, generator=gen, dtype=torch.float64) * 0.8).requires_grad_()
    old = torch.zeros(64, dtype=torch.float64)
    adv = torch.randn(64, generator=gen, dtype=torch.float64)
    ratio = torch.exp(logp - old)
    loss, low, high = ppo_clip_loss(
        ratio, adv, eps_low=eps_low, eps_high=eps_high, dual_clip_c=dual, delta=delta
    )
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    clipped = low | high
    assert torch.all(grad[clipped] == 0)
    # elsewhere the gradient is the unclipped policy gradient −A·r
    torch.testing.assert_close(grad[~clipped], (-adv * ratio.detach())[~clipped])


# ----------------------------------------------------------------------------- SAPO (arXiv 2511.20347)
# f(r) = (4/τ)·σ(τ(r − 1)), L = −f(r)·A, τ = τ_pos (A > 0) or τ_neg; values by hand with σ(x) = 1/(1 + e^−x).


def test_sapo_value_and_gradient_by_hand():
    ratio = torch.tensor([1.5, 0.5, 1.0], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64)
    loss, low, high = sapo_loss(ratio, adv, tau_pos=1.0, tau_neg=1.05)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = [-4 * sig(0.5), (4 / 1.05) * sig(-0.525), -2 * 4 * sig(0.0)]  # = −2.489837, 1.415938, −4
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64))
    (grad,) = torch.autograd.grad(loss.sum(), ratio)
    # ∂L/∂r = −A·4·σ(τ(r−1))·(1 − σ(τ(r−1))): 1 at r = 1 (the plain policy gradient −A there)
    expected_grad = [-4 * sig(0.5) * sig(-0.5), 4 * sig(-0.525) * sig(0.525), -2.0]
    torch.testing.assert_close(grad, torch.tensor(expected_grad, dtype=torch.float64))
    assert not (low | high).any()  # a soft gate clips nothing


def test_sapo_gate_decays_smoothly_where_ppo_cuts_to_zero():
    ratio = torch.tensor([1.3, 3.0], dtype=torch.float64, requires_grad=True)
    loss, _, _ = sapo_loss(ratio, torch.ones(2, dtype=torch.float64), tau_pos=1.0, tau_neg=1.05)
    (grad,) = torch.autograd.grad(loss.sum(), ratio)
    assert torch.all(grad < 0) and grad[1].abs() < grad[0].abs() < 1  # PPO's would be 0 for both (r > 1.2)


def test_sapo_rejects_non_positive_temperature():
    with pytest.raises(ValueError, match="tau"):
        sapo_loss(torch.ones(1), torch.ones(1), tau_pos=0.0, tau_neg=1.05)


# ----------------------------------------------------------------------------- GMPO (arXiv 2507.20673)
# ℓ = [0.1, 0.5, −0.2] (token log-ratios of one sequence), ε = 0.4 in log space, one padding position.
GMPO_LOGP = torch.tensor([[0.1, 0.5, -0.2, 7.0]], dtype=torch.float64)
GMPO_MASK = torch.tensor([[1, 1, 1, 0]])


@pytest.mark.parametrize(
    "adv, expected_loss, expected_grad, low, high",
    [
        # A > 0: ℓ̃ = min(ℓ, clip ℓ) = [0.1, 0.4, −0.2], L = −e^{0.3/3}; the clipped token gets no gradient
        (1.0, -math.exp(0.1), [-math.exp(0.1) / 3, 0.0, -math.exp(0.1) / 3, 0.0], [0, 0, 0, 0], [0, 1, 0, 0]),
        # A < 0: ℓ̃ = max(ℓ, clip ℓ) = ℓ (0.5 above the clip stays), L = +e^{0.4/3}; every token has a gradient
        (-1.0, math.exp(0.4 / 3), [math.exp(0.4 / 3) / 3] * 3 + [0.0], [0, 0, 0, 0], [0, 0, 0, 0]),
    ],
)
def test_gmpo_value_gradient_and_clip_masks_by_hand(adv, expected_loss, expected_grad, low, high):
    logp = GMPO_LOGP.clone().requires_grad_()
    log_ratio = torch.where(GMPO_MASK.bool(), logp, 0.0)  # old log-probs 0; masked positions zeroed
    loss, clipped_low, clipped_high = gmpo_loss(
        log_ratio, torch.tensor([[adv]], dtype=torch.float64), GMPO_MASK, eps_low=0.4, eps_high=0.4
    )
    assert loss.shape == (1, 1)
    torch.testing.assert_close(loss, torch.tensor([[expected_loss]], dtype=torch.float64))
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    torch.testing.assert_close(grad, torch.tensor([expected_grad], dtype=torch.float64))
    assert clipped_low.int().tolist() == [low] and clipped_high.int().tolist() == [high]


def test_gmpo_negative_advantage_clips_low_ratios_and_stays_finite():
    log_ratio = torch.tensor([[-0.5, -90.0, 90.0]], dtype=torch.float64, requires_grad=True)
    loss, clipped_low, _ = gmpo_loss(log_ratio, torch.tensor([[-1.0]], dtype=torch.float64),
                                     torch.ones(1, 3), eps_low=0.4, eps_high=0.4)
    assert clipped_low.tolist() == [[True, True, False]]
    # ℓ̃ = [−0.4, −0.4, 90] (for A < 0 the clip has no upper bound): mean 29.7 is beyond ±20, so the
    # geometric mean is e^20, finite, and passes no gradient
    assert torch.isfinite(loss).all() and loss.item() == pytest.approx(math.exp(20.0))
    (grad,) = torch.autograd.grad(loss.sum(), log_ratio)
    assert torch.all(grad == 0)


# ----------------------------------------------------------------------------- GPG (arXiv 2504.02546)


def test_gpg_is_minus_advantage_times_log_prob():
    logp = torch.tensor([[-0.5, -2.0]], requires_grad=True)
    loss, low, high = gpg_loss(logp, torch.tensor([[2.0]]))
    torch.testing.assert_close(loss, torch.tensor([[1.0, 4.0]]))
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    torch.testing.assert_close(grad, torch.tensor([[-2.0, -2.0]]))  # −A, whatever π_old was
    assert not (low | high).any()
