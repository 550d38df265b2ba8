from __future__ import annotations

import torch

from grpokit.trainers.batching import (
    TrainingBatch,
    micro_batch_rows,
    mini_batch_rows,
    model_inputs,
    token_keys,
)


def _batch() -> TrainingBatch:
    # Two groups of two; prompt column 0 is padding for every row; completion column 3 is unused.
    prompt_ids = torch.tensor([[0, 0, 5], [0, 0, 5], [0, 6, 7], [0, 6, 7]])
    prompt_mask = (prompt_ids != 0).long()
    completion_ids = torch.tensor([[8, 2, 0, 0], [8, 9, 2, 0], [9, 2, 0, 0], [2, 0, 0, 0]])
    completion_mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]])
    return TrainingBatch(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
        completion_mask=completion_mask, group_ids=torch.tensor([0, 0, 1, 1]),
        loss_mask=completion_mask.clone(), advantages=torch.tensor([1.0, -1.0, 0.5, -0.5]),
        behaviour_logprobs=-completion_mask.float(),
    )


def test_select_trims_padding_columns_no_row_uses():
    picked = _batch().select(torch.tensor([0, 1]))
    assert picked.prompt_ids.tolist() == [[5], [5]]  # both leading pad columns dropped
    assert picked.completion_ids.tolist() == [[8, 2, 0], [8, 9, 2]]
    assert picked.advantages.tolist() == [1.0, -1.0]
    only_short = _batch().select(torch.tensor([3]))
    assert only_short.completion_ids.tolist() == [[2]]
    assert only_short.prompt_ids.tolist() == [[6, 7]]


def test_model_inputs_attend_to_prompt_and_generated_tokens_only():
    input_ids, attention, num_completion = model_inputs(_batch())
    assert num_completion == 4
    assert input_ids.shape == (4, 7)
    assert attention[1].tolist() == [0, 0, 1, 1, 1, 1, 0]


def test_mini_batches_keep_groups_whole_and_cover_every_row_once():
    group_ids = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])  # unequal group sizes
    parts = mini_batch_rows(group_ids, 2, torch.Generator().manual_seed(0))
    assert len(parts) == 2
    assert sorted(torch.cat(parts).tolist()) == list(range(10))
    for rows in parts:
        for g in group_ids[rows].unique():
            assert set((group_ids == g).nonzero().flatten().tolist()) <= set(rows.tolist())


def test_micro_batches_split_rows_in_order():
    assert [r.tolist() for r in micro_batch_rows(torch.arange(5), 2)] == [[0, 1], [2, 3], [4]]


def test_token_keys_depend_on_the_global_row_not_on_who_asks():
    """Clip-Cov's keys: rows 4..7 of a global batch of 8 get the same keys whether one process asks for all
    rows or the second of two processes asks for its own."""
    everything = token_keys(torch.Generator().manual_seed(3), 8, 5, torch.arange(8))
    second_half = token_keys(torch.Generator().manual_seed(3), 8, 5, torch.arange(4) + 4)
    assert everything.shape == (8, 5) and everything.dtype == torch.float64
    assert torch.equal(second_half, everything[4:])
    assert ((everything >= 0) & (everything < 1)).all() and len(everything.unique()) == 40
