"""Asynchronous off-policy GRPO: a producer samples and scores while the trainer updates.

With `training.async.max_staleness: k` (k ≥ 1) the rollout for training step s (0-based) is sampled by
policy version s − k (the weights after s − k updates; never older than the version the run started or
resumed from), so generation of steps s+1 … s+k overlaps the update of step s:

    producer (its own copy of the weights)                 trainer (the main thread)
      for s = next, next+1, …:                               for s = step, step+1, …:
        wait for version v = max(start, s − k)                 rollout ← queue[s]         (waits if not there)
        load v's weights; sample + score step s                advantages, μ passes of updates
        queue[s] ← (rollout, v, the sampler's state)           publish version s + 1 (a weights snapshot)

The version schedule is fixed, not "whatever weights are newest": a run and its resume sample exactly
the same rollouts (to the bit on CPU), and the trainer idles only when generating a step takes longer
than updating one. Each rollout carries its behaviour log-probs log μ (the engine's, from version v);
the loss corrects π_old/μ with the preset's behaviour IS (truncated IS, token level, cap 2, unless
`algorithm.overrides` choose another: `grpokit.algorithms.off_policy`). PPO's clip stays relative to
π_old, the policy being updated — the decoupled objective of AReaL (Fu et al., 2025).

Staleness above k only happens when a checkpoint's queue was sampled under a larger k than the resumed
run's: such rollouts are dropped or down-weighted (`stale_policy`) and counted.

Lossless state: the rollouts sampled but not yet trained on, their versions and the sampler's state as
of the last of them go into every checkpoint (`checkpoint_state`), so killing the run at any moment and
running the same command again neither loses a prompt nor trains on one twice.

With the in-process engine the producer is a forked process (`grpokit.trainers.async_process`: its own
interpreter lock, so the Python side of sampling and scoring overlaps training too) or a thread of this
process (`producer: thread`). With a vLLM server it is a thread that pushes version s − k to the server
before sampling step s (the trainer pushes nothing; an evaluation borrows the server with the trainer's
weights). With several training processes every rank has its own producer for its share of the prompts.
docs/async.md has the measurements and how to split threads on bigger machines.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import multiprocessing
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from grpokit.config_schema import ConfigError
from grpokit.trainers.async_queue import QueuedRollout, queued_from_json, queued_to_json
from grpokit.trainers.rollout_source import ASYNC_QUEUE_BY_RANK_KEY, ASYNC_QUEUE_KEY
from grpokit.trainers.scored import ScoredRollout

log = logging.getLogger("grpokit.trainer")


def behaviour_version(step: int, max_staleness: int, first_version: int) -> int:
    """The policy version that samples training step `step`: step − k, not before the run's first version.
    Case k = 2, started fresh: steps 0, 1, 2, 3 → versions 0, 0, 0, 1; resumed at step 10: step 12 → 10."""
    return max(first_version, step - max_staleness)


def producer_kind(config) -> str:
    """"process" or "thread": `training.async.producer`, with "auto" = process for the in-process engine,
    thread for a vLLM engine (which the producer drives over HTTP or in memory, mostly waiting on it)."""
    chosen = config.training.async_.producer
    if chosen != "auto":
        return chosen
    return "process" if config.rollout.engine == "inprocess" else "thread"


def check_async_config(config, world_size: int = 1) -> None:
    """What the asynchronous pipeline does not (yet) support: a clear error naming the field."""
    k = config.training.async_.max_staleness
    if not k:
        return
    vllm = config.rollout.engine != "inprocess"
    if config.rollout.engine == "vllm_colocate":  # the producer thread would share the training process's
        # device and the engine's sleep/wake cycle with the trainer: not built nor tested yet
        raise ConfigError(f"training.async.max_staleness: {k} supports rollout.engine: inprocess or vllm_server, "
                          "not vllm_colocate yet; use a vLLM server (grpokit vllm-serve) or max_staleness: 0")
    if vllm and producer_kind(config) == "process":
        raise ConfigError(f"training.async.producer: process cannot drive rollout.engine: {config.rollout.engine} "
                          "(a forked child cannot share the engine); use producer: thread or auto")
    if vllm and world_size > 1:
        raise ConfigError(f"training.async.max_staleness: {k} with rollout.engine: {config.rollout.engine} runs "
                          f"in one process for now ({world_size} launched): every rank's producer would push "
                          "its own weights to the one engine; use rollout.engine: inprocess or max_staleness: 0")
    if config.rollout.agent is not None:
        raise ConfigError("training.async.max_staleness: multi-turn episodes (rollout.agent) are not "
                          "supported asynchronously yet; set max_staleness: 0")
    if producer_kind(config) == "process" and "fork" not in multiprocessing.get_all_start_methods():
        raise ConfigError("training.async.producer: process forks the trainer, and this platform cannot fork; "
                          "use producer: thread")


@dataclass
class _Clock:
    """Idle and busy seconds of the producer and the trainer since the last step's metrics."""

    producer_idle: float = 0.0
    trainer_idle: float = 0.0
    producer_busy: float = 0.0
    extra: dict = field(default_factory=dict)  # the taken rollout's staleness metrics


class AsyncRollouts:
    """The producer (a thread, or a forked process) and the queue between it and the trainer (in-process
    engine). With several training processes every rank has its own producer, forked from it, sampling
    that rank's share of each step's prompts (`LMTrainer.sample` shards by rank; the prompt sampler and
    the version schedule are the same on every rank), so a rank's queue holds exactly what a synchronous
    rank would sample; the checkpoint holds every rank's queue (`ASYNC_QUEUE_BY_RANK_KEY`)."""

    def __init__(self, trainer):
        from grpokit.rollout.inprocess import InProcessEngine

        settings = trainer.config.training.async_
        kind = producer_kind(trainer.config)
        inline = [r.name for r in getattr(trainer.reward_runner, "rewards", [])
                  if getattr(r, "main_thread", False) and r.timeout_seconds is None]
        if inline and kind == "thread":  # math_verify's per-sample signal timeouts: main thread only
            raise ConfigError(f"training.async.producer: thread: rewards {inline} must run in a main thread, and "
                              "the producer thread is not one; use producer: process (in-process engine) or "
                              "give the reward a timeout_seconds")
        self.trainer = trainer
        self.max_staleness = settings.max_staleness
        self.stale_policy = settings.stale_policy
        self.stale_weight = settings.stale_weight
        self.max_steps = trainer.config.training.max_steps
        # The producer's own weights: the trainer's parameters change under it while it samples. Left as
        # the trainer's (requires_grad included: on CPU, linear layers without it round differently, and the
        # producer must sample exactly what the trainer's own engine would; it runs under no_grad anyway).
        self.model = copy.deepcopy(trainer.weights_policy.model)
        # With a vLLM engine the producer owns the engine's weights: before sampling step s it pushes version
        # s − k (`sync_weights` from its copy); the trainer pushes nothing after its updates, and an evaluation
        # pauses the producer and pushes the trainer's weights (`evaluation_engine`).
        self.owns_engine = trainer.config.rollout.engine != "inprocess"
        if self.owns_engine:
            self.engine = trainer.engine
        else:
            self.engine = InProcessEngine(self.model, trainer.policy.tokenizer,
                                          device=getattr(trainer.engine, "device", None))
        self._engine_lock = threading.Lock()  # the producer's sampling vs an evaluation (owns_engine)
        self._condition = threading.Condition()
        self._queue: dict[int, QueuedRollout] = {}
        self._snapshots: dict[int, dict[str, torch.Tensor]] = {}  # published versions not yet sampled from
        self._loaded_version: int | None = None
        self._first_version = 0
        self._next_step = 0  # the next step the producer samples
        self._last_sampler_state: dict | None = None  # after the last step taken or queued
        self._thread: threading.Thread | None = None  # the producer thread, or the process's receiver
        self._stopping = False
        self._error: BaseException | None = None
        self._clock = _Clock()
        self._last_staleness = 0
        self._sampler_metrics: dict[str, float] = {}  # the sampler's metrics as of drawing the step just taken
        # torch's thread count is per thread: the producer sets its own (by default the trainer's)
        self._num_threads = settings.producer_threads or torch.get_num_threads()
        self._process = None
        if kind == "process" and torch.cuda.is_initialized():
            raise ConfigError("training.async.producer: process forks the trainer, and a forked child cannot use "
                              "CUDA once it is initialised; use producer: thread")
        if kind == "process":
            # Forked now, before the run directory is locked (a forked child would hold the lock's flock
            # past a kill -9 of this process); it waits for `start`.
            from grpokit.trainers.async_process import ProducerProcess

            self._process = ProducerProcess(self)

    # ------------------------------------------------------------------ the trainer's side
    def start(self, version: int) -> None:
        """Start producing from `version` (the current weights, after `version` updates)."""
        self._first_version = version
        self._next_step = max([version, *(q.step + 1 for q in self._queue.values())])
        if self._last_sampler_state is None:
            self._last_sampler_state = copy.deepcopy(self.trainer.sampler.state_dict())
        if self._process is not None:
            self._process.start(self._first_version, self._next_step, self._last_sampler_state)
            self._thread = threading.Thread(target=self._process.receive, name="grpokit-rollout-receiver",
                                            daemon=True)
        else:
            self._thread = threading.Thread(target=self._produce_here, name="grpokit-rollout-producer",
                                            daemon=True)
        self.publish(version)
        self._thread.start()

    def publish(self, version: int) -> None:
        """Hand the producer the trainer's weights after `version` updates (a snapshot: training goes on)."""
        if version >= self.max_steps:  # no step is sampled by the final weights
            return
        weights = {name: tensor.detach().clone() for name, tensor in self.trainer.weights_policy.model.state_dict().items()}
        if self._process is not None:
            self._process.send_weights(version, weights)
            return
        with self._condition:
            self._snapshots[version] = weights
            self._condition.notify_all()

    def take(self, step: int) -> ScoredRollout:
        """Step `step`'s rollout (waiting for the producer if needed); stale ones dropped per `stale_policy`."""
        started = time.perf_counter()
        with self._condition:
            while step not in self._queue:
                self._raise_producer_error()
                self._condition.wait(timeout=1.0)
            item = self._queue.pop(step)
            self._last_sampler_state = item.sampler_state
            self._condition.notify_all()
        self._clock.trainer_idle += time.perf_counter() - started
        staleness = self._last_staleness = step - item.version
        self._sampler_metrics = item.sampler_metrics
        self._clock.extra = self._staleness_metrics(item, staleness)
        if staleness > 0:
            # The engine-vs-trainer log-prob check compares equal weights; these were sampled by older ones
            # (and the producer's engine computes exactly the trainer's log-probs: same code, same weights).
            self.trainer.behaviour_checked = True
        if staleness > self.max_staleness and self.stale_policy == "drop":
            log.warning("step %d: dropped %d groups sampled %d updates ago (training.async.max_staleness: %d)",
                        step + 1, len(item.scored.prompt_indices), staleness, self.max_staleness)
            self._clock.extra["async/stale_dropped_groups"] = float(len(item.scored.prompt_indices))
            return _without_groups(item.scored)
        return item.scored

    def sampler_metrics(self) -> dict[str, float]:
        """The prompt sampler's metrics as of drawing the step just taken (the producer draws ahead)."""
        return dict(self._sampler_metrics)

    def updated(self, step: int) -> None:
        """Update `step` is done (or skipped): its weights are version step + 1, which step + 1 + k samples with."""
        self.publish(step + 1)

    @contextlib.contextmanager
    def evaluation_engine(self) -> Iterator[None]:
        """Around an evaluation: with a vLLM engine the producer waits (after the step it is sampling) while
        the engine holds the trainer's current weights, then pushes its own version again."""
        if not self.owns_engine:  # the trainer's in-process engine samples the trainer's own weights
            yield
            return
        with self._engine_lock:
            self.engine.sync_weights(self.trainer.weights_policy.model)
            self._loaded_version = None
            yield

    def advantage_scale(self) -> float:
        """stale_weight^(staleness − k) for the rollout just taken when down-weighted and stale, else 1."""
        excess = self._last_staleness - self.max_staleness
        if excess <= 0 or self.stale_policy != "downweight":
            return 1.0
        return self.stale_weight ** excess

    def step_metrics(self) -> dict[str, float]:
        """This step's staleness, queue and idle-time metrics (then the clocks restart)."""
        with self._condition:
            clock, self._clock = self._clock, _Clock()
            queued = len(self._queue)
        return {**clock.extra, "async/queue_size": float(queued), "async/producer_idle_seconds": clock.producer_idle,
                "async/producer_busy_seconds": clock.producer_busy, "async/trainer_idle_seconds": clock.trainer_idle}

    def stop(self) -> None:
        """End the producer (after the rollout it is sampling, if any)."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        if self._process is not None:
            self._process.stop()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    # ------------------------------------------------------------------ checkpoint
    def checkpoint_state(self, step: int) -> dict[str, Any]:
        """The queue for steps step … step+k−1 (waited for: each is sampled by a version already published)
        and the sampler's state after the last of them, JSON-serializable."""
        wanted = range(step, min(step + self.max_staleness, self.max_steps))
        with self._condition:
            while self._thread is not None and not all(s in self._queue for s in wanted):
                self._raise_producer_error()
                self._condition.wait(timeout=1.0)
            items = [self._queue[s] for s in wanted if s in self._queue]
            sampler = items[-1].sampler_state if items else self._last_sampler_state
        return {"sampler": sampler, ASYNC_QUEUE_KEY: [queued_to_json(q) for q in items]}

    def load_checkpoint_state(self, extra: dict, *, rank: int = 0, world_size: int = 1) -> None:
        """Restore this rank's queue from a checkpoint (before `start`)."""
        by_rank = extra.get(ASYNC_QUEUE_BY_RANK_KEY)
        written_by = len(by_rank) if by_rank is not None else 1
        if extra.get(ASYNC_QUEUE_KEY) and written_by != world_size:
            raise ConfigError(f"training.async: the checkpoint's queued rollouts were sampled by {written_by} "
                              f"process(es), each its share of the prompts; resume with {written_by} process(es), "
                              "or with training.async.max_staleness: 0 (their prompts are then skipped)")
        queued = by_rank[rank] if by_rank is not None else extra.get(ASYNC_QUEUE_KEY)
        items = [queued_from_json(q) for q in queued or []]
        self._queue = {q.step: q for q in items}
        self._last_sampler_state = extra.get("sampler")

    # ------------------------------------------------------------------ the producer
    def produce(self, wait_for_weights, deliver) -> None:
        """The producer's loop (in the thread or the process): sample every step up to max_steps with its
        scheduled version. `wait_for_weights(version)` → the weights, or None to stop; `deliver(item)`."""
        torch.set_grad_enabled(False)  # grad mode is per thread; the producer only samples
        torch.set_num_threads(self._num_threads)
        while self._next_step < self.max_steps:
            step = self._next_step
            version = behaviour_version(step, self.max_staleness, self._first_version)
            started = time.perf_counter()
            weights = wait_for_weights(version)
            idle = time.perf_counter() - started
            if weights is None:
                return
            started = time.perf_counter()
            with self._engine_lock:
                if version != self._loaded_version:
                    self.model.load_state_dict(weights)
                    if self.owns_engine:  # vLLM samples with what it was last pushed
                        self.engine.sync_weights(self.model)
                    self._loaded_version = version
                scored = self.trainer.sample(step, engine=self.engine)
            sampler_state = copy.deepcopy(self.trainer.sampler.state_dict())
            sampler_metrics = self.trainer.sampler.metrics() if hasattr(self.trainer.sampler, "metrics") else {}
            deliver(QueuedRollout(step, version, scored, sampler_state, time.perf_counter() - started,
                                  sampler_metrics, idle_seconds=idle))
            self._next_step = step + 1

    def enqueue(self, item: QueuedRollout) -> None:
        """A sampled step's rollout, for the trainer."""
        with self._condition:
            self._queue[item.step] = item
            self._clock.producer_busy += item.seconds
            self._clock.producer_idle += item.idle_seconds
            self._condition.notify_all()

    def fail(self, error: BaseException) -> None:
        """The producer failed: the trainer raises `error` when it next waits for it."""
        with self._condition:
            self._error = error
            self._condition.notify_all()

    def _produce_here(self) -> None:
        try:
            self.produce(self._wait_for, self.enqueue)
        except BaseException as error:  # handed to the trainer, which raises it in the main thread
            self.fail(error)

    def _wait_for(self, version: int) -> dict | None:
        with self._condition:
            while version not in self._snapshots and not self._stopping:
                self._condition.wait()
            if self._stopping:
                return None
            for old in [v for v in self._snapshots if v < version]:  # no later step samples from these
                del self._snapshots[old]
            return self._snapshots[version]

    def _raise_producer_error(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"the rollout producer failed: {self._error}") from self._error

    def _staleness_metrics(self, item: QueuedRollout, staleness: int) -> dict[str, float]:
        # One version per step's rollout, so the histogram over samples is one bar: the bars are logged
        # as fractions so that averaging them over steps gives the run's histogram.
        metrics = {f"async/staleness_frac_{j}": float(j == staleness) for j in range(self.max_staleness + 1)}
        metrics["async/staleness_frac_over"] = float(staleness > self.max_staleness)
        metrics["async/staleness_max"] = float(staleness)
        metrics["async/staleness_mean"] = float(staleness)
        metrics["async/behaviour_version"] = float(item.version)
        metrics["async/producer_seconds"] = item.seconds
        return metrics


def _without_groups(scored: ScoredRollout) -> ScoredRollout:
    from grpokit.trainers.scored import select_groups

    empty = select_groups(scored, torch.zeros(len(scored.prompt_indices), dtype=torch.bool))
    empty.generated_rollouts = scored.generated_rollouts
    return empty
