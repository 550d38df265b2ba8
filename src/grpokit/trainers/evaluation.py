"""Held-out evaluation: greedy accuracy, and mean@k / pass@k with sampling, for the proxy and the gold rewards.

A completion counts as a success when the chosen reward's score exceeds `success_threshold`.
mean@k is the fraction of all k·N sampled completions that succeed (the expected accuracy of one
sample); pass@k is the fraction of prompts with at least one success among their k samples.

Unit: every accuracy grpokit reports (eval/greedy_accuracy, eval/mean@k, eval/pass@k and their
eval/gold_* twins) is a PERCENTAGE in [0, 100] (`ACCURACY_UNIT`). Mean rewards (`gold/score`,
`proxy/score`, `reward/mean`) are in the rewards' own units, never rescaled.

With gold rewards (`gold.rewards`), the same completions are also scored by the gold runner and
succeed when its weighted total exceeds the threshold: eval/gold_greedy_accuracy, eval/gold_mean@k,
eval/gold_pass@k. The proxy accuracy scores `settings.reward` (default the first training reward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from grpokit.config_schema import ConfigError
from grpokit.rollout.types import SamplingParams

ACCURACY_UNIT = "%"
GOLD_PREFIX = "gold/"  # how gold rewards are named next to the proxy ones in an example's scores


@dataclass
class EvalSettings:
    num_prompts: int = 100
    samples_per_prompt: int = 4
    temperature: float = 1.0
    greedy: bool = True
    max_new_tokens: int = 256
    top_p: float = 1.0
    top_k: int = 0
    reward: str | None = None  # which reward decides success; default the first
    success_threshold: float = 0.5
    seed: int = 12345


@dataclass
class EvalExample:
    """One held-out prompt and a completion of it: greedy when the evaluation is greedy, else its first sample."""

    index: int  # row of the eval data set
    prompt: str
    completion: str
    scores: dict[str, float | None] = field(default_factory=dict)  # proxy rewards, then "gold/<name>"
    greedy: bool = True
    episode: dict | None = None  # multi-turn: the whole episode (`grpokit.agents.Trajectory.to_dict`)


def evaluate(engine, tokenizer, dataset, reward_runner, settings: EvalSettings, *,
             gold_runner=None) -> dict[str, float]:
    """Score the first `num_prompts` prompts of `dataset`; returns eval/* accuracies in percent."""
    return evaluate_with_examples(engine, tokenizer, dataset, reward_runner, settings, gold_runner=gold_runner)[0]


def evaluate_with_examples(engine, tokenizer, dataset, reward_runner, settings: EvalSettings, *,
                           gold_runner=None) -> tuple[dict[str, float], list[EvalExample]]:
    """`evaluate`, plus one scored completion per evaluated prompt (in data-set order)."""
    indices = list(range(min(settings.num_prompts, len(dataset))))
    if not indices:
        return {}, []
    prompts = [dataset.render(i, tokenizer) for i in indices]
    reward_name = settings.reward or reward_runner.names[0]
    if reward_name not in reward_runner.names:
        raise ConfigError(f"eval.reward: {reward_name!r} is not a training reward; choose from {reward_runner.names}")
    metrics: dict[str, float] = {}

    def generate_and_score(n: int, params: SamplingParams):
        if hasattr(engine, "generate_episodes"):  # multi-turn (grpokit.agents): episodes start from the rows
            rollout = engine.generate_episodes([dataset[i] for i in indices], n, params)
        else:
            rollout = engine.generate(prompts, n, params)
        columns = dataset.columns_for(indices, repeat=n)
        if rollout.trajectories is not None:  # rewards may read whole episodes
            columns["trajectories"] = rollout.trajectories
        scored = {}
        for prefix, runner in (("", reward_runner), (GOLD_PREFIX, gold_runner)):
            if runner is None:
                continue
            scored[prefix] = runner.score(
                prompts=rollout.prompts, completions=rollout.completions,
                group_ids=rollout.group_ids.tolist(), columns=columns,
                completion_lengths=rollout.completion_mask.sum(1).tolist(),
            )
        return rollout, scored

    def successes(scores: torch.Tensor, n: int) -> torch.Tensor:
        ok = torch.nan_to_num(scores.to(torch.float64), nan=-float("inf")) > settings.success_threshold
        return ok.view(len(indices), n)

    def accuracies(scored, n: int, name: str) -> None:
        """eval/<name> (proxy) and eval/gold_<name> (gold) for one rollout of n completions per prompt."""
        proxy = successes(scored[""].per_reward[reward_name], n)
        gold = successes(scored[GOLD_PREFIX].total, n) if GOLD_PREFIX in scored else None
        for prefix, ok in (("eval/", proxy), ("eval/gold_", gold)):
            if ok is None:
                continue
            if name == "any":  # pass@k
                metrics[f"{prefix}pass@{n}"] = 100.0 * ok.any(dim=1).double().mean().item()
            else:
                metrics[f"{prefix}{name}"] = 100.0 * ok.double().mean().item()

    examples: list[EvalExample] = []
    base = dict(max_new_tokens=settings.max_new_tokens, top_p=settings.top_p, top_k=settings.top_k)
    if settings.greedy:
        rollout, scored = generate_and_score(1, SamplingParams(temperature=0.0, seed=settings.seed, **base))
        accuracies(scored, 1, "greedy_accuracy")
        examples = _examples(indices, rollout, scored, n=1, greedy=True)
    if settings.samples_per_prompt > 0:
        k = settings.samples_per_prompt
        params = SamplingParams(temperature=settings.temperature, seed=settings.seed + 1, **base)
        rollout, scored = generate_and_score(k, params)
        accuracies(scored, k, f"mean@{k}")
        accuracies(scored, k, "any")
        if not examples:
            examples = _examples(indices, rollout, scored, n=k, greedy=False)
    return metrics, examples


def _examples(indices, rollout, scored, *, n: int, greedy: bool) -> list[EvalExample]:
    """The first completion of each prompt (rows are prompt-major) with every reward's score."""
    examples = []
    for position, index in enumerate(indices):
        row = position * n
        scores: dict[str, float | None] = {}
        for prefix, result in scored.items():
            for name, values in result.per_reward.items():
                value = float(values[row])
                scores[prefix + name] = value if math.isfinite(value) else None
        episode = None if rollout.trajectories is None else rollout.trajectories[row].to_dict()
        examples.append(EvalExample(index, rollout.prompts[row], rollout.completions[row], scores, greedy, episode))
    return examples


def format_metric(key: str, value: float) -> str:
    """`key: value` with the unit: accuracies in percent, everything else as the number it is."""
    if is_accuracy(key):
        return f"{key}: {value:.1f} {ACCURACY_UNIT}"
    return f"{key}: {value:.4g}"


def is_accuracy(key: str) -> bool:
    """The accuracies `evaluate` reports: eval/[gold_]greedy_accuracy, eval/[gold_]mean@k, eval/[gold_]pass@k."""
    name = key.removeprefix("eval/").removeprefix("gold_")
    return key.startswith("eval/") and (name == "greedy_accuracy" or name.startswith(("mean@", "pass@")))
