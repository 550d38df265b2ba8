"""The vLLM engines' pure parts: request building, batch assembly, weight naming, the mismatch check."""

from __future__ import annotations

import pytest
import torch

from grpokit.models import build_char_tokenizer, build_tiny_causal_lm
from grpokit.rollout.mismatch import BehaviourMismatchError, check_behaviour_logprobs, logprob_mismatch
from grpokit.rollout.types import FINISH_LENGTH, FINISH_STOP, SamplingParams
from grpokit.rollout.vllm_engine import (
    generation_request,
    named_weights_for_vllm,
    prompt_seeds_for,
    rollout_from_rows,
)


def _model():
    tokenizer = build_char_tokenizer()
    return build_tiny_causal_lm(len(tokenizer), hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                intermediate_size=64), tokenizer


def test_rows_are_padded_like_the_in_process_engine():
    tokenizer = build_char_tokenizer()
    prompts = ["1+1=", "12+3="]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    rows = [
        {"token_ids": [6, 2], "logprobs": [-0.5, -0.25], "finish_reason": "stop"},
        {"token_ids": [6, 7, 8], "logprobs": [-1.0, -2.0, -3.0], "finish_reason": "length"},
        {"token_ids": [9], "logprobs": [-0.125], "finish_reason": "stop"},
        {"token_ids": [], "logprobs": [], "finish_reason": "length"},
    ]
    batch = rollout_from_rows(rows, prompt_ids, prompts, 2, tokenizer=tokenizer, pad_token_id=0)
    assert batch.prompt_ids.shape == (4, 5)
    assert batch.prompt_mask[0].tolist() == [0, 1, 1, 1, 1]  # "1+1=" left-padded to "12+3="'s width
    assert batch.prompt_ids[0, 0] == 0
    assert batch.completion_ids.tolist() == [[6, 2, 0], [6, 7, 8], [9, 0, 0], [0, 0, 0]]
    assert batch.completion_mask.tolist() == [[1, 1, 0], [1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert batch.behaviour_logprobs[1].tolist() == [-1.0, -2.0, -3.0]
    assert batch.behaviour_logprobs[0, 2] == 0.0
    assert batch.finish_reasons == [FINISH_STOP, FINISH_LENGTH, FINISH_STOP, FINISH_LENGTH]
    assert batch.group_ids.tolist() == [0, 0, 1, 1]
    assert batch.prompts == ["1+1=", "1+1=", "12+3=", "12+3="]
    assert batch.completions[0] == tokenizer.decode([6], skip_special_tokens=True)  # eos (2) skipped


def test_rows_with_a_wrong_count_or_ragged_logprobs_are_refused():
    tokenizer = build_char_tokenizer()
    ids = [[5, 6]]
    with pytest.raises(ValueError, match="2 completions for 1 prompts × n=1"):
        rollout_from_rows([{"token_ids": [], "logprobs": [], "finish_reason": "length"}] * 2, ids, ["x"], 1,
                          tokenizer=tokenizer, pad_token_id=0)
    with pytest.raises(ValueError, match="row 0: 2 tokens but 1 log-probs"):
        rollout_from_rows([{"token_ids": [5, 6], "logprobs": [-1.0], "finish_reason": "stop"}], ids, ["x"], 1,
                          tokenizer=tokenizer, pad_token_id=0)


def test_generation_request_carries_the_sampling_settings_and_every_stop_token():
    sampling = SamplingParams(max_new_tokens=7, temperature=0.5, top_p=0.9, top_k=3, stop_token_ids=(9,))
    request = generation_request([[1, 2]], 4, sampling, stop_token_ids={2, 9}, seeds=[11])
    assert request == {"prompt_token_ids": [[1, 2]], "n": 4, "seeds": [11], "temperature": 0.5, "top_p": 0.9,
                       "top_k": 3, "max_tokens": 7, "stop_token_ids": [2, 9]}


def test_prompt_seeds_are_the_callers_or_derived_from_the_step_seed_and_apart():
    assert prompt_seeds_for(SamplingParams(seed=None), 3, None) is None
    assert prompt_seeds_for(SamplingParams(seed=None), 2, [5, 6]) == [5, 6]
    derived = prompt_seeds_for(SamplingParams(seed=1), 3, None)
    assert len(set(derived)) == 3 and min(b - a for a, b in zip(derived, derived[1:])) > 1000
    with pytest.raises(ValueError, match="1 prompt_seeds for 2 prompts"):
        prompt_seeds_for(SamplingParams(seed=1), 2, [1])


def test_plain_model_weights_are_named_as_in_its_checkpoint():
    model, _ = _model()
    named = dict(named_weights_for_vllm(model))
    assert set(named) == set(model.state_dict())  # tied lm_head included: vLLM's reload waits for it
    for name, tensor in model.state_dict().items():
        assert torch.equal(named[name], tensor)


def test_a_wrapper_with_module_is_unwrapped():
    model, _ = _model()

    class Wrapper(torch.nn.Module):  # what DDP / FSDP wrappers look like from outside
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert set(dict(named_weights_for_vllm(Wrapper(model)))) == set(model.state_dict())


def test_lora_weights_are_merged_without_touching_the_training_module():
    from peft import LoraConfig, get_peft_model

    model, _ = _model()
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_()  # B = 0 at init would make the merge trivially W
    before = {k: v.clone() for k, v in peft_model.state_dict().items()}
    named = dict(named_weights_for_vllm(peft_model))
    after = peft_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing merged in place

    reference = {k: v.clone() for k, v in peft_model.merge_and_unload().state_dict().items()}
    assert set(named) == set(reference)
    assert not any("lora_" in name or "base_layer" in name for name in named)
    for name, tensor in reference.items():
        torch.testing.assert_close(named[name], tensor, atol=1e-6, rtol=1e-6)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(named[q], before[f"base_model.model.{q.replace('.weight', '.base_layer.weight')}"])


def test_logprob_mismatch_hand_computed_case():
    stats = logprob_mismatch(torch.tensor([[-1.0, -2.0, -9.0]]), torch.tensor([[-1.1, -2.0, 0.0]]),
                             torch.tensor([[1, 1, 0]]))
    assert stats["mean_abs"] == pytest.approx(0.05)
    assert stats["max_abs"] == pytest.approx(0.1)
    assert stats["tokens"] == 2


def test_the_check_passes_within_tolerance_and_names_the_causes_beyond_it():
    trainer = torch.tensor([[-1.0, -2.0]])
    mask = torch.ones(1, 2)
    assert check_behaviour_logprobs(trainer, trainer + 0.01, mask, tolerance=0.05, engine="x")["mean_abs"] < 0.05
    with pytest.raises(BehaviourMismatchError) as error:
        check_behaviour_logprobs(trainer, trainer + 1.0, mask, tolerance=0.05, engine="vllm_server")
    message = str(error.value)
    assert "vllm_server" in message and "1.0000" in message and "rollout.mismatch_tolerance" in message
    assert "weight sync" in message and "dtype" in message and "chat template" in message


def test_sleep_mode_without_a_gpu_is_a_config_error_naming_the_field(tmp_path):
    from grpokit.config_schema import ConfigError
    from grpokit.models.loading import Policy
    from grpokit.trainers.lm_build import build_engine
    from grpokit.trainers.lm_config import load_lm_config

    model, tokenizer = _model()
    config = load_lm_config({"model": {"name_or_path": "x"}, "data": {"path": "x"},
                             "rewards": [{"function": "exact_match"}],
                             "rollout": {"engine": "vllm_colocate", "vllm": {"enable_sleep_mode": True}}})
    with pytest.raises(ConfigError, match="rollout.vllm.enable_sleep_mode"):
        build_engine(config, Policy(model, tokenizer, is_lora=False), "cpu")


def test_vllm_engines_turn_truncated_is_on_unless_the_config_says_otherwise():
    from grpokit.trainers.lm_build import build_preset
    from grpokit.trainers.lm_config import load_lm_config

    def preset(engine, overrides=None):
        return build_preset(load_lm_config({
            "model": {"name_or_path": "x"}, "data": {"path": "x"}, "rewards": [{"function": "exact_match"}],
            "rollout": {"engine": engine}, "algorithm": {"preset": "grpo", "overrides": overrides or {}}}))

    assert preset("inprocess").behaviour_correction == "none"
    assert preset("vllm_server").behaviour_correction == "tis"
    assert preset("vllm_colocate").behaviour_cap == 2.0
    assert preset("vllm_server", {"behaviour_correction": "none"}).behaviour_correction == "none"
    assert preset("vllm_server", {"behaviour_correction": "mis"}).behaviour_correction == "mis"


def test_colocate_without_vllm_in_this_python_says_what_to_do_instead():
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("this Python has vLLM (the colocated cases cover it)")
    _, tokenizer = _model()
    from grpokit.rollout.vllm_engine import VLLMColocateEngine

    with pytest.raises(ImportError, match="grpokit vllm-env") as error:
        VLLMColocateEngine("unused", tokenizer)
    assert "vllm_server" in str(error.value)
