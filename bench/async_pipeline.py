"""Bench: does overlapping generation with training (`training.async`) pay, and does accuracy hold?

The demo's task and recipe (`grpokit.demo.DemoRecipe`: a 0.2M-parameter Qwen2 warmed up with supervised
steps to ~30% sampled accuracy on two-digit additions, then GRPO with exact-match reward, β = 0,
token-mean loss, lr 5e-4, 32 prompts × 8 completions a step). Per seed, from the same warmed-up weights,
the same number of optimizer steps:

- sync: the synchronous loop (sample, then update) at its best torch thread count: 1 and 2 threads are
  timed on a short probe (seed 0) and the faster is used for every seed, so the speedup comes from the
  overlap and not from a handicapped baseline;
- k=1, k=4: `training.async.max_staleness: k`, the producer (a forked process, the default) with one
  torch thread and the trainer at its best count (1 or 2, timed on a k = 1 probe: when updating takes
  longer than sampling, the trainer may use the core the producer leaves idle), truncated IS (token
  level, cap 2, the default when async);
- k=1 with `producer: thread`: the same overlap inside one process (one interpreter lock), for comparison.

Reported per run: wall-clock of the training steps (evaluations excluded, they are the same for all),
held-out sampled accuracy at T = 1 (200 problems × 4 samples, mean@4) before and after, and the IS
statistics (mean and max weight, fraction truncated, ESS) and idle seconds averaged over the steps.
Outputs: outputs/async_pipeline/results.json. Last line:
`async: speedup_k1=X speedup_k4=Y acc_sync=A acc_k1=B acc_k4=C` (speedup = median over seeds of
sync seconds / async seconds; accuracies: mean over seeds, percent).

Run: `.venv/bin/python bench/async_pipeline.py` (about 12 minutes on a 2-core CPU; results vary when
other processes share the cores).
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path

import torch

from grpokit.demo import DemoRecipe, build_arithmetic_policy

RECIPE = DemoRecipe()
SEEDS = (0, 1, 2)
STEPS = RECIPE.grpo_steps  # optimizer steps per run: the demo's 200
PROBE_STEPS = 20  # steps of the thread-count probe of the synchronous baseline
OUT = Path("outputs/async_pipeline")


def _data(seed: int):
    from grpokit.data import PromptDataset
    from grpokit.tasks.arithmetic import arithmetic_split

    split = arithmetic_split(RECIPE.operations, RECIPE.max_operand, heldout=RECIPE.heldout, seed=seed)
    return (split, PromptDataset.from_records(split.train, source="arithmetic:train"),
            PromptDataset.from_records(split.heldout, source="arithmetic:heldout"))


def warmed_up_weights(seed: int) -> dict:
    """The demo's supervised warm-up (to 30% sampled accuracy on a probe of training problems), cached."""
    from grpokit.data import PromptDataset
    from grpokit.rewards import RewardRunner, load_reward
    from grpokit.rollout.inprocess import InProcessEngine
    from grpokit.trainers.evaluation import EvalSettings, evaluate
    from grpokit.trainers.sft import supervised_warmup

    path = OUT / f"warm-{seed}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    torch.manual_seed(seed)
    split, _, _ = _data(seed)
    policy = _policy(seed)
    probe_data = PromptDataset.from_records(split.train[: RECIPE.warmup_probe_size], source="probe")
    probe = EvalSettings(num_prompts=len(probe_data), samples_per_prompt=1, greedy=False,
                         max_new_tokens=RECIPE.max_new_tokens, seed=seed + 1)
    engine, rewards = InProcessEngine(policy.model, policy.tokenizer), RewardRunner([load_reward("exact_match")])
    supervised_warmup(policy.model, policy.tokenizer, [(r["prompt"], r["answer"]) for r in split.train],
                      steps=RECIPE.warmup_max_steps, batch_size=RECIPE.warmup_batch_size,
                      learning_rate=RECIPE.warmup_learning_rate, seed=seed, check_every=RECIPE.warmup_check_every,
                      stop_check=lambda step: evaluate(engine, policy.tokenizer, probe_data, rewards,
                                                       probe)["eval/mean@1"] >= RECIPE.warmup_target_accuracy)
    state = {k: v.clone() for k, v in policy.model.state_dict().items()}
    OUT.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def _policy(seed: int):
    return build_arithmetic_policy(seed, hidden_size=RECIPE.hidden_size, num_layers=RECIPE.num_layers,
                                   num_heads=RECIPE.num_heads, intermediate_size=RECIPE.intermediate_size)


def run(seed: int, max_staleness: int, threads: int, steps: int, producer: str = "process") -> dict:
    """One GRPO run from the seed's warmed-up weights; its seconds, accuracies and IS statistics."""
    from grpokit.monitoring import read_metrics
    from grpokit.rewards import RewardRunner, load_reward
    from grpokit.trainers.lm_build import build_trainer
    from grpokit.trainers.lm_config import load_lm_config

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    _, train_data, heldout = _data(seed)
    policy = _policy(seed)
    policy.model.load_state_dict(warmed_up_weights(seed))
    run_dir = OUT / f"seed{seed}-k{max_staleness}-t{threads}-{producer}-{steps}steps"
    shutil.rmtree(run_dir, ignore_errors=True)  # this run's, not an earlier bench's
    config = load_lm_config(RECIPE.lm_config(
        steps=steps, seed=seed, run_dir=run_dir,
        training={"async": {"max_staleness": max_staleness, "producer": producer, "producer_threads": 1}},
        logging={"progress": False, "tensorboard": False, "plot": False, "samples_every": 0},
        checkpoint={"every_steps": 0}))
    trainer = build_trainer(config, policy=policy, train_data=train_data, eval_data=heldout,
                            reward_runner=RewardRunner([load_reward("exact_match")]))
    before = trainer.evaluate(callbacks=False)
    trainer.eval_data = None  # timed without evaluations; evaluated before and after, outside the clock
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    trainer.eval_data = heldout
    after = trainer.evaluate(callbacks=False)
    steps_logged = [m for m in read_metrics(run_dir / "metrics.jsonl") if "train/learning_rate" in m]

    def mean_of(key: str) -> float | None:
        values = [m[key] for m in steps_logged if key in m]
        return statistics.fmean(values) if values else None

    k = RECIPE.eval_samples_per_prompt
    return {
        "seed": seed, "max_staleness": max_staleness, "producer": producer if max_staleness else None,
        "threads": threads, "steps": steps, "seconds": seconds,
        # the trainer's wait for (sync: time to sample and score) each step's rollout, summed
        "rollout_seconds": sum(m.get("time/rollout_seconds", 0.0) for m in steps_logged),
        "acc_before": before[f"eval/mean@{k}"], "acc_after": after[f"eval/mean@{k}"],
        **{key: mean_of(f"train/{key}") for key in ("is_weight_mean", "is_ess", "frac_truncated")},
        "is_weight_max": max((m.get("train/is_weight_max", 1.0) for m in steps_logged), default=None),
        "staleness_mean": mean_of("async/staleness_mean"),
        "producer_idle_seconds": sum(m.get("async/producer_idle_seconds", 0.0) for m in steps_logged),
        "trainer_idle_seconds": sum(m.get("async/trainer_idle_seconds", 0.0) for m in steps_logged),
    }


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # the warm-ups: the demo's setting (see grpokit.demo)
    started = time.perf_counter()
    for seed in SEEDS:
        warmed_up_weights(seed)
    print(f"warm-ups: {time.perf_counter() - started:.0f} s", flush=True)
    probes = {threads: run(0, 0, threads, PROBE_STEPS) for threads in (1, 2)}
    probe = {threads: r["seconds"] for threads, r in probes.items()}
    sync_threads = min(probe, key=probe.get)
    print(f"sync probe ({PROBE_STEPS} steps): 1 thread {probe[1]:.1f} s, 2 threads {probe[2]:.1f} s -> "
          f"{sync_threads}", flush=True)
    # What overlap can give at best with one core each: the producer's side (sampling + scoring) and the
    # trainer's (all the rest) of a 1-thread synchronous step run side by side, against the best sync run.
    sample_1t = probes[1]["rollout_seconds"]
    overlap_bound = probe[sync_threads] / max(sample_1t, probe[1] - sample_1t)
    print(f"overlap estimate: at 1 thread sampling + scoring take {sample_1t:.2f} s and the rest of the step "
          f"{probe[1] - sample_1t:.2f} s of {probe[1]:.2f} s; with one core each a step takes at least the longer "
          f"of the two: speedup over the best sync run ≈ {overlap_bound:.2f} at most (a {PROBE_STEPS}-step "
          f"probe: ±10%)", flush=True)
    # the asynchronous runs at their best split too: the producer has 1 thread, the trainer 1 or 2
    async_probe = {threads: run(0, 1, threads, PROBE_STEPS)["seconds"] for threads in (1, 2)}
    async_threads = min(async_probe, key=async_probe.get)
    print(f"k=1 probe ({PROBE_STEPS} steps, producer 1 thread): trainer 1 thread {async_probe[1]:.1f} s, "
          f"2 threads {async_probe[2]:.1f} s -> {async_threads}", flush=True)
    results = []
    for seed in SEEDS:
        for k, threads, producer in ((0, sync_threads, "process"), (1, async_threads, "process"),
                                     (4, async_threads, "process"), (1, async_threads, "thread")):
            result = run(seed, k, threads, STEPS, producer)
            results.append(result)
            print(json.dumps({key: round(v, 4) if isinstance(v, float) else v for key, v in result.items()}),
                  flush=True)
    (OUT / "results.json").write_text(json.dumps({"probe_seconds": probe, "sync_threads": sync_threads,
                                                  "probe_rollout_seconds_1_thread": sample_1t,
                                                  "overlap_bound": overlap_bound,
                                                  "async_probe_seconds": async_probe,
                                                  "async_trainer_threads": async_threads, "runs": results}, indent=2))

    def of(k: int, producer: str = "process") -> list[dict]:
        return [r for r in results if r["max_staleness"] == k and (not k or r["producer"] == producer)]

    speedup = {k: statistics.median(s["seconds"] / a["seconds"] for s, a in zip(of(0), of(k))) for k in (1, 4)}
    accuracy = {k: statistics.fmean(r["acc_after"] for r in of(k)) for k in (0, 1, 4)}
    thread_speedup = statistics.median(s["seconds"] / a["seconds"] for s, a in zip(of(0), of(1, "thread")))
    print(f"total {time.perf_counter() - started:.0f} s; accuracy before GRPO "
          f"{statistics.fmean(r['acc_before'] for r in of(0)):.1f}; k=1 with a producer thread instead of a process: "
          f"speedup {thread_speedup:.2f}, accuracy {statistics.fmean(r['acc_after'] for r in of(1, 'thread')):.1f}",
          flush=True)
    print(f"async: speedup_k1={speedup[1]:.2f} speedup_k4={speedup[4]:.2f} acc_sync={accuracy[0]:.1f} "
          f"acc_k1={accuracy[1]:.1f} acc_k4={accuracy[4]:.1f}", flush=True)


if __name__ == "__main__":
    main()
