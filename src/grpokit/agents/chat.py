"""Chat-template arithmetic for episodes: the first prompt, and the tokens inserted after a turn.

Token-in, token-out: the policy's turns are never decoded and re-encoded. Between two turns we
insert only the ids of the *new* text the chat template would render: the rest of the
assistant turn's closing after the stop token the policy sampled (e.g. the "\\n" after
"<|im_end|>"), the tool/environment messages, and the next assistant header. That text is found
by rendering a fixed two-message conversation with and without the new messages and taking the
difference — the template itself says what goes between turns.
"""

from __future__ import annotations

from typing import Any

_SENTINEL = "\u0000GRPOKIT-ASSISTANT-TURN\u0000"

# A Hermes/ChatML template with tools (the format of Qwen2.5 and SmolLM2 chats: <|im_start|>role ... <|im_end|>),
# for tokenizers whose own template does not show tools (SmolLM2's). `rollout.agent.chat_template: hermes`.
HERMES_CHAT_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n"
    "{%- if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n{% endif %}"
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
    "{%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}"
    "\n</tool_call><|im_end|>\n"
    "{%- elif messages[0]['role'] == 'system' %}<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message['content'] }}"
    "\n</tool_response><|im_end|>\n"
    "{%- elif message['role'] != 'system' %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CHAT_TEMPLATES = {"hermes": HERMES_CHAT_TEMPLATE}


class EpisodeTemplate:
    """Renders an episode's first prompt and the text inserted after each turn, with `tools` shown."""

    def __init__(self, tokenizer: Any, tools: list[dict], chat_template: str | None = None):
        self.tokenizer = tokenizer
        self.tools = tools or None
        self.chat_template = CHAT_TEMPLATES.get(chat_template, chat_template) if chat_template else None
        if self.chat_template is None and getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("the tokenizer has no chat template; episodes need one "
                             "(set rollout.agent.chat_template: hermes, or a Jinja template)")
        if self.tools and not self._shows_tools():
            raise ValueError("the tokenizer's chat template does not show the tools to the model; "
                             "set rollout.agent.chat_template: hermes (or a Jinja template that renders `tools`)")

    def render(self, messages: list[dict], *, add_generation_prompt: bool) -> str:
        text = self.tokenizer.apply_chat_template(messages, tools=self.tools, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt,
                                                  chat_template=self.chat_template)
        if not isinstance(text, str):
            raise TypeError(f"apply_chat_template returned {type(text).__name__}, expected text")
        return text

    def prompt_ids(self, messages: list[dict]) -> tuple[str, list[int]]:
        """The first prompt (generation header included), as text and ids."""
        text = self.render(messages, add_generation_prompt=True)
        return text, self.encode(text)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def inserted_text(self, observations: list[dict], stop_text: str) -> str:
        """What follows a policy turn that ended with `stop_text` (the sampled stop token's text):
        the rest of the turn's closing, the observation messages, the next assistant header."""
        base = [{"role": "user", "content": "?"}, {"role": "assistant", "content": _SENTINEL}]
        before = self.render(base, add_generation_prompt=False)
        after = self.render(base + list(observations), add_generation_prompt=True)
        if not after.startswith(before):
            raise ValueError("the chat template renders earlier messages differently once more follow; "
                             "episodes cannot extend it token by token")
        closing = before[before.rindex(_SENTINEL) + len(_SENTINEL):]
        if stop_text and closing.startswith(stop_text):
            closing = closing[len(stop_text):]
        return closing + after[len(before):]

    def _shows_tools(self) -> bool:
        messages = [{"role": "user", "content": "?"}]
        probe = [{"type": "function", "function": {"name": "grpokit_probe_tool", "description": "",
                                                     "parameters": {"type": "object", "properties": {}}}}]
        text = self.tokenizer.apply_chat_template(messages, tools=probe, tokenize=False, add_generation_prompt=True,
                                                  chat_template=self.chat_template)
        return "grpokit_probe_tool" in text
