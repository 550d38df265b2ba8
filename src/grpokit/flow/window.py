"""The SDE window (MixGRPO, Flow-GRPO-Fast): which denoising steps are stochastic and trained.

Flow-GRPO samples and trains every denoising step with the SDE. MixGRPO (Li et al., arXiv 2507.21802)
observed that most of the learning signal sits in a few steps: it samples with the SDE only inside a
window of ``w`` consecutive steps, runs the deterministic ODE everywhere else, trains only the window's
steps (the ODE steps have no log-probability), and slides the window from the noisiest steps towards the
clean end as training goes on (by ``stride`` steps every ``shift_every`` training steps). Flow-GRPO-Fast
(Flow-GRPO's repository) is a window of one or two SDE steps placed at random among the early steps on
every training step. Both save the backward passes of the steps outside the window — the bulk of a
training step's time — while the rollout still costs one forward pass per step.

The window is contiguous: ``[start, stop)`` in step indices (0 = the step from pure noise).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

WINDOW_PLACEMENTS = ("slide", "random")


def window_span(num_steps: int, range_fraction: float) -> int:
    """How many of the ``num_steps`` steps (from the noisiest) the window may cover: ``⌈range·S⌉``, ≥ 1."""
    return max(1, min(num_steps, math.ceil(range_fraction * num_steps - 1e-9)))


def sde_window(
    num_steps: int,
    size: int | None,
    *,
    placement: str = "slide",
    training_step: int = 1,
    shift_every: int = 0,
    stride: int = 1,
    range_fraction: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[int, int]:
    """The SDE window ``(start, stop)`` of one training step (``training_step`` is 1-based).

    ``size=None`` (or ≥ the span): every step in the span, i.e. Flow-GRPO when ``range_fraction = 1``. The span
    is the first ``⌈range_fraction·S⌉`` steps. ``"slide"`` (MixGRPO): ``start = min(⌊(n − 1)/τ⌋·stride,
    span − w)`` for training step n and ``τ = shift_every`` (0: the window stays at the noisiest steps).
    ``"random"`` (Flow-GRPO-Fast): ``start`` uniform in ``[0, span − w]``, drawn from ``generator``.
    Cases: S = 10, w = 3, τ = 25, stride 1: steps 1–25 → (0, 3), 26–50 → (1, 4), n = 1000 → (7, 10);
    S = 10, w = 2, range 0.5: "random" starts lie in {0, 1, 2, 3}.
    """
    if placement not in WINDOW_PLACEMENTS:
        raise ValueError(f"placement must be one of {WINDOW_PLACEMENTS}, got {placement!r}")
    if size is not None and size < 1:
        raise ValueError(f"window size must be >= 1 or None, got {size}")
    if training_step < 1:
        raise ValueError(f"training_step is 1-based, got {training_step}")
    span = window_span(num_steps, range_fraction)
    if size is None or size >= span:
        return 0, span
    last_start = span - size
    if placement == "slide":
        moves = (training_step - 1) // shift_every if shift_every > 0 else 0
        start = min(moves * stride, last_start)
    else:
        start = int(torch.randint(0, last_start + 1, (1,), generator=generator))
    return start, start + size


def window_mask(num_steps: int, window: tuple[int, int]) -> Tensor:
    """``[S]`` bool: True on the window's (SDE, trained) steps. Case S = 5, (1, 3) → [F, T, T, F, F]."""
    start, stop = window
    if not 0 <= start < stop <= num_steps:
        raise ValueError(f"window {window} does not fit {num_steps} steps")
    mask = torch.zeros(num_steps, dtype=torch.bool)
    mask[start:stop] = True
    return mask
