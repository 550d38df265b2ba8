"""Built-in text rewards (answer checks, format checks, length shaping).

Every public function here is a *factory*: call it with its options, get a reward function that
follows the contract in :mod:`grpokit.rewards.api`. The format rewards follow the Unsloth GSM8K
recipe (spec §10) for completions shaped as::

    <reasoning>
    ...
    </reasoning>
    <answer>
    ...
    </answer>

All regular expressions run with ``re.DOTALL``: without it ``.`` stops at a newline, so a format
check on multi-line reasoning silently never matches and the reward is always 0.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from grpokit.rewards.api import RewardFn

STRICT_XML_PATTERN = r"<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n?"
SOFT_XML_PATTERN = r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>"
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


# ----------------------------------------------------------------------------- helpers


def normalize_answer(text: str) -> str:
    """Canonical form for answer comparison: strip, lower-case, collapse runs of whitespace,
    drop one trailing period and surrounding ``$``; a number loses thousands separators and
    trailing zeros (``"1,000.50"`` -> ``"1000.5"``)."""
    text = " ".join(str(text).strip().lower().split())
    text = text.removesuffix(".").strip("$").strip()
    if _NUMBER.fullmatch(text):
        try:
            number = Decimal(text.replace(",", ""))
        except InvalidOperation:
            return text
        return format(number.normalize(), "f") if number != 0 else "0"
    return text


def extract_xml_answer(text: str) -> str | None:
    """Content of the last ``<answer>`` tag (up to ``</answer>`` or the end), stripped; None when
    there is no ``<answer>`` tag at all."""
    if "<answer>" not in text:
        return None
    return text.rsplit("<answer>", 1)[1].split("</answer>", 1)[0].strip()


def extract_last_number(text: str) -> str | None:
    """The last number written in ``text`` (``"-1,200.5"`` style), or None."""
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


_EXTRACTORS = {
    "full": lambda text: text,
    "xml_answer": extract_xml_answer,
    "last_number": extract_last_number,
}


def _column(columns: dict[str, Any], name: str, reward: str) -> list[Any]:
    if name not in columns:
        available = sorted(k for k in columns if k not in ("prompts", "group_ids", "completion_lengths"))
        raise KeyError(f"{reward} needs data-set column '{name}'; columns available: {available}")
    return columns[name]


def soft_overlong_penalty(length: int, max_len: int, cache_len: int) -> float:
    """DAPO soft overlong punishment (2503.14476, spec §8), for a completion of ``length`` tokens:

    R = 0                                   if length <= max_len - cache_len
    R = ((max_len - cache_len) - length) / cache_len   if max_len - cache_len < length <= max_len
    R = -1                                  if length > max_len
    """
    threshold = max_len - cache_len
    if length <= threshold:
        return 0.0
    if length <= max_len:
        return (threshold - length) / cache_len
    return -1.0


# ----------------------------------------------------------------------------- answer rewards


def exact_match(answer_column: str = "answer", extract: str = "full", reward: float = 1.0) -> RewardFn:
    """``reward`` when the normalized extracted completion equals the normalized gold answer,
    else 0; None where the gold answer is None. ``extract``: ``"full"`` (whole completion),
    ``"xml_answer"`` (the ``<answer>`` tag) or ``"last_number"``."""
    if extract not in _EXTRACTORS:
        raise ValueError(f"exact_match: extract must be one of {sorted(_EXTRACTORS)}, got {extract!r}")
    extractor = _EXTRACTORS[extract]

    def exact_match_reward(completions: list[str], **columns: Any) -> list[float | None]:
        scores: list[float | None] = []
        for completion, gold in zip(completions, _column(columns, answer_column, "exact_match")):
            if gold is None:
                scores.append(None)
                continue
            guess = extractor(completion)
            hit = guess is not None and normalize_answer(guess) == normalize_answer(gold)
            scores.append(reward if hit else 0.0)
        return scores

    return exact_match_reward


def correctness_xml(answer_column: str = "answer", reward: float = 2.0) -> RewardFn:
    """Unsloth's correctness reward: ``reward`` (2.0) when the ``<answer>`` content equals the gold
    answer after :func:`normalize_answer`; a completion with no ``<answer>`` tag scores 0."""
    return exact_match(answer_column=answer_column, extract="xml_answer", reward=reward)


def integer_answer(reward: float = 0.5) -> RewardFn:
    """``reward`` (0.5) when the ``<answer>`` content is an integer (optional minus sign)."""

    def integer_answer_reward(completions: list[str], **_: Any) -> list[float]:
        answers = (extract_xml_answer(c) for c in completions)
        return [reward if a is not None and re.fullmatch(r"-?\d+", a) else 0.0 for a in answers]

    return integer_answer_reward


# ----------------------------------------------------------------------------- format rewards


def format_regex(pattern: str, reward: float = 1.0, match: str = "full") -> RewardFn:
    """``reward`` when ``pattern`` matches, else 0. ``match="full"``: the whole completion must
    match (``re.fullmatch``); ``"search"``: anywhere. Always with ``re.DOTALL``."""
    searchers = {"full": "fullmatch", "search": "search"}
    if match not in searchers:
        raise ValueError(f"format_regex: match must be 'full' or 'search', got {match!r}")
    matcher = getattr(re.compile(pattern, re.DOTALL), searchers[match])

    def format_regex_reward(completions: list[str], **_: Any) -> list[float]:
        return [reward if matcher(c) else 0.0 for c in completions]

    return format_regex_reward


def xml_format_strict(reward: float = 0.5) -> RewardFn:
    """``reward`` (0.5) when the whole completion is the template, newlines in place (one final
    newline optional)."""
    return format_regex(STRICT_XML_PATTERN, reward=reward, match="full")


def xml_format_soft(reward: float = 0.5) -> RewardFn:
    """``reward`` (0.5) when ``<reasoning>…</reasoning>`` then ``<answer>…</answer>`` appear in
    that order anywhere in the completion."""
    return format_regex(SOFT_XML_PATTERN, reward=reward, match="search")


def xml_count_score(text: str) -> float:
    """+0.125 for each of ``<reasoning>\\n``, ``\\n</reasoning>\\n``, ``\\n<answer>\\n``,
    ``\\n</answer>`` present exactly once; −0.001 per character after the last ``</answer>``
    (one final newline is free, as the template ends with one)."""
    tags = ("<reasoning>\n", "\n</reasoning>\n", "\n<answer>\n", "\n</answer>")
    score = sum(0.125 for tag in tags if text.count(tag) == 1)
    if "</answer>" in text:
        tail = text.rsplit("</answer>", 1)[1].removeprefix("\n")
        score -= 0.001 * len(tail)
    return score


def xml_count() -> RewardFn:
    """Partial credit for the template's tags, see :func:`xml_count_score`."""

    def xml_count_reward(completions: list[str], **_: Any) -> list[float]:
        return [xml_count_score(c) for c in completions]

    return xml_count_reward


# ----------------------------------------------------------------------------- length rewards


def length(target_length: int, unit: str = "chars") -> RewardFn:
    """R = max(0, 1 − |L − target_length| / target_length): 1 at the target, falling linearly to 0
    at 0 and at twice the target. ``unit``: ``"chars"`` (L = len(completion)) or ``"tokens"``
    (L from ``completion_lengths``, which the runner passes)."""
    if target_length <= 0:
        raise ValueError(f"length: target_length must be > 0, got {target_length}")
    if unit not in ("chars", "tokens"):
        raise ValueError(f"length: unit must be 'chars' or 'tokens', got {unit!r}")

    def length_reward(
        completions: list[str], completion_lengths: list[int] | None = None, **_: Any
    ) -> list[float]:
        if unit == "tokens":
            lengths = _require_lengths(completion_lengths, "length(unit='tokens')")
        else:
            lengths = [len(c) for c in completions]
        return [max(0.0, 1.0 - abs(n - target_length) / target_length) for n in lengths]

    return length_reward


def soft_overlong(max_len: int = 20480, cache_len: int = 4096) -> RewardFn:
    """DAPO soft overlong punishment on completion token lengths, see :func:`soft_overlong_penalty`.
    Defaults are the paper's (L_max = 20480, L_cache = 4096); set ``max_len`` to your generation
    limit."""
    if not 0 < cache_len <= max_len:
        raise ValueError(f"soft_overlong: need 0 < cache_len <= max_len, got {cache_len}, {max_len}")

    def soft_overlong_reward(completion_lengths: list[int] | None = None, **_: Any) -> list[float]:
        lengths = _require_lengths(completion_lengths, "soft_overlong")
        return [soft_overlong_penalty(int(n), max_len, cache_len) for n in lengths]

    return soft_overlong_reward


def _require_lengths(completion_lengths: list[int] | None, reward: str) -> list[int]:
    if completion_lengths is None:
        raise ValueError(f"{reward} needs completion token lengths: pass completion_lengths to the runner")
    return list(completion_lengths)
