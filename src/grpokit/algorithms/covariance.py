"""Clip-Cov and KL-Cov ("The Entropy Mechanism of RL for Reasoning LMs", arXiv 2505.22617).

Entropy falls fastest through tokens whose log-prob and advantage move together. Per valid token:
``cov_t = (log π_θ(t) − mean log π_θ) · (A_t − mean A)``, both means over the valid tokens of the optimizer
mini-batch (detached). Clip-Cov detaches the gradient of a few random tokens with cov in a band; KL-Cov adds
a |log-ratio| penalty to the tokens with the largest cov.

Every selection is a threshold on a per-token value, so it does not depend on how the batch is split:
the means, KL-Cov's cov threshold and Clip-Cov's random-key threshold are computed once over the whole
mini-batch (all micro-batches, all processes; :mod:`grpokit.algorithms.batch_statistics`) and passed in.
Left ``None``, each is computed from the batch given, which is the whole batch when it is not split.
(The paper's verl code takes them per micro-batch, so its selection changes with the micro-batch size.)
"""

from __future__ import annotations

import torch
from torch import Tensor


def _expand_advantages(advantages: Tensor, like: Tensor) -> Tensor:
    adv = advantages.detach().to(like.dtype)
    return (adv.unsqueeze(-1) if adv.dim() == 1 else adv).expand_as(like)


def covariance_means(logp: Tensor, advantages: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(mean log π_θ, mean A)`` over the valid tokens (0 with none), detached, in ``logp``'s dtype."""
    valid = mask.bool()
    logp = logp.detach()
    n = valid.sum().clamp(min=1)
    adv = _expand_advantages(advantages, logp)
    return torch.where(valid, logp, 0.0).sum() / n, torch.where(valid, adv, 0.0).sum() / n


def token_covariance(
    logp: Tensor, advantages: Tensor, mask: Tensor, *, means: tuple[Tensor, Tensor] | None = None
) -> Tensor:
    """``cov[B, T]`` as in the module docstring, detached, 0 on masked tokens; ``advantages`` ``[B]``/``[B, T]``.

    ``means`` = (mean log π_θ, mean A) of the whole batch (default: :func:`covariance_means` of this one).
    """
    valid = mask.bool()
    logp = logp.detach()
    logp_mean, adv_mean = covariance_means(logp, advantages, mask) if means is None else means
    adv = _expand_advantages(advantages, logp)
    centred_logp = logp - torch.as_tensor(logp_mean, dtype=logp.dtype, device=logp.device)
    centred_adv = adv - torch.as_tensor(adv_mean, dtype=logp.dtype, device=logp.device)
    return torch.where(valid, centred_logp * centred_adv, 0.0)


def clip_cov_candidates(
    cov: Tensor, mask: Tensor, *, cov_low: float, cov_high: float, exclude: Tensor | None = None
) -> Tensor:
    """Valid tokens with ``cov_low < cov < cov_high`` that are not in ``exclude`` (bool, same shape)."""
    candidates = mask.bool() & (cov > cov_low) & (cov < cov_high)
    return candidates if exclude is None else candidates & ~exclude.bool()


def clip_cov_key_threshold(keys: Tensor, candidates: Tensor, num_valid: int, clip_ratio: float) -> Tensor:
    """The largest key Clip-Cov keeps: the ``max(1, ⌊clip_ratio · num_valid⌋)``-th smallest key among the
    candidates (+inf when there are fewer candidates: all are taken). Keys are i.i.d. uniform, so the
    candidates with the k smallest keys are a uniformly random k-subset."""
    candidate_keys = keys[candidates.bool()].double()
    num_clip = max(int(clip_ratio * num_valid), 1)
    if candidate_keys.numel() <= num_clip:
        return torch.tensor(float("inf"), dtype=torch.float64)
    return torch.kthvalue(candidate_keys.cpu(), num_clip).values


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
    keys: Tensor | None = None,
    means: tuple[Tensor, Tensor] | None = None,
    key_threshold: Tensor | float | None = None,
) -> Tensor:
    """Clip-Cov: bool ``[B, T]`` of the tokens whose gradient is to be detached.

    Candidates are valid tokens with ``cov_low < cov_t < cov_high`` (absolute covariance values, strict
    bounds, paper and verl defaults 1 and 5) that are not in ``exclude`` (verl excludes tokens the PPO
    clip already zeroed). ``max(1, ⌊clip_ratio · N_valid⌋)`` of them are picked uniformly at random
    (``N_valid`` counts every valid token, not only the candidates; paper r = 2e-4), or all candidates if
    fewer: the candidates whose ``keys[B, T]`` (uniform in [0, 1); default drawn from ``generator``, a CPU
    generator) are ≤ ``key_threshold`` (default :func:`clip_cov_key_threshold` over this batch).
    ``means``/``key_threshold`` of the whole mini-batch, with per-token keys, make the selection
    independent of micro-batching.
    """
    valid = mask.bool()
    cov = token_covariance(logp, advantages, mask, means=means)
    candidates = clip_cov_candidates(cov, mask, cov_low=cov_low, cov_high=cov_high, exclude=exclude)
    if keys is None:
        keys = torch.rand(valid.shape, generator=generator, dtype=torch.float64).to(valid.device)
    if key_threshold is None:
        key_threshold = clip_cov_key_threshold(keys, candidates, int(valid.sum()), clip_ratio)
    threshold = torch.as_tensor(key_threshold, dtype=torch.float64, device=keys.device)
    return candidates & (keys.double() <= threshold)


def kl_cov_threshold(cov: Tensor, mask: Tensor, top_fraction: float) -> Tensor:
    """The k-th largest cov over the valid tokens, ``k = max(1, ⌊top_fraction · N_valid⌋)`` (+inf with none)."""
    values = cov[mask.bool()]
    if values.numel() == 0:
        return torch.tensor(float("inf"), dtype=cov.dtype)
    k = max(int(values.numel() * top_fraction), 1)
    return torch.topk(values, k).values[-1]


def kl_cov_penalty(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    top_fraction: float = 2e-3,
    coef: float = 1.0,
    means: tuple[Tensor, Tensor] | None = None,
    threshold: Tensor | float | None = None,
) -> tuple[Tensor, Tensor]:
    """KL-Cov: ``(penalty[B, T], selected[B, T] bool)``, ``penalty = coef · |log π_θ − log π_old|`` on the
    valid tokens with ``cov ≥ threshold``, 0 elsewhere; ``threshold`` defaults to :func:`kl_cov_threshold`
    of this batch, i.e. the top ``max(1, ⌊top_fraction · N_valid⌋)`` tokens by cov (more on exact ties).

    The penalty carries a gradient through ``logp``; add it to the per-token loss. Paper: k = 2e-3
    (2e-4 for the 32B model), coef 1.
    """
    valid = mask.bool()
    cov = token_covariance(logp, advantages, mask, means=means)
    if threshold is None:
        threshold = kl_cov_threshold(cov, mask, top_fraction)
    selected = valid & (cov >= torch.as_tensor(threshold, dtype=cov.dtype, device=cov.device))
    penalty = torch.where(selected, coef * (logp - old_logp).abs(), torch.zeros_like(logp))
    return penalty, selected
