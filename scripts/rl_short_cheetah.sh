#!/usr/bin/env bash
# Short CPU comparison for docs/results.md: cheetah-run, 20k env steps, replay ratio 4 (16 does not fit a shared
# 2-core CPU in the time available), warm-up 5k random steps, evaluation every 2.5k steps (5 episodes), 1 thread
# per process, environments stepped in the process. Runs: SAC+LayerNorm (none) and spectral λ=1
# (specopt.CONTINUAL_STRENGTH), seeds 0 and 1, as one process of 4 agents; spectral λ=0.1 seed 0.
# Usage: bash scripts/rl_short_cheetah.sh [OUT_ROOT]   (default results/rl/short-cheetah; runs in the background, logs
#                                                      in OUT_ROOT/*.log; a killed run continues with --resume)
#        python -m rl plot OUT_ROOT -o fig.png          (figure + markdown table)
set -euo pipefail
OUT=${1:-results/rl/short-cheetah}
mkdir -p "$OUT"
run() {  # NAME EXTRA_FLAGS...
  local name=$1; shift
  nohup python -m rl train --env cheetah-run --steps 20000 --replay-ratio 4 --warmup-steps 5000 \
    --eval-interval 2500 --eval-episodes 5 --checkpoint-interval 5000 --threads 1 --env-workers 0 --no-progress \
    --out "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1 &
}
run none-spectral1 --mitigator none spectral --strength 1 --seeds 0 1
run spectral0.1 --mitigator spectral --strength 0.1 --seeds 0
echo "started 2 processes (5 agents) under $OUT; progress: tail -n 1 $OUT/*/*/results.csv"
