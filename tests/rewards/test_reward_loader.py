from __future__ import annotations

import sys
import textwrap

import pytest

from grpokit.rewards import BUILTIN_REWARDS, Reward, RewardSpec, load_reward, load_rewards


def call(reward, completions, **columns):
    n = len(completions)
    return reward(prompts=["q"] * n, completions=completions, group_ids=[0] * n, **columns)


def test_builtin_by_name_with_options_weight_and_timeout():
    reward = load_reward("format_regex", pattern=r"\d+", reward=3.0, weight=0.5, timeout_seconds=2)
    assert (reward.name, reward.weight, reward.timeout_seconds) == ("format_regex", 0.5, 2)
    assert call(reward, ["12", "1a"]) == [3.0, 0.0]


def test_every_builtin_name_is_registered():
    expected = {
        "exact_match", "math_verify", "format_regex", "xml_format_strict", "xml_format_soft", "xml_count",
        "integer_answer", "correctness_xml", "length", "soft_overlong", "reward_model", "code_tests",
        "reasoning_gym", "environment",
    }  # fmt: skip
    assert set(BUILTIN_REWARDS) == expected


def test_unknown_name_lists_the_builtins():
    with pytest.raises(ValueError, match="unknown reward 'exact'") as caught:
        load_reward("exact")
    assert "exact_match" in str(caught.value) and "math_verify" in str(caught.value)


def test_unknown_and_missing_options_list_the_allowed_ones():
    with pytest.raises(ValueError, match=r"no option\(s\) \['column'\].*answer_column"):
        load_reward("exact_match", column="gold")
    with pytest.raises(ValueError, match=r"needs option\(s\) \['pattern'\]"):
        load_reward("format_regex")


def test_module_function_with_bound_kwargs(tmp_path, monkeypatch):
    (tmp_path / "my_rewards_pkg.py").write_text(
        textwrap.dedent(
            """
            def contains(completions, word="yes", **kwargs):
                return [1.0 if word in c else 0.0 for c in completions]
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reward = load_reward("my_rewards_pkg:contains", word="ok")
    assert reward.name == "contains"
    assert call(reward, ["ok then", "yes"]) == [1.0, 0.0]


def test_file_path_function_receives_only_what_it_declares(tmp_path):
    path = tmp_path / "reward_file.py"
    path.write_text(
        "def matches(completions, answer):\n    return [float(c == a) for c, a in zip(completions, answer)]\n"
    )
    reward = load_reward(f"{path}:matches")
    assert call(reward, ["4", "5"], answer=["4", "4"], unrelated=[1, 2]) == [1.0, 0.0]


def test_bad_module_file_and_attribute_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot import module"):
        load_reward("no_such_module_xyz:f")
    with pytest.raises(ValueError, match="reward file not found"):
        load_reward(f"{tmp_path}/absent.py:f")
    (tmp_path / "r.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="no attribute 'f'"):
        load_reward(f"{tmp_path}/r.py:f")


def test_spec_fields_and_overrides():
    spec = RewardSpec("xml_count", name="tags", weight=0.25, timeout_seconds=1.0)
    reward = load_reward(spec)
    assert (reward.name, reward.weight, reward.timeout_seconds) == ("tags", 0.25, 1.0)
    assert load_reward(spec, weight=2.0).weight == 2.0


def test_math_verify_prefers_the_main_thread():
    assert load_reward("math_verify").main_thread is True
    assert isinstance(load_reward(lambda completions, **_: [0.0] * len(completions), name="zero"), Reward)


def test_duplicate_names_are_refused():
    with pytest.raises(ValueError, match="unique"):
        load_rewards(["xml_count", RewardSpec("xml_count", weight=2.0)])
    assert [r.name for r in load_rewards(["xml_count", RewardSpec("xml_count", name="xml_count_2")])] == [
        "xml_count",
        "xml_count_2",
    ]


def test_loading_errors_are_reward_load_errors_for_the_cli(tmp_path):
    from grpokit.errors import GrpokitError
    from grpokit.rewards import RewardLoadError

    with pytest.raises(RewardLoadError) as caught:
        load_reward("exact_mach")
    assert isinstance(caught.value, GrpokitError) and caught.value.kind == "reward"


def test_a_reward_file_failing_at_import_names_the_file_line_and_exception(tmp_path):
    from grpokit.rewards import RewardLoadError

    path = tmp_path / "broken.py"
    path.write_text("import os\n\n\ndef helper():\n    return 1 / 0\n\n\nVALUE = helper()\n")
    with pytest.raises(RewardLoadError) as caught:
        load_reward(f"{path}:f")
    message = str(caught.value)
    assert str(path) in message and "line 5" in message and "ZeroDivisionError: division by zero" in message
    assert not [name for name in sys.modules if name.startswith("grpokit_user_reward_") and
                getattr(sys.modules[name], "__file__", None) == str(path)]  # no half-imported module left
