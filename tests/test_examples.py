"""The example configs validate, and the CLI trains from examples/arithmetic.yaml on a CPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from grpokit.cli import main
from grpokit.trainers.lm_config import load_lm_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
YAML_FILES = sorted(EXAMPLES.glob("*.yaml"))


def _example_module(name: str):
    spec = importlib.util.spec_from_file_location(f"grpokit_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_examples_directory_holds_both_documented_configs():
    names = {path.name for path in YAML_FILES}
    assert {"arithmetic.yaml", "qwen2.5-math-lora.yaml"} <= names


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda path: path.name)
def test_every_example_config_validates_against_the_schema(path):
    config = load_lm_config(path)
    assert config.rewards and config.model.name_or_path and (config.data.path or config.data.reasoning_gym)


def test_qwen_example_uses_lora_math_verify_and_the_format_rewards():
    config = load_lm_config(EXAMPLES / "qwen2.5-math-lora.yaml")
    functions = {reward.function for reward in config.rewards}
    assert config.model.lora is not None and config.model.lora.r == 16
    assert {"math_verify", "xml_format_soft", "xml_format_strict", "xml_count"} <= functions
    assert config.eval.reward == "math_verify"


def test_gsm8k_row_takes_the_number_after_the_last_hashes_without_separators():
    row = _example_module("gsm8k_to_jsonl").gsm8k_row("How many?", "3 + 4 = 7 #### 1,234")
    assert row["answer"] == "1234"
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    assert "<answer>" in row["prompt"][0]["content"]


def test_arithmetic_data_writer_holds_out_200_problems_with_exact_sums(tmp_path):
    train_path, eval_path = _example_module("make_arithmetic_data").write_arithmetic_data(tmp_path)
    train = [json.loads(line) for line in train_path.read_text().splitlines()]
    heldout = [json.loads(line) for line in eval_path.read_text().splitlines()]
    assert (len(train), len(heldout)) == (100 * 100 - 200, 200)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in heldout}
    a, b = heldout[0]["prompt"].removesuffix("=").split("+")
    assert heldout[0]["answer"] == str(int(a) + int(b))


def test_arithmetic_data_writer_defaults_to_where_the_example_config_reads():
    generator = _example_module("make_arithmetic_data")
    config = load_lm_config(EXAMPLES / "arithmetic.yaml")
    # Both relative to the current directory, whichever it is (not to the script's location).
    assert not generator.OUTPUT.is_absolute()
    assert Path(config.model.name_or_path) == generator.OUTPUT / "tiny-model"
    assert Path(config.data.path) == generator.OUTPUT / "data" / "arithmetic_train.jsonl"
    assert Path(config.data.eval_path) == generator.OUTPUT / "data" / "arithmetic_eval.jsonl"


def test_cli_trains_the_arithmetic_example_for_two_steps_and_checkpoints(tmp_path, monkeypatch):
    generator = _example_module("make_arithmetic_data")
    train_path, eval_path = generator.write_arithmetic_data(tmp_path / "data")
    model_dir = generator.make_tiny_model(tmp_path / "model", train_path, warmup_steps=0)
    run_dir = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "train",
            str(EXAMPLES / "arithmetic.yaml"),
            "--set",
            f"model.name_or_path={model_dir}",
            "--set",
            f"data.path={train_path}",
            "--set",
            f"data.eval_path={eval_path}",
            "--set",
            f"logging.run_dir={run_dir}",
            "--set",
            "logging.progress=false",
            "--set",
            "logging.plot=false",
            "--set",
            "training.max_steps=2",
            "--set",
            "rollout.prompts_per_step=4",
            "--set",
            "rollout.num_generations=4",
            "--set",
            "eval.num_prompts=8",
            "--set",
            "eval.samples_per_prompt=1",
            "--set",
            "checkpoint.every_steps=0",
        ]
    )
    assert code == 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in records) == 2
    assert any("reward/mean" in r for r in records)
    assert (run_dir / "checkpoints" / "step-000002").is_dir()
