"""grpokit vs TRL's GRPOTrainer, side by side, on this machine: tiny Qwen2s, where the lm_head dominates.

Two settings, full fine-tuning, vocab 32,768: hidden 64 × 2 layers (2.2M parameters, 94% of them
the tied embedding) and hidden 128 × 4 layers (5.2M, 81%). Same tokenizer, arithmetic prompts, reward,
sampling (T = 1, no top-k/top-p, 64 new tokens) and optimizer settings; G = 8, 16 prompts per
step, 4 sequences of 32 per micro-batch, μ ∈ {1, 2}, β ∈ {0, 0.04}, one CPU thread each. TRL runs
with `gradient_checkpointing=False`, like grpokit (TRL 1.16 turns it on by default, which costs it
5–10% of its step). Each (system, setting, μ, β) runs in its own process (clean peak RSS, also
reported above the process's RSS once the libraries are imported), the two systems alternating;
each process first runs one small untimed warm-up step, then VS_TRL_STEPS (default 3) measured
steps: medians and min–max spread. A "step" is one GRPO iteration: one rollout of 128
completions and μ passes of updates (μ optimizer steps for TRL, which counts those). Also: the
CPU's single-thread matmul FLOP/s, each system's achieved fraction of it, and a step-0 check that
both trainers give the same advantages, reference log-probs, loss and gradients on the same batch.

Run: `.venv/bin/python bench/vs_trl.py` (38 min measured with 3 steps on the shared 2-core CPU
under load average 3–7, the measured steps themselves ≈ 15 min of CPU time; env VS_TRL_STEPS=k
measures k steps per configuration). Writes outputs/bench/vs_trl.{jsonl,png}. On a loaded machine
compare the CPU-time columns: wall-clock ratios then move with the other jobs' load.
Last line: `vs_trl: step_speedup=X rollout_speedup=Y peak_rss_ratio=Z` (geometric means over all
8 configurations; speedups TRL seconds / grpokit seconds, Z grpokit / TRL absolute peak RSS).
"""

from __future__ import annotations

import os
import shutil
import time

from _vs_trl_driver import (
    OUTPUTS,
    REPO,
    Config,
    matmul_flops_per_second,
    overall,
    print_table,
    run_alternated,
    run_system,
    start,
    summary_rows,
    write_outputs,
)

SETTINGS = ("tiny-h64-l2", "tiny-h128-l4")
CONFIGS = [Config(s, mu, beta) for s in SETTINGS for mu, beta in ((1, 0.0), (1, 0.04), (2, 0.0), (2, 0.04))]
MEASURED_STEPS = max(int(os.environ.get("VS_TRL_STEPS", "3")), 1)


def run_check(log_dir) -> dict:
    print("  step-0 check (same batch into both trainers, hidden 64, β = 0.04) ...", flush=True)
    check = run_system("check", Config(SETTINGS[0], 1, 0.04), 0, log_dir)
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


def main() -> None:
    began = time.perf_counter()
    log_dir, flops_before = start("vs_trl", "every system on 1 thread", MEASURED_STEPS)
    check = run_check(log_dir)
    raw = run_alternated(CONFIGS, MEASURED_STEPS, log_dir)
    peak_flops = max(flops_before, matmul_flops_per_second())
    rows = summary_rows(raw, peak_flops)

    ratios = print_table(rows, CONFIGS)
    summary = overall(ratios)
    summary["step_speedup_per_setting"] = {
        s: overall([r for r in ratios if r["config"].setup == s])["step_speedup"] for s in SETTINGS
    }
    print(
        f"\nmatmul peak {peak_flops / 1e9:.1f} GFLOP/s (1 thread). FLOP/s fraction = FLOPs the step needs (lm_head "
        f"only where a token is predicted) / (seconds × peak). Speedups are geometric means over the "
        f"{len(CONFIGS)} configurations ("
        + ", ".join(f"{s}: {v:.2f}" for s, v in summary["step_speedup_per_setting"].items())
        + f"); in CPU time the step speedup is {summary['cpu_step_speedup']:.2f}. Peak RSS grpokit/TRL "
        f"{summary['peak_rss_ratio']:.2f} absolute, {summary['peak_rss_above_import_ratio']:.2f} above each "
        f"process's import baseline. Load average now: {' '.join(f'{x:.2f}' for x in os.getloadavg())}."
    )
    summary.update(kind="summary", seconds=time.perf_counter() - began)
    title = "grpokit vs TRL GRPOTrainer: tiny Qwen2s, vocab 32k, 16 prompts × 8 × 64 tokens, 1 CPU thread"
    png = write_outputs("vs_trl", peak_flops, rows, CONFIGS, [{"kind": "step0_check", **check}, summary], title)
    (REPO / "docs" / "images").mkdir(parents=True, exist_ok=True)
    shutil.copy(png, REPO / "docs" / "images" / "vs_trl.png")
    print(
        f"results in {OUTPUTS / 'vs_trl.jsonl'}, plot {OUTPUTS / 'vs_trl.png'}; "
        f"{(time.perf_counter() - began) / 60:.1f} min"
    )
    print(
        f"vs_trl: step_speedup={summary['step_speedup']:.2f} rollout_speedup={summary['rollout_speedup']:.2f} "
        f"peak_rss_ratio={summary['peak_rss_ratio']:.2f}"
    )


if __name__ == "__main__":
    main()
