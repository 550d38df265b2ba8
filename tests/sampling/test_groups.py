from __future__ import annotations

import torch

from grpokit.rollout.types import RolloutBatch, SamplingParams
from grpokit.sampling.groups import expand_per_group, generate_groups


class _RecordingEngine:
    """Completions "<prompt>|<k>" with prompt width = len(prompt) tokens; records each call."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, n, sampling):
        self.calls.append((list(prompts), n, sampling.seed))
        rows = [(p, k) for p in prompts for k in range(n)]
        width = max(len(p) for p in prompts)
        prompt_ids = torch.tensor([[0] * (width - len(p)) + [ord(c) for c in p] for p, _ in rows])
        completion_ids = torch.tensor([[k + 1, 0] for _, k in rows])
        return RolloutBatch(
            prompt_ids=prompt_ids,
            prompt_mask=(prompt_ids != 0).long(),
            completion_ids=completion_ids,
            completion_mask=torch.tensor([[1, 0]] * len(rows)),
            behaviour_logprobs=torch.zeros(len(rows), 2),
            finish_reasons=["stop"] * len(rows),
            group_ids=torch.arange(len(prompts)).repeat_interleave(n),
            prompts=[p for p, _ in rows],
            completions=[f"{p}|{k}" for p, k in rows],
        )


def test_unequal_groups_come_back_prompt_major_with_group_id_equal_to_the_prompt_position():
    engine = _RecordingEngine()
    rollout = generate_groups(engine, ["a", "bbb", "cc"], [3, 2, 3], SamplingParams(seed=10))
    assert rollout.completions == ["a|0", "a|1", "a|2", "bbb|0", "bbb|1", "cc|0", "cc|1", "cc|2"]
    assert rollout.group_ids.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    assert rollout.prompt_mask.sum(1).tolist() == [1, 1, 1, 3, 3, 2, 2, 2]  # prompts re-padded to one width
    # One call per distinct size, each with its own seed.
    assert [(p, n) for p, n, _ in engine.calls] == [(["bbb"], 2), (["a", "cc"], 3)]
    assert len({seed for _, _, seed in engine.calls}) == 2


def test_a_single_size_is_one_plain_engine_call_with_the_given_seed():
    engine = _RecordingEngine()
    rollout = generate_groups(engine, ["a", "b"], [2, 2], SamplingParams(seed=10))
    assert engine.calls == [(["a", "b"], 2, 10)]
    assert rollout.group_ids.tolist() == [0, 0, 1, 1]


def test_columns_are_repeated_once_per_row_of_their_group():
    assert expand_per_group({"answer": ["1", "2"]}, [1, 3]) == {"answer": ["1", "2", "2", "2"]}


class _SeedRecordingEngine(_RecordingEngine):
    def generate(self, prompts, n, sampling, *, prompt_seeds=None):
        self.calls.append((list(prompts), n, list(prompt_seeds)))
        return super().generate(prompts, n, sampling)


def test_each_prompt_seed_travels_with_its_prompt_into_the_per_size_calls():
    engine = _SeedRecordingEngine()
    generate_groups(engine, ["a", "bbb", "cc"], [3, 2, 3], SamplingParams(seed=10), prompt_seeds=[11, 22, 33])
    seeded_calls = [call for call in engine.calls if isinstance(call[2], list)]
    assert seeded_calls == [(["bbb"], 2, [22]), (["a", "cc"], 3, [11, 33])]
