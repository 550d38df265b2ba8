from __future__ import annotations

import math

import pytest
import torch

from grpokit.rollout.token_sampling import inverse_cdf_sample, sample_next_tokens

# 1 − 2⁻⁵³: the largest float64 below 1, the top end of torch.rand's range
ALMOST_ONE = math.nextafter(1.0, 0.0)


def _grid(count: int) -> torch.Tensor:
    """Midpoints of `count` equal slices of [0, 1): an exactly uniform set of draws."""
    return (torch.arange(count, dtype=torch.float64) + 0.5) / count


@pytest.mark.parametrize("block_size", [1, 2, 3, 128])
def test_inverse_cdf_draws_each_index_in_proportion_to_its_weight(block_size):
    # W = 8: index 1 owns [0, 1/8), index 3 owns [1/8, 1/2), index 6 owns [1/2, 1) of the unit interval.
    weights = torch.tensor([[0.0, 1.0, 0.0, 3.0, 0.0, 0.0, 4.0]])
    draws = inverse_cdf_sample(weights.expand(8000, 7), _grid(8000), block_size=block_size)
    assert torch.bincount(draws, minlength=7).tolist() == [0, 1000, 0, 3000, 0, 0, 4000]


@pytest.mark.parametrize("block_size", [1, 2, 4, 128])
def test_zero_weight_entries_are_never_drawn_even_at_the_ends_of_the_unit_interval(block_size):
    weights = torch.tensor([[0.0, 0.0, 2.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]]).expand(2, 9)
    draws = inverse_cdf_sample(weights, torch.tensor([0.0, ALMOST_ONE]), block_size=block_size)
    assert draws.tolist() == [2, 5]


def test_unnormalized_weights_give_the_same_draws_as_their_normalized_probabilities():
    weights = torch.rand(64, 300, generator=torch.Generator().manual_seed(0)) ** 4
    uniforms = torch.rand(64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    scaled = inverse_cdf_sample(weights * 1e6, uniforms)
    assert torch.equal(inverse_cdf_sample(weights, uniforms), scaled)
    assert torch.equal(inverse_cdf_sample(weights / weights.sum(-1, keepdim=True), uniforms), scaled)


def test_draws_over_several_blocks_follow_the_softmax_distribution():
    # 300 entries = 2 full blocks of 128 and a padded third one; 20,000 draws from one row.
    logits = torch.randn(300, generator=torch.Generator().manual_seed(0)) * 2
    probs = logits.softmax(-1)
    num_draws = 20_000
    tokens, _ = sample_next_tokens(
        logits.expand(num_draws, 300), 1.0, 0, 1.0, torch.Generator().manual_seed(0)
    )
    frequencies = torch.bincount(tokens, minlength=300).double() / num_draws
    # 4 standard deviations of each frequency: 4·sqrt(p(1−p)/n)
    bound = 4 * (probs * (1 - probs) / num_draws).sqrt() + 1e-4
    assert ((frequencies - probs).abs() <= bound).all()


def test_top_k_and_top_p_tokens_outside_the_filter_are_never_drawn_in_a_large_vocabulary():
    logits = torch.randn(4, 1000, generator=torch.Generator().manual_seed(3))
    top5 = torch.topk(logits, 5, dim=-1).indices
    tokens, _ = sample_next_tokens(logits.repeat(500, 1), 1.0, 5, 1.0, torch.Generator().manual_seed(0))
    assert (tokens.view(500, 4, 1) == top5.view(1, 4, 5)).any(-1).all()
    nucleus_logits = torch.tensor([[3.0, 2.0, 0.0, -1.0] + [-9.0] * 200])  # p ≈ .70, .26, .03, .01, ...
    tokens, _ = sample_next_tokens(
        nucleus_logits.expand(2000, 204), 1.0, 0, 0.9, torch.Generator().manual_seed(0)
    )
    assert set(tokens.tolist()) == {0, 1}  # 0.70 < 0.9 ≤ 0.70 + 0.26


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.0])
def test_recorded_logprob_is_the_temperature_only_log_softmax_of_the_drawn_token(temperature):
    logits = torch.randn(32, 500, generator=torch.Generator().manual_seed(4)) * 3
    tokens, logp = sample_next_tokens(logits, temperature, 10, 0.8, torch.Generator().manual_seed(0))
    expected = (
        torch.log_softmax(logits / (temperature or 1.0), dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
    )
    torch.testing.assert_close(logp, expected, rtol=0, atol=1e-5)
    if temperature == 0.0:
        assert torch.equal(tokens, logits.argmax(-1))


def test_the_same_generator_seed_gives_the_same_tokens():
    logits = torch.randn(16, 200, generator=torch.Generator().manual_seed(5))
    first, again, other = (
        sample_next_tokens(logits, 1.0, 0, 1.0, torch.Generator().manual_seed(s))[0] for s in (7, 7, 8)
    )
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
