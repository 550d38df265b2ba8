"""One system (grpokit or TRL) on one setting of `bench/_vs_trl_setups.py`, run in its own process.

`python bench/_vs_trl_systems.py SETUP {grpokit|trl} MU BETA STEPS THREADS OUT.json` trains for
STEPS GRPO steps (one step = one rollout of prompts_per_step × G completions + μ passes of
updates) after one small untimed warm-up step, and writes per-step timings, token counts, the
process's peak RSS (and its RSS once the libraries are imported) to OUT.json; for grpokit also
the seconds of each phase of each step. `python bench/_vs_trl_systems.py SETUP check - BETA - 1
OUT.json` runs the step-0 equivalence check (full fine-tuning settings).

Both systems get the same model (same seed, same weights), tokenizer, prompts, reward, sampling
and optimizer settings, and with LoRA the same adapter on the same modules; everything is built
locally (no hub access). TRL runs with `gradient_checkpointing=False`, like grpokit (TRL 1.16
turns it on by default). Timing and the check hook into GRPOTrainer's `_generate`,
`_generate_and_score_completions` and `compute_loss` (written against TRL 1.16).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

if __name__ == "__main__":  # the thread count must be set before torch is imported
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = sys.argv[6]
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
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _vs_trl_setups import SEED, SETUPS, Setup  # noqa: E402

LEARNING_RATE = 1e-6
ADAM_BETAS = (0.9, 0.999)  # TRL's (transformers') defaults, given to grpokit too
MAX_GRAD_NORM = 1.0
WARMUP_PROMPTS, WARMUP_NEW_TOKENS = 2, 8  # the untimed warm-up step of each process
CHECK_PROMPTS = 4  # prompts (× 8 completions × 64 tokens) in the step-0 equivalence check


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

    def __init__(self, system: str, steps: int, on_step=None):
        self.system, self.steps, self.on_step = system, steps, on_step
        self.marks = [(time.perf_counter(), time.process_time())]

    def start(self) -> None:
        self.marks[0] = (time.perf_counter(), time.process_time())

    def step_done(self) -> None:
        self.marks.append((time.perf_counter(), time.process_time()))
        wall, cpu = (self.marks[-1][k] - self.marks[-2][k] for k in (0, 1))
        print(
            f"    {self.system} step {len(self.marks) - 1}/{self.steps}: {wall:.1f} s ({cpu:.1f} s CPU)",
            flush=True,
        )
        if self.on_step is not None:
            self.on_step()

    def result(self, rollouts: list, import_rss_mib: float, **extra) -> dict:
        return {
            "step_seconds": [b[0] - a[0] for a, b in zip(self.marks, self.marks[1:])],
            "step_cpu_seconds": [b[1] - a[1] for a, b in zip(self.marks, self.marks[1:])],
            "rollouts": rollouts,
            "peak_rss_mib": _peak_rss_mib(),
            "import_rss_mib": import_rss_mib,
            "threads": torch.get_num_threads(),
            **extra,
        }


class PhaseClock:
    """Seconds per phase of each grpokit step, from wrappers around the trainer's own methods.

    rollout = prefill (the engine's first forward) + decode forwards + sampling and the loop (the
    rest of `engine.generate`); old/ref log-prob passes; training forward, backward, optimizer
    step; `other` (rewards, advantages, bookkeeping) is the step's remainder, filled in by the caller.
    Also which phase raised the process's peak RSS, by how many MiB (`peak_rss_growth_mib`).
    """

    def __init__(self):
        self.current: dict[str, float] = defaultdict(float)
        self.steps: list[dict[str, float]] = []
        self.peak_rss_growth_mib: dict[str, float] = defaultdict(float)
        self._in_rollout = False
        self._forwards = 0
        self._forward_started = 0.0

    def wrap(self, owner, attribute: str, phase, when=lambda *a, **k: True) -> None:
        function = getattr(owner, attribute)

        def wrapper(*args, **kwargs):
            if not when(*args, **kwargs):
                return function(*args, **kwargs)
            started, peak = time.perf_counter(), _peak_rss_mib()
            try:
                return function(*args, **kwargs)
            finally:
                name = phase(*args, **kwargs) if callable(phase) else phase
                self.current[name] += time.perf_counter() - started
                self.peak_rss_growth_mib[name] += _peak_rss_mib() - peak

        setattr(owner, attribute, wrapper)

    def watch_rollout_forwards(self, trainer) -> None:
        generate = trainer.engine.generate

        def rollout(*args, **kwargs):
            self._in_rollout, self._forwards = True, 0
            started, peak = time.perf_counter(), _peak_rss_mib()
            try:
                return generate(*args, **kwargs)
            finally:
                self._in_rollout = False
                self.current["rollout"] += time.perf_counter() - started
                self.peak_rss_growth_mib["rollout"] += _peak_rss_mib() - peak

        def before(module, args, kwargs):
            if self._in_rollout:
                self._forward_started = time.perf_counter()

        def after(module, args, kwargs, output):
            if self._in_rollout:
                phase = "rollout_prefill" if self._forwards == 0 else "rollout_decode_forward"
                self.current[phase] += time.perf_counter() - self._forward_started
                self._forwards += 1

        trainer.engine.generate = rollout
        trainer.engine.model.register_forward_pre_hook(before, with_kwargs=True)
        trainer.engine.model.register_forward_hook(after, with_kwargs=True)

    def step_done(self) -> None:
        self.steps.append(dict(self.current))
        self.current.clear()


def _prepare_torch(threads: int) -> None:
    # Both systems get the same thread count (a shared 2-core machine).
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(SEED)


# ---------------------------------------------------------------------------------------------- grpokit
def _grpokit_trainer(
    setup: Setup,
    model,
    tokenizer,
    mu: int,
    beta: float,
    steps: int,
    run_dir: Path,
    *,
    prompts_per_step: int | None = None,
    max_new_tokens: int | None = None,
    micro_batch_size: int | None = None,
    max_grad_norm: float = MAX_GRAD_NORM,
):
    from grpokit.data import PromptDataset
    from grpokit.models.loading import Policy
    from grpokit.rewards import RewardRunner, load_reward
    from grpokit.trainers.lm_build import build_trainer
    from grpokit.trainers.lm_config import load_lm_config

    prompts_per_step = prompts_per_step or setup.prompts_per_step
    config = load_lm_config(
        {
            "model": {"name_or_path": "<built in memory>"},
            "data": {"path": "<arithmetic prompts>"},
            "rewards": [{"function": setup.reward.__name__}],
            "algorithm": {"preset": "grpo", "overrides": {"beta": beta}},
            "rollout": {
                "prompts_per_step": prompts_per_step,
                "num_generations": setup.num_generations,
                "max_new_tokens": max_new_tokens or setup.max_new_tokens,
                "temperature": 1.0,
                "top_p": 1.0,
                "top_k": 0,
            },
            "training": {
                "max_steps": steps,
                "num_iterations": mu,
                "mini_batches": 1,
                "micro_batch_size": micro_batch_size or setup.micro_batch_size,
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
    if setup.lora is not None:
        from peft import get_peft_model

        torch.manual_seed(SEED)
        model = get_peft_model(model, setup.lora.peft_config())
    records = [{"prompt": p} for p in setup.prompts(prompts_per_step * steps)]
    data = PromptDataset.from_records(records, source="bench prompts")
    rewards = RewardRunner([load_reward(setup.reward)])
    policy = Policy(model, tokenizer, is_lora=setup.lora is not None)
    return build_trainer(config, policy=policy, train_data=data, reward_runner=rewards)


def _base_model_after(setup: Setup, model):
    """The untrained base model for the next trainer: LoRA's adapter removed, or a fresh full model."""
    return model.unload() if setup.lora is not None else setup.build_model()


def run_grpokit(setup: Setup, mu: int, beta: float, steps: int, run_dir: Path, import_rss: float) -> dict:
    tokenizer = setup.build_tokenizer()
    # Warm-up (not timed): one small step through the same code paths.
    warmup = _grpokit_trainer(
        setup,
        setup.build_model(),
        tokenizer,
        mu,
        beta,
        1,
        run_dir / "warmup",
        prompts_per_step=WARMUP_PROMPTS,
        max_new_tokens=WARMUP_NEW_TOKENS,
        micro_batch_size=WARMUP_PROMPTS * setup.num_generations,
    )
    warmup.train()
    base = _base_model_after(setup, warmup.model)
    del warmup
    trainer = _grpokit_trainer(setup, base, tokenizer, mu, beta, steps, run_dir / "measured")
    phases = PhaseClock()
    phases.watch_rollout_forwards(trainer)
    rollouts: list = []
    trainer.engine.generate = _timed(
        trainer.engine.generate, rollouts, lambda batch: int(batch.completion_mask.sum())
    )
    phases.wrap(trainer, "_logprobs_no_grad", lambda *a, reference: "ref_logprobs" if reference else "old_logprobs")
    phases.wrap(trainer, "_forward_logprobs", "train_forward", when=lambda *a, **k: k.get("with_entropy"))
    phases.wrap(trainer, "_backward", "backward")
    phases.wrap(trainer.optimizer, "step", "optimizer")
    clock = StepClock("grpokit", steps, on_step=phases.step_done)

    class OnStepEnd:
        def on_step_end(self, trainer, step, metrics):
            clock.step_done()

    trainer.callbacks.append(OnStepEnd())
    before_measured = _peak_rss_mib()  # the warm-up's and set-up's peak
    clock.start()
    trainer.train()
    return clock.result(
        rollouts,
        import_rss,
        phases=phases.steps,
        peak_rss_before_measured_mib=before_measured,
        peak_rss_growth_mib=dict(phases.peak_rss_growth_mib),
    )


# ---------------------------------------------------------------------------------------------- TRL
def _trl_config(
    setup: Setup,
    mu: int,
    beta: float,
    output_dir: Path,
    *,
    max_steps: int,
    prompts_per_step: int | None = None,
    max_new_tokens: int | None = None,
    per_device_batch: int | None = None,
):
    from trl import GRPOConfig

    per_device_batch = per_device_batch or setup.micro_batch_size
    generation_batch = (prompts_per_step or setup.prompts_per_step) * setup.num_generations
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
        gradient_checkpointing=False,  # TRL 1.16's default is True; grpokit does not checkpoint either
        num_generations=setup.num_generations,
        max_completion_length=max_new_tokens or setup.max_new_tokens,
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


def _saved_model_dir(setup: Setup, root: Path) -> Path:
    """TRL builds its full-fine-tuning reference model from the policy's path, so the policy is saved first."""
    path = root / "model"
    if not path.exists():
        setup.build_model().save_pretrained(path)
        setup.build_tokenizer().save_pretrained(path)
    return path


def _trl_trainer(setup: Setup, config, model, tokenizer, prompts: list[str], callbacks=()):
    """With LoRA, `model` is the base model object and TRL adds the adapter (its reference: adapter disabled)."""
    from datasets import Dataset
    from trl import GRPOTrainer

    if setup.lora is not None:
        torch.manual_seed(SEED)
    return GRPOTrainer(
        model=model,
        reward_funcs=[setup.reward],
        args=config,
        train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
        processing_class=tokenizer,
        callbacks=list(callbacks),
        peft_config=setup.lora.peft_config() if setup.lora is not None else None,
    )


def run_trl(setup: Setup, mu: int, beta: float, steps: int, run_dir: Path, import_rss: float) -> dict:
    from transformers import TrainerCallback

    clock = StepClock("trl", steps)

    class OnStepEnd(TrainerCallback):
        def __init__(self):
            self.optimizer_steps = 0

        def on_step_begin(self, args, state, control, **kwargs):
            if self.optimizer_steps == 0:  # start the clock after TRL's set-up (optimizer, accelerate, data)
                clock.start()

        def on_step_end(self, args, state, control, **kwargs):
            self.optimizer_steps += 1
            if self.optimizer_steps % mu == 0:  # TRL counts optimizer steps: μ of them per GRPO step
                clock.step_done()

    tokenizer = setup.build_tokenizer()
    # LoRA: the base model object, reused after the warm-up; full fine-tuning: a saved directory.
    model = setup.build_model() if setup.lora is not None else str(_saved_model_dir(setup, run_dir))
    # Warm-up (not timed): one small step through the same code paths.
    warmup_config = _trl_config(
        setup,
        mu,
        beta,
        run_dir / "warmup",
        max_steps=mu,
        prompts_per_step=WARMUP_PROMPTS,
        max_new_tokens=WARMUP_NEW_TOKENS,
        per_device_batch=WARMUP_PROMPTS * setup.num_generations,
    )
    warmup = _trl_trainer(setup, warmup_config, model, tokenizer, setup.prompts(WARMUP_PROMPTS))
    warmup.train()
    if setup.lora is not None:
        model = _base_model_after(setup, warmup.model)
    del warmup
    config = _trl_config(setup, mu, beta, run_dir / "measured", max_steps=steps * mu)
    prompts = setup.prompts(setup.prompts_per_step * steps)
    trainer = _trl_trainer(setup, config, model, tokenizer, prompts, [OnStepEnd()])
    rollouts: list = []
    trainer._generate = _timed(trainer._generate, rollouts, lambda out: sum(len(ids) for ids in out[1]))
    clock.start()
    trainer.train()
    return clock.result(rollouts, import_rss)


# ---------------------------------------------------------------------------------------------- step-0 check
def step0_check(setup: Setup, beta: float, root: Path) -> dict:
    """Same rollout batch into both trainers at step 0: advantages, ref log-probs, loss and gradients.

    At step 0 the ratio is 1 and the group z-scored advantages sum to 0 in every group, so the
    GRPO loss itself is ≈ 0 for both; the gradients are what carries the comparison.
    """
    from grpokit.rollout import SamplingParams
    from grpokit.trainers.scored import ScoredRollout

    rows = CHECK_PROMPTS * setup.num_generations
    tokenizer = setup.build_tokenizer()
    grpokit = _grpokit_trainer(
        setup, setup.build_model(), tokenizer, 1, beta, 1, root / "grpokit",
        prompts_per_step=CHECK_PROMPTS, micro_batch_size=rows, max_grad_norm=1e9,
    )
    rollout = grpokit.engine.generate(
        setup.prompts(CHECK_PROMPTS),
        setup.num_generations,
        SamplingParams(max_new_tokens=setup.max_new_tokens, seed=SEED),
    )
    rewards = torch.tensor(setup.reward(rollout.completions)).unsqueeze(1)
    scored = ScoredRollout(
        rollout=rollout,
        rewards=rewards,
        reward_names=[setup.reward.__name__],
        total_reward=rewards[:, 0],
        prompt_indices=list(range(CHECK_PROMPTS)),
    )
    batch = grpokit.prepare(scored)
    ours = grpokit.update(batch, 0)  # one optimizer step; gradients are unclipped (max_grad_norm 1e9)
    our_grads = {n: p.grad.clone() for n, p in grpokit.model.named_parameters()}

    trl = _trl_trainer(
        setup,
        _trl_config(setup, 1, beta, root / "trl", max_steps=1, prompts_per_step=CHECK_PROMPTS, per_device_batch=rows),
        str(_saved_model_dir(setup, root)),
        tokenizer,
        list(rollout.prompts),
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
    setup_name, role, mu, beta, steps, threads, out = argv
    setup = SETUPS[setup_name]
    _prepare_torch(int(threads))
    # Import both libraries' training stacks before the baseline RSS is read: what a step adds is
    # then what the system allocates for the model and the step, not what importing it costs.
    if role == "trl":
        import trl  # noqa: F401
        from trl import GRPOTrainer  # noqa: F401
    else:
        import grpokit.trainers.lm_build  # noqa: F401
    if setup.lora is not None:
        import peft  # noqa: F401
    import_rss = _peak_rss_mib()
    with tempfile.TemporaryDirectory(prefix=f"vs_trl_{role}_") as tmp:
        if role == "check":
            result = step0_check(setup, float(beta), Path(tmp))
        else:
            run = {"grpokit": run_grpokit, "trl": run_trl}[role]
            result = run(setup, int(mu), float(beta), int(steps), Path(tmp), import_rss)
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
