"""Bench: do posterior-guided prompts and group sizes reach the same accuracy with fewer rollouts?

Task: mixed-difficulty arithmetic (`grpokit.tasks.arithmetic.mixed_difficulty_split`): additions
and multiplications with 1-, 2- and 3-digit operands, one bucket each. A tiny Qwen2 (0.13M
parameters, built from a config) is warmed up once with supervised steps on the buckets it can
learn (+1, +2, *1, never on a held-out problem) until sampled accuracy on 2-digit additions
reaches 28%. For that model the RL prompt pool (1000 prompts: 80 +1, 80 *1, 400 +2, 120 each of
+3, *2, *3) holds easy prompts (+1), prompts in between (+2, *1) and prompts out of reach (+3, *2,
*3, never solved): about half of every uniform G=8 batch is groups whose rewards are all equal.

Per seed (the pool, the held-out set and all RL randomness change with it) the same warmed-up
weights train with GRPO (exact-match reward, β = 0, token-mean loss, lr 5e-4, 32 prompts a step)
under three samplers, everything else equal:

- uniform G=8: shuffled prompts, 8 completions each: 256 rollouts a step, 150 steps;
- adaptive: `sampling.strategy: adaptive` with its defaults and a budget of 128 rollouts a step
  (G_i ∈ [2, 8]), 300 steps: the same 38400 rollouts in all;
- uniform G=2 ("It Takes Two"): 64 rollouts a step, 150 steps.

Reported per run: held-out sampled accuracy (mean@4 at T = 1 over 420 problems of the same mix)
at the start and at the end (trailing mean of the last 3 evaluations: one evaluation is noisy by
±1.5 points); rollouts and training seconds (generation + update, evaluation excluded) to first
reach the target, defined per seed from uniform G=8 as start + 75% of its gain, on the same
trailing means. R = adaptive's rollouts to target / uniform G=8's, the median over seeds (a seed
where adaptive never reaches the target counts as infinite).

Threads: one (tiny models; OpenMP spinning slows shared cores). Outputs under
outputs/adaptive_sampling/: per-run metrics JSONL, the prompt pass-rate table (CSV) of each
adaptive run, results.json and accuracy_vs_rollouts.png (copied to docs/images/).

Run: `.venv/bin/python bench/adaptive_sampling.py` (10–15 minutes on a shared 2-core CPU).
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = REPO_ROOT / "outputs" / "adaptive_sampling"
SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class BenchRecipe:
    # task: RL prompt pool and held-out problems per bucket (1-digit buckets hold 100 problems)
    pool_per_bucket: dict = field(
        default_factory=lambda: {"+1": 80, "*1": 80, "+2": 400, "+3": 120, "*2": 120, "*3": 120}
    )
    heldout_per_bucket: dict = field(
        default_factory=lambda: {"+1": 20, "*1": 20, "+2": 200, "+3": 60, "*2": 60, "*3": 60}
    )
    warmup_pool_per_bucket: int = 1500  # supervised pairs for the learnable buckets
    warmup_buckets: tuple[str, ...] = ("+1", "+2", "*1")
    # model (~0.13M parameters)
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    # supervised warm-up: stop when sampled accuracy on held-out-free +2 probes reaches the target
    warmup_seed: int = 0
    warmup_max_steps: int = 1500
    warmup_batch_size: int = 64
    warmup_learning_rate: float = 3e-3
    warmup_target_accuracy: float = 28.0
    warmup_check_every: int = 50
    # GRPO: one step = 32 prompts; uniform G=8 spends 256 rollouts a step, so 150 steps = 38400.
    prompts_per_step: int = 32
    learning_rate: float = 5e-4
    max_new_tokens: int = 7
    eval_samples_per_prompt: int = 4
    target_fraction_of_gain: float = 0.75
    smoothing_evals: int = 3  # accuracy curves are trailing means over this many evaluations
    # Per run: config sections, steps, and evaluation period in steps (every 2560 rollouts for the
    # first two, so their curves have the same resolution in rollouts).
    runs: dict = field(
        default_factory=lambda: {
            "uniform G=8": {"rollout": {"num_generations": 8}, "steps": 150, "eval_every": 10},
            # The same total rollouts as uniform G=8: a budget of 4 per prompt, twice the steps.
            "adaptive": {
                "rollout": {"num_generations": 8},
                "sampling": {"strategy": "adaptive", "rollouts_per_step": 32 * 4, "max_group_size": 8},
                "steps": 300,
                "eval_every": 20,
            },
            # "It Takes Two": the same steps as uniform G=8 with a quarter of its rollouts.
            "uniform G=2": {"rollout": {"num_generations": 2}, "steps": 150, "eval_every": 10},
        }
    )


@dataclass
class RunResult:
    name: str
    seed: int
    evals: list[tuple[int, float, float, float]]  # (step, rollouts so far, train seconds so far, accuracy)
    rollouts: float
    seconds: float
    per_bucket: dict[str, float]
    smoothing: int = 1

    def smoothed(self) -> list[float]:
        """Trailing mean over `smoothing` evaluations (fewer at the start): one eval is noisy (±1.5 points)."""
        accuracy = [e[3] for e in self.evals]
        return [
            statistics.mean(accuracy[max(0, i + 1 - self.smoothing) : i + 1]) for i in range(len(accuracy))
        ]

    @property
    def start(self) -> float:
        return self.evals[0][3]

    @property
    def final(self) -> float:
        return self.smoothed()[-1]

    def first_reaching(self, target: float) -> tuple[float, float] | None:
        """(rollouts, seconds) at the first evaluation whose smoothed accuracy ≥ target; None if never."""
        for (_, rollouts, seconds, _), accuracy in zip(self.evals, self.smoothed()):
            if accuracy >= target:
                return rollouts, seconds
        return None


def build_model(recipe: BenchRecipe, vocab_size: int, seed: int):
    from grpokit.models import build_tiny_causal_lm

    return build_tiny_causal_lm(
        vocab_size,
        hidden_size=recipe.hidden_size,
        num_layers=recipe.num_layers,
        num_heads=recipe.num_heads,
        num_kv_heads=recipe.num_heads,
        intermediate_size=4 * recipe.hidden_size,
        max_position_embeddings=32,
        seed=seed,
    )


def bucket_accuracy(engine, tokenizer, records, runner, recipe: BenchRecipe, seed: int) -> dict[str, float]:
    """Sampled accuracy (mean@k, percent) per bucket."""
    from grpokit.data import PromptDataset
    from grpokit.trainers.evaluation import EvalSettings, evaluate

    settings = EvalSettings(
        num_prompts=len(records),
        samples_per_prompt=recipe.eval_samples_per_prompt,
        greedy=False,
        max_new_tokens=recipe.max_new_tokens,
        seed=seed,
    )
    out = {}
    for bucket in sorted({r["bucket"] for r in records}):
        data = PromptDataset.from_records([r for r in records if r["bucket"] == bucket])
        out[bucket] = evaluate(engine, tokenizer, data, runner, settings)[
            f"eval/mean@{settings.samples_per_prompt}"
        ]
    return out


def warm_up(recipe: BenchRecipe, tokenizer, heldout_prompts: set[str], runner) -> tuple[dict, int]:
    """Supervised warm-up on the learnable buckets, never on a held-out problem of any seed.

    Stops when sampled accuracy on 400 two-digit additions reaches the target. One warm-up serves
    every seed: its length varies a lot with the initialisation (350 to 1300+ steps measured), and
    the comparison is between samplers, not between warm-ups.
    """
    from grpokit.data import PromptDataset
    from grpokit.rollout.inprocess import InProcessEngine
    from grpokit.tasks.arithmetic import mixed_difficulty_split
    from grpokit.trainers.evaluation import EvalSettings, evaluate
    from grpokit.trainers.sft import supervised_warmup

    pool = mixed_difficulty_split(
        "+*", (1, 2), train_per_bucket=recipe.warmup_pool_per_bucket, heldout_per_bucket=0, seed=1000
    ).train
    pool = [r for r in pool if r["bucket"] in recipe.warmup_buckets and r["prompt"] not in heldout_prompts]
    pairs = [(r["prompt"], r["answer"]) for r in pool]
    probe = PromptDataset.from_records([r for r in pool if r["bucket"] == "+2"][:400])
    model = build_model(recipe, len(tokenizer), recipe.warmup_seed)
    engine = InProcessEngine(model, tokenizer)
    settings = EvalSettings(
        num_prompts=len(probe),
        samples_per_prompt=1,
        greedy=False,
        max_new_tokens=recipe.max_new_tokens,
        seed=1,
    )

    def reached(step: int) -> bool:
        return (
            evaluate(engine, tokenizer, probe, runner, settings)["eval/mean@1"]
            >= recipe.warmup_target_accuracy
        )

    losses = supervised_warmup(
        model,
        tokenizer,
        pairs,
        steps=recipe.warmup_max_steps,
        batch_size=recipe.warmup_batch_size,
        learning_rate=recipe.warmup_learning_rate,
        seed=recipe.warmup_seed,
        stop_check=reached,
        check_every=recipe.warmup_check_every,
    )
    return {k: v.clone() for k, v in model.state_dict().items()}, len(losses)


def grpo_run(recipe: BenchRecipe, name: str, seed: int, weights: dict, tokenizer, split, runner) -> RunResult:
    from grpokit.data import PromptDataset
    from grpokit.models.loading import Policy
    from grpokit.monitoring import read_metrics
    from grpokit.trainers.lm_build import build_trainer
    from grpokit.trainers.lm_config import load_lm_config

    run_dir = OUT_DIR / f"seed{seed}" / name.replace(" ", "_").replace("=", "")
    if run_dir.exists():
        shutil.rmtree(run_dir)
    model = build_model(recipe, len(tokenizer), seed)
    model.load_state_dict(weights)
    sections = recipe.runs[name]
    config = load_lm_config(
        {
            "model": {"name_or_path": "<built in memory>"},
            "data": {"path": "<mixed arithmetic>"},
            "rewards": [{"function": "exact_match"}],
            "algorithm": {"preset": "grpo", "overrides": {"beta": 0.0, "aggregation": "token_mean"}},
            "rollout": {
                "prompts_per_step": recipe.prompts_per_step,
                "max_new_tokens": recipe.max_new_tokens,
                **sections["rollout"],
            },
            "sampling": sections.get("sampling", {}),
            "training": {
                "max_steps": sections["steps"],
                "learning_rate": recipe.learning_rate,
                "micro_batch_size": recipe.prompts_per_step * 16,
                "seed": seed,
            },
            "eval": {
                "num_prompts": len(split.heldout),
                "samples_per_prompt": recipe.eval_samples_per_prompt,
                "every_steps": sections["eval_every"],
                "greedy": False,
            },
            "logging": {"run_dir": str(run_dir), "progress": False, "tensorboard": False, "plot": False},
            "checkpoint": {"resume": False, "keep_last": 1},
        }
    )
    train_data = PromptDataset.from_records(split.train, source="mixed:train")
    heldout = PromptDataset.from_records(split.heldout, source="mixed:heldout")
    trainer = build_trainer(
        config,
        policy=Policy(model, tokenizer, is_lora=False),
        train_data=train_data,
        eval_data=heldout,
        reward_runner=runner,
    )
    trainer.train()
    if hasattr(trainer.sampler, "write_csv"):
        trainer.sampler.write_csv(run_dir / "prompt_pass_rates.csv", [r["prompt"] for r in split.train])
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # weights are not what this bench keeps

    key = f"eval/mean@{recipe.eval_samples_per_prompt}"
    rollouts = seconds = 0.0
    evals = []
    for record in read_metrics(run_dir / "metrics.jsonl"):
        rollouts += record.get("rollouts/step", 0.0)
        seconds += record.get("time/rollout_seconds", 0.0) + record.get("time/train_seconds", 0.0)
        if key in record:
            evals.append((record["step"], rollouts, seconds, record[key]))
    per_bucket = bucket_accuracy(trainer.engine, tokenizer, split.heldout, runner, recipe, seed + 2)
    return RunResult(name, seed, evals, rollouts, seconds, per_bucket, recipe.smoothing_evals)


def summarize(recipe: BenchRecipe, results: dict[int, dict[str, RunResult]]) -> tuple[list[str], dict]:
    lines = [
        "| run | seed | acc start | acc final | target | rollouts to target | train s to target | "
        "rollouts total |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ratios, second_ratios, summary = [], [], {}
    for seed, runs in results.items():
        base = runs["uniform G=8"]
        target = base.start + recipe.target_fraction_of_gain * (base.final - base.start)
        reach = {name: run.first_reaching(target) for name, run in runs.items()}
        for name, run in runs.items():
            hit = reach[name]
            lines.append(
                f"| {name} | {seed} | {run.start:.1f} | {run.final:.1f} | {target:.1f} | "
                f"{f'{hit[0]:.0f}' if hit else '—'} | {f'{hit[1]:.1f}' if hit else '—'} | "
                f"{run.rollouts:.0f} |"
            )
        if reach["uniform G=8"]:  # a seed where adaptive never gets there counts as an infinite ratio
            adaptive = reach["adaptive"] or (math.inf, math.inf)
            ratios.append(adaptive[0] / reach["uniform G=8"][0])
            second_ratios.append(adaptive[1] / max(reach["uniform G=8"][1], 1e-9))
    for name in next(iter(results.values())):
        finals = [runs[name].final for runs in results.values()]
        summary[name] = {
            "final_mean": statistics.mean(finals),
            "final_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
            "rollouts_mean": statistics.mean(runs[name].rollouts for runs in results.values()),
        }
    # The median over seeds: robust to one noisy seed, and finite only if most seeds reach the target.
    summary["rollouts_ratio"] = statistics.median(ratios) if ratios else math.nan
    summary["seconds_ratio"] = statistics.median(second_ratios) if second_ratios else math.nan
    summary["rollouts_ratio_per_seed"] = ratios
    lines.append("")
    lines.append(
        f"adaptive / uniform G=8 to target, per seed: rollouts {[round(r, 2) for r in ratios]}, "
        f"training seconds {[round(r, 2) for r in second_ratios]}; medians "
        f"{summary['rollouts_ratio']:.2f} and {summary['seconds_ratio']:.2f}"
    )
    lines.append("")
    lines.append("| run | final acc (mean ± sd over seeds) | rollouts per run |")
    lines.append("|---|---|---|")
    for name in next(iter(results.values())):
        s = summary[name]
        lines.append(f"| {name} | {s['final_mean']:.1f} ± {s['final_std']:.1f} | {s['rollouts_mean']:.0f} |")
    return lines, summary


def plot(results: dict[int, dict[str, RunResult]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"uniform G=8": "tab:blue", "adaptive": "tab:red", "uniform G=2": "tab:green"}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for seed, runs in results.items():
        for name, run in runs.items():
            ax.plot(
                [e[1] for e in run.evals],
                [e[3] for e in run.evals],
                color=colors.get(name, "gray"),
                alpha=0.8,
                label=name if seed == next(iter(results)) else None,
                marker=".",
            )
    ax.set_xlabel("rollouts generated")
    ax.set_ylabel("held-out sampled accuracy (%)")
    ax.set_title("Mixed-difficulty arithmetic: accuracy vs rollouts (3 seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(seeds=SEEDS, recipe: BenchRecipe | None = None) -> dict:
    from grpokit.models import build_char_tokenizer
    from grpokit.rewards import RewardRunner, load_reward
    from grpokit.tasks.arithmetic import ALPHABET, mixed_difficulty_split

    recipe = recipe or BenchRecipe()
    torch.set_num_threads(1)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tokenizer = build_char_tokenizer(ALPHABET)
    runner = RewardRunner([load_reward("exact_match")])
    splits = {
        seed: mixed_difficulty_split(
            "+*",
            (1, 2, 3),
            train_per_bucket=recipe.pool_per_bucket,
            heldout_per_bucket=recipe.heldout_per_bucket,
            seed=seed,
        )
        for seed in seeds
    }
    heldout_prompts = {r["prompt"] for split in splits.values() for r in split.heldout}
    torch.manual_seed(recipe.warmup_seed)
    weights, warm_steps = warm_up(recipe, tokenizer, heldout_prompts, runner)
    print(f"warm-up: {warm_steps} supervised steps ({time.perf_counter() - started:.0f} s)", flush=True)
    results: dict[int, dict[str, RunResult]] = {}
    for seed, split in splits.items():
        results[seed] = {}
        for name in recipe.runs:
            run = grpo_run(recipe, name, seed, weights, tokenizer, split, runner)
            results[seed][name] = run
            print(
                f"seed {seed} {name:12s} acc {run.start:.1f} -> {run.final:.1f}, {run.rollouts:.0f} rollouts, "
                f"{run.seconds:.0f} s training; by bucket { {k: round(v) for k, v in run.per_bucket.items()} } "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    lines, summary = summarize(recipe, results)
    print("\n".join(lines))
    png = OUT_DIR / "accuracy_vs_rollouts.png"
    plot(results, png)
    images = REPO_ROOT / "docs" / "images"
    images.mkdir(parents=True, exist_ok=True)
    shutil.copy(png, images / "adaptive_sampling.png")
    (OUT_DIR / "results.json").write_text(
        json.dumps(
            {
                "summary": summary,
                "table": lines,
                "runs": {
                    f"{seed}/{name}": {
                        "evals": run.evals,
                        "per_bucket": run.per_bucket,
                        "rollouts": run.rollouts,
                    }
                    for seed, runs in results.items()
                    for name, run in runs.items()
                },
                "seconds": time.perf_counter() - started,
            },
            indent=1,
        )
    )
    print(f"total {time.perf_counter() - started:.0f} s (shared CPU, 1 thread); outputs in {OUT_DIR}")
    print(
        f"adaptive: rollouts_ratio={summary['rollouts_ratio']:.2f} "
        f"final_acc_adaptive={summary['adaptive']['final_mean']:.1f} "
        f"final_acc_uniform={summary['uniform G=8']['final_mean']:.1f}",
        flush=True,
    )
    return summary


if __name__ == "__main__":
    main()
