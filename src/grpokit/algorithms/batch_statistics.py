"""What the policy loss needs from the whole optimizer mini-batch, not from one micro-batch.

Some options select or weight tokens by a statistic of the batch:

- top-entropy tokens: the threshold τ, a quantile of H over the valid tokens;
- self-normalised IS: the mean of the behaviour IS weights over the valid tokens;
- Clip-Cov and KL-Cov: the means that centre cov_t, KL-Cov's cov threshold (the k-th largest cov) and
  Clip-Cov's random-key threshold (which k of the candidates are detached).

Taken per micro-batch (or per process) they would make the update depend on ``micro_batch_size`` and on
the number of processes. So a trainer that splits a mini-batch collects, per micro-batch and without
gradient, the valid tokens' values these statistics are made of (:func:`statistic_inputs`, flat ``[N]``
tensors), concatenates them over micro-batches and processes, calls :func:`batch_statistics` once, and
passes the result to every micro-batch's :func:`~grpokit.algorithms.policy_loss.policy_loss`.
(The group and batch advantage statistics and the aggregation denominators are global already: the
advantages are computed before the split, the denominators are passed as ``num_tokens``/``num_sequences``.)

Every statistic is a threshold or a mean, so it does not depend on the order of the tokens; a token at
exactly the threshold is compared with the same float value it contributed, so it is kept in both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .covariance import (
    clip_cov_candidates,
    clip_cov_key_threshold,
    covariance_means,
    kl_cov_threshold,
    token_covariance,
)
from .entropy import linear_quantile
from .off_policy import behaviour_importance_weights
from .presets import Preset


@dataclass(frozen=True)
class BatchStatistics:
    """The mini-batch-wide statistics of :mod:`this module <grpokit.algorithms.batch_statistics>`; a field
    is None when its option is off. 0-d tensors."""

    entropy_threshold: Tensor | None = None  # top-entropy τ
    behaviour_weight_mean: Tensor | None = None  # self-normalised IS: mean IS weight over valid tokens
    covariance_means: tuple[Tensor, Tensor] | None = None  # (mean log π_θ, mean A) for cov_t
    kl_cov_threshold: Tensor | None = None  # KL-Cov: tokens with cov ≥ this are penalised
    clip_cov_key_threshold: Tensor | None = None  # Clip-Cov: candidates with key ≤ this are detached


def needs_batch_statistics(preset: Preset) -> bool:
    """Whether any option of ``preset`` selects or weights tokens by a statistic of the batch."""
    return (
        preset.top_entropy_quantile is not None
        or preset.self_normalize_is
        or preset.clip_cov is not None
        or preset.kl_cov is not None
    )


def needs_current_logprobs(preset: Preset) -> bool:
    """Whether the statistics need log π_θ (cov_t, the PPO-clip exclusion) or H at the current parameters."""
    return preset.top_entropy_quantile is not None or preset.clip_cov is not None or preset.kl_cov is not None


def statistic_inputs(
    preset: Preset,
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    behaviour_logp: Tensor | None = None,
    entropy: Tensor | None = None,
    clip_cov_keys: Tensor | None = None,
    clipped: Tensor | None = None,
) -> dict[str, Tensor]:
    """The per-valid-token values (flat ``[N]``, detached) that :func:`batch_statistics` reduces.

    ``logp[B, T]`` is log π_θ at the current parameters (only read by Clip-/KL-Cov), ``clipped[B, T]``
    the tokens the PPO clip zeroed (Clip-Cov excludes them; computed by the caller, who has the ratio),
    ``clip_cov_keys[B, T]`` Clip-Cov's uniform keys. Concatenate the dicts of several batches key by key.
    """
    valid = mask.bool()
    out: dict[str, Tensor] = {}
    if preset.top_entropy_quantile is not None:
        if entropy is None:
            raise ValueError(f"preset {preset.name!r} sets top_entropy_quantile; pass entropy=")
        out["entropy"] = entropy.detach()[valid]
    if preset.self_normalize_is and behaviour_logp is not None:
        weights, _ = behaviour_importance_weights(
            old_logp,
            behaviour_logp,
            mask,
            method=preset.behaviour_correction,
            level=preset.behaviour_level,
            cap=preset.behaviour_cap,
            lower_cap=preset.behaviour_lower_cap,
        )
        out["behaviour_weight"] = weights[valid]
    if preset.clip_cov is not None or preset.kl_cov is not None:
        adv = advantages.detach().to(logp.dtype)
        adv = (adv.unsqueeze(-1) if adv.dim() == 1 else adv).expand_as(logp)
        out["logp"] = logp.detach()[valid]
        out["advantage"] = adv[valid]
    if preset.clip_cov is not None:
        if clip_cov_keys is None:
            raise ValueError(f"preset {preset.name!r} sets clip_cov; pass clip_cov_keys=")
        out["clip_cov_key"] = clip_cov_keys.double()[valid]
        out["clipped"] = (torch.zeros_like(valid) if clipped is None else clipped.bool())[valid]
    return out


def concat_statistic_inputs(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """The :func:`statistic_inputs` of several batches (micro-batches, processes) as one batch's."""
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]} if parts else {}


def batch_statistics(preset: Preset, inputs: dict[str, Tensor]) -> BatchStatistics:
    """Reduce the concatenated :func:`statistic_inputs` of the whole mini-batch to :class:`BatchStatistics`.

    - τ = the ``top_entropy_quantile``-quantile of H (linear interpolation; +inf with no valid token).
    - SNIS mean = Σ w / N over the valid tokens (float64; 1 with none).
    - cov means, then KL-Cov's threshold = the k-th largest cov, ``k = max(1, ⌊top_fraction·N⌋)``, and
      Clip-Cov's key threshold over the band candidates not clipped, ``k = max(1, ⌊clip_ratio·N⌋)``.
    """
    stats: dict[str, object] = {}
    if preset.top_entropy_quantile is not None:
        values = inputs["entropy"].float()
        stats["entropy_threshold"] = (
            linear_quantile(values, preset.top_entropy_quantile) if values.numel() else torch.tensor(math.inf)
        )
    if "behaviour_weight" in inputs:
        weights = inputs["behaviour_weight"].double()
        stats["behaviour_weight_mean"] = weights.mean() if weights.numel() else torch.tensor(1.0, dtype=torch.float64)
    if preset.clip_cov is not None or preset.kl_cov is not None:
        logp = inputs["logp"].unsqueeze(0)
        adv = inputs["advantage"].unsqueeze(0)
        ones = torch.ones_like(logp, dtype=torch.bool)
        means = covariance_means(logp, adv, ones)
        stats["covariance_means"] = means
        cov = token_covariance(logp, adv, ones, means=means)
        if preset.kl_cov is not None:
            stats["kl_cov_threshold"] = kl_cov_threshold(cov, ones, preset.kl_cov.top_fraction)
        if preset.clip_cov is not None:
            cfg = preset.clip_cov
            candidates = clip_cov_candidates(
                cov, ones, cov_low=cfg.cov_low, cov_high=cfg.cov_high, exclude=inputs["clipped"].unsqueeze(0)
            )
            stats["clip_cov_key_threshold"] = clip_cov_key_threshold(
                inputs["clip_cov_key"].unsqueeze(0), candidates, logp.numel(), cfg.clip_ratio
            )
    return BatchStatistics(**stats)
