"""Turn a reward description (built-in name, ``module:function``, ``file.py:function``) into a
:class:`~grpokit.rewards.api.Reward`."""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpokit.rewards import builtins, code, math_answers, reward_model
from grpokit.rewards.api import Reward, RewardFn, RewardLoadError, RewardSpec


@dataclass(frozen=True)
class BuiltinReward:
    """A built-in: ``factory(**kwargs)`` builds the function; ``main_thread`` see ``Reward``."""

    factory: Callable[..., RewardFn]
    main_thread: bool = False


def _reasoning_gym_reward() -> RewardFn:
    from grpokit.tasks.reasoning_gym import reasoning_gym_reward

    return reasoning_gym_reward()


def _environment_reward() -> RewardFn:
    from grpokit.agents.environment import environment_reward

    return environment_reward()


BUILTIN_REWARDS: dict[str, BuiltinReward] = {
    "exact_match": BuiltinReward(builtins.exact_match),
    "math_verify": BuiltinReward(math_answers.math_verify, main_thread=True),
    "format_regex": BuiltinReward(builtins.format_regex),
    "xml_format_strict": BuiltinReward(builtins.xml_format_strict),
    "xml_format_soft": BuiltinReward(builtins.xml_format_soft),
    "xml_count": BuiltinReward(builtins.xml_count),
    "integer_answer": BuiltinReward(builtins.integer_answer),
    "correctness_xml": BuiltinReward(builtins.correctness_xml),
    "length": BuiltinReward(builtins.length),
    "soft_overlong": BuiltinReward(builtins.soft_overlong),
    "reward_model": BuiltinReward(reward_model.reward_model),
    "code_tests": BuiltinReward(code.code_tests),
    "reasoning_gym": BuiltinReward(_reasoning_gym_reward),  # the task's own score_answer (grpokit.tasks)
    "environment": BuiltinReward(_environment_reward),  # an agent environment's reward (grpokit.agents)
}


def load_reward(
    spec: RewardSpec | str | Callable[..., Any],
    *,
    name: str | None = None,
    weight: float | None = None,
    timeout_seconds: float | None = None,
    **kwargs: Any,
) -> Reward:
    """Load one reward.

    ``spec`` is a :class:`RewardSpec`, a source string (built-in name, ``"pkg.module:function"``,
    ``"path/to/file.py:function"``) or a callable. Keyword arguments override the spec's fields;
    other keywords are added to its ``kwargs`` (built-in options, or fixed keyword arguments bound
    to a user function). Unknown built-ins, modules, files or functions, bad options and a reward
    file that fails at import raise :class:`RewardLoadError` (a ``ValueError``).
    """
    if isinstance(spec, RewardSpec):
        options = {**spec.kwargs, **kwargs}
        name = name if name is not None else spec.name
        weight = weight if weight is not None else spec.weight
        timeout_seconds = timeout_seconds if timeout_seconds is not None else spec.timeout_seconds
        source: str | Callable[..., Any] = spec.source
    else:
        options, source = kwargs, spec
    weight = 1.0 if weight is None else float(weight)

    if callable(source):
        fn = functools.partial(source, **options) if options else source
        default_name = getattr(source, "__name__", type(source).__name__)
        return Reward(name or default_name, fn, weight, timeout_seconds)
    if source in BUILTIN_REWARDS:
        builtin = BUILTIN_REWARDS[source]
        _check_options(source, options)
        try:
            fn = builtin.factory(**options)
        except (ValueError, TypeError, ImportError) as error:  # e.g. a bad regex, a missing extra
            raise RewardLoadError(f"reward '{source}': {type(error).__name__}: {error}") from error
        return Reward(name or source, fn, weight, timeout_seconds, main_thread=builtin.main_thread)
    if ":" in source:
        function = _import_function(source)
        fn = functools.partial(function, **options) if options else function
        return Reward(name or function.__name__, fn, weight, timeout_seconds)
    raise RewardLoadError(
        f"unknown reward {source!r}: use a built-in ({', '.join(sorted(BUILTIN_REWARDS))}), "
        "'package.module:function' or 'path/to/file.py:function'"
    )


def load_configured_reward(entry: Any, default_timeout_seconds: float | None) -> Reward:
    """One `rewards:` (or `gold.rewards:`) config entry, bounded by its own timeout_seconds or else the
    config's default (`rewards_timeout_seconds`) — except a reward that must run in the main thread (its
    own per-sample guards need it; a timeout would move it to another thread)."""
    import dataclasses

    reward = load_reward(entry.function, name=entry.name, weight=entry.weight, timeout_seconds=entry.timeout_seconds,
                         **entry.kwargs)
    if reward.timeout_seconds is None and not reward.main_thread and default_timeout_seconds is not None:
        reward = dataclasses.replace(reward, timeout_seconds=default_timeout_seconds)
    return reward


def load_rewards(specs: Sequence[RewardSpec | str | Callable[..., Any]]) -> list[Reward]:
    """Load several rewards; names must be unique (they key the metrics)."""
    rewards = [load_reward(spec) for spec in specs]
    names = [reward.name for reward in rewards]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RewardLoadError(f"reward names must be unique, repeated: {duplicates}; set name= to tell them apart")
    return rewards


def _check_options(builtin_name: str, options: dict[str, Any]) -> None:
    parameters = inspect.signature(BUILTIN_REWARDS[builtin_name].factory).parameters
    allowed = list(parameters)
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        raise RewardLoadError(f"reward '{builtin_name}' has no option(s) {unknown}; options: {allowed}")
    missing = [n for n, p in parameters.items() if p.default is inspect.Parameter.empty and n not in options]
    if missing:
        raise RewardLoadError(f"reward '{builtin_name}' needs option(s) {missing}; options: {allowed}")


def _import_function(source: str) -> Callable[..., Any]:
    """``"pkg.mod:fn"`` or ``"dir/file.py:fn"`` (split at the last colon, so a Windows drive
    letter in the path survives)."""
    location, _, attribute = source.rpartition(":")
    if location.endswith(".py"):
        path = Path(location).expanduser().resolve()
        if not path.is_file():
            raise RewardLoadError(f"reward file not found: {path}")
        module_name = f"grpokit_user_reward_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module  # lets dataclasses / pickling inside the file resolve
        try:
            module_spec.loader.exec_module(module)
        except BaseException as error:
            sys.modules.pop(module_name, None)
            if isinstance(error, (KeyboardInterrupt, SystemExit)):
                raise
            raise RewardLoadError(
                f"reward file {path} failed at import ({_failing_line(error, str(path))}): "
                f"{type(error).__name__}: {error}") from error
    else:
        try:
            module = importlib.import_module(location)
        except ImportError as error:
            raise RewardLoadError(f"cannot import module '{location}' for reward {source!r}: {error}") from error
    function = getattr(module, attribute, None)
    if function is None:
        raise RewardLoadError(f"'{location}' has no attribute '{attribute}' (reward {source!r})")
    if not callable(function):
        raise RewardLoadError(f"reward {source!r} is not callable")
    return function


def _failing_line(error: BaseException, path: str) -> str:
    """``line N`` of ``path`` where ``error`` was raised (the innermost frame in that file)."""
    import traceback

    if isinstance(error, SyntaxError) and error.lineno is not None:
        return f"line {error.lineno}"
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == path]
    return f"line {frames[-1].lineno}" if frames else "while importing"
