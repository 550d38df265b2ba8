"""PPO (preset `ppo`) through the real trainer on the tiny model: a learned critic beside the policy."""

from __future__ import annotations

import json

import pytest
import torch

from grpokit.algorithms import clipped_value_loss, gae_advantages, token_rewards_with_kl, whiten
from grpokit.monitoring import read_metrics
from grpokit.trainers.ppo import CRITIC_FILE, PPOTrainer

PPO = {"algorithm": {"preset": "ppo", "overrides": {}}, "rollout": {"num_generations": None}}


def length_rewards():
    """A dense reward (1 − |chars − 2|/2, floored at 0): an untrained tiny model gets nonzero, varied returns from step 1."""
    from grpokit.rewards import RewardRunner, load_reward

    return RewardRunner([load_reward("length", target_length=2)])


def _losses(run_dir):
    return [(r["step"], r["train/loss"], r["train/value_loss"])
            for r in read_metrics(run_dir / "metrics.jsonl") if "train/loss" in r]


def test_two_ppo_steps_train_policy_and_critic_and_checkpoint_the_critic(tmp_path, make_trainer, make_policy):
    trainer = make_trainer(tmp_path, policy=make_policy(), rewards=length_rewards(), logging={"samples_every": 1},
                           **PPO)
    assert isinstance(trainer, PPOTrainer) and trainer.group_size == 1
    assert trainer.policy.has_reference  # β = 0.05: the KL reward needs π_ref
    critic_before = {k: v.clone() for k, v in trainer.critic.state_dict().items()}
    # the documented initialisation: the policy's body copied, a zero value head
    for (name, p), q in zip(trainer.critic.body.named_parameters(), trainer.model.get_decoder().parameters()):
        assert torch.equal(p, q), name
    assert not trainer.critic.head.weight.any() and not trainer.critic.head.bias.any()

    trainer.train()
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "train/loss" in r]
    assert [r["step"] for r in records] == [1, 2]
    assert {"train/value_loss", "train/value_clip_frac", "critic/explained_variance", "critic/kl_reward_mean",
            "train/clip_frac_high", "reward/mean"} <= set(records[0])
    assert records[0]["critic/value_mean"] == 0.0  # the zero head: every V = 0 before the first update
    after = trainer.critic.state_dict()
    assert any(not torch.equal(critic_before[k], after[k]) for k in after)  # the critic learnt
    # the critic is not the policy: a separate copy, so the policy's body is untouched by the value loss
    assert all(p.data_ptr() != q.data_ptr()
               for p in trainer.critic.parameters() for q in trainer.model.parameters())
    assert (tmp_path / "run" / "checkpoints" / "step-000002" / CRITIC_FILE).is_file()
    # samples.jsonl: one advantage per completion (the mean of its per-token advantages)
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert any(isinstance(s.get("advantage"), float) for s in samples)


def test_ppo_prepare_computes_gae_on_kl_shaped_token_rewards(tmp_path, make_trainer, make_policy):
    trainer = make_trainer(tmp_path, policy=make_policy(), rewards=length_rewards(), **PPO)
    scored = trainer.sample(0)
    batch = trainer.prepare(scored)
    mask = batch.loss_mask
    # recompute from the batch's own tensors with the library's pure functions: what prepare must have done
    rewards = token_rewards_with_kl(scored.total_reward.float(), mask, batch.old_logprobs, batch.ref_logprobs, 0.05)
    advantages, returns = gae_advantages(rewards, batch.old_values, mask, gamma=1.0, lam=0.95)
    torch.testing.assert_close(batch.advantages, whiten(advantages, mask))
    torch.testing.assert_close(batch.returns, returns)
    assert batch.advantages.shape == mask.shape  # per-token advantages into the core surrogate
    # a mini-batch keeps the critic targets row-aligned
    rows = torch.tensor([2, 0])
    part = batch.select(rows)
    width = part.completion_ids.shape[1]
    torch.testing.assert_close(part.returns, batch.returns[rows][:, :width])


def test_resumed_ppo_run_reproduces_the_uninterrupted_one(tmp_path, make_trainer, make_policy):
    sections = dict(training={"max_steps": 4}, checkpoint={"every_steps": 2}, **PPO)
    full = make_trainer(tmp_path / "full", policy=make_policy(), rewards=length_rewards(), **sections)
    full.train()
    first = make_trainer(tmp_path / "resumed", policy=make_policy(), rewards=length_rewards(),
                         **{**sections, "training": {"max_steps": 2}})
    first.train()
    # A new process loads the same base model (π_ref is its frozen copy); policy and critic come from the checkpoint.
    resumed = make_trainer(tmp_path / "resumed", policy=make_policy(), rewards=length_rewards(), **sections)
    torch.nn.init.normal_(resumed.critic.head.weight)  # so a critic not restored would show
    resumed.train()
    assert _losses(tmp_path / "resumed" / "run") == _losses(tmp_path / "full" / "run")
    for a, b in zip(full.critic.parameters(), resumed.critic.parameters()):
        assert torch.equal(a, b)


def test_a_grpo_checkpoint_cannot_be_resumed_as_ppo(tmp_path, make_trainer, make_policy):
    make_trainer(tmp_path, policy=make_policy(), training={"max_steps": 1}).train()
    ppo = make_trainer(tmp_path, policy=make_policy(), training={"max_steps": 2}, **PPO)
    with pytest.raises(Exception, match="not written by a ppo run"):
        ppo.train()


def test_ppo_with_dynamic_sampling_is_a_config_error_naming_the_field(tmp_path, make_trainer, make_policy):
    from grpokit.config_schema import ConfigError

    with pytest.raises(ConfigError, match="dynamic_sampling"):
        make_trainer(tmp_path, policy=make_policy(), algorithm={"preset": "ppo", "overrides": {"dynamic_sampling": True}},
                     rollout={"num_generations": None})


def test_value_loss_in_the_trainer_is_the_clipped_one():
    # the trainer calls the pure function; its clip is the preset's value_clip (0.2 for ppo)
    from grpokit.algorithms import get_preset

    preset = get_preset("ppo")
    loss, clipped = clipped_value_loss(torch.tensor([0.9]), torch.tensor([0.5]), torch.tensor([1.0]),
                                       clip=preset.value_clip)
    assert loss.item() == pytest.approx(0.045) and clipped.item()
