"""The `guards:` section of a training config: which alarms watch the run and what each one does.

Actions: "off" disables the alarm; "warn" logs it (and records it in `alarms.jsonl`); "stop" also ends the run after
the current step; "restore_best" also loads the policy weights of the best-gold checkpoint
(`checkpoints/best`, kept when `gold.rewards` are set) before stopping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from grpokit.config_schema import ConfigError


def _check_window(section: str, window: int, patience: int) -> None:
    if window < 2:
        raise ConfigError(f"guards.{section}.window: must be >= 2 points to fit a trend, got {window}")
    if patience < 1:
        raise ConfigError(f"guards.{section}.patience: must be >= 1, got {patience}")


Action = Literal["off", "warn", "stop", "restore_best"]
ACTIONS: tuple[str, ...] = ("warn", "stop", "restore_best")  # what an alarm that fires can do


@dataclass
class EntropyGuardConfig:
    """Entropy collapse; off until `floor` and/or `max_drop_per_step` is set (a good floor depends on the task)."""

    floor: float | None = None  # alarm when the metric is below this (nats per token)
    max_drop_per_step: float | None = None  # or when its fitted slope over `window` steps < −this
    window: int = 10  # steps in the fitted slope
    patience: int = 1  # consecutive steps below the floor before the alarm
    metric: str = "train/entropy_mean"  # e.g. train/high_adv_entropy_mean or train/entropy_p10
    action: Action = "warn"  # what the alarm does when it fires (see `guards`)

    def __post_init__(self) -> None:
        _check_window("entropy", self.window, self.patience)

    @property
    def active(self) -> bool:
        return self.action != "off" and (self.floor is not None or self.max_drop_per_step is not None)


@dataclass
class OverOptimizationGuardConfig:
    """Proxy rising while gold falls over the last `window` evaluations (active when gold is set)."""

    window: int = 3  # evaluations in the fitted trends (eval.every_steps apart)
    min_proxy_rise: float = 0.0  # fitted proxy change across the window must exceed this
    min_gold_fall: float = 0.0  # fitted gold change across the window must be below −this
    min_drop_from_best: float = 0.0  # and gold must be at least this far below its best
    patience: int = 1  # consecutive evaluations meeting all three
    action: Action = "warn"  # what the alarm does when it fires (see `guards`)

    def __post_init__(self) -> None:
        _check_window("over_optimization", self.window, self.patience)


@dataclass
class RatioGuardConfig:
    """Importance-ratio drift, per step (needs μ > 1 or several mini-batches to ever move)."""

    max_mean_shift: float | None = 0.1  # |train/ratio_mean − 1| limit
    max_std: float | None = None  # train/ratio_std limit
    max_clip_frac: float | None = 0.2  # train/clip_frac_low + train/clip_frac_high limit
    patience: int = 3  # consecutive steps out of bounds before the alarm
    action: Action = "warn"  # what the alarm does when it fires (see `guards`)

    def __post_init__(self) -> None:
        _check_window("ratio", 2, self.patience)


@dataclass
class GuardsConfig:
    """Alarms that watch the run, and what each does when it fires: off, warn (logged to alarms.jsonl),
    stop (ends the run after the step) or restore_best (loads the best-gold checkpoint, then stops)."""

    entropy: EntropyGuardConfig = field(default_factory=EntropyGuardConfig)  # entropy collapse
    over_optimization: OverOptimizationGuardConfig = field(  # proxy reward up while gold goes down
        default_factory=OverOptimizationGuardConfig)
    ratio: RatioGuardConfig = field(default_factory=RatioGuardConfig)  # importance ratios drifting from 1
    # A rerun of a run that a guard stopped (action stop or restore_best) says so and does not train;
    # true (or `grpokit train --continue`) trains on from its last checkpoint, the guards re-armed.
    continue_after_stop: bool = False
