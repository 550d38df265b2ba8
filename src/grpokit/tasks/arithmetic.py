"""Integer arithmetic prompts ("37+58=" → "95"), for the demo, tests and CPU experiments.

Every problem over the operand range is enumerated, shuffled with a seed and split, so the
held-out problems are never seen in warm-up or RL training.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
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


def _operand_range(digits: int) -> range:
    return range(10) if digits == 1 else range(10 ** (digits - 1), 10**digits)


def mixed_difficulty_split(
    operations: str = "+*",
    digits: tuple[int, ...] = (1, 2, 3),
    *,
    train_per_bucket: int | Mapping[str, int] = 100,
    heldout_per_bucket: int | Mapping[str, int] = 50,
    seed: int = 0,
) -> ArithmeticSplit:
    """Problems of mixed difficulty: one bucket per (operation, operand digits), e.g. "*2" = 2-digit
    products, both operands with that many digits (1 digit: 0–9).

    Each bucket gives `train_per_bucket` + `heldout_per_bucket` distinct problems (a number, or a
    number per bucket name; a bucket missing from a mapping gives none), disjoint between the splits.
    A bucket smaller than asked for (1-digit ones hold 100 problems) is split in the same proportion.
    Records carry their bucket: {"prompt": "37*58=", "answer": "2146", "bucket": "*2"}.
    """
    unknown = set(operations) - set(_OPERATIONS)
    if unknown:
        raise ValueError(f"unknown operation(s) {sorted(unknown)}; choose from {sorted(_OPERATIONS)}")
    rng = random.Random(seed)
    train, heldout = [], []
    for op in operations:
        for d in digits:
            bucket = f"{op}{d}"
            n_train = (
                train_per_bucket.get(bucket, 0) if isinstance(train_per_bucket, Mapping) else train_per_bucket
            )
            n_heldout = (
                heldout_per_bucket.get(bucket, 0)
                if isinstance(heldout_per_bucket, Mapping)
                else heldout_per_bucket
            )
            operands = _operand_range(d)
            wanted = min(n_train + n_heldout, len(operands) ** 2)
            if wanted == 0:
                continue
            pairs: set[tuple[int, int]] = set()
            while len(pairs) < wanted:
                pairs.add((rng.choice(operands), rng.choice(operands)))
            records = [
                {"prompt": f"{a}{op}{b}=", "answer": str(_OPERATIONS[op](a, b)), "bucket": bucket}
                for a, b in sorted(pairs)
            ]
            rng.shuffle(records)
            cut = round(wanted * n_heldout / (n_train + n_heldout))
            heldout += records[:cut]
            train += records[cut:]
    rng.shuffle(train)
    rng.shuffle(heldout)
    return ArithmeticSplit(train=train, heldout=heldout)
