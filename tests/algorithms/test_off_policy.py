from __future__ import annotations

import math

import pytest
import torch

from grpokit.algorithms import behaviour_importance_weights, self_normalize_weights

# ρ per token: [3, 1, 0.25 | 0.5, (padding)]
OLD = torch.log(torch.tensor([[0.6, 0.5, 0.1], [0.2, 0.9, 0.9]]))
BEHAVIOUR = torch.log(torch.tensor([[0.2, 0.5, 0.4], [0.4, 0.1, 0.1]]))
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


def test_tis_truncates_token_ratio_at_cap():
    weights, metrics = behaviour_importance_weights(OLD, BEHAVIOUR, MASK, method="tis", cap=2.0)
    torch.testing.assert_close(weights, torch.tensor([[2.0, 1.0, 0.25], [0.5, 0.0, 0.0]]))
    assert metrics["frac_truncated"].item() == pytest.approx(0.25)
    abs_log = [math.log(3), 0.0, math.log(4), math.log(2)]
    assert metrics["mismatch_abs_logratio_mean"].item() == pytest.approx(sum(abs_log) / 4, rel=1e-5)
    assert metrics["mismatch_abs_logratio_max"].item() == pytest.approx(math.log(4), rel=1e-5)
    k3 = [rho - 1 - math.log(rho) for rho in (3.0, 1.0, 0.25, 0.5)]
    assert metrics["kl_mu_old_k3"].item() == pytest.approx(sum(k3) / 4, rel=1e-5)
    assert not weights.requires_grad


def test_mis_drops_tokens_outside_bounds():
    weights, metrics = behaviour_importance_weights(
        OLD, BEHAVIOUR, MASK, method="mis", cap=2.0, lower_cap=0.3
    )
    torch.testing.assert_close(weights, torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.0]]))
    assert metrics["frac_masked"].item() == pytest.approx(0.5)


def test_sequence_level_uses_product_and_geometric_uses_length_normalized_product():
    seq, _ = behaviour_importance_weights(OLD, BEHAVIOUR, MASK, method="tis", level="sequence", cap=10.0)
    torch.testing.assert_close(seq, torch.tensor([[0.75, 0.75, 0.75], [0.5, 0.0, 0.0]]))
    geo, _ = behaviour_importance_weights(OLD, BEHAVIOUR, MASK, method="tis", level="geometric", cap=10.0)
    row0 = 0.75 ** (1 / 3)
    torch.testing.assert_close(geo, torch.tensor([[row0, row0, row0], [0.5, 0.0, 0.0]]))


def test_none_method_gives_unit_weights_on_valid_tokens():
    weights, metrics = behaviour_importance_weights(OLD, BEHAVIOUR, MASK, method="none")
    assert weights.tolist() == [[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]
    assert "frac_truncated" not in metrics


def test_nan_behaviour_logprob_counts_as_ratio_one():
    behaviour = BEHAVIOUR.clone()
    behaviour[0, 0] = float("nan")
    weights, _ = behaviour_importance_weights(OLD, behaviour, MASK, method="tis")
    assert weights[0, 0] == 1.0


def test_unknown_level_is_rejected():
    with pytest.raises(ValueError, match="geometric"):
        behaviour_importance_weights(OLD, BEHAVIOUR, MASK, level="seq")


def test_self_normalize_spec_case():
    out = self_normalize_weights(torch.tensor([1.0, 2.0, 3.0]), torch.ones(3))
    torch.testing.assert_close(out, torch.tensor([0.5, 1.0, 1.5]))


def test_self_normalize_over_valid_tokens_and_with_global_statistics():
    weights = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(self_normalize_weights(weights, mask), torch.tensor([[0.5, 1.5, 0.0]]))
    out = self_normalize_weights(weights, mask, global_sum=8.0, global_count=2)
    torch.testing.assert_close(out, torch.tensor([[0.25, 0.75, 0.0]]))


def test_importance_weight_statistics_of_applied_weights_with_hand_computed_ess():
    # TIS weights [2, 1, 0.25 | 0.5]: mean 3.75 / 4, max 2, ESS = 3.75² / (4 · (4 + 1 + 0.0625 + 0.25))
    _, metrics = behaviour_importance_weights(OLD, BEHAVIOUR, MASK, method="tis", cap=2.0)
    assert metrics["is_weight_mean"].item() == pytest.approx(0.9375, rel=1e-6)
    assert metrics["is_weight_max"].item() == pytest.approx(2.0, rel=1e-6)
    assert metrics["is_ess"].item() == pytest.approx(3.75**2 / (4 * 5.3125), rel=1e-6)
    # uncorrected ("none"): the statistics of ρ itself, [3, 1, 0.25 | 0.5]
    _, metrics = behaviour_importance_weights(OLD, BEHAVIOUR, MASK, method="none")
    assert metrics["is_weight_max"].item() == pytest.approx(3.0, rel=1e-6)
    assert metrics["is_ess"].item() == pytest.approx(4.75**2 / (4 * 10.3125), rel=1e-6)


def test_ess_is_one_for_equal_weights_and_the_textbook_case():
    from grpokit.algorithms.off_policy import importance_weight_statistics

    valid = torch.ones(4, dtype=torch.bool)
    assert importance_weight_statistics(torch.full((4,), 0.7), valid)["is_ess"].item() == pytest.approx(1.0)
    assert importance_weight_statistics(torch.tensor([1.0, 1.0, 1.0, 3.0]), valid)["is_ess"].item() == \
        pytest.approx(0.75)  # 6² / (4 · 12)
    assert importance_weight_statistics(torch.zeros(4), valid)["is_ess"].item() == 1.0  # nothing weighted
