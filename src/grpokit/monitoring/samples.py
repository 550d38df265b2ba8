"""The completions log: `run_dir/samples.jsonl`, what the policy actually wrote.

Curves say that the reward rose; only the text says whether the policy learned the task or found the
majority answer ("1" to every question). One JSON object per line:

- ``{"step", "kind": "train", "group", "prompt_index", "prompt", "completion", "rewards": {name: score},
  "total", "advantage"}``: every completion of the first `logging.samples_per_log` groups of a training
  step, every `logging.samples_every` steps (step = the metrics.jsonl step the update is logged at);
- ``{"step", "kind": "eval", "index", "prompt", "completion", "rewards": {...}, "greedy"}``: at every
  evaluation, the first `logging.eval_samples` held-out prompts (always the same ones) with their greedy
  completion and every proxy and gold ("gold/<name>") score, so one prompt can be followed across training.

Multi-turn episodes (`rollout.agent`) add ``"episode": {"messages": [{"role", "content", ...}], "turns",
"end", "tool_calls": {"valid", "malformed", "failed"}, "tool_seconds", "step_seconds", "environment_reward", "tokens":
{"policy", "inserted"}}`` to both kinds: the whole episode with roles ("completion" is its last assistant turn).

Scores that were None/NaN are null. Lines are appended and flushed as written; a resumed run cuts the
file back to the checkpoint's step (like metrics.jsonl), and readers skip a torn last line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grpokit.monitoring.jsonl import JsonlAppender, finite_json, read_jsonl, rewrite_jsonl, set_aside

SAMPLES_FILENAME = "samples.jsonl"


class SamplesLog:
    """Appends sample records to `run_dir/samples.jsonl` (the file is created on the first write)."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / SAMPLES_FILENAME
        self._appender: JsonlAppender | None = None

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        if not records:
            return
        if self._appender is None:
            self._appender = JsonlAppender(self.path)
        for record in records:
            self._appender.append(finite_json(record))

    def truncate_after(self, step: int) -> int:
        """Drop the records of steps after `step` (a resumed run logs them again); returns how many."""
        self.close()
        if not self.path.is_file():
            return 0
        records = read_jsonl(self.path)
        kept = [r for r in records if r.get("step", -1) <= step]
        rewrite_jsonl(self.path, kept)  # atomic; also drops a torn last line
        return len(records) - len(kept)

    def start_fresh(self, stamp: str) -> Path | None:
        """A run without a checkpoint: an earlier run's log moves aside (``samples.<stamp>.jsonl.old``)."""
        self.close()
        return set_aside(self.path, stamp)

    def close(self) -> None:
        if self._appender is not None:
            self._appender.close()
            self._appender = None

    def __enter__(self) -> SamplesLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_samples(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of `run_dir/samples.jsonl` in order ([] without one); a torn last line is skipped."""
    path = Path(run_dir) / SAMPLES_FILENAME
    return read_jsonl(path) if path.is_file() else []


def training_records(step: int, *, prompts: Sequence[str], completions: Sequence[str], group_ids: Sequence[int],
                     prompt_indices: Sequence[int], reward_names: Sequence[str], rewards, total, advantages,
                     groups: int, episodes: Sequence[dict] | None = None) -> list[dict[str, Any]]:
    """One record per completion of the first `groups` groups of a scored, prepared batch.

    `rewards` is [B, R] (reward_names' order), `total` and `advantages` [B]; rows are prompt-major, and
    the k-th group to appear is the prompt of data-set row `prompt_indices[k]`.
    """
    order: list[int] = []  # group ids in order of first appearance
    for group in group_ids:
        if int(group) not in order:
            order.append(int(group))
    chosen = order[:groups]
    records = []
    for row, group in enumerate(group_ids):
        if int(group) not in chosen:
            continue
        position = order.index(int(group))
        records.append({
            "step": step, "kind": "train", "group": position, "prompt_index": int(prompt_indices[position]),
            "prompt": prompts[row], "completion": completions[row],
            "rewards": {name: float(rewards[row][k]) for k, name in enumerate(reward_names)},
            "total": float(total[row]), "advantage": float(advantages[row]),
            **({} if episodes is None else {"episode": episodes[row]}),
        })
    return records


def eval_records(step: int, examples: Sequence[Any], count: int) -> list[dict[str, Any]]:
    """Records of the first `count` evaluation examples (`grpokit.trainers.evaluation.EvalExample`)."""
    return [
        {"step": step, "kind": "eval", "index": e.index, "prompt": e.prompt, "completion": e.completion,
         "rewards": dict(e.scores), "greedy": e.greedy,
         **({} if getattr(e, "episode", None) is None else {"episode": e.episode})}
        for e in examples[:count]
    ]
