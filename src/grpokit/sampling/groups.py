"""Rolling out groups of unequal size with an engine that takes one G per call.

The result keeps the rollout contract: prompt-major rows, and row r's group id is the position of
its prompt in the list asked for (so group j has `group_sizes[j]` consecutive rows).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from grpokit.rollout.types import RolloutBatch, SamplingParams, concat_rollouts
from grpokit.seeds import group_call_seed


def generate_groups(
    engine,
    prompts: Sequence[str],
    group_sizes: Sequence[int],
    sampling: SamplingParams,
    *,
    pad_token_id: int = 0,
    prompt_seeds: Sequence[int] | None = None,
) -> RolloutBatch:
    """`group_sizes[j]` completions of `prompts[j]`: one engine call per distinct size, then merged.

    With a single distinct size this is exactly `engine.generate(prompts, G, sampling)`.
    `prompt_seeds[j]` (optional) is handed to the engine with `prompts[j]` (see `RolloutEngine.generate`).
    """
    if prompt_seeds is not None and len(prompt_seeds) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(prompt_seeds)} prompt seeds")

    def seeds_of(members: Sequence[int]) -> dict:
        # Only engines asked for per-prompt seeds get the keyword (older engines do not take it).
        return {} if prompt_seeds is None else {"prompt_seeds": [prompt_seeds[j] for j in members]}

    if len(prompts) != len(group_sizes):
        raise ValueError(f"{len(prompts)} prompts but {len(group_sizes)} group sizes")
    if any(g < 1 for g in group_sizes):
        raise ValueError(f"group sizes must be >= 1, got {list(group_sizes)}")
    distinct = sorted(set(group_sizes))
    if len(distinct) == 1:
        return engine.generate(list(prompts), distinct[0], sampling, **seeds_of(range(len(prompts))))
    parts, positions = [], []
    for call, size in enumerate(distinct):
        members = [j for j, g in enumerate(group_sizes) if g == size]
        seed = None if sampling.seed is None else group_call_seed(sampling.seed, call)
        part = engine.generate(
            [prompts[j] for j in members], size, dataclasses.replace(sampling, seed=seed), **seeds_of(members)
        )
        parts.append(part)
        positions.append(torch.tensor(members, dtype=torch.long)[part.group_ids.cpu()])
    merged = concat_rollouts(parts, pad_token_id=pad_token_id)
    position = torch.cat(positions)
    order = torch.sort(position, stable=True).indices
    rollout = merged.select(order.to(merged.group_ids.device))
    rollout.group_ids = position[order].to(rollout.group_ids.device)
    return rollout


def expand_per_group(columns: dict[str, list[Any]], group_sizes: Sequence[int]) -> dict[str, list[Any]]:
    """Each column's j-th value repeated `group_sizes[j]` times, aligned with a prompt-major batch."""
    return {
        name: [v for v, g in zip(values, group_sizes) for _ in range(g)] for name, values in columns.items()
    }
