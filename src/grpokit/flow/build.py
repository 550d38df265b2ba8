"""From a :class:`~grpokit.flow.config.FlowTrainConfig` to a ready :class:`~grpokit.flow.trainer.FlowTrainer`.

Every piece can be passed in instead (a model, prompts, a reward runner), which is how tests and the
experiment scripts build small trainers without files.
"""

from __future__ import annotations

from grpokit.config_schema import ConfigError
from grpokit.data import PromptDataset, load_prompt_dataset
from grpokit.rewards import RewardRunner, RewardSpec, load_rewards

from .config import FlowTrainConfig
from .policy import FlowModel, FlowPolicy
from .presets import get_flow_preset
from .trainer import EvalMetricsFn, FlowTrainer


def build_flow_model(config: FlowTrainConfig) -> FlowModel:
    """The configured model adapter: the cached digits network, or a diffusers SD3 or FLUX.1 pipeline."""
    m = config.model
    if m.type == "digits":
        from .digits import pretrained_digits_model

        return pretrained_digits_model(cache=m.cache_dir)
    if m.type == "flux":
        from .flux_adapter import FluxFlowModel

        return FluxFlowModel.from_pretrained(m.name_or_path, dtype=m.dtype, lora=m.lora, guidance=m.flux_guidance)
    from .diffusers_adapter import SD3FlowModel

    return SD3FlowModel.from_pretrained(m.name_or_path, dtype=m.dtype, lora=m.lora)


def build_flow_trainer(
    config: FlowTrainConfig,
    *,
    model: FlowModel | None = None,
    train_data: PromptDataset | None = None,
    eval_data: PromptDataset | None = None,
    reward_runner: RewardRunner | None = None,
    eval_metrics: EvalMetricsFn | None = None,
    callbacks: list | None = None,
) -> FlowTrainer:
    preset = get_flow_preset(config.algorithm.preset, **config.algorithm.overrides)
    model = model if model is not None else build_flow_model(config)
    if train_data is None:
        train_data, eval_data = _prompts(config, eval_data)
    if reward_runner is None:
        specs = [
            RewardSpec(r.function, r.name, r.weight, r.timeout_seconds, dict(r.kwargs))
            for r in config.rewards
        ]
        reward_runner = RewardRunner(load_rewards(specs), on_error=config.on_reward_error)
    if eval_metrics is None and config.model.type == "digits":
        from .rewards import digit_scorer

        scorer = digit_scorer(cache=config.model.cache_dir)

        def eval_metrics(images, records):
            import torch

            return scorer.gold_metrics(images, torch.tensor([int(r["label"]) for r in records]))

    policy = FlowPolicy(
        model,
        noise_level=preset.noise_level,
        logprob_reduction=preset.logprob_reduction,
        guidance_scale=config.model.guidance_scale,
        shift=config.model.shift,
    )
    return FlowTrainer(
        config,
        policy=policy,
        preset=preset,
        train_data=train_data,
        reward_runner=reward_runner,
        eval_data=eval_data,
        eval_metrics=eval_metrics,
        callbacks=callbacks,
    )


def _prompts(
    config: FlowTrainConfig, eval_data: PromptDataset | None
) -> tuple[PromptDataset, PromptDataset | None]:
    d = config.data
    if not d.path:
        if config.model.type != "digits":
            raise ConfigError("data.path: required unless model.type=digits")
        from .digits import digit_prompts

        return PromptDataset.from_records(digit_prompts(), source="digits"), eval_data
    train = load_prompt_dataset(d.path, prompt_column=d.prompt_column)
    if eval_data is None and d.eval_path:
        eval_data = load_prompt_dataset(d.eval_path, prompt_column=d.prompt_column)
    return train, eval_data


def run_flow_command(command: str, config_path: str, overrides: list[str], *, base: bool = False,
                     show: int = 0) -> None:
    """`grpokit train|eval` for a flow config: train to max_steps, or evaluate the latest checkpoint
    (read-only: nothing in the run directory is written; `base`: the configured model itself)."""
    from grpokit.trainers.lm_state import NoCheckpointError

    from .config import load_flow_config

    if show:
        raise ConfigError("--show: prints text completions; a flow model's samples are images "
                          "(training draws them to run_dir/samples/)")
    config = load_flow_config(config_path, overrides)
    if command == "train":
        from grpokit.run_dir import lock_before_building

        with lock_before_building(config.logging.run_dir):  # a second trainer stops before loading a model
            build_flow_trainer(config).train()
        return
    trainer = build_flow_trainer(config)
    if base:
        print(f"weights: base model {config.model.name_or_path or config.model.type}")
    else:
        path = trainer.load_weights_for_eval()
        if path is None:
            raise NoCheckpointError(trainer.run_dir / "checkpoints")
        print(f"weights: {path} (step {trainer.step})")
    for key, value in trainer.evaluate(trainer.step, read_only=True).items():
        print(f"{key}: {value:.4f}")
