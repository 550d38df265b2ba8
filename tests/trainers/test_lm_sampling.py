"""The trainer with per-prompt group sizes, DAPO dynamic sampling, and the adaptive sampler."""

from __future__ import annotations

import itertools

import pytest
import torch

from grpokit.config_schema import ConfigError
from grpokit.monitoring import read_metrics
from grpokit.rewards import RewardRunner, load_reward
from grpokit.sampling import AdaptiveSampler


class _FixedSampler:
    """Hands out prompt indices in a fixed (cycled) order, with a fixed group size per prompt."""

    def __init__(self, order: list[int], sizes: dict[int, int]):
        self._order = itertools.cycle(order)
        self.sizes = sizes

    def next_batch(self, k: int) -> list[int]:
        return [next(self._order) for _ in range(k)]

    def group_sizes(self, indices: list[int]) -> list[int]:
        return [self.sizes[i] for i in indices]

    def state_dict(self) -> dict:
        return {}


def _check_row_alignment(prompts, answer):
    for prompt, gold in zip(prompts, answer):  # the `answer` column must follow its prompt's rows
        a, b = prompt.rstrip("=").split("+")
        assert int(a) + int(b) == int(gold), (prompt, gold)


def _first_of_group_reward(prompts, completions, group_ids, answer, **_):
    """1 for the first row of each group, 0 for the others."""
    _check_row_alignment(prompts, answer)
    return [1.0 if i == 0 or group_ids[i - 1] != g else 0.0 for i, g in enumerate(group_ids)]


def _even_operand_groups_all_equal(prompts, completions, group_ids, answer, **_):
    """All 1 in groups of prompts whose first operand is even (no variance); else first-of-group."""
    first = _first_of_group_reward(prompts, completions, group_ids, answer)
    return [1.0 if int(p[0]) % 2 == 0 else r for p, r in zip(prompts, first)]


def _even_length_reward(completions, **_):
    return [float(len(c) % 2 == 0) for c in completions]


def test_unequal_groups_get_advantages_from_their_own_group_only(tmp_path, make_trainer):
    runner = RewardRunner([load_reward(_first_of_group_reward, name="first")])
    trainer = make_trainer(tmp_path, rewards=runner, rollout={"prompts_per_step": 3})
    trainer.sampler = _FixedSampler([12, 5, 33], {12: 2, 5: 3, 33: 5})  # prompts "1+2=", "0+5=", "3+3="
    scored = trainer.sample(0)
    assert scored.rollout.group_ids.tolist() == [0, 0, 1, 1, 1, 2, 2, 2, 2, 2]
    assert scored.rollout.prompts == ["1+2="] * 2 + ["0+5="] * 3 + ["3+3="] * 5
    assert scored.prompt_indices == [12, 5, 33] and scored.generated_rollouts == 10
    batch = trainer.prepare(scored)
    # One 1 among n: z-scores (n−1)/√n and −1/√n (unbiased std 1/√n), for n = 2, 3, 5.
    r2, r3, r5 = 2**-0.5, 3**-0.5, 5**-0.5
    expected = [r2, -r2, 2 * r3, -r3, -r3, 4 * r5, -r5, -r5, -r5, -r5]
    torch.testing.assert_close(batch.advantages, torch.tensor(expected), atol=1e-3, rtol=0)
    metrics = trainer.train_step(0)
    assert metrics["rollouts/step"] == 10 and metrics["frac_reward_zero_std"] == 0.0


def test_dynamic_sampling_drops_all_equal_groups_and_refills_with_unequal_sizes(tmp_path, make_trainer):
    runner = RewardRunner([load_reward(_even_operand_groups_all_equal, name="r")])
    trainer = make_trainer(
        tmp_path,
        rewards=runner,
        algorithm={"preset": "dapo", "overrides": {"soft_overlong": False}},
        rollout={"prompts_per_step": 2, "max_dynamic_sampling_rounds": 2},
    )
    # Round 0: 0 (dropped), 10 (kept); round 1: 20 (dropped); round 2: 30 (kept) → batch full.
    trainer.sampler = _FixedSampler([0, 10, 20, 30], {0: 3, 10: 2, 20: 4, 30: 5})
    scored = trainer.sample(0)
    assert scored.prompt_indices == [10, 30]
    assert (scored.dropped_groups, scored.generation_rounds, scored.generated_rollouts) == (2, 3, 14)
    assert scored.rollout.group_ids.tolist() == [0, 0, 1, 1, 1, 1, 1]
    assert scored.rollout.prompts == ["1+0="] * 2 + ["3+0="] * 5


def test_dynamic_sampling_stops_after_its_extra_rounds_and_skips_the_update(tmp_path, make_trainer):
    runner = RewardRunner([load_reward(_even_operand_groups_all_equal, name="r")])
    trainer = make_trainer(
        tmp_path,
        rewards=runner,
        algorithm={"preset": "dapo", "overrides": {"soft_overlong": False}},
        rollout={"prompts_per_step": 2, "max_dynamic_sampling_rounds": 2},
    )
    trainer.sampler = _FixedSampler([0, 20, 40], {0: 2, 20: 2, 40: 2})  # every group all-equal
    before = [p.clone() for p in trainer.model.parameters()]
    metrics = trainer.train_step(0)
    assert metrics["train/skipped"] == 1.0
    assert metrics["dynamic_sampling/rounds"] == 3 and metrics["dynamic_sampling/dropped_groups"] == 6
    assert metrics["rollouts/step"] == 12
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


_ADAPTIVE = {"strategy": "adaptive", "rollouts_per_step": 12, "max_group_size": 6, "discount": 0.9}


def test_resumed_adaptive_run_keeps_its_posteriors_and_reproduces_the_run(
    tmp_path, make_trainer, make_policy
):
    runner = RewardRunner([load_reward(_even_length_reward, name="even")])
    sections = dict(sampling=_ADAPTIVE, training={"max_steps": 4}, checkpoint={"every_steps": 2})
    full = make_trainer(tmp_path / "full", rewards=runner, **sections)
    full.train()
    interrupted = make_trainer(
        tmp_path / "resumed",
        rewards=runner,
        sampling=_ADAPTIVE,
        training={"max_steps": 2},
        checkpoint={"every_steps": 2},
    )
    interrupted.train()
    resumed = make_trainer(tmp_path / "resumed", policy=make_policy(seed=123), rewards=runner, **sections)
    assert resumed.sampler.posteriors.visits.sum() == 0  # a fresh sampler until the checkpoint is read
    resumed.train()

    assert isinstance(full.sampler, AdaptiveSampler)
    assert full.sampler.posteriors.visits.sum() > 0
    for name in ("alpha", "beta", "visits", "last_update"):
        assert (
            getattr(resumed.sampler.posteriors, name).tolist()
            == getattr(full.sampler.posteriors, name).tolist()
        )
    assert resumed.sampler.rollouts_total == full.sampler.rollouts_total == 4 * 12

    def losses(run):
        return [r["train/loss"] for r in read_metrics(run / "metrics.jsonl") if "train/loss" in r]

    assert losses(tmp_path / "resumed" / "run") == losses(tmp_path / "full" / "run")
    record = next(r for r in read_metrics(tmp_path / "full" / "run" / "metrics.jsonl") if "train/loss" in r)
    for key in (
        "rollouts/step",
        "sampling/prompts_skipped",
        "sampling/rollouts_total",
        "sampling/calibration_ece",
        "sampling/group_size_mean",
        "dynamic_sampling/dropped_groups",
    ):
        assert key in record, key
    assert record["rollouts/step"] == 12
    assert (tmp_path / "full" / "run" / "prompt_pass_rates.csv").exists()


def test_sampling_config_is_validated_and_builds_the_budget(tmp_path, make_trainer):
    trainer = make_trainer(tmp_path, sampling={"strategy": "adaptive", "rollouts_per_step": 14})
    assert trainer.sampler.rollouts_per_prompt == 3.5 and trainer.sampler.max_group_size == 8  # 2 × G
    assert trainer.sampler.posteriors.discount == 0.9  # the documented default
    with pytest.raises(ConfigError, match="discount"):
        make_trainer(tmp_path, sampling={"strategy": "adaptive", "discount": 1.5})
    with pytest.raises(ConfigError, match="unknown key"):
        make_trainer(tmp_path, sampling={"budget": 3})
    with pytest.raises(ConfigError, match="sampling"):  # 4 prompts cannot get 2 rollouts each from 6
        make_trainer(tmp_path, sampling={"strategy": "adaptive", "rollouts_per_step": 6})
