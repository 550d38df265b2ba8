"""Language models: character tokenizer, tiny model builders, policy loading, per-token log-probs.

transformers and peft are imported inside the functions that need them, so importing this
package stays cheap.
"""

from grpokit.models.char_tokenizer import DEFAULT_ALPHABET, SIMPLE_CHAT_TEMPLATE, build_char_tokenizer
from grpokit.models.loading import (
    LoraSettings,
    Policy,
    load_policy,
    load_policy_weights,
    load_tokenizer,
    save_policy,
)
from grpokit.models.logprobs import position_ids_from_attention_mask, sequence_logprobs
from grpokit.models.tiny import build_tiny_causal_lm

__all__ = [
    "DEFAULT_ALPHABET",
    "SIMPLE_CHAT_TEMPLATE",
    "LoraSettings",
    "Policy",
    "build_char_tokenizer",
    "build_tiny_causal_lm",
    "load_policy",
    "load_policy_weights",
    "load_tokenizer",
    "position_ids_from_attention_mask",
    "save_policy",
    "sequence_logprobs",
]
