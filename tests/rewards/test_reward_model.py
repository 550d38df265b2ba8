from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from grpokit.rewards import RewardRunner, load_reward  # noqa: E402

WORDS = ["[PAD]", "[UNK]", "[EOS]", "the", "answer", "is", "4", "5", "question", "what", "?"]


def save_tiny_reward_model(directory, num_labels):
    """A random 1-layer Llama classifier and a whitespace word-level tokenizer, saved locally."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]"
    )
    config = LlamaConfig(
        vocab_size=len(WORDS),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        pad_token_id=0,
        num_labels=num_labels,
        id2label={i: name for i, name in enumerate(["bad", "good"][:num_labels])} if num_labels > 1 else None,
    )
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model, tokenizer


@pytest.fixture(scope="module")
def one_label_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("rm1")
    model, tokenizer = save_tiny_reward_model(directory, num_labels=1)
    return directory, model, tokenizer


def unpadded_logits(model, tokenizer, texts):
    """Reference: each text alone, no padding at all."""
    with torch.no_grad():
        return torch.stack([model(**tokenizer(t, return_tensors="pt")).logits[0] for t in texts])


PROMPTS = ["what is the question ? ", "what ? ", "the question ", "what is the answer ? "]
COMPLETIONS = ["the answer is 4", "5", "is the answer 4 or 5 ? the answer is 5", "4"]


def test_batched_padded_scores_equal_one_by_one_scores(one_label_model):
    directory, model, tokenizer = one_label_model
    reward = load_reward("reward_model", path=str(directory), batch_size=3, device="cpu")
    scores = reward(prompts=PROMPTS, completions=COMPLETIONS, group_ids=[0, 0, 1, 1])
    expected = unpadded_logits(model, tokenizer, [p + c for p, c in zip(PROMPTS, COMPLETIONS)])[:, 0]
    assert torch.tensor(scores) == pytest.approx(expected, abs=1e-5)
    assert len(set(scores)) == 4  # a constant model would pass the comparison above trivially


def test_named_label_of_a_two_label_model(tmp_path):
    model, tokenizer = save_tiny_reward_model(tmp_path, num_labels=2)
    reward = load_reward("reward_model", path=str(tmp_path), label="good")
    scores = reward(prompts=PROMPTS[:2], completions=COMPLETIONS[:2], group_ids=[0, 0])
    expected = unpadded_logits(model, tokenizer, [p + c for p, c in zip(PROMPTS[:2], COMPLETIONS[:2])])[:, 1]
    assert torch.tensor(scores) == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="choose one with label="):
        load_reward("reward_model", path=str(tmp_path))


def test_reward_model_runs_inside_the_runner(one_label_model):
    directory, model, tokenizer = one_label_model
    runner = RewardRunner([load_reward("reward_model", path=str(directory), weight=2.0)])
    result = runner.score(PROMPTS, COMPLETIONS, [0, 0, 1, 1])
    expected = unpadded_logits(model, tokenizer, [p + c for p, c in zip(PROMPTS, COMPLETIONS)])[:, 0]
    assert result.total == pytest.approx(2.0 * expected, abs=1e-4)
