"""A local sandbox for untrusted code: code rewards and the ``python`` tool run in it.

    from grpokit.sandbox import run_python, SandboxLimits

    result = run_python("print(input()[::-1])", stdin="abc", limits=SandboxLimits(wall_seconds=2))
    result.status, result.stdout      # ("passed", "cba\\n")

Each run gets its own network, pid and mount namespaces (bubblewrap, or ``unshare`` where
bubblewrap is missing), a private work directory as its only writable place, the host file
system hidden except the interpreter (read-only), rlimits, a wall-clock timeout that kills the
whole sandbox, and capped output. See docs/sandbox.md.
"""

from grpokit.sandbox.isolation import ISOLATIONS, IsolationUnavailable, resolve_isolation
from grpokit.sandbox.limits import STATUSES, SandboxLimits, SandboxResult
from grpokit.sandbox.runner import Program, RunOutcome, Sandbox, SandboxPool, classify, run_python

__all__ = [
    "ISOLATIONS",
    "STATUSES",
    "IsolationUnavailable",
    "Program",
    "RunOutcome",
    "Sandbox",
    "SandboxLimits",
    "SandboxPool",
    "SandboxResult",
    "classify",
    "resolve_isolation",
    "run_python",
]
