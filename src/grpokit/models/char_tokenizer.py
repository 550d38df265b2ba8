"""A character-level tokenizer that behaves like any Hugging Face fast tokenizer.

One token per character of a fixed alphabet, plus the special tokens pad/bos/eos/unk. It is a
real `transformers.PreTrainedTokenizerFast` backed by a `tokenizers.Tokenizer`, so batch
encode/decode, padding, chat templates and `save_pretrained` / `AutoTokenizer.from_pretrained`
all work unchanged. Used for tiny test models and toy tasks (arithmetic, XML-tagged answers).
"""

from __future__ import annotations

import string
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<bos>"
EOS_TOKEN = "<eos>"
UNK_TOKEN = "<unk>"
# Order fixes the ids: pad=0, bos=1, eos=2, unk=3; alphabet characters follow from 4.
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)

# Digits, letters, ASCII punctuation (covers + - * / = ? < > for arithmetic and XML-ish tags),
# space and newline: 96 characters, 100 tokens with the specials.
DEFAULT_ALPHABET = string.digits + string.ascii_letters + string.punctuation + " \n"

# A minimal chat template for toy chat data: "<user>...</user>\n<assistant>" style turns.
SIMPLE_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<{{ message['role'] }}>{{ message['content'] }}</{{ message['role'] }}>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def build_char_tokenizer(
    alphabet: str = DEFAULT_ALPHABET, *, chat_template: str | None = None
) -> PreTrainedTokenizerFast:
    """Build a character-level `PreTrainedTokenizerFast` over `alphabet`.

    Ids: pad=0, bos=1, eos=2, unk=3, then the alphabet's characters in order. Characters outside
    the alphabet encode to unk. No special token is added on encode (like Qwen tokenizers), so
    a prompt's ids are exactly its characters. `padding_side` is "left", as generation needs.
    The special tokens' text (e.g. "<eos>") is matched before single characters on encode.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if len(set(alphabet)) != len(alphabet):
        duplicates = sorted({c for c in alphabet if alphabet.count(c) > 1})
        raise ValueError(f"alphabet has repeated characters: {duplicates!r}")
    if not alphabet:
        raise ValueError("alphabet is empty")

    vocab = {token: index for index, token in enumerate([*SPECIAL_TOKENS, *alphabet])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    # Every character (newline included) is its own pre-token; Fuse joins them back without
    # the spaces the default decoder would put between tokens.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side="left",
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer
