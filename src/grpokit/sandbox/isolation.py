"""Which isolation this machine offers, and the command line that starts a program inside it.

From strongest to weakest:

- ``bwrap`` (bubblewrap): new network, pid, ipc, uts and mount namespaces; a fresh root holding
  read-only binds of what the interpreter needs, the run's work directory at /sandbox (its only
  writable place and working directory) and the harness read-only at /harness. As root, the
  program then drops to a fresh unprivileged uid (see ``boot.py``); otherwise a user namespace.
- ``unshare``: the same namespaces and the same file-system view, built by ``launcher.py`` under
  util-linux ``unshare`` (needs root, or unprivileged user namespaces).
- ``unsafe_subprocess``: a plain child process with rlimits and a process group. No network or
  file-system isolation, and as root no bound on the number of processes. Never chosen by
  ``"auto"``; a user must ask for it by name.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

ISOLATIONS = ("bwrap", "unshare", "unsafe_subprocess")
AUTO_ORDER = ("bwrap", "unshare")
LAUNCHER = Path(__file__).with_name("launcher.py")
BOOT = Path(__file__).with_name("boot.py")

# What the interpreter needs from the host, besides its own prefixes; all read-only.
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache",
                "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime")
_NAMESPACES = ("--net", "--pid", "--mount", "--ipc", "--uts")


class IsolationUnavailable(RuntimeError):
    """The requested isolation (or, for "auto", any isolation) cannot run on this machine."""


def _is_root() -> bool:
    return os.geteuid() == 0


def bwrap_namespace_args() -> list[str]:
    """bwrap options shared by the probe and the real runs."""
    args = ["--die-with-parent", "--new-session", "--unshare-net", "--unshare-pid", "--unshare-ipc",
            "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox"]
    if _is_root():
        # The boot script drops to a fresh uid itself; root's RLIMIT_NPROC is not enforced, and
        # a user namespace would map the program back to root outside.
        return args + ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    return args + ["--unshare-user"]


def unshare_args() -> list[str]:
    user = [] if _is_root() else ["--user", "--map-root-user"]
    return ["unshare", *user, *_NAMESPACES, "--fork", "--kill-child", "--"]


@functools.cache
def isolation_works(name: str) -> bool:
    """Whether ``name`` can start a process here (probed once per process by running ``true``)."""
    if name == "unsafe_subprocess":
        return True
    if name == "bwrap":
        binary = shutil.which("bwrap")
        command = [binary, *bwrap_namespace_args(), "--ro-bind", "/", "/", "--proc", "/proc", "true"]
    elif name == "unshare":
        binary = shutil.which("unshare")
        command = [binary or "", *unshare_args()[1:], "true"]
    else:
        raise ValueError(f"unknown isolation {name!r}; choose from {ISOLATIONS} or 'auto'")
    if binary is None:
        return False
    try:
        probe = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    if probe.returncode != 0:
        logger.debug("sandbox: %s probe failed: %s", name, probe.stderr.decode(errors="replace")[:300])
    return probe.returncode == 0


def resolve_isolation(requested: str = "auto") -> str:
    """The isolation to use: the strongest available for ``"auto"``, else the named one if it
    works here. Raises :class:`IsolationUnavailable` with what to do about it."""
    if requested == "auto":
        for name in AUTO_ORDER:
            if isolation_works(name):
                return name
        raise IsolationUnavailable(
            "no sandbox isolation works on this machine (tried bubblewrap and unshare namespaces); "
            "install bubblewrap (apt-get install bubblewrap) or enable user namespaces, or pass "
            "isolation='unsafe_subprocess' to run untrusted code WITHOUT isolation"
        )
    if requested not in ISOLATIONS:
        raise ValueError(f"unknown isolation {requested!r}; choose from 'auto', {', '.join(ISOLATIONS)}")
    if not isolation_works(requested):
        raise IsolationUnavailable(
            f"sandbox isolation {requested!r} does not work on this machine; use isolation='auto' "
            "to pick the strongest available"
        )
    return requested


@functools.cache
def readonly_mounts(python: str) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """(directories/files to bind read-only, (symlink target, path) pairs) for running
    ``python``: the system library paths plus the interpreter's own prefixes (a virtualenv and
    the Python it was made from). Nothing else of the host — home, /tmp, the repository — is
    visible. Paths under an already bound directory are dropped."""
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    if os.path.realpath(python) != os.path.realpath(sys.executable):
        prefixes.add(str(Path(os.path.realpath(python)).parent.parent))
    binds: list[str] = []
    symlinks: list[tuple[str, str]] = []
    for path in sorted(set(SYSTEM_PATHS) | prefixes):
        if not os.path.lexists(path):
            continue
        if os.path.islink(path) and path in SYSTEM_PATHS:
            symlinks.append((os.readlink(path), path))
        elif not any(path == b or path.startswith(b.rstrip("/") + "/") for b in binds):
            binds.append(path)
    return tuple(binds), tuple(symlinks)
