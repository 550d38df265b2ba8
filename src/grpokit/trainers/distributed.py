"""Data-parallel training over W processes (`accelerate launch`, `torchrun`): what each rank owns and sums.

How a step is split so that W processes compute the update one process would (same global batch):

- **Prompts.** Every rank draws the same global batch of P prompt indices from the same seeded
  sampler and keeps its contiguous slice of P/W (`shard_range`). Groups are whole on one rank, and
  the sampler state is the same on every rank, so a checkpoint written by rank 0 resumes them all.
- **Sampling.** Each prompt gets its own seed from (step seed, data-set index, position in the
  global batch) (`prompt_seed`), so its completions do not depend on the other prompts of the
  call, hence not on W.
- **Advantages.** Every rank gathers the per-row rewards of the whole batch (tiny) and computes the
  advantages of all rows, then keeps its own: batch-level statistics (batch std) are global.
- **Loss.** Token and sequence counts of each mini-batch are summed over ranks before the loss
  divides by them; DDP then *averages* gradients over ranks (so does FSDP2's reduce-scatter, see
  `grpokit.trainers.fsdp`), so each rank's loss is multiplied by W (`loss_scale`) and the synced
  gradient is Σ_ranks ∇(local part of the global loss): exactly the single-process gradient of the
  global mini-batch.
- **Metrics, logs, checkpoints, evaluation.** Batch metrics are computed from gathered per-row
  values; rank 0 alone logs, evaluates (the others wait for its metrics), runs callbacks (their
  `should_stop` is broadcast) and writes checkpoints, with every rank waiting for the write.

Every collective here is a no-op when `torch.distributed` is not initialized (a plain run).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from grpokit.config_schema import ConfigError
from grpokit.models.logprobs import LogprobModule


# ---------------------------------------------------------------------- pure helpers
def shard_range(count: int, world_size: int, rank: int) -> tuple[int, int]:
    """[start, end) of rank `rank`'s contiguous slice of `count` items; W must divide `count`."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside a world of {world_size}")
    if count % world_size:
        raise ValueError(f"{count} items cannot be split evenly over {world_size} processes")
    size = count // world_size
    return rank * size, (rank + 1) * size


def prompt_seed(step_seed: int, dataset_index: int, position: int) -> int:
    """A 63-bit seed for one prompt of one generation call: a hash of (step seed, data-set index, position).

    The position in the global batch keeps a prompt drawn twice in one batch (an epoch boundary)
    from getting twice the same completions. The hash is stable across processes and Python runs.
    """
    digest = hashlib.blake2b(f"{step_seed}:{dataset_index}:{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def loss_scale(world_size: int) -> float:
    """DDP averages gradients: (1/W)·Σ_r ∇(W·L_r) = Σ_r ∇L_r, the gradient of the global loss Σ_r L_r."""
    return float(world_size)


def merge_update_stats(parts: Sequence[tuple[dict[str, float], dict[str, float]]]) -> tuple[dict, dict]:
    """Combine each rank's (stats, token_weights) of one optimizer step into the global ones.

    Per rank, a token-weighted stat holds Σ_micro share·value with share = tokens_micro / N_global, and
    token_weights its Σ share; summing both over ranks gives the global token-weighted sums. "loss"
    (each rank's part of the global loss) is summed; keys ending in _max / _min take the max / min.
    """
    stats: dict[str, float] = {}
    weights: dict[str, float] = {}
    for part_stats, part_weights in parts:
        for key, value in part_stats.items():
            if key.endswith("_max"):
                stats[key] = max(stats.get(key, -math.inf), value)
            elif key.endswith("_min"):
                stats[key] = min(stats.get(key, math.inf), value)
            else:
                stats[key] = stats.get(key, 0.0) + value
        for key, value in part_weights.items():
            weights[key] = weights.get(key, 0.0) + value
    return stats, weights


def merge_reward_metrics(parts: Sequence[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """The reward runner's per-batch metrics of the whole batch from each rank's (rows, metrics).

    For a prefix p: p/mean is the mean over the valid values of all ranks (weights: rows − p/none_count
    or p/nan_count); p/std the population std of the union, Var = Σ_r n_r·(s_r² + m_r²)/N − m²;
    counts add up; p/errors (did it fail) and p/seconds (ranks score in parallel) take the max.
    """
    merged: dict[str, float] = {}
    first = parts[0][1]
    for key in first:
        values = [metrics[key] for _, metrics in parts]
        if key.endswith(("/none_count", "/nan_count")):
            merged[key] = float(sum(values))
        elif key.endswith(("/errors", "/seconds")):
            merged[key] = float(max(values))
    for key in first:
        if not key.endswith("/mean"):
            continue
        prefix = key[: -len("/mean")]
        counts = []
        for rows, metrics in parts:
            missing = metrics.get(f"{prefix}/none_count", metrics.get(f"{prefix}/nan_count", 0.0))
            counts.append(rows - missing)
        pairs = [(n, m[key], m.get(f"{prefix}/std", 0.0)) for n, (_, m) in zip(counts, parts) if n > 0]
        total = sum(n for n, _, _ in pairs)
        if total == 0:
            merged[key] = merged[f"{prefix}/std"] = math.nan
            continue
        mean = sum(n * m for n, m, _ in pairs) / total
        merged[key] = mean
        if f"{prefix}/std" in first:
            second_moment = sum(n * (s * s + m * m) for n, m, s in pairs) / total
            merged[f"{prefix}/std"] = math.sqrt(max(second_moment - mean * mean, 0.0))
    for key in first:  # anything else: the row-weighted mean
        if key not in merged:
            rows = sum(r for r, _ in parts)
            merged[key] = sum(r * m[key] for r, m in parts) / max(rows, 1)
    return merged


def concat_group_ids(parts: Sequence[Tensor]) -> Tensor:
    """Each rank's group ids (0..k_r−1, in rank order) as one batch's: rank r's shifted by Σ_{q<r} k_q."""
    shifted, offset = [], 0
    for ids in parts:
        shifted.append(ids + offset)
        offset += int(ids.max()) + 1 if len(ids) else 0
    return torch.cat(shifted)


def check_multiprocess_config(config, preset, world_size: int) -> None:
    """Refuse, naming the field, what multi-process training does not split evenly over ranks.

    DDP needs every rank to run the same number of backward passes per optimizer step: equal shards
    of whole groups give that; dynamic sampling and adaptive sampling give ranks different numbers
    of rows, so they are single-process only for now.
    """
    if world_size <= 1:
        return
    prompts = config.rollout.prompts_per_step
    if prompts % world_size:
        raise ConfigError(
            f"rollout.prompts_per_step: {prompts} must be a multiple of the {world_size} processes"
        )
    if (prompts // world_size) % config.training.mini_batches:
        raise ConfigError(
            f"training.mini_batches: {config.training.mini_batches} must divide the prompts per process "
            f"({prompts} / {world_size})"
        )
    if preset.dynamic_sampling:
        raise ConfigError(
            "algorithm: dynamic_sampling (DAPO) is single-process only; set "
            "algorithm.overrides.dynamic_sampling: false or run one process"
        )
    if config.sampling.strategy != "uniform":
        raise ConfigError(
            "sampling.strategy: 'adaptive' is single-process only; use 'uniform' or run one process"
        )


# ---------------------------------------------------------------------- collectives
def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def sum_over_ranks(values: Sequence[float], device: torch.device | str | None = None) -> list[float]:
    """Element-wise Σ over ranks (float64: integer counts stay exact below 2⁵³)."""
    if not _initialized():
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor.tolist()


def gather_objects(obj: Any) -> list[Any]:
    """[rank 0's obj, rank 1's obj, ...] on every rank (pickled: keep them small, tensors on CPU)."""
    if not _initialized():
        return [obj]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not _initialized():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


# ---------------------------------------------------------------------- the trainer's view
class DataParallel:
    """Rank, world size and the collectives the trainer needs; a single process when W = 1."""

    def __init__(self, accelerator=None, *, fsdp: bool = False):
        self.accelerator = accelerator
        self.world_size = int(getattr(accelerator, "num_processes", 1) or 1)
        self.rank = int(getattr(accelerator, "process_index", 0) or 0)
        self.device = getattr(accelerator, "device", None)
        self.fsdp = False
        if self.enabled:
            from accelerate.utils import DistributedType

            kind = accelerator.distributed_type
            if kind not in (DistributedType.MULTI_CPU, DistributedType.MULTI_GPU, DistributedType.FSDP):
                raise ConfigError(
                    f"accelerate distributed_type {kind}: grpokit trains with DDP (MULTI_GPU, MULTI_CPU) or "
                    "its own FSDP2 (training.fsdp: true, or an accelerate FSDP config); not DeepSpeed"
                )
            self.fsdp = fsdp or kind == DistributedType.FSDP

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def loss_scale(self) -> float:
        return loss_scale(self.world_size)

    def shard(self, count: int) -> tuple[int, int]:
        return shard_range(count, self.world_size, self.rank)

    def wrap(self, model: nn.Module) -> nn.Module | None:
        """The wrapped training forward when W > 1 (DDP, or FSDP2-sharded), else None (the trainer
        calls the model itself). Under FSDP the model's own parameters become shards: see `fsdp_shard`."""
        if not self.enabled:
            return None
        if self.fsdp:
            from grpokit.trainers.fsdp import fsdp_shard

            return fsdp_shard(model)
        return self.accelerator.prepare_model(LogprobModule(model))

    def sync_context(self, module: nn.Module | None, *, last: bool):
        """No gradient all-reduce (DDP) / reduce-scatter (FSDP) on every micro-batch but the last of a step."""
        if module is None or last:
            return contextlib.nullcontext()
        if self.fsdp:
            from grpokit.trainers.fsdp import no_gradient_sync

            return no_gradient_sync(module)
        return self.accelerator.no_sync(module)

    def sum(self, values: Sequence[float]) -> list[float]:
        return sum_over_ranks(values, self.device) if self.enabled else [float(v) for v in values]

    def gather(self, obj: Any) -> list[Any]:
        return gather_objects(obj) if self.enabled else [obj]

    def broadcast(self, obj: Any) -> Any:
        return broadcast_from_main(obj) if self.enabled else obj

    def barrier(self) -> None:
        if self.enabled:
            self.accelerator.wait_for_everyone()

    def global_rewards(self, rewards: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor, int]:
        """The whole batch's rewards [N, K], group ids [N] (shifted apart per rank), this rank's first row."""
        parts = self.gather((rewards.detach().cpu(), group_ids.detach().cpu()))
        first_row = sum(len(part_groups) for _, part_groups in parts[: self.rank])
        all_groups = concat_group_ids([part_groups for _, part_groups in parts])
        return torch.cat([part_rewards for part_rewards, _ in parts]), all_groups, first_row

    def global_step_view(self, scored, batch) -> tuple[Any, Any]:
        """Stand-ins for (ScoredRollout, TrainingBatch) holding the whole batch's per-row values that
        `step_metrics` reads, so batch metrics come out as a single process would log them."""
        rollout = scored.rollout
        advantages = batch.advantages.detach().float().cpu()
        local = {
            "rewards": scored.rewards.cpu(),
            "total_reward": scored.total_reward.cpu(),
            "group_ids": rollout.group_ids.cpu(),
            "lengths": rollout.completion_mask.sum(1).cpu(),
            "truncated": rollout.truncated.cpu(),
            "advantages": advantages if advantages.dim() == 1 else advantages.abs().mean(dim=1),
            "reward_metrics": dict(scored.reward_metrics),
            "dropped_groups": scored.dropped_groups,
        }
        parts = self.gather(local)
        lengths = torch.cat([p["lengths"] for p in parts])
        width = int(lengths.max()) if len(lengths) else 0
        view_rollout = SimpleNamespace(
            group_ids=concat_group_ids([p["group_ids"] for p in parts]),
            truncated=torch.cat([p["truncated"] for p in parts]),
            completion_mask=(torch.arange(width) < lengths[:, None]).long(),
        )
        view_scored = SimpleNamespace(
            rollout=view_rollout,
            rewards=torch.cat([p["rewards"] for p in parts]),
            total_reward=torch.cat([p["total_reward"] for p in parts]),
            reward_names=scored.reward_names,
            reward_metrics=merge_reward_metrics([(len(p["lengths"]), p["reward_metrics"]) for p in parts]),
            dropped_groups=sum(p["dropped_groups"] for p in parts),
            generation_rounds=scored.generation_rounds,
        )
        view_batch = SimpleNamespace(advantages=torch.cat([p["advantages"] for p in parts]))
        return view_scored, view_batch


class NullLogger:
    """What ranks other than 0 log to."""

    def log(self, step: int, metrics: dict) -> None:
        pass

    def truncate_after(self, step: int) -> int:
        return 0

    def __enter__(self) -> NullLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass
