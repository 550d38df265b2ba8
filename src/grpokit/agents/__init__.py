"""Multi-turn agents: episodes with tool calls or an environment between the policy's turns.

- `episodes`: `EpisodeEngine` (batched episodes → a `RolloutBatch` with a policy-token mask),
  `Trajectory`, `episode_metrics`.
- `chat`: the chat-template arithmetic that keeps episodes token-in, token-out.
- `parsers`: tool-call formats (Hermes `<tool_call>{json}</tool_call>` by default).
- `tools`: tools from plain functions (JSON schema from signature + docstring), the built-in
  `calculator` and `python`, and the runner (timeouts, errors reported to the model).
- `environment`: the `reset` / `step` protocol and the default `ToolEnvironment`.
- `build`: the trainer's seam — an `EpisodeEngine` from `rollout.agent` in the config.
"""

from grpokit.agents.chat import CHAT_TEMPLATES, HERMES_CHAT_TEMPLATE, EpisodeTemplate
from grpokit.agents.environment import Environment, ToolEnvironment, environment_factory
from grpokit.agents.episodes import (
    END_REASONS,
    AgentEnvironmentError,
    AgentSettings,
    EpisodeEngine,
    Trajectory,
    episode_metrics,
)
from grpokit.agents.parsers import PARSERS, HermesParser, ParsedTurn, ToolCall, get_parser
from grpokit.agents.tools import (
    BUILTIN_TOOLS,
    Tool,
    ToolRunner,
    ToolStats,
    calculator,
    resolve_tools,
    tool_from_function,
)

__all__ = [
    "BUILTIN_TOOLS", "CHAT_TEMPLATES", "END_REASONS", "HERMES_CHAT_TEMPLATE", "PARSERS", "AgentEnvironmentError",
    "AgentSettings",
    "Environment", "EpisodeEngine", "EpisodeTemplate", "HermesParser", "ParsedTurn", "Tool", "ToolCall",
    "ToolEnvironment", "ToolRunner", "ToolStats", "Trajectory", "calculator", "environment_factory",
    "episode_metrics", "get_parser", "resolve_tools", "tool_from_function",
]
