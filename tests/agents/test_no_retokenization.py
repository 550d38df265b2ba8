"""Token-in, token-out with a tokenizer where decode → encode is NOT the identity (a BPE merge).

A sampler may emit a non-canonical split ("4", "2" where the tokenizer would encode "42" as one token). The
episode must keep exactly the sampled ids — in what the next turn conditions on and in what the trainer scores —
or the trainer's log-probs are those of a sequence the policy never sampled (silent off-policy error)."""

from __future__ import annotations

import string

import pytest

from grpokit.agents import EpisodeEngine, HermesParser, ToolRunner, resolve_tools
from grpokit.agents.environment import environment_factory
from grpokit.rollout.types import SamplingParams

from .conftest import TOOL_TEMPLATE

CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "42*1"}}</tool_call>'


@pytest.fixture
def bpe_tokenizer():
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(string.printable) - set("\x0b\x0c"))
    vocab = {c: i for i, c in enumerate(chars)}
    vocab["42"] = len(vocab)  # the one merge: "4" "2" → "42"
    model = tokenizers.models.BPE(vocab=vocab, merges=[("4", "2")])
    backend = tokenizers.Tokenizer(model)
    backend.decoder = tokenizers.decoders.Fuse()  # tokens are pieces of text: join them as they are
    backend.add_special_tokens(["<eos>", "<pad>"])
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>",
                                   chat_template=TOOL_TEMPLATE)


def test_sampled_ids_survive_every_turn_even_where_re_encoding_would_merge_them(bpe_tokenizer):
    from grpokit.rollout.vllm_engine import _TokenEngine

    tok = bpe_tokenizer
    eos = tok.eos_token_id

    def split_42(text: str) -> list[int]:  # the non-canonical ids a sampler may emit: "4", "2" for "42"
        out: list[int] = []
        for token in tok(text, add_special_tokens=False)["input_ids"]:
            split = token == tok.convert_tokens_to_ids("42")
            out += [tok.convert_tokens_to_ids("4"), tok.convert_tokens_to_ids("2")] if split else [token]
        return out

    turns = [split_42(CALL) + [eos], split_42("<answer>42</answer>") + [eos]]
    # The premise: decoding and re-encoding the sampled turn gives other ids.
    assert tok(tok.decode(turns[0][:-1]), add_special_tokens=False)["input_ids"] != turns[0][:-1]

    class ScriptedServer(_TokenEngine):
        requests: list[dict] = []

        def _generate_rows(self, request):
            self.requests.append(request)
            turn = turns[len(self.requests) - 1]
            return [{"token_ids": turn, "logprobs": [-0.25] * len(turn), "finish_reason": "stop"}]

    engine = ScriptedServer(tok, eos_token_ids=[eos])
    runner = ToolRunner(resolve_tools(["calculator"]))
    agent = EpisodeEngine(engine, tok, environment_factory(None, tools=runner, parser=HermesParser()),
                          tool_schemas=runner.schemas)
    batch = agent.generate_episodes([{"prompt": "What is 42 times 1?"}], 1, SamplingParams(max_new_tokens=200, seed=3))

    first, second = (r["prompt_token_ids"][0] for r in engine.requests)
    assert second[: len(first) + len(turns[0])] == first + turns[0]  # turn 2 conditions on the sampled ids
    completion = batch.completion_ids[0][batch.completion_mask[0].bool()].tolist()
    inserted = second[len(first) + len(turns[0]):]
    assert completion == turns[0] + inserted + turns[1]  # the trainer scores exactly what was sampled + inserted
    policy = batch.policy_tokens[0][batch.completion_mask[0].bool()].tolist()
    assert policy == [1] * len(turns[0]) + [0] * len(inserted) + [1] * len(turns[1])
    assert batch.trajectories[0].to_dict()  # the episode's messages are there for the logs
