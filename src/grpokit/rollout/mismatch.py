"""Do the rollout engine and the trainer agree on the sampled tokens' log-probs?

The engine records log μ(y_t) while sampling; the trainer recomputes log π(y_t) with its own forward.
Same weights, dtype, tokenizer and template give |Δ| ≈ 1e-5 in float32 (bf16 kernels: ~1e-2); a
weight sync that did not land, a different checkpoint, dtype or chat template gives |Δ| of order 1.
The trainer checks this once, before its first update, and fails fast instead of training on an
off-policy batch it believes is on-policy. With adapter-only sync to vLLM (`lora_sync`) the check
covers base + adapter; a fresh LoRA adapter (B = 0) equals its base, so a lost adapter shows only
once B ≠ 0: a resumed run, or a policy started from a trained adapter. Afterwards the mismatch is logged every step
(`train/mismatch_abs_logratio_mean`) and corrected by the preset's truncated/masked IS.
"""

from __future__ import annotations

from torch import Tensor


class BehaviourMismatchError(RuntimeError):
    """The engine's log-probs disagree with the trainer's beyond the tolerance."""


def logprob_mismatch(trainer_logp: Tensor, behaviour_logp: Tensor, mask: Tensor) -> dict[str, float]:
    """Over the tokens where `mask` is set: mean and max of |log π − log μ|, and the token count.

    Case: trainer [−1, −2], engine [−1.1, −2.0], mask [1, 1] → mean 0.05, max 0.1, tokens 2.
    """
    valid = mask.bool()
    diff = (trainer_logp.float() - behaviour_logp.float()).abs()[valid]
    if diff.numel() == 0:
        return {"mean_abs": 0.0, "max_abs": 0.0, "tokens": 0.0}
    return {"mean_abs": float(diff.mean()), "max_abs": float(diff.max()), "tokens": float(diff.numel())}


def check_behaviour_logprobs(trainer_logp: Tensor, behaviour_logp: Tensor, mask: Tensor, *,
                             tolerance: float, engine: str) -> dict[str, float]:
    """`logprob_mismatch`, raising `BehaviourMismatchError` when its mean exceeds `tolerance`."""
    stats = logprob_mismatch(trainer_logp, behaviour_logp, mask)
    if stats["mean_abs"] > tolerance:
        raise BehaviourMismatchError(
            f"rollout engine {engine!r} and the trainer disagree on the log-probs of the sampled tokens: "
            f"mean |log π_trainer − log μ_engine| = {stats['mean_abs']:.4f} (max {stats['max_abs']:.4f}) over "
            f"{int(stats['tokens'])} tokens, above rollout.mismatch_tolerance = {tolerance}. Likely causes: "
            "the engine serves other weights (the weight sync did not land, or the server was started on a "
            "different checkpoint than model.name_or_path; with rollout.vllm.weight_sync: adapter, the LoRA "
            "adapter was not applied); a different dtype (rollout.vllm.dtype vs "
            "model.dtype); a different tokenizer or chat template; or top_p < 1 / top_k > 0, whose "
            "truncation vLLM folds into its log-probs. Raise rollout.mismatch_tolerance only if the "
            "difference is expected (e.g. bf16 kernels)."
        )
    return stats
