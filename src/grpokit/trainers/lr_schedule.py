"""The learning-rate schedule every trainer shares: linear warm-up, then constant, linear or cosine decay.

The schedule advances once per training step (one rollout batch, however many optimizer steps its
update takes), so `warmup_steps` and the decay's horizon `max_steps` are in the units of
`training.max_steps` — as in verl, which steps its scheduler once per training step.
"""

from __future__ import annotations

import math

import torch

LR_SCHEDULES = ("constant", "linear", "cosine")


def lr_factor(step: int, *, warmup_steps: int, max_steps: int, schedule: str) -> float:
    """The multiplier of the base learning rate during training step `step` (0-based):

        warm-up   (s < w):  (s + 1) / w
        then      p = (s − w) / max(1, N − w)
                  constant: 1     linear: max(0, 1 − p)     cosine: ½·(1 + cos(π·min(1, p)))
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose from {LR_SCHEDULES}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def make_lr_scheduler(optimizer: torch.optim.Optimizer, training) -> torch.optim.lr_scheduler.LambdaLR:
    """`lr_factor` over `optimizer` from a training config section (`warmup_steps`, `lr_schedule`,
    `max_steps`); the run loop steps it once per training step."""

    def factor(step: int) -> float:
        return lr_factor(step, warmup_steps=training.warmup_steps, max_steps=training.max_steps,
                         schedule=training.lr_schedule)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
