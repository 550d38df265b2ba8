"""From per-token losses to one scalar: the denominator is the whole story.

``per_token_loss[B, T]`` (or ``[B, 1]``, broadcast over tokens), ``mask[B, T]`` (1 on tokens that count),
``N`` = number of sequences, ``|o_i| = Σ_t m_{i,t}``. Masked positions are excluded with ``where`` (not a
product), so a NaN or inf at a padding position cannot leak into the result.

Global denominators: ``num_sequences`` and ``num_tokens`` are the counts over the whole optimizer batch (all
micro-batches on all processes). Pass them in and every mode decomposes: summing the returned values of the
micro-batches (and of the processes) gives the full-batch value, so gradient accumulation needs no extra
division. Left ``None``, the local batch's counts are used (correct when the batch is not split).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .registry import AGGREGATIONS, register_aggregation


@register_aggregation("token_mean", summary="Σ m·L / (valid tokens of the batch) (DAPO, TRL dapo/bnpo)")
def _token_mean(masked: Tensor, m: Tensor, num_sequences, num_tokens, max_len) -> Tensor:
    return masked.sum() / num_tokens


@register_aggregation("seq_mean_token_mean", summary="mean over sequences of each one's token mean (GRPO)")
def _seq_mean_token_mean(masked: Tensor, m: Tensor, num_sequences, num_tokens, max_len) -> Tensor:
    per_sequence = masked.sum(dim=-1) / m.sum(dim=-1).clamp(min=1.0)
    return per_sequence.sum() / num_sequences


@register_aggregation("seq_mean_token_sum", summary="Σ m·L / number of sequences")
def _seq_mean_token_sum(masked: Tensor, m: Tensor, num_sequences, num_tokens, max_len) -> Tensor:
    return masked.sum() / num_sequences


@register_aggregation("seq_mean_token_sum_norm", summary="Σ m·L / (sequences · L_max) (Dr. GRPO)")
def _seq_mean_token_sum_norm(masked: Tensor, m: Tensor, num_sequences, num_tokens, max_len) -> Tensor:
    if max_len is None:
        raise ValueError(
            "seq_mean_token_sum_norm needs max_len: the generation limit L_max (a constant), "
            "not the longest completion in the batch"
        )
    return masked.sum() / (num_sequences * max_len)


@register_aggregation("token_sum", summary="Σ m·L, no denominator (verl token-sum; scale the learning rate)")
def _token_sum(masked: Tensor, m: Tensor, num_sequences, num_tokens, max_len) -> Tensor:
    return masked.sum()


AGGREGATION_MODES = AGGREGATIONS.names()  # the built-in modes; AGGREGATIONS also holds any registered later


def aggregate_loss(
    per_token_loss: Tensor,
    mask: Tensor,
    mode: str,
    *,
    num_sequences: int | float | Tensor | None = None,
    num_tokens: int | float | Tensor | None = None,
    max_len: int | None = None,
) -> Tensor:
    """Reduce ``per_token_loss`` to a scalar. Numerator and denominator scopes per mode:

    - ``token_mean`` (DAPO, TRL ``dapo``/``bnpo``): ``Σ_{i,t} m·L / num_tokens``; numerator over this
      batch's valid tokens, denominator the global count of valid tokens (default: this batch's ``Σ m``).
    - ``seq_mean_token_mean`` (original GRPO): ``(1/num_sequences) Σ_i (Σ_t m·L / |o_i|)``; the inner mean
      is over one sequence's valid tokens (a sequence is never split), the outer denominator is the global
      number of sequences (default: this batch's rows, fully masked rows included, as in TRL).
    - ``seq_mean_token_sum``: ``Σ_{i,t} m·L / num_sequences``.
    - ``seq_mean_token_sum_norm`` (Dr. GRPO): ``Σ_{i,t} m·L / (num_sequences · max_len)``, ``max_len`` the
      generation limit L_max, a constant (required).
    - ``token_sum`` (verl ``token-sum``): ``Σ_{i,t} m·L``, no denominator; the gradient grows with the batch's
      token count, so the learning rate has to absorb it.

    Case: lengths 1 and 3, L_max = 4, losses [1] and [0, 0, 0] → 0.25, 0.5, 0.5, 0.125, 1 (token_sum).
    """
    aggregate = AGGREGATIONS.get(mode).function  # ValueError naming the registered modes
    valid = mask.bool()
    per_token_loss = per_token_loss.expand(valid.shape)
    masked = torch.where(valid, per_token_loss, torch.zeros_like(per_token_loss))
    m = valid.to(per_token_loss.dtype)
    if num_sequences is None:
        num_sequences = valid.shape[0]
    if num_tokens is None:
        num_tokens = m.sum().clamp(min=1.0)
    return aggregate(masked, m, num_sequences, num_tokens, max_len)
