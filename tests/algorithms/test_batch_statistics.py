"""Batch statistics: hand cases, and one batch's statistics equal to those of its parts concatenated."""

from __future__ import annotations

import pytest
import torch

from grpokit.algorithms import ClipCovConfig, KLCovConfig, batch_statistics, get_preset, policy_loss
from grpokit.algorithms.batch_statistics import concat_statistic_inputs
from grpokit.algorithms.policy_loss import loss_statistic_inputs

from ._strategies import random_batch

ENTROPY = torch.tensor([[0.1, 0.5, 0.9, 1.2, 0.3], [0.7, 0.8, 1.0, 0.2, 0.6]])


def test_top_entropy_threshold_of_two_micro_batches_is_the_spec_case():
    # Spec case: H = [0.1, 0.5, 0.9, 1.2, 0.3, 0.7, 0.8, 1.0, 0.2, 0.6], q = 0.8 → τ = 0.92 over all ten;
    # the rows alone would give τ = 0.96 and 0.84.
    preset = get_preset("grpo", top_entropy_quantile=0.8)
    logp, mask, adv = torch.zeros(1, 5), torch.ones(1, 5), torch.zeros(1)
    parts = [loss_statistic_inputs(preset, logp, logp, adv, mask, entropy=ENTROPY[i : i + 1]) for i in range(2)]
    threshold = batch_statistics(preset, concat_statistic_inputs(parts)).entropy_threshold
    torch.testing.assert_close(threshold, torch.tensor(0.92))
    alone = [batch_statistics(preset, part).entropy_threshold for part in parts]
    torch.testing.assert_close(torch.stack(alone), torch.tensor([0.96, 0.84]))


def test_self_normalisation_mean_is_over_every_valid_token_of_the_batch():
    # TIS weights ρ = π_old/μ = [1, 2 | 3] (cap 4; the padding token does not count) → mean 2, not 1.5 and 3.
    preset = get_preset("grpo", behaviour_correction="tis", behaviour_cap=4.0, self_normalize_is=True)
    old = torch.zeros(2, 2)
    behaviour = -torch.log(torch.tensor([[1.0, 2.0], [3.0, 9.0]]))
    mask = torch.tensor([[1, 1], [1, 0]])
    inputs = loss_statistic_inputs(preset, old, old, torch.zeros(2), mask, behaviour_logp=behaviour)
    torch.testing.assert_close(batch_statistics(preset, inputs).behaviour_weight_mean,
                               torch.tensor(2.0, dtype=torch.float64))


@pytest.mark.parametrize("preset", [
    get_preset("grpo", top_entropy_quantile=0.5, behaviour_correction="tis", self_normalize_is=True),
    get_preset("dapo", kl_cov=KLCovConfig(top_fraction=0.3),
               clip_cov=ClipCovConfig(clip_ratio=0.2, cov_low=-10.0, cov_high=10.0)),
])
def test_policy_loss_without_statistics_uses_those_of_its_own_batch(preset):
    data = random_batch(5, 4, 6)
    keys = torch.rand(4, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    args = (preset, data["logp"], data["old_logp"], data["advantages"], data["mask"])
    kwargs = dict(behaviour_logp=data["behaviour_logp"], entropy=data["entropy"], clip_cov_keys=keys)
    statistics = batch_statistics(preset, loss_statistic_inputs(*args, **kwargs))
    implicit, _ = policy_loss(*args, **kwargs)
    explicit, _ = policy_loss(*args, **kwargs, statistics=statistics)
    assert torch.equal(implicit, explicit)
