"""Per-prompt pass-rate posteriors: a Beta(α, β) for each prompt, updated from every scored group.

The model (algorithms spec §9): a prompt's pass rate p under the current policy has the prior
Beta(α0, β0); a group of n scored rollouts with s successes updates it to Beta(α0 + s, β0 + n − s).
Case: prior (1, 1), 6 of 8 → Beta(7, 3), mean 0.7.

The policy changes while it trains, so old evidence should count less. A discount λ ∈ (0, 1] is
applied before each update of a prompt (MoPPS, "Can Prompt Difficulty be Online Predicted…",
2507.04632):  α ← λ·α + s,  β ← λ·β + (n − s).  λ = 1 is the plain (stationary) posterior; with
λ < 1 the total evidence α + β of a prompt scored n at a time stays below n / (1 − λ).

A rollout counts as a success when its total reward is *strictly above* a threshold (0.5 suits a
binary 0/1 reward; the same rule as held-out evaluation); rows whose reward is NaN (a reward
function returned None) are not evidence either way.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def beta_update(alpha, beta, successes, trials, discount: float = 1.0):
    """Discounted conjugate update; returns (α', β').

    α' = λ·α + s,  β' = λ·β + (n − s), elementwise over arrays (or scalars), λ = ``discount``.
    """
    if not 0.0 < discount <= 1.0:
        raise ValueError(f"discount must be in (0, 1], got {discount}")
    successes = np.asarray(successes, dtype=np.float64)
    trials = np.asarray(trials, dtype=np.float64)
    if np.any(successes < 0) or np.any(successes > trials):
        raise ValueError("need 0 <= successes <= trials")
    return discount * np.asarray(alpha, dtype=np.float64) + successes, discount * np.asarray(
        beta, dtype=np.float64
    ) + (trials - successes)


def beta_mean(alpha, beta):
    """E[p] = α / (α + β)."""
    alpha, beta = np.asarray(alpha, dtype=np.float64), np.asarray(beta, dtype=np.float64)
    return alpha / (alpha + beta)


def beta_std(alpha, beta):
    """sd[p] = sqrt(α·β / ((α + β)²·(α + β + 1)))."""
    alpha, beta = np.asarray(alpha, dtype=np.float64), np.asarray(beta, dtype=np.float64)
    total = alpha + beta
    return np.sqrt(alpha * beta / (total * total * (total + 1.0)))


def group_successes(rewards, group_ids, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group, in order of first appearance: (group ids, successes s_g, trials n_g).

    s_g = #{rows i of group g with reward_i > threshold}, n_g = #{rows of g with a non-NaN reward}.
    Groups need not be contiguous nor of equal size.
    """
    rewards = np.asarray(rewards, dtype=np.float64).reshape(-1)
    group_ids = np.asarray(group_ids).reshape(-1)
    if rewards.shape != group_ids.shape:
        raise ValueError(f"rewards {rewards.shape} and group_ids {group_ids.shape} differ in shape")
    _, first, inverse = np.unique(group_ids, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # np.unique sorts ids; report groups as they appear
    valid = ~np.isnan(rewards)
    success = valid & (np.nan_to_num(rewards, nan=-np.inf) > threshold)
    trials = np.bincount(inverse, weights=valid, minlength=len(first))
    successes = np.bincount(inverse, weights=success, minlength=len(first))
    return group_ids[first[order]], successes[order], trials[order]


class PromptPosteriors:
    """Beta(α_i, β_i) for prompts i = 0..N−1, plus how often each was scored (for the table)."""

    def __init__(
        self, num_prompts: int, *, prior_alpha: float = 1.0, prior_beta: float = 1.0, discount: float = 1.0
    ):
        if num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
        if prior_alpha <= 0 or prior_beta <= 0:
            raise ValueError(f"prior must be positive, got Beta({prior_alpha}, {prior_beta})")
        if not 0.0 < discount <= 1.0:
            raise ValueError(f"discount must be in (0, 1], got {discount}")
        self.num_prompts = num_prompts
        self.prior_alpha = float(prior_alpha)
        self.prior_beta = float(prior_beta)
        self.discount = float(discount)
        self.alpha = np.full(num_prompts, self.prior_alpha)
        self.beta = np.full(num_prompts, self.prior_beta)
        self.visits = np.zeros(num_prompts, dtype=np.int64)  # scored groups
        self.rollouts = np.zeros(num_prompts, dtype=np.int64)  # scored rollouts (valid rewards)
        self.last_update = np.full(num_prompts, -1, dtype=np.int64)  # the update counter, -1 = never

    @property
    def mean(self) -> np.ndarray:
        return beta_mean(self.alpha, self.beta)

    @property
    def std(self) -> np.ndarray:
        return beta_std(self.alpha, self.beta)

    def update(self, prompt_indices, successes, trials, *, clock: int = 0) -> None:
        """Apply `beta_update` to each listed prompt; a prompt listed twice is updated twice, in order."""
        prompt_indices = np.asarray(prompt_indices, dtype=np.int64).reshape(-1)
        successes = np.asarray(successes, dtype=np.float64).reshape(-1)
        trials = np.asarray(trials, dtype=np.float64).reshape(-1)
        for i, s, n in zip(prompt_indices.tolist(), successes.tolist(), trials.tolist()):
            if n == 0:
                continue  # every reward of the group was None: no evidence, no discount
            self.alpha[i], self.beta[i] = beta_update(self.alpha[i], self.beta[i], s, n, self.discount)
            self.visits[i] += 1
            self.rollouts[i] += int(n)
            self.last_update[i] = clock

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable (lists of Python floats, which round-trip exactly)."""
        return {
            "num_prompts": self.num_prompts,
            "prior_alpha": self.prior_alpha,
            "prior_beta": self.prior_beta,
            "discount": self.discount,
            "alpha": self.alpha.tolist(),
            "beta": self.beta.tolist(),
            "visits": self.visits.tolist(),
            "rollouts": self.rollouts.tolist(),
            "last_update": self.last_update.tolist(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_prompts"] != self.num_prompts:
            raise ValueError(
                f"posterior state has {state['num_prompts']} prompts but this data set has "
                f"{self.num_prompts}; resume with the same data set"
            )
        # The prior and the discount are settings: the current config's values are kept.
        self.alpha = np.asarray(state["alpha"], dtype=np.float64)
        self.beta = np.asarray(state["beta"], dtype=np.float64)
        self.visits = np.asarray(state["visits"], dtype=np.int64)
        self.rollouts = np.asarray(state["rollouts"], dtype=np.int64)
        self.last_update = np.asarray(state["last_update"], dtype=np.int64)
