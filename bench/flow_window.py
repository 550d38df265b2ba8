"""Bench: does MixGRPO's SDE window keep Flow-GRPO's proxy gain for less training time? (issue 19)

Full-SDE Flow-GRPO (`flow_grpo`: every one of the 10 denoising steps sampled with the SDE and trained)
against the window preset (`mix_grpo`: SDE and training only in a 2-step window that slides one step
every 25 training steps, ODE elsewhere) on the CPU digits task, with everything else equal: the
pre-trained digits flow model, the gameable proxy reward (a linear classifier's margin) as the training
target, grpokit.flow.demo's recipe (lr 3e-4, 10 prompts × G = 8, 4 optimizer steps per rollout batch, no
KL, clips scaled to D = 64), 100 training steps, seeds 0, 1, 2. Gold scores (an independent classifier
and realism, at held-out noise, ODE sampling) are never trained on.

Measured per run:
- training time: the sum of each step's `time/sample_seconds` + `time/update_seconds` (rollout, scoring,
  advantages and the update; evaluation left out — it is the same ODE sampling for both). The two presets
  alternate run by run so load on a shared machine falls on both alike; per-step gradient-norm logging
  (a diagnostic copying the gradients per denoising step) is off for both.
- proxy gain: eval proxy at the end − at the start; gold drop: the gold score's peak-to-end decline.

Last line: `flow_window: time_ratio=T proxy_gain_ratio=P gold_drop_ratio=D` (window / full, each the
ratio of the means over seeds); targets T ≤ 0.5, P ≥ 0.9, D ≤ 1.0.

Run: `.venv/bin/python bench/flow_window.py` (no arguments; ~6 minutes on one CPU thread, plus ~1 minute
the first time to pre-train the digits model). Writes outputs/flow_window/ (per-run metrics.jsonl,
results.json).
"""

from __future__ import annotations

import json
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

SEEDS = (0, 1, 2)
PRESETS = ("flow_grpo", "mix_grpo")  # full, window
RECIPE = replace(FlowDemoRecipe(), steps=100, eval_every=10, eval_samples_per_prompt=20)
GOLD, PROXY = "eval/gold/score", "eval/reward/mean"


def run(preset: str, seed: int) -> dict[str, float]:
    run_dir = OUT / f"{preset}_seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    config = flow_demo_config(
        RECIPE, preset=preset, run_dir=run_dir, seed=seed, progress=False, log_step_grad_norms=False
    )
    trainer = build_flow_trainer(config, model=pretrained_digits_model(RECIPE.digits, progress=False))
    trainer.train()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "time/update_seconds" in r]
    evals = [r for r in records if GOLD in r]
    gold, proxy = [r[GOLD] for r in evals], [r[PROXY] for r in evals]
    return {
        "train_seconds": sum(r["time/sample_seconds"] + r["time/update_seconds"] for r in steps),
        "update_seconds": sum(r["time/update_seconds"] for r in steps),
        "proxy_gain": proxy[-1] - proxy[0],
        "gold_drop": max(gold) - gold[-1],
        "gold_change": gold[-1] - gold[0],
        "proxy_end": proxy[-1],
        "evals": list(zip(proxy, gold)),  # (proxy, gold) at each evaluation
    }


def gold_at_proxy(evals: list[tuple[float, float]], target: float) -> float:
    """Gold when the eval proxy first reaches ``target`` (linear interpolation; NaN if never)."""
    for (p0, g0), (p1, g1) in zip(evals, evals[1:]):
        if p0 < target <= p1:
            return g0 + (g1 - g0) * (target - p0) / (p1 - p0)
    return float("nan")


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def main() -> None:
    torch.set_num_threads(1)
    started = time.perf_counter()
    OUT.mkdir(parents=True, exist_ok=True)
    pretrained_digits_model(RECIPE.digits)  # cached after the first run
    digit_scorer()
    results: dict[str, dict[int, dict[str, float]]] = {p: {} for p in PRESETS}
    for seed in SEEDS:
        for preset in PRESETS:
            results[preset][seed] = r = run(preset, seed)
            print(
                f"{preset:10s} seed {seed}: train {r['train_seconds']:.1f} s (update {r['update_seconds']:.1f} s), "
                f"proxy +{r['proxy_gain']:.2f} (end {r['proxy_end']:.2f}), gold peak-to-end −{r['gold_drop']:.3f} "
                f"(change {r['gold_change']:+.3f}) [{time.perf_counter() - started:.0f} s]",
                flush=True,
            )
    summary = {
        p: {k: mean(r[k] for r in runs.values()) for k in runs[SEEDS[0]] if k != "evals"}
        for p, runs in results.items()
    }
    # The same proxy level: each seed's gold change from the start when the window run first reaches the
    # full run's final proxy, against the full run's gold change at its end.
    matched = {
        "flow_grpo": mean(results["flow_grpo"][s]["gold_change"] for s in SEEDS),
        "mix_grpo": mean(
            gold_at_proxy(results["mix_grpo"][s]["evals"], results["flow_grpo"][s]["proxy_end"])
            - results["mix_grpo"][s]["evals"][0][1]
            for s in SEEDS
        ),
    }
    print(
        f"gold change at flow_grpo's final proxy (per seed, mean): flow_grpo {matched['flow_grpo']:+.3f}, "
        f"mix_grpo {matched['mix_grpo']:+.3f}"
    )
    for preset, s in summary.items():
        print(
            f"{preset:10s} mean: train {s['train_seconds']:.1f} s, proxy gain {s['proxy_gain']:.2f}, "
            f"gold drop {s['gold_drop']:.3f}, gold change {s['gold_change']:+.3f}"
        )
    full, window = summary["flow_grpo"], summary["mix_grpo"]
    ratios = {
        "time_ratio": window["train_seconds"] / full["train_seconds"],
        "proxy_gain_ratio": window["proxy_gain"] / full["proxy_gain"],
        "gold_drop_ratio": window["gold_drop"] / full["gold_drop"] if full["gold_drop"] > 0 else float("nan"),
    }
    (OUT / "results.json").write_text(json.dumps({"runs": results, "mean": summary, "matched_gold_change": matched, **ratios}, indent=1))
    print(f"{time.perf_counter() - started:.0f} s in all; results in {OUT / 'results.json'}")
    print(
        f"flow_window: time_ratio={ratios['time_ratio']:.2f} proxy_gain_ratio={ratios['proxy_gain_ratio']:.2f} "
        f"gold_drop_ratio={ratios['gold_drop_ratio']:.2f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
