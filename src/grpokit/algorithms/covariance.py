"""Clip-Cov and KL-Cov ("The Entropy Mechanism of RL for Reasoning LMs", arXiv 2505.22617).

Entropy falls fastest through tokens whose log-prob and advantage move together. Per valid token:
``cov_t = (log π_θ(t) − mean log π_θ) · (A_t − mean A)``, both means over this batch's valid tokens
(detached; as in the paper's verl code the statistics are those of the local micro-batch).
Clip-Cov detaches the gradient of a few random tokens with cov in a band; KL-Cov adds a |log-ratio|
penalty to the tokens with the largest cov.
"""

from __future__ import annotations

import torch
from torch import Tensor


def token_covariance(logp: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """``cov[B, T]`` as in the module docstring, detached, 0 on masked tokens; ``advantages`` ``[B]``/``[B, T]``."""
    valid = mask.bool()
    logp = logp.detach()
    adv = advantages.detach().to(logp.dtype)
    adv = (adv.unsqueeze(-1) if adv.dim() == 1 else adv).expand_as(logp)
    n = valid.sum().clamp(min=1)
    centred_logp = logp - torch.where(valid, logp, 0.0).sum() / n
    centred_adv = adv - torch.where(valid, adv, 0.0).sum() / n
    return torch.where(valid, centred_logp * centred_adv, 0.0)


def clip_cov_mask(
    logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_ratio: float = 2e-4,
    cov_low: float = 1.0,
    cov_high: float = 5.0,
    generator: torch.Generator | None = None,
    exclude: Tensor | None = None,
) -> Tensor:
    """Clip-Cov: bool ``[B, T]`` of the tokens whose gradient is to be detached.

    Candidates are valid tokens with ``cov_low < cov_t < cov_high`` (absolute covariance values, strict
    bounds, paper and verl defaults 1 and 5) that are not in ``exclude`` (verl excludes tokens the PPO
    clip already zeroed). ``max(1, ⌊clip_ratio · N_valid⌋)`` of them are picked uniformly at random
    (``N_valid`` counts every valid token, not only the candidates; paper r = 2e-4), or all candidates if
    fewer. ``generator`` (a CPU generator) makes the draw reproducible.
    """
    valid = mask.bool()
    cov = token_covariance(logp, advantages, mask)
    candidates = valid & (cov > cov_low) & (cov < cov_high)
    if exclude is not None:
        candidates = candidates & ~exclude.bool()
    selected = torch.zeros_like(valid)
    candidate_idx = candidates.reshape(-1).nonzero().squeeze(-1)
    if candidate_idx.numel() == 0:
        return selected
    num_clip = max(int(clip_ratio * int(valid.sum())), 1)
    order = torch.randperm(candidate_idx.numel(), generator=generator, device="cpu").to(candidate_idx.device)
    selected.view(-1)[candidate_idx[order[:num_clip]]] = True
    return selected


def kl_cov_penalty(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    top_fraction: float = 2e-3,
    coef: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """KL-Cov: ``(penalty[B, T], selected[B, T] bool)``, ``penalty = coef · |log π_θ − log π_old|`` on the
    ``max(1, ⌊top_fraction · N_valid⌋)`` valid tokens with the largest cov, 0 elsewhere.

    The penalty carries a gradient through ``logp``; add it to the per-token loss. Paper: k = 2e-3
    (2e-4 for the 32B model), coef 1.
    """
    valid = mask.bool()
    selected = torch.zeros_like(valid)
    num_valid = int(valid.sum())
    if num_valid > 0:
        cov = torch.where(valid, token_covariance(logp, advantages, mask), float("-inf"))
        k = max(int(num_valid * top_fraction), 1)
        selected.view(-1)[torch.topk(cov.reshape(-1), k).indices] = True
    penalty = torch.where(selected, coef * (logp - old_logp).abs(), torch.zeros_like(logp))
    return penalty, selected
