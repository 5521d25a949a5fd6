"""Command line: ``python -m continual {run,sweep,study,report,plot,pack,convert-checkpoint,demo}``.

    python -m continual run --dataset fashion-mnist --nonstationarity random-labels --model mlp \\
        --mitigator none spectral --tasks 30 --epochs 40 --batch-size 512 --train-size 12800 --seeds 0 1 2 \\
        --out runs/fmnist
    python -m continual run --preset fmnist-random-labels --mitigator spectral --out runs/fmnist-spectral
    python -m continual sweep --mitigator none l2 spectral --strengths 1e-5 1e-4 1e-3 --seeds 0 1 2 --out runs/sw
    python -m continual report runs/fmnist [runs/sw ...] --out runs/report   # table, report.md/.json, figures
    python -m continual plot runs/fmnist [runs/sw ...] -o fig.png    # the figure (and table) alone
    python -m continual demo
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from specopt.experiment import add_config_flags, given_fields, os_error_line, stdout_closed

from .config import RunConfig
from .data import DATASETS, DataError
from .mitigators import MITIGATORS
from .models import MODELS
from .plot import METRICS
from .streams import NONSTATIONARITIES

# The paper's Appendix B settings (tasks, epochs per task, batch size, training images, model).
PRESETS: dict[str, dict] = {
    "fmnist-random-labels": dict(dataset="fashion-mnist", nonstationarity="random-labels", model="mlp",
                                 tasks=50, epochs=40, batch_size=512, train_size=12800),
    "mnist-random-labels": dict(dataset="mnist", nonstationarity="random-labels", model="mlp",
                                tasks=50, epochs=40, batch_size=512, train_size=12800),
    "emnist-random-labels": dict(dataset="emnist", nonstationarity="random-labels", model="mlp",
                                 tasks=50, epochs=100, batch_size=500, train_size=100_000),
    "emnist-label-flip": dict(dataset="emnist", nonstationarity="label-flip", model="mlp",
                              tasks=200, epochs=20, batch_size=500, train_size=100_000),
    "emnist-pixel-permutation": dict(dataset="emnist", nonstationarity="pixel-permutation", model="mlp",
                                     tasks=200, epochs=20, batch_size=500, train_size=100_000),
    "svhn-random-labels": dict(dataset="svhn", nonstationarity="random-labels", model="resnet18",
                               tasks=25, epochs=20, batch_size=500, train_size=50_000),
    "svhn-pixel-permutation": dict(dataset="svhn", nonstationarity="pixel-permutation", model="resnet18",
                                   tasks=100, epochs=10, batch_size=500, train_size=50_000),
    "cifar10-random-labels": dict(dataset="cifar10", nonstationarity="random-labels", model="resnet18",
                                  tasks=30, epochs=20, batch_size=250, train_size=50_000),
    "cifar10-pixel-permutation": dict(dataset="cifar10", nonstationarity="pixel-permutation", model="resnet18",
                                      tasks=100, epochs=10, batch_size=250, train_size=50_000),
    "cifar100-class-incremental": dict(dataset="cifar100", nonstationarity="class-incremental", model="resnet18",
                                       tasks=20, epochs=20, batch_size=250, train_size=50_000),
    "tiny-imagenet-random-labels": dict(dataset="tiny-imagenet", nonstationarity="random-labels",
                                        model="resnet18", tasks=30, epochs=20, batch_size=250),
    "tiny-imagenet-pixel-permutation": dict(dataset="tiny-imagenet", nonstationarity="pixel-permutation",
                                            model="resnet18", tasks=100, epochs=20, batch_size=250),
}


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


class _Parser(argparse.ArgumentParser):
    """One line on a bad flag (the choices are in the message), not the whole usage."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_run_flags(r: argparse.ArgumentParser, sweep: bool = False) -> None:
    """The flags of ``run``: one per :class:`~continual.config.RunConfig` field, generated from it (the defaults
    and the help are the dataclass's; each mitigator's options as ``--spectral.k``, ``--l2.decoupled``, ...), plus
    ``--preset`` and ``--no-progress``. With ``sweep``, those of ``sweep``: the same settings, with ``--strengths`` (a grid) for ``--strength``, ``--workers``/``--backend``/
    ``--ray-address``, ``--threads`` per run (default 1), and neither ``--resume`` (a sweep always continues what is
    in ``--out``) nor ``--vectorize-seeds``."""
    r.add_argument("--preset", choices=sorted(PRESETS), help="the paper's Appendix B setting (flags override)")
    positive_int, positive_float = _positive(int), _positive(float)
    add_config_flags(
        r, RunConfig, skip=("strength", "vectorize_seeds") if sweep else (), required={"out"},
        names={"mitigators": ("--mitigator", "--mitigators"), "seeds": ("--seeds", "--seed")},
        choices={"dataset": DATASETS, "nonstationarity": NONSTATIONARITIES, "model": MODELS, "mitigators": MITIGATORS},
        types={**dict.fromkeys(("tasks", "epochs", "batch_size", "train_size", "width", "probe_size"), positive_int),
               "lr": positive_float})
    if sweep:
        r.add_argument("--strengths", type=_positive(float), nargs="+", metavar="S",
                       help="strengths for every mitigator that has one (default: each one's default); none and "
                            "crelu run once per seed")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    if sweep:
        r.add_argument("--threads", type=_positive(int), default=1, help="CPU threads for torch per run (default 1)")
        r.add_argument("--workers", type=_positive(int),
                       help="runs at once (default: one per CPU core locally; with --backend ray, as many as the "
                            "cluster schedules)")
        r.add_argument("--backend", choices=("local", "ray"), default="local",
                       help='local processes, or Ray tasks (needs pip install "specopt[sweep]")')
        r.add_argument("--ray-address", metavar="ADDR",
                       help="the Ray cluster to join: auto or HOST:PORT (default: start a local Ray instance)")
        return
    r.add_argument("--resume", action="store_true", help="continue the run checkpointed in --out")
    r.add_argument("--threads", type=_positive(int), help="CPU threads for torch (default: torch's choice)")


def add_study_flags(st: argparse.ArgumentParser) -> None:
    """The flags of ``study``: its name, which variants and mitigators, where, how (the sweep's workers, backend,
    threads), and any run setting as an override of the study's (``--dataset digits --tasks 2``: a tiny version)."""
    from .studies import ORDER, STUDIES, VARIANTS

    st.add_argument("name", choices=sorted(STUDIES), help="the study (docs/results.md; continual/studies.py)")
    st.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                    help="without (noln) and/or with (ln) LayerNorm (tuned, confirm, heldout; default both)")
    st.add_argument("--only", nargs="+", choices=ORDER, default=list(ORDER), metavar="MITIGATOR",
                    help="these mitigators only (tuned, confirm, heldout; default all)")
    st.add_argument("--out", type=Path, default=Path("results/studies"),
                    help="the studies' folder (default results/studies: the committed rows, so finished runs are "
                         "skipped)")
    st.add_argument("--report", action="store_true", help="run nothing: write the report of the finished runs")
    st.add_argument("--strengths", type=_positive(float), nargs="+", metavar="S",
                    help="one grid for every mitigator instead of the study's (a tiny version, a wider grid)")
    st.add_argument("--threads", type=_positive(int), default=1, help="CPU threads for torch per run (default 1)")
    st.add_argument("--workers", type=_positive(int), help="runs at once (default: one per CPU core locally)")
    st.add_argument("--backend", choices=("local", "ray"), default="local")
    st.add_argument("--ray-address", metavar="ADDR", help="the Ray cluster to join (default: a local Ray)")
    st.add_argument("--no-progress", action="store_true", help="no progress lines")
    overrides = st.add_argument_group("overrides of the study's settings (a tiny version, another device, ...)")
    add_config_flags(overrides, RunConfig, skip=("out", "mitigators", "strength", "vectorize_seeds"),
                     choices={"dataset": DATASETS, "nonstationarity": NONSTATIONARITIES, "model": MODELS},
                     types={**dict.fromkeys(("tasks", "epochs", "batch_size", "train_size", "width", "probe_size"),
                                            _positive(int)), "lr": _positive(float)})


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m continual", description="Continual supervised benchmarks.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("run", help="train and evaluate; writes results.csv and config.json")
    add_run_flags(r)
    sw = sub.add_parser("sweep", help="a grid of runs (mitigator × strength × seed) in parallel processes or on "
                                      "Ray; writes one run folder each, then its report (report.md, report.json, sensitivity.png)")
    add_run_flags(sw, sweep=True)
    st = sub.add_parser("study", help="a declared study of docs/results.md (continual.studies): its sweeps, resumable, "
                                      "local or on Ray, then its report.md and figures")
    add_study_flags(st)
    rp = sub.add_parser("report", help="the summary table of any runs (sweeps: each best strength marked) and the "
                        "code versions they mix; with --out, report.md, report.json, curves.png and sensitivity.png")
    pl = sub.add_parser("plot", help="accuracy versus task per mitigator, and a markdown table (report's figure alone)")
    for parser in (rp, pl):
        parser.add_argument("runs", nargs="+", type=Path, help="run folders (results.csv), results.csv files, or "
                            "folders of run folders (a sweep's or a study's --out), packed or not")
        if parser is pl:
            parser.add_argument("-o", "--output", type=Path, required=True, help="the figure (png)")
        else:
            parser.add_argument("--out", type=Path, help="the folder to write the report and figures into "
                                "(default: print the report only)")
            parser.add_argument("--train-test", action="store_true",
                                help="sweep runs: train and test accuracy side by side (the shift study's table)")
            parser.add_argument("--title", help="the sensitivity figure's title")
        parser.add_argument("--metric", default="train_accuracy", choices=METRICS, metavar="NAME",
                            help=f"the column to draw and tabulate: one of {', '.join(METRICS)}")
        parser.add_argument("--per-seed", action="store_true",
                            help="also print one line per mitigator and seed (first/last task, last-task diagnostics)")
        parser.add_argument("--per-task", type=int, metavar="SEED",
                            help="also print a table of the metric at every task end of seed SEED")
    pk = sub.add_parser("pack", help="fold the finished run folders of sweeps into one rows.csv + runs.jsonl per "
                        "sweep (the committed form of results/; checkpoints of finished runs are removed)")
    pk.add_argument("folders", nargs="+", type=Path, help="sweep folders, or folders of sweeps (results/studies)")
    cc = sub.add_parser("convert-checkpoint", help="rewrite a trusted checkpoint from before checkpoints were plain "
                                                  "tensors (docs/security.md); resume reads only plain ones")
    cc.add_argument("path", type=Path, help="a run folder (its checkpoint.pt) or a checkpoint file")
    cc.add_argument("--trust", action="store_true",
                    help="required: converting unpickles the file, which runs any code it names")
    d = sub.add_parser("demo", help="a few-minute CPU demo: Adam vs SpectralAdam on digits with random labels")
    d.add_argument("--tasks", type=_positive(int), default=30)
    d.add_argument("--epochs", type=_positive(int), default=30)
    d.add_argument("--out", type=Path, default=Path("runs/demo"))
    d.add_argument("--threads", type=_positive(int), default=1,
                   help="CPU threads for torch (default 1: on a busy 2-core machine 2 threads ran ~10x slower)")
    return p


def config_from(args: argparse.Namespace, check_device: bool = True):
    """The run's :class:`~continual.config.RunConfig`: its defaults, then the preset's settings, then the flags given.
    The only reader of the parsed flags: everything below takes the finished config."""
    settings = {**(PRESETS[args.preset] if args.preset else {}), **given_fields(RunConfig, args)}
    if "mitigators" in settings:
        settings["mitigators"] = list(dict.fromkeys(settings["mitigators"]))
    device = settings.get("device", RunConfig.device)
    if check_device and device.startswith("cuda"):  # not when the runs go to other machines (sweep on Ray)
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    return RunConfig(**settings)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "run":
            from .runner import run

            if args.threads:
                import torch

                torch.set_num_threads(args.threads)
            run(config_from(args), resume=args.resume, progress=not args.no_progress)
        elif args.command == "sweep":
            return _sweep(args)
        elif args.command == "study":
            return _study(args)
        elif args.command == "pack":
            from .sweep import pack

            for folder in args.folders:
                print(f"{folder}: {len(pack(folder))} finished runs packed")
        elif args.command == "convert-checkpoint":
            from specopt.experiment import convert_checkpoint

            from .runner import CONVERT_COMMAND

            print(convert_checkpoint(args.path, args.trust, CONVERT_COMMAND.format(out=args.path)))
        elif args.command == "report":
            from .report import report

            text, note = report(args.runs, args.out, args.metric, args.train_test, args.per_seed, args.per_task,
                                args.title)
            print(f"{text}\n\n{note}")
            if args.out is not None:
                print(f"report: {args.out / 'report.md'}, {args.out / 'report.json'}; figures in {args.out}")
        elif args.command == "plot":
            from .plot import plot

            print(plot(args.runs, args.output, args.metric, per_seed=args.per_seed, per_task=args.per_task))
            print(f"figure: {args.output}")
        else:
            from .runner import run
            from .plot import plot

            import torch

            torch.set_num_threads(args.threads)
            cfg = RunConfig(dataset="digits", nonstationarity="random-labels", model="mlp",
                            mitigators=["none", "spectral"], tasks=args.tasks, epochs=args.epochs, batch_size=128,
                            diagnostics=False, out=str(args.out))
            print("Adam ('none') vs SpectralAdam ('spectral'): an MLP 4×256 memorises a new random labelling of "
                  "the 8×8 digits every task.")
            run(cfg, resume=(args.out / "checkpoint.pt").exists())
            print(plot([args.out], args.out / "demo.png"))
            print(f"figure: {args.out / 'demo.png'}")
    except (DataError, ValueError, FileNotFoundError) as err:
        msg = str(err).strip("'\"")
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `... | head`: the reader has what it wanted
        return stdout_closed()
    except OSError as err:  # a read-only or full --out, a folder removed under a run: the file and the reason
        print(f"error: {os_error_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the last completed task is checkpointed; continue with --resume", file=sys.stderr)
        return 130
    return 0


def _study(args: argparse.Namespace) -> int:
    """``study``: every sweep of the named study (:func:`continual.studies.run_study`), or only its report."""
    from .studies import report, run_study

    if args.report:
        print(report(args.name, args.out))
        return 0
    overrides = given_fields(RunConfig, args)
    return _many_runs(lambda: print(run_study(
        args.name, args.out, overrides, tuple(args.variants), tuple(args.only), args.workers, args.threads,
        args.backend, args.ray_address, progress=not args.no_progress,
        strengths=tuple(args.strengths) if args.strengths else None)))


def _sweep(args: argparse.Namespace) -> int:
    """``sweep``: the finished config of every run (with Ray the runs go to the cluster's machines, so CUDA need not
    be on this one), handed to :func:`continual.sweep.sweep` with the sweep's own flags."""
    from .sweep import sweep

    def go() -> None:
        cfg = config_from(args, check_device=args.backend == "local")
        sweep(cfg, strengths=args.strengths, workers=args.workers, threads=args.threads, backend=args.backend,
              ray_address=args.ray_address, progress=not args.no_progress)

    return _many_runs(go)


def _many_runs(go) -> int:
    """Exit status of a sweep or study: 1 for a run that failed where it ran, 130 for Ctrl-C (one line each)."""
    from specopt.runs import RunFailed

    try:
        go()
    except RunFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished tasks are checkpointed; run the same command again to continue", file=sys.stderr)
        return 130
    return 0
