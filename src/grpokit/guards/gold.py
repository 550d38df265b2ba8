"""Gold versus proxy on held-out prompts: one set of sampled completions, scored twice.

The proxy rewards are the ones training optimizes; the gold rewards (or verifiers) are never
optimized. Scoring the *same* completions with both makes their gap a property of the policy, not
of sampling noise between two generations.
"""

from __future__ import annotations

import math

import torch

from grpokit.rollout.types import SamplingParams


def mean_scores(per_reward: dict[str, torch.Tensor], total: torch.Tensor) -> tuple[dict[str, float], float]:
    """Per-reward means over the completions it scored (None/NaN left out), and the mean of the
    weighted total over the completions every reward scored; NaN when nothing was scored."""

    def nanmean(x: torch.Tensor) -> float:
        x = x.to(torch.float64)
        x = x[~torch.isnan(x)]
        return float(x.mean()) if len(x) else math.nan

    return {name: nanmean(values) for name, values in per_reward.items()}, nanmean(total)


def score_gold_and_proxy(
    engine,
    tokenizer,
    dataset,
    proxy_runner,
    gold_runner,
    *,
    num_prompts: int,
    samples_per_prompt: int,
    sampling: SamplingParams,
) -> dict[str, float]:
    """Sample `samples_per_prompt` completions for each of the first `num_prompts` prompts of
    `dataset` and score them with both runners.

    Returns ``proxy/<name>`` and ``gold/<name>`` (mean per reward), ``proxy/score`` and
    ``gold/score`` (mean weighted total of each runner) and ``gold/gap = proxy/score − gold/score``
    (meaningful when both are on one scale, e.g. both in [0, 1]).
    """
    indices = list(range(min(num_prompts, len(dataset))))
    if not indices:
        return {}
    prompts = [dataset.render(i, tokenizer) for i in indices]
    rollout = engine.generate(prompts, samples_per_prompt, sampling)
    columns = dataset.columns_for(indices, repeat=samples_per_prompt)
    metrics: dict[str, float] = {}
    for prefix, runner in (("proxy", proxy_runner), ("gold", gold_runner)):
        result = runner.score(
            prompts=rollout.prompts,
            completions=rollout.completions,
            group_ids=rollout.group_ids.tolist(),
            columns=columns,
            completion_lengths=rollout.completion_mask.sum(1).tolist(),
        )
        per_reward, total = mean_scores(result.per_reward, result.total)
        metrics.update({f"{prefix}/{name}": value for name, value in per_reward.items()})
        metrics[f"{prefix}/score"] = total
    metrics["gold/gap"] = metrics["proxy/score"] - metrics["gold/score"]
    return metrics
