"""Registries: a surrogate loss, an advantage estimator, a KL estimator or an aggregation mode is ONE decorated
function. The :class:`~grpokit.algorithms.presets.Preset` field of the same kind names it; Preset validation,
`grpokit presets` and the loss read the names from here, so a new mechanism is one function::

    @register_surrogate("my_loss", summary="−A·r with ...")
    def my_loss(ratio, advantages, *, eps_low):  # tensors by name; keyword-only = Preset fields
        ...

How a registered function is called (:meth:`Registry.call`): its positional-or-keyword parameters are filled
by name from the tensors the caller has (listed per registry below); its keyword-only parameters are filled
from the Preset fields of the same name, so a new hyper-parameter is a new Preset field and nothing else.
``requires`` lists Preset field values the mechanism cannot do without (checked when a Preset is built).

- surrogates, ``(loss, clipped_low, clipped_high)`` from ``ratio``, ``log_ratio`` (at ``preset.ratio_level``),
  ``token_log_ratio``, ``logp``, ``advantages``, ``mask``;
- advantage estimators, ``advantages[B]`` from ``rewards`` (``[B]``, or ``[B, K]`` with ``weights[K]``),
  ``weights``, ``group_ids``;
- KL estimators, ``k[B, T]`` from ``d = log π_ref − log π_θ`` (no Preset fields);
- aggregation modes, a scalar from ``masked``, ``m``, ``num_sequences``, ``num_tokens``, ``max_len``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Entry:
    """One registered mechanism: its function, a one-line summary and how :meth:`Registry.call` binds it."""

    name: str
    function: Callable[..., Any]
    summary: str
    tensor_args: tuple[str, ...]  # filled by name from the caller's tensors (those with a default: if given)
    required_tensor_args: tuple[str, ...]  # the tensor_args without a default
    preset_args: tuple[str, ...]  # keyword-only: filled from the Preset fields of the same name
    requires: dict[str, Any] = field(default_factory=dict)  # Preset field → the value it must have


class Registry:
    """Name → :class:`Entry` for one kind of mechanism; ``preset_field`` is the Preset field that picks one."""

    def __init__(self, kind: str, preset_field: str):
        self.kind = kind
        self.preset_field = preset_field
        self._entries: dict[str, Entry] = {}

    def register(
        self, name: str, *, summary: str, requires: dict[str, Any] | None = None
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: register ``function`` under ``name`` and return it unchanged."""

        def decorator(function: Callable[..., Any]) -> Callable[..., Any]:
            existing = self._entries.get(name)
            if existing is not None and existing.function is not function:
                raise ValueError(f"{self.kind} {name!r} is already registered ({existing.function.__qualname__})")
            parameters = list(inspect.signature(function).parameters.values())
            self._entries[name] = Entry(
                name=name,
                function=function,
                summary=summary,
                tensor_args=tuple(p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD),
                required_tensor_args=tuple(
                    p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty
                ),
                preset_args=tuple(p.name for p in parameters if p.kind is p.KEYWORD_ONLY),
                requires=dict(requires or {}),
            )
            return function

        return decorator

    def names(self) -> tuple[str, ...]:
        """Registered names in registration order (built-ins first)."""
        return tuple(self._entries)

    def entries(self) -> tuple[Entry, ...]:
        return tuple(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> Entry:
        if name not in self._entries:
            raise ValueError(f"{self.kind} must be one of {self.names()}, got {name!r}")
        return self._entries[name]

    def call(self, name: str, preset: Any, **tensors: Any) -> Any:
        """Call entry ``name`` with the tensors it names and the ``preset`` fields it names."""
        entry = self.get(name)
        missing = [a for a in entry.required_tensor_args if a not in tensors]
        if missing:
            raise TypeError(f"{self.kind} {name!r} needs {missing}; a {self.kind} may read {sorted(tensors)}")
        kwargs = {a: tensors[a] for a in entry.tensor_args if a in tensors}
        kwargs.update({a: getattr(preset, a) for a in entry.preset_args})
        return entry.function(**kwargs)


SURROGATES = Registry("surrogate", "surrogate")
ADVANTAGE_ESTIMATORS = Registry("advantage estimator", "advantage")
KL_ESTIMATORS_REGISTRY = Registry("KL estimator", "kl_estimator")
AGGREGATIONS = Registry("aggregation mode", "aggregation")
# Every registry a Preset field names; presets.py validates these fields against them.
REGISTRIES: tuple[Registry, ...] = (ADVANTAGE_ESTIMATORS, SURROGATES, AGGREGATIONS, KL_ESTIMATORS_REGISTRY)

register_surrogate = SURROGATES.register
register_advantage = ADVANTAGE_ESTIMATORS.register
register_kl_estimator = KL_ESTIMATORS_REGISTRY.register
register_aggregation = AGGREGATIONS.register
