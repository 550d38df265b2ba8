"""Turning a scored rollout batch into training tensors, mini-batches and micro-batches.

Kept apart from the loop so that the loop reads like the algorithm and so that these index
manipulations (where masks go wrong in small GRPO repos) have their own tests.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor


@dataclass
class TrainingBatch:
    """Everything one update needs, row-aligned (prompt-major, as the rollout)."""

    prompt_ids: Tensor  # [B, P] left-padded
    prompt_mask: Tensor  # [B, P]
    completion_ids: Tensor  # [B, T] right-padded
    completion_mask: Tensor  # [B, T] 1 on generated tokens (including EOS)
    group_ids: Tensor  # [B] which prompt each row belongs to
    loss_mask: Tensor  # [B, T] 1 on tokens the loss may touch (generated, reward valid, not filtered)
    advantages: Tensor  # [B] or [B, T]
    behaviour_logprobs: Tensor  # [B, T]
    old_logprobs: Tensor | None = None  # [B, T]; None when μ = 1 with one mini-batch (old = current)
    ref_logprobs: Tensor | None = None  # [B, T]; only when β > 0

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def select(self, rows: Tensor) -> TrainingBatch:
        """The rows `rows` of every tensor field, with padding columns that no row uses removed."""
        picked = {f.name: getattr(self, f.name) for f in fields(self)}
        picked = {k: (v[rows] if isinstance(v, Tensor) else v) for k, v in picked.items()}
        return _trim_padding(TrainingBatch(**picked))


def _trim_padding(batch: TrainingBatch) -> TrainingBatch:
    # Prompts are left-padded: drop leading all-pad columns. Completions are right-padded: drop
    # trailing columns masked out for every row. Saves compute on short micro-batches and does not
    # change any log-prob (positions are derived from the attention mask).
    used_prompt = batch.prompt_mask.any(dim=0).nonzero()
    start = int(used_prompt[0]) if len(used_prompt) else 0
    used_completion = batch.completion_mask.any(dim=0).nonzero()
    end = int(used_completion[-1]) + 1 if len(used_completion) else 1
    out = {}
    for f in fields(batch):
        value = getattr(batch, f.name)
        if not isinstance(value, Tensor) or value.dim() < 2:
            out[f.name] = value
        elif f.name.startswith("prompt"):
            out[f.name] = value[:, start:]
        else:
            out[f.name] = value[:, :end]
    return TrainingBatch(**out)


def model_inputs(batch: TrainingBatch) -> tuple[Tensor, Tensor, int]:
    """input_ids, attention_mask and the number of completion positions T for a forward pass."""
    input_ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)
    attention_mask = torch.cat([batch.prompt_mask, batch.completion_mask], dim=1)
    return input_ids, attention_mask, batch.completion_ids.shape[1]


def mini_batch_rows(group_ids: Tensor, num_mini_batches: int, generator: torch.Generator) -> list[Tensor]:
    """Split rows into `num_mini_batches` mini-batches of whole groups, groups in shuffled order.

    Groups may have unequal sizes; a group is never split, so its advantages' statistics and its
    rows stay together.
    """
    groups = torch.unique(group_ids)
    order = groups[torch.randperm(len(groups), generator=generator)]
    parts = []
    for chunk in order.chunk(num_mini_batches):
        parts.append(torch.isin(group_ids, chunk).nonzero().flatten())
    return parts


def micro_batch_rows(rows: Tensor, micro_batch_size: int) -> list[Tensor]:
    return list(rows.split(micro_batch_size))


def token_keys(generator: torch.Generator, num_rows: int, width: int, rows: Tensor) -> Tensor:
    """Uniform float64 keys ``[len(rows), width]`` for the rows ``rows`` of a global batch of ``num_rows``.

    Each call draws the keys of the whole global batch (``num_rows × width``) and keeps the asked rows, so
    a token's key depends only on (the call, its global row, its position): not on the micro-batch or the
    process that holds it. Clip-Cov picks its random tokens by these keys.
    """
    keys = torch.rand(num_rows, width, generator=generator, dtype=torch.float64)
    return keys[rows.cpu()]
