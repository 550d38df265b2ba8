"""Rollouts on vLLM: in the training process (`VLLMColocateEngine`) or on a server (`VLLMServerEngine`).

Both speak tokens: prompts are tokenized by the trainer's tokenizer (so its chat template is the
only one in play), vLLM returns the sampled token ids and their log-probs, and the trainer's
tokenizer decodes them. Rows come back prompt-major, padded exactly like `InProcessEngine`'s.

Behaviour log-probs are vLLM's *processed* log-probs of the sampled tokens: after temperature and,
when set, top-k/top-p truncation — the distribution the tokens were really drawn from. With
top_k = 0 and top_p = 1 they equal the trainer's `sequence_logprobs(..., temperature=τ)` for the same
weights; with truncation they are larger by −log(kept mass), which the trainer's importance
correction sees as mismatch.

Weight sync (`sync_weights(model)`, called by the trainer after every optimizer step): the
policy's parameters under their Hugging Face names — for a LoRA policy the merged weights
W + (α/r)·B·A, computed without touching the training module — are handed to the vLLM worker's
in-place `reload_weights` (the model's own loader, which knows its fused qkv / gate-up layouts,
followed by the per-layer post-processing the CPU backend needs), then the prefix cache is reset
because its KV entries were computed with the old weights. Colocated, the tensors are passed in
memory; to a server, they travel as safetensors over HTTP in chunks (`chunk_bytes`).

Adapter-only sync (`weight_sync`, `rollout.vllm.weight_sync`; see `grpokit.rollout.lora_sync`): for a
LoRA policy, vLLM runs with LoRA enabled and each sync pushes only the adapter (peft's saved format,
a few MB) under a new adapter id, evicting the previous one; every generation then carries that
adapter. The first sync also pushes the frozen base weights once, so vLLM's base is the trainer's
whatever checkpoint it started from. "auto" (the default) chooses the adapter when the policy is LoRA
and vLLM can apply it, else the merged push; which one is logged once, at the first sync.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from grpokit.rollout.lora_sync import (
    adapter_payload,
    adapter_sync_problems,
    choose_weight_sync,
    lora_rank,
    vllm_max_lora_rank,
)
from grpokit.rollout.prompts import encode_prompts, left_pad, pad_token_id_of
from grpokit.rollout.types import FINISH_LENGTH, FINISH_STOP, RolloutBatch, SamplingParams
from grpokit.seeds import engine_prompt_seed

log = logging.getLogger("grpokit.rollout")


# ---------------------------------------------------------------------- weights, as vLLM names them
def named_weights_for_vllm(model: nn.Module, *, merge_lora: bool = True) -> Iterator[tuple[str, Tensor]]:
    """(name, tensor) for every weight of the causal LM, under Hugging Face names, detached.

    Unwraps DDP/FSDP-style `.module` wrappers and peft models. A LoRA layer yields its merged weight
    W + ΔW (peft's `get_delta_weight` for each active adapter) under the base layer's name, or its
    base weight W alone with `merge_lora=False`; the adapter matrices themselves are not yielded.
    peft's `modules_to_save` copies replace the originals. Tied weights are yielded under each of
    their names, as a checkpoint holds them: vLLM's in-place reload waits for every name it loaded
    at start-up (measured: without `lm_head.weight` a tied Qwen2's reloaded log-probs were off by up
    to 2.7 nats).
    """
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    seen: set[int] = set()
    for module_name, module in base.named_modules():
        if _is_lora_layer(module):
            weight = module.base_layer.weight.detach()
            for adapter in _active_adapters(module) if merge_lora else []:
                if adapter in module.lora_A:
                    weight = weight + module.get_delta_weight(adapter).to(weight.dtype)
            yield f"{module_name}.weight", weight
            bias = getattr(module.base_layer, "bias", None)
            if bias is not None:
                yield f"{module_name}.bias", bias.detach()
            seen.update(id(p) for p in module.parameters())
    for name, tensor in base.state_dict(keep_vars=True).items():
        if id(tensor) in seen or "lora_" in name or ".original_module." in name:
            continue
        yield name.replace(".modules_to_save.default", "").replace(".base_layer", ""), tensor.detach()


def _is_lora_layer(module: nn.Module) -> bool:
    return hasattr(module, "lora_A") and hasattr(module, "base_layer") and hasattr(module, "get_delta_weight")


def _active_adapters(module: nn.Module) -> list[str]:
    if getattr(module, "merged", False) or getattr(module, "disable_adapters", False):
        return []  # already folded into base_layer.weight, or switched off
    active = getattr(module, "active_adapters", None) or getattr(module, "active_adapter", [])
    return [active] if isinstance(active, str) else list(active)


# ---------------------------------------------------------------------- the shared request/response shape
def generation_request(prompt_token_ids: list[list[int]], n: int, sampling: SamplingParams,
                       stop_token_ids: Sequence[int], seeds: Sequence[int] | None) -> dict:
    """The JSON body of the server's /generate (the colocated engine builds the same fields)."""
    return {
        "prompt_token_ids": prompt_token_ids, "n": n,
        "seeds": None if seeds is None else [int(s) for s in seeds],
        "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k,
        "max_tokens": sampling.max_new_tokens, "stop_token_ids": sorted(int(t) for t in stop_token_ids),
    }


def prompt_seeds_for(sampling: SamplingParams, num_prompts: int,
                     prompt_seeds: Sequence[int] | None) -> list[int] | None:
    """One vLLM seed per prompt: the caller's, else derived from `sampling.seed`, else None (unseeded)."""
    if prompt_seeds is not None:
        if len(prompt_seeds) != num_prompts:
            raise ValueError(f"{len(prompt_seeds)} prompt_seeds for {num_prompts} prompts")
        return [int(s) % 2**63 for s in prompt_seeds]
    if sampling.seed is None:
        return None
    # vLLM gives the k-th of n children seed + k: space prompts apart so their streams never overlap.
    return [engine_prompt_seed(sampling.seed, i) % 2**63 for i in range(num_prompts)]


def rollout_from_rows(rows: list[dict], prompt_token_ids: list[list[int]], prompts: list[str], n: int, *,
                      tokenizer: Any, pad_token_id: int, device: torch.device | str = "cpu") -> RolloutBatch:
    """Assemble vLLM's per-completion rows (token_ids, logprobs, finish_reason) into a `RolloutBatch`.

    Prompts are left-padded and completions right-padded with `pad_token_id`, as `InProcessEngine`
    does; `finish_reason` "stop" (EOS or a stop token, kept in the completion) or "length".
    """
    if len(rows) != len(prompts) * n:
        raise ValueError(f"engine returned {len(rows)} completions for {len(prompts)} prompts × n={n}")
    prompt_ids, prompt_mask = left_pad([prompt_token_ids[row // n] for row in range(len(rows))], pad_token_id)
    width = max((len(r["token_ids"]) for r in rows), default=0)
    count = len(rows)
    completion_ids = torch.full((count, width), pad_token_id, dtype=torch.long)
    completion_mask = torch.zeros((count, width), dtype=torch.long)
    behaviour = torch.zeros((count, width), dtype=torch.float32)
    for row, result in enumerate(rows):
        length = len(result["token_ids"])
        if length != len(result["logprobs"]):
            raise ValueError(f"row {row}: {length} tokens but {len(result['logprobs'])} log-probs")
        completion_ids[row, :length] = torch.tensor(result["token_ids"], dtype=torch.long)
        completion_mask[row, :length] = 1
        behaviour[row, :length] = torch.tensor(result["logprobs"], dtype=torch.float32)
    finish = [FINISH_STOP if r["finish_reason"] == "stop" else FINISH_LENGTH for r in rows]
    completions = tokenizer.batch_decode([r["token_ids"] for r in rows], skip_special_tokens=True)
    return RolloutBatch(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
        completion_mask=completion_mask, behaviour_logprobs=behaviour, finish_reasons=finish,
        group_ids=torch.arange(len(prompts)).repeat_interleave(n),
        prompts=[p for p in prompts for _ in range(n)], completions=completions,
    ).to(device)


class _TokenEngine:
    """What both vLLM engines share: tokenizing prompts, the stop tokens, assembling the batch."""

    name = "vllm"

    def __init__(self, tokenizer: Any, *, eos_token_ids: Sequence[int] = (), device: str | torch.device = "cpu",
                 add_special_tokens: bool = False, weight_sync: str = "merged") -> None:
        self.tokenizer = tokenizer
        self.weight_sync = weight_sync  # requested: auto | adapter | merged
        self.sync_mode: str | None = None  # used: "adapter" | "merged", chosen at the first sync
        self.last_sync: dict = {}  # the latest sync's {"mode", "bytes", "seconds"}
        self.device = torch.device(device)
        self.add_special_tokens = add_special_tokens
        self.pad_token_id = pad_token_id_of(tokenizer)
        eos = {int(t) for t in eos_token_ids}
        if tokenizer.eos_token_id is not None:
            eos.add(int(tokenizer.eos_token_id))
        self.eos_token_ids = sorted(eos)

    def generate(self, prompts: Sequence[str], n: int, sampling: SamplingParams, *,
                 prompt_seeds: Sequence[int] | None = None) -> RolloutBatch:
        """Sample n completions per prompt; rows prompt-major (see `RolloutBatch`)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not prompts:
            raise ValueError("no prompts")
        prompts = list(prompts)
        token_ids = encode_prompts(self.tokenizer, prompts, add_special_tokens=self.add_special_tokens)
        return self.generate_ids(token_ids, n, sampling, prompt_seeds=prompt_seeds, prompts=prompts)

    def generate_ids(self, prompt_token_ids: Sequence[Sequence[int]], n: int, sampling: SamplingParams, *,
                     prompt_seeds: Sequence[int] | None = None, prompts: Sequence[str] | None = None) -> RolloutBatch:
        """`generate` from token ids, sent to vLLM as given (multi-turn episodes: never re-tokenized)."""
        token_ids = [list(map(int, ids)) for ids in prompt_token_ids]
        if not token_ids or any(len(ids) == 0 for ids in token_ids):
            raise ValueError("no prompts, or an empty one: sampling needs a token to condition on")
        if prompts is None:
            prompts = self.tokenizer.batch_decode(token_ids, skip_special_tokens=False)
        prompts = list(prompts)
        request = generation_request(
            token_ids, n, sampling,
            stop_token_ids={*self.eos_token_ids, *sampling.stop_token_ids},
            seeds=prompt_seeds_for(sampling, len(prompts), prompt_seeds))
        rows = self._generate_rows(request)
        return rollout_from_rows(rows, request["prompt_token_ids"], prompts, n, tokenizer=self.tokenizer,
                                 pad_token_id=self.pad_token_id, device=self.device)

    def score(self, prompt_token_ids: list[list[int]], completion_token_ids: list[list[int]]) -> list[list[float]]:
        """log π(token | prefix) at temperature 1 of each given completion token, by the engine's weights."""
        if len(prompt_token_ids) != len(completion_token_ids):
            raise ValueError(f"{len(prompt_token_ids)} prompts but {len(completion_token_ids)} completions")
        return self._score([list(map(int, p)) for p in prompt_token_ids],
                           [list(map(int, c)) for c in completion_token_ids])

    def sync_weights(self, model: nn.Module) -> None:
        """Hand `model`'s current weights to vLLM: the adapter alone, or every weight (LoRA merged)."""
        start = time.perf_counter()
        first = self.sync_mode is None
        if first:
            self.sync_mode = self._choose_sync_mode(model)
        version = self.weight_version + 1
        pushed = 0
        if self.sync_mode == "adapter":
            if first:  # once: vLLM's base weights := the trainer's frozen base, the adapter goes on top
                pushed += self._push_weights(named_weights_for_vllm(model, merge_lora=False), version)
            pushed += self._push_adapter(adapter_payload(model), version)
        else:
            pushed += self._push_weights(named_weights_for_vllm(model), version)
        self.weight_version = version
        self.last_sync = {"mode": self.sync_mode, "bytes": pushed, "seconds": time.perf_counter() - start}

    def _choose_sync_mode(self, model: nn.Module) -> str:
        capabilities = {} if self.weight_sync == "merged" else self.lora_capabilities()
        problems = adapter_sync_problems(model, capabilities) if capabilities else []
        mode, warning = choose_weight_sync(self.weight_sync, problems, capabilities.get("device"))
        if warning:
            log.warning(warning)
        detail = f"adapter only (LoRA r={lora_rank(model)})" if mode == "adapter" else "merged weights"
        if mode == "merged" and self.weight_sync == "auto" and capabilities.get("device") == "cpu":
            detail += " (vLLM's CPU backend applies adapters slowly; weight_sync: adapter forces the adapter)"
        log.info("weight sync to %s: %s (rollout.vllm.weight_sync: %s)", self.name, detail, self.weight_sync)
        return mode

    def lora_capabilities(self) -> dict:
        """{"enabled", "max_lora_rank", "target_modules", "disabled_because"} of the vLLM behind this engine."""
        raise NotImplementedError

    def _push_weights(self, weights: Iterator[tuple[str, Tensor]], version: int) -> int:
        """Load these (HF name, tensor) pairs into vLLM, dropping any adapter; → bytes pushed."""
        raise NotImplementedError

    def _push_adapter(self, payload: bytes, version: int) -> int:
        """Apply this adapter (`lora_sync.adapter_payload`) to every later request; → bytes pushed."""
        raise NotImplementedError

    def _generate_rows(self, request: dict) -> list[dict]:
        raise NotImplementedError

    def _score(self, prompts: list[list[int]], completions: list[list[int]]) -> list[list[float]]:
        raise NotImplementedError


# ---------------------------------------------------------------------- colocate
class VLLMColocateEngine(_TokenEngine):
    """A vLLM `LLM` in the training process.

    `gpu_memory_utilization` is the share of the GPU vLLM may take (weights + KV cache), leaving the
    rest to training; on CPU, `kv_cache_gib` sizes the KV cache instead (vLLM's CPU default takes
    most of the RAM). `enable_sleep_mode` (GPUs only; vLLM refuses it on CPU) offloads vLLM's weights
    and drops its KV cache between rollouts (`LLM.sleep(level=1)`) so training gets the memory back.
    `weight_sync` auto/adapter with `lora_rank` (the policy's LoRA rank; None = no LoRA) starts vLLM with
    LoRA enabled, max_lora_rank the smallest vLLM accepts ≥ that rank, so adapters can be pushed.
    """

    name = "vllm_colocate"

    def __init__(self, model_path: str, tokenizer: Any, *, dtype: str = "auto", max_model_len: int | None = None,
                 gpu_memory_utilization: float = 0.3, kv_cache_gib: float | None = None,
                 enable_sleep_mode: bool = False, seed: int = 0, max_num_seqs: int = 256,
                 eos_token_ids: Sequence[int] = (), device: str | torch.device = "cpu",
                 llm_kwargs: dict | None = None, weight_sync: str = "merged", lora_rank: int | None = None) -> None:
        super().__init__(tokenizer, eos_token_ids=eos_token_ids, device=device, weight_sync=weight_sync)
        # One engine core in this process, so `collective_rpc` hands tensors to the worker without pickling.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        try:
            from vllm import LLM
        except ImportError as error:
            from grpokit.errors import MissingDependencyError

            raise MissingDependencyError(
                "rollout.engine: vllm_colocate runs vLLM inside the training process, and this Python has no "
                "vllm. Install vllm here, or train with the Python of grpokit's vLLM environment (`grpokit "
                "vllm-env` prints it, creating it once), or use rollout.engine: vllm_server") from error

        kwargs = dict(model=model_path, dtype=dtype, seed=seed, skip_tokenizer_init=True,
                      logprobs_mode="processed_logprobs", gpu_memory_utilization=gpu_memory_utilization,
                      enable_sleep_mode=enable_sleep_mode, max_num_seqs=max_num_seqs, enforce_eager=True)
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if kv_cache_gib is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * 2**30)
        max_lora_rank = None if lora_rank is None else vllm_max_lora_rank(lora_rank)
        self.lora_disabled_because = None
        from vllm.platforms import current_platform

        if weight_sync == "merged" or lora_rank is None:
            self.lora_disabled_because = "the engine was built for merged pushes (no LoRA policy or weight_sync: merged)"
        elif weight_sync == "auto" and current_platform.device_type == "cpu":  # see choose_weight_sync
            self.lora_disabled_because = "weight_sync: auto pushes merged weights on vLLM's CPU backend"
        elif max_lora_rank is None:
            self.lora_disabled_because = f"LoRA rank {lora_rank} is above 512, the largest max_lora_rank vLLM accepts"
        else:  # one adapter at a time: the trainer's latest (see AdapterSlot)
            kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1, max_cpu_loras=1)
        kwargs.update(llm_kwargs or {})
        self.llm = LLM(**kwargs)
        self.sleep_mode = enable_sleep_mode
        self.asleep = False
        self.weight_version = 0
        from grpokit.vllm_server.app import AdapterSlot, lora_capabilities

        self._capabilities = lora_capabilities(self.llm)
        self.adapter = AdapterSlot(self.llm) if self._capabilities["enabled"] else None

    def lora_capabilities(self) -> dict:
        return {**self._capabilities, "disabled_because": self.lora_disabled_because}

    def _lora_request(self):
        return None if self.adapter is None else self.adapter.request

    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def _generate_rows(self, request: dict) -> list[dict]:
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.inputs import TokensPrompt

        self._wake()
        seeds = request["seeds"] or [None] * len(request["prompt_token_ids"])
        params = [
            VLLMSamplingParams(
                n=request["n"], seed=seed, temperature=request["temperature"], top_p=request["top_p"],
                top_k=request["top_k"] if request["top_k"] > 0 else -1, max_tokens=request["max_tokens"],
                stop_token_ids=request["stop_token_ids"], logprobs=0, detokenize=False,
            )
            for seed in seeds
        ]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in request["prompt_token_ids"]],
                                    params, use_tqdm=False, lora_request=self._lora_request())
        if self.sleep_mode:
            self.llm.sleep(level=1)
            self.asleep = True
        return [
            {"token_ids": list(c.token_ids), "finish_reason": c.finish_reason,
             "logprobs": [entry[token].logprob for token, entry in zip(c.token_ids, c.logprobs)]}
            for output in outputs for c in sorted(output.outputs, key=lambda c: c.index)
        ]

    def _score(self, prompts: list[list[int]], completions: list[list[int]]) -> list[list[float]]:
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.inputs import TokensPrompt

        self._wake()
        params = VLLMSamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p + c) for p, c in zip(prompts, completions)],
                                    params, use_tqdm=False, lora_request=self._lora_request())
        return [[entry[token].logprob for entry, token in zip(output.prompt_logprobs[len(p):], c)]
                for output, p, c in zip(outputs, prompts, completions)]

    def _push_weights(self, weights: Iterator[tuple[str, Tensor]], version: int) -> int:
        """In memory into vLLM's in-place reload, then drop the stale prefix cache."""
        self._wake()
        weights = list(weights)
        if self.adapter is not None:
            self.adapter.clear()
        # The worker's in-place reload re-runs per-layer post-processing (CPU layers repack their
        # weights after loading), which a bare `model.load_weights` would skip.
        self.llm.collective_rpc("reload_weights",
                                kwargs={"weights_iterator": iter(weights), "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()
        return sum(tensor.numel() * tensor.element_size() for _, tensor in weights)

    def _push_adapter(self, payload: bytes, version: int) -> int:
        """Through a temporary directory: vLLM 0.32 loads adapters from a path only."""
        self._wake()
        self.adapter.load(payload)
        return len(payload)


# ---------------------------------------------------------------------- server
class VLLMServerEngine(_TokenEngine):
    """Client of a `grpokit vllm-serve MODEL` server at `url` (generation and weight pushes over HTTP)."""

    name = "vllm_server"
    shared_across_ranks = True  # every training process talks to the same server: rank 0 alone pushes

    def __init__(self, url: str, tokenizer: Any, *, timeout: float = 600.0, chunk_bytes: int = 256 * 2**20,
                 eos_token_ids: Sequence[int] = (), device: str | torch.device = "cpu",
                 weight_sync: str = "merged") -> None:
        super().__init__(tokenizer, eos_token_ids=eos_token_ids, device=device, weight_sync=weight_sync)
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.chunk_bytes = chunk_bytes
        self.weight_version = int(self.health()["weight_version"])

    def _request(self, path: str, body: bytes | None = None, headers: dict | None = None) -> dict:
        request = urllib.request.Request(self.url + path, data=body, headers=headers or {},
                                         method="GET" if body is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:2000]
            raise RuntimeError(f"vLLM server {self.url}{path} answered {error.code}: {detail}") from error
        except urllib.error.URLError as error:
            raise ConnectionError(
                f"cannot reach the vLLM server at {self.url} ({error.reason}); start it with "
                f"`grpokit vllm-serve MODEL --port PORT` and set rollout.vllm.server_url") from error

    def health(self) -> dict:
        return self._request("/health")

    def _generate_rows(self, request: dict) -> list[dict]:
        body = json.dumps(request).encode()
        return self._request("/generate", body, {"Content-Type": "application/json"})["rows"]

    def _score(self, prompts: list[list[int]], completions: list[list[int]]) -> list[list[float]]:
        body = json.dumps({"prompt_token_ids": prompts, "completion_token_ids": completions}).encode()
        return self._request("/score", body, {"Content-Type": "application/json"})["logprobs"]

    def lora_capabilities(self) -> dict:
        try:
            lora = self._request("/lora")
        except RuntimeError as error:  # a server from before adapter pushes (404)
            because = f"the vLLM server does not take adapter pushes ({error})"
            return {"enabled": False, "max_lora_rank": 0, "target_modules": [], "disabled_because": because}
        because = None if lora["enabled"] else "the vLLM server was started without --enable-lora"
        return {**lora, "disabled_because": because}

    def _push_weights(self, weights: Iterator[tuple[str, Tensor]], version: int) -> int:
        """As safetensors chunks of at most ~`chunk_bytes` each; the server loads them with the last."""
        from safetensors.torch import save as save_safetensors

        chunks: list[dict[str, Tensor]] = [{}]
        size = 0
        storages: set[int] = set()
        for name, tensor in weights:
            if size >= self.chunk_bytes:
                chunks.append({})
                size = 0
            tensor = tensor.to("cpu").contiguous()
            if tensor.untyped_storage().data_ptr() in storages:
                tensor = tensor.clone()  # tied weights: safetensors refuses two names on one storage
            storages.add(tensor.untyped_storage().data_ptr())
            chunks[-1][name] = tensor
            size += tensor.numel() * tensor.element_size()
        pushed = 0
        for index, chunk in enumerate(chunks):  # the server loads everything with the last chunk
            last = index == len(chunks) - 1
            body = save_safetensors(chunk)
            pushed += len(body)
            self._request("/update_weights", body,
                          {"Content-Type": "application/octet-stream", "X-Weight-Version": str(version),
                           "X-Last-Chunk": "1" if last else "0"})
        return pushed

    def _push_adapter(self, payload: bytes, version: int) -> int:
        """One POST /load_adapter: the server writes it where vLLM loads adapters from."""
        self._request("/load_adapter", payload,
                      {"Content-Type": "application/octet-stream", "X-Weight-Version": str(version)})
        return len(payload)
