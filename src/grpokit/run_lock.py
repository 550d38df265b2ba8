"""One trainer per run directory: ``run_dir/grpokit.lock``, held for the whole of ``train``.

The lock is an OS lock (``fcntl.flock``) on the open lock file, so the kernel releases it when the
holder dies, however it dies (kill -9 included). The file itself says who holds it — PID, host,
start time and command — for the message a second trainer prints when it finds the lock taken:

    runs/x is in use by another trainer: PID 4242 on host gpu1 since 2026-12-04 22:41:07 UTC
    (grpokit train cfg.yaml); wait for it to end or choose another logging.run_dir

A lock file whose holder no longer holds the OS lock (the process died) is taken over with a
warning. Where ``flock`` is not supported (some network file systems) the file alone decides: it is
stale when it names a dead PID on this host, and held otherwise.

Readers (``grpokit eval``, ``grpokit report``) take no lock: checkpoints appear by atomic rename and
logs by whole appended lines, so a reader never sees a half-written state.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from grpokit.errors import RunDirError

LOCK_FILENAME = "grpokit.lock"

try:
    import fcntl
except ImportError:  # Windows: the PID file alone decides
    fcntl = None


# Run directories whose lock this process holds (real paths): `grpokit train` takes the lock before it
# builds the model, so that a second trainer stops at once, and the trainer's own `train` finds it held.
_HELD_HERE: set[str] = set()


def held_by_this_process(run_dir: str | Path) -> bool:
    """True while this process holds `run_dir`'s lock."""
    return os.path.realpath(run_dir) in _HELD_HERE


class RunDirLocked(RunDirError):
    """Another trainer holds the run directory's lock; ``holder`` is what its lock file says."""

    def __init__(self, message: str, holder: dict[str, Any]):
        super().__init__(message)
        self.holder = holder


def describe_holder(holder: dict[str, Any]) -> str:
    """``PID 4242 on host gpu1 since 2026-12-04 22:41:07 UTC (grpokit train cfg.yaml)`` from a lock file's fields."""
    since = holder.get("started_at")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since)) if isinstance(since, int | float) else "?"
    text = f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')} since {when}"
    command = holder.get("command")
    return f"{text} ({command})" if command else text


def _this_process() -> dict[str, Any]:
    argv = [Path(sys.argv[0]).name if index == 0 else arg for index, arg in enumerate(sys.argv)]
    if argv and argv[0] == "__main__.py":  # `python -m grpokit ...`
        argv[0] = "grpokit"
    return {"pid": os.getpid(), "host": socket.gethostname(), "started_at": time.time(), "command": " ".join(argv)}


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _read_holder(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = b""
    while chunk := os.read(fd, 65536):
        raw += chunk
    try:
        holder = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}  # empty (released) or torn by a crash mid-write
    return holder if isinstance(holder, dict) else {}


class RunLock:
    """``with RunLock(run_dir):`` holds ``run_dir/grpokit.lock`` or raises :class:`RunDirLocked` at once.

    The run directory must exist. Released (the file removed) on exit; a crashed holder's lock is
    released by the kernel and its file taken over by the next trainer with a warning.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILENAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        for _attempt in range(10):
            fd = self._open()
            try:
                previous = self._lock(fd)
                if self._still_linked(fd):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # the holder released and removed the file between our open and flock: retry
        else:
            raise RunDirError(f"could not lock {self.path}: it keeps being removed and recreated")
        if previous:
            warnings.warn(f"{self.run_dir}: taking over the lock of a trainer that is no longer running "
                          f"({describe_holder(previous)})", stacklevel=2)
        me = _this_process()
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps(me).encode("utf-8") + b"\n")
            os.fsync(fd)
        except OSError as error:
            os.close(fd)
            from grpokit.io_errors import io_error

            raise io_error(error, self.path) from error
        self._fd = fd
        _HELD_HERE.add(os.path.realpath(self.run_dir))
        return self

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            from grpokit.io_errors import io_error

            raise io_error(error, self.path) from error

    def _lock(self, fd: int) -> dict[str, Any]:
        """Take the OS lock on `fd`; return what a dead holder left in the file ({} when nothing)."""
        holder = _read_holder(fd)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self._locked(_read_holder(fd)) from None
            except OSError:  # flock unsupported here (ENOLCK, EOPNOTSUPP...): fall back to the PID file
                pass
            else:
                return {} if holder.get("pid") == os.getpid() else holder
        same_host = holder.get("host") == socket.gethostname()
        if holder and holder.get("pid") != os.getpid() and not (same_host and not _pid_alive(holder.get("pid"))):
            raise self._locked(holder)
        return holder

    def _locked(self, holder: dict[str, Any]) -> RunDirLocked:
        who = describe_holder(holder) if holder else "a process that is still starting"
        return RunDirLocked(f"{self.run_dir} is in use by another trainer: {who}; wait for it to end or "
                            f"choose another logging.run_dir", holder)

    def _still_linked(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        _HELD_HERE.discard(os.path.realpath(self.run_dir))
        try:
            # Removed while still locked, so no one locks the orphaned file; a trainer that opened it
            # before the removal sees it unlinked after its flock and retries (`_still_linked`).
            self.path.unlink(missing_ok=True)
        except OSError:
            pass  # the kernel drops the OS lock at close; the file left behind is taken over next time
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()
