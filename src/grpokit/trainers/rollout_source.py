"""Where a training step's rollout comes from, so that the trainer's step reads the same either way:

    scored ← rollouts.take(s)          sampled now, or taken from a producer that sampled it ahead
    … advantages, μ passes of updates …
    rollouts.updated(s)                 the weights after update s exist (the producer may sample with them)

`SyncRollouts` samples step s with the current weights when the trainer asks (the synchronous loop).
`grpokit.trainers.async_rollouts.AsyncRollouts` (`training.async.max_staleness: k`) has a producer that
sampled step s with the weights after update s − k. Both provide the methods below; the checkpoint
holds what `checkpoint_state` returns.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Protocol

from grpokit.trainers.scored import ScoredRollout

log = logging.getLogger("grpokit.trainer")

ASYNC_QUEUE_KEY = "async_queue"  # the checkpoint's queued rollouts (rank 0's, or the only process's)
ASYNC_QUEUE_BY_RANK_KEY = "async_queue_by_rank"  # with several processes: every rank's queue, in rank order


class RolloutSource(Protocol):
    owns_engine: bool  # True: the source pushes weights to the trainer's engine, not the trainer

    def start(self, version: int) -> None: ...
    def stop(self) -> None: ...
    def take(self, step: int) -> ScoredRollout: ...
    def sampler_metrics(self) -> dict[str, float]: ...
    def advantage_scale(self) -> float: ...
    def updated(self, step: int) -> None: ...
    def step_metrics(self) -> dict[str, float]: ...
    def checkpoint_state(self, step: int) -> dict[str, Any]: ...
    def load_checkpoint_state(self, extra: dict, *, rank: int = 0, world_size: int = 1) -> None: ...
    def evaluation_engine(self) -> contextlib.AbstractContextManager: ...


class SyncRollouts:
    """Sample and score step s when the trainer asks, with the weights it has now."""

    owns_engine = False  # the trainer pushes its weights to its engine after every update

    def __init__(self, trainer):
        self.trainer = trainer

    def evaluation_engine(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def start(self, version: int) -> None:
        pass

    def stop(self) -> None:
        pass

    def take(self, step: int) -> ScoredRollout:
        return self.trainer.sample(step)

    def sampler_metrics(self) -> dict[str, float]:
        """The prompt sampler's metrics as of drawing the step just taken."""
        sampler = self.trainer.sampler
        return sampler.metrics() if hasattr(sampler, "metrics") else {}

    def advantage_scale(self) -> float:
        return 1.0

    def updated(self, step: int) -> None:
        pass

    def step_metrics(self) -> dict[str, float]:
        return {}

    def checkpoint_state(self, step: int) -> dict[str, Any]:
        return {}

    def load_checkpoint_state(self, extra: dict, *, rank: int = 0, world_size: int = 1) -> None:
        queued = extra.get(ASYNC_QUEUE_KEY)
        if queued:  # resumed with training.async off: their prompts are not trained on
            log.warning("the checkpoint holds %d queued asynchronous rollouts (training.async); resumed "
                        "synchronously, their prompts are skipped", len(queued))
