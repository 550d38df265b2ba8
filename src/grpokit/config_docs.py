"""The documented schema of a config: every field with its type, default and help, from the dataclasses.

The help text of a field is the comment written where the field is defined — the comment lines right
above it and the comment at the end of its line — so the default and its documentation stay in one
place; a section's summary is its class docstring (or, failing that, the parent field's comment).
`grpokit config [SECTION]` prints it; `python -m grpokit.config_docs > docs/config.md` (the same as
`grpokit config --markdown`) writes the reference, and `tests/test_config_docs.py` fails when that
file is stale or a field has no help.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import textwrap
import tokenize
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from grpokit.config_schema import config_key


@dataclass(frozen=True)
class FieldDoc:
    path: str  # dotted, e.g. rollout.vllm.server_url; a list of sections has `[]`, e.g. rewards[].weight
    type: str  # as a user writes it, e.g. "inprocess | vllm_colocate | vllm_server", "int or null"
    default: str  # as YAML, e.g. "null", "1e-06", "[]"; "(section)" for a nested section
    help: str
    section: str = ""  # for a field holding a section: that section's path (listed after this one)


@dataclass(frozen=True)
class SectionDoc:
    path: str  # "" for the top level
    summary: str
    fields: tuple[FieldDoc, ...]


@functools.cache
def field_help(cls: type) -> dict[str, str]:
    """{field name: its comment} for dataclass `cls`, read from the class's source.

    Comment lines directly above a field (no blank line between) come first, then the comment at the end
    of the field's line(s). A field without either is missing from the result.
    """
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (a frozen install): no help, the test catches it in the repo
        return {}
    lines = source.splitlines()
    comments: dict[int, str] = {}  # 1-based line -> comment text
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    (class_node,) = [node for node in ast.parse(source).body if isinstance(node, ast.ClassDef)]
    helps = {}
    for node in class_node.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above = []
        line = node.lineno - 1
        while line >= 1 and lines[line - 1].strip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        trailing = [comments[n] for n in range(node.lineno, node.end_lineno + 1)
                    if n in comments and not lines[n - 1].strip().startswith("#")]
        text = " ".join(part for part in [*above, *trailing] if part)
        if text:
            helps[node.target.id] = text
    return helps


def _section_type(tp: Any) -> tuple[type | None, str]:
    """(the dataclass a field's type holds, how: "" | "optional" | "list"), or (None, "")."""
    if dataclasses.is_dataclass(tp):
        return tp, ""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) == 1 and dataclasses.is_dataclass(options[0]):
            return options[0], "optional"
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        return args[0], "list"
    return None, ""


def type_name(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return "any"
    if origin is Literal:
        return " | ".join(_yaml(a) for a in args)
    if origin in (Union, types.UnionType):
        options = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(options) + (" or null" if type(None) in args else "")
    if origin in (list, tuple):
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict or tp is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return "section"
    return {bool: "bool", int: "int", float: "float", str: "string"}.get(tp, getattr(tp, "__name__", str(tp)))


def _yaml(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value and value.strip() == value and value[0] not in "[{'\"#" else repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _summary(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    if doc.startswith(f"{cls.__name__}("):  # the signature dataclasses writes when there is no docstring
        return ""
    return " ".join(doc.split("\n\n")[0].split())


def sections(cls: type, path: str = "", summary: str = "", instance: Any = None) -> list[SectionDoc]:
    """The sections of config class `cls`, depth first: `cls` itself, then each nested section.

    `instance`: the section's default as its parent builds it (the flow config's logging section defaults
    run_dir to runs/flow), whose values are the defaults shown; None = the class's own defaults.
    """
    hints = typing.get_type_hints(cls)
    helps = field_help(cls)
    own: list[FieldDoc] = []
    nested: list[SectionDoc] = []
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        key = config_key(field.name)  # `async_` is written `async`
        dotted = f"{path}.{key}" if path else key
        section, how = _section_type(hints[field.name])
        default = _default(field) if instance is None else getattr(instance, field.name)
        help_text = helps.get(field.name, "")
        if section is None:
            shown = "(required)" if default is dataclasses.MISSING else _yaml(default)
            own.append(FieldDoc(dotted, type_name(hints[field.name]), shown, help_text))
            continue
        shown = "(section)" if how == "" else _yaml(default)
        kind = {"": "section", "optional": "section or null", "list": "list of sections"}[how]
        sub_path = f"{dotted}[]" if how == "list" else dotted
        own.append(FieldDoc(dotted, kind, shown, help_text, section=sub_path))
        nested += sections(section, sub_path, _summary(section) or help_text,
                           default if dataclasses.is_dataclass(default) else None)
    return [SectionDoc(path, summary or _summary(cls), tuple(own)), *nested]


def undocumented(cls: type) -> list[str]:
    """Dotted paths of the fields of `cls` (nested sections included) that have no help text."""
    return [f.path for s in sections(cls) for f in s.fields if not f.help]


def render_text(cls: type, section: str | None = None, width: int = 80) -> str:
    """The schema as plain text for a terminal: `path = default  (type)` then the help, indented."""
    chosen = select(cls, section)
    out: list[str] = []
    for s in chosen:
        title = s.path or "(top level)"
        out.append(title)
        if s.summary:
            out += textwrap.wrap(s.summary, width, initial_indent="  ", subsequent_indent="  ")
        for f in s.fields:
            name = f.path.rsplit(".", 1)[-1] if s.path else f.path
            head = (f"{name} = {f.default}   ({f.type})" if not f.section
                    else f"{name}: {f.type}, see {f.section}" + (f" (default {f.default})" if how_shown(f) else ""))
            out += textwrap.wrap(head, width, initial_indent="  ", subsequent_indent="      ",
                                 break_on_hyphens=False)
            out += textwrap.wrap(f.help or "(no help)", width, initial_indent="      ",
                                 subsequent_indent="      ", break_on_hyphens=False)
        out.append("")
    return "\n".join(out)


def how_shown(f: FieldDoc) -> bool:
    """Whether a section field's default is worth printing (null or [] rather than the section itself)."""
    return f.default != "(section)"


def select(cls: type, section: str | None) -> list[SectionDoc]:
    """The sections at or under `section` (dotted, e.g. "rollout" or "guards.entropy"); all when None."""
    everything = sections(cls)
    if not section:
        return everything
    key = section.strip().rstrip(".")
    chosen = [s for s in everything if s.path.replace("[]", "") == key
              or s.path.replace("[]", "").startswith(key + ".")]
    if not chosen:
        from grpokit.config_schema import ConfigError

        names = sorted({s.path.replace("[]", "") for s in everything if s.path})
        raise ConfigError(f"config section {section!r} does not exist; sections: {', '.join(names)}")
    return chosen


def _anchor(path: str) -> str:
    """GitHub's anchor of a heading: lower case, spaces to -, punctuation other than - and _ dropped."""
    return "".join(c for c in path.lower().replace(" ", "-") if c.isalnum() or c in "-_")


def _cell(text: str, code: bool = False) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if code else text.replace("<", "&lt;")  # `<tool_call>` in prose is no HTML tag


def render_markdown() -> str:
    """docs/config.md: every section of the LM and the flow trainer's configs."""
    from grpokit.flow.config import FlowTrainConfig
    from grpokit.trainers.lm_config import LMTrainConfig

    out = [
        "# Config reference",
        "",
        "<!-- Generated by `python -m grpokit.config_docs > docs/config.md` from the config dataclasses;",
        "     edit the comments next to the fields, not this file. tests/test_config_docs.py checks it. -->",
        "",
        "Every field of a training config, its type, its default and what it does. Print one section in a",
        "terminal with `grpokit config SECTION` (e.g. `grpokit config rollout`, `grpokit config --flow`);",
        "override any field on the command line with `--set section.field=value`.",
        "Unknown keys, wrong types and values outside the allowed set are errors naming the field.",
        "",
    ]
    for title, cls, intro, prefix in (
        ("Language-model trainer", LMTrainConfig, "`grpokit train config.yaml` (`grpokit.trainers.lm_config`).",
         ""),
        ("Flow trainer", FlowTrainConfig, "A config with `trainer: flow` (`grpokit.flow.config`).", "flow: "),
    ):
        out += [f"## {title}", "", intro, ""]
        for s in sections(cls):
            out += [f"### {prefix}`{s.path}`" if s.path else f"### {prefix}top level", ""]
            if s.summary:
                out += [s.summary, ""]
            out += ["| field | type | default | description |", "|---|---|---|---|"]
            for f in s.fields:
                name = f.path.rsplit(".", 1)[-1] if s.path else f.path
                link = _anchor(prefix + f.section)
                kind = _cell(f.type) if not f.section else f"{f.type}: [`{f.section}`](#{link})"
                default = "" if f.default == "(section)" else f"`{_cell(f.default, code=True)}`"
                out.append(f"| `{name}` | {kind} | {default} | {_cell(f.help)} |")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    print(render_markdown(), end="")


if __name__ == "__main__":
    main()
