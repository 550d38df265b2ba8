"""Code reward: run the completion's code against the row's test cases in the sandbox.

Test cases come from a data-set column (``tests`` by default), one list per row, each case one of

- an assert-style case: a string of Python run after the solution (``"assert add(1, 2) == 3"``,
  or a HumanEval ``check`` function followed by ``check(entry_point)``), or ``{"code": ...}``;
- a stdin/stdout case: ``{"stdin": "1 2\\n", "stdout": "3\\n"}`` — the solution runs as a
  program; its stdout must equal the expected one up to trailing whitespace on each line and
  trailing blank lines.

``{"inputs": [...], "outputs": [...]}`` (APPS / CodeContests style) is read as stdin/stdout
cases, and a JSON string of any of these is parsed first (CSV data sets). The reward is the
fraction of cases passed (``partial_credit=False``: 1 only when all pass); a row without tests
scores None; a completion without code scores 0 without running anything.

Every case is its own sandboxed program; an assert case passes only when the driver in
:mod:`grpokit.rewards.code_harness` reports the run's random nonce after the asserts, so exiting
early, raising, patching builtins or printing "PASSED" cannot pass.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from dataclasses import dataclass
from typing import Any

from grpokit.rewards import code_harness
from grpokit.rewards.api import RewardFn
from grpokit.sandbox import IsolationUnavailable, Program, Sandbox, SandboxLimits, SandboxPool
from grpokit.sandbox.limits import PASSED

_FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)```", re.DOTALL)
_PYTHON_TAGS = ("", "python", "py", "python3", "py3")
EXTRACT_MODES = ("fenced", "full", "fenced_or_full")


@dataclass(frozen=True)
class TestCase:
    """One test: ``kind`` "assert" (``code`` runs after the solution) or "stdio" (the solution
    reads ``stdin`` and must print ``stdout``)."""

    __test__ = False  # not a pytest class, despite the name
    kind: str
    code: str = ""
    stdin: str = ""
    stdout: str = ""


def extract_code(text: str, mode: str = "fenced") -> str | None:
    """The code in a completion. ``"fenced"``: the last complete fenced block tagged python (or
    untagged), None when there is none; ``"full"``: the whole text; ``"fenced_or_full"``: the
    fenced block, else the whole text."""
    if mode not in EXTRACT_MODES:
        raise ValueError(f"extract must be one of {EXTRACT_MODES}, got {mode!r}")
    if mode == "full":
        return text
    blocks = [code for tag, code in _FENCE.findall(text) if tag.lower() in _PYTHON_TAGS]
    if blocks:
        return blocks[-1]
    return text if mode == "fenced_or_full" else None


def parse_tests(value: Any) -> list[TestCase] | None:
    """A row's test cases (formats in the module docstring); None when the row has none.
    Raises ``ValueError`` naming the malformed case."""
    if value is None:
        return None
    if isinstance(value, str):
        stripped = value.strip()
        if stripped[:1] in ("[", "{"):
            try:
                value = json.loads(stripped)
            except json.JSONDecodeError:
                pass  # a Python assert that happens to start with a bracket
    if isinstance(value, dict) and "inputs" in value and "outputs" in value:
        inputs, outputs = value["inputs"], value["outputs"]
        if len(inputs) != len(outputs):
            raise ValueError(f"tests: {len(inputs)} inputs but {len(outputs)} outputs")
        return [TestCase("stdio", stdin=str(i), stdout=str(o)) for i, o in zip(inputs, outputs)]
    cases = [value] if isinstance(value, (str, dict)) else list(value)
    parsed = []
    for k, case in enumerate(cases):
        if isinstance(case, str):
            parsed.append(TestCase("assert", code=case))
        elif isinstance(case, dict) and "stdout" in case:
            parsed.append(TestCase("stdio", stdin=str(case.get("stdin") or ""), stdout=str(case["stdout"])))
        elif isinstance(case, dict) and "code" in case:
            parsed.append(TestCase("assert", code=str(case["code"])))
        else:
            raise ValueError(f"tests: case {k} must be a Python string, {{'code': ...}} or "
                             f"{{'stdin': ..., 'stdout': ...}}, got {case!r:.100}")
    return parsed or None


def outputs_match(actual: str, expected: str) -> bool:
    """Equal up to trailing whitespace on each line and trailing blank lines (judge-style)."""
    def canonical(text: str) -> list[str]:
        lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
        while lines and not lines[-1]:
            lines.pop()
        return lines

    return canonical(actual) == canonical(expected)


def case_program(code: str, case: TestCase) -> tuple[Program, str]:
    """(the sandboxed program for ``code`` under ``case``, the nonce a pass must report)."""
    if case.kind == "stdio":
        return Program(code, stdin=case.stdin), ""
    nonce = secrets.token_hex(16)
    program = Program(
        code_harness.RUN_CASE,
        files={code_harness.NONCE_FILE: nonce},
        harness_files={code_harness.SOLUTION_FILE: code, code_harness.TEST_FILE: case.code},
        main_in_harness=True,
        collect=(code_harness.RESULT_FILE,),
    )
    return program, nonce


def _case_passed(case: TestCase, nonce: str, outcome: Any) -> bool:
    result = outcome.result
    if result.status != PASSED:
        return False
    if case.kind == "stdio":
        return outputs_match(result.stdout, case.stdout)
    return outcome.files.get(code_harness.RESULT_FILE) == nonce.encode()


def code_tests(
    tests_column: str = "tests",
    extract: str = "fenced",
    prefix_column: str | None = None,
    partial_credit: bool = True,
    case_timeout_seconds: float = 5.0,
    memory_mb: int = 1024,
    max_workers: int | None = None,
    isolation: str = "auto",
    batch_timeout_seconds: float | None = None,
) -> RewardFn:
    """Fraction of the row's test cases the completion's code passes (see the module docstring).

    ``extract``: ``"fenced"`` (last python code block; default), ``"full"`` or
    ``"fenced_or_full"``. ``prefix_column``: a column whose text is put before the extracted
    code (completion-style prompts, e.g. HumanEval's function signature).
    ``case_timeout_seconds`` (wall clock and CPU, 5) and ``memory_mb`` (1024) limit each case's
    run; ``max_workers`` runs at once (default: CPU count); ``isolation``: ``"auto"`` (strongest
    available), ``"bwrap"``, ``"unshare"`` or ``"unsafe_subprocess"``; ``batch_timeout_seconds``:
    the call returns by then, cases unfinished fail (the reward's own ``timeout_seconds`` instead
    fails the whole batch).
    """
    if extract not in EXTRACT_MODES:
        raise ValueError(f"code_tests: extract must be one of {EXTRACT_MODES}, got {extract!r}")
    limits = SandboxLimits(wall_seconds=case_timeout_seconds, cpu_seconds=max(1, math.ceil(case_timeout_seconds)),
                           memory_bytes=int(memory_mb) << 20)
    try:
        sandbox = Sandbox(isolation, limits=limits)
    except IsolationUnavailable as error:  # a setup problem: reported like a bad option
        raise ValueError(str(error)) from error
    pool = SandboxPool(sandbox, max_workers=max_workers)

    def code_tests_reward(completions: list[str], **columns: Any) -> list[float | None]:
        if tests_column not in columns:
            available = sorted(k for k in columns if k not in ("prompts", "group_ids", "completion_lengths"))
            raise KeyError(f"code_tests needs data-set column '{tests_column}'; columns available: {available}")
        prefixes = columns.get(prefix_column) if prefix_column else None
        if prefix_column and prefixes is None:
            raise KeyError(f"code_tests: prefix_column '{prefix_column}' is not a data-set column")
        # One program per distinct (code, case): GRPO groups often repeat a completion.
        jobs: dict[tuple[str, TestCase], int] = {}
        rows: list[tuple[list[TestCase] | None, str | None]] = []
        for i, (completion, tests) in enumerate(zip(completions, columns[tests_column])):
            try:
                cases = parse_tests(tests)
            except ValueError as error:
                raise ValueError(f"code_tests: row {i}, column '{tests_column}': {error}") from error
            code = extract_code(completion, extract)
            if code is not None and prefixes is not None:
                code = f"{prefixes[i] or ''}{code}"
            rows.append((cases, code))
            if cases and code is not None and code.strip():
                for case in cases:
                    jobs.setdefault((code, case), len(jobs))
        keys = list(jobs)
        prepared = [case_program(code, case) for code, case in keys]
        outcomes = pool.execute_many([p for p, _ in prepared], deadline_seconds=batch_timeout_seconds)
        passed = [_case_passed(case, nonce, outcome)
                  for (_, case), (_, nonce), outcome in zip(keys, prepared, outcomes)]
        scores: list[float | None] = []
        for cases, code in rows:
            if not cases:
                scores.append(None)
            elif code is None or not code.strip():
                scores.append(0.0)
            else:
                hits = sum(passed[jobs[(code, case)]] for case in cases)
                scores.append(hits / len(cases) if partial_credit else float(hits == len(cases)))
        return scores

    return code_tests_reward
