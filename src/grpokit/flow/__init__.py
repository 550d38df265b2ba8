"""Flow-matching models as GRPO policies: Flow-GRPO's SDE sampler and GRPO-Guard's regulated clipping.

sde       σ_t schedule, SDE step mean/std, Gaussian log-prob, closed-form KL and ratio shift (pure math)
grpo_guard  GRPO-Guard: RatioNorm and cross-step gradient balancing (pure math; not the run monitors of
          `grpokit.guards`)
window    the SDE window (MixGRPO, Flow-GRPO-Fast): which steps are stochastic and trained, ODE elsewhere
presets   `flow_grpo`, `flow_grpo_guard`, `mix_grpo` (window + guard), `mix_grpo_plain`, `flow_grpo_fast`
policy    FlowPolicy / FlowRollout: per-step log-probs [B, S] + mask, the LM policy's contract
loss      one denoising step's loss from the core algorithms (PPO clip, aggregation)
trainer   FlowTrainer: sample → score → advantages → update → log
digits    the built-in CPU model (scikit-learn 8×8 digits); rewards: its proxy and gold scores
diffusers_adapter   SD3 / SD3.5 through diffusers, LoRA via peft (imported only when used)
flux_adapter        FLUX.1 through diffusers: packed latents, embedded guidance, its own shift; LoRA
"""

from .presets import (
    FLOW_GRPO,
    FLOW_GRPO_FAST,
    FLOW_GRPO_GUARD,
    FLOW_PRESETS,
    MIX_GRPO,
    MIX_GRPO_PLAIN,
    FlowPreset,
    get_flow_preset,
)

__all__ = [
    "FLOW_GRPO",
    "FLOW_GRPO_FAST",
    "FLOW_GRPO_GUARD",
    "FLOW_PRESETS",
    "MIX_GRPO",
    "MIX_GRPO_PLAIN",
    "FlowPreset",
    "get_flow_preset",
]
