"""The Flow-GRPO / GRPO-Guard loss of one denoising step, built from the core algorithms.

    log-ratio (raw, or RatioNorm)  →  ppo_clip_loss  →  × step-balancing weight  →  + β·Gaussian KL

One step at a time, so the trainer can back-propagate step by step (Flow-GRPO's memory pattern) and
measure the gradient each step contributes. :func:`step_loss_column` places a step's per-row loss in
column k of a ``[B, S]`` tensor; :func:`grpokit.algorithms.aggregate_loss` of that column with the full
mask and the global denominators is exactly step k's share of the whole-batch loss, for every
aggregation mode, because every mode is linear in the per-token losses.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import Tensor

from grpokit.algorithms import aggregate_loss, importance_ratio, ppo_clip_loss

from .grpo_guard import ratio_norm_log_ratio
from .presets import FlowPreset
from .sde import gaussian_mean_kl


@dataclass
class StepLoss:
    """Per-row results of one denoising step (all ``[R]``; only ``loss`` carries a gradient)."""

    loss: Tensor  # weighted surrogate + β·KL
    log_ratio: Tensor  # the log-ratio the clip saw (RatioNorm's when on)
    raw_log_ratio: Tensor  # log p_θ − log p_old
    normed_log_ratio: Tensor  # RatioNorm's, computed either way for the diagnostics
    clipped_low: Tensor  # bool
    clipped_high: Tensor  # bool
    kl: Tensor | None


def step_loss(
    preset: FlowPreset,
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    *,
    mean: Tensor,
    old_mean: Tensor,
    std: float,
    weight: float = 1.0,
    ref_mean: Tensor | None = None,
) -> StepLoss:
    """``L_i = w_k·PPO-clip(r_i, A_i) + β·KL_i`` for the rows of step k.

    ``r = exp(log p_θ − log p_old)``, or with ``preset.ratio_norm`` ``r̂ = exp(RatioNorm log-ratio)``, the
    log-ratio clamped to ±20 first (:func:`~grpokit.algorithms.importance_ratio`: a float32 exp cannot overflow);
    ``A`` clamped to ±``adv_clip_max``; clip bounds ``1 − eps_low``, ``1 + eps_high`` of ``preset.loss``;
    ``w_k`` the step's balancing weight (1 when off); ``KL = ‖μ_θ − μ_ref‖²/(2 s²)`` reduced like the
    log-prob, added when ``loss.beta > 0`` and ``ref_mean`` is given.
    """
    raw = logp - old_logp
    normed = ratio_norm_log_ratio(logp, old_logp, mean, old_mean, std, reduction=preset.logprob_reduction)
    log_ratio = normed if preset.ratio_norm else raw
    adv = advantages.to(logp.device, logp.dtype).clamp(-preset.adv_clip_max, preset.adv_clip_max)
    surrogate, clipped_low, clipped_high = ppo_clip_loss(
        importance_ratio(log_ratio), adv, eps_low=preset.loss.eps_low, eps_high=preset.loss.eps_high
    )
    loss = weight * surrogate
    kl = None
    if preset.loss.beta > 0 and ref_mean is not None:
        kl = gaussian_mean_kl(mean, ref_mean, std, reduction=preset.logprob_reduction)
        loss = loss + preset.loss.beta * kl
    return StepLoss(loss, log_ratio.detach(), raw.detach(), normed.detach(), clipped_low, clipped_high, kl)


def step_loss_column(row_loss: Tensor, rows: Tensor, step: int, batch: int, num_steps: int) -> Tensor:
    """A ``[batch, num_steps]`` per-token loss, zero except ``row_loss`` at ``(rows, step)``."""
    column = torch.zeros(batch, num_steps, dtype=row_loss.dtype, device=row_loss.device)
    return column.index_put((rows, torch.full_like(rows, step)), row_loss)


def aggregate_step(
    preset: FlowPreset,
    row_loss: Tensor,
    rows: Tensor,
    step: int,
    mask: Tensor,
    num_sequences: int,
    num_tokens: float,
) -> Tensor:
    """Step k's share of the batch loss: :func:`aggregate_loss` of its column with the full ``mask[B, S]``."""
    rows = rows.to(row_loss.device)
    column = step_loss_column(row_loss, rows, step, mask.shape[0], mask.shape[1])
    return aggregate_loss(
        column,
        mask.to(row_loss.device),
        preset.loss.aggregation,
        num_sequences=num_sequences,
        num_tokens=num_tokens,
        max_len=mask.shape[1],
    )


class StepDiagnostics:
    """Collects per-denoising-step ratio statistics and gradient norms over one training step's updates.

    Ratios "before" (raw ``exp(log p_θ − log p_old)``) and "after" RatioNorm are both recorded whatever the
    preset uses, with clip fractions at the preset's ε (a clip is *active* as in PPO: low for A < 0 below
    1 − ε, high for A > 0 above 1 + ε). Mini-batches drawn before the first optimizer step of a training
    step are on-policy (every ratio is exactly 1) and are left out by the caller.
    """

    def __init__(self, preset: FlowPreset):
        self.preset = preset
        self._values: dict[tuple[int, str], list[Tensor]] = defaultdict(list)
        self._grad_norms: dict[int, list[float]] = defaultdict(list)
        self._weights: dict[int, float] = {}

    def add(self, step: int, result: StepLoss, advantages: Tensor) -> None:
        adv = advantages.detach().cpu().clamp(-self.preset.adv_clip_max, self.preset.adv_clip_max)
        eps_low, eps_high = self.preset.loss.eps_low, self.preset.loss.eps_high
        for name, log_ratio in (("raw", result.raw_log_ratio), ("normed", result.normed_log_ratio)):
            ratio = torch.exp(log_ratio.double().cpu())
            self._values[(step, f"{name}_ratio")].append(ratio)
            self._values[(step, f"{name}_clip_low")].append(((ratio < 1 - eps_low) & (adv < 0)).double())
            self._values[(step, f"{name}_clip_high")].append(((ratio > 1 + eps_high) & (adv > 0)).double())

    def add_grad_norm(self, step: int, norm: float, weight: float) -> None:
        self._grad_norms[step].append(norm)
        self._weights[step] = weight

    def summary(self) -> dict[str, float]:
        """``flow/step{k}/{raw,normed}_ratio_{mean,std}``, ``…_clip_{low,high}``, ``flow/step{k}/grad_norm``
        (weighted, as trained) and ``grad_norm_unweighted`` (÷ the balancing weight), plus means over steps:
        ``train/ratio_mean`` (the ratio the clip saw), ``train/raw_ratio_mean``, ``train/normed_ratio_mean``,
        ``train/clip_frac_{low,high}``."""
        out: dict[str, float] = {}
        used = "normed" if self.preset.ratio_norm else "raw"
        per_step: dict[str, list[float]] = defaultdict(list)
        for (step, name), chunks in sorted(self._values.items()):
            values = torch.cat(chunks)
            prefix = f"flow/step{step:02d}/{name}"
            if name.endswith("_ratio"):
                out[f"{prefix}_mean"] = float(values.mean())
                out[f"{prefix}_std"] = float(values.std(correction=0))
                per_step[f"{name}_mean"].append(float(values.mean()))
            else:
                out[prefix] = float(values.mean())
                per_step[name].append(float(values.mean()))
        for step, norms in sorted(self._grad_norms.items()):
            mean_norm = sum(norms) / len(norms)
            out[f"flow/step{step:02d}/grad_norm"] = mean_norm
            out[f"flow/step{step:02d}/grad_norm_unweighted"] = mean_norm / self._weights[step]
        for name, values in per_step.items():
            out[f"train/{name}"] = sum(values) / len(values)
        if per_step:
            out["train/ratio_mean"] = out[f"train/{used}_ratio_mean"]
            out["train/clip_frac_low"] = out[f"train/{used}_clip_low"]
            out["train/clip_frac_high"] = out[f"train/{used}_clip_high"]
        return out
