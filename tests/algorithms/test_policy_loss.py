from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from grpokit.algorithms import (
    AGGREGATION_MODES,
    PRESETS,
    ClipCovConfig,
    KLCovConfig,
    batch_statistics,
    get_preset,
    policy_loss,
)
from grpokit.algorithms.policy_loss import loss_statistic_inputs

from ._strategies import FAST, random_batch

MAX_LEN = 7


def _token_weight(mode: str, mask: torch.Tensor) -> torch.Tensor:
    """∂(aggregate)/∂L_{i,t} for each mode, on valid tokens."""
    m = mask.double()
    batch = mask.shape[0]
    weights = {
        "token_mean": m / m.sum().clamp(min=1),
        "seq_mean_token_mean": m / (batch * m.sum(-1, keepdim=True).clamp(min=1)),
        "seq_mean_token_sum": m / batch,
        "seq_mean_token_sum_norm": m / (batch * MAX_LEN),
        "token_sum": m,
    }
    return weights[mode]


@FAST
@given(
    seed=st.integers(0, 10_000),
    batch=st.integers(1, 5),
    surrogate=st.sampled_from(["ppo_clip", "cispo", "sapo", "gpg"]),  # at r = 1 each is the policy gradient
    ratio_level=st.sampled_from(["token", "sequence", "sequence_token"]),
    mode=st.sampled_from(AGGREGATION_MODES),
    dual_clip=st.sampled_from([None, 3.0]),
)
def test_gradient_at_ratio_one_is_minus_advantage_times_token_weight(
    seed, batch, surrogate, ratio_level, mode, dual_clip
):
    data = random_batch(seed, batch, MAX_LEN, min_len=0)
    preset = get_preset(
        "grpo",
        surrogate=surrogate,
        ratio_level=ratio_level,
        aggregation=mode,
        beta=0.0,
        dual_clip_c=dual_clip,
    )
    logp = data["logp"].clone().requires_grad_()
    loss, metrics = policy_loss(preset, logp, data["logp"], data["advantages"], data["mask"], max_len=MAX_LEN)
    (grad,) = torch.autograd.grad(loss, logp)
    expected = -data["advantages"].unsqueeze(-1) * _token_weight(mode, data["mask"])
    torch.testing.assert_close(grad, expected)
    assert metrics["clip_frac_low"] == 0 and metrics["clip_frac_high"] == 0


def _global_extras(preset, data, keys):
    """What a trainer computes once over the whole batch before splitting it."""
    valid = data["mask"].bool()
    extras = {"num_sequences": data["mask"].shape[0], "num_tokens": valid.sum(), "max_len": MAX_LEN}
    extras["statistics"] = batch_statistics(preset, loss_statistic_inputs(
        preset, data["logp"], data["old_logp"], data["advantages"], data["mask"],
        behaviour_logp=data["behaviour_logp"], entropy=data["entropy"], clip_cov_keys=keys,
    ))
    return extras


MICRO_BATCH_PRESETS = [
    *PRESETS.values(),
    get_preset("grpo", top_entropy_quantile=0.5, entropy_coef=0.01, kl_estimator="k2"),
    get_preset("dapo", behaviour_correction="tis", behaviour_level="geometric", self_normalize_is=True),
    get_preset("gspo", behaviour_correction="mis", behaviour_level="sequence", behaviour_cap=1.5),
    get_preset("dr_grpo", dual_clip_c=3.0, delta=2.0, beta=0.1, kl_estimator="k1"),
    # wide bands and large fractions, so that the selections are not empty on a handful of tokens
    get_preset("grpo", clip_cov=ClipCovConfig(clip_ratio=0.2, cov_low=-10.0, cov_high=10.0)),
    get_preset("dapo", kl_cov=KLCovConfig(top_fraction=0.3, coef=1.0), self_normalize_is=True,
               behaviour_correction="mis", behaviour_level="geometric"),
]


@FAST
@given(
    seed=st.integers(0, 10_000),
    batch=st.integers(2, 8),
    num_splits=st.integers(2, 4),
    preset=st.sampled_from(MICRO_BATCH_PRESETS),
)
def test_micro_batched_policy_loss_with_global_counts_equals_full_batch(seed, batch, num_splits, preset):
    data = random_batch(seed, batch, MAX_LEN, min_len=0)
    data["clip_cov_keys"] = torch.rand(batch, MAX_LEN, generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64)
    extras = _global_extras(preset, data, data["clip_cov_keys"])
    keys = ("logp", "old_logp", "advantages", "mask", "ref_logp", "behaviour_logp", "entropy", "clip_cov_keys")

    def loss_and_grad(parts):
        logp = parts["logp"].clone().requires_grad_()
        loss, _ = policy_loss(
            preset,
            logp,
            parts["old_logp"],
            parts["advantages"],
            parts["mask"],
            ref_logp=parts["ref_logp"],
            behaviour_logp=parts["behaviour_logp"],
            entropy=parts["entropy"],
            clip_cov_keys=parts["clip_cov_keys"],
            **extras,
        )
        return loss, torch.autograd.grad(loss, logp)[0]

    full_loss, full_grad = loss_and_grad(data)
    splits = [dict(zip(keys, chunk)) for chunk in zip(*(data[k].tensor_split(num_splits) for k in keys))]
    results = [loss_and_grad(part) for part in splits]
    torch.testing.assert_close(sum(loss for loss, _ in results), full_loss)
    torch.testing.assert_close(torch.cat([grad for _, grad in results]), full_grad)


def test_metrics_hand_case():
    # ratios [1.5, 0.5 | 1.0, (pad)], A = [+1 | -1]: token 0 is clipped high; token 1 has A > 0, not clipped
    old = torch.zeros(2, 2)
    logp = torch.log(torch.tensor([[1.5, 0.5], [1.0, 9.0]]))
    mask = torch.tensor([[1, 1], [1, 0]])
    loss, metrics = policy_loss(PRESETS["dapo"], logp, old, torch.tensor([1.0, -1.0]), mask)
    assert metrics["clip_frac_high"].item() == pytest.approx(1 / 3)
    assert metrics["clip_frac_low"].item() == 0
    assert metrics["ratio_mean"].item() == pytest.approx(1.0)
    assert (metrics["ratio_min"].item(), metrics["ratio_max"].item()) == pytest.approx((0.5, 1.5))
    assert loss.item() == pytest.approx((-1.28 - 0.5 + 1.0) / 3)
    assert all(v.dim() == 0 and not v.requires_grad for v in metrics.values())


def test_kl_term_added_only_with_reference_and_not_when_in_reward():
    data = random_batch(0, 3, 4)
    args = (data["logp"], data["old_logp"], data["advantages"], data["mask"])
    base, _ = policy_loss(PRESETS["grpo"].replace(beta=0.0), *args)
    with_kl, metrics = policy_loss(PRESETS["grpo"], *args, ref_logp=data["ref_logp"])
    in_reward, metrics_in_reward = policy_loss(
        PRESETS["grpo"].replace(kl_in_reward=True), *args, ref_logp=data["ref_logp"]
    )
    assert with_kl > base and "kl" in metrics and metrics["kl"] > 0
    assert in_reward == base and "kl" not in metrics_in_reward


def test_entropy_bonus_lowers_loss_and_is_reported():
    data = random_batch(1, 3, 4)
    args = (data["logp"], data["old_logp"], data["advantages"], data["mask"])
    base, _ = policy_loss(PRESETS["dapo"], *args, entropy=data["entropy"])
    bonus, metrics = policy_loss(PRESETS["dapo"].replace(entropy_coef=0.1), *args, entropy=data["entropy"])
    expected_mean = data["entropy"][data["mask"].bool()].mean()
    assert metrics["entropy_mean"].item() == pytest.approx(expected_mean.item())
    assert bonus.item() == pytest.approx(base.item() - 0.1 * expected_mean.item())


def test_token_level_advantages_are_accepted():
    data = random_batch(2, 3, 4)
    per_token = data["advantages"].unsqueeze(-1).expand(3, 4).contiguous()
    args = (data["logp"], data["old_logp"])
    a, _ = policy_loss(PRESETS["gspo_token"], *args, data["advantages"], data["mask"])
    b, _ = policy_loss(PRESETS["gspo_token"], *args, per_token, data["mask"])
    torch.testing.assert_close(a, b)


def test_clip_cov_detaches_gradient_but_keeps_loss_value():
    # every token has cov > 0.5 (row 0: high logp, A > 0; row 1: low logp, A < 0), half of them are picked
    logp = torch.tensor([[-0.1, -0.2, -0.3], [-3.0, -3.1, -3.2]], requires_grad=True)
    adv = torch.tensor([3.0, -3.0])
    mask = torch.ones(2, 3)
    preset = get_preset("dapo", clip_cov=ClipCovConfig(clip_ratio=0.5, cov_low=0.5, cov_high=100.0))
    loss, metrics = policy_loss(preset, logp, logp.detach(), adv, mask)
    plain, _ = policy_loss(PRESETS["dapo"], logp, logp.detach(), adv, mask)
    (grad,) = torch.autograd.grad(loss, logp)
    assert loss.item() == pytest.approx(plain.item())
    assert metrics["clip_cov_frac"].item() == pytest.approx(3 / 6)
    assert (grad == 0).sum() == 3


def test_kl_cov_adds_penalty_on_selected_tokens():
    data = random_batch(3, 4, 5)
    args = (data["logp"], data["old_logp"], data["advantages"], data["mask"])
    preset = get_preset("dapo", kl_cov=KLCovConfig(top_fraction=0.1, coef=1.0))
    loss, metrics = policy_loss(preset, *args)
    plain, _ = policy_loss(PRESETS["dapo"], *args)
    assert loss > plain and metrics["kl_cov_frac"] > 0


def test_missing_inputs_for_enabled_features_raise():
    data = random_batch(4, 2, 3)
    args = (data["logp"], data["old_logp"], data["advantages"], data["mask"])
    with pytest.raises(ValueError, match="entropy"):
        policy_loss(get_preset("grpo", top_entropy_quantile=0.8), *args)
    with pytest.raises(ValueError, match="behaviour_logp"):
        policy_loss(get_preset("grpo", behaviour_correction="tis"), *args)
