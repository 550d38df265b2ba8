"""A learned reward: a local ``AutoModelForSequenceClassification`` scores prompt + completion.

transformers is imported inside the constructor, so importing this module stays cheap.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any


class RewardModelScorer:
    """Reward function backed by a sequence-classification model loaded from a local ``path``.

    The scored text is ``prompt + completion`` (the prompt as the policy saw it, chat template
    included). Texts are tokenized in batches of ``batch_size``, right-padded, and truncated from
    the *left* to ``max_length`` tokens so the completion's end — where the model pools — is
    kept. The reward is the logit of the only label (``num_labels == 1``) or of ``label`` (an
    index or a name from ``config.label2id``), which is required when there are several labels.
    The model lives on ``device`` (``"auto"``: CUDA when available, else CPU).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        device: str = "cpu",
        batch_size: int = 8,
        label: int | str | None = None,
        max_length: int | None = None,
        dtype: str | None = None,
    ):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if batch_size < 1:
            raise ValueError(f"reward_model: batch_size must be >= 1, got {batch_size}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        torch_dtype = getattr(torch, dtype) if dtype is not None else None
        self.model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=torch_dtype)
        self.model.to(self.device).eval()
        self._ensure_padding()
        self.label_index = self._label_index(label)
        # One model, possibly shared by several runner threads: score one batch at a time.
        self._lock = threading.Lock()

    def _ensure_padding(self) -> None:
        tokenizer, config = self.tokenizer, self.model.config
        if tokenizer.pad_token is None:
            fallback = tokenizer.eos_token or tokenizer.unk_token
            if fallback is None:
                raise ValueError("reward_model: the tokenizer has no pad, eos or unk token to pad with")
            tokenizer.pad_token = fallback
        tokenizer.padding_side = "right"
        tokenizer.truncation_side = "left"
        # The classification head pools at the last token that is not pad_token_id.
        if config.pad_token_id is None:
            config.pad_token_id = tokenizer.pad_token_id

    def _label_index(self, label: int | str | None) -> int:
        config = self.model.config
        num_labels = config.num_labels
        # Recent transformers may keep only one of the two maps; rebuild names from either.
        label_ids = dict(config.label2id or {}) or {
            name: int(i) for i, name in (config.id2label or {}).items()
        }
        if label is None:
            if num_labels != 1:
                raise ValueError(
                    f"reward_model has {num_labels} labels {list(label_ids)}: choose one with label="
                )
            return 0
        if isinstance(label, str):
            if label not in label_ids:
                raise ValueError(f"reward_model: unknown label {label!r}; labels: {list(label_ids)}")
            return int(label_ids[label])
        if not 0 <= label < num_labels:
            raise ValueError(f"reward_model: label index {label} outside [0, {num_labels})")
        return label

    def __call__(self, prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        import torch

        texts = [p + c for p, c in zip(prompts, completions)]
        scores: list[float] = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                encoded = self.tokenizer(
                    texts[start : start + self.batch_size],
                    padding=True,
                    truncation=self.max_length is not None,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                logits = self.model(
                    input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]
                ).logits
                scores.extend(logits[:, self.label_index].float().cpu().tolist())
        return scores


def reward_model(
    path: str | Path,
    device: str = "cpu",
    batch_size: int = 8,
    label: int | str | None = None,
    max_length: int | None = None,
    dtype: str | None = None,
) -> RewardModelScorer:
    """Factory for the ``"reward_model"`` built-in; see :class:`RewardModelScorer`."""
    return RewardModelScorer(
        path, device=device, batch_size=batch_size, label=label, max_length=max_length, dtype=dtype
    )
