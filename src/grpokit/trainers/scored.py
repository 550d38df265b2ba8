"""A scored rollout (completions + rewards per reward function) and what the trainer does with one.

Selecting and concatenating whole groups (DAPO dynamic sampling), telling informative groups
(at least two different valid rewards) from all-equal ones, and the per-step metrics a user reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from grpokit.rollout.types import RolloutBatch
from grpokit.trainers.batching import TrainingBatch


@dataclass
class ScoredRollout:
    rollout: RolloutBatch
    rewards: Tensor  # [B, K] per reward function, NaN where a reward returned None
    reward_names: list[str]
    total_reward: Tensor  # [B] weighted sum used for logging
    prompt_indices: list[int]  # data-set index of each group
    reward_metrics: dict = field(default_factory=dict)
    dropped_groups: int = 0  # DAPO dynamic sampling: zero-variance groups dropped
    generation_rounds: int = 1
    generated_rollouts: int = 0  # every completion generated for the step, dropped groups included


def weighted_total(rewards: Tensor, weights: Tensor) -> Tensor:
    """Σ_k w_k·r_k per row; NaN when any reward of the row is NaN (the row is then masked)."""
    return (rewards.to(torch.float64) * weights.to(torch.float64)).sum(dim=1)


def informative_groups(total_reward: Tensor, group_ids: Tensor) -> Tensor:
    """Per group (in order of first appearance): does it hold at least two different valid rewards?"""
    groups = torch.unique_consecutive(group_ids)
    flags = []
    for g in groups:
        values = total_reward[group_ids == g]
        values = values[~torch.isnan(values)]
        flags.append(bool(len(values) > 1 and (values.max() - values.min()) > 1e-9))
    return torch.tensor(flags, dtype=torch.bool)


def no_gradient_reason(total_reward: Tensor, group_ids: Tensor) -> str | None:
    """Why no group carries a learning signal (every advantage is 0), or None when some group does.

    Case: totals [0, 0, 1, 1] in groups [0, 0, 1, 1] → "all 2 groups have equal rewards (1 group all 0,
    1 group all 1; all 0: too hard? all 1: too easy?) — no gradient".
    """
    if bool(informative_groups(total_reward, group_ids).any()):
        return None
    groups = torch.unique_consecutive(group_ids)
    counts: dict[float, int] = {}  # the one value each group with a valid reward holds -> how many groups
    for g in groups:
        valid = total_reward[group_ids == g]
        valid = valid[~torch.isnan(valid)]
        if len(valid):
            value = round(float(valid[0]), 6)
            counts[value] = counts.get(value, 0) + 1
    if not counts:
        return f"no valid reward in any of the {len(groups)} groups (every score None) — no gradient"
    shares = ", ".join(f"{n} group{'s' * (n > 1)} all {v:g}" for v, n in sorted(counts.items()))
    hints = [hint for value, hint in ((0.0, "all 0: too hard?"), (1.0, "all 1: too easy?")) if value in counts]
    shares += "; " + " ".join(hints) if hints else ""
    return f"all {len(groups)} groups have equal rewards ({shares}) — no gradient"


def select_groups(scored: ScoredRollout, keep: Tensor) -> ScoredRollout:
    groups = torch.unique_consecutive(scored.rollout.group_ids)
    kept_groups = groups[keep]
    rows = torch.isin(scored.rollout.group_ids, kept_groups).nonzero().flatten()
    rollout = scored.rollout.select(rows)
    # Renumber the groups 0..k-1 so the batch is self-contained.
    _, new_ids = torch.unique_consecutive(rollout.group_ids, return_inverse=True)
    rollout.group_ids = new_ids
    return ScoredRollout(
        rollout=rollout, rewards=scored.rewards[rows], reward_names=scored.reward_names,
        total_reward=scored.total_reward[rows],
        prompt_indices=[i for i, k in zip(scored.prompt_indices, keep.tolist()) if k],
        reward_metrics=scored.reward_metrics,
    )


def concat_scored(parts: list[ScoredRollout]) -> ScoredRollout:
    from grpokit.rollout.types import concat_rollouts

    rollout = concat_rollouts([p.rollout for p in parts])
    offsets, start = [], 0
    for p in parts:  # each round numbers its groups from 0: shift them apart
        offsets.append(torch.full((len(p.rollout.group_ids),), start, dtype=torch.long))
        start += len(p.prompt_indices)
    rollout.group_ids = torch.cat([p.rollout.group_ids for p in parts]) + torch.cat(offsets)
    return ScoredRollout(
        rollout=rollout,
        rewards=torch.cat([p.rewards for p in parts]), reward_names=parts[0].reward_names,
        total_reward=torch.cat([p.total_reward for p in parts]),
        prompt_indices=[i for p in parts for i in p.prompt_indices],
        reward_metrics=parts[0].reward_metrics,
    )


def step_metrics(scored: ScoredRollout, batch: TrainingBatch, update_stats: dict[str, float]) -> dict[str, float]:
    """What a user needs to see for one step: rewards, lengths, zero-std groups, and the update's stats."""
    rollout = scored.rollout
    # Per reward function: the runner's mean/std/None count/errors/seconds over everything sampled.
    metrics: dict[str, float] = {k: float(v) for k, v in scored.reward_metrics.items()
                                 if isinstance(v, (int, float))}
    for k, name in enumerate(scored.reward_names):
        if f"rewards/{name}/mean" not in metrics:  # shaping terms the preset added
            values = scored.rewards[:, k]
            metrics[f"rewards/{name}/mean"] = float(values[~torch.isnan(values)].mean())
    total = scored.total_reward[~torch.isnan(scored.total_reward)]
    metrics["reward/mean"] = float(total.mean()) if len(total) else float("nan")
    metrics["reward/std"] = float(total.std()) if len(total) > 1 else 0.0
    metrics["reward/none_count"] = float(torch.isnan(scored.total_reward).sum())
    informative = informative_groups(scored.total_reward, rollout.group_ids)
    metrics["frac_reward_zero_std"] = float((~informative).float().mean()) if len(informative) else 1.0
    metrics["train/zero_variance_groups"] = float((~informative).sum())
    lengths = rollout.completion_mask.sum(1).float()
    metrics["completion/length_mean"] = float(lengths.mean())
    metrics["completion/length_max"] = float(lengths.max())
    metrics["completion/truncated_frac"] = float(rollout.truncated.float().mean())
    metrics["advantage/abs_mean"] = float(batch.advantages.abs().mean())
    metrics["dynamic_sampling/dropped_groups"] = float(scored.dropped_groups)
    metrics["dynamic_sampling/rounds"] = float(scored.generation_rounds)
    metrics.update({f"train/{k}": v for k, v in update_stats.items()})
    return metrics
