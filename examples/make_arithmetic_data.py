"""Write what `examples/arithmetic.yaml` needs: addition prompts as JSONL and a tiny local policy.

Both go to outputs/arithmetic-example/ under the current directory (git-ignored in this repository)
unless --data-dir / --model-dir say otherwise; examples/arithmetic.yaml reads them from there, so run
both commands from the same directory:

    .venv/bin/python examples/make_arithmetic_data.py            # ~1 minute on a laptop CPU
    .venv/bin/grpokit train examples/arithmetic.yaml

Data: every "a+b=" with 0 ≤ a, b ≤ 99, shuffled with a seed; 200 held out for evaluation. Rows are
`{"prompt": "37+58=", "answer": "95"}`.

Model: the demo's 0.2M-parameter Qwen2 with a character tokenizer, warmed up with supervised steps
until one *sampled* answer is right ~30% of the time (GRPO needs a policy that is sometimes right
and sometimes wrong; a random model never is). `--warmup-steps 0` skips the warm-up (tests).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

# Relative to the current directory, as the paths in examples/arithmetic.yaml are.
OUTPUT = Path("outputs") / "arithmetic-example"


def write_arithmetic_data(data_dir: str | Path, *, heldout: int = 200, seed: int = 0) -> tuple[Path, Path]:
    """Write arithmetic_train.jsonl and arithmetic_eval.jsonl into `data_dir`; return their paths."""
    from grpokit.tasks.arithmetic import arithmetic_split

    split = arithmetic_split("+", 99, heldout=heldout, seed=seed)
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = data_dir / "arithmetic_train.jsonl", data_dir / "arithmetic_eval.jsonl"
    for path, records in zip(paths, (split.train, split.heldout)):
        path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return paths


def sampled_accuracy(model, tokenizer, records: list[dict], *, seed: int) -> float:
    """Percent of `records` whose one answer sampled at T = 1 is exactly right."""
    from grpokit.rollout.inprocess import InProcessEngine
    from grpokit.rollout.types import SamplingParams

    rollout = InProcessEngine(model, tokenizer).generate(
        [r["prompt"] for r in records], 1, SamplingParams(max_new_tokens=5, temperature=1.0, seed=seed)
    )
    right = sum(text.strip() == r["answer"] for text, r in zip(rollout.completions, records))
    return 100.0 * right / len(records)


def make_tiny_model(
    model_dir: str | Path,
    train_path: str | Path,
    *,
    warmup_steps: int = 3000,
    target_accuracy: float = 30.0,
    seed: int = 0,
) -> Path:
    """Build the demo-sized model, warm it up on `train_path` (up to `warmup_steps`), save it."""
    from grpokit.demo import build_arithmetic_policy
    from grpokit.models import save_policy
    from grpokit.trainers.sft import supervised_warmup

    torch.manual_seed(seed)
    policy = build_arithmetic_policy(seed)
    model, tokenizer = policy.model, policy.tokenizer
    records = [json.loads(line) for line in Path(train_path).read_text().splitlines()]
    probe = records[:256]

    def reached_target(step: int) -> bool:
        accuracy = sampled_accuracy(model, tokenizer, probe, seed=seed + step)
        print(f"warm-up step {step}: sampled accuracy {accuracy:.1f}%", flush=True)
        return accuracy >= target_accuracy

    if warmup_steps > 0:
        supervised_warmup(
            model,
            tokenizer,
            [(r["prompt"], r["answer"]) for r in records],
            steps=warmup_steps,
            batch_size=64,
            learning_rate=3e-3,
            seed=seed,
            stop_check=reached_target,
            check_every=25,
        )
    return save_policy(policy, model_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=str(OUTPUT / "data"))
    parser.add_argument("--model-dir", default=str(OUTPUT / "tiny-model"))
    parser.add_argument(
        "--warmup-steps", type=int, default=3000, help="at most; stops at 30%% sampled accuracy"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a 0.2M-parameter model is faster on one thread
    train_path, eval_path = write_arithmetic_data(args.data_dir, seed=args.seed)
    model_dir = make_tiny_model(args.model_dir, train_path, warmup_steps=args.warmup_steps, seed=args.seed)
    print(f"wrote {train_path}, {eval_path} and {model_dir}")


if __name__ == "__main__":
    main()
