"""Why a step carries no learning signal: the reason line and the zero-variance group count."""

from __future__ import annotations

import logging
import math

import torch

from grpokit.trainers.scored import no_gradient_reason


def _reason(totals, groups):
    return no_gradient_reason(torch.tensor(totals, dtype=torch.float64), torch.tensor(groups))


def test_a_group_with_two_different_rewards_gives_no_reason():
    assert _reason([0.0, 1.0, 1.0, 1.0], [0, 0, 1, 1]) is None


def test_all_zero_groups_suggest_the_task_is_too_hard():
    assert _reason([0.0] * 6, [0, 0, 1, 1, 2, 2]) == \
        "all 3 groups have equal rewards (3 groups all 0; all 0: too hard?) — no gradient"


def test_mixed_all_zero_and_all_one_groups_are_counted_separately():
    assert _reason([0.0, 0.0, 1.0, 1.0], [0, 0, 1, 1]) == \
        "all 2 groups have equal rewards (1 group all 0, 1 group all 1; all 0: too hard? all 1: too easy?) — no gradient"


def test_other_equal_values_and_all_none_rewards():
    assert _reason([0.5, 0.5], [0, 0]) == "all 1 groups have equal rewards (1 group all 0.5) — no gradient"
    assert _reason([math.nan] * 4, [0, 0, 1, 1]) == \
        "no valid reward in any of the 2 groups (every score None) — no gradient"


def test_a_step_without_signal_logs_why_and_counts_the_groups(tmp_path, make_trainer, caplog):
    from grpokit.rewards import Reward, RewardRunner

    def never_right(completions, **_):
        return [0.0] * len(completions)

    trainer = make_trainer(tmp_path, rewards=RewardRunner([Reward("never_right", never_right)]))
    with caplog.at_level(logging.WARNING, logger="grpokit.trainer"):
        metrics = trainer.train_step(0)
    assert metrics["train/zero_variance_groups"] == 4.0 and metrics["frac_reward_zero_std"] == 1.0
    assert "step 1: all 4 groups have equal rewards (4 groups all 0; all 0: too hard?) — no gradient" in caplog.text
