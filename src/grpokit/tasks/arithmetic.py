"""Integer arithmetic prompts ("37+58=" → "95"), for the demo, tests and CPU experiments.

Every problem over the operand range is enumerated, shuffled with a seed and split, so the
held-out problems are never seen in warm-up or RL training.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

ALPHABET = "0123456789+-*="
_OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@dataclass(frozen=True)
class ArithmeticSplit:
    train: list[dict]  # {"prompt": "37+58=", "answer": "95"}
    heldout: list[dict]


def arithmetic_problems(operations: str = "+", max_operand: int = 99) -> list[dict]:
    """All problems `a op b =` with 0 ≤ a, b ≤ max_operand, as records with the exact answer."""
    unknown = set(operations) - set(_OPERATIONS)
    if unknown:
        raise ValueError(f"unknown operation(s) {sorted(unknown)}; choose from {sorted(_OPERATIONS)}")
    return [
        {"prompt": f"{a}{op}{b}=", "answer": str(_OPERATIONS[op](a, b))}
        for op in operations
        for a in range(max_operand + 1)
        for b in range(max_operand + 1)
    ]


def arithmetic_split(operations: str = "+", max_operand: int = 99, *, heldout: int = 200,
                     seed: int = 0) -> ArithmeticSplit:
    problems = arithmetic_problems(operations, max_operand)
    if heldout >= len(problems):
        raise ValueError(f"heldout={heldout} leaves no training problems out of {len(problems)}")
    random.Random(seed).shuffle(problems)
    return ArithmeticSplit(train=problems[heldout:], heldout=problems[:heldout])
