from __future__ import annotations

import time

import pytest

from grpokit.agents import (
    HermesParser,
    ToolCall,
    ToolRunner,
    calculator,
    get_parser,
    resolve_tools,
    tool_from_function,
)


def test_hermes_reads_several_calls_and_keeps_the_text_around_them():
    text = ('Let me compute. <tool_call>{"name": "calculator", "arguments": {"expression": "2*3"}}</tool_call>'
            '\n<tool_call>\n{"name": "python", "arguments": "{\\"code\\": \\"print(1)\\"}"}\n</tool_call> ok')
    parsed = HermesParser().parse(text)
    assert parsed.calls == [ToolCall("calculator", {"expression": "2*3"}), ToolCall("python", {"code": "print(1)"})]
    assert parsed.errors == []
    assert parsed.content == "Let me compute. \n ok"


@pytest.mark.parametrize("body, fragment", [
    ('{"name": "calculator", "arguments": {"expression": "1+1"}', "not valid JSON"),
    ('["calculator"]', "expected a JSON object"),
    ('{"arguments": {}}', "no 'name'"),
    ('{"name": "calculator", "arguments": [1]}', "must be an object"),
])
def test_hermes_reports_each_malformed_call_and_still_reads_the_good_ones(body, fragment):
    good = '<tool_call>{"name": "calculator", "arguments": {"expression": "1"}}</tool_call>'
    parsed = HermesParser().parse(f"<tool_call>{body}</tool_call>{good}")
    assert parsed.calls == [ToolCall("calculator", {"expression": "1"})]
    assert len(parsed.errors) == 1 and fragment in parsed.errors[0]


def test_hermes_unclosed_call_is_malformed_and_plain_text_has_no_calls():
    assert "without </tool_call>" in HermesParser().parse('<tool_call>{"name": "x"').errors[0]
    parsed = HermesParser().parse("The answer is <answer>4</answer>")
    assert parsed.calls == [] and parsed.errors == []


def test_parser_by_name_or_import_path():
    assert isinstance(get_parser("hermes"), HermesParser)
    assert isinstance(get_parser("grpokit.agents.parsers:HermesParser"), HermesParser)
    with pytest.raises(ValueError, match="unknown tool-call parser"):
        get_parser("nope")


@pytest.mark.parametrize("expression, expected", [
    ("123 * 456", "56088"), ("-(2 + 3) ** 2", "-25"), ("7 / 2", "3.5"), ("6/3", "2"), ("17 // 5 % 3", "0"),
    ("98765432123 * 123456789", str(98765432123 * 123456789)),
])
def test_calculator_is_exact(expression, expected):
    assert calculator(expression) == expected


@pytest.mark.parametrize("expression, fragment", [
    ("__import__('os').system('echo hi')", "unsupported"), ("x + 1", "unsupported"), ("9 ** 9 ** 9", "too large"),
    ("1 / 0", "division by zero"), ("2 +", "cannot parse"), ("'a' * 3", "unsupported"),
])
def test_calculator_refuses_everything_but_arithmetic(expression, fragment):
    with pytest.raises(ValueError, match=fragment):
        calculator(expression)


def test_schema_comes_from_signature_and_docstring():
    def lookup(city: str, days: int = 1) -> str:
        """Weather forecast.

        Args:
            city: Name of the city.
            days: How many days ahead.
        """
        return city

    schema = tool_from_function(lookup).schema["function"]
    assert schema["name"] == "lookup" and schema["description"] == "Weather forecast."
    assert schema["parameters"]["properties"]["days"] == {"type": "integer", "description": "How many days ahead."}
    assert schema["parameters"]["required"] == ["city"]
    with pytest.raises(ValueError, match="type hints"):
        tool_from_function(lambda x: x)


def _boom(value: int) -> str:
    """Always fails.

    Args:
        value: Anything.
    """
    raise RuntimeError(f"broken on {value}")


def _sleepy(seconds: float) -> str:
    """Sleeps.

    Args:
        seconds: How long.
    """
    time.sleep(seconds)
    return "woke"


def test_tool_failures_become_messages_never_exceptions():
    runner = ToolRunner(resolve_tools(["calculator", _boom, _sleepy]), timeout_seconds=0.3)
    results = runner.run([
        ToolCall("calculator", {"expression": "2+2"}), ToolCall("_boom", {"value": 3}),
        ToolCall("calculator", {"wrong": "1"}), ToolCall("missing", {}), ToolCall("calculator", {"expression": "1/0"}),
    ])
    assert [r.ok for r in results] == [True, False, False, False, False]
    assert results[0].content == "4"
    assert "RuntimeError: broken on 3" in results[1].content
    assert "unexpected keyword argument 'wrong'" in results[2].content
    assert "unknown tool 'missing'" in results[3].content
    assert "division by zero" in results[4].content
    started = time.perf_counter()
    timed_out = runner.run([ToolCall("_sleepy", {"seconds": 5.0}), ToolCall("_sleepy", {"seconds": 0.0})])
    assert time.perf_counter() - started < 2.0  # bounded by the 0.3 s timeout, not the 5 s sleep
    assert not timed_out[0].ok and "timed out after 0.3 s" in timed_out[0].content
    assert timed_out[1].ok and timed_out[1].content == "woke"
    runner.close()


def test_duplicate_and_unknown_tools_are_config_errors():
    with pytest.raises(ValueError, match="more than once"):
        resolve_tools(["calculator", "calculator"])
    with pytest.raises(ValueError, match="unknown tool 'abacus'"):
        resolve_tools(["abacus"])


def test_python_tool_runs_in_the_sandbox_and_reports_failures(monkeypatch):
    from grpokit.agents import tools
    from grpokit.sandbox import IsolationUnavailable

    monkeypatch.setattr(tools, "PYTHON_TOOL_SECONDS", 1.0)
    try:
        assert tools.python("print(6 * 7)") == "42\n"
    except IsolationUnavailable as error:
        pytest.skip(f"no sandbox isolation here: {error}")
    assert tools.python("import sys; print('bad', file=sys.stderr); sys.exit(3)") == "error (failed, exit code 3): bad"
    assert tools.python("while True: pass").startswith("error (timeout")
    assert tools.python("import socket; socket.create_connection(('1.1.1.1', 53), timeout=1)").endswith("Network is unreachable")
