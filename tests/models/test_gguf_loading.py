"""Load a policy from a GGUF file written here (transformers reads GGUF but cannot write it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from grpokit.models import LoraSettings, build_char_tokenizer, build_tiny_causal_lm, load_policy, save_policy

gguf = pytest.importorskip("gguf")

SMALL = {"hidden_size": 32, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 64}


def _llama_cpp_permute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp stores Llama's q/k rows with the rotary halves interleaved per head."""
    rows = weight.shape[0]
    return (
        weight.reshape(num_heads, 2, rows // num_heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _write_llama_gguf(model, path, *, quantize_linear: bool) -> dict[str, np.ndarray]:
    """Write `model` (untied Llama) as a GGUF file; linear weights as Q8_0 if asked.

    Returns the weights as a reader of the file sees them (Q8_0 round-trip applied), by HF name.
    """
    config = model.config
    state = {name: t.detach().numpy().astype(np.float32) for name, t in model.state_dict().items()}
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(config.vocab_size)

    seen = dict(state)

    def add(gguf_name, hf_name, *, permute_heads=None, linear=False):
        data = state[hf_name]
        if permute_heads is not None:
            data = _llama_cpp_permute(data, permute_heads)
        if linear and quantize_linear:
            # Q8_0 blocks run along rows, so quantizing commutes with the row permutation above.
            q8_0 = gguf.GGMLQuantizationType.Q8_0
            seen[hf_name] = gguf.quants.dequantize(gguf.quants.quantize(state[hf_name], q8_0), q8_0)
            writer.add_tensor(gguf_name, gguf.quants.quantize(data, q8_0), raw_dtype=q8_0)
        else:
            writer.add_tensor(gguf_name, data)

    add("token_embd.weight", "model.embed_tokens.weight")
    for i in range(config.num_hidden_layers):
        hf = f"model.layers.{i}."
        add(
            f"blk.{i}.attn_q.weight",
            hf + "self_attn.q_proj.weight",
            permute_heads=config.num_attention_heads,
            linear=True,
        )
        add(
            f"blk.{i}.attn_k.weight",
            hf + "self_attn.k_proj.weight",
            permute_heads=config.num_key_value_heads,
            linear=True,
        )
        add(f"blk.{i}.attn_v.weight", hf + "self_attn.v_proj.weight", linear=True)
        add(f"blk.{i}.attn_output.weight", hf + "self_attn.o_proj.weight", linear=True)
        add(f"blk.{i}.ffn_gate.weight", hf + "mlp.gate_proj.weight", linear=True)
        add(f"blk.{i}.ffn_up.weight", hf + "mlp.up_proj.weight", linear=True)
        add(f"blk.{i}.ffn_down.weight", hf + "mlp.down_proj.weight", linear=True)
        add(f"blk.{i}.attn_norm.weight", hf + "input_layernorm.weight")
        add(f"blk.{i}.ffn_norm.weight", hf + "post_attention_layernorm.weight")
    add("output_norm.weight", "model.norm.weight")
    add("output.weight", "lm_head.weight")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return seen


@pytest.fixture(scope="module", params=[False, True], ids=["f32", "q8_0"])
def gguf_dir(request, tmp_path_factory):
    """A directory with tiny.gguf and a char tokenizer, plus the float model the file should load as."""
    directory = tmp_path_factory.mktemp("gguf")
    tokenizer = build_char_tokenizer("0123456789+=")
    model = build_tiny_causal_lm(len(tokenizer), arch="llama", tie_word_embeddings=False, seed=3, **SMALL)
    seen = _write_llama_gguf(model, directory / "tiny.gguf", quantize_linear=request.param)
    model.load_state_dict({name: torch.from_numpy(np.ascontiguousarray(w)) for name, w in seen.items()})
    tokenizer.save_pretrained(directory)
    return directory, model


INPUT_IDS = torch.tensor([[4, 5, 14, 6, 15, 7, 8]])


def test_gguf_policy_loads_as_a_dense_trainable_model_with_the_files_weights(gguf_dir):
    directory, expected = gguf_dir
    policy = load_policy(directory, gguf_file="tiny.gguf", tokenizer=directory)
    parameters = list(policy.model.parameters())
    assert all(p.dtype == torch.float32 and p.requires_grad for p in parameters)
    with torch.no_grad():
        torch.testing.assert_close(
            policy.model(INPUT_IDS).logits, expected(INPUT_IDS).logits, atol=1e-5, rtol=1e-5
        )


def test_gguf_policy_saves_as_a_regular_checkpoint(gguf_dir, tmp_path):
    directory, expected = gguf_dir
    policy = load_policy(directory, gguf_file="tiny.gguf", tokenizer=directory)
    save_policy(policy, tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(INPUT_IDS).logits, expected(INPUT_IDS).logits, atol=1e-5, rtol=1e-5
        )


def test_gguf_policy_takes_a_lora_adapter_and_saves_it_merged(gguf_dir, tmp_path):
    directory, _ = gguf_dir
    policy = load_policy(directory, gguf_file="tiny.gguf", tokenizer=directory, lora=LoraSettings(r=4))
    with torch.no_grad():
        for name, param in policy.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
        adapted = policy.model(INPUT_IDS).logits
    save_policy(policy, tmp_path / "merged", merged=True)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(merged(INPUT_IDS).logits, adapted, atol=1e-5, rtol=1e-5)
