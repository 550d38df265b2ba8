"""Non-finite values: an inf/NaN at a masked position reaches neither the loss nor the gradient; a huge
log-ratio at a valid token gives a finite loss and gradient (the log-ratio is clamped to ±20 before exp)."""

from __future__ import annotations

import math

import pytest
import torch

from grpokit.algorithms import (
    MAX_LOG_RATIO,
    ClipCovConfig,
    KLCovConfig,
    behaviour_importance_weights,
    get_preset,
    importance_ratio,
    policy_loss,
    sequence_log_ratio,
    sequence_ratio_product,
    zero_masked,
)

E20 = math.exp(20.0)  # 485165195.40979

# Row 0 has 3 valid tokens, row 1 has 2; the padding values below are replaced by inf/NaN.
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
PADDING = ~MASK.bool()


def _inputs(dtype=torch.float32) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    logp = -torch.rand(2, 4, generator=gen, dtype=dtype) * 2 - 0.1
    return {
        "logp": logp,
        "old_logp": logp + torch.randn(2, 4, generator=gen, dtype=dtype) * 0.3,
        "ref_logp": logp + torch.randn(2, 4, generator=gen, dtype=dtype) * 0.3,
        "behaviour_logp": logp + torch.randn(2, 4, generator=gen, dtype=dtype) * 0.3,
        "entropy": torch.rand(2, 4, generator=gen, dtype=dtype),
    }


def _loss_and_grad(preset, inputs):
    advantages = torch.tensor([1.0, -0.5])
    logp = inputs["logp"].clone().requires_grad_()
    entropy = inputs["entropy"].clone().requires_grad_()
    loss, metrics = policy_loss(
        preset,
        logp,
        inputs["old_logp"],
        advantages,
        MASK,
        ref_logp=inputs["ref_logp"],
        behaviour_logp=inputs["behaviour_logp"],
        entropy=entropy,
        max_len=4,
        generator=torch.Generator().manual_seed(0),
    )
    loss.backward()
    entropy_grad = torch.zeros_like(entropy) if entropy.grad is None else entropy.grad  # entropy_coef = 0
    return loss, logp.grad, entropy_grad, metrics


NON_FINITE_PRESETS = [
    get_preset("grpo", entropy_coef=0.01),  # k3 KL to the reference, entropy bonus
    get_preset("gspo", behaviour_correction="tis", behaviour_level="sequence", self_normalize_is=True),
    get_preset("gspo_token", behaviour_correction="mis", behaviour_level="geometric"),
    get_preset("cispo", beta=0.04, kl_estimator="k2"),
    get_preset("dapo", top_entropy_quantile=0.5, kl_cov=KLCovConfig(top_fraction=0.3),
               clip_cov=ClipCovConfig(clip_ratio=0.3, cov_low=-10.0, cov_high=10.0)),
    get_preset("dr_grpo", beta=0.1, kl_estimator="k1", dual_clip_c=3.0, delta=2.0),
]


@pytest.mark.parametrize("preset", NON_FINITE_PRESETS, ids=lambda p: p.name)
@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("where", ["logp", "old_logp", "ref_logp", "behaviour_logp", "entropy", "all"])
def test_non_finite_values_at_padding_change_neither_loss_nor_gradient(preset, bad, where):
    clean = _inputs()
    dirty = {k: v.clone() for k, v in clean.items()}
    for key in dirty if where == "all" else [where]:
        dirty[key][PADDING] = bad
    clean_loss, clean_grad, clean_entropy_grad, clean_metrics = _loss_and_grad(preset, clean)
    loss, grad, entropy_grad, metrics = _loss_and_grad(preset, dirty)
    assert torch.isfinite(loss) and torch.isfinite(grad).all() and torch.isfinite(entropy_grad).all()
    assert torch.equal(loss, clean_loss)
    assert torch.equal(grad, clean_grad) and torch.equal(entropy_grad, clean_entropy_grad)
    assert (grad[PADDING] == 0).all()
    for key, value in clean_metrics.items():
        assert torch.equal(metrics[key], value), key


def test_importance_ratio_clamps_the_log_ratio_at_twenty_hand_case():
    assert MAX_LOG_RATIO == 20.0
    log_ratio = torch.tensor([95.0, 0.5, -95.0], requires_grad=True)
    ratio = importance_ratio(log_ratio)
    torch.testing.assert_close(ratio, torch.tensor([E20, 1.648721, math.exp(-20.0)]))
    ratio.sum().backward()
    torch.testing.assert_close(log_ratio.grad, torch.tensor([0.0, 1.648721, 0.0]))  # no gradient past ±20


def test_zero_masked_hand_case_passes_no_gradient_to_masked_positions():
    values = torch.tensor([-1.0, math.inf], requires_grad=True)
    out = zero_masked(values, torch.tensor([1, 0]))
    assert out.tolist() == [-1.0, 0.0]
    torch.exp(out).sum().backward()
    torch.testing.assert_close(values.grad, torch.tensor([math.exp(-1.0), 0.0]))


def test_sequence_ratios_ignore_non_finite_padding():
    log_ratio = torch.tensor([[0.1, -0.1, 0.3, math.nan], [0.2, math.inf, -math.inf, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    torch.testing.assert_close(sequence_ratio_product(log_ratio, mask), torch.tensor([0.3, 0.2]))
    logp = torch.tensor([[0.1, -0.1, 0.3, math.inf]])
    torch.testing.assert_close(sequence_log_ratio(logp, torch.zeros(1, 4), mask[:1]), torch.tensor([0.1]))


# One sequence of 2 valid tokens, log-ratios [95, 0] in float32 (exp(95) overflows to inf), ε = 0.2,
# per-sequence token mean. r = [e^20, 1] after the clamp:
#   A = +1: token 1 clipped at 1.2 → L = −1.2, token 2 → −1; loss (−1.2 − 1)/2 = −1.1; ∂/∂logp = [0, −0.5]
#   A =  0: every term is 0 (before: e^95·0 = inf·0 = NaN); loss 0, gradient 0
#   A = −1: token 1 not clipped → L = e^20, token 2 → 1; loss (e^20 + 1)/2; ∂/∂logp = [0 (past the clamp), 0.5]
@pytest.mark.parametrize(
    ("advantage", "expected_loss", "expected_grad"),
    [(1.0, -1.1, [0.0, -0.5]), (0.0, 0.0, [0.0, 0.0]), (-1.0, (E20 + 1) / 2, [0.0, 0.5])],
)
def test_a_log_ratio_of_95_gives_a_finite_loss_and_gradient(advantage, expected_loss, expected_grad):
    preset = get_preset("grpo", beta=0.0)
    old = torch.tensor([[-100.0, -1.0]])
    logp = torch.tensor([[-5.0, -1.0]], requires_grad=True)  # ℓ = [95, 0]
    loss, metrics = policy_loss(preset, logp, old, torch.tensor([advantage]), torch.ones(1, 2))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    torch.testing.assert_close(loss, torch.tensor(expected_loss), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(logp.grad, torch.tensor([expected_grad]))
    assert metrics["ratio_max"] == torch.tensor(E20, dtype=torch.float32)


def test_cispo_with_a_log_ratio_of_95_keeps_its_capped_gradient():
    # CISPO's weight is sg(clip(r, 0, 5)): ℓ = 95 → weight 5, ∂L/∂logp = −5·A/2 per token of a 2-token mean.
    logp = torch.tensor([[-5.0, -1.0]], requires_grad=True)
    loss, _ = policy_loss(get_preset("cispo"), logp, torch.tensor([[-100.0, -1.0]]), torch.tensor([1.0]),
                          torch.ones(1, 2))
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-2.5, -0.5]]))


def test_an_infinite_behaviour_log_prob_at_a_valid_token_is_truncated_not_nan():
    old = torch.tensor([[-1.0, -1.0]])
    behaviour = torch.tensor([[-math.inf, -1.0]])  # the engine gave the token probability 0: ρ = ∞
    weights, metrics = behaviour_importance_weights(old, behaviour, torch.ones(1, 2), method="tis", cap=2.0)
    assert weights.tolist() == [[2.0, 1.0]]
    assert all(math.isfinite(float(v)) for v in metrics.values())
