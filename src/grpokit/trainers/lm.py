"""The language-model GRPO trainer.

The loop is the algorithm box:

    for step in 1..N:
        rollout  ← sample G completions for each of P prompts          (`sample`)
        rewards  ← score every completion                             (inside `sample`, for DAPO)
        batch    ← advantages, loss mask, old/ref log-probs            (`prepare`)
        μ passes of mini-batch updates, micro-batched                  (`update`)
        log, evaluate, checkpoint                                      (`grpokit.trainers.run_loop`)

One step is `train_step`; the run around it (LR schedule, callbacks, logs, evaluations, checkpoints,
resuming) is the run loop the flow trainer shares.
Which advantage, ratio, clip, aggregation and corrections apply is the preset's business
(`grpokit.algorithms.presets`); the loop has no per-variant branches beyond asking the preset.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from pathlib import Path

import torch
from torch import Tensor

from grpokit.algorithms import (
    compute_advantages,
    default_overlong_cache_len,
    kl_reward_penalty,
    overlong_filter_mask,
    policy_loss,
    soft_overlong_penalty,
)
from grpokit.algorithms.batch_statistics import (
    BatchStatistics,
    batch_statistics,
    concat_statistic_inputs,
    needs_batch_statistics,
    needs_current_logprobs,
)
from grpokit.algorithms.policy_loss import loss_statistic_inputs
from grpokit.algorithms.presets import Preset
from grpokit.rollout.types import SamplingParams
from grpokit.seeds import evaluation_seed, generation_call, mini_batch_seed, sampling_seed, token_key_seed
from grpokit.trainers.batching import (
    TrainingBatch,
    micro_batch_rows,
    mini_batch_rows,
    model_inputs,
    token_keys,
)
from grpokit.trainers.distributed import (
    DataParallel,
    check_multiprocess_config,
    merge_update_stats,
    prompt_seed,
)
from grpokit.trainers.lm_config import LMTrainConfig
from grpokit.trainers.lm_run import LMRunCoordination
from grpokit.trainers.lr_schedule import make_lr_scheduler
from grpokit.trainers.rollout_source import SyncRollouts
from grpokit.trainers.scored import (
    ScoredRollout,
    concat_scored,
    informative_groups,
    no_gradient_reason,
    select_groups,
    step_metrics,
    weighted_total,
)

log = logging.getLogger("grpokit.trainer")

# The curves drawn to metrics.png at the end of a run (fnmatch patterns over the logged names).
LM_PLOT_KEYS = (
    "reward/mean", "rewards/*/mean", "eval/*", "frac_reward_zero_std", "train/kl", "train/entropy_mean",
    "train/clip_frac_*", "train/ratio_mean", "completion/length_mean", "completion/truncated_frac",
    "train/grad_norm", "train/learning_rate", "time/rollout_tokens_per_second", "sampling/prompts_skipped",
)


class LMTrainer(LMRunCoordination):
    """GRPO-family trainer for causal language models; see `grpokit.trainers.lm_build` for `from_config`.
    `train()`, the run loop's hooks and the guards' interface: `grpokit.trainers.lm_run`."""

    plot_keys = LM_PLOT_KEYS
    progress_fields = {"reward": "reward/mean", "kl": "train/kl", "len": "completion/length_mean"}
    group_relative = True  # advantages from each group's rewards: all-equal groups teach nothing (PPO: False)

    def __init__(self, config: LMTrainConfig, *, policy, engine, train_data, sampler, reward_runner,
                 preset: Preset, eval_data=None, accelerator=None, callbacks: list | None = None,
                 gold_runner=None, agent=None):
        self.config = config
        self.policy = policy
        self.engine = engine
        self.train_data = train_data
        self.sampler = sampler
        self.reward_runner = reward_runner
        self.preset = preset
        self.eval_data = eval_data
        self.accelerator = accelerator
        # Objects with any of: on_step_end(trainer, step, metrics), on_evaluate(trainer, step, metrics),
        # on_train_end(trainer), on_continue(trainer). A callback sets `trainer.should_stop = True` to end the
        # run early; one with state_dict() (JSON-serializable) / load_state_dict(state) has its state saved in
        # every checkpoint and restored on resume (grpokit.guards.state).
        self.callbacks = list(callbacks or [])
        self.should_stop = False
        self.stop_reason: dict | None = None  # set by the guard that stopped the run (grpokit.guards.act)
        self.run_end: dict | None = None  # how the run ended, saved in the final checkpoint (grpokit.guards.state)
        self.gold_runner = gold_runner  # gold rewards: the evaluation reports eval/gold_* next to the proxy's
        # Multi-turn episodes (`rollout.agent`): a `grpokit.agents.EpisodeEngine` over `engine`; None = one turn.
        self.agent = agent
        self.samples_log = None  # run_dir/samples.jsonl while training, on rank 0 (grpokit.monitoring.samples)
        self.group_size = config.rollout.num_generations or preset.num_generations
        self.run_dir = Path(config.logging.run_dir)
        self.step = 0
        self.tokens_seen = 0
        self.eval_history: list[tuple[int, dict[str, float]]] = []  # (step, eval metrics)
        self.reference_needed = preset.beta > 0
        self.behaviour_checked = False  # the engine-vs-trainer log-prob check runs before the first update
        if self.reference_needed and not policy.has_reference:
            policy.make_reference()  # a frozen copy; with LoRA the adapter-disabled base serves instead
        # Multi-process (see grpokit.trainers.distributed): rank, collectives, and the wrapped training
        # forward (DDP, or the FSDP2 root; None in one process). Sampling, saving and evaluation use
        # `weights_policy`: the policy itself, or under FSDP (whose parameters are shards) a full-weights
        # copy that every rank refreshes after each update.
        self.parallel = DataParallel(accelerator, fsdp=config.training.fsdp)
        check_multiprocess_config(config, preset, self.parallel.world_size)
        self.weights_policy = policy
        if self.parallel.fsdp:
            from grpokit.models.loading import Policy

            full_copy = copy.deepcopy(policy.model).eval().requires_grad_(False)
            self.weights_policy = Policy(full_copy, policy.tokenizer, is_lora=policy.is_lora)
        self.train_module = self.parallel.wrap(policy.model)
        self.optimizer = self._make_optimizer()  # after wrapping: FSDP2 swaps the parameters for shards
        # Where each step's rollout comes from (grpokit.trainers.rollout_source): sampled now, or with
        # training.async, by a producer that sampled step s with the weights after update s − k meanwhile.
        self.rollouts = SyncRollouts(self)
        if config.training.async_.max_staleness:
            from grpokit.trainers.async_rollouts import AsyncRollouts, check_async_config

            check_async_config(config, self.parallel.world_size)
            self.rollouts = AsyncRollouts(self)
        self.scheduler = make_lr_scheduler(self.optimizer, config.training)  # stepped by the run loop

    # ------------------------------------------------------------------ set-up
    def _make_optimizer(self) -> torch.optim.Optimizer:
        t = self.config.training
        params = [p for p in self.policy.model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2),
                                 weight_decay=t.weight_decay)

    @property
    def model(self):
        return self.policy.model

    def sampling_params(self, step: int, *, temperature: float | None = None) -> SamplingParams:
        r = self.config.rollout
        # Seeded per step, so a resumed run samples exactly what an uninterrupted one would.
        return SamplingParams(max_new_tokens=r.max_new_tokens,
                              temperature=r.temperature if temperature is None else temperature,
                              top_p=r.top_p, top_k=r.top_k, seed=sampling_seed(self.config.training.seed, step))

    # ------------------------------------------------------------------ 1. sample and score
    def sample(self, step: int, *, engine=None) -> ScoredRollout:
        """G_i completions for each of P prompts, scored; with dynamic sampling, only informative groups.

        G_i is the sampler's choice when it has `group_sizes(indices)` (adaptive sampling), else
        `rollout.num_generations` for every prompt. Dynamic sampling (DAPO) drops all-equal groups and
        draws more prompts, at most `max_dynamic_sampling_rounds` extra rounds, until P are kept.
        `engine`: another engine than the trainer's (the asynchronous producer's copy of older weights).
        """
        wanted = self.config.rollout.prompts_per_step
        rounds = 1 + (self.config.rollout.max_dynamic_sampling_rounds if self.preset.dynamic_sampling else 0)
        kept: list[ScoredRollout] = []
        have, dropped, used_rounds, generated = 0, 0, 0, 0
        for round_index in range(rounds):
            used_rounds += 1
            indices = self.sampler.next_batch(wanted - have if round_index else wanted)
            scored = self._generate_and_score(indices, step, round_index, engine or self.engine)
            generated += len(scored.rollout)
            if self.preset.dynamic_sampling:
                informative = informative_groups(scored.total_reward, scored.rollout.group_ids)
                dropped += int((~informative).sum())
                scored = select_groups(scored, informative)
            kept.append(scored)
            have += len(scored.prompt_indices)
            if have >= wanted:
                break
        merged = concat_scored(kept) if len(kept) > 1 else kept[0]
        if len(merged.prompt_indices) > wanted:
            merged = select_groups(merged, torch.arange(len(merged.prompt_indices)) < wanted)
        if len(merged.prompt_indices) == 0:
            # Every group was all-equal in every round: nothing to learn this step.
            log.warning("step %d: every sampled group had equal rewards; skipping the update", step)
        merged.dropped_groups = dropped
        merged.generation_rounds = used_rounds
        merged.generated_rollouts = generated
        return merged

    def _generate_and_score(self, indices: list[int], step: int, round_index: int, engine) -> ScoredRollout:
        from grpokit.sampling.groups import expand_per_group, generate_groups

        params = self.sampling_params(generation_call(step, round_index))
        # One seed per prompt of the global batch, then this rank's contiguous slice of whole groups:
        # what a prompt samples does not depend on how many processes share the batch.
        seeds = [prompt_seed(params.seed, index, position) for position, index in enumerate(indices)]
        start, end = self.parallel.shard(len(indices))
        indices, seeds = indices[start:end], seeds[start:end]
        prompts = [self.train_data.render(i, self.policy.tokenizer) for i in indices]
        choose_sizes = getattr(self.sampler, "group_sizes", None)  # adaptive samplers pick G per prompt
        sizes = choose_sizes(indices) if choose_sizes is not None else [self.group_size] * len(indices)
        if self.agent is not None:  # episodes start from the data-set rows (the environment renders them)
            rows = [self.train_data[i] for i in indices]
            rollout = self.agent.generate_episodes(rows, sizes, params, prompt_seeds=seeds)
        else:
            rollout = generate_groups(engine, prompts, sizes, params,
                                      pad_token_id=self.policy.tokenizer.pad_token_id or 0, prompt_seeds=seeds)
        columns = expand_per_group(self.train_data.columns_for(indices), sizes)
        if rollout.trajectories is not None:  # rewards may read whole episodes (`trajectories=`)
            columns["trajectories"] = rollout.trajectories
        result = self.reward_runner.score(
            prompts=rollout.prompts, completions=rollout.completions,
            group_ids=rollout.group_ids.tolist(), columns=columns,
            completion_lengths=rollout.completion_mask.sum(1).tolist(),
        )
        rewards = result.matrix
        names = list(result.names)
        if self.preset.soft_overlong:
            max_len = self.config.rollout.max_new_tokens
            cache = self.preset.overlong_cache_len or default_overlong_cache_len(max_len)
            penalty = soft_overlong_penalty(rollout.completion_mask.sum(1), max_len=max_len, cache_len=cache)
            rewards = torch.cat([rewards, penalty.unsqueeze(1).to(rewards.dtype)], dim=1)
            names.append("preset/soft_overlong")
        total = weighted_total(rewards, self._reward_weights(len(names)))
        observe = getattr(self.sampler, "observe", None)
        if observe is not None:  # e.g. a per-prompt pass-rate posterior learns from every scored rollout
            observe(indices, total, rollout.group_ids)
        return ScoredRollout(rollout=rollout, rewards=rewards, reward_names=names, total_reward=total,
                             prompt_indices=list(indices), reward_metrics=result.metrics)

    def _reward_weights(self, count: int) -> Tensor:
        weights = list(self.reward_runner.weights)
        weights += [1.0] * (count - len(weights))  # shaping terms added by the preset weigh 1
        return torch.tensor(weights, dtype=torch.float64)

    # ------------------------------------------------------------------ 2. advantages and masks
    def prepare(self, scored: ScoredRollout) -> TrainingBatch:
        """Old/ref log-probs, group-relative advantages and the loss mask for a scored rollout."""
        rollout = scored.rollout
        batch = TrainingBatch(
            prompt_ids=rollout.prompt_ids, prompt_mask=rollout.prompt_mask,
            completion_ids=rollout.completion_ids, completion_mask=rollout.completion_mask,
            group_ids=rollout.group_ids, loss_mask=rollout.policy_tokens.clone(),  # inserted tool tokens: 0
            advantages=torch.zeros(len(rollout)), behaviour_logprobs=rollout.behaviour_logprobs,
        )
        # With μ = 1 and a single mini-batch the parameters have not moved since sampling, so the
        # "old" log-probs are the current ones, detached, taken in the training forward: no extra pass.
        needs_old = self.config.training.num_iterations > 1 or self.config.training.mini_batches > 1
        if needs_old:
            batch.old_logprobs = self._logprobs_no_grad(batch, reference=False)
        if self.reference_needed:
            batch.ref_logprobs = self._logprobs_no_grad(batch, reference=True)
        if not self.behaviour_checked:
            self._check_behaviour(batch, batch.old_logprobs if needs_old else None)

        rewards = scored.rewards.to(torch.float64)
        if self.preset.kl_in_reward and self.reference_needed:
            # KL as a reward penalty: R_i −= β·Σ_t k1_t (outcome rewards, so the per-token penalty is summed).
            current = batch.old_logprobs if needs_old else self._logprobs_no_grad(batch, reference=False)
            penalty = kl_reward_penalty(current, batch.ref_logprobs, self.preset.beta)
            sequence_penalty = -(penalty * rollout.policy_tokens).sum(dim=1)
            rewards = torch.cat([rewards, sequence_penalty.unsqueeze(1).to(rewards.dtype)], dim=1)
        weights = self._reward_weights(rewards.shape[1])
        valid = ~torch.isnan(weighted_total(rewards, weights))
        rewards[~valid] = float("nan")  # a row with any None reward leaves its group's statistics
        group_ids, first_row = rollout.group_ids, 0
        if self.parallel.enabled:  # batch-level statistics (batch std) over every rank's rows
            rewards, group_ids, first_row = self.parallel.global_rewards(rewards, group_ids)
        advantages = compute_advantages(self.preset, rewards, weights, group_ids)
        if self.parallel.enabled:  # this rank's rows
            advantages = advantages[first_row : first_row + len(rollout)].to(rollout.group_ids.device)
        batch.advantages = advantages.float()
        batch.loss_mask[~valid] = 0  # a None/NaN reward gives its completion zero weight
        if self.preset.overlong_filter:
            batch.loss_mask = overlong_filter_mask(rollout.truncated, batch.loss_mask)
        return batch

    def _check_behaviour(self, batch: TrainingBatch, trainer_logprobs: Tensor | None) -> None:
        """Fail fast when the engine's log-probs are not the trainer's (see `grpokit.rollout.mismatch`)."""
        from grpokit.rollout.mismatch import check_behaviour_logprobs

        if trainer_logprobs is None:
            trainer_logprobs = self._logprobs_no_grad(batch, reference=False)
        # loss_mask is still the policy-token mask here: inserted tool tokens have no behaviour log-prob
        stats = check_behaviour_logprobs(trainer_logprobs, batch.behaviour_logprobs, batch.loss_mask,
                                         tolerance=self.config.rollout.mismatch_tolerance,
                                         engine=getattr(self.engine, "name", type(self.engine).__name__))
        log.info("engine vs trainer log-probs before the first update: mean |Δ| %.2e, max %.2e over %d tokens",
                 stats["mean_abs"], stats["max_abs"], int(stats["tokens"]))
        self.behaviour_checked = True

    @torch.no_grad()
    def _logprobs_no_grad(self, batch: TrainingBatch, *, reference: bool) -> Tensor:
        out = torch.zeros_like(batch.behaviour_logprobs)
        with self.policy.reference() if reference else contextlib.nullcontext(self.model) as model:
            for rows in micro_batch_rows(torch.arange(len(batch)), self.config.training.micro_batch_size):
                micro = batch.select(rows)
                logp, _ = self._forward_logprobs(micro, model=model, with_entropy=False)
                out[rows, : logp.shape[1]] = logp
        return out

    def _forward_logprobs(self, micro: TrainingBatch, *, model=None,
                          with_entropy: bool) -> tuple[Tensor, Tensor | None]:
        from grpokit.models.logprobs import sequence_logprobs

        input_ids, attention_mask, num_completion = model_inputs(micro)
        if self.train_module is not None and (model is None or model is self.model):  # the wrapped forward
            return self.train_module(input_ids, attention_mask, num_completion,
                                     temperature=self.config.rollout.temperature, with_entropy=with_entropy,
                                     chunk_size=self.config.training.logprob_chunk_size)
        return sequence_logprobs(
            model if model is not None else self.model, input_ids, attention_mask, num_completion,
            temperature=self.config.rollout.temperature, with_entropy=with_entropy,
            chunk_size=self.config.training.logprob_chunk_size,
        )

    # ------------------------------------------------------------------ 3. update
    @torch.no_grad()
    def _batch_statistics(self, mini: TrainingBatch, micro_batches: list[Tensor],
                          keys: Tensor | None) -> BatchStatistics | None:
        """The preset's batch statistics (top-entropy τ, SNIS mean, Clip-/KL-Cov selections) over the whole
        mini-batch on every rank, so the update does not depend on micro-batching or on the number of
        processes (`grpokit.algorithms.batch_statistics`). A no-grad forward per micro-batch when they need
        the current log-probs or entropies; None (policy_loss takes them from its one batch) when unsplit."""
        if not needs_batch_statistics(self.preset) or (len(micro_batches) == 1 and not self.parallel.enabled):
            return None
        parts = []
        for micro_rows in micro_batches:
            micro = mini.select(micro_rows)
            logp = entropy = None
            if needs_current_logprobs(self.preset) or micro.old_logprobs is None:
                # the same micro-batches as the training pass: the same values, so a token at the threshold is
                # compared there with the very value it contributed here
                logp, entropy = self._forward_logprobs(
                    micro, with_entropy=self.preset.top_entropy_quantile is not None)
            old = micro.old_logprobs if micro.old_logprobs is not None else logp
            parts.append(loss_statistic_inputs(
                self.preset, old if logp is None else logp, old, micro.advantages, micro.loss_mask,
                behaviour_logp=micro.behaviour_logprobs, entropy=entropy,
                clip_cov_keys=None if keys is None else keys[micro_rows, : micro.completion_ids.shape[1]]))
        local = concat_statistic_inputs(parts)
        if self.parallel.enabled:  # every rank's tokens, in rank order
            local = concat_statistic_inputs(self.parallel.gather({k: v.cpu() for k, v in local.items()}))
        return batch_statistics(self.preset, local)

    def update(self, batch: TrainingBatch, step: int) -> dict[str, float]:
        """μ passes over the batch; each pass = `mini_batches` optimizer steps of accumulated micro-batches."""
        t = self.config.training
        self.model.train()
        generator = torch.Generator().manual_seed(mini_batch_seed(t.seed, step))
        key_generator = torch.Generator().manual_seed(token_key_seed(t.seed, step))  # Clip-Cov's token keys
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for _ in range(t.num_iterations):
            for rows in mini_batch_rows(batch.group_ids, t.mini_batches, generator):
                stats = self._optimizer_step(batch, rows, key_generator)
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0.0) + value
                    counts[key] = counts.get(key, 0) + 1
        return {key: sums[key] / counts[key] for key in sums}

    def _optimizer_step(self, batch: TrainingBatch, rows: Tensor, key_generator: torch.Generator) -> dict[str, float]:
        t = self.config.training
        mini = batch.select(rows)
        # Every aggregation divides by the counts of the global mini-batch: Σ over ranks.
        num_tokens, num_sequences = (int(c) for c in self.parallel.sum([mini.loss_mask.sum(), len(mini)]))
        self.optimizer.zero_grad(set_to_none=True)
        stats: dict[str, float] = {}
        token_weights: dict[str, float] = {}
        micro_batches = micro_batch_rows(torch.arange(len(mini)), t.micro_batch_size)
        keys = None
        if self.preset.clip_cov is not None:  # one key per token of the global batch, by (global row, position)
            width = max(self.config.rollout.max_new_tokens, batch.completion_ids.shape[1])
            keys = token_keys(key_generator, len(batch) * self.parallel.world_size, width,
                              rows + self.parallel.rank * len(batch))[:, : mini.completion_ids.shape[1]]
            keys = keys.to(mini.completion_ids.device)
        statistics = self._batch_statistics(mini, micro_batches, keys)
        for index, micro_rows in enumerate(micro_batches):
            micro = mini.select(micro_rows)
            with self.parallel.sync_context(self.train_module, last=index == len(micro_batches) - 1):
                logp, entropy = self._forward_logprobs(micro, with_entropy=True)
                old = micro.old_logprobs if micro.old_logprobs is not None else logp.detach()
                loss, metrics = policy_loss(
                    self.preset, logp, old, micro.advantages, micro.loss_mask,
                    ref_logp=micro.ref_logprobs, behaviour_logp=micro.behaviour_logprobs, entropy=entropy,
                    num_sequences=num_sequences, num_tokens=max(num_tokens, 1),
                    max_len=self.config.rollout.max_new_tokens, statistics=statistics,
                    clip_cov_keys=None if keys is None else keys[micro_rows, : micro.completion_ids.shape[1]],
                )
                self._backward(loss * self.parallel.loss_scale)  # × W: DDP averages gradients over ranks
            share = float(micro.loss_mask.sum()) / max(num_tokens, 1)
            stats["loss"] = stats.get("loss", 0.0) + float(loss.detach())
            for key, value in metrics.items():
                value = float(value)
                if key.endswith("_max"):
                    stats[key] = max(stats.get(key, -math.inf), value)
                elif key.endswith("_min"):
                    stats[key] = min(stats.get(key, math.inf), value)
                else:  # token-weighted mean over the mini-batch
                    stats[key] = stats.get(key, 0.0) + share * value
                    token_weights[key] = token_weights.get(key, 0.0) + share
        if self.parallel.enabled:  # every rank's share of the global mini-batch's stats
            stats, token_weights = merge_update_stats(self.parallel.gather((stats, token_weights)))
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in self.model.parameters() if p.requires_grad], t.max_grad_norm)
        if hasattr(grad_norm, "full_tensor"):  # FSDP: the norm over every shard, as a DTensor
            grad_norm = grad_norm.full_tensor()
        self.optimizer.step()
        for key, weight in token_weights.items():
            if weight > 0:
                stats[key] /= weight
        stats["grad_norm"] = float(grad_norm)
        return stats

    # ------------------------------------------------------------------ one step (the run: grpokit.trainers.run_loop)
    def train_step(self, step: int) -> dict[str, float]:
        """One GRPO step: sample and score → advantages → μ passes of updates. Returns its metrics."""
        started = time.perf_counter()
        scored = self.rollouts.take(step)  # sampled now, or (async) taken from the producer's queue
        rollout_seconds = time.perf_counter() - started
        started = time.perf_counter()
        sampler_metrics = self.rollouts.sampler_metrics()
        sampler_metrics["rollouts/step"] = float(scored.generated_rollouts)
        if len(scored.prompt_indices) == 0:
            self.rollouts.updated(step)  # no update: the weights after step s are those before it
            return {"dynamic_sampling/rounds": float(scored.generation_rounds),
                    "dynamic_sampling/dropped_groups": float(scored.dropped_groups), "train/skipped": 1.0,
                    **sampler_metrics, **self.rollouts.step_metrics()}
        batch = self.prepare(scored)
        scale = self.rollouts.advantage_scale()  # < 1 only for a down-weighted stale rollout (training.async)
        if scale != 1.0:
            batch.advantages = batch.advantages * scale
        self._log_samples(step + 1, scored, batch)  # before the update: these advantages drove it
        stats = self.update(batch, step)
        train_seconds = time.perf_counter() - started
        started = time.perf_counter()
        self._sync_engine()  # the next rollout samples from the updated policy
        self.rollouts.updated(step)  # async: the producer samples step s + 1 + k with these weights
        sync_seconds = time.perf_counter() - started
        # Batch metrics of the whole global batch: every rank's per-row values, gathered.
        view = self.parallel.global_step_view(scored, batch) if self.parallel.enabled else (scored, batch)
        metrics = step_metrics(*view, stats)
        reason = no_gradient_reason(view[0].total_reward, view[0].rollout.group_ids) if self.group_relative else None
        if reason is not None and self.parallel.is_main:
            log.warning("step %d: %s", step + 1, reason)
        tokens, sampler_metrics["rollouts/step"] = self.parallel.sum(
            [scored.rollout.completion_mask.sum(), scored.generated_rollouts])
        self.tokens_seen += int(tokens)
        metrics.update({
            "time/rollout_seconds": rollout_seconds,
            "time/train_seconds": train_seconds,
            "time/weight_sync_seconds": sync_seconds,
            # vLLM engines: what the push after this update carried (the adapter alone, or merged weights)
            **({"time/weight_sync_bytes": float(self.engine.last_sync["bytes"])}
               if getattr(self.engine, "last_sync", None) and not self.rollouts.owns_engine else {}),
            "time/rollout_tokens_per_second": tokens / max(rollout_seconds, 1e-9),
            "time/train_tokens_per_second": tokens * self.config.training.num_iterations / max(train_seconds, 1e-9),
            "tokens_seen": float(self.tokens_seen),
        })
        metrics.update(sampler_metrics)
        metrics.update(self.rollouts.step_metrics())  # async: staleness, idle seconds of producer and trainer
        if scored.rollout.trajectories is not None:  # turns, tool calls, tool seconds, tokens by role
            from grpokit.agents.episodes import episode_metrics

            metrics.update(episode_metrics(scored.rollout.trajectories))
        return metrics

    def _log_samples(self, logged_step: int, scored: ScoredRollout, batch: TrainingBatch) -> None:
        """Every `logging.samples_every` steps: the first groups' completions, scores and advantages."""
        from grpokit.monitoring.samples import training_records

        every = self.config.logging.samples_every
        if self.samples_log is None or not every or logged_step % every:
            return
        rollout = scored.rollout
        self.samples_log.write(training_records(
            logged_step, prompts=rollout.prompts, completions=rollout.completions,
            group_ids=rollout.group_ids.tolist(), prompt_indices=scored.prompt_indices,
            reward_names=scored.reward_names, rewards=scored.rewards.tolist(), total=scored.total_reward.tolist(),
            advantages=batch.advantages.tolist(), groups=self.config.logging.samples_per_log,
            episodes=None if rollout.trajectories is None else [t.to_dict() for t in rollout.trajectories]))

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, *, callbacks: bool = True) -> dict[str, float]:
        """Held-out accuracies (percent) of the proxy and gold rewards; then the callbacks' on_evaluate
        (the gold guard: gold/proxy scores, `checkpoints/best`), unless `callbacks=False`."""
        return self.evaluate_with_examples(callbacks=callbacks)[0]

    def evaluate_with_examples(self, *, callbacks: bool = True):
        """`evaluate`, plus each evaluated prompt's (greedy) completion and scores (`EvalExample`s).

        While training, the first `logging.eval_samples` examples go to samples.jsonl. `grpokit eval` passes
        `callbacks=False`: evaluating a run must not change it (no best-gold checkpoint, no alarm)."""
        from grpokit.monitoring.samples import eval_records
        from grpokit.trainers.evaluation import EvalSettings, evaluate_with_examples

        e, r = self.config.eval, self.config.rollout
        settings = EvalSettings(num_prompts=e.num_prompts, samples_per_prompt=e.samples_per_prompt,
                                temperature=e.temperature, greedy=e.greedy, max_new_tokens=r.max_new_tokens,
                                top_p=r.top_p, top_k=r.top_k, reward=e.reward,
                                success_threshold=e.success_threshold, seed=evaluation_seed(self.config.training.seed))
        with self.rollouts.evaluation_engine():  # async + vLLM: the engine holds this trainer's weights meanwhile
            metrics, examples = evaluate_with_examples(self.agent or self.engine, self.policy.tokenizer,
                                                       self.eval_data, self.reward_runner, settings,
                                                       gold_runner=self.gold_runner)
        if self.samples_log is not None:
            self.samples_log.write(eval_records(self.step, examples, self.config.logging.eval_samples))
        self.eval_history.append((self.step, metrics))
        if callbacks:
            from grpokit.trainers.run_loop import notify

            notify(self, "on_evaluate", self.step, metrics)
        return metrics, examples

    def _backward(self, loss: Tensor) -> None:
        if self.accelerator is not None:
            self.accelerator.backward(loss)
        else:
            loss.backward()

