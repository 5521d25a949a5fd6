"""The benchmark scripts run end to end at tiny sizes and print their ratios (the timings themselves are not tested:
they live in docs/, measured side by side on a quiet machine)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
"""A script's own folder comes first on its sys.path, so without this it would import whatever specopt is
installed (another checkout's, in an editable install) instead of this tree's."""


def run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--threads", "1", *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=ENV)
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


PAIRED = r"(?: \([0-9.]+(?: ± [0-9.]+)?×\))?"  # the per-round ratio beside the medians' (mean ± s.e.)
ROW = r"\| {set} \| [^|]+ \| {name} \| [0-9.]+ \| [0-9.]+ \| {compiled}" + PAIRED + r" \| {eager}" + PAIRED + r" \|"
NUMBER = r"[0-9]+\.[0-9]+×"


def test_the_benchmarks_import_this_trees_specopt():
    done = subprocess.run([sys.executable, "-c", "import specopt; print(specopt.__file__)"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT / "benchmarks", env=ENV)
    assert Path(done.stdout.strip()).resolve() == (ROOT / "specopt" / "__init__.py").resolve(), done.stdout


def test_optimizer_step_benchmark_prints_the_ratio_to_adam():
    out = run("optimizer_step.py", "--rounds", "1", "--tiny")
    for size in ("MLP 4×16", "conv net", "MLP training step (tiny)"):
        assert re.search(ROW.format(set=re.escape(size), name=re.escape("Adam(foreach)"), compiled="–",
                                    eager=re.escape("1.00×")), out), out
        assert re.search(ROW.format(set=re.escape(size), name=re.escape("SpectralAdam(foreach)"), compiled="–",
                                    eager=NUMBER), out), out


def test_optimizer_step_benchmark_rehearses_the_gpu_call_on_the_cpu():
    """The GPU call's options (bf16 parameters, the fused-Adam baseline, the fused spectral order) on the CPU."""
    out = run("optimizer_step.py", "--rounds", "1", "--tiny", "--device", "cpu", "--dtype", "bf16",
              "--baseline-impl", "fused", "--fused-spectral")
    assert "bf16" in out.splitlines()[0], out
    for name in ("Adam(fused)", "SpectralAdam(foreach)", "SpectralAdam(foreach, fused_spectral)"):
        assert re.search(ROW.format(set=re.escape("MLP 4×16"), name=re.escape(name), compiled="–", eager=NUMBER),
                         out), out


def test_optimizer_step_benchmark_compiles_every_contender_beside_the_eager_ones():
    out = run("optimizer_step.py", "--rounds", "1", "--tiny", "--compile", "--fused-spectral", "--sets", "mlp")
    mlp = re.escape("MLP 4×16")
    assert re.search(ROW.format(set=mlp, name=re.escape("compile_step(default) Adam(foreach)"),
                                compiled=re.escape("1.00×"), eager=NUMBER), out), out
    for name in ("SpectralAdam(foreach)", "SpectralAdam(foreach, fused_spectral)"):
        for prefix in ("", "compile_step(default) "):
            assert re.search(ROW.format(set=mlp, name=re.escape(prefix + name), compiled=NUMBER, eager=NUMBER),
                             out), out
    assert "conv net" not in out and "training step" not in out  # --sets mlp


@pytest.mark.parametrize("args, message", [(["--plain-compile"], "needs --compile"),
                                           (["--sets", "mlp,gpt"], "--sets takes")])
def test_optimizer_step_benchmark_refuses_bad_options(args, message):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "optimizer_step.py"), *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env=ENV)
    assert done.returncode == 2 and message in done.stderr.strip().splitlines()[-1], done.stderr


def test_rl_update_speed_benchmark_prints_the_vectorized_ratio_last():
    out = run("rl_update_speed.py", "--agents", "2", "--updates", "16", "--rounds", "1", "--hidden", "32",
              "--batch-size", "32")
    for contender in ("vectorized (N = 2)", "sequential (2 × N = 1)", "cleanrl-style (1 agent)"):
        assert re.search(rf"\| {re.escape(contender)} \| [0-9.]+ \|", out), out
    assert re.fullmatch(r"vectorized / sequential: [0-9.]+×", out.strip().splitlines()[-1]), out


def test_one_pass_prototype_computes_spectraladams_step_and_prints_its_ratio():
    """benchmarks/one_pass_prototype.py (issue #31): at a tiny size, the prototype's step agrees with SpectralAdam's
    to float32 rounding, and every contender gets a row with its ratio to compiled Adam."""
    out = run("one_pass_prototype.py", "--tiny")
    diffs = [float(x) for x in re.findall(r"largest \|Δθ\| = ([0-9.e+-]+)", out)]
    assert len(diffs) == 4 and all(d < 1e-6 for d in diffs), out  # plain and fused order, both sets
    for size in ("mlp", "resnet18"):
        for name in ("Adam", "SpectralAdam", "one pass", "one pass, fused order", "one pass, no mat-vecs"):
            assert re.search(rf"\| {size} \| [0-9.]+M \| {re.escape(name)} \| [0-9.]+ \| [0-9.]+ \| {NUMBER} \| "
                             rf"[0-9.]+(?: ± [0-9.]+)?× \|",
                             out), out


def test_one_pass_native_computes_the_fused_orders_step_and_prints_its_ratio():
    """benchmarks/one_pass_native.py (issue #31): at a tiny size, the eager one pass (specopt.native's C++ loop)
    agrees with the two halves of the fused order to float32 rounding, and every contender gets a row with its
    ratio."""
    out = run("one_pass_native.py", "--tiny")
    diffs = [float(x) for x in re.findall(r"largest \|Δθ\| = ([0-9.e+-]+)", out)]
    assert len(diffs) == 2 and all(d < 1e-6 for d in diffs), out
    for size in ("mlp", "resnet18"):
        for name in ("Adam", "SpectralAdam(one_pass=True)", "SpectralAdam(fused_spectral=True)", "product, eager",
                     "the loop alone"):
            assert re.search(rf"\| {size} \| [0-9.]+M \| {re.escape(name)} \| [0-9.]+ \| [0-9.]+ \| {NUMBER} \| "
                             rf"[0-9.]+(?: ± [0-9.]+)?× \|",
                             out), out


def test_one_pass_loop_parts_times_every_part_of_the_loop():
    """benchmarks/one_pass_loop_parts.py (issue #31): at a tiny size, every loop gets a row with its ratio to Adam's
    flat loop (per round, mean ± s.e.), built with the product's flags; a bad shape is one line."""
    out = run("one_pass_loop_parts.py", "--tiny")
    assert "-march=native" in out, out
    for name in ("Adam, flat", "pair: Adam", "pair: + rank one", "pair: + rank one + s", "pair: + rank one + r",
                 "pair: all (the product's loop)", "four rows: all", "pair, chunks + prefetch: all"):
        assert re.search(rf"\| {re.escape(name)} \| [0-9.]+ \| [0-9.]+ ± [0-9.]+× \|", out), out
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "one_pass_loop_parts.py"), "--shape", "5x3"],
                         capture_output=True, text=True, env=ENV)
    assert bad.returncode != 0 and bad.stderr.strip().splitlines() == [
        "one_pass_loop_parts: --shape must be ROWSxCOLS with rows a positive multiple of 4, got '5x3'"], bad.stderr


def test_device_step_script_rehearses_issue_31s_gpu_call_on_the_cpu(tmp_path):
    """scripts/device_step.sh (issue #31 item 4, the prepared GPU call) at tiny size on the CPU: env.txt, and the
    benchmark's table with fused Adam as the baseline and every contender eager and compiled — for bf16 only (fp32 is
    the same call with another --dtype; the rehearsal's time goes to compiling)."""
    out = tmp_path / "out"
    env = dict(ENV, OUT=str(out), DEVICE="cpu", ROUNDS="2", DTYPES="bf16", STEP_EXTRA="--tiny --sets mlp",
               TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))
    done = subprocess.run(["bash", "scripts/device_step.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["env.txt", "step_bf16.md"]
    assert "torch" in (out / "env.txt").read_text()
    for dtype in ("bf16",):
        table = (out / f"step_{dtype}.md").read_text()
        assert f"--dtype {dtype} --baseline-impl fused --compile --one-pass" in table and f", {dtype}," in table
        for name in ("Adam(fused)", "SpectralAdam(foreach)", "SpectralAdam(foreach, one_pass)",
                     "compile_step(default) Adam(fused)", "compile_step(default) SpectralAdam(foreach, one_pass)"):
            assert re.search(ROW.format(set=re.escape("MLP 4×16"), name=re.escape(name), compiled=NUMBER,
                                        eager=NUMBER), table), (name, table)
