"""JSON-lines logs that a crash can damage only at the end: `metrics.jsonl`, `alarms.jsonl`.

Writers append one whole line per record and flush it (so a killed process loses at most the line
it was writing), and fsync at most every `FSYNC_SECONDS` (so a power loss loses at most that much).
Readers skip a torn last line — no newline and not parseable — with a warning; a bad line anywhere
else is a :class:`LogFileError` naming ``file:line``.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import IO, Any

from grpokit.errors import GrpokitError

FSYNC_SECONDS = 10.0


class LogFileError(GrpokitError, ValueError):
    """A line of a JSON-lines log, other than a torn last one, is not a JSON object."""

    kind = "log file"


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of `path`, in file order; a torn last line is skipped with a warning."""
    path = Path(path)
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    records = []
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise json.JSONDecodeError("a JSON value but not an object", line, 0)
        except json.JSONDecodeError as error:
            if line_number == len(lines):  # no newline after it: the writer is mid-line, or died there
                warnings.warn(f"{path}:{line_number}: skipping a torn last line (still being written, or cut "
                              f"short by a crash or a full disk)", stacklevel=2)
                continue
            raise LogFileError(f"{path}:{line_number}: not a JSON object: {error}") from None
        records.append(record)
    return records


def rewrite_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Replace `path` by `records`, atomically (a temporary file renamed over it, fsynced)."""
    temp_path = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temp_path, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(record, allow_nan=False) + "\n" for record in records)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_path, path)  # a crash here leaves the old file or the new one
    except OSError as error:
        temp_path.unlink(missing_ok=True)
        from grpokit.io_errors import io_error

        raise io_error(error, path) from error


def ends_with_newline(path: Path) -> bool:
    """True for an empty file or one whose last byte is a newline (no torn last line)."""
    with open(path, "rb") as handle:
        if handle.seek(0, os.SEEK_END) == 0:
            return True
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def finite_json(value: Any) -> Any:
    """JSON has no NaN/Infinity: such floats become null, in nested dicts too (a None reward is NaN in the
    tensors; an alarm may carry an infinite value)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    return value


def aside_stamp() -> str:
    """The UTC time that names logs moved aside: ``20261204T224107Z``."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def set_aside(path: Path, stamp: str) -> Path | None:
    """Rename a non-empty `path` to ``<stem>.<stamp>.jsonl.old`` (warning); the new path, or None."""
    if not path.is_file() or path.stat().st_size == 0:
        return None
    stem = path.name.removesuffix(".jsonl")
    target = path.with_name(f"{stem}.{stamp}.jsonl.old")
    count = 1
    while target.exists():
        count += 1
        target = path.with_name(f"{stem}.{stamp}-{count}.jsonl.old")
    os.replace(path, target)
    warnings.warn(f"{path} holds an earlier run's records and this run starts from step 0 (no checkpoint to "
                  f"resume); moved it to {target.name}", stacklevel=2)
    return target


class JsonlAppender:
    """Appends one JSON object per line to `path`: whole line, flushed; fsynced every `FSYNC_SECONDS`."""

    def __init__(self, path: Path):
        self.path = path
        self._file: IO[str] | None = None
        self._last_sync = time.monotonic()
        self.open()

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # closed in close()
        except OSError as error:
            from grpokit.io_errors import io_error

            raise io_error(error, self.path) from error

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, allow_nan=False) + "\n"  # serialized first: a bad record writes nothing
        if self._file is None:  # a write failed before (e.g. disk full) and the caller goes on
            self.open()
        try:
            self._file.write(line)
            self._file.flush()
            if time.monotonic() - self._last_sync >= FSYNC_SECONDS:
                os.fsync(self._file.fileno())
                self._last_sync = time.monotonic()
        except OSError as error:
            self._abandon()
            from grpokit.io_errors import io_error

            raise io_error(error, self.path) from error

    def _abandon(self) -> None:
        """After a failed write the buffer holds a partial line; drop it rather than retry at close."""
        handle, self._file = self._file, None
        if handle is not None:
            try:
                handle.close()
            except OSError:
                pass  # the same failure again (disk still full); the torn line is skipped by readers

    def close(self) -> None:
        handle, self._file = self._file, None
        if handle is None:
            return
        try:
            handle.flush()
            os.fsync(handle.fileno())
        except OSError:
            pass  # a failed write was already reported by `append`
        finally:
            try:
                handle.close()
            except OSError:
                pass
