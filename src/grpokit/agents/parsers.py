"""Tool-call parsers: find the calls in the text of one assistant turn.

A parser turns the decoded text of a turn into `ParsedTurn`: the calls it could read, and one error
message per call it could not (the model gets that message back as a tool message, so it can
recover). The format is the model's own chat-template format; `hermes` is the default:

    <tool_call>
    {"name": "calculator", "arguments": {"expression": "12*34"}}
    </tool_call>

(Qwen2.5, SmolLM2, Hermes/NousResearch models). Another format is one class with
`parse(text) -> ParsedTurn`, named by `rollout.agent.parser: package.module:Class`.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass
class ParsedTurn:
    content: str  # the turn's text with the call blocks removed (what the model "said")
    calls: list[ToolCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # one message per malformed call


class ToolCallParser(Protocol):
    def parse(self, text: str) -> ParsedTurn:
        ...


class HermesParser:
    """`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, any number per turn.

    Malformed: a block whose body is not a JSON object, lacks a string "name", or has "arguments"
    that is not an object (a JSON string holding an object is accepted, as some models write it);
    an opening tag without its closing tag (the rest of the turn is the block).
    """

    open_tag = "<tool_call>"
    close_tag = "</tool_call>"

    def parse(self, text: str) -> ParsedTurn:
        calls, errors, kept = [], [], []
        position = 0
        while True:
            start = text.find(self.open_tag, position)
            if start < 0:
                kept.append(text[position:])
                break
            kept.append(text[position:start])
            body_start = start + len(self.open_tag)
            end = text.find(self.close_tag, body_start)
            if end < 0:
                errors.append(f"malformed tool call: {self.open_tag} without {self.close_tag}")
                break
            call, error = _read_call(text[body_start:end])
            if call is not None:
                calls.append(call)
            else:
                errors.append(f"malformed tool call: {error}")
            position = end + len(self.close_tag)
        return ParsedTurn(content="".join(kept).strip(), calls=calls, errors=errors)


def _read_call(body: str) -> tuple[ToolCall | None, str]:
    try:
        value = json.loads(body)
    except json.JSONDecodeError as error:
        return None, f"not valid JSON ({error.msg} at char {error.pos}): {body.strip()[:80]!r}"
    if not isinstance(value, dict):
        return None, f"expected a JSON object with 'name' and 'arguments', got {type(value).__name__}"
    name = value.get("name")
    if not isinstance(name, str) or not name:
        return None, "the call has no 'name' string"
    arguments = value.get("arguments", {})
    if isinstance(arguments, str):  # some models write the arguments as a JSON-encoded string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None, f"'arguments' of {name!r} is a string that is not a JSON object"
    if not isinstance(arguments, dict):
        return None, f"'arguments' of {name!r} must be an object, got {type(arguments).__name__}"
    return ToolCall(name, arguments), ""


PARSERS: dict[str, type] = {"hermes": HermesParser}


def get_parser(name: str) -> ToolCallParser:
    """A built-in parser by name, or `package.module:Class` (instantiated without arguments)."""
    if name in PARSERS:
        return PARSERS[name]()
    if ":" not in name:
        raise ValueError(f"unknown tool-call parser {name!r}; built-in: {sorted(PARSERS)}, or 'package.module:Class'")
    module_name, _, attribute = name.partition(":")
    try:
        parser = getattr(importlib.import_module(module_name), attribute)()
    except (ImportError, AttributeError) as error:
        raise ValueError(f"tool-call parser {name!r}: cannot load it ({error})") from error
    if not callable(getattr(parser, "parse", None)):
        raise ValueError(f"tool-call parser {name!r} has no parse(text) method")
    return parser

