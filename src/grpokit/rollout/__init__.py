"""Rollouts: sampling params, the prompt-major `RolloutBatch`, the engine protocol, engines."""

from grpokit.rollout.engine import RolloutEngine
from grpokit.rollout.inprocess import InProcessEngine
from grpokit.rollout.types import (
    FINISH_LENGTH,
    FINISH_STOP,
    RolloutBatch,
    SamplingParams,
    concat,
    concat_rollouts,
)

__all__ = [
    "FINISH_LENGTH",
    "FINISH_STOP",
    "InProcessEngine",
    "RolloutBatch",
    "RolloutEngine",
    "SamplingParams",
    "concat",
    "concat_rollouts",
]
