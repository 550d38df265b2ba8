"""Flow-GRPO vs GRPO-Guard on the CPU digits task: does the guard curb over-optimization?

Both presets fine-tune the same pre-trained digits flow model (``grpokit.flow.demo.FlowDemoRecipe``: lr 3e-4,
10 SDE steps, 4 optimizer steps per rollout batch, clips scaled to D = 64) on the gameable proxy
(a linear classifier's margin), with the same seeds, budget and hyper-parameters — the same small KL to
the reference too (β = 0.005, the Gaussian KL of every step's means). Gold scores (an independent
classifier and realism against the data set, at held-out noise) are never trained on. The budget was
calibrated on plain Flow-GRPO alone — lr and steps such that its gold score falls well below its peak
while the proxy still rises — before the guard was run with the same settings.

Why the KL (issue 19): without it (the `*_no_kl` rows, this experiment's first version) the guard only
*delays* over-optimization — a clip bounds each update against the sampling policy, nothing bounds the
drift from the reference — and tighter clips (½, ¼ of ε) or an SDE window on top of the guard move the gold
at a given proxy level hardly at all. A KL at every step anchors the policy (the mean-form KL
‖Δμ‖²/(2s²D) weighs the low-noise steps most, where the realism is lost; the KL on the 3 noisiest steps only
changed nothing). With it, the guard keeps the gold nearly flat over this budget (in 250-step runs it falls
after step ~150, later and less than without), and Flow-GRPO with the same KL does not.

Two ablations tell the guard's parts apart: RatioNorm without balancing, balancing without RatioNorm.

Run: ``.venv/bin/python experiments/flow_guard.py`` (18 runs, ~3 minutes on one CPU thread; 143 s measured). Writes
``outputs/flow_guard/``: per-run metrics.jsonl, ``flow_guard.png`` (copied to docs/images/), sample grids.
Last line: ``flow_guard: proxy_gain_base=… proxy_gain_guard=… gold_drop_base=… gold_drop_guard=…
ratio_mean_base=… ratio_mean_guard=…``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "outputs" / "flow_guard"
os.environ.setdefault("GRPOKIT_CACHE_DIR", str(ROOT / "outputs" / "cache"))

import torch  # noqa: E402

from grpokit.flow.build import build_flow_trainer  # noqa: E402
from grpokit.flow.demo import FlowDemoRecipe, flow_demo_config  # noqa: E402
from grpokit.flow.digits import pretrained_digits_model  # noqa: E402
from grpokit.flow.rewards import digit_scorer  # noqa: E402

SEEDS = (0, 1, 2)
RECIPE = FlowDemoRecipe(steps=100, eval_every=10, eval_samples_per_prompt=20)
KL = 0.005  # β of the KL to the reference, for every variant but the *_no_kl ones (the recipe has β = 0)
# name -> (preset, overrides of the guard switches and β)
VARIANTS = {
    "flow_grpo": ("flow_grpo", {"beta": KL}),
    "flow_grpo_guard": ("flow_grpo_guard", {"beta": KL}),
    "ratio_norm_only": ("flow_grpo_guard", {"step_balancing": False, "beta": KL}),
    "balancing_only": ("flow_grpo", {"step_balancing": True, "beta": KL}),
    "flow_grpo_no_kl": ("flow_grpo", {}),
    "guard_no_kl": ("flow_grpo_guard", {}),
}
GOLD, PROXY = "eval/gold/score", "eval/reward/mean"


def run(variant: str, seed: int) -> list[dict]:
    preset, switches = VARIANTS[variant]
    run_dir = OUT / f"{variant}_seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    config = flow_demo_config(RECIPE, preset=preset, run_dir=run_dir, seed=seed, progress=False)
    config.algorithm.overrides.update(switches)
    trainer = build_flow_trainer(config, model=pretrained_digits_model(RECIPE.digits, progress=False))
    trainer.train()
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def summarise(records: list[dict]) -> dict[str, float]:
    evals = [r for r in records if GOLD in r]
    gold, proxy = [r[GOLD] for r in evals], [r[PROXY] for r in evals]
    first = next(r for r in records if r["step"] == 1)
    return {
        "proxy_gain": proxy[-1] - proxy[0],
        "gold_change": gold[-1] - gold[0],
        "gold_drop": max(gold) - gold[-1],  # peak-to-end decline, >= 0
        "gold_end": gold[-1],
        "ratio_mean": first["train/ratio_mean"],  # the ratio the clip saw, first update, mean over steps
        "raw_ratio_mean": first["train/raw_ratio_mean"],
    }


def gold_at_proxy(records: list[dict], target: float) -> float:
    """Gold score when the eval proxy first reaches ``target`` (linear interpolation; NaN if never)."""
    evals = [(r[PROXY], r[GOLD]) for r in records if GOLD in r]
    for (p0, g0), (p1, g1) in zip(evals, evals[1:]):
        if p0 < target <= p1:
            return g0 + (g1 - g0) * (target - p0) / (p1 - p0)
    return math.nan


def mean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def plot(results: dict[str, dict[int, list[dict]]], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(15, 8), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 3)
    colours = {
        "flow_grpo": "tab:red",
        "flow_grpo_guard": "tab:blue",
        "ratio_norm_only": "tab:cyan",
        "balancing_only": "tab:orange",
        "flow_grpo_no_kl": "tab:pink",
        "guard_no_kl": "tab:purple",
    }
    for variant, runs in results.items():
        style = {
            "color": colours[variant],
            "lw": 2 if variant in ("flow_grpo", "flow_grpo_guard") else 1,
            "ls": "-" if variant in ("flow_grpo", "flow_grpo_guard") else "--",
        }
        for key, ax in ((PROXY, axes[0][0]), (GOLD, axes[0][1])):
            series = [[(r["step"], r[key]) for r in records if key in r] for records in runs.values()]
            steps = [s for s, _ in series[0]]
            values = torch.tensor([[v for _, v in s] for s in series])
            ax.plot(steps, values.mean(0), label=variant, **style)
            ax.fill_between(
                steps, values.min(0).values, values.max(0).values, color=colours[variant], alpha=0.12
            )
        proxies = [[r[PROXY] for r in records if GOLD in r] for records in runs.values()]
        golds = [[r[GOLD] for r in records if GOLD in r] for records in runs.values()]
        axes[0][2].plot(
            torch.tensor(proxies).mean(0), torch.tensor(golds).mean(0), marker=".", label=variant, **style
        )
        if variant not in ("flow_grpo", "flow_grpo_guard"):
            continue
        first = [next(r for r in records if r["step"] == 1) for records in runs.values()]
        k = sorted({int(key[9:11]) for key in first[0] if key.startswith("flow/step")})
        used = "normed" if variant == "flow_grpo_guard" else "raw"
        for name, ax in ((f"{used}_ratio_mean", axes[1][0]), ("grad_norm", axes[1][2])):
            values = [mean([f[f"flow/step{i:02d}/{name}"] for f in first]) for i in k]
            ax.plot(k, values, marker="o", label=f"{variant} ({name})", **style)
        if variant == "flow_grpo_guard":  # the guard's raw ratio: the left shift is still there underneath
            values = [mean([f[f"flow/step{i:02d}/raw_ratio_mean"] for f in first]) for i in k]
            axes[1][0].plot(
                k,
                values,
                marker="x",
                color=colours[variant],
                ls=":",
                label="flow_grpo_guard (raw, not clipped)",
            )
        for side, marker in (("low", "v"), ("high", "^")):
            values = [
                mean(
                    [
                        mean([r[f"flow/step{i:02d}/{used}_clip_{side}"] for r in records if r["step"] >= 1])
                        for records in runs.values()
                    ]
                )
                for i in k
            ]
            axes[1][1].plot(k, values, marker=marker, label=f"{variant} clip {side}", **style)
    titles = [
        ("proxy (linear-classifier margin), eval", "step"),
        ("gold score (recognised and realistic)", "step"),
        ("gold vs proxy (mean over seeds)", "proxy"),
        ("ratio mean per denoising step, first update", "denoising step (0 = noise)"),
        ("active clip fraction per denoising step, whole run", "denoising step"),
        ("gradient norm per denoising step, first update", "denoising step"),
    ]
    for ax, (title, xlabel) in zip([a for row in axes for a in row], titles):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[1][0].axhline(1.0, color="grey", lw=0.8)
    axes[1][2].set_yscale("log")
    figure.suptitle(
        f"Flow-GRPO vs GRPO-Guard (both with KL β={KL:g}), digits flow model, {len(SEEDS)} seeds (band: min-max)",
        fontsize=11,
    )
    figure.savefig(path)


def sample_grid(path: Path, columns: int = 8) -> None:
    """Seed 0's held-out samples (the first ``columns`` of each digit's row) before training, after
    flow_grpo and after flow_grpo_guard, side by side under a caption."""
    from PIL import Image, ImageDraw

    last = f"step_{RECIPE.steps:06d}.png"
    panels = [
        ("start", OUT / "flow_grpo_seed0" / "samples" / "step_000000.png"),
        (f"flow_grpo, step {RECIPE.steps}", OUT / "flow_grpo_seed0" / "samples" / last),
        (f"flow_grpo_guard, step {RECIPE.steps}", OUT / "flow_grpo_guard_seed0" / "samples" / last),
    ]
    tile = 8 * 8 + 1  # 8x8 pixels scaled 8x, plus the 1-pixel gap (grpokit.flow.images.save_image_grid)
    crops = [
        (title, Image.open(file).crop((0, 0, 1 + columns * tile, Image.open(file).height)))
        for title, file in panels
    ]
    gap, header = 24, 28
    canvas = Image.new(
        "RGB",
        (sum(c.width for _, c in crops) + gap * (len(crops) - 1), crops[0][1].height + header),
        (255, 255, 255),
    )
    draw, left = ImageDraw.Draw(canvas), 0
    for title, crop in crops:
        canvas.paste(crop, (left, header))
        draw.text((left + 4, 6), title, fill=(0, 0, 0))
        left += crop.width + gap
    canvas.save(path)


def main() -> None:
    torch.set_num_threads(1)
    started = time.perf_counter()
    OUT.mkdir(parents=True, exist_ok=True)
    pretrained_digits_model(RECIPE.digits)  # cached after the first run
    digit_scorer()
    results: dict[str, dict[int, list[dict]]] = {v: {} for v in VARIANTS}
    for variant in VARIANTS:
        for seed in SEEDS:
            results[variant][seed] = records = run(variant, seed)
            s = summarise(records)
            print(
                f"{variant:16s} seed {seed}: proxy +{s['proxy_gain']:.2f}, gold {s['gold_change']:+.3f} "
                f"(peak-to-end −{s['gold_drop']:.3f}, end {s['gold_end']:.2f}), ratio mean at first update "
                f"{s['ratio_mean']:.6f} (raw {s['raw_ratio_mean']:.6f}) [{time.perf_counter() - started:.0f} s]",
                flush=True,
            )

    summary = {
        v: {key: mean([summarise(r)[key] for r in runs.values()]) for key in summarise(runs[0])}
        for v, runs in results.items()
    }
    target = mean([[r[PROXY] for r in records if GOLD in r][-1] for records in results["flow_grpo"].values()])
    for variant, runs in results.items():
        s = summary[variant]
        matched = mean([gold_at_proxy(records, target) for records in runs.values()])
        print(
            f"{variant:16s} mean: proxy gain {s['proxy_gain']:.2f}, gold {s['gold_change']:+.3f}, "
            f"peak-to-end drop {s['gold_drop']:.3f}, gold at flow_grpo's final proxy {target:.1f}: {matched:.3f}, "
            f"ratio mean {s['ratio_mean']:.6f} (raw {s['raw_ratio_mean']:.6f})"
        )
    plot(results, OUT / "flow_guard.png")
    sample_grid(OUT / "flow_guard_samples.png")
    images = ROOT / "docs" / "images"
    images.mkdir(parents=True, exist_ok=True)
    shutil.copy(OUT / "flow_guard.png", images / "flow_guard.png")
    shutil.copy(OUT / "flow_guard_samples.png", images / "flow_guard_samples.png")
    base, guard = summary["flow_grpo"], summary["flow_grpo_guard"]
    print(
        f"plot: {OUT / 'flow_guard.png'}; samples (seed 0: start | flow_grpo | flow_grpo_guard): "
        f"{OUT / 'flow_guard_samples.png'}; {time.perf_counter() - started:.0f} s in all"
    )
    print(
        f"flow_guard: proxy_gain_base={base['proxy_gain']:.2f} proxy_gain_guard={guard['proxy_gain']:.2f} "
        f"gold_drop_base={base['gold_drop']:.3f} gold_drop_guard={guard['gold_drop']:.3f} "
        f"ratio_mean_base={base['ratio_mean']:.6f} ratio_mean_guard={guard['ratio_mean']:.6f}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
