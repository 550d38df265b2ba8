"""Cross-check policy_loss against TRL's GRPOTrainer._compute_loss on identical random inputs.

TRL's trainer is built with ``__new__`` (no model, no dataset, no accelerate state) and given only the
attributes ``_compute_loss`` reads; its log-prob forward is replaced by a stub returning our tensors, so
both implementations see the same logp / old_logp / ref_logp / advantages / mask. If a TRL release
renames those attributes this test fails with an AttributeError naming the one to add.

Conventions matched on purpose:
- TRL's ``use_bias_correction_kl`` (default True) multiplies the KL term by the ratio (DeepSeek-V3.2); grpokit's
  KL term is plain β·k3, so the check sets it to False.
- TRL's cispo ``epsilon_high`` is the absolute cap ε_max; grpokit's is relative: ε_max = 1 + eps_high.
- TRL's ``top_entropy_quantile=ρ`` keeps the top ρ; grpokit's quantile q keeps H ≥ q-quantile, q = 1 − ρ.
- TRL's dapo/cispo divide by ``num_items_in_batch`` (the generation batch's token count); grpokit's
  ``num_tokens``. grpo/bnpo/dr_grpo divide by the gradient-accumulation steps, 1 here except where stated.
"""

from __future__ import annotations

import types
from collections import defaultdict

import pytest
import torch

from grpokit.algorithms import get_preset, policy_loss

trl = pytest.importorskip("trl")
GRPOTrainer = trl.GRPOTrainer

MAX_LEN = 6


class _SingleProcessAccelerator:
    num_processes = 1

    def gather(self, x):
        return x

    def gather_for_metrics(self, x):
        return x

    def reduce(self, x, reduction="sum"):
        return x

    def pad_across_processes(self, x, dim=0, pad_index=0):
        return x


def _trl_loss(
    loss_type,
    logp,
    old_logp,
    advantages,
    mask,
    *,
    entropy,
    epsilon=0.2,
    epsilon_high=None,
    beta=0.0,
    ref_logp=None,
    level="token",
    top_entropy_quantile=1.0,
    num_items_in_batch=None,
    accumulation_steps=1,
):
    trainer = GRPOTrainer.__new__(GRPOTrainer)
    trainer.loss_type = loss_type
    trainer.epsilon_low = epsilon
    trainer.epsilon_high = epsilon if epsilon_high is None else epsilon_high
    trainer.beta = beta
    trainer.args = types.SimpleNamespace(
        delta=None, use_bias_correction_kl=False, steps_per_generation=accumulation_steps
    )
    trainer.importance_sampling_level = level
    trainer.top_entropy_quantile = top_entropy_quantile
    trainer.off_policy_mask_threshold = None
    trainer.use_vllm = False
    trainer.vllm_importance_sampling_correction = False
    trainer.model = types.SimpleNamespace(training=True)
    trainer.current_gradient_accumulation_steps = accumulation_steps
    trainer.max_completion_length = MAX_LEN
    trainer.accelerator = _SingleProcessAccelerator()
    trainer._entropy_bonus_enabled = False
    trainer.aux_loss_enabled = False
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer._get_per_token_logps_and_entropies = lambda *args, **kwargs: (logp, entropy, None)
    batch, length = logp.shape
    inputs = {
        "prompt_ids": torch.zeros(batch, 1, dtype=torch.long),
        "prompt_mask": torch.ones(batch, 1, dtype=torch.long),
        "completion_ids": torch.zeros(batch, length, dtype=torch.long),
        "completion_mask": mask,
        "advantages": advantages,
        "old_per_token_logps": old_logp,
        "num_items_in_batch": torch.tensor(
            float(mask.sum() if num_items_in_batch is None else num_items_in_batch)
        ),
    }
    if ref_logp is not None:
        inputs["ref_per_token_logps"] = ref_logp
    return trainer._compute_loss(None, inputs), trainer._metrics["train"]


def _inputs(seed=0, batch=6):
    gen = torch.Generator().manual_seed(seed)
    logp = -torch.rand(batch, MAX_LEN, generator=gen, dtype=torch.float64) * 2 - 0.1
    lengths = torch.randint(1, MAX_LEN + 1, (batch,), generator=gen)
    return {
        "logp": logp,
        "old_logp": logp + torch.randn(batch, MAX_LEN, generator=gen, dtype=torch.float64) * 0.3,
        "ref_logp": logp + torch.randn(batch, MAX_LEN, generator=gen, dtype=torch.float64) * 0.3,
        "advantages": torch.randn(batch, generator=gen, dtype=torch.float64),
        "mask": (torch.arange(MAX_LEN) < lengths.unsqueeze(1)).long(),
        "entropy": torch.rand(batch, MAX_LEN, generator=gen, dtype=torch.float64) * 2,
    }


# (TRL loss_type, TRL kwargs, grpokit preset with the matching settings)
CASES = {
    "grpo": ("grpo", {"beta": 0.04}, get_preset("grpo")),
    "dr_grpo": ("dr_grpo", {}, get_preset("dr_grpo")),
    "dapo": ("dapo", {"epsilon_high": 0.28}, get_preset("dapo")),
    "bnpo": ("bnpo", {"beta": 0.04}, get_preset("bnpo")),
    "cispo": ("cispo", {"epsilon_high": 5.0}, get_preset("cispo")),
    # with ε_max = 5 the random ratios (< 1.4) never reach the cap; ε_max = 1.2 exercises the clipped weight
    "cispo_cap_1.2": ("cispo", {"epsilon_high": 1.2}, get_preset("cispo", eps_high=0.2)),
    "gspo": ("grpo", {"epsilon": 3e-4, "epsilon_high": 4e-4, "level": "sequence"}, get_preset("gspo")),
    "grpo_top_entropy": (
        "grpo",
        {"top_entropy_quantile": 0.2},
        get_preset("grpo", beta=0.0, top_entropy_quantile=0.8),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_policy_loss_matches_trl_loss_and_gradient(case):
    loss_type, trl_kwargs, preset = CASES[case]
    data = _inputs()
    trl_logp = data["logp"].clone().requires_grad_()
    trl_value, trl_metrics = _trl_loss(
        loss_type,
        trl_logp,
        data["old_logp"],
        data["advantages"],
        data["mask"],
        entropy=data["entropy"],
        ref_logp=data["ref_logp"],
        **trl_kwargs,
    )
    (trl_grad,) = torch.autograd.grad(trl_value, trl_logp)

    logp = data["logp"].clone().requires_grad_()
    value, metrics = policy_loss(
        preset,
        logp,
        data["old_logp"],
        data["advantages"],
        data["mask"],
        ref_logp=data["ref_logp"],
        entropy=data["entropy"],
        max_len=MAX_LEN,
    )
    (grad,) = torch.autograd.grad(value, logp)

    torch.testing.assert_close(value, trl_value)
    torch.testing.assert_close(grad, trl_grad)
    assert trl_grad.abs().sum() > 0
    # TRL averages sequence-level clip indicators over sequences, grpokit over valid tokens (its documented scope)
    if loss_type != "cispo" and preset.ratio_level == "token":
        assert metrics["clip_frac_high"].item() == pytest.approx(trl_metrics["clip_ratio/high_mean"][-1])
        assert metrics["clip_frac_low"].item() == pytest.approx(trl_metrics["clip_ratio/low_mean"][-1])
    if preset.beta > 0:
        assert metrics["kl"].item() == pytest.approx(trl_metrics["kl"][-1])


def test_dapo_gradient_accumulation_matches_trl_with_global_token_count():
    """Two micro-batches: TRL divides each by the generation batch's token count, as grpokit's num_tokens does."""
    data = _inputs(seed=1, batch=8)
    total_tokens = data["mask"].sum()
    trl_total, ours_total = 0.0, 0.0
    for rows in (slice(0, 3), slice(3, 8)):
        part = {k: v[rows] for k, v in data.items()}
        trl_value, _ = _trl_loss(
            "dapo",
            part["logp"],
            part["old_logp"],
            part["advantages"],
            part["mask"],
            entropy=part["entropy"],
            epsilon_high=0.28,
            num_items_in_batch=total_tokens,
            accumulation_steps=2,
        )
        value, _ = policy_loss(
            get_preset("dapo"),
            part["logp"],
            part["old_logp"],
            part["advantages"],
            part["mask"],
            num_tokens=total_tokens,
        )
        trl_total, ours_total = trl_total + trl_value, ours_total + value
    full, _ = policy_loss(
        get_preset("dapo"), data["logp"], data["old_logp"], data["advantages"], data["mask"]
    )
    torch.testing.assert_close(ours_total, trl_total)
    torch.testing.assert_close(ours_total, full)
