"""The code reward: extraction, test formats, partial credit, and a pass decided by the harness."""

from __future__ import annotations

import pytest

from grpokit.rewards import load_reward
from grpokit.rewards.code import TestCase, extract_code, outputs_match, parse_tests
from grpokit.sandbox.isolation import isolation_works

pytestmark = pytest.mark.skipif(not (isolation_works("bwrap") or isolation_works("unshare")),
                                reason="no namespaced isolation on this machine")

ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"]


def fenced(code: str) -> str:
    return f"Here you go:\n```python\n{code}\n```\n"


@pytest.fixture(scope="module")
def reward():
    return load_reward("code_tests", case_timeout_seconds=3)


def score(reward, completions, tests):
    return reward(completions=completions, tests=[tests] * len(completions), prompts=[""] * len(completions))


def test_extract_code_takes_the_last_python_block():
    text = "```python\nx = 1\n```\ntext\n```py\ny = 2\n```\n```bash\nls\n```"
    assert extract_code(text) == "y = 2\n"
    assert extract_code("no code") is None
    assert extract_code("```python\nunterminated") is None
    assert extract_code("x = 1", "fenced_or_full") == "x = 1"


def test_parse_tests_formats():
    assert parse_tests(["assert f()"]) == [TestCase("assert", code="assert f()")]
    assert parse_tests('[{"stdin": "1", "stdout": "2"}]') == [TestCase("stdio", stdin="1", stdout="2")]
    assert parse_tests({"inputs": ["a"], "outputs": ["b"]}) == [TestCase("stdio", stdin="a", stdout="b")]
    assert parse_tests(None) is None and parse_tests([]) is None
    with pytest.raises(ValueError, match="case 0 must be"):
        parse_tests([{"expected": 1}])


def test_outputs_match_ignores_trailing_whitespace_only():
    assert outputs_match("1 2  \n3\n\n", "1 2\n3")
    assert not outputs_match("1  2\n", "1 2\n")


def test_partial_credit_per_passing_assert(reward):
    right = fenced("def add(a, b):\n    return a + b")
    off = fenced("def add(a, b):\n    return a + b if a > 0 else 1")  # passes 1 and 3
    assert score(reward, [right, off, "no code at all"], ADD_TESTS) == [1.0, pytest.approx(2 / 3), 0.0]


def test_all_or_nothing_and_rows_without_tests():
    strict = load_reward("code_tests", case_timeout_seconds=3, partial_credit=False)
    off = fenced("def add(a, b):\n    return a + b if a > 0 else 1")
    assert strict(completions=[off, off], tests=[ADD_TESTS, None]) == [0.0, None]


def test_stdin_stdout_cases(reward):
    program = fenced("a, b = map(int, input().split())\nprint(a + b)")
    tests = [{"stdin": "1 2\n", "stdout": "3\n"}, {"stdin": "5 5\n", "stdout": "10"}, {"stdin": "0 0", "stdout": "1"}]
    assert score(reward, [program], tests) == [pytest.approx(2 / 3)]


# Reach into the driver's frames or memory for the function that reports the nonce.
INTROSPECTION = {
    "getframe": "import sys\nsys._getframe(1).f_locals['report']()",
    "inspect": "import inspect\ninspect.currentframe().f_back.f_locals['report']()",
    "traceback_frame": ("try:\n    1 / 0\nexcept ZeroDivisionError as e:\n"
                        "    e.__traceback__.tb_frame.f_back.f_locals['report']()"),
    "gc_scan": ("import gc\nfor o in gc.get_objects():\n"
                "    if callable(o) and getattr(o, '__name__', '') == 'report':\n        o()"),
}
CHEATS = {
    "sys_exit": "import sys\nsys.exit(0)",
    "os_exit": "import os\nos._exit(0)",
    "fake_passed": "print('PASSED')\nprint('3 passed')\ndef add(a, b):\n    return None",
    "patch_assert": "import builtins\nbuiltins.AssertionError = KeyboardInterrupt\ndef add(a, b):\n    return None",
    "patch_builtins": "import builtins\nbuiltins.len = lambda x: 0\ndef add(a, b):\n    return None",
    "edit_tests": "open('/harness/test.py', 'w').write('pass')\ndef add(a, b):\n    return None",
    "read_nonce_file": "import os\nprint(open('.grpokit_nonce').read())\nos._exit(0)",
    "atexit": "import atexit, os\natexit.register(lambda: os._exit(0))\nraise SystemExit(0)",
    **INTROSPECTION,
}


@pytest.mark.parametrize("attack", sorted(CHEATS))
def test_cheats_do_not_pass(reward, attack):
    assert score(reward, [fenced(CHEATS[attack])], ADD_TESTS) == [0.0]


def test_introspection_cheats_would_pass_without_the_audit_hook(monkeypatch):
    """The introspection cheats above are real: with the driver's audit hook removed, each forges
    a full pass — so their 0.0 is the hook's doing."""
    from grpokit.rewards import code_harness

    unguarded = code_harness.RUN_CASE.replace("sys.addaudithook(_make_guard())", "pass")
    assert unguarded != code_harness.RUN_CASE
    monkeypatch.setattr(code_harness, "RUN_CASE", unguarded)
    reward = load_reward("code_tests", case_timeout_seconds=3)
    assert score(reward, [fenced(c) for c in INTROSPECTION.values()], ADD_TESTS) == [1.0] * len(INTROSPECTION)


def test_stdlib_that_uses_frames_still_works_in_a_solution(reward):
    solution = ("from collections import namedtuple\nfrom dataclasses import dataclass\nimport enum, typing, warnings\n"
                "P = namedtuple('P', 'x y')\nT = typing.TypeVar('T')\nclass C(enum.Enum):\n    A = 1\n"
                "@dataclass\nclass D:\n    x: int\nwarnings.warn('fine')\n"
                "def add(a, b):\n    return P(a, b).x + D(b).x")
    assert score(reward, [fenced(solution)], ADD_TESTS) == [1.0]


def test_prefix_column_for_completion_style_prompts():
    reward = load_reward("code_tests", case_timeout_seconds=3, extract="full", prefix_column="code_prompt")
    scores = reward(completions=["    return a + b\n"], tests=[ADD_TESTS], code_prompt=["def add(a, b):\n"])
    assert scores == [1.0]


def test_missing_tests_column_names_what_is_there(reward):
    with pytest.raises(KeyError, match="needs data-set column 'tests'.*answer"):
        reward(completions=["x"], answer=["1"])


def test_a_config_trains_with_the_code_reward(tmp_path):
    """`function: code_tests` from YAML through `grpokit train`. The prefix column turns each
    one-character completion of the tiny model into a comment (or a comment and an empty line),
    a program that prints nothing: every case passes, so the logged mean is exactly 1 only if
    each ran and was judged."""
    import json

    import yaml

    from grpokit.cli import main
    from grpokit.models import build_char_tokenizer, build_tiny_causal_lm

    model_dir = tmp_path / "model"
    tokenizer = build_char_tokenizer()
    build_tiny_causal_lm(len(tokenizer), hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                         intermediate_size=64, seed=0).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = tmp_path / "train.jsonl"
    rows = [{"prompt": f"{a}+{a}=", "tests": [{"stdin": "", "stdout": ""}], "comment": "# "} for a in range(4)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"path": str(data), "required_columns": ["tests"]},
        "rewards": [{"function": "code_tests", "kwargs": {"extract": "full", "prefix_column": "comment",
                                                             "case_timeout_seconds": 3}}],
        "rollout": {"prompts_per_step": 2, "num_generations": 2, "max_new_tokens": 1},
        "training": {"max_steps": 1, "micro_batch_size": 4},
        "logging": {"run_dir": str(tmp_path / "run"), "progress": False, "tensorboard": False, "plot": False},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(tmp_path / "config.yaml")]) == 0
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["rewards/code_tests/mean"] for row in metrics if "rewards/code_tests/mean" in row] == [1.0]
