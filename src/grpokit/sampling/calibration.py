"""Is the posterior honest? Predicted vs observed pass rates, binned (a reliability diagram).

For every scored group g: predicted q_g = the prompt's posterior mean *before* the group updates it,
observed o_g = s_g / n_g, weight n_g (its number of scored rollouts). With bins b = [b/K, (b+1)/K)
over q (the last bin closed at 1):

    predicted_b = Σ_{g∈b} n_g·q_g / W_b,   observed_b = Σ_{g∈b} n_g·o_g / W_b,   W_b = Σ_{g∈b} n_g
    ECE = Σ_b (W_b / W)·|predicted_b − observed_b|,   W = Σ_b W_b   (expected calibration error)

A calibrated posterior has predicted_b ≈ observed_b in every bin. A discount λ < 1 trades variance
for bias: it forgets faster, which is what a moving policy needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CalibrationBin:
    low: float
    high: float
    predicted: float  # weighted mean of predicted pass rates in the bin
    observed: float  # weighted mean of observed pass rates in the bin
    weight: float  # scored rollouts in the bin


def calibration_bins(predicted, observed, weights, num_bins: int = 5) -> list[CalibrationBin]:
    """The non-empty bins of the reliability diagram (module docstring), in increasing order."""
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    predicted = np.asarray(predicted, dtype=np.float64).reshape(-1)
    observed = np.asarray(observed, dtype=np.float64).reshape(-1)
    weights = np.asarray(weights, dtype=np.float64).reshape(-1)
    which = np.minimum((predicted * num_bins).astype(np.int64), num_bins - 1)
    bins = []
    for b in range(num_bins):
        inside = (which == b) & (weights > 0)
        total = weights[inside].sum()
        if total == 0:
            continue
        bins.append(
            CalibrationBin(
                low=b / num_bins,
                high=(b + 1) / num_bins,
                predicted=float((weights[inside] * predicted[inside]).sum() / total),
                observed=float((weights[inside] * observed[inside]).sum() / total),
                weight=float(total),
            )
        )
    return bins


def expected_calibration_error(bins: list[CalibrationBin]) -> float:
    """ECE = Σ_b (W_b / W)·|predicted_b − observed_b|; NaN when there are no bins."""
    total = sum(b.weight for b in bins)
    if total == 0:
        return float("nan")
    return sum(b.weight / total * abs(b.predicted - b.observed) for b in bins)
