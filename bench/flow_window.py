"""Bench: does the SDE window keep Flow-GRPO's proxy gain for less time, and lose no more gold? (issue 19)

Three presets on the CPU digits task, everything else equal: full-SDE Flow-GRPO (`flow_grpo`: every one of
the 10 denoising steps sampled with the SDE and trained), the window preset `mix_grpo` (MixGRPO + GRPO-Guard:
RatioNorm and balancing, SDE and training in a 2-step window sliding one step every 25 training steps within
the 3 noisiest steps, ODE elsewhere) and, so nothing is hidden, the plain window `mix_grpo_plain` (MixGRPO as
published: the same window sliding over the whole trajectory, no guard). Shared: the pre-trained digits flow
model, the gameable proxy reward (a linear classifier's margin) as the training target, grpokit.flow.demo's
recipe (lr 3e-4, 10 prompts × G = 8, 4 optimizer steps per rollout batch, no KL, clips scaled to D = 64),
100 training steps, seeds 0–7. Gold scores (an independent classifier and realism, at held-out noise, ODE
sampling) are never trained on.

Measured per run:
- training time: the process CPU seconds of the training steps (rollout, scoring, advantages and the
  update; evaluation left out — it is the same ODE sampling for all), on one thread. CPU time rather than
  wall time because the bench runs on shared machines, where the wall time of a run depends on its
  neighbours (the wall-time ratio, the sum of each step's logged `time/sample_seconds` +
  `time/update_seconds`, is printed too). The presets run side by side, their order rotating seed by seed
  so what load remains falls on all alike; per-step gradient-norm logging (a diagnostic copying the
  gradients per denoising step) is off.
- proxy gain: eval proxy at the end − at the start (same 100 steps for every preset).
- gold drop *at the same proxy*: for each seed the target is the lower of the two runs' final eval proxies;
  each run's drop is its gold peak up to the target − its gold at the target (linear interpolation between
  evaluations). A run that gains more proxy is thus not charged for the extra proxy (nor a slower one
  credited for stopping early). The peak-to-end drop over the same steps is printed too.

Ratios are window / full, each a ratio of means over seeds; the interval is a 95% percentile bootstrap over
seeds (the same resampled seeds for both arms of a ratio). Last line: `flow_window: time_ratio=T
proxy_gain_ratio=P gold_drop_ratio=D` for `mix_grpo`; targets T ≤ 0.5, P ≥ 0.9, D ≤ 1.0. The line before it
gives `mix_grpo_plain`'s ratios.

Run: `.venv/bin/python bench/flow_window.py` (no arguments; 24 runs on one thread, ~2 CPU-minutes — 5.5 min
wall measured on a 2-core machine shared with other jobs — plus ~1 minute the first time to pre-train the
digits model). Writes outputs/flow_window/ (per-run metrics.jsonl, results.json).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "outputs" / "flow_window"
os.environ.setdefault("GRPOKIT_CACHE_DIR", str(ROOT / "outputs" / "cache"))

import torch  # noqa: E402

from grpokit.flow.build import build_flow_trainer  # noqa: E402
from grpokit.flow.demo import FlowDemoRecipe, flow_demo_config  # noqa: E402
from grpokit.flow.digits import pretrained_digits_model  # noqa: E402
from grpokit.flow.rewards import digit_scorer  # noqa: E402

SEEDS = tuple(range(8))
FULL, WINDOW, PLAIN = "flow_grpo", "mix_grpo", "mix_grpo_plain"
PRESETS = (FULL, WINDOW, PLAIN)
RECIPE = replace(FlowDemoRecipe(), steps=100, eval_every=10, eval_samples_per_prompt=20)
GOLD, PROXY = "eval/gold/score", "eval/reward/mean"
BOOTSTRAP = 4000


def run(preset: str, seed: int) -> dict:
    run_dir = OUT / f"{preset}_seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    config = flow_demo_config(
        RECIPE, preset=preset, run_dir=run_dir, seed=seed, progress=False, log_step_grad_norms=False
    )
    trainer = build_flow_trainer(config, model=pretrained_digits_model(RECIPE.digits, progress=False))
    cpu_seconds = 0.0
    train_step = trainer.train_step

    def timed_train_step(step: int) -> dict[str, float]:  # the run loop's call; evaluation is outside it
        nonlocal cpu_seconds
        started = time.process_time()
        try:
            return train_step(step)
        finally:
            cpu_seconds += time.process_time() - started

    trainer.train_step = timed_train_step
    trainer.train()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "time/update_seconds" in r]
    evals = [(r[PROXY], r[GOLD]) for r in records if GOLD in r]
    gold = [g for _, g in evals]
    return {
        "train_cpu_seconds": cpu_seconds,
        "train_seconds": sum(r["time/sample_seconds"] + r["time/update_seconds"] for r in steps),
        "update_seconds": sum(r["time/update_seconds"] for r in steps),
        "proxy_gain": evals[-1][0] - evals[0][0],
        "proxy_end": evals[-1][0],
        "gold_drop_end": max(gold) - gold[-1],  # peak-to-end, same steps
        "evals": evals,  # (proxy, gold) at each evaluation
    }


def gold_drop_at_proxy(evals: list[tuple[float, float]], target: float) -> float:
    """Gold peak so far − gold when the eval proxy first reaches ``target`` (linear interpolation between
    evaluations; NaN if never reached). Case: [(6, .9), (8, .95), (10, .5)], target 9 → .95 − .725 = .225."""
    peak = -math.inf
    for (p0, g0), (p1, g1) in zip(evals, evals[1:]):
        peak = max(peak, g0)
        if p0 < target <= p1:
            gold = g0 + (g1 - g0) * (target - p0) / (p1 - p0)
            return max(peak, gold) - gold
    return math.nan


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def ratio_with_interval(window: list[float], full: list[float]) -> tuple[float, float, float]:
    """mean(window) / mean(full) over seeds, and its 95% percentile bootstrap interval (seeds resampled
    together for both arms, fixed generator so the interval is reproducible)."""
    generator = torch.Generator().manual_seed(0)
    w, f = torch.tensor(window, dtype=torch.float64), torch.tensor(full, dtype=torch.float64)
    draws = torch.randint(0, len(w), (BOOTSTRAP, len(w)), generator=generator)
    ratios = (w[draws].mean(1) / f[draws].mean(1)).sort().values
    return float(w.mean() / f.mean()), float(ratios[int(0.025 * BOOTSTRAP)]), float(ratios[int(0.975 * BOOTSTRAP) - 1])


def compare(results: dict, window: str) -> dict[str, tuple[float, float, float]]:
    full_runs, window_runs = results[FULL], results[window]
    targets = {s: min(full_runs[s]["proxy_end"], window_runs[s]["proxy_end"]) for s in SEEDS}
    # the target is a run's own final proxy for one of the two: nudge it inside the last interval
    drops = {
        name: [gold_drop_at_proxy(runs[s]["evals"], targets[s] - 1e-6) for s in SEEDS]
        for name, runs in ((FULL, full_runs), (window, window_runs))
    }
    return {
        "time_ratio": ratio_with_interval(
            [window_runs[s]["train_cpu_seconds"] for s in SEEDS], [full_runs[s]["train_cpu_seconds"] for s in SEEDS]
        ),
        "wall_time_ratio": ratio_with_interval(
            [window_runs[s]["train_seconds"] for s in SEEDS], [full_runs[s]["train_seconds"] for s in SEEDS]
        ),
        "proxy_gain_ratio": ratio_with_interval(
            [window_runs[s]["proxy_gain"] for s in SEEDS], [full_runs[s]["proxy_gain"] for s in SEEDS]
        ),
        "gold_drop_ratio": ratio_with_interval(drops[window], drops[FULL]),
        "gold_drop_end_ratio": ratio_with_interval(
            [window_runs[s]["gold_drop_end"] for s in SEEDS], [full_runs[s]["gold_drop_end"] for s in SEEDS]
        ),
        "drops_at_target": drops,
    }


def line(ratios: dict) -> str:
    return " ".join(f"{k}={ratios[k][0]:.2f}" for k in ("time_ratio", "proxy_gain_ratio", "gold_drop_ratio"))


def main() -> None:
    torch.set_num_threads(1)
    started = time.perf_counter()
    OUT.mkdir(parents=True, exist_ok=True)
    pretrained_digits_model(RECIPE.digits)  # cached after the first run
    digit_scorer()
    results: dict[str, dict[int, dict]] = {p: {} for p in PRESETS}
    for seed in SEEDS:
        order = PRESETS[seed % len(PRESETS) :] + PRESETS[: seed % len(PRESETS)]
        for preset in order:
            results[preset][seed] = r = run(preset, seed)
            print(
                f"{preset:14s} seed {seed}: train {r['train_cpu_seconds']:.1f} CPU s ({r['train_seconds']:.1f} s wall, "
                f"update {r['update_seconds']:.1f} s), "
                f"proxy +{r['proxy_gain']:.2f} (end {r['proxy_end']:.2f}), gold peak-to-end "
                f"−{r['gold_drop_end']:.3f} (end {r['evals'][-1][1]:.2f}) [{time.perf_counter() - started:.0f} s]",
                flush=True,
            )
    for preset, runs in results.items():
        print(
            f"{preset:14s} mean over {len(SEEDS)} seeds: train {mean(r['train_cpu_seconds'] for r in runs.values()):.1f} "
            f"CPU s ({mean(r['train_seconds'] for r in runs.values()):.1f} s wall), "
            f"proxy gain {mean(r['proxy_gain'] for r in runs.values()):.2f}, gold peak-to-end drop "
            f"{mean(r['gold_drop_end'] for r in runs.values()):.3f}"
        )
    verdicts = {window: compare(results, window) for window in (WINDOW, PLAIN)}
    for window, ratios in verdicts.items():
        drops = ratios["drops_at_target"]
        print(
            f"{window} / {FULL}, gold drop at the same proxy (per seed, the lower final proxy of the pair): "
            f"{mean(drops[window]):.3f} vs {mean(drops[FULL]):.3f}; 95% bootstrap intervals over seeds: "
            + ", ".join(
                f"{k} {v[0]:.2f} [{v[1]:.2f}, {v[2]:.2f}]" for k, v in ratios.items() if k != "drops_at_target"
            )
        )
    (OUT / "results.json").write_text(
        json.dumps({"runs": results, "seeds": SEEDS, "ratios": verdicts}, indent=1)
    )
    print(f"{time.perf_counter() - started:.0f} s in all; results in {OUT / 'results.json'}")
    print(f"plain window ({PLAIN}, no guard): {line(verdicts[PLAIN])}")
    print(f"flow_window: {line(verdicts[WINDOW])}", flush=True)


if __name__ == "__main__":
    main()
