"""`grpokit eval` on a real tiny trained run: read-only, says which weights, percent units, gold next to proxy."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import yaml

from grpokit.cli import main


def _tiny_model(directory: Path) -> Path:
    from grpokit.models import build_char_tokenizer, build_tiny_causal_lm, save_policy
    from grpokit.models.loading import Policy

    tokenizer = build_char_tokenizer()
    model = build_tiny_causal_lm(len(tokenizer), hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                 intermediate_size=64, seed=0)
    save_policy(Policy(model, tokenizer, is_lora=False), directory)
    return directory


def write_run_inputs(tmp_path: Path, **sections) -> Path:
    """A tiny Qwen2 on disk, addition prompts, a digits-only proxy and an exact-match gold; the config path."""
    records = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(5) for b in range(5)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:6]))
    config = {
        "model": {"name_or_path": str(_tiny_model(tmp_path / "model"))},
        "data": {"path": str(tmp_path / "train.jsonl"), "eval_path": str(tmp_path / "eval.jsonl")},
        "rewards": [{"function": "format_regex", "name": "digits_only", "kwargs": {"pattern": "[0-9]+"}}],
        "gold": {"rewards": [{"function": "exact_match", "name": "gold_exact"}], "num_prompts": 6,
                 "samples_per_prompt": 2},
        "algorithm": {"preset": "grpo", "overrides": {"beta": 0.0}},
        "rollout": {"prompts_per_step": 4, "num_generations": 4, "max_new_tokens": 3},
        "training": {"max_steps": 2, "micro_batch_size": 16, "learning_rate": 1e-2},
        "eval": {"num_prompts": 6, "samples_per_prompt": 2, "every_steps": 1},
        "logging": {"run_dir": str(tmp_path / "run"), "progress": False, "tensorboard": False, "plot": False,
                    "samples_every": 1},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def tree_digest(root: Path) -> dict[str, str]:
    """Every path under `root` (directories too) → sha256 of its bytes ("dir" for a directory)."""
    digest = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            digest[str(Path(dirpath, name).relative_to(root))] = "dir"
        for name in filenames:
            path = Path(dirpath, name)
            digest[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A real 2-step `grpokit train` run with gold rewards (so it keeps checkpoints/best)."""
    directory = tmp_path_factory.mktemp("cli_eval")
    assert main(["train", str(write_run_inputs(directory))]) == 0
    assert (directory / "run" / "checkpoints" / "best" / "COMPLETE").is_file()
    return directory


def test_eval_changes_nothing_in_the_run_dir_and_says_which_weights(trained, capsys):
    before = tree_digest(trained / "run")
    capsys.readouterr()
    assert main(["eval", str(trained / "config.yaml"), "--show", "2"]) == 0
    out = capsys.readouterr().out
    assert tree_digest(trained / "run") == before  # best, latest, logs: byte for byte, no new file
    checkpoint = trained / "run" / "checkpoints" / "step-000002"
    assert f"weights: {checkpoint} (step 2; run completed at step 2)" in out
    lines = {line.split(":")[0]: line for line in out.splitlines()}
    for key in ("eval/greedy_accuracy", "eval/mean@2", "eval/pass@2"):
        assert lines[key].endswith("%  (proxy: digits_only)")  # one unit, said; the proxy named
        assert lines[key.replace("eval/", "eval/gold_")].endswith("%  (gold: gold_exact)")
    assert out.count("--- example ") == 2 and "digits_only" in out and "gold/gold_exact" in out
    assert "distinct greedy completions: " in out and " of 6 prompts" in out


def test_eval_scores_the_same_weights_training_evaluated_last(trained, capsys):
    """The checkpoint's greedy accuracies equal what the run logged at its last step (same seed, same weights)."""
    from grpokit.monitoring import read_metrics

    logged = [r for r in read_metrics(trained / "run" / "metrics.jsonl") if "eval/greedy_accuracy" in r][-1]
    assert logged["step"] == 2
    capsys.readouterr()
    assert main(["eval", str(trained / "config.yaml")]) == 0
    out = capsys.readouterr().out
    for key in ("eval/greedy_accuracy", "eval/gold_greedy_accuracy", "eval/mean@2"):
        assert f"{key}: {logged[key]:.1f} %" in out


def test_eval_of_a_run_without_checkpoints_is_an_error_and_creates_nothing(trained, tmp_path, capsys):
    missing = tmp_path / "never_trained"
    code = main(["eval", str(trained / "config.yaml"), "--set", f"logging.run_dir={missing}"])
    error = capsys.readouterr().err
    assert code == 2 and not missing.exists()
    assert len(error.strip().splitlines()) == 1 and "--base" in error and "checkpoints" in error
    (missing / "checkpoints").mkdir(parents=True)  # an empty checkpoints dir is no better
    assert main(["eval", str(trained / "config.yaml"), "--set", f"logging.run_dir={missing}"]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err
    assert list(missing.rglob("*")) == [missing / "checkpoints"]


def test_eval_base_evaluates_the_configured_model_and_says_so(trained, tmp_path, capsys):
    missing = tmp_path / "never_trained"
    assert main(["eval", str(trained / "config.yaml"), "--base", "--set", f"logging.run_dir={missing}"]) == 0
    out = capsys.readouterr().out
    assert f"weights: base model {trained / 'model'}" in out and "eval/greedy_accuracy" in out
    assert not missing.exists()
