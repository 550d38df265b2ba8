from __future__ import annotations

import pytest
import torch

from grpokit.rollout import RolloutBatch, SamplingParams, concat


def _batch(num_prompts=2, n=2, prompt_width=3, completion_lengths=(2, 3, 1, 3), reasons=None, offset=0):
    rows = num_prompts * n
    completion_width = max(completion_lengths)
    completion_mask = torch.tensor([[1] * k + [0] * (completion_width - k) for k in completion_lengths])
    return RolloutBatch(
        prompt_ids=torch.arange(rows * prompt_width).reshape(rows, prompt_width) + 10,
        prompt_mask=torch.ones(rows, prompt_width, dtype=torch.long),
        completion_ids=(torch.arange(rows * completion_width).reshape(rows, completion_width) + 50)
        * completion_mask,
        completion_mask=completion_mask,
        behaviour_logprobs=-0.5 * completion_mask.float(),
        finish_reasons=reasons or ["stop", "length", "stop", "length"],
        group_ids=torch.arange(num_prompts).repeat_interleave(n),
        prompts=[f"p{offset + g}" for g in range(num_prompts) for _ in range(n)],
        completions=[f"c{offset + i}" for i in range(rows)],
    )


@pytest.mark.parametrize(
    "kwargs",
    [{"temperature": -0.1}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": -1}, {"max_new_tokens": -1}],
)
def test_sampling_params_reject_out_of_range_values(kwargs):
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)


def test_sampling_params_store_stop_tokens_as_a_tuple_of_ints():
    assert SamplingParams(stop_token_ids=[5, 7]).stop_token_ids == (5, 7)


def test_lengths_truncation_and_group_count_follow_masks_and_reasons():
    batch = _batch()
    assert len(batch) == 4
    assert batch.completion_lengths.tolist() == [2, 3, 1, 3]
    assert batch.truncated.tolist() == [False, True, False, True]
    assert batch.num_groups == 2


def test_model_inputs_concatenate_prompt_and_completion():
    batch = _batch()
    input_ids, attention_mask = batch.model_inputs()
    assert input_ids.shape == attention_mask.shape == (4, 6)
    assert torch.equal(input_ids[:, :3], batch.prompt_ids)
    assert attention_mask[0].tolist() == [1, 1, 1, 1, 1, 0]


def test_select_takes_rows_in_the_given_order_by_index_or_mask():
    batch = _batch()
    picked = batch.select([3, 0])
    assert picked.completions == ["c3", "c0"]
    assert picked.finish_reasons == ["length", "stop"]
    assert picked.group_ids.tolist() == [1, 0]
    assert torch.equal(picked.completion_ids, batch.completion_ids[[3, 0]])
    masked = batch.select(torch.tensor([False, True, True, False]))
    assert masked.completions == ["c1", "c2"]
    assert masked.num_groups == 2


def test_concat_pads_to_the_widest_batch_and_keeps_groups_apart():
    first = _batch(completion_lengths=(1, 1, 1, 1))
    second = _batch(
        num_prompts=1, n=2, prompt_width=5, completion_lengths=(4, 2), reasons=["stop", "stop"], offset=9
    )
    merged = concat([first, second], pad_token_id=0)
    assert merged.prompt_ids.shape == (6, 5) and merged.completion_ids.shape == (6, 4)
    # prompts are padded on the left, completions on the right
    assert merged.prompt_mask[0].tolist() == [0, 0, 1, 1, 1]
    assert merged.prompt_ids[0, :2].tolist() == [0, 0]
    assert merged.completion_mask[0].tolist() == [1, 0, 0, 0]
    assert merged.behaviour_logprobs[0].tolist() == [-0.5, 0.0, 0.0, 0.0]
    # the second batch's group 0 becomes group 2, not a member of the first batch's group 0
    assert merged.group_ids.tolist() == [0, 0, 1, 1, 2, 2]
    assert merged.num_groups == 3
    assert merged.prompts == ["p0", "p0", "p1", "p1", "p9", "p9"]
    assert RolloutBatch.concat([first, second]).group_ids.tolist() == merged.group_ids.tolist()


def test_to_moves_every_tensor_and_keeps_the_text():
    batch = _batch().to("meta")
    assert batch.completion_ids.device.type == "meta"
    assert batch.group_ids.device.type == "meta"
    assert batch.completions == ["c0", "c1", "c2", "c3"]


def test_rows_must_agree_across_fields():
    batch = _batch()
    with pytest.raises(ValueError, match="rows"):
        RolloutBatch(**{**batch.__dict__, "completions": batch.completions[:3]})
    with pytest.raises(ValueError, match="shape"):
        RolloutBatch(**{**batch.__dict__, "behaviour_logprobs": batch.behaviour_logprobs[:, :1]})


def test_left_pad_right_aligns_each_prompt_hand_case():
    from grpokit.rollout.prompts import left_pad

    ids, mask = left_pad([[5, 6], [7]], 0)
    assert ids.tolist() == [[5, 6], [0, 7]]
    assert mask.tolist() == [[1, 1], [0, 1]]


def test_episode_fields_follow_select_and_concat():
    episodes = _batch()
    episodes.policy_mask = episodes.completion_mask.clone()
    episodes.policy_mask[:, 0] = 0  # the first completion token of every row was inserted by a tool
    episodes.trajectories = ["t0", "t1", "t2", "t3"]
    picked = episodes.select([3, 0])
    assert torch.equal(picked.policy_mask, episodes.policy_mask[[3, 0]]) and picked.trajectories == ["t3", "t0"]
    single_turn = _batch(completion_lengths=(4, 4, 4, 4))
    merged = concat([episodes, single_turn])
    # a one-turn batch's policy tokens are its completion tokens; trajectories only when every batch has them
    assert torch.equal(merged.policy_mask[4:], single_turn.completion_mask)
    assert torch.equal(merged.policy_mask[:4, :3], episodes.policy_mask) and merged.trajectories is None
    assert torch.equal(single_turn.policy_tokens, single_turn.completion_mask)
    with pytest.raises(ValueError, match="policy_mask and completion_mask differ"):
        RolloutBatch(**{**vars(single_turn), "policy_mask": torch.ones(4, 1, dtype=torch.long)})
