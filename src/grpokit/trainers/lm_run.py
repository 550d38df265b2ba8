"""What the shared run loop (`grpokit.trainers.run_loop`) and the guards call on the language-model
trainer, coordinated over every process: rank 0 evaluates and writes checkpoints and the others wait
for it or receive its results; the engine gets the weights once per server, not once per rank.

`LMTrainer` inherits these; the algorithm (sample → score → advantages → update) stays in `lm.py`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


class LMRunCoordination:
    """The run-loop and guard interface of `LMTrainer` (`LoopTrainer`, `GuardedTrainer`)."""

    def train(self) -> dict[str, float]:
        """Run (or resume) training to `max_steps` (`grpokit.trainers.run_loop`); returns the last
        evaluation's metrics. A second trainer on the same run directory stops at once, naming this one."""
        from grpokit.trainers.run_loop import run_training

        try:
            return run_training(self)
        finally:
            self.rollouts.stop()  # async: the producer ends with the run

    # ------------------------------------------------------------------ the run loop's hooks
    def start_run(self) -> None:
        self._sync_engine()  # the engine starts from the (resumed, warmed-up) policy
        self.rollouts.start(self.step)  # async: the producer starts sampling ahead

    @contextlib.contextmanager
    def open_run_logs(self) -> Iterator[list]:
        """samples.jsonl (rank 0) while training: `_log_samples` and the evaluation write to it."""
        from grpokit.monitoring.samples import SamplesLog

        if not self.parallel.is_main:
            yield []
            return
        with SamplesLog(self.run_dir) as self.samples_log:
            yield [self.samples_log]
        self.samples_log = None

    def evaluate_in_run(self) -> dict[str, float]:
        """Rank 0 evaluates (and runs the on_evaluate callbacks); every rank gets its metrics, should_stop."""
        if not self.parallel.enabled:
            return self.evaluate()
        metrics = self.evaluate() if self.parallel.is_main else None
        metrics, self.should_stop = self.parallel.broadcast((metrics, self.should_stop))
        return metrics

    def save_run_checkpoint(self) -> None:
        """Rank 0 writes `checkpoints/step-N` (all ranks hold the same state); the others wait until it is
        whole. Under FSDP every rank first gathers the sharded optimizer state (a collective) for rank 0."""
        from grpokit.trainers.lm_state import save_checkpoint

        optimizer_state = None
        if self.parallel.fsdp:
            from grpokit.trainers.fsdp import FullOptimizerState

            optimizer_state = FullOptimizerState(self.train_module, self.optimizer).state_dict()
        # Every rank's rollout state (async: each rank's producer queued its own share of the prompts).
        rollout_states = self.parallel.gather(self.rollouts.checkpoint_state(self.step))
        self.parallel.barrier()
        if self.parallel.is_main:
            save_checkpoint(self, optimizer_state=optimizer_state, rollout_states=rollout_states)
        self.parallel.barrier()

    def resume_latest(self) -> Path | None:
        """Restore everything from the run's latest intact checkpoint (`grpokit.trainers.lm_state`); its path."""
        from grpokit.trainers.lm_state import resume_latest

        return resume_latest(self)

    # ------------------------------------------------------------------ what the guards act through
    # (grpokit.guards.callbacks.GuardedTrainer; rank 0 alone calls these)
    def save_tagged_checkpoint(self, tag: str) -> Path:
        """The current weights as `checkpoints/<tag>` (never pruned), e.g. the best-gold policy."""
        from grpokit.trainers.lm_state import save_checkpoint

        return save_checkpoint(self, tag=tag)

    def restore_weights(self, tag: str) -> int | None:
        """Load the policy weights of `checkpoints/<tag>`; its step, or None when there is none."""
        from grpokit.trainers.lm_state import restore_weights

        return restore_weights(self, tag)

    # ------------------------------------------------------------------ weights to the engine
    def _sync_engine(self) -> None:
        """Hand the current weights to the engine; one push per server, not one per rank."""
        if self.parallel.fsdp:  # every rank gathers the shards into its full-weights copy
            from grpokit.trainers.fsdp import full_state_dict

            self.weights_policy.model.load_state_dict(full_state_dict(self.model))
        if self.rollouts.owns_engine:  # async with vLLM: the producer pushes the versions it samples with
            return
        shared = getattr(self.engine, "shared_across_ranks", False)
        if not shared or self.parallel.is_main:
            self.engine.sync_weights(self.weights_policy.model)
        if shared:
            self.parallel.barrier()  # no rank samples before the new weights landed
