from __future__ import annotations

import math

import torch

from grpokit.algorithms import (
    gspo_token_log_ratio,
    sequence_log_ratio,
    sequence_ratio_geometric_mean,
    sequence_ratio_product,
    token_log_ratio,
)


def test_token_log_ratio_is_difference_of_logprobs():
    logp, old = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    torch.testing.assert_close(token_log_ratio(logp, old), torch.tensor([[0.5, -1.0]]))


def test_gspo_sequence_ratio_case_ignores_padding():
    old = torch.zeros(1, 4)
    logp = torch.tensor([[0.1, -0.1, 0.3, 99.0]])  # last position is padding
    mask = torch.tensor([[1, 1, 1, 0]])
    log_s = sequence_log_ratio(logp, old, mask)
    torch.testing.assert_close(log_s.exp(), torch.tensor([1.105171]))
    # clipped at 1 + eps_high = 1.0004
    assert torch.clamp(log_s.exp(), 1 - 3e-4, 1 + 4e-4).item() == torch.tensor(1.0004).item()


def test_sequence_product_and_geometric_mean_case():
    log_ratio = torch.tensor([[1.1, 0.9, 1.5, 7.0]]).log()
    mask = torch.tensor([[1, 1, 1, 0]])
    torch.testing.assert_close(sequence_ratio_product(log_ratio, mask).exp(), torch.tensor([1.485]))
    torch.testing.assert_close(sequence_ratio_geometric_mean(log_ratio, mask).exp(), torch.tensor([1.140886]))


def test_empty_sequence_has_log_ratio_zero_not_nan():
    out = sequence_log_ratio(torch.zeros(1, 2), torch.ones(1, 2), torch.zeros(1, 2))
    assert out.item() == 0.0


def test_gspo_token_value_is_sequence_ratio_and_gradient_is_per_token():
    logp = torch.tensor([[0.1, -0.1, 0.3]], requires_grad=True)
    old = torch.zeros(1, 3)
    mask = torch.ones(1, 3)
    log_ratio = gspo_token_log_ratio(logp, old, mask)
    torch.testing.assert_close(log_ratio, torch.full((1, 3), 0.1))
    weights = torch.tensor([[1.0, 2.0, 3.0]])
    (log_ratio.exp() * weights).sum().backward()
    # d s_{i,t} / d logp_t = s_i, and only through the token's own log-prob
    torch.testing.assert_close(logp.grad, math.exp(0.1) * weights)
