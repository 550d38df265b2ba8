from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from grpokit.sampling import AdaptiveSampler


def _sampler(num_prompts=6, **kwargs) -> AdaptiveSampler:
    settings = dict(
        rollouts_per_prompt=4,
        min_group_size=2,
        max_group_size=8,
        prior_alpha=1.0,
        prior_beta=1.0,
        discount=1.0,
        seed=3,
    )
    return AdaptiveSampler(num_prompts, **{**settings, **kwargs})


def test_observe_updates_the_prompt_behind_each_group_id_even_with_unequal_groups():
    sampler = _sampler(prior_alpha=1.0, prior_beta=1.0)
    # group 0 ↔ prompt 5 (3 rows: 2 successes), group 1 ↔ prompt 2 (2 rows: 0 successes)
    sampler.observe([5, 2], torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0]), torch.tensor([0, 0, 0, 1, 1]))
    post = sampler.posteriors
    assert (post.alpha[5], post.beta[5]) == (3.0, 2.0)
    assert (post.alpha[2], post.beta[2]) == (1.0, 3.0)
    assert post.alpha[[0, 1, 3, 4]].tolist() == [1.0] * 4
    assert sampler.rollouts_total == 5


def test_next_batch_gives_distinct_prompts_and_can_exceed_the_data_set():
    sampler = _sampler()
    batch = sampler.next_batch(6)
    assert sorted(batch) == list(range(6))
    assert len(sampler.next_batch(9)) == 9


def test_group_sizes_split_the_budget_with_at_least_two_each():
    sampler = _sampler(rollouts_per_prompt=3.5)
    sizes = sampler.group_sizes([0, 1, 2, 3])
    assert sum(sizes) == 14 and min(sizes) >= 2
    fixed = _sampler(rollouts_per_prompt=4, adaptive_group_size=False)
    assert fixed.group_sizes([0, 1, 2]) == [4, 4, 4]


def _simulate(sampler: AdaptiveSampler, pass_rates: np.ndarray, steps: int, k: int, seed: int = 0):
    """Binary rewards drawn at each prompt's true pass rate; returns the prompts chosen per step."""
    rng = np.random.default_rng(seed)
    chosen = []
    for _ in range(steps):
        indices = sampler.next_batch(k)
        sizes = sampler.group_sizes(indices)
        rewards = np.concatenate([rng.random(g) < pass_rates[i] for i, g in zip(indices, sizes)]).astype(
            float
        )
        group_ids = np.repeat(np.arange(len(indices)), sizes)
        sampler.observe(indices, torch.tensor(rewards), torch.tensor(group_ids))
        chosen.append(indices)
    return chosen


def test_it_learns_to_spend_rollouts_on_prompts_that_are_neither_solved_nor_hopeless():
    # 10 hopeless (p = 0), 10 solved (p = 1), 10 in between (p = 0.5); uniform would pick each third.
    pass_rates = np.repeat([0.0, 1.0, 0.5], 10)
    sampler = _sampler(num_prompts=30, revisit_floor=0.1)
    chosen = _simulate(sampler, pass_rates, steps=60, k=5)
    late = np.concatenate(chosen[30:])
    assert np.mean(pass_rates[late] == 0.5) > 0.8
    metrics = sampler.metrics()
    assert metrics["sampling/skipped_solved"] > 0 and metrics["sampling/skipped_hopeless"] > 0
    status = {row["index"]: row["status"] for row in sampler.export_table()}
    assert all(status[i] == "informative" for i in range(20, 30))  # no in-between prompt is skipped
    assert sum(status[i] == "hopeless" for i in range(10)) == metrics["sampling/skipped_hopeless"]


def test_epoch_coverage_draws_every_informative_prompt_once_before_any_again():
    # 8 in-between prompts with different pass rates: the deterministic "expected" score ranks the same
    # ones first every step; with epoch coverage, 4 steps of 2 still cover all 8 before a repeat.
    pass_rates = np.linspace(0.2, 0.8, 8)
    covered = _sampler(num_prompts=8, score="expected", revisit_floor=0.0)
    chosen = _simulate(covered, pass_rates, steps=4, k=2)
    assert sorted(np.concatenate(chosen).tolist()) == list(range(8))
    assert covered.epochs == 0
    covered.next_batch(2)  # nothing undrawn is left: a new epoch starts
    assert covered.epochs == 1 and covered.drawn_this_epoch.sum() == 2
    greedy = _sampler(num_prompts=8, score="expected", revisit_floor=0.0, epoch_coverage=False)
    chosen = _simulate(greedy, pass_rates, steps=4, k=2)
    assert len(set(np.concatenate(chosen).tolist())) < 8  # the best scorers come back within the epoch


def test_metrics_report_rollouts_group_sizes_and_calibration_then_reset():
    sampler = _sampler()
    indices = sampler.next_batch(2)
    sampler.observe(indices, torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([0, 0, 1, 1]))
    metrics = sampler.metrics()
    assert metrics["sampling/rollouts"] == 4 and metrics["sampling/rollouts_total"] == 4
    assert metrics["sampling/group_size_mean"] == 2
    assert metrics["sampling/zero_variance_groups"] == 1  # the 2-of-2 group
    # Both groups were predicted 0.5 (the prior mean); observed 0.5 and 1.0 → one bin, observed 0.75.
    assert metrics["sampling/calibration/0.4-0.6/predicted"] == pytest.approx(0.5)
    assert metrics["sampling/calibration/0.4-0.6/observed"] == pytest.approx(0.75)
    assert metrics["sampling/calibration_ece"] == pytest.approx(0.25)
    assert sampler.metrics()["sampling/rollouts"] == 0  # counters restart each step


def test_state_round_trips_through_json_and_continues_identically():
    pass_rates = np.linspace(0, 1, 12)
    original = _sampler(num_prompts=12, discount=0.9)
    _simulate(original, pass_rates, steps=5, k=4)
    restored = _sampler(num_prompts=12, discount=0.9)
    restored.load_state_dict(json.loads(json.dumps(original.state_dict())))
    np.testing.assert_array_equal(restored.posteriors.alpha, original.posteriors.alpha)
    np.testing.assert_array_equal(restored.drawn_this_epoch, original.drawn_this_epoch)
    assert restored.next_batch(4) == original.next_batch(4)
    assert restored.group_sizes([0, 1, 2]) == original.group_sizes([0, 1, 2])
    with pytest.raises(ValueError, match="same data set"):
        _sampler(num_prompts=13).load_state_dict(original.state_dict())
    with pytest.raises(ValueError, match="strategy"):
        original.load_state_dict({"num_prompts": 12, "seed": 3, "epoch": 0, "position": 0})


def test_table_lists_prompts_by_estimated_pass_rate_and_writes_csv(tmp_path):
    sampler = _sampler(num_prompts=3)
    sampler.observe([0, 1], torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.tensor([0, 0, 1, 1]))
    rows = sampler.export_table(labels=["a", "b", "c"])
    assert [r["prompt"] for r in rows] == ["a", "c", "b"]  # means 0.75, 0.5, 0.25
    assert rows[0]["pass_rate_mean"] == pytest.approx(0.75) and rows[0]["visits"] == 1
    path = sampler.write_csv(tmp_path / "table.csv", labels=["a", "b", "c"])
    with path.open() as handle:
        written = list(csv.DictReader(handle))
    assert [r["prompt"] for r in written] == ["a", "c", "b"] and "status" in written[0]


def test_invalid_settings_are_rejected():
    with pytest.raises(ValueError):
        AdaptiveSampler(4, rollouts_per_prompt=1.5, min_group_size=2)
    with pytest.raises(ValueError):
        AdaptiveSampler(4, score="greedy")
