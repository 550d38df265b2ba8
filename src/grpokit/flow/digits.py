"""The built-in CPU flow model: a class-conditional velocity MLP trained by flow matching on
scikit-learn's 8×8 digits (1,797 images that ship with scikit-learn; nothing is downloaded).

Pixels 0…16 are mapped to [−1, 1]; a sample is a 64-vector. The network sees (x_t, t, label) and
predicts ``ε − x_0``; labels are dropped to a "null" class 10% of the time so classifier-free guidance
works. :func:`pretrained_digits_model` trains it once (about a minute on one CPU thread) and caches the
weights under ``$GRPOKIT_CACHE_DIR`` (default ``~/.cache/grpokit``), keyed by the recipe.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

NUM_CLASSES = 10
NULL_LABEL = NUM_CLASSES  # the unconditional "class" used by classifier-free guidance
IMAGE_SIDE = 8


def cache_dir(path: str | Path | None = None) -> Path:
    """Where pre-trained CPU assets live: ``path``, else ``$GRPOKIT_CACHE_DIR``, else ``~/.cache/grpokit``."""
    chosen = path or os.environ.get("GRPOKIT_CACHE_DIR") or Path.home() / ".cache" / "grpokit"
    return Path(chosen).expanduser()


def recipe_key(recipe: Any) -> str:
    """A short hash of a recipe dataclass: a changed recipe never loads stale weights."""
    return hashlib.sha1(json.dumps(asdict(recipe), sort_keys=True).encode()).hexdigest()[:10]


@functools.lru_cache(maxsize=1)
def load_digit_images() -> tuple[Tensor, Tensor]:
    """scikit-learn's digits as ``(images[N, 64] float32 in [−1, 1], labels[N] long)``, N = 1797.
    Read once per process; the tensors are shared, so do not modify them in place."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.data, dtype=torch.float32) / 8.0 - 1.0
    return images, torch.tensor(digits.target, dtype=torch.long)


def time_embedding(t: Tensor, dims: int) -> Tensor:
    """Sinusoidal features of t ∈ [0, 1], ``[B, dims]`` (frequencies 1 … 1000 on a log scale)."""
    half = dims // 2
    frequencies = torch.exp(torch.linspace(0.0, math.log(1000.0), half, device=t.device))
    angles = t.reshape(-1, 1) * frequencies
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class DigitsVelocityNet(nn.Module):
    """``v(x, t, label)``: an MLP on [x, time features, label embedding] with residual hidden blocks."""

    def __init__(self, hidden: int = 256, blocks: int = 2, time_dims: int = 32):
        super().__init__()
        self.time_dims = time_dims
        self.label_embedding = nn.Embedding(NUM_CLASSES + 1, time_dims)
        self.inp = nn.Linear(IMAGE_SIDE**2 + 2 * time_dims, hidden)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(blocks))
        self.out = nn.Linear(hidden, IMAGE_SIDE**2)

    def forward(self, x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        features = torch.cat([x, time_embedding(t, self.time_dims), self.label_embedding(labels)], dim=1)
        h = nn.functional.silu(self.inp(features))
        for block in self.blocks:
            h = h + nn.functional.silu(block(h))
        return self.out(h)


def flow_matching_loss(
    net: DigitsVelocityNet, x0: Tensor, labels: Tensor, t: Tensor, noise: Tensor
) -> Tensor:
    """Rectified-flow matching: ``mean_{i,d} (v_θ(x_t, t, c) − (ε − x_0))²`` with ``x_t = (1 − t)·x_0 + t·ε``."""
    x_t = (1.0 - t.unsqueeze(1)) * x0 + t.unsqueeze(1) * noise
    return (net(x_t, t, labels) - (noise - x0)).square().mean()


@dataclass(frozen=True)
class DigitsRecipe:
    """Pre-training of the digits velocity network (defaults: ~1 minute on one CPU thread)."""

    hidden: int = 256
    blocks: int = 2
    steps: int = 4000
    batch_size: int = 256
    learning_rate: float = 2e-3
    label_dropout: float = 0.1  # fraction of labels replaced by the null label (for CFG)
    seed: int = 0


def train_digits_velocity(recipe: DigitsRecipe = DigitsRecipe(), *, log_every: int = 0) -> DigitsVelocityNet:
    """Train by flow matching on all 1,797 digits with AdamW and a cosine learning-rate decay."""
    images, labels = load_digit_images()
    generator = torch.Generator().manual_seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    net = DigitsVelocityNet(recipe.hidden, recipe.blocks)
    optimizer = torch.optim.AdamW(net.parameters(), lr=recipe.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, recipe.steps))
    started = time.perf_counter()
    for step in range(recipe.steps):
        rows = torch.randint(0, len(images), (recipe.batch_size,), generator=generator)
        batch_labels = labels[rows].clone()
        dropped = torch.rand(recipe.batch_size, generator=generator) < recipe.label_dropout
        batch_labels[dropped] = NULL_LABEL
        t = torch.rand(recipe.batch_size, generator=generator)
        noise = torch.randn(recipe.batch_size, IMAGE_SIDE**2, generator=generator)
        loss = flow_matching_loss(net, images[rows], batch_labels, t, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if log_every and (step + 1) % log_every == 0:
            print(
                f"digits flow matching: step {step + 1}/{recipe.steps} loss {loss.item():.4f} "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    return net.eval()


class DigitsFlowModel:
    """The :class:`~grpokit.flow.policy.FlowModel` adapter of a :class:`DigitsVelocityNet`.

    Conditions are label tensors ``[B]`` (records carry a ``label`` column). Classifier-free guidance runs
    the conditional and the null-label pass as one batch. The reference for the KL is a frozen copy made
    on the first call of :meth:`reference_velocity`.
    """

    latent_shape = (IMAGE_SIDE**2,)

    def __init__(self, net: DigitsVelocityNet):
        self.net = net
        self._reference: DigitsVelocityNet | None = None

    def encode(self, records: list[dict[str, Any]]) -> Tensor:
        return torch.tensor([int(r["label"]) for r in records], dtype=torch.long)

    def _guided(
        self, net: DigitsVelocityNet, x: Tensor, t: float, labels: Tensor, guidance_scale: float
    ) -> Tensor:
        times = torch.full((x.shape[0],), t)
        if guidance_scale == 1.0:
            return net(x, times, labels)
        both = net(
            torch.cat([x, x]),
            torch.cat([times, times]),
            torch.cat([labels, torch.full_like(labels, NULL_LABEL)]),
        )
        conditional, unconditional = both.chunk(2)
        return unconditional + guidance_scale * (conditional - unconditional)

    def velocity(self, x: Tensor, t: float, conditions: Tensor, *, guidance_scale: float = 1.0) -> Tensor:
        return self._guided(self.net, x, t, conditions, guidance_scale)

    def reference_velocity(
        self, x: Tensor, t: float, conditions: Tensor, *, guidance_scale: float = 1.0
    ) -> Tensor:
        if self._reference is None:
            self._reference = copy.deepcopy(self.net).requires_grad_(False)
        with torch.no_grad():
            return self._guided(self._reference, x, t, conditions, guidance_scale)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.net.parameters() if p.requires_grad]

    def decode(self, latents: Tensor) -> Tensor:
        """Latents → images ``[B, 8, 8]`` in [−1, 1] (clamped, as a saved image would be)."""
        return latents.reshape(-1, IMAGE_SIDE, IMAGE_SIDE).clamp(-1.0, 1.0)

    def save(self, directory: str | Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        torch.save(self.net.state_dict(), Path(directory) / "velocity.pt")

    def load(self, directory: str | Path) -> None:
        self.net.load_state_dict(torch.load(Path(directory) / "velocity.pt", weights_only=True))


def pretrained_digits_model(
    recipe: DigitsRecipe = DigitsRecipe(), *, cache: str | Path | None = None, progress: bool = True
) -> DigitsFlowModel:
    """The pre-trained digits model, from the cache or trained now (and cached atomically)."""
    path = cache_dir(cache) / f"digits_velocity_{recipe_key(recipe)}.pt"
    net = DigitsVelocityNet(recipe.hidden, recipe.blocks)
    if path.is_file():
        net.load_state_dict(torch.load(path, weights_only=True))
        return DigitsFlowModel(net.eval())
    if progress:
        print(f"pre-training the digits flow model ({recipe.steps} steps; cached at {path})", flush=True)
    net = train_digits_velocity(recipe, log_every=1000 if progress else 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".tmp-{os.getpid()}")
    torch.save(net.state_dict(), temporary)
    os.replace(temporary, path)  # atomic: a concurrent reader sees the old state or the whole file
    return DigitsFlowModel(net)


def digit_prompts() -> list[dict[str, Any]]:
    """The ten conditions as prompt records: ``{"prompt": "digit 3", "label": 3}``."""
    return [{"prompt": f"digit {d}", "label": d} for d in range(NUM_CLASSES)]
