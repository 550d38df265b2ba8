"""A short supervised warm-up: teacher-forced cross-entropy on completion tokens only.

RL from a random model has nothing to reinforce; the demo and the experiments first teach the
output format with a few hundred supervised steps, then let GRPO improve what is sampled.
The prompt is encoded exactly as the rollout engine encodes it, so the warm-up trains the same
token sequences that will later be sampled.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


def encode_pairs(tokenizer, prompts: Sequence[str], completions: Sequence[str]) -> tuple[torch.Tensor, ...]:
    """Right-padded input ids, attention mask and a loss mask that is 1 on completion tokens + EOS."""
    rows, targets = [], []
    for prompt, completion in zip(prompts, completions):
        prompt_ids = tokenizer(prompt)["input_ids"]
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(prompt_ids + completion_ids)
        targets.append([0] * len(prompt_ids) + [1] * len(completion_ids))
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, (row, target) in enumerate(zip(rows, targets)):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention[i, : len(row)] = 1
        loss_mask[i, : len(target)] = torch.tensor(target, dtype=torch.float32)
    return input_ids, attention, loss_mask


def completion_cross_entropy(model, input_ids, attention_mask, loss_mask) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions whose *target* token is a completion token."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    targets = input_ids[:, 1:]
    weights = loss_mask[:, 1:]
    per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="none")
    return (per_token * weights.reshape(-1)).sum() / weights.sum().clamp(min=1)


def supervised_warmup(model, tokenizer, pairs: Sequence[tuple[str, str]], *, steps: int, batch_size: int,
                      learning_rate: float, seed: int = 0, stop_check: Callable[[int], bool] | None = None,
                      check_every: int = 25) -> list[float]:
    """Train on random mini-batches of (prompt, completion) pairs; returns the loss per step done.

    `stop_check(step)` is called every `check_every` steps (after the update) and ends the warm-up
    when it returns True: the demo stops as soon as the policy samples right answers often enough.
    """
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    losses: list[float] = []
    for step in range(1, steps + 1):
        model.train()
        batch = [pairs[rng.randrange(len(pairs))] for _ in range(batch_size)]
        input_ids, attention, loss_mask = encode_pairs(tokenizer, [p for p, _ in batch], [c for _, c in batch])
        loss = completion_cross_entropy(model, input_ids, attention, loss_mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        if stop_check is not None and step % check_every == 0 and stop_check(step):
            break
    return losses
