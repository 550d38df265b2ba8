"""What a rollout engine is asked for (`SamplingParams`) and what it returns (`RolloutBatch`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

FINISH_STOP = "stop"  # the row sampled EOS or one of the stop tokens (which is kept in the completion)
FINISH_LENGTH = "length"  # the row reached max_new_tokens without stopping


@dataclass
class SamplingParams:
    """How to sample completions. Filters apply in HF's order: temperature → top-k → top-p."""

    max_new_tokens: int = 256
    temperature: float = 1.0  # 0 = greedy (argmax)
    top_p: float = 1.0  # keep the smallest set of top tokens with probability mass ≥ top_p; 1 = off
    top_k: int = 0  # keep the k most likely tokens; 0 = off
    stop_token_ids: tuple[int, ...] = ()  # in addition to the tokenizer's eos
    seed: int | None = None  # None = drawn from torch's global RNG (reproducible under torch.manual_seed)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        self.stop_token_ids = tuple(int(t) for t in self.stop_token_ids)


@dataclass
class RolloutBatch:
    """B = G·n completions, prompt-major: rows g·n … g·n+n−1 are the n completions of prompt g."""

    prompt_ids: Tensor  # [B, P] long, LEFT-padded with pad_token_id
    prompt_mask: Tensor  # [B, P] long, 1 on real prompt tokens
    completion_ids: Tensor  # [B, T] long, RIGHT-padded with pad_token_id
    completion_mask: Tensor  # [B, T] long, 1 on generated tokens including the final EOS
    behaviour_logprobs: Tensor  # [B, T] float32, log μ(token) of the sampling engine (0 on padding)
    finish_reasons: list[str]  # "stop" or "length", one per row
    group_ids: Tensor  # [B] long, index of the prompt each row belongs to
    prompts: list[str]  # the prompt text per row (after chat template), len B
    completions: list[str]  # decoded completion text per row (special tokens skipped), len B
    # Multi-turn episodes (`grpokit.agents`): the completion span holds the policy's turns AND the tokens
    # inserted between them (tool results, environment messages), all attended to (completion_mask 1).
    # policy_mask [B, T] long is 1 only on the tokens the policy sampled (the loss touches only these; the
    # inserted ones have behaviour log-prob 0). None = every completion token is the policy's (one turn).
    policy_mask: Tensor | None = None
    trajectories: list | None = None  # one `grpokit.agents.Trajectory` per row (messages with roles, counts)

    def __post_init__(self) -> None:
        rows = self.prompt_ids.shape[0]
        per_row = {
            "prompt_mask": self.prompt_mask.shape[0],
            "completion_ids": self.completion_ids.shape[0],
            "completion_mask": self.completion_mask.shape[0],
            "behaviour_logprobs": self.behaviour_logprobs.shape[0],
            "finish_reasons": len(self.finish_reasons),
            "group_ids": self.group_ids.shape[0],
            "prompts": len(self.prompts),
            "completions": len(self.completions),
        }
        wrong = {name: size for name, size in per_row.items() if size != rows}
        if wrong:
            raise ValueError(f"RolloutBatch: prompt_ids has {rows} rows but {wrong}")
        if self.prompt_mask.shape != self.prompt_ids.shape:
            raise ValueError("RolloutBatch: prompt_mask and prompt_ids differ in shape")
        if not self.completion_ids.shape == self.completion_mask.shape == self.behaviour_logprobs.shape:
            raise ValueError(
                "RolloutBatch: completion_ids, completion_mask, behaviour_logprobs differ in shape"
            )
        if self.policy_mask is not None and self.policy_mask.shape != self.completion_mask.shape:
            raise ValueError("RolloutBatch: policy_mask and completion_mask differ in shape")
        if self.trajectories is not None and len(self.trajectories) != rows:
            raise ValueError(f"RolloutBatch: prompt_ids has {rows} rows but {len(self.trajectories)} trajectories")

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    @property
    def num_groups(self) -> int:
        """Number of distinct prompts (groups) among the rows."""
        return int(torch.unique(self.group_ids).numel())

    @property
    def policy_tokens(self) -> Tensor:
        """[B, T] long: 1 on the tokens the policy sampled (all completion tokens of a one-turn rollout)."""
        return self.completion_mask if self.policy_mask is None else self.policy_mask

    @property
    def completion_lengths(self) -> Tensor:
        """[B] long: generated tokens per row, EOS included."""
        return self.completion_mask.sum(dim=-1)

    @property
    def truncated(self) -> Tensor:
        """[B] bool: rows that hit max_new_tokens without stopping."""
        return torch.tensor([r == FINISH_LENGTH for r in self.finish_reasons], device=self.group_ids.device)

    def model_inputs(self) -> tuple[Tensor, Tensor]:
        """(input_ids, attention_mask), each [B, P + T]: prompt ++ completion, the trainer's forward input."""
        input_ids = torch.cat([self.prompt_ids, self.completion_ids], dim=1)
        attention_mask = torch.cat([self.prompt_mask, self.completion_mask], dim=1)
        return input_ids, attention_mask

    @staticmethod
    def concat(batches: Sequence[RolloutBatch], *, pad_token_id: int = 0) -> RolloutBatch:
        """See the module-level `concat_rollouts`."""
        return concat_rollouts(batches, pad_token_id=pad_token_id)

    def to(self, device: str | torch.device) -> RolloutBatch:
        """A copy with every tensor on `device` (the lists are shared)."""
        return RolloutBatch(
            prompt_ids=self.prompt_ids.to(device),
            prompt_mask=self.prompt_mask.to(device),
            completion_ids=self.completion_ids.to(device),
            completion_mask=self.completion_mask.to(device),
            behaviour_logprobs=self.behaviour_logprobs.to(device),
            finish_reasons=self.finish_reasons,
            group_ids=self.group_ids.to(device),
            prompts=self.prompts,
            completions=self.completions,
            policy_mask=None if self.policy_mask is None else self.policy_mask.to(device),
            trajectories=self.trajectories,
        )

    def select(self, rows: Sequence[int] | Tensor) -> RolloutBatch:
        """The batch restricted to `rows` (indices or a [B] bool mask), in that order; group ids kept."""
        index = torch.as_tensor(rows, device=self.group_ids.device)
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        index = index.long()
        picked = index.tolist()
        return RolloutBatch(
            prompt_ids=self.prompt_ids[index],
            prompt_mask=self.prompt_mask[index],
            completion_ids=self.completion_ids[index],
            completion_mask=self.completion_mask[index],
            behaviour_logprobs=self.behaviour_logprobs[index],
            finish_reasons=[self.finish_reasons[i] for i in picked],
            group_ids=self.group_ids[index],
            prompts=[self.prompts[i] for i in picked],
            completions=[self.completions[i] for i in picked],
            policy_mask=None if self.policy_mask is None else self.policy_mask[index],
            trajectories=None if self.trajectories is None else [self.trajectories[i] for i in picked],
        )


def _pad_to(tensor: Tensor, width: int, value: float, *, left: bool) -> Tensor:
    missing = width - tensor.shape[1]
    if missing == 0:
        return tensor
    padding = tensor.new_full((tensor.shape[0], missing), value)
    return torch.cat([padding, tensor] if left else [tensor, padding], dim=1)


def concat_rollouts(batches: Sequence[RolloutBatch], *, pad_token_id: int = 0) -> RolloutBatch:
    """Merge batches (e.g. several generation rounds) into one, rows in order.

    Prompts are left-padded and completions right-padded to the widest batch with `pad_token_id`
    (masks and behaviour log-probs with 0; padded ids sit under mask 0, so their value only shows
    when decoding). Group ids are shifted so that groups of different
    batches never share an id: batch k's ids are offset by the number of ids used before it
    (max id + 1 of each earlier batch).
    """
    if not batches:
        raise ValueError("concat needs at least one batch")
    prompt_width = max(b.prompt_ids.shape[1] for b in batches)
    completion_width = max(b.completion_ids.shape[1] for b in batches)
    group_ids, offset = [], 0
    for batch in batches:
        group_ids.append(batch.group_ids + offset)
        if len(batch):
            offset += int(batch.group_ids.max()) + 1
    return RolloutBatch(
        prompt_ids=torch.cat([_pad_to(b.prompt_ids, prompt_width, pad_token_id, left=True) for b in batches]),
        prompt_mask=torch.cat([_pad_to(b.prompt_mask, prompt_width, 0, left=True) for b in batches]),
        completion_ids=torch.cat(
            [_pad_to(b.completion_ids, completion_width, pad_token_id, left=False) for b in batches]
        ),
        completion_mask=torch.cat(
            [_pad_to(b.completion_mask, completion_width, 0, left=False) for b in batches]
        ),
        behaviour_logprobs=torch.cat(
            [_pad_to(b.behaviour_logprobs, completion_width, 0.0, left=False) for b in batches]
        ),
        finish_reasons=[r for b in batches for r in b.finish_reasons],
        group_ids=torch.cat(group_ids),
        prompts=[p for b in batches for p in b.prompts],
        completions=[c for b in batches for c in b.completions],
        policy_mask=None if all(b.policy_mask is None for b in batches) else torch.cat(
            [_pad_to(b.policy_tokens, completion_width, 0, left=False) for b in batches]),
        trajectories=None if any(b.trajectories is None for b in batches) else [
            t for b in batches for t in b.trajectories],
    )


concat = concat_rollouts  # short alias
