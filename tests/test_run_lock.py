"""One trainer per run directory (grpokit.run_lock) and the run-directory checks (grpokit.run_dir)."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from grpokit.errors import RunDirError
from grpokit.run_dir import check_run_dir, io_error, training_run_dir
from grpokit.run_lock import LOCK_FILENAME, RunDirLocked, RunLock, held_by_this_process


def _dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _holder(pid: int, host: str | None = None) -> dict:
    return {"pid": pid, "host": host or socket.gethostname(), "started_at": 1_700_000_000.0,
            "command": "grpokit train old.yaml"}


def test_lock_file_names_this_process_while_held_and_is_removed_on_release(tmp_path):
    with RunLock(tmp_path) as lock:
        holder = json.loads((tmp_path / LOCK_FILENAME).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        assert abs(holder["started_at"] - time.time()) < 60 and holder["command"]
        assert lock.held and held_by_this_process(tmp_path)
    assert not (tmp_path / LOCK_FILENAME).exists() and not held_by_this_process(tmp_path)


def test_second_lock_on_the_same_dir_fails_at_once_naming_the_holder(tmp_path):
    with RunLock(tmp_path):
        started = time.monotonic()
        with pytest.raises(RunDirLocked) as caught:
            RunLock(tmp_path).acquire()
        assert time.monotonic() - started < 1.0  # non-blocking: no waiting for the holder
    message = str(caught.value)
    assert f"{tmp_path} is in use by another trainer: PID {os.getpid()} on host {socket.gethostname()}" in message
    assert "\n" not in message and caught.value.holder["pid"] == os.getpid()
    RunLock(tmp_path).acquire().release()  # free again after the holder released it


def test_lock_held_by_another_process_is_refused_and_freed_by_the_kernel_when_it_is_killed(tmp_path):
    holder_script = textwrap.dedent(f"""
        import sys, time
        from grpokit.run_lock import RunLock
        RunLock({str(tmp_path)!r}).acquire()
        print("locked", flush=True)
        time.sleep(600)
    """)
    process = subprocess.Popen([sys.executable, "-c", holder_script], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirLocked, match=f"PID {process.pid} on host"):
            RunLock(tmp_path).acquire()
    finally:
        process.send_signal(signal.SIGKILL)  # kill -9: no clean-up runs, the lock file stays
        process.wait(timeout=30)
    assert (tmp_path / LOCK_FILENAME).exists()
    with pytest.warns(UserWarning, match=f"taking over the lock of a trainer that is no longer running .PID {process.pid}"):
        lock = RunLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK_FILENAME).read_text())["pid"] == os.getpid()
    lock.release()


def test_stale_lock_file_of_a_dead_pid_is_taken_over_with_a_warning(tmp_path):
    dead = _dead_pid()
    (tmp_path / LOCK_FILENAME).write_text(json.dumps(_holder(dead)))
    with pytest.warns(UserWarning, match=f"PID {dead} on host .* \\(grpokit train old.yaml\\)"):
        with RunLock(tmp_path):
            assert json.loads((tmp_path / LOCK_FILENAME).read_text())["pid"] == os.getpid()


def test_without_flock_a_live_pid_on_this_host_holds_the_dir_and_a_dead_one_is_stale(tmp_path, monkeypatch):
    import grpokit.run_lock as run_lock

    def flock_unsupported(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")  # e.g. a network file system without flock

    monkeypatch.setattr(run_lock.fcntl, "flock", flock_unsupported)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (tmp_path / LOCK_FILENAME).write_text(json.dumps(_holder(sleeper.pid)))
        with pytest.raises(RunDirLocked, match=f"PID {sleeper.pid}"):
            RunLock(tmp_path).acquire()
        # Another host's PID cannot be checked from here: held, to be safe.
        (tmp_path / LOCK_FILENAME).write_text(json.dumps(_holder(_dead_pid(), host="some-other-host")))
        with pytest.raises(RunDirLocked, match="on host some-other-host"):
            RunLock(tmp_path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait(timeout=30)
    (tmp_path / LOCK_FILENAME).write_text(json.dumps(_holder(_dead_pid())))
    with pytest.warns(UserWarning, match="no longer running"):
        RunLock(tmp_path).acquire().release()


def test_training_run_dir_is_reentrant_in_the_process_that_holds_it(tmp_path):
    with training_run_dir(tmp_path):
        with training_run_dir(tmp_path):  # the CLI locked before building; `train` locks again
            assert held_by_this_process(tmp_path)
        assert held_by_this_process(tmp_path)  # the inner exit does not release the outer lock
    assert not held_by_this_process(tmp_path)


# ---------------------------------------------------------------------- run directory checks


def test_run_dir_that_is_a_file_is_refused_in_one_line(tmp_path):
    path = tmp_path / "run"
    path.write_text("")
    with pytest.raises(RunDirError, match=f"^logging.run_dir {path} is a file, not a directory$"):
        check_run_dir(path)
    with pytest.raises(RunDirError, match="a part of the path is a file, not a directory"):
        check_run_dir(path / "below")


@pytest.mark.parametrize("path", ["/proc/grpokit-run", "/sys/kernel/grpokit-run"])
def test_run_dir_under_kernel_file_systems_is_refused(path):
    with pytest.raises(RunDirError, match=f"logging.run_dir {path} is under /(proc|sys), a kernel file system"):
        check_run_dir(path)


def test_run_dir_is_created_with_its_parents(tmp_path):
    assert check_run_dir(tmp_path / "a" / "b").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the write probe leaves nothing behind


def test_read_only_run_dir_is_refused_naming_the_reason(read_only_dir):
    with pytest.raises(RunDirError, match=f"(read-only file system|permission denied) writing into {read_only_dir}"):
        check_run_dir(read_only_dir)


@pytest.mark.parametrize(("code", "expected"), [
    (errno.ENOSPC, r"^no space left on device writing {path} \(free: \d+\.\d MiB\)$"),
    (errno.EROFS, r"^read-only file system writing {path}$"),
    (errno.EACCES, r"^permission denied writing {path}$"),
])
def test_io_errors_become_one_line_run_dir_errors(tmp_path, code, expected):
    path = tmp_path / "metrics.jsonl"
    error = io_error(OSError(code, os.strerror(code), str(path)), path)
    assert isinstance(error, RunDirError)
    assert __import__("re").match(expected.format(path=path), str(error))


def test_full_disk_hidden_in_a_library_message_is_recognised(tmp_path):
    error = io_error(RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"),
                     tmp_path / "model")
    assert str(error).startswith(f"no space left on device writing {tmp_path / 'model'} (free: ")


@pytest.fixture
def read_only_dir(tmp_path, small_tmpfs):
    """A directory this process cannot write into: mode 0555, or for root (who ignores modes) a read-only tmpfs."""
    if os.geteuid() != 0:
        path = tmp_path / "read-only"
        path.mkdir(mode=0o555)
        yield path
        path.chmod(0o755)
    else:
        yield small_tmpfs(read_only=True)
