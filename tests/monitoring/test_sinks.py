from __future__ import annotations

import json
import math
import sys
import types
import warnings

import numpy as np
import pytest
import torch

from grpokit.monitoring import MetricsLogger, read_metrics


def jsonl_records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def tensorboard_scalars(log_dir, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def test_log_writes_one_flushed_json_line_per_step_with_step_time_and_metrics(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.log(1, {"reward/mean": 0.5, "tokens": 12})
    logger.log(2, {"reward/mean": 0.75, "tokens": 7})

    records = jsonl_records(tmp_path)  # read before close: every line must already be flushed

    assert [record["step"] for record in records] == [1, 2]
    assert [record["reward/mean"] for record in records] == [0.5, 0.75]
    assert [record["tokens"] for record in records] == [12, 7]
    assert all(isinstance(record["time"], float) for record in records)
    logger.close()


def test_tensors_and_numpy_scalars_become_numbers_and_non_finite_becomes_null(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log(
            3,
            {
                "loss": torch.tensor(0.25),
                "count": torch.tensor(4),
                "np_value": np.float32(1.5),
                "flag": True,
                "nan_metric": float("nan"),
                "inf_metric": torch.tensor(float("inf")),
            },
        )

    (record,) = jsonl_records(tmp_path)
    assert record["loss"] == 0.25
    assert record["count"] == 4 and isinstance(record["count"], int)
    assert record["np_value"] == 1.5
    assert record["flag"] == 1
    assert record["nan_metric"] is None
    assert record["inf_metric"] is None


@pytest.mark.parametrize("bad_value", [torch.ones(2), "high", None])
def test_non_scalar_metric_is_rejected(tmp_path, bad_value):
    with MetricsLogger(tmp_path, tensorboard=False) as logger, pytest.raises(TypeError, match="bad"):
        logger.log(1, {"bad": bad_value})


def test_reserved_metric_name_is_rejected(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger, pytest.raises(ValueError, match="reserved"):
        logger.log(1, {"step": 3})


def test_truncate_after_keeps_only_steps_up_to_resume_point_and_appending_continues(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        for step in (1, 2, 3, 4):
            logger.log(step, {"reward": step / 10})
    with MetricsLogger(tmp_path, tensorboard=False) as resumed:
        dropped = resumed.truncate_after(2)
        resumed.log(3, {"reward": 0.9})

    assert dropped == 2
    assert [(r["step"], r["reward"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [
        (1, 0.1),
        (2, 0.2),
        (3, 0.9),
    ]


def test_read_metrics_skips_an_unterminated_last_line_from_a_crash_with_a_warning(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "reward": 0.5}\n{"step": 2, "rew')

    with pytest.warns(UserWarning, match=rf"{path}:2: skipping a torn last line"):
        assert read_metrics(path) == [{"step": 1, "reward": 0.5}]


def test_read_metrics_rejects_a_corrupt_line_in_the_middle(tmp_path):
    from grpokit.errors import GrpokitError

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')

    with pytest.raises(ValueError, match=rf"^{path}:2: not a JSON object") as caught:
        read_metrics(path)
    assert isinstance(caught.value, GrpokitError)  # the CLI prints it in one line


def test_resume_cuts_a_torn_last_line_so_the_next_record_starts_a_line_of_its_own(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "reward": 0.1}\n{"step": 2, "reward": 0.2}\n{"step": 3, "rew')  # disk filled
    with pytest.warns(UserWarning, match="torn last line"), MetricsLogger(tmp_path, tensorboard=False) as resumed:
        assert resumed.truncate_after(2) == 0
        resumed.log(3, {"reward": 0.3})

    assert path.read_text().endswith('"reward": 0.3}\n')
    assert [(r["step"], r["reward"]) for r in read_metrics(path)] == [(1, 0.1), (2, 0.2), (3, 0.3)]


def test_fresh_start_moves_an_earlier_runs_log_aside_and_never_appends_to_it(tmp_path):
    with MetricsLogger(tmp_path) as killed:  # a run killed before its first checkpoint
        for step in (0, 1, 2):
            killed.log(step, {"kl": float(step)})
    with pytest.warns(UserWarning, match=r"metrics.jsonl holds an earlier run's records and this run starts from step 0 .*; "
                                         r"moved it to metrics.20\d{6}T\d{6}Z.jsonl.old"):
        with MetricsLogger(tmp_path) as rerun:
            moved = rerun.start_fresh("20261204T224107Z")
            for step in (0, 1):
                rerun.log(step, {"kl": 10.0 + step})

    assert moved == tmp_path / "metrics.20261204T224107Z.jsonl.old"
    assert [r["step"] for r in read_metrics(moved)] == [0, 1, 2]
    assert [(r["step"], r["kl"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [(0, 10.0), (1, 11.0)]
    # TensorBoard hides every event of the earlier run (purge from step 0)
    assert tensorboard_scalars(tmp_path / "tb", "kl") == [(0, 10.0), (1, 11.0)]


def test_fresh_start_over_no_log_or_an_empty_one_moves_nothing(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        assert logger.start_fresh("20261204T224107Z") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_write_on_a_full_disk_is_one_line_naming_the_file_and_free_space(small_tmpfs):
    from grpokit.errors import RunDirError

    run_dir = small_tmpfs(size="64k")
    with MetricsLogger(run_dir, tensorboard=False) as logger:
        with pytest.raises(RunDirError, match=rf"^no space left on device writing {run_dir}/metrics.jsonl "
                                              rf"\(free: 0.0 MiB\)$"):
            for step in range(10_000):  # ~50 bytes a line: the 64 KiB fill up after ~1300 lines
                logger.log(step, {"reward": float(step)})
    with warnings.catch_warnings(record=True):  # the line being written when the disk filled may be torn
        warnings.simplefilter("always")
        steps = [record["step"] for record in read_metrics(run_dir / "metrics.jsonl")]
    assert steps == list(range(len(steps))) and len(steps) > 1000  # every whole line kept, in order


def test_tensorboard_event_file_holds_logged_scalar(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        logger.log(5, {"reward/mean": 0.625})
        logger.log(6, {"reward/mean": torch.tensor(0.75)})

    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert tensorboard_scalars(tmp_path / "tb", "reward/mean") == [(5, 0.625), (6, 0.75)]


def test_tensorboard_hides_steps_after_resume_point(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        for step in (1, 2, 3):
            logger.log(step, {"kl": float(step)})
    with MetricsLogger(tmp_path) as resumed:
        resumed.truncate_after(1)
        resumed.log(2, {"kl": 20.0})

    assert tensorboard_scalars(tmp_path / "tb", "kl") == [(1, 1.0), (2, 20.0)]


def test_wandb_missing_gives_warning_and_logging_still_works(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError

    with pytest.warns(UserWarning, match="wandb is not installed"):
        logger = MetricsLogger(tmp_path, tensorboard=False, wandb_project="grpo")
    with logger:
        logger.log(1, {"reward": 1.0})

    assert jsonl_records(tmp_path)[0]["reward"] == 1.0


def test_wandb_receives_metrics_at_their_step_and_the_config(tmp_path, monkeypatch):
    calls = []

    class FakeRun:
        def log(self, metrics, step):
            calls.append(("log", metrics, step))

        def finish(self):
            calls.append(("finish",))

    fake_wandb = types.ModuleType("wandb")
    fake_wandb.init = lambda **kwargs: (
        calls.append(("init", kwargs["project"], kwargs["config"])) or FakeRun()
    )
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb)

    with MetricsLogger(tmp_path, tensorboard=False, wandb_project="grpo", config={"lr": 1e-6}) as logger:
        logger.log(7, {"reward": torch.tensor(0.5), "kl": math.nan})

    assert calls[0] == ("init", "grpo", {"lr": 1e-6})
    assert calls[1][0] == "log" and calls[1][2] == 7
    assert calls[1][1]["reward"] == 0.5 and math.isnan(calls[1][1]["kl"])
    assert calls[2] == ("finish",)
