"""Bench: GRPO against PPO with a learned critic, on the same task, rewards and rollout budget.

The claim (the seed's third): GRPO drops PPO's value model and saves its memory and compute. Measured
here in the same runs that measure accuracy:

- Task and start: bench/adaptive_sampling.py's (mixed-difficulty arithmetic, the same supervised warm-up,
  seed s's 1000-prompt pool, its exact held-out accuracy over 2230 prompts).
- GRPO: preset `grpo` (G = 8, 32 prompts a step, β = 0.04 k3 in the loss).
  PPO: preset `ppo` (G = 1, 256 prompts a step, β = 0.05 k1 in the per-token reward, GAE γ 1 λ 0.95,
  value clip 0.2, critic = a copy of the policy's body with a zero head, the same learning rate).
  Both: exact-match reward, lr 5e-4, 60 steps of 256 rollouts, one optimizer step per rollout batch.
- Each system runs in its own process (one torch thread), seeds 0, 1, 2 one after the other; reported:
  exact held-out accuracy at the end (mean over seeds), peak RSS of the process (ru_maxrss), the memory the
  models hold (weights, gradients, AdamW state; reference included), and seconds per step (sampling +
  update, from the run's own metrics).

The model is the adaptive bench's 0.13M-parameter Qwen2, so the process's RSS is mostly the Python/torch
runtime and the RSS ratio understates what the critic costs at scale; the model-state bytes are the part that
grows with the model (a critic is a second model: ×2 weights, gradients and optimizer state, or ×1.5 with a
frozen reference beside both). Outputs: outputs/ppo_vs_grpo/results.json.

Run: `.venv/bin/python bench/ppo_vs_grpo.py` (about 5 minutes on a shared 2-core CPU).
"""

from __future__ import annotations

import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
import adaptive_sampling as task  # noqa: E402  (the same task, warm-up and exact evaluation)

OUT_DIR = task.REPO_ROOT / "outputs" / "ppo_vs_grpo"
SEEDS = (0, 1, 2)
STEPS = 60
SYSTEMS = {
    "grpo": {"algorithm": {"preset": "grpo", "overrides": {}}, "rollout": {"num_generations": 8, "prompts_per_step": 32}},
    "ppo": {"algorithm": {"preset": "ppo", "overrides": {}}, "rollout": {"prompts_per_step": 256}},
}


def model_state_bytes(trainer) -> int:
    """Bytes of every model's weights, gradients and optimizer state the trainer holds (reference included)."""
    def tensor_bytes(tensors) -> int:
        return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))

    modules = [trainer.model]
    optimizers = [trainer.optimizer]
    if getattr(trainer, "critic", None) is not None:
        modules.append(trainer.critic)
        optimizers.append(trainer.critic_optimizer)
    total = sum(tensor_bytes(m.parameters()) + tensor_bytes(p.grad for p in m.parameters()) for m in modules)
    total += sum(tensor_bytes(v for state in o.state.values() for v in state.values()) for o in optimizers)
    if trainer.policy.has_reference:
        with trainer.policy.reference() as reference:
            if reference is not trainer.model:
                total += tensor_bytes(reference.parameters())
    return total


def run_system(name: str) -> dict:
    """Every seed of one system, in this process; returns accuracies, timings and memory."""
    from grpokit.data import PromptDataset
    from grpokit.models import build_char_tokenizer
    from grpokit.models.loading import Policy
    from grpokit.monitoring import read_metrics
    from grpokit.rewards import RewardRunner, load_reward
    from grpokit.tasks.arithmetic import ALPHABET, mixed_difficulty_split
    from grpokit.trainers.lm_build import build_trainer
    from grpokit.trainers.lm_config import load_lm_config

    torch.set_num_threads(1)
    recipe = task.BenchRecipe()
    tokenizer = build_char_tokenizer(ALPHABET)
    runner = RewardRunner([load_reward("exact_match")])
    splits = {s: mixed_difficulty_split("+*", (1, 2, 3), train_per_bucket=recipe.pool_per_bucket,
                                        heldout_per_bucket=recipe.heldout_per_bucket, seed=s) for s in task.SEEDS}
    heldout_prompts = {r["prompt"] for split in splits.values() for r in split.heldout}
    weights, _ = task.warm_up(recipe, tokenizer, heldout_prompts, runner)  # cached by the adaptive bench
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"name": name, "seeds": {}, "baseline_rss_kib": baseline_rss}
    for seed in SEEDS:
        split = splits[seed]
        model = task.build_model(recipe, len(tokenizer), seed)
        model.load_state_dict(weights)
        heldout = task.ExactAccuracy(tokenizer, split.heldout)
        start = 100.0 * float(heldout.pass_rates(model).mean())
        run_dir = OUT_DIR / name / f"seed{seed}"
        shutil.rmtree(run_dir, ignore_errors=True)
        sections = SYSTEMS[name]
        config = load_lm_config({
            "model": {"name_or_path": "<built in memory>"},
            "data": {"path": "<mixed arithmetic>"},
            "rewards": [{"function": "exact_match"}],
            "algorithm": sections["algorithm"],
            "rollout": {"max_new_tokens": recipe.max_new_tokens, **sections["rollout"]},
            "training": {"max_steps": STEPS, "learning_rate": recipe.learning_rate, "micro_batch_size": 512,
                         "seed": seed},
            "logging": {"run_dir": str(run_dir), "progress": False, "tensorboard": False, "plot": False},
            "checkpoint": {"resume": False, "keep_last": 1},
        })
        trainer = build_trainer(config, policy=Policy(model, tokenizer, is_lora=False),
                                train_data=PromptDataset.from_records(split.train, source="mixed:train"),
                                reward_runner=runner)
        trainer.train()
        records = [r for r in read_metrics(run_dir / "metrics.jsonl") if "time/train_seconds" in r]
        seconds = [r["time/rollout_seconds"] + r["time/train_seconds"] + r.get("time/weight_sync_seconds", 0.0)
                   for r in records]
        out["seeds"][seed] = {
            "acc_start": start,
            "acc_final": 100.0 * float(heldout.pass_rates(trainer.model).mean()),
            "seconds_per_step": statistics.mean(seconds),
            "rollouts": sum(r.get("rollouts/step", 0.0) for r in records),
            "model_state_bytes": model_state_bytes(trainer),
            "explained_variance_last": records[-1].get("critic/explained_variance"),
        }
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        print(f"{name} seed {seed}: acc {start:.1f} -> {out['seeds'][seed]['acc_final']:.1f}, "
              f"{out['seeds'][seed]['seconds_per_step']:.3f} s/step", flush=True)
    out["peak_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return out


def main() -> dict:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = {}
    for name in SYSTEMS:  # one after the other: the step times are not measured against each other's load
        path = OUT_DIR / f"{name}.json"
        subprocess.run([sys.executable, __file__, "--system", name, str(path)], check=True)
        results[name] = json.loads(path.read_text())
    summary = {}
    for name, result in results.items():
        seeds = result["seeds"].values()
        summary[name] = {
            "acc_start": statistics.mean(s["acc_start"] for s in seeds),
            "acc_final": statistics.mean(s["acc_final"] for s in seeds),
            "acc_final_per_seed": [round(s["acc_final"], 2) for s in seeds],
            "seconds_per_step": statistics.mean(s["seconds_per_step"] for s in seeds),
            "peak_rss_mib": result["peak_rss_kib"] / 1024,
            "rss_above_runtime_mib": (result["peak_rss_kib"] - result["baseline_rss_kib"]) / 1024,
            "model_state_mib": statistics.mean(s["model_state_bytes"] for s in seeds) / 2**20,
            "rollouts": statistics.mean(s["rollouts"] for s in seeds),
        }
    grpo, ppo = summary["grpo"], summary["ppo"]
    for name, s in summary.items():
        print(f"{name}: acc {s['acc_start']:.1f} -> {s['acc_final']:.1f} (per seed {s['acc_final_per_seed']}), "
              f"{s['rollouts']:.0f} rollouts, {s['seconds_per_step']:.3f} s/step, peak RSS {s['peak_rss_mib']:.0f} MiB "
              f"({s['rss_above_runtime_mib']:.0f} MiB above the process after imports and warm-up), model state "
              f"{s['model_state_mib']:.2f} MiB")
    print(f"model-state ratio GRPO/PPO {grpo['model_state_mib'] / ppo['model_state_mib']:.2f}; "
          f"total {time.perf_counter() - started:.0f} s (each system in its own process, 1 thread)")
    (OUT_DIR / "results.json").write_text(json.dumps({"summary": summary, "runs": results}, indent=1))
    print(f"ppo_vs_grpo: acc_ppo={ppo['acc_final']:.1f} acc_grpo={grpo['acc_final']:.1f} "
          f"rss_ratio={grpo['peak_rss_mib'] / ppo['peak_rss_mib']:.2f} "
          f"step_time_ratio={grpo['seconds_per_step'] / ppo['seconds_per_step']:.2f}", flush=True)
    return summary


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--system":  # a worker process (main() starts them)
        Path(sys.argv[3]).write_text(json.dumps(run_system(sys.argv[2])))
    else:
        main()
