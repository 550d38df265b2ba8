"""Bench: does posterior-guided sampling reach uniform GRPO's accuracy with fewer rollouts? And G = 2?

Why this design (issue 18): the earlier bench compared three seeds by the first noisy evaluation
that crossed a target, and its verdict moved from 0.64 to 0.88 between machines. Here every source
of noise that is not the algorithm is removed or measured:

- **Exact evaluation.** Accuracy is the policy's exact sampled accuracy at T = 1: the mean over
  held-out prompts of π(answer, EOS | prompt), from one teacher-forced forward pass (a sampled
  completion is exactly right with that probability). No sampling noise at all; what is left is
  which prompts are held out (its standard error is printed) — and since every sampler of a seed is
  scored on the same held-out set, comparisons are paired and that error cancels further.
- **A pool like RLVR data.** A tiny Qwen2 (0.13M parameters, from a config) is warmed up once with
  supervised steps on +1, +2, *1 (never a held-out problem) to 28% on 2-digit additions. The RL pool
  (1000 prompts per seed, buckets below) then holds prompts it solves, prompts it sometimes solves
  and prompts out of reach; their shares at the start are measured (exact pass rates) and printed,
  with the expected share of all-equal G = 8 groups (in public GRPO runs on math, 40–60%).
- **A stable statistic.** Accuracy as a function of rollouts consumed (dropped groups included),
  evaluated every 1/12 of the budget: per seed R = rollouts adaptive needs to reach uniform G = 8's
  final accuracy (linear interpolation between evaluations) / uniform's total rollouts, the
  median over 5 seeds, with a 90% bootstrap interval over seeds; plus the area under each curve
  (mean accuracy over the budget) and accuracy at fixed budgets, each with its interval.

Runs per seed (GRPO, exact-match reward, β = 0, token-mean loss, lr 5e-4, 32 prompts a step; the
same warmed-up weights; B = 32·8·60 = 15360 rollouts):

- uniform G=8: shuffled prompts, 8 completions each, 60 steps;
- adaptive: `sampling.strategy: adaptive` with its defaults (posterior-guided prompts, each at most
  once per epoch, a budget of 256 rollouts a step split into G_i ∈ [2, 16]), 60 steps: the same B;
- adaptive, G=8 each: the same without group-size allocation;
- adaptive, no epochs: the same with `epoch_coverage: false` (the method before issue 18);
- DAPO dyn. sampling: uniform G=8 whose all-equal groups are dropped and replaced (DAPO), until B
  rollouts are consumed;
- G=2 equal steps ("It Takes Two"): 60 steps of 64 rollouts (B/4);
- G=2 equal rollouts: 240 steps of 64 rollouts (B);
- G=2 ×4 prompts: 60 steps of 128 prompts × 2 (equal steps *and* rollouts).

The posterior's calibration is measured against the truth: at every evaluation the adaptive run's
posterior mean of every visited prompt is compared with that prompt's exact pass rate under the
current policy (reliability bins, ECE), and so is every skip decision.

Threads: one per process, two processes (one seed's runs each at a time). Outputs under
outputs/adaptive_sampling/: results.json, accuracy_vs_rollouts.png (copied to docs/images/).

Run: `.venv/bin/python bench/adaptive_sampling.py` (4–6 minutes on a shared 2-core CPU; deterministic: a
second run prints the same numbers). What it found is in the README ("Spend rollouts where they teach").
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = REPO_ROOT / "outputs" / "adaptive_sampling"
SEEDS = (0, 1, 2, 3, 4)
BASE = "uniform G=8"
ADAPTIVE = "adaptive"


@dataclass(frozen=True)
class BenchRecipe:
    # task: RL prompt pool and held-out problems per bucket (1-digit buckets hold 100 problems)
    pool_per_bucket: dict = field(
        default_factory=lambda: {"+1": 60, "*1": 60, "+2": 620, "*2": 100, "+3": 80, "*3": 80}
    )
    heldout_per_bucket: dict = field(
        default_factory=lambda: {"+1": 40, "*1": 40, "+2": 1500, "*2": 250, "+3": 200, "*3": 200}
    )
    warmup_pool_per_bucket: int = 1500  # supervised pairs for the learnable buckets
    warmup_buckets: tuple[str, ...] = ("+1", "+2", "*1")
    # model (~0.13M parameters)
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    # supervised warm-up: stop when sampled accuracy on 400 +2 problems (none held out) reaches the target
    warmup_seed: int = 0
    warmup_max_steps: int = 4000
    warmup_batch_size: int = 64
    warmup_learning_rate: float = 3e-3
    warmup_target_accuracy: float = 80.0
    warmup_check_every: int = 50
    # GRPO
    prompts_per_step: int = 32
    learning_rate: float = 5e-4
    max_new_tokens: int = 7  # a 3-digit product has 6 digits, then EOS
    budget_rollouts: int = 32 * 8 * 60
    eval_points: int = 12  # evaluations per budget (and one at the start)
    bootstrap_resamples: int = 20000
    # name → (config sections, rollouts to consume as a fraction of the budget)
    runs: dict = field(
        default_factory=lambda: {
            BASE: ({"rollout": {"num_generations": 8}}, 1.0),
            # the library's defaults: budget P·G = 256 a step, G_i ∈ [2, 16], each prompt once per epoch
            ADAPTIVE: ({"rollout": {"num_generations": 8}, "sampling": {"strategy": "adaptive"}}, 1.0),
            "adaptive, G=8 each": (
                {"rollout": {"num_generations": 8}, "sampling": {"strategy": "adaptive", "adaptive_group_size": False}},
                1.0,
            ),
            "adaptive, no epochs": (
                {"rollout": {"num_generations": 8}, "sampling": {"strategy": "adaptive", "epoch_coverage": False}},
                1.0,
            ),
            "DAPO dyn. sampling": (
                {"rollout": {"num_generations": 8}, "overrides": {"dynamic_sampling": True}},
                1.0,
            ),
            "G=2 equal steps": ({"rollout": {"num_generations": 2}}, 0.25),
            "G=2 equal rollouts": ({"rollout": {"num_generations": 2}}, 1.0),
            # the same rollouts per step as uniform G=8, spread over 4× the prompts (equal steps and rollouts)
            "G=2 ×4 prompts": ({"rollout": {"num_generations": 2, "prompts_per_step": 128}}, 1.0),
        }
    )


# ---------------------------------------------------------------------------------------------- model, task
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


class ExactAccuracy:
    """π(answer, EOS | prompt) per record, from one teacher-forced forward (right-padded: causal
    attention lets no position see the padding after it, and positions start at 0 as in sampling)."""

    def __init__(self, tokenizer, records: list[dict], batch_size: int = 1024):
        from grpokit.rollout.prompts import encode_prompts

        prompts = encode_prompts(tokenizer, [r["prompt"] for r in records], add_special_tokens=False)
        answers = encode_prompts(tokenizer, [r["answer"] for r in records], add_special_tokens=False)
        sequences = [p + a + [tokenizer.eos_token_id] for p, a in zip(prompts, answers)]
        width = max(len(s) for s in sequences)
        self.ids = torch.full((len(sequences), width), tokenizer.pad_token_id, dtype=torch.long)
        self.attention = torch.zeros_like(self.ids)
        self.scored = torch.zeros((len(sequences), width - 1), dtype=torch.bool)  # target positions
        for row, (prompt, sequence) in enumerate(zip(prompts, sequences)):
            self.ids[row, : len(sequence)] = torch.tensor(sequence)
            self.attention[row, : len(sequence)] = 1
            self.scored[row, len(prompt) - 1 : len(sequence) - 1] = True  # predicts answer chars and EOS
        self.batch_size = batch_size

    @torch.no_grad()
    def pass_rates(self, model) -> np.ndarray:
        was_training = model.training
        model.eval()
        out = []
        for start in range(0, len(self.ids), self.batch_size):
            ids = self.ids[start : start + self.batch_size]
            logits = model(input_ids=ids, attention_mask=self.attention[start : start + self.batch_size]).logits
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            out.append(torch.where(self.scored[start : start + self.batch_size], logp, 0.0).sum(-1).exp())
        model.train(was_training)
        return torch.cat(out).numpy().astype(np.float64)


def start_mix(pass_rates: np.ndarray, group_size: int = 8) -> dict[str, float]:
    """Shares of prompts whose group of G is more likely than not all-correct (solved), all-wrong
    (hopeless), or neither (learnable); and the expected share of all-equal groups."""
    all_right, all_wrong = pass_rates**group_size, (1 - pass_rates) ** group_size
    return {
        "solved": float((all_right >= 0.5).mean()),
        "hopeless": float((all_wrong >= 0.5).mean()),
        "learnable": float(((all_right < 0.5) & (all_wrong < 0.5)).mean()),
        "zero_variance_groups_expected": float((all_right + all_wrong).mean()),
    }


def warm_up(recipe: BenchRecipe, tokenizer, heldout_prompts: set[str], runner) -> tuple[dict, int]:
    """Supervised warm-up on the learnable buckets, never on a held-out problem of any seed; stops when
    sampled accuracy on 400 two-digit additions reaches the target. One warm-up serves every seed (the
    comparison is between samplers); it is cached under outputs/ by recipe, as it is deterministic."""
    from grpokit.data import PromptDataset
    from grpokit.rollout.inprocess import InProcessEngine
    from grpokit.tasks.arithmetic import mixed_difficulty_split
    from grpokit.trainers.evaluation import EvalSettings, evaluate
    from grpokit.trainers.sft import supervised_warmup

    fields = {k: v for k, v in asdict(recipe).items() if k.startswith("warmup") or k in ("hidden_size", "num_layers")}
    key = hashlib.sha256(json.dumps([fields, sorted(heldout_prompts)], default=str).encode()).hexdigest()[:16]
    cache = OUT_DIR / f"warmup-{key}.pt"
    if cache.exists():
        saved = torch.load(cache)
        return saved["weights"], saved["steps"]
    pool = mixed_difficulty_split(
        "+*", (1, 2), train_per_bucket=recipe.warmup_pool_per_bucket, heldout_per_bucket=0, seed=1000
    ).train
    pool = [r for r in pool if r["bucket"] in recipe.warmup_buckets and r["prompt"] not in heldout_prompts]
    pairs = [(r["prompt"], r["answer"]) for r in pool]
    probe = PromptDataset.from_records([r for r in pool if r["bucket"] == "+2"][:400])
    torch.manual_seed(recipe.warmup_seed)
    model = build_model(recipe, len(tokenizer), recipe.warmup_seed)
    engine = InProcessEngine(model, tokenizer)
    settings = EvalSettings(
        num_prompts=len(probe), samples_per_prompt=1, greedy=False, max_new_tokens=recipe.max_new_tokens, seed=1
    )

    def reached(step: int) -> bool:
        accuracy = evaluate(engine, tokenizer, probe, runner, settings)["eval/mean@1"]
        return accuracy >= recipe.warmup_target_accuracy

    losses = supervised_warmup(
        model, tokenizer, pairs, steps=recipe.warmup_max_steps, batch_size=recipe.warmup_batch_size,
        learning_rate=recipe.warmup_learning_rate, seed=recipe.warmup_seed, stop_check=reached,
        check_every=recipe.warmup_check_every,
    )
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"weights": weights, "steps": len(losses)}, cache)
    return weights, len(losses)


# ---------------------------------------------------------------------------------------------- one run
class AccuracyCurve:
    """Trainer callback: exact held-out accuracy every `every` rollouts consumed; stops at `budget`.
    With an adaptive sampler, also how its posterior compares with the exact pool pass rates."""

    def __init__(self, heldout: ExactAccuracy, pool: ExactAccuracy, budget: int, every: int, start: float):
        self.heldout, self.pool, self.budget, self.every = heldout, pool, budget, every
        self.rollouts = 0.0
        self.curve: list[tuple[float, float]] = [(0.0, start)]
        self.per_prompt: np.ndarray | None = None
        self.calibration: list[dict] = []
        self.zero_variance: list[float] = []

    def on_step_end(self, trainer, step: int, metrics: dict) -> None:
        self.rollouts += metrics.get("rollouts/step", 0.0)
        self.zero_variance.append(metrics.get("frac_reward_zero_std", math.nan))
        if self.rollouts >= len(self.curve) * self.every or self.rollouts >= self.budget:
            self.per_prompt = self.heldout.pass_rates(trainer.model)
            self.curve.append((self.rollouts, 100.0 * float(self.per_prompt.mean())))
            if hasattr(trainer.sampler, "posteriors"):
                self.calibration.append(posterior_check(trainer.sampler, self.pool.pass_rates(trainer.model)))
        if self.rollouts >= self.budget:
            trainer.should_stop = True


def posterior_check(sampler, truth: np.ndarray) -> dict:
    """The posterior mean of every visited prompt against its exact pass rate now; the skip decisions."""
    from grpokit.sampling import calibration_bins, expected_calibration_error, prompt_status
    from grpokit.sampling.selection import STATUS_INFORMATIVE

    post = sampler.posteriors
    seen = post.visits > 0
    bins = calibration_bins(post.mean[seen], truth[seen], np.ones(int(seen.sum())), 5)
    skipped = prompt_status(post.alpha, post.beta, sampler.reference_group_size, sampler.skip_below)
    skipped = skipped != STATUS_INFORMATIVE
    g = sampler.reference_group_size
    # a prompt "teaches" when a group of G would be informative with probability ≥ skip_below
    teaches = (1 - truth**g - (1 - truth) ** g) >= sampler.skip_below
    return {
        "ece": expected_calibration_error(bins),
        "bins": [(b.low, b.high, b.predicted, b.observed, b.weight) for b in bins],
        "skipped_share": float(skipped.mean()),
        "skipped_but_teaches": float((skipped & teaches).sum() / max(1, skipped.sum())),
        "teaching_share": float(teaches.mean()),
    }


def run_one(job: tuple) -> dict:
    """One (seed, sampler) run in its own process; returns its curve and diagnostics."""
    recipe, name, seed, weights, split = job
    torch.set_num_threads(1)
    from grpokit.data import PromptDataset
    from grpokit.models import build_char_tokenizer
    from grpokit.models.loading import Policy
    from grpokit.rewards import RewardRunner, load_reward
    from grpokit.tasks.arithmetic import ALPHABET
    from grpokit.trainers.lm_build import build_trainer
    from grpokit.trainers.lm_config import load_lm_config

    started = time.perf_counter()
    tokenizer = build_char_tokenizer(ALPHABET)
    runner = RewardRunner([load_reward("exact_match")])
    sections, budget_fraction = recipe.runs[name]
    budget = int(recipe.budget_rollouts * budget_fraction)
    run_dir = OUT_DIR / f"seed{seed}" / name.replace(" ", "_").replace("=", "").replace(".", "")
    if run_dir.exists():
        shutil.rmtree(run_dir)
    model = build_model(recipe, len(tokenizer), seed)
    model.load_state_dict(weights)
    heldout, pool = ExactAccuracy(tokenizer, split.heldout), ExactAccuracy(tokenizer, split.train)
    curve = AccuracyCurve(heldout, pool, budget, recipe.budget_rollouts // recipe.eval_points,
                          100.0 * float(heldout.pass_rates(model).mean()))
    config = load_lm_config(
        {
            "model": {"name_or_path": "<built in memory>"},
            "data": {"path": "<mixed arithmetic>"},
            "rewards": [{"function": "exact_match"}],
            "algorithm": {
                "preset": "grpo",
                "overrides": {"beta": 0.0, "aggregation": "token_mean", **sections.get("overrides", {})},
            },
            "rollout": {"prompts_per_step": recipe.prompts_per_step, "max_new_tokens": recipe.max_new_tokens,
                        **sections["rollout"]},
            "sampling": sections.get("sampling", {}),
            "training": {
                "max_steps": 10 * budget // recipe.prompts_per_step,  # the callback stops at the budget
                "learning_rate": recipe.learning_rate,
                "micro_batch_size": 512,
                "seed": seed,
                **sections.get("training", {}),
            },
            "logging": {"run_dir": str(run_dir), "progress": False, "tensorboard": False, "plot": False},
            "checkpoint": {"resume": False, "keep_last": 1},
        }
    )
    trainer = build_trainer(
        config,
        policy=Policy(model, tokenizer, is_lora=False),
        train_data=PromptDataset.from_records(split.train, source="mixed:train"),
        reward_runner=runner,
        callbacks=[curve],
    )
    trainer.train()
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # weights are not what this bench keeps
    buckets = np.array([r["bucket"] for r in split.heldout])
    per_bucket = {b: round(100.0 * float(curve.per_prompt[buckets == b].mean()), 1) for b in sorted(set(buckets))}
    return {
        "name": name,
        "seed": seed,
        "curve": curve.curve,
        "steps": trainer.step,
        "per_bucket": per_bucket,
        "per_prompt_final": curve.per_prompt.tolist(),
        "zero_variance_share": float(np.nanmean(curve.zero_variance)),
        "calibration": curve.calibration,
        "seconds": time.perf_counter() - started,
    }


# ---------------------------------------------------------------------------------------------- statistics
def final_accuracy(run: dict) -> float:
    return run["curve"][-1][1]


def accuracy_at(run: dict, rollouts: float) -> float:
    """The curve linearly interpolated at `rollouts` (the last point beyond its end)."""
    xs, ys = zip(*run["curve"])
    return float(np.interp(rollouts, xs, ys))


def rollouts_to_reach(run: dict, target: float) -> float:
    """Rollouts where the curve first reaches `target`, interpolated between evaluations; inf if never."""
    curve = run["curve"]
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if y1 >= target:
            return x1 if y1 == y0 or y0 >= target else x0 + (x1 - x0) * (target - y0) / (y1 - y0)
    return math.inf


def area_under_curve(run: dict, budget: float) -> float:
    """Mean accuracy over [0, budget] rollouts (trapezoids on the interpolated curve)."""
    xs = np.linspace(0.0, budget, 241)
    return float(np.trapezoid([accuracy_at(run, x) for x in xs], xs) / budget)


def bootstrap_interval(values: list[float], statistic, resamples: int, seed: int = 0) -> tuple[float, float]:
    """90% percentile interval of `statistic` over seeds resampled with replacement."""
    rng = np.random.default_rng(seed)
    values = np.asarray(values, dtype=np.float64)
    draws = np.sort([statistic(values[rng.integers(0, len(values), len(values))]) for _ in range(resamples)])
    # order statistics, not np.percentile: interpolating between inf draws gives NaN
    return float(draws[int(0.05 * (resamples - 1))]), float(draws[int(np.ceil(0.95 * (resamples - 1)))])


def summarize(recipe: BenchRecipe, results: dict[int, dict[str, dict]]) -> tuple[list[str], dict]:
    seeds = sorted(results)
    budget = recipe.budget_rollouts
    names = list(recipe.runs)
    mean_ci = lambda xs: (statistics.mean(xs), *bootstrap_interval(xs, np.mean, recipe.bootstrap_resamples))  # noqa: E731
    lines = ["| run | acc start | acc at B/4 | acc at B/2 | final acc | AUC over B | rollouts | steps |",
             "|---|---|---|---|---|---|---|---|"]
    summary: dict = {"runs": {}}
    for name in names:
        runs = [results[s][name] for s in seeds]
        span = budget * recipe.runs[name][1]
        row = {
            "start": statistics.mean(r["curve"][0][1] for r in runs),
            "at_quarter": mean_ci([accuracy_at(r, budget / 4) for r in runs]),
            "at_half": mean_ci([accuracy_at(r, budget / 2) for r in runs]) if span >= budget / 2 else None,
            "final": mean_ci([final_accuracy(r) for r in runs]),
            "auc": mean_ci([area_under_curve(r, budget) for r in runs]) if span >= budget else None,
            "rollouts": statistics.mean(r["curve"][-1][0] for r in runs),
            "steps": statistics.mean(r["steps"] for r in runs),
            "zero_variance_share": statistics.mean(r["zero_variance_share"] for r in runs),
        }
        summary["runs"][name] = row
        fmt = lambda t: "—" if t is None else f"{t[0]:.1f} [{t[1]:.1f}, {t[2]:.1f}]"  # noqa: E731
        lines.append(f"| {name} | {row['start']:.1f} | {fmt(row['at_quarter'])} | {fmt(row['at_half'])} | "
                     f"{fmt(row['final'])} | {fmt(row['auc'])} | {row['rollouts']:.0f} | {row['steps']:.0f} |")
    lines.append("(means over seeds, [90% bootstrap interval over seeds]; B = the budget of uniform G=8)")
    # R per seed: rollouts adaptive needs to reach uniform G=8's final accuracy / uniform's rollouts.
    ratios = []
    for s in seeds:
        base = results[s][BASE]
        ratios.append(rollouts_to_reach(results[s][ADAPTIVE], final_accuracy(base)) / base["curve"][-1][0])
    # A seed where adaptive never reaches the target counts as infinite (the median and percentiles of a set
    # holding inf are inf only when inf is in the middle, as it should be).
    summary["rollouts_ratio_per_seed"] = ratios
    summary["rollouts_ratio"] = float(np.median(ratios))
    summary["rollouts_ratio_ci"] = bootstrap_interval(ratios, np.median, recipe.bootstrap_resamples)
    for name in names[1:]:
        diffs = [final_accuracy(results[s][name]) - final_accuracy(results[s][BASE]) for s in seeds]
        summary["runs"][name]["final_minus_uniform"] = mean_ci(diffs)
        lines.append(f"{name} − uniform G=8, final acc: {mean_ci(diffs)[0]:+.1f} "
                     f"[{mean_ci(diffs)[1]:+.1f}, {mean_ci(diffs)[2]:+.1f}] points")
    lines.append("rollouts adaptive needs to reach uniform G=8's final accuracy, as a share of uniform's, per "
                 f"seed: {[round(r, 2) for r in ratios]}")
    return lines, summary


def evaluation_noise(results: dict[int, dict[str, dict]]) -> dict[str, float]:
    """Standard errors (points) from the choice of held-out prompts: of one run's accuracy, and of the paired
    adaptive − uniform difference (both scored on the same prompts), averaged over seeds."""
    se, se_diff = [], []
    for runs in results.values():
        base = np.asarray(runs[BASE]["per_prompt_final"])
        adaptive = np.asarray(runs[ADAPTIVE]["per_prompt_final"])
        se.append(100 * base.std(ddof=1) / math.sqrt(len(base)))
        se_diff.append(100 * (adaptive - base).std(ddof=1) / math.sqrt(len(base)))
    return {"accuracy_se": statistics.mean(se), "paired_difference_se": statistics.mean(se_diff)}


def calibration_report(results: dict[int, dict[str, dict]]) -> tuple[list[str], dict]:
    checks = [c for runs in results.values() for c in runs[ADAPTIVE]["calibration"]]
    if not checks:  # a recipe whose "adaptive" run has no posterior
        return [], {}
    last = [runs[ADAPTIVE]["calibration"][-1] for runs in results.values()]
    report = {
        "ece_mean": statistics.mean(c["ece"] for c in checks),
        "ece_final": statistics.mean(c["ece"] for c in last),
        "skipped_share_final": statistics.mean(c["skipped_share"] for c in last),
        "skipped_but_teaches": statistics.mean(c["skipped_but_teaches"] for c in checks),
        "teaching_share_final": statistics.mean(c["teaching_share"] for c in last),
        "final_bins_seed0": last[0]["bins"],
    }
    bins = ", ".join(f"[{lo:.1f},{hi:.1f}): {pred:.2f} vs {obs:.2f} (n={n:.0f})" for lo, hi, pred, obs, n in last[0]["bins"])
    lines = [
        f"posterior vs exact pass rates (visited prompts): ECE {report['ece_mean']:.3f} over the run, "
        f"{report['ece_final']:.3f} at the end; at the end it skips {100 * report['skipped_share_final']:.0f}% of "
        f"the pool, of which {100 * report['skipped_but_teaches']:.0f}% (mean over the run) would in fact give "
        f"informative groups (the truly teaching share of the pool: {100 * report['teaching_share_final']:.0f}%)",
        f"reliability bins at the end, seed {min(results)} (predicted vs exact): {bins}",
    ]
    return lines, report


def plot(results: dict[int, dict[str, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = ["tab:blue", "tab:red", "tab:orange", "tab:brown", "tab:purple", "tab:olive", "tab:green", "tab:cyan"]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    first = min(results)
    for seed, runs in results.items():
        for color, (name, run) in zip(colors, runs.items()):
            xs, ys = zip(*run["curve"])
            ax.plot(xs, ys, color=color, alpha=0.6, label=name if seed == first else None, marker=".")
    ax.set_xlabel("rollouts consumed")
    ax.set_ylabel("held-out exact sampled accuracy (%)")
    ax.set_title(f"Mixed-difficulty arithmetic: accuracy vs rollouts ({len(results)} seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(seeds=SEEDS, recipe: BenchRecipe | None = None, workers: int | None = None) -> dict:
    from grpokit.models import build_char_tokenizer
    from grpokit.rewards import RewardRunner, load_reward
    from grpokit.tasks.arithmetic import ALPHABET, mixed_difficulty_split

    recipe = recipe or BenchRecipe()
    workers = workers or min(2, os.cpu_count() or 1)
    torch.set_num_threads(1)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tokenizer = build_char_tokenizer(ALPHABET)
    runner = RewardRunner([load_reward("exact_match")])
    splits = {
        seed: mixed_difficulty_split("+*", (1, 2, 3), train_per_bucket=recipe.pool_per_bucket,
                                     heldout_per_bucket=recipe.heldout_per_bucket, seed=seed)
        for seed in seeds
    }
    heldout_prompts = {r["prompt"] for split in splits.values() for r in split.heldout}
    weights, warm_steps = warm_up(recipe, tokenizer, heldout_prompts, runner)
    print(f"warm-up: {warm_steps} supervised steps ({time.perf_counter() - started:.0f} s)", flush=True)
    model = build_model(recipe, len(tokenizer), 0)
    model.load_state_dict(weights)
    mixes = [start_mix(ExactAccuracy(tokenizer, splits[s].train).pass_rates(model)) for s in seeds]
    mix = {k: statistics.mean(m[k] for m in mixes) for k in mixes[0]}
    print(f"RL pool at the start (exact pass rates, G=8): solved {100 * mix['solved']:.0f}%, learnable "
          f"{100 * mix['learnable']:.0f}%, hopeless {100 * mix['hopeless']:.0f}%; expected all-equal groups "
          f"{100 * mix['zero_variance_groups_expected']:.0f}%", flush=True)
    # longest runs first, so the two workers finish together
    jobs = sorted(((recipe, name, seed, weights, splits[seed]) for seed in seeds for name in recipe.runs),
                  key=lambda job: -recipe.runs[job[1]][1])
    results: dict[int, dict[str, dict]] = {seed: {} for seed in seeds}
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        for run in pool.map(run_one, jobs):
            results[run["seed"]][run["name"]] = run
            print(f"seed {run['seed']} {run['name']:20s} acc {run['curve'][0][1]:.1f} -> {final_accuracy(run):.1f} "
                  f"after {run['curve'][-1][0]:.0f} rollouts, {run['steps']} steps, all-equal groups "
                  f"{100 * run['zero_variance_share']:.0f}%, by bucket {run['per_bucket']} ({run['seconds']:.0f} s; "
                  f"{time.perf_counter() - started:.0f} s in all)", flush=True)
    results = {seed: {name: results[seed][name] for name in recipe.runs} for seed in seeds}
    lines, summary = summarize(recipe, results)
    noise = evaluation_noise(results)
    calibration_lines, calibration = calibration_report(results)
    lines.append(f"evaluation: exact pass rates on {len(splits[seeds[0]].heldout)} held-out prompts; standard "
                 f"error from the choice of prompts {noise['accuracy_se']:.2f} points per accuracy, "
                 f"{noise['paired_difference_se']:.2f} points for the paired adaptive − uniform difference")
    lines += calibration_lines
    summary.update(start_mix=mix, evaluation_noise=noise, calibration=calibration, warmup_steps=warm_steps)
    print("\n".join(lines))
    png = OUT_DIR / "accuracy_vs_rollouts.png"
    plot(results, png)
    images = REPO_ROOT / "docs" / "images"
    images.mkdir(parents=True, exist_ok=True)
    shutil.copy(png, images / "adaptive_sampling.png")
    for runs in results.values():
        for run in runs.values():
            run.pop("per_prompt_final")
    (OUT_DIR / "results.json").write_text(json.dumps(
        {"summary": summary, "table": lines, "runs": results, "seconds": time.perf_counter() - started},
        indent=1, default=str))
    ci_low, ci_high = summary["rollouts_ratio_ci"]
    print(f"total {time.perf_counter() - started:.0f} s ({workers} processes, 1 thread each); outputs in {OUT_DIR}")
    print(
        f"adaptive: rollouts_ratio={summary['rollouts_ratio']:.2f} "
        f"final_acc_adaptive={summary['runs'][ADAPTIVE]['final'][0]:.1f} "
        f"final_acc_uniform={summary['runs'][BASE]['final'][0]:.1f} ci_low={ci_low:.2f} ci_high={ci_high:.2f}",
        flush=True,
    )
    return summary


if __name__ == "__main__":
    main()
