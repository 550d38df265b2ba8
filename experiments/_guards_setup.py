"""Shared set-up of `reward_hacking.py` and `entropy_collapse.py`: the demo's CPU-sized recipe.

A 0.2M-parameter Qwen2 built from a config with a character tokenizer, two-digit additions split
into training and held-out problems, and a supervised warm-up stopped at ~30% *sampled* accuracy
(so GRPO groups carry a signal). The warmed-up weights are cached under `outputs/warmup/` keyed by
seed and recipe, so the second experiment (and a rerun) skips the warm-up.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

OUTPUTS = Path(__file__).resolve().parents[1] / "outputs"


@dataclass(frozen=True)
class TinyArithmetic:
    max_operand: int = 99
    heldout: int = 200  # gold/held-out problems, never trained on
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    warmup_max_steps: int = 3000
    warmup_batch_size: int = 64
    warmup_learning_rate: float = 3e-3
    warmup_target_accuracy: float = 30.0  # percent, sampled at T=1 on a probe of training problems
    warmup_check_every: int = 25
    warmup_probe_size: int = 256


@dataclass
class Setup:
    policy: object
    train_data: object
    heldout_data: object
    warmup_steps: int
    warmup_cached: bool


def build(seed: int, recipe: TinyArithmetic = TinyArithmetic()) -> Setup:
    """Model, data and a warmed-up policy for `seed` (from the cache when present)."""
    from grpokit.data import PromptDataset
    from grpokit.demo import build_arithmetic_policy
    from grpokit.tasks.arithmetic import arithmetic_split

    torch.set_num_threads(1)  # tiny matmuls; and OpenMP spinning is 30x slower on a shared CPU
    torch.manual_seed(seed)
    split = arithmetic_split("+", recipe.max_operand, heldout=recipe.heldout, seed=seed)
    train_data = PromptDataset.from_records(split.train, source="arithmetic:train")
    heldout_data = PromptDataset.from_records(split.heldout, source="arithmetic:heldout")
    policy = build_arithmetic_policy(
        seed,
        hidden_size=recipe.hidden_size,
        num_layers=recipe.num_layers,
        num_heads=recipe.num_heads,
        intermediate_size=recipe.intermediate_size,
    )
    model = policy.model

    key = hashlib.sha256(json.dumps([asdict(recipe), seed], sort_keys=True).encode()).hexdigest()[:12]
    cache = OUTPUTS / "warmup" / f"seed{seed}-{key}.pt"
    if cache.is_file():
        saved = torch.load(cache, weights_only=True)
        model.load_state_dict(saved["state_dict"])
        return Setup(policy, train_data, heldout_data, int(saved["warmup_steps"]), warmup_cached=True)
    steps = _warm_up(policy, split.train, recipe, seed)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "warmup_steps": steps}, cache)
    return Setup(policy, train_data, heldout_data, steps, warmup_cached=False)


def _warm_up(policy, train_records, recipe: TinyArithmetic, seed: int) -> int:
    from grpokit.data import PromptDataset
    from grpokit.rewards import RewardRunner, load_reward
    from grpokit.rollout.inprocess import InProcessEngine
    from grpokit.trainers.evaluation import EvalSettings, evaluate
    from grpokit.trainers.sft import supervised_warmup

    probe_data = PromptDataset.from_records(train_records[: recipe.warmup_probe_size], source="probe")
    engine = InProcessEngine(policy.model, policy.tokenizer)
    exact = RewardRunner([load_reward("exact_match")])
    probe = EvalSettings(
        num_prompts=len(probe_data), samples_per_prompt=1, greedy=False, max_new_tokens=5, seed=seed + 1
    )

    def reached_target(step: int) -> bool:
        accuracy = evaluate(engine, policy.tokenizer, probe_data, exact, probe)["eval/mean@1"]
        return accuracy >= recipe.warmup_target_accuracy

    pairs = [(r["prompt"], r["answer"]) for r in train_records]
    losses = supervised_warmup(
        policy.model,
        policy.tokenizer,
        pairs,
        steps=recipe.warmup_max_steps,
        batch_size=recipe.warmup_batch_size,
        learning_rate=recipe.warmup_learning_rate,
        seed=seed,
        stop_check=reached_target,
        check_every=recipe.warmup_check_every,
    )
    return len(losses)


def grpo_config(
    run_dir: Path,
    seed: int,
    *,
    steps: int,
    learning_rate: float,
    max_new_tokens: int,
    eval_every: int,
    overrides: dict | None = None,
    prompts_per_step: int = 32,
    num_generations: int = 8,
    **sections,
) -> dict:
    """The trainer config of one GRPO arm (held-out evaluation every `eval_every` steps)."""
    config = {
        "model": {"name_or_path": "<built in memory>"},
        "data": {"path": "<arithmetic task>"},
        "rewards": [{"function": "exact_match"}],
        "algorithm": {
            "preset": "grpo",
            "overrides": {"beta": 0.0, "aggregation": "token_mean", **(overrides or {})},
        },
        "rollout": {
            "prompts_per_step": prompts_per_step,
            "num_generations": num_generations,
            "max_new_tokens": max_new_tokens,
        },
        "training": {
            "max_steps": steps,
            "learning_rate": learning_rate,
            "micro_batch_size": prompts_per_step * num_generations,
            "seed": seed,
        },
        "eval": {"num_prompts": 200, "samples_per_prompt": 4, "greedy": False, "every_steps": eval_every},
        "logging": {"run_dir": str(run_dir), "progress": False, "tensorboard": False, "plot": True},
        "checkpoint": {"resume": False, "keep_last": 1},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    return config


def fresh_run_dir(path: Path) -> Path:
    """An empty run directory (a rerun must not append to an old metrics.jsonl)."""
    import shutil

    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path
