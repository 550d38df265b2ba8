"""KL(π_θ ‖ π_ref) per token, Schulman's estimators (http://joschu.net/blog/kl-approx.html).

Tokens are sampled from π_θ (or π_old ≈ π_θ); with ``d = log π_ref − log π_θ`` per token:
``k1 = −d`` (unbiased, can be negative), ``k2 = d²/2`` (biased, low variance), ``k3 = exp(d) − d − 1``
(unbiased and ≥ 0; GRPO's choice). Case π_θ = 0.5, π_ref = 0.25: k1 = 0.693147, k2 = 0.240227,
k3 = 0.193147. ``abs`` = |d|; ``k1+``/``k3+`` take the value of k1/k3 and the gradient of k2
(straight-through, as verl's ``k1+``/``k3+``).

Where grpokit differs from verl: ``d`` is clamped to ±10 before any estimator (verl clamps k3's d to ±20 and
then k3 itself to [−10, 10]); see docs/coming_from_verl_trl.md.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .registry import KL_ESTIMATORS_REGISTRY, register_kl_estimator


@register_kl_estimator("k1", summary="log π_θ − log π_ref: unbiased value, can be negative")
def k1(d: Tensor) -> Tensor:
    return -d


@register_kl_estimator("k2", summary="(log π_θ − log π_ref)²/2: biased value, its gradient is KL's (on-policy)")
def k2(d: Tensor) -> Tensor:
    return 0.5 * d.square()


@register_kl_estimator("k3", summary="exp(d) − d − 1: unbiased and ≥ 0 (GRPO's choice)")
def k3(d: Tensor) -> Tensor:
    return torch.exp(d) - d - 1.0


@register_kl_estimator("abs", summary="|log π_θ − log π_ref| (verl/TRL 'abs')")
def abs_kl(d: Tensor) -> Tensor:
    """``|d|``; its gradient w.r.t. log π_θ is ``sign(log π_θ − log π_ref)`` (0 at d = 0). Case d = −ln 2 →
    0.693147, gradient +1."""
    return d.abs()


def _straight_through_k2(value: Tensor, d: Tensor) -> Tensor:
    """``value`` in the forward pass, the gradient of k2 in the backward pass:
    ``k2(d) + sg(value − k2(d))``. ∂/∂log π_θ = ``log π_θ − log π_ref`` (= −d), the on-policy gradient of
    KL(π_θ ‖ π_ref), which k1's (a constant 1) and k3's (``1 − π_ref/π_θ``) are not (arXiv 2505.17508)."""
    k2_value = k2(d)
    return k2_value + (value - k2_value).detach()


@register_kl_estimator("k1+", summary="value of k1, gradient of k2 (straight-through, verl 'k1+')")
def k1_straight_through(d: Tensor) -> Tensor:
    """Case d = −ln 2: value 0.693147 (k1), gradient w.r.t. log π_θ 0.693147 (k2's, not k1's 1)."""
    return _straight_through_k2(k1(d), d)


@register_kl_estimator("k3+", summary="value of k3, gradient of k2 (straight-through, verl 'k3+')")
def k3_straight_through(d: Tensor) -> Tensor:
    """Case d = −ln 2: value 0.193147 (k3), gradient w.r.t. log π_θ 0.693147 (k2's, not k3's 0.5)."""
    return _straight_through_k2(k3(d), d)


KL_ESTIMATORS = KL_ESTIMATORS_REGISTRY.names()  # the built-ins; the registry also holds any registered later


def kl_estimate(logp: Tensor, ref_logp: Tensor, kind: str = "k3", clamp: float | None = 10.0) -> Tensor:
    """Per-token KL estimate ``[B, T]``; ``d`` is clamped to [−clamp, clamp] first (exp(d) cannot overflow).

    Differentiable w.r.t. ``logp``; add ``β · aggregate(k)`` to the loss. Zero masked positions of both
    inputs first (:func:`~grpokit.algorithms.ratios.zero_masked`, as ``policy_loss`` does): ``exp``'s backward
    at a masked NaN would be ``0 · NaN``.
    """
    estimator = KL_ESTIMATORS_REGISTRY.get(kind).function  # ValueError naming the registered estimators
    d = ref_logp - logp
    if clamp is not None:
        d = d.clamp(-clamp, clamp)
    return estimator(d)


def kl_reward_penalty(logp: Tensor, ref_logp: Tensor, beta: float) -> Tensor:
    """Per-token reward penalty ``β · k1 = β · (log π_θ − log π_ref)``, ``[B, T]``, detached.

    Used as ``R_t −= penalty_t`` when the KL goes into the reward instead of the loss.
    """
    return (beta * (logp - ref_logp)).detach()
