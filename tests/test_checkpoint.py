from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from grpokit.checkpoint import (
    CheckpointManager,
    capture_rng_state,
    is_complete,
    model_dir,
    restore_rng_state,
    step_dirname,
)

SRC_DIR = Path(__file__).resolve().parents[1] / "src"


def write_marker_model(marker: str):
    """A model_saver that writes one file holding ``marker`` (stands in for save_pretrained)."""

    def saver(directory: Path) -> None:
        directory.mkdir()
        (directory / "weights.txt").write_text(marker)

    return saver


def save_plain(manager: CheckpointManager, step: int, **kwargs) -> Path:
    return manager.save(step, model_saver=write_marker_model(f"step {step}"), **kwargs)


def hidden_entries(checkpoints_dir: Path) -> list[str]:
    return sorted(path.name for path in checkpoints_dir.iterdir() if path.name.startswith("."))


def draw_from_every_rng() -> tuple:
    return (random.random(), float(np.random.rand()), torch.rand(3).tolist())


# -- atomicity ----------------------------------------------------------------------------------


def test_save_writes_complete_checkpoint_with_all_parts(tmp_path):
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    manager = CheckpointManager(tmp_path)

    path = manager.save(
        7,
        model_saver=write_marker_model("m"),
        optimizer=optimizer,
        scheduler=scheduler,
        extra_state={"cursor": 3},
    )

    assert path == tmp_path / "checkpoints" / "step-000007"
    names = sorted(p.name for p in path.iterdir())
    assert names == ["COMPLETE", "model", "optimizer.pt", "rng.pt", "scheduler.pt", "trainer_state.json"]
    assert (model_dir(path) / "weights.txt").read_text() == "m"
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-000007"
    assert manager.latest() == path
    assert manager.load(path, restore_rng=False) == {"step": 7, "extra_state": {"cursor": 3}}


def test_exception_inside_model_saver_leaves_previous_checkpoint_as_latest(tmp_path):
    manager = CheckpointManager(tmp_path)
    first = save_plain(manager, 1)

    def crashing_saver(directory: Path) -> None:
        directory.mkdir()
        (directory / "half-written.bin").write_bytes(b"\0" * 10)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        manager.save(2, model_saver=crashing_saver)

    assert manager.latest() == first
    assert manager.step_checkpoints() == [first]
    assert not (tmp_path / "checkpoints" / "step-000002").exists()
    assert hidden_entries(tmp_path / "checkpoints") == []


def test_unserializable_extra_state_fails_before_writing_anything(tmp_path):
    manager = CheckpointManager(tmp_path)
    saver_calls = []

    with pytest.raises(TypeError):
        manager.save(1, model_saver=saver_calls.append, extra_state={"bad": object()})

    assert saver_calls == []
    assert manager.latest() is None
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == []


def test_process_killed_mid_save_leaves_no_checkpoint_and_next_manager_removes_temp_dir(tmp_path):
    manager = CheckpointManager(tmp_path)
    first = save_plain(manager, 1)
    # A child process dies (os._exit: no exception handlers, no cleanup) while the model is saved.
    child = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from grpokit.checkpoint import CheckpointManager

        def dying_saver(directory):
            directory.mkdir()
            (directory / "weights.txt").write_text("partial")
            os._exit(3)

        CheckpointManager({str(tmp_path)!r}).save(2, model_saver=dying_saver)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(SRC_DIR)}
    result = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True)
    assert result.returncode == 3, result.stderr

    checkpoints_dir = tmp_path / "checkpoints"
    leftovers = hidden_entries(checkpoints_dir)
    assert len(leftovers) == 1 and leftovers[0].startswith(".tmp-step-000002-")
    assert manager.latest() == first

    restarted = CheckpointManager(tmp_path)

    assert hidden_entries(checkpoints_dir) == []
    assert restarted.latest() == first


def test_incomplete_step_dir_is_never_latest(tmp_path):
    manager = CheckpointManager(tmp_path)
    first = save_plain(manager, 1)
    (tmp_path / "checkpoints" / "step-000009").mkdir()  # no COMPLETE marker
    (tmp_path / "checkpoints" / "latest").unlink()

    assert manager.latest() == first


def test_latest_falls_back_to_highest_step_when_pointer_is_stale(tmp_path):
    manager = CheckpointManager(tmp_path)
    save_plain(manager, 1)
    second = save_plain(manager, 2)
    (tmp_path / "checkpoints" / "latest").write_text("step-000099\n")  # names nothing

    assert manager.latest() == second


def test_crash_between_renames_of_a_replace_is_repaired_by_restoring_the_old_checkpoint(tmp_path):
    manager = CheckpointManager(tmp_path)
    best = save_plain(manager, 5, tag="best")
    # State after `best` was moved aside and before the new one was renamed in.
    aside = tmp_path / "checkpoints" / ".old-best-12345"
    os.rename(best, aside)

    restarted = CheckpointManager(tmp_path)

    assert restarted.tagged("best") == best
    assert (model_dir(best) / "weights.txt").read_text() == "step 5"
    assert hidden_entries(tmp_path / "checkpoints") == []


# -- pruning and tags ---------------------------------------------------------------------------


def test_keep_last_prunes_all_but_the_newest_k(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in (10, 20, 30, 40):
        save_plain(manager, step)

    assert [p.name for p in manager.step_checkpoints()] == ["step-000030", "step-000040"]
    assert manager.latest().name == "step-000040"


def test_keep_last_above_the_number_of_checkpoints_deletes_nothing(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=6)
    for step in (1, 2, 3, 4, 5):
        save_plain(manager, step)

    assert [p.name for p in manager.step_checkpoints()] == [f"step-00000{s}" for s in (1, 2, 3, 4, 5)]


def test_keep_last_none_keeps_everything(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=None)
    for step in (1, 2, 3, 4):
        save_plain(manager, step)

    assert len(manager.step_checkpoints()) == 4


def test_keep_last_one_keeps_only_the_one_just_written(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=1)
    save_plain(manager, 1)
    newest = save_plain(manager, 2)

    assert manager.step_checkpoints() == [newest]


def test_resumed_run_becomes_latest_and_replaces_later_leftovers_when_it_reaches_them(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in (10, 20, 30):
        save_plain(manager, step)
    # The run is resumed from step 20: step 30 of the abandoned run stays until it is replaced.
    resumed_25 = manager.save(25, model_saver=write_marker_model("resumed"))

    assert manager.latest() == resumed_25
    assert [p.name for p in manager.step_checkpoints()] == ["step-000020", "step-000025", "step-000030"]

    resumed_30 = manager.save(30, model_saver=write_marker_model("resumed"))

    assert manager.latest() == resumed_30
    assert (model_dir(resumed_30) / "weights.txt").read_text() == "resumed"
    assert [p.name for p in manager.step_checkpoints()] == ["step-000025", "step-000030"]
    assert hidden_entries(tmp_path / "checkpoints") == []


def test_tagged_checkpoint_replaces_previous_tag_and_is_never_pruned_or_latest(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=1)
    save_plain(manager, 1, tag="best", extra_state={"gold": 0.4})
    save_plain(manager, 2)
    best = save_plain(manager, 3, tag="best", extra_state={"gold": 0.7})
    for step in (4, 5):
        save_plain(manager, step)

    assert best == tmp_path / "checkpoints" / "best"
    assert manager.tagged("best") == best
    assert manager.load(best, restore_rng=False) == {"step": 3, "extra_state": {"gold": 0.7}}
    assert manager.latest().name == step_dirname(5)
    assert [p.name for p in manager.step_checkpoints()] == ["step-000005"]
    assert is_complete(best)


@pytest.mark.parametrize("bad_tag", ["latest", "step-000001", "../escape", ".hidden", ""])
def test_invalid_tags_are_rejected(tmp_path, bad_tag):
    manager = CheckpointManager(tmp_path)
    with pytest.raises(ValueError, match="invalid checkpoint tag"):
        save_plain(manager, 1, tag=bad_tag)


# -- state round-trips --------------------------------------------------------------------------


def test_rng_states_round_trip_in_memory():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    state = capture_rng_state()
    expected = draw_from_every_rng()
    draw_from_every_rng()  # advance every generator past the snapshot

    restore_rng_state(state)

    assert draw_from_every_rng() == expected


def test_rng_states_round_trip_through_save_and_load(tmp_path):
    manager = CheckpointManager(tmp_path)
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    path = save_plain(manager, 1)
    expected = draw_from_every_rng()
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)

    CheckpointManager(tmp_path).load(path)

    assert draw_from_every_rng() == expected


def test_load_with_restore_rng_false_leaves_rngs_alone(tmp_path):
    manager = CheckpointManager(tmp_path)
    torch.manual_seed(1)
    path = save_plain(manager, 1)
    torch.manual_seed(2)
    expected = torch.rand(2).tolist()
    torch.manual_seed(2)

    manager.load(path, restore_rng=False)

    assert torch.rand(2).tolist() == expected


def _build_training(weights: dict[str, torch.Tensor] | None = None):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    if weights is not None:
        model.load_state_dict(weights)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    return model, optimizer, scheduler


def _train_step(model, optimizer, scheduler, step: int) -> None:
    inputs = torch.arange(6, dtype=torch.float32).reshape(2, 3) + step
    loss = model(inputs).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()


def test_resumed_optimizer_and_scheduler_continue_exactly_like_the_uninterrupted_run(tmp_path):
    model, optimizer, scheduler = _build_training()
    for step in range(2):
        _train_step(model, optimizer, scheduler, step)
    manager = CheckpointManager(tmp_path)
    path = manager.save(
        2,
        model_saver=lambda directory: (directory.mkdir(), torch.save(model.state_dict(), directory / "w.pt")),
        optimizer=optimizer,
        scheduler=scheduler,
    )
    _train_step(model, optimizer, scheduler, 2)
    uninterrupted_weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    uninterrupted_lr = optimizer.param_groups[0]["lr"]

    saved_weights = torch.load(model_dir(path) / "w.pt", weights_only=True)
    resumed_model, resumed_optimizer, resumed_scheduler = _build_training(saved_weights)
    state = manager.load(path, optimizer=resumed_optimizer, scheduler=resumed_scheduler)
    _train_step(resumed_model, resumed_optimizer, resumed_scheduler, 2)

    assert state["step"] == 2
    assert resumed_scheduler.last_epoch == 3
    assert resumed_optimizer.param_groups[0]["lr"] == pytest.approx(uninterrupted_lr)
    for name, tensor in resumed_model.state_dict().items():
        torch.testing.assert_close(tensor, uninterrupted_weights[name], rtol=0, atol=0)


def test_loading_optimizer_from_checkpoint_saved_without_one_raises(tmp_path):
    manager = CheckpointManager(tmp_path)
    path = save_plain(manager, 1)
    model = torch.nn.Linear(1, 1)

    with pytest.raises(FileNotFoundError, match="optimizer"):
        manager.load(path, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


def test_loading_incomplete_checkpoint_raises(tmp_path):
    (tmp_path / "step-000001").mkdir()
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        CheckpointManager(tmp_path).load(tmp_path / "step-000001")


# -- full disks ----------------------------------------------------------------------------------


def adam_with_state(size: int) -> torch.optim.Optimizer:
    """An AdamW that has stepped once: its state holds two tensors of `size` floats."""
    parameter = torch.nn.Parameter(torch.zeros(size))
    optimizer = torch.optim.AdamW([parameter])
    parameter.grad = torch.ones(size)
    optimizer.step()
    return optimizer


def test_disk_filling_up_inside_torch_save_says_no_space_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import builtins
    import errno

    import grpokit.checkpoint as checkpoint_module
    from grpokit.errors import RunDirError

    manager = CheckpointManager(tmp_path)
    first = save_plain(manager, 1, optimizer=adam_with_state(10))

    class FillingDisk:
        """A file on a disk with 4 KiB left: writes past that fail like the kernel's write(2) does."""

        def __init__(self, path, mode):
            self.handle = builtins.open(path, mode)
            self.room = 4096

        def write(self, data):
            if len(data) > self.room:
                self.handle.write(bytes(data)[: self.room])
                self.room = 0
                raise OSError(errno.ENOSPC, "No space left on device")
            self.room -= len(data)
            return self.handle.write(data)

        def flush(self):
            self.handle.flush()

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            self.handle.close()

    monkeypatch.setattr(checkpoint_module, "open", FillingDisk, raising=False)
    target = tmp_path / "checkpoints" / "step-000002" / "optimizer.pt"
    with pytest.raises(RunDirError, match=rf"^no space left on device writing {target} \(free: [\d.]+ MiB\)$"):
        save_plain(manager, 2, optimizer=adam_with_state(100_000))  # 800 kB of Adam moments

    monkeypatch.undo()
    assert manager.latest() == first and manager.step_checkpoints() == [first]
    assert hidden_entries(tmp_path / "checkpoints") == []  # the partial checkpoint is gone
    assert manager.load(first, restore_rng=False)["step"] == 1


def test_real_full_disk_ends_in_one_line_and_the_previous_checkpoint_still_loads(small_tmpfs):
    from grpokit.errors import RunDirError

    run_dir = small_tmpfs(size="1m")
    manager = CheckpointManager(run_dir)
    small = adam_with_state(1000)
    first = save_plain(manager, 1, optimizer=small)
    with pytest.raises(RunDirError, match=r"^no space left on device writing .*step-000002/optimizer.pt \(free: "):
        save_plain(manager, 2, optimizer=adam_with_state(500_000))  # 4 MB of moments on a 1 MiB disk

    assert manager.latest_intact() == first and hidden_entries(run_dir / "checkpoints") == []
    restored = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1000))])
    manager.load(first, optimizer=restored, restore_rng=False)
    assert torch.equal(restored.state_dict()["state"][0]["exp_avg"], small.state_dict()["state"][0]["exp_avg"])


# -- damaged checkpoints ---------------------------------------------------------------------------


def save_safetensors_model(manager: CheckpointManager, step: int) -> Path:
    from safetensors.torch import save_file

    def saver(directory: Path) -> None:
        directory.mkdir()
        save_file({"weight": torch.full((64, 64), float(step))}, str(directory / "model.safetensors"))
        (directory / "config.json").write_text('{"hidden_size": 64}')

    return manager.save(step, model_saver=saver, optimizer=adam_with_state(100))


def truncate(path: Path, keep_fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])


def test_intact_checkpoint_has_no_damage(tmp_path):
    from grpokit.checkpoint import find_damage

    assert find_damage(save_safetensors_model(CheckpointManager(tmp_path), 1)) == []


@pytest.mark.parametrize(("damaged_file", "problem"), [
    ("model/model.safetensors", r"model/model.safetensors: \d+ bytes, its header says \d+ \(truncated\)"),
    ("trainer_state.json", r"trainer_state.json: not valid JSON \(\d+ bytes; truncated\?\)"),
    ("optimizer.pt", r"optimizer.pt: not a complete torch file \(\d+ bytes; truncated\?\)"),
    ("model/config.json", r"model/config.json: not valid JSON"),
])
def test_truncated_file_in_latest_checkpoint_falls_back_to_the_previous_one_with_a_warning(
        tmp_path, damaged_file, problem):
    manager = CheckpointManager(tmp_path)
    first = save_safetensors_model(manager, 1)
    second = save_safetensors_model(manager, 2)
    truncate(second / damaged_file)

    with pytest.warns(UserWarning, match=rf"checkpoint {second} is damaged \({problem}.*\); falling back"):
        assert manager.latest_intact() == first
    assert manager.latest() == second  # `latest` keeps its meaning: the newest complete checkpoint


def test_header_of_safetensors_cut_short_is_damage(tmp_path):
    from grpokit.checkpoint import find_damage

    path = save_safetensors_model(CheckpointManager(tmp_path), 1)
    (model_dir(path) / "model.safetensors").write_bytes(b"\x10\x00")
    assert find_damage(path) == ["model/model.safetensors: header cut short (2 bytes; truncated?)"]


def test_when_every_checkpoint_is_damaged_the_error_names_each_damaged_file(tmp_path):
    from grpokit.checkpoint import DamagedCheckpointError

    manager = CheckpointManager(tmp_path)
    first = save_safetensors_model(manager, 1)
    second = save_safetensors_model(manager, 2)
    truncate(first / "optimizer.pt")
    truncate(model_dir(second) / "model.safetensors")

    with pytest.warns(UserWarning), pytest.raises(DamagedCheckpointError) as caught:
        manager.latest_intact()
    message = str(caught.value)
    assert "\n" not in message
    assert "step-000002: model/model.safetensors: " in message and "step-000001: optimizer.pt: " in message
    assert [path for path, _ in caught.value.damaged] == [second, first]


def test_no_checkpoint_at_all_is_none_not_an_error(tmp_path):
    assert CheckpointManager(tmp_path).latest_intact() is None
    assert CheckpointManager(tmp_path / "never-trained", read_only=True).latest_intact() is None


def test_read_only_manager_leaves_a_running_trainers_save_in_progress_alone(tmp_path):
    manager = CheckpointManager(tmp_path)
    first = save_plain(manager, 1)
    in_progress = tmp_path / "checkpoints" / ".tmp-step-000002-99999"  # another process is writing it
    in_progress.mkdir()

    reader = CheckpointManager(tmp_path, read_only=True)
    assert reader.latest_intact() == first and in_progress.is_dir()
    with pytest.raises(RuntimeError, match="read-only"):
        save_plain(reader, 3)
    CheckpointManager(tmp_path / "never", read_only=True)
    assert not (tmp_path / "never").exists()  # a reader creates nothing


def test_legacy_torch_files_are_not_mistaken_for_damage_but_empty_ones_are(tmp_path):
    from grpokit.checkpoint import find_damage

    path = save_safetensors_model(CheckpointManager(tmp_path), 1)
    torch.save({"w": torch.ones(3)}, model_dir(path) / "legacy.bin", _use_new_zipfile_serialization=False)
    assert find_damage(path) == []
    (path / "scheduler.pt").write_bytes(b"")
    assert find_damage(path) == ["scheduler.pt: not a complete torch file (0 bytes; truncated?)"]


def test_a_checkpoint_pinned_by_a_reader_is_not_pruned_until_the_reader_lets_go(tmp_path):
    from grpokit.checkpoint import release_pins

    manager = CheckpointManager(tmp_path, keep_last=1)
    first = save_plain(manager, 1)
    reader = CheckpointManager(tmp_path, read_only=True)
    try:
        assert reader.pin_latest_intact() == first  # e.g. `grpokit eval` building its model
        second = save_plain(manager, 2)
        assert manager.step_checkpoints() == [first, second]  # keep_last=1, but first is being read
        assert manager.load(first, restore_rng=False)["step"] == 1
    finally:
        release_pins()
    third = save_plain(manager, 3)
    assert manager.step_checkpoints() == [third]  # the next save prunes what the reader held
