"""What the TRL comparison benches share: run one system per process, alternated, and report.

Used by `bench/vs_trl.py` (tiny Qwen2s, full fine-tuning) and `bench/vs_trl_smollm2.py`
(SmolLM2-135M with LoRA). A configuration is (setting, μ, β, threads); each (system,
configuration) runs in a fresh process (`bench/_vs_trl_systems.py`: clean peak RSS, its own
import baseline), TRL and grpokit alternating which goes first. Step and rollout times are
medians over the measured steps, with their min–max spread.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
OUTPUTS = REPO / "outputs" / "bench"
SYSTEMS_SCRIPT = BENCH / "_vs_trl_systems.py"
sys.path.insert(0, str(BENCH))
from _vs_trl_setups import SETUPS, Setup  # noqa: E402


@dataclass(frozen=True)
class Config:
    setup: str
    mu: int
    beta: float
    threads: int = 1

    @property
    def label(self) -> str:
        return f"{self.setup} μ={self.mu} β={self.beta} {self.threads}T"


# ---------------------------------------------------------------------------------------------- FLOPs
def matmul_flops_per_second(size: int = 1024, repeats: int = 30) -> float:
    """Best-of-`repeats` single-thread float32 (size × size) @ (size × size): 2·size³ FLOPs per product.

    Best of many (≈ 1 s in all): on a CPU shared with other jobs, most products are slowed by them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    torch.set_num_threads(threads)
    return 2 * size**3 / best


def forward_flops_per_token(setup: Setup, context: float, *, with_head: bool) -> float:
    """2·(decoder linear weights, LoRA's A and B included) + attention (4·context·hidden per layer)
    [+ lm_head 2·hidden·vocab]."""
    d = setup.dims
    h, layers, inter = d["hidden_size"], d["num_layers"], d["intermediate_size"]
    kv_width = d["num_kv_heads"] * h // d["num_heads"]
    shapes = {  # (d_in, d_out) of each linear of a decoder layer
        "q_proj": (h, h), "k_proj": (h, kv_width), "v_proj": (h, kv_width), "o_proj": (h, h),
        "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h),
    }
    weights = sum(i * o for i, o in shapes.values())
    if setup.lora is not None:
        weights += sum(setup.lora.r * sum(shapes[m]) for m in setup.lora.target_modules)
    flops = layers * (2 * weights + 4 * context * h)
    return flops + (2 * h * d["vocab_size"] if with_head else 0)


def nominal_step_flops(
    setup: Setup, mu: int, beta: float, completion_tokens: float, prompt_tokens: float
) -> tuple[float, float]:
    """(rollout, training) FLOPs of one step that the algorithm needs (lm_head only where a token is predicted).

    Rollout: one forward per generated token, + each distinct prompt's prefill once. Training: μ
    forward+backward passes — 3× a forward with full fine-tuning, 2× with LoRA (the frozen weights
    need input gradients only; LoRA's own weight gradients are ignored) — one more forward for the
    old log-probs when μ > 1, one for π_ref when β > 0.
    """
    rows = setup.rows_per_step
    completion_per_row, prompt_per_row = completion_tokens / rows, prompt_tokens / rows
    rollout = completion_tokens * forward_flops_per_token(
        setup, prompt_per_row + completion_per_row / 2, with_head=True
    )
    rollout += prompt_tokens / setup.num_generations * forward_flops_per_token(
        setup, prompt_per_row / 2, with_head=False
    )
    context = (prompt_per_row + completion_per_row) / 2
    one_forward = completion_tokens * forward_flops_per_token(setup, context, with_head=True)
    one_forward += prompt_tokens * forward_flops_per_token(setup, context, with_head=False)
    training_pass = 2 if setup.lora is not None else 3
    forwards = training_pass * mu + (1 if mu > 1 else 0) + (1 if beta > 0 else 0)
    return rollout, forwards * one_forward


def prompt_tokens_per_step(setup: Setup) -> float:
    tokenizer = setup.build_tokenizer()
    prompts = setup.prompts(200)
    per_prompt = statistics.mean(len(tokenizer(p, add_special_tokens=False).input_ids) for p in prompts)
    return per_prompt * setup.rows_per_step


# ---------------------------------------------------------------------------------------------- running
def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def start(name: str, what: str, steps: int) -> tuple[Path, float]:
    """Print the bench's header (versions, CPUs, load) and measure the matmul peak; returns (log dir, peak)."""
    from importlib.metadata import version

    log_dir = OUTPUTS / f"{name}_logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"{name}: TRL {version('trl')} (gradient_checkpointing=False, like grpokit), peft {version('peft')}, "
        f"torch {torch.__version__}, {os.cpu_count()} CPUs (shared with other jobs), {what}, {steps} measured "
        f"step(s) per configuration; load average (1, 5, 15 min) {load_average()}",
        flush=True,
    )
    flops = matmul_flops_per_second()
    print(f"  matmul: {flops / 1e9:.1f} GFLOP/s (1 thread, 1024³ float32, best of 30)", flush=True)
    return log_dir, flops


def run_system(role: str, config: Config, steps: int, log_dir: Path) -> dict:
    """Run one system (or the check) in a fresh process; its log goes to `log_dir`."""
    name = f"{role}_{config.setup}_mu{config.mu}_beta{config.beta}_{config.threads}t"
    result_path = log_dir / f"{name}.json"
    log_path = result_path.with_suffix(".log")
    started = time.perf_counter()
    arguments = [config.setup, role, str(config.mu), str(config.beta), str(steps), str(config.threads)]
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, str(SYSTEMS_SCRIPT), *arguments, str(result_path)],
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


def run_alternated(
    configs: list[Config], steps: int, log_dir: Path, *, first_index: int = 0
) -> dict[tuple[str, Config], dict]:
    """Every configuration for both systems, each in its own process, alternating which system goes first
    (TRL in even-numbered configurations, counted from `first_index`)."""
    raw: dict[tuple[str, Config], dict] = {}
    total = 2 * len(configs)
    for index, config in enumerate(configs, start=first_index):
        for system in ("trl", "grpokit") if index % 2 == 0 else ("grpokit", "trl"):
            print(f"  [{len(raw) + 1}/{total}] {system} {config.label}", flush=True)
            raw[(system, config)] = run_system(system, config, steps, log_dir)
    return raw


def _spread(values: list[float]) -> str:
    return f"{min(values):.1f}–{max(values):.1f}"


def summarize(raw: dict, config: Config, peak_flops: float, prompt_tokens: float) -> dict:
    setup = SETUPS[config.setup]
    step = statistics.median(raw["step_seconds"])
    cpu = statistics.median(raw["step_cpu_seconds"])
    rollout_seconds = [seconds for seconds, _ in raw["rollouts"]]
    rollout = statistics.median(rollout_seconds)
    tokens = statistics.median(count for _, count in raw["rollouts"])
    training = step - rollout
    flops = sum(nominal_step_flops(setup, config.mu, config.beta, tokens, prompt_tokens))
    return {
        "seconds_per_step": step,
        "step_spread": _spread(raw["step_seconds"]),
        "cpu_seconds_per_step": cpu,
        "rollout_seconds": rollout,
        "rollout_spread": _spread(rollout_seconds),
        "training_seconds": training,
        "completion_tokens_per_step": tokens,
        "completion_tokens_min": min(count for _, count in raw["rollouts"]),
        "rollout_tokens_per_second": tokens / rollout,
        "training_tokens_per_second": tokens * config.mu / training,
        "peak_rss_mib": raw["peak_rss_mib"],
        "import_rss_mib": raw["import_rss_mib"],
        "rss_above_import_mib": raw["peak_rss_mib"] - raw["import_rss_mib"],
        "flop_fraction": flops / (step * peak_flops),  # of wall-clock time, against the 1-thread peak
        "flop_fraction_of_cpu_time": flops / (cpu * peak_flops),  # of the CPU time the process got
        "steps_measured": len(raw["step_seconds"]),
    }


RATIO_KEYS = (
    "seconds_per_step",
    "cpu_seconds_per_step",
    "rollout_tokens_per_second",
    "training_tokens_per_second",
    "peak_rss_mib",
    "rss_above_import_mib",
)


def summary_rows(raw: dict, peak_flops: float) -> list[dict]:
    prompt_tokens = {name: prompt_tokens_per_step(SETUPS[name]) for name in {c.setup for _, c in raw}}
    return [
        {
            "system": system,
            "config": config,
            **summarize(result, config, peak_flops, prompt_tokens[config.setup]),
            "raw": result,
        }
        for (system, config), result in raw.items()
    ]


def print_table(rows: list[dict], configs: list[Config]) -> list[dict]:
    """The markdown table (each configuration: TRL, grpokit, grpokit/TRL); returns the ratio rows."""
    print(
        "\n| setting | μ | β | threads | system | s/step median (min–max) | CPU s/step | rollout s (min–max) "
        "| rollout tok/s | training tok/s | peak RSS MiB | above import MiB | FLOP/s fraction (wall / CPU) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    ratios = []
    for c in configs:
        trl, ours = (next(r for r in rows if r["system"] == s and r["config"] == c) for s in ("trl", "grpokit"))
        head = f"| {c.setup} | {c.mu} | {c.beta} | {c.threads} "
        for r in (trl, ours):
            print(
                f"{head}| {r['system']} | {r['seconds_per_step']:.1f} ({r['step_spread']}) "
                f"| {r['cpu_seconds_per_step']:.1f} | {r['rollout_seconds']:.1f} ({r['rollout_spread']}) "
                f"| {r['rollout_tokens_per_second']:.0f} | {r['training_tokens_per_second']:.0f} "
                f"| {r['peak_rss_mib']:.0f} | {r['rss_above_import_mib']:.0f} "
                f"| {100 * r['flop_fraction']:.1f}% / {100 * r['flop_fraction_of_cpu_time']:.1f}% |"
            )
        ratio = {key: ours[key] / trl[key] for key in RATIO_KEYS}
        ratio["config"] = c
        ratios.append(ratio)
        print(
            f"{head}| grpokit/TRL | {ratio['seconds_per_step']:.2f} | {ratio['cpu_seconds_per_step']:.2f} | "
            + " | ".join(f"{ratio[k]:.2f}" for k in RATIO_KEYS[2:])
            + " | |"
        )
    return ratios


PHASES = (
    "rollout_prefill",
    "rollout_decode_forward",
    "rollout_sampling_and_loop",
    "old_logprobs",
    "ref_logprobs",
    "train_forward",
    "backward",
    "optimizer",
    "other",
)


def phase_breakdown(raw: dict) -> dict[str, float]:
    """grpokit's median seconds per phase over the measured steps (see `_vs_trl_systems.PhaseClock`)."""
    per_step = []
    for step_seconds, phases in zip(raw["step_seconds"], raw["phases"]):
        p = dict(phases)
        p["rollout_sampling_and_loop"] = (
            p.get("rollout", 0.0) - p.get("rollout_prefill", 0.0) - p.get("rollout_decode_forward", 0.0)
        )
        named = sum(p.get(k, 0.0) for k in PHASES if k != "other")
        p["other"] = step_seconds - named
        per_step.append(p)
    return {k: statistics.median(p.get(k, 0.0) for p in per_step) for k in PHASES}


def print_phases(rows: list[dict], configs: list[Config]) -> dict[str, dict[str, float]]:
    print("\ngrpokit, seconds per phase (median over the measured steps; share of the step):\n")
    print("| setting | " + " | ".join(PHASES) + " |")
    print("|---|" + "---|" * len(PHASES))
    out = {}
    for c in configs:
        r = next(r for r in rows if r["system"] == "grpokit" and r["config"] == c)
        phases = phase_breakdown(r["raw"])
        out[c.label] = phases
        total = r["seconds_per_step"]
        print(
            f"| {c.label} | "
            + " | ".join(f"{phases[k]:.1f} ({100 * phases[k] / total:.0f}%)" for k in PHASES)
            + " |"
        )
    for c in configs:
        raw = next(r for r in rows if r["system"] == "grpokit" and r["config"] == c)["raw"]
        if raw.get("peak_rss_growth_mib"):
            grew = ", ".join(f"{k} +{v:.0f}" for k, v in raw["peak_rss_growth_mib"].items() if v >= 1)
            print(
                f"  {c.label}: peak RSS {raw['peak_rss_before_measured_mib']:.0f} MiB after set-up and warm-up, "
                f"raised by (MiB) {grew or 'nothing'}"
            )
    return out


def geometric_mean(values: list[float]) -> float:
    return math.exp(statistics.mean(math.log(v) for v in values))


def overall(ratios: list[dict]) -> dict[str, float]:
    """Geometric means over the configurations of `print_table`'s grpokit/TRL ratios; speedups as TRL/grpokit."""
    return {
        "step_speedup": geometric_mean([1 / r["seconds_per_step"] for r in ratios]),
        "cpu_step_speedup": geometric_mean([1 / r["cpu_seconds_per_step"] for r in ratios]),
        "rollout_speedup": geometric_mean([r["rollout_tokens_per_second"] for r in ratios]),
        "peak_rss_ratio": geometric_mean([r["peak_rss_mib"] for r in ratios]),
        "peak_rss_above_import_ratio": geometric_mean([r["rss_above_import_mib"] for r in ratios]),
    }


def plot(rows: list[dict], configs: list[Config], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{c.setup}\nμ={c.mu} β={c.beta} {c.threads}T" for c in configs]
    fig, axes = plt.subplots(1, 3, figsize=(max(13, 2.2 * len(configs) * 3 / 2), 4.2))
    panels = [
        ("seconds_per_step", "seconds per step, median (lower is better)"),
        ("rollout_tokens_per_second", "rollout tokens/s"),
        ("peak_rss_mib", "peak RSS (MiB)"),
    ]
    for ax, (key, panel_title) in zip(axes, panels):
        for offset, system, color in ((-0.2, "trl", "#999999"), (0.2, "grpokit", "#2a7ab9")):
            values = [next(r[key] for r in rows if r["system"] == system and r["config"] == c) for c in configs]
            ax.bar([i + offset for i in range(len(configs))], values, width=0.4, label=system, color=color)
        ax.set_xticks(range(len(configs)), labels, fontsize=6)
        ax.set_title(panel_title, fontsize=10)
    axes[0].legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(
    name: str, peak_flops: float, rows: list[dict], configs: list[Config], records: list[dict], title: str
) -> Path:
    """outputs/bench/NAME.jsonl (machine, `records`, one line per run) and NAME.png; returns the plot's path."""
    def plain(value):
        return value.__dict__ if isinstance(value, Config) else str(value)

    machine = {"kind": "machine", "cpus": os.cpu_count(), "matmul_flops_per_second": peak_flops}
    with open(OUTPUTS / f"{name}.jsonl", "w") as out:
        for record in (machine, *({"kind": "run", **r} for r in rows), *records):
            out.write(json.dumps(record, default=plain) + "\n")
    plot(rows, configs, OUTPUTS / f"{name}.png", title)
    return OUTPUTS / f"{name}.png"
