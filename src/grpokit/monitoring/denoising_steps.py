"""The per-denoising-step panel of `grpokit report` for flow-model runs.

A flow run logs, per denoising step k (0 = the step from pure noise), ``flow/step{k:02d}/…``: the importance
ratio's mean and std and the active clip fractions, raw and after GRPO-Guard's RatioNorm, and the step's
gradient norm (as trained, and without the balancing weight). Here the x axis is the denoising step, not
the training step: each value is the mean over the training steps that logged it (with an SDE window, a
step is logged only while the window covers it), drawn once for the first half of the run and once for
the second, so drift over training shows as the gap between the two lines.
"""

from __future__ import annotations

import io
import re
from collections import defaultdict
from collections.abc import Sequence

_KEY = re.compile(r"^flow/step(\d+)/(.+)$")
# (subplot title, the metrics drawn in it)
SUBPLOTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ratio mean", ("raw_ratio_mean", "normed_ratio_mean")),
    ("ratio std", ("raw_ratio_std", "normed_ratio_std")),
    ("active clip fraction", ("raw_clip_low", "raw_clip_high", "normed_clip_low", "normed_clip_high")),
    ("gradient norm", ("grad_norm", "grad_norm_unweighted")),
)
LOOK_FOR = (
    "x = denoising step (0 = pure noise); each point the mean over training steps, solid the run's first "
    "half, dashed its second. Flow-GRPO's raw ratio sits below 1 (left-shifted) most at some steps and its "
    "lower clip fires more than the upper there; RatioNorm's ratio should stay at 1 with symmetric clips. "
    "Gradient norms far apart across steps mean a few steps dominate the update (what balancing evens out)."
)


def per_step_means(records: Sequence[dict], *, half: int | None = None) -> dict[str, dict[int, float]]:
    """``{metric: {k: mean}}`` over the training records that logged ``flow/step{k}/{metric}``.

    ``half=None``: every record; 0 / 1: the first / second half of the training steps (split at the
    median step of the records that log any per-step metric). Case: step01/raw_ratio_mean logged as 0.98
    and 1.0 in two records → ``{"raw_ratio_mean": {1: 0.99}}``.
    """
    logged = [r for r in records if any(_KEY.match(key) for key in r)]
    if half is not None and logged:
        steps = sorted(r.get("step", 0) for r in logged)
        middle = steps[(len(steps) - 1) // 2]
        logged = [r for r in logged if (r.get("step", 0) > middle) == bool(half)]
    sums: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in logged:
        for key, value in record.items():
            match = _KEY.match(key)
            if match and isinstance(value, (int, float)) and value == value:  # value == value: not NaN
                sums[match.group(2)][int(match.group(1))].append(float(value))
    return {name: {k: sum(v) / len(v) for k, v in sorted(by_step.items())} for name, by_step in sums.items()}


def draw_denoising_steps(records: Sequence[dict]) -> bytes | None:
    """PNG bytes of the four per-step subplots; None when the run logged no per-step metrics."""
    halves = [per_step_means(records, half=0), per_step_means(records, half=1)]
    if not halves[0] and not halves[1]:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: heavy import
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9.6, 5.6), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 2).flatten()
    colours = {}
    for ax, (title, names) in zip(axes, SUBPLOTS):
        for name in names:
            for half, style in zip(halves, ("-", "--")):
                if name not in half:
                    continue
                steps, values = list(half[name]), list(half[name].values())
                line = ax.plot(steps, values, style, marker="o", markersize=3, color=colours.get(name),
                               label=name if name not in colours else None)[0]
                colours.setdefault(name, line.get_color())
        if title == "ratio mean":
            ax.axhline(1.0, color="grey", lw=0.8)
        if title == "gradient norm" and any(name in half for half in halves for name in names):
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("denoising step (0 = noise)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    figure.suptitle("Per denoising step (solid: first half of the run, dashed: second half)", fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def describe_denoising_steps(records: Sequence[dict]) -> str:
    """The caption: which step's ratio is furthest below 1 and how uneven the gradient norms are."""
    means = per_step_means(records)
    sentences = []
    for name, label in (("raw_ratio_mean", "raw ratio"), ("normed_ratio_mean", "RatioNorm ratio")):
        if means.get(name):
            k, value = min(means[name].items(), key=lambda item: item[1])
            sentences.append(f"{label} mean lowest at step {k} ({value:.6f})")
    low, high = means.get("raw_clip_low", {}), means.get("raw_clip_high", {})
    if low and high:
        k = max(low, key=lambda step: low[step] - high.get(step, 0.0))
        sentences.append(f"raw clip low vs high most uneven at step {k} ({low[k]:.3f} vs {high.get(k, 0.0):.3f})")
    norms = {k: v for k, v in means.get("grad_norm", {}).items() if v > 0}
    if norms:
        top, bottom = max(norms, key=norms.get), min(norms, key=norms.get)
        sentences.append(
            f"gradient norm largest at step {top}, {norms[top] / norms[bottom]:.1f}× the smallest (step {bottom})"
        )
    return ("; ".join(sentences) + ".") if sentences else "No per-step metrics were logged."
