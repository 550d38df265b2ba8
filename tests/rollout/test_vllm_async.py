"""training.async with a real vLLM server: the producer (a thread) pushes version s − k to the server
before sampling step s; the trainer pushes nothing after its updates; an evaluation gets the trainer's
own weights on the server."""

from __future__ import annotations

import torch

from grpokit.monitoring import read_metrics


def test_an_asynchronous_trainer_on_the_server_samples_step_s_with_the_weights_after_update_s_minus_k(
        tmp_path, vllm_server_url, vllm_model_dir, make_vllm_trainer, trainer_logprobs):
    reward = tmp_path / "digit_reward.py"  # dense (exact match would be 0 everywhere: no update, no new version)
    reward.write_text("def digit_share(completions, **_):\n"
                      "    return [sum(c.isdigit() for c in t) / max(len(t), 1) for t in completions]\n")
    trainer = make_vllm_trainer(tmp_path, "vllm_server", vllm_model_dir, server_url=vllm_server_url, steps=3,
                                training={"async": {"max_staleness": 1}}, reward=f"{reward}:digit_share")
    rollouts = trainer.rollouts
    assert rollouts.owns_engine and rollouts._process is None  # producer: auto → a thread with vLLM
    published: dict[int, dict[str, torch.Tensor]] = {}
    publish = rollouts.publish

    def record_publish(version: int) -> None:
        published[version] = {k: v.detach().clone() for k, v in trainer.weights_policy.model.state_dict().items()}
        publish(version)

    taken = {}
    take = rollouts.take

    def record_take(step: int):
        taken[step] = take(step)
        return taken[step]

    rollouts.publish, rollouts.take = record_publish, record_take
    version = trainer.engine.weight_version
    trainer.train()
    # versions 0 (start) and 1 (after update 0) were pushed by the producer; the trainer pushed none
    assert trainer.engine.weight_version == version + 2
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "train/loss" in r]
    assert [r["async/behaviour_version"] for r in rows] == [0.0, 0.0, 1.0]
    assert rows[0]["train/mismatch_abs_logratio_mean"] < 1e-4  # version 0 = the trainer's weights at step 0

    # Step s again, synchronously, from the server holding version max(0, s − 1): the same tokens.
    again = make_vllm_trainer(tmp_path / "again", "vllm_server", vllm_model_dir, server_url=vllm_server_url, steps=3,
                              reward=f"{reward}:digit_share")
    for step in range(3):
        again.policy.model.load_state_dict(published[max(0, step - 1)])
        again.engine.sync_weights(again.policy.model)
        expected = again.sample(step).rollout
        assert torch.equal(expected.completion_ids, taken[step].rollout.completion_ids), step
        assert torch.equal(expected.behaviour_logprobs, taken[step].rollout.behaviour_logprobs), step
    # ...and version 1, not 2, sampled step 2: its behaviour log-probs are version 1's, not version 2's
    step2 = taken[2].rollout
    mask = step2.completion_mask.bool()
    temperature = trainer.config.rollout.temperature
    for version, close in ((1, True), (2, False)):
        again.policy.model.load_state_dict(published[version])
        gap = (trainer_logprobs(again.policy.model, step2, temperature) - step2.behaviour_logprobs)[mask].abs().max()
        assert (gap < 1e-4) == close, (version, float(gap))

    # An evaluation pushes the trainer's current weights (after update 2), which the producer never had.
    with rollouts.evaluation_engine():
        batch = trainer.engine.generate(["1+2=", "3+4="], 2, trainer.sampling_params(0))
    logp = trainer_logprobs(trainer.weights_policy.model, batch, temperature=trainer.config.rollout.temperature)
    assert (logp - batch.behaviour_logprobs)[batch.completion_mask.bool()].abs().max() < 1e-4
