"""Adapter-only weight sync: what a LoRA policy sends to vLLM instead of its merged weights.

A LoRA policy's trainable state is its adapter, A: [r, d_in] and B: [d_out, r] per target module
(ΔW = (α/r)·B·A), a few MB where the merged model is the whole model. vLLM can apply such an
adapter per request (`enable_lora`, `LoRARequest`), so after an update only the adapter needs to
travel: peft's saved format, the tensors of `get_peft_model_state_dict` (names like
`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`) with the adapter config.

The push is one safetensors file whose metadata holds `adapter_config.json` (key
`ADAPTER_CONFIG_KEY`): one body over HTTP, and the same bytes written to a directory for the
colocated engine, so both engines load exactly what the server tests check.

Where vLLM cannot apply the adapter as the trainer does, `adapter_sync_problems` says why and the
engine falls back to the merged push (see `choose_weight_sync`).
"""

from __future__ import annotations

import json
from typing import Any

from torch import nn

ADAPTER_CONFIG_KEY = "adapter_config"  # safetensors metadata key holding adapter_config.json
# vLLM's `max_lora_rank` takes only these values (vllm.config.lora.MaxLoRARanks, vLLM 0.32).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
WEIGHT_SYNC_MODES = ("auto", "adapter", "merged")


def vllm_max_lora_rank(rank: int) -> int | None:
    """The smallest `max_lora_rank` vLLM accepts that holds an adapter of `rank`; None above 512.

    Cases: 1 → 1, 2 → 8, 16 → 16, 17 → 32, 513 → None.
    """
    return next((allowed for allowed in VLLM_LORA_RANKS if allowed >= rank), None)


def peft_model_of(model: nn.Module) -> nn.Module | None:
    """The peft model inside DDP/FSDP-style `.module` wrappers, or None when `model` has no peft adapter."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model if hasattr(model, "peft_config") and hasattr(model, "get_base_model") else None


def _active_adapter(peft_model: nn.Module) -> list[str]:
    active = getattr(peft_model, "active_adapters", None) or getattr(peft_model, "active_adapter", [])
    return [active] if isinstance(active, str) else list(active)


def lora_rank(model: nn.Module) -> int | None:
    """The largest rank of the policy's active LoRA adapter (rank_pattern included); None without LoRA."""
    peft_model = peft_model_of(model)
    if peft_model is None:
        return None
    ranks = []
    for name in _active_adapter(peft_model):
        config = peft_model.peft_config.get(name)
        if config is not None and hasattr(config, "r"):
            ranks.append(max([int(config.r), *map(int, (getattr(config, "rank_pattern", None) or {}).values())]))
    return max(ranks) if ranks else None


def adapter_sync_problems(model: nn.Module, capabilities: dict) -> list[str]:
    """Why vLLM cannot serve this policy as base + adapter; [] when it can.

    `capabilities` is what the engine reports: {"enabled": vLLM runs with enable_lora,
    "max_lora_rank": int, "target_modules": module names vLLM's LoRA can target, or None when
    unknown, "disabled_because": why LoRA is off, when it is}. A policy without LoRA has one problem:
    "the policy has no LoRA adapter".
    """
    peft_model = peft_model_of(model)
    if peft_model is None:
        return ["the policy has no LoRA adapter"]
    active = _active_adapter(peft_model)
    if len(active) != 1:
        return [f"{len(active)} active adapters ({', '.join(active) or 'none'}); vLLM applies one per request"]
    config = peft_model.peft_config[active[0]]
    peft_type = str(getattr(getattr(config, "peft_type", None), "value", getattr(config, "peft_type", "")))
    if peft_type != "LORA":
        return [f"the adapter is {peft_type or type(config).__name__}, not LoRA"]
    problems = []
    if not capabilities.get("enabled"):
        problems.append(capabilities.get("disabled_because") or "vLLM runs without LoRA")
    rank = lora_rank(model) or 0
    max_rank = int(capabilities.get("max_lora_rank") or 0)
    if capabilities.get("enabled") and rank > max_rank:
        problems.append(f"LoRA rank {rank} is above vLLM's max_lora_rank {max_rank}")
    if getattr(config, "modules_to_save", None):
        problems.append(f"modules_to_save {sorted(config.modules_to_save)} are full weights, not an adapter")
    if getattr(config, "use_dora", False):
        problems.append("DoRA (use_dora) is not supported by vLLM")
    if getattr(config, "bias", "none") != "none" or getattr(config, "lora_bias", False):
        problems.append("LoRA biases are not supported by vLLM")
    if getattr(config, "layer_replication", None):
        problems.append("layer_replication is not supported by vLLM")
    if getattr(config, "trainable_token_indices", None):
        problems.append("trainable_token_indices changes embedding rows, not an adapter vLLM applies")
    targets = capabilities.get("target_modules")
    if targets is not None:
        untargetable = sorted({name.rsplit(".", 1)[-1] for name, module in peft_model.named_modules()
                               if hasattr(module, "lora_A") and active[0] in module.lora_A} - set(targets))
        if untargetable:
            problems.append(f"LoRA on {untargetable}, which vLLM's LoRA cannot target (it can: {sorted(targets)})")
    for module in peft_model.modules():
        if getattr(module, "merged", False):
            problems.append("the adapter is merged into the base weights")
            break
    return problems


def choose_weight_sync(requested: str, problems: list[str], device: str | None = None) -> tuple[str, str | None]:
    """("adapter" | "merged", a one-line warning or None) for `rollout.vllm.weight_sync: requested`.

    merged → merged. adapter with problems → `ConfigError` naming the first. auto with problems → merged,
    with a warning unless the only reason is that the policy has no LoRA. auto on vLLM's CPU backend
    (`device` "cpu") → merged: its LoRA path copies each token's adapter matrices and multiplies them with
    plain einsums in every module, and rollouts with an adapter took 2.5× (tiny Qwen2) to 3.7× (SmolLM2-135M)
    as long as with merged weights — far more than the smaller push saves (bench/vllm_lora_sync.py).
    Otherwise → adapter.
    """
    from grpokit.config_schema import ConfigError

    if requested not in WEIGHT_SYNC_MODES:
        raise ConfigError(f"rollout.vllm.weight_sync: {requested!r}, expected one of {', '.join(WEIGHT_SYNC_MODES)}")
    if requested == "merged" or (requested == "auto" and device == "cpu"):
        return "merged", None
    if not problems:
        return "adapter", None
    if requested == "adapter":
        raise ConfigError(f"rollout.vllm.weight_sync: adapter is impossible here: {'; '.join(problems)} "
                          "(use weight_sync: auto or merged)")
    if problems == ["the policy has no LoRA adapter"]:
        return "merged", None
    return "merged", f"pushing merged weights to vLLM, not the adapter alone: {'; '.join(problems)}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    return str(value)


def adapter_config_json(model: nn.Module) -> str:
    """The active adapter's adapter_config.json, as peft's `save_pretrained` writes it (sets as sorted lists)."""
    peft_model = peft_model_of(model)
    config = peft_model.peft_config[_active_adapter(peft_model)[0]]
    return json.dumps({**config.to_dict(), "inference_mode": True}, default=_jsonable, sort_keys=True)


def adapter_payload(model: nn.Module) -> bytes:
    """The active adapter as one safetensors file in peft's saved format, its config in the metadata."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save

    peft_model = peft_model_of(model)
    name = _active_adapter(peft_model)[0]
    tensors = {key: tensor.detach().to("cpu").contiguous()
               for key, tensor in get_peft_model_state_dict(peft_model, adapter_name=name).items()}
    return save(tensors, metadata={ADAPTER_CONFIG_KEY: adapter_config_json(model)})
