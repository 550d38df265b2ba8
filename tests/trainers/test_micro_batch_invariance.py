"""The update does not depend on micro_batch_size: every preset, every option with a batch statistic.

One scored rollout (16 completions of 4 prompts) is updated by a fresh trainer per case with
micro_batch_size 1, 2 and 16 (the whole mini-batch), from the same weights. π_old and the engine's μ are
moved off the current policy by fixed noise, so that ratios clip, KL-Cov's penalty is non-zero and the IS
weights differ from 1. We compare the gradient each optimizer step hands to AdamW (the update is a
fixed elementwise function of it) and the parameters after the step.

Tolerance. The model runs in float64 here. Changing the micro-batching reorders the sums that make
each gradient entry (over the ≤ 96 valid tokens, and inside the matmuls of different batch shapes): a
sum of n terms reordered moves by at most 2·n·u·Σ|term|, u = 2⁻⁵³ ≈ 1.1e-16. With n ≤ 10⁴ (tokens ×
the widest reduction, 64) and Σ|term| up to 10³·max|g| (cancellation), that is ≤ 2.2e-9·max|g|: we allow
GRADIENT_RTOL = 1e-8 of the largest gradient entry. A statistic taken per micro-batch changes which
tokens are trained or how they are weighted: on the code before this test, every option below with a
batch statistic (top-entropy, self-normalised IS, Clip-Cov, KL-Cov) moved the gradient by 0.13 to 1.4 of
max|g| at micro_batch_size 1, fourteen orders above what we measure now (≤ 1e-15). In float32
(u = 6e-8) the same bound would be ≈ 1e-3·max|g|, too close to a real dependence to tell them apart,
which is why this test runs in float64.
"""

from __future__ import annotations

import copy

import pytest
import torch

from grpokit.algorithms.presets import PRESETS
from grpokit.rewards import RewardRunner, load_reward

GRADIENT_RTOL = 1e-8  # see the module docstring
MICRO_BATCH_SIZES = (1, 2, 16)  # 16 = the whole mini-batch (4 prompts × 4 completions)

PRESET_NAMES = tuple(PRESETS)  # every registered preset, new ones included
# Every option with a statistic of the batch (and a few that must stay invariant without one).
OPTION_CASES = {
    "top_entropy": ("grpo", {"top_entropy_quantile": 0.5, "beta": 0.0}),
    "top_entropy_with_bonus": ("dapo", {"top_entropy_quantile": 0.8, "entropy_coef": 0.01}),
    "snis_tis_token": ("grpo", {"behaviour_correction": "tis", "self_normalize_is": True}),
    "snis_mis_geometric": ("gspo", {"behaviour_correction": "mis", "behaviour_level": "geometric",
                                    "behaviour_cap": 1.1, "behaviour_lower_cap": 0.9, "self_normalize_is": True}),
    "snis_tis_sequence": ("dapo", {"behaviour_correction": "tis", "behaviour_level": "sequence",
                                   "self_normalize_is": True}),
    "clip_cov": ("dapo", {"clip_cov": {"clip_ratio": 0.1, "cov_low": 0.02, "cov_high": 5.0}}),
    "kl_cov": ("dapo", {"kl_cov": {"top_fraction": 0.1, "coef": 1.0}}),
    "all_statistics": ("grpo", {"top_entropy_quantile": 0.5, "behaviour_correction": "tis",
                                "self_normalize_is": True, "kl_cov": {"top_fraction": 0.2},
                                "clip_cov": {"clip_ratio": 0.1, "cov_low": 0.02, "cov_high": 5.0}}),
    "batch_std": ("grpo", {"advantage": "batch"}),
    "dual_clip_delta_k2": ("grpo", {"dual_clip_c": 3.0, "delta": 2.0, "kl_estimator": "k2"}),
}
# With π_old = the current policy (μ = 1, one mini-batch) the pre-pass takes log π_θ from a forward.
ON_POLICY_CASES = {
    "snis_on_policy": ("grpo", {"behaviour_correction": "tis", "behaviour_cap": 1.2, "self_normalize_is": True}),
    "top_entropy_on_policy": ("grpo", {"top_entropy_quantile": 0.5}),
}
CASES = {**{name: (name, {}) for name in PRESET_NAMES}, **OPTION_CASES}


def _length_reward(completions, **_):
    return [float(len(c)) for c in completions]


def _runner():
    return RewardRunner([load_reward(_length_reward, name="length")])


def _sections(preset: str, overrides: dict, micro_batch_size: int) -> dict:
    return dict(
        algorithm={"preset": preset, "overrides": overrides},
        rollout={"prompts_per_step": 4, "num_generations": 4, "max_new_tokens": 6, "temperature": 1.0},
        training={"max_steps": 1, "micro_batch_size": micro_batch_size, "learning_rate": LEARNING_RATE},
    )


@pytest.fixture
def scored(tmp_path, make_trainer, make_policy):
    """A scored rollout of the float32 seed-0 policy, with float64 engine log-probs."""
    trainer = make_trainer(tmp_path / "sample", policy=make_policy(seed=0), rewards=_runner(),
                           **_sections("grpo", {}, 16))
    scored = trainer.sample(0)
    assert len(scored.rollout) == 16 and scored.total_reward.std() > 0
    scored.rollout.behaviour_logprobs = scored.rollout.behaviour_logprobs.double()
    return scored


def _noise(like: torch.Tensor, seed: int, scale: float) -> torch.Tensor:
    return torch.randn(like.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def _update(tmp_path, make_trainer, make_policy, scored, preset, overrides, micro_batch_size, off_policy=True):
    """(gradients handed to the optimizer, parameters after the step) of one update from seed-0 weights."""
    policy = make_policy(seed=0)
    policy.model.double()
    trainer = make_trainer(tmp_path / f"mbs{micro_batch_size}", policy=policy, rewards=_runner(),
                           **_sections(preset, overrides, micro_batch_size))
    batch = trainer.prepare(copy.deepcopy(scored))
    mask = batch.completion_mask.bool()
    # π_old (unless on-policy) and μ a little off the current policy, the same in every case
    if off_policy:
        batch.old_logprobs = torch.where(mask, batch.behaviour_logprobs + _noise(mask, 1, 0.2), 0.0)
    batch.behaviour_logprobs = torch.where(mask, batch.behaviour_logprobs + _noise(mask, 2, 0.3), 0.0)
    gradients = []
    trainer.optimizer.register_step_pre_hook(lambda *_: gradients.append(
        {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}))
    stats = trainer.update(batch, 0)
    assert len(gradients) == 1
    return gradients[0], {n: p.detach().clone() for n, p in trainer.model.named_parameters()}, stats


SELECTION_FRACTIONS = ("top_entropy_frac", "clip_cov_frac", "kl_cov_frac", "frac_truncated", "frac_masked")
LEARNING_RATE, ADAM_EPS = 1e-3, 1e-8  # the trainer's AdamW: lr from _sections, torch's default ε


def _assert_same_update(results: dict[int, tuple[dict, dict, dict]], initial: dict) -> None:
    whole_grads, whole_params, whole_stats = results[max(results)]
    scale = max(float(g.abs().max()) for g in whole_grads.values())
    assert scale > 1e-6  # something was learned: equality is not the trivial kind
    for key in SELECTION_FRACTIONS:  # each option selected or reweighted some tokens, not none or all
        assert 0 < whole_stats.get(key, 0.5) < 1, (key, whole_stats[key])
    for size, (grads, params, _) in results.items():
        assert grads.keys() == whole_grads.keys()
        worst = max(float((grads[k] - whole_grads[k]).abs().max()) for k in grads)
        assert worst <= GRADIENT_RTOL * scale, f"micro_batch_size {size}: max |Δg| = {worst:.3g}, max|g| = {scale:.3g}"
        # AdamW's first step moves θ by −lr·g/(|g| + ε) (− lr·λ·θ): |∂/∂g| ≤ lr/ε, so gradients within
        # GRADIENT_RTOL·max|g| give parameters within (lr/ε)·GRADIENT_RTOL·max|g|.
        diff = max(float((params[k] - whole_params[k]).abs().max()) for k in params)
        assert diff <= LEARNING_RATE / ADAM_EPS * GRADIENT_RTOL * scale, f"micro_batch_size {size}: |Δθ| = {diff:.3g}"
        assert any(not torch.equal(params[k], initial[k]) for k in params)


def _initial_params(make_policy) -> dict:
    model = make_policy(seed=0).model.double()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("case", list(CASES))
def test_micro_batch_size_does_not_change_the_update(case, tmp_path, make_trainer, make_policy, scored):
    preset, overrides = CASES[case]
    results = {size: _update(tmp_path, make_trainer, make_policy, scored, preset, overrides, size)
               for size in MICRO_BATCH_SIZES}
    _assert_same_update(results, _initial_params(make_policy))


@pytest.mark.parametrize("case", list(ON_POLICY_CASES))
def test_micro_batch_size_does_not_change_the_on_policy_update(case, tmp_path, make_trainer, make_policy, scored):
    preset, overrides = ON_POLICY_CASES[case]
    results = {size: _update(tmp_path, make_trainer, make_policy, scored, preset, overrides, size,
                             off_policy=False)
               for size in MICRO_BATCH_SIZES}
    _assert_same_update(results, _initial_params(make_policy))
