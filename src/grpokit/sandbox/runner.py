"""Run one program in the sandbox (:class:`Sandbox`), or many at once (:class:`SandboxPool`).

A run: make a private temp directory (the program's work directory, its only writable place,
owned by the run's own uid) and a read-only harness directory beside it; start the program
inside the isolation (``isolation.py``) in its own process group; feed stdin; read stdout and
stderr up to the cap; kill the whole sandbox at the wall-clock deadline or at the cap; classify
the outcome; read back the files the caller asked for; delete both directories.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path

from grpokit.sandbox import isolation as iso
from grpokit.sandbox.limits import (
    CRASHED,
    FAILED,
    FORBIDDEN,
    MEMORY,
    OUTPUT_LIMIT,
    PASSED,
    TIMEOUT,
    SandboxLimits,
    SandboxResult,
)

logger = logging.getLogger(__name__)

SANDBOX_DIR, HARNESS_DIR = "/sandbox", "/harness"  # where the program sees them (namespaced runs)
COLLECT_MAX_BYTES = 1 << 16
EXITED_POLL_SECONDS = 0.25  # how often a quiet run is checked for having exited
# The program's uid when the sandbox starts as root: fresh per run, far above real accounts
# and the usual subordinate-uid ranges, so no two runs share an RLIMIT_NPROC count.
RUN_UID_RANGE = (1_500_000_000, 2_000_000_000)
# Last line of a traceback that means "the sandbox said no" rather than "the program is wrong".
_FORBIDDEN_MARKERS = ("PermissionError", "Read-only file system", "Network is unreachable",
                      "Temporary failure in name resolution", "Name or service not known", "gaierror",
                      "Operation not permitted", "Resource temporarily unavailable", "File too large",
                      "forbidden by the sandbox")


@dataclass(frozen=True)
class Program:
    """What to run. ``source`` is the main program; it is written to the work directory as
    ``main.py`` (or to the read-only harness directory with ``main_in_harness=True``, for a
    trusted driver the program must not edit). ``files`` go to the work directory (relative
    paths), ``harness_files`` to the harness directory. ``collect`` names work-directory files
    to read back after the run (regular files only, at most 64 KiB each)."""

    source: str
    stdin: str | bytes = ""
    files: Mapping[str, str | bytes] = field(default_factory=dict)
    harness_files: Mapping[str, str | bytes] = field(default_factory=dict)
    main_in_harness: bool = False
    collect: Sequence[str] = ()


@dataclass(frozen=True)
class RunOutcome:
    """A finished run with the files read back (``Sandbox.execute``)."""

    result: SandboxResult
    files: dict[str, bytes]


@functools.cache
def _announce(isolation: str) -> None:
    """The 'say which at start' line, once per process and isolation."""
    if isolation == "unsafe_subprocess":
        logger.warning("grpokit sandbox: isolation=unsafe_subprocess — untrusted code runs WITHOUT "
                       "network or file-system isolation")
    else:  # at warning level so that it shows without any logging set up
        logger.warning("grpokit sandbox: untrusted code runs under isolation=%s (no network, private "
                       "root, own pid namespace, rlimits)", isolation)


class Sandbox:
    """Runs programs under one isolation (see :func:`grpokit.sandbox.isolation.resolve_isolation`)
    with default ``limits``; ``python`` is the interpreter (default: this one, with its
    installed packages visible read-only)."""

    def __init__(self, isolation: str = "auto", *, limits: SandboxLimits | None = None,
                 python: str | None = None):
        self.isolation = iso.resolve_isolation(isolation)
        self.limits = limits or SandboxLimits()
        self.python = python or sys.executable
        _announce(self.isolation)

    def run(self, program: Program | str, limits: SandboxLimits | None = None) -> SandboxResult:
        return self.execute(program, limits).result

    def execute(self, program: Program | str, limits: SandboxLimits | None = None) -> RunOutcome:
        if isinstance(program, str):
            program = Program(program)
        limits = limits or self.limits
        base = Path(tempfile.mkdtemp(prefix="grpokit-sandbox-"))
        try:
            return self._execute(program, limits, base)
        finally:
            _remove_tree(base)

    # ------------------------------------------------------------------------- one run

    def _execute(self, program: Program, limits: SandboxLimits, base: Path) -> RunOutcome:
        namespaced = self.isolation != "unsafe_subprocess"
        uid = random.SystemRandom().randrange(*RUN_UID_RANGE) if namespaced and os.geteuid() == 0 else None
        work, harness = base / "work", base / "harness"
        work.mkdir(mode=0o700)
        harness.mkdir(mode=0o755)
        _write_files(work, program.files, uid)
        _write_files(harness, program.harness_files, None)
        main_name = "main.py"
        (harness if program.main_in_harness else work).joinpath(main_name).write_text(program.source, encoding="utf-8")
        if uid is not None:
            os.chown(work, uid, uid)
            if not program.main_in_harness:
                os.chown(work / main_name, uid, uid)
        shutil.copyfile(iso.BOOT, harness / "_grpokit_boot.py")

        work_in = SANDBOX_DIR if namespaced else str(work)
        harness_in = HARNESS_DIR if namespaced else str(harness)
        main_in = f"{harness_in if program.main_in_harness else work_in}/{main_name}"
        boot_config = json.dumps({"uid": uid, "rlimits": limits.rlimits(), "main": main_in})
        python_argv = [self.python, "-E", "-s", "-B", f"{harness_in}/_grpokit_boot.py", boot_config]
        env = _program_env(work_in)
        argv = self._command(python_argv, env, work, harness, base)

        stdin = program.stdin.encode() if isinstance(program.stdin, str) else program.stdin
        start = time.monotonic()
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, start_new_session=True, env=env,
                                   cwd=str(work) if not namespaced else str(base))
        stdout, stderr, killed_for = _communicate(process, stdin, start + limits.wall_seconds,
                                                  limits.output_bytes)
        seconds = time.monotonic() - start
        status, exit_code, signal_number = classify(process.returncode, killed_for, stderr, namespaced)
        cap = limits.output_bytes
        result = SandboxResult(
            status=status, exit_code=exit_code, signal=signal_number,
            stdout=stdout[:cap].decode(errors="replace"), stderr=stderr[:cap].decode(errors="replace"),
            seconds=seconds, isolation=self.isolation, truncated=len(stdout) > cap or len(stderr) > cap,
        )
        return RunOutcome(result, {name: data for name in program.collect
                                   if (data := _read_back(work / name)) is not None})

    def _command(self, python_argv: list[str], env: dict[str, str], work: Path, harness: Path,
                 base: Path) -> list[str]:
        if self.isolation == "unsafe_subprocess":
            return python_argv
        binds, symlinks = iso.readonly_mounts(self.python)
        if self.isolation == "bwrap":
            argv = [shutil.which("bwrap") or "bwrap", *iso.bwrap_namespace_args()]
            # Directories above a bind (/root above a pyenv Python) get mode 755 rather than the
            # host's, so the unprivileged run can walk through them; they hold nothing else.
            for ancestor in sorted({str(p) for path in binds for p in Path(path).parents} - {"/"}):
                argv += ["--perms", "0755", "--dir", ancestor]
            for path in binds:
                argv += ["--ro-bind", path, path]
            for target, path in symlinks:
                argv += ["--symlink", target, path]
            argv += ["--proc", "/proc", "--dev", "/dev", "--bind", str(work), SANDBOX_DIR,
                     "--ro-bind", str(harness), HARNESS_DIR, "--remount-ro", "/", "--chdir", SANDBOX_DIR]
            return argv + python_argv
        root = base / "root"
        root.mkdir()
        config = {"root": str(root), "readonly": list(binds), "symlinks": [list(s) for s in symlinks],
                  "work": str(work), "harness": str(harness), "argv": python_argv, "env": env}
        return [*iso.unshare_args(), sys.executable, "-I", "-S", str(iso.LAUNCHER), json.dumps(config)]


class SandboxPool:
    """A bounded pool of sandbox runs (``max_workers`` at once, default: the CPU count).

    :meth:`run_many` returns within ``deadline_seconds`` when given: programs not finished by
    then are reported as ``timeout`` (those not started are cancelled; running ones are still
    killed at their own wall-clock limit, in the background)."""

    def __init__(self, sandbox: Sandbox | None = None, *, max_workers: int | None = None):
        self.sandbox = sandbox or Sandbox()
        self.max_workers = max_workers or os.cpu_count() or 1
        if self.max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {self.max_workers}")
        self._executor = ThreadPoolExecutor(self.max_workers, thread_name_prefix="grpokit-sandbox")

    def execute_many(self, programs: Sequence[Program], *, limits: SandboxLimits | None = None,
                     deadline_seconds: float | None = None) -> list[RunOutcome]:
        futures = [self._executor.submit(self.sandbox.execute, p, limits) for p in programs]
        wait_futures(futures, timeout=deadline_seconds)
        outcomes = []
        for future in futures:
            if future.done():
                outcomes.append(future.result())
                continue
            future.cancel()
            late = SandboxResult(TIMEOUT, None, None, "", "not finished within the batch deadline of "
                                 f"{deadline_seconds} s", float(deadline_seconds or 0.0), self.sandbox.isolation)
            outcomes.append(RunOutcome(late, {}))
        return outcomes

    def run_many(self, programs: Sequence[Program | str], *, limits: SandboxLimits | None = None,
                 deadline_seconds: float | None = None) -> list[SandboxResult]:
        programs = [Program(p) if isinstance(p, str) else p for p in programs]
        return [o.result for o in self.execute_many(programs, limits=limits, deadline_seconds=deadline_seconds)]

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@functools.cache
def _default_sandbox(isolation: str) -> Sandbox:
    return Sandbox(isolation)


def run_python(source: str, stdin: str | bytes = "", files: Mapping[str, str | bytes] | None = None,
               limits: SandboxLimits | None = None, *, isolation: str = "auto") -> SandboxResult:
    """Run Python ``source`` in the sandbox with ``stdin`` and ``files`` (relative path ->
    content, written beside the program in its work directory) under ``limits``."""
    return _default_sandbox(isolation).run(Program(source, stdin, dict(files or {})), limits)


# ----------------------------------------------------------------------------- helpers


def classify(returncode: int, killed_for: str | None, stderr: bytes,
             namespaced: bool) -> tuple[str, int | None, int | None]:
    """(status, exit code, signal) of a finished run. ``killed_for``: "timeout" or "output"
    when the harness killed it. A namespaced run reports a signal as exit status 128 + signal
    (bubblewrap's convention, kept by ``launcher.py``)."""
    if killed_for == "timeout":
        return TIMEOUT, None, signal.SIGKILL
    if killed_for == "output":
        return OUTPUT_LIMIT, None, signal.SIGKILL
    signal_number = -returncode if returncode < 0 else None
    if namespaced and 128 < returncode <= 128 + 64:
        signal_number = returncode - 128
    if signal_number is not None:
        if signal_number == signal.SIGXCPU:
            return TIMEOUT, None, signal_number
        if signal_number == signal.SIGXFSZ:
            return FORBIDDEN, None, signal_number
        return CRASHED, None, signal_number
    if returncode == 0:
        return PASSED, 0, None
    lines = stderr.decode(errors="replace").strip().splitlines()
    last = lines[-1] if lines else ""
    if last.startswith("MemoryError"):
        return MEMORY, returncode, None
    if any(marker in last for marker in _FORBIDDEN_MARKERS):
        return FORBIDDEN, returncode, None
    return FAILED, returncode, None


def _program_env(work_in: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": work_in, "TMPDIR": work_in, "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8",
        # One thread each: thread pools would count against the process limit and the address space.
        "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
    }


def _write_files(directory: Path, files: Mapping[str, str | bytes], uid: int | None) -> None:
    for name, content in files.items():
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise ValueError(f"sandbox file name must be a relative path inside the work directory, got {name!r}")
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        if uid is not None:  # the program may edit and delete what it was given
            for owned in (relative, *relative.parents[:-1]):
                os.chown(directory / owned, uid, uid)


def _communicate(process: subprocess.Popen, stdin: bytes, deadline: float,
                 cap: int) -> tuple[bytes, bytes, str | None]:
    """Feed stdin (in a thread: a program that never reads it must not block us), collect
    stdout/stderr, and kill the sandbox at the deadline or once a stream passes ``cap`` bytes."""
    def feed() -> None:
        try:
            if stdin:
                process.stdin.write(stdin)
            process.stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass

    threading.Thread(target=feed, daemon=True).start()
    buffers = {process.stdout.fileno(): bytearray(), process.stderr.fileno(): bytearray()}
    killed_for = None
    with selectors.DefaultSelector() as selector:
        for stream in (process.stdout, process.stderr):
            selector.register(stream, selectors.EVENT_READ)
        while selector.get_map() and killed_for is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                killed_for = "timeout"
                break
            events = selector.select(min(remaining, EXITED_POLL_SECONDS))
            if not events and process.poll() is not None:
                # Exited, yet a pipe is still open: only possible without a pid namespace
                # (unsafe_subprocess), where a daemonized child can outlive the program.
                break
            for key, _ in events:
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                buffers[key.fd] += chunk
                if len(buffers[key.fd]) > cap:
                    killed_for = "output"
    if killed_for is None:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            killed_for = "timeout"
    _kill_group(process)  # also what an unsafe_subprocess run left behind in its group
    process.wait()
    for stream in (process.stdout, process.stderr):
        stream.close()
    out, err = buffers.values()
    return bytes(out), bytes(err), killed_for


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the process group. Namespaced runs die whole with it: bwrap's --die-with-parent
    and unshare's --kill-child take down pid 1 of the sandbox, and with it every process in it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _read_back(path: Path) -> bytes | None:
    """A regular file the program left, without following a link it may have planted, and
    without blocking on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, COLLECT_MAX_BYTES)
    finally:
        os.close(fd)


def _remove_tree(path: Path) -> None:
    """Delete a run's directories, including ones the program made unreadable (chmod 000)."""
    def make_writable_and_retry(function, failed_path, _exc_info) -> None:
        try:
            os.chmod(os.path.dirname(failed_path), 0o700)
            if os.path.isdir(failed_path) and not os.path.islink(failed_path):
                os.chmod(failed_path, 0o700)
            function(failed_path)
        except OSError:
            pass

    shutil.rmtree(path, onerror=make_writable_and_retry)
