"""PPO's learned-critic maths: per-token rewards with a KL penalty, GAE, the clipped value loss.

The RLHF form of PPO (InstructGPT, 2203.02155; "The N Implementation Details of RLHF with PPO"):
the reward model's score arrives on the last generated token, every token pays a KL penalty to the
reference, a critic V(s_t) predicts the return from each token on, and GAE turns the per-token TD
errors into advantages for the core's clipped surrogate. GRPO (2402.03300) drops the critic and uses
the group's reward statistics instead — this file is what it drops.

Tensors are ``[B, T]`` over completion tokens with ``mask[B, T]`` (1 on tokens the loss may touch);
a masked position inside a completion (a tool's output in an episode) is skipped by the recursion:
it neither earns reward nor breaks the chain between the policy's tokens around it.

Where grpokit deviates from the papers: none in the formulas; the value loss is aggregated like the
policy loss (the preset's mode), where OpenAI's baselines take a plain token mean.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .registry import register_advantage


def token_rewards_with_kl(
    sequence_rewards: Tensor, mask: Tensor, old_logp: Tensor, ref_logp: Tensor | None, kl_coef: float
) -> Tensor:
    """Per-token rewards ``r[B, T]``: ``r_t = −β·(log π_old(y_t) − log π_ref(y_t))`` on every valid token,
    plus the sequence reward R on the last valid token (0 on masked positions).

    The penalty is k1 of the sampling policy's own tokens (its expectation is KL(π_old ‖ π_ref));
    ``ref_logp`` None or β = 0 gives the sequence reward alone. Case β = 0.1, log π_old − log π_ref =
    [0.5, −0.2, 1.0], R = 1 → r = [−0.05, 0.02, 1 − 0.1] = [−0.05, 0.02, 0.9].
    """
    m = mask.to(old_logp.dtype)
    rewards = torch.zeros_like(old_logp)
    if ref_logp is not None and kl_coef != 0.0:
        rewards = torch.where(mask.bool(), -kl_coef * (old_logp - ref_logp), rewards)
    # last valid token of each row: the largest index t with m_t = 1 (rows without one get nothing)
    positions = torch.arange(m.shape[-1], device=m.device).expand_as(m)
    last = torch.where(mask.bool(), positions, -1).max(dim=-1).values
    has_token = last >= 0
    rows = torch.arange(m.shape[0], device=m.device)[has_token]
    rewards[rows, last[has_token]] += sequence_rewards.to(rewards.dtype)[has_token]
    return rewards.detach()


def gae_advantages(
    rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation (Schulman et al., 1506.02438); returns (advantages, returns) ``[B, T]``.

    Over the valid tokens t of a row (masked positions skipped, see the module docstring), with
    ``V = 0`` after the last one (the episode ends there):

        δ_t = r_t + γ·V_{t'} − V_t          t' = the next valid token
        A_t = δ_t + γλ·A_{t'}               returns_t = A_t + V_t  (the critic's regression target)

    Both are 0 on masked positions and detached. Case γ = 1, λ = 0.5, r = [0, 0, 1], V = [0.5, 0.4, 0.6]:
    δ = [−0.1, 0.2, 0.4], A = [0.1, 0.4, 0.4], returns = [0.6, 0.8, 1.0].
    """
    rewards, values = rewards.detach().float(), values.detach().float()
    valid = mask.bool()
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    advantages = torch.zeros_like(values)
    for t in range(values.shape[-1] - 1, -1, -1):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        here = valid[:, t]
        advantages[:, t] = torch.where(here, advantage, 0.0)
        # a masked position passes the next valid token's value and advantage through unchanged
        next_value = torch.where(here, values[:, t], next_value)
        next_advantage = torch.where(here, advantage, next_advantage)
    returns = torch.where(valid, advantages + values, 0.0)
    return advantages, returns


@register_advantage("gae", summary="PPO: GAE(γ, λ) over a learned critic's values, per token (trainer: ppo)")
def gae(token_rewards: Tensor, values: Tensor, mask: Tensor, *, gae_gamma: float, gae_lambda: float) -> Tensor:
    """The PPO trainer's advantage estimator: :func:`gae_advantages` whitened over the batch (:func:`whiten`),
    ``[B, T]``. It reads a critic's values, so only ``grpokit.trainers.ppo`` can call it."""
    advantages, _ = gae_advantages(token_rewards, values, mask, gamma=gae_gamma, lam=gae_lambda)
    return whiten(advantages, mask)


def whiten(values: Tensor, mask: Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x − mean)/std over the valid tokens of the whole batch (PPO's advantage normalisation); 0 where masked.

    std is the population one (÷ n). Case x = [1, 2, 3] → [−1.2247, 0, 1.2247]. ``shift_mean`` False
    only scales (keeps the sign of every advantage).
    """
    valid = mask.bool()
    count = valid.sum().clamp(min=1)
    mean = torch.where(valid, values, 0.0).sum() / count
    var = torch.where(valid, (values - mean).square(), 0.0).sum() / count
    out = (values - mean) if shift_mean else values
    return torch.where(valid, out * torch.rsqrt(var + eps), 0.0)


def clipped_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, *, clip: float | None
) -> tuple[Tensor, Tensor]:
    """PPO's value loss per token and which tokens the clip chose; ``[B, T]`` each (aggregate with a mask).

        V^clip = V_old + clamp(V − V_old, −c, c)
        L_t    = ½·max((V − G)², (V^clip − G)²)          G = the GAE return

    The max makes the clip pessimistic: a value that moved more than c from the one used for GAE
    cannot lower the loss by moving further (2005.12729 §3 finds it rarely helps; it is on by default
    in OpenAI's and TRL's PPO, so here too). ``clip`` None: plain ½(V − G)². Case V_old = 0.5, G = 1,
    c = 0.2: V = 0.9 → V^clip = 0.7, L = ½·max(0.01, 0.09) = 0.045 (clipped); V = 0.6 → L = 0.08.
    """
    unclipped = (values - returns).square()
    if clip is None:
        return 0.5 * unclipped, torch.zeros_like(unclipped, dtype=torch.bool)
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    clipped = (clipped_values - returns).square()
    return 0.5 * torch.maximum(unclipped, clipped), clipped > unclipped
