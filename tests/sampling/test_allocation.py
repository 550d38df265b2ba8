from __future__ import annotations

import itertools

import numpy as np
import pytest

from grpokit.sampling import allocate_group_sizes, expected_prob_group_informative


def test_budget_goes_to_the_largest_marginal_gains_hand_computed():
    # Beta(1,1): E[P_inf](G) = (G−1)/(G+1) → gains 2→3: 1/6, 3→4: 1/10, 4→5: 1/15, 5→6: 1/21.
    # Beta(1,9): 1 − 9/(9+G) − 1/C(9+G, G) → 9/55, 0.24545, 0.30629 → gains 0.0818, 0.0608.
    # Budget 9 = 2 + 2 + 5 extra: A(1/6), A(1/10), B(0.0818), A(1/15), B(0.0608) → [5, 4].
    assert allocate_group_sizes([1.0, 1.0], [1.0, 9.0], 9, min_size=2, max_size=8) == [5, 4]


def test_sizes_spend_the_whole_budget_within_bounds():
    sizes = allocate_group_sizes([1, 3, 0.5, 20], [1, 3, 9, 1], 23, min_size=2, max_size=8)
    assert sum(sizes) == 23 and all(2 <= g <= 8 for g in sizes)
    assert allocate_group_sizes([1, 1], [1, 1], 4, min_size=2, max_size=8) == [2, 2]
    assert allocate_group_sizes([1, 1], [1, 1], 100, min_size=2, max_size=8) == [8, 8]  # capped


def test_a_budget_below_the_minimum_is_an_error():
    with pytest.raises(ValueError, match="cannot give"):
        allocate_group_sizes([1, 1, 1], [1, 1, 1], 5, min_size=2, max_size=8)


def test_a_prompt_near_one_half_needs_fewer_rollouts_than_a_rare_success_prompt():
    # Both known well: p ≈ 0.5 is informative with few rollouts, p ≈ 0.1 needs many to see a success.
    sizes = allocate_group_sizes([50.0, 10.0], [50.0, 90.0], 16, min_size=2, max_size=14)
    assert sizes[1] > sizes[0]


def test_greedy_matches_exhaustive_search_on_small_cases():
    rng = np.random.default_rng(0)
    for _ in range(20):
        alpha = rng.uniform(0.3, 10, size=3)
        beta = rng.uniform(0.3, 10, size=3)
        budget = int(rng.integers(6, 19))
        greedy = allocate_group_sizes(alpha, beta, budget, min_size=2, max_size=8)

        def value(sizes, alpha=alpha, beta=beta):
            return sum(float(expected_prob_group_informative(a, b, g)) for a, b, g in zip(alpha, beta, sizes))

        best = max((s for s in itertools.product(range(2, 9), repeat=3) if sum(s) == budget), key=value)
        assert value(greedy) == pytest.approx(value(best), abs=1e-12)
