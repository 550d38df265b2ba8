"""vLLM engine vs the in-process engine: rollout throughput, and log-prob agreement after a weight sync.

Same tiny model, same prompts, same sampling settings on both engines:

- model: a Qwen2 with hidden 512, 4 layers, 8 heads (2 KV heads), MLP 1376 (11.1M parameters) and
  the 100-token character tokenizer, built from a config (no download), float32 on both sides;
- rollouts: 32 prompts × n = 8 completions, up to 128 new tokens, temperature 1, top-p 1, top-k off,
  EOS stops a row (the random model draws EOS now and then, so lengths vary as in real rollouts).

The vLLM engine is a `grpokit vllm-serve` server started from the vLLM environment (created on
first use, see `grpokit.rollout.vllm_env`) and reached over HTTP, i.e. the `vllm_server` engine a
trainer uses; both engines run one CPU thread. After one warm-up round each, the engines alternate
for `ROUNDS` timed rounds (the machine is shared and noisy: alternating exposes both to the same
load); tokens/s = generated tokens (EOS included) / wall seconds of `engine.generate`, median over rounds.

Log-prob agreement: one optimizer step on the trainer's copy of the model (policy gradient on a
sampled batch with random ±1 advantages), `sync_weights` to the server, then a vLLM rollout; Z is
the largest |log μ_vLLM − log π_trainer| over every sampled token, where log π_trainer is the
trainer's own `sequence_logprobs` of the same tokens. The same comparison before the sync (stale
server weights) is printed as a control.

Run: `.venv/bin/python bench/vllm_rollout.py`. Writes outputs/bench/vllm_rollout.json; ends with
`vllm: tokens_per_s_vllm=X tokens_per_s_inprocess=Y logprob_max_abs_diff=Z`.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
OUTPUTS = REPO / "outputs" / "bench"
sys.path.insert(0, str(REPO / "src"))
from grpokit.models import build_char_tokenizer, build_tiny_causal_lm  # noqa: E402
from grpokit.models.logprobs import sequence_logprobs  # noqa: E402
from grpokit.rollout.inprocess import InProcessEngine  # noqa: E402
from grpokit.rollout.types import SamplingParams  # noqa: E402
from grpokit.rollout.vllm_engine import VLLMServerEngine  # noqa: E402
from grpokit.rollout.vllm_env import ensure_vllm_python, vllm_server  # noqa: E402

NUM_PROMPTS, GROUP_SIZE, MAX_NEW_TOKENS, ROUNDS = 32, 8, 128, 3
MODEL = dict(hidden_size=512, num_layers=4, num_heads=8, num_kv_heads=2, intermediate_size=1376,
             initializer_range=0.1, max_position_embeddings=512)


def prompts() -> list[str]:
    generator = torch.Generator().manual_seed(0)
    pairs = torch.randint(0, 100, (NUM_PROMPTS, 2), generator=generator).tolist()
    return [f"{a}+{b}=" for a, b in pairs]


def timed_generate(engine, sampling: SamplingParams) -> tuple[float, int]:
    started = time.perf_counter()
    batch = engine.generate(prompts(), GROUP_SIZE, sampling)
    seconds = time.perf_counter() - started
    return seconds, int(batch.completion_mask.sum())


def trainer_logprobs(model, batch) -> torch.Tensor:
    input_ids, attention_mask = batch.model_inputs()
    with torch.no_grad():
        return sequence_logprobs(model, input_ids, attention_mask, batch.completion_ids.shape[1])[0]


def max_abs_diff(model, batch) -> tuple[float, float]:
    mask = batch.completion_mask.bool()
    diff = (trainer_logprobs(model, batch) - batch.behaviour_logprobs)[mask].abs()
    return float(diff.max()), float(diff.mean())


def one_optimizer_step(model, batch) -> None:
    """A policy-gradient step with random ±1 advantages: moves every weight the way training does."""
    advantages = torch.randint(0, 2, (len(batch), 1), generator=torch.Generator().manual_seed(1)) * 2.0 - 1.0
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    input_ids, attention_mask = batch.model_inputs()
    model.train()
    logp, _ = sequence_logprobs(model, input_ids, attention_mask, batch.completion_ids.shape[1])
    loss = -(advantages * logp * batch.completion_mask).sum() / batch.completion_mask.sum()
    loss.backward()
    optimizer.step()
    model.eval()


def main() -> None:
    torch.set_num_threads(1)
    OUTPUTS.mkdir(parents=True, exist_ok=True)
    model_dir = OUTPUTS / "vllm_rollout_model"
    tokenizer = build_char_tokenizer()
    model = build_tiny_causal_lm(len(tokenizer), **MODEL)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"model: {parameters / 1e6:.1f}M parameters; {NUM_PROMPTS} prompts × {GROUP_SIZE}, "
          f"≤{MAX_NEW_TOKENS} new tokens, T=1", flush=True)

    python = ensure_vllm_python()
    sampling = SamplingParams(max_new_tokens=MAX_NEW_TOKENS, temperature=1.0, seed=0)
    inprocess = InProcessEngine(model, tokenizer)
    server_args = ("--dtype", "float32", "--kv-cache-gib", "1", "--max-model-len", "512")
    print("starting the vLLM server ...", flush=True)
    with vllm_server(str(model_dir), python=python, args=server_args, timeout=600,
                     log_path=OUTPUTS / "vllm_rollout_server.log") as url:
        vllm = VLLMServerEngine(url, tokenizer, timeout=600)
        rates: dict[str, list[float]] = {"vllm": [], "inprocess": []}
        for round_index in range(ROUNDS + 1):  # round 0 warms both up and is not counted
            for name, engine in (("inprocess", inprocess), ("vllm", vllm)):
                seconds, tokens = timed_generate(engine, sampling)
                label = "warm-up" if round_index == 0 else f"round {round_index}"
                print(f"  {label:8s} {name:9s} {tokens} tokens in {seconds:.2f} s = {tokens / seconds:,.0f} tok/s",
                      flush=True)
                if round_index:
                    rates[name].append(tokens / seconds)
        x, y = statistics.median(rates["vllm"]), statistics.median(rates["inprocess"])

        initial = vllm.generate(prompts(), GROUP_SIZE, sampling)
        initial_max, initial_mean = max_abs_diff(model, initial)
        one_optimizer_step(model, initial)
        stale_max, stale_mean = max_abs_diff(model, vllm.generate(prompts(), GROUP_SIZE, sampling))
        started = time.perf_counter()
        vllm.sync_weights(model)
        sync_seconds = time.perf_counter() - started
        synced = vllm.generate(prompts(), GROUP_SIZE, SamplingParams(max_new_tokens=MAX_NEW_TOKENS, seed=1))
        z, z_mean = max_abs_diff(model, synced)

    print(f"log-probs, vLLM vs trainer, max |Δ| (mean): before the step {initial_max:.2e} ({initial_mean:.2e}); "
          f"after a step, stale server {stale_max:.2e} ({stale_mean:.2e}); after sync_weights "
          f"({sync_seconds * 1000:.0f} ms for {parameters * 4 / 2**20:.0f} MiB) {z:.2e} ({z_mean:.2e}) "
          f"over {int(synced.completion_mask.sum())} tokens", flush=True)
    result = {"tokens_per_s_vllm": x, "tokens_per_s_inprocess": y, "rates": rates, "logprob_max_abs_diff": z,
              "logprob_mean_abs_diff": z_mean, "stale_max_abs_diff": stale_max, "sync_seconds": sync_seconds,
              "parameters": parameters, "prompts": NUM_PROMPTS, "group_size": GROUP_SIZE,
              "max_new_tokens": MAX_NEW_TOKENS}
    (OUTPUTS / "vllm_rollout.json").write_text(json.dumps(result, indent=2))
    print(f"vllm: tokens_per_s_vllm={x:.0f} tokens_per_s_inprocess={y:.0f} logprob_max_abs_diff={z:.2e}")


if __name__ == "__main__":
    main()
