"""The config reference: every field documented where it is defined, `grpokit config`, docs/config.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from grpokit.config_docs import field_help, render_markdown, render_text, sections, undocumented
from grpokit.config_schema import ConfigError
from grpokit.flow.config import FlowTrainConfig
from grpokit.trainers.lm_config import LMTrainConfig

DOCS = Path(__file__).resolve().parents[1] / "docs" / "config.md"


@pytest.mark.parametrize("root", [LMTrainConfig, FlowTrainConfig])
def test_every_field_of_every_section_has_help(root):
    missing = undocumented(root)
    assert not missing, f"fields without a comment where they are defined: {missing}"


def test_docs_config_md_is_generated_from_the_dataclasses():
    assert DOCS.read_text() == render_markdown(), (
        "docs/config.md is stale: run `python -m grpokit.config_docs > docs/config.md`")


@dataclass
class _Example:
    """An example section."""

    # A comment block above a field
    # spans lines.
    a: int = 1  # and its line's comment follows
    b: str = "x"

    c: list[int] = field(  # a trailing comment on the first of several lines
        default_factory=list)
    d: float = 0.5  # d's own


def test_help_is_the_comment_above_and_at_the_end_of_a_field():
    assert field_help(_Example) == {
        "a": "A comment block above a field spans lines. and its line's comment follows",
        "c": "a trailing comment on the first of several lines",
        "d": "d's own",
    }
    (section,) = sections(_Example)
    assert [(f.path, f.type, f.default) for f in section.fields] == [
        ("a", "int", "1"), ("b", "string", "x"), ("c", "list of int", "[]"), ("d", "float", "0.5")]
    assert section.summary == "An example section."
    assert undocumented(_Example) == ["b"]  # what the test above reports for a real config


def test_grpokit_config_prints_a_section_with_defaults_and_help_within_80_columns():
    text = render_text(LMTrainConfig, "rollout", width=80)
    assert text.startswith("rollout\n")
    assert "  num_generations = null   (int or null)\n" in text
    assert "  engine = inprocess   (inprocess | vllm_colocate | vllm_server)\n" in text
    assert "rollout.vllm\n" in text and "\ntraining\n" not in text  # the section and what is under it
    assert max(len(line) for line in text.splitlines()) <= 80
    for root in (LMTrainConfig, FlowTrainConfig):  # the whole schema too
        assert max(len(line) for line in render_text(root, width=80).splitlines()) <= 80


def test_cli_prints_the_schema_and_names_the_sections_on_a_typo(capsys):
    from grpokit.cli import main

    assert main(["config", "guards.entropy"]) == 0
    out = capsys.readouterr().out
    assert "floor = null   (float or null)" in out and "continue_after_stop" not in out
    assert main(["config", "--flow", "rollout"]) == 0
    assert "train_step_selection = first   (first | random | spread)" in capsys.readouterr().out
    assert main(["config", "rollouts"]) == 2
    assert "config section 'rollouts' does not exist; sections: algorithm, checkpoint" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="does not exist"):
        render_text(LMTrainConfig, "training.nope")
