"""Group-relative advantages: GRPO z-score, Dr. GRPO, batch std, RLOO, and multi-reward combination.

Every function takes one scalar reward per completion (``rewards[B]``) and the index of the prompt each
completion belongs to (``group_ids[B]``, any integers, groups need not be contiguous nor equal-sized).

Rules shared by every function here:

- **NaN rewards** (callers map a reward function's ``None`` to NaN) are excluded from every statistic and get
  advantage 0. The caller should also drop those rows from the loss mask and log their count.
- **All-equal groups get exactly 0**: centred values are zeroed wherever the group's std is below
  ``zero_std_rtol`` times the largest |reward| of the group, so float residue (a std of 1e-8 from summing
  0.1 + 0.2 one way and 0.3 another) cannot be divided up to ±1.
- **Groups with fewer than two valid rewards get 0** (there is nothing to compare against).
- Statistics are computed in float64; results are float32.

The estimators a Preset's ``advantage`` field names are registered here (:mod:`grpokit.algorithms.registry`);
:func:`compute_advantages` is the one entry point the trainers call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .registry import ADVANTAGE_ESTIMATORS, register_advantage

if TYPE_CHECKING:
    from .presets import Preset

ADVANTAGE_SCALES = ("group", "none", "batch")
STD_KINDS = ("unbiased", "population")
MULTI_REWARD_MODES = ("sum_then_normalize", "normalize_then_sum")


def valid_reward_mask(rewards: Tensor) -> Tensor:
    """True where a reward is usable. ``rewards[B]``: not NaN; ``rewards[B, K]``: at least one component not NaN."""
    valid = ~torch.isnan(rewards)
    return valid.any(dim=-1) if rewards.dim() == 2 else valid


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _ddof(std: str) -> int:
    _check_choice("std", std, STD_KINDS)
    return 1 if std == "unbiased" else 0


class _GroupStats:
    """Per-group count, mean, std and max |r| of the valid rewards (float64), indexed back per row."""

    def __init__(self, rewards: Tensor, group_ids: Tensor, ddof: int):
        if rewards.dim() != 1 or group_ids.shape != rewards.shape:
            raise ValueError(
                f"rewards and group_ids must both be [B]; got {rewards.shape} and {group_ids.shape}"
            )
        r = rewards.detach().to(torch.float64)
        self.valid = ~torch.isnan(r)
        _, self.row_group = torch.unique(group_ids, return_inverse=True)
        num_groups = int(self.row_group.max()) + 1 if r.numel() else 0
        r0 = torch.where(self.valid, r, torch.zeros_like(r))
        zeros = r.new_zeros(num_groups)
        self.count = zeros.index_add(0, self.row_group, self.valid.to(r.dtype))
        self.mean = zeros.index_add(0, self.row_group, r0) / self.count.clamp(min=1)
        self.centred = torch.where(self.valid, r - self.mean[self.row_group], torch.zeros_like(r))
        sq_sum = zeros.index_add(0, self.row_group, self.centred.square())
        self.std = (sq_sum / (self.count - ddof).clamp(min=1)).sqrt()
        self.max_abs = zeros.scatter_reduce(0, self.row_group, r0.abs(), reduce="amax", include_self=True)
        self.rewards = r

    def informative_rows(self, zero_std_rtol: float) -> Tensor:
        """Rows whose reward is valid and whose group has ≥ 2 valid rewards that are not all equal."""
        group_ok = (self.count >= 2) & (self.std > zero_std_rtol * self.max_abs)
        return self.valid & group_ok[self.row_group]


def _masked_std(values: Tensor, valid: Tensor, ddof: int) -> Tensor:
    n = valid.sum()
    mean = torch.where(valid, values, 0.0).sum() / n.clamp(min=1)
    var = torch.where(valid, (values - mean).square(), 0.0).sum() / (n - ddof).clamp(min=1)
    return var.sqrt()


def _group_advantages64(
    rewards: Tensor, group_ids: Tensor, scale: str, std: str, eps: float, zero_std_rtol: float
) -> Tensor:
    _check_choice("scale", scale, ADVANTAGE_SCALES)
    ddof = _ddof(std)
    stats = _GroupStats(rewards, group_ids, ddof)
    if scale == "group":
        advantages = stats.centred / (stats.std[stats.row_group] + eps)
    elif scale == "batch":
        advantages = stats.centred / (_masked_std(stats.rewards, stats.valid, ddof) + eps)
    else:
        advantages = stats.centred
    return torch.where(stats.informative_rows(zero_std_rtol), advantages, torch.zeros_like(advantages))


def group_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    *,
    scale: str = "group",
    std: str = "unbiased",
    eps: float = 1e-4,
    zero_std_rtol: float = 1e-6,
) -> Tensor:
    """Group-relative advantage of each completion, ``[B]`` float32.

    With ``mean_g`` and ``std_g`` over the valid rewards of the row's group g:

    - ``scale="group"`` (GRPO, DeepSeekMath): ``A_i = (R_i − mean_g) / (std_g + eps)``.
    - ``scale="none"`` (Dr. GRPO, "Understanding R1-Zero-Like Training"): ``A_i = R_i − mean_g``.
    - ``scale="batch"`` (REINFORCE++ / PPO-Lite, TRL ``scale_rewards="batch"``):
      ``A_i = (R_i − mean_g) / (std_batch + eps)``, std_batch over every valid reward of the batch.

    ``std="unbiased"`` divides the squared deviations by n − 1 (torch.std's default and TRL's choice),
    ``"population"`` by n. Case R = [1, 0, 0, 0]: unbiased → [1.5, −0.5, −0.5, −0.5];
    population → [1.7321, −0.5774, −0.5774, −0.5774] (eps = 0). See the module docstring for NaN rewards,
    all-equal groups and single-sample groups, which all get 0.
    """
    return _group_advantages64(rewards, group_ids, scale, std, eps, zero_std_rtol).to(torch.float32)


def rloo_advantages(rewards: Tensor, group_ids: Tensor, *, zero_std_rtol: float = 1e-6) -> Tensor:
    """REINFORCE leave-one-out advantage, ``[B]`` float32.

    ``A_i = R_i − mean_{j≠i} R_j = n_g/(n_g − 1) · (R_i − mean_g)``, with j over the valid members of i's
    group and n_g their count. Groups with fewer than two valid rewards, and all-equal groups, get 0.
    Case R = [1, 0, 0, 0] → [1, −1/3, −1/3, −1/3].
    """
    stats = _GroupStats(rewards, group_ids, ddof=0)
    n = stats.count[stats.row_group]
    advantages = stats.centred * n / (n - 1).clamp(min=1)
    return torch.where(stats.informative_rows(zero_std_rtol), advantages, 0.0).to(torch.float32)


def _as_weights(weights: Tensor | Sequence[float], num_rewards: int, device: torch.device) -> Tensor:
    w = torch.as_tensor(weights, dtype=torch.float64, device=device).reshape(-1)
    if w.numel() != num_rewards:
        raise ValueError(f"got {w.numel()} reward weights for {num_rewards} reward columns")
    return w


def combine_rewards(
    rewards: Tensor,
    weights: Tensor | Sequence[float],
    group_ids: Tensor,
    *,
    mode: str = "sum_then_normalize",
    scale: str = "group",
    std: str = "unbiased",
    eps: float = 1e-4,
    batch_normalize: bool = True,
    zero_std_rtol: float = 1e-6,
) -> Tensor:
    """Advantages ``[B]`` float32 from K reward functions, ``rewards[B, K]`` with weights ``w[K]``.

    NaN rule (both modes): a NaN component is skipped (it contributes 0 to the row's weighted sum); a row
    whose components are all NaN is unscorable and gets advantage 0 and no say in any statistic.

    - ``"sum_then_normalize"`` (TRL's default): ``R_i = Σ_k w_k R_ik`` over the valid components, then
      :func:`group_advantages` with ``scale``/``std``/``eps``.
    - ``"normalize_then_sum"`` (GDPO, arXiv 2601.05242): each column is normalised within its group first,
      ``Â_ik = group_advantages(R_:k)`` (same ``scale``/``std``/``eps``; NaN entries excluded from that
      column's statistics), then ``S_i = Σ_k w_k Â_ik``. As in the paper (and TRL), the sum is then
      normalised over the batch so its range does not grow with K:
      ``A_i = (S_i − mean_batch S) / (std_batch S + eps)``, over the scorable rows; set
      ``batch_normalize=False`` to return ``S`` itself.
    """
    _check_choice("mode", mode, MULTI_REWARD_MODES)
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [B, K], got shape {tuple(rewards.shape)}")
    r = rewards.detach().to(torch.float64)
    w = _as_weights(weights, r.shape[1], r.device)
    if r.shape[0] == 0:
        return torch.zeros(0, dtype=torch.float32, device=r.device)
    scorable = valid_reward_mask(r)

    if mode == "sum_then_normalize":
        summed = torch.nansum(r * w, dim=1)
        summed = torch.where(scorable, summed, float("nan"))
        return group_advantages(summed, group_ids, scale=scale, std=std, eps=eps, zero_std_rtol=zero_std_rtol)

    per_column = torch.stack(
        [_group_advantages64(r[:, k], group_ids, scale, std, eps, zero_std_rtol) for k in range(r.shape[1])],
        dim=1,
    )
    summed = (per_column * w).sum(dim=1)  # NaN entries are already 0 in per_column
    if batch_normalize:
        ddof = _ddof(std)
        mean = torch.where(scorable, summed, 0.0).sum() / scorable.sum().clamp(min=1)
        spread = _masked_std(summed, scorable, ddof)
        too_few = scorable.sum() < 2 or bool(spread <= zero_std_rtol * summed.abs().max())
        summed = torch.zeros_like(summed) if too_few else (summed - mean) / (spread + eps)
    return torch.where(scorable, summed, 0.0).to(torch.float32)


# ----------------------------------------------------------------------------- registered estimators
# ``rewards`` is ``[B]`` (one total per completion) or ``[B, K]`` with ``weights[K]`` (several reward functions).


def _weighted_total(rewards: Tensor, weights: Tensor | None) -> Tensor:
    """``[B]``: the rewards themselves, or Σ_k w_k·r_k in float64 (NaN when any component is NaN)."""
    if rewards.dim() == 1:
        return rewards
    return (rewards.to(torch.float64) * torch.as_tensor(weights).to(torch.float64)).sum(dim=1)


def _scaled(rewards: Tensor, weights: Tensor | None, group_ids: Tensor, scale: str, *,
            multi_reward: str, std: str, advantage_eps: float) -> Tensor:
    if rewards.dim() == 1:  # one total: the multi-reward mode has nothing to combine
        return group_advantages(rewards, group_ids, scale=scale, std=std, eps=advantage_eps)
    return combine_rewards(rewards, weights, group_ids, mode=multi_reward, scale=scale, std=std, eps=advantage_eps)


@register_advantage("group", summary="GRPO z-score (R − mean_g) / (std_g + eps)")
def group_zscore_advantages(
    rewards: Tensor, weights: Tensor | None, group_ids: Tensor, *, multi_reward: str, std: str, advantage_eps: float
) -> Tensor:
    """:func:`group_advantages` with ``scale="group"`` (several rewards: :func:`combine_rewards`)."""
    return _scaled(rewards, weights, group_ids, "group",
                   multi_reward=multi_reward, std=std, advantage_eps=advantage_eps)


@register_advantage("none", summary="Dr. GRPO: R − mean_g, no std division")
def group_centred_advantages(
    rewards: Tensor, weights: Tensor | None, group_ids: Tensor, *, multi_reward: str, std: str, advantage_eps: float
) -> Tensor:
    """:func:`group_advantages` with ``scale="none"`` (several rewards: :func:`combine_rewards`)."""
    return _scaled(rewards, weights, group_ids, "none",
                   multi_reward=multi_reward, std=std, advantage_eps=advantage_eps)


@register_advantage("batch", summary="(R − mean_g) / (std of the whole batch + eps) (REINFORCE++, TRL batch)")
def batch_std_advantages(
    rewards: Tensor, weights: Tensor | None, group_ids: Tensor, *, multi_reward: str, std: str, advantage_eps: float
) -> Tensor:
    """:func:`group_advantages` with ``scale="batch"`` (several rewards: :func:`combine_rewards`)."""
    return _scaled(rewards, weights, group_ids, "batch",
                   multi_reward=multi_reward, std=std, advantage_eps=advantage_eps)


@register_advantage("rloo", summary="RLOO: R − mean of the other completions of the group")
def leave_one_out_advantages(rewards: Tensor, weights: Tensor | None, group_ids: Tensor) -> Tensor:
    """:func:`rloo_advantages` of the weighted total reward."""
    return rloo_advantages(_weighted_total(rewards, weights), group_ids)


@register_advantage("gpg", summary="GPG: α·(R − mean_g), α = B / (B − completions of all-equal groups)")
def gpg_advantages(rewards: Tensor, weights: Tensor | None, group_ids: Tensor, zero_std_rtol: float = 1e-6) -> Tensor:
    """GPG's corrected advantage (arXiv 2504.02546, §"accurate gradient estimation"), ``[B]`` float32.

    ``A_i = α·(R_i − mean_g)`` with ``α = B / (B − M)``: B the completions with a valid reward, M those in
    groups whose rewards are all equal (or that have one valid reward), whose advantage is 0. Those rows
    still count in a mean over the batch, so α scales the others back up to the gradient of the informative
    completions alone. No std division (the paper's F_norm = 1). Case R = [1, 0, 0, 0 | 1, 1, 1, 1]:
    α = 8/4 = 2 → [1.5, −0.5, −0.5, −0.5, 0, 0, 0, 0]. verl's ``gpg`` estimator counts non-zero rewards
    for M instead.
    """
    stats = _GroupStats(_weighted_total(rewards, weights), group_ids, ddof=0)
    informative = stats.informative_rows(zero_std_rtol)
    alpha = stats.valid.sum() / informative.sum().clamp(min=1)
    return torch.where(informative, stats.centred * alpha, 0.0).to(torch.float32)


def compute_advantages(
    preset: Preset, rewards: Tensor, weights: Tensor | Sequence[float] | None, group_ids: Tensor
) -> Tensor:
    """The advantage of every completion, ``[B]`` float32, by the estimator ``preset.advantage`` names.

    ``rewards[B]`` is one total reward per completion (``weights`` None; ``multi_reward`` does not apply) or
    ``rewards[B, K]`` the K reward functions' scores with ``weights[K]`` (``preset.multi_reward`` combines
    them). NaN marks an unscorable reward (advantage 0, see the module docstring). Both trainers call this,
    so a new estimator is one ``@register_advantage`` function.
    """
    if rewards.dim() == 2 and weights is None:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} need one weight per column")
    if rewards.dim() not in (1, 2):
        raise ValueError(f"rewards must be [B] or [B, K], got shape {tuple(rewards.shape)}")
    return ADVANTAGE_ESTIMATORS.call(
        preset.advantage, preset, rewards=rewards, weights=weights, group_ids=group_ids
    )
