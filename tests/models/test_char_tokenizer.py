from __future__ import annotations

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from grpokit.models import DEFAULT_ALPHABET, SIMPLE_CHAT_TEMPLATE, build_char_tokenizer


def test_ids_are_pad_bos_eos_unk_then_the_alphabet_in_order():
    tokenizer = build_char_tokenizer("ab+")
    assert (
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.unk_token_id,
    ) == (
        0,
        1,
        2,
        3,
    )
    assert tokenizer.convert_tokens_to_ids(["a", "b", "+"]) == [4, 5, 6]
    assert len(tokenizer) == 7


def test_is_a_hf_fast_tokenizer_with_left_padding():
    tokenizer = build_char_tokenizer()
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert tokenizer.padding_side == "left"


def test_default_alphabet_covers_arithmetic_and_xml_tags_in_one_token_per_character():
    tokenizer = build_char_tokenizer()
    text = "<answer>12+3*4=-5?</answer>\nOK a/b"
    ids = tokenizer(text)["input_ids"]
    assert len(ids) == len(text)
    assert tokenizer.unk_token_id not in ids
    assert len(tokenizer) == len(DEFAULT_ALPHABET) + 4


def test_decode_inverts_encode_including_spaces_and_newlines():
    tokenizer = build_char_tokenizer()
    text = "  1 + 2\n\n= 3 "
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_characters_outside_the_alphabet_encode_to_unk():
    tokenizer = build_char_tokenizer("0123456789")
    assert tokenizer("1x2")["input_ids"] == [5, 3, 6]


def test_special_token_text_encodes_to_the_special_id_and_is_skipped_on_decode():
    tokenizer = build_char_tokenizer("12")
    ids = tokenizer("1<eos>2")["input_ids"]
    assert ids == [4, 2, 5]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "12"


def test_batch_padding_is_on_the_left_with_pad_id_and_zero_mask():
    tokenizer = build_char_tokenizer("123")
    batch = tokenizer(["1", "123"], padding=True)
    assert batch["input_ids"] == [[0, 0, 4], [4, 5, 6]]
    assert batch["attention_mask"] == [[0, 0, 1], [1, 1, 1]]
    assert tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True) == ["1", "123"]


def test_save_and_autotokenizer_load_round_trip(tmp_path):
    tokenizer = build_char_tokenizer("0123456789+= \n", chat_template=SIMPLE_CHAT_TEMPLATE)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    texts = ["12+3=15", "7 \n8"]
    assert loaded(texts, padding=True)["input_ids"] == tokenizer(texts, padding=True)["input_ids"]
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.padding_side) == (0, 2, "left")
    assert loaded.chat_template == SIMPLE_CHAT_TEMPLATE


def test_chat_template_renders_turns_and_generation_prompt():
    tokenizer = build_char_tokenizer(chat_template=SIMPLE_CHAT_TEMPLATE)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "1+1?"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<user>1+1?</user>\n<assistant>"


def test_repeated_alphabet_characters_are_rejected():
    with pytest.raises(ValueError, match="repeated"):
        build_char_tokenizer("abca")
