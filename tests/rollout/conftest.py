from __future__ import annotations

import functools
from pathlib import Path

import pytest


def addition_records(limit: int = 10) -> list[dict]:
    return [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(limit) for b in range(limit)]


def _make_vllm_trainer(build_model, tmp_path, engine: str, model_dir: Path, *, server_url: str | None = None,
                       policy_seed: int | None = None, vllm_model: Path | None = None, steps: int = 2,
                       training: dict | None = None, reward: str = "exact_match"):
    """A 2-step GRPO trainer on the tiny model whose rollouts come from a vLLM engine (`training`: more
    training-section settings)."""
    from grpokit.data import PromptDataset
    from grpokit.trainers.lm_build import build_trainer
    from grpokit.trainers.lm_config import load_lm_config

    if policy_seed is not None:  # a policy unlike the model vLLM loaded
        model_dir = build_model(tmp_path / f"policy_seed_{policy_seed}", seed=policy_seed)
    rollout = {"engine": engine, "prompts_per_step": 4, "num_generations": 4, "max_new_tokens": 6,
               "vllm": {"dtype": "float32", "kv_cache_gib": 1, "max_model_len": 256}}
    if server_url is not None:
        rollout["vllm"]["server_url"] = server_url
    if vllm_model is not None:  # colocated vLLM loads this instead of the policy's checkpoint
        rollout["vllm"]["model"] = str(vllm_model)
    config = load_lm_config({
        "model": {"name_or_path": str(model_dir)},
        "data": {"path": "unused-when-data-is-passed"},
        "rewards": [{"function": reward}],
        "algorithm": {"preset": "grpo", "overrides": {"beta": 0.0}},
        "rollout": rollout,
        "training": {"max_steps": steps, "micro_batch_size": 8, "learning_rate": 1e-2, **(training or {})},
        "eval": {"every_steps": 0},
        "logging": {"run_dir": str(tmp_path / "run"), "progress": False, "tensorboard": False, "plot": False},
    })
    data = PromptDataset.from_records(addition_records())
    return build_trainer(config, train_data=data)


@pytest.fixture
def make_vllm_trainer(build_vllm_test_model):
    """`make_vllm_trainer(tmp_path, engine, model_dir, server_url=, policy_seed=, vllm_model=)` → LMTrainer."""
    return functools.partial(_make_vllm_trainer, build_vllm_test_model)


def _trainer_logprobs(model, batch, temperature: float):
    """The trainer's own log-probs of a rollout's sampled tokens ([B, T]), without gradients."""
    import torch

    from grpokit.models.logprobs import sequence_logprobs

    input_ids, attention_mask = batch.model_inputs()
    with torch.no_grad():
        return sequence_logprobs(model, input_ids, attention_mask, batch.completion_ids.shape[1],
                                 temperature=temperature)[0]


@pytest.fixture
def trainer_logprobs():
    """`trainer_logprobs(model, batch, temperature)` → [B, T] log-probs by the trainer's forward."""
    return _trainer_logprobs


@pytest.fixture
def step_and_sync():
    """`step_and_sync(engine, model, prompts)` → (moved, mismatch_after).

    Samples completions with the engine, scores them (fixed completions), takes one real optimizer
    step that raises their likelihood, `sync_weights`, scores them again. `moved`: the largest change
    of the engine's log-probs; `mismatch_after`: the largest |engine − trainer| after the sync.
    """
    import torch

    from grpokit.models.logprobs import sequence_logprobs
    from grpokit.rollout.types import SamplingParams

    def run(engine, model, prompts):
        batch = engine.generate(prompts, 2, SamplingParams(max_new_tokens=10, temperature=1.0, seed=1))
        lengths = batch.completion_mask.sum(1).tolist()
        prompt_ids = [ids[mask.bool()].tolist() for ids, mask in zip(batch.prompt_ids, batch.prompt_mask)]
        completions = [ids[:n].tolist() for ids, n in zip(batch.completion_ids, lengths)]
        before = engine.score(prompt_ids, completions)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
        input_ids, attention_mask = batch.model_inputs()
        logp, _ = sequence_logprobs(model, input_ids, attention_mask, batch.completion_ids.shape[1])
        (-(logp * batch.completion_mask).sum()).backward()
        optimizer.step()
        engine.sync_weights(model)
        after = engine.score(prompt_ids, completions)
        trainer_after = _trainer_logprobs(model, batch, 1.0)
        moved = max(abs(a - b) for row_a, row_b in zip(after, before) for a, b in zip(row_a, row_b))
        mismatch = max(float((torch.tensor(values) - trainer_after[row, : lengths[row]]).abs().max())
                       for row, values in enumerate(after))
        return moved, mismatch

    return run


@pytest.fixture
def length_reward_run():
    """`length_reward_run(directory, model_dir, **rollout)` → config.yaml for 3 steps of 4 prompts × 4 with a
    dense reward (completion length near 3 chars), so groups differ and the weights move."""
    import json

    import yaml

    def write(directory: Path, model_dir: Path, **rollout) -> Path:
        (directory / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in addition_records(6)))
        path = directory / "config.yaml"
        path.write_text(yaml.safe_dump({
            "model": {"name_or_path": str(model_dir)},
            "data": {"path": str(directory / "train.jsonl")},
            "rewards": [{"function": "length", "kwargs": {"target_length": 3}}],
            "algorithm": {"preset": "grpo", "overrides": {"beta": 0.0}},
            "rollout": {"prompts_per_step": 4, "num_generations": 4, "max_new_tokens": 6, **rollout},
            "training": {"max_steps": 3, "micro_batch_size": 4, "learning_rate": 1e-2, "seed": 3},
            "logging": {"run_dir": "unset", "progress": False, "tensorboard": False, "plot": False},
        }))
        return path

    return write
