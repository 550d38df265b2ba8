"""Building an `LMTrainer` from a validated `LMTrainConfig`: policy, engine, data, rewards, preset."""

from __future__ import annotations

import dataclasses

from grpokit.config_schema import ConfigError
from grpokit.trainers.lm import LMTrainer
from grpokit.trainers.lm_config import LMTrainConfig, resolved_preset


def build_preset(config: LMTrainConfig):
    """The run's preset: `resolved_preset` (overrides, G from rollout.num_generations), then the vLLM default."""
    preset = resolved_preset(config)
    off_policy = config.rollout.engine != "inprocess" or config.training.async_.max_staleness > 0
    if (off_policy and preset.behaviour_correction == "none"
            and "behaviour_correction" not in config.algorithm.overrides):
        # vLLM's kernels are not the trainer's, and an asynchronous rollout comes from older weights:
        # truncated IS (token level, cap behaviour_cap) by default.
        preset = dataclasses.replace(preset, behaviour_correction="tis")
    return preset


def build_rewards(config: LMTrainConfig):
    from grpokit.rewards import RewardRunner
    from grpokit.rewards.loader import load_configured_reward

    rewards = [load_configured_reward(r, config.rewards_timeout_seconds) for r in config.rewards]
    names = [reward.name for reward in rewards]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise ConfigError(f"rewards[{index}]: a reward named {name!r} comes earlier too (names key the "
                              "metrics); set name: to tell them apart")
    return RewardRunner(rewards, on_error=config.on_reward_error)


def set_torch_threads(num_threads: int) -> None:
    """This process's torch intra-op and inter-op threads (`training.num_threads`, `grpokit --threads`)."""
    import torch

    if num_threads < 1:
        raise ConfigError(f"training.num_threads (--threads): must be >= 1, got {num_threads}")
    torch.set_num_threads(num_threads)
    try:
        torch.set_num_interop_threads(num_threads)
    except RuntimeError:  # settable once, before any inter-op work: an earlier call (the CLI flag) did it
        pass


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
    if config.training.num_threads is not None:
        set_torch_threads(config.training.num_threads)
    torch.manual_seed(config.training.seed)
    preset = build_preset(config)
    reward_runner = reward_runner or build_rewards(config)
    if train_data is None and config.data.reasoning_gym is not None:
        train_data, generated_eval = build_reasoning_gym_data(config)
        eval_data = eval_data if eval_data is not None else generated_eval
    if train_data is None:
        train_data = load_prompt_dataset(config.data.path, prompt_column=config.data.prompt_column,
                                         required_columns=config.data.required_columns)
    if eval_data is None and config.data.eval_path:
        eval_data = load_prompt_dataset(config.data.eval_path, prompt_column=config.data.prompt_column,
                                        required_columns=config.data.required_columns)
    policy = policy or build_policy(config)
    check_prompt_lengths(config, policy, train_data, eval_data)
    check_reward_columns(train_data, eval_data)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    policy.model.to(accelerator.device)
    engine = build_engine(config, policy, accelerator.device)
    agent = build_agent(config, policy, engine) if config.rollout.agent is not None else None
    if sampler is None and config.sampling.strategy == "adaptive":
        sampler = build_adaptive_sampler(config, preset.num_generations, len(train_data))
        from grpokit.sampling import PosteriorTableWriter

        callbacks = [*(callbacks or []), PosteriorTableWriter()]  # <run_dir>/prompt_pass_rates.csv
    if sampler is None:
        sampler = PromptSampler(len(train_data), seed=config.training.seed, shuffle=config.data.shuffle)
    from grpokit.guards.callbacks import build_gold_runner, with_guards

    # The gold/entropy/ratio guards the config asks for, then the caller's, then report.html at the end.
    # The evaluation scores the gold rewards too (eval/gold_*): one runner for both.
    gold_runner = build_gold_runner(config)
    callbacks = with_guards(config, callbacks, gold_runner=gold_runner)
    trainer_class = LMTrainer
    if preset.advantage == "gae":  # PPO: GAE reads a learned critic's values
        from grpokit.trainers.ppo import PPOTrainer

        trainer_class = PPOTrainer
    return trainer_class(config, policy=policy, engine=engine, train_data=train_data, sampler=sampler,
                     reward_runner=reward_runner, preset=preset, eval_data=eval_data, accelerator=accelerator,
                     callbacks=callbacks, gold_runner=gold_runner, agent=agent)


def build_reasoning_gym_data(config: LMTrainConfig):
    """`data.reasoning_gym`: generated training rows and held-out rows (None when eval_size is 0)."""
    from grpokit.data import PromptDataset
    from grpokit.tasks.reasoning_gym import TaskSpec, train_and_heldout

    g = config.data.reasoning_gym
    tasks = ([TaskSpec(g.task, 1.0, dict(g.config))] if g.task is not None
             else [TaskSpec(t.task, t.weight, dict(t.config)) for t in g.tasks])
    try:
        train, heldout = train_and_heldout(tasks, size=g.size, eval_size=g.eval_size, seed=g.seed,
                                           instruction=g.instruction)
    except (ValueError, ImportError) as error:
        raise ConfigError(str(error)) from error
    source = "reasoning_gym:" + "+".join(t.name for t in tasks)
    train_data = PromptDataset.from_records(train, source=source)
    eval_data = PromptDataset.from_records(heldout, source=source + " (held-out)") if heldout else None
    return train_data, eval_data


def build_agent(config: LMTrainConfig, policy, engine):
    """`rollout.agent`: an `EpisodeEngine` over `engine` (multi-turn episodes with tools or an environment)."""
    from grpokit.agents.environment import environment_factory
    from grpokit.agents.episodes import AgentSettings, EpisodeEngine
    from grpokit.agents.parsers import get_parser
    from grpokit.agents.tools import ToolRunner, resolve_tools

    a = config.rollout.agent
    try:
        tools = ToolRunner(resolve_tools(a.tools), timeout_seconds=a.tool_timeout_seconds, max_workers=a.max_workers)
        factory = environment_factory(a.environment, tools=tools, parser=get_parser(a.parser),
                                      prompt_column=config.data.prompt_column, system_prompt=a.system_prompt)
        return EpisodeEngine(engine, policy.tokenizer, factory, tool_schemas=tools.schemas,
                             settings=AgentSettings(max_turns=a.max_turns, max_episode_tokens=a.max_episode_tokens,
                                                    max_workers=a.max_workers),
                             chat_template=a.chat_template)
    except ValueError as error:
        raise ConfigError(f"rollout.agent: {error}") from error


def check_prompt_lengths(config: LMTrainConfig, policy, train_data, eval_data) -> None:
    """Every prompt, rendered and tokenized, is non-empty and fits the context before training starts
    (or is cut from the left with `data.truncate_prompts: left`); DataError naming the rows otherwise."""
    import logging

    d = config.data
    context = getattr(getattr(policy.model, "config", None), "max_position_embeddings", None)
    limits = []
    if context is not None:
        limits.append((context - config.rollout.max_new_tokens,
                       f"max_position_embeddings {context} - rollout.max_new_tokens {config.rollout.max_new_tokens}"))
    if d.max_prompt_tokens is not None:
        limits.append((d.max_prompt_tokens, "data.max_prompt_tokens"))
    max_tokens, why = min(limits) if limits else (None, "")
    if max_tokens is not None and max_tokens < 1:
        raise ConfigError(f"rollout.max_new_tokens: {config.rollout.max_new_tokens} leaves no room for a prompt "
                          f"in the model's context ({why})")
    for data in (train_data, eval_data):
        if data is None or not hasattr(data, "check_prompt_tokens"):
            continue
        truncated = data.check_prompt_tokens(policy.tokenizer, max_tokens=max_tokens, limit_reason=why,
                                             truncate=d.truncate_prompts)
        if truncated:
            logging.getLogger("grpokit.data").warning(
                "%s: %d prompt(s) longer than %d tokens (%s) cut from the left (data.truncate_prompts: left)",
                data.source, truncated, max_tokens, why)


def check_reward_columns(*datasets) -> None:
    """Every data-set column reaches the rewards by name: none may take the name of an argument the runner fills."""
    from grpokit.data import DataError, DataProblem
    from grpokit.rewards import RESERVED_ARGUMENTS

    for data in datasets:
        clashes = sorted(set(getattr(data, "extra_columns", ())) & set(RESERVED_ARGUMENTS))
        if clashes:
            raise DataError(data.source, [DataProblem(data.source, None, column, "this name is an argument every "
                                                      "reward receives from grpokit; rename the column")
                                          for column in clashes])


def build_engine(config: LMTrainConfig, policy, device):
    """The rollout engine `rollout.engine` names, sampling from (a synced copy of) `policy`."""
    import torch

    r = config.rollout
    generation_config = getattr(policy.model, "generation_config", None)
    eos = getattr(generation_config, "eos_token_id", None)
    eos_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if r.engine in ("vllm_server", "vllm_colocate") and r.vllm.weight_sync == "adapter" and not policy.is_lora:
        raise ConfigError("rollout.vllm.weight_sync: adapter needs a LoRA policy (model.lora); use auto or merged")
    if r.engine == "vllm_server":
        from grpokit.rollout.vllm_engine import VLLMServerEngine

        return VLLMServerEngine(r.vllm.server_url, policy.tokenizer, timeout=r.vllm.request_timeout,
                                eos_token_ids=eos_ids, device=device, weight_sync=r.vllm.weight_sync)
    if r.engine == "vllm_colocate":
        from grpokit.rollout.lora_sync import lora_rank
        from grpokit.rollout.vllm_engine import VLLMColocateEngine

        v = r.vllm
        if v.enable_sleep_mode and not torch.cuda.is_available():
            raise ConfigError("rollout.vllm.enable_sleep_mode: vLLM sleeps on CUDA/ROCm/XPU GPUs only, "
                              "and no GPU is visible")
        return VLLMColocateEngine(v.model or config.model.name_or_path, policy.tokenizer, dtype=v.dtype,
                                  max_model_len=v.max_model_len, gpu_memory_utilization=v.gpu_memory_utilization,
                                  kv_cache_gib=v.kv_cache_gib, enable_sleep_mode=v.enable_sleep_mode,
                                  seed=config.training.seed, eos_token_ids=eos_ids, device=device,
                                  weight_sync=v.weight_sync, lora_rank=lora_rank(policy.model))
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
            epoch_coverage=s.epoch_coverage, seed=config.training.seed)
    except ValueError as error:
        raise ConfigError(f"sampling: {error}") from error
