"""Optimizer-step cost: SpectralAdam vs torch.optim.Adam(foreach=True), measured side by side in one run.

Only ``opt.step()`` is timed (gradients are filled once with random values), on the parameter sets of an MLP 4×256
(Fashion-MNIST sized input) and a torchvision ResNet-18 (CIFAR stem, 10 classes). The two optimizers alternate in
rounds so that machine noise hits both alike; the ratio of medians is printed. A second table times a whole training
step (forward, backward, step) of the MLP on a batch of 512, for the cost a user sees.

``--impl`` picks Adam's kernel for both (``foreach``, or ``fused``); ``--dtype bfloat16`` casts the parameters;
``--compile [MODE]`` times ``specopt.compile_step(SpectralAdam, mode=MODE)`` (the documented fast path) against the
same eager Adam; ``--compiled-adam`` compiles Adam's step the same way too (the spectral step's own cost under
compilation); ``--plain-compile`` with it times ``torch.compile(SpectralAdam.step, fullgraph=True, mode=MODE)``
instead, without the Inductor options ``compile_step`` adds.

    python benchmarks/optimizer_step.py [--threads 2] [--rounds 15] [--device cpu] [--impl foreach|fused]
        [--dtype float32|bfloat16] [--compile [default|reduce-overhead|max-autotune-no-cudagraphs]] [--plain-compile] [--compiled-adam]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import statistics
import time

import torch
import torchvision
from torch import nn

import specopt


def mlp() -> nn.Module:
    layers: list[nn.Module] = []
    fan_in = 784
    for _ in range(4):
        layers += [nn.Linear(fan_in, 256), nn.ReLU()]
        fan_in = 256
    return nn.Sequential(*layers, nn.Linear(256, 10))


def resnet18() -> nn.Module:
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model


CLOCK = time.perf_counter


def time_steps(opt: torch.optim.Optimizer, steps: int, device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = CLOCK()
    for _ in range(steps):
        opt.step()
    sync()
    return (CLOCK() - t0) / steps


IMPL: dict[str, bool] = {"foreach": True}
DTYPE = torch.float32
COMPILE: str | None = None  # a torch.compile mode


PLAIN_COMPILE = False  # --plain-compile: torch.compile without specopt.compile_step's options
COMPILED_ADAM = False  # --compiled-adam: Adam compiled the same way, for the spectral step's own cost


class Compiled:
    """``.step()`` of a compiled optimizer step: ``specopt.compile_step`` (or plain ``torch.compile``)."""

    def __init__(self, opt: torch.optim.Optimizer, mode: str) -> None:
        if PLAIN_COMPILE:
            self.step = torch.compile(opt.step, fullgraph=isinstance(opt, specopt.SpectralAdam),
                                      mode=None if mode == "default" else mode)
        else:
            self.step = specopt.compile_step(opt, mode=mode)


def optimizers(m_adam: nn.Module, m_spec: nn.Module):
    adam = torch.optim.Adam(m_adam.parameters(), lr=1e-3, **IMPL)
    spec = specopt.SpectralAdam(specopt.param_groups(m_spec), lr=1e-3, **IMPL)
    if COMPILED_ADAM:
        return Compiled(adam, COMPILE), Compiled(spec, COMPILE)
    return adam, (Compiled(spec, COMPILE) if COMPILE else spec)


def bench(name: str, build, steps: int, rounds: int, device: torch.device) -> tuple[float, float]:
    torch.manual_seed(0)
    m_adam, m_spec = build().to(device, DTYPE), build().to(device, DTYPE)
    for m in (m_adam, m_spec):
        for p in m.parameters():
            p.grad = torch.randn_like(p) * 1e-3
    adam, spec = optimizers(m_adam, m_spec)
    time_steps(adam, 3, device), time_steps(spec, 3, device)  # warm-up (state init, compilation, first iterations)
    ta, ts = [], []
    for _ in range(rounds):
        ta.append(time_steps(adam, steps, device))
        ts.append(time_steps(spec, steps, device))
    a, s = statistics.median(ta), statistics.median(ts)
    n = sum(p.numel() for p in m_spec.parameters())
    print(f"| {name} | {n / 1e6:.2f}M | {a * 1e3:.3f} | {s * 1e3:.3f} | {s / a:.2f}× |")
    return a, s


def bench_train_step(steps: int, rounds: int, device: torch.device) -> None:
    torch.manual_seed(0)
    x = torch.randn(512, 784, device=device)
    y = torch.randint(0, 10, (512,), device=device)
    m_adam, m_spec = mlp().to(device, DTYPE), mlp().to(device, DTYPE)
    x = x.to(DTYPE)
    adam, spec = optimizers(m_adam, m_spec)

    def closure_of(model: nn.Module) -> Callable[[], torch.Tensor]:
        def closure() -> torch.Tensor:
            model.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss
        return closure

    ca, cs = closure_of(m_adam), closure_of(m_spec)

    class Step:  # time_steps calls .step(); a training step is closure + optimizer step
        def __init__(self, opt: torch.optim.Optimizer, closure) -> None:
            self.opt, self.closure = opt, closure

        def step(self) -> None:
            self.closure()
            self.opt.step()

    sa, ss = Step(adam, ca), Step(spec, cs)
    time_steps(sa, 3, device), time_steps(ss, 3, device)
    ta, ts = [], []
    for _ in range(rounds):
        ta.append(time_steps(sa, steps, device))
        ts.append(time_steps(ss, steps, device))
    a, s = statistics.median(ta), statistics.median(ts)
    print(f"| MLP 4×256, batch 512 | {a * 1e3:.3f} | {s * 1e3:.3f} | {s / a:.2f}× |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--device", default="cpu")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: process CPU time (steadier on a loaded machine; use with --threads 1)")
    p.add_argument("--impl", choices=["foreach", "fused"], default="foreach", help="Adam's kernel, for both")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="parameter dtype")
    p.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                   choices=["default", "reduce-overhead", "max-autotune-no-cudagraphs"],
                   help="SpectralAdam's step compiled by specopt.compile_step(mode=MODE), against eager Adam")
    p.add_argument("--plain-compile", action="store_true",
                   help="with --compile: plain torch.compile(step, fullgraph=True), without compile_step's options")
    p.add_argument("--compiled-adam", action="store_true",
                   help="with --compile: compile Adam's step the same way (the spectral step's own cost)")
    args = p.parse_args()
    if (args.plain_compile or args.compiled_adam) and not args.compile:
        p.error("--plain-compile and --compiled-adam need --compile")
    global CLOCK, IMPL, DTYPE, COMPILE, PLAIN_COMPILE, COMPILED_ADAM
    PLAIN_COMPILE, COMPILED_ADAM = args.plain_compile, args.compiled_adam
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    IMPL, DTYPE, COMPILE = {args.impl: True}, getattr(torch, args.dtype), args.compile
    torch.set_num_threads(args.threads)
    # every torch.optim step shares one code object (Optimizer's step wrapper), and Dynamo keeps at most
    # recompile_limit (8) graphs per code object; this script compiles up to six optimizers, two graphs each
    torch._dynamo.config.recompile_limit = 32
    device = torch.device(args.device)
    name = device.type if device.type != "cuda" else torch.cuda.get_device_name(device)
    how = "torch.compile" if PLAIN_COMPILE else "specopt.compile_step"
    spec = f"{how} ({COMPILE}) SpectralAdam" if COMPILE else "SpectralAdam"
    print(f"torch {torch.__version__}, {name}, {args.threads} threads, {args.clock} clock, {args.impl}, "
          f"{args.dtype}, median of {args.rounds} rounds")
    adam = f"{how} ({COMPILE}) Adam({args.impl})" if COMPILED_ADAM else f"Adam({args.impl})"
    print(f"| parameters of | size | {adam} step ms | {spec} step ms | ratio |")
    print("|---|---|---|---|---|")
    bench("MLP 4×256", mlp, 50, args.rounds, device)
    bench("ResNet-18", resnet18, 5, args.rounds, device)
    print()
    print(f"| training step of | {adam} ms | {spec} ms | ratio |")
    print("|---|---|---|---|")
    bench_train_step(20, args.rounds, device)


if __name__ == "__main__":
    main()
