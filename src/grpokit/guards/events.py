"""The run's alarm log: `run_dir/alarms.jsonl`, one JSON object per alarm or action.

Each line holds at least ``{"step", "kind", "message", "action", "time"}``; the report draws them
on the time axis. Lines are appended and flushed as they happen, like `metrics.jsonl`.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

ALARMS_FILENAME = "alarms.jsonl"


def record_event(run_dir: str | Path, event: dict[str, Any]) -> Path:
    """Append `event` (plus a unix `time` if absent) to `run_dir/alarms.jsonl`; non-finite floats become null."""
    path = Path(run_dir) / ALARMS_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": time.time(), **_finite(event)}, allow_nan=False)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
    return path


def read_events(run_dir: str | Path) -> list[dict[str, Any]]:
    """The events of `run_dir/alarms.jsonl` in order; [] when the run raised none."""
    path = Path(run_dir) / ALARMS_FILENAME
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def truncate_events_after(run_dir: str | Path, step: int) -> int:
    """Drop the events of steps after `step` (a resumed run replays them); return how many were dropped.

    The file is rewritten to a temporary name and renamed over the old one, so a crash leaves either.
    """
    path = Path(run_dir) / ALARMS_FILENAME
    if not path.is_file():
        return 0
    events = read_events(run_dir)
    kept = [event for event in events if event.get("step", -1) <= step]
    if len(kept) == len(events):
        return 0
    temp_path = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temp_path.write_text("".join(json.dumps(event, allow_nan=False) + "\n" for event in kept), encoding="utf-8")
    os.replace(temp_path, path)
    return len(events) - len(kept)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value
