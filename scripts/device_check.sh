#!/usr/bin/env bash
# The GPU checks, as one call of under 8 minutes on a machine with one NVIDIA GPU, PyTorch, torchvision, pytest,
# hypothesis, pytest-xdist, scikit-learn and matplotlib preinstalled, and no network:
#   1. the optimizer-step benchmark on the GPU (fp32 and bf16 parameters, foreach and fused Adam, compiled step);
#   2. the continual benchmark with ResNet-18 and ViT-Tiny on real Fashion-MNIST (random labels and
#      class-incremental), none vs spectral, 8 runs side by side on the one GPU, each stopped after $BUDGET s
#      (rows are written at every task end, so a stopped run keeps the tasks it finished);
#   3. the test suite (without tests/rl, which needs dm-control) against the torch installed there.
# Everything lands in $OUT: env.txt, optimizer_step_gpu.md, pytest.txt, continual_gpu.tgz (one folder per run with
# results.csv and config.json), continual_gpu.md (tables) and continual_gpu.png / continual_gpu_test.png.
#
#   bash scripts/device_check.sh DATA_DIR          # DATA_DIR: Fashion-MNIST's IDX files (.gz)
#
# Rehearse on CPU at tiny size (XDIST= runs pytest without xdist, TESTS picks the test files):
#   DEVICE=cpu TASKS=2 EPOCHS=1 TRAIN_SIZE=500 BUDGET=200 ROUNDS=2 XDIST= TESTS=tests/specopt/test_roles.py \
#   OUT=/tmp/device-out bash scripts/device_check.sh /usr/share/datasets/fashion-mnist
set -uo pipefail
DATA=${1:?usage: bash scripts/device_check.sh DATA_DIR}
OUT=${OUT:?set OUT to the folder for the results}
DEVICE=${DEVICE:-cuda}
TASKS=${TASKS:-20}
EPOCHS=${EPOCHS:-10}
TRAIN_SIZE=${TRAIN_SIZE:-12800}
BUDGET=${BUDGET:-270}
ROUNDS=${ROUNDS:-15}
RUNS=${RUNS:-/tmp/continual_gpu}
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$RUNS"
t0=$(date +%s)

"$PY" - >"$OUT/env.txt" 2>&1 <<'EOF'
import platform, torch, torchvision
print("python", platform.python_version(), "torch", torch.__version__, "torchvision", torchvision.__version__)
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu only")
EOF
cat "$OUT/env.txt"

# 0. no host-device synchronisation in the step: CUDA's sync debug mode raises on any
if [ "$DEVICE" = cuda ]; then
  "$PY" - >"$OUT/sync_check.txt" 2>&1 <<'EOF'
import torch
from torch import nn
import specopt

torch.manual_seed(0)
for name, make in [("SpectralAdam(foreach)", lambda ps: specopt.SpectralAdam(ps, lr=1e-3, foreach=True)),
                   ("SpectralAdam(fused)", lambda ps: specopt.SpectralAdam(ps, lr=1e-3, fused=True)),
                   ("Spectral(SGD)", lambda ps: specopt.Spectral(torch.optim.SGD(ps, lr=1e-2, momentum=0.9)))]:
    model = nn.Sequential(nn.Linear(64, 128), nn.LayerNorm(128), nn.ReLU(), nn.Linear(128, 10)).cuda()
    with torch.no_grad():
        model[0].weight.mul_(30.0)  # the truncated step is active
    opt = make(specopt.param_groups(model))
    x, y = torch.randn(32, 64, device="cuda"), torch.randint(0, 10, (32,), device="cuda")
    for step in range(4):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if step >= 1:  # the first step initialises state (Adam's CPU step counters); later steps must not sync
            torch.cuda.set_sync_debug_mode("error")
        opt.step()
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    print(name, "steps 2-4 made no host-device synchronisation; sigma1 of layer 0:",
          round(float(torch.linalg.matrix_norm(model[0].weight, ord=2)), 4))
EOF
  cat "$OUT/sync_check.txt"
fi

# 1. optimizer step, the GPU to itself
{
  for args in "" "--dtype bfloat16" "--impl fused" "--impl fused --dtype bfloat16" "--compile"; do
    echo "### python benchmarks/optimizer_step.py --device $DEVICE --threads 4 --rounds $ROUNDS $args"
    timeout 150 "$PY" benchmarks/optimizer_step.py --device "$DEVICE" --threads 4 --rounds "$ROUNDS" $args 2>&1 \
      | grep -v "^W[0-9]"
    echo
  done
} >"$OUT/optimizer_step_gpu.md"
echo "benchmark done at $(( $(date +%s) - t0 )) s"

# 2. continual runs in the background, 3. the tests meanwhile on the CPU cores
pids=()
for model in resnet18 vit-tiny; do
  for ns in random-labels class-incremental; do
    for mit in none spectral; do
      timeout "$BUDGET" "$PY" -m continual run --dataset fashion-mnist --data-dir "$DATA" --nonstationarity "$ns" \
        --model "$model" --mitigator "$mit" --tasks "$TASKS" --epochs "$EPOCHS" --batch-size 250 \
        --train-size "$TRAIN_SIZE" --lr 1e-3 --device "$DEVICE" --threads 1 --no-progress \
        --out "$RUNS/$model-$ns-$mit" >"$RUNS/$model-$ns-$mit.log" 2>&1 &
      pids+=($!)
    done
  done
done
timeout 300 "$PY" -m pytest -q -p no:cacheprovider ${XDIST--n 6} ${TESTS:-tests/specopt tests/continual tests/benchmarks} \
  >"$OUT/pytest.txt" 2>&1
echo "tests: $(tail -n 1 "$OUT/pytest.txt") at $(( $(date +%s) - t0 )) s"
wait "${pids[@]}"
echo "continual runs done at $(( $(date +%s) - t0 )) s"

{
  for ns in random-labels class-incremental; do
    for model in resnet18 vit-tiny; do
      for metric in train_accuracy test_accuracy sigma_max; do
        echo "### $model, $ns, $metric"
        "$PY" -m continual plot --metric "$metric" -o "$RUNS/$model-$ns-$metric.png" \
          "$RUNS/$model-$ns-none" "$RUNS/$model-$ns-spectral" 2>&1 | grep -v "^W[0-9]"
        echo
      done
    done
  done
  echo "### run logs (last line each)"
  for log in "$RUNS"/*.log; do echo "$(basename "$log"): $(tail -n 1 "$log")"; done
} >"$OUT/continual_gpu.md"
"$PY" - "$RUNS" "$OUT" <<'EOF'
import sys
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from PIL import Image

runs, out = Path(sys.argv[1]), Path(sys.argv[2])
for metric in ("train_accuracy", "test_accuracy"):
    panels = sorted(runs.glob(f"*-{metric}.png"))
    if not panels:
        continue
    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    for ax, path in zip(axes.flat, panels):
        ax.imshow(Image.open(path)); ax.set_axis_off(); ax.set_title(path.stem, fontsize=9)
    fig.tight_layout()
    fig.savefig(out / ("continual_gpu.png" if metric == "train_accuracy" else "continual_gpu_test.png"), dpi=110)
EOF
tar czf "$OUT/continual_gpu.tgz" -C "$RUNS" --exclude=checkpoint.pt --exclude="*.png" .
echo "all done at $(( $(date +%s) - t0 )) s"
