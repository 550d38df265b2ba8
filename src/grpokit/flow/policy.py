"""A flow-matching model as a GRPO policy: every denoising step is an action with a log-probability.

The contract matches the language-model policy's: :meth:`FlowPolicy.log_probs` gives ``logp[B, S]`` and
``mask[B, S]`` (S = denoising steps instead of tokens), so the core losses of ``grpokit.algorithms``
apply unchanged. A :class:`FlowRollout` stores what the update needs and nothing is recomputed for the
old policy: the sampled latents, the old step means (for GRPO-Guard's RatioNorm) and the old log-probs.

The model side is a small adapter (:class:`FlowModel`): the built-in digits network
(:mod:`grpokit.flow.digits`) or a diffusers SD3 transformer (:mod:`grpokit.flow.diffusers_adapter`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from .sde import gaussian_log_prob, sde_noise_levels, sde_step_mean_std, time_grid

TRAIN_STEP_SELECTIONS = ("first", "random", "spread")


class FlowModel(Protocol):
    """What :class:`FlowPolicy` needs from a model. ``conditions`` is whatever :meth:`encode` returns
    for a list of prompt records; it must support ``len`` and row indexing with a LongTensor."""

    latent_shape: tuple[int, ...]

    def encode(self, records: list[dict[str, Any]]) -> Any: ...

    def velocity(self, x: Tensor, t: float, conditions: Any, *, guidance_scale: float = 1.0) -> Tensor:
        """``v(x, t, c)`` for a batch; with ``guidance_scale ≠ 1`` classifier-free guidance
        ``v_u + g·(v_c − v_u)`` (a conditional and an unconditional pass), when the model supports it."""
        ...

    def reference_velocity(
        self, x: Tensor, t: float, conditions: Any, *, guidance_scale: float = 1.0
    ) -> Tensor:
        """The same velocity under the frozen reference parameters (needed only when KL β > 0)."""
        ...

    def trainable_parameters(self) -> list[torch.nn.Parameter]: ...

    def decode(self, latents: Tensor) -> Tensor:
        """Final latents ``[B, *latent_shape]`` → images for rewards and grids (``[B, H, W]`` or ``[B, C, H, W]``)."""
        ...

    def save(self, directory: Path) -> None:
        """Write the trainable weights (a checkpoint's ``model/``)."""
        ...

    def load(self, directory: Path) -> None: ...


@dataclass
class FlowRollout:
    """G samples per prompt, prompt-major (rows ``g·G … g·G + G − 1`` share prompt g), S denoising steps.

    ``latents[:, k]`` is x at ``timesteps[k]`` (k = 0 pure noise, k = S the sample); ``old_means[:, k]`` and
    ``old_logprobs[:, k]`` are the sampling policy's step-k mean μ_old and log-prob of the transition
    ``latents[:, k] → latents[:, k + 1]``; ``mask[:, k]`` is 1 on the steps the update trains. ODE steps
    (σ_k = 0, outside an SDE window) have ``old_logprobs`` 0 and ``mask`` 0.
    """

    conditions: Any
    group_ids: Tensor  # [B] long: the prompt's data-set index (repeats in one step share statistics)
    prompt_indices: list[int]  # [P] data-set index of each group
    timesteps: Tensor  # [S + 1] float64, 1 → 0
    sigmas: Tensor  # [S] float64, σ_t of each step; 0 on ODE steps (outside an SDE window)
    latents: Tensor  # [B, S + 1, *latent_shape]
    old_means: Tensor  # [B, S, *latent_shape]
    old_logprobs: Tensor  # [B, S]
    mask: Tensor  # [B, S] float, 1 on trained steps

    def __len__(self) -> int:
        return self.latents.shape[0]

    @property
    def num_steps(self) -> int:
        return self.old_logprobs.shape[1]

    @property
    def samples(self) -> Tensor:
        return self.latents[:, -1]

    @property
    def sde_steps(self) -> Tensor:
        """``[S]`` bool: the stochastic steps (σ > 0); the rest were ODE steps with no log-prob."""
        return self.sigmas > 0

    def step_std(self, step: int) -> float:
        """The step's s = σ_k·√(t_k − t_{k+1}), shared by every row."""
        return float(self.sigmas[step] * (self.timesteps[step] - self.timesteps[step + 1]).sqrt())


def select_rows(conditions: Any, rows: Tensor) -> Any:
    """Row subset of a condition batch (a tensor, or any object indexable with a LongTensor)."""
    return conditions[rows]


def train_step_mask(
    batch: int,
    num_steps: int,
    count: int | None,
    selection: str = "first",
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Which denoising steps each sample trains on, ``[B, S]`` float.

    ``count=None`` trains every step. Otherwise ``count`` steps: ``"first"`` the noisiest ``count``
    (Flow-GRPO's ``timestep_fraction``), ``"spread"`` evenly spaced over the trajectory, ``"random"`` a fresh
    random subset per sample (DanceGRPO). Case S = 4, count = 2: first → [1, 1, 0, 0], spread → [1, 0, 1, 0].
    """
    if selection not in TRAIN_STEP_SELECTIONS:
        raise ValueError(f"selection must be one of {TRAIN_STEP_SELECTIONS}, got {selection!r}")
    if count is None or count >= num_steps:
        return torch.ones(batch, num_steps)
    if count < 1:
        raise ValueError(f"count must be >= 1 or None, got {count}")
    mask = torch.zeros(batch, num_steps)
    if selection == "first":
        mask[:, :count] = 1.0
    elif selection == "spread":
        mask[:, (torch.arange(count) * num_steps) // count] = 1.0
    else:
        scores = torch.rand(batch, num_steps, generator=generator)
        mask.scatter_(1, scores.topk(count, dim=1).indices, 1.0)
    return mask


class FlowPolicy:
    """Flow-GRPO's sampler and per-step log-probs around a :class:`FlowModel`.

    ``noise_level`` is a in σ_t = a·√(t/(1 − t)); ``logprob_reduction`` "mean" (Flow-GRPO) or "sum" over
    latent dimensions; ``shift`` the SD3 time-grid shift (1 = uniform); ``guidance_scale`` CFG's g (1 = off).
    """

    def __init__(
        self,
        model: FlowModel,
        *,
        noise_level: float = 0.7,
        logprob_reduction: str = "mean",
        guidance_scale: float = 1.0,
        shift: float = 1.0,
    ):
        self.model = model
        self.noise_level = noise_level
        self.logprob_reduction = logprob_reduction
        self.guidance_scale = guidance_scale
        self.shift = shift

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def rollout(
        self,
        conditions: Any,
        group_ids: Tensor,
        prompt_indices: list[int],
        *,
        num_steps: int,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
        sde_steps: Tensor | None = None,
    ) -> FlowRollout:
        """Sample one trajectory per row of ``conditions`` with the SDE, recording every step's mean and
        log-prob. ``noise`` (``[B, *latent_shape]``) fixes x at t = 1; otherwise drawn from ``generator``.

        ``sde_steps`` (``[S]`` bool, default all True) marks the SDE steps (MixGRPO's window,
        :mod:`grpokit.flow.window`); the others are deterministic ODE steps: σ = 0 in ``rollout.sigmas``,
        log-prob 0, mask 0 — they are never trained and draw no noise."""
        timesteps = self.time_grid(num_steps)
        sigmas = sde_noise_levels(timesteps, self.noise_level)
        if sde_steps is not None:
            sigmas = torch.where(sde_steps.to(torch.bool), sigmas, torch.zeros_like(sigmas))
        x = self._initial_noise(len(group_ids), noise, generator)
        latents, means, logprobs = [x], [], []
        for k in range(num_steps):
            v = self.model.velocity(x, float(timesteps[k]), conditions, guidance_scale=self.guidance_scale)
            mean, std = sde_step_mean_std(
                x, v, float(timesteps[k]), float(timesteps[k + 1]), float(sigmas[k])
            )
            if sigmas[k] > 0:
                x = mean + std * self._randn(x, generator)
                logprobs.append(gaussian_log_prob(x, mean, std, reduction=self.logprob_reduction))
            else:  # an ODE step: no noise, no density
                x = mean
                logprobs.append(torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
            latents.append(x)
            means.append(mean)
        return FlowRollout(
            conditions=conditions,
            group_ids=group_ids,
            prompt_indices=list(prompt_indices),
            timesteps=timesteps,
            sigmas=sigmas,
            latents=torch.stack(latents, dim=1),
            old_means=torch.stack(means, dim=1),
            old_logprobs=torch.stack(logprobs, dim=1),
            mask=(sigmas > 0).to(torch.float32).expand(len(group_ids), num_steps).clone(),
        )

    @torch.no_grad()
    def sample(
        self,
        conditions: Any,
        *,
        num_steps: int,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        noise_level: float = 0.0,
    ) -> Tensor:
        """Final latents only; the deterministic ODE (``noise_level=0``) by default, as Flow-GRPO evaluates."""
        timesteps = self.time_grid(num_steps)
        sigmas = sde_noise_levels(timesteps, noise_level)
        x = self._initial_noise(len(conditions), noise, generator)
        for k in range(num_steps):
            v = self.model.velocity(x, float(timesteps[k]), conditions, guidance_scale=self.guidance_scale)
            mean, std = sde_step_mean_std(
                x, v, float(timesteps[k]), float(timesteps[k + 1]), float(sigmas[k])
            )
            x = mean if noise_level == 0 else mean + std * self._randn(x, generator)
        return x

    def time_grid(self, num_steps: int) -> Tensor:
        """The model's own grid when it has one (a diffusers scheduler's sigmas), else uniform with ``shift``."""
        model_grid = getattr(self.model, "time_grid", None)
        return model_grid(num_steps) if model_grid is not None else time_grid(num_steps, shift=self.shift)

    @property
    def device(self) -> torch.device:
        return torch.device(getattr(self.model, "device", "cpu"))

    def _randn(self, like: Tensor, generator: torch.Generator | None) -> Tensor:
        # drawn on the CPU so a seed gives the same noise on every device
        return torch.randn(like.shape, generator=generator, dtype=torch.float32).to(like.device, like.dtype)

    def _initial_noise(self, batch: int, noise: Tensor | None, generator: torch.Generator | None) -> Tensor:
        if noise is None:
            noise = torch.randn((batch, *self.model.latent_shape), generator=generator)
        return noise.to(self.device)

    # ------------------------------------------------------------------ training pass
    def step_log_probs(
        self, rollout: FlowRollout, step: int, rows: Tensor, *, reference: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Log-prob ``[R]`` of the stored step-``step`` transitions of ``rows`` under the current parameters
        (with gradient), and the step means ``[R, *latent_shape]``. ``reference=True``: under the frozen
        reference, no gradient (for the KL)."""
        t, t_next = float(rollout.timesteps[step]), float(rollout.timesteps[step + 1])
        x = rollout.latents[rows, step]
        conditions = select_rows(rollout.conditions, rows)
        velocity_fn = self.model.reference_velocity if reference else self.model.velocity
        with torch.set_grad_enabled(not reference and torch.is_grad_enabled()):
            v = velocity_fn(x, t, conditions, guidance_scale=self.guidance_scale)
            mean, std = sde_step_mean_std(x, v, t, t_next, float(rollout.sigmas[step]))
            logp = gaussian_log_prob(
                rollout.latents[rows, step + 1], mean, std, reduction=self.logprob_reduction
            )
        return logp, mean

    def log_probs(self, rollout: FlowRollout) -> tuple[Tensor, Tensor]:
        """``(logp[B, S], mask[B, S])``: the policy contract shared with language models. Entries outside
        the mask are 0 and cost nothing (only masked steps are evaluated)."""
        columns = []
        for k in range(rollout.num_steps):
            rows = rollout.mask[:, k].nonzero().squeeze(1)
            column = torch.zeros(len(rollout), dtype=rollout.old_logprobs.dtype)
            if len(rows):
                column = column.index_put((rows,), self.step_log_probs(rollout, k, rows)[0])
            columns.append(column)
        logp = torch.stack(columns, dim=1)
        return logp, rollout.mask
