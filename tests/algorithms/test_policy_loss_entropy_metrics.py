from __future__ import annotations

import pytest
import torch

from grpokit.algorithms import get_preset, policy_loss

# Two completions: the first (advantage +1) has 4 tokens, the second (advantage −1) 3 tokens and a pad.
ENTROPY = torch.tensor([[0.1, 0.2, 0.3, 0.4], [1.0, 2.0, 3.0, 9.0]])
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
ADVANTAGES = torch.tensor([1.0, -1.0])


def _metrics(logp, old_logp, entropy=ENTROPY):
    preset = get_preset("grpo", beta=0.0)
    _, metrics = policy_loss(preset, logp, old_logp, ADVANTAGES, MASK, entropy=entropy)
    return {k: float(v) for k, v in metrics.items()}


def test_entropy_percentiles_are_over_valid_tokens_only():
    m = _metrics(torch.zeros(2, 4), torch.zeros(2, 4))
    # Valid entropies sorted: .1 .2 .3 .4 1 2 3 (the pad's 9 is left out). Linear interpolation on
    # positions q·6: p10 → 0.6 → .1 + .6·.1 = .16; p50 → 3 → .4; p90 → 5.4 → 2 + .4·1 = 2.4.
    assert m["entropy_mean"] == pytest.approx(7.0 / 7)
    assert m["entropy_p10"] == pytest.approx(0.16)
    assert m["entropy_p50"] == pytest.approx(0.4)
    assert m["entropy_p90"] == pytest.approx(2.4)


def test_high_advantage_entropy_uses_only_positive_advantage_completions():
    m = _metrics(torch.zeros(2, 4), torch.zeros(2, 4))
    # First row only: .1 .2 .3 .4 → mean .25, p50 .25, p10 at position .3 → .13, p90 at 2.7 → .37
    assert m["high_adv_entropy_mean"] == pytest.approx(0.25)
    assert m["high_adv_entropy_p50"] == pytest.approx(0.25)
    assert m["high_adv_entropy_p10"] == pytest.approx(0.13)
    assert m["high_adv_entropy_p90"] == pytest.approx(0.37)


def test_no_positive_advantage_gives_no_high_advantage_keys():
    preset = get_preset("grpo", beta=0.0)
    _, metrics = policy_loss(
        preset, torch.zeros(2, 4), torch.zeros(2, 4), -ADVANTAGES.abs(), MASK, entropy=ENTROPY
    )
    assert not any(k.startswith("high_adv_entropy") for k in metrics)
    assert "entropy_p50" in metrics


def test_ratio_std_is_the_population_std_over_valid_tokens():
    # log-ratios ln 2 on the first row's 4 tokens and 0 on the second row's 3 valid tokens
    # (its pad has ln 4, ignored): ratios 2,2,2,2,1,1,1 → mean 11/7, std sqrt(4·(3/7)² + 3·(4/7)²)/√7
    logp = torch.tensor([[0.693147, 0.693147, 0.693147, 0.693147], [0.0, 0.0, 0.0, 1.386294]])
    m = _metrics(logp, torch.zeros(2, 4))
    mean = 11 / 7
    expected = ((4 * (2 - mean) ** 2 + 3 * (1 - mean) ** 2) / 7) ** 0.5
    assert m["ratio_mean"] == pytest.approx(mean, rel=1e-5)
    assert m["ratio_std"] == pytest.approx(expected, rel=1e-5)


def test_on_policy_ratio_has_zero_std():
    logp = torch.randn(2, 4)
    m = _metrics(logp, logp.clone())
    assert m["ratio_std"] == pytest.approx(0.0, abs=1e-7)
