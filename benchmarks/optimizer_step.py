"""Optimizer-step cost: SpectralAdam against torch.optim.Adam, eager and compiled, all measured side by side in one run.

Only ``opt.step()`` is timed (gradients are filled once with random values), on the parameter sets of an MLP 4×256
(Fashion-MNIST sized input) and a torchvision ResNet-18 (CIFAR stem, 10 classes); a last table times a whole
training step (forward, backward, step) of the MLP on a batch of 512, for the cost a user sees. Every contender gets
its own copy of the model and all contenders alternate in rounds, so machine noise hits them alike; each row prints
its median step time, the wall time of its first three steps (state creation, compilation: what a user waits for
before training runs at full speed) and its ratios to eager Adam and, with ``--compile``, to Adam compiled the same way.

Contenders: ``Adam`` (``--baseline-impl``'s kernel, ``--impl``'s unless given: ``fused`` is the fused-Adam
baseline) and ``SpectralAdam`` (``--impl``'s kernel); ``--fused-spectral`` adds ``SpectralAdam(fused_spectral=True)``;
``--one-pass`` adds ``SpectralAdam(one_pass=True)`` (with ``--fused-spectral`` also both: eagerly on a CPU, the C++
loop of :mod:`specopt.native`); ``--compile [MODE]`` adds each of them compiled by ``specopt.compile_step(opt, mode=MODE)`` (``--plain-compile``:
``torch.compile(opt.step, fullgraph=...)`` instead, without compile_step's options and eager first step).
``--tiny`` shrinks the models (for the tests, which rehearse every option on the CPU); ``--sets`` picks tables.

    python benchmarks/optimizer_step.py [--threads 1] [--rounds 15] [--device cpu|cuda] [--impl foreach|fused]
        [--baseline-impl foreach|fused] [--dtype fp32|bf16] [--compile [MODE]] [--plain-compile] [--fused-spectral] [--one-pass]
        [--clock wall|cpu] [--sets mlp,resnet18,train] [--tiny]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision
from torch import nn

import specopt


def mlp(width: int = 256, inputs: int = 784) -> nn.Module:
    layers: list[nn.Module] = []
    fan_in = inputs
    for _ in range(4):
        layers += [nn.Linear(fan_in, width), nn.ReLU()]
        fan_in = width
    return nn.Sequential(*layers, nn.Linear(width, 10))


def resnet18() -> nn.Module:
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model


def tiny_convnet() -> nn.Module:
    """ResNet-18's kinds of parameters (conv kernels, BatchNorm scales and shifts, a linear head) at a tiny size."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, bias=False),
                         nn.BatchNorm2d(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


@dataclass
class Settings:
    """Everything the command line decides, built once in :func:`main`."""

    device: torch.device
    dtype: torch.dtype
    impl: str  # SpectralAdam's Adam kernel: foreach or fused
    baseline_impl: str  # torch.optim.Adam's
    compile_mode: str | None  # a torch.compile mode, or None: eager contenders only
    plain_compile: bool
    fused_spectral: bool
    one_pass: bool
    clock: Callable[[], float]
    tiny: bool


class Compiled:
    """``.step()`` of a compiled optimizer step: ``specopt.compile_step`` (or plain ``torch.compile``)."""

    def __init__(self, opt: torch.optim.Optimizer, mode: str, plain: bool) -> None:
        if plain:
            self.step = torch.compile(opt.step, fullgraph=isinstance(opt, specopt.SpectralAdam),
                                      mode=None if mode == "default" else mode)
        else:
            self.step = specopt.compile_step(opt, mode=mode, native=False)  # compiled, even where the C++ loop holds


def contenders(s: Settings) -> list[tuple[str, Callable[[nn.Module], object]]]:
    """(name, build(model) -> object with .step()) of every contender; the first is the eager Adam baseline."""
    def adam(m: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(m.parameters(), lr=1e-3, **{s.baseline_impl: True})

    def spectral(fused_spectral: bool, one_pass: bool = False) -> Callable[[nn.Module], torch.optim.Optimizer]:
        return lambda m: specopt.SpectralAdam(specopt.param_groups(m), lr=1e-3, fused_spectral=fused_spectral,
                                              one_pass=one_pass, **{s.impl: True})

    eager = [(f"Adam({s.baseline_impl})", adam), (f"SpectralAdam({s.impl})", spectral(False))]
    if s.fused_spectral:
        eager.append((f"SpectralAdam({s.impl}, fused_spectral)", spectral(True)))
    if s.one_pass:
        eager.append((f"SpectralAdam({s.impl}, one_pass)", spectral(False, True)))
    if s.one_pass and s.fused_spectral:  # eager on a CPU: specopt.native's loop, the steady state in one call
        eager.append((f"SpectralAdam({s.impl}, one_pass, fused_spectral)", spectral(True, True)))
    if s.compile_mode is None:
        return eager
    how = "torch.compile" if s.plain_compile else "compile_step"
    mode = s.compile_mode
    return eager + [(f"{how}({mode}) {name}", lambda m, b=build: Compiled(b(m), mode, s.plain_compile))
                    for name, build in eager]


def time_steps(opt, steps: int, s: Settings) -> float:
    sync = torch.cuda.synchronize if s.device.type == "cuda" else (lambda: None)
    sync()
    t0 = s.clock()
    for _ in range(steps):
        opt.step()
    sync()
    return (s.clock() - t0) / steps


def paired_ratio(times: list[float], base: list[float]) -> str:
    """The ratio of two contenders' times round by round (each round times both, one after the other): mean ±
    standard error over the rounds, the error of the ratio that the medians' quotient alone does not give."""
    ratios = [t / b for t, b in zip(times, base)]
    if len(ratios) < 3:
        return f"{statistics.mean(ratios):.2f}×"
    return f"{statistics.mean(ratios):.2f} ± {statistics.stdev(ratios) / len(ratios) ** 0.5:.2f}×"


def race(name: str, size: str, runners: list[tuple[str, object]], steps: int, rounds: int, s: Settings) -> None:
    """Time ``runners`` in alternating rounds; print one row each (median ms, first 3 steps s, ratios: of the
    medians, and per round, mean ± s.e.)."""
    first = [3 * time_steps(r, 3, s) for _, r in runners]  # state init, compilation, the first iterations
    times: list[list[float]] = [[] for _ in runners]
    for _ in range(rounds):
        for t, (_, r) in zip(times, runners):
            t.append(time_steps(r, steps, s))
    medians = [statistics.median(t) for t in times]
    names = [n for n, _ in runners]
    baseline = next((k for k, n in enumerate(names) if n.endswith(") " + names[0])), None)  # compiled Adam
    for n, t, m, f in zip(names, times, medians, first):
        vs_compiled = (f"{m / medians[baseline]:.2f}× ({paired_ratio(t, times[baseline])})"
                       if baseline is not None else "–")
        print(f"| {name} | {size} | {n} | {m * 1e3:.3f} | {f:.2f} | {vs_compiled} | {m / medians[0]:.2f}× "
              f"({paired_ratio(t, times[0])}) |")


def models(build: Callable[[], nn.Module], s: Settings) -> list[tuple[str, nn.Module, Callable]]:
    """(name, its own copy of the model, build(model) -> its optimizer) of every contender, same initial weights."""
    out = []
    for label, make in contenders(s):
        torch.manual_seed(0)
        out.append((label, build().to(s.device, s.dtype), make))
    return out


def bench(name: str, build: Callable[[], nn.Module], steps: int, rounds: int, s: Settings) -> None:
    runners = []
    for label, model, make in models(build, s):
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        runners.append((label, make(model)))
    size = f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M"
    race(name, size, runners, steps, rounds, s)


def bench_train_step(name: str, build: Callable[[], nn.Module], inputs: int, steps: int, rounds: int,
                     s: Settings) -> None:
    torch.manual_seed(0)
    x = torch.randn(512, inputs, device=s.device).to(s.dtype)
    y = torch.randint(0, 10, (512,), device=s.device)

    class Step:  # time_steps calls .step(); a training step is forward, backward and the optimizer step
        def __init__(self, model: nn.Module, opt) -> None:
            self.model, self.opt = model, opt

        def step(self) -> None:
            self.model.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(self.model(x), y).backward()
            self.opt.step()

    runners = [(label, Step(model, make(model))) for label, model, make in models(build, s)]
    race(name, "batch 512", runners, steps, rounds, s)


DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--device", default="cpu")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: process CPU time (steadier on a loaded machine; use with --threads 1)")
    p.add_argument("--impl", choices=["foreach", "fused"], default="foreach", help="SpectralAdam's Adam kernel")
    p.add_argument("--baseline-impl", choices=["foreach", "fused"], default=None,
                   help="torch.optim.Adam's kernel (default: --impl's); fused is the fused-Adam baseline")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="parameter dtype")
    p.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                   choices=["default", "reduce-overhead", "max-autotune-no-cudagraphs"],
                   help="add every contender compiled by specopt.compile_step(mode=MODE)")
    p.add_argument("--plain-compile", action="store_true",
                   help="with --compile: plain torch.compile(step, fullgraph=...), without compile_step's options")
    p.add_argument("--fused-spectral", action="store_true", help="add SpectralAdam(fused_spectral=True)")
    p.add_argument("--one-pass", action="store_true", help="add SpectralAdam(one_pass=True)")
    p.add_argument("--sets", default="mlp,resnet18,train", help="tables to run, comma-separated")
    p.add_argument("--tiny", action="store_true", help="tiny models (the tests' rehearsal of every option)")
    args = p.parse_args()
    if args.plain_compile and not args.compile:
        p.error("--plain-compile needs --compile")
    sets = args.sets.split(",")
    if not set(sets) <= {"mlp", "resnet18", "train"}:
        p.error(f"--sets takes mlp, resnet18 and train, got {args.sets!r}")
    s = Settings(device=torch.device(args.device), dtype=DTYPES[args.dtype], impl=args.impl,
                 baseline_impl=args.baseline_impl or args.impl, compile_mode=args.compile,
                 plain_compile=args.plain_compile, fused_spectral=args.fused_spectral, one_pass=args.one_pass,
                 clock=time.process_time if args.clock == "cpu" else time.perf_counter, tiny=args.tiny)
    torch.set_num_threads(args.threads)
    # every torch.optim step shares one code object (Optimizer's step wrapper), and Dynamo keeps at most
    # recompile_limit (8) graphs per code object; this script compiles up to nine optimizers, one or two graphs each
    torch._dynamo.config.recompile_limit = 64
    name = s.device.type if s.device.type != "cuda" else torch.cuda.get_device_name(s.device)
    print(f"torch {torch.__version__}, {name}, {args.threads} threads, {args.clock} clock, {args.dtype}, "
          f"median of {args.rounds} rounds{', tiny models' if s.tiny else ''}")
    print("| parameters of | size | optimizer step | ms | first 3 steps s | ÷ compiled Adam (medians; per round, mean ± s.e.) | ÷ eager Adam (the same) |")
    print("|---|---|---|---|---|---|---|")
    width, inputs = (16, 32) if s.tiny else (256, 784)
    if "mlp" in sets:
        bench("MLP 4×256" if not s.tiny else "MLP 4×16", lambda: mlp(width, inputs), 50, args.rounds, s)
    if "resnet18" in sets:
        bench("ResNet-18" if not s.tiny else "conv net", tiny_convnet if s.tiny else resnet18, 5, args.rounds, s)
    if "train" in sets:
        bench_train_step("MLP training step" + (" (tiny)" if s.tiny else ""), lambda: mlp(width, inputs), inputs,
                         20, args.rounds, s)


if __name__ == "__main__":
    main()
