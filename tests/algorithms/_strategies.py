"""Shared helpers for the algorithms tests: seeded random tensors drawn from hypothesis integers."""

from __future__ import annotations

import torch
from hypothesis import settings

FAST = settings(max_examples=40, deadline=None, derandomize=True)


def random_batch(seed: int, batch: int, length: int, *, min_len: int = 1) -> dict[str, torch.Tensor]:
    """logp/old_logp/ref_logp/behaviour_logp [B, T] float64, right-padded mask with lengths ≥ min_len."""
    gen = torch.Generator().manual_seed(seed)
    logp = -torch.rand(batch, length, generator=gen, dtype=torch.float64) * 3 - 0.05
    lengths = torch.randint(min_len, length + 1, (batch,), generator=gen)
    mask = (torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)).long()
    noise = lambda scale: torch.randn(batch, length, generator=gen, dtype=torch.float64) * scale  # noqa: E731
    return {
        "logp": logp,
        "old_logp": logp + noise(0.3),
        "ref_logp": logp + noise(0.3),
        "behaviour_logp": logp + noise(0.5),
        "entropy": torch.rand(batch, length, generator=gen, dtype=torch.float64) * 2,
        "advantages": torch.randn(batch, generator=gen, dtype=torch.float64),
        "mask": mask,
    }
