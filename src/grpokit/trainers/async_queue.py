"""A rollout in the asynchronous pipeline's queue, and the queue as JSON for checkpoints
(`trainer_state.json`'s extra state).

Exact: integer tensors as lists, float32/float64 values as Python floats (which hold them exactly), NaN
(a reward that returned None) as null since checkpoint JSON allows no NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from grpokit.rollout.types import RolloutBatch
from grpokit.trainers.scored import ScoredRollout


@dataclass
class QueuedRollout:
    """A scored rollout waiting for its training step, with what the checkpoint needs to keep it."""

    step: int  # the training step it is for
    version: int  # the policy version (updates done) that sampled it
    scored: ScoredRollout
    sampler_state: dict  # the sampler's state right after drawing (and observing) this step's prompts
    seconds: float = 0.0  # producer time spent sampling and scoring it
    sampler_metrics: dict = field(default_factory=dict)  # the sampler's metrics right after drawing it
    idle_seconds: float = 0.0  # producer time spent waiting for its weights before sampling it


_LONG_FIELDS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "group_ids")


def _floats(tensor: torch.Tensor) -> list:
    """Floats with NaN as None (checkpoint JSON allows no NaN); float32/64 → Python float is exact."""
    return [None if isinstance(v, float) and math.isnan(v) else v for v in tensor.reshape(-1).tolist()]


def _tensor(values: list, shape: list[int], dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor([math.nan if v is None else v for v in values], dtype=dtype).reshape(shape)


def queued_to_json(item: QueuedRollout) -> dict:
    """A queued rollout as JSON-serializable data."""
    scored, rollout = item.scored, item.scored.rollout
    if rollout.trajectories is not None:
        raise ValueError("multi-turn episodes are not checkpointed in the async queue")
    tensors = {name: {"shape": list(getattr(rollout, name).shape), "values": getattr(rollout, name).reshape(-1).tolist()}
               for name in _LONG_FIELDS}
    if rollout.policy_mask is not None:
        tensors["policy_mask"] = {"shape": list(rollout.policy_mask.shape), "values": rollout.policy_mask.reshape(-1).tolist()}
    return {
        "step": item.step, "version": item.version, "seconds": item.seconds, "sampler_state": item.sampler_state,
        "sampler_metrics": {k: (None if math.isnan(float(v)) else float(v)) for k, v in item.sampler_metrics.items()},
        "rollout": {**tensors, "behaviour_logprobs": {"shape": list(rollout.behaviour_logprobs.shape),
                                                      "dtype": str(rollout.behaviour_logprobs.dtype).removeprefix("torch."),
                                                      "values": _floats(rollout.behaviour_logprobs)},
                    "finish_reasons": rollout.finish_reasons, "prompts": rollout.prompts,
                    "completions": rollout.completions},
        "rewards": {"shape": list(scored.rewards.shape), "dtype": str(scored.rewards.dtype).removeprefix("torch."),
                    "values": _floats(scored.rewards)},
        "total_reward": {"dtype": str(scored.total_reward.dtype).removeprefix("torch."),
                         "values": _floats(scored.total_reward)},
        "reward_names": list(scored.reward_names), "prompt_indices": list(scored.prompt_indices),
        "reward_metrics": {k: (None if isinstance(v, float) and math.isnan(v) else v)
                           for k, v in scored.reward_metrics.items()},
        "dropped_groups": scored.dropped_groups, "generation_rounds": scored.generation_rounds,
        "generated_rollouts": scored.generated_rollouts,
    }


def queued_from_json(data: dict) -> QueuedRollout:
    """The `QueuedRollout` that `queued_to_json` wrote."""
    r = data["rollout"]
    longs = {name: torch.tensor(r[name]["values"], dtype=torch.long).reshape(r[name]["shape"])
             for name in (*_LONG_FIELDS, "policy_mask") if name in r}
    behaviour = r["behaviour_logprobs"]
    rollout = RolloutBatch(**longs, behaviour_logprobs=_tensor(behaviour["values"], behaviour["shape"],
                                                               getattr(torch, behaviour["dtype"])),
                           finish_reasons=list(r["finish_reasons"]), prompts=list(r["prompts"]),
                           completions=list(r["completions"]))
    rewards, total = data["rewards"], data["total_reward"]
    scored = ScoredRollout(
        rollout=rollout, rewards=_tensor(rewards["values"], rewards["shape"], getattr(torch, rewards["dtype"])),
        reward_names=list(data["reward_names"]),
        total_reward=_tensor(total["values"], [len(total["values"])], getattr(torch, total["dtype"])),
        prompt_indices=list(data["prompt_indices"]),
        reward_metrics={k: (math.nan if v is None else v) for k, v in data["reward_metrics"].items()},
        dropped_groups=data["dropped_groups"], generation_rounds=data["generation_rounds"],
        generated_rollouts=data["generated_rollouts"],
    )
    return QueuedRollout(data["step"], data["version"], scored, data["sampler_state"], data["seconds"],
                         {k: (math.nan if v is None else v) for k, v in (data.get("sampler_metrics") or {}).items()})
