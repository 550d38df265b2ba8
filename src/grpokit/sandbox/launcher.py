"""The ``unshare`` isolation's namespace setup: what bubblewrap does, for machines without it.

Started by ``unshare --net --pid --mount --ipc --uts --fork --kill-child`` (plus ``--user
--map-root-user`` when not root), so it runs as pid 1 of fresh namespaces with mount rights.
It builds a new root on a small tmpfs — read-only binds of what the interpreter needs, the run's
work directory read-write at /sandbox, the harness read-only at /harness, a fresh /proc, a few
/dev nodes — pivots into it, and runs the command as its child. When that child exits, pid 1
exits with its status, and the kernel kills every other process of the pid namespace (double
forks and ``setsid`` included). ``--kill-child`` makes pid 1 die when ``unshare`` is killed.

Standard library only, no grpokit import. Argument: one JSON object
``{"root": host dir, "readonly": [path], "symlinks": [[target, path]], "work": host dir,
"harness": host dir, "argv": [...], "env": {...}}``.
"""

import ctypes
import json
import os
import platform
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_NO_NEW_PRIVS = 38
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(platform.machine())
DEVICES = ("null", "zero", "full", "random", "urandom")

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"sandbox launcher: {what}: {os.strerror(errno)}")


def _encode(text: str | None) -> bytes | None:
    return None if text is None else text.encode()


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    encode = _encode
    _check(_libc.mount(encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags), encode(data)),
           f"mount {source} on {target}")


def _bind(source: str, target: str, readonly: bool) -> None:
    if os.path.isdir(source):
        os.makedirs(target, mode=0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        open(target, "a").close()
    _mount(source, target, None, MS_BIND | MS_REC)
    # Flags a less privileged mount namespace may not drop (nodev, noexec) are kept.
    kept = os.statvfs(target).f_flag & (MS_NOSUID | MS_NODEV | MS_NOEXEC)
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | kept | (MS_RDONLY if readonly else 0)
    _mount(None, target, None, flags)


def _build_root(config: dict) -> None:
    root = config["root"]
    os.umask(0o022)  # directories made above a bind must be walkable by the unprivileged run
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates back to the host
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    for path in config["readonly"]:
        _bind(path, root + path, readonly=True)
    for target, path in config["symlinks"]:
        os.makedirs(os.path.dirname(root + path), mode=0o755, exist_ok=True)
        os.symlink(target, root + path)
    _bind(config["work"], root + "/sandbox", readonly=False)
    _bind(config["harness"], root + "/harness", readonly=True)
    os.makedirs(root + "/proc", mode=0o755)
    _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(root + "/dev", mode=0o755)
    for device in DEVICES:
        _bind("/dev/" + device, root + "/dev/" + device, readonly=False)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, root + "/dev/" + name)
    os.chdir(root)
    if SYS_PIVOT_ROOT is None:
        raise OSError(f"sandbox launcher: pivot_root number unknown on {platform.machine()}")
    _check(_libc.syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "detach the old root")
    os.chdir("/")
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def main() -> None:
    config = json.loads(sys.argv[1])
    _build_root(config)
    child = os.fork()
    if child == 0:
        os.chdir("/sandbox")
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        os.execve(config["argv"][0], config["argv"], config["env"])
    # pid 1: reap every orphan until the program itself exits, then report its status the way
    # bubblewrap does (128 + signal number when a signal ended it).
    while True:
        pid, status = os.wait()
        if pid == child:
            os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


if __name__ == "__main__":
    main()
