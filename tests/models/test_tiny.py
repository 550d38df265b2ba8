from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM, Qwen2ForCausalLM

from grpokit.models import build_tiny_causal_lm

SMALL = {"hidden_size": 32, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 64}


def _weights(model):
    return {name: p.detach().clone() for name, p in model.state_dict().items()}


def test_same_seed_gives_identical_weights_and_a_different_seed_does_not():
    first, again, other = (build_tiny_causal_lm(20, seed=s, **SMALL) for s in (3, 3, 4))
    a, b, c = _weights(first), _weights(again), _weights(other)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])


def test_building_leaves_the_global_torch_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_causal_lm(20, **SMALL)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(("arch", "model_class"), [("qwen2", Qwen2ForCausalLM), ("llama", LlamaForCausalLM)])
def test_arch_picks_the_model_class_and_the_config_follows_the_arguments(arch, model_class):
    model = build_tiny_causal_lm(37, arch=arch, num_layers=3, max_position_embeddings=64, **SMALL)
    config = model.config
    assert type(model) is model_class
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (37, 32, 3)
    assert (config.num_attention_heads, config.num_key_value_heads, config.intermediate_size) == (4, 2, 64)
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (0, 1, 2)
    assert model.generation_config.eos_token_id == 2
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied
    assert model(torch.tensor([[4, 5, 6]])).logits.shape == (1, 3, 37)


def test_untied_embeddings_give_a_separate_head():
    model = build_tiny_causal_lm(20, tie_word_embeddings=False, **SMALL)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()


def test_unknown_arch_and_indivisible_heads_are_rejected():
    with pytest.raises(ValueError, match="arch"):
        build_tiny_causal_lm(20, arch="gpt2")
    with pytest.raises(ValueError, match="num_heads"):
        build_tiny_causal_lm(20, hidden_size=30, num_heads=4)
