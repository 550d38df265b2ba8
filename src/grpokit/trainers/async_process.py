"""The asynchronous producer as a forked process (`training.async.producer: process`).

A thread shares the trainer's interpreter lock: torch ops release it, but the decoding loop, the
rewards and every module call are Python, and with a small model they are most of the work, so a
thread overlaps poorly. A forked process has its own lock. Forked (not spawned) so it inherits the
built trainer — data, sampler, rewards, its own copy of the weights — without pickling any of it; it
is forked when the pipeline is built, before the run directory is locked, and waits for `start`.

Messages: to the producer ("start", first version, next step, sampler state), ("weights", version,
state dict) and ("stop",); back ("rollout", QueuedRollout), ("error", text) and ("done",), each pickled
to bytes first: torch's shared-memory tensor passing needs a file-descriptor server that a forked child
cannot run (its tensors arrive as EOFError). That is one copy of the weights per update through a
pipe: milliseconds for small models, the first thing to replace (shared-memory buffers) for big ones.
The producer exits on its own within a second of the trainer's death (kill -9): nothing is left
running, and a rerun finds the run directory free.
"""

from __future__ import annotations

import os
import pickle
import queue
import traceback


class ProducerProcess:
    """The forked producer and the trainer's end of its two queues."""

    def __init__(self, pipeline):
        import torch.multiprocessing as mp

        context = mp.get_context("fork")
        self.pipeline = pipeline
        self._to_producer = context.Queue()
        self._from_producer = context.Queue()
        self._trainer_pid = os.getpid()
        self._process = context.Process(target=self._producer_main, name="grpokit-rollout-producer", daemon=True)
        self._process.start()

    # ------------------------------------------------------------------ the trainer's side
    def start(self, first_version: int, next_step: int, sampler_state: dict | None) -> None:
        self._to_producer.put(pickle.dumps(("start", first_version, next_step, sampler_state)))

    def send_weights(self, version: int, weights: dict) -> None:
        self._to_producer.put(pickle.dumps(("weights", version, weights)))

    def receive(self) -> None:
        """The trainer's receiver thread: rollouts into the pipeline's queue until the producer is done."""
        while True:
            try:
                message = pickle.loads(self._from_producer.get(timeout=1.0))
            except queue.Empty:
                if not self._process.is_alive():
                    if not self.pipeline._stopping:
                        self.pipeline.fail(RuntimeError(f"the producer process ended (exit code "
                                                        f"{self._process.exitcode})"))
                    return
                continue
            if message[0] == "rollout":
                self.pipeline.enqueue(message[1])
            elif message[0] == "error":
                self.pipeline.fail(RuntimeError(message[1]))
                return
            else:  # done
                return

    def stop(self) -> None:
        self._to_producer.put(pickle.dumps(("stop",)))
        self._process.join(timeout=120)  # it finishes the rollout it is sampling
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        # Weights sent after the producer's last read stay in the pipe: do not wait at exit to flush them.
        self._to_producer.cancel_join_thread()

    # ------------------------------------------------------------------ the producer's side
    def _producer_main(self) -> None:
        try:
            message = self._next_message()
            if message is None or message[0] != "start":
                return
            _, first_version, next_step, sampler_state = message
            pipeline = self.pipeline
            pipeline._first_version, pipeline._next_step = first_version, next_step
            if sampler_state is not None:  # the checkpoint's (resumed) or the trainer's at start
                pipeline.trainer.sampler.load_state_dict(sampler_state)
            pipeline.produce(self._weights_receiver(), lambda item: self._send(("rollout", item)))
            self._send(("done",))
        except BaseException as error:
            self._send(("error", f"{type(error).__name__}: {error}\n{traceback.format_exc()}"))

    def _send(self, message: tuple) -> None:
        self._from_producer.put(pickle.dumps(message))

    def _weights_receiver(self):
        snapshots: dict[int, dict] = {}

        def wait_for_weights(version: int) -> dict | None:
            while version not in snapshots:
                message = self._next_message()
                if message is None or message[0] == "stop":
                    return None
                if message[0] == "weights":
                    snapshots[message[1]] = message[2]
            for old in [v for v in snapshots if v < version]:  # no later step samples from these
                del snapshots[old]
            return snapshots[version]

        return wait_for_weights

    def _next_message(self):
        while True:
            try:
                return pickle.loads(self._to_producer.get(timeout=1.0))
            except queue.Empty:
                if os.getppid() != self._trainer_pid:  # the trainer is gone (killed): so is the work
                    os._exit(0)
