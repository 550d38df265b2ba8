"""Algorithm variants as data: a :class:`Preset` is a frozen set of choices; each named variant is GRPO with a
few fields replaced, so the difference between two algorithms reads in a few lines at the bottom of this file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# importing advantages, aggregation, critic, kl and surrogates registers the built-in mechanisms
from . import aggregation, critic, kl, surrogates  # noqa: F401
from .advantages import MULTI_REWARD_MODES, STD_KINDS
from .off_policy import BEHAVIOUR_LEVELS, BEHAVIOUR_METHODS
from .registry import REGISTRIES


@dataclass(frozen=True)
class ClipCovConfig:
    """Clip-Cov (arXiv 2505.22617): detach a random ``clip_ratio`` of the valid tokens whose cov lies in
    (``cov_low``, ``cov_high``), chosen over the whole mini-batch (all micro-batches and processes; verl
    chooses per micro-batch). Paper/verl defaults."""

    clip_ratio: float = 2e-4
    cov_low: float = 1.0
    cov_high: float = 5.0


@dataclass(frozen=True)
class KLCovConfig:
    """KL-Cov (arXiv 2505.22617): add ``coef·|log π_θ − log π_old|`` to the ``top_fraction`` of valid tokens
    with the largest cov over the whole mini-batch (all micro-batches and processes). Paper defaults for 7B
    models."""

    top_fraction: float = 2e-3
    coef: float = 1.0


# Fields whose value must come from a fixed list; checked at construction with an error naming both.
# advantage, surrogate, aggregation and kl_estimator name a registered function (grpokit.algorithms.registry):
# their choices are whatever is registered when the Preset is built.
_CHOICES: dict[str, tuple[str, ...]] = {
    "std": STD_KINDS,
    "ratio_level": ("token", "sequence", "sequence_token"),
    "behaviour_correction": BEHAVIOUR_METHODS,
    "behaviour_level": BEHAVIOUR_LEVELS,
    "multi_reward": MULTI_REWARD_MODES,
}


@dataclass(frozen=True)
class Preset:
    """One GRPO-family algorithm. Defaults are GRPO's (DeepSeekMath, arXiv 2402.03300).

    Build variants with :meth:`replace` (or :func:`get_preset`), which checks field names and values.
    """

    name: str
    summary: str  # one line, shown by `grpokit presets`
    # --- advantages (grpokit.algorithms.advantages) ---
    advantage: str = "group"  # "group" z-score | "none" (Dr. GRPO, no std) | "batch" std | "rloo" | "gpg" | "gae" (PPO)
    std: str = "unbiased"  # std of the z-score: "unbiased" (n−1, torch/TRL default) | "population" (n)
    advantage_eps: float = 1e-4  # added to the std before dividing (TRL's value)
    num_generations: int = 8  # completions per prompt, G
    multi_reward: str = (
        "sum_then_normalize"  # several reward functions: TRL default | "normalize_then_sum" (GDPO)
    )
    # --- ratio and surrogate ---
    ratio_level: str = "token"  # "token" | "sequence" (GSPO, one ratio per completion) | "sequence_token"
    surrogate: str = "ppo_clip"  # "ppo_clip" | "cispo" | "sapo" | "gmpo" | "gpg" (grpokit.algorithms.surrogates)
    eps_low: float = 0.2  # ratio clipped below at 1 − eps_low
    eps_high: float = 0.2  # ratio clipped above at 1 + eps_high (DAPO clip-higher: 0.28)
    dual_clip_c: float | None = None  # dual-clip bound c > 1 for A < 0 (None: off)
    delta: float | None = None  # TRL/INTELLECT-2 two-sided cap δ > 1 on the unclipped ratio (None: off)
    tau_pos: float = 1.0  # SAPO gate temperature where A > 0 (paper/verl default)
    tau_neg: float = 1.05  # SAPO gate temperature where A ≤ 0 (paper/verl default)
    # --- PPO's learned critic (advantage "gae"; grpokit.algorithms.critic, grpokit.trainers.ppo) ---
    gae_gamma: float = 1.0  # γ: discount per token (1: the outcome reward counts fully at every token)
    gae_lambda: float = 0.95  # λ: GAE's bias-variance trade-off (1: Monte-Carlo return − V, 0: one-step TD)
    value_clip: float | None = 0.2  # c: the value may move at most c from its rollout-time value (None: off)
    critic_lr_scale: float = 1.0  # the critic's learning rate = training.learning_rate × this
    # --- loss aggregation (grpokit.algorithms.aggregation) ---
    aggregation: str = "seq_mean_token_mean"  # see AGGREGATION_MODES
    # --- regularisers ---
    beta: float = 0.04  # KL(π_θ ‖ π_ref) coefficient; 0 means no reference model is needed
    kl_estimator: str = "k3"  # "k1" | "k2" | "k3" (Schulman) | "abs" | "k1+" | "k3+" (value of k1/k3, k2's gradient)
    kl_in_reward: bool = False  # True: −β·k1 goes into the per-token reward instead of the loss
    entropy_coef: float = 0.0  # loss −= entropy_coef · H (aggregated like the policy loss)
    top_entropy_quantile: float | None = None  # train only tokens with H ≥ this quantile of the mini-batch's
    # (all micro-batches and processes; 0.8 keeps the top 20%). Split batches cost one no-grad forward more.
    clip_cov: ClipCovConfig | None = None  # Clip-Cov token detaching (None: off)
    kl_cov: KLCovConfig | None = None  # KL-Cov penalty (None: off)
    # --- behaviour-policy (rollout engine) mismatch (grpokit.algorithms.off_policy) ---
    behaviour_correction: str = "none"  # "none" | "tis" (truncate) | "mis" (mask)
    behaviour_level: str = "token"  # "token" | "sequence" | "geometric"
    behaviour_cap: float = 2.0  # C: weights above C are truncated (tis) or dropped (mis)
    behaviour_lower_cap: float | None = None  # optional lower bound, e.g. 1/C (None: no lower bound)
    self_normalize_is: bool = False  # divide the IS weights by their mean over the mini-batch (every process)
    # --- sampling and length handling (DAPO) ---
    dynamic_sampling: bool = False  # drop all-equal-reward groups and sample more until the batch is full
    overlong_filter: bool = False  # truncated completions get loss mask 0
    soft_overlong: bool = False  # add DAPO's soft overlong punishment to the reward
    overlong_cache_len: int | None = None  # L_c of the soft punishment; None → max_len // 5 (DAPO 4096/20480)

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"Preset field {name!r} must be one of {allowed}, got {value!r}")
        for registry in REGISTRIES:
            _check_registered(self, registry)
        for name, config_type in (("clip_cov", ClipCovConfig), ("kl_cov", KLCovConfig)):
            value = getattr(self, name)
            if isinstance(value, dict):  # from YAML
                object.__setattr__(self, name, _from_dict(config_type, value, f"{name}."))
            elif value is not None and not isinstance(value, config_type):
                raise ValueError(
                    f"Preset field {name!r} must be None or a {config_type.__name__}, got {value!r}"
                )
        for message, ok in _numeric_checks(self):
            if not ok:
                raise ValueError(f"Preset {self.name!r}: {message}")

    def replace(self, **changes: Any) -> Preset:
        """A copy with ``changes`` applied; unknown field names and disallowed values raise ValueError."""
        _check_field_names(Preset, changes, "Preset")
        return dataclasses.replace(self, **changes)


def _numeric_checks(p: Preset) -> list[tuple[str, bool]]:
    return [
        (f"advantage_eps must be ≥ 0, got {p.advantage_eps}", p.advantage_eps >= 0),
        (f"num_generations must be ≥ 1, got {p.num_generations}", p.num_generations >= 1),
        (f"eps_low must be ≥ 0, got {p.eps_low}", p.eps_low >= 0),
        (f"eps_high must be ≥ 0, got {p.eps_high}", p.eps_high >= 0),
        (f"dual_clip_c must be None or > 1, got {p.dual_clip_c}", p.dual_clip_c is None or p.dual_clip_c > 1),
        (f"delta must be None or > 1, got {p.delta}", p.delta is None or p.delta > 1),
        (f"tau_pos must be > 0, got {p.tau_pos}", p.tau_pos > 0),
        (f"tau_neg must be > 0, got {p.tau_neg}", p.tau_neg > 0),
        (f"beta must be ≥ 0, got {p.beta}", p.beta >= 0),
        (f"gae_gamma must be in [0, 1], got {p.gae_gamma}", 0 <= p.gae_gamma <= 1),
        (f"gae_lambda must be in [0, 1], got {p.gae_lambda}", 0 <= p.gae_lambda <= 1),
        (f"value_clip must be None or > 0, got {p.value_clip}", p.value_clip is None or p.value_clip > 0),
        (f"critic_lr_scale must be > 0, got {p.critic_lr_scale}", p.critic_lr_scale > 0),
        (
            f"top_entropy_quantile must be None or in [0, 1), got {p.top_entropy_quantile}",
            p.top_entropy_quantile is None or 0 <= p.top_entropy_quantile < 1,
        ),
        (f"behaviour_cap must be > 0, got {p.behaviour_cap}", p.behaviour_cap > 0),
        (
            f"behaviour_lower_cap must be None or in (0, behaviour_cap], got {p.behaviour_lower_cap}",
            p.behaviour_lower_cap is None or 0 < p.behaviour_lower_cap <= p.behaviour_cap,
        ),
        (
            f"overlong_cache_len must be None or ≥ 1, got {p.overlong_cache_len}",
            p.overlong_cache_len is None or p.overlong_cache_len >= 1,
        ),
    ]


def _check_registered(p: Preset, registry: Any) -> None:
    """The field names a registered function; the function's keyword-only parameters are Preset fields and
    the field values it ``requires`` hold."""
    value = getattr(p, registry.preset_field)
    if value not in registry:
        raise ValueError(f"Preset field {registry.preset_field!r} must be one of {registry.names()}, got {value!r}")
    entry = registry.get(value)
    unknown = sorted(set(entry.preset_args) - {f.name for f in dataclasses.fields(Preset)})
    if unknown:  # a registration mistake, not a user's: name the function
        raise TypeError(f"{registry.kind} {value!r} ({entry.function.__qualname__}) reads {unknown}, "
                        "which are not Preset fields; add them to Preset")
    for name, needed in entry.requires.items():
        if getattr(p, name) != needed:
            raise ValueError(f"Preset {p.name!r}: {registry.preset_field}={value!r} needs {name}={needed!r}, "
                             f"got {getattr(p, name)!r}")


def _check_field_names(cls: type, changes: dict[str, Any], what: str) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(changes) - set(names))
    if unknown:
        raise ValueError(f"unknown {what} field(s) {unknown}; valid fields: {names}")


def _from_dict(cls: type, values: dict[str, Any], prefix: str) -> Any:
    _check_field_names(cls, values, prefix.rstrip("."))
    return cls(**values)


GRPO = Preset(
    name="grpo",
    summary="DeepSeekMath GRPO: group z-score, token ratio clipped at 0.2, per-sequence mean, k3 KL β=0.04",
)
DR_GRPO = GRPO.replace(
    name="dr_grpo",
    summary="Dr. GRPO: no std division, token sum / (N·L_max), no KL",
    advantage="none",
    aggregation="seq_mean_token_sum_norm",
    beta=0.0,
)
DAPO = GRPO.replace(
    name="dapo",
    summary="DAPO: clip-higher 0.28, token mean, dynamic sampling, soft overlong punishment, no KL",
    eps_high=0.28,
    aggregation="token_mean",
    beta=0.0,
    dynamic_sampling=True,
    soft_overlong=True,
)
GSPO = GRPO.replace(
    name="gspo",
    summary="GSPO: one length-normalised ratio per sequence, clipped to [1−3e-4, 1+4e-4], no KL",
    ratio_level="sequence",
    eps_low=3e-4,
    eps_high=4e-4,
    beta=0.0,
)
GSPO_TOKEN = GSPO.replace(
    name="gspo_token",
    summary="GSPO-token: GSPO's sequence ratio value with per-token gradients (token-level advantages)",
    ratio_level="sequence_token",
)
# TRL's "bnpo" is GRPO's loss with the token mean of the *local* batch. grpokit's aggregation always uses the
# denominators it is given, so with global counts this is the length-unbiased token mean of the whole batch
# (equal to TRL's bnpo when one micro-batch holds the whole batch).
BNPO = GRPO.replace(
    name="bnpo",
    summary="BNPO (TRL): GRPO with a token-level mean instead of the per-sequence mean",
    aggregation="token_mean",
)
# MiniMax-M1 sets no lower bound on the IS weight (ε_low large) and does not publish ε_high; we use ScaleRL's
# ε_max = 5 (TRL's recommended `epsilon_high=5.0` for cispo), i.e. eps_high = 4. eps_low = 1 → lower bound 0.
CISPO = GRPO.replace(
    name="cispo",
    summary="CISPO (MiniMax-M1): −sg(min(r, 5))·A·log π for every token, token mean, no KL",
    surrogate="cispo",
    eps_low=1.0,
    eps_high=4.0,
    aggregation="token_mean",
    beta=0.0,
)
# "It Takes Two" (arXiv 2510.00977): G = 2. Its analysis uses the population std, which gives the pair
# advantages exactly ±1 (the DPO-like contrast); the unbiased std would give ±0.7071, only a smaller step size.
GRPO_2 = GRPO.replace(
    name="grpo_2",
    summary="2-GRPO: G=2 with population std, advantages ±1 per non-tied pair",
    num_generations=2,
    std="population",
)

# SAPO (arXiv 2511.20347): the objective is (1/G) Σ_i (1/|y_i|) Σ_t f(r_{i,t})·A_i, GRPO's per-sequence mean,
# with no KL term; τ_pos = 1, τ_neg = 1.05 are the paper's and verl's defaults (Preset.tau_pos/tau_neg).
SAPO = GRPO.replace(
    name="sapo",
    summary="SAPO (Qwen): soft sigmoid gate (τ+ 1, τ− 1.05) instead of the hard clip, per-sequence mean, no KL",
    surrogate="sapo",
    beta=0.0,
)
# GMPO (arXiv 2507.20673): token log-ratios clipped to (−0.4, 0.4), the paper's range (ratios within
# (e^−0.4, e^0.4), wider than GRPO's since a geometric mean moves less than its largest factor); one loss per
# sequence, so GRPO's per-sequence mean is the paper's mean over sequences (verl: torch.mean of pg_losses).
# β = 0 like the other recent presets; set `beta` to add a KL term.
GMPO = GRPO.replace(
    name="gmpo",
    summary="GMPO: geometric mean of token ratios over the sequence, log-ratio clipped to ±0.4, no KL",
    surrogate="gmpo",
    eps_low=0.4,
    eps_high=0.4,
    beta=0.0,
)
# GPG (arXiv 2504.02546): REINFORCE with the corrected group advantage, token mean (verl's gpg recipe), no KL and
# no reference model. On-policy by construction: keep training.num_iterations = 1 and one mini-batch.
GPG = GRPO.replace(
    name="gpg",
    summary="GPG: −A·log π (no ratio, no clip) with GPG's corrected group advantage, token mean, no KL",
    surrogate="gpg",
    advantage="gpg",
    aggregation="token_mean",
    beta=0.0,
)

# PPO with a learned critic, RLHF-style (InstructGPT 2203.02155; "The N Implementation Details of RLHF with PPO"):
# one completion per prompt; the outcome reward on the last token and −β·k1 to the reference on every token
# (kl_in_reward); GAE(γ = 1, λ = 0.95) over a critic's values, whitened over the batch; the core's clipped
# surrogate (ε 0.2) and token mean; the critic's value clipped to ±0.2 of its rollout-time value. The critic is
# trained by grpokit.trainers.ppo (a copy of the policy's body with a zero-initialised value head).
PPO = GRPO.replace(
    name="ppo",
    summary="PPO: learned critic, GAE(γ 1, λ 0.95), value clip 0.2, per-token KL reward (β 0.05), G=1, token mean",
    advantage="gae",
    num_generations=1,
    beta=0.05,
    kl_estimator="k1",
    kl_in_reward=True,
    aggregation="token_mean",
)

PRESETS: dict[str, Preset] = {
    p.name: p for p in (GRPO, DR_GRPO, DAPO, GSPO, GSPO_TOKEN, BNPO, CISPO, GRPO_2, SAPO, GMPO, GPG, PPO)
}


def get_preset(name: str, **overrides: Any) -> Preset:
    """The named preset with ``overrides`` applied (validated like :meth:`Preset.replace`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
