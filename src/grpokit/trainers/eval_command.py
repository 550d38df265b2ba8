"""`grpokit eval CONFIG` for a language model: evaluate a run's latest checkpoint, changing nothing.

Read-only on the run directory: the weights come from the latest intact checkpoint (found without
creating, repairing or writing anything), and the trainer's callbacks do not run, so no guard saves
`checkpoints/best` or records an alarm. It prints which weights it evaluated, every accuracy in
percent (the proxy reward's and, with `gold.rewards`, the gold rewards'), and with `--show K` K
held-out prompts with their completion and every reward's score.
"""

from __future__ import annotations

from grpokit.config_schema import ConfigError
from grpokit.guards.state import describe_run_end
from grpokit.trainers.evaluation import ACCURACY_UNIT, EvalExample, format_metric


def run_lm_eval(config, *, base: bool = False, show: int = 0, out=print, **build) -> dict[str, float]:
    """Find the checkpoint (before loading any model: a run without one fails at once), build the
    trainer (`build`: ready-made parts for `build_trainer`), load the weights (`base`: the configured
    model itself), evaluate and print; returns the metrics."""
    from grpokit.trainers.lm_build import build_trainer
    from grpokit.trainers.lm_state import eval_checkpoint, load_weights_for_eval

    generated = config.data.reasoning_gym is not None and config.data.reasoning_gym.eval_size > 0
    if not config.data.eval_path and build.get("eval_data") is None and not generated:
        raise ConfigError("data.eval_path (or data.reasoning_gym.eval_size > 0): required for `grpokit eval`")
    if show < 0:
        raise ConfigError(f"--show: must be >= 0, got {show}")
    checkpoint = None if base else eval_checkpoint(config.logging.run_dir)
    config.training.async_.max_staleness = 0  # evaluating samples nothing ahead: no producer to start
    trainer = build_trainer(config, **build)
    if checkpoint is None:
        out(f"weights: base model {config.model.name_or_path}")
    else:
        step = load_weights_for_eval(trainer, checkpoint)
        ended = f"; run {describe_run_end(trainer.run_end)}" if trainer.run_end else ""
        out(f"weights: {checkpoint} (step {step}{ended})")
    metrics, examples = trainer.evaluate_with_examples(callbacks=False)
    e = trainer.config.eval
    proxy = e.reward or trainer.reward_runner.names[0]
    out(f"held-out: {len(examples)} prompts of {getattr(trainer.eval_data, 'source', 'the eval set')}; "
        f"accuracies in percent ({ACCURACY_UNIT}) of completions scoring > {e.success_threshold:g}")
    gold = "+".join(trainer.gold_runner.names) if trainer.gold_runner is not None else None
    for key, value in metrics.items():
        label = f"gold: {gold}" if key.startswith("eval/gold_") else f"proxy: {proxy}"
        out(f"{format_metric(key, value)}  ({label})")
    if examples:  # a policy that answers every prompt alike (the majority answer) shows here first
        kind = "greedy" if examples[0].greedy else "first sampled"
        distinct = len({example.completion for example in examples})
        out(f"distinct {kind} completions: {distinct} of {len(examples)} prompts")
    for number, example in enumerate(examples[:show], start=1):
        out(describe_example(number, example))
    return metrics


def describe_example(number: int, example: EvalExample) -> str:
    """A few lines: the prompt, the completion (greedy or first sample) and each reward's score."""
    def score(value: float | None) -> str:
        return "None" if value is None else f"{value:.4g}"

    scores = ", ".join(f"{name} {score(value)}" for name, value in example.scores.items())
    kind = "greedy" if example.greedy else "sampled"
    if example.episode is not None:  # a multi-turn episode: every message after the prompt, by role
        messages = example.episode["messages"]
        first = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), len(messages))
        turns = "".join(f"\n  [{m['role']}] {m['content']!r}" for m in messages[first:])
        completion = f"episode ({kind}, {example.episode['turns']} turns, end: {example.episode['end']}):{turns}"
    else:
        completion = f"completion ({kind}): {example.completion!r}"
    return (f"--- example {number} (eval row {example.index}) ---\n"
            f"prompt: {example.prompt!r}\n"
            f"{completion}\n"
            f"scores: {scores}")
