"""`grpokit train` reports config and data mistakes as exit code 2 with a message naming the culprit."""

from __future__ import annotations

import json

import pytest
import yaml

from grpokit.cli import _parser, main


def _config(tmp_path, data_path, **training) -> str:
    config = {
        "model": {"name_or_path": str(tmp_path / "no-model-needed")},  # data is checked before loading
        "data": {"path": str(data_path), "required_columns": ["answer"]},
        "rewards": [{"function": "exact_match"}],
        "training": {"max_steps": 1, **training},
        "logging": {"run_dir": str(tmp_path / "run"), "progress": False, "tensorboard": False},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_misspelled_config_key_exits_2_naming_the_section_and_key(tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    _write_jsonl(data, [{"prompt": "1+1=", "answer": "2"}])
    code = main(["train", _config(tmp_path, data, lerning_rate=1e-5)])
    error = capsys.readouterr().err
    assert code == 2
    assert "training" in error and "lerning_rate" in error
    assert "learning_rate" in error  # the allowed keys are listed, so the fix is visible


def test_misspelled_override_key_exits_2_naming_it(tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    _write_jsonl(data, [{"prompt": "1+1=", "answer": "2"}])
    code = main(["train", _config(tmp_path, data), "--set", "rollout.max_new_tokenz=8"])
    assert code == 2
    assert "max_new_tokenz" in capsys.readouterr().err


def test_data_row_missing_a_required_column_exits_2_naming_file_line_and_column(tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    _write_jsonl(
        data, [{"prompt": "1+1=", "answer": "2"}, {"prompt": "2+2="}, {"prompt": "3+3=", "answer": "6"}]
    )
    code = main(["train", _config(tmp_path, data)])
    error = capsys.readouterr().err
    assert code == 2
    assert "train.jsonl" in error and "line 2" in error and "'answer'" in error
    assert "line 1" not in error and "line 3" not in error


def test_presets_lists_every_language_model_and_flow_preset(capsys, monkeypatch):
    from grpokit.algorithms.presets import PRESETS
    from grpokit.flow.presets import FLOW_PRESETS

    monkeypatch.setenv("COLUMNS", "400")  # rich would otherwise ellipsize names in a narrow terminal
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in [*PRESETS, *FLOW_PRESETS]:
        assert f" {name} " in out


# ----------------------------------------------------------------------------- one-line errors
# A user's mistake is `grpokit: <kind> error: ...` on stderr, exit code 2, no traceback (`--debug` shows it).


def _one_line_error(capsys, argv: list[str], kind: str) -> str:
    code = main(argv)
    error = capsys.readouterr().err
    assert code == 2, error
    assert "Traceback" not in error
    assert error.startswith(f"grpokit: {kind} error: "), error
    return error


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A tiny Qwen2 with a character tokenizer, saved as a model directory (trains a step in ~1 s)."""
    from grpokit.models import build_char_tokenizer, build_tiny_causal_lm

    directory = tmp_path_factory.mktemp("tiny-model")
    tokenizer = build_char_tokenizer()
    build_tiny_causal_lm(len(tokenizer), hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                         intermediate_size=64, seed=0).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _train_config(tmp_path, model_dir, reward_function: str, **sections) -> str:
    data = tmp_path / "train.jsonl"
    _write_jsonl(data, [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(3) for b in range(3)])
    config = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"path": str(data)},
        "rewards": [{"function": reward_function}],
        "rollout": {"prompts_per_step": 2, "num_generations": 2, "max_new_tokens": 3},
        "training": {"max_steps": 1, "micro_batch_size": 4},
        "logging": {"run_dir": str(tmp_path / "run"), "progress": False, "tensorboard": False, "plot": False},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _reward_file(tmp_path, body: str) -> str:
    path = tmp_path / "my_reward.py"
    path.write_text(body)
    return f"{path}:score"


def test_missing_model_directory_is_one_line_naming_it(tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    _write_jsonl(data, [{"prompt": "1+1=", "answer": "2"}])
    error = _one_line_error(capsys, ["train", _config(tmp_path, data)], "model")
    assert str(tmp_path / "no-model-needed") in error and "not found" in error
    assert "Repo id" not in error
    assert not (tmp_path / "run").exists()  # the run dir made for the lock is not left behind empty


def test_unknown_builtin_module_or_function_reward_is_one_line(tmp_path, capsys, tiny_model_dir):
    error = _one_line_error(capsys, ["train", _train_config(tmp_path, tiny_model_dir, "exact_mach")], "reward")
    assert "unknown reward 'exact_mach'" in error and "exact_match" in error  # the built-ins are listed
    error = _one_line_error(capsys, ["train", _train_config(tmp_path, tiny_model_dir, "no_such_pkg.mod:f")],
                            "reward")
    assert "cannot import module 'no_such_pkg.mod'" in error
    source = _reward_file(tmp_path, "def other(completions):\n    return [0.0] * len(completions)\n")
    error = _one_line_error(capsys, ["train", _train_config(tmp_path, tiny_model_dir, source)], "reward")
    assert "has no attribute 'score'" in error


def test_reward_file_failing_at_import_names_the_file_line_and_exception(tmp_path, capsys, tiny_model_dir):
    source = _reward_file(tmp_path, "import math\n\nTABLE = {}\nLIMIT = TABLE['limit']\n")
    error = _one_line_error(capsys, ["train", _train_config(tmp_path, tiny_model_dir, source)], "reward")
    assert "my_reward.py" in error and "line 4" in error and "KeyError: 'limit'" in error
    source = _reward_file(tmp_path, "def score(completions:\n    return []\n")
    error = _one_line_error(capsys, ["train", _train_config(tmp_path, tiny_model_dir, source)], "reward")
    assert "my_reward.py" in error and "line 1" in error and "SyntaxError" in error


@pytest.mark.parametrize(("setting", "field"), [
    ("training.learning_rate=-1e-5", "training.learning_rate: must be > 0"),
    ("rollout.temperature=-0.5", "rollout.temperature: must be >= 0"),
    ("training.micro_batch_size=0", "training.micro_batch_size: must be >= 1"),
    ("rollout.num_generations=1", "rollout.num_generations: must be >= 2"),
])
def test_out_of_range_numbers_are_one_line_config_errors(tmp_path, capsys, setting, field):
    data = tmp_path / "train.jsonl"
    _write_jsonl(data, [{"prompt": "1+1=", "answer": "2"}])
    error = _one_line_error(capsys, ["train", _config(tmp_path, data), "--set", setting], "config")
    assert field in error


@pytest.mark.parametrize(("body", "expected"), [
    ("def score(completions):\n    return [1.0]\n", "returned 1 scores for 4 completions"),
    ("def score(completions):\n    return 'good'\n", "returned str, expected a list of 4 floats"),
    ("def score(completions):\n    return [float('nan')] * len(completions)\n", "returned NaN"),
    ("import time\ndef score(completions):\n    time.sleep(5)\n    return [0.0] * len(completions)\n",
     "timed out after 0.2 s"),
])
def test_a_reward_failing_during_training_is_one_line_naming_it(tmp_path, capsys, tiny_model_dir, body, expected):
    config = _train_config(tmp_path, tiny_model_dir, _reward_file(tmp_path, body), rewards_timeout_seconds=0.2)
    error = _one_line_error(capsys, ["train", config], "reward")
    assert "reward 'score' failed" in error and expected in error


def test_debug_flag_and_environment_variable_show_the_traceback(tmp_path, capsys, monkeypatch):
    from grpokit.config_schema import ConfigError

    data = tmp_path / "train.jsonl"
    _write_jsonl(data, [{"prompt": "1+1=", "answer": "2"}])
    with pytest.raises(ConfigError, match="learning_rate"):
        main(["--debug", "train", _config(tmp_path, data), "--set", "training.learning_rate=-1"])
    monkeypatch.setenv("GRPOKIT_DEBUG", "1")
    with pytest.raises(ConfigError, match="learning_rate"):
        main(["train", _config(tmp_path, data), "--set", "training.learning_rate=-1"])


def test_os_errors_on_user_paths_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys):
    import grpokit.cli

    def denied(args):
        raise PermissionError(13, "Permission denied", "/runs/locked/metrics.jsonl")

    monkeypatch.setattr(grpokit.cli, "_run", denied)
    error = _one_line_error(capsys, ["presets"], "I/O")
    assert "Permission denied: /runs/locked/metrics.jsonl" in error

    def bug(args):
        raise KeyError("a grpokit bug")

    monkeypatch.setattr(grpokit.cli, "_run", bug)
    with pytest.raises(KeyError):
        main(["presets"])


def test_threads_flag_sets_torch_threads_before_the_command(capsys):
    import torch

    assert main(["--threads", "2", "presets"]) == 0  # the conftest fixture restores the thread count
    assert torch.get_num_threads() == 2
    assert _parser().parse_args(["train", "c.yaml", "--threads", "3"]).threads == 3  # after the command too
    assert _parser().parse_args(["--threads", "3", "train", "c.yaml"]).threads == 3
    _one_line_error(capsys, ["--threads", "0", "presets"], "config")


def test_presets_fit_an_80_column_terminal(capsys, monkeypatch):
    from grpokit.algorithms.presets import PRESETS
    from grpokit.flow.presets import FLOW_PRESETS

    monkeypatch.setenv("COLUMNS", "80")
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert not any("…" in line for line in lines)  # nothing ellipsized
    for name in [*PRESETS, *FLOW_PRESETS]:
        assert any(line.startswith(f"{name}  ") for line in lines), name


def test_a_prompt_longer_than_the_context_is_rejected_before_training(tmp_path, capsys, tiny_model_dir):
    import time

    config = _train_config(tmp_path, tiny_model_dir, "exact_match")
    data = tmp_path / "train.jsonl"
    _write_jsonl(data, [{"prompt": "1+1=", "answer": "2"}, {"prompt": "7" * 400_000 + "+1=", "answer": "0"}])
    started = time.perf_counter()
    error = _one_line_error(capsys, ["train", config], "data")
    assert time.perf_counter() - started < 60  # it hung in step 1 for > 10 minutes before
    # The tiny model's context is 256 positions; 3 go to rollout.max_new_tokens.
    assert "train.jsonl: line 2: column 'prompt': prompt is 400003 tokens, over the limit of 253" in error
    assert "max_position_embeddings 256 - rollout.max_new_tokens 3" in error
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_truncate_prompts_left_trains_and_says_how_many_were_cut(tmp_path, caplog, tiny_model_dir):
    config = _train_config(tmp_path, tiny_model_dir, "exact_match", data={"truncate_prompts": "left"})
    data = tmp_path / "train.jsonl"
    _write_jsonl(data, [{"prompt": "1+1=", "answer": "2"}, {"prompt": "7" * 1000 + "+1=", "answer": "0"}])
    assert main(["train", config]) == 0
    assert "train.jsonl: 1 prompt(s) longer than 253 tokens" in caplog.text and "cut from the left" in caplog.text


def test_two_rewards_with_one_name_and_a_column_named_like_a_reward_argument_are_one_line(
        tmp_path, capsys, tiny_model_dir):
    config = _train_config(tmp_path, tiny_model_dir, "exact_match")
    error = _one_line_error(capsys, ["train", config, "--set", "rewards=[{function: xml_count}, {function: xml_count}]"],
                            "config")
    assert "rewards[1]: a reward named 'xml_count' comes earlier too" in error
    _write_jsonl(tmp_path / "train.jsonl", [{"prompt": "1+1=", "completions": "2"}])
    error = _one_line_error(capsys, ["train", config], "data")
    assert "column 'completions': this name is an argument every reward receives" in error


def test_a_missing_optional_engine_is_a_one_line_environment_error(tmp_path, capsys, tiny_model_dir):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    config = _train_config(tmp_path, tiny_model_dir, "exact_match", rollout={"engine": "vllm_colocate"})
    error = _one_line_error(capsys, ["train", config], "environment")
    assert "this Python has no vllm" in error


def test_a_flow_config_with_a_negative_learning_rate_is_one_line(tmp_path, capsys):
    config = tmp_path / "flow.yaml"
    config.write_text("trainer: flow\nrewards: [{function: length}]\ntraining: {learning_rate: -3e-4}\n")
    error = _one_line_error(capsys, ["train", str(config)], "config")
    assert "training.learning_rate: must be > 0, got -0.0003" in error


def test_the_installed_command_exits_2_with_one_line_and_no_traceback(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    data = tmp_path / "train.jsonl"
    _write_jsonl(data, [{"prompt": "1+1=", "answer": "2"}])
    source = str(Path(__file__).resolve().parents[1] / "src")
    result = subprocess.run([sys.executable, "-m", "grpokit", "train", _config(tmp_path, data)], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHONPATH": source})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"grpokit: model error: model directory {tmp_path / 'no-model-needed'} not found; give a directory with "
        "config.json (save_pretrained), a hub id, or one of ['smollm2-135m-instruct-gguf']"]
