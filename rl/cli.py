"""Command line: ``python -m rl {train,sweep,study,report,plot,pack,migrate,envs,convert-checkpoint}``. Bad flags or settings → one
line on stderr, exit status 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from specopt.experiment import add_config_flags, given_fields, os_error_line, stdout_closed

from .config import MITIGATORS, PAPER7_ENVS, Config
from .studies import STUDIES


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m rl", description="High-replay-ratio SAC with plasticity mitigators on DMC.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    t = sub.add_parser("train", help="train every (mitigator, seed) agent together in one process",
                       argument_default=argparse.SUPPRESS)
    add_config_flags(t, Config, names={"mitigators": ("--mitigator", "--mitigators"), "seeds": ("--seeds", "--seed"),
                                       "spectral_strength": ("--strength", "--spectral-strength")},
                     choices={"mitigators": MITIGATORS})
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    sw = sub.add_parser("sweep", help="the same grid split over processes (groups of seeds), local or on Ray; "
                                      "resumable; ends with its report (report.md, report.json, returns.png)",
                        argument_default=argparse.SUPPRESS)
    add_config_flags(sw, Config, names={"mitigators": ("--mitigator", "--mitigators"), "seeds": ("--seeds", "--seed"),
                                        "spectral_strength": ("--strength", "--spectral-strength")},
                     choices={"mitigators": MITIGATORS}, skip=("threads",))
    sw.add_argument("--seeds-per-process", type=int, default=1, help="seeds trained together in one process "
                    "(every mitigator and strength of the grid for them; default 1)")
    sw.add_argument("--workers", type=int, help="processes at once (default: one per CPU core locally; with --backend "
                                                "ray, as many as the cluster schedules)")
    sw.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    sw.add_argument("--backend", choices=("local", "ray"), default="local")
    sw.add_argument("--ray-address", help="the Ray cluster to join: auto or HOST:PORT (default: a local Ray)")
    st = sub.add_parser("study", help="a declared study of docs/strength.md (rl.studies): its processes, resumable, "
                                      "local or on Ray, then its table")
    st.add_argument("name", choices=sorted(STUDIES))
    st.add_argument("--out", default="results", help="where the study's folder goes (default results/: the committed "
                                                    "rows, so finished processes are skipped)")
    st.add_argument("--report", action="store_true", help="run nothing: the table of the finished agents")
    st.add_argument("--steps", type=int, help="override the study's env steps (a tiny version)")
    st.add_argument("--workers", type=int, help="processes at once (default: one per CPU core locally)")
    st.add_argument("--backend", choices=("local", "ray"), default="local")
    st.add_argument("--ray-address", help="the Ray cluster to join (default: a local Ray)")
    st.add_argument("--no-progress", action="store_true", help="no progress lines")
    rp = sub.add_parser("report", help="the table of any agents at their last evaluation and the code versions they "
                        "mix; with --out, report.md, report.json and returns.png")
    rp.add_argument("runs", nargs="+", help="run directories (or directories holding runs: sweeps, studies)")
    rp.add_argument("--out", help="the folder to write the report and figure into (default: print the report only)")
    pl = sub.add_parser("plot", help="return vs env steps per mitigator, mean ± standard error over seeds (report's "
                        "figure alone)")
    pl.add_argument("runs", nargs="+", help="run directories (or directories holding runs)")
    pl.add_argument("-o", "--output", default="fig.png", help="figure path (fig.png)")
    for name, text in (("pack", "fold the finished agents of runs into one rows.csv + runs.jsonl per run (the "
                                "committed form of results/)"),
                       ("migrate", "rename the agents of runs written before rl named its runs as continual does "
                                   "(<mitigator>-s<seed>/metrics.csv → <mitigator>-seed<seed>/results.csv), packed "
                                   "or not")):
        sub.add_parser(name, help=text).add_argument("folders", nargs="+",
                                                     help="run directories, or directories holding runs")
    sub.add_parser("envs", help="list the DMC tasks and the paper7 preset")
    cc = sub.add_parser("convert-checkpoint", help="rewrite a trusted checkpoint from before checkpoints were plain "
                                                  "tensors (docs/security.md); resume reads only plain ones")
    cc.add_argument("path", help="a run directory (its checkpoint.pt) or a checkpoint file")
    cc.add_argument("--trust", action="store_true",
                    help="required: converting unpickles the file, which runs any code it names")
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
        if command == "convert-checkpoint":
            from specopt.experiment import convert_checkpoint

            from .train import CONVERT_COMMAND

            print(convert_checkpoint(args["path"], args["trust"], CONVERT_COMMAND.format(out=args["path"])))
            return 0
        if command == "report":
            from .plot import report

            text, note = report(args["runs"], args["out"])
            print(f"{text}\n\n{note}")
            if args["out"]:
                print(f"report: {Path(args['out']) / 'report.md'}, {Path(args['out']) / 'report.json'}, "
                      f"{Path(args['out']) / 'returns.png'}")
            return 0
        if command == "plot":
            from .plot import plot

            print(plot(args["runs"], args["output"]))
            return 0
        if command in ("pack", "migrate"):
            from .sweep import migrate, pack

            act, done = (pack, "finished agents packed") if command == "pack" else (migrate, "agents renamed")
            for folder in args["folders"]:
                print(f"{folder}: {len(act(Path(folder)))} {done}")
            return 0
        if command == "sweep":
            return _sweep(args)
        if command == "study":
            return _study(args)
        return _train(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"python -m rl {command}: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # an environment worker died under the run (rl.envs.EnvWorkerDied)
        from .envs import EnvWorkerDied

        if not isinstance(e, EnvWorkerDied):
            raise
        print(f"python -m rl {command}: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `... | head`: the reader has what it wanted
        return stdout_closed()
    except OSError as e:  # a read-only or full --out, a folder removed under a run: the file and the reason
        print(f"python -m rl {command}: error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"python -m rl {command}: interrupted: the rows up to the last evaluation are written; continue from "
              "the last checkpoint with the same command and --resume", file=sys.stderr)
        return 130


def _study(args: dict) -> int:
    from specopt.runs import RunFailed

    from .studies import run_study, table

    out = Path(args["out"])
    overrides = {"steps": args["steps"]} if args.get("steps") else {}
    if args["report"]:
        print(table(args["name"], out, overrides))
        return 0
    try:
        print(run_study(args["name"], out, overrides, args["workers"], 1, args["backend"], args["ray_address"],
                        progress=not args["no_progress"]))
    except RunFailed as e:
        print(f"python -m rl study: error: {e}", file=sys.stderr)
        return 1
    return 0


def _sweep(args: dict) -> int:
    from specopt.runs import RunFailed

    from .envs import parse_env_name
    from .sweep import sweep

    options = {k: args.pop(k, None) for k in ("seeds_per_process", "workers", "threads", "backend", "ray_address")}
    cfg = Config(**given_fields(Config, args))
    cfg.validate()
    parse_env_name(cfg.env)  # fail fast, before any file is written
    try:
        per = options["seeds_per_process"]
        print(sweep(cfg, 1 if per is None else per, options["workers"], options["threads"] or 1,
                    options["backend"] or "local", options["ray_address"], progress=cfg.progress))
    except RunFailed as e:
        print(f"python -m rl sweep: error: {e}", file=sys.stderr)
        return 1
    return 0


def _train(args: dict) -> int:
    resume = args.pop("resume", False)
    args = given_fields(Config, args)
    explicit = set(args)
    if resume and "out" not in args:
        raise ValueError("--resume needs --out (the run directory)")
    cfg = Config(**args)
    cfg.validate()
    if cfg.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"--device {cfg.device} but CUDA is not available")
    from .envs import parse_env_name, quiet_absl

    parse_env_name(cfg.env)  # fail fast, before any file is written
    quiet_absl()
    from .train import train

    train(cfg, resume=resume, explicit=explicit)
    out = Path(cfg.out)
    print(f"wrote {out}/config.json, {out}/checkpoint.pt and per agent {out}/<mitigator>-seed<seed>/results.csv")
    return 0

