"""Peak memory of per-token log-prob + entropy over a 151,936-token vocabulary (Qwen2's): chunked vs naive.

Both start from the same hidden states [B, T, H] and lm_head weight [V, H] (H = 64 keeps the
inputs small; the [B·T, V] float32 logits are what matters) and return log π(label) and the
entropy per position, in float32, without gradients (the old/reference log-prob pass, and the
forward of a training pass):

- naive: logits = hidden @ Wᵀ, then `log_softmax` over [B·T, V], gather, and
  H = −Σ p·log p — the [B·T, V] logits, log-softmax and p·log p all exist at once;
- chunked: `grpokit.algorithms.entropy.logprobs_and_entropy_from_hidden` (what the trainer
  uses), which only ever holds [chunk, V] (chunk = the trainer's default `logprob_chunk_size`).

Each runs in its own process; memory = peak RSS during the call − RSS just before it (inputs
already allocated); the process's whole peak RSS is reported too. B × T = 8 × 1024 positions
would need ≈ 4 × 5 GB for the naive path, which the shared 24 GB machine cannot spare, so the
comparison runs at 4 × 1024 (naive ≈ 10 GB) and the chunked path is also measured at 8 × 1024 to
show that its memory does not grow with the batch. If the machine has less free memory than the
naive path needs, the batch is halved until it fits (and the output says so).

Run: `.venv/bin/python bench/logprob_memory.py`. Writes outputs/bench/logprob_memory.jsonl.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

VOCAB_SIZE = 151_936
HIDDEN_SIZE = 64
SEQUENCE_LENGTH = 1024
NAIVE_FULL_SIZE_BUFFERS = 4  # logits, log-softmax, p and p·log p: each [B·T, V] float32
REPO = Path(__file__).resolve().parents[1]
OUTPUTS = REPO / "outputs" / "bench"
sys.path.insert(0, str(REPO / "src"))
from grpokit.trainers.lm_config import TrainingConfig  # noqa: E402

CHUNK_SIZE = TrainingConfig().logprob_chunk_size  # positions per chunk, as the trainer runs it


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _available_mib() -> float:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("inf")


def measure(method: str, batch_size: int) -> dict:
    """Run one method once in this process; return its memory and time."""
    import torch

    from grpokit.algorithms.entropy import logprobs_and_entropy_from_hidden, naive_logprobs_and_entropy

    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(batch_size, SEQUENCE_LENGTH, HIDDEN_SIZE, generator=generator)
    weight = torch.randn(VOCAB_SIZE, HIDDEN_SIZE, generator=generator) * 0.02
    labels = torch.randint(0, VOCAB_SIZE, (batch_size, SEQUENCE_LENGTH), generator=generator)
    before = _rss_mib()
    started = time.perf_counter()
    with torch.no_grad():
        if method == "naive":
            logp, entropy = naive_logprobs_and_entropy(hidden @ weight.T, labels)
        else:
            logp, entropy = logprobs_and_entropy_from_hidden(hidden, weight, labels, chunk_size=CHUNK_SIZE)
    seconds = time.perf_counter() - started
    peak = _peak_rss_mib()
    return {
        "method": method,
        "batch_size": batch_size,
        "sequence_length": SEQUENCE_LENGTH,
        "vocab_size": VOCAB_SIZE,
        "working_mib": peak - before,
        "peak_rss_mib": peak,
        "seconds": seconds,
        "logp_mean": float(logp.mean()),
        "entropy_mean": float(entropy.mean()),
    }


def run(method: str, batch_size: int) -> dict:
    output = subprocess.run(
        [sys.executable, __file__, method, str(batch_size)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return json.loads(output.stdout.strip().splitlines()[-1])


def naive_fits(batch_size: int) -> bool:
    needed = NAIVE_FULL_SIZE_BUFFERS * batch_size * SEQUENCE_LENGTH * VOCAB_SIZE * 4 / 2**20
    return needed * 1.25 < _available_mib()


def main() -> None:
    OUTPUTS.mkdir(parents=True, exist_ok=True)
    batch_size = 4
    while batch_size > 1 and not naive_fits(batch_size):
        batch_size //= 2
    note = "" if batch_size == 4 else f" (halved from 4: only {_available_mib():.0f} MiB free)"
    print(
        f"logprob_memory: vocab {VOCAB_SIZE:,}, {batch_size} × {SEQUENCE_LENGTH} positions{note}, "
        f"hidden {HIDDEN_SIZE}, float32, chunk {CHUNK_SIZE}; each method in its own process",
        flush=True,
    )
    results = []
    for method, size in (("chunked", batch_size), ("naive", batch_size), ("chunked", 8)):
        result = run(method, size)
        results.append(result)
        print(
            f"  {method:8s} {size} × {SEQUENCE_LENGTH}: +{result['working_mib']:7.0f} MiB over its inputs, "
            f"process peak {result['peak_rss_mib']:7.0f} MiB, {result['seconds']:.1f} s",
            flush=True,
        )
    chunked, naive, chunked_full = results
    assert abs(chunked["logp_mean"] - naive["logp_mean"]) < 1e-4, "chunked and naive log-probs disagree"
    assert abs(chunked["entropy_mean"] - naive["entropy_mean"]) < 1e-4, "chunked and naive entropies disagree"
    ratio = chunked["working_mib"] / naive["working_mib"]
    whole_process_ratio = chunked["peak_rss_mib"] / naive["peak_rss_mib"]
    print(
        f"  same values (mean log-prob {naive['logp_mean']:.4f}, mean entropy {naive['entropy_mean']:.4f}); "
        f"whole-process peak RSS ratio {whole_process_ratio:.3f}; chunked at 8 × {SEQUENCE_LENGTH}: "
        f"+{chunked_full['working_mib']:.0f} MiB"
    )
    with open(OUTPUTS / "logprob_memory.jsonl", "w") as out:
        for result in results:
            out.write(json.dumps(result) + "\n")
        out.write(
            json.dumps({"kind": "summary", "ratio": ratio, "whole_process_ratio": whole_process_ratio}) + "\n"
        )
    print(f"logprob_memory: ratio={ratio:.3f}")


if __name__ == "__main__":
    if len(sys.argv) == 3:
        print(json.dumps(measure(sys.argv[1], int(sys.argv[2]))))
    else:
        main()
