"""GRPO-family maths as pure tensor functions (imports only torch). Formulas: each docstring.

A surrogate, advantage estimator, KL estimator or aggregation mode is one function registered in
:mod:`grpokit.algorithms.registry`; a :class:`Preset` names it.
"""

from __future__ import annotations

from .advantages import (
    combine_rewards,
    compute_advantages,
    gpg_advantages,
    group_advantages,
    rloo_advantages,
    valid_reward_mask,
)
from .aggregation import AGGREGATION_MODES, aggregate_loss
from .batch_statistics import BatchStatistics, batch_statistics, statistic_inputs
from .covariance import clip_cov_mask, kl_cov_penalty, token_covariance
from .critic import clipped_value_loss, gae_advantages, token_rewards_with_kl, whiten
from .entropy import (
    logprobs_and_entropy_from_hidden,
    logprobs_and_entropy_from_logits,
    naive_logprobs_and_entropy,
    top_entropy_mask,
)
from .kl import KL_ESTIMATORS, kl_estimate, kl_reward_penalty
from .off_policy import behaviour_importance_weights, self_normalize_weights
from .overlong import default_overlong_cache_len, overlong_filter_mask, soft_overlong_penalty
from .policy_loss import policy_loss
from .presets import PRESETS, ClipCovConfig, KLCovConfig, Preset, get_preset
from .ratios import (
    MAX_LOG_RATIO,
    gspo_token_log_ratio,
    importance_ratio,
    sequence_log_ratio,
    sequence_ratio_geometric_mean,
    sequence_ratio_product,
    token_log_ratio,
    zero_masked,
)
from .registry import (
    ADVANTAGE_ESTIMATORS,
    AGGREGATIONS,
    KL_ESTIMATORS_REGISTRY,
    SURROGATES,
    register_advantage,
    register_aggregation,
    register_kl_estimator,
    register_surrogate,
)
from .surrogates import cispo_loss, gmpo_loss, gpg_loss, ppo_clip_loss, sapo_loss

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATIONS",
    "AGGREGATION_MODES",
    "KL_ESTIMATORS_REGISTRY",
    "SURROGATES",
    "MAX_LOG_RATIO",
    "BatchStatistics",
    "KL_ESTIMATORS",
    "PRESETS",
    "ClipCovConfig",
    "KLCovConfig",
    "Preset",
    "aggregate_loss",
    "batch_statistics",
    "behaviour_importance_weights",
    "cispo_loss",
    "clip_cov_mask",
    "clipped_value_loss",
    "combine_rewards",
    "compute_advantages",
    "default_overlong_cache_len",
    "get_preset",
    "gae_advantages",
    "gmpo_loss",
    "gpg_advantages",
    "gpg_loss",
    "group_advantages",
    "gspo_token_log_ratio",
    "importance_ratio",
    "kl_cov_penalty",
    "kl_estimate",
    "kl_reward_penalty",
    "logprobs_and_entropy_from_hidden",
    "logprobs_and_entropy_from_logits",
    "naive_logprobs_and_entropy",
    "overlong_filter_mask",
    "policy_loss",
    "ppo_clip_loss",
    "register_advantage",
    "register_aggregation",
    "register_kl_estimator",
    "register_surrogate",
    "rloo_advantages",
    "sapo_loss",
    "self_normalize_weights",
    "sequence_log_ratio",
    "sequence_ratio_geometric_mean",
    "sequence_ratio_product",
    "soft_overlong_penalty",
    "statistic_inputs",
    "token_covariance",
    "token_log_ratio",
    "token_rewards_with_kl",
    "top_entropy_mask",
    "valid_reward_mask",
    "whiten",
    "zero_masked",
]
