"""A mechanism is one decorated function: registering it is all it takes for a Preset to accept it, the loss
(or the trainers' advantage entry point) to use it and `grpokit presets` to list it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from grpokit.algorithms import (
    ADVANTAGE_ESTIMATORS,
    AGGREGATIONS,
    KL_ESTIMATORS_REGISTRY,
    PRESETS,
    SURROGATES,
    aggregate_loss,
    compute_advantages,
    kl_estimate,
    policy_loss,
    register_advantage,
    register_aggregation,
    register_kl_estimator,
    register_surrogate,
)

ALGORITHMS = Path(__file__).parents[2] / "src" / "grpokit" / "algorithms"


@pytest.fixture
def scratch_registries(monkeypatch):
    """Registrations made in a test disappear after it."""
    for registry in (SURROGATES, ADVANTAGE_ESTIMATORS, KL_ESTIMATORS_REGISTRY, AGGREGATIONS):
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))


def test_a_new_surrogate_is_one_function_that_presets_the_loss_and_the_cli_use(scratch_registries, capsys):
    @register_surrogate("scaled_pg", summary="−c·A·r, a test surrogate")
    def scaled_pg(ratio, advantages, *, eps_high):  # a keyword-only parameter is read from the Preset field
        loss = -eps_high * advantages * ratio
        none = torch.zeros_like(loss, dtype=torch.bool)
        return loss, none, none

    preset = PRESETS["grpo"].replace(surrogate="scaled_pg", eps_high=3.0, beta=0.0)
    logp = torch.zeros(1, 2, requires_grad=True)
    loss, _ = policy_loss(preset, logp, torch.zeros(1, 2), torch.tensor([2.0]), torch.ones(1, 2))
    assert loss.item() == pytest.approx(-6.0)  # −3·2·1 per token, per-sequence token mean

    from grpokit.cli import main

    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "scaled_pg" in out and "a test surrogate" in out


def test_a_parameter_that_is_not_a_preset_field_is_named_when_a_preset_uses_it(scratch_registries):
    @register_surrogate("needs_temperature", summary="reads a field Preset lacks")
    def needs_temperature(ratio, advantages, *, temperature):
        raise AssertionError("never called")

    with pytest.raises(TypeError, match=r"needs_temperature.*\['temperature'\].*not Preset fields"):
        PRESETS["grpo"].replace(surrogate="needs_temperature")


def test_registering_another_function_under_a_taken_name_is_an_error(scratch_registries):
    with pytest.raises(ValueError, match="'ppo_clip' is already registered"):
        register_surrogate("ppo_clip", summary="a second PPO")(lambda ratio, advantages: None)


def test_a_new_advantage_estimator_is_what_compute_advantages_calls(scratch_registries):
    @register_advantage("max_baseline", summary="R − max_g R")
    def max_baseline(rewards, weights, group_ids):
        best = torch.full((int(group_ids.max()) + 1,), -torch.inf).scatter_reduce(0, group_ids, rewards, "amax")
        return rewards - best[group_ids]

    preset = PRESETS["grpo"].replace(advantage="max_baseline")
    adv = compute_advantages(preset, torch.tensor([1.0, 3.0, 2.0]), None, torch.tensor([0, 0, 1]))
    torch.testing.assert_close(adv, torch.tensor([-2.0, 0.0, 0.0]))


def test_a_new_kl_estimator_and_aggregation_are_one_function_each(scratch_registries):
    register_kl_estimator("k2x2", summary="2·k2")(lambda d: d.square())
    register_aggregation("sum_over_sequences", summary="Σ m·L / N")(
        lambda masked, m, num_sequences, num_tokens, max_len: masked.sum() / num_sequences
    )
    assert kl_estimate(torch.tensor([0.5]), torch.tensor([0.0]), "k2x2").item() == pytest.approx(0.25)
    mask = torch.tensor([[1, 0], [1, 1]])
    assert aggregate_loss(torch.ones(2, 2), mask, "sum_over_sequences").item() == pytest.approx(1.5)
    PRESETS["grpo"].replace(kl_estimator="k2x2", aggregation="sum_over_sequences")  # valid choices now


def test_algorithms_imports_nothing_else_of_grpokit():
    """The math layer is pure: torch and its own modules only (STYLE.md)."""
    offenders = []
    for path in sorted(ALGORITHMS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level > 1 or (node.level == 0 and module.startswith("grpokit")
                                      and not module.startswith("grpokit.algorithms")):
                    offenders.append(f"{path.name}: from {'.' * node.level}{module}")
            elif isinstance(node, ast.Import):
                offenders += [f"{path.name}: import {a.name}" for a in node.names
                              if a.name.startswith("grpokit") and not a.name.startswith("grpokit.algorithms")]
    assert offenders == []
