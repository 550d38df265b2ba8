"""Entropy collapse under plain GRPO with heavy sample reuse, and the entropy controls from the core.

Task and model as `reward_hacking.py` (two-digit additions, a 0.2M-parameter model warmed up to
~30% sampled accuracy), exact-match reward. The collapsing recipe: lr 5e-4 (the demo's) but PPO-style
reuse of every rollout, μ = 4 passes × 4 mini-batches = 16 optimizer steps per batch of samples, so
the policy moves far from the sampling policy within a step: the regime where the symmetric clip
lets likely tokens grow and keeps unlikely ones down (DAPO's motivation for clip-higher), and where
the Cov controls have tokens to act on.

Arms, every other setting equal (presets via `algorithm.overrides`, nothing new wired):
- grpo: ε = 0.2 both sides, no entropy control;
- clip_higher+kl_cov (the "guarded" arm, declared before the 3-seed run): ε_high = 0.28 (DAPO) +
  KL-Cov (|log π − log π_old| penalty, coefficient 1, on the 5% of tokens with the largest cov);
- clip_higher+clip_cov (with `--arms all`): ε_high = 0.28 + Clip-Cov (detach 2% of the tokens
  whose cov(log π, A) lies in (1, 5)).
The paper's Cov fractions (2e-4, 2e-3) select less than one token of our ~900-token batches, so
they are scaled up to select a few per mini-batch. An entropy alarm (floor 0.25 nats/token, about
half the warmed-up policy's entropy, 3 steps in a row, action "warn") watches every arm.

Other regimes for the note: `--learning-rate 1e-3 --iterations 1 --arms all` (no collapse: the
controls only slow learning) and `--learning-rate 2e-3 --iterations 1 --seeds 0 --arms all` (every
arm is destroyed within the first step, before any clip can act).

Last line (means over the seeds; entropy in nats per token averaged over the last 10 steps,
accuracy = held-out sampled accuracy mean@4 in percent at the last step):
`entropy_collapse: entropy_end_grpo=E1 entropy_end_guarded=E2 acc_grpo=A1 acc_guarded=A2`
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _guards_setup import OUTPUTS, build, fresh_run_dir, grpo_config  # noqa: E402

SEEDS = (0, 1, 2)
STEPS = 100
LEARNING_RATE = 5e-4
ITERATIONS = 4  # μ: passes over each rollout batch
MINI_BATCHES = 4  # optimizer steps per pass
EVAL_EVERY = 25
ENTROPY_FLOOR = 0.25
ENTROPY_WINDOW = 10  # steps averaged for "entropy at the end"
ARMS: dict[str, dict] = {
    "grpo": {},
    "clip_higher+kl_cov": {"eps_high": 0.28, "kl_cov": {"top_fraction": 0.05, "coef": 1.0}},
    "clip_higher+clip_cov": {
        "eps_high": 0.28,
        "clip_cov": {"clip_ratio": 0.02, "cov_low": 1.0, "cov_high": 5.0},
    },
}
DEFAULT_ARMS = (
    "grpo",
    "clip_higher+kl_cov",
)  # the third arm fits the 12-minute budget only with `--arms all`
GUARDED = "clip_higher+kl_cov"
OUT = OUTPUTS / "entropy_collapse"


def run_arm(seed: int, arm: str, args: argparse.Namespace) -> dict:
    from grpokit.monitoring import read_metrics
    from grpokit.trainers.lm_build import build_trainer
    from grpokit.trainers.lm_config import load_lm_config

    setup = build(seed)
    run_dir = fresh_run_dir(args.out / f"seed{seed}" / arm.replace("+", "_"))
    config = load_lm_config(
        grpo_config(
            run_dir,
            seed,
            steps=args.steps,
            learning_rate=args.learning_rate,
            max_new_tokens=5,
            eval_every=EVAL_EVERY,
            overrides=ARMS[arm],
            training={"num_iterations": args.iterations, "mini_batches": args.mini_batches},
            guards={"entropy": {"floor": ENTROPY_FLOOR, "patience": 3, "action": "warn"}},
        )
    )
    trainer = build_trainer(
        config, policy=setup.policy, train_data=setup.train_data, eval_data=setup.heldout_data
    )
    started = time.perf_counter()
    trainer.train()
    records = read_metrics(run_dir / "metrics.jsonl")
    entropy = [r["train/entropy_mean"] for r in records if "train/entropy_mean" in r]
    evals = [r for r in records if "eval/mean@4" in r]
    alarms = [r["step"] for r in records if r.get("alarm/entropy_collapse")]
    result = {
        "entropy_end": statistics.mean(entropy[-ENTROPY_WINDOW:]),
        "acc_start": evals[0]["eval/mean@4"],
        "acc_end": evals[-1]["eval/mean@4"],
        "entropy_alarm_step": alarms[0] if alarms else None,
        "seconds": time.perf_counter() - started,
    }
    print(
        f"  seed {seed} {arm}: entropy_end {result['entropy_end']:.3f}, accuracy {result['acc_start']:.1f} -> "
        f"{result['acc_end']:.1f}, entropy alarm at step {result['entropy_alarm_step']}, "
        f"{result['seconds']:.0f} s",
        flush=True,
    )
    return result


def plot(out: Path, seeds: list[int], arms: list[str]) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from grpokit.monitoring import read_metrics
    from grpokit.monitoring.plots import metric_series

    figure = Figure(figsize=(10, 3.6), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    entropy_axes, accuracy_axes = figure.subplots(1, 2)
    for arm in arms:
        for axes, key in ((entropy_axes, "train/entropy_mean"), (accuracy_axes, "eval/mean@4")):
            series = [
                metric_series(
                    read_metrics(out / f"seed{seed}" / arm.replace("+", "_") / "metrics.jsonl"), key
                )
                for seed in seeds
            ]
            mean = [statistics.mean(values) for values in zip(*(values for _, values in series))]
            axes.plot(
                series[0][0][: len(mean)], mean, label=arm, linewidth=1.6 if arm in DEFAULT_ARMS else 1.0
            )
    entropy_axes.axhline(ENTROPY_FLOOR, color="tab:red", linestyle="--", linewidth=0.9, label="alarm floor")
    entropy_axes.set_title("entropy per token (nats), mean over seeds", fontsize=10)
    accuracy_axes.set_title("held-out sampled accuracy mean@4 (%), mean over seeds", fontsize=10)
    for axes in (entropy_axes, accuracy_axes):
        axes.set_xlabel("GRPO step")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    path = out / "entropy_collapse.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--learning-rate", type=float, default=LEARNING_RATE)
    parser.add_argument("--iterations", type=int, default=ITERATIONS, help="μ: passes over each rollout")
    parser.add_argument("--mini-batches", type=int, default=MINI_BATCHES)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--arms", choices=("default", "all"), default="default")
    parser.add_argument("--out", type=Path, default=OUT, help="where the runs and the plot go")
    args = parser.parse_args()
    arms = list(ARMS) if args.arms == "all" else list(DEFAULT_ARMS)
    started = time.perf_counter()
    print(
        f"entropy_collapse: {len(args.seeds)} seeds × {len(arms)} arms, {args.steps} GRPO steps at lr "
        f"{args.learning_rate:g}, μ={args.iterations} × {args.mini_batches} mini-batches per rollout "
        f"(1 CPU thread; the machine may be shared)",
        flush=True,
    )
    results: dict[str, list[dict]] = {arm: [] for arm in arms}
    for seed in args.seeds:
        for arm in arms:
            results[arm].append(run_arm(seed, arm, args))
    for arm, rows in results.items():
        per_seed = ", ".join(format(r["acc_end"], ".1f") for r in rows)
        print(
            f"{arm:>22}: entropy_end {statistics.mean(r['entropy_end'] for r in rows):.3f}  "
            f"acc_end {statistics.mean(r['acc_end'] for r in rows):.1f} (per seed: {per_seed}); "
            f"entropy alarm steps {[r['entropy_alarm_step'] for r in rows]}",
            flush=True,
        )
    png = plot(args.out, args.seeds, arms)
    print(
        f"plot: {png}; per-run report.html under {args.out}/seed*/*/; {time.perf_counter() - started:.0f} s in all",
        flush=True,
    )

    def mean(arm: str, key: str) -> float:
        return statistics.mean(r[key] for r in results[arm])

    print(
        f"entropy_collapse: entropy_end_grpo={mean('grpo', 'entropy_end'):.3f} "
        f"entropy_end_guarded={mean(GUARDED, 'entropy_end'):.3f} acc_grpo={mean('grpo', 'acc_end'):.1f} "
        f"acc_guarded={mean(GUARDED, 'acc_end'):.1f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
