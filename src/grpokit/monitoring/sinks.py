"""Metrics sinks: one JSON line per step (the source of truth), TensorBoard, optional W&B.

``run_dir/metrics.jsonl`` holds ``{"step": int, "time": unix_seconds, **metrics}`` per line,
flushed as written, so a crashed run keeps every logged step and plots can be drawn from it at
any time. TensorBoard and W&B are mirrors for live viewing; their libraries are imported only
when used.
"""

from __future__ import annotations

import math
import numbers
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from grpokit.monitoring.jsonl import JsonlAppender, read_jsonl, rewrite_jsonl, set_aside

METRICS_FILENAME = "metrics.jsonl"
TENSORBOARD_DIRNAME = "tb"
_RESERVED_KEYS = ("step", "time")


def to_scalar(name: str, value: Any) -> float | int:
    """A python number from a float, int, bool, numpy scalar or one-element tensor/array."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    item = getattr(value, "item", None)
    numel = getattr(value, "numel", None) or getattr(value, "size", None)
    count = numel() if callable(numel) else numel
    if callable(item) and count == 1:
        return to_scalar(name, item())
    raise TypeError(f"metric {name!r} must be a number or a one-element tensor, got {type(value).__name__}")


def _json_value(value: float | int) -> float | int | None:
    # JSON has no NaN/Infinity; null keeps the file parseable by any reader.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics JSONL file, in file order.

    A torn last line (the process died or the disk filled mid-write) is skipped with a warning; any
    other unparseable line is a :class:`~grpokit.monitoring.jsonl.LogFileError` naming ``file:line``.
    """
    return read_jsonl(path)


class JsonlSink:
    """Appends one flushed JSON line per ``write`` (see :class:`~grpokit.monitoring.jsonl.JsonlAppender`)."""

    def __init__(self, path: Path):
        self.path = path
        self._appender = JsonlAppender(path)

    def write(self, step: int, metrics: Mapping[str, float | int]) -> None:
        record = {"step": step, "time": round(time.time(), 3)}
        record.update({name: _json_value(value) for name, value in metrics.items()})
        self._appender.append(record)

    def truncate_after(self, step: int) -> int:
        """Drop records with ``step`` greater than ``step`` (and a torn last line); return how many were dropped."""
        self._appender.close()
        records = read_metrics(self.path) if self.path.exists() else []
        kept = [record for record in records if record.get("step", -1) <= step]
        if self.path.exists():
            rewrite_jsonl(self.path, kept)
        self._appender.open()
        return len(records) - len(kept)

    def start_fresh(self, stamp: str) -> Path | None:
        """Move an earlier run's non-empty log aside (``metrics.<stamp>.jsonl.old``); its new path, or None."""
        self._appender.close()
        moved = set_aside(self.path, stamp)
        self._appender.open()
        return moved

    def close(self) -> None:
        self._appender.close()


class TensorBoardSink:
    """Scalars to ``SummaryWriter(log_dir)``; the writer is opened on first use.

    After ``purge_after(step)`` the next writer is opened with ``purge_step=step + 1``, which
    hides the events of later steps that a crashed run had written (no duplicate curves).
    """

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self._writer = None
        self._purge_step: int | None = None

    def _get_writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # lazy: pulls in tensorboard

            self._writer = SummaryWriter(
                log_dir=str(self.log_dir), purge_step=self._purge_step, flush_secs=10
            )
            self._purge_step = None
        return self._writer

    def write(self, step: int, metrics: Mapping[str, float | int]) -> None:
        writer = self._get_writer()
        for name, value in metrics.items():
            writer.add_scalar(name, value, global_step=step)

    def purge_after(self, step: int) -> None:
        self.close()
        self._purge_step = step + 1

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class WandbSink:
    """``wandb.log(metrics, step=step)`` into a run started here (wandb imported lazily)."""

    def __init__(self, project: str, run_dir: Path, config: Mapping[str, Any] | None):
        import wandb  # lazy: optional dependency

        self._wandb = wandb
        self._run = wandb.init(project=project, dir=str(run_dir), config=dict(config or {}))

    def write(self, step: int, metrics: Mapping[str, float | int]) -> None:
        self._run.log(dict(metrics), step=step)

    def close(self) -> None:
        self._run.finish()


class MetricsLogger:
    """Logs scalar metrics per step to ``run_dir/metrics.jsonl``, TensorBoard and optionally W&B.

    ``tensorboard``: also write ``run_dir/tb/`` event files. ``wandb_project``: also log to this
    W&B project when ``wandb`` is installed (else a warning). ``config`` goes to W&B's run config.
    Use as a context manager or call ``close()``.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        tensorboard: bool = True,
        wandb_project: str | None = None,
        config: Mapping[str, Any] | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / METRICS_FILENAME
        self._jsonl = JsonlSink(self.metrics_path)
        self._tensorboard = TensorBoardSink(self.run_dir / TENSORBOARD_DIRNAME) if tensorboard else None
        self._wandb = self._open_wandb(wandb_project, config) if wandb_project else None

    def _open_wandb(self, project: str, config: Mapping[str, Any] | None) -> WandbSink | None:
        try:
            return WandbSink(project, self.run_dir, config)
        except ImportError:
            warnings.warn(
                f"wandb_project={project!r} given but wandb is not installed; logging to JSONL/TensorBoard only",
                stacklevel=3,
            )
            return None

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record ``metrics`` (numbers or one-element tensors) at ``step``; NaN/inf become JSON null."""
        for reserved in _RESERVED_KEYS:
            if reserved in metrics:
                raise ValueError(f"metric name {reserved!r} is reserved for the record's own field")
        scalars = {name: to_scalar(name, value) for name, value in metrics.items()}
        self._jsonl.write(step, scalars)
        if self._tensorboard is not None:
            self._tensorboard.write(step, scalars)
        if self._wandb is not None:
            self._wandb.write(step, scalars)

    def truncate_after(self, step: int) -> int:
        """Forget what was logged after ``step`` (call when resuming from the checkpoint at ``step``).

        Rewrites the JSONL without records of later steps and makes TensorBoard hide its events
        of later steps. Returns how many JSONL records were dropped. W&B runs are not rewound.
        """
        dropped = self._jsonl.truncate_after(step)
        if self._tensorboard is not None:
            self._tensorboard.purge_after(step)
        return dropped

    def start_fresh(self, stamp: str) -> Path | None:
        """Start a run without a checkpoint: an earlier run's JSONL moves aside to
        ``metrics.<stamp>.jsonl.old`` (returned; None when there was none) and TensorBoard hides
        every earlier event."""
        moved = self._jsonl.start_fresh(stamp)
        if self._tensorboard is not None:
            self._tensorboard.purge_after(-1)
        return moved

    def flush(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.flush()

    def close(self) -> None:
        self._jsonl.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.close()
            self._wandb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
