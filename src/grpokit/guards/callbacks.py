"""Trainer callbacks that feed the alarms from the logged metrics and act on them.

The trainer calls ``on_step_end(trainer, step, metrics)`` after each step (evaluation metrics of
that step included, before they are logged), ``on_evaluate(trainer, step, eval_metrics)`` inside
each evaluation (before the metrics are returned and logged) and ``on_train_end(trainer)``. A
callback may add keys to the metrics it receives (they are logged with them) and may set
``trainer.should_stop``. Order matters: build the list with :func:`with_guards`.

Actions (see `grpokit.guards.config`): "warn" logs and records the alarm; "stop" ends the run
after this step; "restore_best" loads the best-gold checkpoint's policy weights, then stops.

Guards act on a trainer only through :class:`GuardedTrainer` (they import no trainer).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Protocol

from grpokit.guards.alarms import Alarm, EntropyCollapseAlarm, OverOptimizationAlarm, RatioDriftAlarm
from grpokit.guards.config import ACTIONS
from grpokit.monitoring.events import record_event

log = logging.getLogger("grpokit.guards")

BEST_TAG = "best"  # checkpoints/best: the policy with the highest gold score so far


class GuardedTrainer(Protocol):
    """What a guard's action needs of the trainer it watches (the LM and flow trainers have it).

    The gold guard also samples held-out completions through the trainer's `engine`, `policy.tokenizer`,
    `eval_data`, `reward_runner` and `sampling_params` (an LM trainer's).
    """

    run_dir: Path  # alarms.jsonl goes here
    should_stop: bool  # set to end the run after this step
    stop_reason: dict | None  # the first stopping alarm, saved with the final checkpoint

    def save_tagged_checkpoint(self, tag: str) -> Path:
        """The current weights as `checkpoints/<tag>`, never pruned."""

    def restore_weights(self, tag: str) -> int | None:
        """Load the policy weights of `checkpoints/<tag>` in place; its step, or None when there is none."""


def act(trainer: GuardedTrainer, alarm: Alarm, action: str, metrics: dict | None = None) -> int | None:
    """Log and record `alarm`, then apply `action`; returns the restored checkpoint's step, if any."""
    if action not in ACTIONS:
        raise ValueError(f"unknown guard action {action!r}; choose from {ACTIONS}")
    log.warning("step %d: %s alarm: %s (action: %s)", alarm.step, alarm.kind, alarm.message, action)
    event = {
        "step": alarm.step,
        "kind": alarm.kind,
        "message": alarm.message,
        "action": action,
        "values": dict(alarm.values),
    }
    if metrics is not None:
        metrics[f"alarm/{alarm.kind}"] = 1.0
    restored_step = None
    reason = {"kind": alarm.kind, "step": alarm.step, "action": action}
    if action in ("stop", "restore_best"):
        trainer.should_stop = True
        # What the final checkpoint records as the run's end (see grpokit.guards.state): the first
        # stopping alarm, unless a later one of the same step restored other weights.
        if getattr(trainer, "stop_reason", None) is None or action == "restore_best":
            trainer.stop_reason = reason
    if action == "restore_best":
        restored_step = trainer.restore_weights(BEST_TAG)
        if restored_step is None:
            log.warning(
                "no best-gold checkpoint to restore (set gold.rewards); stopping with the current weights"
            )
        else:
            log.warning("restored the policy weights of the best-gold checkpoint (step %d)", restored_step)
        event["restored_step"] = reason["restored_step"] = restored_step
    record_event(trainer.run_dir, event)
    return restored_step


class EntropyGuard:
    """Feeds `metric` (default train/entropy_mean) to an :class:`EntropyCollapseAlarm` every step."""

    def __init__(self, alarm: EntropyCollapseAlarm, action: str = "warn", metric: str = "train/entropy_mean"):
        self.alarm, self.action, self.metric = alarm, action, metric

    def on_step_end(self, trainer, step: int, metrics: dict) -> None:
        value = metrics.get(self.metric)
        if value is None:
            return
        alarm = self.alarm.update(step, float(value))
        if alarm is not None:
            act(trainer, alarm, self.action, metrics)

    def state_dict(self) -> dict:
        return {"alarm": self.alarm.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.alarm.load_state_dict(state["alarm"])


class RatioGuard:
    """Feeds train/ratio_mean, train/ratio_std and the clip fractions to a :class:`RatioDriftAlarm`."""

    def __init__(self, alarm: RatioDriftAlarm, action: str = "warn"):
        self.alarm, self.action = alarm, action

    def on_step_end(self, trainer, step: int, metrics: dict) -> None:
        if "train/ratio_mean" not in metrics:
            return  # a skipped step (every group all-equal) trains nothing
        alarm = self.alarm.update(
            step,
            metrics["train/ratio_mean"],
            metrics.get("train/ratio_std"),
            metrics.get("train/clip_frac_low"),
            metrics.get("train/clip_frac_high"),
        )
        if alarm is not None:
            act(trainer, alarm, self.action, metrics)

    def state_dict(self) -> dict:
        return {"alarm": self.alarm.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.alarm.load_state_dict(state["alarm"])


class GoldGuard:
    """At every trainer evaluation: score proxy and gold rewards on the same held-out completions,
    keep `checkpoints/best` at each new best gold score, and run the over-optimization alarm.

    Logs ``gold/*`` and ``proxy/*`` (see :func:`grpokit.guards.gold.score_gold_and_proxy`),
    ``gold/best``, ``gold/best_step``, and with an alarm ``proxy/trend`` and ``gold/trend`` (fitted
    change over its window). After a restore it scores the restored policy as ``gold/restored_score``.

    ``gold/score`` is a mean reward in the gold rewards' own units (0–1 for a 0/1 verifier), like
    every alarm threshold on it; accuracies are the evaluation's ``eval/gold_*``, in percent.
    `checkpoints/best` moves only to a strictly higher gold score than any seen before, and the
    best score and step are part of the checkpointed state (`state_dict`), so a resumed run never
    replaces `best` with a worse policy.
    """

    def __init__(
        self,
        gold_runner,
        *,
        num_prompts: int = 100,
        samples_per_prompt: int = 4,
        temperature: float | None = None,
        alarm: OverOptimizationAlarm | None = None,
        action: str = "warn",
        keep_best: bool = True,
        seed_offset: int = 7_777_777,
    ):
        self.gold_runner = gold_runner
        self.num_prompts = num_prompts
        self.samples_per_prompt = samples_per_prompt
        self.temperature = temperature
        self.alarm = alarm
        self.action = action
        self.keep_best = keep_best
        self.seed_offset = seed_offset
        self.best_gold = -math.inf
        self.best_step: int | None = None
        self.alarm_step: int | None = None
        self.restored_step: int | None = None

    def score(self, trainer) -> dict[str, float]:
        """Gold and proxy metrics of the trainer's current policy (same sampling seed every call)."""
        from grpokit.guards.gold import score_gold_and_proxy

        # One fixed seed: two evaluations differ by the policy only, not by the draw.
        params = dataclasses.replace(
            trainer.sampling_params(0, temperature=self.temperature),
            seed=trainer.config.training.seed + self.seed_offset,
        )
        return score_gold_and_proxy(
            trainer.engine,
            trainer.policy.tokenizer,
            trainer.eval_data,
            trainer.reward_runner,
            self.gold_runner,
            num_prompts=self.num_prompts,
            samples_per_prompt=self.samples_per_prompt,
            sampling=params,
        )

    def on_evaluate(self, trainer, step: int, metrics: dict) -> None:
        if trainer.eval_data is None or self.restored_step is not None:
            return  # after a restore the run is over; the restored policy was scored already
        scores = self.score(trainer)
        metrics.update(scores)
        gold, proxy = scores["gold/score"], scores["proxy/score"]
        if math.isfinite(gold) and gold > self.best_gold:
            self.best_gold, self.best_step = gold, step
            if self.keep_best:
                trainer.save_tagged_checkpoint(BEST_TAG)
        metrics["gold/best"] = self.best_gold
        metrics["gold/best_step"] = float(self.best_step if self.best_step is not None else step)
        if self.alarm is None:
            return
        alarm = self.alarm.update(step, proxy, gold)
        metrics["proxy/trend"], metrics["gold/trend"] = self.alarm.trends()
        if alarm is None or self.alarm_step is not None:
            return  # act on the first alarm only: later ones come from the same over-optimization
        self.alarm_step = step
        restored = act(trainer, alarm, self.action, metrics)
        if restored is not None:
            self.restored_step = restored
            metrics["gold/restored_score"] = self.score(trainer)["gold/score"]

    def state_dict(self) -> dict:
        return {
            "best_gold": self.best_gold if math.isfinite(self.best_gold) else None,  # −inf: none yet
            "best_step": self.best_step,
            "alarm_step": self.alarm_step,
            "restored_step": self.restored_step,
            "alarm": self.alarm.state_dict() if self.alarm is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.best_gold = -math.inf if state["best_gold"] is None else float(state["best_gold"])
        self.best_step = state["best_step"]
        self.alarm_step, self.restored_step = state["alarm_step"], state["restored_step"]
        if self.alarm is not None and state.get("alarm") is not None:
            self.alarm.load_state_dict(state["alarm"])

    def on_continue(self, trainer) -> None:
        """The user trains on after this guard stopped the run: watch and act again (best kept)."""
        self.alarm_step = self.restored_step = None


class ReportWriter:
    """Writes `run_dir/report.html` (see `grpokit.report`) when training ends."""

    def on_train_end(self, trainer) -> None:
        from grpokit.report import write_report

        try:
            path = write_report(trainer.run_dir)
        except Exception:  # a report must never cost the user a finished run; the checkpoint is saved
            log.exception("could not write the run report")
            return
        log.info("run report: %s", path)


def build_gold_runner(config):
    """The `gold.rewards` of an `LMTrainConfig` as one RewardRunner; None when there are none."""
    if not config.gold.rewards:
        return None
    from grpokit.rewards import RewardRunner
    from grpokit.rewards.loader import load_configured_reward

    # bounded like the proxy rewards: a gold reward that hangs must not hang the run's evaluations
    return RewardRunner([load_configured_reward(r, config.rewards_timeout_seconds) for r in config.gold.rewards],
                        on_error=config.on_reward_error)


def build_guards(config, gold_runner=None) -> list:
    """The guard callbacks an `LMTrainConfig` asks for (`gold:` and `guards:` sections); `gold_runner`
    is built from `gold.rewards` unless given."""
    guards = config.guards
    built: list = []
    if config.gold.rewards:
        gold_runner = gold_runner if gold_runner is not None else build_gold_runner(config)
        o = guards.over_optimization
        alarm = (
            None
            if o.action == "off"
            else OverOptimizationAlarm(
                o.window,
                min_proxy_rise=o.min_proxy_rise,
                min_gold_fall=o.min_gold_fall,
                min_drop_from_best=o.min_drop_from_best,
                patience=o.patience,
            )
        )
        built.append(
            GoldGuard(
                gold_runner,
                num_prompts=config.gold.num_prompts,
                samples_per_prompt=config.gold.samples_per_prompt,
                temperature=config.eval.temperature,
                alarm=alarm,
                action=o.action,
                keep_best=config.gold.keep_best,
            )
        )
    e = guards.entropy
    if e.active:
        built.append(
            EntropyGuard(
                EntropyCollapseAlarm(e.floor, e.max_drop_per_step, window=e.window, patience=e.patience),
                e.action,
                e.metric,
            )
        )
    r = guards.ratio
    if r.action != "off":
        built.append(
            RatioGuard(
                RatioDriftAlarm(r.max_mean_shift, r.max_std, r.max_clip_frac, patience=r.patience), r.action
            )
        )
    return built


def with_guards(config, callbacks: list | None = None, gold_runner=None) -> list:
    """The config's guards first (so user callbacks see their metrics), then `callbacks`, then the
    report writer when `logging.plot` is on (last, so it sees every alarm)."""
    ordered = [*build_guards(config, gold_runner), *(callbacks or [])]
    if config.logging.plot:
        ordered.append(ReportWriter())
    return ordered
