"""The interface every rollout engine satisfies (in-process sampler today; vLLM/SGLang later)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from grpokit.rollout.types import RolloutBatch, SamplingParams


@runtime_checkable
class RolloutEngine(Protocol):
    """Samples n completions per prompt from the current policy."""

    def generate(self, prompts: Sequence[str], n: int, sampling: SamplingParams) -> RolloutBatch:
        """Return a prompt-major batch of len(prompts)·n rows (see `RolloutBatch`)."""
        ...

    def sync_weights(self, model: Any) -> None:
        """Make the engine sample from `model`'s current weights (a no-op when it shares the model)."""
        ...
