from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from grpokit.algorithms import cispo_loss, ppo_clip_loss

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
