"""docs/architecture.md stays true to the tree: every module it names exists, every package is listed."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
DOC = ROOT / "docs" / "architecture.md"


def _package_map() -> list[tuple[str, str]]:
    """(first cell, job cell) of each row of the package-map table whose first cell names a path."""
    rows = []
    for line in DOC.read_text().splitlines():
        match = re.match(r"\| `(grpokit/[^`]*)` \| (.*) \|$", line)
        if match:
            rows.append((match.group(1), match.group(2)))
    return rows


def _layers_block() -> str:
    text = DOC.read_text()
    return text.split("## Layers", 1)[1].split("```")[1]


def _top_level() -> set[str]:
    """grpokit's packages (`grpokit/x/`, namespace packages such as `trainers/` too) and top-level modules."""
    grpokit = SRC / "grpokit"
    packages = {f"grpokit/{p.name}/" for p in grpokit.iterdir() if p.is_dir() and any(p.glob("*.py"))}
    modules = {f"grpokit/{p.name}" for p in grpokit.glob("*.py") if p.name != "__init__.py"}
    return packages | modules


def test_every_module_the_doc_names_exists():
    rows = _package_map()
    assert len(rows) > 20
    missing = [path for path, _ in rows if not (SRC / path).exists()]
    for path, job in rows:  # `file.py` named in a package's row lives in that package
        if path.endswith("/"):
            missing += [f"{path}{name}" for name in re.findall(r"`([a-z_]+\.py)`", job)
                        if not (SRC / path / name).is_file()]
    assert not missing, f"docs/architecture.md names modules that do not exist: {missing}"


def test_every_package_and_top_level_module_is_listed():
    listed = set()
    for path, _ in _package_map():
        parts = path.split("/")
        listed.add(f"grpokit/{parts[1]}/" if len(parts) > 2 else path)
    unlisted = sorted(_top_level() - listed)
    assert not unlisted, f"docs/architecture.md's package map does not list: {unlisted}"


def test_the_layer_diagram_names_only_real_packages():
    names = set(re.findall(r"[a-z_][a-z_.]*", re.sub(r"\([^)]*\)", "", _layers_block()))) - {"and"}

    def exists(name: str) -> bool:  # trainers.lm_config -> src/grpokit/trainers/lm_config.py
        path = SRC / "grpokit" / name.replace(".", "/")
        return path.is_dir() or path.with_suffix(".py").is_file()

    unknown = sorted(name for name in names if not exists(name))
    assert not unknown, f"the layer diagram names what is not a grpokit package or module: {unknown}"
