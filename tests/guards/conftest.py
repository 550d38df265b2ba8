from __future__ import annotations

import pytest

from grpokit.data import PromptDataset
from grpokit.models import build_char_tokenizer, build_tiny_causal_lm
from grpokit.models.loading import Policy
from grpokit.rewards import RewardRunner, load_reward


def _tiny_policy(seed: int = 0) -> Policy:
    tokenizer = build_char_tokenizer()
    model = build_tiny_causal_lm(
        len(tokenizer),
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        intermediate_size=64,
        seed=seed,
    )
    return Policy(model, tokenizer, is_lora=False)


def _digits(completions, **_):
    return [float(sum(ch.isdigit() for ch in c)) for c in completions]


def guard_config(run_dir, **sections) -> dict:
    """A 2-step run on 16 additions, evaluating every step, no plots unless asked."""
    config = {
        "model": {"name_or_path": "unused-when-a-policy-is-passed"},
        "data": {"path": "unused-when-data-is-passed"},
        "rewards": [{"function": "exact_match"}],
        "algorithm": {"preset": "grpo", "overrides": {"beta": 0.0}},
        "rollout": {"prompts_per_step": 4, "num_generations": 4, "max_new_tokens": 3},
        "training": {"max_steps": 2, "micro_batch_size": 16, "learning_rate": 1e-2},
        "eval": {"num_prompts": 4, "samples_per_prompt": 0, "greedy": False, "every_steps": 1},
        "logging": {"run_dir": str(run_dir), "progress": False, "tensorboard": False, "plot": False},
        "checkpoint": {"resume": False},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config


@pytest.fixture
def make_guarded_trainer():
    """`make_guarded_trainer(run_dir, callbacks=None, **config_sections)` → an LMTrainer on additions."""
    from grpokit.trainers.lm_build import build_trainer
    from grpokit.trainers.lm_config import load_lm_config

    def make(run_dir, callbacks=None, **sections):
        config = load_lm_config(guard_config(run_dir, **sections))
        data = PromptDataset.from_records(
            [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(4) for b in range(4)]
        )
        # The proxy: exact match plus a digit count, so that an untrained model's groups differ and it learns.
        proxy = RewardRunner([load_reward("exact_match"), load_reward(_digits, name="digits", weight=0.1)])
        return build_trainer(
            config,
            policy=_tiny_policy(),
            train_data=data,
            eval_data=data,
            reward_runner=proxy,
            callbacks=callbacks,
        )

    return make
