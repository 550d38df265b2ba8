"""A trainer's run directory: checked before training starts, its I/O failures said in one line, its logs
rewound to the step a run starts from.

A full disk, a read-only mount, a missing permission or a path through a file are the user's
environment, not bugs: they become a :class:`~grpokit.errors.RunDirError` whose message says what
failed, where, and (for a full disk) how much space is free, e.g.

    no space left on device writing runs/x/checkpoints/step-000004/optimizer.pt (free: 0.8 MiB)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from grpokit.errors import RunDirError
from grpokit.io_errors import free_mib, io_error  # noqa: F401  (re-exported)

_KERNEL_TREES = (Path("/proc"), Path("/sys"))


def check_run_dir(run_dir: str | Path) -> Path:
    """Create `run_dir` if needed and check that a trainer can write into it; :class:`RunDirError` if not.

    Refuses paths under /proc and /sys (kernel file systems: writes there are not files), a path that
    is a file, and a directory this process cannot create files in (read-only, no permission).
    """
    path = Path(run_dir)
    absolute = path.absolute()
    for tree in _KERNEL_TREES:
        if absolute == tree or tree in absolute.parents:
            raise RunDirError(f"logging.run_dir {path} is under {tree}, a kernel file system, not storage; "
                              f"choose a directory on a disk")
    if path.exists() and not path.is_dir():
        raise RunDirError(f"logging.run_dir {path} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise io_error(error, path, "creating") from None
    probe = path / f".grpokit-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise io_error(error, path, "writing into") from None
    return path


@contextlib.contextmanager
def training_run_dir(run_dir: str | Path, parallel=None) -> Iterator[None]:
    """For the whole of a training run: `run_dir` checked (:func:`check_run_dir`) and locked
    (:class:`~grpokit.run_lock.RunLock`), or a :class:`RunDirError` at once.

    With several processes (`parallel`: a :class:`~grpokit.trainers.distributed.DataParallel`) rank 0
    alone checks and holds the lock, and every rank raises its error, so none waits for the others.
    """
    from grpokit.run_lock import RunLock, held_by_this_process

    is_main = parallel is None or parallel.is_main
    lock, error = None, None
    created = is_main and not os.path.lexists(run_dir)  # removed again if nothing was written into it
    if is_main and held_by_this_process(run_dir):
        pass  # taken before the model was built (`lock_before_building`)
    elif is_main:
        try:
            check_run_dir(run_dir)
            lock = RunLock(run_dir).acquire()
        except RunDirError as caught:
            error = caught
    if parallel is not None and parallel.enabled:
        message = parallel.broadcast(None if error is None else str(error))
        if message is not None and error is None:
            error = RunDirError(message)
    if error is not None:
        raise error
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
            if created:  # e.g. the model failed to load: no empty run directory left behind
                with contextlib.suppress(OSError):
                    Path(run_dir).rmdir()  # only when empty


def lock_before_building(run_dir: str | Path) -> contextlib.AbstractContextManager:
    """`grpokit train`: :func:`training_run_dir` taken before the model loads, so that a second trainer
    stops at once rather than after loading a model. Under a multi-process launcher, rank 0 alone
    (``RANK``); the trainer's ``train`` finds the lock held and keeps it."""
    if os.environ.get("RANK", "0") != "0":
        return contextlib.nullcontext()
    return training_run_dir(run_dir)


def rewind_run_logs(run_dir: str | Path, resume_step: int | None, *logs) -> None:
    """Make the run's logs start at the step this run starts from: `alarms.jsonl` and each of `logs`
    (objects with ``truncate_after(step)`` and ``start_fresh(stamp)``: the metrics logger, the
    samples log).

    Resuming from the checkpoint of `resume_step`: records of later steps are cut (the run replays
    them). A fresh start (`None`) over an earlier run's logs (a run killed before its first
    checkpoint): the old files are moved aside to ``<name>.<UTC time>.jsonl.old``, one time for all,
    with a warning, and TensorBoard hides the old events — never two records of one step.
    """
    from grpokit.monitoring.events import set_events_aside, truncate_events_after
    from grpokit.monitoring.jsonl import aside_stamp

    if resume_step is None:
        stamp = aside_stamp()
        for log in logs:
            log.start_fresh(stamp)
        set_events_aside(run_dir, stamp)
    else:
        for log in logs:
            log.truncate_after(resume_step)
        truncate_events_after(run_dir, resume_step)
