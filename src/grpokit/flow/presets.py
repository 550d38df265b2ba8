"""Flow-GRPO variants as data. A :class:`FlowPreset` holds the flow-specific choices next to a core
:class:`~grpokit.algorithms.presets.Preset` (advantages, clip, aggregation, KL β), so the two named variants
differ in a few readable lines at the bottom of this file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from grpokit.algorithms.presets import GRPO, Preset

from .sde import LOGPROB_REDUCTIONS


@dataclass(frozen=True)
class FlowPreset:
    """One flow-model GRPO algorithm: the core ``loss`` preset plus how the denoising steps are treated.

    Only these ``loss`` fields are used by the flow loss: ``advantage``, ``std``, ``advantage_eps``,
    ``num_generations``, ``eps_low``, ``eps_high``, ``aggregation``, ``beta`` (the KL is the closed-form
    Gaussian KL between step means, not ``kl_estimator``). Build variants with :meth:`replace`.
    """

    name: str
    summary: str  # one line
    loss: Preset
    noise_level: float = 0.7  # a in σ_t = a·√(t/(1−t)) (Flow-GRPO's default)
    logprob_reduction: str = "mean"  # over latent dimensions: "mean" (Flow-GRPO) | "sum" (joint density)
    adv_clip_max: float = 5.0  # advantages clamped to ±this (Flow-GRPO's `adv_clip_max`)
    ratio_norm: bool = False  # GRPO-Guard RatioNorm (grpokit.flow.guard.ratio_norm_log_ratio)
    step_balancing: bool = False  # GRPO-Guard cross-step gradient balancing weights

    def __post_init__(self) -> None:
        if self.logprob_reduction not in LOGPROB_REDUCTIONS:
            raise ValueError(
                f"logprob_reduction must be one of {LOGPROB_REDUCTIONS}, got {self.logprob_reduction!r}"
            )
        if self.noise_level <= 0:
            raise ValueError(
                f"noise_level must be > 0 (a = 0 is the ODE, which has no log-prob), got {self.noise_level}"
            )
        if self.adv_clip_max <= 0:
            raise ValueError(f"adv_clip_max must be > 0, got {self.adv_clip_max}")

    def replace(self, **changes: Any) -> FlowPreset:
        """A copy with ``changes``: FlowPreset fields by name, any other name is a field of ``loss``
        (e.g. ``replace(ratio_norm=False, eps_high=3e-4)``). Unknown names raise ValueError."""
        own = {f.name for f in dataclasses.fields(FlowPreset)}
        loss_changes = {k: v for k, v in changes.items() if k not in own}
        flow_changes = {k: v for k, v in changes.items() if k in own}
        if loss_changes:
            flow_changes["loss"] = flow_changes.get("loss", self.loss).replace(**loss_changes)
        return dataclasses.replace(self, **flow_changes)


# Flow-GRPO (arXiv 2505.05470; their SD3.5-M GenEval recipe): per-prompt z-score, clip 1e-4 on the
# mean-over-dimensions log-prob, every step's loss averaged, KL β = 0.04, advantages clamped to ±5.
FLOW_GRPO = FlowPreset(
    name="flow_grpo",
    summary="Flow-GRPO: SDE sampler (a=0.7), mean-form log-prob, clip 1e-4, step-mean loss, Gaussian KL β=0.04",
    loss=GRPO.replace(
        name="flow_grpo", summary="Flow-GRPO loss", eps_low=1e-4, eps_high=1e-4, aggregation="token_mean"
    ),
)
# GRPO-Guard (arXiv 2510.22319): Flow-GRPO + RatioNorm + cross-step balancing; the normalised log-ratio
# is ~s_t times smaller, hence the paper's much tighter clip.
FLOW_GRPO_GUARD = FLOW_GRPO.replace(
    name="flow_grpo_guard",
    summary="GRPO-Guard: Flow-GRPO + RatioNorm + cross-step gradient balancing, clip 2e-6",
    ratio_norm=True,
    step_balancing=True,
    eps_low=2e-6,
    eps_high=2e-6,
)

FLOW_PRESETS: dict[str, FlowPreset] = {p.name: p for p in (FLOW_GRPO, FLOW_GRPO_GUARD)}


def get_flow_preset(name: str, **overrides: Any) -> FlowPreset:
    """The named flow preset with ``overrides`` applied (see :meth:`FlowPreset.replace`)."""
    if name not in FLOW_PRESETS:
        raise ValueError(f"unknown flow preset {name!r}; valid presets: {sorted(FLOW_PRESETS)}")
    return FLOW_PRESETS[name].replace(**overrides) if overrides else FLOW_PRESETS[name]
