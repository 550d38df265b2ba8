from __future__ import annotations

import threading

import pytest

pytest.importorskip("math_verify")

from grpokit.rewards.math_answers import math_verify  # noqa: E402


def call(fn, completions, answers):
    n = len(completions)
    return fn(prompts=["q"] * n, completions=completions, group_ids=list(range(n)), answer=answers)


def test_equivalent_answers_score_and_wrong_ones_do_not():
    completions = [
        "Half of it:\n$\\boxed{\\frac{1}{2}}$",  # multi-line, LaTeX fraction vs decimal gold
        "So the total is 72",
        "I think 71",
        "no number here",
    ]
    assert call(math_verify(), completions, ["0.5", "72", "72", "72"]) == [1.0, 1.0, 0.0, 0.0]


def test_missing_or_unparseable_gold_gives_none():
    assert call(math_verify(reward=2.0), ["72", "72", "72"], ["72", None, "not math at all"]) == [
        2.0,
        None,
        None,
    ]


def test_an_exception_while_checking_one_sample_scores_it_zero(monkeypatch):
    import math_verify as package

    real_parse = package.parse

    def exploding_parse(text, **kwargs):
        if "BOOM" in text:
            raise RuntimeError("parser crashed")
        return real_parse(text, **kwargs)

    monkeypatch.setattr(package, "parse", exploding_parse)
    assert call(math_verify(), ["BOOM 72", "72"], ["72", "72"]) == [0.0, 1.0]


def test_works_outside_the_main_thread():
    # math-verify's own signal-based timeouts raise in a worker thread; the reward switches them off.
    results = []
    thread = threading.Thread(target=lambda: results.append(call(math_verify(), ["$3$", "4"], ["3", "3"])))
    thread.start()
    thread.join(timeout=30)
    assert results == [[1.0, 0.0]]
