"""The alarm log (`alarms.jsonl`)."""

from __future__ import annotations


def test_a_resume_drops_the_events_of_the_steps_it_replays(tmp_path):
    from grpokit.monitoring.events import read_events, record_event, truncate_events_after

    for step in (2, 5, 7):
        record_event(tmp_path, {"step": step, "kind": "entropy", "message": "m", "action": "warn"})
    assert truncate_events_after(tmp_path, 5) == 1
    assert [e["step"] for e in read_events(tmp_path)] == [2, 5]
    assert truncate_events_after(tmp_path, 5) == 0
    assert truncate_events_after(tmp_path / "no-run", 3) == 0


def test_a_torn_last_event_is_skipped_with_a_warning_and_cut_by_a_resume(tmp_path):
    import pytest

    from grpokit.monitoring.events import ALARMS_FILENAME, read_events, record_event, truncate_events_after

    record_event(tmp_path, {"step": 2, "kind": "entropy", "message": "m", "action": "warn"})
    path = tmp_path / ALARMS_FILENAME
    path.write_text(path.read_text() + '{"step": 3, "ki')  # killed mid-write
    with pytest.warns(UserWarning, match=rf"{path}:2: skipping a torn last line"):
        assert [e["step"] for e in read_events(tmp_path)] == [2]
    with pytest.warns(UserWarning, match="torn last line"):
        assert truncate_events_after(tmp_path, 3) == 0
    record_event(tmp_path, {"step": 3, "kind": "ratio", "message": "m", "action": "warn"})
    assert [e["step"] for e in read_events(tmp_path)] == [2, 3]  # no warning: the file is whole again


def test_a_bad_event_line_in_the_middle_names_file_and_line(tmp_path):
    import pytest

    from grpokit.monitoring.events import ALARMS_FILENAME, read_events

    (tmp_path / ALARMS_FILENAME).write_text('{"step": 1}\n[1, 2]\n{"step": 3}\n')
    with pytest.raises(ValueError, match=rf"{tmp_path / ALARMS_FILENAME}:2: not a JSON object"):
        read_events(tmp_path)


def test_a_fresh_start_moves_an_earlier_runs_alarms_aside(tmp_path):
    import pytest

    from grpokit.monitoring.events import read_events, record_event, set_events_aside

    record_event(tmp_path, {"step": 1, "kind": "entropy", "message": "m", "action": "warn"})
    with pytest.warns(UserWarning, match="moved it to alarms.20261204T224107Z.jsonl.old"):
        moved = set_events_aside(tmp_path, "20261204T224107Z")
    assert moved.name == "alarms.20261204T224107Z.jsonl.old" and read_events(tmp_path) == []
    assert set_events_aside(tmp_path, "20261204T224108Z") is None  # nothing left to move
