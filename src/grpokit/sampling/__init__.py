"""Spending rollouts where they teach: per-prompt pass-rate posteriors, prompt selection, group sizes.

Pure functions (numpy only) in `posterior`, `selection`, `allocation`, `calibration`; the trainer-facing
object is `AdaptiveSampler`. Formulas: docs of each module and the algorithms spec §9.
"""

from __future__ import annotations

from .adaptive_sampler import AdaptiveSampler, PosteriorTableWriter
from .allocation import allocate_group_sizes
from .calibration import CalibrationBin, calibration_bins, expected_calibration_error
from .posterior import PromptPosteriors, beta_mean, beta_std, beta_update, group_successes
from .selection import (
    expected_prob_group_informative,
    expected_reward_variance,
    exploration_slots,
    prob_group_informative,
    prompt_status,
    select_prompts,
    thompson_scores,
)

__all__ = [
    "AdaptiveSampler",
    "CalibrationBin",
    "PosteriorTableWriter",
    "PromptPosteriors",
    "allocate_group_sizes",
    "beta_mean",
    "beta_std",
    "beta_update",
    "calibration_bins",
    "expected_calibration_error",
    "expected_prob_group_informative",
    "expected_reward_variance",
    "exploration_slots",
    "group_successes",
    "prob_group_informative",
    "prompt_status",
    "select_prompts",
    "thompson_scores",
]
