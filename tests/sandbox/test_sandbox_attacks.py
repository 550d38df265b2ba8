"""Every attack program of the sandbox's self-test is contained, under each namespaced isolation
this machine offers (unshare always as root here; bubblewrap where installed)."""

from __future__ import annotations

import glob
import tempfile

import pytest

from grpokit.sandbox import Sandbox
from grpokit.sandbox.attacks import ATTACKS, run_attacks, sandbox_processes
from grpokit.sandbox.isolation import isolation_works

NAMESPACED = [name for name in ("bwrap", "unshare") if isolation_works(name)]
pytestmark = pytest.mark.skipif(not NAMESPACED, reason="no namespaced isolation on this machine")


def _run_dirs() -> set[str]:
    return set(glob.glob(f"{tempfile.gettempdir()}/grpokit-sandbox-*"))


@pytest.fixture(scope="module", params=NAMESPACED)
def sandbox(request):
    before = _run_dirs()
    yield Sandbox(request.param)
    # After the whole suite: nothing of it still runs and every run's directory is gone.
    assert sandbox_processes() == []
    assert _run_dirs() - before == set()


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_is_contained(sandbox, attack):
    report = ATTACKS[attack](sandbox)
    assert report.contained, f"{attack} under {sandbox.isolation}: {report.detail}\n{report.result}"


def test_attacks_refuse_to_run_without_isolation():
    with pytest.raises(ValueError, match="not run without isolation"):
        run_attacks(Sandbox("unsafe_subprocess"))
