from __future__ import annotations

import pytest

from grpokit.config_schema import ConfigError
from grpokit.trainers.lm_config import load_lm_config


def _config(agent: dict, **rollout):
    return load_lm_config({"model": {"name_or_path": "x"}, "data": {"path": "d.jsonl"},
                           "rewards": [{"function": "exact_match"}], "rollout": {"agent": agent, **rollout}})


def test_agent_section_is_typed_with_defaults():
    agent = _config({"tools": ["calculator"]}).rollout.agent
    assert (agent.parser, agent.max_turns, agent.max_episode_tokens, agent.environment) == ("hermes", 4, 512, None)
    assert load_lm_config({"model": {"name_or_path": "x"}, "data": {"path": "d"},
                           "rewards": [{"function": "exact_match"}]}).rollout.agent is None


@pytest.mark.parametrize("agent, message", [
    ({"tools": ["calculator"], "max_turn": 3}, "max_turn"),
    ({}, "give tools"),
    ({"tools": ["calculator"], "max_turns": 0}, "must be >= 1"),
    ({"tools": ["calculator"], "tool_timeout_seconds": 0}, "tool_timeout_seconds"),
])
def test_agent_mistakes_are_one_line_errors_naming_the_field(agent, message):
    with pytest.raises(ConfigError, match=message) as caught:
        _config(agent)
    assert "rollout.agent" in str(caught.value)


def test_building_an_agent_reports_unknown_tools_parsers_and_templates_without_tools(make_tool_tokenizer, tool_model):
    from grpokit.models import build_char_tokenizer
    from grpokit.models.loading import Policy
    from grpokit.rollout.inprocess import InProcessEngine
    from grpokit.trainers.lm_build import build_agent

    tokenizer = make_tool_tokenizer()
    policy = Policy(tool_model(tokenizer), tokenizer, is_lora=False)
    engine = InProcessEngine(policy.model, tokenizer)
    assert build_agent(_config({"tools": ["calculator", "python"]}), policy, engine).template.tools
    with pytest.raises(ConfigError, match="rollout.agent: unknown tool 'abacus'"):
        build_agent(_config({"tools": ["abacus"]}), policy, engine)
    with pytest.raises(ConfigError, match="rollout.agent: unknown tool-call parser 'xml'"):
        build_agent(_config({"tools": ["calculator"], "parser": "xml"}), policy, engine)
    plain = build_char_tokenizer(chat_template="{% for m in messages %}{{ m.content }}{% endfor %}")
    with pytest.raises(ConfigError, match="does not show the tools"):
        build_agent(_config({"tools": ["calculator"]}), Policy(policy.model, plain, is_lora=False), engine)
    agent = build_agent(_config({"tools": ["calculator"], "chat_template": "hermes"}),
                        Policy(policy.model, plain, is_lora=False), engine)
    assert '"name": "calculator"' in agent.template.render([{"role": "user", "content": "hi"}],
                                                           add_generation_prompt=True)
