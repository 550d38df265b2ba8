"""Per-token surrogate losses (loss = −objective, we minimise).

Each returns ``(loss, clipped_low_mask, clipped_high_mask)``, all broadcast to the common shape of
``ratio`` and ``advantages`` (``[B, T]``, or ``[B, 1]`` for one sequence-level ratio and advantage).
Aggregation over tokens and sequences is :func:`grpokit.algorithms.aggregation.aggregate_loss`'s job.
"""

from __future__ import annotations

import torch
from torch import Tensor


def ppo_clip_loss(
    ratio: Tensor,
    advantages: Tensor,
    *,
    eps_low: float,
    eps_high: float,
    dual_clip_c: float | None = None,
    delta: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """PPO clipped surrogate with decoupled bounds, optional dual-clip and two-sided δ cap.

    ``L = −min(r̃·A, clip(r, 1 − ε_low, 1 + ε_high)·A)`` where ``r̃ = min(r, δ)`` when ``delta`` is given
    (TRL ``delta``, INTELLECT-2: caps the unclipped ratio before the min, so a huge ratio with A < 0 can no
    longer blow up the loss) and ``r̃ = r`` otherwise. Dual-clip (Ye et al. 2020), for A < 0 only:
    ``L = min(L, −c·A)`` with c > 1.

    Cases (ε = 0.2): r = 1.5, A = +1 → −1.2 (clipped); r = 1.5, A = −1 → 1.5; r = 0.5, A = −1 → 0.8
    (clipped); r = 0.5, A = +1 → −0.5. Clip-higher ε_high = 0.28: r = 1.5, A = +1 → −1.28.
    Dual-clip c = 3: r = 5, A = −1 → 3.

    Masks mark where a bound is active, i.e. the token passes no gradient:
    ``clipped_low = r < 1 − ε_low and A < 0``; ``clipped_high = r > 1 + ε_high and A > 0``, or A < 0 and
    the ratio is above δ or above c (the dual-clip and δ caps also act on large ratios).
    """
    if dual_clip_c is not None and dual_clip_c <= 1.0:
        raise ValueError(f"dual_clip_c must be > 1, got {dual_clip_c}")
    if delta is not None and delta <= 1.0:
        raise ValueError(f"delta must be > 1 (TRL recommends > 1 + eps_high), got {delta}")
    unclipped = ratio if delta is None else torch.clamp(ratio, max=delta)
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    loss = -torch.min(unclipped * advantages, clipped * advantages)
    negative = advantages < 0
    if dual_clip_c is not None:
        loss = torch.where(negative, torch.min(loss, -dual_clip_c * advantages), loss)

    clipped_low = (ratio < 1.0 - eps_low) & negative
    clipped_high = (ratio > 1.0 + eps_high) & (advantages > 0)
    for cap in (delta, dual_clip_c):
        if cap is not None:
            clipped_high = clipped_high | ((ratio > cap) & negative)
    return loss, clipped_low.expand_as(loss), clipped_high.expand_as(loss)


def cispo_loss(
    ratio: Tensor, logp: Tensor, advantages: Tensor, *, eps_low: float, eps_high: float
) -> tuple[Tensor, Tensor, Tensor]:
    """CISPO (MiniMax-M1, arXiv 2506.13585): ``L = −sg(clip(r, 1 − ε_low, 1 + ε_high)) · A · log π_θ``.

    The clip bounds the importance weight, not the update: every token keeps a gradient,
    ``∂L/∂log π_θ = −clip(r)·A`` (case r = 1.5, A = 1, ε_high = 0.28 → −1.28). The loss *value* is not
    comparable with PPO's (it scales with log π_θ); only its gradient matters.

    The masks mark where the weight was clipped (``r < 1 − ε_low``, ``r > 1 + ε_high``) whatever the sign
    of A, since clipping changes the weight of both; unlike PPO's they do not mean "no gradient".
    TRL's ``epsilon_high`` for ``cispo`` is the absolute cap ``1 + eps_high`` here.
    """
    weight = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high).detach()
    loss = -weight * advantages * logp
    clipped_low = (ratio < 1.0 - eps_low).expand_as(loss)
    clipped_high = (ratio > 1.0 + eps_high).expand_as(loss)
    return loss, clipped_low, clipped_high
