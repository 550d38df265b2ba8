"""The run loop's contract with the trainers (its behaviour is tested through both trainers: tests/trainers/
test_lm_trainer.py, tests/flow/test_trainer.py, tests/guards)."""

from __future__ import annotations

import pytest

from grpokit.flow.trainer import FlowTrainer
from grpokit.guards.callbacks import GuardedTrainer
from grpokit.trainers.lm import LMTrainer
from grpokit.trainers.run_loop import LoopTrainer


def _methods(protocol) -> list[str]:
    return [name for name, value in vars(protocol).items() if callable(value) and not name.startswith("_")]


@pytest.mark.parametrize("trainer_class", [LMTrainer, FlowTrainer])
def test_both_trainers_offer_every_method_the_run_loop_and_the_guards_call(trainer_class):
    assert {"resume_latest", "train_step", "evaluate_in_run", "save_run_checkpoint"} <= set(_methods(LoopTrainer))
    assert set(_methods(GuardedTrainer)) == {"save_tagged_checkpoint", "restore_weights"}
    for protocol in (LoopTrainer, GuardedTrainer):
        missing = [name for name in _methods(protocol) if not callable(getattr(trainer_class, name, None))]
        assert not missing, f"{trainer_class.__name__} lacks {missing} of {protocol.__name__}"
    for attribute in ("plot_keys", "progress_fields"):
        assert getattr(trainer_class, attribute)
