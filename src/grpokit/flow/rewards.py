"""Image rewards for the digits task: a proxy the policy trains on, gold scores it never sees.

- **Proxy** (:meth:`DigitScorer.proxy`): the logit margin ``z_c − max_{j≠c} z_j`` of a *linear* classifier
  trained on half of the data set. It is gameable on purpose: a linear margin grows without limit along
  ``w_c − w_j``, and the images that maximise it are high-contrast templates, not digits.
- **Gold** (never trained on): an *independent* classifier (an MLP trained with noise augmentation on the
  other half) must recognise the intended class (``gold/accuracy``, percent), the image must lie as close to a real
  digit as real digits lie to each other (``gold/realism``: nearest-neighbour distance below the 95th
  percentile of the data's own leave-one-out distances), and samples of one class should differ as much as
  real ones do (``gold/diversity``). ``gold/score`` — the fraction of samples that are both recognised and
  realistic — is the one number the experiments track.

The reward functions follow the text reward API (``fn(prompts, completions, group_ids, **columns)``, one
float per sample); completions are images ``[8, 8]``. For real models on GPU, the same API takes any
scorer: a PickScore / aesthetic / OCR / GenEval-style function receiving decoded images (PIL or tensors)
and the prompts, batched, with the runner's timeout (see the flow section of the README).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .digits import NUM_CLASSES, cache_dir, load_digit_images, recipe_key


@dataclass(frozen=True)
class ScorerRecipe:
    proxy_steps: int = 300  # full-batch Adam steps of the linear proxy classifier
    gold_steps: int = 1500  # mini-batch steps of the gold MLP
    gold_hidden: int = 128
    gold_noise: float = 0.3  # Gaussian noise augmentation of the gold classifier's inputs
    realism_quantile: float = 0.95
    seed: int = 0


def _gold_net(hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10)
    )


def _train_classifiers(recipe: ScorerRecipe) -> dict[str, Any]:
    images, labels = load_digit_images()
    generator = torch.Generator().manual_seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    proxy_half, gold_half = torch.arange(0, len(images), 2), torch.arange(1, len(images), 2)

    proxy = nn.Linear(64, NUM_CLASSES)
    optimizer = torch.optim.Adam(proxy.parameters(), lr=0.05)
    for _ in range(recipe.proxy_steps):
        loss = nn.functional.cross_entropy(proxy(images[proxy_half]), labels[proxy_half])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    gold = _gold_net(recipe.gold_hidden)
    optimizer = torch.optim.Adam(gold.parameters(), lr=2e-3)
    for _ in range(recipe.gold_steps):
        rows = gold_half[torch.randint(0, len(gold_half), (128,), generator=generator)]
        noisy = images[rows] + recipe.gold_noise * torch.randn(128, 64, generator=generator)
        loss = nn.functional.cross_entropy(gold(noisy), labels[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    distances = torch.cdist(images, images)
    distances.fill_diagonal_(float("inf"))
    threshold = torch.quantile(distances.min(dim=1).values, recipe.realism_quantile)
    return {"proxy": proxy.state_dict(), "gold": gold.state_dict(), "realism_threshold": float(threshold)}


class DigitScorer:
    """Proxy and gold scores of digit images ``[B, 8, 8]`` (or ``[B, 64]``) in [−1, 1] for labels ``[B]``."""

    def __init__(self, state: dict[str, Any], recipe: ScorerRecipe = ScorerRecipe()):
        self.images, self.labels = load_digit_images()
        self.proxy_net = nn.Linear(64, NUM_CLASSES)
        self.proxy_net.load_state_dict(state["proxy"])
        self.gold_net = _gold_net(recipe.gold_hidden)
        self.gold_net.load_state_dict(state["gold"])
        self.realism_threshold = state["realism_threshold"]
        self.proxy_net.requires_grad_(False)
        self.gold_net.requires_grad_(False)
        self._class_spread = torch.stack(
            [torch.pdist(self.images[self.labels == c]).mean() for c in range(NUM_CLASSES)]
        )

    @staticmethod
    def _flat(images: Tensor) -> Tensor:
        return images.reshape(images.shape[0], -1).float().clamp(-1.0, 1.0)

    @torch.no_grad()
    def proxy(self, images: Tensor, labels: Tensor) -> Tensor:
        """Linear-classifier margin ``z_c − max_{j≠c} z_j``, ``[B]``."""
        logits = self.proxy_net(self._flat(images))
        target = logits.gather(1, labels.reshape(-1, 1)).squeeze(1)
        others = logits.scatter(1, labels.reshape(-1, 1), float("-inf")).max(dim=1).values
        return target - others

    @torch.no_grad()
    def gold_correct(self, images: Tensor, labels: Tensor) -> Tensor:
        """1.0 where the independent classifier's arg-max is the intended class, ``[B]``."""
        return (self.gold_net(self._flat(images)).argmax(dim=1) == labels).float()

    @torch.no_grad()
    def nearest_data_distance(self, images: Tensor) -> Tensor:
        """L2 distance to the closest real digit, ``[B]``."""
        return torch.cdist(self._flat(images), self.images).min(dim=1).values

    def realistic(self, images: Tensor) -> Tensor:
        """1.0 where the nearest real digit is as close as real digits are to each other (95%), ``[B]``."""
        return (self.nearest_data_distance(images) <= self.realism_threshold).float()

    @torch.no_grad()
    def diversity(self, images: Tensor, labels: Tensor) -> float:
        """Mean over classes present (≥ 2 samples) of (mean pairwise distance of the samples) ÷ (that of
        the class's real digits); ~1 for a model as varied as the data, → 0 on mode collapse."""
        flat, ratios = self._flat(images), []
        for c in labels.unique().tolist():
            rows = labels == c
            if int(rows.sum()) >= 2:
                ratios.append(torch.pdist(flat[rows]).mean() / self._class_spread[c])
        return float(torch.stack(ratios).mean()) if ratios else float("nan")

    def gold_metrics(self, images: Tensor, labels: Tensor) -> dict[str, float]:
        correct, realistic = self.gold_correct(images, labels), self.realistic(images)
        return {
            "gold/score": float((correct * realistic).mean()),
            "gold/accuracy": 100.0 * float(correct.mean()),  # percent, like every grpokit accuracy
            "gold/realism": float(realistic.mean()),
            "gold/diversity": self.diversity(images, labels),
            "gold/nearest_distance": float(self.nearest_data_distance(images).mean()),
        }


_SCORERS: dict[str, DigitScorer] = {}


def digit_scorer(recipe: ScorerRecipe = ScorerRecipe(), *, cache: str | Path | None = None) -> DigitScorer:
    """The scorer with its classifiers from the cache (trained in a few seconds on first use)."""
    path = cache_dir(cache) / f"digits_scorer_{recipe_key(recipe)}.pt"
    if str(path) in _SCORERS:
        return _SCORERS[str(path)]
    if path.is_file():
        state = torch.load(path, weights_only=True)
    else:
        state = _train_classifiers(recipe)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".tmp-{os.getpid()}")
        torch.save(state, temporary)
        os.replace(temporary, path)
    _SCORERS[str(path)] = DigitScorer(state, recipe)
    return _SCORERS[str(path)]


def _batch(completions: list[Tensor], label: list[int]) -> tuple[Tensor, Tensor]:
    return torch.stack([torch.as_tensor(c) for c in completions]), torch.tensor(label, dtype=torch.long)


def digits_proxy(completions: list[Tensor], label: list[int], cache: str | None = None) -> list[float]:
    """Reward API: the gameable proxy margin for each image (``label`` comes from the prompt records)."""
    images, labels = _batch(completions, label)
    return digit_scorer(cache=cache).proxy(images, labels).tolist()


def digits_gold(completions: list[Tensor], label: list[int], cache: str | None = None) -> list[float]:
    """Reward API: 1.0 for an image that is both recognised as its class and realistic, else 0.0."""
    images, labels = _batch(completions, label)
    scorer = digit_scorer(cache=cache)
    return (scorer.gold_correct(images, labels) * scorer.realistic(images)).tolist()
