"""Per-token surrogate losses (loss = −objective, we minimise).

Each returns ``(loss, clipped_low_mask, clipped_high_mask)``, all broadcast to the common shape of
``ratio`` and ``advantages`` (``[B, T]``, or ``[B, 1]`` for one sequence-level ratio and advantage).
Aggregation over tokens and sequences is :func:`grpokit.algorithms.aggregation.aggregate_loss`'s job.

Each is registered (:mod:`grpokit.algorithms.registry`) under the name ``Preset.surrogate`` uses; its
keyword-only parameters are the Preset fields it reads.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .ratios import importance_ratio
from .registry import register_surrogate


@register_surrogate("ppo_clip", summary="PPO clip: −min(r·A, clip(r, 1−ε_low, 1+ε_high)·A), optional dual-clip/δ")
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


@register_surrogate("cispo", summary="CISPO: −sg(clip(r))·A·log π, every token keeps its gradient")
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


@register_surrogate("sapo", summary="SAPO: −(4/τ)·σ(τ(r − 1))·A, a soft gate instead of the clip (τ_pos, τ_neg)")
def sapo_loss(ratio: Tensor, advantages: Tensor, *, tau_pos: float, tau_neg: float) -> tuple[Tensor, Tensor, Tensor]:
    """SAPO (Soft Adaptive Policy Optimization, Qwen, arXiv 2511.20347; verl ``loss_mode=sapo``).

    ``L = −f(r)·A`` with the soft gate ``f(r) = (4/τ)·σ(τ·(r − 1))``, ``τ = τ_pos`` where A > 0 and ``τ_neg``
    otherwise (paper/verl defaults 1.0 and 1.05: negative tokens are damped faster, since raising the
    probability of many unsampled tokens is the less stable direction). The gradient weight
    ``∂f/∂r = 4·σ·(1 − σ)`` is 1 at r = 1 (on-policy SAPO is the plain policy gradient) and decays smoothly as
    r leaves 1, where PPO's clip cuts it to 0 at a hard edge.

    Cases: r = 1.5, A = 1, τ = 1 → L = −4·σ(0.5) = −2.489837, ∂L/∂r = −4·σ(0.5)·σ(−0.5) = −0.940014;
    r = 0.5, A = −1, τ = 1.05 → L = (4/1.05)·σ(−0.525) = 1.415938.

    Nothing is clipped: both masks are all False (a soft gate never stops a token's gradient).
    """
    if tau_pos <= 0 or tau_neg <= 0:
        raise ValueError(f"SAPO temperatures must be > 0, got tau_pos={tau_pos}, tau_neg={tau_neg}")
    tau = torch.where(advantages > 0, tau_pos, tau_neg).to(ratio.dtype)
    gate = torch.sigmoid(tau * (ratio - 1.0)) * (4.0 / tau)
    loss = -gate * advantages
    none = torch.zeros_like(loss, dtype=torch.bool)
    return loss, none, none


@register_surrogate(
    "gmpo",
    summary="GMPO: −A·(Π_t clip(r_t))^(1/|o|), each token's log-ratio clipped to [−ε_low, ε_high]",
    requires={"ratio_level": "token"},
)
def gmpo_loss(
    token_log_ratio: Tensor, advantages: Tensor, mask: Tensor, *, eps_low: float, eps_high: float
) -> tuple[Tensor, Tensor, Tensor]:
    """GMPO (Geometric-Mean Policy Optimization, arXiv 2507.20673; verl ``loss_mode=geo_mean``).

    The sequence objective is the geometric mean of the token ratios, each clipped PPO-style in log space:
    ``ℓ̃_t = sgn(A)·min(sgn(A)·ℓ_t, sgn(A)·clip(ℓ_t, −ε_low, ε_high))`` (for A > 0 the smaller of ℓ and its
    clip, for A < 0 the larger), ``L_i = −Ā_i·exp((1/|o_i|) Σ_t m·ℓ̃_t)`` with ``Ā_i`` the mean advantage of
    the sequence's valid tokens. Returns ``L[B, 1]`` (one value per sequence; aggregate with
    ``seq_mean_token_mean`` for the paper's mean over sequences). The paper clips at ε = 0.4 on both sides
    (ratios within (e^−0.4, e^0.4)); ``eps_low``/``eps_high`` are those log-space bounds here, not 1 ± ε.

    Gradient: ``∂L_i/∂log π_θ(o_t) = −Ā_i·exp(mean ℓ̃)/|o_i|`` for an unclipped token, 0 for a clipped one.
    Case ℓ = [0.1, 0.5, −0.2], ε = 0.4, A = +1: ℓ̃ = [0.1, 0.4, −0.2], L = −e^0.1 = −1.105171, gradients
    [−0.368390, 0, −0.368390]; A = −1: ℓ̃ = ℓ (0.5 is above the clip, so the larger value stays),
    L = e^(0.4/3) = 1.142631. The mean log-ratio goes through ``importance_ratio`` (clamped at ±20: for
    A < 0 the clip has no upper bound).

    ``clipped_low = ℓ < −ε_low and A < 0``, ``clipped_high = ℓ > ε_high and A > 0`` (those tokens pass no
    gradient), ``[B, T]``. Deviation from verl: the length denominator is ``max(|o_i|, 1)``, not ``|o_i| + 1e-8``.
    """
    valid = mask.bool()
    adv = advantages.to(token_log_ratio.dtype).expand_as(token_log_ratio)
    sign = torch.sign(adv)
    clamped = token_log_ratio.clamp(-eps_low, eps_high)
    chosen = sign * torch.min(sign * token_log_ratio, sign * clamped)
    lengths = valid.sum(dim=-1).clamp(min=1).to(token_log_ratio.dtype)
    mean_log_ratio = torch.where(valid, chosen, 0.0).sum(dim=-1) / lengths
    sequence_advantage = torch.where(valid, adv, 0.0).sum(dim=-1) / lengths
    loss = -(sequence_advantage * importance_ratio(mean_log_ratio)).unsqueeze(-1)
    clipped_low = (token_log_ratio < -eps_low) & (adv < 0)
    clipped_high = (token_log_ratio > eps_high) & (adv > 0)
    return loss, clipped_low, clipped_high


@register_surrogate("gpg", summary="GPG: −A·log π, plain policy gradient (no ratio, no clip)")
def gpg_loss(logp: Tensor, advantages: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """GPG (Group Policy Gradient, arXiv 2504.02546; verl ``loss_mode=gpg``): ``L = −A·log π_θ`` per token.

    REINFORCE with group advantages: ``∂L/∂log π_θ = −A`` whatever π_old was, so it is the policy gradient
    only on-policy (one update per rollout, ``training.num_iterations = 1`` and one mini-batch); with
    several updates nothing bounds the step. Case log π = −0.5, A = 2 → L = 1, gradient −2.

    Both masks are all False (no clip).
    """
    loss = -advantages * logp
    none = torch.zeros_like(loss, dtype=torch.bool)
    return loss, none, none
