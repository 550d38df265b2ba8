from __future__ import annotations

import pytest
import torch

from grpokit.flow.policy import FlowPolicy, train_step_mask


def test_train_step_mask_selects_first_spread_and_random_steps():
    assert train_step_mask(1, 4, 2, "first").tolist() == [[1, 1, 0, 0]]
    assert train_step_mask(1, 4, 2, "spread").tolist() == [[1, 0, 1, 0]]
    assert train_step_mask(2, 4, None).tolist() == [[1, 1, 1, 1]] * 2
    random_mask = train_step_mask(50, 10, 3, "random", generator=torch.Generator().manual_seed(0))
    assert (random_mask.sum(dim=1) == 3).all()
    assert len({tuple(row.tolist()) for row in random_mask}) > 1  # a fresh subset per sample


def _rollout(model, steps: int = 5, guidance: float = 1.0):
    policy = FlowPolicy(model, guidance_scale=guidance)
    labels = torch.arange(6) % 3
    return policy, policy.rollout(
        labels, labels, [0, 1, 2], num_steps=steps, generator=torch.Generator().manual_seed(0)
    )


@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_training_pass_recomputes_the_stored_log_probs(tiny_digits_model, guidance):
    policy, rollout = _rollout(tiny_digits_model, guidance=guidance)
    logp, mask = policy.log_probs(rollout)
    assert logp.shape == mask.shape == (6, 5)
    assert torch.isfinite(rollout.old_logprobs).all()
    assert (logp - rollout.old_logprobs).abs().max().item() <= 1e-5
    assert logp.requires_grad


def test_log_probs_are_zero_outside_the_mask(tiny_digits_model):
    policy, rollout = _rollout(tiny_digits_model)
    rollout.mask = train_step_mask(6, 5, 2, "first")
    logp, mask = policy.log_probs(rollout)
    assert torch.equal(logp[:, 2:].detach(), torch.zeros(6, 3))
    assert torch.allclose(logp[:, :2].detach(), rollout.old_logprobs[:, :2], atol=1e-5)


def test_stored_means_are_the_sampling_means_of_each_transition(tiny_digits_model):
    policy, rollout = _rollout(tiny_digits_model)
    _, mean = policy.step_log_probs(rollout, 2, torch.arange(6))
    assert torch.allclose(mean.detach(), rollout.old_means[:, 2], atol=1e-6)
    assert rollout.latents.shape == (6, 6, 64)
    assert rollout.step_std(2) == pytest.approx(float(rollout.sigmas[2]) * (0.2**0.5))


def test_classifier_free_guidance_combines_conditional_and_unconditional_passes(tiny_digits_model):
    x, labels = torch.randn(4, 64), torch.tensor([1, 2, 3, 4])
    conditional = tiny_digits_model.velocity(x, 0.5, labels)
    unconditional = tiny_digits_model.velocity(x, 0.5, torch.full_like(labels, 10))
    guided = tiny_digits_model.velocity(x, 0.5, labels, guidance_scale=3.0)
    assert torch.allclose(guided, unconditional + 3.0 * (conditional - unconditional), atol=1e-5)


def test_ode_sample_is_deterministic_given_the_noise(tiny_digits_model):
    policy = FlowPolicy(tiny_digits_model)
    noise = torch.randn(3, 64, generator=torch.Generator().manual_seed(3))
    first = policy.sample(torch.tensor([0, 1, 2]), num_steps=4, noise=noise)
    second = policy.sample(torch.tensor([0, 1, 2]), num_steps=4, noise=noise.clone())
    assert torch.equal(first, second)
