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


FLOAT32_UNIT_ROUNDOFF = 2.0**-24
GRADIENT_CANCELLATION = 1e3  # Σ|micro-batch gradient| / |gradient| we allow (advantages of both signs)
# The exact gradient of a key bias is 0: softmax is invariant to adding q·b_k to every logit of a row.
# What reaches the optimizer is rounding noise, which Adam normalises to steps of about lr: two runs that
# round differently move it differently by up to 2·lr per step, whatever the code does. Not compared.
ZERO_GRADIENT_TENSORS = (".k_proj.bias",)


def _assert_same_trained_weights(one: dict, other: dict, initial: dict | None, *, learning_rate: float,
                                 optimizer_steps: int, summed_parts: int, relative_input_error: float = 0.0) -> None:
    """Two trainings that differ only in float32 rounding end within the tolerance derived here.

    The runs compute the same update in a different summation order (1 vs W processes: k micro-batch
    gradients summed ((a+b)+c)+d in one process, (a+b)+(c+d) over two), so each gradient entry differs by
    δ ≤ (k − 1)·u·Σ|part|/|g| relative, u = 2⁻²⁴, with Σ|part|/|g| ≤ GRADIENT_CANCELLATION; plus
    ``relative_input_error`` when a loss weight itself differs (TIS weights from a rollout engine whose
    float32 log-probs depend on its batch). AdamW moves a parameter by lr·m̂/(√v̂ + ε) per step (|·| ≲ lr):
    a relative change δ of every gradient changes that by at most 2δ of lr where |g| ≫ ε, so after S steps
    |θ₁ − θ₂| ≤ 2·δ·S·lr. Where |g| is within a few ε of 0 the step is lr·g/(|g| + ε), whose slope lr/ε
    turns any rounding into noise of up to lr: exactly-zero gradients (ZERO_GRADIENT_TENSORS) are skipped,
    and a test must not feed rounding-level differences into loss weights of such tiny models (measured
    here: differences 100× below the bound). With ``initial`` given, the runs must have moved the weights.
    """
    delta = (summed_parts - 1) * FLOAT32_UNIT_ROUNDOFF * GRADIENT_CANCELLATION + relative_input_error
    tolerance = 2 * delta * optimizer_steps * learning_rate
    assert one.keys() == other.keys()
    compared = [k for k in one if not k.endswith(ZERO_GRADIENT_TENSORS)]
    difference = max(float((one[k] - other[k]).abs().max()) for k in compared)
    print(f"max |θ_1 − θ_2| = {difference:.3g} (tolerance {tolerance:.3g})")
    if initial is not None:
        assert max(float((one[k] - initial[k]).abs().max()) for k in compared) > 1e-3  # not trivially equal
    assert all(bool(torch.isfinite(other[k]).all()) for k in one)
    assert difference <= tolerance


@pytest.fixture(scope="session")
def assert_same_trained_weights():
    """`assert_same_trained_weights(one, other, initial, *, learning_rate, optimizer_steps, summed_parts,
    relative_input_error=0)`: the weights of two runs that differ only in float32 rounding agree within
    the tolerance derived in `_assert_same_trained_weights`."""
    return _assert_same_trained_weights


@pytest.fixture
def small_tmpfs(tmp_path):
    """`small_tmpfs(size="1m", read_only=False)` → a directory on a fresh tmpfs of that size, for real
    "no space left on device" and "read-only file system" errors; skips unless this process may mount
    (root). Unmounted at teardown."""
    import subprocess

    mounted = []

    def mount(size: str = "1m", read_only: bool = False):
        target = tmp_path / f"tmpfs{len(mounted)}"
        target.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


# ---------------------------------------------------------- a real vLLM server (tests/rollout, tests/agents)
def _build_vllm_test_model(directory, seed: int = 0):
    """A tiny Qwen2 (head dim 32: vLLM's CPU attention has no kernel for 16) + char tokenizer, saved."""
    from grpokit.models import build_char_tokenizer, build_tiny_causal_lm

    tokenizer = build_char_tokenizer()
    model = build_tiny_causal_lm(len(tokenizer), hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                                 intermediate_size=128, initializer_range=0.2, seed=seed)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def build_vllm_test_model():
    """`build_vllm_test_model(directory, seed=0)` → directory, with a tiny model vLLM's CPU backend serves."""
    return _build_vllm_test_model


@pytest.fixture(scope="session")
def vllm_model_dir(tmp_path_factory):
    return _build_vllm_test_model(tmp_path_factory.mktemp("vllm_model"))


@pytest.fixture(scope="session")
def vllm_python():
    """The vLLM environment's interpreter, created on first use (a few minutes, once; see vllm_env)."""
    from grpokit.rollout.vllm_env import ensure_vllm_python

    return ensure_vllm_python(with_grpokit=True)


@pytest.fixture(scope="session")
def vllm_server_url(vllm_python, vllm_model_dir, tmp_path_factory):
    """A real `grpokit vllm-serve` server on the tiny model (float32, 1 GiB KV cache), for the session;
    shared by every test directory (tests sync the weights they need before using it)."""
    from grpokit.rollout.vllm_env import vllm_server

    log_path = tmp_path_factory.mktemp("vllm_server") / "server.log"
    with vllm_server(str(vllm_model_dir), python=vllm_python, log_path=log_path, timeout=300,
                     args=("--dtype", "float32", "--kv-cache-gib", "1", "--max-model-len", "256")) as url:
        yield url
