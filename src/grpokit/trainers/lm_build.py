"""Building an `LMTrainer` from a validated `LMTrainConfig`: policy, engine, data, rewards, preset."""

from __future__ import annotations

import dataclasses

from grpokit.algorithms.presets import get_preset
from grpokit.config_schema import ConfigError, coerce_fields
from grpokit.trainers.lm import LMTrainer
from grpokit.trainers.lm_config import LMTrainConfig


def build_preset(config: LMTrainConfig):
    from grpokit.algorithms.presets import Preset

    overrides = coerce_fields(Preset, config.algorithm.overrides, "algorithm.overrides")
    try:
        preset = get_preset(config.algorithm.preset, **overrides)
    except ValueError as error:
        raise ConfigError(f"algorithm: {error}") from error
    if config.rollout.num_generations is not None:
        preset = dataclasses.replace(preset, num_generations=config.rollout.num_generations)
    if (config.rollout.engine != "inprocess" and preset.behaviour_correction == "none"
            and "behaviour_correction" not in config.algorithm.overrides):
        # vLLM's kernels are not the trainer's: truncated IS (token level, cap behaviour_cap) by default.
        preset = dataclasses.replace(preset, behaviour_correction="tis")
    return preset


def build_rewards(config: LMTrainConfig):
    from grpokit.rewards import RewardRunner, load_reward

    rewards = [
        load_reward(r.function, name=r.name, weight=r.weight, timeout_seconds=r.timeout_seconds, **r.kwargs)
        for r in config.rewards
    ]
    return RewardRunner(rewards, on_error=config.on_reward_error)


def build_policy(config: LMTrainConfig):
    from grpokit.models.loading import LoraSettings, load_policy

    m = config.model
    lora = None
    if m.lora is not None:
        lora = LoraSettings(r=m.lora.r, alpha=m.lora.alpha, dropout=m.lora.dropout,
                            target_modules=m.lora.target_modules)
    return load_policy(m.name_or_path, dtype=m.dtype, gguf_file=m.gguf_file, tokenizer=m.tokenizer,
                       gradient_checkpointing=m.gradient_checkpointing, lora=lora,
                       trust_remote_code=m.trust_remote_code)


def build_trainer(config: LMTrainConfig, *, policy=None, train_data=None, eval_data=None,
                  reward_runner=None, sampler=None, callbacks=None) -> LMTrainer:
    """Every component from the config, except those passed in ready-made (tests, the demo)."""
    import torch
    from accelerate import Accelerator

    from grpokit.data import PromptSampler, load_prompt_dataset
    torch.manual_seed(config.training.seed)
    preset = build_preset(config)
    reward_runner = reward_runner or build_rewards(config)
    if train_data is None:
        train_data = load_prompt_dataset(config.data.path, prompt_column=config.data.prompt_column,
                                         required_columns=config.data.required_columns)
    if eval_data is None and config.data.eval_path:
        eval_data = load_prompt_dataset(config.data.eval_path, prompt_column=config.data.prompt_column,
                                        required_columns=config.data.required_columns)
    policy = policy or build_policy(config)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    policy.model.to(accelerator.device)
    engine = build_engine(config, policy, accelerator.device)
    if sampler is None and config.sampling.strategy == "adaptive":
        sampler = build_adaptive_sampler(config, preset.num_generations, len(train_data))
        from grpokit.sampling import PosteriorTableWriter

        callbacks = [*(callbacks or []), PosteriorTableWriter()]  # <run_dir>/prompt_pass_rates.csv
    if sampler is None:
        sampler = PromptSampler(len(train_data), seed=config.training.seed, shuffle=config.data.shuffle)
    from grpokit.guards import with_guards

    # The gold/entropy/ratio guards the config asks for, then the caller's, then report.html at the end.
    callbacks = with_guards(config, callbacks)
    return LMTrainer(config, policy=policy, engine=engine, train_data=train_data, sampler=sampler,
                     reward_runner=reward_runner, preset=preset, eval_data=eval_data, accelerator=accelerator,
                     callbacks=callbacks)


def build_engine(config: LMTrainConfig, policy, device):
    """The rollout engine `rollout.engine` names, sampling from (a synced copy of) `policy`."""
    import torch

    r = config.rollout
    generation_config = getattr(policy.model, "generation_config", None)
    eos = getattr(generation_config, "eos_token_id", None)
    eos_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if r.engine == "vllm_server":
        from grpokit.rollout.vllm_engine import VLLMServerEngine

        return VLLMServerEngine(r.vllm.server_url, policy.tokenizer, timeout=r.vllm.request_timeout,
                                eos_token_ids=eos_ids, device=device)
    if r.engine == "vllm_colocate":
        from grpokit.rollout.vllm_engine import VLLMColocateEngine

        v = r.vllm
        if v.enable_sleep_mode and not torch.cuda.is_available():
            raise ConfigError("rollout.vllm.enable_sleep_mode: vLLM sleeps on CUDA/ROCm/XPU GPUs only, "
                              "and no GPU is visible")
        return VLLMColocateEngine(v.model or config.model.name_or_path, policy.tokenizer, dtype=v.dtype,
                                  max_model_len=v.max_model_len, gpu_memory_utilization=v.gpu_memory_utilization,
                                  kv_cache_gib=v.kv_cache_gib, enable_sleep_mode=v.enable_sleep_mode,
                                  seed=config.training.seed, eos_token_ids=eos_ids, device=device)
    from grpokit.rollout.inprocess import InProcessEngine

    return InProcessEngine(policy.model, policy.tokenizer, device=device)


def build_adaptive_sampler(config: LMTrainConfig, group_size: int, num_prompts: int):
    """`sampling.strategy: adaptive`: an AdaptiveSampler whose budget defaults to uniform's P × G."""
    from grpokit.sampling import AdaptiveSampler

    s = config.sampling
    budget = s.rollouts_per_step or config.rollout.prompts_per_step * group_size
    max_group_size = s.max_group_size or max(2 * group_size, s.min_group_size)
    try:
        return AdaptiveSampler(
            num_prompts, rollouts_per_prompt=budget / config.rollout.prompts_per_step,
            min_group_size=s.min_group_size, max_group_size=max_group_size,
            adaptive_group_size=s.adaptive_group_size, prior_alpha=s.prior_alpha, prior_beta=s.prior_beta,
            discount=s.discount, success_threshold=s.success_threshold, score=s.score,
            skip_below=s.skip_below, revisit_floor=s.revisit_floor, calibration_bins=s.calibration_bins,
            seed=config.training.seed)
    except ValueError as error:
        raise ConfigError(f"sampling: {error}") from error
