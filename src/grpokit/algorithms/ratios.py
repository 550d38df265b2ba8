"""Importance ratios between the policy being trained and π_old, in log space.

``logp`` and ``old_logp`` are ``[B, T]`` per-token log-probs of the sampled tokens under π_θ and π_old;
``mask[B, T]`` is 1 on the completion tokens that count. Masked positions never enter a sum or a mean:
they are replaced with 0 by ``torch.where`` (never multiplied by the mask), so an inf or NaN log-prob at a
padding position cannot reach a value or, through a ``0 · inf`` in a backward pass, a gradient.

Non-finite ratios. A ratio is ``exp`` of a log-ratio; in float32 ``exp`` overflows above 88.7, and one
token with log-ratio 95 made the loss NaN (``inf · A`` with A = 0) or inf (A < 0). :func:`importance_ratio`
clamps the log-ratio to ±``MAX_LOG_RATIO`` = ±20 first (verl's bound): ``e^20 ≈ 4.85e8`` is finite in
float16/bfloat16/float32, a token beyond the bound gets a finite loss and no gradient through its ratio,
and every ratio a clipped objective can use (ε ≪ 1, δ or dual-clip c of a few units) lies far inside it.
"""

from __future__ import annotations

import torch
from torch import Tensor

MAX_LOG_RATIO = 20.0  # |log r| bound before exp; see the module docstring


def _float_mask(mask: Tensor, like: Tensor) -> Tensor:
    return mask.to(dtype=like.dtype)


def zero_masked(values: Tensor, mask: Tensor) -> Tensor:
    """``values`` with every masked position replaced by 0 (``torch.where``: the gradient there is exactly 0).

    Apply to every log-prob *before* a difference or an ``exp``: ``exp``'s backward at a masked inf would
    be ``0 · inf = NaN`` even though the masked loss is finite. Case [−1, inf] with mask [1, 0] → [−1, 0].
    """
    return torch.where(mask.bool(), values, torch.zeros((), dtype=values.dtype, device=values.device))


def importance_ratio(log_ratio: Tensor, bound: float = MAX_LOG_RATIO) -> Tensor:
    """``r = exp(clamp(ℓ, −bound, bound))``; default bound 20 (module docstring).

    Inside the bound this is ``exp(ℓ)`` with its gradient; outside, the value is ``e^{±20}`` and the
    gradient through ℓ is 0. Case ℓ = 95 → r = e^20 = 485165195.4; ℓ = 0.5 → 1.648721.
    """
    return torch.exp(log_ratio.clamp(-bound, bound))


def token_log_ratio(logp: Tensor, old_logp: Tensor) -> Tensor:
    """ℓ_{i,t} = log π_θ(o_{i,t}) − log π_old(o_{i,t}), ``[B, T]``; the PPO/GRPO ratio is exp(ℓ)."""
    return logp - old_logp


def sequence_ratio_product(log_ratio: Tensor, mask: Tensor) -> Tensor:
    """log Π_t r_{i,t} = Σ_t m_{i,t} ℓ_{i,t}, ``[B]``: the whole-sequence importance ratio, in log space.

    Case r = [1.1, 0.9, 1.5]: Π = 1.485.
    """
    return zero_masked(log_ratio, mask).sum(dim=-1)


def sequence_ratio_geometric_mean(log_ratio: Tensor, mask: Tensor) -> Tensor:
    """log (Π_t r_{i,t})^(1/|o_i|) = Σ_t m ℓ / Σ_t m, ``[B]``; |o_i| = valid tokens of row i (≥ 1).

    Case r = [1.1, 0.9, 1.5]: 1.485^(1/3) = 1.140886.
    """
    m = _float_mask(mask, log_ratio)
    return zero_masked(log_ratio, mask).sum(dim=-1) / m.sum(dim=-1).clamp(min=1.0)


def sequence_log_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    """GSPO (arXiv 2507.18071) log s_i = (1/|o_i|) Σ_t ℓ_{i,t}, ``[B]``: one length-normalised ratio per sequence.

    Case ℓ = [0.1, −0.1, 0.3] → log s = 0.1, s = 1.105171.
    """
    return sequence_ratio_geometric_mean(token_log_ratio(logp, old_logp), mask)


def gspo_token_log_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    """GSPO-token log s_{i,t} = sg(log s_i) + log π_θ(o_{i,t}) − sg(log π_θ(o_{i,t})), ``[B, T]``.

    Its value equals the sequence log-ratio at every token; its gradient flows through each token's own
    log-prob (∂ s_{i,t} / ∂ log π_θ(o_{i,t}) = s_i), which lets every token carry its own advantage.
    """
    seq = sequence_log_ratio(logp, old_logp, mask).detach().unsqueeze(-1)
    return seq + logp - logp.detach()
