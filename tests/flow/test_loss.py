from __future__ import annotations

import math

import pytest
import torch

from grpokit.algorithms import aggregate_loss
from grpokit.flow.loss import StepDiagnostics, aggregate_step, step_loss
from grpokit.flow.presets import FLOW_GRPO, FLOW_GRPO_GUARD

PLAIN = FLOW_GRPO.replace(eps_low=0.2, eps_high=0.2, beta=0.0)


def _step(preset, log_ratio, advantages, *, mean=None, old_mean=None, std=0.1, weight=1.0, ref_mean=None):
    log_ratio = torch.as_tensor(log_ratio, dtype=torch.float64)
    rows = len(log_ratio)
    old_mean = torch.zeros(rows, 2, dtype=torch.float64) if old_mean is None else old_mean
    mean = old_mean.clone() if mean is None else mean
    return step_loss(
        preset,
        log_ratio,
        torch.zeros(rows, dtype=torch.float64),
        torch.as_tensor(advantages),
        mean=mean,
        old_mean=old_mean,
        std=std,
        weight=weight,
        ref_mean=ref_mean,
    )


def test_plain_step_loss_is_ppo_clip_of_the_raw_ratio():
    result = _step(PLAIN, [math.log(1.5), math.log(1.5), math.log(0.5)], [1.0, -1.0, -1.0])
    assert result.loss.tolist() == pytest.approx([-1.2, 1.5, 0.8])
    assert result.clipped_high.tolist() == [True, False, False]
    assert result.clipped_low.tolist() == [False, False, True]


def test_advantages_are_clamped_to_adv_clip_max():
    result = _step(PLAIN, [0.0, 0.0], [10.0, -7.0])
    assert result.loss.tolist() == pytest.approx([-5.0, 5.0])


def test_balancing_weight_scales_the_surrogate():
    result = _step(PLAIN, [0.0], [2.0], weight=0.25)
    assert result.loss.item() == pytest.approx(-0.5)


def test_ratio_norm_adds_back_the_shift_and_multiplies_by_the_step_std():
    # mean form, D = 2, Δμ = (0.01, 0.03), s = 0.1: shift = mean(Δμ²)/(2s²) = 0.025; r̂ = exp(0.1·(logr + 0.025))
    guard = FLOW_GRPO_GUARD.replace(eps_low=0.2, eps_high=0.2, beta=0.0, step_balancing=False)
    old_mean = torch.zeros(1, 2, dtype=torch.float64)
    mean = torch.tensor([[0.01, 0.03]], dtype=torch.float64)
    result = _step(guard, [-0.3], [1.0], mean=mean, old_mean=old_mean)
    expected = 0.1 * (-0.3 + 0.025)
    assert result.log_ratio.item() == pytest.approx(expected)
    assert result.raw_log_ratio.item() == pytest.approx(-0.3)
    assert result.loss.item() == pytest.approx(-math.exp(expected))


def test_kl_term_is_beta_times_the_gaussian_kl_between_step_means():
    preset = PLAIN.replace(beta=0.5)
    ref_mean = torch.tensor([[0.1, -0.1]], dtype=torch.float64)
    result = _step(preset, [0.0], [0.0], ref_mean=ref_mean)
    kl = (0.01 + 0.01) / 2 / (2 * 0.01)  # mean over D of Δμ²/(2 s²)
    assert result.kl.item() == pytest.approx(kl)
    assert result.loss.item() == pytest.approx(0.5 * kl)


@pytest.mark.parametrize(
    "mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"]
)
def test_step_columns_sum_to_the_whole_batch_loss(mode):
    preset = PLAIN.replace(aggregation=mode)
    torch.manual_seed(0)
    per_token = torch.randn(3, 4)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 1, 1, 0]], dtype=torch.float32)
    whole = aggregate_loss(per_token, mask, mode, max_len=4)
    summed = 0.0
    for k in range(4):
        rows = mask[:, k].nonzero().squeeze(1)
        summed = summed + aggregate_step(preset, per_token[rows, k], rows, k, mask, 3, float(mask.sum()))
    assert float(summed) == pytest.approx(float(whole), abs=1e-6)


def test_diagnostics_report_active_clip_fractions_and_ratio_moments_per_step():
    diagnostics = StepDiagnostics(PLAIN)
    result = _step(PLAIN, [math.log(1.5), math.log(0.5), 0.0, 0.0], [1.0, -1.0, 1.0, -1.0])
    diagnostics.add(3, result, torch.tensor([1.0, -1.0, 1.0, -1.0]))
    diagnostics.add_grad_norm(3, 2.0, weight=0.5)
    summary = diagnostics.summary()
    assert summary["flow/step03/raw_ratio_mean"] == pytest.approx((1.5 + 0.5 + 1 + 1) / 4)
    assert summary["flow/step03/raw_clip_high"] == pytest.approx(0.25)
    assert summary["flow/step03/raw_clip_low"] == pytest.approx(0.25)
    assert summary["flow/step03/grad_norm"] == 2.0 and summary["flow/step03/grad_norm_unweighted"] == 4.0
    assert summary["train/ratio_mean"] == summary["train/raw_ratio_mean"]
