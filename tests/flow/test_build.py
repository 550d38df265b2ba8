from __future__ import annotations

import json

from grpokit.cli import _parser, main
from grpokit.flow import build, rewards


class _StubScorer:
    def gold_metrics(self, images, labels):
        return {"gold/score": 0.5}


def test_demo_command_takes_an_optional_task():
    assert _parser().parse_args(["demo"]).task == "arithmetic"
    args = _parser().parse_args(["demo", "flow", "--steps", "3"])
    assert (args.task, args.steps, args.run_dir) == ("flow", 3, None)


def test_train_command_runs_a_flow_config(tmp_path, monkeypatch, tiny_digits_model):
    reward_file = tmp_path / "reward.py"
    reward_file.write_text(
        "def dark(completions, **kwargs):\n    return [float(-c.mean()) for c in completions]\n"
    )
    config = tmp_path / "flow.yaml"
    config.write_text(
        "trainer: flow\n"
        f"rewards: [{{function: '{reward_file}:dark'}}]\n"
        "rollout: {prompts_per_step: 2, num_generations: 2, num_steps: 2, eval_num_steps: 2}\n"
        "training: {max_steps: 1}\n"
        "eval: {samples_per_prompt: 1}\n"
        f"logging: {{run_dir: '{tmp_path / 'run'}', tensorboard: false, progress: false, plot: false}}\n"
    )
    monkeypatch.setattr(build, "build_flow_model", lambda config: tiny_digits_model)
    monkeypatch.setattr(rewards, "digit_scorer", lambda **kwargs: _StubScorer())
    assert main(["train", str(config)]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 1]  # the final evaluation is a record of its own
    assert records[-1]["eval/gold/score"] == 0.5 and "eval/rewards/dark/mean" in records[-1]
    assert main(["eval", str(config)]) == 0  # evaluates the latest checkpoint


def _tree(root):
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def test_flow_eval_is_read_only_and_says_which_weights(tmp_path, monkeypatch, capsys, tiny_digits_model):
    config = tmp_path / "flow.yaml"
    config.write_text(
        "trainer: flow\n"
        "rewards: [{function: 'tests.flow.conftest:brightness'}]\n"
        "rollout: {prompts_per_step: 2, num_generations: 2, num_steps: 2, eval_num_steps: 2}\n"
        "training: {max_steps: 1}\n"
        "eval: {samples_per_prompt: 1}\n"
        f"logging: {{run_dir: '{tmp_path / 'run'}', tensorboard: false, progress: false, plot: false}}\n"
    )
    monkeypatch.setattr(build, "build_flow_model", lambda config: tiny_digits_model)
    monkeypatch.setattr(rewards, "digit_scorer", lambda **kwargs: _StubScorer())
    assert main(["train", str(config)]) == 0
    before = _tree(tmp_path / "run")
    capsys.readouterr()
    assert main(["eval", str(config)]) == 0  # the last step's grid is not drawn again, nothing is written
    assert _tree(tmp_path / "run") == before
    assert f"weights: {tmp_path / 'run' / 'checkpoints' / 'step-000001'} (step 1)" in capsys.readouterr().out
    missing = tmp_path / "missing"
    assert main(["eval", str(config), "--set", f"logging.run_dir={missing}"]) == 2
    assert "--base" in capsys.readouterr().err and not missing.exists()
    assert main(["eval", str(config), "--base", "--set", f"logging.run_dir={missing}"]) == 0
    assert "weights: base model" in capsys.readouterr().out and not missing.exists()
