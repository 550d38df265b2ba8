"""Flow-GRPO's SDE sampler for rectified-flow models, as pure tensor functions.

Conventions (SD3's): data x_0, noise ε ~ N(0, I), ``x_t = (1 − t)·x_0 + t·ε`` with t = 1 pure noise; the
model predicts the velocity ``v_θ(x_t, t, c) ≈ ε − x_0``. Sampling runs a decreasing time grid
``1 = t_0 > t_1 > … > t_S = 0``; step k goes from ``t = t_k`` to ``t' = t_{k+1}`` with ``dt = t' − t < 0``.

Flow-GRPO (Liu et al., arXiv 2505.05470) replaces the Euler ODE step ``x_{t'} = x_t + v·dt`` by an
Euler–Maruyama step of an SDE with the same marginals, so each denoising step is a Gaussian policy
``N(μ_θ, s_t²·I)`` with a log-probability. Every function here works on any latent shape ``[B, ...]``;
"over dimensions" always means over every non-batch dimension (D of them per sample).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LOGPROB_REDUCTIONS = ("mean", "sum")
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _check_reduction(reduction: str) -> None:
    if reduction not in LOGPROB_REDUCTIONS:
        raise ValueError(f"reduction must be one of {LOGPROB_REDUCTIONS}, got {reduction!r}")


def _reduce_dims(values: Tensor, reduction: str) -> Tensor:
    """``[B, ...] -> [B]`` by mean or sum over every non-batch dimension."""
    _check_reduction(reduction)
    flat = values.reshape(values.shape[0], -1)
    return flat.mean(dim=1) if reduction == "mean" else flat.sum(dim=1)


def _per_sample(value: Tensor | float, like: Tensor) -> Tensor:
    """A scalar or ``[B]`` value shaped to broadcast against ``like[B, ...]``."""
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if value.dim() == 0:
        return value
    return value.reshape(value.shape[0], *([1] * (like.dim() - 1)))


def time_grid(num_steps: int, *, shift: float = 1.0) -> Tensor:
    """The decreasing grid ``t_k``, ``[S + 1]`` float64 from 1 to 0.

    Uniform in k, then SD3's timestep shift ``t ← shift·t / (1 + (shift − 1)·t)`` (shift = 1: uniform; SD3
    uses 3, which spends more steps at high noise). Case S = 2, shift = 3: [1, 0.75, 0].
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    t = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    return shift * t / (1.0 + (shift - 1.0) * t)


def sde_noise_levels(timesteps: Tensor, noise_level: float) -> Tensor:
    """Flow-GRPO's ``σ_t = a·√(t / (1 − t))`` at the start of every step, ``[S]`` for a grid ``[S + 1]``.

    ``a = noise_level`` (Flow-GRPO's default 0.7; 0 gives the ODE). At t = 1 the root's denominator is
    infinite; as Flow-GRPO's code does, 1 − t is replaced there by 1 − t_1 (the next grid point) and the
    numerator keeps t = 1. Case t = 0.5, a = 0.7 → σ = 0.7; grid [1, 0.5, 0], a = 0.7 → σ_0 = 0.7·√2.
    """
    if noise_level < 0:
        raise ValueError(f"noise_level must be >= 0, got {noise_level}")
    t = timesteps[:-1].to(torch.float64)
    one_minus_t = torch.where(t >= 1.0, 1.0 - timesteps[1].to(torch.float64), 1.0 - t)
    return noise_level * torch.sqrt(t / one_minus_t)


def velocity_coefficient(t: Tensor | float, sigma: Tensor | float) -> Tensor:
    """``β_t = 1 + σ_t²·(1 − t)/(2t)``: the factor multiplying ``v·dt`` in the SDE step mean.

    For Flow-GRPO's σ_t it is the constant 1 + a²/2 (1.245 at a = 0.7) for every t < 1, and 1 at t = 1.
    """
    t = torch.as_tensor(t, dtype=torch.float64)
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    return 1.0 + sigma.square() * (1.0 - t) / (2.0 * t)


def sde_step_mean_std(
    x: Tensor, velocity: Tensor, t: Tensor | float, t_next: Tensor | float, sigma: Tensor | float
) -> tuple[Tensor, Tensor]:
    """Mean and std of one SDE step from t to t' (``dt = t' − t < 0``), Flow-GRPO's Eq. (9):

    ``μ = x·(1 + σ²/(2t)·dt) + v·(1 + σ²·(1 − t)/(2t))·dt``,  ``s = σ·√(−dt)``;  ``x_{t'} = μ + s·z``.

    ``t``, ``t_next``, ``sigma`` are scalars or ``[B]`` (one per sample); ``std`` comes back with ``x``'s
    dtype, broadcastable to ``x`` (``[]`` or ``[B, 1, ...]``). σ = 0 is the Euler ODE step ``x + v·dt``.
    Case (1-D): t = 0.5, t' = 0.4, σ = 0.7, x = 1, v = 2 → μ = 0.702, s = 0.221359.
    """
    t_, t_next_, sigma_ = (_per_sample(v, x) for v in (t, t_next, sigma))
    dt = t_next_ - t_
    sigma_sq = sigma_.square()
    mean = x * (1.0 + sigma_sq / (2.0 * t_) * dt) + velocity * (1.0 + sigma_sq * (1.0 - t_) / (2.0 * t_)) * dt
    std = sigma_ * torch.sqrt(-dt)
    return mean, std


def gaussian_log_prob(
    sample: Tensor, mean: Tensor, std: Tensor | float, *, reduction: str = "mean"
) -> Tensor:
    """Log-density of ``sample`` under ``N(mean, std²·I)``, reduced over the D dimensions, ``[B]``:

    ``log p = red_d [ −(x_d − μ_d)²/(2 s²) − log s − ½·log 2π ]`` with ``red`` = mean (Flow-GRPO's choice) or
    sum (the true joint density). The mean scales every log-ratio by 1/D, which is why Flow-GRPO's clip
    range is ~1e-4 rather than PPO's 0.2. Case (1-D): s = 0.221359, x = μ → 0.589029; x = μ + s → 0.089029.
    """
    std = torch.as_tensor(std, dtype=mean.dtype, device=mean.device)
    per_dim = -(sample - mean).square() / (2.0 * std.square()) - torch.log(std) - _HALF_LOG_2PI
    return _reduce_dims(per_dim.expand_as(mean), reduction)


def gaussian_mean_kl(
    mean: Tensor, ref_mean: Tensor, std: Tensor | float, *, reduction: str = "mean"
) -> Tensor:
    """``KL(N(μ_θ, s²I) ‖ N(μ_ref, s²I)) = ‖μ_θ − μ_ref‖²/(2 s²)``, reduced over dimensions like the
    log-prob (mean: divided by D), ``[B]``. Flow-GRPO's KL to the reference at one denoising step: both
    policies share the step's std, so the KL is exact and needs no sampled estimator."""
    std = torch.as_tensor(std, dtype=mean.dtype, device=mean.device)
    return _reduce_dims(((mean - ref_mean).square() / (2.0 * std.square())).expand_as(mean), reduction)


def expected_log_ratio(mean_shift: Tensor, std: Tensor | float, *, reduction: str = "mean") -> Tensor:
    """``E_z[log r] = −‖Δμ‖²/(2 s²)`` (÷ D for the mean form), ``[B]``: the left shift of the log-ratio.

    The transition was drawn from the old policy, ``x' = μ_old + s·z``; for new parameters with
    ``Δμ = μ_θ − μ_old``, ``log r = (z·Δμ)/s − ‖Δμ‖²/(2 s²)`` (summed over dimensions), whose mean over z is
    always negative — GRPO-Guard's observation. Case D = 4, Δμ = 0.01 each, s = 0.1: −0.02 summed, −0.005 mean.
    """
    std = torch.as_tensor(std, dtype=mean_shift.dtype, device=mean_shift.device)
    return -_reduce_dims((mean_shift.square() / (2.0 * std.square())).expand_as(mean_shift), reduction)


def expected_ratio(mean_shift: Tensor, std: Tensor | float, *, reduction: str = "mean") -> Tensor:
    """``E_z[r]``, ``[B]``. Summed form: exactly 1 (an importance weight under the sampling policy has
    mean 1; only its median, e^{E log r}, sits below 1). Mean form, r = exp((log r_sum)/D), log-normal:
    ``E_z[r] = exp(−(D − 1)/D² · ‖Δμ‖²/(2 s²)) < 1`` — averaging the log-density over dimensions is what
    moves the *mean* ratio below 1. Case D = 4, Δμ = 0.01 each, s = 0.1, mean form: exp(−0.00375).
    """
    _check_reduction(reduction)
    if reduction == "sum":
        return torch.ones(mean_shift.shape[0], dtype=mean_shift.dtype, device=mean_shift.device)
    dims = mean_shift[0].numel()
    summed = -expected_log_ratio(mean_shift, std, reduction="sum")
    return torch.exp(-(dims - 1) / dims**2 * summed)
