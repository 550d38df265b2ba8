"""Training progress on the terminal: a rich bar when interactive, compact lines otherwise.

In a terminal (or notebook) the bar shows description, bar, ``step/total``, elapsed, ETA and a
few live metrics. When output is not interactive (CI logs, ``> file``, ``TERM=dumb``) a live bar
would spew control codes or hundreds of redraws, so one plain line is printed every
``print_every`` steps instead::

    GRPO step 40/200 (20%) elapsed 0:01:02 eta 0:04:08 reward=0.512 kl=0.00123
"""

from __future__ import annotations

import math
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

LINES_PER_RUN_WHEN_NOT_INTERACTIVE = 20


def format_fields(fields: dict[str, Any]) -> str:
    """``reward=0.512 kl=0.00123``: numbers with 4 significant digits, others as ``str``."""
    parts = []
    for name, value in fields.items():
        item = getattr(value, "item", None)
        if callable(item):
            value = item()
        if isinstance(value, float):
            parts.append(f"{name}={value:.4g}")
        else:
            parts.append(f"{name}={value}")
    return " ".join(parts)


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` of a non-negative number of seconds; ``-:--:--`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "-:--:--"
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


class TrainingProgress:
    """Shows training progress; ``update(step, **fields)`` after each step.

    ``total_steps``: the run's last step. ``start_step``: where a resumed run starts (elapsed and
    ETA count from there). ``print_every``: steps between lines when not interactive (default:
    about 20 lines per run; the last step is always printed); ``print_every_seconds``: a line also
    when that long passed since the last one, so a slow run in a log file is never silent for long. ``console``: where to draw (default
    stdout). ``disable``: draw nothing.
    """

    def __init__(
        self,
        total_steps: int,
        *,
        description: str = "GRPO",
        disable: bool = False,
        start_step: int = 0,
        print_every: int | None = None,
        print_every_seconds: float = 60.0,
        console: Console | None = None,
    ):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.total_steps = total_steps
        self.description = description
        self.disable = disable
        self.start_step = start_step
        self.console = console if console is not None else Console()
        self.interactive = self.console.is_interactive or self.console.is_jupyter
        self.print_every = print_every or max(1, total_steps // LINES_PER_RUN_WHEN_NOT_INTERACTIVE)
        self._progress: Progress | None = None
        self._task_id = None
        self._started_at: float | None = None
        self.print_every_seconds = print_every_seconds
        self._last_printed_step: int | None = None
        self._last_printed_at: float | None = None

    def start(self) -> TrainingProgress:
        if self._started_at is not None:
            return self
        self._started_at = time.monotonic()
        if self.disable or not self.interactive:
            return self
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[metrics]}"),
            console=self.console,
            # The trainer's own prints and warnings must not be captured and re-ordered.
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._task_id = self._progress.add_task(
            self.description, total=self.total_steps, completed=self.start_step, metrics=""
        )
        self._progress.start()
        return self

    def update(self, step: int, **fields: Any) -> None:
        """Mark ``step`` (absolute, not a delta) as done and show ``fields`` (e.g. reward=0.5)."""
        self.start()
        if self.disable:
            return
        if self._progress is not None:
            self._progress.update(self._task_id, completed=step, metrics=format_fields(fields))
            return
        last = self._last_printed_at if self._last_printed_at is not None else self._started_at
        since_last = time.monotonic() - last
        if step % self.print_every == 0 or step >= self.total_steps or since_last >= self.print_every_seconds:
            self._print_line(step, fields)

    def _print_line(self, step: int, fields: dict[str, Any]) -> None:
        if step == self._last_printed_step:
            return
        self._last_printed_step = step
        self._last_printed_at = time.monotonic()
        elapsed = time.monotonic() - (self._started_at or time.monotonic())
        steps_done = step - self.start_step
        remaining = elapsed / steps_done * (self.total_steps - step) if steps_done > 0 else math.inf
        percent = 100 * step // self.total_steps
        line = (
            f"{self.description} step {step}/{self.total_steps} ({percent}%) "
            f"elapsed {format_duration(elapsed)} eta {format_duration(remaining)}"
        )
        if fields:
            line += " " + format_fields(fields)
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def print(self, message: str) -> None:
        """Print a message (eval result, alarm...) above the bar, or as a line when not interactive."""
        if self.disable:
            return
        console = self._progress.console if self._progress is not None else self.console
        console.print(message, markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __enter__(self) -> TrainingProgress:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
