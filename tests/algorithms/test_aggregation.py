from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from grpokit.algorithms import AGGREGATION_MODES, aggregate_loss

from ._strategies import FAST, random_batch

SPEC_LOSS = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
SPEC_MASK = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0]])


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token_mean", 0.25),
        ("seq_mean_token_mean", 0.5),
        ("seq_mean_token_sum", 0.5),
        ("seq_mean_token_sum_norm", 0.125),
        ("token_sum", 1.0),
    ],
)
def test_spec_case(mode, expected):
    assert aggregate_loss(SPEC_LOSS, SPEC_MASK, mode, max_len=4).item() == pytest.approx(expected)


def test_padding_values_never_leak_even_when_nan():
    loss = SPEC_LOSS.clone()
    loss[0, 1:] = float("nan")
    for mode in AGGREGATION_MODES:
        assert torch.isfinite(aggregate_loss(loss, SPEC_MASK, mode, max_len=4))


def test_sum_norm_requires_max_len():
    with pytest.raises(ValueError, match="max_len"):
        aggregate_loss(SPEC_LOSS, SPEC_MASK, "seq_mean_token_sum_norm")


def test_unknown_mode_lists_modes():
    with pytest.raises(ValueError, match="token_mean"):
        aggregate_loss(SPEC_LOSS, SPEC_MASK, "mean")


def test_sequence_level_loss_broadcasts_over_tokens():
    per_sequence = torch.tensor([[2.0], [1.0]])
    assert aggregate_loss(per_sequence, SPEC_MASK, "token_mean").item() == pytest.approx((2 + 3) / 4)


@FAST
@given(
    seed=st.integers(0, 10_000),
    batch=st.integers(2, 9),
    length=st.integers(1, 7),
    num_splits=st.integers(2, 4),
    mode=st.sampled_from(AGGREGATION_MODES),
)
def test_micro_batches_with_global_counts_sum_to_full_batch(seed, batch, length, num_splits, mode):
    data = random_batch(seed, batch, length, min_len=0)
    loss, mask = data["logp"], data["mask"]
    full = aggregate_loss(loss, mask, mode, max_len=length)
    counts = {"num_sequences": batch, "num_tokens": mask.sum().clamp(min=1), "max_len": length}
    parts = [
        aggregate_loss(l_part, m_part, mode, **counts)
        for l_part, m_part in zip(loss.tensor_split(num_splits), mask.tensor_split(num_splits))
    ]
    torch.testing.assert_close(sum(parts), full)


def test_token_sum_has_no_denominator_so_every_valid_token_weighs_one():
    loss = torch.tensor([[1.0, 2.0, 0.5], [3.0, 4.0, 9.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    value = aggregate_loss(loss, mask, "token_sum", num_sequences=99, num_tokens=99)  # counts are ignored
    (grad,) = torch.autograd.grad(value, loss)
    assert value.item() == 6.0
    torch.testing.assert_close(grad, mask.float())
