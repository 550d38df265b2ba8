from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from grpokit.monitoring import ema_smooth, plot_metrics
from grpokit.monitoring.plots import metric_series, select_keys


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


@pytest.fixture
def metrics_file(tmp_path):
    records = [
        {
            "step": step,
            "time": 1000.0 + step,
            "reward/mean": step / 20,
            "rewards/accuracy/mean": (step % 3) / 2,
            "kl": 0.001 * step,
            "grad_norm": 1.0 / step,
            "unrelated": 5,
        }
        for step in range(1, 21)
    ]
    return write_jsonl(tmp_path / "metrics.jsonl", records)


def test_plot_writes_non_trivial_png_with_one_subplot_per_default_key(tmp_path, metrics_file):
    out = plot_metrics(metrics_file, tmp_path / "plots" / "curves.png", markers=[(10, "alarm: kl")])

    assert out == tmp_path / "plots" / "curves.png"
    assert out.stat().st_size > 10_000
    with Image.open(out) as image:
        pixels = np.asarray(image.convert("RGB"))
    # 4 default keys present (reward/mean, rewards/accuracy/mean, kl, grad_norm) -> 3 columns x 2 rows.
    assert pixels.shape == (520, 1260, 3)
    assert pixels.std() > 10  # not a blank canvas


def test_plot_only_the_requested_keys_and_skips_missing_ones(tmp_path, metrics_file):
    out = plot_metrics(metrics_file, tmp_path / "one.png", keys=["kl", "does_not_exist"], smooth=0.6)

    with Image.open(out) as image:
        assert image.size == (420, 260)  # a single subplot


def test_plot_with_no_matching_key_lists_the_available_ones(tmp_path, metrics_file):
    with pytest.raises(ValueError, match="available: .*'unrelated'"):
        plot_metrics(metrics_file, tmp_path / "none.png", keys=["missing"])


def test_select_keys_follows_pattern_order_then_file_order_without_repeats():
    available = ["kl", "rewards/b/mean", "reward/mean", "rewards/a/mean", "rewards/a/std"]

    assert select_keys(available, ["reward/mean", "rewards/*/mean", "kl", "rewards/a/*"]) == [
        "reward/mean",
        "rewards/b/mean",
        "rewards/a/mean",
        "kl",
        "rewards/a/std",
    ]


def test_metric_series_skips_records_without_the_key_and_null_values():
    records = [{"step": 1, "kl": 0.5}, {"step": 2}, {"step": 3, "kl": None}, {"step": 4, "kl": 2}]

    assert metric_series(records, "kl") == ([1, 4], [0.5, 2.0])


def test_ema_smooth_matches_hand_computed_debiased_average():
    # weight 0.5: m1 = 0.5*1 = 0.5 -> 0.5/(1-0.5) = 1; m2 = 0.25 + 0.5*3 = 1.75 -> 1.75/0.75 = 7/3
    assert ema_smooth([1.0, 3.0], 0.5) == pytest.approx([1.0, 7 / 3])


def test_ema_smooth_passes_nan_through_without_updating_the_average():
    smoothed = ema_smooth([1.0, math.nan, 3.0], 0.5)

    assert smoothed[0] == 1.0 and math.isnan(smoothed[1]) and smoothed[2] == pytest.approx(7 / 3)


def test_ema_smooth_weight_zero_is_identity_and_weight_one_is_rejected():
    assert ema_smooth([4.0, -2.0], 0.0) == [4.0, -2.0]
    with pytest.raises(ValueError):
        ema_smooth([1.0], 1.0)
