from __future__ import annotations

import math

import pytest

from grpokit.guards import (
    EntropyCollapseAlarm,
    OverOptimizationAlarm,
    RatioDriftAlarm,
    least_squares_slope,
    window_change,
)


def _feed(alarm, stream):
    """Steps at which `alarm` fired, feeding (step, *values) tuples in order."""
    return [point[0] for point in stream if alarm.update(*point) is not None]


def test_least_squares_slope_matches_the_hand_computed_fit():
    # s̄ = 1.5, v̄ = 0.5: Σ(s−s̄)(v−v̄) = 0.75 − 0.25 − 0.25 + 0.75 = 1, Σ(s−s̄)² = 5  →  0.2
    assert least_squares_slope([0, 1, 2, 3], [0, 1, 0, 1]) == pytest.approx(0.2)
    assert least_squares_slope([0, 10, 20], [1, 2, 3]) == pytest.approx(0.1)
    assert window_change([0, 10, 20], [1, 2, 3]) == pytest.approx(2.0)


def test_a_single_point_or_one_repeated_step_has_no_trend():
    assert least_squares_slope([5], [1.0]) == 0.0
    assert least_squares_slope([5, 5], [1.0, 3.0]) == 0.0


def test_entropy_floor_fires_once_when_crossed_and_rearms_after_recovery():
    alarm = EntropyCollapseAlarm(floor=0.15)
    stream = [(1, 1.0), (2, 0.8), (3, 0.4), (4, 0.2), (5, 0.1), (6, 0.05), (7, 0.3), (8, 0.1)]
    assert _feed(alarm, stream) == [5, 8]


def test_entropy_floor_with_patience_needs_consecutive_points_below():
    alarm = EntropyCollapseAlarm(floor=0.5, patience=2)
    assert _feed(alarm, [(1, 0.4), (2, 0.6), (3, 0.4), (4, 0.3), (5, 0.2)]) == [4]


def test_entropy_rate_alarm_fires_when_the_fitted_slope_passes_the_limit():
    # window 3, limit 0.05/step. Steps 1-3 (.99, .98, .90): slope −0.04, quiet.
    # Steps 2-4 (.98, .90, .80): Σ(s−3)(v−v̄) = −0.0867 − 0.0933 = −0.18, /2 = −0.09 < −0.05: fires.
    alarm = EntropyCollapseAlarm(max_drop_per_step=0.05, window=3)
    fired = alarm.update(0, 1.0), alarm.update(1, 0.99), alarm.update(2, 0.98), alarm.update(3, 0.90)
    assert fired == (None, None, None, None)
    found = alarm.update(4, 0.80)
    assert found is not None and found.kind == "entropy_collapse"
    assert found.values["entropy_slope_per_step"] == pytest.approx(-0.09)


def test_entropy_alarm_ignores_nan_and_needs_a_test():
    alarm = EntropyCollapseAlarm(floor=0.1)
    assert alarm.update(1, math.nan) is None and len(alarm.points) == 0
    with pytest.raises(ValueError, match="floor and/or"):
        EntropyCollapseAlarm()


# (step, proxy, gold): gold peaks at step 20, then falls while the proxy keeps rising.
HACKED_RUN = [(0, 0.2, 0.3), (10, 0.4, 0.5), (20, 0.6, 0.6), (30, 0.8, 0.5), (40, 0.9, 0.35)]


def test_over_optimization_fires_when_proxy_rises_while_gold_falls():
    alarm = OverOptimizationAlarm(window=3)
    results = [alarm.update(*point) for point in HACKED_RUN]
    # At step 30 the window (.5, .6, .5) has a flat fitted gold trend: not yet.
    assert results[:4] == [None] * 4
    found = results[4]
    assert found is not None and found.step == 40
    # Hand fit over steps 20-40: proxy (.6, .8, .9) → slope .015 × 20 = +.30; gold (.6, .5, .35) → −.25
    assert found.values["proxy_change"] == pytest.approx(0.30)
    assert found.values["gold_change"] == pytest.approx(-0.25)
    assert (found.values["best_gold"], found.values["best_step"]) == (0.6, 20)


def test_over_optimization_is_quiet_when_proxy_and_gold_fall_together():
    alarm = OverOptimizationAlarm(window=3)
    assert _feed(alarm, [(0, 0.9, 0.6), (10, 0.8, 0.5), (20, 0.7, 0.4), (30, 0.6, 0.3)]) == []


def test_over_optimization_respects_the_drop_from_best_threshold():
    assert _feed(OverOptimizationAlarm(window=3, min_drop_from_best=0.3), HACKED_RUN) == []
    assert _feed(OverOptimizationAlarm(window=3, min_drop_from_best=0.25), HACKED_RUN) == [40]


def test_over_optimization_trend_thresholds_are_changes_across_the_window():
    assert _feed(OverOptimizationAlarm(window=3, min_gold_fall=0.26), HACKED_RUN) == []
    assert _feed(OverOptimizationAlarm(window=3, min_proxy_rise=0.31), HACKED_RUN) == []


def test_ratio_drift_fires_on_mean_shift_and_on_clip_fraction():
    alarm = RatioDriftAlarm(max_mean_shift=0.1, max_clip_frac=0.2)
    assert alarm.update(1, 1.05, None, 0.05, 0.1) is None
    shifted = alarm.update(2, 0.85, None, 0.0, 0.0)
    assert shifted is not None and "ratio mean 0.85" in shifted.message
    alarm = RatioDriftAlarm(max_mean_shift=0.1, max_clip_frac=0.2)
    clipped = alarm.update(1, 1.0, None, 0.15, 0.1)  # 0.25 clipped in all
    assert clipped is not None and clipped.values["clip_frac"] == pytest.approx(0.25)


def test_ratio_drift_patience_and_unknown_values():
    alarm = RatioDriftAlarm(max_mean_shift=0.1, max_std=0.5, max_clip_frac=None, patience=3)
    stream = [(1, 1.0, 0.9), (2, 1.0, 0.9), (3, 1.0, math.nan), (4, 1.0, 0.9), (5, 1.0, 0.9), (6, 1.0, 0.9)]
    assert _feed(alarm, stream) == [6]
