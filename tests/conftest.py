from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_torch_thread():
    """Tiny models run faster on one thread: their matmuls are too small to pay for thread sync."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _grpokit_train(cwd, config, run_dir, *settings, processes: int = 1, timeout: float = 300) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    from grpokit.rollout.vllm_env import free_port

    if processes == 1:
        prefix = [sys.executable]
    else:  # `--multi_gpu` is accelerate's torchrun launcher; without GPUs each process trains on CPU (gloo)
        prefix = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes",
                  str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                  "--num_cpu_threads_per_process", "1", "--main_process_port", str(free_port())]
    command = [*prefix, "-m", "grpokit", "train", str(config), "--set", f"logging.run_dir={run_dir}"]
    for setting in settings:
        command += ["--set", setting]
    source = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": source}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


@pytest.fixture(scope="session")
def grpokit_train():
    """`grpokit_train(cwd, config, run_dir, *"key=value", processes=1, timeout=300)`: a real
    `grpokit train` run, in one process or `processes` gloo processes (accelerate); one torch thread
    each; the test fails with the run's output tail when it fails."""
    return _grpokit_train


def _final_checkpoint_weights(run_dir, filename: str = "model.safetensors") -> dict:
    from safetensors.torch import load_file

    from grpokit.checkpoint import CheckpointManager, model_dir

    latest = CheckpointManager(run_dir).latest()
    assert latest is not None, f"{run_dir} holds no checkpoint"
    return load_file(str(model_dir(latest) / filename))


@pytest.fixture(scope="session")
def final_checkpoint_weights():
    """`final_checkpoint_weights(run_dir, filename="model.safetensors")` → the latest checkpoint's tensors."""
    return _final_checkpoint_weights
