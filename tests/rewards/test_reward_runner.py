from __future__ import annotations

import logging
import math
import threading
import time

import pytest
import torch

from grpokit.rewards import Reward, RewardError, RewardRunner, load_reward

PROMPTS = ["p0", "p0", "p1", "p1"]
COMPLETIONS = ["yes", "no", "yes please", "bad"]
GROUPS = [0, 0, 1, 1]


def says_yes(completions, **_):
    return [1.0 if c.startswith("yes") else 0.0 for c in completions]


def length_chars(completions, **_):
    return [float(len(c)) for c in completions]


def explodes_on_bad(completions, **_):
    for c in completions:
        if c == "bad":
            raise ValueError("cannot score this one")
    return [0.0] * len(completions)


def score(runner, **kwargs):
    return runner.score(PROMPTS, COMPLETIONS, GROUPS, **kwargs)


def test_total_is_the_weighted_sum_and_matrix_keeps_each_reward():
    runner = RewardRunner([Reward("yes", says_yes, weight=2.0), Reward("len", length_chars, weight=0.5)])
    result = score(runner)
    assert result.names == ["yes", "len"]
    assert result.matrix.tolist() == [[1.0, 3.0], [0.0, 2.0], [1.0, 10.0], [0.0, 3.0]]
    # 2·yes + 0.5·len
    assert result.total.tolist() == [3.5, 1.0, 7.0, 1.5]
    assert result.per_reward["len"].tolist() == [3.0, 2.0, 10.0, 3.0]
    assert result.metrics["rewards/yes/mean"] == 0.5 and result.metrics["rewards/yes/std"] == 0.5


def test_a_none_score_makes_only_that_rows_total_nan():
    def unsure(completions, **_):
        return [None if c == "no" else 1.0 for c in completions]

    result = score(RewardRunner([Reward("yes", says_yes), Reward("unsure", unsure)]))
    assert math.isnan(result.total[1]) and not torch.isnan(result.total[[0, 2, 3]]).any()
    assert result.metrics["rewards/unsure/none_count"] == 1.0
    assert result.metrics["rewards/total/nan_count"] == 1.0
    assert result.metrics["rewards/unsure/mean"] == 1.0  # over valid values only


def test_columns_and_completion_lengths_reach_the_functions():
    def gold(completions, answer, **_):
        return [float(c == a) for c, a in zip(completions, answer)]

    runner = RewardRunner([Reward("gold", gold), load_reward("soft_overlong", max_len=10, cache_len=4)])
    result = score(runner, columns={"answer": ["yes", "yes", "no", "bad"]}, completion_lengths=[1, 7, 10, 12])
    assert result.per_reward["gold"].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert result.per_reward["soft_overlong"].tolist() == [0.0, -0.25, -1.0, -1.0]


def test_raising_reward_stops_with_its_name_and_first_offending_sample():
    runner = RewardRunner([Reward("yes", says_yes), Reward("fragile", explodes_on_bad)], on_error="stop")
    with pytest.raises(RewardError) as caught:
        score(runner)
    error = caught.value
    assert error.reward_name == "fragile" and error.sample_index == 3
    assert "'fragile'" in str(error) and "cannot score this one" in str(error) and "'bad'" in str(error)


def test_raising_reward_under_none_policy_gives_none_and_is_counted(caplog):
    runner = RewardRunner([Reward("yes", says_yes), Reward("fragile", explodes_on_bad)], on_error="none")
    with caplog.at_level(logging.WARNING, logger="grpokit.rewards.runner"):
        result = score(runner)
    assert torch.isnan(result.per_reward["fragile"]).all() and torch.isnan(result.total).all()
    assert result.per_reward["yes"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert result.metrics["rewards/fragile/errors"] == 1.0 and result.metrics["rewards/yes/errors"] == 0.0
    assert result.metrics["rewards/fragile/none_count"] == 4.0
    assert [e.reward_name for e in result.errors] == ["fragile"]
    assert "fragile" in caplog.text


def test_slow_reward_hits_its_timeout():
    release = threading.Event()

    def slow(completions, **_):
        release.wait(10)
        return [0.0] * len(completions)

    rewards = [Reward("yes", says_yes), Reward("slow", slow, timeout_seconds=0.5)]
    try:
        start = time.monotonic()
        result = score(RewardRunner(rewards, on_error="none"))
        assert time.monotonic() - start < 3.0
        assert torch.isnan(result.per_reward["slow"]).all()
        assert "timed out" in str(result.errors[0])
        with pytest.raises(RewardError, match="'slow' failed: timed out after 0.5 s"):
            score(RewardRunner(rewards, on_error="stop"))
    finally:
        release.set()  # let the abandoned threads finish


def test_rewards_run_concurrently():
    # Each reward waits for the other at a barrier: this finishes only if both run at once.
    barrier = threading.Barrier(2, timeout=5)

    def meet(completions, **_):
        barrier.wait()
        return [1.0] * len(completions)

    result = score(RewardRunner([Reward("a", meet), Reward("b", meet)], max_workers=2))
    assert result.total.tolist() == [2.0] * 4


def test_main_thread_reward_runs_in_the_calling_thread():
    seen = []

    def where(completions, **_):
        seen.append(threading.current_thread() is threading.main_thread())
        return [0.0] * len(completions)

    score(RewardRunner([Reward("inline", where, main_thread=True), Reward("worker", where)]))
    assert sorted(seen) == [False, True]


def test_wrong_length_is_an_error_naming_the_reward():
    def short(completions, **_):
        return [1.0]

    with pytest.raises(RewardError, match="'short' failed: returned 1 scores for 4 completions"):
        score(RewardRunner([Reward("short", short)]))


def test_non_number_score_names_the_sample():
    def texty(completions, **_):
        return [1.0, "high", 0.0, 0.0]

    with pytest.raises(RewardError) as caught:
        score(RewardRunner([Reward("texty", texty)]))
    assert caught.value.sample_index == 1 and "'no'" in str(caught.value)


def test_misaligned_or_reserved_columns_are_caller_errors():
    runner = RewardRunner([Reward("yes", says_yes)])
    with pytest.raises(ValueError, match="4 entries"):
        score(runner, columns={"answer": ["a"]})
    with pytest.raises(ValueError, match="clash"):
        score(runner, columns={"completions": COMPLETIONS})


def nan_on_bad(completions, **_):
    return [math.nan if c == "bad" else 1.0 for c in completions]


def test_a_nan_score_stops_the_run_naming_the_reward_and_the_sample():
    with pytest.raises(RewardError) as caught:
        score(RewardRunner([Reward("fragile", nan_on_bad)]))
    message = str(caught.value)
    assert "reward 'fragile' failed: returned NaN" in message
    assert "sample 3" in message and "completion='bad'" in message  # index and an excerpt of the completion
    assert caught.value.sample_index == 3


def test_with_on_error_none_a_nan_score_is_none_counted_and_warned(caplog):
    runner = RewardRunner([Reward("fragile", nan_on_bad), Reward("yes", says_yes)], on_error="none")
    with caplog.at_level(logging.WARNING, logger="grpokit.rewards.runner"):
        result = score(runner)
    assert torch.isnan(result.per_reward["fragile"]).tolist() == [False, False, False, True]  # only the NaN sample
    assert result.metrics["rewards/fragile/nan_count"] == 1.0 and result.metrics["rewards/yes/nan_count"] == 0.0
    assert result.metrics["rewards/fragile/none_count"] == 1.0 and not result.errors
    assert "reward 'fragile' returned NaN for 1 of 4 samples (first: sample 3)" in caplog.text


def test_a_slow_reward_is_named_while_it_runs(monkeypatch, caplog):
    import grpokit.rewards.runner as runner_module

    monkeypatch.setattr(runner_module, "SLOW_REWARD_NOTICE_SECONDS", 0.1)

    def slow(completions, **_):
        time.sleep(0.35)
        return [0.0] * len(completions)

    with caplog.at_level(logging.WARNING, logger="grpokit.rewards.runner"):
        score(RewardRunner([Reward("slow", slow, timeout_seconds=30), Reward("yes", says_yes)]))
    notices = [r.getMessage() for r in caplog.records if "waiting for reward" in r.getMessage()]
    # Notices at 0.1, 0.2 and 0.3 s; a loaded CPU may delay the wake-ups, so at least one and at most three.
    assert 1 <= len(notices) <= 3
    assert all(n.startswith("waiting for reward 'slow' (") and "of its 30 s timeout" in n for n in notices)
