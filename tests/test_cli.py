"""`grpokit train` reports config and data mistakes as exit code 2 with a message naming the culprit."""

from __future__ import annotations

import json

import yaml

from grpokit.cli import main


def _config(tmp_path, data_path, **training) -> str:
    config = {
        "model": {"name_or_path": str(tmp_path / "no-model-needed")},  # data is checked before loading
        "data": {"path": str(data_path), "required_columns": ["answer"]},
        "rewards": [{"function": "exact_match"}],
        "training": {"max_steps": 1, **training},
        "logging": {"run_dir": str(tmp_path / "run"), "progress": False, "tensorboard": False},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_misspelled_config_key_exits_2_naming_the_section_and_key(tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    _write_jsonl(data, [{"prompt": "1+1=", "answer": "2"}])
    code = main(["train", _config(tmp_path, data, lerning_rate=1e-5)])
    error = capsys.readouterr().err
    assert code == 2
    assert "training" in error and "lerning_rate" in error
    assert "learning_rate" in error  # the allowed keys are listed, so the fix is visible


def test_misspelled_override_key_exits_2_naming_it(tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    _write_jsonl(data, [{"prompt": "1+1=", "answer": "2"}])
    code = main(["train", _config(tmp_path, data), "--set", "rollout.max_new_tokenz=8"])
    assert code == 2
    assert "max_new_tokenz" in capsys.readouterr().err


def test_data_row_missing_a_required_column_exits_2_naming_file_line_and_column(tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    _write_jsonl(
        data, [{"prompt": "1+1=", "answer": "2"}, {"prompt": "2+2="}, {"prompt": "3+3=", "answer": "6"}]
    )
    code = main(["train", _config(tmp_path, data)])
    error = capsys.readouterr().err
    assert code == 2
    assert "train.jsonl" in error and "line 2" in error and "'answer'" in error
    assert "line 1" not in error and "line 3" not in error


def test_presets_lists_every_language_model_and_flow_preset(capsys, monkeypatch):
    from grpokit.algorithms.presets import PRESETS
    from grpokit.flow.presets import FLOW_PRESETS

    monkeypatch.setenv("COLUMNS", "400")  # rich would otherwise ellipsize names in a narrow terminal
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in [*PRESETS, *FLOW_PRESETS]:
        assert f" {name} " in out
