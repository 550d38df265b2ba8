"""Importance ratios between the policy being trained and π_old, in log space.

``logp`` and ``old_logp`` are ``[B, T]`` per-token log-probs of the sampled tokens under π_θ and π_old;
``mask[B, T]`` is 1 on the completion tokens that count. Masked positions never enter a sum or a mean.
"""

from __future__ import annotations

from torch import Tensor


def _float_mask(mask: Tensor, like: Tensor) -> Tensor:
    return mask.to(dtype=like.dtype)


def token_log_ratio(logp: Tensor, old_logp: Tensor) -> Tensor:
    """ℓ_{i,t} = log π_θ(o_{i,t}) − log π_old(o_{i,t}), ``[B, T]``; the PPO/GRPO ratio is exp(ℓ)."""
    return logp - old_logp


def sequence_ratio_product(log_ratio: Tensor, mask: Tensor) -> Tensor:
    """log Π_t r_{i,t} = Σ_t m_{i,t} ℓ_{i,t}, ``[B]``: the whole-sequence importance ratio, in log space.

    Case r = [1.1, 0.9, 1.5]: Π = 1.485.
    """
    return (log_ratio * _float_mask(mask, log_ratio)).sum(dim=-1)


def sequence_ratio_geometric_mean(log_ratio: Tensor, mask: Tensor) -> Tensor:
    """log (Π_t r_{i,t})^(1/|o_i|) = Σ_t m ℓ / Σ_t m, ``[B]``; |o_i| = valid tokens of row i (≥ 1).

    Case r = [1.1, 0.9, 1.5]: 1.485^(1/3) = 1.140886.
    """
    m = _float_mask(mask, log_ratio)
    return (log_ratio * m).sum(dim=-1) / m.sum(dim=-1).clamp(min=1.0)


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
