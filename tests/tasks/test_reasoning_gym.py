from __future__ import annotations

import pytest

pytest.importorskip("reasoning_gym")

from grpokit.config_schema import ConfigError  # noqa: E402
from grpokit.rewards import load_reward  # noqa: E402
from grpokit.tasks.reasoning_gym import ENTRY_COLUMN, TaskSpec, generate_rows, train_and_heldout  # noqa: E402

PRODUCTS = TaskSpec("basic_arithmetic", config={"min_terms": 2, "max_terms": 2, "min_digits": 3, "max_digits": 3,
                                                "operators": ["*"], "allow_negation": False,
                                                "allow_parentheses": False})


def test_rows_carry_the_question_answer_and_the_entry_the_verifier_needs():
    rows = generate_rows([PRODUCTS], size=5, seed=0)
    assert len(rows) == 5
    for row in rows:
        left, right = row[ENTRY_COLUMN]["metadata"]["expression"].split(" * ")
        assert row["answer"] == str(int(left) * int(right))
        assert row["prompt"].startswith("Calculate ") and row["prompt"].endswith("<answer></answer> tags.")
        assert row["task"] == "basic_arithmetic"
    assert generate_rows([PRODUCTS], size=5, seed=0) == rows  # the seed fixes the rows


def test_heldout_never_repeats_a_training_question():
    tiny = TaskSpec("basic_arithmetic", config={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1,
                                                "operators": ["+"], "allow_negation": False,
                                                "allow_parentheses": False})
    train, heldout = train_and_heldout([tiny], size=60, eval_size=20, seed=0)  # ≤ 100 distinct one-digit sums
    seen = {row["prompt"] for row in train}
    assert heldout and not any(row["prompt"] in seen for row in heldout)


def test_weighted_tasks_mix_generators():
    rows = generate_rows([PRODUCTS, TaskSpec("countdown", weight=1.0)], size=40, seed=0)
    assert {row["task"] for row in rows} == {"basic_arithmetic", "countdown"}


def test_builtin_reward_uses_the_tasks_own_verifier_on_the_last_answer_tag():
    rows = generate_rows([PRODUCTS], size=2, seed=0)
    reward = load_reward("reasoning_gym")
    right, wrong = rows[0]["answer"], str(int(rows[0]["answer"]) + 1)
    completions = [f"<answer>{wrong}</answer> no, <answer>{right}</answer>", f"<answer>{right}</answer>",
                   right, f"<answer> {rows[1]['answer']} </answer>"]
    entries = [rows[0][ENTRY_COLUMN]] * 3 + [rows[1][ENTRY_COLUMN]]
    assert reward(completions=completions, reasoning_gym_entry=entries) == [1.0, 1.0, 0.0, 1.0]
    assert reward(completions=["<answer>1</answer>"], reasoning_gym_entry=[None]) == [None]


def test_config_names_a_task_or_a_list_and_unknown_tasks_fail_clearly(tmp_path):
    from grpokit.trainers.lm_build import build_reasoning_gym_data
    from grpokit.trainers.lm_config import load_lm_config

    def config(reasoning_gym):
        return load_lm_config({"model": {"name_or_path": "x"}, "data": {"reasoning_gym": reasoning_gym},
                               "rewards": [{"function": "reasoning_gym"}]})

    train, heldout = build_reasoning_gym_data(config({"task": "countdown", "size": 8, "eval_size": 3}))
    assert len(train) == 8 and len(heldout) == 3 and "reasoning_gym_entry" in train.extra_columns
    with pytest.raises(ConfigError, match="either task"):
        config({"task": "countdown", "tasks": [{"task": "countdown"}]})
    with pytest.raises(ConfigError, match="cannot build no_such_task"):
        build_reasoning_gym_data(config({"task": "no_such_task"}))
