"""The interface every rollout engine satisfies: `InProcessEngine` (`inprocess.py`) and the vLLM engines
(`vllm_engine.py`: a vLLM `LLM` in this process, or a `grpokit vllm-serve` server); a new engine is one file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from grpokit.rollout.types import RolloutBatch, SamplingParams


@runtime_checkable
class RolloutEngine(Protocol):
    """Samples n completions per prompt from the current policy."""

    def generate(
        self,
        prompts: Sequence[str],
        n: int,
        sampling: SamplingParams,
        *,
        prompt_seeds: Sequence[int] | None = None,
    ) -> RolloutBatch:
        """Return a prompt-major batch of len(prompts)·n rows (see `RolloutBatch`).

        `prompt_seeds[j]` seeds the completions of `prompts[j]` alone, so they do not depend on which
        other prompts share the call (multi-process training shards prompts across ranks); None:
        one stream from `sampling.seed` for the whole call.
        """
        ...

    def sync_weights(self, model: Any) -> None:
        """Make the engine sample from `model`'s current weights (a no-op when it shares the model)."""
        ...
