from __future__ import annotations

import pytest
import torch

from grpokit.algorithms import default_overlong_cache_len, overlong_filter_mask, soft_overlong_penalty


def test_soft_overlong_spec_cases():
    lengths = torch.tensor([16384, 18432, 20480, 20481, 100])
    out = soft_overlong_penalty(lengths, max_len=20480, cache_len=4096)
    torch.testing.assert_close(out, torch.tensor([0.0, -0.5, -1.0, -1.0, 0.0]))


def test_cache_longer_than_max_len_is_rejected():
    with pytest.raises(ValueError, match="cache_len"):
        soft_overlong_penalty(torch.tensor([10]), max_len=256, cache_len=4096)


def test_default_cache_is_a_fifth_of_max_len():
    assert default_overlong_cache_len(20480) == 4096


def test_overlong_filter_zeroes_truncated_rows_and_keeps_dtype():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    out = overlong_filter_mask(torch.tensor([False, True]), mask)
    assert out.tolist() == [[1, 1, 0], [0, 0, 0]] and out.dtype == mask.dtype
    assert overlong_filter_mask(torch.tensor([True, False]), mask.bool()).tolist() == [
        [False] * 3,
        [True] * 3,
    ]
