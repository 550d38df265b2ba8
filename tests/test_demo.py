from __future__ import annotations

import dataclasses

from grpokit.demo import DemoRecipe, run_demo
from grpokit.monitoring import read_metrics


def test_a_shortened_demo_runs_end_to_end_and_prints_its_line(tmp_path, capsys):
    recipe = dataclasses.replace(DemoRecipe(), heldout=20, warmup_max_steps=10, warmup_check_every=5,
                                 warmup_probe_size=16, prompts_per_step=4, eval_samples_per_prompt=2,
                                 eval_every=2)
    result = run_demo(run_dir=tmp_path / "demo", grpo_steps=2, recipe=recipe, progress=False)
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert last_line.startswith("demo: accuracy ")
    assert f"{result.accuracy_before:.1f} -> {result.accuracy_after:.1f}" in last_line
    assert 0.0 <= result.accuracy_after <= 100.0 and result.warmup_steps == 10
    steps = [r["step"] for r in read_metrics(tmp_path / "demo" / "metrics.jsonl") if "train/loss" in r]
    assert steps == [1, 2]
    # The completions log: the first 4 held-out prompts' greedy completions at each evaluation (steps 0, 2).
    from grpokit.monitoring.samples import read_samples

    held_out = [(r["step"], r["index"]) for r in read_samples(tmp_path / "demo") if r["kind"] == "eval"]
    assert held_out == [(step, index) for step in (0, 2) for index in range(4)]
