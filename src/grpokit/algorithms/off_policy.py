"""Corrections for sampling with a behaviour policy μ ≠ π_old (rollout engine numerics, async pipelines).

Behaviour ratio per token ``ρ_t = π_old(t) / μ(t)``, ``log ρ_t = old_logp − behaviour_logp`` (a NaN, e.g. a
token the engine could not score, counts as log ρ = 0). The weights multiply the per-token loss and carry
no gradient ("Your efficient RL framework secretly brings you off-policy RL"; TRL's
``vllm_importance_sampling_*``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .ratios import MAX_LOG_RATIO

BEHAVIOUR_METHODS = ("none", "tis", "mis")
BEHAVIOUR_LEVELS = ("token", "sequence", "geometric")

# log of the per-token or per-sequence weight before truncation, broadcast to [B, T]
_LEVELS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "token": lambda log_rho, m: log_rho,
    "sequence": lambda log_rho, m: (log_rho * m).sum(-1, keepdim=True).expand_as(log_rho),
    "geometric": lambda log_rho, m: (
        (log_rho * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1)
    ).expand_as(log_rho),
}


def _masked_mean(x: Tensor, valid: Tensor) -> Tensor:
    return torch.where(valid, x, 0.0).sum() / valid.sum().clamp(min=1)


def behaviour_importance_weights(
    old_logp: Tensor,
    behaviour_logp: Tensor,
    mask: Tensor,
    *,
    method: str = "tis",
    level: str = "token",
    cap: float = 2.0,
    lower_cap: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``(weights[B, T], metrics)``; weights are detached and 0 on masked tokens.

    ``level``: ``"token"`` uses ρ_t; ``"sequence"`` ρ_i = Π_t ρ_t; ``"geometric"`` (Π_t ρ_t)^(1/|o_i|), GSPO's
    length normalisation; a sequence weight is shared by all tokens of the sequence.
    ``method``: ``"tis"`` w = clamp(ρ, lower_cap, cap) (truncated IS; ρ = 3, C = 2 → 2); ``"mis"`` w = ρ if
    lower_cap ≤ ρ ≤ cap else 0 (masked IS: the token or sequence is dropped); ``"none"`` w = 1.

    Metrics (0-d tensors, over valid tokens): ``mismatch_abs_logratio_mean`` / ``_max`` (|log ρ_t|),
    ``frac_truncated`` (tis) or ``frac_masked`` (mis): fraction of valid tokens whose weight was changed,
    ``kl_mu_old_k3``: the k3 estimate of KL(μ ‖ π_old) from μ's samples, mean of ρ − 1 − log ρ, and
    ``is_weight_mean`` / ``is_weight_max`` / ``is_ess`` of the applied weights w (for "none": of ρ itself,
    what a correction would apply), with the effective sample size as a fraction of the n valid tokens,
    ESS = (Σ w)² / (n · Σ w²) ∈ (0, 1] (Kong, 1992): 1 when every weight is equal; w = [1, 1, 1, 3] → 0.75.
    """
    if method not in BEHAVIOUR_METHODS:
        raise ValueError(f"method must be one of {BEHAVIOUR_METHODS}, got {method!r}")
    if level not in _LEVELS:
        raise ValueError(f"level must be one of {BEHAVIOUR_LEVELS}, got {level!r}")
    valid = mask.bool()
    m = valid.to(old_logp.dtype)
    # NaN (unscored) counts as log ρ = 0, ±inf as ± the largest float; the weights see log ρ clamped to
    # ±MAX_LOG_RATIO (so an infinite one is truncated or masked like any large one), the metrics log ρ itself
    log_rho = torch.nan_to_num((old_logp - behaviour_logp).detach(), nan=0.0)
    log_rho = torch.where(valid, log_rho, 0.0)

    log_w = _LEVELS[level](log_rho.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO), m)
    log_high = math.log(cap)
    log_low = -math.inf if lower_cap is None else math.log(lower_cap)
    outside = (log_w > log_high) | (log_w < log_low)
    if method == "tis":
        weights = torch.exp(log_w.clamp(min=log_low, max=log_high))
    elif method == "mis":
        weights = torch.where(outside, 0.0, torch.exp(log_w.clamp(max=log_high)))
    else:
        weights = torch.ones_like(log_w)
    weights = torch.where(valid, weights, 0.0)

    abs_log_rho = log_rho.abs()
    metrics = {
        "mismatch_abs_logratio_mean": _masked_mean(abs_log_rho, valid),
        "mismatch_abs_logratio_max": abs_log_rho.max() if abs_log_rho.numel() else abs_log_rho.new_zeros(()),
        "kl_mu_old_k3": _masked_mean(torch.exp(log_rho.clamp(max=MAX_LOG_RATIO)) - 1.0 - log_rho, valid),
    }
    if method != "none":
        key = "frac_truncated" if method == "tis" else "frac_masked"
        metrics[key] = _masked_mean(outside.to(m.dtype), valid)
    metrics.update(importance_weight_statistics(weights if method != "none" else torch.exp(log_w), valid))
    return weights, metrics


def importance_weight_statistics(weights: Tensor, valid: Tensor) -> dict[str, Tensor]:
    """``is_weight_mean``, ``is_weight_max`` and ``is_ess`` = (Σ w)² / (n · Σ w²) over the valid entries
    (0-d tensors; 1 for ESS when nothing is valid or every weight is 0)."""
    w = torch.where(valid, weights, 0.0)
    total, squares = w.sum(), (w * w).sum()
    count = valid.sum().clamp(min=1)
    ess = torch.where(squares > 0, total * total / (count * squares).clamp(min=torch.finfo(w.dtype).tiny),
                      torch.ones_like(total))
    return {"is_weight_mean": total / count,
            "is_weight_max": w.max() if w.numel() else w.new_zeros(()),
            "is_ess": ess}


def self_normalize_weights(
    weights: Tensor,
    mask: Tensor,
    *,
    global_sum: float | Tensor | None = None,
    global_count: float | Tensor | None = None,
) -> Tensor:
    """Self-normalised (weighted) IS: ``w / mean(w)``; biased but of bounded variance.

    ``weights[B, T]`` are averaged over valid tokens, ``weights[B]`` over valid sequences (``mask[B]``, or
    ``mask[B, T]`` where a row with any valid token counts). Pass ``global_sum``/``global_count`` (the sum
    of the weights and the number of valid tokens or sequences over the whole optimizer batch) so every
    micro-batch divides by the same mean. Case w = [1, 2, 3] → [0.5, 1, 1.5].
    """
    valid = mask.bool()
    if weights.dim() == 1 and valid.dim() == 2:
        valid = valid.any(dim=-1)
    if global_sum is None:
        global_sum = torch.where(valid, weights, 0.0).sum()
    if global_count is None:
        global_count = valid.sum()
    total = torch.as_tensor(global_sum, dtype=weights.dtype, device=weights.device)
    count = torch.as_tensor(global_count, dtype=weights.dtype, device=weights.device).clamp(min=1)
    mean = total / count
    normalized = weights / mean.clamp(min=torch.finfo(weights.dtype).tiny)
    return torch.where(valid, normalized, 0.0)
