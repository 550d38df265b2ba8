from __future__ import annotations

import itertools
import math

import pytest
import torch

from grpokit.config_schema import ConfigError
from grpokit.guards import (
    EntropyCollapseAlarm,
    EntropyGuard,
    GoldGuard,
    OverOptimizationAlarm,
    RatioGuard,
    ReportWriter,
)
from grpokit.monitoring import read_metrics
from grpokit.monitoring.events import read_events
from grpokit.rewards import RewardRunner, load_reward


class ScriptedGold:
    """A gold reward whose score is scripted per evaluation call (every completion gets it)."""

    def __init__(self, scores):
        self.scores = iter(scores)

    def __call__(self, completions, **_):
        value = next(self.scores)
        return [value] * len(completions)


class Snapshots:
    """Copies the policy's parameters at every evaluation (runs after the guards)."""

    def __init__(self):
        self.at_step: dict[int, list[torch.Tensor]] = {}

    def on_evaluate(self, trainer, step, metrics):
        self.at_step.setdefault(step, [p.detach().clone() for p in trainer.model.parameters()])


def _gold_runner(scores):
    return RewardRunner([load_reward(ScriptedGold(scores), name="scripted")])


def test_gold_guard_logs_gold_and_proxy_scores_and_keeps_the_best_checkpoint(tmp_path, make_guarded_trainer):
    guard = GoldGuard(_gold_runner([0.2, 0.7, 0.4]), num_prompts=4, samples_per_prompt=2)
    trainer = make_guarded_trainer(tmp_path / "run", callbacks=[guard])
    trainer.train()
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "gold/score" in r]
    logged = [(r["step"], r["gold/score"], r["gold/best"], r["gold/best_step"]) for r in records]
    expected = [(0, 0.2, 0.2, 0.0), (1, 0.7, 0.7, 1.0), (2, 0.4, 0.7, 1.0)]
    assert [value for row in logged for value in row] == pytest.approx([v for row in expected for v in row])
    for r in records:  # the proxy is exact_match scored on the very completions gold scored
        assert r["gold/gap"] == pytest.approx(r["proxy/score"] - r["gold/score"])
        assert r["proxy/score"] == pytest.approx(r["proxy/exact_match"] + 0.1 * r["proxy/digits"])
        assert r["gold/scripted"] == r["gold/score"]
    best = tmp_path / "run" / "checkpoints" / "best"
    assert (best / "COMPLETE").read_text().strip() == "1"


def test_over_optimization_restore_best_reloads_the_best_gold_weights_and_stops(
    tmp_path, make_guarded_trainer
):
    # Gold 0.2 → 0.8 (step 1, best) → 0.5 (step 2): falls; the proxy condition is switched off
    # (any proxy change passes) so the scripted gold alone decides. The 4th call scores the restored policy.
    alarm = OverOptimizationAlarm(window=2, min_proxy_rise=-math.inf)
    guard = GoldGuard(
        _gold_runner([0.2, 0.8, 0.5, 0.8]),
        num_prompts=4,
        samples_per_prompt=2,
        alarm=alarm,
        action="restore_best",
    )
    snapshots = Snapshots()
    trainer = make_guarded_trainer(tmp_path / "run", callbacks=[guard, snapshots], training={"max_steps": 6})
    trainer.train()

    assert trainer.should_stop and trainer.step == 2
    assert any(not torch.equal(a, b) for a, b in zip(snapshots.at_step[1], snapshots.at_step[0]))
    for restored, best in zip(trainer.model.parameters(), snapshots.at_step[1]):
        assert torch.equal(restored, best)
    (event,) = read_events(tmp_path / "run")
    assert (event["kind"], event["step"], event["action"], event["restored_step"]) == (
        "over_optimization",
        2,
        "restore_best",
        1,
    )
    last = read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]
    assert last["alarm/over_optimization"] == 1.0 and last["gold/restored_score"] == pytest.approx(0.8)
    assert last["gold/trend"] == pytest.approx(-0.3)


def test_entropy_guard_with_stop_ends_the_run_after_the_alarm_step(tmp_path, make_guarded_trainer):
    guard = EntropyGuard(EntropyCollapseAlarm(floor=1e6), action="stop")  # every entropy is below
    trainer = make_guarded_trainer(tmp_path / "run", callbacks=[guard], training={"max_steps": 5})
    trainer.train()
    assert trainer.step == 1
    (event,) = read_events(tmp_path / "run")
    assert (event["kind"], event["step"], event["action"]) == ("entropy_collapse", 1, "stop")
    step_one = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["step"] == 1]
    assert any(r.get("alarm/entropy_collapse") == 1.0 for r in step_one)


def test_restore_without_a_best_checkpoint_returns_none(tmp_path, make_guarded_trainer):
    trainer = make_guarded_trainer(tmp_path / "run")
    assert trainer.restore_weights("best") is None


def test_config_sections_build_the_guards_in_order_with_the_report_last(tmp_path, make_guarded_trainer):
    trainer = make_guarded_trainer(
        tmp_path / "run",
        gold={"rewards": [{"function": "exact_match", "name": "gold_exact"}], "num_prompts": 4},
        guards={"entropy": {"floor": 0.01, "action": "stop"}, "over_optimization": {"window": 4}},
        logging={"plot": True},
    )
    kinds = [type(c) for c in trainer.callbacks]
    assert kinds == [GoldGuard, EntropyGuard, RatioGuard, ReportWriter]
    gold = trainer.callbacks[0]
    assert gold.gold_runner.names == ["gold_exact"] and gold.alarm.points.maxlen == 4
    assert trainer.callbacks[1].action == "stop"


def test_without_gold_only_the_default_ratio_guard_watches(tmp_path, make_guarded_trainer):
    assert [type(c) for c in make_guarded_trainer(tmp_path / "a").callbacks] == [RatioGuard]
    assert make_guarded_trainer(tmp_path / "b", guards={"ratio": {"action": "off"}}).callbacks == []


@pytest.mark.parametrize(
    "sections, message",
    [
        ({"guards": {"entropy": {"floor": 0.1, "window": 1}}}, "guards.entropy.window: must be >= 2"),
        ({"guards": {"ratio": {"action": "panic"}}}, "guards.ratio.action: 'panic' is not allowed"),
        ({"gold": {"reward": []}}, "unknown key"),
    ],
)
def test_bad_guard_config_is_rejected_with_the_field_named(tmp_path, make_guarded_trainer, sections, message):
    with pytest.raises(ConfigError, match=message):
        make_guarded_trainer(tmp_path / "run", **sections)


def test_a_guarded_run_writes_its_report_at_the_end(tmp_path, make_guarded_trainer):
    trainer = make_guarded_trainer(
        tmp_path / "run",
        gold={"rewards": [{"function": "exact_match"}], "num_prompts": 4, "samples_per_prompt": 1},
        logging={"plot": True},
    )
    trainer.train()
    page = (tmp_path / "run" / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 5 and "Gold score" in page


def test_scripted_gold_is_used_once_per_evaluation():
    gold = ScriptedGold(itertools.count())
    assert gold(["a", "b"]) == [0, 0] and gold(["c"]) == [1]


def test_gold_rewards_are_bounded_by_the_configs_reward_timeout_like_the_proxy_rewards():
    from grpokit.guards.callbacks import build_gold_runner
    from grpokit.trainers.lm_config import load_lm_config

    minimal = {"model": {"name_or_path": "m"}, "data": {"path": "d"}, "rewards": [{"function": "exact_match"}]}
    gold = {"rewards": [{"function": "exact_match"}, {"function": "exact_match", "name": "own", "timeout_seconds": 3}]}
    runner = build_gold_runner(load_lm_config({**minimal, "gold": gold, "rewards_timeout_seconds": 7}))
    assert [r.timeout_seconds for r in runner.rewards] == [7, 3]
    runner = build_gold_runner(load_lm_config({**minimal, "gold": gold, "rewards_timeout_seconds": None}))
    assert [r.timeout_seconds for r in runner.rewards] == [None, 3]
