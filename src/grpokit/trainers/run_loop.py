"""The run loop every trainer shares (the language-model and the flow trainer):

    lock the run directory; resume from the latest intact checkpoint (or start fresh)
    evaluate the starting policy                                       (a fresh run only)
    while step < max_steps and no callback stopped the run:
        metrics ← trainer.train_step(step)                             sample → score → advantages → update
        advance the learning-rate schedule
        evaluate every `eval.every_steps`                              (merged into the step's metrics)
        callbacks' on_step_end                                         (they may add keys, e.g. alarm/*, and stop)
        log, progress
        checkpoint every `checkpoint.every_steps`
    final evaluation (unless this step had one; also after an early stop)
    final checkpoint with how the run ended; on_train_end; metrics.png

What differs between trainers is theirs: one step, an evaluation, saving and resuming
(:class:`LoopTrainer`). Callbacks see a step's metrics before they are logged, so the keys they
add are logged with them (the contract of `grpokit.guards.callbacks`).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, Protocol


class LoopTrainer(Protocol):
    """What the run loop needs of a trainer.

    `config` has the sections `training` (max_steps), `eval` (every_steps), `checkpoint` (resume,
    every_steps) and `logging` (run_dir, tensorboard, wandb_project, progress, plot); `parallel` is a
    `grpokit.trainers.distributed.DataParallel` (one process: every collective a no-op).
    """

    config: Any
    preset: Any  # its `name` titles the progress line
    run_dir: Path
    parallel: Any
    scheduler: Any  # a torch LR scheduler, stepped once per training step (`grpokit.trainers.lr_schedule`)
    callbacks: list
    step: int  # training steps done
    should_stop: bool  # set by a callback to end the run after this step
    stop_reason: dict | None  # what the guard that stopped the run recorded (grpokit.guards.callbacks.act)
    run_end: dict | None  # how the run ended (grpokit.guards.state.run_end), set before the final checkpoint
    eval_data: Any  # None: no evaluation
    plot_keys: tuple[str, ...]  # the curves drawn to metrics.png (fnmatch patterns)
    progress_fields: dict[str, str]  # shown on the progress line: label → metric name

    def resume_latest(self) -> Path | None:
        """Restore the whole state from the run's latest intact checkpoint; its path, or None."""

    def start_run(self) -> None:
        """Anything to do once the (resumed) state is in place, before the first step."""

    def train_step(self, step: int) -> dict[str, float]:
        """Training step `step + 1` (0-based `step`: the steps done before it); its metrics."""

    def evaluate_in_run(self) -> dict[str, float]:
        """Evaluate the current policy at `self.step` (callbacks' on_evaluate included); its metrics."""

    def save_run_checkpoint(self) -> None:
        """Checkpoint the whole state at `self.step` (every process takes part; rank 0 writes)."""

    def open_run_logs(self) -> contextlib.AbstractContextManager[list]:
        """Logs of the trainer's own beside metrics.jsonl (e.g. samples.jsonl), open while training:
        rewound with the metrics on resume (objects with truncate_after / start_fresh)."""


def run_training(trainer: LoopTrainer) -> dict[str, float]:
    """Run (or resume) `trainer` to `training.max_steps`; returns the last evaluation's metrics ({} when
    there was none, or nothing was left to do).

    The run directory is locked for the whole run (`grpokit.run_dir.training_run_dir`): a second
    trainer on it stops at once with a `RunDirError` naming this one.
    """
    from grpokit.run_dir import training_run_dir

    with training_run_dir(trainer.run_dir, trainer.parallel):
        return _run(trainer)


def _run(trainer: LoopTrainer) -> dict[str, float]:
    from grpokit.config_schema import to_dict
    from grpokit.guards.state import run_end
    from grpokit.monitoring import MetricsLogger, TrainingProgress
    from grpokit.run_dir import rewind_run_logs
    from grpokit.trainers.distributed import NullLogger

    cfg = trainer.config
    max_steps = cfg.training.max_steps
    resumed = trainer.resume_latest() if cfg.checkpoint.resume else None  # the checkpoint's path
    if resumed and _stopped_by_guard(trainer):
        return {}
    if resumed and trainer.step >= max_steps:
        announce(trainer, f"run already finished at step {trainer.step} ({resumed}); nothing to do")
        return {}
    if resumed:
        announce(trainer, f"resuming from step {trainer.step} of {max_steps} ({resumed})")
    trainer.start_run()
    last_eval: dict[str, float] = {}
    main = trainer.parallel.is_main  # only rank 0 logs, shows progress, writes files
    with (MetricsLogger(trainer.run_dir, tensorboard=cfg.logging.tensorboard,
                        wandb_project=cfg.logging.wandb_project, config=to_dict(cfg))
          if main else NullLogger()) as logger, \
            trainer.open_run_logs() as run_logs, \
            TrainingProgress(max_steps, description=trainer.preset.name,
                             disable=not (cfg.logging.progress and main), start_step=trainer.step) as progress:
        if main:  # metrics, alarms, samples, TensorBoard: cut to the resumed step (the replayed steps log
            # again), or a checkpoint-less earlier attempt's logs set aside
            rewind_run_logs(trainer.run_dir, trainer.step if resumed else None, logger, *run_logs)
        if not resumed and trainer.eval_data is not None:
            last_eval = trainer.evaluate_in_run()
            logger.log(0, last_eval)
        while trainer.step < max_steps and not trainer.should_stop:
            learning_rate = trainer.scheduler.get_last_lr()[0]  # the rate this step's updates use
            metrics = trainer.train_step(trainer.step)
            trainer.scheduler.step()
            metrics["train/learning_rate"] = learning_rate
            trainer.step += 1
            if _evaluates_at(cfg, trainer.step) and trainer.eval_data is not None:
                last_eval = trainer.evaluate_in_run()
                metrics.update(last_eval)
            notify(trainer, "on_step_end", trainer.step, metrics)
            trainer.should_stop = trainer.parallel.broadcast(trainer.should_stop)  # callbacks ran on rank 0
            logger.log(trainer.step, metrics)
            shown = {label: metrics[key] for label, key in trainer.progress_fields.items() if key in metrics}
            progress.update(trainer.step, **shown)
            if cfg.checkpoint.every_steps and trainer.step % cfg.checkpoint.every_steps == 0:
                trainer.save_run_checkpoint()
        if trainer.eval_data is not None and not _evaluates_at(cfg, trainer.step):
            last_eval = trainer.evaluate_in_run()
            logger.log(trainer.step, last_eval)
    # Saved with the final checkpoint: a rerun of a run a guard stopped does not silently train on.
    trainer.run_end = run_end(step=trainer.step, max_steps=max_steps, stop=trainer.stop_reason,
                              stopped=trainer.should_stop)
    trainer.save_run_checkpoint()
    notify(trainer, "on_train_end")
    if cfg.logging.plot and main:
        from grpokit.monitoring import plot_metrics

        plot_metrics(trainer.run_dir / "metrics.jsonl", trainer.run_dir / "metrics.png", keys=trainer.plot_keys)
    return last_eval


def _evaluates_at(config, step: int) -> bool:
    """Whether the loop evaluates right after step `step` (every `eval.every_steps`; 0 = never mid-run)."""
    return bool(config.eval.every_steps) and step % config.eval.every_steps == 0


def _stopped_by_guard(trainer: LoopTrainer) -> bool:
    """After resuming a run that a guard stopped: say so; True (do not train) unless asked to go on."""
    from grpokit.guards.state import describe_run_end, is_guard_stop

    if not is_guard_stop(trainer.run_end):
        return False
    what = describe_run_end(trainer.run_end)
    guards = getattr(trainer.config, "guards", None)
    if not (guards is not None and guards.continue_after_stop):
        announce(trainer, f"run was {what}; pass --continue (or set guards.continue_after_stop: true) to train on")
        return True
    announce(trainer, f"run was {what}; training on from step {trainer.step} (--continue)")
    trainer.run_end = trainer.stop_reason = None
    notify(trainer, "on_continue")  # the guards watch and act again; their best-gold memory stays
    return False


def notify(trainer: LoopTrainer, event: str, *args) -> None:
    """Call every callback's `event` handler (on_step_end, on_evaluate, on_train_end, on_continue) that it
    has, in order; on rank 0 only (callbacks write files and act once)."""
    if not trainer.parallel.is_main:
        return
    for callback in trainer.callbacks:
        handler = getattr(callback, event, None)
        if handler is not None:
            handler(trainer, *args)


def announce(trainer: LoopTrainer, message: str) -> None:
    """A line about the run as a whole (resuming, already finished) on stderr, from rank 0 only."""
    if trainer.parallel.is_main:
        print(f"grpokit: {message}", file=sys.stderr, flush=True)
