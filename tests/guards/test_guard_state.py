"""Guard state lives in the checkpoint: a rerun does not undo a guard, and `best` only moves up."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from grpokit.cli import main
from grpokit.guards import EntropyCollapseAlarm, GoldGuard, OverOptimizationAlarm, RatioDriftAlarm
from grpokit.guards.state import describe_run_end, run_end
from grpokit.monitoring import read_metrics
from grpokit.rewards import RewardRunner, load_reward


def _digest(directory: Path) -> str:
    """sha256 over every file's relative path and bytes under `directory`."""
    h = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(directory)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def test_alarm_state_round_trips_through_json_and_continues_the_same_stream():
    """A restored alarm answers the rest of a stream exactly as the uninterrupted one does."""
    stream = [(s, 0.1 * s, 0.5 - 0.1 * abs(s - 2)) for s in range(8)]
    whole = OverOptimizationAlarm(window=3, min_gold_fall=0.05)
    first = OverOptimizationAlarm(window=3, min_gold_fall=0.05)
    for point in stream[:4]:
        whole.update(*point), first.update(*point)
    resumed = OverOptimizationAlarm(window=3, min_gold_fall=0.05)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict(), allow_nan=False)))
    assert resumed.best_gold == whole.best_gold == pytest.approx(0.5) and resumed.best_step == 2
    assert [whole.update(*p) for p in stream[4:]] == [resumed.update(*p) for p in stream[4:]]
    assert any(whole.update(s, 1.0 + s, 0.0) for s in (8,)) is False  # latched: the fall already fired

    entropy, restored = EntropyCollapseAlarm(floor=0.5, window=3), EntropyCollapseAlarm(floor=0.5, window=3)
    assert entropy.update(1, 0.4) is not None  # fires, and stays latched while below the floor
    restored.load_state_dict(json.loads(json.dumps(entropy.state_dict())))
    assert restored.update(2, 0.3) is None and list(restored.points) == [(1, 0.4), (2, 0.3)]
    ratio = RatioDriftAlarm(max_mean_shift=0.1, patience=2)
    ratio.update(1, 1.5)
    again = RatioDriftAlarm(max_mean_shift=0.1, patience=2)
    again.load_state_dict(ratio.state_dict())
    assert again.update(2, 1.5) is not None  # the second consecutive step out of bounds: patience counted


def test_a_fresh_alarm_state_has_no_best_and_serializes_without_infinity():
    state = OverOptimizationAlarm().state_dict()
    assert state["best_gold"] is None and json.dumps(state, allow_nan=False)
    alarm = OverOptimizationAlarm()
    alarm.load_state_dict(state)
    assert alarm.best_gold == -math.inf


def test_run_end_says_how_the_run_ended():
    assert describe_run_end(run_end(step=5, max_steps=5, stop=None, stopped=False)) == "completed at step 5"
    stop = {"kind": "over_optimization", "step": 120, "action": "restore_best", "restored_step": 80}
    assert (describe_run_end(run_end(step=120, max_steps=200, stop=stop, stopped=True))
            == "stopped by the over-optimization guard at step 120 and restored best (step 80)")
    stop = {"kind": "entropy_collapse", "step": 7, "action": "stop"}
    assert describe_run_end(run_end(step=7, max_steps=9, stop=stop, stopped=True)) == (
        "stopped by the entropy-collapse guard at step 7")
    assert run_end(step=3, max_steps=9, stop=None, stopped=True)["status"] == "stopped"


class ScriptedGold:
    def __init__(self, scores):
        self.scores = iter(scores)

    def __call__(self, completions, **_):
        return [next(self.scores)] * len(completions)


def test_a_resumed_run_remembers_the_best_gold_and_never_overwrites_best_with_worse(
    tmp_path, make_guarded_trainer
):
    run = tmp_path / "run"
    first = GoldGuard(RewardRunner([load_reward(ScriptedGold([0.2, 0.7]), name="scripted")]),
                      num_prompts=4, samples_per_prompt=2)
    make_guarded_trainer(run, callbacks=[first], training={"max_steps": 1}, checkpoint={"resume": True},
                         eval={"samples_per_prompt": 1}).train()
    assert (first.best_gold, first.best_step) == (pytest.approx(0.7), 1)
    best = _digest(run / "checkpoints" / "best")

    # A new process: a fresh guard whose later golds (0.5, 0.6) beat −inf but not the remembered 0.7.
    second = GoldGuard(RewardRunner([load_reward(ScriptedGold([0.5, 0.6]), name="scripted")]),
                       num_prompts=4, samples_per_prompt=2)
    trainer = make_guarded_trainer(run, callbacks=[second], training={"max_steps": 3}, checkpoint={"resume": True},
                                   eval={"samples_per_prompt": 1})
    trainer.train()
    assert trainer.step == 3 and (second.best_gold, second.best_step) == (pytest.approx(0.7), 1)
    assert _digest(run / "checkpoints" / "best") == best
    logged = [(r["step"], r["gold/best"]) for r in read_metrics(run / "metrics.jsonl") if "gold/best" in r]
    assert [step for step, _ in logged] == [0, 1, 2, 3]
    assert [best for _, best in logged] == pytest.approx([0.2, 0.7, 0.7, 0.7])  # float32 rewards


def test_best_moves_only_to_a_strictly_better_gold(tmp_path, make_guarded_trainer):
    guard = GoldGuard(RewardRunner([load_reward(ScriptedGold([0.5, 0.5, 0.5]), name="scripted")]),
                      num_prompts=4, samples_per_prompt=2)
    make_guarded_trainer(tmp_path / "run", callbacks=[guard], eval={"samples_per_prompt": 1}).train()
    assert guard.best_step == 0  # equal is not better: best keeps the step-0 weights
    assert (tmp_path / "run" / "checkpoints" / "best" / "COMPLETE").read_text().strip() == "0"


# ---------------------------------------------------------------------------------------------- real CLI runs
def _write_guarded_run(tmp_path: Path) -> Path:
    """A tiny model on disk; gold = exact match (keeps checkpoints/best); an entropy floor no policy is
    under, acting restore_best: the guard fires at step 1 of 4, restores best and stops the run."""
    from grpokit.models import build_char_tokenizer, build_tiny_causal_lm, save_policy
    from grpokit.models.loading import Policy

    tokenizer = build_char_tokenizer()
    model = build_tiny_causal_lm(len(tokenizer), hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                 intermediate_size=64, seed=0)
    save_policy(Policy(model, tokenizer, is_lora=False), tmp_path / "model")
    records = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(4) for b in range(4)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    config = {
        "model": {"name_or_path": str(tmp_path / "model")},
        "data": {"path": str(tmp_path / "data.jsonl"), "eval_path": str(tmp_path / "data.jsonl")},
        "rewards": [{"function": "format_regex", "kwargs": {"pattern": "[0-9]+"}}],
        "gold": {"rewards": [{"function": "exact_match"}], "num_prompts": 4, "samples_per_prompt": 2},
        "guards": {"entropy": {"floor": 1.0e6, "action": "restore_best"}},
        "rollout": {"prompts_per_step": 4, "num_generations": 4, "max_new_tokens": 3},
        "training": {"max_steps": 4, "micro_batch_size": 16, "learning_rate": 1e-2},
        "eval": {"num_prompts": 4, "samples_per_prompt": 1, "every_steps": 1},
        "logging": {"run_dir": str(tmp_path / "run"), "progress": False, "tensorboard": False, "plot": False},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _grpokit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    source = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": source}
    return subprocess.run([sys.executable, "-m", "grpokit", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_a_rerun_of_a_run_a_guard_stopped_says_so_and_does_not_train_unless_asked(tmp_path, capsys):
    config = _write_guarded_run(tmp_path)
    run = tmp_path / "run"
    assert main(["train", str(config)]) == 0
    state = json.loads((run / "checkpoints" / "step-000001" / "trainer_state.json").read_text())
    end = state["extra_state"]["run_end"]
    assert (end["status"], end["kind"], end["step"]) == ("restored", "entropy_collapse", 1)
    restored_from = end["restored_step"]
    assert state["extra_state"]["guards"]["GoldGuard"]["best_step"] == restored_from
    before = _digest(run)

    rerun = _grpokit("train", str(config), cwd=tmp_path)  # a real process: the message must reach the user
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert (f"run was stopped by the entropy-collapse guard at step 1 and restored best (step {restored_from}); "
            "pass --continue") in rerun.stderr
    assert _digest(run) == before  # no step trained, no log line, best untouched

    assert main(["eval", str(config)]) == 0  # evaluating it says how it ended, and changes nothing either
    assert (f"(step 1; run stopped by the entropy-collapse guard at step 1 and restored best (step {restored_from}))"
            in capsys.readouterr().out)
    assert _digest(run) == before

    assert main(["train", str(config), "--continue"]) == 0
    assert (run / "checkpoints" / "step-000004" / "COMPLETE").is_file()
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl") if "train/loss" in r]
    assert steps == [1, 2, 3, 4]
    end = json.loads((run / "checkpoints" / "step-000004" / "trainer_state.json").read_text())
    assert end["extra_state"]["run_end"]["status"] == "completed"
