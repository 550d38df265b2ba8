"""Tool use learned by GRPO: multi-digit products with the calculator, on a CPU.

Task: reasoning-gym `basic_arithmetic` restricted to products of two 3-digit numbers ("Calculate
469 * 881."), scored by the task's own `score_answer` on the last `<answer>…</answer>` (built-in
reward `reasoning_gym`). A small model cannot multiply 3-digit numbers in its head; with the
`calculator` tool (Hermes `<tool_call>{json}</tool_call>`) it only has to copy numbers.

Model: a 0.34M-parameter char-level Qwen2 built from a config, not SmolLM2-135M-Instruct. Probed
once while building this experiment (Hermes tool prompt via `rollout.agent.chat_template: hermes`,
4 products × 4 sampled episodes, T=0.7), SmolLM2-135M wrote no well-formed call at all — prose and
pseudo-code about "the calculator" — and sampling those 16 episodes took 27 s on the shared CPU,
so a supervised warm-up of SmolLM2 plus enough GRPO steps of 128 episodes does not fit 40 minutes.
The tiny model is warmed up by supervised demonstrations of BOTH behaviours — `warmup_tool_share`
of them call the calculator and copy its result, the rest answer directly (the true product, which
the model cannot compute) — so before GRPO it calls the tool in about that share of its episodes.
GRPO (multi-turn episodes, tool tokens in the sequence with loss weight 0) then has to find out
that calling the tool pays.

Measured on held-out problems (never in training), sampled at T=1, `samples_per_prompt` episodes
each, before and after GRPO: accuracy (percent of episodes scored 1) and valid calls (percent of
episodes with at least one well-formed call). tool_tokens_in_loss counts, over every update of the
run, tokens the loss could touch (loss mask 1) that the policy did not sample — it must be 0.

Last line:
`tool_use: acc_before=A0 acc_after=A1 valid_calls_before=V0 valid_calls_after=V1 tool_tokens_in_loss=Z minutes=M`
"""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

OUTPUTS = Path(__file__).resolve().parents[1] / "outputs"

# A compact tool-aware chat template for the char tokenizer: assistant turns close with <eos> (the
# token the policy samples to stop), other messages with a closing tag.
CHAR_TOOL_TEMPLATE = (
    "{% if tools %}<tools>{% for t in tools %}{{ t.function.name }}{% endfor %}</tools>{{ '\\n' }}{% endif %}"
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}"
    "{% if m.role == 'assistant' %}<eos>{% else %}</{{ m.role }}>{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
CALL = '<tool_call>{{"name": "calculator", "arguments": {{"expression": "{}"}}}}</tool_call>'


@dataclass(frozen=True)
class Settings:
    seed: int = 0
    train_size: int = 4000
    heldout: int = 200
    task_config: tuple = (("min_terms", 2), ("max_terms", 2), ("min_digits", 3), ("max_digits", 3),
                          ("operators", ("*",)), ("allow_parentheses", False), ("allow_negation", False))
    # model: char-level Qwen2, ~0.4M parameters
    hidden_size: int = 96
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 256
    # supervised warm-up on demonstrations of both behaviours
    warmup_tool_share: float = 0.3
    warmup_steps: int = 700
    warmup_batch_size: int = 32
    warmup_learning_rate: float = 3e-3
    # GRPO over multi-turn episodes
    grpo_steps: int = 150
    prompts_per_step: int = 16
    num_generations: int = 8
    learning_rate: float = 5e-4
    max_new_tokens: int = 96  # per turn: a call is ~80 tokens
    max_turns: int = 3
    max_episode_tokens: int = 224
    samples_per_prompt: int = 2  # held-out episodes per prompt at each measurement


def build_policy(s: Settings):
    from grpokit.models import build_char_tokenizer, build_tiny_causal_lm
    from grpokit.models.loading import Policy

    tokenizer = build_char_tokenizer(chat_template=CHAR_TOOL_TEMPLATE)
    model = build_tiny_causal_lm(len(tokenizer), hidden_size=s.hidden_size, num_layers=s.num_layers,
                                 num_heads=s.num_heads, num_kv_heads=s.num_heads, intermediate_size=s.intermediate_size,
                                 max_position_embeddings=320, seed=s.seed)
    return Policy(model, tokenizer, is_lora=False)


def grpo_config(s: Settings, run_dir: Path) -> dict:
    return {
        "model": {"name_or_path": "<built in memory>"},
        "data": {"path": "<reasoning-gym rows built in memory>"},
        "rewards": [{"function": "reasoning_gym"}],
        "algorithm": {"preset": "grpo", "overrides": {"beta": 0.0, "aggregation": "token_mean"}},
        "rollout": {"prompts_per_step": s.prompts_per_step, "num_generations": s.num_generations,
                    "max_new_tokens": s.max_new_tokens,
                    "agent": {"tools": ["calculator"], "max_turns": s.max_turns,
                              "max_episode_tokens": s.max_episode_tokens}},
        "training": {"max_steps": s.grpo_steps, "learning_rate": s.learning_rate, "seed": s.seed,
                     "micro_batch_size": 32},
        "logging": {"run_dir": str(run_dir), "progress": False, "tensorboard": False, "plot": False,
                    "samples_every": 20},
        "checkpoint": {"resume": False},
    }


# ----------------------------------------------------------------------------- warm-up

def demonstration(template, tokenizer, row: dict, use_tool: bool) -> tuple[list[int], list[int]]:
    """(ids, loss mask) of one demonstrated episode, built token by token as the episode engine builds it:
    the tool result and the headers around it are inserted by the chat template and carry no loss."""
    from grpokit.agents import calculator

    eos = tokenizer.eos_token_id
    _, prompt = template.prompt_ids([{"role": "user", "content": row["prompt"]}])
    ids, mask = list(prompt), [0] * len(prompt)

    def turn(text: str) -> None:
        tokens = template.encode(text) + [eos]
        ids.extend(tokens)
        mask.extend([1] * len(tokens))

    if use_tool:
        expression = row["reasoning_gym_entry"]["metadata"]["expression"]
        turn(CALL.format(expression))
        result = [{"role": "tool", "name": "calculator", "content": calculator(expression)}]
        inserted = template.encode(template.inserted_text(result, tokenizer.decode([eos])))
        ids.extend(inserted)
        mask.extend([0] * len(inserted))
    turn(f"<answer>{row['answer']}</answer>")
    return ids, mask


def warm_up(trainer, rows: list[dict], s: Settings) -> float:
    """Supervised steps on demonstrations; returns the last loss."""
    from grpokit.trainers.sft import completion_cross_entropy

    rng = random.Random(s.seed)
    tokenizer, template = trainer.policy.tokenizer, trainer.agent.template
    model = trainer.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.warmup_learning_rate, weight_decay=0.0)
    loss = torch.tensor(0.0)
    for _ in range(s.warmup_steps):
        batch = [demonstration(template, tokenizer, rows[rng.randrange(len(rows))],
                               rng.random() < s.warmup_tool_share) for _ in range(s.warmup_batch_size)]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        loss_mask = torch.zeros((len(batch), width))
        for i, (ids, mask) in enumerate(batch):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention[i, : len(ids)] = 1
            loss_mask[i, : len(ids)] = torch.tensor(mask, dtype=torch.float32)
        model.train()
        loss = completion_cross_entropy(model, input_ids, attention, loss_mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return float(loss.detach())


# ----------------------------------------------------------------------------- measurement

def measure(trainer, heldout: list[dict], s: Settings, seed: int) -> tuple[float, float]:
    """(accuracy %, episodes with a well-formed call %) of sampled held-out episodes."""
    from grpokit.rollout.types import SamplingParams

    sampling = SamplingParams(max_new_tokens=s.max_new_tokens, temperature=1.0, seed=seed)
    rollout = trainer.agent.generate_episodes(heldout, s.samples_per_prompt, sampling)
    columns = {"reasoning_gym_entry": [row["reasoning_gym_entry"] for row in heldout
                                       for _ in range(s.samples_per_prompt)]}
    scores = trainer.reward_runner.score(prompts=rollout.prompts, completions=rollout.completions,
                                         group_ids=rollout.group_ids.tolist(), columns=columns).matrix[:, 0]
    accuracy = 100.0 * float((torch.nan_to_num(scores, nan=0.0) > 0.5).double().mean())
    valid = 100.0 * sum(t.tool_stats.valid > 0 for t in rollout.trajectories) / len(rollout.trajectories)
    return accuracy, valid


class PolicyTokenAudit:
    """Wraps `trainer.prepare`: counts loss-mask tokens that the policy did not sample (must stay 0)."""

    def __init__(self, trainer):
        self.tool_tokens_in_loss = 0
        self.tool_tokens_seen = 0
        prepare = trainer.prepare

        def audited(scored):
            batch = prepare(scored)
            inserted = scored.rollout.completion_mask.bool() & ~scored.rollout.policy_tokens.bool()
            self.tool_tokens_seen += int(inserted.sum())
            self.tool_tokens_in_loss += int((batch.loss_mask.bool() & inserted).sum())
            return batch

        trainer.prepare = audited


def main(s: Settings | None = None) -> None:
    from grpokit.data import PromptDataset
    from grpokit.tasks.reasoning_gym import TaskSpec, train_and_heldout
    from grpokit.trainers.lm_build import build_trainer
    from grpokit.trainers.lm_config import load_lm_config

    s = s or Settings()
    started = time.perf_counter()
    torch.set_num_threads(1)  # tiny matmuls: threads cost more than they give (see grpokit.demo)
    torch.manual_seed(s.seed)
    run_dir = OUTPUTS / "tool_use"
    if run_dir.exists():
        shutil.rmtree(run_dir)

    task = TaskSpec("basic_arithmetic", config={k: list(v) if isinstance(v, tuple) else v for k, v in s.task_config})
    train_rows, heldout = train_and_heldout([task], size=s.train_size, eval_size=s.heldout, seed=s.seed,
                                            instruction="")
    policy = build_policy(s)
    parameters = sum(p.numel() for p in policy.model.parameters())
    print(f"tool_use: {len(train_rows)} training and {len(heldout)} held-out products; char Qwen2 with "
          f"{parameters / 1e6:.2f}M parameters", flush=True)
    trainer = build_trainer(load_lm_config(grpo_config(s, run_dir)), policy=policy,
                            train_data=PromptDataset.from_records(train_rows, source="reasoning_gym:products"))

    loss = warm_up(trainer, train_rows, s)
    acc_before, valid_before = measure(trainer, heldout, s, seed=s.seed + 101)
    print(f"after the warm-up ({s.warmup_steps} steps, loss {loss:.3f}): held-out accuracy {acc_before:.1f}%, "
          f"episodes with a valid call {valid_before:.1f}% ({time.perf_counter() - started:.0f} s)", flush=True)

    audit = PolicyTokenAudit(trainer)
    trainer.train()
    acc_after, valid_after = measure(trainer, heldout, s, seed=s.seed + 101)
    minutes = (time.perf_counter() - started) / 60
    print(f"after {s.grpo_steps} GRPO steps: held-out accuracy {acc_after:.1f}%, episodes with a valid call "
          f"{valid_after:.1f}%; tool tokens in the sequences {audit.tool_tokens_seen}, in the loss "
          f"{audit.tool_tokens_in_loss}; metrics in {run_dir / 'metrics.jsonl'}", flush=True)
    print(f"tool_use: acc_before={acc_before:.1f} acc_after={acc_after:.1f} valid_calls_before={valid_before:.1f} "
          f"valid_calls_after={valid_after:.1f} tool_tokens_in_loss={audit.tool_tokens_in_loss} "
          f"minutes={minutes:.1f}", flush=True)


if __name__ == "__main__":
    main()
