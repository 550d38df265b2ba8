from __future__ import annotations

from collections import Counter

import pytest

from grpokit.tasks.arithmetic import mixed_difficulty_split


def test_buckets_hold_the_asked_counts_with_exact_answers_and_disjoint_splits():
    split = mixed_difficulty_split(
        "+*",
        (1, 2, 3),
        train_per_bucket={"+2": 30, "*3": 10, "+1": 80},
        heldout_per_bucket={"+2": 10, "*3": 5, "+1": 20},
        seed=3,
    )
    assert Counter(r["bucket"] for r in split.train) == {"+2": 30, "*3": 10, "+1": 80}
    assert Counter(r["bucket"] for r in split.heldout) == {"+2": 10, "*3": 5, "+1": 20}
    assert not {r["prompt"] for r in split.train} & {r["prompt"] for r in split.heldout}
    for record in split.train + split.heldout:
        a, op, b = record["prompt"][:-1].partition(record["bucket"][0])
        assert len(a) == len(b) == int(record["bucket"][1]) or record["bucket"][1] == "1"
        assert int(record["answer"]) == (int(a) + int(b) if op == "+" else int(a) * int(b))


def test_a_small_bucket_is_split_in_proportion_and_the_split_is_seeded():
    split = mixed_difficulty_split("*", (1,), train_per_bucket=300, heldout_per_bucket=100, seed=0)
    assert (len(split.train), len(split.heldout)) == (75, 25)  # 100 one-digit products, split 3:1
    assert split == mixed_difficulty_split("*", (1,), train_per_bucket=300, heldout_per_bucket=100, seed=0)
    with pytest.raises(ValueError, match="unknown operation"):
        mixed_difficulty_split("/")
