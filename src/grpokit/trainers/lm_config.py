"""The language-model trainer's config: one typed dataclass per YAML section.

Every default is documented where it is defined. Load with `load_lm_config(path, overrides)`;
unknown keys, wrong types and values outside an allowed set are errors naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from grpokit.config_schema import ConfigError, apply_overrides, from_dict
from grpokit.guards.config import GuardsConfig


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: Any = "all-linear"  # "all-linear" or a list of module names


@dataclass
class ModelConfig:
    name_or_path: str = ""  # local directory or hub id (AutoModelForCausalLM)
    gguf_file: str | None = None  # a .gguf file inside name_or_path, dequantized on load
    tokenizer: str | None = None  # defaults to name_or_path
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    gradient_checkpointing: bool = False
    lora: LoraConfig | None = None  # None = full fine-tuning
    trust_remote_code: bool = False


@dataclass
class DataConfig:
    path: str = ""  # JSONL, CSV, Parquet or a `datasets.save_to_disk` directory
    prompt_column: str = "prompt"  # text or chat messages
    required_columns: list[str] = field(default_factory=list)  # checked on every row before training
    eval_path: str | None = None  # held-out prompts for evaluation
    shuffle: bool = True


@dataclass
class RewardConfig:
    function: str = ""  # built-in name, "module:function" or "path/to/file.py:function"
    name: str | None = None  # how it is logged; defaults to the function's name
    weight: float = 1.0
    kwargs: dict = field(default_factory=dict)
    timeout_seconds: float | None = None


@dataclass
class AlgorithmConfig:
    preset: str = "grpo"  # see `grpokit presets`
    overrides: dict = field(default_factory=dict)  # any Preset field, e.g. {eps_high: 0.28}


@dataclass
class VLLMConfig:
    """`rollout.engine: vllm_colocate | vllm_server` (see `grpokit.rollout.vllm_engine`)."""

    server_url: str = "http://127.0.0.1:8000"  # vllm_server: where `grpokit vllm-serve MODEL` listens
    request_timeout: float = 600.0  # vllm_server: seconds per HTTP request (a generation or a weight push)
    model: str | None = None  # vllm_colocate: what vLLM loads; None = model.name_or_path (weights synced at start)
    dtype: str = "auto"  # vllm_colocate; "auto" = the checkpoint's
    max_model_len: int | None = None  # vllm_colocate; None = the model's maximum
    gpu_memory_utilization: float = 0.3  # vllm_colocate on GPU: the share vLLM may take; training gets the rest
    kv_cache_gib: float | None = 1.0  # vllm_colocate: KV cache size (vLLM's CPU default takes most of the RAM)
    enable_sleep_mode: bool = False  # vllm_colocate on GPU: free vLLM's memory between rollouts


@dataclass
class RolloutConfig:
    # inprocess: the policy samples itself; vllm_colocate: a vLLM LLM in this process; vllm_server: a
    # `grpokit vllm-serve` server at rollout.vllm.server_url. With a vLLM engine the preset's behaviour
    # correction defaults to truncated IS (token level, cap 2) unless algorithm.overrides sets
    # behaviour_correction (e.g. "none").
    engine: Literal["inprocess", "vllm_colocate", "vllm_server"] = "inprocess"
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    # Before the first update, the trainer recomputes the sampled tokens' log-probs and fails when the
    # mean |log π_trainer − log μ_engine| over tokens exceeds this (wrong weights, dtype or template).
    mismatch_tolerance: float = 0.05
    num_generations: int | None = None  # G; None = the preset's
    prompts_per_step: int = 16
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_dynamic_sampling_rounds: int = 4  # DAPO: extra generation rounds to fill the batch


@dataclass
class SamplingConfig:
    """Which prompts each step rolls out and how many completions each gets (`grpokit.sampling`).

    "uniform": shuffled epochs over the data set, G = rollout.num_generations for every prompt.
    "adaptive": a Beta pass-rate posterior per prompt picks prompts likely to give groups with
    unequal rewards, skips confidently solved or hopeless ones (revisited at a floor rate), and splits
    a rollout budget into per-prompt G_i ≥ min_group_size.
    """

    strategy: Literal["uniform", "adaptive"] = "uniform"
    rollouts_per_step: int | None = None  # adaptive budget Σ_i G_i; None = prompts_per_step × G (as uniform)
    min_group_size: int = 2  # no group smaller: a single completion has no advantage
    max_group_size: int | None = None  # None = 2 × G
    adaptive_group_size: bool = True  # False: every prompt gets rollouts_per_step / prompts_per_step
    # Beta prior of every prompt's pass rate. Jeffreys (½, ½) rather than uniform (1, 1): the pass rates
    # of a prompt pool pile up at 0 and 1, so one all-equal group should already count for a lot.
    prior_alpha: float = 0.5
    prior_beta: float = 0.5
    # λ: α ← λ·α + s, β ← λ·β + (n − s) at each update of a prompt, so an older policy's evidence fades;
    # 1 = never forget (in the bench: R 0.93 instead of 0.64).
    discount: float = 0.9
    success_threshold: float = 0.5  # a rollout succeeds when its total reward is above this
    # Rank prompts by a posterior draw per prompt ("thompson", explores by itself) or by the expectation
    # ("expected", deterministic: in bench/adaptive_sampling.py it kept re-picking the same prompts and
    # ended 6 points lower).
    score: Literal["thompson", "expected"] = "thompson"
    skip_below: float = 0.25  # skip prompts whose chance of an informative group (mean G) is below this
    revisit_floor: float = 0.05  # share of each batch drawn uniformly from all prompts, skipped ones included
    calibration_bins: int = 5  # bins of the logged predicted-vs-observed pass rates

    def __post_init__(self) -> None:
        if self.min_group_size < 2:
            raise ConfigError(f"sampling.min_group_size: must be >= 2, got {self.min_group_size}")
        if self.max_group_size is not None and self.max_group_size < self.min_group_size:
            raise ConfigError("sampling.max_group_size: must be >= sampling.min_group_size")
        if self.prior_alpha <= 0 or self.prior_beta <= 0:
            raise ConfigError("sampling.prior_alpha, sampling.prior_beta: must be > 0")
        if not 0.0 < self.discount <= 1.0:
            raise ConfigError(f"sampling.discount: must be in (0, 1], got {self.discount}")
        if not 0.0 <= self.revisit_floor <= 1.0:
            raise ConfigError(f"sampling.revisit_floor: must be in [0, 1], got {self.revisit_floor}")
        if self.calibration_bins < 1:
            raise ConfigError("sampling.calibration_bins: must be >= 1")


@dataclass
class TrainingConfig:
    max_steps: int = 100
    num_iterations: int = 1  # μ: passes over each rollout batch
    mini_batches: int = 1  # optimizer steps per pass (the batch split into this many parts)
    micro_batch_size: int = 8  # sequences per forward/backward (gradient accumulation)
    learning_rate: float = 1e-6
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    max_grad_norm: float = 1.0
    seed: int = 0
    # Positions per chunk of the chunked log-prob/entropy pass. 128 keeps a [chunk, 32k-vocab] float32 temporary
    # (16 MiB) under glibc's 32 MiB mmap ceiling, so CPU runs reuse it instead of page-faulting a fresh buffer
    # each time (measured on a 32k-vocab model: -25% training time, sys time 3.3 s -> 0.8 s per step).
    logprob_chunk_size: int = 128
    # Multi-process only: shard parameters, gradients and optimizer state over the processes with PyTorch
    # FSDP2 (one group per decoder layer) instead of replicating them (DDP). An accelerate FSDP config
    # turns it on too. A full-weights copy per process serves sampling, evaluation and checkpoints.
    fsdp: bool = False


@dataclass
class EvalConfig:
    every_steps: int = 0  # 0 = only before and after training
    num_prompts: int = 100
    samples_per_prompt: int = 4  # k for pass@k / mean@k
    temperature: float = 1.0
    greedy: bool = True  # also report greedy accuracy
    reward: str | None = None  # reward name scored as accuracy (> threshold); default the first
    success_threshold: float = 0.5


@dataclass
class GoldConfig:
    """Gold evaluators: rewards never optimized, scored next to the proxy (training) rewards on the same
    held-out completions at every evaluation (needs held-out data; see `grpokit.guards`)."""

    rewards: list[RewardConfig] = field(default_factory=list)  # empty = no gold evaluation
    num_prompts: int = 100  # the first N held-out prompts
    samples_per_prompt: int = 4  # completions per prompt, sampled at eval.temperature with a fixed seed
    keep_best: bool = True  # save checkpoints/best at each new best gold/score


@dataclass
class LoggingConfig:
    run_dir: str = "runs/grpo"
    tensorboard: bool = True
    wandb_project: str | None = None
    progress: bool = True
    plot: bool = True  # draw metrics.png at the end


@dataclass
class CheckpointConfig:
    every_steps: int = 0  # 0 = only at the end
    keep_last: int = 2
    save_merged_lora: bool = False  # LoRA: merged weights instead of the adapter only
    resume: bool = True  # continue from run_dir's latest checkpoint when there is one


@dataclass
class LMTrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rewards: list[RewardConfig] = field(default_factory=list)
    on_reward_error: Literal["stop", "none"] = "stop"  # "none": score the batch's rows as None
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    gold: GoldConfig = field(default_factory=GoldConfig)
    guards: GuardsConfig = field(default_factory=GuardsConfig)  # alarms and their actions
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __post_init__(self) -> None:
        positive = {
            "rollout.prompts_per_step": self.rollout.prompts_per_step,
            "rollout.max_new_tokens": self.rollout.max_new_tokens,
            "training.max_steps": self.training.max_steps,
            "training.num_iterations": self.training.num_iterations,
            "training.mini_batches": self.training.mini_batches,
            "training.micro_batch_size": self.training.micro_batch_size,
        }
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name}: must be >= 1, got {value}")
        if self.rollout.num_generations is not None and self.rollout.num_generations < 1:
            raise ConfigError("rollout.num_generations: must be >= 1")
        if self.rollout.prompts_per_step % self.training.mini_batches:
            raise ConfigError(
                f"training.mini_batches: {self.training.mini_batches} must divide "
                f"rollout.prompts_per_step ({self.rollout.prompts_per_step})"
            )


def load_lm_config(source: str | Path | dict, overrides: list[str] | None = None) -> LMTrainConfig:
    """Read a YAML file (or a dict), apply `--set` overrides, validate, return the config."""
    import yaml

    if isinstance(source, dict):
        raw = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from error
    raw = apply_overrides(dict(raw), overrides or [])
    config = from_dict(LMTrainConfig, raw)
    if not config.model.name_or_path:
        raise ConfigError("model.name_or_path: required (a local directory or a hub id)")
    if not config.data.path:
        raise ConfigError("data.path: required (JSONL, CSV, Parquet or a datasets directory)")
    if not config.rewards:
        raise ConfigError("rewards: at least one reward is required")
    return config
