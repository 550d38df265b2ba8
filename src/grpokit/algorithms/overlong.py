"""DAPO's handling of over-long completions (arXiv 2503.14476, §3.4)."""

from __future__ import annotations

import torch
from torch import Tensor


def default_overlong_cache_len(max_len: int) -> int:
    """The soft-punishment window when none is configured: a fifth of L_max (DAPO: 4096 of 20480)."""
    return max(1, max_len // 5)


def soft_overlong_penalty(lengths: Tensor, *, max_len: int, cache_len: int) -> Tensor:
    """Length-aware reward term ``R_len(y)``, ``[B]`` float32, added to the task reward.

    ``R_len = 0`` if ``|y| ≤ L_max − L_c``; ``((L_max − L_c) − |y|) / L_c`` if ``L_max − L_c < |y| ≤ L_max``;
    ``−1`` beyond. Cases L_max = 20480, L_c = 4096: |y| = 16384 → 0, 18432 → −0.5, 20480 → −1, 20481 → −1.
    """
    if not 0 < cache_len <= max_len:
        raise ValueError(f"cache_len must be in (0, max_len={max_len}], got {cache_len}")
    lengths = lengths.to(torch.float32)
    start = float(max_len - cache_len)
    ramp = (start - lengths) / cache_len
    penalty = torch.where(lengths <= start, torch.zeros_like(lengths), ramp)
    return torch.where(lengths > max_len, torch.full_like(lengths, -1.0), penalty)


def overlong_filter_mask(truncated: Tensor, mask: Tensor) -> Tensor:
    """Overlong filtering: the loss mask with every token of a truncated completion set to 0, same dtype."""
    keep = ~truncated.to(torch.bool).unsqueeze(-1)
    return mask * keep.to(mask.dtype) if mask.dtype != torch.bool else mask & keep
