"""Mathematical answer checking with the ``math-verify`` package (symbolic equivalence:
``\\frac{1}{2}`` equals ``0.5``, ``\\boxed{72}`` equals ``72``).

math-verify guards parsing and comparison with ``signal.alarm`` timeouts, which only work in the
main thread. This reward therefore asks the runner to call it in the calling thread
(``main_thread=True`` in the loader); when it does find itself in another thread it switches the
signal guards off, and the runner's own ``timeout_seconds`` (if set) bounds the whole batch.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from grpokit.rewards.api import RewardFn

logger = logging.getLogger(__name__)


def math_verify(
    answer_column: str = "answer", reward: float = 1.0, sample_timeout_seconds: int = 5
) -> RewardFn:
    """``reward`` when the completion's final answer is mathematically equal to the gold answer
    in ``answer_column``, else 0.

    - Any exception or timeout while parsing or comparing one sample scores that sample 0.0.
    - A gold answer that is None or that math-verify cannot parse scores None (the data row, not
      the completion, is at fault; the row is left out of training).
    - ``sample_timeout_seconds`` bounds parse and verify per sample (main thread only).
    """
    from math_verify import parse, verify  # the sympy import is slow; pay it only when used

    def math_verify_reward(completions: list[str], **columns: Any) -> list[float | None]:
        if answer_column not in columns:
            raise KeyError(f"math_verify needs data-set column '{answer_column}'")
        in_main_thread = threading.current_thread() is threading.main_thread()
        guard = sample_timeout_seconds if in_main_thread else None
        gold_cache: dict[str, list[Any]] = {}
        scores: list[float | None] = []
        for completion, gold_text in zip(completions, columns[answer_column]):
            if gold_text is None:
                scores.append(None)
                continue
            gold_text = str(gold_text)
            if gold_text not in gold_cache:
                gold_cache[gold_text] = _safe_parse(parse, gold_text, guard)
            gold = gold_cache[gold_text]
            if not gold:
                scores.append(None)
                continue
            try:
                answer = parse(completion, parsing_timeout=guard)
                correct = bool(answer) and verify(gold, answer, timeout_seconds=guard)
            except Exception as error:  # includes math-verify's TimeoutException
                logger.debug("math_verify: scoring 0.0 after %s on %r", type(error).__name__, completion[:80])
                correct = False
            scores.append(reward if correct else 0.0)
        return scores

    return math_verify_reward


def _safe_parse(parse: Any, text: str, guard: int | None) -> list[Any]:
    try:
        return parse(text, parsing_timeout=guard)
    except Exception as error:
        logger.debug("math_verify: cannot parse gold answer %r (%s)", text[:80], error)
        return []
