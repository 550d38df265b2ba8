"""Every seed a training run derives from its base seed (`training.seed`), in one place.

Each random stream of a run is seeded from (base seed, step) rather than carried over from the
previous step, so a resumed run draws exactly what an uninterrupted one would. Different streams
are kept apart by multiplying the base seed by a different prime stride: for the streams of two
bases to meet, their steps would have to be a whole stride apart.

The values are part of every recorded result (the demo line, the experiments): changing a stride
changes every run, so they are fixed here, named, and tested against their literal values.
"""

from __future__ import annotations

SAMPLING_STRIDE = 1_000_003  # rollouts: LM completions, flow SDE noise and trained-step masks
GENERATION_ROUND_STRIDE = 17  # the (dynamic-sampling) generation rounds of one LM step
MINI_BATCH_STRIDE = 7919  # the mini-batch shuffles of an update
TOKEN_KEY_STRIDE = 104_729  # Clip-Cov's random token keys
EVALUATION_OFFSET = 99_991  # held-out evaluation draws (the same every evaluation of a run)
GROUP_CALL_STRIDE = 7919  # separates the per-G engine calls of one generation (unequal group sizes)
ENGINE_PROMPT_STRIDE = 65_537  # the prompts of one engine call without per-prompt seeds (vLLM)


def sampling_seed(base: int, call: int) -> int:
    """The seed of rollout call `call` (an LM generation call, `generation_call`; a flow step)."""
    return base * SAMPLING_STRIDE + call


def generation_call(step: int, round_index: int) -> int:
    """The LM trainer's generation call for round `round_index` (dynamic sampling) of step `step`
    (0-based); rounds of one step stay apart from the next step's while fewer than 17."""
    return step * GENERATION_ROUND_STRIDE + round_index


def mini_batch_seed(base: int, step: int) -> int:
    """The generator seed of the mini-batch shuffles of step `step`'s update."""
    return base * MINI_BATCH_STRIDE + step


def token_key_seed(base: int, step: int) -> int:
    """The generator seed of the random token keys (Clip-Cov's selection) of step `step`'s update."""
    return base * TOKEN_KEY_STRIDE + step


def evaluation_seed(base: int) -> int:
    """The seed of every held-out evaluation of a run (the same draw each time: curves differ by the policy)."""
    return base + EVALUATION_OFFSET


def group_call_seed(seed: int, call: int) -> int:
    """The seed of the `call`-th engine call (one per distinct group size) of a generation seeded `seed`."""
    return seed + GROUP_CALL_STRIDE * (call + 1)


def engine_prompt_seed(seed: int, index: int) -> int:
    """The seed of prompt `index` of an engine call seeded `seed` that got no per-prompt seeds. vLLM gives
    the k-th of n children seed + k, so prompts are spaced 65 537 apart and their streams never overlap."""
    return seed * SAMPLING_STRIDE + ENGINE_PROMPT_STRIDE * index
