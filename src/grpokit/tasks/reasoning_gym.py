"""reasoning-gym tasks as training and held-out data, scored by each task's own verifier.

`data: {reasoning_gym: {task: countdown, size: 2000, seed: 0, config: {...}}}` (or `tasks:` with
weights) builds the rows here instead of reading a file. Each row is

    {"prompt": question + instruction, "answer": the task's answer, "task": the generator's name,
     "reasoning_gym_entry": {"question", "answer", "metadata"}}

and the built-in reward `reasoning_gym` scores a completion with the task's own `score_answer`.

Answer extraction (what the tasks expect, as reasoning-gym's own evaluation does): the text of the
LAST `<answer>…</answer>` in the completion (reasoning_gym.utils.extract_answer), stripped; no tags →
score 0. Multi-turn episodes are scored on their last assistant message (the completion).

Held-out rows come from the same generators with seed + size (reasoning-gym draws item i from
seed + i, so seed + 1 would repeat all but one training item), minus any question also in the
training set (procedural generators can repeat small problems). Everything is generated locally: the
reasoning-gym package downloads nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

ANSWER_INSTRUCTION = "Give the final answer inside <answer></answer> tags."
ENTRY_COLUMN = "reasoning_gym_entry"


@dataclass
class TaskSpec:
    name: str
    weight: float = 1.0
    config: dict = field(default_factory=dict)


def _reasoning_gym():
    try:
        import reasoning_gym
    except ImportError as error:
        raise ImportError("data.reasoning_gym needs the reasoning-gym package: pip install reasoning-gym "
                          "(or grpokit[test])") from error
    return reasoning_gym


def generate_rows(tasks: Sequence[TaskSpec], *, size: int, seed: int,
                  instruction: str = ANSWER_INSTRUCTION) -> list[dict[str, Any]]:
    """`size` rows from one task, or from several mixed by weight (reasoning-gym's composite data set)."""
    reasoning_gym = _reasoning_gym()
    if not tasks:
        raise ValueError("data.reasoning_gym: name a task (task: NAME) or several (tasks: [...])")
    try:
        if len(tasks) == 1:
            dataset = reasoning_gym.create_dataset(tasks[0].name, size=size, seed=seed, **tasks[0].config)
        else:
            from reasoning_gym.composite import DatasetSpec

            specs = [DatasetSpec(name=t.name, weight=t.weight, config=dict(t.config)) for t in tasks]
            dataset = reasoning_gym.create_dataset("composite", size=size, seed=seed, datasets=specs)
    except (ValueError, TypeError, AssertionError, KeyError) as error:
        names = ", ".join(t.name for t in tasks)
        raise ValueError(f"data.reasoning_gym: cannot build {names}: {type(error).__name__}: {error}") from error
    rows = []
    for entry in dataset:
        metadata = dict(entry.get("metadata") or {})
        task = metadata.get("source_dataset", tasks[0].name)
        metadata["source_dataset"] = task
        question = entry["question"]
        rows.append({
            "prompt": f"{question}\n{instruction}" if instruction else question,
            "answer": str(entry["answer"]) if entry["answer"] is not None else None,
            "task": task,
            ENTRY_COLUMN: {"question": question, "answer": entry["answer"], "metadata": metadata},
        })
    return rows


def train_and_heldout(tasks: Sequence[TaskSpec], *, size: int, eval_size: int, seed: int,
                      instruction: str = ANSWER_INSTRUCTION) -> tuple[list[dict], list[dict]]:
    """Training rows (seed) and held-out rows (seed + size) whose questions are not among the training ones."""
    train = generate_rows(tasks, size=size, seed=seed, instruction=instruction)
    seen = {row[ENTRY_COLUMN]["question"] for row in train}
    heldout: list[dict] = []
    if eval_size:
        extra = generate_rows(tasks, size=2 * eval_size, seed=seed + size, instruction=instruction)
        heldout = [row for row in extra if row[ENTRY_COLUMN]["question"] not in seen][:eval_size]
    return train, heldout


def score_with_task(answer: str | None, entry: dict) -> float:
    """The task's own `score_answer(answer, entry)` (0 for no answer), as a float in [0, 1]."""
    if answer is None:
        return 0.0
    score = _reasoning_gym().get_score_answer_fn(entry["metadata"]["source_dataset"])
    return float(score(answer, entry))


def reasoning_gym_reward():
    """Built-in reward `reasoning_gym`: the task's `score_answer` on the last `<answer>…</answer>`."""
    from reasoning_gym.utils import extract_answer

    def reasoning_gym_score(completions: list[str], reasoning_gym_entry: list[dict]) -> list[float | None]:
        scores: list[float | None] = []
        for completion, entry in zip(completions, reasoning_gym_entry):
            if entry is None:  # not a reasoning-gym row: cannot judge
                scores.append(None)
                continue
            scores.append(score_with_task(extract_answer(completion), entry))
        return scores

    _reasoning_gym()
    return reasoning_gym_score
