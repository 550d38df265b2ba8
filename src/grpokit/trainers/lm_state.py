"""Saving and resuming the language-model trainer's whole state.

A checkpoint holds the policy (HF format: full weights, merged LoRA or the adapter alone), the
optimizer, the scheduler, the RNG states, the step, the data cursor and the token counter. On CPU
a resumed run reproduces the uninterrupted run's losses to the bit: sampling and mini-batch
shuffles are seeded by step, and everything else is restored.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from grpokit.checkpoint import CheckpointManager, model_dir


@contextlib.contextmanager
def _quiet_hf_progress():
    """transformers draws a progress bar per saved shard; noise in a training log."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _manager(trainer) -> CheckpointManager:
    return CheckpointManager(Path(trainer.config.logging.run_dir), keep_last=trainer.config.checkpoint.keep_last)


def _weights_policy(trainer):
    """Where the full weights live: the policy, or under FSDP its full-weights copy (`weights_policy`)."""
    return getattr(trainer, "weights_policy", trainer.policy)


def _fsdp(trainer) -> bool:
    parallel = getattr(trainer, "parallel", None)
    return bool(parallel is not None and parallel.fsdp)


def save_checkpoint(trainer, *, tag: str | None = None, optimizer_state: dict | None = None) -> Path:
    """The trainer's whole state as `checkpoints/step-N`, or `checkpoints/<tag>` ("best"...: never pruned).

    Under FSDP the optimizer is sharded: `optimizer_state` is its state gathered beforehand by every
    rank (`LMTrainer._save_on_main`); a tagged save made by rank 0 alone (a guard's best-gold copy)
    holds the weights without the optimizer.
    """
    from grpokit.models.loading import save_policy

    merged = trainer.config.checkpoint.save_merged_lora
    policy = _weights_policy(trainer)

    def save_model(directory: Path) -> None:
        with _quiet_hf_progress():
            save_policy(policy, directory, merged=merged)
        if merged and policy.is_lora:
            # The merged copy is for users; resuming needs the adapter itself.
            save_policy(policy, Path(directory) / "adapter", merged=False)

    optimizer = trainer.optimizer
    if _fsdp(trainer):
        from grpokit.trainers.fsdp import GatheredState

        optimizer = GatheredState(optimizer_state) if optimizer_state is not None else None
    extra = {"sampler": trainer.sampler.state_dict(), "tokens_seen": trainer.tokens_seen}
    return _manager(trainer).save(trainer.step, model_saver=save_model, optimizer=optimizer,
                                  scheduler=trainer.scheduler, extra_state=extra, tag=tag)


def restore_weights(trainer, tag: str = "best") -> int | None:
    """Load the policy weights of `checkpoints/<tag>` in place (optimizer and step untouched).

    Returns the step the checkpoint was saved at, or None when there is no such checkpoint.
    """
    from grpokit.checkpoint import load_checkpoint
    from grpokit.models.loading import load_policy_weights

    path = _manager(trainer).tagged(tag)
    if path is None:
        return None
    weights = model_dir(path)
    policy = _weights_policy(trainer)
    if policy.is_lora and (weights / "adapter").is_dir():
        weights = weights / "adapter"
    # Under FSDP (rank 0 alone runs callbacks) this restores the full-weights copy that sampling,
    # evaluation and the final checkpoint use; the run stops right after a restore.
    load_policy_weights(policy, weights)
    return load_checkpoint(path, restore_rng=False)["step"]


def resume_latest(trainer) -> bool:
    """Restore the trainer from its run directory's latest complete checkpoint; False if there is none."""
    from grpokit.models.loading import load_policy_weights

    manager = _manager(trainer)
    path = manager.latest()
    if path is None:
        return False
    optimizer = trainer.optimizer
    if _fsdp(trainer):
        from grpokit.trainers.fsdp import FullOptimizerState

        optimizer = FullOptimizerState(trainer.train_module, trainer.optimizer)  # scatters into the shards
    state = manager.load(path, optimizer=optimizer, scheduler=trainer.scheduler, restore_rng=True)
    weights = model_dir(path)
    policy = _weights_policy(trainer)
    if policy.is_lora and (weights / "adapter").is_dir():
        weights = weights / "adapter"
    load_policy_weights(policy, weights)
    if _fsdp(trainer):  # every rank loaded the full weights; each keeps its shards of them
        from grpokit.trainers.fsdp import load_full_state_dict

        load_full_state_dict(trainer.train_module, policy.model.state_dict())
    trainer.step = int(state["step"])
    extra = state["extra_state"]
    trainer.sampler.load_state_dict(extra["sampler"])
    trainer.tokens_seen = int(extra.get("tokens_seen", 0))
    return True
