"""The flow trainer's config: typed sections, loaded from YAML like the LM trainer's.

A flow config is recognised by its top-level ``trainer: flow``; `grpokit train config.yaml` dispatches on
it. Sections shared with the LM trainer (rewards, logging, checkpoint, LoRA) reuse its dataclasses.
Example (the CPU task; ``grpokit demo flow`` runs the same)::

    trainer: flow
    model: {type: digits}
    rewards: [{function: "grpokit.flow.rewards:digits_proxy", name: proxy}]
    algorithm: {preset: flow_grpo_guard}
    training: {max_steps: 200, learning_rate: 3e-4}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from grpokit.config_schema import ConfigError, apply_overrides, from_dict
from grpokit.trainers.lm_config import CheckpointConfig, LoggingConfig, LoraConfig, RewardConfig

from .policy import TRAIN_STEP_SELECTIONS
from .presets import FLOW_PRESETS


@dataclass
class FlowModelConfig:
    type: Literal["digits", "sd3"] = "digits"  # built-in CPU model, or a diffusers SD3 / SD3.5 pipeline
    name_or_path: str = ""  # sd3: local directory or hub id of a StableDiffusion3Pipeline
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    lora: LoraConfig | None = None  # sd3: LoRA on the transformer (Flow-GRPO: r=32, alpha=64); None = full
    guidance_scale: float = 1.0  # classifier-free guidance g (Flow-GRPO trains SD3.5 with 4.5); 1 = off
    shift: float = 1.0  # time-grid shift (SD3 uses 3.0; the digits model was trained uniform)
    cache_dir: str | None = None  # digits: where the pre-trained weights are cached


@dataclass
class FlowDataConfig:
    path: str = ""  # prompts (JSONL/CSV/Parquet/datasets dir); "" with model.type=digits: the ten digits
    prompt_column: str = "prompt"
    eval_path: str | None = None  # held-out prompts; default: the training prompts at held-out noise seeds


@dataclass
class FlowAlgorithmConfig:
    preset: str = "flow_grpo"  # flow_grpo | flow_grpo_guard
    overrides: dict = field(default_factory=dict)  # FlowPreset fields or core Preset fields


@dataclass
class FlowSamplingConfig:
    prompts_per_step: int = 8
    num_generations: int | None = None  # G images per prompt; None = the preset's
    num_steps: int = 10  # denoising steps while training (Flow-GRPO: 10)
    eval_num_steps: int = 40  # ODE steps for evaluation (Flow-GRPO: 40)
    train_steps: int | None = None  # how many of the denoising steps are trained; None = all
    train_step_selection: Literal["first", "random", "spread"] = "first"


@dataclass
class FlowTrainingConfig:
    max_steps: int = 100
    learning_rate: float = 3e-4
    mini_batches: int = 2  # optimizer steps per rollout batch (≥ 2 makes later updates off-policy)
    num_iterations: int = 1  # passes over each rollout batch
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    seed: int = 0
    log_step_grad_norms: bool = (
        True  # measure each denoising step's gradient (a flat copy of the grads per step)
    )


@dataclass
class FlowEvalConfig:
    every_steps: int = 0  # 0 = only before and after training
    samples_per_prompt: int = 8  # images per eval prompt, at fixed held-out noise seeds
    seed: int = 12345
    grid_every_steps: int = 0  # save a PNG grid of the eval samples every N steps (0: first and last only)


@dataclass
class FlowTrainConfig:
    trainer: Literal["flow"] = "flow"
    model: FlowModelConfig = field(default_factory=FlowModelConfig)
    data: FlowDataConfig = field(default_factory=FlowDataConfig)
    rewards: list[RewardConfig] = field(default_factory=list)
    on_reward_error: Literal["stop", "none"] = "stop"
    algorithm: FlowAlgorithmConfig = field(default_factory=FlowAlgorithmConfig)
    sampling: FlowSamplingConfig = field(default_factory=FlowSamplingConfig)
    training: FlowTrainingConfig = field(default_factory=FlowTrainingConfig)
    eval: FlowEvalConfig = field(default_factory=FlowEvalConfig)
    logging: LoggingConfig = field(default_factory=lambda: LoggingConfig(run_dir="runs/flow"))
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __post_init__(self) -> None:
        positive = {
            "sampling.prompts_per_step": self.sampling.prompts_per_step,
            "sampling.num_steps": self.sampling.num_steps,
            "sampling.eval_num_steps": self.sampling.eval_num_steps,
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
        ):
            if not ok:
                raise ConfigError(f"{name}: must be {bound}, got {value}")
        if self.algorithm.preset not in FLOW_PRESETS:
            raise ConfigError(
                f"algorithm.preset: {self.algorithm.preset!r} is not one of {sorted(FLOW_PRESETS)}"
            )
        if self.sampling.train_step_selection not in TRAIN_STEP_SELECTIONS:
            raise ConfigError(f"sampling.train_step_selection: choose one of {list(TRAIN_STEP_SELECTIONS)}")


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
    raw = apply_overrides(dict(_read(source)), overrides or [])
    config = from_dict(FlowTrainConfig, raw)
    if not config.rewards:
        raise ConfigError("rewards: at least one reward is required")
    if config.model.type == "sd3" and not config.model.name_or_path:
        raise ConfigError("model.name_or_path: required for model.type=sd3 (a local directory or a hub id)")
    if config.model.type != "digits" and not config.data.path:
        raise ConfigError("data.path: required (prompts) unless model.type=digits")
    return config
