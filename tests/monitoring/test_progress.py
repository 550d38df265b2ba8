from __future__ import annotations

import io

import torch
from rich.console import Console

from grpokit.monitoring import TrainingProgress
from grpokit.monitoring.progress import format_duration, format_fields


def plain_console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=False, width=80), buffer


def test_non_interactive_output_is_one_plain_line_every_print_every_steps_plus_the_last():
    console, buffer = plain_console()
    with TrainingProgress(10, description="GRPO", console=console, print_every=4) as progress:
        for step in range(1, 11):
            progress.update(step, reward=0.5 + step / 100, kl=torch.tensor(0.00125))

    lines = buffer.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == ["GRPO step 4/10", "GRPO step 8/10", "GRPO step 10/10"]
    assert lines[0].endswith("reward=0.54 kl=0.00125")
    assert "\x1b" not in buffer.getvalue()  # no terminal control codes in CI logs


def test_non_interactive_default_prints_about_twenty_lines_for_a_long_run():
    console, buffer = plain_console()
    with TrainingProgress(1000, console=console) as progress:
        for step in range(1, 1001):
            progress.update(step, reward=1.0)

    assert len(buffer.getvalue().splitlines()) == 20


def test_non_interactive_lines_are_not_wrapped_at_console_width():
    console, buffer = plain_console()
    many_fields = {f"metric_{index}": 0.123456 for index in range(12)}
    with TrainingProgress(1, console=console) as progress:
        progress.update(1, **many_fields)

    assert len(buffer.getvalue().splitlines()) == 1


def test_disabled_progress_prints_nothing():
    console, buffer = plain_console()
    with TrainingProgress(5, console=console, disable=True, print_every=1) as progress:
        for step in range(1, 6):
            progress.update(step, reward=1.0)
        progress.print("eval done")

    assert buffer.getvalue() == ""


def test_print_writes_message_line_when_not_interactive():
    console, buffer = plain_console()
    with TrainingProgress(5, console=console) as progress:
        progress.print("eval accuracy=0.5 [not markup]")

    assert buffer.getvalue() == "eval accuracy=0.5 [not markup]\n"


def test_interactive_bar_shows_step_count_and_live_fields():
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, force_interactive=True, width=140)
    with TrainingProgress(10, description="GRPO", console=console) as progress:
        progress.update(7, reward=0.25)

    output = buffer.getvalue()
    assert "GRPO" in output
    assert "7/10" in output
    assert "reward=0.25" in output


def test_resumed_run_counts_from_start_step():
    console, buffer = plain_console()
    with TrainingProgress(100, console=console, start_step=50, print_every=50) as progress:
        progress.update(100)

    assert buffer.getvalue().startswith("GRPO step 100/100 (100%)")


def test_format_fields_uses_four_significant_digits_for_floats():
    assert format_fields({"reward": 0.123456, "step_tokens": 512, "kl": 1.5e-05}) == (
        "reward=0.1235 step_tokens=512 kl=1.5e-05"
    )


def test_format_duration_is_hours_minutes_seconds():
    assert format_duration(3725.4) == "1:02:05"
    assert format_duration(float("inf")) == "-:--:--"


def test_a_slow_run_prints_a_line_whenever_print_every_seconds_passed(monkeypatch):
    from grpokit.monitoring import progress as progress_module

    clock = {"now": 0.0}
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: clock["now"])
    console, buffer = plain_console()
    with TrainingProgress(100, console=console, print_every=50, print_every_seconds=60) as progress:
        for step, now in [(1, 30.0), (2, 61.0), (3, 90.0), (4, 125.0)]:
            clock["now"] = now
            progress.update(step)
    steps = [line.split(" (")[0] for line in buffer.getvalue().splitlines()]
    assert steps == ["GRPO step 2/100", "GRPO step 4/100"]  # 61 s after start, then 64 s after that
