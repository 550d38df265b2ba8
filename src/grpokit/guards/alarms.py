"""Alarms on metric streams: entropy collapse, over-optimization (proxy up, gold down), ratio drift.

Each alarm is a small stateful detector fed one point at a time (`update(step, ...)`) that returns
an :class:`Alarm` when its condition starts to hold and ``None`` otherwise. An alarm *latches*: it
fires once when its condition becomes true and re-arms only after the condition has been false
again, so a run that stays below an entropy floor raises one alarm, not one per step. The detectors
know nothing about trainers; `grpokit.guards.callbacks` feeds them the logged metrics and acts.

Trends are least-squares lines through the last ``window`` points, reported as the fitted change
across the window (slope × (last step − first step)), in the metric's own units, so a threshold
reads "gold fell by more than 0.03 over the last 4 evaluations" whatever the evaluation interval.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Alarm:
    kind: str  # "entropy_collapse" | "over_optimization" | "ratio_drift"
    step: int
    message: str
    values: dict[str, float] = field(default_factory=dict)  # the numbers that triggered it


def least_squares_slope(steps: Sequence[float], values: Sequence[float]) -> float:
    """Slope b of the least-squares line v ≈ a + b·s: b = Σ_i (s_i − s̄)(v_i − v̄) / Σ_i (s_i − s̄)².

    Sums and means run over the given points; fewer than two distinct steps give 0.0 (no trend).
    """
    if len(steps) != len(values):
        raise ValueError(f"steps and values differ in length: {len(steps)} vs {len(values)}")
    n = len(steps)
    if n < 2:
        return 0.0
    mean_s = sum(steps) / n
    mean_v = sum(values) / n
    spread = sum((s - mean_s) ** 2 for s in steps)
    if spread == 0:
        return 0.0
    return sum((s - mean_s) * (v - mean_v) for s, v in zip(steps, values)) / spread


def window_change(steps: Sequence[float], values: Sequence[float]) -> float:
    """Fitted change across the points: least_squares_slope · (last step − first step)."""
    if len(steps) < 2:
        return 0.0
    return least_squares_slope(steps, values) * (steps[-1] - steps[0])


class _Latch:
    """Fires on the rising edge of a condition that held `patience` consecutive times."""

    def __init__(self, patience: int):
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.patience = patience
        self.run = 0
        self.fired = False

    def state_dict(self) -> dict:
        return {"run": self.run, "fired": self.fired}

    def load_state_dict(self, state: dict) -> None:
        self.run, self.fired = int(state["run"]), bool(state["fired"])

    def rising_edge(self, condition: bool) -> bool:
        self.run = self.run + 1 if condition else 0
        if not condition:
            self.fired = False  # re-arm
            return False
        if self.run >= self.patience and not self.fired:
            self.fired = True
            return True
        return False


class EntropyCollapseAlarm:
    """Entropy below ``floor`` (for ``patience`` consecutive points), or falling faster than
    ``max_drop_per_step`` (least-squares slope over the last ``window`` points, units per step).

    Either test may be None (off). Non-finite values are ignored.
    """

    kind = "entropy_collapse"

    def __init__(
        self,
        floor: float | None = None,
        max_drop_per_step: float | None = None,
        *,
        window: int = 10,
        patience: int = 1,
    ):
        if floor is None and max_drop_per_step is None:
            raise ValueError("EntropyCollapseAlarm needs floor and/or max_drop_per_step")
        if window < 2:
            raise ValueError(f"window must be >= 2 points to fit a trend, got {window}")
        if max_drop_per_step is not None and max_drop_per_step <= 0:
            raise ValueError(f"max_drop_per_step must be > 0, got {max_drop_per_step}")
        self.floor = floor
        self.max_drop_per_step = max_drop_per_step
        self.points: deque[tuple[int, float]] = deque(maxlen=window)
        self._latch = _Latch(patience)

    def state_dict(self) -> dict:
        """The window and the latch, as JSON (a resumed run's alarm continues where it was)."""
        return {"points": [list(p) for p in self.points], "latch": self._latch.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.points.clear()
        self.points.extend((int(step), float(value)) for step, value in state["points"])
        self._latch.load_state_dict(state["latch"])

    def update(self, step: int, entropy: float) -> Alarm | None:
        if not math.isfinite(entropy):
            return None
        self.points.append((step, entropy))
        steps, values = zip(*self.points)
        slope = least_squares_slope(steps, values)
        below = self.floor is not None and entropy < self.floor
        full_window = len(self.points) == self.points.maxlen
        falling = self.max_drop_per_step is not None and full_window and slope < -self.max_drop_per_step
        if not self._latch.rising_edge(below or falling):
            return None
        reason = (
            f"entropy {entropy:.4g} below the floor {self.floor:g}"
            if below
            else f"entropy falling {-slope:.3g}/step over {len(steps)} steps "
            f"(limit {self.max_drop_per_step:g}/step)"
        )
        return Alarm(self.kind, step, reason, {"entropy": entropy, "entropy_slope_per_step": slope})


class OverOptimizationAlarm:
    """Proxy reward rising while the gold score falls, over the last ``window`` evaluations.

    Fires when, across the window, the fitted proxy change > ``min_proxy_rise``, the fitted gold
    change < −``min_gold_fall``, and gold is at least ``min_drop_from_best`` below the best gold
    seen so far (all in the rewards' own units). Also tracks the best gold and its step.
    """

    kind = "over_optimization"

    def __init__(
        self,
        window: int = 3,
        *,
        min_proxy_rise: float = 0.0,
        min_gold_fall: float = 0.0,
        min_drop_from_best: float = 0.0,
        patience: int = 1,
    ):
        if window < 2:
            raise ValueError(f"window must be >= 2 evaluations to fit a trend, got {window}")
        self.min_proxy_rise = min_proxy_rise
        self.min_gold_fall = min_gold_fall
        self.min_drop_from_best = min_drop_from_best
        self.points: deque[tuple[int, float, float]] = deque(maxlen=window)
        self.best_gold = -math.inf
        self.best_step: int | None = None
        self._latch = _Latch(patience)

    def state_dict(self) -> dict:
        """The window, the best gold and the latch, as JSON (−inf, "nothing seen yet", as null)."""
        return {
            "points": [list(p) for p in self.points],
            "best_gold": self.best_gold if math.isfinite(self.best_gold) else None,
            "best_step": self.best_step,
            "latch": self._latch.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.points.clear()
        self.points.extend((int(step), float(proxy), float(gold)) for step, proxy, gold in state["points"])
        self.best_gold = -math.inf if state["best_gold"] is None else float(state["best_gold"])
        self.best_step = state["best_step"]
        self._latch.load_state_dict(state["latch"])

    def trends(self) -> tuple[float, float]:
        """(proxy change, gold change) fitted across the current window."""
        if len(self.points) < 2:
            return 0.0, 0.0
        steps, proxy, gold = zip(*self.points)
        return window_change(steps, proxy), window_change(steps, gold)

    def update(self, step: int, proxy: float, gold: float) -> Alarm | None:
        if not (math.isfinite(proxy) and math.isfinite(gold)):
            return None
        self.points.append((step, proxy, gold))
        if gold > self.best_gold:
            self.best_gold, self.best_step = gold, step
        proxy_change, gold_change = self.trends()
        drop = self.best_gold - gold
        condition = (
            len(self.points) == self.points.maxlen
            and proxy_change > self.min_proxy_rise
            and gold_change < -self.min_gold_fall
            and drop >= self.min_drop_from_best
        )
        if not self._latch.rising_edge(condition):
            return None
        message = (
            f"proxy {proxy_change:+.4g} while gold {gold_change:+.4g} over the last {len(self.points)} "
            f"evaluations; gold {gold:.4g} is {drop:.4g} below its best {self.best_gold:.4g} "
            f"(step {self.best_step})"
        )
        return Alarm(
            self.kind,
            step,
            message,
            {
                "proxy": proxy,
                "gold": gold,
                "proxy_change": proxy_change,
                "gold_change": gold_change,
                "best_gold": self.best_gold,
                "best_step": float(self.best_step),
            },
        )


class RatioDriftAlarm:
    """Importance ratios drifting: |ratio_mean − 1| > ``max_mean_shift``, ratio_std > ``max_std``, or
    clip_frac_low + clip_frac_high > ``max_clip_frac``, for ``patience`` consecutive steps.

    Each limit may be None (off); metrics passed as None or NaN are not tested. GRPO-Guard
    (arXiv 2510.22319) shows the mean sliding below 1 and the clip fractions growing as a
    policy over-optimizes.
    """

    kind = "ratio_drift"

    def __init__(
        self,
        max_mean_shift: float | None = 0.1,
        max_std: float | None = None,
        max_clip_frac: float | None = 0.2,
        *,
        patience: int = 1,
    ):
        self.max_mean_shift = max_mean_shift
        self.max_std = max_std
        self.max_clip_frac = max_clip_frac
        self._latch = _Latch(patience)

    def state_dict(self) -> dict:
        return {"latch": self._latch.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self._latch.load_state_dict(state["latch"])

    def update(
        self,
        step: int,
        ratio_mean: float | None,
        ratio_std: float | None = None,
        clip_frac_low: float | None = None,
        clip_frac_high: float | None = None,
    ) -> Alarm | None:
        def known(x: float | None) -> bool:
            return x is not None and math.isfinite(x)

        reasons = []
        if (
            self.max_mean_shift is not None
            and known(ratio_mean)
            and abs(ratio_mean - 1) > self.max_mean_shift
        ):
            reasons.append(f"ratio mean {ratio_mean:.4g} is more than {self.max_mean_shift:g} from 1")
        if self.max_std is not None and known(ratio_std) and ratio_std > self.max_std:
            reasons.append(f"ratio std {ratio_std:.4g} > {self.max_std:g}")
        clipped = sum(x for x in (clip_frac_low, clip_frac_high) if known(x))
        if self.max_clip_frac is not None and clipped > self.max_clip_frac:
            reasons.append(f"clipped fraction {clipped:.3g} > {self.max_clip_frac:g}")
        if not self._latch.rising_edge(bool(reasons)):
            return None
        values = {"ratio_mean": ratio_mean, "ratio_std": ratio_std, "clip_frac": clipped}
        return Alarm(self.kind, step, "; ".join(reasons), {k: v for k, v in values.items() if known(v)})
