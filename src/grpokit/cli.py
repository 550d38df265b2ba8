"""`grpokit` command line: train, eval, demo, presets, config, report, vllm-serve, vllm-env."""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import sys
import threading
from collections.abc import Iterator

THREADS_HELP = ("torch threads (intra- and inter-op) of this process, set before the model loads; overrides "
                "training.num_threads. On a shared CPU one thread per process is usually fastest")
# OS errors that come from the user's paths, disks or permissions: one line, not a traceback.
_USER_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.ENOSPC,
                errno.EROFS, errno.EDQUOT, errno.EEXIST, errno.ENAMETOOLONG}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grpokit", description="Group-relative RL post-training.")
    parser.add_argument("--debug", action="store_true", default=_env_flag("GRPOKIT_DEBUG"),
                        help="show the traceback of a configuration, data, reward, model or I/O error "
                             "(also GRPOKIT_DEBUG=1); without it such errors are one line and exit code 2")
    parser.add_argument("--threads", type=int, default=None, metavar="N", help=THREADS_HELP)
    # The same flag after the subcommand; SUPPRESS keeps the subparser from overwriting the global value.
    threads = argparse.ArgumentParser(add_help=False)
    threads.add_argument("--threads", type=int, default=argparse.SUPPRESS, metavar="N", help=THREADS_HELP)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a policy from a YAML config", parents=[threads])
    train.add_argument("config", help="path to the YAML config")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field, e.g. --set training.learning_rate=1e-5 (repeatable)")
    train.add_argument("--continue", dest="continue_after_stop", action="store_true",
                       help="train on a run that a guard stopped (else a rerun says so and stops); "
                            "same as --set guards.continue_after_stop=true")

    evaluate = commands.add_parser(
        "eval", help="evaluate a run's latest checkpoint on the config's eval set (read-only)", parents=[threads],
        description="Evaluate the latest checkpoint of the config's logging.run_dir on data.eval_path. Nothing "
                    "in the run directory is created or changed. Accuracies are in percent.")
    evaluate.add_argument("config")
    evaluate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    evaluate.add_argument("--base", action="store_true",
                          help="evaluate the configured base model (model.name_or_path), not a checkpoint")
    evaluate.add_argument("--show", type=int, default=0, metavar="K",
                          help="also print K held-out prompts with their completion and every reward's score")

    demo = commands.add_parser("demo", help="the embedded CPU demo: tiny model, arithmetic, GRPO")
    demo.add_argument("task", nargs="?", choices=["arithmetic", "flow"], default="arithmetic",
                      help="arithmetic (language model) or flow (digits flow model, GRPO-Guard)")
    demo.add_argument("--run-dir", default=None, help="default: runs/demo (arithmetic), runs/demo_flow (flow)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--steps", type=int, default=None, help="GRPO steps (default: the demo recipe's)")

    commands.add_parser("presets", help="list the algorithm presets")

    config = commands.add_parser(
        "config", help="print the config fields with their defaults and help (e.g. `grpokit config rollout`)",
        description="Every field of a training config: its default, type and what it does; a SECTION (e.g. "
                    "rollout, guards.entropy) prints that section only. docs/config.md is `--markdown`.")
    config.add_argument("section", nargs="?", default=None, help="a section, e.g. rollout or rollout.vllm")
    config.add_argument("--flow", action="store_true", help="the flow trainer's config (trainer: flow)")
    config.add_argument("--markdown", action="store_true",
                        help="the whole reference as Markdown (how docs/config.md is written)")

    report = commands.add_parser("report", help="write RUN_DIR/report.html (proxy vs gold, entropy, alarms)")
    report.add_argument("run_dir", help="a run directory holding metrics.jsonl")
    report.add_argument("--out", default=None, help="where to write the HTML (default RUN_DIR/report.html)")

    serve = commands.add_parser(
        "vllm-serve", help="start a vLLM server that trainers connect to (rollout.engine: vllm_server)",
        description="Start grpokit's vLLM server for MODEL in the vLLM environment (created on first use; "
                    "see grpokit.rollout.vllm_env). Options after MODEL go to the server: --host, --port, "
                    "--dtype, --max-model-len, --max-num-seqs, --gpu-memory-utilization, "
                    "--tensor-parallel-size, --kv-cache-gib, --seed.")
    serve.add_argument("model", help="local directory or hub id")
    serve.add_argument("server_args", nargs=argparse.REMAINDER, help="passed to the server")

    commands.add_parser(
        "vllm-env", help="print the Python of grpokit's vLLM environment (vLLM + grpokit), creating it once",
        description="For rollout.engine: vllm_colocate, which needs vLLM and grpokit in one process: "
                    "train with `$(grpokit vllm-env) -m grpokit train config.yaml`.")
    return parser


def vllm_serve(model: str, server_args: list[str]) -> int:
    """Replace this process with the vLLM server, run by the vLLM environment's Python."""
    import os

    from grpokit.rollout.vllm_env import SERVER_SCRIPT, ensure_vllm_python

    python = ensure_vllm_python()
    command = [str(python), str(SERVER_SCRIPT), model, *server_args]
    print("+ " + " ".join(command), file=sys.stderr, flush=True)
    os.execv(command[0], command)
    return 0  # not reached


def _warn_if_accelerate_started_one_process() -> None:
    """`accelerate launch --num_processes N` without GPUs silently starts ONE process: say so."""
    import os

    launched_by_accelerate = "ACCELERATE_MIXED_PRECISION" in os.environ
    if launched_by_accelerate and "WORLD_SIZE" not in os.environ:
        import torch

        if not torch.cuda.is_available():
            print("grpokit: accelerate started a single process; on CPU, `accelerate launch --multi_gpu "
                  "--num_processes N` starts N (gloo)", file=sys.stderr)


def print_config_schema(section: str | None, *, flow: bool, markdown: bool) -> None:
    """`grpokit config [SECTION] [--flow] [--markdown]`: the documented schema, wrapped to the terminal."""
    import shutil

    from grpokit import config_docs

    if markdown:
        print(config_docs.render_markdown(), end="")
        return
    if flow:
        from grpokit.flow.config import FlowTrainConfig as root
    else:
        from grpokit.trainers.lm_config import LMTrainConfig as root
    width = min(shutil.get_terminal_size().columns, 100)
    print(config_docs.render_text(root, section, width=width), end="")


# Below this terminal width the preset tables wrap every cell; `grpokit presets` prints a list instead.
PRESET_TABLE_MIN_COLUMNS = 160


def print_presets() -> None:
    import shutil

    from grpokit.algorithms.presets import PRESETS
    from grpokit.flow.presets import FLOW_PRESETS

    width = shutil.get_terminal_size().columns  # honours $COLUMNS
    if width < PRESET_TABLE_MIN_COLUMNS:
        _print_presets_as_list(PRESETS, FLOW_PRESETS, width)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="grpokit presets (language models)")
    for column in ("preset", "meaning", "G", "advantage", "ratio", "surrogate", "clip (low, high)", "aggregation",
                   "β"):
        table.add_column(column)
    for name, p in PRESETS.items():
        table.add_row(name, p.summary, str(p.num_generations), p.advantage, p.ratio_level, p.surrogate,
                      _clip_bounds(p), p.aggregation, f"{p.beta:g}")
    console = Console()
    console.print(table)
    mechanisms = Table(title="registered mechanisms: the values of these Preset fields (`algorithm.overrides`)")
    for column in ("field", "value", "meaning"):
        mechanisms.add_column(column)
    for field_name, name, summary in _registered_mechanisms():
        mechanisms.add_row(field_name, name, summary)
    console.print(mechanisms)
    flow = Table(title="flow-matching presets (`trainer: flow`)")
    for column in ("preset", "meaning", "noise a", "RatioNorm", "step balancing", "clip (low, high)"):
        flow.add_column(column)
    for name, p in FLOW_PRESETS.items():
        flow.add_row(name, p.summary, f"{p.noise_level:g}", str(p.ratio_norm), str(p.step_balancing),
                     f"{p.loss.eps_low:g}, {p.loss.eps_high:g}")
    console.print(flow)


def _print_presets_as_list(presets: dict, flow_presets: dict, width: int) -> None:
    """Narrow terminals: per preset, one line of choices and its meaning wrapped under it."""
    import textwrap

    def entry(name: str, choices: str, summary: str) -> None:
        print(textwrap.fill(f"{name}  {choices}", width=width, subsequent_indent="    "))
        print(textwrap.fill(summary, width=width, initial_indent="    ", subsequent_indent="    "))

    print(textwrap.fill("grpokit presets (language models): G · advantage · ratio · surrogate · clip (low, high) · "
                        "aggregation · β", width=width))
    for name, p in presets.items():
        entry(name, f"G={p.num_generations} · {p.advantage} · {p.ratio_level} · {p.surrogate} · clip "
                    f"{_clip_bounds(p)} · {p.aggregation} · β={p.beta:g}", p.summary)
    print("\n" + textwrap.fill("registered mechanisms: the values of these Preset fields (`algorithm.overrides`)",
                              width=width))
    for field_name, name, summary in _registered_mechanisms():
        print(textwrap.fill(f"{field_name}: {name} — {summary}", width=width, initial_indent="  ",
                            subsequent_indent="      "))
    print("\n" + textwrap.fill("flow-matching presets (`trainer: flow`): noise a · RatioNorm · step balancing · "
                              "clip (low, high)", width=width))
    for name, p in flow_presets.items():
        entry(name, f"a={p.noise_level:g} · RatioNorm {'on' if p.ratio_norm else 'off'} · step balancing "
                    f"{'on' if p.step_balancing else 'off'} · clip {p.loss.eps_low:g}, {p.loss.eps_high:g}",
              p.summary)


def _clip_bounds(preset) -> str:
    """The clip bounds as "eps_low, eps_high", or "—" when the preset's surrogate reads none (SAPO, GPG)."""
    from grpokit.algorithms.registry import SURROGATES

    if "eps_low" not in SURROGATES.get(preset.surrogate).preset_args:
        return "—"
    return f"{preset.eps_low:g}, {preset.eps_high:g}"


def _registered_mechanisms() -> list[tuple[str, str, str]]:
    """(Preset field, registered name, summary) of every registered surrogate, advantage estimator, KL
    estimator and aggregation mode (grpokit.algorithms.registry): what `grpokit presets` lists."""
    import grpokit.algorithms.presets  # noqa: F401  (importing the presets registers the built-ins)
    from grpokit.algorithms.registry import REGISTRIES

    return [(r.preset_field, e.name, e.summary) for r in REGISTRIES for e in r.entries()]


def _is_flow_config(path: str) -> bool:
    from grpokit.flow.config import is_flow_config  # a YAML with `trainer: flow`

    return is_flow_config(path)


@contextlib.contextmanager
def _one_line_warnings(enabled: bool):
    """grpokit's own warnings (a damaged checkpoint skipped, a stale lock taken over, an old log moved
    aside...) as `grpokit: warning: ...` lines; with --debug, Python's format with the source line."""
    import warnings

    original = warnings.formatwarning

    def one_line(message, category, filename, lineno, line=None):
        if category is UserWarning and f"{os.sep}grpokit{os.sep}" in filename:
            return f"grpokit: warning: {message}\n"
        return original(message, category, filename, lineno, line)

    if enabled:
        warnings.formatwarning = one_line
    try:
        yield
    finally:
        warnings.formatwarning = original


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or `kill`'s stop), raised in the main thread like Ctrl-C, so that every
    `finally` runs: the run lock is released, logs are flushed, an async producer is stopped."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # signal handlers: main thread only
        yield
        return

    def terminate(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Run one command; user mistakes print `grpokit: <kind> error: ...` and return 2 (see grpokit.errors)."""
    args = _parser().parse_args(argv)
    from grpokit.errors import GrpokitError

    try:
        with _one_line_warnings(enabled=not args.debug), _sigterm_raises():
            return _run(args)
    except GrpokitError as error:
        if args.debug:
            raise
        print(f"grpokit: {error.kind} error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if args.debug or error.errno not in _USER_ERRNOS:
            raise
        where = f": {error.filename}" if error.filename is not None else ""
        print(f"grpokit: I/O error: {error.strerror or error}{where}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.threads is not None:
        from grpokit.trainers.lm_build import set_torch_threads

        set_torch_threads(args.threads)
    if args.command in ("train", "eval", "demo"):
        from grpokit.models.loading import quiet_known_library_noise

        quiet_known_library_noise()
    try:
        if args.command == "presets":
            print_presets()
        elif args.command == "config":
            print_config_schema(args.section, flow=args.flow, markdown=args.markdown)
        elif args.command == "vllm-serve":
            return vllm_serve(args.model, args.server_args)
        elif args.command == "vllm-env":
            from grpokit.rollout.vllm_env import ensure_vllm_python

            print(ensure_vllm_python(with_grpokit=True))
        elif args.command == "report":
            from grpokit.report import write_report

            try:
                print(write_report(args.run_dir, args.out))
            except FileNotFoundError as error:
                print(f"grpokit: {error}", file=sys.stderr)
                return 2
        elif args.command == "demo" and args.task == "flow":
            from grpokit.flow.demo import run_flow_demo

            run_flow_demo(run_dir=args.run_dir or "runs/demo_flow", seed=args.seed, steps=args.steps)
        elif args.command == "demo":
            from grpokit.demo import run_demo

            run_demo(run_dir=args.run_dir or "runs/demo", seed=args.seed, grpo_steps=args.steps)
        elif args.command in ("train", "eval") and _is_flow_config(args.config):
            from grpokit.flow.build import run_flow_command

            run_flow_command(args.command, args.config, args.overrides, base=getattr(args, "base", False),
                             show=getattr(args, "show", 0))
        elif args.command in ("train", "eval"):
            from grpokit.trainers.lm_build import build_trainer
            from grpokit.trainers.lm_config import load_lm_config

            threads = [] if args.threads is None else [f"training.num_threads={args.threads}"]
            go_on = ["guards.continue_after_stop=true"] if getattr(args, "continue_after_stop", False) else []
            config = load_lm_config(args.config, [*args.overrides, *threads, *go_on])
            _warn_if_accelerate_started_one_process()
            if args.command == "train":
                from grpokit.run_dir import lock_before_building

                with lock_before_building(config.logging.run_dir):  # a second trainer stops before loading
                    build_trainer(config).train()
            else:
                from grpokit.trainers.eval_command import run_lm_eval

                run_lm_eval(config, base=args.base, show=args.show)
    except KeyboardInterrupt as interruption:
        if args.debug:
            raise
        if isinstance(interruption, _Terminated):
            print("grpokit: terminated (SIGTERM); the same command resumes from the last checkpoint",
                  file=sys.stderr)
            return 128 + signal.SIGTERM
        print("grpokit: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
