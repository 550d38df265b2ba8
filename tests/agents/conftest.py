"""Tiny char-level policies with a tool-aware chat template, and a scripted engine for hand-built episodes."""

from __future__ import annotations

import pytest
import torch

from grpokit.models import build_char_tokenizer, build_tiny_causal_lm
from grpokit.rollout.types import FINISH_LENGTH, FINISH_STOP, RolloutBatch

# Tools listed by name; an assistant turn closes with the eos token (so the policy's sampled <eos> is the
# template's own closing and only the "\n" after it is inserted); other roles close with a tag.
TOOL_TEMPLATE = (
    "{% if tools %}<tools>{% for t in tools %}{{ t.function.name }};{% endfor %}</tools>{{ '\\n' }}{% endif %}"
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}"
    "{% if m.role == 'assistant' %}<eos>{% else %}</{{ m.role }}>{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def tool_tokenizer():
    return build_char_tokenizer(chat_template=TOOL_TEMPLATE)


def tiny_tool_model(tokenizer, seed: int = 0):
    return build_tiny_causal_lm(len(tokenizer), hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                intermediate_size=64, max_position_embeddings=1024, seed=seed)


class ThreeTurnEnvironment:
    """Answers turns t = 1, 2 with a `role` message whatever the policy wrote, then ends with reward 1: every
    episode that is not cut has three turns (a tiny random model writes no tool calls of its own)."""

    role = "user"

    def __init__(self, **_):
        self.turn = 0

    def reset(self, row):
        return [{"role": "user", "content": row["prompt"]}]

    def reply(self, turn: int) -> str:
        return f"again {turn}"

    def step(self, message):
        self.turn += 1
        if self.turn == 3:
            return [], 1.0, True
        return [{"role": self.role, "content": self.reply(self.turn)}], None, False


class ScriptedEngine:
    """Plays given assistant turns, so that an episode's calls are known in advance.

    `script[user_text]` is the list of turns for the episode whose first user message is `user_text`; the
    turn index is the number of assistant headers in the context minus one. Each turn ends with <eos>
    (cut at max_new_tokens: finish "length"); its behaviour log-probs are a recognisable −0.5."""

    def __init__(self, tokenizer, script: dict[str, list[str]]):
        self.tokenizer = tokenizer
        self.script = script
        self.pad_token_id = tokenizer.pad_token_id
        self.device = torch.device("cpu")
        self.calls: list[int] = []  # batch size of every generate_ids call

    def sync_weights(self, model) -> None:
        pass

    def generate_ids(self, prompt_token_ids, n, sampling, *, prompt_seeds=None, prompts=None) -> RolloutBatch:
        assert n == 1
        self.calls.append(len(prompt_token_ids))
        rows, finish = [], []
        for ids in prompt_token_ids:
            context = self.tokenizer.decode(ids, skip_special_tokens=False)
            user = next(u for u in self.script if f"<user>{u}</user>" in context)
            turn = context.count("<assistant>") - 1
            turns = self.script[user]
            text = turns[turn] if turn < len(turns) else "done"
            tokens = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
            finish.append(FINISH_STOP if len(tokens) <= sampling.max_new_tokens else FINISH_LENGTH)
            rows.append(tokens[: sampling.max_new_tokens])
        width = max(len(r) for r in rows)
        completion = torch.full((len(rows), width), self.pad_token_id)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            completion[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        prompt = torch.ones((len(rows), 1), dtype=torch.long)
        return RolloutBatch(prompt_ids=prompt, prompt_mask=prompt, completion_ids=completion, completion_mask=mask,
                            behaviour_logprobs=-0.5 * mask.float(), finish_reasons=finish,
                            group_ids=torch.arange(len(rows)), prompts=[""] * len(rows),
                            completions=[""] * len(rows))


@pytest.fixture
def tokenizer():
    return tool_tokenizer()


@pytest.fixture
def scripted_engine():
    """The `ScriptedEngine` class: `scripted_engine(tokenizer, {user_text: [turn, ...]})`."""
    return ScriptedEngine


@pytest.fixture
def tool_model():
    """`tool_model(tokenizer, seed=0)`: a tiny random Qwen2 for the char tokenizer, 1024 positions."""
    return tiny_tool_model


@pytest.fixture
def make_tool_tokenizer():
    return tool_tokenizer
