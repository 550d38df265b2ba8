"""A batched, KV-cached sampler that runs the policy itself, in the trainer's process.

Each prompt is prefilled once, its KV cache repeated n times, then one token per row is decoded
per step. Rows that stop (EOS or a stop token, which is kept) are padded afterwards and dropped
from the forward batch; the loop ends when every row has stopped or max_new_tokens is reached.

Behaviour log-probs: for each sampled token we record log μ(y_t) = log_softmax(logits / τ)[y_t],
the distribution after temperature only (greedy, τ = 0: log_softmax(logits)). This is exactly
what the trainer's `sequence_logprobs(..., temperature=τ)` computes for the same weights (the TRL
convention), so π_old/μ = 1 on-policy. Top-k/top-p truncation is *not* folded in: it changes
which tokens can be drawn, not the recorded log-prob of the drawn token.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from grpokit.models.logprobs import position_ids_from_attention_mask
from grpokit.rollout.types import FINISH_LENGTH, FINISH_STOP, RolloutBatch, SamplingParams


def top_k_filter(logits: Tensor, top_k: int) -> Tensor:
    """Set to −inf every logit below the k-th largest of its row (ties with it are kept); k = 0: off.

    Same rule as HF's TopKLogitsWarper with min_tokens_to_keep = 1.
    """
    if top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    kth_largest = torch.topk(logits, top_k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """Nucleus filter: keep the most likely tokens, in order, until their probability mass ≥ top_p.

    With p sorted in descending order, token i is kept iff Σ_{j<i} p_j < top_p; the most likely
    token is always kept (HF's TopPLogitsWarper with min_tokens_to_keep = 1). top_p = 1: off.
    """
    if top_p >= 1.0:
        return logits
    sorted_logits, sorted_index = torch.sort(logits, dim=-1, descending=True)
    sorted_probs = sorted_logits.softmax(dim=-1)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    remove_sorted = mass_before >= top_p
    remove_sorted[..., 0] = False
    remove = remove_sorted.scatter(-1, sorted_index, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def sample_next_tokens(
    logits: Tensor, sampling: SamplingParams, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Draw one token per row from [B, V] logits; return (tokens [B] long, behaviour logp [B] float32).

    τ > 0: draw from softmax(top_p(top_k(logits / τ))); logp = log_softmax(logits / τ)[token].
    τ = 0: token = argmax(logits); logp = log_softmax(logits)[token].
    """
    logits = logits.float()
    if sampling.temperature == 0.0:
        tokens = logits.argmax(dim=-1)
        logp = torch.log_softmax(logits, dim=-1)
    else:
        scaled = logits / sampling.temperature
        filtered = top_p_filter(top_k_filter(scaled, sampling.top_k), sampling.top_p)
        tokens = torch.multinomial(filtered.softmax(dim=-1), 1, generator=generator).squeeze(-1)
        logp = torch.log_softmax(scaled, dim=-1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


def _cache_argument_name(model: nn.Module) -> str:
    """The forward keyword for the KV cache: `cache` in recent transformers, `past_key_values` before."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(causal_lm.forward).parameters else "past_key_values"


def _output_cache(outputs: Any) -> Any:
    """The KV cache a forward returned (under `cache` or, in older transformers, `past_key_values`)."""
    cache = outputs.get("cache") if hasattr(outputs, "get") else None
    return cache if cache is not None else outputs.past_key_values


class InProcessEngine:
    """`RolloutEngine` that samples from the (shared) policy module directly.

    Returned tensors live on `device` (default: the model's device). Prompts are encoded with
    `add_special_tokens` (default False: prompts arrive already templated, as in TRL).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        device: str | torch.device | None = None,
        add_special_tokens: bool = False,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.add_special_tokens = add_special_tokens
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token")
        self.pad_token_id = int(pad)

    def sync_weights(self, model: nn.Module) -> None:
        """The engine samples from the module it holds, so syncing is adopting `model`."""
        self.model = model

    def stop_token_ids(self, sampling: SamplingParams) -> list[int]:
        """The tokenizer's eos, the model's generation-config eos (one id or a list), and sampling's."""
        ids = set(sampling.stop_token_ids)
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        generation_config = getattr(self.model, "generation_config", None)
        config_eos = getattr(generation_config, "eos_token_id", None)
        if config_eos is not None:
            ids.update(int(t) for t in ([config_eos] if isinstance(config_eos, int) else config_eos))
        return sorted(ids)

    def _encode_left_padded(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        encoded = self.tokenizer(list(prompts), add_special_tokens=self.add_special_tokens)["input_ids"]
        if any(len(ids) == 0 for ids in encoded):
            raise ValueError("empty prompt: the sampler needs at least one prompt token to condition on")
        width = max(len(ids) for ids in encoded)
        prompt_ids = torch.full((len(encoded), width), self.pad_token_id, dtype=torch.long)
        prompt_mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            prompt_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            prompt_mask[row, width - len(ids) :] = 1
        return prompt_ids.to(self.device), prompt_mask.to(self.device)

    def generate(self, prompts: Sequence[str], n: int, sampling: SamplingParams) -> RolloutBatch:
        """Sample n completions for each prompt; rows are prompt-major (see `RolloutBatch`)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not prompts:
            raise ValueError("no prompts")
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                return self._generate(list(prompts), n, sampling)
        finally:
            self.model.train(was_training)

    def _generate(self, prompts: list[str], n: int, sampling: SamplingParams) -> RolloutBatch:
        seed = sampling.seed if sampling.seed is not None else int(torch.randint(0, 2**62, ()).item())
        generator = torch.Generator(device=self.device).manual_seed(seed)
        stop_ids = torch.tensor(self.stop_token_ids(sampling), dtype=torch.long, device=self.device)

        cache_argument = _cache_argument_name(self.model)
        unique_ids, unique_mask = self._encode_left_padded(prompts)
        prompt_ids = unique_ids.repeat_interleave(n, dim=0)
        prompt_mask = unique_mask.repeat_interleave(n, dim=0)
        rows = prompt_ids.shape[0]
        group_ids = torch.arange(len(prompts), device=self.device).repeat_interleave(n)

        tokens_per_step: list[Tensor] = []  # each [rows]
        logp_per_step: list[Tensor] = []
        live_per_step: list[Tensor] = []  # [rows] bool: the row was still generating at this step
        stopped = torch.zeros(rows, dtype=torch.bool, device=self.device)

        if sampling.max_new_tokens > 0:
            # Prefill each distinct prompt once, then give each of its n rows a copy of the cache.
            outputs = self.model(
                input_ids=unique_ids,
                attention_mask=unique_mask,
                position_ids=position_ids_from_attention_mask(unique_mask),
                use_cache=True,
                logits_to_keep=1,
            )
            cache = _output_cache(outputs)
            cache.batch_repeat_interleave(n)
            next_logits = outputs.logits[:, -1, :].repeat_interleave(n, dim=0)
            attention_mask = prompt_mask
            next_position = prompt_mask.sum(dim=-1)  # [rows], position of the token about to be fed
            active = torch.arange(rows, device=self.device)  # rows still in the forward batch

            for step in range(sampling.max_new_tokens):
                active_tokens, active_logp = sample_next_tokens(next_logits, sampling, generator)
                step_tokens = torch.full((rows,), self.pad_token_id, dtype=torch.long, device=self.device)
                step_logp = torch.zeros(rows, dtype=torch.float32, device=self.device)
                step_tokens[active] = active_tokens
                step_logp[active] = active_logp
                live = torch.zeros(rows, dtype=torch.bool, device=self.device)
                live[active] = True
                tokens_per_step.append(step_tokens)
                logp_per_step.append(step_logp)
                live_per_step.append(live)

                newly_stopped = torch.isin(active_tokens, stop_ids)
                stopped[active[newly_stopped]] = True
                if bool(stopped.all()) or step == sampling.max_new_tokens - 1:
                    break

                attention_mask = torch.cat([attention_mask, attention_mask.new_ones((rows, 1))], dim=1)
                keep = ~newly_stopped
                if not bool(keep.all()):
                    # Drop stopped rows from the forward batch; their cache is no longer needed.
                    cache.batch_select_indices(keep.nonzero().flatten())
                    active, active_tokens = active[keep], active_tokens[keep]
                outputs = self.model(
                    input_ids=active_tokens[:, None],
                    attention_mask=attention_mask[active],
                    position_ids=next_position[active][:, None],
                    use_cache=True,
                    **{cache_argument: cache},
                )
                next_logits = outputs.logits[:, -1, :]
                next_position = next_position + 1

        return self._assemble(
            prompts,
            n,
            prompt_ids,
            prompt_mask,
            group_ids,
            tokens_per_step,
            logp_per_step,
            live_per_step,
            stopped,
        )

    def _assemble(
        self,
        prompts: list[str],
        n: int,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        group_ids: Tensor,
        tokens_per_step: list[Tensor],
        logp_per_step: list[Tensor],
        live_per_step: list[Tensor],
        stopped: Tensor,
    ) -> RolloutBatch:
        rows = prompt_ids.shape[0]
        if tokens_per_step:
            completion_ids = torch.stack(tokens_per_step, dim=1)
            behaviour_logprobs = torch.stack(logp_per_step, dim=1)
            completion_mask = torch.stack(live_per_step, dim=1).long()
        else:
            completion_ids = torch.empty((rows, 0), dtype=torch.long, device=self.device)
            behaviour_logprobs = torch.empty((rows, 0), dtype=torch.float32, device=self.device)
            completion_mask = torch.empty((rows, 0), dtype=torch.long, device=self.device)
        lengths = completion_mask.sum(dim=-1).tolist()
        id_rows = completion_ids.tolist()
        completions = self.tokenizer.batch_decode(
            [ids[:length] for ids, length in zip(id_rows, lengths)], skip_special_tokens=True
        )
        return RolloutBatch(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            completion_ids=completion_ids,
            completion_mask=completion_mask,
            behaviour_logprobs=behaviour_logprobs,
            finish_reasons=[FINISH_STOP if s else FINISH_LENGTH for s in stopped.tolist()],
            group_ids=group_ids,
            prompts=[p for p in prompts for _ in range(n)],
            completions=completions,
        )
