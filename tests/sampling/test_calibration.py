from __future__ import annotations

import math

import pytest

from grpokit.sampling import calibration_bins, expected_calibration_error


def test_bins_are_rollout_weighted_means_hand_computed():
    # bin [0, 0.5): predicted (0.1·2 + 0.15·2)/4 = 0.125, observed (0·2 + 0.5·2)/4 = 0.25, weight 4
    # bin [0.5, 1]: predicted 0.7, observed 1.0, weight 4 (the last bin includes 1.0)
    bins = calibration_bins([0.1, 0.15, 0.7], [0.0, 0.5, 1.0], [2, 2, 4], num_bins=2)
    assert [(b.low, b.high) for b in bins] == [(0.0, 0.5), (0.5, 1.0)]
    assert bins[0].predicted == pytest.approx(0.125) and bins[0].observed == pytest.approx(0.25)
    assert bins[1].predicted == pytest.approx(0.7) and bins[1].observed == pytest.approx(1.0)
    assert [b.weight for b in bins] == [4.0, 4.0]
    # ECE = 0.5·|0.125 − 0.25| + 0.5·|0.7 − 1.0| = 0.2125
    assert expected_calibration_error(bins) == pytest.approx(0.2125)


def test_a_prediction_of_exactly_one_lands_in_the_last_bin_and_empty_bins_are_left_out():
    bins = calibration_bins([1.0], [1.0], [3], num_bins=5)
    assert len(bins) == 1 and bins[0].low == pytest.approx(0.8)
    assert expected_calibration_error(bins) == 0.0
    assert math.isnan(expected_calibration_error(calibration_bins([], [], [], 5)))
