"""What a sandboxed run may use, and what it came back with."""

from __future__ import annotations

from dataclasses import dataclass

# Run statuses, from the harness's point of view (see ``classify`` in ``runner.py``).
PASSED = "passed"  # exited with status 0
FAILED = "failed"  # exited with a non-zero status
TIMEOUT = "timeout"  # wall-clock timeout or CPU-seconds limit
MEMORY = "memory"  # ran out of its address-space limit (MemoryError)
CRASHED = "crashed"  # killed by a signal the harness did not send (SIGSEGV, SIGABRT, ...)
FORBIDDEN = "forbidden"  # died on a denial of the sandbox (read-only file system, no network, ...)
OUTPUT_LIMIT = "output_limit"  # wrote more than the stdout/stderr cap and was killed
STATUSES = (PASSED, FAILED, TIMEOUT, MEMORY, CRASHED, FORBIDDEN, OUTPUT_LIMIT)


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one run. Every field is enforced by the kernel (rlimits, namespaces)
    except ``wall_seconds`` and ``output_bytes``, which the harness enforces by killing the
    whole sandbox.

    - ``wall_seconds`` (10): wall-clock time from start to exit.
    - ``cpu_seconds`` (10): CPU time (RLIMIT_CPU, SIGXCPU then SIGKILL one second later).
    - ``memory_bytes`` (1 GiB): address space of each process (RLIMIT_AS).
    - ``file_size_bytes`` (16 MiB): largest file a process may write (RLIMIT_FSIZE).
    - ``processes`` (32): processes and threads of the sandbox user (RLIMIT_NPROC; each run gets
      its own user id, so the count is per run).
    - ``open_files`` (64): open file descriptors per process (RLIMIT_NOFILE).
    - ``output_bytes`` (64 KiB): cap on stdout and on stderr, each; a run writing more is killed.
    """

    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_bytes: int = 1 << 30
    file_size_bytes: int = 16 << 20
    processes: int = 32
    open_files: int = 64
    output_bytes: int = 64 << 10

    def __post_init__(self) -> None:
        for name in ("wall_seconds", "cpu_seconds", "memory_bytes", "file_size_bytes", "processes",
                     "open_files", "output_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SandboxLimits.{name} must be > 0, got {getattr(self, name)}")
        if self.open_files < 16:
            raise ValueError(f"SandboxLimits.open_files must be >= 16 (the interpreter needs some), "
                             f"got {self.open_files}")

    def rlimits(self) -> dict[str, tuple[int, int]]:
        """(soft, hard) per ``resource.RLIMIT_*`` name, as the boot script applies them."""
        return {
            "RLIMIT_CPU": (int(self.cpu_seconds), int(self.cpu_seconds) + 1),
            "RLIMIT_AS": (int(self.memory_bytes), int(self.memory_bytes)),
            "RLIMIT_FSIZE": (int(self.file_size_bytes), int(self.file_size_bytes)),
            "RLIMIT_NPROC": (int(self.processes), int(self.processes)),
            "RLIMIT_NOFILE": (int(self.open_files), int(self.open_files)),
            "RLIMIT_CORE": (0, 0),
        }


@dataclass(frozen=True)
class SandboxResult:
    """One run. ``exit_code`` is the program's exit status (None when a signal ended it, then
    ``signal`` says which); ``stdout``/``stderr`` are decoded and cut at the output cap
    (``truncated`` says whether either was cut); ``seconds`` is wall-clock time."""

    status: str
    exit_code: int | None
    signal: int | None
    stdout: str
    stderr: str
    seconds: float
    isolation: str
    truncated: bool = False

    @property
    def passed(self) -> bool:
        return self.status == PASSED
