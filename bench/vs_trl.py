"""grpokit vs TRL's GRPOTrainer, side by side, on this machine.

Same tiny Qwen2 (2.2M parameters, vocab 32,768), same tokenizer, arithmetic prompts, reward,
sampling (T = 1, no top-k/top-p, 64 new tokens) and optimizer settings; G = 8, 16 prompts per
step, 4 sequences of 32 per micro-batch, μ ∈ {1, 2}, β ∈ {0, 0.04}. Each (system, μ, β) runs in
its own process (clean peak RSS), the two systems alternating; each process first runs one small
untimed warm-up step. A "step" is one GRPO iteration: one rollout of 128 completions and μ
passes of updates (μ optimizer steps for TRL, which counts those). Also: the CPU's single-thread
matmul FLOP/s, each system's achieved fraction of it, and a step-0 check that both trainers give
the same advantages, reference log-probs, loss and gradients on the same batch.

Run: `.venv/bin/python bench/vs_trl.py` (≈ 6–12 min on a shared 2-core CPU; env VS_TRL_STEPS=k
measures k steps per configuration instead of 1). Writes outputs/bench/vs_trl.{jsonl,png}.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
OUTPUTS = REPO / "outputs" / "bench"
SYSTEMS_SCRIPT = BENCH / "_vs_trl_systems.py"
CONFIGS = [(1, 0.0), (1, 0.04), (2, 0.0), (2, 0.04)]  # (μ, β)
MEASURED_STEPS = int(os.environ.get("VS_TRL_STEPS", "1"))

sys.path.insert(0, str(BENCH))
from _vs_trl_systems import MODEL, NUM_GENERATIONS, PROMPTS_PER_STEP, VOCAB_SIZE, prompt_records  # noqa: E402


# ---------------------------------------------------------------------------------------------- FLOPs
def matmul_flops_per_second(size: int = 1024, repeats: int = 5) -> float:
    """Best-of-`repeats` single-thread float32 (size × size) @ (size × size): 2·size³ FLOPs per product."""
    torch.set_num_threads(1)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def forward_flops_per_token(context: float, *, with_head: bool) -> float:
    """2·(decoder linear weights) + attention (4·context·hidden per layer) [+ lm_head 2·hidden·vocab]."""
    h, layers, heads, kv_heads = (
        MODEL["hidden_size"],
        MODEL["num_layers"],
        MODEL["num_heads"],
        MODEL["num_kv_heads"],
    )
    kv_width = kv_heads * h // heads
    linear_weights = layers * (2 * h * h + 2 * h * kv_width + 3 * h * MODEL["intermediate_size"])
    flops = 2 * linear_weights + layers * 4 * context * h
    return flops + (2 * h * VOCAB_SIZE if with_head else 0)


def nominal_step_flops(
    mu: int, beta: float, completion_tokens: float, prompt_tokens: float
) -> tuple[float, float]:
    """(rollout, training) FLOPs of one step that the algorithm needs (lm_head only where a token is predicted).

    Rollout: one forward per generated token (+ the prompts' prefill). Training: μ forward+backward
    passes (3× a forward), one more forward for the old log-probs when μ > 1, one for π_ref when β > 0.
    """
    rows = PROMPTS_PER_STEP * NUM_GENERATIONS
    completion_per_row, prompt_per_row = completion_tokens / rows, prompt_tokens / rows
    rollout = completion_tokens * forward_flops_per_token(
        prompt_per_row + completion_per_row / 2, with_head=True
    )
    rollout += prompt_tokens / NUM_GENERATIONS * forward_flops_per_token(prompt_per_row / 2, with_head=False)
    context = (prompt_per_row + completion_per_row) / 2
    one_forward = completion_tokens * forward_flops_per_token(
        context, with_head=True
    ) + prompt_tokens * forward_flops_per_token(context, with_head=False)
    forwards = 3 * mu + (1 if mu > 1 else 0) + (1 if beta > 0 else 0)
    return rollout, forwards * one_forward


# ---------------------------------------------------------------------------------------------- running
def run_system(role: str, mu: int, beta: float, steps: int) -> dict:
    """Run one system (or the check) in a fresh process; its log goes to outputs/bench/vs_trl_logs/."""
    name = f"{role}_mu{mu}_beta{beta}"
    result_path = OUTPUTS / "vs_trl_logs" / f"{name}.json"
    log_path = result_path.with_suffix(".log")
    started = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, str(SYSTEMS_SCRIPT), role, str(mu), str(beta), str(steps), str(result_path)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=REPO,
        )
        for line in process.stdout:
            log.write(line)
            if line.startswith("    "):  # the workers' own progress lines
                print(line, end="", flush=True)
        if process.wait() != 0:
            raise RuntimeError(f"{name} failed; see {log_path}")
    result = json.loads(result_path.read_text())
    result["process_seconds"] = time.perf_counter() - started
    return result


def summarize(raw: dict, mu: int, beta: float, peak_flops: float, prompt_tokens: float) -> dict:
    step = statistics.mean(raw["step_seconds"])
    cpu = statistics.mean(raw["step_cpu_seconds"])
    rollout = statistics.mean(seconds for seconds, _ in raw["rollouts"])
    tokens = statistics.mean(count for _, count in raw["rollouts"])
    training = step - rollout
    flops = sum(nominal_step_flops(mu, beta, tokens, prompt_tokens))
    return {
        "seconds_per_step": step,
        "cpu_seconds_per_step": cpu,
        "rollout_seconds": rollout,
        "training_seconds": training,
        "completion_tokens_per_step": tokens,
        "rollout_tokens_per_second": tokens / rollout,
        "training_tokens_per_second": tokens * mu / training,
        "peak_rss_mib": raw["peak_rss_mib"],
        "flop_fraction": flops / (step * peak_flops),  # of wall-clock time
        "flop_fraction_of_cpu_time": flops / (cpu * peak_flops),  # of the CPU time the process got
        "steps_measured": len(raw["step_seconds"]),
    }


RATIO_KEYS = (
    "seconds_per_step",
    "cpu_seconds_per_step",
    "rollout_tokens_per_second",
    "training_tokens_per_second",
    "peak_rss_mib",
)


def print_table(rows: list[dict]) -> list[dict]:
    """The markdown table (each configuration: TRL, grpokit, grpokit/TRL); returns the ratio rows."""
    print(
        "\n| μ | β | system | s/step | CPU s/step | rollout tok/s | training tok/s | peak RSS MiB "
        "| FLOP/s fraction (wall / CPU time) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    ratios = []
    for mu, beta in CONFIGS:
        trl, ours = (
            next(r for r in rows if r["system"] == s and (r["mu"], r["beta"]) == (mu, beta))
            for s in ("trl", "grpokit")
        )
        for r in (trl, ours):
            print(
                f"| {mu} | {beta} | {r['system']} | {r['seconds_per_step']:.1f} | {r['cpu_seconds_per_step']:.1f} "
                f"| {r['rollout_tokens_per_second']:.0f} | {r['training_tokens_per_second']:.0f} "
                f"| {r['peak_rss_mib']:.0f} | {100 * r['flop_fraction']:.1f}% / "
                f"{100 * r['flop_fraction_of_cpu_time']:.1f}% |"
            )
        ratio = {key: ours[key] / trl[key] for key in RATIO_KEYS}
        ratios.append(ratio)
        print(
            f"| {mu} | {beta} | grpokit/TRL | " + " | ".join(f"{ratio[k]:.2f}" for k in RATIO_KEYS) + " | |"
        )
    return ratios


def run_check() -> dict:
    print("  step-0 check (same batch into both trainers, β = 0.04) ...", flush=True)
    check = run_system("check", 1, 0.04, 0)
    check["same"] = (
        abs(check["grpokit_loss"] - check["trl_loss"]) < 1e-6
        and check["advantage_max_abs_diff"] < 1e-5
        and check["ref_logprob_max_abs_diff"] < 1e-4
        and check["grad_max_abs_diff"] < 1e-4 * check["grad_max_abs"]
    )
    print(
        f"  step-0: loss grpokit {check['grpokit_loss']:.3e} vs TRL {check['trl_loss']:.3e}; max |Δ| advantage "
        f"{check['advantage_max_abs_diff']:.1e}, ref log-prob {check['ref_logprob_max_abs_diff']:.1e}, gradient "
        f"{check['grad_max_abs_diff']:.1e} (largest gradient {check['grad_max_abs']:.1e}): "
        f"{'same' if check['same'] else 'DIFFERENT'}",
        flush=True,
    )
    return check


def geometric_mean(values: list[float]) -> float:
    return math.exp(statistics.mean(math.log(v) for v in values))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"μ={mu}, β={beta}" for mu, beta in CONFIGS]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = [
        ("seconds_per_step", "seconds per step (lower is better)"),
        ("rollout_tokens_per_second", "rollout tokens/s"),
        ("peak_rss_mib", "peak RSS (MiB)"),
    ]
    for ax, (key, title) in zip(axes, panels):
        for offset, system, color in ((-0.2, "trl", "#999999"), (0.2, "grpokit", "#2a7ab9")):
            values = [
                next(r[key] for r in rows if r["system"] == system and (r["mu"], r["beta"]) == c)
                for c in CONFIGS
            ]
            ax.bar([i + offset for i in range(len(CONFIGS))], values, width=0.4, label=system, color=color)
        ax.set_xticks(range(len(CONFIGS)), labels, fontsize=8)
        ax.set_title(title, fontsize=10)
    axes[0].legend()
    fig.suptitle(
        "grpokit vs TRL GRPOTrainer: tiny Qwen2, vocab 32k, 16 prompts × 8 × 64 tokens, 1 CPU thread",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    began = time.perf_counter()
    (OUTPUTS / "vs_trl_logs").mkdir(parents=True, exist_ok=True)
    print(
        f"vs_trl: TRL {version('trl')}, torch {torch.__version__}, {os.cpu_count()} CPUs (shared with other jobs; "
        "every system runs on 1 thread), "
        f"{MEASURED_STEPS} measured step(s) per configuration",
        flush=True,
    )
    flops_before = matmul_flops_per_second()
    print(f"  matmul: {flops_before / 1e9:.1f} GFLOP/s (1 thread, 1024³ float32, best of 5)", flush=True)
    rows_per_step = PROMPTS_PER_STEP * NUM_GENERATIONS
    prompt_tokens = statistics.mean(len(r["prompt"]) for r in prompt_records(1000)) * rows_per_step
    check = run_check()

    raw: dict[tuple, dict] = {}
    for index, (mu, beta) in enumerate(CONFIGS):
        for system in ("trl", "grpokit") if index % 2 == 0 else ("grpokit", "trl"):
            print(f"  [{len(raw) + 1}/{2 * len(CONFIGS)}] {system} μ={mu} β={beta}", flush=True)
            raw[(system, mu, beta)] = run_system(system, mu, beta, MEASURED_STEPS)
    peak_flops = max(flops_before, matmul_flops_per_second())
    rows = [
        {
            "system": system,
            "mu": mu,
            "beta": beta,
            **summarize(result, mu, beta, peak_flops, prompt_tokens),
            "raw": result,
        }
        for (system, mu, beta), result in raw.items()
    ]

    ratios = print_table(rows)
    step_speedup = geometric_mean([1 / r["seconds_per_step"] for r in ratios])
    cpu_step_speedup = geometric_mean([1 / r["cpu_seconds_per_step"] for r in ratios])
    rollout_speedup = geometric_mean([r["rollout_tokens_per_second"] for r in ratios])
    rss_ratio = geometric_mean([r["peak_rss_mib"] for r in ratios])
    print(
        f"\nmatmul peak {peak_flops / 1e9:.1f} GFLOP/s (1 thread). FLOP/s fraction = FLOPs the step needs (lm_head "
        f"only where a token is predicted) / (seconds × peak). Speedups are geometric means over the 4 "
        f"configurations; in CPU time the step speedup is {cpu_step_speedup:.2f}."
    )

    summary = {
        "kind": "summary",
        "step_speedup": step_speedup,
        "cpu_step_speedup": cpu_step_speedup,
        "rollout_speedup": rollout_speedup,
        "peak_rss_ratio": rss_ratio,
        "seconds": time.perf_counter() - began,
    }
    with open(OUTPUTS / "vs_trl.jsonl", "w") as out:
        for record in (
            {"kind": "machine", "cpus": os.cpu_count(), "matmul_flops_per_second": peak_flops},
            {"kind": "step0_check", **check},
            *({"kind": "run", **r} for r in rows),
            summary,
        ):
            out.write(json.dumps(record) + "\n")
    plot(rows, OUTPUTS / "vs_trl.png")
    (REPO / "docs" / "images").mkdir(parents=True, exist_ok=True)
    shutil.copy(OUTPUTS / "vs_trl.png", REPO / "docs" / "images" / "vs_trl.png")
    print(
        f"results in {OUTPUTS / 'vs_trl.jsonl'}, plot {OUTPUTS / 'vs_trl.png'}; "
        f"{(time.perf_counter() - began) / 60:.1f} min"
    )
    print(
        f"vs_trl: step_speedup={step_speedup:.2f} rollout_speedup={rollout_speedup:.2f} peak_rss_ratio={rss_ratio:.2f}"
    )


if __name__ == "__main__":
    main()
