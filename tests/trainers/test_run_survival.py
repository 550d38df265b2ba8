"""Runs that survive: one trainer per run directory, kill -9, damaged checkpoints, finished runs, bad run dirs.

The first test drives real `grpokit train` processes; the others run the trainer in this process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from grpokit.checkpoint import model_dir
from grpokit.monitoring import read_metrics
from grpokit.run_lock import LOCK_FILENAME

SRC_DIR = Path(__file__).resolve().parents[2] / "src"
WAIT_SECONDS = 180  # for a trainer to start on a busy 2-core machine; a working run needs a few


def _write_cli_run(directory: Path, make_policy) -> Path:
    """A tiny model, addition prompts, a config that trains 2 prompts × 2 completions of 2 tokens per step."""
    from grpokit.models import save_policy

    save_policy(make_policy(seed=0), directory / "model")
    records = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(6) for b in range(6)]
    (directory / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    config = {
        "model": {"name_or_path": str(directory / "model")},
        "data": {"path": str(directory / "train.jsonl"), "eval_path": str(directory / "train.jsonl")},
        "rewards": [{"function": "exact_match"}],
        "rollout": {"prompts_per_step": 2, "num_generations": 2, "max_new_tokens": 2},
        "training": {"max_steps": 100_000, "micro_batch_size": 4, "learning_rate": 1e-3},
        "eval": {"num_prompts": 2, "samples_per_prompt": 1},
        "logging": {"run_dir": str(directory / "run"), "progress": False, "tensorboard": False, "plot": False},
        "checkpoint": {"every_steps": 100_000},  # no checkpoint before the kill
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _grpokit(*args: str) -> list[str]:
    return [sys.executable, "-m", "grpokit", *args]


_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(SRC_DIR)}


def _wait_for_logged_steps(run_dir: Path, steps: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    metrics = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the first trainer ended early:\n{process.stderr.read()[-3000:]}"
        if metrics.exists() and metrics.read_text().count("\n") >= steps + 1:  # + the step-0 evaluation
            return
        time.sleep(0.2)
    pytest.fail(f"the first trainer logged fewer than {steps} steps in {WAIT_SECONDS} s")


def _training_steps(path: Path) -> list[int]:
    """The steps of the training records (the evaluation-only records of step 0 and the last step left out)."""
    return [record["step"] for record in read_metrics(path) if "train/learning_rate" in record]


def test_second_trainer_stops_at_once_and_a_kill_9_before_the_first_checkpoint_never_duplicates_steps(
        tmp_path, make_policy):
    config = _write_cli_run(tmp_path, make_policy)
    run_dir = tmp_path / "run"
    first = subprocess.Popen(_grpokit("train", str(config)), cwd=tmp_path, env=_ENV, text=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_logged_steps(run_dir, 2, first)
        holder = json.loads((run_dir / LOCK_FILENAME).read_text())
        assert holder["pid"] == first.pid and holder["command"].startswith("grpokit train ")

        second = subprocess.run(_grpokit("train", str(config)), cwd=tmp_path, env=_ENV, capture_output=True,
                                text=True, timeout=WAIT_SECONDS)
        assert second.returncode == 2
        error = second.stderr.strip().splitlines()
        assert error[-1].startswith(f"grpokit: run dir error: {run_dir} is in use by another trainer: "
                                    f"PID {first.pid} on host ")
        assert "Traceback" not in second.stderr
        assert "Loading weights" not in second.stderr  # it stopped before loading the model
        assert first.poll() is None  # the first one trains on, untouched
    finally:
        first.send_signal(signal.SIGKILL)  # kill -9: no checkpoint yet, the lock file stays behind
        first.wait(timeout=60)
    killed_log = read_metrics(run_dir / "metrics.jsonl")
    assert len(_training_steps(run_dir / "metrics.jsonl")) >= 2

    rerun = subprocess.run(_grpokit("train", str(config), "--set", "training.max_steps=3"), cwd=tmp_path,
                           env=_ENV, capture_output=True, text=True, timeout=WAIT_SECONDS)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (f"grpokit: warning: {run_dir}: taking over the lock of a trainer that is no longer running "
            f"(PID {first.pid} on host") in rerun.stderr
    assert (f"grpokit: warning: {run_dir / 'metrics.jsonl'} holds an earlier run's records and this run starts "
            f"from step 0 (no checkpoint to resume); moved it to metrics.") in rerun.stderr
    assert _training_steps(run_dir / "metrics.jsonl") == [1, 2, 3]  # each step once
    assert [record["step"] for record in read_metrics(run_dir / "metrics.jsonl")].count(0) == 1
    (moved,) = run_dir.glob("metrics.*.jsonl.old")
    assert read_metrics(moved) == killed_log  # the killed run's log, whole, beside the new one
    assert not (run_dir / LOCK_FILENAME).exists()  # released at the end


def test_sigterm_stops_the_trainer_with_one_line_and_releases_the_run_dir(tmp_path, make_policy):
    """A scheduler's stop (SIGTERM) runs every cleanup, like Ctrl-C: the lock file is removed, exit 143."""
    config = _write_cli_run(tmp_path, make_policy)
    run_dir = tmp_path / "run"
    trainer = subprocess.Popen(_grpokit("train", str(config)), cwd=tmp_path, env=_ENV, text=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_logged_steps(run_dir, 1, trainer)
        assert (run_dir / LOCK_FILENAME).exists()
        trainer.send_signal(signal.SIGTERM)
        stderr = trainer.communicate(timeout=WAIT_SECONDS)[1]
    finally:
        if trainer.poll() is None:
            trainer.kill()
    assert trainer.returncode == 143, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == ("grpokit: terminated (SIGTERM); the same command resumes from the "
                                               "last checkpoint")
    assert "Traceback" not in stderr
    assert not (run_dir / LOCK_FILENAME).exists()


def _length_reward(completions, **_):
    return [float(len(completion)) for completion in completions]


def _copy_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    # cloned: the file may be memory-mapped, and the test truncates it in place
    return {name: tensor.clone() for name, tensor in load_file(str(model_dir(checkpoint) / "model.safetensors")).items()}


def test_truncated_latest_checkpoint_is_named_and_the_run_resumes_from_the_one_before(
        tmp_path, make_trainer, make_policy, capsys):
    from grpokit.rewards import RewardRunner, load_reward

    def length_runner():  # completions of different lengths: non-zero advantages, real updates
        return RewardRunner([load_reward(_length_reward, name="length")])

    sections = dict(training={"max_steps": 4}, checkpoint={"every_steps": 2, "keep_last": 3})
    make_trainer(tmp_path, rewards=length_runner(), **sections).train()
    run_dir = tmp_path / "run"
    step_2, step_4 = run_dir / "checkpoints" / "step-000002", run_dir / "checkpoints" / "step-000004"
    uninterrupted = _copy_weights(step_4)
    assert any(not torch.equal(tensor, uninterrupted[name]) for name, tensor in _copy_weights(step_2).items())
    uninterrupted_losses = {r["step"]: r["train/loss"] for r in read_metrics(run_dir / "metrics.jsonl")
                            if "train/loss" in r}
    safetensors = model_dir(step_4) / "model.safetensors"
    safetensors.write_bytes(safetensors.read_bytes()[:3000])  # a copy or a disk that stopped short
    capsys.readouterr()

    resumed = make_trainer(tmp_path, policy=make_policy(seed=123), rewards=length_runner(), **sections)
    with pytest.warns(UserWarning, match=rf"checkpoint {step_4} is damaged \(model/model.safetensors: 3000 bytes, "
                                         rf"its header says \d+ \(truncated\)\); falling back to the one before it"):
        resumed.train()
    assert f"grpokit: resuming from step 2 of 4 ({step_2})" in capsys.readouterr().err
    # Resumed from step 2, the run repeats steps 3-4 exactly (CPU resume is bit-exact) and replaces the damage.
    assert {r["step"]: r["train/loss"] for r in read_metrics(run_dir / "metrics.jsonl")
            if "train/loss" in r} == uninterrupted_losses
    assert _training_steps(run_dir / "metrics.jsonl") == [1, 2, 3, 4]
    repaired = _copy_weights(step_4)
    assert all(torch.equal(repaired[name], uninterrupted[name]) for name in uninterrupted)


def test_rerunning_a_finished_run_says_so_and_trains_nothing(tmp_path, make_trainer, capsys):
    make_trainer(tmp_path, training={"max_steps": 2}).train()
    run_dir = tmp_path / "run"
    log_before = (run_dir / "metrics.jsonl").read_bytes()
    checkpoints_before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    capsys.readouterr()

    assert make_trainer(tmp_path, training={"max_steps": 2}).train() == {}
    err = capsys.readouterr().err
    assert f"grpokit: run already finished at step 2 ({run_dir / 'checkpoints' / 'step-000002'}); nothing to do" in err
    assert (run_dir / "metrics.jsonl").read_bytes() == log_before
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == checkpoints_before


def test_when_every_checkpoint_is_damaged_train_stops_in_one_line_naming_the_files(tmp_path, make_trainer):
    from grpokit.checkpoint import DamagedCheckpointError

    make_trainer(tmp_path, training={"max_steps": 1}).train()
    state = tmp_path / "run" / "checkpoints" / "step-000001" / "trainer_state.json"
    state.write_text(state.read_text()[:20])
    with pytest.warns(UserWarning, match="no earlier one to use"), pytest.raises(DamagedCheckpointError) as caught:
        make_trainer(tmp_path, training={"max_steps": 2}).train()
    assert "step-000001: trainer_state.json: not valid JSON" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_train_into_a_run_dir_that_is_a_file_is_a_one_line_error(tmp_path, make_policy, capsys):
    from grpokit.cli import main

    config = _write_cli_run(tmp_path, make_policy)
    (tmp_path / "taken").write_text("a file")
    capsys.readouterr()
    assert main(["train", str(config), "--set", f"logging.run_dir={tmp_path / 'taken'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"grpokit: run dir error: logging.run_dir {tmp_path / 'taken'} is a file, not a directory"
