"""The flow-model GRPO trainer (Flow-GRPO, GRPO-Guard). The loop is the algorithm box:

    for step in 1..N:
        rollout    ← G images per prompt with the SDE sampler (SDE in the window, ODE elsewhere);
                     per-step log-probs and means kept                                              (`sample`)
        rewards    ← score the decoded images with the reward API                                  (`score`)
        advantages ← group-relative, per prompt (repeated prompts share statistics)                (`advantages`)
        update     ← mini-batches × denoising steps: clipped ratio (RatioNorm), balancing, KL      (`update`)
        log, evaluate (ODE, held-out noise, gold scores), sample grid, checkpoint

What the variants change lives in the :class:`~grpokit.flow.presets.FlowPreset`; the loop asks it, never
branches on a name. Per-step diagnostics (ratio mean/std and clip fractions before and after RatioNorm,
each step's gradient norm) are logged every step as ``flow/step{k}/…``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from grpokit.algorithms import compute_advantages
from grpokit.checkpoint import SCHEDULER_FILE, CheckpointManager, model_dir
from grpokit.data import PromptDataset, PromptSampler
from grpokit.seeds import mini_batch_seed, sampling_seed
from grpokit.trainers.distributed import DataParallel
from grpokit.trainers.lr_schedule import make_lr_scheduler
from grpokit.trainers.run_loop import notify, run_training

from .config import FlowTrainConfig
from .grpo_guard import step_balancing_weights
from .images import save_image_grid
from .loss import StepDiagnostics, aggregate_step, step_loss
from .policy import FlowPolicy, FlowRollout, train_step_mask
from .presets import FlowPreset
from .window import sde_window, window_mask

log = logging.getLogger("grpokit.flow")

FLOW_PLOT_KEYS = (
    "reward/mean",
    "eval/reward/mean",
    "eval/gold/*",
    "train/ratio_mean",
    "train/raw_ratio_mean",
    "train/clip_frac_*",
    "train/kl",
    "train/grad_norm",
    "train/learning_rate",
)
EvalMetricsFn = Callable[[Tensor, list[dict[str, Any]]], dict[str, float]]


class FlowTrainer:
    """GRPO-family trainer for flow-matching models. ``eval_metrics(images, records)`` adds gold scores
    that training never sees (e.g. :meth:`grpokit.flow.rewards.DigitScorer.gold_metrics`).
    The run around `train_step` is the shared run loop (`grpokit.trainers.run_loop`)."""

    plot_keys = FLOW_PLOT_KEYS
    progress_fields = {"reward": "reward/mean", "ratio": "train/ratio_mean"}

    def __init__(
        self,
        config: FlowTrainConfig,
        *,
        policy: FlowPolicy,
        preset: FlowPreset,
        train_data: PromptDataset,
        reward_runner,
        eval_data: PromptDataset | None = None,
        eval_metrics: EvalMetricsFn | None = None,
        callbacks: list | None = None,
    ):
        self.config = config
        self.policy = policy
        self.model = policy.model
        self.preset = preset
        self.train_data = train_data
        self.eval_data = eval_data or train_data
        self.reward_runner = reward_runner
        self.eval_metrics = eval_metrics
        # Objects with any of on_step_end(trainer, step, metrics), on_evaluate(trainer, step, metrics),
        # on_train_end(trainer); a callback may add metrics and set trainer.should_stop = True.
        self.callbacks = list(callbacks or [])
        self.should_stop = False
        self.stop_reason: dict | None = None  # set by the guard that stopped the run (grpokit.guards.act)
        self.run_end: dict | None = None  # how the run ended (set by the run loop)
        self.parallel = DataParallel()  # one process
        self.group_size = config.rollout.num_generations or preset.loss.num_generations
        self.sampler = PromptSampler(len(train_data), seed=config.training.seed)
        self.run_dir = Path(config.logging.run_dir)
        self.step = 0
        self.resumed_from: Path | None = None  # the checkpoint `resume_latest` loaded
        t = config.training
        self.parameters = self.model.trainable_parameters()
        self.optimizer = torch.optim.AdamW(
            self.parameters,
            lr=t.learning_rate,
            betas=(t.adam_beta1, t.adam_beta2),
            weight_decay=t.weight_decay,
        )
        self.scheduler = make_lr_scheduler(self.optimizer, t)  # stepped by the run loop
        self.eval_history: list[tuple[int, dict[str, float]]] = []

    # ------------------------------------------------------------------ 1. sample
    def sample(self, step: int) -> FlowRollout:
        """G SDE trajectories for each of P prompts, seeded by (seed, step) so a resumed run repeats them."""
        s = self.config.rollout
        generator = torch.Generator().manual_seed(sampling_seed(self.config.training.seed, step))
        indices = self.sampler.next_batch(s.prompts_per_step)
        records = [self.train_data[i] for i in indices for _ in range(self.group_size)]
        group_ids = torch.tensor(indices).repeat_interleave(self.group_size)
        start, stop = self.window(step, generator)
        rollout = self.policy.rollout(
            self.model.encode(records),
            group_ids,
            indices,
            num_steps=s.num_steps,
            generator=generator,
            sde_steps=window_mask(s.num_steps, (start, stop)),
        )
        # `train_steps` of the window's steps are trained (all of them by default)
        rollout.mask[:, start:stop] = train_step_mask(
            len(rollout), stop - start, s.train_steps, s.train_step_selection, generator=generator
        )
        return rollout

    def window(self, step: int, generator: torch.Generator | None = None) -> tuple[int, int]:
        """The SDE window ``(start, stop)`` of training step ``step`` (1-based); every step without one."""
        p = self.preset
        return sde_window(
            self.config.rollout.num_steps,
            p.sde_window,
            placement=p.window_placement,
            training_step=step,
            shift_every=p.window_shift_every,
            stride=p.window_stride,
            range_fraction=p.window_range,
            generator=generator,
        )

    # ------------------------------------------------------------------ 2. score
    def score(self, rollout: FlowRollout) -> tuple[Tensor, dict[str, float]]:
        """Total reward per image ``[B]`` (NaN where a reward returned None) and the reward metrics."""
        images = self.model.decode(rollout.samples)
        records = [self.train_data[i] for i in rollout.prompt_indices]
        result = self.reward_runner.score(
            prompts=[r[self.train_data.prompt_column] for r in records for _ in range(self.group_size)],
            completions=list(images),
            group_ids=rollout.group_ids.tolist(),
            columns=self.train_data.columns_for(rollout.prompt_indices, repeat=self.group_size),
        )
        return result.total, result.metrics

    # ------------------------------------------------------------------ 3. advantages
    def advantages(self, rewards: Tensor, group_ids: Tensor) -> Tensor:
        """Group-relative advantages keyed by prompt (Flow-GRPO's per-prompt statistics over the step)."""
        return compute_advantages(self.preset.loss, rewards, None, group_ids)  # rewards[B]: the weighted total

    # ------------------------------------------------------------------ 4. update
    def step_weights(self, rollout: FlowRollout) -> Tensor:
        """GRPO-Guard's cross-step balancing weights ``[S]`` (all 1 when the preset has it off), computed
        over the SDE window's steps only (mean 1 there; 0 on the ODE steps, which are never trained)."""
        if not self.preset.step_balancing:
            return torch.ones(rollout.num_steps, dtype=torch.float64)
        sde = rollout.sde_steps.nonzero().squeeze(1)
        start, stop = int(sde.min()), int(sde.max()) + 1  # the window is contiguous
        weights = torch.zeros(rollout.num_steps, dtype=torch.float64)
        weights[start:stop] = step_balancing_weights(
            rollout.timesteps[start : stop + 1], rollout.sigmas[start:stop], ratio_normalized=self.preset.ratio_norm
        )
        return weights

    def update(self, rollout: FlowRollout, advantages: Tensor, step: int) -> dict[str, float]:
        """μ passes of mini-batch optimizer steps; inside one, a forward/backward per denoising step.
        `step` (1-based) seeds the mini-batch shuffle."""
        t = self.config.training
        mask = rollout.mask * (~torch.isnan(advantages)).unsqueeze(1).to(rollout.mask.dtype)
        advantages = torch.nan_to_num(advantages, nan=0.0)
        weights = self.step_weights(rollout)
        diagnostics = StepDiagnostics(self.preset)
        generator = torch.Generator().manual_seed(mini_batch_seed(self.config.training.seed, step))
        losses, kls, grad_norms, onpolicy_error, optimizer_steps = [], [], [], 0.0, 0
        for _ in range(t.num_iterations):
            for rows in torch.randperm(len(rollout), generator=generator).chunk(t.mini_batches):
                off_policy = optimizer_steps > 0
                self.optimizer.zero_grad(set_to_none=True)
                mb_mask = mask[rows]
                num_tokens = float(mb_mask.sum().clamp(min=1.0))
                previous = self._flat_grad() if t.log_step_grad_norms else None
                total = 0.0
                for k in range(rollout.num_steps):
                    local = mb_mask[:, k].nonzero().squeeze(1)
                    if len(local) == 0:
                        continue
                    result, loss = self._step_loss(
                        rollout, k, rows[local], local, advantages, weights[k], mb_mask, num_tokens
                    )
                    loss.backward()
                    total += float(loss.detach())
                    if result.kl is not None:
                        kls.append(float(result.kl.detach().mean()))
                    if off_policy:
                        diagnostics.add(k, result, advantages[rows[local]])
                    else:
                        onpolicy_error = max(onpolicy_error, float(result.raw_log_ratio.abs().max()))
                    if previous is not None:
                        current = self._flat_grad()
                        diagnostics.add_grad_norm(k, float((current - previous).norm()), float(weights[k]))
                        previous = current
                grad_norms.append(float(torch.nn.utils.clip_grad_norm_(self.parameters, t.max_grad_norm)))
                self.optimizer.step()
                optimizer_steps += 1
                losses.append(total)
        metrics = {
            "train/loss": sum(losses) / len(losses),
            "train/grad_norm": sum(grad_norms) / len(grad_norms),
            "train/onpolicy_logprob_error": onpolicy_error,
            **diagnostics.summary(),
        }
        if kls:
            metrics["train/kl"] = sum(kls) / len(kls)
        return metrics

    def _step_loss(
        self,
        rollout: FlowRollout,
        k: int,
        rows: Tensor,
        local: Tensor,
        advantages: Tensor,
        weight: Tensor,
        mb_mask: Tensor,
        num_tokens: float,
    ):
        logp, mean = self.policy.step_log_probs(rollout, k, rows)
        ref_mean = None
        if self.preset.loss.beta > 0 and (self.preset.kl_steps is None or k < self.preset.kl_steps):
            ref_mean = self.policy.step_log_probs(rollout, k, rows, reference=True)[1]
        result = step_loss(
            self.preset,
            logp,
            rollout.old_logprobs[rows, k],
            advantages[rows],
            mean=mean,
            old_mean=rollout.old_means[rows, k],
            std=rollout.step_std(k),
            weight=float(weight),
            ref_mean=ref_mean,
        )
        loss = aggregate_step(self.preset, result.loss, local, k, mb_mask, len(mb_mask), num_tokens)
        return result, loss

    def _flat_grad(self) -> Tensor:
        return torch.cat(
            [
                (p.grad if p.grad is not None else torch.zeros_like(p)).detach().flatten().float()
                for p in self.parameters
            ]
        )

    # ------------------------------------------------------------------ one step (the run: grpokit.trainers.run_loop)
    def train_step(self, step: int) -> dict[str, float]:
        """Training step `step + 1` (`step` steps done): sample → score → advantages → update; its metrics.

        Its draws are seeded by the 1-based step number (as recorded flow runs were)."""
        step += 1
        started = time.perf_counter()
        rollout = self.sample(step)
        rewards, reward_metrics = self.score(rollout)
        advantages = self.advantages(rewards, rollout.group_ids)
        sampled = time.perf_counter()
        metrics = self.update(rollout, advantages, step)
        sde = rollout.sde_steps.nonzero().squeeze(1)
        metrics["train/sde_window_start"] = float(sde.min())
        metrics["train/sde_window_size"] = float(len(sde))
        valid = rewards[~torch.isnan(rewards)]
        metrics.update(reward_metrics)
        metrics.update(
            {
                "reward/mean": float(valid.mean()) if len(valid) else float("nan"),
                "reward/std": float(valid.std(correction=0)) if len(valid) else float("nan"),
                "time/sample_seconds": sampled - started,
                "time/update_seconds": time.perf_counter() - sampled,
            }
        )
        return metrics

    def train(self) -> list[tuple[int, dict[str, float]]]:
        """Run to ``training.max_steps`` (resuming from the run's latest checkpoint when configured) with
        the shared run loop; returns the evaluation history ``[(step, metrics)]``. The run directory is
        locked meanwhile (a second trainer on it stops at once, naming this one)."""
        run_training(self)
        return self.eval_history

    # What the run loop calls besides train_step (grpokit.trainers.run_loop.LoopTrainer).
    def start_run(self) -> None:
        pass  # sampling uses the policy itself: nothing to hand over

    def open_run_logs(self) -> contextlib.AbstractContextManager[list]:
        return contextlib.nullcontext([])  # the samples are image grids (`evaluate`), not a log

    def evaluate_in_run(self) -> dict[str, float]:
        return self.evaluate(self.step)

    def save_run_checkpoint(self) -> None:
        self.save_checkpoint(self.step)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, step: int, *, read_only: bool = False) -> dict[str, float]:
        """ODE samples (``eval_num_steps``) at fixed held-out noise for every eval prompt: mean reward,
        per-reward means and ``eval_metrics``; saves the sample grid at the first, last and every
        ``grid_every_steps`` step. ``read_only`` (`grpokit eval`): no grid, no callbacks."""
        e, s = self.config.eval, self.config.rollout
        records = [self.eval_data[i] for i in range(len(self.eval_data)) for _ in range(e.samples_per_prompt)]
        generator = torch.Generator().manual_seed(e.seed)
        noise = torch.randn((len(records), *self.model.latent_shape), generator=generator)
        latents = self.policy.sample(self.model.encode(records), num_steps=s.eval_num_steps, noise=noise)
        images = self.model.decode(latents)
        indices = list(range(len(self.eval_data)))
        result = self.reward_runner.score(
            prompts=[r[self.eval_data.prompt_column] for r in records],
            completions=list(images),
            group_ids=[i for i in indices for _ in range(e.samples_per_prompt)],
            columns=self.eval_data.columns_for(indices, repeat=e.samples_per_prompt),
        )
        metrics = {f"eval/{key}": value for key, value in result.metrics.items() if key.endswith("/mean")}
        metrics["eval/reward/mean"] = float(torch.nanmean(result.total))
        if self.eval_metrics is not None:
            metrics.update({f"eval/{k}": v for k, v in self.eval_metrics(images, records).items()})
        # the names `grpokit report` draws as "proxy vs gold"
        metrics["proxy/score"] = metrics["eval/reward/mean"]
        if "eval/gold/score" in metrics:
            metrics["gold/score"] = metrics["eval/gold/score"]
        last = step == self.config.training.max_steps or self.should_stop  # the run's final evaluation
        if read_only:
            return metrics
        if step == 0 or last or (e.grid_every_steps and step % e.grid_every_steps == 0):
            save_image_grid(
                images, self.run_dir / "samples" / f"step_{step:06d}.png", columns=e.samples_per_prompt
            )
        self.eval_history.append((step, metrics))
        notify(self, "on_evaluate", step, metrics)
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, step: int, *, tag: str | None = None) -> Path:
        """Model, optimizer, LR schedule, sampler and RNGs as `checkpoints/step-N` (or `checkpoints/<tag>`)."""
        manager = CheckpointManager(self.run_dir, keep_last=self.config.checkpoint.keep_last)
        return manager.save(
            step,
            model_saver=self.model.save,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            extra_state={"sampler": self.sampler.state_dict()},
            tag=tag,
        )

    # What the guards act through (grpokit.guards.callbacks.GuardedTrainer).
    def save_tagged_checkpoint(self, tag: str) -> Path:
        return self.save_checkpoint(self.step, tag=tag)

    def restore_weights(self, tag: str) -> int | None:
        """Load the model weights of `checkpoints/<tag>` in place; its step, or None when there is none."""
        manager = CheckpointManager(self.run_dir, keep_last=self.config.checkpoint.keep_last)
        path = manager.tagged(tag)
        if path is None:
            return None
        self.model.load(model_dir(path))
        return manager.load(path, restore_rng=False)["step"]

    def load_weights_for_eval(self) -> Path | None:
        """The latest intact checkpoint's model weights, loaded READ-ONLY (nothing in the run directory is
        created or repaired); its path, or None when the run has none."""
        manager = CheckpointManager(self.run_dir, keep_last=None, read_only=True)
        path = manager.pin_latest_intact()  # pinned: a trainer running beside us does not prune it meanwhile
        if path is None:
            return None
        self.model.load(model_dir(path))
        self.step = manager.load(path, restore_rng=False)["step"]
        return path

    def resume_latest(self) -> Path | None:
        """Load the run's latest intact checkpoint (model, optimizer, LR schedule, sampler, RNG); its path,
        or None when there is none. A damaged latest checkpoint is skipped, with a warning, for the one
        before it."""
        manager = CheckpointManager(self.run_dir, keep_last=self.config.checkpoint.keep_last)
        path = manager.latest_intact()
        if path is None:
            return None
        self.resumed_from = path
        self.model.load(model_dir(path))
        saved_schedule = (path / SCHEDULER_FILE).is_file()  # checkpoints from before the flow trainer had one
        state = manager.load(path, optimizer=self.optimizer, scheduler=self.scheduler if saved_schedule else None)
        self.sampler.load_state_dict(state["extra_state"]["sampler"])
        self.step = state["step"]
        if not saved_schedule:  # the schedule is a function of the step: replay it
            for _ in range(self.step):
                self.scheduler.step()
        log.info("resumed from %s (step %d)", path, self.step)
        return path
