from __future__ import annotations

import math

import pytest

from grpokit.trainers.lr_schedule import lr_factor


def _factors(schedule: str, steps: int = 7) -> list[float]:
    return [lr_factor(step, warmup_steps=2, max_steps=6, schedule=schedule) for step in range(steps)]


def test_warm_up_then_constant_linear_and_cosine_decay_by_hand():
    # w = 2, N = 6: warm-up (s + 1)/2 for s = 0, 1; then p = (s − 2)/4 for s = 2..6.
    assert _factors("constant") == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert _factors("linear") == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
    cosine = [0.5, 1.0, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4)), 0.0]
    assert _factors("cosine") == pytest.approx(cosine, abs=1e-15)  # cos(π) = −1 exactly; the rest 1 ulp


def test_past_the_horizon_the_decays_stay_at_zero():
    assert lr_factor(10, warmup_steps=2, max_steps=6, schedule="linear") == 0.0
    assert lr_factor(10, warmup_steps=2, max_steps=6, schedule="cosine") == 0.0


def test_an_unknown_schedule_is_named():
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'warm'"):
        lr_factor(0, warmup_steps=0, max_steps=4, schedule="warm")
