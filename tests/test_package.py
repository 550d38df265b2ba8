from __future__ import annotations

import subprocess
import sys

MODEL_LIBRARIES = ("transformers", "peft", "accelerate", "diffusers", "trl", "vllm")


def _imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return {name.split(".")[0] for name in out.split()}


def test_importing_grpokit_loads_no_model_library():
    assert not _imported_after("import grpokit") & set(MODEL_LIBRARIES)


def test_the_algorithms_need_only_torch():
    assert not _imported_after("import grpokit.algorithms") & set(MODEL_LIBRARIES)
