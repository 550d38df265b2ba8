"""`grpokit train` with a reasoning-gym task and the calculator: real runs through the CLI on a tiny model."""

from __future__ import annotations

import pytest
import torch
import yaml

from grpokit.agents import ToolEnvironment
from grpokit.monitoring.samples import read_samples


class NudgingEnvironment(ToolEnvironment):
    """The calculator environment, but a turn without a call gets a user nudge instead of ending the episode."""

    def step(self, assistant_message):
        observations, reward, done = super().step(assistant_message)
        if not observations and not done:
            return [{"role": "user", "content": "Use the calculator."}], None, False
        return observations, reward, done


@pytest.fixture
def agent_config(tmp_path, make_tool_tokenizer, tool_model):
    model_dir = tmp_path / "model"
    tokenizer = make_tool_tokenizer()
    model = tool_model(tokenizer)
    # A random tiny model rarely samples <eos>; letters end its turns too (generation-config eos ids are stop
    # tokens of the engine), so its episodes have several turns with messages inserted between them.
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, *tokenizer("aeiou")["input_ids"]]
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    def write(run_dir, max_steps: int, environment: str | None = None) -> str:
        config = {
            "model": {"name_or_path": str(model_dir)},
            "data": {"reasoning_gym": {"task": "basic_arithmetic", "size": 16, "eval_size": 4, "seed": 0,
                                       "config": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2},
                                       "instruction": ""}},
            "rewards": [{"function": "reasoning_gym"}],
            "algorithm": {"preset": "grpo", "overrides": {"beta": 0.0}},
            "rollout": {"prompts_per_step": 2, "num_generations": 2, "max_new_tokens": 12,
                        "agent": {"tools": ["calculator"], "max_turns": 3, "max_episode_tokens": 60,
                                  "environment": environment}},
            "training": {"max_steps": max_steps, "micro_batch_size": 4, "learning_rate": 1e-3, "seed": 0},
            "eval": {"num_prompts": 2, "samples_per_prompt": 1},
            "checkpoint": {"every_steps": 1},
            "logging": {"run_dir": str(run_dir), "progress": False, "tensorboard": False, "plot": False,
                        "samples_every": 1, "samples_per_log": 2},
        }
        path = tmp_path / f"config_{max_steps}.yaml"
        path.write_text(yaml.safe_dump(config))
        return str(path)

    return write


def _train(config: str) -> None:
    from grpokit.cli import main

    assert main(["train", config]) in (0, None)


def _episodes(run_dir, step: int) -> list[dict]:
    return [r for r in read_samples(run_dir) if r["kind"] == "train" and r["step"] == step]


def test_two_steps_through_the_cli_log_whole_episodes(agent_config, tmp_path):
    import json

    run_dir = tmp_path / "run"
    _train(agent_config(run_dir, 2))
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trained = [m for m in metrics if "agent/turns_mean" in m]
    assert len(trained) == 2
    for m in trained:
        assert 1.0 <= m["agent/turns_mean"] <= 3.0
        assert m["agent/tokens_policy"] > 0 and "agent/tool_calls_malformed" in m
    records = _episodes(run_dir, 1)
    assert len(records) == 4  # 2 groups × 2 episodes
    for record in records:
        episode = record["episode"]
        assert episode["messages"][0] == {"role": "user", "content": episode["messages"][0]["content"]}
        assert episode["messages"][1]["role"] == "assistant"
        assert record["completion"] == [m for m in episode["messages"] if m["role"] == "assistant"][-1]["content"]
        assert "reasoning_gym" in record["rewards"]
    evals = [r for r in read_samples(run_dir) if r["kind"] == "eval"]
    assert evals and all("episode" in r for r in evals)
    assert any("eval/greedy_accuracy" in m for m in metrics)
    from grpokit.report import write_report

    page = write_report(run_dir).read_text()
    assert "[assistant] " in page and "(episode end: " in page  # the report shows episodes by role


def _untimed(episode: dict) -> dict:
    return {k: v for k, v in episode.items() if not k.endswith("_seconds")}  # wall-clock times differ


def test_resume_mid_run_gives_the_same_episodes(agent_config, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    nudging = "tests.agents.test_agent_training:NudgingEnvironment"
    _train(agent_config(straight, 3, nudging))
    _train(agent_config(resumed, 2, nudging))
    _train(agent_config(resumed, 3, nudging))  # resumes from the step-2 checkpoint
    multi_turn = [r["episode"] for step in (1, 2, 3) for r in _episodes(straight, step) if r["episode"]["turns"] > 1]
    assert multi_turn and any(m["content"] == "Use the calculator." for e in multi_turn for m in e["messages"])
    for step in (1, 2, 3):
        assert [_untimed(r["episode"]) for r in _episodes(resumed, step)] == [
            _untimed(r["episode"]) for r in _episodes(straight, step)]
        assert [r["advantage"] for r in _episodes(resumed, step)] == [r["advantage"] for r in _episodes(straight, step)]


def test_grpokit_eval_scores_the_generated_heldout_set(agent_config, tmp_path, capsys):
    from grpokit.cli import main

    run_dir = tmp_path / "run"
    config = agent_config(run_dir, 1)
    _train(config)
    capsys.readouterr()
    assert main(["eval", config, "--show", "1"]) in (0, None)
    out = capsys.readouterr().out
    assert "turns, end: " in out and "  [assistant] " in out  # the shown example is the whole episode
    assert "held-out: 2 prompts of reasoning_gym:basic_arithmetic (held-out)" in out
    assert "eval/greedy_accuracy" in out


def test_the_trainers_loss_mask_is_the_policy_token_mask(tmp_path, make_tool_tokenizer, tool_model):
    from grpokit.models.loading import Policy
    from grpokit.trainers.lm_build import build_trainer
    from grpokit.trainers.lm_config import load_lm_config

    tokenizer = make_tool_tokenizer()
    model = tool_model(tokenizer)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, *tokenizer("aeiou")["input_ids"]]
    config = load_lm_config({
        "model": {"name_or_path": "in memory"},
        "data": {"reasoning_gym": {"task": "basic_arithmetic", "size": 8, "eval_size": 0}},
        "rewards": [{"function": "reasoning_gym"}],
        "algorithm": {"preset": "grpo", "overrides": {"beta": 0.0}},
        "rollout": {"prompts_per_step": 2, "num_generations": 3, "max_new_tokens": 10,
                    "agent": {"tools": ["calculator"], "max_turns": 3, "max_episode_tokens": 50,
                              "environment": "tests.agents.test_agent_training:NudgingEnvironment"}},
        "training": {"max_steps": 1},
        "logging": {"run_dir": str(tmp_path / "run"), "progress": False, "tensorboard": False, "plot": False},
    })
    trainer = build_trainer(config, policy=Policy(model, tokenizer, is_lora=False))
    scored = trainer.sample(0)
    batch = trainer.prepare(scored)
    rollout = scored.rollout
    assert (rollout.completion_mask.sum() > rollout.policy_mask.sum())  # tool / nudge tokens were inserted
    assert torch.equal(batch.loss_mask, rollout.policy_mask)  # every reward valid: exactly the sampled tokens
    assert torch.equal(batch.completion_mask, rollout.completion_mask)  # ... while all tokens are attended to
