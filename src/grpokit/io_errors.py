"""An I/O failure as one line: which file, doing what, and why (full disk with the free space left).

A full disk, a read-only mount, a missing permission or a path through a file are the user's
environment, not bugs: `io_error` turns the OSError (or a library's error that hides the errno in its
message) into a :class:`~grpokit.errors.RunDirError`. Here rather than in `grpokit.run_dir` because the
run lock, the JSON-lines logs and the checkpoints all need it, and `run_dir` needs them.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from grpokit.errors import GrpokitError, RunDirError

# How libraries that swallow errno say "disk full" (safetensors' Rust io::Error, C stdio messages).
_FULL_DISK_PHRASES = ("no space left on device", "os error 28", "storagefull", "disk quota exceeded")


def free_mib(path: str | Path) -> float:
    """Free space, in MiB, of the file system holding `path` (or its nearest existing parent)."""
    path = Path(path).absolute()
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free / 2**20
        except OSError:
            continue
    return float("nan")


def io_error(error: BaseException, path: str | Path, action: str = "writing") -> GrpokitError:
    """The one-line :class:`RunDirError` for an I/O failure while `action` (writing, creating...) `path`.

    Recognises a full disk also when a library hid the errno in its message (torch, safetensors).
    An error that already is a grpokit error is returned as it is.
    """
    if isinstance(error, GrpokitError):
        return error
    code = getattr(error, "errno", None)
    if code is None and any(phrase in str(error).lower() for phrase in _FULL_DISK_PHRASES):
        code = errno.ENOSPC
    if code in (errno.ENOSPC, errno.EDQUOT):
        return RunDirError(f"no space left on device {action} {path} (free: {free_mib(path):.1f} MiB)")
    reasons = {
        errno.EROFS: "read-only file system",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.ENOTDIR: "a part of the path is a file, not a directory",
        errno.EISDIR: "is a directory",
        errno.ENAMETOOLONG: "file name too long",
        errno.EIO: "input/output error (failing disk or lost network mount?)",
    }
    reason = reasons.get(code) or getattr(error, "strerror", None) or str(error).splitlines()[0]
    return RunDirError(f"{reason} {action} {path}")
