from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from grpokit.models import build_tiny_causal_lm, position_ids_from_attention_mask, sequence_logprobs

SMALL = {"hidden_size": 32, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 64}
VOCAB = 24
PAD = 0


def _batch():
    """Two rows: prompt lengths 2 and 4 (left-padded to 4), completion lengths 3 and 2 (right-padded)."""
    input_ids = torch.tensor([[PAD, PAD, 5, 6, 7, 8, 2], [9, 10, 11, 12, 13, 2, PAD]])
    attention_mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0]])
    return input_ids, attention_mask, 3


def _naive(model, input_ids, attention_mask, num_tokens, temperature=1.0):
    """Full [B, L, V] forward and log-softmax: the definition sequence_logprobs must agree with."""
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_attention_mask(attention_mask),
    ).logits
    log_probs = torch.log_softmax(logits[:, -num_tokens - 1 : -1].float() / temperature, dim=-1)
    logp = log_probs.gather(-1, input_ids[:, -num_tokens:, None]).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return logp, entropy


def test_position_ids_count_only_real_tokens():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    assert position_ids_from_attention_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 3]]


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_and_entropy_equal_a_full_log_softmax(arch, temperature):
    model = build_tiny_causal_lm(VOCAB, arch=arch, **SMALL)
    input_ids, attention_mask, num_tokens = _batch()
    logp, entropy = sequence_logprobs(
        model, input_ids, attention_mask, num_tokens, temperature=temperature, with_entropy=True, chunk_size=2
    )
    expected_logp, expected_entropy = _naive(model, input_ids, attention_mask, num_tokens, temperature)
    assert logp.shape == entropy.shape == (2, 3)
    assert logp.dtype == torch.float32
    torch.testing.assert_close(logp, expected_logp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy, expected_entropy, atol=1e-5, rtol=1e-5)


def test_entropy_is_none_unless_asked_for():
    model = build_tiny_causal_lm(VOCAB, **SMALL)
    _, entropy = sequence_logprobs(model, *_batch())
    assert entropy is None


def test_left_padding_does_not_change_a_rows_logprobs():
    model = build_tiny_causal_lm(VOCAB, **SMALL)
    alone = torch.tensor([[5, 6, 7, 8, 2]])
    padded = torch.tensor([[PAD, PAD, PAD, 5, 6, 7, 8, 2], [9, 10, 11, 12, 13, 14, 15, 2]])
    padded_mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [1] * 8])
    logp_alone, _ = sequence_logprobs(model, alone, torch.ones_like(alone), 3)
    logp_padded, _ = sequence_logprobs(model, padded, padded_mask, 3)
    torch.testing.assert_close(logp_padded[0], logp_alone[0], atol=1e-5, rtol=1e-5)


def test_gradients_equal_those_of_the_full_log_softmax():
    model = build_tiny_causal_lm(VOCAB, **SMALL)
    input_ids, attention_mask, num_tokens = _batch()
    completion_mask = attention_mask[:, -num_tokens:].float()
    weights = [model.model.layers[0].self_attn.q_proj.weight, model.lm_head.weight]

    logp, entropy = sequence_logprobs(model, input_ids, attention_mask, num_tokens, with_entropy=True)
    grads = torch.autograd.grad(((logp + 0.1 * entropy) * completion_mask).sum(), weights)
    naive_logp, naive_entropy = _naive(model, input_ids, attention_mask, num_tokens)
    naive_grads = torch.autograd.grad(((naive_logp + 0.1 * naive_entropy) * completion_mask).sum(), weights)
    for grad, naive_grad in zip(grads, naive_grads):
        torch.testing.assert_close(grad, naive_grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("target_modules", [["q_proj", "v_proj"], ["q_proj", "lm_head"]])
def test_lora_models_including_an_adapter_on_the_head_match_their_full_forward(target_modules):
    base = build_tiny_causal_lm(VOCAB, tie_word_embeddings=False, **SMALL)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=target_modules))
    with torch.no_grad():  # B starts at zero; make the adapter change the outputs
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    input_ids, attention_mask, num_tokens = _batch()
    logp, _ = sequence_logprobs(model, input_ids, attention_mask, num_tokens)
    expected, _ = _naive(model, input_ids, attention_mask, num_tokens)
    torch.testing.assert_close(logp, expected, atol=1e-5, rtol=1e-5)
    with model.disable_adapter():
        base_logp, _ = sequence_logprobs(model, input_ids, attention_mask, num_tokens)
    assert (logp - base_logp).abs().max() > 1e-3


def test_num_completion_tokens_must_leave_a_prefix():
    model = build_tiny_causal_lm(VOCAB, **SMALL)
    input_ids, attention_mask, _ = _batch()
    with pytest.raises(ValueError, match="num_completion_tokens"):
        sequence_logprobs(model, input_ids, attention_mask, input_ids.shape[1])
