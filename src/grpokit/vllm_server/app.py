"""A vLLM generation server that grpokit trainers connect to by URL and push new weights into.

Run by `grpokit vllm-serve MODEL` (which finds or creates the vLLM environment), or directly:

    <vllm-env>/bin/python path/to/grpokit/vllm_server/app.py MODEL --port 8000

Endpoints (JSON unless said otherwise):
- GET  /health          → {"status": "ok", "model": ..., "weight_version": k, "dtype": ...}
- GET  /lora            → {"enabled": started with --enable-lora, "max_lora_rank", "target_modules": module
                          names an adapter may target (null: unknown), "adapter": the applied one's name | null}
- POST /generate        {"prompt_token_ids": [[int]], "n": int, "seeds": [int] | null, "temperature",
                          "top_p", "top_k", "max_tokens", "stop_token_ids": [int]}
                        → {"rows": [{"token_ids": [int], "logprobs": [float], "finish_reason": str}]},
                          prompt-major (the n completions of prompt 0 first). `logprobs` are vLLM's
                          processed log-probs of the sampled tokens (after temperature, top-k, top-p).
- POST /score           {"prompt_token_ids": [[int]], "completion_token_ids": [[int]]}
                        → {"logprobs": [[float]]}: log π(completion token | prefix) at temperature 1,
                          for checking a weight sync on a fixed completion.
- POST /update_weights  body: a safetensors file (application/octet-stream) holding a chunk of the
                        model's parameters under their Hugging Face names; headers `X-Last-Chunk: 0|1`
                        and `X-Weight-Version: k`. Chunks are buffered; with the last one the whole
                        set is loaded by vLLM's in-place `reload_weights` (the model's own loader,
                        which knows its fused qkv / gate-up layouts and re-runs per-layer
                        post-processing), the prefix cache is reset (its KV entries were computed
                        with the old weights), the applied adapter (if any) is dropped, and the
                        version is recorded.
- POST /load_adapter    body: a LoRA adapter in peft's saved format, one safetensors file whose metadata
                        key "adapter_config" holds adapter_config.json (`grpokit.rollout.lora_sync`);
                        header `X-Weight-Version: k`. Needs `--enable-lora`. vLLM loads it under a new
                        adapter id (it caches adapters by id), the previous one is evicted, and from
                        then on every /generate and /score runs with it on top of the base weights.

Tokens in, tokens out: the server never tokenizes (`skip_tokenizer_init`), so the trainer's
tokenizer and chat template are the only ones in play. One lock serializes generation and weight
loading: a weight update never lands in the middle of a generation.
"""


import argparse
import json
import os
import shutil
import struct
import tempfile
import threading

# Keep vLLM's engine core in this process: `collective_rpc` then hands the pushed tensors to the worker
# by reference instead of pickling them to an engine-core process.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def _request_errors() -> tuple[type[Exception], ...]:
    try:
        from vllm.exceptions import VLLMValidationError  # vLLM's "bad request" (0.32)
    except ImportError:
        return (ValueError,)
    return (ValueError, VLLMValidationError)


def checkpoint_shapes(model: str) -> dict[str, tuple[int, ...]]:
    """Parameter name → shape from a local checkpoint's safetensors headers ({} for a hub id)."""
    from pathlib import Path

    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for path in sorted(Path(model).glob("*.safetensors")) if Path(model).is_dir() else []:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                shapes[name] = tuple(handle.get_slice(name).get_shape())
    return shapes


def weight_problems(weights: dict, expected: dict[str, tuple[int, ...]]) -> list[str]:
    """Why pushed weights cannot be this checkpoint's: unknown names or other shapes (checked before
    loading: a reload that fails half-way leaves vLLM's weights undefined). A tied lm_head may be
    pushed although the checkpoint omits it."""
    if not expected:
        return []
    problems = []
    for name, tensor in sorted(weights.items()):
        if name not in expected:
            if not name.endswith("lm_head.weight"):
                problems.append(f"{name}: not in the served checkpoint")
        elif tuple(tensor.shape) != expected[name]:
            problems.append(f"{name}: shape {tuple(tensor.shape)}, the served checkpoint has {expected[name]}")
    return problems


def adapter_config_of(body: bytes) -> dict:
    """adapter_config.json from a pushed adapter's safetensors metadata (key "adapter_config").

    A safetensors file starts with its header's length (u64, little-endian), then the JSON header,
    whose "__metadata__" holds string pairs.
    """
    if len(body) < 8:
        raise ValueError("too short for a safetensors file")
    (length,) = struct.unpack("<Q", body[:8])
    header = json.loads(body[8 : 8 + length])
    metadata = header.get("__metadata__") or {}
    if "adapter_config" not in metadata:
        raise ValueError("its safetensors metadata has no adapter_config")
    return json.loads(metadata["adapter_config"])


def write_adapter_dir(directory: str, body: bytes) -> None:
    """Write a pushed adapter as peft saves one: adapter_model.safetensors + adapter_config.json."""
    config = adapter_config_of(body)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "adapter_model.safetensors"), "wb") as handle:
        handle.write(body)
    with open(os.path.join(directory, "adapter_config.json"), "w") as handle:
        json.dump(config, handle)


def _supported_lora_modules(worker) -> list:
    """(In the vLLM worker) module names an adapter may target: vLLM's packed names (qkv_proj) expanded
    to the checkpoint's (q_proj, k_proj, v_proj), as vLLM's own adapter loader expects them."""
    manager = worker.model_runner.lora_manager._adapter_manager
    packed = manager.packed_modules_mapping
    names = set()
    for module in manager.supported_lora_modules:
        names.update(packed.get(module, [module]))
    return sorted(names)


def lora_capabilities(llm) -> dict:
    """{"enabled", "max_lora_rank", "target_modules" (None when the worker cannot be asked), "device"} of
    this LLM."""
    config = llm.llm_engine.vllm_config
    device = str(getattr(config.device_config, "device_type", "")) or None  # "cpu": adapters are slow there
    lora_config = config.lora_config
    if lora_config is None:
        return {"enabled": False, "max_lora_rank": 0, "target_modules": [], "device": device}
    try:  # a callable reaches the worker only with the engine core in this process (the default here)
        modules = llm.collective_rpc(_supported_lora_modules)[0]
    except Exception:  # noqa: BLE001 (unknown: vLLM validates the adapter when it loads it)
        modules = None
    return {"enabled": True, "max_lora_rank": int(lora_config.max_lora_rank), "target_modules": modules,
            "device": device}


class AdapterSlot:
    """The one LoRA adapter vLLM applies to every request, replaced by each push.

    vLLM caches adapters by id, so each push gets a new id (and name); the new adapter is loaded
    eagerly (a bad one fails here, leaving the previous in place), then the previous one is removed
    from vLLM and from disk, so memory stays at one adapter. The prefix cache is reset: its KV entries
    belong to the previous adapter. Files live in a temporary directory (vLLM loads adapters from disk;
    a few MB through the page cache).
    """

    def __init__(self, llm) -> None:
        self.llm = llm
        self.directory = tempfile.TemporaryDirectory(prefix="grpokit-lora-")
        self.request = None  # the vllm LoRARequest every generation carries; None = base weights only
        self.next_id = 1

    def load(self, body: bytes):
        from vllm.lora.request import LoRARequest

        adapter_id = self.next_id
        self.next_id += 1
        path = os.path.join(self.directory.name, f"adapter-{adapter_id}")
        write_adapter_dir(path, body)
        request = LoRARequest(f"grpokit-adapter-{adapter_id}", adapter_id, path)
        try:
            self.llm.llm_engine.add_lora(request)
        except Exception:
            shutil.rmtree(path, ignore_errors=True)
            raise
        self.clear()
        self.request = request
        self.llm.reset_prefix_cache()
        return request

    def clear(self) -> None:
        """Stop applying the adapter (a full weight push defines the served weights on its own)."""
        if self.request is None:
            return
        if self.request.lora_int_id in self.llm.llm_engine.list_loras():
            self.llm.llm_engine.remove_lora(self.request.lora_int_id)
        shutil.rmtree(self.request.lora_path, ignore_errors=True)
        self.request = None


def build_llm(args: argparse.Namespace):
    from vllm import LLM

    kwargs = dict(
        model=args.model, dtype=args.dtype, seed=args.seed, enforce_eager=args.enforce_eager,
        skip_tokenizer_init=True, logprobs_mode="processed_logprobs", max_num_seqs=args.max_num_seqs,
        gpu_memory_utilization=args.gpu_memory_utilization,
        tensor_parallel_size=args.tensor_parallel_size,
    )
    if args.max_model_len is not None:
        kwargs["max_model_len"] = args.max_model_len
    if args.kv_cache_gib is not None:  # vLLM's CPU backend otherwise takes most of the machine's RAM
        kwargs["kv_cache_memory_bytes"] = int(args.kv_cache_gib * 2**30)
    if args.enable_lora:  # one adapter at a time: the trainer's latest (see AdapterSlot)
        kwargs.update(enable_lora=True, max_lora_rank=args.max_lora_rank, max_loras=1, max_cpu_loras=1)
    return LLM(**kwargs)


def reload_weights(llm, weights: list) -> None:
    """Load (HF name, tensor) pairs into the running model and forget KV entries of the old weights.

    The worker's `reload_weights` re-runs the loader's per-layer post-processing (CPU and quantized
    layers repack their weights after loading), which a bare `model.load_weights` would skip.
    """
    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights), "is_checkpoint_format": True})
    llm.reset_prefix_cache()


def completion_logprobs(output, prompt_length: int, completion: list) -> list:
    """The prompt log-probs vLLM computed for the completion part of prompt ++ completion."""
    entries = output.prompt_logprobs[prompt_length:]
    return [entry[int(token)].logprob for entry, token in zip(entries, completion)]


def create_app(llm, model_name: str):
    from fastapi import FastAPI, HTTPException, Request
    from safetensors.torch import load as load_safetensors
    from starlette.concurrency import run_in_threadpool
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    app = FastAPI(title="grpokit vLLM server")
    REQUEST_ERRORS = _request_errors()  # noqa: N806 (a constant of this app)
    expected_shapes = checkpoint_shapes(model_name)
    lock = threading.Lock()
    state = {"weight_version": 0, "pending": {}}  # pending: chunks of an update not yet complete
    capabilities = lora_capabilities(llm)
    adapter = AdapterSlot(llm) if capabilities["enabled"] else None

    def lora_request():
        return None if adapter is None else adapter.request

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": model_name, "weight_version": state["weight_version"],
                "dtype": str(llm.llm_engine.model_config.dtype)}

    @app.get("/lora")
    def lora() -> dict:
        request = lora_request()
        return {**capabilities, "adapter": None if request is None else request.lora_name}

    @app.post("/generate")
    def generate(request: dict) -> dict:
        try:
            prompts = [TokensPrompt(prompt_token_ids=[int(t) for t in ids]) for ids in request["prompt_token_ids"]]
            n = int(request["n"])
            seeds = request.get("seeds") or [None] * len(prompts)
            if len(seeds) != len(prompts):
                raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
            params = [
                SamplingParams(
                    n=n, seed=seed, temperature=float(request["temperature"]), top_p=float(request["top_p"]),
                    top_k=int(request["top_k"]) if int(request["top_k"]) > 0 else -1,  # vLLM: -1 = off
                    max_tokens=int(request["max_tokens"]), stop_token_ids=list(request["stop_token_ids"]),
                    logprobs=0, detokenize=False, skip_special_tokens=False,
                )
                for seed in seeds
            ]
        except (KeyError, TypeError, ValueError) as error:
            raise HTTPException(status_code=422, detail=f"bad /generate request: {error!r}") from error
        with lock:
            try:
                outputs = llm.generate(prompts, params, use_tqdm=False, lora_request=lora_request())
            except REQUEST_ERRORS as error:  # e.g. a prompt longer than max_model_len: the client's to fix
                raise HTTPException(status_code=422, detail=f"vLLM refused the request: {error}") from error
        rows = []
        for output in outputs:
            for completion in sorted(output.outputs, key=lambda c: c.index):
                logprobs = [entry[token].logprob for token, entry in zip(completion.token_ids, completion.logprobs)]
                rows.append({"token_ids": list(completion.token_ids), "logprobs": logprobs,
                             "finish_reason": completion.finish_reason})
        return {"rows": rows}

    @app.post("/score")
    def score(request: dict) -> dict:
        """Log-probs (temperature 1) of given completions: {"prompt_token_ids", "completion_token_ids"}."""
        try:
            pairs = list(zip(request["prompt_token_ids"], request["completion_token_ids"], strict=True))
        except (KeyError, TypeError, ValueError) as error:
            raise HTTPException(status_code=422, detail=f"bad /score request: {error!r}") from error
        prompts = [TokensPrompt(prompt_token_ids=[int(t) for t in p + c]) for p, c in pairs]
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
        with lock:
            outputs = llm.generate(prompts, params, use_tqdm=False, lora_request=lora_request())
        return {"logprobs": [completion_logprobs(o, len(p), c) for o, (p, c) in zip(outputs, pairs)]}

    @app.post("/update_weights")
    async def update_weights(request: Request) -> dict:
        body = await request.body()
        try:
            tensors = load_safetensors(body)
        except Exception as error:  # a truncated or foreign body
            raise HTTPException(status_code=422, detail=f"body is not a safetensors file: {error}") from error
        state["pending"].update(tensors)
        if request.headers.get("X-Last-Chunk", "1") != "1":
            return {"received": len(tensors), "pending": len(state["pending"])}
        pending, state["pending"] = state["pending"], {}
        problems = weight_problems(pending, expected_shapes)
        if problems:
            detail = f"{len(problems)} pushed weights do not fit the served model: " + "; ".join(problems[:5])
            raise HTTPException(status_code=422, detail=detail)
        weights = list(pending.items())
        version = int(request.headers.get("X-Weight-Version", state["weight_version"] + 1))

        def load() -> None:  # off the event loop: /health stays responsive while a generation holds the lock
            with lock:
                try:
                    if adapter is not None:
                        adapter.clear()
                    reload_weights(llm, weights)
                except Exception as error:  # tell the trainer why; vLLM's weights may now be half-loaded
                    raise HTTPException(status_code=500, detail=f"reload_weights failed ({error!r}); the "
                                        "served weights are undefined until a complete push succeeds") from error
                state["weight_version"] = version

        await run_in_threadpool(load)
        return {"loaded": len(weights), "weight_version": version}

    @app.post("/load_adapter")
    async def load_adapter(request: Request) -> dict:
        if adapter is None:
            raise HTTPException(status_code=409, detail="this server runs without LoRA: start it with --enable-lora")
        body = await request.body()
        try:
            adapter_config_of(body)
        except Exception as error:  # a truncated or foreign body
            raise HTTPException(status_code=422, detail=f"body is not an adapter push: {error}") from error
        version = int(request.headers.get("X-Weight-Version", state["weight_version"] + 1))

        def load():
            with lock:
                try:
                    loaded = adapter.load(body)
                except Exception as error:  # vLLM refused it: the previous adapter stays applied
                    raise HTTPException(status_code=422, detail=f"vLLM cannot load the adapter: {error}") from error
                state["weight_version"] = version
                return loaded

        loaded = await run_in_threadpool(load)
        return {"adapter": loaded.lora_name, "bytes": len(body), "weight_version": version}

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="local directory or hub id of a causal LM vLLM can load")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--kv-cache-gib", type=float, default=None,
                        help="KV cache size in GiB (on CPU, vLLM's default takes most of the RAM)")
    parser.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--enable-lora", action="store_true",
                        help="accept LoRA adapter pushes (/load_adapter): trainers then send only the adapter")
    parser.add_argument("--max-lora-rank", type=int, default=16, choices=(1, 8, 16, 32, 64, 128, 256, 320, 512),
                        help="largest adapter rank accepted with --enable-lora")
    args = parser.parse_args(argv)

    import uvicorn

    llm = build_llm(args)
    uvicorn.run(create_app(llm, args.model), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
