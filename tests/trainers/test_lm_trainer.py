from __future__ import annotations

import pytest
import torch

from grpokit.models.loading import Policy
from grpokit.monitoring import read_metrics
from grpokit.rewards import RewardError, RewardRunner, load_reward


def _losses(run_dir) -> list[float]:
    return [r["train/loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "train/loss" in r]


def _length_reward(completions, **_):
    return [float(len(c)) for c in completions]


def test_a_run_logs_every_metric_a_user_needs_and_checkpoints(tmp_path, make_trainer, make_policy):
    trainer = make_trainer(tmp_path, logging={"plot": True, "tensorboard": True})
    trainer.train()
    run = tmp_path / "run"
    records = read_metrics(run / "metrics.jsonl")
    step_records = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in step_records] == [1, 2]
    expected = {"reward/mean", "rewards/exact_match/mean", "rewards/exact_match/std", "frac_reward_zero_std",
                "completion/length_mean", "completion/length_max", "completion/truncated_frac",
                "train/entropy_mean", "train/clip_frac_low", "train/clip_frac_high", "train/ratio_mean",
                "train/ratio_min", "train/ratio_max", "train/grad_norm", "train/learning_rate",
                "time/rollout_seconds", "time/train_seconds", "time/rollout_tokens_per_second"}
    assert expected <= set(step_records[0])
    assert "eval/greedy_accuracy" in records[0] and records[0]["step"] == 0
    assert (run / "metrics.png").stat().st_size > 10_000
    assert list((run / "tb").iterdir())
    assert (run / "checkpoints" / "latest").exists()


def test_resumed_run_reproduces_uninterrupted_losses_to_the_bit(tmp_path, make_trainer, make_policy):
    sections = dict(training={"max_steps": 4, "num_iterations": 2, "mini_batches": 2},
                    checkpoint={"every_steps": 2})
    full = make_trainer(tmp_path / "full", **sections)
    full.train()

    interrupted = make_trainer(tmp_path / "resumed", training={"max_steps": 2, "num_iterations": 2, "mini_batches": 2},
                           checkpoint={"every_steps": 2})
    interrupted.train()
    # A new process would rebuild everything from scratch: a fresh (differently initialised) policy.
    resumed = make_trainer(tmp_path / "resumed", policy=make_policy(seed=123), **sections)
    resumed.train()
    assert _losses(tmp_path / "resumed" / "run") == _losses(tmp_path / "full" / "run")
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


def test_micro_batching_does_not_change_the_update(tmp_path, make_trainer, make_policy):
    one = make_trainer(tmp_path / "a", training={"max_steps": 1, "micro_batch_size": 16})
    many = make_trainer(tmp_path / "b", training={"max_steps": 1, "micro_batch_size": 3})
    one.train()
    many.train()
    for a, b in zip(one.model.parameters(), many.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_lora_run_trains_only_the_adapter_and_uses_the_base_as_reference(tmp_path, make_trainer, make_policy):
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model

    base = make_policy()
    model = get_peft_model(base.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    policy = Policy(model, base.tokenizer, is_lora=True)
    frozen_before = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    # A reward every completion gets a different score from, so the adapter has something to learn.
    runner = RewardRunner([load_reward(_length_reward, name="length")])
    trainer = make_trainer(tmp_path, policy=policy, rewards=runner,
                           algorithm={"preset": "grpo", "overrides": {"beta": 0.04}},
                           training={"learning_rate": 1e-2, "max_steps": 3})
    trainer.train()
    for name, param in model.named_parameters():
        if name in frozen_before:
            assert torch.equal(param, frozen_before[name]), name
    kls = [r["train/kl"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "train/kl" in r]
    assert kls and kls[-1] > 0  # the adapter moved away from the base model, and the KL sees it
    assert (tmp_path / "run" / "checkpoints" / "latest").exists()
    assert policy._reference_copy is None  # β > 0 with LoRA: the adapter-disabled base, no second model copy


def test_multi_reward_run_logs_each_reward_separately(tmp_path, make_trainer, make_policy):
    runner = RewardRunner([load_reward("exact_match", weight=1.0),
                           load_reward(_length_reward, name="length", weight=0.1)])
    trainer = make_trainer(tmp_path, rewards=runner)
    trainer.train()
    record = next(r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "train/loss" in r)
    assert record["rewards/length/mean"] > 0
    assert "rewards/exact_match/mean" in record


def _raising_reward(completions, **_):
    raise ZeroDivisionError("boom")


def test_a_raising_reward_stops_the_run_with_its_name(tmp_path, make_trainer, make_policy):
    runner = RewardRunner([load_reward(_raising_reward, name="fragile")], on_error="stop")
    trainer = make_trainer(tmp_path, rewards=runner)
    with pytest.raises(RewardError, match="fragile"):
        trainer.train()


def test_a_raising_reward_scored_as_none_is_masked_and_counted(tmp_path, make_trainer, make_policy):
    runner = RewardRunner([load_reward("exact_match"), load_reward(_raising_reward, name="fragile")],
                          on_error="none")
    trainer = make_trainer(tmp_path, rewards=runner)
    trainer.train()
    record = next(r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "train/loss" in r)
    assert record["reward/none_count"] == 16
    assert record["rewards/fragile/errors"] >= 1
    assert record["train/loss"] == 0.0  # every row masked: nothing to learn, nothing corrupted


def _parity_reward(completions, answer, **_):
    # Even answers: every completion scores 1 (a zero-variance group); odd: 0, 1, 0, 1 by position.
    return [1.0 if int(a) % 2 == 0 else float(i % 2) for i, a in enumerate(answer)]


def test_dapo_dynamic_sampling_drops_zero_variance_groups(tmp_path, make_trainer, make_policy):
    runner = RewardRunner([load_reward(_parity_reward, name="parity")])
    trainer = make_trainer(tmp_path, rewards=runner, rollout={"max_dynamic_sampling_rounds": 6},
                           algorithm={"preset": "dapo", "overrides": {"soft_overlong": False}})
    drawn: list[int] = []
    next_batch = trainer.sampler.next_batch
    trainer.sampler.next_batch = lambda k: drawn.extend(next_batch(k)) or drawn[-k:]
    scored = trainer.sample(0)
    answers = [int(trainer.train_data[i]["answer"]) for i in scored.prompt_indices]
    assert len(answers) == 4 and all(a % 2 == 1 for a in answers)  # P informative groups were kept
    even_drawn = sum(int(trainer.train_data[i]["answer"]) % 2 == 0 for i in drawn)
    assert scored.dropped_groups == even_drawn > 0
    assert scored.generation_rounds > 1 and scored.generated_rollouts == 4 * len(drawn)


def test_samples_log_holds_completions_scores_advantages_and_fixed_held_out_prompts(tmp_path, make_trainer):
    from grpokit.monitoring.samples import read_samples

    runner = RewardRunner([load_reward("exact_match"), load_reward(_length_reward, name="length", weight=0.1)])
    trainer = make_trainer(tmp_path, rewards=runner, eval={"every_steps": 1, "num_prompts": 5},
                           logging={"samples_every": 2, "samples_per_log": 2, "eval_samples": 3},
                           training={"max_steps": 4})
    trainer.train()
    records = read_samples(tmp_path / "run")
    train = [r for r in records if r["kind"] == "train"]
    assert sorted({r["step"] for r in train}) == [2, 4]  # every samples_every steps
    for step in (2, 4):
        rows = [r for r in train if r["step"] == step]
        assert len(rows) == 2 * 4 and sorted({r["group"] for r in rows}) == [0, 1]  # 2 groups of G = 4
        for r in rows:
            assert r["total"] == pytest.approx(r["rewards"]["exact_match"] + 0.1 * r["rewards"]["length"])
            assert r["rewards"]["length"] == len(r["completion"])
            assert r["prompt"] == trainer.train_data.render(r["prompt_index"], trainer.policy.tokenizer)
        for group in (0, 1):  # z-scored within the group: advantages sum to 0 and order like the totals
            members = [r for r in rows if r["group"] == group]
            assert sum(r["advantage"] for r in members) == pytest.approx(0.0, abs=1e-5)
            by_total = sorted(members, key=lambda r: r["total"])
            assert [r["advantage"] for r in by_total] == sorted(r["advantage"] for r in members)
    held_out = [r for r in records if r["kind"] == "eval"]
    assert [(r["step"], r["index"]) for r in held_out] == [(s, i) for s in range(5) for i in range(3)]
    for r in held_out:  # the same prompts every evaluation, with the greedy completion and every score
        assert r["prompt"] == trainer.eval_data.render(r["index"], trainer.policy.tokenizer) and r["greedy"]
        assert set(r["rewards"]) == {"exact_match", "length"}


def test_samples_log_is_cut_back_to_the_resumed_step(tmp_path, make_trainer, make_policy):
    from grpokit.monitoring.samples import SamplesLog, read_samples

    sections = dict(logging={"samples_every": 1}, checkpoint={"every_steps": 1})
    make_trainer(tmp_path, training={"max_steps": 2}, **sections).train()
    with SamplesLog(tmp_path / "run") as log:  # a crash after logging step 3, before its checkpoint
        log.write([{"step": 3, "kind": "train", "prompt": "lost", "completion": "lost"}])
    make_trainer(tmp_path, policy=make_policy(seed=5), training={"max_steps": 3}, **sections).train()
    records = read_samples(tmp_path / "run")
    assert "lost" not in {r["prompt"] for r in records}
    assert sorted({r["step"] for r in records if r["kind"] == "train"}) == [1, 2, 3]
    assert len([r for r in records if r["kind"] == "train" and r["step"] == 3]) == 2 * 4


def test_samples_every_zero_writes_no_training_samples(tmp_path, make_trainer):
    from grpokit.monitoring.samples import read_samples

    make_trainer(tmp_path, logging={"samples_every": 0, "eval_samples": 0}).train()
    assert read_samples(tmp_path / "run") == []


def test_the_learning_rate_schedule_advances_once_per_training_step(tmp_path, make_trainer):
    # 2 passes × 2 mini-batches = 4 optimizer steps per training step; the linear decay's horizon is
    # training.max_steps = 4, so the steps use 1, 3/4, 2/4, 1/4 of the rate (lr_factor), never 0 mid-run.
    trainer = make_trainer(tmp_path, training={"max_steps": 4, "num_iterations": 2, "mini_batches": 2,
                                               "lr_schedule": "linear", "learning_rate": 1e-3})
    trainer.train()
    logged = [r["train/learning_rate"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "train/loss" in r]
    assert logged == pytest.approx([1e-3, 0.75e-3, 0.5e-3, 0.25e-3], rel=1e-12, abs=0)  # float products of 1e-3
    assert trainer.optimizer.param_groups[0]["lr"] == 0.0
