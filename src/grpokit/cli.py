"""`grpokit` command line: train, eval, demo, presets, report, vllm-serve, vllm-env."""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grpokit", description="Group-relative RL post-training.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a policy from a YAML config")
    train.add_argument("config", help="path to the YAML config")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field, e.g. --set training.learning_rate=1e-5 (repeatable)")

    evaluate = commands.add_parser("eval", help="evaluate a policy on the config's eval set")
    evaluate.add_argument("config")
    evaluate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    demo = commands.add_parser("demo", help="the embedded CPU demo: tiny model, arithmetic, GRPO")
    demo.add_argument("task", nargs="?", choices=["arithmetic", "flow"], default="arithmetic",
                      help="arithmetic (language model) or flow (digits flow model, GRPO-Guard)")
    demo.add_argument("--run-dir", default=None, help="default: runs/demo (arithmetic), runs/demo_flow (flow)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--steps", type=int, default=None, help="GRPO steps (default: the demo recipe's)")

    commands.add_parser("presets", help="list the algorithm presets")

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


def print_presets() -> None:
    from rich.console import Console
    from rich.table import Table

    from grpokit.algorithms.presets import PRESETS
    from grpokit.flow.presets import FLOW_PRESETS

    table = Table(title="grpokit presets (language models)")
    for column in ("preset", "meaning", "G", "advantage", "ratio", "clip (low, high)", "aggregation", "β"):
        table.add_column(column)
    for name, p in PRESETS.items():
        table.add_row(name, p.summary, str(p.num_generations), p.advantage, p.ratio_level,
                      f"{p.eps_low:g}, {p.eps_high:g}", p.aggregation, f"{p.beta:g}")
    console = Console()
    console.print(table)
    flow = Table(title="flow-matching presets (`trainer: flow`)")
    for column in ("preset", "meaning", "noise a", "RatioNorm", "step balancing", "clip (low, high)"):
        flow.add_column(column)
    for name, p in FLOW_PRESETS.items():
        flow.add_row(name, p.summary, f"{p.noise_level:g}", str(p.ratio_norm), str(p.step_balancing),
                     f"{p.loss.eps_low:g}, {p.loss.eps_high:g}")
    console.print(flow)


def _is_flow_config(path: str) -> bool:
    from grpokit.flow.config import is_flow_config  # a YAML with `trainer: flow`

    return is_flow_config(path)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from grpokit.config_schema import ConfigError
    from grpokit.data import DataError

    try:
        if args.command == "presets":
            print_presets()
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

            run_flow_command(args.command, args.config, args.overrides)
        elif args.command in ("train", "eval"):
            from grpokit.trainers.lm_build import build_trainer
            from grpokit.trainers.lm_config import load_lm_config

            config = load_lm_config(args.config, args.overrides)
            _warn_if_accelerate_started_one_process()
            trainer = build_trainer(config)
            if args.command == "train":
                trainer.train()
            else:
                if trainer.eval_data is None:
                    raise ConfigError("data.eval_path: required for `grpokit eval`")
                from grpokit.trainers.lm_state import resume_latest

                resume_latest(trainer)
                for key, value in trainer.evaluate().items():
                    print(f"{key}: {value:.2f}")
    except ConfigError as error:
        print(f"grpokit: config error: {error}", file=sys.stderr)
        return 2
    except DataError as error:
        print(f"grpokit: data error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
