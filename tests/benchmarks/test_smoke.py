"""The benchmark scripts run end to end at tiny sizes and print their ratios (the timings themselves are not tested:
they live in docs/, measured side by side on a quiet machine)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--threads", "1", *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.parametrize("mitigator", ["none", "spectral"])
def test_vmap_seeds_benchmark_prints_the_ratio_to_one_seed(mitigator):
    out = run("continual_vmap_seeds.py", "--mitigator", mitigator, "--seeds", "0", "1", "2", "--tasks", "1",
              "--epochs", "1", "--width", "16")
    assert "| one seed (runner) |" in out and "| vectorized seeds |" in out
    ratio = re.search(r"3 vectorized seeds take ([0-9.]+)× the wall time of one seed \(sequential: ([0-9.]+)×\)", out)
    assert ratio is not None, out
    assert float(ratio.group(1)) > 0 and float(ratio.group(2)) > 0
    difference = re.search(r"train_accuracy ([0-9.e+-]+), train_loss ([0-9.e+-]+)", out)
    assert float(difference.group(1)) <= 0.01 and float(difference.group(2)) <= 1e-3  # same rows as sequential


def test_continual_throughput_benchmark_prints_the_ratio_to_the_bare_loop():
    out = run("continual_throughput.py", "--rounds", "1", "--epochs", "1", "--n", "1024")
    assert re.search(r"runner none \| [0-9.]+ \| [0-9.]+", out), out


def test_optimizer_step_benchmark_prints_the_ratio_to_adam():
    out = run("optimizer_step.py", "--rounds", "1")
    for size in ("MLP 4×256", "ResNet-18", "MLP 4×256, batch 512"):
        assert re.search(rf"\| {re.escape(size)} \|.* \| [0-9.]+× \|", out), out


def test_optimizer_step_benchmark_refuses_compile_variants_without_compile():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "optimizer_step.py"), "--compiled-adam"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2 and "need --compile" in done.stderr.strip().splitlines()[-1], done.stderr


def test_rl_update_speed_benchmark_prints_the_vectorized_ratio_last():
    out = run("rl_update_speed.py", "--agents", "2", "--updates", "16", "--rounds", "1", "--hidden", "32",
              "--batch-size", "32")
    for contender in ("vectorized (N = 2)", "sequential (2 × N = 1)", "cleanrl-style (1 agent)"):
        assert re.search(rf"\| {re.escape(contender)} \| [0-9.]+ \|", out), out
    assert re.fullmatch(r"vectorized / sequential: [0-9.]+×", out.strip().splitlines()[-1]), out
