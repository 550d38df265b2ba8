"""training.async: the producer samples step s with version s − k, its queue survives kill -9, stale rollouts."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from grpokit.config_schema import ConfigError
from grpokit.monitoring import read_metrics
from grpokit.rewards import Reward, RewardRunner
from grpokit.trainers.async_queue import QueuedRollout, queued_from_json, queued_to_json
from grpokit.trainers.async_rollouts import behaviour_version

SRC_DIR = Path(__file__).resolve().parents[2] / "src"
WAIT_SECONDS = 240  # for a CLI trainer to start and log a few steps on a busy 2-core machine


def digits(completions, **_):
    """A reward the random tiny model earns unevenly (so advantages are non-zero and the weights move)."""
    return [float(sum(ch.isdigit() for ch in text)) for text in completions]


def _digit_rewards() -> RewardRunner:
    return RewardRunner([Reward("digits", digits)])


def test_behaviour_version_is_step_minus_k_and_never_before_the_first_version():
    assert [behaviour_version(s, 2, 0) for s in range(5)] == [0, 0, 0, 1, 2]
    assert [behaviour_version(s, 2, 10) for s in (10, 11, 12, 13)] == [10, 10, 10, 11]
    assert behaviour_version(7, 1, 0) == 6


def _record_takes(trainer) -> dict[int, object]:
    taken: dict[int, object] = {}
    original = trainer.rollouts.take

    def take(step):
        taken[step] = original(step)
        return taken[step]

    trainer.rollouts.take = take
    return taken


@pytest.mark.parametrize("producer", ["process", "thread"])
def test_step_s_trains_on_exactly_what_version_s_minus_k_samples(tmp_path, make_trainer, make_policy, producer):
    """The rollout of step s equals, token for token and log-prob for log-prob, what a synchronous trainer
    holding the weights after s − k updates samples at step s: staleness is k, corrected against μ = π_{s−k}."""
    k, steps = 2, 5
    trainer = make_trainer(tmp_path, rewards=_digit_rewards(),
                           training={"max_steps": steps, "async": {"max_staleness": k, "producer": producer}})
    assert trainer.preset.behaviour_correction == "tis"  # the default when async
    taken = _record_takes(trainer)
    versions = {0: {name: t.clone() for name, t in trainer.model.state_dict().items()}}

    class KeepWeights:  # the weights after each update: version v = after v updates
        def on_step_end(self, trainer, step, metrics):
            versions[step] = {name: t.clone() for name, t in trainer.model.state_dict().items()}

    trainer.callbacks.append(KeepWeights())
    trainer.train()
    metrics = [m for m in read_metrics(tmp_path / "run" / "metrics.jsonl") if "train/learning_rate" in m]
    assert [m["async/staleness_max"] for m in metrics] == [min(s, k) for s in range(steps)]
    assert metrics[-1]["train/is_weight_mean"] != 1.0  # the weights moved: the correction is not a no-op

    for step in range(steps):
        version = behaviour_version(step, k, 0)
        policy = make_policy(seed=0)
        policy.model.load_state_dict(versions[version])
        reference = make_trainer(tmp_path / f"sync{step}", policy=policy, rewards=_digit_rewards(),
                                 training={"max_steps": steps})
        for _ in range(step):  # the prompts of the steps before
            reference.sampler.next_batch(reference.config.rollout.prompts_per_step)
        expected = reference.sample(step)
        assert taken[step].prompt_indices == expected.prompt_indices
        assert torch.equal(taken[step].rollout.completion_ids, expected.rollout.completion_ids)
        assert torch.equal(taken[step].rollout.behaviour_logprobs, expected.rollout.behaviour_logprobs)


def test_queued_rollouts_round_trip_through_checkpoint_json_exactly(tmp_path, make_trainer):
    trainer = make_trainer(tmp_path, rewards=_digit_rewards())
    scored = trainer.sample(0)
    scored.rewards[1, 0] = math.nan  # a reward that returned None
    scored.total_reward[1] = math.nan
    item = QueuedRollout(step=3, version=1, scored=scored, sampler_state=trainer.sampler.state_dict(), seconds=0.5,
                         sampler_metrics={"sampling/x": 1.0})
    text = json.dumps(queued_to_json(item), allow_nan=False)  # checkpoints refuse NaN
    back = queued_from_json(json.loads(text))
    assert (back.step, back.version, back.sampler_state, back.sampler_metrics) == (3, 1, item.sampler_state,
                                                                                   {"sampling/x": 1.0})
    for name in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "group_ids", "behaviour_logprobs"):
        original, restored = getattr(scored.rollout, name), getattr(back.scored.rollout, name)
        assert original.dtype == restored.dtype and torch.equal(original, restored), name
    assert torch.equal(back.scored.rewards.isnan(), scored.rewards.isnan())
    assert torch.equal(back.scored.rewards.nan_to_num(), scored.rewards.nan_to_num())
    assert back.scored.rollout.completions == scored.rollout.completions
    assert back.scored.prompt_indices == scored.prompt_indices


def _stale_checkpoint(tmp_path, make_trainer) -> Path:
    """A run directory whose only checkpoint (step 2) was written under k = 2: its queue holds step 2 (sampled
    by version 0) and step 3 (version 1)."""
    first = make_trainer(tmp_path / "k2", rewards=_digit_rewards(),
                         training={"max_steps": 5, "async": {"max_staleness": 2}},
                         checkpoint={"every_steps": 2, "keep_last": 5})
    first.train()
    source = tmp_path / "k2" / "run" / "checkpoints" / "step-000002"
    state = json.loads((source / "trainer_state.json").read_text())
    assert [(q["step"], q["version"]) for q in state["extra_state"]["async_queue"]] == [(2, 0), (3, 1)]
    target = tmp_path / "resumed" / "run" / "checkpoints"
    target.mkdir(parents=True)
    shutil.copytree(source, target / "step-000002")
    return tmp_path / "resumed"


@pytest.mark.parametrize("policy", ["drop", "downweight"])
def test_rollouts_older_than_k_after_resuming_with_a_smaller_k_are_dropped_or_downweighted(
        tmp_path, make_trainer, policy):
    resumed_dir = _stale_checkpoint(tmp_path, make_trainer)
    trainer = make_trainer(resumed_dir, rewards=_digit_rewards(),
                           training={"max_steps": 5, "async": {"max_staleness": 1, "stale_policy": policy,
                                                               "stale_weight": 0.5}})
    prepared, updated = {}, {}
    prepare, update = trainer.prepare, trainer.update

    def spy_prepare(scored):
        batch = prepare(scored)
        prepared[len(prepared) + 2] = batch.advantages.clone()
        return batch

    def spy_update(batch, step):
        updated[step] = batch.advantages.clone()
        return update(batch, step)

    trainer.prepare, trainer.update = spy_prepare, spy_update
    trainer.train()
    metrics = {m["step"]: m for m in read_metrics(resumed_dir / "run" / "metrics.jsonl") if "train/learning_rate" in m}
    assert sorted(metrics) == [3, 4, 5]
    # steps 2 and 3 (0-based) were queued under k = 2 (versions 0, 1); step 4 is sampled by version 3 (k = 1)
    assert [metrics[s]["async/staleness_max"] for s in (3, 4, 5)] == [2, 2, 1]
    assert [metrics[s]["async/staleness_frac_over"] for s in (3, 4, 5)] == [1, 1, 0]
    if policy == "drop":
        assert [metrics[s].get("train/skipped") for s in (3, 4, 5)] == [1.0, 1.0, None]
        assert metrics[3]["async/stale_dropped_groups"] == trainer.config.rollout.prompts_per_step
        assert sorted(updated) == [4]
    else:  # one update beyond k: advantages × 0.5, exactly (a power of two); step 4 within k: unchanged
        assert sorted(updated) == [2, 3, 4]
        for step in (2, 3):
            assert updated[step].abs().sum() > 0 and torch.equal(updated[step], prepared[step] * 0.5)
        assert torch.equal(updated[4], prepared[4])


def test_async_configs_it_cannot_run_are_clear_errors(tmp_path, make_trainer):
    from grpokit.trainers.async_rollouts import check_async_config
    from grpokit.trainers.lm_config import load_lm_config

    config = make_trainer(tmp_path, training={"async": {"max_staleness": 1}}).config
    config.rollout.engine = "vllm_colocate"
    with pytest.raises(ConfigError, match="not vllm_colocate yet"):
        check_async_config(config)
    config.rollout.engine = "vllm_server"
    check_async_config(config)  # the producer pushes each version to the server (tests/rollout/test_vllm_async.py)
    with pytest.raises(ConfigError, match="runs in one process for now"):
        check_async_config(config, world_size=2)
    config.training.async_.producer = "process"
    with pytest.raises(ConfigError, match="producer: process cannot drive rollout.engine: vllm_server"):
        check_async_config(config)
    minimal = {"model": {"name_or_path": "m"}, "data": {"path": "d"}, "rewards": [{"function": "exact_match"}]}
    with pytest.raises(ConfigError, match=r"training.async.max_staleness: must be >= 0"):
        load_lm_config({**minimal, "training": {"async": {"max_staleness": -1}}})
    with pytest.raises(ConfigError, match=r"training.async: unknown key\(s\) \['k'\]"):
        load_lm_config({**minimal, "training": {"async": {"k": 1}}})
    main_thread = RewardRunner([Reward("inline", digits, main_thread=True)])
    with pytest.raises(ConfigError, match=r"producer: thread: rewards \['inline'\] must run in a main thread"):
        make_trainer(tmp_path, rewards=main_thread, training={"async": {"max_staleness": 1, "producer": "thread"}})


# ---------------------------------------------------------------------- kill -9 and rerun: the prompt ledger
def _write_cli_run(directory: Path, make_policy, max_steps: int) -> Path:
    from grpokit.models import save_policy

    save_policy(make_policy(seed=0), directory / "model")
    records = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(4) for b in range(4)]  # 16 prompts
    (directory / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (directory / "digits_reward.py").write_text(
        "def digits(completions, **_):\n    return [float(sum(c.isdigit() for c in t)) for t in completions]\n")
    config = {
        "model": {"name_or_path": str(directory / "model")},
        "data": {"path": str(directory / "train.jsonl")},
        "rewards": [{"function": f"{directory / 'digits_reward.py'}:digits"}],  # unequal rewards: every step trains
        "rollout": {"prompts_per_step": 4, "num_generations": 2, "max_new_tokens": 3},
        "training": {"max_steps": max_steps, "micro_batch_size": 8, "learning_rate": 1e-3,
                     "async": {"max_staleness": 2}},
        "logging": {"run_dir": str(directory / "run"), "progress": False, "tensorboard": False, "plot": False,
                    "samples_every": 1, "samples_per_log": 4},  # the ledger: every group of every step
        "checkpoint": {"every_steps": 1},
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _train(config: Path, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(SRC_DIR)}
    return subprocess.Popen([sys.executable, "-m", "grpokit", "train", str(config)], cwd=cwd, env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _ledger(run_dir: Path) -> dict[int, list[int]]:
    """step → the prompt indices trained on, from samples.jsonl (rewound with the metrics on resume)."""
    ledger: dict[int, list[int]] = {}
    for line in (run_dir / "samples.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "train" and record["prompt_index"] not in ledger.setdefault(record["step"], []):
            ledger[record["step"]].append(record["prompt_index"])
    return ledger


def test_kill_9_and_the_same_command_again_trains_every_prompt_once_as_an_uninterrupted_run(
        tmp_path, make_policy):
    steps = 12  # 3 epochs of 16 prompts, 4 a step
    killed_dir, whole_dir = tmp_path / "killed", tmp_path / "whole"
    killed_dir.mkdir()
    whole_dir.mkdir()
    killed_config = _write_cli_run(killed_dir, make_policy, steps)
    whole = _train(_write_cli_run(whole_dir, make_policy, steps), whole_dir)
    first = _train(killed_config, killed_dir)
    metrics = killed_dir / "run" / "metrics.jsonl"
    deadline = time.monotonic() + WAIT_SECONDS
    while not (metrics.exists() and metrics.read_text().count("\n") >= 6):  # step-0 evaluation + 5 steps
        assert first.poll() is None, first.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the trainer logged too few steps in time"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)  # mid-run: the producer is sampling ahead, a checkpoint may be half-written
    first.wait()
    assert first.returncode == -signal.SIGKILL
    rerun = _train(killed_config, killed_dir)
    assert rerun.wait(timeout=WAIT_SECONDS) == 0, rerun.stderr.read()[-3000:]
    assert "resuming from step" in rerun.stderr.read()  # from the kill's last checkpoint, its queue included
    assert whole.wait(timeout=WAIT_SECONDS) == 0, whole.stderr.read()[-3000:]

    ledger, expected = _ledger(killed_dir / "run"), _ledger(whole_dir / "run")
    assert sorted(ledger) == list(range(1, steps + 1))
    assert ledger == expected
    for epoch in range(3):  # every prompt once per epoch: none lost, none trained on twice
        trained = [i for step in range(4 * epoch + 1, 4 * epoch + 5) for i in ledger[step]]
        assert sorted(trained) == list(range(16))
    # and the resumed run is the uninterrupted one, to the bit
    losses = [m.get("train/loss") for m in read_metrics(killed_dir / "run" / "metrics.jsonl")]
    assert losses == [m.get("train/loss") for m in read_metrics(whole_dir / "run" / "metrics.jsonl")]


class _Crash(Exception):
    pass


class _CrashAfter:
    """Ends the run with an exception right after step `step` was logged (as a kill would, minus the log)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, trainer, step, metrics):
        if step == self.step:
            raise _Crash


@pytest.mark.parametrize("sections", [
    {"sampling": {"strategy": "adaptive"}},  # the posterior observes rewards in the producer, k steps early
    {"algorithm": {"preset": "grpo", "overrides": {"beta": 0.0, "dynamic_sampling": True}}},
], ids=["adaptive", "dynamic"])
def test_a_crashed_run_resumes_to_the_bit_with_adaptive_and_dynamic_sampling(tmp_path, make_trainer, sections):
    common = dict(rewards=_digit_rewards(), checkpoint={"every_steps": 2},
                  training={"max_steps": 6, "async": {"max_staleness": 2}}, **sections)
    whole = make_trainer(tmp_path / "whole", **common)
    whole_taken = _record_takes(whole)
    whole.train()

    crashed = make_trainer(tmp_path / "crashed", **common)
    crashed.callbacks.append(_CrashAfter(3))  # the checkpoint of step 2 holds the queue of steps 2 and 3
    with pytest.raises(_Crash):
        crashed.train()
    resumed = make_trainer(tmp_path / "crashed", **common)
    resumed_taken = _record_takes(resumed)
    resumed.train()

    assert sorted(resumed_taken) == [2, 3, 4, 5]
    for step in resumed_taken:
        assert resumed_taken[step].prompt_indices == whole_taken[step].prompt_indices
        assert torch.equal(resumed_taken[step].rollout.completion_ids, whole_taken[step].rollout.completion_ids)
    for a, b in zip(whole.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_queue_written_by_another_number_of_processes_is_a_clear_error(tmp_path, make_trainer):
    """Each rank's queue holds that rank's share of the prompts: it cannot be resumed by another count."""
    trainer = make_trainer(tmp_path, training={"async": {"max_staleness": 1, "producer": "thread"}})
    with pytest.raises(ConfigError, match=r"sampled by 2 process\(es\).*resume with 2"):
        trainer.rollouts.load_checkpoint_state({"async_queue": [{}], "async_queue_by_rank": [[{}], [{}]]},
                                               rank=0, world_size=1)
    with pytest.raises(ConfigError, match=r"sampled by 1 process\(es\).*resume with 1"):
        trainer.rollouts.load_checkpoint_state({"async_queue": [{}]}, rank=1, world_size=2)
