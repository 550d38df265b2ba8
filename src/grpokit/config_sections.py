"""Config sections both trainers share: rewards, LoRA, logging, checkpoints.

The language-model trainer (`grpokit.trainers.lm_config`) and the flow trainer (`grpokit.flow.config`)
both import these, so neither imports the other's config. Each field's comment is its help text
(`grpokit config`, docs/config.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from grpokit.config_schema import ConfigError


@dataclass
class LoraConfig:
    """LoRA adapters instead of full fine-tuning (peft)."""

    r: int = 16  # rank of each adapter's A·B update
    alpha: int = 32  # scale: the update is multiplied by alpha / r
    dropout: float = 0.0  # dropout on the adapter's input while training
    target_modules: Any = "all-linear"  # "all-linear" or a list of module names


@dataclass
class RewardConfig:
    """One reward: a function scoring completions; the rewards are summed with their weights."""

    function: str = ""  # built-in name, "module:function" or "path/to/file.py:function"
    name: str | None = None  # how it is logged; defaults to the function's name
    weight: float = 1.0  # its factor in the total reward
    kwargs: dict = field(default_factory=dict)  # extra keyword arguments passed to the function on every call
    timeout_seconds: float | None = None  # seconds per batch call; None = the config's rewards_timeout_seconds


@dataclass
class LoggingConfig:
    """Where the run writes and what it logs."""

    run_dir: str = "runs/grpo"  # metrics.jsonl, checkpoints/, report.html and the other logs go here
    tensorboard: bool = True  # also write TensorBoard event files to run_dir
    wandb_project: str | None = None  # also log to this Weights & Biases project; None = off
    progress: bool = True  # a progress bar with the latest metrics in the terminal
    plot: bool = True  # draw metrics.png at the end
    # The completions log `run_dir/samples.jsonl` (see grpokit.monitoring.samples): every `samples_every`
    # steps the prompts, completions, per-reward scores, total reward and advantage of the step's first
    # `samples_per_log` groups (0 = off); at every evaluation the greedy completions and scores of the
    # first `eval_samples` held-out prompts (the same prompts every time, so they can be followed).
    samples_every: int = 10
    samples_per_log: int = 2  # groups logged to samples.jsonl every samples_every steps (0 = off)
    eval_samples: int = 4  # held-out prompts whose greedy completions are logged at each evaluation

    def __post_init__(self) -> None:
        for name in ("samples_every", "samples_per_log", "eval_samples"):
            if getattr(self, name) < 0:
                raise ConfigError(f"logging.{name}: must be >= 0, got {getattr(self, name)}")


@dataclass
class CheckpointConfig:
    """Checkpoints in run_dir/checkpoints (written atomically; resumed from automatically)."""

    every_steps: int = 0  # 0 = only at the end
    keep_last: int = 2  # older step checkpoints are deleted (checkpoints/best is kept apart)
    save_merged_lora: bool = False  # LoRA: merged weights instead of the adapter only
    resume: bool = True  # continue from run_dir's latest checkpoint when there is one


def move_num_generations_to_rollout(config: Any) -> str:
    """G has one home, `rollout.num_generations`; older configs set it as `algorithm.overrides.num_generations`,
    which is moved there with a warning (an error when both are set and differ). Returns the field the user
    wrote G in, for error messages. Shared by the LM and flow configs."""
    import warnings

    old = config.algorithm.overrides.pop("num_generations", None)
    if old is None:
        return "rollout.num_generations"
    new = config.rollout.num_generations
    if new is not None and new != old:
        raise ConfigError(f"algorithm.overrides.num_generations ({old}) disagrees with rollout.num_generations "
                          f"({new}); G is set in rollout.num_generations only")
    warnings.warn("algorithm.overrides.num_generations: G is set as rollout.num_generations now; the override is "
                  "read for now", FutureWarning, stacklevel=4)
    config.rollout.num_generations = old
    return "algorithm.overrides.num_generations"
