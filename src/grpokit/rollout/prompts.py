"""Prompts as every engine feeds them: token ids from the trainer's tokenizer, left-padded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def pad_token_id_of(tokenizer: Any) -> int:
    """The tokenizer's pad token, else its eos (as HF generation does); an error when it has neither."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token")
    return int(pad)


def encode_prompts(tokenizer: Any, prompts: Sequence[str], *, add_special_tokens: bool) -> list[list[int]]:
    """Token ids per prompt; an empty one is an error (sampling needs a token to condition on)."""
    encoded = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
    if any(len(ids) == 0 for ids in encoded):
        raise ValueError("empty prompt: the sampler needs at least one prompt token to condition on")
    return [list(ids) for ids in encoded]


def left_pad(token_ids: Sequence[Sequence[int]], pad_token_id: int) -> tuple[Tensor, Tensor]:
    """(ids [N, W], mask [N, W]) long, each row right-aligned: pads on the left, mask 1 on real tokens.

    Case: [[5, 6], [7]] with pad 0 → ids [[5, 6], [0, 7]], mask [[1, 1], [0, 1]].
    """
    width = max(len(ids) for ids in token_ids)
    ids_out = torch.full((len(token_ids), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(token_ids), width), dtype=torch.long)
    for row, ids in enumerate(token_ids):
        ids_out[row, width - len(ids):] = torch.tensor(list(ids), dtype=torch.long)
        mask[row, width - len(ids):] = 1
    return ids_out, mask
