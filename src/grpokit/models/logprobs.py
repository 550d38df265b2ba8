"""Per-token log-probs (and entropies) of a completion under a causal LM, without [B, T, V] tensors.

The model body gives hidden states; `grpokit.algorithms.entropy` turns the hidden states that
predict the completion into log-probs chunk by chunk, through the lm_head, with a chunked
backward. Where the lm_head is not a plain linear map (a LoRA adapter on it, a wrapped head,
soft-capped or scaled logits), the model's own forward produces the logits of the last T + 1
positions only and the chunked log-softmax runs on those.
"""

from __future__ import annotations

from torch import Tensor, nn

# Config fields that change logits after the lm_head matmul; the hidden-state path would miss them.
_LOGIT_POSTPROCESSING_FIELDS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def position_ids_from_attention_mask(attention_mask: Tensor) -> Tensor:
    """Positions that ignore left padding: pos_i = (Σ_{j ≤ i} mask_j) − 1, per row.

    Padding positions get 0 (they are masked out anyway). This is what HF `generate` uses for
    left-padded batches, and what `InProcessEngine` uses while sampling, so a token's position
    is the same when it is sampled and when it is trained on.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (LoRA layers stay injected), else `model`."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def _body_and_head(model: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    """(decoder body, lm_head) when logits = body(x) @ W^T (+ b) exactly; None otherwise."""
    causal_lm = _unwrap_peft(model)
    config = getattr(causal_lm, "config", None)
    if any(getattr(config, field, None) not in (None, 1.0) for field in _LOGIT_POSTPROCESSING_FIELDS):
        return None
    head = causal_lm.get_output_embeddings() if hasattr(causal_lm, "get_output_embeddings") else None
    # A LoRA layer or a modules_to_save wrapper on the head is not an nn.Linear: use the full forward.
    if type(head) is not nn.Linear:
        return None
    body = causal_lm.get_decoder() if hasattr(causal_lm, "get_decoder") else None
    if body is None or body is causal_lm:
        return None
    return body, head


def sequence_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    num_completion_tokens: int,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_size: int = 512,
) -> tuple[Tensor, Tensor | None]:
    """log π(y_t | x, y_<t) for the last T = `num_completion_tokens` tokens of each row.

    input_ids / attention_mask: [B, L] = left-padded prompt ++ right-padded completion.
    Returns (logp [B, T] float32, entropy [B, T] float32 or None), both computed from
    logits / temperature; values at padded completion positions are meaningless and must be
    masked by the caller. Gradients flow to the model's parameters.
    """
    from grpokit.algorithms.entropy import logprobs_and_entropy_from_hidden, logprobs_and_entropy_from_logits

    num_tokens = int(num_completion_tokens)
    if not 0 < num_tokens < input_ids.shape[1]:
        raise ValueError(
            f"num_completion_tokens must be in [1, L-1] = [1, {input_ids.shape[1] - 1}], got {num_tokens}"
        )
    labels = input_ids[:, -num_tokens:]
    position_ids = position_ids_from_attention_mask(attention_mask)
    body_and_head = _body_and_head(model)

    if body_and_head is not None:
        body, head = body_and_head
        outputs = body(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        )
        # Position i's hidden state predicts token i + 1.
        hidden = outputs.last_hidden_state[:, -num_tokens - 1 : -1, :]
        return logprobs_and_entropy_from_hidden(
            hidden,
            head.weight,
            labels,
            lm_head_bias=head.bias,
            temperature=temperature,
            chunk_size=chunk_size,
            with_entropy=with_entropy,
        )

    outputs = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
        logits_to_keep=num_tokens + 1,
    )
    logits = outputs.logits[:, :-1, :]
    return logprobs_and_entropy_from_logits(
        logits, labels, temperature=temperature, chunk_size=chunk_size, with_entropy=with_entropy
    )


class LogprobModule(nn.Module):
    """The policy's training forward (per-token log-probs and entropies) as one module, for DDP.

    DDP syncs gradients of what runs inside its `forward`; `sequence_logprobs` calls the decoder
    body and the lm_head separately (chunked, never [B, T, V]), so it is wrapped whole.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        num_completion: int,
        *,
        temperature: float,
        with_entropy: bool,
        chunk_size: int,
    ) -> tuple[Tensor, Tensor | None]:
        logp, entropy = sequence_logprobs(
            self.model,
            input_ids,
            attention_mask,
            num_completion,
            temperature=temperature,
            with_entropy=with_entropy,
            chunk_size=chunk_size,
        )
        # Fresh tensors, not views: FSDP2 hooks the module's outputs, and an in-place op on a returned
        # view would silently skip them (torch warns about it); [B, T] copies cost nothing here.
        return logp.clone(), None if entropy is None else entropy.clone()
