from __future__ import annotations

import math

import pytest
import torch

from grpokit.algorithms import kl_estimate, kl_reward_penalty

LOGP = torch.tensor([[math.log(0.5)]])
REF = torch.tensor([[math.log(0.25)]])


@pytest.mark.parametrize("kind, expected", [("k1", 0.693147), ("k2", 0.240227), ("k3", 0.193147)])
def test_spec_case(kind, expected):
    assert kl_estimate(LOGP, REF, kind).item() == pytest.approx(expected, abs=1e-6)


def test_k3_is_nonnegative_and_zero_at_equality():
    d = torch.linspace(-5, 5, 101)
    assert torch.all(kl_estimate(torch.zeros_like(d), d, "k3") >= 0)
    assert kl_estimate(torch.zeros(1), torch.zeros(1), "k3").item() == 0


def test_clamp_keeps_k3_finite_for_huge_log_ratios():
    out = kl_estimate(torch.tensor([-1000.0]), torch.tensor([0.0]), "k3", clamp=10.0)
    assert out.item() == pytest.approx(math.exp(10) - 11)


def test_unknown_estimator_is_rejected():
    with pytest.raises(ValueError, match="k3"):
        kl_estimate(LOGP, REF, "k4")


def test_reward_penalty_is_beta_k1_and_detached():
    logp = LOGP.clone().requires_grad_()
    penalty = kl_reward_penalty(logp, REF, beta=0.1)
    assert penalty.item() == pytest.approx(0.0693147, abs=1e-7)
    assert not penalty.requires_grad


# d = log π_ref − log π_θ = ln 0.25 − ln 0.5 = −ln 2. Gradients w.r.t. log π_θ, by hand:
# k1: 1; k2: −d = ln 2; k3: 1 − e^d = 0.5; abs: sign(log π_θ − log π_ref) = +1.
@pytest.mark.parametrize(
    "kind, value, gradient",
    [
        ("k1", math.log(2), 1.0),
        ("k2", 0.5 * math.log(2) ** 2, math.log(2)),
        ("k3", 0.5 - 1 + math.log(2), 0.5),
        ("abs", math.log(2), 1.0),
        ("k1+", math.log(2), math.log(2)),  # value of k1, gradient of k2
        ("k3+", 0.5 - 1 + math.log(2), math.log(2)),  # value of k3, gradient of k2
    ],
)
def test_value_and_gradient_by_hand(kind, value, gradient):
    logp = torch.tensor([[math.log(0.5)]], dtype=torch.float64, requires_grad=True)  # float64: exact to 1e-12
    kl = kl_estimate(logp, torch.tensor([[math.log(0.25)]], dtype=torch.float64), kind)
    (grad,) = torch.autograd.grad(kl.sum(), logp)
    assert kl.item() == pytest.approx(value, abs=1e-12)
    assert grad.item() == pytest.approx(gradient, abs=1e-12)


def test_abs_gradient_flips_sign_with_the_log_ratio():
    logp = torch.tensor([math.log(0.25), math.log(0.5)], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([math.log(0.5), math.log(0.25)], dtype=torch.float64)
    kl = kl_estimate(logp, ref, "abs")
    (grad,) = torch.autograd.grad(kl.sum(), logp)
    torch.testing.assert_close(kl, torch.full((2,), math.log(2), dtype=torch.float64))
    assert grad.tolist() == [-1.0, 1.0]


def test_straight_through_gradient_is_k2_gradient_everywhere():
    logp = torch.linspace(-3, 1, 9, dtype=torch.float64).requires_grad_()
    ref = torch.zeros(9, dtype=torch.float64)
    (k2_grad,) = torch.autograd.grad(kl_estimate(logp, ref, "k2").sum(), logp)
    for kind, base in (("k1+", "k1"), ("k3+", "k3")):
        kl = kl_estimate(logp, ref, kind)
        (grad,) = torch.autograd.grad(kl.sum(), logp)
        torch.testing.assert_close(kl, kl_estimate(logp, ref, base))
        torch.testing.assert_close(grad, k2_grad)
