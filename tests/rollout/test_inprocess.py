from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from grpokit.models import build_char_tokenizer, build_tiny_causal_lm, sequence_logprobs
from grpokit.rollout import InProcessEngine, RolloutEngine, SamplingParams
from grpokit.rollout.inprocess import top_k_filter, top_p_filter

SMALL = {"hidden_size": 32, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 64}
PROMPTS = ["1+2=", "12+34=", "7="]
EOS = 2


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer("0123456789+=")


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_tiny_causal_lm(len(tokenizer), seed=1, **SMALL)


@pytest.fixture
def engine(model, tokenizer):
    return InProcessEngine(model, tokenizer)


def _kept(filtered):
    return torch.isfinite(filtered).tolist()


def test_top_k_keeps_the_k_largest_logits_and_ties_with_the_kth():
    logits = torch.tensor([[1.0, 3.0, 2.0, 3.0, 0.0]])
    assert _kept(top_k_filter(logits, 2)) == [[False, True, False, True, False]]
    assert _kept(top_k_filter(logits, 3)) == [[False, True, True, True, False]]
    assert _kept(top_k_filter(torch.tensor([[1.0, 3.0, 3.0, 3.0]]), 2)) == [[False, True, True, True]]
    assert torch.equal(top_k_filter(logits, 0), logits)


def test_top_p_keeps_the_most_likely_tokens_until_their_mass_reaches_top_p():
    # probabilities 0.15, 0.5, 0.05, 0.3 (unsorted on purpose)
    logits = torch.tensor([[0.15, 0.5, 0.05, 0.3]]).log()
    assert _kept(top_p_filter(logits, 0.4)) == [[False, True, False, False]]  # 0.5 ≥ 0.4
    assert _kept(top_p_filter(logits, 0.75)) == [[False, True, False, True]]  # 0.5 + 0.3 ≥ 0.75
    assert _kept(top_p_filter(logits, 0.85)) == [[True, True, False, True]]  # 0.95 ≥ 0.85
    assert _kept(top_p_filter(logits, 0.01)) == [[False, True, False, False]]  # the top token always stays
    assert torch.equal(top_p_filter(logits, 1.0), logits)


def _hf_filtered(logits, temperature, top_k, top_p):
    """HF's warpers in generate's order: temperature, top-k, top-p."""
    scores = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return scores


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(1.0, 5, 1.0), (0.7, 0, 0.8), (1.3, 10, 0.6)])
def test_filters_keep_the_same_tokens_as_hf_logits_warpers(temperature, top_k, top_p):
    logits = torch.randn(16, 40, generator=torch.Generator().manual_seed(0)) * 2
    ours = top_p_filter(top_k_filter(logits / temperature, top_k), top_p)
    assert _kept(ours) == _kept(_hf_filtered(logits, temperature, top_k, top_p))


def test_first_token_frequencies_match_the_filtered_distribution(engine, model, tokenizer):
    sampling = SamplingParams(max_new_tokens=1, temperature=0.8, top_k=10, top_p=0.9, seed=0)
    num_samples = 4000
    batch = engine.generate(["12+3="], num_samples, sampling)
    prompt = torch.tensor([tokenizer("12+3=")["input_ids"]])
    with torch.no_grad():
        logits = model(prompt).logits[:, -1, :]
    expected = _hf_filtered(logits, 0.8, 10, 0.9).softmax(-1)[0]
    assert 1 < int((expected > 0).sum()) < 10  # the filters really cut something
    counts = torch.bincount(batch.completion_ids[:, 0], minlength=len(tokenizer)).float()
    assert counts[expected == 0].sum() == 0
    # 4 standard deviations of a frequency estimated from 4000 draws is at most 0.032
    assert (counts / num_samples - expected).abs().max() < 0.032
    # the recorded log-prob is the temperature-only one, not the truncated distribution's
    temperature_only = torch.log_softmax(logits[0] / 0.8, dim=-1)
    torch.testing.assert_close(batch.behaviour_logprobs[:, 0], temperature_only[batch.completion_ids[:, 0]])


def test_batch_is_prompt_major_and_masks_agree_with_ids_and_text(engine, tokenizer):
    n = 3
    batch = engine.generate(PROMPTS, n, SamplingParams(max_new_tokens=12, seed=0))
    rows, width = 9, 6  # "12+34=" is the longest prompt
    assert batch.prompt_ids.shape == batch.prompt_mask.shape == (rows, width)
    assert batch.group_ids.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert batch.prompts == [p for p in PROMPTS for _ in range(n)]
    assert batch.prompt_mask[0].tolist() == [0, 0, 1, 1, 1, 1]
    assert batch.prompt_ids[0].tolist() == [0, 0, *tokenizer("1+2=")["input_ids"]]
    assert batch.completion_ids.shape[1] == int(batch.completion_lengths.max()) <= 12
    for row in range(rows):
        length = int(batch.completion_lengths[row])
        assert batch.completion_mask[row].tolist() == [1] * length + [0] * (
            batch.completion_ids.shape[1] - length
        )
        assert (batch.completion_ids[row, length:] == tokenizer.pad_token_id).all()
        assert (batch.behaviour_logprobs[row, length:] == 0).all()
        assert (batch.behaviour_logprobs[row, :length] < 0).all()
        ids = batch.completion_ids[row, :length].tolist()
        assert batch.completions[row] == tokenizer.decode(ids, skip_special_tokens=True)


def test_rows_stop_at_their_first_eos_which_stays_in_the_completion(engine):
    max_new_tokens = 24
    batch = engine.generate(PROMPTS, 8, SamplingParams(max_new_tokens=max_new_tokens, seed=3))
    assert set(batch.finish_reasons) == {"stop", "length"}  # this seed gives both kinds
    for row, reason in enumerate(batch.finish_reasons):
        length = int(batch.completion_lengths[row])
        tokens = batch.completion_ids[row, :length].tolist()
        if reason == "stop":
            assert tokens[-1] == EOS and EOS not in tokens[:-1]
        else:
            assert length == max_new_tokens and EOS not in tokens
    assert batch.truncated.tolist() == [r == "length" for r in batch.finish_reasons]


def test_extra_stop_token_ids_end_rows_too(engine, tokenizer):
    equals = tokenizer.convert_tokens_to_ids("=")
    batch = engine.generate(PROMPTS, 8, SamplingParams(max_new_tokens=40, stop_token_ids=(equals,), seed=0))
    last_tokens = [
        int(batch.completion_ids[row, int(batch.completion_lengths[row]) - 1])
        for row, reason in enumerate(batch.finish_reasons)
        if reason == "stop"
    ]
    assert equals in last_tokens
    assert set(last_tokens) <= {equals, EOS}


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize(
    "sampling",
    [
        SamplingParams(max_new_tokens=20, temperature=1.0, seed=0),
        SamplingParams(max_new_tokens=20, temperature=0.7, top_k=6, top_p=0.9, seed=1),
        SamplingParams(max_new_tokens=20, temperature=0.0),
    ],
    ids=["t1", "t0.7-topk-topp", "greedy"],
)
def test_behaviour_logprobs_equal_the_training_logprobs_of_the_same_tokens(arch, sampling, tokenizer):
    model = build_tiny_causal_lm(len(tokenizer), arch=arch, seed=2, **SMALL)
    batch = InProcessEngine(model, tokenizer).generate(PROMPTS, 4, sampling)
    input_ids, attention_mask = batch.model_inputs()
    with torch.no_grad():
        train_logp, _ = sequence_logprobs(
            model,
            input_ids,
            attention_mask,
            batch.completion_ids.shape[1],
            temperature=sampling.temperature or 1.0,
        )
    gap = ((train_logp - batch.behaviour_logprobs) * batch.completion_mask).abs().max()
    assert gap < 1e-4


def test_behaviour_logprobs_of_a_lora_policy_equal_its_training_logprobs(tokenizer):
    base = build_tiny_causal_lm(len(tokenizer), seed=2, **SMALL)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    batch = InProcessEngine(model, tokenizer).generate(PROMPTS, 2, SamplingParams(max_new_tokens=10, seed=0))
    with torch.no_grad():
        train_logp, _ = sequence_logprobs(model, *batch.model_inputs(), batch.completion_ids.shape[1])
    assert ((train_logp - batch.behaviour_logprobs) * batch.completion_mask).abs().max() < 1e-4


def test_greedy_decoding_equals_hf_generate_token_for_token(tokenizer):
    model = build_tiny_causal_lm(len(tokenizer), seed=5, initializer_range=0.1, **SMALL)
    batch = InProcessEngine(model, tokenizer).generate(
        PROMPTS, 1, SamplingParams(max_new_tokens=16, temperature=0)
    )
    with torch.no_grad():
        hf = model.generate(
            input_ids=batch.prompt_ids,
            attention_mask=batch.prompt_mask,
            do_sample=False,
            max_new_tokens=16,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=EOS,
        )
    hf_completions = hf[:, batch.prompt_ids.shape[1] :]
    assert torch.equal(hf_completions, batch.completion_ids)


def test_the_same_seed_gives_the_same_batch_and_another_seed_does_not(engine):
    first, again, other = (
        engine.generate(PROMPTS, 4, SamplingParams(max_new_tokens=10, seed=s)) for s in (7, 7, 8)
    )
    assert torch.equal(first.completion_ids, again.completion_ids)
    assert torch.equal(first.behaviour_logprobs, again.behaviour_logprobs)
    assert first.completions == again.completions
    assert not torch.equal(first.completion_ids[:, :3], other.completion_ids[:, :3])


def test_without_a_seed_sampling_follows_torchs_global_seed(engine):
    sampling = SamplingParams(max_new_tokens=10)
    torch.manual_seed(11)
    first = engine.generate(PROMPTS, 4, sampling)
    torch.manual_seed(11)
    assert torch.equal(engine.generate(PROMPTS, 4, sampling).completion_ids, first.completion_ids)


def test_the_n_completions_of_a_prompt_differ_when_sampling(engine):
    batch = engine.generate(["1+2="], 8, SamplingParams(max_new_tokens=8, seed=0))
    assert len(set(batch.completions)) > 1


def test_training_mode_is_restored_and_outputs_carry_no_gradient(model, tokenizer):
    model.train()
    try:
        batch = InProcessEngine(model, tokenizer).generate(
            PROMPTS, 2, SamplingParams(max_new_tokens=4, seed=0)
        )
        assert model.training
    finally:
        model.eval()
    assert not batch.behaviour_logprobs.requires_grad


def test_zero_new_tokens_gives_empty_completions(engine):
    batch = engine.generate(PROMPTS, 2, SamplingParams(max_new_tokens=0))
    assert batch.completion_ids.shape == (6, 0)
    assert batch.completions == [""] * 6
    assert batch.finish_reasons == ["length"] * 6


def test_engine_satisfies_the_protocol_and_sync_weights_adopts_the_model(engine, tokenizer):
    assert isinstance(engine, RolloutEngine)
    other = build_tiny_causal_lm(len(tokenizer), seed=9, **SMALL)
    engine.sync_weights(other)
    assert engine.model is other


def test_bad_requests_are_rejected(engine):
    with pytest.raises(ValueError, match="empty prompt"):
        engine.generate(["1", ""], 1, SamplingParams(max_new_tokens=2))
    with pytest.raises(ValueError, match="n must be"):
        engine.generate(["1"], 0, SamplingParams(max_new_tokens=2))


def test_behaviour_logprob_of_a_greedy_token_is_its_untempered_log_softmax(engine, model, tokenizer):
    batch = engine.generate(["12+3="], 1, SamplingParams(max_new_tokens=1, temperature=0))
    with torch.no_grad():
        logits = model(torch.tensor([tokenizer("12+3=")["input_ids"]])).logits[0, -1]
    assert int(batch.completion_ids[0, 0]) == int(logits.argmax())
    assert math.isclose(
        float(batch.behaviour_logprobs[0, 0]), float(logits.log_softmax(-1).max()), abs_tol=1e-6
    )


def test_finished_rows_leave_the_forward_batch(model, tokenizer):
    decode_batch_sizes = []

    def record(module, args, kwargs):
        if kwargs.get("past_key_values") is not None or kwargs.get("cache") is not None:
            decode_batch_sizes.append(kwargs["input_ids"].shape[0])

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        batch = InProcessEngine(model, tokenizer).generate(
            PROMPTS, 8, SamplingParams(max_new_tokens=24, seed=3)
        )
    finally:
        handle.remove()
    # The token sampled at step t is fed back at step t only if its row has not stopped: length > t + 1.
    lengths = batch.completion_lengths
    expected = [int((lengths > t + 1).sum()) for t in range(batch.completion_ids.shape[1] - 1)]
    assert decode_batch_sizes == [size for size in expected if size > 0]
    assert decode_batch_sizes[-1] < 24  # this seed stops some rows early (see the EOS test)


def test_with_prompt_seeds_a_prompt_samples_the_same_completions_alone_or_in_a_bigger_batch(engine):
    params = SamplingParams(max_new_tokens=6, temperature=1.0, seed=0)
    alone = engine.generate(["12+34="], 4, params, prompt_seeds=[99])
    # Another prompt before it (different padding, rows, batch seed) and a different call seed.
    batched = engine.generate(
        ["7=", "12+34=", "1+2="], 4, SamplingParams(max_new_tokens=6, seed=5), prompt_seeds=[1, 99, 2]
    )
    assert batched.completions[4:8] == alone.completions
    assert torch.equal(batched.completion_mask[4:8, : alone.completion_mask.shape[1]], alone.completion_mask)
    torch.testing.assert_close(
        batched.behaviour_logprobs[4:8, : alone.behaviour_logprobs.shape[1]],
        alone.behaviour_logprobs,
        rtol=0,
        atol=1e-5,
    )
    # ...and a different seed for that prompt draws different completions (the test can fail).
    other = engine.generate(["12+34="], 4, params, prompt_seeds=[100])
    assert other.completions != alone.completions


def test_prompt_seeds_must_match_the_prompts(engine):
    with pytest.raises(ValueError, match="prompt seeds"):
        engine.generate(PROMPTS, 2, SamplingParams(max_new_tokens=2), prompt_seeds=[1])
