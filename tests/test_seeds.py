"""The seed strides are part of every recorded result (the demo line, the experiments): these are the values the
trainers used before the strides got names, computed by hand."""

from __future__ import annotations

from grpokit.seeds import (
    engine_prompt_seed,
    evaluation_seed,
    generation_call,
    group_call_seed,
    mini_batch_seed,
    sampling_seed,
    token_key_seed,
)


def test_every_stream_keeps_the_seed_recorded_runs_used():
    assert sampling_seed(2, 3) == 2_000_009  # 2·1 000 003 + 3
    assert generation_call(4, 1) == 69  # 4·17 + 1
    assert sampling_seed(0, generation_call(4, 1)) == 69
    assert mini_batch_seed(2, 3) == 15_841  # 2·7919 + 3
    assert token_key_seed(2, 3) == 209_461  # 2·104 729 + 3
    assert evaluation_seed(5) == 99_996  # 5 + 99 991
    assert [group_call_seed(10, call) for call in range(2)] == [7_929, 15_848]  # 10 + 7919·(call + 1)
    assert engine_prompt_seed(1, 2) == 1_131_077  # 1 000 003 + 2·65 537


def test_the_rounds_of_one_step_never_meet_the_next_steps():
    # Up to 17 generation rounds per step (the first and 16 dynamic-sampling ones) fit between two steps.
    calls = [generation_call(step, round_index) for step in range(5) for round_index in range(17)]
    assert len(set(calls)) == len(calls)
