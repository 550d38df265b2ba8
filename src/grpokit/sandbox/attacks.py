"""Attack programs and the host-side checks that they were contained — the sandbox's self-test
(``python -m grpokit.sandbox.attacks``), used by the tests and ``bench/sandbox.py``.

Each attack sets up what it needs on the host (a listener on 127.0.0.1, a secret file, a
canary process), runs its program in the sandbox and checks from outside: not from the
program's own word, except where only the program can tell (a refused ``setrlimit``).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpokit
from grpokit.sandbox.limits import MEMORY, OUTPUT_LIMIT, TIMEOUT, SandboxLimits, SandboxResult
from grpokit.sandbox.runner import RUN_UID_RANGE, Sandbox

REPO_ROOT = Path(grpokit.__file__).resolve().parents[2]
SHORT = SandboxLimits(wall_seconds=2.0, cpu_seconds=2, memory_bytes=256 << 20, output_bytes=16 << 10)


@dataclass(frozen=True)
class AttackReport:
    name: str
    contained: bool
    detail: str
    result: SandboxResult


def sandbox_processes() -> list[int]:
    """Live processes running as a sandbox run's uid (none may outlive their run)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("Uid:") and RUN_UID_RANGE[0] <= int(line.split()[1]) < RUN_UID_RANGE[1]:
                    found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return found


def _no_strays() -> tuple[bool, str]:
    for _ in range(20):  # the kernel reaps a dead pid namespace promptly; allow it a moment
        strays = sandbox_processes()
        if not strays:
            return True, "no process left"
        time.sleep(0.05)
    return False, f"processes left running: {strays}"


def _report(name: str, result: SandboxResult, checks: list[tuple[bool, str]]) -> AttackReport:
    contained = all(ok for ok, _ in checks)
    detail = "; ".join(f"{'ok' if ok else 'FAIL'}: {text}" for ok, text in checks)
    return AttackReport(name, contained, f"status={result.status}; {detail}", result)


def fork_bomb(sandbox: Sandbox) -> AttackReport:
    source = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    result = sandbox.run(source, SHORT)
    host_forks = subprocess.run(["true"], timeout=10).returncode == 0
    return _report("fork_bomb", result, [(result.status == TIMEOUT, "killed at the wall clock"),
                                         _no_strays(), (host_forks, "host can still start processes")])


def memory_bomb(sandbox: Sandbox) -> AttackReport:
    result = sandbox.run("x = []\nwhile True:\n    x.append(bytearray(32 << 20))\n", SHORT)
    return _report("memory_bomb", result, [(result.status == MEMORY, "stopped at the address-space limit")])


def infinite_loop(sandbox: Sandbox) -> AttackReport:
    result = sandbox.run("while True:\n    pass\n", SHORT)
    in_time = result.seconds < SHORT.wall_seconds + 1.5
    return _report("infinite_loop", result, [(result.status == TIMEOUT and in_time,
                                              f"killed after {result.seconds:.2f} s")])


def sleep_past_timeout(sandbox: Sandbox) -> AttackReport:
    result = sandbox.run("import time\ntime.sleep(60)\n", SHORT)
    in_time = result.seconds < SHORT.wall_seconds + 1.5
    return _report("sleep_past_timeout", result, [(result.status == TIMEOUT and in_time,
                                                   f"killed after {result.seconds:.2f} s")])


def double_fork_orphan(sandbox: Sandbox) -> AttackReport:
    source = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
              "        time.sleep(60)\n    os._exit(0)\nprint('parent done')\n")
    result = sandbox.run(source, SHORT)
    return _report("double_fork_orphan", result, [(result.seconds < SHORT.wall_seconds, "run ended with its parent"),
                                                  _no_strays()])


def setsid_daemon(sandbox: Sandbox) -> AttackReport:
    source = ("import os, sys, time\nif os.fork() == 0:\n    os.setsid()\n    sys.stdout.close()\n"
              "    time.sleep(60)\n    os._exit(0)\n")
    result = sandbox.run(source, SHORT)
    return _report("setsid_daemon", result, [(result.seconds < SHORT.wall_seconds, "run ended with its parent"),
                                             _no_strays()])


def write_outside(sandbox: Sandbox) -> AttackReport:
    token = secrets.token_hex(6)
    targets = [f"/tmp/grpokit-attack-{token}", str(Path.home() / f"grpokit-attack-{token}"),
               str(REPO_ROOT / f"grpokit-attack-{token}"), f"/etc/grpokit-attack-{token}", f"/grpokit-attack-{token}"]
    source = (f"targets = {targets!r}\nfor t in targets:\n    try:\n        open(t, 'w').write('x')\n"
              "        print('WROTE', t)\n    except OSError as e:\n        print('refused', t, e)\n")
    result = sandbox.run(source, SHORT)
    leaked = [t for t in targets if os.path.exists(t)]
    for path in leaked:
        os.unlink(path)
    return _report("write_outside", result, [(not leaked, f"no file appeared outside ({len(targets)} tried)")])


def read_secret(sandbox: Sandbox) -> AttackReport:
    secret = secrets.token_hex(16)
    directory = tempfile.mkdtemp(prefix="grpokit-secret-")
    path = os.path.join(directory, "secret.txt")
    Path(path).write_text(secret)
    os.chmod(directory, 0o755)
    os.chmod(path, 0o644)  # readable by anyone on the host: only hiding it protects it
    try:
        source = (f"for p in [{path!r}, '/etc/shadow', '/proc/1/environ']:\n    try:\n"
                  "        print(open(p).read())\n    except OSError as e:\n        print('refused', p, e)\n")
        result = sandbox.run(source, SHORT)
    finally:
        os.unlink(path)
        os.rmdir(directory)
    seen = secret in result.stdout or secret in result.stderr
    return _report("read_secret", result, [(not seen, "the secret file is not visible")])


def network(sandbox: Sandbox) -> AttackReport:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(SHORT.wall_seconds + 1)
    port = listener.getsockname()[1]
    received: list[bytes] = []

    def accept() -> None:
        try:
            connection, _ = listener.accept()
            received.append(connection.recv(100) or b"<connected>")
            connection.close()
        except OSError:
            pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    source = (f"import socket\ntry:\n    s = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
              "    s.sendall(b'leak')\n    print('CONNECTED')\nexcept OSError as e:\n    print('refused', e)\n"
              "try:\n    print('RESOLVED', socket.getaddrinfo('example.com', 80))\nexcept OSError as e:\n"
              "    print('no dns', e)\n")
    result = sandbox.run(source, SHORT)
    thread.join()
    listener.close()
    return _report("network", result, [(not received, "the 127.0.0.1 listener received nothing"),
                                       ("RESOLVED" not in result.stdout, "host name not resolved")])


def kill_parent(sandbox: Sandbox) -> AttackReport:
    canary = subprocess.Popen(["sleep", "30"])
    source = ("import os, signal\nfor f in (lambda: os.kill(os.getppid(), 9), lambda: os.killpg(os.getpgid(0), 9),"
              f" lambda: os.kill({canary.pid}, 9), lambda: os.kill(-1, 9)):\n    try:\n        f()\n"
              "    except OSError as e:\n        print('refused', e)\n")
    result = sandbox.run(source, SHORT)
    alive = canary.poll() is None
    canary.kill()
    canary.wait()
    return _report("kill_parent", result, [(alive, "a host process survived kill(-1) and kill(pid)"),
                                           _no_strays()])


def huge_stdout(sandbox: Sandbox) -> AttackReport:
    result = sandbox.run("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", SHORT)
    capped = len(result.stdout.encode()) <= SHORT.output_bytes
    return _report("huge_stdout", result, [(result.status == OUTPUT_LIMIT and capped,
                                            f"stopped at the cap, kept {len(result.stdout)} chars")])


def change_harness(sandbox: Sandbox) -> AttackReport:
    package_file = Path(grpokit.__file__).resolve()
    before = package_file.read_bytes()
    targets = ["/harness/_grpokit_boot.py", str(package_file), "/usr/lib/os-release"]
    source = (f"for t in {targets!r}:\n    try:\n        open(t, 'a').write('#')\n        print('CHANGED', t)\n"
              "    except OSError as e:\n        print('refused', t, e)\n")
    result = sandbox.run(source, SHORT)
    unchanged = package_file.read_bytes() == before
    return _report("change_harness", result, [(unchanged and "CHANGED" not in result.stdout,
                                               "harness and host files unchanged")])


def ctypes_rlimits(sandbox: Sandbox) -> AttackReport:
    source = (
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "class RLimit(ctypes.Structure):\n    _fields_ = [('cur', ctypes.c_ulong), ('max', ctypes.c_ulong)]\n"
        "print('setrlimit', libc.setrlimit(6, ctypes.byref(RLimit(2**63, 2**63))))\n"  # 6: RLIMIT_NPROC
        "print('setuid', libc.setuid(0))\n"
        "n = 0\nfor _ in range(100):\n    try:\n        pid = os.fork()\n    except OSError:\n        break\n"
        "    if pid == 0:\n        import time; time.sleep(1); os._exit(0)\n    n += 1\nprint('forks', n)\n"
    )
    result = sandbox.run(source, SHORT)
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    forks = int(lines.get("forks", "0"))
    return _report("ctypes_rlimits", result, [
        (lines.get("setrlimit") == "-1", "raising RLIMIT_NPROC refused"),
        # Started by a non-root user, the unshare isolation runs the program as root of its own
        # user namespace (root there, the user outside), so setuid(0) is a no-op, not an escape.
        (lines.get("setuid") == "-1" or (os.geteuid() != 0 and sandbox.isolation == "unshare"),
         "setuid(0) refused"),
        ("forks" in lines and forks < SHORT.processes, f"{forks} forks, under the process limit"),
        _no_strays(),
    ])


ATTACKS: dict[str, Callable[[Sandbox], AttackReport]] = {
    fn.__name__: fn for fn in (fork_bomb, memory_bomb, infinite_loop, sleep_past_timeout, double_fork_orphan,
                               setsid_daemon, write_outside, read_secret, network, kill_parent, huge_stdout,
                               change_harness, ctypes_rlimits)
}


def run_attacks(sandbox: Sandbox) -> list[AttackReport]:
    if sandbox.isolation == "unsafe_subprocess":
        raise ValueError("the attack programs are not run without isolation (kill(-1) as root would "
                         "take down the machine)")
    return [attack(sandbox) for attack in ATTACKS.values()]


if __name__ == "__main__":
    box = Sandbox()
    reports = run_attacks(box)
    for report in reports:
        print(f"{'contained' if report.contained else 'ESCAPED  '} {report.name}: {report.detail}")
    print(f"isolation={box.isolation} contained={sum(r.contained for r in reports)}/{len(reports)}")
