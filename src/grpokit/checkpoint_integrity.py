"""Is a checkpoint's every file whole? Cheap structural checks that find truncation without loading a tensor.

A checkpoint directory appears by atomic rename (`grpokit.checkpoint`), so a crash of the writer never
leaves a half one; these checks are for what happens to it afterwards: a copy or a sync that stopped
short, another tool filling the disk, a file overwritten by hand.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

TRAINER_STATE_FILE = "trainer_state.json"  # every checkpoint's {"step", "extra_state"}; grpokit.checkpoint writes it


def find_damage(checkpoint_path: str | Path) -> list[str]:
    """What is wrong with a checkpoint's files, ``[]`` when nothing is: cheap structural checks.

    ``trainer_state.json`` and every ``*.json`` must parse; every ``*.pt``/``*.bin`` (torch's zip
    format) must have its central directory and every entry inside the file; every ``*.safetensors``
    must be exactly as long as its header says. This finds truncation (a copy or a disk that stopped
    short, a crash of another writer) without loading a tensor; flipped bits inside tensor data are not
    found.
    """
    root = Path(checkpoint_path)
    problems = []
    if not (root / TRAINER_STATE_FILE).is_file():
        problems.append(f"{TRAINER_STATE_FILE} is missing")
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        problem = _file_damage(path)
        if problem:
            problems.append(f"{path.relative_to(root)}: {problem}")
    return problems


def _file_damage(path: Path) -> str | None:
    try:
        if path.suffix == ".json":
            return _json_damage(path)
        if path.suffix in (".pt", ".bin"):
            return _torch_zip_damage(path)
        if path.suffix == ".safetensors":
            return _safetensors_damage(path)
    except OSError as error:
        return f"unreadable ({error.strerror or error})"
    return None


def _json_damage(path: Path) -> str | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"not valid JSON ({path.stat().st_size} bytes; truncated?): {error}"
    if path.name == TRAINER_STATE_FILE and not (isinstance(value, dict) and isinstance(value.get("step"), int)):
        return "has no integer 'step'"
    return None


def _torch_zip_damage(path: Path) -> str | None:
    size = path.stat().st_size
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if size and not magic.startswith(b"PK"):
        return None  # torch's legacy (pre-zip) format, or another tool's .bin: nothing to check cheaply
    try:
        with zipfile.ZipFile(path) as archive:
            for entry in archive.infolist():
                if entry.header_offset + entry.compress_size > size:
                    return f"entry {entry.filename} ends past the end of the file ({size} bytes; truncated?)"
    except zipfile.BadZipFile:
        return f"not a complete torch file ({size} bytes; truncated?)"
    return None


def _safetensors_damage(path: Path) -> str | None:
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        header_length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if header_length < 0 or 8 + header_length > size:
            return f"header cut short ({size} bytes; truncated?)"
        try:
            header = json.loads(handle.read(header_length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "header is not valid JSON"
    ends = [entry["data_offsets"][1] for name, entry in header.items()
            if name != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry]
    expected = 8 + header_length + max(ends, default=0)
    if size < expected:
        return f"{size} bytes, its header says {expected} (truncated)"
    return None
