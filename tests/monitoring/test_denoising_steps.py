"""The per-denoising-step panel of `grpokit report` (flow runs)."""

from __future__ import annotations

import pytest

from grpokit.monitoring import MetricsLogger
from grpokit.monitoring.denoising_steps import describe_denoising_steps, draw_denoising_steps, per_step_means
from grpokit.report import write_report


def _records():
    return [
        {"step": 0, "eval/reward/mean": 1.0},  # an evaluation record: no per-step metrics
        {"step": 1, "flow/step00/raw_ratio_mean": 1.0, "flow/step01/raw_ratio_mean": 0.98,
         "flow/step00/grad_norm": 1.0, "flow/step01/grad_norm": 4.0},
        {"step": 2, "flow/step00/raw_ratio_mean": 0.99, "flow/step01/raw_ratio_mean": 1.0,
         "flow/step00/grad_norm": 3.0, "flow/step01/grad_norm": 8.0},
        {"step": 3, "flow/step01/raw_ratio_mean": 0.96, "flow/step01/grad_norm": float("nan")},  # a window: step 1 only
    ]


def test_per_step_means_average_each_step_over_the_records_that_logged_it():
    means = per_step_means(_records())
    assert means["raw_ratio_mean"] == pytest.approx({0: 0.995, 1: (0.98 + 1.0 + 0.96) / 3})
    assert means["grad_norm"] == pytest.approx({0: 2.0, 1: 6.0})  # the NaN is left out
    # halves split at the median training step (2) of the records with per-step metrics
    assert per_step_means(_records(), half=0)["raw_ratio_mean"] == pytest.approx({0: 0.995, 1: 0.99})
    assert per_step_means(_records(), half=1)["raw_ratio_mean"] == pytest.approx({1: 0.96})


def test_caption_names_the_most_left_shifted_step_and_the_gradient_spread():
    caption = describe_denoising_steps(_records())
    assert "raw ratio mean lowest at step 1 (0.980000)" in caption
    assert "gradient norm largest at step 1, 3.0× the smallest (step 0)" in caption
    assert describe_denoising_steps([{"step": 1, "reward/mean": 0.5}]) == "No per-step metrics were logged."


def test_a_flow_run_gets_the_panel_and_a_language_model_run_does_not(tmp_path):
    assert draw_denoising_steps([{"step": 1, "train/ratio_mean": 1.0}]) is None
    assert draw_denoising_steps(_records()).startswith(b"\x89PNG")
    for name, records in (("flow", _records()), ("lm", [{"step": 1, "train/ratio_mean": 1.0}])):
        with MetricsLogger(tmp_path / name, tensorboard=False) as logger:
            for record in records:
                logger.log(record["step"], {k: v for k, v in record.items() if k != "step"})
        page = write_report(tmp_path / name).read_text()
        assert ("Per denoising step (flow models)" in page) == (name == "flow")
