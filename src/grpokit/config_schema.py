"""Typed config dataclasses from plain dicts: unknown keys rejected, types and choices checked.

`from_dict(cls, data)` builds a (nested) dataclass from a dict, naming the dotted field path in
every error with what is allowed; `apply_overrides(data, ["a.b=c", ...])` applies `--set` style
overrides to the raw dict first (values parsed as YAML, so `1e-4`, `true`, `[1, 2]` work).
Choices are declared with `typing.Literal`. This module knows nothing about training.
"""

from __future__ import annotations

import dataclasses
import keyword
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal, Union, get_args, get_origin

from grpokit.errors import GrpokitError


class ConfigError(GrpokitError, ValueError):
    """A config value is missing, misspelled, of the wrong type or out of its allowed set."""

    kind = "config"


def config_key(field_name: str) -> str:
    """The YAML key of a dataclass field: its name, less the trailing underscore of a name that would be a
    Python keyword (field `async_` is written `async:`)."""
    bare = field_name[:-1] if field_name.endswith("_") else field_name
    return bare if bare != field_name and keyword.iskeyword(bare) else field_name


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass `cls` from `data`, recursively, validating every field."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {config_key(f.name): f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = path or "top level"
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, field in fields.items():
        dotted = f"{path}.{name}" if path else name
        if name in data:
            values[field.name] = _coerce(hints[field.name], data[name], dotted)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{dotted}: required field is missing")
    try:
        return cls(**values)
    except (ValueError, TypeError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"{path or 'config'}: {error}") from error


def checked_overrides(classes: Sequence[type], overrides: dict, path: str) -> dict:
    """`overrides` of the fields of frozen dataclasses `classes` (a preset's), names and types checked.

    For `algorithm.overrides`: a misspelled name is an error at load naming the allowed ones, and values are
    converted like any field (`1e-4` read as a string becomes a float). Fields holding a dataclass are not
    overridable. Values are range-checked when the preset is built from them.
    """
    allowed: dict[str, Any] = {}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.init and not dataclasses.is_dataclass(hints[f.name]):
                allowed.setdefault(f.name, hints[f.name])
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ConfigError(f"{path}: unknown field(s) {unknown}; allowed: {sorted(allowed)}")
    return {name: _coerce(allowed[name], value, f"{path}.{name}") for name, value in overrides.items()}


def _is_optional(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            if _is_optional(tp):
                return None
            raise ConfigError(f"{path}: must not be null")
        if len(options) == 1:  # `X | None`: X's own error says what is wrong
            return _coerce(options[0], value, path)
        errors = []
        for option in options:
            try:
                return _coerce(option, value, path)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(f"{path}: {value!r} matches none of {[_type_name(o) for o in options]}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{path}: {value!r} is not allowed; choose one of {list(allowed)}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        args = get_args(tp)
        item_type = args[0] if args else Any
        items = [_coerce(item_type, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if value is None:
        raise ConfigError(f"{path}: must not be null")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # PyYAML reads `1e-5` (no dot) as a string; accept any numeric string.
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `key.sub=value` strings to a raw config dict (values parsed as YAML scalars/lists)."""
    import yaml

    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. training.learning_rate=1e-5")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def to_dict(config: Any) -> dict:
    """A plain, YAML/JSON-serializable dict of a config dataclass."""
    return dataclasses.asdict(config, dict_factory=lambda items: {config_key(k): v for k, v in items})
