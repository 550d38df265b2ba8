"""The reward contract: what a reward function is, how it is called, how it fails.

A reward function is called with keyword arguments only::

    fn(prompts=list[str], completions=list[str], group_ids=list[int],
       completion_lengths=list[int],            # when the caller knows token counts
       **columns)                               # each extra data-set column, aligned with completions

and returns one ``float | None`` per completion (None: "cannot judge this one"; the row is then
left out of the advantage statistics and the loss). A function receives only the keywords it
declares, unless it takes ``**kwargs``, in which case it receives all of them — so both
``def f(completions, answer)`` and ``def f(completions, **kwargs)`` work.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from grpokit.errors import GrpokitError

RewardFn = Callable[..., "list[float | None]"]

# Keyword names the runner fills in itself; a data-set column must not reuse them.
RESERVED_ARGUMENTS = ("prompts", "completions", "group_ids", "completion_lengths")


def _snippet(text: str, limit: int = 160) -> str:
    text = str(text)
    return repr(text if len(text) <= limit else text[:limit] + "...")


class RewardLoadError(GrpokitError, ValueError):
    """A reward cannot be loaded: unknown built-in, module, file or function, bad options, or a
    reward file that fails when imported."""

    kind = "reward"


class RewardError(GrpokitError, RuntimeError):
    """A reward function raised, timed out, or returned something unusable.

    ``sample_index`` is the first sample found to trigger the failure (None when unknown, e.g. a
    timeout); ``prompt`` and ``completion`` are that sample's text.
    """

    kind = "reward"

    def __init__(
        self,
        reward_name: str,
        message: str,
        *,
        sample_index: int | None = None,
        prompt: str | None = None,
        completion: str | None = None,
    ):
        self.reward_name = reward_name
        self.sample_index = sample_index
        self.prompt = prompt
        self.completion = completion
        where = "offending sample unknown"
        if sample_index is not None:
            where = (
                f"first offending sample {sample_index}: prompt={_snippet(prompt or '')}, "
                f"completion={_snippet(completion or '')}"
            )
        super().__init__(f"reward '{reward_name}' failed: {message} ({where})")


def accepted_keywords(fn: Callable[..., Any]) -> frozenset[str] | None:
    """Keyword names ``fn`` can take, or None when it takes ``**kwargs`` (or has no readable
    signature), meaning "pass everything"."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(p.name for p in parameters if p.kind in kinds)


@dataclass(frozen=True)
class Reward:
    """A loaded reward: a named function with its weight in the total.

    ``timeout_seconds`` bounds one call on one batch (None: no bound). ``main_thread`` asks the
    runner to call it in the calling thread rather than a worker thread — for functions whose
    own safeguards need the main thread (math-verify's per-sample ``signal.alarm`` timeouts).
    It is honoured only when ``timeout_seconds`` is None, since the runner can time out only a
    call in a worker thread.
    """

    name: str
    fn: RewardFn
    weight: float = 1.0
    timeout_seconds: float | None = None
    main_thread: bool = False
    accepts: frozenset[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a reward needs a non-empty name")
        if self.timeout_seconds is not None and self.timeout_seconds <= 0:
            raise ValueError(f"reward '{self.name}': timeout_seconds must be > 0, got {self.timeout_seconds}")
        object.__setattr__(self, "accepts", accepted_keywords(self.fn))

    def __call__(self, **arguments: Any) -> list[Any]:
        """Call the function with the subset of ``arguments`` it accepts."""
        if self.accepts is not None:
            arguments = {k: v for k, v in arguments.items() if k in self.accepts}
        return self.fn(**arguments)


@dataclass
class RewardSpec:
    """How a configuration names a reward (see :func:`grpokit.rewards.load_reward`).

    ``source``: a built-in name (``"exact_match"``), ``"package.module:function"`` or
    ``"path/to/file.py:function"``. ``kwargs`` configure a built-in; for a user function they are
    bound as fixed keyword arguments of every call. ``name`` defaults to the built-in name or the
    function name.
    """

    source: str
    name: str | None = None
    weight: float = 1.0
    timeout_seconds: float | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
