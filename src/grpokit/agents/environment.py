"""Environments: what answers the policy between its turns.

The protocol (in the spirit of OpenEnv / gym), one instance per episode so it may keep state:

    reset(row: dict) -> list[dict]                       # the first messages, from a data-set row
    step(assistant_message: dict) -> (observations: list[dict], reward: float | None, done: bool)

`assistant_message` is {"role": "assistant", "content": <the turn's decoded text>}; `step` may add
"tool_calls" to it (they show in the logs). `observations` are chat messages (role "tool", "user",
...) rendered with the chat template and inserted after the turn; an empty list with done=False
also ends the episode (there is nothing to answer). `reward` is the environment's own score of
the episode so far (the last non-None one is kept; the built-in reward `environment` reads it).
A custom environment is named by `rollout.agent.environment: package.module:Factory`, where
`Factory(tools=..., parser=..., prompt_column=..., system_prompt=...)` builds one episode's
environment; subclassing `ToolEnvironment` keeps the tool handling. An exception in `reset` or
`step` is a bug of the environment: the run stops with `AgentEnvironmentError` naming it (a tool's
exception, by contrast, goes back to the model as a tool message).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from grpokit.agents.parsers import ToolCallParser
from grpokit.agents.tools import ToolRunner, ToolStats


@runtime_checkable
class Environment(Protocol):
    def reset(self, row: dict) -> list[dict]:
        ...

    def step(self, assistant_message: dict) -> tuple[list[dict], float | None, bool]:
        ...


class ToolEnvironment:
    """The default environment: the row's prompt as the first messages, then the policy's tool calls run.

    A turn without calls (and without malformed ones) ends the episode. Each well-formed call gets one
    `tool` message with its result, or with the error when it failed (unknown tool, bad arguments, an
    exception, a timeout); each malformed call gets one `tool` message saying what was wrong.
    """

    def __init__(self, *, tools: ToolRunner, parser: ToolCallParser, prompt_column: str = "prompt",
                 system_prompt: str | None = None):
        self.tools = tools
        self.parser = parser
        self.prompt_column = prompt_column
        self.system_prompt = system_prompt
        self.tool_stats = ToolStats()

    def reset(self, row: dict) -> list[dict]:
        self.tool_stats = ToolStats()
        prompt = row[self.prompt_column]
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
        if self.system_prompt and messages[0].get("role") != "system":
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return messages

    def step(self, assistant_message: dict) -> tuple[list[dict], float | None, bool]:
        parsed = self.parser.parse(assistant_message["content"])
        if not parsed.calls and not parsed.errors:  # an answer: nothing to reply, the episode ends
            return [], None, False
        assistant_message["tool_calls"] = [
            {"type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in parsed.calls]
        observations = []
        stats = self.tool_stats
        for result in self.tools.run(parsed.calls):
            stats.valid += 1
            stats.failed += 0 if result.ok else 1
            stats.seconds += result.seconds
            stats.calls.append({"name": result.call.name, "arguments": result.call.arguments, "ok": result.ok})
            observations.append({"role": "tool", "name": result.call.name, "content": result.content})
        for error in parsed.errors:
            stats.malformed += 1
            observations.append({"role": "tool", "name": "error", "content": f"error: {error}"})
        return observations, None, False


def environment_factory(spec: str | None, **settings: Any):
    """A zero-argument callable that builds one episode's environment: `ToolEnvironment` when `spec` is
    None, else the class or function `package.module:Factory` called with `settings` as keywords."""
    if spec is None:
        return lambda: ToolEnvironment(**settings)
    import importlib

    module_name, _, attribute = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"rollout.agent.environment: cannot load {spec!r} ({error})") from error
    return lambda: factory(**settings)


def environment_reward():
    """Built-in reward `environment`: the environment's own reward of each episode (None when it gave none)."""

    def environment(trajectories: list) -> list[float | None]:
        return [t.environment_reward for t in trajectories]

    return environment
