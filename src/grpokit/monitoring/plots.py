"""Training curves as one PNG: a small subplot per metric against step.

Drawn from ``metrics.jsonl`` (see :mod:`grpokit.monitoring.sinks`), so it works during a run, after
a crash, and on a machine without TensorBoard. matplotlib is imported lazily and used through
its object API with the Agg canvas, so no GUI backend or global pyplot state is touched.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from pathlib import Path

from grpokit.monitoring.sinks import read_metrics

# Patterns (fnmatch, in display order) for the metrics worth a glance; names in the style of
# TRL's GRPO logs and plain ones both match. Missing ones are skipped.
DEFAULT_PLOT_KEYS: tuple[str, ...] = (
    "reward",
    "reward/mean",
    "reward_mean",
    "rewards/*/mean",
    "gold*",
    "kl",
    "kl/*",
    "entropy",
    "entropy/*",
    "clip*",
    "*completion*length*",
    "completions/mean_length",
    "grad_norm",
    "lr",
    "learning_rate",
    "*zero_std*",
)
MAX_DEFAULT_SUBPLOTS = 16
SUBPLOT_COLUMNS = 3


def ema_smooth(values: Sequence[float], weight: float) -> list[float]:
    """Debiased exponential moving average, as TensorBoard's smoothing slider.

    ``m_t = weight * m_{t-1} + (1 - weight) * x_t`` with ``m_0 = 0``, reported as
    ``m_t / (1 - weight^t)`` where t counts the finite values seen so far; non-finite values are
    passed through and do not update the average. ``weight = 0`` returns the values unchanged.
    """
    if not 0 <= weight < 1:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    smoothed = []
    average = 0.0
    finite_count = 0
    for value in values:
        if not math.isfinite(value):
            smoothed.append(value)
            continue
        finite_count += 1
        average = weight * average + (1 - weight) * value
        smoothed.append(average / (1 - weight**finite_count))
    return smoothed


def select_keys(available: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """Available keys matching ``patterns``: pattern order first, then file order; no repeats."""
    selected: list[str] = []
    for pattern in patterns:
        for key in available:
            if key not in selected and fnmatch.fnmatchcase(key, pattern):
                selected.append(key)
    return selected


def metric_series(records: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    """``(steps, values)`` of the records holding a numeric ``key`` (null/NaN is skipped)."""
    steps, values = [], []
    for record in records:
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or "step" not in record:
            continue
        steps.append(record["step"])
        values.append(float(value))
    return steps, values


def plot_metrics(
    metrics_jsonl: str | Path,
    out_png: str | Path,
    *,
    keys: Sequence[str] | None = None,
    smooth: float = 0,
    markers: Sequence[tuple[int, str]] = (),
    title: str | None = None,
) -> Path:
    """Draw one subplot per metric vs step into ``out_png`` and return its path.

    ``keys``: metric names or fnmatch patterns (default :data:`DEFAULT_PLOT_KEYS`, at most
    16 subplots); keys absent from the file are skipped, and a ValueError lists the available
    ones when nothing is left. ``smooth``: EMA weight in [0, 1) (raw curve drawn faint behind).
    ``markers``: ``(step, label)`` vertical lines drawn on every subplot, e.g. alarms.
    """
    records = read_metrics(metrics_jsonl)
    available = _numeric_keys(records)
    selected = select_keys(available, keys if keys is not None else DEFAULT_PLOT_KEYS)
    if keys is None:
        selected = selected[:MAX_DEFAULT_SUBPLOTS]
    if not selected:
        raise ValueError(
            f"none of the keys {list(keys or DEFAULT_PLOT_KEYS)} is in {metrics_jsonl}; available: {available}"
        )

    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: heavy import
    from matplotlib.figure import Figure

    columns = min(SUBPLOT_COLUMNS, len(selected))
    rows = math.ceil(len(selected) / columns)
    figure = Figure(figsize=(4.2 * columns, 2.6 * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes_grid = figure.subplots(rows, columns, squeeze=False)
    for index, key in enumerate(selected):
        axes = axes_grid[index // columns][index % columns]
        steps, values = metric_series(records, key)
        _draw_series(axes, steps, values, smooth)
        axes.set_title(key, fontsize=9)
        axes.tick_params(labelsize=7)
        axes.grid(alpha=0.3)
        if index + columns >= len(selected):  # nothing drawn below this subplot
            axes.set_xlabel("step", fontsize=8)
        _draw_markers(axes, markers, with_labels=index < columns)
    for index in range(len(selected), rows * columns):
        axes_grid[index // columns][index % columns].set_visible(False)
    if title:
        figure.suptitle(title, fontsize=10)

    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png)
    return out_png


def _numeric_keys(records: Sequence[dict]) -> list[str]:
    keys: list[str] = []
    for record in records:
        for key, value in record.items():
            is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if key not in ("step", "time") and is_number and key not in keys:
                keys.append(key)
    return keys


def _draw_series(axes, steps: list[int], values: list[float], smooth: float) -> None:
    if smooth > 0:
        axes.plot(steps, values, color="tab:blue", alpha=0.25, linewidth=0.8)
        axes.plot(steps, ema_smooth(values, smooth), color="tab:blue", linewidth=1.4)
    else:
        axes.plot(steps, values, color="tab:blue", linewidth=1.2, marker="." if len(steps) < 30 else None)


def _draw_markers(axes, markers: Sequence[tuple[int, str]], *, with_labels: bool) -> None:
    for step, label in markers:
        axes.axvline(step, color="tab:red", linestyle="--", linewidth=0.9, alpha=0.8)
        if with_labels and label:
            axes.annotate(
                label,
                xy=(step, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(2, -2),
                textcoords="offset points",
                fontsize=6,
                color="tab:red",
                rotation=90,
                va="top",
            )
