"""Held-out evaluation: greedy accuracy, and mean@k / pass@k with sampling.

A completion counts as a success when the chosen reward's score exceeds `success_threshold`.
mean@k is the fraction of all k·N sampled completions that succeed (the expected accuracy of one
sample); pass@k is the fraction of prompts with at least one success among their k samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grpokit.rollout.types import SamplingParams


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


def evaluate(engine, tokenizer, dataset, reward_runner, settings: EvalSettings) -> dict[str, float]:
    """Score the first `num_prompts` prompts of `dataset`; returns eval/* metrics in percent."""
    indices = list(range(min(settings.num_prompts, len(dataset))))
    if not indices:
        return {}
    prompts = [dataset.render(i, tokenizer) for i in indices]
    reward_name = settings.reward or reward_runner.names[0]
    metrics: dict[str, float] = {}

    def successes(n: int, params: SamplingParams) -> torch.Tensor:
        rollout = engine.generate(prompts, n, params)
        columns = dataset.columns_for(indices, repeat=n)
        result = reward_runner.score(
            prompts=rollout.prompts, completions=rollout.completions,
            group_ids=rollout.group_ids.tolist(), columns=columns,
            completion_lengths=rollout.completion_mask.sum(1).tolist(),
        )
        scores = result.per_reward[reward_name]
        ok = torch.nan_to_num(scores.to(torch.float64), nan=-float("inf")) > settings.success_threshold
        return ok.view(len(indices), n)

    base = dict(max_new_tokens=settings.max_new_tokens, top_p=settings.top_p, top_k=settings.top_k)
    if settings.greedy:
        greedy = successes(1, SamplingParams(temperature=0.0, seed=settings.seed, **base))
        metrics["eval/greedy_accuracy"] = 100.0 * greedy.double().mean().item()
    if settings.samples_per_prompt > 0:
        k = settings.samples_per_prompt
        sampled = successes(k, SamplingParams(temperature=settings.temperature, seed=settings.seed + 1, **base))
        metrics[f"eval/mean@{k}"] = 100.0 * sampled.double().mean().item()
        metrics[f"eval/pass@{k}"] = 100.0 * sampled.any(dim=1).double().mean().item()
    return metrics

