"""The alarm log (`alarms.jsonl`)."""

from __future__ import annotations


def test_a_resume_drops_the_events_of_the_steps_it_replays(tmp_path):
    from grpokit.guards.events import read_events, record_event, truncate_events_after

    for step in (2, 5, 7):
        record_event(tmp_path, {"step": step, "kind": "entropy", "message": "m", "action": "warn"})
    assert truncate_events_after(tmp_path, 5) == 1
    assert [e["step"] for e in read_events(tmp_path)] == [2, 5]
    assert truncate_events_after(tmp_path, 5) == 0
    assert truncate_events_after(tmp_path / "no-run", 3) == 0
