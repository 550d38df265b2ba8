"""What a checkpoint remembers of the guards: their alarms' windows and latches, the best gold score
and its step, and how the run ended ("completed", "stopped by <alarm> at step N", "restored best from
step N").

It is stored in the checkpoint's `trainer_state.json` (``extra_state["guards"]`` and
``extra_state["run_end"]``), so it is written atomically with the weights it belongs to, and a
resumed run's guards continue where they were: an over-optimization guard that already knows a best
gold of 0.41 does not overwrite `checkpoints/best` with a worse policy, and a run a guard stopped is
not trained on by a plain rerun (`grpokit train --continue` or `guards.continue_after_stop: true`).
"""

from __future__ import annotations

from typing import Any

RUN_END_KEY = "run_end"
GUARDS_KEY = "guards"

ALARM_NAMES = {  # alarm kind → how a message names its guard
    "over_optimization": "the over-optimization guard",
    "entropy_collapse": "the entropy-collapse guard",
    "ratio_drift": "the ratio-drift guard",
}


def guard_states(callbacks: list) -> dict[str, dict]:
    """`{key: state}` of every callback with a `state_dict()`; keys are class names (#2, #3 for repeats)."""
    return {key: callback.state_dict() for key, callback in _keyed(callbacks)}


def load_guard_states(callbacks: list, states: dict[str, dict]) -> list[str]:
    """Put saved states back into the matching callbacks; returns the keys no callback claimed."""
    claimed = set()
    for key, callback in _keyed(callbacks):
        if key in states:
            callback.load_state_dict(states[key])
            claimed.add(key)
    return sorted(set(states) - claimed)


def _keyed(callbacks: list) -> list[tuple[str, Any]]:
    seen: dict[str, int] = {}
    keyed = []
    for callback in callbacks:
        if not (hasattr(callback, "state_dict") and hasattr(callback, "load_state_dict")):
            continue
        name = type(callback).__name__
        seen[name] = seen.get(name, 0) + 1
        keyed.append((name if seen[name] == 1 else f"{name}#{seen[name]}", callback))
    return keyed


def run_end(*, step: int, max_steps: int, stop: dict | None, stopped: bool) -> dict:
    """How a run ended, as JSON: `stop` is what the acting guard recorded (kind, step, action,
    restored_step); `stopped` without it means a callback of the user's stopped the run."""
    if stop is not None:
        status = "restored" if stop.get("restored_step") is not None else "stopped"
        return {"status": status, **stop}
    if stopped and step < max_steps:
        return {"status": "stopped", "kind": "callback", "step": step}
    return {"status": "completed", "step": step}


def is_guard_stop(end: dict | None) -> bool:
    """True when the run was ended early by a guard (or a callback): a rerun must not silently train on."""
    return end is not None and end.get("status") in ("stopped", "restored")


def describe_run_end(end: dict) -> str:
    """ "stopped by the over-optimization guard at step 120 and restored best (step 80)" and the like."""
    status = end.get("status")
    if status == "completed":
        return f"completed at step {end.get('step')}"
    who = ALARM_NAMES.get(end.get("kind", ""), "a callback" if end.get("kind") == "callback" else
                          f"the {end.get('kind')} guard")
    text = f"stopped by {who} at step {end.get('step')}"
    if status == "restored":
        text += f" and restored best (step {end.get('restored_step')})"
    return text
