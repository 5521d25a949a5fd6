#!/usr/bin/env bash
# Issue #31 item 4 on a lent GPU, as one device call of under 9 minutes: the optimizer-step benchmark
# (benchmarks/optimizer_step.py, docs/benchmarks.md) with fused Adam as the baseline, fp32 and bf16 parameters, every
# contender eager and compiled by specopt.compile_step — SpectralAdam (the two halves) and SpectralAdam(one_pass=True)
# (compiled: one Inductor/Triton expression per tensor) — on the MLP 4×256 and ResNet-18 parameter sets.
#
# What comes back in $OUT: env.txt (GPU, driver, torch), step_fp32.md and step_bf16.md (each the benchmark's
# table, rows printed as each set finishes, so a call stopped by its timeout keeps the sets it finished).
#
# Run on the device:     device run, command "bash scripts/device_step.sh", timeout_s 570
# Rehearse on the CPU:   tests/benchmarks/test_smoke.py runs it at tiny size (DEVICE=cpu STEP_EXTRA=--tiny)
#
# Environment: OUT (default runs/device-step), DEVICE (cuda), ROUNDS (10), STEP_TIMEOUT (seconds per dtype, 250),
# DTYPES ("fp32 bf16"), STEP_EXTRA (flags appended to every call).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-runs/device-step}
DEVICE=${DEVICE:-cuda}
ROUNDS=${ROUNDS:-10}
STEP_TIMEOUT=${STEP_TIMEOUT:-250}
DTYPES=${DTYPES:-fp32 bf16}
STEP_EXTRA=${STEP_EXTRA:-}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/specopt-inductor}  # both dtypes' calls share it

{
  if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  fi
  python3 -c "import torch; print('torch', torch.__version__, 'device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu only')"
  git rev-parse --short HEAD 2>/dev/null || echo "(no git: commit unknown)"
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

status=0
for dtype in $DTYPES; do
  args=(--device "$DEVICE" --threads 4 --rounds "$ROUNDS" --dtype "$dtype" --baseline-impl fused --compile --one-pass
        --sets mlp,resnet18)
  # shellcheck disable=SC2206  # STEP_EXTRA is a list of flags
  args+=($STEP_EXTRA)
  {
    echo "### python benchmarks/optimizer_step.py ${args[*]}"
    echo
  } >"$OUT/step_$dtype.md"
  t0=$(date +%s)
  timeout "$STEP_TIMEOUT" python3 benchmarks/optimizer_step.py "${args[@]}" 2>&1 | grep -v "^W[0-9]" \
    >>"$OUT/step_$dtype.md" || { echo "step_$dtype: stopped or failed (exit ${PIPESTATUS[0]})"; status=1; }
  echo "step_$dtype done in $(( $(date +%s) - t0 )) s"
done
exit $status
