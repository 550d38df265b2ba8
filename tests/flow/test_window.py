"""The SDE window (MixGRPO / Flow-GRPO-Fast): its schedule by hand, ODE steps in the rollout, and training."""

from __future__ import annotations

import json

import pytest
import torch

from grpokit.data import PromptDataset
from grpokit.flow.build import build_flow_trainer
from grpokit.flow.config import load_flow_config
from grpokit.flow.digits import digit_prompts
from grpokit.flow.grpo_guard import step_balancing_weights
from grpokit.flow.policy import FlowPolicy
from grpokit.flow.presets import get_flow_preset
from grpokit.flow.sde import sde_step_mean_std
from grpokit.flow.window import sde_window, window_mask, window_span
from grpokit.rewards import Reward, RewardRunner


def test_sliding_window_moves_by_the_stride_every_shift_and_stops_at_the_end():
    def start(n, **kw):
        return sde_window(10, 3, training_step=n, shift_every=25, **kw)

    assert [start(n) for n in (1, 25, 26, 50, 51)] == [(0, 3), (0, 3), (1, 4), (1, 4), (2, 5)]
    assert start(1000) == (7, 10)  # ⌊999/25⌋ = 39 moves, capped at S − w = 7
    assert start(51, stride=2) == (4, 7)  # two moves of 2
    assert start(1000, range_fraction=0.5) == (2, 5)  # span ⌈0.5·10⌉ = 5: last start 5 − 3
    assert sde_window(10, 3, training_step=1000, shift_every=0) == (0, 3)  # τ = 0: fixed at the noisiest


def test_no_window_or_a_window_as_wide_as_the_span_is_every_step():
    assert sde_window(10, None) == (0, 10)
    assert sde_window(10, 12, training_step=99, shift_every=1) == (0, 10)
    assert sde_window(10, None, range_fraction=0.3) == (0, 3)
    assert window_span(10, 0.5) == 5 and window_span(7, 0.5) == 4 and window_span(3, 0.01) == 1


def test_random_window_starts_are_uniform_over_the_allowed_range_and_seeded():
    generator = torch.Generator().manual_seed(0)
    windows = [sde_window(10, 2, placement="random", range_fraction=0.5, generator=generator) for _ in range(400)]
    assert {w[0] for w in windows} == {0, 1, 2, 3}  # span 5, size 2: starts 0..3
    assert all(stop - start == 2 for start, stop in windows)
    again = torch.Generator().manual_seed(0)
    assert windows[:5] == [
        sde_window(10, 2, placement="random", range_fraction=0.5, generator=again) for _ in range(5)
    ]


def test_window_arguments_are_checked():
    assert window_mask(5, (1, 3)).tolist() == [False, True, True, False, False]
    for bad in ({"size": 0}, {"size": 2, "placement": "middle"}, {"size": 2, "training_step": 0}):
        with pytest.raises(ValueError):
            sde_window(10, **bad)
    with pytest.raises(ValueError, match="does not fit"):
        window_mask(4, (3, 5))
    with pytest.raises(ValueError, match="sde_window"):
        get_flow_preset("flow_grpo", sde_window=0)
    with pytest.raises(ValueError, match="window_range"):
        get_flow_preset("mix_grpo", window_range=1.5)


def test_window_presets_differ_from_their_base_only_in_the_window():
    base, guard = get_flow_preset("flow_grpo"), get_flow_preset("flow_grpo_guard")
    mix, plain, fast = (get_flow_preset(n) for n in ("mix_grpo", "mix_grpo_plain", "flow_grpo_fast"))
    # mix_grpo is GRPO-Guard in a window kept among the noisiest 30% of the steps, with a 2x wider clip
    assert mix == guard.replace(
        name=mix.name, summary=mix.summary, sde_window=2, window_shift_every=25, window_range=0.3,
        eps_low=4e-6, eps_high=4e-6,
    )
    assert plain == base.replace(name=plain.name, summary=plain.summary, sde_window=2, window_shift_every=25)
    assert fast == base.replace(
        name=fast.name, summary=fast.summary, sde_window=2, window_placement="random", window_range=0.5
    )


def test_mix_grpo_keeps_the_guard_and_the_noisiest_steps():
    # What bench/flow_window.py measured as the difference from the plain window (issue 19): RatioNorm +
    # balancing, and a window that slides (0, 2) → (1, 3) and then stays, over 10 steps; the plain one slides on.
    mix, plain = get_flow_preset("mix_grpo"), get_flow_preset("mix_grpo_plain")
    assert mix.ratio_norm and mix.step_balancing and not plain.ratio_norm and not plain.step_balancing

    def windows(p):
        return [
            sde_window(10, p.sde_window, placement=p.window_placement, training_step=n,
                       shift_every=p.window_shift_every, stride=p.window_stride, range_fraction=p.window_range)
            for n in (1, 25, 26, 51, 76, 1000)
        ]

    assert windows(mix) == [(0, 2), (0, 2), (1, 3), (1, 3), (1, 3), (1, 3)]
    assert windows(plain) == [(0, 2), (0, 2), (1, 3), (2, 4), (3, 5), (8, 10)]


def test_ode_steps_have_no_noise_no_log_prob_and_no_mask(tiny_digits_model):
    policy = FlowPolicy(tiny_digits_model)
    labels = torch.arange(6) % 3
    rollout = policy.rollout(
        labels, labels, [0, 1, 2], num_steps=5, generator=torch.Generator().manual_seed(0),
        sde_steps=window_mask(5, (1, 3)),
    )
    assert rollout.sde_steps.tolist() == [False, True, True, False, False]
    assert rollout.mask.tolist() == [[0, 1, 1, 0, 0]] * 6
    assert torch.equal(rollout.old_logprobs[:, [0, 3, 4]], torch.zeros(6, 3))
    assert (rollout.old_logprobs[:, 1:3] != 0).all()
    for k in (0, 3, 4):  # the Euler ODE step x + v·dt, exactly
        t, t_next = rollout.timesteps[k], rollout.timesteps[k + 1]
        v = tiny_digits_model.velocity(rollout.latents[:, k], float(t), labels)
        assert torch.equal(rollout.latents[:, k + 1], rollout.old_means[:, k])
        assert torch.allclose(rollout.latents[:, k + 1], rollout.latents[:, k] + v * float(t_next - t), atol=1e-6)
    for k in (1, 2):  # SDE steps: the sample differs from its mean
        assert not torch.allclose(rollout.latents[:, k + 1], rollout.old_means[:, k])
    # the training pass recomputes the window's log-probs and leaves the ODE steps at 0
    logp, mask = policy.log_probs(rollout)
    assert (logp.detach() - rollout.old_logprobs).abs().max().item() <= 1e-5
    assert torch.equal(logp.detach()[:, [0, 3, 4]], torch.zeros(6, 3))


def test_a_window_before_the_end_keeps_the_prefix_deterministic(tiny_digits_model):
    # Steps before the window are the ODE: two rollouts from the same noise agree up to the window's start.
    policy, labels = FlowPolicy(tiny_digits_model), torch.arange(4) % 2
    noise = torch.randn(4, 64, generator=torch.Generator().manual_seed(1))
    a, b = (
        policy.rollout(labels, labels, [0, 1], num_steps=6, noise=noise, sde_steps=window_mask(6, (3, 5)),
                       generator=torch.Generator().manual_seed(seed))
        for seed in (0, 1)
    )
    assert torch.equal(a.latents[:, :4], b.latents[:, :4])
    assert not torch.allclose(a.latents[:, 4], b.latents[:, 4])
    mean, _ = sde_step_mean_std(a.latents[:, 2], torch.zeros(4, 64), 0.5, 0.4, 0.0)
    assert mean.shape == (4, 64)


def _window_trainer(tmp_path, model, reward, preset, **overrides):
    config = load_flow_config(
        {
            "trainer": "flow",
            "model": {"shift": 3.0},
            "rewards": [{"function": "unused:placeholder"}],
            "algorithm": {"preset": preset, "overrides": {"beta": 0.01, **overrides}},
            "rollout": {"prompts_per_step": 2, "num_generations": 4, "num_steps": 6, "eval_num_steps": 4},
            "training": {"max_steps": 3, "learning_rate": 1e-3, "mini_batches": 2},
            "eval": {"samples_per_prompt": 2},
            "logging": {"run_dir": str(tmp_path / preset), "tensorboard": False, "progress": False, "plot": False},
        }
    )
    return build_flow_trainer(
        config,
        model=model,
        train_data=PromptDataset.from_records(digit_prompts()[:2], source="test"),
        reward_runner=RewardRunner([Reward("brightness", reward)]),
        eval_metrics=lambda images, records: {},
    )


def test_training_with_a_sliding_window_trains_and_logs_only_the_window(
    tmp_path, tiny_digits_model, brightness_reward
):
    trainer = _window_trainer(
        tmp_path, tiny_digits_model, brightness_reward, "mix_grpo_plain", sde_window=3, window_shift_every=1,
        window_stride=2,
    )
    before = [p.detach().clone() for p in trainer.parameters]
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "mix_grpo_plain" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "train/loss" in r]
    # S = 6, w = 3, moving 2 steps every training step: starts 0, 2, then capped at 3
    assert [r["train/sde_window_start"] for r in steps] == [0, 2, 3]
    assert all(r["train/sde_window_size"] == 3 for r in steps)
    for r in steps:
        start = int(r["train/sde_window_start"])
        logged = {int(key[9:11]) for key in r if key.startswith("flow/step") and key.endswith("/grad_norm")}
        assert logged == set(range(start, start + 3))  # per-step diagnostics exist for the window only
        assert r["train/onpolicy_logprob_error"] <= 1e-5 and r["train/kl"] >= 0
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.parameters))


def test_the_guard_balances_the_window_steps_only(tmp_path, tiny_digits_model, brightness_reward):
    trainer = _window_trainer(
        tmp_path, tiny_digits_model, brightness_reward, "flow_grpo_guard", sde_window=2, window_shift_every=1
    )
    rollout = trainer.sample(3)  # window (2, 4)
    weights = trainer.step_weights(rollout)
    assert weights[[0, 1, 4, 5]].tolist() == [0, 0, 0, 0]
    expected = step_balancing_weights(rollout.timesteps[2:5], rollout.sigmas[2:4], ratio_normalized=True)
    assert torch.allclose(weights[2:4], expected) and weights[2:4].mean().item() == pytest.approx(1.0)
    metrics = trainer.train_step(0)
    assert metrics["train/onpolicy_logprob_error"] <= 1e-5


def test_flow_grpo_fast_trains_two_random_early_steps(tmp_path, tiny_digits_model, brightness_reward):
    trainer = _window_trainer(tmp_path, tiny_digits_model, brightness_reward, "flow_grpo_fast")
    starts = set()
    for step in range(1, 13):
        rollout = trainer.sample(step)
        sde = rollout.sde_steps.nonzero().squeeze(1).tolist()
        assert len(sde) == 2 and sde[1] == sde[0] + 1 and sde[1] < 3  # first half of S = 6
        starts.add(sde[0])
        # drawn from the step's sampling seed: a resumed run places it the same way
        assert torch.equal(trainer.sample(step).sde_steps, rollout.sde_steps)
    assert starts == {0, 1}
    metrics = trainer.train_step(0)
    assert metrics["train/onpolicy_logprob_error"] <= 1e-5 and metrics["train/sde_window_size"] == 2


def test_mix_grpo_trains_its_window_with_ratio_norm(tmp_path, tiny_digits_model, brightness_reward):
    trainer = _window_trainer(tmp_path, tiny_digits_model, brightness_reward, "mix_grpo")
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "mix_grpo" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "train/loss" in r]
    # S = 6: the noisiest 30% is ⌈1.8⌉ = 2 steps, so the window is (0, 2) throughout
    assert [(r["train/sde_window_start"], r["train/sde_window_size"]) for r in steps] == [(0, 2)] * 3
    for r in steps:  # the clip saw RatioNorm's ratio, not the raw one
        assert r["train/ratio_mean"] == r["train/normed_ratio_mean"] != r["train/raw_ratio_mean"]
