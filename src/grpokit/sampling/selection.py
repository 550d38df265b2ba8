"""Which prompts to roll out: rank by how likely a group of G is to teach anything.

A group whose rewards are all equal has zero advantage everywhere and no gradient. For a binary
reward with pass rate p, the probability that a group of G is *not* all-equal is

    P_inf(p, G) = 1 − p^G − (1 − p)^G                       (spec §9; G = 8: p = 0.5 → 0.9921875)

Under a Beta(α, β) posterior the expectation has a closed form (the Beta-binomial probability that
G fresh rollouts are not all-equal), since E[p^G] = Π_{i=0}^{G−1} (α + i) / (α + β + i):

    E[P_inf] = 1 − Π_i (α + i)/(α + β + i) − Π_i (β + i)/(α + β + i)

Case Beta(1, 1): (G − 1)/(G + 1), so 1/3 at G = 2 and 7/9 at G = 8.

Selection takes the k prompts with the highest score — the expectation above, or a Thompson draw
P_inf(p̃, G) with p̃ ~ Beta(α, β) (MoPPS), which explores uncertain prompts by itself — among the
prompts not *skipped*: those whose expected score is below a threshold, i.e. confidently solved
(mean > 0.5) or hopeless (mean ≤ 0.5). A revisit floor reserves a fraction of the k slots for
prompts drawn uniformly from all of them, skipped ones included, so a prompt the policy has learnt
(or unlearnt) since its last visit is seen again (GRESO, 2506.02177, also skips prompts with a
probability that leaves them a way back).
"""

from __future__ import annotations

import numpy as np

STATUS_INFORMATIVE, STATUS_SOLVED, STATUS_HOPELESS = 0, 1, 2


def prob_group_informative(p, group_size: int):
    """P_inf(p, G) = 1 − p^G − (1 − p)^G: the chance G binary rollouts at pass rate p are not all equal."""
    p = np.asarray(p, dtype=np.float64)
    return 1.0 - p**group_size - (1.0 - p) ** group_size


def expected_reward_variance(p):
    """p·(1 − p): the variance of one binary reward at pass rate p; peaks at p = 0.5."""
    p = np.asarray(p, dtype=np.float64)
    return p * (1.0 - p)


def _beta_moment(a: np.ndarray, total: np.ndarray, group_size: int) -> np.ndarray:
    """E[p^G] for p ~ Beta(a, total − a) = Π_{i<G} (a + i)/(total + i)."""
    i = np.arange(group_size, dtype=np.float64)
    return np.prod((a[..., None] + i) / (total[..., None] + i), axis=-1)


def expected_prob_group_informative(alpha, beta, group_size: int):
    """E[P_inf(p, G)] under p ~ Beta(α, β) = 1 − E[p^G] − E[(1 − p)^G] (module docstring)."""
    alpha = np.asarray(alpha, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    total = alpha + beta
    return 1.0 - _beta_moment(alpha, total, group_size) - _beta_moment(beta, total, group_size)


def thompson_scores(alpha, beta, group_size: int, rng: np.random.Generator):
    """P_inf(p̃, G) with one draw p̃ ~ Beta(α_i, β_i) per prompt (Thompson sampling; MoPPS)."""
    return prob_group_informative(rng.beta(np.asarray(alpha), np.asarray(beta)), group_size)


def prompt_status(alpha, beta, group_size: int, skip_below: float):
    """Per prompt: STATUS_SOLVED / STATUS_HOPELESS when E[P_inf] < ``skip_below`` (by whether the
    posterior mean is above 0.5), else STATUS_INFORMATIVE."""
    alpha = np.asarray(alpha, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    skipped = expected_prob_group_informative(alpha, beta, group_size) < skip_below
    solved = alpha > beta  # mean > 0.5
    return np.where(skipped, np.where(solved, STATUS_SOLVED, STATUS_HOPELESS), STATUS_INFORMATIVE)


def exploration_slots(k: int, revisit_floor: float, rng: np.random.Generator) -> int:
    """How many of k slots go to uniformly drawn prompts: floor·k, rounded up or down at random so
    that its expectation is exactly floor·k (1.6 → 2 with probability 0.6, else 1)."""
    if not 0.0 <= revisit_floor <= 1.0:
        raise ValueError(f"revisit_floor must be in [0, 1], got {revisit_floor}")
    expected = revisit_floor * k
    whole = int(np.floor(expected))
    return min(k, whole + int(rng.random() < expected - whole))


def select_prompts(scores, status, k: int, revisit_floor: float, rng: np.random.Generator) -> np.ndarray:
    """k distinct prompt indices: `exploration_slots` of them uniformly from all prompts, the rest the
    highest-scoring prompts left, informative ones before skipped ones (ties in random order).

    The uniform slots are the revisit floor: each prompt, skipped or not, is drawn in a step with
    probability at least floor·k / N (N prompts).
    """
    scores = np.asarray(scores, dtype=np.float64)
    status = np.asarray(status)
    count = len(scores)
    if not 0 < k <= count:
        raise ValueError(f"cannot draw {k} distinct prompts out of {count}")
    explore = rng.choice(count, size=exploration_slots(k, revisit_floor, rng), replace=False)
    taken = np.zeros(count, dtype=bool)
    taken[explore] = True
    # Sort keys, last one primary: not yet taken, then informative before skipped, then score, then random.
    order = np.lexsort((rng.random(count), -scores, status != STATUS_INFORMATIVE, taken))
    return np.concatenate([explore, order[: k - len(explore)]]).astype(np.int64)
