"""Sandbox runs: results, statuses, files, limits, the pool's deadline, choosing the isolation."""

from __future__ import annotations

import signal
import time

import pytest

from grpokit.sandbox import (
    IsolationUnavailable,
    Program,
    Sandbox,
    SandboxLimits,
    SandboxPool,
    classify,
    resolve_isolation,
    run_python,
)
from grpokit.sandbox import isolation as iso
from grpokit.sandbox.isolation import isolation_works

NAMESPACED = [name for name in ("bwrap", "unshare") if isolation_works(name)]
needs_isolation = pytest.mark.skipif(not NAMESPACED, reason="no namespaced isolation on this machine")
SHORT = SandboxLimits(wall_seconds=3.0, cpu_seconds=3)


@needs_isolation
@pytest.mark.parametrize("isolation", NAMESPACED)
def test_program_reads_stdin_and_its_files_and_writes_only_its_work_dir(isolation):
    source = ("import os\nprint(input()[::-1])\nprint(open('data/in.txt').read())\n"
              "open('out.txt', 'w').write('ok')\nprint(os.getcwd(), os.environ['HOME'], os.environ['TMPDIR'])\n")
    result = run_python(source, stdin="abc\n", files={"data/in.txt": "hello"}, limits=SHORT, isolation=isolation)
    assert result.status == "passed" and result.exit_code == 0 and result.isolation == isolation
    assert result.stdout.splitlines() == ["cba", "hello", "/sandbox /sandbox /sandbox"]


@needs_isolation
def test_statuses_of_failing_programs():
    box = Sandbox(NAMESPACED[0], limits=SHORT)
    failed = box.run("raise ValueError('no')")
    assert (failed.status, failed.exit_code) == ("failed", 1) and "ValueError: no" in failed.stderr
    assert box.run("import sys\nsys.exit(3)").exit_code == 3
    crashed = box.run("import os\nos.abort()")
    assert (crashed.status, crashed.signal) == ("crashed", signal.SIGABRT)
    forbidden = box.run("open('/usr/grpokit-x', 'w')")
    assert forbidden.status == "forbidden", forbidden.stderr
    # The wall clock is far off, so only the CPU limit (SIGXCPU) can end this, even on a busy machine.
    cpu = box.run("while True:\n    pass\n", SandboxLimits(wall_seconds=20.0, cpu_seconds=1))
    assert cpu.status == "timeout" and cpu.signal == signal.SIGXCPU


def test_classify_reads_exit_status_signal_and_last_traceback_line():
    assert classify(0, None, b"", True) == ("passed", 0, None)
    assert classify(1, None, b"Traceback...\nMemoryError\n", True) == ("memory", 1, None)
    assert classify(1, None, b"OSError: [Errno 30] Read-only file system: '/x'", True)[0] == "forbidden"
    assert classify(1, None, b"AssertionError", True) == ("failed", 1, None)
    assert classify(128 + 11, None, b"", True) == ("crashed", None, 11)  # bwrap's 128 + signal
    assert classify(-11, None, b"", False) == ("crashed", None, 11)  # Popen's -signal
    assert classify(128 + 24, None, b"", True) == ("timeout", None, 24)  # SIGXCPU
    assert classify(0, "timeout", b"", True)[0] == "timeout"
    assert classify(0, "output", b"", True)[0] == "output_limit"


@needs_isolation
def test_pool_runs_in_parallel_and_returns_by_its_deadline():
    pool = SandboxPool(Sandbox(NAMESPACED[0], limits=SandboxLimits(wall_seconds=8.0)), max_workers=2)
    start = time.monotonic()
    results = pool.run_many(["print(1)", "import time\ntime.sleep(30)", "import time\ntime.sleep(30)"],
                            deadline_seconds=2.0)
    elapsed = time.monotonic() - start
    pool.close()
    assert results[0].status == "passed" and results[0].stdout == "1\n"
    # The sleepers are still running at the deadline (their own limit is 8 s): reported as timeout.
    assert [r.status for r in results[1:]] == ["timeout", "timeout"]
    assert elapsed < 4.0


def test_unsafe_mode_runs_when_asked_for_by_name():
    result = Sandbox("unsafe_subprocess", limits=SHORT).run(Program("print(6 * 7)"))
    assert (result.status, result.stdout, result.isolation) == ("passed", "42\n", "unsafe_subprocess")


def test_no_isolation_means_a_clear_refusal(monkeypatch):
    monkeypatch.setattr(iso, "isolation_works", lambda name: name == "unsafe_subprocess")
    with pytest.raises(IsolationUnavailable, match="install bubblewrap.*unsafe_subprocess"):
        resolve_isolation("auto")
    with pytest.raises(IsolationUnavailable, match="'bwrap' does not work"):
        resolve_isolation("bwrap")
    with pytest.raises(ValueError, match="unknown isolation"):
        resolve_isolation("docker")


def test_auto_falls_back_to_unshare_without_bubblewrap(monkeypatch):
    monkeypatch.setattr(iso, "isolation_works", lambda name: name != "bwrap")
    assert resolve_isolation("auto") == "unshare"


def test_file_names_must_stay_inside_the_work_dir():
    box = Sandbox("unsafe_subprocess", limits=SHORT)
    with pytest.raises(ValueError, match="relative path"):
        box.run(Program("pass", files={"../escape.txt": "x"}))
