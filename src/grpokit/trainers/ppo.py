"""PPO with a learned critic: the language-model trainer plus a value model (preset `ppo`).

The step is GRPO's with the critic in the middle (the fourth article's RLHF → PPO → GRPO walk):

    rollout  ← sample completions, score them                           (LMTrainer.sample)
    values   ← V(s_t) for every completion token, from the critic        (`prepare`)
    rewards  ← outcome reward on the last token, −β·k1 to π_ref on every token
    A, G     ← GAE(γ, λ) advantages (whitened over the batch) and returns
    update   ← the core's clipped surrogate and aggregation on A          (LMTrainer.update)
             + the clipped value loss ½·max((V − G)², (V^clip − G)²) on the critic, same mini-batches

Critic initialisation (the documented choice): a copy of the policy's decoder body at the start of the run
with a new linear value head whose weights and bias are zero, so every V starts at 0. InstructGPT initialises
the critic from the reward model; grpokit's rewards are functions, not a model, so the policy's body is the
only trained representation there is (verl's default too). A zero head makes the first advantages the plain
rewards-to-go instead of the noise of a random head. The critic has its own AdamW at
`training.learning_rate × preset.critic_lr_scale` and is checkpointed beside the policy (`critic.pt`).

What GRPO saves, in this file's terms: the critic's weights, gradients and optimizer state (a second model's
worth of memory), its forward and backward every step. `bench/ppo_vs_grpo.py` measures both.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import Tensor, nn

from grpokit.algorithms import ADVANTAGE_ESTIMATORS, aggregate_loss, clipped_value_loss, gae_advantages
from grpokit.algorithms.critic import token_rewards_with_kl
from grpokit.config_schema import ConfigError
from grpokit.trainers.batching import TrainingBatch, micro_batch_rows, model_inputs
from grpokit.trainers.lm import LMTrainer
from grpokit.trainers.scored import ScoredRollout, weighted_total

CRITIC_FILE = "critic.pt"  # beside model/ in every checkpoint: the critic's weights and optimizer state


class ValueModel(nn.Module):
    """V(s_t) per completion token: a decoder body's hidden state at the position before token t → a linear head."""

    def __init__(self, body: nn.Module, hidden_size: int):
        super().__init__()
        self.body = body
        self.head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_policy(cls, causal_lm: nn.Module) -> ValueModel:
        """A copy of the policy's decoder body (`get_decoder()`), every parameter trainable, and a zero head."""
        body = causal_lm.get_decoder() if hasattr(causal_lm, "get_decoder") else None
        if body is None or body is causal_lm:
            raise ConfigError(f"algorithm: ppo needs a causal LM with a decoder body; {type(causal_lm).__name__} "
                              "has no get_decoder()")
        body = copy.deepcopy(body).requires_grad_(True)
        # the head in the body's dtype: a bfloat16 (or float64) policy would otherwise feed a float32 Linear
        return cls(body, causal_lm.config.hidden_size).to(next(body.parameters()).dtype)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, num_completion: int) -> Tensor:
        """Values ``[B, T]`` (float32) for the last T = ``num_completion`` tokens: position i's hidden state is
        the state in which token i + 1 is chosen, as for the policy's log-probs."""
        from grpokit.models.logprobs import position_ids_from_attention_mask

        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask,
                           position_ids=position_ids_from_attention_mask(attention_mask),
                           use_cache=False).last_hidden_state
        return self.head(hidden[:, -num_completion - 1 : -1, :]).squeeze(-1).float()


class PPOBatch(TrainingBatch):
    """A training batch with the critic's targets; `select` keeps the class (so mini-/micro-batches carry them)."""

    def __init__(self, *, old_values: Tensor, returns: Tensor, **fields):
        super().__init__(**fields)
        self.old_values = old_values  # [B, T] V(s_t) at rollout time (the value clip's centre)
        self.returns = returns  # [B, T] GAE returns, the value regression target

    def select(self, rows: Tensor) -> PPOBatch:
        base = super().select(rows)  # rows picked, padding columns trimmed
        width = base.completion_ids.shape[1]
        fields = {name: getattr(base, name) for name in base.__dataclass_fields__}
        return PPOBatch(old_values=self.old_values[rows][:, :width], returns=self.returns[rows][:, :width], **fields)


class PPOTrainer(LMTrainer):
    """LMTrainer with a critic; see the module docstring. One process, full fine-tuning (no LoRA) for now."""

    group_relative = False  # one completion per prompt is the normal case: no "all-equal group" warning

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        if self.parallel.enabled:
            raise ConfigError("algorithm: ppo runs in one process for now; launch it without accelerate/torchrun")
        if self.policy.is_lora:
            raise ConfigError("algorithm: ppo trains a full critic beside the policy; model.lora is not supported")
        if self.preset.dynamic_sampling:  # it keeps groups with unequal rewards; one completion never has them
            raise ConfigError("algorithm.overrides.dynamic_sampling: not with ppo (its critic, not a group, is the "
                              "baseline: every group of one completion would be dropped)")
        t = config.training
        self.critic = ValueModel.from_policy(self.policy.model).to(next(self.policy.model.parameters()).device)
        self.critic_optimizer = torch.optim.AdamW(
            self.critic.parameters(), lr=t.learning_rate * self.preset.critic_lr_scale,
            betas=(t.adam_beta1, t.adam_beta2), weight_decay=t.weight_decay)
        self.critic_metrics: dict[str, float] = {}

    # ------------------------------------------------------------------ 2. values, rewards, GAE
    def prepare(self, scored: ScoredRollout) -> PPOBatch:
        rollout = scored.rollout
        fields = dict(
            prompt_ids=rollout.prompt_ids, prompt_mask=rollout.prompt_mask,
            completion_ids=rollout.completion_ids, completion_mask=rollout.completion_mask,
            group_ids=rollout.group_ids, loss_mask=rollout.policy_tokens.clone(),  # inserted tool tokens: 0
            advantages=torch.zeros(len(rollout)), behaviour_logprobs=rollout.behaviour_logprobs,
        )
        batch = TrainingBatch(**fields)
        # Old log-probs always: the KL reward is the sampling policy's, and μ > 1 needs them anyway.
        batch.old_logprobs = self._logprobs_no_grad(batch, reference=False)
        if self.reference_needed:
            batch.ref_logprobs = self._logprobs_no_grad(batch, reference=True)
        if not self.behaviour_checked:
            self._check_behaviour(batch, batch.old_logprobs)
        total = weighted_total(scored.rewards.to(torch.float64), self._reward_weights(scored.rewards.shape[1]))
        valid = ~torch.isnan(total)
        batch.loss_mask[~valid] = 0  # a None/NaN reward: no reward, no loss, no value target
        if self.preset.overlong_filter:
            from grpokit.algorithms import overlong_filter_mask

            batch.loss_mask = overlong_filter_mask(rollout.truncated, batch.loss_mask)
        mask = batch.loss_mask
        beta = self.preset.beta if self.preset.kl_in_reward else 0.0
        token_rewards = token_rewards_with_kl(total.nan_to_num(0.0).float(), mask, batch.old_logprobs,
                                              batch.ref_logprobs, beta)
        values = self._values_no_grad(batch)
        advantages = ADVANTAGE_ESTIMATORS.call(self.preset.advantage, self.preset, token_rewards=token_rewards,
                                               values=values, mask=mask)
        _, returns = gae_advantages(token_rewards, values, mask, gamma=self.preset.gae_gamma,
                                    lam=self.preset.gae_lambda)
        fields.update(loss_mask=mask, advantages=advantages.float(), old_logprobs=batch.old_logprobs,
                      ref_logprobs=batch.ref_logprobs)
        self.critic_metrics = _critic_metrics(values, returns, token_rewards, mask)
        return PPOBatch(old_values=values, returns=returns, **fields)

    @torch.no_grad()
    def _values_no_grad(self, batch: TrainingBatch) -> Tensor:
        out = torch.zeros_like(batch.behaviour_logprobs, dtype=torch.float32)
        self.critic.eval()
        for rows in micro_batch_rows(torch.arange(len(batch)), self.config.training.micro_batch_size):
            micro = batch.select(rows)
            values = self.critic(*model_inputs(micro))
            out[rows, : values.shape[1]] = values
        return out

    # ------------------------------------------------------------------ 3. update: policy, then critic
    def _optimizer_step(self, batch: PPOBatch, rows: Tensor, key_generator: torch.Generator) -> dict[str, float]:
        stats = super()._optimizer_step(batch, rows, key_generator)  # the policy: the core's surrogate
        stats.update(self._critic_step(batch.select(rows)))
        return stats

    def _critic_step(self, mini: PPOBatch) -> dict[str, float]:
        """One AdamW step of the critic on a mini-batch: the clipped value loss, aggregated like the policy's."""
        t = self.config.training
        self.critic.train()
        self.critic_optimizer.zero_grad(set_to_none=True)
        num_tokens = max(int(mini.loss_mask.sum()), 1)
        loss_sum = clipped_sum = 0.0
        for micro_rows in micro_batch_rows(torch.arange(len(mini)), t.micro_batch_size):
            micro = mini.select(micro_rows)
            values = self.critic(*model_inputs(micro))
            per_token, clipped = clipped_value_loss(values, micro.old_values, micro.returns,
                                                    clip=self.preset.value_clip)
            loss = aggregate_loss(per_token, micro.loss_mask, self.preset.aggregation, num_sequences=len(mini),
                                  num_tokens=num_tokens, max_len=self.config.rollout.max_new_tokens)
            loss.backward()
            loss_sum += float(loss.detach())
            clipped_sum += float((clipped & micro.loss_mask.bool()).sum())
        grad_norm = torch.nn.utils.clip_grad_norm_(self.critic.parameters(), t.max_grad_norm)
        self.critic_optimizer.step()
        # logged as train/value_loss, train/value_clip_frac, train/value_grad_norm (mean over the updates)
        return {"value_loss": loss_sum, "value_clip_frac": clipped_sum / num_tokens, "value_grad_norm": float(grad_norm)}

    def _log_samples(self, logged_step: int, scored: ScoredRollout, batch: PPOBatch) -> None:
        """samples.jsonl holds one advantage per completion: PPO's per-token ones, averaged over its tokens."""
        m = batch.loss_mask.float()
        per_completion = (batch.advantages * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
        fields = {name: getattr(batch, name) for name in batch.__dataclass_fields__}
        super()._log_samples(logged_step, scored, TrainingBatch(**{**fields, "advantages": per_completion}))

    def train_step(self, step: int) -> dict[str, float]:
        metrics = super().train_step(step)
        metrics.update(self.critic_metrics)  # of this step's rollout, before the update
        return metrics

    # ------------------------------------------------------------------ checkpoints (grpokit.trainers.lm_state)
    def save_extra_checkpoint_files(self, directory: Path) -> None:
        torch.save({"critic": self.critic.state_dict(), "optimizer": self.critic_optimizer.state_dict()},
                   Path(directory) / CRITIC_FILE)

    def load_extra_checkpoint_files(self, directory: Path) -> None:
        path = Path(directory) / CRITIC_FILE
        if not path.is_file():
            raise ConfigError(f"{path}: missing; this checkpoint was not written by a ppo run "
                              "(resume with the preset it was trained with)")
        state = torch.load(path, map_location=next(self.critic.parameters()).device, weights_only=True)
        self.critic.load_state_dict(state["critic"])
        self.critic_optimizer.load_state_dict(state["optimizer"])


def _critic_metrics(values: Tensor, returns: Tensor, token_rewards: Tensor, mask: Tensor) -> dict[str, float]:
    """critic/value_mean, critic/return_mean, critic/explained_variance = 1 − Var(G − V)/Var(G) (valid tokens),
    critic/kl_reward_mean (the per-token KL penalty's mean, the outcome reward excluded)."""
    valid = mask.bool()
    if not valid.any():
        return {}
    v, g = values[valid].double(), returns[valid].double()
    variance = g.var(unbiased=False)
    explained = float(1.0 - (g - v).var(unbiased=False) / variance) if variance > 0 else float("nan")
    last = valid & ~torch.cat([valid[:, 1:], torch.zeros_like(valid[:, :1])], dim=1)  # last token of each row
    kl_reward = token_rewards[valid & ~last]
    return {"critic/value_mean": float(v.mean()), "critic/return_mean": float(g.mean()),
            "critic/explained_variance": explained,
            "critic/kl_reward_mean": float(kl_reward.mean()) if kl_reward.numel() else 0.0}
