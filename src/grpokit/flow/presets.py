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
from .window import WINDOW_PLACEMENTS


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
    ratio_norm: bool = False  # GRPO-Guard RatioNorm (grpokit.flow.grpo_guard.ratio_norm_log_ratio)
    step_balancing: bool = False  # GRPO-Guard cross-step gradient balancing weights
    # The SDE window (grpokit.flow.window): SDE steps per trajectory, the only ones trained; the rest run the
    # ODE. None = every step (Flow-GRPO).
    sde_window: int | None = None
    window_placement: str = "slide"  # "slide" (MixGRPO, moves with training) | "random" (Flow-GRPO-Fast)
    window_shift_every: int = 0  # slide: training steps between moves (MixGRPO's τ); 0 = fixed at the start
    window_stride: int = 1  # slide: denoising steps the window moves each time (MixGRPO's s)
    window_range: float = 1.0  # the window stays within this fraction of the steps, from the noisiest
    kl_steps: int | None = None  # the KL to the reference (β > 0) only on the first k (noisiest) steps; None = all

    def __post_init__(self) -> None:
        if self.window_placement not in WINDOW_PLACEMENTS:
            raise ValueError(
                f"window_placement must be one of {WINDOW_PLACEMENTS}, got {self.window_placement!r}"
            )
        if self.sde_window is not None and self.sde_window < 1:
            raise ValueError(f"sde_window must be >= 1 or None (every step), got {self.sde_window}")
        if self.window_shift_every < 0 or self.window_stride < 1:
            raise ValueError(
                f"window_shift_every must be >= 0 and window_stride >= 1, got "
                f"{self.window_shift_every} and {self.window_stride}"
            )
        if not 0 < self.window_range <= 1:
            raise ValueError(f"window_range must be in (0, 1], got {self.window_range}")
        if self.kl_steps is not None and self.kl_steps < 1:
            raise ValueError(f"kl_steps must be >= 1 or None (every step), got {self.kl_steps}")
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
# is ~s_t times smaller, hence the paper's much tighter clip. It keeps Flow-GRPO's KL (β = 0.04): without a KL
# the guard only delays over-optimization; with one it holds the gold score (experiments/flow_guard.py).
FLOW_GRPO_GUARD = FLOW_GRPO.replace(
    name="flow_grpo_guard",
    summary="GRPO-Guard: Flow-GRPO + RatioNorm + cross-step gradient balancing, clip 2e-6",
    ratio_norm=True,
    step_balancing=True,
    eps_low=2e-6,
    eps_high=2e-6,
)

# MixGRPO (arXiv 2507.21802) as published: SDE and training only in a window of steps that slides from the
# noisiest steps towards the clean end; ODE elsewhere. The paper: w = 4 of 25 steps (16%), τ = 25, stride 1;
# here 2 of Flow-GRPO's 10 training steps. Kept for comparison: on the digits bench it loses more gold than
# full-SDE Flow-GRPO at the same proxy (bench/flow_window.py), hence `mix_grpo` below.
MIX_GRPO_PLAIN = FLOW_GRPO.replace(
    name="mix_grpo_plain",
    summary="MixGRPO as published, no guard: Flow-GRPO with SDE + training in a 2-step window sliding 1 step "
    "every 25 training steps over the whole trajectory, ODE elsewhere",
    sde_window=2,
    window_placement="slide",
    window_shift_every=25,
)
# MixGRPO with GRPO-Guard (as verl-omni ships them together), found by experiment (issue 19,
# bench/flow_window.py). Why the plain window loses more gold: Adam moves the weights by ~lr per update
# whatever the number of steps trained, so two steps take the whole update (their raw ratio spread is ~2× the
# same steps' under full SDE), and at the noisy steps the raw ratio's spread (∝ 1/s) stays far inside clip ε —
# the clip is active on 0.7% of the window's samples against 11% under full SDE, so the update goes unchecked;
# as the window slides towards the clean steps, those large updates cost realism fastest. RatioNorm makes the
# ratio's spread independent of s, so the clip binds at every window step (30–44% active); keeping the window
# among the noisiest 30% of the steps removes the rest. Clip 4e-6 (2× GRPO-Guard's) restores the proxy gain the
# tighter clip gives up (measured with 8 seeds: 2e-6, 3e-6, 4e-6 → proxy 0.92, 0.94, 0.96 × full, same gold).
# Bench, 8 seeds, window / full: time 0.45, proxy gain 0.96, gold drop at the same proxy 0.30 (plain: 1.17).
MIX_GRPO = FLOW_GRPO_GUARD.replace(
    name="mix_grpo",
    summary="MixGRPO + GRPO-Guard: RatioNorm + balancing, clip 4e-6, SDE + training in a 2-step window sliding "
    "1 step every 25 training steps within the noisiest 30% of the steps, ODE elsewhere",
    sde_window=2,
    window_placement="slide",
    window_shift_every=25,
    window_range=0.3,
    eps_low=4e-6,
    eps_high=4e-6,
)
# Flow-GRPO-Fast (Flow-GRPO's repository): 2 SDE steps at a random place in the first half of the
# trajectory on every training step, ODE elsewhere.
FLOW_GRPO_FAST = FLOW_GRPO.replace(
    name="flow_grpo_fast",
    summary="Flow-GRPO-Fast: 2 SDE (trained) steps at a random place in the first half, ODE elsewhere",
    sde_window=2,
    window_placement="random",
    window_range=0.5,
)

FLOW_PRESETS: dict[str, FlowPreset] = {
    p.name: p for p in (FLOW_GRPO, FLOW_GRPO_GUARD, MIX_GRPO, MIX_GRPO_PLAIN, FLOW_GRPO_FAST)
}


def get_flow_preset(name: str, **overrides: Any) -> FlowPreset:
    """The named flow preset with ``overrides`` applied (see :meth:`FlowPreset.replace`)."""
    if name not in FLOW_PRESETS:
        raise ValueError(f"unknown flow preset {name!r}; valid presets: {sorted(FLOW_PRESETS)}")
    return FLOW_PRESETS[name].replace(**overrides) if overrides else FLOW_PRESETS[name]
