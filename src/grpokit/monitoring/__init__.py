"""Run monitoring: metrics sinks (JSONL, TensorBoard, W&B), terminal progress, PNG curves, and the run's
JSON-lines logs: metrics, the alarm log (`events`), the completions log (`samples`).

Importing this package is cheap: tensorboard, wandb and matplotlib are imported only when used.
"""

from grpokit.monitoring.plots import DEFAULT_PLOT_KEYS, ema_smooth, plot_metrics
from grpokit.monitoring.progress import TrainingProgress
from grpokit.monitoring.sinks import METRICS_FILENAME, MetricsLogger, read_metrics

__all__ = [
    "DEFAULT_PLOT_KEYS",
    "METRICS_FILENAME",
    "MetricsLogger",
    "TrainingProgress",
    "ema_smooth",
    "plot_metrics",
    "read_metrics",
]
