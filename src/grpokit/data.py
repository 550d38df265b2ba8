"""Prompt data sets: loading, up-front validation, prompt rendering, and a resumable sampler.

A data set is a table of rows. One column holds the prompt — either text or a list of chat
messages ``[{"role": ..., "content": ...}, ...]`` — and every other column is kept and handed to
reward functions by name (e.g. a gold ``answer``).

Supported sources, chosen by the path:

- ``*.jsonl`` / ``*.json``: one JSON object per line (a ``*.json`` file whose first character is
  ``[`` is read as one JSON array of objects). Problems are reported by 1-based *line*.
- ``*.csv``: a header row, then data rows; every cell is text and an empty cell counts as missing
  (None); a row with more or fewer fields than the header is a problem (its line is named). Prompts in
  CSV are text only. Problems are reported by 0-based data *row*.
- ``*.parquet``: read with pyarrow. Problems are reported by 0-based *row*.
- a directory written by ``datasets.Dataset.save_to_disk`` (or a ``DatasetDict``, choose the
  ``split``). Problems are reported by 0-based *row*.

Everything is checked before training starts; problems are collected (up to ``max_errors``) and
raised together as one :class:`DataError` whose lines each name the file, the row and the column.
Once the tokenizer is known, :meth:`PromptDataset.check_prompt_tokens` checks that every rendered
prompt encodes to at least one token and fits the context (or cuts it from the left).
"""

from __future__ import annotations

import csv
import json
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpokit.errors import GrpokitError

CHAT_ROLES = frozenset({"system", "user", "assistant", "tool"})
MAX_ERRORS_DEFAULT = 10


class DataError(GrpokitError, ValueError):
    """A data set failed validation; ``problems`` holds every problem found (up to the cap)."""

    kind = "data"

    def __init__(self, source: str, problems: list[DataProblem], total: int | None = None):
        self.source = source
        self.problems = problems
        total = len(problems) if total is None else total
        shown = "" if total == len(problems) else f", showing the first {len(problems)}"
        lines = [f"{total} problem(s) in data set {source}{shown}:"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class DataProblem:
    """One validation problem. ``location`` is e.g. ``"line 3"`` (JSONL) or ``"row 2"`` (others)."""

    source: str
    location: str | None
    column: str | None
    message: str

    def __str__(self) -> str:
        parts = [self.source]
        if self.location is not None:
            parts.append(self.location)
        if self.column is not None:
            parts.append(f"column '{self.column}'")
        return ": ".join(parts) + f": {self.message}"


# ----------------------------------------------------------------------------- rendering


def render_prompt(prompt: str | list[dict[str, str]], tokenizer: Any = None) -> str:
    """Turn a prompt (text or chat messages) into the text the policy is conditioned on.

    - The tokenizer has a chat template (``tokenizer.chat_template`` is not None): apply it with
      ``add_generation_prompt=True``; plain text is first wrapped as one user message.
    - No tokenizer or no template: text is returned as is; messages are joined as their
      ``content`` strings separated by one newline (roles are dropped).
    """
    has_template = tokenizer is not None and getattr(tokenizer, "chat_template", None) is not None
    if has_template:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if not isinstance(rendered, str):
            raise TypeError(f"apply_chat_template returned {type(rendered).__name__}, expected text")
        return rendered
    if isinstance(prompt, str):
        return prompt
    return "\n".join(message["content"] for message in prompt)


# ----------------------------------------------------------------------------- data set


class PromptDataset:
    """Validated prompt rows. Build with :func:`load_prompt_dataset` or :meth:`from_records`."""

    def __init__(self, records: list[dict[str, Any]], *, source: str, prompt_column: str,
                 locations: list[str] | None = None):
        self._records = records
        self.source = source
        self.prompt_column = prompt_column
        # How problems name each row ("line 3" for JSONL, "row 2" otherwise).
        self.locations = locations if locations is not None else [f"row {i}" for i in range(len(records))]
        self._truncated: dict[int, str] = {}  # row -> its rendered prompt cut from the left
        columns: dict[str, None] = {}
        for record in records:
            columns.update(dict.fromkeys(record))
        self.columns: list[str] = list(columns)

    @classmethod
    def from_records(
        cls,
        records: Iterable[dict[str, Any]],
        *,
        source: str = "<memory>",
        prompt_column: str = "prompt",
        required_columns: Sequence[str] = (),
        max_errors: int = MAX_ERRORS_DEFAULT,
    ) -> PromptDataset:
        """Validate in-memory rows (0-based ``row`` locations) and wrap them."""
        rows = [(f"row {i}", record) for i, record in enumerate(records)]
        return _validated(rows, source, prompt_column, tuple(required_columns), max_errors)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return dict(self._records[index])

    @property
    def prompts(self) -> list[str | list[dict[str, str]]]:
        return [record[self.prompt_column] for record in self._records]

    @property
    def extra_columns(self) -> list[str]:
        """The columns handed to reward functions: every column but the prompt."""
        return [c for c in self.columns if c != self.prompt_column]

    def render(self, index: int, tokenizer: Any = None) -> str:
        if index in self._truncated:
            return self._truncated[index]
        return render_prompt(self._records[index][self.prompt_column], tokenizer)

    def check_prompt_tokens(self, tokenizer: Any, *, max_tokens: int | None = None, limit_reason: str = "",
                            truncate: str | None = None, max_errors: int = MAX_ERRORS_DEFAULT,
                            chunk_size: int = 1024) -> int:
        """Tokenize every rendered prompt (in batches) as the engines will; return how many were truncated.

        A prompt with no tokens is a problem (sampling needs one to condition on); one over ``max_tokens``
        is a problem unless ``truncate="left"``, which keeps its last ``max_tokens`` tokens. Raises
        :class:`DataError` listing the rows.
        """
        problems: list[DataProblem] = []
        total = 0
        too_long: list[tuple[int, list[int]]] = []
        for start in range(0, len(self), chunk_size):
            rows = range(start, min(start + chunk_size, len(self)))
            texts = [render_prompt(self._records[i][self.prompt_column], tokenizer) for i in rows]
            for i, ids in zip(rows, tokenizer(texts, add_special_tokens=False)["input_ids"]):
                message = None
                if len(ids) == 0:
                    message = f"prompt encodes to no tokens with {type(tokenizer).__name__}; is it the right tokenizer?"
                elif max_tokens is not None and len(ids) > max_tokens:
                    if truncate == "left":
                        too_long.append((i, list(ids)))
                        continue
                    message = (f"prompt is {len(ids)} tokens, over the limit of {max_tokens} ({limit_reason}); "
                               "shorten it, or set data.truncate_prompts: left")
                if message is not None:
                    total += 1
                    if len(problems) < max_errors:
                        problems.append(DataProblem(self.source, self.locations[i], self.prompt_column, message))
        if problems:
            raise DataError(self.source, problems, total=total)
        for i, ids in too_long:
            self._truncated[i] = _left_truncated(tokenizer, ids, max_tokens)  # type: ignore[arg-type]
        return len(too_long)

    def columns_for(self, indices: Sequence[int], repeat: int = 1) -> dict[str, list[Any]]:
        """Extra columns for a prompt-major rollout batch: each row of ``indices`` repeated
        ``repeat`` times in a row, so the lists align with the batch's completions. A row that
        lacks a column (JSONL rows may differ) gives None."""
        return {
            column: [self._records[i].get(column) for i in indices for _ in range(repeat)]
            for column in self.extra_columns
        }


def _left_truncated(tokenizer: Any, ids: list[int], max_tokens: int) -> str:
    """The text of the last ``max_tokens`` tokens of ``ids``, shortened until it re-encodes within the limit
    (decoding and re-encoding can merge tokens differently at the cut)."""
    keep = max_tokens
    while True:
        text = tokenizer.decode(ids[len(ids) - keep:], skip_special_tokens=False)
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= max_tokens or keep == 1:
            return text
        keep -= 1


def load_prompt_dataset(
    path: str | Path,
    *,
    prompt_column: str = "prompt",
    required_columns: Sequence[str] = (),
    split: str | None = None,
    max_errors: int = MAX_ERRORS_DEFAULT,
) -> PromptDataset:
    """Load and validate a prompt data set (formats in the module docstring).

    Raises :class:`DataError` listing up to ``max_errors`` problems: an unreadable JSON line, a
    missing prompt or required column, an empty prompt, malformed chat messages, a missing
    (None/NaN) value in a required column, an empty file, an unknown format.
    """
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise DataError(source, [DataProblem(source, None, None, "no such file or directory")])
    if split is not None and not path.is_dir():
        raise DataError(source, [DataProblem(source, None, None, "split= applies only to datasets dirs")])
    try:
        rows = _read_rows(path, source, split)
    except DataError:
        raise
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as error:
        message = f"cannot read ({type(error).__name__}: {error})"
        raise DataError(source, [DataProblem(source, None, None, message)]) from error
    return _validated(rows, source, prompt_column, tuple(required_columns), max_errors)


# ----------------------------------------------------------------------------- readers
# Each reader returns [(location, record)]. A JSON line that does not parse becomes a
# (location, DataProblem) pair so that validation reports it together with the rest.

_Row = tuple[str, "dict[str, Any] | DataProblem"]


def _read_rows(path: Path, source: str, split: str | None) -> list[_Row]:
    if path.is_dir():
        return _read_datasets_dir(path, source, split)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return _read_json(path, source)
    if suffix == ".csv":
        return _read_csv(path, source)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return [(f"row {i}", record) for i, record in enumerate(pq.read_table(path).to_pylist())]
    message = f"unknown format '{suffix}'; use .jsonl, .json, .csv, .parquet or a datasets directory"
    raise DataError(source, [DataProblem(source, None, None, message)])


def _read_csv(path: Path, source: str) -> list[_Row]:
    """Rows keyed by the header; a row with more or fewer fields than the header is a problem naming its
    line (a quoted field may span lines, so the line is the reader's, where the row ends)."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return []
        rows: list[_Row] = []
        for i, fields in enumerate(reader):
            location = f"row {i}"
            if len(fields) != len(header):
                message = (f"has {len(fields)} field(s) but the header has {len(header)} "
                           f"(line {reader.line_num}); quote fields that contain commas")
                rows.append((location, DataProblem(source, location, None, message)))
            else:
                rows.append((location, {k: (v if v != "" else None) for k, v in zip(header, fields)}))
        return rows


def _read_json(path: Path, source: str) -> list[_Row]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            location = f"line {error.lineno}"
            problem = DataProblem(source, location, None, f"not valid JSON ({error.msg})")
            raise DataError(source, [problem]) from error
        return [(f"row {i}", record) for i, record in enumerate(records)]
    rows: list[_Row] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        location = f"line {line_number}"
        try:
            rows.append((location, json.loads(line)))
        except json.JSONDecodeError as error:
            message = f"not valid JSON ({error.msg} at char {error.colno})"
            rows.append((location, DataProblem(source, location, None, message)))
    return rows


def _read_datasets_dir(path: Path, source: str, split: str | None) -> list[_Row]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as error:
        message = f"not a directory written by datasets' save_to_disk ({error})"
        raise DataError(source, [DataProblem(source, None, None, message)]) from error
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        if split is None and len(splits) == 1:
            split = splits[0]
        if split not in loaded:
            message = f"choose a split with split=...; available: {splits}"
            raise DataError(source, [DataProblem(source, None, None, message)])
        loaded = loaded[split]
    return [(f"row {i}", record) for i, record in enumerate(loaded.to_list())]


# ----------------------------------------------------------------------------- validation


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _prompt_problem(prompt: Any) -> str | None:
    """Why this prompt value is unusable, or None if it is fine."""
    if isinstance(prompt, str):
        return None if prompt.strip() else "prompt is empty or whitespace"
    if not isinstance(prompt, list):
        return f"prompt must be text or a list of chat messages, got {type(prompt).__name__}"
    if not prompt:
        return "chat messages list is empty"
    for k, message in enumerate(prompt):
        if not isinstance(message, dict) or not {"role", "content"} <= message.keys():
            return f"chat message {k} must be a dict with 'role' and 'content', got {message!r:.80}"
        if message["role"] not in CHAT_ROLES:
            return f"chat message {k} has unknown role {message['role']!r}; allowed: {sorted(CHAT_ROLES)}"
        if not isinstance(message["content"], str):
            return f"chat message {k} content must be text, got {type(message['content']).__name__}"
    if not any(message["content"].strip() for message in prompt):
        return "prompt is empty or whitespace (every message content is blank)"
    return None


def _row_problems(
    source: str, location: str, record: Any, prompt_column: str, required_columns: tuple[str, ...]
) -> list[DataProblem]:
    if not isinstance(record, dict):
        return [DataProblem(source, location, None, f"row must be an object, got {type(record).__name__}")]
    problems = []
    if prompt_column not in record:
        present = ", ".join(map(repr, record)) or "none"
        problems.append(DataProblem(source, location, prompt_column, f"missing (columns present: {present})"))
    elif (message := _prompt_problem(record[prompt_column])) is not None:
        problems.append(DataProblem(source, location, prompt_column, message))
    for column in required_columns:
        if column not in record:
            problems.append(DataProblem(source, location, column, "missing required column"))
        elif _is_missing(record[column]):
            problems.append(DataProblem(source, location, column, "required column is None/empty"))
    return problems


def _validated(
    rows: list[_Row], source: str, prompt_column: str, required_columns: tuple[str, ...], max_errors: int
) -> PromptDataset:
    if not rows:
        raise DataError(source, [DataProblem(source, None, None, "contains no rows")])
    problems: list[DataProblem] = []
    for location, record in rows:
        if isinstance(record, DataProblem):
            problems.append(record)
        else:
            problems.extend(_row_problems(source, location, record, prompt_column, required_columns))
    if problems:
        raise DataError(source, problems[:max_errors], total=len(problems))
    records = [record for _, record in rows]
    return PromptDataset(records, source=source, prompt_column=prompt_column,  # type: ignore[arg-type]
                         locations=[location for location, _ in rows])


# ----------------------------------------------------------------------------- sampling


class PromptSampler:
    """Deterministic, resumable order of prompt indices.

    Each epoch is a permutation of ``range(num_prompts)`` drawn from a generator seeded by
    ``(seed, epoch)`` (or the identity when ``shuffle=False``). :meth:`next_batch` hands out the
    next ``k`` indices and continues into the next epoch when one runs out, so a batch may span
    two epochs. The state is ``(epoch, position)``; the permutation is recomputed from it, so a
    resumed run draws exactly the prompts the uninterrupted run would have drawn.
    """

    def __init__(self, num_prompts: int, *, seed: int = 0, shuffle: bool = True):
        if num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
        self.num_prompts = num_prompts
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> list[int]:
        order = list(range(self.num_prompts))
        if self.shuffle:
            # A string seed is hashed deterministically (independent of PYTHONHASHSEED).
            random.Random(f"grpokit-prompt-sampler:{self.seed}:{epoch}").shuffle(order)
        return order

    def next_batch(self, k: int) -> list[int]:
        if k < 1:
            raise ValueError(f"batch size must be >= 1, got {k}")
        batch: list[int] = []
        while len(batch) < k:
            if self.position == self.num_prompts:
                self.epoch += 1
                self.position = 0
                self._order = self._epoch_order(self.epoch)
            take = min(k - len(batch), self.num_prompts - self.position)
            batch.extend(self._order[self.position : self.position + take])
            self.position += take
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "num_prompts": self.num_prompts,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "epoch": self.epoch,
            "position": self.position,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a saved position; the data set size, seed and shuffle flag must match, since
        a different data set would silently continue with different prompts."""
        for key in ("num_prompts", "seed", "shuffle"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"sampler state has {key}={state[key]!r} but this sampler has {getattr(self, key)!r}; "
                    "resume with the same data set and seed"
                )
        if not 0 <= state["position"] <= self.num_prompts:
            raise ValueError(f"sampler position {state['position']} outside [0, {self.num_prompts}]")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._order = self._epoch_order(self.epoch)
