"""Atomic training checkpoints: temp dir + rename, keep-last-k, tags, RNG states.

Layout under ``run_dir/checkpoints/``::

    step-000120/            one complete checkpoint
        model/              written by the caller's ``model_saver`` (HF format)
        optimizer.pt        optimizer.state_dict()
        scheduler.pt        scheduler.state_dict()
        trainer_state.json  {"step": ..., "extra_state": {...}}
        rng.pt              python / numpy / torch CPU / CUDA RNG states
        COMPLETE            written last, just before the rename
    best/                   a tagged checkpoint (``save(..., tag="best")``), never pruned
    latest                  text file naming the newest step checkpoint, e.g. "step-000120"

Why this shape: a checkpoint becomes visible only through ``os.rename`` of a fully written,
fsynced directory, so a crash at any point leaves either the old state or the new one, never a
half-written checkpoint that a resumed run would load. Hidden names (``.tmp-*``, ``.old-*``,
``.trash-*``) are leftovers of an interrupted save or prune; the manager repairs them on start.
One manager (one process) writes a run directory at a time: trainers hold the run directory's lock
(:mod:`grpokit.run_lock`); readers use ``CheckpointManager(..., read_only=True)``, which repairs nothing.
A checkpoint damaged afterwards (a truncated copy, a full disk under another tool) is found by
:func:`find_damage` and skipped by :meth:`CheckpointManager.latest_intact`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grpokit.checkpoint_integrity import TRAINER_STATE_FILE, find_damage
from grpokit.errors import RunDirError
from grpokit.io_errors import io_error

try:
    import fcntl
except ImportError:  # Windows: readers cannot pin checkpoints
    fcntl = None

COMPLETE_MARKER = "COMPLETE"
LATEST_POINTER = "latest"
MODEL_DIRNAME = "model"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RNG_FILE = "rng.pt"
FORMAT_VERSION = 1

_STEP_DIR_RE = re.compile(r"^step-(\d+)$")
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")
_TEMP_PREFIX = ".tmp-"  # a save in progress (or crashed mid-save)
_ASIDE_PREFIX = ".old-"  # a checkpoint moved aside while its replacement is renamed in
_TRASH_PREFIX = ".trash-"  # a pruned checkpoint being deleted


def step_dirname(step: int) -> str:
    """Directory name of the checkpoint at ``step``: ``step-000123`` (zero-padded to 6 digits)."""
    return f"step-{step:06d}"


def model_dir(checkpoint_path: str | Path) -> Path:
    """Where ``model_saver`` wrote the model inside a checkpoint (load it from here)."""
    return Path(checkpoint_path) / MODEL_DIRNAME


def is_complete(checkpoint_path: str | Path) -> bool:
    """True when the checkpoint directory holds the ``COMPLETE`` marker written last by ``save``."""
    return (Path(checkpoint_path) / COMPLETE_MARKER).is_file()


# ---------------------------------------------------------------------------------------------
# RNG states


def capture_rng_state() -> dict[str, Any]:
    """Snapshot the python ``random``, numpy global, torch CPU and (if available) CUDA RNGs.

    The result holds only tensors, ints, floats, strings, tuples and lists, so it round-trips
    through ``torch.save`` / ``torch.load(weights_only=True)``.
    """
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": name,
            "keys": keys.tolist(),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.random.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back the RNG states captured by :func:`capture_rng_state`.

    CUDA states are restored for as many devices as both the snapshot and this machine have;
    a mismatch in device count (resuming on a different machine) is warned about, not fatal.
    """
    random.setstate(_as_python_random_state(state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["bit_generator"],
            np.asarray(numpy_state["keys"], dtype=np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.random.set_rng_state(state["torch"])
    cuda_states = state.get("cuda")
    if cuda_states is None:
        return
    if not torch.cuda.is_available():
        warnings.warn("checkpoint holds CUDA RNG states but CUDA is not available; skipped", stacklevel=2)
        return
    device_count = torch.cuda.device_count()
    if len(cuda_states) != device_count:
        warnings.warn(
            f"checkpoint holds {len(cuda_states)} CUDA RNG states, this machine has {device_count} "
            "devices; restoring the common prefix",
            stacklevel=2,
        )
    for device_index, device_state in enumerate(cuda_states[:device_count]):
        torch.cuda.set_rng_state(device_state, device_index)


def _as_python_random_state(saved: Any) -> tuple:
    # random.setstate needs tuples all the way down; a serializer may hand back lists.
    version, internal_state, gauss_next = saved
    return (version, tuple(internal_state), gauss_next)


# ---------------------------------------------------------------------------------------------
# Durable file-system helpers


def _fsync_path(path: Path) -> None:
    """fsync a file, or a directory (so that renames inside it are durable) on POSIX."""
    if path.is_dir() and os.name != "posix":
        return  # directories cannot be opened for fsync on Windows
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (the caller's model files included)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for filename in filenames:
            _fsync_path(Path(dirpath) / filename)
        _fsync_path(Path(dirpath))


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` that keeps the errno of a failed write (torch reports ENOSPC as "unexpected pos")."""
    with open(path, "wb") as handle:
        writer = _ErrnoKeepingWriter(handle)
        try:
            torch.save(obj, writer)
        except RuntimeError as error:
            if writer.error is not None:
                raise writer.error from error
            raise


class _ErrnoKeepingWriter:
    """A file for ``torch.save`` that remembers the OSError its writes raised (torch replaces it)."""

    def __init__(self, handle):
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.handle.flush()


def _is_io_failure(error: BaseException) -> bool:
    """An OSError, or a library's error that wraps one (safetensors: "No space left on device (os error 28)")."""
    if isinstance(error, OSError):
        return True
    text = str(error).lower()
    return isinstance(error, Exception) and ("os error" in text or "no space left" in text)


# ---------------------------------------------------------------------------------------------
# Damage (the checks themselves: grpokit.checkpoint_integrity)


class DamagedCheckpointError(RunDirError):
    """No checkpoint of the run can be resumed: each has a truncated or unreadable file.

    ``damaged`` lists ``(checkpoint path, [problem, ...])``, newest first.
    """

    kind = "checkpoint"

    def __init__(self, message: str, damaged: list[tuple[Path, list[str]]]):
        super().__init__(message)
        self.damaged = damaged


# ---------------------------------------------------------------------------------------------
# The manager


class CheckpointManager:
    """Writes, finds, loads and prunes checkpoints under ``run_dir/checkpoints``.

    ``keep_last``: how many step checkpoints to keep (the one just written counts); ``None`` keeps
    all. Tagged checkpoints (``best``...) are never pruned. Creating a manager repairs what a
    crashed save or prune left behind.
    """

    def __init__(self, run_dir: str | Path, *, keep_last: int | None = 3, read_only: bool = False):
        if keep_last is not None and keep_last < 1:
            raise ValueError(f"keep_last must be >= 1 or None (keep all), got {keep_last}")
        self.run_dir = Path(run_dir)
        self.checkpoints_dir = self.run_dir / "checkpoints"
        self.keep_last = keep_last
        self.read_only = read_only
        if read_only:
            # A reader (`grpokit eval`) next to a running trainer: the ".tmp-*" dirs are that trainer's
            # saves in progress, not leftovers to repair.
            return
        try:
            self.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise io_error(error, self.checkpoints_dir, "creating") from error
        self._repair_interrupted_operations()

    # -- writing --------------------------------------------------------------------------------

    def save(
        self,
        step: int,
        *,
        model_saver: Callable[[Path], None],
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any | None = None,
        extra_state: dict[str, Any] | None = None,
        rng: bool = True,
        tag: str | None = None,
    ) -> Path:
        """Write a checkpoint atomically and return its final path.

        ``model_saver(dir)`` must write the model into ``dir`` (e.g. ``model.save_pretrained``).
        ``extra_state`` must be JSON-serializable (data cursor, metrics position...).
        Without ``tag`` the checkpoint is ``step-XXXXXX``, becomes ``latest`` and older ones are
        pruned to ``keep_last``; with ``tag`` it replaces ``checkpoints/<tag>`` and nothing else
        changes. If anything raises, no new checkpoint is visible and the temp dir is removed.
        """
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if tag is not None:
            _validate_tag(tag)
        final_name = tag if tag is not None else step_dirname(step)
        trainer_state_json = json.dumps(
            {
                "format_version": FORMAT_VERSION,
                "step": step,
                "saved_at": time.time(),
                "extra_state": extra_state or {},
            },
            indent=2,
            allow_nan=False,
        )  # serialized before any file is written, so bad extra_state fails early

        if self.read_only:
            raise RuntimeError(f"{self.checkpoints_dir}: a read-only CheckpointManager cannot save")
        temp_dir = self.checkpoints_dir / f"{_TEMP_PREFIX}{final_name}-{os.getpid()}"
        writing = temp_dir  # what is being written, for the message when the write fails
        try:
            if temp_dir.exists():
                shutil.rmtree(temp_dir)
            temp_dir.mkdir()
            writing = temp_dir / MODEL_DIRNAME
            model_saver(writing)
            parts = []
            if optimizer is not None:
                parts.append((OPTIMIZER_FILE, optimizer.state_dict))
            if scheduler is not None:
                parts.append((SCHEDULER_FILE, scheduler.state_dict))
            if rng:
                parts.append((RNG_FILE, capture_rng_state))
            for filename, state in parts:
                writing = temp_dir / filename
                _torch_save(state(), writing)
            writing = temp_dir / TRAINER_STATE_FILE
            _write_text(writing, trainer_state_json)
            writing = temp_dir
            _fsync_tree(temp_dir)
            _write_text(temp_dir / COMPLETE_MARKER, f"{step}\n")
            _fsync_path(temp_dir)
            final_dir = self._install(temp_dir, final_name)
        except BaseException as error:
            shutil.rmtree(temp_dir, ignore_errors=True)
            if _is_io_failure(error):
                # Named by where the file would have landed; the previous checkpoints are untouched.
                where = self.checkpoints_dir / final_name / writing.relative_to(temp_dir)
                raise io_error(error, where) from error
            raise

        try:
            if tag is None:
                self._point_latest_to(final_name)
                self._prune(newest_step=step)
        except OSError as error:
            raise io_error(error, self.checkpoints_dir / LATEST_POINTER) from error
        return final_dir

    def _install(self, temp_dir: Path, final_name: str) -> Path:
        """Rename ``temp_dir`` to ``final_name``, moving an existing one aside first.

        A directory cannot be renamed over a non-empty one, so replacing takes two renames; a
        crash between them leaves ``.old-<name>-<pid>``, which the next manager renames back.
        """
        final_dir = self.checkpoints_dir / final_name
        aside_dir = None
        if final_dir.exists():
            aside_dir = self.checkpoints_dir / f"{_ASIDE_PREFIX}{final_name}-{os.getpid()}"
            if aside_dir.exists():
                shutil.rmtree(aside_dir)
            os.rename(final_dir, aside_dir)
        try:
            os.rename(temp_dir, final_dir)
        except BaseException:
            if aside_dir is not None:
                os.rename(aside_dir, final_dir)
            raise
        _fsync_path(self.checkpoints_dir)
        if aside_dir is not None:
            shutil.rmtree(aside_dir)
        return final_dir

    def _point_latest_to(self, name: str) -> None:
        temp_pointer = self.checkpoints_dir / f"{_TEMP_PREFIX}{LATEST_POINTER}-{os.getpid()}"
        _write_text(temp_pointer, name + "\n")
        os.replace(temp_pointer, self.checkpoints_dir / LATEST_POINTER)
        _fsync_path(self.checkpoints_dir)

    def _prune(self, newest_step: int) -> None:
        """Keep the checkpoint at ``newest_step`` and the ``keep_last - 1`` before it.

        Checkpoints of later steps (left when a run was resumed from an earlier checkpoint) are
        not touched: the resumed run replaces them when it reaches those steps.
        """
        if self.keep_last is None:
            return
        older = [path for step, path in self._complete_step_dirs() if step < newest_step]
        keep_older = self.keep_last - 1
        # max(0, …): with fewer older checkpoints than keep_last − 1 a negative slice would delete them.
        to_delete = older[: max(0, len(older) - keep_older)]
        for path in to_delete:
            with _unpinned(path) as free:
                if not free:
                    continue  # a reader (`grpokit eval`) is loading it: pruned at a later save
                # Rename first so a crash mid-delete never leaves a half-deleted "step-*" dir.
                trash_dir = self.checkpoints_dir / f"{_TRASH_PREFIX}{path.name}-{os.getpid()}"
                os.rename(path, trash_dir)
                shutil.rmtree(trash_dir)

    # -- finding --------------------------------------------------------------------------------

    def _complete_step_dirs(self) -> list[tuple[int, Path]]:
        found = []
        if not self.checkpoints_dir.is_dir():
            return found
        for path in self.checkpoints_dir.iterdir():
            match = _STEP_DIR_RE.match(path.name)
            if match and path.is_dir() and is_complete(path):
                found.append((int(match.group(1)), path))
        return sorted(found)

    def step_checkpoints(self) -> list[Path]:
        """Complete step checkpoints, oldest step first."""
        return [path for _step, path in self._complete_step_dirs()]

    def latest(self) -> Path | None:
        """The checkpoint to resume from, or ``None``.

        The ``latest`` pointer wins when it names a complete checkpoint (after a resume from an
        earlier step, higher-numbered leftovers are not the latest); otherwise the complete step
        checkpoint with the highest step.
        """
        pointer = self.checkpoints_dir / LATEST_POINTER
        if pointer.is_file():
            name = pointer.read_text(encoding="utf-8").strip()
            if _STEP_DIR_RE.match(name) and is_complete(self.checkpoints_dir / name):
                return self.checkpoints_dir / name
        complete = self._complete_step_dirs()
        return complete[-1][1] if complete else None

    def latest_intact(self) -> Path | None:
        """The checkpoint to resume from, skipping damaged ones; ``None`` when there is no checkpoint.

        Candidates are :meth:`latest`, then the complete step checkpoints before it, newest first. A
        candidate with a truncated or unreadable file (see :func:`find_damage`) is skipped with a
        warning naming the file; when every candidate is damaged, :class:`DamagedCheckpointError`.
        """
        latest = self.latest()
        if latest is None:
            return None
        latest_step = int(_STEP_DIR_RE.match(latest.name).group(1))
        earlier = [path for step, path in reversed(self._complete_step_dirs()) if step < latest_step]
        candidates = [latest, *earlier]
        damaged: list[tuple[Path, list[str]]] = []
        for index, path in enumerate(candidates):
            problems = find_damage(path)
            if not problems:
                return path
            damaged.append((path, problems))
            then = "falling back to the one before it" if index + 1 < len(candidates) else "no earlier one to use"
            warnings.warn(f"checkpoint {path} is damaged ({'; '.join(problems)}); {then}", stacklevel=2)
        described = "; ".join(f"{path.name}: {', '.join(problems)}" for path, problems in damaged)
        raise DamagedCheckpointError(f"no intact checkpoint in {self.checkpoints_dir} ({described}); remove the "
                                     f"damaged ones (or use a new logging.run_dir) to start fresh", damaged)

    def pin_latest_intact(self) -> Path | None:
        """:meth:`latest_intact`, pinned until this process ends: a trainer writing this run meanwhile
        does not prune it. For readers (``grpokit eval``) that load a checkpoint seconds or minutes after
        choosing it, beside a trainer saving every few steps."""
        for _attempt in range(10):
            path = self.latest_intact()
            if path is None or _pin(path):
                return path
        raise RunDirError(f"{self.checkpoints_dir}: every checkpoint chosen was pruned before it could be "
                          f"read; is a trainer saving with checkpoint.keep_last=1?")

    def tagged(self, tag: str) -> Path | None:
        """The complete checkpoint saved with ``tag`` (e.g. ``"best"``), or ``None``."""
        _validate_tag(tag)
        path = self.checkpoints_dir / tag
        return path if is_complete(path) else None

    # -- loading --------------------------------------------------------------------------------

    def load(
        self,
        path: str | Path,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any | None = None,
        restore_rng: bool = True,
    ) -> dict[str, Any]:
        """Restore optimizer, scheduler and RNG states from a checkpoint; return its trainer state.

        Returns ``{"step": int, "extra_state": dict}``. The model is the caller's to load, from
        :func:`model_dir` ``(path)``, before building the optimizer that ``optimizer`` is.
        """
        return load_checkpoint(path, optimizer=optimizer, scheduler=scheduler, restore_rng=restore_rng)

    # -- repair ---------------------------------------------------------------------------------

    def _repair_interrupted_operations(self) -> None:
        """Undo what a crash left: temp dirs/files go, moved-aside checkpoints come back."""
        for path in self.checkpoints_dir.iterdir():
            name = path.name
            if name.startswith((_TEMP_PREFIX, _TRASH_PREFIX)):
                _remove(path)
            elif name.startswith(_ASIDE_PREFIX):
                original_name = name[len(_ASIDE_PREFIX) :].rsplit("-", 1)[0]
                original = self.checkpoints_dir / original_name
                if not original.exists() and is_complete(path):
                    os.rename(path, original)  # crashed between the two renames of _install
                else:
                    _remove(path)


# ---------------------------------------------------------------------------------------------
# Pins: a reader holds a shared flock on a checkpoint's COMPLETE marker; pruning needs it exclusively.

_PINNED: dict[str, int] = {}  # checkpoint path -> the open (shared-locked) marker, kept until exit


def _pin(path: Path) -> bool:
    """Pin `path` for this process's life; False when it was pruned before it could be pinned."""
    if fcntl is None:
        return path.is_dir()
    if str(path) in _PINNED:
        return True
    try:
        fd = os.open(path / COMPLETE_MARKER, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a trainer renames it away (milliseconds)
    except OSError:  # no flock on this file system: nothing to pin with
        pass
    if not (path / COMPLETE_MARKER).is_file():  # pruned between our open and our lock
        os.close(fd)
        return False
    _PINNED[str(path)] = fd
    return True


def release_pins() -> None:
    """Unpin every checkpoint this process pinned (a long-lived reader done with them)."""
    while _PINNED:
        os.close(_PINNED.popitem()[1])


@contextlib.contextmanager
def _unpinned(path: Path):
    """Yields True while `path` is held exclusively (no reader pins it), False when a reader does."""
    if fcntl is None:
        yield True
        return
    try:
        fd = os.open(path / COMPLETE_MARKER, os.O_RDONLY)
    except FileNotFoundError:
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        except OSError:
            pass  # no flock here: readers cannot pin, prune as before
        yield True
    finally:
        os.close(fd)


def load_checkpoint(
    path: str | Path,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Function form of :meth:`CheckpointManager.load` (no manager, so no repair, needed)."""
    path = Path(path)
    if not is_complete(path):
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {COMPLETE_MARKER} marker)")
    trainer_state = json.loads((path / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
    if optimizer is not None:
        optimizer.load_state_dict(_load_tensor_file(path / OPTIMIZER_FILE, "optimizer"))
    if scheduler is not None:
        scheduler.load_state_dict(_load_tensor_file(path / SCHEDULER_FILE, "scheduler"))
    if restore_rng:
        if (path / RNG_FILE).is_file():
            restore_rng_state(_load_tensor_file(path / RNG_FILE, "RNG"))
        else:
            warnings.warn(f"{path} was saved without RNG states; RNGs left as they are", stacklevel=2)
    return {"step": int(trainer_state["step"]), "extra_state": trainer_state.get("extra_state", {})}


def _load_tensor_file(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint has no {what} state: {path} is missing")
    return torch.load(path, map_location="cpu", weights_only=True)


def _validate_tag(tag: str) -> None:
    if not _TAG_RE.match(tag) or _STEP_DIR_RE.match(tag) or tag == LATEST_POINTER:
        raise ValueError(
            f"invalid checkpoint tag {tag!r}: use letters, digits, '_' or '-', not starting with "
            f"'-' or '_', and not 'latest' or 'step-N'"
        )


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
