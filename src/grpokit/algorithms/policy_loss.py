"""The policy loss of one (micro-)batch, composed from a :class:`~grpokit.algorithms.presets.Preset`.

ratio (token | sequence | GSPO-token)  →  surrogate (registered: PPO clip | CISPO | SAPO | GMPO | GPG)
→  token selection (Clip-Cov detach, KL-Cov penalty, top-entropy mask)
→  × behaviour IS weights (TIS | MIS, optionally self-normalised)
→  + β·KL(π_θ ‖ π_ref) − entropy_coef·H  →  aggregate with the global denominators

Every statistic of the batch (the top-entropy τ, the self-normalisation mean, Clip-/KL-Cov's selections)
and every denominator can be passed in for the whole optimizer mini-batch, so that micro-batches sum to
the whole-batch loss and gradient (:mod:`grpokit.algorithms.batch_statistics`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .aggregation import aggregate_loss
from .batch_statistics import BatchStatistics, batch_statistics, needs_batch_statistics, statistic_inputs
from .entropy import clip_cov_mask, kl_cov_penalty, top_entropy_mask
from .kl import kl_estimate
from .off_policy import behaviour_importance_weights, self_normalize_weights
from .presets import Preset
from .ratios import gspo_token_log_ratio, importance_ratio, sequence_log_ratio, token_log_ratio, zero_masked
from .registry import SURROGATES

# log-ratio per preset.ratio_level: [B, T], or [B, 1] for one ratio per sequence
_LOG_RATIOS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "token": lambda logp, old_logp, mask: token_log_ratio(logp, old_logp),
    "sequence": lambda logp, old_logp, mask: sequence_log_ratio(logp, old_logp, mask).unsqueeze(-1),
    "sequence_token": gspo_token_log_ratio,
}


def _ratio_and_surrogate(
    preset: Preset, logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(ratio, per-token surrogate loss, clipped_low, clipped_high), the last three ``[B, T]``.

    The surrogate is the function registered under ``preset.surrogate`` (:mod:`.surrogates`); it reads the
    tensors below by parameter name and its hyper-parameters from the preset."""
    log_ratio = _LOG_RATIOS[preset.ratio_level](logp, old_logp, mask)
    ratio = importance_ratio(log_ratio)
    per_token, clipped_low, clipped_high = SURROGATES.call(
        preset.surrogate, preset, ratio=ratio, log_ratio=log_ratio, token_log_ratio=token_log_ratio(logp, old_logp),
        logp=logp, advantages=adv, mask=mask,
    )
    return ratio, per_token.expand_as(logp), clipped_low.expand_as(logp), clipped_high.expand_as(logp)


def loss_statistic_inputs(
    preset: Preset,
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    behaviour_logp: Tensor | None = None,
    entropy: Tensor | None = None,
    clip_cov_keys: Tensor | None = None,
) -> dict[str, Tensor]:
    """:func:`~grpokit.algorithms.batch_statistics.statistic_inputs` of one micro-batch as :func:`policy_loss`
    sees it (masked positions zeroed, the PPO-clipped tokens marked for Clip-Cov); no gradient needed."""
    logp, old_logp = zero_masked(logp.detach(), mask), zero_masked(old_logp, mask)
    adv = advantages.to(logp.dtype)
    adv = adv.unsqueeze(-1) if adv.dim() == 1 else adv
    _, _, clipped_low, clipped_high = _ratio_and_surrogate(preset, logp, old_logp, adv, mask)
    return statistic_inputs(
        preset, logp, old_logp, adv, mask,
        behaviour_logp=None if behaviour_logp is None else zero_masked(behaviour_logp, mask),
        entropy=None if entropy is None else zero_masked(entropy, mask),
        clip_cov_keys=clip_cov_keys, clipped=clipped_low | clipped_high,
    )


def _masked_mean(x: Tensor, valid: Tensor) -> Tensor:
    return (torch.where(valid, x.float(), 0.0).sum() / valid.sum().clamp(min=1)).detach()


def _masked_std(x: Tensor, valid: Tensor) -> Tensor:
    """Population std over the valid entries: sqrt(mean_v (x − mean_v x)²); 0 with none valid."""
    mean = _masked_mean(x, valid)
    return _masked_mean((x.detach().float() - mean) ** 2, valid).sqrt()


ENTROPY_QUANTILES = (0.1, 0.5, 0.9)  # logged as entropy_p10, entropy_p50, entropy_p90


def _entropy_metrics(entropy: Tensor, valid: Tensor, adv: Tensor) -> dict[str, Tensor]:
    """Mean and ENTROPY_QUANTILES of the token entropy over the valid tokens (``entropy_*``) and over
    the valid tokens of completions with positive advantage (``high_adv_entropy_*``: the tokens the
    update makes more likely, whose entropy falls first). Quantiles interpolate linearly
    (torch.quantile); a selection with no token gives no quantiles (and no ``high_adv_entropy_mean``)."""
    high_adv = valid & (adv > 0)
    metrics = {"entropy_mean": _masked_mean(entropy, valid)}
    if high_adv.any():
        metrics["high_adv_entropy_mean"] = _masked_mean(entropy, high_adv)
    for prefix, selected in (("entropy", valid), ("high_adv_entropy", high_adv)):
        values = entropy.detach().float()[selected]
        if values.numel() == 0:
            continue
        levels = torch.quantile(
            values, torch.tensor(ENTROPY_QUANTILES, dtype=values.dtype, device=values.device)
        )
        for q, level in zip(ENTROPY_QUANTILES, levels):
            metrics[f"{prefix}_p{round(q * 100)}"] = level
    return metrics


def _masked_min_max(x: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    if not valid.any():
        zero = x.new_zeros(()).detach()
        return zero, zero
    values = x.detach()[valid]
    return values.min(), values.max()


def policy_loss(
    preset: Preset,
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    ref_logp: Tensor | None = None,
    behaviour_logp: Tensor | None = None,
    entropy: Tensor | None = None,
    num_sequences: int | float | Tensor | None = None,
    num_tokens: int | float | Tensor | None = None,
    max_len: int | None = None,
    generator: torch.Generator | None = None,
    statistics: BatchStatistics | None = None,
    clip_cov_keys: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Scalar loss and metrics for one micro-batch.

    ``logp[B, T]`` (with gradient), ``old_logp``/``ref_logp``/``behaviour_logp[B, T]`` (π_old, π_ref, the
    rollout engine μ), ``advantages[B]`` (broadcast over tokens) or ``[B, T]``, ``mask[B, T]``, ``entropy[B, T]``
    (with gradient if ``entropy_coef`` ≠ 0). ``num_sequences``/``num_tokens``/``max_len`` go to
    :func:`aggregate_loss`: pass the optimizer batch's global counts and the micro-batch losses sum to the
    full-batch loss. What is only known over the whole batch is passed as ``statistics``
    (:func:`~grpokit.algorithms.batch_statistics.batch_statistics` of the whole mini-batch: top-entropy τ,
    the self-normalisation mean, Clip-/KL-Cov's means and thresholds); None computes them from this batch.
    ``clip_cov_keys[B, T]`` are Clip-Cov's per-token uniform keys (default: drawn from ``generator``).

    Non-finite inputs: masked positions of every log-prob and of ``entropy`` are replaced by 0 before any
    difference or ``exp`` (an inf/NaN at padding reaches neither the loss nor the gradient), and each ratio
    is ``exp`` of a log-ratio clamped to ±20 (:func:`~grpokit.algorithms.ratios.importance_ratio`).

    - The KL term ``β·k`` is added when ``preset.beta > 0``, ``ref_logp`` is given and ``kl_in_reward`` is
      False (then the trainer subtracts β·k1 from the reward instead). Without ``ref_logp`` it is skipped.
    - The entropy bonus ``−entropy_coef·H`` is added when ``entropy`` is given; both it and the KL term are
      aggregated with the same mode as the policy term and are not masked by the top-entropy selection or
      weighted by the IS weights (TRL leaves its KL term the same way).
    - ``top_entropy_quantile`` and behaviour correction need ``entropy`` / ``behaviour_logp`` (ValueError).

    Metrics (0-d, detached; fractions and means over valid tokens): ``clip_frac_low``, ``clip_frac_high``,
    ``ratio_mean``, ``ratio_std``, ``ratio_min``, ``ratio_max``, ``kl`` when computed, with ``entropy``:
    ``entropy_mean``/``_p10``/``_p50``/``_p90`` and the same over positive-advantage tokens
    (``high_adv_entropy_*``, absent when there are none),
    ``clip_cov_frac``, ``kl_cov_frac``, ``top_entropy_frac`` when enabled, and the off-policy metrics of
    :func:`~grpokit.algorithms.off_policy.behaviour_importance_weights`.
    """
    valid = mask.bool()
    logp, old_logp = zero_masked(logp, mask), zero_masked(old_logp, mask)
    ref_logp = None if ref_logp is None else zero_masked(ref_logp, mask)
    behaviour_logp = None if behaviour_logp is None else zero_masked(behaviour_logp, mask)
    entropy = None if entropy is None else zero_masked(entropy, mask)
    adv = advantages.to(logp.dtype)
    adv = adv.unsqueeze(-1) if adv.dim() == 1 else adv

    ratio, per_token, clipped_low, clipped_high = _ratio_and_surrogate(preset, logp, old_logp, adv, mask)
    if preset.clip_cov is not None and clip_cov_keys is None:
        clip_cov_keys = torch.rand(logp.shape, generator=generator, dtype=torch.float64).to(logp.device)
    if statistics is None and needs_batch_statistics(preset):
        statistics = batch_statistics(preset, statistic_inputs(
            preset, logp, old_logp, adv, mask, behaviour_logp=behaviour_logp, entropy=entropy,
            clip_cov_keys=clip_cov_keys, clipped=clipped_low | clipped_high,
        ))
    statistics = statistics or BatchStatistics()
    ratio_min, ratio_max = _masked_min_max(ratio.expand_as(logp), valid)
    metrics: dict[str, Tensor] = {
        "clip_frac_low": _masked_mean(clipped_low, valid),
        "clip_frac_high": _masked_mean(clipped_high, valid),
        "ratio_mean": _masked_mean(ratio.expand_as(logp), valid),
        "ratio_std": _masked_std(ratio.expand_as(logp), valid),
        "ratio_min": ratio_min,
        "ratio_max": ratio_max,
    }

    if preset.clip_cov is not None:
        cfg = preset.clip_cov
        detached = clip_cov_mask(
            logp,
            adv,
            mask,
            clip_ratio=cfg.clip_ratio,
            cov_low=cfg.cov_low,
            cov_high=cfg.cov_high,
            exclude=clipped_low | clipped_high,
            keys=clip_cov_keys,
            means=statistics.covariance_means,
            key_threshold=statistics.clip_cov_key_threshold,
        )
        # value kept, gradient removed
        per_token = torch.where(detached, per_token.detach(), per_token)
        metrics["clip_cov_frac"] = _masked_mean(detached, valid)

    if preset.kl_cov is not None:
        penalty, selected = kl_cov_penalty(
            logp,
            old_logp,
            adv,
            mask,
            top_fraction=preset.kl_cov.top_fraction,
            coef=preset.kl_cov.coef,
            means=statistics.covariance_means,
            threshold=statistics.kl_cov_threshold,
        )
        per_token = per_token + penalty
        metrics["kl_cov_frac"] = _masked_mean(selected, valid)

    if preset.top_entropy_quantile is not None:
        if entropy is None:
            raise ValueError(f"preset {preset.name!r} sets top_entropy_quantile; pass entropy=")
        keep = top_entropy_mask(entropy, mask, preset.top_entropy_quantile, threshold=statistics.entropy_threshold)
        per_token = torch.where(keep, per_token, torch.zeros_like(per_token))
        metrics["top_entropy_frac"] = _masked_mean(keep, valid)

    if preset.behaviour_correction != "none" and behaviour_logp is None:
        raise ValueError(
            f"preset {preset.name!r} sets behaviour_correction={preset.behaviour_correction!r}; "
            "pass behaviour_logp= (the rollout engine's log-probs)"
        )
    if behaviour_logp is not None:  # the engine-vs-π_old mismatch is measured (and logged) even uncorrected
        weights, off_policy_metrics = behaviour_importance_weights(
            old_logp,
            behaviour_logp,
            mask,
            method=preset.behaviour_correction,
            level=preset.behaviour_level,
            cap=preset.behaviour_cap,
            lower_cap=preset.behaviour_lower_cap,
        )
        if preset.self_normalize_is:
            mean = statistics.behaviour_weight_mean
            weights = self_normalize_weights(
                weights, mask, global_sum=mean, global_count=None if mean is None else 1.0
            )
        if preset.behaviour_correction != "none":
            per_token = per_token * weights
        metrics.update({k: v.detach() for k, v in off_policy_metrics.items()})

    if preset.beta > 0 and not preset.kl_in_reward and ref_logp is not None:
        kl = kl_estimate(logp, ref_logp, preset.kl_estimator)
        per_token = per_token + preset.beta * kl
        metrics["kl"] = _masked_mean(kl, valid)

    if entropy is not None:
        metrics.update(_entropy_metrics(entropy, valid, adv.expand_as(logp)))
        if preset.entropy_coef != 0:
            per_token = per_token - preset.entropy_coef * entropy

    loss = aggregate_loss(
        per_token,
        mask,
        preset.aggregation,
        num_sequences=num_sequences,
        num_tokens=num_tokens,
        max_len=max_len,
    )
    return loss, metrics
