"""Tools: plain Python functions the policy may call, with a JSON schema read from their signature.

A tool is a function with type hints and a Google-style docstring (``Args:`` section); its schema
comes from transformers' `get_json_schema`, as in TRL, and goes into the chat template's `tools`.
It returns a string (anything else is `str()`-ed) or raises; an exception or a timeout becomes the
tool message's text (``error: ...``) and is counted, never a crash of the run.

Built-in tools (`BUILTIN_TOOLS`):
- ``calculator``: arithmetic by walking the expression's AST (numbers, + - * / // % **, unary
  signs, parentheses) — no `eval`; exponents and results are bounded so a call cannot hang.
- ``python``: runs a program in grpokit's sandbox (`grpokit.sandbox.run_python`: namespaces,
  rlimits, a wall-clock limit) and returns its stdout (and stderr, exit status on failure).
"""

from __future__ import annotations

import ast
import concurrent.futures
import importlib
import math
import operator
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from grpokit.agents.parsers import ToolCall


@dataclass
class Tool:
    name: str
    fn: Callable[..., Any]
    schema: dict  # {"type": "function", "function": {"name", "description", "parameters"}}


def tool_from_function(fn: Callable[..., Any]) -> Tool:
    """A `Tool` whose schema is `transformers.utils.get_json_schema(fn)` (type hints + docstring)."""
    from transformers.utils import get_json_schema

    try:
        schema = get_json_schema(fn)
    except Exception as error:  # transformers raises its own TypeHintParsingException / DocstringParsingException
        name = getattr(fn, "__name__", repr(fn))
        raise ValueError(f"tool {name!r}: cannot build its JSON schema ({error}); it needs type hints on every "
                         "argument and a docstring with an 'Args:' section") from error
    return Tool(name=schema["function"]["name"], fn=fn, schema=schema)


# ----------------------------------------------------------------------------- calculator

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_MAX_EXPONENT = 100  # 10**100 is fine; 9**9**9 would take minutes and gigabytes
_MAX_DIGITS = 1000


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
            raise ValueError(f"exponent {right} is too large (at most {_MAX_EXPONENT})")
        result = _BINARY[type(node.op)](left, right)
        if isinstance(result, int) and result.bit_length() > _MAX_DIGITS * 3.33:
            raise ValueError(f"result has more than {_MAX_DIGITS} digits")
        return result
    raise ValueError(f"unsupported element {ast.unparse(node)!r}: only numbers, + - * / // % ** and parentheses")


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly and return the result.

    Args:
        expression: The expression to evaluate, with numbers, + - * / // % ** and parentheses, e.g. "123 * 456".
    """
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as error:
        raise ValueError(f"cannot parse {expression!r}: {error.msg}") from None
    try:
        value = _evaluate(tree)
    except ZeroDivisionError:
        raise ValueError("division by zero") from None
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("the result is not a finite number")
        if value.is_integer() and abs(value) < 2**53:
            return str(int(value))  # 6/3 -> "2", as a person would write it
        return repr(value)
    return str(value)


# ----------------------------------------------------------------------------- python

def python(code: str) -> str:
    """Run a Python program and return what it prints.

    Args:
        code: The complete program; use print() to show results.
    """
    from grpokit.sandbox import SandboxLimits, run_python

    result = run_python(code, limits=SandboxLimits(wall_seconds=PYTHON_TOOL_SECONDS, cpu_seconds=10))
    if result.status == "passed":
        return result.stdout if result.stdout else "(no output)"
    detail = (result.stderr or result.stdout).strip()[-1000:]
    return f"error ({result.status}, exit code {result.exit_code}): {detail}"


PYTHON_TOOL_SECONDS = 10.0  # wall-clock limit of one `python` call inside the sandbox

BUILTIN_TOOLS: dict[str, Callable[..., Any]] = {"calculator": calculator, "python": python}


def resolve_tools(specs: Sequence[str | Callable[..., Any]]) -> list[Tool]:
    """Tools from built-in names, `package.module:function` strings or functions; names must be unique."""
    tools = []
    for spec in specs:
        if callable(spec):
            fn = spec
        elif spec in BUILTIN_TOOLS:
            fn = BUILTIN_TOOLS[spec]
        elif isinstance(spec, str) and ":" in spec:
            module_name, _, attribute = spec.partition(":")
            try:
                fn = getattr(importlib.import_module(module_name), attribute)
            except (ImportError, AttributeError) as error:
                raise ValueError(f"tool {spec!r}: cannot load it ({error})") from error
        else:
            raise ValueError(f"unknown tool {spec!r}; built-in: {sorted(BUILTIN_TOOLS)}, or 'package.module:function'")
        tools.append(tool_from_function(fn))
    names = [t.name for t in tools]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"tools: the names {duplicates} appear more than once")
    return tools


# ----------------------------------------------------------------------------- running calls

@dataclass
class ToolResult:
    call: ToolCall
    content: str  # what the model reads in the tool message
    ok: bool  # False: unknown tool, bad arguments, an exception or a timeout
    seconds: float


@dataclass
class ToolStats:
    """Per-episode counts: well-formed calls, malformed ones (unparseable) and failed ones (ran, but errored)."""

    valid: int = 0
    malformed: int = 0
    failed: int = 0
    seconds: float = 0.0
    calls: list[dict] = field(default_factory=list)  # {"name", "arguments", "ok"} per well-formed call


class ToolRunner:
    """Runs calls in a shared thread pool with a per-call timeout (episodes' calls run concurrently).

    A timed-out call's thread cannot be killed: it is abandoned (its result is ignored). Tools that may
    hang for long should bound themselves, as `python` does with the sandbox's own wall-clock limit.
    """

    def __init__(self, tools: Sequence[Tool], *, timeout_seconds: float = 10.0, max_workers: int = 8):
        self.tools = {t.name: t for t in tools}
        self.timeout_seconds = timeout_seconds
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=max_workers,
                                                          thread_name_prefix="grpokit-tool")

    @property
    def schemas(self) -> list[dict]:
        return [t.schema for t in self.tools.values()]

    def run(self, calls: Sequence[ToolCall]) -> list[ToolResult]:
        """Every call of one turn, concurrently; results in call order."""
        started = time.perf_counter()
        futures = [self.pool.submit(self._call, call) for call in calls]
        results = []
        for call, future in zip(calls, futures):
            remaining = self.timeout_seconds - (time.perf_counter() - started)
            try:
                results.append(future.result(timeout=max(remaining, 0.0)))
            except concurrent.futures.TimeoutError:
                results.append(ToolResult(call, f"error: {call.name} timed out after {self.timeout_seconds:g} s",
                                          False, time.perf_counter() - started))
        return results

    def _call(self, call: ToolCall) -> ToolResult:
        started = time.perf_counter()
        tool = self.tools.get(call.name)
        if tool is None:
            return ToolResult(call, f"error: unknown tool {call.name!r}; available: {sorted(self.tools)}", False, 0.0)
        try:
            value = tool.fn(**call.arguments)
        except TypeError as error:  # wrong or missing arguments (or a TypeError inside the tool)
            return ToolResult(call, f"error: {call.name}: {error}", False, time.perf_counter() - started)
        except Exception as error:  # the tool failed: the model reads why
            message = f"error: {call.name}: {type(error).__name__}: {error}"
            return ToolResult(call, message, False, time.perf_counter() - started)
        return ToolResult(call, value if isinstance(value, str) else str(value), True, time.perf_counter() - started)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
