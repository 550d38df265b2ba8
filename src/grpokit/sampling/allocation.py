"""How many rollouts each selected prompt gets, under a fixed rollout budget per step.

Objective ("Knapsack RL", 2509.25849): maximise the expected number of informative groups,

    max_{G_1..G_k}  Σ_i E[P_inf(p_i, G_i)]   subject to  Σ_i G_i = budget,  G_min ≤ G_i ≤ G_max,

with E[P_inf] under prompt i's Beta posterior (`selection.expected_prob_group_informative`).
E[P_inf] is increasing and concave in G (each extra rollout is less likely to be the first one
that differs), so the greedy rule — start every prompt at G_min, then give one rollout at a time
to the prompt whose E[P_inf] grows the most — is optimal for this separable concave problem.

What it does in practice: a prompt known to sit near p = 0.5 is informative already with 2–4
rollouts, so it gets few; a prompt near p = 0.1 (or an uncertain one) gets more, because a rare
success is what makes its group informative; a prompt near 0 or 1 stays at G_min.
"""

from __future__ import annotations

import heapq

import numpy as np

from grpokit.sampling.selection import expected_prob_group_informative


def allocate_group_sizes(alpha, beta, budget: int, *, min_size: int = 2, max_size: int = 16) -> list[int]:
    """Per-prompt group sizes G_i (greedy on marginal E[P_inf] gain; module docstring).

    Uses the whole budget unless every prompt reaches ``max_size``. Ties go to the earlier prompt.
    Raises when the budget cannot give every prompt ``min_size``.
    """
    alpha = np.asarray(alpha, dtype=np.float64).reshape(-1)
    beta = np.asarray(beta, dtype=np.float64).reshape(-1)
    count = len(alpha)
    if min_size < 1 or max_size < min_size:
        raise ValueError(f"need 1 <= min_size <= max_size, got {min_size}, {max_size}")
    if budget < min_size * count:
        raise ValueError(f"budget {budget} cannot give {count} prompts {min_size} rollouts each")
    sizes = [min_size] * count
    if count == 0:
        return sizes
    # value[i, G − min_size] = E[P_inf(p_i, G)] for G = min_size..max_size.
    value = np.stack(
        [expected_prob_group_informative(alpha, beta, g) for g in range(min_size, max_size + 1)], axis=1
    )
    gain = np.diff(value, axis=1)  # gain[i, j]: from G = min_size + j to min_size + j + 1
    heap = [(-gain[i, 0], i) for i in range(count)] if max_size > min_size else []
    heapq.heapify(heap)
    left = budget - min_size * count
    while left > 0 and heap:
        _, i = heapq.heappop(heap)
        sizes[i] += 1
        left -= 1
        step = sizes[i] - min_size
        if sizes[i] < max_size:
            heapq.heappush(heap, (-gain[i, step], i))
    return sizes
