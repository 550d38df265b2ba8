"""One system (grpokit or TRL) on the shared setup of `bench/vs_trl.py`, run in its own process.

`python bench/_vs_trl_systems.py {grpokit|trl} MU BETA STEPS OUT.json` trains for STEPS GRPO
steps (one step = one rollout of 16 prompts × 8 completions + μ passes of updates) and writes
per-step timings, token counts and the process's peak RSS to OUT.json.
`python bench/_vs_trl_systems.py check - BETA - OUT.json` runs the step-0 equivalence check.

Both systems get the same model (same seed, same weights), tokenizer, prompts, reward,
sampling and optimizer settings; everything is built locally (no hub access). Timing and the
check hook into GRPOTrainer's `_generate`, `_generate_and_score_completions` and `compute_loss`
(written against TRL 1.16).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

for _name, _value in {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "TRANSFORMERS_VERBOSITY": "error",
}.items():
    os.environ.setdefault(_name, _value)

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VOCAB_SIZE = 32_768
MODEL = {
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "intermediate_size": 256,
    "max_position_embeddings": 128,
}
PROMPTS_PER_STEP = 16
NUM_GENERATIONS = 8
MAX_NEW_TOKENS = 64
MICRO_BATCH_SIZE = 32  # sequences per forward/backward; 128 / 32 = 4 accumulation steps per update
LEARNING_RATE = 1e-6
ADAM_BETAS = (0.9, 0.999)  # TRL's (transformers') defaults, given to grpokit too
MAX_GRAD_NORM = 1.0
SEED = 0
WARMUP_PROMPTS, WARMUP_NEW_TOKENS = 2, 8  # the untimed warm-up step of each process
CHECK_PROMPTS = 4  # prompts (× 8 completions × 64 tokens) in the step-0 equivalence check


def build_tokenizer():
    """A `PreTrainedTokenizerFast` with 32,768 entries: specials, the arithmetic characters, filler words.

    Prompts ("37+58=") are split into single characters; a random model's completions are words
    drawn from the whole vocabulary, so the logits path (lm_head + softmax over 32k) dominates.
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from grpokit.tasks.arithmetic import ALPHABET

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]  # ids 0, 1, 2, 3 as build_tiny_causal_lm expects
    fillers = [f"w{i}" for i in range(VOCAB_SIZE - len(specials) - len(ALPHABET))]
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


def build_model():
    """Tiny Qwen2 (2.2M parameters, 94% of them the tied 32k × 64 embedding), seeded."""
    from grpokit.models import build_tiny_causal_lm

    return build_tiny_causal_lm(VOCAB_SIZE, seed=SEED, **MODEL)


def prompt_records(count: int) -> list[dict]:
    from grpokit.tasks.arithmetic import arithmetic_split

    return [{"prompt": r["prompt"]} for r in arithmetic_split("+", 99, heldout=10, seed=SEED).train[:count]]


def words_ending_in_even_digit(completions, **kwargs) -> list[float]:
    """Cheap reward with spread inside each group: the fraction of words whose last character is even."""
    scores = []
    for text in completions:
        words = text.split()
        scores.append(sum(w[-1] in "02468" for w in words) / max(len(words), 1))
    return scores


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _timed(function, log: list, count_tokens):
    """Wrap `function` so that each call appends (seconds, completion tokens) to `log`."""

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        result = function(*args, **kwargs)
        log.append((time.perf_counter() - started, count_tokens(result)))
        return result

    return wrapper


class StepClock:
    """Wall-clock and process CPU time at the start and at the end of every GRPO step."""

    def __init__(self, system: str, steps: int):
        self.system, self.steps = system, steps
        self.marks = [(time.perf_counter(), time.process_time())]

    def step_done(self) -> None:
        self.marks.append((time.perf_counter(), time.process_time()))
        wall, cpu = (self.marks[-1][k] - self.marks[-2][k] for k in (0, 1))
        print(
            f"    {self.system} step {len(self.marks) - 1}/{self.steps}: {wall:.1f} s ({cpu:.1f} s CPU)",
            flush=True,
        )

    def result(self, rollouts: list) -> dict:
        return {
            "step_seconds": [b[0] - a[0] for a, b in zip(self.marks, self.marks[1:])],
            "step_cpu_seconds": [b[1] - a[1] for a, b in zip(self.marks, self.marks[1:])],
            "rollouts": rollouts,
            "peak_rss_mib": _peak_rss_mib(),
        }


def _prepare_torch() -> None:
    # One thread: a shared 2-core machine, and tiny matmuls (see /tmp/common2.md in the project notes).
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    torch.manual_seed(SEED)


# ---------------------------------------------------------------------------------------------- grpokit
def _grpokit_trainer(
    mu: int,
    beta: float,
    steps: int,
    run_dir: Path,
    *,
    prompts_per_step: int = PROMPTS_PER_STEP,
    max_new_tokens: int = MAX_NEW_TOKENS,
    micro_batch_size: int = MICRO_BATCH_SIZE,
    max_grad_norm: float = MAX_GRAD_NORM,
):
    from grpokit.data import PromptDataset
    from grpokit.models.loading import Policy
    from grpokit.rewards import RewardRunner, load_reward
    from grpokit.trainers.lm_build import build_trainer
    from grpokit.trainers.lm_config import load_lm_config

    tokenizer = build_tokenizer()
    model = build_model()
    config = load_lm_config(
        {
            "model": {"name_or_path": "<built in memory>"},
            "data": {"path": "<arithmetic prompts>"},
            "rewards": [{"function": "words_ending_in_even_digit"}],
            "algorithm": {"preset": "grpo", "overrides": {"beta": beta}},
            "rollout": {
                "prompts_per_step": prompts_per_step,
                "num_generations": NUM_GENERATIONS,
                "max_new_tokens": max_new_tokens,
                "temperature": 1.0,
                "top_p": 1.0,
                "top_k": 0,
            },
            "training": {
                "max_steps": steps,
                "num_iterations": mu,
                "mini_batches": 1,
                "micro_batch_size": micro_batch_size,
                "learning_rate": LEARNING_RATE,
                "adam_beta1": ADAM_BETAS[0],
                "adam_beta2": ADAM_BETAS[1],
                "max_grad_norm": max_grad_norm,
                "lr_schedule": "constant",
                "seed": SEED,
            },
            "logging": {"run_dir": str(run_dir), "tensorboard": False, "progress": False, "plot": False},
            "checkpoint": {"resume": False},
        }
    )
    data = PromptDataset.from_records(prompt_records(prompts_per_step * steps), source="arithmetic")
    rewards = RewardRunner([load_reward(words_ending_in_even_digit)])
    return build_trainer(
        config, policy=Policy(model, tokenizer, is_lora=False), train_data=data, reward_runner=rewards
    )


def run_grpokit(mu: int, beta: float, steps: int, run_dir: Path) -> dict:
    # Warm-up (not timed): one small step through the same code paths.
    _grpokit_trainer(
        mu,
        beta,
        1,
        run_dir / "warmup",
        prompts_per_step=WARMUP_PROMPTS,
        max_new_tokens=WARMUP_NEW_TOKENS,
        micro_batch_size=WARMUP_PROMPTS * NUM_GENERATIONS,
    ).train()
    trainer = _grpokit_trainer(mu, beta, steps, run_dir / "measured")
    rollouts: list = []
    trainer.engine.generate = _timed(
        trainer.engine.generate, rollouts, lambda batch: int(batch.completion_mask.sum())
    )
    clock = StepClock("grpokit", steps)

    class OnStepEnd:
        def on_step_end(self, trainer, step, metrics):
            clock.step_done()

    trainer.callbacks.append(OnStepEnd())
    clock.marks[0] = (time.perf_counter(), time.process_time())
    trainer.train()
    return clock.result(rollouts)


# ---------------------------------------------------------------------------------------------- TRL
def _trl_config(
    mu: int,
    beta: float,
    output_dir: Path,
    *,
    max_steps: int,
    prompts_per_step: int = PROMPTS_PER_STEP,
    max_new_tokens: int = MAX_NEW_TOKENS,
    per_device_batch: int = MICRO_BATCH_SIZE,
):
    from trl import GRPOConfig

    generation_batch = prompts_per_step * NUM_GENERATIONS
    return GRPOConfig(
        output_dir=str(output_dir),
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=10_000,
        disable_tqdm=True,
        log_level="error",
        seed=SEED,
        data_seed=SEED,
        per_device_train_batch_size=per_device_batch,
        gradient_accumulation_steps=generation_batch // per_device_batch,
        num_generations=NUM_GENERATIONS,
        max_completion_length=max_new_tokens,
        num_iterations=mu,
        beta=beta,
        loss_type="grpo",
        scale_rewards="group",
        epsilon=0.2,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        adam_beta1=ADAM_BETAS[0],
        adam_beta2=ADAM_BETAS[1],
        max_grad_norm=MAX_GRAD_NORM,
        max_steps=max_steps,
        dataloader_num_workers=0,
        bf16=False,
        fp16=False,
    )


def _saved_model_dir(root: Path) -> Path:
    """TRL builds its reference model from the policy's path, so the policy is saved locally first."""
    path = root / "model"
    build_model().save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return path


def _trl_trainer(config, model_dir: Path, prompts: list[dict], callbacks=()):
    from datasets import Dataset
    from trl import GRPOTrainer

    return GRPOTrainer(
        model=str(model_dir),
        reward_funcs=[words_ending_in_even_digit],
        args=config,
        train_dataset=Dataset.from_list(prompts),
        processing_class=build_tokenizer(),
        callbacks=list(callbacks),
    )


def run_trl(mu: int, beta: float, steps: int, run_dir: Path) -> dict:
    from transformers import TrainerCallback

    clock = StepClock("trl", steps)

    class OnStepEnd(TrainerCallback):
        def __init__(self):
            self.optimizer_steps = 0

        def on_step_begin(self, args, state, control, **kwargs):
            if self.optimizer_steps == 0:  # start the clock after TRL's set-up (optimizer, accelerate, data)
                clock.marks[0] = (time.perf_counter(), time.process_time())

        def on_step_end(self, args, state, control, **kwargs):
            self.optimizer_steps += 1
            if self.optimizer_steps % mu == 0:  # TRL counts optimizer steps: μ of them per GRPO step
                clock.step_done()

    model_dir = _saved_model_dir(run_dir)
    # Warm-up (not timed): one small step through the same code paths.
    warmup = _trl_config(
        mu,
        beta,
        run_dir / "warmup",
        max_steps=mu,
        prompts_per_step=WARMUP_PROMPTS,
        max_new_tokens=WARMUP_NEW_TOKENS,
        per_device_batch=WARMUP_PROMPTS * NUM_GENERATIONS,
    )
    _trl_trainer(warmup, model_dir, prompt_records(WARMUP_PROMPTS)).train()
    config = _trl_config(mu, beta, run_dir / "measured", max_steps=steps * mu)
    trainer = _trl_trainer(config, model_dir, prompt_records(PROMPTS_PER_STEP * steps), [OnStepEnd()])
    rollouts: list = []
    trainer._generate = _timed(trainer._generate, rollouts, lambda out: sum(len(ids) for ids in out[1]))
    clock.marks[0] = (time.perf_counter(), time.process_time())
    trainer.train()
    return clock.result(rollouts)


# ---------------------------------------------------------------------------------------------- step-0 check
def step0_check(beta: float, root: Path) -> dict:
    """Same rollout batch into both trainers at step 0: advantages, ref log-probs, loss and gradients.

    At step 0 the ratio is 1 and the group z-scored advantages sum to 0 in every group, so the
    GRPO loss itself is ≈ 0 for both; the gradients are what carries the comparison.
    """
    from grpokit.rollout import SamplingParams
    from grpokit.trainers.scored import ScoredRollout

    rows = CHECK_PROMPTS * NUM_GENERATIONS
    grpokit = _grpokit_trainer(
        1, beta, 1, root / "grpokit", prompts_per_step=CHECK_PROMPTS, micro_batch_size=rows, max_grad_norm=1e9
    )
    rollout = grpokit.engine.generate(
        [r["prompt"] for r in prompt_records(CHECK_PROMPTS)],
        NUM_GENERATIONS,
        SamplingParams(max_new_tokens=MAX_NEW_TOKENS, seed=SEED),
    )
    rewards = torch.tensor(words_ending_in_even_digit(rollout.completions)).unsqueeze(1)
    scored = ScoredRollout(
        rollout=rollout,
        rewards=rewards,
        reward_names=["words_ending_in_even_digit"],
        total_reward=rewards[:, 0],
        prompt_indices=list(range(CHECK_PROMPTS)),
    )
    batch = grpokit.prepare(scored)
    ours = grpokit.update(batch, 0)  # one optimizer step; gradients are unclipped (max_grad_norm 1e9)
    our_grads = {n: p.grad.clone() for n, p in grpokit.model.named_parameters()}

    trl = _trl_trainer(
        _trl_config(
            1, beta, root / "trl", max_steps=1, prompts_per_step=CHECK_PROMPTS, per_device_batch=rows
        ),
        _saved_model_dir(root),
        [{"prompt": p} for p in rollout.prompts],
    )
    lengths = rollout.completion_mask.sum(1).tolist()
    prompt_ids = [ids[mask.bool()].tolist() for ids, mask in zip(rollout.prompt_ids, rollout.prompt_mask)]
    completion_ids = [ids[:n].tolist() for ids, n in zip(rollout.completion_ids, lengths)]
    trl._generate = lambda prompts: (
        prompt_ids,
        completion_ids,
        None,
        list(rollout.completions),
        None,
        {},
        None,
        [],
    )
    trl.model.train()
    trl.current_gradient_accumulation_steps = 1
    inputs = trl._generate_and_score_completions([{"prompt": p} for p in rollout.prompts])
    trl.model.zero_grad()
    trl_loss = trl.compute_loss(trl.model, inputs)
    trl_loss.backward()
    trl_grads = dict(trl.model.named_parameters())

    mask = rollout.completion_mask.bool()
    grad_gap = max(float((our_grads[n] - p.grad).abs().max()) for n, p in trl_grads.items())
    grad_scale = max(float(p.grad.abs().max()) for p in trl_grads.values())
    result = {
        "beta": beta,
        "grpokit_loss": ours["loss"],
        "trl_loss": float(trl_loss.detach()),
        "advantage_max_abs_diff": float((batch.advantages - inputs["advantages"].view(-1)).abs().max()),
        "grad_max_abs_diff": grad_gap,
        "grad_max_abs": grad_scale,
    }
    if beta > 0:
        ref_gap = (batch.ref_logprobs - inputs["ref_per_token_logps"])[mask].abs().max()
        result["ref_logprob_max_abs_diff"] = float(ref_gap)
        result["ref_logprob_mean"] = float(batch.ref_logprobs[mask].mean())  # ≈ −log 32768 for a random model
    return result


def main(argv: list[str]) -> None:
    role, mu, beta, steps, out = argv
    _prepare_torch()
    sys.path.insert(0, str(REPO / "src"))
    with tempfile.TemporaryDirectory(prefix=f"vs_trl_{role}_") as tmp:
        if role == "check":
            result = step0_check(float(beta), Path(tmp))
        else:
            run = {"grpokit": run_grpokit, "trl": run_trl}[role]
            result = run(int(mu), float(beta), int(steps), Path(tmp))
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
