"""Log-prob of the sampled token and entropy of the policy, without a [B, T, V] float32 log-softmax.

For each position, with ``z = logits / τ`` (τ the sampling temperature), ``lse = log Σ_v exp z_v``:
``log p(label) = z_label − lse`` and ``H = −Σ_v p_v log p_v = lse − Σ_v p_v z_v``.

The chunked functions walk the flattened B·T positions ``chunk_size`` at a time, in both forward and backward
(custom autograd functions that recompute the softmax of a chunk in backward instead of storing it), so
the float32 temporaries are ``[chunk_size, V]``. From hidden states, the logits themselves only ever exist
one chunk at a time. Gradients for the backward pass, per position (g = ∂L/∂logp, h = ∂L/∂H):
``∂L/∂z_v = g·(1[v = label] − p_v) − h·p_v·(log p_v + H)``.

Maths runs in float32 (float64 if the inputs are float64); results have that dtype.
The top-entropy mask ("Beyond the 80/20 Rule", arXiv 2506.01939) lives here too; Clip-Cov and KL-Cov
(arXiv 2505.22617) are in :mod:`grpokit.algorithms.covariance` and re-exported.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .covariance import clip_cov_mask, kl_cov_penalty, token_covariance

__all__ = [
    "clip_cov_mask",
    "kl_cov_penalty",
    "logprobs_and_entropy_from_hidden",
    "logprobs_and_entropy_from_logits",
    "naive_logprobs_and_entropy",
    "token_covariance",
    "top_entropy_mask",
]


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _row_chunk(x: Tensor, start: int, end: int) -> Tensor:
    """Rows ``start:end`` of ``x[B, T, ...]`` seen as ``[B·T, ...]``: a view when possible, else a chunk-sized
    copy (``x`` is often a non-flattenable slice such as ``logits[:, -T-1:-1]``; flattening it whole would
    copy all of it)."""
    T = x.shape[1]
    b0, t0 = divmod(start, T)
    b1, t1 = divmod(end - 1, T)
    if b0 == b1:
        return x[b0, t0 : t1 + 1]
    pieces = [x[b0, t0:], *(x[b] for b in range(b0 + 1, b1)), x[b1, : t1 + 1]]
    return torch.cat(pieces)


def _scaled_logits(logits_chunk: Tensor, dtype: torch.dtype, temperature: float) -> Tensor:
    """``logits / τ`` in ``dtype``; never modifies ``logits_chunk`` (which may be the caller's tensor)."""
    z = logits_chunk.to(dtype)
    if temperature == 1.0:
        return z
    return z.div_(temperature) if z.data_ptr() != logits_chunk.data_ptr() else z / temperature


def _chunks(num_rows: int, chunk_size: int):
    for start in range(0, num_rows, chunk_size):
        yield start, min(start + chunk_size, num_rows)


def _exp_and_logsumexp(z: Tensor, *, in_place: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(e = exp(z − max), Σ_v e_v, lse) per row, by torch.logsumexp's own steps (max, ±inf rows shifted by 0;
    exp(z − max); sum; log + max), so lse is bit-identical to torch.logsumexp(z, -1). `in_place`: e overwrites z."""
    maxes = z.amax(dim=-1, keepdim=True)
    maxes.masked_fill_(maxes.abs() == math.inf, 0)
    e = (z.sub_(maxes) if in_place else z - maxes).exp_()
    total = e.sum(dim=-1)
    return e, total, total.log().add_(maxes.squeeze(-1))


def _forward_chunk(
    z: Tensor, labels: Tensor, with_entropy: bool, *, z_is_scratch: bool = False
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(logp, lse, entropy) of one chunk of scaled logits ``z[n, V]``.

    The exp passes over [n, V], not the matmul, dominate at small hidden sizes on a CPU, so: one exp pass,
    e = exp(z − max), serves lse and the entropy (Σ_v p_v z_v = Σ_v e_v z_v / Σ_v e_v, the dot product in
    place in e: a batched matmul of n vector pairs is ~3× slower); without the entropy and when z is this
    chunk's own buffer (`z_is_scratch`), e is computed in place in z (one [n, V] allocation less)."""
    label_z = z.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    e, total, lse = _exp_and_logsumexp(z, in_place=z_is_scratch and not with_entropy)
    if not with_entropy:
        return label_z - lse, lse, None
    expected_z = e.mul_(z).sum(dim=-1).div_(total)
    return label_z - lse, lse, lse - expected_z


def _grad_logits_chunk(
    z: Tensor,
    labels: Tensor,
    lse: Tensor,
    entropy: Tensor | None,
    g: Tensor | None,
    h: Tensor | None,
    temperature: float,
    *,
    z_is_scratch: bool = False,
) -> Tensor:
    """∂L/∂logits = (1/τ)·∂L/∂z for one chunk (formula in the module docstring), in few passes over [n, V].

    `z_is_scratch`: z is this chunk's own buffer (recomputed from hidden states), so without an entropy
    gradient p is computed in place in it (one [n, V] allocation less: same values, fewer page faults)."""
    in_place = z_is_scratch and h is None
    p = (z.sub_(lse.unsqueeze(-1)) if in_place else z - lse.unsqueeze(-1)).exp_()
    g = torch.zeros_like(lse) if g is None else g.to(z.dtype)
    if h is None:
        grad = p.mul_((-g / temperature).unsqueeze(-1))
    else:
        # −p·(g + h·(z − lse + H)) = p·(−h·z − g − h·(H − lse)); 1/τ folded into the per-row coefficients
        h = h.to(z.dtype)
        row_offset = (-(g + h * (entropy - lse)) / temperature).unsqueeze(-1)
        grad = torch.addcmul(row_offset, z, (-h / temperature).unsqueeze(-1)).mul_(p)
        del p
    grad.scatter_add_(-1, labels.unsqueeze(-1), (g / temperature).unsqueeze(-1))
    return grad


class _ChunkedFromLogits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, temperature: float, chunk_size: int, with_entropy: bool):
        B, T, _ = logits.shape
        dtype = _compute_dtype(logits)
        flat_labels = labels.reshape(-1).long()
        logp, lse = logits.new_empty(B * T, dtype=dtype), logits.new_empty(B * T, dtype=dtype)
        entropy = logits.new_empty(B * T if with_entropy else 0, dtype=dtype)
        for s, e in _chunks(B * T, chunk_size):
            z = _scaled_logits(_row_chunk(logits, s, e), dtype, temperature)
            logp[s:e], lse[s:e], chunk_entropy = _forward_chunk(z, flat_labels[s:e], with_entropy)
            if with_entropy:
                entropy[s:e] = chunk_entropy
        ctx.save_for_backward(logits, flat_labels, lse, entropy)
        ctx.temperature, ctx.chunk_size, ctx.with_entropy = temperature, chunk_size, with_entropy
        ctx.set_materialize_grads(False)
        if not with_entropy:
            ctx.mark_non_differentiable(entropy)
        return logp.view(B, T), entropy.view(B, T) if with_entropy else entropy

    @staticmethod
    def backward(ctx, grad_logp: Tensor | None, grad_entropy: Tensor | None):
        logits, flat_labels, lse, entropy = ctx.saved_tensors
        B, T, V = logits.shape
        dtype = lse.dtype
        g_all = None if grad_logp is None else grad_logp.reshape(-1)
        h_all = None if (grad_entropy is None or not ctx.with_entropy) else grad_entropy.reshape(-1)
        grad_logits = torch.empty((B, T, V), dtype=logits.dtype, device=logits.device)
        flat_grad = grad_logits.view(B * T, V)
        for s, e in _chunks(B * T, ctx.chunk_size):
            z = _scaled_logits(_row_chunk(logits, s, e), dtype, ctx.temperature)
            flat_grad[s:e] = _grad_logits_chunk(
                z,
                flat_labels[s:e],
                lse[s:e],
                entropy[s:e] if h_all is not None else None,
                None if g_all is None else g_all[s:e],
                None if h_all is None else h_all[s:e],
                ctx.temperature,
            )
        return grad_logits, None, None, None, None


class _ChunkedFromHidden(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, temperature: float, chunk_size: int, with_entropy: bool):
        B, T, _ = hidden.shape
        dtype = _compute_dtype(hidden, weight)
        flat_labels = labels.reshape(-1).long()
        logp, lse = hidden.new_empty(B * T, dtype=dtype), hidden.new_empty(B * T, dtype=dtype)
        entropy = hidden.new_empty(B * T if with_entropy else 0, dtype=dtype)
        for s, e in _chunks(B * T, chunk_size):
            z = _scaled_logits(
                F.linear(_row_chunk(hidden, s, e).to(weight.dtype), weight, bias), dtype, temperature
            )
            logp[s:e], lse[s:e], chunk_entropy = _forward_chunk(z, flat_labels[s:e], with_entropy, z_is_scratch=True)
            if with_entropy:
                entropy[s:e] = chunk_entropy
        ctx.save_for_backward(hidden, weight, bias, flat_labels, lse, entropy)
        ctx.temperature, ctx.chunk_size, ctx.with_entropy = temperature, chunk_size, with_entropy
        ctx.set_materialize_grads(False)
        if not with_entropy:
            ctx.mark_non_differentiable(entropy)
        return logp.view(B, T), entropy.view(B, T) if with_entropy else entropy

    @staticmethod
    def backward(ctx, grad_logp: Tensor | None, grad_entropy: Tensor | None):
        hidden, weight, bias, flat_labels, lse, entropy = ctx.saved_tensors
        B, T, H = hidden.shape
        dtype = lse.dtype
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        g_all = None if grad_logp is None else grad_logp.reshape(-1)
        h_all = None if (grad_entropy is None or not ctx.with_entropy) else grad_entropy.reshape(-1)
        grad_hidden = (
            torch.empty((B, T, H), dtype=hidden.dtype, device=hidden.device) if need_hidden else None
        )
        # Accumulate the weight gradient over chunks in at least float32: bf16 sums drift over many chunks.
        acc_dtype = torch.promote_types(weight.dtype, torch.float32)
        grad_weight = (
            torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device) if need_weight else None
        )
        grad_bias = torch.zeros(weight.shape[0], dtype=acc_dtype, device=weight.device) if need_bias else None
        for s, e in _chunks(B * T, ctx.chunk_size):
            rows = _row_chunk(hidden, s, e).to(weight.dtype)
            z = _scaled_logits(F.linear(rows, weight, bias), dtype, ctx.temperature)
            grad_z = _grad_logits_chunk(
                z,
                flat_labels[s:e],
                lse[s:e],
                entropy[s:e] if h_all is not None else None,
                None if g_all is None else g_all[s:e],
                None if h_all is None else h_all[s:e],
                ctx.temperature,
                z_is_scratch=True,
            )
            del z
            grad_logits = grad_z.to(weight.dtype)
            if need_hidden:
                grad_hidden.view(B * T, H)[s:e] = grad_logits @ weight
            if need_weight and grad_weight.dtype == rows.dtype:
                grad_weight.addmm_(grad_logits.T, rows)  # in place: no [V, H] temporary per chunk
            elif need_weight:
                grad_weight += (grad_logits.T @ rows).to(acc_dtype)
            if need_bias:
                grad_bias += grad_z.sum(dim=0)
        grad_weight = None if grad_weight is None else grad_weight.to(weight.dtype)
        grad_bias = None if grad_bias is None else grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None


def _check_chunk_args(labels: Tensor, leading: torch.Size, temperature: float, chunk_size: int) -> None:
    if labels.shape != leading:
        raise ValueError(f"labels must be [B, T] = {tuple(leading)}, got {tuple(labels.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be ≥ 1, got {chunk_size}")


def logprobs_and_entropy_from_logits(
    logits: Tensor,
    labels: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 512,
    with_entropy: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """``(logp[B, T], entropy[B, T] or None)`` from ``logits[B, T, V]`` (any float dtype, may be a slice).

    ``logp`` is log softmax(logits/τ) at ``labels``; ``entropy`` that distribution's entropy. Both carry
    gradients to ``logits``; forward and backward touch ``chunk_size`` positions at a time, so no
    [B, T, V] float32 tensor is created besides the gradient of ``logits`` itself (in ``logits``' dtype).
    Labels must be valid token ids; positions outside the loss should be masked by the caller.
    """
    _check_chunk_args(labels, logits.shape[:2], temperature, chunk_size)
    logp, entropy = _ChunkedFromLogits.apply(logits, labels, float(temperature), chunk_size, with_entropy)
    return logp, entropy if with_entropy else None


def logprobs_and_entropy_from_hidden(
    hidden: Tensor,
    lm_head_weight: Tensor,
    labels: Tensor,
    *,
    lm_head_bias: Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int = 512,
    with_entropy: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Like :func:`logprobs_and_entropy_from_logits` with ``logits = hidden @ W.T + b`` never materialised.

    ``hidden[B, T, H]``, ``lm_head_weight[V, H]``, ``lm_head_bias[V]``. The matmul runs in the inputs' dtype
    (as the model's own lm_head would), the softmax in float32. Gradients reach ``hidden``, the weight and
    the bias; the weight gradient is accumulated across chunks in float32.
    """
    _check_chunk_args(labels, hidden.shape[:2], temperature, chunk_size)
    logp, entropy = _ChunkedFromHidden.apply(
        hidden, lm_head_weight, lm_head_bias, labels, float(temperature), chunk_size, with_entropy
    )
    return logp, entropy if with_entropy else None


def naive_logprobs_and_entropy(
    logits: Tensor, labels: Tensor, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Reference implementation: a full [B, T, V] log-softmax (tests and benchmarks only)."""
    log_probs = torch.log_softmax(logits.to(_compute_dtype(logits)) / temperature, dim=-1)
    logp = log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
    return logp, entropy


def linear_quantile(values: Tensor, q: float) -> Tensor:
    """torch.quantile(values, q) with linear interpolation, via two kthvalue calls (torch.quantile refuses
    inputs above 2^24 elements, which a large batch of tokens can reach)."""
    position = q * (values.numel() - 1)
    lower, upper = math.floor(position), math.ceil(position)
    low = torch.kthvalue(values, lower + 1).values
    high = torch.kthvalue(values, upper + 1).values if upper != lower else low
    return low + (high - low) * (position - lower)


def top_entropy_mask(
    entropy: Tensor, mask: Tensor, quantile: float = 0.8, *, threshold: float | Tensor | None = None
) -> Tensor:
    """Keep only the high-entropy "forking" tokens: ``mask & (H ≥ τ)``, bool ``[B, T]``.

    ``τ`` is the ``quantile``-quantile (linear interpolation) of H over the valid tokens of this batch, or
    ``threshold`` when given (the trainer passes the one of the whole mini-batch, all micro-batches and
    processes: :mod:`grpokit.algorithms.batch_statistics`). q = 0.8 keeps the top 20%; TRL's
    ``top_entropy_quantile=ρ`` corresponds to ``quantile = 1 − ρ``. Case H = [0.1, 0.5, 0.9, 1.2, 0.3, 0.7,
    0.8, 1.0, 0.2, 0.6], q = 0.8 → τ = 0.92, keeps 1.0 and 1.2.
    """
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    valid = mask.bool()
    if threshold is None:
        values = entropy.detach()[valid].float()
        if values.numel() == 0:
            return torch.zeros_like(valid)
        threshold = linear_quantile(values, quantile)
    return valid & (entropy.detach() >= threshold)
