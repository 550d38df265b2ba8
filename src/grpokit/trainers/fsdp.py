"""FSDP2 for the trainer: which modules are sharded, and gathering / scattering full weights and state.

Under FSDP (`training.fsdp: true`, or an accelerate FSDP config) every decoder layer is its own
`fully_shard` group and a `LogprobModule` around the model is the root (embeddings, final norm and
lm_head, tied or not). Parameters, gradients and optimizer state exist only as shards; the trainer
keeps one full-weights copy per process for sampling, evaluation, checkpoints and vLLM pushes, and
refreshes it with `full_state_dict` after every update. Every function here that touches shards is
a collective: all ranks call it, in the same order.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import Tensor, nn

from grpokit.config_schema import ConfigError
from grpokit.models.logprobs import LogprobModule

log = logging.getLogger("grpokit.distributed")


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a HF causal LM (peft-wrapped or not): modules whose class name is in
    the model's `_no_split_modules` (e.g. Qwen2DecoderLayer), the unit FSDP shards and gathers."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    layers = [m for m in base.modules() if type(m).__name__ in names]
    if not layers:
        raise ConfigError(f"training.fsdp: {type(base).__name__} names no decoder-layer class (_no_split_modules)")
    return layers


def fsdp_shard(model: nn.Module) -> nn.Module:
    """Shard `model` with PyTorch FSDP2: every decoder layer its own group, the rest (embeddings, final
    norm, lm_head, tied or not) in the root group of a `LogprobModule` around it. Returns that root.

    Parameters become DTensor shards in place, so optimizers must be built afterwards. Every forward
    of a sharded module is a collective (all-gathers): call it through the returned root, the same
    number of times on every rank. Gradients are reduce-scattered and averaged over ranks, as DDP's.
    """
    from torch.distributed.fsdp import fully_shard

    layers = decoder_layers(model)
    for layer in layers:
        fully_shard(layer)
    root = fully_shard(LogprobModule(model))
    log.info("FSDP2: %d decoder layers + the root sharded over %d processes",
             len(layers), torch.distributed.get_world_size())
    return root


@contextlib.contextmanager
def no_gradient_sync(module: nn.Module):
    module.set_requires_gradient_sync(False)  # gradients accumulate unreduced until the last micro-batch
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def full_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """`model.state_dict()` with every DTensor shard gathered into the full tensor (a collective: every
    rank calls it, in the same order); plain tensors pass through."""
    from torch.distributed.tensor import DTensor

    return {name: value.full_tensor() if isinstance(value, DTensor) else value
            for name, value in model.state_dict().items()}


def load_full_state_dict(root: nn.Module, model_state: dict[str, Tensor]) -> None:
    """Scatter full weights (keys as in the inner model's `state_dict`) into `root`'s shards (every rank)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(root, {f"model.{k}": v for k, v in model_state.items()},
                         options=StateDictOptions(full_state_dict=True))


class FullOptimizerState:
    """The optimizer of FSDP shards as a whole: `state_dict()` gathers it (a collective, so call it on
    every rank), `load_state_dict` scatters a gathered one back into the shards (every rank).

    Keys are parameter names (torch.distributed.checkpoint's layout), not the indices of a plain
    `optimizer.state_dict()`: an FSDP checkpoint resumes an FSDP run.
    """

    def __init__(self, root: nn.Module, optimizer: torch.optim.Optimizer):
        self.root, self.optimizer = root, optimizer

    def state_dict(self) -> dict:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(self.root, self.optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_state_dict(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(self.root, self.optimizer, state, options=StateDictOptions(full_state_dict=True))


class GatheredState:
    """A state gathered beforehand on every rank, handed to the rank-0 checkpoint writer."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self) -> dict:
        return self._state
