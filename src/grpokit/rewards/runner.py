"""Score a batch of completions with several rewards at once.

Rewards run concurrently in daemon worker threads (at most ``max_workers`` at a time), each with
its own optional ``timeout_seconds``. A reward that raises, times out or returns an unusable
list fails *for this batch*:

- ``on_error="stop"``: the runner raises that :class:`RewardError` (the first one, in reward order).
- ``on_error="none"``: its scores become None for the whole batch; the error is logged, counted
  in ``metrics`` and returned in ``RewardResult.errors``.

A NaN score is an error of the same kind, naming the reward and the first NaN sample, except under
``on_error="none"``, where only the NaN samples become None, with a warning and their count in
``metrics["rewards/<name>/nan_count"]``. (None is how a reward says "cannot judge this one"; NaN is
usually a bug, e.g. 0/0.) A reward still running after ``SLOW_REWARD_NOTICE_SECONDS`` is named in a
warning ("waiting for reward 'x' (10 s)"), and again at every multiple of it.

Python cannot stop a thread, so a timed-out call is abandoned, not killed: it keeps running in
its daemon thread and its late result is ignored.
"""

from __future__ import annotations

import logging
import math
import numbers
import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from grpokit.rewards.api import RESERVED_ARGUMENTS, Reward, RewardError

logger = logging.getLogger(__name__)

# After a reward raises, the runner re-calls it one sample at a time to name the first sample
# that fails; this bounds how long that search may take.
FAILING_SAMPLE_SEARCH_SECONDS = 2.0
# A reward call running longer than this is named in a warning, and again at every multiple of it.
SLOW_REWARD_NOTICE_SECONDS = 10.0


@dataclass
class RewardResult:
    """Scores of one batch of B completions under K rewards.

    ``matrix[b, k]``: reward ``names[k]`` for completion b, float32, NaN where it is None.
    ``total[b] = Σ_k weights[k] · matrix[b, k]`` — NaN when *any* of the row's rewards is NaN,
    so the trainer leaves that completion out rather than scoring it with a partial sum.
    ``matrix`` also serves multi-reward (GDPO) normalisation, which normalises each column.
    """

    names: list[str]
    weights: torch.Tensor  # [K]
    matrix: torch.Tensor  # [B, K]
    total: torch.Tensor  # [B]
    metrics: dict[str, float]
    errors: list[RewardError] = field(default_factory=list)

    @property
    def per_reward(self) -> dict[str, torch.Tensor]:
        return {name: self.matrix[:, k] for k, name in enumerate(self.names)}


@dataclass
class _Outcome:
    value: Any = None
    error: RewardError | None = None
    seconds: float = 0.0


class RewardRunner:
    """Runs ``rewards`` on batches; see the module docstring for concurrency and errors."""

    def __init__(self, rewards: Sequence[Reward], *, on_error: str = "stop", max_workers: int | None = None):
        if not rewards:
            raise ValueError("RewardRunner needs at least one reward")
        names = [r.name for r in rewards]
        if len(set(names)) != len(names):
            raise ValueError(f"reward names must be unique, got {names}")
        if on_error not in ("stop", "none"):
            raise ValueError(f"on_error must be 'stop' or 'none', got {on_error!r}")
        if max_workers is not None and max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        self.rewards = list(rewards)
        self.names = names
        self.weights = [float(r.weight) for r in rewards]
        self._weight_tensor = torch.tensor(self.weights, dtype=torch.float32)
        self.on_error = on_error
        self.max_workers = max_workers or min(8, len(rewards))

    def score(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        group_ids: Sequence[int] | torch.Tensor,
        columns: dict[str, Sequence[Any]] | None = None,
        completion_lengths: Sequence[int] | torch.Tensor | None = None,
    ) -> RewardResult:
        arguments = _call_arguments(prompts, completions, group_ids, columns or {}, completion_lengths)
        batch_size = len(completions)
        outcomes = self._run_all(arguments)
        matrix = torch.full((batch_size, len(self.rewards)), math.nan, dtype=torch.float32)
        errors: list[RewardError] = []
        nan_counts = [0] * len(self.rewards)
        for k, (reward, outcome) in enumerate(zip(self.rewards, outcomes)):
            error = outcome.error
            if error is None:
                try:
                    scores, nans = _checked_scores(reward.name, outcome.value, arguments,
                                                   nan_is_none=self.on_error == "none")
                    matrix[:, k] = torch.tensor([math.nan if s is None else s for s in scores])
                    nan_counts[k] = len(nans)
                    if nans:
                        logger.warning("reward '%s' returned NaN for %d of %d samples (first: sample %d); scored "
                                       "None (on_reward_error: none)", reward.name, len(nans), batch_size, nans[0])
                except RewardError as bad_return:
                    error = bad_return
            if error is not None:
                if self.on_error == "stop":
                    raise error
                logger.warning("%s; its scores are None for this batch of %d", error, batch_size)
                errors.append(error)
        total = (matrix * self._weight_tensor).sum(dim=1)
        metrics = _metrics(self.names, matrix, total, outcomes, errors)
        metrics.update({f"rewards/{name}/nan_count": float(n) for name, n in zip(self.names, nan_counts)})
        return RewardResult(list(self.names), self._weight_tensor.clone(), matrix, total, metrics, errors)

    def _run_all(self, arguments: dict[str, list[Any]]) -> list[_Outcome]:
        """Run every reward once; rewards that ask for the main thread (and have no timeout) run
        here while the others run in worker threads."""
        count = len(self.rewards)
        outcomes: list[_Outcome | None] = [None] * count
        inline = [k for k, r in enumerate(self.rewards) if r.main_thread and r.timeout_seconds is None]
        waiting = deque(k for k in range(count) if k not in inline)
        finished: queue.Queue[tuple[int, _Outcome]] = queue.Queue()
        deadlines: dict[int, float] = {}  # running reward -> monotonic deadline
        started: dict[int, float] = {}  # running reward -> monotonic start
        next_notice: dict[int, float] = {}  # running reward -> when to name it as slow next

        def launch_ready() -> None:
            while waiting and len(deadlines) < self.max_workers:
                k = waiting.popleft()
                reward = self.rewards[k]
                started[k] = time.monotonic()
                next_notice[k] = started[k] + SLOW_REWARD_NOTICE_SECONDS
                deadlines[k] = started[k] + (reward.timeout_seconds or math.inf)
                thread = threading.Thread(
                    target=lambda k=k, reward=reward: finished.put((k, _invoke(reward, arguments))),
                    name=f"grpokit-reward-{reward.name}",
                    daemon=True,
                )
                thread.start()

        launch_ready()
        for k in inline:
            outcomes[k] = _invoke(self.rewards[k], arguments)
        while deadlines or waiting:
            launch_ready()
            wake = min(min(deadlines.values()), min(next_notice[k] for k in deadlines))
            wait = wake - time.monotonic()
            try:
                k, outcome = finished.get(timeout=None if wait == math.inf else max(0.0, wait))
            except queue.Empty:
                now = time.monotonic()
                for k in [k for k, deadline in deadlines.items() if deadline <= now]:
                    del deadlines[k]
                    outcomes[k] = _timed_out(self.rewards[k])
                for k in [k for k in deadlines if next_notice[k] <= now]:
                    next_notice[k] += SLOW_REWARD_NOTICE_SECONDS
                    timeout = self.rewards[k].timeout_seconds
                    bound = f" of its {timeout:g} s timeout" if timeout is not None else ", no timeout"
                    logger.warning("waiting for reward '%s' (%.0f s%s)", self.rewards[k].name, now - started[k], bound)
                continue
            if k in deadlines:  # otherwise a late result of a call already given up on
                del deadlines[k]
                timeout = self.rewards[k].timeout_seconds
                late = timeout is not None and outcome.seconds > timeout
                outcomes[k] = _timed_out(self.rewards[k]) if late else outcome
        return outcomes  # type: ignore[return-value]


def _call_arguments(
    prompts: Sequence[str],
    completions: Sequence[str],
    group_ids: Sequence[int] | torch.Tensor,
    columns: dict[str, Sequence[Any]],
    completion_lengths: Sequence[int] | torch.Tensor | None,
) -> dict[str, list[Any]]:
    """The keyword arguments of every reward call, checked to be lists of one length B."""
    arguments: dict[str, list[Any]] = {
        "prompts": list(prompts),
        "completions": list(completions),
        "group_ids": [int(g) for g in group_ids],
    }
    if completion_lengths is not None:
        arguments["completion_lengths"] = [int(n) for n in completion_lengths]
    clashes = sorted(set(columns) & set(RESERVED_ARGUMENTS))
    if clashes:
        raise ValueError(f"data-set columns {clashes} clash with reward arguments {list(RESERVED_ARGUMENTS)}")
    arguments.update({name: list(values) for name, values in columns.items()})
    batch_size = len(arguments["completions"])
    wrong = {name: len(values) for name, values in arguments.items() if len(values) != batch_size}
    if wrong:
        raise ValueError(
            f"every reward argument must have {batch_size} entries (one per completion), got {wrong}"
        )
    return arguments


def _invoke(reward: Reward, arguments: dict[str, list[Any]]) -> _Outcome:
    start = time.perf_counter()
    try:
        value = reward(**arguments)
    except Exception as error:
        elapsed = time.perf_counter() - start
        search_seconds = FAILING_SAMPLE_SEARCH_SECONDS
        if reward.timeout_seconds is not None:
            search_seconds = min(search_seconds, reward.timeout_seconds - elapsed)
        index = _first_failing_sample(reward, arguments, search_seconds)
        reward_error = RewardError(
            reward.name,
            f"{type(error).__name__}: {error}",
            sample_index=index,
            prompt=None if index is None else arguments["prompts"][index],
            completion=None if index is None else arguments["completions"][index],
        )
        reward_error.__cause__ = error
        return _Outcome(error=reward_error, seconds=elapsed)
    return _Outcome(value=value, seconds=time.perf_counter() - start)


def _first_failing_sample(
    reward: Reward, arguments: dict[str, list[Any]], budget_seconds: float
) -> int | None:
    """Index of the first sample on which ``reward`` alone raises, or None if none does (the
    failure needs the whole batch) or ``budget_seconds`` run out."""
    end = time.perf_counter() + budget_seconds
    for i in range(len(arguments["completions"])):
        if time.perf_counter() >= end:
            return None
        try:
            reward(**{name: values[i : i + 1] for name, values in arguments.items()})
        except Exception:
            return i
    return None


def _timed_out(reward: Reward) -> _Outcome:
    message = (f"timed out after {reward.timeout_seconds:g} s (the call was abandoned in its thread); raise its "
               "timeout_seconds, or rewards_timeout_seconds (null: no bound)")
    return _Outcome(error=RewardError(reward.name, message), seconds=float(reward.timeout_seconds or 0.0))


def _checked_scores(
    name: str, value: Any, arguments: dict[str, list[Any]], *, nan_is_none: bool = False
) -> tuple[list[float | None], list[int]]:
    """The returned scores as floats (None for None) and the indices of NaN scores; RewardError for a
    wrong type or length, a non-number, an infinite value, or a NaN unless ``nan_is_none`` (then None)."""
    batch_size = len(arguments["completions"])
    if isinstance(value, torch.Tensor) or hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise RewardError(name, f"returned {type(value).__name__}, expected a list of {batch_size} floats")
    if len(value) != batch_size:
        raise RewardError(name, f"returned {len(value)} scores for {batch_size} completions")
    scores: list[float | None] = []
    nans: list[int] = []
    for i, score in enumerate(value):
        if isinstance(score, numbers.Real) and math.isnan(score):
            if not nan_is_none:
                raise RewardError(
                    name, "returned NaN; return None for a sample it cannot judge (or set on_reward_error: none "
                    "to score NaN as None)", sample_index=i, prompt=arguments["prompts"][i],
                    completion=arguments["completions"][i])
            nans.append(i)
            scores.append(None)
        elif score is None:
            scores.append(None)
        elif isinstance(score, numbers.Real) and math.isfinite(score):
            scores.append(float(score))
        else:
            problem = "an infinite score" if isinstance(score, numbers.Real) else f"a {type(score).__name__}"
            raise RewardError(
                name,
                f"returned {problem} ({score!r}); expected float or None",
                sample_index=i,
                prompt=arguments["prompts"][i],
                completion=arguments["completions"][i],
            )
    return scores, nans


def _metrics(
    names: list[str],
    matrix: torch.Tensor,
    total: torch.Tensor,
    outcomes: list[_Outcome],
    errors: list[RewardError],
) -> dict[str, float]:
    """Per reward: mean and population std over its non-None scores, how many were None, whether
    it failed this batch, and its seconds; the same mean/std/NaN count for the total."""
    failed = {error.reward_name for error in errors}
    metrics: dict[str, float] = {}
    for k, name in enumerate(names):
        metrics.update(_mean_std(f"rewards/{name}", matrix[:, k]))
        metrics[f"rewards/{name}/none_count"] = float(torch.isnan(matrix[:, k]).sum())
        metrics[f"rewards/{name}/errors"] = float(name in failed)
        metrics[f"rewards/{name}/seconds"] = outcomes[k].seconds
    metrics.update(_mean_std("rewards/total", total))
    metrics["rewards/total/nan_count"] = float(torch.isnan(total).sum())
    return metrics


def _mean_std(prefix: str, values: torch.Tensor) -> dict[str, float]:
    valid = values[~torch.isnan(values)].double()
    if valid.numel() == 0:
        return {f"{prefix}/mean": math.nan, f"{prefix}/std": math.nan}
    return {f"{prefix}/mean": float(valid.mean()), f"{prefix}/std": float(valid.std(correction=0))}
