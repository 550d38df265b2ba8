"""GRPO-Guard: RatioNorm removes the left shift and the 1/s scale; balancing equalises per-step gradients."""

from __future__ import annotations

import math

import pytest
import torch

from grpokit.flow.grpo_guard import ratio_norm_log_ratio, step_balancing_weights
from grpokit.flow.sde import gaussian_log_prob, sde_noise_levels, sde_step_mean_std, time_grid


def _sampled_ratios(std: float, shift: float, n: int = 100_000, dims: int = 8, reduction: str = "mean"):
    generator = torch.Generator().manual_seed(0)
    old_mean = torch.zeros(n, dims, dtype=torch.float64)
    new_mean = old_mean + shift
    z = torch.randn(n, dims, generator=generator, dtype=torch.float64)
    sample = old_mean + std * z
    logp = gaussian_log_prob(sample, new_mean, std, reduction=reduction)
    old_logp = gaussian_log_prob(sample, old_mean, std, reduction=reduction)
    normed = ratio_norm_log_ratio(logp, old_logp, new_mean, old_mean, std, reduction=reduction)
    return logp - old_logp, normed, z, new_mean - old_mean


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ratio_norm_log_ratio_equals_noise_dot_mean_shift(reduction):
    _, normed, z, delta = _sampled_ratios(std=0.2, shift=0.03, n=1000, reduction=reduction)
    product = z * delta
    expected = product.mean(dim=1) if reduction == "mean" else product.sum(dim=1)
    assert torch.allclose(normed, expected, atol=1e-12)


def test_ratio_norm_removes_the_left_shift_that_the_raw_log_ratio_has():
    raw, normed, _, _ = _sampled_ratios(std=0.1, shift=0.05)
    # raw: E = −mean_d Δμ²/(2s²) = −0.125, far outside its standard error
    assert raw.mean().item() == pytest.approx(-0.125, abs=0.002)
    assert abs(normed.mean().item()) < 4 * normed.std().item() / math.sqrt(len(normed))


def test_ratio_norm_spread_does_not_depend_on_the_step_std():
    spreads_raw, spreads_normed = [], []
    for std in (0.05, 0.2, 0.8):
        raw, normed, _, _ = _sampled_ratios(std=std, shift=0.01, n=50_000)
        spreads_raw.append(raw.std().item())
        spreads_normed.append(normed.std().item())
    # raw spread ∝ 1/s (16× from s = 0.8 to 0.05); normalised spread = ‖Δμ‖/D = 0.01/√8 at every s
    assert spreads_raw[0] / spreads_raw[-1] > 10
    for spread in spreads_normed:
        assert spread == pytest.approx(0.01 / math.sqrt(8), rel=0.02)


def test_ratio_norm_is_zero_at_the_sampling_parameters():
    logp = torch.tensor([0.3, -1.2])
    mean = torch.randn(2, 4)
    assert torch.equal(ratio_norm_log_ratio(logp, logp, mean, mean, 0.1), torch.zeros(2))


def test_balancing_weights_for_a_uniform_grid_are_beta_only():
    grid = time_grid(4)
    weights = step_balancing_weights(grid, sde_noise_levels(grid, 0.7), ratio_normalized=True)
    beta = 1 + 0.49 / 2  # steps with t < 1; the t = 1 step has β = 1
    raw = torch.tensor([1.0, 1 / beta, 1 / beta, 1 / beta], dtype=torch.float64)
    assert torch.allclose(weights, raw / raw.mean())
    assert weights.mean().item() == pytest.approx(1.0)


def test_balancing_weights_without_ratio_norm_grow_with_the_step_std():
    grid = time_grid(5)
    sigmas = sde_noise_levels(grid, 0.7)
    weights = step_balancing_weights(grid, sigmas, ratio_normalized=False)
    dt = 0.2
    raw = sigmas * math.sqrt(dt) / ((1 + sigmas**2 * (1 - grid[:-1]) / (2 * grid[:-1])) * dt)
    assert torch.allclose(weights, raw / raw.mean())
    assert (weights[:-1] > weights[1:]).all()  # noisier steps (larger s) are weighted up


class _RandomVelocity(torch.nn.Module):
    def __init__(self, dims: int = 16):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dims + 1, 64), torch.nn.Tanh(), torch.nn.Linear(64, dims)
        )

    def forward(self, x, t):
        return self.net(torch.cat([x, torch.full((x.shape[0], 1), t)], dim=1))


def _per_step_grad_norms(ratio_norm: bool, balanced: bool, grid: torch.Tensor) -> torch.Tensor:
    """‖∇_θ mean_i A_i·log r_i‖ of each step at θ = θ_old (the policy-gradient direction), random model, A = ±1."""
    model = _RandomVelocity()
    sigmas = sde_noise_levels(grid, 0.7)
    weights = step_balancing_weights(grid, sigmas, ratio_normalized=ratio_norm)
    generator = torch.Generator().manual_seed(1)
    norms = []
    for k in range(len(grid) - 1):
        t, t_next = grid[k].item(), grid[k + 1].item()
        x = torch.randn(512, 16, generator=generator)
        with torch.no_grad():
            old_mean, std = sde_step_mean_std(x, model(x, t), t, t_next, sigmas[k].item())
            sample = old_mean + std * torch.randn(x.shape, generator=generator)
        mean, _ = sde_step_mean_std(x, model(x, t), t, t_next, sigmas[k].item())
        logp = gaussian_log_prob(sample, mean, std)
        old_logp = gaussian_log_prob(sample, old_mean, std)
        log_ratio = (
            ratio_norm_log_ratio(logp, old_logp, mean, old_mean, std) if ratio_norm else logp - old_logp
        )
        weight = weights[k].item() if balanced else 1.0
        advantages = torch.randint(0, 2, (512,), generator=generator) * 2.0 - 1.0
        grads = torch.autograd.grad(weight * (advantages * log_ratio).mean(), list(model.parameters()))
        norms.append(torch.cat([g.flatten() for g in grads]).norm())
    return torch.stack(norms)


@pytest.mark.parametrize("ratio_norm", [False, True])
def test_balancing_puts_per_step_gradient_norms_within_a_small_factor(ratio_norm):
    grid = time_grid(10, shift=3.0)  # SD3's shifted grid: |dt| varies 10× across steps
    before = _per_step_grad_norms(ratio_norm, balanced=False, grid=grid)
    after = _per_step_grad_norms(ratio_norm, balanced=True, grid=grid)
    assert (before.max() / before.min()).item() > 4
    assert (after.max() / after.min()).item() < 2
