"""Command line: ``python -m rl {train,plot,envs}``. Bad flags or settings → one line on stderr, exit status 2."""

from __future__ import annotations

import argparse
import sys

from .config import MITIGATORS, PAPER7_ENVS, Config


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


# flag → (Config field, type, help); every flag defaults to "not given" so --resume can tell what was passed
TRAIN_FLAGS: dict[str, tuple[str, type, str]] = {
    "--env": ("env", str, "DMC task <domain>-<task> (python -m rl envs lists them)"),
    "--mitigator": ("mitigators", str, f"one or more of {', '.join(MITIGATORS)} (one agent per mitigator and seed)"),
    "--seeds": ("seeds", int, "one or more seeds (evaluation envs use seed+42)"),
    "--steps": ("steps", int, "env steps in total"),
    "--replay-ratio": ("replay_ratio", int, "gradient updates per env step (16)"),
    "--out": ("out", str, "run directory; agent folders <mitigator>-s<seed> inside (default runs/<env>)"),
    "--buffer-size": ("buffer_size", int, "replay capacity (1000000; the paper's bounded variant: 250000)"),
    "--warmup-steps": ("warmup_steps", int, "random-policy transitions before learning (10000)"),
    "--eval-interval": ("eval_interval", int, "env steps between evaluations (10000)"),
    "--eval-episodes": ("eval_episodes", int, "deterministic episodes per evaluation (10)"),
    "--batch-size": ("batch_size", int, "batch size (256)"),
    "--action-repeat": ("action_repeat", int, "simulator steps per agent step (1)"),
    "--critics": ("critics", int, "1 (the paper) or 2 (clipped double Q)"),
    "--reset-interval": ("reset_interval", int, "updates between full resets for --mitigator resets (2560000)"),
    "--strength": ("spectral_strength", float, "decoupled spectral strength λ for --mitigator spectral (1.0)"),
    "--strengths": ("strengths", float, "a grid: one agent per strength for spectral, l2 and l2-init"),
    "--l2-strength": ("l2_strength", float, "coefficient for --mitigator l2 / l2-init (1e-4)"),
    "--hidden": ("hidden", int, "hidden width (256)"),
    "--checkpoint-interval": ("checkpoint_interval", int, "env steps between checkpoints (10000)"),
    "--device": ("device", str, "torch device (cpu)"),
    "--threads": ("threads", int, "torch.set_num_threads; 0 keeps torch's default"),
    "--env-workers": ("env_workers", int, "processes stepping the environments; 0 = none, -1 = automatic"),
}
LISTS = {"mitigators", "seeds", "strengths"}  # flags taking one or more values


def _field_help() -> dict[str, str]:
    """Each Config field's trailing comment in rl/config.py (its one documentation), for --help."""
    import inspect
    import re

    source = inspect.getsource(Config)
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^    (\w+): [^=\n]+=[^#\n]+#\s*(.*)$", source, re.M)}


def _remaining_fields(flags: dict, parser: argparse.ArgumentParser) -> list[tuple[str, type, str]]:
    """(field, type, help) of the Config fields no flag above sets yet."""
    import dataclasses

    taken = {dest for dest, _, _ in flags.values()} | {a.dest for a in parser._actions}
    helps = _field_help()
    kinds = {"int": int, "float": float, "str": str, "bool": bool}
    return [(f.name, kinds[f.type], helps.get(f.name, "") + f" (default {f.default})")
            for f in dataclasses.fields(Config) if f.name not in taken and f.type in kinds]


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m rl", description="High-replay-ratio SAC with plasticity mitigators on DMC.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    t = sub.add_parser("train", help="train every (mitigator, seed) agent together in one process",
                       argument_default=argparse.SUPPRESS)
    for flag, (field, kind, help_) in TRAIN_FLAGS.items():
        names = (flag, "--mitigators") if flag == "--mitigator" else (flag, "--seed") if flag == "--seeds" else (flag,)
        t.add_argument(*names, dest=field, type=kind, help=help_, metavar=field.upper(),
                       nargs="+" if field in LISTS else None)
    t.add_argument("--no-spectral-heads", dest="spectral_heads", action="store_false",
                   help="spectral: leave the output layers (Q head, policy head) unregularized")
    t.add_argument("--compile", dest="compile", action="store_true", help="torch.compile the update")
    t.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                   help="on CUDA, launch every update's kernels instead of replaying one graph per block")
    t.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm progress bar")
    for field, kind, help_ in _remaining_fields(TRAIN_FLAGS, t):  # every other Config field, named after it
        flag = "--" + field.replace("_", "-")
        if kind is bool:
            t.add_argument(flag, dest=field, action=argparse.BooleanOptionalAction, help=help_)
        else:
            t.add_argument(flag, dest=field, type=kind, help=help_, metavar=field.upper())
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    pl = sub.add_parser("plot", help="return vs env steps per mitigator, mean ± standard error over seeds")
    pl.add_argument("runs", nargs="+", help="run directories (or directories holding runs)")
    pl.add_argument("-o", "--output", default="fig.png", help="figure path (fig.png)")
    sub.add_parser("envs", help="list the DMC tasks and the paper7 preset")
    return p


def main(argv: list[str] | None = None) -> int:
    args = vars(_parser().parse_args(argv))
    command = args.pop("command")
    try:
        if command == "envs":
            from .envs import available_envs

            print("paper7 preset: " + " ".join(PAPER7_ENVS))
            print("\n".join(available_envs()))
            return 0
        if command == "plot":
            from .plot import plot

            print(plot(args["runs"], args["output"]))
            return 0
        return _train(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"python -m rl {command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"python -m rl {command}: interrupted: the rows up to the last evaluation are written; continue from "
              "the last checkpoint with the same command and --resume", file=sys.stderr)
        return 130


def _train(args: dict) -> int:
    resume = args.pop("resume", False)
    explicit = set(args)
    if "out" not in args:
        if resume:
            raise ValueError("--resume needs --out (the run directory)")
        args["out"] = f"runs/{args.get('env', Config().env)}"
    for field in LISTS & set(args):
        args[field] = tuple(args[field])
    cfg = Config(**args)
    cfg.validate()
    if cfg.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"--device {cfg.device} but CUDA is not available")
    from .envs import parse_env_name

    parse_env_name(cfg.env)  # fail fast, before any file is written
    _quiet_absl()
    from .train import train

    out = train(cfg, resume=resume, explicit=explicit)
    print(f"wrote {out}/config.json, {out}/checkpoint.pt and per agent {out}/<mitigator>-s<seed>/metrics.csv")
    return 0


def _quiet_absl() -> None:
    """dm_control's model compiler logs a deprecation warning through absl on every env; keep the bar readable."""
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:
        pass
