"""Rollouts: sampling params, the prompt-major `RolloutBatch`, the engine protocol, engines."""

from grpokit.rollout.engine import RolloutEngine
from grpokit.rollout.inprocess import InProcessEngine
from grpokit.rollout.types import FINISH_LENGTH, FINISH_STOP, RolloutBatch, SamplingParams, concat

__all__ = [
    "FINISH_LENGTH",
    "FINISH_STOP",
    "InProcessEngine",
    "RolloutBatch",
    "RolloutEngine",
    "SamplingParams",
    "concat",
]
