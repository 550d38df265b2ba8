"""Rewards: the function contract, built-ins, a loader and a concurrent runner.

    from grpokit.rewards import RewardRunner, load_reward

    runner = RewardRunner([load_reward("correctness_xml"), load_reward("xml_count", weight=0.5)])
    result = runner.score(prompts, completions, group_ids, columns={"answer": answers})
    result.total      # [B], NaN where any reward is None
    result.matrix     # [B, K], for per-reward (GDPO) normalisation

Importing this package does not import transformers or math-verify; the reward model and the
math-verify reward import them when built.
"""

from grpokit.rewards.api import RESERVED_ARGUMENTS, Reward, RewardError, RewardFn, RewardLoadError, RewardSpec
from grpokit.rewards.loader import BUILTIN_REWARDS, load_reward, load_rewards
from grpokit.rewards.runner import RewardResult, RewardRunner

__all__ = [
    "BUILTIN_REWARDS",
    "RESERVED_ARGUMENTS",
    "Reward",
    "RewardError",
    "RewardFn",
    "RewardLoadError",
    "RewardResult",
    "RewardRunner",
    "RewardSpec",
    "load_reward",
    "load_rewards",
]
