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
