"""KL(π_θ ‖ π_ref) per token, Schulman's estimators (http://joschu.net/blog/kl-approx.html).

Tokens are sampled from π_θ (or π_old ≈ π_θ); with ``d = log π_ref − log π_θ`` per token:
``k1 = −d`` (unbiased, can be negative), ``k2 = d²/2`` (biased, low variance), ``k3 = exp(d) − d − 1``
(unbiased and ≥ 0; GRPO's choice). Case π_θ = 0.5, π_ref = 0.25: k1 = 0.693147, k2 = 0.240227,
k3 = 0.193147.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

_ESTIMATORS: dict[str, Callable[[Tensor], Tensor]] = {
    "k1": lambda d: -d,
    "k2": lambda d: 0.5 * d.square(),
    "k3": lambda d: torch.exp(d) - d - 1.0,
}
KL_ESTIMATORS = tuple(_ESTIMATORS)


def kl_estimate(logp: Tensor, ref_logp: Tensor, kind: str = "k3", clamp: float | None = 10.0) -> Tensor:
    """Per-token KL estimate ``[B, T]``; ``d`` is clamped to [−clamp, clamp] first (exp(d) cannot overflow).

    Differentiable w.r.t. ``logp``; add ``β · aggregate(k)`` to the loss. Zero masked positions of both
    inputs first (:func:`~grpokit.algorithms.ratios.zero_masked`, as ``policy_loss`` does): ``exp``'s backward
    at a masked NaN would be ``0 · NaN``.
    """
    if kind not in _ESTIMATORS:
        raise ValueError(f"KL estimator must be one of {KL_ESTIMATORS}, got {kind!r}")
    d = ref_logp - logp
    if clamp is not None:
        d = d.clamp(-clamp, clamp)
    return _ESTIMATORS[kind](d)


def kl_reward_penalty(logp: Tensor, ref_logp: Tensor, beta: float) -> Tensor:
    """Per-token reward penalty ``β · k1 = β · (log π_θ − log π_ref)``, ``[B, T]``, detached.

    Used as ``R_t −= penalty_t`` when the KL goes into the reward instead of the loss.
    """
    return (beta * (logp - ref_logp)).detach()
