"""Hand-built episodes: where tool tokens go, how episodes end, and that the trainer sees exactly the sampled ids."""

from __future__ import annotations

import time

import pytest
import torch

from grpokit.agents import (
    AgentSettings,
    EpisodeEngine,
    HermesParser,
    ToolRunner,
    episode_metrics,
    resolve_tools,
)
from grpokit.agents.environment import environment_factory
from grpokit.rollout.types import SamplingParams

from .conftest import ThreeTurnEnvironment

CALL = '<tool_call>{{"name": "calculator", "arguments": {{"expression": "{}"}}}}</tool_call>'


@pytest.fixture
def scripted_episodes(scripted_engine):
    """`scripted_episodes(tokenizer, script, tools=..., max_turns=..., max_episode_tokens=..., timeout=...)`
    → (EpisodeEngine over a ScriptedEngine, the ScriptedEngine)."""
    def build(tokenizer, script, **options):
        return _scripted_episodes(scripted_engine, tokenizer, script, **options)

    return build


def _scripted_episodes(scripted_engine, tokenizer, script, *, tools=("calculator",), max_turns=4,
                       max_episode_tokens=512, timeout=5.0):
    engine = scripted_engine(tokenizer, script)
    runner = ToolRunner(resolve_tools(list(tools)), timeout_seconds=timeout)
    factory = environment_factory(None, tools=runner, parser=HermesParser())
    agent = EpisodeEngine(engine, tokenizer, factory, tool_schemas=runner.schemas,
                          settings=AgentSettings(max_turns=max_turns, max_episode_tokens=max_episode_tokens))
    return agent, engine


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_tool_tokens_sit_between_turns_with_loss_mask_zero(tokenizer, scripted_episodes):
    turn1, turn2 = CALL.format("12*34"), "<answer>408</answer>"
    agent, _ = scripted_episodes(tokenizer, {"12*34?": [turn1, turn2]})
    batch = agent.generate_episodes([{"prompt": "12*34?"}], 1, SamplingParams(max_new_tokens=200, seed=0))
    eos = tokenizer.eos_token_id
    # The sampled <eos> closes the assistant turn in this template, so only "\n" of the closing is inserted,
    # then the tool message and the next assistant header — rendered by the template, encoded on their own.
    inserted = ids(tokenizer, "\n<tool>408</tool>\n<assistant>")
    expected = ids(tokenizer, turn1) + [eos] + inserted + ids(tokenizer, turn2) + [eos]
    length = len(expected)
    assert batch.completion_ids[0, :length].tolist() == expected
    assert batch.completion_mask[0].tolist() == [1] * length
    policy = [1] * (len(ids(tokenizer, turn1)) + 1) + [0] * len(inserted) + [1] * (len(ids(tokenizer, turn2)) + 1)
    assert batch.policy_mask[0].tolist() == policy
    assert batch.behaviour_logprobs[0].tolist() == [-0.5 if p else 0.0 for p in policy]
    assert batch.prompt_ids[0].tolist() == ids(tokenizer, "<tools>calculator;</tools>\n<user>12*34?</user>\n<assistant>")
    episode = batch.trajectories[0]
    assert [m["role"] for m in episode.messages] == ["user", "assistant", "tool", "assistant"]
    assert episode.messages[1]["tool_calls"][0]["function"] == {"name": "calculator", "arguments": {"expression": "12*34"}}
    assert episode.messages[2]["content"] == "408"
    assert (episode.turns, episode.end, episode.tool_stats.valid) == (2, "answer", 1)
    assert (episode.policy_tokens, episode.inserted_tokens) == (sum(policy), len(inserted))
    assert batch.completions == [turn2] and batch.finish_reasons == ["stop"]


def test_max_turns_ends_the_episode_without_a_trailing_tool_message(tokenizer, scripted_episodes):
    call = CALL.format("1+1")
    agent, _ = scripted_episodes(tokenizer, {"loop": [call] * 10}, max_turns=2)
    batch = agent.generate_episodes([{"prompt": "loop"}], 1, SamplingParams(max_new_tokens=200, seed=0))
    episode = batch.trajectories[0]
    assert (episode.turns, episode.end, episode.tool_stats.valid) == (2, "max_turns", 2)
    # the last tool result is in the log but not in the sequence: the sequence ends with the policy's <eos>
    assert episode.messages[-1]["role"] == "tool"
    length = int(batch.completion_mask[0].sum())
    assert batch.completion_ids[0, length - 1] == tokenizer.eos_token_id and batch.policy_mask[0, length - 1] == 1
    assert batch.finish_reasons == ["stop"]


def test_token_budget_cuts_the_episode(tokenizer, scripted_episodes):
    call = CALL.format("1+1")
    first_turn = len(ids(tokenizer, call)) + 1
    inserted = len(ids(tokenizer, "\n<tool>2</tool>\n<assistant>"))
    budget = first_turn + inserted + 5  # room for the tool message and 5 tokens of the second turn
    agent, _ = scripted_episodes(tokenizer, {"q": [call, call]}, max_episode_tokens=budget)
    batch = agent.generate_episodes([{"prompt": "q"}], 1, SamplingParams(max_new_tokens=200, seed=0))
    episode = batch.trajectories[0]
    assert episode.end == "budget" and batch.finish_reasons == ["length"]
    assert int(batch.completion_mask[0].sum()) == budget
    assert (episode.policy_tokens, episode.inserted_tokens) == (first_turn + 5, inserted)


def test_a_tool_message_that_does_not_fit_ends_the_episode_at_the_budget(tokenizer, scripted_episodes):
    call = CALL.format("1+1")
    budget = len(ids(tokenizer, call)) + 1 + 10  # the tool message (26 tokens) does not fit
    agent, _ = scripted_episodes(tokenizer, {"q": [call, call]}, max_episode_tokens=budget)
    batch = agent.generate_episodes([{"prompt": "q"}], 1, SamplingParams(max_new_tokens=200, seed=0))
    assert batch.trajectories[0].end == "budget" and batch.trajectories[0].inserted_tokens == 0
    assert int(batch.completion_mask[0].sum()) == len(ids(tokenizer, call)) + 1


def test_turn_cut_at_max_new_tokens_ends_as_length(tokenizer, scripted_episodes):
    agent, _ = scripted_episodes(tokenizer, {"q": ["x" * 50]})
    batch = agent.generate_episodes([{"prompt": "q"}], 1, SamplingParams(max_new_tokens=10, seed=0))
    assert batch.trajectories[0].end == "length" and int(batch.policy_mask.sum()) == 10


def test_malformed_call_gets_an_error_back_and_the_model_recovers(tokenizer, scripted_episodes):
    script = {"q": ['<tool_call>{"name": "calculator", "arguments": {"expression": "2*"</tool_call>',
                    CALL.format("2*21"), "<answer>42</answer>"]}
    agent, _ = scripted_episodes(tokenizer, script)
    batch = agent.generate_episodes([{"prompt": "q"}], 1, SamplingParams(max_new_tokens=200, seed=0))
    episode = batch.trajectories[0]
    assert [m["role"] for m in episode.messages] == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert episode.messages[2]["content"].startswith("error: malformed tool call: not valid JSON")
    assert episode.messages[4]["content"] == "42"
    assert (episode.tool_stats.malformed, episode.tool_stats.valid, episode.tool_stats.failed) == (1, 1, 0)
    assert episode.end == "answer" and batch.completions == ["<answer>42</answer>"]


def _explode(code: str) -> str:
    """Fails.

    Args:
        code: Ignored.
    """
    raise OSError("disk on fire")


def _hang(code: str) -> str:
    """Hangs.

    Args:
        code: Ignored.
    """
    time.sleep(5)
    return "late"


def test_tool_exceptions_and_timeouts_are_reported_to_the_model(tokenizer, scripted_episodes):
    calls = ('<tool_call>{"name": "_explode", "arguments": {"code": "a"}}</tool_call>'
             '<tool_call>{"name": "_hang", "arguments": {"code": "b"}}</tool_call>')
    agent, _ = scripted_episodes(tokenizer, {"q": [calls, "<answer>?</answer>"]}, tools=(_explode, _hang), timeout=0.3)
    started = time.perf_counter()
    batch = agent.generate_episodes([{"prompt": "q"}], 1, SamplingParams(max_new_tokens=200, seed=0))
    assert time.perf_counter() - started < 3.0
    episode = batch.trajectories[0]
    assert episode.messages[2]["content"] == "error: _explode: OSError: disk on fire"
    assert episode.messages[3]["content"] == "error: _hang timed out after 0.3 s"
    assert (episode.tool_stats.valid, episode.tool_stats.failed, episode.end) == (2, 2, "answer")
    assert episode_metrics(batch.trajectories)["agent/tool_calls_failed"] == 2.0


def test_finished_episodes_leave_the_batch(tokenizer, scripted_episodes):
    script = {"short": ["<answer>1</answer>"], "long": [CALL.format("1+1"), CALL.format("2+2"), "<answer>4</answer>"]}
    agent, engine = scripted_episodes(tokenizer, script)
    batch = agent.generate_episodes([{"prompt": "short"}, {"prompt": "long"}], 2, SamplingParams(max_new_tokens=200))
    assert engine.calls == [4, 2, 2]  # turn 1: every episode; then only the two "long" ones
    assert [t.turns for t in batch.trajectories] == [1, 1, 3, 3]
    assert batch.group_ids.tolist() == [0, 0, 1, 1]
    metrics = episode_metrics(batch.trajectories)
    assert metrics["agent/turns_mean"] == 2.0 and metrics["agent/episodes_with_valid_call"] == 0.5


# ----------------------------------------------------------------------------- the real policy


TalkativeEnvironment = ThreeTurnEnvironment  # answers turns 1, 2 with a user message, then gives a reward


@pytest.fixture
def real_episodes(tool_model):
    """`real_episodes(tokenizer, rows, n, seed=3, prompt_seeds=None)` → (model, batch of real episodes)."""
    return lambda *args, **options: _real_episodes(tool_model, *args, **options)


def _real_episodes(tiny_tool_model, tokenizer, rows, n, *, seed=3, prompt_seeds=None, model_seed=0):
    from grpokit.rollout.inprocess import InProcessEngine

    model = tiny_tool_model(tokenizer, seed=model_seed)
    engine = InProcessEngine(model, tokenizer)
    agent = EpisodeEngine(engine, tokenizer, TalkativeEnvironment, tool_schemas=[],
                          settings=AgentSettings(max_turns=3, max_episode_tokens=120))
    # A random tiny model rarely samples <eos>: letters stop a turn too (a stop token is kept in the turn).
    stops = tuple(ids(tokenizer, "abcdefghijklmnopqrstuvwxyz"))
    sampling = SamplingParams(max_new_tokens=12, temperature=1.0, seed=seed, stop_token_ids=stops)
    return model, agent.generate_episodes(rows, n, sampling, prompt_seeds=prompt_seeds)


def test_trainer_logprobs_over_the_episode_equal_the_engines_on_every_policy_token(tokenizer, real_episodes):
    from grpokit.models.logprobs import sequence_logprobs

    model, batch = real_episodes(tokenizer, [{"prompt": "hi"}, {"prompt": "12+7"}], 2)
    assert any(t.turns == 3 and t.end == "done" for t in batch.trajectories)  # real multi-turn episodes
    assert [t.environment_reward for t in batch.trajectories if t.end == "done"][0] == 1.0
    input_ids, attention_mask = batch.model_inputs()
    with torch.no_grad():
        logp, _ = sequence_logprobs(model, input_ids, attention_mask, batch.completion_ids.shape[1])
    policy = batch.policy_mask.bool()
    # The engine's log-prob of each sampled token came from a KV-cached decode of the same ids; the trainer's
    # from one full forward: the same float32 math in a different order, |Δ| ~1e-6, far below any real mismatch.
    torch.testing.assert_close(logp[policy], batch.behaviour_logprobs[policy], rtol=0, atol=2e-5)
    assert (batch.behaviour_logprobs[~policy] == 0).all()

    # The single-turn path on the same prefix: the last turn of an episode as a completion of
    # (prompt + earlier turns + inserted messages) gives the same log-probs.
    row = next(i for i, t in enumerate(batch.trajectories) if t.turns == 3)
    length = int(batch.completion_mask[row].sum())
    inserted = (~policy[row, :length]).nonzero().flatten()
    last_turn_start = int(inserted[-1]) + 1
    prompt = torch.cat([batch.prompt_ids[row][batch.prompt_mask[row].bool()], batch.completion_ids[row, :last_turn_start]])
    completion = batch.completion_ids[row, last_turn_start:length]
    single = torch.cat([prompt, completion])[None]
    with torch.no_grad():
        single_logp, _ = sequence_logprobs(model, single, torch.ones_like(single), len(completion))
    torch.testing.assert_close(single_logp[0], logp[row, last_turn_start:length], rtol=0, atol=2e-5)


def test_tool_tokens_get_zero_gradient(tokenizer, real_episodes):
    from grpokit.algorithms.policy_loss import policy_loss
    from grpokit.algorithms.presets import get_preset
    from grpokit.models.logprobs import sequence_logprobs

    model, batch = real_episodes(tokenizer, [{"prompt": "hi"}], 4)
    input_ids, attention_mask = batch.model_inputs()
    logp, _ = sequence_logprobs(model, input_ids, attention_mask, batch.completion_ids.shape[1])
    logp.retain_grad()
    mask = batch.policy_mask
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    loss, _ = policy_loss(get_preset("grpo", beta=0.0), logp, logp.detach(), advantages, mask,
                          num_sequences=len(batch), num_tokens=int(mask.sum()), max_len=120)
    loss.backward()
    inserted = batch.completion_mask.bool() & ~mask.bool()
    assert inserted.any() and (logp.grad[inserted] == 0).all()
    assert (logp.grad[mask.bool()] != 0).all()


def test_an_episode_does_not_depend_on_the_others_in_its_batch(tokenizer, real_episodes):
    _, together = real_episodes(tokenizer, [{"prompt": "hi"}, {"prompt": "12+7"}], 2, prompt_seeds=[11, 22])
    _, alone = real_episodes(tokenizer, [{"prompt": "12+7"}], 2, prompt_seeds=[22])
    length = int(alone.completion_mask.sum(1).max())
    assert torch.equal(together.completion_ids[2:, :length], alone.completion_ids[:, :length])
    assert [t.messages for t in together.trajectories[2:]] == [t.messages for t in alone.trajectories]
    assert torch.equal(together.completion_mask[2:].sum(1), alone.completion_mask.sum(1))


def test_engine_without_token_id_sampling_is_refused(tokenizer):
    with pytest.raises(ValueError, match="cannot sample from token ids"):
        EpisodeEngine(object(), tokenizer, TalkativeEnvironment, tool_schemas=[])


def test_vllm_engines_get_every_later_turn_as_the_exact_token_ids_so_far(tokenizer):
    """The vLLM engines' shared client (`_TokenEngine.generate_ids`) with the server's answer scripted: the
    second request's prompt is the first prompt + the sampled ids + the inserted ids, never re-tokenized."""
    from grpokit.rollout.vllm_engine import _TokenEngine

    turns = [ids(tokenizer, CALL.format("6*7")) + [tokenizer.eos_token_id],
             ids(tokenizer, "<answer>42</answer>") + [tokenizer.eos_token_id]]

    class ScriptedServer(_TokenEngine):
        requests: list[dict] = []

        def _generate_rows(self, request):
            self.requests.append(request)
            turn = turns[len(self.requests) - 1]
            return [{"token_ids": turn, "logprobs": [-0.25] * len(turn), "finish_reason": "stop"}]

    engine = ScriptedServer(tokenizer, eos_token_ids=[tokenizer.eos_token_id])
    runner = ToolRunner(resolve_tools(["calculator"]))
    agent = EpisodeEngine(engine, tokenizer, environment_factory(None, tools=runner, parser=HermesParser()),
                          tool_schemas=runner.schemas)
    batch = agent.generate_episodes([{"prompt": "6*7?"}], 1, SamplingParams(max_new_tokens=100, seed=5))
    first, second = (r["prompt_token_ids"][0] for r in engine.requests)
    inserted = ids(tokenizer, "\n<tool>42</tool>\n<assistant>")
    assert second == first + turns[0] + inserted
    assert batch.completion_ids[0].tolist() == turns[0] + inserted + turns[1]
    assert batch.behaviour_logprobs[0].tolist() == [-0.25] * len(turns[0]) + [0.0] * len(inserted) + [-0.25] * len(
        turns[1])
    assert engine.requests[0]["seeds"] != engine.requests[1]["seeds"]  # each turn draws its own numbers


def test_an_environment_that_raises_is_a_one_line_error_naming_it(tokenizer, scripted_engine):
    from grpokit.agents.episodes import AgentEnvironmentError
    from grpokit.errors import GrpokitError

    class Broken(TalkativeEnvironment):
        def step(self, message):
            raise KeyError("score")

    agent = EpisodeEngine(scripted_engine(tokenizer, {"q": ["hello"]}), tokenizer, Broken, tool_schemas=[])
    with pytest.raises(AgentEnvironmentError, match="Broken.step raised KeyError: 'score'") as caught:
        agent.generate_episodes([{"prompt": "q"}], 1, SamplingParams(max_new_tokens=20))
    assert isinstance(caught.value, GrpokitError)
