from __future__ import annotations

import re

import pytest

from grpokit.rewards.builtins import (
    correctness_xml,
    exact_match,
    extract_xml_answer,
    format_regex,
    integer_answer,
    length,
    normalize_answer,
    soft_overlong,
    soft_overlong_penalty,
    xml_count,
    xml_format_soft,
    xml_format_strict,
)

# A completion in the exact template, with reasoning over several lines.
GOOD = "<reasoning>\nI add 2 and 2.\nThat makes 4.\n</reasoning>\n<answer>\n4\n</answer>\n"


def call(fn, completions, **columns):
    n = len(completions)
    return fn(prompts=["q"] * n, completions=completions, group_ids=[0] * n, **columns)


# ----------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("raw", "normal"),
    [("1,000.50", "1000.5"), ("$5$", "5"), ("  The   Answer. ", "the answer"), ("0.0", "0"), ("-3", "-3")],
)
def test_normalize_answer(raw, normal):
    assert normalize_answer(raw) == normal


def test_extract_xml_answer_takes_the_last_tag_and_none_without_a_tag():
    assert extract_xml_answer("<answer>1</answer> then <answer> 2 </answer>") == "2"
    assert extract_xml_answer("<answer> 7 \n") == "7"  # no closing tag: up to the end
    assert extract_xml_answer("just 7") is None


# ----------------------------------------------------------------------------- format


def test_strict_format_matches_multiline_reasoning():
    assert call(xml_format_strict(), [GOOD, GOOD.rstrip("\n")]) == [0.5, 0.5]


def test_the_re_match_without_dotall_pitfall_is_avoided():
    # The recipe's pattern applied the naive way never matches multi-line reasoning ...
    naive = r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$"
    assert re.match(naive, GOOD) is None
    # ... while the built-in (full match with DOTALL) does.
    assert call(xml_format_strict(), [GOOD]) == [0.5]


@pytest.mark.parametrize(
    "completion",
    [
        "<reasoning>no newline</reasoning>\n<answer>\n4\n</answer>",
        GOOD + "trailing chatter",
        "<answer>\n4\n</answer>",
    ],
)
def test_strict_format_rejects_deviations(completion):
    assert call(xml_format_strict(), [completion]) == [0.0]


def test_soft_format_needs_the_tags_in_order_anywhere():
    completions = [
        "Sure! <reasoning>a\nb</reasoning> <answer>4</answer> done",
        "<answer>4</answer><reasoning>late</reasoning>",
        "<reasoning>x</reasoning>",
    ]
    assert call(xml_format_soft(), completions) == [0.5, 0.0, 0.0]


def test_format_regex_full_and_search_modes_span_lines():
    completion = "<answer>\n4\n</answer>"
    assert call(format_regex(r"<answer>.*</answer>"), [completion, completion + "!"]) == [1.0, 0.0]
    assert call(format_regex(r"<answer>.*</answer>", reward=2.0, match="search"), [completion + "!"]) == [2.0]


def test_xml_count_credits_each_tag_and_penalizes_trailing_text():
    completions = [
        GOOD,  # four tags, the final newline is free
        GOOD + "abc",  # 3 characters after the free newline: -0.003
        "<reasoning>\nonly reasoning\n</reasoning>\n",  # two tags
        "<reasoning>\n<reasoning>\n",  # a tag twice earns nothing
    ]
    assert call(xml_count(), completions) == pytest.approx([0.5, 0.497, 0.25, 0.0])


# ----------------------------------------------------------------------------- answers


def test_integer_answer():
    completions = ["<answer>\n-12\n</answer>", "<answer>12.5</answer>", "12", GOOD]
    assert call(integer_answer(), completions) == [0.5, 0.0, 0.0, 0.5]


def test_correctness_xml_compares_the_extracted_answer():
    completions = [GOOD, "<answer>1,000</answer>", "<answer>5</answer>", "4", GOOD]
    answers = ["4", "1000", "4", "4", None]
    assert call(correctness_xml(), completions, answer=answers) == [2.0, 2.0, 0.0, 0.0, None]


def test_exact_match_modes_and_answer_column():
    assert call(exact_match(), [" Paris. ", "Lyon"], answer=["paris", "paris"]) == [1.0, 0.0]
    fn = exact_match(answer_column="gold", extract="last_number")
    assert call(fn, ["3 boxes of 14 is 42 apples", "no idea"], gold=["42", "42"]) == [1.0, 0.0]


def test_exact_match_names_a_missing_column():
    with pytest.raises(KeyError, match="'gold'"):
        call(exact_match(answer_column="gold"), ["x"], answer=["x"])


# ----------------------------------------------------------------------------- length


def test_length_reward_in_chars_and_tokens():
    assert call(length(target_length=10), ["a" * 10, "a" * 5, "a" * 25]) == [1.0, 0.5, 0.0]
    assert call(length(target_length=10, unit="tokens"), ["x", "y"], completion_lengths=[10, 15]) == [
        1.0,
        0.5,
    ]
    with pytest.raises(ValueError, match="completion_lengths"):
        call(length(target_length=10, unit="tokens"), ["x"])


@pytest.mark.parametrize(("tokens", "penalty"), [(16384, 0.0), (18432, -0.5), (20480, -1.0), (20481, -1.0)])
def test_soft_overlong_penalty_paper_cases(tokens, penalty):
    assert soft_overlong_penalty(tokens, max_len=20480, cache_len=4096) == penalty


def test_soft_overlong_reward_reads_completion_lengths():
    fn = soft_overlong(max_len=10, cache_len=4)
    assert call(fn, ["a"] * 4, completion_lengths=[6, 7, 10, 11]) == [0.0, -0.25, -1.0, -1.0]
    with pytest.raises(ValueError, match="completion_lengths"):
        call(fn, ["a"])
