from __future__ import annotations

import pytest

from grpokit.data import PromptDataset
from grpokit.models import build_char_tokenizer, build_tiny_causal_lm
from grpokit.models.loading import Policy


def addition_records(limit: int = 10) -> list[dict]:
    return [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(limit) for b in range(limit)]


def tiny_policy(seed: int = 0) -> Policy:
    tokenizer = build_char_tokenizer()
    model = build_tiny_causal_lm(len(tokenizer), hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                 intermediate_size=64, seed=seed)
    return Policy(model, tokenizer, is_lora=False)


def base_config(run_dir, **sections) -> dict:
    config = {
        "model": {"name_or_path": "unused-when-a-policy-is-passed"},
        "data": {"path": "unused-when-data-is-passed"},
        "rewards": [{"function": "exact_match"}],
        "algorithm": {"preset": "grpo", "overrides": {"beta": 0.0}},
        "rollout": {"prompts_per_step": 4, "num_generations": 4, "max_new_tokens": 4},
        "training": {"max_steps": 2, "micro_batch_size": 8, "learning_rate": 1e-3},
        "eval": {"num_prompts": 8, "samples_per_prompt": 2},
        "logging": {"run_dir": str(run_dir), "progress": False, "tensorboard": False, "plot": False},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config


def _make_trainer(tmp_path, policy=None, rewards=None, **sections):
    from grpokit.rewards import RewardRunner, load_reward
    from grpokit.trainers.lm_build import build_trainer
    from grpokit.trainers.lm_config import load_lm_config

    config = load_lm_config(base_config(tmp_path / "run", **sections))
    data = PromptDataset.from_records(addition_records())
    runner = rewards or RewardRunner([load_reward("exact_match")])
    return build_trainer(config, policy=policy or tiny_policy(), train_data=data, eval_data=data,
                         reward_runner=runner)


@pytest.fixture
def make_trainer():
    """`make_trainer(tmp_path, policy=None, rewards=None, **config_sections)` → a ready LMTrainer."""
    return _make_trainer


@pytest.fixture(scope="session")
def make_policy():
    return tiny_policy
