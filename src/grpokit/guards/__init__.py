"""Guards: alarms that watch a run for entropy collapse, over-optimization and ratio drift, and act.

- `alarms`: pure detectors on metric streams (testable on synthetic streams).
- `gold`: gold-vs-proxy scores of one set of held-out completions.
- `callbacks`: trainer callbacks that feed the alarms and warn, stop, or restore the best-gold
  checkpoint; `with_guards(config, callbacks)` builds them from a config.
- the run's `alarms.jsonl`, where the callbacks record what fired, lives with the other logs in
  `grpokit.monitoring.events`.
- `state`: what a checkpoint remembers of the guards (windows, best gold) and how the run ended.

Importing this package imports no model library and nothing of the trainers.
"""

from grpokit.guards.alarms import (
    Alarm,
    EntropyCollapseAlarm,
    OverOptimizationAlarm,
    RatioDriftAlarm,
    least_squares_slope,
    window_change,
)
from grpokit.guards.callbacks import (
    BEST_TAG,
    EntropyGuard,
    GoldGuard,
    RatioGuard,
    ReportWriter,
    act,
    build_guards,
    with_guards,
)
from grpokit.guards.config import (
    EntropyGuardConfig,
    GuardsConfig,
    OverOptimizationGuardConfig,
    RatioGuardConfig,
)

__all__ = [
    "BEST_TAG",
    "Alarm",
    "EntropyCollapseAlarm",
    "EntropyGuard",
    "EntropyGuardConfig",
    "GoldGuard",
    "GuardsConfig",
    "OverOptimizationAlarm",
    "OverOptimizationGuardConfig",
    "RatioDriftAlarm",
    "RatioGuard",
    "RatioGuardConfig",
    "ReportWriter",
    "act",
    "build_guards",
    "least_squares_slope",
    "window_change",
    "with_guards",
]
