"""`grpokit report RUN_DIR`: one self-contained HTML page that says whether a run fooled itself.

Read from the run directory's `metrics.jsonl`, `alarms.jsonl` and `samples.jsonl` (so it works
during a run and after a crash): a short text summary, the alarms, one PNG per panel — proxy vs gold,
entropy, clip fractions, importance ratio, lengths, zero-std groups, held-out accuracy, and for flow
models the per-denoising-step ratios, clip fractions and gradient norms — embedded as
base64 so the page is one file that can be mailed or attached, each captioned with what THIS run's
curves did (the panel's reading guide is the image's tooltip), then the completions: the latest
training samples and the fixed held-out prompts' greedy completions across training. Alarms are drawn
on every panel's time axis.
"""

from __future__ import annotations

import base64
import dataclasses
import fnmatch
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpokit.monitoring.denoising_steps import LOOK_FOR as DENOISING_STEPS_LOOK_FOR
from grpokit.monitoring.denoising_steps import describe_denoising_steps, draw_denoising_steps
from grpokit.monitoring.events import read_events
from grpokit.monitoring.plots import metric_series
from grpokit.monitoring.samples import read_samples
from grpokit.monitoring.sinks import METRICS_FILENAME, read_metrics

REPORT_FILENAME = "report.html"
_ALARM_COLOURS = {
    "over_optimization": "tab:red",
    "entropy_collapse": "tab:purple",
    "ratio_drift": "tab:orange",
}


@dataclass(frozen=True)
class Panel:
    title: str
    keys: tuple[str, ...]  # fnmatch patterns over the logged names, drawn in this order
    look_for: str  # how to read the plot: what a healthy and an unhealthy run look like (the tooltip)
    # the title when none of `needs` was logged (e.g. no gold reward: the panel holds the proxy alone)
    needs: tuple[str, ...] = ()
    title_without: str = ""

    def for_run(self, records: Sequence[dict]) -> Panel:
        if self.needs and not available_keys(records, self.needs):
            return dataclasses.replace(self, title=self.title_without)
        return self


PANELS: tuple[Panel, ...] = (
    Panel(
        "Proxy vs gold (held-out)",
        ("proxy/score", "gold/score", "reward/mean"),
        "Over-optimization: the proxy keeps rising while the gold score falls.",
        needs=("gold/score",),
        title_without="Training reward (no gold reward configured: add gold.rewards to watch over-optimization)",
    ),
    Panel(
        "Entropy per token (nats)",
        (
            "train/entropy_mean",
            "train/entropy_p10",
            "train/entropy_p50",
            "train/entropy_p90",
            "train/high_adv_entropy_mean",
        ),
        "Collapse: the mean and the low percentile head to zero; exploration stops.",
    ),
    Panel(
        "Clip fractions",
        (
            "train/clip_frac_low",
            "train/clip_frac_high",
            "train/clip_cov_frac",
            "train/kl_cov_frac",
            "train/top_entropy_frac",
        ),
        "Fraction of tokens whose ratio was clipped below/above (and the entropy controls' selections).",
    ),
    Panel(
        "Importance ratio",
        ("train/ratio_mean", "train/ratio_std"),  # min/max spikes would flatten these
        "On-policy the mean is 1; a mean drifting from 1 or a growing spread means stale or biased ratios.",
    ),
    Panel(
        "Completion length (tokens)",
        ("completion/length_mean", "completion/length_max"),
        "Length hacking shows as a steady climb toward the generation limit.",
    ),
    Panel(
        "Groups with zero reward std",
        ("frac_reward_zero_std",),
        "Groups whose completions all scored the same carry no advantage: a rising fraction stalls learning.",
    ),
    Panel(
        "Held-out accuracy (%)",
        ("eval/*",),
        "eval/*: the optimized (proxy) reward's accuracies; eval/gold_*: the gold rewards' — a gap that "
        "opens between them is the proxy being gamed.",
    ),
)


DENOISING_STEP_PANEL = Panel("Per denoising step (flow models)", ("flow/step*",), DENOISING_STEPS_LOOK_FOR)


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the HTML report of `run_dir` (default `run_dir/report.html`) and return its path."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / METRICS_FILENAME
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path} not found: is {run_dir} a grpokit run directory?")
    records = read_metrics(metrics_path)
    events = read_events(run_dir)
    figures = []
    for panel in (panel.for_run(records) for panel in PANELS):
        png = draw_panel(records, panel, events)
        if png is not None:
            figures.append((panel, png, describe_panel(records, panel)))
    png = draw_denoising_steps(records)  # flow runs: x = denoising step, not training step
    if png is not None:
        figures.append((DENOISING_STEP_PANEL, png, describe_denoising_steps(records)))
    samples = read_samples(run_dir)
    out = Path(out) if out is not None else run_dir / REPORT_FILENAME
    out.parent.mkdir(parents=True, exist_ok=True)
    page = _html_page(run_dir, summarize(records, events, samples), events, figures, samples)
    out.write_text(page, encoding="utf-8")
    return out


# ---------------------------------------------------------------------------------------------- summary
def summarize(records: Sequence[dict], events: Sequence[dict], samples: Sequence[dict] = ()) -> list[str]:
    """A few plain sentences: steps, gold vs proxy, entropy, ratios, lengths, zero-std groups, alarms, and
    how varied the latest completions are (a policy that answers everything alike shows there first)."""
    lines: list[str] = []
    steps = [r["step"] for r in records if "step" in r]
    if steps:
        lines.append(f"{len({s for s in steps if s > 0})} training steps logged (last step {max(steps)}).")
    reward = describe_change(records, "reward/mean", "Training reward (reward/mean)")
    if reward:
        lines.append(reward + ".")
    gold_steps, gold = metric_series(records, "gold/score")
    if gold:
        best = max(range(len(gold)), key=gold.__getitem__)
        _, proxy = metric_series(records, "proxy/score")
        line = (
            f"Gold score: {gold[0]:.3f} at step {gold_steps[0]}, best {gold[best]:.3f} at step "
            f"{gold_steps[best]}, last {gold[-1]:.3f} at step {gold_steps[-1]}."
        )
        if proxy:
            line += f" Proxy score on the same completions: {proxy[0]:.3f} → {proxy[-1]:.3f}."
        lines.append(line)
        _, restored = metric_series(records, "gold/restored_score")
        if restored:
            lines.append(f"Gold score of the restored best-gold policy: {restored[-1]:.3f}.")
    lines += [
        line
        for line in (
            _trajectory(records, "train/entropy_mean", "Entropy per token", low_is_notable=True),
            _trajectory(records, "completion/length_mean", "Mean completion length"),
        )
        if line
    ]
    _, ratio = metric_series(records, "train/ratio_mean")
    if ratio:
        _, low = metric_series(records, "train/clip_frac_low")
        _, high = metric_series(records, "train/clip_frac_high")
        clipped = max((a + b for a, b in zip(low, high)), default=0.0)
        lines.append(
            f"Importance-ratio mean within [{min(ratio):.3f}, {max(ratio):.3f}]; "
            f"largest clipped fraction in a step {clipped:.3f}."
        )
    _, zero_std = metric_series(records, "frac_reward_zero_std")
    if zero_std:
        lines.append(
            f"Groups with zero reward std: {100 * sum(zero_std) / len(zero_std):.0f}% on average, "
            f"{100 * zero_std[-1]:.0f}% at the last step."
        )
    lines += _completion_variety(samples)
    alarms = [e for e in events if "kind" in e]
    if not alarms:
        lines.append("No alarm fired.")
    else:
        first = alarms[0]
        lines.append(
            f"{len(alarms)} alarm(s); first: {first['kind']} at step {first['step']} "
            f"(action: {first.get('action', 'warn')})."
        )
        restored = [e for e in alarms if e.get("restored_step") is not None]
        if restored:
            lines.append(
                f"Policy restored to the best-gold checkpoint of step {restored[0]['restored_step']}."
            )
    return lines


def _completion_variety(samples: Sequence[dict]) -> list[str]:
    """Distinct completions among the latest training samples and the latest fixed held-out prompts."""
    lines = []
    for kind, what in (("train", "training samples"), ("eval", "fixed held-out prompts (greedy)")):
        rows = [r for r in samples if r.get("kind") == kind]
        if not rows:
            continue
        step = max(r["step"] for r in rows)
        completions = [str(r.get("completion", "")) for r in rows if r["step"] == step]
        distinct = len(set(completions))
        line = f"Latest {what}, step {step}: {distinct} distinct completion(s) among {len(completions)}"
        if distinct == 1 and len(completions) > 1:
            line += f", all {completions[0][:60]!r}: the policy gives every prompt the same answer"
        lines.append(line + ".")
    return lines


def _trajectory(records: Sequence[dict], key: str, what: str, low_is_notable: bool = False) -> str | None:
    steps, values = metric_series(records, key)
    if not values:
        return None
    line = f"{what}: {values[0]:.3g} at step {steps[0]} → {values[-1]:.3g} at step {steps[-1]}"
    if low_is_notable:
        lowest = min(range(len(values)), key=values.__getitem__)
        line += f" (lowest {values[lowest]:.3g} at step {steps[lowest]})"
    return line + "."


def describe_change(records: Sequence[dict], key: str, what: str | None = None, unit: str = "") -> str | None:
    """What one logged series did, in numbers: "reward/mean rose from 0.21 to 0.63 (+200%) between step 1
    and step 200"; None when `key` was never logged.

    A long (per-step, noisy) series is summarized by the means of its first and last tenth (at most 10
    values each, said in the sentence); a short one (evaluations) by its end points and, when it fell,
    its peak. With `unit` "%" the values are percentages and the change is in points.
    """
    steps, values = metric_series(records, key)
    if not values:
        return None
    what = what or key
    if len(values) == 1:
        return f"{what} was {values[0]:.3g}{unit} at step {steps[0]} (one point)"
    k = max(1, min(10, len(values) // 10))
    first, last = sum(values[:k]) / k, sum(values[-k:]) / k
    span = f"between step {steps[0]} and step {steps[-1]}"
    if k > 1:
        span += f" (means of the first and last {k} values)"
    scale = max(abs(first), abs(last))
    if scale == 0 or abs(last - first) <= 0.01 * scale:
        verb = f"stayed at {first:.3g}{unit}" if first == last else f"stayed near {first:.3g}{unit} (last {last:.3g})"
        return f"{what} {verb} {span}"
    verb = "rose" if last > first else "fell"
    if unit == "%":
        change = f" ({last - first:+.1f} points)"
    else:
        change = f" ({100 * (last - first) / abs(first):+.0f}%)" if first != 0 else ""
    peak_note = ""
    peak = max(range(len(values)), key=values.__getitem__)
    if verb == "fell" and k == 1 and 0 < peak < len(values) - 1 and values[peak] > first:
        peak_note = f", after peaking at {values[peak]:.3g}{unit} at step {steps[peak]}"
    return f"{what} {verb} from {first:.3g}{unit} to {last:.3g}{unit}{change} {span}{peak_note}"


def describe_panel(records: Sequence[dict], panel: Panel) -> str:
    """The caption of one panel: what each of its (first four) drawn series did in this run."""
    keys = available_keys(records, panel.keys)
    unit = "%" if panel.title.endswith("(%)") else ""
    sentences = [s for s in (describe_change(records, key, unit=unit) for key in keys[:4]) if s]
    more = f" ({len(keys) - 4} more series drawn)" if len(keys) > 4 else ""
    smoothed = [s for s in sentences if s.endswith(" values)")]
    note = ""
    if len(smoothed) > 1:  # the same averaging for every series: said once
        note = " " + smoothed[0][smoothed[0].rindex("(means of") :].replace("(means", "(Values: means", 1)
        sentences = [s.removesuffix(" " + s[s.rindex("(means of") :]) if s in smoothed else s for s in sentences]
    return "; ".join(sentences) + "." + note + more


# ---------------------------------------------------------------------------------------------- plots
def available_keys(records: Sequence[dict], patterns: Sequence[str]) -> list[str]:
    """Logged numeric keys matching `patterns`, in pattern order, without repeats."""
    logged = []
    for record in records:
        for key, value in record.items():
            if key not in logged and isinstance(value, (int, float)) and not isinstance(value, bool):
                logged.append(key)
    selected: list[str] = []
    for pattern in patterns:
        selected += [k for k in logged if k not in selected and fnmatch.fnmatchcase(k, pattern)]
    return selected


def draw_panel(records: Sequence[dict], panel: Panel, events: Sequence[dict]) -> bytes | None:
    """PNG bytes of one panel with the alarms as vertical lines; None when none of its keys was logged."""
    keys = available_keys(records, panel.keys)
    if not keys:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: heavy import
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 3.0), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for key in keys:
        steps, values = metric_series(records, key)
        faint = key == "reward/mean" and len(keys) > 1  # the noisy per-step training reward
        axes.plot(
            steps,
            values,
            label=key,
            linewidth=0.9 if faint else 1.5,
            alpha=0.45 if faint else 1.0,
            marker="o" if len(steps) < 30 else None,
            markersize=3,
        )
    _draw_events(axes, events)
    axes.set_title(panel.title, fontsize=10)
    axes.set_xlabel("step", fontsize=8)
    axes.tick_params(labelsize=7)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _draw_events(axes, events: Sequence[dict]) -> None:
    labelled: set[str] = set()
    for event in events:
        if "kind" not in event or not isinstance(event.get("step"), (int, float)):
            continue
        kind = event["kind"]
        axes.axvline(
            event["step"],
            color=_ALARM_COLOURS.get(kind, "tab:red"),
            linestyle="--",
            linewidth=1.1,
            label=None if kind in labelled else f"alarm: {kind}",
        )
        labelled.add(kind)
        if event.get("restored_step") is not None:
            axes.axvline(
                event["restored_step"],
                color="tab:green",
                linestyle=":",
                linewidth=1.3,
                label="restored (best gold)",
            )


# ---------------------------------------------------------------------------------------------- page
_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
figure { margin: 1.5rem 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85rem; color: #555; }
table { border-collapse: collapse; font-size: 0.85rem; } td, th { border: 1px solid #ccc; padding: 0.2rem 0.5rem; }
"""


def _html_page(
    run_dir: Path,
    summary: list[str],
    events: Sequence[dict],
    figures: list[tuple[Panel, bytes, str]],
    samples: Sequence[dict] = (),
) -> str:
    def esc(value: Any) -> str:
        if isinstance(value, float) and math.isfinite(value):
            value = f"{value:.4g}"
        return html.escape(str(value))

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>grpokit report: {esc(run_dir.name)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>grpokit run report: {esc(run_dir)}</h1>",
        "<h2>Summary</h2><ul>",
        *(f"<li>{esc(line)}</li>" for line in summary),
        "</ul>",
    ]
    alarms = [e for e in events if "kind" in e]
    if alarms:
        parts.append(
            "<h2>Alarms</h2><table><tr><th>step</th><th>kind</th><th>action</th><th>message</th></tr>"
        )
        parts += [
            f"<tr><td>{esc(e.get('step'))}</td><td>{esc(e['kind'])}</td><td>{esc(e.get('action', ''))}</td>"
            f"<td>{esc(e.get('message', ''))}</td></tr>"
            for e in alarms
        ]
        parts.append("</table>")
    parts.append("<h2>Curves</h2>")
    for panel, png, caption in figures:
        encoded = base64.b64encode(png).decode("ascii")
        parts.append(
            f'<figure><img alt="{esc(panel.title)}" title="{esc(panel.look_for)}" '
            f'src="data:image/png;base64,{encoded}"><figcaption>{esc(caption)}</figcaption></figure>'
        )
    parts += _samples_sections(samples, esc)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------- samples
_MAX_TEXT = 400  # characters of a prompt or completion shown in a table cell


def _completion_text(record: dict) -> str:
    """The completion; for a multi-turn episode, every message after the prompt as `[role] content`."""
    episode = record.get("episode")
    if not episode:
        return str(record.get("completion", ""))
    messages = episode.get("messages", [])
    first = next((i for i, m in enumerate(messages) if m.get("role") == "assistant"), len(messages))
    lines = [f"[{m.get('role')}] {m.get('content', '')}" for m in messages[first:]]
    return "\n".join(lines + [f"(episode end: {episode.get('end')}, {episode.get('turns')} turns)"])


def _samples_sections(samples: Sequence[dict], esc) -> list[str]:
    """The latest training samples, and each fixed held-out prompt's greedy completion across training."""
    def text(value: Any) -> str:
        value = str(value)
        shown = value if len(value) <= _MAX_TEXT else value[:_MAX_TEXT] + f"… (+{len(value) - _MAX_TEXT} chars)"
        return f"<code>{esc(shown)}</code>"

    def scores(rewards: dict) -> str:
        return ", ".join(f"{esc(name)} {esc('None' if v is None else v)}" for name, v in rewards.items())

    parts: list[str] = []
    train = [r for r in samples if r.get("kind") == "train"]
    if train:
        step = max(r["step"] for r in train)
        latest = [r for r in train if r["step"] == step]
        parts.append(f"<h2>Training samples at step {esc(step)} (the latest logged)</h2>")
        parts.append("<table><tr><th>group</th><th>prompt</th><th>completion</th><th>rewards</th><th>total</th>"
                     "<th>advantage</th></tr>")
        parts += [
            f"<tr><td>{esc(r.get('group'))}</td><td>{text(r.get('prompt', ''))}</td>"
            f"<td>{text(_completion_text(r))}</td><td>{scores(r.get('rewards', {}))}</td>"
            f"<td>{esc(r.get('total'))}</td><td>{esc(r.get('advantage'))}</td></tr>"
            for r in latest
        ]
        parts.append("</table>")
    held_out = [r for r in samples if r.get("kind") == "eval"]
    if held_out:
        parts.append("<h2>Held-out prompts across training (greedy completion at each evaluation)</h2>")
        for index in sorted({r["index"] for r in held_out}):
            rows = sorted((r for r in held_out if r["index"] == index), key=lambda r: r["step"])
            parts.append(f"<h3>eval row {esc(index)}: {text(rows[0].get('prompt', ''))}</h3>")
            parts.append("<table><tr><th>step</th><th>completion</th><th>scores</th></tr>")
            parts += [
                f"<tr><td>{esc(r['step'])}</td><td>{text(_completion_text(r))}</td>"
                f"<td>{scores(r.get('rewards', {}))}</td></tr>"
                for r in rows
            ]
            parts.append("</table>")
    return parts
