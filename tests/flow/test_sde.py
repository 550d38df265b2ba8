"""Flow-GRPO's SDE step: the hand-computed cases of docs/specs/flow.md and the "same marginals" property."""

from __future__ import annotations

import math

import pytest
import torch

from grpokit.flow.sde import (
    expected_log_ratio,
    expected_ratio,
    gaussian_log_prob,
    gaussian_mean_kl,
    sde_noise_levels,
    sde_step_mean_std,
    time_grid,
    velocity_coefficient,
)


def test_sde_step_mean_and_std_match_the_hand_computed_case():
    x, v = torch.tensor([[1.0]], dtype=torch.float64), torch.tensor([[2.0]], dtype=torch.float64)
    sigma = sde_noise_levels(torch.tensor([0.5, 0.4], dtype=torch.float64), 0.7)
    mean, std = sde_step_mean_std(x, v, 0.5, 0.4, sigma[0])
    assert sigma.item() == pytest.approx(0.7)
    assert mean.item() == pytest.approx(0.702, abs=1e-12)
    assert float(std) == pytest.approx(0.7 * math.sqrt(0.1), abs=1e-12)  # 0.221359


def test_noise_level_zero_is_the_euler_ode_step():
    x, v = torch.tensor([[1.0, -2.0]]), torch.tensor([[2.0, 0.5]])
    mean, std = sde_step_mean_std(x, v, 0.5, 0.4, 0.0)
    assert torch.allclose(mean, x + v * (0.4 - 0.5))
    assert float(std) == 0.0


def test_noise_level_at_t_one_uses_the_next_grid_point_in_the_denominator():
    sigmas = sde_noise_levels(torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64), 0.7)
    assert torch.isfinite(sigmas).all()
    assert sigmas[0].item() == pytest.approx(0.7 * math.sqrt(1.0 / 0.5))
    assert sigmas[1].item() == pytest.approx(0.7)


def test_shifted_time_grid_matches_sd3_shift_formula():
    assert time_grid(2, shift=3.0).tolist() == pytest.approx([1.0, 0.75, 0.0])
    assert time_grid(4).tolist() == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])


def test_velocity_coefficient_is_constant_for_flow_grpo_noise_levels():
    grid = time_grid(10)
    beta = velocity_coefficient(grid[:-1], sde_noise_levels(grid, 0.7))
    assert beta[0].item() == pytest.approx(1.0)  # t = 1: (1 − t) = 0
    assert torch.allclose(beta[1:], torch.full((9,), 1.0 + 0.49 / 2, dtype=torch.float64))


def test_gaussian_log_prob_matches_the_hand_computed_values():
    std = 0.7 * math.sqrt(0.1)
    mean = torch.tensor([[0.702]], dtype=torch.float64)
    assert gaussian_log_prob(mean, mean, std).item() == pytest.approx(0.589029, abs=1e-6)
    assert gaussian_log_prob(mean + std, mean, std).item() == pytest.approx(0.089029, abs=1e-6)


def test_mean_log_prob_is_sum_divided_by_dimensions():
    torch.manual_seed(0)
    mean, sample = torch.randn(3, 2, 5), torch.randn(3, 2, 5)
    summed = gaussian_log_prob(sample, mean, 0.3, reduction="sum")
    averaged = gaussian_log_prob(sample, mean, 0.3, reduction="mean")
    assert torch.allclose(averaged, summed / 10)
    reference = torch.distributions.Normal(mean, 0.3).log_prob(sample).sum(dim=(1, 2))
    assert torch.allclose(summed, reference, atol=1e-5)


def test_gaussian_kl_between_step_means_is_squared_distance_over_two_variances():
    mean, ref = torch.tensor([[0.3, 0.1]]), torch.tensor([[0.1, 0.1]])
    assert gaussian_mean_kl(mean, ref, 0.1, reduction="sum").item() == pytest.approx(0.04 / 0.02)
    assert gaussian_mean_kl(mean, ref, 0.1, reduction="mean").item() == pytest.approx(1.0)


def test_expected_log_ratio_matches_the_spec_case():
    shift = torch.full((1, 4), 0.01, dtype=torch.float64)
    assert expected_log_ratio(shift, 0.1, reduction="sum").item() == pytest.approx(-0.02)
    assert expected_log_ratio(shift, 0.1, reduction="mean").item() == pytest.approx(-0.005)
    assert expected_ratio(shift, 0.1, reduction="mean").item() == pytest.approx(math.exp(-0.00375))
    assert expected_ratio(shift, 0.1, reduction="sum").item() == 1.0


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_log_ratio_mean_shift_on_sampled_noise_matches_closed_form(reduction):
    generator = torch.Generator().manual_seed(0)
    n, dims, std = 200_000, 4, 0.1
    old_mean = torch.zeros(n, dims, dtype=torch.float64)
    new_mean = old_mean + 0.05  # Δμ/s = 0.5: a shift well above sampling error
    sample = old_mean + std * torch.randn(n, dims, generator=generator, dtype=torch.float64)
    log_ratio = gaussian_log_prob(sample, new_mean, std, reduction=reduction) - gaussian_log_prob(
        sample, old_mean, std, reduction=reduction
    )
    expected = expected_log_ratio(new_mean[:1] - old_mean[:1], std, reduction=reduction).item()
    assert expected < 0
    standard_error = log_ratio.std().item() / math.sqrt(n)
    assert log_ratio.mean().item() == pytest.approx(expected, abs=4 * standard_error)
    ratio_mean = torch.exp(log_ratio).mean().item()
    closed = expected_ratio(new_mean[:1] - old_mean[:1], std, reduction=reduction).item()
    assert ratio_mean == pytest.approx(closed, abs=4 * torch.exp(log_ratio).std().item() / math.sqrt(n))


def _gaussian_data_velocity(x, t, data_mean, data_std):
    """Exact v(x, t) = E[ε − x_0 | x_t = x] for x_0 ~ N(m, s0²): −m + (t − (1−t)s0²)/((1−t)²s0² + t²)·(x − (1−t)m)."""
    gain = (t - (1 - t) * data_std**2) / ((1 - t) ** 2 * data_std**2 + t**2)
    return -data_mean + gain * (x - (1 - t) * data_mean)


@pytest.mark.parametrize("noise_level", [0.0, 0.7])
def test_sde_with_exact_velocity_lands_on_the_data_distribution(noise_level):
    generator = torch.Generator().manual_seed(1)
    data_mean, data_std, n, steps = 0.5, 0.3, 40_000, 200
    grid = time_grid(steps)
    sigmas = sde_noise_levels(grid, noise_level)
    x = torch.randn(n, 1, generator=generator, dtype=torch.float64)
    for k in range(steps):
        t, t_next = grid[k].item(), grid[k + 1].item()
        mean, std = sde_step_mean_std(
            x, _gaussian_data_velocity(x, t, data_mean, data_std), t, t_next, sigmas[k]
        )
        x = mean + std * torch.randn(x.shape, generator=generator, dtype=torch.float64)
    assert x.mean().item() == pytest.approx(data_mean, abs=0.01)
    assert x.std().item() == pytest.approx(data_std, abs=0.01)


def test_sde_with_wrong_velocity_misses_the_data_distribution():
    # The marginal test above can fail: a velocity for another data mean lands elsewhere.
    generator = torch.Generator().manual_seed(1)
    grid = time_grid(100)
    sigmas = sde_noise_levels(grid, 0.7)
    x = torch.randn(20_000, 1, generator=generator, dtype=torch.float64)
    for k in range(100):
        t, t_next = grid[k].item(), grid[k + 1].item()
        mean, std = sde_step_mean_std(x, _gaussian_data_velocity(x, t, 0.8, 0.3), t, t_next, sigmas[k])
        x = mean + std * torch.randn(x.shape, generator=generator, dtype=torch.float64)
    assert abs(x.mean().item() - 0.5) > 0.2
