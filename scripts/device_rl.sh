#!/usr/bin/env bash
# The replay-ratio-16 result on a lent GPU, as one device call of under 9 minutes (docs/rl.md, "On a GPU").
#
#  1. speed, side by side: seed-updates/s of N vectorized agents (one CUDA graph per block of RR updates) against
#     the same N agents updated one after another and a CleanRL-style single-file SAC (benchmarks/rl_update_speed.py),
#     for N = 8 and N = 64;
#  2. cheetah-run at replay ratio 16 (the paper's SAC + LayerNorm), `none` and `spectral` × 4 seeds = 8 agents in one
#     process, for STEPS env steps or until TRAIN_BUDGET seconds have passed (the rows up to the last evaluation
#     stay); then the figure and the table.
#
# What comes back in $OUT (at most 8 files): speed.md, train.log, table.md, cheetah-run.png and rows.tar.gz (every
# agent's config.json + results.csv; `tar xzf rows.tar.gz -C results/rl/...` to commit them).
#
# Prepare here, once:    bash scripts/device_wheels.sh        # .whl/: slim dm-control, mujoco, gymnasium (31 MiB)
# Run on the device:     device run, command "bash scripts/device_rl.sh", carry [".whl"], timeout_s 570
# Rehearse on the CPU:   tests/rl/test_device_script.py runs it at tiny size (DEVICE=cpu plus the *_EXTRA flags)
#
# Environment: OUT (default runs/device-rl), DEVICE (cuda), STEPS (100000), SEEDS ("0 1 2 3"), TRAIN_BUDGET (seconds,
# 360), AGENTS ("8 64": the benchmark's N), BENCH_TIMEOUT (seconds per benchmark, 120), BENCH_EXTRA and RL_EXTRA (flags appended to the benchmark and to the run).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-runs/device-rl}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-100000}
SEEDS=${SEEDS:-0 1 2 3}
TRAIN_BUDGET=${TRAIN_BUDGET:-360}
AGENTS=${AGENTS:-8 64}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-120}
mkdir -p "$OUT"

if [ -d .whl ] && ! python3 -c "import dm_control" 2>/dev/null; then  # the device has no dm-control: carried wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} MUJOCO_GL=disable PYTHONUNBUFFERED=1

{
  [ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__)"
  for n in $AGENTS; do
    # shellcheck disable=SC2086  # BENCH_EXTRA is a word list
    timeout "$BENCH_TIMEOUT" python3 benchmarks/rl_update_speed.py --device "$DEVICE" --agents "$n" --rounds 3 \
      --updates 160 ${BENCH_EXTRA:-} || echo "benchmark with $n agents: exit $? (124 = stopped after ${BENCH_TIMEOUT}s)"
  done
} 2>&1 | tee "$OUT/speed.md"

run="$OUT/run"
rm -rf "$run"
status=0
# shellcheck disable=SC2086  # SEEDS and RL_EXTRA are word lists
# spectral at λ = 1 (specopt.CONTINUAL_STRENGTH, the paper's plasticity setting; the committed H100 rows used it)
timeout --signal=INT "$TRAIN_BUDGET" python3 -m rl train --env cheetah-run --mitigator none spectral --strength 1 \
  --seeds $SEEDS --replay-ratio 16 --steps "$STEPS" --device "$DEVICE" --out "$run" --no-progress ${RL_EXTRA:-} \
  > "$OUT/train.log" 2>&1 || status=$?
if [ "$status" -ne 0 ] && [ "$status" -ne 124 ]; then  # 124: stopped at the time budget, the rows so far are kept
  tail -20 "$OUT/train.log"
  exit "$status"
fi
echo "training: exit $status (124 = stopped at the ${TRAIN_BUDGET}s budget)" | tee -a "$OUT/train.log"
python3 -m rl plot "$run" -o "$OUT/cheetah-run.png" | tee "$OUT/table.md"
tar czf "$OUT/rows.tar.gz" -C "$run" --exclude checkpoint.pt .
rm -rf "$run"
