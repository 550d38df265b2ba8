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
from grpokit.errors import GrpokitError
from grpokit.trainers.rollout_source import ASYNC_QUEUE_BY_RANK_KEY, ASYNC_QUEUE_KEY


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


def save_checkpoint(trainer, *, tag: str | None = None, optimizer_state: dict | None = None,
                    rollout_states: list[dict] | None = None) -> Path:
    """The trainer's whole state as `checkpoints/step-N`, or `checkpoints/<tag>` ("best"...: never pruned).

    Under FSDP the optimizer is sharded: `optimizer_state` is its state gathered beforehand by every
    rank (`LMTrainer.save_run_checkpoint`); a tagged save made by rank 0 alone (a guard's best-gold copy)
    holds the weights without the optimizer. `rollout_states`: every rank's `rollouts.checkpoint_state`
    (training.async: each rank's queue), gathered beforehand; None = this process's alone.
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
        save_extra = getattr(trainer, "save_extra_checkpoint_files", None)  # e.g. PPO's critic
        if save_extra is not None:
            save_extra(Path(directory).parent)  # beside model/, inside the checkpoint being written

    optimizer = trainer.optimizer
    if _fsdp(trainer):
        from grpokit.trainers.fsdp import GatheredState

        optimizer = GatheredState(optimizer_state) if optimizer_state is not None else None
    extra = {"sampler": trainer.sampler.state_dict(), "tokens_seen": trainer.tokens_seen, **_guard_extra(trainer)}
    # training.async: the sampled-but-untrained rollouts, the sampler as of the last of them
    rollout_states = rollout_states or [trainer.rollouts.checkpoint_state(trainer.step)]
    extra.update(rollout_states[0])
    if len(rollout_states) > 1 and ASYNC_QUEUE_KEY in rollout_states[0]:
        extra[ASYNC_QUEUE_BY_RANK_KEY] = [state[ASYNC_QUEUE_KEY] for state in rollout_states]
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


def resume_latest(trainer) -> Path | None:
    """Restore the trainer from its run directory's latest intact checkpoint; its path, or None if there is none.

    A damaged latest checkpoint is skipped, with a warning, for the one before it
    (`CheckpointManager.latest_intact`).
    """
    from grpokit.models.loading import load_policy_weights

    manager = _manager(trainer)
    path = manager.latest_intact()
    if path is None:
        return None
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
    load_extra = getattr(trainer, "load_extra_checkpoint_files", None)  # e.g. PPO's critic
    if load_extra is not None:
        load_extra(path)
    if _fsdp(trainer):  # every rank loaded the full weights; each keeps its shards of them
        from grpokit.trainers.fsdp import load_full_state_dict

        load_full_state_dict(trainer.train_module, policy.model.state_dict())
    trainer.step = int(state["step"])
    extra = state["extra_state"]
    trainer.sampler.load_state_dict(extra["sampler"])
    trainer.rollouts.load_checkpoint_state(extra, rank=trainer.parallel.rank,
                                           world_size=trainer.parallel.world_size)
    trainer.tokens_seen = int(extra.get("tokens_seen", 0))
    _load_guard_extra(trainer, extra)
    return path


def _guard_extra(trainer) -> dict:
    """The guards' memory and how the run ended, checkpointed with the weights (see grpokit.guards.state)."""
    from grpokit.guards.state import GUARDS_KEY, RUN_END_KEY, guard_states

    return {GUARDS_KEY: guard_states(trainer.callbacks), RUN_END_KEY: getattr(trainer, "run_end", None)}


def _load_guard_extra(trainer, extra: dict) -> None:
    from grpokit.guards.state import GUARDS_KEY, RUN_END_KEY, load_guard_states

    unclaimed = load_guard_states(trainer.callbacks, extra.get(GUARDS_KEY) or {})
    if unclaimed:  # e.g. the gold guard was configured then and is not now: its memory is not used
        import logging

        logging.getLogger("grpokit.trainer").info("checkpointed state of %s: no such guard now", unclaimed)
    trainer.run_end = extra.get(RUN_END_KEY)


def eval_checkpoint(run_dir: str | Path) -> Path:
    """The run's latest intact checkpoint, found READ-ONLY (nothing in the run directory is created or
    repaired); `NoCheckpointError` when the run has none."""
    manager = CheckpointManager(Path(run_dir), keep_last=None, read_only=True)
    path = manager.pin_latest_intact()  # pinned: a trainer running beside us does not prune it meanwhile
    if path is None:
        raise NoCheckpointError(manager.checkpoints_dir)
    return path


def load_weights_for_eval(trainer, path: Path) -> int:
    """Load the policy weights of checkpoint `path` (read-only; optimizer, RNGs, guards untouched) and
    hand them to the engine; returns the checkpoint's step, which becomes the trainer's."""
    from grpokit.checkpoint import load_checkpoint
    from grpokit.models.loading import load_policy_weights

    weights = model_dir(path)
    policy = _weights_policy(trainer)
    if policy.is_lora and (weights / "adapter").is_dir():
        weights = weights / "adapter"
    load_policy_weights(policy, weights)
    state = load_checkpoint(path, restore_rng=False)
    trainer.step = int(state["step"])
    trainer.run_end = state["extra_state"].get("run_end")  # how the run ended, when it has
    trainer.engine.sync_weights(policy.model)
    return trainer.step


class NoCheckpointError(GrpokitError):
    """`grpokit eval` on a run directory without a complete checkpoint (and without --base)."""

    kind = "eval"

    def __init__(self, checkpoints_dir: Path):
        self.checkpoints_dir = checkpoints_dir
        where = "does not exist" if not checkpoints_dir.is_dir() else "holds no complete checkpoint"
        super().__init__(f"{checkpoints_dir} {where}: nothing to evaluate (pass --base to evaluate the base model)")
