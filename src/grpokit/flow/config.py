"""The flow trainer's config: typed sections, loaded from YAML like the LM trainer's.

A flow config is recognised by its top-level ``trainer: flow``; `grpokit train config.yaml` dispatches on
it. Sections shared with the LM trainer (rewards, logging, checkpoint, LoRA) come from
`grpokit.config_sections`. The `rollout` section was called `sampling` before; that name is still read, with
a warning. Example (the CPU task; ``grpokit demo flow`` runs the same)::

    trainer: flow
    model: {type: digits}
    rewards: [{function: "grpokit.flow.rewards:digits_proxy", name: proxy}]
    algorithm: {preset: flow_grpo_guard}
    training: {max_steps: 200, learning_rate: 3e-4}
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from grpokit.config_schema import ConfigError, apply_overrides, checked_overrides, from_dict
from grpokit.config_sections import (
    CheckpointConfig,
    LoggingConfig,
    LoraConfig,
    RewardConfig,
    move_num_generations_to_rollout,
)

from .policy import TRAIN_STEP_SELECTIONS
from .presets import FLOW_PRESETS, FlowPreset


@dataclass
class FlowModelConfig:
    """The flow-matching policy: the built-in digits model or a diffusers SD3 or FLUX.1 pipeline."""

    # built-in CPU model, a diffusers SD3 / SD3.5 pipeline, or a FLUX.1 pipeline (dev / schnell)
    type: Literal["digits", "sd3", "flux"] = "digits"
    name_or_path: str = ""  # sd3 / flux: local directory or hub id of a StableDiffusion3Pipeline / FluxPipeline
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # parameter dtype of the trained model
    lora: LoraConfig | None = None  # sd3 / flux: LoRA on the transformer (Flow-GRPO: r=32, alpha=64); None = full
    guidance_scale: float = 1.0  # classifier-free guidance g (Flow-GRPO trains SD3.5 with 4.5); 1 = off
    # flux: FLUX.1-dev's embedded guidance, an input of the transformer (one pass, unlike guidance_scale's
    # two); its pipeline's default 3.5. Models without a guidance embedding (schnell) ignore it.
    flux_guidance: float = 3.5
    shift: float = 1.0  # time-grid shift (SD3 uses 3.0; the digits model was trained uniform)
    cache_dir: str | None = None  # digits: where the pre-trained weights are cached


@dataclass
class FlowDataConfig:
    """The prompts (for the digits model, the ten digit names by default)."""

    path: str = ""  # prompts (JSONL/CSV/Parquet/datasets dir); "" with model.type=digits: the ten digits
    prompt_column: str = "prompt"  # the column holding each prompt's text
    eval_path: str | None = None  # held-out prompts; default: the training prompts at held-out noise seeds


@dataclass
class FlowAlgorithmConfig:
    """The flow variant: a preset (see `grpokit presets`) and the fields it changes."""

    preset: str = "flow_grpo"  # flow_grpo | flow_grpo_guard | mix_grpo | mix_grpo_plain | flow_grpo_fast
    # FlowPreset fields or core Preset fields, e.g. {noise_level: 0.5}; names and types checked at load.
    overrides: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from grpokit.algorithms.presets import Preset

        self.overrides = checked_overrides([FlowPreset, Preset], self.overrides, "algorithm.overrides")


@dataclass
class FlowRolloutConfig:
    """How images are generated: G per prompt, and the denoising steps sampled and trained."""

    prompts_per_step: int = 8  # prompts rolled out per training step (the batch is prompts_per_step × G)
    num_generations: int | None = None  # G images per prompt; None = the preset's
    num_steps: int = 10  # denoising steps while training (Flow-GRPO: 10)
    eval_num_steps: int = 40  # ODE steps for evaluation (Flow-GRPO: 40)
    train_steps: int | None = None  # how many of the denoising steps (of the preset's SDE window) are trained; None = all
    # Which `train_steps` of the denoising steps are trained: the first (noisiest) ones, as Flow-GRPO does; a
    # fresh random subset per sample (DanceGRPO); or evenly spread over the trajectory.
    train_step_selection: Literal["first", "random", "spread"] = "first"


@dataclass
class FlowTrainingConfig:
    """The optimizer (AdamW) and how each rollout batch is split into updates."""

    max_steps: int = 100  # training steps (one rollout batch each)
    learning_rate: float = 3e-4  # AdamW's learning rate
    mini_batches: int = 2  # optimizer steps per rollout batch (≥ 2 makes later updates off-policy)
    num_iterations: int = 1  # passes over each rollout batch
    max_grad_norm: float = 1.0  # clip the global gradient norm to this before each optimizer step
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    adam_beta1: float = 0.9  # AdamW's β1
    adam_beta2: float = 0.999  # AdamW's β2
    warmup_steps: int = 0  # linear warm-up to learning_rate over this many training steps
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"  # after warm-up; linear/cosine reach 0 at max_steps
    seed: int = 0  # seeds torch, the prompt order and the noise: the same seed reproduces a run
    log_step_grad_norms: bool = True  # measure each denoising step's gradient (a flat copy of the grads per step)


@dataclass
class FlowEvalConfig:
    """Held-out evaluation: mean rewards of images at fixed noise seeds, with the deterministic ODE sampler."""

    every_steps: int = 0  # 0 = only before and after training
    samples_per_prompt: int = 8  # images per eval prompt, at fixed held-out noise seeds
    seed: int = 12345  # seeds the noise of the held-out images: the same images at every evaluation
    grid_every_steps: int = 0  # save a PNG grid of the eval samples every N steps (0: first and last only)


@dataclass
class FlowTrainConfig:
    """A flow-model training run (a config with `trainer: flow`)."""

    trainer: Literal["flow"] = "flow"  # marks a flow config; `grpokit train` dispatches on it
    model: FlowModelConfig = field(default_factory=FlowModelConfig)  # the model to train
    data: FlowDataConfig = field(default_factory=FlowDataConfig)  # the prompts
    # At least one; functions of (prompts, completions=images [3, H, W] in [-1, 1], **columns).
    rewards: list[RewardConfig] = field(default_factory=list)
    # A reward that raises or returns a wrong length or NaN: "stop" ends the run naming it; "none" scores it
    # None with a warning.
    on_reward_error: Literal["stop", "none"] = "stop"
    algorithm: FlowAlgorithmConfig = field(default_factory=FlowAlgorithmConfig)  # the preset and its overrides
    rollout: FlowRolloutConfig = field(default_factory=FlowRolloutConfig)  # G and the denoising steps
    training: FlowTrainingConfig = field(default_factory=FlowTrainingConfig)  # optimizer and batch split
    eval: FlowEvalConfig = field(default_factory=FlowEvalConfig)  # held-out rewards
    logging: LoggingConfig = field(  # run directory and logs (run_dir defaults to runs/flow)
        default_factory=lambda: LoggingConfig(run_dir="runs/flow"))
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)  # saving and resuming

    def __post_init__(self) -> None:
        positive = {
            "rollout.prompts_per_step": self.rollout.prompts_per_step,
            "rollout.num_steps": self.rollout.num_steps,
            "rollout.eval_num_steps": self.rollout.eval_num_steps,
            "training.max_steps": self.training.max_steps,
            "training.mini_batches": self.training.mini_batches,
            "training.num_iterations": self.training.num_iterations,
            "eval.samples_per_prompt": self.eval.samples_per_prompt,
        }
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name}: must be >= 1, got {value}")
        t = self.training
        for name, value, ok, bound in (
            ("training.learning_rate", t.learning_rate, t.learning_rate > 0, "> 0"),
            ("training.max_grad_norm", t.max_grad_norm, t.max_grad_norm > 0, "> 0"),
            ("training.weight_decay", t.weight_decay, t.weight_decay >= 0, ">= 0"),
            ("training.adam_beta1", t.adam_beta1, 0 <= t.adam_beta1 < 1, "in [0, 1)"),
            ("training.adam_beta2", t.adam_beta2, 0 <= t.adam_beta2 < 1, "in [0, 1)"),
            ("training.warmup_steps", t.warmup_steps, t.warmup_steps >= 0, ">= 0"),
        ):
            if not ok:
                raise ConfigError(f"{name}: must be {bound}, got {value}")
        if self.algorithm.preset not in FLOW_PRESETS:
            raise ConfigError(
                f"algorithm.preset: {self.algorithm.preset!r} is not one of {sorted(FLOW_PRESETS)}"
            )
        if self.rollout.num_generations is not None and self.rollout.num_generations < 2:
            raise ConfigError(f"rollout.num_generations: must be >= 2 (advantages compare the images of a group), "
                              f"got {self.rollout.num_generations}")
        if self.rollout.train_step_selection not in TRAIN_STEP_SELECTIONS:
            raise ConfigError(f"rollout.train_step_selection: choose one of {list(TRAIN_STEP_SELECTIONS)}")


def is_flow_config(source: str | Path | dict) -> bool:
    """True when a YAML file (or dict) declares ``trainer: flow``."""
    return _read(source).get("trainer") == "flow"


def _read(source: str | Path | dict) -> dict[str, Any]:
    import yaml

    if isinstance(source, dict):
        return source
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error


def load_flow_config(source: str | Path | dict, overrides: list[str] | None = None) -> FlowTrainConfig:
    """Read a YAML file (or a dict), apply ``--set`` overrides, validate, return the config."""
    raw = _renamed_sections(dict(_read(source)))
    overrides = [_renamed_override(item) for item in overrides or []]
    raw = apply_overrides(raw, overrides)
    config = from_dict(FlowTrainConfig, raw)
    _move_num_generations_to_rollout(config)
    if not config.rewards:
        raise ConfigError("rewards: at least one reward is required")
    if config.model.type in ("sd3", "flux") and not config.model.name_or_path:
        raise ConfigError(f"model.name_or_path: required for model.type={config.model.type} "
                          "(a local directory or a hub id)")
    if config.model.type != "digits" and not config.data.path:
        raise ConfigError("data.path: required (prompts) unless model.type=digits")
    return config


def _move_num_generations_to_rollout(config: FlowTrainConfig) -> None:
    """`move_num_generations_to_rollout`, and a moved G must be at least 2."""
    if move_num_generations_to_rollout(config) != "algorithm.overrides.num_generations":
        return
    old = config.rollout.num_generations
    if old < 2:
        raise ConfigError(f"algorithm.overrides.num_generations: must be >= 2 (advantages compare the images of a "
                          f"group), got {old}")


def _renamed_sections(raw: dict[str, Any]) -> dict[str, Any]:
    """The `sampling` section of older flow configs is `rollout` (as in the LM trainer's config)."""
    if "sampling" not in raw:
        return raw
    if "rollout" in raw:
        raise ConfigError("sampling: renamed to rollout, and this config has both; merge them into rollout")
    warnings.warn("flow config: the `sampling` section is now called `rollout` (same fields); "
                  "`sampling` is read for now", FutureWarning, stacklevel=3)
    raw["rollout"] = raw.pop("sampling")
    return raw


def _renamed_override(item: str) -> str:
    if item.strip().startswith("sampling."):
        warnings.warn(f"--set {item}: the flow config's `sampling` section is now called `rollout`",
                      FutureWarning, stacklevel=3)
        return item.strip().replace("sampling.", "rollout.", 1)
    return item
