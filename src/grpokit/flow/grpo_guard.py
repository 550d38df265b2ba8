"""GRPO-Guard (Wang et al., arXiv 2510.22319): RatioNorm and cross-step gradient balancing, as pure functions.

Why they exist. A denoising step's importance ratio, for a transition drawn from the old policy
``x' = μ_old + s·z``, has ``log r = (z·Δμ)/s − ‖Δμ‖²/(2 s²)`` (summed over dimensions; ``Δμ = μ_θ − μ_old``,
``s`` the step's std). Its mean is negative (the ratio is *left-shifted*) by an amount that grows with the
update, and its spread ``‖Δμ‖/s`` differs from step to step because s does. A positive-advantage sample
then rarely reaches the upper clip ``1 + ε`` — its update goes unchecked — while the lower clip fires for
negative ones. See :func:`grpokit.flow.sde.expected_log_ratio` for the closed form.

Which form we implemented, and why (the paper's code is not public):

- **RatioNorm** ``log r̂ = s·(log r + ‖Δμ‖²/(2 s²))``: add back the deterministic shift, then multiply by
  s. The result is ``z·Δμ`` (÷ D in the mean form): mean 0 over z at every step, spread ``‖Δμ‖`` with no
  1/s. The paper's text was not available to us; this is the form of two third-party versions —
  verl-omni's ``grpo_guard`` loss (bias ``mean_d Δμ²/(2 s²)``, outer factor ``s = σ_t·√(−dt)``) and
  TeleBoost, whose tests pin it as the paper's Eq. 8 — and it is the one whose mean over z is exactly 0
  and whose spread has no 1/s, which a test checks against the closed form. The shift
  uses μ_θ with its gradient, so ∂ log r̂/∂μ_θ = z exactly — without it the gradient would keep the
  1/s factor of the raw ratio. Clip ε must shrink accordingly (the paper uses ~2e-6 with the mean form).
- **Cross-step balancing**: the gradient of a step's log-ratio with respect to the velocity carries the
  factor ``β_t·|dt|`` after RatioNorm (``∂μ/∂v = β_t·dt``, ``β_t = 1 + σ_t²(1 − t)/(2t)``) and
  ``β_t·|dt|/s_t`` without it, so the per-step loss weight that equalises them is ``1/(β_t·|dt|)`` resp.
  ``s_t/(β_t·|dt|)``. For Flow-GRPO's σ_t, β_t is the constant 1 + a²/2 (t < 1), and the first form is the
  paper's ``1/|dt|`` (Eq. 12, as implemented by verl-omni and TeleBoost) up to that constant. We
  normalise the weights to mean 1 over the grid so the learning rate keeps its meaning (verl-omni does
  not; with Adam only the relative weights matter).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .sde import _reduce_dims, velocity_coefficient


def _row_values(value: Tensor | float, rows: int, like: Tensor) -> Tensor:
    """A scalar, ``[B]`` or ``[B, 1, ...]`` per-sample value as a scalar or ``[B]`` tensor."""
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return value.reshape(rows) if value.numel() == rows and value.dim() > 0 else value.reshape(())


def ratio_norm_log_ratio(
    logp: Tensor,
    old_logp: Tensor,
    mean: Tensor,
    old_mean: Tensor,
    std: Tensor | float,
    *,
    reduction: str = "mean",
) -> Tensor:
    """RatioNorm's log-ratio, ``[B]``: ``log r̂ = s·(log p_θ − log p_old + red_d(Δμ²)/(2 s²))``.

    ``logp``/``old_logp[B]`` are the step's log-probs reduced with ``reduction`` (mean over the D
    dimensions, or sum), ``mean``/``old_mean[B, ...]`` the step means μ_θ (with gradient) and μ_old (stored
    at sampling), ``std`` the step's s (scalar, ``[B]`` or ``[B, 1, ...]``). Equals ``red_d(z_d·Δμ_d)`` for
    ``x' = μ_old + s·z``: zero-mean over z, spread independent of s. See the module docstring for the form.
    """
    rows = logp.shape[0]
    s_mean = _row_values(std, rows, logp)
    s_full = torch.as_tensor(std, dtype=mean.dtype, device=mean.device)
    shift = _reduce_dims(((mean - old_mean).square() / (2.0 * s_full.square())).expand_as(mean), reduction)
    return s_mean * (logp - old_logp + shift)


def step_balancing_weights(timesteps: Tensor, sigmas: Tensor, *, ratio_normalized: bool) -> Tensor:
    """Per-step loss weights ``[S]`` that give every denoising step a comparable gradient, mean 1.

    For a grid ``timesteps[S + 1]`` and noise levels ``sigmas[S]`` (:func:`~grpokit.flow.sde.sde_noise_levels`),
    with ``|dt_k| = t_k − t_{k+1}``, ``β_k = 1 + σ_k²(1 − t_k)/(2 t_k)`` and ``s_k = σ_k·√|dt_k|``:
    ``w_k ∝ 1/(β_k·|dt_k|)`` after RatioNorm (``ratio_normalized=True``), ``w_k ∝ s_k/(β_k·|dt_k|)`` on the
    raw log-ratio; then divided by their mean over the S steps. Case: a uniform grid with RatioNorm gives
    β-only weights (all 1 except the t = 1 step, where β = 1 instead of 1 + a²/2).
    """
    t = timesteps.to(torch.float64)
    sigma = sigmas.to(torch.float64)
    abs_dt = t[:-1] - t[1:]
    beta = velocity_coefficient(t[:-1], sigma)
    raw = 1.0 / (beta * abs_dt)
    if not ratio_normalized:
        raw = raw * sigma * abs_dt.sqrt()
    return raw / raw.mean()
