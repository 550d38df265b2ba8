"""The run's alarm log: `run_dir/alarms.jsonl`, one JSON object per alarm or action.

Each line holds at least ``{"step", "kind", "message", "action", "time"}``; the report draws them
on the time axis. Lines are appended and flushed as they happen, like `metrics.jsonl`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from grpokit.monitoring.jsonl import ends_with_newline, finite_json, read_jsonl, rewrite_jsonl, set_aside

ALARMS_FILENAME = "alarms.jsonl"


def record_event(run_dir: str | Path, event: dict[str, Any]) -> Path:
    """Append `event` (plus a unix `time` if absent) to `run_dir/alarms.jsonl`; non-finite floats become null."""
    path = Path(run_dir) / ALARMS_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": time.time(), **finite_json(event)}, allow_nan=False)
    try:
        with open(path, "a", encoding="utf-8") as handle:  # one whole line, flushed at close
            handle.write(line + "\n")
    except OSError as error:
        from grpokit.io_errors import io_error

        raise io_error(error, path) from error
    return path


def read_events(run_dir: str | Path) -> list[dict[str, Any]]:
    """The events of `run_dir/alarms.jsonl` in order; [] when the run raised none. A torn last line
    (a crash mid-write) is skipped with a warning; a bad line elsewhere is an error naming file:line."""
    path = Path(run_dir) / ALARMS_FILENAME
    if not path.is_file():
        return []
    return read_jsonl(path)


def truncate_events_after(run_dir: str | Path, step: int) -> int:
    """Drop the events of steps after `step` (a resumed run replays them); return how many were dropped.

    The file is rewritten to a temporary name and renamed over the old one, so a crash leaves either.
    """
    path = Path(run_dir) / ALARMS_FILENAME
    if not path.is_file():
        return 0
    events = read_events(run_dir)
    kept = [event for event in events if event.get("step", -1) <= step]
    if len(kept) == len(events) and ends_with_newline(path):
        return 0
    rewrite_jsonl(path, kept)  # also drops a torn last line, so the next event starts a line of its own
    return len(events) - len(kept)


def set_events_aside(run_dir: str | Path, stamp: str) -> Path | None:
    """A run starting without a checkpoint moves an earlier run's alarms aside (``alarms.<stamp>.jsonl.old``)."""
    return set_aside(Path(run_dir) / ALARMS_FILENAME, stamp)
